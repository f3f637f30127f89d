"""bermo.pruning.prepare on tiny BERMo and plain transformers BERT models: which linears become MaskedLinear,
that nothing else changes, and that a model at density 1.0 computes exactly what it did."""
import pytest
import torch
from torch import nn
from transformers import BertConfig, BertForSequenceClassification, BertModel

from bermo.models import BermoConfig, BermoForSequenceClassification, BermoModel
from bermo.nn import MaskedLinear, ScalarMix
from bermo.pruning import masked_linears, prepare, sparsity_report

TINY = dict(vocab_size=60, hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
            max_position_embeddings=32, num_labels=2, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
ENCODER_LINEARS = ["attention.self.query", "attention.self.key", "attention.self.value", "attention.output.dense",
                   "intermediate.dense", "output.dense"]


def build(cls, **kw):
    torch.manual_seed(0)
    config = (BermoConfig(mix_backend="reference", **{**TINY, **kw}) if cls.__name__.startswith("Bermo")
              else BertConfig(**{**TINY, **kw}))
    return cls(config).eval()


def inputs(seed=0):
    gen = torch.Generator().manual_seed(seed)
    ids = torch.randint(1, 60, (3, 7), generator=gen)
    mask = torch.ones_like(ids)
    mask[1, 5:] = 0
    return dict(input_ids=ids, attention_mask=mask)


def expected_names(prefix):
    return [f"{prefix}encoder.layer.{i}.{n}" for i in range(2) for n in ENCODER_LINEARS]


@pytest.mark.parametrize("cls, prefix, head", [
    (BermoForSequenceClassification, "bert.", "classifier"),
    (BermoModel, "", None),
    (BertForSequenceClassification, "bert.", "classifier"),
    (BertModel, "", None),
], ids=lambda v: getattr(v, "__name__", v))
def test_default_targets_are_the_encoder_linears_and_nothing_else(cls, prefix, head):
    model = build(cls)
    before = {n: type(m) for n, m in model.named_modules()}
    state = {k: v.clone() for k, v in model.state_dict().items()}
    names = prepare(model, method="topK", block_shape=(8, 8), backend="reference")
    assert names == expected_names(prefix)
    for name, module in model.named_modules():
        if name in names:
            assert type(module) is MaskedLinear and module.block_shape == (8, 8) and module.method == "topK"
            assert not module.training  # the eval model's mode is kept (l0 would draw random masks in training)
            assert module.scores.shape == (module.out_features // 8, module.in_features // 8)
        elif name in before:
            assert type(module) is before[name], name  # embeddings, pooler, classifier, the mix: as they were
    assert [n for n, _ in masked_linears(model)] == names
    assert isinstance(model.get_submodule(f"{prefix}pooler.dense"), nn.Linear)
    assert not isinstance(model.get_submodule(f"{prefix}pooler.dense"), MaskedLinear)
    if head:
        assert type(model.get_submodule(head)) is nn.Linear
    if cls.__name__.startswith("Bermo"):
        assert isinstance(model.get_submodule(f"{prefix}scalar_mix"), ScalarMix)
    # the weights are the same tensors' values, and only scores were added
    new_state = model.state_dict()
    assert set(new_state) - set(state) == {f"{n}.scores" for n in names}
    for key, value in state.items():
        assert torch.equal(new_state[key], value), key


@pytest.mark.parametrize("cls", [BermoForSequenceClassification, BertForSequenceClassification, BermoModel],
                         ids=lambda c: c.__name__)
@pytest.mark.parametrize("method", ["topK", "magnitude", "sigmoied_threshold"])
def test_output_at_density_one_is_identical_to_the_unpruned_model(cls, method):
    model = build(cls)
    with torch.no_grad():
        before = model(**inputs())
    prepare(model, method=method, block_shape=(16, 32), backend="reference",
            **({"scores_init": 1.0} if method == "sigmoied_threshold" else {}))  # sigmoid(1) > threshold 0
    with torch.no_grad():
        after = model(**inputs())
    key = "logits" if "logits" in before else "last_hidden_state"
    assert torch.equal(after[key], before[key])  # bitwise: the reference op at density 1.0 is nn.Linear's formula
    if "pooler_output" in before:
        assert torch.equal(after["pooler_output"], before["pooler_output"])
    # and pruning does change it
    for _, m in masked_linears(model):
        m.density, m.threshold = 0.5, 0.9
        if method == "sigmoied_threshold":
            m.reset_scores(torch.linspace(-3, 3, m.scores.numel()).view(m.scores.shape))
    with torch.no_grad():
        pruned = model(**inputs())
    assert not torch.allclose(pruned[key], before[key])


def test_default_block_shape_is_32_by_32_and_options_reach_the_layers():
    model = build(BermoForSequenceClassification)
    names = prepare(model, method="sigmoied_threshold", threshold=0.25, scores_init=0.5, backend="reference")
    layer = model.get_submodule(names[4])  # FFN intermediate: (64, 32)
    assert layer.block_shape == (32, 32) and layer.threshold == 0.25 and layer.backend == "reference"
    assert torch.equal(layer.scores, torch.full((2, 1), 0.5))


def test_targets_are_regexes_searched_in_module_names():
    model = build(BermoForSequenceClassification)
    names = prepare(model, block_shape=(8, 8), targets=[r"layer\.0\..*(query|key)$", "intermediate"],
                    backend="reference")
    assert names == ["bert.encoder.layer.0.attention.self.query", "bert.encoder.layer.0.attention.self.key",
                     "bert.encoder.layer.0.intermediate.dense", "bert.encoder.layer.1.intermediate.dense"]
    assert type(model.bert.encoder.layer[0].attention.self.value) is nn.Linear
    # one string is one pattern; targets may reach outside the encoder (here the pooler and classifier)
    model = build(BermoForSequenceClassification)
    assert prepare(model, block_shape=(1, 1), targets="pooler|classifier") == ["bert.pooler.dense", "classifier"]
    report = sparsity_report(model)
    assert [r["layer"] for r in report.layers] == ["bert.pooler.dense", "classifier"]


def test_no_matching_target_is_a_clear_error_and_changes_nothing():
    plain = nn.Sequential(nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 2))
    with pytest.raises(ValueError, match="no nn.Linear of Sequential matches the default targets.*Pass targets="):
        prepare(plain)
    model = build(BermoForSequenceClassification)
    with pytest.raises(ValueError, match="no nn.Linear of BermoForSequenceClassification matches targets "
                                         "\\['nothing'\\]"):
        prepare(model, targets=["nothing"])
    with pytest.raises(ValueError, match="target\\(s\\) \\['qurey'\\] match no nn.Linear"):
        prepare(model, block_shape=(8, 8), targets=["query", "qurey"])
    with pytest.raises(ValueError, match="not a valid regular expression"):
        prepare(model, targets=["(query"])
    with pytest.raises(TypeError, match="each target must be a regex string"):
        prepare(model, targets=[3])
    for odd in (b"query", {"query": 1}):  # bytes read as ints, a dict as its keys
        with pytest.raises(TypeError, match=f"targets must be None, a regex string or a list .* got "
                                            f"{type(odd).__name__}"):
            prepare(model, targets=odd)
    with pytest.raises(ValueError, match="targets is empty"):
        prepare(model, targets=[])
    with pytest.raises(TypeError, match="expected a torch.nn.Module"):
        prepare("bert")
    assert not list(masked_linears(model))


def test_a_block_shape_that_does_not_divide_a_weight_names_the_layer():
    model = build(BermoForSequenceClassification, intermediate_size=40)  # FFN weights (40, 32) and (32, 40)
    with pytest.raises(ValueError, match=r"block_shape \(16, 16\) does not divide .*bert\.encoder\.layer\.0\."
                                         r"intermediate\.dense \(weight \(40, 32\)\), bert\.encoder\.layer\.0\."
                                         r"output\.dense \(weight \(32, 40\)\)"):
        prepare(model, block_shape=(16, 16))
    assert not list(masked_linears(model))  # nothing was replaced
    assert len(prepare(model, block_shape=(8, 8), backend="reference")) == 12


@pytest.mark.parametrize("kwargs, error, match", [
    (dict(method="movement"), ValueError, "unknown pruning method 'movement'"),
    (dict(block_shape=(8,)), TypeError, "block_shape must be a pair"),
    (dict(block_shape=(0, 8)), ValueError, "block_shape must be positive"),
    (dict(density=1.5), ValueError, "layer 'bert.encoder.layer.0.attention.self.query'.*density must be in"),
    (dict(backend="cuda-ish"), ValueError, "unknown bermo backend"),
    (dict(method="magnitude", scores_init=1.0), ValueError, "has no scores"),
    (dict(sparsity=0.5), TypeError, "method_options are MaskedLinear.from_linear's"),
    # scores that fit the attention layers' (4, 4) blocks but not the FFN's: fails at the fifth layer
    (dict(scores_init=torch.zeros(4, 4)), ValueError, "layer 'bert.encoder.layer.0.intermediate.dense'.*shape"),
])
def test_bad_options_are_errors_and_leave_the_model_alone(kwargs, error, match):
    model = build(BermoForSequenceClassification)
    with pytest.raises(error, match=match):
        prepare(model, **{"block_shape": (8, 8), **kwargs})
    assert not list(masked_linears(model))


def test_preparing_twice_is_an_error():
    model = build(BermoForSequenceClassification)
    prepare(model, block_shape=(8, 8), backend="reference")
    with pytest.raises(ValueError, match="already are MaskedLinear layers"):
        prepare(model, block_shape=(8, 8))
    with pytest.raises(ValueError, match="the model itself is an nn.Linear"):
        prepare(nn.Linear(4, 4), targets=[""])


def test_prepared_model_keeps_training_mode_device_and_trains():
    model = build(BermoForSequenceClassification).train()
    names = prepare(model, block_shape=(8, 8), backend="reference")
    assert all(model.get_submodule(n).training for n in names)
    out = model(**inputs(), labels=torch.tensor([0, 1, 1]))
    out.loss.backward()
    layer = model.get_submodule(names[0])
    assert layer.scores.grad is not None and layer.scores.grad.abs().sum() > 0
    assert layer.weight.grad is not None
