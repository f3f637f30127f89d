"""The masked linear CPU launchers (kernels/masked_linear_cpu.py) against a float64 eager reference, path by path.

Every path of every function is forced in turn (the density thresholds are patched), so the C++ block kernels,
the row / column gathers and the dense composite are each checked on the same cases. Tolerances are relative
to the largest reference value (one rounding to the output dtype); the mask gradient, a block sum in the
accumulation dtype, is measured against the sum of its terms' magnitudes.
"""
from __future__ import annotations

import pytest
import torch

from helpers import assert_rounds_to_nearest, needs_cpu_kernels

pytestmark = needs_cpu_kernels

DTYPES = [torch.float32, torch.bfloat16, torch.float16, torch.float64]
# Outputs rounded once to their dtype (the 16-bit ones from float32 sums).
TOL = {torch.float64: 1e-12, torch.float32: 1e-5, torch.bfloat16: 1e-2, torch.float16: 2e-3}
# Block sums in the accumulation dtype, relative to the sum of the terms' magnitudes.
ACC_TOL = {torch.float64: 1e-13, torch.float32: 2e-6}

# (block shape, weight shape (N, K), paths it can take); "rows"/"columns" stand for (1, K) / (N, 1).
SHAPES = [
    ((16, 16), (48, 64), ("blocks", "dense")),
    ((32, 32), (96, 64), ("blocks", "dense")),
    ((64, 64), (128, 192), ("blocks", "dense")),
    ((16, 32), (48, 96), ("blocks", "dense")),
    ((48, 80), (96, 160), ("blocks", "dense")),  # sides multiple of 16 but not a power of two
    ((128, 16), (256, 48), ("blocks", "dense")),  # block taller than the mask-gradient row chunks (64)
    ((1, 1), (40, 56), ("dense",)),
    ("rows", (40, 56), ("rows", "dense")),
    ("columns", (40, 56), ("columns", "dense")),
]
CASES = [pytest.param(bs, nk, path, id=f"{bs if isinstance(bs, str) else '%dx%d' % bs}-{path}")
         for bs, nk, paths in SHAPES for path in paths]
DENSITIES = ["full", "half", "half-l0", "tenth-l0", "one", "none"]
T_DEFAULT = 133  # a full token block of the forward kernels (96) and a ragged tail, three grad_weight steps


def _block_shape(bs, N, K):
    return {"rows": (1, K), "columns": (N, 1)}.get(bs, bs) if isinstance(bs, str) else bs


@pytest.fixture
def ml():
    from bermo.kernels import masked_linear_cpu

    return masked_linear_cpu


def force(monkeypatch, ml, path):
    """Make the launchers take ``path`` wherever the block shape allows it."""
    blocks = 2.0 if path == "blocks" else -1.0
    monkeypatch.setattr(ml, "MAX_BLOCK_DENSITY", {k: blocks for k in ("forward", "grad_input", "grad_weight")})
    monkeypatch.setattr(ml, "MAX_BLOCK_DENSITY_AMX_BF16", {k: blocks for k in ("forward", "grad_input", "grad_weight")})
    monkeypatch.setattr(ml, "MAX_GATHER_DENSITY", 2.0 if path in ("rows", "columns") else -1.0)


def make_mask(shape, kind, acc, gen):
    n = shape[0] * shape[1]
    mask = torch.zeros(n, dtype=acc)
    if kind == "full":
        return torch.ones(shape, dtype=acc)
    if kind == "one":
        mask[torch.randint(n, (1,), generator=gen)] = 0.7
        return mask.view(shape)
    if kind == "none":
        return mask.view(shape)
    frac = {"half": 0.5, "half-l0": 0.5, "tenth-l0": 0.1}[kind]
    keep = torch.randperm(n, generator=gen)[:max(1, round(frac * n))]
    values = torch.rand(keep.numel(), generator=gen, dtype=torch.float64) * 0.9 + 0.1 if "l0" in kind else 1.0
    mask[keep] = torch.as_tensor(values, dtype=acc)
    return mask.view(shape)


