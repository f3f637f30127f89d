"""Triton kernels for the scalar mix ``out = sum_k a_k * (t_k - c_k)`` and its backward.

The autograd-level math (softmax, gamma, layer norm) lives in ``bermo.ops.scalar_mix``; these kernels are
the memory-bound passes it needs, each reading every layer at most once:

* ``scalar_mix_fwd_kernel``: ``out = sum_k coef_k * (t_k - center_k)``. With ``coef = gamma * softmax(s)``
  and ``center = 0`` this is the plain mix; with ``coef_k = gamma * w_k * rstd_k`` and ``center_k = mean_k``
  it is the layer-normed mix.
* ``scalar_mix_bwd_kernel``: writes ``grad_t_k = coef_k * g`` for the layers that need it and, per program,
  the partial sums ``sum g * (t_k - center_k)`` for every k plus ``sum g`` (column L). The host reduces the
  (programs, L + 1) partials in a fixed order: deterministic, no atomics.
* ``ln_stats_kernel``: per program, masked count, mean and M2 (sum of squared deviations) of every layer
  (each tile shifted by one of its unmasked values), merged on the host with Chan's formula (no sum-of-squares
  cancellation).
* ``ln_bwd_kernel``: the layer-norm input gradient
  ``grad_t_k = coef_k * g - m * (alpha_k + beta_k * (t_k - mean_k))``.

Layers are addressed through an int64 table of base pointers (``kernels.layout``), so the layers are never
stacked; offsets are computed in int64 so tensors past 2**31 elements work. Every kernel comes in two
variants: ``ALIGNED=True`` (16-byte vector loads and stores of the layers and their gradients, launched when
``layout.vector_access_ok`` holds) and ``ALIGNED=False`` (element by element, for any other addresses).
"""
from __future__ import annotations

from typing import Optional, Sequence, Tuple

import torch
import triton
import triton.language as tl

from . import layout as layout_module
from .device_guard import on_tensor_device
from .dtypes import SUPPORTED_DTYPES, acc_dtype, check_interpreter_mode, triton_dtype, triton_interpreting
from .layout import RowLayout, as_rows, cdiv, grad_buffers, pointer_table, vector_access_ok


@triton.jit
def _tile(pid, R, C, row_stride, BLOCK_R: tl.constexpr, BLOCK_C: tl.constexpr):
    """Offsets of this program's (BLOCK_R, BLOCK_C) tile in the strided inputs and the contiguous outputs."""
    n_col_blocks = tl.cdiv(C, BLOCK_C)
    pid_r = pid // n_col_blocks
    pid_c = pid % n_col_blocks
    rows = pid_r.to(tl.int64) * BLOCK_R + tl.arange(0, BLOCK_R)
    cols = pid_c.to(tl.int64) * BLOCK_C + tl.arange(0, BLOCK_C)
    row_ok = rows < R
    mask = row_ok[:, None] & (cols[None, :] < C)
    in_offs = rows[:, None] * row_stride + cols[None, :]
    out_offs = rows[:, None] * C + cols[None, :]
    return in_offs, out_offs, mask, rows, row_ok


@triton.jit
def _at(table, k, offs, dtype, ALIGNED: tl.constexpr):
    """Pointers to ``offs`` in the tensor whose address is ``table[k]``.

    The address comes from memory, so Triton cannot know its alignment and accesses it one element at a time.
    ``ALIGNED`` promises what the launcher checked on the host (``vector_access_ok``): the base address and
    the row stride are multiples of 16 bytes, so each row's run of columns starts 16-byte aligned (Triton
    counts a pointer's divisibility in bytes). Then loads and stores become 16-byte vector accesses."""
    ptrs = tl.load(table + k).to(tl.pointer_type(dtype)) + offs
    if ALIGNED:
        ptrs = tl.multiple_of(ptrs, [1, 16])
    return ptrs


