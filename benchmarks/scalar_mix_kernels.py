"""The ScalarMix Triton kernels alone, in their two variants: 16-byte vector access (``aligned``, what the
launchers pick for aligned tensors) against element-by-element access (``unaligned``, the fallback).

    python benchmarks/scalar_mix_kernels.py [--quick] [--dtypes bfloat16 float32] [--out DIR] [--no-save]

Each kernel is launched directly, with the configuration its launcher picks and arguments prepared once (checked
against the launcher's results first), and timed on the device alone (20 calls captured in a CUDA graph; the median
of 30 replays, each after an L2 flush, divided by 20), so the host's Python overhead, which
``benchmarks/scalar_mix.py`` includes, stays out. Bytes are the minimum each pass moves,
N = B*T*H elements: forward reads L layers and writes the output, (L+1)N; backward reads the output gradient
and L layers and writes L layer gradients, (2L+1)N; layer-norm statistics read L layers, LN; layer-norm
backward as the backward. "% copy" is achieved GB/s over the device's measured copy bandwidth (bytes read +
written), the floor of a memory-bound pass. The table ends with the host overhead of one ScalarMix call (forward,
and forward + backward) on a tiny input, where the device work is negligible: what a call costs the CPU.

On a machine without a GPU it runs through the Triton interpreter with --quick (a smoke test of the script);
the numbers then mean nothing.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import (GRAPH_CALLS, add_output_args, capture_graph, copy_bandwidth_gbs, environment,  # noqa: E402
                    markdown_table, output_dir, parse_args, per_call, time_fn, write_results)


def _timer(device):
    """``timer(fn)``: milliseconds of one ``fn()`` on the device. On a GPU, ``GRAPH_CALLS`` calls captured in one
    CUDA graph, the median of 30 replays (the L2 flushed before each, so the first call of a replay starts cold,
    the later ones may find some of their inputs in the L2) divided among the calls: the device work alone.
    (``triton.testing.do_bench``, used before, records its start event, then lets the host launch ``fn``: on a
    VM whose Triton launch costs ~100 us, more than the flush before it keeps the GPU busy, the idle wait for the
    launch was counted: the H200 run of 2026-11-27 read 109 us for a forward whose copy floor is ~21 us, bf16 as
    slow as float32.) The kernels are launched directly (``kernel_cases``), so every call is capturable."""
    if device.type != "cuda":
        return lambda fn: time_fn(fn, device, reps=3, warmup=1)["median_ms"]

    def timer(fn):
        graph, _ = capture_graph(fn)
        ms = per_call(time_fn(graph.replay, device, reps=30, warmup=3))["median_ms"]
        del graph
        return ms
    return timer


def warm_up_gpu(device, seconds=2.0):
    """Matrix products for a couple of seconds, so the clocks have ramped up before the first timing (an
    idle H100 sits at 345 MHz; the first kernels measured would otherwise pay the ramp)."""
    if device.type != "cuda":
        return
    a = torch.randn(8192, 8192, device=device, dtype=torch.bfloat16)
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        for _ in range(10):
            a @ a
        torch.cuda.synchronize()


def time_pair(timer, fn_a, fn_b):
    """Median ms of two variants measured A, B, B, A: ``(a, b, spread)`` with each the mean of its two runs and
    spread the largest relative difference between a variant's two runs."""
    a1, b1, b2, a2 = timer(fn_a), timer(fn_b), timer(fn_b), timer(fn_a)
    return (a1 + a2) / 2, (b1 + b2) / 2, max(abs(a1 - a2) / min(a1, a2), abs(b1 - b2) / min(b1, b2))