def make_case(dtype, N, K, block_shape, kind, T=T_DEFAULT, seed=0, bias=True):
    gen = torch.Generator().manual_seed(seed)
    acc = torch.float64 if dtype == torch.float64 else torch.float32
    bo, bi = block_shape
    x = torch.randn(T, K, generator=gen, dtype=torch.float64).to(dtype)
    w = (torch.randn(N, K, generator=gen, dtype=torch.float64) / K ** 0.5).to(dtype)
    b = torch.randn(N, generator=gen, dtype=torch.float64).to(dtype) if bias else None
    dy = torch.randn(T, N, generator=gen, dtype=torch.float64).to(dtype)
    mask = make_mask((N // bo, K // bi), kind, acc, gen)
    return x, w, b, dy, mask


def expand(mask, bo, bi):
    return mask.double().repeat_interleave(bo, 0).repeat_interleave(bi, 1)


def reference(x, w, b, dy, mask, bo, bi):
    """float64, autograd-free: y, dx, G, grad_weight, grad_mask and the magnitudes behind each block sum."""
    me = expand(mask, bo, bi)
    wm = w.double() * me
    y = x.double() @ wm.T + (0 if b is None else b.double())
    dx = dy.double() @ wm
    g = dy.double().T @ x.double()
    N, K = w.shape
    blocksum = lambda t: t.view(N // bo, bo, K // bi, bi).sum((1, 3))
    gm = blocksum(g * w.double())
    gm_scale = blocksum((dy.double().abs().T @ x.double().abs()) * w.double().abs())
    return dict(y=y, dx=dx, g=g, gw=g * me, gm=gm, gm_scale=gm_scale)


def close(actual, expected, tol, scale=None, what=""):
    assert actual.shape == expected.shape, f"{what}: shape {tuple(actual.shape)} != {tuple(expected.shape)}"
    if scale is None:
        scale = expected.abs().max().item() if expected.numel() else 1.0
    scale = max(scale, 1e-30)
    err = (actual.double() - expected).abs().max().item() if expected.numel() else 0.0
    assert err <= tol * scale, f"{what}: max abs error {err:.3e} > {tol:.1e} * {scale:.3e}"


def check_all(ml, x, w, b, dy, mask, block_shape, ref=None):
    bo, bi = block_shape
    dtype = x.dtype
    acc = mask.dtype
    ref = ref or reference(x, w, b, dy, mask, bo, bi)
    y = ml.forward(x, w, mask, b, block_shape)
    assert y.dtype == dtype
    close(y, ref["y"], TOL[dtype], what="forward")
    dx = ml.grad_input(dy, w, mask, block_shape)
    assert dx.dtype == dtype
    close(dx, ref["dx"], TOL[dtype], what="grad_input")
    gw, gm = ml.grad_weight(dy, x, w, mask, block_shape, True)
    assert gw.dtype == dtype and gm.dtype == acc
    close(gw, ref["gw"], TOL[dtype], what="grad_weight (with mask grad)")
    close(gm, ref["gm"], ACC_TOL[acc], scale=ref["gm_scale"].max().item(), what="grad_mask")
    gw2, none = ml.grad_weight(dy, x, w, mask, block_shape, False)
    assert none is None and gw2.dtype == dtype
    close(gw2, ref["gw"], TOL[dtype], what="grad_weight (kept blocks only)")
    # zero mask blocks give exactly zero weight gradients
    assert torch.all(gw2.double()[expand(mask, bo, bi) == 0] == 0)
    return y, dx, gw, gm, gw2


@pytest.mark.parametrize("kind", DENSITIES)
@pytest.mark.parametrize("bs,nk,path", CASES)
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: str(d).split(".")[-1])
def test_parity(ml, monkeypatch, dtype, bs, nk, path, kind):
    N, K = nk
    block_shape = _block_shape(bs, N, K)
    force(monkeypatch, ml, path)
    x, w, b, dy, mask = make_case(dtype, N, K, block_shape, kind)
    for function in ("forward", "grad_input", "grad_weight"):
        assert ml.plan(function, w.shape, block_shape, mask, dtype) == path
    check_all(ml, x, w, b, dy, mask, block_shape)


@pytest.mark.parametrize("T", [0, 1, 5, 12, 97])
@pytest.mark.parametrize("path", ["blocks", "dense"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float64], ids=lambda d: str(d).split(".")[-1])
def test_token_counts(ml, monkeypatch, dtype, path, T):
    """Fewer tokens than one microtile, exactly one, a token block and one more, and none at all."""
    force(monkeypatch, ml, path)
    for block_shape, nk in [((32, 32), (64, 96)), ((16, 64), (32, 128)), ((64, 16), (128, 32))]:
        x, w, b, dy, mask = make_case(dtype, *nk, block_shape, "half-l0", T=T, seed=T)
        check_all(ml, x, w, b, dy, mask, block_shape)


@pytest.mark.parametrize("path", ["blocks", "dense"])
def test_no_bias(ml, monkeypatch, path):
    force(monkeypatch, ml, path)
    x, w, b, dy, mask = make_case(torch.float32, 64, 96, (32, 32), "half", bias=False)
    y = ml.forward(x, w, mask, None, (32, 32))
    close(y, reference(x, w, None, dy, mask, 32, 32)["y"], TOL[torch.float32], what="forward without bias")


@pytest.mark.parametrize("path,bs", [("blocks", (32, 32)), ("blocks", (16, 64)), ("rows", "rows"),
                                     ("columns", "columns")])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=lambda d: str(d).split(".")[-1])
def test_zero_blocks_never_read(ml, monkeypatch, dtype, path, bs):
    """NaN weights under zero mask values: the sparse paths never read them (NaN * 0 would poison the output);
    the mask gradient of those blocks is the only place they show."""
    force(monkeypatch, ml, path)
    N, K = 96, 128
    block_shape = _block_shape(bs, N, K)
    bo, bi = block_shape
    x, w, b, dy, mask = make_case(dtype, N, K, block_shape, "half-l0")
    dropped = expand(mask, bo, bi) == 0
    ref = reference(x, w, b, dy, mask, bo, bi)
    w_nan = w.clone()
    w_nan[dropped] = float("nan")
    close(ml.forward(x, w_nan, mask, b, block_shape), ref["y"], TOL[dtype], what="forward")
    close(ml.grad_input(dy, w_nan, mask, block_shape), ref["dx"], TOL[dtype], what="grad_input")
    gw, _ = ml.grad_weight(dy, x, w_nan, mask, block_shape, False)
    close(gw, ref["gw"], TOL[dtype], what="grad_weight")
    gw, gm = ml.grad_weight(dy, x, w_nan, mask, block_shape, True)
    close(gw, ref["gw"], TOL[dtype], what="grad_weight (with mask grad)")
    kept = mask != 0
    close(gm[kept], ref["gm"][kept], ACC_TOL[mask.dtype], scale=ref["gm_scale"].max().item(), what="grad_mask")
    assert torch.isnan(gm[~kept]).all()


@pytest.mark.parametrize("kind", ["half", "half-l0"])
@pytest.mark.parametrize("path", ["blocks", "dense"])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=lambda d: str(d).split(".")[-1])
def test_16bit_rounded_once(ml, monkeypatch, dtype, path, kind):
    """16-bit results are the float32 sums (bias included) rounded once to nearest: the block kernels; the
    dense float32 product (float mask values); torch's 16-bit product (binary masks, W * M exact in 16 bits)."""
    force(monkeypatch, ml, path)
    x, w, b, dy, mask = make_case(dtype, 64, 128, (32, 32), kind)
    assert ml.product_dtype(dtype, mask) == (dtype if kind == "half" else torch.float32)
    ref = reference(x, w, b, dy, mask, 32, 32)
    assert_rounds_to_nearest(ml.forward(x, w, mask, b, (32, 32)), ref["y"])
    assert_rounds_to_nearest(ml.grad_input(dy, w, mask, (32, 32)), ref["dx"])
    assert_rounds_to_nearest(ml.grad_weight(dy, x, w, mask, (32, 32), False)[0], ref["gw"])
    assert_rounds_to_nearest(ml.grad_weight(dy, x, w, mask, (32, 32), True)[0], ref["gw"])


