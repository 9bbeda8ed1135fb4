"""Quantized backbones loaded sharded under ZeRO-3 (trainer/backbone/quant_load.py) against the whole-load path.

One launch of 2 CPU ranks runs, for tiny LLaMA and T5 saved as sharded safetensors (several files and
an index) in 8-bit, 4-bit nf4 and 4-bit fp4 + double quant, lrpt's own `setup` twice per cell: with
`--quantized_load whole` (every rank loads the whole quantized model, `deepspeed.initialize` shards it:
the reference) and sharded (the default). A second launch, of 1 rank, loads each cell sharded: the
one-rank load peak, which holds the whole quantized backbone. Load peaks are the allocator's
(torch.profiler's allocation events on CPU), not RSS.
"""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, AutoModelForSeq2SeqLM, ByT5Tokenizer

from launch import ROOT, launch
from lrpt.trainer.backbone import quant_load, quant_slices
from lrpt.trainer.config.ds_config import DeepSpeedConfig
from lrpt.trainer.config.run_config import RunConfig
from lrpt.trainer.errors import LrptError
from lrpt.trainer.train.loop import check_run, setup
from lrpt.trainer.measure.plan import PlanSpec, plan
from lrpt.trainer.backbone.presets import build_preset, preset_config

QUANTS = {"8bit": ["--load_in_8bit"], "nf4": ["--load_in_4bit", "--bnb_4bit_quant_type", "nf4"],
          "fp4-dq": ["--load_in_4bit", "--bnb_4bit_quant_type", "fp4", "--bnb_4bit_use_double_quant"]}
CELLS = [(arch, q) for arch in ("llama", "t5") for q in QUANTS]
# the tests' weights hold 16-32 K values, real ones millions: reads and slices scaled down with them make
# every weight load in several reads and slices, as real weights do at the defaults (trainer/backbone/quant_slices.py)
SLICES = {"CHUNK_ELEMENTS": 4096, "READ_ELEMENTS": 8192}
SHARDED_LIMIT = 0.65  # a rank's load peak at 2 ranks / the one-rank load peak
PLAN_TOL = 0.15       # lrpt plan's load peak against the measured one
PROBE_FLAGS = ["--deepspeed", str(ROOT / "ds_configs" / "zero3.json"), "--method", "dpt", "--prompt_length", "8",
               "--per_device_train_batch_size", "2", "--seed", "5", "--warmup_ratio", "0", "--max_steps", "3",
               "--progress", "false", "--shared_prefix", "false"]


@pytest.fixture(scope="module")
def sharded_checkpoints(tmp_path_factory) -> dict[str, str]:
    """Tiny backbones deep enough that their quantized weights outweigh one tensor in flight, written as
    sharded safetensors checkpoints (save_pretrained with a small max_shard_size). LLaMA's MLP is 255 wide:
    its gate and up weights' rows do not split evenly, so a rank's ZeRO-3 partition starts inside a row."""
    dirs = {}
    for arch, name, layers in (("llama", "tiny-llama", 28), ("t5", "tiny-t5", 4)):
        path = tmp_path_factory.mktemp(f"sharded-{arch}")
        config = preset_config(name, width=128, layers=layers)
        if arch == "llama":
            config.intermediate_size = 255
        torch.manual_seed(0)
        model = (AutoModelForCausalLM if arch == "llama" else AutoModelForSeq2SeqLM).from_config(config)
        tokenizer = ByT5Tokenizer()
        model.save_pretrained(path, max_shard_size="1MB")
        tokenizer.save_pretrained(path)
        assert (path / "model.safetensors.index.json").is_file() and len(list(path.glob("*.safetensors"))) >= 3
        dirs[arch] = str(path)
    return dirs


def session(arch: str, q: str, load: str) -> str:
    return f"{arch}-{q}-{load}"


@pytest.fixture(scope="module")
def probes(sharded_checkpoints, memorise_dir, tmp_path_factory) -> dict[int, Path]:
    """Both launches: 2 ranks (whole, sharded; a training step each), 1 rank (sharded load only)."""
    out = {n: tmp_path_factory.mktemp(f"quant-load-{n}-ranks") for n in (1, 2)}
    cells = {(arch, q, load): ["--model", sharded_checkpoints[arch], *QUANTS[q]]
             + (["--quantized_load", "whole"] if load == "whole" else [])
             for arch, q in CELLS for load in ("whole", "sharded")}
    flags = [*PROBE_FLAGS, "--task", "rte", "--data_dir", str(memorise_dir)]
    two = {session(*key): extra for key, extra in cells.items()}
    one = {session(arch, q, "sharded_load_only"): extra
           for (arch, q, load), extra in cells.items() if load == "sharded"}
    for ranks, sessions in ((2, two), (1, one)):
        slices = f"{SLICES['CHUNK_ELEMENTS']},{SLICES['READ_ELEMENTS']}"
        launch("tests/quant_load_probe.py", [str(out[ranks]), json.dumps(sessions), slices, "--", *flags], ranks=ranks)
    return out


