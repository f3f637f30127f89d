"""Compressed checkpoints (BERMo and plain transformers BERT models): the layout ``bermo.pruning.compress`` records
in the config, the modules rebuilt from it before a checkpoint's weights load, the check that a checkpoint and a
model agree on it, and ``load_compressed(path)``, which loads any of them.

Who rebuilds: ``BermoModel.__init__`` does, so a BERMo checkpoint loads with ``from_pretrained``. bermo does not
patch transformers' classes, whose ``from_pretrained`` builds the uncompressed modules: a compressed plain BERT
checkpoint loads with ``load_compressed(path)`` (which also takes BERMo ones).

What a compressed model's config records (all JSON):

* ``pruned_heads``: ``{layer: [heads]}``, the attention heads removed from each encoder layer, as original head
  indices (the bookkeeping transformers 4 kept for ``prune_heads``; transformers 5 dropped head pruning, so
  bermo keeps it). JSON turns the layer keys into strings; both forms are read.
* ``compressed_layout``: ``{"format": 1, "intermediate_sizes": [...], "linears": {...}}``:
  ``intermediate_sizes`` holds the FFN width of each encoder layer after dead neurons were removed, and
  ``linears`` the inference form of each compressed linear, keyed by its path in the base model
  (``encoder.layer.0.intermediate.dense``): ``{"form": "dense", "shape": [out, in], "bias": bool}`` or
  ``{"form": "block_sparse", "shape": [out, in], "block_shape": [bo, bi], "nnz": kept_blocks, "bias": bool}``.

The state dict of a compressed base model also holds ``compressed_layout_id``: an int64 fingerprint (CRC-32) of
the two entries above. A checkpoint carries it, so a loader can tell a compressed checkpoint from an uncompressed
one without its config, and say so when one is loaded into the other kind of model (instead of a trace of size
mismatches, or block-sparse values left at their initial values as "missing").
"""
from __future__ import annotations

import json
import warnings
import zlib
from typing import Dict, Iterable, List, Mapping, Optional, Sequence, Tuple

import torch
from torch import nn

LAYOUT_FORMAT = 1
MARKER = "compressed_layout_id"  # the buffer on the base model; checkpoint keys end with it


class CompressedCheckpointError(ValueError):
    """A compressed checkpoint met an uncompressed model, or the reverse, or another compressed layout."""


# ----------------------------------------------------------------------------------------------------------
# The layout in the config
# ----------------------------------------------------------------------------------------------------------
def pruned_heads_of(config) -> Dict[int, List[int]]:
    """``config.pruned_heads`` as ``{int layer: sorted heads}`` (JSON gives string keys); ``{}`` when unset."""
    raw = getattr(config, "pruned_heads", None) or {}
    try:
        return {int(layer): sorted(int(h) for h in heads) for layer, heads in raw.items() if heads}
    except (AttributeError, TypeError, ValueError):
        raise CompressedCheckpointError(f"config.pruned_heads must map layer indices to lists of head indices, "
                                        f"e.g. {{\"0\": [1, 3]}}; got {raw!r}") from None


def layout_of(config) -> Optional[dict]:
    """``config.compressed_layout``, or None for an uncompressed model; its structure checked (a damaged
    config.json is a ``CompressedCheckpointError`` naming what is wrong, not an AttributeError later)."""
    layout = getattr(config, "compressed_layout", None) or None
    if layout is None:
        return None
    if not isinstance(layout, dict):
        raise CompressedCheckpointError(f"config.compressed_layout must be a mapping (format, intermediate_sizes, "
                                        f"linears); got {type(layout).__name__} {layout!r}")
    sizes, linears = layout.get("intermediate_sizes"), layout.get("linears")
    if sizes is not None and not (isinstance(sizes, list) and all(isinstance(v, int) and not isinstance(v, bool)
                                                                  for v in sizes)):
        raise CompressedCheckpointError(f"config.compressed_layout.intermediate_sizes must be a list of ints; got "
                                        f"{sizes!r}")
    if linears is not None and not isinstance(linears, dict):
        raise CompressedCheckpointError(f"config.compressed_layout.linears must map module paths to their forms; "
                                        f"got {type(linears).__name__}")
    for path, spec in (linears or {}).items():
        need = ("form", "shape") + (("block_shape", "nnz") if isinstance(spec, dict)
                                    and spec.get("form") == "block_sparse" else ())
        if not isinstance(spec, dict) or any(k not in spec for k in need):
            raise CompressedCheckpointError(f"config.compressed_layout.linears[{path!r}] must be a mapping with "
                                            f"{', '.join(need)}; got {spec!r}")
    return layout


