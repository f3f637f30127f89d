"""``bermo.nn.BlockSparseLinear``: the inference form of a block-pruned linear layer. Only the kept ``(bo, bi)``
blocks of the weight are stored (BSR form) and multiplied, by ``bermo.ops.block_sparse_linear``.

    layer = BlockSparseLinear.from_dense(linear.weight, linear.bias, (32, 32))       # blocks with a nonzero
    layer = BlockSparseLinear.from_dense(w, b, (32, 32), mask=masked.block_mask())   # a pruning mask's blocks
    y = layer(x)                       # x @ layer.to_dense().T + bias, computing the kept blocks only
"""
from __future__ import annotations

import operator
import warnings
from typing import Optional, Sequence

import torch
from torch import nn

from .masked_linear import check_block_shape
from ..ops.block_sparse_linear import _dispatch, check_indices, check_structure, to_dense

NAME = "BlockSparseLinear"
_warned_inference_tensors = False


def _warn_inference_tensors() -> None:
    global _warned_inference_tensors
    if not _warned_inference_tensors:
        _warned_inference_tensors = True
        # stacklevel: this function, _check_indices, forward, Module._call_impl, Module._wrapped_call_impl, the
        # caller's line
        warnings.warn(f"bermo: a {NAME} built or loaded under torch.inference_mode() holds index tensors without "
                      "a version counter (inference tensors), so every call checks them again (a host sync on a "
                      "GPU), and the CPU kernel packs its values again when they were made there too (+15% a call "
                      "on a BERT-base FFN layer at density 0.1, 1024 tokens). Build or load the model outside "
                      "inference_mode; calling it inside is fine. (Said once per process.)", UserWarning,
                      stacklevel=6)


def _index_dtype(*sizes: int) -> torch.dtype:
    return torch.int32 if max(sizes) < 2 ** 31 else torch.int64


