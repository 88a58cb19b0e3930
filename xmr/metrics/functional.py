"""Per-list retrieval metrics as pure, vectorised functions over ``(scores, labels, mask)``.

Inputs (B queries/lists, L candidates per list):

- ``scores`` ``(B, L)`` float: higher means "more relevant".
- ``labels`` ``(B, L)`` relevance, ``{0, 1}`` in xmr (any dtype; ``labels > 0`` is relevant).
- ``mask``   ``(B, L)`` bool: ``True`` = real candidate, ``False`` = padding.

Every metric returns one value per list, shape ``(B,)``, as float32 (float64 for float64 scores).

Candidates are ranked in the pessimistic order of :mod:`xmr.metrics.ranking` (the one order of
xmr, also used for the predictions files and by LambdaLoss):

- **Padding** is never ranked: padded candidates come after every real one whatever their score
  or label, never count as relevant and never take a rank that a real item could take. Their
  entries in :func:`ranks_of` hold :data:`PAD_RANK`.
- **Ties are broken pessimistically**: among candidates with equal scores, the less relevant ones
  rank first (a relevant item tied with an irrelevant one ranks *below* it), so a constant scorer
  gets the worst possible ranking and never looks good.
- **NaN scores** rank below every real number (as if ``-inf``), after every other real candidate.

Lists with no relevant real item have no defined recall / nDCG / MRR: those entries are **NaN**
(use ``torch.isnan`` or :func:`has_positive` to select them). Accumulators
(:class:`xmr.metrics.retrieval.ListRetrievalMetrics`) exclude them from every average and count
them as ``lists_without_positive``.

**Missed lists.** A list cut from a larger ranking (xmr's ``first_stage`` and ``pool`` lists) may
lack a relevant item that exists: :func:`list_metrics` then takes ``relevant_total (B,)``, the
number of items relevant to each query in the set the list was cut from. A list with no relevant
real candidate but ``relevant_total > 0`` is a **miss**: 0 for every metric (not NaN), so it
enters the averages (counted as ``lists_missed``); a list with ``relevant_total == 0`` stays NaN.
found@K then divides by ``max(relevant_total, relevant items in the list)``; nDCG and MRR are
measured within the list.

A cut-off ``k`` larger than the number of real items in a list is valid: the cut then keeps the
whole list (e.g. hit@K is 1 for every list that has a relevant item). ``k < 1`` raises
``ValueError``.

Definitions (``rank`` is 1-based, after the rules above):

- hit@K (``recall_hit_at_k``, the cross-modal standard "Recall@K"): 1 if any relevant item has
  ``rank <= K``, else 0 (:func:`xmr.metrics.ranking.ranked_recall_at_k`, ``"hit"``).
- found@K (``recall_found_at_k``, the paper's eq. 5): (relevant items with ``rank <= K``) /
  (all relevant items). Equals hit@K when a list has exactly one relevant item (``"found"``).
- nDCG@K (``ndcg_at_k``): ``DCG@K / IDCG@K`` with ``DCG@K = sum_{rank<=K} (2^rel - 1) /
  log2(rank + 1)`` over the relevant items, IDCG@K the same sum over the labels sorted in
  decreasing order (gains, discounts and IDCG of :mod:`xmr.metrics.ranking`).
- MRR (``mrr``): ``1 / rank`` of the best-ranked relevant item; with a cut-off ``k``, 0 when that
  rank exceeds ``k``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from xmr.metrics.ranking import (
    dcg_discounts,
    dcg_gains,
    ideal_dcg,
    pessimistic_order,
    ranked_recall_at_k,
    ranks_from_order,
)

__all__ = [
    "PAD_RANK",
    "check_inputs",
    "check_k",
    "has_positive",
    "list_metrics",
    "missed_lists",
    "mrr",
    "ndcg_at_k",
    "ranks_of",
    "recall_found_at_k",
    "recall_hit_at_k",
]

#: Value stored by :func:`ranks_of` at padded positions: larger than any cut-off, so that even a
#: careless ``ranks <= k`` never counts padding.
PAD_RANK: int = torch.iinfo(torch.int64).max


def check_inputs(scores: Tensor, labels: Tensor | None, mask: Tensor) -> None:
    """Validate the shapes and dtypes of ``(scores, labels, mask)`` (no device synchronisation).

    Raises:
        ValueError: scores not 2-D floating, mask not bool, or shapes that differ.
    """
    if scores.dim() != 2:
        raise ValueError(f"scores must be 2-D (B, L), got shape {tuple(scores.shape)}")
    if not torch.is_floating_point(scores):
        raise ValueError(f"scores must be a floating-point tensor, got dtype {scores.dtype}")
    if mask.dtype != torch.bool:
        raise ValueError(f"mask must be a bool tensor (True = real candidate), got {mask.dtype}")
    if mask.shape != scores.shape:
        raise ValueError(
            f"mask shape {tuple(mask.shape)} must equal scores shape {tuple(scores.shape)}"
        )
    if labels is not None and labels.shape != scores.shape:
        raise ValueError(
            f"labels shape {tuple(labels.shape)} must equal scores shape {tuple(scores.shape)}"
        )


def check_k(k: int, name: str = "k") -> None:
    """Raise ``ValueError`` unless the cut-off ``k`` is an int ``>= 1``."""
    if isinstance(k, bool) or not isinstance(k, int):
        raise ValueError(f"{name} must be an int >= 1, got {k!r}")
    if k < 1:
        raise ValueError(f"{name} must be >= 1 (a cut-off of at least one item), got {k}")


def _ranked(scores: Tensor, labels: Tensor, mask: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """``(ranks, relevant, ranked_relevant)``, each ``(B, L)``: 1-based pessimistic ranks
    (:data:`PAD_RANK` at padding), whether each candidate is a relevant real one, and that
    relevance in ranked order (best first, padding last)."""
    check_inputs(scores, labels, mask)
    order = pessimistic_order(scores, labels, mask)  # (B, L)
    relevant = _relevant(labels, mask)  # (B, L)
    ranks = ranks_from_order(order).masked_fill(~mask, PAD_RANK)  # (B, L)
    return ranks, relevant, relevant.gather(1, order)


def ranks_of(scores: Tensor, labels: Tensor, mask: Tensor) -> Tensor:
    """1-based rank of every candidate under pessimistic tie-breaking (see module docstring).

    Args:
        scores: ``(B, L)`` float.
        labels: ``(B, L)`` relevance (``> 0`` relevant); larger labels lose ties.
        mask: ``(B, L)`` bool, True = real candidate.

    Returns:
        ``(B, L)`` int64. Real candidates of list ``b`` hold a permutation of
        ``1..mask[b].sum()``; padded positions hold :data:`PAD_RANK`.
    """
    return _ranked(scores, labels, mask)[0]


def _relevant(labels: Tensor, mask: Tensor) -> Tensor:
    return (labels > 0) & mask  # (B, L) bool


def has_positive(labels: Tensor, mask: Tensor) -> Tensor:
    """``(B,)`` bool: whether each list has at least one relevant real candidate."""
    if labels.shape != mask.shape:
        raise ValueError(
            f"labels shape {tuple(labels.shape)} must equal mask shape {tuple(mask.shape)}"
        )
    return _relevant(labels, mask).any(dim=1)


def missed_lists(labels: Tensor, mask: Tensor, relevant_total: Tensor) -> Tensor:
    """``(B,)`` bool: lists with no relevant real candidate although ``relevant_total (B,)``
    relevant items exist for their query (see "Missed lists" in the module docstring)."""
    if relevant_total.shape != labels.shape[:1]:
        raise ValueError(
            f"relevant_total shape {tuple(relevant_total.shape)} must be (B,) = "
            f"({labels.shape[0]},)"
        )
    return ~has_positive(labels, mask) & (relevant_total.to(labels.device) > 0)


def _out_dtype(scores: Tensor) -> torch.dtype:
    return torch.float64 if scores.dtype == torch.float64 else torch.float32


def _nan_where_no_positive(values: Tensor, relevant: Tensor) -> Tensor:
    return values.masked_fill(~relevant.any(dim=1), float("nan"))


def _ndcg(ranks: Tensor, relevant: Tensor, labels: Tensor, k: int, dtype: torch.dtype) -> Tensor:
    gains = dcg_gains(labels.to(dtype), relevant)  # (B, L), 0 unless relevant
    dcg = (gains * dcg_discounts(ranks.to(dtype), k)).sum(dim=1)  # (B,)
    idcg = ideal_dcg(gains, k)  # (B,)
    return _nan_where_no_positive(dcg / idcg.clamp_min(torch.finfo(dtype).tiny), relevant)


def _mrr(ranks: Tensor, relevant: Tensor, k: int | None, dtype: torch.dtype) -> Tensor:
    first = torch.where(relevant, ranks, PAD_RANK).min(dim=1).values  # (B,)
    rr = 1.0 / first.clamp_max(ranks.shape[1] + 1).to(dtype)  # clamp keeps no-positive finite
    if k is not None:
        rr = torch.where(first <= k, rr, 0.0)
    return _nan_where_no_positive(rr, relevant)


def recall_hit_at_k(scores: Tensor, labels: Tensor, mask: Tensor, k: int) -> Tensor:
    """hit@K: 1 if any relevant real candidate ranks in the top ``k``, else 0; NaN without one.

    This is the standard cross-modal "Recall@K". ``k`` beyond the list length keeps the whole list.

    Returns:
        ``(B,)`` float in ``{0, 1}`` or NaN.
    """
    check_k(k)
    ranked_relevant = _ranked(scores, labels, mask)[2]  # (B, L)
    return ranked_recall_at_k(ranked_relevant, k, "hit", _out_dtype(scores))


def recall_found_at_k(scores: Tensor, labels: Tensor, mask: Tensor, k: int) -> Tensor:
    """found@K: (relevant items in the top ``k``) / (all relevant items) — the paper's eq. 5.

    Agrees with :func:`recall_hit_at_k` on lists with exactly one relevant item. NaN for lists
    without a relevant real candidate.

    Returns:
        ``(B,)`` float in ``[0, 1]`` or NaN.
    """
    check_k(k)
    ranked_relevant = _ranked(scores, labels, mask)[2]  # (B, L)
    return ranked_recall_at_k(ranked_relevant, k, "found", _out_dtype(scores))


def ndcg_at_k(scores: Tensor, labels: Tensor, mask: Tensor, k: int = 10) -> Tensor:
    """nDCG@K with gains ``2^rel - 1`` and discount ``1 / log2(rank + 1)``.

    The ideal DCG sorts the real candidates' labels in decreasing order. NaN for lists without a
    relevant real candidate (IDCG = 0).

    Returns:
        ``(B,)`` float in ``[0, 1]`` or NaN.
    """
    check_k(k)
    ranks, relevant, _ = _ranked(scores, labels, mask)  # (B, L) each
    return _ndcg(ranks, relevant, labels, k, _out_dtype(scores))


def mrr(scores: Tensor, labels: Tensor, mask: Tensor, k: int | None = None) -> Tensor:
    """Reciprocal rank of the best-ranked relevant real candidate; NaN without one.

    Args:
        k: optional cut-off; when given, lists whose first relevant item ranks below ``k`` get 0.
            ``None`` (default) uses the full list.

    Returns:
        ``(B,)`` float in ``(0, 1]`` (``[0, 1]`` with a cut-off) or NaN.
    """
    if k is not None:
        check_k(k)
    ranks, relevant, _ = _ranked(scores, labels, mask)  # (B, L) each
    return _mrr(ranks, relevant, k, _out_dtype(scores))


def list_metrics(
    scores: Tensor,
    labels: Tensor,
    mask: Tensor,
    ks: Sequence[int] = (1, 5, 10),
    ndcg_k: int = 10,
    relevant_total: Tensor | None = None,
) -> dict[str, Tensor]:
    """All per-list metrics at once, ranking each list a single time.

    Args:
        relevant_total: optional ``(B,)`` integer count of the items relevant to each query in
            the set its list was cut from; with it a list without a relevant real candidate but
            ``relevant_total > 0`` is a miss (0, not NaN) and found@K divides by
            ``max(relevant_total, relevant items in the list)`` ("Missed lists" above).

    Returns:
        ``{"recall@K": hit@K, "recall_found@K": found@K (for each K in ks), "ndcg@{ndcg_k}",
        "mrr"}``, each ``(B,)`` with NaN for lists without a relevant real candidate (that are
        not misses).
    """
    for k in ks:
        check_k(k, "ks entry")
    check_k(ndcg_k, "ndcg_k")
    dtype = _out_dtype(scores)
    ranks, relevant, ranked_relevant = _ranked(scores, labels, mask)  # (B, L) each
    out: dict[str, Tensor] = {}
    for k in ks:
        out[f"recall@{k}"] = ranked_recall_at_k(ranked_relevant, k, "hit", dtype)
    for k in ks:
        out[f"recall_found@{k}"] = ranked_recall_at_k(ranked_relevant, k, "found", dtype)
    out[f"ndcg@{ndcg_k}"] = _ndcg(ranks, relevant, labels, ndcg_k, dtype)
    out["mrr"] = _mrr(ranks, relevant, None, dtype)
    if relevant_total is not None:
        missed = missed_lists(labels, mask, relevant_total)  # (B,)
        out = {key: v.masked_fill(missed, 0.0) for key, v in out.items()}
        n_in = relevant.sum(dim=1)  # (B,)
        total = torch.maximum(relevant_total.to(n_in.device), n_in)  # (B,)
        for k in ks:
            found = out[f"recall_found@{k}"]
            scaled = found * n_in.to(dtype) / total.clamp_min(1).to(dtype)
            out[f"recall_found@{k}"] = torch.where(n_in < total, scaled, found)
    return out
