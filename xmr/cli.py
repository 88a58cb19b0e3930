"""The ``xmr`` console script: one word per stage, Hydra overrides after it.

xmr synth  [overrides]     generate a SYNTHETIC feature store        (xmr.prepare)
xmr mine   [overrides]     mine hard-negative candidate lists         (xmr.prepare)
xmr train  [overrides]     train a ranker / evaluate a fixed scorer   (xmr.train)
xmr eval   run_dir=DIR     re-evaluate a run from its config + ckpt   (xmr.eval)
xmr extract [overrides]    encode images + captions with open_clip    (xmr.extract)
xmr eval-zeroshot store=DIR [split=test]   full-gallery Recall@K of a store
xmr report ROOT [--out DIR]   Table 2 (mean ± std over seeds) from runs' results.json
"""

from __future__ import annotations

import importlib
import sys

COMMANDS: dict[str, tuple[str, str, str]] = {
    "synth": ("xmr.prepare", "synth_main", "generate a SYNTHETIC feature store (Hydra: data=...)"),
    "mine": ("xmr.prepare", "mine_main", "mine hard-negative candidate lists (Hydra: data=...)"),
    "train": ("xmr.train", "main", "train a ranker / evaluate a fixed scorer (Hydra)"),
    "train-ensemble": (
        "xmr.train_ensemble",
        "main",
        "train seeds x losses as one vectorised ensemble (Hydra: conf/ensemble.yaml)",
    ),
    "eval": ("xmr.eval", "main", "re-evaluate a run: run_dir=DIR [ckpt=FILE] [key=value ...]"),
    "extract": ("xmr.extract", "main", "encode images + captions with open_clip (Hydra)"),
    "embed": (
        "xmr.embed",
        "main",
        "a trained pairwise model's embeddings as a store: run_dir=DIR out=DIR",
    ),
    "eval-zeroshot": ("xmr.zeroshot", "main", "full-gallery Recall@K: store=DIR [split=test]"),
    "report": (
        "xmr.report.cli",
        "main",
        "collect results.json files into Table 2: ROOT [--out DIR]",
    ),
}


def usage() -> str:
    lines = ["usage: xmr COMMAND [args]", "", "commands:"]
    lines += [f"  {name:14s} {help_}" for name, (_, _, help_) in COMMANDS.items()]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] in ("-h", "--help", "help"):
        print(usage())
        return
    command, rest = args[0], args[1:]
    if command not in COMMANDS:
        print(f"xmr: unknown command {command!r}\n\n{usage()}", file=sys.stderr)
        raise SystemExit(2)
    module_name, func_name, _ = COMMANDS[command]
    func = getattr(importlib.import_module(module_name), func_name)
    # Hydra apps read sys.argv; present them the arguments after the command word.
    sys.argv = [f"xmr {command}", *rest]
    func()


if __name__ == "__main__":
    main()
