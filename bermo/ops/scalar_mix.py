"""The scalar mix ``gamma * sum_k softmax(s)_k * t_k`` as an op: validation, backend dispatch, the custom ops
that wrap the fused kernels (opaque to ``torch.compile``), and the autograd Function that chains them.

Math of the fused path (w = softmax(s), L layers, g the output gradient, sums over every element):

* plain mix: ``out = sum_k c_k t_k`` with ``c_k = gamma w_k``; ``grad t_k = c_k g``; ``d_k = <g, t_k>``.
* layer-normed mix (AllenNLP's masked layer norm, one mean/variance per layer over the M unmasked elements):
  ``n_k = (t_k - mu_k) r_k`` with ``r_k = 1 / sqrt(var_k + eps)``; ``out = sum_k c_k (t_k - mu_k)`` with
  ``c_k = gamma w_k r_k`` (centred before scaling: a near-constant layer has a huge ``c_k``); ``d_k = <g, n_k> = r_k e_k`` with
  ``e_k = <g, t_k - mu_k>``; and, m the row mask,
  ``grad t_k = c_k g - m (c_k S / M + c_k r_k^2 e_k / M (t_k - mu_k))`` with ``S = sum g``.
* either way ``grad gamma = sum_k w_k d_k`` and, through the softmax with ``q_k = gamma d_k``,
  ``grad s_k = w_k (q_k - sum_j w_j q_j) = gamma w_k (d_k - sum_j w_j d_j)``.
"""
from __future__ import annotations

from typing import List, Optional, Sequence, Tuple, Union

import torch

from .. import backends
from ..kernels.dtypes import SUPPORTED_DTYPES, acc_dtype
from .custom_ops import CustomOps

OP_NAME = "ScalarMix"

TensorsArg = Union[torch.Tensor, Sequence[torch.Tensor]]


def layer_norm_eps(dtype: torch.dtype) -> float:
    """AllenNLP's ``tiny_value_of_dtype``: 1e-13 for float32/float64, 1e-4 for 16-bit floats."""
    return 1e-4 if dtype in (torch.float16, torch.bfloat16) else 1e-13


# ----------------------------------------------------------------------------------------------------------
# Validation
# ----------------------------------------------------------------------------------------------------------
def as_layers(tensors: TensorsArg) -> Tuple[List[torch.Tensor], bool]:
    """``(layers, stacked)``: the layers as a list (views of a stacked (L, ...) tensor, never copies)."""
    if isinstance(tensors, torch.Tensor):
        if tensors.dim() == 0:
            raise ValueError(f"{OP_NAME}: a single tensor must be stacked layers of shape (L, ...); got a 0-d tensor")
        layers, stacked = list(tensors.unbind(0)), True
    elif isinstance(tensors, (list, tuple)):
        layers, stacked = list(tensors), False
    else:
        raise TypeError(f"{OP_NAME}: tensors must be a list or tuple of tensors or one stacked (L, ...) tensor; "
                        f"got {type(tensors).__name__}")
    if not layers:
        raise ValueError(f"{OP_NAME}: got no tensors to mix (an empty {'tensor' if stacked else 'list'})")
    for i, t in enumerate(layers):
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"{OP_NAME}: tensors[{i}] is a {type(t).__name__}, not a torch.Tensor")
    first = layers[0]
    if first.dtype not in SUPPORTED_DTYPES:
        raise TypeError(f"{OP_NAME}: tensors must be float16, bfloat16, float32 or float64; got {first.dtype}")
    for i, t in enumerate(layers[1:], start=1):
        for what, a, b in (("shape", t.shape, first.shape), ("dtype", t.dtype, first.dtype),
                           ("device", t.device, first.device)):
            if a != b:
                raise ValueError(f"{OP_NAME}: all tensors must have the same {what}; tensors[0] has {what} "
                                 f"{_fmt(b)} but tensors[{i}] has {what} {_fmt(a)}")
    return layers, stacked


def _fmt(x) -> str:
    return str(tuple(x)) if isinstance(x, torch.Size) else str(x)


