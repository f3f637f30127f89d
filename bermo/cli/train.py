"""``bermo train``: fine-tune BERT (``--arch bert``) or BERMo (``--arch bermo``) from any BERT checkpoint on a
text-classification task, optionally pruning (movement pruning and its relatives), distilling from a teacher
and compressing the result. Built on the Hugging Face Trainer, so ``torchrun --nproc_per_node N -m bermo train``
(and, on GPUs, ``accelerate launch --num_processes N -m bermo train``) run it on several processes unchanged.

What a run leaves in ``--output-dir``:

* ``model/``: the final model and tokenizer (a pruned model with its masks multiplied into the weights, so any
  transformers loader reads it back exactly: ``bermo.pruning.bake_masks``); ``compressed/`` with ``--compress``;
* ``checkpoint-<step>/``: the Trainer's checkpoints (``--save-steps``), from which ``--resume`` continues;
* ``curve.csv`` (dev metrics every ``--eval-steps``), ``curve.json`` (those and the training loss every
  ``--logging-steps``), ``curve.png`` (both);
* ``summary.json``: options, final dev metrics, divergence, density, mixing weights, times, paths;
* ``run_options.json``: the options that define the run, which ``--resume`` must match;
* ``sparsity.md`` (pruned runs) and ``mixing_weights.png`` (BERMo runs).

Every option is checked, and the data, labels and checkpoint read, before training starts: a bad input is an
error naming what is wrong, never a half-run. A folder that holds a run is continued (``--resume``), replaced
(``--overwrite``) or refused, never mixed with a second run.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import shutil
import time
from typing import Any, Dict, List, Optional, Tuple

from .common import (CommandError, add_data_arguments, checkpoint_config, classifier_labels, is_classifier,
                     load_data, metrics_function, same_labels, write_json)

METHODS = ("topK", "magnitude", "threshold", "sigmoied_threshold", "l0")
DENSITY_METHODS = ("topK", "magnitude")
THRESHOLD_METHODS = ("threshold", "sigmoied_threshold")
L0_SCORES_INIT = 2.197  # log 9: sigmoid = 0.9


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from ..models.optim import DEFAULT_MIX_LR

    parser.add_argument("--arch", choices=("bert", "bermo"), required=True,
                        help="bert: BertForSequenceClassification (the head reads the last layer's [CLS]); bermo: "
                             "the head reads a learned scalar mix of every layer")
    parser.add_argument("--model", required=True, help="a BERT checkpoint: a local folder or a hub name")
    parser.add_argument("--output-dir", required=True, help="where the model, checkpoints, curve and summary go")
    add_data_arguments(parser)
    group = parser.add_argument_group("training")
    group.add_argument("--max-train-samples", type=int,
                       help="train on a seeded random subset of this many examples (default: all of them)")
    group.add_argument("--max-eval-samples", type=int, help="evaluate on the first N dev examples (default: all)")
    group.add_argument("--subset-seed", type=int, default=0,
                       help="seed of the --max-train-samples subset, fixed apart from --seed so that runs with "
                            "different seeds train on the same examples")
    group.add_argument("--epochs", type=float, default=3.0,
                       help="passes over the training data, may be fractional; a --max-steps above 0 overrides it")
    group.add_argument("--max-steps", type=int, default=-1,
                       help="optimizer steps; above 0 it overrides --epochs (default: %(default)s, i.e. train for "
                            "--epochs)")
    group.add_argument("--batch-size", type=int, default=32, help="training batch size, per process")
    group.add_argument("--eval-batch-size", type=int, default=64, help="evaluation batch size, per process")
    group.add_argument("--gradient-accumulation-steps", type=int, default=1,
                       help="batches whose gradients are summed into one optimizer step")
    group.add_argument("--lr", type=float, default=2e-5, help="the encoder's learning rate")
    group.add_argument("--mix-lr", type=float, default=DEFAULT_MIX_LR,
                       help="the BERMo mix's learning rate (its scalars and gamma; default %(default)s: at "
                            "the encoder's rate the mixing weights barely move)")
    group.add_argument("--head-lr", type=float, help="the classifier's learning rate (default: --lr)")
    group.add_argument("--weight-decay", type=float, default=0.01, help="the optimizer's weight decay")
    group.add_argument("--warmup-ratio", type=float, default=0.0,
                       help="linear learning-rate warm-up over this share of the steps, then linear decay")
    group.add_argument("--seed", type=int, default=42,
                       help="random seed: the new head's initialisation, dropout and the order of the examples")
    group.add_argument("--eval-steps", type=int, default=50, help="evaluate (and log the curve) every N steps")
    group.add_argument("--logging-steps", type=int, default=10,
                       help="log the training loss (to curve.json) every N steps")
    group.add_argument("--save-steps", type=int, help="checkpoint every N steps (default: --eval-steps; 0: never)")
    group.add_argument("--save-total-limit", type=int, default=2,
                       help="checkpoints kept in --output-dir; older ones are deleted")
    group.add_argument("--resume", nargs="?", const="last", metavar="CHECKPOINT",
                       help="continue from a checkpoint: a checkpoint folder, or (no value) the last one in "
                            "--output-dir")
    group.add_argument("--overwrite", action="store_true",
                       help="replace the run already in --output-dir (its checkpoints, model, curve, summary and "
                            "plots are deleted first); without it, a folder holding a run is refused")
    group.add_argument("--freeze-embeddings", action="store_true",
                       help="do not train the embeddings (movement pruning's recipe)")
    group.add_argument("--mix-layer-norm", action="store_true", help="BERMo: layer-normalise each layer before mixing")
    group.add_argument("--mix-backend", choices=("auto", "triton", "cpu", "reference"),
                       help="BERMo: the ScalarMix backend (default: per device)")
    group.add_argument("--precision", choices=("fp32", "bf16", "fp16"), default="fp32",
                       help="mixed precision (torch.autocast through the Trainer): bf16 on recent GPUs or a CPU, fp16 "
                            "with a loss scaler; the weights stay float32")
    group.add_argument("--no-progress", action="store_true", help="no progress bars")
    group.add_argument("--collapse-share", type=float, default=0.98,
                       help="a dev evaluation where this share of predictions is one class counts as diverged")
    group = parser.add_argument_group("pruning (bermo.pruning; the encoder's linears become MaskedLinear)")
    group.add_argument("--prune", choices=METHODS, help="the pruning method (default: no pruning)")
    group.add_argument("--block", default="32",
                       help="mask block: N (NxN), OxI, 'row' (whole output neurons) or 'col'")
    group.add_argument("--final-density", type=float, help="topK / magnitude: the fraction of weights kept at the end")
    group.add_argument("--final-threshold", type=float,
                       help="threshold / sigmoied_threshold: the threshold at the end")
    group.add_argument("--initial-warmup-steps", type=int,
                       help="steps at the initial level before pruning starts (default: 10%% of the run)")
    group.add_argument("--final-warmup-steps", type=int,
                       help="steps at the final level at the end (default: 20%% of the run)")
    group.add_argument("--penalty", type=float, default=0.0,
                       help="sigmoied_threshold / threshold / l0: final weight of the score penalty")
    group.add_argument("--scores-lr", type=float, default=1e-2, help="learning rate of the mask scores")
    group.add_argument("--scores-init", type=float,
                       help="initial mask scores (default 0; threshold: 1.0, above its initial threshold 0; l0: "
                            f"{L0_SCORES_INIT}, the movement-pruning recipe's, an eval mask of 0.98)")
    group.add_argument("--teacher", help="a fine-tuned classifier to distil from (needs --prune)")
    group.add_argument("--alpha", type=float, default=0.5, help="distillation share of the loss")
    group.add_argument("--temperature", type=float, default=2.0, help="distillation temperature")
    group.add_argument("--compress", action="store_true",
                       help="also write compressed/: the pruned model made smaller and faster (bermo.pruning.compress)")


def parse_block(text: str) -> Tuple[Optional[int], Optional[int], str]:
    """'32' -> (32, 32); '16x64' -> (16, 64); 'row'/'col' -> resolved per layer later (None sides)."""
    value = text.strip().lower()
    if value in ("row", "rows"):
        return 1, None, "row"
    if value in ("col", "cols", "column", "columns"):
        return None, 1, "col"
    parts = value.split("x")
    try:
        sides = [int(p) for p in parts]
    except ValueError:
        sides = []
    if len(sides) == 1:
        sides = sides * 2
    if len(sides) != 2 or min(sides) < 1:
        raise CommandError(f"--block {text!r}: give N (NxN blocks), OxI (e.g. 32x32), 'row' or 'col'")
    return sides[0], sides[1], value


def check_options(args: argparse.Namespace) -> None:
    """Options that do not fit together, before anything is loaded."""
    import torch

    from ..models.optim import DEFAULT_MIX_LR
    def bad(message):
        raise CommandError(message)

    if args.resume and args.overwrite:
        bad("--resume continues the run in --output-dir and --overwrite deletes it: pass one of them")
    for name in ("epochs", "lr", "mix_lr", "scores_lr", "temperature"):
        value = getattr(args, name)
        if value is not None and not (math.isfinite(value) and value > 0):
            bad(f"--{name.replace('_', '-')} must be a positive number; got {value}")
    for name in ("batch_size", "eval_batch_size", "gradient_accumulation_steps", "eval_steps", "logging_steps"):
        if getattr(args, name) < 1:
            bad(f"--{name.replace('_', '-')} must be at least 1; got {getattr(args, name)}")
    for name in ("max_train_samples", "max_eval_samples"):
        if getattr(args, name) is not None and getattr(args, name) < 1:
            bad(f"--{name.replace('_', '-')} must be at least 1; got {getattr(args, name)}")
    if args.max_length < 2:
        bad(f"--max-length must be at least 2 (the [CLS] and [SEP] tokens); got {args.max_length}")
    for name in ("weight_decay", "warmup_ratio"):
        if getattr(args, name) < 0:
            bad(f"--{name.replace('_', '-')} must be >= 0; got {getattr(args, name)}")
    if args.warmup_ratio >= 1:
        bad(f"--warmup-ratio is a share of the steps and must be below 1; got {args.warmup_ratio}")
    if args.save_steps is not None and args.save_steps < 0:
        bad(f"--save-steps must be >= 0 (0: no checkpoints); got {args.save_steps}")
    if args.arch == "bert":
        given = [flag for flag, value in (("--mix-lr", args.mix_lr != DEFAULT_MIX_LR), ("--mix-layer-norm",
                                          args.mix_layer_norm), ("--mix-backend", args.mix_backend is not None),
                                          ("--head-lr", args.head_lr is not None)) if value]
        if given:
            bad(f"{', '.join(given)}: {'is a' if len(given) == 1 else 'are'} BERMo option(s) (the scalar mix and its "
                "head's learning rates); --arch bert has no mix")
    if args.teacher is None and (args.alpha != 0.5 or args.temperature != 2.0):
        bad("--alpha and --temperature set the distillation from --teacher: give --teacher PATH")
    if args.scores_lr != 1e-2 and args.prune in (None, "magnitude"):
        bad(f"--scores-lr is the learning rate of learned mask scores; {'--prune magnitude has none' if args.prune else 'add --prune METHOD'}")
    if not 0.0 <= args.alpha <= 1.0:
        bad(f"--alpha (the distillation share of the loss) must be in [0, 1]; got {args.alpha}")
    if not 0.0 < args.collapse_share <= 1.0:
        bad(f"--collapse-share must be in (0, 1]; got {args.collapse_share}")
    if args.precision == "bf16" and torch.cuda.is_available() and not torch.cuda.is_bf16_supported():
        bad("--precision bf16: this GPU has no bfloat16 support; use --precision fp16 or fp32")
    if args.train_file is None and args.task is None:
        bad("no training data: give --task NAME (a GLUE task) or --train-file (with --validation-file)")
    if args.validation_file is None and args.task is None:
        bad("no dev data: give --validation-file (the curve, divergence check and final metrics need it)")
    method = args.prune
    if method is None:
        for flag, value in (("--final-density", args.final_density), ("--final-threshold", args.final_threshold),
                            ("--teacher", args.teacher), ("--initial-warmup-steps", args.initial_warmup_steps),
                            ("--final-warmup-steps", args.final_warmup_steps), ("--scores-init", args.scores_init)):
            if value is not None:
                bad(f"{flag} is a pruning option: add --prune METHOD (one of {', '.join(METHODS)})")
        if args.compress:
            bad("--compress needs a pruned model: add --prune METHOD")
        if args.penalty:
            bad("--penalty is a pruning option: add --prune sigmoied_threshold, threshold or l0")
        return
    parse_block(args.block)
    if method in DENSITY_METHODS:
        if args.final_threshold is not None:
            bad(f"--final-threshold does not apply to --prune {method} (its level is a density): use --final-density")
        if args.final_density is None:
            bad(f"--prune {method} needs --final-density (the fraction of weights kept at the end, e.g. 0.1)")
        if not 0.0 < args.final_density <= 1.0:
            bad(f"--final-density must be in (0, 1] (the fraction kept); got {args.final_density}")
        if args.penalty:
            bad(f"--penalty does not apply to --prune {method}, whose density the schedule sets; it applies to "
                "sigmoied_threshold, threshold and l0")
    elif method in THRESHOLD_METHODS:
        if args.final_density is not None:
            bad(f"--final-density does not apply to --prune {method} (its sparsity follows the threshold and the "
                "penalty): use --final-threshold and --penalty")
        if args.final_threshold is None:
            bad(f"--prune {method} needs --final-threshold (e.g. 0.1)")
        if method == "sigmoied_threshold" and not 0.0 <= args.final_threshold <= 1.0:
            bad(f"--final-threshold applies to sigmoid(scores) for sigmoied_threshold and must be in [0, 1]; got "
                f"{args.final_threshold}")
    else:  # l0
        if args.final_density is not None or args.final_threshold is not None:
            bad("--prune l0 has no density or threshold schedule (its sparsity comes from --penalty)")
        if not args.penalty:
            bad("--prune l0 needs --penalty > 0 (the weight of the expected-kept-blocks penalty sets its sparsity)")
    if args.penalty < 0:
        bad(f"--penalty must be >= 0; got {args.penalty}")
    for name in ("initial_warmup_steps", "final_warmup_steps"):
        value = getattr(args, name)
        if value is not None and value < 0:
            bad(f"--{name.replace('_', '-')} must be >= 0; got {value}")


def world_size() -> int:
    return int(os.environ.get("WORLD_SIZE", "1"))


def data_parallel_gpus() -> int:
    """GPUs one process drives: the HF Trainer wraps the model in DataParallel over every visible GPU when it is
    not launched as several processes, multiplying the batch per step."""
    import torch

    return torch.cuda.device_count() if world_size() == 1 and torch.cuda.device_count() > 1 else 1


def replicas() -> int:
    """Data-parallel replicas: what the batch per optimizer step is multiplied by."""
    return world_size() * data_parallel_gpus()


def total_steps(args: argparse.Namespace, n_train: int) -> int:
    """The optimizer steps the Trainer will take (what the pruning schedule spans), computed as the Trainer does:
    batches per process per epoch, over the accumulation steps, rounded up, times the epochs."""
    if args.max_steps > 0:
        return args.max_steps
    per_process = math.ceil(n_train / world_size())
    batches = math.ceil(per_process / (args.batch_size * data_parallel_gpus()))
    per_epoch = max(1, math.ceil(batches / args.gradient_accumulation_steps))
    return max(1, math.ceil(args.epochs * per_epoch))


def pruning_config(args: argparse.Namespace, steps: int, model, teacher):
    """The ``PruningConfig`` of the options; its own checks (a schedule too short for its warm-ups, ...) become
    CommandErrors."""
    from ..pruning import PruningConfig

    bo, bi, kind = parse_block(args.block)
    initial_warmup = args.initial_warmup_steps if args.initial_warmup_steps is not None else int(0.1 * steps)
    final_warmup = args.final_warmup_steps if args.final_warmup_steps is not None else int(0.2 * steps)
    options: Dict[str, Any] = {}
    scores_init = args.scores_init
    if scores_init is None and args.prune == "threshold":
        scores_init = 1.0
    if scores_init is None and args.prune == "l0":
        # the movement-pruning recipe's l0 start (mask_scale 2.197 = log 9): eval mask 1.2 * 0.9 - 0.1 = 0.98, the
        # model nearly as it was; scores at 0 would halve every weight (1.2 * 0.5 - 0.1) before training began
        scores_init = L0_SCORES_INIT
    if scores_init is not None:
        options["scores_init"] = scores_init
    level = args.final_density if args.prune in DENSITY_METHODS else args.final_threshold
    try:
        return PruningConfig(method=args.prune, block_shape=(bo or 1, bi or 1),
                             final_level=level, initial_warmup_steps=initial_warmup,
                             final_warmup_steps=final_warmup, total_steps=steps,
                             regularization_weight=args.penalty, scores_learning_rate=args.scores_lr,
                             teacher=teacher, temperature=args.temperature, alpha=args.alpha,
                             prepare_options=options), kind
    except ValueError as err:
        raise CommandError(f"pruning options: {err} (this run has {steps} optimizer steps; warm-ups "
                           f"{initial_warmup} + {final_warmup})") from err


def prepare_lines(model, method: str, kind: str, options: Dict[str, Any]) -> None:
    """Whole rows ('row': one mask value per output neuron) or columns ('col': per input feature) of every
    encoder linear: the block is (1, in_features) or (out_features, 1), which differs between layers, so the
    layers are prepared in groups of equal shape (``PruningTrainer`` then uses them as they are)."""
    import re

    from torch import nn

    from ..pruning import prepare

    groups: Dict[Tuple[int, int], list] = {}
    for name, module in model.named_modules():
        if isinstance(module, nn.Linear) and re.search(r"encoder\.layer\.\d+\.", name):
            block = (1, module.in_features) if kind == "row" else (module.out_features, 1)
            groups.setdefault(block, []).append(re.escape(name) + "$")
    if not groups:
        raise CommandError(f"--block {kind}: the model has no encoder linears to prune")
    for block, names in groups.items():
        prepare(model, method, block, targets=names, **options)


def load_model(args: argparse.Namespace, config, num_labels: int, label_names):
    """The classifier to fine-tune: BERT or BERMo weights from ``--model``, a new head for the task's labels."""
    from transformers import BertForSequenceClassification

    from ..models import BermoForSequenceClassification

    if args.arch == "bert" and config.model_type == "bermo":
        raise CommandError(f"--arch bert --model {args.model}: that is a BERMo checkpoint; its mix would be "
                           "dropped. Use --arch bermo, or a BERT checkpoint")
    if is_classifier(config) and config.num_labels != num_labels:
        raise CommandError(f"--model {args.model} is a classifier with {config.num_labels} labels but the data has "
                           f"{num_labels} ({label_names}); start from its encoder or from a BERT checkpoint")
    labels = {"num_labels": num_labels, "id2label": dict(enumerate(label_names)),
              "label2id": {name: i for i, name in enumerate(label_names)}}
    if args.arch == "bert":
        return BertForSequenceClassification.from_pretrained(args.model, **labels)
    extra: Dict[str, Any] = {}
    if args.mix_layer_norm:
        extra["mix_layer_norm"] = True
    if args.mix_backend:
        extra["mix_backend"] = args.mix_backend
    return BermoForSequenceClassification.from_pretrained(args.model, **labels, **extra)


