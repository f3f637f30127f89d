"""PruningTrainer / BermoPruningTrainer: a few HF Trainer steps on tiny models. The level follows the cubic
schedule step by step, the penalty and distillation terms are in the loss and the log, evaluation sees the
masks of its step, the scores get their own learning rate; and every bad configuration is refused."""
import math

import pytest
import torch
from torch import nn

pytest.importorskip("accelerate", reason="the HF Trainer needs accelerate (bermo[train])")
from transformers import BertConfig, BertForSequenceClassification, TrainerCallback, TrainingArguments  # noqa: E402

from bermo.models import BermoConfig, BermoForSequenceClassification  # noqa: E402
from bermo.pruning import (CubicSchedule, PruningConfig, PruningTrainer, distillation_loss, kept_fraction,  # noqa: E402
                           masked_linears, prepare, regularization)

TINY = dict(vocab_size=60, hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
            max_position_embeddings=32, num_labels=2, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
REF = {"backend": "reference"}


def bert(seed=0):
    torch.manual_seed(seed)
    return BertForSequenceClassification(BertConfig(**TINY))


def bermo(seed=0, **config):
    torch.manual_seed(seed)
    return BermoForSequenceClassification(BermoConfig(mix_backend="reference", **dict(TINY, **config)))


def dataset(n=24, seed=5):
    gen = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, 60, (n, 8), generator=gen)
    labels = ((ids == 7).any(1) | (ids == 8).any(1)).long()
    return [{"input_ids": i, "attention_mask": torch.ones_like(i), "labels": y} for i, y in zip(ids, labels)]


def training_args(tmp_path, **kw):
    base = dict(output_dir=str(tmp_path), per_device_train_batch_size=4, per_device_eval_batch_size=8,
                learning_rate=1e-3, logging_steps=1, report_to=[], save_strategy="no", use_cpu=True,
                disable_tqdm=True, seed=5, dataloader_num_workers=0)
    base.update(kw)
    return TrainingArguments(**base)


class RecordEval(TrainerCallback):
    """What the masks keep when evaluation runs, and at which step."""

    def __init__(self, model):
        self.model, self.seen = model, []

    def on_evaluate(self, args, state, control, **kwargs):
        self.seen.append((state.global_step, kept_fraction(self.model)))


def test_topk_density_falls_as_scheduled_and_is_logged(tmp_path):
    model = bert()
    pruning = PruningConfig(method="topK", block_shape=(8, 8), final_level=0.25, initial_warmup_steps=1,
                            final_warmup_steps=1, prepare_options=REF)
    recorder = RecordEval(model)
    trainer = PruningTrainer(model=model, args=training_args(tmp_path, max_steps=6, eval_strategy="steps",
                                                             eval_steps=3),
                             train_dataset=dataset(), eval_dataset=dataset(8, seed=6), pruning=pruning,
                             callbacks=[recorder])
    assert len(trainer.pruned_layers) == 12 and trainer.pruning_schedule is None
    trainer.train()
    schedule = trainer.pruning_schedule
    assert (schedule.total_steps, schedule.initial_warmup_steps, schedule.final_warmup_steps) == (6, 1, 1)
    logs = [h for h in trainer.state.log_history if "loss" in h]
    assert [h["step"] for h in logs] == [1, 2, 3, 4, 5, 6]
    # the level logged at step k is the schedule's value there (the level the next step trains at)
    expected = [1.0, 0.25 + 0.75 * 0.75 ** 3, 0.25 + 0.75 * 0.5 ** 3, 0.25 + 0.75 * 0.25 ** 3, 0.25, 0.25]
    assert [h["pruning_density"] for h in logs] == pytest.approx(expected, rel=1e-12)
    assert [h["pruning_density"] for h in logs] == [schedule.value(k) for k in range(1, 7)]
    kept = [h["kept_fraction"] for h in logs]
    assert all(abs(k - d) <= 1 / 16 for k, d in zip(kept, expected)), kept  # 16 or 32 blocks a layer
    assert kept[0] == 1.0 and kept[-1] == 0.25 and kept == sorted(kept, reverse=True)
    assert all(h["pruning_penalty_weight"] == 0.0 and "pruning_penalty" not in h for h in logs)  # topK: none
    for _, layer in masked_linears(model):
        assert layer.density == 0.25 and layer.kept_fraction() == 0.25
    # evaluation ran on the masks of its step (after steps 3 and 6)
    assert [step for step, _ in recorder.seen] == [3, 6]
    assert [k for _, k in recorder.seen] == [kept[2], kept[5]]
    assert [h["step"] for h in trainer.state.log_history if "eval_loss" in h] == [3, 6]
    # the scores have their own group at the recipe's rate, without weight decay, and moved
    groups = trainer.optimizer.param_groups
    scores = [g for g in groups if g.get("name") == "scores"]
    assert len(scores) == 1 and scores[0]["initial_lr"] == 1e-2 and scores[0]["weight_decay"] == 0.0
    score_ids = {id(m.scores) for _, m in masked_linears(model)}
    assert {id(p) for p in scores[0]["params"]} == score_ids
    assert not any(id(p) in score_ids for g in groups if g is not scores[0] for p in g["params"])
    assert all(g["initial_lr"] == 1e-3 for g in groups if g is not scores[0])
    assert max(m.scores.abs().max().item() for _, m in masked_linears(model)) > 1e-3


