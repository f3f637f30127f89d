"""Movement pruning with the Hugging Face Trainer: ``PruningTrainer`` (any BERT-family model) and
``BermoPruningTrainer`` (BERMo models: ``bermo.models.BermoTrainer``'s mix learning rate as well).

Both take a ``PruningConfig``. On construction the model's encoder linears become ``MaskedLinear`` layers
(``prepare``; a model that already has MaskedLinear layers is used as it is). Then, during ``train()``:

* the cubic schedule (``CubicSchedule``) sets the pruning level (``set_pruning_level``: density for topK and
  magnitude, threshold for the threshold methods) at the start of training and after every optimizer step, from
  ``state.global_step``, so a resumed run picks up where it stopped and every gradient-accumulation micro-batch
  of one optimizer step uses the same level;
* the loss is ``alpha * distillation + (1 - alpha) * task`` when a teacher is given (``task`` alone otherwise),
  plus ``penalty_weight(step) * regularization(model)`` for the threshold methods and l0;
* the mask scores get their own optimizer group at ``scores_learning_rate`` without weight decay (the recipe's
  1e-2; the weights keep ``learning_rate``);
* each training log (``logging_steps``) adds ``pruning_density`` or ``pruning_threshold`` (the scheduled level
  now), ``kept_fraction`` (what the masks keep now), ``pruning_penalty_weight`` and, averaged since the last log,
  ``pruning_penalty`` (the unweighted ``regularization``) and ``distill_loss``.

Evaluation (``evaluate``, ``eval_strategy``) runs with the masks as they are at that step, and its loss is the
task loss alone (no penalty, no distillation); with ``load_best_model_at_end`` the best checkpoint comes back at
the level of its step. The Trainer's own ``loss`` log is the total loss. Training
refuses to start when the schedule leaves no pruning phase or when the initial masks keep no weight.

The penalty and distillation terms are per-batch means, scaled like the Trainer's loss: where the Trainer takes
the model's loss as normalised over the whole accumulated batch (a model that accepts ``num_items_in_batch``) it
does not divide by the gradient accumulation steps, so these terms are divided here. transformers' BERT sequence
classifier accepts ``**kwargs`` yet returns a per-batch mean: the pruning trainers scale its loss as a mean
(``scale_per_batch_mean_loss``); in a plain Trainer it is gradient accumulation steps (or processes) times too
large. BERMo's classifier says ``accepts_loss_kwargs = False``.

Distillation follows the student's ``config.problem_type`` (else the teacher's; else regression for one output,
single-label otherwise: ``distillation_loss``): softened KL for single- and multi-label classifiers, the mean
squared error to the teacher's predictions for regression.

A callback plus a ``compute_loss`` override would do the same; a Trainer subclass keeps it to one object and lets
the scores' learning rate reach the optimizer. It is written as a mixin (``PruningMixin``) so it composes with
other Trainer subclasses: ``BermoPruningTrainer`` is ``PruningMixin`` + ``BermoTrainer``, whose mix parameter
groups stay as they are (the scores are moved out of them into a ``"scores"`` group).

Needs ``accelerate`` (as the HF Trainer does): ``pip install "bermo[train]"``.
"""
from __future__ import annotations

import inspect
import json
import math
import numbers
import os
import re
import warnings
import weakref
from dataclasses import dataclass, field
from typing import Any, Dict, Optional, Sequence, Tuple, Union

import torch
from torch import nn
from transformers import Trainer, TrainerCallback

from ..nn.masked_linear import METHODS
from .distillation import distillation_loss, mix_losses
from .penalties import PENALISED_METHODS, penalty_weight, regularization
from .preparation import masked_linears, prepare
from .report import kept_fraction
from .schedule import LEVEL_ATTRIBUTE, CubicSchedule, set_pruning_level


