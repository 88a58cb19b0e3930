"""What a run leaves behind: ``results.json`` and the test predictions files.

``results.json`` (:func:`results_record`, written by :func:`xmr.runs.lifecycle.write_record`)::

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
      "predictions": {"t2i": "predictions_t2i.npz", ...,     # the list protocol
                      "full_t2i": "predictions_full_t2i.npz", ...},  # the full-gallery protocol
      "provenance": {"xmr": "0.1.0", "git": {"commit": ..., "dirty": false}, "python": ...,
                     "torch": ..., "lightning": ..., "hydra": ..., "argv": [...],
                     "hostname": ..., "started": "2026-05-01T09:30:12+00:00"},
      "config": {...resolved config...}
    }

``provenance`` (:func:`xmr.utils.provenance.collect_provenance`): the code version (git commit and
whether the checkout had changes; null outside a checkout), library versions, command line, host
and start time. It is not part of the config, so :func:`finished_results` ignores it.

Metric values are fractions in [0, 1] (``rsum`` is in percent points, the sum of hit@1/5/10).

``predictions_{direction}.npz``: one row per test query, candidates in ranked order: the
pessimistic order of :func:`xmr.metrics.ranking.pessimistic_order`, as in the metrics (best
first; ties broken pessimistically; a NaN score last among the real candidates; padding last)::

    query       (Q,)   int64    query id (text id for t2i, image id for i2t)
    candidates  (Q, L) int64    candidate ids in ranked order, -1 = padding
    scores      (Q, L) float32  the scorer's scores in that order, NaN at padding (a real
                                candidate the scorer gave NaN keeps its id and its NaN)
    labels      (Q, L) uint8    relevance in that order, 0 at padding

``predictions_full_{direction}.npz``: the full-gallery protocol's per-query outcomes
(:func:`xmr.metrics.full_gallery.rerank_outcomes`), one row per test query::

    query             (Q,) int64  query id
    rank              (Q,) int64  1-based rank of the first relevant item in the re-ranked top K;
                                  0 = none in the top K (a miss at every k)
    first_stage_rank  (Q,) int64  the same in the first stage's order (0 beyond its first
                                  max(K, max k) positions)

Query q is a hit at k iff ``0 < rank[q] <= k`` (:func:`xmr.metrics.full_gallery.hits_at_k`).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import numpy as np
from omegaconf import DictConfig, OmegaConf

from xmr.data.store import FeatureStore
from xmr.utils.io import atomic_write
from xmr.utils.provenance import collect_provenance
from xmr.utils.secrets import scrub_secrets

log = logging.getLogger(__name__)

RESULTS_FORMAT = "xmr-results/1"
#: Marks a run directory moved aside because a run of another config started in its place
#: (:func:`xmr.runs.lifecycle.set_aside_changed_run`); ``xmr report`` skips such directories.
SET_ASIDE_FILE = "set_aside.json"


def write_predictions(out: Path, predictions: dict[str, dict[str, np.ndarray]]) -> dict[str, str]:
    """Write ``predictions_{direction}.npz`` files; returns direction → file name."""
    written = {}
    for direction, arrays in predictions.items():
        name = f"predictions_{direction}.npz"

        def _save(tmp: Path, arrays: dict[str, np.ndarray] = arrays) -> None:
            with open(tmp, "wb") as fh:
                extra = {}
                if "relevant_total" in arrays:  # lists that may miss their positive
                    extra["relevant_total"] = arrays["relevant_total"].astype(np.int64)
                np.savez(
                    fh,
                    query=arrays["query"].astype(np.int64),
                    candidates=arrays["candidates"].astype(np.int64),
                    scores=arrays["scores"].astype(np.float32),
                    labels=arrays["labels"].astype(np.uint8),
                    **extra,
                )

        atomic_write(out / name, _save)
        written[direction] = name
    return written


#: Arrays of a ``predictions_full_{direction}.npz`` file.
FULL_PREDICTION_ARRAYS = ("query", "rank", "first_stage_rank")


def write_full_predictions(out: Path, outcomes: dict[str, dict[str, np.ndarray]]) -> dict[str, str]:
    """Write ``predictions_full_{direction}.npz`` files (the full-gallery protocol's per-query
    outcomes); returns ``full_{direction}`` → file name (the keys under ``results.json``
    ``predictions``)."""
    written = {}
    for direction, arrays in outcomes.items():
        name = f"predictions_full_{direction}.npz"

        def _save(tmp: Path, arrays: dict[str, np.ndarray] = arrays) -> None:
            with open(tmp, "wb") as fh:
                np.savez(fh, **{k: np.asarray(arrays[k], np.int64) for k in FULL_PREDICTION_ARRAYS})

        atomic_write(out / name, _save)
        written[f"full_{direction}"] = name
    return written


def load_full_predictions(path: str | Path) -> dict[str, np.ndarray]:
    """Read a ``predictions_full_{direction}.npz`` file (no pickles)."""
    with np.load(path, allow_pickle=False) as z:
        return {k: z[k] for k in FULL_PREDICTION_ARRAYS}


def load_predictions(path: str | Path) -> dict[str, np.ndarray]:
    """Read a predictions file (no pickles): ``query``, ``candidates``, ``scores``, ``labels`` and,
    for lists that may miss their positive, ``relevant_total``."""
    with np.load(path, allow_pickle=False) as z:
        keys = ("query", "candidates", "scores", "labels", "relevant_total")
        return {k: z[k] for k in keys if k in z.files}


def results_record(
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
    started: str | None = None,
) -> dict[str, Any]:
    """The ``results.json`` record of a tested run (format above), config resolved; written by
    :func:`xmr.runs.lifecycle.write_record`, which scrubs secrets. ``started``: when the run
    started (``provenance.started``; default now)."""
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
    results["provenance"] = collect_provenance(started)
    results["config"] = OmegaConf.to_container(cfg, resolve=True)
    return results


#: Config keys that do not change what a run computes: a rerun with other values still counts as
#: the same job (paths move with the checkout; progress bars / resume are run-time only;
#: loggers record a run and, like the keys above but seed, are left out of its directory's name,
#: so a rerun adding ``logger=wandb`` lands in the same directory and must not count as another job).
#: ``threads`` is not one of them: the thread count changes results (intra-op kernels split float
#: reductions over threads and sum them in another order; measured: threads=2 vs 1 gave another
#: best epoch and test R@1), so a run with other threads is another run (and another directory).
RERUN_NEUTRAL_KEYS = (
    "paths",
    "hydra",
    "resume",
    "skip_finished",
    "trainer.enable_progress_bar",
    "logger",
)


#: Config keys added after runs were recorded, each with the value a recorded config without it
#: ran with: such a run and a config holding that value are the same job (a sweep rerun after the
#: key appeared skips finished jobs instead of redoing them).
ADDED_KEYS: dict[str, Any] = {"trainer.precision": "32-true"}


def flatten_config(node: Any, prefix: str = "") -> dict[str, Any]:
    """A nested config as ``{"dotted.key": leaf}``."""
    if isinstance(node, dict):
        flat: dict[str, Any] = {}
        for key, value in node.items():
            flat.update(flatten_config(value, f"{prefix}{key}."))
        return flat
    return {prefix.rstrip("."): node}


def _comparable(config: dict[str, Any]) -> dict[str, Any]:
    flat = flatten_config(config)
    for key, value in ADDED_KEYS.items():
        group = key.rpartition(".")[0]
        if any(k.startswith(group + ".") for k in flat):  # a config with the key's group
            flat.setdefault(key, value)
    return {
        k: v
        for k, v in flat.items()
        if not any(k == n or k.startswith(n + ".") for n in RERUN_NEUTRAL_KEYS)
    }


def config_differences(saved: Any, cfg: DictConfig) -> list[str]:
    """The dotted keys at which ``saved`` (a run's recorded config: resolved, secrets scrubbed,
    as ``config.yaml`` and ``results.json`` hold it) differs from ``cfg``, up to
    :data:`RERUN_NEUTRAL_KEYS`; ``[]`` means the same job. Raises when ``cfg`` does not resolve."""
    plain = scrub_secrets(OmegaConf.to_container(cfg, resolve=True))  # recorded scrubbed, too
    current = _comparable(plain)  # type: ignore[arg-type]
    old = _comparable(saved if isinstance(saved, dict) else {})
    return sorted(k for k in old.keys() | current.keys() if old.get(k) != current.get(k))


def finished_results(out: str | Path, cfg: DictConfig) -> dict[str, Any] | None:
    """The results of a run that already finished in ``out`` with the same config, else ``None``.

    A run counts as finished when ``out/results.json`` is a complete ``xmr-results/1`` file (test
    metrics present, every predictions file it names present) whose saved config equals ``cfg``
    (resolved) up to :data:`RERUN_NEUTRAL_KEYS`. Sweeps call this first so that a rerun skips the
    jobs that finished and redoes those that failed or were interrupted (no results.json yet).
    ``skip_finished=false`` in the config (``+skip_finished=false`` on the command line) turns it
    off. Returns ``None`` — and logs why — whenever the run has to be (re)done.
    """
    out = Path(out)
    path = out / "results.json"
    if not path.is_file() or not cfg.get("skip_finished", True):
        return None
    try:
        results = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as err:
        log.warning("%s: unreadable (%s); running the job again", path, err)
        return None
    if not isinstance(results, dict) or results.get("format") != RESULTS_FORMAT:
        log.warning("%s: not an %s file; running the job again", path, RESULTS_FORMAT)
        return None
    if not any(k.startswith("test/") for k in results):
        log.warning("%s: no test metrics; running the job again", path)
        return None
    missing = [n for n in (results.get("predictions") or {}).values() if not (out / n).is_file()]
    if missing:
        log.warning("%s: predictions file(s) %s missing; running the job again", path, missing)
        return None
    try:
        differ = config_differences(results.get("config") or {}, cfg)
    except Exception as err:  # an unresolvable interpolation: cannot prove it is the same job
        log.warning("%s: config does not resolve (%s); running the job again", path, err)
        return None
    if differ:
        log.warning(
            "%s: written for another config (differs at %s); running the job again",
            path,
            ", ".join(differ[:5]) + (" …" if len(differ) > 5 else ""),
        )
        return None
    return results
