"""Throughput of pruned and compressed layers and models: are they genuinely faster than the dense ones?

    python benchmarks/pruned_throughput.py [--quick] [--device cpu|cuda] [--parts layers model] [--record]

Part 1, per layer: BERT-base shapes (768x768, 3072x768, 768x3072; out x in) at 1024 tokens on a CPU (4096 on a
GPU), densities 1.0 0.5 0.3 0.1 0.05, blocks 16, 32, 64 and whole rows. Providers: dense ``nn.Linear``,
``torch.sparse`` BSR (``weight.to_sparse_bsr`` through ``torch.addmm``; blocks only), bermo
``BlockSparseLinear`` (blocks only) and bermo compressed (row pruning: the smaller dense layer ``compress``
makes). Inference (no autograd). Columns: median ms, speedup over dense, and each provider's kept-FLOP rate.

Part 2, whole model: a BERT-base-shaped BERMo classifier (random weights) pruned with 32x32 blocks to each
density (magnitude, so the masks are fixed), compressed with ``bermo.pruning.compress``, tokens/s against the
dense model (batch 8 x 128 tokens on a CPU, 32 x 128 on a GPU), outputs checked against the masked model.

Both parts write a table (stdout, and rows to the results folder) and part 1 a PNG of speedup against density
per provider and block.
"""
from __future__ import annotations

import argparse
import copy
import os
import sys

import torch
import torch.nn as nn

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import (add_output_args, environment, markdown_table, output_dir, steady_state_malloc,  # noqa: E402
                    time_interleaved, write_results)

from bermo.nn import BlockSparseLinear, MaskedLinear  # noqa: E402

SHAPES = [(768, 768), (3072, 768), (768, 3072)]
DENSITIES = [1.0, 0.5, 0.3, 0.1, 0.05]
BLOCKS = ["16", "32", "64", "rows"]


def random_block_mask(nb, density, gen):
    keep = torch.zeros(nb[0] * nb[1], dtype=torch.bool)
    keep[torch.randperm(keep.numel(), generator=gen)[:max(1, round(density * keep.numel()))]] = True
    return keep.view(nb)


