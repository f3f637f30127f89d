"""Pruning under distributed data parallel: two CPU processes (gloo) run PruningTrainer on different data and end
with identical scores and masks. The masks derive from parameters that DDP keeps in step (the scores, or the
weights for magnitude) and from a schedule of the step count, so no mask is ever communicated."""
import datetime
import os

import pytest
import torch
import torch.multiprocessing as mp

pytest.importorskip("accelerate", reason="the HF Trainer needs accelerate (bermo[train])")


def _worker(rank, world, out_dir):
    # What torchrun sets: accelerate (through TrainingArguments) reads these and insists on MASTER_ADDR, but it
    # takes a process group already started as it is: this one meets through a file store (no TCP port to choose
    # and bind, see tests/test_models_distributed.py), so MASTER_ADDR is never used.
    os.environ.update(MASTER_ADDR="127.0.0.1", RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(world))
    os.environ.pop("BERMO_BACKEND", None)
    torch.set_num_threads(1)
    import torch.distributed as dist
    dist.init_process_group("gloo", init_method="file://" + os.path.join(out_dir, "rendezvous"), rank=rank,
                            world_size=world, timeout=datetime.timedelta(seconds=120))
    from transformers import TrainerCallback, TrainingArguments, default_data_collator

    from bermo.models import BermoConfig, BermoForSequenceClassification
    from bermo.pruning import PruningConfig, PruningTrainer, masked_linears

    try:
        torch.manual_seed(0)  # same initial weights on both ranks (DDP also broadcasts rank 0's)
        config = BermoConfig(vocab_size=60, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                             intermediate_size=64, max_position_embeddings=32, num_labels=2, mix_backend="reference")
        model = BermoForSequenceClassification(config)
        gen = torch.Generator().manual_seed(5)
        ids = torch.randint(3, 60, (32, 8), generator=gen)
        labels = ((ids == 7).any(1) | (ids == 8).any(1)).long()
        data = [{"input_ids": i, "labels": y} for i, y in zip(ids, labels)]
        seen = []

        def collate(rows):  # record what this rank trained on
            seen.append(torch.stack([r["input_ids"] for r in rows]))
            return default_data_collator(rows)

        args = TrainingArguments(output_dir=out_dir, per_device_train_batch_size=4, max_steps=4, learning_rate=1e-3,
                                 logging_steps=1, report_to=[], save_strategy="no", use_cpu=True, disable_tqdm=True,
                                 seed=5, ddp_backend="gloo")
        pruning = PruningConfig(method="sigmoied_threshold", block_shape=(8, 8), initial_level=0.3, final_level=0.6,
                                total_steps=4, regularization_weight=1.0, scores_learning_rate=0.05,
                                prepare_options={"backend": "reference"})
        trainer = PruningTrainer(model=model, args=args, train_dataset=data, data_collator=collate, pruning=pruning)
        scores_gen = torch.Generator().manual_seed(1)  # spread scores, so that every level change moves masks
        for _, layer in masked_linears(model):
            layer.reset_scores(torch.randn(layer.blocks_shape, generator=scores_gen))
        masks_by_step = []

        class RecordMasks(TrainerCallback):  # runs after the pruning callback has set the step's level
            def on_step_end(self, args, state, control, **kwargs):
                masks_by_step.append(torch.cat([m.mask().flatten() for _, m in masked_linears(model)]))

        trainer.add_callback(RecordMasks())
        trainer.train()
        assert dist.is_initialized() and dist.get_world_size() == world
        assert type(trainer.model_wrapped).__name__ == "DistributedDataParallel"
        torch.save({"seen": torch.cat(seen), "masks_by_step": torch.stack(masks_by_step),
                    "masks": {n: m.mask() for n, m in masked_linears(model)},
                    "scores": {n: m.scores.detach().clone() for n, m in masked_linears(model)},
                    "state": {k: v.detach().clone() for k, v in model.state_dict().items()}},
                   os.path.join(out_dir, f"rank{rank}.pt"))
        # neither rank tears its transport down while the other may still use it (tests/test_models_distributed.py)
        dist.barrier()
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


@pytest.mark.slow
def test_ddp_two_cpu_processes_keep_identical_scores_and_masks(tmp_path):
    mp.spawn(_worker, args=(2, str(tmp_path)), nprocs=2, join=True)
    a = torch.load(tmp_path / "rank0.pt")
    b = torch.load(tmp_path / "rank1.pt")
    assert a["seen"].shape == (16, 8) and not torch.equal(a["seen"], b["seen"])  # the ranks saw different data
    assert a["masks"].keys() == b["masks"].keys() and len(a["masks"]) == 12
    for name in a["masks"]:
        assert torch.equal(a["scores"][name], b["scores"][name]), name
        assert torch.equal(a["masks"][name], b["masks"][name]), name
    for key in a["state"]:
        assert torch.equal(a["state"][key], b["state"][key]), key
    # after every step, with the level of that step, not only at the end
    assert a["masks_by_step"].shape[0] == 4 and torch.equal(a["masks_by_step"], b["masks_by_step"])
    kept = a["masks_by_step"].mean(1)
    assert kept[0] > kept[1] > kept[2] > kept[3] > 0.0, kept  # the rising threshold prunes more at every step
    assert kept[0] < 1.0
    # training moved the scores away from where they started
    gen = torch.Generator().manual_seed(1)
    start = torch.cat([torch.randn(s.shape, generator=gen).flatten() for s in a["scores"].values()])
    assert (torch.cat([s.flatten() for s in a["scores"].values()]) - start).abs().max() > 1e-3
