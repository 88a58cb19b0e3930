"""Train a ranker (or evaluate a parameter-free scorer) and write ``results.json``.

    python -m xmr.train                      # synthetic demo store, NeuralNDCG, both directions
    python -m xmr.train loss=listnet seed=3
    python -m xmr.train experiment=paper     # the paper's settings
    xmr train model=cosine                   # CLIP-cosine baseline on the same test lists

A run's directory holds ``config.yaml`` (resolved), ``checkpoints/{best,last}.ckpt``,
``metrics.jsonl`` (per-epoch logged values), ``predictions_{t2i,i2t}.npz`` and ``results.json``
(see :mod:`xmr.runs.results`). Starting the same command again resumes from
``checkpoints/last.ckpt`` when the run did not finish.

Reliability (tests/test_resume.py, tests/test_determinism.py):

- ``last.ckpt`` is written at the end of every epoch, atomically, with every random state
  (:mod:`xmr.callbacks.resume`); a run killed at any point and started again with the same
  command redoes at most the epoch in progress and ends bit-identical to an uninterrupted run on
  CPU.
- A run killed after its last epoch (before ``results.json``), or whose ``results.json`` could
  not be written, or whose directory was moved, records on the rerun the same ``val/*``,
  ``best_val/*`` and ``test/*`` values as an uninterrupted run (the last validation travels in
  ``last.ckpt``; checkpoint paths follow the directory: :mod:`xmr.callbacks.resume`).
- A run that starts fresh (no ``last.ckpt``, or ``resume=false``) deletes the checkpoints of an
  earlier attempt; checkpoint names are never versioned (no ``best-v1.ckpt``), and ``xmr eval``
  loads the checkpoint ``results.json`` names.
- One record per epoch after any number of resumes, in ``metrics.jsonl`` and ``csv/metrics.csv``
  (:class:`xmr.callbacks.history.MetricsHistoryCallback`, :class:`xmr.runs.loggers.RunCSVLogger`);
  temporaries of dead processes in the run directory are deleted when it starts again.
- A run that raises writes ``failed.json`` (``{"error": "<Type>: <message>", "traceback",
  "config", "seed"}``, secrets scrubbed) instead of ``results.json`` and re-raises; a later
  success removes it. The two never stand side by side (the rules:
  :mod:`xmr.runs.lifecycle`). Under ``-m`` Hydra's basic launcher still runs the sweep's other
  jobs and exits non-zero at the end (it raises the first job error after the batch).
- ``results.json`` and ``failed.json`` record the run's provenance (xmr version, git commit and
  dirty flag, library versions, command line, host, start time: :mod:`xmr.utils.provenance`).
- A training loss or weights that become NaN/inf stop the run with
  :class:`xmr.models.module.TrainingDivergedError` (epoch, batch, likely cause): it fails as above.
  Training refuses a store without validation images
  (:meth:`xmr.data.datamodule.XMRDataModule.check_validation`).
- One process per run directory (:func:`xmr.runs.lifecycle.claim_run_dir`): a second
  ``xmr train`` into a directory in use exits non-zero at once, naming the holder, and writes
  nothing there (:class:`xmr.runs.lifecycle.RunDirLock` claims it before Hydra writes).
- A run directory left by another config (a sweep rerun whose jobs got other settings) is moved
  aside to ``<run dir>.old-<time>`` and the run starts fresh: a checkpoint is only ever resumed
  by the config that wrote it (:func:`xmr.runs.lifecycle.set_aside_changed_run`).
- A full disk fails the run with ``no space left on device at <file>``
  (:class:`xmr.utils.io.NoSpaceLeftError`), in ``failed.json`` too.
- ``config.yaml``, ``results.json`` and ``failed.json`` are written with secrets scrubbed
  (:func:`xmr.runs.lifecycle.write_record`). Hydra's own ``.hydra/overrides.yaml`` records the command
  line verbatim: pass W&B keys through the environment (``WANDB_API_KEY``), never as overrides.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import hydra
import lightning as L
from lightning.pytorch.callbacks import ProgressBar
from lightning.pytorch.utilities import rank_zero_only
from omegaconf import DictConfig

from xmr.callbacks.progress import progress_bar
from xmr.callbacks.resume import (
    AtomicCheckpointIO,
    LastValidationCallback,
    RNGStateCallback,
    clear_checkpoints,
    last_checkpoint_callback,
    resume_checkpoint,
    resume_hint,
)
from xmr.data.datamodule import XMRDataModule
from xmr.models.build import build_module, load_weights
from xmr.models.module import RankingModule
from xmr.runs.lifecycle import (
    FAILED_FILE,
    RESULTS_FILE,
    begin_attempt,
    claim_run_dir,
    output_dir_of,
    set_aside_changed_run,
    test_record,
    write_failure,
    write_record,
)
from xmr.runs.loggers import (
    build_loggers,
    finish_loggers,
    log_config,
    log_final_results,
    log_interval,
    logger_callbacks,
)
from xmr.runs.naming import run_method
from xmr.runs.results import finished_results
from xmr.runs.summary import summary_lines
from xmr.utils.config import validate_config
from xmr.utils.console import quiet_library_noise, run_command
from xmr.utils.errors import Interrupted
from xmr.utils.instantiate import instantiate
from xmr.utils.io import remove_if_exists
from xmr.utils.paths import CONF_DIR
from xmr.utils.provenance import utc_now
from xmr.utils.runtime import torch_runtime

log = logging.getLogger(__name__)


def train(cfg: DictConfig) -> dict[str, Any]:
    """Fit (when the model has parameters), test on the best checkpoint, write results.

    On an error the run writes ``failed.json`` (:func:`write_failure`) into its directory instead
    of ``results.json`` and re-raises; a successful run removes a stale ``failed.json``. An error
    after this attempt wrote its ``results.json`` leaves the results and writes no
    ``failed.json`` (see :mod:`xmr.runs.lifecycle`). A run directory in use by another process
    raises :class:`xmr.runs.lifecycle.RunDirBusy` before anything is written
    (:func:`claim_run_dir`). Ctrl-C raises :class:`Interrupted` saying how to resume (no
    ``failed.json``: nothing failed).
    """
    quiet_library_noise()
    out = output_dir_of(cfg)
    lock = claim_run_dir(out)
    published: list[Path] = []  # results.json, once this attempt has written it
    started = utc_now()  # provenance.started of the records
    try:
        with torch_runtime(cfg):
            return _train(cfg, out, published, started)
    except KeyboardInterrupt as exc:
        raise Interrupted(resume_hint(out)) from exc
    except Exception as exc:
        if published:
            log.error("%s written, then the run failed (%s); no failed.json", published[0], exc)
        else:
            write_failure(out, cfg, exc, started=started)
        raise
    finally:
        if lock is not None:
            lock.release()


def _train(cfg: DictConfig, out: Path, published: list[Path], started: str) -> dict[str, Any]:
    validate_config(cfg)
    done = finished_results(out, cfg)
    if done is not None:  # a sweep rerun: this job already finished with the same config
        log.info("%s: already finished (results.json present); skipping", out)
        remove_if_exists(out / FAILED_FILE)
        return done
    set_aside_changed_run(out, cfg)  # another config's run: never resume its checkpoint
    begin_attempt(out, cfg)
    L.seed_everything(int(cfg.seed), workers=True)

    dm: XMRDataModule = instantiate(cfg.data, where="data")
    dm.prepare_data()
    dm.setup()
    module = build_module(cfg, dm)
    callbacks = [
        instantiate(c, where=f"callbacks.{name}")
        for name, c in (cfg.get("callbacks") or {}).items()
        if c is not None
    ]
    callbacks.append(RNGStateCallback())  # resumed runs continue the same random streams
    last_val = LastValidationCallback()  # a run resumed after its last epoch records it too
    callbacks.append(last_val)
    callbacks.append(last_checkpoint_callback(out))
    if cfg.trainer.get("enable_progress_bar", True) and not any(
        isinstance(c, ProgressBar) for c in callbacks
    ):
        callbacks.append(progress_bar())  # epochs from 1, like the history lines
    assert dm.store is not None
    loggers = build_loggers(cfg, synthetic=dm.store.synthetic)
    callbacks += logger_callbacks(loggers)
    exit_code = 1
    try:
        results = _fit_and_test(
            cfg, out, dm, module, callbacks, loggers, last_val, published, started
        )
        exit_code = 0
        return results
    finally:
        # Ends the W&B run of this job even on error, so multirun jobs never share a run.
        finish_loggers(loggers, exit_code=exit_code)


def _fit_and_test(
    cfg: DictConfig,
    out: Path,
    dm: XMRDataModule,
    module: RankingModule,
    callbacks: list[Any],
    loggers: list[Any],
    last_val: LastValidationCallback,
    published: list[Path],
    started: str,
) -> dict[str, Any]:
    # Training lists drawn anew every epoch (data.redraw_train_lists): the train loader is
    # rebuilt at the start of every epoch.
    reload = {"reload_dataloaders_every_n_epochs": 1} if dm.redraws_train_lists else {}
    trainer: L.Trainer = instantiate(
        cfg.trainer,
        where="trainer",
        callbacks=callbacks,
        logger=loggers or False,
        plugins=[AtomicCheckpointIO()],
        **reload,
    )
    # The training loss several times per epoch, whatever the epoch's length.
    per_rank = max(1, dm.train_batches_per_epoch() // max(1, int(trainer.world_size)))
    trainer.log_every_n_steps = log_interval(int(trainer.log_every_n_steps), per_rank)
    if trainer.is_global_zero:
        log_config(loggers, cfg, module)

    best_ckpt: Path | None = None
    best_val: float | None = None
    trainable = any(p.requires_grad for p in module.parameters())
    if trainable and cfg.get("train", True):
        resume = resume_checkpoint(out, enabled=bool(cfg.get("resume", True)))
        if resume:
            log.info("resuming from %s", resume)
        else:  # stale ones of an earlier attempt are never taken for this run's (every DDP
            # rank decides alike here, before any of them writes a checkpoint)
            clear_checkpoints(out)
        with _interrupts_raised(trainer):
            trainer.fit(module, datamodule=dm, ckpt_path=resume, weights_only=True)
        best = getattr(trainer.checkpoint_callback, "best_model_path", "")
        best_ckpt = Path(best) if best else None
        score = getattr(trainer.checkpoint_callback, "best_model_score", None)
        best_val = float(score) if score is not None else None
        if best_ckpt is not None:
            if not best_ckpt.is_file():
                raise FileNotFoundError(f"{best_ckpt}: the run's best checkpoint is missing")
            load_weights(module, best_ckpt)

    results: dict[str, Any] = {}
    if cfg.get("test", True):
        val = last_val.values(trainer)
        with _interrupts_raised(trainer):
            results = test_record(
                cfg,
                module,
                dm,
                out,
                method=run_method(cfg),
                trainer=trainer,
                save_predictions=trainer.is_global_zero,
                val_metrics=val,
                checkpoint=best_ckpt,
                epochs_run=int(trainer.current_epoch),
                best_val=best_val,
                started=started,
            )
        if trainer.is_global_zero:
            remove_if_exists(out / FAILED_FILE)  # first: a kill in between leaves neither
            results = write_record(out / RESULTS_FILE, results)
            published.append(out / RESULTS_FILE)
            log_final_results(loggers, results)
    return results


@contextmanager
def _interrupts_raised(trainer: L.Trainer) -> Iterator[None]:
    """Lightning answers Ctrl-C inside ``fit``/``test`` with a graceful shutdown and
    ``sys.exit(1)``; turn that exit back into the ``KeyboardInterrupt`` it was."""
    try:
        yield
    except SystemExit:
        if trainer.interrupted:
            raise KeyboardInterrupt from None
        raise


def _make_relaunchable() -> None:
    """Let DDP's subprocess launcher re-run this job: it starts ``python sys.argv[0] ...`` for
    each extra rank, and ``xmr train`` leaves ``sys.argv[0] == "xmr train"``; point it here."""
    if not Path(sys.argv[0]).exists():
        sys.argv[0] = str(Path(__file__).resolve())


@hydra.main(version_base="1.3", config_path=CONF_DIR, config_name="train")
def main(cfg: DictConfig) -> float | None:
    """Hydra entry point; returns the monitored validation value (for sweepers such as Optuna)."""
    _make_relaunchable()
    results = train(cfg)
    if results and rank_zero_only.rank == 0:
        lines = summary_lines(
            results,
            output_dir_of(cfg),
            monitor=str(cfg.monitor),
            mode=str(cfg.get("monitor_mode", "max")),
            max_epochs=cfg.trainer.get("max_epochs"),
        )
        print("\n".join(lines), flush=True)
    value = results.get(str(cfg.monitor).replace("val/", "best_val/"))
    return float(value) if value is not None else None


if __name__ == "__main__":
    run_command("train", main)
