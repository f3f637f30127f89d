"""CPU launcher of the block-sparse linear layer (inference): ``y = x @ W^T + b`` with ``W`` (N, K) given in BSR
form, its kept ``(bo, bi)`` blocks only: ``crow`` (N // bo + 1), ``col`` (nnz), ``values`` (nnz, bo, bi).

``forward(x2d, crow, col, values, bias, out_features) -> y2d`` takes a 2-D contiguous CPU ``x2d`` (T, K) and
indices the op layer has validated. Every result is accumulated in the accumulation dtype (float32 for float32 /
bfloat16 / float16, float64 for float64) and rounded once, after the bias.

Which path runs (``plan``):

- ``"blocks"``: the C++ kernel (``csrc/block_sparse_linear_cpu.cpp``), which multiplies only the kept blocks.
  Its panels are the values transposed to (bi, bo) in the accumulation dtype, bo padded to a multiple of 16;
  they are packed once per values tensor and kept (``packed_values``) until the tensor changes in place or is
  freed. Any block shape runs, but a bo that is not a multiple of 16 pays for its padding, so the path is taken
  while the *padded* kept fraction ``nnz * roundup(bo, 16) * bi / (N * K)`` is at most ``MAX_BLOCK_DENSITY``.
- ``"rows"`` (bi == K: whole output rows kept): one dense product with the kept rows, scattered into the output.
- ``"columns"`` (bo == N: whole input columns kept): the kept columns of x gathered, then one dense product.
- ``"dense"``: above the crossover, ``W`` rebuilt densely and one BLAS product (what ``nn.Linear`` does).

The C++ kernel gives bitwise the same result for any thread count (each output summed by one task in a fixed
order); the BLAS paths are repeatable at a fixed thread count.

Measured crossover (float32, 1024 tokens, FFN shapes 3072 x 768 and 768 x 3072, blocks 16, 32 and 64 square, on
the project's shared 2-core AVX-512 machine, the block kernel forced at every density): against ``nn.Linear``
the kernel is 3.5-5.4x faster at 0.1, 1.3-1.6x at 0.5 and 0.9-1.2x at 0.7 on one thread; on two threads of
the loaded machine 1.4-2.4x at 0.5 and 1.1-1.8x at 0.7 (the dense product suffers more from the other
processes). The float32 kernel reaches about 130 GFLOP/s of kept work on one core where MKL's dense product
reaches about 200, so the crossover is near 0.6-0.7; ``MAX_BLOCK_DENSITY`` is 0.6.
"""
from __future__ import annotations

import weakref
from collections import OrderedDict
from typing import Optional

import torch

from .cpu_extension import extension
from .dtypes import acc_dtype, empty_tensor
from .layout import output_like

# Highest (padded) kept fraction at which the block kernel beats the dense product (see the module doc).
MAX_BLOCK_DENSITY = 0.6
PAD = 16  # the C++ panels' output side is padded to a multiple of this


def _ext():
    return extension()