def results(directory: Path, ranks: int) -> list[dict]:
    return [json.loads((directory / f"rank{r}.json").read_text()) for r in range(ranks)]


@pytest.mark.parametrize("arch, q", CELLS)
def test_sharded_load_is_bit_identical_to_the_whole_load(arch, q, probes):
    """Every rank's ZeRO shard of every parameter, every buffer, the replicated statistics (SCB; absmax,
    code, nested absmax/code/offset), the first loss and the prompt gradient equal the whole path's."""
    whole, sharded = (probes[2] / session(arch, q, load) for load in ("whole", "sharded"))
    for r, (ref, new) in enumerate(zip(results(whole, 2), results(sharded, 2))):
        assert new["stage"] == ref["stage"] == 3 and new["world_size"] == 2
        assert new["layers"] == ref["layers"] and ref["layers"]  # layer types and quant_state fields
        assert {v["type"] for v in new["layers"].values()} == {"ZeroLinear8bit" if q == "8bit" else "ZeroLinear4bit"}
        if arch == "t5":  # transformers' rules: `wo` (_keep_in_fp32_modules) and the tied head stay unquantized
            assert not any(name.endswith(("wo", "lm_head")) for name in new["layers"])
        ref_tensors, new_tensors = (load_file(d / f"tensors{r}.safetensors") for d in (whole, sharded))
        assert new_tensors.keys() == ref_tensors.keys()
        assert any(k.startswith("stats/") for k in new_tensors)
        assert arch != "llama" or "buffer/model.rotary_emb.inv_freq" in new_tensors  # computed, not read
        for key, expected in ref_tensors.items():
            assert torch.equal(new_tensors[key], expected), key
        assert new["loss"] == ref["loss"]
        assert new["grads"] == ref["grads"]
        assert "allocation events" in new["load_peak_measured_by"]


@pytest.mark.parametrize("arch, q", CELLS)
def test_sharded_load_peak_per_rank(arch, q, probes, sharded_checkpoints, monkeypatch):
    """Each rank's allocator-measured load peak is at most 0.65 of the one-rank peak (which holds the
    whole quantized backbone), where the whole path's is not; and `lrpt plan` predicts it."""
    one = results(probes[1] / session(arch, q, "sharded_load_only"), 1)[0]["load_peak_bytes"]
    sharded = [r["load_peak_bytes"] for r in results(probes[2] / session(arch, q, "sharded"), 2)]
    whole = [r["load_peak_bytes"] for r in results(probes[2] / session(arch, q, "whole"), 2)]
    assert all(peak <= SHARDED_LIMIT * one for peak in sharded), (sharded, one)
    assert all(peak > SHARDED_LIMIT * one for peak in whole), (whole, one)  # the bound tells the paths apart

    for name, elements in SLICES.items():  # the reads and slices the probe loaded in
        monkeypatch.setattr(quant_slices, name, elements)
    for ranks, measured in ((1, [one]), (2, sharded)):
        spec = PlanSpec(model=sharded_checkpoints[arch], zero=3, gpus=ranks, quant="8bit" if q == "8bit" else "4bit",
                        double_quant=q == "fp4-dq", precision="fp32", method="dpt", prompt_length=8, batch=2,
                        ds_config=str(ROOT / "ds_configs" / "zero3.json"))
        predicted = plan(spec).load_peak
        for peak in measured:
            assert predicted == pytest.approx(peak, rel=PLAN_TOL), (ranks, predicted, peak)


# ---------------------------------------------------------------- refusals, before any weight loads

@pytest.fixture(scope="module")
def bin_checkpoint(tmp_path_factory) -> str:
    """A tiny LLaMA as pytorch_model.bin (transformers 5 writes safetensors only: torch.save of its tensors)."""
    path = tmp_path_factory.mktemp("bin-checkpoint")
    model, tokenizer = build_preset("tiny-llama", width=64)
    model.config.save_pretrained(path)
    tokenizer.save_pretrained(path)
    torch.save({k: v.contiguous() for k, v in model.state_dict().items()}, path / "pytorch_model.bin")
    return str(path)


def zero(stage: str) -> str:
    return str(ROOT / "ds_configs" / f"{stage}.json")


def test_bin_checkpoint_refused_before_weights_load(bin_checkpoint, tmp_path, monkeypatch):
    cfg = RunConfig(model=bin_checkpoint, deepspeed=zero("zero3"), load_in_8bit=True, output_dir=str(tmp_path))
    with pytest.raises(LrptError, match=r"only pytorch_model\.bin .* cannot be read by slice.* --quantized_load whole"):
        check_run(cfg)

    def no_loading(*args, **kwargs):
        raise AssertionError("a weight was about to load")

    monkeypatch.setattr("lrpt.trainer.backbone.load.load_backbone", no_loading)
    monkeypatch.setattr("lrpt.trainer.train.loop.distributed.init_process_group", no_loading)
    with pytest.raises(LrptError, match="pytorch_model.bin"):
        setup(cfg)
    # the whole path reads .bin checkpoints as before, and below ZeRO-3 nothing loads sharded
    check_run(RunConfig(model=bin_checkpoint, deepspeed=zero("zero3"), load_in_4bit=True, quantized_load="whole"))
    check_run(RunConfig(model=bin_checkpoint, deepspeed=zero("zero2"), load_in_8bit=True))


