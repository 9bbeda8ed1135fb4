"""Nothing of the user's is lost: one live run per directory, lrpt deletes only what it wrote, and a copied
config.yaml never reaches back into the directory it was copied from."""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

from launch import clean_env
from lrpt.trainer.cli.main import main
from lrpt.trainer.rundir import lock as run_lock
from lrpt.trainer.config.run_config import load_config
from lrpt.trainer.train.loop import prepare

LRPT = os.path.join(os.path.dirname(sys.executable), "lrpt")


def flags(model_dir, data_dir, out, *extra) -> list[str]:
    return ["train", "--model", model_dir, "--task", "rte", "--data_dir", str(data_dir), "--output_dir", str(out),
            "--method", "dpt", "--rank", "4", "--prompt_length", "6", "--per_device_train_batch_size", "2",
            "--max_steps", "4", "--save_steps", "2", "--progress", "false", "--seed", "5", *extra]


def files(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in root.rglob("*") if p.is_file()}


def user_files(root: Path) -> dict[str, bytes]:
    """What a user keeps in a directory, at lrpt's names and beside them."""
    mine = {"logs/experiment-notes.txt": b"lr 0.3 diverged on cb\n", "checkpoints/my_model.bin": b"\x80\x04weights",
            "README.md": b"# my project\n"}
    for name, data in mine.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(data)
    return mine


def test_two_launches_started_together_into_one_directory_train_one_run(tiny_t5_dir, memorise_dir, tmp_path):
    """Real processes, started at the same moment, three times: one trains, the other is refused naming it."""
    locked = 0
    for attempt in range(3):
        out = tmp_path / f"run{attempt}"
        procs = [subprocess.Popen([LRPT, *flags(tiny_t5_dir, memorise_dir, out, "--seed", str(seed), "--max_steps",
                                                "30", "--save_steps", "0", "--logging_steps", "1")],
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=clean_env())
                 for seed in (1, 2)]
        done = [(p.wait(timeout=600), p.stdout.read(), p.stderr.read()) for p in procs]
        codes = sorted(code for code, _, _ in done)
        assert codes == [0, 2], [err[-2000:] for _, _, err in done]
        (winner,) = [i for i, (code, _, _) in enumerate(done) if code == 0]
        refusal = done[1 - winner][2].strip()
        assert refusal.count("\n") == 0 and "Loading weights" not in refusal, refusal
        if "in use by a live run" in refusal:
            locked += 1
            assert f"pid {procs[winner].pid}" in refusal, refusal
        report = json.loads((out / "report.json").read_text())
        assert report["config"]["seed"] == (1, 2)[winner]
        header = (out / "logs" / "Train_Samples_loss.csv").read_text().split("\n")
        assert sum(line.startswith("step") for line in header) == 1 and len(header) == 30 + 2  # one run's rows
    assert locked >= 1  # the race was hit, not only a finished run's contract


def test_a_dead_runs_lock_is_free_and_a_live_one_refuses(tiny_t5_dir, memorise_dir, tmp_path, capsys):
    out = tmp_path / "run"
    holder = subprocess.Popen([sys.executable, "-c", "import sys, time; "
                               "from lrpt.trainer.rundir import lock as run_lock; "
                               f"run_lock.acquire({str(out)!r}); run_lock.announce({str(out)!r}); print('held', "
                               "flush=True); time.sleep(600)"], stdout=subprocess.PIPE, text=True, env=clean_env())
    try:
        assert holder.stdout.readline().strip() == "held"
        assert main(flags(tiny_t5_dir, memorise_dir, out)) == 2
        err = capsys.readouterr().err
        assert f"in use by a live run (pid {holder.pid} on" in err and err.count("\n") == 1, err
        assert not (out / "config.yaml").exists()
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    assert main(flags(tiny_t5_dir, memorise_dir, out)) == 0  # killed: its lock went with it
    assert (out / "report.json").is_file()


