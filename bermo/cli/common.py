"""What the ``bermo`` subcommands share: the data options, reading a checkpoint's config, the metrics, and the
error every bad input becomes (printed as ``bermo <command>: error: ...``, exit status 2, before any training
starts)."""
from __future__ import annotations

import argparse
import json
import os
from typing import Any, Dict, List, Optional

import numpy as np


class CommandError(Exception):
    """A bad input to a ``bermo`` command: the message says what is wrong and how to fix it."""


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """``--help`` showing each option's default the way argparse's ``ArgumentDefaultsHelpFormatter`` does
    ("(default: 32)" after the help text), except for defaults of None or False: flags, and options whose default
    is worked out later, whose help says in words what it is ("default: --lr") where argparse would print
    "(default: None)". A help string holding ``%(default)s`` places the default itself (nothing is appended)."""

    def _get_help_string(self, action: argparse.Action) -> str:
        if action.default is None or action.default is False:
            return action.help or ""
        return super()._get_help_string(action)


def add_data_arguments(parser: argparse.ArgumentParser, need_train: bool = True) -> None:
    group = parser.add_argument_group("data (a GLUE task by name, or local files)")
    group.add_argument("--task", help="a GLUE task (sst2, mnli, qqp, ...), loaded through HF datasets from the hub")
    if need_train:
        group.add_argument("--train-file", help="training data: GLUE-style .tsv (header, no quoting), .csv or .jsonl")
    group.add_argument("--validation-file", help="dev data, same format")
    group.add_argument("--test-file", help="test data, same format (labels optional)")
    group.add_argument("--text-columns", help="comma-separated text column(s), e.g. 'sentence' or "
                                              "'question1,question2' (default: inferred from the header)")
    group.add_argument("--label-column", default="label", help="the label column")
    group.add_argument("--max-length", type=int, default=128, help="tokens per example after truncation")


def load_data(args: argparse.Namespace, model_labels: Optional[List[str]] = None, model: str = ""):
    """``bermo.data.load_text_classification`` from the command's options; its errors become CommandErrors.

    ``model_labels``: the label names of a trained classifier (``classifier_labels``). Local files then map their
    labels onto its ids (labels it lacks are an error; integer labels are taken as its ids), so a file holding
    only some of its classes scores, and a file naming its classes in another order never flips the head. A
    GLUE task brings its own names, which must equal the model's."""
    from ..data.text_classification import load_text_classification

    files = {k: getattr(args, k, None) for k in ("train_file", "validation_file", "test_file")}
    columns = tuple(c.strip() for c in args.text_columns.split(",")) if args.text_columns else None
    if columns is not None and (not all(columns) or len(columns) > 2):
        raise CommandError(f"--text-columns {args.text_columns!r}: give one or two column names, comma-separated")
    names = model_labels if args.task is None else None
    try:
        data = load_text_classification(task=args.task, **files, text_columns=columns,
                                        label_column=args.label_column, label_names=names)
    except (ValueError, OSError, KeyError) as err:  # OSError: missing files, and the hub out of reach
        message = str(err).strip("'\"")
        if names is not None and "label_names" in message:
            message += f" (the labels of --model {model}, a trained classifier)"
        raise CommandError(message) from err
    if model_labels is not None:
        if not same_labels(model_labels, data.label_names, args.task):
            raise CommandError(f"--model {model} was trained with labels {model_labels}; the data's are "
                               f"{data.label_names}: start from its encoder (a BERT checkpoint) for a new head, or "
                               "from a classifier trained with these labels")
    return data


def same_labels(model_labels: List[str], data_labels: List[str], task: Optional[str]) -> bool:
    """Whether a classifier's label names (in id order) are the data's. For a GLUE task, ids as names ("0", "1":
    a model trained on an integer-labelled file) and case (a hub model's "NEGATIVE") say the same."""
    want, have = [str(n).strip() for n in model_labels], [str(n).strip() for n in data_labels]
    return want == have or (task is not None and (want == [str(i) for i in range(len(have))] or
                                                  [w.lower() for w in want] == [h.lower() for h in have]))


def classifier_labels(config) -> Optional[List[str]]:
    """The label names of a trained sequence classifier, in id order; None for other checkpoints and for
    transformers' generic ``LABEL_<i>`` names (which say nothing about the classes)."""
    if not is_classifier(config):
        return None
    names = [str(config.id2label[i]) for i in range(config.num_labels)]
    return None if all(n == f"LABEL_{i}" for i, n in enumerate(names)) else names