@pytest.mark.parametrize("kw, stage, message", [
    (dict(load_in_8bit=True, quantized_load="sharded"), "zero2", "only ZeRO-3 does"),
    (dict(quantized_load="whole"), "zero3", "only applies to a quantized backbone"),
    (dict(load_in_4bit=True, quantized_load="streamed"), "zero3", "must be one of auto, sharded, whole"),
])
def test_quantized_load_flag_refusals(kw, stage, message, bin_checkpoint):
    with pytest.raises(LrptError, match=message):
        check_run(RunConfig(model=bin_checkpoint, deepspeed=zero(stage), **kw))


def test_hpz_loads_whole_under_auto_and_refuses_sharded(sharded_checkpoints, tmp_path):
    """ZeRO++ hpZ cuts node-wide secondary partitions from whole tensors: `auto` takes the whole load, `sharded`
    is refused."""
    plain = json.loads((ROOT / "ds_configs" / "zero3.json").read_text())
    hpz = {**plain, "zero_optimization": {**plain["zero_optimization"], "zero_hpz_partition_size": 2}}
    (tmp_path / "hpz.json").write_text(json.dumps(hpz))
    cfg = RunConfig(model=sharded_checkpoints["llama"], deepspeed=str(tmp_path / "hpz.json"), load_in_8bit=True)
    check_run(cfg)
    assert quant_load.sharded(cfg, DeepSpeedConfig(plain)) and not quant_load.sharded(cfg, DeepSpeedConfig(hpz))
    with pytest.raises(LrptError, match="hpZ"):
        check_run(RunConfig(model=cfg.model, deepspeed=cfg.deepspeed, load_in_8bit=True, quantized_load="sharded"))


def test_reader_rows_equal_safetensors_own_load(tmp_path):
    """Rows mapped from the file (TensorReader.rows/read) against safetensors' own `load_file`, in every dtype
    the reader maps (fp64, fp32, fp16, bf16: viewed from raw bytes), one it leaves to safetensors (int64), 1-D,
    2-D, 3-D and 0-d tensors, a header with metadata, over two files. Wrong header offsets, a wrong row size
    or a wrong dtype view would each read other bytes."""
    from safetensors.torch import save_file

    from lrpt.trainer.backbone.quant_load import TensorReader

    g = torch.Generator().manual_seed(3)
    files = {"a.safetensors": {"w32": torch.randn(7, 5, generator=g), "bias": torch.randn(5, generator=g),
                               "w16": torch.randn(6, 3, generator=g).half(), "steps": torch.arange(9)},
             "b.safetensors": {"wbf": torch.randn(9, 4, generator=g).bfloat16(), "scale": torch.tensor(2.5),
                               "cube": torch.randn(4, 3, 2, generator=g, dtype=torch.float64)}}
    for name, tensors in files.items():
        save_file(tensors, tmp_path / name, metadata={"format": "pt", "note": "x" * 37})
    reader = TensorReader([str(tmp_path / name) for name in files])
    assert reader.keys() == {k for tensors in files.values() for k in tensors}
    for name in files:
        for key, expected in load_file(tmp_path / name).items():
            assert reader.shape([key]) == expected.shape
            whole = reader.read(["missing.alias", key], expected.dtype, torch.device("cpu"))
            assert whole.dtype == expected.dtype and torch.equal(whole, expected), key
            if expected.dim():
                rows = reader.rows([key], 1, expected.shape[0] - 1)
                assert rows.dtype == expected.dtype and torch.equal(rows, expected[1:-1]), key


@pytest.mark.parametrize("rows, cols, per_element, align, expected", [
    (255, 128, 1, 1, [(0, 128), (127, 255)]),      # int8: 16320 values each; rank 1 starts mid row 127
    (255, 128, 2, 64, [(0, 128), (127, 255)]),     # packed bytes: 8160 each, 16320 values; blocks within rows
    (128, 255, 2, 64, [(0, 64), (64, 128)]),       # 64 rows of 255 values hold whole 64-value blocks
    (5, 3, 1, 1, [(0, 3), (2, 5)]),                # 15 values, 8 a rank (DeepSpeed pads to 16)
    (3, 4, 1, 1, [(0, 1), (0, 2), (1, 3), (2, 3)]),  # 12 values, 3 a rank, on 4 ranks: runs cross rows
])
def test_partition_rows_hold_deepspeeds_partition(rows, cols, per_element, align, expected):
    """Worked by hand: DeepSpeed gives rank r elements [r*s, (r+1)*s) of the flattened parameter, s = ceil(n/N)."""
    world = len(expected)
    assert [quant_slices.partition_rows(rows, cols, per_element, align, r, world) for r in range(world)] == expected
