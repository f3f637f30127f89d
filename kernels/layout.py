"""How the layer-wise kernels address their inputs: every tensor as rows of its last dimension.

A list of same-shape tensors is handed to a kernel as a table of base addresses plus one (rows, cols,
row_stride) layout shared by all of them: element (r, c) of layer k lives at ``base_k + r * row_stride + c``.
This covers contiguous tensors, slices of a stacked ``(L, ...)`` tensor and strided views such as the
``[CLS]`` column ``hidden[:, 0]`` of every layer, without stacking or copying the layers. Only tensors that
cannot be described this way (e.g. a transposed last dimension, or layers with different strides) are made
contiguous, one layer at a time.
"""
from __future__ import annotations

import threading
from collections import OrderedDict
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence

import torch


from .dtypes import SUPPORTED_DTYPES, acc_dtype  # noqa: F401  (re-exported: the layout's users need both)


@dataclass(frozen=True)
class RowLayout:
    rows: int
    cols: int
    row_stride: int  # in elements

    @property
    def numel(self) -> int:
        return self.rows * self.cols


def _row_view(t: torch.Tensor, rows: int, cols: int):
    """``t`` viewed as (rows, cols) with a unit column stride, or None when no such view exists."""
    try:
        v = t.view(rows, cols)
    except RuntimeError:
        return None
    if cols > 1 and v.stride(1) != 1:
        return None
    return v


def as_rows(tensors: Sequence[torch.Tensor]):
    """Return ``(layout, views)``: each tensor as a 2-D (rows, cols) view sharing one row stride."""
    shape = tensors[0].shape
    cols = shape[-1] if len(shape) > 0 else 1
    numel = tensors[0].numel()
    rows = numel // cols if cols else 0
    views: List[torch.Tensor] = []
    strides = set()
    for t in tensors:
        v = _row_view(t, rows, cols)
        if v is None:
            break
        views.append(v)
        strides.add(v.stride(0) if rows > 1 else cols)
    if len(views) != len(tensors) or len(strides) != 1:
        views = [t.contiguous().view(rows, cols) for t in tensors]
        strides = {cols}
    return RowLayout(rows, cols, strides.pop()), views


def cdiv(a: int, b: int) -> int:
    """``ceil(a / b)`` for the launchers' grids: ``triton.cdiv`` called from host code goes through Triton's
    constexpr-function wrapper, ~1.5 us a call on the development CPU (a masked-linear training step made seven)."""
    return -(-a // b)


VECTOR_BYTES = 16  # the widest global access of a GPU thread (ld.global.v4.b32)


def vector_access_ok(layout: RowLayout, tensors: Sequence[Optional[torch.Tensor]]) -> bool:
    """Whether the kernels may access ``tensors`` (the layers, or gradient buffers; None entries skipped) in
    16-byte vectors: every base address, the inputs' row stride and the contiguous outputs' row length all
    multiples of 16 bytes. This is the promise behind a kernel's ``ALIGNED=True``, checked on the host, where
    the addresses are known; a false promise would read wrong bytes or fault on a GPU."""
    present = [t for t in tensors if t is not None]
    if not present:
        return True
    esize = present[0].element_size()
    if (layout.row_stride * esize) % VECTOR_BYTES or (layout.cols * esize) % VECTOR_BYTES:
        return False
    return all(t.data_ptr() % VECTOR_BYTES == 0 for t in present)


_TABLES: "OrderedDict[tuple, torch.Tensor]" = OrderedDict()
_TABLES_MAX = 256
_TABLES_LOCK = threading.Lock()  # DataParallel replicas run their forwards in threads
_CAPTURED: Dict[int, torch.Tensor] = {}  # tables a captured CUDA graph reads (by id): alive as long as the process


def pointer_table(tensors: Sequence[Optional[torch.Tensor]], device) -> torch.Tensor:
    """int64 tensor of the tensors' addresses (0 for a missing entry), on ``device``.

    On CUDA the table goes through pinned host memory (PyTorch's caching host allocator) with a non-blocking
    copy: a copy from pageable memory would make the host wait for the stream, a sync point on every call.
    Device tables are kept (a small LRU keyed by the addresses and the stream), since PyTorch's caching
    allocator hands the same addresses back step after step: a repeated call then costs no copy at all.

    Inside a CUDA graph capture (``torch.cuda.graph``) the addresses are those of the graph's fixed buffers, so
    the replays may bake them in; but the table must outlive the graph and hold its values at every replay.
    There it is written by one fill per address (kernels captured with their values: no host buffer the replay
    would re-read; L small launches per table at every replay) and kept for the life of the process (a few
    bytes, but in the capture's memory pool, whose block it keeps), and a cached table the capture reads is
    kept likewise (the LRU would free it for reuse). A table made during a capture is filled only when the
    graph replays, so it never enters the cache of eager calls. Not yet run on a GPU under
    ``torch.compile(mode="reduce-overhead")``, whose graph trees check their pool's live blocks."""
    ptrs = tuple(0 if t is None else t.data_ptr() for t in tensors)
    device = torch.device(device)
    if device.type != "cuda":
        return torch.tensor(ptrs, dtype=torch.int64)
    capturing = torch.cuda.is_current_stream_capturing()
    key = (device, torch.cuda.current_stream(device).cuda_stream, ptrs)
    with _TABLES_LOCK:
        table = _TABLES.get(key)
        if table is not None:
            _TABLES.move_to_end(key)
            if capturing:
                _CAPTURED[id(table)] = table
            return table
    if capturing:
        table = captured_table(ptrs, device)
        with _TABLES_LOCK:
            _CAPTURED[id(table)] = table
        return table
    table = torch.tensor(ptrs, dtype=torch.int64).pin_memory().to(device, non_blocking=True)
    with _TABLES_LOCK:
        _TABLES[key] = table
        if len(_TABLES) > _TABLES_MAX:
            _TABLES.popitem(last=False)
    return table


def captured_table(ptrs: Sequence[int], device) -> torch.Tensor:
    """The addresses written on ``device`` by fills whose values are kernel arguments (capturable, no host
    memory read at replay)."""
    table = torch.empty(len(ptrs), dtype=torch.int64, device=device)
    for i, p in enumerate(ptrs):
        table[i].fill_(p)
    return table


def output_like(x0: torch.Tensor, shape=None) -> torch.Tensor:
    """A new contiguous output of ``shape`` (default ``x0``'s) in ``x0``'s dtype and device: every kernel
    output is allocated here (tests put guard regions around them to catch out-of-bounds writes)."""
    return torch.empty(x0.shape if shape is None else shape, dtype=x0.dtype, device=x0.device)


def workspace(shape, dtype: torch.dtype, device) -> torch.Tensor:
    """A new buffer for a kernel's partial results (per-program sums), allocated here like ``output_like``."""
    return torch.empty(shape, dtype=dtype, device=device)


def grad_buffers(x0: torch.Tensor, need_grad: Sequence[bool], stacked: bool):
    """``(outputs, grads)``: ``grads`` holds, per layer, the tensor its gradient is written to (None when the
    layer needs none); ``outputs`` is what the op returns. A stacked input gets one (L, *shape) buffer, so its
    gradient needs no copy; separate layers get separate tensors (one big buffer would be handed to mmap and
    page-faulted afresh on every call, where layer-sized blocks are recycled by the allocator)."""
    if stacked:
        buf = output_like(x0, (sum(map(bool, need_grad)), *x0.shape))
        it = iter(buf)
        return [buf], [next(it) if f else None for f in need_grad]
    grads = [output_like(x0) if f else None for f in need_grad]
    return [g for g in grads if g is not None], grads
