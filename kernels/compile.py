"""Compile every Triton kernel configuration for sm_80 and sm_90 without a GPU, and check its memory access.

    python -m bermo.kernels.compile [--arch 80 90] [--jobs N] [--filter TEXT]

The Triton interpreter forgives things a real compile rejects and hides speed; this runs the real pipeline
(TTIR -> TTGIR -> LLVM -> PTX -> cubin with ptxas) for each configuration the launchers can pick, and prints
one line per configuration and arch: registers, stack and spill (local memory) bytes as ``cuobjdump`` reports
them, and the widest global load and store in the PTX with the count of element-wide scalar ones. It exits
non-zero when a configuration fails to compile, spills, or when an ``aligned=True`` configuration still
reads or writes a layer element by element (it must have fewer element-wide accesses than its
``aligned=False`` twin, and 16-byte vector loads). Every module of ``bermo.kernels`` that defines
``compile_configurations()`` is found and compiled.

Triton compiles a launch whose integer argument equals 1 as another kernel, with that argument a constexpr 1
(a runtime value is an i32 tensor, a constexpr is not: ``n.to(tl.int64)`` works on one only). So for one
configuration per kernel and set of flags, each integer argument is also compiled as 1, in turn, for the
newest arch asked for (lines marked ``[name=1]``).
"""
from __future__ import annotations

import argparse
import importlib
import os
import pkgutil
import re
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor

ELEMENT_BITS = {"fp16": 16, "bf16": 16, "fp32": 32, "fp64": 64}


def kernel_modules():
    """Names of the modules of this package that define ``compile_configurations()``."""
    package = importlib.import_module(__package__ or "bermo.kernels")
    names = []
    for info in sorted(pkgutil.iter_modules(package.__path__), key=lambda i: i.name):
        name = f"{package.__name__}.{info.name}"
        if info.name == "compile" or info.ispkg:
            continue
        if hasattr(importlib.import_module(name), "compile_configurations"):
            names.append(name)
    return names


def configurations():
    """``(module_name, index, label)`` of every configuration of every kernel module."""
    for module_name in kernel_modules():
        module = importlib.import_module(module_name)
        for i, cfg in enumerate(module.compile_configurations()):
            yield module_name, i, cfg[0]


def ones_specialisations():
    """``(module_name, index, argument)`` for each integer argument of one configuration per kernel and set of
    boolean flags (the first the module lists)."""
    for module_name in kernel_modules():
        module = importlib.import_module(module_name)
        seen = set()
        for i, (_, fn, signature, constexprs, *_rest) in enumerate(module.compile_configurations()):
            key = (getattr(fn, "__name__", str(fn)),
                   tuple(sorted((k, v) for k, v in constexprs.items() if isinstance(v, bool))))
            if key in seen:
                continue
            seen.add(key)
            for name, ty in signature.items():
                if ty in ("i32", "i64"):
                    yield module_name, i, name


def _resource_usage(cubin: bytes):
    from triton import knobs

    with tempfile.NamedTemporaryFile(suffix=".cubin", delete=False) as f:
        f.write(cubin)
    try:
        out = subprocess.run([knobs.nvidia.cuobjdump.path, "--dump-resource-usage", f.name],
                             capture_output=True, text=True, timeout=60).stdout
    except Exception as exc:  # the usage report is informative only
        return f"(no resource usage: {exc})", 0
    finally:
        os.unlink(f.name)
    m = re.search(r"REG:(\d+) STACK:(\d+) SHARED:(\d+) LOCAL:(\d+)", out)
    if not m:
        return "(no resource usage)", 0
    return f"regs={m[1]} stack={m[2]}B shared={m[3]}B spill(local)={m[4]}B", int(m[4])


_ACCESS = re.compile(r"\b(ld|st)\.global((?:\.[\w:]+)*?)\.([bfsu])(\d+)\s")


_ASYNC_COPY = re.compile(r"\bcp\.async\.(?:ca|cg)\.shared\.global(?:\.[\w:]+)*\s+\[[^\]]*\],\s*\[[^\]]*\],\s*(0x[0-9a-fA-F]+|\d+)")


def global_accesses(ptx: str):
    """``[(kind, vector_lanes, bits_per_lane), ...]`` for every ld.global / st.global in ``ptx``, and the
    asynchronous global-to-shared copies (``cp.async``, how matrix kernels load their tiles) as loads."""
    out = []
    for kind, quals, _, bits in _ACCESS.findall(ptx):
        vec = re.search(r"\.v(\d)", quals)
        out.append((kind, int(vec[1]) if vec else 1, int(bits)))
    out += [("ld", 1, 8 * int(nbytes, 0)) for nbytes in _ASYNC_COPY.findall(ptx)]
    return out


def access_summary(ptx: str, elem_bits: int):
    """``{"ld": (widest bits, element-wide scalar count), "st": (...)}`` of the global accesses in ``ptx``.

    Element-wide scalar accesses are those exactly one element wide: a layer read element by element shows
    one per element a thread holds; scalar parameter reads (coefficients, means, the row mask, the address
    table when elements are 64-bit) are a handful more."""
    acc = global_accesses(ptx)
    return {k: (max([v * b for kk, v, b in acc if kk == k] or [0]),
                sum(1 for kk, v, b in acc if kk == k and v == 1 and b == elem_bits)) for k in ("ld", "st")}