def check_parameters(scalars, gamma, num_layers: int) -> None:
    """The scalars must be a float tensor of shape (L,) and gamma a float tensor holding one value, shape (1,)
    (what AllenNLP's module holds) or (): anything else is refused before any kernel runs. (A gamma of shape
    (L,) would otherwise broadcast into a silent per-layer gamma.)"""
    for name, p, shape in (("scalars", scalars, f"({num_layers},)"), ("gamma", gamma, "(1,) or ()")):
        if not isinstance(p, torch.Tensor):
            raise TypeError(f"{OP_NAME}: {name} must be a float torch.Tensor of shape {shape}; got a "
                            f"{type(p).__name__} (wrap it, e.g. torch.tensor({'[1.0]' if name == 'gamma' else 'values'}))")
        if not p.dtype.is_floating_point:
            raise TypeError(f"{OP_NAME}: {name} must be a floating-point tensor; got {p.dtype}")
    if scalars.shape != (num_layers,):
        raise ValueError(f"{OP_NAME}: expected {num_layers} scalar weights (one per tensor), shape ({num_layers},); "
                         f"got shape {_fmt(scalars.shape)}")
    if gamma.shape not in ((1,), ()):
        raise ValueError(f"{OP_NAME}: gamma must hold one value, shape (1,) or (); got shape {_fmt(gamma.shape)}")


def row_mask_of(mask: Optional[torch.Tensor], x0: torch.Tensor) -> torch.Tensor:
    """The validated layer-norm mask as one 0/1 value per row of the last dimension (accumulation dtype)."""
    if mask is None:
        raise ValueError(f"{OP_NAME}: do_layer_norm=True needs a mask (shape {_fmt(x0.shape[:-1])}, bool or "
                         "integer, 1 = keep), as AllenNLP's ScalarMix")
    if not isinstance(mask, torch.Tensor):
        raise TypeError(f"{OP_NAME}: mask must be a torch.Tensor, got {type(mask).__name__}")
    if x0.dim() == 0 or mask.shape != x0.shape[:-1]:
        raise ValueError(f"{OP_NAME}: mask shape {_fmt(mask.shape)} does not match the tensors' shape "
                         f"{_fmt(x0.shape)}: it must be the tensors' shape without the last dimension")
    if mask.dtype.is_floating_point or mask.dtype.is_complex:
        raise TypeError(f"{OP_NAME}: mask must be bool or integer (1 = keep, 0 = padding); got {mask.dtype}")
    if mask.device != x0.device:
        raise ValueError(f"{OP_NAME}: mask is on {mask.device} but the tensors are on {x0.device}")
    # Both value checks in one host round trip (on a GPU each read of a device value is a sync).
    bad = torch.zeros((), dtype=torch.bool, device=mask.device) if mask.dtype == torch.bool else (
        (mask != 0) & (mask != 1)).any()
    not_zero_one, any_kept = torch.stack([bad, mask.any()]).tolist()
    if not_zero_one:
        raise ValueError(f"{OP_NAME}: an integer mask must hold only 0 and 1")
    if not any_kept and mask.numel():  # (an empty batch has nothing to normalise: an empty output, as AllenNLP)
        raise ValueError(f"{OP_NAME}: the mask masks every position: layer norm needs at least one unmasked "
                         "position (its mean and variance would be 0/0)")
    return (mask != 0).reshape(-1).to(acc_dtype(x0.dtype))


# ----------------------------------------------------------------------------------------------------------
# The eager reference backend
# ----------------------------------------------------------------------------------------------------------
def reference_scalar_mix(layers: Sequence[torch.Tensor], scalars: torch.Tensor, gamma: torch.Tensor,
                         row_mask: Optional[torch.Tensor]) -> torch.Tensor:
    """AllenNLP's formula with plain torch ops (autograd does the backward), accumulating in acc_dtype."""
    x0 = layers[0]
    acc = acc_dtype(x0.dtype)
    weights = torch.softmax(scalars.to(acc), dim=0)
    total = None
    for k, t in enumerate(layers):
        t = t.to(acc)
        if row_mask is not None:
            m = row_mask.reshape(x0.shape[:-1]).unsqueeze(-1)
            n = m.sum() * x0.shape[-1]
            mean = (t * m).sum() / n
            var = (((t * m) - mean) * m).pow(2).sum() / n
            t = (t - mean) / torch.sqrt(var + layer_norm_eps(x0.dtype))
        total = weights[k] * t if total is None else total + weights[k] * t
    return (gamma.to(acc).reshape(()) * total).to(x0.dtype)


