"""The ``bermo`` command line: ``bermo train``, ``bermo eval``, ``bermo make-probing-tasks``, ``bermo probe``
(``python -m bermo`` too).

Each subcommand lives in a module of its own (``bermo.cli.train``, ``.evaluate``, ``.probe``) with
``add_arguments(parser)`` and ``run(args)``; bad input raises ``CommandError``, printed here as
``bermo <command>: error: <message>`` with exit status 2 before any work starts.

``bermo train`` runs on several processes (``torchrun``); the other commands run on one: launched as several,
the first process (``RANK`` 0) does the work and the others stop at once (each did all of it, printed it and wrote
the same files at the same moment).
"""
from __future__ import annotations

import argparse
import os
import sys
from typing import List, Optional

from .common import CommandError, HelpFormatter

COMMANDS = {
    "train": ("train", "fine-tune BERT or BERMo on a text-classification task, optionally pruning and compressing"),
    "eval": ("evaluate", "metrics and throughput of a saved classifier (pruned and compressed ones included)"),
    "probe": ("probe", "SentEval-style probing of a frozen encoder, per layer and through a learned scalar mix"),
    "make-probing-tasks": ("probing_data", "build the probing tasks from a POS-tagged corpus (NLTK word/tag "
                                           "format, e.g. the Brown corpus)"),
}


def build_parser() -> argparse.ArgumentParser:
    import importlib

    parser = argparse.ArgumentParser(prog="bermo", description=__doc__.split("\n\n")[0].replace("``", ""),
                                     formatter_class=HelpFormatter)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name, (module, help_text) in COMMANDS.items():
        command = sub.add_parser(name, help=help_text, description=help_text, formatter_class=HelpFormatter)
        mod = importlib.import_module(f"{__package__}.{module}")
        mod.add_arguments(command)
        command.set_defaults(handler=mod.run)
    return parser


def main(argv: Optional[List[str]] = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    rank = int(os.environ.get("RANK", "0") or 0)
    if args.command != "train" and rank > 0:
        print(f"bermo {args.command}: runs on one process; process {rank} leaves it to process 0", file=sys.stderr)
        return 0
    try:
        args.handler(args)
    except CommandError as err:
        print(f"bermo {args.command}: error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
