"""What a run leaves behind: ``results.json`` and the test predictions files.

``results.json`` (written atomically)::

    {
      "format": "xmr-results/1",
      "method": "neural_ndcg" | "clip_cosine" | ...,
      "seed": 0,
      "synthetic": true,                      # the store was generated, not encoded from data
      "store": {"path": ..., "fingerprint": ..., "encoder": {...}},
      "test/t2i/recall@1": 0.41, ...          # hit@K: a query is a hit if any relevant item is in the top K
      "test/t2i/recall_found@1": 0.41, ...    # found/total: the paper's eq. 5
      "test/{dir}/ndcg@10", "test/{dir}/mrr", "test/rsum",
      "best_val/rsum": ..., "val/...": last validation values,
      "epochs_run": 10, "checkpoint": ".../best.ckpt",
      "predictions": {"t2i": "predictions_t2i.npz", ...},
      "config": {...resolved config...}
    }

Metric values are fractions in [0, 1] (``rsum`` is in percent points, the sum of hit@1/5/10).

``predictions_{direction}.npz``: one row per test query, candidates in ranked order (best
first; ties broken pessimistically as in the metrics; padding last)::

    query       (Q,)   int64    query id (text id for t2i, image id for i2t)
    candidates  (Q, L) int64    candidate ids in ranked order, -1 = padding
    scores      (Q, L) float32  the scorer's scores in that order, NaN at padding
    labels      (Q, L) uint8    relevance in that order, 0 at padding
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import numpy as np
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf

from xmr.data.store import FeatureStore
from xmr.utils.io import atomic_write, atomic_write_json

RESULTS_FORMAT = "xmr-results/1"


def method_name(cfg: DictConfig) -> str:
    """The row name of a run in reports: the loss for trainable rankers, else the model name."""
    if cfg.get("method"):
        return str(cfg.method)
    if not cfg.model.get("trainable", True):
        return str(cfg.model.get("name", "scorer"))
    if HydraConfig.initialized():
        choice = HydraConfig.get().runtime.choices.get("loss")
        if choice:
            return str(choice)
    # Outside a Hydra app (compose API): the conf/loss option whose content this loss matches.
    loss = OmegaConf.to_container(cfg.loss, resolve=True)
    options = sorted((Path(__file__).resolve().parents[1] / "conf" / "loss").glob("*.yaml"))
    for path in options:
        if OmegaConf.to_container(OmegaConf.load(path), resolve=True) == loss:
            return path.stem
    for path in options:  # same loss class, other hyper-parameters
        if OmegaConf.load(path).get("_target_") == loss.get("_target_"):  # type: ignore[union-attr]
            return path.stem
    target = str(loss.get("_target_", "loss")).rsplit(".", 1)[-1]  # type: ignore[union-attr]
    return re.sub(r"(?<!^)(?=[A-Z])", "_", target.removesuffix("Loss")).lower()


def write_predictions(out: Path, predictions: dict[str, dict[str, np.ndarray]]) -> dict[str, str]:
    """Write ``predictions_{direction}.npz`` files; returns direction → file name."""
    written = {}
    for direction, arrays in predictions.items():
        name = f"predictions_{direction}.npz"

        def _save(tmp: Path, arrays: dict[str, np.ndarray] = arrays) -> None:
            with open(tmp, "wb") as fh:
                np.savez(
                    fh,
                    query=arrays["query"].astype(np.int64),
                    candidates=arrays["candidates"].astype(np.int64),
                    scores=arrays["scores"].astype(np.float32),
                    labels=arrays["labels"].astype(np.uint8),
                )

        atomic_write(out / name, _save)
        written[direction] = name
    return written


def load_predictions(path: str | Path) -> dict[str, np.ndarray]:
    """Read a predictions file (no pickles)."""
    with np.load(path, allow_pickle=False) as z:
        return {k: z[k] for k in ("query", "candidates", "scores", "labels")}


def write_results(
    out: Path,
    *,
    cfg: DictConfig,
    method: str,
    test_metrics: dict[str, float],
    val_metrics: dict[str, float],
    checkpoint: Path | None,
    predictions: dict[str, str],
    store: FeatureStore | None,
    epochs_run: int,
    best_val: float | None = None,
    write: bool = True,
) -> dict[str, Any]:
    encoder = dict(store.manifest.get("encoder", {})) if store is not None else {}
    results: dict[str, Any] = {
        "format": RESULTS_FORMAT,
        "method": method,
        "seed": int(cfg.seed),
        "synthetic": bool(encoder.get("synthetic", False)),
        "store": {
            "path": str(store.root) if store is not None else None,
            "fingerprint": store.fingerprint() if store is not None else None,
            "encoder": encoder,
        },
    }
    results.update(dict(sorted(test_metrics.items())))
    if best_val is not None:
        results[f"best_{cfg.monitor}"] = best_val
    results.update(dict(sorted(val_metrics.items())))
    results["epochs_run"] = epochs_run
    results["checkpoint"] = str(checkpoint) if checkpoint else None
    results["predictions"] = predictions
    results["config"] = OmegaConf.to_container(cfg, resolve=True)
    if write:
        atomic_write_json(out / "results.json", results)
    return results
