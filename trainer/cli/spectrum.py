"""`lrpt rank RUN_DIR [...]`: the singular-value spectrum of trained prompts, and a plot.

The low-rank methods rest on the claim that soft prompts have low intrinsic rank; this measures
it on what was actually trained. Effective rank is Roy & Vetterli's exp(entropy of σ/Σσ);
numerical rank counts σ above σ_max·max(c, e)·ε(float32), NumPy's matrix_rank rule.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from ..rundir.report import Report
from ..train.reopen import dense_prompt, run_config


def spectrum(prompt: torch.Tensor) -> dict:
    s = torch.linalg.svdvals(prompt.double())
    energy = (s ** 2).cumsum(0) / (s ** 2).sum()
    p = s / s.sum()
    tol = s.max() * max(prompt.shape) * torch.finfo(torch.float32).eps
    return {
        "shape": list(prompt.shape),
        "singular_values": s.tolist(),
        "energy": energy.tolist(),  # energy[r - 1]: share of ||P||_F^2 captured by the best rank-r approximation
        "numerical_rank": int((s > tol).sum()),
        "effective_rank": float(torch.exp(-(p * p.clamp_min(1e-300).log()).sum())),
        "rank_for_90": int((energy < 0.90).sum()) + 1,
        "rank_for_99": int((energy < 0.99).sum()) + 1,
    }


def plot(results: dict[str, dict], probes: dict[str, list[dict]], path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = 3 if probes else 2
    fig, axes = plt.subplots(1, panels, figsize=(5 * panels, 4))
    for name, r in results.items():
        s = torch.tensor(r["singular_values"])
        ranks = range(1, len(s) + 1)
        axes[0].semilogy(ranks, (s / s[0]).tolist(), label=name)
        axes[1].plot(ranks, r["energy"], label=name)
    axes[0].set(title="singular values (σ/σ₁)", xlabel="index")
    axes[1].set(title="energy captured at rank r", xlabel="r", ylim=(0, 1.02))
    for name, history in probes.items():
        axes[2].step([h["step"] for h in history], [h["probe_positive_rank"] for h in history], where="post",
                     label=name)
    if probes:
        from matplotlib.ticker import MaxNLocator
        axes[2].set(title="DPT probe: positive entries of Σ", xlabel="step")
        axes[2].yaxis.set_major_locator(MaxNLocator(integer=True))
    for ax in axes:
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="lrpt rank", description=__doc__.split("\n")[0])
    parser.add_argument("run_dirs", nargs="+")
    parser.add_argument("--output", default="rank.png", help="PNG path (a .json with the numbers is written beside it)")
    args = parser.parse_args(argv)
    results, probes = {}, {}
    for run_dir in args.run_dirs:
        cfg = run_config(run_dir)
        name = f"{Path(run_dir).name} ({cfg.method})"
        results[name] = spectrum(dense_prompt(run_dir))
        finished = (Path(run_dir) / "report.json").is_file()
        history = Report.read(run_dir).train.diagnostics if finished else []
        if any("probe_positive_rank" in h for h in history):
            probes[name] = history
    out = Path(args.output)
    plot(results, probes, out)
    out.with_suffix(".json").write_text(json.dumps({"runs": results, "probes": probes}, indent=1))
    width = max(len(n) for n in results)
    print(f"{'run':<{width}}  shape     numerical  effective  r(90%)  r(99%)")
    for name, r in results.items():
        print(f"{name:<{width}}  {r['shape'][0]}x{r['shape'][1]:<5} {r['numerical_rank']:>9}  "
              f"{r['effective_rank']:>9.2f}  {r['rank_for_90']:>6}  {r['rank_for_99']:>6}")
    print(f"plot: {out}  numbers: {out.with_suffix('.json')}")
    return 0
