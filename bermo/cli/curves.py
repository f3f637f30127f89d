"""Learning curves and divergence detection for ``bermo train``: a Trainer callback that records every training
log and every evaluation, writes them as ``curve.csv`` and ``curve.json`` after each evaluation (so a run killed
half-way still leaves its curve), draws ``curve.png`` at the end, and says when a run diverged.

A run *diverged* when

* a training loss (or gradient norm) is NaN or infinite: training is stopped at once, since nothing after it
  means anything; or
* its dev predictions collapse to one class: at least ``collapse_share`` (default 0.98) of them are the same
  label (while the dev set's own majority share is below that, so a dev set that is itself one class does not
  count), either at an evaluation after the run had been better than the majority class (by ``margin``, default
  0.02 accuracy), or at the end of training. Such a model's accuracy is the majority-class accuracy, which can
  look like a plausible number; this names it. A collapse during the run does not stop it (models sometimes
  recover); the summary reports it and whether the final model is still collapsed. An untrained model that
  predicts one class at its first evaluations has not diverged: it has not learned yet.

Nothing here hides a bad run: the reason and the step are written to the curve, printed, and returned by
``summary()`` for the final ``summary.json``.
"""
from __future__ import annotations

import csv
import json
import math
import os
from typing import Any, Dict, List, Optional

from transformers import TrainerCallback

PREDICTED_SHARE = "eval_predicted_majority_share"


def _finite(value: Any) -> bool:
    return not isinstance(value, (int, float)) or math.isfinite(float(value))


