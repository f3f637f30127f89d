"""SentEval-style probing of a frozen BERT encoder: one probe per layer and one through a learned scalar mix.

What it answers: how much of a linguistic property (sentence length, tense, bigram shift, ...) a *frozen*
encoder's sentence representations carry, layer by layer, and whether an ELMo-style learned mix of all the
layers (``gamma * sum_k softmax(s)_k * h_k``, ``bermo.nn.ScalarMix``) reads it better than the best single layer.
This is the probing half of the BERMo paper's claims (SentEval, Conneau et al. 2018).

Pipeline (``probe``):

1. ``load_encoder``: any BERT checkpoint folder (bare ``BertModel``, ``BertForSequenceClassification``, BERMo
   models) or an ``nn.Module``, reduced to its ``BertModel``-like encoder, in eval mode, frozen.
2. ``encode_layers``: every split of every task is encoded once; a sentence becomes one vector per hidden state
   (embedding output and each layer), mean-pooled over its real tokens (default) or its [CLS] vector.
3. ``train_probe``: SentEval's classifier protocol on those vectors (logistic regression or a sigmoid MLP,
   hyperparameters chosen on dev accuracy, Adam, batch 64, early stopping on dev), once per layer and once on
   the stack of layers through a ``ScalarMix`` trained jointly with the classifier.
4. ``ProbeTable``: test (and dev) accuracy per task and representation, the learned mix weights; markdown,
   CSV, JSON and a heat map.

Task format: a folder per task holding ``train.jsonl``, ``validation.jsonl`` and ``test.jsonl`` (one
``{"sentence": str, "label": int}`` per line) and ``task.json`` (``{"label_names": [...], ...}``).

Choices the SentEval paper leaves open, or that we changed for a CPU budget (say so when reporting numbers):

* Features are standardised with the train split's mean and standard deviation, each representation
  separately; for the mix probe this happens *before* mixing, so the mix weights compare layers on one scale
  instead of favouring the layer with the largest activations (BERT's norms grow with depth).
* Early stopping keeps the epoch with the best dev accuracy, dev loss breaking ties (with accuracy alone a
  probe that reaches its dev ceiling early would stop before the mix weights have moved); at most
  ``max_epochs`` epochs, stopping after ``patience`` epochs without improvement.
* The mix scalars and gamma have their own learning rate (``mix_lr``, default 1e-2, 10x the classifier's, as
  few-parameter gates need) and no weight decay; they start uniform (s = 0) with gamma = 1, as AllenNLP's.
* ``grid="small"`` (the default) tries L2 in {1e-4, 1e-2} (and for the MLP hidden 100, dropout 0.1): 2
  trainings per representation. ``grid="senteval"`` is the full protocol: 4 trainings per representation for
  logistic regression, 36 for the MLP (hidden {50, 100, 200} x dropout {0, 0.1, 0.2} x L2 {1e-5 .. 1e-2}).

Cost, measured on 2 shared CPU cores with MiniLM-L6 (384 hidden, 7 representations + the mix) and
1000/250/250 sentences per task: encoding about 4 s per task; training the 8 probes about 2.5 s with logistic
regression and the small grid, about 5 s with the SentEval grid, and about 65 s for the MLP with the SentEval
grid (36 configurations x 8 probes). Training runs single-threaded (``num_threads=1``: on busy cores several
threads made these small problems 25x slower). Training time grows with the grid and the train split;
encoding with the number of sentences and their length (and about 12x for bert-base instead of MiniLM).
"""
from __future__ import annotations

import copy
import csv
import json
import math
import os
import time
import warnings
from dataclasses import dataclass, field
from typing import Any, Dict, Iterable, List, Mapping, Optional, Sequence, Tuple, Union

import torch
from torch import nn

__all__ = ["GRIDS", "ProbeResult", "ProbeTable", "encode_layers", "load_encoder", "load_task", "probe",
           "train_probe"]

PathLike = Union[str, "os.PathLike[str]"]
SPLITS = ("train", "validation", "test")
LOGREG_ONLY = {"word_content": "logreg"}  # tasks SentEval always probes with logistic regression
MIX = "mix"

# Hyperparameter grids per classifier. Trainings per representation = product of the value counts.
GRIDS: Dict[str, Dict[str, Dict[str, Tuple[float, ...]]]] = {
    "small": {"logreg": {"l2": (1e-4, 1e-2)},
              "mlp": {"l2": (1e-4, 1e-2), "hidden": (100,), "dropout": (0.1,)}},
    "senteval": {"logreg": {"l2": (1e-5, 1e-4, 1e-3, 1e-2)},
                 "mlp": {"l2": (1e-5, 1e-4, 1e-3, 1e-2), "hidden": (50, 100, 200), "dropout": (0.0, 0.1, 0.2)}},
}
CLASSIFIERS = ("logreg", "mlp")


# --------------------------------------------------------------------------------------------------- loading


def _bert_classes():
    from transformers import BertConfig, BertModel
    return BertConfig, BertModel


def _encoder_of(model: nn.Module, what: str) -> nn.Module:
    """The ``BertModel``-like encoder inside ``model``: itself, or its base model (the ``.bert`` of a head)."""
    _, BertModel = _bert_classes()
    if isinstance(model, BertModel):
        return model
    base = getattr(model, "base_model", None)
    if isinstance(base, BertModel):
        return base
    bert = getattr(model, "bert", None)
    if isinstance(bert, BertModel):
        return bert
    raise ValueError(f"load_encoder: {what} is a {type(model).__name__}, which is neither a BertModel-like "
                     "encoder nor a model holding one (as .base_model or .bert)")