def kernel_cases(B, T, H, L, dtype, device):
    """``{kernel: (fn(aligned), bytes)}`` for the four passes, with fixed random inputs: each ``fn`` launches the
    kernel alone, with the launcher's configuration (tiles, warps, the vector variant unless ``aligned=False``)
    and its pointer tables, outputs and workspaces made once beforehand. (Through the launchers, a call captured
    in a CUDA graph also captured one fill per address for its new tables: up to 50 small launches per call.)"""
    from bermo.kernels import scalar_mix_triton as k
    from bermo.kernels.layout import acc_dtype, as_rows, pointer_table

    gen = torch.Generator(device="cpu").manual_seed(0)
    acc = acc_dtype(dtype)
    layers = [torch.randn(B, T, H, generator=gen).to(device=device, dtype=dtype) for _ in range(L)]
    g = torch.randn(B, T, H, generator=gen).to(device=device, dtype=dtype)
    coef = torch.rand(L, generator=gen).to(device=device, dtype=acc)
    center = torch.randn(L, generator=gen).to(device=device, dtype=acc)
    alpha, beta = (torch.randn(L, generator=gen).to(device=device, dtype=acc) for _ in range(2))
    row_mask = (torch.rand(B * T, generator=gen) > 0.2).to(device=device, dtype=acc)
    layout, views = as_rows(layers)
    grads = [torch.empty_like(v) for v in views]
    out = torch.empty_like(layers[0])
    table, gtable = pointer_table(views, device), pointer_table(grads, device)
    block_r, block_c, warps = k.block_config(dtype, layout.cols)
    programs = k._programs(layout, block_r, block_c)
    partials = torch.empty(programs, 3 * L + 1, dtype=acc, device=device)
    dims = (layout.rows, layout.cols, layout.row_stride, L)
    tiles = dict(BLOCK_R=block_r, BLOCK_C=block_c, num_warps=warps)
    N, esize = B * T * H, torch.empty((), dtype=dtype).element_size()

    def forward(a):
        k.scalar_mix_fwd_kernel[(programs,)](table, coef, center, out, *dims,
                                             ALIGNED=k._aligned(layout, views, a), **tiles)

    def backward(a):
        k.scalar_mix_bwd_kernel[(programs,)](g, table, gtable, coef, center, partials, *dims, COMPUTE_DOTS=True,
                                             WRITE_GRADS=True, ALIGNED=k._aligned(layout, views + grads, a), **tiles)

    def stats(a):
        k.ln_stats_kernel[(programs,)](table, row_mask, partials, *dims, DTYPE=k.triton_dtype(dtype),
                                       ALIGNED=k._aligned(layout, views, a), **tiles)

    def ln_backward(a):
        k.ln_bwd_kernel[(programs,)](g, table, gtable, row_mask, coef, alpha, beta, center, *dims,
                                     ALIGNED=k._aligned(layout, views + grads, a), **tiles)

    def check():
        """The direct launches compute what the launchers do (same arguments, in the same order)."""
        need = [True] * L
        for a in (None, False):
            forward(a)
            backward(a)  # (stats below reuse the workspace: these sums are compared first)
            want = k.mix_forward(layers, coef, center, aligned=a)
            torch.testing.assert_close(out, want, rtol=0, atol=0, msg=f"forward (aligned={a})")
            want_grads, want_sums = k.mix_backward(g, layers, coef, center, need, True, aligned=a)
            for got, w in zip(grads, want_grads):
                torch.testing.assert_close(got.view_as(w), w, rtol=0, atol=0, msg=f"backward (aligned={a})")
            sums = partials.view(-1)[:programs * (L + 1)].view(programs, L + 1).sum(0)  # (its rows are L + 1 long)
            torch.testing.assert_close(sums, want_sums, msg=f"backward sums (aligned={a})")
            stats(a)
            count, mean, m2, shift = k.ln_stats(layers, row_mask, aligned=a)
            torch.testing.assert_close(partials, torch.cat([count[:, None], mean, m2, shift], 1), rtol=0, atol=0,
                                       msg=f"ln_stats (aligned={a})")
            ln_backward(a)
            want_grads = k.ln_backward(g, layers, row_mask, coef, alpha, beta, center, need, aligned=a)
            for got, w in zip(grads, want_grads):
                torch.testing.assert_close(got.view_as(w), w, rtol=0, atol=0, msg=f"ln_backward (aligned={a})")

    check()
    return {
        "forward": (forward, (L + 1) * N * esize),
        "backward": (backward, (2 * L + 1) * N * esize),
        "ln_stats": (stats, L * N * esize),
        "ln_backward": (ln_backward, (2 * L + 1) * N * esize),
    }


