"""The modules after lifecycle operations: copy.deepcopy and pickling of whole modules (torch.save / torch.load
with weights_only=False), dtype casts there and back, requires_grad toggling, torch.func.functional_call,
torch.compile after the module's settings change, DataParallel replicas (emulated on the CPU) of a compressed
BERMo model, zero-sized batches. Each result is compared with the unmodified module's."""
from __future__ import annotations

import copy
import io
import pickle

import pytest
import torch

from bermo.nn import BlockSparseLinear, MaskedLinear, ScalarMix
from helpers import needs_cpu_kernels, tiny_bermo_config as tiny_config
from test_data_parallel_replicas import replica_of

METHODS = ["magnitude", "topK", "threshold", "sigmoied_threshold", "l0"]
BSL_BACKENDS = [pytest.param("reference", id="reference"), pytest.param("cpu", id="cpu", marks=needs_cpu_kernels)]


def saved_and_loaded(module):
    buf = io.BytesIO()
    torch.save(module, buf)
    buf.seek(0)
    return torch.load(buf, weights_only=False)


COPIES = [pytest.param(copy.deepcopy, id="deepcopy"), pytest.param(saved_and_loaded, id="torch_save")]


def masked(method, backend="reference", seed=0):
    torch.manual_seed(seed)
    kw = {"density": 0.5} if method in ("magnitude", "topK") else {}
    if method == "sigmoied_threshold":
        kw["threshold"] = 0.5
    m = MaskedLinear(32, 32, method=method, block_shape=(8, 8), backend=backend, **kw)
    if m.scores is not None:
        with torch.no_grad():
            m.scores.normal_()
    return m.eval()


def block_sparse(backend, seed=0, keep=0.5):
    g = torch.Generator().manual_seed(seed)
    mask = torch.rand(4, 3, generator=g) < keep
    w = torch.randn(64, 48, generator=g) * torch.kron(mask.float(), torch.ones(16, 16))
    return BlockSparseLinear.from_dense(w, torch.randn(64, generator=g), (16, 16), backend=backend), w


def compressed_bermo(backend="reference", crossover=1.0, seed=0):
    """A tiny BERMo classifier, topK-pruned at density 0.4 with 16x16 blocks, compressed (crossover 1.0: every
    pruned layer block-sparse), never called."""
    from bermo.models import BermoForSequenceClassification
    from bermo.pruning import compress, prepare, set_pruning_level

    torch.manual_seed(seed)
    model = BermoForSequenceClassification(tiny_config()).eval()
    prepare(model, method="topK", block_shape=(16, 16), backend=backend)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, MaskedLinear):
                module.scores.normal_()
    set_pruning_level(model, 0.4)
    model.eval()
    masked_logits = logits(copy.deepcopy(model))  # a copy called: the model itself never is
    compress(model, crossover=crossover)
    return model, masked_logits


IDS = torch.tensor([[5, 17, 3, 44, 9, 12, 1], [8, 2, 33, 50, 7, 0, 0]])
MASK = torch.tensor([[1] * 7, [1] * 5 + [0] * 2])


def logits(model, **kw):
    with torch.no_grad():
        return model(input_ids=IDS, attention_mask=MASK, **kw).logits


# ------------------------------------------------------------------------------------- copies of nn modules
@pytest.mark.parametrize("make_copy", COPIES)
def test_scalar_mix_copies(make_copy):
    mix = ScalarMix(3, do_layer_norm=True, initial_scalar_parameters=[0.1, -0.2, 0.3], backend="reference")
    xs, mask = torch.randn(3, 2, 4, 8), torch.ones(2, 4, dtype=torch.bool)
    want = mix(xs, mask)
    other = make_copy(mix)
    torch.testing.assert_close(other(xs, mask), want)
    assert other.backend == "reference" and other.do_layer_norm
    with torch.no_grad():
        other.gamma.mul_(3)
    torch.testing.assert_close(mix(xs, mask), want)  # the copy owns its parameters


@pytest.mark.parametrize("make_copy", COPIES)
@pytest.mark.parametrize("method", METHODS)
def test_masked_linear_copies(method, make_copy):
    m = masked(method)
    m.kept_fraction()  # a measured density / path hint to carry over
    x = torch.randn(5, 32)
    want = m(x)
    other = make_copy(m)
    assert (other.method, other.density, other.threshold, other.block_shape, other.training) == \
        (m.method, m.density, m.threshold, m.block_shape, m.training)
    assert other.measured_density == m.measured_density
    torch.testing.assert_close(other(x), want, rtol=0, atol=0)
    with torch.no_grad():
        other.weight.zero_()
    torch.testing.assert_close(m(x), want, rtol=0, atol=0)


