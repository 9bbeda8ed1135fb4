"""RunConfig: one dataclass for a run, read from YAML and/or command-line flags.

Flag names follow transformers' `TrainingArguments` where one exists (`--output_dir`,
`--learning_rate`, `--per_device_train_batch_size`, ...); dashed spellings are accepted too.
The resolved config is written next to every result, so a result always says how it was made.
"""
from __future__ import annotations

import argparse
import dataclasses
import functools
import math
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from ... import methods
from ...eval import splits
from ..errors import LrptError
from . import recipe
from .ds_config import shipped
from .recipe import apply_methods

PRECISIONS = ("fp32", "bf16", "fp16")
COMPUTE_DTYPES = ("fp32", "bf16", "fp16", "float32", "bfloat16", "float16")
QUANT_STORAGES = ("uint8", "int8", *COMPUTE_DTYPES)
SELECTIONS = ("auto", "final", "dev", "paper-val")
QUANTIZED_LOADS = ("auto", "sharded", "whole")  # backbone.quant_load
# the first line of every run directory's config.yaml (written by rundir.contract, read by _own_run_dir)
RUN_CONFIG_HEADER = "# lrpt run config: `lrpt train --config <this file>` repeats the run in this file's directory\n"
# numpy's seed range, well inside torch's: epoch_order seeds a generator with seed * 100_003 + epoch (< 2**64)
SEEDS = (0, 2**32 - 1)
# backbones whose activations overflow fp16: T5 was trained in bf16 (inf/NaN losses)
FP16_UNSAFE = {"t5", "mt5", "umt5", "longt5", "switch_transformers"}


@dataclass(frozen=True)
class Policy:
    """How lrpt treats a setting beyond its value, declared once, on its field: fused groups, the run directory's
    contract, the flags and the memory planner all read it from there, so a new setting is one line here."""
    per_run: bool = False          # the runs of one fused group may differ in it (each keeps its own); else they agree
    binding: bool = True           # part of a run directory's contract: a relaunch that changes it is refused
    aliases: tuple[str, ...] = ()  # other flag names for it
    plan: str = ""                 # what `lrpt plan` does with it: the PlanSpec field it is copied to, DERIVED (the
    #                                plan derives a quantity from it), or "" (it changes no byte the plan counts)


DERIVED = "derived"


def setting(default: Any, *, help: str | None = None, per_run: bool = False, binding: bool = True,
            aliases: tuple[str, ...] = (), plan: str = "", **extra: Any) -> Any:
    """A RunSettings field: its default, its --help text, its Policy (and argparse extras such as `const`)."""
    metadata = {**extra, "policy": Policy(per_run, binding, tuple(aliases), plan)}
    if help is not None:
        metadata["help"] = help
    return field(default=default, metadata=metadata)


