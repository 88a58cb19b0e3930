"""A run's directory and the records written into it, shared by every command.

- :func:`output_dir_of` — the run directory;
- :func:`claim_run_dir` — one process per run directory: a second one is refused at once
  (:class:`RunDirBusy`); :class:`RunDirLock` claims it for ``xmr train`` before Hydra writes
  anything there;
- :func:`set_aside_changed_run` — a run directory left by another config is moved aside to
  ``<run dir>.old-<time>`` before a run starts in it (never resume another config's checkpoint);
- :func:`write_record` — the one writer of run records (``config.yaml``, ``results.json``,
  ``eval_results.json``, ``failed.json``): atomic, secrets scrubbed
  (:func:`xmr.utils.secrets.scrub_secrets`) inside it, so no caller scrubs;
- :func:`begin_attempt` — a run directory made ready for an attempt that (re)does the run;
- :func:`write_failure` — ``failed.json`` of a run that raised;
- :func:`test_record` — test a module and assemble its results record;
- :func:`build_run` — the data module and module a config is tested with;
- :func:`restore_run` — a finished run rebuilt from its ``config.yaml`` and checkpoint
  (:func:`run_checkpoint`: the one its ``results.json`` names).

``results.json`` and ``failed.json`` never contradict each other: a run directory shows the
outcome of its latest attempt.

- An attempt that (re)does the run (not skipped as finished) deletes a ``results.json`` of an
  earlier attempt first (:func:`begin_attempt`): it is about to overwrite the config, checkpoints
  and predictions that record describes.
- A success deletes ``failed.json`` before writing ``results.json`` (a kill in between leaves
  neither: an interrupted run); a skipped, already finished run deletes a stale ``failed.json``.
- A failure deletes ``results.json`` before writing ``failed.json`` (:func:`write_failure`).
- A failure after the attempt wrote its ``results.json`` (finishing loggers, W&B's summary) writes
  no ``failed.json``: the results are complete and stay; the error is logged and raised.
"""

from __future__ import annotations

import json
import logging
import os
import time
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lightning as L
from hydra.core.hydra_config import HydraConfig
from hydra.experimental.callback import Callback
from lightning.pytorch.utilities import rank_zero_only
from omegaconf import DictConfig, ListConfig, OmegaConf

from xmr.data.datamodule import XMRDataModule
from xmr.metrics.full_gallery import run_protocol
from xmr.models.build import build_module, load_weights
from xmr.models.module import RankingModule, run_test_loop
from xmr.models.scorer import scorer_kind
from xmr.runs.results import (
    SET_ASIDE_FILE,
    config_differences,
    results_record,
    write_full_predictions,
    write_predictions,
)
from xmr.utils.config import validate_config
from xmr.utils.instantiate import instantiate
from xmr.utils.io import (
    atomic_write_json,
    atomic_write_text,
    clean_stale_temps,
    remove_if_exists,
)
from xmr.utils.lock import DirLock, LockBusy, describe_holder
from xmr.utils.provenance import collect_provenance
from xmr.utils.secrets import scrub_secrets

log = logging.getLogger(__name__)

CONFIG_FILE = "config.yaml"
RESULTS_FILE = "results.json"
EVAL_RESULTS_FILE = "eval_results.json"
FAILED_FILE = "failed.json"


def output_dir_of(cfg: DictConfig) -> Path:
    """The run directory: Hydra's output dir when running under Hydra, else ``paths.output_dir``."""
    if HydraConfig.initialized():
        # Hydra's global config may be set without a run (compose, --help): then paths decides.
        out = OmegaConf.select(HydraConfig.get(), "runtime.output_dir", default=None)
        if out:
            return Path(str(out))
    return Path(str(cfg.paths.output_dir))


class RunDirBusy(RuntimeError):
    """Another process is running in the run directory (:func:`claim_run_dir`)."""


