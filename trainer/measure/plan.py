"""`lrpt plan`: per-rank memory of a training run, predicted before a job is submitted.

The backbone is built on the meta device (no weights, no download) to get every parameter's
shape and which layers bitsandbytes would quantize (transformers' own rules). Everything else is
arithmetic written out below and in docs/benchmarks.md ("Memory planner"):

- weights held: full tensors (ZeRO-0/2) or 1/N shards (ZeRO-3; tensors of at most
  `stage3_param_persistence_threshold` elements stay whole); 8-bit = 1 byte per quantized weight
  + a replicated fp32 scale per row; 4-bit = 1/2 byte + replicated fp32 absmax per 64 weights
  (double quant: 1 byte per 64 + fp32 per 256 blocks);
- ZeRO-3 gathered working set: DeepSpeed keeps a gathered parameter alive when it is used again
  within `stage3_max_reuse_distance` elements of the module trace (forward then backward), so at
  the turn from forward to backward the last D/2 elements of the model are gathered, plus one
  prefetch bucket (measured right where the whole model is within D/2; with a smaller D,
  DeepSpeed 0.19.8 kept more than this, so the figure is a lower bound there);
- prompt + optimizer: parameter, gradient, Adam's two fp32 moments (and the fp32 master copy in
  bf16);
- DeepSpeed's gradient reduce bucket (ZeRO-1/2/3 with contiguous gradients);
- activations saved for backward. The backbone is frozen, so a linear layer saves nothing for its
  input gradient but its weight (under ZeRO-3 too: backbone.zero3_linear; bitsandbytes' own
  8-bit layer is the exception, `_int8_inputs`); what is saved is listed per layer in
  `_llama_layer`/`_t5_layer` (checked against torch's saved-tensor hooks in tests/test_plan.py);
- the transient peak of the backward: the output head's logits, log-softmax and their gradients,
  or one layer's recomputation under gradient checkpointing, or one dequantized weight.

Load-time peak: under ZeRO-3 a quantized model loads sharded (`sharded_load_peak`: each rank's share
plus the tensor being converted; backbone.quant_load), or with --quantized_load whole (and below
ZeRO-3) whole on every rank (docs/quantization.md); an unquantized one arrives sharded through
zero.Init.
"""
from __future__ import annotations

import functools
import math
from dataclasses import asdict, dataclass, field, replace

import torch
from transformers import LlamaConfig, PretrainedConfig, T5Config

from ..backbone.quant_load import loads_sharded
from ..config.ds_config import DeepSpeedConfig

GiB = 2**30

# Published architecture sizes (T5: Raffel et al. 2020, Table 14 / the released configs;
# LLaMA: Touvron et al. 2023, LLaMA-2 70B with grouped-query attention). Configs only.
_T5 = dict(vocab_size=32128, dropout_rate=0.1, feed_forward_proj="relu", tie_word_embeddings=True)
ARCHITECTURES: dict[str, PretrainedConfig] = {
    "t5-small": T5Config(d_model=512, d_ff=2048, d_kv=64, num_heads=8, num_layers=6, **_T5),
    "t5-base": T5Config(d_model=768, d_ff=3072, d_kv=64, num_heads=12, num_layers=12, **_T5),
    "t5-large": T5Config(d_model=1024, d_ff=4096, d_kv=64, num_heads=16, num_layers=24, **_T5),
    "t5-3b": T5Config(d_model=1024, d_ff=16384, d_kv=128, num_heads=32, num_layers=24, **_T5),
    "t5-11b": T5Config(d_model=1024, d_ff=65536, d_kv=128, num_heads=128, num_layers=24, **_T5),
    "llama-7b": LlamaConfig(hidden_size=4096, intermediate_size=11008, num_hidden_layers=32, num_attention_heads=32,
                            num_key_value_heads=32, vocab_size=32000),
    "llama-13b": LlamaConfig(hidden_size=5120, intermediate_size=13824, num_hidden_layers=40, num_attention_heads=40,
                             num_key_value_heads=40, vocab_size=32000),
    "llama-70b": LlamaConfig(hidden_size=8192, intermediate_size=28672, num_hidden_layers=80, num_attention_heads=64,
                             num_key_value_heads=8, vocab_size=32000),
}
# T5 v1.1 (the released configs: gated GELU, untied embeddings), the checkpoints the templates launch
_T5_V1_1 = dict(vocab_size=32128, dropout_rate=0.1, feed_forward_proj="gated-gelu", tie_word_embeddings=False, d_kv=64)
ARCHITECTURES.update({
    "google/t5-v1_1-small": T5Config(d_model=512, d_ff=1024, num_heads=6, num_layers=8, **_T5_V1_1),
    "google/t5-v1_1-base": T5Config(d_model=768, d_ff=2048, num_heads=12, num_layers=12, **_T5_V1_1),
    "google/t5-v1_1-large": T5Config(d_model=1024, d_ff=2816, num_heads=16, num_layers=24, **_T5_V1_1),
    "google/t5-v1_1-xl": T5Config(d_model=2048, d_ff=5120, num_heads=32, num_layers=24, **_T5_V1_1),
    "google/t5-v1_1-xxl": T5Config(d_model=4096, d_ff=10240, num_heads=64, num_layers=24, **_T5_V1_1),
})
# hub names of the same published architectures, so that a plan names what a run loads
HUB_NAMES = {**{f"google-t5/{n}": n for n in ("t5-small", "t5-base", "t5-large", "t5-3b", "t5-11b")},
             "meta-llama/Llama-2-7b-hf": "llama-7b", "meta-llama/Llama-2-13b-hf": "llama-13b",
             "meta-llama/Llama-2-70b-hf": "llama-70b"}
