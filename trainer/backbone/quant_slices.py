"""One weight quantized slice by slice, with the bytes bitsandbytes gives the whole tensor.

transformers quantizes a weight in one call (`Int8Params` / `Params4bit` -> bitsandbytes'
`int8_vectorwise_quant` / `quantize_4bit`), which needs the whole tensor read first and, on CPU,
bitsandbytes' torch kernels hold 15-20 bytes of temporaries per element (fp16 copy, fp32 products,
int32/int64 bucket indices): for a 70B LLaMA MLP weight that is ~4.7 GB on top of a rank's share.
Both quantizations are local, so a slice of rows is quantized alone with the same bitsandbytes
calls: 8-bit scales are per row; 4-bit blocks are 64 consecutive values of the flattened weight, so
slices that hold whole blocks quantize as they would inside the whole tensor. Double quantization
is over the whole tensor's block scales, done once they are all known, as `quantize_4bit` does it.
Rows are read from the checkpoint in slabs (`read(first_row, end_row)`: the slab's bytes mapped from the file),
copied into PyTorch's allocator in the load dtype (8-bit from fp32 or fp16: in fp16, which rounds alike), and
quantized slice by slice.
On N ranks each rank reads and quantizes only the rows that hold its ZeRO-3 partition of the quantized tensor
(`partition_rows`) and its 1/N of the statistics (`rank_rows`: equal runs of whole blocks, one row or block
more at most where the two differ); only the statistics, which every rank keeps whole, are all-gathered. The
quantized tensor comes back full size with only this rank's rows written: the loader partitions it without
ZeRO's broadcast of rank 0's copy (backbone.quant_load), so each rank keeps the bytes it quantized itself,
those of the whole tensor's.
"""
from __future__ import annotations

import math
from typing import Callable

import torch

# weights quantized per bitsandbytes call, at most: ~5 MB of CPU temporaries, while each call is still
# large enough that its fixed cost (dispatch, thread-pool start) stays small beside the work
CHUNK_ELEMENTS = 1 << 18
READ_ELEMENTS = 1 << 20  # weights read from the checkpoint at once, at most (4 MB in fp32)

Read = Callable[[int, int], torch.Tensor]  # rows [first, end) of the weight as stored in the checkpoint


