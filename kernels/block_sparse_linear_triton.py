"""Triton kernel of the block-sparse linear layer (inference): ``y = x @ W^T + b`` with ``W`` (N, K) in BSR form,
its kept ``(bo, bi)`` blocks only: ``crow`` (N // bo + 1), ``col`` (nnz), ``values`` (nnz, bo, bi).

``bsr_linear_kernel``: one program per (BN-wide slice of a block row, token tile). It loops over
that row's kept blocks only (``crow[i] .. crow[i + 1]``) and, within a block, over BK-wide steps of its input
side: ``acc += x[tile, block columns] @ values[e]^T``; then the bias epilogue and one rounding to x's dtype.

Tile sides come from the block shape (``tile_side``): a side of 16, 32 or 64 is its own tile, so a 16/32/64
block is one ``tl.dot``; a longer side that 64, 32 or 16 divides is walked in such tiles. Then every load and
store inside a block is unmasked (``EVEN``), and with 16-divisible sizes they are 16-byte vector accesses. Any
other side (1, a whole row or column, 20, ...) takes the generic path: the next power of two up to 64 (at least
16, ``tl.dot``'s minimum), masked at the block's edge; correct for every block shape, not fast for tiny ones.

Accumulation is float32 (``tl.dot`` with ``ieee`` precision for float32 inputs, as PyTorch's default float32
matmul); float16 / bfloat16 operands go to the tensor cores.
"""
from __future__ import annotations

from typing import Optional, Tuple

import torch
import triton
import triton.language as tl

from .device_guard import on_tensor_device
from .dtypes import check_interpreter_mode, triton_dtype, triton_interpreting
from .layout import cdiv
# the float32-accumulating dot (with the interpreter's bfloat16 workaround), shared
from .masked_linear_triton import _dot, _dot_f32  # noqa: F401  (_dot is called by the kernel)


@triton.jit
def bsr_linear_kernel(x_ptr, crow_ptr, col_ptr, v_ptr, bias_ptr, y_ptr, M, N, K, bo, bi, n_sub, n_r,
                      HAS_BIAS: tl.constexpr, EVEN: tl.constexpr, IEEE: tl.constexpr, DOT_F32: tl.constexpr,
                      BM: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr):
    """``y[m, i * bo + n] = sum over kept blocks e of row i, k < bi: x[m, col[e] * bi + k] * values[e, n, k]``
    (+ bias), for the tokens of tile ``pid // n_r`` and the outputs ``n`` of slice ``(pid % n_r) % n_sub`` of
    block row ``(pid % n_r) // n_sub`` (``pid = program_id(0)``: one grid axis, whose limit is 2**31 - 1, not
    the 65535 of the others). ``x`` (M, K) and ``y`` (M, N) contiguous, ``values`` contiguous.
    ``EVEN``: ``bo % BN == 0`` and ``bi % BK == 0`` (no masks inside a block)."""
    pid = tl.program_id(0)
    pid_r = pid % n_r  # block rows first: a token tile's programs run together and share it in L2
    pid_m = pid // n_r
    dtype = y_ptr.dtype.element_ty
    i = pid_r // n_sub
    sub = pid_r % n_sub
    rm = pid_m.to(tl.int64) * BM + tl.arange(0, BM)
    m_ok = rm < M
    ln = sub * BN + tl.arange(0, BN)  # outputs of the slice, within the block row
    rk = tl.arange(0, BK)
    n_ok = ln < bo
    start = tl.load(crow_ptr + i)
    end = tl.load(crow_ptr + i + 1)
    acc = tl.zeros([BM, BN], dtype=tl.float32)
    v_off = start.to(tl.int64) * bo * bi  # where block e starts in values (int64: nnz * bo * bi may pass 2**31)
    for e in range(start, end):
        j = tl.load(col_ptr + e).to(tl.int64)
        x_blk = x_ptr + rm[:, None] * K + j * bi
        v_blk = v_ptr + v_off + ln[None, :] * bi
        v_off += bo * bi
        for k0 in range(0, bi, BK):
            kk = k0 + rk
            # x tiles are re-read by every block row that keeps them: kept in L2 longer than the output
            if EVEN:
                a = tl.load(x_blk + kk[None, :], mask=m_ok[:, None], other=0.0, eviction_policy="evict_last")
                b = tl.load(v_blk + kk[:, None])  # (BK, BN): values[e, n, k] read along k
            else:
                k_ok = kk < bi
                a = tl.load(x_blk + kk[None, :], mask=m_ok[:, None] & k_ok[None, :], other=0.0,
                            eviction_policy="evict_last")
                b = tl.load(v_blk + kk[:, None], mask=k_ok[:, None] & n_ok[None, :], other=0.0)
            acc = _dot(a, b, acc, IEEE, DOT_F32)
    rn = i.to(tl.int64) * bo + ln
    if HAS_BIAS:
        if EVEN:
            acc += tl.load(bias_ptr + rn).to(tl.float32)[None, :]
        else:
            acc += tl.load(bias_ptr + rn, mask=n_ok, other=0.0).to(tl.float32)[None, :]
    if EVEN:
        tl.store(y_ptr + rm[:, None] * N + rn[None, :], acc.to(dtype), mask=m_ok[:, None],
                 eviction_policy="evict_first")
    else:
        tl.store(y_ptr + rm[:, None] * N + rn[None, :], acc.to(dtype), mask=m_ok[:, None] & n_ok[None, :],
                 eviction_policy="evict_first")