@dataclass
class RunSettings:
    """The settings every run has. RunConfig (below) adds each registered method's own options."""
    recipe: str | None = setting(None, per_run=True, binding=False,
        help="a paper's setting (trainer/config/recipes/: dpt-t5-small, dpt-t5-base, dpt-t5-large, lamp-t5-base, "
             "lopt-t5-base, dept-t5-base, ulpt-t5-base) or a recipe file, loaded under the flags; recorded in "
             "config.yaml")
    # what to train
    model: str = setting("smollm2-135m", plan="model",
        help="preset (tiny-t5, tiny-llama, smollm2-135m), HF hub name, local path, or a GGUF: file.gguf, "
             "or org/repo/file.gguf")
    method: str = setting("pt", plan="method", per_run=True, help=f"prompt method: {', '.join(methods.available())}")
    task: str = setting("boolq", help="SuperGLUE task")
    data_dir: str | None = setting(None, per_run=True,
        help="<dir>/<Task>/{train,val}.jsonl in the official SuperGLUE layout, or 'hub' for HF super_glue; "
             "default: bundled demo data")
    # the prompt (each method's own options follow at the end: methods/*.py, their MethodConfig)
    prompt_length: int = setting(20, plan="prompt_length", per_run=True, help="c, prompt tokens before any pooling")
    # optimisation (DPT's code: AdamW, wd 1e-5, clip 1.0, linear schedule, 10% warm-up; its lr 0.3 is for T5,
    # the default 0.01 was measured on the default backbone: docs/benchmarks.md; the recipes set the papers')
    learning_rate: float = setting(0.01, per_run=True)
    weight_decay: float = setting(1e-5, per_run=True)
    max_grad_norm: float = setting(1.0, per_run=True)
    warmup_ratio: float = setting(0.1, per_run=True)
    per_device_train_batch_size: int = setting(8, plan="batch", per_run=True, aliases=("batch",))
    per_device_eval_batch_size: int = setting(16, per_run=True, binding=False)
    gradient_accumulation_steps: int = 1
    num_train_epochs: float = setting(4.0, per_run=True)
    max_steps: int = setting(-1, per_run=True, help="if > 0, overrides num_train_epochs")
    seed: int = setting(42, per_run=True)
    # backbone
    precision: str = setting("fp32", plan="precision", help="fp32 | bf16 (fp16 is refused for T5)")
    gradient_checkpointing: bool = setting(False, plan="grad_ckpt", aliases=("grad_ckpt",))
    shared_prefix: str = setting("auto", const="true",
        help="decoder-only: compute the prompt once per micro-batch (the batch packed as one sequence behind it). "
             "auto: on where proven (LLaMA, Mistral, Qwen2 with sdpa/eager attention; every ZeRO stage, "
             "quantization, gradient checkpointing, precision), otherwise off; true: on, or an error saying why "
             "not; false: off")
    max_source_length: int = setting(256, plan=DERIVED, aliases=("seq_len",))
    max_target_length: int = setting(16, plan="target_len", aliases=("target_len",))
    # quantized backbone (bitsandbytes through transformers' BitsAndBytesConfig; docs/quantization.md)
    load_in_8bit: bool = setting(False, plan=DERIVED,
        help="load the frozen backbone in 8-bit (LLM.int8()); the prompt stays full precision")
    load_in_4bit: bool = setting(False, plan=DERIVED,
        help="load the frozen backbone in 4-bit (QLoRA's NF4/FP4); the prompt stays full precision")
    bnb_4bit_quant_type: str = setting("fp4", help="nf4 | fp4 (4-bit only)")
    bnb_4bit_compute_dtype: str | None = setting(None,
        help="fp32 | bf16 | fp16: dtype 4-bit layers compute in (default: --precision)")
    bnb_4bit_use_double_quant: bool = setting(False, plan="double_quant", aliases=("double_quant",),
        help="quantize the 4-bit block scales too (4-bit only)")
    bnb_4bit_quant_storage: str = setting("uint8",
        help="uint8 | int8 | bf16 | fp16 | fp32: dtype the packed 4-bit values are stored in")
    quantized_load: str = setting("auto", plan="quantized_load",
        help="auto | sharded | whole: how a quantized backbone loads under ZeRO-3. sharded: each rank reads the "
             "safetensors checkpoint one tensor at a time and keeps only its ZeRO-3 share (no rank holds the whole "
             "model); whole: every rank loads the whole quantized model, deepspeed.initialize shards it (the "
             "reference); auto: sharded under ZeRO-3, else whole")
    # DeepSpeed
    deepspeed: str | None = setting(None, plan="ds_config", help="DeepSpeed JSON config (default: ZeRO-0 built in)")
    local_rank: int = setting(-1, per_run=True, binding=False,
        help="set by the deepspeed launcher; the LOCAL_RANK env var wins")
    # output, evaluation, checkpoints
    output_dir: str | None = setting(None, per_run=True, binding=False, help="default runs/<time>-<method>-<task>")
    overwrite_output_dir: bool = setting(False, per_run=True, binding=False,
        help="start afresh in an --output_dir that holds a run: remove its checkpoints, logs and results first "
             "(a relaunch into it otherwise resumes it, and must have its settings)")
    logging_steps: int = setting(10, per_run=True, binding=False)
    eval_steps: int = setting(0, per_run=True, help="evaluate every N steps (0: only at the end)")
    eval_untrained: bool = setting(True, per_run=True,
        help="evaluate the untrained (initial) prompt before the first step: the report shows its metrics "
             "next to the trained prompt's, the baseline the training is judged against")
    save_steps: int = setting(0, per_run=True, binding=False, help="checkpoint every N steps (0: only at the end)")
    save_total_limit: int = setting(2, per_run=True, binding=False)
    resume_from_checkpoint: str | None = setting("auto", per_run=True, binding=False,
        help="auto (latest in output_dir if any) | none | path to a checkpoint")
    max_train_samples: int | None = setting(None, per_run=True)
    max_eval_samples: int | None = setting(None, per_run=True)
    # evaluation protocol (the papers: validation split reported as the test set)
    decoding: str = setting("rank", per_run=True,
        help="generate (greedy, mapped to an answer) | rank (score each candidate answer)")
    few_shot: int | None = setting(None, per_run=True, help="train on K training rows sampled by (task, K, seed) alone")
    few_shot_draw: int | None = setting(None, per_run=True,
        help="with --few_shot: sample the K rows by (task, K, draw) instead, so that runs of several seeds share one "
             "draw (lrpt sweep --few_shot_draws)")
    dev_size: float = setting(0, per_run=True,
        help="carve a dev split from train (count, or fraction < 1) to pick the best checkpoint; 0: none")
    selection: str = setting("auto", per_run=True,
        help="which prompt is evaluated: final (the last) | dev (best on the --dev_size split) | paper-val (best "
             "on the validation split it is reported on, as DPT's code: optimistic, marked so) | auto (dev "
             "with --dev_size, else final). dev and paper-val score every --eval_steps, or every epoch")
    progress: bool = setting(True, per_run=True, binding=False)
    report_to: str = setting("csv", per_run=True, binding=False,
        help="csv | tensorboard | wandb | none, or a comma-separated list: loss, lr, grad norm and tokens/s "
             "every --logging_steps through DeepSpeed's monitor, under <output_dir>/logs")

    def __post_init__(self) -> None:
        self.shared_prefix = tristate(self.shared_prefix, "--shared_prefix")  # YAML may give a bool

    def validate(self) -> None:
        """Checks that need no model; anything wrong is reported before loading weights."""
        if self.method not in methods.available():
            raise LrptError(f"unknown method {self.method!r}; known methods: {', '.join(methods.available())}")
        try:
            methods.method_options(self.method, self.to_dict())
        except ValueError as exc:
            raise LrptError(str(exc)) from None
        if self.prompt_length < 1:
            raise LrptError(f"--prompt_length must be >= 1, got {self.prompt_length}")
        if self.precision not in PRECISIONS:
            raise LrptError(f"--precision must be one of {', '.join(PRECISIONS)}, got {self.precision!r}")
        for name in ("per_device_train_batch_size", "per_device_eval_batch_size", "gradient_accumulation_steps",
                     "max_source_length", "max_target_length", "logging_steps", "save_total_limit"):
            if getattr(self, name) < 1:
                raise LrptError(f"--{name} must be >= 1, got {getattr(self, name)}")
        self._validate_numbers()
        if self.decoding not in ("generate", "rank"):
            raise LrptError(f"--decoding must be generate or rank, got {self.decoding!r}")
        if self.few_shot is not None and self.few_shot < 1:
            raise LrptError(f"--few_shot must be >= 1, got {self.few_shot}")
        if self.few_shot_draw is not None and (self.few_shot is None or self.few_shot_draw < 0):
            raise LrptError(f"--few_shot_draw {self.few_shot_draw}: a draw (0, 1, ...) of --few_shot K rows; give "
                            "--few_shot K, and a draw >= 0")
        self._validate_selection()
        self._validate_quantization()
        report_to(self.report_to)

    def _validate_numbers(self) -> None:
        """Every float finite (a NaN slips past every `<` below), then each number in the range its use needs."""
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if _field_type(f) is float and value is not None and not math.isfinite(value):
                raise LrptError(f"--{f.name} must be a finite number, got {value}")
        if self.learning_rate <= 0:
            raise LrptError(f"--learning_rate must be > 0, got {self.learning_rate}")
        if self.weight_decay < 0:
            raise LrptError(f"--weight_decay must be >= 0 (AdamW's decay; 0: none), got {self.weight_decay}")
        if self.max_grad_norm < 0:
            raise LrptError(f"--max_grad_norm must be >= 0 (the gradient norm is clipped to it; 0: no clipping), "
                            f"got {self.max_grad_norm}")
        if not 0 <= self.warmup_ratio < 1:
            raise LrptError(f"--warmup_ratio must be in [0, 1), got {self.warmup_ratio}")
        if self.num_train_epochs < 0:
            raise LrptError(f"--num_train_epochs must be >= 0, got {self.num_train_epochs}")
        if self.max_steps <= 0 and self.num_train_epochs <= 0:
            raise LrptError("set --max_steps > 0 or --num_train_epochs > 0")
        if not SEEDS[0] <= self.seed <= SEEDS[1]:
            raise LrptError(f"--seed must be in [{SEEDS[0]}, {SEEDS[1]}] (numpy's seed range), got {self.seed}")
        self._validate_dev_size()

    def _validate_dev_size(self) -> None:
        """What carve_dev reads (a fraction, or a row count), refused here before any row is read; a count that
        leaves no training rows is found once the rows are (train.data), still before any weight loads."""
        if self.dev_size:
            try:
                splits.dev_size(self.dev_size)
            except ValueError as exc:
                raise LrptError(f"--dev_size {self.dev_size:g}: {exc}") from None

    @property
    def selection_protocol(self) -> str:
        """--selection with auto resolved: dev when a dev split is carved, else final."""
        if self.selection == "auto":
            return "dev" if self.dev_size else "final"
        return self.selection

    def _validate_selection(self) -> None:
        if self.selection not in SELECTIONS:
            raise LrptError(f"--selection must be one of {', '.join(SELECTIONS)}, got {self.selection!r}")
        if self.selection == "dev" and not self.dev_size:
            raise LrptError("--selection dev picks the best prompt on a split carved from train: add --dev_size "
                            "(a row count, or a fraction such as 0.1)")
        if self.selection in ("final", "paper-val") and self.dev_size:
            raise LrptError(f"--dev_size carves a dev split that --selection {self.selection} never uses: drop "
                            "--dev_size, or use --selection dev")

    def _validate_quantization(self) -> None:
        if self.load_in_8bit and self.load_in_4bit:
            raise LrptError("--load_in_8bit and --load_in_4bit are exclusive; pick one")
        if self.bnb_4bit_quant_type not in ("nf4", "fp4"):
            raise LrptError(f"--bnb_4bit_quant_type must be nf4 or fp4, got {self.bnb_4bit_quant_type!r}")
        if self.bnb_4bit_compute_dtype not in (None, *COMPUTE_DTYPES):
            raise LrptError(f"--bnb_4bit_compute_dtype must be one of {', '.join(COMPUTE_DTYPES)}, "
                            f"got {self.bnb_4bit_compute_dtype!r}")
        if self.bnb_4bit_quant_storage not in QUANT_STORAGES:
            raise LrptError(f"--bnb_4bit_quant_storage must be one of {', '.join(QUANT_STORAGES)}, "
                            f"got {self.bnb_4bit_quant_storage!r}")
        if self.quantized_load not in QUANTIZED_LOADS:
            raise LrptError(f"--quantized_load must be one of {', '.join(QUANTIZED_LOADS)}, "
                            f"got {self.quantized_load!r}")
        if self.quantized_load != "auto" and not (self.load_in_8bit or self.load_in_4bit):
            raise LrptError(f"--quantized_load {self.quantized_load} only applies to a quantized backbone: add "
                            "--load_in_8bit or --load_in_4bit, or drop --quantized_load")
        defaults = {f.name: f.default for f in dataclasses.fields(self) if f.name.startswith("bnb_4bit_")}
        changed = sorted(name for name, default in defaults.items() if getattr(self, name) != default)
        if changed and not self.load_in_4bit:
            raise LrptError(f"{', '.join('--' + n for n in changed)} only apply to a 4-bit backbone: "
                            "add --load_in_4bit")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def method_options(self) -> dict[str, Any]:
        """The options of this run's method that are set (the others: the method's defaults)."""
        return methods.method_options(self.method, self.to_dict())

    def build_method(self, embed_dim: int, is_encoder_decoder: bool, **context: Any) -> methods.PromptModule:
        """The run's method with the options it set; `context` adds the backbone's (embedding rows, the
        tokenized init_text) and may override an option (a loaded prompt starts from init="random")."""
        return methods.build(self.method, self.prompt_length, embed_dim, **{
            **self.method_options(), "input_positions": self.input_positions(is_encoder_decoder), **context})

    def input_positions(self, is_encoder_decoder: bool) -> int:
        """The longest input row a run gives the backbone, its prompt aside: the source (T5's encoder input) or,
        decoder-only, the source and the answer it is trained on."""
        return self.max_source_length + (0 if is_encoder_decoder else self.max_target_length)

    def optimizer_groups(self, prompt: methods.PromptModule) -> list[dict[str, Any]]:
        """AdamW's parameter groups: each of the method's groups at the learning rate and weight decay its options
        set (unset: --learning_rate, --weight_decay), named as the method names them."""
        def chosen(option: str | None, default: float) -> float:
            value = getattr(self, option) if option else None
            return default if value is None else value

        return [{"params": list(group.params), "name": group.name,
                 "lr": chosen(group.learning_rate, self.learning_rate),
                 "weight_decay": chosen(group.weight_decay, self.weight_decay)} for group in prompt.param_groups()]

    def monitors(self) -> list[str]:
        """The DeepSpeed monitors --report_to names."""
        return report_to(self.report_to)


