"""BERMo models on Hugging Face transformers: a BERT encoder whose head reads a scalar mix of its layers."""
from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import List, Optional

import torch
from torch import nn
from transformers import AutoModel, AutoModelForSequenceClassification
from transformers.modeling_outputs import BaseModelOutputWithPoolingAndCrossAttentions, SequenceClassifierOutput
from transformers.models.bert.modeling_bert import BertModel, BertPooler, BertPreTrainedModel

from .. import backends
from ..nn.scalar_mix import ScalarMix
from . import _autoregister
from .configuration_bermo import BermoConfig


try:  # transformers >= 5 gathers hidden states through forward hooks, installed lazily at the first call
    from transformers.utils.output_capturing import maybe_install_capturing_hooks as _install_capturing_hooks
except ImportError:  # transformers 4: hidden states gathered by the encoder's loop, no hooks
    _install_capturing_hooks = None

_CAPTURE_HOOKS_MODULE = getattr(_install_capturing_hooks, "__module__", None)  # where the hooks' closures live


def _without_capture_hooks(module: nn.Module, memo: dict) -> nn.Module:
    """A shallow copy of ``module``'s tree (the same parameters, buffers and other hooks) without transformers'
    hidden-state capture hooks (local closures: not picklable) and their installed-mark, which the next call
    installs again. Modules that appear twice in the tree stay one."""
    if id(module) in memo:
        return memo[id(module)]
    state = module.__dict__.copy()
    hooks = state.get("_forward_hooks")
    drop = ([k for k, h in hooks.items() if getattr(h, "__module__", None) == _CAPTURE_HOOKS_MODULE]
            if hooks and _CAPTURE_HOOKS_MODULE else [])
    if drop:
        for name in ("_forward_hooks", "_forward_hooks_with_kwargs", "_forward_hooks_always_called"):
            if name in state:
                state[name] = type(state[name])((k, v) for k, v in state[name].items() if k not in drop)
    state.pop("_output_capturing_hooks_installed", None)
    clone = module.__class__.__new__(module.__class__)
    memo[id(module)] = clone
    state["_modules"] = {name: None if child is None else _without_capture_hooks(child, memo)
                         for name, child in state["_modules"].items()}
    clone.__dict__.update(state)
    return clone


try:  # transformers >= 5: initialisers that leave weights loaded from a checkpoint alone
    from transformers import initialization as _hf_init

    _constant = _hf_init.constant_
except ImportError:  # transformers 4: _init_weights only runs on modules whose weights were not loaded
    def _constant(tensor: torch.Tensor, value: float) -> torch.Tensor:
        with torch.no_grad():
            return tensor.fill_(value)


@dataclass
class BermoModelOutput(BaseModelOutputWithPoolingAndCrossAttentions):
    """BERT's output plus the mix: ``mixed_cls_state`` (B, H), the mixed [CLS] representation the pooler
    reads; ``mixed_hidden_state`` (B, T, H), the whole mixed sequence when asked for
    (``output_mixed_sequence=True``); ``mixing_weights`` (L,), the current ``softmax(s)``; ``mixing_gamma``."""

    mixed_cls_state: Optional[torch.FloatTensor] = None
    mixed_hidden_state: Optional[torch.FloatTensor] = None
    mixing_weights: Optional[torch.FloatTensor] = None
    mixing_gamma: Optional[torch.FloatTensor] = None


@dataclass
class BermoSequenceClassifierOutput(SequenceClassifierOutput):
    mixing_weights: Optional[torch.FloatTensor] = None


