"""Train a ranker (or evaluate a parameter-free scorer) and write ``results.json``.

    python -m xmr.train                      # synthetic demo store, NeuralNDCG, both directions
    python -m xmr.train loss=listnet seed=3
    python -m xmr.train experiment=paper     # the paper's settings
    xmr train model=cosine                   # CLIP-cosine baseline on the same test lists

A run's directory holds ``config.yaml`` (resolved), ``checkpoints/{best,last}.ckpt``,
``metrics.jsonl`` (per-epoch logged values), ``predictions_{t2i,i2t}.npz`` and ``results.json``
(see :func:`xmr.runs.results.write_results`). Starting the same command again resumes from
``checkpoints/last.ckpt`` when the run did not finish.

Reliability (tests/test_resume.py, tests/test_determinism.py):

- ``last.ckpt`` is written at the end of every epoch (:func:`last_checkpoint_callback`),
  atomically (:class:`AtomicCheckpointIO`), with the RNG and DataLoader-generator states
  (:class:`RNGStateCallback`); a run killed at any point and started again with the same command
  redoes at most the epoch in progress and ends bit-identical to an uninterrupted run on CPU.
- A run that raises writes ``failed.json`` (``{"error": "<Type>: <message>", "traceback",
  "config", "seed"}``, secrets scrubbed) instead of ``results.json`` and re-raises; a later
  success removes it. Under ``-m`` Hydra's basic launcher still runs the sweep's other jobs and
  exits non-zero at the end (it raises the first job error after the batch).
- ``config.yaml`` and ``results.json`` hold the config with secrets scrubbed
  (:func:`xmr.utils.secrets.scrub_secrets`). Hydra's own ``.hydra/overrides.yaml`` records the command
  line verbatim: pass W&B keys through the environment (``WANDB_API_KEY``), never as overrides.
"""

from __future__ import annotations

import logging
import random
import sys
import traceback
from pathlib import Path
from typing import Any

import hydra
import lightning as L
import numpy as np
import torch
from hydra.core.hydra_config import HydraConfig
from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO
from lightning.pytorch.callbacks import ModelCheckpoint
from omegaconf import DictConfig, OmegaConf

from xmr.data.datamodule import XMRDataModule
from xmr.data.store import FeatureStore
from xmr.metrics.full_gallery import run_protocol
from xmr.models.module import RankingModule, run_test_loop
from xmr.runs.loggers import (
    build_loggers,
    finish_loggers,
    log_config,
    log_final_results,
)
from xmr.runs.naming import run_method
from xmr.runs.results import finished_results, write_predictions, write_results
from xmr.utils.config import validate_config
from xmr.utils.instantiate import ConfigError, instantiate
from xmr.utils.io import atomic_write, atomic_write_json, atomic_write_text, remove_if_exists
from xmr.utils.paths import CONF_DIR
from xmr.utils.runtime import torch_runtime
from xmr.utils.secrets import scrub_secrets

log = logging.getLogger(__name__)


def output_dir_of(cfg: DictConfig) -> Path:
    """The run directory: Hydra's output dir when running under Hydra, else ``paths.output_dir``."""
    if HydraConfig.initialized():
        return Path(HydraConfig.get().runtime.output_dir)
    return Path(str(cfg.paths.output_dir))


