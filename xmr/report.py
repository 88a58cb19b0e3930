"""Collect runs' ``results.json`` into the paper's Table 2 layout.

    xmr report logs/demo                 # every results.json below the directory
    xmr report logs/demo --out reports/demo

Rows are methods (rankers by loss, CLIP cosine, baselines); columns are text retrieval (i→t) and
image retrieval (t→i) R@1/5/10, as mean ± std over the runs (seeds) of a method, in percent.
Recall is hit@K (a query counts when any relevant item is in its top K) unless
``--recall found`` asks for the paper's found/total; the caption says which. Values are measured
inside the candidate lists (which always hold the positive), not over the full gallery.
"""

from __future__ import annotations

import argparse
import json
import math
from collections import defaultdict
from pathlib import Path
from typing import Any

from xmr.utils.io import atomic_write_text

DIRECTIONS = (("i2t", "text retrieval (image→text)"), ("t2i", "image retrieval (text→image)"))
METHOD_ORDER = ("lambdarank", "neural_ndcg", "listnet", "ranknet")


def collect(root: str | Path) -> list[dict[str, Any]]:
    """Every readable ``results.json`` below ``root`` (sorted by path)."""
    runs = []
    for path in sorted(Path(root).rglob("results.json")):
        try:
            run = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as err:
            raise ValueError(f"{path}: unreadable results file ({err})") from err
        run["_path"] = str(path)
        runs.append(run)
    return runs


def _mean_std(values: list[float]) -> tuple[float, float]:
    n = len(values)
    mean = sum(values) / n
    std = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1)) if n > 1 else 0.0
    return mean, std


def table(
    runs: list[dict[str, Any]], ks: tuple[int, ...] = (1, 5, 10), recall: str = "hit"
) -> dict[str, dict[str, Any]]:
    """method → {"n": runs, "seeds": [...], "synthetic": bool, "<dir>/R@K": (mean %, std %)}."""
    key = "recall" if recall == "hit" else "recall_found"
    groups: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for run in runs:
        groups[str(run.get("method"))].append(run)
    rows: dict[str, dict[str, Any]] = {}
    order = sorted(groups, key=lambda m: (METHOD_ORDER.index(m) if m in METHOD_ORDER else 99, m))
    for method in order:
        group = groups[method]
        row: dict[str, Any] = {
            "n": len(group),
            "seeds": sorted(r.get("seed") for r in group),
            "synthetic": any(r.get("synthetic") for r in group),
        }
        for direction, _ in DIRECTIONS:
            for k in ks:
                vals = [
                    100 * r[f"test/{direction}/{key}@{k}"]
                    for r in group
                    if f"test/{direction}/{key}@{k}" in r
                ]
                if vals:
                    row[f"{direction}/R@{k}"] = _mean_std(vals)
        rows[method] = row
    return rows


def to_markdown(
    rows: dict[str, dict[str, Any]], ks: tuple[int, ...] = (1, 5, 10), recall: str = "hit"
) -> str:
    definition = (
        "hit@K (a query counts when any relevant item is in its top K)"
        if recall == "hit"
        else "found/total (relevant items in the top K / all relevant; eq. 5)"
    )
    synthetic = any(r["synthetic"] for r in rows.values())
    caption = (
        f"Recall@K (%), mean ± std over runs, inside the candidate lists; recall = {definition}."
        + (" SYNTHETIC data." if synthetic else "")
    )
    head = ["method", "runs"] + [f"{d} R@{k}" for d, _ in DIRECTIONS for k in ks]
    lines = [caption, "", "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for method, row in rows.items():
        cells = [method, str(row["n"])]
        for d, _ in DIRECTIONS:
            for k in ks:
                mean_std = row.get(f"{d}/R@{k}")
                cells.append(f"{mean_std[0]:.2f} ± {mean_std[1]:.2f}" if mean_std else "—")
        lines.append("| " + " | ".join(cells) + " |")
    lines.append("")
    lines.append(
        "i2t = text retrieval (image query → captions); "
        "t2i = image retrieval (caption query → images)."
    )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="xmr report", description=__doc__.split("\n")[0])
    parser.add_argument("root", help="directory holding runs (results.json files)")
    parser.add_argument("--out", help="write table.md there (default: print only)")
    parser.add_argument("--recall", choices=("hit", "found"), default="hit")
    args = parser.parse_args(argv)
    runs = collect(args.root)
    if not runs:
        raise SystemExit(f"{args.root}: no results.json found below it")
    md = to_markdown(table(runs, recall=args.recall), recall=args.recall)
    print(md)
    if args.out:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        atomic_write_text(out / "table.md", md)


if __name__ == "__main__":
    main()
