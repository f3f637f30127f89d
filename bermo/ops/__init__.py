"""Ops: validation, backend dispatch, custom ops and autograd Functions around the kernels."""
from .masked_linear import MaskedLinearFunction, masked_linear, reference_masked_linear
from .scalar_mix import ScalarMixFunction, reference_scalar_mix, scalar_mix

__all__ = ["MaskedLinearFunction", "ScalarMixFunction", "masked_linear", "reference_masked_linear",
           "reference_scalar_mix", "scalar_mix"]
