"""The leakage probe of candidate lists: can the first-stage score alone find the positive?

Lists are honest when the positive is chosen by the same rule as the negatives. The paper's
``hard`` lists are not: the negatives are the ``hard`` pool members of highest cosine, the
positive is appended whatever its cosine, so "least similar = positive" is a rule a ranker can
learn without looking at the content. The probe measures this per (direction, split) file with
scorers that know nothing of the relevance:

- **anti-cosine**: ranks each list by *minus* the first-stage score, the cosine of the store's
  embeddings (rows L2-normalised in float32, as the miner computes it). Only for a
  ``joint_space: true`` store; else ``null`` ("not applicable").
- **chance** (random order, analytic): a list with L real candidates and P positives has a hit
  in its first K with probability ``1 - C(L - P, K) / C(L, K)`` (1 when ``K > L - P``).
- **positive rank**: the first-stage (cosine, descending) rank of each list's best-ranked
  positive, 1-based; its median, 10th and 90th percentiles (numpy's linear interpolation) and
  mean. A positive that the cosine ranks last in a list of 51 has rank 51.

Recall@K is the ``hit`` definition (a relevant item among the first K), ranked with
:func:`xmr.metrics.ranking.pessimistic_order` (ties against the positive, NaN last, padding
never ranked), as every metric of xmr. Lists without a positive are excluded (counted as
``lists_without_positive``), as the metrics exclude them. All values are fractions in [0, 1].

**The warning rule** (:data:`PROBE_RULE`): a file *leaks* when the anti-cosine's in-list R@1
hits, ``S`` out of ``n`` lists, are both

1. significant: ``P(Bin(n, c) >= S) < 1e-3`` with ``c`` the mean analytic chance R@1 (a
   one-sided binomial test). Under honest lists each list's hit is Bernoulli(P_i / L_i); the sum
   of such independent Bernoullis is no more spread out than ``Bin(n, c)`` and its upper tail
   beyond ``n c + 1`` is at most the binomial's (Hoeffding 1956), so the p-value is conservative.
   ``1e-3`` keeps false alarms rare over the six files of a lists directory and over many
   directories (at most about 0.6% of honest directories get a flag by chance); and
2. large: ``S / n >= 2 c``, anti-cosine R@1 at least twice chance. At paper scale (tens of
   thousands of lists) a tiny, harmless excess is already significant; the flag should mean an
   artefact a ranker can exploit, and doubling the chance R@1 from the first-stage score alone
   is one. (2x also implies ``S >= n c + 1`` whenever ``n c >= 1``, where the test is valid.)

Anti-cosine far *below* chance is the normal case on real features (the positive tends to be
similar to its query); it is no leak. A file without a list with a positive has ``null`` recall
and p-value and never leaks.

The entry recorded as ``lists.json["probe"]`` (see :func:`probe_files`)::

    {"rule": str, "files": {"<direction>_<split>": {
        "lists": int, "lists_without_positive": int, "mean_list_size": float,
        "anti_cosine": {"recall@1": f, "recall@5": f, "recall@10": f} | null,
        "chance": {"recall@1": f, "recall@5": f, "recall@10": f},
        "positive_rank": {"median": f, "p10": f, "p90": f, "mean": f},
        "leak": bool, "p_value": f | null}}}

``positive_rank`` needs the cosine too: it holds nulls on a store that is not a joint space.
A lists directory on disk is probed with :func:`xmr.data.lists_probe.probe_lists`.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
from torch import Tensor

from xmr.data.store import DIRECTIONS, FeatureStore
from xmr.metrics.ranking import pessimistic_order, pessimistic_ranks, ranked_recall_at_k

log = logging.getLogger(__name__)

#: The cut-offs of the probe's Recall@K.
PROBE_KS: tuple[int, ...] = (1, 5, 10)
#: The significance level and the effect size of the warning rule (module docstring).
LEAK_P_VALUE = 1e-3
LEAK_RATIO = 2.0
#: The warning rule in one sentence, recorded in every probe.
PROBE_RULE = (
    "a file leaks when anti-cosine (minus the first-stage cosine) reaches an in-list R@1 at least "
    f"{LEAK_RATIO:g}x the analytic chance R@1 and a one-sided binomial test of its R@1 hits "
    f"against the mean chance gives p < {LEAK_P_VALUE:g}"
)
_CHUNK = 128  # lists per gather of candidate rows (speed only: (chunk, L, D) float32)


class ListsFile(Protocol):
    """What the probe reads of one (direction, split) file (:class:`xmr.data.mining.CandidateLists`
    has it): ``queries (Q,)``, ``candidates (Q, L)`` (-1 = padding), ``labels (Q, L)``."""

    @property
    def queries(self) -> np.ndarray: ...
    @property
    def candidates(self) -> np.ndarray: ...
    @property
    def labels(self) -> np.ndarray: ...
    @property
    def direction(self) -> str: ...
    @property
    def split(self) -> str: ...


def file_key(direction: str, split: str) -> str:
    """The probe's key of one file: ``"<direction>_<split>"``, e.g. ``"t2i_test"``."""
    return f"{direction}_{split}"