def checkpoint_config(path: str, what: str = "--model", allow_compressed: bool = False):
    """The transformers config of a BERT-family checkpoint (BERT or BERMo; bare or with a head; compressed ones
    only with ``allow_compressed``), or a CommandError saying what ``path`` is instead: not a checkpoint, not BERT,
    a pruning run's intermediate checkpoint (its scores would be dropped on loading)."""
    import bermo.models  # noqa: F401  (registers model_type "bermo")
    from transformers import AutoConfig

    if os.path.isdir(path) and not os.path.isfile(os.path.join(path, "config.json")):
        raise CommandError(f"{what} {path}: the folder has no config.json, so it is not a transformers checkpoint")
    if not os.path.exists(path) and (path.startswith((".", "/", "~")) or path.count("/") > 1):
        raise CommandError(f"{what} {path}: no such folder")
    try:
        config = AutoConfig.from_pretrained(path)
    except Exception as err:  # transformers raises OSError/ValueError/EnvironmentError with long texts
        raise CommandError(f"{what} {path}: not a loadable transformers checkpoint ({type(err).__name__}: "
                           f"{str(err).splitlines()[0] if str(err) else ''})") from err
    if config.model_type not in ("bert", "bermo"):
        raise CommandError(f"{what} {path}: a {config.model_type!r} checkpoint; bermo works with BERT "
                           "checkpoints (model_type 'bert') and BERMo ones ('bermo')")
    if os.path.isdir(path) and holds_mask_scores(path):
        raise CommandError(f"{what} {path}: a checkpoint taken while pruning (it holds MaskedLinear scores, which "
                           "transformers' loaders would drop, running the unpruned weights). Use the run's model/ "
                           "folder (masks multiplied into the weights) or compressed/, or continue the run with "
                           "`bermo train --resume`")
    from ..pruning.compressed_checkpoint import layout_of

    if not allow_compressed and layout_of(config) is not None:
        raise CommandError(f"{what} {path}: a compressed model (its layers were made smaller); {what} needs an "
                           "uncompressed checkpoint, e.g. the run's model/ folder")
    return config


def holds_mask_scores(path: str) -> bool:
    """Whether a checkpoint folder's safetensors hold MaskedLinear ``scores`` (a pruning run's checkpoint-N)."""
    import glob

    try:
        from safetensors import safe_open
    except ImportError:  # pragma: no cover - transformers depends on safetensors
        return False
    for file in glob.glob(os.path.join(path, "*.safetensors")):
        with safe_open(file, framework="pt") as f:
            if any(key.endswith(".scores") for key in f.keys()):
                return True
    return False


def is_classifier(config) -> bool:
    """Whether a checkpoint was saved as a sequence classifier (has a trained task head)."""
    return any(a.endswith("ForSequenceClassification") for a in (getattr(config, "architectures", None) or []))


def metrics_function(num_labels: int):
    """``compute_metrics`` for the Trainer: accuracy, F1 (``f1_score``), Matthews correlation (``matthews``;
    GLUE's metric for CoLA) and the share of the most frequent predicted label (what the divergence check reads)."""

    def compute(eval_pred) -> Dict[str, float]:
        logits = eval_pred.predictions
        if isinstance(logits, (tuple, list)):
            logits = logits[0]
        preds = np.asarray(logits).argmax(-1)
        labels = np.asarray(eval_pred.label_ids)
        return {"accuracy": float((preds == labels).mean()), "f1": f1_score(labels, preds, num_labels),
                "matthews": matthews(labels, preds, num_labels),
                "predicted_majority_share": float(np.bincount(preds, minlength=num_labels).max() / len(preds))}

    return compute


def f1_score(labels: np.ndarray, preds: np.ndarray, num_labels: int) -> float:
    """F1 of the positive class (id 1) for two labels; otherwise the unweighted mean over the classes present
    in the labels or the predictions (a class absent from both, e.g. in a small dev subset, is no evidence of
    anything: counting it as 0 pulled the mean down). As scikit-learn's ``binary`` and ``macro`` F1."""
    present = sorted(set(np.unique(labels).tolist()) | set(np.unique(preds).tolist()))
    scores = []
    for c in ([1] if num_labels == 2 else present):
        tp = float(((preds == c) & (labels == c)).sum())
        fp = float(((preds == c) & (labels != c)).sum())
        fn = float(((preds != c) & (labels == c)).sum())
        scores.append(0.0 if tp == 0 else 2 * tp / (2 * tp + fp + fn))
    return float(np.mean(scores)) if scores else 0.0


def matthews(labels: np.ndarray, preds: np.ndarray, num_labels: int) -> float:
    """Matthews correlation coefficient (multi-class form, Gorodkin 2004; as scikit-learn's): 0 when either the
    labels or the predictions hold a single class."""
    k = max(num_labels, int(labels.max(initial=0)) + 1, int(preds.max(initial=0)) + 1)
    confusion = np.bincount(labels.astype(np.int64) * k + preds.astype(np.int64), minlength=k * k).reshape(k, k)
    confusion = confusion.astype(np.float64)
    t, p = confusion.sum(1), confusion.sum(0)
    n, correct = confusion.sum(), np.trace(confusion)
    denominator = np.sqrt((n * n - p @ p) * (n * n - t @ t))
    return float((correct * n - t @ p) / denominator) if denominator > 0 else 0.0


def write_json(path: str, payload: Dict[str, Any]) -> None:
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w") as f:
        json.dump(payload, f, indent=1, default=str)
