"""Finished runs -> the papers' SuperGLUE table.

Rows are methods (with their trainable parameters), columns tasks, then Avg. A cell is mean ± sample
standard deviation over seeds of the column's number ×100; which number, which columns and in what
order is the layout's (eval/layouts.py), and every header names its metric:

    --layout lrpt   (default) the tasks present, in the benchmark's order, each scored by `Task.score`
    --layout dpt    DPT's Table 1 (arXiv 2310.10094): "# Trainable Params.", then WSC, WiC, BoolQ, CB,
                    COPA, MultiRC, ReCoRD, RTE, Avg.; accuracy except MultiRC F1a and ReCoRD F1
    --layout dept   DePT's Table 1 (arXiv 2309.05173), SuperGLUE: Params, then MultiRC, BoolQ, WiC, WSC, CB,
                    Mean; accuracy except MultiRC F1a

Avg is the mean of the row's task means, shown only when the row has every column of the table (an
average over a subset would not compare). Few-shot runs get their own rows, after the full-data ones,
with a K column saying how many training rows they saw. `--reference` (a paper's layout: dpt, dept) adds
that paper's rows for the runs' backbone (eval/published.py) and, under each of our methods it has,
Δ = ours − paper.

A grid's runs (`lrpt sweep --grid`) name its fields: `--by FIELD...` gives each point its own row,
`--select FIELD...` keeps per task and method the point with the best mean dev score (eval.selection).

    lrpt table RUNS/*/ --output results/superglue      # writes .md and .csv, prints the markdown
    lrpt table SWEEP/ --select learning_rate rank       # a grid trained with --selection dev
    lrpt table RUNS/*/ --layout dpt --reference         # beside DPT's published numbers
    lrpt table RUNS/*/ --layout dept --reference        # beside DePT's (T5-Base only)
"""
from __future__ import annotations

import argparse
import csv
import glob
import io
import statistics
import sys
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from ..trainer.rundir.report import Report, ReportError
from . import selection, stats_table
from .layouts import LAYOUTS, Column, Layout
from .published import Paper, PublishedRow
from .stats_table import FewShotStats
from .tasks import get_task

FULL = "full"   # the K column's value for runs on the whole training set
# a row whose prompt was chosen on the split it reports is marked (and set apart from one that was not)
PROTOCOL_MARKS = {"paper-val": " (best on val)"}
PROTOCOL_NOTE = ("(best on val): the prompt of the step that scored best on this very validation split, as DPT's "
                 "code selects (--selection paper-val); optimistic next to a prompt chosen without it.")


class TableError(ValueError):
    """A problem with the runs or flags given to `lrpt table`, said in one line (main exits 2 with it)."""


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
        report = Report.read(path)
    except ReportError as exc:
        raise TableError(str(exc)) from None
    config = report.config
    try:
        task = get_task(config["task"])
        record = {"path": str(path), "task": task.name,
                  "method": report.method + PROTOCOL_MARKS.get(report.selection_protocol, ""),
                  "seed": config["seed"], "few_shot": config.get("few_shot") or None,
                  "draw": config.get("few_shot_draw"),
                  "model": config.get("model"), "trainable_params": report.trainable_params,
                  "metrics": report.metrics, "config": config, "protocol": report.selection_protocol,
                  "dev_score": _dev_score(report)}
        record["score"] = task.score(record["metrics"])
    except KeyError as exc:
        what = str(exc.args[0] if exc.args else exc)
        raise TableError(f"{path}: {what if ' ' in what else f'no {what!r} field'}") from None
    return record


def _dev_score(report: Report) -> float | None:
    """The dev split's score of the prompt the metrics are of (--selection dev), None without one."""
    if report.selection is None:
        return None
    scored = [h["score"] for h in report.train.eval_history
              if h.get("split") == "dev" and h.get("step") == report.selection.step and "score" in h]
    return scored[-1] if scored else None


def collect(run_dirs_or_glob: str | Path | Iterable[str | Path]) -> list[dict]:
    """One record per run: task, method, seed, few_shot (None for full data), model,
    trainable_params, metrics, score (the task's table number, in [0, 1]) and path."""
    items = [run_dirs_or_glob] if isinstance(run_dirs_or_glob, (str, Path)) else list(run_dirs_or_glob)
    paths = list(dict.fromkeys(p.resolve() for item in items for p in _report_paths(item)))
    return [_record(p) for p in paths]