def test_penalty_and_distillation_are_in_the_loss_and_logged_with_bermo_trainer(tmp_path):
    pytest.importorskip("bermo.models.trainer", reason="BermoTrainer is not in this bermo.models")
    from bermo.models.trainer import BermoTrainingArguments
    from bermo.pruning import BermoPruningTrainer

    teacher = bermo(seed=1)
    model = bermo(seed=0)
    pruning = PruningConfig(method="sigmoied_threshold", block_shape=(8, 8), final_level=0.5, initial_warmup_steps=1,
                            total_steps=4, regularization_weight=2.0, teacher=teacher, temperature=2.0, alpha=0.7,
                            prepare_options={**REF, "scores_init": 0.1})
    args = BermoTrainingArguments(mix_lr=5e-2, output_dir=str(tmp_path), per_device_train_batch_size=4,
                                  max_steps=4, learning_rate=1e-3, logging_steps=2, report_to=[], save_strategy="no",
                                  use_cpu=True, disable_tqdm=True, seed=5)
    trainer = BermoPruningTrainer(model=model, args=args, train_dataset=dataset(16), pruning=pruning)
    assert not teacher.training and not any(p.requires_grad for p in teacher.parameters())
    trainer.train()
    logs = [h for h in trainer.state.log_history if "loss" in h]
    assert [h["step"] for h in logs] == [2, 4]
    for h in logs:
        for key in ("pruning_threshold", "pruning_penalty", "pruning_penalty_weight", "distill_loss", "kept_fraction"):
            assert math.isfinite(h[key]), (key, h)
        assert 0.0 < h["pruning_penalty"] < 1.0 and h["distill_loss"] > 0.0
    schedule = CubicSchedule(0.0, 0.5, 4, 1, 0)
    assert [h["pruning_threshold"] for h in logs] == [schedule.value(2), 0.5]
    assert [h["pruning_penalty_weight"] for h in logs] == [2.0 * schedule.fraction(2), 2.0]
    # BermoTrainer's groups stay (the mix at mix_lr), the scores join them in a group of their own
    lrs = {g["name"]: g["initial_lr"] for g in trainer.optimizer.param_groups}
    assert lrs["mix"] == 5e-2 and lrs["scores"] == 1e-2 and lrs["encoder"] == 1e-3
    # the training loss is alpha * distill + (1 - alpha) * task + weight * penalty
    batch = {k: torch.stack([row[k] for row in dataset(4, seed=9)]) for k in ("input_ids", "attention_mask", "labels")}
    model.train()
    loss = trainer.compute_loss(model, batch)
    with torch.no_grad():
        out = model(**batch)
        distill = distillation_loss(out.logits, teacher(input_ids=batch["input_ids"],
                                                        attention_mask=batch["attention_mask"]).logits, 2.0)
        expected = 0.7 * distill + 0.3 * out.loss + 2.0 * regularization(model)
    torch.testing.assert_close(loss.detach(), expected)
    model.eval()
    with torch.no_grad():  # evaluation: the task loss alone
        torch.testing.assert_close(trainer.compute_loss(model, batch), model(**batch).loss)


