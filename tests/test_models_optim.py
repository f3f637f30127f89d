"""The scalar mix at its own learning rate: mix_parameter_groups, BermoTrainingArguments and BermoTrainer."""
import pytest
import torch

from bermo.models import (DEFAULT_MIX_LR, BermoForSequenceClassification, BermoModel, mix_parameter_groups)
from bermo.nn import ScalarMix
from test_models import batch, tiny_config


def _names(model):
    return {id(p): n for n, p in model.named_parameters()}


def test_groups_split_encoder_mix_and_head_with_their_rates_and_decay():
    model = BermoForSequenceClassification(tiny_config(num_labels=2))
    groups = mix_parameter_groups(model, lr=5e-5, mix_lr=1e-2, weight_decay=0.01, head_lr=1e-3)
    names = _names(model)
    by_name = {g["name"]: g for g in groups}
    assert list(by_name) == ["encoder", "encoder_no_decay", "mix", "head", "head_no_decay"]
    members = {k: {names[id(p)] for p in g["params"]} for k, g in by_name.items()}
    assert members["mix"] == {"bert.scalar_mix.gamma"} | {f"bert.scalar_mix.scalar_parameters.{i}" for i in range(4)}
    assert members["head"] == {"classifier.weight"} and members["head_no_decay"] == {"classifier.bias"}
    assert all(n.startswith("bert.") and "scalar_mix" not in n for n in members["encoder"] | members["encoder_no_decay"])
    assert "bert.pooler.dense.weight" in members["encoder"]  # the pretrained pooler belongs to the body
    assert all("bias" in n or "LayerNorm" in n for n in members["encoder_no_decay"])
    assert "bert.embeddings.LayerNorm.weight" in members["encoder_no_decay"]
    assert "bert.encoder.layer.0.attention.self.query.weight" in members["encoder"]
    # every trainable parameter exactly once
    assert sorted(n for m in members.values() for n in m) == sorted(n for n, _ in model.named_parameters())
    assert [(g["lr"], g["weight_decay"]) for g in groups] == [(5e-5, 0.01), (5e-5, 0.0), (1e-2, 0.0), (1e-3, 0.01),
                                                             (1e-3, 0.0)]
    assert by_name["head"]["lr"] == 1e-3
    assert mix_parameter_groups(model, lr=5e-5, mix_lr=1e-2)[-1]["lr"] == 5e-5  # head_lr defaults to lr


def test_groups_for_the_bare_model_and_any_module_with_a_scalar_mix():
    groups = mix_parameter_groups(BermoModel(tiny_config()), lr=1e-4, mix_lr=1e-2)
    assert [g["name"] for g in groups] == ["encoder", "encoder_no_decay", "mix"]

    class Tagger(torch.nn.Module):  # an AllenNLP-style model: not a transformers model
        def __init__(self):
            super().__init__()
            self.mix = ScalarMix(3)
            self.proj = torch.nn.Linear(4, 2)

    groups = mix_parameter_groups(Tagger(), lr=1e-3, mix_lr=1e-1, weight_decay=0.1)
    assert [(g["name"], len(g["params"]), g["lr"], g["weight_decay"]) for g in groups] == [
        ("encoder", 1, 1e-3, 0.1), ("encoder_no_decay", 1, 1e-3, 0.0), ("mix", 4, 1e-1, 0.0)]


