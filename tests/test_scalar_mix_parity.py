"""Parity of bermo's ScalarMix (every backend) with an independent float64 AllenNLP-style reference:
the output and every gradient (each layer, each scalar parameter, gamma) on fresh random inputs."""
import zlib

import pytest
import torch

from bermo import ScalarMix
from helpers import BACKENDS, RTOL, allennlp_mix, assert_close, eps_of, needs_cpu_kernels, reference_grads

DTYPES = [torch.float64, torch.float32, torch.float16, torch.bfloat16]
# Gradients that pass through sums over many elements (scalar parameters, gamma, layer-norm inputs) carry
# fp32 accumulation error (fp64 for fp64 inputs) on top of the final rounding.
SUM_RTOL = {torch.float64: 1e-10, torch.float32: 3e-5, torch.float16: 3e-5, torch.bfloat16: 3e-5}
# The parameters are float32, so their gradients are float32 whatever the inputs' dtype.
PARAM_RTOL = {torch.float64: 3e-7, torch.float32: 3e-5, torch.float16: 3e-5, torch.bfloat16: 3e-5}


def stable_seed(*params) -> int:
    """A seed from the case's parameters that is the same in every process (Python's hash() of a string is
    not), so a failure replays exactly; failures print it."""
    return zlib.crc32(repr(params).encode()) % 100_000


def make_case(shape, L, dtype, device, seed, do_layer_norm=False, mask_dtype=torch.bool, offset=True):
    gen = torch.Generator().manual_seed(seed)
    base = [torch.randn(shape, generator=gen, dtype=torch.float64) for _ in range(L)]
    if offset and L > 1:
        base[1] = base[1] * 2.5 + 3.0  # a layer far from zero mean / unit variance
    base = [t.to(dtype) for t in base]  # the reference sees exactly the values the kernels see
    scalars = torch.randn(L, generator=gen).tolist()
    gamma = 0.5 + torch.rand(1, generator=gen).item()
    mask = None
    if do_layer_norm:
        mask = torch.rand(shape[:-1], generator=gen) > 0.35
        mask.view(-1)[0] = True
        mask = mask.to(mask_dtype)
    grad_out = torch.randn(shape, generator=gen, dtype=torch.float64).to(dtype)
    to = dict(device=device)
    return ([t.to(**to) for t in base], scalars, gamma, None if mask is None else mask.to(**to),
            grad_out.to(**to))


def run_module(backend, base, scalars, gamma, mask, grad_out, do_layer_norm, stacked=False, trainable=True):
    module = ScalarMix(len(base), do_layer_norm=do_layer_norm, initial_scalar_parameters=scalars,
                       trainable=trainable, backend=backend).to(base[0].device)
    with torch.no_grad():
        module.gamma.fill_(gamma)
    if stacked:
        x = torch.stack([t.detach() for t in base]).requires_grad_()
        leaves = [x]
    else:
        leaves = [t.detach().clone().requires_grad_() for t in base]
        x = leaves
    out = module(x, mask)
    params = list(module.scalar_parameters) + [module.gamma] if trainable else []
    grads = torch.autograd.grad(out, leaves + params, grad_out)
    n = len(leaves)
    layer_grads = list(grads[0].unbind(0)) if stacked else list(grads[:n])
    scalar_grads = torch.cat(grads[n:n + len(base)]) if trainable else None
    gamma_grad = grads[-1] if trainable else None
    return out, layer_grads, scalar_grads, gamma_grad