def _finite(value, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(float(value)):
        raise ValueError(f"PruningConfig: {name} must be a finite real number; got {value!r}")
    return float(value)


@dataclass
class PruningConfig:
    """What to prune and how, for ``PruningTrainer`` / ``BermoPruningTrainer``.

    Args:
        method: ``"topK"`` (movement pruning), ``"magnitude"``, ``"threshold"``, ``"sigmoied_threshold"`` (soft
            movement pruning) or ``"l0"``.
        block_shape: ``(bo, bi)`` blocks the masks keep or remove (default (32, 32); (1, 1) is unstructured).
        targets: which linears to prune, as regexes searched in the module names; ``None``: every encoder linear
            (see ``prepare``).
        initial_level, final_level: the schedule's start and end: densities (fractions kept, in (0, 1]) for topK
            and magnitude, thresholds for the threshold methods (in [0, 1] for ``sigmoied_threshold``, whose
            threshold applies to ``sigmoid(scores)``). ``initial_level`` defaults to 1.0 (density) or 0.0
            (threshold); ``final_level`` must be given (e.g. 0.1). ``l0`` has no level: leave both ``None``.
        initial_warmup_steps, final_warmup_steps: optimizer steps at the initial and the final level (the recipe
            uses one and two epochs).
        total_steps: the schedule's length in optimizer steps; ``None``: the Trainer's ``max_steps`` at
            ``train()``. It must exceed the two warm-ups together.
        regularization_weight: the final weight of ``regularization(model)`` (threshold methods and l0 only),
            reached as the schedule does (``penalties.penalty_weight``).
        scores_learning_rate: the learning rate of the mask scores, in a group of their own without weight
            decay (default 1e-2, the recipe's); ``None`` leaves them in the Trainer's groups.
        teacher: an unpruned model for distillation, or ``None``; moved to the Trainer's device, put in eval mode
            and frozen. It gets the student's inputs without the labels and must give logits of the same shape.
        temperature: the distillation temperature (> 0).
        alpha: the distillation share of the loss, ``alpha * distill + (1 - alpha) * task``, in [0, 1]; used
            only with a teacher.
        prepare_options: more ``MaskedLinear.from_linear`` options for ``prepare`` (``scores_init``,
            ``backend``). Method ``"threshold"`` keeps scores above the threshold and scores start at 0, so give
            it ``scores_init`` above ``initial_level`` (training refuses masks that keep nothing).
    """

    method: str = "topK"
    block_shape: Tuple[int, int] = (32, 32)
    targets: Optional[Union[str, Sequence[str]]] = None
    initial_level: Optional[float] = None
    final_level: Optional[float] = None
    initial_warmup_steps: int = 0
    final_warmup_steps: int = 0
    total_steps: Optional[int] = None
    regularization_weight: float = 0.0
    scores_learning_rate: Optional[float] = 1e-2
    teacher: Optional[nn.Module] = None
    temperature: float = 2.0
    alpha: float = 0.5
    prepare_options: Dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise ValueError(f"PruningConfig: unknown method {self.method!r}; choose one of {', '.join(METHODS)}")
        attribute = self.level_attribute
        if attribute is None:
            if self.initial_level is not None or self.final_level is not None:
                raise ValueError("PruningConfig: method 'l0' has no pruning level (its sparsity comes from the "
                                 "penalty: set regularization_weight); leave initial_level and final_level None")
        else:
            if self.initial_level is None:
                self.initial_level = 1.0 if attribute == "density" else 0.0
            if self.final_level is None:
                example = "0.1 keeps 10% of the weights" if attribute == "density" else "e.g. 0.1"
                raise ValueError(f"PruningConfig: method {self.method!r} needs final_level, the {attribute} the "
                                 f"schedule ends at ({example})")
            for name in ("initial_level", "final_level"):
                value = _finite(getattr(self, name), name)
                if attribute == "density" and not 0.0 < value <= 1.0:
                    raise ValueError(f"PruningConfig: {name} is a density for method {self.method!r} (the fraction "
                                     f"of weights kept) and must be in (0, 1]; got {value}")
                if self.method == "sigmoied_threshold" and not 0.0 <= value <= 1.0:
                    raise ValueError(f"PruningConfig: {name} is a threshold on sigmoid(scores) for method "
                                     f"'sigmoied_threshold' and must be in [0, 1]; got {value}")
                setattr(self, name, value)
        for name in ("initial_warmup_steps", "final_warmup_steps"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 0:
                raise ValueError(f"PruningConfig: {name} must be an int >= 0 (optimizer steps); got {value!r}")
            setattr(self, name, int(value))
        if self.total_steps is not None:
            self.schedule(self.total_steps)  # a run too short for the warm-ups fails here, not at train()
        weight = _finite(self.regularization_weight, "regularization_weight")
        if weight < 0:
            raise ValueError(f"PruningConfig: regularization_weight must be >= 0; got {weight}")
        if weight > 0 and self.method not in PENALISED_METHODS:
            raise ValueError(f"PruningConfig: regularization_weight={weight:g} has no effect with method "
                             f"{self.method!r}, whose density the schedule sets; the penalty applies to "
                             f"{', '.join(PENALISED_METHODS)}")
        if self.scores_learning_rate is not None and not _finite(self.scores_learning_rate,
                                                                 "scores_learning_rate") >= 0:
            raise ValueError(f"PruningConfig: scores_learning_rate must be >= 0; got {self.scores_learning_rate}")
        if self.teacher is not None and not isinstance(self.teacher, nn.Module):
            raise TypeError(f"PruningConfig: teacher must be a torch.nn.Module or None; got "
                            f"{type(self.teacher).__name__}")
        if not _finite(self.temperature, "temperature") > 0:
            raise ValueError(f"PruningConfig: temperature must be > 0; got {self.temperature}")
        if not 0.0 <= _finite(self.alpha, "alpha") <= 1.0:
            raise ValueError(f"PruningConfig: alpha (the distillation share of the loss) must be in [0, 1]; got "
                             f"{self.alpha}")
        if not isinstance(self.prepare_options, dict):
            raise TypeError("PruningConfig: prepare_options must be a dict of MaskedLinear.from_linear options")

    @property
    def level_attribute(self) -> Optional[str]:
        """``"density"``, ``"threshold"`` or ``None`` (l0): what the level sets on each MaskedLinear."""
        return LEVEL_ATTRIBUTE[self.method]

    def schedule(self, total_steps: int) -> CubicSchedule:
        """The cubic schedule of the level over ``total_steps`` optimizer steps (for l0, only its shape is used:
        the penalty weight)."""
        return CubicSchedule(self.initial_level if self.initial_level is not None else 0.0,
                             self.final_level if self.final_level is not None else 0.0,
                             total_steps, self.initial_warmup_steps, self.final_warmup_steps)


def _logits(outputs, who: str) -> torch.Tensor:
    if isinstance(outputs, dict) and "logits" in outputs:
        return outputs["logits"]
    logits = getattr(outputs, "logits", None)
    if isinstance(logits, torch.Tensor):
        return logits
    raise TypeError(f"PruningTrainer: distillation needs the {who}'s logits, but its output "
                    f"({type(outputs).__name__}) has no 'logits'; return a ModelOutput with logits")


class _PruningCallback(TrainerCallback):
    """Steps the schedule: at the start of training and before and after every optimizer step."""

    def __init__(self, trainer: "PruningMixin") -> None:
        self._trainer = weakref.ref(trainer)

    def on_train_begin(self, args, state, control, **kwargs):
        trainer = self._trainer()
        trainer._start_pruning_schedule(state.max_steps)
        trainer._apply_pruning_level(state.global_step)
        if kept_fraction(trainer.model) == 0.0:
            method, level = trainer.pruning.method, trainer.pruning_level
            raise ValueError(f"{type(trainer).__name__}: the masks keep no weight at the start of training (method "
                             f"{method!r} at level {level!r}); e.g. 'threshold' keeps blocks whose scores exceed the "
                             "threshold, and scores start at 0 unless prepare_options sets scores_init: lower "
                             "initial_level below the initial scores or raise scores_init")

    def on_step_begin(self, args, state, control, **kwargs):
        self._trainer()._apply_pruning_level(state.global_step)

    def on_step_end(self, args, state, control, **kwargs):
        self._trainer()._apply_pruning_level(state.global_step)

    def on_train_end(self, args, state, control, **kwargs):
        """After ``load_best_model_at_end`` the model holds the best checkpoint's weights and scores: set the level
        it was evaluated at (the level lives in the MaskedLinear attributes, not in the weights)."""
        if args.load_best_model_at_end and state.best_model_checkpoint is not None:
            step = best_checkpoint_step(state)
            if step is not None:
                self._trainer()._apply_pruning_level(step)


def best_checkpoint_step(state) -> Optional[int]:
    """The global step of ``state.best_model_checkpoint``, the weights ``load_best_model_at_end`` loaded: the step
    in the checkpoint's own ``trainer_state.json``, else its ``checkpoint-<step>`` name. Not
    ``state.best_global_step``: transformers moves that at every better evaluation, saved or not, so with
    evaluations between saves it can name a step whose weights were never saved."""
    path = state.best_model_checkpoint
    try:
        with open(os.path.join(path, "trainer_state.json")) as f:
            return int(json.load(f)["global_step"])
    except (OSError, KeyError, ValueError, TypeError):
        pass
    found = re.search(r"checkpoint-(\d+)$", os.path.normpath(path))
    return int(found.group(1)) if found else None


class PruningMixin:
    """The pruning behaviour of ``PruningTrainer``, for mixing into any ``transformers.Trainer`` subclass:
    ``class MyPruningTrainer(PruningMixin, MyTrainer)``. Takes ``pruning=PruningConfig(...)`` besides the
    Trainer's arguments; see the module docstring.

    Attributes: ``pruning`` (the config), ``pruned_layers`` (the MaskedLinear names), ``pruning_schedule`` (the
    ``CubicSchedule``, built when training starts unless ``pruning.total_steps`` is given), ``pruning_level``
    (the level set now).
    """

    def __init__(self, model: Optional[nn.Module] = None, args=None, *more, pruning: Optional[PruningConfig] = None,
                 **kwargs) -> None:
        name = type(self).__name__
        if not isinstance(pruning, PruningConfig):
            raise TypeError(f"{name}: pass pruning=PruningConfig(...); got {type(pruning).__name__}")
        if model is None:
            raise ValueError(f"{name}: needs model= (model_init is not supported: the model must be prepared for "
                             "pruning once, before the Trainer is built)")
        existing = list(masked_linears(model))
        if existing:
            other = sorted({m.method for _, m in existing if m.method != pruning.method})
            if other:
                raise ValueError(f"{name}: the model's MaskedLinear layers use method(s) {other}, but "
                                 f"pruning.method is {pruning.method!r}")
            self.pruned_layers = [n for n, _ in existing]
        else:
            self.pruned_layers = prepare(model, pruning.method, pruning.block_shape, pruning.targets,
                                         **pruning.prepare_options)
        self.pruning = pruning
        self.pruning_level = pruning.initial_level
        if pruning.level_attribute is not None:
            set_pruning_level(model, pruning.initial_level)
        self.pruning_schedule: Optional[CubicSchedule] = \
            pruning.schedule(pruning.total_steps) if pruning.total_steps is not None else None
        self._pruning_sums: Dict[str, torch.Tensor] = {}
        self._pruning_counts: Dict[str, int] = {}
        super().__init__(model, args, *more, **kwargs)
        scale_per_batch_mean_loss(self)
        self._optimizer_given = self.optimizer is not None
        if pruning.teacher is not None:
            pruning.teacher.to(self.args.device).eval().requires_grad_(False)
        self.add_callback(_PruningCallback(self))

    # ------------------------------------------------------------------------------------------ schedule
    def _start_pruning_schedule(self, max_steps: int) -> None:
        total = self.pruning.total_steps if self.pruning.total_steps is not None else max_steps
        if total is None or total < 1:
            raise ValueError(f"{type(self).__name__}: the Trainer has no step count ({max_steps!r}) for the "
                             "pruning schedule; set PruningConfig.total_steps or TrainingArguments.max_steps")
        self.pruning_schedule = self.pruning.schedule(total)
        if max_steps is not None and 0 < max_steps < total - self.pruning.final_warmup_steps:
            warnings.warn(f"{type(self).__name__}: training stops after {max_steps} steps, before the pruning "
                          f"schedule reaches its final level (step {total - self.pruning.final_warmup_steps} of "
                          f"total_steps={total})", UserWarning, stacklevel=2)

    def _apply_pruning_level(self, step: int) -> None:
        if self.pruning_schedule is None:
            return
        if self.pruning.level_attribute is not None:
            self.pruning_level = self.pruning_schedule.value(step)
            set_pruning_level(self.model, self.pruning_level)

    def current_penalty_weight(self) -> float:
        """The penalty weight at the current step (0 before training starts)."""
        if self.pruning_schedule is None:
            return 0.0
        return penalty_weight(self.pruning.regularization_weight, self.pruning_schedule, self.state.global_step)

    # ---------------------------------------------------------------------------------------------- loss
    def _extra_loss_scale(self, num_items_in_batch) -> float:
        """What to multiply a per-batch-mean term by so that it is scaled like the Trainer's loss: when the
        Trainer takes the loss as already normalised over the accumulated batch (and so does not divide it by
        the gradient accumulation steps), divide the extra terms ourselves."""
        scaled = getattr(self, "loss_is_scaled_for_ga", None)
        if scaled is None:
            scaled = (getattr(self, "model_accepts_loss_kwargs", False) and num_items_in_batch is not None) or \
                getattr(self, "compute_loss_func", None) is not None
        steps = getattr(self, "current_gradient_accumulation_steps", None) or self.args.gradient_accumulation_steps
        return 1.0 / steps if scaled else 1.0

    def _record(self, key: str, value: torch.Tensor) -> None:
        value = value.detach().float()
        self._pruning_sums[key] = self._pruning_sums[key] + value if key in self._pruning_sums else value
        self._pruning_counts[key] = self._pruning_counts.get(key, 0) + 1

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        """The Trainer's loss in evaluation; in training, mixed with distillation and plus the penalty."""
        if not model.training or self.pruning_schedule is None:
            return super().compute_loss(model, inputs, return_outputs=return_outputs,
                                        num_items_in_batch=num_items_in_batch)
        teacher = self.pruning.teacher
        if teacher is not None:  # before the Trainer's compute_loss, which may pop the labels from inputs
            label_keys = set(getattr(self, "label_names", None) or ()) | {"labels"}
            teacher_inputs = {k: v for k, v in inputs.items() if k not in label_keys}
        loss, outputs = super().compute_loss(model, inputs, return_outputs=True, num_items_in_batch=num_items_in_batch)
        scale = self._extra_loss_scale(num_items_in_batch)
        if teacher is not None:
            with torch.no_grad():
                teacher_outputs = teacher(**teacher_inputs)
            # the task's kind, as transformers' classifiers record it at their first forward with labels (the
            # student's; the teacher's when the student's loss ran without them, e.g. label smoothing)
            problem_type = getattr(getattr(self.model, "config", None), "problem_type", None) \
                or getattr(getattr(teacher, "config", None), "problem_type", None)
            distill = distillation_loss(_logits(outputs, "student"), _logits(teacher_outputs, "teacher"),
                                        self.pruning.temperature, problem_type=problem_type)
            loss = mix_losses(loss, distill * scale, self.pruning.alpha)
            self._record("distill_loss", distill)
        if self.pruning.method in PENALISED_METHODS:
            penalty = regularization(model)
            weight = self.current_penalty_weight()
            if weight > 0:
                loss = loss + (weight * scale) * penalty
            self._record("pruning_penalty", penalty)
        return (loss, outputs) if return_outputs else loss

    # ----------------------------------------------------------------------------------------- optimizer
    def create_optimizer(self, model=None):
        """The Trainer's (or the next class's) optimizer, with the mask scores moved into a ``"scores"`` group at
        ``pruning.scores_learning_rate`` and no weight decay. An optimizer given to the constructor is used as
        it is."""
        if self.optimizer is not None and self._optimizer_given:
            return self.optimizer
        optimizer = super().create_optimizer() if model is None else super().create_optimizer(model)
        lr = self.pruning.scores_learning_rate
        if lr is None:
            return optimizer
        opt_model = self.model if model is None else model
        names = {id(p): n for n, p in opt_model.named_parameters()}
        scores = [m.scores for _, m in masked_linears(opt_model) if m.scores is not None and m.scores.requires_grad]
        if not scores:
            return optimizer
        ids = {id(p) for p in scores}
        groups = []
        for group in optimizer.param_groups:
            keep = [i for i, p in enumerate(group["params"]) if id(p) not in ids]
            if len(keep) == len(group["params"]):
                groups.append(group)
                continue
            if "param_names" in group:
                group["param_names"] = [group["param_names"][i] for i in keep]
            group["params"] = [group["params"][i] for i in keep]
            if group["params"]:
                groups.append(group)
        optimizer.param_groups[:] = groups
        new_group = {"params": scores, "lr": lr, "weight_decay": 0.0, "name": "scores"}
        if groups and "param_names" in groups[0]:
            new_group["param_names"] = [names.get(id(p), "scores") for p in scores]
        optimizer.add_param_group(new_group)
        return optimizer

    # ------------------------------------------------------------------------------------------- logging
    def pruning_logs(self) -> Dict[str, float]:
        """The pruning entries of a training log (and the running averages reset)."""
        logs: Dict[str, float] = {}
        attribute = self.pruning.level_attribute
        if attribute is not None:
            logs[f"pruning_{attribute}"] = float(self.pruning_level)
        logs["kept_fraction"] = kept_fraction(self.model)
        logs["pruning_penalty_weight"] = self.current_penalty_weight()
        for key, total in self._pruning_sums.items():
            logs[key] = total.item() / self._pruning_counts[key]
        self._pruning_sums, self._pruning_counts = {}, {}
        return logs

    def log(self, logs: Dict[str, float], *args, **kwargs) -> None:
        if "loss" in logs and self.pruning_schedule is not None:  # a training log
            logs.update(self.pruning_logs())
        super().log(logs, *args, **kwargs)


def scale_per_batch_mean_loss(trainer: Trainer) -> None:
    """Make ``trainer`` scale a per-batch-mean loss as one (divided by the gradient accumulation steps, not
    multiplied by the number of processes) for ``transformers``' own sequence classifiers that compute it so:
    their forward takes ``**kwargs``, so the Trainer assumes a loss normalised by ``num_items_in_batch``, but
    BERT's, RoBERTa's, DistilBERT's, ELECTRA's... loss is ``CrossEntropyLoss()`` / ``MSELoss()`` /
    ``BCEWithLogitsLoss()``, a mean that ignores it (transformers 5), and loss and gradients came out that many
    times too large. Those are told apart from the classifiers that do normalise (through ``self.loss_function``)
    by their forward's source. A model that says ``accepts_loss_kwargs`` itself keeps the Trainer's decision."""
    model = trainer.accelerator.unwrap_model(trainer.model)
    cls = type(model)
    if hasattr(model, "accepts_loss_kwargs") or not cls.__module__.startswith("transformers.") \
            or not cls.__name__.endswith("ForSequenceClassification"):
        return
    try:
        source = inspect.getsource(cls.forward)
    except (OSError, TypeError):
        return
    if "loss_function" not in source:
        trainer.model_accepts_loss_kwargs = False


class PruningTrainer(PruningMixin, Trainer):
    """``transformers.Trainer`` with movement pruning (see the module docstring and ``PruningConfig``)::

        trainer = PruningTrainer(model=model, args=TrainingArguments(...), train_dataset=ds,
                                 pruning=PruningConfig(method="topK", final_level=0.1, initial_warmup_steps=500,
                                                       final_warmup_steps=1000))
        trainer.train()
        print(sparsity_report(model))

    For BERMo models use ``BermoPruningTrainer``, which also gives the scalar mix its learning rate.
    """


def _bermo_pruning_trainer():
    try:
        from ..models.trainer import BermoTrainer
    except ImportError as exc:
        raise ImportError(f"BermoPruningTrainer needs bermo.models.BermoTrainer, which could not be imported "
                          f"({exc}); PruningTrainer works for BERMo models too, without the mix's own learning "
                          "rate") from exc

    class BermoPruningTrainer(PruningMixin, BermoTrainer):
        """``BermoTrainer`` (the scalar mix at ``mix_lr``, ``BermoTrainingArguments``) with movement pruning:
        ``PruningTrainer``'s behaviour, the mask scores in a ``"scores"`` group beside BermoTrainer's groups."""

    BermoPruningTrainer.__module__ = __name__
    BermoPruningTrainer.__qualname__ = "BermoPruningTrainer"
    return BermoPruningTrainer


def __getattr__(name: str):
    # Built on first use: BermoTrainer may be absent from an older bermo.models.
    if name == "BermoPruningTrainer":
        value = globals()[name] = _bermo_pruning_trainer()
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
