"""Finished runs -> the papers' SuperGLUE table.

Rows are methods (with their trainable parameters), columns the tasks present, in the
benchmark's order, then Avg. A cell is mean ± sample standard deviation over seeds of the task's
table score (`Task.score`) ×100; Avg is the mean of the row's task means, shown only when the row
has every task of the table (an average over a subset would not compare). Few-shot runs get their
own rows, after the full-data ones, with a K column saying how many training rows they saw.

    lrpt table RUNS/*/ --output results/superglue      # writes .md and .csv, prints the markdown
"""
from __future__ import annotations

import argparse
import csv
import glob
import io
import json
import statistics
from collections.abc import Iterable
from pathlib import Path

from lrpt.eval.tasks import TASKS, get_task

FULL = "full"   # the K column's value for runs on the whole training set


def _report_paths(item: str | Path) -> list[Path]:
    """A report.json, a run directory, a directory of runs (searched recursively), or a glob."""
    path = Path(item).expanduser()
    if path.is_file():
        return [path]
    if path.is_dir():
        found = [path / "report.json"] if (path / "report.json").is_file() else sorted(path.rglob("report.json"))
    else:
        found = [Path(p) for p in sorted(glob.glob(str(item), recursive=True))]
        found = [p / "report.json" if p.is_dir() else p for p in found]
        found = [p for p in found if p.is_file()]
    if not found:
        raise FileNotFoundError(f"no report.json at or under {item}")
    return found


def _record(path: Path) -> dict:
    try:
        report = json.loads(path.read_text())
        config = report["config"]
        task = get_task(config["task"])
        record = {"path": str(path), "task": task.name, "method": report["method"],
                  "seed": config["seed"], "few_shot": config.get("few_shot") or None,
                  "model": config.get("model"), "trainable_params": report["trainable_params"],
                  "metrics": report["metrics"]}
        record["score"] = task.score(record["metrics"])
    except KeyError as exc:
        raise KeyError(f"{path}: {exc.args[0] if exc.args else exc}") from None
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path}: not valid JSON ({exc.msg})") from None
    return record


def collect(run_dirs_or_glob: str | Path | Iterable[str | Path]) -> list[dict]:
    """One record per run: task, method, seed, few_shot (None for full data), model,
    trainable_params, metrics, score (the task's table number, in [0, 1]) and path."""
    items = [run_dirs_or_glob] if isinstance(run_dirs_or_glob, (str, Path)) else list(run_dirs_or_glob)
    paths = list(dict.fromkeys(p.resolve() for item in items for p in _report_paths(item)))
    return [_record(p) for p in paths]


def _cells(records: list[dict]) -> tuple[list[str], bool, dict[tuple, dict[str, list[float]]], dict[tuple, list[int]]]:
    """Tasks present (in table order), whether to show the model, and per row key the scores by
    task and the trainable-parameter counts."""
    tasks = [t for t in TASKS if any(r["task"] == t for r in records)]
    show_model = len({r["model"] for r in records}) > 1   # never average two backbones together
    scores: dict[tuple, dict[str, list[float]]] = {}
    params: dict[tuple, list[int]] = {}
    seen: dict[tuple, str] = {}
    for r in sorted(records, key=lambda r: r["few_shot"] or 0):   # stable: keeps first-seen method order
        key = (r["few_shot"], r["model"] if show_model else None, r["method"])
        run = key + (r["task"], r["seed"])
        if run in seen:
            k = f", K={r['few_shot']}" if r["few_shot"] else ""
            raise ValueError(f"two reports for {r['method']} on {r['task']} (seed {r['seed']}{k}): "
                             f"{seen[run]} and {r['path']}")
        seen[run] = r["path"]
        scores.setdefault(key, {}).setdefault(r["task"], []).append(100 * r["score"])
        params.setdefault(key, [])
        if r["trainable_params"] not in params[key]:
            params[key].append(r["trainable_params"])
    return tasks, show_model, scores, params


def _mean_std(values: list[float]) -> tuple[float, float | None]:
    return statistics.mean(values), statistics.stdev(values) if len(values) > 1 else None


def table(records: list[dict]) -> tuple[str, str]:
    """(markdown, csv) of the records. Markdown cells read "85.3 ± 1.2" (one seed: "85.3");
    the csv has the same rows with numbers: a mean and a std column per task, then avg."""
    if not records:
        raise ValueError("no runs to tabulate")
    tasks, show_model, scores, params = _cells(records)
    few_shot = any(key[0] for key in scores)
    head = (["K"] if few_shot else []) + (["Model"] if show_model else []) + ["Method", "Params"]
    md = ["| " + " | ".join(head + [TASKS[t].dir_name for t in tasks] + ["Avg"]) + " |",
          "|" + "---|" * (len(head) - 1) + "---:|" * (len(tasks) + 2)]
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow([h.lower() for h in head] + [c for t in tasks for c in (t, f"{t}_std")] + ["avg"])
    for key, by_task in scores.items():
        k, model, method = key
        lead = ([str(k or FULL)] if few_shot else []) + ([str(model)] if show_model else []) + [method]
        cells, numbers, means = [], [], []
        for t in tasks:
            if t not in by_task:
                cells.append("–")
                numbers += ["", ""]
                continue
            mean, std = _mean_std(by_task[t])
            means.append(mean)
            cells.append(f"{mean:.1f}" + (f" ± {std:.1f}" if std is not None else ""))
            numbers += [f"{mean:.1f}", f"{std:.1f}" if std is not None else ""]
        avg = statistics.mean(means) if len(means) == len(tasks) else None
        md.append("| " + " | ".join(lead + [" / ".join(f"{p:,}" for p in params[key])] + cells
                                    + [f"{avg:.1f}" if avg is not None else "–"]) + " |")
        writer.writerow(lead + ["/".join(str(p) for p in params[key])] + numbers
                        + [f"{avg:.1f}" if avg is not None else ""])
    return "\n".join(md) + "\n", out.getvalue()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="lrpt table", description=__doc__.split("\n\n")[0])
    parser.add_argument("runs", nargs="+", metavar="RUN_DIR",
                        help="run directories, report.json files, directories of runs, or globs")
    parser.add_argument("--output", metavar="PATH_PREFIX", help="also write PATH_PREFIX.md and PATH_PREFIX.csv")
    args = parser.parse_args(argv)
    markdown, csv_text = table(collect(args.runs))
    if args.output:
        prefix = Path(args.output).expanduser()
        prefix.parent.mkdir(parents=True, exist_ok=True)
        prefix.with_name(prefix.name + ".md").write_text(markdown)
        prefix.with_name(prefix.name + ".csv").write_text(csv_text)
    print(markdown, end="")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
