"""What the report's plots draw: Recall@K curves over K, validation histories and the training
loss over epochs, and CLIP cosine's validation values as their reference."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from xmr.callbacks.history import read_history
from xmr.data.store import TABLE_ORDER
from xmr.metrics.ranking import ranked_recall_curve
from xmr.report.collect import run_predictions
from xmr.report.table import BASELINE

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
    """row → one list of records per run: its ``metrics.jsonl`` records of stage ``val`` (and
    ``train``, when a run wrote them; :func:`train_loss_points`)."""
    out: dict[str, list[list[dict[str, Any]]]] = {}
    for name, row in rows.items():
        for run in row["runs"]:
            path = Path(run["_path"]).parent / "metrics.jsonl"
            if path.is_file():
                kept = [r for r in read_history(path) if r.get("stage") in ("val", "train")]
                if any(r.get("stage") == "val" for r in kept):
                    out.setdefault(name, []).append(kept)
    return out


#: The validation keys the report plots, in its panels' order.
VAL_KEYS = ("val/rsum", "val/i2t/recall@1", "val/t2i/recall@1")
#: The training loss the report plots.
TRAIN_LOSS = "train/loss"


def train_loss_points(records: list[dict[str, Any]]) -> list[tuple[int, float]]:
    """(epoch, train loss) of one run, from its ``metrics.jsonl`` records.

    ``stage: "train"`` records are taken as they are. Otherwise the loss comes from the ``val``
    records: the history callback writes them at the end of validation, which runs before the
    training epoch's own end, so the ``train/loss`` a ``val`` record of epoch e carries is the
    value of epoch e - 1 (and the last epoch's is not recorded)."""
    own = sorted(
        (int(r["epoch"]), float(r[TRAIN_LOSS]))
        for r in records
        if r.get("stage") == "train" and TRAIN_LOSS in r
    )
    if own:
        return own
    return sorted(
        (int(r["epoch"]) - 1, float(r[TRAIN_LOSS]))
        for r in records
        if r.get("stage") == "val" and TRAIN_LOSS in r and int(r["epoch"]) >= 1
    )


def baseline_reference(
    rows: dict[str, dict[str, Any]], keys: tuple[str, ...] = VAL_KEYS
) -> dict[str, float]:
    """key → CLIP cosine's validation value (mean over the baseline row's runs) for the plots'
    reference line: the run's ``results.json`` value of the key, else the last ``val`` record of
    its ``metrics.jsonl``; keys no baseline run recorded are left out (a parameter-free scorer
    is not validated by ``xmr train``, so its runs usually hold none)."""
    values: dict[str, list[float]] = {}
    for row in rows.values():
        if row["method"] != BASELINE:
            continue
        for run in row["runs"]:
            path = Path(run["_path"]).parent / "metrics.jsonl"
            history = read_history(path) if path.is_file() else []
            last = next((r for r in reversed(history) if r.get("stage") == "val"), {})
            for key in keys:
                value = run.get(key, last.get(key))
                if isinstance(value, (int, float)):
                    values.setdefault(key, []).append(float(value))
    return {key: float(np.mean(v)) for key, v in values.items()}
