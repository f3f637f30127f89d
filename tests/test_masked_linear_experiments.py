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
    for cfg in [c for c in ex.CANDIDATES if c[0] == 4] + [(1, 64, 4, 2, False), (24, 64, 4, 2, True)]:
        y = ex.rows_per_program_forward(x.to(TRITON_DEVICE), w.to(TRITON_DEVICE), mask.to(TRITON_DEVICE),
                                        b.to(TRITON_DEVICE), (32, 32), *cfg)
        err = (y.cpu().double() - want).abs().max().item()
        assert err <= 1e-5 * want.abs().max().item(), (cfg, err)


@pytest.mark.parametrize("shape", [(96, 128), (64, 2112)], ids=str)
def test_flat_rows_forward(shape, monkeypatch):
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
        for cfg in [(64, 4, 2, True, False), (32, 4, 3, False, True)]:  # each program lists its own group
            y = ex.flat_self_forward(x.to(dev), w.to(dev), mask.to(dev), b.to(dev), (32, 32), rows, *cfg)
            assert (y.cpu().double() - want).abs().max().item() <= 1e-5 * want.abs().max().item(), (rows, cfg)
        if shape == (96, 128):  # listing the group in chunks of one row each (the offset carried across them)
            with monkeypatch.context() as m:
                m.setattr(ex, "SELF_LIST_CHUNK", 16)
                y = ex.flat_self_forward(x.to(dev), w.to(dev), mask.to(dev), b.to(dev), (32, 32), rows)
            assert (y.cpu().double() - want).abs().max().item() <= 1e-5 * want.abs().max().item(), rows
        blists = [t.to(dev) for t in ex.flat_lists(binary, (32, 32), rows)]
        y = ex.flat_rows_forward(x.to(dev), w.to(dev), blists, b.to(dev), rows,
                                 values=ex.list_values(values.to(dev), blists))
        assert (y.cpu().double() - want_bsr).abs().max().item() <= 1e-5 * want_bsr.abs().max().item(), rows


@pytest.mark.parametrize("shape,block,side", [((96, 128), (32, 32), 32), ((64, 2112), (32, 32), 32),
                                              ((128, 192), (64, 32), 16), ((32, 64), (32, 32), 32),
                                              ((1280, 64), (32, 32), 32)], ids=str)  # 40 rows: chunks carry
@pytest.mark.parametrize("chunks", [None, (16, 16)], ids=["one-pass", "chunked"])
def test_device_flat_lists(shape, block, side, chunks):
    """The device-built flat list is the host-built one, entry for entry: groups that do not divide the tile rows,
    empty rows (one entry of value 0), a mask with nothing kept, row and column chunks."""
    import masked_linear_experiments as ex

    N, K = shape
    gen = torch.Generator().manual_seed(N + 7 * K)
    for fill in ("random", "none"):
        mask = (torch.rand(N // block[0], K // block[1], generator=gen) < 0.3).float() \
            * torch.rand(N // block[0], K // block[1], generator=gen)
        mask[0] = 0
        if fill == "none":
            mask.zero_()
        for rows in (1, 3, 4):
            want = ex.flat_lists(mask, block, rows, side=side)
            rb, ct = chunks or (None, None)
            got = ex.device_flat_lists(mask.to(TRITON_DEVICE), block, rows, side=side, rb=rb, ct=ct)
            gptr = got[0].cpu()
            assert torch.equal(gptr, want[0]), (fill, rows)
            total = int(gptr[-1])
            for name, g, w in zip(("ft", "fr", "fs", "fl"), got[1:5], want[1:5]):
                assert torch.equal(g.cpu()[:total], w), (fill, rows, name)


@pytest.mark.slow
def test_gpu_sweep_runs_end_to_end(tmp_path, monkeypatch):
    """``masked_linear_sweep.py --no-tiles --experiments`` (what ``gpu_check.sh sweep`` runs on a lent GPU) goes
    through every step and writes its table, here on the interpreter with small shapes, a few candidates and a
    stand-in for the CUDA-graph timing: a crash there would cost device time."""
    if TRITON_DEVICE != "cpu":
        pytest.skip("the stand-in run is for machines without a GPU")
    import json

    import masked_linear_experiments as ex
    import masked_linear_sweep as sweep

    monkeypatch.setattr(sweep, "DEV", "cpu")
    monkeypatch.setattr(sweep, "SHAPES", [(64, 64), (128, 64), (64, 128)])
    monkeypatch.setattr(sweep, "graph_ms", lambda fn, *a, **k: (fn(), 1e-3)[1])
    monkeypatch.setattr(ex, "CANDIDATES", ex.CANDIDATES[:2])
    monkeypatch.setattr(ex, "FLAT_CANDIDATES", [c for c in ex.FLAT_CANDIDATES if c[0] == 8][:2])
    monkeypatch.setattr(ex, "FLAT_BSL_CANDIDATES", ex.FLAT_BSL_CANDIDATES[:1])
    monkeypatch.setattr(ex, "FLAT_SELF_CANDIDATES", ex.FLAT_SELF_CANDIDATES[:1])
    monkeypatch.setattr(sys, "argv", ["masked_linear_sweep.py", "--no-tiles", "--experiments", "--tokens", "40",
                                      "--densities", "0.5", "--out", str(tmp_path)])
    sweep.main()
    (result,) = [f for f in os.listdir(tmp_path) if f.endswith(".json")]
    rows = json.loads((tmp_path / result).read_text())["rows"]
    steps = {r["step"] for r in rows}
    assert any(s.startswith("forward flat candidate, its list built on the device") for s in steps), steps
    assert "flat list alone (flat_list_kernel)" in steps
    assert any("flat_self_kernel" in s for s in steps), steps
    assert not [r for r in rows if r["note"]], [r for r in rows if r["note"]]
    assert any(r["step"] == "crossover" for r in rows)
