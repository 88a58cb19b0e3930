"""ApproxNDCG: NDCG with ranks replaced by a sigmoid approximation."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from xmr.losses._common import check_cutoff, check_positive, has_positive, mean_over_lists, prepare
from xmr.metrics.ranking import dcg_discounts, dcg_gains, ideal_dcg
from xmr.utils.precision import full_precision


class ApproxNDCGLoss(nn.Module):
    """Qin, Liu & Li 2010, "A General Approximation Framework for Direct Optimization of
    Information Retrieval Measures" (Information Retrieval 13(4)). Also allRank's
    ``approxNDCGLoss``.

    The rank of item ``i`` is approximated with a sigmoid of temperature ``alpha`` over the other
    real items ``j`` of its list::

        rank_i ≈ 1 + sum_{j != i} sigmoid(alpha * (s_j - s_i))
        ApproxNDCG = sum_i (2^y_i - 1) / log2(1 + rank_i) / IDCG,     loss = -mean ApproxNDCG

    Larger ``alpha`` gives a tighter but less smooth approximation. With a cut-off ``k`` the
    discount of an item is ``1 / log2(1 + rank_i)`` scaled by ``sigmoid(alpha * (k + 0.5 -
    rank_i))`` (a smooth "rank <= k" indicator, as in the paper's truncation) and IDCG is IDCG@k;
    ``k=None`` (default) uses the full list.

    Reduction: mean over lists with at least one real positive; lists without one are skipped.

    Args:
        alpha: sigmoid temperature (allRank default 1.0).
        k: NDCG cut-off; ``None`` = the full list.

    Shapes: ``scores``, ``labels``, ``mask`` ``(B, L)``; returns a scalar.
    """

    def __init__(self, alpha: float = 1.0, k: int | None = None) -> None:
        super().__init__()
        name = type(self).__name__
        self.alpha = check_positive(name, "alpha", alpha)
        self.k = check_cutoff(name, k)

    def extra_repr(self) -> str:
        return f"alpha={self.alpha}, k={self.k}"

    @full_precision
    def forward(self, scores: Tensor, labels: Tensor, mask: Tensor) -> Tensor:
        """``-mean ApproxNDCG`` of ``scores (B, L)``, ``labels (B, L)``, ``mask (B, L)``."""
        s, y = prepare(type(self).__name__, scores, labels, mask)  # (B, L) each
        length = s.shape[-1]
        eye = torch.eye(length, dtype=torch.bool, device=s.device)
        others = (mask[:, None, :] & ~eye[None]).to(s.dtype)  # (B, L, L): real j != i
        beats = torch.sigmoid(self.alpha * (s[:, None, :] - s[:, :, None]))  # (B, L, L)
        approx_rank = 1.0 + (beats * others).sum(dim=-1)  # (B, L)
        discount = dcg_discounts(approx_rank)  # (B, L)
        if self.k is not None:
            discount = discount * torch.sigmoid(self.alpha * (self.k + 0.5 - approx_rank))
        gain = dcg_gains(y, mask)  # (B, L)
        ndcg = (gain * discount).sum(-1) / ideal_dcg(gain, self.k).clamp(min=1e-10)  # (B,)
        return -mean_over_lists(ndcg, has_positive(y, mask), s)
