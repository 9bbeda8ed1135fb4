"""The package's structure, read from the source text: no import cycle (imports inside functions count: a
function-local import must not hide one), trainer's subpackages in one order, eval and methods apart from trainer
(but for the table's report reader). The graph is built here from `ast`, not from anything lrpt reports about itself."""
from __future__ import annotations

import ast
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
FOLDERS = ("trainer", "methods", "eval")  # installed as lrpt.trainer, lrpt.methods, lrpt.eval
# trainer's subpackages, each importing only those after it (the root modules errors and tensor_bytes are leaves)
ORDER = ("bench", "cli", "train", "rundir", "measure", "model", "backbone", "config", "runtime")


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(["lrpt", *(parts[:-1] if parts[-1] == "__init__" else parts)])


def modules() -> dict[str, Path]:
    return {module_name(p): p for folder in FOLDERS for p in (ROOT / folder).rglob("*.py")}


class Imports(ast.NodeVisitor):
    """Every lrpt module a file imports, at any depth; `if TYPE_CHECKING:` blocks are annotations, not imports."""

    def __init__(self, name: str, is_package: bool, known: set[str]):
        self.package = name.split(".") if is_package else name.split(".")[:-1]
        self.known, self.found = known, set()

    def visit_If(self, node: ast.If) -> None:
        test = node.test
        if getattr(test, "id", None) == "TYPE_CHECKING" or getattr(test, "attr", None) == "TYPE_CHECKING":
            for child in node.orelse:
                self.visit(child)
            return
        self.generic_visit(node)

    def visit_Import(self, node: ast.Import) -> None:
        self.found.update(a.name for a in node.names if a.name in self.known)

    def visit_ImportFrom(self, node: ast.ImportFrom) -> None:
        if node.level:
            base = self.package[:len(self.package) - node.level + 1] + (node.module.split(".") if node.module else [])
        elif (node.module or "").split(".")[0] == "lrpt":
            base = node.module.split(".")
        else:
            return
        for alias in node.names:
            full = ".".join([*base, alias.name])
            self.found.add(full if full in self.known else ".".join(base))


def import_graph() -> dict[str, set[str]]:
    found = modules()
    graph = {}
    for name, path in found.items():
        visitor = Imports(name, path.name == "__init__.py", set(found))
        visitor.visit(ast.parse(path.read_text(), str(path)))
        graph[name] = {m for m in visitor.found if m in found and m != name}
    return graph


def a_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle as a path, or None (depth-first search, three colours)."""
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def test_the_cycle_finder_finds_a_cycle():
    assert a_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": set()}) == ["a", "b", "c", "a"]
    assert a_cycle({"a": {"b"}, "b": {"c"}, "c": set()}) is None


def test_the_graph_sees_function_local_and_relative_imports():
    graph = import_graph()
    assert "lrpt.trainer.runtime.distributed" in graph["lrpt.trainer.backbone.quant_load"]  # `from ..runtime import`
    assert "lrpt.trainer.errors" in graph["lrpt.trainer.config.ds_config"]
    assert "lrpt.trainer.config.run_config" not in graph["lrpt.trainer.config.ds_config"]  # under TYPE_CHECKING
    local = {m for m, deps in graph.items() if "lrpt.trainer.train.loop" in deps}
    assert "lrpt.trainer.cli.main" in local  # imported inside train_command only


def test_no_import_cycle():
    cycle = a_cycle(import_graph())
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def subpackage(name: str) -> str | None:
    parts = name.split(".")
    return parts[2] if parts[1] == "trainer" and len(parts) > 3 else None


@pytest.mark.parametrize("below", ORDER)
def test_each_subpackage_imports_only_those_below_it(below):
    graph = import_graph()
    allowed = set(ORDER[ORDER.index(below) + 1:]) | {below}
    wrong = sorted(f"{m} -> {d}" for m, deps in graph.items() if subpackage(m) == below
                   for d in deps if subpackage(d) is not None and subpackage(d) not in allowed)
    assert not wrong, wrong


def test_every_subpackage_is_in_the_order():
    found = {p.name for p in (ROOT / "trainer").iterdir() if (p / "__init__.py").is_file()}
    assert found == set(ORDER)


# The one edge allowed: the table reads report.json, the run directory's contract, through its one reader.
REPORT_READER = ("lrpt.eval.aggregate", "lrpt.trainer.rundir.report")


def test_eval_and_methods_never_import_trainer():
    graph = import_graph()
    assert REPORT_READER[1] in graph[REPORT_READER[0]]  # the exception below names an edge that exists
    wrong = sorted(f"{m} -> {d}" for m, deps in graph.items() for d in deps
                   if m.startswith(("lrpt.eval", "lrpt.methods")) and d.startswith("lrpt.trainer")
                   and (m, d) != REPORT_READER)
    assert not wrong, wrong
    assert all(d.startswith("lrpt.methods") for m, deps in graph.items() if m.startswith("lrpt.methods") for d in deps)


def test_the_style_gate_passes():
    """ruff with the project's settings (pyproject.toml: pyflakes, pycodestyle's errors, lines of at most 120)."""
    ruff = shutil.which("ruff") or str(Path(sys.executable).with_name("ruff"))
    result = subprocess.run([ruff, "check", "--no-cache", str(ROOT)], capture_output=True, text=True, cwd=ROOT)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]


def test_the_style_gate_catches_a_long_line_and_an_unused_import(tmp_path):
    """The gate can fail: the project's settings on a file with a 121-character line and an unused import."""
    ruff = shutil.which("ruff") or str(Path(sys.executable).with_name("ruff"))
    probe = tmp_path / "probe.py"
    probe.write_text("import os\n\nx = '" + "a" * 115 + "'\n")
    assert len(probe.read_text().splitlines()[-1]) == 121
    result = subprocess.run([ruff, "check", "--no-cache", "--output-format", "concise", "--config",
                             str(ROOT / "pyproject.toml"), str(probe)], capture_output=True, text=True, cwd=tmp_path)
    assert result.returncode == 1 and "E501" in result.stdout and "F401" in result.stdout, result.stdout
