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
import sys
from typing import Sequence

import torch

from . import layout as layout_module
from .layout import as_rows, grad_buffers

_SOURCE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "csrc", "scalar_mix_cpu.cpp")


_CFLAGS = ["-O3", "-fopenmp", "-march=native"]


def _cpu_tag() -> str:
    """This CPU's model and feature flags: the build uses -march=native, so a cache shared by machines with
    different CPUs (a network home directory) must not hand one machine's binary to another."""
    try:
        with open("/proc/cpuinfo") as f:
            info = f.read()
        lines = [line for line in info.splitlines() if line.startswith(("model name", "flags", "Features"))]
        return "\n".join(sorted(set(lines)))
    except OSError:
        return platform.processor() + platform.machine()


def extension_name() -> str:
    """The cache entry's name: a hash of everything the binary depends on (the source, the flags, the CPU,
    this torch build and this Python), so two environments on one machine (say, two virtual environments
    with different torch builds) never rebuild or load each other's library. Concurrent first builds of one
    entry are serialised by torch's own lock file in the build folder."""
    with open(_SOURCE, "rb") as f:
        source = f.read()
    key = "\n".join([hashlib.sha1(source).hexdigest(), " ".join(_CFLAGS), _cpu_tag(), torch.__version__,
                     str(getattr(torch.version, "git_version", "")), str(torch.version.cuda), platform.python_version(),
                     str(torch._C._GLIBCXX_USE_CXX11_ABI)])
    return f"bermo_scalar_mix_cpu_{hashlib.sha1(key.encode()).hexdigest()[:16]}"


def build_directory() -> str:
    """Where the extension is built and cached."""
    from torch.utils.cpp_extension import _get_build_directory

    return _get_build_directory(extension_name(), verbose=False)


@functools.lru_cache(maxsize=None)
def extension():
    """The compiled extension module; raises whatever the build raised when it cannot be built.

    -fopenmp makes ATen's header-only at::parallel_for actually run in parallel (it resolves against the
    OpenMP runtime torch has already loaded); -march=native lets the float paths use the widest vectors.
    The first build says so on stderr (it takes about a minute on two cores)."""
    from torch.utils.cpp_extension import load

    name = extension_name()
    folder = build_directory()
    if not os.path.exists(os.path.join(folder, name + ".so")):
        print(f"bermo: building the C++ CPU kernels (first use in this environment; about a minute on two "
              f"cores), cached in {folder}", file=sys.stderr, flush=True)
    return load(name=name, sources=[_SOURCE], extra_cflags=_CFLAGS,
                verbose=os.environ.get("BERMO_VERBOSE_BUILD") == "1")


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
    return partials[:, 0], partials[:, 1:L + 1], partials[:, L + 1:2 * L + 1], partials[0, 2 * L + 1:]


def ln_backward(grad_out: torch.Tensor, tensors: Sequence[torch.Tensor], row_mask: torch.Tensor,
                coef: torch.Tensor, alpha: torch.Tensor, beta: torch.Tensor, center: torch.Tensor,
                need_grad: Sequence[bool], stacked: bool = False):
    layout, views = as_rows(tensors)
    outputs, grads = grad_buffers(tensors[0], need_grad, stacked)
    if layout.numel and any(need_grad):
        extension().ln_backward(grad_out.contiguous(), views, _grad_args(grads, coef),
                                row_mask, coef, alpha, beta, center, layout.rows, layout.cols, layout.row_stride)
    return outputs