def build_module(cfg: DictConfig, dm: XMRDataModule) -> RankingModule:
    """The LightningModule for ``cfg``: one network per direction of ``dm``, or, for a pairwise
    baseline (``model.pairwise: true``), one model shared by both directions that trains on
    (image, caption) pairs (:meth:`XMRDataModule.use_pair_training`)."""
    if cfg.model.get("pairwise", False):
        store = dm.store or FeatureStore.open(dm.store_path, check_norms=False)
        factory = instantiate(cfg.model.net, where="model.net")
        # t2i orientation: query = text, candidate = image (xmr.models.baselines).
        pair_model = factory(
            query_dim=store.text_dim, cand_dim=store.image_dim, num_classes=store.num_images
        )
        dm.use_pair_training(int(cfg.model.get("pair_batch_size", 128)))
        return RankingModule(
            networks={d: pair_model.view(d) for d in dm.directions},
            loss=None,
            optimizer=instantiate(cfg.optimizer, where="optimizer"),
            scheduler=instantiate(cfg.scheduler, where="scheduler")
            if cfg.get("scheduler")
            else None,
            ks=cfg.get("ks", (1, 5, 10)),
            pair_model=pair_model,
        )
    if list(cfg.model.get("net", {}).get("interaction") or []) and not dm.joint_space:
        raise ConfigError(
            f"model.net.interaction={list(cfg.model.net.interaction)}: interaction features "
            f"compare query and candidate in one space, but {dm.store_path} has joint_space: false"
        )
    networks = {}
    for direction in dm.directions:
        query_dim, cand_dim = dm.dims(direction)
        factory = instantiate(cfg.model.net, where="model.net")
        networks[direction] = factory(query_dim=query_dim, cand_dim=cand_dim)
    trainable = bool(cfg.model.get("trainable", True))
    return RankingModule(
        networks=networks,
        loss=instantiate(cfg.loss, where="loss") if trainable else None,
        optimizer=instantiate(cfg.optimizer, where="optimizer") if trainable else None,
        scheduler=instantiate(cfg.scheduler, where="scheduler") if cfg.get("scheduler") else None,
        ks=cfg.get("ks", (1, 5, 10)),
    )


def load_weights(module: torch.nn.Module, ckpt: Path) -> None:
    """Load a checkpoint's weights safely (``weights_only=True``: no pickled code runs)."""
    state = torch.load(ckpt, map_location="cpu", weights_only=True)
    module.load_state_dict(state["state_dict"])


# -- run lifecycle: resumable, atomic, failures recorded ---------------------------------------
FAILED_FILE = "failed.json"
LAST_CHECKPOINT = "last"  # checkpoints/last.ckpt


def _loader_generators(loaders: Any) -> list[torch.Generator]:
    """The ``torch.Generator`` of every DataLoader (and its sampler) in ``loaders`` (a loader, a
    CombinedLoader, or dicts/lists of them), in a fixed order."""
    found: list[torch.Generator] = []

    def walk(node: Any) -> None:
        if isinstance(node, torch.utils.data.DataLoader):
            sampler = node.sampler
            batch_sampler = getattr(node, "batch_sampler", None)
            for owner in (node, sampler, getattr(batch_sampler, "sampler", None)):
                g = getattr(owner, "generator", None)
                if isinstance(g, torch.Generator) and all(g is not h for h in found):
                    found.append(g)
        elif isinstance(node, dict):
            for key in sorted(node):
                walk(node[key])
        elif isinstance(node, (list, tuple)):
            for item in node:
                walk(item)
        elif hasattr(node, "iterables"):  # lightning CombinedLoader
            walk(node.iterables)

    walk(loaders)
    return found