@dataclass
class _Group:
    """The runs of one row: values (×100) per task over seeds, trainable-parameter counts, backbone."""
    model: str | None
    values: dict[str, list[float]] = field(default_factory=dict)
    params: list[int] = field(default_factory=list)


@dataclass
class _Row:
    """One table row, ready to print: cells are (mean, std or None) per task, in the table's units."""
    lead: list[str]
    params: tuple[str, str]                       # (markdown, csv)
    cells: dict[str, tuple[float, float | None]]
    avg: float | None
    source: str = "lrpt"                          # "lrpt", "paper" or "delta" (the csv's source column)
    selected: str = ""                            # --select: each task's winning point


def _value(record: dict, column: Column, layout: Layout) -> float:
    """The record's number for the column, ×100; a report lacking the metric is named with it."""
    try:
        return 100 * column.value(record["metrics"])
    except KeyError as exc:
        raise TableError(f"{record['path']}: {record['task']} metrics have no {exc.args[0]!r} (only "
                         f"{sorted(record['metrics'])}), which the {layout.name} layout's {column.label} "
                         "needs") from None


def _groups(records: list[dict], layout: Layout, show_model: bool) -> dict[tuple, _Group]:
    """Records grouped into rows keyed (few_shot, model or None, method): full data first, then by K,
    methods in first-seen order. Two reports of the same run are an error naming both."""
    columns = {c.task: c for c in layout.columns}
    groups: dict[tuple, _Group] = {}
    seen: dict[tuple, str] = {}
    for r in sorted(records, key=lambda r: r["few_shot"] or 0):   # stable: keeps first-seen method order
        key = (r["few_shot"], r["model"] if show_model else None, r["method"])
        run = key + (r["task"], r["seed"], r["draw"])
        if run in seen:
            k = f", K={r['few_shot']}" if r["few_shot"] else ""
            k += f", draw {r['draw']}" if r["draw"] is not None else ""
            raise TableError(f"two reports for {r['method']} on {r['task']} (seed {r['seed']}{k}): "
                             f"{seen[run]} and {r['path']}; if they are points of a grid, name its fields: "
                             "--by FIELD... (a row per point) or --select FIELD... (the dev-best point)")
        seen[run] = r["path"]
        group = groups.setdefault(key, _Group(r["model"]))
        group.values.setdefault(r["task"], []).append(_value(r, columns[r["task"]], layout))
        if r["trainable_params"] not in group.params:
            group.params.append(r["trainable_params"])
    return groups


def _mean_std(values: list[float]) -> tuple[float, float | None]:
    return statistics.mean(values), statistics.stdev(values) if len(values) > 1 else None


def _avg(cells: dict[str, tuple[float, float | None]], columns: list[Column]) -> float | None:
    """Mean of the row's task means, only when it has every column (else it would not compare)."""
    if not all(c.task in cells for c in columns):
        return None
    return statistics.mean(cells[c.task][0] for c in columns)


def _compact(n: int) -> str:
    """76800 -> "77K", as the papers print parameter counts (rounding half up)."""
    for unit, size in (("B", 10**9), ("M", 10**6), ("K", 10**3)):
        if n >= size:
            return f"{(n + size // 2) // size}{unit}"
    return str(n)


def _params(counts: list[int], layout: Layout) -> tuple[str, str]:
    """(markdown, csv) of a row's parameter counts: the csv keeps exact numbers for computing with."""
    shown = [_compact(p) if layout.compact_params else f"{p:,}" for p in counts]
    return " / ".join(shown), "/".join(str(p) for p in counts)


def _lead(k: int | None, model: str | None, method: str, few_shot: bool, show_model: bool) -> list[str]:
    """The row's label cells: K and Model only when the table has those columns."""
    return ([str(k or FULL)] if few_shot else []) + ([str(model)] if show_model else []) + [method]


def _our_rows(groups: dict[tuple, _Group], columns: list[Column], layout: Layout,
              few_shot: bool, show_model: bool) -> dict[tuple, _Row]:
    """Our rows by group key (the key is kept to find each row's published counterpart)."""
    rows = {}
    for key, group in groups.items():
        cells = {t: _mean_std(v) for t, v in group.values.items()}
        rows[key] = _Row(_lead(key[0], key[1], key[2], few_shot, show_model), _params(group.params, layout),
                         cells, _avg(cells, columns))
    return rows