@pytest.mark.parametrize("make_copy", COPIES)
@pytest.mark.parametrize("backend", BSL_BACKENDS)
def test_block_sparse_linear_copies(backend, make_copy):
    layer, w = block_sparse(backend)
    x = torch.randn(3, 48)
    want = x @ w.T + layer.bias.detach()
    layer(x)  # packed (cpu) and checked before the copy
    other = make_copy(layer)
    torch.testing.assert_close(other(x), want)
    with torch.no_grad():
        other.values.mul_(2)  # in place on the copy: the original's packed values must not follow
    torch.testing.assert_close(other(x), x @ (2 * w).T + layer.bias.detach())
    torch.testing.assert_close(layer(x), want)


@pytest.mark.parametrize("make_copy", COPIES)
@pytest.mark.parametrize("backend", BSL_BACKENDS)
def test_block_sparse_linear_copy_still_checks_indices_changed_before_copying(backend, make_copy):
    layer, _ = block_sparse(backend)
    x = torch.randn(2, 48)
    layer(x)
    with torch.no_grad():
        layer.col_indices[0] = 7  # out of range (3 block columns), not yet seen by a forward
    other = make_copy(layer)
    with pytest.raises(ValueError, match="col_indices"):
        other(x)


# --------------------------------------------------------------------------------------------- dtype casts
def test_float64_and_back_is_exact_for_every_module():
    x = torch.randn(5, 32)
    for method in METHODS:
        m = masked(method)
        want = m(x)
        cast = copy.deepcopy(m).double()
        assert cast.weight.dtype == torch.float64 and (cast.scores is None or cast.scores.dtype == torch.float64)
        torch.testing.assert_close(cast(x.double()).float(), want)
        torch.testing.assert_close(cast.float()(x), want, rtol=0, atol=0)
    mix = ScalarMix(3, initial_scalar_parameters=[0.1, -0.2, 0.3], backend="reference")
    xs = torch.randn(3, 2, 4, 8)
    want = mix(xs)
    cast = copy.deepcopy(mix).double()
    assert cast(xs.double()).dtype == torch.float64 and cast.mixing_weights().dtype == torch.float64
    torch.testing.assert_close(cast.float()(xs), want, rtol=0, atol=0)


@pytest.mark.parametrize("backend", BSL_BACKENDS)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float16, torch.bfloat16], ids=str)
def test_block_sparse_linear_cast_and_back(backend, dtype):
    layer, w = block_sparse(backend)
    x = torch.randn(3, 48)
    want = layer(x)
    cast = copy.deepcopy(layer).to(dtype)
    assert cast.crow_indices.dtype == layer.crow_indices.dtype  # the indices are not cast
    y = cast(x.to(dtype))
    assert y.dtype == dtype
    ref = x.to(dtype).double() @ cast.to_dense().double().T + cast.bias.double()
    torch.testing.assert_close(y.double(), ref, rtol=2e-2, atol=5e-2)
    back = cast.float()(x)
    if dtype == torch.float64:
        torch.testing.assert_close(back, want)


# ------------------------------------------------------------------------------------- requires_grad toggling
@pytest.mark.parametrize("backend", [pytest.param("reference", id="reference"),
                                     pytest.param("cpu", id="cpu", marks=needs_cpu_kernels)])
