"""Fused runs: several runs' prompts trained in one pass over one frozen backbone (`lrpt sweep --fuse`).

A paper table is many runs on one backbone, and only the prompt differs between them. Trained one
after another, every run loads the backbone again and, under ZeRO-3, every step of every run gathers
the whole backbone to move a few kilobytes of prompt. Fused, the runs of a group share one load and
one forward and backward per step:
- each step's batch is the concatenation of every run's own micro-batch (its own data order, from its
  seed), laid out as the run lays it out alone, so prompts of different lengths (LAMP's pooling, other c)
  mix. On the shared prefix (decoder-only) one packed sequence holds each run's prompt once and its rows
  behind it, attention kept within each run's segment (model.shared_prefix); on the standard path each
  row is [its run's prompt, its text], padded after its end to the longest row;
- each run's loss is the backbone's own (token-mean cross-entropy) over its own rows and targets: the
  prompts are disjoint, so the gradient of the summed losses that reaches run k's prompt is the one of
  run k's loss alone;
- each run keeps its own DeepSpeed engine over its prompt alone (`PromptOnly`): AdamW state, schedule,
  gradient clipping (DeepSpeed's, per engine), ZeRO partitioning of the prompt, and checkpoints in the
  layout of the run trained alone. The backbone runs outside them, under an engine of its own without
  optimizer (ZeRO-3: DeepSpeed's parameter offload gathers each layer once for the whole group), and
  each prompt's gradient is handed to its engine as `engine.backward(<P, dL/dP>)`;
- evaluation, selection, logs, checkpoints and the report are each run's own (train.run_loop).
What would make a fused run differ from its run alone is refused before anything loads (`check_group`).
"""
from __future__ import annotations

import copy
from pathlib import Path

import torch
from torch import nn
from torch.nn import functional as F

from ..backbone.source import resolve_config
from ..config.ds_config import DeepSpeedConfig
from ..config.run_config import RunConfig, policies
from ..errors import LrptError
from ..measure.flops import step_flops
from ..model import shared_prefix
from ..model.rows import lay_out, pad_rows, token_embeddings

# what each fused run keeps its own (its prompt and method options, optimizer, schedule, data, evaluation, logs and
# checkpoints: the fields whose Policy says per_run); every other setting reaches the one forward over the backbone,
# so the runs of a group must agree on it
PER_RUN = frozenset(name for name, policy in policies().items() if policy.per_run)
SHARED = tuple(name for name, policy in policies().items() if not policy.per_run)


def run_name(cfg: RunConfig) -> str:
    return Path(cfg.output_dir).name


def check_group(cfgs: list[RunConfig]) -> None:
    """Refuse, before any weight loads, runs that cannot share one pass, naming what differs."""
    why = refusal(cfgs)
    if why:
        raise LrptError(f"--fuse: {why}; or drop --fuse (`lrpt sweep --fuse auto` trains such a group's runs one "
                        "after another)")


def refusal(cfgs: list[RunConfig]) -> str | None:
    """Why these runs cannot share one pass, naming what differs (None: they can). Reads configs only."""
    first = cfgs[0]
    for name in SHARED:
        other = next((c for c in cfgs if getattr(c, name) != getattr(first, name)), None)
        if other is not None:
            return (f"{run_name(first)} has --{name} {getattr(first, name)} and {run_name(other)} "
                    f"{getattr(other, name)}; fused runs share one backbone and one forward, so they must agree on "
                    f"it: give every run the same --{name}")
    dropout = active_dropout(resolve_config(first.model))
    if dropout:
        return (f"{first.model} trains with dropout ({dropout}): a fused forward draws one set of dropout masks for "
                "every run's rows, so no fused run could equal its run alone. Use a copy of the backbone saved with "
                "that dropout set to 0 (for the separate runs too)")
    return None


