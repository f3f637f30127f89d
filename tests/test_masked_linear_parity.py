"""Parity of bermo.masked_linear (every backend) with an independent float64 eager reference: the output and
every gradient (x, weight, bias, a float mask), on fresh random inputs, block shapes, densities and dtypes."""
import importlib.util
import zlib

import pytest
import torch

from conftest import HAS_NINJA, HAS_TRITON, TRITON_DEVICE
from helpers import block_shape_of

ml = importlib.import_module("bermo.ops.masked_linear")  # bermo.ops exports a function of the same name

HAS_CPU_LAUNCHER = importlib.util.find_spec("bermo.kernels.masked_linear_cpu") is not None
BACKENDS = [
    pytest.param("reference", "cpu", id="reference"),
    pytest.param("cpu", "cpu", id="cpu", marks=pytest.mark.skipif(
        not (HAS_NINJA and HAS_CPU_LAUNCHER), reason="the C++ kernels cannot build here")),
    pytest.param("triton", TRITON_DEVICE, id=f"triton-{TRITON_DEVICE}",
                 marks=pytest.mark.skipif(not HAS_TRITON, reason="Triton is not installed")),
]
# Relative to max |reference|: one rounding of the output for 16-bit, float32 accumulation over K terms.
TOL = {torch.float64: 1e-10, torch.float32: 2e-5, torch.bfloat16: 2e-2, torch.float16: 3e-3}


def seed_of(*params) -> int:
    return zlib.crc32(repr(params).encode()) % 100_000


def expand(mask, block_shape):
    """Independent of bermo: each mask value repeated over its (bo, bi) block."""
    bo, bi = block_shape
    return torch.kron(mask, torch.ones(bo, bi, dtype=mask.dtype))