RunConfig = dataclasses.make_dataclass(
    "RunConfig", methods.option_fields(), bases=(RunSettings,),
    namespace={"__module__": __name__, "__doc__": "RunSettings plus every registered method's options (rank, pool, "
               "...: one field per name, None meaning the method's default)."})

MONITORS = ("csv", "tensorboard", "wandb")


def check_precision(precision: str, model_type: str) -> None:
    """--precision against the backbone's type (its config alone): what `lrpt train` refuses, `lrpt plan` does too."""
    if precision == "fp16" and model_type in FP16_UNSAFE:
        raise LrptError(f"--precision fp16 with a {model_type} backbone: T5's activations overflow fp16 "
                        "(inf/NaN losses; T5 was trained in bf16). Use --precision bf16, or fp32")


def report_to(value: str) -> list[str]:
    """--report_to as a list of DeepSpeed monitors ('none': none), as transformers spells it."""
    names = [v.strip() for v in value.split(",") if v.strip()]
    if names == ["none"]:
        return []
    if names == ["all"]:
        return list(MONITORS)
    bad = [n for n in names if n not in MONITORS]
    if bad or not names:
        raise LrptError(f"--report_to must be none, all, or a comma-separated list of {', '.join(MONITORS)}; "
                        f"got {value!r}")
    return names


