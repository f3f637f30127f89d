"""bermo.nn.MaskedLinear: the masks of every pruning method against their formulas, the gradients the scores
get, the nn.Linear surface (init, from_linear, state_dict), torch.compile, and every error."""
import pytest
import torch
from torch import nn

from bermo.nn import MaskedLinear
from bermo.nn.masked_linear import kept_count
from bermo.ops.masked_linear import masked_linear  # the function, whatever bermo.ops exports
from conftest import TRITON_DEVICE
from helpers import RTOL, assert_close

# The op's backends the module is tested on: the eager formula, the C++ kernels and the Triton kernels (through
# the interpreter on a machine without a GPU, on CUDA tensors where there is one).
BACKENDS_UNDER_TEST = ["reference", "cpu", "triton"]

METHODS = ["magnitude", "topK", "threshold", "sigmoied_threshold", "l0"]
STRAIGHT_THROUGH = ["topK", "threshold", "sigmoied_threshold"]


def device_of(backend):
    return TRITON_DEVICE if backend == "triton" else "cpu"


def gen(seed):
    return torch.Generator().manual_seed(seed)


# ------------------------------------------------------------------------------ independent formulas (float64)
def expand(mask, block_shape):
    """The compact mask over the weight's shape, with kron (not the op's repeat_interleave)."""
    return torch.kron(mask.double(), torch.ones(block_shape, dtype=torch.float64, device=mask.device))


