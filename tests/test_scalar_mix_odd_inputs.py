"""ScalarMix under odd and bad inputs, where randomised testing once found silent wrong answers: gamma shapes,
NaN in padding, near-constant layers, and what the functional form accepts."""
import numpy
import pytest
import torch

import bermo
from bermo import ScalarMix
from helpers import BACKENDS, RTOL, allennlp_mix, eps_of, needs_cpu_kernels


# ------------------------------------------------------------------------------------------ gamma and scalars
@pytest.mark.parametrize("backend,device", BACKENDS)
@pytest.mark.parametrize("shape", [(2,), (1, 1), (3,), (0,)], ids=str)
def test_gamma_must_hold_exactly_one_value(backend, device, shape):
    """A (2,) gamma was silently used per layer by the kernels; (1, 1) failed only in backward."""
    xs = [torch.ones(2, 3, device=device)] * 2
    with pytest.raises(ValueError, match=r"gamma must hold one value, shape \(1,\) or \(\); got shape"):
        bermo.scalar_mix(xs, torch.zeros(2, device=device), torch.ones(shape, device=device), backend=backend)


@pytest.mark.parametrize("backend,device", BACKENDS)
@pytest.mark.parametrize("gamma_shape", [(1,), ()], ids=str)
def test_one_value_gamma_in_both_shapes(backend, device, gamma_shape):
    xs = [torch.randn(2, 3, 8, device=device, requires_grad=True) for _ in range(3)]
    s = torch.tensor([0.1, 0.5, -0.3], device=device, requires_grad=True)
    g = torch.full(gamma_shape, 1.7, device=device, requires_grad=True)
    out = bermo.scalar_mix(xs, s, g, backend=backend)
    want = 1.7 * sum(w * x for w, x in zip(torch.softmax(s.detach(), 0), xs))
    torch.testing.assert_close(out, want)
    out.sum().backward()
    assert g.grad.shape == gamma_shape and s.grad.shape == (3,)


@pytest.mark.parametrize("scalars,gamma,error,match", [
    (torch.zeros(3), 1.0, TypeError, r"gamma must be a float torch.Tensor of shape \(1,\) or \(\); got a float"),
    ([0.0, 0.0, 0.0], torch.ones(1), TypeError, r"scalars must be a float torch.Tensor of shape \(3,\); got a list"),
    (torch.zeros(3, dtype=torch.int64), torch.ones(1), TypeError, "scalars must be a floating-point tensor"),
    (torch.zeros(3), torch.ones(1, dtype=torch.int64), TypeError, "gamma must be a floating-point tensor"),
    (torch.zeros(2), torch.ones(1), ValueError, r"expected 3 scalar weights .* got shape \(2,\)"),
    (torch.zeros(3, 1), torch.ones(1), ValueError, r"expected 3 scalar weights .* got shape \(3, 1\)"),
], ids=["float-gamma", "list-scalars", "int-scalars", "int-gamma", "too-few", "2d-scalars"])
def test_functional_form_names_bad_parameters(scalars, gamma, error, match):
    with pytest.raises(error, match=match):
        bermo.scalar_mix([torch.ones(2, 3)] * 3, scalars, gamma)


def test_numpy_integer_mixture_size():
    """AllenNLP takes any integral value; numpy integers from a config file are common."""
    assert ScalarMix(numpy.int64(3)).mixture_size == 3
    assert isinstance(ScalarMix(numpy.int32(2)).mixture_size, int)
    for bad in (2.0, numpy.float64(2.0), "2", True):
        with pytest.raises(bermo.ConfigurationError, match="mixture_size must be a positive integer"):
            ScalarMix(bad)


# ------------------------------------------------------------------------------------------ layer norm
@pytest.mark.parametrize("backend,device", BACKENDS)
@pytest.mark.parametrize("where", ["masked", "unmasked"])
@pytest.mark.parametrize("value", [float("nan"), float("inf")], ids=["nan", "inf"])
def test_non_finite_value_poisons_the_layer_everywhere_as_allennlp(backend, device, where, value):
    """AllenNLP multiplies by the mask, so a NaN (or inf) even in a padded position makes that layer's mean
    and variance NaN, and every output NaN. Every backend follows that one documented semantics (the C++
    kernel once skipped padded rows and returned 1 NaN of 105)."""
    xs = [torch.randn(3, 5, 7) for _ in range(2)]
    xs[1][1, 2, 3] = value
    mask = torch.ones(3, 5, dtype=torch.bool)
    mask[1, 2] = where == "unmasked"
    mask[0, 4] = False
    assert allennlp_mix(xs, torch.zeros(2), torch.ones(1), mask, True).isnan().all()
    out = bermo.scalar_mix([x.to(device) for x in xs], torch.zeros(2, device=device), torch.ones(1, device=device),
                           mask=mask.to(device), do_layer_norm=True, backend=backend)
    assert out.isnan().all(), f"{int(out.isnan().sum())} of {out.numel()} outputs are NaN"


