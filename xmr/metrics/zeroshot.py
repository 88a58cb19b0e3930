"""Full-gallery zero-shot retrieval recall (the standard Flickr30k/COCO protocol).

Definitions, for one split with N images and M captions, scores = dot products of the given rows
(cosine when rows are L2-normalised):

- **i2t** (image query, "text retrieval"): each image ranks all M captions of the split. It is a
  hit at K when *any* of its captions is in the top K. Images without a caption are left out.
- **t2i** (caption query, "image retrieval"): each caption ranks all N images; hit at K when its
  image is in the top K.
- Recall@K = hits / queries, a fraction in [0, 1] (multiply by 100 for the usual %).
- Each query's gallery is ranked in the pessimistic order of
  :func:`xmr.metrics.ranking.pessimistic_order` (its top K: ``pessimistic_topk``), as everywhere in xmr: a relevant item tied with
  an irrelevant one ranks below it (a constant scorer gets recall ~0, never 1), a NaN score ranks
  last. Recall@K is :func:`xmr.metrics.ranking.ranked_recall_at_k` (``"hit"``).

Computed with chunked float32 matmuls: memory is O(chunk * gallery), never O(N * M).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from xmr.data.store import FeatureStore
from xmr.metrics.ranking import pessimistic_topk, ranked_recall_at_k

__all__ = ["full_gallery_recall", "store_split_recall"]


def _hits(scores: np.ndarray, relevant: np.ndarray, ks: tuple[int, ...]) -> np.ndarray:
    """``(C, len(ks))`` bool: whether a relevant item is in each query's top K, for K in ``ks``.

    Args:
        scores: ``(C, G)`` float32 scores of C queries over a gallery of G items.
        relevant: ``(C, G)`` bool, True where the item is relevant to the query.
    """
    s, rel = torch.from_numpy(scores), torch.from_numpy(relevant)  # (C, G) each
    order = pessimistic_topk(s, rel, torch.ones_like(rel), max(ks))  # (C, K_max)
    ranked = rel.gather(1, order)  # (C, K_max)
    # A query without a relevant item (NaN recall) is left out by the callers; 0 here.
    hits = [ranked_recall_at_k(ranked, k).nan_to_num(0.0) > 0 for k in ks]
    return torch.stack(hits, dim=1).numpy()


def full_gallery_recall(
    image_emb: np.ndarray,
    text_emb: np.ndarray,
    text_image: np.ndarray,
    ks: Sequence[int] = (1, 5, 10),
    chunk: int = 512,
) -> dict[str, dict[str, float]]:
    """Full-gallery Recall@K in both directions.

    Args:
        image_emb: ``(N, D)`` image rows of the split (float16/32; cast to float32 per chunk).
        text_emb: ``(M, D)`` caption rows of the split.
        text_image: ``(M,)`` int, row index in ``image_emb`` (``0..N-1``) of each caption's image.
        ks: cut-offs K.
        chunk: queries per matmul; peak memory ~ ``chunk * max(N, M) * 5`` bytes.

    Returns:
        ``{"i2t": {"recall@K": float, ...}, "t2i": {...}}``, fractions in [0, 1]
        (definitions and tie rule in the module docstring).
    """
    img = np.asarray(image_emb)
    txt = np.asarray(text_emb)
    t2i = np.asarray(text_image, dtype=np.int64)
    n, m = img.shape[0], txt.shape[0]
    if img.ndim != 2 or txt.ndim != 2 or img.shape[1] != txt.shape[1]:
        raise ValueError(f"image_emb {img.shape} and text_emb {txt.shape} must be (N, D), (M, D)")
    if t2i.shape != (m,):
        raise ValueError(f"text_image must have shape ({m},), got {t2i.shape}")
    if m and (t2i.min() < 0 or t2i.max() >= n):
        raise ValueError(f"text_image values must lie in [0, {n})")
    if chunk < 1:
        raise ValueError(f"chunk must be >= 1, got {chunk}")
    ks = tuple(int(k) for k in ks)
    if not ks or min(ks) < 1:
        raise ValueError(f"ks must be cut-offs >= 1, got {ks}")
    txt32 = txt.astype(np.float32, copy=False)  # (M, D)
    img32 = img.astype(np.float32, copy=False)  # (N, D)

    # i2t: image queries over all captions.
    i2t_parts = []
    for s in range(0, n, chunk):
        q = img32[s : s + chunk]  # (C, D)
        scores = q @ txt32.T  # (C, M)
        relevant = t2i[None, :] == np.arange(s, s + q.shape[0])[:, None]  # (C, M)
        i2t_parts.append(_hits(scores, relevant, ks))
    i2t_hits = np.concatenate(i2t_parts) if i2t_parts else np.zeros((0, len(ks)), bool)  # (N, K)
    has_caption = np.bincount(t2i, minlength=n) > 0  # (N,)
    i2t_hits = i2t_hits[has_caption]

    # t2i: caption queries over all images.
    t2i_parts = []
    for s in range(0, m, chunk):
        q = txt32[s : s + chunk]  # (C, D)
        scores = q @ img32.T  # (C, N)
        relevant = np.zeros(scores.shape, dtype=bool)
        relevant[np.arange(q.shape[0]), t2i[s : s + q.shape[0]]] = True
        t2i_parts.append(_hits(scores, relevant, ks))
    t2i_hits = np.concatenate(t2i_parts) if t2i_parts else np.zeros((0, len(ks)), bool)  # (M, K)

    def recall(hits: np.ndarray) -> dict[str, float]:
        if hits.shape[0] == 0:
            return {f"recall@{k}": float("nan") for k in ks}
        return {f"recall@{k}": float(hits[:, i].mean()) for i, k in enumerate(ks)}

    return {"i2t": recall(i2t_hits), "t2i": recall(t2i_hits)}


def store_split_recall(
    store: FeatureStore, split: str = "test", ks: Sequence[int] = (1, 5, 10), chunk: int = 512
) -> dict[str, dict[str, float]]:
    """:func:`full_gallery_recall` on one split of a joint-space store (gallery = that split)."""
    if not store.joint_space:
        raise ValueError(f"{store.root}: joint_space is false, cosine retrieval is meaningless")
    img_ids = store.split_image_ids(split)  # (N,)
    txt_ids = store.split_text_ids(split)  # (M,)
    local = np.full(store.num_images, -1, dtype=np.int64)
    local[img_ids] = np.arange(img_ids.size)
    return full_gallery_recall(
        store.image_emb[img_ids],
        store.text_emb[txt_ids],
        local[store.text_image[txt_ids]],
        ks=ks,
        chunk=chunk,
    )