class BermoPreTrainedModel(BertPreTrainedModel):
    """Base of the BERMo models. Where the mix lives: ``BermoModel.scalar_mix``; in models with a head,
    ``model.bert.scalar_mix``. ``get_scalar_mix()``, ``mixing_weights()``, ``mixing_gamma()`` and
    ``mixed_layer_names()`` read it the same way in every class."""

    config_class = BermoConfig
    base_model_prefix = "bert"  # BERT checkpoints (bare or with a head) load as they are

    def get_scalar_mix(self) -> ScalarMix:
        """The ``bermo.nn.ScalarMix`` that mixes the layers (``self.scalar_mix`` or ``self.bert.scalar_mix``)."""
        return self.base_model.scalar_mix

    def mixing_weights(self) -> torch.Tensor:
        """The learned normalised weights ``softmax(s)``, one per mixed representation, in the order of
        ``mixed_layer_names()`` (detached, float32 (float64 for a float64 model), shape (L,)). They sum to 1;
        uniform is ``1 / L`` each."""
        return self.get_scalar_mix().mixing_weights()

    def mixing_gamma(self) -> float:
        """The learned scale ``gamma`` of the mix (starts at 1)."""
        return self.get_scalar_mix().gamma.item()

    def mixed_layer_names(self) -> List[str]:
        """Names of the mixed representations: ``"embeddings"`` (hidden_states[0]) and ``"layer i"`` (the output
        of encoder layer i, hidden_states[i])."""
        return ["embeddings" if i == 0 else f"layer {i}" for i in self.config.mixed_layer_indices()]

    @classmethod
    def register_for_auto_class(cls, auto_class="AutoModel"):
        """Nothing to do: BERMo checkpoints always carry an ``auto_map`` for AutoConfig, AutoModel and
        AutoModelForSequenceClassification that imports the installed bermo (see ``BermoConfig``).
        transformers' version would copy this module into checkpoints instead."""

    # ---- bermo.pruning.compress: compressed checkpoints (see bermo/pruning/compressed_checkpoint.py) --------------
    # A compressed checkpoint loaded into an uncompressed model, or the reverse, is a clear error instead of a
    # trace of size mismatches (or block-sparse values silently left "missing").
    @staticmethod
    def _load_pretrained_model(model, state_dict, checkpoint_files, *args, **kwargs):
        from ..pruning.compressed_checkpoint import check_checkpoint
        check_checkpoint(model, state_dict=state_dict, checkpoint_files=checkpoint_files)
        loaded = BertPreTrainedModel._load_pretrained_model(model, state_dict, checkpoint_files, *args, **kwargs)
        if getattr(model.config, "compressed_layout", None):
            # transformers writes the tensors directly (no _load_from_state_dict): check the block-sparse layers'
            # counts and indices here, or damaged ones would load silently and a compiled forward skips the check.
            from ..pruning.compressed_checkpoint import check_layout_loaded
            from ..pruning.compression import _base_model
            base = _base_model(model)[0]
            if base is not None:
                check_layout_loaded(base)  # (indices still on the meta device cannot be read: left to the forward)
        return loaded

    def load_state_dict(self, state_dict, strict: bool = True, *args, **kwargs):
        from ..pruning.compressed_checkpoint import check_checkpoint
        check_checkpoint(self, state_dict=state_dict, partial=not strict)
        return super().load_state_dict(state_dict, strict, *args, **kwargs)
    # ---- end bermo.pruning.compress -------------------------------------------------------------------------------

    def _init_weights(self, module):
        super()._init_weights(module)
        if isinstance(module, ScalarMix):
            # transformers (re)initialises missing weights here; left alone, a fresh mix would hold whatever
            # memory it was materialised in. Give it its configured start: s from the config, gamma = 1.
            initial = self.config.mix_initial_scalars or [0.0] * module.mixture_size
            for p, value in zip(module.scalar_parameters, initial):
                _constant(p, value)
            _constant(module.gamma, 1.0)