@triton.jit
def scalar_mix_fwd_kernel(ptr_table, coef_ptr, center_ptr, out_ptr, R, C, row_stride, L,
                          BLOCK_R: tl.constexpr, BLOCK_C: tl.constexpr, ALIGNED: tl.constexpr):
    """``out = sum_k coef_k * (t_k - center_k)``: centring before scaling keeps a near-constant layer (a huge
    ``coef_k`` from its tiny variance) from cancelling catastrophically."""
    dtype = out_ptr.dtype.element_ty
    acc_t = coef_ptr.dtype.element_ty
    in_offs, out_offs, mask, rows, row_ok = _tile(tl.program_id(0), R, C, row_stride, BLOCK_R, BLOCK_C)
    acc = tl.zeros([BLOCK_R, BLOCK_C], dtype=acc_t)
    for k in range(L):
        x = tl.load(_at(ptr_table, k, in_offs, dtype, ALIGNED), mask=mask, other=0.0)
        acc += tl.load(coef_ptr + k) * (x.to(acc_t) - tl.load(center_ptr + k))
    tl.store(out_ptr + out_offs, acc.to(dtype), mask=mask)


@triton.jit
def scalar_mix_bwd_kernel(grad_out_ptr, ptr_table, grad_table, coef_ptr, center_ptr, partial_ptr,
                          R, C, row_stride, L,
                          BLOCK_R: tl.constexpr, BLOCK_C: tl.constexpr,
                          COMPUTE_DOTS: tl.constexpr, WRITE_GRADS: tl.constexpr, ALIGNED: tl.constexpr):
    dtype = grad_out_ptr.dtype.element_ty
    acc_t = coef_ptr.dtype.element_ty
    pid = tl.program_id(0)
    in_offs, out_offs, mask, rows, row_ok = _tile(pid, R, C, row_stride, BLOCK_R, BLOCK_C)
    g = tl.load(grad_out_ptr + out_offs, mask=mask, other=0.0).to(acc_t)
    part = partial_ptr + pid.to(tl.int64) * (L + 1)
    for k in range(L):
        if COMPUTE_DOTS:
            x = tl.load(_at(ptr_table, k, in_offs, dtype, ALIGNED), mask=mask, other=0.0).to(acc_t)
            tl.store(part + k, tl.sum(g * (x - tl.load(center_ptr + k))))
        if WRITE_GRADS:
            if tl.load(grad_table + k) != 0:
                tl.store(_at(grad_table, k, out_offs, dtype, ALIGNED), (tl.load(coef_ptr + k) * g).to(dtype),
                         mask=mask)
    if COMPUTE_DOTS:
        tl.store(part + L, tl.sum(g))


@triton.jit
def ln_stats_kernel(ptr_table, row_mask_ptr, partial_ptr, R, C, row_stride, L,
                    DTYPE: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_C: tl.constexpr, ALIGNED: tl.constexpr):
    """partial[pid] = [count, mean_0 .. mean_{L-1}, m2_0 .. m2_{L-1}, shift_0 .. shift_{L-1}] over this tile's
    unmasked elements, the means of ``t_k - shift_k`` with ``shift_k`` the tile's first unmasked value of layer k
    (0 when it has none): shifting by a value of the data keeps a near-constant layer's sums small and exact,
    and a padded value, however large, never enters a sum but times zero. Masked elements enter as ``t * 0``,
    so a NaN or infinity anywhere poisons the layer's statistics, as in AllenNLP."""
    acc_t = partial_ptr.dtype.element_ty
    pid = tl.program_id(0)
    in_offs, out_offs, mask, rows, row_ok = _tile(pid, R, C, row_stride, BLOCK_R, BLOCK_C)
    m = tl.load(row_mask_ptr + rows, mask=row_ok, other=0.0)
    w = tl.where(mask, m[:, None], 0.0).to(acc_t)
    n = tl.sum(w)
    # the tile's first unmasked element (row-major), where every layer takes its shift
    flat = tl.arange(0, BLOCK_R)[:, None] * BLOCK_C + tl.arange(0, BLOCK_C)[None, :]
    first = tl.min(tl.where(w != 0, flat, BLOCK_R * BLOCK_C))
    part = partial_ptr + pid.to(tl.int64) * (3 * L + 1)
    tl.store(part, n)
    for k in range(L):
        x = tl.load(_at(ptr_table, k, in_offs, DTYPE, ALIGNED), mask=mask, other=0.0).to(acc_t)
        shift = tl.sum(tl.where(flat == first, x, 0.0))
        x = x - shift
        mean = tl.sum(x * w) / tl.maximum(n, 1.0)
        d = (x - mean) * w
        tl.store(part + 1 + k, mean)
        tl.store(part + 1 + L + k, tl.sum(d * d))
        tl.store(part + 1 + 2 * L + k, shift)


