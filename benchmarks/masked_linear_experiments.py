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

``flat_rows_kernel`` goes further: one long, software-pipelined loop per program over every kept block of its
R block rows (a flat list, row after row), the accumulator stored and reset at the last block of each row, with
the activation tiles read through L1. The package's programs have 2.4 (FFN in) or 9.6 (FFN out) iterations at
density 0.1, too few for the pipeline to hide the L2 latency; here a program has ~R times as many, so fewer,
longer programs: with 64-token tiles and R ~ half the block rows, ~128 programs (one per multiprocessor) each keep
their token tile's activations in L1 (96 KB for a 768-wide input), and the L2 traffic becomes the weight tiles
(~30 MB per FFN-in layer) instead of the activation tiles (~60 MB). The flat list (block-row pointers per group,
and per entry: tile column, tile row, mask value, last-of-its-row flag; a row with nothing kept gets one entry
with value 0, which stores its bias) is built here by the host; the same kernel serves BlockSparseLinear
(``VALUES``: weight tiles from the BSR values, whose order the list follows), where the list is fixed at
compression time. For the masked linear, whose mask changes every step, the list must be built on the device per
call, timed two ways: ``flat_list_kernel`` (one launch before the product: ``device_flat_lists``, entry for entry
the host's list) and ``flat_self_kernel`` (no second launch: each program lists its own group's tiles into a
scratch region, then walks them; the programs of a group write identical values there).
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


@triton.jit
def _flat_walk(a_ptr, w_ptr, bias_ptr, c_ptr, ft_ptr, fr_ptr, fs_ptr, fl_ptr, start, end, rm, m_ok, N, K,
               HAS_BIAS: tl.constexpr, IEEE: tl.constexpr, DOT_F32: tl.constexpr, CACHE_L1: tl.constexpr,
               VALUES: tl.constexpr, BRANCH: tl.constexpr, BM: tl.constexpr, BS: tl.constexpr):
    """The flat loop over list entries ``start .. end`` for the token rows ``rm`` (see ``flat_rows_kernel``)."""
    dtype = c_ptr.dtype.element_ty
    rs = tl.arange(0, BS)
    acc = tl.zeros([BM, BS], dtype=tl.float32)
    v_off = start.to(tl.int64) * (BS * BS)  # entry e's block in values (VALUES)
    for e in range(start, end):
        tt = tl.load(ft_ptr + e).to(tl.int64)
        jt = tl.load(fr_ptr + e).to(tl.int64)
        scale = tl.load(fs_ptr + e)
        last = tl.load(fl_ptr + e)
        rt = tt * BS + rs
        rj = jt * BS + rs
        if CACHE_L1:
            a = tl.load(a_ptr + rm[:, None] * K + rt[None, :], mask=m_ok[:, None], other=0.0, cache_modifier=".ca")
        else:
            a = tl.load(a_ptr + rm[:, None] * K + rt[None, :], mask=m_ok[:, None], other=0.0,
                        eviction_policy="evict_last")
        if VALUES:  # values[e, n, k]: B[k, n]
            b = tl.load(w_ptr + v_off + rs[None, :] * BS + rs[:, None])
            v_off += BS * BS
        else:       # B[t, j] = W[j, t]
            b = tl.load(w_ptr + rj[None, :] * K + rt[:, None])
        b = (b.to(tl.float32) * scale).to(b.dtype)
        acc = _dot(a, b, acc, IEEE, DOT_F32)
        if BRANCH:
            if last != 0:
                out = acc
                if HAS_BIAS:
                    out += tl.load(bias_ptr + rj).to(tl.float32)[None, :]
                tl.store(c_ptr + rm[:, None] * N + rj[None, :], out.to(dtype), mask=m_ok[:, None],
                         eviction_policy="evict_first")
                acc = tl.zeros([BM, BS], dtype=tl.float32)
        else:
            is_last = (tl.zeros([BM], dtype=tl.int32) + last) != 0  # as a vector: the interpreter's masks must be
            out = acc
            if HAS_BIAS:
                out += tl.load(bias_ptr + rj).to(tl.float32)[None, :]
            tl.store(c_ptr + rm[:, None] * N + rj[None, :], out.to(dtype), mask=(m_ok & is_last)[:, None],
                     eviction_policy="evict_first")
            acc = tl.where(is_last[:, None], 0.0, acc)


