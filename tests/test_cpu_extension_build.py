"""The C++ kernels' build: announced on first use, buildable ahead of time with one command."""
import subprocess
import sys

import pytest

from helpers import needs_cpu_kernels


@needs_cpu_kernels
def test_build_ahead_command():
    proc = subprocess.run([sys.executable, "-m", "bermo.kernels.cpu_extension"], capture_output=True, text=True,
                          timeout=1800)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.startswith("bermo C++ kernels ") and ("already built" in proc.stdout or "built in" in proc.stdout)


def test_first_build_is_announced(monkeypatch, capsys):
    from bermo.kernels import cpu_extension
    import torch.utils.cpp_extension as cpp

    monkeypatch.setattr(cpu_extension, "is_built", lambda: False)
    monkeypatch.setattr(cpp, "load", lambda **kw: "module")
    cpu_extension.extension.cache_clear()
    try:
        assert cpu_extension.extension() == "module"
    finally:
        cpu_extension.extension.cache_clear()
    err = capsys.readouterr().err
    assert "bermo: building the C++ CPU kernels" in err and "cached in" in err


def test_cache_name_tracks_the_torch_build(monkeypatch):
    from bermo.kernels import cpu_extension
    import torch

    name = cpu_extension.extension_name()
    monkeypatch.setattr(torch, "__version__", torch.__version__ + "+other")
    assert cpu_extension.extension_name() != name


def test_cache_name_tracks_the_shared_headers(monkeypatch, tmp_path):
    """A change to a shared header (csrc/*.h) must rebuild, as a change to a source does; the installed
    package ships the headers (setup.py's package data)."""
    from bermo.kernels import cpu_extension

    assert any(p.endswith("simd.h") for p in cpu_extension.headers())
    name = cpu_extension.extension_name()
    copies = []
    for path in cpu_extension.headers():
        copy = tmp_path / path.split("/")[-1]
        copy.write_bytes(open(path, "rb").read() + b"\n// changed\n")
        copies.append(str(copy))
    monkeypatch.setattr(cpu_extension, "headers", lambda: copies)
    assert cpu_extension.extension_name() != name
    import pathlib
    setup = (pathlib.Path(__file__).resolve().parents[1] / "setup.py").read_text()
    assert '"csrc/*.h"' in setup


def test_cache_name_tracks_the_sources_folder(monkeypatch, tmp_path):
    """torch's build file names the sources by absolute path: two checkouts with the same sources shared one
    entry and rebuilt it (minutes) at every switch between them."""
    import shutil

    from bermo.kernels import cpu_extension

    name = cpu_extension.extension_name()
    copy = tmp_path / "csrc"
    shutil.copytree(cpu_extension.CSRC, copy)
    monkeypatch.setattr(cpu_extension, "CSRC", str(copy))
    assert cpu_extension.extension_name() != name


def test_a_lock_left_by_a_killed_build_is_removed(monkeypatch, tmp_path, capsys):
    """A build killed midway leaves torch's lock file: every later process waited on it forever, saying
    nothing. bermo's own lock (released when its holder dies) shows that no build is running, so it goes."""
    from bermo.kernels import cpu_extension
    import torch.utils.cpp_extension as cpp

    (tmp_path / "lock").write_text("")
    seen = []
    monkeypatch.setattr(cpu_extension, "build_directory", lambda: str(tmp_path))
    monkeypatch.setattr(cpu_extension, "is_built", lambda: True)
    monkeypatch.setattr(cpp, "load", lambda **kw: seen.append((tmp_path / "lock").exists()) or "module")
    cpu_extension.extension.cache_clear()
    try:
        assert cpu_extension.extension() == "module"
    finally:
        cpu_extension.extension.cache_clear()
    assert seen == [False]
    assert "left by a build of the C++ kernels that was stopped midway" in capsys.readouterr().err


def test_a_lock_held_by_a_running_build_is_kept(tmp_path):
    """The leftover lock goes only when no process holds bermo's flock: while a build holds it (here another open
    file of this process, which flock treats alike), the caller waits and torch's lock stays."""
    fcntl = pytest.importorskip("fcntl")
    import threading
    import time

    from bermo.kernels import cpu_extension

    (tmp_path / "lock").write_text("")
    holder = open(tmp_path / "bermo.lock", "a")
    fcntl.flock(holder, fcntl.LOCK_EX)
    entered = threading.Event()

    def build():
        with cpu_extension._build_lock(str(tmp_path)):
            entered.set()

    thread = threading.Thread(target=build)
    thread.start()
    time.sleep(0.5)
    assert not entered.is_set() and (tmp_path / "lock").exists()  # waiting; the running build's lock kept
    fcntl.flock(holder, fcntl.LOCK_UN)
    holder.close()
    thread.join(10)
    assert entered.is_set() and not (tmp_path / "lock").exists()
