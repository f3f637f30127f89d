"""Which GPU path a masked-linear call takes: plain Python, no Triton import (the op layer and ``MaskedLinear``
consult it on any machine; ``masked_linear_triton`` runs the paths).

* **Block-skipping** Triton kernels, which never read a pruned block: masks whose blocks a 16, 32 or 64 tile
  fits, expected to keep under ``DENSE_FROM`` of their blocks.
* **Dense**: ``W * M`` in one pass, then cuBLAS: every other mask ((1, 1), whole rows or columns, odd block
  sides, where a tile of the weight is almost never all pruned) and near-dense ones.
"""
from __future__ import annotations

from typing import Optional, Tuple

SIDE_CHOICES = (64, 32, 16)   # tile sides of the block-skipping products, largest first
# From this expected kept fraction on, block-aligned masks take the dense path: where forward + input gradient
# of the block-skipping kernels stop beating W * M + cuBLAS on an H100 (0.2 to 0.3 for the forward, 0.1 to 0.2
# for the input gradient of the FFN shapes; the attention shape crosses later;
# benchmarks/results/masked_linear_sweep_*.md).
DENSE_FROM = 0.2


def sparse_tile(block_shape: Tuple[int, int]) -> Optional[int]:
    """The tile side of the block-skipping products: the largest of 64, 32, 16 dividing both block sides (each
    tile then lies inside one mask block, so a pruned block is skipped whole), or None when none does ((1, 1)
    masks, whole rows or columns, odd sides): those masks take the dense path."""
    bo, bi = block_shape
    return next((s for s in SIDE_CHOICES if bo % s == 0 and bi % s == 0), None)


def uses_dense_path(block_shape: Tuple[int, int], density: Optional[float]) -> bool:
    """Whether a call takes the dense path (``W * M`` materialised, then cuBLAS / ATen products) rather than the
    block-skipping kernels: always for masks whose blocks no tile fits, and for block-aligned masks whose
    expected kept fraction ``density`` (a host-side hint: ``MaskedLinear`` passes one; ``None`` = unknown, taken
    as sparse) is at least ``DENSE_FROM``. The paths agree up to rounding for finite weights (the dense path
    multiplies a pruned block by zero, so an inf or NaN weight there gives NaN where skipping gives the bias)."""
    return sparse_tile(block_shape) is None or (density is not None and density >= DENSE_FROM)