ARCHITECTURES.update({hub: ARCHITECTURES[short] for hub, short in HUB_NAMES.items()})
BYTES = {"fp32": 4, "bf16": 2, "fp16": 2}


@dataclass
class PlanSpec:
    """What `lrpt plan` is asked about: one training run's shape."""
    model: str = "t5-11b"
    zero: int = 3
    gpus: int = 8                 # per node
    nodes: int = 1
    quant: str = "none"           # none | 8bit | 4bit
    double_quant: bool = False    # 4-bit: --bnb_4bit_use_double_quant
    quantized_load: str = "auto"  # --quantized_load: auto | sharded | whole (backbone.quant_load)
    method: str = "dpt"
    prompt_length: int = 100
    options: dict = field(default_factory=dict)  # the method's options (rank, pool, ...): RunConfig.method_options()
    batch: int = 8                # micro batch per rank
    seq_len: int = 256            # input tokens per example
    target_len: int = 16          # decoder tokens per example (encoder-decoder backbones)
    precision: str = "bf16"
    grad_ckpt: bool = False
    gpu_memory_gib: float = 80.0
    overhead_gib: float = 1.0     # CUDA context + NCCL, outside max_memory_allocated
    ds_config: str | None = None  # DeepSpeed JSON (default: ds_configs/zero{N}.json)
    fused: int = 1                # runs like this one trained together (lrpt sweep --fuse): one backbone,
    #                               their micro-batches concatenated, a prompt + optimizer + engine each

    @classmethod
    def from_run(cls, cfg, gpus: int = 1, nodes: int = 1, gpu_memory_gib: float = 80.0,
                 overhead_gib: float = 1.0, fused: int = 1) -> "PlanSpec":
        """The plan of a RunConfig (`lrpt train`'s settings) on `nodes` x `gpus`: the settings whose Policy names a
        PlanSpec field copied to it, and from those it marks DERIVED: the ZeRO stage, the quantization, the method's
        options and the longest batch, max_source_length input tokens (decoder-only: + [bos] + max_target_length
        answer tokens)."""
        from ..config.ds_config import read_ds_config
        from ..config.run_config import DERIVED, policies

        copied = {policy.plan: getattr(cfg, name) for name, policy in policies().items()
                  if policy.plan and policy.plan != DERIVED}
        config = model_config(cfg.model)
        seq_len = cfg.max_source_length
        if not config.is_encoder_decoder:
            seq_len += cfg.max_target_length + (config.bos_token_id is not None)
        quant = "8bit" if cfg.load_in_8bit else "4bit" if cfg.load_in_4bit else "none"
        return cls(**copied, zero=read_ds_config(cfg.deepspeed).stage, quant=quant, options=cfg.method_options(),
                   seq_len=seq_len, gpus=gpus, nodes=nodes, gpu_memory_gib=gpu_memory_gib, overhead_gib=overhead_gib,
                   fused=fused)


