"""`lrpt predict RUN_DIR... --input rows.jsonl --output preds.jsonl`: trained prompts on new inputs.

Rows are in the official SuperGLUE layout of the run's task; they are formatted with the run's
task formatter and answered with the run's decoding mode (or --decoding). One JSON line per
example, in input order (a MultiRC row yields one example per answer, a ReCoRD row one per query).
Several runs of one backbone (same model, task, precision, source/target lengths and decoding) load
the backbone once and answer each example with each run in one pass (train.prompt_mix): one
line per (example, run), runs in the order given, each naming its run (its directory's name). A row
with a field "run": NAME is answered by that run alone.
"""
from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

import torch
from safetensors.torch import load_file

from ...eval.data import WHERE, DataError, format_rows, read_jsonl, row_examples
from ...eval.tasks import Task, get_task
from ...methods import REGISTRY
from ..backbone.load import backbone_settings, load_run_backbone
from ..config.run_config import RunConfig
from ..errors import LrptError
from ..train import prompt_mix
from ..train.data import Encoder, tokenize
from ..train.evaluate import DECODING, generate, rank_classify
from ..train.reopen import load_run, prompt_file, run_config, trained_prompt

# what one pass over one backbone needs the runs to agree on besides the backbone's own settings (decoding unless
# --decoding is given)
SHARED = ("task", "max_source_length", "max_target_length")


def predict(run_dirs: str | list[str], input_path: str, output_path: str, decoding: str | None = None,
            batch_size: int | None = None, progress: bool = True) -> int:
    """Writes the predictions; returns the number of lines written (one run: one per example)."""
    dirs = [run_dirs] if isinstance(run_dirs, (str, os.PathLike)) else list(run_dirs)
    path = Path(input_path)
    if not path.is_file():
        raise LrptError(f"--input {input_path!r} does not exist")
    out = Path(output_path)
    check_output(out, path)
    if batch_size is not None and batch_size < 1:
        raise LrptError(f"--batch_size must be >= 1, got {batch_size}; or leave it out for the run's "
                        "--per_device_eval_batch_size")
    if len(dirs) > 1:
        return predict_many(dirs, path, out, decoding, batch_size, progress)
    run_dir = dirs[0]
    task = get_task(run_config(run_dir).task)
    try:  # the rows are read and checked before the backbone loads
        rows, _ = read_rows(task, path, run_names(dirs))  # a row naming another run is refused, as with several
    except DataError as exc:
        raise LrptError(str(exc)) from None
    cfg, backbone, model = load_run(run_dir, shared_prefix=True)
    decoding = decoding or cfg.decoding
    batch_size = batch_size or cfg.per_device_eval_batch_size
    encoder = Encoder(backbone.tokenizer, backbone.is_encoder_decoder, cfg.max_source_length, cfg.max_target_length)
    if decoding == "generate":
        answers = generate(model, tokenize(rows, encoder, for_generation=True), backbone.tokenizer, batch_size,
                           cfg.max_target_length, synced_gpus=False, progress=progress)
    else:
        answers = rank_classify(model, rows, encoder, batch_size, progress=progress)
    write_lines(out, ({"index": i, "group": rows[i]["group"], "prediction": answers[i],
                       "valid": task.is_valid(answers[i], rows[i])} for i in range(len(rows))))
    return len(rows)


def check_output(out: Path, path: Path) -> None:
    """--output can be written where it is named: found before the backbone loads, not after the whole pass."""
    if out.exists() and out.resolve() == path.resolve():
        raise LrptError(f"--output {str(out)!r} is the --input file: it would be overwritten; write elsewhere")
    if out.is_dir():
        raise LrptError(f"--output {str(out)!r} is a directory; name a file in it, such as "
                        f"{str(out / 'preds.jsonl')!r}")
    if not out.parent.is_dir():
        raise LrptError(f"--output {str(out)!r}: there is no directory {str(out.parent)!r}; create it "
                        "(mkdir -p) or write elsewhere")
    if not os.access(out.parent, os.W_OK | os.X_OK):
        raise LrptError(f"--output {str(out)!r}: directory {str(out.parent)!r} is not writable; write elsewhere")


def write_lines(out: Path, lines) -> None:
    """Written aside, then renamed: a killed run never leaves half a file at --output."""
    staged = out.with_name(f".{out.name}.tmp")
    with staged.open("w") as f:
        for line in lines:
            f.write(json.dumps(line) + "\n")
    os.replace(staged, out)


def run_names(dirs: list[str]) -> list[str]:
    """Each run's name, its directory's (as given: a symlink keeps its own name); two of one name are refused."""
    names = [Path(os.path.abspath(d)).name for d in dirs]
    for b, name in enumerate(names):
        if name in names[:b]:
            a = names.index(name)
            raise LrptError(f"{dirs[a]} and {dirs[b]} are both named {name!r}: each output line names its run by its "
                            "directory's name, so the runs' directories must differ in name; give each run once, "
                            "under a name of its own (rename it or link it under another name)")
    return names


