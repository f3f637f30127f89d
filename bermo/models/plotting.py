"""A one-call bar chart of learned mixing weights. Needs matplotlib: ``pip install "bermo[plot]"``."""
from __future__ import annotations

import os
from typing import List, Mapping, Optional, Tuple, Union

import torch

from ..nn.scalar_mix import ScalarMix

Mixable = Union[torch.nn.Module, ScalarMix]


def _weights_of(obj, name: str) -> Tuple[List[str], List[float], float]:
    """(labels, weights, gamma) of a BERMo model or a ScalarMix."""
    if isinstance(obj, ScalarMix):
        weights = obj.mixing_weights().tolist()
        return [str(i) for i in range(len(weights))], weights, obj.gamma.item()
    if hasattr(obj, "get_scalar_mix") and hasattr(obj, "mixed_layer_names"):
        return obj.mixed_layer_names(), obj.mixing_weights().tolist(), obj.mixing_gamma()
    raise TypeError(f"plot_mixing_weights: {name} is a {type(obj).__name__}; expected a BERMo model (BermoModel, "
                    "BermoForSequenceClassification, ...) or a bermo.nn.ScalarMix")


def plot_mixing_weights(models: Union[Mixable, Mapping[str, Mixable]], path: Union[str, os.PathLike],
                        title: Optional[str] = None) -> str:
    """Bar chart of the mixing weights ``softmax(s)`` per mixed layer, written to ``path`` (PNG, or any format
    matplotlib infers from the suffix). Returns the path.

    ``models``: a BERMo model or a ``ScalarMix``, or a dict ``{label: model}`` to compare several (grouped bars
    when they mix the same layers, one panel each otherwise). A dashed line marks uniform weights (``1/L``,
    where every mix starts); each legend entry gives the model's ``gamma``.
    """
    try:
        from matplotlib.figure import Figure
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise ImportError("plot_mixing_weights needs matplotlib: pip install matplotlib "
                          "(or pip install \"bermo[plot]\")") from exc

    entries = dict(models) if isinstance(models, Mapping) else {"": models}
    if not entries:
        raise ValueError("plot_mixing_weights: the dict of models is empty")
    data = {name: _weights_of(obj, repr(name) if name else "the argument") for name, obj in entries.items()}
    labels0 = next(iter(data.values()))[0]
    shared = all(labels == labels0 for labels, _, _ in data.values())
    panels = [list(data.items())] if shared else [[item] for item in data.items()]

    width = max(5.0, 0.55 * max(len(labels) for labels, _, _ in data.values()) * (len(data) if shared else 1) ** 0.5)
    fig = Figure(figsize=(width, 3.2 * len(panels)), layout="constrained")
    axes = fig.subplots(len(panels), 1, squeeze=False)[:, 0]
    for ax, panel in zip(axes, panels):
        labels = panel[0][1][0]
        n_bars = len(panel)
        bar_w = 0.8 / n_bars
        for k, (name, (_, weights, gamma)) in enumerate(panel):
            xs = [i - 0.4 + bar_w * (k + 0.5) for i in range(len(weights))]
            ax.bar(xs, weights, width=bar_w, label=f"{name} (gamma={gamma:.3g})" if name else f"gamma={gamma:.3g}")
        ax.axhline(1.0 / len(labels), color="0.4", linestyle="--", linewidth=1, label="uniform")
        ax.set_xticks(range(len(labels)))
        ax.set_xticklabels(labels, rotation=45 if len(labels) > 8 else 0, ha="right" if len(labels) > 8 else "center")
        ax.set_ylabel("mixing weight softmax(s)")
        ax.set_ylim(0, max(max(w) for _, (_, w, _) in panel) * 1.35)  # room for the legend
        ax.legend(fontsize="small", loc="upper left", ncol=min(3, n_bars + 1))
        if not shared:
            ax.set_title(panel[0][0], fontsize="medium")
    fig.suptitle(title or "BERMo mixing weights per layer")
    path = os.fspath(path)
    fig.savefig(path, dpi=120)
    return path