_TOKENIZER_FILES = ("tokenizer.json", "vocab.txt", "tokenizer_config.json", "spiece.model",
                    "sentencepiece.bpe.model", "vocab.json")


def _load_tokenizer(source: Any, what: str):
    from transformers import AutoTokenizer
    if source is None or not isinstance(source, (str, os.PathLike)):
        return source
    folder = os.fspath(source)
    if os.path.isdir(folder) and not any(os.path.isfile(os.path.join(folder, f)) for f in _TOKENIZER_FILES):
        # transformers 5 would build a tokenizer holding only the special tokens: every word would be [UNK].
        raise ValueError(f"load_encoder: {folder!r} ({what}) holds no tokenizer files (none of "
                         f"{', '.join(_TOKENIZER_FILES)}). Pass tokenizer= (a tokenizer or the folder of the base "
                         "model's tokenizer).")
    try:
        return AutoTokenizer.from_pretrained(os.fspath(source))
    except Exception as exc:  # transformers raises OSError, ValueError or others depending on what is missing
        raise ValueError(f"load_encoder: no tokenizer could be loaded from {os.fspath(source)!r} ({what}): "
                         f"{type(exc).__name__}: {str(exc).strip().splitlines()[0] if str(exc).strip() else ''}. "
                         "Pass tokenizer= (a tokenizer or the folder of the base model's tokenizer).") from exc


def _checkpoint_config(path: str):
    """The BERT configuration of the checkpoint folder ``path``, or a ValueError saying what was found."""
    if not os.path.exists(path):
        raise ValueError(f"load_encoder: {path!r} does not exist (expected a BERT checkpoint folder with a "
                         "config.json)")
    if not os.path.isdir(path):
        raise ValueError(f"load_encoder: {path!r} is a file, not a checkpoint folder (expected a folder with a "
                         "config.json and weights, as save_pretrained writes)")
    config_file = os.path.join(path, "config.json")
    if not os.path.isfile(config_file):
        found = sorted(os.listdir(path))
        raise ValueError(f"load_encoder: {path!r} is not a BERT checkpoint: it has no config.json (found "
                         f"{found[:12]}{' ...' if len(found) > 12 else ''})")
    try:
        with open(config_file, encoding="utf-8") as f:
            raw = json.load(f)
    except (OSError, ValueError) as exc:
        raise ValueError(f"load_encoder: {config_file!r} is not readable JSON: {exc}") from exc
    model_type = raw.get("model_type") if isinstance(raw, dict) else None
    if model_type not in ("bert", "bermo"):
        archs = raw.get("architectures") if isinstance(raw, dict) else None
        raise ValueError(f"load_encoder: {path!r} is not a BERT checkpoint: its config.json has model_type "
                         f"{model_type!r} (architectures {archs!r}); expected 'bert' or 'bermo'")
    # Importing the BERMo classes registers model type "bermo" with AutoConfig and the AutoModel classes.
    from bermo.models import BermoConfig, BermoModel
    del BermoModel
    from transformers import AutoConfig
    config = AutoConfig.from_pretrained(path)
    BertConfig, _ = _bert_classes()
    if not isinstance(config, (BertConfig, BermoConfig)):
        raise ValueError(f"load_encoder: {path!r} holds a {type(config).__name__}, not a BERT configuration")
    return config


def _model_class(config):
    """The class the checkpoint was saved from (its ``architectures``), so it loads without unused or missing
    weights; ``AutoModel`` (the bare encoder, any head dropped) when that class is unknown."""
    import transformers
    from transformers import AutoModel, PreTrainedModel

    import bermo.models
    for arch in config.architectures or []:
        cls = getattr(transformers, arch, None)
        if cls is None and arch in bermo.models.__all__:
            cls = getattr(bermo.models, arch)
        if isinstance(cls, type) and issubclass(cls, PreTrainedModel) and isinstance(config, cls.config_class):
            return cls
    return AutoModel


def load_encoder(path_or_model: Union[PathLike, nn.Module], tokenizer: Any = None) -> Tuple[nn.Module, Any]:
    """``(encoder, tokenizer)`` for probing: the ``BertModel``-like encoder of a checkpoint or module, in eval
    mode with every parameter frozen (``requires_grad=False``).

    ``path_or_model``: a checkpoint folder (``save_pretrained`` output) of a bare ``BertModel`` (e.g. the
    offline MiniLM), a ``BertForSequenceClassification``, a ``BermoModel`` or ``BermoForSequenceClassification``
    (model type "bermo" is registered by importing ``bermo.models``); or an ``nn.Module`` already built (frozen
    and put in eval mode *in place*). Heads are dropped: a classifier gives its ``.bert``. Checkpoints that
    bermo's pruning saves load the way ``from_pretrained`` loads them.

    ``tokenizer``: a tokenizer, or a folder to load one from. Default: the checkpoint folder's own (for a module:
    the folder its ``config._name_or_path`` names, if it is one; else None, and ``probe`` asks for one).

    Raises ValueError, naming the path and what was found, when it is not a BERT checkpoint (missing, no
    config.json, another model type) or has no tokenizer and none was given.
    """
    if isinstance(path_or_model, nn.Module):
        encoder = _encoder_of(path_or_model, f"the {type(path_or_model).__name__} passed")
        if tokenizer is None:
            name = getattr(getattr(encoder, "config", None), "_name_or_path", None)
            if name and os.path.isdir(name):
                try:
                    tokenizer = _load_tokenizer(name, "the module's config._name_or_path")
                except ValueError:
                    tokenizer = None
        else:
            tokenizer = _load_tokenizer(tokenizer, "the tokenizer argument")
    elif isinstance(path_or_model, (str, os.PathLike)):
        path = os.fspath(path_or_model)
        config = _checkpoint_config(path)
        model = _model_class(config).from_pretrained(path, config=config)
        encoder = _encoder_of(model, f"the model loaded from {path!r}")
        tokenizer = _load_tokenizer(tokenizer if tokenizer is not None else path,
                                    "the tokenizer argument" if tokenizer is not None else "the checkpoint folder")
    else:
        raise TypeError(f"load_encoder: expected a checkpoint folder or an nn.Module, got "
                        f"{type(path_or_model).__name__}")
    encoder.eval()
    encoder.requires_grad_(False)
    return encoder, tokenizer


