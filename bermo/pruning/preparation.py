"""Turn a model's linear layers into ``bermo.nn.MaskedLinear`` layers, ready for movement pruning."""
from __future__ import annotations

import re
from typing import Iterator, List, Optional, Sequence, Tuple, Union

from torch import nn

from ..nn.masked_linear import MaskedLinear, _check_method

# The encoder linears of a BERT-family model (BertModel, BermoModel and the models with a head around them):
# in every ``encoder.layer.<i>``, attention query / key / value, the attention output dense, the FFN intermediate
# and output dense (and the cross-attention linears of a decoder BERT). The embeddings, the pooler, a task head
# and the BERMo scalar mix hold no ``encoder.layer.<i>`` in their names and are left alone.
DEFAULT_TARGETS = (r"(^|\.)encoder\.layer\.\d+\.",)

Patterns = Union[str, Sequence[str]]


def masked_linears(model: nn.Module) -> Iterator[Tuple[str, MaskedLinear]]:
    """``(name, module)`` for every ``MaskedLinear`` in ``model`` (names as ``model.named_modules()`` gives them;
    a ``DistributedDataParallel`` wrapper's ``module.`` prefix included)."""
    for name, module in model.named_modules():
        if isinstance(module, MaskedLinear):
            yield name, module


def _compile_targets(targets: Optional[Patterns]) -> List[Tuple[str, "re.Pattern[str]"]]:
    if targets is None:
        targets = DEFAULT_TARGETS
    elif isinstance(targets, str):
        targets = [targets]
    elif isinstance(targets, (bytes, bytearray, dict)):  # iterable, but not a list of patterns
        raise TypeError(f"prepare: targets must be None, a regex string or a list of regex strings; got "
                        f"{type(targets).__name__}")
    else:
        try:
            targets = list(targets)
        except TypeError:
            raise TypeError(f"prepare: targets must be None, a regex string or a list of regex strings; got "
                            f"{type(targets).__name__}") from None
    if not targets:
        raise ValueError("prepare: targets is empty; pass None for the default (every encoder linear) or at least "
                         "one regex")
    compiled = []
    for pattern in targets:
        if not isinstance(pattern, str):
            raise TypeError(f"prepare: each target must be a regex string matched against module names; got "
                            f"{pattern!r} ({type(pattern).__name__})")
        try:
            compiled.append((pattern, re.compile(pattern)))
        except re.error as exc:
            raise ValueError(f"prepare: target {pattern!r} is not a valid regular expression ({exc})") from None
    return compiled


def prepare(model: nn.Module, method: str = "topK", block_shape: Sequence[int] = (32, 32),
            targets: Optional[Patterns] = None, **method_options) -> List[str]:
    """Replace the chosen ``nn.Linear`` layers of ``model`` in place by ``MaskedLinear.from_linear(...)`` copies
    (same weight and bias, the given pruning ``method`` and ``block_shape``) and return their names, in the order
    of ``model.named_modules()``.

    ``targets``: which linears. ``None`` (default): every encoder linear of a BERT-family model (BERMo or plain
    transformers BERT, bare or with a head): attention query, key, value and output dense, FFN intermediate and
    output dense, i.e. every ``nn.Linear`` whose name contains ``encoder.layer.<i>.``; embeddings, pooler,
    classifier and the BERMo mix are left alone. Otherwise a regex string, or a list of them, each searched
    (``re.search``) in the full module name, so a plain substring such as ``"attention"`` works as is and
    ``r"layer\\.0\\."`` or ``r"\\.(query|key)$"`` narrow it; a linear is a target if any pattern matches.

    ``method_options`` go to ``MaskedLinear.from_linear``: ``density``, ``threshold``, ``scores_init``,
    ``backend``. The model changes only if every target can be converted: each error (an unknown method, no
    matching linear, a pattern that matches no linear, a block shape that does not divide a target's weight,
    a target that is already a ``MaskedLinear``) is raised before anything is replaced.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"prepare: expected a torch.nn.Module; got {type(model).__name__}")
    method = _check_method(method)
    compiled = _compile_targets(targets)

    linears = [(name, module) for name, module in model.named_modules() if isinstance(module, nn.Linear)]
    chosen, hits = [], {pattern: 0 for pattern, _ in compiled}
    for name, module in linears:
        matched = [pattern for pattern, regex in compiled if regex.search(name)]
        for pattern in matched:
            hits[pattern] += 1
        if matched:
            chosen.append((name, module))
    if not chosen:
        what = "the default targets (the encoder linears of a BERT-family model)" if targets is None else \
            f"targets {[p for p, _ in compiled]}"
        raise ValueError(f"prepare: no nn.Linear of {type(model).__name__} matches {what}; its linears are "
                         f"{[n for n, _ in linears][:12]}{' ...' if len(linears) > 12 else ''}. Pass targets= "
                         "(regexes searched in the module names)")
    if targets is not None:
        unmatched = [p for p, n in hits.items() if n == 0]
        if unmatched:
            raise ValueError(f"prepare: target(s) {unmatched} match no nn.Linear of {type(model).__name__} (a typo?)")

    if any(name == "" for name, _ in chosen):
        raise ValueError("prepare: the model itself is an nn.Linear; build a MaskedLinear with "
                         "MaskedLinear.from_linear instead (prepare replaces submodules in place)")
    already = [name for name, module in chosen if isinstance(module, MaskedLinear)]
    if already:
        raise ValueError(f"prepare: {already[:4]}{' ...' if len(already) > 4 else ''} already are MaskedLinear "
                         "layers (was the model prepared twice?); set their method, density or threshold directly")

    try:
        bo, bi = block_shape
    except (TypeError, ValueError):
        raise TypeError(f"prepare: block_shape must be a pair of positive ints (bo, bi); got {block_shape!r}") from None
    if isinstance(bo, int) and isinstance(bi, int) and bo > 0 and bi > 0:
        misfits = [f"{name} (weight {tuple(m.weight.shape)})" for name, m in chosen
                   if m.out_features % bo or m.in_features % bi]
        if misfits:
            raise ValueError(f"prepare: block_shape {(bo, bi)} does not divide the weight (out_features, "
                             f"in_features) of {', '.join(misfits)}: out_features must be a multiple of {bo} and "
                             f"in_features of {bi}. Choose a block shape that divides them, or leave those layers "
                             "out with targets=")

    # Build every replacement before swapping any in, so that a bad option leaves the model as it was.
    replacements = []
    for name, module in chosen:
        try:
            new = MaskedLinear.from_linear(module, method=method, block_shape=block_shape, **method_options)
        except TypeError as exc:
            if "unexpected keyword" in str(exc):
                raise TypeError(f"prepare: {exc}; method_options are MaskedLinear.from_linear's: density, "
                                "threshold, scores_init, backend") from None
            raise type(exc)(f"prepare: layer {name!r}: {exc}") from None
        except ValueError as exc:
            raise ValueError(f"prepare: layer {name!r}: {exc}") from None
        new.train(module.training)
        replacements.append((name, new))
    for name, new in replacements:
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        setattr(parent, child, new)
    return [name for name, _ in replacements]
