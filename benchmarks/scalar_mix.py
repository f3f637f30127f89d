"""Benchmark bermo's ScalarMix against the ways people mix layers today, side by side in one run.

    python benchmarks/scalar_mix.py [--quick] [--device cpu|cuda] [--out DIR] [--no-save]

Providers: ``allennlp`` (AllenNLP's eager loop: softmax, split, weight * tensor per layer, sum), ``stack``
(torch.stack then a weighted sum, as HF and s3prl do), ``compile`` (torch.compile of the AllenNLP loop) and
``bermo`` (bermo.nn.ScalarMix, auto backend: Triton on GPU, the C++ kernel on CPU). Modes: forward (with
autograd on, as in training), backward (output already computed), full (forward + backward). Providers
take turns within every repetition, so a noisy machine's drifts hit them alike.

Bytes are the minimum any implementation must move: forward reads each layer once and writes the output
once, (L + 1) N elements; backward reads the output gradient and each layer once and writes each layer's
gradient once, (2L + 1) N; full is their sum. With ``--layer-norm`` each layer's statistics span the whole
batch, so a pass over the layers must end before the first output element is known: forward (2L + 1) N (the
statistics pass, then the mix), backward (3L + 2) N (per-layer sums of the gradient against each normalised layer,
then the gradients), full (5L + 3) N. GB/s = those bytes / median time; "% copy" compares with the
device's measured ``copy_`` bandwidth. Errors are max |x - ref| against a float64 reference over the output
(and, with a backward, every gradient), relative to max |ref| (for the scalar and gamma gradients, to the
magnitude of the sums they come from, as the softmax backward cancels); the run exits non-zero when bermo's
error exceeds the tolerance of its dtype.
"""
from __future__ import annotations

import argparse
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import (add_output_args, copy_bandwidth_gbs, environment, markdown_table, output_dir,  # noqa: E402
                    parse_args, steady_state_malloc, time_interleaved, write_results)

from bermo import ScalarMix  # noqa: E402

# bermo's largest error against float64, relative to each result's largest value: a 16-bit result rounded once is
# off by at most 2**-8 (bf16) / 2**-11 (fp16) of it; these bounds are 1.5-2x that, so a kernel 1% off fails.
PARITY_TOL = {torch.float64: 1e-10, torch.float32: 1e-5, torch.float16: 1e-3, torch.bfloat16: 6e-3}
# The fewest elements any implementation moves, (a, b) for a L + b times the layer size N (the module docstring).
MIN_ELEMENTS = {"mix": {"forward": (1, 1), "backward": (2, 1), "full": (3, 2)},
                "layer norm": {"forward": (2, 1), "backward": (3, 2), "full": (5, 3)}}


# ------------------------------------------------------------------------------------------------ providers
def allennlp_mix(tensors, scalar_parameters, gamma, mask=None, tiny=None):
    """AllenNLP's ScalarMix.forward data path; with a mask, its masked layer norm of every layer first (``tiny``:
    its eps, by default that of the tensors' dtype)."""
    normed_weights = torch.split(torch.softmax(torch.cat(list(scalar_parameters)), dim=0), 1)
    if mask is None:
        pieces = [weight * tensor for weight, tensor in zip(normed_weights, tensors)]
        return gamma * sum(pieces)
    broadcast_mask = mask.unsqueeze(-1)
    num_elements_not_masked = torch.sum(mask) * tensors[0].size(-1)
    if tiny is None:
        tiny = 1e-13 if tensors[0].dtype in (torch.float32, torch.float64) else 1e-4

    def layer_norm(tensor):
        tensor_masked = tensor * broadcast_mask
        mean = torch.sum(tensor_masked) / num_elements_not_masked
        variance = torch.sum(((tensor_masked - mean) * broadcast_mask) ** 2) / num_elements_not_masked
        return (tensor - mean) / torch.sqrt(variance + tiny)

    return gamma * sum(weight * layer_norm(tensor) for weight, tensor in zip(normed_weights, tensors))


