"""Hand-made runs of both protocols on lists whose ``lists.json`` records a leakage probe
(conftest's ``probe_sweep``): no training, results.json and predictions files written directly.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

#: The hand-made leakage probe of ``probe_sweep``'s lists: t2i leaks, i2t does not.
PROBE = {
    "rule": "leak when anti-cosine in-list R@1 beats chance (one-sided binomial, p < 0.01)",
    "files": {
        "t2i_test": {
            "lists": 200,
            "lists_without_positive": 0,
            "mean_list_size": 11.0,
            "anti_cosine": {"recall@1": 0.8, "recall@5": 0.9, "recall@10": 1.0},
            "chance": {"recall@1": 1 / 11, "recall@5": 5 / 11, "recall@10": 10 / 11},
            "positive_rank": {"median": 40.0, "p10": 20.0, "p90": 50.0, "mean": 37.5},
            "leak": True,
            "p_value": 1e-9,
        },
        "i2t_test": {
            "lists": 200,
            "lists_without_positive": 0,
            "mean_list_size": 11.0,
            "anti_cosine": {"recall@1": 0.1, "recall@5": 0.45, "recall@10": 0.9},
            "chance": {"recall@1": 1 / 11, "recall@5": 5 / 11, "recall@10": 10 / 11},
            "positive_rank": {"median": 2.0, "p10": 1.0, "p90": 9.0, "mean": 3.5},
            "leak": False,
            "p_value": 0.4,
        },
    },
}


def _ranked_top1(rng: np.random.Generator, q: int, p_hit: float) -> np.ndarray:
    """Ranked labels (Q, 11), one positive: at rank 1 with probability p_hit, else at 2..11."""
    labels = np.zeros((q, 11), np.uint8)
    pos = np.where(rng.random(q) < p_hit, 0, rng.integers(1, 11, q))
    labels[np.arange(q), pos] = 1
    return labels


def _full_ranks(rng: np.random.Generator, q: int, p_hit: float) -> np.ndarray:
    """First-relevant ranks (Q,) in a re-ranked top 50: 1 with probability p_hit, else 2..50 or
    0 (outside the top K)."""
    return np.where(rng.random(q) < p_hit, 1, rng.integers(0, 50, q)).astype(np.int64)


def probe_sweep_root(root: Path) -> Path:
    """Hand-made runs of both protocols (no training), 200 test queries per direction, on lists
    whose ``lists.json`` holds :data:`PROBE` (t2i leaks):

    - ``clip_cosine``: in-list hit@1 ≈ 30%, full-gallery hit@1 ≈ 50%;
    - ``listnet`` (2 seeds): in-list hit@1 ≈ 90%, full-gallery ranks equal to cosine's (an
      in-list gain the full gallery does not match);
    - ``ranknet`` (1 seed): in-list ≈ 90% and full gallery ≈ 95% (a matched gain).

    Returns the directory holding the runs (``root/runs``).
    """
    lists = root / "lists" / "hard-p200-h10"
    lists.mkdir(parents=True)
    meta = {
        "format": "xmr-lists/1",
        "store": "/data/flickr-fake",
        "store_fingerprint": "0",
        "params": {"pool": 200, "hard": 10},
        "seed": 0,
        "stats": {},
        "probe": PROBE,
    }
    (lists / "lists.json").write_text(json.dumps(meta))
    rng = np.random.default_rng(0)
    q = 200
    cosine_full = {d: _full_ranks(rng, q, 0.5) for d in ("t2i", "i2t")}
    specs = [
        ("clip_cosine", "clip_cosine", 0, 0.3, cosine_full),
        ("listnet_s0", "listnet", 0, 0.9, cosine_full),
        ("listnet_s1", "listnet", 1, 0.9, cosine_full),
        ("ranknet_s0", "ranknet", 0, 0.9, {d: _full_ranks(rng, q, 0.95) for d in cosine_full}),
    ]
    for name, method, seed, p_list, full in specs:
        out = root / "runs" / name
        out.mkdir(parents=True)
        res: dict = {
            "format": "xmr-results/1",
            "method": method,
            "seed": seed,
            "synthetic": False,
            "store": {"path": "/data/flickr-fake", "encoder": {"name": "ViT-B-32"}},
            "predictions": {},
            "full_gallery": {
                "top_k": 50,
                "split": "test",
                "first_stage": "cosine",
                "gallery": {"t2i": 100, "i2t": 500},
                "queries": {"t2i": q, "i2t": q},
            },
            "config": {
                "model": {"name": method},
                "loss": {"_target_": "xmr.losses.listnet.ListNetLoss", "target": "normalized"}
                if method == "listnet"
                else {"_target_": "xmr.losses.ranknet.RankNetLoss"},
                "data": {
                    "store": "/data/flickr-fake",
                    "lists_dir": str(lists),
                    "mining": {"strategy": "hard", "pool": 200, "hard": 10, "i2t_positives": 2},
                },
                "seed": seed,
            },
        }
        for d in ("t2i", "i2t"):
            labels = _ranked_top1(rng, q, p_list)
            np.savez(
                out / f"predictions_{d}.npz",
                query=np.arange(q),
                candidates=np.tile(np.arange(11), (q, 1)),
                scores=np.zeros(labels.shape, np.float32),
                labels=labels,
            )
            np.savez(
                out / f"predictions_full_{d}.npz",
                query=np.arange(q),
                rank=full[d],
                first_stage_rank=full[d],
            )
            res["predictions"][d] = f"predictions_{d}.npz"
            res["predictions"][f"full_{d}"] = f"predictions_full_{d}.npz"
            res[f"test/{d}/lists"] = float(q)
            for k in (1, 5, 10):
                res[f"test/{d}/recall@{k}"] = float((labels[:, :k].sum(1) > 0).mean())
                hits = float(((full[d] > 0) & (full[d] <= k)).mean())
                res[f"test_full/{d}/recall@{k}"] = hits
                res[f"test_full/{d}/first_stage_recall@{k}"] = hits
        (out / "results.json").write_text(json.dumps(res))
    return root / "runs"
