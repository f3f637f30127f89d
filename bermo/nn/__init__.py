"""Neural-network modules."""
from .masked_linear import MaskedLinear
from .scalar_mix import ScalarMix

__all__ = ["MaskedLinear", "ScalarMix"]