@pytest.mark.parametrize("method", METHODS)
def test_masked_linear_frozen_then_trained_again(method, backend):
    m = masked(method, backend)
    ref = masked(method, "reference")
    x = torch.randn(4, 32)
    m.requires_grad_(False)
    assert not m(x).requires_grad
    m.requires_grad_(True)
    (m(x) * torch.arange(32.0)).sum().backward()
    (ref(x) * torch.arange(32.0)).sum().backward()
    for (name, p), q in zip(m.named_parameters(), ref.parameters()):
        assert p.grad is not None, name
        torch.testing.assert_close(p.grad, q.grad, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("backend", BSL_BACKENDS)
def test_block_sparse_linear_frozen_then_trained_again(backend):
    layer, w = block_sparse(backend)
    x = torch.randn(3, 48)
    layer.requires_grad_(False)
    layer(x)
    layer.requires_grad_(True)
    layer(x).sum().backward()
    bo, bi = layer.block_shape
    dense_grad = torch.ones(3, 64).T @ x  # d(sum y)/dW
    want = torch.stack([dense_grad[r * bo:(r + 1) * bo, c * bi:(c + 1) * bi]
                        for r in range(4) for c in range(3)
                        if any(int(layer.col_indices[j]) == c
                               for j in range(int(layer.crow_indices[r]), int(layer.crow_indices[r + 1])))])
    torch.testing.assert_close(layer.values.grad, want)
    torch.testing.assert_close(layer.bias.grad, torch.full((64,), 3.0))


def test_l0_train_eval_toggling_keeps_the_eval_mask():
    m = masked("l0")
    x = torch.randn(4, 32)
    want = m(x)
    m.train()
    torch.manual_seed(1)
    a = m(x)
    m.eval()
    torch.testing.assert_close(m(x), want, rtol=0, atol=0)
    other = copy.deepcopy(m.train())
    assert other.training
    torch.manual_seed(1)
    torch.testing.assert_close(other(x), a, rtol=0, atol=0)  # the same noise under the same seed


# --------------------------------------------------------------------------------------------- functional_call
@pytest.mark.parametrize("backend", BSL_BACKENDS)
def test_functional_call_block_sparse_linear_with_another_pattern(backend):
    layer, w = block_sparse(backend, seed=0, keep=0.5)
    other, w2 = block_sparse(backend, seed=5, keep=0.9)
    assert layer.nnz != other.nnz
    x = torch.randn(3, 48)
    want = layer(x)
    tensors = {**{k: v.detach().clone() for k, v in other.named_parameters()},
               **{k: v.clone() for k, v in other.named_buffers()}}
    torch.testing.assert_close(torch.func.functional_call(layer, tensors, (x,)), other(x))
    torch.testing.assert_close(layer(x), want)  # the layer's own tensors are back
    doubled = {k: v.detach() * 2 for k, v in layer.named_parameters()}
    torch.testing.assert_close(torch.func.functional_call(layer, doubled, (x,)), 2 * want)


@pytest.mark.parametrize("method", ["topK", "threshold", "magnitude"])
def test_functional_call_masked_linear_uses_the_given_scores(method):
    m = masked(method)
    x = torch.randn(4, 32)
    want = m(x)
    params = {k: v.detach().clone() for k, v in m.named_parameters()}
    params["weight"] = params["weight"].flip(0)
    if "scores" in params:
        params["scores"] = -params["scores"]
    expected = copy.deepcopy(m)
    with torch.no_grad():
        expected.weight.copy_(params["weight"])
        if expected.scores is not None:
            expected.scores.neg_()
    torch.testing.assert_close(torch.func.functional_call(m, params, (x,)), expected(x), rtol=0, atol=0)
    torch.testing.assert_close(m(x), want, rtol=0, atol=0)


# --------------------------------------------------------------------------------------------- torch.compile
@needs_cpu_kernels
def test_compiled_masked_linear_step_follows_density_and_mode_changes():
    m = masked("topK", "cpu")
    m.train()
    e = copy.deepcopy(m)

    def step(module, x):
        loss = (module(x) * torch.arange(32.0)).sum()
        loss.backward()
        return loss.detach()

    compiled = torch.compile(step)
    x = torch.randn(6, 32)
    for density in (0.5, 0.25):
        m.density = e.density = density
        for p in list(m.parameters()) + list(e.parameters()):
            p.grad = None
        torch.testing.assert_close(compiled(m, x), step(e, x), rtol=1e-4, atol=1e-4)
        for p, q in zip(m.parameters(), e.parameters()):
            torch.testing.assert_close(p.grad, q.grad, rtol=1e-4, atol=1e-4)


# ------------------------------------------------------------------------------------ compressed BERMo models
@pytest.mark.parametrize("backend", BSL_BACKENDS)
def test_compressed_bermo_deepcopy_and_cast(backend):
    model, masked_logits = compressed_bermo(backend)
    assert any(isinstance(m, BlockSparseLinear) for m in model.modules())
    want = logits(model)
    torch.testing.assert_close(want, masked_logits, rtol=1e-5, atol=2e-5)
    other = copy.deepcopy(model)
    torch.testing.assert_close(logits(other), want, rtol=0, atol=0)
    with torch.no_grad():
        hidden = other(input_ids=IDS, output_hidden_states=True).hidden_states
    assert len(hidden) == 3
    cast = copy.deepcopy(model).double()
    assert cast.bert.scalar_mix.gamma.dtype == torch.float64
    torch.testing.assert_close(logits(cast).float(), want, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(logits(cast.float()), want, rtol=0, atol=0)


def test_compressed_bermo_torch_save_before_any_call():
    model, _ = compressed_bermo()
    loaded = saved_and_loaded(model)
    torch.testing.assert_close(logits(loaded), logits(model), rtol=0, atol=0)
    with torch.no_grad():
        assert len(loaded(input_ids=IDS, output_hidden_states=True).hidden_states) == 3


@pytest.mark.parametrize("dump", [pytest.param(pickle.dumps, id="pickle"),
                                  pytest.param(saved_and_loaded, id="torch_save")])
def test_bermo_model_pickles_after_a_forward(dump):
    """transformers 5 installs its hidden-state capture hooks (local closures) at the first forward; BERMo always
    captures hidden states, so a called BERMo model could not be pickled (torch.save of the module,
    multiprocessing). The copy captures hidden states again, once."""
    from bermo.models import BermoForSequenceClassification

    torch.manual_seed(0)
    model = BermoForSequenceClassification(tiny_config()).eval()
    want = logits(model)
    out = dump(model)
    loaded = pickle.loads(out) if isinstance(out, bytes) else out
    torch.testing.assert_close(logits(loaded), want)
    with torch.no_grad():
        assert len(loaded(input_ids=IDS, output_hidden_states=True).hidden_states) == 3


@pytest.mark.parametrize("backend", BSL_BACKENDS)
def test_compressed_bermo_replicas_in_eval(backend):
    model, _ = compressed_bermo(backend)
    assert any(isinstance(m, BlockSparseLinear) for m in model.modules())
    want = logits(copy.deepcopy(model))
    for _ in range(3):  # afresh at every step, as DataParallel makes them, from a model never called itself
        with torch.no_grad():
            out = replica_of(model)(input_ids=IDS, attention_mask=MASK, output_hidden_states=True)
        assert len(out.hidden_states) == 3
        torch.testing.assert_close(out.logits, want)
    replica_of(model)(input_ids=IDS, attention_mask=MASK, labels=torch.tensor([0, 2])).loss.backward()
    values = [m.values for m in model.modules() if isinstance(m, BlockSparseLinear)]
    assert all(v.grad is not None for v in values)


@pytest.mark.parametrize("crossover", [1.0, 0.0], ids=["block_sparse", "dense"])
def test_compress_keeps_the_eval_mode_of_replaced_layers(crossover):
    """compress built its new layers (BlockSparseLinear, resized nn.Linear, a headless self-attention) in training
    mode: an eval model came back with submodules in training mode."""
    model, _ = compressed_bermo(crossover=crossover)
    assert not model.training
    assert [n for n, m in model.named_modules() if m.training] == []


# --------------------------------------------------------------------------------------------- empty batches
@pytest.mark.parametrize("backend", BSL_BACKENDS)
@pytest.mark.parametrize("shape", [(0, 48), (0, 5, 48), (2, 0, 48)], ids=str)
def test_zero_sized_batches_through_block_sparse_and_masked_layers(backend, shape):
    layer, _ = block_sparse(backend)
    x = torch.randn(*shape, requires_grad=True)
    y = layer(x)
    assert y.shape == (*shape[:-1], 64)
    y.sum().backward()
    assert x.grad.shape == x.shape and not layer.values.grad.any()
    m = MaskedLinear(48, 32, method="topK", block_shape=(16, 16), density=0.5, backend=backend)
    y = m(x)
    assert y.shape == (*shape[:-1], 32)
    y.sum().backward()
    assert not m.weight.grad.any() and not m.scores.grad.any()


@pytest.mark.parametrize("layer_norm", [False, True], ids=["mix", "layernorm"])
def test_zero_sized_batch_through_scalar_mix(layer_norm):
    mix = ScalarMix(3, do_layer_norm=layer_norm, backend="reference")
    xs = [torch.randn(0, 5, 8, requires_grad=True) for _ in range(3)]
    mask = torch.ones(0, 5, dtype=torch.bool) if layer_norm else None
    y = mix(xs, mask)
    assert y.shape == (0, 5, 8)
    y.sum().backward()
    assert all(torch.isfinite(p.grad).all() and not p.grad.any() for p in mix.parameters())