def chance_recall(list_sizes: np.ndarray, positives: np.ndarray, k: int) -> np.ndarray:
    """Per-list hit@k of a uniformly random order: ``1 - C(L - P, k) / C(L, k)``.

    Args:
        list_sizes: (Q,) real candidates L per list.
        positives: (Q,) positives P per list (>= 1).
        k: cut-off >= 1.

    Returns:
        (Q,) float64 in [0, 1] (1 when ``k > L - P``).
    """
    size = np.asarray(list_sizes, dtype=np.float64)[:, None]  # (Q, 1)
    neg = size - np.asarray(positives, dtype=np.float64)[:, None]  # (Q, 1)
    j = np.arange(k, dtype=np.float64)[None, :]  # (1, k)
    # C(L-P, k) / C(L, k) = prod_j (L-P-j) / (L-j); a factor with j >= L-P is 0 (and j < L then).
    factors = np.where(j < neg, (neg - j) / np.maximum(size - j, 1.0), 0.0)  # (Q, k)
    return 1.0 - factors.prod(axis=1)


def binomial_tail(successes: int, trials: int, p: float) -> float:
    """``P(Bin(trials, p) >= successes)``, summed in log space (exact for any size)."""
    if successes <= 0:
        return 1.0
    if successes > trials or p <= 0.0:
        return 0.0
    if p >= 1.0:
        return 1.0
    k = torch.arange(successes, trials + 1, dtype=torch.float64)
    n = torch.tensor(float(trials), dtype=torch.float64)
    log_pmf = (
        torch.lgamma(n + 1)
        - torch.lgamma(k + 1)
        - torch.lgamma(n - k + 1)
        + k * math.log(p)
        + (n - k) * math.log1p(-p)
    )
    return float(torch.logsumexp(log_pmf, dim=0).exp().clamp(max=1.0))


def _unit_rows(table: np.ndarray, ids: np.ndarray) -> Tensor:
    """``(len(ids), D)`` float32 rows ``table[ids]``, L2-normalised (as the miner's cosine)."""
    rows = torch.from_numpy(np.ascontiguousarray(np.take(table, ids, axis=0))).float()
    return torch.nn.functional.normalize(rows, dim=-1)