# ----------------------------------------------------------------------------------------------------------
# Tiles
# ----------------------------------------------------------------------------------------------------------
# Tiles measured on an H100 (bfloat16, 4096 tokens, BERT-base shapes, 32x32 blocks at density 0.1;
# benchmarks/results/masked_linear_sweep_*.md): 128 tokens, 4 warps, 2 stages is the best of 64/128/256 x 4/8 x
# 2/3/4 (3 stages, the default before: 10-30% slower); L2 eviction hints (x loads evict_last, output stores
# evict_first) gained 4-6% on the FFN shapes.
BM = 128     # tokens per program (a 128 x 32 output tile per 32 x 32 block row slice)
STAGES = 2   # software-pipeline stages


def _warps(bm: int, bn: int) -> int:
    return 4 if bm * bn <= 64 * 64 else 8
SIDE_CHOICES = (64, 32, 16)


def tile_side(side: int) -> int:
    """The tile along a block side: the largest of 64, 32, 16 dividing it (a 16/32/64 side is its own tile),
    else the next power of two, between 16 and 64 (the generic path, masked at the block's edge)."""
    for s in SIDE_CHOICES:
        if side % s == 0:
            return s
    return min(64, max(16, triton.next_power_of_2(side)))


def tiles(block_shape):
    """``(BN, BK, EVEN)`` for a ``(bo, bi)`` block shape."""
    bo, bi = block_shape
    bn, bk = tile_side(bo), tile_side(bi)
    return bn, bk, bo % bn == 0 and bi % bk == 0


_INTERPRETED = triton_interpreting()


def _check(x: torch.Tensor) -> None:
    if x.device.type == "cpu":
        check_interpreter_mode(_INTERPRETED)
    if x.dtype == torch.float64:
        raise TypeError("block_sparse_linear: the Triton kernel has no float64 path (use the cpu or reference backend)")


# ----------------------------------------------------------------------------------------------------------
# Launcher (validated by bermo.ops.block_sparse_linear): 2-D x, indices checked
# ----------------------------------------------------------------------------------------------------------
@on_tensor_device
def forward(x2d: torch.Tensor, crow: torch.Tensor, col: torch.Tensor, values: torch.Tensor,
            bias: Optional[torch.Tensor], out_features: int) -> torch.Tensor:
    return forward_with(x2d, (crow, col, values, out_features), bias)