@triton.jit
def ln_bwd_kernel(grad_out_ptr, ptr_table, grad_table, row_mask_ptr, coef_ptr, alpha_ptr, beta_ptr,
                  center_ptr, R, C, row_stride, L, BLOCK_R: tl.constexpr, BLOCK_C: tl.constexpr,
                  ALIGNED: tl.constexpr):
    dtype = grad_out_ptr.dtype.element_ty
    acc_t = coef_ptr.dtype.element_ty
    in_offs, out_offs, mask, rows, row_ok = _tile(tl.program_id(0), R, C, row_stride, BLOCK_R, BLOCK_C)
    g = tl.load(grad_out_ptr + out_offs, mask=mask, other=0.0).to(acc_t)
    m = tl.load(row_mask_ptr + rows, mask=row_ok, other=0.0).to(acc_t)[:, None]
    for k in range(L):
        if tl.load(grad_table + k) != 0:
            x = tl.load(_at(ptr_table, k, in_offs, dtype, ALIGNED), mask=mask, other=0.0).to(acc_t)
            grad = tl.load(coef_ptr + k) * g - m * (
                tl.load(alpha_ptr + k) + tl.load(beta_ptr + k) * (x - tl.load(center_ptr + k)))
            tl.store(_at(grad_table, k, out_offs, dtype, ALIGNED), grad.to(dtype), mask=mask)


# ----------------------------------------------------------------------------------------------------------
# Launch configuration. Every value these functions can return is compiled for sm_80 and sm_90 by
# ``python -m bermo.kernels.compile``; keep the two in step.
# ----------------------------------------------------------------------------------------------------------
BLOCK_C_CHOICES = (32, 64, 128, 256)


def tile_elements(dtype: torch.dtype) -> int:
    """Elements per program: 8 KiB of each layer, whatever the dtype."""
    return {2: 4096, 4: 2048, 8: 1024}[torch.empty((), dtype=dtype).element_size()]


def block_config(dtype: torch.dtype, cols: int) -> Tuple[int, int, int]:
    """(BLOCK_R, BLOCK_C, num_warps) for rows of ``cols`` elements."""
    if cols <= 32:
        block_c = 32
    elif cols <= 64:
        block_c = 64
    elif cols <= 128 or cols % 256 != 0:
        block_c = 128
    else:
        block_c = 256
    tile = tile_elements(dtype)
    return tile // block_c, block_c, 8 if tile >= 2048 else 4


def _programs(layout: RowLayout, block_r: int, block_c: int) -> int:
    return cdiv(layout.rows, block_r) * cdiv(layout.cols, block_c)


_INTERPRETED = triton_interpreting()  # what the @triton.jit decorators above saw


def _check_device(x0: torch.Tensor) -> None:
    if x0.device.type == "cpu":
        check_interpreter_mode(_INTERPRETED)


def _aligned(layout: RowLayout, tensors, aligned: Optional[bool]) -> bool:
    """The ALIGNED variant to launch: the host check's answer, unless ``aligned=False`` forces the
    element-wise variant (benchmarks compare the two); ``aligned=True`` on unaligned tensors is an error."""
    ok = vector_access_ok(layout, tensors)
    if aligned and not ok:
        raise ValueError("aligned=True, but a base address or a row stride is not a multiple of 16 bytes")
    return ok if aligned is None else (aligned and ok)


# ----------------------------------------------------------------------------------------------------------
# Launchers. Inputs are validated by the caller (bermo.ops.scalar_mix): same shape, dtype and device.
# ----------------------------------------------------------------------------------------------------------
@on_tensor_device
def mix_forward(tensors: Sequence[torch.Tensor], coef: torch.Tensor, center: torch.Tensor,
                aligned: Optional[bool] = None) -> torch.Tensor:
    """``sum_k coef[k] * (tensors[k] - center[k])`` in the accumulation dtype of ``coef``, returned in the
    inputs' dtype."""
    layout, views = as_rows(tensors)
    x0 = tensors[0]
    _check_device(x0)
    out = layout_module.output_like(x0)
    if layout.numel == 0:
        return out
    block_r, block_c, warps = block_config(x0.dtype, layout.cols)
    grid = (_programs(layout, block_r, block_c),)
    scalar_mix_fwd_kernel[grid](pointer_table(views, x0.device), coef, center, out, layout.rows, layout.cols,
                                layout.row_stride, len(views), BLOCK_R=block_r, BLOCK_C=block_c,
                                ALIGNED=_aligned(layout, views, aligned), num_warps=warps)
    return out