@pytest.mark.parametrize("backend,device", BACKENDS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
@pytest.mark.parametrize("layer", ["constant", "offset", "noise-1e-3", "noise-1e-5"])
def test_near_constant_layers_with_layer_norm(backend, device, dtype, layer):
    """A layer of tiny variance has a huge 1/std; scaling before centring cancelled catastrophically (errors
    of 0.05-0.12 on a constant layer). Bermo must be no less accurate than the eager formula in the same
    dtype (plus one rounding of the output)."""
    gen = torch.Generator().manual_seed(17)
    shape = (4, 9, 40)
    noise = torch.randn(shape, generator=gen, dtype=torch.float64)
    first = {"constant": torch.ones(shape, dtype=torch.float64), "offset": 1000 + noise,
             "noise-1e-3": 1 + 1e-3 * noise, "noise-1e-5": 1 + 1e-5 * noise}[layer]
    xs = [first.to(dtype), torch.randn(shape, generator=gen).to(dtype)]
    mask = torch.rand(shape[:-1], generator=gen) > 0.3
    s, g = torch.tensor([0.3, -0.1]), torch.tensor([1.1])
    eps = eps_of(dtype)
    ref = allennlp_mix(xs, s, g, mask, True, eps)
    eager_err = (allennlp_mix(xs, s, g, mask, True, eps, dtype=dtype).double() - ref).abs().max().item()
    out = bermo.scalar_mix([x.to(device) for x in xs], s.to(device), g.to(device), mask=mask.to(device),
                           do_layer_norm=True, backend=backend)
    err = (out.cpu().double() - ref).abs().max().item()
    assert err <= eager_err + 4 * RTOL[dtype] * ref.abs().max().item(), (err, eager_err)


@pytest.mark.parametrize("backend,device", BACKENDS)
@pytest.mark.parametrize("pad", [1e4, 1e8, -3e38], ids=str)
def test_huge_values_in_padding_leave_the_statistics_exact(backend, device, pad):
    """The kernels shifted every layer by its first element before summing in float32, padded or not: a large
    fill value there (left padding, ``masked_fill(-1e4)``) wiped out the data's precision (error 2e-2 at 1e6,
    5.9e6 at 1e8). Padded values must not change the unmasked outputs beyond one float32 rounding."""
    gen = torch.Generator().manual_seed(5)
    shape = (3, 37, 40)
    xs = [torch.randn(shape, generator=gen) for _ in range(2)]
    mask = torch.ones(shape[:-1], dtype=torch.bool)
    mask[:, :5] = False  # left padding in every sequence: the first rows of several tiles
    mask[1, 20:23] = False
    for x in xs:
        x[~mask] = pad
    s, g = torch.tensor([0.3, -0.1]), torch.tensor([1.1])
    ref = allennlp_mix(xs, s, g, mask, True, eps_of(torch.float32))
    out = bermo.scalar_mix([x.to(device) for x in xs], s.to(device), g.to(device), mask=mask.to(device),
                           do_layer_norm=True, backend=backend).cpu().double()
    err = (out - ref)[mask].abs().max().item()
    assert err <= 4 * RTOL[torch.float32] * ref[mask].abs().max().item(), err


@pytest.mark.parametrize("backend,device", BACKENDS)
@pytest.mark.parametrize("shape", [(2, 3, 0), (0, 3, 4), (2, 0, 4)], ids=["zero-width", "empty-batch", "no-tokens"])
def test_layer_norm_of_empty_layers(backend, device, shape):
    """A zero-width last dimension or no rows at all: an empty output and zero parameter gradients, as AllenNLP
    (the Triton path raised an IndexError reading the statistics of no tiles; an empty batch was refused as
    "the mask masks every position")."""
    xs = [torch.randn(shape, device=device, requires_grad=True) for _ in range(2)]
    s = torch.zeros(2, device=device, requires_grad=True)
    g = torch.ones(1, device=device, requires_grad=True)
    out = bermo.scalar_mix(xs, s, g, mask=torch.ones(shape[:-1], dtype=torch.bool, device=device),
                           do_layer_norm=True, backend=backend)
    assert out.shape == shape
    out.sum().backward()
    assert not s.grad.any() and not g.grad.any()
    assert xs[0].grad.shape == shape


@pytest.mark.parametrize("backend,device", BACKENDS)
def test_negative_integer_mask_is_refused(backend, device):
    xs = [torch.randn(2, 3, 4, device=device)] * 2
    mask = torch.ones(2, 3, dtype=torch.int64, device=device)
    mask[0, 1] = -1
    with pytest.raises(ValueError, match="only 0 and 1"):
        ScalarMix(2, do_layer_norm=True, backend=backend).to(device)(xs, mask)


# ------------------------------------------------------------------------------------------ rounding
@needs_cpu_kernels
@pytest.mark.parametrize("do_layer_norm", [False, True], ids=["mix", "layernorm"])
def test_cpu_bfloat16_outputs_round_to_nearest(do_layer_norm):
    """Outputs are computed in float32 and rounded once: within half a bfloat16 ulp of the exact value (a
    truncating conversion is off by up to a whole ulp). The GPU test checks the Triton kernels the same way;
    the Triton interpreter itself truncates, so it cannot."""
    from helpers import assert_rounds_to_nearest

    gen = torch.Generator().manual_seed(4)
    xs = [torch.randn(8, 16, 64, generator=gen).bfloat16() for _ in range(5)]
    mask = torch.rand(8, 16, generator=gen) > 0.2 if do_layer_norm else None
    s, g = torch.randn(5, generator=gen), torch.tensor([1.3])
    out = bermo.scalar_mix(xs, s, g, mask=mask, do_layer_norm=do_layer_norm, backend="cpu")
    assert_rounds_to_nearest(out, allennlp_mix(xs, s, g, mask, do_layer_norm, eps_of(torch.bfloat16)))


@pytest.mark.parametrize("backend,device", BACKENDS)
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=str)
def test_sixteen_bit_layer_norm_eps_matters_near_the_variance(backend, device, dtype):
    """16-bit inputs use AllenNLP's eps of 1e-4: with a layer of variance 1e-4 the eps halves 1/std's square,
    so a float32 eps (1e-13) in its place shows as a 30% error."""
    gen = torch.Generator().manual_seed(23)
    xs = [(0.01 * torch.randn(3, 6, 32, generator=gen)).to(dtype), torch.randn(3, 6, 32, generator=gen).to(dtype)]
    mask = torch.rand(3, 6, generator=gen) > 0.2
    s, g = torch.tensor([1.0, -1.0]), torch.tensor([1.0])
    ref = allennlp_mix(xs, s, g, mask, True, 1e-4)
    wrong = allennlp_mix(xs, s, g, mask, True, 1e-13)
    assert (ref - wrong).abs().max() > 0.1 * ref.abs().max()  # the case does tell the two eps apart
    out = bermo.scalar_mix([x.to(device) for x in xs], s.to(device), g.to(device), mask=mask.to(device),
                           do_layer_norm=True, backend=backend)
    torch.testing.assert_close(out.cpu().double(), ref, rtol=2e-2, atol=2e-2 * ref.abs().max().item())