def _backbones(groups: dict[tuple, _Group], paper: Paper, override: str | None) -> dict[str | None, str]:
    """The paper's backbone for each model the runs use: by hub name, or `override` (for a local path)."""
    models = list(dict.fromkeys(g.model for g in groups.values()))
    ran = paper.ran()
    if override is not None:
        backbone = paper.backbone_of(override)
        if backbone is None:
            raise TableError(f"--reference_backbone {override}: {paper.name}'s {paper.table} has rows for "
                             f"{', '.join(ran)} only")
        if len(models) > 1:
            raise TableError(f"--reference_backbone names one backbone, but the runs use {len(models)} models "
                             f"({', '.join(map(str, models))}); tabulate each backbone's runs apart")
        return {models[0]: backbone}
    out = {}
    for model in models:
        backbone = paper.backbone_of(model or "")
        if backbone is None:
            raise TableError(f"no published {paper.name} rows for model {model!r} ({paper.name}, arXiv {paper.arxiv}, "
                             f"ran {', '.join(ran)}); if it is a local copy of one, add --reference_backbone "
                             f"{ran[0]}" + (f" (or {', '.join(ran[1:])})" if len(ran) > 1 else ""))
        out[model] = backbone
    return out


def _paper_row(row: PublishedRow, paper: Paper, few_shot: bool, show_model: bool) -> _Row:
    stds = row.stds or (None,) * len(row.means)
    cells = dict(zip(paper.tasks, zip(row.means, stds)))
    return _Row(_lead(None, row.backbone, f"{row.method} (paper)", few_shot, show_model),
                (row.params, row.params), cells, row.avg, "paper")


def _delta_row(ours: _Row, theirs: PublishedRow, paper: Paper, method: str) -> _Row:
    """Ours − paper per task both have (and Avg when both have one)."""
    means = dict(zip(paper.tasks, theirs.means))
    cells = {t: (mean - means[t], None) for t, (mean, _) in ours.cells.items() if t in means}
    avg = ours.avg - theirs.avg if ours.avg is not None else None
    return _Row(ours.lead[:-1] + [f"Δ {method} − paper"], ("", ""), cells, avg, "delta")


def _with_reference(groups: dict[tuple, _Group], ours: dict[tuple, _Row], paper: Paper, override: str | None,
                    few_shot: bool, show_model: bool) -> list[_Row]:
    """The paper's rows for the runs' backbones first, then ours, each full-data row of a method the
    paper has followed by its Δ row."""
    backbones = _backbones(groups, paper, override)
    rows = [_paper_row(p, paper, few_shot, show_model)
            for backbone in dict.fromkeys(backbones.values()) for p in paper.rows_for(backbone)]
    for key, row in ours.items():
        rows.append(row)
        k, _, method = key
        match = paper.row_of(backbones[groups[key].model], method.removesuffix(PROTOCOL_MARKS["paper-val"]))
        if k is None and match is not None:
            rows.append(_delta_row(row, match, paper, method))
    return rows


def _number(x: float | None, decimals: int, sign: bool = False) -> str:
    """A number as the table prints it ("" when absent); a Δ carries its sign so +0.30 reads as a gain."""
    return "" if x is None else f"{x:{'+' if sign else ''}.{decimals}f}"


def _markdown_cells(row: _Row, columns: list[Column], decimals: int) -> list[str]:
    delta = row.source == "delta"
    cells = []
    for c in columns:
        if c.task not in row.cells:
            cells.append("–")
            continue
        mean, std = row.cells[c.task]
        cells.append(_number(mean, decimals, delta) + (f" ± {std:.{decimals}f}" if std is not None else ""))
    return cells + [_number(row.avg, decimals, delta) or "–"]


def _csv_cells(row: _Row, columns: list[Column], decimals: int) -> list[str]:
    numbers = []
    for c in columns:
        mean, std = row.cells.get(c.task, (None, None))
        numbers += [_number(mean, decimals), _number(std, decimals)]
    return numbers + [_number(row.avg, decimals)]


