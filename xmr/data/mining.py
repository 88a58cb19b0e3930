"""Candidate lists: the paper's hard-negative mining, in both directions and every split.

A *list* is one query with L candidates from the other modality of the same split:

- ``t2i`` (caption query -> images): the positive is the caption's image.
- ``i2t`` (image query -> captions): the positives are captions of the query image.

Relevance (the only label level): a caption is relevant to an image iff it describes it, i.e.
``store.text_image[caption] == image``.

Mining, per query (paper, "Hard-negative lists"):

1. Draw ``pool`` candidates uniformly at random without replacement from the other modality in the
   query's split, *excluding every item relevant to the query* (in ``i2t`` all captions of the query
   image, so a sibling caption is never a negative). When fewer than ``pool`` negatives exist, the
   whole set is the pool (counted in the stats as ``short_pools``, and logged as a warning).
2. Keep the ``hard`` pool members of highest cosine with the query (``strategy="hard"``, needs a
   ``joint_space`` store) or ``hard`` random ones (``strategy="random"``, any store).
3. Add the positive(s), then shuffle each list so the positive has no fixed slot.

The paper's positive is appended *after* selection by cosine, so a ranker can learn "the least
similar candidate is the positive". Two constructions make the positive obey the rule of the
negatives (``list_size`` L, default 51 = the paper's 50 negatives + 1; joint-space stores only):

- ``strategy="first_stage"``: each query's top L by the first-stage score (cosine of the store's
  embeddings) over its whole split gallery: the lists that the full-gallery protocol
  (:mod:`xmr.metrics.full_gallery`, cosine first stage) re-ranks (its ``top_k`` 50 = the first
  50 of these 51). Every relevant item of the
  gallery may enter, each only by its cosine (in ``i2t`` all captions of the query image are
  relevant; ``i2t_positives`` plays no part).
- ``strategy="pool"``: a random pool from the query's split, holding the query's positive(s)
  (``t2i``: its image; ``i2t``: ``i2t_positives`` captions of the image, the other captions
  excluded as in ``hard``) plus ``pool_size`` minus that many random non-relevant items, and the
  top L of that pool by the first-stage score. ``pool_size`` (key of its own: ``pool`` stays the
  ``hard``/``random`` pool) is an int or ``"test_gallery"`` (default): the size of the test split's
  gallery of the direction (``t2i``: test images; ``i2t``: test captions), so training lists are
  drawn from pools as large as the gallery re-ranked at test time. A split whose gallery holds
  fewer than ``pool_size`` items gives every query the whole gallery instead (``short_pools``,
  logged as a warning; the relevant items that are not positives stay out as always).

In both the top L is taken in the pessimistic order of :mod:`xmr.metrics.ranking` (a relevant
item tied with an irrelevant one loses the tie; equal score and label: lower candidate id first),
and a list's positive is there only if the first stage retrieved it. A **training** list without
a retrieved positive is dropped (``stats.lists_dropped_no_positive``); a **val/test** list without
one is kept (``stats.lists_without_positive``) and counts as a miss in Recall@K: these files hold
``relevant_total`` (Q,), the number of items relevant to the query in the ranked set (the split
gallery for ``first_stage``, the pool for ``pool``), which the datamodule passes to the metrics
(:func:`xmr.metrics.functional.list_metrics`). Lists are shuffled like those of ``hard``.
``stats.coverage`` is the fraction of queries with a retrieved positive. Work is chunked: one
(RNG_BLOCK, _GALLERY_CHUNK) block of scores at a time, never the image x caption matrix.

Lists of one file share one length L, that of its longest list (``hard`` + the largest number of
positives, unless every pool of the file is short); shorter lists (fewer captions, short pools) are
padded at the end with candidate id -1 and label 0.

Data hygiene is checked on every mined file before anything is written (:func:`check_lists`, the
same rules as :func:`load_lists`): queries and candidates all from the file's split, label 1 iff
relevant (so a sibling caption is never a negative), no duplicates, a positive in every list
(``first_stage``/``pool``: in every training list).

Query and positive selection (seeded, documented choice):

- ``t2i_captions_per_image``: an int k -> k captions per image, drawn at random (seeded) among its
  captions (all of them when it has at most k); ``"all"`` -> every caption is a query. The paper
  uses 1 (one query per image).
- ``i2t_positives``: an int k -> k random (seeded) captions of the query image are added as
  positives; ``"all"`` -> all its captions. The captions not added are still excluded from the
  pool: they are relevant and never appear as negatives.
- Images without any caption make no i2t query (counted as ``queries_skipped``); they remain valid
  t2i negatives.

Determinism: the output is a function of the store, the parameters and ``seed`` only (bytes
identical across runs; the ``.npz`` files are written with fixed zip timestamps). Randomness is
drawn from ``numpy.random.default_rng([seed, direction, split, stage, block])`` for fixed blocks of
``RNG_BLOCK`` queries, so results do not depend on how the computation is chunked, but they do
depend on the constant ``RNG_BLOCK`` (recorded in ``lists.json`` as ``params.rng_block``).

Output: a directory with ``{t2i,i2t}_{train,val,test}.npz`` (``queries`` (Q,) int64,
``candidates`` (Q, L) int64, ``labels`` (Q, L) uint8; ``relevant_total`` (Q,) int64 for
``first_stage`` and ``pool``) and ``lists.json`` (format ``xmr-lists/1``),
written into a temporary sibling and renamed into place (``lists.json`` last).

Resumable: the sibling is ``.<name>.partial/`` and keeps each finished file (and its stats) until
the whole directory is published, so ``xmr mine`` killed midway and started again with the same
store, parameters and seed mines only the missing files (the output is bytes-identical to an
uninterrupted run: each file is a function of the store, parameters and seed alone).

Re-drawn training lists (``pool`` only; the datamodule's ``data.redraw_train_lists``):
:func:`redraw_train_lists` mines a direction's training file again, the same way, with the epoch
added to the pools' RNG key (``[seed, direction, split, stage, epoch, block]``): the same queries
and positives, new random pools, so more distinct lists from small data. Epoch 0 is the mined file.

One miner per lists directory: :func:`mine_lists` holds ``<name>.lock`` beside it
(:class:`xmr.utils.lock.DirLock`) from its existence check to the publication, so a second one
waits instead of sharing (and deleting) the first one's work directory.
"""

from __future__ import annotations

import json
import logging
import shutil
import time
import zipfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch

from xmr.data.probe import probe_paths
from xmr.data.store import DIRECTIONS, SPLITS, FeatureStore
from xmr.metrics.ranking import pessimistic_order, pessimistic_topk
from xmr.utils.errors import UserError
from xmr.utils.io import atomic_write, atomic_write_text, publish_dir, resume_work_dir
from xmr.utils.lock import DirLock

log = logging.getLogger(__name__)

LISTS_FORMAT = "xmr-lists/1"
SPLIT_CODES: dict[str, int] = dict(SPLITS)
STRATEGIES: tuple[str, ...] = ("hard", "random", "first_stage", "pool")
#: Strategies whose lists are the top ``list_size`` of a first-stage (cosine) ranking.
RANKED_STRATEGIES: tuple[str, ...] = ("first_stage", "pool")
#: ``pool_size`` value: the size of the test split's gallery of the direction.
TEST_GALLERY = "test_gallery"
#: The paper's mining settings, the defaults of :func:`mine_lists` and of the lists directory's
#: name (:func:`xmr.data.datamodule.mining_tag`); conf/data/mining/default.yaml holds the same.
MINING_DEFAULTS: dict[str, Any] = {
    "pool": 200,
    "hard": 50,
    "t2i_captions_per_image": 1,
    "i2t_positives": 1,
    "seed": 0,
    "strategy": "hard",
    "list_size": 51,  # first_stage and pool: candidates kept per list
    "pool_size": TEST_GALLERY,  # pool: the random pool (an int, or the test gallery's size)
}
RNG_BLOCK = 256  # queries per RNG stream (and per compute chunk); part of the output's definition
_SAMPLED_STRATEGIES = ("hard", "random")  # mined by mine_arrays
_DIRECTION_CODES = {"t2i": 0, "i2t": 1}
_STAGE_SELECT, _STAGE_POOL = 0, 1
# Pools are drawn by rejection of duplicates when every query has more than this many times
# `pool` negatives; otherwise by the k smallest of per-candidate random keys (exact, O(B * n)).
_REJECTION_FACTOR = 4
_GATHER_CHUNK = 32  # queries per embedding gather (compute only; does not change the output)
# First-stage top-L: torch.topk keeps L + this many per query; when the last kept score is below
# the L-th, every candidate that can be among the first L is kept (exact; else the whole row).
_TOPK_MARGIN = 16
_UNIT_CHUNK = 8192  # rows per embedding conversion (compute only; does not change the output)
_GALLERY_CHUNK = 8192  # gallery columns scored at once (compute only; does not change the output)
_PARTIAL_FORMAT = "xmr-lists-partial/1"  # format of the resumable work directory's state.json
_STATS_SUFFIX = ".stats.json"  # beside each finished file in the work directory