def check_against_reference(backend, base, scalars, gamma, mask, grad_out, do_layer_norm, stacked=False, label=""):
    dtype = base[0].dtype
    out, layer_grads, s_grad, g_grad = run_module(backend, base, scalars, gamma, mask, grad_out, do_layer_norm,
                                                  stacked)
    assert out.dtype == dtype and out.shape == base[0].shape
    # The module's parameters are float32: the reference takes their exact (float32-rounded) values.
    s64 = torch.tensor(scalars, dtype=torch.float32).double()
    g64 = torch.tensor([gamma], dtype=torch.float32).double()
    eps = eps_of(dtype)
    ref_out, ref_layers, ref_s, ref_g = reference_grads([t.cpu() for t in base], s64, g64, grad_out.cpu(),
                                                        None if mask is None else mask.cpu(), do_layer_norm, eps)
    rtol = RTOL[dtype] * (8 if do_layer_norm else 1)
    assert_close(out.cpu(), ref_out, rtol, what=label + "output")
    # Three-way check: no worse than the eager computation in the input dtype itself (plus one rounding).
    if dtype in (torch.float16, torch.bfloat16):
        eager = allennlp_mix([t.cpu() for t in base], torch.tensor(scalars), torch.tensor([gamma]),
                             None if mask is None else mask.cpu(), do_layer_norm, eps, dtype)
        eager_err = (eager.cpu().double() - ref_out).abs().max().item()
        ours_err = (out.cpu().double() - ref_out).abs().max().item()
        assert ours_err <= eager_err + RTOL[dtype] * ref_out.abs().max().item(), f"{label}{ours_err} vs {eager_err}"
    grad_rtol = SUM_RTOL[dtype] + RTOL[dtype] if do_layer_norm else RTOL[dtype]
    for k, (a, r) in enumerate(zip(layer_grads, ref_layers)):
        assert a.dtype == dtype
        assert_close(a.cpu(), r, grad_rtol * (4 if do_layer_norm else 1), what=f"{label}grad of layer {k}")
    # Scale of the scalar gradients: the sums they come from, sum |g| * |layer| (normalised layers with LN).
    layers64 = [t.cpu().double() for t in base]
    if do_layer_norm:
        layers64 = [allennlp_mix([t], torch.zeros(1), torch.ones(1), mask.cpu(), True, eps) for t in layers64]
    scale = g64.item() * max((grad_out.cpu().double().abs() * t.abs()).sum().item() for t in layers64)
    assert_close(s_grad.cpu(), ref_s, PARAM_RTOL[dtype], scale=scale, what=label + "grad of scalar_parameters")
    assert_close(g_grad.cpu(), ref_g, PARAM_RTOL[dtype], scale=scale / g64.item(), what=label + "grad of gamma")


@pytest.mark.parametrize("backend,device", BACKENDS)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("shape", [(3, 5, 37), (2, 1, 1, 17), (3, 4, 64)], ids=str)  # 64: the vector kernels
@pytest.mark.parametrize("L", [1, 2, 13, 25])
@pytest.mark.parametrize("do_layer_norm", [False, True], ids=["mix", "layernorm"])
def test_parity(backend, device, dtype, shape, L, do_layer_norm):
    seed = stable_seed(shape, L, str(dtype), do_layer_norm)
    case = make_case(shape, L, dtype, device, seed=seed, do_layer_norm=do_layer_norm)
    check_against_reference(backend, *case, do_layer_norm, label=f"seed {seed}: ")