def claim_run_dir(out: str | Path) -> DirLock | None:
    """Lock the run directory ``out`` for this process (:class:`xmr.utils.lock.DirLock` on
    ``<out>.lock``; re-entrant, released by the returned lock's ``release`` or when the process
    ends). Refuses at once, before anything is written into ``out``, when another process holds
    it: :class:`RunDirBusy` ``"<out> is in use by pid N (command ..., since ...); wait for it or
    use another hydra.run.dir"`` (two runs in one directory would resume from each other's
    checkpoints and interleave ``metrics.jsonl``).

    Only global rank 0 claims (returns None elsewhere): the other DDP ranks are processes of the
    same run, started by rank 0 while it holds the directory."""
    if rank_zero_only.rank != 0:
        return None
    lock = DirLock(out, what="a run in this directory", wait=False)
    try:
        return lock.acquire()
    except LockBusy as busy:
        raise RunDirBusy(
            f"{lock.directory} is in use by {describe_holder(busy.holder)}; wait for it or use "
            "another hydra.run.dir"
        ) from None


class RunDirLock(Callback):
    """Hydra callback (``hydra.callbacks`` in conf/train.yaml): claims the run directory
    (:func:`claim_run_dir`) in ``on_run_start``, before Hydra creates it and writes ``.hydra/``
    and the job's log file there, so a second ``xmr train`` into a busy directory exits
    non-zero with :class:`RunDirBusy`'s message and leaves the directory untouched. Multirun
    jobs are claimed by the task itself (:func:`xmr.train.train`), after Hydra's own files."""

    def __init__(self) -> None:
        self._lock: DirLock | None = None

    def on_run_start(self, config: DictConfig, **kwargs: Any) -> None:
        try:
            HydraConfig.instance().set_config(config)  # as run_job does, for ${hydra:...}
            out = Path(os.path.abspath(str(OmegaConf.select(config, "hydra.run.dir"))))
        except Exception:  # noqa: BLE001 - Hydra reports it in run_job; the task claims the dir
            return
        try:
            self._lock = claim_run_dir(out)
        except RunDirBusy as busy:
            raise SystemExit(f"error: {busy}") from None

    def on_run_end(self, config: DictConfig, **kwargs: Any) -> None:
        if self._lock is not None:
            self._lock.release()
            self._lock = None


def _open_log_files(out: Path) -> set[str]:
    """Names of files in ``out`` that logging handlers hold open (Hydra's job log)."""
    names, out = set(), Path(os.path.abspath(out))
    for logger in [logging.getLogger(), *logging.Logger.manager.loggerDict.values()]:
        for handler in getattr(logger, "handlers", []):
            if isinstance(handler, logging.FileHandler):
                path = Path(os.path.abspath(handler.baseFilename))
                if path.parent == out:
                    names.add(path.name)
    return names


def set_aside_changed_run(out: str | Path, cfg: DictConfig) -> Path | None:
    """Move the run left in ``out`` by another config aside, so a run of ``cfg`` starts fresh.

    When ``out/config.yaml`` records a config differing from ``cfg`` in a key that is not in
    :data:`xmr.runs.results.RERUN_NEUTRAL_KEYS` (or cannot be read), the run there — checkpoints,
    ``results.json``, ``failed.json``, ``metrics.jsonl``, ... — moves to
    ``<out>.old-<YYYYmmdd-HHMMSS>`` (kept, with ``set_aside.json`` saying why; ``xmr report``
    skips it) and a WARNING names the differing keys; returns that directory. Hydra's ``.hydra/``
    and the job's open log file, written by the starting job, stay. ``config.yaml`` moves last,
    so an interrupted move never leaves a checkpoint without its config (the next start moves
    the rest). Returns None when there is nothing to
    move (no ``config.yaml``, or the same job: it may resume)."""
    out = Path(out)
    saved_path = out / CONFIG_FILE
    if not saved_path.is_file():
        return None
    try:
        # OmegaConf's own loader reads back what OmegaConf.to_yaml wrote (1e-05 stays a float)
        saved = OmegaConf.to_container(OmegaConf.load(saved_path), resolve=False)
    except Exception as err:  # noqa: BLE001 - unreadable or not YAML: cannot be the same job
        saved, differs = None, [f"<{CONFIG_FILE} unreadable: {type(err).__name__}>"]
    if saved is not None:
        differs = config_differences(saved, cfg)
    if not differs:
        return None
    stamp = time.strftime("%Y%m%d-%H%M%S")
    old = out.with_name(f"{out.name}.old-{stamp}")
    n = 1
    while old.exists():
        old, n = out.with_name(f"{out.name}.old-{stamp}-{n}"), n + 1
    old.mkdir()
    # The mark first: whatever has moved by an interruption is already skipped by the report.
    write_record(
        old / SET_ASIDE_FILE,
        {
            "format": "xmr-set-aside/1",
            "run_dir": str(out),
            "when": stamp,
            "differs": differs,
            "config": _plain(cfg),
        },
    )
    stay = {".hydra", *_open_log_files(out)}
    moving = sorted(
        (e for e in out.iterdir() if e.name not in stay), key=lambda e: e.name == CONFIG_FILE
    )
    for entry in moving:
        os.replace(entry, old / entry.name)
    shown = ", ".join(differs[:8]) + (f" and {len(differs) - 8} more" if len(differs) > 8 else "")
    log.warning(
        "%s: holds a run of another config (differs at %s); moved it aside to %s and starting "
        "afresh (never resuming another config's checkpoint)",
        out,
        shown,
        old,
    )
    return old


