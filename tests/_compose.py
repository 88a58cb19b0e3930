"""Composing ``conf/train.yaml`` in tests: one helper for every test file."""

from __future__ import annotations

from pathlib import Path

from hydra import compose, initialize_config_dir
from omegaconf import DictConfig, open_dict

REPO = Path(__file__).resolve().parents[1]
CONF = REPO / "conf"


def make_cfg(tmp: Path, overrides: list[str], run: str = "run") -> DictConfig:
    """``conf/train.yaml`` with ``overrides``; generated data, logs and the run dir under ``tmp``
    (``tmp/data``, ``tmp/logs``, ``tmp/<run>``), so no test writes into the checkout."""
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose("train", overrides=overrides)
    with open_dict(cfg):
        cfg.paths.root_dir = str(REPO)
        cfg.paths.data_dir = str(tmp / "data")
        cfg.paths.log_dir = str(tmp / "logs")
        cfg.paths.output_dir = str(tmp / run)
    return cfg


def tiny_overrides(store: Path, *extra: str) -> list[str]:
    """Overrides for a quick run on ``store`` with data=synthetic_tiny's settings (2 epochs)."""
    return [
        "data=synthetic_tiny",
        f"data.store={store}",
        "data.synth=null",
        "trainer.max_epochs=2",
        "trainer.enable_progress_bar=false",
        *extra,
    ]
