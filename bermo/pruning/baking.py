"""``bake_masks``: a pruned model as a plain one, for saving and sharing without bermo's pruning classes.

A model prepared for pruning holds ``MaskedLinear`` layers (weights, scores, a method and a level). Its
``save_pretrained`` checkpoint carries the weights and the scores only (``magnitude`` has none), which a plain
``from_pretrained`` reads as an unpruned model: it drops the scores (transformers logs them as unexpected; for
``magnitude`` nothing is said) and runs the *unmasked* weights, a different model. ``bake_masks`` replaces each
``MaskedLinear`` by an
``nn.Linear`` holding ``weight * mask`` (the mask taken in eval mode, so ``l0`` draws no noise), which any
transformers loader reads back exactly; the zeros stay, so the model is as big and as fast as before
(``compress`` makes it smaller and faster).
"""
from __future__ import annotations

from typing import List

import torch
from torch import nn

from .preparation import masked_linears


@torch.no_grad()
def bake_masks(model: nn.Module) -> List[str]:
    """Replace every ``MaskedLinear`` of ``model`` (in place) by an ``nn.Linear`` with the mask multiplied into
    its weight; returns the replaced layers' names. Outputs in eval mode are unchanged."""
    names = []
    for name, layer in list(masked_linears(model)):
        was_training = layer.training
        layer.eval()
        weight = layer.weight * layer.mask().to(layer.weight.dtype)
        layer.train(was_training)
        linear = nn.Linear(layer.in_features, layer.out_features, bias=layer.bias is not None,
                           device=weight.device, dtype=weight.dtype)
        linear.weight.copy_(weight)
        if layer.bias is not None:
            linear.bias.copy_(layer.bias)
        linear.train(was_training)
        parent_name, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent_name) if parent_name else model, child, linear)
        names.append(name)
    return names