def test_overwrite_deletes_only_what_lrpt_wrote(tiny_t5_dir, memorise_dir, tmp_path, capsys):
    out = tmp_path / "run"
    out.mkdir()
    mine = user_files(out)
    (out / "config.yaml").write_text("learning_rate: 0.1\n")  # the user's, at lrpt's name
    assert main(flags(tiny_t5_dir, memorise_dir, out, "--overwrite_output_dir")) == 2
    err = capsys.readouterr().err
    assert "config.yaml" in err and "lrpt did not write" in err and err.count("\n") == 1, err
    assert (out / "config.yaml").read_text() == "learning_rate: 0.1\n"
    assert all(files(out)[name] == data for name, data in mine.items())

    (out / "config.yaml").rename(out / "my-config.yaml")
    assert main(flags(tiny_t5_dir, memorise_dir, out)) == 0
    first = files(out)
    assert all(first[name] == data for name, data in mine.items()) and (out / "report.json").is_file()
    assert main(flags(tiny_t5_dir, memorise_dir, out, "--overwrite_output_dir", "--seed", "6")) == 0
    second = files(out)
    assert all(second[name] == data for name, data in mine.items()) and "my-config.yaml" in second
    assert json.loads(second["report.json"])["config"]["seed"] == 6
    assert (out / "checkpoints" / "my_model.bin").is_file() and (out / "logs" / "experiment-notes.txt").is_file()


def test_overwrite_of_output_dir_dot_keeps_the_project(tiny_t5_dir, memorise_dir, tmp_path, monkeypatch):
    project = tmp_path / "project"
    project.mkdir()
    mine = user_files(project)
    (project / "pyproject.toml").write_text("[project]\nname = 'mine'\n")
    monkeypatch.chdir(project)
    assert main(flags(tiny_t5_dir, memorise_dir, ".")) == 0
    assert main(flags(tiny_t5_dir, memorise_dir, ".", "--overwrite_output_dir", "--seed", "7")) == 0
    left = files(project)
    assert all(left[name] == data for name, data in mine.items()) and "pyproject.toml" in left
    assert json.loads(left["report.json"])["config"]["seed"] == 7


def test_a_file_planted_in_a_checkpoint_stops_the_run_before_it_is_pruned(tiny_t5_dir, memorise_dir, tmp_path,
                                                                            capsys):
    out = tmp_path / "run"
    assert main(flags(tiny_t5_dir, memorise_dir, out, "--max_steps", "2")) == 0
    (out / "checkpoints" / "step-000002" / "notes.txt").write_text("mine")
    capsys.readouterr()
    assert main(flags(tiny_t5_dir, memorise_dir, out, "--max_steps", "2", "--overwrite_output_dir")) == 2
    err = capsys.readouterr().err
    assert "checkpoints/step-000002/notes.txt" in err and err.count("\n") == 1, err
    assert (out / "checkpoints" / "step-000002" / "notes.txt").read_text() == "mine"


def crashed_run(model_dir, data_dir, out: Path) -> None:
    """What a run that died after its checks leaves: its claimed directory and config.yaml, nothing trained."""
    prepare(load_config(flags(model_dir, data_dir, out)[1:]))
    run_lock.release(out)
    assert (out / "config.yaml").is_file() and not (out / "report.json").exists()


def test_config_of_a_copied_crashed_run_trains_the_copy(tiny_t5_dir, memorise_dir, tmp_path):
    original, copy = tmp_path / "original", tmp_path / "copy"
    crashed_run(tiny_t5_dir, memorise_dir, original)
    shutil.copytree(original, copy)
    before = files(original)
    assert main(["train", "--config", str(copy / "config.yaml"), "--overwrite_output_dir"]) == 0
    assert files(original) == before and (copy / "report.json").is_file()
    assert json.loads((copy / "report.json").read_text())["config"]["output_dir"] == str(copy)


def test_config_copied_as_a_template_never_reaches_the_original(tiny_t5_dir, memorise_dir, tmp_path, capsys):
    original, new = tmp_path / "original", tmp_path / "new"
    crashed_run(tiny_t5_dir, memorise_dir, original)
    new.mkdir()
    shutil.copy(original / "config.yaml", new / "config.yaml")
    before = files(original)
    capsys.readouterr()
    assert main(["train", "--config", str(new / "config.yaml"), "--overwrite_output_dir", "--seed", "9"]) == 2
    err = capsys.readouterr().err
    assert f"{new} holds files that lrpt did not write" in err and "config.yaml" in err, err
    assert files(original) == before
    (new / "config.yaml").rename(new / "template.yaml")  # what the refusal says to do
    assert main(["train", "--config", str(new / "template.yaml"), "--seed", "9"]) == 0
    assert files(original) == before
    assert json.loads((new / "report.json").read_text())["config"]["seed"] == 9
