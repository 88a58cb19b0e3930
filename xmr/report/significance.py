"""Significance of each row against the CLIP-cosine baseline, on both protocols, with Holm's
correction across the table; and of any row against any other (``xmr report --compare A B``).

The unit is the **test query**: per query, the difference in R@1 between a row and the CLIP-cosine
baseline on the very same test queries, per seed and pooled (per-query R@1 averaged over the
seeds first):

- list protocol (:func:`significance`): hit@1 inside the same candidate lists (rows of the
  ``predictions_{t2i,i2t}.npz`` files, :func:`list_outcomes`);
- full-gallery protocol (:func:`full_gallery_significance`): hit@1 of the re-ranked gallery
  (``predictions_full_{t2i,i2t}.npz``, :func:`full_outcomes`,
  :func:`xmr.metrics.full_gallery.hits_at_k`).

Two paired tests of the mean difference Δ (:data:`TESTS`, ``xmr report --test``):

- ``permutation`` (the default, :func:`paired_permutation`): the paired sign-flip randomisation
  test — under H0 the two systems are exchangeable on each query, so each query's difference
  flips sign with probability 1/2 — through :func:`scipy.stats.permutation_test`
  (``permutation_type="samples"``, two-sided, seeded; exact when the queries whose outcomes
  differ admit at most ``n_resamples`` sign patterns). It is the default because it is the test
  IR evaluation recommends for paired per-query differences (Smucker, Allan & Carterette, CIKM
  2007: the randomisation, bootstrap and t tests largely agree, the bootstrap's p-values run
  somewhat lower); it tests exactly H0 "the two systems are interchangeable on every query",
  assumes nothing about the distribution of Δ, and is exact when few queries differ (on one
  seed's 0/1 hit@1 outcomes its null is that of McNemar's exact test on the discordant queries). Its 95% interval is the bootstrap's (a test
  has no interval of its own).
- ``bootstrap`` (:func:`paired_bootstrap`, hand-written): resampling queries with replacement;
  p is ``min(1, 2 · min(P*(Δ ≤ 0), P*(Δ ≥ 0)))`` with P* the bootstrap distribution of the mean
  difference, counted with the +1 correction ``(#+1)/(B+1)``; 95% intervals are percentiles.

Both measure query-sampling uncertainty of the test set, not seed-to-seed variance (the ± std of
the table).

**Multiple comparisons** (:func:`adjust_holm`): the family is every (protocol, row, direction)
test shown in the report — the pooled record when a row has several seeds, else its one seed —
and each gets Holm–Bonferroni's adjusted p (:func:`holm`); per-seed records outside the family
keep ``p_holm`` NaN. :func:`gain_warnings` flags in-list gains the full gallery does not match.
:func:`compare_rows` tests one row against another in both protocols (Holm over its four tests).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
from scipy.stats import permutation_test

from xmr.data.store import TABLE_ORDER
from xmr.metrics.full_gallery import hits_at_k
from xmr.metrics.ranking import ranked_recall_at_k
from xmr.report.collect import run_full_outcomes, run_predictions
from xmr.report.options import DEFAULT_TEST, N_RESAMPLES, TESTS
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


def _paired_finite(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    keep = np.isfinite(a) & np.isfinite(b)
    return a[keep], b[keep]


def paired_permutation(
    a: np.ndarray, b: np.ndarray, n_resamples: int = N_RESAMPLES, seed: int = 0
) -> dict[str, float]:
    """Paired sign-flip randomisation test of ``mean(a - b)``; ``a``, ``b``: per-query values (Q,).

    :func:`scipy.stats.permutation_test` over the pairs (``permutation_type="samples"``: each
    pair's two values swap, i.e. its difference flips sign), two-sided, vectorised,
    ``rng=numpy.random.default_rng(seed)``. Queries with a NaN in either are dropped. Only the
    queries whose values differ enter the resampling (a zero difference flips to itself, so the
    null distribution of the mean over all Q queries is the same; this also makes the test exact
    whenever those queries admit at most ``n_resamples`` sign patterns). Returns ``delta``,
    ``low``/``high`` (the paired bootstrap's 95% percentile interval, same seed), ``p`` and
    ``queries``, as :func:`paired_bootstrap`."""
    a, b = _paired_finite(a, b)
    q = len(a)
    res = paired_bootstrap(a, b, n_resamples, seed)
    if q == 0:
        return res
    differ = a != b
    if differ.sum() < 2:  # exactly: with 0 or 1 differing query every sign pattern is as
        return {**res, "p": 1.0}  # extreme as the observed one in one tail (scipy needs two)

    def mean_difference(x: np.ndarray, y: np.ndarray, axis: int) -> np.ndarray:
        return np.sum(x - y, axis=axis) / q  # the mean over all Q (the others add 0)

    m = int(differ.sum())
    test = permutation_test(
        (a[differ], b[differ]),
        mean_difference,
        permutation_type="samples",
        vectorized=True,
        n_resamples=n_resamples,
        batch=max(1, 2_000_000 // m),
        alternative="two-sided",
        rng=np.random.default_rng(seed),
    )
    return {**res, "p": float(min(1.0, test.pvalue))}


def paired_test(
    a: np.ndarray,
    b: np.ndarray,
    test: str = DEFAULT_TEST,
    n_resamples: int = N_RESAMPLES,
    seed: int = 0,
) -> dict[str, float]:
    """The paired test ``test`` (one of :data:`TESTS`) of ``mean(a - b)`` over queries."""
    if test == "permutation":
        return paired_permutation(a, b, n_resamples, seed)
    if test == "bootstrap":
        return paired_bootstrap(a, b, n_resamples, seed)
    raise ValueError(f"test={test!r}: one of {', '.join(TESTS)}")


def describe_test(test: str = DEFAULT_TEST, n_resamples: int = N_RESAMPLES, seed: int = 0) -> str:
    """The words a caption uses for the paired test ``test``."""
    if test == "permutation":
        return (
            f"paired sign-flip randomisation (permutation) test over queries, {n_resamples:,} "
            f"random sign patterns (seed {seed}; exact when fewer exist); 95% interval: paired "
            "bootstrap percentiles"
        )
    if test == "bootstrap":
        return (
            f"paired bootstrap over queries, {n_resamples:,} resamples (seed {seed}); 95% "
            "percentile interval"
        )
    raise ValueError(f"test={test!r}: one of {', '.join(TESTS)}")


#: (run, direction) → (arrays to align with the baseline's, per-query values (Q,)), or None.
PerQuery = Callable[[dict[str, Any], str], tuple[dict[str, np.ndarray], np.ndarray] | None]
#: (run's arrays, baseline's arrays) → row indices pairing the same queries, or None.
Align = Callable[
    [dict[str, np.ndarray], dict[str, np.ndarray]], tuple[np.ndarray, np.ndarray] | None
]


def list_outcomes(k: int = 1, recall: str = "hit") -> PerQuery:
    """Per query of a run's list protocol: R@k inside its candidate list
    (``predictions_{dir}.npz``; a list that missed its positives counts 0), with the arrays
    :func:`align_predictions` pairs."""

    def per_query(
        run: dict[str, Any], direction: str
    ) -> tuple[dict[str, np.ndarray], np.ndarray] | None:
        pred = run_predictions(run, direction)
        if pred is None:
            return None
        total = pred.get("relevant_total")  # lists that may miss: a miss counts 0
        return pred, ranked_recall_at_k(pred["labels"], k, recall, relevant_total=total).numpy()

    return per_query


def full_outcomes(k: int = 1, stage: str = "rank") -> PerQuery:
    """Per query of a run's full-gallery protocol: hit@k of the re-ranked gallery
    (``stage="rank"``) or of the first stage's order (``"first_stage_rank"``), from
    ``predictions_full_{dir}.npz``, with the arrays :func:`align_queries` pairs."""

    def per_query(
        run: dict[str, Any], direction: str
    ) -> tuple[dict[str, np.ndarray], np.ndarray] | None:
        out = run_full_outcomes(run, direction)
        if out is None:
            return None
        return out, hits_at_k(out[stage], k)  # (Q,)

    return per_query


def significance(
    rows: dict[str, dict[str, Any]],
    k: int = 1,
    recall: str = "hit",
    n_resamples: int = N_RESAMPLES,
    seed: int = 0,
    test: str = DEFAULT_TEST,
) -> list[dict[str, Any]]:
    """Each row against the CLIP-cosine row inside the candidate lists: the paired ``test`` of
    per-query R@k (see module doc).

    Returns records ``{"protocol": "lists", "row", "base" (the row compared with), "direction",
    "seed" ("pooled" or a seed), "delta", "low", "high" (percent points), "p", "p_holm" (NaN
    until :func:`adjust_holm`), "queries", "note"}``; a record with a ``note`` and NaN values
    when a comparison is impossible (no predictions, different test lists).
    """
    return _against_baseline(rows, "lists", list_outcomes(k, recall), n_resamples, seed, test)


def full_gallery_significance(
    rows: dict[str, dict[str, Any]],
    k: int = 1,
    n_resamples: int = N_RESAMPLES,
    seed: int = 0,
    test: str = DEFAULT_TEST,
) -> list[dict[str, Any]]:
    """Each row against the CLIP-cosine row in the full-gallery protocol: the paired ``test`` of
    per-query hit@k over the re-ranked gallery (``predictions_full_{dir}.npz``). Records as
    :func:`significance` with ``"protocol": "full_gallery"``; rows whose runs wrote no per-query
    outcomes get a record with a ``note``."""
    return _against_baseline(rows, "full_gallery", full_outcomes(k), n_resamples, seed, test)


def first_stage_significance(
    rows: dict[str, dict[str, Any]],
    k: int = 1,
    n_resamples: int = N_RESAMPLES,
    seed: int = 0,
    test: str = DEFAULT_TEST,
) -> list[dict[str, Any]]:
    """Each re-ranking row against **its own first stage** in the full-gallery protocol: per
    query, hit@k of the re-ranked gallery (``rank``) vs hit@k of the first stage's order
    (``first_stage_rank``) of the same run, so that a two-stage pipeline is tested against what
    it re-ranks (``reranker_listnet@infonce`` against the InfoNCE model of the same seed).

    Per seed, and pooled: both sides' per-query hits averaged over the seeds first (the seeds of
    one query are not independent units), then the paired ``test`` over queries. Rows whose
    re-ranking never changes a hit (a scorer that is its own first stage: cosine, a pairwise
    model with ``first_stage=self``) get no record. Records as :func:`significance` with
    ``"protocol": "first_stage"``."""
    reranked, first = full_outcomes(k, "rank"), full_outcomes(k, "first_stage_rank")
    records = []
    for name, row in rows.items():
        for direction in TABLE_ORDER:
            per_seed = []
            query = None
            for run in sorted(row["runs"], key=lambda r: str(r.get("seed"))):
                got, base = reranked(run, direction), first(run, direction)
                if got is None or base is None:
                    continue
                if query is not None and not np.array_equal(got[0]["query"], query):
                    continue  # another query set: not pooled with the first seed's
                query = got[0]["query"]
                per_seed.append((run.get("seed"), got[1], base[1]))
            if not per_seed or all(np.array_equal(a, b) for _, a, b in per_seed):
                continue
            pooled = (
                np.mean(np.stack([v for _, v, _ in per_seed]), axis=0),  # (Q,)
                np.mean(np.stack([b for _, _, b in per_seed]), axis=0),  # (Q,)
            )
            records += _records(
                "first_stage",
                name,
                "first stage",
                direction,
                per_seed,
                pooled,
                n_resamples,
                seed,
                test,
            )
    return records


def _seed_pairs(
    runs: list[dict[str, Any]],
    base_runs: list[dict[str, Any]],
    direction: str,
    per_query: PerQuery,
    align: Align,
) -> tuple[list[tuple[Any, np.ndarray, np.ndarray, np.ndarray]], bool]:
    """Each run of ``runs`` paired with a run of ``base_runs`` on the same queries (and, for the
    lists, the same candidate lists): the one of the same seed when it pairs, else the first
    that does (CLIP cosine's one run pairs with every seed). Returns ``([(seed, query ids (Q,),
    values (Q,), base values (Q,)), ...], mismatch)`` — ``mismatch``: some run had outcomes but
    no base run to pair with."""
    bases = [(r, got) for r in base_runs if (got := per_query(r, direction)) is not None]
    pairs, mismatch = [], False
    for run in sorted(runs, key=lambda r: str(r.get("seed"))):
        got = per_query(run, direction)
        if got is None or not bases:
            continue
        pred, value = got
        order = sorted(bases, key=lambda b: b[0].get("seed") != run.get("seed"))  # stable
        for _, (base, base_value) in order:
            pair = align(pred, base)
            if pair is not None:
                a_idx, b_idx = pair
                pairs.append(
                    (run.get("seed"), base["query"][b_idx], value[a_idx], base_value[b_idx])
                )
                break
        else:
            mismatch = True
    return pairs, mismatch


def _pooled(
    pairs: list[tuple[Any, np.ndarray, np.ndarray, np.ndarray]],
) -> tuple[np.ndarray, np.ndarray]:
    """Per query, both sides averaged over the seeds (the seeds of one query are not independent
    units): ``(values (Q,), base values (Q,))`` over the first pair's queries; pairs on another
    query set are left out."""
    query = pairs[0][1]
    order = np.argsort(query, kind="stable")
    values, bases = [], []
    for _, q, value, base in pairs:
        if len(q) != len(query) or not np.array_equal(np.sort(q), query[order]):
            continue
        idx = np.argsort(q, kind="stable")  # into query order of the first pair
        values.append(value[idx])
        bases.append(base[idx])
    return np.nanmean(np.stack(values), axis=0), np.nanmean(np.stack(bases), axis=0)


def _records(
    protocol: str,
    name: str,
    base_name: str,
    direction: str,
    per_seed: list[tuple[Any, np.ndarray, np.ndarray]],
    pooled: tuple[np.ndarray, np.ndarray] | None,
    n_resamples: int,
    seed: int,
    test: str,
) -> list[dict[str, Any]]:
    """One record per seed of ``per_seed`` (``(seed, values, base values)``, queries aligned),
    then, when there are several seeds, the ``pooled`` one (``(values, base values)``, both
    sides averaged per query over the seeds)."""
    records = [
        _record(
            protocol,
            name,
            base_name,
            direction,
            run_seed,
            paired_test(value, base, test, n_resamples, seed),
        )
        for run_seed, value, base in per_seed
    ]
    if len(per_seed) > 1 and pooled is not None:
        records.append(
            _record(
                protocol,
                name,
                base_name,
                direction,
                "pooled",
                paired_test(*pooled, test, n_resamples, seed),
            )
        )
    return records


#: Per protocol of :func:`compare_rows` / the baseline tests: how queries pair, what a mismatch
#: and a run without outcomes say.
_PROTOCOL_PAIRING: dict[str, tuple[Align, str, str]] = {
    "lists": (align_predictions, "different test lists than {base}: not compared", ""),
    "full_gallery": (
        align_queries,
        "different test queries than {base}: not compared",
        "no per-query full-gallery outcomes (predictions_full_*.npz): not tested",
    ),
}


def _row_vs_row(
    protocol: str,
    name: str,
    row: dict[str, Any],
    base_name: str,
    base_row: dict[str, Any],
    per_query: PerQuery,
    n_resamples: int,
    seed: int,
    test: str,
) -> list[dict[str, Any]]:
    """The records of row ``name`` against row ``base_name`` in one protocol, both directions:
    per seed (each run paired with the base run of its seed, else the first that pairs) and
    pooled over the seeds per query (:func:`_pooled`)."""
    align, mismatch_note, missing_note = _PROTOCOL_PAIRING[protocol]
    records = []
    for direction in TABLE_ORDER:
        if not any(per_query(r, direction) is not None for r in base_row["runs"]):
            continue
        pairs, mismatch = _seed_pairs(row["runs"], base_row["runs"], direction, per_query, align)
        if not pairs:
            note = mismatch_note.format(base=base_name) if mismatch else missing_note
            if note:
                records.append(_nan_record(protocol, name, base_name, direction, note))
            continue
        per_seed = [(s, value, base) for s, _, value, base in pairs]
        records += _records(
            protocol,
            name,
            base_name,
            direction,
            per_seed,
            _pooled(pairs) if len(pairs) > 1 else None,
            n_resamples,
            seed,
            test,
        )
    return records


def _against_baseline(
    rows: dict[str, dict[str, Any]],
    protocol: str,
    per_query: PerQuery,
    n_resamples: int,
    seed: int,
    test: str,
) -> list[dict[str, Any]]:
    """Every row against the CLIP-cosine row in one protocol (:func:`_row_vs_row`)."""
    base = next(((n, r) for n, r in rows.items() if r["method"] == BASELINE and r["runs"]), None)
    if base is None:
        return []
    base_name, base_row = base
    records = []
    for name, row in rows.items():
        if row["method"] == BASELINE or not row["runs"]:
            continue
        records += _row_vs_row(
            protocol, name, row, base_name, base_row, per_query, n_resamples, seed, test
        )
    return records


def compare_rows(
    rows: dict[str, dict[str, Any]],
    name: str,
    base_name: str,
    k: int = 1,
    recall: str = "hit",
    n_resamples: int = N_RESAMPLES,
    seed: int = 0,
    test: str = DEFAULT_TEST,
) -> list[dict[str, Any]]:
    """Row ``name`` against row ``base_name`` (``xmr report ROOT --compare A B``) in both
    protocols — full gallery (hit@k of ``predictions_full_*.npz`` ``rank``) and lists (R@k
    inside the lists of ``predictions_*.npz``) — per query, seeds averaged per query first, by
    the paired ``test``; records as :func:`significance` (``base``: ``base_name``), Holm-adjusted
    over the comparison's tests (:func:`adjust_holm`). Raises KeyError naming the rows when
    either is not a row."""
    for wanted in (name, base_name):
        if wanted not in rows:
            raise KeyError(f"no row {wanted!r}; rows: {', '.join(map(repr, rows))}")
    records = []
    for protocol, per_query in (
        ("full_gallery", full_outcomes(k)),
        ("lists", list_outcomes(k, recall)),
    ):
        records += _row_vs_row(
            protocol,
            name,
            rows[name],
            base_name,
            rows[base_name],
            per_query,
            n_resamples,
            seed,
            test,
        )
    return adjust_holm(records)


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
    protocol: str, name: str, base: str, direction: str, seed: Any, res: dict[str, float]
) -> dict[str, Any]:
    return {
        "protocol": protocol,
        "row": name,
        "base": base,
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


def _nan_record(protocol: str, name: str, base: str, direction: str, note: str) -> dict[str, Any]:
    nan = math.nan
    return {
        "protocol": protocol,
        "row": name,
        "base": base,
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
