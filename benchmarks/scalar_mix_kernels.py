"""The ScalarMix Triton kernels alone, in their two variants: 16-byte vector access (``aligned``, what the
launchers pick for aligned tensors) against element-by-element access (``unaligned``, the fallback).

    python benchmarks/scalar_mix_kernels.py [--quick] [--dtypes bfloat16 float32] [--out DIR] [--no-save]

Each kernel is launched through its launcher with prepared arguments and timed on the device alone
(``triton.testing.do_bench``: median, L2 flushed between launches), so the host's Python overhead, which
``benchmarks/scalar_mix.py`` includes, stays out. Bytes are the minimum each pass moves, N = B*T*H elements:
forward reads L layers and writes the output, (L+1)N; backward reads the output gradient and L layers and
writes L layer gradients, (2L+1)N; layer-norm statistics read L layers, LN; layer-norm backward as the
backward. "% copy" is achieved GB/s over the device's measured copy bandwidth (bytes read + written), the
floor of a memory-bound pass. The table ends with the host overhead of one ScalarMix call (forward, and
forward + backward) on a tiny input, where the device work is negligible: what a call costs the CPU.

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
from common import copy_bandwidth_gbs, environment, markdown_table, time_fn, write_results  # noqa: E402


def _timer(device):
    if device.type == "cuda":
        import triton.testing

        return lambda fn: triton.testing.do_bench(fn, warmup=25, rep=100, return_mode="median")
    return lambda fn: time_fn(fn, device, reps=3, warmup=1)["median_ms"]


def kernel_cases(B, T, H, L, dtype, device):
    """``{kernel: (fn(aligned), bytes)}`` for the four passes, with fixed random inputs."""
    from bermo.kernels import scalar_mix as k
    from bermo.kernels.layout import acc_dtype

    gen = torch.Generator(device="cpu").manual_seed(0)
    acc = acc_dtype(dtype)
    layers = [torch.randn(B, T, H, generator=gen).to(device=device, dtype=dtype) for _ in range(L)]
    g = torch.randn(B, T, H, generator=gen).to(device=device, dtype=dtype)
    coef = torch.rand(L, generator=gen).to(device=device, dtype=acc)
    center = torch.randn(L, generator=gen).to(device=device, dtype=acc)
    row_mask = (torch.rand(B * T, generator=gen) > 0.2).to(device=device, dtype=acc)
    need = [True] * L
    N, esize = B * T * H, torch.empty((), dtype=dtype).element_size()
    return {
        "forward": (lambda a: k.mix_forward(layers, coef, center, aligned=a), (L + 1) * N * esize),
        "backward": (lambda a: k.mix_backward(g, layers, coef, center, need, True, aligned=a),
                     (2 * L + 1) * N * esize),
        "ln_stats": (lambda a: k.ln_stats(layers, row_mask, aligned=a), L * N * esize),
        "ln_backward": (lambda a: k.ln_backward(g, layers, row_mask, coef, coef, coef, center, need, aligned=a),
                        (2 * L + 1) * N * esize),
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


COLUMNS = [("shape", "shape", ""), ("dtype", "dtype", ""), ("kernel", "kernel", ""), ("access", "access", ""),
           ("median us", "us", "{:.1f}"), ("GB/s", "gbs", "{:.0f}"), ("% copy BW", "pct_copy", "{:.0f}%"),
           ("x unaligned", "speedup", "{:.2f}x")]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu",
                        help="cuda, or cpu (Triton interpreter; --quick only)")
    parser.add_argument("--quick", action="store_true", help="one tiny shape (a smoke test of the script)")
    parser.add_argument("--dtypes", nargs="+", default=["bfloat16", "float32"],
                        choices=["float32", "bfloat16", "float16", "float64"], help="dtypes to run")
    parser.add_argument("--out", default=None, help="results folder (default benchmarks/results)")
    parser.add_argument("--no-save", action="store_true", help="print the table only")
    args = parser.parse_args(argv)
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
    print(f"# ScalarMix kernels on {env['device_name']} (torch {env['torch']}, triton {env['triton']}); "
          f"measured copy bandwidth {copy_bw:.0f} GB/s", flush=True)
    rows = []
    for B, T, H, L in shapes:
        for dtype_name in args.dtypes:
            dtype = getattr(torch, dtype_name)
            for kernel, (fn, nbytes) in kernel_cases(B, T, H, L, dtype, device).items():
                times = {}
                for access, aligned in (("vector", None), ("unaligned", False)):
                    ms = timer(lambda: fn(aligned))
                    times[access] = ms
                    gbs = nbytes / (ms * 1e-3) / 1e9
                    rows.append({"shape": f"B={B} T={T} H={H} L={L}", "dtype": dtype_name, "kernel": kernel,
                                 "access": access, "us": ms * 1e3, "gbs": gbs, "pct_copy": 100 * gbs / copy_bw,
                                 "bytes": nbytes})
                rows[-2]["speedup"] = times["unaligned"] / times["vector"]
                rows[-1]["speedup"] = 1.0
    table = markdown_table(rows, COLUMNS)
    overhead = host_overhead_us(13, device, reps=20 if args.quick else 200)
    lines = [f"Host overhead of one ScalarMix(13) call on a (1, 1, 16) input (device work negligible): "
             + ", ".join(f"{mode} {us:.0f} us" for mode, us in overhead.items())]
    print(table)
    print(lines[0])
    if not args.no_save:
        notes = (f"Measured copy bandwidth: {copy_bw:.0f} GB/s. Kernel time alone (triton.testing.do_bench median, "
                 "L2 flushed). Bytes: forward (L+1)N, backward (2L+1)N, ln_stats LN, ln_backward (2L+1)N elements. "
                 + lines[0] + ".")
        for row in rows:
            row["copy_bw_gbs"] = copy_bw
        for path in write_results("scalar_mix_kernels" + ("_quick" if args.quick else ""), env, rows, table,
                                  args.out, notes):
            print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
