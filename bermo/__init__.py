"""bermo: fast scalar mixing (BERMo, Kodge and Roy 2021) and pruning of BERT-style encoders."""
from .errors import BackendUnavailableError, ConfigurationError
from .models import _autoregister
from .nn import ScalarMix
from .ops import masked_linear, scalar_mix

__version__ = "0.1.0"
__all__ = ["BackendUnavailableError", "ConfigurationError", "ScalarMix", "masked_linear", "scalar_mix", "__version__"]

# Register the BERMo models with transformers' Auto classes when (or, if already, as soon as) transformers'
# Auto modules are imported: saved BERMo checkpoints then load with AutoModel after ``import bermo`` alone,
# while ``import bermo`` does not import transformers.
_autoregister.install()