# Shapes big enough that every path splits its work over several tasks (the dense products over several BLAS
# tiles; the (1000, 64 x 1024) gradient is one a multi-threaded BLAS call sums differently on 1 and 2 threads,
# the bfloat16 product with a binary mask one oneDNN did before each tile pinned its thread count).
DETERMINISM = [
    ("blocks", (32, 32), (256, 320), 300, torch.float32, "half-l0"),
    ("blocks", (16, 64), (256, 320), 300, torch.bfloat16, "half-l0"),
    ("blocks", (64, 32), (256, 320), 300, torch.float64, "half-l0"),
    ("dense", (32, 32), (1088, 96), 1030, torch.float32, "half-l0"),
    ("dense", (16, 16), (64, 1024), 1000, torch.float32, "half-l0"),
    ("dense", (32, 32), (768, 3072), 1024, torch.bfloat16, "half"),
    ("dense", (1, 1), (128, 160), 300, torch.float16, "half-l0"),
    ("rows", "rows", (600, 160), 700, torch.float32, "half-l0"),
    ("columns", "columns", (600, 160), 700, torch.float32, "half-l0"),
    ("blocks", (128, 16), (256, 320), 300, torch.float32, "half-l0"),
]


@pytest.mark.parametrize("path,bs,nk,T,dtype,kind", DETERMINISM,
                         ids=[f"{p}-{b if isinstance(b, str) else '%dx%d' % b}-{str(d).split('.')[-1]}-{k}"
                              for p, b, _, _, d, k in DETERMINISM])
