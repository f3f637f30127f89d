"""CPU launchers for the masked linear layer (movement pruning): ``y = x @ (W * expand(M)).T + b``.

``W`` is (N, K) = (out_features, in_features) and the mask ``M`` is compact, (N // bo, K // bi) for a block
shape (bo, bi): each mask value covers a bo x bi block of ``W`` ((1, 1): one value per weight; (1, K): whole
output rows; (N, 1): whole input columns). The mask is a float tensor in the accumulation dtype (float32 for
float32 / bfloat16 / float16, float64 for float64), usually 0/1 but any value in [0, 1] works (L0 masks).

The three functions take 2-D contiguous CPU tensors (the op layer flattens the leading dimensions):

- ``forward(x2d, weight, mask, bias, block_shape) -> y2d`` (T, N) in x's dtype;
- ``grad_input(dy2d, weight, mask, block_shape) -> dx2d`` (T, K) = dy @ (W * expand(M));
- ``grad_weight(dy2d, x2d, weight, mask, block_shape, need_mask_grad) -> (grad_weight, grad_mask)`` with
  G = dy^T @ x: grad_weight = G * expand(M) in weight's dtype, grad_mask = blocksum(G * W) in the accumulation
  dtype (None unless need_mask_grad). Without the mask gradient, G is computed on the kept blocks only.

Every result is accumulated in the accumulation dtype and rounded once (the bias is added before that
rounding). Results are bitwise identical from call to call and for any thread count: each value is summed by
one task in a fixed order, and the dense products are cut into tiles fixed by the shape (``ml_mm`` in the C++
source) rather than handed to a multi-threaded BLAS call, which may split its sums by the thread count.

Which path runs (``plan``), from the mask as the host sees it (one count of its nonzeros):

- ``"blocks"``: block sides both multiples of 16 (16, 32, 64 and their multiples) and the fraction of kept
  (nonzero) mask blocks at most ``MAX_BLOCK_DENSITY[function]``: the C++ block-sparse kernels, which never read a
  zero block's weights and do no FLOPs for it.
- ``"rows"`` / ``"columns"``: whole rows (bi == K) or whole columns (bo == N), kept fraction at most
  ``MAX_GATHER_DENSITY``: the kept rows / columns are gathered and a smaller dense product runs.
- ``"dense"``: everything else (unstructured (1, 1) masks, other block sides, high densities):
  ``W * expand(M)`` then one dense product, the eager computation.

The thresholds come from measuring each function against the dense path (float32, 1024 tokens, FFN shapes
3072 x 768 and 768 x 3072, 32 x 32 blocks, on the project's 2-core AVX-512 machine; see the numbers below).
"""
from __future__ import annotations

from typing import Optional, Sequence, Tuple

import torch

from .cpu_extension import extension
from .dtypes import SUPPORTED_DTYPES, acc_dtype
from .layout import output_like, workspace

# Highest kept-block fraction at which the block kernels beat the dense path (measured, see the module doc).
MAX_BLOCK_DENSITY = {"forward": 0.5, "grad_input": 0.5, "grad_weight": 0.4}
# Highest kept fraction at which gathering whole rows / columns beats the dense path.
MAX_GATHER_DENSITY = 0.75

_EMPTY = {}


def _empty(dtype: torch.dtype) -> torch.Tensor:
    t = _EMPTY.get(dtype)
    if t is None:
        t = _EMPTY[dtype] = torch.empty(0, dtype=dtype)
    return t


def _blocks(weight: torch.Tensor, block_shape: Sequence[int]) -> Tuple[int, int]:
    bo, bi = (int(s) for s in block_shape)
    N, K = weight.shape
    if bo <= 0 or bi <= 0 or N % bo or K % bi:
        raise ValueError(f"masked_linear: block shape {(bo, bi)} does not tile the weight {tuple(weight.shape)}")
    return bo, bi


