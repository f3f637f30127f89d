"""Backend selection shared by every bermo op.

A backend is a name; each op says which backends it implements. ``auto`` picks, for the device of the
tensors, the fastest backend that can run there:

* ``triton``: CUDA tensors; CPU tensors only through the Triton interpreter (``TRITON_INTERPRET=1``, set
  before bermo is imported), which is how the kernels are tested without a GPU. Never picked by ``auto`` on CPU.
* ``cpu``: a fused C++ kernel JIT-built with ninja on first use. If it cannot be built, ``auto`` falls back to
  ``reference`` with one warning.
* ``reference``: the eager PyTorch formula; runs anywhere.

The choice comes from the op's ``backend=`` argument, else the ``BERMO_BACKEND`` environment variable, else
``auto``. An explicit choice that cannot run on the given tensors raises ``BackendUnavailableError``.
"""
from __future__ import annotations

import functools
import importlib.util
import os
import warnings
from typing import Optional

import torch

from .errors import BackendUnavailableError
from .kernels.dtypes import triton_interpreting  # the one place that reads TRITON_INTERPRET

ENV_VAR = "BERMO_BACKEND"
BACKENDS = ("auto", "triton", "cpu", "reference")


def requested(backend: Optional[str] = None) -> str:
    """The requested backend name, validated: the argument if given, else ``$BERMO_BACKEND``, else ``auto``."""
    source = "backend argument"
    if backend is None:
        backend, source = os.environ.get(ENV_VAR, "auto") or "auto", f"${ENV_VAR}"
    name = str(backend).strip().lower()
    if name not in BACKENDS:
        raise ValueError(f"unknown bermo backend {backend!r} (from the {source}); choose one of {', '.join(BACKENDS)}")
    return name


@functools.lru_cache(maxsize=None)
def _triton_import_error() -> Optional[str]:
    if importlib.util.find_spec("triton") is None:
        return "Triton is not installed"
    try:
        import triton  # noqa: F401  (importable is not enough: a broken install fails here)
    except Exception as exc:  # pragma: no cover - broken installs
        return f"Triton failed to import: {exc}"
    return None


@functools.lru_cache(maxsize=None)
def _cpu_build_error() -> Optional[str]:
    try:
        from bermo.kernels import cpu_extension

        cpu_extension.extension()
    except Exception as exc:
        lines = [line for line in str(exc).strip().splitlines() if "error" in line.lower()] or [str(exc).strip()]
        return f"the C++ extension could not be built ({type(exc).__name__}: {' | '.join(lines)[-600:]})"
    return None


def unavailable_reason(name: str, device: torch.device) -> Optional[str]:
    """Why backend ``name`` cannot run on tensors of ``device``, or None when it can."""
    if name == "reference":
        return None
    if name == "triton":
        if device.type == "cpu" and not triton_interpreting():
            return "it needs CUDA tensors (CPU tensors only with TRITON_INTERPRET=1 set before import)"
        if device.type not in ("cuda", "cpu"):
            return f"it needs CUDA tensors, got {device.type} tensors"
        return _triton_import_error()
    if name == "cpu":
        if device.type != "cpu":
            return f"it needs CPU tensors, got {device.type} tensors"
        return _cpu_build_error()
    raise ValueError(f"unknown bermo backend {name!r}")


@functools.lru_cache(maxsize=None)
def _warn_fallback(device_type: str, reason: str) -> None:
    warnings.warn(f"bermo: falling back to the reference backend on {device_type} tensors: {reason}",
                  RuntimeWarning, stacklevel=_caller_stacklevel())


def _caller_stacklevel() -> int:
    """The stacklevel that points a warning at the first frame outside bermo (and torch's module machinery),
    i.e. the user's line, however deep inside bermo the warning is raised."""
    import sys

    here = os.path.dirname(os.path.abspath(__file__))
    torch_dir = os.path.dirname(os.path.abspath(torch.__file__))
    frame, level = sys._getframe(1), 1
    while frame is not None:
        path = os.path.abspath(frame.f_code.co_filename)
        if not (path.startswith(here) or path.startswith(torch_dir) or "functools" in path):
            return level
        frame, level = frame.f_back, level + 1
    return 2


def resolve_no_float64_triton(backend: Optional[str], x: torch.Tensor, op: str) -> str:
    """``resolve`` for an op whose Triton kernels have no float64 path: float64 tensors that auto would send to
    Triton quietly take the reference formula; an explicit ``triton`` (argument or environment) is refused."""
    name = resolve(backend, x.device, op)
    if name == "triton" and x.dtype == torch.float64:
        if backend is None and requested() == "auto":
            return "reference"
        raise BackendUnavailableError(f"{op}: the triton backend has no float64 kernels; use float32 or the "
                                      "reference backend")
    return name


@torch.compiler.assume_constant_result
def resolve(backend: Optional[str], device: torch.device, op: str, implemented=("triton", "cpu", "reference")) -> str:
    """The backend that runs ``op`` on tensors of ``device``; see the module docstring for the rules.

    Under ``torch.compile`` the answer is taken as a constant of the graph (it depends on the device and the
    environment, not on tensor values), so compiling does not trace the availability checks."""
    name = requested(backend)
    if name == "auto":
        preferred = {"cuda": "triton", "cpu": "cpu"}.get(device.type, "reference")
        if preferred not in implemented:
            return "reference"
        reason = unavailable_reason(preferred, device)
        if reason is None:
            return preferred
        _warn_fallback(device.type, f"{preferred} backend unavailable: {reason}")
        return "reference"
    if name not in implemented:
        raise BackendUnavailableError(f"{op} has no {name!r} backend; it implements {', '.join(implemented)}")
    reason = unavailable_reason(name, device)
    if reason is not None:
        raise BackendUnavailableError(f"bermo backend {name!r} cannot run {op} on {device.type} tensors: {reason}")
    return name
