"""The linear ops under torch.autocast (what HF Trainer's bf16/fp16 runs): inputs cast as F.linear casts them,
outputs in the autocast dtype, float32 parameters with float32 gradients equal to those of the explicit casts;
nothing changes outside autocast or for float64."""
import pytest
import torch

from bermo.nn import BlockSparseLinear, MaskedLinear
from conftest import HAS_TRITON, TRITON_DEVICE

BACKENDS = ["reference", "cpu"] + (["triton"] if HAS_TRITON else [])


def _device(backend):
    return TRITON_DEVICE if backend == "triton" else "cpu"


def _autocast(device):
    return torch.autocast(device, dtype=torch.bfloat16)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("method", ["topK", "magnitude", "l0"])
def test_masked_linear_casts_like_f_linear(backend, method):
    dev = _device(backend)
    torch.manual_seed(0)
    layer = MaskedLinear(64, 96, method=method, block_shape=(32, 32), density=0.5, backend=backend).to(dev).eval()
    if layer.scores is not None:
        with torch.no_grad():
            layer.scores.normal_()
    x = torch.randn(5, 64, device=dev)
    with _autocast(dev):
        y = layer(x)
    assert y.dtype == torch.bfloat16
    y.float().square().sum().backward()
    grads = {n: p.grad.clone() for n, p in layer.named_parameters()}
    assert all(g.dtype == torch.float32 and torch.isfinite(g).all() for g in grads.values())
    # the same computation with the casts written out
    layer.zero_grad()
    from bermo.ops.masked_linear import masked_linear
    want = masked_linear(x.bfloat16(), layer.weight.bfloat16(), layer.block_mask(), layer.bias.bfloat16(), (32, 32),
                         backend=backend, density=None if method == "l0" else 0.5)  # the layer's own hint
    assert torch.equal(y, want)
    want.float().square().sum().backward()
    for n, p in layer.named_parameters():
        assert torch.equal(p.grad, grads[n]), n


def test_outside_autocast_and_float64_nothing_is_cast():
    layer = MaskedLinear(64, 32, method="topK", block_shape=(32, 32), density=0.5, backend="cpu")
    x = torch.randn(3, 64)
    assert layer(x).dtype == torch.float32
    layer64 = layer.double()
    with _autocast("cpu"):
        assert layer64(x.double()).dtype == torch.float64


@pytest.mark.parametrize("backend", BACKENDS)
def test_block_sparse_linear_casts_like_f_linear(backend):
    dev = _device(backend)
    torch.manual_seed(1)
    mask = torch.rand(3, 2) < 0.5
    mask[0, 0] = True
    w = torch.randn(96, 64) * torch.kron(mask.float(), torch.ones(32, 32))
    b = torch.randn(96)
    layer = BlockSparseLinear.from_dense(w, b, (32, 32), mask=mask).to(dev)
    layer.backend = backend
    x = torch.randn(7, 64, device=dev)
    with _autocast(dev), torch.no_grad():
        y = layer(x)
    assert y.dtype == torch.bfloat16
    want = torch.nn.functional.linear(x.bfloat16().double(), w.to(dev).bfloat16().double(),
                                      b.to(dev).bfloat16().double())
    assert (y.double() - want).abs().max().item() <= 2e-2 * want.abs().max().item()
