"""`lrpt export RUN_DIR --to peft OUT_DIR`: any method's prompt as a peft prompt-tuning adapter.

The method's factors collapse to the dense P (c' x e, after LAMP's pooling); peft serves it with
`PeftModel.from_pretrained(backbone, OUT_DIR)`. peft's seq2seq prompt tuning defaults to two
prompt copies (encoder and decoder); lrpt prompts only the encoder, so the adapter says
`num_transformer_submodules=1`. A method that also offsets the input tokens' embeddings (DePT) has
no peft form: peft's prompt tuning only prepends a prompt, so its export is refused, naming why.
"""
from __future__ import annotations

import argparse
from pathlib import Path

from safetensors.torch import save_file

from ...methods import REGISTRY
from ..backbone.source import resolve_config
from ..errors import LrptError
from ..train.reopen import dense_prompt, run_config

FORMATS = ("peft",)


def export_peft(run_dir: str | Path, out_dir: str | Path) -> Path:
    try:
        from peft import PromptTuningConfig
    except ImportError:
        raise LrptError("export to peft needs peft: pip install 'lrpt[dev]' (or pip install peft)") from None
    cfg = run_config(run_dir)
    if REGISTRY[cfg.method].offsets_tokens:
        raise LrptError(f"--to peft: {run_dir} is a {cfg.method} run, whose method also adds a trained update to the "
                        "input tokens' embeddings; peft's prompt tuning only prepends a prompt, so no peft adapter "
                        "serves it. Serve it with `lrpt predict`")
    prompt = dense_prompt(run_dir).contiguous()
    backbone = resolve_config(cfg.model)
    if prompt.shape[1] != backbone.hidden_size:
        raise LrptError(f"prompt width {prompt.shape[1]} does not match {cfg.model}'s {backbone.hidden_size}")
    layers = getattr(backbone, "num_hidden_layers", None) or backbone.num_layers
    config = PromptTuningConfig(task_type="SEQ_2_SEQ_LM" if backbone.is_encoder_decoder else "CAUSAL_LM",
                                num_virtual_tokens=prompt.shape[0], token_dim=prompt.shape[1],
                                num_transformer_submodules=1, num_attention_heads=backbone.num_attention_heads,
                                num_layers=layers, base_model_name_or_path=cfg.model, inference_mode=True)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    config.save_pretrained(str(out))
    save_file({"prompt_embeddings": prompt}, str(out / "adapter_model.safetensors"),
              metadata={"format": "pt", "lrpt_method": cfg.method})
    return out


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="lrpt export", description=__doc__.split("\n")[0])
    parser.add_argument("run_dir")
    parser.add_argument("--to", choices=FORMATS, default="peft")
    parser.add_argument("out_dir")
    args = parser.parse_args(argv)
    out = export_peft(args.run_dir, args.out_dir)
    print(f"wrote {out}/adapter_config.json and adapter_model.safetensors; load with "
          f"PeftModel.from_pretrained(backbone, {str(out)!r})")
    return 0
