"""Issue 30, items 9-13: inputs that used to end in a traceback (or were silently misread) are one line naming the
fix, exit 2, before any weight loads, and leave no config.yaml behind to block the corrected relaunch."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

import lrpt.trainer.train.loop as loop_module
import lrpt.trainer.cli.predict as predict_module
from conftest import MEMORISE
from lrpt.trainer.cli.main import main
from lrpt.trainer.config.run_config import RunConfig


def never(*args, **kwargs):
    raise AssertionError("a backbone was loaded: the input should have been refused before")


@pytest.fixture
def no_loading(monkeypatch):
    """Loading a backbone fails the test: every refusal here must come before it."""
    monkeypatch.setattr(loop_module, "load_frozen", never)
    monkeypatch.setattr(predict_module, "load_run", never)
    monkeypatch.setattr("lrpt.trainer.backbone.load.load_backbone", never)


def refusal(argv: list[str], capsys) -> str:
    """The error line of `lrpt ...argv`, after checking it is one line and exit status 2."""
    capsys.readouterr()
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"lrpt {argv[0]}: error: ") and err.count("\n") == 1, err
    return err


def train_refusal(flags: list[str], tmp_path: Path, capsys) -> str:
    out = tmp_path / "run"
    err = refusal(["train", "--model", "tiny-t5", "--output_dir", str(out), "--progress", "false", *flags], capsys)
    assert not (out / "config.yaml").exists()  # the corrected relaunch is not held to the refused settings
    return err


# ---------------------------------------------------------------- 9: every float finite, and in its range

@pytest.mark.parametrize("flags, said", [
    (["--num_train_epochs", "nan"], "--num_train_epochs must be a finite number, got nan"),
    (["--num_train_epochs", "inf", "--max_steps", "2"], "--num_train_epochs must be a finite number, got inf"),
    (["--num_train_epochs", "-1", "--max_steps", "2"], "--num_train_epochs must be >= 0, got -1.0"),
    (["--learning_rate", "nan"], "--learning_rate must be a finite number, got nan"),
    (["--learning_rate", "inf"], "--learning_rate must be a finite number, got inf"),
    (["--weight_decay", "nan"], "--weight_decay must be a finite number, got nan"),
    (["--weight_decay", "-0.1"], "--weight_decay must be >= 0"),
    (["--max_grad_norm", "inf"], "--max_grad_norm must be a finite number, got inf"),
    (["--max_grad_norm", "-1"], "--max_grad_norm must be >= 0"),
    (["--warmup_ratio", "nan"], "--warmup_ratio must be a finite number, got nan"),
    (["--dev_size=-inf"], "--dev_size must be a finite number, got -inf"),
])
def test_a_number_that_is_not_finite_or_out_of_range_is_refused_before_loading(flags, said, tmp_path, capsys,
                                                                               no_loading):
    assert said in train_refusal(["--max_steps", "-1", *flags], tmp_path, capsys)


@pytest.mark.parametrize("line, said", [
    ("learning_rate: .nan", "--learning_rate must be a finite number, got nan"),
    ("num_train_epochs: .inf", "--num_train_epochs must be a finite number, got inf"),
    ("weight_decay: '-inf'", "--weight_decay must be a finite number, got -inf"),
])
def test_yaml_numbers_are_checked_as_flags_are(line, said, tmp_path, capsys, no_loading):
    config = tmp_path / "run.yaml"
    config.write_text(f"max_steps: -1\n{line}\n")
    assert said in train_refusal(["--config", str(config)], tmp_path, capsys)


# ---------------------------------------------------------------- 10: --dev_size and --seed

@pytest.mark.parametrize("size", ["1.5", "1", "nan", "-0.2"])
def test_a_dev_size_that_is_neither_fraction_nor_count_is_refused(size, tmp_path, capsys, no_loading):
    err = train_refusal(["--dev_size", size, "--selection", "dev", "--max_steps", "1"], tmp_path, capsys)
    assert "--dev_size" in err and ("a fraction of the training rows in (0, 1)" in err or "finite" in err), err


def test_a_dev_size_that_leaves_no_training_rows_is_refused_once_the_rows_are_read(memorise_dir, tmp_path, capsys,
                                                                                   no_loading):
    flags = ["--dev_size", "100000", "--task", "rte", "--data_dir", str(memorise_dir), "--max_steps", "1"]
    err = train_refusal(flags, tmp_path, capsys)
    assert f"--dev_size 100000: a dev split of 100000 row(s) leaves none of the {len(MEMORISE)} training rows" in err
    assert "carve fewer than 4 rows, or a fraction such as 0.1" in err


@pytest.mark.parametrize("seed", ["99999999999999999999", str(2**32), "-1"])
def test_a_seed_outside_what_the_generators_take_is_refused(seed, tmp_path, capsys, no_loading):
    err = train_refusal(["--seed", seed, "--max_steps", "1"], tmp_path, capsys)
    assert f"--seed must be in [0, {2**32 - 1}]" in err and seed in err


def test_the_edges_of_the_ranges_pass():
    RunConfig(seed=2**32 - 1, dev_size=0.5, selection="dev", weight_decay=0.0, max_grad_norm=0.0).validate()
    RunConfig(seed=0, dev_size=2.0, num_train_epochs=0.0, max_steps=3).validate()


# ---------------------------------------------------------------- 11: data lines json reads and `datasets` cannot

GOOD = {"premise": "A cat sat.", "hypothesis": "A cat.", "label": "entailment"}
GOOD_LINE = json.dumps(GOOD).encode()

DATA = {  # name -> (the bad line 2 of train.jsonl, what is said)
    "a line of a no-break space": ("\u00a0".encode(), "a line of only U+00A0, which JSON does not read as space; "
                                                      "delete the line"),
    "a line of a vertical tab": (b"\x0b", "a line of only U+000B"),
    "a lone surrogate": (b'{"premise": "caf\\ud800", "hypothesis": "h", "label": "entailment"}',
                         "the value at 'premise' holds \\ud800, half of a UTF-16 surrogate pair"),
    "a duplicate key": (b'{"premise": "a", "premise": "b", "hypothesis": "h", "label": "entailment"}',
                        'key "premise" appears twice in one object; keep one'),
    "a duplicate nested key": (b'{"premise": "a", "hypothesis": "h", "label": "entailment", "x": {"k": 1, "k": 2}}',
                               'key "k" appears twice'),
    "a dict-valued text field": (b'{"premise": {"a": 1}, "hypothesis": "h", "label": "entailment"}',
                                 "field 'premise' is a JSON object ({'a': 1}) where the task reads text; give it as "
                                 "a JSON string"),
    "a list-valued text field": (b'{"premise": "p", "hypothesis": ["h"], "label": "entailment"}',
                                 "field 'hypothesis' is a JSON array (['h'])"),
}


@pytest.mark.parametrize("case", list(DATA))
def test_a_line_datasets_cannot_read_is_named_at_its_file_and_line(case, tmp_path, capsys, no_loading):
    line, said = DATA[case]
    (tmp_path / "RTE").mkdir()
    (tmp_path / "RTE" / "train.jsonl").write_bytes(b"\n".join([GOOD_LINE, line, GOOD_LINE, GOOD_LINE]) + b"\n")
    (tmp_path / "RTE" / "val.jsonl").write_bytes(GOOD_LINE + b"\n")
    flags = ["--task", "rte", "--data_dir", str(tmp_path), "--max_steps", "1", "--per_device_train_batch_size", "1"]
    err = train_refusal(flags, tmp_path, capsys)
    assert err.startswith(f"lrpt train: error: {tmp_path / 'RTE' / 'train.jsonl'}:2: {said}"), err


def test_nested_objects_the_task_reads_field_by_field_still_format(tmp_path):
    """The guard refuses only an object written as text: MultiRC's and ReCoRD's nested rows format as before."""
    from lrpt.eval.data import load_formatted
    from lrpt.eval.tasks import get_task

    for task in ("multirc", "record", "wsc"):
        rows = load_formatted(get_task(task), "val")
        assert len(rows) and not any("{'" in s for s in rows["source"]), task


# ---------------------------------------------------------------- 12: `lrpt predict`, checked before loading

@pytest.fixture
def run_dir(tiny_t5_dir, tmp_path) -> Path:
    """A run directory as far as predict reads it before loading (its config.yaml)."""
    run = tmp_path / "a-run"
    run.mkdir()
    (run / "config.yaml").write_text(yaml.safe_dump(RunConfig(model=tiny_t5_dir).to_dict()))
    return run


def predict_refusal(run: Path, tmp_path: Path, capsys, *flags: str, rows: list[dict] | None = None,
                    output: Path | None = None) -> str:
    source = tmp_path / "in.jsonl"
    source.write_text("".join(json.dumps(r) + "\n" for r in rows or [GOOD]))
    output = output or tmp_path / "out.jsonl"
    err = refusal(["predict", str(run), "--input", str(source), "--output", str(output), *flags], capsys)
    assert not output.is_file()
    return err


@pytest.mark.parametrize("size", ["-1", "0"])
def test_predict_refuses_a_batch_size_below_one_before_loading(size, run_dir, tmp_path, capsys, no_loading):
    err = predict_refusal(run_dir, tmp_path, capsys, "--batch_size", size)
    assert f"--batch_size must be >= 1, got {size}" in err


def test_predict_refuses_an_output_it_cannot_write_before_loading(run_dir, tmp_path, capsys, no_loading):
    err = predict_refusal(run_dir, tmp_path, capsys, output=tmp_path / "nodir" / "x.jsonl")
    assert f"there is no directory {str(tmp_path / 'nodir')!r}; create it (mkdir -p) or write elsewhere" in err
    err = predict_refusal(run_dir, tmp_path, capsys, output=tmp_path)
    assert "is a directory; name a file in it" in err


def test_one_run_refuses_rows_naming_another_run_as_several_runs_do(run_dir, tmp_path, capsys, no_loading):
    rows = [{**GOOD, "run": "a-run"}, {**GOOD, "run": "b-run"}]
    err = predict_refusal(run_dir, tmp_path, capsys, rows=rows)
    assert 'in.jsonl:2: "run": "b-run" is none of the runs given (a-run); name one of them' in err


# ---------------------------------------------------------------- 13: `lrpt plan`

PLAN = ["plan", "--model", "t5-small", "--zero", "0"]  # the table too: it divides by --gpu_memory


@pytest.mark.parametrize("flags, said", [
    (["--gpu_memory", "0"], "--gpu_memory must be a number of GiB > 0 (80 for an 80 GB GPU), got 0.0"),
    (["--gpu_memory", "nan"], "--gpu_memory must be a number of GiB > 0"),
    (["--gpu_memory", "-80"], "--gpu_memory must be a number of GiB > 0"),
    (["--overhead", "-5"], "--overhead must be a number of GiB >= 0, got -5.0"),
    (["--overhead", "inf"], "--overhead must be a number of GiB >= 0, got inf"),
    (["--learning_rate", "nan"], "--learning_rate must be a finite number"),  # the run's own flags: as train
])
def test_plan_refuses_memory_it_cannot_plan_against(flags, said, capsys):
    assert said in refusal([*PLAN, *flags], capsys)


def test_plan_refuses_fp16_on_t5_by_the_rule_train_refuses_it_by(capsys, no_loading):
    planned = refusal([*PLAN, "--precision", "fp16"], capsys)
    trained = refusal(["train", "--model", "tiny-t5", "--precision", "fp16"], capsys)
    assert "--precision fp16 with a t5 backbone" in planned
    assert planned.removeprefix("lrpt plan: ") == trained.removeprefix("lrpt train: ")
    llama = ["plan", "--model", "llama-7b", "--zero", "3", "--gpus", "8", "--precision", "fp16", "--json"]
    assert main(llama) in (0, 1)  # fp16 is refused for T5 alone
