"""Per-list retrieval metrics as pure, vectorised functions over ``(scores, labels, mask)``.

Inputs (B queries/lists, L candidates per list):

- ``scores`` ``(B, L)`` float: higher means "more relevant".
- ``labels`` ``(B, L)`` relevance, ``{0, 1}`` in xmr (any dtype; ``labels > 0`` is relevant).
- ``mask``   ``(B, L)`` bool: ``True`` = real candidate, ``False`` = padding.

Every metric returns one value per list, shape ``(B,)``, as float32 (float64 for float64 scores).

Ranking rules (shared by every function here):

- **Padding** is never ranked: padded candidates are placed after every real one whatever their
  score or label, never count as relevant and never occupy a rank that a real item could take.
  Their entries in :func:`ranks_of` hold :data:`PAD_RANK`.
- **Ties are broken pessimistically**: among candidates with equal scores, the less relevant ones
  rank first (a relevant item tied with an irrelevant one ranks *below* it), so a constant scorer
  gets the worst possible ranking and never looks good. Tied candidates of equal relevance keep
  their input order (this choice does not change any metric value).
- **NaN scores** rank below every real number (as if ``-inf``), again the pessimistic choice; a
  NaN tied with ``-inf`` follows the tie rule above.

Lists with no relevant real item have no defined recall / nDCG / MRR: those entries are **NaN**
(use ``torch.isnan`` or :func:`has_positive` to select them). Accumulators
(:class:`xmr.metrics.retrieval.ListRetrievalMetrics`) exclude them from every average and count
them as ``lists_without_positive``.

A cut-off ``k`` larger than the number of real items in a list is valid: the cut then keeps the
whole list (e.g. hit@K is 1 for every list that has a relevant item). ``k < 1`` raises
``ValueError``.

Definitions (``rank`` is 1-based, after the rules above):

- hit@K (``recall_hit_at_k``, the cross-modal standard "Recall@K"): 1 if any relevant item has
  ``rank <= K``, else 0.
- found@K (``recall_found_at_k``, the paper's eq. 5): (relevant items with ``rank <= K``) /
  (all relevant items). Equals hit@K when a list has exactly one relevant item.
- nDCG@K (``ndcg_at_k``): ``DCG@K / IDCG@K`` with ``DCG@K = sum_{rank<=K} (2^rel - 1) /
  log2(rank + 1)``, IDCG@K the same sum over the labels sorted in decreasing order.
- MRR (``mrr``): ``1 / rank`` of the best-ranked relevant item; with a cut-off ``k``, 0 when that
  rank exceeds ``k``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

__all__ = [
    "PAD_RANK",
    "has_positive",
    "list_metrics",
    "mrr",
    "ndcg_at_k",
    "ranks_of",
    "recall_found_at_k",
    "recall_hit_at_k",
    "topk_order",
]

#: Value stored by :func:`ranks_of` at padded positions: larger than any cut-off, so that even a
#: careless ``ranks <= k`` never counts padding.
PAD_RANK: int = torch.iinfo(torch.int64).max


def _check_inputs(scores: Tensor, labels: Tensor | None, mask: Tensor) -> None:
    """Validate shapes and dtypes (no device synchronisation)."""
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


def _check_k(k: int, name: str = "k") -> None:
    if isinstance(k, bool) or not isinstance(k, int):
        raise ValueError(f"{name} must be an int >= 1, got {k!r}")
    if k < 1:
        raise ValueError(f"{name} must be >= 1 (a cut-off of at least one item), got {k}")


def _order(scores: Tensor, mask: Tensor, labels: Tensor | None) -> Tensor:
    """Lexicographic order: real before padding, then score desc, then relevance asc, then index.

    Implemented as successive stable sorts from the least to the most significant key.
    Returns ``(B, L)`` int64 candidate indices.
    """
    scores = scores.detach().masked_fill(torch.isnan(scores), float("-inf"))  # (B, L)
    order = torch.arange(scores.shape[1], device=scores.device).expand_as(scores)  # (B, L)
    if labels is not None:
        rel = labels.detach().to(scores.dtype)  # (B, L)
        idx = torch.sort(rel, dim=1, stable=True).indices  # less relevant first (pessimistic)
        order = order.gather(1, idx)
    idx = torch.sort(scores.gather(1, order), dim=1, descending=True, stable=True).indices
    order = order.gather(1, idx)
    is_pad = (~mask).gather(1, order).to(torch.uint8)  # (B, L) 0 real, 1 padding
    idx = torch.sort(is_pad, dim=1, stable=True).indices
    return order.gather(1, idx)


def topk_order(scores: Tensor, mask: Tensor) -> Tensor:
    """Candidate indices of each list by decreasing score, padding last.

    Equal scores keep their input order; NaN scores come after every real number (before
    padding). Used to write predictions files: ``candidates.gather(1, topk_order(s, m))``.

    Args:
        scores: ``(B, L)`` float.
        mask: ``(B, L)`` bool, True = real candidate.

    Returns:
        ``(B, L)`` int64; row ``b`` lists the positions of list ``b``'s candidates, best first,
        with the ``L - mask[b].sum()`` padded positions at the end.
    """
    _check_inputs(scores, None, mask)
    return _order(scores, mask, None)


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
    _check_inputs(scores, labels, mask)
    order = _order(scores, mask, labels)  # (B, L)
    positions = torch.arange(1, scores.shape[1] + 1, device=scores.device).expand_as(order)
    ranks = torch.empty_like(order).scatter_(1, order, positions)  # (B, L)
    return ranks.masked_fill(~mask, PAD_RANK)


def _relevant(labels: Tensor, mask: Tensor) -> Tensor:
    return (labels > 0) & mask  # (B, L) bool


def has_positive(labels: Tensor, mask: Tensor) -> Tensor:
    """``(B,)`` bool: whether each list has at least one relevant real candidate."""
    if labels.shape != mask.shape:
        raise ValueError(
            f"labels shape {tuple(labels.shape)} must equal mask shape {tuple(mask.shape)}"
        )
    return _relevant(labels, mask).any(dim=1)


def _out_dtype(scores: Tensor) -> torch.dtype:
    return torch.float64 if scores.dtype == torch.float64 else torch.float32


def _nan_where_no_positive(values: Tensor, relevant: Tensor) -> Tensor:
    return values.masked_fill(~relevant.any(dim=1), float("nan"))


def _hit(ranks: Tensor, relevant: Tensor, k: int, dtype: torch.dtype) -> Tensor:
    hit = (relevant & (ranks <= k)).any(dim=1).to(dtype)  # (B,)
    return _nan_where_no_positive(hit, relevant)


def _found(ranks: Tensor, relevant: Tensor, k: int, dtype: torch.dtype) -> Tensor:
    found = (relevant & (ranks <= k)).sum(dim=1).to(dtype)  # (B,)
    total = relevant.sum(dim=1).to(dtype)  # (B,)
    return found / total  # 0 / 0 = NaN for lists without a positive


def _ndcg(ranks: Tensor, relevant: Tensor, labels: Tensor, k: int, dtype: torch.dtype) -> Tensor:
    gains = torch.where(relevant, torch.exp2(labels.to(dtype)) - 1.0, 0.0)  # (B, L)
    in_cut = relevant & (ranks <= k)  # (B, L)
    safe_ranks = torch.where(in_cut, ranks, 1).to(dtype)  # avoid log2 of PAD_RANK
    dcg = (gains * in_cut / torch.log2(safe_ranks + 1.0)).sum(dim=1)  # (B,)

    ideal = torch.sort(gains, dim=1, descending=True).values  # (B, L), padding gains are 0
    positions = torch.arange(1, ranks.shape[1] + 1, device=ranks.device, dtype=dtype)  # (L,)
    discount = torch.where(positions <= k, 1.0 / torch.log2(positions + 1.0), 0.0)  # (L,)
    idcg = (ideal * discount).sum(dim=1)  # (B,)
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
    _check_k(k)
    ranks = ranks_of(scores, labels, mask)  # (B, L)
    return _hit(ranks, _relevant(labels, mask), k, _out_dtype(scores))


def recall_found_at_k(scores: Tensor, labels: Tensor, mask: Tensor, k: int) -> Tensor:
    """found@K: (relevant items in the top ``k``) / (all relevant items) — the paper's eq. 5.

    Agrees with :func:`recall_hit_at_k` on lists with exactly one relevant item. NaN for lists
    without a relevant real candidate.

    Returns:
        ``(B,)`` float in ``[0, 1]`` or NaN.
    """
    _check_k(k)
    ranks = ranks_of(scores, labels, mask)  # (B, L)
    return _found(ranks, _relevant(labels, mask), k, _out_dtype(scores))


def ndcg_at_k(scores: Tensor, labels: Tensor, mask: Tensor, k: int = 10) -> Tensor:
    """nDCG@K with gains ``2^rel - 1`` and discount ``1 / log2(rank + 1)``.

    The ideal DCG sorts the real candidates' labels in decreasing order. NaN for lists without a
    relevant real candidate (IDCG = 0).

    Returns:
        ``(B,)`` float in ``[0, 1]`` or NaN.
    """
    _check_k(k)
    ranks = ranks_of(scores, labels, mask)  # (B, L)
    return _ndcg(ranks, _relevant(labels, mask), labels, k, _out_dtype(scores))


def mrr(scores: Tensor, labels: Tensor, mask: Tensor, k: int | None = None) -> Tensor:
    """Reciprocal rank of the best-ranked relevant real candidate; NaN without one.

    Args:
        k: optional cut-off; when given, lists whose first relevant item ranks below ``k`` get 0.
            ``None`` (default) uses the full list.

    Returns:
        ``(B,)`` float in ``(0, 1]`` (``[0, 1]`` with a cut-off) or NaN.
    """
    if k is not None:
        _check_k(k)
    ranks = ranks_of(scores, labels, mask)  # (B, L)
    return _mrr(ranks, _relevant(labels, mask), k, _out_dtype(scores))


def list_metrics(
    scores: Tensor,
    labels: Tensor,
    mask: Tensor,
    ks: Sequence[int] = (1, 5, 10),
    ndcg_k: int = 10,
) -> dict[str, Tensor]:
    """All per-list metrics at once, ranking each list a single time.

    Returns:
        ``{"recall@K": hit@K, "recall_found@K": found@K (for each K in ks), "ndcg@{ndcg_k}",
        "mrr"}``, each ``(B,)`` with NaN for lists without a relevant real candidate.
    """
    for k in ks:
        _check_k(k, "ks entry")
    _check_k(ndcg_k, "ndcg_k")
    dtype = _out_dtype(scores)
    ranks = ranks_of(scores, labels, mask)  # (B, L)
    relevant = _relevant(labels, mask)  # (B, L)
    out: dict[str, Tensor] = {}
    for k in ks:
        out[f"recall@{k}"] = _hit(ranks, relevant, k, dtype)
    for k in ks:
        out[f"recall_found@{k}"] = _found(ranks, relevant, k, dtype)
    out[f"ndcg@{ndcg_k}"] = _ndcg(ranks, relevant, labels, ndcg_k, dtype)
    out["mrr"] = _mrr(ranks, relevant, None, dtype)
    return out
