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


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32], ids=str)
def test_vector_and_elementwise_variants_agree_bitwise_on_gpu(dtype):
    """The two variants differ only in how they move bytes: elementwise results (the output, the layer
    gradients) are bitwise equal; per-tile reductions may sum in another order (the vector layout hands each
    thread other elements), so they agree to float32 rounding."""
    from bermo.kernels import scalar_mix_triton as k

    gen = torch.Generator().manual_seed(5)
    L, shape = 13, (4, 128, 768)
    layers = [torch.randn(shape, generator=gen).to(dtype).cuda() for _ in range(L)]
    g = torch.randn(shape, generator=gen).to(dtype).cuda()
    coef, center = torch.rand(L, generator=gen).cuda(), torch.randn(L, generator=gen).cuda()
    row_mask = (torch.rand(shape[0] * shape[1], generator=gen) > 0.2).float().cuda()
    need = [k_ % 3 != 1 for k_ in range(L)]
    runs, sums = {}, {}
    for aligned in (None, False):
        grads, dots = k.mix_backward(g, layers, coef, center, need, True, aligned=aligned)
        runs[aligned] = [k.mix_forward(layers, coef, center, aligned=aligned), *grads,
                         *k.ln_backward(g, layers, row_mask, coef, coef, center, center, need, aligned=aligned)]
        sums[aligned] = [dots, *k.ln_stats(layers, row_mask, aligned=aligned)]
    for a, b in zip(runs[None], runs[False]):
        assert torch.equal(a, b)
    for a, b in zip(sums[None], sums[False]):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5 * b.abs().max().item())
    want = sum(c * (t.double() - m) for c, m, t in zip(coef.double(), center.double(), layers))
    torch.testing.assert_close(runs[None][0].double(), want, rtol=1e-2, atol=1e-2)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=str)
@pytest.mark.parametrize("do_layer_norm", [False, True], ids=["mix", "layernorm"])
def test_sixteen_bit_outputs_round_to_nearest_on_gpu(dtype, do_layer_norm):
    """Compiled kernels round float32 to nearest (Triton's interpreter truncates, so only a GPU can check)."""
    import bermo
    from helpers import allennlp_mix, assert_rounds_to_nearest

    gen = torch.Generator().manual_seed(6)
    xs = [torch.randn(8, 64, 256, generator=gen).to(dtype) for _ in range(7)]
    mask = torch.rand(8, 64, generator=gen) > 0.2 if do_layer_norm else None
    s, gamma = torch.randn(7, generator=gen), torch.tensor([1.3])
    out = bermo.scalar_mix([x.cuda() for x in xs], s.cuda(), gamma.cuda(),
                           mask=None if mask is None else mask.cuda(), do_layer_norm=do_layer_norm, backend="triton")
    assert_rounds_to_nearest(out, allennlp_mix(xs, s, gamma, mask, do_layer_norm, 1e-4))


def test_captured_cuda_graph_replays_with_new_values():
    """The layer addresses reach the kernels through a device table. Inside a CUDA graph capture a new table is
    written by captured fills, kept alive and kept out of the eager cache (an eager call right after the capture,
    before any replay, read it unwritten); a cached table the capture reads is kept alive though the cache evicts
    it. Replays with new values in the graph's inputs stay right."""
    from bermo.kernels import layout

    gen = torch.Generator().manual_seed(3)
    L, shape = 5, (4, 33, 96)
    module = ScalarMix(L, initial_scalar_parameters=torch.randn(L, generator=gen).tolist()).cuda()
    w = torch.softmax(torch.cat([p.detach() for p in module.scalar_parameters]), 0)

    def want(layers):
        return module.gamma.detach() * sum(wk * x for wk, x in zip(w, layers))

    def fresh():
        return [torch.randn(shape, generator=gen).cuda() for _ in range(L)]

    warm, new = fresh(), fresh()
    stream = torch.cuda.Stream()  # one stream for every call here: one table key per set of layers
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        module(warm)  # compiles the kernels and caches a filled table for `warm`
    graphs, outs = [torch.cuda.CUDAGraph(), torch.cuda.CUDAGraph()], []
    for graph, layers in zip(graphs, (new, warm)):  # a table made in the capture; a cached one read by it
        with torch.cuda.graph(graph, stream=stream):
            outs.append(module(layers))
    with torch.cuda.stream(stream):
        eager = module(new)  # right after the captures, before any replay
    torch.cuda.current_stream().wait_stream(stream)
    torch.testing.assert_close(eager, want(new))
    for _ in range(3):
        for layers in (new, warm):
            for x in layers:
                x.copy_(torch.randn(shape, generator=gen).cuda())
        others = [torch.empty(1, device="cuda") for _ in range(layout._TABLES_MAX + 2)]
        for t in others:  # evict every cached table: their memory goes back to the allocator
            layout.pointer_table([t], torch.device("cuda"))
        del others
        for graph in graphs:
            graph.replay()
        torch.cuda.synchronize()
        torch.testing.assert_close(outs[0], want(new))
        torch.testing.assert_close(outs[1], want(warm))
