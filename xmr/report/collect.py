"""Finding a sweep's runs: finished runs (``results.json``), failed and missing jobs, their
configs and predictions files, and the table row each job belongs to.

Jobs that failed (``failed.json``) or never finished (``config.yaml`` but no ``results.json``)
are collected too, so that the report lists them and counts them in the ``runs`` column. Run
directories moved aside for a run of another config (``<run>.old-<time>`` holding
``set_aside.json``) are not jobs of the sweep and are skipped.
"""

from __future__ import annotations

import json
import logging
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from xmr.runs.naming import method_of_config
from xmr.runs.results import (
    SET_ASIDE_FILE,
    flatten_config,
    load_full_predictions,
    load_predictions,
)

log = logging.getLogger(__name__)

#: Config keys whose differences between runs of one method make separate rows (grid points).
VARIANT_PREFIXES = (
    "model.",
    "loss.",
    "optimizer.",
    "scheduler.",
    "trainer.max_epochs",
    "data.name",
    "data.mining.",
    "data.max_lists",
    "data.redraw_train_lists",
    "protocol.full_gallery.first_stage",
)


def collect(root: str | Path) -> list[dict[str, Any]]:
    """Every readable ``results.json`` below ``root`` (sorted by path), with ``_path`` added."""
    runs = []
    for path in sorted(Path(root).rglob("results.json")):
        if (path.parent / SET_ASIDE_FILE).exists():
            continue
        try:
            run = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as err:
            raise ValueError(f"{path}: unreadable results file ({err})") from err
        if not isinstance(run, dict) or "method" not in run:
            raise ValueError(f"{path}: not an xmr results file (no 'method' field)")
        run["_path"] = str(path)
        runs.append(run)
    return runs


def _read_job_config(job: Path) -> dict[str, Any] | None:
    """A job's training config (``config.yaml``, else ``.hydra/config.yaml``), or None."""
    for path in (job / "config.yaml", job / ".hydra" / "config.yaml"):
        if path.is_file():
            try:
                config = yaml.safe_load(path.read_text(encoding="utf-8"))
            except (OSError, yaml.YAMLError):
                return None
            # A training config has data + model; other config.yaml files (W&B, ...) do not.
            if isinstance(config, dict) and "data" in config and "model" in config:
                return config
    return None


def collect_unfinished(root: str | Path) -> list[dict[str, Any]]:
    """Job directories below ``root`` without ``results.json``: failed or missing.

    ``status`` is ``"failed"`` when the job left ``failed.json`` (``{"error", "config"}``), else
    ``"missing"`` (a training ``config.yaml`` but no results: interrupted, killed, or running).
    Each entry: ``{"_dir", "status", "error", "config", "method", "seed"}``.
    """
    root = Path(root)
    candidates: set[Path] = set()
    for name in ("failed.json", "config.yaml"):
        for path in root.rglob(name):
            job = path.parent.parent if path.parent.name == ".hydra" else path.parent
            candidates.add(job)
    jobs = []
    for job in sorted(candidates):
        if (job / "results.json").exists() or (job / SET_ASIDE_FILE).exists():
            continue
        inside = [p for p in job.parents if p == root or root in p.parents]
        if any((p / "results.json").exists() for p in inside):
            continue  # inside a finished run (e.g. a logger's own config.yaml)
        failed = job / "failed.json"
        error, config = None, None
        if failed.is_file():
            try:
                record = json.loads(failed.read_text(encoding="utf-8"))
                error = str(record.get("error"))
                config = record.get("config")
            except (OSError, json.JSONDecodeError, AttributeError) as err:
                error = f"unreadable failed.json ({err})"
        if not isinstance(config, dict):
            config = _read_job_config(job)
        if config is None and not failed.is_file():
            continue  # not a training job directory
        jobs.append(
            {
                "_dir": str(job),
                "status": "failed" if failed.is_file() else "missing",
                "error": error,
                "config": config,
                "method": method_of_config(config),
                "seed": (config or {}).get("seed"),
            }
        )
    return jobs


def _short_key(key: str) -> str:
    for prefix in ("model.net.", "model.", "data.mining.", "data.", "protocol.full_gallery."):
        if key.startswith(prefix):
            return key[len(prefix) :]
    return key


def assign_rows(jobs: list[dict[str, Any]]) -> list[str]:
    """The table row of each job (finished or not): its method, plus the variant keys.

    Within one method, config values under :data:`VARIANT_PREFIXES` that differ between jobs
    (grid points) are appended: ``neural_ndcg [num_layers=2, ff_dim=128]``. Seeds, paths and the
    direction never split a row (t2i-only and i2t-only jobs fill the two halves of one row).
    """
    flats = []
    for job in jobs:
        flat = flatten_config(job.get("config") or {})
        flats.append(
            {
                k: json.dumps(v)
                for k, v in flat.items()
                if k.startswith(VARIANT_PREFIXES) and k != "data.direction"
            }
        )
    by_method: dict[str, list[int]] = defaultdict(list)
    for i, job in enumerate(jobs):
        by_method[str(job.get("method"))].append(i)
    names = [""] * len(jobs)
    for method, idx in by_method.items():
        keys = sorted({k for i in idx for k in flats[i]})
        varying = [k for k in keys if len({flats[i].get(k) for i in idx}) > 1]
        for i in idx:
            label = ", ".join(
                f"{_short_key(k)}={json.loads(flats[i][k]) if k in flats[i] else '—'}"
                for k in varying
            )
            names[i] = f"{method} [{label}]" if label else method
    return names


_PRED_CACHE: dict[str, dict[str, np.ndarray]] = {}


def _cached(run: dict[str, Any], key: str, load: Any) -> dict[str, np.ndarray] | None:
    """The arrays of the file ``results.json`` names under ``predictions[key]`` (cached)."""
    name = (run.get("predictions") or {}).get(key)
    if not name:
        return None
    path = Path(run["_path"]).parent / name
    if not path.is_file():
        log.warning("%s: predictions file named in results.json is missing", path)
        return None
    cache_key = f"{path}@{path.stat().st_mtime_ns}"  # a rerun's new file is read again
    if cache_key not in _PRED_CACHE:
        _PRED_CACHE[cache_key] = load(path)
    return _PRED_CACHE[cache_key]


def run_predictions(run: dict[str, Any], direction: str) -> dict[str, np.ndarray] | None:
    """The list protocol's predictions arrays of ``run`` for ``direction`` (cached), or None."""
    return _cached(run, direction, load_predictions)


def run_full_outcomes(run: dict[str, Any], direction: str) -> dict[str, np.ndarray] | None:
    """The full-gallery protocol's per-query outcomes of ``run`` for ``direction``
    (``predictions_full_{direction}.npz``: ``query``, ``rank``, ``first_stage_rank``; cached),
    or None when the run wrote none."""
    return _cached(run, f"full_{direction}", load_full_predictions)