def _check(weight: torch.Tensor, mask: torch.Tensor, block_shape, *acts: torch.Tensor):
    if weight.dim() != 2:
        raise ValueError(f"masked_linear: weight must be 2-D, got shape {tuple(weight.shape)}")
    if weight.dtype not in SUPPORTED_DTYPES:
        raise TypeError(f"masked_linear: unsupported dtype {weight.dtype}")
    bo, bi = _blocks(weight, block_shape)
    N, K = weight.shape
    if tuple(mask.shape) != (N // bo, K // bi):
        raise ValueError(f"masked_linear: mask shape {tuple(mask.shape)} != {(N // bo, K // bi)} for weight "
                         f"{tuple(weight.shape)} and block shape {(bo, bi)}")
    for a in acts:
        if a.dim() != 2 or a.dtype != weight.dtype or a.device.type != "cpu":
            raise ValueError("masked_linear: activations must be 2-D CPU tensors in the weight's dtype")
    return bo, bi


def _prep(weight: torch.Tensor, mask: torch.Tensor):
    acc = acc_dtype(weight.dtype)
    return weight.detach().contiguous(), mask.detach().to(acc).contiguous(), acc


def kept_fraction(mask: torch.Tensor) -> float:
    return int(torch.count_nonzero(mask)) / mask.numel() if mask.numel() else 0.0


def plan(function: str, weight_shape, block_shape, mask: torch.Tensor) -> str:
    """The path ``function`` ("forward", "grad_input", "grad_weight") takes for this mask: "blocks", "rows",
    "columns" or "dense" (see the module doc). ``grad_weight`` with the mask gradient always computes the dense
    G = dy^T @ x (the mask gradient needs it everywhere), so its plan is only about need_mask_grad=False."""
    N, K = weight_shape
    bo, bi = (int(s) for s in block_shape)
    density = kept_fraction(mask)
    if bi == K or bo == N:
        return ("rows" if bi == K else "columns") if density <= MAX_GATHER_DENSITY else "dense"
    if bo % 16 == 0 and bi % 16 == 0 and density <= MAX_BLOCK_DENSITY[function]:
        return "blocks"
    return "dense"


def _masked_weight(weight: torch.Tensor, mask: torch.Tensor, bo: int, bi: int, acc: torch.dtype) -> torch.Tensor:
    """W * expand(M) in the accumulation dtype, one broadcast multiply."""
    N, K = weight.shape
    w = weight.to(acc).view(N // bo, bo, K // bi, bi)
    return (w * mask.view(N // bo, 1, K // bi, 1)).view(N, K)


def _kept_index(mask_line: torch.Tensor, side: int) -> Tuple[torch.Tensor, torch.Tensor]:
    """(indices of the kept rows / columns, their mask values), one entry per row / column of W."""
    blocks = torch.nonzero(mask_line).squeeze(1)
    idx = (blocks.unsqueeze(1) * side + torch.arange(side)).reshape(-1)
    return idx, mask_line.index_select(0, blocks).repeat_interleave(side)


def _mm(a: torch.Tensor, b: torch.Tensor, out: torch.Tensor, bias: Optional[torch.Tensor] = None) -> torch.Tensor:
    extension().ml_mm(a, b, _empty(out.dtype) if bias is None else bias, out)
    return out


def _acc_out(out: torch.Tensor, acc: torch.dtype) -> torch.Tensor:
    """Where a dense product in the accumulation dtype goes: ``out`` itself when it has that dtype."""
    return out if out.dtype == acc else torch.empty(out.shape, dtype=acc)


def forward(x2d: torch.Tensor, weight: torch.Tensor, mask: torch.Tensor, bias: Optional[torch.Tensor],
            block_shape) -> torch.Tensor:
    bo, bi = _check(weight, mask, block_shape, x2d)
    weight, mask, acc = _prep(weight, mask)
    x2d = x2d.detach().contiguous()
    T, K = x2d.shape
    N = weight.shape[0]
    if K != weight.shape[1]:
        raise ValueError(f"masked_linear: input has {K} features, weight expects {weight.shape[1]}")
    b = None if bias is None else bias.detach().to(acc).contiguous()
    if b is not None and tuple(b.shape) != (N,):
        raise ValueError(f"masked_linear: bias shape {tuple(b.shape)} != {(N,)}")
    out = output_like(x2d, (T, N))
    if T == 0:
        return out
    path = plan("forward", weight.shape, (bo, bi), mask)
    if path == "blocks":
        extension().ml_forward(x2d, weight, mask, _empty(acc) if b is None else b, bo, bi, out)
    elif path == "rows":
        idx, m = _kept_index(mask[:, 0], bo)
        wk = weight.index_select(0, idx).to(acc) * m.unsqueeze(1)
        yk = _mm(x2d.to(acc), wk.t(), torch.empty(T, idx.numel(), dtype=acc),
                 None if b is None else b.index_select(0, idx))
        if b is None:
            out.zero_()
        else:
            out.copy_(b.unsqueeze(0).expand(T, N))
        out.index_copy_(1, idx, yk.to(out.dtype))
    elif path == "columns":
        idx, m = _kept_index(mask[0], bi)
        wk = weight.index_select(1, idx).to(acc) * m.unsqueeze(0)
        y = _mm(x2d.index_select(1, idx).to(acc), wk.t(), _acc_out(out, acc), b)
        if y is not out:
            out.copy_(y)
    else:
        y = _mm(x2d.to(acc), _masked_weight(weight, mask, bo, bi, acc).t(), _acc_out(out, acc), b)
        if y is not out:
            out.copy_(y)
    return out


def grad_input(dy2d: torch.Tensor, weight: torch.Tensor, mask: torch.Tensor, block_shape) -> torch.Tensor:
    bo, bi = _check(weight, mask, block_shape, dy2d)
    weight, mask, acc = _prep(weight, mask)
    dy2d = dy2d.detach().contiguous()
    T, N = dy2d.shape
    K = weight.shape[1]
    if N != weight.shape[0]:
        raise ValueError(f"masked_linear: gradient has {N} features, weight has {weight.shape[0]} outputs")
    out = output_like(dy2d, (T, K))
    if T == 0:
        return out
    path = plan("grad_input", weight.shape, (bo, bi), mask)
    if path == "blocks":
        extension().ml_grad_input(dy2d, weight, mask, bo, bi, out)
    elif path == "rows":
        idx, m = _kept_index(mask[:, 0], bo)
        wk = weight.index_select(0, idx).to(acc) * m.unsqueeze(1)
        y = _mm(dy2d.index_select(1, idx).to(acc), wk, _acc_out(out, acc))
        if y is not out:
            out.copy_(y)
    elif path == "columns":
        idx, m = _kept_index(mask[0], bi)
        wk = weight.index_select(1, idx).to(acc) * m.unsqueeze(0)
        yk = _mm(dy2d.to(acc), wk, torch.empty(T, idx.numel(), dtype=acc))
        out.zero_()
        out.index_copy_(1, idx, yk.to(out.dtype))
    else:
        y = _mm(dy2d.to(acc), _masked_weight(weight, mask, bo, bi, acc), _acc_out(out, acc))
        if y is not out:
            out.copy_(y)
    return out


def grad_weight(dy2d: torch.Tensor, x2d: torch.Tensor, weight: torch.Tensor, mask: torch.Tensor, block_shape,
                need_mask_grad: bool) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
    bo, bi = _check(weight, mask, block_shape, dy2d, x2d)
    weight, mask, acc = _prep(weight, mask)
    dy2d = dy2d.detach().contiguous()
    x2d = x2d.detach().contiguous()
    N, K = weight.shape
    if dy2d.shape[1] != N or x2d.shape[1] != K or dy2d.shape[0] != x2d.shape[0]:
        raise ValueError(f"masked_linear: gradient {tuple(dy2d.shape)} and input {tuple(x2d.shape)} do not fit "
                         f"the weight {tuple(weight.shape)}")
    gw = output_like(weight)
    gm = output_like(mask) if need_mask_grad else None
    dya, xa = dy2d.to(acc), x2d.to(acc)
    path = "dense" if need_mask_grad else plan("grad_weight", weight.shape, (bo, bi), mask)
    if path == "blocks":
        extension().ml_grad_weight_kept(dya.contiguous(), xa.contiguous(), mask, bo, bi, gw)
    elif path == "rows":
        idx, m = _kept_index(mask[:, 0], bo)
        gk = _mm(dya.index_select(1, idx).t(), xa, torch.empty(idx.numel(), K, dtype=acc))
        gw.zero_()
        gw.index_copy_(0, idx, (gk * m.unsqueeze(1)).to(gw.dtype))
    elif path == "columns":
        idx, m = _kept_index(mask[0], bi)
        gk = _mm(dya.t(), xa.index_select(1, idx), torch.empty(N, idx.numel(), dtype=acc))
        gw.zero_()
        gw.index_copy_(1, idx, (gk * m.unsqueeze(0)).to(gw.dtype))
    else:
        g = _mm(dya.t(), xa, workspace((N, K), acc, "cpu"))
        extension().ml_grad_epilogue(g, weight, mask, bo, bi, gw, _empty(acc) if gm is None else gm)
    return gw, gm
