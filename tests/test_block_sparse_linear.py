"""bermo.ops.block_sparse_linear and bermo.nn.BlockSparseLinear: parity of every backend with an independent float64
dense formula (outputs and gradients; dtypes, block shapes, densities, 3-D inputs), every CPU path, the module's
from_dense / to_dense / state_dict, and the errors."""
import importlib
import io
import warnings
import zlib

import pytest
import torch

from conftest import HAS_NINJA, HAS_TRITON, TRITON_DEVICE
from helpers import BACKENDS, block_shape_of, needs_cpu_kernels

from bermo.errors import BackendUnavailableError
from bermo.nn import BlockSparseLinear

bsl = importlib.import_module("bermo.ops.block_sparse_linear")

# Relative to max |reference|: one rounding of the result for 16-bit, float32 accumulation over K terms.
TOL = {torch.float64: 1e-10, torch.float32: 2e-5, torch.bfloat16: 2e-2, torch.float16: 3e-3}


@pytest.fixture(autouse=True)
def _one_thread():
    """The shapes here are tiny: on a shared machine, waking a second thread for each small op costs more than the
    op (and the test time swings with the machine's load). The multi-threaded C++ kernel is checked bitwise against
    the single-threaded one in test_cpu_kernel_is_deterministic_across_thread_counts."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def seed_of(*params) -> int:
    return zlib.crc32(repr(params).encode()) % 100_000


def make_mask(nb, density, gen):
    if density == "one":
        m = torch.zeros(nb, dtype=torch.bool)
        m[nb[0] // 2, nb[1] - 1] = True
    elif density == 0.0:
        m = torch.zeros(nb, dtype=torch.bool)
    else:
        m = torch.rand(nb, generator=gen) < density
    return m


def make_case(N, K, block, density, dtype, lead=(37,), bias=True, index_dtype=torch.int64, label=""):
    """Dense ``w`` (float64, zero outside the mask's blocks) and its BSR tensors from torch's own to_sparse_bsr
    (independent of bermo), cast to ``dtype``; x, bias, an output gradient."""
    gen = torch.Generator().manual_seed(seed_of(N, K, block, density, str(dtype), lead, bias, label))
    bo, bi = block
    mask = make_mask((N // bo, K // bi), density, gen)
    w = torch.randn(N, K, generator=gen, dtype=torch.float64) / K ** 0.5
    w = (w * torch.kron(mask.double(), torch.ones(bo, bi, dtype=torch.float64))).to(dtype).double()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "Sparse BSR tensor support is in beta state"
        bsr = w.to_sparse_bsr((bo, bi))
    crow, col = bsr.crow_indices().to(index_dtype), bsr.col_indices().to(index_dtype)
    values = bsr.values().to(dtype).contiguous()
    assert values.shape[0] == int(mask.sum())
    x = torch.randn(*lead, K, generator=gen).to(dtype)
    b = torch.randn(N, generator=gen).to(dtype) if bias else None
    dy = torch.randn(*lead, N, generator=gen).to(dtype)
    return dict(w=w, mask=mask, crow=crow, col=col, values=values, x=x, b=b, dy=dy)


def reference(case, block):
    """Float64 output and gradients (x, values, bias) of the dense formula."""
    bo, bi = block
    w = case["w"].detach().clone().requires_grad_()
    x = case["x"].detach().double().clone().requires_grad_()
    b = None if case["b"] is None else case["b"].detach().double().clone().requires_grad_()
    y = x @ w.T + (0 if b is None else b)
    y.backward(case["dy"].double())
    N, K = w.shape
    g_blocks = w.grad.reshape(N // bo, bo, K // bi, bi).permute(0, 2, 1, 3)[case["mask"]]  # row-major kept blocks
    return y.detach(), x.grad, g_blocks, None if b is None else b.grad


def run(case, backend, device, grads=True, **kw):
    x = case["x"].detach().to(device).clone().requires_grad_(grads)
    v = case["values"].detach().to(device).clone().requires_grad_(grads)
    b = None if case["b"] is None else case["b"].detach().to(device).clone().requires_grad_(grads)
    y = bsl.block_sparse_linear(x, case["crow"].to(device), case["col"].to(device), v, b, backend=backend, **kw)
    if not grads:
        return y, None, None, None
    y.backward(case["dy"].to(device))
    return y, x.grad, v.grad, None if b is None else b.grad


def compare(got, want, dtype, label, names=("output", "grad x", "grad values", "grad bias")):
    for name, a, r in zip(names, got, want):
        if r is None:
            continue
        assert a is not None, f"{label}{name} missing"
        assert a.shape == r.shape, f"{label}{name}: shape {tuple(a.shape)} != {tuple(r.shape)}"
        assert a.dtype == dtype, f"{label}{name}: dtype {a.dtype} != {dtype}"
        scale = r.abs().max().item() if r.numel() else 0.0
        err = (a.detach().cpu().double() - r).abs().max().item() if r.numel() else 0.0
        tol = TOL[dtype] * (scale or 1.0)
        assert err <= tol, f"{label}{name}: max abs error {err:.3e} > {TOL[dtype]:.1e} * {scale:.3e}"


BLOCKS = [(16, 16), (32, 32), (16, 32), (1, "K"), ("N", 1)]


# ----------------------------------------------------------------------------------------------------------
# Parity with the dense formula
# ----------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("backend,device", BACKENDS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16, torch.float64], ids=str)
@pytest.mark.parametrize("block", BLOCKS, ids=str)
@pytest.mark.parametrize("density", [1.0, 0.5, 0.1, "one", 0.0], ids=str)
def test_parity(backend, device, dtype, block, density):
    if backend == "triton" and dtype == torch.float64:
        pytest.skip("the Triton kernel has no float64 path (refused; see test_triton_float64)")
    N, K = 64, 96
    bs = block_shape_of(block, N, K)
    index_dtype = torch.int32 if seed_of(bs, density) % 2 else torch.int64  # both index dtypes, spread over cases
    case = make_case(N, K, bs, density, dtype, index_dtype=index_dtype)
    label = f"{backend} {bs} {density} {dtype}: "
    got = run(case, backend, device)
    compare(got, reference(case, bs), dtype, label)
    if density == 0.0:  # nothing kept: the output is the bias alone
        assert torch.equal(got[0].cpu(), case["b"].expand_as(got[0]).cpu()), label


@pytest.mark.parametrize("backend,device", BACKENDS)
@pytest.mark.parametrize("bias", [True, False], ids=["bias", "no-bias"])
def test_parity_3d_input(backend, device, bias):
    N, K, bs = 64, 96, (16, 32)
    case = make_case(N, K, bs, 0.5, torch.float32, lead=(3, 5), bias=bias)
    got = run(case, backend, device)
    assert got[0].shape == (3, 5, N)
    compare(got, reference(case, bs), torch.float32, f"{backend} 3-D: ")


@pytest.mark.parametrize("backend,device", BACKENDS)
@pytest.mark.parametrize("N,K", [(64, 0), (0, 64)], ids=["no-inputs", "no-outputs"])
def test_zero_features(backend, device, N, K):
    """A layer without inputs gives the bias (the C++ path divided by the width: a SIGFPE that killed the
    process); one without outputs an empty output."""
    gen = torch.Generator().manual_seed(N + K)
    w, b = torch.randn(N, K, generator=gen), torch.randn(N, generator=gen)
    layer = BlockSparseLinear.from_dense(w, b, (32, 32), backend=backend).to(device)
    x = torch.randn(3, 5, K, generator=gen).to(device).requires_grad_()
    y = layer(x)
    torch.testing.assert_close(y.detach().cpu(), b.expand(3, 5, N))
    y.sum().backward()
    assert x.grad.shape == x.shape and not x.grad.any()


@pytest.mark.parametrize("backend,device", BACKENDS)
def test_odd_block_shapes_and_tails(backend, device):
    """Block sides outside 16/32/64 (the generic paths), longer than 64, whole rows / columns wider than one, the
    whole matrix as one block, and a token count past every tile."""
    for (N, K, bs) in [(60, 72, (20, 12)), (64, 64, (8, 8)), (256, 128, (128, 64)), (64, 96, (4, 96)),
                       (64, 96, (64, 16)), (48, 96, (48, 96))]:
        case = make_case(N, K, bs, 0.7, torch.float32, lead=(67,))
        compare(run(case, backend, device), reference(case, bs), torch.float32, f"{backend} {bs}: ")


# ----------------------------------------------------------------------------------------------------------
# The CPU launcher's paths and determinism
# ----------------------------------------------------------------------------------------------------------
@needs_cpu_kernels
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16, torch.float64], ids=str)
@pytest.mark.parametrize("path", ["blocks", "dense"])
def test_cpu_paths(monkeypatch, dtype, path):
    """Every block shape through the C++ block kernel (any density) and through the dense fallback."""
    from bermo.kernels import block_sparse_linear_cpu as cpu

    monkeypatch.setattr(cpu, "MAX_BLOCK_DENSITY", float("inf") if path == "blocks" else -1.0)
    for (N, K, bs) in [(64, 96, (16, 16)), (64, 96, (32, 32)), (128, 128, (64, 64)), (60, 36, (20, 12)),
                       (64, 64, (1, 1)), (64, 96, (32, 16))]:
        for density in (1.0, 0.3, "one"):
            case = make_case(N, K, bs, density, dtype, lead=(61,), label=path)
            nnz = case["values"].shape[0]
            assert cpu.plan(N, K, nnz, bs) == (path if nnz else "blocks")  # no blocks: the kernel writes the bias
            got = run(case, "cpu", "cpu")
            compare(got, reference(case, bs), dtype, f"{path} {bs} {density} {dtype}: ")


@needs_cpu_kernels
@pytest.mark.parametrize("bias", [True, False], ids=["bias", "no-bias"])
def test_cpu_kernel_large_output(monkeypatch, bias):
    """An output past kStreamBytes (8 MB of float32: written with non-temporal stores where the CPU has them),
    whole microtiles written straight from the registers and a tail microtile through the tile buffer, rows with
    no kept block (the bias alone), 1 and 2 threads giving the same bits."""
    from bermo.kernels import block_sparse_linear_cpu as cpu

    monkeypatch.setattr(cpu, "MAX_BLOCK_DENSITY", float("inf"))
    N, K, bs = 1024, 64, (32, 32)
    case = make_case(N, K, bs, 0.3, torch.float32, lead=(2101,), bias=bias)
    assert 2101 * N * 4 > 8 << 20 and not case["mask"].all(1).all() and (~case["mask"]).all(1).any()
    torch.set_num_threads(1)  # (the autouse fixture restores the thread count)
    y1 = run(case, "cpu", "cpu", grads=False)[0]
    torch.set_num_threads(2)
    y2 = run(case, "cpu", "cpu", grads=False)[0]
    assert torch.equal(y1, y2)
    compare((y2,), reference(case, bs)[:1], torch.float32, "large output: ")


@needs_cpu_kernels
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
def test_cpu_kernel_keeps_negative_zero_without_bias(monkeypatch, dtype):
    """Sums that underflow to -0.0 stay -0.0 without a bias, as in the dense product (adding a zero bias would
    make them +0.0), in whole microtiles written from the registers and in the tail through the tile buffer."""
    from bermo.kernels import block_sparse_linear_cpu as cpu

    monkeypatch.setattr(cpu, "MAX_BLOCK_DENSITY", float("inf"))
    tiny = 1e-30 if dtype == torch.float32 else 1e-200
    N, K = 64, 32
    values = torch.full((2, 32, 32), tiny, dtype=dtype)
    crow, col = torch.tensor([0, 1, 2]), torch.tensor([0, 0])
    x = torch.full((37, K), -tiny, dtype=dtype)
    y = bsl.block_sparse_linear(x, crow, col, values, None, backend="cpu")
    want = x @ values.reshape(N, K).t()
    assert want.eq(0).all() and want.signbit().all()
    assert torch.equal(y.signbit(), want.signbit())


@needs_cpu_kernels
def test_cpu_plan():
    from bermo.kernels import block_sparse_linear_cpu as cpu

    assert cpu.plan(3072, 768, 226, (32, 32)) == "blocks"
    assert cpu.plan(3072, 768, 2304, (32, 32)) == "dense"  # all blocks kept
    assert cpu.plan(64, 96, 10, (4, 96)) == "rows"
    assert cpu.plan(64, 96, 10, (64, 4)) == "columns"
    # (1, 1) blocks are padded to 16 x 1 panels: 100 of 4096 cost like 1600 weights (0.39), 200 like 3200 (0.78)
    assert cpu.plan(64, 64, 100, (1, 1)) == "blocks"
    assert cpu.plan(64, 64, 200, (1, 1)) == "dense"


@needs_cpu_kernels
def test_cpu_kernel_is_deterministic_across_thread_counts():
    N, K, bs = 256, 192, (32, 32)  # large enough (~6M multiply-adds) for the kernel to use every thread
    case = make_case(N, K, bs, 0.4, torch.float32, lead=(301,))
    torch.set_num_threads(1)  # (the autouse fixture restores the thread count)
    y1 = run(case, "cpu", "cpu", grads=False)[0]
    torch.set_num_threads(2)
    y2 = run(case, "cpu", "cpu", grads=False)[0]
    y3 = run(case, "cpu", "cpu", grads=False)[0]
    assert torch.equal(y1, y2) and torch.equal(y2, y3)
    compare((y1,), reference(case, bs)[:1], torch.float32, "2 threads: ")


@needs_cpu_kernels
def test_cpu_packed_values_follow_in_place_changes(monkeypatch):
    """The launcher keeps the packed panels per values tensor; an in-place change must repack."""
    from bermo.kernels import block_sparse_linear_cpu as cpu

    monkeypatch.setattr(cpu, "MAX_BLOCK_DENSITY", float("inf"))  # the block kernel, whatever the density
    N, K, bs = 64, 96, (32, 32)
    case = make_case(N, K, bs, 0.5, torch.float32)
    v = case["values"].clone()
    args = (case["crow"], case["col"])
    y0 = bsl.block_sparse_linear(case["x"], *args, v, backend="cpu")
    with torch.no_grad():
        v.mul_(2)
    y1 = bsl.block_sparse_linear(case["x"], *args, v, backend="cpu")
    assert torch.allclose(y1, 2 * y0, rtol=1e-6, atol=1e-6)
    assert cpu.packed_values(v) is cpu.packed_values(v)  # kept between calls
    v.data = 3 * case["values"]  # new storage under the same tensor object
    y3 = bsl.block_sparse_linear(case["x"], *args, v, backend="cpu")
    assert torch.allclose(y3, 3 * y0, rtol=1e-5, atol=1e-5)
    # A module's forward packs once.
    layer = BlockSparseLinear(K, N, bs, case["crow"], case["col"], case["values"].clone(), backend="cpu")
    with torch.no_grad():
        layer(case["x"])
        packed = cpu.packed_values(layer.values)
        layer(case["x"])
        assert cpu.packed_values(layer.values) is packed
        # A write through .data bypasses the version counter (documented): clear_cache() makes it seen.
        layer.values.data.mul_(2)
        cpu.clear_cache()
        y = layer(case["x"])
    assert torch.allclose(y, case["x"] @ layer.to_dense().t(), rtol=1e-5, atol=1e-5)


# ----------------------------------------------------------------------------------------------------------
# Backends
# ----------------------------------------------------------------------------------------------------------
@pytest.mark.skipif(not HAS_TRITON, reason="Triton is not installed")
def test_triton_float64():
    case = make_case(64, 96, (32, 32), 0.5, torch.float64)
    with pytest.raises(BackendUnavailableError, match="float64"):
        run(case, "triton", TRITON_DEVICE, grads=False)


@pytest.mark.skipif(not HAS_TRITON, reason="Triton is not installed")
def test_every_launch_configuration_is_compiled():
    """Every (BN, BK, EVEN) the Triton launcher picks is one of compile_configurations()."""
    from bermo.kernels import block_sparse_linear_triton as tri

    labels = {cfg[0] for cfg in tri.compile_configurations()}
    for bs in [(16, 16), (32, 32), (16, 32), (64, 64), (128, 64), (48, 80), (1, 96), (64, 1), (20, 12), (3072, 1),
               (1, 768), (200, 300)]:
        bn, bk, even = tri.tiles(bs)
        assert bn in (16, 32, 64) and bk in (16, 32, 64)
        for dtype in ("fp16", "bf16", "fp32"):
            for bias in (True, False):
                label = (f"block_sparse_linear {dtype} BLOCK_R={tri.BM} BLOCK_C={bn} BK={bk} "
                         f"warps={tri._warps(tri.BM, bn)} bias={bias} aligned={even}")
                assert label in labels, label
    assert tri.tiles((32, 32)) == (32, 32, True) and tri.tiles((16, 64)) == (16, 64, True)
    assert tri.tiles((1, 96)) == (16, 32, False) and tri.tiles((20, 12)) == (32, 16, False)


# ----------------------------------------------------------------------------------------------------------
# The module
# ----------------------------------------------------------------------------------------------------------
def _dense_layer(N=64, K=96, bs=(32, 32), density=0.5, seed=0):
    gen = torch.Generator().manual_seed(seed)
    mask = torch.rand(N // bs[0], K // bs[1], generator=gen) < density
    w = torch.randn(N, K, generator=gen) * torch.kron(mask.float(), torch.ones(bs))
    b = torch.randn(N, generator=gen)
    return w, b, mask


@pytest.mark.parametrize("backend,device", BACKENDS)
def test_module_matches_linear(backend, device):
    w, b, mask = _dense_layer()
    layer = BlockSparseLinear.from_dense(w, b, (32, 32), backend=backend).to(device)
    x = torch.randn(2, 9, 96, generator=torch.Generator().manual_seed(1))
    y = layer(x.to(device))
    want = x.double() @ w.double().T + b.double()
    assert (y.cpu().double() - want).abs().max() <= 2e-5 * want.abs().max()
    assert layer.nnz == int(mask.sum()) and layer.density == pytest.approx(mask.float().mean().item())
    assert f"density={layer.density:.4g}" in repr(layer) and "block_shape=(32, 32)" in repr(layer)


def test_from_dense_to_dense_round_trip():
    w, b, mask = _dense_layer(density=0.6)
    layer = BlockSparseLinear.from_dense(w, b, (32, 32))  # mask None: the blocks with a nonzero weight
    assert torch.equal(layer.to_dense(), w)
    assert layer.nnz == int(mask.sum())
    assert torch.equal(layer.bias, b) and layer.bias.data_ptr() != b.data_ptr()
    # A bool mask keeps its blocks (even all-zero ones), a float mask scales them.
    dense = torch.randn(64, 96)
    bmask = torch.tensor([[True, False, True], [False, False, True]])
    layer = BlockSparseLinear.from_dense(dense, None, (32, 32), mask=bmask)
    assert layer.nnz == 3 and layer.bias is None
    assert torch.equal(layer.to_dense(), dense * torch.kron(bmask.float(), torch.ones(32, 32)))
    fmask = torch.tensor([[0.5, 0.0, 1.0], [0.0, 0.25, 0.0]])
    layer = BlockSparseLinear.from_dense(dense, None, (32, 32), mask=fmask)
    assert layer.nnz == 3
    assert torch.allclose(layer.to_dense(), dense * torch.kron(fmask, torch.ones(32, 32)))
    # Matches torch's own BSR layout.
    bsr = w.to_sparse_bsr((32, 32))
    layer = BlockSparseLinear.from_dense(w, b, (32, 32))
    assert torch.equal(layer.crow_indices.long(), bsr.crow_indices())
    assert torch.equal(layer.col_indices.long(), bsr.col_indices())
    assert torch.equal(layer.values, bsr.values())


@pytest.mark.parametrize("bs", [(1, 96), (64, 1), (16, 16)], ids=str)
def test_from_dense_rows_and_columns(bs):
    w = torch.randn(64, 96)
    mask = torch.rand(64 // bs[0], 96 // bs[1], generator=torch.Generator().manual_seed(3)) < 0.4
    layer = BlockSparseLinear.from_dense(w, None, bs, mask=mask)
    assert torch.equal(layer.to_dense(), w * torch.kron(mask.float(), torch.ones(bs)))


def test_state_dict_round_trip_and_size():
    w, b, mask = _dense_layer(N=128, K=128, density=0.25, seed=4)
    layer = BlockSparseLinear.from_dense(w, b, (32, 32))
    sd = layer.state_dict()
    assert set(sd) == {"values", "bias", "crow_indices", "col_indices"}
    assert sd["values"].numel() == layer.nnz * 32 * 32
    # Into a layer with another pattern (another nnz): values and col_indices are resized.
    other = BlockSparseLinear.from_dense(torch.randn(128, 128), torch.randn(128), (32, 32))
    assert other.nnz != layer.nnz
    other.load_state_dict(sd)
    x = torch.randn(7, 128)
    assert torch.equal(other(x), layer(x)) and other.nnz == layer.nnz
    # Through torch.save: the checkpoint's size follows the density.
    def saved_bytes(m):
        buf = io.BytesIO()
        torch.save(m.state_dict(), buf)
        return buf.tell()

    dense_layer = BlockSparseLinear.from_dense(torch.randn(128, 128), None, (32, 32))
    sparse_layer = BlockSparseLinear.from_dense(w, None, (32, 32))
    assert saved_bytes(sparse_layer) < 0.5 * saved_bytes(dense_layer)
    buf = io.BytesIO()
    torch.save(layer.state_dict(), buf)
    buf.seek(0)
    loaded = BlockSparseLinear.from_dense(torch.zeros(128, 128), torch.zeros(128), (32, 32))  # no blocks at all
    loaded.load_state_dict(torch.load(buf))
    assert torch.equal(loaded.to_dense(), w)
    # Another block shape is refused with a message naming it.
    small = BlockSparseLinear.from_dense(torch.randn(128, 128), None, (16, 16))
    with pytest.raises(RuntimeError, match="another block_shape"):
        small.load_state_dict(sd, strict=False)


def test_module_rechecks_changed_indices():
    w, b, _ = _dense_layer(density=1.0)
    layer = BlockSparseLinear.from_dense(w, b, (32, 32))
    x = torch.randn(3, 96)
    layer(x)
    with torch.no_grad():
        layer.col_indices[0] = 7
    with pytest.raises(ValueError, match="col_indices must lie in"):
        layer(x)


def test_module_rechecks_replaced_indices():
    """New index tensors (an assignment, as a load or ``.to()`` makes) are checked again at the next call, even
    with the same version counter as the tensors checked before."""
    w, b, _ = _dense_layer(density=1.0)
    layer = BlockSparseLinear.from_dense(w, b, (32, 32))
    x = torch.randn(3, 96)
    layer(x)
    bad = layer.col_indices.clone()
    bad[0] = 7  # (a new tensor, then changed: its version counter is 1, not the old one's 0)
    layer.col_indices = bad.clone()  # version 0 again, like the tensor checked before
    assert layer.col_indices._version == 0
    with pytest.raises(ValueError, match="col_indices must lie in"):
        layer(x)


def test_a_layer_built_under_inference_mode_says_why_it_is_slow(monkeypatch):
    """Inference tensors carry no version counter, so such a layer checks its indices (and, on the CPU kernel,
    packs its values) at every call: right answers, at a cost it names once; a layer built normally says nothing,
    also when called under inference_mode."""
    import bermo.nn.block_sparse_linear as module

    w, b, _ = _dense_layer()
    x = torch.randn(3, 96)
    monkeypatch.setattr(module, "_warned_inference_tensors", False)
    plain = BlockSparseLinear.from_dense(w, b, (32, 32))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with torch.inference_mode():
            plain(x)
            plain(x)
        plain(x)
    with torch.inference_mode():
        layer = BlockSparseLinear.from_dense(w, b, (32, 32))
    with pytest.warns(UserWarning, match="inference_mode.*inference tensors.*Build or load the model outside"):
        with torch.inference_mode():
            y = layer(x)
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("error")  # once per process
        y2 = layer(x)
    torch.testing.assert_close(y, x @ w.T + b, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(y2, y, rtol=0, atol=0)


@pytest.mark.parametrize("backend", ["cpu", "reference"] if HAS_NINJA else ["reference"])
def test_inference_calls_skip_autograd_and_match(backend):
    """Without gradients to record (no_grad, or nothing requiring them) a call goes to the kernels' op directly:
    the same values as a call under autograd, and no graph."""
    w, b, _ = _dense_layer()
    layer = BlockSparseLinear.from_dense(w, b, (32, 32), backend=backend)
    x = torch.randn(2, 5, 96)
    y = layer(x)
    assert y.grad_fn is not None and y.shape == (2, 5, w.shape[0])
    with torch.no_grad():
        y_nograd = layer(x)
    layer.requires_grad_(False)
    y_frozen = layer(x)
    for got in (y_nograd, y_frozen):
        assert got.grad_fn is None and not got.requires_grad
        torch.testing.assert_close(got, y.detach(), rtol=0, atol=0)
    torch.testing.assert_close(y.detach(), x @ w.T + b, rtol=1e-5, atol=1e-5)


def test_module_gradients_reach_values_and_bias():
    w, b, mask = _dense_layer()
    layer = BlockSparseLinear.from_dense(w, b, (32, 32), backend="cpu" if HAS_NINJA else "reference")
    x = torch.randn(5, 96, requires_grad=True)
    layer(x).square().sum().backward()
    wd = w.clone().requires_grad_()
    bd = b.clone().requires_grad_()
    xd = x.detach().clone().requires_grad_()
    (xd @ wd.T + bd).square().sum().backward()
    g_blocks = wd.grad.reshape(2, 32, 3, 32).permute(0, 2, 1, 3)[mask]
    assert torch.allclose(layer.values.grad, g_blocks, rtol=1e-4, atol=1e-4)
    assert torch.allclose(layer.bias.grad, bd.grad, rtol=1e-5, atol=1e-5)
    assert torch.allclose(x.grad, xd.grad, rtol=1e-4, atol=1e-4)


# ----------------------------------------------------------------------------------------------------------
# Errors
# ----------------------------------------------------------------------------------------------------------
def _good():
    case = make_case(64, 96, (32, 32), 1.0, torch.float32, lead=(4,))
    return case["x"], case["crow"], case["col"], case["values"], case["b"]


@pytest.mark.parametrize("change,error,match", [
    (lambda a: a.update(crow=a["crow"].float()), TypeError, "crow_indices must be int32 or int64"),
    (lambda a: a.update(col=a["col"].to(torch.int16)), TypeError, "col_indices must be int32 or int64"),
    (lambda a: a.update(crow=a["crow"][:-1]), ValueError, "crow_indices must have out_features // bo"),
    (lambda a: a.update(crow=a["crow"] + 1), ValueError, "crow_indices must start at 0"),
    (lambda a: a.update(crow=torch.tensor([0, 4, 3])), ValueError, "non-decreasing"),
    (lambda a: a.update(crow=torch.tensor([0, 3, 5])), ValueError, "must end at nnz = 6"),
    (lambda a: a.update(col=torch.tensor([0, 1, 3, 0, 1, 2])), ValueError, r"must lie in \[0, in_features // bi\)"),
    (lambda a: a.update(col=torch.tensor([0, 1, 2, 0, 2, 1])), ValueError, "strictly increasing within a block row"),
    (lambda a: a.update(col=torch.tensor([0, 1, 1, 0, 1, 2])), ValueError, "block row 0 has col_indices"),
    (lambda a: a.update(values=a["values"].reshape(6, 1024)), ValueError, "values must be 3-D"),
    (lambda a: a.update(values=a["values"][:5]), ValueError, "col_indices has 6 entries but values has 5"),
    (lambda a: a.update(values=a["values"].double()), TypeError, "x and values must share"),
    (lambda a: a.update(values=a["values"][:, :, :20].contiguous()), ValueError, "does not divide in_features"),
    (lambda a: a.update(b=a["b"][:10]), ValueError, r"bias must have shape \(64,\)"),
    (lambda a: a.update(x=a["x"][:, :50]), ValueError, "does not divide in_features = 50|col_indices must lie"),
    (lambda a: a.update(x=a["x"].to("meta")), ValueError, "is on cpu but x is on meta"),
    (lambda a: a.update(x=a["x"].tolist()), TypeError, "x must be a torch.Tensor"),
])
def test_bad_inputs(change, error, match):
    x, crow, col, values, b = _good()
    args = dict(x=x, crow=crow, col=col, values=values, b=b)
    change(args)
    with pytest.raises(error, match=match):
        bsl.block_sparse_linear(args["x"], args["crow"], args["col"], args["values"], args["b"], out_features=64,
                                backend="reference")


def test_bad_feature_counts():
    x, crow, col, values, b = _good()
    with pytest.raises(ValueError, match="out_features = 32 but crow_indices has 2 block rows"):
        bsl.block_sparse_linear(x, crow, col, values, b, out_features=32)
    with pytest.raises(ValueError, match="x's last dimension must be in_features = 64"):
        bsl.block_sparse_linear(x, crow, col, values, b, in_features=64)
    with pytest.raises(ValueError, match="unknown bermo backend"):
        bsl.block_sparse_linear(x, crow, col, values, b, backend="cuda")


def test_module_errors():
    w = torch.randn(64, 96)
    with pytest.raises(ValueError, match=r"block_shape \(32, 40\) does not divide the weight's shape"):
        BlockSparseLinear.from_dense(w, None, (32, 40))
    with pytest.raises(TypeError, match="block_shape must be a pair"):
        BlockSparseLinear.from_dense(w, None, 32)
    with pytest.raises(ValueError, match=r"mask must hold one value per 32x32 block .* shape \(2, 3\); got \(3, 2\)"):
        BlockSparseLinear.from_dense(w, None, (32, 32), mask=torch.ones(3, 2, dtype=torch.bool))
    with pytest.raises(TypeError, match="mask must be bool or floating point"):
        BlockSparseLinear.from_dense(w, None, (32, 32), mask=torch.ones(2, 3, dtype=torch.int64))
    with pytest.raises(ValueError, match="weight must be a 2-D tensor"):
        BlockSparseLinear.from_dense(w[0], None, (32, 32))
    layer = BlockSparseLinear.from_dense(w, None, (32, 32))
    with pytest.raises(ValueError, match=r"values must hold \(16, 32\) blocks"):
        BlockSparseLinear(96, 64, (16, 32), torch.tensor([0, 0, 0, 0, 0]), layer.col_indices[:0], layer.values[:0])
    with pytest.raises(ValueError, match="crow_indices must have out_features // bo"):
        BlockSparseLinear(96, 32, (32, 32), layer.crow_indices, layer.col_indices, layer.values)
    with pytest.raises(ValueError, match="bias must have shape"):
        BlockSparseLinear(96, 64, (32, 32), layer.crow_indices, layer.col_indices, layer.values, torch.zeros(3))
    with pytest.raises(ValueError, match="col_indices must lie in"):
        BlockSparseLinear(96, 64, (32, 32), layer.crow_indices, layer.col_indices + 3, layer.values)
    with pytest.raises(TypeError, match="x and values must share"):
        layer(torch.randn(2, 96, dtype=torch.float64))


@pytest.mark.parametrize("backend,device", BACKENDS)
def test_strided_bias(backend, device):
    """A bias that is a strided view gives the contiguous bias's result (the kernels read it with unit stride)."""
    gen = torch.Generator().manual_seed(3)
    mask = torch.tensor([[True, False], [True, True]])
    w = torch.randn(64, 64, generator=gen) * torch.kron(mask.float(), torch.ones(32, 32))
    b = torch.randn(128, generator=gen, device="cpu").to(device)[::2]
    x = torch.randn(5, 64, generator=gen).to(device)
    layer = BlockSparseLinear.from_dense(w.to(device), b.contiguous(), (32, 32), mask=mask.to(device))
    crow, col, values = layer.crow_indices, layer.col_indices, layer.values
    assert not b.is_contiguous()
    y = bsl.block_sparse_linear(x, crow, col, values, b, backend=backend)
    want = x.double() @ w.double().to(device).T + b.double()
    assert (y.double() - want).abs().max().item() <= 1e-4 * want.abs().max().item()


def test_to_dense_checks_the_indices_like_the_forward():
    """After a load with an out-of-range column, to_dense() built a silently wrong weight (the forward refused).
    The load itself refuses them now (a compiled forward does not check), but leaves them loaded, as torch does."""
    mask = torch.tensor([[1, 0], [1, 1], [0, 1]], dtype=torch.bool)
    layer = BlockSparseLinear.from_dense(torch.randn(48, 32), None, (16, 16), mask=mask)
    state = {k: v.clone() for k, v in layer.state_dict().items()}
    state["col_indices"][0] = 2
    with pytest.raises(RuntimeError, match=r"col_indices must lie in \[0, in_features // bi\) = \[0, 2\)"):
        layer.load_state_dict(state)
    with pytest.raises(ValueError, match=r"col_indices must lie in \[0, in_features // bi\) = \[0, 2\)"):
        layer.to_dense()


def test_built_on_the_meta_device_then_loaded():
    """The usual skeleton-on-meta, to_empty, load pattern: the constructor read the meta indices' values and failed
    with torch's "Cannot copy out of meta tensor"."""
    src = BlockSparseLinear.from_dense(*_dense_layer(N=64, K=96, density=0.5, seed=3)[:2], (32, 32))
    with torch.device("meta"):
        layer = BlockSparseLinear(96, 64, (32, 32), torch.zeros(3, dtype=torch.int64),
                                  torch.zeros(0, dtype=torch.int64), torch.zeros(0, 32, 32), torch.zeros(64))
    layer = layer.to_empty(device="cpu")
    state = src.state_dict()
    # a partial load (strict=False) that brings no indices leaves them unchecked until the load that does
    layer.load_state_dict({"bias": state["bias"]}, strict=False)
    layer.load_state_dict(state)
    x = torch.randn(5, 96)
    assert torch.equal(layer(x), src(x)) and layer.nnz == src.nnz


@needs_cpu_kernels
def test_compiled_cpu_forward_refuses_out_of_range_indices():
    """A compiled forward skips the module's index check (no host read in a graph): an index corrupted in place
    then made the C++ kernel read outside x silently. The kernel checks the bounds itself (O(nnz))."""
    mask = torch.zeros(4, 4, dtype=torch.bool)
    mask[0, 0] = mask[1, 1] = True
    layer = BlockSparseLinear.from_dense(torch.randn(64, 64), None, (16, 16), mask=mask, backend="cpu")
    x = torch.randn(4, 64)
    compiled = torch.compile(layer, backend="eager", fullgraph=True)
    assert torch.allclose(compiled(x), x @ layer.to_dense().t(), atol=1e-5)
    with torch.no_grad():
        layer.col_indices[1] = 7
    with pytest.raises(RuntimeError, match=r"col_indices must lie in \[0, 4\); col_indices\[1\] = 7"):
        compiled(x)
