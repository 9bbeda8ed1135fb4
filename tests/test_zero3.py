"""ZeRO-3 on 2 CPU ranks through the real deepspeed launcher: sharded frozen weights, the same
numbers as one process, the same curves at every stage, and crash-safe resume."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

from launch import ROOT, clean_env, deepspeed_command, launch
from lrpt.trainer.backbone.load import load_backbone
from lrpt.trainer.config.run_config import RunConfig
from lrpt.trainer.train.loop import build_prompt
from lrpt.trainer.rundir.monitor import read_csv
from lrpt.trainer.model.prompted import PromptedModel

FLAGS = ["--method", "dpt", "--prompt_length", "8", "--per_device_train_batch_size", "2", "--seed", "5",
         "--decoding", "generate", "--progress", "false"]


def train_flags(model_dir, data_dir, out, stage: str, *more: str) -> list[str]:
    return [*FLAGS, "--model", model_dir, "--task", "rte", "--data_dir", str(data_dir), "--output_dir", str(out),
            "--deepspeed", str(ROOT / "ds_configs" / f"{stage}.json"), "--max_steps", "8", "--logging_steps", "1",
            *more]


@pytest.mark.parametrize("arch", ["t5", "llama"])
def test_zero3_shards_frozen_weights_and_matches_one_process(arch, backbone_dirs, memorise_dir, tmp_path):
    model_dir = backbone_dirs[arch]
    flags = [*FLAGS, "--model", model_dir, "--task", "rte", "--data_dir", str(memorise_dir), "--output_dir",
             str(tmp_path / "run"),
             "--deepspeed", str(ROOT / "ds_configs" / "zero3.json"), "--warmup_ratio", "0"]
    launch("tests/zero_probe.py", [str(tmp_path / "probe"), "--", *flags])
    ranks = [json.loads((tmp_path / "probe" / f"rank{r}.json").read_text()) for r in (0, 1)]

    # each rank holds half of the frozen parameters (measured from DeepSpeed's partitions)
    total = ranks[0]["frozen_total"]
    assert sum(r["frozen_held"] for r in ranks) == pytest.approx(total, rel=0.01)
    for r in ranks:
        assert r["stage"] == 3 and r["sharded_tensors"] > 0
        assert 0.45 <= r["frozen_held"] / total <= 0.55, r["frozen_held"] / total
        # zeroing rank 1's shards changes every rank's loss: the forward computes from the shards
        assert r["gathered_after_release"] == 0
        assert abs(r["loss_after_rank1_zeroed"] - r["loss_before_corruption"]) > 1e-3
        # and the loss goes down
        assert r["step_losses"][-1] < r["step_losses"][0]

    # reference: one process, no DeepSpeed, the same prompt init and the same two micro-batches
    cfg = RunConfig(model=model_dir, method="dpt", prompt_length=8, seed=5)
    backbone = load_backbone(model_dir)
    torch.manual_seed(cfg.seed)
    model = PromptedModel(backbone.model, build_prompt(cfg, backbone), backbone.is_encoder_decoder).train()
    grads = []
    for r in ranks:  # ZeRO-3 generation (gathering every layer per token) = one process's, token for token
        source = torch.tensor(r["generation"]["source"])
        with torch.no_grad():
            tokens = model.eval().generate(source, torch.ones_like(source), max_new_tokens=6, min_new_tokens=6)
        assert tokens.tolist() == r["generation"]["tokens"] and tokens.shape[1] >= 6
    model.train()
    for r in ranks:
        batch = {k: torch.tensor(v) for k, v in r["batch"].items()}
        loss = model(**batch).loss
        torch.testing.assert_close(torch.tensor(r["loss"]), loss.detach(), rtol=1e-5, atol=1e-5)
        grads.append(torch.autograd.grad(loss, list(model.prompt.parameters())))
    for i, (name, _) in enumerate(model.prompt.named_parameters()):
        reference = (grads[0][i] + grads[1][i]) / 2  # data parallel averages the ranks' gradients
        for r in ranks:
            torch.testing.assert_close(torch.tensor(r["grads"][name]), reference, rtol=1e-4, atol=1e-6)


@pytest.fixture(scope="module")
def zero3_reference(tiny_t5_dir, memorise_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("zero3")
    launch("trainer/run.py", train_flags(tiny_t5_dir, memorise_dir, out, "zero3", "--save_steps", "3"))
    return json.loads((out / "report.json").read_text()), out


@pytest.mark.parametrize("stage, launcher", [("zero0", "torchrun"), ("zero2", "deepspeed")])
def test_zero_stages_give_the_same_loss_curve(stage, launcher, zero3_reference, tiny_t5_dir, memorise_dir, tmp_path):
    launch("trainer/run.py", train_flags(tiny_t5_dir, memorise_dir, tmp_path, stage, "--save_steps", "3"),
           launcher=launcher)
    report = json.loads((tmp_path / "report.json").read_text())
    reference, _ = zero3_reference
    assert report["world_size"] == reference["world_size"] == 2
    assert report["zero_stage"] == int(stage[-1]) and reference["zero_stage"] == 3
    torch.testing.assert_close(report["train"]["loss_curve"], reference["train"]["loss_curve"], rtol=1e-5, atol=1e-5)
    assert reference["train"]["loss_last"] < reference["train"]["loss_first"]
    # the logged curves: lrpt's own gradient norm at ZeRO-0, DeepSpeed's partitioned optimizer's at 2 and 3
    _, reference_dir = zero3_reference
    for event in ("Train/Samples/loss", "Train/Samples/grad_norm"):
        got, want = read_csv(tmp_path, event), read_csv(reference_dir, event)
        assert [x for x, _ in got] == [x for x, _ in want] == [4 * k for k in range(1, 9)]
        torch.testing.assert_close([v for _, v in got], [v for _, v in want], rtol=1e-4, atol=1e-6)
    assert [v for _, v in read_csv(tmp_path, "Train/Samples/loss")] == report["train"]["loss_curve"]
    # greedy generation under ZeRO-3 (every rank gathers every layer per token) answers as ZeRO-0/2 do
    assert report["metrics"] == reference["metrics"] and report["config"]["decoding"] == "generate"
    def predictions(run) -> list[str]:
        return [json.loads(line)["prediction"] for line in (run / "eval_predictions.jsonl").read_text().splitlines()]

    assert predictions(tmp_path) == predictions(reference_dir)
    # the optimizer holds the prompt only, on every rank: at most fp32 master + Adam m, v per value
    for opt_bytes in report["optimizer_state_bytes_per_rank"] + reference["optimizer_state_bytes_per_rank"]:
        assert 0 < opt_bytes <= 3 * 4 * report["trainable_params"] + 64
    assert reference["trainable_params"] == report["trainable_params"] == 8 * 8 + 8 * 64


def test_zero3_checkpoint_is_prompt_only(zero3_reference):
    """What the files contain: each rank's model file has the prompt's parameters as empty placeholders (ZeRO-3
    partitions them), its optimizer file the fp32 partition of the prompt and Adam's moments of it; the two
    ranks' partitions together are the prompt of that checkpoint (prompt.safetensors), and nothing else."""
    from safetensors.torch import load_file
    from test_checkpoint import tensors_in

    from lrpt.trainer.rundir.weights_only import load

    report, out = zero3_reference
    ckpt = out / "checkpoints" / (out / "checkpoints" / "latest").read_text()
    saved = load_file(ckpt / "prompt.safetensors")  # DPT: a (8 x 8), b (8 x 64)
    total = sum(t.numel() for t in saved.values())
    assert total == report["trainable_params"]
    partitions = []
    for rank in (0, 1):
        model = tensors_in(load(ckpt / f"zero_pp_rank_{rank}_mp_rank_00_model_states.pt", "cpu"))
        assert {k: t.numel() for k, t in model.items()} == {"/module/prompt.a": 0, "/module/prompt.b": 0}
        optim = tensors_in(load(ckpt / f"zero_pp_rank_{rank}_mp_rank_00_optim_states.pt", "cpu"))
        state = "/optimizer_state_dict/optimizer_state_dict/state/0"
        flat = optim["/optimizer_state_dict/fp32_flat_groups/0"]
        assert {k: tuple(t.shape) for k, t in optim.items()} == {
            f"{state}/step": (), f"{state}/exp_avg": tuple(flat.shape), f"{state}/exp_avg_sq": tuple(flat.shape),
            "/optimizer_state_dict/fp32_flat_groups/0": tuple(flat.shape)}
        assert total / 2 <= flat.numel() < total / 2 + 64  # half each (DeepSpeed pads a partition)
        partitions.append(flat)
    # ZeRO-3 splits each parameter across the ranks: a rank's flat group is its slice of a, then of b
    offset = 0
    for name in ("a", "b"):
        part = -(-saved[name].numel() // 2)
        joined = torch.cat([flat[offset:offset + part] for flat in partitions])[:saved[name].numel()]
        torch.testing.assert_close(joined, saved[name].flatten(), rtol=0, atol=0)
        offset += part


def test_zero3_killed_run_resumes_to_the_same_curve(zero3_reference, tiny_t5_dir, memorise_dir, tmp_path):
    flags = train_flags(tiny_t5_dir, memorise_dir, tmp_path, "zero3", "--save_steps", "3")
    proc = subprocess.Popen(deepspeed_command("trainer/run.py", flags), cwd=ROOT, env=clean_env(),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    latest = tmp_path / "checkpoints" / "latest"
    deadline = time.time() + 300
    while not latest.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)  # the whole job: launcher and both ranks, mid-run
    proc.wait()
    assert latest.exists() and not (tmp_path / "report.json").exists(), "the run was not interrupted"

    launch("trainer/run.py", flags)
    resumed = json.loads((tmp_path / "report.json").read_text())
    reference, _ = zero3_reference
    torch.testing.assert_close(resumed["train"]["loss_curve"], reference["train"]["loss_curve"], rtol=1e-5, atol=1e-5)
    assert resumed["metrics"] == reference["metrics"]
    assert [v for _, v in read_csv(tmp_path, "Train/Samples/loss")] == resumed["train"]["loss_curve"]  # each step once


def test_zero3_without_a_launcher_is_refused(tmp_path):
    lrpt = os.path.join(os.path.dirname(sys.executable), "lrpt")
    done = subprocess.run([lrpt, "train", "--model", "tiny-t5", "--deepspeed", str(ROOT / "ds_configs" / "zero3.json"),
                           "--output_dir", str(tmp_path)], env=clean_env(), capture_output=True, text=True)
    assert done.returncode == 2 and "a ZeRO-3 config needs a launcher" in done.stderr, done.stderr[-2000:]
    assert "Traceback" not in done.stderr


def test_frozen_aware_linear_saves_no_input_and_keeps_gradients():
    """ZeRO-3's linear as lrpt installs it: a frozen weight keeps no input (DeepSpeed's keeps it,
    torch's keeps a view of the gathered weight); input and weight gradients unchanged."""
    import torch.nn.functional as F
    from deepspeed.runtime.zero.linear import zero3_linear_wrap

    from lrpt.trainer.backbone import zero3_linear

    weight, bias = torch.randn(8, 16), torch.randn(8)
    x = torch.randn(3, 5, 16, requires_grad=True)

    def saved_shapes(fn):
        saved = []
        with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(tuple(t.shape)) or t, lambda t: t):
            out = fn(x, weight, bias)
        return saved, torch.autograd.grad(out.square().sum(), x)[0]

    ds_saved, ds_grad = saved_shapes(zero3_linear_wrap)
    saved, grad = saved_shapes(zero3_linear.frozen_aware_linear)
    assert (3, 5, 16) in ds_saved and saved == [(8, 16), (8,)]
    torch.testing.assert_close(grad, ds_grad)
    weight.requires_grad_(True)  # a trainable weight still gets its gradient (the input is saved then)
    out = zero3_linear.frozen_aware_linear(x, weight, bias)
    torch.testing.assert_close(torch.autograd.grad(out.square().sum(), weight)[0],
                               torch.autograd.grad(F.linear(x, weight, bias).square().sum(), weight)[0])
    original = F.linear
    try:
        assert not zero3_linear.install()           # DeepSpeed's wrapper is not in place: nothing changes
        assert F.linear is original
        F.linear = zero3_linear_wrap
        assert zero3_linear.install() and F.linear is zero3_linear.frozen_aware_linear
    finally:
        F.linear = original
