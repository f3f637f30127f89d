"""Shared test helpers: the independent float64 reference and dtype-fitting comparisons."""
from __future__ import annotations

import pytest
import torch

from conftest import HAS_NINJA, HAS_TRITON, TRITON_DEVICE

needs_cpu_kernels = pytest.mark.skipif(not HAS_NINJA, reason="ninja is not installed: the C++ kernels cannot build")

# (backend, device) pairs under test: each backend on the tensors it runs on here.
BACKENDS = [
    pytest.param("reference", "cpu", id="reference"),
    pytest.param("cpu", "cpu", id="cpu", marks=needs_cpu_kernels),
    pytest.param("triton", TRITON_DEVICE, id=f"triton-{TRITON_DEVICE}",
                 marks=pytest.mark.skipif(not HAS_TRITON, reason="Triton is not installed")),
]

def block_shape_of(bs, N: int, K: int):
    """A test's block shape with "N" / "K" standing for the whole output / input side (whole columns / rows)."""
    return (N if bs[0] == "N" else bs[0], K if bs[1] == "K" else bs[1])


# Relative tolerance of one rounding to each dtype (outputs and input gradients are computed in fp32 or fp64
# and rounded once).
RTOL = {torch.float64: 1e-12, torch.float32: 2e-6, torch.bfloat16: 8e-3, torch.float16: 1e-3}


def eps_of(dtype: torch.dtype) -> float:
    return 1e-4 if dtype in (torch.float16, torch.bfloat16) else 1e-13


def allennlp_mix(tensors, scalars, gamma, mask=None, do_layer_norm=False, eps=1e-13, dtype=torch.float64):
    """AllenNLP's ScalarMix forward, written out independently of bermo and evaluated in ``dtype``."""
    ts = [t.to(dtype) for t in tensors]
    weights = torch.softmax(scalars.to(dtype), dim=0)
    if do_layer_norm:
        bmask = mask.to(dtype).unsqueeze(-1)
        count = mask.to(dtype).sum() * ts[0].shape[-1]

        def norm(t):
            masked = t * bmask
            mean = masked.sum() / count
            var = (((masked - mean) * bmask) ** 2).sum() / count
            return (t - mean) / torch.sqrt(var + eps)

        ts = [norm(t) for t in ts]
    return gamma.to(dtype) * sum(weights[k] * ts[k] for k in range(len(ts)))


def reference_grads(base_layers, scalars, gamma, grad_out, mask=None, do_layer_norm=False, eps=1e-13):
    """Float64 output and gradients (each layer, scalars, gamma) of the reference for ``grad_out``."""
    xs = [t.detach().double().requires_grad_() for t in base_layers]
    s = scalars.detach().double().requires_grad_()
    g = gamma.detach().double().requires_grad_()
    out = allennlp_mix(xs, s, g, mask, do_layer_norm, eps)
    grads = torch.autograd.grad(out, xs + [s, g], grad_out.double())
    return out.detach(), list(grads[:-2]), grads[-2], grads[-1]


def assert_close(actual, expected, rtol, scale=None, what=""):
    """|actual - expected| <= rtol * scale everywhere, scale defaulting to max|expected| (at least 1e-30)."""
    expected = expected.double()
    actual = actual.detach().double()
    assert actual.shape == expected.shape, f"{what}: shape {tuple(actual.shape)} != {tuple(expected.shape)}"
    if scale is None:
        scale = expected.abs().max().item() if expected.numel() else 1.0
    err = (actual - expected).abs().max().item() if expected.numel() else 0.0
    assert err <= rtol * max(scale, 1e-30), f"{what}: max abs error {err:.3e} > {rtol:.1e} * scale {scale:.3e}"
    return err


def assert_rounds_to_nearest(actual, exact, slack=0.05):
    """Every element of a 16-bit ``actual`` within (0.5 + slack) ulp of the float64 ``exact`` value: rounded to
    nearest from a float32 computation; truncation errs by up to 1 ulp. Elements under 1% of the largest are
    left out: there the float32 error of the terms' sum is no longer small against their own ulp."""
    dtype = actual.dtype
    exact = exact.double().cpu()
    precision = {torch.bfloat16: 8, torch.float16: 11}[dtype]  # significand bits, the implicit one included
    _, exponent = torch.frexp(exact)  # |exact| = m * 2**exponent, 0.5 <= m < 1
    ulp = torch.ldexp(torch.ones_like(exact), exponent - precision)
    big = exact.abs() >= 1e-2 * exact.abs().max()
    ratio = ((actual.detach().double().cpu() - exact).abs() / ulp)[big].max().item()
    assert ratio <= 0.5 + slack, f"an output is {ratio:.2f} ulp from the exact value: not rounded to nearest"


def batch(B: int = 3, T: int = 9, vocab: int = 60, seed: int = 0):
    """``(input_ids, attention_mask)`` of a small padded batch for the tiny test models (two rows padded)."""
    gen = torch.Generator().manual_seed(seed)
    ids = torch.randint(1, vocab, (B, T), generator=gen)
    mask = torch.ones(B, T, dtype=torch.long)
    mask[0, 6:] = 0
    mask[2, 4:] = 0
    return ids, mask


def tiny_bermo_config(**kw):
    """The tiny BERMo configuration the model tests share (2 layers of width 32, no dropout, the mix's reference
    backend); keywords override its settings."""
    from bermo.models import BermoConfig

    base = dict(vocab_size=60, hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
                max_position_embeddings=32, num_labels=3, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0,
                mix_backend="reference")
    base.update(kw)
    return BermoConfig(**base)
