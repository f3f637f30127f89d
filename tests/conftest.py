"""Test configuration: without a GPU, Triton kernels run on CPU tensors through the Triton interpreter.

TRITON_INTERPRET must be set before Triton's @jit decorators run, i.e. before bermo.kernels is imported,
so it is set here, at collection time. With a GPU, the Triton tests run on CUDA tensors instead.
"""
import importlib.util
import os
import shutil

import pytest
import torch

HAS_CUDA = torch.cuda.is_available()
if not HAS_CUDA:
    os.environ.setdefault("TRITON_INTERPRET", "1")
HAS_TRITON = importlib.util.find_spec("triton") is not None
# The project installs ninja; a machine set up with --no-deps (e.g. a lent GPU box) may lack it, and then the
# C++ backend's tests are skipped rather than failed. Where ninja is present, a broken build fails them.
HAS_NINJA = shutil.which("ninja") is not None or importlib.util.find_spec("ninja") is not None
TRITON_DEVICE = "cuda" if HAS_CUDA else "cpu"


def pytest_collection_modifyitems(config, items):
    skip_gpu = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "gpu" in item.keywords and not HAS_CUDA:
            item.add_marker(skip_gpu)


@pytest.fixture(autouse=True)
def _no_backend_env(monkeypatch):
    """Tests choose backends explicitly; a BERMO_BACKEND set in the caller's shell must not leak in."""
    monkeypatch.delenv("BERMO_BACKEND", raising=False)
