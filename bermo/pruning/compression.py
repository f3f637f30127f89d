"""``compress(model)``: turn every ``bermo.nn.MaskedLinear`` of a pruned model into its fastest exact inference
form: smaller dense layers where whole rows are gone (FFN neurons, attention heads), block-sparse layers where
the kept blocks are few enough to gain, dense ``W * M`` layers otherwise.
"""
from __future__ import annotations

import copy
import math
import warnings
from dataclasses import dataclass
from typing import Dict, List, Optional, Tuple

import torch
from torch import nn

from ..nn.masked_linear import MaskedLinear
from ..ops.masked_linear import expand_mask
from . import compressed_checkpoint as ckpt

# ----------------------------------------------------------------------------------------------------------
# When block-sparse pays: the density crossover
# ----------------------------------------------------------------------------------------------------------
# The block density (kept blocks / all blocks) at or under which a BlockSparseLinear beats the dense nn.Linear
# holding W * M, by dtype and block shape (bo, bi), measured on the development CPU (see ``compress``'s docstring
# for the timings). A block shape not measured takes the entry of the nearest measured one (distance
# |log2 bo - log2 bo'| + |log2 bi - log2 bi'|; ties to the lower density). float64 uses the float32 table;
# float16 at most FLOAT16_CAP; bfloat16 never gains (the dense product has AMX there).
DENSITY_CROSSOVER: Dict[Tuple[int, int], float] = {
    (1, 1): 0.0, (4, 4): 0.1, (8, 8): 0.1, (16, 16): 0.5, (32, 32): 0.5, (64, 64): 0.5, (32, 1): 0.3, (1, 32): 0.0,
}
FLOAT16_CAP = 0.3
# On a CUDA GPU (16-bit weights), measured on an H100 (bfloat16, 4096 tokens, device time of CUDA-graph replays,
# benchmarks/results/block_sparse_gpu_cuda-*.md): BlockSparseLinear / dense nn.Linear speedups, 768x768 /
# 3072x768 / 768x3072, at block densities 0.05, 0.1, 0.5:
#     16x16    1.04 1.10 0.99    0.68 0.72 0.58    0.19 0.18 0.13
#     32x32    1.37 2.02 1.96    1.07 1.51 1.31    0.47 0.47 0.39
#     64x64    1.54 1.97 2.60    1.27 1.58 1.56    0.52 0.65 0.46
# Time grows about linearly with density, so 32x32 and 64x64 cross over near 0.12-0.19: 0.1 is the last measured
# density that gains on every shape. An H200 (2026-11-27) agrees: 32x32 1.30 2.07 1.95 at 0.05, 1.04 1.51 1.32
# at 0.1; 64x64 1.45 2.06 2.40, 1.20 1.61 1.56. Device time only: see compress's docstring for eager calls.
# float32 on a GPU (an ``ieee`` Triton product against cuBLAS) is not measured: only fully pruned layers.
GPU_DENSITY_CROSSOVER: Dict[Tuple[int, int], float] = {(16, 16): 0.0, (32, 32): 0.1, (64, 64): 0.1}


def _nearest(table: Dict[Tuple[int, int], float], block_shape: Tuple[int, int]) -> float:
    lo, li = math.log2(block_shape[0]), math.log2(block_shape[1])
    return min(table.items(),
               key=lambda kv: (abs(math.log2(kv[0][0]) - lo) + abs(math.log2(kv[0][1]) - li), kv[1]))[1]


def default_crossover(block_shape: Tuple[int, int], dtype: torch.dtype = torch.float32,
                      device: Optional[torch.device] = None) -> float:
    """The measured crossover density for a layer of ``dtype`` with ``block_shape`` blocks on ``device`` (the
    CPU when not given): it becomes block-sparse when its block density is at or under this (so a fully pruned
    layer, density 0, always does). ``DENSITY_CROSSOVER`` on a CPU, ``GPU_DENSITY_CROSSOVER`` on a CUDA GPU."""
    if device is not None and torch.device(device).type == "cuda":
        if dtype not in (torch.float16, torch.bfloat16):
            return 0.0
        return _nearest(GPU_DENSITY_CROSSOVER, block_shape)
    if dtype == torch.bfloat16:
        return 0.0
    nearest = _nearest(DENSITY_CROSSOVER, block_shape)
    return min(nearest, FLOAT16_CAP) if dtype == torch.float16 else nearest