def _render(rows: list[_Row], head: list[str], columns: list[Column], layout: Layout,
            reference: bool, selected: str = "") -> tuple[str, str]:
    md = ["| " + " | ".join(head + [layout.params_label] + [c.label for c in columns] + [layout.avg_label]) + " |",
          "|" + "---|" * len(head) + "---:|" * (len(columns) + 2)]
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow([h.lower() for h in head] + ["params"] + [x for c in columns for x in (c.task, f"{c.task}_std")]
                    + ["avg"] + (["source"] if reference else []) + (["selected"] if selected else []))
    for row in rows:
        md.append("| " + " | ".join(row.lead + [row.params[0]] + _markdown_cells(row, columns, layout.decimals))
                  + " |")
        writer.writerow(row.lead + [row.params[1]] + _csv_cells(row, columns, layout.decimals)
                        + ([row.source] if reference else []) + ([row.selected] if selected else []))
    if reference and layout.paper is not None:
        paper = layout.paper
        md += ["", f"(paper) rows: {paper.name} (arXiv {paper.arxiv}) {paper.source} Δ = our mean − the paper's."]
    if any(PROTOCOL_MARKS["paper-val"] in row.lead[-1] for row in rows if row.source == "lrpt"):
        md += ["", PROTOCOL_NOTE]
    if selected:
        md += ["", selected] + [f"- {' '.join(row.lead)}: {row.selected}" for row in rows if row.selected]
    if any(selection.OPTIMISTIC_MARK in row.lead[-1] for row in rows if row.source == "lrpt"):
        md += ["", selection.OPTIMISTIC_NOTE]
    return "\n".join(md) + "\n", out.getvalue()


def _layout(name: str | Layout, reference: bool) -> Layout:
    layout = name if isinstance(name, Layout) else LAYOUTS.get(name)
    if layout is None:
        raise TableError(f"no table layout {name!r}; choose one of {', '.join(LAYOUTS)}")
    if reference and layout.paper is None:
        raise TableError("--reference sets a paper's published rows beside ours, in that paper's columns and "
                         f"metrics: add {_paper_layouts()}")
    return layout


def _paper_layouts() -> str:
    """The layouts --reference works with, as messages and --help offer them: "--layout dpt (DPT, arXiv ...)"."""
    return " or ".join(f"--layout {name} ({layout.paper.name}, arXiv {layout.paper.arxiv})"
                       for name, layout in LAYOUTS.items() if layout.paper is not None)


@dataclass
class Tables:
    """A table as markdown and csv, and its few-shot statistics (empty without few-shot runs)."""
    markdown: str
    csv: str
    stats: FewShotStats
    labels: dict[str, str]  # each task's column header

    def write(self, prefix: Path) -> list[Path]:
        """PREFIX.md and PREFIX.csv; with few-shot runs also PREFIX.stats.csv, PREFIX.paired.csv and a plot per
        task, PREFIX.<task>.png."""
        prefix.parent.mkdir(parents=True, exist_ok=True)
        files = {".md": self.markdown, ".csv": self.csv}
        if self.stats:
            files |= {".stats.csv": stats_table.cells_csv(self.stats), ".paired.csv": stats_table.pairs_csv(self.stats)}
        written = []
        for suffix, text in files.items():
            written.append(prefix.with_name(prefix.name + suffix))
            written[-1].write_text(text)
        return written + (stats_table.plot(self.stats, prefix, self.labels) if self.stats else [])


def table(records: list[dict], layout: str | Layout = "lrpt", reference: bool = False,
          reference_backbone: str | None = None, by: list[str] = (), select: list[str] = (),
          select_on: str = selection.DEV) -> tuple[str, str]:
    """(markdown, csv) of `tabulate`."""
    tables = tabulate(records, layout, reference, reference_backbone, by, select, select_on)
    return tables.markdown, tables.csv


def tabulate(records: list[dict], layout: str | Layout = "lrpt", reference: bool = False,
             reference_backbone: str | None = None, by: list[str] = (), select: list[str] = (),
             select_on: str = selection.DEV) -> Tables:
    """The records in `layout`. Markdown cells read "85.3 ± 1.2" (one seed: "85.3");
    the csv has the same rows with numbers: a mean and a std column per task, then avg (and, with
    `reference`, a source column: lrpt, paper or delta). `reference_backbone` implies `reference`.
    A grid's runs: `by` fields split rows (a row per point), `select` fields are chosen per task and row on
    `select_on` (eval.selection), the winners named under the table and in the csv's selected column."""
    reference = reference or reference_backbone is not None
    chosen = _layout(layout, reference)
    if not records:
        raise TableError("no runs to tabulate")
    try:
        records, winners = _grid(records, list(by), list(select), select_on)
    except selection.SelectionError as exc:
        raise TableError(str(exc)) from None
    show_model = len({r["model"] for r in records}) > 1   # never average two backbones together
    few_shot = any(r["few_shot"] for r in records)
    columns = chosen.shown({r["task"] for r in records})
    groups = _groups(records, chosen, show_model)
    ours = _our_rows(groups, columns, chosen, few_shot, show_model)
    for (k, model, method, task), said in winners.items():
        row = ours[(k, model if show_model else None, method + (selection.OPTIMISTIC_MARK if select_on == "val"
                                                                  else ""))]
        row.selected = "; ".join(filter(None, [row.selected, f"{task}: {said}"]))
    rows = (_with_reference(groups, ours, chosen.paper, reference_backbone, few_shot, show_model) if reference
            else list(ours.values()))
    head = (["K"] if few_shot else []) + (["Model"] if show_model else []) + ["Method"]
    chosen_on = (f"Grid points selected per task ({', '.join(select)}, on {select_on}; the cells are their "
                 "validation scores):") if select else ""
    markdown, csv_text = _render(rows, head, columns, chosen, reference, chosen_on)
    stats = stats_table.few_shot_stats(_few_shot_scores(records, chosen, show_model))
    if stats:
        markdown += "\n" + stats_table.markdown(stats)
    return Tables(markdown, csv_text, stats, {c.task: c.label for c in columns})