def active_dropout(config) -> str:
    """The dropout the backbone applies while it trains ('' if none), found by asking the model, built from its
    config on the meta device (no weight is read or allocated) and put in training mode as the loop does: dropout
    layers with p > 0, and the probabilities attention layers keep to apply themselves (`self.attention_dropout`),
    whatever the config calls them. The message names the config's dropout fields, for the fix."""
    from transformers import AutoModelForCausalLM, AutoModelForSeq2SeqLM

    auto = AutoModelForSeq2SeqLM if config.is_encoder_decoder else AutoModelForCausalLM
    with torch.device("meta"):
        model = auto.from_config(config)
    model.train()
    active = [name for name, module in model.named_modules() if module.training and (
        isinstance(module, nn.modules.dropout._DropoutNd) and module.p > 0
        or any(isinstance(v, float) and v > 0 and "drop" in k for k, v in vars(module).items()))]
    if not active:
        return ""
    fields = [f"{k}={v}" for k, v in sorted(config.to_dict().items()) if "drop" in k and isinstance(v, float) and v]
    return (", ".join(fields) or "see its config") + f"; {len(active)} modules, e.g. {active[0]}"


class PromptOnly(nn.Module):
    """What a fused run's engine wraps: its prompt alone, named as PromptedModel names it (`prompt.*`), so
    that its checkpoints are the ones the run alone writes. The forward returns a copy of P and the method's
    token offsets (None for most): under ZeRO-3 the parameters are released when it ends, and both are used
    after it."""

    def __init__(self, prompt: nn.Module):
        super().__init__()
        self.prompt = prompt

    def forward(self) -> tuple[torch.Tensor, torch.Tensor | None]:
        offsets = self.prompt.token_offsets()
        return self.prompt().clone(), None if offsets is None else offsets.clone()


def backbone_engine(model: nn.Module, ds_config: DeepSpeedConfig):
    """The frozen backbone under a DeepSpeed engine without optimizer: cast and placed as the run alone's
    engine would, and under ZeRO-3 its layers gathered by DeepSpeed's parameter offload. Below ZeRO-3 it
    holds no shard, so ZeRO-0 (ZeRO-1/2 partition optimizer state, and it has none)."""
    import deepspeed

    config = copy.deepcopy(ds_config.json)
    if ds_config.stage < 3:
        config["zero_optimization"] = {"stage": 0}
    config.pop("gradient_clipping", None)
    engine, *_ = deepspeed.initialize(model=model, config=config)
    return engine


# one run's part of a fused step: its prompt P, its token offsets (None for most methods) and its micro-batch
Part = tuple[torch.Tensor, torch.Tensor | None, dict]


def fused_rows(parts: list[Part], embed: nn.Module, is_encoder_decoder: bool):
    """Embeddings, mask and labels of every run's rows behind its prompt, each row as its run alone lays it out,
    padded after its end to the longest row (labels -100); run k's rows follow run k - 1's."""
    laid = [lay_out(prompt, token_embeddings(embed, batch["input_ids"], batch["attention_mask"], offsets),
                    batch["attention_mask"], batch["labels"], is_encoder_decoder)
            for prompt, offsets, batch in parts]
    width = max(e.shape[1] for e, _, _ in laid)
    target = max(lab.shape[1] for _, _, lab in laid) if is_encoder_decoder else width
    return (pad_rows([e for e, _, _ in laid], width), pad_rows([m for _, m, _ in laid], width),
            pad_rows([lab for _, _, lab in laid], target, value=-100))


def fused_losses(backbone: nn.Module, is_encoder_decoder: bool, parts: list[Part]):
    """Each run's loss, the backbone's own (token-mean cross-entropy over its targets), from one forward over
    every run's rows behind its run's prompt; and the padded width each run's rows took (for their FLOPs)."""
    embeds, mask, labels = fused_rows(parts, backbone.get_input_embeddings(), is_encoder_decoder)
    logits = backbone_logits(backbone, embeds, mask, labels, is_encoder_decoder)
    losses, start = [], 0
    for _, _, batch in parts:
        end = start + len(batch["input_ids"])
        losses.append(own_loss(backbone, logits[start:end], labels[start:end], is_encoder_decoder))
        start = end
    return losses, embeds.shape[1], labels.shape[1]


