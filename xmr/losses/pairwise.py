"""Pairwise losses of the pair baselines (:mod:`xmr.models.baselines`): pure functions over a
batch of B (image, caption) pairs.

- Andrew, Arora, Bilmes & Livescu 2013, "Deep Canonical Correlation Analysis" (ICML):
  :func:`dcca_correlation`.
- Zhang & Lu 2018, "Deep Cross-Modal Projection Learning for Image-Text Matching" (ECCV):
  :func:`cmpm_loss`, :func:`cmpc_loss`.
- Faghri, Fleet, Kiros & Fidler 2018, "VSE++: Improving Visual-Semantic Embeddings with Hard
  Negatives" (BMVC): :func:`max_violation_hinge`.
- Radford et al. 2021, "Learning Transferable Visual Models From Natural Language Supervision"
  (CLIP, ICML): :func:`symmetric_infonce`.

In-batch positives: pairs i and j are positives of each other when they show the same image
(:func:`same_image`), so another caption of the anchor's image is never taken as a negative.
The losses run in float32 under autocast (:func:`xmr.utils.precision.full_precision`).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from xmr.utils.precision import full_precision

__all__ = [
    "cmpc_loss",
    "cmpm_label_distribution",
    "cmpm_loss",
    "covariances",
    "dcca_correlation",
    "inv_sqrt",
    "max_violation_hinge",
    "same_image",
    "symmetric_infonce",
]


def same_image(image_ids: Tensor) -> Tensor:
    """``(B, B)`` bool: True where pair i and pair j show the same image (the diagonal included)."""
    return image_ids[:, None] == image_ids[None, :]


@full_precision
def dcca_correlation(h1: Tensor, h2: Tensor, r1: float = 1e-3, r2: float = 1e-3) -> Tensor:
    """Total canonical correlation of two views (Andrew et al. 2013, "Deep Canonical Correlation
    Analysis", eq. 10): the trace norm ``||T||_tr`` of ``T = S11^-1/2 S12 S22^-1/2``.

    Args:
        h1: ``(m, o1)`` view-1 outputs (images); h2: ``(m, o2)`` view-2 outputs (captions).
        r1, r2: ridge added to the diagonal of the view covariances ``S11``, ``S22``.

    ``S11 = H1c' H1c / (m - 1) + r1 I`` with ``H1c`` the centred rows, likewise ``S22``;
    ``S12 = H1c' H2c / (m - 1)``. The trace norm is the sum of the square roots of the
    eigenvalues of ``T'T`` (``torch.linalg.eigvalsh``, float64). For stable gradients the
    whitening uses Cholesky factors ``S = L L'`` instead of ``S^-1/2``: ``L1^-1 S12 L2^-T`` equals
    ``T`` up to orthogonal factors on both sides (``S^-1/2 = Q L^-1`` with Q orthogonal), so it has
    the same singular values, while the backward pass of an eigendecomposition *with
    eigenvectors* divides by eigenvalue gaps — infinite for a rank-deficient covariance, whose
    ridge eigenvalues all equal r.
    """
    m = h1.shape[0]
    if m < 2 or h2.shape[0] != m:
        raise ValueError(f"DCCA needs >= 2 paired rows, got {tuple(h1.shape)}, {tuple(h2.shape)}")
    s11, s22, s12 = covariances(h1.double(), h2.double(), r1, r2)
    l1 = torch.linalg.cholesky(s11)  # (o1, o1)
    l2 = torch.linalg.cholesky(s22)  # (o2, o2)
    a = torch.linalg.solve_triangular(l1, s12, upper=False)  # L1^-1 S12  (o1, o2)
    t = torch.linalg.solve_triangular(l2, a.T, upper=False).T  # L1^-1 S12 L2^-T  (o1, o2)
    eig = torch.linalg.eigvalsh(t.T @ t)  # (o2,) squared canonical correlations
    return (eig.clamp_min(0.0) + 1e-12).sqrt().sum().to(h1.dtype)


def covariances(h1: Tensor, h2: Tensor, r1: float, r2: float) -> tuple[Tensor, Tensor, Tensor]:
    """``(S11, S22, S12)`` of two views ``h1 (m, o1)``, ``h2 (m, o2)``: covariances of the
    centred rows over ``m - 1``, with ridges ``r1``, ``r2`` on the diagonals of ``S11``, ``S22``
    (:func:`dcca_correlation`)."""
    m = h1.shape[0]
    h1 = h1 - h1.mean(0, keepdim=True)  # (m, o1)
    h2 = h2 - h2.mean(0, keepdim=True)  # (m, o2)
    eye1 = torch.eye(h1.shape[1], dtype=h1.dtype, device=h1.device)
    eye2 = torch.eye(h2.shape[1], dtype=h2.dtype, device=h2.device)
    s11 = h1.T @ h1 / (m - 1) + r1 * eye1
    s22 = h2.T @ h2 / (m - 1) + r2 * eye2
    s12 = h1.T @ h2 / (m - 1)
    return s11, s22, s12


def inv_sqrt(s: Tensor, eps: float = 1e-12) -> Tensor:
    """``S^-1/2`` of a symmetric positive definite matrix via its eigendecomposition."""
    w, v = torch.linalg.eigh(s)
    return (v * w.clamp_min(eps).rsqrt()) @ v.T


def cmpm_label_distribution(image_ids: Tensor, norm: str = "l1") -> Tensor:
    """The true matching distribution ``q (B, B)`` of CMPM (Zhang & Lu 2018, eq. 3).

    ``y_ij = 1`` when pairs i and j show the same image (captions of one image are positives).
    ``norm="l1"`` (the paper): ``q_ij = y_ij / sum_k y_ik``, each row sums to 1.
    ``norm="l2"`` (the authors' released code, ``labels_mask / labels_mask.norm(dim=1)``):
    ``q_ij = y_ij / ||y_j||_2`` — the norm broadcasts over columns; ``y`` is symmetric, so this is
    ``y_ij / sqrt(n_i)`` with ``n_i`` the positives of row i, and rows do not sum to 1.
    """
    y = same_image(image_ids).float()  # (B, B)
    if norm == "l1":
        return y / y.sum(dim=1, keepdim=True)
    if norm == "l2":
        return y / y.norm(dim=1)
    raise ValueError(f"model.net.label_norm={norm!r}: one of l1 (paper), l2 (released code)")


@full_precision
def cmpm_loss(
    image_emb: Tensor, text_emb: Tensor, image_ids: Tensor, norm: str = "l1", eps: float = 1e-8
) -> Tensor:
    """Cross-Modal Projection Matching loss (Zhang & Lu, ECCV 2018, eqs. 1-5).

    ``p_ij = softmax_j(x_i' z̄_j)`` — image i projected on the normalised caption j (and the same
    the other way round); the loss is ``KL(p_i || q_i)`` averaged over rows, summed over the two
    directions. Shapes: embeddings ``(B, E)``, ``image_ids (B,)``.
    """
    q = cmpm_label_distribution(image_ids, norm)  # (B, B)
    i2t = image_emb @ F.normalize(text_emb, dim=1).T  # (B, B)
    t2i = text_emb @ F.normalize(image_emb, dim=1).T  # (B, B)

    def kl(logits: Tensor) -> Tensor:
        p = logits.softmax(dim=1)
        return (p * (logits.log_softmax(dim=1) - torch.log(q + eps))).sum(dim=1).mean()

    return kl(i2t) + kl(t2i)


@full_precision
def cmpc_loss(image_emb: Tensor, text_emb: Tensor, image_ids: Tensor, weight: Tensor) -> Tensor:
    """Cross-Modal Projection Classification loss (Zhang & Lu 2018, eqs. 6-8): a norm-softmax
    classifier (columns of ``weight (E, C)`` L2-normalised, no bias) over image ids, applied to
    each modality's projection on the other: ``x̂ = (x' z̄) z̄``, ``ẑ = (z' x̄) x̄``."""
    img_n, txt_n = F.normalize(image_emb, dim=1), F.normalize(text_emb, dim=1)
    image_on_text = (image_emb * txt_n).sum(1, keepdim=True) * txt_n  # (B, E)
    text_on_image = (text_emb * img_n).sum(1, keepdim=True) * img_n  # (B, E)
    w = F.normalize(weight, dim=0)  # (E, C)
    return F.cross_entropy(image_on_text @ w, image_ids) + F.cross_entropy(
        text_on_image @ w, image_ids
    )


@full_precision
def max_violation_hinge(sim: Tensor, positive: Tensor, margin: float = 0.2) -> Tensor:
    """VSE++ loss (Faghri et al. 2018, eq. 5): hinge triplet loss on the hardest in-batch negative.

    Args:
        sim: ``(B, B)`` similarities, ``sim[i, j] = s(image_i, caption_j)``; the anchors are the
            diagonal pairs ``(i, i)``.
        positive: ``(B, B)`` bool, True where image i and caption j match (the diagonal, plus
            other captions of the same image in the batch); those are never negatives.
        margin: alpha.

    Returns ``mean_i [max_j (α + s(i, j) - s(i, i))_+ + max_j (α + s(j, i) - s(i, i))_+]``, j over
    negatives (the original sums over the batch; the mean has the same optimum and makes the
    learning rate independent of the batch size).
    """
    d = sim.diagonal()  # (B,)
    cost_caption = (margin + sim - d[:, None]).clamp_min(0).masked_fill(positive, 0.0)  # (B, B)
    cost_image = (margin + sim - d[None, :]).clamp_min(0).masked_fill(positive, 0.0)  # (B, B)
    return cost_caption.max(dim=1).values.mean() + cost_image.max(dim=0).values.mean()


@full_precision
def symmetric_infonce(logits: Tensor, positive: Tensor) -> Tensor:
    """Symmetric InfoNCE (CLIP, Radford et al. 2021): mean of the image→caption and
    caption→image cross-entropies of ``logits (B, B)`` (``logits[i, j]`` = scaled similarity of
    image i and caption j) with the diagonal as targets. Other in-batch positives (``positive``
    off the diagonal: captions of the same image) are removed from the softmax denominators."""
    eye = torch.eye(logits.shape[0], dtype=torch.bool, device=logits.device)
    masked = logits.masked_fill(positive & ~eye, float("-inf"))  # (B, B)
    target = torch.arange(logits.shape[0], device=logits.device)
    return 0.5 * (F.cross_entropy(masked, target) + F.cross_entropy(masked.T, target))
