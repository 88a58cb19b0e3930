"""The CLIP-cosine baseline of a run's data, evaluated without a training run of its own.

CLIP cosine has no parameters, so what ``xmr train model=cosine`` records for a store and its
lists follows from a run's config alone: :func:`baseline_config` is that run's config with the
model replaced by ``conf/model/cosine.yaml`` (the one owner of the baseline's model config) and
no ``method`` of its own — the config a ``model=cosine`` run with the run's other settings
(store, lists, ``max_lists``, ``protocol``, ``ks``, seed) would hold — and
:func:`evaluate_baseline` tests it the way every run is tested
(:func:`xmr.runs.lifecycle.build_run`, :func:`xmr.runs.lifecycle.test_record`: the list
protocol, the full-gallery protocol, ``predictions_{t2i,i2t}.npz`` and
``predictions_full_{t2i,i2t}.npz``) and writes the same ``results.json``, plus
:data:`EVALUATED_BY` naming the command that evaluated it. ``xmr report`` uses it when no run
below its root is CLIP cosine (:mod:`xmr.report.baseline`).
"""

from __future__ import annotations

import copy
import json
import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from xmr.runs.lifecycle import (
    CONFIG_FILE,
    FAILED_FILE,
    RESULTS_FILE,
    build_run,
    test_record,
    write_record,
)
from xmr.runs.naming import run_method
from xmr.runs.results import finished_results
from xmr.utils.io import remove_if_exists
from xmr.utils.lock import DirLock
from xmr.utils.paths import CONF_DIR
from xmr.utils.provenance import utc_now
from xmr.utils.runtime import torch_runtime

log = logging.getLogger(__name__)

#: The CLIP-cosine baseline's model config (``model=cosine``).
COSINE_MODEL = Path(CONF_DIR) / "model" / "cosine.yaml"
#: Key of a results record that was evaluated by a command other than ``xmr train``: the
#: command (``"xmr report"``); a ``model=cosine`` run's record has no such key.
EVALUATED_BY = "evaluated_by"


class BaselineDirTaken(ValueError):
    """The directory meant for the evaluated baseline holds a run of its own."""


def baseline_config(config: Mapping[str, Any] | DictConfig, **data: Any) -> DictConfig:
    """The config of a ``model=cosine`` run with ``config``'s other settings: ``model`` replaced
    by ``conf/model/cosine.yaml``, ``method`` null (the row is the model's name, ``clip_cosine``);
    ``data`` keys (``direction="both"``, ...) replace the run's."""
    plain = (
        OmegaConf.to_container(config, resolve=True)
        if isinstance(config, DictConfig)
        else copy.deepcopy(dict(config))
    )
    cfg: DictConfig = OmegaConf.create(plain)  # type: ignore[assignment]
    cfg.model = OmegaConf.load(COSINE_MODEL)
    cfg.method = None
    for key, value in data.items():
        cfg.data[key] = value
    return cfg


def evaluate_baseline(cfg: DictConfig, out: str | Path, *, by: str) -> dict[str, Any]:
    """Test the parameter-free scorer of ``cfg`` (:func:`baseline_config`) on the store and lists
    on disk (nothing generated or mined) and write ``results.json`` and the predictions files of
    both protocols into ``out``, as ``xmr train`` would, with ``EVALUATED_BY: by``; returns the
    record. ``out`` already holding this evaluation (same config, files complete:
    :func:`xmr.runs.results.finished_results`) is reused. Raises :class:`BaselineDirTaken` when
    ``out`` holds a run directory (``config.yaml``, ``failed.json`` or a ``results.json`` not
    evaluated this way) — it is never overwritten — and the store's or lists'
    :class:`~xmr.utils.errors.UserError` when they cannot be read here."""
    out = Path(out)
    with DirLock(out, what=f"CLIP-cosine evaluation by {by}"):
        _check_ours(out)
        done = finished_results(out, cfg)
        if done is not None:
            log.info("%s: CLIP cosine already evaluated for this config; reusing it", out)
            return done
        started = utc_now()
        with torch_runtime(cfg):
            dm, module = build_run(cfg, prepare=False)
            out.mkdir(parents=True, exist_ok=True)
            remove_if_exists(out / RESULTS_FILE)  # an earlier evaluation's, for other data
            record = test_record(
                cfg,
                module,
                dm,
                out,
                method=run_method(cfg),
                val_metrics={},
                checkpoint=None,
                epochs_run=0,
                started=started,
            )
        record[EVALUATED_BY] = by
        return write_record(out / RESULTS_FILE, record)


def _check_ours(out: Path) -> None:
    """Refuse ``out`` when a run of its own lives there (see :func:`evaluate_baseline`)."""
    if (out / CONFIG_FILE).exists() or (out / FAILED_FILE).exists():
        raise BaselineDirTaken(f"{out} is a run directory ({CONFIG_FILE} or {FAILED_FILE})")
    results = out / RESULTS_FILE
    if results.is_file():
        try:
            record = json.loads(results.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            record = None
        if not isinstance(record, dict) or EVALUATED_BY not in record:
            raise BaselineDirTaken(f"{results}: the results of a run, not an evaluated baseline")
