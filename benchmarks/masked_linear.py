"""Benchmark bermo.masked_linear against dense nn.Linear and the eager masked linear of today's movement-pruning
code, side by side in one run.

    python benchmarks/masked_linear.py [--quick] [--device cpu|cuda] [--densities 1.0 0.5 0.1] [--record]

Providers: ``dense`` (``F.linear(x, W, b)``: no pruning at all), ``eager masked`` (``F.linear(x, W * M, b)`` with
the block mask expanded to the weight and a straight-through float mask that needs a gradient, as the
movement-pruning reference code does it) and ``bermo`` (``bermo.masked_linear`` with the kept-fraction hint
``density=d`` that ``MaskedLinear`` passes for topK and magnitude, auto backend: Triton on a GPU, the C++ kernels
on a CPU). Modes: ``forward`` (autograd on, as in training) and ``train step`` (forward and
backward with the gradients of x, W, b and the mask scores). Shapes are BERT-base's (768x768 attention,
3072x768 FFN in, 768x3072 FFN out) at 1024 tokens on a CPU, 4096 on a GPU; float32 on a CPU, bfloat16 on a GPU.

Useful FLOPs: forward ``2 T N K d`` (d = the kept fraction of the weights); train step adds the input gradient
``2 T N K d`` and the weight/score gradient ``2 T N K`` (dense: the straight-through score gradient needs
``dY^T X`` at pruned weights too). TFLOP/s = useful FLOPs / median time, for every provider, so a dense
provider's figure is lower than the work it does. Errors: max |x - ref| / max |ref| against float64 over the
output and every gradient; the run exits non-zero, writing no files, when bermo's error exceeds its dtype's
tolerance (bf16 6e-3, fp16 1e-3: 1.5-2x one rounding; float32 1e-4).

Timing (GPU): ``call`` times each provider called from Python as usual (host work included: on a slow host
the launches, not the device, set the time); ``graph`` times the replay of a CUDA graph holding ``GRAPH_CALLS``
(20) of the same calls, divided among them (what ``torch.compile(mode="reduce-overhead")`` users get): the
device work alone, without the replay's own ~5 us launch. bermo builds its
kept-tile lists on the device without a host sync, so its calls are capturable. The ratio columns compare
providers within one timing; graph rows' errors are those of the replayed outputs.
"""
from __future__ import annotations

import argparse
import os
import sys

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import (GRAPH_CALLS, add_output_args, environment, markdown_table, output_dir, parse_args,  # noqa: E402
                    per_call, steady_state_malloc, time_interleaved, write_results)

import bermo.ops.masked_linear  # noqa: E402,F401
from bermo.ops.masked_linear import expand_mask  # noqa: E402

ml = sys.modules["bermo.ops.masked_linear"]
# bermo's largest error against float64 (outputs and every gradient, relative to each one's largest value). A 16-bit
# result rounded once is off by at most 2**-8 (bf16) / 2**-11 (fp16) of it: these bounds are 1.5-2x that, so a
# kernel 1% off fails (the eager masked linear's own error is in the table, for comparison; it is no excuse).
PARITY_TOL = {torch.float32: 1e-4, torch.bfloat16: 6e-3, torch.float16: 1e-3}
BLOCKS = {"1x1": lambda N, K: (1, 1), "32x32": lambda N, K: (32, 32), "rows": lambda N, K: (1, K)}
SHAPES = [(768, 768), (3072, 768), (768, 3072)]  # (out, in)


