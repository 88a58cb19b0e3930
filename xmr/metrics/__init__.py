"""Retrieval metrics: pure per-list functions and a torchmetrics accumulator.

Ties break pessimistically, padding is never ranked, and lists without a relevant item give NaN
per list and are counted (not averaged) by the accumulator; see :mod:`xmr.metrics.functional`.
"""

from xmr.metrics.functional import (
    PAD_RANK,
    has_positive,
    list_metrics,
    mrr,
    ndcg_at_k,
    ranks_of,
    recall_found_at_k,
    recall_hit_at_k,
    topk_order,
)
from xmr.metrics.retrieval import ListRetrievalMetrics

__all__ = [
    "PAD_RANK",
    "ListRetrievalMetrics",
    "has_positive",
    "list_metrics",
    "mrr",
    "ndcg_at_k",
    "ranks_of",
    "recall_found_at_k",
    "recall_hit_at_k",
    "topk_order",
]