def _distilled(tmp_path, model, teacher, rows, **pruning):
    """Two topK pruning steps with ``teacher``; then, on the first four rows in training mode: ``(trainer, the
    trainer's loss, the student's outputs, the teacher's logits)``."""
    config = PruningConfig(method="topK", block_shape=(8, 8), final_level=0.5, total_steps=2, teacher=teacher,
                           prepare_options=REF, **pruning)
    trainer = PruningTrainer(model=model, args=training_args(tmp_path, max_steps=2), train_dataset=rows,
                             pruning=config)
    trainer.train()
    batch = {k: torch.stack([r[k] for r in rows[:4]]) for k in ("input_ids", "attention_mask", "labels")}
    model.train()
    loss = trainer.compute_loss(model, batch)
    with torch.no_grad():
        out = model(**batch)
        teach = teacher(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    return trainer, loss, out, teach


def test_distillation_of_a_regression_student_uses_the_squared_error(tmp_path):
    """A one-output (regression) classifier distilled from a teacher: the distillation term is the squared error
    to the teacher's predictions (it was a softmax KL over one output, always 0: the teacher had no effect)."""
    teacher, model = bermo(1, num_labels=1), bermo(0, num_labels=1)
    with torch.no_grad():
        teacher.classifier.bias.fill_(5.0)  # far from the student's predictions
    rows = [dict(r, labels=r["labels"].float()) for r in dataset(8)]
    trainer, loss, out, teach = _distilled(tmp_path, model, teacher, rows, alpha=0.9)
    assert model.config.problem_type == "regression"
    logs = [h for h in trainer.state.log_history if "distill_loss" in h]
    assert logs and all(h["distill_loss"] > 1.0 for h in logs), logs
    with torch.no_grad():
        expected = 0.9 * ((out.logits - teach) ** 2).mean() + 0.1 * out.loss
    torch.testing.assert_close(loss.detach(), expected)


def test_distillation_of_a_multi_label_student_is_the_per_label_kl(tmp_path):
    """A multi-label classifier (float multi-hot labels: transformers records problem_type at the first forward)
    is distilled label by label, not by a softmax over its labels."""
    teacher, model = bermo(1, num_labels=3), bermo(0, num_labels=3)
    gen = torch.Generator().manual_seed(3)
    rows = [dict(r, labels=(torch.rand(3, generator=gen) > 0.5).float()) for r in dataset(8)]
    _, loss, out, teach = _distilled(tmp_path, model, teacher, rows, alpha=0.6, temperature=2.0)
    assert model.config.problem_type == "multi_label_classification"
    with torch.no_grad():
        p, q = torch.sigmoid(teach / 2), torch.sigmoid(out.logits / 2)
        per_label = (p * (p / q).log() + (1 - p) * ((1 - p) / (1 - q)).log()).sum(-1).mean() * 4
        expected = 0.6 * per_label + 0.4 * out.loss
    torch.testing.assert_close(loss.detach(), expected)


def test_extra_terms_follow_the_trainers_gradient_accumulation_convention(tmp_path):
    trainer = PruningTrainer(model=bert(), args=training_args(tmp_path, gradient_accumulation_steps=4),
                             pruning=PruningConfig(final_level=0.5, block_shape=(8, 8), prepare_options=REF))
    trainer.current_gradient_accumulation_steps = 4
    # BERT's classifier loss is a per-batch mean: the Trainer divides it (and so the extra terms) itself
    assert trainer.model_accepts_loss_kwargs is False
    assert trainer._extra_loss_scale(num_items_in_batch=32) == 1.0
    # a loss normalised by num_items_in_batch is not divided by the Trainer: the extra terms are divided here
    trainer.model_accepts_loss_kwargs = True
    assert trainer._extra_loss_scale(num_items_in_batch=32) == 0.25
    assert trainer._extra_loss_scale(num_items_in_batch=None) == 1.0  # the Trainer divides the whole loss


def test_bert_classifier_loss_is_not_multiplied_by_gradient_accumulation(tmp_path):
    """transformers' BERT classifier takes **kwargs, so the HF Trainer took its per-batch mean loss as normalised
    by num_items_in_batch: with 2 accumulation steps (or 2 processes) loss and gradients were twice too large.
    One SGD step over 2 x 4 examples must equal one over 8."""
    def one_step(batch, accumulate):
        model = bert(seed=3)
        args = training_args(tmp_path / f"{batch}-{accumulate}", per_device_train_batch_size=batch,
                             gradient_accumulation_steps=accumulate, max_steps=1, optim="sgd", learning_rate=0.5,
                             lr_scheduler_type="constant", max_grad_norm=0.0, weight_decay=0.0)
        trainer = PruningTrainer(model=model, args=args, train_dataset=dataset(16),
                                 pruning=PruningConfig(method="magnitude", final_level=1.0, block_shape=(8, 8),
                                                       prepare_options=REF))
        assert trainer.model_accepts_loss_kwargs is False
        loss = trainer.train().training_loss
        return loss, model.classifier.weight.detach().clone()

    loss_8, w_8 = one_step(8, 1)
    loss_4x2, w_4x2 = one_step(4, 2)
    assert loss_4x2 == pytest.approx(loss_8, rel=1e-5)
    torch.testing.assert_close(w_4x2, w_8, rtol=1e-5, atol=1e-6)
    assert not torch.equal(w_8, bert(seed=3).classifier.weight)  # the step moved it


def test_load_best_model_at_end_restores_the_best_steps_level(tmp_path):
    """The pruning level is not in the weights: after ``load_best_model_at_end`` the best checkpoint's weights
    and scores must run at the level they were evaluated at (they kept the last step's density: a different
    model from the one whose metric was best). ``greater_is_better`` on the loss only makes step 2 the best."""
    pruning = PruningConfig(method="topK", block_shape=(8, 8), final_level=0.1, initial_warmup_steps=1,
                            final_warmup_steps=1, prepare_options=REF)
    args = training_args(tmp_path, max_steps=8, eval_strategy="steps", eval_steps=2, save_strategy="steps",
                         save_steps=2, load_best_model_at_end=True, metric_for_best_model="eval_loss",
                         greater_is_better=True, learning_rate=1e-4)
    model = bert()
    trainer = PruningTrainer(model=model, args=args, train_dataset=dataset(), eval_dataset=dataset(16, seed=6),
                             pruning=pruning)
    trainer.train()
    assert trainer.state.best_model_checkpoint.endswith("checkpoint-2")
    assert trainer.pruning_level == pytest.approx(trainer.pruning_schedule.value(2))
    assert trainer.pruning_level > 0.5  # not the final 0.1
    assert trainer.evaluate()["eval_loss"] == pytest.approx(trainer.state.best_metric, rel=1e-6)


def test_the_best_step_is_the_best_checkpoints_own(tmp_path):
    """transformers' ``best_global_step`` follows every better evaluation, saved or not: with evaluations between
    saves it named a step whose weights were never saved (checkpoint-2 loaded, step 3's level set)."""
    import json
    from types import SimpleNamespace

    from bermo.pruning.trainer import best_checkpoint_step

    folder = tmp_path / "checkpoint-2"
    folder.mkdir()
    state = SimpleNamespace(best_global_step=3, best_model_checkpoint=str(folder))
    assert best_checkpoint_step(state) == 2  # from the folder's name
    (folder / "trainer_state.json").write_text(json.dumps({"global_step": 2}))
    assert best_checkpoint_step(state) == 2


def test_a_prepared_model_is_used_as_it_is(tmp_path):
    model = bert()
    names = prepare(model, method="magnitude", block_shape=(16, 16), targets=["query"], **REF)
    trainer = PruningTrainer(model=model, args=training_args(tmp_path, max_steps=2),
                             train_dataset=dataset(8), pruning=PruningConfig(method="magnitude", final_level=0.5))
    assert trainer.pruned_layers == names
    trainer.train()
    assert [m.density for _, m in masked_linears(model)] == [0.5, 0.5]
    assert not any(g.get("name") == "scores" for g in trainer.optimizer.param_groups)  # magnitude: no scores


@pytest.mark.parametrize("kwargs, error, match", [
    (dict(method="movement"), ValueError, "unknown method 'movement'"),
    (dict(final_level=None), ValueError, "method 'topK' needs final_level"),
    (dict(final_level=0.0), ValueError, "final_level is a density .* must be in \\(0, 1\\]"),
    (dict(initial_level=1.5), ValueError, "initial_level is a density"),
    (dict(method="sigmoied_threshold", final_level=2.0), ValueError, "threshold on sigmoid\\(scores\\)"),
    (dict(method="l0", final_level=0.1), ValueError, "'l0' has no pruning level"),
    (dict(final_level=float("nan")), ValueError, "final_level must be a finite"),
    (dict(initial_warmup_steps=-1), ValueError, "initial_warmup_steps must be an int >= 0"),
    (dict(final_warmup_steps=0.5), ValueError, "final_warmup_steps must be an int >= 0"),
    (dict(total_steps=5, initial_warmup_steps=2, final_warmup_steps=3), ValueError, "leaves no pruning phase"),
    (dict(total_steps=0), ValueError, "total_steps must be >= 1"),
    (dict(regularization_weight=-1.0), ValueError, "regularization_weight must be >= 0"),
    (dict(regularization_weight=1.0), ValueError, "has no effect with method 'topK'"),
    (dict(scores_learning_rate=-1e-2), ValueError, "scores_learning_rate must be >= 0"),
    (dict(teacher="bert-base"), TypeError, "teacher must be a torch.nn.Module"),
    (dict(temperature=0.0), ValueError, "temperature must be > 0"),
    (dict(alpha=1.5), ValueError, "alpha .* must be in \\[0, 1\\]"),
    (dict(prepare_options=[("backend", "reference")]), TypeError, "prepare_options must be a dict"),
])
def test_bad_pruning_configs(kwargs, error, match):
    with pytest.raises(error, match=match):
        PruningConfig(**{"final_level": 0.1, **kwargs})


def test_config_defaults_by_method():
    assert PruningConfig(final_level=0.1).initial_level == 1.0
    threshold = PruningConfig(method="sigmoied_threshold", final_level=0.1, regularization_weight=1.0)
    assert threshold.initial_level == 0.0 and threshold.level_attribute == "threshold"
    l0 = PruningConfig(method="l0", regularization_weight=1.0)
    assert l0.level_attribute is None and l0.schedule(10).fraction(5) == pytest.approx(1 - 0.5 ** 3)


def test_bad_trainer_setups(tmp_path):
    args = training_args(tmp_path, max_steps=3)
    with pytest.raises(TypeError, match="pass pruning=PruningConfig"):
        PruningTrainer(model=bert(), args=args)
    with pytest.raises(ValueError, match="needs model="):
        PruningTrainer(model_init=bert, args=args, pruning=PruningConfig(final_level=0.5))
    model = bert()
    prepare(model, method="magnitude", block_shape=(8, 8), **REF)
    with pytest.raises(ValueError, match="use method\\(s\\) \\['magnitude'\\], but pruning.method is 'topK'"):
        PruningTrainer(model=model, args=args, pruning=PruningConfig(final_level=0.5))
    with pytest.raises(ValueError, match="block_shape \\(7, 7\\) does not divide"):
        PruningTrainer(model=bert(), args=args, pruning=PruningConfig(final_level=0.5, block_shape=(7, 7)))
    # max_steps=3 leaves no pruning phase after 2 + 1 warm-up steps: refused when training starts, before a step
    model = bert()
    trainer = PruningTrainer(model=model, args=args, train_dataset=dataset(12),
                             pruning=PruningConfig(final_level=0.5, block_shape=(8, 8), initial_warmup_steps=2,
                                                   final_warmup_steps=1, prepare_options=REF))
    with pytest.raises(ValueError, match="total_steps=3 leaves no pruning phase"):
        trainer.train()
    assert trainer.state.global_step == 0
    # raw scores start at 0 and 'threshold' keeps scores > 0: nothing would be kept, an error rather than a dead net
    trainer = PruningTrainer(model=bert(), args=args, train_dataset=dataset(12),
                             pruning=PruningConfig(method="threshold", final_level=0.5, block_shape=(8, 8),
                                                   prepare_options=REF))
    with pytest.raises(ValueError, match="the masks keep no weight at the start of training"):
        trainer.train()
    assert trainer.state.global_step == 0


def test_which_classifiers_get_their_loss_scaled_as_a_mean():
    """BERT-family classifiers compute a per-batch mean although their forward takes **kwargs; classifiers
    whose loss goes through self.loss_function (normalised by num_items_in_batch) keep the Trainer's decision."""
    from types import SimpleNamespace

    from transformers import LlamaConfig, LlamaForSequenceClassification, RobertaConfig, RobertaForSequenceClassification

    from bermo.pruning.trainer import scale_per_batch_mean_loss

    def decided(model):
        trainer = SimpleNamespace(model=model, accelerator=SimpleNamespace(unwrap_model=lambda m: m),
                                  model_accepts_loss_kwargs=True)
        scale_per_batch_mean_loss(trainer)
        return trainer.model_accepts_loss_kwargs

    small = dict(vocab_size=60, hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32)
    assert decided(bert()) is False
    assert decided(RobertaForSequenceClassification(RobertaConfig(**small))) is False
    assert decided(LlamaForSequenceClassification(LlamaConfig(**small, pad_token_id=0))) is True
    assert decided(bermo()) is True  # says accepts_loss_kwargs = False itself: the Trainer already reads it