def list_cosines(
    query_emb: np.ndarray, cand_emb: np.ndarray, queries: np.ndarray, candidates: np.ndarray
) -> np.ndarray:
    """The first-stage score of every candidate: cosine with its list's query.

    Each distinct row is read and normalised once; the (chunk, L, D) gathers then stay
    cache-sized (``_CHUNK`` lists), so a file of tens of thousands of lists takes about a second.

    Args:
        query_emb: (N_q, D) the query side's table (text for t2i, image for i2t).
        cand_emb: (N_c, D) the candidate side's table.
        queries: (Q,) int64 query ids.
        candidates: (Q, L) int64 candidate ids, -1 = padding.

    Returns:
        (Q, L) float32 cosines (0 at padding).
    """
    q_count, length = candidates.shape
    out = torch.zeros(q_count, length, 1)  # (Q, L, 1)
    if q_count == 0:
        return out[..., 0].numpy()
    cand_ids, cand_at = np.unique(np.maximum(candidates, 0), return_inverse=True)
    query_ids, query_at = np.unique(queries, return_inverse=True)
    cand = _unit_rows(cand_emb, cand_ids)  # (U_c, D)
    query = _unit_rows(query_emb, query_ids)  # (U_q, D)
    cand_at_t = torch.from_numpy(cand_at.reshape(q_count, length))  # (Q, L)
    query_at_t = torch.from_numpy(query_at.reshape(q_count))  # (Q,)
    for s in range(0, q_count, _CHUNK):
        e = min(s + _CHUNK, q_count)
        torch.bmm(cand[cand_at_t[s:e]], query[query_at_t[s:e], :, None], out=out[s:e])
    return np.where(candidates >= 0, out[..., 0].numpy(), np.float32(0.0))


def probe_file(lists: ListsFile, store: FeatureStore) -> dict[str, Any]:
    """The probe of one (direction, split) file (one entry of ``probe["files"]``).

    Vectorised over the whole file: one cosine per candidate (gathered in chunks), one
    pessimistic order of all lists.
    """
    candidates = np.asarray(lists.candidates, dtype=np.int64)  # (Q, L)
    mask_np = candidates >= 0
    relevant_np = (np.asarray(lists.labels) > 0) & mask_np  # (Q, L)
    sizes = mask_np.sum(axis=1)  # (Q,)
    n_pos = relevant_np.sum(axis=1)  # (Q,)
    keep = n_pos > 0  # (Q,) lists that count
    n = int(keep.sum())
    chance = {
        f"recall@{k}": float(np.mean(chance_recall(sizes[keep], n_pos[keep], k))) if n else None
        for k in PROBE_KS
    }
    entry: dict[str, Any] = {
        "lists": int(candidates.shape[0]),
        "lists_without_positive": int((~keep).sum()),
        "mean_list_size": float(sizes.mean()) if sizes.size else 0.0,
        "anti_cosine": None,
        "chance": chance,
        "positive_rank": {"median": None, "p10": None, "p90": None, "mean": None},
        "leak": False,
        "p_value": None,
    }
    if not store.joint_space or store.image_dim != store.text_dim or n == 0:
        return entry
    if lists.direction == "t2i":
        q_table, c_table = store.text_emb, store.image_emb
    else:
        q_table, c_table = store.image_emb, store.text_emb
    cos = list_cosines(q_table, c_table, np.asarray(lists.queries, dtype=np.int64), candidates)
    scores = torch.from_numpy(cos[keep]).double()  # (n, L)
    relevant = torch.from_numpy(relevant_np[keep])  # (n, L)
    mask = torch.from_numpy(mask_np[keep])  # (n, L)
    order = pessimistic_order(-scores, relevant, mask)  # (n, L) anti-cosine, best first
    ranked = relevant.gather(1, order)  # (n, L)
    hits = {k: ranked_recall_at_k(ranked, k) for k in PROBE_KS}  # (n,) each
    entry["anti_cosine"] = {f"recall@{k}": float(hits[k].mean()) for k in PROBE_KS}
    # The cosine rank of each list's best-ranked positive (a non-positive counts as L + 1).
    ranks = pessimistic_ranks(scores, relevant, mask)  # (n, L)
    best = ranks.masked_fill(~relevant, ranks.shape[1] + 1).min(dim=1).values.double().numpy()
    p10, median, p90 = np.percentile(best, [10, 50, 90])
    entry["positive_rank"] = {
        "median": float(median),
        "p10": float(p10),
        "p90": float(p90),
        "mean": float(best.mean()),
    }
    successes = int(hits[1].sum())
    chance_1 = float(np.mean(n_pos[keep] / sizes[keep]))  # chance R@1 = P / L per list
    p_value = binomial_tail(successes, n, chance_1)
    entry["p_value"] = p_value
    entry["leak"] = bool(p_value < LEAK_P_VALUE and successes / n >= LEAK_RATIO * chance_1)
    return entry