def test_weight_decay_follows_the_hf_trainers_rule():
    """Which parameters are decayed is the HF Trainer's own choice (get_decay_parameter_names), for any module
    holding a mix: parameters named norm / *_norm (batch_norm, a custom final_norm) are not decayed, an RMSNorm
    module named otherwise is (bermo's own list had both the other way round); a decay list given is used as is."""
    from torch import nn
    from transformers import Trainer, TrainingArguments

    class Norm(nn.Module):
        def __init__(self):
            super().__init__()
            self.weight = nn.Parameter(torch.ones(4))

    class Model(nn.Module):
        def __init__(self):
            super().__init__()
            self.mix = ScalarMix(2)
            self.final_norm, self.norm, self.batch_norm = Norm(), Norm(), nn.BatchNorm1d(4)
            self.rms, self.proj, self.LayerNorm = nn.RMSNorm(4), nn.Linear(4, 4), nn.LayerNorm(4)

    model = Model()

    def decayed(groups):
        ids = {id(p) for g in groups if g["weight_decay"] > 0 for p in g["params"]}
        return {n for n, p in model.named_parameters() if id(p) in ids}

    trainer = Trainer(model=model, args=TrainingArguments(output_dir="unused", report_to=[], use_cpu=True))
    hf = set(trainer.get_decay_parameter_names(model)) - {"mix.gamma"} - {f"mix.scalar_parameters.{i}" for i in (0, 1)}
    got = decayed(mix_parameter_groups(model, lr=1e-3, mix_lr=1e-2, weight_decay=0.1))
    assert got == hf == {"rms.weight", "proj.weight"}
    chosen = decayed(mix_parameter_groups(model, lr=1e-3, mix_lr=1e-2, weight_decay=0.1,
                                          decay_parameter_names=["proj.weight", "norm.weight"]))
    assert chosen == {"proj.weight", "norm.weight"}


def test_frozen_parameters_are_left_out():
    model = BermoForSequenceClassification(tiny_config())
    for p in model.bert.embeddings.parameters():
        p.requires_grad_(False)
    groups = mix_parameter_groups(model, lr=1e-4, mix_lr=1e-2)
    frozen = {id(p) for p in model.bert.embeddings.parameters()}
    assert not [p for g in groups for p in g["params"] if id(p) in frozen]


def test_group_errors_name_the_problem():
    with pytest.raises(ValueError, match="holds no bermo.nn.ScalarMix"):
        mix_parameter_groups(torch.nn.Linear(2, 2), lr=1e-4, mix_lr=1e-2)
    with pytest.raises(ValueError, match="mix_lr must be a number >= 0, got -1"):
        mix_parameter_groups(BermoModel(tiny_config()), lr=1e-4, mix_lr=-1)
    with pytest.raises(ValueError, match="lr must be a number >= 0, got '1e-4'"):
        mix_parameter_groups(BermoModel(tiny_config()), lr="1e-4", mix_lr=1e-2)
    frozen = BermoModel(tiny_config())
    for p in frozen.scalar_mix.parameters():
        p.requires_grad_(False)
    with pytest.raises(ValueError, match="ScalarMix parameters are all frozen"):
        mix_parameter_groups(frozen, lr=1e-4, mix_lr=1e-2)


def test_the_mix_learns_at_a_fine_tuning_rate_only_with_its_own_group():
    """The motivating failure: at lr 5e-5 for everything, 20 AdamW steps move each scalar by at most 20 * 5e-5 =
    1e-3, so the weights stay uniform; with the mix's own rate they move."""
    ids, mask = batch(B=8, T=6, seed=1)
    labels = torch.tensor([0, 1, 2, 0, 1, 2, 0, 1])

    def train(make_groups):
        torch.manual_seed(0)
        model = BermoForSequenceClassification(tiny_config())
        optim = torch.optim.AdamW(make_groups(model))
        for _ in range(20):
            model(ids, attention_mask=mask, labels=labels).loss.backward()
            optim.step()
            optim.zero_grad()
        return model.mixing_weights()

    uniform = torch.full((4,), 0.25)
    plain = train(lambda m: [{"params": list(m.parameters()), "lr": 5e-5, "weight_decay": 0.01}])
    grouped = train(lambda m: mix_parameter_groups(m, lr=5e-5, mix_lr=DEFAULT_MIX_LR, weight_decay=0.01))
    assert (plain - uniform).abs().max() < 1e-3
    assert (grouped - uniform).abs().max() > 10 * (plain - uniform).abs().max()