class ListsError(UserError, ValueError):
    """Invalid candidate lists or mining parameters; the message names the file and the rule."""


@dataclass(frozen=True)
class CandidateLists:
    """One (direction, split) file of candidate lists.

    Attributes:
        queries: (Q,) int64 — caption ids (t2i) or image ids (i2t).
        candidates: (Q, L) int64 — image ids (t2i) or caption ids (i2t); -1 = padding.
        labels: (Q, L) uint8 — 1 relevant, 0 not (0 at padding).
        direction: "t2i" or "i2t".
        split: "train", "val" or "test".
        relevant_total: (Q,) int64 — items relevant to each query in the set its list was ranked
            from (``first_stage``, ``pool``); None when every list holds all of them (``hard``,
            ``random``). A val/test list with no positive but ``relevant_total > 0`` is a miss.
    """

    queries: np.ndarray
    candidates: np.ndarray
    labels: np.ndarray
    direction: str
    split: str
    relevant_total: np.ndarray | None = None

    @property
    def num_lists(self) -> int:
        return int(self.queries.shape[0])

    @property
    def list_length(self) -> int:
        return int(self.candidates.shape[1])

    @property
    def mask(self) -> np.ndarray:
        """(Q, L) bool — True for a real candidate, False for padding."""
        return self.candidates >= 0


def lists_filename(direction: str, split: str) -> str:
    """File name of one (direction, split) inside a lists directory, e.g. ``t2i_train.npz``."""
    return f"{direction}_{split}.npz"


# --------------------------------------------------------------------------------------------
# Array-level core
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class MiningProblem:
    """One (direction, split) mining task, in *local* candidate indices.

    The candidates are ordered so that the items relevant to each query form one contiguous block
    ``[excl_start[q], excl_start[q] + excl_count[q])``; that block is excluded from the pool.

    Attributes:
        query_ids: (Q,) int64 global ids of the queries.
        cand_ids: (M,) int64 global ids of the candidates, in local order.
        excl_start: (Q,) int64 first local index of the query's relevant block.
        excl_count: (Q,) int64 size of that block (>= number of positives added).
        positives: (Q, P) int64 local indices of the positives added to each list; -1 = none.
        query_emb: (Q, D) float32 unit rows, or None (random strategy).
        cand_emb: (M, D) float32 unit rows, or None (random strategy).
    """

    query_ids: np.ndarray
    cand_ids: np.ndarray
    excl_start: np.ndarray
    excl_count: np.ndarray
    positives: np.ndarray
    query_emb: np.ndarray | None = None
    cand_emb: np.ndarray | None = None


@dataclass(frozen=True)
class MinedArrays:
    """Result of :func:`mine_arrays`.

    Attributes:
        candidates: (Q, L) int64 global candidate ids, -1 = padding (always at the end of a row).
        labels: (Q, L) uint8.
        n_available: (Q,) int64 number of negatives each query could draw from.
        n_pool: (Q,) int64 size of each query's pool (min(pool, n_available)).
    """

    candidates: np.ndarray
    labels: np.ndarray
    n_available: np.ndarray
    n_pool: np.ndarray


def sample_pools(rng: np.random.Generator, n_available: np.ndarray, pool: int) -> np.ndarray:
    """Sample, per row, ``min(pool, n_available[b])`` distinct integers from ``[0, n_available[b])``.

    Each row's set is uniform over the subsets of that size, and so is the set of its first k
    entries for any k (both samplers are equivariant under relabelling the integers).

    Args:
        rng: the generator (consumed deterministically).
        n_available: (B,) int64 size of each row's range.
        pool: number of draws per row.

    Returns:
        (B, pool) int64; the valid entries come first in each row, -1 fills rows with a short range.
    """
    n_available = np.asarray(n_available, dtype=np.int64)
    b = n_available.shape[0]
    if b == 0:
        return np.zeros((0, pool), dtype=np.int64)
    if int(n_available.min()) > _REJECTION_FACTOR * pool:
        # i.i.d. draws, then redraw the later copy of every duplicate until a row is distinct.
        n_col = n_available[:, None]
        draws = np.floor(rng.random((b, pool)) * n_col).astype(np.int64)  # (B, pool)
        np.minimum(draws, n_col - 1, out=draws)
        while True:
            order = np.argsort(draws, axis=1, kind="stable")
            srt = np.take_along_axis(draws, order, axis=1)
            rows, cols = np.nonzero(srt[:, 1:] == srt[:, :-1])
            if rows.size == 0:
                return draws
            pos = order[rows, cols + 1]
            new = np.floor(rng.random(rows.size) * n_available[rows]).astype(np.int64)
            draws[rows, pos] = np.minimum(new, n_available[rows] - 1)
    # Small ranges: the k smallest of i.i.d. random keys, ordered by key (exact, O(B * n_max)).
    n_max = int(n_available.max())
    keys = rng.random((b, n_max))  # (B, n_max)
    keys[np.arange(n_max)[None, :] >= n_available[:, None]] = np.inf
    k = min(pool, n_max)
    if k < n_max:
        idx = np.argpartition(keys, k - 1, axis=1)[:, :k]
    else:
        idx = np.broadcast_to(np.arange(n_max), (b, n_max)).copy()
    sel = np.take_along_axis(keys, idx, axis=1)
    order = np.argsort(sel, axis=1, kind="stable")
    idx = np.take_along_axis(idx, order, axis=1)
    idx[np.take_along_axis(sel, order, axis=1) == np.inf] = -1
    out = np.full((b, pool), -1, dtype=np.int64)
    out[:, :k] = idx
    return out


def _pool_cosines(q_emb: np.ndarray, c_emb: np.ndarray, pools: np.ndarray) -> np.ndarray:
    """Dot products of each query with its pool members.

    Args:
        q_emb: (B, D) float32 unit query rows.
        c_emb: (M, D) float32 unit candidate rows.
        pools: (B, P) int64 local candidate indices (all valid).

    Returns:
        (B, P) float64 cosines. Gathers ``_GATHER_CHUNK`` queries at a time so that the gathered
        (chunk, P, D) block stays cache-sized. numpy (single-threaded gather, batched matmul) was
        measured faster here than torch index_select + bmm, and robust on a busy 2-core machine.
    """
    b, p = pools.shape
    out = np.empty((b, p), dtype=np.float64)
    for s in range(0, b, _GATHER_CHUNK):
        e = min(s + _GATHER_CHUNK, b)
        gathered = np.take(c_emb, pools[s:e], axis=0)  # (b, P, D)
        out[s:e] = np.matmul(gathered, q_emb[s:e, :, None])[..., 0]
    return out


