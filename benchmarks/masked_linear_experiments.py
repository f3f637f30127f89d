"""Candidate block-skipping forward kernels, not yet measured on a GPU: timed against the package's kernel by
``benchmarks/masked_linear_sweep.py --experiments`` (the next session with a GPU runs it; a candidate that wins
moves into ``bermo/kernels/masked_linear_triton.py``).

Why: the package's forward is bound by L2 traffic. Each kept 32x32 block re-reads a (token tile x 32) tile of
the activations, ~60 MB per FFN layer at density 0.1 (GPU_NOTES, call 7), about 2.3x the HBM traffic of the
layer. ``rows_per_program_kernel`` gives one program a token tile and ``R`` consecutive block rows, walked one
after the other, with the activation tiles read through L1 (``cache_modifier=".ca"``): the R rows keep mostly
the same columns' worth of activations between them (at density 0.1, 24 rows of a 768-wide layer keep ~22 of its
24 block columns), so after the first row most re-reads can hit L1 instead of L2. It pays with fewer programs
(less latency hiding) and short per-row loops; only a measurement settles it.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from bermo.kernels.masked_linear_paths import sparse_tile
from bermo.kernels.masked_linear_triton import _dot, _dot_f32


@triton.jit
def rows_per_program_kernel(a_ptr, w_ptr, mask_ptr, bias_ptr, c_ptr, M, N, K, mask_cols, block_j, block_t,
                            n_t_tiles, n_j_tiles, HAS_BIAS: tl.constexpr, IEEE: tl.constexpr,
                            DOT_F32: tl.constexpr, CACHE_L1: tl.constexpr, R: tl.constexpr, CHUNK: tl.constexpr,
                            BM: tl.constexpr, BS: tl.constexpr):
    """Forward ``C = A @ (W * M)^T (+ bias)``: program (m, g) computes the (BM, BS) output tiles of tile rows
    ``g * R .. g * R + R - 1`` (each tile inside one mask block), each over its kept t-tiles (listed in the
    program: a prefix sum over the row's mask values)."""
    pid_m = tl.program_id(0)
    pid_g = tl.program_id(1)
    dtype = c_ptr.dtype.element_ty
    rm = pid_m.to(tl.int64) * BM + tl.arange(0, BM)
    m_ok = rm < M
    t_idx = tl.arange(0, CHUNK)
    t_ok = t_idx < n_t_tiles
    for r in range(R):
        jt = pid_g * R + r
        if jt < n_j_tiles:
            rj = jt.to(tl.int64) * BS + tl.arange(0, BS)
            mrow = mask_ptr + ((jt * BS) // block_j) * mask_cols
            mv = tl.load(mrow + (t_idx * BS) // block_t, mask=t_ok, other=0.0)
            keep = ((mv != 0) & t_ok).to(tl.int32)
            pos = tl.where(keep != 0, tl.cumsum(keep, 0) - keep, -1)
            acc = tl.zeros([BM, BS], dtype=tl.float32)
            for i in range(tl.sum(keep, 0)):
                tt = tl.sum(tl.where(pos == i, t_idx, 0), 0)
                scale = tl.sum(tl.where(pos == i, mv, 0.0), 0)
                rt = tt.to(tl.int64) * BS + tl.arange(0, BS)
                if CACHE_L1:
                    a = tl.load(a_ptr + rm[:, None] * K + rt[None, :], mask=m_ok[:, None], other=0.0,
                                cache_modifier=".ca")
                else:
                    a = tl.load(a_ptr + rm[:, None] * K + rt[None, :], mask=m_ok[:, None], other=0.0)
                b = tl.load(w_ptr + rj[None, :] * K + rt[:, None])
                b = (b.to(tl.float32) * scale).to(b.dtype)
                acc = _dot(a, b, acc, IEEE, DOT_F32)
            if HAS_BIAS:
                acc += tl.load(bias_ptr + rj).to(tl.float32)[None, :]
            tl.store(c_ptr + rm[:, None] * N + rj[None, :], acc.to(dtype), mask=m_ok[:, None])


def rows_per_program_forward(x2d: torch.Tensor, weight: torch.Tensor, mask: torch.Tensor, bias, block_shape,
                             rows: int = 8, bm: int = 128, warps: int = 4, stages: int = 2,
                             cache_l1: bool = True) -> torch.Tensor:
    """``x2d @ (weight * expand(mask)).T + bias`` by ``rows_per_program_kernel``; ``mask`` float32, compact."""
    N, K = weight.shape
    M = x2d.shape[0]
    side = sparse_tile(block_shape)
    y = torch.empty((M, N), dtype=x2d.dtype, device=x2d.device)
    n_j, n_t = N // side, K // side
    grid = (triton.cdiv(M, bm), triton.cdiv(n_j, rows))
    rows_per_program_kernel[grid](x2d, weight, mask, bias if bias is not None else y, y, M, N, K, mask.shape[1],
                                  block_shape[0], block_shape[1], n_t, n_j, HAS_BIAS=bias is not None,
                                  IEEE=x2d.dtype == torch.float32, DOT_F32=_dot_f32(x2d), CACHE_L1=cache_l1,
                                  R=rows, CHUNK=max(16, triton.next_power_of_2(n_t)), BM=bm, BS=side,
                                  num_warps=warps, num_stages=stages)
    return y


# (rows per program, tokens per program, warps, stages, activations through L1) for the sweep
CANDIDATES = [(r, bm, 4, 2, l1) for r in (1, 4, 8, 24) for bm in (64, 128) for l1 in (True, False)
              if not (r == 1 and l1)]
