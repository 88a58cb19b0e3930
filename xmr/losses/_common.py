"""Shared pieces of the xmr ranking losses: input checks, padding, reduction.

Every loss takes ``scores (B, L)``, ``labels (B, L)`` (float, {0, 1}) and ``mask (B, L)`` (bool,
True = real candidate) and returns a scalar. The conventions fixed here hold for all of them:

* **Padding.** :func:`prepare` replaces the scores and labels of padded items by 0 with
  ``torch.where`` (so padded values, even ``inf``/``nan``, never reach the arithmetic and get a zero
  gradient); each loss then excludes padded items from every sum, softmax and ranking.
* **Reduction.** :func:`mean_over_lists` averages the per-list losses over the *valid* lists of
  the batch. For the ranking losses a list is valid when it holds at least one real positive
  (label > 0); lists without any positive are **skipped** (left out of numerator and denominator).
  If no list of the batch is valid, the loss is an exact 0 that is still attached to the graph,
  so ``backward()`` works and gives zero gradients.
* **Precision.** Each loss's ``forward`` is wrapped in
  :func:`xmr.utils.precision.full_precision`: under autocast (``trainer.precision=bf16-mixed`` /
  ``16-mixed``) its scores arrive in bfloat16 / float16 and everything inside runs in float32,
  Sinkhorn scaling included (autocast would otherwise take ``einsum``/``bmm``, and on the CPU
  ``softmax``/``exp``/sums, to the lower precision). :func:`prepare` promotes the inputs too.
* **Ranks and DCG** come from :mod:`xmr.metrics.ranking`, the one definition of xmr: the
  pessimistic order (a relevant item tied with a less relevant one ranks below it, so a constant
  scorer never looks good and pair weights are non-zero even when all scores are equal, e.g. at
  initialisation), gains ``2^y - 1``, discounts ``1 / log2(rank + 1)`` and the ideal DCG.
"""

from __future__ import annotations

import torch
from torch import Tensor


def check_positive(owner: str, field: str, value: float) -> float:
    """Return ``float(value)`` or raise ``ValueError`` naming ``owner.field`` when it is not > 0."""
    value = float(value)
    if not value > 0.0:
        raise ValueError(f"{owner}: {field} must be > 0, got {value!r}")
    return value


def check_cutoff(owner: str, k: int | None) -> int | None:
    """Validate an optional rank cut-off: ``None`` (full list) or an int >= 1."""
    if k is None:
        return None
    if isinstance(k, bool) or int(k) != k or int(k) < 1:
        raise ValueError(f"{owner}: k must be null (full list) or an integer >= 1, got {k!r}")
    return int(k)


def prepare(owner: str, scores: Tensor, labels: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
    """Check the inputs of a loss and zero out padding.

    Args:
        owner: name of the calling loss class, used in error messages.
        scores: ``(B, L)`` floating predicted scores.
        labels: ``(B, L)`` relevance labels (cast to the scores' dtype).
        mask: ``(B, L)`` bool, True = real candidate.

    Returns:
        ``(scores, labels)``, both ``(B, L)`` in at least float32, with 0 at padded positions.

    Raises:
        ValueError: when shapes differ, are not 2-D, the mask is not bool or scores not floating.
    """
    if scores.dim() != 2 or labels.shape != scores.shape or mask.shape != scores.shape:
        raise ValueError(
            f"{owner}: scores, labels and mask must all have shape (B, L); got scores "
            f"{tuple(scores.shape)}, labels {tuple(labels.shape)}, mask {tuple(mask.shape)}"
        )
    if mask.dtype != torch.bool:
        raise ValueError(f"{owner}: mask must be a bool tensor (True = real), got {mask.dtype}")
    if not scores.is_floating_point():
        raise ValueError(f"{owner}: scores must be a floating tensor, got {scores.dtype}")
    # Half / bfloat16 scores (mixed precision) are promoted: the losses exponentiate and sum.
    dtype = torch.promote_types(scores.dtype, torch.float32)
    zero = scores.new_zeros((), dtype=dtype)
    scores = torch.where(mask, scores.to(dtype), zero)  # (B, L)
    labels = torch.where(mask, labels.to(dtype), zero)  # (B, L)
    return scores, labels


def has_positive(labels: Tensor, mask: Tensor) -> Tensor:
    """``(B,)`` bool: the list holds at least one real item with label > 0."""
    return ((labels > 0) & mask).any(dim=-1)


def mean_over_lists(per_list: Tensor, valid: Tensor, scores: Tensor) -> Tensor:
    """Mean of ``per_list (B,)`` over the lists where ``valid (B,)`` is True.

    ``per_list`` must be finite everywhere (invalid lists included), otherwise ``nan`` would leak
    into the gradient. With no valid list the result is ``0 * scores.sum()``: an exact zero that
    keeps the graph, so ``backward()`` still runs. ``scores`` must already be padding-free.
    """
    valid_f = valid.to(per_list.dtype)  # (B,)
    total = (per_list * valid_f).sum()
    count = valid_f.sum()
    return torch.where(count > 0, total / count.clamp(min=1.0), scores.sum() * 0.0)


def pair_mask(labels: Tensor, mask: Tensor) -> Tensor:
    """``(B, L, L)`` bool: pairs ``(i, j)`` of real items with ``labels[i] > labels[j]``."""
    real = mask[:, :, None] & mask[:, None, :]  # (B, L, L)
    return real & (labels[:, :, None] > labels[:, None, :])