def mine_arrays(
    problem: MiningProblem,
    *,
    pool: int,
    hard: int,
    strategy: str,
    seed_key: Sequence[int],
) -> MinedArrays:
    """Mine the candidate lists of one (direction, split) problem.

    Per query: pool (see :func:`sample_pools`) among the candidates outside its relevant block;
    keep the ``hard`` highest-cosine pool members (ties: earlier pool draw first) or the first
    ``hard`` pool draws (random strategy); append the positives; shuffle the real entries; pad.
    Works on chunks of ``RNG_BLOCK`` queries: memory O(RNG_BLOCK * pool * D), never (Q, L, D).

    Args:
        problem: the task (see :class:`MiningProblem`).
        pool, hard: pool size and number of negatives kept (1 <= hard <= pool).
        strategy: "hard" (cosine; needs embeddings) or "random".
        seed_key: ints that, with the block index, seed each block's generator.

    Returns:
        :class:`MinedArrays`.
    """
    if strategy not in _SAMPLED_STRATEGIES:
        raise ListsError(f"strategy: must be one of {_SAMPLED_STRATEGIES}, got {strategy!r}")
    if not 1 <= hard <= pool:
        raise ListsError(f"hard/pool: need 1 <= hard <= pool, got hard={hard}, pool={pool}")
    q = problem.query_ids.shape[0]
    n_cand = problem.cand_ids.shape[0]
    positives = problem.positives  # (Q, P)
    n_pos_max = positives.shape[1]
    n_available = n_cand - problem.excl_count  # (Q,)
    width = hard + n_pos_max
    cand_local = np.full((q, width), -1, dtype=np.int64)  # (Q, H + P)
    is_pos = np.zeros((q, width), dtype=bool)
    use_cos = strategy == "hard"
    if use_cos:
        if problem.query_emb is None or problem.cand_emb is None:
            raise ListsError("strategy 'hard' needs query and candidate embeddings")
        q_emb = np.ascontiguousarray(problem.query_emb, dtype=np.float32)  # (Q, D)
        c_emb = np.ascontiguousarray(problem.cand_emb, dtype=np.float32)  # (M, D)
    for blk, start in enumerate(range(0, q, RNG_BLOCK)):
        stop = min(start + RNG_BLOCK, q)
        rng = np.random.default_rng([*seed_key, blk])
        pools = sample_pools(rng, n_available[start:stop], pool)  # (B, pool) in [0, n_avail)
        valid = pools >= 0
        # Skip the relevant block: local index v >= excl_start moves up by excl_count.
        ex_s = problem.excl_start[start:stop, None]
        ex_c = problem.excl_count[start:stop, None]
        pools = np.where(valid & (pools >= ex_s), pools + ex_c, pools)  # (B, pool) local ids
        if use_cos:
            sims = _pool_cosines(q_emb[start:stop], c_emb, np.where(valid, pools, 0))
        else:
            sims = np.zeros(pools.shape, dtype=np.float64)
        sims[~valid] = -np.inf
        top = np.argsort(-sims, axis=1, kind="stable")[:, :hard]  # (B, H)
        neg = np.take_along_axis(pools, top, axis=1)
        neg[~np.take_along_axis(valid, top, axis=1)] = -1
        row = np.concatenate([neg, positives[start:stop]], axis=1)  # (B, H + P)
        pos = np.zeros(row.shape, dtype=bool)
        pos[:, hard:] = positives[start:stop] >= 0
        cand_local[start:stop], is_pos[start:stop] = _shuffle_rows(rng, row, pos)
    real = cand_local >= 0
    length = int(real.sum(axis=1).max()) if q else width
    candidates = np.where(real, problem.cand_ids[np.maximum(cand_local, 0)], -1)[:, :length]
    labels = is_pos[:, :length].astype(np.uint8)
    if (is_pos[:, length:]).any() or real[:, length:].any():  # pragma: no cover - internal bug
        raise AssertionError("mining: a real candidate fell into the trimmed padding")
    return MinedArrays(
        candidates=np.ascontiguousarray(candidates, dtype=np.int64),
        labels=np.ascontiguousarray(labels),
        n_available=n_available.astype(np.int64),
        n_pool=np.minimum(n_available, pool).astype(np.int64),
    )


@dataclass(frozen=True)
class RankedArrays:
    """Result of :func:`mine_ranked` (one list per query, none dropped yet).

    Attributes:
        candidates: (Q, L) int64 global candidate ids, -1 = padding (always at the end of a row).
        labels: (Q, L) uint8.
        relevant_total: (Q,) int64 items relevant to each query in the set it was ranked from.
        n_available: (Q,) int64 non-relevant items of the split each query could draw from.
        n_pool: (Q,) int64 size of each query's ranked set (gallery or pool, positives included).
    """

    candidates: np.ndarray
    labels: np.ndarray
    relevant_total: np.ndarray
    n_available: np.ndarray
    n_pool: np.ndarray


