"""Optimizer parameter groups that give the scalar mix its own learning rate.

The mix has one scalar per layer plus ``gamma``. Adam-type optimizers move each parameter by about ``lr`` per
step whatever its gradient's scale, so at a fine-tuning rate such as 5e-5 the scalars move by at most ~0.003
per 100 steps and the mixing weights stay nearly uniform: the mix does not learn. It needs a larger rate of
its own (``DEFAULT_MIX_LR``, chosen from ``benchmarks/mix_lr_sweep.py``; see the README), and no weight decay,
which would pull the scalars to uniform weights and gamma to 0.
"""
from __future__ import annotations

import numbers
import re
from typing import Dict, Iterable, List, Optional

import torch

from ..nn.scalar_mix import ScalarMix

# mix_lr used by BermoTrainingArguments unless told otherwise. Measured with benchmarks/mix_lr_sweep.py
# (MiniLM-L6 on rotten_tomatoes, encoder lr 5e-5; table in benchmarks/results/mix_lr_sweep.md).
DEFAULT_MIX_LR = 1e-2

# transformers' Trainer (get_decay_parameter_names, transformers 5): no weight decay inside nn.LayerNorm modules nor
# for parameters whose lower-cased name matches one of these (searched as regular expressions)
_NO_DECAY_PATTERNS = tuple(re.compile(p) for p in (r"bias", r"layernorm", r"rmsnorm", r"(?:^|\.)norm(?:$|\.)",
                                                    r"_norm(?:$|\.)"))


def _decay_names(model: torch.nn.Module) -> set:
    """The names of ``model``'s parameters that the HF Trainer of transformers 5 weight-decays, written out here:
    ``trainer_pt_utils.get_parameter_names`` takes these patterns only from 4.49 and as regular expressions only
    later, and the project supports older releases."""
    in_layer_norm = {f"{name}.{n}" if name else n for name, module in model.named_modules()
                     if isinstance(module, torch.nn.LayerNorm) for n, _ in module.named_parameters()}
    return {name for name, _ in model.named_parameters(remove_duplicate=False)
            if name not in in_layer_norm and not any(p.search(name.lower()) for p in _NO_DECAY_PATTERNS)}


def mix_parameter_groups(model: torch.nn.Module, lr: float, mix_lr: float, weight_decay: float = 0.0,
                         head_lr: Optional[float] = None,
                         decay_parameter_names: Optional[Iterable[str]] = None) -> List[Dict]:
    """Parameter groups for a ``torch.optim`` optimizer: the encoder at ``lr``, the scalar mix at ``mix_lr``
    and the task head at ``head_lr`` (default ``lr``).

    Works for the BERMo models and for any module holding ``bermo.nn.ScalarMix`` modules. Groups:

    * ``"encoder"`` / ``"encoder_no_decay"``: the pretrained body (``model.base_model``, e.g. ``model.bert``)
      except the mix, with ``weight_decay`` on the parameters the HF Trainer decays (``decay_parameter_names``,
      e.g. a Trainer's ``get_decay_parameter_names(model)``; default: its rule in transformers 5, which spares
      biases, ``nn.LayerNorm`` modules and names with ``layernorm``, ``rmsnorm``, ``norm`` or ``*_norm``);
    * ``"mix"``: every ScalarMix's scalars and gamma, at ``mix_lr`` and never weight-decayed;
    * ``"head"`` / ``"head_no_decay"``: everything else (e.g. the classifier), at ``head_lr``.

    Each group carries its ``name``; empty groups and frozen parameters (``requires_grad=False``) are left out.
    Use as ``torch.optim.AdamW(mix_parameter_groups(model, lr=5e-5, mix_lr=DEFAULT_MIX_LR))``, or through
    ``BermoTrainer`` with ``BermoTrainingArguments(mix_lr=...)``.
    """
    for what, value in (("lr", lr), ("mix_lr", mix_lr), ("weight_decay", weight_decay), ("head_lr", head_lr)):
        if value is None and what == "head_lr":
            continue
        if isinstance(value, bool) or not isinstance(value, numbers.Real) or not value >= 0:
            raise ValueError(f"mix_parameter_groups: {what} must be a number >= 0, got {value!r}")
    lr, mix_lr, weight_decay = float(lr), float(mix_lr), float(weight_decay)
    head_lr = lr if head_lr is None else float(head_lr)
    decays = _decay_names(model) if decay_parameter_names is None else set(decay_parameter_names)

    mix_params = {id(p) for m in model.modules() if isinstance(m, ScalarMix) for p in m.parameters()}
    if not mix_params:
        raise ValueError(f"mix_parameter_groups: {type(model).__name__} holds no bermo.nn.ScalarMix, so there is "
                         "nothing to give mix_lr to (pass the BERMo model itself, not its encoder or a copy)")
    base = getattr(model, "base_model", model)
    body = {id(p) for p in base.parameters()} if base is not model else None  # None: all of it is the body

    groups = {name: [] for name in ("encoder", "encoder_no_decay", "mix", "head", "head_no_decay")}
    seen = set()
    for module_name, module in model.named_modules():
        for param_name, p in module.named_parameters(recurse=False):
            if id(p) in seen:  # shared (tied) parameters go to one group only
                continue
            seen.add(id(p))
            if not p.requires_grad:
                continue
            if id(p) in mix_params:
                groups["mix"].append(p)
                continue
            part = "encoder" if body is None or id(p) in body else "head"
            full_name = f"{module_name}.{param_name}" if module_name else param_name
            groups[part if full_name in decays else f"{part}_no_decay"].append(p)

    settings = {"encoder": (lr, weight_decay), "encoder_no_decay": (lr, 0.0), "mix": (mix_lr, 0.0),
                "head": (head_lr, weight_decay), "head_no_decay": (head_lr, 0.0)}
    out = [{"name": name, "params": params, "lr": settings[name][0], "weight_decay": settings[name][1]}
           for name, params in groups.items() if params]
    if not any(g["name"] == "mix" for g in out):
        raise ValueError("mix_parameter_groups: the model's ScalarMix parameters are all frozen "
                         "(requires_grad=False): nothing to give mix_lr to")
    return out