def backbone_logits(backbone: nn.Module, embeds: torch.Tensor, mask: torch.Tensor, labels: torch.Tensor,
                    is_encoder_decoder: bool) -> torch.Tensor:
    """The backbone's logits over laid-out rows, no loss computed (T5 derives its decoder input from the labels,
    as with labels=)."""
    if is_encoder_decoder:
        decoder_input_ids = backbone.prepare_decoder_input_ids_from_labels(labels=labels)
        return backbone(inputs_embeds=embeds, attention_mask=mask, use_cache=False,
                        decoder_input_ids=decoder_input_ids).logits
    return backbone(inputs_embeds=embeds, attention_mask=mask, use_cache=False).logits


def own_loss(backbone: nn.Module, logits: torch.Tensor, labels: torch.Tensor, is_encoder_decoder: bool):
    """The loss the backbone computes from `labels=` (T5: cross-entropy on its logits as they are; causal
    LMs: transformers' loss_function, which shifts and upcasts)."""
    if is_encoder_decoder:
        return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), labels.reshape(-1), ignore_index=-100)
    return backbone.loss_function(logits=logits, labels=labels, vocab_size=backbone.config.vocab_size)


def packed_losses(backbone: nn.Module, parts: list[Part]) -> list[torch.Tensor]:
    """Each run's loss on the shared prefix: one packed forward, a segment per run (its prompt once, its rows
    behind it at their own width), each loss the one its run computes alone."""
    embed = backbone.get_input_embeddings()
    segments = []
    for prompt, offsets, batch in parts:
        tokens = token_embeddings(embed, batch["input_ids"], batch["attention_mask"], offsets)
        segments.append(shared_prefix.Segment(prompt.to(tokens.dtype), tokens, batch["attention_mask"],
                                              batch["labels"]))
    return [read.loss() for read in shared_prefix.packed_logits(backbone, segments)]


def fused_backward(runs: list, batches: list[dict]) -> tuple[list[torch.Tensor], int | None, int | None]:
    """One micro-batch of each run: its engine's forward (under ZeRO-3 it gathers the prompt), one forward and
    backward of the backbone over every run's rows, and each engine's backward of <P, dL/dP> (and of its token
    offsets likewise), whose gradient is the run's own. Returns each run's loss and, on the standard path, the
    padded widths (fused_losses; None on the shared prefix, where each run's rows keep their own)."""
    outputs = [run.engine() for run in runs]  # (P, token offsets or None) each
    leaves = [tuple(None if t is None else t.detach().requires_grad_() for t in out) for out in outputs]
    backbone, parts = runs[0].backbone, [(*leaf, batch) for leaf, batch in zip(leaves, batches)]
    if runs[0].model.shared_prefix:
        losses, width, target = packed_losses(backbone.model, parts), None, None
    else:
        losses, width, target = fused_losses(backbone.model, backbone.is_encoder_decoder, parts)
    torch.autograd.backward(sum(losses))
    for run, out, leaf in zip(runs, outputs, leaves):
        run.engine.backward(sum((t * detached.grad).sum() for t, detached in zip(out, leaf) if t is not None))
    return losses, width, target


def padded_flops(loop, batch: dict, width: int, target: int, prompt_rows: int) -> float:
    """FLOPs computed for a run's rows in the fused forward (`loop`: its RunLoop): its rows at the group's padded
    width."""
    rows, backbone = batch["input_ids"].shape[0], loop.run.backbone
    shape = {"input_ids": batch["input_ids"].new_empty(rows, width - prompt_rows),
             "labels": batch["labels"].new_empty(rows, target)}
    return step_flops(backbone.model.config, loop.matmul, shape, prompt_rows)