# The FFN width compress leaves (kept neurons) is rounded up to a multiple of this, with zero neurons that add
# exactly nothing, when enough neurons were removed to lend it (see ``compress``). Measured on the development CPU
# (Xeon, AVX-512, MKL, 2 threads, float32, 1024 tokens x 768 in): an FFN-in GEMM with N outputs takes
#     N       38     40     48     64     77     78     80     96    128    304    307    312    320    768
#     ms    0.233  0.222  0.220  0.438  0.615  0.605  0.453  0.532  0.628  1.348  1.529  1.464  1.424  3.391
# (median of 10 quiet rounds of interleaved calls): 77 outputs run at 55% of the dense GEMM's FLOP rate, 80 at
# 78% (one thread: 83% for 77, so it is MKL's two-thread split of a width that is no multiple of the 16-float
# AVX-512 vector). Reading 80 instead of 77 inputs costs the FFN-out GEMM nothing measurable (0.529 / 0.524 ms).
FFN_WIDTH_MULTIPLE = 16

# Self-attention modules whose heads compress removes: BERT's and its copies in transformers (query, key, value
# rows of a head side by side, nothing else per head). Others with BERT's names carry per-head parts of their own
# (Nystromformer's convolution, LayoutLMv3's and DeBERTa's relative positions, Lilt's layout branch, ConvBERT's
# convolution, MPNet's and Longformer's own layouts): their heads stay, their linears still take the exact
# block-sparse or dense forms.
BERT_SELF_ATTENTIONS = frozenset({
    "BertSelfAttention", "RobertaSelfAttention", "XLMRobertaSelfAttention", "XLMRobertaXLSelfAttention",
    "CamembertSelfAttention", "ElectraSelfAttention", "ErnieSelfAttention", "MegatronBertSelfAttention",
    "RoCBertSelfAttention", "RemBertSelfAttention", "BigBirdSelfAttention", "RoFormerSelfAttention",
    "Data2VecTextSelfAttention", "MarkupLMSelfAttention", "XmodSelfAttention", "LayoutLMSelfAttention",
    "SplinterSelfAttention", "RobertaPreLayerNormSelfAttention"})


def _bert_self_attention(module: nn.Module) -> bool:
    """Whether ``module`` is one of ``BERT_SELF_ATTENTIONS`` or a subclass (transformers 4's ``BertSdpaSelfAttention``
    is one of ``BertSelfAttention``)."""
    return any(c.__name__ in BERT_SELF_ATTENTIONS for c in type(module).__mro__)


def padded_width(kept: int, total: int) -> int:
    """The FFN width ``compress`` leaves when ``kept`` of ``total`` neurons are alive: ``kept`` rounded up to a
    multiple of ``FFN_WIDTH_MULTIPLE``, at most ``total`` (for an activation with ``act(0) = 0``)."""
    return kept + min((-kept) % FFN_WIDTH_MULTIPLE, total - kept)


