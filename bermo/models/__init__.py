"""BERMo models on Hugging Face transformers. Importing this package registers them with the Auto classes:
``AutoConfig`` ("bermo"), ``AutoModel`` and ``AutoModelForSequenceClassification``."""
from transformers import AutoConfig, AutoModel, AutoModelForSequenceClassification

from .configuration_bermo import BermoConfig
from .modeling_bermo import (BermoForSequenceClassification, BermoModel, BermoModelOutput, BermoPreTrainedModel,
                             BermoSequenceClassifierOutput)

AutoConfig.register("bermo", BermoConfig, exist_ok=True)
AutoModel.register(BermoConfig, BermoModel, exist_ok=True)
AutoModelForSequenceClassification.register(BermoConfig, BermoForSequenceClassification, exist_ok=True)

__all__ = ["BermoConfig", "BermoForSequenceClassification", "BermoModel", "BermoModelOutput",
           "BermoPreTrainedModel", "BermoSequenceClassifierOutput"]
