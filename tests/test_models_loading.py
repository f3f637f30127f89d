"""Saved BERMo models load without ceremony, each in a fresh process: after ``import bermo`` alone (which must
not import transformers), whatever transformers imports come first; and with ``trust_remote_code=True`` in a
process that never imported bermo."""
import os
import subprocess
import sys
import textwrap

import pytest
import torch

from bermo.models import BermoForSequenceClassification
from test_models import batch, tiny_config

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run_python(code, tmp_path, check=True):
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_HOME=str(tmp_path / "hf_home"), PYTHONWARNINGS="error::RuntimeWarning")
    env.pop("BERMO_BACKEND", None)
    proc = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], cwd=str(tmp_path), env=env,
                          capture_output=True, text=True, timeout=300)
    if check and proc.returncode != 0:
        raise AssertionError(f"exit {proc.returncode}\nstdout:\n{proc.stdout}\nstderr:\n{proc.stderr[-4000:]}")
    return proc


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """A saved classifier and the logits it gives on a fixed batch."""
    path = tmp_path_factory.mktemp("bermo_checkpoint")
    torch.manual_seed(11)
    model = BermoForSequenceClassification(tiny_config(num_labels=2, mix_initial_scalars=[0.3, -0.4, 0.8, 0.0])).eval()
    model.save_pretrained(path)
    ids, mask = batch()
    torch.save({"ids": ids, "mask": mask, "logits": model(ids, attention_mask=mask).logits.detach()},
               path / "expected.pt")
    return path


CHECK = """
import sys, torch
expected = torch.load({path!r} + "/expected.pt")
config = AutoConfig.from_pretrained({path!r})
base = AutoModel.from_pretrained({path!r})
clf = AutoModelForSequenceClassification.from_pretrained({path!r}).eval()
assert type(config).__module__ == "bermo.models.configuration_bermo", type(config)
assert type(base).__module__ == "bermo.models.modeling_bermo" and type(base).__name__ == "BermoModel", type(base)
assert type(clf).__name__ == "BermoForSequenceClassification", type(clf)
with torch.no_grad():
    assert torch.equal(clf(expected["ids"], attention_mask=expected["mask"]).logits, expected["logits"])
assert not [f for f in sys.meta_path if type(f).__name__ == "_TransformersImportWatcher"], sys.meta_path
print("OK")
"""

IMPORT_ORDERS = {
    "bermo-then-auto": "import bermo\nfrom transformers import AutoConfig, AutoModel, AutoModelForSequenceClassification",
    "auto-then-bermo": "from transformers import AutoConfig, AutoModel, AutoModelForSequenceClassification\nimport bermo",
    # transformers imports its Auto modules halfway through importing BertModel, BERMo's base class
    "bermo-then-bert": "import bermo\nfrom transformers import BertModel\n"
                       "from transformers import AutoConfig, AutoModel, AutoModelForSequenceClassification",
    "bermo-then-transformers-attributes": "import bermo, transformers\nAutoConfig = transformers.AutoConfig\n"
                                          "AutoModel = transformers.AutoModel\n"
                                          "AutoModelForSequenceClassification = "
                                          "transformers.AutoModelForSequenceClassification",
}


@pytest.mark.parametrize("order", list(IMPORT_ORDERS))
def test_import_bermo_is_enough_for_the_auto_classes(order, saved, tmp_path):
    proc = run_python(IMPORT_ORDERS[order] + "\n" + CHECK.format(path=str(saved)), tmp_path)
    assert proc.stdout.strip().endswith("OK")


def test_import_bermo_does_not_import_transformers(tmp_path):
    proc = run_python("""
        import sys, bermo
        from bermo.nn import ScalarMix
        import bermo.models  # cheap too: its names load on first use
        print(sorted(m for m in sys.modules if m == "transformers" or m.startswith("transformers.")))
        """, tmp_path)
    assert proc.stdout.strip() == "[]"


def test_trust_remote_code_loads_a_checkpoint_in_a_process_that_never_imported_bermo(saved, tmp_path):
    proc = run_python(f"""
        import sys
        from transformers import AutoConfig, AutoModel, AutoModelForSequenceClassification
        # without trust_remote_code and without bermo, transformers names the way out
        try:
            AutoModel.from_pretrained({str(saved)!r})
        except ValueError as exc:
            assert "trust_remote_code=True" in str(exc), exc
        else:
            raise AssertionError("loaded a BERMo checkpoint without bermo or trust_remote_code")
        assert "bermo" not in sys.modules
        config = AutoConfig.from_pretrained({str(saved)!r}, trust_remote_code=True)
        base = AutoModel.from_pretrained({str(saved)!r}, trust_remote_code=True)
        clf = AutoModelForSequenceClassification.from_pretrained({str(saved)!r}, trust_remote_code=True).eval()
        import bermo.models
        # the installed bermo's own classes, not copies frozen into the checkpoint
        assert type(config) is bermo.models.BermoConfig and type(base) is bermo.models.BermoModel
        assert type(clf) is bermo.models.BermoForSequenceClassification
        import torch
        expected = torch.load({str(saved)!r} + "/expected.pt")
        with torch.no_grad():
            assert torch.equal(clf(expected["ids"], attention_mask=expected["mask"]).logits, expected["logits"])
        # saving again keeps the auto_map on the installed bermo (no copied model code)
        clf.save_pretrained("resaved")
        import json, os
        assert json.load(open("resaved/config.json"))["auto_map"]["AutoModel"] == "bermo_remote_code.BermoModel"
        assert sorted(f for f in os.listdir("resaved") if f.endswith(".py")) == ["bermo_remote_code.py"]
        print("OK")
        """, tmp_path)
    assert proc.stdout.strip().endswith("OK")


def test_a_failed_registration_warns_and_leaves_transformers_importable(tmp_path):
    proc = run_python("""
        import warnings
        import bermo
        from bermo.models import _autoregister
        _autoregister._pending["transformers.models.auto.modeling_auto"] = "bermo.models.no_such_module"
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            from transformers import AutoModel
        messages = [str(w.message) for w in caught if "bermo could not register" in str(w.message)]
        assert len(messages) == 1 and "bermo.models.no_such_module" in messages[0], messages
        print(AutoModel.__name__)
        """, tmp_path)
    assert proc.stdout.strip() == "AutoModel"