class CurveCallback(TrainerCallback):
    """Records the curve of a run and watches it for divergence (see the module docstring).

    Args:
        output_dir: where ``curve.csv``, ``curve.json`` and ``curve.png`` go (only the main process writes).
        dev_majority_share: the share of the dev set's most frequent label.
        collapse_share: the share of identical dev predictions that counts as a collapse.
        title: the plot's title.
    """

    def __init__(self, output_dir: str, dev_majority_share: float, collapse_share: float = 0.98,
                 title: str = "", margin: float = 0.02) -> None:
        self.output_dir = output_dir
        self.dev_majority_share = float(dev_majority_share)
        self.collapse_share = float(collapse_share)
        self.title = title
        self.train_log: List[Dict[str, float]] = []
        self.evals: List[Dict[str, float]] = []
        self.events: List[Dict[str, Any]] = []
        self.collapsed_now = False
        self.margin = float(margin)
        self.best_accuracy = float("-inf")
        self.last_share = 0.0

    def resume_from(self, curve_json: str, checkpoint: str) -> None:
        """Keep the curve a resumed run had up to its checkpoint's step (``checkpoint-<step>``), so the curve
        and the divergence record cover the whole run."""
        try:
            step = int(os.path.basename(os.path.normpath(checkpoint)).rsplit("-", 1)[-1])
            with open(curve_json) as f:
                old = json.load(f)
        except (OSError, ValueError):
            return
        self.train_log = [r for r in old.get("train", []) if r.get("step", 0) <= step]
        self.evals = [r for r in old.get("eval", []) if r.get("step", 0) <= step]
        self.events = [e for e in old.get("divergence", []) if e.get("step", 0) <= step]
        # the detector's state as it was at the checkpoint
        for row in self.evals:
            accuracy, share = row.get("eval_accuracy"), row.get(PREDICTED_SHARE)
            if share is not None:
                self.last_share = share
                self.collapsed_now = self.collapsed(accuracy, share)
            if accuracy is not None and _finite(accuracy):
                self.best_accuracy = max(self.best_accuracy, float(accuracy))

    def collapsed(self, accuracy, share: float) -> bool:
        """One class predicted (``share`` of the dev predictions) at about the majority class's accuracy: a model
        that is right on a dev set that is itself nearly one class has not collapsed."""
        return share >= self.collapse_share and self.dev_majority_share < self.collapse_share and \
            (accuracy is None or accuracy <= self.dev_majority_share + self.margin)

    # ------------------------------------------------------------------ Trainer hooks
    def on_log(self, args, state, control, logs=None, **kwargs):
        logs = logs or {}
        if any(k.startswith("eval_") for k in logs) or "train_runtime" in logs:
            return
        row = {"step": state.global_step, "epoch": state.epoch or 0.0,
               **{k: float(v) for k, v in logs.items() if isinstance(v, (int, float))}}
        self.train_log.append(row)
        bad = [k for k in ("loss", "grad_norm") if k in logs and not _finite(logs[k])]
        if bad:
            self._event(state, "nan_loss", f"{bad[0]} is {logs[bad[0]]} at step {state.global_step}: training "
                                           "stopped (the run diverged)")
            control.should_training_stop = True
        self._write(state)

    def on_evaluate(self, args, state, control, metrics=None, **kwargs):
        metrics = metrics or {}
        row = {"step": state.global_step, "epoch": state.epoch or 0.0,
               **{k: float(v) for k, v in metrics.items() if isinstance(v, (int, float))}}
        self.evals.append(row)
        share = metrics.get(PREDICTED_SHARE)
        accuracy = metrics.get("eval_accuracy")
        if share is not None:
            collapsed = self.collapsed(accuracy, share)
            learned = self.best_accuracy > self.dev_majority_share + self.margin
            if collapsed and learned and not self.collapsed_now:
                self._event(state, "collapsed", f"dev predictions collapsed to one class at step {state.global_step}"
                                                f" ({share:.1%} identical; accuracy {accuracy:.4f}, best before "
                                                f"{self.best_accuracy:.4f}, dev majority share "
                                                f"{self.dev_majority_share:.4f})")
            self.collapsed_now = collapsed
            self.last_share = share
        if accuracy is not None and _finite(accuracy):
            self.best_accuracy = max(self.best_accuracy, float(accuracy))
        if "eval_loss" in metrics and not _finite(metrics["eval_loss"]):
            self._event(state, "nan_loss", f"dev loss is {metrics['eval_loss']} at step {state.global_step}")
            control.should_training_stop = True
        self._write(state)

    def on_train_end(self, args, state, control, **kwargs):
        self._write(state)

    def finalize(self, state) -> None:
        """After training and the final evaluation: the end-of-run divergence check, the files and the plot."""
        self.check_final(state)
        self._write(state)
        if state.is_world_process_zero:
            self.plot()

    def check_final(self, state) -> None:
        """At the end of training: a model whose last evaluation predicts one class has diverged (or never
        learned), whatever happened before."""
        if self.collapsed_now:
            self._event(state, "ended_collapsed", f"the final model predicts one class for {self.last_share:.1%} of "
                                                  f"the dev set (accuracy {self.evals[-1].get('eval_accuracy', 0):.4f},"
                                                  f" the dev majority share is {self.dev_majority_share:.4f})")

    # ------------------------------------------------------------------ results
    def _event(self, state, kind: str, message: str) -> None:
        if any(e["kind"] == kind for e in self.events):
            return
        self.events.append({"kind": kind, "step": state.global_step, "message": message})
        if state.is_world_process_zero:
            print(f"bermo train: DIVERGED: {message}", flush=True)

    @property
    def diverged(self) -> bool:
        return bool(self.events)

    def summary(self) -> Dict[str, Any]:
        """What ``summary.json`` says about divergence."""
        return {"diverged": self.diverged, "divergence": self.events,
                "collapsed_at_end": self.collapsed_now,
                "nan_loss": any(e["kind"] == "nan_loss" for e in self.events)}

    def paths(self) -> Dict[str, str]:
        return {ext: os.path.join(self.output_dir, f"curve.{ext}") for ext in ("csv", "json", "png")}

    def _write(self, state) -> None:
        if not state.is_world_process_zero:
            return
        os.makedirs(self.output_dir, exist_ok=True)
        paths = self.paths()
        with open(paths["json"], "w") as f:
            json.dump({"train": self.train_log, "eval": self.evals, **self.summary()}, f, indent=1)
        keys: List[str] = []
        for row in self.evals:
            keys += [k for k in row if k not in keys]
        with open(paths["csv"], "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=keys or ["step"])
            writer.writeheader()
            writer.writerows(self.evals)

    def plot(self) -> Optional[str]:
        """Draw the dev accuracy (and the training loss) against the step; returns the PNG path, or None when
        matplotlib is missing (``pip install "bermo[plot]"``) or nothing was evaluated."""
        if not self.evals:
            return None
        try:
            import matplotlib
            matplotlib.use("Agg")
            import matplotlib.pyplot as plt
        except ImportError:
            return None
        fig, ax = plt.subplots(figsize=(6.4, 4.0))
        steps = [r["step"] for r in self.evals]
        if any("eval_accuracy" in r for r in self.evals):
            ax.plot(steps, [r.get("eval_accuracy", float("nan")) for r in self.evals], "o-", label="dev accuracy")
            ax.axhline(self.dev_majority_share, color="grey", ls=":", label="majority class")
        ax.set_xlabel("optimizer step")
        ax.set_ylabel("dev accuracy")
        losses = [(r["step"], r["loss"]) for r in self.train_log if "loss" in r and _finite(r["loss"])]
        if losses:
            ax2 = ax.twinx()
            ax2.plot(*zip(*losses), color="tab:red", alpha=0.5, label="training loss")
            ax2.set_ylabel("training loss")
            ax2.legend(loc="lower right")
        for event in self.events:
            ax.axvline(event["step"], color="red", ls="--")
        ax.legend(loc="upper left")
        ax.set_title(self.title + ("  (DIVERGED)" if self.diverged else ""))
        fig.tight_layout()
        path = self.paths()["png"]
        fig.savefig(path, dpi=120)
        plt.close(fig)
        return path
