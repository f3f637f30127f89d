"""BERMo's overhead over BERT at the same size: inference tokens/s and training step time, side by side.

    python benchmarks/bermo_overhead.py [--device cpu|cuda] [--reps N] [--quick] [--out DIR] [--no-save]

Shapes: the MiniLM-L6 shape (6 layers, hidden 384, 12 heads) on CPU with B=8, T=128; BERT-base (12 layers,
hidden 768) on GPU with B=32, T=128 in bf16 autocast. Both models share every BERT weight; BERMo adds the
scalar mix (only the [CLS] position is mixed, as the classification head reads only that). BERT and BERMo
steps are interleaved in alternating order (A, B, B, A, ...) so slow drifts of a noisy machine and the cache
each leaves to the other hit both alike; the overhead is the ratio of medians minus one. The paper claims a
negligible overhead; the target here is at most 3%.
"""
from __future__ import annotations

import argparse
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import (add_output_args, environment, markdown_table, output_dir, parse_args,  # noqa: E402
                    steady_state_malloc, time_interleaved, write_results)

from transformers import BertConfig, BertForSequenceClassification  # noqa: E402

from bermo.models import BermoConfig, BermoForSequenceClassification  # noqa: E402

TARGET = 0.03
SHAPES = {
    "minilm": dict(hidden_size=384, num_hidden_layers=6, num_attention_heads=12, intermediate_size=1536),
    "bert-base": dict(hidden_size=768, num_hidden_layers=12, num_attention_heads=12, intermediate_size=3072),
    "tiny": dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=2, intermediate_size=128),
}


def build(shape: str, device):
    kw = dict(SHAPES[shape], num_labels=2, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    torch.manual_seed(0)
    bert = BertForSequenceClassification(BertConfig(**kw)).to(device)
    bermo = BermoForSequenceClassification(BermoConfig(**kw)).to(device)
    missing, unexpected = bermo.load_state_dict(bert.state_dict(), strict=False)
    assert not unexpected and all("scalar_mix" in k for k in missing), (missing, unexpected)
    return bert, bermo


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu",
                        help="cpu or cuda (default: cuda when there is a GPU)")
    parser.add_argument("--reps", type=int, default=None,
                        help="timed repetitions per model and mode (default 15 CPU, 30 GPU)")
    parser.add_argument("--quick", action="store_true", help="tiny model, few repetitions (smoke test)")
    add_output_args(parser)
    args = parse_args(parser, argv)
    device = torch.device(args.device)
    if args.quick:
        shape, B, T, reps = "tiny", 4, 16, args.reps or 5
    elif device.type == "cuda":
        shape, B, T, reps = "bert-base", 32, 128, args.reps or 30
    else:
        shape, B, T, reps = "minilm", 8, 128, args.reps or 15
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else torch.autocast(
        "cpu", enabled=False)
    if device.type == "cpu":
        steady_state_malloc()  # as in benchmarks/scalar_mix.py: no random page-fault noise, for both models
    env = environment(device)
    bert, bermo = build(shape, device)
    models = {"bert": bert, "bermo": bermo}
    gen = torch.Generator().manual_seed(0)
    ids = torch.randint(1, 30000 if shape != "tiny" else 100, (B, T), generator=gen).to(device)
    mask = torch.ones(B, T, dtype=torch.long, device=device)
    labels = torch.randint(0, 2, (B,), generator=gen).to(device)
    print(f"# BERMo overhead on {env['device_name']}: {shape} shape, B={B} T={T} (torch {env['torch']}, "
          f"transformers {env['transformers']})", flush=True)
    if device.type == "cpu" and not args.quick:
        print(f"# expect about {reps * 4 * 0.5 / 60 + 0.5:.0f} minutes on two CPU cores "
              f"({reps} repetitions x 2 models x 2 modes; --quick for a smoke test)", flush=True)

    def inference(model):
        model.eval()

        def step():
            with torch.no_grad(), autocast:
                model(input_ids=ids, attention_mask=mask)
        return step

    def training(model):
        model.train()
        optim = torch.optim.SGD(model.parameters(), lr=1e-4)

        def step():
            with autocast:
                loss = model(input_ids=ids, attention_mask=mask, labels=labels).loss
            loss.backward()
            optim.step()
            optim.zero_grad(set_to_none=True)
        return step

    rows = []
    for mode, make in (("inference", inference), ("training step", training)):
        res = time_interleaved({name: (make(model), None) for name, model in models.items()}, device, reps, warmup=2,
                               desc=mode)
        base = res["bert"]["median_ms"]
        for name in models:
            r = res[name]
            overhead = r["median_ms"] / base - 1
            rows.append({"shape": f"{shape} B={B} T={T}", "mode": mode, "model": name, **r,
                         "tokens_per_s": B * T / (r["median_ms"] * 1e-3), "overhead_pct": 100 * overhead,
                         "within_target": None if name == "bert" else overhead <= TARGET})
    columns = [("shape", "shape", ""), ("mode", "mode", ""), ("model", "model", ""),
               ("median ms", "median_ms", "{:.2f}"), ("p20 ms", "p20_ms", "{:.2f}"), ("p80 ms", "p80_ms", "{:.2f}"),
               ("tokens/s", "tokens_per_s", "{:.0f}"), ("overhead vs BERT", "overhead_pct", "{:+.1f}%"),
               ("<= 3%", "within_target", "")]
    table = markdown_table(rows, columns)
    print(table)
    if not args.no_save:
        for path in write_results("bermo_overhead" + ("_quick" if args.quick else ""), env, rows, table, output_dir(args),
                                  "Interleaved BERT/BERMo steps; overhead = ratio of medians - 1."):
            print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
