"""Significance of each row against the CLIP-cosine baseline, on both protocols, with Holm's
correction across the table.

A **paired bootstrap over test queries** (seeded, 10,000 resamples) of the difference in
per-query R@1 between a row and the CLIP-cosine baseline on the very same test queries, per seed
and pooled (per-query R@1 averaged over the seeds first):

- list protocol (:func:`significance`): hit@1 inside the same candidate lists (rows of the
  ``predictions_{t2i,i2t}.npz`` files);
- full-gallery protocol (:func:`full_gallery_significance`): hit@1 of the re-ranked gallery
  (``predictions_full_{t2i,i2t}.npz``, :func:`xmr.metrics.full_gallery.hits_at_k`).

The two-sided p-value is ``min(1, 2 · min(P*(Δ ≤ 0), P*(Δ ≥ 0)))`` with P* the bootstrap
distribution of the mean difference, counted with the +1 correction ``(#+1)/(B+1)``; 95%
intervals are percentiles. It measures query-sampling uncertainty of the test set, not
seed-to-seed variance (the ± std of the table).

**Multiple comparisons** (:func:`adjust_holm`): the family is every (protocol, row, direction)
test shown in the report — the pooled record when a row has several seeds, else its one seed —
and each gets Holm–Bonferroni's adjusted p (:func:`holm`); per-seed records outside the family
keep ``p_holm`` NaN. :func:`gain_warnings` flags in-list gains the full gallery does not match.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from xmr.data.store import TABLE_ORDER
from xmr.metrics.full_gallery import hits_at_k
from xmr.metrics.ranking import ranked_recall_at_k
from xmr.report.collect import run_full_outcomes, run_predictions
from xmr.report.options import N_RESAMPLES
from xmr.report.table import BASELINE

#: Level of the tests (on Holm-adjusted p-values).
ALPHA = 0.05
#: ``protocol`` of the records, in the report's order: the full gallery first. ``first_stage``:
#: the full gallery too, each row against its own first stage instead of CLIP cosine.
PROTOCOLS = ("full_gallery", "first_stage", "lists")
PROTOCOL_TITLES = {
    "full_gallery": "full gallery",
    "first_stage": "full gallery, vs own first stage",
    "lists": "lists",
}


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


def align_queries(
    pred: dict[str, np.ndarray], base: dict[str, np.ndarray]
) -> tuple[np.ndarray, np.ndarray] | None:
    """Row indices into (pred, base) that pair the same query, when both hold the same queries
    (the full-gallery protocol: every query of the split, the whole gallery); else None."""
    if pred["query"].shape == base["query"].shape and np.array_equal(pred["query"], base["query"]):
        idx = np.arange(len(pred["query"]))
        return idx, idx
    order = {int(q): i for i, q in enumerate(base["query"])}
    if len(order) != len(pred["query"]) or any(int(q) not in order for q in pred["query"]):
        return None
    a = np.arange(len(pred["query"]), dtype=np.int64)
    b = np.array([order[int(q)] for q in pred["query"]], np.int64)
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


#: (run, direction) → (arrays to align with the baseline's, per-query values (Q,)), or None.
PerQuery = Callable[[dict[str, Any], str], tuple[dict[str, np.ndarray], np.ndarray] | None]
#: (run's arrays, baseline's arrays) → row indices pairing the same queries, or None.
Align = Callable[
    [dict[str, np.ndarray], dict[str, np.ndarray]], tuple[np.ndarray, np.ndarray] | None
]


def significance(
    rows: dict[str, dict[str, Any]],
    k: int = 1,
    recall: str = "hit",
    n_resamples: int = N_RESAMPLES,
    seed: int = 0,
) -> list[dict[str, Any]]:
    """Each row against the CLIP-cosine row inside the candidate lists: paired bootstrap of
    per-query R@k (see module doc).

    Returns records ``{"protocol": "lists", "row", "direction", "seed" ("pooled" or a seed),
    "delta", "low", "high" (percent points), "p", "p_holm" (NaN until :func:`adjust_holm`),
    "queries", "note"}``; a record with a ``note`` and NaN values when a comparison is impossible
    (no predictions, different test lists).
    """

    def per_query(
        run: dict[str, Any], direction: str
    ) -> tuple[dict[str, np.ndarray], np.ndarray] | None:
        pred = run_predictions(run, direction)
        if pred is None:
            return None
        total = pred.get("relevant_total")  # lists that may miss: a miss counts 0
        return pred, ranked_recall_at_k(pred["labels"], k, recall, relevant_total=total).numpy()

    return _compare(
        rows,
        "lists",
        per_query,
        align_predictions,
        "different test lists than the baseline: not compared",
        n_resamples,
        seed,
    )


def full_gallery_significance(
    rows: dict[str, dict[str, Any]],
    k: int = 1,
    n_resamples: int = N_RESAMPLES,
    seed: int = 0,
) -> list[dict[str, Any]]:
    """Each row against the CLIP-cosine row in the full-gallery protocol: paired bootstrap of
    per-query hit@k over the re-ranked gallery (``predictions_full_{dir}.npz``). Records as
    :func:`significance` with ``"protocol": "full_gallery"``; rows whose runs wrote no per-query
    outcomes get a record with a ``note``."""

    def per_query(
        run: dict[str, Any], direction: str
    ) -> tuple[dict[str, np.ndarray], np.ndarray] | None:
        out = run_full_outcomes(run, direction)
        if out is None:
            return None
        return out, hits_at_k(out["rank"], k)  # (Q,)

    return _compare(
        rows,
        "full_gallery",
        per_query,
        align_queries,
        "different test queries than the baseline: not compared",
        n_resamples,
        seed,
        missing_note="no per-query full-gallery outcomes (predictions_full_*.npz): not tested",
    )


def first_stage_significance(
    rows: dict[str, dict[str, Any]],
    k: int = 1,
    n_resamples: int = N_RESAMPLES,
    seed: int = 0,
) -> list[dict[str, Any]]:
    """Each re-ranking row against **its own first stage** in the full-gallery protocol: per
    query, hit@k of the re-ranked gallery (``rank``) vs hit@k of the first stage's order
    (``first_stage_rank``) of the same run, so that a two-stage pipeline is tested against what
    it re-ranks (``reranker_listnet@infonce`` against the InfoNCE model of the same seed).

    Per seed, and pooled: both sides' per-query hits averaged over the seeds first (the seeds of
    one query are not independent units), then the paired bootstrap over queries. Rows whose
    re-ranking never changes a hit (a scorer that is its own first stage: cosine, a pairwise
    model with ``first_stage=self``) get no record. Records as :func:`significance` with
    ``"protocol": "first_stage"``."""
    records = []
    for name, row in rows.items():
        for direction in TABLE_ORDER:
            per_seed = []
            query = None
            for run in sorted(row["runs"], key=lambda r: str(r.get("seed"))):
                out = run_full_outcomes(run, direction)
                if out is None:
                    continue
                if query is not None and not np.array_equal(out["query"], query):
                    continue  # another query set: not pooled with the first seed's
                query = out["query"]
                per_seed.append(
                    (
                        run.get("seed"),
                        hits_at_k(out["rank"], k),
                        hits_at_k(out["first_stage_rank"], k),
                    )
                )
            if not per_seed or all(np.array_equal(a, b) for _, a, b in per_seed):
                continue
            for run_seed, value, base in per_seed:
                records.append(
                    _record(
                        "first_stage",
                        name,
                        direction,
                        run_seed,
                        paired_bootstrap(value, base, n_resamples, seed),
                    )
                )
            if len(per_seed) > 1:
                value = np.mean(np.stack([v for _, v, _ in per_seed]), axis=0)  # (Q,)
                base = np.mean(np.stack([b for _, _, b in per_seed]), axis=0)  # (Q,)
                records.append(
                    _record(
                        "first_stage",
                        name,
                        direction,
                        "pooled",
                        paired_bootstrap(value, base, n_resamples, seed),
                    )
                )
    return records


def _compare(
    rows: dict[str, dict[str, Any]],
    protocol: str,
    per_query: PerQuery,
    align: Align,
    mismatch_note: str,
    n_resamples: int,
    seed: int,
    missing_note: str = "",
) -> list[dict[str, Any]]:
    """The bootstrap records of one protocol (see :func:`significance`). ``per_query(run,
    direction)`` gives the arrays that ``align`` pairs with the baseline's and the per-query
    values ``(Q,)``, or None when the run has none."""
    base_rows = [r for r in rows.values() if r["method"] == BASELINE and r["runs"]]
    if not base_rows:
        return []
    base_runs = base_rows[0]["runs"]
    records = []
    for name, row in rows.items():
        if row["method"] == BASELINE or not row["runs"]:
            continue
        for direction in TABLE_ORDER:
            base_preds = [x for r in base_runs if (x := per_query(r, direction)) is not None]
            if not base_preds:
                continue
            base = base_preds[0][0]
            # (Q,) mean over the baseline's runs (one, usually: cosine has no seed)
            base_value = np.nanmean([v for _, v in base_preds], axis=0)
            per_seed, note = [], ""
            for run in sorted(row["runs"], key=lambda r: str(r.get("seed"))):
                got = per_query(run, direction)
                if got is None:
                    continue
                pred, value = got
                pair = align(pred, base)
                if pair is None:
                    note = mismatch_note
                    continue
                a_idx, b_idx = pair
                per_seed.append((run.get("seed"), value[a_idx], base_value[b_idx]))
            if not per_seed:
                if note or missing_note:
                    records.append(_nan_record(protocol, name, direction, note or missing_note))
                continue
            for run_seed, value, base_q in per_seed:
                records.append(
                    _record(
                        protocol,
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
                        protocol,
                        name,
                        direction,
                        "pooled",
                        paired_bootstrap(pooled, per_seed[0][2], n_resamples, seed),
                    )
                )
    return records


def holm(p: Sequence[float]) -> np.ndarray:
    """Holm–Bonferroni adjusted p-values, in the input's order.

    With the m finite p-values sorted ascending, ``p_(1) ≤ … ≤ p_(m)``, the adjusted value of
    ``p_(i)`` is ``min(1, max_{j ≤ i} (m − j + 1) · p_(j))`` (step-down, monotone). A NaN p (an
    impossible comparison) is not counted in m and stays NaN.
    """
    p = np.asarray(p, np.float64)
    out = np.full(p.shape, np.nan)
    finite = np.flatnonzero(np.isfinite(p))
    m = len(finite)
    if m == 0:
        return out
    order = finite[np.argsort(p[finite], kind="stable")]  # ascending p
    scaled = (m - np.arange(m)) * p[order]  # (m - j + 1) · p_(j), j = 1..m
    out[order] = np.minimum(1.0, np.maximum.accumulate(scaled))
    return out


def family(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The records the report shows and corrects for: one per (protocol, row, direction), the
    pooled record when there are several seeds, else the single seed's (or the note)."""
    shown: dict[tuple[str, str, str], dict[str, Any]] = {}
    for rec in records:
        key = (rec["protocol"], rec["row"], rec["direction"])
        if rec["seed"] == "pooled" or key not in shown:
            shown[key] = rec
    return list(shown.values())