def _plain(node: Any) -> Any:
    """Plain containers of a config (resolved when it resolves: an interpolation that cannot
    resolve may be the very failure being recorded); anything else as it is."""
    if not isinstance(node, (DictConfig, ListConfig)):
        return node
    try:
        return OmegaConf.to_container(node, resolve=True)
    except Exception:
        return OmegaConf.to_container(node, resolve=False)


def write_record(path: str | Path, record: Any) -> Any:
    """Write a run record at ``path`` atomically with secrets scrubbed: YAML for ``*.yaml`` (a
    config), JSON otherwise. ``record`` is a config or plain containers; configs inside it are
    written resolved. Returns the record as written."""
    path = Path(path)
    scrubbed = scrub_secrets(_plain(record))
    if path.suffix == ".yaml":
        atomic_write_text(path, OmegaConf.to_yaml(scrubbed))
    else:
        atomic_write_json(path, scrubbed)
    return scrubbed


def begin_attempt(out: Path, cfg: DictConfig) -> None:
    """Make ``out`` ready for an attempt that (re)does its run: create it, delete temporaries of
    dead processes below it (:func:`xmr.utils.io.clean_stale_temps`) and a ``results.json`` of an
    earlier attempt (see the module docstring), then write ``config.yaml``."""
    out.mkdir(parents=True, exist_ok=True)
    for path in clean_stale_temps(out, recursive=True):
        log.info("deleted %s (a temporary of a process that is gone)", path)
    if remove_if_exists(out / RESULTS_FILE):
        log.info("%s: deleted the results of an earlier attempt", out / RESULTS_FILE)
    write_record(out / CONFIG_FILE, cfg)


def write_failure(
    out: Path, cfg: DictConfig, exc: BaseException, *, started: str | None = None
) -> Path:
    """Write ``<out>/failed.json``: ``{"error": "<Type>: <message>", "traceback", "config",
    "seed", "provenance"}`` (config resolved when possible; ``provenance`` as in ``results.json``,
    ``started`` when the run started), after deleting a ``results.json`` there (one of an
    earlier attempt: the directory shows its latest). ``xmr report`` lists such jobs as failed; a
    later successful run of the job removes the file."""
    seed = cfg.get("seed") if isinstance(cfg, DictConfig) else None
    record = {
        "format": "xmr-failed/1",
        "error": f"{type(exc).__name__}: {exc}",
        "traceback": "".join(traceback.format_exception(type(exc), exc, exc.__traceback__)),
        "config": _plain(cfg),
        "seed": int(seed) if isinstance(seed, int) else seed,
        "provenance": collect_provenance(started),
    }
    path = Path(out) / FAILED_FILE
    remove_if_exists(Path(out) / RESULTS_FILE)
    try:
        write_record(path, record)
    except OSError as err:  # a full disk, say: report it, never mask the job's own error
        log.error(
            "%s: could not be written (%s); the run failed with %s", path, err, record["error"]
        )
    return path