def make_case(T, N, K, block_shape, density, dtype, device, seed=0):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(T, K, generator=gen).to(device=device, dtype=dtype)
    w = (torch.randn(N, K, generator=gen) / K ** 0.5).to(device=device, dtype=dtype)
    b = torch.randn(N, generator=gen).to(device=device, dtype=dtype)
    nb = (N // block_shape[0], K // block_shape[1])
    keep = torch.zeros(nb[0] * nb[1], dtype=torch.bool)
    keep[torch.randperm(keep.numel(), generator=gen)[:max(1, round(density * keep.numel()))]] = True
    mask = keep.view(nb).float().to(device)  # a 0/1 float mask: the straight-through topK mask of the scores
    dy = torch.randn(T, N, generator=gen).to(device=device, dtype=dtype)
    return x, w, b, mask, dy


def providers(block_shape, density):
    def dense(x, w, b, m):
        return F.linear(x, w, b)

    def eager(x, w, b, m):
        return F.linear(x, w * expand_mask(m, block_shape).to(w.dtype), b)

    def ours(x, w, b, m):  # with the kept-fraction hint MaskedLinear passes for topK / magnitude
        return ml.masked_linear(x, w, m, b, block_shape, density=density)

    return {"dense": dense, "eager masked": eager, "bermo": ours}


def reference(x, w, b, m, dy, block_shape):
    leaves = [t.detach().double().requires_grad_() for t in (x, w, b, m)]
    x64, w64, b64, m64 = leaves
    y = F.linear(x64, w64 * expand_mask(m64, block_shape), b64)
    return [y.detach(), *torch.autograd.grad(y, leaves, dy.double())]


def rel_err(got, want):
    """The largest error relative to each reference's largest value; a missing result (a gradient not computed)
    is an infinite error, so the parity gate reports it."""
    return max(float("inf") if a is None else
               ((a.detach().double().cpu() - r.cpu()).abs().max() / r.abs().max().clamp_min(1e-30)).item()
               for a, r in zip(got, want))


def capture(make_fn):
    """``(graph, static outputs, fn)`` for ``fn = make_fn()`` called ``GRAPH_CALLS`` times in the graph (the
    outputs: the last call's), or None when it cannot be captured. Keep ``fn``
    alive as long as the graph: it holds the graph's input tensors (freed, the replays would read freed memory).

    ``make_fn`` builds the call on fresh leaves; it runs, is warmed up and is captured on one side stream, so the
    autograd engine's streams for those leaves (set where they are first used) are the capturing stream itself:
    leaves first used on the default (legacy) stream make the backward sync that stream with the capture, which
    CUDA refuses (seen with torch 2.11)."""
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    try:
        with torch.cuda.stream(stream):
            fn = make_fn()
            for _ in range(3):
                fn()
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph, stream=stream):
                for _ in range(GRAPH_CALLS):  # a replay's launch cost spread over the calls
                    out = fn()
        torch.cuda.current_stream().wait_stream(stream)
        graph.replay()
        torch.cuda.synchronize()
    except Exception as exc:  # say so, and time the call alone
        torch.cuda.synchronize()
        print(f"no CUDA graph: {type(exc).__name__}: {str(exc).splitlines()[0]}", file=sys.stderr)
        return None
    return graph, out, fn


def bench_case(T, N, K, block_name, density, dtype, device, reps, graphs=False):
    block_shape = BLOCKS[block_name](N, K)
    x, w, b, mask, dy = make_case(T, N, K, block_shape, density, dtype, device)
    kept = mask.mean().item()
    leaves = [t.detach().clone().requires_grad_() for t in (x, w, b, mask)]
    want = reference(x, w, b, mask, dy, block_shape)
    flops = {"forward": 2 * T * N * K * kept, "train step": 2 * T * N * K * (2 * kept + 1)}
    cases = {"forward": {}, "train step": {}}
    errors = {}
    for name, fn in providers(block_shape, density).items():
        y = fn(*leaves)
        grads = torch.autograd.grad(y, leaves, dy, allow_unused=True)
        if name == "dense":
            errors[(name, "call")] = None  # computes another function (no pruning)
        else:
            errors[(name, "call")] = rel_err([y, *grads], want)

        def forward(fn=fn):
            return fn(*leaves)

        def step(fn=fn):
            return torch.autograd.grad(fn(*leaves), leaves, dy, allow_unused=True)
        cases["forward"][(name, "call")] = (forward, None)
        cases["train step"][(name, "call")] = (step, None)
        if graphs:
            def make(mode, fn=fn):
                g_leaves = [t.detach().clone().requires_grad_() for t in leaves]
                g_dy = dy.clone()
                if mode == "forward":
                    return lambda: fn(*g_leaves)
                return lambda: torch.autograd.grad(fn(*g_leaves), g_leaves, g_dy, allow_unused=True)
            for mode, ref in (("forward", want[:1]), ("train step", want[1:])):
                captured = capture(lambda mode=mode: make(mode))
                if captured is None:
                    continue
                graph, out, keep = captured
                out = [out] if isinstance(out, torch.Tensor) else list(out)
                errors[(name, "graph", mode)] = None if name == "dense" else rel_err(out, ref)
                cases[mode][(name, "graph")] = (lambda graph=graph, keep=keep: graph.replay(), None)
    rows = []
    for mode, mode_cases in cases.items():
        named = {f"{p} ({t})": c for (p, t), c in mode_cases.items()}
        timings = time_interleaved(named, device, reps=reps, desc=f"{mode} {N}x{K} {block_name} {density}")
        timings = {k: per_call(v) if k.endswith("(graph)") else v for k, v in timings.items()}
        for (name, timing) in mode_cases:
            if f"eager masked ({timing})" not in timings or f"dense ({timing})" not in timings:
                continue  # (a graph that could not be captured for a baseline: no ratios to give)
            t = timings[f"{name} ({timing})"]
            err = errors[(name, "call")] if timing == "call" else errors[(name, "graph", mode)]
            rows.append({"shape": f"{N}x{K} T={T}", "block": block_name, "density": density, "kept": kept,
                         "dtype": str(dtype).replace("torch.", ""), "mode": mode, "timing": timing, "provider": name,
                         **t, "tflops": flops[mode] / (t["median_ms"] * 1e-3) / 1e12,
                         "x_eager": timings[f"eager masked ({timing})"]["median_ms"] / t["median_ms"],
                         "x_dense": timings[f"dense ({timing})"]["median_ms"] / t["median_ms"],
                         "max_rel_err": err})
    return rows