def blocksum(t, block_shape):
    bo, bi = block_shape
    return t.reshape(t.shape[0] // bo, bo, t.shape[1] // bi, bi).sum(dim=(1, 3))


def top_set(values, k):
    """Positions (flattened) of the k largest values, of equal values the lower index first: plain Python."""
    flat = values.detach().double().flatten().tolist()
    order = sorted(range(len(flat)), key=lambda i: (-flat[i], i))
    keep = torch.zeros(len(flat), dtype=torch.bool)
    keep[order[:k]] = True
    return keep.view(values.shape)


def formula_block_mask(method, weight, scores, block_shape, density, threshold, u=None):
    """What each method's mask must be (float64; bool for magnitude)."""
    n = scores.numel() if scores is not None else weight.numel() // (block_shape[0] * block_shape[1])
    k = max(1, round(density * n))
    if method == "magnitude":
        return top_set(blocksum(weight.double() ** 2, block_shape).sqrt(), k)
    s = scores.double()
    if method == "topK":
        return top_set(s, k).double()
    if method == "threshold":
        return (s > threshold).double()
    if method == "sigmoied_threshold":
        return (torch.sigmoid(s) > threshold).double()
    if u is None:
        z = torch.sigmoid(s)
    else:
        u = u.double()
        z = torch.sigmoid((torch.log(u) - torch.log(1 - u) + s) / (2 / 3))
    return torch.clamp(z * 1.2 - 0.1, 0, 1)


def formula_output(x, weight, block_mask, bias, block_shape):
    w = weight.double() * expand(block_mask, block_shape)
    y = x.double() @ w.T
    return y if bias is None else y + bias.double()


def formula_grads(x, weight, block_mask, dy, block_shape):
    """(grad x, grad weight, grad mask, grad bias) of ``x @ (weight * expand(mask)).T + bias``, float64."""
    x2, dy2 = x.double().reshape(-1, x.shape[-1]), dy.double().reshape(-1, dy.shape[-1])
    m = expand(block_mask, block_shape)
    g = dy2.T @ x2
    return ((dy2 @ (weight.double() * m)).reshape(x.shape), g * m, blocksum(g * weight.double(), block_shape),
            dy2.sum(0))


def make(method, in_f=16, out_f=8, block_shape=(1, 1), density=0.5, threshold=0.0, seed=0, backend="reference",
         dtype=torch.float32, **kw):
    """A module with random weight, bias and scores (scores spread so that every method prunes some blocks)."""
    torch.manual_seed(seed)
    device = device_of(backend)
    scores_init = None
    if method != "magnitude":
        shape = (out_f // block_shape[0], in_f // block_shape[1])
        scores_init = torch.randn(shape, generator=gen(seed + 100)) * 2
    m = MaskedLinear(in_f, out_f, method=method, block_shape=block_shape, density=density, threshold=threshold,
                     scores_init=scores_init, backend=backend, device=device, dtype=dtype, **kw)
    return m


def threshold_for(method):
    return {"threshold": 0.3, "sigmoied_threshold": 0.6}.get(method, 0.0)


# ---------------------------------------------------------------------------------------------- the surface
def test_built_directly_it_is_an_nn_linear_with_the_same_init_and_keys():
    for bias in (True, False):
        torch.manual_seed(3)
        lin = nn.Linear(12, 6, bias=bias)
        torch.manual_seed(3)
        m = MaskedLinear(12, 6, bias=bias, method="topK")
        assert isinstance(m, nn.Linear) and torch.equal(m.weight, lin.weight)
        assert (m.bias is None) if not bias else torch.equal(m.bias, lin.bias)
        assert list(m.state_dict()) == list(lin.state_dict()) + ["scores"]
    magnitude = MaskedLinear(12, 6, method="magnitude")
    assert magnitude.scores is None and list(magnitude.state_dict()) == ["weight", "bias"]
    assert [name for name, _ in magnitude.named_parameters()] == ["weight", "bias"]


@pytest.mark.parametrize("method", METHODS[1:])
def test_scores_shape_dtype_and_init(method):
    m = MaskedLinear(12, 6, method=method, block_shape=(2, 3), dtype=torch.bfloat16)
    assert isinstance(m.scores, nn.Parameter) and m.scores.requires_grad
    assert m.scores.shape == (3, 4) and m.scores.dtype == torch.float32 and m.weight.dtype == torch.bfloat16
    assert torch.equal(m.scores, torch.zeros(3, 4))
    assert torch.equal(MaskedLinear(12, 6, method=method, scores_init=0.25).scores, torch.full((6, 12), 0.25))
    init = torch.randn(3, 4, dtype=torch.float64)
    m = MaskedLinear(12, 6, method=method, block_shape=(2, 3), scores_init=init)
    assert m.scores.dtype == torch.float32 and torch.equal(m.scores, init.float())
    init.zero_()  # a copy, not a view of the caller's tensor
    assert m.scores.abs().sum() > 0


def test_from_linear_copies_weight_and_bias_and_draws_no_random_numbers():
    lin = nn.Linear(8, 4).to(torch.float64)
    lin.weight.requires_grad_(False)  # frozen stays frozen
    state = torch.get_rng_state()
    m = MaskedLinear.from_linear(lin, method="topK", block_shape=(2, 2), density=0.5, scores_init=1.5)
    assert torch.equal(state, torch.get_rng_state())
    assert m.weight.dtype == torch.float64 and m.weight.device == lin.weight.device
    assert torch.equal(m.weight, lin.weight) and torch.equal(m.bias, lin.bias)
    assert m.weight.data_ptr() != lin.weight.data_ptr()  # copied, not shared
    assert not m.weight.requires_grad and m.bias.requires_grad
    lin.weight.requires_grad_(True)
    lin.bias.requires_grad_(False)
    m2 = MaskedLinear.from_linear(lin, method="magnitude")
    assert m2.weight.requires_grad and not m2.bias.requires_grad
    assert m.scores.dtype == torch.float32 and torch.equal(m.scores, torch.full((2, 4), 1.5))
    assert (m.method, m.block_shape, m.density) == ("topK", (2, 2), 0.5)
    nobias = MaskedLinear.from_linear(nn.Linear(8, 4, bias=False), method="l0", scores_init=torch.ones(4, 8))
    assert nobias.bias is None and torch.equal(nobias.scores, torch.ones(4, 8))
    assert MaskedLinear.from_linear(lin, method="magnitude").scores is None


@pytest.mark.parametrize("backend", BACKENDS_UNDER_TEST)
@pytest.mark.parametrize("method", METHODS)
def test_from_linear_at_full_density_equals_the_linear(backend, method):
    """Density 1.0 (or a threshold that keeps every block) computes what the nn.Linear computes: bitwise, output
    and gradients, in float32 with the reference backend."""
    device = device_of(backend)
    torch.manual_seed(5)
    lin = nn.Linear(24, 12).to(device)
    threshold = {"threshold": -1e30, "sigmoied_threshold": 0.0}.get(method, 0.0)
    scores_init = 20.0 if method == "l0" else None  # l0: clamp(sigmoid(20) * 1.2 - 0.1) = 1 exactly
    m = MaskedLinear.from_linear(lin, method=method, block_shape=(3, 4), density=1.0, threshold=threshold,
                                 scores_init=scores_init, backend=backend).eval()
    x = torch.randn(2, 5, 24, generator=gen(6)).to(device)
    dy = torch.randn(2, 5, 12, generator=gen(7)).to(device)
    outs = []
    for mod in (lin, m):
        xi = x.clone().requires_grad_()
        y = mod(xi)
        y.backward(dy)
        outs.append((y, xi.grad, mod.weight.grad, mod.bias.grad))
    for a, b, what in zip(outs[0], outs[1], ("output", "grad x", "grad weight", "grad bias")):
        if backend == "reference":
            assert torch.equal(a, b), what
        else:
            assert_close(b, a, RTOL[torch.float32] * 4, what=what)


# ---------------------------------------------------------------------------------------------- the masks
@pytest.mark.parametrize("density,n,kept", [(0.5, 10, 5), (1.0, 7, 7), (0.29, 100, 29), (0.04, 10, 1),
                                            (1e-9, 7, 1), (0.25, 10, 2), (0.75, 10, 8), (0.3, 4, 1)])
def test_kept_count_rounds_and_keeps_at_least_one(density, n, kept):
    # 0.29 * 100 = 28.999999999999996: truncating (the reference code's int()) would keep 28.
    assert kept_count(density, n) == kept


@pytest.mark.parametrize("block_shape", [(1, 1), (2, 4), (4, 1), (1, 16)])
@pytest.mark.parametrize("density", [0.3, 0.5, 0.9, 1.0, 0.01])
@pytest.mark.parametrize("method", ["magnitude", "topK"])
def test_density_methods_keep_the_formulas_blocks(method, density, block_shape):
    m = make(method, block_shape=block_shape, density=density, seed=11)
    mask = m.block_mask()
    expected = formula_block_mask(method, m.weight, m.scores, block_shape, density, 0.0)
    n = expected.numel()
    assert mask.shape == expected.shape == m.blocks_shape
    assert mask.dtype == (torch.bool if method == "magnitude" else torch.float32)
    assert torch.equal(mask.double(), expected.double())
    assert int(mask.sum()) == max(1, round(density * n))
    assert torch.equal(m.mask(), expand(mask, block_shape).to(m.mask().dtype))
    assert m.mask().shape == m.weight.shape
    if method == "magnitude":
        assert not mask.requires_grad


@pytest.mark.parametrize("method", ["magnitude", "topK"])
def test_ties_go_to_the_lower_flat_index_and_one_block_is_always_kept(method):
    # 12 blocks (2, 2) of a (6, 8) weight; blocks 1, 4, 5, 9 tie for the largest value, 0, 2, 7 for the next.
    values = torch.tensor([[2.0, 3.0, 2.0, 1.0], [3.0, 3.0, 0.5, 2.0], [1.0, 3.0, 0.0, 0.25]])
    if method == "magnitude":
        # each (2, 2) block of the weight: +-v/2 four times, norm v
        signs = torch.randn(6, 8, generator=gen(0)).sign()
        weight = torch.kron(values, torch.ones(2, 2)) / 2 * signs
        m = MaskedLinear(8, 6, method=method, block_shape=(2, 2))
        with torch.no_grad():
            m.weight.copy_(weight)
    else:
        m = MaskedLinear(8, 6, method=method, block_shape=(2, 2), scores_init=values)
    for density, kept in [(3 / 12, [1, 4, 5]), (5 / 12, [1, 4, 5, 9, 0]), (6 / 12, [1, 4, 5, 9, 0, 2]),
                          (0.01, [1]), (1 / 24, [1])]:  # 0.5 blocks: rounds to 0, one is kept
        m.density = density
        expected = torch.zeros(12, dtype=torch.bool)
        expected[kept] = True
        assert torch.equal(m.block_mask().bool().flatten(), expected), density
    # all scores equal (the default zero init): the first k blocks in row-major order
    m = MaskedLinear(8, 6, method="topK", density=0.25)
    assert torch.equal(m.block_mask().flatten(), (torch.arange(48) < 12).float())


def test_magnitude_ranks_tiny_weights_exactly():
    # |W| itself, not W**2: squares of these underflow to 0 in float32 and would tie
    weight = torch.tensor([[1e-30, -4e-30, 3e-30, 2e-30]])
    m = MaskedLinear(4, 1, method="magnitude", density=0.5, bias=False)
    with torch.no_grad():
        m.weight.copy_(weight)
    assert torch.equal(m.block_mask(), torch.tensor([[False, True, True, False]]))


@pytest.mark.parametrize("block_shape", [(1, 1), (2, 4)])
@pytest.mark.parametrize("method", ["threshold", "sigmoied_threshold"])
def test_threshold_methods_match_the_formula(method, block_shape):
    m = make(method, block_shape=block_shape, seed=12)
    for threshold in ([-0.5, 0.0, 0.7, 2.0] if method == "threshold" else [0.2, 0.5, 0.9]):
        m.threshold = threshold
        mask = m.block_mask()
        expected = formula_block_mask(method, m.weight, m.scores, block_shape, 1.0, threshold)
        assert mask.dtype == torch.float32 and torch.equal(mask.double(), expected), threshold
        assert 0 < expected.sum() < expected.numel()  # the threshold does cut
    m.threshold = 0.0
    with torch.no_grad():
        m.scores.copy_(torch.tensor(0.0).expand_as(m.scores))
    assert m.block_mask().sum() == (0 if method == "threshold" else m.scores.numel())  # strictly greater


@pytest.mark.parametrize("block_shape", [(1, 1), (2, 4)])
def test_l0_train_is_random_eval_is_the_deterministic_formula(block_shape):
    m = make("l0", block_shape=block_shape, seed=13)
    with torch.no_grad():
        m.scores.mul_(3)  # some blocks clamped to exactly 0 and 1
    m.eval()
    ev = m.block_mask()
    assert torch.equal(ev, m.block_mask())
    assert_close(ev, formula_block_mask("l0", m.weight, m.scores, block_shape, 1.0, 0.0), RTOL[torch.float32],
                 what="eval mask")
    assert ev.min() == 0 and ev.max() == 1 and ((ev > 0) & (ev < 1)).any()
    m.train()
    torch.manual_seed(21)
    a = m.block_mask()
    torch.manual_seed(21)
    u = torch.empty_like(m.scores).uniform_(1e-6, 1 - 1e-6)
    assert_close(a, formula_block_mask("l0", m.weight, m.scores, block_shape, 1.0, 0.0, u=u),
                 RTOL[torch.float32] * 4, scale=1.0, what="train mask")
    b = m.block_mask()
    assert not torch.equal(a, b)
    for t in (a, b):
        assert t.dtype == torch.float32 and t.min() >= 0 and t.max() <= 1
    # averaged over draws, the training mask centres near the eval mask
    draws = torch.stack([m.block_mask() for _ in range(400)]).mean(0)
    assert (draws - ev).abs().max() < 0.35 and not torch.equal(draws, ev)


@pytest.mark.parametrize("method", METHODS)
def test_schedule_attributes_change_the_next_mask(method):
    m = make(method, density=1.0, threshold=-100.0 if method == "threshold" else 0.0, seed=14).eval()
    if method == "l0":
        with torch.no_grad():
            m.scores.fill_(10.0)
    full = m.block_mask().bool()
    if method in ("magnitude", "topK"):
        m.density = 0.25
    elif method == "threshold":
        m.threshold = 0.5
    elif method == "sigmoied_threshold":
        m.threshold = 0.7
    else:
        with torch.no_grad():
            m.scores.fill_(-10.0)
    m.eval()
    assert full.all() and m.block_mask().bool().sum() < full.sum()


# ------------------------------------------------------------------------------------- outputs and gradients
@pytest.mark.parametrize("backend", BACKENDS_UNDER_TEST)
@pytest.mark.parametrize("block_shape", [(1, 1), (2, 4)])
@pytest.mark.parametrize("method", METHODS)
def test_forward_and_gradients_match_the_formula(backend, method, block_shape):
    """Output and every gradient against plain float64 torch; the straight-through methods' score gradient is the
    mask gradient blocksum(dY^T X * W), bitwise what the op gives a float mask leaf."""
    m = make(method, block_shape=block_shape, density=0.4, threshold=threshold_for(method), seed=15, backend=backend)
    m.eval()  # l0 deterministic
    device = m.weight.device
    x = torch.randn(6, 16, generator=gen(16)).to(device).requires_grad_()
    dy = torch.randn(6, 8, generator=gen(17)).to(device)
    y = m(x)
    y.backward(dy)
    bmask = m.block_mask().detach()
    gx, gw, gm, gb = formula_grads(x.detach(), m.weight.detach(), bmask, dy, block_shape)
    tol = RTOL[torch.float32] * 8
    assert_close(y, formula_output(x.detach(), m.weight.detach(), bmask, m.bias.detach(), block_shape), tol,
                 what="output")
    assert_close(x.grad, gx, tol, what="grad x")
    assert_close(m.weight.grad, gw, tol, what="grad weight")
    assert_close(m.bias.grad, gb, tol, what="grad bias")
    if method == "magnitude":
        return
    if method == "l0":  # through the formula: d mask / d scores = 1.2 sigmoid' where not clamped
        s = m.scores.detach().double().requires_grad_()
        (expected,) = torch.autograd.grad(torch.clamp(torch.sigmoid(s) * 1.2 - 0.1, 0, 1), s, gm)
    else:  # straight-through
        expected = gm
        leaf = bmask.clone().requires_grad_()
        masked_linear(x.detach(), m.weight.detach(), leaf, m.bias.detach(), block_shape, backend=backend).backward(dy)
        assert torch.equal(m.scores.grad, leaf.grad)
    assert m.scores.grad.dtype == torch.float32
    assert_close(m.scores.grad, expected, tol, what="grad scores")
    assert (m.scores.grad != 0).sum() > (bmask != 0).sum() or method == "l0"  # pruned blocks get gradient too


@pytest.mark.parametrize("backend", BACKENDS_UNDER_TEST)
def test_l0_training_gradient_goes_through_the_noisy_formula(backend):
    m = make("l0", block_shape=(2, 2), seed=18, backend=backend)
    device = m.weight.device
    x = torch.randn(5, 16, generator=gen(19)).to(device)
    dy = torch.randn(5, 8, generator=gen(20)).to(device)
    torch.manual_seed(22)
    m(x).backward(dy)
    torch.manual_seed(22)
    u = torch.empty_like(m.scores).uniform_(1e-6, 1 - 1e-6)
    s = m.scores.detach().double().requires_grad_()
    mask = formula_block_mask("l0", None, s, (2, 2), 1.0, 0.0, u=u)
    y = formula_output(x, m.weight.detach(), mask, m.bias.detach(), (2, 2))
    (expected,) = torch.autograd.grad(y, s, dy.double())
    assert_close(m.scores.grad, expected, RTOL[torch.float32] * 8, what="grad scores")


@pytest.mark.parametrize("backend", BACKENDS_UNDER_TEST)
@pytest.mark.parametrize("method", ["l0", "topK", "magnitude"])
def test_a_repeated_step_gives_bitwise_identical_gradients(backend, method):
    m = make(method, block_shape=(2, 4), density=0.5, seed=23, backend=backend).eval()
    device = m.weight.device
    x = torch.randn(3, 7, 16, generator=gen(24)).to(device)
    dy = torch.randn(3, 7, 8, generator=gen(25)).to(device)
    runs = []
    for _ in range(2):
        m.zero_grad(set_to_none=True)
        xi = x.clone().requires_grad_()
        y = m(xi)
        y.backward(dy)
        runs.append([y.detach(), xi.grad] + [p.grad for p in m.parameters()])
    for a, b in zip(*runs):
        assert torch.equal(a, b)


@pytest.mark.parametrize("backend", BACKENDS_UNDER_TEST)
@pytest.mark.parametrize("method", METHODS)
def test_3d_inputs_are_rows_of_the_2d_computation(backend, method):
    m = make(method, block_shape=(4, 2), density=0.5, threshold=threshold_for(method), seed=26, backend=backend)
    m.eval()
    x = torch.randn(2, 3, 5, 16, generator=gen(27)).to(m.weight.device)
    y = m(x)
    assert y.shape == (2, 3, 5, 8)
    assert_close(y, formula_output(x, m.weight.detach(), m.block_mask().detach(), m.bias.detach(), (4, 2)),
                 RTOL[torch.float32] * 8, what="3-D output")
    assert_close(y.reshape(-1, 8), m(x.reshape(-1, 16)), RTOL[torch.float32] * 4, what="3-D vs 2-D")


@pytest.mark.parametrize("backend", BACKENDS_UNDER_TEST)
@pytest.mark.parametrize("method", METHODS)
def test_bfloat16_module(backend, method):
    m = make(method, block_shape=(2, 2), density=0.5, threshold=threshold_for(method), seed=28, backend=backend,
             dtype=torch.bfloat16).eval()
    assert m.weight.dtype == m.bias.dtype == torch.bfloat16
    if m.scores is not None:
        assert m.scores.dtype == torch.float32
    x = torch.randn(4, 3, 16, generator=gen(29)).to(m.weight.device, torch.bfloat16)
    dy = torch.randn(4, 3, 8, generator=gen(30)).to(m.weight.device, torch.bfloat16)
    y = m(x)
    assert y.dtype == torch.bfloat16
    bmask = m.block_mask().detach()
    if method == "magnitude":  # the ranking of a bfloat16 weight, in float64
        assert torch.equal(bmask.cpu(), formula_block_mask(method, m.weight, None, (2, 2), 0.5, 0.0).cpu())
    expected = formula_output(x, m.weight.detach(), bmask.to(torch.bfloat16), m.bias.detach(), (2, 2))
    assert_close(y, expected, 3 * RTOL[torch.bfloat16], what="bf16 output")
    y.backward(dy)
    if m.scores is not None:
        gm = formula_grads(x, m.weight.detach(), bmask, dy, (2, 2))[2]
        if method == "l0":
            s = m.scores.detach().double().requires_grad_()
            (gm,) = torch.autograd.grad(torch.clamp(torch.sigmoid(s) * 1.2 - 0.1, 0, 1), s, gm)
        assert m.scores.grad.dtype == torch.float32
        assert_close(m.scores.grad, gm, 4 * RTOL[torch.bfloat16], what="bf16 grad scores")


# ------------------------------------------------------------------------------------------------ gradcheck
@pytest.mark.parametrize("backend", [b for b in BACKENDS_UNDER_TEST if b != "triton"])  # triton: no float64
@pytest.mark.parametrize("training", [False, True], ids=["eval", "train"])
def test_gradcheck_l0_through_the_module(backend, training):
    m = make("l0", in_f=8, out_f=6, block_shape=(2, 2), seed=31, backend=backend).double().train(training)
    device = m.weight.device
    x = torch.randn(3, 8, generator=gen(32), dtype=torch.float64).to(device).requires_grad_()
    params = {name: p.detach().clone().requires_grad_() for name, p in m.named_parameters()}

    def fn(x, weight, bias, scores):
        torch.manual_seed(33)  # the same noise on every evaluation
        return torch.func.functional_call(m, {"weight": weight, "bias": bias, "scores": scores}, (x,))

    torch.manual_seed(33)
    bm = m.block_mask()
    assert ((bm > 0) & (bm < 1)).any()  # some blocks off the clamp, where the scores get gradient
    assert torch.autograd.gradcheck(fn, (x, params["weight"], params["bias"], params["scores"]), eps=1e-6,
                                    atol=1e-7, rtol=1e-5)


@pytest.mark.parametrize("backend", [b for b in BACKENDS_UNDER_TEST if b != "triton"])
@pytest.mark.parametrize("block_shape", [(1, 1), (2, 4)])
def test_gradcheck_topk_float_mask_through_the_op(backend, block_shape):
    m = make("topK", in_f=8, out_f=6, block_shape=block_shape, density=0.5, seed=34, backend=backend).double()
    mask = m.block_mask().detach().clone().requires_grad_()
    assert mask.dtype == torch.float64 and 0 < mask.sum() < mask.numel()
    x = torch.randn(2, 3, 8, generator=gen(35), dtype=torch.float64).requires_grad_()
    w, b = (p.detach().clone().requires_grad_() for p in (m.weight, m.bias))

    def fn(x, w, mask, b):
        return masked_linear(x, w, mask, b, block_shape, backend=backend)

    assert torch.autograd.gradcheck(fn, (x, w, mask, b), eps=1e-6, atol=1e-7, rtol=1e-5)


# ------------------------------------------------------------------------------------------- torch.compile
class _Small(nn.Module):
    def __init__(self, backend):
        super().__init__()
        torch.manual_seed(36)
        self.a = MaskedLinear(16, 32, method="topK", density=0.5, scores_init=torch.randn(32, 16, generator=gen(37)),
                              backend=backend)
        self.b = MaskedLinear(32, 32, method="magnitude", block_shape=(4, 4), density=0.5, backend=backend)
        self.c = MaskedLinear(32, 8, method="l0", block_shape=(2, 8), scores_init=torch.randn(4, 4, generator=gen(38)),
                              backend=backend)

    def forward(self, x):
        return self.c(torch.nn.functional.gelu(self.b(torch.relu(self.a(x)))))


@pytest.mark.slow
@pytest.mark.parametrize("backend", BACKENDS_UNDER_TEST)
def test_torch_compile_forward_and_backward_equal_eager(backend):
    torch._dynamo.reset()
    device = device_of(backend)
    model = _Small(backend).to(device).eval()  # eval: l0 deterministic
    x = torch.randn(2, 5, 16, generator=gen(39)).to(device)

    def step(mod):
        xi = x.clone().requires_grad_()
        mod.zero_grad(set_to_none=True)
        y = mod(xi)
        (y * y).sum().backward()
        return [y.detach(), xi.grad] + [p.grad.clone() for p in model.parameters()]

    eager = step(model)
    compiled = step(torch.compile(model, fullgraph=True))  # one graph: the masks trace
    for name, a, b in zip(["out", "x"] + [n for n, _ in model.named_parameters()], compiled, eager):
        torch.testing.assert_close(a, b, msg=lambda s: f"{name}: {s}")


# --------------------------------------------------------------------------------------------- checkpoints
@pytest.mark.parametrize("backend", BACKENDS_UNDER_TEST)
@pytest.mark.parametrize("method", METHODS)
def test_state_dict_round_trip(tmp_path, backend, method):
    m = make(method, block_shape=(2, 4), density=0.4, threshold=threshold_for(method), seed=40, backend=backend)
    m.eval()
    path = tmp_path / "m.pt"
    torch.save(m.state_dict(), path)
    fresh = MaskedLinear(16, 8, method=method, block_shape=(2, 4), density=0.4, threshold=threshold_for(method),
                         backend=backend, device=m.weight.device).eval()
    assert not torch.equal(fresh.weight, m.weight)
    result = fresh.load_state_dict(torch.load(path))
    assert not result.missing_keys and not result.unexpected_keys
    x = torch.randn(3, 16, generator=gen(41)).to(m.weight.device)
    assert torch.equal(fresh.block_mask(), m.block_mask()) and torch.equal(fresh.mask(), m.mask())
    assert torch.equal(fresh(x), m(x))
    if m.scores is not None:
        assert fresh.scores.dtype == torch.float32


def test_state_dicts_across_methods_load_or_fail_clearly():
    topk = make("topK", block_shape=(2, 4), seed=42)
    # between learned methods: the scores carry over
    thr = MaskedLinear(16, 8, method="threshold", block_shape=(2, 4))
    thr.load_state_dict(topk.state_dict())
    assert torch.equal(thr.scores, topk.scores) and torch.equal(thr.weight, topk.weight)
    # a learned method's checkpoint into magnitude: scores have nowhere to go
    magnitude = MaskedLinear(16, 8, method="magnitude")
    with pytest.raises(RuntimeError, match=r'Unexpected key\(s\) in state_dict: "scores"'):
        magnitude.load_state_dict(topk.state_dict())
    result = magnitude.load_state_dict(topk.state_dict(), strict=False)
    assert result.unexpected_keys == ["scores"] and torch.equal(magnitude.weight, topk.weight)
    # magnitude's (or an nn.Linear's) checkpoint into a learned method: no scores to load
    for state in (magnitude.state_dict(), nn.Linear(16, 8).state_dict()):
        with pytest.raises(RuntimeError, match=r'Missing key\(s\) in state_dict: "scores"'):
            MaskedLinear(16, 8, method="topK", block_shape=(2, 4)).load_state_dict(state)
    target = MaskedLinear(16, 8, method="topK", block_shape=(2, 4), scores_init=0.5)
    assert target.load_state_dict(magnitude.state_dict(), strict=False).missing_keys == ["scores"]
    assert torch.equal(target.weight, magnitude.weight) and torch.equal(target.scores, torch.full((4, 4), 0.5))
    # scores of another block shape
    with pytest.raises(RuntimeError, match=r"shape \(4, 4\).*\(1, 1\) block.*shape \(8, 16\).*another block_shape"):
        MaskedLinear(16, 8, method="topK").load_state_dict(topk.state_dict())
    # nested: the prefix is in the message
    outer = nn.Sequential(MaskedLinear(16, 8, method="l0"))
    with pytest.raises(RuntimeError, match=r'Missing key\(s\) in state_dict: "0.scores"'):
        outer.load_state_dict(nn.Sequential(nn.Linear(16, 8)).state_dict())


def test_extra_repr_shows_the_configuration_and_the_kept_fraction():
    m = MaskedLinear(16, 8, method="topK", block_shape=(2, 4), density=0.3)
    text = repr(m)
    # 16 blocks: round(4.8) = 5 kept, 5/16 of the weights
    assert ("in_features=16, out_features=8, bias=True, method=topK, block_shape=(2, 4), density=0.3125"
            in text), text
    assert "density=0.3," in repr(MaskedLinear(16, 8, method="magnitude", density=0.3, backend="reference"))
    thr = MaskedLinear(16, 8, method="threshold", threshold=0.5, scores_init=torch.arange(128.).view(8, 16) / 128)
    assert "method=threshold" in repr(thr) and "threshold=0.5" in repr(thr) and "density=0.4922" in repr(thr)
    l0 = MaskedLinear(16, 8, method="l0", scores_init=torch.tensor([-5.0, 5.0]).repeat(8, 8))
    assert repr(l0).endswith("density=0.5)")  # the deterministic mask, even in training mode


# ------------------------------------------------------------------------------------------------- errors
def test_unknown_method_lists_the_valid_ones():
    with pytest.raises(ValueError, match=r"unknown pruning method 'topk'; choose one of magnitude, topK, threshold, "
                                         r"sigmoied_threshold, l0"):
        MaskedLinear(8, 4, method="topk")
    m = MaskedLinear(8, 4)
    with pytest.raises(ValueError, match="unknown pruning method 'movement'"):
        m.method = "movement"
    with pytest.raises(ValueError, match="unknown pruning method"):
        MaskedLinear.from_linear(nn.Linear(8, 4), method="L0")


@pytest.mark.parametrize("density", [0.0, -0.1, 1.0001, 2, float("nan"), float("inf")])
def test_density_outside_zero_one(density):
    with pytest.raises(ValueError, match=r"density must be (in \(0, 1\]|finite)"):
        MaskedLinear(8, 4, density=density)
    m = MaskedLinear(8, 4, density=0.5)
    with pytest.raises(ValueError, match="density"):
        m.density = density
    assert m.density == 0.5  # unchanged by the failed set


@pytest.mark.parametrize("density", ["0.5", None, True])
def test_density_of_the_wrong_type(density):
    with pytest.raises(TypeError, match="density must be a real number"):
        MaskedLinear(8, 4, density=density)


def test_density_accepts_numbers_a_schedule_computes():
    m = MaskedLinear(8, 4, density=1)
    assert m.density == 1.0 and isinstance(m.density, float)
    m.density = torch.tensor(0.25)
    assert m.density == 0.25 and isinstance(m.density, float)


def test_threshold_validation():
    with pytest.raises(ValueError, match=r"sigmoied_threshold.*\[0, 1\]"):
        MaskedLinear(8, 4, method="sigmoied_threshold", threshold=1.5)
    m = MaskedLinear(8, 4, method="threshold", threshold=-3.0)
    assert m.threshold == -3.0
    for bad, exc in [(float("nan"), ValueError), ("0.1", TypeError), (None, TypeError)]:
        with pytest.raises(exc, match="threshold"):
            m.threshold = bad


@pytest.mark.parametrize("block_shape", [(3, 1), (1, 5), (8, 16)])
def test_block_shape_that_does_not_divide_the_weight_names_both(block_shape):
    with pytest.raises(ValueError, match=rf"block_shape \({block_shape[0]}, {block_shape[1]}\) does not divide the "
                                         r"weight's shape .* = \(4, 8\)"):
        MaskedLinear(8, 4, block_shape=block_shape)
    with pytest.raises(ValueError, match="does not divide"):
        MaskedLinear.from_linear(nn.Linear(8, 4), method="magnitude", block_shape=block_shape)


@pytest.mark.parametrize("block_shape", [(0, 1), (1, -2), (2,), (1.5, 1), "ab", None])
def test_malformed_block_shape(block_shape):
    with pytest.raises((ValueError, TypeError), match="block_shape"):
        MaskedLinear(8, 4, block_shape=block_shape)


def test_scores_init_of_the_wrong_shape():
    with pytest.raises(ValueError, match=r"scores_init must hold one score per \(2, 2\) block .* shape \(2, 4\); "
                                         r"got \(4, 8\)"):
        MaskedLinear(8, 4, method="topK", block_shape=(2, 2), scores_init=torch.zeros(4, 8))
    with pytest.raises(ValueError, match=r"scores_init .* got \(2, 4\)"):
        MaskedLinear.from_linear(nn.Linear(8, 4), method="l0", scores_init=torch.zeros(2, 4))


def test_magnitude_takes_no_scores_init():
    with pytest.raises(ValueError, match="'magnitude' has no scores"):
        MaskedLinear(8, 4, method="magnitude", scores_init=0.0)


def test_learned_method_without_scores():
    m = MaskedLinear(8, 4, method="magnitude")
    m.method = "topK"  # a switch the module cannot honour: it has no scores
    with pytest.raises(ValueError, match=r"method 'topK' learns its mask from scores, but this module has none"):
        m(torch.randn(2, 8))
    m = MaskedLinear(8, 4, method="l0")
    m.scores = None
    with pytest.raises(ValueError, match="has none"):
        m.block_mask()
    m.scores = nn.Parameter(torch.zeros(4, 4))
    with pytest.raises(ValueError, match=r"scores must hold one score .* shape \(4, 8\); got \(4, 4\)"):
        m.block_mask()


def test_misspelt_backend_and_non_linear_source():
    with pytest.raises(ValueError, match="unknown bermo backend"):
        MaskedLinear(8, 4, backend="refrence")
    with pytest.raises(TypeError, match="expected a torch.nn.Linear"):
        MaskedLinear.from_linear(nn.Conv1d(8, 4, 1))


@pytest.mark.parametrize("method,hint", [("topK", 0.3), ("magnitude", 0.3), ("threshold", None),
                                         ("sigmoied_threshold", None), ("l0", None)])
def test_forward_passes_its_kept_fraction_as_the_path_hint(monkeypatch, method, hint):
    """topK and magnitude know the fraction they keep and hand it to the op (the GPU path's choice, read on the
    host); the threshold methods do not know it before the mask exists, and pass none."""
    import bermo.nn.masked_linear as module

    seen = {}

    def spy(*args, **kwargs):
        seen.update(kwargs)
        return masked_linear(*args, **kwargs)

    monkeypatch.setattr(module, "masked_linear", spy)
    layer = MaskedLinear(64, 32, method=method, block_shape=(32, 32), density=0.3, backend="reference")
    layer(torch.randn(3, 64))
    assert seen["density"] == hint
    if hint is None:  # the threshold methods: the fraction last measured, once there is one
        if method == "sigmoied_threshold":
            layer.threshold = 0.5
        with torch.no_grad():
            layer.scores.copy_(torch.tensor([[5.0, -5.0]]))
        measured = layer.kept_fraction()
        assert measured == 0.5
        layer(torch.randn(3, 64))
        assert seen["density"] == 0.5
        from bermo.pruning import kept_fraction
        with torch.no_grad():
            layer.scores.fill_(5.0)
        kept_fraction(nn.Sequential(layer))
        layer(torch.randn(3, 64))
        # a new measurement on the same side of the crossover keeps the hint (no torch.compile recompile) ...
        assert layer.measured_density == 1.0 and seen["density"] == 0.5
        # ... one across it moves the hint
        layer.note_kept_fraction(0.1)
        layer(torch.randn(3, 64))
        assert seen["density"] == 0.1
