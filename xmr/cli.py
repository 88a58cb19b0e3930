"""The ``xmr`` console script: one word per stage, its arguments after it.

xmr synth  [overrides]     generate a SYNTHETIC feature store        (xmr.prepare)
xmr mine   [overrides]     mine hard-negative candidate lists         (xmr.prepare)
xmr train  [overrides]     train a ranker / evaluate a fixed scorer   (xmr.train)
xmr eval   run_dir=DIR     re-evaluate a run from its config + ckpt   (xmr.eval)
xmr extract [overrides]    encode images + captions with open_clip    (xmr.extract)
xmr eval-zeroshot store=DIR [split=test]   full-gallery Recall@K of a store
xmr report ROOT [--out DIR]   Table 2 (mean ± std over seeds) from runs' results.json

``xmr COMMAND --help`` is answered here, before the command's module (and torch, Lightning) is
imported: from ``conf/`` for Hydra commands, from the module's docstring for the others, from the
argument parser for ``xmr report``. Every command runs under
:func:`xmr.utils.console.run_command` (one-line user errors, exit 2; Ctrl-C, exit 130).
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Callable
from dataclasses import dataclass

from xmr.report.options import report_parser
from xmr.utils.console import DEBUG_ENV, docstring_help, hydra_help, run_command


@dataclass(frozen=True)
class Command:
    """A word of ``xmr``: where its entry point is and how it takes arguments.

    Three styles: Hydra overrides (``config``: ``conf/<config>.yaml``), flags (``parser``), else
    ``key=value`` words (the module's ``USAGE`` line and docstring are its help).
    """

    module: str
    func: str
    summary: str
    config: str | None = None  # Hydra: the primary config's name
    plus_groups: tuple[str, ...] = ()  # Hydra: groups outside the defaults list (+GROUP=OPTION)
    parser: Callable[[], argparse.ArgumentParser] | None = None  # flags: the argument parser


COMMANDS: dict[str, Command] = {
    "synth": Command(
        "xmr.prepare", "synth_main", "generate a SYNTHETIC feature store (data=...)", "prepare"
    ),
    "mine": Command(
        "xmr.prepare", "mine_main", "mine candidate lists of a data config (data=...)", "prepare"
    ),
    "train": Command(
        "xmr.train",
        "main",
        "train a ranker / evaluate a fixed scorer; writes results.json",
        "train",
        plus_groups=("sweep",),
    ),
    "train-ensemble": Command(
        "xmr.train_ensemble",
        "main",
        "train seeds x losses as one vectorised ensemble (conf/ensemble.yaml)",
        "ensemble",
        plus_groups=("sweep",),
    ),
    "eval": Command(
        "xmr.eval",
        "main",
        "re-evaluate a run from its config + checkpoint",
    ),
    "extract": Command(
        "xmr.extract", "main", "encode images + captions with open_clip into a store", "extract"
    ),
    "embed": Command(
        "xmr.embed",
        "main",
        "a trained pairwise model's embeddings as a store",
    ),
    "eval-zeroshot": Command(
        "xmr.zeroshot",
        "main",
        "full-gallery zero-shot Recall@K of a store",
    ),
    "report": Command(
        "xmr.report.cli",
        "main",
        "collect runs' results.json into tables, significance, plots, report.html",
        parser=report_parser,
    ),
}

HELP_FLAGS = ("-h", "--help")


def usage() -> str:
    """``xmr --help``: the commands and the three ways they take arguments."""
    hydra_words = ", ".join(n for n, c in COMMANDS.items() if c.config)
    key_words = ", ".join(n for n, c in COMMANDS.items() if not (c.config or c.parser))
    flag_words = ", ".join(n for n, c in COMMANDS.items() if c.parser)
    lines = ["usage: xmr COMMAND [args]    (xmr COMMAND --help: its arguments)", "", "commands:"]
    lines += [f"  {name:16s}{c.summary}" for name, c in COMMANDS.items()]
    lines += [
        "",
        "Commands take arguments in one of three styles:",
        f"  Hydra overrides ({hydra_words}):",
        "      GROUP=OPTION (model=cosine), KEY=VALUE (trainer.max_epochs=5), +GROUP=OPTION for a",
        "      group outside the defaults list (+sweep=loss_seeds), -m to sweep comma-separated",
        "      values (seed=0,1,2).",
        f"  key=value words ({key_words}): the keys the command's --help lists",
        "      (xmr eval passes any other dotted.key=value on to the run's config).",
        f"  flags ({flag_words}): ROOT --out DIR ... (argparse).",
        "",
        "An error in what you give (a store, lists, a config value, an override) prints one line",
        f"'xmr COMMAND: error: ...' and exits 2 ({DEBUG_ENV}=1 shows the traceback); Ctrl-C exits",
        "130 and says how to resume. Starting the same command again resumes an interrupted run.",
    ]
    return "\n".join(lines)


def command_help(name: str, rest: list[str]) -> str:
    """``xmr NAME --help``, without importing the command's module."""
    command = COMMANDS[name]
    if command.config:
        overrides = [a for a in rest if a not in HELP_FLAGS]
        return hydra_help(name, command.module, command.config, overrides, command.plus_groups)
    if command.parser:
        return command.parser().format_help()
    return docstring_help(command.module)


def main(argv: list[str] | None = None) -> None:
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] in (*HELP_FLAGS, "help"):
        print(usage())
        return
    name, rest = args[0], args[1:]
    if name not in COMMANDS:
        print(f"xmr: unknown command {name!r}\n\n{usage()}", file=sys.stderr)
        raise SystemExit(2)
    if any(a in HELP_FLAGS for a in rest):
        print(command_help(name, rest), end="")
        return
    command = COMMANDS[name]
    # Hydra apps read sys.argv; present them the arguments after the command word.
    sys.argv = [f"xmr {name}", *rest]
    run_command(name, _entry_point, command)


def _entry_point(command: Command) -> None:
    getattr(importlib.import_module(command.module), command.func)()


if __name__ == "__main__":
    main()
