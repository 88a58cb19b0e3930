"""``python -m xmr.report.select ROOT --methods infonce,vsepp,dcca,cmpm``: the best of some rows
of a sweep **by validation** (never test), and its runs per seed.

Used by ``sweeps/rerank.sh`` to pick the pairwise model that becomes the first stage of the
second two-stage pipeline: the row whose runs have the highest mean ``best_<monitor>`` (the
value the best checkpoint was selected on, ``best_val/rsum`` by default). Prints the row name on
the first line, then one ``<seed> <run directory>`` line per run.
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path
from typing import Any

from xmr.report.collect import collect

DEFAULT_KEY = "best_val/rsum"


def best_by_validation(
    root: str | Path, methods: list[str], key: str = DEFAULT_KEY
) -> tuple[str, dict[Any, Path], dict[str, float]]:
    """The method among ``methods`` with the highest mean ``key`` over its finished runs below
    ``root``; returns (method, {seed: run directory}, {method: mean}) — every candidate's mean,
    so that the choice can be reported. Raises ValueError when no candidate has a run with
    ``key``."""
    runs = collect(root)
    means: dict[str, float] = {}
    for method in methods:
        values = [float(r[key]) for r in runs if r["method"] == method and key in r]
        if values:
            means[method] = statistics.fmean(values)
    if not means:
        raise ValueError(
            f"{root}: no finished run of {methods} records {key!r} (results.json); train them first"
        )
    best = max(means, key=lambda m: (means[m], m))
    dirs = {r.get("seed"): Path(r["_path"]).parent for r in runs if r["method"] == best}
    return best, dirs, means


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m xmr.report.select", description=__doc__)
    parser.add_argument("root", help="directory holding the candidates' runs (results.json)")
    parser.add_argument("--methods", required=True, help="comma-separated row names")
    parser.add_argument(
        "--key", default=DEFAULT_KEY, help=f"validation key (default {DEFAULT_KEY})"
    )
    args = parser.parse_args(argv)
    methods = [m for m in args.methods.split(",") if m]
    try:
        best, dirs, means = best_by_validation(args.root, methods, args.key)
    except ValueError as err:
        raise SystemExit(str(err)) from err
    print(best)
    for seed in sorted(dirs, key=str):
        print(seed, dirs[seed])
    chosen = ", ".join(f"{m} {v:.4f}" for m, v in sorted(means.items()))
    print(f"selected {best} by mean {args.key}: {chosen}", file=sys.stderr)


if __name__ == "__main__":
    main()
