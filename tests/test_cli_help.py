"""``bermo --help`` and every subcommand's ``--help``: they exit 0, every option whose default is a real value
(not None, False or SUPPRESS) shows it in its help text, none shows "(default: None)" / "(default: False)", and
none states its default twice. The subcommands and their options are read from ``build_parser()``, so a new
subcommand or option is checked without editing this file. Needs neither ``datasets`` nor the network."""
import argparse
import os
import re
import subprocess
import sys

import pytest

from bermo.cli.main import build_parser

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _parsers():
    """``{(): the top-level parser, ("train",): its subparser, ...}``, discovered from the parser itself."""
    parser = build_parser()
    found = {(): parser}
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            found.update({(name,): sub for name, sub in action.choices.items()})
    return found


PARSERS = _parsers()


def _help_output(command):
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", HF_DATASETS_OFFLINE="1",
               COLUMNS="80", PYTHONPATH=os.pathsep.join(p for p in (ROOT, os.environ.get("PYTHONPATH")) if p))
    proc = subprocess.run([sys.executable, "-m", "bermo", *command, "--help"], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, f"bermo {' '.join(command)} --help exited {proc.returncode}:\n{proc.stderr}"
    return proc.stdout


def _entries(text):
    """``{option string: its help text, lines joined}`` from argparse's help output: an entry starts on a line
    indented by two spaces and a dash (``  --lr LR   the encoder's ...``); its help goes on over the lines
    indented further, up to a blank line or a group heading."""
    entries, current = {}, None
    for line in text.splitlines():
        if re.match(r"^  -", line):
            invocation, _, help_text = line[2:].partition("  ")
            current = [help_text.strip()]
            for token in invocation.split():
                if token.startswith("-"):
                    entries[token.rstrip(",")] = current
        elif current is not None and line.startswith("   ") and line.strip():
            current.append(line.strip())
        else:
            current = None
    return {option: " ".join(" ".join(parts).split()) for option, parts in entries.items()}


def _documented_defaults(parser):
    """The options of ``parser`` whose default --help must show: not None, False or SUPPRESS; help not hidden."""
    return [a for a in parser._actions if a.option_strings and a.help is not argparse.SUPPRESS
            and a.default is not None and a.default is not False and a.default is not argparse.SUPPRESS]


def test_every_subcommand_is_discovered():
    assert len(PARSERS) > 1, "build_parser() has no subcommands"


@pytest.mark.parametrize("command", sorted(PARSERS), ids=lambda c: " ".join(c) or "bermo")
def test_help_shows_defaults(command):
    parser = PARSERS[command]
    output = _help_output(command)
    entries = _entries(output)
    assert "(default: None)" not in output and "(default: False)" not in output, output
    missing = []
    for action in _documented_defaults(parser):
        option = action.option_strings[0]
        assert option in entries, f"{option} is not listed in bermo {' '.join(command)} --help:\n{output}"
        text, shown = entries[option], str(action.default)
        if shown not in text and shown.replace(" ", "") not in text.replace(" ", ""):
            missing.append(f"{option} (default {action.default!r}): {text!r}")
    assert not missing, f"bermo {' '.join(command)} --help hides these defaults:\n" + "\n".join(missing)
    twice = {option: text for option, text in entries.items() if len(re.findall(r"\bdefault\b", text)) > 1}
    assert not twice, f"options stating their default twice: {twice}"
    for action in parser._actions:  # every option not hidden is listed
        if action.option_strings and action.help is not argparse.SUPPRESS:
            assert action.option_strings[0] in entries, f"{action.option_strings[0]} missing from:\n{output}"
