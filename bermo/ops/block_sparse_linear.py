"""The block-sparse linear ``x @ W^T + bias`` as an op, ``W`` given in BSR form: validation, backend dispatch,
the custom op around the kernels and the autograd Function.

``W`` is the dense (N, K) = (out_features, in_features) matrix whose kept ``(bo, bi)`` blocks are listed by

* ``crow_indices`` (N // bo + 1,): block row ``i`` owns entries ``crow[i] .. crow[i + 1]``;
* ``col_indices`` (nnz,): each entry's block column, strictly increasing within a block row;
* ``values`` (nnz, bo, bi): each entry's block.

(torch's own BSR layout: ``W.to_sparse_bsr((bo, bi))`` gives the three tensors.) Every other block is zero.

The forward kernels (``triton``, ``cpu``) compute only the kept blocks. This is an inference op: its backward
(gradients to ``x``, ``values`` and ``bias``) goes through the dense formula, ``W`` rebuilt by ``to_dense`` and
dense products, on every backend; that is correct but not faster than a dense layer. The ``reference`` backend is
the dense composite ``F.linear(x, to_dense(...), bias)`` for both passes.

Validation reads the index tensors' contents (monotone row pointers, column range and order): one host read per
call, a synchronisation on a GPU. ``bermo.nn.BlockSparseLinear`` checks its indices once and skips that read.
"""
from __future__ import annotations

import math

from typing import Optional, Tuple

import torch
import torch.nn.functional as F

from .. import backends
from ..kernels.dtypes import SUPPORTED_DTYPES, acc_dtype
from .autocast import autocast_inputs
from .custom_ops import CustomOps

OP_NAME = "block_sparse_linear"
INDEX_DTYPES = (torch.int32, torch.int64)


# ----------------------------------------------------------------------------------------------------------
# Validation
# ----------------------------------------------------------------------------------------------------------
def check_structure(crow_indices, col_indices, values, out_features: Optional[int] = None,
                    in_features: Optional[int] = None, what: str = OP_NAME) -> Tuple[int, int, int, int]:
    """Types, dtypes, shapes and devices of the three BSR tensors (not their contents); returns
    ``(out_features, in_features, bo, bi)``. ``in_features`` None: not checked, returned as -1."""
    for name, t in (("crow_indices", crow_indices), ("col_indices", col_indices), ("values", values)):
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"{what}: {name} must be a torch.Tensor; got {type(t).__name__}")
    for name, t in (("crow_indices", crow_indices), ("col_indices", col_indices)):
        if t.dtype not in INDEX_DTYPES:
            raise TypeError(f"{what}: {name} must be int32 or int64; got {t.dtype}")
        if t.dim() != 1:
            raise ValueError(f"{what}: {name} must be 1-D; got shape {tuple(t.shape)}")
    if values.dim() != 3:
        raise ValueError(f"{what}: values must be 3-D (nnz, bo, bi), one (bo, bi) block per kept block; got shape "
                         f"{tuple(values.shape)}")
    if values.dtype not in SUPPORTED_DTYPES:
        raise TypeError(f"{what}: values must be float16, bfloat16, float32 or float64; got {values.dtype}")
    nnz, bo, bi = values.shape
    if bo < 1 or bi < 1:
        raise ValueError(f"{what}: values' block shape (bo, bi) = {(bo, bi)} must be positive")
    if col_indices.numel() != nnz:
        raise ValueError(f"{what}: col_indices has {col_indices.numel()} entries but values has {nnz} blocks")
    if crow_indices.numel() < 1:
        raise ValueError(f"{what}: crow_indices must have N // bo + 1 >= 1 entries; got none")
    nbr = crow_indices.numel() - 1
    if out_features is None:
        out_features = nbr * bo
    elif int(out_features) != nbr * bo:
        raise ValueError(f"{what}: out_features = {out_features} but crow_indices has {nbr} block rows of bo = {bo} "
                         f"rows ({nbr * bo} rows): crow_indices must have out_features // bo + 1 entries")
    if in_features is not None and int(in_features) % bi:
        raise ValueError(f"{what}: the block shape {(bo, bi)} does not divide in_features = {in_features}: "
                         "in_features must be a multiple of bi")
    for name, t in (("col_indices", col_indices), ("values", values)):
        if t.device != crow_indices.device:
            raise ValueError(f"{what}: {name} is on {t.device} but crow_indices is on {crow_indices.device}")
    return int(out_features), -1 if in_features is None else int(in_features), bo, bi


