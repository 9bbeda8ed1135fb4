"""report.json, typed: a run's results as small sections, their one writer (`Report.write`), their one reader
(`Report.read`), and the table printed at the end of a run.

report.json is the run directory's contract with whatever reads it later (`lrpt table`, the benches, `lrpt rank`,
a finished run relaunched). Each of its JSON objects is a dataclass below whose fields, in order, are the object's
keys: the file keeps its keys, nesting and order. A field with a default is one older reports lack (the reader
fills the default in); one without is required, as every report.json lrpt wrote has it. A new field is declared
here and filled by the writer (train.run_loop.build_report); no reader parses keys. The task's metrics, the
RunConfig, DeepSpeed's config, the versions and the evaluation history's rows stay dicts: their keys are the
task's, the config's and DeepSpeed's. No torch here: `lrpt table` reads reports with this module.
"""
from __future__ import annotations

import functools
import json
from collections.abc import Callable
from dataclasses import MISSING, dataclass, field, fields
from pathlib import Path
from types import UnionType
from typing import Any, TypeVar, Union, get_args, get_origin, get_type_hints

from ..errors import LrptError

FILE = "report.json"

S = TypeVar("S", bound="Section")


class ReportError(LrptError):
    """A report.json lrpt cannot read, said in one line naming the file and what is wrong."""


def written_if(condition: Callable[[Any], bool]) -> Any:
    """A field (default None) whose key the file has only when `condition(section)` holds: a run too short to
    measure has no rates, a run trained alone no fused group."""
    return field(default=None, metadata={"written_if": condition})


class Section:
    """A JSON object of report.json as a dataclass: its fields, in order, are the object's keys."""

    def to_dict(self) -> dict[str, Any]:
        return {f.metadata.get("key", f.name): _to_json(getattr(self, f.name)) for f in fields(self)
                if f.metadata.get("written_if", lambda section: True)(self)}

    @classmethod
    def from_dict(cls: type[S], data: Any, where: str = "") -> S:
        """The section from its JSON object; nothing but JSON values is read. `where`: its dotted path in the
        report, for the error naming a missing key (`no 'train.steps' field`)."""
        if not isinstance(data, dict):
            raise ReportError(f"{repr(where) if where else 'the report'} is not a JSON object ({_kind(data)})")
        values = {}
        for f in fields(cls):
            key = f.metadata.get("key", f.name)
            path = f"{where}.{key}" if where else key
            if key in data:
                values[f.name] = _from_json(_hints(cls)[f.name], data[key], path)
            elif _required(f):
                raise ReportError(f"no {path!r} field")
        return cls(**values)


def _kind(value: Any) -> str:
    kinds = {dict: "an object", list: "an array", str: "a string", bool: "a boolean", int: "a number",
             float: "a number"}
    return kinds.get(type(value), type(value).__name__)


def _required(f) -> bool:
    return f.default is MISSING and f.default_factory is MISSING


@functools.cache
def _hints(cls: type) -> dict[str, Any]:
    return get_type_hints(cls)


def _to_json(value: Any) -> Any:
    if isinstance(value, Section):
        return value.to_dict()
    if isinstance(value, list):
        return [_to_json(v) for v in value]
    return value


def _from_json(hint: Any, value: Any, where: str) -> Any:
    """A JSON value as the field's type says: sections (and lists of them) built, anything else as it is; null only
    where the type allows None (a scalar's type is not checked)."""
    optional = get_origin(hint) in (Union, UnionType)  # X | None: the sections' only unions
    if optional:
        hint = next(arg for arg in get_args(hint) if arg is not type(None))
    structured = get_origin(hint) is list or (isinstance(hint, type) and issubclass(hint, Section))
    if value is None:
        if structured and not optional:
            raise ReportError(f"{where!r} is null")
        return None
    if get_origin(hint) is list:
        if not isinstance(value, list):
            raise ReportError(f"{where!r} is not a JSON array ({_kind(value)})")
        (item,) = get_args(hint)
        return [_from_json(item, v, f"{where}[{i}]") for i, v in enumerate(value)]
    if isinstance(hint, type) and issubclass(hint, Section):
        return hint.from_dict(value, where)
    return value


@dataclass(kw_only=True)
class StepTimes(Section):
    """Seconds per optimizer step, warm-up excluded."""
    mean: float
    p50: float
    p95: float


@dataclass(kw_only=True)
class RankThroughput(Section):
    """One rank's figures (measure.meter.StepMeter.summary); the rates only once a step was measured."""
    steps_measured: int
    warmup_steps: int
    step_time_s: StepTimes | None = written_if(lambda t: t.measured)
    samples_per_s: float | None = written_if(lambda t: t.measured)
    tokens_per_s: float | None = written_if(lambda t: t.measured)  # prompt and input tokens
    input_tokens_per_s: float | None = written_if(lambda t: t.measured)
    prompt_tokens_per_s: float | None = written_if(lambda t: t.measured)
    model_flops_per_s: float | None = written_if(lambda t: t.measured)  # measure.flops: 4·N·T + attention

    @property
    def measured(self) -> bool:
        return self.steps_measured > 0


