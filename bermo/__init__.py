"""bermo: fast scalar mixing (BERMo, Kodge and Roy 2021) and pruning of BERT-style encoders."""
from .errors import BackendUnavailableError, ConfigurationError
from .nn import ScalarMix
from .ops import scalar_mix

__version__ = "0.1.0"
__all__ = ["BackendUnavailableError", "ConfigurationError", "ScalarMix", "scalar_mix", "__version__"]
