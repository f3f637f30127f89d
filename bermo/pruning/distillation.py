"""Knowledge distillation from an unpruned teacher (Hinton et al. 2015), as movement pruning's recipe uses it."""
from __future__ import annotations

import math
import numbers

import torch
import torch.nn.functional as F


def _check_real(value, name: str, low: float, high: float, low_open: bool) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(float(value)):
        raise ValueError(f"{name} must be a finite real number; got {value!r}")
    value = float(value)
    if value < low or (low_open and value == low) or value > high:
        raise ValueError(f"{name} must be in {'(' if low_open else '['}{low:g}, {high:g}]; got {value}")
    return value


def distillation_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor,
                      temperature: float = 2.0) -> torch.Tensor:
    """``KL(softmax(teacher / T) || softmax(student / T)) * T ** 2``, averaged over the batch: every row of the
    logits (all dimensions but the last, the classes) is one example. The ``T ** 2`` keeps the gradient's scale
    independent of ``T``. Computed in float32 (float64 logits stay float64); the teacher's logits are detached.
    Zero when the student's logits equal the teacher's."""
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
    dtype = torch.float64 if student_logits.dtype == torch.float64 else torch.float32
    classes = student_logits.shape[-1]
    student = student_logits.to(dtype).reshape(-1, classes) / temperature
    teacher = teacher_logits.detach().to(dtype).reshape(-1, classes) / temperature
    kl = F.kl_div(F.log_softmax(student, dim=-1), F.log_softmax(teacher, dim=-1), reduction="batchmean",
                  log_target=True)
    return kl * temperature ** 2


def mix_losses(task_loss: torch.Tensor, distill_loss: torch.Tensor, alpha: float) -> torch.Tensor:
    """``alpha * distill_loss + (1 - alpha) * task_loss``; ``alpha`` in [0, 1] (1: distillation alone)."""
    alpha = _check_real(alpha, "mix_losses: alpha", 0.0, 1.0, low_open=False)
    return alpha * distill_loss + (1.0 - alpha) * task_loss
