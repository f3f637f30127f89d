"""bermo.pruning's score penalties, distillation loss and sparsity report, each against its formula written out."""
import math

import pytest
import torch
from torch import nn

from bermo.nn import MaskedLinear
from bermo.pruning import distillation_loss, kept_fraction, mix_losses, regularization, sparsity_report


class Net(nn.Module):
    def __init__(self, methods, shapes=((8, 4), (16, 8)), block_shape=(2, 2)):
        super().__init__()
        torch.manual_seed(0)
        self.layers = nn.ModuleList(MaskedLinear(i, o, method=m, block_shape=block_shape, backend="reference")
                                    for m, (o, i) in zip(methods, shapes))
        for layer in self.layers:
            if layer.scores is not None:
                layer.reset_scores(torch.randn(layer.blocks_shape))
        self.head = nn.Linear(8, 2)


@pytest.mark.parametrize("method", ["threshold", "sigmoied_threshold"])
def test_threshold_methods_penalise_the_l1_of_sigmoid_scores_over_all_scores(method):
    net = Net([method, method])
    s0, s1 = net.layers[0].scores, net.layers[1].scores  # 4x2 = 8 and 8x4 = 32 scores
    expected = (torch.sigmoid(s0).sum() + torch.sigmoid(s1).sum()) / 40
    reg = regularization(net)
    torch.testing.assert_close(reg, expected)
    # one mean over all scores, not a mean of the two layers' means
    assert not math.isclose(reg.item(), (torch.sigmoid(s0).mean() + torch.sigmoid(s1).mean()).item() / 2, rel_tol=1e-4)
    reg.backward()
    torch.testing.assert_close(s1.grad, torch.sigmoid(s1) * (1 - torch.sigmoid(s1)) / 40)


def test_l0_penalises_the_expected_number_of_kept_blocks():
    net = Net(["l0", "l0"])
    beta, gamma, zeta = 2 / 3, -0.1, 1.1
    scores = torch.cat([layer.scores.detach().flatten() for layer in net.layers])
    expected = torch.sigmoid(scores - beta * math.log(-gamma / zeta)).sum() / 40
    torch.testing.assert_close(regularization(net), expected)
    assert regularization(net).item() == pytest.approx(
        sum(1 / (1 + math.exp(-(s + 2 / 3 * math.log(11)))) for s in scores.tolist()) / 40, rel=1e-6)


def test_density_methods_have_no_penalty_and_mixed_models_penalise_only_their_scores():
    zero = regularization(Net(["topK", "magnitude"]))
    assert zero.item() == 0.0 and zero.dtype == torch.float32
    net = Net(["topK", "sigmoied_threshold"])
    torch.testing.assert_close(regularization(net), torch.sigmoid(net.layers[1].scores).mean())
    with pytest.raises(ValueError, match="has no bermo.nn.MaskedLinear"):
        regularization(nn.Sequential(nn.Linear(3, 3)))


def reference_kl(student, teacher, T):
    """sum_c p_t (log p_t - log p_s) at temperature T, times T^2, averaged over the rows, in float64."""
    s = torch.log_softmax(student.double() / T, -1)
    p = torch.softmax(teacher.double() / T, -1)
    return ((p * (p.log() - s)).sum(-1).mean() * T * T)


@pytest.mark.parametrize("T", [1.0, 2.0, 4.5])
def test_distillation_loss_is_the_tempered_kl_times_t_squared(T):
    gen = torch.Generator().manual_seed(3)
    student = torch.randn(5, 3, generator=gen, requires_grad=True)
    teacher = torch.randn(5, 3, generator=gen, requires_grad=True)
    loss = distillation_loss(student, teacher, T)
    torch.testing.assert_close(loss.double(), reference_kl(student, teacher, T), rtol=1e-5, atol=1e-7)
    loss.backward()
    assert teacher.grad is None  # the teacher is never trained through it
    # the gradient wrt the student's logits is T * (softmax(s/T) - softmax(t/T)) / B
    torch.testing.assert_close(student.grad, T * (torch.softmax(student / T, -1) - torch.softmax(teacher / T, -1)) / 5)
    # per-token logits (B, L, C): every (b, l) row is an example
    s3, t3 = torch.randn(2, 4, 3, generator=gen), torch.randn(2, 4, 3, generator=gen)
    torch.testing.assert_close(distillation_loss(s3, t3, T).double(),
                               reference_kl(s3.view(8, 3), t3.view(8, 3), T), rtol=1e-5, atol=1e-7)