def layout_id(config) -> Optional[int]:
    """The fingerprint of ``config``'s compressed layout (CRC-32 of its canonical JSON), None if uncompressed."""
    layout = layout_of(config)
    if layout is None:
        return None
    canonical = json.dumps({"compressed_layout": layout,
                            "pruned_heads": {str(k): v for k, v in sorted(pruned_heads_of(config).items())}},
                           sort_keys=True, separators=(",", ":"))
    return zlib.crc32(canonical.encode("utf-8"))


def set_marker(base_model: nn.Module) -> None:
    """Register (or refresh) the ``compressed_layout_id`` buffer of a compressed base model."""
    value = torch.tensor([layout_id(base_model.config)], dtype=torch.int64)
    if MARKER in base_model._buffers:
        base_model._buffers[MARKER] = value.to(base_model._buffers[MARKER].device)
    else:
        base_model.register_buffer(MARKER, value, persistent=True)


# ----------------------------------------------------------------------------------------------------------
# Module surgery shared by compress and the rebuild
# ----------------------------------------------------------------------------------------------------------
def new_linear(in_features: int, out_features: int, bias: bool, like: torch.Tensor) -> nn.Linear:
    """An ``nn.Linear`` on ``like``'s device and dtype, its storage uninitialised (built on the meta device: no
    random draw, no warning for zero-size weights)."""
    with warnings.catch_warnings():  # torch's init warns on zero-size weights even on the meta device
        warnings.filterwarnings("ignore", message="Initializing zero-element tensors is a no-op")
        layer = nn.Linear(in_features, out_features, bias=bias, device="meta", dtype=like.dtype)
    return layer.to_empty(device=like.device)


def sliced_linear(linear: nn.Linear, index: torch.Tensor, dim: int) -> nn.Linear:
    """A copy of ``linear`` keeping the output rows (``dim=0``) or input columns (``dim=1``) at ``index``."""
    weight = linear.weight.detach().index_select(dim, index.to(linear.weight.device))
    bias = linear.bias
    if bias is not None and dim == 0:
        bias = bias.detach().index_select(0, index.to(bias.device))
    out = new_linear(weight.shape[1], weight.shape[0], bias is not None, weight)
    if weight.device.type != "meta":
        with torch.no_grad():
            out.weight.copy_(weight)
            if bias is not None:
                out.bias.copy_(bias)
    return out


def head_rows(heads: Iterable[int], head_size: int, device=None) -> torch.Tensor:
    """The row indices of the projection outputs of ``heads`` (each ``head_size`` rows), in order."""
    heads = sorted(heads)
    if not heads:
        return torch.zeros(0, dtype=torch.long, device=device)
    return torch.cat([torch.arange(h * head_size, (h + 1) * head_size, device=device) for h in heads])


def original_heads(attention: nn.Module, num_heads: int) -> List[int]:
    """The original indices of the heads an attention module still has, in order (from its ``pruned_heads``)."""
    pruned = getattr(attention, "pruned_heads", set())
    return [h for h in range(num_heads) if h not in pruned]