def _dtype_bits(label: str) -> int:
    return next(ELEMENT_BITS[w] for w in label.split() if w in ELEMENT_BITS)


def _compile_one(job):
    """``(ok, line, access summary or None)`` for one configuration and arch (and an integer argument given as
    the constexpr 1 a launch with that argument 1 compiles, or None)."""
    module_name, index, arch, one = job
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    module = importlib.import_module(module_name)
    label, fn, signature, constexprs, div16, warps, *stages = list(module.compile_configurations())[index]
    names = list(signature)
    attrs = {(names.index(n),): [["tt.divisibility", 16]] for n, ty in signature.items()
             if ty.startswith("*") or (n in div16 and n != one)}
    if one is not None:
        signature, constexprs = {**signature, one: "constexpr"}, {**constexprs, one: 1}
        label = f"{label} [{one}=1]"
    start = time.perf_counter()
    try:
        src = ASTSource(fn=fn, signature=signature, constexprs=constexprs, attrs=attrs)
        options = {"num_warps": warps, **({"num_stages": stages[0]} if stages else {})}
        compiled = triton.compile(src, target=GPUTarget("cuda", arch, 32), options=options)
    except Exception as exc:
        msg = str(exc).strip().splitlines()
        return False, f"FAIL sm_{arch}  {label}: {type(exc).__name__}: {' | '.join(msg[-5:])}", None
    usage, spill = _resource_usage(compiled.asm["cubin"])
    summary = access_summary(compiled.asm["ptx"], _dtype_bits(label))
    (ld_bits, ld_narrow), (st_bits, st_narrow) = summary["ld"], summary["st"]
    access = f"widest ld={ld_bits}b st={st_bits}b element-wide ld={ld_narrow} st={st_narrow}"
    ok = spill == 0
    line = (f"{'ok  ' if ok else 'FAIL'} sm_{arch}  {label}  {usage}  {access}  ({time.perf_counter() - start:.1f}s)"
            + ("" if ok else "  <- spills to local memory"))
    return ok, line, summary


def _elements_per_thread(label: str) -> int:
    v = dict(re.findall(r"(BLOCK_R|BLOCK_C|warps)=(\d+)", label))
    return int(v["BLOCK_R"]) * int(v["BLOCK_C"]) // (32 * int(v["warps"]))


def vector_failures(results) -> list:
    """Lines for every aligned=True configuration that still touches a layer element by element: its widest
    load must be a 16-byte vector, and where its aligned=False twin reads or writes element by element (at
    least one element-wide access per element a thread holds), it must have fewer such accesses."""
    bad = []
    for (label, arch), summary in results.items():
        if "aligned=True" not in label or summary is None:
            continue
        twin = results.get((label.replace("aligned=True", "aligned=False"), arch))
        if twin is None:
            continue
        problems = []
        if summary["ld"][0] < 128:
            problems.append(f"widest load {summary['ld'][0]} bits")
        per_thread = _elements_per_thread(label)
        for kind in ("ld", "st"):
            if twin[kind][1] >= per_thread and summary[kind][1] >= twin[kind][1]:
                problems.append(f"{summary[kind][1]} element-wide {kind} (the unaligned twin has {twin[kind][1]})")
        if problems:
            bad.append(f"FAIL sm_{arch}  {label}: a layer accessed element by element: {'; '.join(problems)}")
    return bad


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", type=int, nargs="+", default=[80, 90], help="compute capabilities to build for")
    parser.add_argument("--jobs", type=int, default=os.cpu_count() or 1, help="parallel compiles")
    parser.add_argument("--filter", default="", help="only configurations whose label contains this text")
    args = parser.parse_args(argv)
    from .dtypes import triton_interpreting

    if triton_interpreting():
        print("TRITON_INTERPRET is set: the kernels would be interpreted, not compiled; unset it", file=sys.stderr)
        return 2
    labels = {(m, i): label for m, i, label in configurations()}
    jobs = [(m, i, arch, None) for m, i, label in configurations() if args.filter in label for arch in args.arch]
    jobs += [(m, i, max(args.arch), one) for m, i, one in ones_specialisations() if args.filter in labels[(m, i)]]
    failures = 0
    results = {}
    start = time.perf_counter()
    with ProcessPoolExecutor(max_workers=max(1, args.jobs)) as pool:
        for job, (ok, line, summary) in zip(jobs, pool.map(_compile_one, jobs)):
            print(line, flush=True)
            failures += not ok
            if job[3] is None:
                results[(labels[job[:2]], job[2])] = summary
    for line in vector_failures(results):
        print(line, flush=True)
        failures += 1
    ones = sum(1 for job in jobs if job[3] is not None)
    print(f"{len(jobs) - ones} configurations x arch and {ones} with an integer argument 1 compiled in "
          f"{time.perf_counter() - start:.0f}s, {failures} failed")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
