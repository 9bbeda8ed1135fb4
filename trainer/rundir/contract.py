"""A run directory's config.yaml is its contract, and only one live run holds a directory.

Relaunching into an --output_dir that holds a run resumes that run, so the new launch must train
exactly what the old one did: a differing value of any field that changes what is trained or
measured is refused (all of them named, with both values) before any weight loads. Fields whose Policy
is not binding (`MAY_DIFFER`) change nothing trained. A finished run (report.json) relaunched unchanged is left
as it is. --overwrite_output_dir starts afresh: it removes what an earlier run wrote there first
(the files lrpt recorded as its own, and nothing else), so that no old checkpoint can be resumed,
pruned or named by `latest` by mistake.
"""
from __future__ import annotations

import os
from pathlib import Path

import yaml

from ..config.run_config import RUN_CONFIG_HEADER, RunConfig, policies, read_yaml
from ..errors import LrptError
from ..runtime import distributed
from . import checkpoint, weights_only
from . import files as run_files
from . import lock as run_lock

MAY_DIFFER = frozenset(name for name, policy in policies().items() if not policy.binding)


class RunFinished(Exception):
    """The run in this directory is finished and was relaunched unchanged: nothing to do."""

    def __init__(self, output_dir: Path):
        super().__init__(f"{output_dir} is finished (report.json): nothing to run; its results stand unchanged "
                         "(to train it again: --overwrite_output_dir)")
        self.report_path = output_dir / "report.json"


def config_file(output_dir: str | Path) -> Path:
    return Path(output_dir) / "config.yaml"


def differences(saved: RunConfig, cfg: RunConfig) -> list[str]:
    """'field: A (run directory) != B (this launch)' for each field that changes what is trained."""
    old, new = saved.to_dict(), cfg.to_dict()
    return [f"{name}: {old[name]!r} (run directory) != {new[name]!r} (this launch)"
            for name in new if name not in MAY_DIFFER and old.get(name) != new[name]]


def check_contract(cfg: RunConfig, run_dir: Path) -> None:
    """Refuse a launch whose settings differ from those of the run in `run_dir` (or into files not lrpt's)."""
    check_in_the_way(run_dir)
    path = config_file(run_dir)
    if not path.is_file():
        return
    try:
        saved = RunConfig(**read_yaml(str(path)))
    except TypeError as exc:
        raise LrptError(f"{path}: {exc}; a config of another lrpt version? Pick another --output_dir") from None
    differing = differences(saved, cfg)
    if differing:
        raise LrptError(f"{run_dir} holds a run with other settings, which this launch would resume: "
                        f"{'; '.join(differing)}. Relaunch it as it was (lrpt train --config {path}), start it "
                        "afresh with --overwrite_output_dir, or choose another --output_dir")


def has_checkpoints(output_dir: Path) -> bool:
    root = checkpoint.checkpoints_dir(output_dir)
    return root.is_dir() and any(p.is_dir() and p.name.startswith("step-") for p in root.iterdir())


def requeued() -> bool:
    """A Slurm job started again (requeue, preemption): it continues the run its first start began."""
    return int(os.environ.get("SLURM_RESTART_COUNT") or 0) > 0


def starts_afresh(cfg: RunConfig) -> bool:
    """--overwrite_output_dir, except in a requeued Slurm job: that resumes what its first start began."""
    return cfg.overwrite_output_dir and not requeued()


def claim(cfg: RunConfig, log) -> Path | None:
    """Lock the run directory and check or clear it, before any weight loads; returns the checkpoint to resume
    from (None: step 0). Rank 0 does it for every rank (one lock, one clearing), the others take its answer."""
    outcome: tuple[str, object] = ("", None)
    if distributed.is_main():
        try:
            outcome = ("resume", _claim(cfg, log))
        except RunFinished:
            outcome = ("finished", None)
        except LrptError as exc:
            outcome = ("error", str(exc))
    kind, value = distributed.broadcast(outcome)
    if kind == "finished":
        raise RunFinished(Path(cfg.output_dir))
    if kind == "error":
        raise LrptError(value)
    return value


def _claim(cfg: RunConfig, log) -> Path | None:
    out = Path(cfg.output_dir)
    run_lock.acquire(out)  # before anything else: a second launch into `out` stops here
    if cfg.overwrite_output_dir and requeued():
        log("--overwrite_output_dir: not applied, this is a restart of the Slurm job that already started afresh; "
            "it resumes")
    elif starts_afresh(cfg):
        removed = run_files.clear(out)
        if removed:
            log(f"--overwrite_output_dir: removed {len(removed)} files an earlier run wrote in {out}")
    check_contract(cfg, out)
    if (out / "report.json").is_file():
        raise RunFinished(out)
    if cfg.resume_from_checkpoint in (None, "none") and has_checkpoints(out):
        raise LrptError(f"--resume_from_checkpoint none, and {out} holds checkpoints of this run: resume it "
                        "(--resume_from_checkpoint auto), start it afresh with --overwrite_output_dir, or choose "
                        "another --output_dir")
    resume = resume_point(cfg)
    if resume is not None:
        weights_only.check(resume)  # a planted or broken file is refused now, not after the backbone loaded
    run_lock.announce(out)
    run_files.claim_names(out)
    return resume


def check_in_the_way(out: Path) -> None:
    """Refuse a directory holding files at lrpt's names that lrpt did not record as its own: a run would
    overwrite, resume or prune them."""
    foreign = run_files.in_the_way(out)
    if foreign:
        shown = ", ".join(foreign[:5]) + (f" and {len(foreign) - 5} more" if len(foreign) > 5 else "")
        raise LrptError(f"{out} holds files that lrpt did not write there, at names a run writes ({shown}): "
                        "move them away, or choose another --output_dir (lrpt deletes only files it wrote)")


def write_config(cfg: RunConfig) -> None:
    """The contract, written once every check has passed (rank 0); `--config` of it resumes, never wipes."""
    repeat = {**cfg.to_dict(), "overwrite_output_dir": False}
    tmp = config_file(cfg.output_dir).with_suffix(f".{os.getpid()}.tmp")
    tmp.write_text(RUN_CONFIG_HEADER + yaml.safe_dump(repeat, sort_keys=False))
    os.replace(tmp, config_file(cfg.output_dir))


def resume_point(cfg: RunConfig) -> Path | None:
    """The checkpoint this launch resumes from, checked: None for a start from step 0."""
    if cfg.resume_from_checkpoint == "auto":
        return checkpoint.latest(cfg.output_dir)  # a `latest` naming a missing checkpoint is refused here
    if cfg.resume_from_checkpoint in (None, "none"):
        return None
    named = Path(cfg.resume_from_checkpoint)
    if not (named / "trainer_state.json").is_file():
        raise LrptError(f"--resume_from_checkpoint {named}: not an lrpt checkpoint (no trainer_state.json); "
                        f"checkpoints are <output_dir>/checkpoints/step-N")
    check_contract(cfg, named.parent.parent)  # the run the checkpoint comes from
    return named
