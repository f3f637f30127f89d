"""Triton kernels for the masked linear ``y = x @ (W * expand(M)).T + b`` and its backward.

``W`` is (N, K) = (out, in); ``M`` the compact block mask, one value per (bo, bi) block, shape (N // bo, K // bi).
Three kernels do all the work, at most two launches per pass:

* ``kept_tiles_kernel`` (one launch, before the product, when every tile lies inside one mask block): for each
  tile row, the list of its kept tiles in increasing order and their count, built on the device from the mask
  (a prefix sum over the row's mask values, a scatter of the kept indices): no host sync, no ``W * M``.
* ``masked_mm_kernel``: ``C[m, j] = sum_t A[m, t] * (B * M)[t, j] (+ bias[j])`` with B read through strides,
  so the same kernel is the forward (A = x, B = W^T: j = output feature, t = input feature) and the input
  gradient (A = dY, B = W: j = input feature, t = output feature). Each program owns a (BM, BJ) tile of C.
  When the tile side divides both block sides (``UNIFORM``: 16/32/64 squares and their multiples) it loops only
  over the t-tiles its list says are kept, each scaled by its one mask value. Otherwise (tiles that straddle
  mask blocks: (1, 1) masks, whole rows or columns, odd block sides) it walks every t-tile, gathers the mask
  per element and reads the weight tile only when one of its mask values is nonzero (a predicated 16-byte
  vector load: a tile whose blocks are all pruned moves no weight bytes); ``W * M`` stays in registers.
* ``masked_grad_weight_kernel``: ``G = dY^T X`` one (BN, BK) tile per program, reduced over the tokens, whose
  epilogue writes ``grad W = G * M`` and, for a float mask, the block sums of ``G * W`` at the granularity
  ``(GBN, GBK)`` (a common divisor of the block and the tile) into a partial buffer (the grad mask itself when
  the granularity is the block; else the host folds it in a fixed order): deterministic, no atomics. Without
  the mask gradient (``NEED_MASK_GRAD`` off) a tile whose mask is all zero does no product and writes zeros.
  The programs of the first tile column also sum dY over the tokens: the bias gradient, in the same pass.

Tiles (GPU-sized; the interpreter runs the same): 128 tokens (32 in float32) by the block side (16, 32 or 64;
64 for blocks that straddle) in the products; (128, 128) or (64, 64) tiles of G with the mask gradient (64 when 128 would
leave the GPU's multiprocessors idle, and always for element-wise block sums), the block side without it. Accumulation is float32 (``tl.dot(a, b, acc)``
with ``ieee`` precision for float32 inputs, as PyTorch's default float32 matmul); float16/bfloat16 operands go
to the tensor cores. ``num_stages`` is Triton's default (3): it fits the shared memory of sm_80 and sm_90 for
every tile here, and it is what ``python -m bermo.kernels.compile`` builds and checks.

Launch overhead: a call costs the Python of Triton's launcher per kernel plus a few tensor allocations. Launching
a cached ``CompiledKernel`` directly would skip Triton's argument binding, but only by re-deriving Triton's
specialisation key (16-byte alignment and divisibility by 16 of every pointer and int, ints equal to 1, 32-bit
pointer ranges in newer releases), whose rules changed between 3.6 and 3.9; a wrong key silently runs a kernel
specialised for other arguments. So the launches go through ``kernel[grid](...)``, and every call is free of
host syncs, hence capturable in a CUDA graph (``torch.compile(mode="reduce-overhead")``), which removes the
launch cost altogether.
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
def _dot(a, b, acc, IEEE: tl.constexpr, DOT_F32: tl.constexpr):
    """``acc + a @ b`` accumulated in float32. ``DOT_F32`` upcasts the operands first: only under the Triton
    interpreter, whose bfloat16 ``tl.dot`` returns garbage (Triton 3.9); compiled kernels keep 16-bit operands."""
    if DOT_F32:
        return tl.dot(a.to(tl.float32), b.to(tl.float32), acc, input_precision="ieee")
    elif IEEE:
        return tl.dot(a, b, acc, input_precision="ieee")
    else:
        return tl.dot(a, b, acc)


@triton.jit
def kept_tiles_kernel(mask_ptr, lists_ptr, n_rows, n_t_tiles, tile, block_j, block_t, stride_j, stride_t,
                      CHUNK: tl.constexpr):
    """Tile row ``r = program_id(0)``: ``lists[r, :count]`` = the t-tiles whose mask value
    ``mask[(r * tile) // block_j, (t * tile) // block_t]`` (through ``stride_j`` / ``stride_t``) is nonzero, in
    increasing order, and ``lists[n_rows * n_t_tiles + r] = count``. Every tile lies inside one mask block."""
    r = tl.program_id(0)
    row = mask_ptr + ((r * tile) // block_j).to(tl.int64) * stride_j
    out = lists_ptr + r.to(tl.int64) * n_t_tiles
    total = r * 0
    for c0 in range(0, n_t_tiles, CHUNK):
        t = c0 + tl.arange(0, CHUNK)
        ok = t < n_t_tiles
        v = tl.load(row + ((t * tile) // block_t).to(tl.int64) * stride_t, mask=ok, other=0.0)
        keep = ((v != 0) & ok).to(tl.int32)
        pos = tl.cumsum(keep, 0) - keep + total
        tl.store(out + pos, t, mask=keep != 0)
        total += tl.sum(keep, 0)
    tl.store(lists_ptr + n_rows * n_t_tiles + r, total)


@triton.jit
def masked_mm_kernel(a_ptr, w_ptr, mask_ptr, bias_ptr, c_ptr, lists_ptr,
                     M, J, T, K, mask_cols, block_t, block_j, n_t_tiles, n_j_tiles,
                     TRANS: tl.constexpr, HAS_BIAS: tl.constexpr, UNIFORM: tl.constexpr, IEEE: tl.constexpr,
                     DOT_F32: tl.constexpr, BM: tl.constexpr, BJ: tl.constexpr, BT: tl.constexpr):
    """``C[m, j] = sum_t A[m, t] * B[t, j]`` with ``B = (W * M)^T`` (forward: j over W's rows) or, when
    ``TRANS``, ``B = W * M`` (input gradient: j over W's columns). ``A`` is (M, T) and ``C`` (M, J), both
    contiguous; ``W`` is contiguous with ``K`` columns, ``mask`` has ``mask_cols`` columns. ``UNIFORM``: the
    tile sides divide the block sides (so J and T are multiples of them too), the t-tiles come from ``lists``."""
    pid_m = tl.program_id(0)
    pid_j = tl.program_id(1)
    dtype = c_ptr.dtype.element_ty
    rm = pid_m.to(tl.int64) * BM + tl.arange(0, BM)
    rj = pid_j.to(tl.int64) * BJ + tl.arange(0, BJ)
    m_ok = rm < M
    j_ok = rj < J
    acc = tl.zeros([BM, BJ], dtype=tl.float32)
    if UNIFORM:
        jb = (pid_j * BJ) // block_j  # the tile's mask block along j
        n_kept = tl.load(lists_ptr + n_j_tiles * n_t_tiles + pid_j)
        for i in range(n_kept):
            tt = tl.load(lists_ptr + pid_j * n_t_tiles + i)
            rt = tt.to(tl.int64) * BT + tl.arange(0, BT)
            a = tl.load(a_ptr + rm[:, None] * T + rt[None, :], mask=m_ok[:, None], other=0.0)
            if TRANS:  # B[t, j] = W[t, j]
                b = tl.load(w_ptr + rt[:, None] * K + rj[None, :])
                scale = tl.load(mask_ptr + ((tt * BT) // block_t) * mask_cols + jb)
            else:      # B[t, j] = W[j, t]
                b = tl.load(w_ptr + rj[None, :] * K + rt[:, None])
                scale = tl.load(mask_ptr + jb * mask_cols + (tt * BT) // block_t)
            b = (b.to(tl.float32) * scale).to(b.dtype)
            acc = _dot(a, b, acc, IEEE, DOT_F32)
    else:
        for tt in range(0, n_t_tiles):
            rt = tt * BT + tl.arange(0, BT)
            t_ok = rt < T
            tile_ok = t_ok[:, None] & j_ok[None, :]
            if TRANS:
                mt = tl.load(mask_ptr + (rt // block_t)[:, None] * mask_cols + (rj // block_j)[None, :],
                             mask=tile_ok, other=0.0)
            else:
                mt = tl.load(mask_ptr + (rj // block_j)[None, :] * mask_cols + (rt // block_t)[:, None],
                             mask=tile_ok, other=0.0)
            # the weight tile is read only when one of its mask values is nonzero (whole-tile predicate: the
            # load stays a 16-byte vector load)
            # (the scalar is broadcast by an addition: the interpreter rejects a mask that ands in a bare scalar)
            kept = tl.max(tl.max((mt != 0).to(tl.int32), axis=1), axis=0)
            w_ok = tile_ok & ((tl.zeros([BT, BJ], dtype=tl.int32) + kept) != 0)
            if TRANS:
                b = tl.load(w_ptr + rt.to(tl.int64)[:, None] * K + rj[None, :], mask=w_ok, other=0.0)
            else:
                b = tl.load(w_ptr + rj[None, :] * K + rt[:, None], mask=w_ok, other=0.0)
            a = tl.load(a_ptr + rm[:, None] * T + rt[None, :], mask=m_ok[:, None] & t_ok[None, :], other=0.0)
            b = (b.to(tl.float32) * mt).to(b.dtype)
            acc = _dot(a, b, acc, IEEE, DOT_F32)
    if HAS_BIAS:
        acc += tl.load(bias_ptr + rj, mask=j_ok, other=0.0).to(tl.float32)[None, :]
    tl.store(c_ptr + rm[:, None] * J + rj[None, :], acc.to(dtype), mask=m_ok[:, None] & j_ok[None, :])


@triton.jit
def _dyt_x(dy_ptr, x_ptr, rn, rk, n_ok, k_ok, M, N, K, do_bias, IEEE: tl.constexpr, DOT_F32: tl.constexpr,
           BM: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr):
    """``(dY^T X)[rn, rk]`` over all tokens, and (when ``do_bias``) the sums of ``dY[:, rn]``, both float32."""
    acc = tl.zeros([BN, BK], dtype=tl.float32)
    gb = tl.zeros([BN], dtype=tl.float32)
    for m0 in range(0, M, BM):
        rm = m0 + tl.arange(0, BM)
        m_ok = rm < M
        dyt = tl.load(dy_ptr + rm[None, :].to(tl.int64) * N + rn[:, None], mask=n_ok[:, None] & m_ok[None, :],
                      other=0.0)
        x = tl.load(x_ptr + rm[:, None].to(tl.int64) * K + rk[None, :], mask=m_ok[:, None] & k_ok[None, :],
                    other=0.0)
        acc = _dot(dyt, x, acc, IEEE, DOT_F32)
        if do_bias:
            gb += tl.sum(dyt.to(tl.float32), axis=1)
    return acc, gb


@triton.jit
def _dy_sum(dy_ptr, rn, n_ok, M, N, BM: tl.constexpr, BN: tl.constexpr):
    gb = tl.zeros([BN], dtype=tl.float32)
    for m0 in range(0, M, BM):
        rm = m0 + tl.arange(0, BM)
        dyt = tl.load(dy_ptr + rm[None, :].to(tl.int64) * N + rn[:, None], mask=n_ok[:, None] & (rm < M)[None, :],
                      other=0.0)
        gb += tl.sum(dyt.to(tl.float32), axis=1)
    return gb


@triton.jit
def _tile_mask(mask_ptr, pid_n, pid_k, rn, rk, tile_ok, K, block_n, block_k, UNIFORM: tl.constexpr,
               BN: tl.constexpr, BK: tl.constexpr):
    """The mask over the (rn, rk) weight tile: one scalar when the tile lies inside one block, else per element."""
    if UNIFORM:
        return tl.load(mask_ptr + ((pid_n * BN) // block_n) * (K // block_k) + (pid_k * BK) // block_k)
    else:
        return tl.load(mask_ptr + (rn // block_n)[:, None] * (K // block_k) + (rk // block_k)[None, :],
                       mask=tile_ok, other=0.0)


@triton.jit
def masked_grad_weight_kernel(dy_ptr, x_ptr, w_ptr, mask_ptr, gw_ptr, partial_ptr, gb_ptr,
                              M, N, K, block_n, block_k, partial_cols, bias_grad,
                              NEED_MASK_GRAD: tl.constexpr, UNIFORM: tl.constexpr, IEEE: tl.constexpr,
                              DOT_F32: tl.constexpr, BM: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr,
                              GBN: tl.constexpr, GBK: tl.constexpr):
    """Tile (program_id(0), program_id(1)) of ``grad W = (dY^T X) * M``; with ``NEED_MASK_GRAD`` the
    (GBN, GBK)-block sums of ``(dY^T X) * W`` into ``partial`` (``partial_cols`` columns), else a tile whose mask
    is all zero skips the product. ``bias_grad`` (runtime): the programs of tile column 0 write ``gb = sum of dY
    over the tokens`` for their rows."""
    pid_n = tl.program_id(0)
    pid_k = tl.program_id(1)
    rn = pid_n.to(tl.int64) * BN + tl.arange(0, BN)
    rk = pid_k.to(tl.int64) * BK + tl.arange(0, BK)
    n_ok = rn < N
    k_ok = rk < K
    tile_ok = n_ok[:, None] & k_ok[None, :]
    gw_dtype = gw_ptr.dtype.element_ty
    do_bias = (pid_k == 0) & (bias_grad != 0)
    if NEED_MASK_GRAD:
        acc, gb = _dyt_x(dy_ptr, x_ptr, rn, rk, n_ok, k_ok, M, N, K, do_bias, IEEE, DOT_F32, BM, BN, BK)
        m = _tile_mask(mask_ptr, pid_n, pid_k, rn, rk, tile_ok, K, block_n, block_k, UNIFORM, BN, BK)
        tl.store(gw_ptr + rn[:, None] * K + rk[None, :], (acc * m).to(gw_dtype), mask=tile_ok)
        w = tl.load(w_ptr + rn[:, None] * K + rk[None, :], mask=tile_ok, other=0.0).to(tl.float32)
        p = acc * w
        if GBN > 1 or GBK > 1:
            p = tl.sum(tl.sum(tl.reshape(p, (BN // GBN, GBN, BK // GBK, GBK)), axis=3), axis=1)
        pr = pid_n.to(tl.int64) * (BN // GBN) + tl.arange(0, BN // GBN)
        pc = pid_k.to(tl.int64) * (BK // GBK) + tl.arange(0, BK // GBK)
        tl.store(partial_ptr + pr[:, None] * partial_cols + pc[None, :], p,
                 mask=(pr < N // GBN)[:, None] & (pc < K // GBK)[None, :])
    else:
        # the mask is read twice (here, and after the product): holding the tile through the loop costs registers
        m0 = _tile_mask(mask_ptr, pid_n, pid_k, rn, rk, tile_ok, K, block_n, block_k, UNIFORM, BN, BK)
        if UNIFORM:
            kept = m0 != 0
        else:
            kept = tl.max(tl.max((m0 != 0).to(tl.int32), axis=1), axis=0) != 0
        if kept:
            acc, gb = _dyt_x(dy_ptr, x_ptr, rn, rk, n_ok, k_ok, M, N, K, do_bias, IEEE, DOT_F32, BM, BN, BK)
            m = _tile_mask(mask_ptr, pid_n, pid_k, rn, rk, tile_ok, K, block_n, block_k, UNIFORM, BN, BK)
            tl.store(gw_ptr + rn[:, None] * K + rk[None, :], (acc * m).to(gw_dtype), mask=tile_ok)
        else:
            tl.store(gw_ptr + rn[:, None] * K + rk[None, :], tl.zeros([BN, BK], dtype=gw_dtype), mask=tile_ok)
            gb = tl.zeros([BN], dtype=tl.float32)
            if do_bias:
                gb = _dy_sum(dy_ptr, rn, n_ok, M, N, BM, BN)
    if do_bias:
        tl.store(gb_ptr + rn, gb.to(gb_ptr.dtype.element_ty), mask=n_ok)


# ----------------------------------------------------------------------------------------------------------
# Tiles
# ----------------------------------------------------------------------------------------------------------
BM_MM = 128            # tokens per program in the forward / input-gradient products (16-bit; see mm_bm)
SIDE_CHOICES = (16, 32, 64)
GW_TILES = (128, 64)   # (out, in) tiles of G with the mask gradient
GRANULES = (1, 16, 32, 64, 128)  # block-sum granularities the grad-weight epilogue is built for
LIST_CHUNK = 256       # t-tiles per step of kept_tiles_kernel


def tile_side(block: int) -> int:
    """The tile side along a dimension whose mask blocks are ``block`` long: the block itself when it is 16,
    32 or 64 (a tile is then one block, so pruned blocks are skipped exactly), 64 for blocks shorter than 16
    and for longer blocks that 64 divides, else 32 (tiles then straddle blocks)."""
    if block in SIDE_CHOICES:
        return block
    return 64 if block < 16 or block % 64 == 0 else 32


def tile_sides(block_shape: Tuple[int, int]) -> int:
    """Square tiles: the smaller of the two sides' choices (a (16, 64) block is covered by 16x16 tiles, each
    inside one block), so a kernel has 3 tile shapes, not 9."""
    return min(tile_side(block_shape[0]), tile_side(block_shape[1]))


def _granule(block: int, tile: int) -> int:
    g = math.gcd(block, tile)
    return g if g in GRANULES else 1


def granularity(block_shape: Tuple[int, int], tile: int) -> Tuple[int, int]:
    """``(GBN, GBK)``: the block sums of the grad-weight epilogue, each a common divisor of the block side and
    the tile, one of ``GRANULES``; square when both exceed 1 (so the kernel has few variants)."""
    gn, gk = _granule(block_shape[0], tile), _granule(block_shape[1], tile)
    if gn > 1 and gk > 1:
        gn = gk = min(gn, gk)
    return gn, gk


@functools.lru_cache(maxsize=None)
def _multiprocessors(device: torch.device) -> int:
    if device.type != "cuda":
        return 1
    return torch.cuda.get_device_properties(device).multi_processor_count


def gw_tile(N: int, K: int, device: torch.device) -> int:
    """The (out, in) tile of G when the mask needs its gradient: 128 unless that leaves fewer programs than
    the GPU has multiprocessors (then 64)."""
    big = GW_TILES[0]
    if triton.cdiv(N, big) * triton.cdiv(K, big) >= _multiprocessors(device):
        return big
    return GW_TILES[1]


def gw_bm(dtype: torch.dtype, need_mask_grad: bool = True) -> int:
    """Tokens per step of the G product: 64 for 16-bit (128 with the small tiles of the kept-only product),
    32 for float32, whose ``ieee`` product runs on the FMA units from registers (larger steps overflow them
    into the stack frame)."""
    if dtype == torch.float32:
        return 32
    return 64 if need_mask_grad else 128


def mm_bm(dtype: torch.dtype) -> int:
    """Tokens per program of the forward / input-gradient product: ``BM_MM`` for 16-bit, 32 for float32 (an
    ``ieee`` product from registers: 128 x 64 float32 operands put kilobytes per thread on the stack)."""
    return 32 if dtype == torch.float32 else BM_MM


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


@functools.lru_cache(maxsize=None)
def _placeholder(device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """A one-element buffer for a kernel pointer argument that the configuration never reads (the list without
    lists, the partial sums without the mask gradient): made once per device and dtype, so a call allocates
    nothing for it and the argument keeps the type the kernel was compiled for."""
    return torch.zeros(1, dtype=dtype, device=device)


# ----------------------------------------------------------------------------------------------------------
# The kept-tile lists
# ----------------------------------------------------------------------------------------------------------
def kept_tiles(mask: torch.Tensor, block_shape: Tuple[int, int], tile: int, shape: Tuple[int, int],
               transpose: bool) -> torch.Tensor:
    """One int32 buffer: for each tile row (of the ``shape`` weight's tile rows, or its tile columns with
    ``transpose``), its kept tile indices first, in increasing order (``n_rows * n_t_tiles`` entries, row-major;
    entries past a row's count are unset), then the ``n_rows`` counts. One kernel launch, device only; the tile
    must divide both block sides (each tile inside one mask block). ``mask`` is float, contiguous."""
    N, K = shape
    bo, bi = block_shape
    if transpose:
        n_rows, n_t, block_j, block_t, stride_j, stride_t = K // tile, N // tile, bi, bo, 1, mask.shape[1]
    else:
        n_rows, n_t, block_j, block_t, stride_j, stride_t = N // tile, K // tile, bo, bi, mask.shape[1], 1
    lists = torch.empty(n_rows * n_t + n_rows, dtype=torch.int32, device=mask.device)
    if n_rows:
        kept_tiles_kernel[(n_rows,)](mask, lists, n_rows, n_t, tile, block_j, block_t, stride_j, stride_t,
                                     CHUNK=LIST_CHUNK, num_warps=4)
    return lists


def tile_lists(lists: torch.Tensor, n_rows: int, n_t: int):
    """``(order, count)`` views of a ``kept_tiles`` buffer (order's entries past each count are unset)."""
    return lists[:n_rows * n_t].view(n_rows, n_t), lists[n_rows * n_t:]


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
    else:          # C (M, N): j over out-features, t over in-features
        J, T, block_j, block_t = N, K, bo, bi
    c = torch.empty((M, J), dtype=a.dtype, device=a.device)
    if M == 0 or J == 0:
        return c
    uniform = bo % side == 0 and bi % side == 0
    n_j, n_t = triton.cdiv(J, side), triton.cdiv(T, side)
    lists = kept_tiles(mask, block_shape, side, (N, K), transpose) if uniform \
        else _placeholder(a.device, torch.int32)
    bm = mm_bm(a.dtype)
    grid = (triton.cdiv(M, bm), n_j)
    masked_mm_kernel[grid](a, weight, mask, bias if bias is not None else c, c, lists,
                           M, J, T, K, mask.shape[1], block_t, block_j, n_t, n_j, TRANS=transpose,
                           HAS_BIAS=bias is not None, UNIFORM=uniform, IEEE=a.dtype == torch.float32,
                           DOT_F32=_dot_f32(a), BM=bm, BJ=side, BT=side, num_warps=_warps(bm, side))
    return c


def forward(x2d: torch.Tensor, weight: torch.Tensor, mask: torch.Tensor, bias: Optional[torch.Tensor],
            block_shape: Tuple[int, int]) -> torch.Tensor:
    return _mm(x2d, weight, mask, bias, block_shape, transpose=False)


def grad_input(dy2d: torch.Tensor, weight: torch.Tensor, mask: torch.Tensor,
               block_shape: Tuple[int, int]) -> torch.Tensor:
    return _mm(dy2d, weight, mask, None, block_shape, transpose=True)


def grad_weight(dy2d: torch.Tensor, x2d: torch.Tensor, weight: torch.Tensor, mask: torch.Tensor,
                block_shape: Tuple[int, int], need_mask_grad: bool, need_bias_grad: bool = False):
    """``(grad weight, grad mask or None, grad bias or None)`` in one launch (plus, for block sums finer than
    the block, one fold of the partial sums)."""
    _check(x2d)
    N, K = weight.shape
    bo, bi = block_shape
    M = x2d.shape[0]
    if need_mask_grad:
        bn = bk = gw_tile(N, K, weight.device)
        gbn, gbk = granularity(block_shape, bn)
        if bn > GW_TILES[1] and min(gbn, gbk) == 1:
            # element-wise block sums (rows, columns, (1, 1)) in 128 x 128 tiles gave wrong grad-weight values in
            # bfloat16 on an H100 (Triton 3.6, GPU_NOTES call 4); the 64 x 64 tiles were right there
            bn = bk = GW_TILES[1]
            gbn, gbk = granularity(block_shape, bn)
    else:
        bn = bk = tile_sides(block_shape)
        gbn = gbk = 1
    bm = gw_bm(x2d.dtype, need_mask_grad)
    gw = torch.empty_like(weight)
    gb = torch.empty(N, dtype=dy2d.dtype, device=dy2d.device) if need_bias_grad else None
    partial = torch.empty((N // gbn, K // gbk), dtype=torch.float32, device=weight.device) if need_mask_grad \
        else _placeholder(weight.device, torch.float32)
    if N and K:
        grid = (triton.cdiv(N, bn), triton.cdiv(K, bk))
        masked_grad_weight_kernel[grid](dy2d, x2d, weight, mask, gw, partial, gb if gb is not None else gw,
                                        M, N, K, bo, bi, K // gbk, int(need_bias_grad),
                                        NEED_MASK_GRAD=need_mask_grad, UNIFORM=bo % bn == 0 and bi % bk == 0,
                                        IEEE=x2d.dtype == torch.float32, DOT_F32=_dot_f32(x2d), BM=bm, BN=bn,
                                        BK=bk, GBN=gbn, GBK=gbk, num_warps=_warps(bn, bk))
    elif gb is not None:
        gb.zero_()
    grad_mask = None
    if need_mask_grad:
        grad_mask = partial if (gbn, gbk) == (bo, bi) else \
            partial.view(N // bo, bo // gbn, K // bi, bi // gbk).sum((1, 3))
        grad_mask = grad_mask.to(mask.dtype)
    return gw, grad_mask, gb


# ----------------------------------------------------------------------------------------------------------
# Every configuration the launchers can pick, for the ahead-of-time compile check (kernels/compile.py).
# ----------------------------------------------------------------------------------------------------------
def _gw_granularities(tile: int):
    """Every ``granularity(block_shape, tile)`` value: (g, g), (1, g), (g, 1) for g in GRANULES up to the tile."""
    gs = [g for g in GRANULES if 1 < g <= tile]
    return [(g, g) for g in gs] + [(1, 1)] + [(1, g) for g in gs] + [(g, 1) for g in gs]


def compile_configurations():
    """Yield ``(label, kernel, signature, constexprs, attrs_div16_arg_names, num_warps)``."""
    sig = {"mask_ptr": "*fp32", "lists_ptr": "*i32", "n_rows": "i32", "n_t_tiles": "i32", "tile": "i32",
           "block_j": "i32", "block_t": "i32", "stride_j": "i32", "stride_t": "i32", "CHUNK": "constexpr"}
    yield (f"kept_tiles fp32 CHUNK={LIST_CHUNK}", kept_tiles_kernel, sig, {"CHUNK": LIST_CHUNK}, [], 4)
    for dtype in (torch.float16, torch.bfloat16, torch.float32):
        t = str(triton_dtype(dtype))
        ieee = dtype == torch.float32
        for side in SIDE_CHOICES:
            for trans in (False, True):
                for uniform in (True, False):
                    for has_bias in ((True, False) if not trans else (False,)):
                        sig = {"a_ptr": f"*{t}", "w_ptr": f"*{t}", "mask_ptr": "*fp32", "bias_ptr": f"*{t}",
                               "c_ptr": f"*{t}", "lists_ptr": "*i32", "M": "i32", "J": "i32", "T": "i32",
                               "K": "i32", "mask_cols": "i32", "block_t": "i32", "block_j": "i32",
                               "n_t_tiles": "i32", "n_j_tiles": "i32", "TRANS": "constexpr", "HAS_BIAS": "constexpr",
                               "UNIFORM": "constexpr", "IEEE": "constexpr", "DOT_F32": "constexpr", "BM": "constexpr",
                               "BJ": "constexpr", "BT": "constexpr"}
                        bm = mm_bm(dtype)
                        yield (f"masked_mm {t} BM={bm} side={side} trans={trans} uniform={uniform} "
                               f"bias={has_bias}", masked_mm_kernel, sig,
                               {"TRANS": trans, "HAS_BIAS": has_bias, "UNIFORM": uniform, "IEEE": ieee,
                                "DOT_F32": False, "BM": bm, "BJ": side, "BT": side},
                               ["J", "T", "K"], _warps(bm, side))
        gw_sig = {"dy_ptr": f"*{t}", "x_ptr": f"*{t}", "w_ptr": f"*{t}", "mask_ptr": "*fp32", "gw_ptr": f"*{t}",
                  "partial_ptr": "*fp32", "gb_ptr": f"*{t}", "M": "i32", "N": "i32", "K": "i32", "block_n": "i32",
                  "block_k": "i32", "partial_cols": "i32", "bias_grad": "i32", "NEED_MASK_GRAD": "constexpr",
                  "UNIFORM": "constexpr", "IEEE": "constexpr", "DOT_F32": "constexpr", "BM": "constexpr",
                  "BN": "constexpr", "BK": "constexpr", "GBN": "constexpr", "GBK": "constexpr"}
        variants = [(True, tile, uniform, g) for tile in GW_TILES for uniform in (True, False)
                    for g in ([(tile, tile)] if uniform else _gw_granularities(tile))
                    if tile == GW_TILES[1] or min(g) > 1]
        variants += [(False, side, uniform, (1, 1)) for side in SIDE_CHOICES for uniform in (True, False)]
        for need, tile, uniform, (gbn, gbk) in variants:
            bm = gw_bm(dtype, need)
            yield (f"masked_grad_weight {t} tile={tile} BM={bm} GBN={gbn} GBK={gbk} uniform={uniform} "
                   f"need_mask_grad={need}", masked_grad_weight_kernel, gw_sig,
                   {"NEED_MASK_GRAD": need, "UNIFORM": uniform, "IEEE": ieee, "DOT_F32": False, "BM": bm,
                    "BN": tile, "BK": tile, "GBN": gbn, "GBK": gbk},
                   ["N", "K"], _warps(tile, tile))
