"""ListMLE: Plackett-Luce likelihood of the ground-truth ordering."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from xmr.losses._common import has_positive, mean_over_lists, prepare
from xmr.utils.precision import full_precision


class ListMLELoss(nn.Module):
    """Xia, Liu, Wang, Zhang & Li 2008, "Listwise Approach to Learning to Rank: Theory and
    Algorithm" (ICML). Also allRank's ``listMLE``.

    The negative log-likelihood, under the Plackett-Luce model with weights ``exp(s)``, of the
    ground-truth permutation ``pi`` of the real items (labels descending)::

        loss_list = sum_{r=1..n} [ log sum_{t >= r} exp(s_{pi(t)}) - s_{pi(r)} ]

    Ties in the labels (with binary labels, nearly all items tie) make ``pi`` ambiguous. allRank
    breaks them at random, which makes the loss noisy and order-dependent. Here ties are broken
    by the (detached) score, descending: ``pi`` is the most likely permutation under the model
    among those consistent with the labels, so the loss is the smallest NLL over the tie orders,
    deterministic and invariant to the order of the list. Implemented without sorting: item
    ``i``'s term is ``logsumexp`` over the real items ``j`` not placed before it.

    With binary labels most of the value is the NLL of the negatives' own order (about
    ``log(n_neg!)`` when their scores tie: ≈ 148 for 50 negatives), which rewards spreading the
    negatives' scores apart; the ranking signal comes from the positives' terms.

    Reduction: mean over lists with at least one real positive; lists without one are skipped.

    Shapes: ``scores``, ``labels``, ``mask`` ``(B, L)``; returns a scalar. Memory ``O(B L^2)``.
    """

    @full_precision
    def forward(self, scores: Tensor, labels: Tensor, mask: Tensor) -> Tensor:
        """Loss of ``scores (B, L)`` against ``labels (B, L)`` over real items ``mask (B, L)``."""
        s, y = prepare(type(self).__name__, scores, labels, mask)  # (B, L) each
        sd = s.detach()
        yi, yj = y[:, :, None], y[:, None, :]  # (B, L, 1), (B, 1, L)
        si, sj = sd[:, :, None], sd[:, None, :]
        idx = torch.arange(s.shape[-1], device=s.device)
        eye = (idx[:, None] == idx[None, :])[None]  # (1, L, L)
        not_before = (idx[None, :] >= idx[:, None])[None]  # (1, L, L): j >= i
        # j is placed at or after i in pi: lower label, or same label and lower score, or a full
        # tie with j >= i (interchangeable items).
        later = (yj < yi) | ((yj == yi) & ((sj < si) | ((sj == si) & not_before)))  # (B, L, L)
        # The diagonal is always in the set, so no row is empty (padding rows included).
        keep = (later & mask[:, None, :]) | eye  # (B, L, L)
        tail = s[:, None, :].masked_fill(~keep, float("-inf"))  # (B, L, L)
        terms = torch.logsumexp(tail, dim=-1) - s  # (B, L)
        per_list = torch.where(mask, terms, torch.zeros_like(terms)).sum(dim=-1)  # (B,)
        return mean_over_lists(per_list, has_positive(y, mask), s)