def load_teacher(path: str, num_labels: int, label_names=None, task: Optional[str] = None):
    """The distillation teacher: a sequence classifier with the data's labels, in the same order (a teacher whose
    ids mean other classes would be distilled from with its classes swapped)."""
    from transformers import AutoModelForSequenceClassification

    config = checkpoint_config(path, "--teacher")
    if not is_classifier(config):
        raise CommandError(f"--teacher {path} is not a sequence classifier (architectures "
                           f"{getattr(config, 'architectures', None)}): distillation needs a fine-tuned teacher, e.g. "
                           "the model/ folder of a `bermo train` run")
    if config.num_labels != num_labels:
        raise CommandError(f"--teacher {path} has {config.num_labels} labels but the data has {num_labels}")
    names = classifier_labels(config)
    if names is not None and label_names is not None and not same_labels(names, label_names, task):
        raise CommandError(f"--teacher {path} was trained with labels {names} (in id order); the data's are "
                           f"{list(label_names)}: its ids would mean other classes than the student's")
    return AutoModelForSequenceClassification.from_pretrained(path)


def parameter_digest(model) -> str:
    """SHA-256 of every parameter (names, dtypes, shapes and bytes): whether processes, or a saved copy, agree."""
    import torch

    digest = hashlib.sha256()
    for name, tensor in sorted(model.named_parameters()):
        data = tensor.detach().cpu().contiguous()
        digest.update(f"{name}:{data.dtype}:{tuple(data.shape)}".encode())
        digest.update(data.view(-1).view(dtype=torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def replicas_agree(model) -> Optional[bool]:
    """With several processes: whether every process ends with the same parameters (None on one process)."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return None
    mine = parameter_digest(model)
    every = [None] * dist.get_world_size()
    dist.all_gather_object(every, mine)
    return all(d == every[0] for d in every)


def close_process_group(ours: bool) -> None:
    """End a run under torchrun: every process waits for the others (process 0 saves last), then the process group
    the Trainer started is destroyed. A process that left with its gloo/NCCL group alive could die at interpreter
    exit (SIGABRT, "terminate called without an active exception") and fail the launch; a group the caller
    started is left as it was. Not called when the run fails: torchrun stops the other processes then, and a
    barrier (or NCCL's collective teardown) would wait for one that is gone."""
    import torch.distributed as dist

    if ours and dist.is_available() and dist.is_initialized():
        if dist.get_world_size() > 1:
            dist.barrier()
        dist.destroy_process_group()


def last_checkpoint(output_dir: str, resume: str) -> str:
    from transformers.trainer_utils import get_last_checkpoint

    if resume != "last":
        if not os.path.isdir(resume):
            raise CommandError(f"--resume {resume}: no such checkpoint folder")
        # the folder holding the checkpoint (the checkpoint itself may be a link elsewhere)
        run_dir = os.path.realpath(os.path.dirname(os.path.abspath(resume.rstrip(os.sep) or resume)))
        if run_dir != os.path.realpath(output_dir):
            # continued elsewhere, a run would skip its options check and lose the first part of its curve
            raise CommandError(f"--resume {resume}: that checkpoint belongs to the run in {run_dir}; continue it "
                               f"there (--output-dir {run_dir}), or start a new run")
        return resume
    found = get_last_checkpoint(output_dir) if os.path.isdir(output_dir) else None
    if found is None:
        raise CommandError(f"--resume: no checkpoint-<step> folder in {output_dir} to continue from")
    return found


# What a run writes in --output-dir (and --overwrite deletes); checkpoint-<step> folders besides
RUN_OUTPUTS = ("model", "compressed", "summary.json", "curve.csv", "curve.json", "curve.png", "sparsity.md",
               "mixing_weights.png", "run_options.json")
# The options that make a run what it is: --resume refuses to continue a run with other values
# (the data, the model, the optimization and its schedules, the pruning: a checkpoint restores the optimizer and
# its learning-rate schedule as they were, so a new --lr, say, would be recorded in the summary but never used)
RUN_DEFINING = ("arch", "model", "task", "train_file", "validation_file", "text_columns", "label_column",
                "max_train_samples", "max_eval_samples", "subset_seed", "seed", "max_length", "prune", "block",
                "mix_layer_norm", "freeze_embeddings", "teacher", "epochs", "max_steps", "batch_size",
                "gradient_accumulation_steps", "lr", "mix_lr", "head_lr", "weight_decay", "warmup_ratio",
                "precision", "collapse_share", "final_density", "final_threshold", "initial_warmup_steps",
                "final_warmup_steps", "penalty", "scores_lr", "scores_init", "alpha", "temperature")


def previous_run(output_dir: str):
    """The names of what an earlier run left in ``output_dir`` (empty when there is none)."""
    if not os.path.isdir(output_dir):
        return []
    return sorted(name for name in os.listdir(output_dir)
                  if name in RUN_OUTPUTS or (name.startswith("checkpoint-") and name[11:].isdigit()))


def _main_process() -> bool:
    return int(os.environ.get("RANK", "0")) == 0


def _comparable(key: str, value):
    """An option as ``--resume`` compares it: paths that exist as their real path (``./m`` is ``m``)."""
    if key in ("model", "teacher", "train_file", "validation_file") and isinstance(value, str) \
            and os.path.exists(value):
        return os.path.realpath(value)
    return value


def check_output_dir(args: argparse.Namespace) -> List[str]:
    """What ``--overwrite`` will delete (deleted just before training, once every input has been read). A folder
    holding a run is continued (``--resume``, with the same defining options), replaced (``--overwrite``) or
    refused: a second run there overwrote the first's model and summary, its checkpoint rotation deleted the
    first run's checkpoints, and the first run's leftovers stayed mixed in. The main process decides (the
    others would see its new run's files; torchrun stops them all when it fails)."""
    out = args.output_dir
    if os.path.exists(out) and not os.path.isdir(out):
        raise CommandError(f"--output-dir {out}: a file is there, not a folder")
    if not _main_process():
        return []
    found = previous_run(out)
    if args.resume:
        saved = os.path.join(out, "run_options.json")
        if os.path.isfile(saved):
            with open(saved) as f:
                before = json.load(f)
            changed = [k for k in RUN_DEFINING
                       if k in before and _comparable(k, before[k]) != _comparable(k, getattr(args, k, None))]
            if changed:
                raise CommandError("--resume: the run in " + out + " was started with other options: " + ", ".join(
                    f"--{k.replace('_', '-')} {before[k]!r} (now {getattr(args, k, None)!r})" for k in changed))
            if "replicas" in before and before["replicas"] != replicas():
                raise CommandError(f"--resume: the run in {out} was started on {before['replicas']} data-parallel "
                                   f"replicas (processes x GPUs each) and this is {replicas()}: the batch per step "
                                   "(and, with --epochs, the planned steps and the pruning and learning-rate "
                                   "schedules) would change mid-run; resume it with as many processes")
        return []
    if not found:
        return []
    if not args.overwrite:
        shown = ", ".join(found[:5]) + (" ..." if len(found) > 5 else "")
        raise CommandError(f"--output-dir {out} holds a previous run ({shown}): pass --resume to continue it, "
                           "--overwrite to replace it, or another folder")
    doomed = [os.path.realpath(os.path.join(out, name)) for name in found]
    for option in ("model", "teacher"):
        value = getattr(args, option, None)
        if isinstance(value, str) and os.path.exists(value):
            real = os.path.realpath(value)
            if any(real == d or real.startswith(d + os.sep) for d in doomed):
                raise CommandError(f"--{option} {value} lies in the run --overwrite would delete: copy it elsewhere "
                                   "first, or write this run to another --output-dir")
    return doomed


def clear_previous_run(doomed: List[str]) -> None:
    for path in doomed:
        if os.path.isdir(path):
            shutil.rmtree(path)
        elif os.path.exists(path):
            os.remove(path)


def write_run_options(args: argparse.Namespace) -> None:
    if _main_process():
        os.makedirs(args.output_dir, exist_ok=True)
        write_json(os.path.join(args.output_dir, "run_options.json"),
                   {**{k: _comparable(k, getattr(args, k, None)) for k in RUN_DEFINING}, "replicas": replicas()})


def run(args: argparse.Namespace) -> Dict[str, Any]:
    import torch.distributed as dist

    group_before = dist.is_available() and dist.is_initialized()
    summary = train_and_save(args)
    close_process_group(ours=not group_before)
    return summary


def train_and_save(args: argparse.Namespace) -> Dict[str, Any]:
    check_options(args)
    doomed = check_output_dir(args)
    started = time.time()
    config = checkpoint_config(args.model)
    if args.teacher:
        checkpoint_config(args.teacher, "--teacher")  # before the data is read: a bad teacher fails at once
    resume = last_checkpoint(args.output_dir, args.resume) if args.resume else None
    if args.max_length > config.max_position_embeddings:
        raise CommandError(f"--max-length {args.max_length} exceeds the {config.max_position_embeddings} positions "
                           f"of --model {args.model}")
    # continuing from a trained classifier: the data's labels on its head's ids (a file naming them in another
    # order, e.g. "fresh"/"rotten" for "0"/"1", silently flipped the head)
    data = load_data(args, classifier_labels(config), args.model)
    if "train" not in data.datasets or "validation" not in data.datasets:
        raise CommandError(f"{data.source}: needs a train and a validation split; has {list(data.datasets)}")

    import torch
    from transformers import AutoTokenizer, DataCollatorWithPadding, Trainer

    from ..data.text_classification import majority_fraction, tokenize
    from ..models import BermoTrainer, BermoTrainingArguments
    from .curves import CurveCallback

    tokenizer = AutoTokenizer.from_pretrained(args.model)
    tokenized = tokenize(data, tokenizer, args.max_length)
    train = tokenized["train"]
    if args.max_train_samples and args.max_train_samples < len(train):
        train = train.shuffle(seed=args.subset_seed).select(range(args.max_train_samples))
    dev = tokenized["validation"]
    if args.max_eval_samples and args.max_eval_samples < len(dev):
        dev = dev.select(range(args.max_eval_samples))
    steps = total_steps(args, len(train))

    torch.manual_seed(args.seed)  # the new head's initialisation follows --seed
    model = load_model(args, config, data.num_labels, data.label_names)
    if args.freeze_embeddings:
        model.bert.embeddings.requires_grad_(False)
    teacher = load_teacher(args.teacher, data.num_labels, data.label_names, args.task) if args.teacher else None
    pruning = kind = None
    if args.prune:
        pruning, kind = pruning_config(args, steps, model, teacher)
        if kind in ("row", "col"):
            try:
                prepare_lines(model, args.prune, kind, pruning.prepare_options)
            except ValueError as err:
                raise CommandError(f"--block {args.block}: {err}") from err

    dev_share = majority_fraction(dev)
    curve = CurveCallback(args.output_dir, dev_share, args.collapse_share,
                          title=f"{args.arch} on {data.source}" + (f", {args.prune} pruning" if args.prune else ""))
    if resume:
        curve.resume_from(os.path.join(args.output_dir, "curve.json"), resume)
    save_steps = args.eval_steps if args.save_steps is None else args.save_steps
    distributed = world_size() > 1
    training_args = BermoTrainingArguments(
        output_dir=args.output_dir, num_train_epochs=args.epochs, max_steps=args.max_steps,
        per_device_train_batch_size=args.batch_size, per_device_eval_batch_size=args.eval_batch_size,
        gradient_accumulation_steps=args.gradient_accumulation_steps, learning_rate=args.lr,
        mix_lr=args.mix_lr, head_lr=args.head_lr, weight_decay=args.weight_decay, warmup_steps=int(round(args.warmup_ratio * steps)),
        seed=args.seed, eval_strategy="steps", eval_steps=args.eval_steps, logging_steps=args.logging_steps,
        save_strategy="steps" if save_steps else "no", save_steps=save_steps or 500,
        save_total_limit=args.save_total_limit, report_to=[], disable_tqdm=args.no_progress,
        ddp_backend="gloo" if distributed and not torch.cuda.is_available() else None,
        use_cpu=not torch.cuda.is_available(), dataloader_num_workers=0,
        bf16=args.precision == "bf16", fp16=args.precision == "fp16",
        logging_nan_inf_filter=False)  # a NaN loss must reach the curve and the divergence check as NaN
    if args.arch == "bermo":
        trainer_cls = BermoTrainer
        if args.prune:
            from ..pruning import BermoPruningTrainer as trainer_cls
    else:
        trainer_cls = Trainer
        if args.prune:
            from ..pruning import PruningTrainer as trainer_cls
    extra = {"pruning": pruning} if pruning is not None else {}
    try:  # the pruning trainer prepares the model: a block shape that does not fit a layer fails here
        trainer = trainer_cls(model=model, args=training_args, train_dataset=train, eval_dataset=dev,
                              data_collator=DataCollatorWithPadding(tokenizer),
                              compute_metrics=metrics_function(data.num_labels), callbacks=[curve], **extra)
    except ValueError as err:
        raise CommandError(f"pruning options: {err}") from err
    # BERT's loss is a per-batch mean although its forward takes **kwargs: the plain Trainer took it as normalised
    # by num_items_in_batch, and loss and gradients were processes (or accumulation steps) times too large
    from ..pruning.trainer import scale_per_batch_mean_loss
    scale_per_batch_mean_loss(trainer)  # (the pruning trainers do it themselves; it is idempotent)
    ignore = ["mixing_weights", "hidden_states", "attentions"]
    if not resume:  # every input read and checked: only now is a replaced run deleted
        clear_previous_run(doomed)
        write_run_options(args)
    elif not os.path.isfile(os.path.join(args.output_dir, "run_options.json")):
        write_run_options(args)  # (a run folder from before they were saved: later resumes are checked)
    result = trainer.train(resume_from_checkpoint=resume, ignore_keys_for_eval=ignore)
    final = {}
    if curve.evals and curve.evals[-1]["step"] == trainer.state.global_step:
        final = {k: v for k, v in curve.evals[-1].items() if k.startswith("eval_")}
    elif not curve.summary()["nan_loss"]:
        final = trainer.evaluate(ignore_keys=ignore)
    curve.finalize(trainer.state)
    trainer.remove_callback(curve)
    test = tokenized.get("test")
    if test is not None and "labels" in test.column_names and not curve.summary()["nan_loss"]:
        final = {**final, **trainer.evaluate(test, ignore_keys=ignore, metric_key_prefix="test")}
    agree = replicas_agree(trainer.model)
    return finish(args, trainer, tokenizer, data, curve, final, result, agree, started, steps, len(train), len(dev))


def finish(args, trainer, tokenizer, data, curve, final, result, agree, started, steps, n_train, n_dev):
    """Save the model (and compressed model), the summary and the plots (main process), print where they are."""
    import copy

    import torch

    model = trainer.model
    model.eval()
    if getattr(model.config, "mix_backend", None) is not None:
        model.config.mix_backend = None  # --mix-backend chose for this machine: the saved model picks per device
    paths: Dict[str, str] = {}
    summary: Dict[str, Any] = {
        "command": "bermo train", "arch": args.arch, "model": args.model, "data": data.source,
        "num_labels": data.num_labels, "label_names": data.label_names, "train_examples": n_train,
        "dev_examples": n_dev, "planned_steps": steps, "steps": trainer.state.global_step,
        "processes": world_size(), "replicas_agree": agree, "parameter_digest": parameter_digest(model),
        "options": {k: v for k, v in vars(args).items()
                                                                         if k != "handler"},
        "final_dev": {k: v for k, v in final.items() if not k.startswith("test_")},
        "final_test": {k: v for k, v in final.items() if k.startswith("test_")} or None, "train_loss": getattr(result, "training_loss", None), **curve.summary()}
    if agree is False:
        summary["diverged"] = True
        summary.setdefault("divergence", []).append(
            {"kind": "replicas_disagree", "step": trainer.state.global_step,
             "message": "the processes ended with different parameters"})
    if hasattr(model, "mixing_weights"):
        summary["mixing_weights"] = dict(zip(model.mixed_layer_names(), model.mixing_weights().tolist()))
        summary["mixing_gamma"] = model.mixing_gamma()
    if not trainer.is_world_process_zero():
        return summary
    if args.prune:
        from ..pruning import bake_masks, compress, sparsity_report

        report = sparsity_report(model)
        summary["density"] = report.density
        summary["kept_parameters"] = report.total["kept"]
        paths["sparsity"] = os.path.join(args.output_dir, "sparsity.md")
        with open(paths["sparsity"], "w") as f:
            f.write(str(report) + "\n")
        if args.compress:
            # the block-sparse crossover of where the model is meant to run (bermo.pruning.compress): on a GPU, the
            # 16-bit table when trained in mixed precision; on a CPU, the float32 weights as saved
            gpu = torch.cuda.is_available()
            target = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(args.precision) if gpu else None
            compressed = compress(copy.deepcopy(model), target_dtype=target, target_device="cuda" if gpu else "cpu")
            paths["compressed"] = os.path.join(args.output_dir, "compressed")
            compressed.save_pretrained(paths["compressed"])
            tokenizer.save_pretrained(paths["compressed"])
        bake_masks(model)
    paths["model"] = os.path.join(args.output_dir, "model")
    model.save_pretrained(paths["model"])
    tokenizer.save_pretrained(paths["model"])
    if hasattr(model, "mixing_weights"):
        try:
            from ..models import plot_mixing_weights
            paths["mixing_weights_plot"] = os.path.join(args.output_dir, "mixing_weights.png")
            plot_mixing_weights(model, paths["mixing_weights_plot"])
        except ImportError:
            pass
    paths.update({f"curve_{k}": v for k, v in curve.paths().items() if os.path.exists(v)})
    summary["paths"] = paths
    summary["seconds"] = round(time.time() - started, 1)
    paths["summary"] = os.path.join(args.output_dir, "summary.json")
    write_json(paths["summary"], summary)
    status = "DIVERGED" if summary["diverged"] else "done"
    acc = final.get("eval_accuracy")
    print(f"bermo train: {status} after {summary['steps']} steps in {summary['seconds']:.0f} s; dev accuracy "
          f"{acc:.4f}" if acc is not None else f"bermo train: {status}; no final dev metrics", flush=True)
    for event in summary.get("divergence", []):
        print(f"  diverged: {event['message']}")
    for key in ("model", "compressed", "curve_csv", "curve_png", "summary", "sparsity", "mixing_weights_plot"):
        if key in paths:
            print(f"  {key:<20} {paths[key]}")
    return summary