# -------------------------------------------------------------------------------------------------- encoding


def _num_representations(encoder: nn.Module) -> int:
    return int(encoder.config.num_hidden_layers) + 1


def _resolve_layers(layers: Union[str, int, Sequence[int], None], count: int) -> List[int]:
    """Indices 0..count-1 (0 = embedding output) from "all", one index or a list (negatives count from the end)."""
    if layers is None or (isinstance(layers, str) and layers == "all"):
        return list(range(count))
    if isinstance(layers, str):
        raise ValueError(f"layers={layers!r}: use 'all', an index or a list of indices (0 = embeddings, "
                         f"1..{count - 1} = encoder layers, negatives from the end)")
    items = [layers] if isinstance(layers, int) else list(layers)
    out = []
    for i in items:
        if isinstance(i, bool) or not isinstance(i, int) or not -count <= i < count:
            raise ValueError(f"layers: {i!r} is not a representation index; there are {count} (0 = embeddings, "
                             f"1..{count - 1} = encoder layers, negatives from the end)")
        out.append(i % count)
    if len(set(out)) != len(out):
        raise ValueError(f"layers {items} names a representation twice")
    return out


@torch.no_grad()
def encode_layers(encoder: nn.Module, tokenizer: Any, sentences: Sequence[str], batch_size: int = 64,
                  max_length: int = 128, pooling: str = "mean",
                  layers: Union[str, int, Sequence[int], None] = "all") -> torch.Tensor:
    """Sentence representations from every hidden state: a float32 CPU tensor ``(N, L+1, H)`` (or ``(N, K, H)``
    for ``K`` chosen ``layers``), index 0 being the embedding output and ``i`` the output of layer ``i``.

    ``pooling``: ``"mean"`` averages the vectors of the sentence's real tokens ([CLS] and [SEP] included,
    padding excluded), so a sentence's vector does not depend on what it is batched with; ``"cls"`` takes
    position 0. Sentences are truncated to ``max_length`` tokens (a warning says how many were) and batched by
    length (less padding, the output keeps the input order). Runs on the encoder's device, in eval mode (no
    dropout; the encoder's mode is restored after); a tqdm bar shows progress on a terminal.

    Memory: N x (L+1) x H x 4 bytes (100k sentences through bert-base: 4 GB); ``layers`` keeps fewer.
    """
    if pooling not in ("mean", "cls"):
        raise ValueError(f"pooling={pooling!r}: use 'mean' (over non-padding tokens) or 'cls' (position 0)")
    if tokenizer is None:
        raise ValueError("encode_layers: no tokenizer; pass the one the encoder was trained with")
    if isinstance(sentences, str):
        raise TypeError("encode_layers: sentences must be a sequence of strings, not one string")
    if batch_size < 1 or max_length < 2:
        raise ValueError(f"encode_layers: batch_size ({batch_size}) must be >= 1 and max_length ({max_length}) >= 2")
    sentences = list(sentences)
    bad = [i for i, s in enumerate(sentences) if not isinstance(s, str)]
    if bad:
        raise TypeError(f"encode_layers: sentence {bad[0]} is a {type(sentences[bad[0]]).__name__}, not a string")
    keep = _resolve_layers(layers, _num_representations(encoder))
    hidden_size = int(encoder.config.hidden_size)
    out = torch.empty(len(sentences), len(keep), hidden_size, dtype=torch.float32)
    if not sentences:
        return out

    enc = tokenizer(sentences, truncation=True, max_length=max_length)
    ids = enc["input_ids"]
    cut = sum(len(row) >= max_length for row in ids)
    if cut:  # only those at the limit can have been cut: tokenize them again in full to count
        longer = [s for s, row in zip(sentences, ids) if len(row) >= max_length]
        cut = sum(len(row) > max_length for row in tokenizer(longer, truncation=False, verbose=False)["input_ids"])
    if cut:
        warnings.warn(f"encode_layers: {cut} of {len(sentences)} sentences are longer than max_length={max_length} "
                      "tokens and were truncated (raise max_length to keep them whole)", UserWarning,
                      stacklevel=3)  # the caller's line, past torch.no_grad's wrapper
    types = enc.get("token_type_ids")
    vocab = int(encoder.config.vocab_size)
    top = max(max(row) for row in ids)
    if top >= vocab:
        raise ValueError(f"encode_layers: the tokenizer produced token id {top}, but the encoder's vocabulary has "
                         f"{vocab} entries: tokenizer and encoder do not match")
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    device = next(encoder.parameters()).device
    order = sorted(range(len(ids)), key=lambda i: len(ids[i]))
    training = encoder.training  # features without dropout (a model straight from a Trainer is in train mode)
    encoder.eval()
    try:
        _encode_batches(encoder, ids, types, order, keep, pooling, pad_id, device, batch_size, out)
    finally:
        encoder.train(training)
    return out


