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
- A run that raises writes ``failed.json`` (``{"error": "<Type>: <message>", "traceback",
  "config", "seed"}``, secrets scrubbed) instead of ``results.json`` and re-raises; a later
  success removes it. Under ``-m`` Hydra's basic launcher still runs the sweep's other jobs and
  exits non-zero at the end (it raises the first job error after the batch).
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
    RNGStateCallback,
    last_checkpoint_callback,
    resume_checkpoint,
    resume_hint,
)
from xmr.data.datamodule import XMRDataModule
from xmr.models.build import build_module, load_weights
from xmr.models.module import RankingModule
from xmr.runs.lifecycle import (
    CONFIG_FILE,
    FAILED_FILE,
    RESULTS_FILE,
    output_dir_of,
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
from xmr.utils.runtime import torch_runtime

log = logging.getLogger(__name__)


def train(cfg: DictConfig) -> dict[str, Any]:
    """Fit (when the model has parameters), test on the best checkpoint, write results.

    On an error the run writes ``failed.json`` (:func:`write_failure`) into its directory instead
    of ``results.json`` and re-raises; a successful run removes a stale ``failed.json``. Ctrl-C
    raises :class:`Interrupted` saying how to resume (no ``failed.json``: nothing failed).
    """
    quiet_library_noise()
    try:
        with torch_runtime(cfg):
            return _train(cfg)
    except KeyboardInterrupt as exc:
        raise Interrupted(resume_hint(output_dir_of(cfg))) from exc
    except Exception as exc:
        write_failure(output_dir_of(cfg), cfg, exc)
        raise


def _train(cfg: DictConfig) -> dict[str, Any]:
    validate_config(cfg)
    out = output_dir_of(cfg)
    done = finished_results(out, cfg)
    if done is not None:  # a sweep rerun: this job already finished with the same config
        log.info("%s: already finished (results.json present); skipping", out)
        return done
    out.mkdir(parents=True, exist_ok=True)
    write_record(out / CONFIG_FILE, cfg)
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
        results = _fit_and_test(cfg, out, dm, module, callbacks, loggers)
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
) -> dict[str, Any]:
    trainer: L.Trainer = instantiate(
        cfg.trainer,
        where="trainer",
        callbacks=callbacks,
        logger=loggers or False,
        plugins=[AtomicCheckpointIO()],
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
        with _interrupts_raised(trainer):
            trainer.fit(module, datamodule=dm, ckpt_path=resume, weights_only=True)
        best = getattr(trainer.checkpoint_callback, "best_model_path", "")
        best_ckpt = Path(best) if best else None
        score = getattr(trainer.checkpoint_callback, "best_model_score", None)
        best_val = float(score) if score is not None else None
        if best_ckpt and best_ckpt.exists():
            load_weights(module, best_ckpt)

    results: dict[str, Any] = {}
    if cfg.get("test", True):
        val = {k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("val/")}
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
            )
        if trainer.is_global_zero:
            results = write_record(out / RESULTS_FILE, results)
            remove_if_exists(out / FAILED_FILE)
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