@dataclass(kw_only=True)
class Throughput(Section):
    """Every rank's figures, and the run's: rates summed over the measured ranks (they work in parallel), the
    slowest rank's step times, MFU (None without a known device peak)."""
    per_rank: list[RankThroughput]
    samples_per_s: float | None = written_if(lambda t: t.measured)
    tokens_per_s: float | None = written_if(lambda t: t.measured)
    input_tokens_per_s: float | None = written_if(lambda t: t.measured)
    prompt_tokens_per_s: float | None = written_if(lambda t: t.measured)
    model_flops_per_s: float | None = written_if(lambda t: t.measured)
    step_time_s: StepTimes | None = written_if(lambda t: t.measured)
    mfu: float | None = written_if(lambda t: t.measured)

    @property
    def measured(self) -> bool:
        return any(rank.measured for rank in self.per_rank)

    @classmethod
    def of_ranks(cls, per_rank: list[RankThroughput], peak_flops_per_device: float | None, world: int) -> Throughput:
        """The run's figures from its ranks'; `peak_flops_per_device`: None where the device's is not known."""
        measured = [rank for rank in per_rank if rank.measured]
        if not measured:
            return cls(per_rank=per_rank)
        flops = sum(rank.model_flops_per_s for rank in measured)
        return cls(per_rank=per_rank, samples_per_s=sum(rank.samples_per_s for rank in measured),
                   tokens_per_s=sum(rank.tokens_per_s for rank in measured),
                   input_tokens_per_s=sum(rank.input_tokens_per_s for rank in measured),
                   prompt_tokens_per_s=sum(rank.prompt_tokens_per_s for rank in measured),
                   model_flops_per_s=flops,
                   step_time_s=StepTimes(**{k: max(getattr(rank.step_time_s, k) for rank in measured)
                                            for k in ("mean", "p50", "p95")}),
                   mfu=flops / (peak_flops_per_device * world) if peak_flops_per_device else None)


@dataclass(kw_only=True)
class Memory(Section):
    """Bytes per rank (lists indexed by rank) unless a single number; docs/quantization.md says what each holds."""
    peak_bytes: list[int]
    measured_by: str
    load_peak_bytes: list[int | None] = field(default_factory=list)  # None: not measured
    load_peak_measured_by: str | None = None
    backbone_bytes_held: list[int] = field(default_factory=list)
    backbone_bytes_total: int | None = None
    # attribute-aware (hidden copies, quant_state, ZeRO shards), after the first step; backbone.quant
    backbone_bytes_held_all: list[int] = field(default_factory=list)
    backbone_bytes_unquantized: int | None = None
    quant_state_bytes: list[int] = field(default_factory=list)


@dataclass(kw_only=True)
class TrainSummary(Section):
    """The steps taken and their losses (mean over ranks); evaluations during training (rows: step, split,
    score where selecting, the task's metrics) and the method's diagnostics (rows: step and the method's keys)."""
    steps: int
    epochs: float
    loss_first: float  # NaN before a first step
    loss_last: float
    loss_curve: list[float]
    eval_history: list[dict[str, Any]]
    diagnostics: list[dict[str, Any]] = field(default_factory=list)


@dataclass(kw_only=True)
class Selection(Section):
    """Which step's prompt the metrics are of (--selection_protocol)."""
    protocol: str  # final | dev | paper-val
    step: int
    optimistic: bool  # paper-val: chosen on the split the metrics are reported on (DPT's protocol)


@dataclass(kw_only=True)
class Data(Section):
    """Rows the run saw; the batch is smaller than asked on a tiny (few-shot) training set."""
    train_examples: int
    eval_examples: int
    dev_examples: int
    train_batch_size: int


@dataclass(kw_only=True)
class OptimizerGroup(Section):
    """One of AdamW's parameter groups as the optimizer holds it (the method's param_groups: DePT's prompt and its
    low-rank pair each at a rate of its own): the rate the schedule starts from and the decay."""
    name: str
    params: int
    learning_rate: float
    weight_decay: float


@dataclass(kw_only=True)
class Fused(Section):
    """A run trained in a fused group (train.fused): the other runs' names and the group's size."""
    with_runs: list[str] = field(metadata={"key": "with"})
    runs: int