@functools.cache
def _hints() -> dict[str, Any]:
    return typing.get_type_hints(RunConfig)


def _field_type(f: dataclasses.Field) -> type:
    """The concrete type of a field, with `X | None` unwrapped to X."""
    tp = _hints()[f.name]
    if isinstance(tp, types.UnionType) or typing.get_origin(tp) is typing.Union:
        tp = next(a for a in typing.get_args(tp) if a is not type(None))
    return tp


def tristate(value: Any, flag: str) -> str:
    """'auto', 'true' or 'false' from a YAML bool or any spelling _parse_bool accepts."""
    if isinstance(value, bool):
        return str(value).lower()
    if str(value).lower() == "auto":
        return "auto"
    try:
        return str(_parse_bool(str(value))).lower()
    except argparse.ArgumentTypeError:
        raise LrptError(f"{flag} must be auto, true or false, got {value!r}") from None


def _parse_bool(text: str) -> bool:
    low = text.lower()
    if low in ("1", "true", "yes", "on"):
        return True
    if low in ("0", "false", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected true/false, got {text!r}")


def _optional(convert):
    """Accept 'none' for optional fields, like YAML's null."""
    def parse(text: str):
        return None if text.lower() in ("none", "null") else convert(text)
    parse.__name__ = convert.__name__
    return parse


# Old spellings that `lrpt plan`/`bench` used; every command accepts them (and the dashed forms).
SETTINGS = frozenset(f.name for f in dataclasses.fields(RunSettings))


def policies() -> dict[str, Policy]:
    """Every RunConfig field's Policy. A method's options are its run's own (per run, binding), with the aliases
    the method declares; the plan sizes the method's prompt from them."""
    return {f.name: f.metadata.get("policy", Policy()) if f.name in SETTINGS else
            Policy(per_run=True, aliases=tuple(f.metadata.get("aliases", ())), plan=DERIVED)
            for f in dataclasses.fields(RunConfig)}


ALIASES = {name: policy.aliases for name, policy in policies().items() if policy.aliases}
ZERO_STAGES = (0, 2, 3)
QUANTS = ("none", "8bit", "4bit")


def _spellings(name: str) -> list[str]:
    return [f"--{n}" for base in (name, *ALIASES.get(name, ())) for n in dict.fromkeys((base, base.replace("_", "-")))]


def add_run_arguments(parser: argparse.ArgumentParser, only: tuple[str, ...] | None = None) -> None:
    """RunConfig's fields as flags (all, or `only` these), with their aliases; `--config` and the
    shorthands `--zero N` (ds_configs/zeroN.json) and `--quant 8bit|4bit` come with the full set."""
    if only is None:
        parser.add_argument("--config", help="YAML file of RunConfig fields; flags given here override it")
    for f in dataclasses.fields(RunConfig):
        if only is not None and f.name not in only:
            continue
        tp, default = _field_type(f), f.default
        help_text = f.metadata.get("help", "") + f" (default: {default})"
        if tp is bool:
            parser.add_argument(*_spellings(f.name), dest=f.name, type=_parse_bool, nargs="?", const=True,
                                help=help_text)
        elif "const" in f.metadata:  # a bare flag means its `const` (--shared_prefix = --shared_prefix true)
            parser.add_argument(*_spellings(f.name), dest=f.name, type=tp, nargs="?", const=f.metadata["const"],
                                help=help_text)
        else:
            convert = _optional(tp) if default is None or f.name == "resume_from_checkpoint" else tp
            parser.add_argument(*_spellings(f.name), dest=f.name, type=convert, help=help_text)
    if only is None or "deepspeed" in only:
        parser.add_argument("--zero", type=int, choices=ZERO_STAGES,
                            help="shorthand for --deepspeed ds_configs/zeroN.json")
    if only is None or "load_in_8bit" in only:
        parser.add_argument("--quant", choices=QUANTS, help="shorthand: 8bit = --load_in_8bit, 4bit = --load_in_4bit")


def build_parser(prog: str = "lrpt train") -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=prog, description="Train a soft prompt on a frozen backbone.",
                                     argument_default=argparse.SUPPRESS)
    add_run_arguments(parser)
    return parser


