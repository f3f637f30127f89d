"""Knowledge distillation from an unpruned teacher (Hinton et al. 2015), as movement pruning's recipe uses it."""
from __future__ import annotations

import math
import numbers
from typing import Optional

import torch
import torch.nn.functional as F


def _check_real(value, name: str, low: float, high: float, low_open: bool) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(float(value)):
        raise ValueError(f"{name} must be a finite real number; got {value!r}")
    value = float(value)
    if value < low or (low_open and value == low) or value > high:
        raise ValueError(f"{name} must be in {'(' if low_open else '['}{low:g}, {high:g}{')' if math.isinf(high) else ']'};"
                         f" got {value}")
    return value


PROBLEM_TYPES = ("single_label_classification", "multi_label_classification", "regression")


def distillation_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float = 2.0,
                      problem_type: Optional[str] = None) -> torch.Tensor:
    """The student's distance from the teacher's outputs, averaged over the batch (every row of the logits, all
    dimensions but the last, is one example), by the task's kind (``problem_type``, as transformers' sequence
    classifiers name it in ``config.problem_type``; ``None``: regression for one output, single-label otherwise):

    * ``"single_label_classification"``: ``KL(softmax(teacher / T) || softmax(student / T)) * T ** 2`` over the
      classes; classes the teacher rules out (a ``-inf`` logit) add nothing;
    * ``"multi_label_classification"``: each label a yes/no distribution, ``sigmoid(logit / T)``: the sum over the
      labels of those two-outcome KL divergences, times ``T ** 2``;
    * ``"regression"``: the mean squared error between the student's and the teacher's outputs (the teacher's
      predictions as targets; ``T`` unused). A softmax over one output is always 1: the KL would be 0 whatever
      the student predicts.

    The ``T ** 2`` keeps the gradient's scale independent of ``T``. Computed in float32 (float64 logits stay
    float64); the teacher's logits are detached. Zero when the student's logits equal the teacher's."""
    for name, t in (("student_logits", student_logits), ("teacher_logits", teacher_logits)):
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"distillation_loss: {name} must be a torch.Tensor; got {type(t).__name__}")
        if not t.is_floating_point():
            raise TypeError(f"distillation_loss: {name} must be floating point; got {t.dtype}")
        if t.dim() < 2 or t.numel() == 0:
            raise ValueError(f"distillation_loss: {name} must be (batch, ..., classes) logits; got shape "
                             f"{tuple(t.shape)}")
    if student_logits.shape != teacher_logits.shape:
        raise ValueError(f"distillation_loss: the student's logits {tuple(student_logits.shape)} and the teacher's "
                         f"{tuple(teacher_logits.shape)} differ in shape (same task, same number of labels?)")
    temperature = _check_real(temperature, "distillation_loss: temperature", 0.0, math.inf, low_open=True)
    classes = student_logits.shape[-1]
    if problem_type is None:
        problem_type = "regression" if classes == 1 else "single_label_classification"
    if problem_type not in PROBLEM_TYPES:
        raise ValueError(f"distillation_loss: problem_type must be one of {', '.join(PROBLEM_TYPES)} or None; got "
                         f"{problem_type!r}")
    if problem_type == "single_label_classification" and classes == 1:
        raise ValueError("distillation_loss: single-label classification needs at least two classes' logits; one "
                         "output is a regression (problem_type='regression') or a yes/no label "
                         "(problem_type='multi_label_classification')")
    dtype = torch.float64 if student_logits.dtype == torch.float64 else torch.float32
    student = student_logits.to(dtype).reshape(-1, classes)
    teacher = teacher_logits.detach().to(dtype).reshape(-1, classes)
    if problem_type == "regression":
        return F.mse_loss(student, teacher)
    student, teacher = student / temperature, teacher / temperature
    if problem_type == "single_label_classification":
        kl = _kl_terms(F.log_softmax(teacher, dim=-1), F.log_softmax(student, dim=-1))
    else:  # each label: outcomes yes (sigmoid) and no (sigmoid of the negated logit)
        kl = _kl_terms(F.logsigmoid(teacher), F.logsigmoid(student)) \
            + _kl_terms(F.logsigmoid(-teacher), F.logsigmoid(-student))
    return kl.sum(-1).mean() * temperature ** 2


def _kl_terms(log_p: torch.Tensor, log_q: torch.Tensor) -> torch.Tensor:
    """``p * (log p - log q)`` element by element, 0 where ``p`` is 0 (``0 * -inf`` would be NaN); a NaN stays NaN
    (a teacher overflowing must show in the loss, not only in the gradients)."""
    p = log_p.exp()
    return torch.where(torch.isneginf(log_p), torch.zeros_like(p), p * (log_p - log_q))


def mix_losses(task_loss: torch.Tensor, distill_loss: torch.Tensor, alpha: float) -> torch.Tensor:
    """``alpha * distill_loss + (1 - alpha) * task_loss``; ``alpha`` in [0, 1] (1: distillation alone)."""
    alpha = _check_real(alpha, "mix_losses: alpha", 0.0, 1.0, low_open=False)
    return alpha * distill_loss + (1.0 - alpha) * task_loss
