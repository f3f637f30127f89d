"""The masked-linear Triton launchers' machinery (the interpreter without a GPU, CUDA with one): the choice of path
(block-skipping or dense) and its density hint, the kept-tile lists built on the device (by their own launch or
inside the product), the weight-gradient epilogue's block sums at every granularity on both paths, the bias
gradient fused into the kept-tiles pass (a pruned first tile column included); and, on a GPU only,
BERT-base-sized parity on both paths, CUDA-graph capture of a whole training step, and BlockSparseLinear at an
FFN shape."""
import importlib
import warnings
import zlib

import pytest
import torch

from conftest import HAS_CUDA, HAS_TRITON, TRITON_DEVICE

pytestmark = pytest.mark.skipif(not HAS_TRITON, reason="Triton is not installed")
ml = importlib.import_module("bermo.ops.masked_linear")
DEV = TRITON_DEVICE
TOL = {torch.float32: 2e-5, torch.bfloat16: 2e-2, torch.float16: 3e-3}


def _tri():
    from bermo.kernels import masked_linear_triton as tri
    return tri


def _case(T, N, K, block, density, dtype, seed, mask_kind="bool", zero_first_col=False):
    gen = torch.Generator().manual_seed(seed)
    bo, bi = block
    x = torch.randn(T, K, generator=gen).to(dtype)
    w = (torch.randn(N, K, generator=gen) / K ** 0.5).to(dtype)
    b = torch.randn(N, generator=gen).to(dtype)
    mask = torch.rand(N // bo, K // bi, generator=gen) < density
    if zero_first_col:
        mask[:, : max(1, 64 // bi)] = False
    if mask_kind == "float":
        mask = torch.rand(mask.shape, generator=gen) * mask
    dy = torch.randn(T, N, generator=gen).to(dtype)
    return x, w, b, mask, dy


def _reference(x, w, b, mask, block, dy):
    leaves = [t.detach().double().requires_grad_() for t in (x, w, b, mask)]
    x64, w64, b64, m64 = leaves
    y = x64 @ (w64 * torch.kron(m64, torch.ones(block, dtype=torch.float64))).T + b64
    y.backward(dy.double())
    return [y.detach()] + [t.grad for t in leaves]


def _run(x, w, b, mask, block, dy, mask_grad, device=DEV, density=None):
    xs, ws, bs = (t.detach().to(device).requires_grad_() for t in (x, w, b))
    ms = mask.detach().to(device)
    if mask_grad:
        ms.requires_grad_()
    y = ml.masked_linear(xs, ws, ms, bs, block, backend="triton", density=density)
    y.backward(dy.to(device))
    return [y, xs.grad, ws.grad, bs.grad, ms.grad if mask_grad else None]


def _compare(got, want, dtype, label):
    for name, a, r in zip(["output", "grad x", "grad weight", "grad bias", "grad mask"], got, want):
        if a is None:
            continue
        scale = r.abs().max().item() or 1.0
        tol = TOL[dtype] * (4 if name == "grad mask" else 1) * scale
        err = (a.detach().cpu().double() - r).abs().max().item()
        assert err <= tol, f"{label}{name}: max abs error {err:.3e} > {tol:.3e}"


@pytest.mark.parametrize("block,tile", [((32, 32), 32), ((16, 32), 16), ((64, 128), 64), ((32, 64), 32)], ids=str)
@pytest.mark.parametrize("transpose", [False, True], ids=["rows", "columns"])
def test_kept_tile_lists(block, tile, transpose):
    tri = _tri()
    N, K = 256, 384
    gen = torch.Generator().manual_seed(zlib.crc32(repr((block, tile, transpose)).encode()))
    mask = (torch.rand(N // block[0], K // block[1], generator=gen) < 0.4).float()
    mask[0] = 0  # an empty row of blocks
    lists = tri.kept_tiles(mask.to(DEV), block, tile, (N, K), transpose)
    keep = mask.repeat_interleave(block[0] // tile, 0).repeat_interleave(block[1] // tile, 1) != 0
    if transpose:
        keep = keep.t()
    order, count = tri.tile_lists(lists.cpu(), keep.shape[0], keep.shape[1])
    for r in range(keep.shape[0]):
        want = torch.nonzero(keep[r]).flatten().tolist()
        assert int(count[r]) == len(want), r
        assert order[r, :len(want)].tolist() == want, r


def test_path_choice():
    from bermo.kernels import masked_linear_paths as paths

    assert [paths.sparse_tile(b) for b in [(32, 32), (16, 64), (64, 128), (48, 48), (1, 1), (1, 768), (20, 12)]] \
        == [32, 16, 64, 16, None, None, None]
    assert not paths.uses_dense_path((32, 32), None) and not paths.uses_dense_path((32, 32), paths.DENSE_FROM / 2)
    assert paths.uses_dense_path((32, 32), paths.DENSE_FROM) and paths.uses_dense_path((32, 32), 1.0)
    assert paths.uses_dense_path((1, 1), None) and paths.uses_dense_path((1, 768), 0.1)
    x, w, m = torch.randn(3, 64), torch.randn(32, 64), torch.ones(1, 2)
    for bad in (1.5, -0.1, "dense", float("nan")):
        with pytest.raises(ValueError, match="density"):
            ml.masked_linear(x, w, m, None, (32, 32), backend="reference", density=bad)


@pytest.mark.parametrize("list_in_kernel", [False, True], ids=["list-launch", "list-in-kernel"])
@pytest.mark.parametrize("transpose", [False, True], ids=["forward", "grad-input"])
@pytest.mark.parametrize("N,K", [(96, 128), (64, 2112)], ids=["small", "past-a-list-chunk"])
def test_sparse_product_lists(list_in_kernel, transpose, N, K):
    """Both ways to list the kept tiles (their own launch; inside the product, with a list chunk the row just
    fits or overflows into the next one) against float64, with a continuous mask and an empty block row."""
    tri = _tri()
    T = 70
    x, w, b, mask, dy = _case(T, N, K, (32, 32), 0.5, torch.float32, seed=21 + transpose, mask_kind="float")
    mask[1] = 0  # an empty row of blocks
    wm = w.double() * torch.kron(mask.double(), torch.ones(32, 32, dtype=torch.float64))
    if transpose:
        got = tri.sparse_mm(dy.to(DEV), w.to(DEV), mask.to(DEV), None, (32, 32), True, None, list_in_kernel)
        want = dy.double() @ wm
    else:
        got = tri.sparse_mm(x.to(DEV), w.to(DEV), mask.to(DEV), b.to(DEV), (32, 32), False, None, list_in_kernel)
        want = x.double() @ wm.T + b.double()
    err = (got.cpu().double() - want).abs().max().item()
    assert err <= 2e-5 * want.abs().max().item(), err


def test_list_chunks():
    tri = _tri()
    assert [tri.list_chunk(n) for n in (1, 24, 64, 65, 96, 256, 1024, 1025)] == [64, 64, 64, 256, 256, 256, 1024, 0]


@pytest.mark.parametrize("density_hint", [None, 1.0], ids=["hint-none", "hint-dense"])
@pytest.mark.parametrize("block", [(32, 32), (1, 1), (1, "K"), (16, 32), (20, 12), (64, 64), ("N", 1)], ids=str)
def test_grad_weight_epilogue_granularities(density_hint, block):
    """The mask gradient's block sums at every granularity the epilogue takes ((g, g), (1, g), (g, 1), (1, 1)
    with a host fold when finer than the block), on the block-skipping and the dense path."""
    N, K, T = 320, 192, 70
    bs = (N if block[0] == "N" else block[0], K if block[1] == "K" else block[1])
    dtype = torch.float32
    x, w, b, mask, dy = _case(T, N, K, bs, 0.5, dtype, seed=zlib.crc32(repr((density_hint, block)).encode()),
                              mask_kind="float")
    got = _run(x, w, b, mask, bs, dy, mask_grad=True, density=density_hint)
    _compare(got, _reference(x, w, b, mask, bs, dy), dtype, f"{bs} hint {density_hint}: ")


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16], ids=str)
@pytest.mark.parametrize("mask_grad", [False, True], ids=["bool-mask", "float-mask"])
def test_dense_path_for_block_masks(dtype, mask_grad):
    """A block-aligned mask with a dense hint takes the dense path (W * M materialised, then the vendor GEMM)
    and agrees with float64 in every dtype; so does the block-skipping path on the same case."""
    x, w, b, mask, dy = _case(40, 64, 96, (32, 32), 0.6, dtype, seed=31 + mask_grad,
                              mask_kind="float" if mask_grad else "bool")
    want = _reference(x, w, b, mask.float(), (32, 32), dy)
    for hint in (1.0, None):
        got = _run(x, w, b, mask if mask_grad else mask.bool(), (32, 32), dy, mask_grad=mask_grad, density=hint)
        _compare(got, want, dtype, f"hint {hint}: ")


@pytest.mark.parametrize("block", [(32, 32), (16, 16), (1, 1)], ids=str)
def test_bias_gradient_with_a_pruned_first_tile_column(block):
    """Without the mask gradient, with the first columns of blocks pruned: grad W zero there, the bias gradient
    still the sum of dY."""
    dtype = torch.float32
    x, w, b, mask, dy = _case(50, 96, 128, block, 0.6, dtype, seed=11, zero_first_col=True)
    got = _run(x, w, b, mask, block, dy, mask_grad=False)
    _compare(got, _reference(x, w, b, mask, block, dy), dtype, f"{block}: ")


@pytest.mark.parametrize("M", [0, 1, 63, 65, 1100, 2000])
@pytest.mark.parametrize("need_mask_grad", [False, True], ids=["no-mask-grad", "mask-grad"])
def test_bias_gradient_row_chunks(M, need_mask_grad):
    """The bias gradient's column sums run in the epilogue launch, in row chunks the host adds up: every row
    counted once for token counts below, at and past the chunking's edges (and none at all)."""
    tri = _tri()
    N, K = 96, 64
    gen = torch.Generator().manual_seed(M)
    dy, x = torch.randn(M, N, generator=gen), torch.randn(M, K, generator=gen)
    w, mask = torch.randn(N, K, generator=gen), (torch.rand(N // 32, K // 32, generator=gen) < 0.5).float()
    gw, gm, gb = tri.grad_weight(dy.to(DEV), x.to(DEV), w.to(DEV), mask.to(DEV), (32, 32), need_mask_grad, True)
    want = dy.double().sum(0)
    assert (gb.cpu().double() - want).abs().max().item() <= 1e-5 * max(1.0, want.abs().max().item())
    g = dy.double().t() @ x.double()
    want_gw = g * torch.kron(mask.double(), torch.ones(32, 32, dtype=torch.float64))
    assert (gw.cpu().double() - want_gw).abs().max().item() <= 1e-4 * max(1.0, g.abs().max().item())
    assert (gm is not None) == need_mask_grad


@pytest.mark.parametrize("hint", [None, 1.0], ids=["block-skipping", "dense"])
def test_non_contiguous_inputs_on_both_paths(hint):
    """A strided bias, weight and x (views) give the contiguous result on either path."""
    dtype = torch.float32
    x, w, b, mask, dy = _case(33, 64, 96, (32, 32), 0.5, dtype, seed=14)
    xs = torch.randn(33, 192, device=DEV)[:, ::2].copy_(x)
    ws = torch.randn(96, 64, device=DEV).t().copy_(w)
    bs = torch.randn(128, device=DEV)[::2].copy_(b)
    assert not (xs.is_contiguous() or ws.is_contiguous() or bs.is_contiguous())
    y = ml.masked_linear(xs, ws, mask.to(DEV), bs, (32, 32), backend="triton", density=hint)
    want = _reference(x, w, b, mask, (32, 32), dy)[0]
    _compare([y], [want], dtype, f"hint {hint}: ")


def test_bias_not_requiring_grad():
    dtype = torch.float32
    x, w, b, mask, dy = _case(33, 64, 96, (32, 32), 0.5, dtype, seed=12)
    xs, ws = x.detach().to(DEV).requires_grad_(), w.detach().to(DEV).requires_grad_()
    y = ml.masked_linear(xs, ws, mask.to(DEV), b.to(DEV), (32, 32), backend="triton")
    y.backward(dy.to(DEV))
    want = _reference(x, w, b, mask, (32, 32), dy)
    _compare([y, xs.grad, ws.grad], want[:3], dtype, "")


# ------------------------------------------------------------------------------------------------ GPU only
gpu = pytest.mark.skipif(not HAS_CUDA, reason="needs a CUDA GPU")


@gpu
@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32], ids=str)
@pytest.mark.parametrize("block,density,hint", [((32, 32), 0.1, None), ((32, 32), 1.0, None), ((32, 32), 1.0, 1.0),
                                                ((64, 64), 0.1, 0.1), ((1, 1), 0.5, None), ((1, "K"), 0.3, None)],
                         ids=str)
@pytest.mark.parametrize("shape", [(768, 3072), (3072, 768), (768, 768)], ids=str)
def test_bert_base_parity_on_gpu(dtype, block, density, hint, shape):
    N, K = shape
    bs = (block[0], K if block[1] == "K" else block[1])
    x, w, b, mask, dy = _case(1000, N, K, bs, density, dtype, seed=zlib.crc32(repr((shape, block)).encode()),
                              mask_kind="float")
    got = _run(x, w, b, mask, bs, dy, mask_grad=True, device="cuda", density=hint)
    _compare(got, _reference(x, w, b, mask, bs, dy), dtype, f"{shape} {bs} {density}: ")


@gpu
@pytest.mark.gpu
@pytest.mark.parametrize("block,hint", [((32, 32), None), ((32, 32), 1.0), ((1, 1), None)], ids=str)
def test_training_step_is_capturable_in_a_cuda_graph(block, hint):
    """No host sync anywhere in a call: the whole step (forward, every gradient) replays from a CUDA graph with
    the eager call's results, bit for bit."""
    x, w, b, mask, dy = _case(512, 384, 256, block, 0.3, torch.bfloat16, seed=13, mask_kind="float")
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):  # leaves first used on the capturing stream (see benchmarks/masked_linear.py)
        leaves = [t.cuda().requires_grad_() for t in (x, w, b, mask)]
        dyc = dy.cuda()

        def step():
            y = ml.masked_linear(*leaves[:2], leaves[3], leaves[2], block, backend="triton", density=hint)
            return (y,) + torch.autograd.grad(y, leaves, dyc)

        eager = [t.clone() for t in step()]
        step()
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, stream=stream):
            out = step()
    torch.cuda.current_stream().wait_stream(stream)
    with torch.no_grad():
        for t in out[1:]:  # (the output is a view made by the autograd Function: not written in place)
            t.fill_(float("nan"))
    graph.replay()
    torch.cuda.synchronize()
    for a, e in zip(out, eager):
        assert torch.equal(a, e)


@gpu
@pytest.mark.gpu
@pytest.mark.parametrize("block", [16, 32, 64])
def test_block_sparse_linear_ffn_shape_on_gpu(block):
    from bermo.nn import BlockSparseLinear

    gen = torch.Generator().manual_seed(block)
    N, K, T = 3072, 768, 1000
    mask = torch.rand(N // block, K // block, generator=gen) < 0.1
    w = (torch.randn(N, K, generator=gen) / K ** 0.5) * torch.kron(mask.float(), torch.ones(block, block))
    b, x = torch.randn(N, generator=gen), torch.randn(T, K, generator=gen)
    want = x.double() @ w.double().T + b.double()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        layer = BlockSparseLinear.from_dense(w.cuda().bfloat16(), b.cuda().bfloat16(), (block, block),
                                             mask=mask.cuda())
    xc = x.cuda().bfloat16()
    with torch.no_grad():
        y = layer(xc)
        err = (y.double().cpu() - want).abs().max().item() / want.abs().max().item()
        assert err <= 2e-2
        graph = torch.cuda.CUDAGraph()
        layer(xc)
        torch.cuda.synchronize()
        with torch.cuda.graph(graph):
            out = layer(xc)
        graph.replay()
        torch.cuda.synchronize()
        assert torch.equal(out, y)