def layer_rows(N, K, block, density, T, dtype, device, reps):
    gen = torch.Generator().manual_seed(0)
    dense = nn.Linear(K, N).to(device=device, dtype=dtype).eval()
    x = torch.randn(T, K, generator=gen).to(device=device, dtype=dtype)
    providers = {"dense": dense}
    if block == "rows":
        keep = random_block_mask((N, 1), density, gen)[:, 0]
        small = nn.Linear(K, int(keep.sum())).to(device=device, dtype=dtype)
        with torch.no_grad():
            small.weight.copy_(dense.weight[keep.to(device)])
            small.bias.copy_(dense.bias[keep.to(device)])
        providers["bermo compressed"] = small.eval()
    else:
        b = int(block)
        mask = random_block_mask((N // b, K // b), density, gen).to(device)
        bsl = BlockSparseLinear.from_dense(dense.weight.detach(), dense.bias.detach(), (b, b), mask=mask).eval()
        providers["bermo BlockSparseLinear"] = bsl
        w = (dense.weight.detach() * mask.repeat_interleave(b, 0).repeat_interleave(b, 1).to(dtype))
        try:
            bsr = w.to_sparse_bsr((b, b))
            bias = dense.bias.detach()[:, None]
            providers["torch.sparse BSR"] = lambda x, bsr=bsr, bias=bias: torch.addmm(bias, bsr, x.T).T
            torch.addmm(bias, bsr, x[:2].T)
        except (RuntimeError, NotImplementedError):
            providers.pop("torch.sparse BSR", None)
    cases = {name: (lambda f=f: f(x), None) for name, f in providers.items()}
    with torch.no_grad():
        timings = time_interleaved(cases, device, reps=reps, desc=f"{N}x{K} {block} {density}")
    rows = []
    for name, t in timings.items():
        kept_flops = 2 * T * N * K * (1.0 if name == "dense" else density)
        rows.append({"part": "layer", "shape": f"{N}x{K} T={T}", "block": block, "density": density,
                     "provider": name, **t, "x_dense": timings["dense"]["median_ms"] / t["median_ms"],
                     "gflops": kept_flops / (t["median_ms"] * 1e-3) / 1e9})
    return rows


def model_rows(densities, B, T, dtype, device, reps, quick):
    from bermo.models import BermoConfig, BermoForSequenceClassification
    from bermo.pruning import compress, prepare

    kw = dict(vocab_size=30522, hidden_size=768, num_hidden_layers=12, num_attention_heads=12,
              intermediate_size=3072) if not quick else dict(vocab_size=100, hidden_size=64, num_hidden_layers=2,
                                                               num_attention_heads=2, intermediate_size=128)
    torch.manual_seed(0)
    base = BermoForSequenceClassification(BermoConfig(num_labels=2, **kw)).to(device=device, dtype=dtype).eval()
    ids = torch.randint(1, kw["vocab_size"], (B, T)).to(device)
    models = {"dense": base}
    checks = {}
    for d in densities:
        if d >= 1.0:
            continue
        m = BermoForSequenceClassification(copy.deepcopy(base.config)).to(device=device, dtype=dtype).eval()
        m.load_state_dict(base.state_dict())
        prepare(m, method="magnitude", block_shape=(32, 32) if not quick else (16, 16))
        for layer in m.modules():
            if isinstance(layer, MaskedLinear):
                layer.density = d
        with torch.no_grad():
            masked_logits = m(ids).logits
        compress(m)
        with torch.no_grad():
            err = (m(ids).logits - masked_logits).abs().max().item()
        models[f"compressed {d}"] = m.eval()
        checks[f"compressed {d}"] = err
    cases = {name: (lambda m=m: m(ids).logits, None) for name, m in models.items()}
    with torch.no_grad():
        timings = time_interleaved(cases, device, reps=reps, desc="whole model")
    rows = []
    for name, t in timings.items():
        rows.append({"part": "model", "shape": f"BERT-base B={B} T={T}" if not quick else f"tiny B={B} T={T}",
                     "block": "32" if not quick else "16", "density": 1.0 if name == "dense" else float(name.split()[-1]),
                     "provider": name, **t, "x_dense": timings["dense"]["median_ms"] / t["median_ms"],
                     "tokens_per_s": B * T / (t["median_ms"] * 1e-3), "max_abs_err": checks.get(name)})
    return rows


def plot(rows, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    layer = [r for r in rows if r["part"] == "layer" and r["provider"] != "dense"]
    shapes = sorted({r["shape"] for r in layer})
    fig, axes = plt.subplots(1, len(shapes), figsize=(5 * len(shapes), 4), squeeze=False)
    for ax, shape in zip(axes[0], shapes):
        for key in sorted({(r["provider"], r["block"]) for r in layer if r["shape"] == shape}):
            pts = sorted((r["density"], r["x_dense"]) for r in layer if r["shape"] == shape
                         and (r["provider"], r["block"]) == key)
            ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=f"{key[0]} ({key[1]})")
        ax.axhline(1.0, color="grey", linewidth=0.8)
        ax.set_xscale("log")
        ax.set_xlabel("density (kept fraction)")
        ax.set_ylabel("speedup over dense nn.Linear")
        ax.set_title(shape)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


COLUMNS = [("part", "part", ""), ("shape", "shape", ""), ("block", "block", ""), ("density", "density", ""),
           ("provider", "provider", ""), ("median ms", "median_ms", "{:.3f}"), ("p20 ms", "p20_ms", "{:.3f}"),
           ("p80 ms", "p80_ms", "{:.3f}"), ("x dense", "x_dense", "{:.2f}x"), ("kept GFLOP/s", "gflops", "{:.1f}"),
           ("tokens/s", "tokens_per_s", "{:.0f}"), ("max abs err vs masked", "max_abs_err", "{:.1e}")]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu",
                        help="cpu or cuda (default: cuda when there is a GPU)")
    parser.add_argument("--quick", action="store_true", help="tiny shapes, few repetitions (smoke test)")
    parser.add_argument("--parts", nargs="+", default=["layers", "model"], choices=["layers", "model"],
                        help="per-layer part, whole-model part, or both")
    parser.add_argument("--reps", type=int, default=None, help="timed repetitions (default 10 CPU, 30 GPU)")
    parser.add_argument("--densities", nargs="+", type=float, default=DENSITIES, help="kept fractions")
    parser.add_argument("--blocks", nargs="+", default=BLOCKS, choices=BLOCKS, help="block sides, or whole rows")
    add_output_args(parser)
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    gpu = device.type == "cuda"
    if not gpu:
        steady_state_malloc()
    dtype = torch.bfloat16 if gpu else torch.float32
    T = 4096 if gpu else 1024
    reps = args.reps or (30 if gpu else 10)
    shapes, densities, blocks = SHAPES, args.densities, args.blocks
    B, seq = (32, 128) if gpu else (8, 128)
    if args.quick:
        shapes, densities, blocks, T, reps, B, seq = [(128, 64)], [1.0, 0.5, 0.1], ["16", "rows"], 64, 3, 2, 16
    env = environment(device)
    print(f"# pruned throughput on {env['device_name']} (torch {env['torch']}), {str(dtype).replace('torch.', '')}",
          flush=True)
    rows = []
    if "layers" in args.parts:
        for N, K in shapes:
            for block in blocks:
                for d in densities:
                    rows += layer_rows(N, K, block, d, T, dtype, device, reps)
    if "model" in args.parts:
        rows += model_rows(densities, B, seq, dtype, device, max(3, reps // 2), args.quick)
    table = markdown_table(rows, [c for c in COLUMNS if any(r.get(c[1]) is not None for r in rows)])
    print(table)
    if not args.no_save:
        folder = output_dir(args)
        name = "pruned_throughput" + ("_quick" if args.quick else "")
        for path in write_results(name, env, rows, table, folder, __doc__.split("\n\n", 2)[1].strip()):
            print(f"wrote {path}")
        if any(r["part"] == "layer" for r in rows):
            print("wrote " + plot(rows, os.path.join(folder, f"{name}_{env['device']}.png")))
    bad = [r for r in rows if r.get("max_abs_err") is not None and not r["max_abs_err"] <= 1e-3]
    for r in bad:
        print(f"PARITY FAILURE: {r['provider']} differs from the masked model by {r['max_abs_err']:.2e}",
              file=sys.stderr)
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
