"""BERMo configuration: a BERT configuration plus the settings of the scalar mix of its layers."""
from __future__ import annotations

import math
import numbers
import operator
import os
import shutil
import warnings
from typing import List, Optional, Sequence

import numpy as np
from transformers import AutoConfig, BertConfig

from ..backends import BACKENDS
from . import _autoregister

# The module a saved BERMo checkpoint carries for transformers' custom-code mechanism (``trust_remote_code``): it
# only imports the installed bermo's classes (see remote_code.py), so a checkpoint never freezes a copy of them.
REMOTE_CODE_MODULE = "bermo_remote_code"
REMOTE_AUTO_MAP = {
    "AutoConfig": f"{REMOTE_CODE_MODULE}.BermoConfig",
    "AutoModel": f"{REMOTE_CODE_MODULE}.BermoModel",
    "AutoModelForSequenceClassification": f"{REMOTE_CODE_MODULE}.BermoForSequenceClassification",
}
_REMOTE_CODE_SOURCE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "remote_code.py")

_warned_bert_checkpoint = False


class BermoConfig(BertConfig):
    """Configuration of a BERMo model (Kodge and Roy, 2021): BERT whose head reads an ELMo-style scalar mix
    ``gamma * sum_k softmax(s)_k * h_k`` of the encoder's representations.

    Args (beyond ``BertConfig``'s):
        mix_layers: which representations are mixed, as indices into ``hidden_states`` (0 = the embedding
            output, ``i`` = the output of encoder layer ``i``; negative indices count from the end). Default
            ``None``: all ``num_hidden_layers + 1`` of them, as in the paper.
        mix_layer_norm: apply AllenNLP's masked layer norm to each representation before mixing (default off).
        mix_initial_scalars: initial values of the mixing scalars ``s`` (default zeros: uniform weights);
            ``gamma`` starts at 1.
        mix_backend: force a ``bermo.backends`` backend for the mix: ``"auto"``, ``"triton"``, ``"cpu"`` or
            ``"reference"``. Default ``None``: ``$BERMO_BACKEND`` if set, else chosen per device. Where the
            forced backend cannot run on the model's device (a checkpoint saved on other hardware), the model
            warns once and chooses per device.

    Saved configurations carry an ``auto_map`` that points transformers' custom-code mechanism at the installed
    bermo, so ``AutoModel.from_pretrained(path, trust_remote_code=True)`` loads a BERMo checkpoint even in a
    process that never imported bermo (``import bermo`` alone is enough without ``trust_remote_code``).
    """

    model_type = "bermo"
    # what the HF Trainer leaves out of predictions (its prediction_step): the logits alone, as BERT's
    keys_to_ignore_at_inference = ["mixing_weights", "mixing_gamma", "mixed_cls_state", "mixed_hidden_state"]

    def __init__(self, mix_layers: Optional[Sequence[int]] = None, mix_layer_norm: bool = False,
                 mix_initial_scalars: Optional[Sequence[float]] = None, mix_backend: Optional[str] = None,
                 **kwargs):
        super().__init__(**kwargs)
        self.mix_layers, self.mix_layer_norm = mix_layers, mix_layer_norm
        self.mix_initial_scalars, self.mix_backend = mix_initial_scalars, mix_backend
        # transformers' custom-model mechanism (what register_for_auto_class would write), pointing at the shim
        # module save_pretrained writes next to config.json; other entries a checkpoint may have are kept.
        self.auto_map = {**(getattr(self, "auto_map", None) or {}), **REMOTE_AUTO_MAP}
        self.check_mix_settings()

    def check_mix_settings(self) -> None:
        """Validate and normalise the mix's settings in place. Run when the config is built and again when a model
        is built from it: ``from_pretrained(path, mix_backend=...)`` and hand edits set them after ``__init__``."""
        if self.mix_layers is not None:
            if isinstance(self.mix_layers, (str, bytes)) or not hasattr(self.mix_layers, "__iter__"):
                raise ValueError(f"mix_layers must be a list of layer indices or None; got {self.mix_layers!r}")
            layers = []
            for i in self.mix_layers:
                try:  # ints, NumPy ints, 0-d integer tensors; not 1.7 or "12" (int() took them silently)
                    if isinstance(i, bool):
                        raise TypeError
                    layers.append(operator.index(i))
                except TypeError:
                    raise ValueError(f"mix_layers must hold integer layer indices; got {i!r} in "
                                     f"{self.mix_layers!r}") from None
            self.mix_layers = layers
        flag = self.mix_layer_norm
        if isinstance(flag, np.bool_) or (isinstance(flag, numbers.Integral) and flag in (0, 1)):
            flag = bool(flag)  # NumPy's bool, 0 and 1
        if not isinstance(flag, bool):  # bool("false") is True
            raise ValueError(f"mix_layer_norm must be True or False; got {flag!r}")
        self.mix_layer_norm = flag
        if self.mix_initial_scalars is not None:
            raw = self.mix_initial_scalars
            values = None
            if hasattr(raw, "__iter__") and not isinstance(raw, (str, bytes)):
                try:
                    values = [float(v) for v in raw if not isinstance(v, (bool, str, bytes))]
                    values = values if len(values) == len(list(raw)) else None
                except (TypeError, ValueError):
                    values = None
            if values is None or not all(math.isfinite(v) for v in values):
                raise ValueError(f"mix_initial_scalars must be a list of finite numbers or None; got {raw!r}")
            self.mix_initial_scalars = values
        self.mix_backend = self._checked_backend(self.mix_backend)
        indices = self.mixed_layer_indices()  # validates mix_layers' range
        if self.mix_initial_scalars is not None and len(self.mix_initial_scalars) != len(indices):
            raise ValueError(f"mix_initial_scalars has {len(self.mix_initial_scalars)} values but {len(indices)} "
                             f"representations are mixed (mix_layers={self.mix_layers})")

    @staticmethod
    def _checked_backend(mix_backend: Optional[str]) -> Optional[str]:
        if mix_backend is None:
            return None
        name = mix_backend.strip().lower() if isinstance(mix_backend, str) else None
        if name not in BACKENDS:
            raise ValueError(f"mix_backend={mix_backend!r} is not a bermo backend: use None (the default: "
                             f"$BERMO_BACKEND if set, else chosen per device) or one of "
                             f"{', '.join(repr(b) for b in BACKENDS)}")
        return name

    @classmethod
    def register_for_auto_class(cls, auto_class="AutoConfig"):
        """Nothing to do: every BERMo configuration already carries its ``auto_map`` (see the class docstring).
        transformers' version would copy this module into checkpoints, which must instead import the installed
        bermo."""

    def save_pretrained(self, save_directory, push_to_hub: bool = False, **kwargs):
        """``PretrainedConfig.save_pretrained``, plus the small module named by ``auto_map`` (it imports the
        installed bermo's classes) for loading with ``trust_remote_code=True``."""
        if os.path.isfile(save_directory):
            raise AssertionError(f"Provided path ({save_directory}) should be a directory, not a file")
        os.makedirs(save_directory, exist_ok=True)
        shutil.copyfile(_REMOTE_CODE_SOURCE, os.path.join(save_directory, f"{REMOTE_CODE_MODULE}.py"))
        return super().save_pretrained(save_directory, push_to_hub=push_to_hub, **kwargs)

    @classmethod
    def get_config_dict(cls, pretrained_model_name_or_path, **kwargs):
        """Reads a checkpoint's configuration; a plain BERT one is taken as a BERMo one, with one note from bermo
        per process instead of transformers' "model of type bert to instantiate a model of type bermo" warning
        on every load (BERMo is BERT plus the mix, so this is the expected way to start one)."""
        global _warned_bert_checkpoint
        config_dict, kwargs = super().get_config_dict(pretrained_model_name_or_path, **kwargs)
        if config_dict.get("model_type") == "bert" and cls.model_type == "bermo":
            config_dict = {**config_dict, "model_type": cls.model_type}
            if not _warned_bert_checkpoint:
                _warned_bert_checkpoint = True
                warnings.warn(f"bermo: building a BERMo model from the BERT checkpoint {pretrained_model_name_or_path!s}"
                              " as intended: the BERT weights load, the scalar mix starts from its configured "
                              "values (mix_initial_scalars, default uniform; gamma 1); a task head the checkpoint "
                              "lacks is new, one it has (a fine-tuned BERT classifier's) loads but was trained on "
                              "the last layer's [CLS], not on the mix. (Said once per process.)", UserWarning,
                              stacklevel=4)
        return config_dict, kwargs

    def mixed_layer_indices(self) -> List[int]:
        """Indices into ``hidden_states`` (0 .. num_hidden_layers) of the mixed representations, in order."""
        n = self.num_hidden_layers + 1
        if self.mix_layers is None:
            return list(range(n))
        if not self.mix_layers:
            raise ValueError("mix_layers is empty: mix at least one representation (or None for all)")
        out = []
        for i in self.mix_layers:
            if not -n <= i < n:
                raise ValueError(f"mix_layers index {i} is out of range: there are {n} representations "
                                 f"(0 = embeddings, 1..{n - 1} = encoder layers)")
            out.append(i % n)
        if len(set(out)) != len(out):
            raise ValueError(f"mix_layers {self.mix_layers} names a representation twice")
        return out


AutoConfig.register("bermo", BermoConfig, exist_ok=True)
_autoregister._register_ready(finishing=__name__)  # a trigger imported while this module was half done
