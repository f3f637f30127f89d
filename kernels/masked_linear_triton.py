"""Triton kernels for the masked linear ``y = x @ (W * expand(M)).T + b`` and its backward.

``W`` is (N, K) = (out, in); ``M`` the compact block mask, one value per (bo, bi) block, shape (N // bo, K // bi).
Two kernels do all the work:

* ``masked_mm_kernel``: ``C[m, j] = sum_t A[m, t] * (B * M)[t, j] (+ bias[j])`` with B read through strides,
  so the same kernel is the forward (A = x, B = W^T: j = output feature, t = input feature) and the input
  gradient (A = dY, B = W: j = input feature, t = output feature). Each program owns a (BM, BJ) tile of C and
  loops only over the t-tiles its list says are kept: the lists (``tile_lists``) are built on the device from
  the mask at each call (a summed-area table of the kept blocks, then a stable argsort that puts each tile
  row's kept tiles first), so there is no host sync and no materialised ``W * M``. Within a kept tile the mask
  is applied in registers: one scalar per tile when the tile lies inside one mask block (``UNIFORM``), else
  gathered per element.
* ``masked_grad_weight_kernel``: ``G = dY^T X`` one (BN, BK) tile per program, reduced over the tokens, whose
  epilogue writes ``grad W = G * M`` and, for a float mask, the block sums of ``G * W`` at the granularity
  ``(gcd(bo, BN), gcd(bi, BK))`` into a partial buffer the host folds into ``(N // bo, K // bi)`` in a fixed
  order (deterministic, no atomics). With ``SKIP_PRUNED`` (the mask needs no gradient) a pruned tile only
  writes zeros.

Accumulation is float32 (``tl.dot`` with ``ieee`` precision for float32 inputs, as PyTorch's default float32
matmul); float16/bfloat16 operands go to the tensor cores.
"""
from __future__ import annotations

import functools
import math
from typing import Optional, Tuple

import torch
import triton
import triton.language as tl

from .dtypes import check_interpreter_mode, triton_dtype, triton_interpreting


@triton.jit
def _dot(a, b, IEEE: tl.constexpr, DOT_F32: tl.constexpr):
    """``a @ b`` accumulated in float32. ``DOT_F32`` upcasts the operands first: only under the Triton
    interpreter, whose bfloat16 ``tl.dot`` returns garbage (Triton 3.9); compiled kernels keep 16-bit operands."""
    if DOT_F32:
        return tl.dot(a.to(tl.float32), b.to(tl.float32), input_precision="ieee")
    elif IEEE:
        return tl.dot(a, b, input_precision="ieee")
    else:
        return tl.dot(a, b)


