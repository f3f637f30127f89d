"""``bermo.nn.MaskedLinear``: a drop-in ``nn.Linear`` whose weight is pruned by a block mask, with the pruning
methods of movement pruning (Sanh et al. 2020) computed as in its reference code, on ``bermo.ops.masked_linear``.
"""
from __future__ import annotations

import math
import numbers
from typing import Optional, Sequence, Tuple, Union

import torch
from torch import nn

from .. import backends
from ..ops.masked_linear import expand_mask, masked_linear, parse_block_shape

METHODS = ("magnitude", "topK", "threshold", "sigmoied_threshold", "l0")
LEARNED_METHODS = ("topK", "threshold", "sigmoied_threshold", "l0")  # the methods with ``scores``

# Hard concrete (Louizos et al. 2018) as movement pruning's reference code uses it: stretched to (-0.1, 1.1) and
# clamped to [0, 1], temperature 2/3; the uniform noise kept away from 0 and 1 by L0_EPS.
L0_EPS = 1e-6
L0_TEMPERATURE = 2 / 3


# ----------------------------------------------------------------------------------------------------------
# The masks, as functions of scores or weights (module-free, so tests and schedules can call them)
# ----------------------------------------------------------------------------------------------------------
def kept_count(density: float, n_blocks: int) -> int:
    """How many of ``n_blocks`` blocks a ``density`` keeps: ``round(density * n_blocks)`` (Python's round, halves
    to even), at least one."""
    return max(1, min(n_blocks, round(density * n_blocks)))


def top_blocks(values: torch.Tensor, k: int) -> torch.Tensor:
    """A bool tensor shaped like ``values``, True at its ``k`` largest entries. Ties are broken by position: a
    stable descending sort over the flattened values, so of equal values the lower index is kept first."""
    n = values.numel()
    if k >= n:
        return torch.ones(values.shape, dtype=torch.bool, device=values.device)
    order = torch.sort(values.detach().flatten(), descending=True, stable=True).indices
    keep = torch.zeros(n, dtype=torch.bool, device=values.device).scatter(0, order[:k], True)
    return keep.view(values.shape)


def block_norms(weight: torch.Tensor, block_shape: Sequence[int]) -> torch.Tensor:
    """The L2 norm of each ``(bo, bi)`` block of ``weight``: ``|weight|`` itself for ``(1, 1)`` blocks, else
    computed in float32 (float64 for float64 weights)."""
    bo, bi = block_shape
    w = weight.detach()
    if (bo, bi) == (1, 1):
        return w.abs()
    out_f, in_f = w.shape
    acc = torch.float64 if w.dtype == torch.float64 else torch.float32
    return w.to(acc).reshape(out_f // bo, bo, in_f // bi, bi).square().sum(dim=(1, 3)).sqrt()


class TopKMask(torch.autograd.Function):
    """``forward(scores, k)``: 1.0 at the ``k`` largest scores (``top_blocks``), 0.0 elsewhere, in the scores'
    dtype; backward is straight-through (the mask's gradient goes to the scores unchanged)."""

    @staticmethod
    def forward(ctx, scores, k):
        return top_blocks(scores, k).to(scores.dtype)

    @staticmethod
    def backward(ctx, grad_mask):
        return grad_mask, None


class ThresholdMask(torch.autograd.Function):
    """``forward(scores, threshold, sigmoid)``: 1.0 where ``scores > threshold`` (``sigmoid(scores) > threshold``
    when ``sigmoid``), 0.0 elsewhere; backward is straight-through (the sigmoid's derivative skipped, as in the
    reference code)."""

    @staticmethod
    def forward(ctx, scores, threshold, sigmoid):
        s = torch.sigmoid(scores) if sigmoid else scores
        return (s > threshold).to(scores.dtype)

    @staticmethod
    def backward(ctx, grad_mask):
        return grad_mask, None, None


def l0_mask(scores: torch.Tensor, training: bool) -> torch.Tensor:
    """The hard-concrete mask ``clamp(s * 1.2 - 0.1, 0, 1)``, values in [0, 1], differentiable in ``scores``;
    ``s = sigmoid((log u - log(1 - u) + scores) / (2/3))`` with ``u ~ U(1e-6, 1 - 1e-6)`` in training,
    ``s = sigmoid(scores)`` otherwise."""
    if training:
        u = torch.empty_like(scores).uniform_(L0_EPS, 1 - L0_EPS)
        s = torch.sigmoid((u.log() - (1 - u).log() + scores) / L0_TEMPERATURE)
    else:
        s = torch.sigmoid(scores)
    return torch.clamp(s * 1.2 - 0.1, 0.0, 1.0)


# ----------------------------------------------------------------------------------------------------------
# Validation
# ----------------------------------------------------------------------------------------------------------
def _real(value, name: str) -> float:
    if isinstance(value, torch.Tensor) and value.numel() == 1 and not value.dtype == torch.bool:
        value = value.item()
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"MaskedLinear: {name} must be a real number; got {value!r} ({type(value).__name__})")
    value = float(value)
    if not math.isfinite(value):
        raise ValueError(f"MaskedLinear: {name} must be finite; got {value}")
    return value