class RNGStateCallback(L.Callback):
    """Saves every random state a training epoch draws from in each checkpoint, and puts it back
    when a run resumes, so that a resumed run continues exactly as an uninterrupted one.

    Lightning restores model, optimizer, scheduler, loops and callbacks by itself, but no random
    state. Saved: the torch (CPU and CUDA), numpy and python global RNGs (dropout and anything
    else) and the state of each training DataLoader's shuffling ``torch.Generator`` (the data
    module gives each shuffled loader its own; without its state a resumed run would replay epoch
    0's order). Restored at ``on_train_start`` — after the loaders exist, before the first batch is
    drawn. Everything is stored as tensors and plain python values, so checkpoints load with
    ``weights_only=True``.
    """

    state_key = "xmr.rng"  # type: ignore[assignment]

    def __init__(self) -> None:
        self._trainer: L.Trainer | None = None
        self._pending: dict[str, Any] | None = None

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        self._trainer = trainer

    def state_dict(self) -> dict[str, Any]:
        kind, keys, pos, has_gauss, cached = np.random.get_state()  # type: ignore[misc]
        state: dict[str, Any] = {
            "torch": torch.get_rng_state(),
            "numpy": {
                "kind": str(kind),
                "keys": torch.from_numpy(np.asarray(keys, dtype=np.int64)),
                "pos": int(pos),
                "has_gauss": int(has_gauss),
                "cached_gaussian": float(cached),
            },
            "python": random.getstate(),
            "loaders": [],
        }
        if self._trainer is not None and self._trainer.training:
            loaders = self._trainer.train_dataloader
            state["loaders"] = [g.get_state() for g in _loader_generators(loaders)]
        if torch.cuda.is_available() and torch.cuda.is_initialized():
            state["cuda"] = torch.cuda.get_rng_state_all()
        return state

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._pending = dict(state_dict)
        # Lightning creates the first resumed epoch's loader iterators right after asking the
        # data module for its train loader (FitLoop.setup_data), before any hook runs; an
        # iterator draws its base seed from the loader's generator as it is created. So the
        # generator states go in as the loaders are made: wrap train_dataloader once.
        dm = getattr(self._trainer, "datamodule", None)
        states = list(state_dict.get("loaders") or [])
        if dm is None or not states:
            return
        make_loaders = dm.train_dataloader

        def train_dataloader_resumed() -> Any:
            loaders = make_loaders()
            generators = _loader_generators(loaders)
            if len(generators) == len(states):
                for g, g_state in zip(generators, states, strict=True):
                    g.set_state(g_state)
            else:
                log.warning(
                    "resume: the checkpoint holds %d DataLoader generator states, the run has "
                    "%d shuffled loaders; the data order will differ from an uninterrupted run",
                    len(states),
                    len(generators),
                )
            del dm.train_dataloader  # back to the class's method
            return loaders

        dm.train_dataloader = train_dataloader_resumed

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        state, self._pending = self._pending, None
        if state is None:
            return
        # The global RNGs go back as late as possible: nothing between here and the first batch
        # draws from them, in a fresh epoch as in a resumed one.
        torch.set_rng_state(state["torch"])
        n = state["numpy"]
        np.random.set_state(
            (
                n["kind"],
                n["keys"].numpy().astype(np.uint32),
                n["pos"],
                n["has_gauss"],
                n["cached_gaussian"],
            )
        )
        version, internal, gauss = state["python"]
        random.setstate((version, tuple(internal), gauss))
        if "cuda" in state and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(state["cuda"])


def last_checkpoint_callback(out: Path) -> ModelCheckpoint:
    """``<out>/checkpoints/last.ckpt``, overwritten at the end of every training epoch (after
    validation, so it holds the monitored checkpoint's best-so-far and early stopping's state).

    Lightning's ``save_last=True`` is not enough for resuming: in Lightning 2.x it writes
    ``last.ckpt`` only in epochs where a top-k checkpoint was saved, i.e. where the monitored
    metric improved, so a killed run would redo every epoch since its best one.
    """
    return ModelCheckpoint(
        dirpath=str(out / "checkpoints"),
        filename=LAST_CHECKPOINT,
        monitor=None,
        save_top_k=1,
        every_n_epochs=1,
        save_on_train_epoch_end=True,
        enable_version_counter=False,
    )


class AtomicCheckpointIO(TorchCheckpointIO):
    """Checkpoint saving into a temporary sibling, fsync, rename (:func:`xmr.utils.io.atomic_write`).

    Lightning's ``_atomic_save`` writes through an fsspec transaction whose temporary file lives in
    the system temp dir; when that is another filesystem the final move is a copy, so a kill can
    leave a truncated ``last.ckpt`` (and the temp file leaks). Here the rename stays inside the
    checkpoint directory: a reader sees the old checkpoint or the new one, never a partial one.
    """

    def save_checkpoint(
        self, checkpoint: dict[str, Any], path: Any, storage_options: Any | None = None
    ) -> None:
        if storage_options is not None:
            raise TypeError(
                f"AtomicCheckpointIO: storage_options not supported ({storage_options})"
            )

        def _save(tmp: Path) -> None:
            with open(tmp, "wb") as fh:
                torch.save(checkpoint, fh)

        atomic_write(Path(path), _save)