def make_mask(nb, density, gen, kind="bool"):
    if density == "one":
        m = torch.zeros(nb, dtype=torch.bool)
        m[nb[0] // 2, nb[1] - 1] = True
    elif density == 0.0:
        m = torch.zeros(nb, dtype=torch.bool)
    else:
        m = torch.rand(nb, generator=gen) < density
    if kind == "float":  # an L0-like mask: values in [0, 1], exact zeros where pruned
        return torch.rand(nb, generator=gen) * m
    return m


def run(backend, device, x, w, mask, b, block_shape, dy, mask_grad):
    xs = x.detach().to(device).requires_grad_()
    ws = w.detach().to(device).requires_grad_()
    bs = None if b is None else b.detach().to(device).requires_grad_()
    ms = mask.detach().to(device)
    if mask_grad:
        ms.requires_grad_()
    y = ml.masked_linear(xs, ws, ms, bs, block_shape, backend=backend)
    y.backward(dy.to(device))
    return y, xs.grad, ws.grad, None if bs is None else bs.grad, ms.grad if mask_grad else None


def reference(x, w, mask, b, block_shape, dy):
    x64, w64 = x.double().requires_grad_(), w.double().requires_grad_()
    m64 = mask.double().requires_grad_()
    b64 = None if b is None else b.double().requires_grad_()
    y = x64 @ (w64 * expand(m64, block_shape)).T
    if b64 is not None:
        y = y + b64
    y.backward(dy.double())
    return y, x64.grad, w64.grad, None if b is None else b64.grad, m64.grad


def check(backend, device, shape_x, N, K, block_shape, density, dtype, mask_kind="bool", bias=True, label=""):
    gen = torch.Generator().manual_seed(seed_of(shape_x, N, K, block_shape, density, str(dtype), mask_kind, bias))
    x = torch.randn(*shape_x, K, generator=gen).to(dtype)
    w = (torch.randn(N, K, generator=gen) / K ** 0.5).to(dtype)
    b = torch.randn(N, generator=gen).to(dtype) if bias else None
    mask = make_mask((N // block_shape[0], K // block_shape[1]), density, gen, mask_kind)
    dy = torch.randn(*shape_x, N, generator=gen).to(dtype)
    mask_grad = mask_kind == "float"
    got = run(backend, device, x, w, mask, b, block_shape, dy, mask_grad)
    want = reference(x, w, mask, b, block_shape, dy)
    names = ["output", "grad x", "grad weight", "grad bias", "grad mask"]
    for name, a, r in zip(names, got, want):
        if r is None or (name == "grad mask" and not mask_grad):
            continue
        assert a is not None, f"{label}{name} missing"
        assert a.shape == r.shape, f"{label}{name}: shape {tuple(a.shape)} != {tuple(r.shape)}"
        if name != "grad mask":
            assert a.dtype == dtype, f"{label}{name}: dtype {a.dtype}"
        scale = r.abs().max().item() or 1.0
        tol = TOL[dtype] * (4 if name == "grad mask" else 1)  # mask gradients sum tokens x block elements
        err = (a.detach().cpu().double() - r).abs().max().item()
        assert err <= tol * scale, f"{label}{name}: max abs error {err:.3e} > {tol:.1e} * {scale:.3e}"
    if density == 0.0:  # nothing kept: the output is the bias alone
        expected = torch.zeros_like(got[0]) if b is None else b.to(got[0].device).expand_as(got[0])
        assert torch.equal(got[0], expected.to(got[0].dtype))


BLOCKS = [(1, 1), (16, 16), (32, 32), (16, 32), (1, "K"), ("N", 1)]


@pytest.mark.parametrize("backend,device", BACKENDS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16, torch.float64], ids=str)
@pytest.mark.parametrize("block", BLOCKS, ids=str)
@pytest.mark.parametrize("density", [1.0, 0.5, 0.1, "one", 0.0], ids=str)
def test_parity(backend, device, dtype, block, density):
    if backend == "triton" and dtype == torch.float64:
        pytest.skip("the Triton kernels have no float64 path (refused; see test_triton_refuses_float64)")
    N, K = 64, 96
    bs = block_shape_of(block, N, K)
    check(backend, device, (37,), N, K, bs, density, dtype, label=f"{bs} {density} {dtype}: ")


@pytest.mark.parametrize("backend,device", BACKENDS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize("block", [(1, 1), (32, 32), (16, 32), (1, "K"), ("N", 1), (20, 12)], ids=str)
def test_float_mask_gradient(backend, device, dtype, block):
    N, K = 60, 96
    if block == (32, 32) or block == (16, 32):
        N = 64
    bs = block_shape_of(block, N, K)
    check(backend, device, (3, 11), N, K, bs, 0.5, dtype, mask_kind="float", label=f"{bs} {dtype}: ")


@pytest.mark.parametrize("backend,device", BACKENDS)
@pytest.mark.parametrize("bias", [True, False], ids=["bias", "no-bias"])
def test_three_d_input_and_no_bias(backend, device, bias):
    check(backend, device, (2, 5, 7), 32, 64, (16, 16), 0.5, torch.float32, bias=bias)


@pytest.mark.parametrize("backend,device", BACKENDS)
@pytest.mark.parametrize("N,K", [(64, 0), (0, 64)], ids=["no-inputs", "no-outputs"])
def test_zero_features(backend, device, N, K):
    """A layer without inputs gives the bias (and zero gradients); one without outputs an empty output. Both
    failed to reshape on the kernel backends (``reshape(-1, 0)`` is ambiguous)."""
    gen = torch.Generator().manual_seed(N + K)
    x, w, b = torch.randn(3, 5, K, generator=gen), torch.randn(N, K, generator=gen), torch.randn(N, generator=gen)
    mask = torch.rand(N // 32, K // 32, generator=gen)
    dy = torch.randn(3, 5, N, generator=gen)
    y, gx, gw, gb, gm = run(backend, device, x, w, mask, b, (32, 32), dy, True)
    assert y.shape == (3, 5, N) and gx.shape == x.shape and gw.shape == w.shape and gm.shape == mask.shape
    torch.testing.assert_close(y.cpu(), b.expand(3, 5, N))
    torch.testing.assert_close(gb.cpu(), dy.sum((0, 1)))
    assert not gx.any() and not gw.any() and not gm.any()


@pytest.mark.parametrize("backend,device", BACKENDS)
def test_non_contiguous_inputs(backend, device):
    gen = torch.Generator().manual_seed(4)
    N, K, bs = 32, 64, (16, 16)
    x = torch.randn(K, 2, 9, generator=gen).permute(1, 2, 0)  # (2, 9, K), not contiguous
    w = torch.randn(K, N, generator=gen).t()                   # (N, K), not contiguous
    mask = (torch.rand(N // 16, 2 * (K // 16), generator=gen) > 0.4)[:, ::2]  # a strided mask
    assert not (x.is_contiguous() or w.is_contiguous() or mask.is_contiguous())
    b = torch.randn(N, generator=gen)
    dy = torch.randn(2, 9, N, generator=gen).transpose(0, 1).contiguous().transpose(0, 1)
    got = run(backend, device, x, w, mask, b, bs, dy, False)
    want = reference(x, w, mask, b, bs, dy.contiguous())
    for a, r in zip(got[:4], want[:4]):
        torch.testing.assert_close(a.detach().cpu().double(), r, rtol=1e-5, atol=1e-5 * r.abs().max().item())


@pytest.mark.parametrize("backend,device", BACKENDS)
@pytest.mark.parametrize("mask_kind", ["bool", "float"])
def test_repeated_step_is_bitwise_identical(backend, device, mask_kind):
    gen = torch.Generator().manual_seed(5)
    N, K, bs = 64, 64, (32, 32)
    x, w, b = torch.randn(40, K, generator=gen), torch.randn(N, K, generator=gen), torch.randn(N, generator=gen)
    mask = make_mask((2, 2), 0.5, gen, mask_kind)
    mask[0, 0] = 1
    dy = torch.randn(40, N, generator=gen)
    first = run(backend, device, x, w, mask, b, bs, dy, mask_kind == "float")
    second = run(backend, device, x, w, mask, b, bs, dy, mask_kind == "float")
    for a, c in zip(first, second):
        assert (a is None and c is None) or torch.equal(a, c)


@pytest.mark.parametrize("backend,device", [p for p in BACKENDS if p.values[0] != "triton"])
def test_gradcheck_float64(backend, device):
    gen = torch.Generator().manual_seed(6)
    N, K, bs = 32, 32, (16, 16)
    x = torch.randn(5, K, generator=gen, dtype=torch.float64, requires_grad=True)
    w = torch.randn(N, K, generator=gen, dtype=torch.float64, requires_grad=True)
    b = torch.randn(N, generator=gen, dtype=torch.float64, requires_grad=True)
    m = torch.tensor([[0.3, 0.0], [1.0, 0.7]], dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda *a: ml.masked_linear(*a, bs, backend=backend), (x, w, m, b))


def test_triton_refuses_float64(monkeypatch):
    from bermo import BackendUnavailableError

    if not HAS_TRITON:
        pytest.skip("Triton is not installed")
    x, w = torch.randn(2, 16, dtype=torch.float64), torch.randn(16, 16, dtype=torch.float64)
    with pytest.raises(BackendUnavailableError, match="no float64 kernels"):
        ml.masked_linear(x.to(TRITON_DEVICE), w.to(TRITON_DEVICE), torch.ones(1, 1, dtype=torch.bool,
                         device=TRITON_DEVICE), None, (16, 16), backend="triton")


@pytest.mark.parametrize("backend,device", BACKENDS)
def test_torch_compile(backend, device):
    gen = torch.Generator().manual_seed(7)
    x, w = torch.randn(6, 32, generator=gen).to(device), torch.randn(32, 32, generator=gen).to(device)
    mask = (torch.rand(2, 2, generator=gen) > 0.3).to(device)

    def f(x, w):
        return torch.relu(ml.masked_linear(x, w, mask, None, (16, 16), backend=backend)).sum()

    torch._dynamo.reset()
    compiled = torch.compile(f, fullgraph=backend != "reference" or True)
    xs, ws = x.clone().requires_grad_(), w.clone().requires_grad_()
    out = compiled(xs, ws)
    out.backward()
    xe, we = x.clone().requires_grad_(), w.clone().requires_grad_()
    ref = f(xe, we)
    ref.backward()
    torch.testing.assert_close(out, ref)
    torch.testing.assert_close(xs.grad, xe.grad)
    torch.testing.assert_close(ws.grad, we.grad)


# ------------------------------------------------------------------------------------------ bad input
@pytest.mark.parametrize("args,error,match", [
    (dict(block_shape=(16, 30)), ValueError, r"block_shape \(16, 30\) does not divide the weight's shape \(32, 64\)"),
    (dict(block_shape=(0, 16)), ValueError, "block_shape must be positive"),
    (dict(block_shape=16), TypeError, "block_shape must be a pair"),
    (dict(mask=torch.ones(3, 4, dtype=torch.bool)), ValueError, r"one value per 16x16 block .* shape \(2, 4\)"),
    (dict(mask=torch.ones(2, 4, dtype=torch.int64)), TypeError, "mask must be bool or floating point"),
    (dict(x=torch.randn(3, 63)), ValueError, "x's last dimension must be in_features = 64"),
    (dict(bias=torch.randn(31)), ValueError, r"bias must have shape \(32,\)"),
    (dict(x=torch.randn(3, 64, dtype=torch.float64)), TypeError, "x and weight must share"),
    (dict(weight=torch.randn(32, 64, 1)), ValueError, "weight must be 2-D"),
    (dict(mask=[[1, 0]]), TypeError, "mask must be a torch.Tensor"),
    (dict(block_shape=(16.5, 16)), TypeError, "block_shape must be a pair of positive ints"),
    (dict(block_shape=(16, 16.0)), TypeError, "block_shape must be a pair of positive ints"),
    (dict(block_shape="11", mask=torch.ones(32, 64, dtype=torch.bool)), TypeError, "block_shape must be a pair"),
    (dict(block_shape=(True, True), mask=torch.ones(32, 64, dtype=torch.bool)), TypeError,
     "block_shape must be a pair"),
], ids=["block-divides", "block-zero", "block-int", "mask-shape", "mask-dtype", "x-width", "bias-shape",
        "dtype-mismatch", "weight-3d", "mask-list", "block-float", "block-float-whole", "block-str", "block-bool"])
def test_bad_input_is_named(args, error, match):
    kw = dict(x=torch.randn(3, 64), weight=torch.randn(32, 64), mask=torch.ones(2, 4, dtype=torch.bool),
              bias=torch.randn(32), block_shape=(16, 16))
    kw.update(args)
    with pytest.raises(error, match=match):
        ml.masked_linear(kw["x"], kw["weight"], kw["mask"], kw["bias"], kw["block_shape"], backend="reference")


@pytest.mark.parametrize("density", [True, -0.1, 1.5, "0.5"], ids=str)
def test_bad_density_hint_is_named(density):
    """The density hint is a number in [0, 1] or None: not a bool (True would read as 1.0, the dense path)."""
    with pytest.raises(ValueError, match="density .* must be a number in"):
        ml.masked_linear(torch.randn(3, 64), torch.randn(32, 64), torch.ones(2, 4, dtype=torch.bool), None, (16, 16),
                         backend="reference", density=density)