@triton.jit
def flat_rows_kernel(a_ptr, w_ptr, bias_ptr, c_ptr, gptr_ptr, ft_ptr, fr_ptr, fs_ptr, fl_ptr, M, N, K,
                     HAS_BIAS: tl.constexpr, IEEE: tl.constexpr, DOT_F32: tl.constexpr, CACHE_L1: tl.constexpr,
                     VALUES: tl.constexpr, BRANCH: tl.constexpr, BM: tl.constexpr, BS: tl.constexpr):
    """Forward ``C = A @ (W * M)^T (+ bias)``: program (m, g) walks entries ``gptr[g] .. gptr[g + 1]`` of the flat
    list for token tile m. Entry e: the (BS, BS) weight tile at tile row ``fr[e]`` and tile column ``ft[e]`` (or,
    with ``VALUES``, the e-th (BS, BS) block of ``w``, BSR values in list order), scaled by ``fs[e]``; when
    ``fl[e]`` the row is complete: bias added, stored, accumulator reset (``BRANCH``: in an ``if``; otherwise a
    predicated store and a select, no branch in the pipelined loop)."""
    pid_m = tl.program_id(0)
    pid_g = tl.program_id(1)
    rm = pid_m.to(tl.int64) * BM + tl.arange(0, BM)
    m_ok = rm < M
    start = tl.load(gptr_ptr + pid_g)
    end = tl.load(gptr_ptr + pid_g + 1)
    _flat_walk(a_ptr, w_ptr, bias_ptr, c_ptr, ft_ptr, fr_ptr, fs_ptr, fl_ptr, start, end, rm, m_ok, N, K,
               HAS_BIAS, IEEE, DOT_F32, CACHE_L1, VALUES, BRANCH, BM, BS)