@triton.jit
def masked_mm_kernel(a_ptr, w_ptr, mask_ptr, bias_ptr, c_ptr, order_ptr, count_ptr,
                     M, J, T, K, mask_cols, block_t, block_j, n_t_tiles,
                     TRANS: tl.constexpr, HAS_BIAS: tl.constexpr, UNIFORM: tl.constexpr, IEEE: tl.constexpr,
                     DOT_F32: tl.constexpr, BM: tl.constexpr, BJ: tl.constexpr, BT: tl.constexpr):
    """``C[m, j] = sum_t A[m, t] * B[t, j]`` over the kept t-tiles of tile row ``j``, with ``B = (W * M)^T``
    (forward: j over W's rows) or, when ``TRANS``, ``B = W * M`` (input gradient: j over W's columns). ``A`` is
    (M, T) and ``C`` (M, J), both contiguous; ``W`` is contiguous with ``K`` columns, ``mask`` has
    ``mask_cols`` columns."""
    pid_m = tl.program_id(0)
    pid_j = tl.program_id(1)
    dtype = c_ptr.dtype.element_ty
    rm = pid_m.to(tl.int64) * BM + tl.arange(0, BM)
    rj = pid_j.to(tl.int64) * BJ + tl.arange(0, BJ)
    m_ok = rm < M
    j_ok = rj < J
    acc = tl.zeros([BM, BJ], dtype=tl.float32)
    n_kept = tl.load(count_ptr + pid_j)
    for i in range(n_kept):
        tt = tl.load(order_ptr + pid_j.to(tl.int64) * n_t_tiles + i).to(tl.int64)
        rt = tt * BT + tl.arange(0, BT)
        t_ok = rt < T
        tile_ok = t_ok[:, None] & j_ok[None, :]
        a = tl.load(a_ptr + rm[:, None] * T + rt[None, :], mask=m_ok[:, None] & t_ok[None, :], other=0.0)
        if TRANS:  # B[t, j] = W[t, j]
            b = tl.load(w_ptr + rt[:, None] * K + rj[None, :], mask=tile_ok, other=0.0)
        else:      # B[t, j] = W[j, t]
            b = tl.load(w_ptr + rj[None, :] * K + rt[:, None], mask=tile_ok, other=0.0)
        if UNIFORM:
            if TRANS:
                scale = tl.load(mask_ptr + (tt * BT // block_t) * mask_cols + (pid_j * BJ) // block_j)
            else:
                scale = tl.load(mask_ptr + ((pid_j * BJ) // block_j) * mask_cols + tt * BT // block_t)
            acc += scale * _dot(a, b, IEEE, DOT_F32)
        else:
            if TRANS:
                mt = tl.load(mask_ptr + (rt // block_t)[:, None] * mask_cols + (rj // block_j)[None, :],
                             mask=tile_ok, other=0.0)
            else:
                mt = tl.load(mask_ptr + (rj // block_j)[None, :] * mask_cols + (rt // block_t)[:, None],
                             mask=tile_ok, other=0.0)
            b = (b.to(tl.float32) * mt).to(b.dtype)
            acc += _dot(a, b, IEEE, DOT_F32)
    if HAS_BIAS:
        acc += tl.load(bias_ptr + rj, mask=j_ok, other=0.0).to(tl.float32)[None, :]
    tl.store(c_ptr + rm[:, None] * J + rj[None, :], acc.to(dtype), mask=m_ok[:, None] & j_ok[None, :])


@triton.jit
def masked_grad_weight_kernel(dy_ptr, x_ptr, w_ptr, mask_ptr, keep_ptr, gw_ptr, partial_ptr,
                              M, N, K, block_n, block_k, n_k_tiles, partial_cols,
                              NEED_MASK_GRAD: tl.constexpr, SKIP_PRUNED: tl.constexpr, UNIFORM: tl.constexpr,
                              IEEE: tl.constexpr, DOT_F32: tl.constexpr, BM: tl.constexpr, BN: tl.constexpr,
                              BK: tl.constexpr, GBN: tl.constexpr, GBK: tl.constexpr):
    pid_n = tl.program_id(0)
    pid_k = tl.program_id(1)
    rn = pid_n.to(tl.int64) * BN + tl.arange(0, BN)
    rk = pid_k.to(tl.int64) * BK + tl.arange(0, BK)
    n_ok = rn < N
    k_ok = rk < K
    tile_ok = n_ok[:, None] & k_ok[None, :]
    gw_dtype = gw_ptr.dtype.element_ty
    if SKIP_PRUNED:
        kept = tl.load(keep_ptr + pid_n.to(tl.int64) * n_k_tiles + pid_k) != 0
    else:
        kept = True
    if kept:
        acc = tl.zeros([BN, BK], dtype=tl.float32)
        for m0 in range(0, M, BM):
            rm = m0 + tl.arange(0, BM)
            m_ok = rm < M
            dyt = tl.load(dy_ptr + rm[None, :].to(tl.int64) * N + rn[:, None], mask=n_ok[:, None] & m_ok[None, :],
                          other=0.0)
            x = tl.load(x_ptr + rm[:, None].to(tl.int64) * K + rk[None, :], mask=m_ok[:, None] & k_ok[None, :],
                        other=0.0)
            acc += _dot(dyt, x, IEEE, DOT_F32)
        if UNIFORM:
            m = tl.load(mask_ptr + ((pid_n * BN) // block_n) * (K // block_k) + (pid_k * BK) // block_k)
        else:
            m = tl.load(mask_ptr + (rn // block_n)[:, None] * (K // block_k) + (rk // block_k)[None, :],
                        mask=tile_ok, other=0.0)
        tl.store(gw_ptr + rn[:, None] * K + rk[None, :], (acc * m).to(gw_dtype), mask=tile_ok)
        if NEED_MASK_GRAD:
            w = tl.load(w_ptr + rn[:, None] * K + rk[None, :], mask=tile_ok, other=0.0).to(tl.float32)
            p = acc * w
            p = tl.sum(tl.sum(tl.reshape(p, (BN // GBN, GBN, BK // GBK, GBK)), axis=3), axis=1)
            pr = pid_n.to(tl.int64) * (BN // GBN) + tl.arange(0, BN // GBN)
            pc = pid_k.to(tl.int64) * (BK // GBK) + tl.arange(0, BK // GBK)
            tl.store(partial_ptr + pr[:, None] * partial_cols + pc[None, :], p,
                     mask=(pr < N // GBN)[:, None] & (pc < K // GBK)[None, :])
    else:
        tl.store(gw_ptr + rn[:, None] * K + rk[None, :], tl.zeros([BN, BK], dtype=gw_dtype), mask=tile_ok)


# ----------------------------------------------------------------------------------------------------------
# Tiles and the kept-tile lists
# ----------------------------------------------------------------------------------------------------------
BM_CHOICES = (64,)
SIDE_CHOICES = (16, 32, 64)


def tile_side(block: int) -> int:
    """The tile side along a dimension whose mask blocks are ``block`` long: the block itself when it is 16,
    32 or 64 (a tile is then one block, so pruned blocks are skipped exactly), 64 for longer blocks that 64
    divides, else 32 (tiles then straddle blocks and are kept when any of their blocks is)."""
    if block in SIDE_CHOICES:
        return block
    return 64 if block % 64 == 0 else 32


def tile_sides(block_shape: Tuple[int, int]) -> int:
    """Square tiles: the smaller of the two sides' choices (a (16, 64) block is covered by 16x16 tiles, each
    inside one block), so a kernel has 3 tile shapes, not 9."""
    return min(tile_side(block_shape[0]), tile_side(block_shape[1]))


@functools.lru_cache(maxsize=256)
def _tile_block_ranges(n_tiles: int, tile: int, size: int, block: int, device) -> Tuple[torch.Tensor, torch.Tensor]:
    """For each tile along a dimension: the first and last mask block it touches (int64 on ``device``)."""
    first = [t * tile // block for t in range(n_tiles)]
    last = [(min((t + 1) * tile, size) - 1) // block for t in range(n_tiles)]
    return (torch.tensor(first, dtype=torch.int64).to(device), torch.tensor(last, dtype=torch.int64).to(device))


def tile_keep(mask: torch.Tensor, block_shape: Tuple[int, int], tiles: Tuple[int, int],
              shape: Tuple[int, int]) -> torch.Tensor:
    """(n_row_tiles, n_col_tiles) bool: whether each (tiles[0], tiles[1]) tile of a ``shape`` matrix touches a
    nonzero block of ``mask`` (blocks of ``block_shape``). Device ops only, via a summed-area table."""
    keep = (mask != 0).to(torch.int32)
    sat = torch.nn.functional.pad(keep.cumsum(0).cumsum(1), (1, 0, 1, 0))
    nr, nc = triton.cdiv(shape[0], tiles[0]), triton.cdiv(shape[1], tiles[1])
    r0, r1 = _tile_block_ranges(nr, tiles[0], shape[0], block_shape[0], mask.device)
    c0, c1 = _tile_block_ranges(nc, tiles[1], shape[1], block_shape[1], mask.device)
    count = (sat[r1 + 1][:, c1 + 1] - sat[r0][:, c1 + 1] - sat[r1 + 1][:, c0] + sat[r0][:, c0])
    return count > 0


def tile_lists(keep: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """``(order, count)`` for each row of ``keep``: its kept column indices first, in increasing order
    (int32, (rows, cols)), and how many there are (int32, (rows,))."""
    order = torch.sort((~keep).to(torch.int8), dim=1, stable=True).indices.to(torch.int32).contiguous()
    return order, keep.sum(1, dtype=torch.int32)


def _check(x: torch.Tensor) -> None:
    if x.device.type == "cpu":
        check_interpreter_mode(_INTERPRETED)
    if x.dtype == torch.float64:
        raise TypeError("masked_linear: the Triton kernels have no float64 path (use the cpu or reference backend)")


_INTERPRETED = triton_interpreting()


def _dot_f32(t: torch.Tensor) -> bool:
    return t.device.type == "cpu" and t.dtype == torch.bfloat16  # the interpreter's bf16 dot is broken


def _warps(bm: int, bj: int) -> int:
    return 4 if bm * bj <= 64 * 64 else 8


# ----------------------------------------------------------------------------------------------------------
# Launchers (validated by bermo.ops.masked_linear): 2-D contiguous x / dy, contiguous weight, mask in float32
# ----------------------------------------------------------------------------------------------------------
def _mm(a: torch.Tensor, weight: torch.Tensor, mask: torch.Tensor, bias: Optional[torch.Tensor],
        block_shape: Tuple[int, int], transpose: bool) -> torch.Tensor:
    """``a @ (W * M).T + bias`` (forward) or, with ``transpose``, ``a @ (W * M)`` (input gradient)."""
    _check(a)
    N, K = weight.shape
    bo, bi = block_shape
    M = a.shape[0]
    side = tile_sides(block_shape)
    if transpose:  # C (M, K): j over in-features, t over out-features
        J, T, block_j, block_t = K, N, bi, bo
        keep = tile_keep(mask, block_shape, (side, side), (N, K)).t()
    else:          # C (M, N): j over out-features, t over in-features
        J, T, block_j, block_t = N, K, bo, bi
        keep = tile_keep(mask, block_shape, (side, side), (N, K))
    order, count = tile_lists(keep)
    c = torch.empty((M, J), dtype=a.dtype, device=a.device)
    if M == 0 or J == 0:
        return c
    bm = BM_CHOICES[0]
    grid = (triton.cdiv(M, bm), triton.cdiv(J, side))
    masked_mm_kernel[grid](a, weight, mask, bias if bias is not None else c, c, order, count,
                           M, J, T, K, mask.shape[1], block_t, block_j, order.shape[1], TRANS=transpose,
                           HAS_BIAS=bias is not None, UNIFORM=bo % side == 0 and bi % side == 0,
                           IEEE=a.dtype == torch.float32, DOT_F32=_dot_f32(a), BM=bm, BJ=side, BT=side,
                           num_warps=_warps(bm, side))
    return c


def forward(x2d: torch.Tensor, weight: torch.Tensor, mask: torch.Tensor, bias: Optional[torch.Tensor],
            block_shape: Tuple[int, int]) -> torch.Tensor:
    return _mm(x2d, weight, mask, bias, block_shape, transpose=False)


def grad_input(dy2d: torch.Tensor, weight: torch.Tensor, mask: torch.Tensor,
               block_shape: Tuple[int, int]) -> torch.Tensor:
    return _mm(dy2d, weight, mask, None, block_shape, transpose=True)


def grad_weight(dy2d: torch.Tensor, x2d: torch.Tensor, weight: torch.Tensor, mask: torch.Tensor,
                block_shape: Tuple[int, int], need_mask_grad: bool):
    _check(x2d)
    N, K = weight.shape
    bo, bi = block_shape
    M = x2d.shape[0]
    bn = bk = tile_sides(block_shape)
    bm = BM_CHOICES[0]
    gbn, gbk = math.gcd(bo, bn), math.gcd(bi, bk)
    gw = torch.empty_like(weight)
    partial = torch.empty((N // gbn, K // gbk), dtype=torch.float32, device=weight.device) if need_mask_grad \
        else gw
    keep = tile_keep(mask, (bo, bi), (bn, bk), (N, K)).to(torch.int8).contiguous() if not need_mask_grad \
        else gw
    grid = (triton.cdiv(N, bn), triton.cdiv(K, bk))
    masked_grad_weight_kernel[grid](dy2d, x2d, weight, mask, keep, gw, partial, M, N, K, bo, bi, grid[1],
                                    K // gbk, NEED_MASK_GRAD=need_mask_grad, SKIP_PRUNED=not need_mask_grad,
                                    UNIFORM=bo % bn == 0 and bi % bk == 0, IEEE=x2d.dtype == torch.float32,
                                    DOT_F32=_dot_f32(x2d), BM=bm, BN=bn, BK=bk, GBN=gbn, GBK=gbk,
                                    num_warps=_warps(bn, bk))
    grad_mask = None
    if need_mask_grad:
        grad_mask = partial.view(N // bo, bo // gbn, K // bi, bi // gbk).sum((1, 3)).to(mask.dtype)
    return gw, grad_mask


# ----------------------------------------------------------------------------------------------------------
# Every configuration the launchers can pick, for the ahead-of-time compile check (kernels/compile.py).
# ----------------------------------------------------------------------------------------------------------
def compile_configurations():
    """Yield ``(label, kernel, signature, constexprs, attrs_div16_arg_names, num_warps)``."""
    for dtype in (torch.float16, torch.bfloat16, torch.float32):
        t = str(triton_dtype(dtype))
        ieee = dtype == torch.float32
        for side in SIDE_CHOICES:
            for trans in (False, True):
                for uniform in (True, False):
                    for has_bias in ((True, False) if not trans else (False,)):
                        sig = {"a_ptr": f"*{t}", "w_ptr": f"*{t}", "mask_ptr": "*fp32", "bias_ptr": f"*{t}",
                               "c_ptr": f"*{t}", "order_ptr": "*i32", "count_ptr": "*i32", "M": "i32", "J": "i32",
                               "T": "i32", "K": "i32", "mask_cols": "i32", "block_t": "i32", "block_j": "i32",
                               "n_t_tiles": "i32", "TRANS": "constexpr", "HAS_BIAS": "constexpr",
                               "UNIFORM": "constexpr", "IEEE": "constexpr", "DOT_F32": "constexpr", "BM": "constexpr",
                               "BJ": "constexpr", "BT": "constexpr"}
                        yield (f"masked_mm {t} BM=64 side={side} trans={trans} uniform={uniform} bias={has_bias}",
                               masked_mm_kernel, sig,
                               {"TRANS": trans, "HAS_BIAS": has_bias, "UNIFORM": uniform, "IEEE": ieee,
                                "DOT_F32": False, "BM": 64, "BJ": side, "BT": side},
                               ["J", "T", "K"], _warps(64, side))
            for uniform in (True, False):
                for need in (True, False):
                    for gbn, gbk in ((side, side), (1, 1), (1, side), (side, 1)) if need else ((1, 1),):
                        sig = {"dy_ptr": f"*{t}", "x_ptr": f"*{t}", "w_ptr": f"*{t}", "mask_ptr": "*fp32",
                               "keep_ptr": "*i8", "gw_ptr": f"*{t}", "partial_ptr": "*fp32", "M": "i32",
                               "N": "i32", "K": "i32", "block_n": "i32", "block_k": "i32", "n_k_tiles": "i32",
                               "partial_cols": "i32", "NEED_MASK_GRAD": "constexpr", "SKIP_PRUNED": "constexpr",
                               "UNIFORM": "constexpr", "IEEE": "constexpr", "DOT_F32": "constexpr",
                               "BM": "constexpr", "BN": "constexpr", "BK": "constexpr", "GBN": "constexpr",
                               "GBK": "constexpr"}
                        yield (f"masked_grad_weight {t} side={side} GBN={gbn} GBK={gbk} uniform={uniform} "
                               f"need_mask_grad={need}", masked_grad_weight_kernel, sig,
                               {"NEED_MASK_GRAD": need, "SKIP_PRUNED": not need, "UNIFORM": uniform, "IEEE": ieee,
                                "DOT_F32": False, "BM": 64, "BN": side, "BK": side, "GBN": gbn, "GBK": gbk},
                               ["N", "K"], _warps(side, side))