@dataclass(kw_only=True)
class Report(Section):
    """report.json."""
    method: str
    trainable_params: int
    kept_params: int
    prompt_length: int
    prompt_output_length: int
    shared_prefix: bool = False  # the path this run took (--shared_prefix auto resolves per run)
    optimizer_state_bytes: int  # all ranks
    optimizer_state_bytes_per_rank: list[int]
    optimizer_groups: list[OptimizerGroup] = field(default_factory=list)  # older reports: not recorded
    metrics: dict[str, Any]
    metrics_untrained: dict[str, Any] | None = None  # the initial prompt's, before step 1 (--eval_untrained)
    data: Data | None = None
    selected_step: int | None = None  # the step whose prompt the metrics are of
    selection: Selection | None = None
    train: TrainSummary
    throughput: Throughput
    memory: Memory
    world_size: int
    zero_stage: int
    output_dir: str
    versions: dict[str, str]
    config: dict[str, Any]  # RunConfig.to_dict()
    deepspeed_config: dict[str, Any]  # as DeepSpeed received it
    fused: Fused | None = written_if(lambda report: report.fused is not None)

    @property
    def selection_protocol(self) -> str:
        """How the reported prompt was chosen; reports from before selection was recorded: final."""
        return self.selection.protocol if self.selection is not None else "final"

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=1, default=str)

    def write(self, output_dir: str | Path) -> Path:
        """output_dir/report.json, whole or not at all (a temporary file replaced)."""
        path = Path(output_dir) / FILE
        tmp = path.with_suffix(".json.tmp")
        tmp.write_text(self.to_json())
        tmp.replace(path)
        return path

    @classmethod
    def read(cls, path: str | Path) -> Report:
        """A report.json, or a run directory's; refused in one line naming the file and what it lacks."""
        path = Path(path)
        if path.is_dir():
            path = path / FILE
        try:
            data = json.loads(path.read_text())
        except json.JSONDecodeError as exc:
            raise ReportError(f"{path}: not valid JSON ({exc.msg})") from None
        try:
            return cls.from_dict(data)
        except ReportError as exc:
            raise ReportError(f"{path}: {exc}") from None


def _size(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)


def _value(v) -> str:
    return f"{v:.4f}" if isinstance(v, float) else str(v)


def format_table(report: Report) -> str:
    """A readable summary of the report (which holds everything, per rank)."""
    thr, mem, train = report.throughput, report.memory, report.train
    rows = [
        ("method", report.method),
        ("model", report.config["model"]),
        ("task", report.config["task"]),
        ("trainable params", f"{report.trainable_params:,}"),
        ("kept after training", f"{report.kept_params:,}"),
        ("prompt length (c -> c')", f"{report.prompt_length} -> {report.prompt_output_length}"),
        ("optimizer state (all ranks)", _size(report.optimizer_state_bytes)),
        *[(f"  group {g.name}", f"{g.params:,} params, lr {g.learning_rate:g}, weight decay {g.weight_decay:g}")
          for g in report.optimizer_groups if len(report.optimizer_groups) > 1],
        ("train loss first -> last", f"{train.loss_first:.4f} -> {train.loss_last:.4f}"),
        ("steps (epochs)", f"{train.steps} ({train.epochs:.2f})"),
    ]
    # a score next to the untrained prompt's (counts such as unparsable answers alone)
    untrained = {k: v for k, v in (report.metrics_untrained or {}).items() if isinstance(v, float)}
    rows += [(f"eval {k}" + (" untrained -> trained" if k in untrained else ""),
              (f"{_value(untrained[k])} -> " if k in untrained else "") + _value(v))
             for k, v in report.metrics.items()]
    if thr.measured:
        rows += [("step time mean/p50/p95", f"{thr.step_time_s.mean:.3f}/{thr.step_time_s.p50:.3f}/"
                                            f"{thr.step_time_s.p95:.3f} s"),
                 ("samples/s (all ranks)", f"{thr.samples_per_s:.1f}"),
                 ("tokens/s (all ranks)", f"{thr.tokens_per_s:.0f} (prompt {thr.prompt_tokens_per_s:.0f}, "
                                          f"input {thr.input_tokens_per_s:.0f})")]
    if thr.model_flops_per_s is not None:  # reports from before it was measured have none
        rows += [("model FLOP/s (4·N·T + attn)",
                  f"{thr.model_flops_per_s:.3g}" + (f", MFU {thr.mfu:.1%}" if thr.mfu else ""))]
    total = _size(mem.backbone_bytes_total) if mem.backbone_bytes_total is not None else "?"
    rows += [(f"rank {r}: peak / backbone held", f"{_size(b)} / {_size(h)} of {total}")
             for r, (b, h) in enumerate(zip(mem.peak_bytes, mem.backbone_bytes_held))]
    rows += [("memory measured by", mem.measured_by), ("run directory", report.output_dir)]
    width = max(len(k) for k, _ in rows)
    return "\n".join(f"{k:<{width}}  {v}" for k, v in rows)
