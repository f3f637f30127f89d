"""``bermo make-probing-tasks``: the SentEval-style probing tasks, built from a POS-tagged corpus
(``bermo.data.probing_tasks``)."""
from __future__ import annotations

import argparse
import os
from typing import Any, Dict

from .common import CommandError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--corpus", required=True, help="a folder of NLTK word/tag files (e.g. the Brown corpus)")
    parser.add_argument("--output-dir", required=True, help="one folder per task goes here")
    parser.add_argument("--tasks", help="comma-separated task names (default: all)")
    parser.add_argument("--train-size", type=int, default=2000, help="training examples per task")
    parser.add_argument("--dev-size", type=int, default=500, help="dev examples per task")
    parser.add_argument("--test-size", type=int, default=500, help="test examples per task")
    parser.add_argument("--seed", type=int, default=0,
                        help="seed of the sentences' sampling; the same inputs give identical files")


def task_names(text):
    from ..data.probing_tasks import TASKS

    if not text:
        return TASKS
    names = tuple(t.strip() for t in text.split(",") if t.strip())
    unknown = [t for t in names if t not in TASKS]
    if unknown:
        raise CommandError(f"unknown probing task(s) {unknown}; the tasks are {', '.join(TASKS)}")
    return names


def run(args: argparse.Namespace) -> Dict[str, Any]:
    from ..data.probing_tasks import build_probing_tasks

    if not os.path.isdir(args.corpus):
        raise CommandError(f"--corpus {args.corpus}: no such folder")
    tasks = task_names(args.tasks)
    try:
        info = build_probing_tasks(args.corpus, args.output_dir, tasks=tasks, train_size=args.train_size,
                                   dev_size=args.dev_size, test_size=args.test_size, seed=args.seed)
    except (ValueError, FileNotFoundError) as err:
        raise CommandError(str(err)) from err
    print(f"bermo make-probing-tasks: {len(info)} tasks in {args.output_dir} (see its README.md)")
    return info
