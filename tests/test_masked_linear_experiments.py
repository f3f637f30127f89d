"""The candidate forward kernels the GPU sweep times (benchmarks/masked_linear_experiments.py) compute the masked
linear exactly (Triton through the interpreter without a GPU): a candidate that wins must be right already."""
import os
import sys

import pytest
import torch

from conftest import HAS_TRITON, TRITON_DEVICE

pytestmark = pytest.mark.skipif(not HAS_TRITON, reason="Triton is not installed")
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "benchmarks"))


@pytest.mark.parametrize("shape", [(96, 128), (192, 64), (64, 2112)], ids=str)
def test_rows_per_program_forward(shape):
    import masked_linear_experiments as ex

    N, K = shape
    gen = torch.Generator().manual_seed(N + K)
    x, w, b = torch.randn(70, K, generator=gen), torch.randn(N, K, generator=gen), torch.randn(N, generator=gen)
    mask = (torch.rand(N // 32, K // 32, generator=gen) < 0.4).float() * torch.rand(N // 32, K // 32, generator=gen)
    mask[0] = 0  # a block row with nothing kept: output = bias
    want = x.double() @ (w.double() * torch.kron(mask.double(), torch.ones(32, 32, dtype=torch.float64))).T \
        + b.double()
    for cfg in [c for c in ex.CANDIDATES if c[0] in (1, 4)] + [(24, 64, 4, 2, True)]:
        y = ex.rows_per_program_forward(x.to(TRITON_DEVICE), w.to(TRITON_DEVICE), mask.to(TRITON_DEVICE),
                                        b.to(TRITON_DEVICE), (32, 32), *cfg)
        err = (y.cpu().double() - want).abs().max().item()
        assert err <= 1e-5 * want.abs().max().item(), (cfg, err)
