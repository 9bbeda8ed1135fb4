"""The one loop that trains a group of sessions over one backbone; a run alone is a group of one.

Micro-batch by micro-batch: every run not yet done takes its next micro-batch, one forward and backward
computes each run's loss and gradient (a run alone: its engine's own forward, the shared prefix where it
applies; fused runs: one forward of the backbone over every run's rows, train.fused), then each run's
engine steps and its RunLoop accounts the step (logs, evaluation, checkpoints). A run is finished
(evaluated, its report written) at its last step, so a group stopped later never trains it again.
"""
from __future__ import annotations

from collections.abc import Callable

import torch

from ..rundir.report import Fused, Report
from ..runtime import preempt
from .fused import fused_backward, padded_flops, run_name
from .run_loop import RunLoop, gradient_norm

# (run index, micro-batch index in its epoch, micro-batch)
Item = tuple[int, int, dict]
# each item's loss, and the FLOPs computed for its rows (None: its own batch's, on the path its run takes)
Backward = Callable[[list, list[RunLoop], list[Item]], tuple[list[torch.Tensor], list[float | None]]]


def drive(runs: list, frozen=None, group: list[str] | None = None) -> list[Report]:
    """Train the sessions to their last step; returns each one's report. `frozen`: the backbone's own engine of a
    fused group (None: one run alone); `group`: the names of every run of a fused group, those finished before
    included (each report names the others)."""
    fused = frozen is not None
    group = group or []
    loops = [RunLoop(run, fused_with=[n for n in group if n != run_name(run.cfg)] if fused else None) for run in runs]
    preempt.install()  # SIGUSR1 (Slurm, before the time limit or a preemption): checkpoint, then exit
    for position, loop in enumerate(loops):
        loop.begin(position)
    if fused:
        frozen.train()
    for run in runs:
        run.engine.train()
    train_together(runs, loops, fused_step if fused else alone_step, len(group))
    return [loop.report for loop in loops]


def alone_step(runs: list, loops: list[RunLoop], items: list[Item]):
    """A run alone: its engine's forward (PromptedModel) and backward, after its random state is set."""
    (k, i, batch), = items
    loops[k].seed(i)
    engine = runs[k].engine
    loss = engine(**batch).loss
    engine.backward(loss)
    return [loss], [None]


def fused_step(runs: list, loops: list[RunLoop], items: list[Item]):
    """Fused runs: one forward and backward of the backbone over every run's rows (train.fused). On the shared
    prefix each run's rows keep their own width, so their FLOPs are the run alone's."""
    losses, width, target = fused_backward([runs[k] for k, _, _ in items], [batch for _, _, batch in items])
    if width is None:
        return losses, [None] * len(items)
    return losses, [padded_flops(loops[k], batch, width, target, runs[k].prompt.output_length)
                    for k, _, batch in items]


def train_together(runs: list, loops: list[RunLoop], backward: Backward, group_size: int) -> None:
    """Every run not yet done, micro-batch by micro-batch, until none is left; a collective stop (preemption)
    checkpoints every unfinished run and exits with preempt.EXIT_CODE."""
    streams = [loop.micro_batches() for loop in loops]
    while True:
        finish_done(loops, group_size)  # (a run resumed at its last step)
        items = []
        for k, stream in enumerate(streams):
            item = None if loops[k].done else next(stream, None)
            if item is not None:
                items.append((k, *item))
        if not items:
            return
        for k, i, _ in items:
            loops[k].micro_start(i)
        losses, flops = backward(runs, loops, items)
        stepped = []
        for (k, i, batch), loss, computed in zip(items, losses, flops):
            if loops[k].boundary(i):
                loops[k].window["grad_norm"] = gradient_norm(runs[k])
            runs[k].engine.step()
            if loops[k].micro_done(i, batch, loss.item(), computed):
                stepped.append(loops[k])
        if stepped:
            stop = preempt.stop_requested()  # collective, once per step of the group: all ranks agree
            for loop in stepped:
                loop.step_done(stop and not loop.done)  # a run at its last step is finished instead, below
            finish_done(loops, group_size)
            if stop:
                for loop in (loop for loop in loops if loop.report is None):
                    if loop not in stepped:
                        loop.save_checkpoint()
                    loop.exit_preempted()
                raise SystemExit(preempt.EXIT_CODE)


def finish_done(loops: list[RunLoop], group_size: int) -> None:
    """The report of every run that has reached its last step and has none yet (collective: every rank agrees)."""
    for loop in loops:
        if loop.done and loop.report is None:
            loop.finish(fused=Fused(with_runs=loop.fused_with, runs=group_size) if loop.fused_with is not None
                        else None)
