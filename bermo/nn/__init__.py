"""Neural-network modules."""
from .scalar_mix import ScalarMix

__all__ = ["ScalarMix"]