def first_stage_top(
    q_emb: torch.Tensor,
    c_emb: torch.Tensor,
    excl_start: torch.Tensor,
    excl_count: torch.Tensor,
    real: torch.Tensor | None,
    cand_key: torch.Tensor,
    k: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The first ``k`` candidates of each query by cosine, in the pessimistic order of
    :func:`xmr.metrics.ranking.pessimistic_order` (input position taken as ``cand_key``).

    Scores ``q_emb @ c_emb.T`` a ``_GALLERY_CHUNK``-column slice at a time (cache-sized; never the
    whole (B, M) block) and keeps the best ``k + _TOPK_MARGIN`` of each row with ``torch.topk``.
    Where the last kept score is below the k-th (or the row has no more real items than that),
    they hold every candidate that can be among the first k (score >= the k-th, ties included):
    they are sorted by ``cand_key`` and ordered by ``pessimistic_order``. A row where a tie at the
    k-th score spans the margin goes through :func:`xmr.metrics.ranking.pessimistic_topk` whole,
    columns in ``cand_key`` order. Either way the result is the pessimistic order of the row.

    Args:
        q_emb: (B, D) float32 unit query rows; c_emb: (M, D) float32 unit candidate rows.
        excl_start, excl_count: (B,) int64 the row's relevant columns ``[start, start + count)``.
        real: (B, M) bool, False = not in the row's ranked set (pool); None = all real.
        cand_key: (M,) int64 distinct keys of the columns (global candidate ids): among equal
            scores and labels the lower key first, as in the full-gallery protocol's gallery.
        k: candidates kept (1 <= k <= M).

    Returns:
        top (B, k) int64 local indices best first, and top_real (B, k) bool (False = padding,
        where the row's set has fewer than k items).
    """
    b, m = q_emb.shape[0], c_emb.shape[0]

    def relevant(idx: torch.Tensor, rows: slice) -> torch.Tensor:  # (R, W) -> (R, W) bool
        start = excl_start[rows, None]
        return (idx >= start) & (idx < start + excl_count[rows, None])

    kk = min(m, k + _TOPK_MARGIN)
    part_vals, part_idx = [], []
    for g0 in range(0, m, _GALLERY_CHUNK):
        g1 = min(g0 + _GALLERY_CHUNK, m)
        scores = q_emb @ c_emb[g0:g1].T  # (B, C)
        if real is not None:
            scores.masked_fill_(~real[:, g0:g1], float("-inf"))
        v, i = torch.topk(scores, min(kk, g1 - g0), dim=1)
        part_vals.append(v)
        part_idx.append(i + g0)
    # The best kk of the chunks' best kk are the row's best kk.
    vals, pick = torch.topk(torch.cat(part_vals, dim=1), kk, dim=1)  # (B, KK), best first
    idx = torch.cat(part_idx, dim=1).gather(1, pick)  # (B, KK)
    n_real = real.sum(dim=1) if real is not None else torch.full((b,), m)
    exact = (vals[:, kk - 1] < vals[:, k - 1]) | (n_real <= kk) | (kk == m)  # (B,)
    by_key = cand_key[idx].argsort(dim=1)  # (B, KK)
    idx, vals = idx.gather(1, by_key), vals.gather(1, by_key)
    sub_real = torch.ones_like(idx, dtype=torch.bool) if real is None else real.gather(1, idx)
    order = pessimistic_order(vals, relevant(idx, slice(None)), sub_real)[:, :k]  # (B, k)
    top, top_real = idx.gather(1, order), sub_real.gather(1, order)
    if not bool(exact.all()):
        cols = cand_key.argsort()  # (M,) columns in key order
        for r in torch.nonzero(~exact).flatten().tolist():
            rows = slice(r, r + 1)
            row = q_emb[rows] @ c_emb[cols].T  # (1, M)
            row_real = torch.ones_like(row, dtype=torch.bool) if real is None else real[rows, cols]
            row = row.masked_fill(~row_real, float("-inf"))
            best = pessimistic_topk(row, relevant(cols[None, :], rows), row_real, k)[0]  # (k,)
            top[r], top_real[r] = cols[best], row_real[0, best]
    return top, top_real


def mine_ranked(
    problem: MiningProblem,
    *,
    list_size: int,
    pool_size: int | None,
    seed_key: Sequence[int],
) -> RankedArrays:
    """Lists of the first-stage strategies for one (direction, split) problem.

    Per query: the ranked set is the whole gallery (``pool_size=None``: ``first_stage``) or a
    pool of the positives plus ``pool_size`` minus their number items drawn as
    :func:`sample_pools` draws among the non-relevant candidates (``pool``); keep its top
    ``list_size`` by cosine (:func:`first_stage_top`); label 1 iff relevant; shuffle the real
    entries; pad. Scores are held for (RNG_BLOCK, _GALLERY_CHUNK) at a time, never (Q, M); the
    pool strategy adds a (RNG_BLOCK, M) bool membership mask.

    Args:
        problem: the task (needs embeddings).
        list_size: candidates kept per list (>= 1; the gallery or pool when smaller).
        pool_size: the pool (>= 1), or None for the whole gallery.
        seed_key: ints that, with the block index, seed each block's generator.

    Returns:
        :class:`RankedArrays`; a list may hold no positive (the first stage missed it).
    """
    if problem.query_emb is None or problem.cand_emb is None:
        raise ListsError("the first-stage strategies need query and candidate embeddings")
    q = problem.query_ids.shape[0]
    m = problem.cand_ids.shape[0]
    positives = problem.positives  # (Q, P)
    n_pos = (positives >= 0).sum(axis=1).astype(np.int64)  # (Q,)
    n_available = (m - problem.excl_count).astype(np.int64)  # (Q,)
    k = max(1, min(int(list_size), m))
    q_emb = torch.from_numpy(np.ascontiguousarray(problem.query_emb, dtype=np.float32))
    c_emb = torch.from_numpy(np.ascontiguousarray(problem.cand_emb, dtype=np.float32))
    cand_key = torch.from_numpy(np.ascontiguousarray(problem.cand_ids, dtype=np.int64))
    ex_s_all = torch.from_numpy(np.ascontiguousarray(problem.excl_start, dtype=np.int64))
    ex_c_all = torch.from_numpy(np.ascontiguousarray(problem.excl_count, dtype=np.int64))
    cand_local = np.full((q, k), -1, dtype=np.int64)  # (Q, L)
    is_pos = np.zeros((q, k), dtype=bool)
    if pool_size is None:
        relevant_total = problem.excl_count.astype(np.int64)
        n_pool = np.full(q, m, dtype=np.int64)
    else:
        relevant_total = n_pos
        n_pool = n_pos + np.minimum(np.maximum(pool_size - n_pos, 0), n_available)
    for blk, start in enumerate(range(0, q, RNG_BLOCK)):
        stop = min(start + RNG_BLOCK, q)
        rng = np.random.default_rng([*seed_key, blk])
        real = None
        if pool_size is not None:
            draws = sample_pools(rng, n_available[start:stop], pool_size)  # (B, pool_size)
            # The first (pool_size - positives) draws of a row are a uniform subset as well.
            n_draw = np.maximum(pool_size - n_pos[start:stop], 0)[:, None]
            valid = (draws >= 0) & (np.arange(pool_size)[None, :] < n_draw)
            ex_s = problem.excl_start[start:stop, None]
            ex_c = problem.excl_count[start:stop, None]
            members = np.where(valid & (draws >= ex_s), draws + ex_c, draws)  # (B, pool) local
            members = np.concatenate(
                [np.where(valid, members, -1), positives[start:stop]], axis=1
            )  # (B, pool + P)
            rows, cols = np.nonzero(members >= 0)
            real = torch.zeros((stop - start, m), dtype=torch.bool)  # (B, M) pool members
            real[torch.from_numpy(rows), torch.from_numpy(members[rows, cols])] = True
        top, top_real = first_stage_top(
            q_emb[start:stop], c_emb, ex_s_all[start:stop], ex_c_all[start:stop], real, cand_key, k
        )
        row = np.where(top_real.numpy(), top.numpy(), -1)  # (B, L) local ids
        start_b = problem.excl_start[start:stop, None]
        pos = (row >= start_b) & (row < start_b + problem.excl_count[start:stop, None])
        cand_local[start:stop], is_pos[start:stop] = _shuffle_rows(rng, row, pos)
    real_all = cand_local >= 0
    candidates = np.where(real_all, problem.cand_ids[np.maximum(cand_local, 0)], -1)
    return RankedArrays(
        candidates=np.ascontiguousarray(candidates, dtype=np.int64),
        labels=is_pos.astype(np.uint8),
        relevant_total=relevant_total,
        n_available=n_available,
        n_pool=n_pool.astype(np.int64),
    )


def _shuffle_rows(
    rng: np.random.Generator, row: np.ndarray, pos: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Shuffle the real entries of each list (``row`` (B, L) local ids, -1 = padding) and their
    positive flags ``pos`` (B, L) alike; padding sorts to the end. One ``rng.random`` draw of
    ``row``'s shape (part of the output's definition)."""
    keys = rng.random(row.shape)
    keys[row < 0] = 2.0
    perm = np.argsort(keys, axis=1, kind="stable")
    return np.take_along_axis(row, perm, axis=1), np.take_along_axis(pos, perm, axis=1)


def _select_per_group(
    group: np.ndarray, k: int | None, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """Random rank of each item within its group, and whether it is among the k selected.

    Args:
        group: (N,) group id of each item (any order).
        k: items kept per group (all when None).

    Returns:
        rank (N,) int64 in [0, group size), keep (N,) bool (rank < k).
    """
    n = group.shape[0]
    keys = rng.random((n,))  # (N,)
    order = np.lexsort((keys, group))  # by group, then by random key
    g_sorted = group[order]
    first = np.ones(n, dtype=bool)
    first[1:] = g_sorted[1:] != g_sorted[:-1]
    start_of = np.maximum.accumulate(np.where(first, np.arange(n), 0))
    rank = np.empty(n, dtype=np.int64)
    rank[order] = np.arange(n) - start_of
    keep = np.ones(n, dtype=bool) if k is None else rank < k
    return rank, keep


def _unit_rows(x: np.ndarray, ids: np.ndarray) -> np.ndarray:
    """float32 copy of rows ``ids`` of ``x`` with L2-normalised rows (the store's float16 rows are
    only nearly unit). Row chunks of ``_UNIT_CHUNK``: memory is the (N, D) result alone (each
    row's norm and quotient do not depend on the chunking)."""
    out = np.empty((ids.shape[0], x.shape[1]), dtype=np.float32)  # (N, D)
    for s in range(0, ids.shape[0], _UNIT_CHUNK):
        chunk = out[s : s + _UNIT_CHUNK]
        chunk[...] = x[ids[s : s + _UNIT_CHUNK]]  # exact float16 -> float32 conversion
        chunk /= np.maximum(np.linalg.norm(chunk, axis=1, keepdims=True), 1e-12)
    return out


def build_problem(
    direction: str,
    text_image: np.ndarray,
    image_split: np.ndarray,
    split_code: int,
    *,
    t2i_captions_per_image: int | None,
    i2t_positives: int | None,
    rng: np.random.Generator,
    image_emb: np.ndarray | None = None,
    text_emb: np.ndarray | None = None,
) -> tuple[MiningProblem, int]:
    """Build the mining problem of one (direction, split) from the store's index arrays.

    Args:
        direction: "t2i" or "i2t".
        text_image: (N_txt,) int64 image of each caption.
        image_split: (N_img,) uint8 split code of each image.
        split_code: 0 train, 1 val, 2 test.
        t2i_captions_per_image: queries per image in t2i (None = all captions).
        i2t_positives: positives per list in i2t (None = all captions of the image).
        rng: generator for the seeded choice of captions.
        image_emb, text_emb: the store's embeddings (None for the random strategy); only rows of
            this split are read.

    Returns:
        (problem, number of images of the split that made no query because they have no caption).
    """
    img_ids = np.flatnonzero(image_split == split_code).astype(np.int64)  # ascending
    txt_ids = np.flatnonzero(image_split[text_image] == split_code).astype(np.int64)
    txt_img = text_image[txt_ids]
    # Captions grouped by image (then by id): each image's captions are one contiguous block.
    grouped = np.lexsort((txt_ids, txt_img))
    txt_ids, txt_img = txt_ids[grouped], txt_img[grouped]
    groups, g_start, g_count = np.unique(txt_img, return_index=True, return_counts=True)
    skipped = int(img_ids.size - groups.size)
    group_of = np.repeat(np.arange(groups.size), g_count)  # (N_txt_split,)
    with_emb = image_emb is not None and text_emb is not None

    def unit_rows(arr: np.ndarray | None, ids: np.ndarray) -> np.ndarray | None:
        return _unit_rows(arr, ids) if with_emb and arr is not None else None

    if direction == "t2i":
        _, keep = _select_per_group(group_of, t2i_captions_per_image, rng)
        q_local = np.flatnonzero(keep)
        q_local = q_local[np.argsort(txt_ids[q_local], kind="stable")]  # queries by caption id
        query_ids = txt_ids[q_local]
        img_pos = np.searchsorted(img_ids, txt_img[q_local])  # local index of each query's image
        problem = MiningProblem(
            query_ids=query_ids,
            cand_ids=img_ids,
            excl_start=img_pos.astype(np.int64),
            excl_count=np.ones(query_ids.size, dtype=np.int64),
            positives=img_pos.astype(np.int64)[:, None],
            query_emb=unit_rows(text_emb, query_ids),
            cand_emb=unit_rows(image_emb, img_ids),
        )
    elif direction == "i2t":
        rank, keep = _select_per_group(group_of, i2t_positives, rng)
        n_pos = int(g_count.max()) if i2t_positives is None else i2t_positives
        n_pos = min(n_pos, int(g_count.max())) if groups.size else 1
        positives = np.full((groups.size, n_pos), -1, dtype=np.int64)
        sel = np.flatnonzero(keep)
        positives[group_of[sel], rank[sel]] = sel  # ranks 0..k-1: real entries come first
        problem = MiningProblem(
            query_ids=groups.astype(np.int64),
            cand_ids=txt_ids,
            excl_start=g_start.astype(np.int64),
            excl_count=g_count.astype(np.int64),
            positives=positives,
            query_emb=unit_rows(image_emb, groups),
            cand_emb=unit_rows(text_emb, txt_ids),
        )
    else:
        raise ListsError(f"direction: must be one of {DIRECTIONS}, got {direction!r}")
    return problem, skipped


# --------------------------------------------------------------------------------------------
# Validation (used after mining and by load_lists)
# --------------------------------------------------------------------------------------------


def check_lists(
    lists: CandidateLists,
    *,
    where: str,
    text_image: np.ndarray | None = None,
    image_split: np.ndarray | None = None,
) -> None:
    """Check every invariant of one lists file; raise :class:`ListsError` naming ``where``.

    Rules: array shapes agree; dtypes; labels in {0, 1}; candidate ids >= -1 and padding (-1) only
    with label 0; no duplicate candidate within a list; at least one positive per list (with
    ``relevant_total``: per training list; a val/test list may hold none, a miss); no duplicate
    query; ``relevant_total`` (when present) (Q,) integer, >= 1 and >= the list's positives. With
    the store's ``text_image`` and ``image_split``: query and candidate ids in range; every query
    and candidate in the file's split; label 1 iff the candidate is relevant; ``relevant_total``
    at most the query's relevant items in the split.
    """
    qs, cands, labels = lists.queries, lists.candidates, lists.labels
    total = lists.relevant_total

    def fail(rule: str) -> None:
        raise ListsError(f"{where}: {rule}")

    if qs.ndim != 1:
        fail(f"queries must be 1-d (Q,), got shape {qs.shape}")
    if cands.ndim != 2 or cands.shape[0] != qs.shape[0]:
        fail(f"candidates must be (Q, L) with Q={qs.shape[0]}, got shape {cands.shape}")
    if labels.shape != cands.shape:
        fail(f"labels shape {labels.shape} must equal candidates shape {cands.shape}")
    for name, arr, kinds in (
        ("queries", qs, "iu"),
        ("candidates", cands, "i"),
        ("labels", labels, "iub"),
    ):
        if arr.dtype.kind not in kinds:
            fail(f"{name} must be integer, got dtype {arr.dtype}")
    if qs.size and qs.min() < 0:
        fail("queries: ids must be >= 0")
    if labels.size and not np.isin(labels, (0, 1)).all():
        fail("labels must be in {0, 1}")
    pad = cands < 0
    if cands.size and cands.min() < -1:
        fail("candidates: ids must be >= 0, or -1 for padding")
    if (labels[pad] != 0).any():
        fail("padding (candidate -1) must have label 0")
    if cands.shape[1] > 1:
        srt = np.sort(np.where(pad, -1 - np.arange(cands.shape[1])[None, :], cands), axis=1)
        if (srt[:, 1:] == srt[:, :-1]).any():
            bad = int(np.flatnonzero((srt[:, 1:] == srt[:, :-1]).any(axis=1))[0])
            fail(f"list {bad} (query {int(qs[bad])}) has a duplicate candidate")
    if total is not None:
        if total.shape != qs.shape or total.dtype.kind not in "iu":
            fail(f"relevant_total must be integer (Q,), got {total.dtype} {total.shape}")
        if total.size and total.min() < 1:
            fail("relevant_total: every query needs at least one relevant item")
        if (labels.astype(np.int64).sum(axis=1) > total).any():
            fail("relevant_total: a list holds more positives than its relevant_total")
    if (
        qs.size
        and not (labels.astype(bool).any(axis=1)).all()
        and (total is None or lists.split == "train")
    ):
        bad = int(np.flatnonzero(~labels.astype(bool).any(axis=1))[0])
        why = "" if total is None else " (training lists without a retrieved positive are dropped)"
        fail(
            f"every list needs at least one positive{why}; list {bad} (query {int(qs[bad])}) "
            "has none"
        )
    if np.unique(qs).size != qs.size:
        fail("queries must be distinct")
    if text_image is None or image_split is None:
        return
    n_img, n_txt = image_split.shape[0], text_image.shape[0]
    n_q, n_c = (n_txt, n_img) if lists.direction == "t2i" else (n_img, n_txt)
    if qs.size and qs.max() >= n_q:
        fail(f"queries: id {int(qs.max())} out of range for the store ({n_q})")
    if cands.size and cands.max() >= n_c:
        fail(f"candidates: id {int(cands.max())} out of range for the store ({n_c})")
    code = SPLIT_CODES[lists.split]
    safe = np.maximum(cands, 0)
    if lists.direction == "t2i":
        q_split, c_split = image_split[text_image[qs]], image_split[safe]
        relevant = text_image[qs][:, None] == cands
    else:
        q_split, c_split = image_split[qs], image_split[text_image[safe]]
        relevant = text_image[safe] == qs[:, None]
    if (q_split != code).any():
        fail(f"a query is not from split {lists.split!r} (rule: each split is mined within itself)")
    if (c_split[~pad] != code).any():
        fail(
            f"a candidate is not from split {lists.split!r} (rule: each split is mined within itself)"
        )
    relevant &= ~pad
    if total is not None and total.size:
        in_split = (
            np.ones(qs.shape, dtype=np.int64)
            if lists.direction == "t2i"
            else np.bincount(text_image, minlength=n_img)[qs]
        )
        if (total > in_split).any():
            r = int(np.flatnonzero(total > in_split)[0])
            fail(
                f"list {r} (query {int(qs[r])}): relevant_total {int(total[r])} exceeds the "
                f"query's relevant items in the split ({int(in_split[r])})"
            )
    if (relevant != labels.astype(bool)).any():
        r, c = (int(v[0]) for v in np.nonzero(relevant != labels.astype(bool)))
        fail(
            f"list {r} (query {int(qs[r])}), candidate {int(cands[r, c])}: label {int(labels[r, c])} "
            f"disagrees with text_image relevance ({int(relevant[r, c])}); a relevant item "
            "(e.g. a sibling caption) must never be labelled 0"
        )


# --------------------------------------------------------------------------------------------
# Store-level API
# --------------------------------------------------------------------------------------------


def _parse_count(name: str, value: int | str) -> int | None:
    if value == "all":
        return None
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ListsError(f"{name}: must be an int >= 1 or 'all', got {value!r}")
    return int(value)


def _stats(
    mined: MinedArrays,
    labels: np.ndarray,
    *,
    pool: int,
    hard: int,
    skipped: int,
    positives_added: np.ndarray,
) -> dict[str, Any]:
    n_pos = labels.sum(axis=1).astype(np.int64) if labels.size else np.zeros(0, np.int64)
    real = (mined.candidates >= 0).sum(axis=1) if mined.candidates.size else np.zeros(0, np.int64)
    q = int(labels.shape[0])

    def mmm(x: np.ndarray) -> dict[str, float]:
        if x.size == 0:
            return {"min": 0, "mean": 0.0, "max": 0}
        return {"min": int(x.min()), "mean": round(float(x.mean()), 4), "max": int(x.max())}

    return {
        "num_lists": q,
        "list_length": int(labels.shape[1]),
        "positives_per_list": mmm(n_pos),
        "lists_with_multiple_positives": int((n_pos > 1).sum()),
        # Positives beyond those deliberately added: 0 by construction, since every relevant item
        # is excluded from the pool (checked here and by check_lists).
        "lists_with_extra_positives": int((n_pos > positives_added).sum()),
        "negatives_per_list": mmm(real - n_pos),
        "negatives_available": mmm(mined.n_available),
        "short_pools": int((mined.n_available < pool).sum()),
        "short_lists": int((real - n_pos < hard).sum()),
        "padded_lists": int((real < labels.shape[1]).sum()),
        "queries_skipped_no_caption": skipped,
    }


def _write_npz(path: Path, arrays: dict[str, np.ndarray]) -> None:
    """np.savez-compatible file with fixed zip timestamps (byte-identical for identical arrays)."""
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_STORED, allowZip64=True) as zf:
        for name, arr in arrays.items():
            info = zipfile.ZipInfo(f"{name}.npy", date_time=(1980, 1, 1, 0, 0, 0))
            with zf.open(info, "w", force_zip64=True) as fh:
                np.lib.format.write_array(fh, np.ascontiguousarray(arr), allow_pickle=False)


def mine_lists(
    store: FeatureStore,
    out_dir: str | Path,
    *,
    pool: int = MINING_DEFAULTS["pool"],
    hard: int = MINING_DEFAULTS["hard"],
    t2i_captions_per_image: int | Literal["all"] = MINING_DEFAULTS["t2i_captions_per_image"],
    i2t_positives: int | Literal["all"] = MINING_DEFAULTS["i2t_positives"],
    seed: int = MINING_DEFAULTS["seed"],
    strategy: str = MINING_DEFAULTS["strategy"],
    list_size: int = MINING_DEFAULTS["list_size"],
    pool_size: int | str = MINING_DEFAULTS["pool_size"],
    splits: Sequence[str] = ("train", "val", "test"),
    overwrite: bool = False,
    verbose: bool = False,
) -> Path:
    """Mine candidate lists for both directions and the given splits of ``store``.

    Each split is mined only within itself. See the module docstring for the procedure, the
    documented choices and the output format.

    Args:
        store: an opened :class:`xmr.data.store.FeatureStore`.
        out_dir: the lists directory to create (written atomically via a temporary sibling).
        pool: random candidates drawn per query (all available when fewer exist); ``hard`` and
            ``random`` only.
        hard: negatives kept per list (1 <= hard <= pool); ``hard`` and ``random`` only.
        t2i_captions_per_image: t2i queries per image (int, seeded-random captions) or "all".
        i2t_positives: positives per i2t list (int, seeded-random captions) or "all".
        seed: the seed; the output is a deterministic function of it.
        strategy: "hard" (top cosine; needs ``store.joint_space``), "random", "first_stage" or
            "pool" (first-stage lists; need ``store.joint_space``; module docstring).
        list_size: candidates per list of ``first_stage`` and ``pool`` (>= 1; default 51, the
            paper's length); not used by ``hard`` and ``random``.
        pool_size: the pool of ``pool``: an int >= 1 or "test_gallery" (the number of test
            images for t2i, of test captions for i2t); not used by the other strategies.
        splits: which splits to mine.
        overwrite: replace an existing lists directory (only one holding ``lists.json``).
        verbose: print one timing line per file.

    Returns:
        The lists directory.

    Raises:
        ListsError: bad parameters, or a cosine strategy (``hard``, ``first_stage``, ``pool``) on
            a store that is not a joint space.
        FileExistsError: ``out_dir`` exists and ``overwrite`` is False.
    """
    out_dir = Path(out_dir).resolve()
    opts = _checked_options(
        store,
        pool=pool,
        hard=hard,
        t2i_captions_per_image=t2i_captions_per_image,
        i2t_positives=i2t_positives,
        seed=seed,
        strategy=strategy,
        list_size=list_size,
        pool_size=pool_size,
    )
    splits = tuple(splits)
    if not splits or len(set(splits)) != len(splits) or not set(splits) <= set(SPLIT_CODES):
        raise ListsError(f"splits: must be distinct names from {tuple(SPLIT_CODES)}, got {splits}")
    # One miner per lists directory: a second `xmr mine` into it waits here (its work dir
    # would be this one's), then finds the lists published (or mines them if this one failed).
    with DirLock(out_dir, what="mining candidate lists"):
        if out_dir.exists():
            if not overwrite:
                raise FileExistsError(f"{out_dir}: lists directory exists (pass overwrite=True)")
            if not out_dir.is_dir() or not (
                (out_dir / "lists.json").is_file() or not any(out_dir.iterdir())
            ):
                raise FileExistsError(
                    f"{out_dir}: refusing to overwrite something that is not a lists directory "
                    "(no lists.json)"
                )

        text_image = np.asarray(store.text_image, dtype=np.int64)
        image_split = np.asarray(store.image_split)
        params: dict[str, Any] = {
            "pool": int(pool),
            "hard": int(hard),
            "t2i_captions_per_image": t2i_captions_per_image,
            "i2t_positives": i2t_positives,
            "strategy": strategy,
            "splits": list(splits),
            "directions": list(DIRECTIONS),
            "rng_block": RNG_BLOCK,
        }
        pools: dict[str, int | None] = dict.fromkeys(DIRECTIONS)  # the pool strategy's pool
        if opts.ranked:
            # Only the first-stage strategies record these, so hard/random lists.json stay as they are.
            params["list_size"] = int(list_size)
            if strategy == "pool":
                params["pool_size"] = pool_size if pool_size == TEST_GALLERY else int(pool_size)
                pools = {d: _resolve_pool_size(store, d, pool_size) for d in DIRECTIONS}
                params["pool_size_resolved"] = dict(pools)
        out_dir.parent.mkdir(parents=True, exist_ok=True)
        fingerprint = store.fingerprint()
        key = {
            "store": str(Path(store.root).resolve()),
            "store_fingerprint": fingerprint,
            "params": params,
            "seed": int(seed),
        }
        # The work directory: resumable, each finished file stays there until the whole directory
        # is published, so a run started again after a kill with the same key mines only what is
        # missing; a work directory of another key is discarded.
        tmp = resume_work_dir(out_dir.parent / f".{out_dir.name}.partial", key, fmt=_PARTIAL_FORMAT)
        try:
            stats: dict[str, Any] = {}
            for split in splits:
                for direction in DIRECTIONS:
                    t0 = time.perf_counter()
                    name = lists_filename(direction, split)
                    done = _finished_file(tmp, name, text_image, image_split)
                    if done is not None:  # resumed: mined by an interrupted earlier run
                        stats[name.removesuffix(".npz")] = done
                        if verbose:
                            print(f"kept {name} from an interrupted run")
                        continue
                    lists, s = _mine_file(
                        store,
                        opts,
                        direction,
                        split,
                        pool_size=pools[direction],
                        text_image=text_image,
                        image_split=image_split,
                    )
                    stats[name.removesuffix(".npz")] = s
                    _publish_file(tmp, name, lists, s)
                    if verbose:
                        print(
                            f"mined {name}: {s['num_lists']} lists x {s['list_length']} "
                            f"in {time.perf_counter() - t0:.2f}s"
                        )
            meta = {
                "format": LISTS_FORMAT,
                "store": str(Path(store.root).resolve()),
                "store_fingerprint": fingerprint,
                "params": params,
                "seed": int(seed),
                "stats": stats,
                # The leakage probe of the files (xmr.data.probe); warns when a file leaks.
                "probe": probe_paths(
                    store,
                    {(d, sp): tmp / lists_filename(d, sp) for sp in splits for d in DIRECTIONS},
                ),
            }
            warn_short_pools(meta)
            (tmp / "lists.json").write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")
            published = [lists_filename(d, split) for split in splits for d in DIRECTIONS]
            publish_dir(tmp, out_dir, replace=True, keep=[*published, "lists.json"])
        except Exception:
            # An error would recur: leave nothing. An interruption (Ctrl-C, SIGKILL) keeps the
            # finished files in the partial directory for the next run with the same key.
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    return out_dir


@dataclass(frozen=True)
class _Options:
    """Mining options checked by :func:`_checked_options` (counts parsed: None = "all")."""

    strategy: str
    pool: int
    hard: int
    k_t2i: int | None
    k_i2t: int | None
    seed: int
    list_size: int
    pool_size: int | str

    @property
    def ranked(self) -> bool:
        return self.strategy in RANKED_STRATEGIES


def _checked_options(
    store: FeatureStore,
    *,
    pool: int,
    hard: int,
    t2i_captions_per_image: int | Literal["all"],
    i2t_positives: int | Literal["all"],
    seed: int,
    strategy: str,
    list_size: int,
    pool_size: int | str,
) -> _Options:
    """The options of :func:`mine_lists` checked (a :class:`ListsError` naming the option and the
    rule), and that ``store`` can be mined with ``strategy`` (a joint space for cosine)."""
    if strategy not in STRATEGIES:
        raise ListsError(f"strategy: must be one of {STRATEGIES}, got {strategy!r}")
    for name, v in (("pool", pool), ("hard", hard), ("seed", seed)):
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)):
            raise ListsError(f"{name}: must be an int, got {v!r}")
    if seed < 0:
        raise ListsError(f"seed: must be >= 0, got {seed}")
    if not 1 <= hard <= pool:
        raise ListsError(f"hard/pool: need 1 <= hard <= pool, got hard={hard}, pool={pool}")
    if strategy in RANKED_STRATEGIES:
        if isinstance(list_size, bool) or not isinstance(list_size, (int, np.integer)):
            raise ListsError(f"list_size: must be an int >= 1, got {list_size!r}")
        if list_size < 1:
            raise ListsError(f"list_size: must be >= 1, got {list_size}")
        if pool_size != TEST_GALLERY and (
            isinstance(pool_size, bool)
            or not isinstance(pool_size, (int, np.integer))
            or pool_size < 1
        ):
            raise ListsError(
                f"pool_size: must be an int >= 1 or {TEST_GALLERY!r}, got {pool_size!r}"
            )
    k_t2i = _parse_count("t2i_captions_per_image", t2i_captions_per_image)
    k_i2t = _parse_count("i2t_positives", i2t_positives)
    if strategy in ("hard", *RANKED_STRATEGIES):
        if not store.joint_space:
            what = (
                "hard negatives cannot be mined"
                if strategy == "hard"
                else f"there is no first stage for strategy={strategy!r}"
            )
            raise ListsError(
                f"{store.root}/manifest.json: joint_space is false, so image-text cosine is "
                f"meaningless and {what}; use strategy='random'"
            )
        if store.image_dim != store.text_dim:
            raise ListsError(
                f"{store.root}/manifest.json: image_dim {store.image_dim} != text_dim "
                f"{store.text_dim}; cosine needs one joint space"
            )
    ranked_size = int(list_size) if strategy in RANKED_STRATEGIES else list_size  # else unused
    return _Options(strategy, int(pool), int(hard), k_t2i, k_i2t, int(seed), ranked_size, pool_size)