COLUMNS = [("shape", "shape", ""), ("block", "block", ""), ("density", "density", ""), ("mode", "mode", ""),
           ("timing", "timing", ""), ("provider", "provider", ""), ("median ms", "median_ms", "{:.3f}"),
           ("p20 ms", "p20_ms", "{:.3f}"), ("p80 ms", "p80_ms", "{:.3f}"), ("useful TFLOP/s", "tflops", "{:.3f}"),
           ("x eager masked", "x_eager", "{:.2f}x"), ("x dense", "x_dense", "{:.2f}x"),
           ("max rel err", "max_rel_err", "{:.1e}")]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu",
                        help="cpu or cuda (default: cuda when there is a GPU)")
    parser.add_argument("--quick", action="store_true", help="one small shape, few repetitions (smoke test)")
    parser.add_argument("--reps", type=int, default=None, help="timed repetitions per provider (default 10 CPU, 30 GPU)")
    parser.add_argument("--tokens", type=int, default=None, help="tokens per batch (default 1024 CPU, 4096 GPU)")
    parser.add_argument("--densities", nargs="+", type=float, default=[1.0, 0.5, 0.1], help="kept fractions")
    parser.add_argument("--blocks", nargs="+", default=list(BLOCKS), choices=list(BLOCKS), help="mask block shapes")
    parser.add_argument("--shape", nargs=2, type=int, action="append", metavar=("OUT", "IN"),
                        help="your own weight shape (repeat for several; default BERT-base's three)")
    parser.add_argument("--dtype", default=None, choices=["float32", "bfloat16", "float16"],
                        help="default float32 on a CPU, bfloat16 on a GPU")
    parser.add_argument("--no-graphs", action="store_true",
                        help="GPU: skip the CUDA-graph timing (by default each provider is timed both ways)")
    add_output_args(parser)
    args = parse_args(parser, argv)
    device = torch.device(args.device)
    gpu = device.type == "cuda"
    graphs = gpu and not args.no_graphs
    if device.type == "cpu":
        steady_state_malloc()
    dtype = getattr(torch, args.dtype) if args.dtype else (torch.bfloat16 if gpu else torch.float32)
    shapes = [tuple(s) for s in args.shape] if args.shape else SHAPES
    T = args.tokens or (4096 if gpu else 1024)
    reps = args.reps or (30 if gpu else 10)
    densities, blocks = args.densities, args.blocks
    if args.quick:
        shapes, T, reps, densities, blocks = [(64, 96)], 64, 3, [1.0, 0.1], ["32x32", "1x1"]
    env = environment(device)
    print(f"# masked linear benchmark on {env['device_name']} (torch {env['torch']}, triton {env['triton']}), "
          f"{T} tokens, {str(dtype).replace('torch.', '')}", flush=True)
    rows = []
    for N, K in shapes:
        for block_name in blocks:
            for density in densities:
                case = bench_case(T, N, K, block_name, density, dtype, device, reps, graphs)
                rows += case
                print("\n".join(markdown_table(case, COLUMNS).splitlines()[2:]), flush=True)  # rows as they come
    table = markdown_table(rows, COLUMNS)
    print("\n" + table)
    # The parity gate first: a run that fails it writes no result files (a --record run would replace the
    # committed tables with a wrong kernel's).
    bad = [r for r in rows if r["provider"] == "bermo" and not r["max_rel_err"] <= PARITY_TOL[dtype]]
    for r in bad:
        print(f"PARITY FAILURE: bermo {r['shape']} {r['block']} {r['density']} {r['mode']} ({r['timing']}): "
              f"max rel err {r['max_rel_err']:.2e} (tolerance {PARITY_TOL[dtype]:.0e})", file=sys.stderr)
    if not args.no_save and not bad:
        for path in write_results("masked_linear" + ("_quick" if args.quick else ""), env, rows, table,
                                  output_dir(args), __doc__.split("\n\n", 2)[2].strip()):
            print(f"wrote {path}")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