def padded(bo: int) -> int:
    return -(-bo // PAD) * PAD


def plan(out_features: int, in_features: int, nnz: int, block_shape) -> str:
    """The path ``forward`` takes: "blocks", "rows", "columns" or "dense" (see the module doc)."""
    N, K = out_features, in_features
    bo, bi = block_shape
    if N == 0 or K == 0 or nnz == 0:
        return "blocks"  # nothing to multiply: the kernel writes the bias (or zeros)
    if bi == K:
        return "rows"
    if bo == N:
        return "columns"
    if nnz * padded(bo) * bi <= MAX_BLOCK_DENSITY * N * K:
        return "blocks"
    return "dense"


# ----------------------------------------------------------------------------------------------------------
# Packed panels, kept per values tensor
# ----------------------------------------------------------------------------------------------------------
_PACKED: "OrderedDict[int, tuple]" = OrderedDict()
_PACKED_MAX = 64  # values tensors whose panels are kept (least recently used dropped first)


def _version(t: torch.Tensor) -> Optional[int]:
    try:
        return t._version
    except RuntimeError:  # inference-mode tensors have no version counter: never cached
        return None


def packed_values(values: torch.Tensor) -> torch.Tensor:
    """``values`` (nnz, bo, bi) as the C++ kernel's panels (nnz, bi, roundup(bo, 16)), accumulation dtype.

    The panels of a tensor are kept while it lives and is not changed in place (its version counter), so a
    module's forward packs once; a freed tensor's panels are dropped with it. A write the version counter does
    not see (in place through ``.data``, a numpy or DLPack view) is not seen here either: ``clear_cache()`` after
    one (checking the contents each call would cost as much as packing them again)."""
    # Keyed by the caller's tensor object itself (a detached alias would be a new object each call), checked
    # against its version counter (in-place changes) and its storage, shape and dtype (``.data`` assignments).
    version = _version(values)
    if version is not None:
        version = (version, values.data_ptr(), tuple(values.shape), values.dtype)
    key = id(values)
    hit = _PACKED.get(key)
    if hit is not None and hit[0]() is values and hit[1] == version and version is not None:
        _PACKED.move_to_end(key)
        return hit[2]
    packed = _ext().bsl_pack(values.detach().contiguous())
    if version is not None:
        try:
            ref = weakref.ref(values, lambda _, key=key: _drop(key))
        except TypeError:
            return packed
        _PACKED[key] = (ref, version, packed)
        _PACKED.move_to_end(key)
        while len(_PACKED) > _PACKED_MAX:
            _PACKED.popitem(last=False)
    return packed


def _drop(key: int) -> None:
    hit = _PACKED.get(key)
    if hit is not None and hit[0]() is None:
        del _PACKED[key]


def clear_cache() -> None:
    """Drop every kept panel (tests; or to free memory)."""
    _PACKED.clear()


# ----------------------------------------------------------------------------------------------------------
# The launcher
# ----------------------------------------------------------------------------------------------------------
def _row_indices(crow: torch.Tensor) -> torch.Tensor:
    return torch.repeat_interleave(torch.arange(crow.numel() - 1), crow.diff())


def dense_weight(crow: torch.Tensor, col: torch.Tensor, values: torch.Tensor, out_features: int,
                 in_features: int, dtype: torch.dtype) -> torch.Tensor:
    """``W`` (N, K) in ``dtype``, zero outside the kept blocks."""
    nnz, bo, bi = values.shape
    nbr, nbc = out_features // bo, in_features // bi
    w = torch.zeros(nbr * nbc, bo, bi, dtype=dtype)
    if nnz:
        w.index_copy_(0, _row_indices(crow) * nbc + col, values.to(dtype))
    return w.view(nbr, nbc, bo, bi).transpose(1, 2).reshape(out_features, in_features)


def forward(x2d: torch.Tensor, crow: torch.Tensor, col: torch.Tensor, values: torch.Tensor,
            bias: Optional[torch.Tensor], out_features: int) -> torch.Tensor:
    x2d = x2d.detach()
    if not x2d.is_contiguous():
        x2d = x2d.contiguous()
    T, K = x2d.shape
    N = out_features
    nnz, bo, bi = values.shape
    acc = acc_dtype(x2d.dtype)
    crow = crow.detach().to(torch.int64).contiguous()
    col = col.detach().to(torch.int64).contiguous()
    b = None if bias is None else bias.detach().to(acc).contiguous()
    out = output_like(x2d, (T, N))
    if T == 0 or N == 0:
        return out
    if K == 0:  # no inputs: the bias alone (the C++ kernel would divide by the width)
        return out.copy_(b.unsqueeze(0).expand(T, N)) if b is not None else out.zero_()
    path = plan(N, K, nnz, (bo, bi))
    if path == "blocks":
        _ext().bsl_forward(x2d, crow, col, packed_values(values), empty_tensor(acc) if b is None else b, bo, out)
    elif path == "rows":  # each block is bo whole rows of W (one block per block row at most)
        rows = (_row_indices(crow).unsqueeze(1) * bo + torch.arange(bo)).reshape(-1)
        wk = values.detach().reshape(nnz * bo, K).to(acc)
        yk = x2d.to(acc) @ wk.t()
        if b is not None:
            yk += b.index_select(0, rows)
            out.copy_(b.unsqueeze(0).expand(T, N))
        else:
            out.zero_()
        out.index_copy_(1, rows, yk.to(out.dtype))
    elif path == "columns":  # one block row: each block is bi whole columns of W
        cols = (col.unsqueeze(1) * bi + torch.arange(bi)).reshape(-1)
        wk = values.detach().to(acc).permute(1, 0, 2).reshape(N, nnz * bi)
        xk = x2d.index_select(1, cols).to(acc)
        y = xk @ wk.t() if b is None else torch.addmm(b, xk, wk.t())
        out.copy_(y)
    else:
        w = dense_weight(crow, col, values.detach(), N, K, acc)
        xa = x2d.to(acc)
        y = xa @ w.t() if b is None else torch.addmm(b, xa, w.t())
        out.copy_(y)
    return out
