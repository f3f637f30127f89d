"""Helpers shared by the benchmarks: device facts, timing, copy bandwidth, tables and result files."""
from __future__ import annotations

import datetime as _dt
import json
import os
import platform
import re
import statistics
import time
from typing import Callable, Dict, List, Sequence

import torch
from tqdm import tqdm

HERE = os.path.dirname(os.path.abspath(__file__))
RESULTS_DIR = os.path.join(HERE, "results")  # committed tables: written only with --record
RUNS_DIR = os.path.join(HERE, "runs")        # every other run (ignored by git)


def add_output_args(parser) -> None:
    """The options every benchmark shares for where its table and rows go."""
    parser.add_argument("--out", default=None,
                        help="folder for this run's .md table and .json rows (default benchmarks/runs, ignored by git)")
    parser.add_argument("--record", action="store_true",
                        help="write into benchmarks/results, the tables the project commits (not with --quick)")
    parser.add_argument("--no-save", action="store_true", help="print the table only")


def parse_args(parser, argv=None):
    """``parser.parse_args(argv)``, with the output options checked at once (``--record --quick`` is refused
    before the run, not after it)."""
    args = parser.parse_args(argv)
    output_dir(args)
    return args


def output_dir(args) -> str:
    """Where a run writes: --out if given, benchmarks/results with --record (a full run only), else runs/."""
    if args.out:
        return args.out
    if getattr(args, "record", False):
        if getattr(args, "quick", False):
            raise SystemExit("--record writes the committed tables: not from a --quick run")
        return RESULTS_DIR
    return RUNS_DIR


def show_progress() -> bool:
    """Progress bars only on a terminal: redirected logs stay free of carriage-return noise."""
    import sys

    return sys.stderr.isatty()


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    model = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            found = re.search(r"model name\s*:\s*(.+)", f.read())
        model = found.group(1).strip() if found else model
    except OSError:
        pass
    return f"{model} ({torch.get_num_threads()} threads)"