@triton.jit
def _mask_tile(mask_ptr, rows, r_ok, cols, n_t, mask_cols, side, block_j, block_t):
    """``(values, keep)`` of the (rows x cols) tiles: tile (j, t) reads ``mask[(j * side) // block_j, (t * side)
    // block_t]``; ``keep`` int32, 0 outside the rows and the ``n_t`` columns."""
    ok = r_ok[:, None] & (cols < n_t)[None, :]
    v = tl.load(mask_ptr + ((rows * side) // block_j).to(tl.int64)[:, None] * mask_cols
                + ((cols * side) // block_t)[None, :], mask=ok, other=0.0)
    return v, ((v != 0) & ok).to(tl.int32)


@triton.jit
def _store_kept(ft_ptr, fr_ptr, fs_ptr, fl_ptr, row_off, rows, cols, v, keep, done, cnt):
    """The kept tiles of (rows x cols) as list entries: row r's at ``row_off[r] + done[r]`` on (``done``: its
    entries written before these columns; ``cnt``: its kept tiles in all, for the last flag). Returns ``done``
    plus these columns' kept tiles."""
    rank = done[:, None] + tl.cumsum(keep, axis=1) - keep
    pos = row_off[:, None] + rank
    kept = keep != 0
    tl.store(ft_ptr + pos, cols[None, :] + rows[:, None] * 0, mask=kept)
    tl.store(fr_ptr + pos, rows[:, None] + cols[None, :] * 0, mask=kept)
    tl.store(fs_ptr + pos, v, mask=kept)
    tl.store(fl_ptr + pos, (rank == cnt[:, None] - 1).to(tl.int32), mask=kept)
    return done + tl.sum(keep, axis=1)


@triton.jit
def _store_empty(ft_ptr, fr_ptr, fs_ptr, fl_ptr, row_off, rows, r_ok, cnt):
    """A kept-nothing row's one entry at ``row_off``: tile column 0, value 0, last (it stores the row's bias)."""
    empty = r_ok & (cnt == 0)
    tl.store(ft_ptr + row_off, rows * 0, mask=empty)
    tl.store(fr_ptr + row_off, rows, mask=empty)
    tl.store(fs_ptr + row_off, rows * 0.0, mask=empty)
    tl.store(fl_ptr + row_off, rows * 0 + 1, mask=empty)


@triton.jit
def flat_self_kernel(a_ptr, w_ptr, mask_ptr, bias_ptr, c_ptr, iscratch_ptr, fscratch_ptr, M, N, K, n_j, n_t,
                     mask_cols, block_j, block_t, R, n_groups,
                     HAS_BIAS: tl.constexpr, IEEE: tl.constexpr, DOT_F32: tl.constexpr, CACHE_L1: tl.constexpr,
                     BRANCH: tl.constexpr, RB: tl.constexpr, CT: tl.constexpr, BM: tl.constexpr, BS: tl.constexpr):
    """``flat_rows_kernel`` with no list launch before it: program (m, g) first lists its group's kept tiles
    itself (tile rows ``g * R ..``, RB at a time: a (RB, CT) load of the mask, prefix sums along and across the rows, an empty
    row's one entry of value 0) into the group's region of a scratch buffer (every token tile's program writes the
    same values there), then a barrier, then the same flat walk over them. Scratch: ``iscratch`` int32
    (3, n_groups * R * n_t) for tile column, tile row, last flag; ``fscratch`` float32 (n_groups * R * n_t) for
    the mask values."""
    pid_m = tl.program_id(0)
    pid_g = tl.program_id(1)
    rm = pid_m.to(tl.int64) * BM + tl.arange(0, BM)
    m_ok = rm < M
    cap = R * n_t
    total = n_groups.to(tl.int64) * cap
    base = pid_g.to(tl.int64) * cap
    ft_ptr = iscratch_ptr
    fr_ptr = iscratch_ptr + total
    fl_ptr = iscratch_ptr + 2 * total
    fs_ptr = fscratch_ptr
    rl = tl.arange(0, RB)
    tc = tl.arange(0, CT)
    n_entries = n_j * 0
    for r0 in range(0, R, RB):  # RB rows at a time: a few values per thread, not the whole group at once
        rows = pid_g * R + r0 + rl
        r_ok = (r0 + rl < R) & (rows < n_j)
        v, keep = _mask_tile(mask_ptr, rows, r_ok, tc, n_t, mask_cols, BS, block_j, block_t)
        cnt = tl.sum(keep, axis=1)
        slots = tl.where(r_ok, tl.maximum(cnt, 1), 0)
        row_off = base + n_entries + tl.cumsum(slots, 0) - slots
        _store_kept(ft_ptr, fr_ptr, fs_ptr, fl_ptr, row_off, rows, tc, v, keep, cnt * 0, cnt)
        _store_empty(ft_ptr, fr_ptr, fs_ptr, fl_ptr, row_off, rows, r_ok, cnt)
        n_entries += tl.sum(slots, 0)
    tl.debug_barrier()  # the program's own stores, visible to all its threads
    _flat_walk(a_ptr, w_ptr, bias_ptr, c_ptr, ft_ptr, fr_ptr, fs_ptr, fl_ptr, base, base + n_entries, rm,
               m_ok, N, K, HAS_BIAS, IEEE, DOT_F32, CACHE_L1, False, BRANCH, BM, BS)


SELF_LIST_CHUNK = 512  # mask values a flat_self_kernel program lists per step (more: registers past 110)


def flat_self_forward(x2d: torch.Tensor, weight: torch.Tensor, mask: torch.Tensor, bias, block_shape, rows: int,
                      bm: int = 64, warps: int = 4, stages: int = 3, cache_l1: bool = True, branch: bool = False,
                      side: int = 32) -> torch.Tensor:
    """``x2d @ (weight * expand(mask)).T + bias`` by ``flat_self_kernel`` (one launch; ``mask`` float32,
    compact; each program lists its group's kept tiles)."""
    N, K = weight.shape
    M = x2d.shape[0]
    n_j, n_t = N // side, K // side
    ct = max(16, triton.next_power_of_2(n_t))
    if ct > 1024:
        raise ValueError(f"flat_self_forward: {n_t} tiles per row is more than a program lists at once")
    rb = max(1, min(triton.next_power_of_2(rows), SELF_LIST_CHUNK // ct))
    n_groups = triton.cdiv(n_j, rows)
    y = torch.empty((M, N), dtype=x2d.dtype, device=x2d.device)
    iscratch = torch.empty(3 * n_groups * rows * n_t, dtype=torch.int32, device=x2d.device)
    fscratch = torch.empty(n_groups * rows * n_t, dtype=torch.float32, device=x2d.device)
    grid = (triton.cdiv(M, bm), n_groups)
    flat_self_kernel[grid](x2d, weight, mask, bias if bias is not None else y, y, iscratch, fscratch, M, N, K, n_j,
                           n_t, mask.shape[1], block_shape[0], block_shape[1], rows, n_groups,
                           HAS_BIAS=bias is not None, IEEE=x2d.dtype == torch.float32, DOT_F32=_dot_f32(x2d),
                           CACHE_L1=cache_l1, BRANCH=branch, RB=rb, CT=ct, BM=bm, BS=side, num_warps=warps,
                           num_stages=stages)
    return y


def flat_lists(mask: torch.Tensor, block_shape, rows: int, side: int = 32):
    """``(gptr, ft, fr, fs, fl, value_index)`` for ``flat_rows_kernel``: groups of ``rows`` tile rows, each
    row's kept tiles in increasing order (a row with none: one entry of value 0), from the compact float mask.
    ``value_index[e]``: entry e's block in the row-major list of kept blocks (BSR order; 0 for a row's
    placeholder entry). Host-built (a sync): an experiment's list, not the package's."""
    bo, bi = block_shape
    tiles = mask.float().repeat_interleave(bo // side, 0).repeat_interleave(bi // side, 1)
    keep = tiles != 0
    empty = ~keep.any(1)
    sel = keep.clone()
    sel[empty, 0] = True
    fr, ft = sel.nonzero(as_tuple=True)
    fs = tiles[fr, ft].float().contiguous()
    fl = torch.ones_like(fr, dtype=torch.int32)
    fl[:-1] = (fr[1:] != fr[:-1]).to(torch.int32)
    counts = sel.sum(1)
    row_ptr = torch.zeros(tiles.shape[0] + 1, dtype=torch.int64, device=mask.device)
    row_ptr[1:] = counts.cumsum(0)
    gptr = row_ptr[::rows]
    if gptr.numel() == 0 or gptr[-1].item() != row_ptr[-1].item():
        gptr = torch.cat([gptr, row_ptr[-1:]])
    value_index = (keep.flatten().cumsum(0) - 1).view_as(keep)[fr, ft].clamp_min(0)
    return (gptr.to(torch.int32), ft.to(torch.int32), fr.to(torch.int32), fs, fl, value_index)


def flat_rows_forward(x2d: torch.Tensor, weight: torch.Tensor, lists, bias, rows: int, bm: int = 64,
                      warps: int = 4, stages: int = 3, cache_l1: bool = True, branch: bool = False,
                      values: torch.Tensor = None, side: int = 32) -> torch.Tensor:
    """``x2d @ (W * M).T + bias`` by ``flat_rows_kernel`` over ``lists = flat_lists(mask, ..., rows)``; with
    ``values`` (``list_values``: one (side, side) block per list entry), the weight tiles come from them."""
    gptr, ft, fr, fs, fl, value_index = lists
    N, K = weight.shape
    M = x2d.shape[0]
    y = torch.empty((M, N), dtype=x2d.dtype, device=x2d.device)
    w = weight if values is None else values
    grid = (triton.cdiv(M, bm), gptr.numel() - 1)
    flat_rows_kernel[grid](x2d, w, bias if bias is not None else y, y, gptr, ft, fr, fs, fl, M, N, K,
                           HAS_BIAS=bias is not None, IEEE=x2d.dtype == torch.float32, DOT_F32=_dot_f32(x2d),
                           CACHE_L1=cache_l1, VALUES=values is not None, BRANCH=branch, BM=bm, BS=side,
                           num_warps=warps, num_stages=stages)
    return y


@triton.jit
def flat_list_kernel(mask_ptr, gptr_ptr, ft_ptr, fr_ptr, fs_ptr, fl_ptr, n_j, n_t, mask_cols, block_j, block_t,
                     side, R, RB: tl.constexpr, CT: tl.constexpr, ONE_PASS: tl.constexpr):
    """``flat_lists`` on the device, one program (a launch, no host sync): for the tile rows in chunks of ``RB``,
    the kept count of each (first pass over its ``CT``-wide column chunks; with ``ONE_PASS`` the whole row is one
    chunk, read once), the rows' entry offsets (a prefix sum over max(count, 1), carried across chunks), then
    the entries: tile column, tile row, mask value, last-of-its-row flag; an empty row's one entry has value 0.
    ``gptr[g]``: the first entry of group g (rows ``g * R ..``), ``gptr[n_groups]`` the total. Tile (j, t)
    reads ``mask[(j * side) // block_j, (t * side) // block_t]`` (every tile inside one mask block)."""
    carry = n_j * 0
    rr = tl.arange(0, RB)
    tc = tl.arange(0, CT)
    for j0 in range(0, n_j, RB):
        rows = j0 + rr
        r_ok = rows < n_j
        if ONE_PASS:
            v, keep = _mask_tile(mask_ptr, rows, r_ok, tc, n_t, mask_cols, side, block_j, block_t)
            cnt = tl.sum(keep, axis=1)
        else:
            cnt = tl.zeros([RB], dtype=tl.int32)
            for t0 in range(0, n_t, CT):
                v, keep = _mask_tile(mask_ptr, rows, r_ok, t0 + tc, n_t, mask_cols, side, block_j, block_t)
                cnt += tl.sum(keep, axis=1)
        slots = tl.where(r_ok, tl.maximum(cnt, 1), 0)
        row_off = carry + tl.cumsum(slots, 0) - slots
        tl.store(gptr_ptr + rows // R, row_off, mask=r_ok & (rows % R == 0))
        _store_empty(ft_ptr, fr_ptr, fs_ptr, fl_ptr, row_off, rows, r_ok, cnt)
        if ONE_PASS:
            _store_kept(ft_ptr, fr_ptr, fs_ptr, fl_ptr, row_off, rows, tc, v, keep, cnt * 0, cnt)
        else:
            done = cnt * 0
            for t0 in range(0, n_t, CT):
                v, keep = _mask_tile(mask_ptr, rows, r_ok, t0 + tc, n_t, mask_cols, side, block_j, block_t)
                done = _store_kept(ft_ptr, fr_ptr, fs_ptr, fl_ptr, row_off, rows, t0 + tc, v, keep, done, cnt)
        carry += tl.sum(slots, 0)
    tl.store(gptr_ptr + (n_j + R - 1) // R, carry)


ONE_PASS_MAX = 8192  # mask values a one-pass list build holds at once (RB x CT)


def device_flat_lists(mask: torch.Tensor, block_shape, rows: int, side: int = 32, rb: int = None, ct: int = None):
    """``flat_lists`` (without ``value_index``) built on the device by ``flat_list_kernel``: one launch, no host
    sync, capturable; the entry arrays hold room for every tile (entries past the total are unset). ``rb`` /
    ``ct`` override the chunk sizes (tests of the chunked path)."""
    bo, bi = block_shape
    N, K = mask.shape[0] * bo, mask.shape[1] * bi
    n_j, n_t = N // side, K // side
    cap = max(1, n_j * max(n_t, 1))
    dev = mask.device
    gptr = torch.empty(triton.cdiv(n_j, rows) + 1, dtype=torch.int32, device=dev)
    ft = torch.empty(cap, dtype=torch.int32, device=dev)
    fr = torch.empty(cap, dtype=torch.int32, device=dev)
    fs = torch.empty(cap, dtype=torch.float32, device=dev)
    fl = torch.empty(cap, dtype=torch.int32, device=dev)
    full_ct = max(16, triton.next_power_of_2(max(n_t, 1)))
    full_rb = max(16, triton.next_power_of_2(max(n_j, 1)))
    ct = ct or min(full_ct, 1024)
    rb = rb or max(1, min(full_rb, ONE_PASS_MAX // ct))
    one_pass = ct >= n_t
    flat_list_kernel[(1,)](mask, gptr, ft, fr, fs, fl, n_j, n_t, mask.shape[1], bo, bi, side, rows, RB=rb, CT=ct,
                           ONE_PASS=one_pass, num_warps=4)
    return gptr, ft, fr, fs, fl, None


def list_values(bsr_values: torch.Tensor, lists) -> torch.Tensor:
    """BSR values (kept blocks, row-major) in the flat list's order, a zero-scaled copy of block 0 for each
    placeholder: what BlockSparseLinear would store at compression time. The blocks must be the list's tiles
    (block shape (side, side))."""
    return bsr_values[lists[5].long()].contiguous()


# (rows per program, tokens per program, warps, stages, activations through L1, branch) for the sweep
# (4 stages with L1: with about one program per multiprocessor, the loads in flight per program bound the rate)
FLAT_CANDIDATES = [(r, bm, 4, st, l1, br) for r in (8, 24, 48) for bm in (64, 128) for st in (2, 3, 4)
                   for l1 in (True, False) for br in (False, True)
                   if not (br and (st != 3 or not l1)) and not (st == 4 and not l1)]
FLAT_SELF_CANDIDATES = [(r, bm, 4, 3, True, False) for r in (8, 24) for bm in (64, 128)]
FLAT_BSL_CANDIDATES = [(r, bm, 4, 3, True, False) for r in (8, 24, 48) for bm in (64, 128)]

# (rows per program, tokens per program, warps, stages, activations through L1) for the sweep
CANDIDATES = [(r, bm, 4, 2, l1) for r in (4, 24) for bm in (64, 128) for l1 in (True, False)]
