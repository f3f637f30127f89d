"""Ops: validation, backend dispatch, custom ops and autograd Functions around the kernels."""
from .scalar_mix import ScalarMixFunction, reference_scalar_mix, scalar_mix

__all__ = ["ScalarMixFunction", "reference_scalar_mix", "scalar_mix"]
