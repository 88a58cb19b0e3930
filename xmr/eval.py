"""Evaluate a trained run on its test lists, rebuilt from the run's saved config + checkpoint.

    xmr eval run_dir=logs/train/runs/synthetic_demo/loss=listnet
    xmr eval run_dir=... ckpt=/path/to/other.ckpt data.lists_dir=/other/lists

Writes ``<out>/predictions_{t2i,i2t}.npz`` and ``<out>/eval_results.json`` (``out`` defaults to
the run directory) in the formats of :mod:`xmr.runs.results`, secrets scrubbed
(:func:`xmr.runs.lifecycle.write_record`). Overrides after ``run_dir`` apply on top
of the run's own config (e.g. evaluate on lists mined with other options).
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import Any

import lightning as L
from omegaconf import DictConfig, OmegaConf

from xmr.data.datamodule import XMRDataModule
from xmr.models.build import build_module, load_weights
from xmr.models.scorer import scorer_kind
from xmr.runs.lifecycle import EVAL_RESULTS_FILE, test_record, write_record
from xmr.runs.naming import run_method
from xmr.utils.config import validate_config
from xmr.utils.instantiate import instantiate

log = logging.getLogger(__name__)


def evaluate(
    run_dir: str | Path,
    overrides: list[str] | None = None,
    ckpt: str | Path | None = None,
    out: str | Path | None = None,
) -> dict[str, Any]:
    """Rebuild the run of ``run_dir`` (its ``config.yaml``), load ``ckpt`` (default: the run's
    best checkpoint), test it, and write predictions + ``eval_results.json``."""
    run_dir = Path(run_dir)
    cfg_path = run_dir / "config.yaml"
    if not cfg_path.exists():
        raise FileNotFoundError(f"{cfg_path}: no saved config — is {run_dir} an xmr run directory?")
    cfg: DictConfig = OmegaConf.load(cfg_path)  # type: ignore[assignment]
    if overrides:
        cfg = OmegaConf.merge(cfg, OmegaConf.from_dotlist(overrides))  # type: ignore[assignment]
    validate_config(cfg)
    out_dir = Path(out) if out else run_dir
    out_dir.mkdir(parents=True, exist_ok=True)
    L.seed_everything(int(cfg.seed), workers=True)
    dm: XMRDataModule = instantiate(cfg.data, where="data")
    dm.prepare_data()
    dm.setup()
    module = build_module(cfg, dm)
    ckpt_path: Path | None = Path(ckpt) if ckpt else None
    if ckpt_path is None and scorer_kind(cfg.model).fits:
        ckpt_path = run_dir / "checkpoints" / "best.ckpt"
    if ckpt_path is not None:
        if not ckpt_path.exists():
            raise FileNotFoundError(f"{ckpt_path}: checkpoint not found")
        load_weights(module, ckpt_path)
    results = test_record(
        cfg,
        module,
        dm,
        out_dir,
        method=run_method(cfg),
        val_metrics={},
        checkpoint=ckpt_path,
        epochs_run=-1,
    )
    return write_record(out_dir / EVAL_RESULTS_FILE, results)


def main(argv: list[str] | None = None) -> None:
    """``xmr eval run_dir=DIR [ckpt=FILE] [out=DIR] [dotted.key=value ...]``."""
    args = list(sys.argv[1:] if argv is None else argv)
    opts = {
        a.split("=", 1)[0]: a.split("=", 1)[1]
        for a in args
        if a.split("=", 1)[0] in ("run_dir", "ckpt", "out")
    }
    rest = [a for a in args if a.split("=", 1)[0] not in ("run_dir", "ckpt", "out")]
    if "run_dir" not in opts:
        raise SystemExit("usage: xmr eval run_dir=DIR [ckpt=FILE] [out=DIR] [key=value ...]")
    logging.basicConfig(level=logging.INFO)
    results = evaluate(opts["run_dir"], rest, opts.get("ckpt"), opts.get("out"))
    for key in sorted(k for k in results if k.startswith(("test/", "test_full/"))):
        print(f"{key:32s} {results[key]:.4f}")


if __name__ == "__main__":
    main()