@pytest.mark.parametrize("backend,device", BACKENDS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize("H,L", [(768, 13), (1024, 25)], ids=["bert-base", "bert-large"])
@pytest.mark.parametrize("do_layer_norm", [False, True], ids=["mix", "layernorm"])
def test_production_shapes(backend, device, dtype, H, L, do_layer_norm):
    """BERT's own widths and layer counts (rows wider than 512 with more than 8 layers: where the C++
    kernel's grouped and blocked paths meet), small batch."""
    seed = stable_seed("production", H, L, str(dtype), do_layer_norm)
    case = make_case((2, 3, H), L, dtype, device, seed=seed, do_layer_norm=do_layer_norm)
    check_against_reference(backend, *case, do_layer_norm, label=f"seed {seed}: ")


@pytest.mark.parametrize("backend,device", BACKENDS)
@pytest.mark.parametrize("mask_dtype", [torch.bool, torch.int64, torch.int32, torch.uint8], ids=str)
def test_layer_norm_mask_dtypes(backend, device, mask_dtype):
    case = make_case((4, 7, 33), 3, torch.float32, device, seed=7, do_layer_norm=True, mask_dtype=mask_dtype)
    check_against_reference(backend, *case, True)


@pytest.mark.parametrize("backend,device", BACKENDS)
@pytest.mark.parametrize("do_layer_norm", [False, True], ids=["mix", "layernorm"])
def test_stacked_input(backend, device, do_layer_norm):
    case = make_case((3, 6, 40), 5, torch.float32, device, seed=11, do_layer_norm=do_layer_norm)
    check_against_reference(backend, *case, do_layer_norm, stacked=True)


@pytest.mark.parametrize("backend,device", BACKENDS)
@pytest.mark.parametrize("kind", ["transposed", "cls_column", "mixed_strides", "stacked_slices"])
@pytest.mark.parametrize("do_layer_norm", [False, True], ids=["mix", "layernorm"])
def test_non_contiguous(backend, device, kind, do_layer_norm):
    gen = torch.Generator().manual_seed(3)
    L, B, T, H = 4, 3, 5, 24
    full = [torch.randn(B, T, H, generator=gen) for _ in range(L)]
    if kind == "transposed":  # last dimension not unit-stride: needs a per-layer copy
        layers = [torch.randn(B, H, 9, generator=gen).transpose(1, 2) for _ in range(L)]
    elif kind == "cls_column":  # what BERMo mixes for a [CLS] head: hidden[:, 0] of every layer
        layers = [t[:, 0] for t in full]
    elif kind == "mixed_strides":
        layers = [t[:, 0] if k % 2 else t[:, 1].contiguous() for k, t in enumerate(full)]
    else:  # slices of a stacked (L, B, T, H) tensor along T
        layers = list(torch.stack(full)[:, :, 1:4].unbind(0))
    assert not all(t.is_contiguous() for t in layers)
    layers = [t.to(device) for t in layers]
    shape = layers[0].shape
    mask = None
    if do_layer_norm:
        mask = (torch.rand(shape[:-1], generator=gen) > 0.3)
        mask.view(-1)[0] = True
        mask = mask.to(device)
    grad_out = torch.randn(shape, generator=gen).to(device)
    check_against_reference(backend, layers, [0.3, -0.2, 0.9, 0.0], 1.7, mask, grad_out, do_layer_norm)


@pytest.mark.parametrize("backend,device", BACKENDS)
def test_64_layers(backend, device):
    case = make_case((2, 3, 20), 64, torch.float32, device, seed=64)
    check_against_reference(backend, *case, False)


@pytest.mark.parametrize("backend,device", BACKENDS)
@pytest.mark.parametrize("do_layer_norm", [False, True], ids=["mix", "layernorm"])
def test_trainable_false(backend, device, do_layer_norm):
    base, scalars, gamma, mask, grad_out = make_case((2, 4, 19), 3, torch.float32, device, seed=5,
                                                     do_layer_norm=do_layer_norm)
    module = ScalarMix(3, do_layer_norm=do_layer_norm, initial_scalar_parameters=scalars, trainable=False,
                       backend=backend).to(device)
    assert not any(p.requires_grad for p in module.parameters())
    out, layer_grads, _, _ = run_module(backend, base, scalars, 1.0, mask, grad_out, do_layer_norm, trainable=False)
    ref_out, ref_layers, _, _ = reference_grads([t.cpu() for t in base], torch.tensor(scalars).double(),
                                                torch.ones(1, dtype=torch.float64), grad_out.cpu(),
                                                None if mask is None else mask.cpu(), do_layer_norm)
    assert_close(out.cpu(), ref_out, 1e-5)
    for a, r in zip(layer_grads, ref_layers):
        assert_close(a.cpu(), r, 1e-4)
    # Nothing requires grad at all: the output is a plain tensor.
    assert not module([t.detach() for t in base], mask).requires_grad


@pytest.mark.parametrize("backend,device", BACKENDS)
@pytest.mark.parametrize("do_layer_norm", [False, True], ids=["mix", "layernorm"])
def test_only_some_layers_require_grad(backend, device, do_layer_norm):
    base, scalars, gamma, mask, grad_out = make_case((3, 4, 21), 4, torch.float32, device, seed=9,
                                                     do_layer_norm=do_layer_norm)
    module = ScalarMix(4, do_layer_norm=do_layer_norm, initial_scalar_parameters=scalars,
                       backend=backend).to(device)
    xs = [t.clone().requires_grad_(k in (0, 2)) for k, t in enumerate(base)]
    out = module(xs, mask)
    out.backward(grad_out)
    assert xs[1].grad is None and xs[3].grad is None
    _, ref_layers, ref_s, _ = reference_grads([t.cpu() for t in base], torch.tensor(scalars).double(),
                                              torch.ones(1, dtype=torch.float64), grad_out.cpu(),
                                              None if mask is None else mask.cpu(), do_layer_norm)
    assert_close(xs[0].grad.cpu(), ref_layers[0], 1e-4)
    assert_close(xs[2].grad.cpu(), ref_layers[2], 1e-4)
    got_s = torch.cat([p.grad for p in module.scalar_parameters]).cpu()
    assert_close(got_s, ref_s, 1e-4, scale=ref_s.abs().max().item() + 1e-3)


@pytest.mark.parametrize("backend,device", BACKENDS)
@pytest.mark.parametrize("do_layer_norm", [False, True], ids=["mix", "layernorm"])
def test_deterministic_gradients(backend, device, do_layer_norm):
    base, scalars, gamma, mask, grad_out = make_case((4, 9, 50), 6, torch.float32, device, seed=21,
                                                     do_layer_norm=do_layer_norm)
    first = run_module(backend, base, scalars, gamma, mask, grad_out, do_layer_norm)
    second = run_module(backend, base, scalars, gamma, mask, grad_out, do_layer_norm)
    assert torch.equal(first[0], second[0])
    assert torch.equal(first[2], second[2]) and torch.equal(first[3], second[3])
    for a, b in zip(first[1], second[1]):
        assert torch.equal(a, b)


@pytest.mark.parametrize("backend,device", BACKENDS)
def test_empty_tensors(backend, device):
    xs = [torch.randn(0, 5, device=device, requires_grad=True) for _ in range(3)]
    out = ScalarMix(3, backend=backend).to(device)(xs)
    assert out.shape == (0, 5)
    out.sum().backward()
    assert xs[0].grad.shape == (0, 5)


@pytest.mark.parametrize("backend,device", BACKENDS)
def test_zero_dim_tensors(backend, device):
    xs = [torch.tensor(float(k + 1), device=device) for k in range(3)]
    out = ScalarMix(3, backend=backend).to(device)(xs)
    assert out.shape == () and abs(out.item() - 2.0) < 1e-6


@pytest.mark.slow
@needs_cpu_kernels
def test_cpu_kernel_past_two_to_the_31_elements():
    """int64 addressing: a (2**16 + 1, 2**15) float16 layer holds 2**31 + 2**15 elements."""
    rows, cols = 2**16 + 1, 2**15
    x = torch.zeros(rows, cols, dtype=torch.float16)
    x[-1, -4:] = torch.tensor([1.0, 2.0, 3.0, 4.0])
    x[0, :2] = torch.tensor([5.0, 6.0])
    module = ScalarMix(1, backend="cpu")
    with torch.no_grad():
        module.gamma.fill_(2.0)
        out = module([x])
    assert out.dtype == torch.float16 and out.shape == (rows, cols)
    assert out[-1, -4:].tolist() == [2.0, 4.0, 6.0, 8.0] and out[0, :3].tolist() == [10.0, 12.0, 0.0]
    assert out[rows // 2].abs().max().item() == 0.0


@pytest.mark.parametrize("backend,device", BACKENDS)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_nan_and_inf_propagate_like_the_formula(backend, device, dtype):
    xs = [torch.ones(3, 40, dtype=dtype, device=device) for _ in range(3)]
    xs[1][0, 5] = float("nan")
    xs[2][1, 17] = float("inf")
    out = ScalarMix(3, backend=backend).to(device)(xs)
    assert torch.isnan(out[0, 5]) and torch.isinf(out[1, 17]) and out[1, 17] > 0
    finite = torch.ones_like(out, dtype=torch.bool)
    finite[0, 5] = finite[1, 17] = False
    assert torch.all(out[finite] == 1)


@needs_cpu_kernels
@pytest.mark.parametrize("do_layer_norm", [False, True], ids=["mix", "layernorm"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_cpu_results_do_not_depend_on_the_thread_count(do_layer_norm, dtype):
    """The C++ kernel promises results that depend only on the shape: its tiles and reduction order must not
    follow the number of threads. Output and every gradient bitwise equal at 1 and 4 threads, on a shape wide
    and deep enough for the grouped, blocked and tail paths."""
    case = make_case((3, 7, 1040), 13, dtype, "cpu", seed=31, do_layer_norm=do_layer_norm)
    threads = torch.get_num_threads()
    results = []
    try:
        for n in (1, 4):
            torch.set_num_threads(n)
            results.append(run_module("cpu", *case, do_layer_norm))
    finally:
        torch.set_num_threads(threads)
    (out1, layers1, s1, g1), (out4, layers4, s4, g4) = results
    assert torch.equal(out1, out4) and torch.equal(s1, s4) and torch.equal(g1, g4)
    assert all(torch.equal(a, b) for a, b in zip(layers1, layers4))