def test_distillation_loss_is_zero_for_equal_logits_and_asymmetric():
    x = torch.randn(4, 6)
    assert distillation_loss(x, x.clone(), 2.0).item() == pytest.approx(0.0, abs=1e-6)
    y = torch.randn(4, 6) * 3
    assert distillation_loss(x, y, 1.0).item() != pytest.approx(distillation_loss(y, x, 1.0).item(), rel=1e-3)


def test_distillation_of_a_regression_is_the_squared_error_to_the_teacher():
    """One output: a softmax over it is always 1 (the KL was 0 whatever the student predicted, and the task loss
    was silently scaled by 1 - alpha); a regression's teacher gives targets, the temperature plays no part."""
    gen = torch.Generator().manual_seed(11)
    student = torch.randn(6, 1, generator=gen, requires_grad=True)
    teacher = 10 * torch.randn(6, 1, generator=gen)
    want = ((student.detach().double() - teacher.double()) ** 2).mean()
    for kw in ({}, {"problem_type": "regression"}):
        for T in (1.0, 3.0):
            torch.testing.assert_close(distillation_loss(student, teacher, T, **kw).double(), want)
    distillation_loss(student, teacher).backward()
    torch.testing.assert_close(student.grad, 2 * (student.detach() - teacher) / 6)
    # several regression targets per example
    s2, t2 = torch.randn(4, 3, generator=gen), torch.randn(4, 3, generator=gen)
    torch.testing.assert_close(distillation_loss(s2, t2, 2.0, problem_type="regression"), ((s2 - t2) ** 2).mean())


def test_distillation_of_multi_label_outputs_is_the_per_label_kl():
    gen = torch.Generator().manual_seed(12)
    s, t = torch.randn(5, 4, generator=gen, dtype=torch.float64), torch.randn(5, 4, generator=gen, dtype=torch.float64)
    T = 2.5
    p, q = torch.sigmoid(t / T), torch.sigmoid(s / T)
    want = (p * (p / q).log() + (1 - p) * ((1 - p) / (1 - q)).log()).sum(-1).mean() * T * T
    torch.testing.assert_close(distillation_loss(s, t, T, problem_type="multi_label_classification"), want)
    # one yes/no label is a multi-label problem, not a regression
    torch.testing.assert_close(distillation_loss(s[:, :1], t[:, :1], T, problem_type="multi_label_classification"),
                               (p * (p / q).log() + (1 - p) * ((1 - p) / (1 - q)).log())[:, 0].mean() * T * T)


def test_distillation_loss_where_the_teacher_rules_a_class_out_is_finite():
    """A teacher logit of -inf (probability 0) adds nothing: the KL was NaN (0 * -inf), also for equal logits. A
    NaN logit (a teacher overflowing) still makes the loss NaN, where it shows."""
    t = torch.tensor([[float("-inf"), 1.0, 2.0], [0.5, float("-inf"), 0.0]])
    s = torch.tensor([[0.0, 1.0, 2.0], [0.3, 0.1, 0.2]], requires_grad=True)
    T = 2.0
    loss = distillation_loss(s, t, T)
    p = torch.softmax(t / T, -1)
    log_q = torch.log_softmax(s.detach() / T, -1)
    want = torch.where(p > 0, p * (torch.log_softmax(t / T, -1) - log_q), torch.zeros(())).sum(-1).mean() * T * T
    torch.testing.assert_close(loss.detach(), want)
    loss.backward()
    assert torch.isfinite(s.grad).all()
    assert distillation_loss(t.clone(), t, T).item() == 0.0
    assert distillation_loss(torch.zeros(2, 3), torch.tensor([[float("nan"), 1.0, 2.0], [0.0, 1.0, 2.0]])).isnan()
    ml = torch.tensor([[float("inf"), -1.0]])
    assert torch.isfinite(distillation_loss(torch.zeros(1, 2), ml, T, problem_type="multi_label_classification"))


