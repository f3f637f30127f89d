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

Which path runs (``plan``), from the mask as the host sees it (the count of its nonzeros and whether it is
binary, one C++ pass, only when the answer depends on them):

- ``"blocks"``: block sides both multiples of 16 (16, 32, 64 and their multiples) and the fraction of kept
  (nonzero) mask blocks at most ``MAX_BLOCK_DENSITY[function]`` (0.6 forward and grad_input, 0.5 grad_weight
  without the mask gradient), or ``MAX_BLOCK_DENSITY_AMX_BF16`` where the dense path is a bfloat16 product on
  AMX (0.1 forward / grad_input with a binary mask, 0.07 grad_weight): the C++ block-sparse kernels, which
  never read a zero block's weights and do no FLOPs for it.
- ``"rows"`` / ``"columns"``: whole rows (bi == K) or whole columns (bo == N), kept fraction at most
  ``MAX_GATHER_DENSITY`` (0.7): the kept rows / columns are gathered and a smaller dense product runs.
- ``"dense"``: everything else (unstructured (1, 1) masks, other block sides, higher densities):
  ``W * expand(M)`` then one dense product, the eager computation, in tiles of at least ``DENSE_MIN_TILE``.
  Its products run in the accumulation dtype, except forward and grad_input in 16 bits with a binary mask
  (W * M is then exact in 16 bits, and torch's 16-bit product sums in float32 and rounds once) and bfloat16's
  G = dy^T @ x (torch's oneDNN bfloat16 micro-kernel: the float32 sums of exact products).

The thresholds are where the block kernels stop beating the dense path, measured per function (1024 tokens,
FFN shapes 3072 x 768 and 768 x 3072, one thread, CPU time, on the project's 2-core AVX-512 / AMX Xeon; "a / b"
= block kernels / dense path in ms, float32 unless said):

    32 x 32 blocks, 3072 x 768   forward        grad_input     grad_weight (kept blocks only)
      density 0.1                6.7 / 33.8     5.7 / 29.6     7.5 / 29.6
      density 0.3               13.5 / 33.0    12.9 / 28.0    14.3 / 28.9
      density 0.5               21.1 / 32.8    20.9 / 29.0    21.8 / 29.1
      density 0.7               28.9 / 33.3    28.3 / 27.6    28.9 / 28.8
    crossover by block side      16: ~0.65, 32: ~0.7, 64: ~0.75   16: ~0.5, 32: ~0.6, 64: ~0.65
    float64, float16 (32 x 32)   ~0.6-0.7 both shapes             ~0.6
    bfloat16 + AMX, density 0.1  3072 x 768: forward 4.6 / 4.9, grad_input 4.1 / 4.9, grad_weight 6.8 / 8.2;
      (binary mask)              768 x 3072: forward 4.4 / 5.3, grad_input 4.0 / 4.1, grad_weight 9.0 / 7.0
    rows / columns gathers       0.5: 1.4-1.7x faster than dense, 0.75: 0.9-1.25x, 0.9: 0.75-1.05x

Against eager torch (``F.linear(x, W * expand(M), b)`` and its autograd with W, M, x, b requiring grad) on two
threads, float32, 1024 tokens, min of 15 interleaved runs, eager / these launchers in ms:

    32 x 32 blocks, density 0.1, forward          3072 x 768: 13.2 / 2.9 (4.6x)    768 x 3072: 14.6 / 2.5 (5.9x)
      forward + grad_input + grad_weight(mask)    3072 x 768: 52.9 / 20.1 (2.6x)   768 x 3072: 44.6 / 20.4 (2.2x)
    32 x 32 blocks, density 1.0, forward          13.9 / 13.5 (1.03x)              13.6 / 13.1 (1.04x)
      forward + backward                          43.4 / 41.3 (1.05x)              42.4 / 42.6 (0.99x)
    (1, 1) mask, density 0.1 / 0.5, forward       0.99x / 1.11x                    1.05x / 1.08x
      forward + backward                          1.04x / 1.02x                    0.99x / 1.02x
"""
from __future__ import annotations

import functools
from typing import Optional, Sequence, Tuple

import torch

from .cpu_extension import extension
from .dtypes import SIXTEEN_BIT, SUPPORTED_DTYPES, acc_dtype, empty_tensor
from .layout import output_like, workspace

# Highest kept-block fraction at which the block kernels beat the dense path (measured, see the module doc).
MAX_BLOCK_DENSITY = {"forward": 0.6, "grad_input": 0.6, "grad_weight": 0.5}
# The same where the dense path is a bfloat16 product on a CPU with AMX: forward / grad_input with a binary mask
# (W * M is then exact in bfloat16), grad_weight's G = dy^T @ x (bfloat16 products summed in float32, see
# ml_mm_bf16). Those products are 5-6x faster than float32's; the block kernels compute in float32.
MAX_BLOCK_DENSITY_AMX_BF16 = {"forward": 0.1, "grad_input": 0.1, "grad_weight": 0.07}
# The dense products are cut along one output dimension into an even number of tiles at least this wide (two
# halves of a dimension from 256 up to twice as long), each one single-threaded BLAS call: thread-count-independent
# results (see ml_mm in the C++ source).
DENSE_MIN_TILE = 1024
# Highest kept fraction at which gathering whole rows / columns beats the dense path.
MAX_GATHER_DENSITY = 0.7


@functools.lru_cache(maxsize=None)
def has_amx_bf16() -> bool:
    """Whether this CPU multiplies bfloat16 matrices with AMX (Linux: the amx_bf16 cpuinfo flag)."""
    try:
        with open("/proc/cpuinfo") as f:
            return any(line.startswith("flags") and " amx_bf16" in line for line in f)
    except OSError:
        return False


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


def mask_stats(mask: torch.Tensor) -> Tuple[float, bool]:
    """(fraction of nonzero mask values, whether all are 0 or 1), in one pass over the mask."""
    if mask.numel() == 0:
        return 0.0, True
    mask = mask.detach()
    if not mask.dtype.is_floating_point or mask.dtype not in (torch.float32, torch.float64):
        mask = mask.float()
    count, binary = extension().ml_mask_stats(mask.contiguous())
    return count / mask.numel(), bool(binary)


def product_dtype(dtype: torch.dtype, mask: torch.Tensor) -> torch.dtype:
    """The dtype of the dense products of forward and grad_input: the 16-bit dtype itself when the mask is
    binary (then W * M is exact in it, and torch's 16-bit product accumulates in float32 and rounds once),
    else the accumulation dtype."""
    return dtype if dtype in SIXTEEN_BIT and mask_stats(mask)[1] else acc_dtype(dtype)


def _plan(function: str, weight_shape, block_shape, mask: torch.Tensor, dtype: torch.dtype):
    """(path, dtype of the dense products); the mask is only looked at when the answer depends on it."""
    N, K = weight_shape
    bo, bi = (int(s) for s in block_shape)
    acc = acc_dtype(dtype)
    gather = bi == K or bo == N
    blocks = bo % 16 == 0 and bi % 16 == 0
    sixteen = dtype in SIXTEEN_BIT and function != "grad_weight"
    if not (gather or blocks or sixteen):
        return "dense", acc
    density, binary = mask_stats(mask)
    pd = dtype if sixteen and binary else acc
    if gather:
        return ("rows" if bi == K else "columns") if density <= MAX_GATHER_DENSITY else "dense", pd
    limit = MAX_BLOCK_DENSITY[function]
    if (function == "grad_weight" and _g_in_bf16(dtype, K)) or (pd == torch.bfloat16 and has_amx_bf16()):
        limit = MAX_BLOCK_DENSITY_AMX_BF16[function]
    return ("blocks" if blocks and density <= limit else "dense"), pd


def plan(function: str, weight_shape, block_shape, mask: torch.Tensor, dtype: torch.dtype = torch.float32) -> str:
    """The path ``function`` ("forward", "grad_input", "grad_weight") takes for this mask and dtype: "blocks",
    "rows", "columns" or "dense" (see the module doc). ``grad_weight`` with the mask gradient always computes
    the dense G = dy^T @ x (the mask gradient needs it everywhere), so its plan is about need_mask_grad=False."""
    return _plan(function, weight_shape, block_shape, mask, dtype)[0]


def _masked_weight(weight: torch.Tensor, mask: torch.Tensor, bo: int, bi: int, dtype: torch.dtype) -> torch.Tensor:
    """W * expand(M) in ``dtype``, one broadcast multiply."""
    N, K = weight.shape
    w = weight.to(dtype).view(N // bo, bo, K // bi, bi)
    return (w * mask.to(dtype).view(N // bo, 1, K // bi, 1)).view(N, K)


def _kept_index(mask_line: torch.Tensor, side: int) -> Tuple[torch.Tensor, torch.Tensor]:
    """(indices of the kept rows / columns, their mask values), one entry per row / column of W."""
    blocks = torch.nonzero(mask_line).squeeze(1)
    idx = (blocks.unsqueeze(1) * side + torch.arange(side)).reshape(-1)
    return idx, mask_line.index_select(0, blocks).repeat_interleave(side)


@functools.lru_cache(maxsize=None)
def has_bf16_brgemm() -> bool:
    """Whether torch's oneDNN bfloat16 micro-kernel (bfloat16 products summed in float32) runs here."""
    return bool(extension().ml_has_bf16_brgemm())


def _g_in_bf16(dtype: torch.dtype, K: int) -> bool:
    return dtype == torch.bfloat16 and K % 16 == 0 and has_bf16_brgemm()


def _g_product(dy2d: torch.Tensor, x2d: torch.Tensor, acc: torch.dtype) -> torch.Tensor:
    """G = dy^T @ x (N, K) in the accumulation dtype: from bfloat16 operands on the bfloat16 units where they
    run (the same float32 sums of exact products), else a product of the operands in the accumulation dtype."""
    T, N = dy2d.shape
    K = x2d.shape[1]
    g = workspace((N, K), acc, "cpu")
    if _g_in_bf16(dy2d.dtype, K):
        even = T + T % 2  # the micro-kernel sums pairs of tokens: an odd count gets a zero token
        dyt = (torch.zeros if T % 2 else torch.empty)((N, even), dtype=dy2d.dtype)
        dyt[:, :T] = dy2d.t()
        xe = x2d if T % 2 == 0 else torch.cat([x2d, x2d.new_zeros(1, K)])
        extension().ml_mm_bf16(dyt, xe.contiguous(), g)
        return g
    return _mm(dy2d.to(acc).t(), x2d.to(acc), g)


def _mm(a: torch.Tensor, b: torch.Tensor, out: torch.Tensor, bias: Optional[torch.Tensor] = None) -> torch.Tensor:
    extension().ml_mm(a, b, empty_tensor(out.dtype) if bias is None else bias, out, DENSE_MIN_TILE)
    return out


def _out_in(out: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """Where a dense product in ``dtype`` goes: ``out`` itself when it has that dtype."""
    return out if out.dtype == dtype else torch.empty(out.shape, dtype=dtype)


def _finish(y: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
    if y is not out:
        out.copy_(y)
    return out


def forward(x2d: torch.Tensor, weight: torch.Tensor, mask: torch.Tensor, bias: Optional[torch.Tensor],
            block_shape) -> torch.Tensor:
    bo, bi = _check(weight, mask, block_shape, x2d)
    weight, mask, acc = _prep(weight, mask)
    x2d = x2d.detach().contiguous()
    T, K = x2d.shape
    N = weight.shape[0]
    if K != weight.shape[1]:
        raise ValueError(f"masked_linear: input has {K} features, weight expects {weight.shape[1]}")
    if bias is not None and tuple(bias.shape) != (N,):
        raise ValueError(f"masked_linear: bias shape {tuple(bias.shape)} != {(N,)}")
    out = output_like(x2d, (T, N))
    if T == 0:
        return out
    path, pd = _plan("forward", weight.shape, (bo, bi), mask, x2d.dtype)
    if path == "blocks":
        b = empty_tensor(acc) if bias is None else bias.detach().to(acc).contiguous()
        extension().ml_forward(x2d, weight, mask, b, bo, bi, out)
        return out
    b = None if bias is None else bias.detach().to(pd).contiguous()
    if path == "rows":
        idx, m = _kept_index(mask[:, 0], bo)
        wk = weight.index_select(0, idx).to(pd) * m.to(pd).unsqueeze(1)
        yk = _mm(x2d.to(pd), wk.t(), torch.empty(T, idx.numel(), dtype=pd),
                 None if b is None else b.index_select(0, idx))
        if b is None:
            out.zero_()
        else:
            out.copy_(b.unsqueeze(0).expand(T, N))
        out.index_copy_(1, idx, yk.to(out.dtype))
        return out
    if path == "columns":
        idx, m = _kept_index(mask[0], bi)
        wk = weight.index_select(1, idx).to(pd) * m.to(pd).unsqueeze(0)
        return _finish(_mm(x2d.index_select(1, idx).to(pd), wk.t(), _out_in(out, pd), b), out)
    return _finish(_mm(x2d.to(pd), _masked_weight(weight, mask, bo, bi, pd).t(), _out_in(out, pd), b), out)


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
    path, pd = _plan("grad_input", weight.shape, (bo, bi), mask, dy2d.dtype)
    if path == "blocks":
        extension().ml_grad_input(dy2d, weight, mask, bo, bi, out)
        return out
    if path == "rows":
        idx, m = _kept_index(mask[:, 0], bo)
        wk = weight.index_select(0, idx).to(pd) * m.to(pd).unsqueeze(1)
        return _finish(_mm(dy2d.index_select(1, idx).to(pd), wk, _out_in(out, pd)), out)
    if path == "columns":
        idx, m = _kept_index(mask[0], bi)
        wk = weight.index_select(1, idx).to(pd) * m.to(pd).unsqueeze(0)
        yk = _mm(dy2d.to(pd), wk, torch.empty(T, idx.numel(), dtype=pd))
        out.zero_()
        out.index_copy_(1, idx, yk.to(out.dtype))
        return out
    return _finish(_mm(dy2d.to(pd), _masked_weight(weight, mask, bo, bi, pd), _out_in(out, pd)), out)


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
    path = "dense" if need_mask_grad else plan("grad_weight", weight.shape, (bo, bi), mask, weight.dtype)
    if path == "blocks":
        extension().ml_grad_weight_kept(dy2d.to(acc).contiguous(), x2d.to(acc).contiguous(), mask, bo, bi, gw)
    elif path == "rows":
        idx, m = _kept_index(mask[:, 0], bo)
        gk = _mm(dy2d.index_select(1, idx).to(acc).t(), x2d.to(acc), torch.empty(idx.numel(), K, dtype=acc))
        gw.zero_()
        gw.index_copy_(0, idx, (gk * m.unsqueeze(1)).to(gw.dtype))
    elif path == "columns":
        idx, m = _kept_index(mask[0], bi)
        gk = _mm(dy2d.to(acc).t(), x2d.index_select(1, idx).to(acc), torch.empty(N, idx.numel(), dtype=acc))
        gw.zero_()
        gw.index_copy_(1, idx, (gk * m.unsqueeze(0)).to(gw.dtype))
    else:
        g = _g_product(dy2d, x2d, acc)
        extension().ml_grad_epilogue(g, weight, mask, bo, bi, gw, empty_tensor(acc) if gm is None else gm)
    return gw, gm
