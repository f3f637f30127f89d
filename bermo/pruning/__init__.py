"""Movement pruning of BERT-family models (Sanh et al. 2020) on ``bermo.nn.MaskedLinear``.

The workflow:

1. ``prepare(model, method="topK", block_shape=(32, 32))`` turns the encoder linears into MaskedLinear layers;
2. during fine-tuning, a ``CubicSchedule`` drives the pruning level (``set_pruning_level``: density or
   threshold), ``regularization`` penalises the scores (threshold methods, l0) with a weight that follows the
   schedule (``penalty_weight``), and ``distillation_loss`` / ``mix_losses`` distil from an unpruned teacher;
   ``PruningTrainer`` (``BermoPruningTrainer`` for BERMo) does all of it inside the Hugging Face Trainer;
3. ``sparsity_report(model)`` says what is kept, per layer and overall; ``bake_masks(model)`` multiplies the masks
   into plain ``nn.Linear`` weights, for a checkpoint any transformers loader reads exactly;
4. ``compress(model)`` turns every MaskedLinear into its fastest exact inference form (smaller dense layers for
   pruned FFN neurons and heads, ``bermo.nn.BlockSparseLinear`` for sparse blocks); compressed BERMo
   checkpoints reload with ``from_pretrained``, and any compressed checkpoint (plain transformers BERT models
   too) with ``load_compressed(path)``.

Names are imported on first use, so ``import bermo.pruning`` does not import the Trainer (and accelerate).
"""
from __future__ import annotations

from typing import TYPE_CHECKING

from .._lazy import lazy_exports

_EXPORTS = {
    "DEFAULT_TARGETS": "preparation",
    "prepare": "preparation",
    "masked_linears": "preparation",
    "CubicSchedule": "schedule",
    "set_pruning_level": "schedule",
    "level_attribute": "schedule",
    "regularization": "penalties",
    "penalty_weight": "penalties",
    "distillation_loss": "distillation",
    "mix_losses": "distillation",
    "SparsityReport": "report",
    "sparsity_report": "report",
    "kept_fraction": "report",
    "PruningConfig": "trainer",
    "PruningMixin": "trainer",
    "PruningTrainer": "trainer",
    "BermoPruningTrainer": "trainer",
    "compress": "compression",
    "default_crossover": "compression",
    "CompressedCheckpointError": "compressed_checkpoint",
    "load_compressed": "compressed_checkpoint",
    "bake_masks": "baking",
}

__all__ = sorted(_EXPORTS)

if TYPE_CHECKING:  # static analysers see ordinary imports
    from .distillation import distillation_loss, mix_losses
    from .penalties import penalty_weight, regularization
    from .preparation import DEFAULT_TARGETS, masked_linears, prepare
    from .report import SparsityReport, kept_fraction, sparsity_report
    from .schedule import CubicSchedule, level_attribute, set_pruning_level
    from .baking import bake_masks
    from .compressed_checkpoint import CompressedCheckpointError, load_compressed
    from .compression import compress, default_crossover
    from .trainer import BermoPruningTrainer, PruningConfig, PruningMixin, PruningTrainer


__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS, globals())
