"""Tile sweep of the masked-linear and block-sparse GPU kernels, and the crossover of the block-skipping and
dense paths: the evidence behind the constants of ``bermo/kernels/masked_linear_triton.py`` (``MM_TILES``,
``LIST_IN_KERNEL_MAX``, ``J_FIRST``, ``DENSE_FROM``) and ``block_sparse_linear_triton.py`` (``TILES``).

    python benchmarks/masked_linear_sweep.py [--tokens 4096] [--no-tiles] [--experiments] [--densities ...] [--out DIR]

GPU only (bfloat16). Every time is the device time of one call replayed from a CUDA graph (``graph_ms``: 40
calls captured in one graph, the median of 15 replays, divided by 40), so the host's launch cost is left out.
Steps, each on BERT-base shapes (768x768, 3072x768 FFN in, 768x3072 FFN out), 32x32 blocks:

1. the block-skipping forward at density 0.1 for (tokens per program, warps, stages), then the kept-tile lists
   built by their own launch or inside the product, on the best of those (ranked by the geometric mean over
   the shapes);
2. the same for the input gradient (``transpose``);
3. BlockSparseLinear's kernel at density 0.1 for (tokens per program, warps, stages);
4. with the chosen tiles, densities 0.05 to 1.0: block-skipping forward and input gradient, the dense path
   (``W * M`` then cuBLAS), dense ``F.linear`` and eager masked ``F.linear(x, W * M)``, and the parts of the
   weight gradient (cuBLAS product, epilogue, bias reduction): where the paths cross.

``--experiments`` adds the candidate kernels of ``benchmarks/masked_linear_experiments.py`` (forward and
BlockSparseLinear at 0.1, next to the package's kernels in the same run), unmeasured so far; the best flat-list
forward is timed again with its list built on the device per call (``flat_list_kernel``, what the masked linear
would pay), that list build alone, and with each program listing its own group's tiles (``flat_self_kernel``,
no second launch).

The first recorded run (GPU_NOTES call 7) also timed two variants since removed from the kernel (the other
program order, the mask value applied to the product instead of the weight tile: neither helped) and a
kept-tiles-only Triton weight gradient (slower than cuBLAS + epilogue at every density down to 0.05); a later
run timed L2 eviction hints (activation loads evict_last, output stores evict_first: 3-6% faster on the FFN
shapes, since adopted).

Each result is checked against the float32 product (max relative error under 1e-2: some candidates round twice, the
product then the bias, 2 x 2**-8) before it is timed; the package's kernels meet the benchmarks' 6e-3.
"""
from __future__ import annotations

import argparse
import itertools
import math
import os
import sys
import time

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import (add_output_args, capture_graph, environment, markdown_table, output_dir, parse_args,  # noqa: E402
                    write_results)

from bermo.kernels import block_sparse_linear_triton as bst  # noqa: E402
from bermo.kernels import masked_linear_triton as mlt  # noqa: E402

SHAPES = [(768, 768), (3072, 768), (768, 3072)]  # (out, in)
BLOCK = (32, 32)
TILE_GRID = list(itertools.product((64, 128, 256), (4, 8), (2, 3, 4)))  # (tokens per program, warps, stages)
DENSITIES = (0.05, 0.1, 0.2, 0.3, 0.5, 0.7, 1.0)
DEV = "cuda"