def probe_files(store: FeatureStore, files: Iterable[ListsFile]) -> dict[str, Any]:
    """The probe of a set of files (``lists.json["probe"]``, schema in the module docstring).

    Files are keyed ``"<direction>_<split>"`` and ordered as given.
    """
    return {
        "rule": PROBE_RULE,
        "files": {file_key(f.direction, f.split): probe_file(f, store) for f in files},
    }


class _NpzFile:
    """The arrays of one lists file, read from its ``.npz`` (format: :mod:`xmr.data.mining`)."""

    def __init__(self, path: Path, direction: str, split: str) -> None:
        with np.load(path, allow_pickle=False) as z:
            self.queries = z["queries"]
            self.candidates = z["candidates"]
            self.labels = z["labels"]
        self.direction, self.split = direction, split


def probe_paths(store: FeatureStore, paths: Mapping[tuple[str, str], Path]) -> dict[str, Any]:
    """:func:`probe_files` of files just written: ``{(direction, split): path of its .npz}``
    (the miner's own, already checked files); logs a warning naming every file that leaks."""
    probe = probe_files(store, (_NpzFile(p, d, s) for (d, s), p in paths.items()))
    warn_leaks(probe)
    return probe


def leaking_files(probe: Mapping[str, Any]) -> list[str]:
    """The keys of the files the probe flags, in its order."""
    return [key for key, entry in probe.get("files", {}).items() if entry.get("leak")]


def warn_leaks(probe: Mapping[str, Any]) -> None:
    """Log one warning when any file of ``probe`` leaks."""
    bad = leaking_files(probe)
    if bad:
        log.warning(
            "candidate lists leak: anti-cosine beats chance in %s (%s). The positive is not chosen "
            "like the negatives, so in-list metrics overstate any ranker that learns the rule.",
            ", ".join(bad),
            probe.get("rule", PROBE_RULE),
        )


def _headline(files: Mapping[str, Any]) -> str:
    """The file the summary shows (``files`` not empty): the smallest p-value, i.e. the closest to
    leaking (the first such file on a tie), else the first file."""
    tested = [
        (e["p_value"], i, k) for i, (k, e) in enumerate(files.items()) if e["p_value"] is not None
    ]
    return min(tested)[2] if tested else next(iter(files))


def _pct(value: float | None) -> str:
    return "n/a" if value is None else f"{100.0 * value:.1f}%"


def _show(key: str) -> str:
    direction, _, split = key.partition("_")
    return f"{direction}/{split}" if direction in DIRECTIONS else key


def probe_line(probe: Mapping[str, Any] | None) -> str:
    """One line summarising a probe, e.g. ``probe: anti-cosine in-list R@1 t2i/test 41.0% vs
    chance 2.0% — LEAK in 6 of 6 files (the positive is not chosen like the negatives)``."""
    if not probe or not probe.get("files"):
        return "probe: none (no lists probed)"
    files = probe["files"]
    key = _headline(files)
    entry = files[key]
    chance = _pct(entry["chance"]["recall@1"] if entry["chance"] else None)
    if entry["anti_cosine"] is None:
        return (
            f"probe: anti-cosine not applicable (the store is not one joint space, or no list "
            f"has a positive); chance in-list R@1 {_show(key)} {chance}"
        )
    anti = _pct(entry["anti_cosine"]["recall@1"])
    head = f"probe: anti-cosine in-list R@1 {_show(key)} {anti} vs chance {chance}"
    bad = leaking_files(probe)
    if bad:
        return (
            f"{head} — LEAK in {len(bad)} of {len(files)} files "
            "(the positive is not chosen like the negatives)"
        )
    return (
        f"{head} — no leak in {len(files)} files "
        "(the first-stage score does not point at the positive)"
    )