# ----------------------------------------------------------------------------------------------------------
# The kernel passes as custom ops (opaque to torch.compile, with fake implementations); eager calls skip the
# dispatcher (see bermo.ops.custom_ops).
# ----------------------------------------------------------------------------------------------------------
def _launchers(backend: str):
    if backend == "triton":
        from ..kernels import scalar_mix_triton as launchers
    else:
        from ..kernels import scalar_mix_cpu as launchers
    return launchers


def _mix_forward(tensors: List[torch.Tensor], coef: torch.Tensor, center: torch.Tensor,
                 backend: str) -> torch.Tensor:
    return _launchers(backend).mix_forward(tensors, coef, center)


def _mix_forward_fake(tensors, coef, center, backend):
    return torch.empty(tensors[0].shape, dtype=tensors[0].dtype, device=tensors[0].device)


def _fake_grads(x0: torch.Tensor, need_grad: List[bool], stacked: bool) -> List[torch.Tensor]:
    n = sum(map(bool, need_grad))
    return [x0.new_empty((n, *x0.shape))] if stacked else [x0.new_empty(x0.shape) for _ in range(n)]


def _mix_backward(grad_out: torch.Tensor, tensors: List[torch.Tensor], coef: torch.Tensor,
                  center: torch.Tensor, need_grad: List[bool], compute_dots: bool, stacked: bool,
                  backend: str) -> Tuple[List[torch.Tensor], torch.Tensor]:
    """Returns (the needed layers' gradients, or one (n_needed, ...) tensor when ``stacked``; the sums)."""
    return _launchers(backend).mix_backward(grad_out, tensors, coef, center, need_grad, compute_dots, stacked)


def _mix_backward_fake(grad_out, tensors, coef, center, need_grad, compute_dots, stacked, backend):
    return _fake_grads(tensors[0], need_grad, stacked), coef.new_empty(len(tensors) + 1)


