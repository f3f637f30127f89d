"""The masked linear ``x @ (weight * expand(mask)).T + bias`` as an op: validation, backend dispatch, the custom
ops around the kernels and the autograd Function.

``mask`` holds one value per ``block_shape = (bo, bi)`` block of the weight, shape ``(out // bo, in // bi)``;
``expand`` repeats each value over its block. It is bool (a fixed pattern) or float (learned or L0 masks,
values in [0, 1]). With ``G = dY^T X`` (out, in), the gradients are

* ``grad x = dY @ (weight * expand(mask))``: zero mask blocks skipped where the forward skips them (the
  block-skipping GPU kernels, the C++ kernels below their density crossover);
* ``grad weight = G * expand(mask)``;
* ``grad mask = blocksum(G * weight)`` (float masks only): the straight-through score gradient of movement
  pruning needs ``G`` at pruned weights too, so ``G`` stays dense there; when the mask needs no gradient the
  C++ CPU kernels compute it on kept blocks only (on a GPU the whole cuBLAS product measured faster at every
  density, see ``bermo.kernels.masked_linear_triton.grad_weight``);
* ``grad bias = sum of dY over tokens``.
"""
from __future__ import annotations

import math
import operator

from typing import List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F

from .. import backends
from ..kernels.dtypes import SUPPORTED_DTYPES, acc_dtype
from ..kernels.masked_linear_paths import uses_dense_path
from .autocast import autocast_inputs
from .custom_ops import CustomOps

OP_NAME = "masked_linear"


# ----------------------------------------------------------------------------------------------------------
# Validation
# ----------------------------------------------------------------------------------------------------------
def parse_block_shape(block_shape, what: str = OP_NAME) -> Tuple[int, int]:
    """``(bo, bi)`` as positive ints; errors start with ``what`` (bermo.nn's modules share this parse)."""
    try:  # ints only: int() would turn 1.5, "1" or True into a block side silently
        bo, bi = block_shape
        if isinstance(bo, bool) or isinstance(bi, bool):
            raise TypeError
        bo, bi = operator.index(bo), operator.index(bi)
    except (TypeError, ValueError):
        raise TypeError(f"{what}: block_shape must be a pair of positive ints (bo, bi); got {block_shape!r}") \
            from None
    if bo < 1 or bi < 1:
        raise ValueError(f"{what}: block_shape must be positive; got {(bo, bi)}")
    return bo, bi


def check_block_shape(block_shape, weight_shape) -> Tuple[int, int]:
    """``(bo, bi)`` as ints, validated against the weight's shape ``(out, in)``."""
    bo, bi = parse_block_shape(block_shape)
    out_f, in_f = weight_shape
    if out_f % bo or in_f % bi:
        raise ValueError(f"{OP_NAME}: block_shape {(bo, bi)} does not divide the weight's shape {(out_f, in_f)}: "
                         "out_features must be a multiple of bo and in_features of bi")
    return bo, bi


def expand_mask(mask: torch.Tensor, block_shape: Sequence[int]) -> torch.Tensor:
    """The compact ``(out // bo, in // bi)`` mask repeated over its blocks: ``(out, in)``."""
    bo, bi = block_shape
    return mask.repeat_interleave(bo, dim=0).repeat_interleave(bi, dim=1)