@pytest.mark.parametrize("args, error, match", [
    ((torch.randn(4, 3), torch.randn(4, 3), 2.0, "regresion"), ValueError, "problem_type must be one of"),
    ((torch.randn(4, 1), torch.randn(4, 1), 2.0, "single_label_classification"), ValueError,
     "needs at least two classes"),
    ((torch.randn(4, 3), torch.randn(4, 2), 2.0), ValueError, "differ in shape"),
    ((torch.randn(4, 3), torch.randn(4, 3), 0.0), ValueError, "temperature must be in \\(0, inf\\)"),
    ((torch.randn(4, 3), torch.randn(4, 3), float("nan")), ValueError, "temperature must be a finite"),
    ((torch.randn(4, 3), torch.randn(4, 3), -1), ValueError, "temperature must be in"),
    ((torch.randn(3), torch.randn(3), 2.0), ValueError, "must be \\(batch, ..., classes\\) logits"),
    ((torch.ones(4, 3, dtype=torch.long), torch.randn(4, 3), 2.0), TypeError, "must be floating point"),
    (([[0.0, 1.0]], torch.randn(1, 2), 2.0), TypeError, "must be a torch.Tensor"),
])
def test_distillation_loss_bad_inputs(args, error, match):
    with pytest.raises(error, match=match):
        distillation_loss(*args)


def test_mix_losses_weighs_distillation_by_alpha():
    task, distill = torch.tensor(2.0), torch.tensor(10.0)
    assert mix_losses(task, distill, 0.25).item() == pytest.approx(0.25 * 10 + 0.75 * 2)
    assert mix_losses(task, distill, 0.0).item() == 2.0 and mix_losses(task, distill, 1.0).item() == 10.0
    for alpha in (-0.1, 1.5, float("nan"), None):
        with pytest.raises(ValueError, match="alpha must be"):
            mix_losses(task, distill, alpha)


def test_sparsity_report_counts_kept_and_removed_weights():
    net = Net(["topK", "magnitude"])  # weights (8, 4): 8 blocks; (16, 8): 32 blocks; 2x2 blocks
    net.layers[0].density = 0.5    # 4 blocks of 4 weights kept
    net.layers[1].density = 0.25   # 8 blocks kept
    report = sparsity_report(net)
    first, second = report.layers
    assert first == {"layer": "layers.0", "method": "topK", "block_shape": (2, 2), "shape": (8, 4), "params": 32,
                     "kept": 16, "removed": 16, "density": 0.5}
    assert (second["params"], second["kept"], second["removed"], second["density"]) == (128, 32, 96, 0.25)
    assert report.total["params"] == 160 and report.total["kept"] == 48 and report.density == pytest.approx(0.3)
    all_params = 32 + 8 + 128 + 16 + 18  # weights and biases of both layers and the head, without the scores
    assert report.model["params"] == all_params and report.model["removed"] == 112
    assert report.model["density"] == pytest.approx((all_params - 112) / all_params)
    assert report.rows == [first, second, report.total, report.model]
    assert kept_fraction(net) == pytest.approx(0.3)
    text = str(report)
    lines = text.splitlines()
    assert lines[0] == "| layer | method | block_shape | shape | params | kept | removed | density |"
    assert "| layers.1 | magnitude | 2x2 | 16x8 | 128 | 32 | 96 | 0.2500 |" in lines
    assert len(lines) == 2 + 4 and report.markdown() == text


def test_sparsity_report_reads_l0_and_threshold_masks_without_drawing():
    net = Net(["l0", "sigmoied_threshold"])
    net.layers[1].threshold = 0.5
    net.train()
    scores0, scores1 = net.layers[0].scores.detach(), net.layers[1].scores.detach()
    kept0 = int((torch.clamp(torch.sigmoid(scores0) * 1.2 - 0.1, 0, 1) > 0).sum()) * 4
    kept1 = int((torch.sigmoid(scores1) > 0.5).sum()) * 4
    state = torch.random.get_rng_state()
    report = sparsity_report(net)
    assert torch.equal(torch.random.get_rng_state(), state)  # no random l0 mask was drawn
    assert [r["kept"] for r in report.layers] == [kept0, kept1]
    with pytest.raises(ValueError, match="has no bermo.nn.MaskedLinear"):
        sparsity_report(nn.Linear(2, 2))