def _mine_file(
    store: FeatureStore,
    opts: _Options,
    direction: str,
    split: str,
    *,
    pool_size: int | None,
    text_image: np.ndarray,
    image_split: np.ndarray,
    draw: Sequence[int] = (),
) -> tuple[CandidateLists, dict[str, Any]]:
    """Mine one (direction, split) file and check it (:func:`check_lists`); its lists and stats.

    The queries (and i2t positives) are drawn from ``[seed, direction, split, _STAGE_SELECT]``;
    the pools and shuffles from ``[seed, direction, split, _STAGE_POOL, *draw, block]``: ``draw``
    is empty for the file :func:`mine_lists` writes and ``(epoch,)`` for a re-draw
    (:func:`redraw_train_lists`), which keeps the queries and draws other pools.
    ``pool_size``: the resolved pool of ``pool``, None for the other strategies.
    """
    code, dcode = SPLIT_CODES[split], _DIRECTION_CODES[direction]
    name = lists_filename(direction, split)
    use_emb = opts.strategy != "random"
    problem, skipped = build_problem(
        direction,
        text_image,
        image_split,
        code,
        t2i_captions_per_image=opts.k_t2i,
        i2t_positives=opts.k_i2t,
        rng=np.random.default_rng([opts.seed, dcode, code, _STAGE_SELECT]),
        image_emb=store.image_emb if use_emb else None,
        text_emb=store.text_emb if use_emb else None,
    )
    seed_key = (opts.seed, dcode, code, _STAGE_POOL, *draw)
    if opts.ranked:
        lists, s = _mine_ranked_file(
            problem,
            direction,
            split,
            list_size=opts.list_size,
            pool_size=pool_size,
            seed_key=seed_key,
            skipped=skipped,
        )
    else:
        mined = mine_arrays(
            problem, pool=opts.pool, hard=opts.hard, strategy=opts.strategy, seed_key=seed_key
        )
        lists = CandidateLists(problem.query_ids, mined.candidates, mined.labels, direction, split)
        added = (problem.positives >= 0).sum(axis=1)
        s = _stats(
            mined,
            mined.labels,
            pool=opts.pool,
            hard=opts.hard,
            skipped=skipped,
            positives_added=added,
        )
        if s["lists_with_extra_positives"]:  # pragma: no cover - internal bug
            raise AssertionError(f"{name}: a relevant item entered through the pool")
    # Data hygiene, checked on every mined file (independently of the miner's logic).
    check_lists(lists, where=f"{name} (just mined)", text_image=text_image, image_split=image_split)
    return lists, s


