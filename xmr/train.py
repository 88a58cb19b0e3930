"""Train a ranker (or evaluate a parameter-free scorer) and write ``results.json``.

    python -m xmr.train                      # synthetic demo store, NeuralNDCG, both directions
    python -m xmr.train loss=listnet seed=3
    python -m xmr.train experiment=paper     # the paper's settings
    xmr train model=cosine                   # CLIP-cosine baseline on the same test lists

A run's directory holds ``config.yaml`` (resolved), ``checkpoints/{best,last}.ckpt``,
``metrics.jsonl`` (per-epoch logged values), ``predictions_{t2i,i2t}.npz`` and ``results.json``
(see :func:`xmr.results.write_results`). Starting the same command again resumes from
``checkpoints/last.ckpt`` when the run did not finish.
"""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path
from typing import Any

import hydra
import lightning as L
import torch
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf

from xmr.config import validate_config
from xmr.data.datamodule import XMRDataModule
from xmr.data.store import FeatureStore
from xmr.full_gallery import run_protocol
from xmr.loggers import build_loggers, finish_loggers, log_config, log_final_results
from xmr.models.module import RankingModule
from xmr.paths import CONF_DIR
from xmr.results import method_name, write_predictions, write_results
from xmr.utils.instantiate import ConfigError, instantiate
from xmr.utils.io import atomic_write_json, atomic_write_text

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


def run_method(cfg: DictConfig) -> str:
    """Row name of a run in reports: ``method`` when set; the model name for pairwise baselines
    (``dcca``, ``cmpm``, ...); else :func:`xmr.results.method_name` (the loss for rankers), with
    ``+cosine+product+absdiff``-style suffixes when the ranker uses interaction features."""
    if cfg.get("method"):
        return str(cfg.method)
    if cfg.model.get("pairwise", False):
        return str(cfg.model.get("name", "pair_baseline"))
    name = method_name(cfg)
    inter = list(cfg.model.get("net", {}).get("interaction") or [])
    return name + "".join(f"+{n}" for n in inter) if cfg.model.get("trainable", True) else name


def load_weights(module: torch.nn.Module, ckpt: Path) -> None:
    """Load a checkpoint's weights safely (``weights_only=True``: no pickled code runs)."""
    state = torch.load(ckpt, map_location="cpu", weights_only=True)
    module.load_state_dict(state["state_dict"])


def train(cfg: DictConfig) -> dict[str, Any]:
    """Fit (when the model has parameters), test on the best checkpoint, write results."""
    validate_config(cfg)
    out = output_dir_of(cfg)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / "config.yaml", OmegaConf.to_yaml(cfg, resolve=True))
    L.seed_everything(int(cfg.seed), workers=True)
    torch.set_num_threads(int(cfg.get("threads") or os.cpu_count() or 1))

    dm: XMRDataModule = instantiate(cfg.data, where="data")
    dm.prepare_data()
    dm.setup()
    module = build_module(cfg, dm)
    callbacks = [
        instantiate(c, where=f"callbacks.{name}")
        for name, c in (cfg.get("callbacks") or {}).items()
        if c is not None
    ]
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
        cfg.trainer, where="trainer", callbacks=callbacks, logger=loggers or False
    )
    if trainer.is_global_zero:
        log_config(loggers, cfg)

    best_ckpt: Path | None = None
    best_val: float | None = None
    trainable = any(p.requires_grad for p in module.parameters())
    if trainable and cfg.get("train", True):
        last = out / "checkpoints" / "last.ckpt"
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
        test_metrics = trainer.test(module, datamodule=dm, verbose=False)
        merged: dict[str, float] = {}
        for part in test_metrics:
            merged.update({k: float(v) for k, v in part.items()})
        predictions = write_predictions(out, module.predictions) if trainer.is_global_zero else {}
        val = {k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("val/")}
        full, full_info = run_protocol(cfg, module.nets, dm.store)  # xmr.full_gallery
        merged.update(full)
        results = write_results(
            out,
            cfg=cfg,
            method=run_method(cfg),
            test_metrics=merged,
            val_metrics=val,
            checkpoint=best_ckpt,
            predictions=predictions,
            store=dm.store,
            epochs_run=int(trainer.current_epoch),
            best_val=best_val,
            write=False,
        )
        if full_info is not None:
            results["full_gallery"] = full_info
        if trainer.is_global_zero:
            atomic_write_json(out / "results.json", results)
        if trainer.is_global_zero:
            log_final_results(loggers, results)
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