def check_indices(crow_indices: torch.Tensor, col_indices: torch.Tensor, n_block_cols: int,
                  what: str = OP_NAME) -> None:
    """The indices' contents: ``crow[0] == 0``, ``crow`` non-decreasing, ``crow[-1] == nnz``, every column in
    ``[0, n_block_cols)`` and strictly increasing within its block row. One host read when they are valid.
    Indices on the meta device hold no values: nothing to check (a module built there checks them at its first
    call after ``to_empty`` and a load)."""
    if crow_indices.is_meta or col_indices.is_meta:
        return
    nnz = col_indices.numel()
    crow = crow_indices.to(torch.int64)
    col = col_indices.to(torch.int64)
    d = crow.diff()
    false = torch.zeros((), dtype=torch.bool, device=crow.device)
    # same_row[k - 1]: entries k - 1 and k lie in one block row (no row starts at k), for k in 1 .. nnz - 1
    starts = torch.zeros(nnz + 1, dtype=torch.bool, device=crow.device)
    starts[crow.clamp(0, nnz)] = True
    same_row = ~starts[1:nnz]
    unordered = (col[1:] <= col[:-1]) & same_row
    problems = torch.stack([
        crow[0] != 0,
        (d < 0).any() if d.numel() else false,
        crow[-1] != nnz,
        ((col < 0) | (col >= n_block_cols)).any() if nnz else false,
        unordered.any() if nnz > 1 else false,
    ])
    bad = problems.tolist()  # the one host read
    if not any(bad):
        return
    if bad[0]:
        raise ValueError(f"{what}: crow_indices must start at 0; got {int(crow[0])}")
    if bad[1]:
        i = int(torch.nonzero(d < 0)[0])
        raise ValueError(f"{what}: crow_indices must be non-decreasing; crow_indices[{i + 1}] = {int(crow[i + 1])} < "
                         f"crow_indices[{i}] = {int(crow[i])}")
    if bad[2]:
        raise ValueError(f"{what}: crow_indices must end at nnz = {nnz} (the number of blocks in values); got "
                         f"{int(crow[-1])}")
    if bad[3]:
        k = int(torch.nonzero((col < 0) | (col >= n_block_cols))[0])
        raise ValueError(f"{what}: col_indices must lie in [0, in_features // bi) = [0, {n_block_cols}); "
                         f"col_indices[{k}] = {int(col[k])}")
    k = int(torch.nonzero(unordered)[0]) + 1
    row = int(torch.searchsorted(crow, torch.tensor(k, device=crow.device), right=True)) - 1
    raise ValueError(f"{what}: col_indices must be strictly increasing within a block row (no duplicate blocks); "
                     f"block row {row} has col_indices[{k - 1}] = {int(col[k - 1])} then "
                     f"col_indices[{k}] = {int(col[k])}")


