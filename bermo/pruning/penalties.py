"""The penalties on the mask scores that drive soft movement pruning and L0 regularisation, and their weight."""
from __future__ import annotations

import math
import numbers

import torch
from torch import nn

from .preparation import masked_linears
from .schedule import CubicSchedule

# The hard concrete distribution of Louizos et al. (2018) as movement pruning's reference code uses it:
# temperature beta, stretched to (gamma, zeta).
L0_BETA = 2 / 3
L0_GAMMA = -0.1
L0_ZETA = 1.1
# log(-gamma / zeta): P(mask > 0) = sigmoid(scores - beta * log(-gamma / zeta))
L0_SHIFT = L0_BETA * math.log(-L0_GAMMA / L0_ZETA)

PENALISED_METHODS = ("threshold", "sigmoied_threshold", "l0")


def regularization(model: nn.Module) -> torch.Tensor:
    """The penalty on ``model``'s mask scores, a differentiable float32 scalar:

    * ``threshold`` and ``sigmoied_threshold``: the L1 norm of ``sigmoid(scores)`` (soft movement pruning);
    * ``l0``: the expected number of kept blocks under the hard concrete,
      ``sum(sigmoid(scores - beta * log(-gamma / zeta)))`` with beta = 2/3, gamma = -0.1, zeta = 1.1;
    * ``topK`` and ``magnitude``: nothing (their density is set, not learned).

    summed over all penalised layers and divided by their total number of scores, so it lies in [0, 1] and does
    not grow with the model. (The reference code averages per-layer means instead; the two agree when the layers
    have the same number of scores, and ours weighs each score alike.) A model whose layers are all ``topK`` or
    ``magnitude`` gets a zero tensor; a model with no MaskedLinear is an error.
    """
    layers = list(masked_linears(model))
    if not layers:
        raise ValueError(f"regularization: {type(model).__name__} has no bermo.nn.MaskedLinear: call "
                         "bermo.pruning.prepare(model) first")
    total, count = None, 0
    for name, module in layers:
        if module.method not in PENALISED_METHODS:
            continue
        scores = module.scores
        if scores is None:
            raise ValueError(f"regularization: layer {name!r} (method {module.method!r}) has no scores")
        shifted = scores.float() - L0_SHIFT if module.method == "l0" else scores.float()
        term = torch.sigmoid(shifted).sum()
        total = term if total is None else total + term
        count += scores.numel()
    if total is None:
        return torch.zeros((), dtype=torch.float32, device=layers[0][1].weight.device)
    return total / count


def penalty_weight(regularization_weight: float, schedule: CubicSchedule, step: int) -> float:
    """The weight of ``regularization(model)`` in the loss at ``step``: ``regularization_weight *
    schedule.fraction(step)``, with ``fraction = 1 - (1 - progress) ** 3`` the share of the way the cubic schedule
    has gone from its initial to its final level. So the penalty is off through the initial warm-up, rises with
    the pruning level and is at full weight through the final warm-up. For soft movement pruning's usual
    schedule (threshold from 0) this is the reference code's ``final_lambda * threshold / final_threshold``; it
    is also defined when the final level is 0 and for ``l0``, which has no level."""
    if isinstance(regularization_weight, bool) or not isinstance(regularization_weight, numbers.Real) \
            or not math.isfinite(regularization_weight) or regularization_weight < 0:
        raise ValueError(f"penalty_weight: regularization_weight must be a finite number >= 0; got "
                         f"{regularization_weight!r}")
    return float(regularization_weight) * schedule.fraction(step)