def check_runs(dirs: list[str], cfgs: list[RunConfig], decoding: str | None) -> None:
    """Refuse, before the backbone loads, runs that cannot share one pass over one backbone, naming what differs."""
    settings = [{**backbone_settings(c), **{name: getattr(c, name) for name in SHARED}} for c in cfgs]
    if not decoding:
        settings = [{**s, "decoding": c.decoding} for s, c in zip(settings, cfgs)]
    for name in dict.fromkeys(k for s in settings for k in s):
        b = next((k for k, s in enumerate(settings) if s.get(name) != settings[0].get(name)), None)
        if b is not None:
            also = ", or give --decoding to use one for every run" if name == "decoding" else ""
            raise LrptError(f"{dirs[0]} has --{name} {settings[0].get(name)} and {dirs[b]} {settings[b].get(name)}; "
                            f"several runs are answered in one pass over one backbone, so they must agree on it: "
                            f"predict with runs of one --{name}{also}, or predict each run on its own")
    for d, c in zip(dirs, cfgs):
        if REGISTRY[c.method].offsets_tokens:
            raise LrptError(f"{d} is a {c.method} run: its method also adds offsets to the input tokens, which the "
                            "one pass shared by several runs does not carry; predict it on its own")
        prompt_file(d)  # an unfinished run is refused here, not after the load


def read_rows(task: Task, path: Path, names: list[str]):
    """The examples, and the run each one asks for (None: every run), from the rows' optional "run" field;
    a name that is not one of the runs' is refused at the row's file:line."""
    raw = read_jsonl(path)
    if "run" not in raw.column_names:
        rows = format_rows(task, raw)
        return rows, [None] * len(rows)
    for where, name in zip(raw[WHERE], raw["run"]):
        if name is not None and name not in names:
            raise LrptError(f"{where}: \"run\": {json.dumps(name)} is none of the runs given ({', '.join(names)}); "
                            "name one of them, or leave \"run\" out to have every run answer the row")
    wanted, raw = raw["run"], raw.remove_columns("run")
    counts = [len(row_examples(task, dict(row))) for row in raw]  # examples per row (MultiRC, ReCoRD: several)
    return format_rows(task, raw), [name for name, n in zip(wanted, counts) for _ in range(n)]


def run_prompt(cfg: RunConfig, run_dir: str, backbone) -> torch.Tensor:
    """The run's dense prompt P (c' x e), computed as `load_run`'s prompt module computes it, once."""
    prompt = trained_prompt(cfg, load_file(prompt_file(run_dir)), backbone)
    with torch.no_grad():
        return prompt.eval()().detach()


def predict_many(dirs: list[str], path: Path, out: Path, decoding: str | None, batch_size: int | None,
                 progress: bool) -> int:
    """Every example answered by each of its runs, one load of the backbone, one pass per batch."""
    names = run_names(dirs)
    cfgs = [run_config(d) for d in dirs]
    check_runs(dirs, cfgs, decoding)
    task = get_task(cfgs[0].task)
    try:  # the rows are read and checked before the backbone loads
        rows, wanted = read_rows(task, path, names)
    except DataError as exc:
        raise LrptError(str(exc)) from None
    answered_by = [list(range(len(dirs))) if name is None else [names.index(name)] for name in wanted]
    cfg = cfgs[0]
    backbone = load_run_backbone(cfg)
    backbone.model.eval()
    prompts = [run_prompt(c, d, backbone) for c, d in zip(cfgs, dirs)]
    decoding = decoding or cfg.decoding
    batch_size = batch_size or min(c.per_device_eval_batch_size for c in cfgs)
    encoder = Encoder(backbone.tokenizer, backbone.is_encoder_decoder, cfg.max_source_length, cfg.max_target_length)
    if decoding == "generate":
        answers = prompt_mix.generate_many(backbone, prompts, tokenize(rows, encoder, for_generation=True), answered_by,
                                           batch_size, cfg.max_target_length, progress)
    else:
        answers = prompt_mix.rank_classify_many(backbone, prompts, rows, answered_by, encoder, batch_size, progress)
    lines = [{"index": i, "group": rows[i]["group"], "run": names[k], "prediction": answers[i, k],
              "valid": task.is_valid(answers[i, k], rows[i])} for i in range(len(rows)) for k in answered_by[i]]
    write_lines(out, lines)
    return len(lines)


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="lrpt predict", description=__doc__.split("\n")[0])
    parser.add_argument("run_dir", nargs="+", metavar="RUN_DIR",
                        help="a finished run; several runs of one backbone answer each input in one pass")
    parser.add_argument("--input", required=True,
                        help="JSON lines in the official layout of the run's task; a row's field \"run\": NAME (a run "
                        "directory's name, one of those given) has that run alone answer it")
    parser.add_argument("--output", required=True)
    parser.add_argument("--decoding", choices=DECODING, default=None, help="default: the run's")
    parser.add_argument("--batch_size", "--batch-size", type=int, default=None,
                        help="examples per batch (rank: candidate answers); with R runs a batch has up to "
                        "batch_size x R rows (default: the runs' smallest --per_device_eval_batch_size)")
    args = parser.parse_args(argv)
    n = predict(args.run_dir, args.input, args.output, args.decoding, args.batch_size)
    print(f"wrote {n} predictions to {args.output}")
    return 0
