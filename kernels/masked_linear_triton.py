"""Triton kernels for the masked linear ``y = x @ (W * expand(M)).T + b`` and its backward.

``W`` is (N, K) = (out, in); ``M`` the compact block mask, one value per (bo, bi) block, shape (N // bo, K // bi).
Two paths, chosen per call on the host (``masked_linear_paths.uses_dense_path``) without looking at the mask's
values (no sync):

* **Block-skipping** (block sides that 16, 32 or 64 divide, expected kept fraction below ``DENSE_FROM``):
  ``masked_mm_kernel`` computes ``C[m, j] = sum_t A[m, t] * (B * M)[t, j] (+ bias[j])`` over the kept t-tiles
  of its tile column only, B read through strides: the same kernel is the forward (A = x, B = W^T) and the
  input gradient (A = dY, B = W). Each program lists its kept tiles itself (a prefix sum over its mask row, up
  to 1024 tiles; past that ``kept_tiles_kernel`` lists them in one launch before): no host sync, no ``W * M``;
  a pruned block's weights are never read.
* **Dense** (masks no tile fits: (1, 1), whole rows or columns, odd sides; or a dense expected mask):
  ``masked_weight_kernel`` writes ``W * M`` in one pass and cuBLAS (ATen on a CPU) does the product. A tile
  of a (1, 1) or row mask is almost never all pruned, so skipping would save nothing there, and the vendor
  GEMM is 2-4x faster than a Triton tile loop at full density (``benchmarks/results/GPU_NOTES.md``).

The weight gradient: ``G = dY^T X`` by one cuBLAS / ATen product written into the weight gradient's buffer (the
straight-through score gradient reads G at pruned weights too), then ``grad_epilogue_kernel`` in place:
``grad W = G * M`` and the block sums of ``G * W`` (float32, each sum owned by one program: deterministic, no
atomics) at the block's granularity or finer (then folded by the host in a fixed order). Without the mask
gradient G is still dense: a kept-tiles-only Triton product measured slower at every density (``grad_weight``).

Accumulation is float32 (``tl.dot(a, b, acc)`` with ``ieee`` precision for float32 inputs, as PyTorch's
default float32 matmul; cuBLAS likewise); float16 / bfloat16 operands go to the tensor cores. Every call is
free of host syncs, hence capturable in a CUDA graph (``torch.compile(mode="reduce-overhead")``), which removes
the launch cost (Triton's launcher costs ~100 us of host time per kernel on a slow host).
"""
from __future__ import annotations

import functools
from typing import Optional, Tuple

import torch
import torch.nn.functional as F
import triton
import triton.language as tl

