"""bermo.pruning.compress: every MaskedLinear turned into its exact inference form (smaller dense layers where
FFN neurons or attention heads are gone, their constants folded into biases; block-sparse or dense W * M layers
otherwise), compressed checkpoints that save only what is kept and load back into the same modules, and the
errors for a compressed checkpoint meeting an uncompressed model (or the reverse) and for bad inputs."""
import json
import os

import pytest
import torch
from safetensors import safe_open
from torch import nn
from transformers import BertConfig, BertForSequenceClassification, BertModel

from bermo.models import BermoForSequenceClassification, BermoModel, BermoPreTrainedModel
from bermo.nn import MaskedLinear
from bermo.pruning import compressed_checkpoint as ckpt
from bermo.pruning import compress, load_compressed
from bermo.pruning.compression import default_crossover
from helpers import batch, tiny_bermo_config as tiny_config

BlockSparseLinear = ckpt._block_sparse_class()
needs_block_sparse = pytest.mark.skipif(BlockSparseLinear is None, reason="bermo.nn.BlockSparseLinear not there yet")

DTYPES = [torch.float32, torch.bfloat16]
# Outputs after LayerNorms (values of order 1): float32 differs by reassociation only; bfloat16 also by where
# the folded constants were rounded.
ATOL = {torch.float32: 2e-5, torch.bfloat16: 6e-2}
BLOCK = (16, 16)
PRUNED, KEPT = -1.0, 1.0


