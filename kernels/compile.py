"""Compile every Triton kernel configuration for sm_80 and sm_90 without a GPU.

    python -m bermo.kernels.compile [--arch 80 90] [--jobs N]

The Triton interpreter forgives things a real compile rejects; this runs the real pipeline (TTIR -> TTGIR ->
LLVM -> PTX -> cubin with ptxas) for each configuration the launchers can pick, prints one line per
kernel configuration and arch with registers, spill (local memory) and stack bytes as ``cuobjdump`` reports
them, and exits non-zero on any failure. Kernel modules list their configurations in a
``compile_configurations()`` generator; add new kernel modules to ``KERNEL_MODULES``.
"""
from __future__ import annotations

import argparse
import importlib
import os
import re
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor

KERNEL_MODULES = ["bermo.kernels.scalar_mix"]


def _configurations():
    for module_name in KERNEL_MODULES:
        module = importlib.import_module(module_name)
        for i, cfg in enumerate(module.compile_configurations()):
            yield module_name, i, cfg[0]


def _resource_usage(cubin: bytes) -> str:
    from triton import knobs

    with tempfile.NamedTemporaryFile(suffix=".cubin", delete=False) as f:
        f.write(cubin)
    try:
        out = subprocess.run([knobs.nvidia.cuobjdump.path, "--dump-resource-usage", f.name],
                             capture_output=True, text=True, timeout=60).stdout
    except Exception as exc:  # the usage report is informative only
        return f"(no resource usage: {exc})"
    finally:
        os.unlink(f.name)
    m = re.search(r"REG:(\d+) STACK:(\d+) SHARED:(\d+) LOCAL:(\d+)", out)
    return f"regs={m[1]} stack={m[2]}B shared={m[3]}B spill(local)={m[4]}B" if m else "(no resource usage)"


def _compile_one(job):
    module_name, index, arch = job
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    module = importlib.import_module(module_name)
    label, fn, signature, constexprs, div16, warps = list(module.compile_configurations())[index]
    names = list(signature)
    attrs = {(names.index(n),): [["tt.divisibility", 16]] for n, ty in signature.items()
             if ty.startswith("*") or n in div16}
    start = time.perf_counter()
    try:
        src = ASTSource(fn=fn, signature=signature, constexprs=constexprs, attrs=attrs)
        compiled = triton.compile(src, target=GPUTarget("cuda", arch, 32), options={"num_warps": warps})
        usage = _resource_usage(compiled.asm["cubin"])
        return True, f"ok   sm_{arch}  {label}  {usage}  ({time.perf_counter() - start:.1f}s)"
    except Exception as exc:
        msg = str(exc).strip().splitlines()
        return False, f"FAIL sm_{arch}  {label}: {type(exc).__name__}: {' | '.join(msg[-5:])}"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", type=int, nargs="+", default=[80, 90], help="compute capabilities")
    parser.add_argument("--jobs", type=int, default=os.cpu_count() or 1, help="parallel compiles")
    parser.add_argument("--filter", default="", help="only configurations whose label contains this")
    args = parser.parse_args(argv)
    if os.environ.get("TRITON_INTERPRET", "0") not in ("", "0"):
        print("TRITON_INTERPRET is set: the kernels would be interpreted, not compiled; unset it", file=sys.stderr)
        return 2
    jobs = [(m, i, arch) for m, i, label in _configurations() if args.filter in label for arch in args.arch]
    failures = 0
    start = time.perf_counter()
    with ProcessPoolExecutor(max_workers=max(1, args.jobs)) as pool:
        for ok, line in pool.map(_compile_one, jobs):
            print(line, flush=True)
            failures += not ok
    print(f"{len(jobs) - failures} compiled, {failures} failed ({len(jobs)} configurations x arch) "
          f"in {time.perf_counter() - start:.0f}s")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