class BermoModel(BermoPreTrainedModel, BertModel):
    """BERT whose pooler reads ``gamma * sum_k softmax(s)_k * h_k`` over the configured representations.

    The encoder's representations are gathered internally (the caller need not ask for hidden states). When
    only the [CLS] representation is needed (the default), only that position is mixed: T-fold less work
    and the same result as mixing the whole sequence and slicing; ``output_mixed_sequence=True`` (or layer
    norm, whose statistics span the whole sequence) mixes every position. The layers are passed to the mix
    as they are: no stacked copy of the hidden states is made.
    """

    def __init__(self, config: BermoConfig, add_pooling_layer: bool = True):
        config.check_mix_settings()  # set after the config was built too (from_pretrained's keyword arguments)
        super().__init__(config, add_pooling_layer=False)
        self.pooler = BertPooler(config) if add_pooling_layer else None
        self.scalar_mix = ScalarMix(len(config.mixed_layer_indices()), do_layer_norm=config.mix_layer_norm,
                                    initial_scalar_parameters=config.mix_initial_scalars,
                                    backend=config.mix_backend)
        if torch.get_default_dtype() != torch.float32:
            # from_pretrained(dtype=...) builds the model under that default dtype; ScalarMix makes float32
            # parameters (as AllenNLP's): follow the model's dtype, as model.to(dtype) does, so both ways of getting
            # a bfloat16 or float64 model give the same mix (and mixing_weights() float64 for a float64 model).
            self.scalar_mix.to(torch.get_default_dtype())
        # bermo.pruning.compress: a compressed config (compressed_layout, pruned_heads) gets its smaller and
        # block-sparse modules now, before weights are initialised or loaded (compressed_checkpoint.py).
        if getattr(config, "compressed_layout", None) or getattr(config, "pruned_heads", None):
            from ..pruning.compressed_checkpoint import rebuild_compressed_layout
            rebuild_compressed_layout(self)
        self.post_init()

    def __getstate__(self):
        """Pickling (``torch.save`` of the module, ``copy.deepcopy``, multiprocessing): without transformers 5's
        hidden-state hooks, which BERMo installs at its first call (it always reads the hidden states) and which
        are local closures: a called BERMo model could not be pickled (``Can't pickle local object``). The copy
        installs them again at its first call."""
        return _without_capture_hooks(self, {}).__dict__

    def _replicate_for_data_parallel(self):
        """DataParallel (what the HF Trainer makes of a model on several GPUs driven by one process) builds new
        replicas from this module at every step, each sharing its submodules' hook dictionaries. transformers 5
        installs its hidden-state hooks at a model's first call and marks only that model: on replicas of a
        model never called itself, every step's replicas added one more hook to every layer, the hidden states
        came back 2L + 1, 3L + 1, ... long and the mix read the wrong layers (silently). Installing them on this
        module first, as the replicas are made, gives every replica the one set and the mark."""
        if _install_capturing_hooks is not None:
            _install_capturing_hooks(self)
        return super()._replicate_for_data_parallel()

    def _check_mix_backend(self, device: torch.device) -> None:
        """The mix's forced backend (``config.mix_backend``) where it can run on ``device``; else, with a warning,
        the automatic choice from now on. A checkpoint's config carries the backend of the machine it was saved
        on (``"triton"`` from a GPU run), a choice for that hardware: it must not stop the model running on
        another. (Skipped while torch.compile traces: the eager calls before have settled it.)"""
        name = self.scalar_mix.backend
        if name is None or torch.compiler.is_compiling():
            return
        name = backends.requested(name)  # (a name set by hand: " CPU " is "cpu")
        if name == "auto":
            return
        reason = backends.unavailable_reason(name, device)
        if reason is not None:
            warnings.warn(f"BERMo: the mix's backend {name!r} (config.mix_backend) cannot run on {device.type} "
                          f"tensors ({reason}); using the automatic choice for this device (set "
                          "config.mix_backend=None to choose per device)", UserWarning, stacklevel=3)
            self.scalar_mix.backend = None

    def forward(self, input_ids=None, attention_mask=None, token_type_ids=None, position_ids=None,
                inputs_embeds=None, output_attentions=None, output_hidden_states=None, return_dict=None,
                output_mixed_sequence: Optional[bool] = None, **kwargs):
        want_hidden = output_hidden_states if output_hidden_states is not None else self.config.output_hidden_states
        return_dict = return_dict if return_dict is not None else getattr(self.config, "return_dict", True)
        if output_attentions is not None:
            kwargs["output_attentions"] = output_attentions
        outputs = super().forward(input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids,
                                  position_ids=position_ids, inputs_embeds=inputs_embeds,
                                  output_hidden_states=True, return_dict=True, **kwargs)
        hidden = outputs.hidden_states
        layers = [hidden[i] for i in self.config.mixed_layer_indices()]
        self._check_mix_backend(layers[0].device)
        mixed_seq = None
        if output_mixed_sequence or self.config.mix_layer_norm:
            mask = None
            if self.config.mix_layer_norm:
                mask = attention_mask if attention_mask is not None else torch.ones(
                    layers[0].shape[:-1], dtype=torch.bool, device=layers[0].device)
                if mask.dim() != 2:  # a 4-D mask says which keys each query sees, not which tokens are padding
                    raise ValueError(f"BermoModel: config.mix_layer_norm=True normalises over the tokens the 2-D "
                                     f"attention_mask (batch, sequence) keeps; got an attention_mask of shape "
                                     f"{tuple(mask.shape)}: pass the 2-D padding mask (1 = token, 0 = padding)")
                if mask.is_floating_point():  # transformers takes float 0/1 masks too; the mix wants bool/int
                    mask = mask != 0
            mixed_seq = self.scalar_mix(layers, mask)
            mixed_cls = mixed_seq[:, 0]
        else:
            mixed_cls = self.scalar_mix([h[:, 0] for h in layers])
        pooled = self.pooler(mixed_cls.unsqueeze(1)) if self.pooler is not None else None
        out = BermoModelOutput(
            last_hidden_state=outputs.last_hidden_state, pooler_output=pooled,
            hidden_states=hidden if want_hidden else None, attentions=getattr(outputs, "attentions", None),
            mixed_cls_state=mixed_cls, mixed_hidden_state=mixed_seq if output_mixed_sequence else None,
            mixing_weights=self.scalar_mix.mixing_weights(), mixing_gamma=self.scalar_mix.gamma.detach())
        return out if return_dict else out.to_tuple()