def _validate(x, crow_indices, col_indices, values, bias, out_features, in_features, check_contents=True):
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{OP_NAME}: x must be a torch.Tensor; got {type(x).__name__}")
    if bias is not None and not isinstance(bias, torch.Tensor):
        raise TypeError(f"{OP_NAME}: bias must be a torch.Tensor or None; got {type(bias).__name__}")
    if x.dim() < 1:
        raise ValueError(f"{OP_NAME}: x must have at least one dimension (..., in_features)")
    K = x.shape[-1]
    if in_features is not None and int(in_features) != K:
        raise ValueError(f"{OP_NAME}: x's last dimension must be in_features = {in_features}; got shape "
                         f"{tuple(x.shape)}")
    N, K, bo, bi = check_structure(crow_indices, col_indices, values, out_features, K)
    if x.dtype not in SUPPORTED_DTYPES or values.dtype != x.dtype:
        raise TypeError(f"{OP_NAME}: x and values must share one of float16, bfloat16, float32, float64; got "
                        f"{x.dtype} and {values.dtype}")
    if bias is not None and (tuple(bias.shape) != (N,) or bias.dtype != x.dtype):
        raise ValueError(f"{OP_NAME}: bias must have shape ({N},) and x's dtype {x.dtype}; got "
                         f"{tuple(bias.shape)} {bias.dtype}")
    for name, t in (("crow_indices", crow_indices), ("col_indices", col_indices), ("values", values),
                    ("bias", bias)):
        if t is not None and t.device != x.device:
            raise ValueError(f"{OP_NAME}: {name} is on {t.device} but x is on {x.device}")
    if check_contents and not torch.compiler.is_compiling():
        check_indices(crow_indices, col_indices, K // bi)
    return N, K, bo, bi


# ----------------------------------------------------------------------------------------------------------
# The dense formula (the reference backend, and every backend's backward)
# ----------------------------------------------------------------------------------------------------------
def row_indices(crow_indices: torch.Tensor, nnz: int) -> torch.Tensor:
    """Each kept block's block row (int64, (nnz,))."""
    crow = crow_indices.to(torch.int64)
    n_rows = crow.numel() - 1
    return torch.repeat_interleave(torch.arange(n_rows, device=crow.device), crow.diff(), output_size=nnz)


def to_dense(crow_indices: torch.Tensor, col_indices: torch.Tensor, values: torch.Tensor, out_features: int,
             in_features: int) -> torch.Tensor:
    """The dense (out_features, in_features) ``W``, zero outside the kept blocks; differentiable in ``values``."""
    nnz, bo, bi = values.shape
    nbr, nbc = out_features // bo, in_features // bi
    flat = row_indices(crow_indices, nnz) * nbc + col_indices.to(torch.int64)
    blocks = values.new_zeros((nbr * nbc, bo, bi)).index_put((flat,), values)
    return blocks.view(nbr, nbc, bo, bi).transpose(1, 2).reshape(out_features, in_features)


def reference_block_sparse_linear(x, crow_indices, col_indices, values, bias, out_features, in_features):
    """``F.linear(x, to_dense(...), bias)``: the dense composite (autograd gives every gradient)."""
    return F.linear(x, to_dense(crow_indices, col_indices, values, out_features, in_features), bias)


# ----------------------------------------------------------------------------------------------------------
# The forward kernels as a custom op (opaque to torch.compile, with a fake implementation)
# ----------------------------------------------------------------------------------------------------------
def _launchers(backend: str):
    if backend == "triton":
        from ..kernels import block_sparse_linear_triton as launchers
    else:
        from ..kernels import block_sparse_linear_cpu as launchers
    return launchers


def _forward(x2d: torch.Tensor, crow_indices: torch.Tensor, col_indices: torch.Tensor, values: torch.Tensor,
             bias: torch.Tensor, out_features: int, backend: str) -> torch.Tensor:
    """``bias`` is an empty tensor for none (a custom op's schema takes no optional tensors quietly)."""
    return _launchers(backend).forward(x2d, crow_indices, col_indices, values, bias if bias.numel() else None,
                                       out_features)


def _forward_fake(x2d, crow_indices, col_indices, values, bias, out_features, backend):
    return x2d.new_empty((x2d.shape[0], out_features))


_ops = CustomOps("block_sparse_linear", {"forward": (_forward, _forward_fake)})


def _kernel_forward(x, crow_indices, col_indices, values, bias, out_features, backend):
    """``(x as a contiguous 2-D tensor, y shaped like x with out_features last)`` through the kernels' custom op."""
    x2d = x.reshape(math.prod(x.shape[:-1]), x.shape[-1])  # (-1 is ambiguous for 0 features)
    if not x2d.is_contiguous():
        x2d = x2d.contiguous()
    b = x.new_empty(0) if bias is None else bias.contiguous()  # (the kernels read it with unit stride)
    y = _ops().forward(x2d, crow_indices, col_indices, values.contiguous(), b, out_features, backend)
    return x2d, y.view(*x.shape[:-1], out_features)


# ----------------------------------------------------------------------------------------------------------
# Autograd
# ----------------------------------------------------------------------------------------------------------
class BlockSparseLinearFunction(torch.autograd.Function):
    """``forward(x, crow, col, values, bias, out_features, backend)``: the kernels forward; the backward by
    the dense formula (``W = to_dense(...)``): ``grad x = dY @ W``, ``grad values`` = the kept blocks of
    ``dY^T X``, ``grad bias = sum of dY over tokens``."""

    @staticmethod
    def forward(ctx, x, crow_indices, col_indices, values, bias, out_features, backend):
        x2d, y = _kernel_forward(x, crow_indices, col_indices, values, bias, out_features, backend)
        ctx.save_for_backward(x2d, crow_indices, col_indices, values)
        ctx.out_features, ctx.x_shape, ctx.has_bias = out_features, x.shape, bias is not None
        return y

    @staticmethod
    def backward(ctx, grad_out):
        x2d, crow, col, values = ctx.saved_tensors
        if torch.is_grad_enabled():
            raise RuntimeError(f"{OP_NAME}: double backward (create_graph=True) is not supported; use "
                               "backend='reference' for it")
        need_x, _, _, need_v, need_b = ctx.needs_input_grad[:5]
        N, K = ctx.out_features, x2d.shape[1]
        nnz, bo, bi = values.shape
        acc = acc_dtype(x2d.dtype)
        dy2d = grad_out.reshape(math.prod(grad_out.shape[:-1]), N)
        grad_x = grad_v = grad_b = None
        if need_x:
            w = to_dense(crow, col, values, N, K).to(acc)
            grad_x = (dy2d.to(acc) @ w).to(x2d.dtype).view(ctx.x_shape)
        if need_v:
            g = dy2d.to(acc).t() @ x2d.to(acc)  # (N, K)
            blocks = g.view(N // bo, bo, K // bi, bi).transpose(1, 2)
            grad_v = blocks[row_indices(crow, nnz), col.to(torch.int64)].to(values.dtype)
        if need_b and ctx.has_bias:
            grad_b = dy2d.sum(0, dtype=acc).to(dy2d.dtype)
        return grad_x, None, None, grad_v, grad_b, None, None


# ----------------------------------------------------------------------------------------------------------
# Functional entry point
# ----------------------------------------------------------------------------------------------------------
def _dispatch(x, crow_indices, col_indices, values, bias, out_features, in_features, backend, check_contents):
    if isinstance(x, torch.Tensor):  # under torch.autocast: cast as F.linear does (bermo.ops.autocast)
        x, values, bias = autocast_inputs(x.device.type, x, values, bias)
    N, K, bo, bi = _validate(x, crow_indices, col_indices, values, bias, out_features, in_features, check_contents)
    name = backends.resolve_no_float64_triton(backend, x, OP_NAME)
    if name == "reference":
        return reference_block_sparse_linear(x, crow_indices, col_indices, values, bias, N, K)
    if not torch.is_grad_enabled() or not (x.requires_grad or values.requires_grad
                                           or (bias is not None and bias.requires_grad)):
        # inference: no graph to record, so the kernels' op directly (the autograd Function's own cost, ~10 us
        # of host time per call, is most of what an eager call costs beside the launch)
        return _kernel_forward(x, crow_indices, col_indices, values, bias, N, name)[1]
    return BlockSparseLinearFunction.apply(x, crow_indices, col_indices, values, bias, N, name)


def block_sparse_linear(x: torch.Tensor, crow_indices: torch.Tensor, col_indices: torch.Tensor,
                        values: torch.Tensor, bias: Optional[torch.Tensor] = None, out_features: Optional[int] = None,
                        in_features: Optional[int] = None, backend: Optional[str] = None) -> torch.Tensor:
    """``x @ W^T + bias`` with ``W`` (out_features, in_features) given by its kept ``(bo, bi)`` blocks in BSR
    form (see the module doc): ``crow_indices`` (out_features // bo + 1,), ``col_indices`` (nnz,), int32 or
    int64; ``values`` (nnz, bo, bi). ``out_features`` defaults to ``(len(crow_indices) - 1) * bo`` and
    ``in_features`` to ``x.shape[-1]`` (given, they are checked). ``x`` is ``(..., in_features)``; float32,
    bfloat16, float16 (float32 accumulation), float64 on the ``cpu`` and ``reference`` backends. The kernels
    compute only the kept blocks; gradients go through the dense formula."""
    return _dispatch(x, crow_indices, col_indices, values, bias, out_features, in_features, backend, True)
