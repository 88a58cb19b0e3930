"""LambdaLoss framework: LambdaRank, NDCG-Loss2 and NDCG-Loss2++ weightings."""

from __future__ import annotations

import math
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from xmr.losses._common import check_cutoff, check_positive, has_positive, mean_over_lists, prepare
from xmr.metrics.ranking import dcg_discounts, dcg_gains, ideal_dcg, pessimistic_ranks
from xmr.utils.precision import full_precision

Weighting = Literal["lambdarank", "ndcg2", "ndcg2pp"]
WEIGHTINGS: tuple[str, ...] = ("lambdarank", "ndcg2", "ndcg2pp")


class LambdaLoss(nn.Module):
    """Wang, Li, Golbandi, Bendersky & Najork 2018, "The LambdaLoss Framework for Ranking Metric
    Optimization" (CIKM). Also allRank's ``lambdaLoss``.

    For each list, with ``r_i`` the rank of item ``i`` under the current scores (pessimistic
    ties, see :func:`xmr.metrics.ranking.pessimistic_ranks`), gains ``G_i = (2^y_i - 1) / maxDCG@k``
    and discounts ``d(r) = 1 / log2(1 + r)``::

        loss_list = sum_{(i, j) real, y_i > y_j} w_ij * log2(1 + exp(-sigma * (s_i - s_j)))

    i.e. ``-log2(sigmoid(sigma * (s_i - s_j)) ** w_ij)`` as in the paper, computed with
    ``softplus`` for stability. The pair weights ``w_ij`` (no gradient) are:

    * ``"lambdarank"``: ``|G_i - G_j| * |d(r_i) - d(r_j)|`` = ``|ΔNDCG@k|`` of swapping i and j
      (LambdaRank's weight; the paper shows it is a bound on NDCG only as a heuristic).
    * ``"ndcg2"``: NDCG-Loss2, ``|G_i - G_j| * delta_ij`` with
      ``delta_ij = |1 / log2(1 + |r_i - r_j|) - 1 / log2(2 + |r_i - r_j|)|``.
    * ``"ndcg2pp"``: NDCG-Loss2++, ``mu * ndcg2 + lambdarank``.

    Cut-off ``k`` (default ``None`` = full list): ``maxDCG`` and, for ``"lambdarank"``, the
    discounts are truncated at ``k`` (``d(r) = 0`` for ``r > k``), so the weight is exactly the
    ``|ΔNDCG@k|`` of the swap, which is 0 when both items rank below ``k`` but not when only one
    does. For ``"ndcg2"`` pairs whose two items both rank below ``k`` are dropped. (allRank instead
    keeps only pairs with *both* items in the top ``k``.)

    Reduction: the per-list *sum* over pairs (the LambdaLoss bound is a sum), then the mean over
    lists with at least one real positive; lists without a positive are skipped. allRank sums over
    the whole batch; averaging over lists keeps the scale independent of the batch size.

    Shapes: ``scores``, ``labels``, ``mask`` ``(B, L)``; returns a scalar.
    """

    def __init__(
        self,
        weighting: Weighting = "lambdarank",
        sigma: float = 1.0,
        k: int | None = None,
        mu: float = 10.0,
    ) -> None:
        super().__init__()
        name = type(self).__name__
        if weighting not in WEIGHTINGS:
            raise ValueError(f"{name}: weighting must be one of {WEIGHTINGS}, got {weighting!r}")
        self.weighting = weighting
        self.sigma = check_positive(name, "sigma", sigma)
        self.k = check_cutoff(name, k)
        self.mu = check_positive(name, "mu", mu)

    def extra_repr(self) -> str:
        return f"weighting={self.weighting!r}, sigma={self.sigma}, k={self.k}, mu={self.mu}"

    def pair_weights(self, labels: Tensor, ranks: Tensor, mask: Tensor) -> Tensor:
        """``(B, L, L)`` weights ``w_ij`` (no gradient) from labels and 1-based ranks ``(B, L)``,
        0 outside the pairs of real items with ``y_i > y_j``.

        Gains ``2^y - 1`` rise strictly with ``y``, so ``y_i > y_j`` exactly where
        ``G_i - G_j > 0``: ``relu(G_i - G_j)`` on real rows and columns is ``|G_i - G_j|`` times
        the pair mask, without forming that mask."""
        m = mask.to(labels.dtype)  # (B, L)
        gain = dcg_gains(labels, mask)  # (B, L), 0 at padding
        max_dcg = ideal_dcg(gain, self.k).clamp(min=1e-10)  # (B,)
        g = gain / max_dcg[:, None]  # (B, L)
        g_diff = (g[:, :, None] - g[:, None, :]).relu_()  # (B, L, L): |G_i - G_j| on pairs
        g_diff.mul_(m[:, :, None]).mul_(m[:, None, :])
        r = ranks.to(labels.dtype)  # (B, L)
        weights: Tensor | float = 0.0  # the weighting sets at least one term
        if self.weighting in ("lambdarank", "ndcg2pp"):
            disc = dcg_discounts(r, self.k)  # (B, L)
            weights = g_diff * (disc[:, :, None] - disc[:, None, :]).abs_()
        if self.weighting in ("ndcg2", "ndcg2pp"):
            # |r_i - r_j| >= 1 on the pairs used; the clamp only guards the diagonal/padding.
            gap = (r[:, :, None] - r[:, None, :]).abs().clamp(min=1.0)  # (B, L, L)
            delta = (1.0 / torch.log2(1.0 + gap) - 1.0 / torch.log2(2.0 + gap)).abs()
            if self.k is not None:
                top = r <= self.k  # (B, L)
                delta = delta * (top[:, :, None] | top[:, None, :]).to(delta.dtype)
            scale = self.mu if self.weighting == "ndcg2pp" else 1.0
            weights = weights + scale * g_diff * delta
        return weights  # type: ignore[return-value]

    @full_precision
    def forward(self, scores: Tensor, labels: Tensor, mask: Tensor) -> Tensor:
        """Loss of ``scores (B, L)`` against ``labels (B, L)`` over real items ``mask (B, L)``."""
        s, y = prepare(type(self).__name__, scores, labels, mask)  # (B, L) each
        with torch.no_grad():
            ranks = pessimistic_ranks(s, y, mask)  # (B, L)
            # 0 outside the pairs (i, j) of real items with y_i > y_j; sigma / ln 2 (see below).
            weights = self.pair_weights(y, ranks, mask).mul_(self.sigma / math.log(2.0))
        diff = s[:, None, :] - s[:, :, None]  # (B, L, L): s_j - s_i
        # softplus(x, beta=sigma) = ln(1 + exp(sigma x)) / sigma: times sigma / ln 2 (in the
        # weights) it is log2(1 + exp(-sigma (s_i - s_j))).
        pair_loss = F.softplus(diff, beta=self.sigma)
        per_list = (pair_loss * weights).sum(dim=(1, 2))  # (B,)
        return mean_over_lists(per_list, has_positive(y, mask), s)


class LambdaRankLoss(LambdaLoss):
    """Wang et al. 2018, "The LambdaLoss Framework for Ranking Metric Optimization", with the
    LambdaRank ``|ΔNDCG|`` weighting (Burges 2010, "From RankNet to LambdaRank to LambdaMART");
    allRank's ``lambdaLoss(weighing_scheme="lambdaRank_scheme")``. See :class:`LambdaLoss`.

    Args:
        sigma: slope of the pairwise logistic, ``log2(1 + exp(-sigma * (s_i - s_j)))``.
        k: NDCG cut-off of the ``|ΔNDCG@k|`` weights; ``None`` = the full list.
    """

    def __init__(self, sigma: float = 1.0, k: int | None = None) -> None:
        super().__init__(weighting="lambdarank", sigma=sigma, k=k)

    def extra_repr(self) -> str:
        return f"sigma={self.sigma}, k={self.k}"
