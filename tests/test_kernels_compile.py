"""Every Triton kernel configuration compiles for real GPUs (sm_80, sm_90), not just in the interpreter."""
import os
import subprocess
import sys
import warnings

import pytest
import torch

from conftest import HAS_TRITON


@pytest.mark.slow
@pytest.mark.skipif(not HAS_TRITON, reason="Triton is not installed")
def test_every_kernel_configuration_compiles_for_sm80_and_sm90():
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    proc = subprocess.run([sys.executable, "-m", "bermo.kernels.compile"], env=env, capture_output=True,
                          text=True, timeout=3000)
    lines = proc.stdout.strip().splitlines()
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    assert not [line for line in lines if line.startswith("FAIL")]
    compiled = [line for line in lines if line.startswith("ok")]
    assert any("sm_80" in line for line in compiled) and any("sm_90" in line for line in compiled)
    from bermo.kernels.compile import configurations, kernel_modules, ones_specialisations

    assert "bermo.kernels.scalar_mix_triton" in kernel_modules()  # found without a hand-kept list
    ones = [line for line in compiled if "=1]" in line]
    assert len(compiled) - len(ones) == 2 * len(list(configurations())), lines[-1]
    # each integer argument as the constexpr 1 a launch with it 1 compiles, on the newest arch
    assert len(ones) == len(list(ones_specialisations())) and all(" sm_90 " in line for line in ones)
    assert lines[-1].endswith(", 0 failed")
    # Every aligned configuration's widest load is a 16-byte vector.
    # (an argument of 1 can leave nothing to vectorise, a block one input wide [bi=1]: not those lines)
    assert all("widest ld=128b" in line for line in compiled if "aligned=True" in line and line not in ones)


@pytest.mark.skipif(not HAS_TRITON, reason="Triton is not installed")
def test_every_integer_argument_of_every_kernel_is_also_compiled_as_one():
    """A launch with an integer argument equal to 1 compiles a kernel where it is a constexpr (``n.to(...)``
    then fails to compile): each kernel's integer arguments are all in the check's list, for every set of its
    boolean flags."""
    import importlib

    from bermo.kernels.compile import kernel_modules, ones_specialisations

    listed = {}
    for module_name, index, name in ones_specialisations():
        cfg = list(importlib.import_module(module_name).compile_configurations())[index]
        listed.setdefault((module_name, cfg[1].__name__, tuple(sorted(
            (k, v) for k, v in cfg[3].items() if isinstance(v, bool)))), set()).add(name)
    for module_name in kernel_modules():
        for _, fn, signature, constexprs, *_ in importlib.import_module(module_name).compile_configurations():
            flags = tuple(sorted((k, v) for k, v in constexprs.items() if isinstance(v, bool)))
            ints = {n for n, ty in signature.items() if ty in ("i32", "i64")}
            assert ints <= listed[(module_name, fn.__name__, flags)]


def test_access_report_reads_ptx():
    from bermo.kernels.compile import access_summary, vector_failures

    ptx = ("ld.global.v4.b32 {%r1, %r2, %r3, %r4}, [%rd1+0];\n  ld.global.b16 %rs1, [%rd2+0];\n"
           "  @%p1 st.global.v2.b32 [%rd3+0], {%r5, %r6};\n  ld.global.L1::evict_last.b64 %rd4, [%rd5+0];\n")
    assert access_summary(ptx, 16) == {"ld": (128, 1), "st": (64, 0)}
    label = "k bf16 BLOCK_R=2 BLOCK_C=32 warps=1 ints=i32 aligned={}"
    twin_narrow = {"ld": (128, 2), "st": (16, 2)}
    good = {"ld": (128, 0), "st": (128, 0)}
    assert not vector_failures({(label.format(True), 90): good, (label.format(False), 90): twin_narrow})
    bad = {"ld": (128, 0), "st": (16, 2)}  # the stores stayed element by element
    assert vector_failures({(label.format(True), 90): bad, (label.format(False), 90): twin_narrow})


