"""ListNet: cross-entropy between top-one probabilities."""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor, nn

from xmr.losses._common import has_positive, mean_over_lists, prepare
from xmr.utils.precision import full_precision

Target = Literal["normalized", "softmax"]
TARGETS: tuple[str, ...] = ("normalized", "softmax")


class ListNetLoss(nn.Module):
    """Cao, Qin, Liu, Tsai & Li 2007, "Learning to Rank: From Pairwise Approach to Listwise
    Approach" (ICML). Also allRank's ``listNet`` / ``binary_listNet``.

    Top-one ListNet: the cross-entropy between a target distribution ``t`` over the real items of
    a list and the model's top-one probabilities ``p = softmax(s)`` (over real items only)::

        loss_list = -sum_i t_i * log p_i

    ``target`` selects ``t``:

    * ``"normalized"`` (default): ``t_i = y_i / sum_j y_j``, the top-one probability of a ranking
      in which each relevant item is equally likely to come first (allRank's ``binary_listNet``).
      With one positive this is the softmax cross-entropy of the list (InfoNCE over the
      candidates), and its infimum is approached by pushing the positive's score above all
      negatives without limit.
    * ``"softmax"``: ``t = softmax(y)`` (the paper's and allRank's ``listNet`` default). With
      binary labels it keeps most of the mass on negatives: ``e / (e + 50) ≈ 5.2 %`` on the one
      positive of a 51-item list. The loss is minimised at ``s = y + c``, i.e. a margin of exactly
      1 between positive and negatives, so confident correct rankings are penalised and the
      gradient toward ranking the positive first is weak.

    The default is ``"normalized"`` because xmr's labels are binary (relevant or not), for which
    ``softmax(y)`` is not a meaningful target (see "Known traps" in PAPER.md); use
    ``target: softmax`` to reproduce allRank's ``listNet`` as the paper most likely ran it.

    Reduction: mean over lists with at least one real positive; lists without a positive are
    skipped (with ``"normalized"`` their target is undefined).

    Shapes: ``scores``, ``labels``, ``mask`` ``(B, L)``; returns a scalar.
    """

    def __init__(self, target: Target = "normalized") -> None:
        super().__init__()
        if target not in TARGETS:
            raise ValueError(
                f"{type(self).__name__}: target must be one of {TARGETS}, got {target!r}"
            )
        self.target = target

    def extra_repr(self) -> str:
        return f"target={self.target!r}"

    @full_precision
    def forward(self, scores: Tensor, labels: Tensor, mask: Tensor) -> Tensor:
        """Loss of ``scores (B, L)`` against ``labels (B, L)`` over real items ``mask (B, L)``."""
        s, y = prepare(type(self).__name__, scores, labels, mask)  # (B, L) each
        neg_inf = torch.finfo(s.dtype).min  # finite: keeps all-padding rows nan-free
        log_p = torch.log_softmax(s.masked_fill(~mask, neg_inf), dim=-1)  # (B, L)
        if self.target == "softmax":
            t = torch.softmax(y.masked_fill(~mask, neg_inf), dim=-1)  # (B, L)
        else:
            t = y / y.sum(dim=-1, keepdim=True).clamp(min=1e-10)  # (B, L)
        t = torch.where(mask, t, torch.zeros_like(t))
        per_list = -(t * torch.where(mask, log_p, torch.zeros_like(log_p))).sum(dim=-1)  # (B,)
        return mean_over_lists(per_list, has_positive(y, mask), s)
