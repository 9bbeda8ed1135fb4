"""report.json and the table printed at the end of a run."""
from __future__ import annotations

import json
from pathlib import Path


def _size(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)


def _value(v) -> str:
    return f"{v:.4f}" if isinstance(v, float) else str(v)


def write(report: dict, output_dir: str | Path) -> Path:
    path = Path(output_dir) / "report.json"
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(report, indent=1, default=str))
    tmp.replace(path)
    return path


def format_table(report: dict) -> str:
    """A readable summary of report.json (which holds everything, per rank)."""
    thr = report["throughput"]
    rows = [
        ("method", report["method"]),
        ("model", report["config"]["model"]),
        ("task", report["config"]["task"]),
        ("trainable params", f"{report['trainable_params']:,}"),
        ("kept after training", f"{report['kept_params']:,}"),
        ("prompt length (c -> c')", f"{report['prompt_length']} -> {report['prompt_output_length']}"),
        ("optimizer state (all ranks)", _size(report["optimizer_state_bytes"])),
        ("train loss first -> last", f"{report['train']['loss_first']:.4f} -> {report['train']['loss_last']:.4f}"),
        ("steps (epochs)", f"{report['train']['steps']} ({report['train']['epochs']:.2f})"),
    ]
    # a score next to the untrained prompt's (counts such as unparsable answers alone)
    untrained = {k: v for k, v in (report.get("metrics_untrained") or {}).items() if isinstance(v, float)}
    rows += [(f"eval {k}" + (" untrained -> trained" if k in untrained else ""),
              (f"{_value(untrained[k])} -> " if k in untrained else "") + _value(v))
             for k, v in report["metrics"].items()]
    if "step_time_s" in thr:
        rows += [("step time mean/p50/p95",
                  "/".join(f"{thr['step_time_s'][k]:.3f}" for k in ("mean", "p50", "p95")) + " s"),
                 ("samples/s (all ranks)", f"{thr['samples_per_s']:.1f}"),
                 ("tokens/s (all ranks)", f"{thr['tokens_per_s']:.0f} (prompt {thr['prompt_tokens_per_s']:.0f}, "
                                          f"input {thr['input_tokens_per_s']:.0f})"),
                 ("model FLOP/s (4·N·T + attn)",
                  f"{thr['model_flops_per_s']:.3g}" + (f", MFU {thr['mfu']:.1%}" if thr.get("mfu") else ""))]
    mem = report["memory"]
    rows += [(f"rank {r}: peak / backbone held", f"{_size(b)} / {_size(h)} of {_size(mem['backbone_bytes_total'])}")
             for r, (b, h) in enumerate(zip(mem["peak_bytes"], mem["backbone_bytes_held"]))]
    rows += [("memory measured by", mem["measured_by"]), ("run directory", report["output_dir"])]
    width = max(len(k) for k, _ in rows)
    return "\n".join(f"{k:<{width}}  {v}" for k, v in rows)
