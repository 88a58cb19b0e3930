"""Significance of each row against the CLIP-cosine baseline: a paired bootstrap over test queries.

A **paired bootstrap over test queries** (seeded, 10,000 resamples) of the difference in
per-query R@1 between a row and the CLIP-cosine baseline on the very same test lists (rows of
the ``predictions_{t2i,i2t}.npz`` files), per seed and pooled (per-query R@1 averaged over the
seeds first). The two-sided p-value is ``min(1, 2 · min(P*(Δ ≤ 0), P*(Δ ≥ 0)))`` with P* the
bootstrap distribution of the mean difference, counted with the +1 correction ``(#+1)/(B+1)``;
95% intervals are percentiles. It measures query-sampling uncertainty of the test set, not
seed-to-seed variance (the ± std of the table).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from xmr.data.store import TABLE_ORDER
from xmr.metrics.ranking import ranked_recall_at_k
from xmr.report.collect import run_predictions
from xmr.report.table import BASELINE

N_RESAMPLES = 10_000


def align_predictions(
    pred: dict[str, np.ndarray], base: dict[str, np.ndarray]
) -> tuple[np.ndarray, np.ndarray] | None:
    """Row indices into (pred, base) that pair the same query over the same candidate set."""
    if pred["query"].shape == base["query"].shape and np.array_equal(pred["query"], base["query"]):
        idx = np.arange(len(pred["query"]))
        a, b = idx, idx
    else:
        order = {int(q): i for i, q in enumerate(base["query"])}
        pairs = [(i, order[int(q)]) for i, q in enumerate(pred["query"]) if int(q) in order]
        if len(pairs) < len(pred["query"]) or len(pairs) < len(base["query"]):
            return None
        a = np.array([p[0] for p in pairs], np.int64)
        b = np.array([p[1] for p in pairs], np.int64)
    cand_a = np.sort(pred["candidates"][a], axis=1)
    cand_b = np.sort(base["candidates"][b], axis=1)
    if cand_a.shape != cand_b.shape or not np.array_equal(cand_a, cand_b):
        return None
    return a, b


def paired_bootstrap(
    a: np.ndarray, b: np.ndarray, n_resamples: int = N_RESAMPLES, seed: int = 0
) -> dict[str, float]:
    """Paired bootstrap over queries of ``mean(a - b)``; ``a``, ``b``: per-query values (Q,).

    Queries with a NaN in either are dropped. Resamples query indices with replacement
    (``numpy.random.default_rng(seed)``, in chunks). Returns ``delta`` (observed mean
    difference), ``low``/``high`` (2.5/97.5 percentiles of the resampled means), ``p``
    (two-sided: ``min(1, 2 · min((#{Δ* ≤ 0}+1)/(B+1), (#{Δ* ≥ 0}+1)/(B+1)))``) and ``queries``.
    """
    d = np.asarray(a, np.float64) - np.asarray(b, np.float64)  # (Q,)
    d = d[np.isfinite(d)]
    q = len(d)
    if q == 0:
        return {"delta": math.nan, "low": math.nan, "high": math.nan, "p": math.nan, "queries": 0}
    rng = np.random.default_rng(seed)
    means = np.empty(n_resamples)
    chunk = max(1, 2_000_000 // q)
    for start in range(0, n_resamples, chunk):
        stop = min(n_resamples, start + chunk)
        idx = rng.integers(0, q, size=(stop - start, q))  # (chunk, Q)
        means[start:stop] = d[idx].mean(1)
    below = (np.count_nonzero(means <= 0) + 1) / (n_resamples + 1)
    above = (np.count_nonzero(means >= 0) + 1) / (n_resamples + 1)
    low, high = np.percentile(means, [2.5, 97.5])
    return {
        "delta": float(d.mean()),
        "low": float(low),
        "high": float(high),
        "p": float(min(1.0, 2 * min(below, above))),
        "queries": q,
    }


def significance(
    rows: dict[str, dict[str, Any]],
    k: int = 1,
    recall: str = "hit",
    n_resamples: int = N_RESAMPLES,
    seed: int = 0,
) -> list[dict[str, Any]]:
    """Each row against the CLIP-cosine row: paired bootstrap of per-query R@k (see module doc).

    Returns records ``{"row", "direction", "seed" ("pooled" or a seed), "delta", "low", "high"
    (percent points), "p", "queries", "note"}``; a record with a ``note`` and NaN values when a
    comparison is impossible (no predictions, different test lists).
    """
    base_rows = [r for r in rows.values() if r["method"] == BASELINE and r["runs"]]
    if not base_rows:
        return []
    base_runs = base_rows[0]["runs"]
    records = []
    for name, row in rows.items():
        if row["method"] == BASELINE or not row["runs"]:
            continue
        for direction in TABLE_ORDER:
            base_preds = [p for r in base_runs if (p := run_predictions(r, direction)) is not None]
            if not base_preds:
                continue
            base = base_preds[0]
            base_value = np.nanmean(
                [ranked_recall_at_k(p["labels"], k, recall).numpy() for p in base_preds], axis=0
            )  # (Q,) mean over the baseline's runs (one, usually: cosine has no seed)
            per_seed, note = [], ""
            for run in sorted(row["runs"], key=lambda r: str(r.get("seed"))):
                pred = run_predictions(run, direction)
                if pred is None:
                    continue
                pair = align_predictions(pred, base)
                if pair is None:
                    note = "different test lists than the baseline: not compared"
                    continue
                a_idx, b_idx = pair
                value = ranked_recall_at_k(pred["labels"], k, recall).numpy()[a_idx]  # (Q,)
                per_seed.append((run.get("seed"), value, base_value[b_idx]))
            if not per_seed:
                if note:
                    records.append(_nan_record(name, direction, note))
                continue
            for run_seed, value, base_q in per_seed:
                records.append(
                    _record(
                        name,
                        direction,
                        run_seed,
                        paired_bootstrap(value, base_q, n_resamples, seed),
                    )
                )
            if len(per_seed) > 1:
                pooled = np.nanmean(np.stack([v for _, v, _ in per_seed]), axis=0)  # (Q,)
                records.append(
                    _record(
                        name,
                        direction,
                        "pooled",
                        paired_bootstrap(pooled, per_seed[0][2], n_resamples, seed),
                    )
                )
    return records


def _record(name: str, direction: str, seed: Any, res: dict[str, float]) -> dict[str, Any]:
    return {
        "row": name,
        "direction": direction,
        "seed": seed,
        "delta": 100 * res["delta"],
        "low": 100 * res["low"],
        "high": 100 * res["high"],
        "p": res["p"],
        "queries": res["queries"],
        "note": "",
    }


def _nan_record(name: str, direction: str, note: str) -> dict[str, Any]:
    nan = math.nan
    return {
        "row": name,
        "direction": direction,
        "seed": "pooled",
        "delta": nan,
        "low": nan,
        "high": nan,
        "p": nan,
        "queries": 0,
        "note": note,
    }
