"""Retrieval metrics: the one ranking of a list, pure per-list functions, a torchmetrics accumulator.

The pessimistic order (ties, NaN scores, padding), Recall@K from a ranking, rsum and DCG are
defined once, in :mod:`xmr.metrics.ranking`. Lists without a relevant item give NaN per list and
are counted (not averaged) by the accumulator; see :mod:`xmr.metrics.functional`.
"""

from xmr.metrics.functional import (
    PAD_RANK,
    has_positive,
    list_metrics,
    missed_lists,
    mrr,
    ndcg_at_k,
    ranks_of,
    recall_found_at_k,
    recall_hit_at_k,
)
from xmr.metrics.ranking import (
    RECALL_DEFINITIONS,
    RSUM_KS,
    dcg_discounts,
    dcg_gains,
    ideal_dcg,
    pessimistic_order,
    pessimistic_ranks,
    pessimistic_topk,
    ranked_recall_at_k,
    ranked_recall_curve,
    ranks_from_order,
    rsum,
)
from xmr.metrics.retrieval import ListRetrievalMetrics

__all__ = [
    "PAD_RANK",
    "RECALL_DEFINITIONS",
    "RSUM_KS",
    "ListRetrievalMetrics",
    "dcg_discounts",
    "dcg_gains",
    "has_positive",
    "ideal_dcg",
    "list_metrics",
    "missed_lists",
    "mrr",
    "ndcg_at_k",
    "pessimistic_order",
    "pessimistic_ranks",
    "pessimistic_topk",
    "ranked_recall_at_k",
    "ranked_recall_curve",
    "ranks_from_order",
    "ranks_of",
    "recall_found_at_k",
    "recall_hit_at_k",
    "rsum",
]