def _plain_config(cfg: DictConfig) -> Any:
    """The config as plain containers with secrets scrubbed (resolved when it resolves)."""
    try:
        plain = OmegaConf.to_container(cfg, resolve=True)
    except Exception:  # an interpolation that cannot resolve may be the failure itself
        plain = OmegaConf.to_container(cfg, resolve=False)
    return scrub_secrets(plain)


def write_failure(out: Path, cfg: DictConfig, exc: BaseException) -> Path:
    """Write ``<out>/failed.json``: ``{"error": "<Type>: <message>", "traceback", "config",
    "seed"}`` (config resolved when possible, secrets scrubbed). ``xmr report`` lists such jobs as
    failed; a later successful run of the job removes the file."""
    seed = cfg.get("seed") if isinstance(cfg, DictConfig) else None
    record = {
        "format": "xmr-failed/1",
        "error": f"{type(exc).__name__}: {exc}",
        "traceback": "".join(traceback.format_exception(type(exc), exc, exc.__traceback__)),
        "config": _plain_config(cfg),
        "seed": int(seed) if isinstance(seed, int) else seed,
    }
    return atomic_write_json(Path(out) / FAILED_FILE, record)


def train(cfg: DictConfig) -> dict[str, Any]:
    """Fit (when the model has parameters), test on the best checkpoint, write results.

    On an error the run writes ``failed.json`` (:func:`write_failure`) into its directory instead
    of ``results.json`` and re-raises; a successful run removes a stale ``failed.json``.
    """
    try:
        with torch_runtime(cfg):
            return _train(cfg)
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
    atomic_write_text(out / "config.yaml", OmegaConf.to_yaml(_plain_config(cfg)))
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
    loggers = build_loggers(cfg)
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
    if trainer.is_global_zero:
        log_config(loggers, cfg)

    best_ckpt: Path | None = None
    best_val: float | None = None
    trainable = any(p.requires_grad for p in module.parameters())
    if trainable and cfg.get("train", True):
        last = out / "checkpoints" / f"{LAST_CHECKPOINT}.ckpt"
        resume = last if (cfg.get("resume", True) and last.exists()) else None
        if resume:
            log.info("resuming from %s", resume)
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
        results["config"] = scrub_secrets(results["config"])
        if trainer.is_global_zero:
            atomic_write_json(out / "results.json", results)
            remove_if_exists(out / FAILED_FILE)
            log_final_results(loggers, results)
    return results


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
    ``protocol`` group's full-gallery evaluation, predictions written to ``out`` (when
    ``save_predictions``). Returns the results record (:func:`write_results` with ``meta``:
    ``val_metrics``, ``checkpoint``, ``epochs_run``, ``best_val``; plus ``full_gallery``); the
    caller writes it."""
    merged = run_test_loop(module, dm, trainer, accelerator=accelerator)
    predictions = write_predictions(out, module.predictions) if save_predictions else {}
    full, full_info = run_protocol(cfg, module.nets, dm.store)  # xmr.metrics.full_gallery
    merged.update(full)
    results = write_results(
        out,
        cfg=cfg,
        method=method,
        test_metrics=merged,
        predictions=predictions,
        store=dm.store,
        write=False,
        **meta,
    )
    if full_info is not None:
        results["full_gallery"] = full_info
    return results


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
    value = results.get(str(cfg.monitor).replace("val/", "best_val/"))
    return float(value) if value is not None else None


if __name__ == "__main__":
    main()