def adjust_holm(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Set ``p_holm`` on every record of :func:`family` (Holm over all of them, both protocols
    and directions); other records keep NaN. Returns ``records``."""
    for rec in records:
        rec["p_holm"] = math.nan
    shown = family(records)
    for rec, adjusted in zip(shown, holm([r["p"] for r in shown]), strict=True):
        rec["p_holm"] = float(adjusted)
    return records


#: The rule of :func:`gain_warnings`, as the report states it.
GAIN_RULE = (
    f"A method is flagged per direction when its in-list R@1 gain over CLIP cosine is significant "
    f"(list-protocol Δ R@1 > 0 with Holm-adjusted p < {ALPHA}) but the full gallery does not "
    f"match it (full-gallery Δ R@1 ≤ 0, or Holm-adjusted p ≥ {ALPHA}, or not tested)."
)


def gain_warnings(
    records: list[dict[str, Any]], full_deltas: dict[tuple[str, str], float] | None = None
) -> list[str]:
    """WARNING lines for the in-list gains that the full gallery does not match (:data:`GAIN_RULE`).

    ``records``: Holm-adjusted records of both protocols (:func:`adjust_holm`); ``full_deltas``:
    (row, direction) → full-gallery Δ R@1 of the table means (percent points), quoted when a row
    has no full-gallery test.
    """
    shown = {(r["protocol"], r["row"], r["direction"]): r for r in family(records)}
    lines = []
    for (protocol, name, direction), rec in shown.items():
        if protocol != "lists" or not (rec["delta"] > 0 and rec["p_holm"] < ALPHA):
            continue
        full = shown.get(("full_gallery", name, direction))
        if full is not None and math.isfinite(full["delta"]):
            if full["delta"] > 0 and full["p_holm"] < ALPHA:
                continue
            matched = (
                f"full-gallery Δ R@1 {full['delta']:+.2f} pp (Holm p {format_p(full['p_holm'])})"
            )
        else:
            mean = (full_deltas or {}).get((name, direction))
            matched = "no full-gallery test" + (
                f" (Δ of the table means {mean:+.2f} pp)" if mean is not None else ""
            )
        lines.append(
            f"WARNING: {name} {direction}: in-list R@1 gain over CLIP cosine "
            f"{rec['delta']:+.2f} pp (Holm p {format_p(rec['p_holm'])}) is not matched in the full "
            f"gallery: {matched}."
        )
    return lines


def format_p(p: float) -> str:
    """A p-value for a table: 4 decimals, scientific below 1e-4, ``—`` when undefined."""
    if not math.isfinite(p):
        return "—"
    return f"{p:.4f}" if p >= 1e-4 else f"{p:.1e}"


def _record(
    protocol: str, name: str, direction: str, seed: Any, res: dict[str, float]
) -> dict[str, Any]:
    return {
        "protocol": protocol,
        "row": name,
        "direction": direction,
        "seed": seed,
        "delta": 100 * res["delta"],
        "low": 100 * res["low"],
        "high": 100 * res["high"],
        "p": res["p"],
        "p_holm": math.nan,
        "queries": res["queries"],
        "note": "",
    }


def _nan_record(protocol: str, name: str, direction: str, note: str) -> dict[str, Any]:
    nan = math.nan
    return {
        "protocol": protocol,
        "row": name,
        "direction": direction,
        "seed": "pooled",
        "delta": nan,
        "low": nan,
        "high": nan,
        "p": nan,
        "p_holm": nan,
        "queries": 0,
        "note": note,
    }
