"""The dtype facts every kernel shares, and the one place that reads ``TRITON_INTERPRET``.

Importing this module imports neither Triton nor the C++ extension.
"""
from __future__ import annotations

import functools
import os

import torch

SUPPORTED_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
SIXTEEN_BIT = (torch.float16, torch.bfloat16)


def acc_dtype(dtype: torch.dtype) -> torch.dtype:
    """Accumulation dtype of every kernel: float64 for float64 inputs, float32 otherwise."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def element_size(dtype: torch.dtype) -> int:
    return torch.empty((), dtype=dtype).element_size()


def triton_dtype(dtype: torch.dtype):
    """The ``triton.language`` dtype of a torch dtype (imports Triton)."""
    import triton.language as tl

    return {torch.float16: tl.float16, torch.bfloat16: tl.bfloat16, torch.float32: tl.float32,
            torch.float64: tl.float64}[dtype]


def triton_interpreting() -> bool:
    """Whether ``TRITON_INTERPRET`` asks for the Triton interpreter (it must be set before the kernels are
    imported: Triton reads it when a ``@triton.jit`` decorator runs)."""
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


def check_interpreter_mode(interpreted_at_import: bool) -> None:
    """Raise a clear error when Triton kernels are about to run on CPU tensors but were decorated for a GPU
    (``interpreted_at_import`` False), i.e. ``TRITON_INTERPRET`` was set after they had been imported."""
    if not interpreted_at_import:
        from bermo.errors import BackendUnavailableError

        raise BackendUnavailableError(
            "bermo's Triton kernels were imported before TRITON_INTERPRET=1 was set, so they cannot run on CPU "
            "tensors: set TRITON_INTERPRET=1 before the first bermo call (best: before importing bermo), or "
            "use backend='cpu'")


@functools.lru_cache(maxsize=None)
def empty_tensor(dtype: torch.dtype) -> torch.Tensor:
    """A zero-element CPU tensor of ``dtype``, made once: what a kernel argument gets for "none" (the C++
    launchers take an empty bias rather than an optional one)."""
    return torch.empty(0, dtype=dtype)