from .device_guard import on_tensor_device
from .dtypes import check_interpreter_mode, triton_dtype, triton_interpreting
from .layout import cdiv
from .masked_linear_paths import SIDE_CHOICES, sparse_tile


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
                     TRANS: tl.constexpr, HAS_BIAS: tl.constexpr, IEEE: tl.constexpr, DOT_F32: tl.constexpr,
                     LIST_IN_KERNEL: tl.constexpr, CHUNK: tl.constexpr, BM: tl.constexpr, BJ: tl.constexpr,
                     BT: tl.constexpr):
    """``C[m, j] = sum_t A[m, t] * B[t, j]`` with ``B = (W * M)^T`` (forward: j over W's rows) or, when
    ``TRANS``, ``B = W * M`` (input gradient: j over W's columns), over the kept t-tiles of the program's tile
    column only. ``A`` is (M, T) and ``C`` (M, J), both contiguous; ``W`` is contiguous with ``K`` columns,
    ``mask`` has ``mask_cols`` columns. Every tile lies inside one mask block (the tile sides divide the block
    sides, so J and T are multiples of them). The kept t-tiles come from ``lists`` (``kept_tiles``) or, with
    ``LIST_IN_KERNEL``, from the program's own pass over its mask row (``CHUNK`` >= n_t_tiles values, a prefix
    sum, the i-th kept tile picked by a masked sum: no second launch). Consecutive programs walk the token
    tiles of one tile column."""
    pid_m = tl.program_id(0)
    pid_j = tl.program_id(1)
    dtype = c_ptr.dtype.element_ty
    rm = pid_m.to(tl.int64) * BM + tl.arange(0, BM)
    rj = pid_j.to(tl.int64) * BJ + tl.arange(0, BJ)
    m_ok = rm < M
    acc = tl.zeros([BM, BJ], dtype=tl.float32)
    jb = (pid_j * BJ) // block_j  # the tile's mask block along j
    if TRANS:
        mrow = mask_ptr + jb
        mstride = mask_cols
    else:
        mrow = mask_ptr + jb * mask_cols
        mstride = 1
    if LIST_IN_KERNEL:
        t_idx = tl.arange(0, CHUNK)
        t_ok = t_idx < n_t_tiles
        mv = tl.load(mrow + ((t_idx * BT) // block_t) * mstride, mask=t_ok, other=0.0)
        keep = ((mv != 0) & t_ok).to(tl.int32)
        pos = tl.where(keep != 0, tl.cumsum(keep, 0) - keep, -1)
        n_kept = tl.sum(keep, 0)
    else:
        n_kept = tl.load(lists_ptr + n_j_tiles * n_t_tiles + pid_j)
    for i in range(n_kept):
        if LIST_IN_KERNEL:
            tt = tl.sum(tl.where(pos == i, t_idx, 0), 0)
            scale = tl.sum(tl.where(pos == i, mv, 0.0), 0)
        else:
            tt = tl.load(lists_ptr + pid_j * n_t_tiles + i)
            scale = tl.load(mrow + ((tt * BT) // block_t) * mstride)
        rt = tt.to(tl.int64) * BT + tl.arange(0, BT)
        # the activation tiles are re-read by every tile column that keeps them: kept in L2 longer than the output
        a = tl.load(a_ptr + rm[:, None] * T + rt[None, :], mask=m_ok[:, None], other=0.0,
                    eviction_policy="evict_last")
        if TRANS:  # B[t, j] = W[t, j]
            b = tl.load(w_ptr + rt[:, None] * K + rj[None, :])
        else:      # B[t, j] = W[j, t]
            b = tl.load(w_ptr + rj[None, :] * K + rt[:, None])
        b = (b.to(tl.float32) * scale).to(b.dtype)
        acc = _dot(a, b, acc, IEEE, DOT_F32)
    if HAS_BIAS:
        acc += tl.load(bias_ptr + rj).to(tl.float32)[None, :]
    tl.store(c_ptr + rm[:, None] * J + rj[None, :], acc.to(dtype), mask=m_ok[:, None],
             eviction_policy="evict_first")


@triton.jit
def _expanded_mask(mask_ptr, rn, rk, ok, block_n, block_k, mask_cols):
    """The compact mask expanded over the (rn, rk) tile of the weight (float32, 0 outside ``ok``)."""
    return tl.load(mask_ptr + (rn // block_n)[:, None] * mask_cols + (rk // block_k)[None, :], mask=ok, other=0.0)


@triton.jit
def masked_weight_kernel(w_ptr, mask_ptr, out_ptr, N, K, block_n, block_k, mask_cols,
                         BN: tl.constexpr, BK: tl.constexpr):
    """``out = W * expand(M)`` in W's dtype, one (BN, BK) tile per program (the mask gathered per element)."""
    rn = tl.program_id(0).to(tl.int64) * BN + tl.arange(0, BN)
    rk = tl.program_id(1).to(tl.int64) * BK + tl.arange(0, BK)
    ok = (rn < N)[:, None] & (rk < K)[None, :]
    w = tl.load(w_ptr + rn[:, None] * K + rk[None, :], mask=ok, other=0.0)
    m = _expanded_mask(mask_ptr, rn, rk, ok, block_n, block_k, mask_cols)
    tl.store(out_ptr + rn[:, None] * K + rk[None, :], (w.to(tl.float32) * m).to(w.dtype), mask=ok)


@triton.jit
def grad_epilogue_kernel(g_ptr, w_ptr, mask_ptr, partial_ptr, dy_ptr, bias_partial_ptr, N, K, M, block_n, block_k,
                         mask_cols, partial_cols, k_tiles, chunk_rows,
                         NEED_MASK_GRAD: tl.constexpr, BIAS_GRAD: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr,
                         GBN: tl.constexpr, GBK: tl.constexpr):
    """In place over ``G = dY^T X`` (N, K), one (BN, BK) tile per program ``(n, k)`` with ``k < k_tiles``:
    ``G <- G * expand(M)`` (the weight gradient) and, with ``NEED_MASK_GRAD``, the (GBN, GBK)-block sums of
    ``G * W`` (float32) into ``partial`` (``partial_cols`` columns): the mask gradient at the granularity of the
    block or finer (then folded by the host in a fixed order). With ``BIAS_GRAD`` the programs ``(n, k_tiles +
    c)`` sum dY (M, N) over the rows of chunk ``c`` (``chunk_rows`` each) for their BN columns into
    ``bias_partial[c]``: the bias gradient in the same launch (the host adds the chunks up). Deterministic:
    every sum has one owner and a fixed order."""
    pid_n = tl.program_id(0)
    pid_k = tl.program_id(1)
    rn = pid_n.to(tl.int64) * BN + tl.arange(0, BN)
    if BIAS_GRAD and pid_k >= k_tiles:
        chunk = pid_k - k_tiles
        n_ok = rn < N
        acc = tl.zeros([BN], dtype=tl.float32)
        r0 = chunk.to(tl.int64) * chunk_rows
        for r in range(0, chunk_rows, BK):
            rm = r0 + r + tl.arange(0, BK)
            d = tl.load(dy_ptr + rm[:, None] * N + rn[None, :], mask=(rm < M)[:, None] & n_ok[None, :], other=0.0)
            acc += tl.sum(d.to(tl.float32), axis=0)
        tl.store(bias_partial_ptr + chunk.to(tl.int64) * N + rn, acc, mask=n_ok)
    else:
        rk = pid_k.to(tl.int64) * BK + tl.arange(0, BK)
        ok = (rn < N)[:, None] & (rk < K)[None, :]
        g = tl.load(g_ptr + rn[:, None] * K + rk[None, :], mask=ok, other=0.0)
        m = _expanded_mask(mask_ptr, rn, rk, ok, block_n, block_k, mask_cols)
        gf = g.to(tl.float32)
        tl.store(g_ptr + rn[:, None] * K + rk[None, :], (gf * m).to(g.dtype), mask=ok)
        if NEED_MASK_GRAD:
            w = tl.load(w_ptr + rn[:, None] * K + rk[None, :], mask=ok, other=0.0).to(tl.float32)
            p = gf * w
            if GBN > 1 or GBK > 1:
                p = tl.sum(tl.sum(tl.reshape(p, (BN // GBN, GBN, BK // GBK, GBK)), axis=3), axis=1)
            pr = pid_n.to(tl.int64) * (BN // GBN) + tl.arange(0, BN // GBN)
            pc = pid_k.to(tl.int64) * (BK // GBK) + tl.arange(0, BK // GBK)
            tl.store(partial_ptr + pr[:, None] * partial_cols + pc[None, :], p,
                     mask=(pr < N // GBN)[:, None] & (pc < K // GBK)[None, :])


# ----------------------------------------------------------------------------------------------------------
# Tiles and the choice of path
# ----------------------------------------------------------------------------------------------------------
# Measured on an H100 (bfloat16, 4096 tokens, BERT-base shapes, 32x32 blocks at density 0.1; the table is
# benchmarks/results/masked_linear_sweep_*.md): 128 tokens, 4 warps, 2 stages is the best of 64/128/256 x 4/8 x
# 2/3/4 for both products (8 warps: 20-40% slower); a program listing its own kept tiles saves the list launch
# (forward 1-2 us, 8-20%); the other program order and scaling the product instead of the weight tile did not
# help. The products are bound by the L2 traffic of the x tiles each kept block re-reads (about 60 MB per FFN
# layer at density 0.1), not by HBM; L2 eviction hints (x loads evict_last, output stores evict_first) gained 3-5%
# on the FFN shapes (a later sweep, GPU_NOTES call 7).
MM_TILES = {                   # (tokens per program, warps, pipeline stages) of the block-skipping products
    "16bit": (128, 4, 2),
    "float32": (32, 4, 2),     # an ``ieee`` product from registers: 128 x 64 float32 operands overflow them
}
LIST_CHUNKS = (64, 256, 1024)  # a program lists its own kept t-tiles up to this many (more: the kept_tiles launch)
EPILOGUE_TILE = 64             # (out, in) tile of the masked-weight and weight-gradient epilogue passes
GRANULES = (1, 16, 32, 64)     # block-sum granularities the epilogue is built for
BIAS_CHUNKS = 16               # row chunks of the bias gradient's column sums in the epilogue launch
LIST_CHUNK = 256               # t-tiles per step of kept_tiles_kernel


def _bits(dtype: torch.dtype) -> str:
    return "float32" if dtype == torch.float32 else "16bit"


def granularity(block_shape: Tuple[int, int], tile: int = EPILOGUE_TILE) -> Tuple[int, int]:
    """``(GBN, GBK)``: the block sums of the epilogue, each side the largest of ``GRANULES`` dividing both the
    block side and the tile; square when both exceed 1 (fewer kernel variants)."""
    def one(block):
        return max(g for g in GRANULES if block % g == 0 and tile % g == 0)
    gn, gk = one(block_shape[0]), one(block_shape[1])
    if gn > 1 and gk > 1:
        gn = gk = min(gn, gk)
    return gn, gk


def _check(x: torch.Tensor) -> None:
    if x.device.type == "cpu":
        check_interpreter_mode(_INTERPRETED)
    if x.dtype == torch.float64:
        raise TypeError("masked_linear: the Triton kernels have no float64 path (use the cpu or reference backend)")


_INTERPRETED = triton_interpreting()


def _dot_f32(t: torch.Tensor) -> bool:
    return t.device.type == "cpu" and t.dtype == torch.bfloat16  # the interpreter's bf16 dot is broken


@functools.lru_cache(maxsize=None)
def _placeholder(device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """A one-element buffer for a kernel pointer argument that the configuration never reads: made once per
    device and dtype, so a call allocates nothing for it and the argument keeps the type the kernel expects."""
    return torch.zeros(1, dtype=dtype, device=device)


# ----------------------------------------------------------------------------------------------------------
# The kept-tile lists
# ----------------------------------------------------------------------------------------------------------
@on_tensor_device
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
def list_chunk(n_t: int) -> int:
    """The CHUNK of a program that lists its own ``n_t`` kept t-tiles, or 0 to use the kept_tiles launch."""
    return next((c for c in LIST_CHUNKS if n_t <= c), 0)


@on_tensor_device
def sparse_mm(a: torch.Tensor, weight: torch.Tensor, mask: torch.Tensor, bias: Optional[torch.Tensor],
              block_shape: Tuple[int, int], transpose: bool, tiles: Optional[Tuple[int, int, int]] = None,
              list_in_kernel: Optional[bool] = None) -> torch.Tensor:
    """``a @ (W * M).T + bias`` (forward) or, with ``transpose``, ``a @ (W * M)`` (input gradient), on the kept
    tiles only. ``tiles`` (tokens per program, warps, stages) and ``list_in_kernel`` override the module's
    choices (tile sweeps, tests)."""
    _check(a)
    N, K = weight.shape
    bo, bi = block_shape
    M = a.shape[0]
    side = sparse_tile(block_shape)
    if transpose:  # C (M, K): j over in-features, t over out-features
        J, T, block_j, block_t = K, N, bi, bo
    else:          # C (M, N): j over out-features, t over in-features
        J, T, block_j, block_t = N, K, bo, bi
    c = torch.empty((M, J), dtype=a.dtype, device=a.device)
    if M == 0 or J == 0:
        return c
    n_j, n_t = J // side, T // side
    bm, warps, stages = tiles or MM_TILES[_bits(a.dtype)]
    chunk = list_chunk(n_t) if list_in_kernel is not False else 0
    lists = _placeholder(a.device, torch.int32) if chunk else kept_tiles(mask, block_shape, side, (N, K), transpose)
    grid = (cdiv(M, bm), n_j)
    masked_mm_kernel[grid](a, weight, mask, bias if bias is not None else c, c, lists,
                           M, J, T, K, mask.shape[1], block_t, block_j, n_t, n_j, TRANS=transpose,
                           HAS_BIAS=bias is not None, IEEE=a.dtype == torch.float32, DOT_F32=_dot_f32(a),
                           LIST_IN_KERNEL=chunk > 0, CHUNK=max(chunk, LIST_CHUNKS[0]), BM=bm, BJ=side, BT=side,
                           num_warps=warps, num_stages=stages)
    return c


@on_tensor_device
def masked_weight(weight: torch.Tensor, mask: torch.Tensor, block_shape: Tuple[int, int]) -> torch.Tensor:
    """``W * expand(M)`` in W's dtype: one pass over the weight."""
    N, K = weight.shape
    out = torch.empty_like(weight)
    if N and K:
        t = EPILOGUE_TILE
        masked_weight_kernel[(cdiv(N, t), cdiv(K, t))](
            weight, mask, out, N, K, block_shape[0], block_shape[1], mask.shape[1], BN=t, BK=t, num_warps=4)
    return out


@on_tensor_device
def forward(x2d: torch.Tensor, weight: torch.Tensor, mask: torch.Tensor, bias: Optional[torch.Tensor],
            block_shape: Tuple[int, int], dense: bool) -> torch.Tensor:
    """The block-skipping product, or (``dense``) ``W * M`` then one cuBLAS / ATen product."""
    if dense:
        _check(x2d)
        return F.linear(x2d, masked_weight(weight, mask, block_shape), bias)
    return sparse_mm(x2d, weight, mask, bias, block_shape, transpose=False)


@on_tensor_device
def grad_input(dy2d: torch.Tensor, weight: torch.Tensor, mask: torch.Tensor, block_shape: Tuple[int, int],
               dense: bool) -> torch.Tensor:
    if dense:
        _check(dy2d)
        # W * M again rather than saved by the forward: one weight-sized pass (~3-5 us for a BERT-base FFN weight
        # on an H100) instead of a weight-sized tensor kept alive per layer between forward and backward
        return torch.mm(dy2d, masked_weight(weight, mask, block_shape))
    return sparse_mm(dy2d, weight, mask, None, block_shape, transpose=True)


@on_tensor_device
def grad_weight(dy2d: torch.Tensor, x2d: torch.Tensor, weight: torch.Tensor, mask: torch.Tensor,
                block_shape: Tuple[int, int], need_mask_grad: bool, need_bias_grad: bool):
    """``(grad weight, grad mask or None, grad bias or None)``: ``G = dY^T X`` by one cuBLAS / ATen product
    written into the weight gradient's buffer, then one epilogue pass over it, in place: ``G * M`` and (with
    ``need_mask_grad``) the block sums of ``G * W``; no weight-sized temporary besides the gradient itself. The
    bias gradient's column sums of dY run in the same launch (``BIAS_CHUNKS`` row chunks, added up by the host):
    a separate reduction (``dy.sum(0)``) cost 11-16 us per FFN layer on an H100, more than the epilogue.

    G is dense even without the mask gradient: a Triton product over the kept tiles only measured slower than
    the whole cuBLAS product plus this epilogue at every density down to 0.05 on an H100 (it re-reads dY's and
    X's columns from L2 for every kept block, and 5-10% of the blocks leave most multiprocessors idle; the
    sweep's ``kept tiles`` rows), so the GPU path has none; the C++ CPU path keeps its kept-blocks product."""
    _check(x2d)
    N, K = weight.shape
    bo, bi = block_shape
    gw = torch.mm(dy2d.t(), x2d)
    # The block-sum granularity only matters with the mask gradient; without it one (1, 1) specialisation serves
    # every block shape (the one compile_configurations() lists).
    gbn, gbk = granularity(block_shape) if need_mask_grad else (1, 1)
    partial = torch.empty((N // gbn, K // gbk), dtype=torch.float32, device=weight.device) if need_mask_grad \
        else _placeholder(weight.device, torch.float32)
    t = EPILOGUE_TILE
    M = dy2d.shape[0]
    chunks = min(BIAS_CHUNKS, cdiv(M, t)) if need_bias_grad and M else 0
    chunk_rows = cdiv(cdiv(M, chunks), t) * t if chunks else t
    bias_partial = torch.empty((chunks, N), dtype=torch.float32, device=weight.device) if chunks \
        else _placeholder(weight.device, torch.float32)
    if N and (K or chunks):
        k_tiles = cdiv(K, t)
        grad_epilogue_kernel[(cdiv(N, t), k_tiles + chunks)](
            gw, weight, mask, partial, dy2d, bias_partial, N, K, M, bo, bi, mask.shape[1], K // gbk, k_tiles,
            chunk_rows, NEED_MASK_GRAD=need_mask_grad, BIAS_GRAD=chunks > 0, BN=t, BK=t, GBN=gbn, GBK=gbk,
            num_warps=4)
    grad_mask = None
    if need_mask_grad:
        grad_mask = partial if (gbn, gbk) == (bo, bi) else \
            partial.view(N // bo, bo // gbn, K // bi, bi // gbk).sum((1, 3))
        grad_mask = grad_mask.to(mask.dtype)
    gb = None
    if need_bias_grad:
        gb = bias_partial.sum(0).to(dy2d.dtype) if chunks else dy2d.new_zeros(N)
    return gw, grad_mask, gb


# ----------------------------------------------------------------------------------------------------------
# Every configuration the launchers can pick, for the ahead-of-time compile check (kernels/compile.py).
# ----------------------------------------------------------------------------------------------------------
def _epilogue_granularities():
    """Every ``granularity(block_shape)`` value: (g, g), (1, g), (g, 1) for g in GRANULES, and (1, 1)."""
    gs = [g for g in GRANULES if g > 1]
    return [(1, 1)] + [(g, g) for g in gs] + [(1, g) for g in gs] + [(g, 1) for g in gs]


def compile_configurations():
    """Yield ``(label, kernel, signature, constexprs, attrs_div16_arg_names, num_warps, num_stages)``."""
    sig = {"mask_ptr": "*fp32", "lists_ptr": "*i32", "n_rows": "i32", "n_t_tiles": "i32", "tile": "i32",
           "block_j": "i32", "block_t": "i32", "stride_j": "i32", "stride_t": "i32", "CHUNK": "constexpr"}
    yield (f"kept_tiles fp32 CHUNK={LIST_CHUNK}", kept_tiles_kernel, sig, {"CHUNK": LIST_CHUNK}, [], 4, 3)
    for dtype in (torch.float16, torch.bfloat16, torch.float32):
        t = str(triton_dtype(dtype))
        ieee = dtype == torch.float32
        bm, warps, stages = MM_TILES[_bits(dtype)]
        for side in SIDE_CHOICES:
            for trans in (False, True):
                for has_bias in ((True, False) if not trans else (False,)):
                    for chunk in (0,) + LIST_CHUNKS:
                        sig = {"a_ptr": f"*{t}", "w_ptr": f"*{t}", "mask_ptr": "*fp32", "bias_ptr": f"*{t}",
                               "c_ptr": f"*{t}", "lists_ptr": "*i32", "M": "i32", "J": "i32", "T": "i32",
                               "K": "i32", "mask_cols": "i32", "block_t": "i32", "block_j": "i32",
                               "n_t_tiles": "i32", "n_j_tiles": "i32", "TRANS": "constexpr",
                               "HAS_BIAS": "constexpr", "IEEE": "constexpr", "DOT_F32": "constexpr",
                               "LIST_IN_KERNEL": "constexpr", "CHUNK": "constexpr", "BM": "constexpr",
                               "BJ": "constexpr", "BT": "constexpr"}
                        yield (f"masked_mm {t} BM={bm} side={side} trans={trans} bias={has_bias} "
                               f"list_chunk={chunk}", masked_mm_kernel, sig,
                               {"TRANS": trans, "HAS_BIAS": has_bias, "IEEE": ieee, "DOT_F32": False,
                                "LIST_IN_KERNEL": chunk > 0, "CHUNK": max(chunk, LIST_CHUNKS[0]), "BM": bm,
                                "BJ": side, "BT": side},
                               ["J", "T", "K"], warps, stages)
        tile = EPILOGUE_TILE
        mw_sig = {"w_ptr": f"*{t}", "mask_ptr": "*fp32", "out_ptr": f"*{t}", "N": "i32", "K": "i32",
                  "block_n": "i32", "block_k": "i32", "mask_cols": "i32", "BN": "constexpr", "BK": "constexpr"}
        yield (f"masked_weight {t} tile={tile}", masked_weight_kernel, mw_sig, {"BN": tile, "BK": tile}, ["K"], 4, 3)
        ep_sig = {"g_ptr": f"*{t}", "w_ptr": f"*{t}", "mask_ptr": "*fp32", "partial_ptr": "*fp32",
                  "dy_ptr": f"*{t}", "bias_partial_ptr": "*fp32", "N": "i32", "K": "i32", "M": "i32",
                  "block_n": "i32", "block_k": "i32", "mask_cols": "i32", "partial_cols": "i32", "k_tiles": "i32",
                  "chunk_rows": "i32", "NEED_MASK_GRAD": "constexpr", "BIAS_GRAD": "constexpr", "BN": "constexpr",
                  "BK": "constexpr", "GBN": "constexpr", "GBK": "constexpr"}
        for need in (True, False):
            for bias in (True, False):
                for gbn, gbk in (_epilogue_granularities() if need else [(1, 1)]):
                    yield (f"grad_epilogue {t} tile={tile} GBN={gbn} GBK={gbk} need_mask_grad={need} bias={bias}",
                           grad_epilogue_kernel, ep_sig,
                           {"NEED_MASK_GRAD": need, "BIAS_GRAD": bias, "BN": tile, "BK": tile, "GBN": gbn,
                            "GBK": gbk}, ["N", "K"], 4, 3)