def environment(device: torch.device) -> Dict[str, str]:
    try:
        import triton

        triton_version = triton.__version__
    except Exception:
        triton_version = "not installed"
    try:
        import transformers

        transformers_version = transformers.__version__
    except Exception:
        transformers_version = "not installed"
    return {"device": device.type, "device_name": device_name(device), "torch": torch.__version__,
            "triton": triton_version, "transformers": transformers_version, "python": platform.python_version(),
            "date": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")}


def steady_state_malloc() -> bool:
    """Keep glibc from returning freed memory to the OS (no trimming, no per-allocation mmap).

    Every provider allocates its outputs afresh each step; with glibc's defaults, multi-MB blocks are mmapped
    or trimmed and page-faulted in again at random, which adds several ms of noise to whichever provider it
    hits. Applied once for the whole run, so all providers are measured alike. Returns whether it applied."""
    try:
        import ctypes

        libc = ctypes.CDLL("libc.so.6")
        M_TRIM_THRESHOLD, M_TOP_PAD, M_MMAP_THRESHOLD = -1, -2, -3
        ok = libc.mallopt(M_MMAP_THRESHOLD, 1 << 30) == 1
        ok &= libc.mallopt(M_TRIM_THRESHOLD, 1 << 30) == 1
        ok &= libc.mallopt(M_TOP_PAD, 256 << 20) == 1
        return bool(ok)
    except (OSError, AttributeError):
        return False


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class _CacheFlusher:
    """Writes a buffer larger than the GPU's L2 between timed runs so no run starts with warm inputs."""

    def __init__(self, device: torch.device):
        self.buf = torch.empty(256 * 2**20, dtype=torch.int8, device=device) if device.type == "cuda" else None

    def __call__(self) -> None:
        if self.buf is not None:
            self.buf.zero_()


def _time_once(fn: Callable[[], object], device: torch.device) -> float:
    if device.type == "cuda":
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        # the GPU idle when timing starts: else the host's work inside fn (argument checks, allocations, kernel
        # launches) overlaps the cache flush still running before the start event, and up to its ~90 us of host
        # time per call went unmeasured (the "call" rows recorded before this fix are optimistic by that much)
        torch.cuda.synchronize(device)
        start.record()
        fn()
        end.record()
        torch.cuda.synchronize(device)
        return start.elapsed_time(end)
    t0 = time.perf_counter()
    fn()
    return (time.perf_counter() - t0) * 1e3


def time_interleaved(cases: Dict[str, tuple], device: torch.device, reps: int = 30, warmup: int = 3,
                     desc: str = None) -> Dict[str, Dict[str, float]]:
    """Median and 20th/80th percentile milliseconds of each case ``name: (fn, setup or None)``.

    The cases take turns within every repetition, in alternating order (A, B, C, C, B, A, ...), so the
    drifts of a noisy machine and the cache a predecessor leaves hit all of them alike and their ratios stay
    meaningful; ``setup()`` runs untimed before each call, and
    on a GPU the L2 cache is flushed before each timed call. ``desc`` shows a progress bar."""
    flush = _CacheFlusher(device)
    for _ in range(warmup):
        for fn, setup in cases.values():
            if setup is not None:
                setup()
            fn()
    synchronize(device)
    times: Dict[str, List[float]] = {name: [] for name in cases}
    order = list(cases)
    for rep in tqdm(range(reps), desc=desc, leave=False, disable=desc is None or not show_progress()):
        for name in (order if rep % 2 == 0 else order[::-1]):  # alternate who goes first
            fn, setup = cases[name]
            if setup is not None:
                setup()
            flush()
            times[name].append(_time_once(fn, device))
    out = {}
    for name, t in times.items():
        q = statistics.quantiles(t, n=10, method="inclusive") if len(t) >= 2 else [t[0]] * 9
        out[name] = {"median_ms": statistics.median(t), "p20_ms": q[1], "p80_ms": q[7]}
    return out


def time_fn(fn: Callable[[], object], device: torch.device, reps: int = 30, warmup: int = 5,
            setup: Callable[[], object] = None) -> Dict[str, float]:
    """Median and 20th/80th percentile milliseconds of ``fn()`` alone."""
    return time_interleaved({"fn": (fn, setup)}, device, reps, warmup)["fn"]


GRAPH_CALLS = 20  # calls captured in one CUDA graph: a replay's own launch cost (~5 us) spread over them


def capture_graph(fn: Callable[[], object], calls: int = GRAPH_CALLS):
    """``(graph, last output)``: ``fn`` warmed up on a side stream, then ``calls`` calls of it captured in one
    CUDA graph (replayed once, so the outputs hold values). For calls with no autograd leaves; see
    ``masked_linear.py: capture`` for training steps."""
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        for _ in range(3):
            fn()
    torch.cuda.current_stream().wait_stream(stream)
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        for _ in range(calls):
            out = fn()
    graph.replay()
    torch.cuda.synchronize()
    return graph, out


def per_call(timing: Dict[str, float], calls: int = GRAPH_CALLS) -> Dict[str, float]:
    """A graph replay's timing (``median_ms``, ``p20_ms``, ``p80_ms``) divided among the calls it holds."""
    return {k: v / calls for k, v in timing.items()}


def copy_bandwidth_gbs(device: torch.device, nbytes: int = None) -> float:
    """Measured device copy bandwidth (bytes read + bytes written per second) for a large ``copy_``."""
    nbytes = nbytes or (1 << 30 if device.type == "cuda" else 1 << 28)
    src = torch.empty(nbytes // 4, dtype=torch.float32, device=device).uniform_()
    dst = torch.empty_like(src)
    t = time_fn(lambda: dst.copy_(src), device, reps=20, warmup=3)
    return 2 * nbytes / (t["median_ms"] * 1e-3) / 1e9


def markdown_table(rows: Sequence[Dict], columns: Sequence[tuple]) -> str:
    """``columns``: (header, key, format) triples; a missing value prints as '-'."""
    lines = ["| " + " | ".join(h for h, _, _ in columns) + " |",
             "|" + "|".join("---" for _ in columns) + "|"]
    for row in rows:
        cells = []
        for _, key, fmt in columns:
            value = row.get(key)
            cells.append("-" if value is None else (fmt.format(value) if fmt else str(value)))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")[:60]


def write_results(name: str, env: Dict[str, str], rows: Sequence[Dict], table: str, out_dir: str = None,
                  notes: str = "") -> List[str]:
    """Write ``<name>_<device>.json`` (environment + rows) and ``.md`` (the table); return their paths.

    One file pair per benchmark and device, overwritten by the next run there: the last run on each device."""
    out_dir = out_dir or RUNS_DIR
    os.makedirs(out_dir, exist_ok=True)
    base = os.path.join(out_dir, f"{name}_{env['device']}-{slug(env['device_name'])}")
    with open(base + ".json", "w") as f:
        json.dump({"environment": env, "rows": list(rows)}, f, indent=1)
    header = (f"# {name} on {env['device_name']}\n\n"
              f"torch {env['torch']}, triton {env['triton']}, transformers {env['transformers']}, "
              f"python {env['python']}, {env['date']}\n\n")
    with open(base + ".md", "w") as f:
        f.write(header + (notes + "\n\n" if notes else "") + table + "\n")
    return [base + ".json", base + ".md"]
