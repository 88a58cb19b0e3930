"""A run's LightningModule from its config and data module, and its weights from a checkpoint."""

from __future__ import annotations

from pathlib import Path

import torch
from omegaconf import DictConfig

from xmr.data.datamodule import XMRDataModule
from xmr.models.module import RankingModule
from xmr.models.scorer import scorer_kind
from xmr.utils.instantiate import instantiate


def build_module(cfg: DictConfig, dm: XMRDataModule) -> RankingModule:
    """The LightningModule for ``cfg``: the scorers of the model kind ``cfg.model`` names
    (:meth:`xmr.models.scorer.ScorerKind.build_scorers`) with, when the kind has parameters to
    fit, the optimizer and — when it trains on lists — the ranking loss ``cfg.loss``."""
    kind = scorer_kind(cfg.model)
    scorers = kind.build_scorers(cfg.model, dm)
    trains_on_lists = kind.fits and kind.trains_on == "lists"
    return RankingModule(
        networks=scorers.networks,
        loss=instantiate(cfg.loss, where="loss") if trains_on_lists else None,
        optimizer=instantiate(cfg.optimizer, where="optimizer") if kind.fits else None,
        scheduler=instantiate(cfg.scheduler, where="scheduler") if cfg.get("scheduler") else None,
        ks=cfg.get("ks", (1, 5, 10)),
        pair_model=scorers.shared if kind.trains_on == "pairs" else None,
    )


def load_weights(module: torch.nn.Module, ckpt: Path) -> None:
    """Load a checkpoint's weights safely (``weights_only=True``: no pickled code runs)."""
    state = torch.load(ckpt, map_location="cpu", weights_only=True)
    module.load_state_dict(state["state_dict"])