def _encode_batches(encoder, ids, types, order, keep, pooling, pad_id, device, batch_size, out) -> None:
    from tqdm.auto import tqdm

    with tqdm(total=len(ids), desc="encoding", unit="sent", disable=None, leave=False) as bar:
        for start in range(0, len(order), batch_size):
            idx = order[start:start + batch_size]
            width = max(len(ids[i]) for i in idx)
            input_ids = torch.full((len(idx), width), pad_id, dtype=torch.long)
            mask = torch.zeros((len(idx), width), dtype=torch.long)
            token_types = torch.zeros((len(idx), width), dtype=torch.long)
            for row, i in enumerate(idx):
                n = len(ids[i])
                input_ids[row, :n] = torch.tensor(ids[i])
                mask[row, :n] = 1
                if types is not None:
                    token_types[row, :n] = torch.tensor(types[i])
            outputs = encoder(input_ids=input_ids.to(device), attention_mask=mask.to(device),
                              token_type_ids=token_types.to(device), output_hidden_states=True, return_dict=True)
            hidden = outputs.hidden_states
            if hidden is None or len(hidden) != _num_representations(encoder):
                raise RuntimeError(f"encode_layers: the encoder returned {0 if hidden is None else len(hidden)} "
                                   f"hidden states, expected {_num_representations(encoder)}")
            m = mask.to(device=device).unsqueeze(-1)
            pooled = []
            for k in keep:
                h = hidden[k].float()
                if pooling == "cls":
                    pooled.append(h[:, 0])
                else:
                    pooled.append((h * m).sum(1) / m.sum(1).clamp(min=1))
            out[torch.tensor(idx)] = torch.stack(pooled, dim=1).cpu()
            bar.update(len(idx))


# ------------------------------------------------------------------------------------------------- the probe


@dataclass
class ProbeResult:
    """One trained probe: accuracies (fractions in [0, 1]) of the hyperparameters chosen on dev.

    ``params``: the chosen hyperparameters (``l2``; ``hidden`` and ``dropout`` for the MLP); ``epochs``: the
    epoch whose weights were kept; ``grid``: ``(params, dev_acc)`` of every configuration tried;
    ``mix_weights`` / ``mix_gamma``: the learned ``softmax(s)`` and ``gamma`` of a mix probe (None otherwise).
    """

    dev_acc: float
    test_acc: float
    train_acc: float
    params: Dict[str, float]
    epochs: int
    grid: List[Tuple[Dict[str, float], float]] = field(default_factory=list)
    mix_weights: Optional[List[float]] = None
    mix_gamma: Optional[float] = None


