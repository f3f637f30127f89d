"""Movement pruning's cubic schedule of the pruning level, and applying a level to a model's MaskedLinears."""
from __future__ import annotations

import math
import numbers
import operator
from typing import Optional

from torch import nn

from .preparation import masked_linears

# Which attribute of a MaskedLinear the pruning level sets, by method; l0 has none (its sparsity comes from the
# penalty on its scores).
LEVEL_ATTRIBUTE = {"magnitude": "density", "topK": "density", "threshold": "threshold",
                   "sigmoied_threshold": "threshold", "l0": None}


def _real(value, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(float(value)):
        raise ValueError(f"CubicSchedule: {name} must be a finite real number; got {value!r}")
    return float(value)


def _count(value, name: str, minimum: int) -> int:
    if isinstance(value, bool):
        raise TypeError(f"CubicSchedule: {name} must be an int; got {value!r}")
    try:
        value = operator.index(value)
    except TypeError:
        raise TypeError(f"CubicSchedule: {name} must be an int; got {value!r} ({type(value).__name__})") from None
    if value < minimum:
        raise ValueError(f"CubicSchedule: {name} must be >= {minimum}; got {value}")
    return value


class CubicSchedule:
    """The cubic schedule of movement pruning (Sanh et al. 2020, after Zhu and Gupta 2017), over optimizer steps
    ``0 .. total_steps - 1`` (``step`` = the number of optimizer steps already taken, the Trainer's
    ``state.global_step``):

    * initial warm-up, ``step <= initial_warmup_steps``: ``initial``;
    * pruning phase: ``final + (initial - final) * (1 - progress) ** 3`` with
      ``progress = (step - initial_warmup_steps) / (total_steps - initial_warmup_steps - final_warmup_steps)``
      going from 0 (at ``step = initial_warmup_steps``) to 1 (at ``step = total_steps - final_warmup_steps``);
    * final warm-up, the last ``final_warmup_steps`` steps (``step >= total_steps - final_warmup_steps``):
      ``final``; steps past the end stay there.

    The phases' boundary steps give the same value from both sides (the curve is continuous). For ``topK`` and
    ``magnitude`` the value is the density (fraction of weights kept, e.g. 1.0 -> 0.1); for ``threshold`` and
    ``sigmoied_threshold`` it is the threshold (e.g. 0.0 -> 0.1). A run too short to leave the warm-ups
    (``total_steps <= initial_warmup_steps + final_warmup_steps``) is an error: it would never prune.
    """

    def __init__(self, initial: float, final: float, total_steps: int, initial_warmup_steps: int = 0,
                 final_warmup_steps: int = 0) -> None:
        self.initial = _real(initial, "initial")
        self.final = _real(final, "final")
        self.total_steps = _count(total_steps, "total_steps", 1)
        self.initial_warmup_steps = _count(initial_warmup_steps, "initial_warmup_steps", 0)
        self.final_warmup_steps = _count(final_warmup_steps, "final_warmup_steps", 0)
        self.pruning_steps = self.total_steps - self.initial_warmup_steps - self.final_warmup_steps
        if self.pruning_steps < 1:
            raise ValueError(f"CubicSchedule: total_steps={self.total_steps} leaves no pruning phase after "
                             f"initial_warmup_steps={self.initial_warmup_steps} and final_warmup_steps="
                             f"{self.final_warmup_steps} (it must exceed their sum, "
                             f"{self.initial_warmup_steps + self.final_warmup_steps}): the level would jump from "
                             "initial to final without a schedule. Train longer or shorten the warm-ups")

    def _step(self, step) -> int:
        if isinstance(step, bool):
            raise TypeError(f"CubicSchedule: step must be an int >= 0; got {step!r}")
        try:
            step = operator.index(step)
        except TypeError:
            raise TypeError(f"CubicSchedule: step must be an int >= 0; got {step!r}") from None
        if step < 0:
            raise ValueError(f"CubicSchedule: step must be >= 0; got {step}")
        return step

    def progress(self, step: int) -> float:
        """Where ``step`` is in the pruning phase: 0 through the initial warm-up, 1 through the final one."""
        step = self._step(step)
        return min(1.0, max(0.0, (step - self.initial_warmup_steps) / self.pruning_steps))

    def fraction(self, step: int) -> float:
        """How far the value has gone from ``initial`` to ``final``: ``1 - (1 - progress) ** 3``, in [0, 1]
        (what the penalty weight follows, see ``bermo.pruning.penalties.penalty_weight``)."""
        return 1.0 - (1.0 - self.progress(step)) ** 3

    def value(self, step: int) -> float:
        """The level at ``step``: exactly ``initial`` in the initial warm-up and ``final`` in the final one."""
        progress = self.progress(step)
        if progress <= 0.0:
            return self.initial
        if progress >= 1.0:
            return self.final
        return self.final + (self.initial - self.final) * (1.0 - progress) ** 3

    __call__ = value

    def __repr__(self) -> str:
        return (f"CubicSchedule(initial={self.initial:g}, final={self.final:g}, total_steps={self.total_steps}, "
                f"initial_warmup_steps={self.initial_warmup_steps}, final_warmup_steps={self.final_warmup_steps})")


def level_attribute(model: nn.Module) -> Optional[str]:
    """``"density"`` or ``"threshold"``: what a pruning level means for ``model``'s MaskedLinears; ``None`` when
    they all use ``l0`` (no level). Raises if the model has no MaskedLinear, or mixes density methods (topK,
    magnitude) with threshold methods, for which one value cannot mean both."""
    kinds = {}
    for name, module in masked_linears(model):
        kinds.setdefault(LEVEL_ATTRIBUTE[module.method], name)
    if not kinds:
        raise ValueError(f"{type(model).__name__} has no bermo.nn.MaskedLinear: call bermo.pruning.prepare(model) "
                         "first")
    kinds.pop(None, None)
    if len(kinds) > 1:
        raise ValueError(f"the model's MaskedLinears mix density methods (topK, magnitude; e.g. {kinds['density']!r}) "
                         f"and threshold methods (e.g. {kinds['threshold']!r}): one pruning level cannot be both a "
                         "density and a threshold; set their .density / .threshold directly")
    return next(iter(kinds), None)


def set_pruning_level(model: nn.Module, value: float) -> Optional[str]:
    """Set every MaskedLinear of ``model`` to the pruning level ``value``: its ``density`` for ``topK`` and
    ``magnitude``, its ``threshold`` for ``threshold`` and ``sigmoied_threshold``; ``l0`` layers have no level
    and are left alone. Returns the attribute set (``"density"``, ``"threshold"``, or ``None`` for an all-``l0``
    model). The value is validated once, before any layer changes (density in (0, 1]; a
    ``sigmoied_threshold`` threshold in [0, 1])."""
    attribute = level_attribute(model)
    layers = [m for _, m in masked_linears(model) if LEVEL_ATTRIBUTE[m.method] is not None]
    if layers:
        # the strictest check first: a sigmoied_threshold threshold must also lie in [0, 1]
        layers.sort(key=lambda m: m.method != "sigmoied_threshold")
        setattr(layers[0], attribute, value)  # the MaskedLinear setter validates (and raises) here
        value = getattr(layers[0], attribute)
        for module in layers[1:]:
            setattr(module, attribute, value)
    return attribute
