"""GPU-only checks (skipped without CUDA): auto dispatch picks Triton, and parity at BERT-large shape in bf16."""
import pytest
import torch

from bermo import ScalarMix
from bermo import backends
from helpers import assert_close, reference_grads

pytestmark = pytest.mark.gpu


def test_auto_picks_triton_on_cuda():
    assert backends.resolve(None, torch.device("cuda"), "ScalarMix") == "triton"


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32], ids=str)
@pytest.mark.parametrize("do_layer_norm", [False, True], ids=["mix", "layernorm"])
def test_bert_large_parity_on_gpu(dtype, do_layer_norm):
    gen = torch.Generator().manual_seed(0)
    L, shape = 25, (8, 128, 1024)
    base = [torch.randn(shape, generator=gen).to(dtype) for _ in range(L)]
    scalars = torch.randn(L, generator=gen).tolist()
    mask = torch.rand(shape[:-1], generator=gen) > 0.2 if do_layer_norm else None
    g = torch.randn(shape, generator=gen).to(dtype)
    module = ScalarMix(L, do_layer_norm=do_layer_norm, initial_scalar_parameters=scalars).cuda()
    xs = [t.cuda().requires_grad_() for t in base]
    out = module(xs, None if mask is None else mask.cuda())
    out.backward(g.cuda())
    eps = 1e-13 if dtype == torch.float32 else 1e-4
    ref_out, ref_layers, ref_s, _ = reference_grads(base, torch.tensor(scalars).double(), torch.ones(1).double(), g,
                                                    mask, do_layer_norm, eps)
    rtol = {torch.float32: 2e-5, torch.bfloat16: 1.6e-2, torch.float16: 2e-3}[dtype]
    assert_close(out.cpu(), ref_out, rtol)
    for x, r in zip(xs, ref_layers):
        assert_close(x.grad.cpu(), r, rtol * 2)
    scale = (g.double().abs() * torch.stack([t.double().abs() for t in base]).amax(0)).sum().item()
    assert_close(torch.cat([p.grad for p in module.scalar_parameters]).cpu(), ref_s, 1e-4, scale=scale)


def test_large_tensor_int64_offsets_on_gpu():
    rows, cols = 2**16 + 1, 2**15  # 2**31 + 2**15 elements
    x = torch.zeros(rows, cols, dtype=torch.float16, device="cuda")
    x[-1, -4:] = torch.tensor([1.0, 2.0, 3.0, 4.0], device="cuda")
    module = ScalarMix(1).cuda()
    with torch.no_grad():
        module.gamma.fill_(2.0)
        out = module([x])
    assert out[-1, -4:].tolist() == [2.0, 4.0, 6.0, 8.0] and out[0].abs().max().item() == 0.0
