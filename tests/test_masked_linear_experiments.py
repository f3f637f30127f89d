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


@pytest.mark.parametrize("shape", [(96, 128), (64, 2112)], ids=str)
def test_flat_rows_forward(shape):
    """The flat-list candidate, as the masked linear (mask values scale the tiles) and as BlockSparseLinear (tiles
    from BSR values in list order): groups that do not divide the block rows, a block row with nothing kept."""
    import masked_linear_experiments as ex

    N, K = shape
    gen = torch.Generator().manual_seed(N * K)
    x, w, b = torch.randn(70, K, generator=gen), torch.randn(N, K, generator=gen), torch.randn(N, generator=gen)
    mask = (torch.rand(N // 32, K // 32, generator=gen) < 0.4).float() * torch.rand(N // 32, K // 32, generator=gen)
    mask[1] = 0
    ones = torch.ones(32, 32, dtype=torch.float64)
    want = x.double() @ (w.double() * torch.kron(mask.double(), ones)).T + b.double()
    binary = (mask != 0).float()
    want_bsr = x.double() @ (w.double() * torch.kron(binary.double(), ones)).T + b.double()
    values = (w * torch.kron(binary, torch.ones(32, 32))).to_sparse_bsr((32, 32)).values()
    dev = TRITON_DEVICE
    for rows in (1, 2, 3):
        lists = [t.to(dev) for t in ex.flat_lists(mask, (32, 32), rows)]
        for cfg in [(64, 4, 2, True, False), (128, 4, 3, False, False), (64, 4, 3, True, True)]:
            y = ex.flat_rows_forward(x.to(dev), w.to(dev), lists, b.to(dev), rows, *cfg)
            assert (y.cpu().double() - want).abs().max().item() <= 1e-5 * want.abs().max().item(), (rows, cfg)
        blists = [t.to(dev) for t in ex.flat_lists(binary, (32, 32), rows)]
        y = ex.flat_rows_forward(x.to(dev), w.to(dev), blists, b.to(dev), rows,
                                 values=ex.list_values(values.to(dev), blists))
        assert (y.cpu().double() - want_bsr).abs().max().item() <= 1e-5 * want_bsr.abs().max().item(), rows