def _expand_shorthands(args: dict[str, Any]) -> dict[str, Any]:
    """--zero and --quant into the fields they stand for; a shorthand that contradicts its field is an error."""
    if "zero" in args:
        if "deepspeed" in args:
            raise LrptError("--zero and --deepspeed both name the DeepSpeed config; give one")
        args["deepspeed"] = shipped(f"zero{args.pop('zero')}")
    if "quant" in args:
        quant = args.pop("quant")
        for bits in ("8bit", "4bit"):
            wanted = quant == bits
            if args.get(f"load_in_{bits}", wanted) != wanted:
                raise LrptError(f"--quant {quant} contradicts --load_in_{bits} {args[f'load_in_{bits}']}; give one")
            args[f"load_in_{bits}"] = wanted
    return args


def run_values(args: dict[str, Any]) -> dict[str, Any]:
    """RunConfig values from parsed flags (argparse.SUPPRESS: only those given): defaults <- YAML
    (--config) <- flags. Keys that are not RunConfig fields are left out."""
    args = _expand_shorthands(dict(args))
    if args.get("recipe") and args.get("config"):
        raise LrptError("--recipe and --config both give a file of settings; give one (flags override either)")
    values: dict[str, Any] = {}
    if args.get("recipe"):  # a recipe given as a flag is loaded; one recorded in a run's config.yaml is a name
        values = read_yaml(recipe.path_of(args["recipe"]), method=args.get("method"))
    elif args.get("config"):
        values = read_yaml(args["config"], method=args.get("method"))
        values.update(_own_run_dir(Path(args["config"]).expanduser(), values))
    known = {f.name for f in dataclasses.fields(RunConfig)}
    values.update({k: v for k, v in args.items() if k in known})
    return values