class _Probe(nn.Module):
    """Optional ScalarMix over K standardised representations, then logistic regression or SentEval's MLP
    (Linear, Dropout, Sigmoid, Linear)."""

    def __init__(self, dim: int, classes: int, classifier: str, params: Mapping[str, float],
                 mix_size: Optional[int], mix_backend: Optional[str]) -> None:
        super().__init__()
        from .nn.scalar_mix import ScalarMix
        self.mix = ScalarMix(mix_size, backend=mix_backend) if mix_size else None
        if classifier == "logreg":
            self.head = nn.Linear(dim, classes)
        else:
            hidden = int(params["hidden"])
            self.head = nn.Sequential(nn.Linear(dim, hidden), nn.Dropout(float(params["dropout"])), nn.Sigmoid(),
                                      nn.Linear(hidden, classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.mix is not None:
            x = self.mix(list(x.unbind(1)))
        return self.head(x)


def _grid_configs(classifier: str, grid: Union[str, Mapping[str, Sequence[float]]]) -> List[Dict[str, float]]:
    if isinstance(grid, str):
        if grid not in GRIDS:
            raise ValueError(f"grid={grid!r}: use one of {sorted(GRIDS)} or a dict of value lists "
                             "({'l2': [...], 'hidden': [...], 'dropout': [...]})")
        spec: Mapping[str, Sequence[float]] = GRIDS[grid][classifier]
    else:
        spec = dict(grid)
    needed = ("l2",) if classifier == "logreg" else ("l2", "hidden", "dropout")
    missing = [k for k in needed if not spec.get(k)]
    if missing:
        raise ValueError(f"grid for {classifier!r} needs non-empty value lists for {list(needed)}; missing {missing}")
    configs: List[Dict[str, float]] = [{}]
    for key in needed:
        configs = [{**c, key: v} for c in configs for v in spec[key]]
    return configs


def _check_xy(name: str, x: torch.Tensor, y: torch.Tensor, ndim: int) -> Tuple[torch.Tensor, torch.Tensor]:
    x = torch.as_tensor(x)
    y = torch.as_tensor(y)
    if x.dim() != ndim:
        shape = "(N, H)" if ndim == 2 else "(N, K, H)"
        raise ValueError(f"train_probe: {name}_x has shape {tuple(x.shape)}; expected {shape}"
                         f"{' (mix=True needs (N, K, H))' if ndim == 3 else ' (use mix=True for (N, K, H))'}")
    if y.dim() != 1 or y.shape[0] != x.shape[0]:
        raise ValueError(f"train_probe: {name}_y has shape {tuple(y.shape)}; expected ({x.shape[0]},)")
    if x.shape[0] == 0:
        raise ValueError(f"train_probe: the {name} split is empty")
    if y.dtype.is_floating_point or y.dtype == torch.bool:
        if y.dtype.is_floating_point and not torch.equal(y, y.round()):
            raise ValueError(f"train_probe: {name}_y holds non-integer labels")
    y = y.long()
    if int(y.min()) < 0:
        raise ValueError(f"train_probe: {name}_y holds a negative label ({int(y.min())})")
    if not torch.isfinite(x).all():
        raise ValueError(f"train_probe: {name}_x holds NaN or infinite values")
    return x.float(), y


def _evaluate(model: _Probe, x: torch.Tensor, y: torch.Tensor, batch: int = 4096) -> Tuple[float, float]:
    """(accuracy, mean cross-entropy) of ``model`` on ``x``, ``y`` in eval mode."""
    model.eval()
    correct, loss = 0, 0.0
    with torch.no_grad():
        for i in range(0, x.shape[0], batch):
            logits = model(x[i:i + batch])
            correct += int((logits.argmax(-1) == y[i:i + batch]).sum())
            loss += float(nn.functional.cross_entropy(logits, y[i:i + batch], reduction="sum"))
    return correct / x.shape[0], loss / x.shape[0]


def _fit(train: Tuple[torch.Tensor, torch.Tensor], dev: Tuple[torch.Tensor, torch.Tensor], classes: int,
         classifier: str, params: Mapping[str, float], mix_size: Optional[int], seed: int, batch_size: int,
         lr: float, mix_lr: float, max_epochs: int, patience: int, mix_backend: Optional[str]
         ) -> Tuple[_Probe, float, float, int]:
    """Train one configuration; returns the model at its best dev epoch, with that epoch's dev accuracy, dev
    loss and number. Every random draw (initialisation, dropout, shuffling) comes from ``seed``."""
    x, y = train
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = _Probe(x.shape[-1], classes, classifier, params, mix_size, mix_backend)
        groups = [{"params": list(model.head.parameters()), "lr": lr, "weight_decay": float(params["l2"])}]
        if model.mix is not None:
            groups.append({"params": list(model.mix.parameters()), "lr": mix_lr, "weight_decay": 0.0})
        optim = torch.optim.Adam(groups)
        shuffle = torch.Generator().manual_seed(seed)
        best: Tuple[float, float] = (-1.0, math.inf)
        best_state, best_epoch, stale = None, 0, 0
        for epoch in range(1, max_epochs + 1):
            model.train()
            perm = torch.randperm(x.shape[0], generator=shuffle)
            for i in range(0, x.shape[0], batch_size):
                idx = perm[i:i + batch_size]
                loss = nn.functional.cross_entropy(model(x[idx]), y[idx])
                optim.zero_grad(set_to_none=True)
                loss.backward()
                optim.step()
            acc, dev_loss = _evaluate(model, *dev)
            if acc > best[0] or (acc == best[0] and dev_loss < best[1]):
                best, best_state, best_epoch, stale = (acc, dev_loss), copy.deepcopy(model.state_dict()), epoch, 0
            else:
                stale += 1
                if stale >= patience:
                    break
    model.load_state_dict(best_state)
    model.eval()
    return model, best[0], best[1], best_epoch


def train_probe(train_x: torch.Tensor, train_y: torch.Tensor, dev_x: torch.Tensor, dev_y: torch.Tensor,
                test_x: torch.Tensor, test_y: torch.Tensor, classifier: str = "logreg", mix: bool = False,
                seed: int = 0, grid: Union[str, Mapping[str, Sequence[float]]] = "small", batch_size: int = 64,
                lr: float = 1e-3, mix_lr: float = 1e-2, max_epochs: int = 100, patience: int = 5,
                num_classes: Optional[int] = None, mix_backend: Optional[str] = "reference",
                num_threads: Optional[int] = 1) -> ProbeResult:
    """Train a SentEval probe on fixed features and report dev and test accuracy.

    ``*_x``: ``(N, H)`` features of one representation, or with ``mix=True`` ``(N, K, H)``: K representations
    combined by a ``bermo.nn.ScalarMix`` trained jointly with the classifier (ELMo style). ``*_y``: integer
    labels ``(N,)``. Features are standardised with the train split's statistics (per representation).

    ``classifier``: ``"logreg"`` (a linear layer) or ``"mlp"`` (SentEval's: Linear, Dropout, Sigmoid, Linear).
    ``grid``: ``"small"`` (default; L2 {1e-4, 1e-2}, MLP hidden 100 dropout 0.1: 2 trainings), ``"senteval"``
    (the paper's: 4 trainings for logreg, 36 for the MLP) or a dict ``{"l2": [...], "hidden": [...],
    "dropout": [...]}``. Each configuration trains with Adam (``lr``; ``mix_lr`` for the mix scalars and gamma,
    without weight decay; L2 as Adam's weight decay on the classifier), batches of ``batch_size``, for at most
    ``max_epochs`` epochs, keeping the epoch with the best dev accuracy (dev loss breaking ties) and stopping
    after ``patience`` epochs without improvement. The configuration with the best dev accuracy (dev loss
    breaking ties, then grid order) is chosen; test labels are only used to score it.

    ``num_classes``: default the largest label seen plus one. ``mix_backend``: the ScalarMix backend (default
    "reference", the eager formula: a probe's mix is tiny, and the fused CPU kernel would cost a one-off
    JIT build). ``num_threads``: torch's intra-op threads while training (restored after; None leaves them):
    default 1, because a probe's matrices are small and several threads only wait on each other (on 2 busy
    cores, 25x slower measured). Deterministic for a ``seed`` on one machine; the global RNG is left as it was.
    """
    if classifier not in CLASSIFIERS:
        raise ValueError(f"classifier={classifier!r}: use 'logreg' or 'mlp'")
    if batch_size < 1 or max_epochs < 1 or patience < 1:
        raise ValueError(f"train_probe: batch_size ({batch_size}), max_epochs ({max_epochs}) and patience "
                         f"({patience}) must be >= 1")
    ndim = 3 if mix else 2
    train_x, train_y = _check_xy("train", train_x, train_y, ndim)
    dev_x, dev_y = _check_xy("dev", dev_x, dev_y, ndim)
    test_x, test_y = _check_xy("test", test_x, test_y, ndim)
    if not (train_x.shape[1:] == dev_x.shape[1:] == test_x.shape[1:]):
        raise ValueError(f"train_probe: feature shapes differ between splits: train {tuple(train_x.shape[1:])}, "
                         f"dev {tuple(dev_x.shape[1:])}, test {tuple(test_x.shape[1:])}")
    seen = max(int(train_y.max()), int(dev_y.max()), int(test_y.max())) + 1
    classes = seen if num_classes is None else int(num_classes)
    if classes < seen:
        raise ValueError(f"train_probe: num_classes={num_classes} but a label {seen - 1} occurs")
    classes = max(classes, 2)
    configs = _grid_configs(classifier, grid)

    mean = train_x.mean(0, keepdim=True)
    std = train_x.std(0, keepdim=True, unbiased=False)
    std = torch.where(std > 1e-8, std, torch.ones_like(std))
    train_x, dev_x, test_x = ((t - mean) / std for t in (train_x, dev_x, test_x))
    mix_size = train_x.shape[1] if mix else None

    threads = torch.get_num_threads()
    if num_threads is not None:
        torch.set_num_threads(int(num_threads))
    try:
        tried: List[Tuple[Dict[str, float], float]] = []
        chosen = None
        for params in configs:
            model, acc, loss, epochs = _fit((train_x, train_y), (dev_x, dev_y), classes, classifier, params,
                                            mix_size, seed, batch_size, lr, mix_lr, max_epochs, patience, mix_backend)
            tried.append((dict(params), acc))
            if chosen is None or acc > chosen[1] or (acc == chosen[1] and loss < chosen[2]):
                chosen = (model, acc, loss, epochs, dict(params))
        model, dev_acc, _, epochs, params = chosen
        test_acc = _evaluate(model, test_x, test_y)[0]
        train_acc = _evaluate(model, train_x, train_y)[0]
    finally:
        torch.set_num_threads(threads)
    weights = gamma = None
    if model.mix is not None:
        weights = [float(w) for w in model.mix.mixing_weights()]
        gamma = float(model.mix.gamma.detach())
    return ProbeResult(dev_acc=dev_acc, test_acc=test_acc, train_acc=train_acc, params=params, epochs=epochs,
                       grid=tried, mix_weights=weights, mix_gamma=gamma)


# ------------------------------------------------------------------------------------------------- the table


def rep_name(key: str) -> str:
    """Display name of a representation key: ``layer_0`` -> "embeddings", ``layer_i`` -> "layer i", "mix"."""
    if key == MIX:
        return MIX
    index = int(key.split("_", 1)[1])
    return "embeddings" if index == 0 else f"layer {index}"


def _rep_order(key: str) -> Tuple[int, int]:
    return (1, 0) if key == MIX else (0, int(key.split("_", 1)[1]))


@dataclass
class ProbeTable:
    """Probing results: ``test[task][rep]`` and ``dev[task][rep]`` accuracies (fractions) for representation
    keys ``layer_0`` (embedding output) .. ``layer_L`` and ``mix``; ``mix_weights[task]`` (softmax weights, in
    the order of ``mix_layers``) and ``mix_gamma[task]``; ``params[task][rep]`` the chosen hyperparameters;
    ``meta``: how it was made (encoder, pooling, classifier, grid, seed, split sizes, seconds)."""

    test: Dict[str, Dict[str, float]] = field(default_factory=dict)
    dev: Dict[str, Dict[str, float]] = field(default_factory=dict)
    mix_weights: Dict[str, List[float]] = field(default_factory=dict)
    mix_gamma: Dict[str, float] = field(default_factory=dict)
    mix_layers: List[int] = field(default_factory=list)
    params: Dict[str, Dict[str, Dict[str, float]]] = field(default_factory=dict)
    meta: Dict[str, Any] = field(default_factory=dict)

    FORMAT = "bermo-probe-table"

    @property
    def tasks(self) -> List[str]:
        return list(self.test)

    @property
    def representations(self) -> List[str]:
        """Representation keys present in any task, layers in order, then ``mix``."""
        keys = {k for row in self.test.values() for k in row}
        return sorted(keys, key=_rep_order)

    def _split(self, split: str) -> Dict[str, Dict[str, float]]:
        if split not in ("test", "dev"):
            raise ValueError(f"split={split!r}: use 'test' or 'dev'")
        return self.test if split == "test" else self.dev

    def means(self, split: str = "test") -> Dict[str, float]:
        """Mean accuracy over tasks per representation (over the tasks that have it)."""
        rows = self._split(split).values()
        out = {}
        for rep in self.representations:
            vals = [row[rep] for row in rows if rep in row]
            if vals:
                out[rep] = sum(vals) / len(vals)
        return out

    def to_markdown(self, split: str = "test", weights: bool = False) -> str:
        """A markdown table of accuracies in percent: tasks as rows, columns embeddings / layer 1..L / mix, the
        best value of each row in bold (ties all bold), and a mean row. ``weights=True`` adds a table of the
        learned mix weights per task."""
        reps = self.representations
        header = "| task | " + " | ".join(rep_name(r) for r in reps) + " |"
        lines = [header, "|---|" + "---:|" * len(reps)]

        def row(name: str, values: Mapping[str, float]) -> str:
            best = max(values.values()) if values else None
            cells = []
            for rep in reps:
                if rep not in values:
                    cells.append("")
                    continue
                text = f"{100 * values[rep]:.1f}"
                cells.append(f"**{text}**" if values[rep] == best else text)
            return f"| {name} | " + " | ".join(cells) + " |"

        for task, values in self._split(split).items():
            lines.append(row(task, values))
        if self._split(split):
            lines.append(row("mean", self.means(split)))
        text = "\n".join(lines) + "\n"
        if weights and self.mix_weights:
            names = [rep_name(f"layer_{i}") for i in self.mix_layers]
            wl = ["| task | " + " | ".join(names) + " | gamma |", "|---|" + "---:|" * (len(names) + 1)]
            for task, ws in self.mix_weights.items():
                wl.append(f"| {task} | " + " | ".join(f"{w:.3f}" for w in ws)
                          + f" | {self.mix_gamma.get(task, float('nan')):.3g} |")
            text += "\nLearned mix weights (softmax(s)):\n\n" + "\n".join(wl) + "\n"
        return text

    def to_csv(self, path: PathLike) -> str:
        """Accuracies as CSV, one row per task and split: ``task,split,layer_0,...,layer_L,mix`` (fractions).
        Returns the path."""
        reps = self.representations
        path = os.fspath(path)
        with open(path, "w", newline="", encoding="utf-8") as f:
            writer = csv.writer(f)
            writer.writerow(["task", "split"] + reps)
            for split in ("test", "dev"):
                for task, values in self._split(split).items():
                    writer.writerow([task, split] + [repr(values[r]) if r in values else "" for r in reps])
        return path

    def to_dict(self) -> Dict[str, Any]:
        return {"format": self.FORMAT, "version": 1, "test": self.test, "dev": self.dev,
                "mix_weights": self.mix_weights, "mix_gamma": self.mix_gamma, "mix_layers": self.mix_layers,
                "params": self.params, "meta": self.meta}

    def to_json(self, path: PathLike) -> str:
        """Everything in the table as JSON (``from_json`` reads it back). Returns the path."""
        path = os.fspath(path)
        with open(path, "w", encoding="utf-8") as f:
            json.dump(self.to_dict(), f, indent=2)
            f.write("\n")
        return path

    @classmethod
    def from_json(cls, path: PathLike) -> "ProbeTable":
        path = os.fspath(path)
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
        if not isinstance(data, dict) or data.get("format") != cls.FORMAT:
            raise ValueError(f"{path!r} is not a probe table written by ProbeTable.to_json (format "
                             f"{data.get('format') if isinstance(data, dict) else type(data).__name__!r})")
        return cls(test=data["test"], dev=data.get("dev", {}), mix_weights=data.get("mix_weights", {}),
                   mix_gamma=data.get("mix_gamma", {}), mix_layers=data.get("mix_layers", []),
                   params=data.get("params", {}), meta=data.get("meta", {}))

    def plot_heatmap(self, path: PathLike, split: str = "test", title: Optional[str] = None) -> str:
        """A heat map (tasks x representations, accuracy in percent written in each cell, the row's best boxed)
        written with matplotlib's Agg canvas (no pyplot state, no display needed). Returns the path."""
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
        from matplotlib.patches import Rectangle

        values = self._split(split)
        if not values:
            raise ValueError("plot_heatmap: the table is empty")
        tasks, reps = list(values), self.representations
        grid = [[100 * values[t][r] if r in values[t] else float("nan") for r in reps] for t in tasks]
        fig = Figure(figsize=(1.2 + 0.8 * len(reps), 1.0 + 0.5 * len(tasks)), layout="constrained")
        FigureCanvasAgg(fig)
        ax = fig.add_subplot()
        image = ax.imshow(torch.tensor(grid).numpy(), cmap="viridis", aspect="auto")
        ax.set_xticks(range(len(reps)))
        ax.set_xticklabels([rep_name(r) for r in reps], rotation=45, ha="right")
        ax.set_yticks(range(len(tasks)))
        ax.set_yticklabels(tasks)
        finite = [v for row in grid for v in row if not math.isnan(v)]
        middle = (min(finite) + max(finite)) / 2
        for i, row in enumerate(grid):
            best = max((v for v in row if not math.isnan(v)), default=None)
            for j, v in enumerate(row):
                if math.isnan(v):
                    continue
                ax.text(j, i, f"{v:.1f}", ha="center", va="center", fontsize=8,
                        color="black" if v > middle else "white")
                if v == best:
                    ax.add_patch(Rectangle((j - 0.5, i - 0.5), 1, 1, fill=False, edgecolor="red", linewidth=1.5))
        fig.colorbar(image, ax=ax, label=f"{split} accuracy (%)")
        ax.set_title(title or f"probing {split} accuracy ({self.meta.get('encoder', 'encoder')})", fontsize=9)
        path = os.fspath(path)
        fig.savefig(path, dpi=120)
        return path


# --------------------------------------------------------------------------------------------------- the run


def load_task(task_dir: PathLike) -> Dict[str, Any]:
    """One probing task folder: ``{"train": (sentences, labels), "validation": ..., "test": ...,
    "label_names": [...], "info": task.json}``. Raises ValueError naming the file and line of a bad record."""
    task_dir = os.fspath(task_dir)
    info_file = os.path.join(task_dir, "task.json")
    if not os.path.isfile(info_file):
        raise ValueError(f"{task_dir!r} is not a probing task folder: no task.json")
    with open(info_file, encoding="utf-8") as f:
        info = json.load(f)
    label_names = list(info.get("label_names") or []) if isinstance(info, dict) else []
    task: Dict[str, Any] = {"label_names": label_names, "info": info}
    for split in SPLITS:
        file = os.path.join(task_dir, f"{split}.jsonl")
        if not os.path.isfile(file):
            raise ValueError(f"probing task {task_dir!r} has no {split}.jsonl")
        sentences, labels = [], []
        with open(file, encoding="utf-8") as f:
            for number, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    record = json.loads(line)
                    sentence, label = record["sentence"], record["label"]
                except (ValueError, KeyError, TypeError) as exc:
                    raise ValueError(f"{file}:{number}: expected a JSON object with 'sentence' and 'label' "
                                     f"({type(exc).__name__}: {exc})") from exc
                if not isinstance(sentence, str) or isinstance(label, bool) or not isinstance(label, int):
                    raise ValueError(f"{file}:{number}: 'sentence' must be a string and 'label' an integer")
                if label < 0 or (label_names and label >= len(label_names)):
                    raise ValueError(f"{file}:{number}: label {label} is outside 0..{len(label_names) - 1} "
                                     "(task.json's label_names)")
                sentences.append(sentence)
                labels.append(label)
        if not sentences:
            raise ValueError(f"{file} is empty")
        task[split] = (sentences, labels)
    return task


def _task_names(tasks_dir: str, tasks: Union[None, str, Iterable[str]]) -> List[str]:
    if not os.path.isdir(tasks_dir):
        raise ValueError(f"probe: tasks_dir {tasks_dir!r} is not a folder")
    if tasks is None:
        names = sorted(d for d in os.listdir(tasks_dir) if os.path.isfile(os.path.join(tasks_dir, d, "task.json")))
        if not names:
            raise ValueError(f"probe: no task folders (subfolders with a task.json) in {tasks_dir!r}")
        return names
    names = [tasks] if isinstance(tasks, str) else list(tasks)
    missing = [t for t in names if not os.path.isfile(os.path.join(tasks_dir, t, "task.json"))]
    if missing:
        raise ValueError(f"probe: no task folder with a task.json for {missing} in {tasks_dir!r}")
    return names


def probe(encoder_or_path: Union[PathLike, nn.Module], tasks_dir: PathLike,
          tasks: Union[None, str, Iterable[str]] = None, layers: Union[str, int, Sequence[int]] = "all",
          mix: bool = True, classifier: str = "logreg", pooling: str = "mean", batch_size: int = 64,
          max_length: int = 128, seed: int = 0, grid: Union[str, Mapping[str, Sequence[float]]] = "small",
          tokenizer: Any = None, **train_options: Any) -> ProbeTable:
    """Probe a frozen encoder on every task of ``tasks_dir`` (or the named ``tasks``): each task's three splits
    are encoded once (``encode_layers``), then ``train_probe`` trains one probe per chosen representation
    (``layers``: "all", an index or a list; 0 = embeddings) and, with ``mix``, one probe through a ScalarMix over
    those same representations. ``train_options`` go to ``train_probe`` (``max_epochs``, ``patience``, ``lr``,
    ``mix_lr``, ...). Returns a ``ProbeTable`` of dev and test accuracies and the learned mix weights.

    ``encoder_or_path`` and ``tokenizer`` as in ``load_encoder``. Cost: see the module docstring.
    """
    if classifier not in CLASSIFIERS:
        raise ValueError(f"classifier={classifier!r}: use 'logreg' or 'mlp'")
    _grid_configs(classifier, grid)  # fail before encoding anything
    tasks_dir = os.fspath(tasks_dir)
    names = _task_names(tasks_dir, tasks)
    encoder, tokenizer = load_encoder(encoder_or_path, tokenizer)
    if tokenizer is None:
        raise ValueError("probe: no tokenizer found for the encoder passed; pass tokenizer=")
    chosen = _resolve_layers(layers, _num_representations(encoder))
    if not chosen and not mix:
        raise ValueError("probe: no layers and mix=False: nothing to probe")
    encoder_name = (os.fspath(encoder_or_path) if isinstance(encoder_or_path, (str, os.PathLike))
                    else getattr(encoder.config, "_name_or_path", "") or type(encoder).__name__)
    table = ProbeTable(mix_layers=chosen if mix else [], meta={
        "encoder": encoder_name, "pooling": pooling, "classifier": classifier, "grid": grid, "seed": seed,
        "max_length": max_length, "layers": chosen, "tasks": {}, **({"train_options": train_options}
                                                                    if train_options else {})})
    for name in names:
        task = load_task(os.path.join(tasks_dir, name))
        start = time.perf_counter()
        feats = {split: encode_layers(encoder, tokenizer, task[split][0], batch_size=batch_size,
                                      max_length=max_length, pooling=pooling, layers=chosen) for split in SPLITS}
        encoded = time.perf_counter()
        ys = {split: torch.tensor(task[split][1]) for split in SPLITS}
        classes = len(task["label_names"]) or None
        test, dev, params = {}, {}, {}
        # SentEval probes word content with logistic regression whatever the classifier (an MLP over ~1000
        # words' classes is another, far larger probe)
        task_classifier = LOGREG_ONLY.get(name, classifier)

        def run(key: str, select, as_mix: bool) -> ProbeResult:
            result = train_probe(select(feats["train"]), ys["train"], select(feats["validation"]),
                                 ys["validation"], select(feats["test"]), ys["test"], classifier=task_classifier,
                                 mix=as_mix, seed=seed, grid=grid, num_classes=classes, **train_options)
            test[key], dev[key], params[key] = result.test_acc, result.dev_acc, result.params
            return result

        for j, layer in enumerate(chosen):
            run(f"layer_{layer}", lambda x, j=j: x[:, j], False)
        if mix:
            result = run(MIX, lambda x: x, True)
            table.mix_weights[name] = result.mix_weights
            table.mix_gamma[name] = result.mix_gamma
        done = time.perf_counter()
        table.test[name], table.dev[name], table.params[name] = test, dev, params
        table.meta["tasks"][name] = {"sizes": {s: len(task[s][0]) for s in SPLITS},
                                     "label_names": task["label_names"], "classifier": task_classifier,
                                     "encode_seconds": round(encoded - start, 3),
                                     "train_seconds": round(done - encoded, 3)}
    return table