def _ln_stats(tensors: List[torch.Tensor], row_mask: torch.Tensor,
              backend: str) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(mean (L,), biased variance (L,), count ()) of every layer over the unmasked elements, merged from the
    kernels' per-tile (count, mean of ``t - shift``, M2, shift) in float64 with Chan's formula (each tile's mean
    with its own shift added back)."""
    if tensors[0].numel() == 0:  # nothing to normalise (no rows, or a zero-width last dimension)
        zeros = row_mask.new_zeros(len(tensors))
        return zeros, zeros.clone(), row_mask.new_zeros(())
    counts, means, m2, shifts = _launchers(backend).ln_stats(tensors, row_mask)
    n = counts.double()[:, None]
    total = n.sum()
    tile_means = means.double() + shifts.double()
    mean = (n * tile_means).sum(0) / total
    var = (m2.double() + n * (tile_means - mean).pow(2)).sum(0) / total
    return mean.to(row_mask.dtype), var.to(row_mask.dtype), total.to(row_mask.dtype)


def _ln_stats_fake(tensors, row_mask, backend):
    L = len(tensors)
    return row_mask.new_empty(L), row_mask.new_empty(L), row_mask.new_empty(())


def _ln_backward(grad_out: torch.Tensor, tensors: List[torch.Tensor], row_mask: torch.Tensor,
                 coef: torch.Tensor, alpha: torch.Tensor, beta: torch.Tensor, center: torch.Tensor,
                 need_grad: List[bool], stacked: bool, backend: str) -> List[torch.Tensor]:
    return _launchers(backend).ln_backward(grad_out, tensors, row_mask, coef, alpha, beta, center, need_grad,
                                           stacked)


def _ln_backward_fake(grad_out, tensors, row_mask, coef, alpha, beta, center, need_grad, stacked, backend):
    return _fake_grads(tensors[0], need_grad, stacked)


_ops = CustomOps("scalar_mix", {
    "forward": (_mix_forward, _mix_forward_fake),
    "backward": (_mix_backward, _mix_backward_fake),
    "ln_stats": (_ln_stats, _ln_stats_fake),
    "ln_backward": (_ln_backward, _ln_backward_fake),
})


# ----------------------------------------------------------------------------------------------------------
# Autograd
# ----------------------------------------------------------------------------------------------------------
LAYERS_ARG = 6  # forward's arguments before the layers: scalars, gamma, row_mask, eps, backend, stacked


def _differentiable_backward(ctx, grad_out, scalars, gamma, row_mask, layers):
    """The backward as a differentiable function of the inputs, for ``create_graph=True`` (gradient penalties,
    double backward): the fused kernels compute numbers, not a graph, so this recomputes the eager formula and
    lets autograd build the graph of its gradients. Slower, but never a silent zero."""
    flags = [ctx.needs_input_grad[0], ctx.needs_input_grad[1], *ctx.needs_input_grad[LAYERS_ARG:]]
    wanted = [i for i, f in enumerate(flags) if f]
    with torch.enable_grad():
        # one alias per argument slot: a tensor passed as several layers would otherwise get its whole gradient
        # in each slot, which autograd then adds up (n times the gradient for n slots)
        inputs = [t.view_as(t) for t in (scalars, gamma, *layers)]
        scalars, gamma, layers = inputs[0], inputs[1], inputs[2:]
        tensors = list(layers[0].unbind(0)) if ctx.stacked else list(layers)
        out = reference_scalar_mix(tensors, scalars, gamma, row_mask)
        found = torch.autograd.grad(out, [inputs[i] for i in wanted], grad_out, create_graph=True,
                                    allow_unused=True)
    grads = [None] * len(inputs)
    for i, g in zip(wanted, found):
        grads[i] = torch.zeros_like(inputs[i]) if g is None else g
    return (grads[0], grads[1], None, None, None, None, *grads[2:])


class ScalarMixFunction(torch.autograd.Function):
    """Fused scalar mix: ``forward(scalars (L,), gamma (1,), row_mask or None, eps, backend, stacked, *layers)``.

    ``layers`` is either the L layers or, when ``stacked``, one (L, ...) tensor; its gradient then comes back
    as one (L, ...) tensor without a copy.
    """

    @staticmethod
    def forward(ctx, scalars, gamma, row_mask, eps, backend, stacked, *layers):
        tensors = list(layers[0].unbind(0)) if stacked else list(layers)
        acc = acc_dtype(tensors[0].dtype)
        weights = torch.softmax(scalars.detach().to(acc), dim=0)
        gw = weights * gamma.detach().to(acc)  # gamma * w_k
        mean = rstd = count = None
        if row_mask is None:
            coef, center = gw, torch.zeros_like(gw)
        else:
            mean, var, count = _ops().ln_stats(tensors, row_mask, backend)
            rstd = torch.rsqrt(var + eps)
            coef, center = gw * rstd, mean
        out = _ops().forward(tensors, coef, center, backend)
        ctx.backend, ctx.stacked, ctx.num_layers = backend, stacked, len(tensors)
        ctx.param_dtypes = (scalars.dtype, gamma.dtype)
        ctx.gamma_shape = gamma.shape
        ctx.save_for_backward(weights, gw, coef, mean, rstd, count, row_mask, scalars, gamma, *layers)
        return out

    @staticmethod
    def backward(ctx, grad_out):
        weights, gw, coef, mean, rstd, count, row_mask, scalars, gamma, *layers = ctx.saved_tensors
        if torch.is_grad_enabled():  # create_graph=True: the gradients must themselves be differentiable
            return _differentiable_backward(ctx, grad_out, scalars, gamma, row_mask, layers)
        tensors = list(layers[0].unbind(0)) if ctx.stacked else list(layers)
        L, backend = ctx.num_layers, ctx.backend
        layer_flags = ctx.needs_input_grad[LAYERS_ARG:]
        need = [bool(layer_flags[0])] * L if ctx.stacked else [bool(f) for f in layer_flags]
        need_dots = ctx.needs_input_grad[0] or ctx.needs_input_grad[1]
        grad_out = grad_out.contiguous()
        computed, d = [], None  # the needed layers' gradients (one stacked tensor when stacked)
        if row_mask is None:
            if any(need) or need_dots:
                computed, sums = _ops().backward(grad_out, tensors, coef, torch.zeros_like(coef), need,
                                                     need_dots, ctx.stacked, backend)
                d = sums[:L]
        elif any(need) or need_dots:
            _, sums = _ops().backward(grad_out, tensors, coef, mean, [False] * L, True, ctx.stacked, backend)
            e, total_g = sums[:L], sums[L]
            d = rstd * e
            if any(need):
                alpha = coef * total_g / count
                beta = coef * rstd * rstd * e / count
                computed = _ops().ln_backward(grad_out, tensors, row_mask, coef, alpha, beta, mean, need,
                                              ctx.stacked, backend)
        grad_scalars = grad_gamma = None
        if need_dots:  # few small ops: on a GPU each is a launch beside the one big kernel
            wd = torch.dot(weights, d)  # = grad gamma
            grad_scalars = (gw * (d - wd)).to(ctx.param_dtypes[0])  # w_k (q_k - sum_j w_j q_j), q = gamma d
            grad_gamma = wd.reshape(ctx.gamma_shape).to(ctx.param_dtypes[1])
        it = iter(computed)
        layer_grads = [next(it) if f else None for f in need[:1 if ctx.stacked else L]]
        return (grad_scalars, grad_gamma, None, None, None, None, *layer_grads)


# ----------------------------------------------------------------------------------------------------------
# Functional entry point
# ----------------------------------------------------------------------------------------------------------
def scalar_mix(tensors: TensorsArg, scalars: torch.Tensor, gamma: torch.Tensor, mask: Optional[torch.Tensor] = None,
               do_layer_norm: bool = False, backend: Optional[str] = None) -> torch.Tensor:
    """``gamma * sum_k softmax(scalars)_k * tensors[k]`` (optionally with AllenNLP's masked layer norm).

    ``tensors``: a list/tuple of same-shape tensors or one stacked (L, ...) tensor. ``scalars``: (L,) float32;
    ``gamma``: (1,) float32. ``mask`` is used only with ``do_layer_norm`` (as in AllenNLP), but its type and
    shape are checked either way. The output has the inputs' dtype; accumulation is float32 (float64 for float64).
    """
    layers, stacked = as_layers(tensors)
    x0 = layers[0]
    check_parameters(scalars, gamma, len(layers))
    for name, p in (("scalar parameters", scalars), ("gamma", gamma)):
        if p.device != x0.device:
            raise ValueError(f"{OP_NAME}: the {name} are on {p.device} but the tensors are on {x0.device}; "
                             "move the module with .to(device)")
    if mask is not None and not do_layer_norm:
        # AllenNLP ignores a mask without layer norm, and so does bermo; a mask of the wrong kind is still an
        # error rather than silently ignored.
        if not isinstance(mask, torch.Tensor):
            raise TypeError(f"{OP_NAME}: mask must be a torch.Tensor, got {type(mask).__name__}")
        if x0.dim() == 0 or mask.shape != x0.shape[:-1]:
            raise ValueError(f"{OP_NAME}: mask shape {_fmt(mask.shape)} does not match the tensors' shape "
                             f"{_fmt(x0.shape)}: it must be the tensors' shape without the last dimension (the "
                             "mask is only used with do_layer_norm=True)")
    row_mask = row_mask_of(mask, x0) if do_layer_norm else None
    name = backends.resolve(backend, x0.device, OP_NAME)
    if name == "reference":
        return reference_scalar_mix(layers, scalars, gamma, row_mask)
    inputs = (tensors,) if stacked else tuple(layers)
    return ScalarMixFunction.apply(scalars, gamma, row_mask, layer_norm_eps(x0.dtype), name, stacked, *inputs)
