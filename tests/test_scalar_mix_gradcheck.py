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
