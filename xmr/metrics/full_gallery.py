"""The full-gallery protocol (``protocol=full_gallery``): first stage + re-ranking of the top K.

The standard Flickr30k/COCO 1K test, next to xmr's list protocol (51-candidate lists that always
hold the positive). For one split (``test``) with N images and M captions:

1. **First stage**: each query ranks the whole gallery of the split — t2i: a caption ranks all N
   images; i2t: an image ranks all M captions — by

   - ``cosine``: cosine of the store's embeddings (needs ``joint_space: true``);
   - ``self``: the evaluated model's own scores (a pairwise baseline's learned space, or the CLIP
     cosine scorer) — only for scorers that score each pair alone;
   - ``auto``: ``cosine`` on a joint-space store, else ``self`` when possible, else the protocol
     is skipped (recorded in ``results.json``).
2. **Re-ranking**: the evaluated model scores the first stage's top ``K = min(top_k, gallery)``
   items of each query as one list and re-orders them.
3. **Recall@k** (hit@k, fractions in [0, 1]): a query is a hit at k when a relevant item is among
   the first ``min(k, K)`` re-ranked items. A query whose relevant items all fall outside the top
   K counts as a **miss** (positives are never inserted). Queries with no relevant item in the
   gallery (images without captions) are left out, as in :mod:`xmr.metrics.zeroshot`.

Both stages rank in the pessimistic order of :func:`xmr.metrics.ranking.pessimistic_order` (in
the first stage's top-K cut and in the re-ranked order): a relevant item tied with an irrelevant
one ranks below it, a NaN score ranks last. So with ``K = gallery`` and the
cosine scorer the numbers equal :func:`xmr.metrics.zeroshot.full_gallery_recall`.

Keys written into ``results.json`` (next to the list protocol's ``test/...``)::

    test_full/{t2i,i2t}/recall@k              the protocol's Recall@k
    test_full/{t2i,i2t}/first_stage_recall@k  the first stage alone (no re-ranking)
    test_full/{t2i,i2t}/coverage              fraction of queries with a positive in the top K
    test_full/rsum                            :func:`xmr.metrics.ranking.rsum` of the above
    full_gallery: {"top_k", "first_stage", "split", "gallery": {dir: size}, "queries": {dir: n}}

Per-query outcomes (:func:`rerank_outcomes`, written by :func:`xmr.runs.results.write_full_predictions`
as ``predictions_full_{dir}.npz``): for each query its id, the 1-based rank of its first relevant
item in the re-ranked top K (``rank``, 0 when none is in the top K) and in the first stage's
order (``first_stage_rank``, 0 when none is in the first ``max(K, max k)`` positions). Query q
is a hit at k iff ``0 < rank[q] <= k`` (:func:`hits_at_k`), so the Recall@k above is the mean of
``hits_at_k(rank, k)``.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from xmr.data.store import FeatureStore
from xmr.metrics.ranking import pessimistic_order, pessimistic_topk, rsum
from xmr.utils.errors import UserError

log = logging.getLogger(__name__)

FIRST_STAGES = ("auto", "cosine", "self")
PREFIX = "test_full"


class FullGalleryError(UserError, ValueError):
    """The protocol cannot run with these options (message names the option and the rule)."""


def split_gallery(store: FeatureStore, direction: str, split: str = "test") -> dict[str, Any]:
    """Queries, gallery and relevance of one direction on one split.

    Returns ``{"queries": (Q,) ids, "gallery": (G,) ids, "query_key": (Q,), "gallery_key":
    (G,)}`` where a gallery item is relevant to a query iff their keys are equal (the image id of
    the caption side). ``query_table`` / ``gallery_table`` name the store tables.
    """
    img = np.asarray(store.split_image_ids(split), dtype=np.int64)  # (N,)
    txt = np.asarray(store.split_text_ids(split), dtype=np.int64)  # (M,)
    txt_img = np.asarray(store.text_image, dtype=np.int64)[txt]  # (M,)
    if direction == "t2i":
        return {
            "queries": txt,
            "gallery": img,
            "query_key": txt_img,
            "gallery_key": img,
            "query_table": "text",
            "gallery_table": "image",
        }
    if direction == "i2t":
        keep = np.isin(img, txt_img)  # images with at least one caption in the split
        return {
            "queries": img[keep],
            "gallery": txt,
            "query_key": img[keep],
            "gallery_key": txt_img,
            "query_table": "image",
            "gallery_table": "text",
        }
    raise ValueError(f"direction={direction!r}: one of t2i, i2t")


def _table(store: FeatureStore, name: str, ids: np.ndarray) -> Tensor:
    emb = store.text_emb if name == "text" else store.image_emb
    return torch.from_numpy(np.asarray(emb[ids], dtype=np.float32))


def first_relevant_rank(ranked_relevant: Tensor) -> Tensor:
    """``(C,)`` int64: the 1-based rank of the first relevant item of each ranked list
    ``(C, L)`` bool (best first), 0 when the list holds none."""
    found = ranked_relevant.any(1)  # (C,)
    first = ranked_relevant.to(torch.int8).argmax(1) + 1  # (C,) first True, 1-based
    return torch.where(found, first, torch.zeros_like(first)).to(torch.int64)


def hits_at_k(rank: np.ndarray | Tensor, k: int) -> np.ndarray:
    """Per-query hit@k ``(Q,)`` float64 from first-relevant ranks ``(Q,)`` (0 = no relevant item
    ranked): 1 when ``0 < rank <= k``, else 0."""
    r = np.asarray(rank)
    return ((r > 0) & (r <= int(k))).astype(np.float64)


def rerank_outcomes(
    first_scores: Callable[[Tensor], Tensor],
    rerank: Callable[[Tensor, Tensor, Tensor], Tensor],
    query_feats: Tensor,
    gallery_feats: Tensor,
    relevant: Callable[[slice], Tensor],
    top_k: int,
    ks: Sequence[int] = (1, 5, 10),
    chunk: int = 256,
) -> dict[str, np.ndarray]:
    """The protocol's per-query outcomes on one direction (arguments as :func:`rerank_recall`).

    Returns ``rank`` ``(Q,)`` int64, the 1-based rank of the first relevant item among the
    re-ranked top K (0: none in the top K, a miss at every k), and ``first_stage_rank`` ``(Q,)``,
    the same in the first stage's order over its first ``max(K, max(ks))`` positions.
    """
    n_q, n_g = query_feats.shape[0], gallery_feats.shape[0]
    k_cut = max(1, min(int(top_k), n_g))
    top = max(k_cut, *(int(k) for k in ks))  # the first stage's positions that are read
    ranks, first_ranks = [], []
    for s in range(0, n_q, chunk):
        sl = slice(s, min(s + chunk, n_q))
        q = query_feats[sl]  # (C, D_q)
        rel = relevant(sl)  # (C, G)
        full_mask = torch.ones_like(rel)
        order = pessimistic_topk(first_scores(q), rel, full_mask, top)  # (C, top)
        rel_sorted = torch.gather(rel, 1, order)  # (C, top)
        first_ranks.append(first_relevant_rank(rel_sorted))
        top_ids = order[:, :k_cut]  # (C, K)
        top_rel = rel_sorted[:, :k_cut]  # (C, K)
        mask = torch.ones_like(top_rel)
        scores = rerank(q, gallery_feats[top_ids], mask)  # (C, K)
        re_rel = torch.gather(top_rel, 1, pessimistic_order(scores, top_rel, mask))  # (C, K)
        ranks.append(first_relevant_rank(re_rel))
    empty = torch.zeros(0, dtype=torch.int64)
    return {
        "rank": torch.cat(ranks or [empty]).numpy(),
        "first_stage_rank": torch.cat(first_ranks or [empty]).numpy(),
    }


def recall_from_outcomes(outcomes: Mapping[str, np.ndarray], ks: Sequence[int]) -> dict[str, float]:
    """``recall@k``, ``first_stage_recall@k`` and ``coverage`` (fractions) of per-query outcomes
    (:func:`rerank_outcomes`); NaN without queries."""
    rank, first = outcomes["rank"], outcomes["first_stage_rank"]
    n_q = len(rank)
    out: dict[str, float] = {}
    for k in ks:
        out[f"recall@{k}"] = int(hits_at_k(rank, k).sum()) / n_q if n_q else float("nan")
        out[f"first_stage_recall@{k}"] = (
            int(hits_at_k(first, k).sum()) / n_q if n_q else float("nan")
        )
    # A query has a positive in the top K iff the re-ranked top K ranks one.
    out["coverage"] = int((rank > 0).sum()) / n_q if n_q else float("nan")
    return out


def rerank_recall(
    first_scores: Callable[[Tensor], Tensor],
    rerank: Callable[[Tensor, Tensor, Tensor], Tensor],
    query_feats: Tensor,
    gallery_feats: Tensor,
    relevant: Callable[[slice], Tensor],
    top_k: int,
    ks: Sequence[int] = (1, 5, 10),
    chunk: int = 256,
) -> dict[str, float]:
    """The protocol on one direction, given scoring functions.

    Args:
        first_scores: query rows ``(C, D_q)`` → first-stage scores ``(C, G)`` over the gallery.
        rerank: ``(q (C, D_q), c (C, K, D_c), mask (C, K))`` → scores ``(C, K)``.
        query_feats: ``(Q, D_q)``; gallery_feats: ``(G, D_c)``.
        relevant: a slice of queries → ``(C, G)`` bool relevance.
        top_k: K (clamped to the gallery size).

    Returns ``recall@k``, ``first_stage_recall@k`` and ``coverage`` (fractions).
    """
    ks = tuple(int(k) for k in ks)
    outcomes = rerank_outcomes(
        first_scores, rerank, query_feats, gallery_feats, relevant, top_k, ks, chunk
    )
    return recall_from_outcomes(outcomes, ks)


def cosine_gallery_scores(gallery: Tensor) -> Callable[[Tensor], Tensor]:
    """Scores of queries ``(B, D)`` against every gallery item ``(G, D)``: cosine, ``(B, G)``."""
    g = F.normalize(gallery.float(), dim=-1)  # (G, D)
    return lambda q: F.normalize(q.float(), dim=-1) @ g.T


def _self_first_stage(net: nn.Module, gallery: Tensor) -> Callable[[Tensor], Tensor] | None:
    """First-stage scores from the model itself: a scorer that scores each (query, candidate)
    pair alone offers ``gallery_scores(gallery) -> (queries (B, D) -> scores (B, G))``."""
    offer = getattr(net, "gallery_scores", None)
    return offer(gallery) if callable(offer) else None


@torch.no_grad()
def evaluate_full_gallery(
    nets: Mapping[str, nn.Module],
    store: FeatureStore,
    top_k: int = 50,
    first_stage: str = "auto",
    split: str = "test",
    ks: Sequence[int] = (1, 5, 10),
    chunk: int = 256,
) -> tuple[dict[str, float], dict[str, Any], dict[str, dict[str, np.ndarray]]]:
    """Run the protocol for every direction of ``nets`` (direction → scorer with
    ``forward_split(q, c, mask)``). Returns ``(metrics, info, outcomes)``: metrics keyed
    ``test_full/{dir}/...`` (see the module docstring), info for ``results.json``'s
    ``full_gallery`` entry (``{"skipped": reason}`` when the protocol cannot run) and, per
    direction, the per-query outcomes ``{"query" (Q,) ids, "rank" (Q,), "first_stage_rank" (Q,)}``
    (:func:`rerank_outcomes`; empty when skipped)."""
    if first_stage not in FIRST_STAGES:
        raise FullGalleryError(f"protocol.first_stage={first_stage!r}: one of {FIRST_STAGES}")
    if int(top_k) < 1:
        raise FullGalleryError(f"protocol.top_k={top_k}: must be >= 1")
    ks = tuple(int(k) for k in ks)
    info: dict[str, Any] = {"top_k": int(top_k), "split": split, "gallery": {}, "queries": {}}
    metrics: dict[str, float] = {}
    outcomes: dict[str, dict[str, np.ndarray]] = {}
    stages: set[str] = set()
    for direction, net in nets.items():
        was_training = net.training
        net.eval()
        parts = split_gallery(store, direction, split)
        q_feats = _table(store, parts["query_table"], parts["queries"])  # (Q, D_q)
        g_feats = _table(store, parts["gallery_table"], parts["gallery"])  # (G, D_c)
        stage = first_stage
        if stage == "auto":
            stage = "cosine" if store.joint_space else "self"
        if stage == "cosine":
            if not store.joint_space or q_feats.shape[1] != g_feats.shape[1]:
                if first_stage == "cosine":
                    raise FullGalleryError(
                        f"protocol.first_stage=cosine: {store.root} has joint_space: false"
                    )
                stage = "self"
            else:
                first = cosine_gallery_scores(g_feats)
        if stage == "self":
            first = _self_first_stage(net, g_feats)
            if first is None:
                reason = (
                    f"{direction}: no first stage — the store is not one joint space and "
                    f"{type(net).__name__} does not score pairs alone"
                )
                if first_stage == "self":
                    raise FullGalleryError(f"protocol.first_stage=self: {reason}")
                log.warning("full-gallery protocol skipped: %s", reason)
                info = {"skipped": reason, "top_k": int(top_k), "split": split}
                net.train(was_training)
                return {}, info, {}
        stages.add(stage)
        qk = torch.from_numpy(parts["query_key"])  # (Q,)
        gk = torch.from_numpy(parts["gallery_key"])  # (G,)
        owner = getattr(net, "model", net)  # a pair model's view holds no parameters itself
        device = next((p.device for p in owner.parameters()), torch.device("cpu"))

        def rerank(
            q: Tensor, c: Tensor, mask: Tensor, net: nn.Module = net, device: Any = device
        ) -> Tensor:
            return net.forward_split(q.to(device), c.to(device), mask.to(device)).cpu()

        per_query = rerank_outcomes(
            first,
            rerank,
            q_feats,
            g_feats,
            lambda sl, qk=qk, gk=gk: qk[sl, None] == gk[None, :],
            top_k,
            ks,
            chunk,
        )
        net.train(was_training)
        outcomes[direction] = {"query": parts["queries"], **per_query}
        for name, v in recall_from_outcomes(per_query, ks).items():
            metrics[f"{PREFIX}/{direction}/{name}"] = v
        info["gallery"][direction] = int(g_feats.shape[0])
        info["queries"][direction] = int(q_feats.shape[0])
    info["first_stage"] = "+".join(sorted(stages))
    total = rsum(metrics, PREFIX, nets)
    if total is not None:
        metrics[f"{PREFIX}/rsum"] = float(total)
    return metrics, info, outcomes


def run_protocol(
    cfg: Any, nets: Mapping[str, nn.Module], store: FeatureStore
) -> tuple[dict[str, float], dict[str, Any] | None, dict[str, dict[str, np.ndarray]]]:
    """The ``protocol`` config group: the full-gallery evaluation (``(metrics, info, outcomes)``
    of :func:`evaluate_full_gallery`) when ``protocol.full_gallery`` is set, else nothing
    (``({}, None, {})``)."""
    proto = cfg.get("protocol") if hasattr(cfg, "get") else None
    fg = proto.get("full_gallery") if proto else None
    if not fg:
        return {}, None, {}
    return evaluate_full_gallery(
        nets,
        store,
        top_k=int(fg.get("top_k", 50)),
        first_stage=str(fg.get("first_stage", "auto")),
        split=str(fg.get("split", "test")),
        ks=tuple(cfg.get("ks", (1, 5, 10))),
        chunk=int(fg.get("chunk", 256)),
    )
