"""Neural-network modules."""
from .block_sparse_linear import BlockSparseLinear
from .masked_linear import MaskedLinear
from .scalar_mix import ScalarMix

__all__ = ["BlockSparseLinear", "MaskedLinear", "ScalarMix"]
