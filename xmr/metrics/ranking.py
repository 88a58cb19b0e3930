"""Ordering a candidate list and scoring the ranking: the one definition every part of xmr uses.

Inputs (B queries/lists, L candidates per list): ``scores (B, L)`` float, higher = better;
``labels (B, L)`` relevance (``> 0`` relevant; larger = more relevant); ``mask (B, L)`` bool,
True = real candidate, False = padding.

**The pessimistic order** (:func:`pessimistic_order`), a lexicographic sort on four keys:

1. real candidates before padding: padding comes after everything, whatever its score or label;
2. score, descending; a **NaN score ranks below every real number** (it counts as ``-inf``, so a
   NaN tied with ``-inf`` follows rule 3), after every other real candidate and before padding;
3. **ties break pessimistically**: among equal scores the less relevant candidate comes first, so
   a relevant item tied with irrelevant ones ranks below them and a constant scorer gets the worst
   ranking, never a good one;
4. input position (equal score *and* label: interchangeable, no metric depends on this rule).

Without labels, rule 3 is skipped. The training step (LambdaLoss's pair weights), the logged
metrics, the predictions files and the full-gallery protocols all rank with it.

**Recall@K from a ranking** (:func:`ranked_recall_at_k`, input: the labels in ranked order):

- ``"hit"`` (the cross-modal standard "Recall@K"): 1 if any relevant item is among the first K;
- ``"found"`` (the paper's eq. 5): relevant items among the first K / all relevant items.

Both equal on a list with one relevant item. A list without a relevant item has no recall: NaN.
A cut-off beyond the list keeps the whole list.

**rsum** (:func:`rsum`): ``100 * sum of Recall@K for K in`` :data:`RSUM_KS` over the directions.

**DCG**: gains ``2^y - 1`` (:func:`dcg_gains`, 0 at padding), discounts ``1 / log2(rank + 1)``
(:func:`dcg_discounts`, 0 beyond the cut-off), the ideal DCG from the gains sorted in decreasing
order (:func:`ideal_dcg`; 0 for a list without a positive, so its nDCG is undefined).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import TypeVar

import numpy as np
import torch
from torch import Tensor

__all__ = [
    "RECALL_DEFINITIONS",
    "RSUM_KS",
    "dcg_discounts",
    "dcg_gains",
    "ideal_dcg",
    "pessimistic_order",
    "pessimistic_ranks",
    "pessimistic_topk",
    "ranked_recall_at_k",
    "ranked_recall_curve",
    "ranks_from_order",
    "rsum",
]

#: The cut-offs summed by :func:`rsum`: R@1 + R@5 + R@10, per direction.
RSUM_KS: tuple[int, ...] = (1, 5, 10)

#: The two Recall@K definitions: ``"hit"`` (any relevant item in the top K) and ``"found"``
#: (the fraction of the relevant items in the top K).
RECALL_DEFINITIONS: tuple[str, ...] = ("hit", "found")

T = TypeVar("T", float, Tensor)


# -- ordering --------------------------------------------------------------------------------------
def _order_key(scores: Tensor, mask: Tensor) -> Tensor:
    """``(B, L)`` ascending sort key of rules 1-2: ``-score``, a NaN score as ``+inf`` (a -inf
    score), padding NaN (sorts after ``+inf``)."""
    inf = float("inf")
    key = torch.nan_to_num(-scores.detach(), nan=inf, posinf=inf, neginf=-inf)  # (B, L)
    return torch.where(mask, key, float("nan"))


def pessimistic_order(scores: Tensor, labels: Tensor | None, mask: Tensor) -> Tensor:
    """Candidate indices of each list, best first, in the pessimistic order (module docstring).

    Two stable argsorts (labels ascending, then the score key) and elementwise ops only: no
    gradient, no host synchronisation, any device, safe under ``torch.vmap``.

    Args:
        scores: ``(B, L)`` float (any float dtype; NaN allowed).
        labels: ``(B, L)`` relevance (any dtype), or None to skip the tie rule.
        mask: ``(B, L)`` bool, True = real candidate.

    Returns:
        ``(B, L)`` int64: row ``b`` lists list ``b``'s positions best first, its real candidates
        first and its padded positions last (among themselves by label, then position).
        ``candidates.gather(1, order)`` is the ranked list.
    """
    key = _order_key(scores, mask)  # (B, L)
    if labels is None:
        return torch.sort(key, dim=-1, stable=True).indices
    labels = labels.detach()
    if labels.dtype == torch.bool:
        labels = labels.to(torch.uint8)
    by_label = torch.sort(labels, dim=-1, stable=True).indices  # less relevant first
    by_key = torch.sort(key.gather(-1, by_label), dim=-1, stable=True).indices
    return by_label.gather(-1, by_key)  # (B, L)


def pessimistic_topk(scores: Tensor, labels: Tensor | None, mask: Tensor, k: int) -> Tensor:
    """``pessimistic_order(scores, labels, mask)[:, :k]`` without sorting whole lists.

    Only the candidates scoring at least each list's k-th best score (its ties included) can be
    among its first ``k``; they are ranked with :func:`pessimistic_order`. For long lists (a
    full gallery) and small ``k``. One host synchronisation (the widest such set), so not for
    ``torch.vmap``.

    Returns:
        ``(B, min(k, L))`` int64 candidate indices, best first.
    """
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    length = scores.shape[-1]
    if 2 * k >= length:
        return pessimistic_order(scores, labels, mask)[:, :k]
    key = _order_key(scores, mask)  # (B, L)
    inf = float("inf")
    real_key = key.nan_to_num(nan=inf, posinf=inf)  # (B, L), padding as +inf for the k-th value
    kth = torch.topk(real_key, k, dim=-1, largest=False).values[:, -1:]  # (B, 1)
    keep = key <= kth  # (B, L), never padding (NaN key)
    counts = keep.sum(dim=-1)  # (B,)
    # Fewer than k kept: the list has fewer than k real candidates (all kept) and its first k
    # run into padding, so it keeps everything.
    short = counts < k  # (B,)
    keep = keep | short[:, None]
    counts = torch.where(short, length, counts)
    # The kept candidates of each list, in input order (rule 4 sees the same positions), packed
    # into ``W`` slots; empty slots act as padding.
    width = int(counts.max())
    rows, cols = keep.nonzero(as_tuple=True)  # row-major: each list's kept candidates in order
    first = counts.cumsum(dim=0) - counts  # (B,): index in ``rows`` of each list's first one
    slot = torch.arange(rows.numel(), device=keep.device) - first[rows]  # (N_kept,)
    chosen = torch.zeros(keep.shape[0], width, dtype=torch.long, device=keep.device)  # (B, W)
    chosen[rows, slot] = cols
    filled = torch.zeros(keep.shape[0], width, dtype=torch.bool, device=keep.device)  # (B, W)
    filled[rows, slot] = True
    sub_labels = None if labels is None else labels.gather(-1, chosen)
    sub_mask = filled & mask.gather(-1, chosen)  # (B, W)
    sub_order = pessimistic_order(scores.gather(-1, chosen), sub_labels, sub_mask)
    return chosen.gather(-1, sub_order[:, :k])  # (B, k)


def ranks_from_order(order: Tensor) -> Tensor:
    """1-based rank ``(B, L)`` int64 of every candidate, from an order ``(B, L)`` (its inverse
    permutation, by an argsort: safe under ``torch.vmap``)."""
    return order.argsort(dim=-1) + 1


def pessimistic_ranks(scores: Tensor, labels: Tensor, mask: Tensor) -> Tensor:
    """1-based rank ``(B, L)`` int64 of every candidate in the pessimistic order (no gradient).

    The real candidates of list ``b`` hold ``1..n_b`` (``n_b = mask[b].sum()``); padded positions
    hold ``n_b + 1..L``, after every real one.
    """
    return ranks_from_order(pessimistic_order(scores, labels, mask))


# -- Recall@K --------------------------------------------------------------------------------------
def _check_definition(definition: str) -> None:
    if definition not in RECALL_DEFINITIONS:
        raise ValueError(f"recall definition {definition!r}: one of {RECALL_DEFINITIONS}")


def _as_relevant(ranked_labels: Tensor | np.ndarray) -> Tensor:
    if ranked_labels.ndim != 2:
        raise ValueError(f"ranked labels must be 2-D (Q, L), got shape {ranked_labels.shape}")
    return torch.as_tensor(ranked_labels) > 0  # (Q, L)


def ranked_recall_at_k(
    ranked_labels: Tensor | np.ndarray,
    k: int,
    definition: str = "hit",
    dtype: torch.dtype = torch.float64,
    relevant_total: Tensor | np.ndarray | None = None,
) -> Tensor:
    """Recall@K of each list, from its labels in ranked order (best first).

    Args:
        ranked_labels: ``(Q, L)`` labels (``> 0`` relevant) in ranked order, e.g. the ``labels``
            of a predictions file, or ``labels.gather(1, order)``; padding holds label 0 (it is
            never relevant). A numpy array is read without a copy.
        k: cut-off ``>= 1``; beyond ``L`` it keeps the whole list.
        definition: ``"hit"`` or ``"found"`` (module docstring).
        dtype: floating dtype of the result.
        relevant_total: ``(Q,)`` number of items relevant to each query in the whole gallery it
            was ranked from (lists that may miss their positive: ``first_stage`` / ``pool``
            mining); a list without a relevant candidate then scores 0 when its query has a
            relevant item elsewhere, and ``found`` divides by it. None: the list holds them all.

    Returns:
        ``(Q,)`` in ``[0, 1]``; NaN for a query without any relevant item.
    """
    _check_definition(definition)
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    relevant = _as_relevant(ranked_labels)  # (Q, L)
    total = relevant.sum(dim=1).to(dtype)  # (Q,)
    if relevant_total is not None:
        total = torch.as_tensor(np.asarray(relevant_total)).to(dtype)  # (Q,)
    if definition == "hit":
        hit = relevant[:, :k].any(dim=1).to(dtype)  # (Q,)
        return hit.masked_fill(total == 0, float("nan"))
    return relevant[:, :k].sum(dim=1).to(dtype) / total  # 0 / 0 = NaN without a positive


def ranked_recall_curve(
    ranked_labels: Tensor | np.ndarray, max_k: int, definition: str = "hit"
) -> Tensor:
    """Mean Recall@K for ``K = 1 .. min(max_k, L)`` over the lists that have a relevant item.

    Args:
        ranked_labels: ``(Q, L)`` labels in ranked order, as :func:`ranked_recall_at_k`.
        max_k: the largest cut-off, ``>= 1``.
        definition: ``"hit"`` or ``"found"``.

    Returns:
        ``(K,)`` float64 fractions; all NaN when no list has a relevant item.
    """
    _check_definition(definition)
    if max_k < 1:
        raise ValueError(f"max_k must be >= 1, got {max_k}")
    relevant = _as_relevant(ranked_labels)  # (Q, L)
    total = relevant.sum(dim=1)  # (Q,)
    keep = total > 0  # (Q,)
    found = relevant[keep][:, :max_k].cumsum(dim=1).to(torch.float64)  # (Q', K)
    if definition == "hit":
        per_list = (found > 0).to(torch.float64)
    else:
        per_list = found / total[keep, None].to(torch.float64)
    return per_list.mean(dim=0)  # mean over no list: NaN


# -- rsum ------------------------------------------------------------------------------------------
def rsum(values: Mapping[str, T], prefix: str, directions: Iterable[str]) -> T | None:
    """``100 * sum`` of ``values[f"{prefix}/{d}/recall@{K}"]`` over ``directions``, then K in
    :data:`RSUM_KS` (in that order), recall values being fractions; the usual single-number summary
    of cross-modal retrieval, in percent points.

    Cut-offs that are not in ``values`` are left out; None when none is there. Works on floats
    and on tensors alike (the sum then stays on the values' device and dtype).
    """
    total: T | None = None
    for d in directions:
        for k in RSUM_KS:
            key = f"{prefix}/{d}/recall@{k}"
            if key in values:
                term = 100.0 * values[key]
                total = term if total is None else total + term
    return total


# -- DCG -------------------------------------------------------------------------------------------
def dcg_gains(labels: Tensor, mask: Tensor) -> Tensor:
    """``(B, L)`` DCG gains ``2^y - 1`` where ``mask`` is True, 0 elsewhere (padding)."""
    return torch.where(mask, torch.pow(2.0, labels) - 1.0, torch.zeros_like(labels))


def dcg_discounts(ranks: Tensor, k: int | None = None) -> Tensor:
    """DCG discounts ``1 / log2(rank + 1)`` of 1-based ``ranks`` (any shape, float: integer or
    relaxed ranks); 0 where ``rank > k`` (``k=None``: no cut-off)."""
    discount = 1.0 / torch.log2(ranks + 1.0)
    if k is not None:
        discount = torch.where(ranks <= k, discount, torch.zeros_like(discount))
    return discount


def ideal_dcg(gains: Tensor, k: int | None = None) -> Tensor:
    """``(B,)`` ideal DCG@k: the gains ``(B, L)`` sorted in decreasing order, discounted by
    position (padding has gain 0, so it sorts last). 0 for a list without a positive gain."""
    ordered = gains.sort(dim=-1, descending=True).values  # (B, L)
    positions = torch.arange(1, gains.shape[-1] + 1, device=gains.device, dtype=gains.dtype)
    return (ordered * dcg_discounts(positions, k)).sum(dim=-1)