def _validate(x, weight, mask, bias, block_shape):
    for name, t in (("x", x), ("weight", weight), ("mask", mask)):
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"{OP_NAME}: {name} must be a torch.Tensor; got {type(t).__name__}")
    if bias is not None and not isinstance(bias, torch.Tensor):
        raise TypeError(f"{OP_NAME}: bias must be a torch.Tensor or None; got {type(bias).__name__}")
    if weight.dim() != 2:
        raise ValueError(f"{OP_NAME}: weight must be 2-D (out_features, in_features); got shape {tuple(weight.shape)}")
    out_f, in_f = weight.shape
    bo, bi = check_block_shape(block_shape, weight.shape)
    if x.dim() < 1 or x.shape[-1] != in_f:
        raise ValueError(f"{OP_NAME}: x's last dimension must be in_features = {in_f}; got shape {tuple(x.shape)}")
    if x.dtype not in SUPPORTED_DTYPES or weight.dtype != x.dtype:
        raise TypeError(f"{OP_NAME}: x and weight must share one of float16, bfloat16, float32, float64; got "
                        f"{x.dtype} and {weight.dtype}")
    want = (out_f // bo, in_f // bi)
    if tuple(mask.shape) != want:
        raise ValueError(f"{OP_NAME}: mask must hold one value per {bo}x{bi} block of the {out_f}x{in_f} weight, "
                         f"shape {want}; got {tuple(mask.shape)}")
    if not (mask.dtype == torch.bool or mask.dtype.is_floating_point):
        raise TypeError(f"{OP_NAME}: mask must be bool or floating point; got {mask.dtype}")
    if bias is not None and (bias.shape != (out_f,) or bias.dtype != x.dtype):
        raise ValueError(f"{OP_NAME}: bias must have shape ({out_f},) and x's dtype {x.dtype}; got "
                         f"{tuple(bias.shape)} {bias.dtype}")
    for name, t in (("weight", weight), ("mask", mask), ("bias", bias)):
        if t is not None and t.device != x.device:
            raise ValueError(f"{OP_NAME}: {name} is on {t.device} but x is on {x.device}")
    return bo, bi


# ----------------------------------------------------------------------------------------------------------
# The eager reference backend
# ----------------------------------------------------------------------------------------------------------
def reference_masked_linear(x, weight, mask, bias, block_shape):
    """``F.linear(x, weight * expand(mask), bias)`` with plain torch ops: what the movement-pruning reference
    code does (autograd gives the straight-through mask gradient ``blocksum(G * weight)``)."""
    m = expand_mask(mask, block_shape).to(weight.dtype)
    return F.linear(x, weight * m, bias)


# ----------------------------------------------------------------------------------------------------------
# The kernel passes as custom ops (opaque to torch.compile, with fake implementations)
# ----------------------------------------------------------------------------------------------------------
def _launchers(backend: str):
    if backend == "triton":
        from ..kernels import masked_linear_triton as launchers
    else:
        from ..kernels import masked_linear_cpu as launchers
    return launchers


def _path(backend: str, dense: bool):
    """The launchers' extra argument: the Triton ones take the host's choice of path (``dense``), the C++ ones
    choose from the mask itself (it is on the host)."""
    return (dense,) if backend == "triton" else ()


def _forward(x2d: torch.Tensor, weight: torch.Tensor, mask: torch.Tensor, bias: torch.Tensor,
             block_shape: List[int], dense: bool, backend: str) -> torch.Tensor:
    """``bias`` is an empty tensor for none (a custom op's schema takes no optional tensors quietly)."""
    return _launchers(backend).forward(x2d, weight, mask, bias if bias.numel() else None, tuple(block_shape),
                                       *_path(backend, dense))


def _forward_fake(x2d, weight, mask, bias, block_shape, dense, backend):
    return x2d.new_empty((x2d.shape[0], weight.shape[0]))


def _grad_input(dy2d: torch.Tensor, weight: torch.Tensor, mask: torch.Tensor, block_shape: List[int],
                dense: bool, backend: str) -> torch.Tensor:
    return _launchers(backend).grad_input(dy2d, weight, mask, tuple(block_shape), *_path(backend, dense))


def _grad_input_fake(dy2d, weight, mask, block_shape, dense, backend):
    return dy2d.new_empty((dy2d.shape[0], weight.shape[1]))


def _grad_weight(dy2d: torch.Tensor, x2d: torch.Tensor, weight: torch.Tensor, mask: torch.Tensor,
                 block_shape: List[int], need_mask_grad: bool, need_bias_grad: bool,
                 backend: str) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(grad weight, grad mask, grad bias); the latter two empty tensors when not asked for (custom ops return
    tensors, not None). The Triton launcher also returns the bias gradient."""
    if backend == "triton":
        gw, gm, gb = _launchers(backend).grad_weight(dy2d, x2d, weight, mask, tuple(block_shape), need_mask_grad,
                                                     need_bias_grad)
    else:
        gw, gm = _launchers(backend).grad_weight(dy2d, x2d, weight, mask, tuple(block_shape), need_mask_grad)
        gb = _bias_grad(dy2d) if need_bias_grad else None
    return gw, (mask.new_empty(0) if gm is None else gm), (dy2d.new_empty(0) if gb is None else gb)


def _grad_weight_fake(dy2d, x2d, weight, mask, block_shape, need_mask_grad, need_bias_grad, backend):
    return (weight.new_empty(weight.shape), mask.new_empty(mask.shape if need_mask_grad else (0,)),
            dy2d.new_empty((weight.shape[0],) if need_bias_grad else (0,)))


def _bias_grad(dy2d: torch.Tensor) -> torch.Tensor:
    return dy2d.sum(0, dtype=acc_dtype(dy2d.dtype)).to(dy2d.dtype)


_ops = CustomOps("masked_linear", {
    "forward": (_forward, _forward_fake),
    "grad_input": (_grad_input, _grad_input_fake),
    "grad_weight": (_grad_weight, _grad_weight_fake),
})


# ----------------------------------------------------------------------------------------------------------
# Autograd
# ----------------------------------------------------------------------------------------------------------
class MaskedLinearFunction(torch.autograd.Function):
    """``forward(x, weight, mask, bias, block_shape, backend, dense)``; ``mask`` as given (bool or float);
    ``dense``: the Triton launchers' path (``uses_dense_path``), ignored by the others."""

    @staticmethod
    def forward(ctx, x, weight, mask, bias, block_shape, backend, dense):
        acc = acc_dtype(x.dtype)
        kmask = mask.detach().to(acc).contiguous()
        x2d = x.reshape(math.prod(x.shape[:-1]), x.shape[-1])  # (-1 is ambiguous for 0 features)
        if not x2d.is_contiguous():
            x2d = x2d.contiguous()
        w = weight.contiguous()
        b = x.new_empty(0) if bias is None else bias.contiguous()  # (the kernels read it with unit stride)
        y = _ops().forward(x2d, w, kmask, b, list(block_shape), dense, backend)
        ctx.save_for_backward(x2d, w, kmask)
        ctx.block_shape, ctx.backend, ctx.x_shape, ctx.dense = tuple(block_shape), backend, x.shape, dense
        ctx.has_bias, ctx.mask_dtype = bias is not None, mask.dtype
        return y.view(*x.shape[:-1], weight.shape[0])

    @staticmethod
    def backward(ctx, grad_out):
        x2d, w, kmask = ctx.saved_tensors
        if torch.is_grad_enabled():
            raise RuntimeError(f"{OP_NAME}: double backward (create_graph=True) is not supported by the fused "
                               "kernels; use backend='reference' for it")
        need_x, need_w, need_m, need_b = ctx.needs_input_grad[:4]
        dy2d = grad_out.reshape(math.prod(grad_out.shape[:-1]), grad_out.shape[-1])
        if not dy2d.is_contiguous():
            dy2d = dy2d.contiguous()
        grad_x = grad_w = grad_m = grad_b = None
        if need_x:
            grad_x = _ops().grad_input(dy2d, w, kmask, list(ctx.block_shape), ctx.dense,
                                       ctx.backend).view(ctx.x_shape)
        need_b = bool(need_b and ctx.has_bias)
        if need_w or need_m:
            gw, gm, gb = _ops().grad_weight(dy2d, x2d, w, kmask, list(ctx.block_shape), bool(need_m), need_b,
                                            ctx.backend)
            grad_w = gw if need_w else None
            grad_m = gm.to(ctx.mask_dtype) if need_m else None
            grad_b = gb if need_b else None
        elif need_b:
            grad_b = _bias_grad(dy2d)
        return grad_x, grad_w, grad_m, grad_b, None, None, None


# ----------------------------------------------------------------------------------------------------------
# Functional entry point
# ----------------------------------------------------------------------------------------------------------
def masked_linear(x: torch.Tensor, weight: torch.Tensor, mask: torch.Tensor, bias: Optional[torch.Tensor] = None,
                  block_shape: Sequence[int] = (1, 1), backend: Optional[str] = None,
                  density: Optional[float] = None) -> torch.Tensor:
    """``x @ (weight * expand(mask)).T + bias`` where ``mask`` holds one value per ``block_shape`` block of
    ``weight``, shape ``(out // bo, in // bi)``: ``(1, 1)`` one per weight, ``(1, in)`` whole output rows,
    ``(out, 1)`` whole input columns. ``mask`` is bool or float (gradients reach a float mask:
    ``blocksum(dY^T X * weight)``). ``x`` is ``(..., in)``; float32, bfloat16, float16 (float32 accumulation),
    float64 on the ``cpu`` and ``reference`` backends. Pruned blocks are skipped by the block-skipping kernels
    (sparse block-aligned masks; others take ``W * M`` and a dense product, measured faster there).

    ``density``: the fraction of mask blocks expected to be nonzero, if the caller knows it (``MaskedLinear``
    passes its own for ``topK`` and ``magnitude``, a measured one for the threshold methods and ``l0``). A hint
    for the GPU path only, read on the host so the call never waits for the device: near-dense masks then go to
    cuBLAS (``bermo.kernels.masked_linear_paths``). The paths agree up to rounding for finite weights.

    Under ``torch.autocast`` x, weight and bias are cast as ``F.linear`` casts them (``bermo.ops.autocast``)."""
    if isinstance(x, torch.Tensor):
        x, weight, bias = autocast_inputs(x.device.type, x, weight, bias)
    bo, bi = _validate(x, weight, mask, bias, block_shape)
    if density is not None and not (isinstance(density, (int, float)) and not isinstance(density, bool)
                                    and 0.0 <= density <= 1.0):
        raise ValueError(f"{OP_NAME}: density (the expected kept fraction, a hint) must be a number in [0, 1] or "
                         f"None; got {density!r}")
    name = backends.resolve_no_float64_triton(backend, x, OP_NAME)
    if name == "reference":
        return reference_masked_linear(x, weight, mask, bias, (bo, bi))
    dense = name == "triton" and uses_dense_path((bo, bi), density)
    return MaskedLinearFunction.apply(x, weight, mask, bias, (bo, bi), name, dense)