def masked_model(seed=0, cls=BermoForSequenceClassification, block_shape=BLOCK, method="threshold",
                 keep_prob=1.0, **config_kw):
    """A tiny BERMo whose encoder linears are MaskedLinear (reference backend), every block kept with probability
    ``keep_prob`` (threshold method: scores +1 kept, -1 pruned, threshold 0), random nonzero biases (so that a
    pruned row's constant matters). ``cls``: a BERMo class, or a plain transformers BERT class (then built from
    the same settings as a ``BertConfig``)."""
    torch.manual_seed(seed)
    config = tiny_config(**config_kw)
    if not issubclass(cls, BermoPreTrainedModel):  # a plain transformers class
        config = BertConfig(**{k: v for k, v in config.to_dict().items() if not k.startswith("mix_")
                               and k not in ("auto_map", "model_type", "architectures")})
    model = cls(config).eval()
    gen = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith(".bias"):
                p.normal_(0.0, 0.5, generator=gen)
    for name, module in list(model.named_modules()):
        if ".encoder.layer." in "." + name and type(module) is nn.Linear:
            blocks = (module.out_features // block_shape[0], module.in_features // block_shape[1])
            keep = torch.rand(blocks, generator=gen) < keep_prob
            scores = torch.where(keep, KEPT, PRUNED) if method == "threshold" else None
            model.set_submodule(name, MaskedLinear.from_linear(module, method=method, block_shape=block_shape,
                                                               scores_init=scores, backend="reference"))
    return model.eval()  # the new MaskedLinears too (l0 draws random masks in training)


def linear(model, path):
    return model.get_submodule(path)


def prune_blocks(module, rows=None, cols=None):
    """Set the scores of the block rows / block columns given to PRUNED (a threshold MaskedLinear)."""
    with torch.no_grad():
        if rows is not None:
            module.scores[rows] = PRUNED
        if cols is not None:
            module.scores[:, cols] = PRUNED


def outputs(model, dtype=None):
    ids, mask = batch()
    with torch.no_grad():
        if hasattr(model, "classifier"):  # BERMo or plain BERT with a classification head
            out = model(ids, attention_mask=mask)
            return out.logits.float(), model.bert(ids, attention_mask=mask).last_hidden_state.float()
        out = model(ids, attention_mask=mask)
        return out.pooler_output.float(), out.last_hidden_state.float()


def assert_same_outputs(a, b, dtype):
    for x, y in zip(a, b):
        assert x.shape == y.shape
        err = (x - y).abs().max().item()
        assert err <= ATOL[dtype], f"max abs difference {err:.3e} > {ATOL[dtype]:.1e}"


def compressed_matches(model, dtype=torch.float32, **kw):
    """Compress ``model`` (cast to ``dtype``), checking its outputs against the masked model's; returns it."""
    model = model.to(dtype)
    before = outputs(model)
    compress(model, **kw)
    assert not any(isinstance(m, MaskedLinear) for m in model.modules())
    assert_same_outputs(outputs(model), before, dtype)
    return model


# ----------------------------------------------------------------------------------------------- equivalence
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("keep_prob", [0.3, 0.6])
def test_random_blocks(dtype, keep_prob):
    model = compressed_matches(masked_model(seed=3, keep_prob=keep_prob), dtype)
    for module in model.modules():
        if isinstance(module, nn.Linear):
            assert module.weight.dtype == dtype


def test_sparsity_report_of_a_compressed_model_says_so():
    """After compress the masks are gone: the report says the model is compressed, not 'call prepare first'."""
    from bermo.pruning import sparsity_report

    model = masked_model(seed=3, keep_prob=0.3)
    sparsity_report(model)
    compress(model)
    with pytest.raises(ValueError, match="is compressed .*take the report before compress"):
        sparsity_report(model)


@pytest.mark.parametrize("method", ["topK", "magnitude", "l0"])
def test_other_methods_eval_mask(method):
    """topK / magnitude at density 0.5, and l0 with its float eval mask; compressed in training mode, which must
    not matter (l0 would draw a random mask)."""
    model = masked_model(seed=5, method=method)
    for m in model.modules():
        if isinstance(m, MaskedLinear):
            if m.scores is not None:
                with torch.no_grad():
                    m.scores.copy_(torch.randn(m.scores.shape) * 3)
            m.density = 0.5
    before = outputs(model)
    model.train()
    compress(model)
    model.eval()
    assert_same_outputs(outputs(model), before, torch.float32)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_ffn_neurons_removed_and_constant_folded(dtype):
    model = masked_model(seed=7).to(dtype)
    prefix = "bert.encoder.layer.0."
    inter = linear(model, prefix + "intermediate.dense")
    out = linear(model, prefix + "output.dense")
    prune_blocks(inter, rows=[1, 3])                 # neurons 16..31 and 48..63: act(bias) constants
    prune_blocks(linear(model, "bert.encoder.layer.1.output.dense"), cols=[0])  # layer 1 neurons 0..15: unread
    b2 = out.bias.detach().clone()
    model = compressed_matches(model, dtype)
    layer0, layer1 = model.bert.encoder.layer
    assert layer0.intermediate.dense.weight.shape == (32, 32) and layer0.output.dense.weight.shape == (32, 32)
    assert layer1.intermediate.dense.out_features == 48 and layer1.output.dense.in_features == 48
    assert model.config.compressed_layout["intermediate_sizes"] == [32, 48]
    # the pruned rows' GELU(bias) went into the FFN-out bias (they are not zero: dropping them changes the model)
    assert (layer0.output.dense.bias.float() - b2.float()).abs().max() > 0.05


def row_pruned_ffn(pruned_rows, seed=97, **config_kw):
    """A tiny BERMo whose layer-0 FFN-in prunes whole rows (block_shape (1, in)): ``pruned_rows`` of its 64."""
    model = masked_model(seed=seed, **config_kw)
    inter = linear(model, "bert.encoder.layer.0.intermediate.dense")
    scores = torch.full((inter.out_features, 1), KEPT)
    scores[list(pruned_rows)] = PRUNED
    dense = nn.Linear(inter.in_features, inter.out_features)
    with torch.no_grad():
        dense.weight.copy_(inter.weight)
        dense.bias.copy_(inter.bias)
    model.bert.encoder.layer[0].intermediate.dense = MaskedLinear.from_linear(
        dense, method="threshold", block_shape=(1, inter.in_features), scores_init=scores, backend="reference")
    return model


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("pruned, width", [(range(0, 40, 2), 48), (range(5), 64), (range(16), 48), (range(64), 0)])
def test_ffn_width_rounded_to_multiple_of_16(dtype, pruned, width):
    """Row-pruned FFN neurons: the width left is rounded up to a multiple of 16 with exact zero neurons (FFN-in row
    and bias 0, FFN-out column 0), never past the original width; the outputs stay the masked model's."""
    from bermo.pruning.compression import FFN_WIDTH_MULTIPLE, padded_width
    model = compressed_matches(row_pruned_ffn(pruned).to(dtype), dtype)
    ffn_in = model.bert.encoder.layer[0].intermediate.dense
    ffn_out = model.bert.encoder.layer[0].output.dense
    assert ffn_in.out_features == width == ffn_out.in_features == padded_width(64 - len(pruned), 64)
    assert width % FFN_WIDTH_MULTIPLE == 0 and model.config.compressed_layout["intermediate_sizes"][0] == width
    zero_rows = (ffn_in.weight == 0).all(dim=1)
    assert int(zero_rows.sum()) == width - (64 - len(pruned))       # the padding neurons, and only they
    assert (ffn_in.bias[zero_rows] == 0).all() and (ffn_out.weight[:, zero_rows] == 0).all()


def test_ffn_width_not_rounded_when_act_of_zero_is_not_zero():
    """sigmoid(0) = 0.5: a zero neuron would add a constant, so the width stays the kept count."""
    model = compressed_matches(row_pruned_ffn(range(0, 40, 2), hidden_act="sigmoid"))
    assert model.bert.encoder.layer[0].intermediate.dense.out_features == 44


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("where", ["value_rows", "output_columns"])
def test_heads_removed(dtype, where):
    model = masked_model(seed=11, num_attention_heads=4).to(dtype)  # head size 8: a 16-row block spans two heads
    prefix = "bert.encoder.layer.1.attention."
    if where == "value_rows":
        prune_blocks(linear(model, prefix + "self.value"), rows=[1])        # heads 2, 3 output their value bias
    else:
        prune_blocks(linear(model, prefix + "output.dense"), cols=[0])      # heads 0, 1 are read by nothing
    b_out = linear(model, prefix + "output.dense").bias.detach().clone()
    model = compressed_matches(model, dtype)
    removed = [2, 3] if where == "value_rows" else [0, 1]
    attention = model.bert.encoder.layer[1].attention
    assert model.config.pruned_heads == {"1": removed}
    assert attention.pruned_heads == set(removed)
    assert attention.self.num_attention_heads == 2 and attention.self.all_head_size == 16
    for name in ("query", "key", "value"):
        assert getattr(attention.self, name).out_features == 16
    assert attention.output.dense.in_features == 16
    folded = (attention.output.dense.bias.float() - b_out.float()).abs().max()
    assert (folded > 0.05) if where == "value_rows" else (folded == 0)
    assert model.bert.encoder.layer[0].attention.self.num_attention_heads == 4


def test_heads_removed_twice_keep_original_indices():
    """Heads removed from a layer that already lost some are recorded by their original index."""
    model = masked_model(seed=12, num_attention_heads=4)
    attention = model.bert.encoder.layer[0].attention
    attention.pruned_heads = {0}  # as if head 0 had been removed before: the module now holds heads 1, 2, 3
    sa = attention.self
    rows = ckpt.head_rows([1, 2, 3], 8)
    for name in ("query", "key", "value"):
        setattr(sa, name, MaskedLinear.from_linear(ckpt.sliced_linear(getattr(sa, name), rows, 0), method="magnitude",
                                                   block_shape=(8, 8), backend="reference"))
    attention.output.dense = MaskedLinear.from_linear(ckpt.sliced_linear(attention.output.dense, rows, 1),
                                                      method="threshold", block_shape=(8, 8),
                                                      scores_init=torch.tensor([[1.0, -1.0, 1.0]] * 4),
                                                      backend="reference")
    ckpt.set_head_count(sa, 3)
    compressed_matches(model)
    assert attention.pruned_heads == {0, 2}  # current head 1 is original head 2
    assert model.config.pruned_heads["0"] == [2]


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_fully_pruned_layer(dtype):
    """Every linear of layer 0 fully pruned: no heads (their value biases folded), no FFN neurons (GELU of the
    biases folded); the layer still adds its biases through the residual paths."""
    model = masked_model(seed=13)
    for name, m in model.named_modules():
        if isinstance(m, MaskedLinear) and name.startswith("bert.encoder.layer.0."):
            prune_blocks(m, rows=slice(None))
    model = compressed_matches(model, dtype)
    layer = model.bert.encoder.layer[0]
    assert type(layer.attention.self).__name__ == "NoAttentionHeads"
    assert layer.attention.output.dense.in_features == 0 and layer.intermediate.dense.out_features == 0
    assert model.config.pruned_heads == {"0": [0, 1]}
    ids, mask = batch()
    model.set_attn_implementation("eager")  # sdpa gives no attention weights
    with torch.no_grad():  # the attentions of the headless layer are recorded, empty
        attentions = model(ids, attention_mask=mask, output_attentions=True).attentions
    assert attentions[0].shape == (3, 0, 9, 9) and attentions[1].shape == (3, 2, 9, 9)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_fully_pruned_query_only(dtype):
    """A fully pruned layer that takes no structure with it (the query: scores = bias . key): block-sparse with
    no blocks (only the bias), where BlockSparseLinear is there."""
    model = masked_model(seed=17).to(dtype)
    prune_blocks(linear(model, "bert.encoder.layer.1.attention.self.query"), rows=slice(None))
    model = compressed_matches(model, dtype)
    assert model.bert.encoder.layer[1].attention.self.num_attention_heads == 2
    if BlockSparseLinear is not None:
        assert model.bert.encoder.layer[1].attention.self.query.nnz == 0


def _arch_case(name):
    import transformers as T

    tiny = dict(vocab_size=60, hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
                max_position_embeddings=64, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    if name == "mpnet":
        return T.MPNetModel(T.MPNetConfig(**tiny))
    if name == "deberta-v2":
        return T.DebertaV2Model(T.DebertaV2Config(**tiny))
    if name == "nystromformer":
        return T.NystromformerModel(T.NystromformerConfig(**tiny))
    return T.LayoutLMModel(T.LayoutLMConfig(**tiny))


@pytest.mark.parametrize("arch", ["mpnet", "deberta-v2", "nystromformer", "layoutlm"])
def test_attention_layouts_other_than_berts(arch):
    """Models with BERT's layer names but attention of their own (MPNet, DeBERTa: other names; Nystromformer: a
    per-head convolution) crashed in compress (AttributeError) or after it (heads removed from the linears but
    not from the convolution); LayoutLM's config has no is_decoder (a layer losing every head crashed). Their heads
    now stay (said once), BERT copies like LayoutLM still lose theirs, and the outputs are the masked model's."""
    import warnings

    from bermo.pruning import prepare

    torch.manual_seed(0)
    model = _arch_case(arch).eval()
    names = prepare(model, method="threshold", block_shape=(16, 16), backend="reference")
    assert len(names) >= 12
    with torch.no_grad():
        for name, module in model.named_modules():
            if isinstance(module, MaskedLinear):
                module.scores.fill_(1.0)
                if name.endswith("layer.0.attention.self.value") or name.endswith("layer.0.attention.attn.v"):
                    module.scores[0] = -1.0  # head 0's value rows
                if name.endswith("layer.1.attention.self.value"):
                    module.scores[:] = -1.0  # every head of layer 1
                if name.endswith("layer.1.intermediate.dense"):
                    module.scores[1] = -1.0  # FFN neurons 16-31
    ids = torch.randint(3, 60, (2, 8), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        want = model(ids).last_hidden_state
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        compress(model)
    kept = [w for w in caught if "is not BERT's self-attention" in str(w.message)]
    assert len(kept) == (0 if arch in ("layoutlm", "mpnet") else 1)  # (MPNet's linears have other names)
    with torch.no_grad():
        torch.testing.assert_close(model(ids).last_hidden_state, want, rtol=1e-5, atol=1e-5)
    assert model.encoder.layer[1].intermediate.dense.out_features == 48
    if arch == "layoutlm":
        assert model.encoder.layer[1].attention.pruned_heads == {0, 1}


def test_a_subclass_of_berts_self_attention_still_loses_heads():
    """transformers 4's sdpa attention subclasses BertSelfAttention: matched by name alone, it kept its heads."""
    from transformers.models.bert.modeling_bert import BertSelfAttention

    class BertSdpaSelfAttention(BertSelfAttention):
        pass

    model = masked_model(seed=101)
    for layer in model.bert.encoder.layer:
        layer.attention.self.__class__ = BertSdpaSelfAttention
    prune_blocks(linear(model, "bert.encoder.layer.0.attention.self.value"), rows=[0])  # head 0's value rows
    model = compressed_matches(model)
    assert model.bert.encoder.layer[0].attention.self.num_attention_heads == 1


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float64], ids=str)
def test_parametric_activation_folded_in_the_models_precision(dtype):
    """prelu's weight is in the model's dtype: folding pruned FFN rows through it in float32 failed (type
    promotion) for bfloat16 and float64 models."""
    from bermo.pruning import prepare

    torch.manual_seed(0)
    model = BertModel(BertConfig(vocab_size=60, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                                 intermediate_size=64, hidden_act="prelu")).to(dtype).eval()
    prepare(model, method="threshold", block_shape=(16, 16), backend="reference")
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, MaskedLinear):
                module.scores.fill_(1.0)
        model.encoder.layer[0].intermediate.dense.scores[0] = -1.0
    ids = torch.randint(0, 60, (2, 8), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        want = model(ids).last_hidden_state
        compress(model)
        torch.testing.assert_close(model(ids).last_hidden_state, want)


def test_unprepared_layers_and_bare_model():
    """A BermoModel (no head) with only some layers masked: the others stay untouched nn.Linear."""
    torch.manual_seed(0)
    model = BermoModel(tiny_config()).eval()
    untouched = model.encoder.layer[0].intermediate.dense
    target = model.encoder.layer[1].intermediate.dense
    ml = MaskedLinear.from_linear(target, method="threshold", block_shape=BLOCK, backend="reference",
                                  scores_init=torch.tensor([[1.0, 1.0], [-1.0, -1.0], [1.0, -1.0], [1.0, 1.0]]))
    model.encoder.layer[1].intermediate.dense = ml
    compressed_matches(model)
    assert model.encoder.layer[0].intermediate.dense is untouched
    assert model.encoder.layer[1].intermediate.dense.out_features == 48
    assert model.config.pruned_heads == {}


def test_non_bermo_module():
    """Any module: its MaskedLinears become plain forms, nothing recorded."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(32, 64), nn.GELU(), nn.Linear(64, 32))
    net[0] = MaskedLinear.from_linear(net[0], method="threshold", block_shape=BLOCK, backend="reference",
                                      scores_init=torch.tensor([[1.0, -1.0], [-1.0, -1.0], [1.0, 1.0], [-1.0, 1.0]]))
    x = torch.randn(5, 32)
    with torch.no_grad():
        before = net(x)
        compress(net)
        assert not isinstance(net[0], MaskedLinear) and net[0].out_features == 64
        assert torch.allclose(net(x), before, atol=1e-6)


# ----------------------------------------------------------------------------------------- the crossover rule
def test_crossover_table():
    assert default_crossover((32, 32)) == 0.5 and default_crossover((1, 1)) == 0.0
    assert default_crossover((128, 128)) == default_crossover((64, 64))   # nearest measured shape
    assert default_crossover((16, 1)) == default_crossover((32, 1))
    assert default_crossover((2, 2)) == 0.0                               # tie (1x1, 4x4): the lower
    assert default_crossover((32, 32), torch.bfloat16) == 0.0
    assert default_crossover((32, 32), torch.float16) <= 0.3
    assert default_crossover((32, 32), torch.float64) == 0.5
    # on a CUDA GPU: the H100 table (16-bit), nothing but fully pruned layers in float32
    cuda = torch.device("cuda")
    assert default_crossover((32, 32), torch.bfloat16, cuda) == 0.1 == default_crossover((64, 64), torch.float16, cuda)
    assert default_crossover((16, 16), torch.bfloat16, cuda) == 0.0
    assert default_crossover((128, 128), torch.bfloat16, cuda) == 0.1  # nearest measured shape
    assert default_crossover((32, 32), torch.float32, cuda) == 0.0
    assert default_crossover((32, 32), torch.bfloat16, "cpu") == 0.0


@needs_block_sparse
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_default_rule_picks_by_density(dtype):
    """Under the default rule, float32 layers at block density <= 0.5 are block-sparse, denser ones dense;
    bfloat16 layers are dense unless fully pruned."""
    model = compressed_matches(masked_model(seed=59, keep_prob=0.5).to(dtype), dtype)
    seen = set()
    for path, spec in model.config.compressed_layout["linears"].items():
        module = model.bert.get_submodule(path)
        if isinstance(module, BlockSparseLinear):
            seen.add("block_sparse")
            assert spec["form"] == "block_sparse" and spec["nnz"] == module.nnz
            assert module.density <= default_crossover(BLOCK, dtype)
        else:
            seen.add("dense")
            assert spec["form"] == "dense" and type(module) is nn.Linear
            blocks = (module.out_features // 16) * (module.in_features // 16)
            kept = (module.weight.reshape(module.out_features // 16, 16, -1, 16) != 0).any(3).any(1).sum()
            assert blocks == 0 or kept / blocks > default_crossover(BLOCK, dtype)
    assert seen == ({"block_sparse", "dense"} if dtype == torch.float32 else {"dense"})


@needs_block_sparse
@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_default_rule_on_a_gpu_uses_the_gpu_table():
    """A bfloat16 model on a CUDA GPU: 32x32-block layers at block density <= 0.1 become block-sparse (the GPU
    table), denser ones dense; the compressed model still matches the masked one."""
    model = masked_model(seed=61, block_shape=(32, 32), keep_prob=0.08, hidden_size=64, intermediate_size=128,
                         num_attention_heads=2).to("cuda", torch.bfloat16)
    ids, mask = (t.cuda() for t in batch())
    with torch.no_grad():
        want = model(input_ids=ids, attention_mask=mask).logits.float()
    compressed = compress(model)
    with torch.no_grad():
        got = compressed(input_ids=ids, attention_mask=mask).logits.float()
    assert (got - want).abs().max().item() <= ATOL[torch.bfloat16]
    for path, spec in compressed.config.compressed_layout["linears"].items():
        if spec["form"] == "block_sparse":
            assert compressed.bert.get_submodule(path).density <= 0.1


@needs_block_sparse
def test_target_device_and_dtype_choose_the_table():
    """compress(model, target_dtype=, target_device=) applies the crossover of where the model will run: a float32
    CPU model compressed for a bfloat16 GPU keeps its 0.3-dense blocks dense (GPU table: 0.1), for the CPU in
    float32 makes them block-sparse (CPU table: 0.5); the outputs match the masked model either way."""
    forms = lambda m: {s["form"] for s in m.config.compressed_layout["linears"].values()}  # noqa: E731
    for_gpu = compressed_matches(masked_model(seed=23, block_shape=(32, 32), keep_prob=0.3, hidden_size=64,
                                              intermediate_size=128), torch.float32,
                                 target_dtype=torch.bfloat16, target_device="cuda")
    for_cpu = compressed_matches(masked_model(seed=23, block_shape=(32, 32), keep_prob=0.3, hidden_size=64,
                                              intermediate_size=128), torch.float32)
    kept = [s["nnz"] / ((s["shape"][0] // 32) * (s["shape"][1] // 32))
            for s in for_cpu.config.compressed_layout["linears"].values() if s["form"] == "block_sparse"]
    assert "block_sparse" in forms(for_cpu) and kept
    gpu_sparse = [s for s in for_gpu.config.compressed_layout["linears"].values() if s["form"] == "block_sparse"]
    assert all(s["nnz"] / ((s["shape"][0] // 32) * (s["shape"][1] // 32)) <= 0.1 for s in gpu_sparse)
    assert len(gpu_sparse) < len(kept)


@needs_block_sparse
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_crossover_forces_each_form(dtype):
    every = compressed_matches(masked_model(seed=19, keep_prob=0.5), dtype, crossover=1.0)
    none = compressed_matches(masked_model(seed=19, keep_prob=0.5), dtype, crossover=-1.0)
    forms = lambda m: {s["form"] for s in m.config.compressed_layout["linears"].values()}  # noqa: E731
    assert forms(none) == {"dense"}
    assert "block_sparse" in forms(every)
    assert any(isinstance(m, BlockSparseLinear) for m in every.modules())
    assert not any(isinstance(m, BlockSparseLinear) for m in none.modules())


@needs_block_sparse
def test_block_sparse_after_head_removal():
    """Rows removed along block boundaries leave the rest blockwise: still block-sparse."""
    model = masked_model(seed=23, num_attention_heads=2, keep_prob=1.0)
    prune_blocks(linear(model, "bert.encoder.layer.0.attention.self.value"), rows=[0])  # head 0
    prune_blocks(linear(model, "bert.encoder.layer.0.attention.self.query"), cols=[1])  # half of head 1's query
    model = compressed_matches(model, crossover=0.6)
    assert isinstance(model.bert.encoder.layer[0].attention.self.query, BlockSparseLinear)


# ------------------------------------------------------------------------------------------- checkpoints
def file_size(path):
    return os.path.getsize(os.path.join(path, "model.safetensors"))


def encoder_values(path):
    """Number of stored floating-point values under encoder keys."""
    n = 0
    with safe_open(os.path.join(path, "model.safetensors"), framework="pt") as f:
        for key in f.keys():
            if ".encoder." in "." + key:
                t = f.get_tensor(key)
                if t.is_floating_point():
                    n += t.numel()
    return n


@pytest.mark.parametrize("crossover", [None, 1.0], ids=["default_rule", "all_block_sparse"])
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_save_load_round_trip(tmp_path, dtype, crossover):
    model = masked_model(seed=29, keep_prob=0.3)
    prune_blocks(linear(model, "bert.encoder.layer.0.intermediate.dense"), rows=[0])
    prune_blocks(linear(model, "bert.encoder.layer.1.attention.self.value"), rows=[1])
    model = model.to(dtype)
    dense_dir, comp_dir = tmp_path / "dense", tmp_path / "compressed"
    BermoForSequenceClassification(model.config).to(dtype).save_pretrained(dense_dir)  # an unpruned model's size
    compress(model, crossover=crossover)
    if crossover == 1.0 and BlockSparseLinear is not None:
        assert any(isinstance(m, BlockSparseLinear) for m in model.modules())
    expected = outputs(model)
    model.save_pretrained(comp_dir)
    loaded = BermoForSequenceClassification.from_pretrained(comp_dir, dtype=dtype).eval()
    for a, b in zip(outputs(loaded), expected):
        assert torch.equal(a, b)
    assert [type(m) for m in loaded.modules()] == [type(m) for m in model.modules()]
    assert loaded.config.compressed_layout == model.config.compressed_layout
    assert loaded.config.pruned_heads == model.config.pruned_heads and 1 in loaded.config.pruned_heads["1"]
    assert file_size(comp_dir) < file_size(dense_dir)
    # only kept values are stored: at most the dense layers' weights plus the block-sparse layers' kept blocks
    stored = encoder_values(comp_dir)
    kept = 0
    for spec in model.config.compressed_layout["linears"].values():
        out_f, in_f = spec["shape"]
        if spec["form"] == "dense":
            kept += out_f * in_f
        else:
            kept += spec["nnz"] * spec["block_shape"][0] * spec["block_shape"][1]
        kept += out_f if spec["bias"] else 0
    layernorms = 2 * 2 * 2 * 32
    assert stored == kept + layernorms


@needs_block_sparse
def test_compress_again_keeps_earlier_block_sparse_layers(tmp_path):
    """Compress, prepare the model again, prune more and compress again: the block-sparse layers of the first
    round stay in the recorded layout (they were dropped from it, so a reload built dense layers and left their
    weights random), and a block-sparse layer whose FFN loses neurons in the second round is restructured with
    them (it raised an AttributeError). Outputs equal at each step, and after reloading both ways."""
    from bermo.pruning import prepare

    model = masked_model(seed=97, block_shape=(8, 8), num_attention_heads=4)
    inter0 = linear(model, "bert.encoder.layer.0.intermediate.dense")
    prune_blocks(inter0, cols=[0])
    with torch.no_grad():
        inter0.scores[1::2, 1] = PRUNED  # no dead neuron
        linear(model, "bert.encoder.layer.1.attention.self.value").scores[1, 2] = PRUNED
    compressed_matches(model, crossover=0.95)
    assert isinstance(linear(model, "bert.encoder.layer.0.intermediate.dense"), BlockSparseLinear)
    assert isinstance(linear(model, "bert.encoder.layer.1.attention.self.value"), BlockSparseLinear)
    prepare(model, "threshold", (8, 8), targets=r"layer\.0\.output\.dense|layer\.1\.attention\.self\.query",
            backend="reference", scores_init=1.0)
    prune_blocks(linear(model, "bert.encoder.layer.0.output.dense"), cols=[2, 3])   # FFN neurons 16-31 read by none
    prune_blocks(linear(model, "bert.encoder.layer.1.attention.self.query"), rows=[0])  # restructures beside value
    model.eval()
    compressed_matches(model, crossover=0.95)
    linears = model.config.compressed_layout["linears"]
    assert linears["encoder.layer.0.intermediate.dense"]["form"] == "block_sparse"
    assert linears["encoder.layer.0.intermediate.dense"]["shape"][0] == 48  # 16 neurons fewer
    assert model.config.compressed_layout["intermediate_sizes"][0] == 48
    assert linears["encoder.layer.1.attention.self.value"]["form"] == "block_sparse"
    model.save_pretrained(tmp_path)
    for loaded in (BermoForSequenceClassification.from_pretrained(tmp_path).eval(), load_compressed(tmp_path)):
        assert isinstance(linear(loaded, "bert.encoder.layer.0.intermediate.dense"), BlockSparseLinear)
        for a, b in zip(outputs(loaded), outputs(model)):
            assert torch.equal(a, b)



@needs_block_sparse
def test_checkpoint_size_tracks_density(tmp_path):
    sizes = {}
    for keep_prob in (0.25, 0.75):
        model = masked_model(seed=31, keep_prob=keep_prob)
        compress(model, crossover=1.0)  # every blockwise layer block-sparse
        model.save_pretrained(tmp_path / str(keep_prob))
        sizes[keep_prob] = encoder_values(tmp_path / str(keep_prob))
    assert sizes[0.25] < 0.6 * sizes[0.75]


def test_auto_model_loads_compressed_classifier(tmp_path):
    from transformers import AutoModel
    model = masked_model(seed=37, keep_prob=0.5)
    prune_blocks(linear(model, "bert.encoder.layer.0.attention.output.dense"), cols=[1])
    compress(model)
    model.save_pretrained(tmp_path)
    base = AutoModel.from_pretrained(tmp_path).eval()
    assert isinstance(base, BermoModel)
    ids, mask = batch()
    with torch.no_grad():
        assert torch.equal(base(ids, attention_mask=mask).last_hidden_state,
                           model.bert(ids, attention_mask=mask).last_hidden_state)


def test_fresh_model_from_compressed_config():
    """BermoModel(config) of a compressed config builds the compressed modules (random weights), and runs."""
    model = masked_model(seed=41, keep_prob=0.5)
    prune_blocks(linear(model, "bert.encoder.layer.1.intermediate.dense"), rows=[0, 1])
    compress(model)
    fresh = BermoForSequenceClassification(model.config).eval()
    assert [type(m) for m in fresh.modules()] == [type(m) for m in model.modules()]
    assert {k: v.shape for k, v in fresh.state_dict().items()} == {k: v.shape for k, v in model.state_dict().items()}
    fresh.load_state_dict(model.state_dict())
    for a, b in zip(outputs(fresh), outputs(model)):
        assert torch.equal(a, b)


# ------------------------------------------------------------------------------------------------ mismatches
@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    root = tmp_path_factory.mktemp("compress_ckpts")
    plain = masked_model(seed=43)
    uncompressed = BermoForSequenceClassification(plain.config)
    uncompressed.save_pretrained(root / "uncompressed")
    model = masked_model(seed=43, keep_prob=0.5)
    prune_blocks(linear(model, "bert.encoder.layer.0.intermediate.dense"), rows=[2])
    compress(model)
    model.save_pretrained(root / "compressed")
    other = masked_model(seed=44, keep_prob=0.5)
    prune_blocks(linear(other, "bert.encoder.layer.1.intermediate.dense"), rows=[3])
    compress(other)
    other.save_pretrained(root / "other")
    return root, uncompressed, model, other


def test_compressed_checkpoint_into_uncompressed_model(checkpoints):
    root, uncompressed, compressed_model, _ = checkpoints
    with pytest.raises(ckpt.CompressedCheckpointError, match="compressed checkpoint .* into an uncompressed model"):
        BermoForSequenceClassification.from_pretrained(root / "compressed", config=uncompressed.config)
    with pytest.raises(ckpt.CompressedCheckpointError, match="compressed checkpoint .* into an uncompressed model"):
        BermoForSequenceClassification(uncompressed.config).load_state_dict(compressed_model.state_dict())


def test_uncompressed_checkpoint_into_compressed_model(checkpoints):
    root, uncompressed, compressed_model, _ = checkpoints
    with pytest.raises(ckpt.CompressedCheckpointError, match="uncompressed checkpoint into a compressed model"):
        BermoForSequenceClassification.from_pretrained(root / "uncompressed", config=compressed_model.config)
    with pytest.raises(ckpt.CompressedCheckpointError, match="uncompressed checkpoint into a compressed model"):
        compressed_model.load_state_dict(uncompressed.state_dict())
    # a part (strict=False), e.g. the task head alone, is no uncompressed checkpoint
    head = {k: v for k, v in uncompressed.state_dict().items() if k.startswith("classifier.")}
    result = compressed_model.load_state_dict(head, strict=False)
    assert not result.unexpected_keys
    assert torch.equal(compressed_model.classifier.weight, uncompressed.classifier.weight)


def test_other_compressed_layout(checkpoints):
    root, _, compressed_model, other = checkpoints
    with pytest.raises(ckpt.CompressedCheckpointError, match="another layout"):
        BermoForSequenceClassification.from_pretrained(root / "other", config=compressed_model.config)
    with pytest.raises(ckpt.CompressedCheckpointError, match="another layout"):
        compressed_model.load_state_dict(other.state_dict())


# ------------------------------------------------------------------------------- plain transformers BERT models
def test_plain_bert_config_matches_bermo():
    """The plain helper models have the tiny BERMo's sizes (so the tests above and below compare like with like)."""
    plain = masked_model(seed=61, cls=BertForSequenceClassification)
    assert type(plain.config) is BertConfig and plain.config.hidden_size == 32 and plain.config.num_labels == 3
    assert sum(isinstance(m, MaskedLinear) for m in plain.modules()) == 12


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("cls", [BertForSequenceClassification, BertModel], ids=lambda c: c.__name__)
def test_plain_bert_compress_in_memory(dtype, cls):
    """transformers' own BERT (classifier and bare): heads and FFN neurons removed with their constants folded,
    the rest block-sparse or dense, outputs those of the masked model; the layout recorded in its config."""
    model = masked_model(seed=67, cls=cls, keep_prob=0.5, num_attention_heads=4).to(dtype)
    prefix = "bert." if cls is BertForSequenceClassification else ""
    prune_blocks(linear(model, prefix + "encoder.layer.0.intermediate.dense"), rows=[1])    # neurons 16..31
    prune_blocks(linear(model, prefix + "encoder.layer.1.attention.self.value"), rows=[0])  # heads 0, 1
    b_out = linear(model, prefix + "encoder.layer.0.output.dense").bias.detach().clone()
    model = compressed_matches(model, dtype)
    base = model.bert if prefix else model
    layer0, layer1 = base.encoder.layer
    assert layer0.intermediate.dense.out_features <= 48 and layer1.attention.self.num_attention_heads <= 2
    assert layer1.attention.pruned_heads >= {0, 1}
    assert model.config.pruned_heads["1"][:2] == [0, 1]
    assert model.config.compressed_layout["intermediate_sizes"][0] == layer0.intermediate.dense.out_features
    assert (layer0.output.dense.bias.float() - b_out.float()).abs().max() > 0.05  # GELU(bias) folded
    recorded = set(model.config.compressed_layout["linears"])  # keyed by path in the base model
    assert {f"encoder.layer.{i}.{n}" for i in range(2) for n in ("intermediate.dense", "output.dense")} <= recorded
    assert all(isinstance(base.get_submodule(path), nn.Module) for path in recorded)
    if BlockSparseLinear is not None and dtype == torch.float32:
        assert any(isinstance(m, BlockSparseLinear) for m in model.modules())
    assert base.compressed_layout_id.item() == ckpt.layout_id(model.config)


@pytest.mark.parametrize("crossover", [None, 1.0], ids=["default_rule", "all_block_sparse"])
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_plain_bert_load_compressed_round_trip(tmp_path, dtype, crossover):
    """save_pretrained of a compressed BertForSequenceClassification, load_compressed back: the same modules, the
    same outputs bit for bit, in the saved dtype; a bare BertModel loads the same checkpoint's encoder."""
    model = masked_model(seed=71, cls=BertForSequenceClassification, keep_prob=0.3).to(dtype)
    prune_blocks(linear(model, "bert.encoder.layer.0.intermediate.dense"), rows=[0])
    prune_blocks(linear(model, "bert.encoder.layer.1.attention.self.value"), rows=[1])
    compress(model, crossover=crossover)
    expected = outputs(model)
    model.save_pretrained(tmp_path)
    loaded = load_compressed(tmp_path)
    assert type(loaded) is BertForSequenceClassification and not loaded.training
    assert [type(m) for m in loaded.modules()] == [type(m) for m in model.modules()]
    assert {k: (v.shape, v.dtype) for k, v in loaded.state_dict().items()} == {
        k: (v.shape, v.dtype) for k, v in model.state_dict().items()}
    for a, b in zip(outputs(loaded), expected):
        assert torch.equal(a, b)
    bare = load_compressed(tmp_path, model_class=BertModel)
    assert type(bare) is BertModel
    ids, mask = batch()
    with torch.no_grad():
        assert torch.equal(bare(ids, attention_mask=mask).last_hidden_state.float(), expected[1])


def test_load_compressed_bermo(tmp_path):
    """load_compressed takes BERMo checkpoints too (through their from_pretrained)."""
    model = masked_model(seed=73, keep_prob=0.5)
    prune_blocks(linear(model, "bert.encoder.layer.1.intermediate.dense"), rows=[2])
    compress(model)
    model.save_pretrained(tmp_path)
    loaded = load_compressed(tmp_path)
    assert type(loaded) is BermoForSequenceClassification
    for a, b in zip(outputs(loaded), outputs(model)):
        assert torch.equal(a, b)


def test_load_compressed_errors(tmp_path):
    """Not a directory, an uncompressed checkpoint, weights of another layout, a tensor missing: clear errors."""
    with pytest.raises(ckpt.CompressedCheckpointError, match="not a directory"):
        load_compressed(tmp_path / "nowhere")
    plain = masked_model(seed=79, cls=BertForSequenceClassification)
    BertForSequenceClassification(plain.config).save_pretrained(tmp_path / "uncompressed")
    with pytest.raises(ckpt.CompressedCheckpointError, match="not a compressed checkpoint.*from_pretrained"):
        load_compressed(tmp_path / "uncompressed")
    saved = {}
    for seed, row in ((83, 0), (89, 3)):
        model = masked_model(seed=seed, cls=BertForSequenceClassification, keep_prob=0.5)
        prune_blocks(linear(model, "bert.encoder.layer.0.intermediate.dense"), rows=[row])
        compress(model)
        model.save_pretrained(tmp_path / str(seed))
        saved[seed] = tmp_path / str(seed)
    (saved[83] / "config.json").write_text((saved[89] / "config.json").read_text())  # weights of another layout
    with pytest.raises(ckpt.CompressedCheckpointError, match="another layout"):
        load_compressed(saved[83])
    from safetensors.torch import load_file, save_file
    state = load_file(saved[89] / "model.safetensors")
    del state["bert.encoder.layer.1.output.dense.bias"]
    save_file(state, saved[89] / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(ckpt.CompressedCheckpointError, match="missing .*layer.1.output.dense.bias"):
        load_compressed(saved[89])
    bermo = masked_model(seed=91, keep_prob=0.5)  # a BERMo checkpoint goes through from_pretrained: as strict
    compress(bermo)
    bermo.save_pretrained(tmp_path / "bermo")
    state = load_file(tmp_path / "bermo" / "model.safetensors")
    del state["bert.encoder.layer.1.attention.output.LayerNorm.weight"]
    save_file(state, tmp_path / "bermo" / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(ckpt.CompressedCheckpointError, match="missing .*layer.1.attention.output.LayerNorm.weight"):
        load_compressed(tmp_path / "bermo")


def _block_sparse_checkpoint(tmp_path, cls, name):
    model = masked_model(seed=97, cls=cls)
    prune_blocks(linear(model, "bert.encoder.layer.0.intermediate.dense"), rows=[0])
    compress(model, crossover=1.0)  # every compressed linear block-sparse
    model.save_pretrained(tmp_path / name)
    return model, tmp_path / name


def _edit_state(path, edit):
    from safetensors.torch import load_file, save_file
    state = load_file(path / "model.safetensors")
    edit(state)
    save_file(state, path / "model.safetensors", metadata={"format": "pt"})


def test_a_missing_block_sparse_tensor_is_refused_by_from_pretrained(tmp_path):
    """transformers leaves a missing tensor as uninitialised memory for _init_weights to fill; a block-sparse
    layer's values came back as whatever memory held (3.5e33, NaN, other at every load) and its indices as
    garbage: no initialisation can give back a layout's indices, so it is an error."""
    _, path = _block_sparse_checkpoint(tmp_path, BermoForSequenceClassification, "bermo")
    p = "bert.encoder.layer.0.intermediate.dense."
    for key in ("values", "col_indices"):
        _edit_state(path, lambda state: state.pop(p + key))
        with pytest.raises(ckpt.CompressedCheckpointError,
                           match=rf"lacks block-sparse tensors \['encoder.layer.0.intermediate.dense.{key}'\]"):
            BermoForSequenceClassification.from_pretrained(path)
        _block_sparse_checkpoint(tmp_path, BermoForSequenceClassification, "bermo")


def test_block_sparse_tensors_cut_consistently_are_refused(tmp_path):
    """A layer whose values, column and row indices lost a block together loaded (resized) into the plain-BERT
    path and computed something else; the layout records its number of blocks."""
    model, path = _block_sparse_checkpoint(tmp_path, BertForSequenceClassification, "bert")
    p = "bert.encoder.layer.0.intermediate.dense."

    def cut(state):
        state[p + "values"] = state[p + "values"][:-1].clone()
        state[p + "col_indices"] = state[p + "col_indices"][:-1].clone()
        crow = state[p + "crow_indices"].clone()
        crow[-1] -= 1
        state[p + "crow_indices"] = crow

    _edit_state(path, cut)
    with pytest.raises(ckpt.CompressedCheckpointError, match="has .* blocks where its config's compressed_layout "
                                                              "records"):
        load_compressed(path)


@pytest.mark.parametrize("cls", [BermoForSequenceClassification, BertForSequenceClassification],
                         ids=["bermo", "bert"])
def test_out_of_range_block_sparse_indices_are_refused_by_every_loader(tmp_path, cls):
    """transformers' from_pretrained writes the tensors directly (no _load_from_state_dict): a column index out
    of range loaded silently there, and a compiled forward (which skips the eager check) read outside x. The
    plain-BERT path of load_compressed raised torch's RuntimeError instead of CompressedCheckpointError."""
    _, path = _block_sparse_checkpoint(tmp_path, cls, "m")
    p = "bert.encoder.layer.0.intermediate.dense."

    def damage(state):
        cols = state[p + "col_indices"].clone()
        cols[0] = 10 ** 6
        state[p + "col_indices"] = cols

    _edit_state(path, damage)
    with pytest.raises(ckpt.CompressedCheckpointError, match="col_indices must lie in"):
        load_compressed(path)
    if cls is BermoForSequenceClassification:
        with pytest.raises(ckpt.CompressedCheckpointError, match="indices are damaged.*col_indices must lie in"):
            BermoForSequenceClassification.from_pretrained(path)


@pytest.mark.parametrize("edit,match", [
    (lambda c: c.update(compressed_layout="yes"), "compressed_layout must be a mapping"),
    (lambda c: c.update(pruned_heads=[[1, 0]]), "pruned_heads must map layer indices"),
    (lambda c: c["compressed_layout"]["linears"]["encoder.layer.0.intermediate.dense"].pop("shape"),
     r"linears\['encoder.layer.0.intermediate.dense'\] must be a mapping with form, shape"),
    (lambda c: c["compressed_layout"].update(intermediate_sizes="64"), "intermediate_sizes must be a list of ints"),
], ids=["layout-str", "heads-list", "no-shape", "sizes-str"])
def test_a_damaged_layout_in_config_json_is_named(tmp_path, edit, match):
    """(AttributeError / KeyError from deep inside the rebuild before.)"""
    _, path = _block_sparse_checkpoint(tmp_path, BertForSequenceClassification, "bert")
    config = json.loads((path / "config.json").read_text())
    edit(config)
    (path / "config.json").write_text(json.dumps(config))
    with pytest.raises(ckpt.CompressedCheckpointError, match=match):
        load_compressed(path)


# ------------------------------------------------------------------------------------------------ bad inputs
def test_no_masked_linear():
    with pytest.raises(ValueError, match="no bermo.nn.MaskedLinear"):
        compress(BermoModel(tiny_config()))
    model = masked_model(seed=47)
    compress(model)
    with pytest.raises(ValueError, match="no bermo.nn.MaskedLinear"):
        compress(model)  # already compressed


@pytest.mark.parametrize("bad", [None, "model", torch.randn(3)])
def test_not_a_module(bad):
    with pytest.raises(TypeError, match="torch.nn.Module"):
        compress(bad)


@pytest.mark.parametrize("crossover", ["0.5", True, float("nan")])
def test_bad_crossover(crossover):
    model = masked_model(seed=53)
    with pytest.raises(TypeError, match="crossover"):
        compress(model, crossover=crossover)
    assert any(isinstance(m, MaskedLinear) for m in model.modules())  # untouched


@needs_block_sparse
@pytest.mark.slow
def test_compressed_model_under_torch_compile():
    """What the README advises on a GPU (capture the compressed model: torch.compile): a compressed BERMo with
    block-sparse layers, removed neurons and a dense layer compiles (inductor, CPU here) and gives the masked
    model's logits."""
    model = masked_model(seed=71, keep_prob=0.4)
    ids, mask = batch()
    with torch.no_grad():
        want = model(input_ids=ids, attention_mask=mask).logits
    compressed = compress(model, crossover=0.5)
    forms = {s["form"] for s in compressed.config.compressed_layout["linears"].values()}
    assert forms == {"block_sparse", "dense"}
    with torch.no_grad():
        got = torch.compile(compressed)(input_ids=ids, attention_mask=mask).logits
    assert (got - want).abs().max().item() <= ATOL[torch.float32]