def _check_method(method) -> str:
    if method not in METHODS:
        raise ValueError(f"MaskedLinear: unknown pruning method {method!r}; choose one of {', '.join(METHODS)}")
    return method


def check_block_shape(block_shape, out_features: int, in_features: int,
                      what: str = "MaskedLinear") -> Tuple[int, int]:
    """``(bo, bi)`` as ints, validated against an (out_features, in_features) weight; errors start with ``what``
    (the modules of bermo.nn that hold a block structure share this check)."""
    bo, bi = parse_block_shape(block_shape, what)
    if out_features % bo or in_features % bi:
        raise ValueError(f"{what}: block_shape {(bo, bi)} does not divide the weight's shape "
                         f"(out_features, in_features) = {(out_features, in_features)}: out_features must be a "
                         "multiple of bo and in_features a multiple of bi")
    return bo, bi


# ----------------------------------------------------------------------------------------------------------
# The module
# ----------------------------------------------------------------------------------------------------------
class MaskedLinear(nn.Linear):
    """``y = x @ (weight * expand(mask)).T + bias``: an ``nn.Linear`` (same ``weight`` and ``bias``, same
    initialisation, same ``state_dict`` keys, ``isinstance`` of it) whose weight is pruned by a mask with one
    value per ``block_shape = (bo, bi)`` block, computed on every forward by ``method``:

    * ``magnitude``: keeps the ``density`` fraction of blocks with the largest L2 norm of their weights (``|W|``
      for (1, 1) blocks); a bool mask, no scores.
    * ``topK`` (movement pruning): keeps the ``density`` fraction of blocks with the largest ``scores``;
      straight-through gradient to the scores.
    * ``threshold``: keeps blocks with ``scores > threshold``; straight-through.
    * ``sigmoied_threshold`` (soft movement pruning): keeps ``sigmoid(scores) > threshold``; straight-through
      (the sigmoid's derivative skipped, as in the reference code).
    * ``l0`` (hard concrete): a float mask in [0, 1], random in training and ``clamp(sigmoid(scores) * 1.2 - 0.1,
      0, 1)`` in eval; the gradient flows through the formula.

    "The ``density`` fraction" is ``round(density * n_blocks)`` blocks (Python's round), at least one, ties
    broken by a stable sort (of equal values the lower flattened block index is kept). The learned methods
    have ``scores``: a float32 Parameter of shape ``(out // bo, in // bi)``, 0 unless ``scores_init`` (a float
    or a tensor of that shape) is given. ``density`` and ``threshold`` are plain attributes for a schedule to
    set (validated: density in (0, 1]). At density 1.0, or a threshold that keeps every block, the module
    computes what the ``nn.Linear`` computes (bitwise so with ``backend="reference"``).

    ``.to(dtype)`` casts the scores like any Parameter; build with ``dtype=`` (or ``from_linear``) to keep
    float32 scores beside 16-bit weights.

    The ``state_dict`` holds ``weight``, ``bias`` and ``scores`` only: the method, block shape and level
    (``density`` / ``threshold``) are not saved. To continue from one, build the same layers (``prepare`` with the
    same options), load, and set the level again (``bermo.pruning.set_pruning_level``; the pruning Trainer sets it
    from the step it resumes at); to share a pruned model, ``bermo.pruning.bake_masks`` or ``compress`` it.
    """

    def __init__(self, in_features: int, out_features: int, bias: bool = True, method: str = "topK",
                 block_shape: Sequence[int] = (1, 1), density: float = 1.0, threshold: float = 0.0,
                 scores_init: Optional[Union[float, torch.Tensor]] = None, backend: Optional[str] = None,
                 device=None, dtype=None) -> None:
        method = _check_method(method)
        block_shape = check_block_shape(block_shape, out_features, in_features)
        if backend is not None:
            backends.requested(backend)  # fail early on a misspelt name
        super().__init__(in_features, out_features, bias=bias, device=device, dtype=dtype)
        self._method = method
        self.block_shape = block_shape
        self.backend = backend
        self.density = density
        self.measured_density: Optional[float] = None  # the kept fraction last measured (kept_fraction)
        self._path_hint: Optional[float] = None  # what forward passes as the GPU path hint (threshold, l0)
        self.threshold = threshold
        if method in LEARNED_METHODS:
            self.scores = nn.Parameter(torch.empty(self.blocks_shape, dtype=torch.float32, device=device))
            self.reset_scores(scores_init)
        else:
            if scores_init is not None:
                raise ValueError(f"MaskedLinear: method {method!r} has no scores (it ranks the weights' magnitudes); "
                                 "scores_init must be None")
            self.register_parameter("scores", None)

    @classmethod
    def from_linear(cls, linear: nn.Linear, method: str = "topK", block_shape: Sequence[int] = (1, 1),
                    density: float = 1.0, threshold: float = 0.0,
                    scores_init: Optional[Union[float, torch.Tensor]] = None,
                    backend: Optional[str] = None) -> "MaskedLinear":
        """A ``MaskedLinear`` holding a copy of ``linear``'s weight and bias (same device, dtype and
        ``requires_grad``); its scores as ``scores_init`` says. Draws no random numbers."""
        if not isinstance(linear, nn.Linear):
            raise TypeError(f"MaskedLinear.from_linear: expected a torch.nn.Linear; got {type(linear).__name__}")
        weight = linear.weight
        # Built on the meta device (no wasted initialisation, no draw from the global generator), then given
        # storage where the linear's weight lives.
        module = cls(linear.in_features, linear.out_features, bias=linear.bias is not None, method=method,
                     block_shape=block_shape, density=density, threshold=threshold, backend=backend,
                     scores_init=scores_init, device="meta", dtype=weight.dtype)
        module = module.to_empty(device=weight.device)
        with torch.no_grad():
            module.weight.copy_(weight)
            module.weight.requires_grad_(weight.requires_grad)
            if linear.bias is not None:
                module.bias.copy_(linear.bias)
                module.bias.requires_grad_(linear.bias.requires_grad)
        if module.scores is not None:
            module.reset_scores(scores_init)
        return module

    # ------------------------------------------------------------------------------------------ attributes
    @property
    def method(self) -> str:
        return self._method

    @method.setter
    def method(self, value: str) -> None:
        self._method = _check_method(value)

    @property
    def density(self) -> float:
        """The fraction of blocks ``magnitude`` and ``topK`` keep, in (0, 1]."""
        return self._density

    @density.setter
    def density(self, value: float) -> None:
        value = _real(value, "density")
        if not 0.0 < value <= 1.0:
            raise ValueError(f"MaskedLinear: density must be in (0, 1] (the fraction of weights kept); got {value}")
        self._density = value

    @property
    def threshold(self) -> float:
        """The threshold of ``threshold`` (on scores) and ``sigmoied_threshold`` (on sigmoid(scores), in [0, 1])."""
        return self._threshold

    @threshold.setter
    def threshold(self, value: float) -> None:
        value = _real(value, "threshold")
        if self._method == "sigmoied_threshold" and not 0.0 <= value <= 1.0:
            raise ValueError(f"MaskedLinear: the threshold of method 'sigmoied_threshold' applies to sigmoid(scores) "
                             f"and must be in [0, 1]; got {value}")
        self._threshold = value

    @property
    def blocks_shape(self) -> Tuple[int, int]:
        """``(out_features // bo, in_features // bi)``: the shape of ``scores`` and of ``block_mask()``."""
        return self.out_features // self.block_shape[0], self.in_features // self.block_shape[1]

    def reset_scores(self, scores_init: Optional[Union[float, torch.Tensor]] = None) -> None:
        """Set the scores to ``scores_init`` (a float, or a tensor of shape ``blocks_shape``), 0 by default."""
        if self.scores is None:
            raise ValueError(f"MaskedLinear: method {self._method!r} has no scores")
        with torch.no_grad():
            if scores_init is None:
                self.scores.zero_()
            elif isinstance(scores_init, torch.Tensor):
                if tuple(scores_init.shape) != self.blocks_shape:
                    raise ValueError(f"MaskedLinear: scores_init must hold one score per {self.block_shape} block "
                                     f"of the {(self.out_features, self.in_features)} weight, shape "
                                     f"{self.blocks_shape}; got {tuple(scores_init.shape)}")
                self.scores.copy_(scores_init)
            else:
                self.scores.fill_(_real(scores_init, "scores_init"))

    # ------------------------------------------------------------------------------------------- the mask
    def block_mask(self) -> torch.Tensor:
        """The compact mask the op takes, shape ``blocks_shape``: bool for ``magnitude``, float (the scores'
        dtype, with the method's gradient to the scores) otherwise. ``l0`` draws a fresh random mask in training."""
        method = self._method
        n_blocks = self.blocks_shape[0] * self.blocks_shape[1]
        if method == "magnitude":
            return top_blocks(block_norms(self.weight, self.block_shape), kept_count(self._density, n_blocks))
        scores = self.scores
        if scores is None:
            raise ValueError(f"MaskedLinear: method {method!r} learns its mask from scores, but this module has "
                             "none (was it built with method='magnitude'?); build it with the learned method, or "
                             f"set .scores to a Parameter of shape {self.blocks_shape}")
        if tuple(scores.shape) != self.blocks_shape:
            raise ValueError(f"MaskedLinear: scores must hold one score per {self.block_shape} block of the "
                             f"{(self.out_features, self.in_features)} weight, shape {self.blocks_shape}; got "
                             f"{tuple(scores.shape)}")
        if method == "topK":
            return TopKMask.apply(scores, kept_count(self._density, n_blocks))
        if method == "threshold":
            return ThresholdMask.apply(scores, self._threshold, False)
        if method == "sigmoied_threshold":
            return ThresholdMask.apply(scores, self._threshold, True)
        return l0_mask(scores, self.training)

    def mask(self) -> torch.Tensor:
        """The mask expanded to the weight's shape ``(out_features, in_features)``, detached (for inspection;
        ``l0`` in training draws a fresh one)."""
        with torch.no_grad():
            return expand_mask(self.block_mask(), self.block_shape)

    def kept_fraction(self) -> float:
        """The fraction of weights the current mask keeps (nonzero); for ``l0`` that of the eval-mode mask.
        Also kept as ``measured_density``, the GPU path's hint for the threshold methods and ``l0``."""
        with torch.no_grad():
            if self._method == "l0":
                m = l0_mask(self.scores, training=False) if self.scores is not None else None
            else:
                m = self.block_mask()
            value = float((m != 0).float().mean()) if m is not None else float("nan")
        self.note_kept_fraction(value)
        return value

    def note_kept_fraction(self, value: float) -> None:
        """Record a measured kept fraction (``measured_density``). The threshold methods and ``l0`` pass it to the
        op as the GPU path hint, updated only when it would change the path: a module under ``torch.compile``
        then recompiles at those flips, not at every measurement."""
        self.measured_density = None if value != value else float(value)
        if self.measured_density is None:
            return
        from ..kernels.masked_linear_paths import uses_dense_path  # (plain Python: no Triton import)

        old = self._path_hint
        if old is None or uses_dense_path(self.block_shape, old) != uses_dense_path(self.block_shape,
                                                                                    self.measured_density):
            self._path_hint = self.measured_density

    # -------------------------------------------------------------------------------------------- forward
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # A host-side hint for the GPU kernels' choice of path (never a device sync): topK and magnitude know how
        # many blocks they keep; the threshold methods and l0 pass a fraction measured earlier (kept_fraction,
        # which the pruning Trainer calls at every log; see note_kept_fraction), None before any
        hint = self._density if self._method in ("topK", "magnitude") else self._path_hint
        return masked_linear(x, self.weight, self.block_mask(), self.bias, self.block_shape, backend=self.backend,
                             density=hint)

    def extra_repr(self) -> str:
        parts = [f"in_features={self.in_features}", f"out_features={self.out_features}",
                 f"bias={self.bias is not None}", f"method={self._method}", f"block_shape={self.block_shape}"]
        if self._method in ("threshold", "sigmoied_threshold"):
            parts.append(f"threshold={self._threshold:g}")
        if self._method == "magnitude" or self.weight.device.type == "meta":
            parts.append(f"density={self._density:g}")
        else:  # the learned methods: what the current mask actually keeps
            parts.append(f"density={self.kept_fraction():.4g}")
        if self.backend is not None:
            parts.append(f"backend={self.backend}")
        return ", ".join(parts)

    # ---------------------------------------------------------------------------------------- checkpoints
    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                              error_msgs):
        # A missing or unexpected "scores" (a checkpoint of magnitude or an nn.Linear into a learned method, or the
        # reverse) is left to torch: with strict=True its error names the key, with strict=False the weights load
        # alone (torch calls this method with strict=True whatever the caller asked, so it cannot decide here).
        key = prefix + "scores"
        if key in state_dict and self.scores is not None:
            shape = tuple(state_dict[key].shape)
            if shape != tuple(self.scores.shape):
                error_msgs.append(f"MaskedLinear: the state_dict's {key!r} has shape {shape}, but this module's "
                                  f"scores hold one score per {self.block_shape} block of the "
                                  f"{(self.out_features, self.in_features)} weight, shape {tuple(self.scores.shape)}: "
                                  "was it saved with another block_shape?")
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                                      error_msgs)