class BermoForSequenceClassification(BermoPreTrainedModel):
    """BERMo with a dropout + linear head on the pooled mixed [CLS] representation; the loss follows
    ``config.problem_type`` (regression, single-label or multi-label), as ``BertForSequenceClassification``."""

    # The loss is a plain per-batch mean that ignores ``num_items_in_batch``: tell the HF Trainer so, or it
    # skips its own scaling and the loss is gradient-accumulation-steps (or world-size) times too large.
    accepts_loss_kwargs = False

    def __init__(self, config: BermoConfig):
        super().__init__(config)
        self.num_labels = config.num_labels
        self.bert = BermoModel(config)
        dropout = config.classifier_dropout if config.classifier_dropout is not None else config.hidden_dropout_prob
        self.dropout = nn.Dropout(dropout)
        self.classifier = nn.Linear(config.hidden_size, config.num_labels)
        self.post_init()

    def forward(self, input_ids=None, attention_mask=None, token_type_ids=None, position_ids=None,
                inputs_embeds=None, labels=None, output_attentions=None, output_hidden_states=None,
                return_dict=None, **kwargs):
        return_dict = return_dict if return_dict is not None else getattr(self.config, "return_dict", True)
        outputs = self.bert(input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids,
                            position_ids=position_ids, inputs_embeds=inputs_embeds,
                            output_attentions=output_attentions, output_hidden_states=output_hidden_states,
                            return_dict=True, **kwargs)
        logits = self.classifier(self.dropout(outputs.pooler_output))
        loss = self._loss(logits, labels) if labels is not None else None
        out = BermoSequenceClassifierOutput(loss=loss, logits=logits, hidden_states=outputs.hidden_states,
                                            attentions=outputs.attentions, mixing_weights=outputs.mixing_weights)
        return out if return_dict else out.to_tuple()

    def _loss(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        if self.config.problem_type is None:
            if self.num_labels == 1:
                self.config.problem_type = "regression"
            elif labels.dtype in (torch.long, torch.int):
                self.config.problem_type = "single_label_classification"
            else:
                self.config.problem_type = "multi_label_classification"
        if self.config.problem_type == "regression":
            if self.num_labels == 1:
                return nn.functional.mse_loss(logits.reshape(-1), labels.reshape(-1).to(logits.dtype))
            return nn.functional.mse_loss(logits, labels.to(logits.dtype))
        if self.config.problem_type == "single_label_classification":
            if not (labels.dtype == torch.long or labels.is_floating_point()):
                labels = labels.long()  # int32 / int16 / uint8 class ids: cross_entropy takes int64 only
            return nn.functional.cross_entropy(logits.view(-1, self.num_labels), labels.view(-1))
        if self.config.problem_type == "multi_label_classification":
            return nn.functional.binary_cross_entropy_with_logits(logits, labels.to(logits.dtype))
        raise ValueError(f"unknown problem_type {self.config.problem_type!r}: use 'regression', "
                         "'single_label_classification' or 'multi_label_classification'")


AutoModel.register(BermoConfig, BermoModel, exist_ok=True)
AutoModelForSequenceClassification.register(BermoConfig, BermoForSequenceClassification, exist_ok=True)
_autoregister._register_ready(finishing=__name__)  # a trigger imported while this module was half done