class BlockSparseLinear(nn.Module):
    """``y = x @ W^T + bias`` where ``W`` (out_features, in_features) is zero outside the blocks it keeps.

    ``W`` is stored in BSR form, as torch's ``W.to_sparse_bsr(block_shape)`` lays it out: ``values`` (a Parameter,
    ``(nnz, bo, bi)``: the kept blocks), ``crow_indices`` (a buffer, ``(out_features // bo + 1,)``: block row
    ``i`` owns entries ``crow_indices[i] .. crow_indices[i + 1]``) and ``col_indices`` (a buffer, ``(nnz,)``: each
    block's block column, increasing within a row), plus an optional ``bias`` Parameter. The ``state_dict`` holds
    exactly these, so a checkpoint's size follows the density; loading one with another number of kept blocks (the
    same block shape) resizes ``values`` and ``col_indices``.

    The forward computes only the kept blocks (``backend``: ``None``/``"auto"``, ``"triton"``, ``"cpu"``,
    ``"reference"``; see ``bermo.backends``). It is an inference layer: gradients do reach ``values``, ``bias`` and
    the input, but through the dense formula (``to_dense()``), no faster than ``nn.Linear``. The indices' contents
    are checked when the layer is built, when a ``state_dict`` is loaded, and at an eager call after they changed;
    a ``torch.compile``d forward does not check them (the ``cpu`` kernel still refuses an index out of range), so
    indices written in place under ``torch.compile`` are the caller's to keep valid. A layer built on the meta
    device is checked at its first call after ``to_empty`` and a load.

    The ``cpu`` backend keeps ``values`` packed for its kernel between calls and packs again after every change
    autograd's version counter sees (in-place ops on the Parameter, ``load_state_dict``, ``.to()``, assigning
    ``.data``). A write that bypasses the counter (in place through ``values.data``, a numpy or DLPack view) is
    invisible to it, as to autograd: call ``bermo.kernels.block_sparse_linear_cpu.clear_cache()`` after one."""

    def __init__(self, in_features: int, out_features: int, block_shape: Sequence[int], crow_indices: torch.Tensor,
                 col_indices: torch.Tensor, values: torch.Tensor, bias: Optional[torch.Tensor] = None,
                 backend: Optional[str] = None):
        super().__init__()
        in_features, out_features = operator.index(in_features), operator.index(out_features)
        if in_features < 0 or out_features < 0:
            raise ValueError(f"{NAME}: in_features and out_features must be >= 0; got {(in_features, out_features)}")
        bo, bi = check_block_shape(block_shape, out_features, in_features, NAME)
        if isinstance(values, torch.Tensor) and values.dim() == 3 and tuple(values.shape[1:]) != (bo, bi):
            raise ValueError(f"{NAME}: values must hold {(bo, bi)} blocks (block_shape), shape (nnz, {bo}, {bi}); got "
                             f"{tuple(values.shape)}")
        check_structure(crow_indices, col_indices, values, out_features, in_features, what=NAME)
        if bias is not None:
            if not isinstance(bias, torch.Tensor):
                raise TypeError(f"{NAME}: bias must be a torch.Tensor or None; got {type(bias).__name__}")
            if tuple(bias.shape) != (out_features,) or bias.dtype != values.dtype or bias.device != values.device:
                raise ValueError(f"{NAME}: bias must have shape ({out_features},) and values' dtype and device "
                                 f"({values.dtype}, {values.device}); got {tuple(bias.shape)} {bias.dtype} "
                                 f"{bias.device}")
        check_indices(crow_indices, col_indices, in_features // bi, what=NAME)
        self.in_features, self.out_features, self.block_shape = in_features, out_features, (bo, bi)
        self.backend = backend
        self.values = values if isinstance(values, nn.Parameter) else nn.Parameter(values.detach())
        self.register_buffer("crow_indices", crow_indices.detach())
        self.register_buffer("col_indices", col_indices.detach())
        if bias is None:
            self.register_parameter("bias", None)
        else:
            self.bias = bias if isinstance(bias, nn.Parameter) else nn.Parameter(bias.detach())
        self._checked = self._indices_key()

    # ----------------------------------------------------------------------------------------- construction
    @classmethod
    def from_dense(cls, weight: torch.Tensor, bias: Optional[torch.Tensor], block_shape: Sequence[int],
                   mask: Optional[torch.Tensor] = None, backend: Optional[str] = None) -> "BlockSparseLinear":
        """The layer keeping ``weight``'s blocks that ``mask`` keeps: ``mask`` is a compact block mask, shape
        ``(out // bo, in // bi)``, bool (kept where True) or float (kept where nonzero, the kept blocks multiplied
        by their mask value, as ``MaskedLinear`` applies a float mask); ``None`` keeps every block with a nonzero
        weight. The layer's tensors are new (not views of ``weight`` / ``bias``), in their dtype and device."""
        if not isinstance(weight, torch.Tensor) or weight.dim() != 2:
            raise ValueError(f"{NAME}.from_dense: weight must be a 2-D tensor (out_features, in_features); got "
                             f"{tuple(weight.shape) if isinstance(weight, torch.Tensor) else type(weight).__name__}")
        if not weight.dtype.is_floating_point:
            raise TypeError(f"{NAME}.from_dense: weight must be floating point; got {weight.dtype}")
        N, K = weight.shape
        bo, bi = check_block_shape(block_shape, N, K, NAME)
        nbr, nbc = N // bo, K // bi
        w = weight.detach()
        blocks = w.reshape(nbr, bo, nbc, bi).transpose(1, 2)  # (nbr, nbc, bo, bi)
        if mask is None:
            keep = blocks.ne(0).any(dim=3).any(dim=2)
            scale = None
        else:
            if not isinstance(mask, torch.Tensor):
                raise TypeError(f"{NAME}.from_dense: mask must be a tensor or None; got {type(mask).__name__}")
            if tuple(mask.shape) != (nbr, nbc):
                raise ValueError(f"{NAME}.from_dense: mask must hold one value per {bo}x{bi} block of the {N}x{K} "
                                 f"weight, shape {(nbr, nbc)}; got {tuple(mask.shape)}")
            if not (mask.dtype == torch.bool or mask.dtype.is_floating_point):
                raise TypeError(f"{NAME}.from_dense: mask must be bool or floating point; got {mask.dtype}")
            mask = mask.detach().to(w.device)
            keep = mask if mask.dtype == torch.bool else mask != 0
            scale = None if mask.dtype == torch.bool else mask
        values = blocks[keep]  # (nnz, bo, bi), row-major block order: a new tensor
        if scale is not None:
            acc = torch.float64 if w.dtype == torch.float64 else torch.float32
            values = (values.to(acc) * scale[keep].to(acc)[:, None, None]).to(w.dtype)
        counts = keep.sum(dim=1)
        index_dtype = _index_dtype(int(values.shape[0]) + 1, nbc)
        crow = torch.zeros(nbr + 1, dtype=index_dtype, device=w.device)
        crow[1:] = counts.cumsum(0)
        col = torch.nonzero(keep)[:, 1].to(index_dtype)
        b = None if bias is None else bias.detach().clone()
        return cls(K, N, (bo, bi), crow, col, values.contiguous(), b, backend=backend)

    # ------------------------------------------------------------------------------------------- properties
    @property
    def nnz(self) -> int:
        """The number of kept blocks."""
        return int(self.values.shape[0])

    @property
    def density(self) -> float:
        """The fraction of the weight's blocks (and of its values) that is kept."""
        bo, bi = self.block_shape
        total = (self.out_features // bo) * (self.in_features // bi)
        return self.nnz / total if total else 0.0

    def to_dense(self) -> torch.Tensor:
        """The dense weight ``W`` (out_features, in_features), zero outside the kept blocks (differentiable in
        ``values``). The indices are checked first, as for the forward (after a load, an out-of-range column gave
        a silently wrong weight here)."""
        self._check_indices()
        return to_dense(self.crow_indices, self.col_indices, self.values, self.out_features, self.in_features)

    # ---------------------------------------------------------------------------------------------- forward
    def _indices_key(self):
        """What the last content check saw: the index tensors themselves (compared by identity: ``.to()``, a load
        or an assignment makes new ones), their version counters (in-place changes) and the number of blocks.
        (``self.values``, not ``self._parameters``: a DataParallel replica holds its parameters as attributes.)"""
        crow, col = self._buffers["crow_indices"], self._buffers["col_indices"]
        try:
            return (crow, col, crow._version, col._version, self.values.shape[0])
        except RuntimeError:  # inference-mode tensors have no version counter: check every time
            return None

    def _check_indices(self) -> None:
        """Check the indices' contents unless they are the ones checked last (same tensors, unchanged)."""
        if torch.compiler.is_compiling():
            return
        key, last = self._indices_key(), self._checked
        if key is None:
            _warn_inference_tensors()
        if key is None or last is None or not (key[0] is last[0] and key[1] is last[1] and key[2:] == last[2:]):
            check_structure(self.crow_indices, self.col_indices, self.values, self.out_features, self.in_features,
                            what=NAME)
            check_indices(self.crow_indices, self.col_indices, self.in_features // self.block_shape[1], what=NAME)
            self._checked = key

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self._check_indices()
        return _dispatch(x, self.crow_indices, self.col_indices, self.values, self.bias, self.out_features,
                         self.in_features, self.backend, False)

    def extra_repr(self) -> str:
        parts = [f"in_features={self.in_features}", f"out_features={self.out_features}",
                 f"bias={self.bias is not None}", f"block_shape={self.block_shape}", f"nnz={self.nnz}",
                 f"density={self.density:.4g}"]
        if self.backend is not None:
            parts.append(f"backend={self.backend}")
        return ", ".join(parts)

    # ---------------------------------------------------------------------------------------- checkpoints
    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                              error_msgs):
        # Another sparsity pattern of the same block shape is another number of kept blocks: resize values and
        # col_indices to the checkpoint's before torch copies into them (its size check would refuse otherwise).
        vkey, ckey = prefix + "values", prefix + "col_indices"
        incoming = state_dict.get(vkey)
        if isinstance(incoming, torch.Tensor):
            if incoming.dim() != 3 or tuple(incoming.shape[1:]) != self.block_shape:
                error_msgs.append(f"{NAME}: the state_dict's {vkey!r} has shape {tuple(incoming.shape)}, but this "
                                  f"layer keeps {self.block_shape} blocks, shape (nnz, {self.block_shape[0]}, "
                                  f"{self.block_shape[1]}): was it saved with another block_shape?")
                return
            nnz = incoming.shape[0]
            if nnz != self.nnz:
                self.values = nn.Parameter(self.values.new_empty((nnz, *self.block_shape)),
                                           requires_grad=self.values.requires_grad)
            cols = state_dict.get(ckey)
            if isinstance(cols, torch.Tensor) and cols.shape != self.col_indices.shape:
                self.col_indices = self.col_indices.new_empty(cols.shape)
        n_errors = len(error_msgs)
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                                      error_msgs)
        # Check what was loaded now, not only at the next eager call: a compiled forward skips the check. Only
        # when this state_dict brought indices (a partial load into a to_empty layer leaves them to a later one).
        brought = (prefix + "crow_indices") in state_dict or ckey in state_dict
        if brought and len(error_msgs) == n_errors and not (self.crow_indices.is_meta or self.col_indices.is_meta):
            try:
                self._check_indices()
            except ValueError as e:
                error_msgs.append(f"{prefix[:-1]}: {e}" if prefix else str(e))