@dataclass
class Plan:
    spec: PlanSpec
    world_size: int
    backbone_params: int
    trainable_params: int
    prompt_tokens: int
    per_rank: dict[str, int] = field(default_factory=dict)   # component -> bytes (training peak)
    load_peak: int = 0
    train_peak: int = 0
    notes: list[str] = field(default_factory=list)

    @property
    def peak(self) -> int:
        return max(self.load_peak, self.train_peak)

    @property
    def needed(self) -> int:
        return self.peak + int(self.spec.overhead_gib * GiB)

    @property
    def fits(self) -> bool:
        return self.needed <= self.spec.gpu_memory_gib * GiB

    def to_dict(self) -> dict:
        out = asdict(self)
        out.update(peak=self.peak, needed=self.needed, fits=self.fits)
        return out


def model_config(name: str) -> PretrainedConfig:
    """A named architecture, else what `lrpt train` would load (backbone.resolve_config: presets, paths, hub
    names and GGUF files alike, a GGUF through its converted checkpoint)."""
    if name in ARCHITECTURES:
        return ARCHITECTURES[name]
    from ..backbone.source import resolve_config

    return resolve_config(name)


def meta_model(config: PretrainedConfig) -> torch.nn.Module:
    """The architecture with every tensor on the meta device: shapes without bytes."""
    from transformers import AutoModelForCausalLM, AutoModelForSeq2SeqLM

    auto = AutoModelForSeq2SeqLM if config.is_encoder_decoder else AutoModelForCausalLM
    with torch.device("meta"):
        return auto.from_config(config)


@dataclass
class ParamInfo:
    name: str
    numel: int
    rows: int            # output features of a quantized weight (8-bit scales are per row)
    quantized: bool
    fp32: bool           # kept in fp32 whatever the precision (quantized T5: `_keep_in_fp32_modules`)
    block: str           # the module run as one unit: "encoder.block.3", "lm_head", ...


@functools.lru_cache(maxsize=8)
def model_tensors(name: str, quant: str) -> tuple[ParamInfo, ...]:
    """`backbone_tensors` of a preset, path or hub name, built once per process: `smallest_world`
    plans the same backbone at several sizes."""
    return tuple(backbone_tensors(meta_model(model_config(name)), quant))


def backbone_tensors(model: torch.nn.Module, quant: str) -> list[ParamInfo]:
    """Every distinct parameter with what loading does to it; tied tensors once."""
    from transformers.quantizers.base import HfQuantizer
    from transformers.quantizers.quantizers_utils import should_convert_module

    keep_fp32 = list(getattr(model, "_keep_in_fp32_modules", None) or [])
    skip = HfQuantizer.get_modules_to_not_convert(model, None, keep_fp32) if quant != "none" else []
    out, seen = [], set()
    for module_name, module in model.named_modules():
        for pname, p in module.named_parameters(recurse=False):
            if id(p) in seen:
                continue
            seen.add(id(p))
            quantized = (quant != "none" and isinstance(module, torch.nn.Linear) and pname == "weight"
                         and should_convert_module(module_name, skip))
            fp32 = quant != "none" and any(module_name.endswith(k) for k in keep_fp32)
            parts = module_name.split(".")
            block = ".".join(parts[:3]) if len(parts) > 2 and parts[2].isdigit() else module_name
            block = ".".join(parts[:4]) if len(parts) > 3 and parts[3].isdigit() else block
            out.append(ParamInfo(f"{module_name}.{pname}", p.numel(), p.shape[0], quantized, fp32, block))
    return out


def stored_bytes(t: ParamInfo, quant: str, precision: str, double_quant: bool) -> tuple[float, float]:
    """(bytes ZeRO can shard, bytes that stay replicated) of one parameter as loaded."""
    if not t.quantized:
        return t.numel * (4 if t.fp32 else BYTES[precision]), 0.0
    if quant == "8bit":
        return float(t.numel), 4.0 * t.rows                    # int8 weight; fp32 SCB per row
    blocks = math.ceil(t.numel / 64)                           # bitsandbytes' 4-bit blocksize
    state = blocks + 4 * math.ceil(blocks / 256) + 4 * 256 if double_quant else 4 * blocks
    return t.numel / 2, float(state)                           # packed nibbles; absmax (+ nested) per block


def sharded_load_peak(tensors: list[ParamInfo], spec: PlanSpec, world: int) -> int:
    """A rank's peak under --quantized_load sharded (backbone.quant_load): each parameter becomes its ZeRO-3
    partition as it loads, so a rank holds 1/N of every stored tensor and the replicated statistics, plus
    the tensor being converted. The checkpoint is assumed stored in --precision."""
    held = sum(math.ceil(big / world) + small for big, small in
               (stored_bytes(t, spec.quant, spec.precision, spec.double_quant) for t in tensors))
    return int(held + max(_converting(t, spec, world) for t in tensors))


