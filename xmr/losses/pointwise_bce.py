"""Pointwise binary cross-entropy on scores as logits."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from xmr.losses._common import check_positive, mean_over_lists, prepare
from xmr.utils.precision import full_precision


class PointwiseBCELoss(nn.Module):
    """Cossock & Zhang 2006, "Subset Ranking Using Regression" (COLT): the pointwise approach to
    learning to rank, here as binary cross-entropy with logits (allRank's ``pointwise_bce``).

    Each real item is classified on its own, ``p_i = sigmoid(s_i)``::

        loss_list = mean_{i real} [ -pos_weight * y_i * log p_i - (1 - y_i) * log(1 - p_i) ]

    Labels must lie in ``[0, 1]``. Reduction: the per-list mean over real items, then the mean
    over lists with at least one real item. Unlike the ranking losses, lists without a positive
    are *not* skipped: every item is a labelled example on its own.

    Args:
        pos_weight: weight of the positive term (``BCEWithLogits``' ``pos_weight``), > 0.

    Shapes: ``scores``, ``labels``, ``mask`` ``(B, L)``; returns a scalar.
    """

    def __init__(self, pos_weight: float = 1.0) -> None:
        super().__init__()
        self.pos_weight = check_positive(type(self).__name__, "pos_weight", pos_weight)

    def extra_repr(self) -> str:
        return f"pos_weight={self.pos_weight}"

    @full_precision
    def forward(self, scores: Tensor, labels: Tensor, mask: Tensor) -> Tensor:
        """Loss of ``scores (B, L)`` against ``labels (B, L)`` over real items ``mask (B, L)``."""
        s, y = prepare(type(self).__name__, scores, labels, mask)  # (B, L) each
        item = y * self.pos_weight * F.softplus(-s) + (1.0 - y) * F.softplus(s)  # (B, L)
        m = mask.to(s.dtype)
        per_list = (item * m).sum(-1) / m.sum(-1).clamp(min=1.0)  # (B,)
        return mean_over_lists(per_list, mask.any(dim=-1), s)
