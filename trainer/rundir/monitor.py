"""Training curves while a run trains, through DeepSpeed's monitor: `--report_to csv|tensorboard|wandb|none`.

lrpt fills the DeepSpeed config's own monitor sections (`csv_monitor`, `tensorboard`, `wandb`) so
that they write under <output_dir>/logs, and every --logging_steps sends its events through
`engine.monitor`: Train/Samples/loss (the mean over the steps since the last one, as transformers
logs it), Train/Samples/grad_norm (the last step's, before clipping) and Train/Samples/tokens_per_s.
DeepSpeed itself writes Train/Samples/lr every step. The x axis is DeepSpeed's: training samples
(steps x global batch), one axis for every event, which W&B needs (its steps only grow). A section
the DeepSpeed config already enables is left as it is.
"""
from __future__ import annotations

import csv
import os
from pathlib import Path

from ..config.run_config import RunConfig
from ..errors import LrptError

LOG_DIR = "logs"
PACKAGES = ("tensorboard", "wandb")  # monitors that need a package of that name: the extra lrpt[<name>]
SECTION = {"csv": "csv_monitor", "tensorboard": "tensorboard", "wandb": "wandb"}


def check_available(cfg: RunConfig) -> None:
    """Before any weight loads: every monitor asked for can be imported."""
    import importlib.util

    for name in cfg.monitors():
        if name in PACKAGES and importlib.util.find_spec(name) is None:
            raise LrptError(f"--report_to {name} needs the {name} package: pip install 'lrpt[{name}]', "
                            "or pick --report_to csv")


def add_sections(cfg: RunConfig, ds_config: dict, out: Path) -> None:
    """Turn on the DeepSpeed monitor sections --report_to names, writing under <out>/logs."""
    for name in cfg.monitors():
        section = ds_config.get(SECTION[name], {})
        if section.get("enabled"):
            continue  # the user's own section: its paths are theirs
        if name == "wandb":  # DeepSpeed's wandb.init passes no dir or name: they go through wandb's variables
            _set_unless_user_set("WANDB_DIR", str(out))
            _set_unless_user_set("WANDB_NAME", out.name)
            ds_config["wandb"] = {"project": os.environ.get("WANDB_PROJECT", "lrpt"), **section, "enabled": True}
        else:
            ds_config[SECTION[name]] = {**section, "enabled": True, "output_path": str(out), "job_name": LOG_DIR}


_SET_BY_LRPT: dict[str, str] = {}


def _set_unless_user_set(name: str, value: str) -> None:
    """Set an environment variable the user did not set (one lrpt set for an earlier run is replaced)."""
    if name not in os.environ or os.environ[name] == _SET_BY_LRPT.get(name):
        os.environ[name] = _SET_BY_LRPT[name] = value


def write(engine, samples: int, values: dict[str, float]) -> None:
    """One logging step's events at `samples` trained (rank 0 writes; DeepSpeed's monitor checks the rank)."""
    if engine.monitor.enabled:
        engine.monitor.write_events([(f"Train/Samples/{k}", float(v), samples) for k, v in values.items()])


def rewind(engine, out: Path, samples: int) -> None:
    """A resumed run's CSVs end where its checkpoint does (`samples` trained): rows beyond it, written
    after the checkpoint and before the kill, are dropped, and DeepSpeed's CSV writer is told the files
    exist, so it appends without a second header. A run started afresh (0) starts them afresh."""
    csv_monitor = getattr(engine.monitor, "csv_monitor", None)
    folder = out / LOG_DIR
    if csv_monitor is None or not folder.is_dir():
        return
    for file in sorted(folder.glob("Train_Samples_*.csv")):
        rows = list(csv.reader(file.open()))
        kept = rows[:1] + [r for r in rows[1:] if r and r[0] != "step" and int(float(r[0])) <= samples]
        with file.open("w", newline="") as f:
            csv.writer(f).writerows(kept)
        if file.stem not in csv_monitor.filenames:
            csv_monitor.filenames.append(file.stem)


def read_csv(out: Path, event: str) -> list[tuple[int, float]]:
    """(samples, value) rows of one event's CSV under <out>/logs, as DeepSpeed's csv monitor wrote them."""
    file = out / LOG_DIR / (event.replace("/", "_").replace(" ", "_") + ".csv")
    rows = list(csv.reader(file.open()))[1:]
    return [(int(float(r[0])), float(r[1])) for r in rows]