# ----------------------------------------------------------------------------------------------------------
# A linear layer on its way to its compressed form
# ----------------------------------------------------------------------------------------------------------
@dataclass
class _Pending:
    weight: torch.Tensor            # the effective weight W * M, in the layer's dtype
    bias: Optional[torch.Tensor]    # float32 (constants of removed rows and heads are folded in at float32)
    keep: Optional[torch.Tensor]    # bool (out, in): True where the mask kept the weight; None: a plain nn.Linear
    block_shape: Tuple[int, int]

    def select(self, index: torch.Tensor, dim: int) -> None:
        self.weight = self.weight.index_select(dim, index)
        if self.keep is not None:
            self.keep = self.keep.index_select(dim, index)
        if dim == 0 and self.bias is not None:
            self.bias = self.bias.index_select(0, index)

    def add_to_bias(self, value: torch.Tensor) -> None:
        self.bias = value if self.bias is None else self.bias + value

    def block_mask(self) -> Optional[torch.Tensor]:
        """The compact kept-block mask, if ``keep`` still tiles by ``block_shape`` (rows removed along block
        boundaries); else None."""
        if self.keep is None:
            return None
        bo, bi = self.block_shape
        out_f, in_f = self.keep.shape
        if out_f % bo or in_f % bi or self.keep.numel() == 0:
            return None
        blocks = self.keep.reshape(out_f // bo, bo, in_f // bi, bi)
        compact = blocks.any(dim=3).any(dim=1)
        if not torch.equal(expand_mask(compact, self.block_shape), self.keep):
            return None
        return compact


def _effective(module: MaskedLinear) -> _Pending:
    """The eval-mode masked weight of a MaskedLinear (``l0`` draws no random mask), as its forward computes it."""
    training = module.training
    module.training = False
    try:
        with torch.no_grad():
            mask = module.block_mask().detach()
    finally:
        module.training = training
    weight = module.weight.detach()
    expanded = expand_mask(mask, module.block_shape)
    return _Pending(weight=weight * expanded.to(weight.dtype),
                    bias=None if module.bias is None else module.bias.detach().float().clone(),
                    keep=expanded != 0, block_shape=tuple(module.block_shape))


def _plain(module: nn.Module) -> _Pending:
    """A neighbour of a masked layer as it stands: a plain ``nn.Linear``, or a ``BlockSparseLinear`` an earlier
    ``compress`` made (its kept blocks stay its mask, so it can be block-sparse again after the surgery)."""
    bias = None if module.bias is None else module.bias.detach().float()
    if isinstance(module, nn.Linear):
        return _Pending(weight=module.weight.detach(), bias=bias, keep=None, block_shape=(1, 1))
    cls = ckpt._block_sparse_class()
    if cls is not None and isinstance(module, cls):
        bo, bi = module.block_shape
        crow, col = module.crow_indices.long(), module.col_indices.long()
        compact = torch.zeros(module.out_features // bo, module.in_features // bi, dtype=torch.bool,
                              device=col.device)
        rows = torch.repeat_interleave(torch.arange(compact.shape[0], device=col.device), crow.diff())
        compact[rows, col] = True
        with torch.no_grad():
            weight = module.to_dense().detach()
        return _Pending(weight=weight, bias=bias, keep=expand_mask(compact, (bo, bi)), block_shape=(bo, bi))
    raise TypeError(f"compress: cannot restructure a {type(module).__name__} next to a pruned layer (expected an "
                    "nn.Linear or a BlockSparseLinear)")


# ----------------------------------------------------------------------------------------------------------
# Structure: FFN neurons and attention heads
# ----------------------------------------------------------------------------------------------------------
class _Surgery:
    def __init__(self, model: nn.Module, masked: Dict[str, MaskedLinear]):
        self.model = model
        self.masked = masked
        self.pending: Dict[str, _Pending] = {name: _effective(m) for name, m in masked.items()}
        self.dropped: List[str] = []  # pending layers whose module went away (all heads pruned)
        self.kept_heads: set = set()   # attention classes whose heads stay (said once each)

    def get(self, path: str) -> _Pending:
        if path not in self.pending:
            self.pending[path] = _plain(self.model.get_submodule(path))
        return self.pending[path]

    def touches(self, *paths: str) -> bool:
        return any(p in self.masked for p in paths)

    def ffn(self, prefix: str, layer: nn.Module) -> int:
        """Remove the dead neurons of a layer's FFN; returns its new width."""
        p_in, p_out = prefix + "intermediate.dense", prefix + "output.dense"
        if not self.touches(p_in, p_out):
            return layer.intermediate.dense.out_features
        inter, out = self.get(p_in), self.get(p_out)
        zero_rows = (inter.weight == 0).all(dim=1)   # neuron outputs act(bias): a constant
        zero_cols = (out.weight == 0).all(dim=0)     # neuron read by nothing
        dead = zero_rows | zero_cols
        fold = zero_rows & ~zero_cols
        # the activation in float32 (float64 for a float64 model), its parameters too (prelu, xielu)
        acc = torch.float64 if inter.weight.dtype == torch.float64 else torch.float32
        act = layer.intermediate.intermediate_act_fn
        if isinstance(act, nn.Module) and any(True for _ in act.parameters()):
            act = copy.deepcopy(act).to(acc)
        if fold.any():
            b1 = inter.bias[fold] if inter.bias is not None else torch.zeros(int(fold.sum()), device=fold.device)
            constant = act(b1.to(acc))
            out.add_to_bias(out.weight[:, fold].to(acc) @ constant)
        # Round the width up to a multiple of FFN_WIDTH_MULTIPLE with dead neurons made exact zeros (FFN-in row
        # and bias 0: act(0) = 0; FFN-out column 0), when the activation allows: see FFN_WIDTH_MULTIPLE.
        kept = ~dead
        pad = min((-int(kept.sum())) % FFN_WIDTH_MULTIPLE, int(dead.sum()))
        if pad and float(act(torch.zeros(1, dtype=acc, device=fold.device)).abs().max()) != 0.0:
            pad = 0
        is_pad = torch.zeros_like(dead)
        is_pad[dead.nonzero().squeeze(1)[:pad]] = True
        keep = (kept | is_pad).nonzero().squeeze(1)
        inter.select(keep, 0)   # index_select: new tensors, so the zeros below touch no model weight
        out.select(keep, 1)
        if pad:
            zero = is_pad[keep]
            inter.weight[zero] = 0
            out.weight[:, zero] = 0
            if inter.bias is not None:
                inter.bias[zero] = 0
            if inter.keep is not None:
                inter.keep[zero] = False
            if out.keep is not None:
                out.keep[:, zero] = False
        return int(keep.numel())

    def heads(self, prefix: str, layer: nn.Module, config, layer_idx: int) -> List[int]:
        """Remove the dead heads of a layer's self-attention; returns their original indices."""
        attention = layer.attention
        paths = [prefix + name for name in ("attention.self.query", "attention.self.key", "attention.self.value",
                                            "attention.output.dense")]
        if not self.touches(*paths):
            return []
        sa = getattr(attention, "self", None)
        if isinstance(sa, ckpt.no_attention_heads_class()):
            return []
        if not _bert_self_attention(sa):
            if type(attention).__name__ not in self.kept_heads:
                self.kept_heads.add(type(attention).__name__)
                warnings.warn(f"compress: {type(attention).__name__} is not BERT's self-attention (no "
                              f"{'attention.self' if sa is None else type(sa).__name__ + ' of known layout'}): its "
                              "heads are kept, its pruned linears take the block-sparse or dense form", UserWarning,
                              stacklevel=4)
            return []
        if sa.num_attention_heads == 0:
            return []
        q, k, v, o = (self.get(p) for p in paths)
        d = sa.attention_head_size
        originals = ckpt.original_heads(attention, config.num_attention_heads)
        dead = []
        for h in range(sa.num_attention_heads):
            rows = slice(h * d, (h + 1) * d)
            out_zero = bool((o.weight[:, rows] == 0).all())
            value_zero = bool((v.weight[rows] == 0).all())
            if out_zero:
                dead.append(h)
            elif value_zero:
                # the head's output at every position is its value bias (attention weights sum to 1)
                if v.bias is not None:
                    o.add_to_bias(o.weight[:, rows].float() @ v.bias[rows])
                dead.append(h)
        if not dead:
            return []
        keep_heads = [h for h in range(sa.num_attention_heads) if h not in dead]
        rows = ckpt.head_rows(keep_heads, d, device=o.weight.device)
        for p in (q, k, v):
            p.select(rows, 0)
        o.select(rows, 1)
        removed = [originals[h] for h in dead]
        attention.pruned_heads = getattr(attention, "pruned_heads", set()) | set(removed)
        if keep_heads:
            ckpt.set_head_count(sa, len(keep_heads))
        else:
            replacement = ckpt.no_attention_heads(config, layer_idx)
            replacement._forward_hooks.update(sa._forward_hooks)  # e.g. transformers' attention recorder
            replacement.train(sa.training)
            attention.self = replacement
            self.dropped.extend(paths[:3])
        return removed


# ----------------------------------------------------------------------------------------------------------
# The final form of one layer
# ----------------------------------------------------------------------------------------------------------
def _dense(p: _Pending) -> nn.Linear:
    out_f, in_f = p.weight.shape
    layer = ckpt.new_linear(in_f, out_f, p.bias is not None, p.weight)
    with torch.no_grad():
        layer.weight.copy_(p.weight)
        if p.bias is not None:
            layer.bias.copy_(p.bias.to(p.weight.dtype))
    return layer


def _final(p: _Pending, crossover: Optional[float], allow_block_sparse: bool, target_dtype: Optional[torch.dtype],
           target_device) -> Tuple[nn.Module, dict]:
    """The module for a pending layer, and its layout entry."""
    out_f, in_f = p.weight.shape
    spec = {"form": "dense", "shape": [int(out_f), int(in_f)], "bias": p.bias is not None}
    compact = p.block_mask() if allow_block_sparse else None
    cls = ckpt._block_sparse_class()
    if compact is not None and cls is not None:
        density = float(compact.float().mean())
        limit = default_crossover(p.block_shape, target_dtype or p.weight.dtype, target_device or p.weight.device) \
            if crossover is None else crossover
        if density <= limit:
            bias = None if p.bias is None else p.bias.to(p.weight.dtype)
            module = cls.from_dense(p.weight, bias, p.block_shape, mask=compact)
            spec = {"form": "block_sparse", "shape": [int(out_f), int(in_f)],
                    "block_shape": [int(v) for v in p.block_shape], "nnz": int(compact.sum()),
                    "bias": p.bias is not None}
            return module, spec
    return _dense(p), spec


# ----------------------------------------------------------------------------------------------------------
# compress
# ----------------------------------------------------------------------------------------------------------
def _is_bert_base(module: nn.Module) -> bool:
    """A BERT-family base model: a ``config`` with attention heads and an ``encoder.layer`` list of layers with
    ``attention``, ``intermediate`` and ``output`` (transformers' ``BertModel``, ``BermoModel``, and the same
    layout elsewhere)."""
    config = getattr(module, "config", None)
    layers = getattr(getattr(module, "encoder", None), "layer", None)
    return (config is not None and hasattr(config, "num_attention_heads") and isinstance(layers, nn.ModuleList)
            and len(layers) > 0
            and all(hasattr(layer, a) for layer in layers for a in ("attention", "intermediate", "output")))


def _base_model(model: nn.Module) -> Tuple[Optional[nn.Module], str]:
    """The BERT-family base model inside ``model`` (itself, or e.g. ``model.bert``) and its path prefix: a
    ``BermoModel`` if there is one, else the first module laid out as a BERT base model (``_is_bert_base``, e.g.
    transformers' ``BertModel`` inside ``BertForSequenceClassification``); (None, "") for other models."""
    tests = [_is_bert_base]
    try:
        from ..models.modeling_bermo import BermoModel
        tests.insert(0, lambda module: isinstance(module, BermoModel))
    except ImportError:  # transformers missing: no BERMo models to find
        pass
    named = list(model.named_modules())
    for wanted in tests:
        for name, module in named:
            if wanted(module):
                return module, (name + "." if name else "")
    return None, ""


def compress(model: nn.Module, crossover: Optional[float] = None, target_dtype: Optional[torch.dtype] = None,
             target_device=None) -> nn.Module:
    """Turn every ``MaskedLinear`` of ``model`` (in place) into its fastest exact inference form and return the
    model. In eval mode the compressed model computes what the masked one did (up to float rounding: the
    constants folded into biases are computed in float32, float64 for a float64 model). Masks are taken in eval
    mode (``l0`` draws none).

    In each encoder layer of a BERT-family model (``encoder.layer.<i>`` with ``attention.self``,
    ``attention.output``, ``intermediate`` and ``output``), when any of its linears is a ``MaskedLinear``:

    * FFN neurons whose row of the FFN-in weight (``intermediate.dense``) is fully pruned, or whose column of the
      FFN-out weight (``output.dense``) is, are removed from both weights. A pruned row still outputs
      ``act(bias)``, ``act`` the layer's activation (``config.hidden_act``): that constant times the neuron's
      FFN-out column is folded into the FFN-out bias. The width left is rounded up to a multiple of
      ``FFN_WIDTH_MULTIPLE`` (16) by keeping some removed neurons as exact zeros (FFN-in row and bias 0, FFN-out
      column 0; only for an activation with ``act(0) = 0``, as every BERT one): MKL's two-thread GEMM runs 77
      outputs at 55% of the dense rate and 80 at 78% (``padded_width``; the timings are beside
      ``FFN_WIDTH_MULTIPLE``). Blockwise masks of 16 or 32 rows already leave such widths.
    * Attention heads whose value rows or output-projection columns are fully pruned are removed (their query,
      key and value rows and output columns). A head with pruned value rows outputs its value bias at every
      position (attention weights sum to 1): that constant through the output projection is folded into the
      output bias. ``attention.pruned_heads`` and, for BERMo, ``config.pruned_heads`` record the removed heads
      as original indices (transformers 4's ``prune_heads`` bookkeeping, which transformers 5 dropped). A layer
      left without heads gets a ``NoAttentionHeads`` self-attention (no features; the output projection then
      gives its bias). Only BERT's self-attention and its copies in transformers lose heads
      (``BERT_SELF_ATTENTIONS``); attention modules with per-head parts of their own (DeBERTa, MPNet, Longformer,
      Nystromformer, LayoutLMv3, Lilt, ConvBERT...) keep them, with a warning, and their linears take the forms
      below.

    Every remaining (possibly smaller) masked layer becomes a ``bermo.nn.BlockSparseLinear`` when its block
    density (kept blocks / blocks) is at or under the crossover, else a dense ``nn.Linear`` holding ``W * M``.
    Layers whose rows were removed off block boundaries, and plain linears resized with their neighbours,
    become dense.

    The rule: a layer becomes block-sparse when its block density is at or under ``crossover``, by default
    ``default_crossover(block_shape, dtype)`` (``DENSITY_CROSSOVER``): 0.5 for float32 blocks of 16x16 to 64x64,
    0.3 for 32x1, 0.1 for 4x4 and 8x8, 0 (only fully pruned layers) for 1x1, 1x32 and every bfloat16 layer;
    float16 at most 0.3. Measured on the development machine (Intel Xeon with AMX, torch 2.13, the ``cpu``
    backend of ``BlockSparseLinear`` at the time), one thread (two shared cores gave timings too noisy to use),
    min of interleaved repetitions, a random block mask per density. Speedup = dense ``nn.Linear`` time /
    ``BlockSparseLinear`` time, at block densities 0.1 0.2 0.3 0.4 0.5 0.6 0.7:

        float32, 128 tokens      3072x768 (out x in)                    768x3072
          16x16    3.77 4.13 2.67 0.91 1.07 0.48 0.49     3.69 1.99 1.73 1.35 1.25 0.49 0.45
          32x32    4.44 2.31 1.99 1.34 1.10 0.83 0.43     4.44 2.57 2.00 1.50 1.38 1.12 0.49
          64x64    4.51 2.33 1.68 1.31 1.11 1.08 0.43     4.60 2.55 1.82 1.41 1.13 0.98 0.52
        float32, 1024 tokens
          16x16    4.02 3.49 1.97 1.50 1.28 0.82 0.73     5.05 2.53 1.92 1.34 1.12 0.81 0.79
          32x32    11.1 3.55 2.73 1.89 1.57 0.76 0.80     5.03 3.03 2.28 1.63 1.38 0.78 0.78
          64x64    6.72 4.54 2.43 2.06 1.62 1.31 0.74     4.54 2.75 2.14 1.52 1.27 1.16 0.84
        float32, 128 tokens, 768x3072, other blocks (two runs where they disagreed)
          1x1      0.51 0.41 0.29 0.25 0.19 0.15 0.13
          1x32     0.59 0.55 0.40 0.55 0.32 0.32 0.54
          4x4      2.26 0.30 ...                          (2.21 0.43 ...)
          8x8      1.75 0.65 0.53 ...                     (4.04 1.11 0.47 ...)
          32x1     5.04 2.40 1.40 0.54 1.49 0.84 0.22     (3.11 2.11 2.62 2.48 0.98 0.96 0.42)
        float16, 128 tokens, 768x3072
          16x16    3.17 1.78 1.14 0.44 0.42 0.42 0.17
          32x32    6.69 2.04 2.43 1.95 0.53 0.89 0.32
          64x64    3.42 2.04 3.33 1.05 0.46 0.50 0.13
        bfloat16, 128 tokens (dense 0.65 ms: AMX)
          16x16    0.84 0.48 0.47 0.30 0.24 0.13 0.09     0.81 0.46 0.36 0.27 0.24 0.11 0.10
          32x32    1.01 0.65 0.42 0.36 0.30 0.21 0.08     0.90 0.48 0.39 0.35 0.28 0.12 0.14
          64x64    0.92 0.64 0.41 0.38 0.35 0.16 0.10     0.94 0.57 0.35 0.32 0.26 0.24 0.07
        bfloat16, 1024 tokens, 768x3072, 32x32: 0.84 0.38 0.27 0.25 0.21 0.22 0.12

    Block-sparse time grows about linearly with density, with a step between 0.5 and 0.6 (16x16, 32x32) or 0.6
    and 0.7 (64x64); dense time is flat. These are one CPU's numbers: on another machine, time both and pass
    ``crossover``. For a CUDA GPU the rule is ``GPU_DENSITY_CROSSOVER``, measured on an H100 in bfloat16: 0.1 for
    32x32 and 64x64 blocks (1.1-2.6x dense at 0.05-0.1, 0.4-0.65x at 0.5), 0 for 16x16 (about even at 0.05) and
    for float32 weights (not measured). The table is chosen by where and in what dtype the compressed model will
    run: ``target_device`` and ``target_dtype``, by default the weights' own device and dtype as ``compress``
    finds them (``bermo train --compress`` passes the training device and its ``--precision``).

    The GPU table is device time, which is what a model captured in CUDA graphs runs
    (``torch.compile(mode="reduce-overhead")``, ``torch.cuda.graph``). Called eagerly from Python, each
    ``BlockSparseLinear`` also costs its host work, a Triton launch included: on the lent H200 VM a whole call
    took 0.20-0.67 ms against 0.03-0.20 ms for a dense layer's, more than the device time it saves at BERT-base
    sizes: 0.3-0.44x a dense layer's call with 32x32 and 64x64 blocks at every density (0.14-0.33x on the H100
    VM), and a BERT-base classifier compressed at 0.05 (most layers block-sparse) ran at 0.45x the dense
    model's tokens/s at 32 x 128 tokens (``benchmarks/results/*_cuda-*.md``). For eager GPU inference pass a
    negative ``crossover`` (no layer block-sparse; ``0`` still makes fully pruned layers block-sparse, each a
    launch): the model is then smaller by its removed neurons and heads only. Or capture the compressed model.

    Pass ``crossover`` (a float) to override for every layer: 0 makes only fully pruned layers block-sparse, 1
    every blockwise layer, a negative value none.

    A compressed BERT-family model (a ``BermoModel`` or transformers ``BertModel``, or a model around one such as
    ``BertForSequenceClassification``) records its layout in its config (``compressed_layout``, ``pruned_heads``;
    see ``bermo.pruning.compressed_checkpoint``), and ``save_pretrained`` writes only the kept blocks of
    block-sparse layers. Reloading: BERMo's ``from_pretrained`` rebuilds the same modules before loading, and
    ``bermo.pruning.load_compressed(path)`` loads any compressed checkpoint, BERMo or plain transformers BERT.
    transformers' own ``from_pretrained`` (``BertForSequenceClassification.from_pretrained``) cannot: it builds
    the uncompressed modules, then stops on the smaller tensors' sizes, or, for a checkpoint whose only change
    is block-sparse layers, reports their weights missing and initialises them at random: use
    ``load_compressed`` for those. ``MaskedLinear`` layers outside the base model (a task head) become dense
    ``W * M`` layers of unchanged shape, which any model loads. Other models (no BERT-family base) are
    compressed the same way in memory, but nothing records the layout for reloading.

    A compressed model can be prepared again (its remaining ``nn.Linear`` layers), pruned further and compressed
    again: the layers the first round left (block-sparse, resized) keep their recorded layout, and are
    restructured with their neighbours when FFN neurons or heads go.

    Raises ``TypeError`` for a non-module and ``ValueError`` for a model with no ``MaskedLinear`` (not prepared
    with ``bermo.pruning.prepare``, or already compressed).
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"compress: expected a torch.nn.Module; got {type(model).__name__}")
    if crossover is not None:
        if isinstance(crossover, bool) or not isinstance(crossover, (int, float)) or crossover != crossover:
            raise TypeError(f"compress: crossover must be a density (a float) or None; got {crossover!r}")
        crossover = float(crossover)
    masked = {name: m for name, m in model.named_modules() if isinstance(m, MaskedLinear)}
    if not masked:
        raise ValueError("compress: the model has no bermo.nn.MaskedLinear layers: nothing to compress (prepare it "
                         "with bermo.pruning.prepare and train it first; a compressed model has none left: prepare "
                         "it again to prune it further)")

    base, prefix = _base_model(model)
    surgery = _Surgery(model, masked)
    config = getattr(base, "config", None)
    layers = getattr(getattr(base, "encoder", None), "layer", None)
    intermediate_sizes, pruned = None, {}
    if layers is not None and config is not None and hasattr(config, "num_attention_heads"):
        intermediate_sizes = []
        for i, layer in enumerate(layers):
            p = f"{prefix}encoder.layer.{i}."
            if not all(hasattr(layer, a) for a in ("attention", "intermediate", "output")):
                intermediate_sizes = None
                break
            removed = surgery.heads(p, layer, config, i)
            if removed:
                pruned[i] = removed
            intermediate_sizes.append(surgery.ffn(p, layer))

    # layers an earlier compress left (block-sparse, resized) keep their entries unless this round rebuilds them
    earlier = ckpt.layout_of(config) if base is not None else None
    linears = dict((earlier or {}).get("linears") or {})
    for path in surgery.dropped:
        if base is not None and path.startswith(prefix):
            linears.pop(path[len(prefix):], None)
    for path, p in surgery.pending.items():
        if path in surgery.dropped:
            continue
        in_base = base is not None and path.startswith(prefix)
        allow_block_sparse = base is None or in_base
        module, spec = _final(p, crossover, allow_block_sparse, target_dtype, target_device)
        module.train(model.get_submodule(path).training)  # (built in training mode: keep an eval model in eval)
        model.set_submodule(path, module)
        if in_base:
            linears[path[len(prefix):]] = spec

    if base is not None:
        old = ckpt.pruned_heads_of(config)
        for i, heads in pruned.items():
            old[i] = sorted(set(old.get(i, [])) | set(heads))
        config.pruned_heads = {str(i): heads for i, heads in sorted(old.items())}
        config.compressed_layout = {"format": ckpt.LAYOUT_FORMAT, "intermediate_sizes": intermediate_sizes,
                                    "linears": dict(sorted(linears.items()))}
        ckpt.set_marker(base)
    return model