def host_overhead_us(L, device, reps=200):
    """Median wall time of one ScalarMix call (forward; forward + backward) on a (1, 1, 16) input, synced."""
    from bermo import ScalarMix

    mix = ScalarMix(L).to(device)
    xs = [torch.randn(1, 1, 16, device=device, requires_grad=True) for _ in range(L)]
    out = {}
    for mode, fn in (("forward", lambda: mix(xs)), ("forward+backward", lambda: mix(xs).sum().backward())):
        times = []
        for i in range(reps + 10):
            if device.type == "cuda":
                torch.cuda.synchronize()
            t0 = time.perf_counter()
            fn()
            if device.type == "cuda":
                torch.cuda.synchronize()
            if i >= 10:
                times.append((time.perf_counter() - t0) * 1e6)
        out[mode] = statistics.median(times)
    return out


def profile_host(L, device, calls=200):
    """cProfile of ScalarMix forward + backward calls on a tiny input: where the host time goes."""
    import cProfile
    import pstats

    from bermo import ScalarMix

    mix = ScalarMix(L).to(device)
    xs = [torch.randn(1, 1, 16, device=device, requires_grad=True) for _ in range(L)]
    for _ in range(10):
        mix(xs).sum().backward()
    prof = cProfile.Profile()
    prof.enable()
    for _ in range(calls):
        mix(xs).sum().backward()
    if device.type == "cuda":
        torch.cuda.synchronize()
    prof.disable()
    print(f"# host profile of {calls} ScalarMix({L}) forward + backward calls")
    pstats.Stats(prof).sort_stats("tottime").print_stats(18)


def tune(device, timer, copy_bw, quick=False):
    """Forward and backward kernels at BERT-base and BERT-large bfloat16 over tile sizes and warps, both access
    variants: which launch configuration comes closest to the copy bandwidth."""
    from bermo.kernels import scalar_mix_triton as k
    from bermo.kernels.layout import as_rows, pointer_table

    shapes = [(2, 4, 64, 3)] if quick else [(32, 128, 768, 13), (32, 128, 1024, 25)]
    tiles = [4096] if quick else [2048, 4096, 8192, 16384]
    rows = []
    for B, T, H, L in shapes:
        layers = [torch.randn(B, T, H, device=device, dtype=torch.bfloat16) for _ in range(L)]
        g = torch.randn(B, T, H, device=device, dtype=torch.bfloat16)
        grads = [torch.empty_like(g) for _ in range(L)]
        layout, views = as_rows(layers)
        table, gtable = pointer_table(views, device), pointer_table(grads, device)
        coef, center = torch.rand(L, device=device), torch.zeros(L, device=device)
        N = B * T * H
        for tile in tiles:
            for warps in (4, 8):
                for aligned in (True, False):
                    block_c = 256
                    block_r = tile // block_c
                    grid = (k._programs(layout, block_r, block_c),)  # the launchers' program count
                    partials = torch.empty(grid[0], L + 1, device=device)

                    def fwd():
                        out = torch.empty_like(g)
                        k.scalar_mix_fwd_kernel[grid](table, coef, center, out, layout.rows, layout.cols,
                                                      layout.row_stride, L, BLOCK_R=block_r, BLOCK_C=block_c,
                                                      ALIGNED=aligned, num_warps=warps)

                    def bwd():
                        k.scalar_mix_bwd_kernel[grid](g, table, gtable, coef, center, partials, layout.rows,
                                                      layout.cols, layout.row_stride, L, BLOCK_R=block_r,
                                                      BLOCK_C=block_c, COMPUTE_DOTS=True, WRITE_GRADS=True,
                                                      ALIGNED=aligned, num_warps=warps)
                    for name, fn, nbytes in (("forward", fwd, (L + 1) * N * 2), ("backward", bwd, (2 * L + 1) * N * 2)):
                        fn()
                        ms = timer(fn)
                        gbs = nbytes / (ms * 1e-3) / 1e9
                        rows.append({"shape": f"H={H} L={L}", "kernel": name, "tile": tile, "warps": warps,
                                     "aligned": aligned, "us": ms * 1e3, "gbs": gbs,
                                     "pct_copy": 100 * gbs / copy_bw})
    rows.sort(key=lambda r: (r["shape"], r["kernel"], -r["gbs"]))
    return "# tile sweep, bfloat16\n" + markdown_table(rows, [
        ("shape", "shape", ""), ("kernel", "kernel", ""), ("tile", "tile", ""), ("warps", "warps", ""),
        ("aligned", "aligned", ""), ("us", "us", "{:.1f}"), ("GB/s", "gbs", "{:.0f}"), ("% copy", "pct_copy", "{:.0f}%")])