def _no_heads_class():
    from transformers.models.bert.modeling_bert import BertSelfAttention

    class NoAttentionHeads(BertSelfAttention):
        """Stands in for a ``BertSelfAttention`` whose heads were all pruned: outputs ``(..., 0)`` features (the
        attention output projection then has no input columns and returns its bias) and empty attention
        weights ``(batch, 0, T, T)``. A ``BertSelfAttention`` subclass, so transformers records its attentions
        like the others'."""

        def __init__(self, config, layer_idx=None):
            nn.Module.__init__(self)
            self.config = config
            self.num_attention_heads = 0
            self.attention_head_size = int(config.hidden_size / config.num_attention_heads)
            self.all_head_size = 0
            self.scaling = self.attention_head_size ** -0.5
            self.is_decoder = getattr(config, "is_decoder", False)  # (LayoutLM's, Splinter's configs have none)
            self.is_causal = False
            self.layer_idx = layer_idx

        def forward(self, hidden_states, attention_mask=None, cache=None, **kwargs):
            shape = hidden_states.shape[:-1]
            keys = kwargs.get("encoder_hidden_states")
            t_k = (keys if keys is not None else hidden_states).shape[-2]
            weights = hidden_states.new_zeros(shape[0], 0, shape[-1], t_k) if len(shape) == 2 else None
            return hidden_states.new_zeros(*shape, 0), weights

    return NoAttentionHeads


_NO_HEADS = None


def no_attention_heads(config, layer_idx=None) -> nn.Module:
    """A ``NoAttentionHeads`` module (see ``_no_heads_class``): the self-attention of a layer left without heads."""
    global _NO_HEADS
    if _NO_HEADS is None:
        _NO_HEADS = _no_heads_class()
    return _NO_HEADS(config, layer_idx)


def no_attention_heads_class() -> type:
    """The class ``no_attention_heads`` builds (made once, on first use)."""
    global _NO_HEADS
    if _NO_HEADS is None:
        _NO_HEADS = _no_heads_class()
    return _NO_HEADS


def set_head_count(self_attention: nn.Module, num_heads: int) -> None:
    self_attention.num_attention_heads = num_heads
    self_attention.all_head_size = num_heads * self_attention.attention_head_size


# ----------------------------------------------------------------------------------------------------------
# Rebuilding a compressed layout (BermoModel.__init__ calls this before its weights are initialised or loaded)
# ----------------------------------------------------------------------------------------------------------
def _block_sparse_class():
    try:
        from ..nn.block_sparse_linear import BlockSparseLinear
    except ImportError:
        return None
    return BlockSparseLinear


