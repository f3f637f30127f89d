"""The HF Trainer with the scalar mix at its own learning rate (see ``optim.mix_parameter_groups``).

Needs ``accelerate`` (as the HF Trainer does): ``pip install "bermo[train]"``.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

import torch
from transformers import Trainer, TrainingArguments

from .optim import DEFAULT_MIX_LR, mix_parameter_groups


@dataclass
class BermoTrainingArguments(TrainingArguments):
    """``TrainingArguments`` plus the learning rates of the scalar mix and of the task head.

    ``learning_rate`` (and ``weight_decay``) stay the encoder's; the mix is never weight-decayed. The LR
    schedule (warmup, decay) scales every group alike. Works with ``HfArgumentParser`` (``--mix_lr``).
    """

    mix_lr: float = field(default=DEFAULT_MIX_LR, metadata={
        "help": "Learning rate of the BERMo scalar mix (its per-layer scalars and gamma). At the encoder's "
                "fine-tuning rate the mixing weights barely move from uniform."})
    head_lr: Optional[float] = field(default=None, metadata={
        "help": "Learning rate of the task head (e.g. the classifier); default: learning_rate."})


class BermoTrainer(Trainer):
    """``Trainer`` whose optimizer puts the scalar mix in its own parameter group at ``args.mix_lr``
    (``BermoTrainingArguments``; with plain ``TrainingArguments``, ``DEFAULT_MIX_LR``).

    The optimizer class and its other settings (``optim``, betas, eps, ``optim_args``) are the Trainer's;
    optimizers that build their own parameter groups (layer-wise, GaLore, LOMO, factories such as Muon) cannot
    take the mix's rate and are refused. An optimizer passed to the constructor (``optimizers=``) is used as is.
    """

    def create_optimizer(self, model=None) -> torch.optim.Optimizer:
        if self.optimizer is not None:
            return self.optimizer
        opt_model = self.model if model is None else model
        args = self.args
        groups = mix_parameter_groups(opt_model, lr=args.learning_rate, mix_lr=getattr(args, "mix_lr", DEFAULT_MIX_LR),
                                      weight_decay=args.weight_decay, head_lr=getattr(args, "head_lr", None),
                                      decay_parameter_names=self.get_decay_parameter_names(opt_model))
        preset = getattr(self, "optimizer_cls_and_kwargs", None)
        optimizer_cls, optimizer_kwargs = preset if preset is not None else \
            self.get_optimizer_cls_and_kwargs(args, opt_model)
        optimizer_kwargs = dict(optimizer_kwargs)
        own_groups = [k for k in ("params", "model", "optimizer_dict") if k in optimizer_kwargs]
        factory = not (isinstance(optimizer_cls, type) and issubclass(optimizer_cls, torch.optim.Optimizer))
        if own_groups or factory:
            raise ValueError(f"BermoTrainer: optim={args.optim!r} builds its own parameter groups "
                             f"({', '.join(own_groups) or 'an optimizer factory'}), so the scalar mix cannot get "
                             "mix_lr; use an optimizer that takes parameter groups (e.g. optim='adamw_torch')")
        self.optimizer = optimizer_cls(groups, **optimizer_kwargs)
        return self.optimizer