def graph_ms(fn, calls: int = 40, reps: int = 15) -> float:
    """Median device time of one ``fn()`` call, replayed from a CUDA graph of ``calls`` calls."""
    graph, _ = capture_graph(fn, calls)
    times = []
    for _ in range(reps):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        graph.replay()
        b.record()
        torch.cuda.synchronize()
        times.append(a.elapsed_time(b) / calls)
    del graph
    return sorted(times)[len(times) // 2]


def case(N, K, density, T, seed=0):
    gen = torch.Generator().manual_seed(seed)
    dev, dt = DEV, torch.bfloat16
    x = torch.randn(T, K, generator=gen).to(dev, dt)
    dy = torch.randn(T, N, generator=gen).to(dev, dt)
    w = (torch.randn(N, K, generator=gen) / K ** 0.5).to(dev, dt)
    b = torch.randn(N, generator=gen).to(dev, dt)
    nb = (N // BLOCK[0], K // BLOCK[1])
    keep = torch.zeros(nb[0] * nb[1])
    keep[torch.randperm(keep.numel(), generator=gen)[:max(1, round(density * keep.numel()))]] = 1.0
    mask = keep.view(nb).to(dev)
    wm = w * mask.repeat_interleave(BLOCK[0], 0).repeat_interleave(BLOCK[1], 1).to(dt)
    bsr = wm.to_sparse_bsr(BLOCK)  # BlockSparseLinear's form of the same weight
    return dict(x=x, dy=dy, w=w, b=b, mask=mask, wm=wm, bsr=(bsr.crow_indices(), bsr.col_indices(), bsr.values(), N))


def check(got, want, what):
    err = ((got.float() - want.float()).abs().max() / want.float().abs().max()).item()
    if not err < 1e-2:
        raise SystemExit(f"PARITY {what}: max rel error {err:.3e}")
    return err


def gmean(values):
    return math.exp(sum(math.log(v) for v in values) / len(values))


def sweep(label, configs, cases, run, want, candidates=False):
    """Time ``run(c, cfg)`` for every config and case; rows and the config with the best geometric mean (None
    when every one failed). A wrong result stops the run, except for ``candidates`` (unmeasured kernels: the
    failure is recorded in the rows and the next one is tried)."""
    rows, scores = [], {}
    for cfg in configs:
        times = []
        for (N, K), c in cases.items():
            try:
                check(run(c, cfg), want(c), f"{label} {cfg} {N}x{K}")
                ms = graph_ms(lambda c=c: run(c, cfg))
            except SystemExit as exc:
                if not candidates:
                    raise
                rows.append({"step": label, "config": str(cfg), "shape": f"{N}x{K}", "ms": None, "note": str(exc)})
                times = None
                break
            except Exception as exc:  # a configuration that does not fit (shared memory): recorded, skipped
                rows.append({"step": label, "config": str(cfg), "shape": f"{N}x{K}", "ms": None,
                             "note": f"{type(exc).__name__}: {str(exc)[:80]}"})
                times = None
                break
            times.append(ms)
            rows.append({"step": label, "config": str(cfg), "shape": f"{N}x{K}", "ms": ms, "note": ""})
        if times:
            scores[cfg] = gmean(times)
        print(f"{label} {cfg}: " + (" ".join(f"{t * 1e3:.1f}us" for t in times) if times else "failed"),
              flush=True)
    if not scores:
        print(f"{label}: every configuration failed", flush=True)
        return rows, None
    best = min(scores, key=scores.get)
    print(f"{label}: best {best} ({scores[best] * 1e3:.1f} us geometric mean)", flush=True)
    return rows, best


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tokens", type=int, default=4096)
    parser.add_argument("--no-tiles", action="store_true",
                        help="skip steps 1-3: the crossovers with the modules' own tiles")
    parser.add_argument("--densities", type=float, nargs="+", default=list(DENSITIES))
    parser.add_argument("--experiments", action="store_true",
                        help="time the candidate forward kernels of masked_linear_experiments.py too")
    add_output_args(parser)
    args = parse_args(parser)
    if DEV == "cuda" and not torch.cuda.is_available():
        raise SystemExit("masked_linear_sweep: needs a GPU")
    torch.manual_seed(0)
    T = args.tokens
    start = time.time()
    rows = []
    sparse = {} if args.no_tiles else {s: case(*s, 0.1, T) for s in SHAPES}

    def fwd(c, cfg):
        return mlt.sparse_mm(c["x"], c["w"], c["mask"], c["b"], BLOCK, False, *cfg)

    def dgrad(c, cfg):
        return mlt.sparse_mm(c["dy"], c["w"], c["mask"], None, BLOCK, True, *cfg)

    def fwd_want(c):
        return F.linear(c["x"].float(), c["wm"].float(), c["b"].float())

    def dgrad_want(c):
        return c["dy"].float() @ c["wm"].float()

    def bsl(c, cfg):
        return bst.forward_with(c["x"], c["bsr"], c["b"], cfg)

    tiles = TILE_GRID
    chosen = {"forward": (mlt.MM_TILES["16bit"], True), "grad input": (mlt.MM_TILES["16bit"], True),
              "block-sparse": (bst.BM, bst._warps(bst.BM, 32), bst.STAGES)}
    for label, run, want in (("forward", fwd, fwd_want), ("grad input", dgrad, dgrad_want)):
        if args.no_tiles:
            break
        r, best = sweep(f"{label} tiles", [(t, False) for t in tiles], sparse, run, want)
        rows += r
        if best is None:  # every tile failed (recorded): the module's own tiles stay chosen
            continue
        r, best2 = sweep(f"{label} lists", [(best[0], False), (best[0], True)], sparse, run, want)
        rows += r
        chosen[label] = best2 or chosen[label]
    if args.experiments:
        import masked_linear_experiments as ex

        sparse = sparse or {s: case(*s, 0.1, T) for s in SHAPES}

        def candidate(c, cfg):
            return ex.rows_per_program_forward(c["x"], c["w"], c["mask"], c["b"], BLOCK, *cfg)

        rows += sweep("forward (package, for the candidates)", [chosen["forward"]], sparse, fwd, fwd_want)[0]
        r, best_ex = sweep("forward candidates (rows per program, tokens, warps, stages, L1)", ex.CANDIDATES,
                           sparse, candidate, fwd_want, candidates=True)
        rows += r
        chosen["forward candidate"] = best_ex
        flat_lists = {}

        def lists_for(c, n_rows):
            key = (id(c), n_rows)
            if key not in flat_lists:
                flat_lists[key] = ex.flat_lists(c["mask"], BLOCK, n_rows)
            return flat_lists[key]

        def flat(c, cfg):
            return ex.flat_rows_forward(c["x"], c["w"], lists_for(c, cfg[0]), c["b"], *cfg)

        r, best_flat = sweep("forward candidates: flat (rows per program, tokens, warps, stages, L1, branch)",
                             ex.FLAT_CANDIDATES, sparse, flat, fwd_want, candidates=True)
        rows += r
        chosen["forward flat candidate"] = best_flat
        if best_flat is not None:  # what the package's masked linear would pay: the list built per call too
            def flat_device(c, cfg):
                return ex.flat_rows_forward(c["x"], c["w"], ex.device_flat_lists(c["mask"], BLOCK, cfg[0]), c["b"],
                                            *cfg)

            rows += sweep("forward flat candidate, its list built on the device per call (flat_list_kernel)",
                          [best_flat], sparse, flat_device, fwd_want, candidates=True)[0]

            def flat_self(c, cfg):
                return ex.flat_self_forward(c["x"], c["w"], c["mask"], c["b"], BLOCK, *cfg)

            self_cfgs = [best_flat] + [c for c in ex.FLAT_SELF_CANDIDATES if c != best_flat]
            r, best_self = sweep("forward flat candidates, each program listing its own group (flat_self_kernel)",
                                 self_cfgs, sparse, flat_self, fwd_want, candidates=True)
            rows += r
            chosen["forward flat self-listing candidate"] = best_self
            for (N, K), c in sparse.items():
                try:
                    ms = graph_ms(lambda c=c: ex.device_flat_lists(c["mask"], BLOCK, best_flat[0]))
                    note = ""
                except Exception as exc:  # recorded, not fatal (a candidate)
                    ms, note = None, f"{type(exc).__name__}: {str(exc)[:80]}"
                rows.append({"step": "flat list alone (flat_list_kernel)", "config": str(best_flat[0]),
                             "shape": f"{N}x{K}", "ms": ms, "note": note})
                print(f"flat list alone {N}x{K}: " + (f"{ms * 1e3:.1f}us" if ms else note), flush=True)

        def flat_bsl(c, cfg):
            lists = lists_for(c, cfg[0])
            key = ("values", id(c), cfg[0])
            if key not in flat_lists:
                flat_lists[key] = ex.list_values(c["bsr"][2], lists)
            return ex.flat_rows_forward(c["x"], c["w"], lists, c["b"], *cfg, values=flat_lists[key])

        rows += sweep("block-sparse (package, for the candidates)", [chosen["block-sparse"]], sparse, bsl,
                      fwd_want)[0]
        r, best_flat_bsl = sweep("block-sparse candidates: flat (rows per program, tokens, warps, stages, L1, "
                                 "branch)", ex.FLAT_BSL_CANDIDATES, sparse, flat_bsl, fwd_want, candidates=True)
        rows += r
        chosen["block-sparse flat candidate"] = best_flat_bsl

    if not args.no_tiles:
        r, best_bsl = sweep("block-sparse tiles", tiles, sparse, bsl, fwd_want)
        rows += r
        chosen["block-sparse"] = best_bsl or chosen["block-sparse"]

    # crossovers with the chosen tiles
    for density in args.densities:
        for (N, K) in SHAPES:
            c = case(N, K, density, T, seed=1)
            f_cfg, d_cfg = chosen["forward"], chosen["grad input"]
            x, dy, w, b, mask = c["x"], c["dy"], c["w"], c["b"], c["mask"]
            expanded = mask.repeat_interleave(32, 0).repeat_interleave(32, 1)
            providers = {
                "forward: block-skipping": (lambda: fwd(c, f_cfg), fwd_want(c)),
                "forward: dense path": (lambda: mlt.forward(x, w, mask, b, BLOCK, True), fwd_want(c)),
                "forward: F.linear (unpruned)": (lambda: F.linear(x, w, b), None),
                "forward: eager masked": (lambda: F.linear(x, w * expanded.to(w.dtype), b), fwd_want(c)),
                "grad input: block-skipping": (lambda: dgrad(c, d_cfg), dgrad_want(c)),
                "grad input: dense path": (lambda: mlt.grad_input(dy, w, mask, BLOCK, True), dgrad_want(c)),
                "grad weight (no mask grad), no bias": (
                    lambda: mlt.grad_weight(dy, x, w, mask, BLOCK, False, False)[0], None),
                "grad weight + mask grad, no bias": (
                    lambda: mlt.grad_weight(dy, x, w, mask, BLOCK, True, False)[0], None),
                "grad weight + mask grad + bias": (
                    lambda: mlt.grad_weight(dy, x, w, mask, BLOCK, True, True)[0], None),
                "grad weight: torch.mm only": (lambda: torch.mm(dy.t(), x), None),
                "bias grad: dy.sum(0)": (lambda: dy.sum(0, dtype=torch.float32), None),
            }
            gw_want = (dy.float().t() @ x.float()) * expanded
            for name, (fn, want) in providers.items():
                out = fn()
                if want is not None:
                    check(out, want, f"{name} {N}x{K} d={density}")
                elif name.startswith("grad weight (") or name.startswith("grad weight +"):
                    check(out, gw_want, f"{name} {N}x{K} d={density}")
                ms = graph_ms(fn)
                rows.append({"step": "crossover", "config": name, "shape": f"{N}x{K}", "density": density,
                             "ms": ms, "note": ""})
            print(f"crossover d={density} {N}x{K}: " + " | ".join(
                f"{r['config']} {r['ms'] * 1e3:.1f}" for r in rows[-len(providers):]), flush=True)
    env = environment(torch.device(DEV))
    for r in rows:
        r.setdefault("density", 0.1)
        r["us"] = None if r["ms"] is None else r["ms"] * 1e3
    notes = (f"bfloat16, {T} tokens, 32x32 blocks; device time per call (CUDA-graph replays, see the script's "
             "docstring). Chosen ((tokens per program, warps, stages), kept-tile lists "
             "built inside the product): " + "; ".join(f"{k}: {v}" for k, v in chosen.items()))
    table = markdown_table(rows, [("step", "step", ""), ("config", "config", ""), ("shape", "shape", ""),
                                  ("density", "density", "{:g}"), ("us", "us", "{:.1f}"), ("note", "note", "")])
    for path in write_results("masked_linear_sweep", env, rows, table, output_dir(args), notes=notes):
        print("wrote", path)
    print(f"total {time.time() - start:.0f}s")


if __name__ == "__main__":
    main()