@on_tensor_device
def forward_with(x2d: torch.Tensor, bsr, bias: Optional[torch.Tensor],
                 config: Optional[Tuple[int, int, int]] = None) -> torch.Tensor:
    """``forward`` with ``bsr = (crow, col, values, out_features)``; ``config`` = (tokens per program, warps,
    stages) overrides ``BM``, the warp rule and ``STAGES`` (tile sweeps)."""
    crow, col, values, out_features = bsr
    _check(x2d)
    x2d = x2d.detach()
    if not x2d.is_contiguous():
        x2d = x2d.contiguous()
    M, K = x2d.shape
    N = out_features
    nnz, bo, bi = values.shape
    y = torch.empty((M, N), dtype=x2d.dtype, device=x2d.device)
    if M == 0 or N == 0:
        return y
    v = values.detach().contiguous()
    crow32 = crow.detach().to(torch.int32).contiguous()
    col32 = col.detach().to(torch.int32).contiguous()
    if nnz == 0:  # no blocks: an empty values tensor has no storage to hand the kernel
        v = torch.zeros(1, dtype=x2d.dtype, device=x2d.device)
        col32 = torch.zeros(1, dtype=torch.int32, device=x2d.device)
    bn, bk, even = tiles((bo, bi))
    bm, warps, stages = config or (BM, _warps(BM, bn), STAGES)
    n_sub = cdiv(bo, bn)
    n_r = (crow32.numel() - 1) * n_sub
    grid = (n_r * cdiv(M, bm),)
    bsr_linear_kernel[grid](x2d, crow32, col32, v, bias if bias is not None else y, y, M, N, K, bo, bi, n_sub, n_r,
                            HAS_BIAS=bias is not None, EVEN=even, IEEE=x2d.dtype == torch.float32,
                            DOT_F32=_dot_f32(x2d), BM=bm, BN=bn, BK=bk, num_warps=warps, num_stages=stages)
    return y


# ----------------------------------------------------------------------------------------------------------
# Every configuration the launcher can pick, for the ahead-of-time compile check (kernels/compile.py).
# ----------------------------------------------------------------------------------------------------------
def compile_configurations():
    """Yield ``(label, kernel, signature, constexprs, attrs_div16_arg_names, num_warps, num_stages)``.

    ``EVEN`` configurations are labelled ``aligned=True`` (with the generic twin ``aligned=False``), so the
    compile check asserts that they read and write in 16-byte vectors; they are compiled with the sizes
    divisible by 16 (what Triton's specialisation sees at run time when they are)."""
    for dtype in (torch.float16, torch.bfloat16, torch.float32):
        t = str(triton_dtype(dtype))
        for bn in SIDE_CHOICES:
            for bk in SIDE_CHOICES:
                for even in (True, False):
                    for has_bias in (True, False):
                        sig = {"x_ptr": f"*{t}", "crow_ptr": "*i32", "col_ptr": "*i32", "v_ptr": f"*{t}",
                               "bias_ptr": f"*{t}", "y_ptr": f"*{t}", "M": "i32", "N": "i32", "K": "i32",
                               "bo": "i32", "bi": "i32", "n_sub": "i32", "n_r": "i32", "HAS_BIAS": "constexpr",
                               "EVEN": "constexpr", "IEEE": "constexpr", "DOT_F32": "constexpr", "BM": "constexpr",
                               "BN": "constexpr", "BK": "constexpr"}
                        bm, warps, stages = BM, _warps(BM, bn), STAGES
                        constexprs = {"HAS_BIAS": has_bias, "EVEN": even, "IEEE": dtype == torch.float32,
                                      "DOT_F32": False, "BM": bm, "BN": bn, "BK": bk}
                        label = (f"block_sparse_linear {t} BLOCK_R={bm} BLOCK_C={bn} BK={bk} warps={warps} "
                                 f"bias={has_bias} aligned={even}")
                        div16 = ["N", "K", "bo", "bi"] if even else ["N", "K"]
                        yield label, bsr_linear_kernel, sig, constexprs, div16, warps, stages
                        if even and bn == bk:
                            # Square blocks of one tile side (16/32/64: the common case) launch with n_sub == 1,
                            # which Triton specialises into a constant at run time: compile that variant too.
                            yield (label + " n_sub=1", bsr_linear_kernel, dict(sig, n_sub="constexpr"),
                                   dict(constexprs, n_sub=1), div16, warps, stages)