def test_mask_without_layer_norm_is_still_checked():
    xs = [torch.randn(2, 3, 4)] * 2
    s, g = torch.zeros(2), torch.ones(1)
    ok = bermo.scalar_mix(xs, s, g, mask=torch.ones(2, 3, dtype=torch.bool))  # ignored, as in AllenNLP
    torch.testing.assert_close(ok, bermo.scalar_mix(xs, s, g))
    with pytest.raises(ValueError, match=r"mask shape \(2, 4\) does not match"):
        bermo.scalar_mix(xs, s, g, mask=torch.ones(2, 4, dtype=torch.bool))
    with pytest.raises(TypeError, match="mask must be a torch.Tensor"):
        bermo.scalar_mix(xs, s, g, mask=[[1, 1, 1]])


def test_fallback_warning_points_at_the_callers_line(monkeypatch):
    from bermo import backends

    monkeypatch.setattr(backends, "_cpu_build_error", lambda: "the C++ extension could not be built (test)")
    backends._warn_fallback.cache_clear()
    with pytest.warns(RuntimeWarning, match="falling back") as caught:
        ScalarMix(2)([torch.randn(2, 3)] * 2)
    assert caught[0].filename == __file__, caught[0].filename
    backends._warn_fallback.cache_clear()


def test_triton_kernels_imported_before_the_interpreter_was_set(monkeypatch):
    """Setting TRITON_INTERPRET after the kernels were imported gave a raw interpreter error: now it says what
    to do."""
    pytest.importorskip("triton")
    from bermo import BackendUnavailableError
    from bermo.kernels import scalar_mix_triton

    monkeypatch.setattr(scalar_mix_triton, "_INTERPRETED", False)
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    with pytest.raises(BackendUnavailableError, match="set TRITON_INTERPRET=1 before the first bermo call"):
        bermo.scalar_mix([torch.randn(2, 3)] * 2, torch.zeros(2), torch.ones(1), backend="triton")