#: Strategies whose training lists :func:`redraw_train_lists` draws anew every epoch.
REDRAWN_STRATEGIES: tuple[str, ...] = ("pool",)


def check_redrawable(strategy: str) -> None:
    """Raise :class:`ListsError` (naming ``data.mining.strategy``) unless the training lists of
    ``strategy`` can be re-drawn every epoch (``data.redraw_train_lists``)."""
    if strategy not in REDRAWN_STRATEGIES:
        raise ListsError(
            f"data.redraw_train_lists=true needs data.mining.strategy=pool, got {strategy!r}: "
            "only pool lists are re-drawn (a new random pool per query and epoch); first_stage "
            "lists hold no randomness, and hard/random lists are mined once"
        )


def redraw_train_lists(
    store: FeatureStore, direction: str, mining: Mapping[str, Any], epoch: int
) -> CandidateLists:
    """The training lists of ``direction`` drawn anew for ``epoch`` (strategy ``pool`` only).

    Exactly what :func:`mine_lists` does for the file ``<direction>_train.npz`` with the options
    ``mining`` (its keyword options; missing ones take :data:`MINING_DEFAULTS`): the same queries
    and positives, each list the top ``list_size`` of a random pool holding them, a list whose
    positive misses the top dropped; only the pools (and the shuffles) are drawn from a stream
    that also depends on ``epoch``. Epoch 0 is the mined file itself (same arrays, bit for bit);
    every epoch's lists are a function of the store, ``mining`` and ``epoch`` alone, so a resumed
    run draws the lists an uninterrupted one does. Checked like a mined file (:func:`check_lists`).

    Raises:
        ListsError: a strategy other than ``pool`` (:func:`check_redrawable`), an unknown or bad
            option, a bad direction or epoch.
    """
    unknown = sorted(set(mining) - set(MINING_DEFAULTS))
    if unknown:
        raise ListsError(f"mining: unknown options {unknown} (known: {sorted(MINING_DEFAULTS)})")
    if direction not in DIRECTIONS:
        raise ListsError(f"direction: must be one of {DIRECTIONS}, got {direction!r}")
    if isinstance(epoch, bool) or not isinstance(epoch, (int, np.integer)) or epoch < 0:
        raise ListsError(f"epoch: must be an int >= 0, got {epoch!r}")
    options = {**MINING_DEFAULTS, **mining}
    check_redrawable(options["strategy"])
    opts = _checked_options(store, **options)
    lists, _ = _mine_file(
        store,
        opts,
        direction,
        "train",
        pool_size=_resolve_pool_size(store, direction, opts.pool_size),
        text_image=np.asarray(store.text_image, dtype=np.int64),
        image_split=np.asarray(store.image_split),
        draw=() if epoch == 0 else (int(epoch),),
    )
    return lists