def stack_mix(tensors, scalar_parameters, gamma, mask=None):
    """Stack the layers, then a weighted sum over the layer axis (HF / s3prl style)."""
    stacked = torch.stack(list(tensors))
    weights = torch.softmax(torch.cat(list(scalar_parameters)), dim=0).to(stacked.dtype)
    return gamma.to(stacked.dtype) * (weights.view(-1, *[1] * (stacked.dim() - 1)) * stacked).sum(0)


def make_providers(mixture_size, layer_norm=False):
    compiled = torch.compile(allennlp_mix)
    module = ScalarMix(mixture_size, do_layer_norm=layer_norm)

    def bermo_mix(tensors, scalar_parameters, gamma, mask=None):
        return module(tensors, mask)

    providers = {"allennlp": allennlp_mix, "stack": stack_mix, "compile": compiled, "bermo": bermo_mix}
    if layer_norm:
        del providers["stack"]  # the stack-and-sum recipes have no layer norm
    return module, providers


# ------------------------------------------------------------------------------------------------ running
def case_inputs(B, T, H, L, dtype, device, seed=0):
    gen = torch.Generator(device="cpu").manual_seed(seed)
    layers = [torch.randn(B, T, H, generator=gen).to(device=device, dtype=dtype).requires_grad_() for _ in range(L)]
    grad_out = torch.randn(B, T, H, generator=gen).to(device=device, dtype=dtype)
    lengths = torch.randint(T // 2, T + 1, (B,), generator=gen)  # padded batches, as a tokenizer makes them
    mask = (torch.arange(T)[None, :] < lengths[:, None]).to(device)
    return layers, grad_out, mask


def reference(layers, module, grad_out, with_backward, mask=None):
    """Float64 results and, for each, the scale its error is measured against: max |result| for the output
    and the layer gradients; for the scalar and gamma gradients, which cancel through the softmax, the
    magnitude of the terms they are computed from (gamma * w_k * sum |g| |t_k|)."""
    xs = [t.detach().double().requires_grad_() for t in layers]
    s = [p.detach().double().requires_grad_() for p in module.scalar_parameters]
    g = module.gamma.detach().double().requires_grad_()
    tiny = 1e-13 if layers[0].dtype in (torch.float32, torch.float64) else 1e-4
    out = allennlp_mix(xs, s, g, mask, tiny)  # float64, with the eps of the inputs' own dtype
    results, scales = [out.detach()], [out.abs().max().item()]
    if with_backward:
        grads = torch.autograd.grad(out, xs + s + [g], grad_out.double())
        g64 = grad_out.double().abs()
        w = torch.softmax(torch.cat(s).detach(), 0)
        one = [torch.ones(1, dtype=torch.float64, device=grad_out.device)]
        normed = [x.detach() if mask is None else allennlp_mix([x.detach()], one, 1.0, mask) for x in xs]
        terms = torch.stack([(g64 * x.abs()).sum() for x in normed]) * w
        results += list(grads)
        scales += [t.abs().max().item() for t in grads[:len(xs)]]
        scales += [g.item() * terms.max().item()] * len(s) + [terms.sum().item()]
    return results, scales


def max_rel_error(got, ref):
    results, scales = ref
    return max((a.detach().double() - r).abs().max().item() / (scale or 1.0)
               for a, r, scale in zip(got, results, scales))


def _peak_mib(run, setup, device):
    """Peak GPU memory of one call above what was allocated before it (None on CPU)."""
    if device.type != "cuda":
        return None
    if setup:
        setup()
    torch.cuda.synchronize()
    base = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    run()
    torch.cuda.synchronize()
    return (torch.cuda.max_memory_allocated() - base) / 2**20


def bench_case(shape, dtype, device, modes, reps, copy_bw, layer_norm=False):
    B, T, H, L = shape
    N = B * T * H
    esize = torch.empty((), dtype=dtype).element_size()
    elements = MIN_ELEMENTS["layer norm" if layer_norm else "mix"]
    bytes_by_mode = {mode: (a * L + b) * N * esize for mode, (a, b) in elements.items()}
    layers, grad_out, mask = case_inputs(B, T, H, L, dtype, device)
    mask = mask if layer_norm else None
    module, providers = make_providers(L, layer_norm)
    module.to(device)
    with torch.no_grad():  # non-trivial weights, so a wrong weight shows in the error column
        for k, p in enumerate(module.scalar_parameters):
            p.fill_(0.1 * k - 0.3)
        module.gamma.fill_(1.25)
    params = list(module.scalar_parameters) + [module.gamma]
    inputs = layers + params
    ref_fwd = reference(layers, module, grad_out, with_backward=False, mask=mask)
    ref_all = reference(layers, module, grad_out, with_backward=True, mask=mask) if modes != ["forward"] else None
    errors, cases = {}, {mode: {} for mode in modes}
    for name, fn in providers.items():
        def forward(fn=fn):
            return fn(layers, module.scalar_parameters, module.gamma, mask)

        out = forward()
        # AllenNLP promotes 16-bit inputs to float32: its gradient arrives in the output's dtype.
        g = grad_out.to(out.dtype)
        errors[name] = {"forward": max_rel_error([out], ref_fwd)}
        if ref_all is not None:
            grads = torch.autograd.grad(out, inputs, g, retain_graph=True)
            errors[name]["backward"] = errors[name]["full"] = max_rel_error([out, *grads], ref_all)
        del out
        for mode in modes:
            if mode == "forward":
                cases[mode][name] = (forward, None)
            elif mode == "backward":
                state = {}

                def setup(state=state, forward=forward):
                    state["out"] = forward()

                def run(state=state, g=g):
                    return torch.autograd.grad(state["out"], inputs, g)
                cases[mode][name] = (run, setup)
            else:
                def run(forward=forward, g=g):
                    return torch.autograd.grad(forward(), inputs, g)
                cases[mode][name] = (run, None)
    rows = []
    for mode in modes:
        peaks = {name: _peak_mib(run, setup, device) for name, (run, setup) in cases[mode].items()}
        timings = time_interleaved(cases[mode], device, reps=reps, desc=f"{mode} B={B} L={L} {dtype}")
        for name, t in timings.items():
            gbs = bytes_by_mode[mode] / (t["median_ms"] * 1e-3) / 1e9
            rows.append({"shape": f"B={B} T={T} H={H} L={L}" + (" layer-norm" if layer_norm else ""),
                         "dtype": str(dtype).replace("torch.", ""),
                         "mode": mode, "provider": name, **t, "gbs": gbs, "pct_copy": 100 * gbs / copy_bw,
                         "peak_mb": peaks[name], "max_rel_err": errors[name][mode]})
    for mode in modes:  # speedups, from rows measured side by side in this run
        same = {r["provider"]: r for r in rows if r["mode"] == mode}
        for r in same.values():
            r["x_allennlp"] = same["allennlp"]["median_ms"] / r["median_ms"]
            r["x_compile"] = same["compile"]["median_ms"] / r["median_ms"]
    return rows


COLUMNS = [("shape", "shape", ""), ("dtype", "dtype", ""), ("mode", "mode", ""), ("provider", "provider", ""),
           ("median ms", "median_ms", "{:.3f}"), ("p20 ms", "p20_ms", "{:.3f}"), ("p80 ms", "p80_ms", "{:.3f}"),
           ("GB/s", "gbs", "{:.1f}"), ("% copy BW", "pct_copy", "{:.0f}%"),
           ("x allennlp", "x_allennlp", "{:.2f}x"), ("x compile", "x_compile", "{:.2f}x"),
           ("peak MiB", "peak_mb", "{:.0f}"), ("max rel err", "max_rel_err", "{:.1e}")]


COLUMN_NOTES = (
    "Columns: median/p20/p80 ms of the whole call (on a GPU this includes the host's launch overhead, which "
    "dominates at these sizes: benchmarks/scalar_mix_kernels.py times the kernels alone); GB/s = the minimum "
    "bytes any implementation must move (forward (L+1)N, backward (2L+1)N, full (3L+2)N elements; with layer "
    "norm (2L+1)N, (3L+2)N, (5L+3)N) / median time; % copy BW = that over the device's measured copy_ bandwidth (above 100% means the data came partly "
    "from caches, as at small sizes on a CPU); x allennlp / x compile = their median over this provider's; "
    "peak MiB = GPU memory allocated by one call beyond its inputs; max rel err = max |x - ref| / max |ref| "
    "against float64 over the output and every gradient.")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu",
                        help="cpu or cuda (default: cuda when there is a GPU)")
    parser.add_argument("--quick", action="store_true", help="one small shape, few repetitions (smoke test)")
    parser.add_argument("--reps", type=int, default=None, help="timed repetitions per provider (default 20 CPU, 50 GPU)")
    parser.add_argument("--modes", nargs="+", default=["forward", "backward", "full"],
                        choices=["forward", "backward", "full"], help="which passes to time")
    parser.add_argument("--shape", nargs=4, type=int, action="append", metavar=("B", "T", "H", "L"),
                        help="your own shape: batch, tokens, width, layers (repeat for several)")
    add_output_args(parser)
    parser.add_argument("--dtypes", nargs="+", choices=["float32", "bfloat16", "float16", "float64"],
                        help="dtypes to run (default: float32 on CPU, bfloat16 and float32 on GPU)")
    parser.add_argument("--layer-norm", action="store_true",
                        help="benchmark the layer-normed mix (AllenNLP's do_layer_norm=True) instead")
    parser.add_argument("--default-malloc", action="store_true",
                        help="leave glibc's malloc defaults (CPU runs then include random page-fault noise)")
    args = parse_args(parser, argv)
    device = torch.device(args.device)
    steady = device.type == "cpu" and not args.default_malloc and steady_state_malloc()
    if args.quick:
        shapes, dtypes, reps = [(2, 16, 64, 5)], [torch.float32], args.reps or 5
    elif device.type == "cuda":
        shapes = [(32, 128, 768, 13), (32, 128, 1024, 25)]
        dtypes, reps = [torch.bfloat16, torch.float32], args.reps or 50
    else:
        shapes = [(8, 128, 768, 13), (4, 128, 1024, 25)]
        dtypes, reps = [torch.float32], args.reps or 20
    if args.dtypes:
        dtypes = [getattr(torch, d) for d in args.dtypes]
    if args.shape:
        shapes = [tuple(s) for s in args.shape]
    env = environment(device)
    copy_bw = copy_bandwidth_gbs(device)
    print(f"# ScalarMix benchmark on {env['device_name']} (torch {env['torch']}, triton {env['triton']}); "
          f"measured copy bandwidth {copy_bw:.1f} GB/s" + ("; steady-state malloc" if steady else ""), flush=True)
    rows = []
    for shape in shapes:
        for dtype in dtypes:
            print(f"... B={shape[0]} T={shape[1]} H={shape[2]} L={shape[3]} {dtype}", flush=True)
            rows += bench_case(shape, dtype, device, args.modes, reps, copy_bw, args.layer_norm)
    for r in rows:
        r["copy_bw_gbs"] = copy_bw
    columns = [c for c in COLUMNS if any(r.get(c[1]) is not None for r in rows)]  # peak MiB: GPU only
    table = markdown_table(rows, columns)
    print(table)
    print(COLUMN_NOTES)
    # Parity: bermo's error against float64 within its dtype's tolerance (AllenNLP's eager error is in the table
    # for comparison). The gate runs first: a failing run writes no result files.
    def tolerance(r):
        return PARITY_TOL[getattr(torch, r["dtype"])]
    bad = [r for r in rows if r["provider"] == "bermo" and not r["max_rel_err"] <= tolerance(r)]
    for r in bad:
        print(f"PARITY FAILURE: bermo {r['shape']} {r['dtype']} {r['mode']}: max rel err {r['max_rel_err']:.2e} "
              f"(tolerance {tolerance(r):.0e})", file=sys.stderr)
    if not args.no_save and not bad:
        notes = (f"Measured copy bandwidth: {copy_bw:.1f} GB/s. " + COLUMN_NOTES + " "
                 + ("glibc malloc in steady state (no trimming/mmap) for every provider." if steady else ""))
        name = "scalar_mix" + ("_layer_norm" if args.layer_norm else "") + ("_quick" if args.quick else "")
        for path in write_results(name, env, rows, table, output_dir(args), notes):
            print(f"wrote {path}")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
