"""`lrpt predict RUN_DIR --input rows.jsonl --output preds.jsonl`: a trained prompt on new inputs.

Rows are in the official SuperGLUE layout of the run's task; they are formatted with the run's
task formatter and answered with the run's decoding mode (or --decoding). One JSON line per
example, in input order (a MultiRC row yields one example per answer, a ReCoRD row one per query).
"""
from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

from lrpt.eval.data import DataError, format_rows, read_jsonl
from lrpt.eval.tasks import get_task
from lrpt.trainer.data import Encoder, tokenize
from lrpt.trainer.errors import LrptError
from lrpt.trainer.evaluate import DECODING, generate, rank_classify
from lrpt.trainer.runs import load_run, run_config


def predict(run_dir: str, input_path: str, output_path: str, decoding: str | None = None,
            batch_size: int | None = None, progress: bool = True) -> int:
    path = Path(input_path)
    if not path.is_file():
        raise LrptError(f"--input {input_path!r} does not exist")
    out = Path(output_path)
    if out.exists() and out.resolve() == path.resolve():
        raise LrptError(f"--output {output_path!r} is the --input file: it would be overwritten; write elsewhere")
    task = get_task(run_config(run_dir).task)
    try:  # the rows are read and checked before the backbone loads
        rows = format_rows(task, read_jsonl(path))
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
    staged = out.with_name(f".{out.name}.tmp")  # then renamed: a killed run never leaves half a file at --output
    with staged.open("w") as f:
        for i in range(len(rows)):
            f.write(json.dumps({"index": i, "group": rows[i]["group"], "prediction": answers[i],
                                "valid": task.is_valid(answers[i], rows[i])}) + "\n")
    os.replace(staged, out)
    return len(rows)


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="lrpt predict", description=__doc__.split("\n")[0])
    parser.add_argument("run_dir")
    parser.add_argument("--input", required=True, help="JSON lines in the official layout of the run's task")
    parser.add_argument("--output", required=True)
    parser.add_argument("--decoding", choices=DECODING, default=None, help="default: the run's")
    parser.add_argument("--batch_size", "--batch-size", type=int, default=None)
    args = parser.parse_args(argv)
    n = predict(args.run_dir, args.input, args.output, args.decoding, args.batch_size)
    print(f"wrote {n} predictions to {args.output}")
    return 0
