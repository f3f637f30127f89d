"""How the layer-wise kernels address their inputs: every tensor as rows of its last dimension.

A list of same-shape tensors is handed to a kernel as a table of base addresses plus one (rows, cols,
row_stride) layout shared by all of them: element (r, c) of layer k lives at ``base_k + r * row_stride + c``.
This covers contiguous tensors, slices of a stacked ``(L, ...)`` tensor and strided views such as the
``[CLS]`` column ``hidden[:, 0]`` of every layer, without stacking or copying the layers. Only tensors that
cannot be described this way (e.g. a transposed last dimension, or layers with different strides) are made
contiguous, one layer at a time.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import List, Sequence

import torch


SUPPORTED_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


def acc_dtype(dtype: torch.dtype) -> torch.dtype:
    """Accumulation dtype of every kernel: float64 for float64 inputs, float32 otherwise."""
    return torch.float64 if dtype == torch.float64 else torch.float32


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


def pointer_table(tensors: Sequence[torch.Tensor], device) -> torch.Tensor:
    """int64 tensor of the tensors' addresses (0 for a missing entry), on ``device``.

    On CUDA the table goes through pinned host memory (PyTorch's caching host allocator) with a non-blocking
    copy: a copy from pageable memory would make the host wait for the stream, a sync point on every call.
    The addresses are read at call time, so a launch inside a captured CUDA graph would replay stale ones."""
    table = torch.tensor([0 if t is None else t.data_ptr() for t in tensors], dtype=torch.int64)
    device = torch.device(device)
    if device.type != "cuda":
        return table
    return table.pin_memory().to(device, non_blocking=True)


def grad_buffers(x0: torch.Tensor, need_grad: Sequence[bool], stacked: bool):
    """``(outputs, grads)``: ``grads`` holds, per layer, the tensor its gradient is written to (None when the
    layer needs none); ``outputs`` is what the op returns. A stacked input gets one (L, *shape) buffer, so its
    gradient needs no copy; separate layers get separate tensors (one big buffer would be handed to mmap and
    page-faulted afresh on every call, where layer-sized blocks are recycled by the allocator)."""
    if stacked:
        buf = torch.empty((sum(map(bool, need_grad)), *x0.shape), dtype=x0.dtype, device=x0.device)
        it = iter(buf)
        return [buf], [next(it) if f else None for f in need_grad]
    grads = [torch.empty(x0.shape, dtype=x0.dtype, device=x0.device) if f else None for f in need_grad]
    return [g for g in grads if g is not None], grads
