"""ScalarMix inside torch.compile: the fused kernels are opaque custom ops with fake implementations."""
import pytest
import torch

from bermo import ScalarMix
from helpers import BACKENDS


def test_custom_ops_are_registered_with_fake_implementations():
    from torch._subclasses.fake_tensor import FakeTensorMode

    ops = torch.ops.bermo
    with FakeTensorMode():
        xs = [torch.empty(2, 3, 8) for _ in range(3)]
        coef = torch.empty(3)
        out = ops.scalar_mix_forward(xs, coef, torch.empty(1), "cpu")
        grads, sums = ops.scalar_mix_backward(out, xs, coef, coef, [True, False, True], True, False, "cpu")
        (stacked_grad,), _ = ops.scalar_mix_backward(out, xs, coef, coef, [True] * 3, True, True, "cpu")
        mean, var, count = ops.scalar_mix_ln_stats(xs, torch.empty(6), "cpu")
    assert out.shape == (2, 3, 8) and [g.shape for g in grads] == [(2, 3, 8)] * 2 and sums.shape == (4,)
    assert stacked_grad.shape == (3, 2, 3, 8)
    assert mean.shape == var.shape == (3,) and count.shape == ()


@pytest.mark.slow
@pytest.mark.parametrize("backend,device", [p for p in BACKENDS if p.values[0] == "cpu"])
@pytest.mark.parametrize("do_layer_norm", [False, True], ids=["mix", "layernorm"])
def test_compiled_forward_and_backward_match_eager(backend, device, do_layer_norm):
    torch._dynamo.reset()
    module = ScalarMix(4, do_layer_norm=do_layer_norm, initial_scalar_parameters=[0.1, 0.5, -0.3, 0.0],
                       backend=backend)
    gen = torch.Generator().manual_seed(0)
    base = [torch.randn(2, 5, 16, generator=gen) for _ in range(4)]
    mask = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]], dtype=torch.bool) if do_layer_norm else None

    def step(mod, xs):
        out = mod(xs, mask)
        return out, torch.autograd.grad((out * out).sum(), xs + list(mod.parameters()))

    # Without layer norm the whole mix is one graph; the layer-norm mask check reads the mask's values.
    compiled = torch.compile(module, backend="aot_eager", fullgraph=not do_layer_norm)
    xs_e = [t.clone().requires_grad_() for t in base]
    xs_c = [t.clone().requires_grad_() for t in base]
    out_e, grads_e = step(module, xs_e)
    out_c, grads_c = step(compiled, xs_c)
    torch.testing.assert_close(out_c, out_e)
    for a, b in zip(grads_c, grads_e):
        torch.testing.assert_close(a, b)