def test_training_arguments_carry_mix_lr_and_parse_from_the_command_line(tmp_path):
    pytest.importorskip("accelerate", reason="the HF Trainer needs accelerate (bermo[train])")
    from transformers import HfArgumentParser

    from bermo.models import BermoTrainingArguments

    args = BermoTrainingArguments(output_dir=str(tmp_path), report_to=[])
    assert args.mix_lr == DEFAULT_MIX_LR and args.head_lr is None
    (parsed,) = HfArgumentParser(BermoTrainingArguments).parse_args_into_dataclasses(
        ["--output_dir", str(tmp_path), "--mix_lr", "0.03", "--head_lr", "1e-4", "--report_to", "none"])
    assert parsed.mix_lr == 0.03 and parsed.head_lr == 1e-4
    assert parsed.to_dict()["mix_lr"] == 0.03


def _dataset(n=64, seed=5):
    Dataset = pytest.importorskip("datasets", reason="bermo[train]").Dataset
    gen = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, 60, (n, 8), generator=gen)
    labels = (ids == 7).any(1) | (ids == 8).any(1)
    return Dataset.from_dict({"input_ids": ids.tolist(), "attention_mask": torch.ones_like(ids).tolist(),
                              "labels": labels.long().tolist()})


def test_bermo_trainer_gives_the_mix_its_rate_and_the_mix_moves(tmp_path):
    pytest.importorskip("accelerate", reason="the HF Trainer needs accelerate (bermo[train])")
    from transformers import Trainer, TrainingArguments

    from bermo.models import BermoTrainer, BermoTrainingArguments

    ds = _dataset()
    common = dict(output_dir=str(tmp_path), per_device_train_batch_size=16, num_train_epochs=3,
                  learning_rate=5e-5, weight_decay=0.01, report_to=[], save_strategy="no", use_cpu=True,
                  disable_tqdm=True, seed=5)

    torch.manual_seed(5)
    model = BermoForSequenceClassification(tiny_config(num_labels=2))
    trainer = BermoTrainer(model=model, args=BermoTrainingArguments(mix_lr=5e-2, head_lr=1e-3, **common),
                           train_dataset=ds)
    trainer.train()
    groups = {g["name"]: g for g in trainer.optimizer.param_groups}
    assert groups["mix"]["initial_lr"] == 5e-2 and groups["mix"]["weight_decay"] == 0.0
    assert groups["encoder"]["initial_lr"] == 5e-5 and groups["encoder"]["weight_decay"] == 0.01
    assert groups["head"]["initial_lr"] == 1e-3
    assert type(getattr(trainer.optimizer, "optimizer", trainer.optimizer)).__name__ == "AdamW"  # the Trainer's class
    moved = (model.mixing_weights() - 0.25).abs().max().item()

    torch.manual_seed(5)
    baseline = BermoForSequenceClassification(tiny_config(num_labels=2))
    Trainer(model=baseline, args=TrainingArguments(**common), train_dataset=ds).train()
    baseline_moved = (baseline.mixing_weights() - 0.25).abs().max().item()
    assert baseline_moved < 1e-3 < moved, (baseline_moved, moved)


def test_bermo_trainer_refuses_optimizers_that_build_their_own_groups(tmp_path):
    pytest.importorskip("accelerate", reason="the HF Trainer needs accelerate (bermo[train])")
    from bermo.models import BermoTrainer, BermoTrainingArguments

    class OwnGroups(torch.optim.SGD):
        pass

    args = BermoTrainingArguments(output_dir=str(tmp_path), report_to=[], use_cpu=True)
    trainer = BermoTrainer(model=BermoForSequenceClassification(tiny_config(num_labels=2)), args=args,
                           optimizer_cls_and_kwargs=(OwnGroups, {"lr": 1e-3, "params": []}))
    with pytest.raises(ValueError, match="builds its own parameter groups \\(params\\), so the scalar mix cannot"):
        trainer.create_optimizer()