COLUMNS = [("shape", "shape", ""), ("dtype", "dtype", ""), ("kernel", "kernel", ""), ("access", "access", ""),
           ("median us", "us", "{:.1f}"), ("GB/s", "gbs", "{:.0f}"), ("% copy BW", "pct_copy", "{:.0f}%"),
           ("x unaligned", "speedup", "{:.2f}x"), ("run-to-run %", "spread", "{:.0f}%")]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu",
                        help="cuda, or cpu (Triton interpreter; --quick only)")
    parser.add_argument("--quick", action="store_true", help="one tiny shape (a smoke test of the script)")
    parser.add_argument("--dtypes", nargs="+", default=["bfloat16", "float32"],
                        choices=["float32", "bfloat16", "float16", "float64"], help="dtypes to run")
    add_output_args(parser)
    parser.add_argument("--profile-host", action="store_true",
                        help="also print where the host time of a ScalarMix call goes (cProfile)")
    parser.add_argument("--tune", action="store_true",
                        help="also sweep tile sizes and warps of the forward and backward kernels")
    args = parse_args(parser, argv)
    device = torch.device(args.device)
    if device.type == "cpu" and not args.quick:
        print("scalar_mix_kernels: times Triton kernels on a GPU; without one only --quick runs (interpreted)")
        return 0
    if device.type == "cpu":
        os.environ.setdefault("TRITON_INTERPRET", "1")
    shapes = [(2, 4, 64, 3)] if args.quick else [(32, 128, 768, 13), (32, 128, 1024, 25)]
    env = environment(device)
    copy_bw = copy_bandwidth_gbs(device)
    timer = _timer(device)
    warm_up_gpu(device)
    print(f"# ScalarMix kernels on {env['device_name']} (torch {env['torch']}, triton {env['triton']}); "
          f"measured copy bandwidth {copy_bw:.0f} GB/s", flush=True)
    rows = []
    for B, T, H, L in shapes:
        for dtype_name in args.dtypes:
            dtype = getattr(torch, dtype_name)
            for kernel, (fn, nbytes) in kernel_cases(B, T, H, L, dtype, device).items():
                fn(None), fn(False)  # compile both variants before timing
                vec, una, spread = time_pair(timer, lambda: fn(None), lambda: fn(False))
                for access, ms in (("vector", vec), ("unaligned", una)):
                    gbs = nbytes / (ms * 1e-3) / 1e9
                    rows.append({"shape": f"B={B} T={T} H={H} L={L}", "dtype": dtype_name, "kernel": kernel,
                                 "access": access, "us": ms * 1e3, "gbs": gbs, "pct_copy": 100 * gbs / copy_bw,
                                 "bytes": nbytes, "speedup": una / ms, "spread": 100 * spread})
    table = markdown_table(rows, COLUMNS)
    overhead = host_overhead_us(13, device, reps=20 if args.quick else 200)
    lines = ["Host overhead of one ScalarMix(13) call on a (1, 1, 16) input (device work negligible): "
             + ", ".join(f"{mode} {us:.0f} us" for mode, us in overhead.items())]
    print(table)
    print(lines[0])
    if args.profile_host:
        profile_host(13, device)
    if args.tune:
        print(tune(device, timer, copy_bw, quick=args.quick))
    if not args.no_save:
        notes = (f"Measured copy bandwidth: {copy_bw:.0f} GB/s. Kernel time alone (the kernels launched directly, "
                 f"{GRAPH_CALLS} calls in a CUDA graph, the median of 30 replays after an L2 flush each, divided by "
                 f"{GRAPH_CALLS}). Bytes: forward "
                 "(L+1)N, backward (2L+1)N, ln_stats LN, ln_backward (2L+1)N elements. "
                 + lines[0] + ".")
        for row in rows:
            row["copy_bw_gbs"] = copy_bw
        for path in write_results("scalar_mix_kernels" + ("_quick" if args.quick else ""), env, rows, table,
                                  output_dir(args), notes):
            print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
