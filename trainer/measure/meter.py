"""Throughput and memory: what a step costs, measured, with how it was measured."""
from __future__ import annotations

import resource
import statistics
import sys
import time

import torch


class StepMeter:
    """Wall time and tokens per optimizer step; the first `warmup` steps are not counted."""

    def __init__(self, warmup: int = 2):
        self.warmup = warmup
        self.times: list[float] = []
        self.samples = self.input_tokens = self.prompt_tokens = 0
        self.flops = 0.0
        self._seen = 0
        self._start = 0.0

    def start(self) -> None:
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        self._start = time.perf_counter()

    def stop(self, samples: int, input_tokens: int, prompt_tokens: int, flops: float = 0.0) -> None:
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        elapsed = time.perf_counter() - self._start
        self._seen += 1
        if self._seen > self.warmup:
            self.times.append(elapsed)
            self.samples += samples
            self.input_tokens += input_tokens
            self.prompt_tokens += prompt_tokens
            self.flops += flops

    def summary(self) -> dict:
        """Per-rank figures; tokens/s counts prompt and input tokens, also shown apart."""
        total = sum(self.times)
        if not self.times:
            return {"steps_measured": 0, "warmup_steps": self.warmup}
        times = sorted(self.times)
        return {
            "steps_measured": len(times),
            "warmup_steps": self.warmup,
            "step_time_s": {"mean": total / len(times), "p50": statistics.median(times),
                            "p95": times[min(len(times) - 1, round(0.95 * (len(times) - 1)))]},
            "samples_per_s": self.samples / total,
            "tokens_per_s": (self.input_tokens + self.prompt_tokens) / total,
            "input_tokens_per_s": self.input_tokens / total,
            "prompt_tokens_per_s": self.prompt_tokens / total,
            "model_flops_per_s": self.flops / total,  # measure.flops: 4·N·T + attention
        }


def peak_memory() -> dict:
    """This process's peak: CUDA's max_memory_allocated on a GPU, else the peak RSS."""
    if torch.cuda.is_available():
        return {"peak_bytes": torch.cuda.max_memory_allocated(), "measured_by": "torch.cuda.max_memory_allocated"}
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    scale = 1 if sys.platform == "darwin" else 1024  # Linux reports KiB
    return {"peak_bytes": rss * scale, "measured_by": "peak RSS of the process (getrusage ru_maxrss; CPU run)"}


class AllocationPeak:
    """Peak of the live bytes PyTorch's CPU allocator handed out while the context is open (blocks allocated
    before it do not count), before `mark()` (the load) and after it (training) - from the profiler's
    allocation events."""

    def __enter__(self):
        from torch.profiler import ProfilerActivity, profile

        self._mark_ns: int | None = None
        self._prof = profile(activities=[ProfilerActivity.CPU], profile_memory=True)
        self._prof.__enter__()
        return self

    def mark(self) -> None:
        self._mark_ns = time.time_ns()

    def __exit__(self, *exc) -> None:
        self._prof.__exit__(*exc)
        events = []
        stack = list(self._prof.profiler.kineto_results.experimental_event_tree())
        allocation = torch._C._profiler._EventType.Allocation
        while stack:
            event = stack.pop()
            if event.tag == allocation:
                events.append((event.start_time_ns, event.extra_fields.alloc_size, event.extra_fields.ptr))
            stack.extend(event.children)
        events.sort()
        live = self.peak = self.before_mark = self.after_mark = 0
        blocks: dict[int, int] = {}  # address -> bytes of the blocks allocated in the window and not freed
        for t, size, ptr in events:  # event times are epoch nanoseconds, as time.time_ns()
            # the profiler records frees of the threads it profiles only: a tensor whose last reference
            # went in another thread (gloo's, after a collective) leaves no free event. The allocator
            # handing out a block's address again proves that block was freed.
            if size > 0:
                live += size - blocks.pop(ptr, 0)
                blocks[ptr] = size
            elif blocks.pop(ptr, None) is not None:  # frees of blocks from before the window do not count
                live += size
            self.peak = max(self.peak, live)
            if self._mark_ns is None or t <= self._mark_ns:
                self.before_mark = max(self.before_mark, live)
            else:
                self.after_mark = max(self.after_mark, live)


class LoadPeak:
    """This rank's peak while the backbone loads, measured by the allocator (not RSS): on a GPU
    `torch.cuda.max_memory_allocated` (reset at `start`); on CPU the live bytes allocated since `start`,
    from torch.profiler's allocation events. `start()`/`stop()` bracket the load."""

    _open: "LoadPeak | None" = None  # one left open by an exception in between is closed by the next start

    def start(self) -> "LoadPeak":
        if LoadPeak._open is not None:
            LoadPeak._open.stop()
        self._cpu = None
        if torch.cuda.is_available():
            torch.cuda.reset_peak_memory_stats()
        elif not torch.autograd.profiler._is_profiler_enabled:  # a profiler of the caller's would clash
            self._cpu = AllocationPeak().__enter__()
        LoadPeak._open = self
        self._start = time.perf_counter()
        return self

    def stop(self) -> dict:
        """{"peak_bytes", "measured_by", "seconds"}; peak_bytes is None where another profiler was running."""
        LoadPeak._open = None
        seconds = time.perf_counter() - self._start  # the load's wall time, before the profiler's own work
        if torch.cuda.is_available():
            return {"peak_bytes": torch.cuda.max_memory_allocated(), "measured_by": "torch.cuda.max_memory_allocated",
                    "seconds": seconds}
        if self._cpu is None:
            return {"peak_bytes": None, "measured_by": "not measured: another torch.profiler session was running",
                    "seconds": seconds}
        self._cpu.__exit__(None, None, None)
        self._cpu, peak = None, self._cpu.peak
        return {"peak_bytes": peak, "seconds": seconds,
                "measured_by": "torch.profiler allocation events (CPU allocator): peak of the live bytes allocated "
                               "since the load began"}


def optimizer_state_tensors(optimizer: torch.optim.Optimizer) -> list[torch.Tensor]:
    """Every tensor the optimizer keeps: its moments, and DeepSpeed's fp32 master copies if any."""
    base = getattr(optimizer, "optimizer", optimizer)  # DeepSpeed's ZeRO/bf16 wrappers hold the torch one
    tensors = [v for state in base.state.values() for v in state.values() if isinstance(v, torch.Tensor)]
    if base is not optimizer:  # master weights owned by the wrapper
        tensors += [p for group in base.param_groups for p in group["params"]]
    return tensors


def parameter_bytes(module: torch.nn.Module, trainable: bool = False) -> dict:
    """Bytes of the (frozen by default) parameters this rank holds, and of the whole set.
    Under ZeRO-3 a rank holds its partition (`ds_tensor`); otherwise the full tensor."""
    held = total = 0
    for p in module.parameters():
        if p.requires_grad != trainable:
            continue
        size = p.element_size()
        held += (p.ds_tensor.numel() if hasattr(p, "ds_tensor") else p.numel()) * size
        total += getattr(p, "ds_numel", p.numel()) * size
    return {"held": held, "total": total}