def test_compile_refuses_to_run_under_the_interpreter():
    env = dict(os.environ, TRITON_INTERPRET="1")
    proc = subprocess.run([sys.executable, "-m", "bermo.kernels.compile"], env=env, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 2 and "TRITON_INTERPRET is set" in proc.stderr


@pytest.mark.skipif(not HAS_TRITON or os.environ.get("TRITON_INTERPRET") != "1",
                    reason="records the launches through Triton's interpreter")
def test_every_launched_configuration_is_in_the_compile_list(monkeypatch):
    """Every launch the ops make (constexprs, warps, stages) over dtypes, block shapes, mask kinds, density hints,
    bias, sizes and views is one of compile_configurations(): a configuration only the interpreter ran could fail
    to compile on a real GPU (the masked linear's gradient epilogue took the block-sum granularity of blocks whose
    mask needed no gradient: 14 configurations per dtype never compiled). The kernels are recorded, not run."""
    import inspect

    from triton.runtime.interpreter import InterpretedFunction

    from bermo.kernels import block_sparse_linear_triton, masked_linear_triton, scalar_mix_triton
    from bermo.ops.block_sparse_linear import block_sparse_linear
    from bermo.ops.masked_linear import masked_linear
    from bermo.ops.scalar_mix import scalar_mix

    def constexpr_names(fn):
        return [n for n, p in inspect.signature(fn).parameters.items() if "constexpr" in str(p.annotation)]

    compiled = set()
    for module in (masked_linear_triton, block_sparse_linear_triton, scalar_mix_triton):
        for label, kernel, signature, constexprs, _div16, warps, *stages in module.compile_configurations():
            fn = kernel.fn
            compiled.add((fn.__name__, tuple((n, constexprs[n]) for n in constexpr_names(fn)), warps,
                          stages[0] if stages else 3))
    launched = {}

    def record(self, *args, grid, warmup, **kwargs):
        values = dict(zip(self.arg_names, args), **kwargs)
        names = constexpr_names(self.fn)
        # DOT_F32: the interpreter's float32 dot for 16-bit tiles; compiled kernels keep 16-bit operands
        key = (self.fn.__name__, tuple((n, False if n == "DOT_F32" else values[n]) for n in names),
               kwargs.get("num_warps", 4), kwargs.get("num_stages", 3))
        launched.setdefault(key, scenario[0])

    monkeypatch.setattr(InterpretedFunction, "run", record)
    scenario = [""]
    gen = torch.Generator().manual_seed(0)
    for dtype in (torch.float32, torch.bfloat16, torch.float16):
        for N, K in ((192, 384), (96, 160)):
            blocks = [(1, 1), (1, K), (N, 1), (16, 16), (32, 32), (64, 64), (32, 64), (16, 48), (2, 32), (3, 5)]
            for bs in [b for b in blocks if N % b[0] == 0 and K % b[1] == 0]:
                nb = (N // bs[0], K // bs[1])
                keep = torch.rand(nb, generator=gen) < 0.4
                keep.view(-1)[0] = True
                for kind, density, bias, M in (("bool", None, True, 16), ("grad", 0.1, False, 37),
                                               ("nograd", 0.5, True, 1), ("grad", None, True, 16)):
                    scenario[0] = f"masked_linear {dtype} {N}x{K} {bs} mask={kind} density={density}"
                    x = torch.randn(M, K, generator=gen).to(dtype).requires_grad_()
                    w = torch.randn(N, K, generator=gen).to(dtype).requires_grad_()
                    m = keep if kind == "bool" else keep.float().requires_grad_(kind == "grad")
                    b = torch.randn(N, generator=gen).to(dtype).requires_grad_() if bias else None
                    y = masked_linear(x, w, m, b, bs, backend="triton", density=density)
                    y.backward(torch.ones_like(y))
                scenario[0] = f"block_sparse_linear {dtype} {N}x{K} {bs}"
                W = torch.randn(N, K, generator=gen) * torch.kron(keep.float(), torch.ones(bs))
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")  # "Sparse BSR tensor support is in beta state"
                    bsr = W.to(dtype).to_sparse_bsr(bs)
                for bias in (None, torch.zeros(N, dtype=dtype)):
                    block_sparse_linear(torch.randn(5, K, generator=gen).to(dtype), bsr.crow_indices(),
                                        bsr.col_indices(), bsr.values(), bias, N, backend="triton")
        for H in (1, 48, 100, 768, 1024):
            for L, layer_norm, stacked in ((1, False, False), (3, True, False), (2, False, True)):
                scenario[0] = f"scalar_mix {dtype} H={H} L={L} layer_norm={layer_norm} stacked={stacked}"
                layers = torch.randn(L, 2, 8, H, generator=gen).to(dtype).requires_grad_()
                s = torch.zeros(L, requires_grad=True)
                g = torch.ones(1, requires_grad=True)
                mask = torch.ones(2, 8, dtype=torch.bool) if layer_norm else None
                out = scalar_mix(layers if stacked else list(layers.unbind(0)), s, g, mask, do_layer_norm=layer_norm,
                                 backend="triton")
                out.backward(torch.ones_like(out))
    assert len(launched) > 20
    missing = {key: where for key, where in launched.items() if key not in compiled}
    assert not missing, "\n".join(f"{k} (e.g. {w})" for k, w in sorted(missing.items(), key=str)[:20])