def _converting(t: ParamInfo, spec: PlanSpec, world: int) -> float:
    """Bytes in flight while one tensor loads: an unquantized one read whole; a quantized one's whole quantized
    form (its rows all-gathered), one slab of this rank's 1/N of the rows read in --precision (8-bit from fp32 or
    fp16: in fp16) and, 8-bit from bf16, one slice's fp16 copy (backbone.quant_slices)."""
    from ..backbone.quant_slices import CHUNK_ELEMENTS, READ_ELEMENTS

    big, _ = stored_bytes(t, spec.quant, spec.precision, spec.double_quant)
    if not t.quantized:
        return big
    own = math.ceil(t.numel / world)
    if spec.quant == "8bit" and spec.precision != "bf16":  # read straight into fp16 (quantize_8bit)
        return big + min(own, READ_ELEMENTS) * 2
    fp16_copy = min(own, CHUNK_ELEMENTS) * 2 if spec.quant == "8bit" else 0
    return big + min(own, READ_ELEMENTS) * BYTES[spec.precision] + fp16_copy


def resolved_ds_config(spec: PlanSpec, hidden: int, world: int) -> DeepSpeedConfig:
    from ..config.ds_config import resolve_ds_config, shipped
    from ..config.run_config import RunConfig

    path = spec.ds_config or shipped(f"zero{spec.zero}")
    cfg = RunConfig(deepspeed=path, per_device_train_batch_size=spec.batch, precision=spec.precision)
    return resolve_ds_config(cfg, world, hidden)


# ---------------------------------------------------------------- activations (bytes per example)

def _norm(tokens: int, h: int, s: int, upcast_keeps_input: bool) -> int:
    """RMSNorm: pow() saves an fp32 copy of its input (the input itself in fp32) and rsqrt()'s output;
    T5's norm also multiplies the un-upcast input, which is a second saved tensor below fp32."""
    extra = s * tokens * h if upcast_keeps_input and s != 4 else 0
    return 4 * tokens * h + 4 * tokens + extra


