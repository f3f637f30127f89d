"""torch.autograd.gradcheck in float64 of the fused Functions, through every backend."""
import pytest
import torch

import bermo
from helpers import BACKENDS


@pytest.mark.parametrize("backend,device", BACKENDS)
@pytest.mark.parametrize("do_layer_norm", [False, True], ids=["mix", "layernorm"])
@pytest.mark.parametrize("stacked", [False, True], ids=["list", "stacked"])
def test_gradcheck(backend, device, do_layer_norm, stacked):
    gen = torch.Generator().manual_seed(1)
    L, shape = 3, (2, 3, 5)
    layers = [torch.randn(shape, generator=gen, dtype=torch.float64).to(device).requires_grad_() for _ in range(L)]
    if stacked:
        layers = [torch.stack([t.detach() for t in layers]).requires_grad_()]
    scalars = torch.randn(L, generator=gen, dtype=torch.float64).to(device).requires_grad_()
    gamma = torch.tensor([1.3], dtype=torch.float64, device=device, requires_grad=True)
    mask = torch.tensor([[1, 1, 0], [1, 0, 0]], dtype=torch.bool, device=device) if do_layer_norm else None

    def fn(scalars, gamma, *xs):
        tensors = xs[0] if stacked else list(xs)
        return bermo.scalar_mix(tensors, scalars, gamma, mask=mask, do_layer_norm=do_layer_norm, backend=backend)

    assert torch.autograd.gradcheck(fn, (scalars, gamma, *layers), eps=1e-6, atol=1e-7, rtol=1e-5)


@pytest.mark.parametrize("backend,device", BACKENDS)
@pytest.mark.parametrize("do_layer_norm", [False, True], ids=["mix", "layernorm"])
@pytest.mark.parametrize("stacked", [False, True], ids=["list", "stacked"])
def test_gradgradcheck(backend, device, do_layer_norm, stacked):
    """Double backward (create_graph=True: gradient penalties) is differentiable and right on every backend,
    never the silent zero a kernel backward that builds no graph would give."""
    gen = torch.Generator().manual_seed(2)
    L, shape = 3, (2, 3, 4)
    layers = [torch.randn(shape, generator=gen, dtype=torch.float64).to(device).requires_grad_() for _ in range(L)]
    if stacked:
        layers = [torch.stack([t.detach() for t in layers]).requires_grad_()]
    scalars = torch.randn(L, generator=gen, dtype=torch.float64).to(device).requires_grad_()
    gamma = torch.tensor([0.8], dtype=torch.float64, device=device, requires_grad=True)
    mask = torch.tensor([[1, 1, 0], [1, 0, 1]], dtype=torch.bool, device=device) if do_layer_norm else None

    def fn(scalars, gamma, *xs):
        tensors = xs[0] if stacked else list(xs)
        return bermo.scalar_mix(tensors, scalars, gamma, mask=mask, do_layer_norm=do_layer_norm, backend=backend)

    assert torch.autograd.gradgradcheck(fn, (scalars, gamma, *layers), eps=1e-6, atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("backend,device", BACKENDS)
@pytest.mark.parametrize("do_layer_norm", [False, True], ids=["mix", "layernorm"])
def test_gradient_penalty_matches_reference(backend, device, do_layer_norm):
    """The values a gradient penalty gets (the issue's example gave 0 against 25.49): equal to the reference."""
    gen = torch.Generator().manual_seed(3)
    base = [torch.randn(2, 5, 6, generator=gen) for _ in range(4)]
    mask = (torch.rand(2, 5, generator=gen) > 0.3).to(device) if do_layer_norm else None

    def penalty_grads(b):
        xs = [t.to(device).requires_grad_() for t in base]
        s = torch.tensor([0.2, -0.4, 0.1, 0.7], device=device, requires_grad=True)
        g = torch.tensor([1.2], device=device, requires_grad=True)
        out = bermo.scalar_mix(xs, s, g, mask=mask, do_layer_norm=do_layer_norm, backend=b)
        first = torch.autograd.grad((out ** 2).sum(), xs + [s, g], create_graph=True)
        penalty = sum(t.pow(2).sum() for t in first)
        return torch.autograd.grad(penalty, [s, g, xs[0]])

    got, want = penalty_grads(backend), penalty_grads("reference")
    for a, b in zip(got, want):
        assert b.abs().max() > 0
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4 * b.abs().max().item())


@pytest.mark.parametrize("backend,device", BACKENDS)
@pytest.mark.parametrize("do_layer_norm", [False, True], ids=["mix", "layernorm"])
def test_create_graph_with_a_layer_passed_twice(backend, device, do_layer_norm):
    """A tensor passed as several layers gets the sum of its slots' gradients once under create_graph=True too
    (each slot got the whole sum, n times the gradient for n slots), and the second order follows; gradgradcheck
    on the tensor itself."""
    gen = torch.Generator().manual_seed(4)
    x = torch.randn(2, 3, 5, generator=gen, dtype=torch.float64).to(device).requires_grad_()
    y = torch.randn(2, 3, 5, generator=gen, dtype=torch.float64).to(device).requires_grad_()
    s = torch.tensor([0.1, -0.3, 0.5], dtype=torch.float64, device=device, requires_grad=True)
    g = torch.tensor([1.1], dtype=torch.float64, device=device, requires_grad=True)
    mask = torch.tensor([[1, 1, 0], [1, 0, 1]], dtype=torch.bool, device=device) if do_layer_norm else None

    def first(b):
        out = bermo.scalar_mix([x, y, x], s, g, mask=mask, do_layer_norm=do_layer_norm, backend=b)
        return torch.autograd.grad((out ** 2).sum(), [x, y, s, g], create_graph=True)

    got, want = first(backend), first("reference")
    plain = torch.autograd.grad((bermo.scalar_mix([x, y, x], s, g, mask=mask, do_layer_norm=do_layer_norm,
                                                  backend=backend) ** 2).sum(), [x])[0]
    torch.testing.assert_close(got[0].detach(), plain, rtol=1e-10, atol=1e-12)
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)
    second = torch.autograd.grad(sum(t.pow(2).sum() for t in got), [x, s])
    second_want = torch.autograd.grad(sum(t.pow(2).sum() for t in want), [x, s])
    for a, b in zip(second, second_want):
        torch.testing.assert_close(a, b, rtol=1e-8, atol=1e-10)

    def fn(x, y, s, g):
        return bermo.scalar_mix([x, y, x], s, g, mask=mask, do_layer_norm=do_layer_norm, backend=backend)

    assert torch.autograd.gradgradcheck(fn, (x, y, s, g), eps=1e-6, atol=1e-6, rtol=1e-5)