def empty_block_sparse(shape: Sequence[int], block_shape: Sequence[int], nnz: int, bias: bool,
                       like: torch.Tensor) -> nn.Module:
    """A ``BlockSparseLinear`` of ``shape`` with ``nnz`` kept ``block_shape`` blocks, to be overwritten by a
    checkpoint's values and indices (it is built from a zero weight with the first ``nnz`` blocks kept)."""
    cls = _block_sparse_class()
    if cls is None:
        raise CompressedCheckpointError("this compressed checkpoint has block-sparse layers, but this bermo has no "
                                        "bermo.nn.BlockSparseLinear to rebuild them with")
    out_f, in_f = (int(v) for v in shape)
    bo, bi = (int(v) for v in block_shape)
    n_blocks = (out_f // bo) * (in_f // bi)
    if not 0 <= nnz <= n_blocks:
        raise CompressedCheckpointError(f"compressed layout: {nnz} kept blocks of {block_shape} do not fit a "
                                        f"{tuple(shape)} weight")
    # Built on the CPU (or the model's device) even under transformers' meta-device init: the structure (the
    # indices) must be real; the checkpoint then overwrites values and indices alike.
    device = like.device if like.device.type != "meta" else torch.device("cpu")
    mask = torch.zeros(n_blocks, dtype=torch.bool, device=device)
    mask[:nnz] = True
    weight = torch.zeros(out_f, in_f, dtype=like.dtype, device=device)
    b = torch.zeros(out_f, dtype=like.dtype, device=device) if bias else None
    with torch.device(device):  # overrides transformers' meta-device context inside from_dense
        return cls.from_dense(weight, b, (bo, bi), mask=mask.view(out_f // bo, in_f // bi))


def _prune_heads_in_place(layer: nn.Module, heads: Sequence[int], config, layer_idx: int) -> None:
    """Remove ``heads`` (original indices) from a fresh ``BertLayer``'s self-attention."""
    attention = layer.attention
    sa = attention.self
    n = config.num_attention_heads
    already = getattr(attention, "pruned_heads", set())
    remove = set(heads) - already
    if not remove:
        return
    current = original_heads(attention, n)
    keep_current = [i for i, h in enumerate(current) if h not in remove]
    attention.pruned_heads = already | remove
    if not keep_current:
        attention.self = no_attention_heads(config, layer_idx)
        attention.output.dense = sliced_linear(attention.output.dense,
                                               torch.zeros(0, dtype=torch.long), dim=1)
        return
    rows = head_rows(keep_current, sa.attention_head_size)
    sa.query = sliced_linear(sa.query, rows, 0)
    sa.key = sliced_linear(sa.key, rows, 0)
    sa.value = sliced_linear(sa.value, rows, 0)
    attention.output.dense = sliced_linear(attention.output.dense, rows, 1)
    set_head_count(sa, len(keep_current))


def rebuild_compressed_layout(base_model: nn.Module) -> None:
    """Give a freshly built BERMo base model the modules its config's compressed layout records: heads pruned
    per ``pruned_heads``, FFNs resized per ``intermediate_sizes``, block-sparse layers per ``linears``; and the
    ``compressed_layout_id`` buffer. Nothing to do for an uncompressed config."""
    config = base_model.config
    layers = base_model.encoder.layer
    for i, heads in pruned_heads_of(config).items():
        if not 0 <= i < len(layers):
            raise CompressedCheckpointError(f"config.pruned_heads names layer {i}, but the model has "
                                            f"{len(layers)} layers")
        bad = [h for h in heads if not 0 <= h < config.num_attention_heads]
        if bad:
            raise CompressedCheckpointError(f"config.pruned_heads[{i}] names heads {bad}, but layers have "
                                            f"{config.num_attention_heads} heads")
        _prune_heads_in_place(layers[i], heads, config, i)
    layout = layout_of(config)
    if layout is None:
        return
    if layout.get("format") != LAYOUT_FORMAT:
        raise CompressedCheckpointError(f"config.compressed_layout has format {layout.get('format')!r}; this bermo "
                                        f"reads format {LAYOUT_FORMAT}")
    sizes = layout.get("intermediate_sizes")
    if sizes is not None:
        if len(sizes) != len(layers):
            raise CompressedCheckpointError(f"config.compressed_layout has {len(sizes)} intermediate_sizes for "
                                            f"{len(layers)} layers")
        for layer, size in zip(layers, sizes):
            size = int(size)
            inter, out = layer.intermediate.dense, layer.output.dense
            if size != inter.out_features:
                like = inter.weight
                layer.intermediate.dense = new_linear(inter.in_features, size, inter.bias is not None, like)
                layer.output.dense = new_linear(size, out.out_features, out.bias is not None, out.weight)
    for path, spec in (layout.get("linears") or {}).items():
        try:
            current = base_model.get_submodule(path)
        except AttributeError:
            raise CompressedCheckpointError(f"config.compressed_layout names {path!r}, which this model lacks") \
                from None
        shape = [int(v) for v in spec["shape"]]
        bias = bool(spec.get("bias", True))
        have = [current.out_features, current.in_features] if isinstance(current, nn.Linear) else None
        like = next(current.parameters(), None) if have is not None else None
        like = like if like is not None else torch.empty(0)
        if spec["form"] == "dense":
            if have != shape or (current.bias is not None) != bias:
                base_model.set_submodule(path, new_linear(shape[1], shape[0], bias, like))
        elif spec["form"] == "block_sparse":
            base_model.set_submodule(path, empty_block_sparse(shape, spec["block_shape"], int(spec["nnz"]), bias,
                                                              like))
        else:
            raise CompressedCheckpointError(f"config.compressed_layout: unknown form {spec['form']!r} for {path!r}")
    set_marker(base_model)


# ----------------------------------------------------------------------------------------------------------
# Checkpoint against model
# ----------------------------------------------------------------------------------------------------------
def _checkpoint_contents(state_dict: Optional[Mapping],
                         checkpoint_files: Optional[Sequence[str]]) -> Tuple[set, Optional[int]]:
    """The keys of a checkpoint (a state dict, or the files ``from_pretrained`` resolved) and the
    ``compressed_layout_id`` it holds under any prefix (None if none), in one pass over its files."""
    def read(tensor_like):
        t = tensor_like[:] if not isinstance(tensor_like, torch.Tensor) else tensor_like  # safetensors slices
        return int(torch.as_tensor(t).reshape(-1)[0])

    def is_marker(key: str) -> bool:
        return key == MARKER or key.endswith("." + MARKER)

    if state_dict is not None:
        marker = next((read(v) for k, v in state_dict.items() if is_marker(k)), None)
        return set(state_dict.keys()), marker
    keys, marker = set(), None
    for file in checkpoint_files or ():
        if str(file).endswith(".safetensors"):
            from safetensors import safe_open
            with safe_open(file, framework="pt") as f:
                names = list(f.keys())
                found = next((k for k in names if is_marker(k)), None)
                if marker is None and found is not None:
                    marker = read(f.get_tensor(found))
        else:
            sd = torch.load(file, map_location="cpu", weights_only=True, mmap=True)
            names = list(sd.keys())
            if marker is None:
                marker = next((read(v) for k, v in sd.items() if is_marker(k)), None)
        keys.update(names)
    return keys, marker


def _missing_block_sparse(model: nn.Module, keys: set) -> List[str]:
    """The block-sparse tensors of ``model`` a checkpoint with ``keys`` lacks (matched by their path in the base
    model, whatever prefix the checkpoint has): transformers would leave them as uninitialised memory, and no
    initialisation could give back their indices."""
    cls = _block_sparse_class()
    base = getattr(model, "base_model", model)
    if cls is None:
        return []
    need = [f"{name}.{t}" for name, m in base.named_modules() if isinstance(m, cls)
            for t in ("values", "col_indices", "crow_indices")]
    return [k for k in need if not any(key == k or key.endswith("." + k) for key in keys)]


def check_layout_loaded(base_model: nn.Module) -> None:
    """After loading: every block-sparse layer the layout records holds its recorded number of blocks, with valid
    indices (a checkpoint whose tensors were cut consistently would otherwise load, resized, and compute something
    else)."""
    layout = layout_of(base_model.config)
    cls = _block_sparse_class()
    for path, spec in ((layout or {}).get("linears") or {}).items():
        if spec["form"] != "block_sparse":
            continue
        module = base_model.get_submodule(path)
        if cls is None or not isinstance(module, cls) or module.nnz != int(spec["nnz"]):
            have = module.nnz if cls is not None and isinstance(module, cls) else type(module).__name__
            raise CompressedCheckpointError(f"{path}: the checkpoint's block-sparse layer has {have} blocks where "
                                            f"its config's compressed_layout records {spec['nnz']}")
        try:
            module._check_indices()
        except ValueError as err:
            raise CompressedCheckpointError(f"{path}: the checkpoint's block-sparse indices are damaged: {err}") \
                from None


def check_checkpoint(model: nn.Module, state_dict: Optional[Mapping] = None,
                     checkpoint_files: Optional[Sequence[str]] = None, partial: bool = False) -> None:
    """Raise ``CompressedCheckpointError`` when a checkpoint (a state dict, or the files ``from_pretrained``
    resolved) and ``model`` disagree on being compressed, or on the compressed layout. ``partial`` (a
    ``load_state_dict(..., strict=False)``): a state dict without the marker may be a part, e.g. a task head;
    it passes."""
    config = getattr(model, "config", None)
    want = layout_id(config) if config is not None else None
    keys, have = _checkpoint_contents(state_dict, checkpoint_files)
    if partial and have is None:
        return
    if want is None and have is not None:
        raise CompressedCheckpointError(
            "cannot load a compressed checkpoint (saved after bermo.pruning.compress: smaller FFNs, pruned heads, "
            "block-sparse layers) into an uncompressed model. Load it with from_pretrained(path) and the config "
            "saved beside it, whose compressed_layout and pruned_heads rebuild the compressed modules; do not pass "
            "the config of an uncompressed model.")
    if want is not None and have is None:
        raise CompressedCheckpointError(
            "cannot load an uncompressed checkpoint into a compressed model (its config has a compressed_layout, "
            "from bermo.pruning.compress). Load the checkpoint into an uncompressed model (with its own config), "
            "then prune and compress that.")
    if want is not None and have != want:
        raise CompressedCheckpointError(
            f"the checkpoint was compressed with another layout (id {have}) than this model's config records "
            f"(id {want}): load it with the config saved beside it.")
    if want is not None and not partial:
        missing = _missing_block_sparse(model, keys)
        if missing:
            raise CompressedCheckpointError(
                f"the compressed checkpoint lacks block-sparse tensors {missing[:5]}{' ...' if len(missing) > 5 else ''}"
                ": they cannot be initialised (their indices are the compressed layout); the files are damaged or "
                "incomplete")


# ----------------------------------------------------------------------------------------------------------
# Loading any compressed checkpoint bermo wrote: load_compressed
# ----------------------------------------------------------------------------------------------------------
_WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin",
                 "pytorch_model.bin.index.json")


def _read_state_dict(path: str) -> Dict[str, torch.Tensor]:
    """Every tensor of the checkpoint in the directory ``path`` (safetensors or torch, single file or shards)."""
    import os

    for name in _WEIGHT_FILES:
        file = os.path.join(path, name)
        if not os.path.isfile(file):
            continue
        if name.endswith(".index.json"):
            with open(file, encoding="utf-8") as f:
                shards = sorted(set(json.load(f)["weight_map"].values()))
            files = [os.path.join(path, s) for s in shards]
        else:
            files = [file]
        state: Dict[str, torch.Tensor] = {}
        for shard in files:
            if shard.endswith(".safetensors"):
                from safetensors.torch import load_file
                state.update(load_file(shard))
            else:
                state.update(torch.load(shard, map_location="cpu", weights_only=True))
        return state
    raise CompressedCheckpointError(f"load_compressed: {path} holds no weights ({', '.join(_WEIGHT_FILES)})")


def _model_class(config):
    """The model class ``config.architectures`` names: a bermo class for a BERMo config, else transformers'."""
    names = list(getattr(config, "architectures", None) or [])
    if getattr(config, "model_type", None) == "bermo":
        from .. import models
        candidates = [getattr(models, n, None) for n in names] + [models.BermoForSequenceClassification]
    else:
        import transformers
        candidates = [getattr(transformers, n, None) for n in names]
    for cls in candidates:
        if isinstance(cls, type) and issubclass(cls, nn.Module):
            return cls
    raise CompressedCheckpointError(f"load_compressed: config.json names no model class this process knows "
                                    f"(architectures={names!r}): pass model_class=")


def _tied_keys(model: nn.Module) -> set:
    tied = getattr(model, "all_tied_weights_keys", None)  # transformers 5: {target: source}
    if tied is None:
        tied = getattr(model, "_tied_weights_keys", None) or ()  # transformers 4: a list of (pattern) names
    return set(tied)


def load_compressed(path, model_class=None, dtype: Optional[torch.dtype] = None, device=None) -> nn.Module:
    """Load a model that ``bermo.pruning.compress`` compressed and ``save_pretrained`` wrote to the directory
    ``path``, with the modules its config records (smaller FFNs, removed heads, ``BlockSparseLinear`` layers), in
    eval mode. Works for BERMo checkpoints (the same as their ``from_pretrained``) and for plain transformers
    BERT-family ones (``BertForSequenceClassification``, ``BertModel``, ...).

    Why plain models need it: a compressed BERMo model rebuilds its compressed modules in ``BermoModel.__init__``,
    so ``from_pretrained`` works. transformers' own classes build the uncompressed layout, and bermo does not
    patch them: their ``from_pretrained`` of a compressed checkpoint fails on the smaller tensors' sizes, or (a
    checkpoint with block-sparse layers only) loads with the block-sparse weights missing, i.e. random. This
    function builds the model from the checkpoint's config, rebuilds the compressed layout
    (``rebuild_compressed_layout``), then loads every tensor, strictly.

    ``model_class``: the class to build (default: the first of ``config.architectures`` that this process knows;
    a base class such as ``BertModel`` also loads a checkpoint saved with a task head, dropping the head).
    ``dtype``: the parameters' dtype (default: the config's ``dtype`` / ``torch_dtype``, else float32).

    Raises ``CompressedCheckpointError`` for a checkpoint that was not compressed (load it with
    ``from_pretrained``), one whose weights do not match its config's layout, or one with tensors missing or left
    over."""
    import os

    from transformers import AutoConfig

    from .. import models as _bermo_models  # noqa: F401  (registers BERMo with the Auto classes)

    path = os.fspath(path)
    if not os.path.isdir(path):
        raise CompressedCheckpointError(f"load_compressed: {path!r} is not a directory written by save_pretrained")
    config = AutoConfig.from_pretrained(path)
    if layout_of(config) is None:
        raise CompressedCheckpointError(f"load_compressed: {path} is not a compressed checkpoint (its config has no "
                                        f"compressed_layout, which bermo.pruning.compress records): load it with "
                                        f"from_pretrained")
    cls = model_class if model_class is not None else _model_class(config)
    if dtype is None:
        dtype = getattr(config, "dtype", None) or getattr(config, "torch_dtype", None) or torch.float32
        dtype = getattr(torch, dtype) if isinstance(dtype, str) else dtype
    from ..models.modeling_bermo import BermoPreTrainedModel
    if issubclass(cls, BermoPreTrainedModel):
        model, info = cls.from_pretrained(path, config=config, dtype=dtype, output_loading_info=True)
        _check_loaded(model, cls, path, info.get("missing_keys", ()), info.get("unexpected_keys", ()),
                      [m[0] if isinstance(m, (tuple, list)) else m for m in info.get("mismatched_keys", ())])
    else:  # (BERMo's from_pretrained checks the block-sparse layers itself: modeling_bermo)
        model = _load_plain(cls, config, path, dtype)
        from .compression import _base_model
        check_layout_loaded(_base_model(model)[0])
    if device is not None:
        model = model.to(device)
    return model.eval()


def _check_loaded(model: nn.Module, cls, path: str, missing, unexpected, mismatched) -> None:
    """Every tensor of the model loaded from the checkpoint, none left over: else a ``CompressedCheckpointError``
    (``from_pretrained`` alone would initialise what is missing at random and only log it)."""
    missing = [k for k in missing if k not in _tied_keys(model)]
    unexpected, mismatched = list(unexpected), list(mismatched)
    if missing or unexpected or mismatched:
        def few(keys):
            return f"{keys[:5]}{' ...' if len(keys) > 5 else ''}"
        raise CompressedCheckpointError(
            f"load_compressed: the checkpoint at {path} does not fit the {cls.__name__} its config describes: "
            f"missing {few(missing)}, unexpected {few(unexpected)}"
            + (f", of another shape {few(mismatched)}" if mismatched else ""))


def _load_plain(cls, config, path: str, dtype: torch.dtype) -> nn.Module:
    from .compression import _base_model

    model = cls(config).to(dtype)
    base, prefix = _base_model(model)
    if base is None:
        raise CompressedCheckpointError(f"load_compressed: {cls.__name__} holds no BERT-family base model "
                                        f"(encoder.layer) to rebuild the compressed layout in")
    rebuild_compressed_layout(base)
    state = _read_state_dict(path)
    if prefix == "" and getattr(model, "base_model_prefix", ""):
        head = model.base_model_prefix + "."
        if not any(k in model.state_dict() for k in state) and any(k.startswith(head) for k in state):
            state = {k[len(head):]: v for k, v in state.items() if k.startswith(head)}  # a task checkpoint
    check_checkpoint(model, state_dict=state)
    try:
        result = nn.Module.load_state_dict(model, state, strict=False)
    except RuntimeError as err:  # e.g. block-sparse indices out of range (checked as they load)
        raise CompressedCheckpointError(f"load_compressed: the checkpoint at {path} does not load: {err}") from None
    _check_loaded(model, cls, path, result.missing_keys, result.unexpected_keys, ())
    if hasattr(model, "tie_weights"):
        model.tie_weights()
    return model