def _own_run_dir(path: Path, values: dict[str, Any]) -> dict[str, Any]:
    """A config.yaml that lrpt wrote (its first line says so) is a run's contract, and the run it repeats is the one
    in the directory where the file lies now: in a copied or moved run directory the copy, and for a copy used as a
    template its new directory (where lrpt refuses to write over it), never the directory it was written in."""
    if path.is_file() and path.read_text(errors="replace").startswith(RUN_CONFIG_HEADER):
        return {"output_dir": str(path.parent)}
    return {}


def load_config(argv: list[str] | None = None) -> RunConfig:
    """RunConfig from defaults <- YAML (--config) <- command-line flags."""
    return RunConfig(**run_values(vars(build_parser().parse_args(argv))))


def read_yaml(path: str, method: str | None = None) -> dict[str, Any]:
    """RunConfig values from a YAML file; a recipe's `methods:` section for `method` is merged in."""
    file = Path(path)
    if not file.is_file():
        raise LrptError(f"config file {path!r} does not exist")
    try:
        data = yaml.safe_load(file.read_text()) or {}
    except yaml.YAMLError as exc:
        raise LrptError(f"config file {path!r} is not valid YAML: {exc}") from None
    if not isinstance(data, dict):
        raise LrptError(f"config file {path!r} must hold a mapping of RunConfig fields")
    if "methods" in data:
        data = apply_methods(data, method, path)
    fields = {f.name: f for f in dataclasses.fields(RunConfig)}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise LrptError(f"config file {path!r} has unknown keys {unknown}; known keys: {', '.join(sorted(fields))}")
    return {key: _typed(fields[key], value, path) for key, value in data.items()}


def _typed(f: dataclasses.Field, value: Any, path: str) -> Any:
    """A YAML value as its field's type. A string is read as the same flag on the command line would
    be (`"false"`, `"4"`, and `3e-1`, which PyYAML leaves a string); any other value must already
    have the type; null only where the field may be None."""
    tp = _field_type(f)
    wanted = "true or false" if tp is bool else {int: "an integer", float: "a number", str: "a string"}[tp]
    if value is None and (f.default is None or f.name == "resume_from_checkpoint"):
        return None
    if isinstance(value, str) and tp is not str:
        try:
            return _parse_bool(value) if tp is bool else tp(value)
        except (ValueError, argparse.ArgumentTypeError):
            pass
    elif tp is bool and isinstance(value, bool) or tp is str and isinstance(value, str):
        return value
    elif tp is int and isinstance(value, int) and not isinstance(value, bool):
        return value
    elif tp is float and isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    elif f.name == "shared_prefix" and isinstance(value, bool):  # auto | true | false, a YAML bool included
        return value
    raise LrptError(f"config file {path!r}: {f.name} must be {wanted}, got {value!r}")
