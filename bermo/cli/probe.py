"""``bermo probe``: SentEval-style probing of a frozen encoder (``bermo.probing``): for every layer, and for a
learned scalar mix of all layers (ELMo style: the mix trained with the probe), a simple classifier on the
sentence representation; accuracy per task and per representation as a table and a heat-map PNG."""
from __future__ import annotations

import argparse
import os
from typing import Any

from .common import CommandError, checkpoint_config
from .probing_data import task_names


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", required=True, help="any BERT or BERMo checkpoint (bare or a classifier)")
    parser.add_argument("--output-dir", required=True, help="where probe.md, probe.csv, probe.json, probe.png go")
    parser.add_argument("--tasks-dir", help="probing tasks built by `bermo make-probing-tasks`")
    parser.add_argument("--corpus", help="or: a word/tag corpus (e.g. the Brown corpus) to build them from first, "
                                         "into <output-dir>/tasks")
    parser.add_argument("--tasks", help="comma-separated task names (default: every task in --tasks-dir)")
    parser.add_argument("--classifier", choices=("logreg", "mlp"), default="logreg",
                        help="the probe; word_content is always probed with logreg, as in SentEval")
    parser.add_argument("--pooling", choices=("mean", "cls"), default="mean",
                        help="the sentence representation: the mean of its tokens' vectors (padding excluded), "
                             "or the [CLS] vector")
    parser.add_argument("--no-mix", action="store_true", help="probe the layers only, without the learned mix")
    parser.add_argument("--grid", choices=("small", "senteval"), default="small",
                        help="hyperparameter grid chosen on dev accuracy; senteval is the full protocol, slower")
    parser.add_argument("--batch-size", type=int, default=64, help="sentences per batch when encoding")
    parser.add_argument("--max-length", type=int, default=128, help="tokens per sentence after truncation")
    parser.add_argument("--seed", type=int, default=0,
                        help="seed of the probes' training and, with --corpus, of building the tasks")
    parser.add_argument("--train-size", type=int, default=2000, help="with --corpus: training examples per task")
    parser.add_argument("--dev-size", type=int, default=500, help="with --corpus: dev examples per task")
    parser.add_argument("--test-size", type=int, default=500, help="with --corpus: test examples per task")


def run(args: argparse.Namespace) -> Any:
    if (args.tasks_dir is None) == (args.corpus is None):
        raise CommandError("give either --tasks-dir (tasks built before) or --corpus (build them now)")
    checkpoint_config(args.model)
    if args.corpus is not None:
        tasks = task_names(args.tasks) if args.tasks else None
    else:  # a folder of tasks may hold tasks of one's own: check the names against it
        tasks = tuple(t.strip() for t in args.tasks.split(",") if t.strip()) if args.tasks else None
        if tasks and os.path.isdir(args.tasks_dir):
            have = sorted(d for d in os.listdir(args.tasks_dir)
                          if os.path.isfile(os.path.join(args.tasks_dir, d, "task.json")))
            missing = [t for t in tasks if t not in have]
            if missing:
                raise CommandError(f"--tasks {missing}: not in --tasks-dir {args.tasks_dir}, which has {have}")
    tasks_dir = args.tasks_dir
    if args.corpus is not None:
        if not os.path.isdir(args.corpus):
            raise CommandError(f"--corpus {args.corpus}: no such folder")
        from ..data.probing_tasks import TASKS, build_probing_tasks

        tasks_dir = os.path.join(args.output_dir, "tasks")
        try:
            build_probing_tasks(args.corpus, tasks_dir, tasks=tasks or TASKS, train_size=args.train_size,
                                dev_size=args.dev_size, test_size=args.test_size, seed=args.seed)
        except (ValueError, FileNotFoundError) as err:
            raise CommandError(str(err)) from err
    elif not os.path.isdir(tasks_dir):
        raise CommandError(f"--tasks-dir {tasks_dir}: no such folder (build it with `bermo make-probing-tasks`)")

    from ..probing import probe

    try:
        table = probe(args.model, tasks_dir, tasks=list(tasks) if tasks else None, mix=not args.no_mix,
                      classifier=args.classifier, pooling=args.pooling, batch_size=args.batch_size,
                      max_length=args.max_length, seed=args.seed, grid=args.grid)
    except (ValueError, FileNotFoundError) as err:
        raise CommandError(str(err)) from err
    os.makedirs(args.output_dir, exist_ok=True)
    paths = {ext: os.path.join(args.output_dir, f"probe.{ext}") for ext in ("md", "csv", "json", "png")}
    with open(paths["md"], "w") as f:
        f.write(table.to_markdown() + "\n")
    table.to_csv(paths["csv"])
    table.to_json(paths["json"])
    table.plot_heatmap(paths["png"])
    print(table.to_markdown())
    for key, path in paths.items():
        print(f"  {key:<5} {path}")
    return table