def test_record(
    cfg: DictConfig,
    module: RankingModule,
    dm: XMRDataModule,
    out: Path,
    *,
    method: str,
    trainer: L.Trainer | None = None,
    accelerator: str = "cpu",
    save_predictions: bool = True,
    **meta: Any,
) -> dict[str, Any]:
    """Test ``module`` the one way ``xmr train``, ``xmr eval`` and ensemble members share: the
    list protocol by :func:`run_test_loop` (``trainer``, or a bare one on ``accelerator``), the
    ``protocol`` group's full-gallery evaluation, predictions of both protocols written to ``out``
    (when ``save_predictions``). Returns the results record (:func:`results_record` with ``meta``:
    ``val_metrics``, ``checkpoint``, ``epochs_run``, ``best_val``, ``started``; plus
    ``full_gallery``); the caller writes it with :func:`write_record`."""
    merged = run_test_loop(module, dm, trainer, accelerator=accelerator)
    predictions = write_predictions(out, module.predictions) if save_predictions else {}
    full, full_info, outcomes = run_protocol(cfg, module.nets, dm.store)  # metrics.full_gallery
    if save_predictions:
        predictions.update(write_full_predictions(out, outcomes))
    merged.update(full)
    results = results_record(
        cfg=cfg,
        method=method,
        test_metrics=merged,
        predictions=predictions,
        store=dm.store,
        **meta,
    )
    if full_info is not None:
        results["full_gallery"] = full_info
    return results


@dataclass
class RestoredRun:
    """A run rebuilt by :func:`restore_run`: its config, data module (set up), module (weights
    loaded) and the checkpoint they came from (None for a model without parameters)."""

    cfg: DictConfig
    dm: XMRDataModule
    module: RankingModule
    checkpoint: Path | None


def run_checkpoint(run_dir: str | Path) -> Path:
    """The checkpoint a finished run was tested with: the one its ``results.json`` names, found
    in ``run_dir`` when the directory was moved (``<run_dir>/checkpoints/<name>`` when the named
    path lies outside ``run_dir`` and that file exists); ``<run_dir>/checkpoints/best.ckpt``
    without a ``results.json`` naming one."""
    run_dir = Path(run_dir)
    default = run_dir / "checkpoints" / "best.ckpt"
    try:
        named = json.loads((run_dir / RESULTS_FILE).read_text(encoding="utf-8")).get("checkpoint")
    except (OSError, ValueError, AttributeError):
        return default
    if not named:
        return default
    path = Path(str(named))
    if not path.is_absolute():
        return run_dir / path
    inside = path.resolve() == run_dir.resolve() or run_dir.resolve() in path.resolve().parents
    moved = run_dir / "checkpoints" / path.name
    if not inside and moved.is_file():
        return moved
    return path


def build_run(cfg: DictConfig, *, prepare: bool = True) -> tuple[XMRDataModule, RankingModule]:
    """The data module (set up) and module of ``cfg``, validated like a new run and seeded: what
    a run is tested with. ``prepare``: generate a missing synthetic store and mine missing lists
    first (``XMRDataModule.prepare_data``); ``False`` uses only what is on disk (a missing store
    or lists directory raises its :class:`~xmr.utils.errors.UserError`)."""
    validate_config(cfg)
    L.seed_everything(int(cfg.seed), workers=True)
    dm: XMRDataModule = instantiate(cfg.data, where="data")
    if prepare:
        dm.prepare_data()
    dm.setup()
    return dm, build_module(cfg, dm)


def restore_run(
    run_dir: str | Path, overrides: list[str] | None = None, ckpt: str | Path | None = None
) -> RestoredRun:
    """Rebuild the run of ``run_dir`` from its ``config.yaml`` (with dotted ``overrides`` on top),
    validated like a new run, and load ``ckpt`` (default, when its model has parameters: the
    checkpoint its ``results.json`` names, :func:`run_checkpoint`)."""
    run_dir = Path(run_dir)
    cfg_path = run_dir / CONFIG_FILE
    if not cfg_path.exists():
        raise FileNotFoundError(f"{cfg_path}: no saved config — is {run_dir} an xmr run directory?")
    cfg: DictConfig = OmegaConf.load(cfg_path)  # type: ignore[assignment]
    if overrides:
        cfg = OmegaConf.merge(cfg, OmegaConf.from_dotlist(overrides))  # type: ignore[assignment]
    dm, module = build_run(cfg)
    ckpt_path: Path | None = Path(ckpt) if ckpt else None
    if ckpt_path is None and scorer_kind(cfg.model).fits:
        ckpt_path = run_checkpoint(run_dir)
    if ckpt_path is not None:
        if not ckpt_path.exists():
            raise FileNotFoundError(f"{ckpt_path}: checkpoint not found")
        load_weights(module, ckpt_path)
    return RestoredRun(cfg, dm, module, ckpt_path)