def mined_options(meta: Mapping[str, Any]) -> dict[str, Any]:
    """The :func:`mine_lists` options a lists directory was mined with, from its ``lists.json``
    (:func:`read_lists_meta`); what :func:`redraw_train_lists` takes."""
    params = meta["params"]
    return {**{k: params[k] for k in MINING_DEFAULTS if k in params}, "seed": int(meta["seed"])}


def _publish_file(tmp: Path, name: str, lists: CandidateLists, stats: dict[str, Any]) -> None:
    """Write one finished file and then its stats file (the mark that it is finished)."""
    arrays = {"queries": lists.queries, "candidates": lists.candidates, "labels": lists.labels}
    if lists.relevant_total is not None:
        arrays["relevant_total"] = lists.relevant_total
    atomic_write(tmp / name, lambda path: _write_npz(path, arrays))
    atomic_write_text(tmp / f"{name}{_STATS_SUFFIX}", json.dumps(stats, indent=1) + "\n")


def _resolve_pool_size(store: FeatureStore, direction: str, pool_size: int | str) -> int:
    """``pool_size`` as an int: ``"test_gallery"`` is the test split's gallery of ``direction``
    (t2i: its images; i2t: its captions)."""
    if pool_size != TEST_GALLERY:
        return int(pool_size)
    n = len(store.split_image_ids("test") if direction == "t2i" else store.split_text_ids("test"))
    if n < 1:
        raise ListsError(
            f"pool_size={TEST_GALLERY!r}: {store.root} has an empty test split, so there is no "
            "test gallery to size the pools after; give pool_size as an int"
        )
    return n


def _mine_ranked_file(
    problem: MiningProblem,
    direction: str,
    split: str,
    *,
    list_size: int,
    pool_size: int | None,
    seed_key: Sequence[int],
    skipped: int,
) -> tuple[CandidateLists, dict[str, Any]]:
    """One file of a first-stage strategy: mine, drop the training lists without a retrieved
    positive (val/test keep them: misses), trim padding; the file's lists and stats."""
    mined = mine_ranked(problem, list_size=list_size, pool_size=pool_size, seed_key=seed_key)
    retrieved = mined.labels.astype(bool).any(axis=1)  # (Q,)
    keep = retrieved if split == "train" else np.ones_like(retrieved)
    cands, labels = mined.candidates[keep], mined.labels[keep]
    real = cands >= 0
    n_real = real.sum(axis=1)
    length = int(n_real.max()) if n_real.size else mined.candidates.shape[1]
    lists = CandidateLists(
        np.ascontiguousarray(problem.query_ids[keep]),
        np.ascontiguousarray(cands[:, :length]),
        np.ascontiguousarray(labels[:, :length]),
        direction,
        split,
        relevant_total=np.ascontiguousarray(mined.relevant_total[keep]),
    )
    n_pos = labels.sum(axis=1).astype(np.int64)
    gallery = int(problem.cand_ids.shape[0])  # the split's items of the other modality
    stats = {
        "num_lists": int(keep.sum()),
        "list_length": int(length),
        "queries": int(retrieved.size),
        # First-stage recall@list_size: queries whose list holds a relevant item.
        "coverage": round(float(retrieved.mean()), 4) if retrieved.size else 0.0,
        "lists_dropped_no_positive": int((~retrieved).sum()) if split == "train" else 0,
        "lists_without_positive": 0 if split == "train" else int((~retrieved).sum()),
        "positives_per_list": _mmm(n_pos),
        "lists_with_multiple_positives": int((n_pos > 1).sum()),
        "relevant_total": _mmm(lists.relevant_total),
        "negatives_per_list": _mmm(n_real - n_pos),
        "pool_size": pool_size,
        "gallery_size": gallery,
        "ranked_set": _mmm(mined.n_pool),
        # Pools larger than the split's gallery: the whole gallery is the pool.
        "short_pools": 0 if pool_size is None or gallery >= pool_size else int(retrieved.size),
        "padded_lists": int((n_real < length).sum()),
        "queries_skipped_no_caption": skipped,
    }
    return lists, stats


