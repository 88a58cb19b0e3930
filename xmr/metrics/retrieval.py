"""torchmetrics accumulator of the per-list retrieval metrics in :mod:`xmr.metrics.functional`.

:class:`ListRetrievalMetrics` keeps only sums and counts, each registered with
``dist_reduce_fx="sum"``, so the value is the same whether the lists arrive in one batch, in many
``update`` calls, or split across DDP processes (states are summed before ``compute``). Each
reported value is the mean over lists that have at least one relevant real candidate; the other
lists are counted in ``lists_without_positive`` and enter no average. With ``relevant_total``
(lists cut from a larger ranking), a list whose relevant items all stayed outside it is a miss:
it scores 0, enters the averages and is counted in ``lists_missed``. Ties break pessimistically
and padding is never ranked (see :mod:`xmr.metrics.functional`).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor
from torchmetrics import Metric

from xmr.metrics.functional import check_inputs, check_k, list_metrics, missed_lists

__all__ = ["ListRetrievalMetrics"]


class ListRetrievalMetrics(Metric):
    """Mean hit@K, found@K, nDCG@K and MRR over candidate lists.

    ``compute()`` returns (all fractions in ``[0, 1]``; reports convert to %)::

        {"recall@K": mean hit@K (cross-modal standard), for K in ks,
         "recall_found@K": mean found@K (the paper's eq. 5), for K in ks,
         "ndcg@{ndcg_k}": mean nDCG, "mrr": mean reciprocal rank,
         "lists": number of lists seen, "lists_without_positive": lists excluded from the means,
         "lists_missed": lists that scored 0 because their relevant items were not in them}

    Means are float32 tensors (summed in float64), NaN while no list with a positive has been
    seen. Counts are int64 tensors.

    Args:
        ks: cut-offs for the two recalls, each ``>= 1``.
        ndcg_k: cut-off of nDCG, ``>= 1``.
    """

    is_differentiable = False
    higher_is_better = True
    full_state_update = False

    hit_sum: Tensor
    found_sum: Tensor
    ndcg_sum: Tensor
    mrr_sum: Tensor
    lists: Tensor
    lists_without_positive: Tensor
    lists_missed: Tensor

    def __init__(self, ks: Sequence[int] = (1, 5, 10), ndcg_k: int = 10, **kwargs) -> None:
        super().__init__(**kwargs)
        ks = tuple(ks)
        if not ks:
            raise ValueError("ListRetrievalMetrics: ks must hold at least one cut-off")
        for k in ks:
            check_k(k, "ListRetrievalMetrics ks entry")
        if len(set(ks)) != len(ks):
            raise ValueError(f"ListRetrievalMetrics: ks must not repeat a cut-off, got {ks}")
        check_k(ndcg_k, "ListRetrievalMetrics ndcg_k")
        self.ks = ks
        self.ndcg_k = ndcg_k
        # float64 sums: exact enough for millions of lists; counts as int64.
        zeros_k = torch.zeros(len(ks), dtype=torch.float64)
        self.add_state("hit_sum", default=zeros_k.clone(), dist_reduce_fx="sum")  # (K,)
        self.add_state("found_sum", default=zeros_k.clone(), dist_reduce_fx="sum")  # (K,)
        scalar = torch.tensor(0.0, dtype=torch.float64)
        self.add_state("ndcg_sum", default=scalar.clone(), dist_reduce_fx="sum")
        self.add_state("mrr_sum", default=scalar.clone(), dist_reduce_fx="sum")
        count = torch.tensor(0, dtype=torch.int64)
        self.add_state("lists", default=count.clone(), dist_reduce_fx="sum")
        self.add_state("lists_without_positive", default=count.clone(), dist_reduce_fx="sum")
        self.add_state("lists_missed", default=count.clone(), dist_reduce_fx="sum")

    @staticmethod
    def mean_names(ks: Sequence[int], ndcg_k: int = 10) -> tuple[str, ...]:
        """The names of the means :meth:`compute` returns for ``ks`` and ``ndcg_k`` (the values
        a run can select a checkpoint by; the counts are left out)."""
        return (
            *(f"recall@{k}" for k in ks),
            *(f"recall_found@{k}" for k in ks),
            f"ndcg@{ndcg_k}",
            "mrr",
        )

    def update(
        self, scores: Tensor, labels: Tensor, mask: Tensor, relevant_total: Tensor | None = None
    ) -> None:
        """Add a batch of lists: ``scores``/``labels``/``mask`` ``(B, L)``, mask True = real;
        ``relevant_total`` ``(B,)`` optional (see :func:`xmr.metrics.functional.list_metrics`)."""
        check_inputs(scores, labels, mask)
        per_list = list_metrics(
            scores.detach().to(torch.float64), labels, mask, self.ks, self.ndcg_k, relevant_total
        )  # each (B,), NaN where a list has no positive and is no miss
        if relevant_total is not None:
            self.lists_missed += missed_lists(labels, mask, relevant_total).sum()
        valid = ~torch.isnan(per_list["mrr"])  # (B,)

        def total(values: Tensor) -> Tensor:
            return torch.where(valid, values, 0.0).sum()

        self.hit_sum += torch.stack([total(per_list[f"recall@{k}"]) for k in self.ks])
        self.found_sum += torch.stack([total(per_list[f"recall_found@{k}"]) for k in self.ks])
        self.ndcg_sum += total(per_list[f"ndcg@{self.ndcg_k}"])
        self.mrr_sum += total(per_list["mrr"])
        self.lists += scores.shape[0]
        self.lists_without_positive += (~valid).sum()

    def compute(self) -> dict[str, Tensor]:
        """Means over lists with a positive, plus the two counts (see the class docstring)."""
        n_valid = (self.lists - self.lists_without_positive).to(torch.float64)
        # 0 / 0 gives NaN when no list with a positive was seen: no value, not a fake 0.
        out: dict[str, Tensor] = {}
        for i, k in enumerate(self.ks):
            out[f"recall@{k}"] = (self.hit_sum[i] / n_valid).float()
        for i, k in enumerate(self.ks):
            out[f"recall_found@{k}"] = (self.found_sum[i] / n_valid).float()
        out[f"ndcg@{self.ndcg_k}"] = (self.ndcg_sum / n_valid).float()
        out["mrr"] = (self.mrr_sum / n_valid).float()
        out["lists"] = self.lists.clone()
        out["lists_without_positive"] = self.lists_without_positive.clone()
        out["lists_missed"] = self.lists_missed.clone()
        return out
