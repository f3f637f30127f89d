"""The command line's helpers, without a training run: the metrics (F1 of label id 1 for two classes, else the
mean over the classes present; Matthews correlation) against hand-computed values and, where installed,
scikit-learn; a GLUE task's labels against a trained classifier's."""
import numpy as np
import pytest

from bermo.cli.common import f1_score, matthews


def test_hand_computed_values():
    y = np.array([0, 0, 1, 1, 1, 2])
    p = np.array([0, 1, 1, 1, 0, 2])
    # class 0: tp 1 fp 1 fn 1 -> 0.5; class 1: tp 2 fp 1 fn 1 -> 2/3; class 2: 1.0
    assert f1_score(y, p, 3) == pytest.approx((0.5 + 2 / 3 + 1.0) / 3)
    # a class absent from labels and predictions (a 4-class model on this subset) does not count as 0
    assert f1_score(y, p, 4) == pytest.approx((0.5 + 2 / 3 + 1.0) / 3)
    assert f1_score(np.array([0, 1, 1]), np.array([1, 1, 0]), 2) == pytest.approx(0.5)  # of class 1
    assert matthews(np.array([0, 1, 0, 1]), np.array([0, 1, 0, 1]), 2) == pytest.approx(1.0)
    assert matthews(np.array([0, 1, 0, 1]), np.array([1, 0, 1, 0]), 2) == pytest.approx(-1.0)
    assert matthews(np.array([0, 1, 0, 1]), np.array([1, 1, 1, 1]), 2) == 0.0  # one predicted class


def test_agree_with_scikit_learn():
    metrics = pytest.importorskip("sklearn.metrics")
    rng = np.random.default_rng(0)
    for _ in range(200):
        k, n = int(rng.integers(2, 5)), int(rng.integers(2, 30))
        y, p = rng.integers(0, k, n), rng.integers(0, k, n)
        if rng.random() < 0.3:
            p[:] = y[0]
        want = metrics.f1_score(y, p, average="binary" if k == 2 else "macro", zero_division=0)
        assert f1_score(y, p, k) == pytest.approx(want, abs=1e-12)
        if len(set(y) | set(p)) > 1:
            assert matthews(y, p, k) == pytest.approx(metrics.matthews_corrcoef(y, p), abs=1e-12)


def test_a_glue_tasks_labels_against_a_classifiers(monkeypatch):
    """A GLUE task brings its own label names: a classifier whose names are its ids ("0", "1": trained on an
    integer-labelled file) or differ only in case continues on it; other names are refused with a way out."""
    import argparse
    from types import SimpleNamespace

    import bermo.data.text_classification as tc
    from bermo.cli import common

    fake = SimpleNamespace(label_names=["negative", "positive"], num_labels=2, datasets={}, source="glue/sst2")
    monkeypatch.setattr(tc, "load_text_classification", lambda **kw: fake)
    args = argparse.Namespace(task="sst2", train_file=None, validation_file=None, test_file=None,
                              text_columns=None, label_column="label")
    for names in (["0", "1"], ["NEGATIVE", "POSITIVE"], ["negative", "positive"]):
        assert common.load_data(args, names, "m") is fake
    with pytest.raises(common.CommandError, match="trained with labels .*start from its encoder"):
        common.load_data(args, ["bad", "good"], "m")