def _mmm(x: np.ndarray) -> dict[str, float]:
    if x.size == 0:
        return {"min": 0, "mean": 0.0, "max": 0}
    return {"min": int(x.min()), "mean": round(float(x.mean()), 4), "max": int(x.max())}


def _finished_file(
    tmp: Path, name: str, text_image: np.ndarray, image_split: np.ndarray
) -> dict[str, Any] | None:
    """The stats of ``name`` if an earlier run finished it in ``tmp`` (re-checked), else None."""
    path, stats_path = tmp / name, tmp / f"{name}{_STATS_SUFFIX}"
    if not (path.is_file() and stats_path.is_file()):
        return None
    direction, split = name.removesuffix(".npz").split("_")
    try:
        stats = json.loads(stats_path.read_text(encoding="utf-8"))
        with np.load(path, allow_pickle=False) as z:
            lists = CandidateLists(
                z["queries"],
                z["candidates"],
                z["labels"],
                direction,
                split,
                relevant_total=z["relevant_total"] if "relevant_total" in z.files else None,
            )
        check_lists(lists, where=str(path), text_image=text_image, image_split=image_split)
    except (OSError, ValueError, KeyError, zipfile.BadZipFile):
        return None  # damaged: mine it again
    return stats if isinstance(stats, dict) else None


def short_pool_warnings(meta: dict[str, Any]) -> list[str]:
    """One message per file of a lists directory (``lists.json`` contents) whose pools were
    short: the split held fewer candidates than the pool asked for, so those queries drew from all
    there was (``stats.short_pools``)."""
    params = meta.get("params", {})
    strategy = params.get("strategy")
    out = []
    for name, s in meta.get("stats", {}).items():
        n = int(s.get("short_pools") or 0)
        if n <= 0:
            continue
        queries = s.get("queries", s.get("num_lists"))
        if strategy == "pool":
            have = f"the split's gallery holds {s.get('gallery_size', '?')} items"
            asked = f"pool_size={s.get('pool_size')}"
        else:
            most = (s.get("negatives_available") or {}).get("max", "?")
            have = f"the split has at most {most} negatives per query"
            asked = f"pool={params.get('pool')}"
        out.append(
            f"{name}.npz: {n} of {queries} pools short: {asked} but {have}, so those queries "
            "drew from all of them (lists.json stats.short_pools)"
        )
    return out


def warn_short_pools(meta: dict[str, Any]) -> None:
    """Log :func:`short_pool_warnings` as warnings."""
    for message in short_pool_warnings(meta):
        log.warning("%s", message)


def lists_summary(meta: dict[str, Any], lists_dir: str | Path) -> list[str]:
    """A few lines on a lists directory for ``xmr mine``: where it is and how it was mined, then
    one line per file (lists, length; coverage for the first-stage strategies; short pools). The
    full statistics stay in ``lists.json`` (``stats``)."""
    params = meta.get("params", {})
    strategy = params.get("strategy")
    if strategy in RANKED_STRATEGIES:
        how = f"list_size {params.get('list_size')}"
        if strategy == "pool":
            how += f", pool_size {params.get('pool_size')}"
    else:
        how = f"pool {params.get('pool')}, hard {params.get('hard')}"
    lines = [
        f"lists: {Path(lists_dir)} ({strategy}: {how}, seed {meta.get('seed')}; "
        "full statistics in lists.json)"
    ]
    stats = meta.get("stats", {})
    width = max((len(n) for n in stats), default=0)
    for name, s in stats.items():
        parts = [f"{s.get('num_lists')} lists x {s.get('list_length')}"]
        if "coverage" in s:
            parts.append(f"coverage {100.0 * float(s['coverage']):.1f}%")
        if s.get("short_pools"):
            parts.append(f"{s['short_pools']} short pools")
        lines.append(f"  {name:<{width}}  " + ", ".join(parts))
    return lines


def misses_line(meta: dict[str, Any]) -> str | None:
    """One line on the lists without a retrieved positive of a first-stage lists directory
    (``lists.json`` contents): training lists dropped, val/test lists kept as misses; None for
    the other strategies."""
    stats = meta.get("stats", {})
    if meta.get("params", {}).get("strategy") not in RANKED_STRATEGIES:
        return None

    def counts(key: str, train: bool) -> str:
        found = [f"{n} {s[key]}" for n, s in stats.items() if n.endswith("_train") == train]
        return ", ".join(found) or "none mined"

    return (
        f"positive not retrieved in the top {meta['params'].get('list_size')}: training lists "
        f"dropped: {counts('lists_dropped_no_positive', True)}; val/test lists kept as misses: "
        f"{counts('lists_without_positive', False)}"
    )


def read_lists_meta(lists_dir: str | Path) -> dict[str, Any]:
    """Read and check ``lists.json`` (the completion marker) of a lists directory."""
    path = Path(lists_dir) / "lists.json"
    if not path.is_file():
        raise ListsError(f"{path}: missing (an incomplete or foreign lists directory)")
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise ListsError(f"{path}: not valid JSON ({e})") from e
    if not isinstance(meta, dict) or meta.get("format") != LISTS_FORMAT:
        got = meta.get("format") if isinstance(meta, dict) else None
        raise ListsError(f"{path}: format must be {LISTS_FORMAT!r}, got {got!r}")
    for key in ("store_fingerprint", "params", "seed", "stats"):
        if key not in meta:
            raise ListsError(f"{path}: missing field {key!r}")
    return meta


def load_lists(
    lists_dir: str | Path,
    direction: str,
    split: str,
    store: FeatureStore | None = None,
) -> CandidateLists:
    """Load and validate one (direction, split) file of a lists directory.

    Validates (each violation a :class:`ListsError` naming the file and the rule): ``lists.json``
    present with format ``xmr-lists/1``; the file present with arrays ``queries``, ``candidates``,
    ``labels`` of agreeing shapes; all rules of :func:`check_lists`; with ``store``: its
    fingerprint equals ``lists.json``'s ``store_fingerprint``, ids in range, split membership and
    labels equal to ``text_image`` relevance.
    """
    if direction not in DIRECTIONS:
        raise ListsError(f"direction: must be one of {DIRECTIONS}, got {direction!r}")
    if split not in SPLIT_CODES:
        raise ListsError(f"split: must be one of {tuple(SPLIT_CODES)}, got {split!r}")
    lists_dir = Path(lists_dir)
    meta = read_lists_meta(lists_dir)
    path = lists_dir / lists_filename(direction, split)
    if not path.is_file():
        raise ListsError(f"{path}: missing (mined splits: {meta['params'].get('splits')})")
    if store is not None:
        fp = store.fingerprint()
        if meta["store_fingerprint"] != fp:
            raise ListsError(
                f"{lists_dir / 'lists.json'}: store_fingerprint {meta['store_fingerprint']!r} does "
                f"not match the store {store.root} ({fp!r}); the lists were mined from another store"
            )
    try:
        with np.load(path, allow_pickle=False) as z:
            missing = {"queries", "candidates", "labels"} - set(z.files)
            if missing:
                raise ListsError(f"{path}: missing arrays {sorted(missing)}")
            lists = CandidateLists(
                queries=z["queries"],
                candidates=z["candidates"],
                labels=z["labels"],
                direction=direction,
                split=split,
                relevant_total=z["relevant_total"] if "relevant_total" in z.files else None,
            )
    except (OSError, ValueError, zipfile.BadZipFile) as e:
        if isinstance(e, ListsError):
            raise
        raise ListsError(f"{path}: unreadable npz ({e})") from e
    check_lists(
        lists,
        where=str(path),
        text_image=None if store is None else np.asarray(store.text_image, dtype=np.int64),
        image_split=None if store is None else np.asarray(store.image_split),
    )
    return lists
