"""bermo's C++ CPU kernels: one extension built from every ``csrc/*.cpp`` with ninja through
``torch.utils.cpp_extension`` on first use, and cached.

    python -m bermo.kernels.cpu_extension     # build ahead of time (say, in a Docker image), print where

The cache entry's name hashes everything the binary depends on (the sources and the shared headers, the flags,
the CPU, this torch build and this Python) and the sources' folder (torch's build file names them by absolute
path: two checkouts sharing an entry rebuilt it at every switch), so two environments on one machine never
rebuild or load each other's library. Concurrent first builds of one entry are serialised by an advisory lock
that dies with its process; torch's own lock file, which a build killed midway leaves behind (every later
process then waited on it forever, silently), is removed when no live process holds ours.
"""
from __future__ import annotations

import contextlib
import functools
import glob
import hashlib
import os
import platform
import sys
import time

import torch

CSRC = os.path.join(os.path.dirname(os.path.abspath(__file__)), "csrc")
# -fopenmp makes ATen's header-only at::parallel_for actually run in parallel (it resolves against the OpenMP
# runtime torch has already loaded); -march=native lets the float paths use the widest vectors.
CFLAGS = ["-O3", "-fopenmp", "-march=native"]


def sources():
    return sorted(glob.glob(os.path.join(CSRC, "*.cpp")))


def _cpu_tag() -> str:
    """This CPU's model and feature flags: the build uses -march=native, so a cache shared by machines with
    different CPUs (a network home directory) must not hand one machine's binary to another."""
    try:
        with open("/proc/cpuinfo") as f:
            info = f.read()
        lines = [line for line in info.splitlines() if line.startswith(("model name", "flags", "Features"))]
        return "\n".join(sorted(set(lines)))
    except OSError:
        return platform.processor() + platform.machine()


def headers():
    return sorted(glob.glob(os.path.join(CSRC, "*.h")))


def extension_name() -> str:
    digest = hashlib.sha1()
    for path in sources() + headers():  # a header change must rebuild too
        with open(path, "rb") as f:
            digest.update(os.path.basename(path).encode() + b"\0" + f.read())
    key = "\n".join([digest.hexdigest(), os.path.realpath(CSRC), " ".join(CFLAGS), _cpu_tag(), torch.__version__,
                     str(getattr(torch.version, "git_version", "")), str(torch.version.cuda),
                     platform.python_version(), str(torch._C._GLIBCXX_USE_CXX11_ABI)])
    return f"bermo_cpu_{hashlib.sha1(key.encode()).hexdigest()[:16]}"


def build_directory() -> str:
    """Where the extension is built and cached (``TORCH_EXTENSIONS_DIR``, by default under ~/.cache)."""
    from torch.utils.cpp_extension import _get_build_directory

    return _get_build_directory(extension_name(), verbose=False)


def is_built() -> bool:
    return os.path.exists(os.path.join(build_directory(), extension_name() + ".so"))


@functools.lru_cache(maxsize=None)
def extension():
    """The compiled extension module; raises whatever the build raised when it cannot be built. The first
    build says so on stderr (about a minute on two cores)."""
    from torch.utils.cpp_extension import load

    with _build_lock(build_directory()):
        if not is_built():
            print(f"bermo: building the C++ CPU kernels (first use in this environment; about a minute on two "
                  f"cores), cached in {build_directory()}", file=sys.stderr, flush=True)
        return load(name=extension_name(), sources=sources(), extra_cflags=CFLAGS,
                    verbose=os.environ.get("BERMO_VERBOSE_BUILD") == "1")


@contextlib.contextmanager
def _build_lock(folder: str):
    """Hold an advisory lock on ``folder`` (released by the OS when the process dies, unlike torch's lock file);
    while it is held no other bermo process is building here, so a torch lock file found then was left by a
    build that was killed: remove it, or torch waits for it forever. (On a network file system that does not
    pass flock between machines, e.g. NFS mounted ``nolock``, two machines' first builds of one cache entry are
    not serialised: build ahead with ``python -m bermo.kernels.cpu_extension`` there.)"""
    try:
        import fcntl
    except ImportError:  # not POSIX: torch's own lock only
        fcntl = None
    if fcntl is None:
        yield
        return
    os.makedirs(folder, exist_ok=True)
    with open(os.path.join(folder, "bermo.lock"), "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            stale = os.path.join(folder, "lock")
            if os.path.exists(stale):
                print(f"bermo: removing {stale}, left by a build of the C++ kernels that was stopped midway",
                      file=sys.stderr, flush=True)
                os.remove(stale)
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def main() -> int:
    start = time.perf_counter()
    was_built = is_built()
    extension()
    state = "already built" if was_built else f"built in {time.perf_counter() - start:.0f} s"
    print(f"bermo C++ kernels {state}: {build_directory()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