@on_tensor_device
def mix_backward(grad_out: torch.Tensor, tensors: Sequence[torch.Tensor], coef: torch.Tensor,
                 center: torch.Tensor, need_grad: Sequence[bool], compute_dots: bool, stacked: bool = False,
                 aligned: Optional[bool] = None):
    """Gradients ``coef_k * grad_out`` for the layers in ``need_grad`` and the sums
    ``[sum g * (t_k - center_k) for k] + [sum g]`` (acc dtype, shape (L + 1,)) when ``compute_dots``."""
    layout, views = as_rows(tensors)
    x0 = tensors[0]
    L = len(views)
    outputs, grads = grad_buffers(x0, need_grad, stacked)
    write = any(need_grad)
    if layout.numel == 0 or not (write or compute_dots):
        return outputs, torch.zeros(L + 1, dtype=coef.dtype, device=x0.device)
    g = grad_out.contiguous()
    block_r, block_c, warps = block_config(x0.dtype, layout.cols)
    programs = _programs(layout, block_r, block_c)
    partials = layout_module.workspace((programs, L + 1) if compute_dots else (1,), coef.dtype, x0.device)
    scalar_mix_bwd_kernel[(programs,)](
        g, pointer_table(views, x0.device), pointer_table(grads, x0.device), coef, center, partials,
        layout.rows, layout.cols, layout.row_stride, L, BLOCK_R=block_r, BLOCK_C=block_c,
        COMPUTE_DOTS=compute_dots, WRITE_GRADS=write, ALIGNED=_aligned(layout, views + grads, aligned),
        num_warps=warps)
    sums = partials.sum(0) if compute_dots else torch.zeros(L + 1, dtype=coef.dtype, device=x0.device)
    return outputs, sums


@on_tensor_device
def ln_stats(tensors: Sequence[torch.Tensor], row_mask: torch.Tensor, aligned: Optional[bool] = None):
    """Per-tile masked (count, mean of ``t - shift`` (L,), M2 (L,), shift (L,)) of every layer;
    ``row_mask`` holds one 0/1 value per row (acc dtype)."""
    layout, views = as_rows(tensors)
    x0 = tensors[0]
    L = len(views)
    acc = acc_dtype(x0.dtype)
    block_r, block_c, warps = block_config(x0.dtype, layout.cols)
    programs = _programs(layout, block_r, block_c)
    partials = layout_module.workspace((programs, 3 * L + 1), acc, x0.device)
    ln_stats_kernel[(programs,)](pointer_table(views, x0.device), row_mask, partials, layout.rows, layout.cols,
                                 layout.row_stride, L, DTYPE=triton_dtype(x0.dtype), BLOCK_R=block_r,
                                 BLOCK_C=block_c, ALIGNED=_aligned(layout, views, aligned), num_warps=warps)
    return partials[:, 0], partials[:, 1:L + 1], partials[:, L + 1:2 * L + 1], partials[:, 2 * L + 1:]


@on_tensor_device
def ln_backward(grad_out: torch.Tensor, tensors: Sequence[torch.Tensor], row_mask: torch.Tensor,
                coef: torch.Tensor, alpha: torch.Tensor, beta: torch.Tensor, center: torch.Tensor,
                need_grad: Sequence[bool], stacked: bool = False, aligned: Optional[bool] = None):
    """Layer-norm input gradients ``coef_k * g - m * (alpha_k + beta_k * (t_k - center_k))``."""
    layout, views = as_rows(tensors)
    x0 = tensors[0]
    outputs, grads = grad_buffers(x0, need_grad, stacked)
    if layout.numel == 0 or not any(need_grad):
        return outputs
    block_r, block_c, warps = block_config(x0.dtype, layout.cols)
    ln_bwd_kernel[(_programs(layout, block_r, block_c),)](
        grad_out.contiguous(), pointer_table(views, x0.device), pointer_table(grads, x0.device), row_mask,
        coef, alpha, beta, center, layout.rows, layout.cols, layout.row_stride, len(views),
        BLOCK_R=block_r, BLOCK_C=block_c, ALIGNED=_aligned(layout, views + grads, aligned), num_warps=warps)
    return outputs