def _few_shot_scores(records: list[dict], layout: Layout, show_model: bool) -> dict[tuple, dict[tuple, float]]:
    """Per few-shot cell (K, method, task): (draw, seed) -> the table's number (a run without a draw of its own
    drew its rows by its seed)."""
    columns = {c.task: c for c in layout.columns}
    scores: dict[tuple, dict[tuple, float]] = {}
    for r in sorted(records, key=lambda r: r["few_shot"] or 0):
        if r["few_shot"]:
            method = f"{r['model']} {r['method']}" if show_model else r["method"]
            cell = scores.setdefault((r["few_shot"], method, r["task"]), {})
            cell[(r["draw"], r["seed"])] = _value(r, columns[r["task"]], layout)
    return scores


def _grid(records: list[dict], by: list[str], select: list[str], on: str) -> tuple[list[dict], dict]:
    """A grid's records: each method labelled with its `by` point, then the `select` point chosen per task."""
    if set(by) & set(select):
        raise TableError(f"--by and --select both name {', '.join(sorted(set(by) & set(select)))}: a field either "
                         "splits rows or is chosen, not both")
    if by:
        records = [{**r, "method": f"{r['method']} {selection.label(by, selection.point_of(r, by))}"}
                   for r in records]
    if not select:
        return records, {}
    kept, winners = selection.select(records, select, on)
    if on == selection.VAL:
        kept = [{**r, "method": r["method"] + selection.OPTIMISTIC_MARK} for r in kept]
    return kept, winners


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="lrpt table", description=__doc__.split("\n\n")[0])
    parser.add_argument("runs", nargs="+", metavar="RUN_DIR",
                        help="run directories, report.json files, directories of runs, or globs")
    parser.add_argument("--output", metavar="PATH_PREFIX", help="also write PATH_PREFIX.md and PATH_PREFIX.csv")
    parser.add_argument("--layout", choices=list(LAYOUTS), default="lrpt",
                        help="lrpt (default): Task.score per task; dpt: DPT Table 1's columns, order and metrics; "
                             "dept: DePT Table 1's SuperGLUE columns, order and metrics")
    parser.add_argument("--reference", action="store_true",
                        help=f"with {_paper_layouts()}: add that paper's published rows for the runs' backbone, "
                             "and Δ = ours − paper")
    ran = "; ".join(f"{name}: {', '.join(layout.paper.ran())}" for name, layout in LAYOUTS.items() if layout.paper)
    parser.add_argument("--reference_backbone", "--reference-backbone", metavar="HUB_NAME",
                        help=f"the backbone to compare with ({ran}) when the runs' model is a local path; "
                             "implies --reference")
    parser.add_argument("--by", nargs="+", default=[], metavar="FIELD",
                        help="a grid's fields that split rows: a row per point (e.g. --by learning_rate)")
    parser.add_argument("--select", nargs="+", default=[], metavar="FIELD",
                        help="a grid's fields chosen per task and method: the point with the best mean dev score "
                             "(runs trained with --selection dev), reported by its validation score, the winners "
                             "named under the table")
    parser.add_argument("--select_on", "--select-on", choices=("dev", "val"), default="dev",
                        help="dev (default), or val: the optimistic choice on the reported split, marked so")
    args = parser.parse_args(argv)
    try:
        tables = tabulate(collect(args.runs), args.layout, args.reference, args.reference_backbone,
                          by=args.by, select=args.select, select_on=args.select_on)
    except (TableError, FileNotFoundError) as exc:
        print(f"lrpt table: error: {exc}", file=sys.stderr)
        return 2
    if args.output:
        tables.write(Path(args.output).expanduser())
    print(tables.markdown, end="")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