def row_step(cols: int, align: int, elements: int) -> int:
    """Rows per slice: at most `elements` weights (at least one row), a multiple of `align` elements
    (4-bit blocks never straddle two slices)."""
    unit = align // math.gcd(cols, align)
    return max(unit, elements // cols // unit * unit)


def rank_rows(rows: int, cols: int, align: int, rank: int, world: int) -> tuple[int, int, int]:
    """This rank's rows [first, end) of a weight and the rows every rank gets (the last may have fewer or none):
    a multiple of `align` values, so 4-bit blocks never straddle two ranks."""
    unit = align // math.gcd(cols, align)
    step = math.ceil(rows / world / unit) * unit
    return min(rows, rank * step), min(rows, (rank + 1) * step), step


def partition_rows(rows: int, cols: int, values_per_element: int, align: int, rank: int,
                   world: int) -> tuple[int, int]:
    """The rows [first, end) whose values fill this rank's ZeRO-3 partition of the quantized tensor
    (`values_per_element` weights per element of it: 1 for int8, 2 per byte packed at 4 bits), widened to whole
    `align`-value blocks.
    DeepSpeed pads the flattened parameter to a multiple of `world` and gives rank r the r-th equal run."""
    elements = math.ceil(rows * cols / values_per_element)
    size = math.ceil(elements / world)
    first_value = min(rows * cols, rank * size * values_per_element)
    end_value = min(rows * cols, (rank + 1) * size * values_per_element)
    unit = align // math.gcd(cols, align)
    first = first_value // cols // unit * unit
    end = min(rows, math.ceil(math.ceil(end_value / cols) / unit) * unit)
    return first, max(first, end)


def _covering(*spans: tuple[int, int]) -> tuple[int, int]:
    """The one run of rows that holds every non-empty span."""
    spans = [s for s in spans if s[1] > s[0]] or [spans[0]]
    return min(s[0] for s in spans), max(s[1] for s in spans)


def _gather_ranks(*buffers: torch.Tensor) -> None:
    """Each buffer, flat, holds this rank's equal span in rank order: every rank's span, on every rank."""
    import torch.distributed as dist

    rank, world = dist.get_rank(), dist.get_world_size()
    for buffer in buffers:
        flat = buffer.view(-1)
        span = flat.numel() // world
        dist.all_gather_into_tensor(flat, flat[rank * span:(rank + 1) * span])


def _slices(rows: int, step: int):
    return ((first, min(rows, first + step)) for first in range(0, rows, step))


def _parts(read: Read, shape: torch.Size, dtype: torch.dtype, device, own: tuple[int, int], align: int = 1):
    """(first row, rows in the load dtype) slice by slice, over the `own` rows [first, end); each slab read is
    one copy the allocator counts."""
    rows, cols = shape
    for first, end in _slices(own[1] - own[0], row_step(cols, align, READ_ELEMENTS)):
        first, end = first + own[0], end + own[0]
        slab = read(first, end).to(device=device, dtype=dtype, copy=True)
        for start, stop in _slices(end - first, row_step(cols, align, CHUNK_ELEMENTS)):
            yield first + start, slab[start:stop]


def quantize_8bit(read: Read, shape: torch.Size, dtype: torch.dtype, device, rank: int = 0,
                  world: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    """LLM.int8()'s int8 matrix and per-row scales (SCB), as `Int8Params` makes them: the weight in the
    load dtype, then fp16, then `int8_vectorwise_quant` (no outlier threshold). On N ranks: the rows of this
    rank's partition and of its scales only; the scales then all-gathered."""
    from bitsandbytes.functional import int8_vectorwise_quant

    rows, cols = shape
    first, end, step = rank_rows(rows, cols, 1, rank, world)
    own = _covering((first, end), partition_rows(rows, cols, 1, 1, rank, world))
    cb = torch.empty(world * step, cols, dtype=torch.int8, device=device)  # full size: this rank's rows written
    scb = torch.empty(world * step, dtype=torch.float32, device=device)
    # from fp32 or fp16 (any stored dtype: bf16 and fp16 widen to fp32 exactly) straight to fp16 is the same
    # rounding as through the load dtype, in one pass and half the slab; through bf16 rounds twice
    via = torch.float16 if dtype in (torch.float32, torch.float16) else dtype
    for start, part in _parts(read, shape, via, device, own):
        cb[start:start + len(part)], scb[start:start + len(part)], _ = int8_vectorwise_quant(part.to(torch.float16))
    if world > 1:
        _gather_ranks(scb)
    return cb[:rows], scb[:rows]


def quantize_4bit(read: Read, shape: torch.Size, dtype: torch.dtype, device, blocksize: int, compress_statistics: bool,
                  quant_type: str, quant_storage: torch.dtype, rank: int = 0, world: int = 1):
    """The packed 4-bit weight and its `QuantState`, as `Params4bit` makes them with `quantize_4bit`. On N
    ranks: the blocks of this rank's partition and of its block scales only; the scales then all-gathered and
    double-quantized once every one is known."""
    from bitsandbytes.functional import QuantState, get_4bit_type
    from bitsandbytes.functional import quantize_4bit as bnb_quantize_4bit

    rows, cols = shape
    numel = rows * cols
    first, end, step = rank_rows(rows, cols, blocksize, rank, world)
    values_per_element = 2 * quant_storage.itemsize  # two 4-bit values a byte
    own = _covering((first, end), partition_rows(rows, cols, values_per_element, blocksize, rank, world))
    packed = torch.empty(world * step * cols // 2, dtype=torch.uint8, device=device)  # full size: own rows written
    absmax = torch.empty(world * step * cols // blocksize, dtype=torch.float32, device=device)
    for row, rows_in in _parts(read, shape, dtype, device, own, blocksize):
        part, state = bnb_quantize_4bit(rows_in, blocksize=blocksize, compress_statistics=False, quant_type=quant_type,
                                        quant_storage=quant_storage)
        byte, block = row * cols // 2, row * cols // blocksize
        packed[byte:byte + part.numel() * part.element_size()] = part.view(-1).view(torch.uint8)
        absmax[block:block + state.absmax.numel()] = state.absmax
    if world > 1:
        _gather_ranks(absmax)
    packed, absmax = packed[:(numel + 1) // 2], absmax[:math.ceil(numel / blocksize)]
    common = dict(shape=torch.Size(shape), dtype=dtype, blocksize=blocksize, quant_type=quant_type,
                  code=get_4bit_type(quant_type, device=device))
    return packed.view(quant_storage).unsqueeze(1), (_double_quant(absmax, common) if compress_statistics else
                                                     QuantState(absmax=absmax, **common))


def _double_quant(absmax: torch.Tensor, common: dict):
    """`quantize_4bit`'s second level: the block scales less their mean, in 8-bit blocks of 256."""
    from bitsandbytes.functional import QuantState, quantize_blockwise

    offset = absmax.mean()
    qabsmax, state2 = quantize_blockwise(absmax - offset, blocksize=256)
    return QuantState(absmax=qabsmax, offset=offset, state2=state2, **common)