# ----------------------------------------------------------------------------------------------------------
# Every configuration the launchers above can pick, for ahead-of-time compile checks (kernels/compile.py).
# The layer count L and the shape are runtime arguments, so one compile covers every L and every shape; the
# integer arguments come as i32 or, for tensors past 2**31 elements, i64, both with the divisibility by 16
# that Triton specialises on for widths like 768 (other widths compile the same code without that fact).
# ----------------------------------------------------------------------------------------------------------
def compile_configurations():
    """Yield ``(label, kernel, signature, constexprs, attrs_div16_arg_names, num_warps)``."""
    for dtype in SUPPORTED_DTYPES:
        tl_dtype = triton_dtype(dtype)
        t, a = str(tl_dtype), str(triton_dtype(acc_dtype(dtype)))  # e.g. "bf16", "fp32"
        for block_c in BLOCK_C_CHOICES:
            block_r, picked, warps = block_config(dtype, block_c)  # rows of exactly BLOCK_C pick BLOCK_C
            assert picked == block_c
            for ity in ("i32", "i64"):
                ints = {"R": ity, "C": ity, "row_stride": ity, "L": "i32"}
                div = ["C", "row_stride"]  # BERT's widths are multiples of 16; Triton specialises on that
                for aligned in (True, False):
                    blocks = {"BLOCK_R": block_r, "BLOCK_C": block_c, "ALIGNED": aligned}
                    tag = f"{t} BLOCK_R={block_r} BLOCK_C={block_c} warps={warps} ints={ity} aligned={aligned}"
                    yield (f"scalar_mix_fwd {tag}", scalar_mix_fwd_kernel,
                           {"ptr_table": "*i64", "coef_ptr": f"*{a}", "center_ptr": f"*{a}", "out_ptr": f"*{t}",
                            **ints, "BLOCK_R": "constexpr", "BLOCK_C": "constexpr", "ALIGNED": "constexpr"},
                           blocks, div, warps)
                    for dots, write in ((True, True), (True, False), (False, True)):
                        yield (f"scalar_mix_bwd dots={dots} write={write} {tag}", scalar_mix_bwd_kernel,
                               {"grad_out_ptr": f"*{t}", "ptr_table": "*i64", "grad_table": "*i64",
                                "coef_ptr": f"*{a}", "center_ptr": f"*{a}", "partial_ptr": f"*{a}", **ints,
                                "BLOCK_R": "constexpr", "BLOCK_C": "constexpr", "COMPUTE_DOTS": "constexpr",
                                "WRITE_GRADS": "constexpr", "ALIGNED": "constexpr"},
                               {**blocks, "COMPUTE_DOTS": dots, "WRITE_GRADS": write}, div, warps)
                    yield (f"ln_stats {tag}", ln_stats_kernel,
                           {"ptr_table": "*i64", "row_mask_ptr": f"*{a}", "partial_ptr": f"*{a}", **ints,
                            "DTYPE": "constexpr", "BLOCK_R": "constexpr", "BLOCK_C": "constexpr",
                            "ALIGNED": "constexpr"},
                           {**blocks, "DTYPE": tl_dtype}, div, warps)
                    yield (f"ln_bwd {tag}", ln_bwd_kernel,
                           {"grad_out_ptr": f"*{t}", "ptr_table": "*i64", "grad_table": "*i64",
                            "row_mask_ptr": f"*{a}", "coef_ptr": f"*{a}", "alpha_ptr": f"*{a}", "beta_ptr": f"*{a}",
                            "center_ptr": f"*{a}", **ints, "BLOCK_R": "constexpr", "BLOCK_C": "constexpr",
                            "ALIGNED": "constexpr"}, blocks, div, warps)
