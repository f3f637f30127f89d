"""How much of a model its MaskedLinears prune, per layer and overall."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Dict, List

import torch
from torch import nn

from ..nn.masked_linear import l0_mask
from .preparation import masked_linears

COLUMNS = ("layer", "method", "block_shape", "shape", "params", "kept", "removed", "density")


def _kept_blocks(module) -> torch.Tensor:
    """The blocks the current mask keeps (bool, ``blocks_shape``); for ``l0`` those of its deterministic (eval)
    mask, whatever the module's mode, so a report does not draw a random mask."""
    with torch.no_grad():
        if module.method == "l0":
            return l0_mask(module.scores, training=False) != 0
        return module.block_mask() != 0


def kept_fraction(model: nn.Module) -> float:
    """The fraction of the weights of all of ``model``'s MaskedLinears that their current masks keep."""
    kept = total = 0
    for _, module in masked_linears(model):
        bo, bi = module.block_shape
        blocks = _kept_blocks(module)
        n = int(blocks.sum())
        module.note_kept_fraction(n / max(1, blocks.numel()))  # (the threshold methods' GPU path hint)
        kept += n * bo * bi
        total += module.weight.numel()
    if not total:
        raise ValueError(f"kept_fraction: {type(model).__name__} has no bermo.nn.MaskedLinear")
    return kept / total


@dataclass
class SparsityReport:
    """``layers``: one row per MaskedLinear; ``total``: all of them together; ``model``: the whole model (every
    parameter but the mask scores, the unpruned ones counted as kept). Each row is a dict with ``layer``,
    ``method``, ``block_shape``, ``shape`` (of the weight), ``params``, ``kept``, ``removed`` (weights; biases
    are never pruned and are counted only in ``model``) and ``density`` (kept / params). ``rows`` is all of them
    in that order; ``markdown()`` (also ``str(report)``) is the printable table."""

    layers: List[Dict[str, Any]]
    total: Dict[str, Any]
    model: Dict[str, Any]

    @property
    def rows(self) -> List[Dict[str, Any]]:
        return [*self.layers, self.total, self.model]

    @property
    def density(self) -> float:
        """The kept fraction of the pruned layers' weights."""
        return self.total["density"]

    def markdown(self) -> str:
        def cell(row, column):
            value = row[column]
            if column == "density":
                return f"{value:.4f}"
            if column in ("params", "kept", "removed"):
                return f"{value:,}"
            if isinstance(value, tuple):
                return "x".join(str(v) for v in value)
            return str(value)

        lines = ["| " + " | ".join(COLUMNS) + " |",
                 "|" + "|".join("---:" if c in ("params", "kept", "removed", "density") else "---"
                                for c in COLUMNS) + "|"]
        lines += ["| " + " | ".join(cell(row, c) for c in COLUMNS) + " |" for row in self.rows]
        return "\n".join(lines)

    __str__ = markdown


def _row(layer, method, block_shape, shape, params, kept) -> Dict[str, Any]:
    return {"layer": layer, "method": method, "block_shape": block_shape, "shape": shape, "params": params,
            "kept": kept, "removed": params - kept, "density": kept / params if params else 1.0}


def sparsity_report(model: nn.Module) -> SparsityReport:
    """The masks as they are now (the current density / threshold; ``l0``'s deterministic mask): per-layer and
    overall density, weights kept and removed. See ``SparsityReport``."""
    layers, scores = [], set()
    for name, module in masked_linears(model):
        bo, bi = module.block_shape
        kept = int(_kept_blocks(module).sum()) * bo * bi
        layers.append(_row(name, module.method, (bo, bi), tuple(module.weight.shape), module.weight.numel(), kept))
        if module.scores is not None:
            scores.add(id(module.scores))
    if not layers:
        if getattr(getattr(model, "config", None), "compressed_layout", None):
            raise ValueError(f"sparsity_report: {type(model).__name__} is compressed (bermo.pruning.compress): its "
                             "masks are gone (the pruned weights were removed); take the report before compress")
        raise ValueError(f"sparsity_report: {type(model).__name__} has no bermo.nn.MaskedLinear: call "
                         "bermo.pruning.prepare(model) first")
    params = sum(r["params"] for r in layers)
    kept = sum(r["kept"] for r in layers)
    methods = sorted({r["method"] for r in layers})
    total = _row("all pruned layers", "/".join(methods), "", "", params, kept)
    everything = sum(p.numel() for p in model.parameters() if id(p) not in scores)
    whole = _row("whole model", "", "", "", everything, everything - (params - kept))
    return SparsityReport(layers, total, whole)
