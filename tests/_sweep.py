"""The tiny sweep shared by the report, HTML-report and sweep tests (conftest's ``tiny_sweep``).

2 losses x 2 seeds + CLIP cosine, 1 epoch each, on a tiny SYNTHETIC store, trained in-process
through ``xmr.train.train``, plus one interrupted job (config, no results) and one failed job
(``failed.json``).
"""

from __future__ import annotations

import json
from pathlib import Path

import yaml
from _compose import make_cfg
from omegaconf import DictConfig

from xmr.data.synth import PRESETS, write_synthetic_store
from xmr.train import train

LOSSES = ("listnet", "ranknet")
SEEDS = (0, 1)


def _base_overrides(root: Path) -> list[str]:
    return [
        "data=synthetic_tiny",
        f"data.store={root / 'store'}",
        "data.synth=null",
        "trainer.max_epochs=1",
        "trainer.enable_progress_bar=false",
    ]


def job_cfg(root: Path, *extra: str, run: str) -> DictConfig:
    """The config of a job of the tiny sweep (``run``: its directory below ``root/runs``)."""
    return make_cfg(root, [*_base_overrides(root), *extra], f"runs/{run}")


def tiny_sweep_root(base: Path) -> Path:
    """Build the tiny sweep below ``base`` once (a marker file makes later calls free)."""
    root = base / "xmr_tiny_sweep"
    if (root / "done").exists():
        return root
    root.mkdir(parents=True, exist_ok=True)
    if not (root / "store").exists():
        write_synthetic_store(root / "store", PRESETS["tiny"])
    for loss in LOSSES:
        for seed in SEEDS:
            train(job_cfg(root, f"loss={loss}", f"seed={seed}", run=f"loss={loss},seed={seed}"))
    train(job_cfg(root, "model=cosine", run="clip_cosine"))
    runs = root / "runs"
    # A job that was interrupted: its config is written, no results.
    config = yaml.safe_load((runs / "loss=listnet,seed=0" / "config.yaml").read_text())
    config["seed"] = 2
    (runs / "loss=listnet,seed=2").mkdir()
    (runs / "loss=listnet,seed=2" / "config.yaml").write_text(yaml.safe_dump(config))
    # A job that failed: failed.json as train.py writes it.
    config["loss"] = yaml.safe_load((runs / "loss=ranknet,seed=0" / "config.yaml").read_text())[
        "loss"
    ]
    error = "Traceback (most recent call last):\n  ...\nRuntimeError: loss is NaN at epoch 3"
    (runs / "loss=ranknet,seed=2").mkdir()
    (runs / "loss=ranknet,seed=2" / "failed.json").write_text(
        json.dumps({"error": error, "config": config})
    )
    (root / "done").write_text("ok")
    return root