def _llama_layer(c: PretrainedConfig, tokens: int, s: int) -> int:
    """Two norms; q, k, v, attention output and log-sum-exp kept by sdpa, with k and v repeated to
    every query head and the padding mask materialised per layer (transformers' sdpa path for a
    padded batch); SwiGLU keeps gate, up and silu(gate). Frozen linears keep nothing of their inputs."""
    q = c.num_attention_heads * (c.hidden_size // c.num_attention_heads)
    attention = 4 * s * tokens * q + 4 * c.num_attention_heads * tokens + s * tokens * tokens
    return 2 * _norm(tokens, c.hidden_size, s, False) + attention + 3 * s * tokens * c.intermediate_size


def _t5_attention(c: PretrainedConfig, q_tokens: int, kv_tokens: int, s: int) -> int:
    """q, k, v, output and log-sum-exp kept by sdpa, and the position bias + padding mask it is given
    (one per layer and example for a padded batch)."""
    inner = c.num_heads * c.d_kv
    return (s * inner * (2 * q_tokens + 2 * kv_tokens) + 4 * c.num_heads * q_tokens
            + s * c.num_heads * q_tokens * kv_tokens)


def _t5_ff(c: PretrainedConfig, tokens: int, s: int) -> int:
    gated = c.feed_forward_proj.startswith("gated")
    return s * tokens * c.d_ff * (3 if gated else 1)  # relu keeps its output; gated also wi_0/wi_1 outputs


def _t5_layer(c: PretrainedConfig, tokens: int, s: int, cross_tokens: int = 0) -> int:
    """Encoder block (cross_tokens = 0) or decoder block: norms, attention(s), FF, dropout masks.
    The decoder's self-attention bias is causal only, made once per stack (`activations`)."""
    norms = 3 if cross_tokens else 2
    total = norms * _norm(tokens, c.d_model, s, True) + _t5_ff(c, tokens, s)
    if cross_tokens:
        total += _t5_attention(c, tokens, tokens, s) - s * c.num_heads * tokens * tokens
        total += _t5_attention(c, tokens, cross_tokens, s)
    else:
        total += _t5_attention(c, tokens, tokens, s)
    if c.dropout_rate > 0:  # one bool mask per dropout: after each attention, inside and after the FF
        total += tokens * (c.d_model * norms + c.d_ff)
    return total


def _int8_inputs(config: PretrainedConfig, spec: PlanSpec, prompt_tokens: int) -> tuple[list[int], int]:
    """bitsandbytes' own 8-bit layer (without ZeRO-3) keeps each quantized linear's input for its
    backward, and on a GPU an int8 copy of it too: (s + 1) bytes per element. Per layer and per
    stack, bytes per example; an input shared by several linears (q/k/v, gate/up) is one tensor.
    T5's `wo` and every output head stay unquantized (transformers' rules) and keep nothing."""
    b = BYTES[spec.precision] + 1
    if config.is_encoder_decoder:
        te, tt, h, inner = prompt_tokens + spec.seq_len, spec.target_len, config.d_model, config.num_heads * config.d_kv
        layers = [b * te * (2 * h + inner)] * config.num_layers
        layers += [b * tt * (3 * h + 2 * inner)] * config.num_decoder_layers
        layers[config.num_layers] -= b * tt * (h + inner)  # the first self-attention carries no gradient
        return layers, b * te * h                          # the encoder output, cross-attention's k/v input
    t, h = prompt_tokens + spec.seq_len, config.hidden_size
    q = config.num_attention_heads * (h // config.num_attention_heads)
    return [b * t * (2 * h + q + config.intermediate_size)] * config.num_hidden_layers, 0


def activations(config: PretrainedConfig, spec: PlanSpec, prompt_tokens: int,
                int8_inputs: bool = False) -> dict[str, int]:
    """Saved-for-backward bytes per rank (`saved`) and the backward's transient peak (`transient`)."""
    s, b = BYTES[spec.precision], spec.batch
    v = config.vocab_size
    if config.is_encoder_decoder:
        te, tt = prompt_tokens + spec.seq_len, spec.target_len
        layers = [_t5_layer(config, te, s)] * config.num_layers
        layers += [_t5_layer(config, tt, s, cross_tokens=te)] * config.num_decoder_layers
        h = config.d_model
        # the decoder's first norm and self-attention see only the (frozen) target embeddings: no
        # gradient flows there, nothing is saved; the prompt reaches the decoder through cross-attention
        layers[config.num_layers] -= (_norm(tt, h, s, True) + _t5_attention(config, tt, tt, s)
                                      - s * config.num_heads * tt * tt)
        # per stack: the final norms; the decoder's causal position bias is one tensor for the batch
        stack = _norm(te, h, s, True) + _norm(tt, h, s, True)
        shared = s * config.num_heads * tt * tt
        head_tokens, loss_bytes = tt, s      # T5's loss is taken on logits as they are
        inputs = [te] * config.num_layers + [tt] * config.num_decoder_layers
    else:
        t = prompt_tokens + spec.seq_len
        layers = [_llama_layer(config, t, s)] * config.num_hidden_layers
        h = config.hidden_size
        stack = _norm(t, h, s, False) + 2 * s * t * (h // config.num_attention_heads)  # final norm; cos, sin
        head_tokens, loss_bytes = t, 4       # causal-LM loss upcasts logits to fp32
        inputs = [t] * config.num_hidden_layers
        shared = 0
    if int8_inputs:
        extra_layers, extra_stack = _int8_inputs(config, spec, prompt_tokens)
        layers = [a + e for a, e in zip(layers, extra_layers)]
        stack += extra_stack
    # the head, all (tokens x vocab): the forward ends holding the logits, their upcast copy and the
    # log-softmax output; the backward then holds that output, its gradient and its input's gradient
    forward_end = s + (loss_bytes if loss_bytes != s else 0) + loss_bytes
    head = head_tokens * v * max(forward_end, 3 * loss_bytes)
    if spec.grad_ckpt:  # each block keeps only its input; one block is recomputed at a time, with
        # its backward's gradients (hidden in and out, two feed-forward-wide tensors) on top
        ff = config.d_ff if config.is_encoder_decoder else config.intermediate_size
        saved = sum(s * n * h for n in inputs) + stack
        transient = max(head, max(layer + s * n * (2 * h + 2 * ff) for layer, n in zip(layers, inputs)))
    else:
        saved = sum(layers) + stack
        transient = head
    return {"saved": b * saved + shared, "transient": b * transient}


# ---------------------------------------------------------------- the plan

def check_memory(spec: PlanSpec) -> None:
    """--gpu_memory and --overhead as GiB a GPU can have: a plan is a ratio of them (NaN fits nothing, 0 divides)."""
    from ..errors import LrptError

    if not (math.isfinite(spec.gpu_memory_gib) and spec.gpu_memory_gib > 0):
        raise LrptError(f"--gpu_memory must be a number of GiB > 0 (80 for an 80 GB GPU), got {spec.gpu_memory_gib}")
    if not (math.isfinite(spec.overhead_gib) and spec.overhead_gib >= 0):
        raise LrptError(f"--overhead must be a number of GiB >= 0, got {spec.overhead_gib}")


def plan(spec: PlanSpec) -> Plan:
    from ... import methods
    from ..config.run_config import check_precision
    from ..errors import LrptError

    if spec.zero not in (0, 2, 3) and spec.ds_config is None:
        raise LrptError(f"--zero {spec.zero}: lrpt ships ds_configs/zero0, zero2 and zero3; "
                        "pass --deepspeed for others")
    if spec.quant not in ("none", "8bit", "4bit"):
        raise LrptError(f"--quant {spec.quant!r}: choose none, 8bit or 4bit")
    if spec.precision not in BYTES:
        raise LrptError(f"--precision {spec.precision!r}: choose fp32 or bf16")
    if min(spec.gpus, spec.nodes, spec.batch, spec.seq_len, spec.prompt_length, spec.fused) < 1:
        raise LrptError("--gpus, --nodes, --batch, --seq_len, --prompt_length and --fuse must be at least 1")
    check_memory(spec)
    config = model_config(spec.model)
    check_precision(spec.precision, config.model_type)  # the rule `lrpt train` refuses a run by
    world = spec.gpus * spec.nodes
    hidden = config.d_model if config.is_encoder_decoder else config.hidden_size
    ds = resolved_ds_config(spec, hidden, world)
    zero, stage = ds.zero, ds.stage
    s = BYTES[spec.precision]
    notes: list[str] = []

    # prompt: the method's own parameter count and output length (LAMP: ⌈c/p⌉), at the backbone's width
    try:
        prompt = methods.build(spec.method, spec.prompt_length, hidden, input_positions=spec.seq_len,
                               **{**spec.options, **methods.random_start(spec.method)})
    except ValueError as exc:
        raise LrptError(str(exc)) from None
    n_prompt, prompt_tokens = prompt.num_trainable_params(), prompt.output_length

    # weights
    tensors = model_tensors(spec.model, spec.quant)
    persist = int(zero.get("stage3_param_persistence_threshold", 100_000)) if stage == 3 else 0
    shardable = replicated = whole = 0.0
    blocks: dict[str, list] = {}  # block -> [elements, bytes] ZeRO-3 shards, in the order the model runs them
    for t in tensors:
        big, small = stored_bytes(t, spec.quant, spec.precision, spec.double_quant)
        replicated += small
        if stage == 3 and t.numel > persist:
            shardable += big
            entry = blocks.setdefault(t.block, [0, 0.0])
            entry[0] += t.numel
            entry[1] += big
        else:
            whole += big
    held = whole + replicated + (math.ceil(shardable / world) if stage == 3 else shardable)
    per_rank = {"weights": int(held)}

    # ZeRO-3: what is gathered at the turn from forward to backward
    if stage == 3:
        reuse = int(zero.get("stage3_max_reuse_distance", 1_000_000_000))
        prefetch = int(zero.get("stage3_prefetch_bucket_size", 50_000_000))
        order = list(blocks.values())
        kept, numel = 0.0, 0
        for block_numel, block_bytes in reversed(order):   # the last D/2 elements stay gathered
            if numel >= reuse // 2:
                break
            kept, numel = kept + block_bytes, numel + block_numel
        largest = max(b for _, b in order)
        per_element = shardable / max(1, sum(n for n, _ in order))
        gathered = min(shardable, kept + largest + prefetch * per_element)
        if not zero.get("memory_efficient_linear", True):
            gathered = shardable  # torch's own linear saves a view of each gathered weight until backward
            notes.append("memory_efficient_linear is off: torch's linear keeps every gathered weight alive in the "
                         "autograd graph until the backward; leave it on (lrpt then saves no linear inputs)")
        per_rank["zero3_gathered"] = int(gathered)
        if gathered >= shardable and world > 1:
            notes.append(f"the whole backbone is within stage3_max_reuse_distance ({reuse:.0e} elements), so ZeRO-3 "
                         f"keeps all of it gathered ({gathered / GiB:.2f} GiB) from forward to backward: at this size "
                         f"ZeRO-0/2 need less per rank")

    # prompt, its gradient, AdamW's moments (+ fp32 master weights in bf16); fused: one each per run
    per_rank["prompt_and_optimizer"] = spec.fused * n_prompt * (2 * s + 8 + (4 if s != 4 else 0))
    if stage >= 1 and zero.get("contiguous_gradients", True):  # each run's engine has its own bucket
        grad_bytes = s if stage == 3 else 4
        bucket = int(zero.get("reduce_bucket_size", 500_000_000))
        per_rank["deepspeed_reduce_bucket"] = spec.fused * bucket * grad_bytes
    group = replace(spec, batch=spec.batch * spec.fused)  # a fused forward: every run's rows
    acts = activations(config, group, prompt_tokens, int8_inputs=spec.quant == "8bit" and stage != 3)
    per_rank["activations_saved"] = acts["saved"]
    transient = acts["transient"]
    quantized = [t for t in tensors if t.quantized]
    if quantized:  # a quantized layer dequantizes its weight to the compute dtype for the matmul
        transient += max(t.numel for t in quantized) * s
    per_rank["backward_transient"] = transient
    train_peak = int(sum(per_rank.values()))

    if loads_sharded(spec.quant != "none", ds, spec.quantized_load):
        load_peak = sharded_load_peak(tensors, spec, world)
        notes.append("loading: each rank reads, quantizes and keeps only its share, one tensor at a time "
                     "(--quantized_load sharded; --quantized_load whole loads the whole quantized model on every rank)")
    elif spec.quant != "none":  # every rank loads the whole quantized model before ZeRO-3 shards it
        full = sum(sum(stored_bytes(t, spec.quant, spec.precision, spec.double_quant)) for t in tensors)
        load_peak = int(full + max(t.numel for t in quantized) * s)  # + one weight before quantization
        if stage == 3:
            notes.append(f"loading: every rank holds the whole quantized model ({full / GiB:.2f} GiB) until "
                         f"deepspeed.initialize shards it")
    elif stage == 3:
        load_peak = int(held + max(b for _, b in blocks.values()))  # one block gathered while it loads
    else:
        load_peak = int(held)
    return Plan(spec=spec, world_size=world, backbone_params=sum(t.numel for t in tensors), trainable_params=n_prompt,
                prompt_tokens=prompt_tokens, per_rank=per_rank, load_peak=load_peak, train_peak=train_peak, notes=notes)



# ---------------------------------------------------------------- `lrpt plan`

LABELS = {"weights": "backbone weights held (shards under ZeRO-3, quantized if asked)",
          "zero3_gathered": "ZeRO-3 gathered parameters (reuse distance + prefetch)",
          "prompt_and_optimizer": "prompt, its gradient, AdamW moments (+ fp32 master)",
          "deepspeed_reduce_bucket": "DeepSpeed gradient reduce bucket",
          "activations_saved": "activations saved for backward",
          "backward_transient": "backward transient (head / recomputed block / dequantized weight)"}


def smallest_world(spec: PlanSpec, limit: int = 4096) -> int | None:
    """The fewest GPUs (multiples of --gpus per node) at which this run fits, or None."""
    from dataclasses import replace

    nodes = 1
    while spec.gpus * nodes <= limit:
        if plan(replace(spec, nodes=nodes)).fits:  # doubling finds a size that fits; the fewest lies above half of it
            return spec.gpus * next(n for n in range(nodes // 2 + 1, nodes + 1) if plan(replace(spec, nodes=n)).fits)
        nodes *= 2
    return None


def render(p: Plan) -> str:
    s = p.spec
    options = "".join(f", {k}={v}" for k, v in s.options.items() if k != "init_text")
    lines = [f"{s.model}: {p.backbone_params / 1e9:.2f}B frozen parameters, {s.precision}, quantization {s.quant}; "
             f"ZeRO-{s.zero} on {p.world_size} rank(s) ({s.nodes} node(s) x {s.gpus}); {s.method} c={s.prompt_length}"
             f"{options} ({p.prompt_tokens} prompt tokens, {p.trainable_params:,} trainable); micro batch {s.batch} x "
             f"{s.seq_len} input tokens" + (f" (+{s.target_len} decoder tokens)"
                                            if model_config(s.model).is_encoder_decoder else "")
             + (", gradient checkpointing" if s.grad_ckpt else "")
             + (f"; {s.fused} such runs fused (lrpt sweep --fuse): micro batch {s.batch * s.fused} in one forward"
                if s.fused > 1 else ""),
             "", "| per rank | GiB |", "|---|---|"]
    for key, value in p.per_rank.items():
        lines.append(f"| {LABELS[key]} | {value / GiB:.3f} |")
    lines += [f"| **training peak** | **{p.train_peak / GiB:.3f}** |",
              f"| load peak | {p.load_peak / GiB:.3f} |",
              f"| + CUDA context and NCCL (assumed) | {s.overhead_gib:.3f} |",
              f"| **needed per GPU** | **{p.needed / GiB:.3f}** |", ""]
    verdict = "fits" if p.fits else "does NOT fit"
    lines.append(f"{verdict} in {s.gpu_memory_gib:g} GiB per GPU "
                 f"({100 * p.needed / (s.gpu_memory_gib * GiB):.0f}% used)")
    lines += [f"note: {n}" for n in p.notes]
    return "\n".join(lines)


def parser():
    import argparse

    from ..config.run_config import add_run_arguments

    a = argparse.ArgumentParser(prog="lrpt plan", argument_default=argparse.SUPPRESS,
                                description="Predict per-rank GPU memory of a run before submitting it. Takes "
                                            "`lrpt train`'s flags (or --config RUN_DIR/config.yaml) "
                                            "and plans that run.")
    cluster = a.add_argument_group("where it runs")
    cluster.add_argument("--gpus", type=int, default=1, help="GPUs (ranks) per node (default 1)")
    cluster.add_argument("--nodes", type=int, default=1, help="nodes (default 1)")
    cluster.add_argument("--gpu_memory", "--gpu-memory", type=float, default=80.0, help="GiB per GPU (default 80)")
    cluster.add_argument("--overhead", type=float, default=1.0,
                         help="GiB per GPU outside PyTorch's allocator: CUDA context, NCCL (default 1)")
    cluster.add_argument("--json", action="store_true", default=False, help="print the plan as JSON")
    cluster.add_argument("--grid", nargs="+", action="extend", default=[], metavar="FIELD=V1,V2",
                         help="a sweep's grid (`lrpt sweep --grid`): plan every point, show the largest")
    cluster.add_argument("--fuse", type=int, default=1,
                         help="plan a fused group (lrpt sweep --fuse) of this many runs like this one: one backbone, "
                              "their micro-batches summed, a prompt, optimizer and engine each (default 1)")
    add_run_arguments(a.add_argument_group("the run (`lrpt train`'s flags; --model also takes the presets "
                                           f"{', '.join(ARCHITECTURES)})"))
    return a


def main(argv: list[str]) -> int:
    """Exit status 0 when the run fits, 1 when it does not (so `lrpt plan ... && sbatch ...` works)."""
    import json

    from ..config.grid import describe, label, parse_grid, point_flags, points
    from ..config.run_config import RunConfig, run_values

    args = vars(parser().parse_args(argv))
    axes = parse_grid(args["grid"])
    planned = []
    for point in points(axes):  # the run's flags, then the point's (a point's value wins)
        cfg = RunConfig(**run_values(vars(parser().parse_args([*argv, *point_flags(point)]))))
        cfg.validate()
        spec = PlanSpec.from_run(cfg, gpus=args["gpus"], nodes=args["nodes"], gpu_memory_gib=args["gpu_memory"],
                                 overhead_gib=args["overhead"], fused=args["fuse"])
        planned.append((plan(spec), point))
    p, point = max(planned, key=lambda pair: pair[0].needed)
    spec = p.spec
    if args["json"]:
        print(json.dumps({**p.to_dict(), **({"grid_point": dict(point)} if axes else {})}, indent=2))
        return 0 if p.fits else 1
    if axes:
        print(f"the largest of {len(planned)} grid points ({describe(axes)}): {label(point)}")
    print(render(p))
    if not p.fits and spec.zero == 3:
        n = smallest_world(spec)
        print(f"at ZeRO-3 this run fits on {n} GPUs ({spec.gpus} per node)" if n else
              "no number of GPUs makes it fit at this micro batch: lower --batch or --seq_len, or add --grad_ckpt")
    elif not p.fits:
        print("try --zero 3 (shards the backbone), --quant 8bit/4bit, --grad_ckpt or a smaller --batch")
    return 0 if p.fits else 1
