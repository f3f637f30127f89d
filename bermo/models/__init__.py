"""BERMo models on Hugging Face transformers.

The classes register themselves with transformers' Auto classes: ``AutoConfig`` ("bermo"), ``AutoModel`` and
``AutoModelForSequenceClassification``. ``import bermo`` is enough for that (see ``_autoregister``); the
names below are imported on first use, so ``import bermo`` / ``import bermo.models`` stay cheap for users who
only want ``ScalarMix`` and ``mix_parameter_groups`` does not pull in the Trainer.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

from .._lazy import lazy_exports

_EXPORTS = {
    "BermoConfig": "configuration_bermo",
    "BermoModel": "modeling_bermo",
    "BermoForSequenceClassification": "modeling_bermo",
    "BermoModelOutput": "modeling_bermo",
    "BermoPreTrainedModel": "modeling_bermo",
    "BermoSequenceClassifierOutput": "modeling_bermo",
    "DEFAULT_MIX_LR": "optim",
    "mix_parameter_groups": "optim",
    "BermoTrainer": "trainer",
    "BermoTrainingArguments": "trainer",
    "plot_mixing_weights": "plotting",
}

__all__ = sorted(_EXPORTS)

if TYPE_CHECKING:  # static analysers see ordinary imports
    from .configuration_bermo import BermoConfig
    from .modeling_bermo import (BermoForSequenceClassification, BermoModel, BermoModelOutput, BermoPreTrainedModel,
                                 BermoSequenceClassifierOutput)
    from .optim import DEFAULT_MIX_LR, mix_parameter_groups
    from .plotting import plot_mixing_weights
    from .trainer import BermoTrainer, BermoTrainingArguments


__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS, globals())
