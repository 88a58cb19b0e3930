"""RankNet: pairwise logistic loss."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from xmr.losses._common import check_positive, has_positive, mean_over_lists, pair_mask, prepare
from xmr.utils.precision import full_precision


class RankNetLoss(nn.Module):
    """Burges, Shaked, Renshaw, Lazier, Deeds, Hamilton & Hullender 2005, "Learning to Rank using
    Gradient Descent" (ICML). Also allRank's ``rankNet``.

    Over every pair ``(i, j)`` of real items with ``y_i > y_j`` the cross-entropy between the
    target "i above j" (probability 1) and the model's ``P_ij = sigmoid(sigma * (s_i - s_j))``::

        loss_list = mean_{(i, j) real, y_i > y_j} log(1 + exp(-sigma * (s_i - s_j)))

    (natural log, computed as ``softplus``). Reduction: the per-list mean over its pairs, then the
    mean over lists with at least one real positive; lists without a positive are skipped, and a
    list whose real items are all positive has no pair and contributes 0.

    Args:
        sigma: slope of the logistic.

    Shapes: ``scores``, ``labels``, ``mask`` ``(B, L)``; returns a scalar.
    """

    def __init__(self, sigma: float = 1.0) -> None:
        super().__init__()
        self.sigma = check_positive(type(self).__name__, "sigma", sigma)

    def extra_repr(self) -> str:
        return f"sigma={self.sigma}"

    @full_precision
    def forward(self, scores: Tensor, labels: Tensor, mask: Tensor) -> Tensor:
        """Loss of ``scores (B, L)`` against ``labels (B, L)`` over real items ``mask (B, L)``."""
        s, y = prepare(type(self).__name__, scores, labels, mask)  # (B, L) each
        pairs = pair_mask(y, mask).to(s.dtype)  # (B, L, L): y_i > y_j
        diff = s[:, :, None] - s[:, None, :]  # (B, L, L): s_i - s_j
        total = (F.softplus(-self.sigma * diff) * pairs).sum(dim=(1, 2))  # (B,)
        per_list = total / pairs.sum(dim=(1, 2)).clamp(min=1.0)  # (B,)
        return mean_over_lists(per_list, has_positive(y, mask), s)