def test_bitwise_deterministic(ml, monkeypatch, path, bs, nk, T, dtype, kind):
    """The same bits on every call and for 1 and 2 threads."""
    force(monkeypatch, ml, path)
    N, K = nk
    block_shape = _block_shape(bs, N, K)
    x, w, b, dy, mask = make_case(dtype, N, K, block_shape, kind, T=T)

    def run():
        return [ml.forward(x, w, mask, b, block_shape), ml.grad_input(dy, w, mask, block_shape),
                *ml.grad_weight(dy, x, w, mask, block_shape, True),
                ml.grad_weight(dy, x, w, mask, block_shape, False)[0]]

    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        first, again = run(), run()
        torch.set_num_threads(1)
        single = run()
    finally:
        torch.set_num_threads(threads)
    names = ["forward", "grad_input", "grad_weight", "grad_mask", "grad_weight (kept)"]
    for name, a, b2, c in zip(names, first, again, single):
        assert torch.equal(a, b2), f"{name}: differs between two calls"
        assert torch.equal(a, c), f"{name}: differs between 2 threads and 1"


def test_plan_follows_density(ml):
    """The unpatched rule: block kernels for sparse structured masks, gathers for sparse rows / columns, the
    dense product otherwise."""
    w_shape = (256, 512)
    sparse = make_mask((8, 16), "tenth-l0", torch.float32, torch.Generator().manual_seed(0))
    full = torch.ones(8, 16)
    assert ml.plan("forward", w_shape, (32, 32), sparse) == "blocks"
    assert ml.plan("forward", w_shape, (32, 32), full) == "dense"
    assert ml.plan("grad_weight", w_shape, (32, 32), sparse) == "blocks"
    assert ml.plan("forward", w_shape, (8, 8), torch.zeros(32, 64)) == "dense"
    assert ml.plan("forward", w_shape, (1, 512), torch.zeros(256, 1)) == "rows"
    assert ml.plan("grad_input", w_shape, (256, 1), torch.zeros(1, 512)) == "columns"
    assert ml.plan("forward", w_shape, (1, 512), torch.ones(256, 1)) == "dense"
    if ml.has_amx_bf16():  # a binary mask: the dense bfloat16 product is AMX's, the block kernels float32's
        half = make_mask((8, 16), "half", torch.float32, torch.Generator().manual_seed(0))
        assert ml.plan("forward", w_shape, (32, 32), half, torch.bfloat16) == "dense"
        assert ml.plan("forward", w_shape, (32, 32), sparse, torch.bfloat16) == "blocks"


def test_bad_shapes(ml):
    w = torch.randn(64, 96)
    x = torch.randn(5, 96)
    with pytest.raises(ValueError):
        ml.forward(x, w, torch.ones(2, 2), None, (32, 32))  # mask should be (2, 3)
    with pytest.raises(ValueError):
        ml.forward(x, w, torch.ones(2, 3), None, (32, 40))  # 40 does not divide 96
    with pytest.raises(ValueError):
        ml.grad_input(torch.randn(5, 63), w, torch.ones(2, 3), (32, 32))
    # The extension itself checks the bias it is handed (it read past a short one, the launcher aside)
    ext = ml.extension()
    with pytest.raises(RuntimeError, match="bias must be N contiguous values"):
        ext.ml_forward(x, w, torch.ones(2, 3), torch.zeros(1), 32, 32, torch.empty(5, 64))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=lambda d: str(d).split(".")[-1])
def test_mask_stats(ml, dtype):
    """The one-pass look at a mask that picks the path: kept fraction and binary-ness, over several chunks."""
    mask = torch.zeros(300_001, dtype=dtype)
    mask[::7] = 1
    kept = mask.count_nonzero().item()
    assert ml.mask_stats(mask) == (kept / mask.numel(), True)
    mask[200_003] = 0.5
    assert ml.mask_stats(mask) == ((kept + 1) / mask.numel(), False)
    mask[200_003] = float("nan")  # a NaN is kept (it is not zero) and not binary
    assert ml.mask_stats(mask) == ((kept + 1) / mask.numel(), False)
    assert ml.mask_stats(torch.zeros(0, 3, dtype=dtype)) == (0.0, True)


@pytest.mark.parametrize("T", [133, 134])
@pytest.mark.parametrize("N,K", [(48, 80), (300, 192), (130, 96)])
def test_bf16_g_product(ml, N, K, T):
    """G = dy^T @ x from bfloat16 operands on the bfloat16 micro-kernel (odd token counts padded, column blocks of
    64 / 32 / 16, several 128-row tiles) equals the float32 product of the widened operands to float32 rounding."""
    if not ml.has_bf16_brgemm():
        pytest.skip("no bfloat16 batch-reduce GEMM on this CPU / torch")
    gen = torch.Generator().manual_seed(T)
    dy = torch.randn(T, N, generator=gen).bfloat16()
    x = torch.randn(T, K, generator=gen).bfloat16()
    assert ml._g_in_bf16(torch.bfloat16, K)
    g = ml._g_product(dy, x, torch.float32)
    assert g.dtype == torch.float32
    scale = (dy.double().abs().T @ x.double().abs()).max().item()
    close(g, dy.double().T @ x.double(), ACC_TOL[torch.float32], scale=scale, what="G")
