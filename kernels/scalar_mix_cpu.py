"""CPU launchers for the scalar-mix kernels in ``csrc/scalar_mix_cpu.cpp``: the same four passes and the same
signatures as the Triton launchers in ``kernels/scalar_mix.py``.

The extension is JIT-built with ninja through ``torch.utils.cpp_extension`` on first use and cached (in
``TORCH_EXTENSIONS_DIR``, by default ``~/.cache/torch_extensions``), so only the first call pays the build.
"""
from __future__ import annotations

import functools
import hashlib
import os
import platform
from typing import Sequence

import torch

from .layout import as_rows, grad_buffers

_SOURCE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "csrc", "scalar_mix_cpu.cpp")


def _cpu_tag() -> str:
    """A short hash of this CPU's model and feature flags: the build uses -march=native, so a cache shared by
    machines with different CPUs (a network home directory) must not hand one machine's binary to another."""
    try:
        with open("/proc/cpuinfo") as f:
            info = f.read()
        lines = [line for line in info.splitlines() if line.startswith(("model name", "flags", "Features"))]
        key = "\n".join(sorted(set(lines)))
    except OSError:
        key = platform.processor() + platform.machine()
    return hashlib.sha1(key.encode()).hexdigest()[:10]


@functools.lru_cache(maxsize=None)
def extension():
    """The compiled extension module; raises whatever the build raised when it cannot be built.

    -fopenmp makes ATen's header-only at::parallel_for actually run in parallel (it resolves against the
    OpenMP runtime torch has already loaded); -march=native lets the float paths use the widest vectors."""
    from torch.utils.cpp_extension import load

    return load(name=f"bermo_scalar_mix_cpu_{_cpu_tag()}", sources=[_SOURCE],
                extra_cflags=["-O3", "-fopenmp", "-march=native"],
                verbose=os.environ.get("BERMO_VERBOSE_BUILD") == "1")


def _grad_args(grads, like: torch.Tensor):
    """The per-layer gradient outputs as the C++ side takes them: an empty tensor for a layer with none."""
    return [like.new_empty(0) if g is None else g for g in grads]


def mix_forward(tensors: Sequence[torch.Tensor], coef: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    layout, views = as_rows(tensors)
    out = torch.empty(tensors[0].shape, dtype=tensors[0].dtype)
    if layout.numel:
        extension().mix_forward(views, coef, bias, out, layout.rows, layout.cols, layout.row_stride)
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
    partials = torch.empty((tiles, L + 1) if compute_dots else (0,), dtype=coef.dtype)
    ext.mix_backward(grad_out.contiguous(), views, _grad_args(grads, coef), coef,
                     center, partials, layout.rows, layout.cols, layout.row_stride)
    if compute_dots:
        sums = partials.sum(0)
    return outputs, sums


def ln_stats(tensors: Sequence[torch.Tensor], row_mask: torch.Tensor):
    layout, views = as_rows(tensors)
    L = len(views)
    ext = extension()
    partials = torch.empty((ext.num_tiles(layout.rows, layout.cols, layout.row_stride), 2 * L + 1),
                           dtype=row_mask.dtype)
    ext.ln_stats(views, row_mask, partials, layout.rows, layout.cols, layout.row_stride)
    return partials[:, 0], partials[:, 1:L + 1], partials[:, L + 1:]


def ln_backward(grad_out: torch.Tensor, tensors: Sequence[torch.Tensor], row_mask: torch.Tensor,
                coef: torch.Tensor, alpha: torch.Tensor, beta: torch.Tensor, center: torch.Tensor,
                need_grad: Sequence[bool], stacked: bool = False):
    layout, views = as_rows(tensors)
    outputs, grads = grad_buffers(tensors[0], need_grad, stacked)
    if layout.numel and any(need_grad):
        extension().ln_backward(grad_out.contiguous(), views, _grad_args(grads, coef),
                                row_mask, coef, alpha, beta, center, layout.rows, layout.cols, layout.row_stride)
    return outputs
