"""CPU launchers for the scalar-mix kernels in ``csrc/scalar_mix_cpu.cpp``: the same four passes and the same
signatures as the Triton launchers in ``scalar_mix_triton.py``. The C++ is built by ``cpu_extension``."""
from __future__ import annotations

from typing import Sequence

import torch

from . import layout as layout_module
from .cpu_extension import extension
from .layout import as_rows, grad_buffers


def _grad_args(grads, like: torch.Tensor):
    """The per-layer gradient outputs as the C++ side takes them: an empty tensor for a layer with none."""
    return [like.new_empty(0) if g is None else g for g in grads]


def mix_forward(tensors: Sequence[torch.Tensor], coef: torch.Tensor, center: torch.Tensor) -> torch.Tensor:
    layout, views = as_rows(tensors)
    out = layout_module.output_like(tensors[0])
    if layout.numel:
        extension().mix_forward(views, coef, center, out, layout.rows, layout.cols, layout.row_stride)
    return out


def mix_backward(grad_out: torch.Tensor, tensors: Sequence[torch.Tensor], coef: torch.Tensor,
                 center: torch.Tensor, need_grad: Sequence[bool], compute_dots: bool, stacked: bool = False):
    layout, views = as_rows(tensors)
    L = len(views)
    outputs, grads = grad_buffers(tensors[0], need_grad, stacked)
    sums = torch.zeros(L + 1, dtype=coef.dtype)
    if layout.numel == 0 or not (any(need_grad) or compute_dots):
        return outputs, sums
    ext = extension()
    tiles = ext.num_tiles(layout.rows, layout.cols, layout.row_stride)
    partials = layout_module.workspace((tiles, L + 1) if compute_dots else (0,), coef.dtype, "cpu")
    ext.mix_backward(grad_out.contiguous(), views, _grad_args(grads, coef), coef,
                     center, partials, layout.rows, layout.cols, layout.row_stride)
    if compute_dots:
        sums = partials.sum(0)
    return outputs, sums


def ln_stats(tensors: Sequence[torch.Tensor], row_mask: torch.Tensor):
    layout, views = as_rows(tensors)
    L = len(views)
    ext = extension()
    partials = layout_module.workspace((ext.num_tiles(layout.rows, layout.cols, layout.row_stride), 3 * L + 1),
                                       row_mask.dtype, "cpu")
    ext.ln_stats(views, row_mask, partials, layout.rows, layout.cols, layout.row_stride)
    return partials[:, 0], partials[:, 1:L + 1], partials[:, L + 1:2 * L + 1], partials[:, 2 * L + 1:]


def ln_backward(grad_out: torch.Tensor, tensors: Sequence[torch.Tensor], row_mask: torch.Tensor,
                coef: torch.Tensor, alpha: torch.Tensor, beta: torch.Tensor, center: torch.Tensor,
                need_grad: Sequence[bool], stacked: bool = False):
    layout, views = as_rows(tensors)
    outputs, grads = grad_buffers(tensors[0], need_grad, stacked)
    if layout.numel and any(need_grad):
        extension().ln_backward(grad_out.contiguous(), views, _grad_args(grads, coef),
                                row_mask, coef, alpha, beta, center, layout.rows, layout.cols, layout.row_stride)
    return outputs
