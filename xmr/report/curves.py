"""What the report's plots draw: Recall@K curves over K and validation histories over epochs."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from xmr.callbacks.history import read_history
from xmr.data.store import TABLE_ORDER
from xmr.metrics.ranking import ranked_recall_curve
from xmr.report.collect import run_predictions

CURVE_MAX_K = 50


def recall_curves(
    rows: dict[str, dict[str, Any]], max_k: int = CURVE_MAX_K, recall: str = "hit"
) -> dict[str, dict[str, np.ndarray]]:
    """row → direction → mean Recall@K curve over the row's runs, ``(K,)`` fractions, K = 1..."""
    curves: dict[str, dict[str, np.ndarray]] = {}
    for name, row in rows.items():
        for direction in TABLE_ORDER:
            per_run = [
                ranked_recall_curve(p["labels"], max_k, recall).numpy()
                for r in row["runs"]
                if (p := run_predictions(r, direction)) is not None
            ]
            if per_run:
                width = min(len(c) for c in per_run)
                curves.setdefault(name, {})[direction] = np.mean(
                    [c[:width] for c in per_run], axis=0
                )
    return curves


def histories(rows: dict[str, dict[str, Any]]) -> dict[str, list[list[dict[str, Any]]]]:
    """row → one list of validation records (``metrics.jsonl``, stage ``val``) per run."""
    out: dict[str, list[list[dict[str, Any]]]] = {}
    for name, row in rows.items():
        for run in row["runs"]:
            path = Path(run["_path"]).parent / "metrics.jsonl"
            if path.is_file():
                val = [r for r in read_history(path) if r.get("stage") == "val"]
                if val:
                    out.setdefault(name, []).append(val)
    return out
