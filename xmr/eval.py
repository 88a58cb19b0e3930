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

from xmr.runs.lifecycle import EVAL_RESULTS_FILE, restore_run, test_record, write_record
from xmr.runs.naming import run_method
from xmr.utils.console import key_value_args, metrics_line, quiet_library_noise, run_command
from xmr.utils.provenance import utc_now

log = logging.getLogger(__name__)

USAGE = "usage: xmr eval run_dir=DIR [ckpt=FILE] [out=DIR] [dotted.key=value ...]"


def evaluate(
    run_dir: str | Path,
    overrides: list[str] | None = None,
    ckpt: str | Path | None = None,
    out: str | Path | None = None,
) -> dict[str, Any]:
    """Rebuild the run of ``run_dir`` (its ``config.yaml``), load ``ckpt`` (default: the run's
    best checkpoint), test it, and write predictions + ``eval_results.json``."""
    started = utc_now()
    run = restore_run(run_dir, overrides, ckpt)
    out_dir = Path(out) if out else Path(run_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    results = test_record(
        run.cfg,
        run.module,
        run.dm,
        out_dir,
        method=run_method(run.cfg),
        val_metrics={},
        checkpoint=run.checkpoint,
        epochs_run=-1,
        started=started,
    )
    return write_record(out_dir / EVAL_RESULTS_FILE, results)


def main(argv: list[str] | None = None) -> None:
    """``xmr eval run_dir=DIR [ckpt=FILE] [out=DIR] [dotted.key=value ...]``."""
    args = list(sys.argv[1:] if argv is None else argv)
    opts, rest = key_value_args(
        args, USAGE, ("run_dir", "ckpt", "out"), required=("run_dir",), overrides=True
    )
    logging.basicConfig(level=logging.INFO)
    quiet_library_noise()
    results = evaluate(opts["run_dir"], rest, opts.get("ckpt"), opts.get("out"))
    for prefix in ("test", "test_full"):
        shown = {
            k: float(v)
            for k, v in results.items()
            if k.startswith(prefix + "/") and isinstance(v, (int, float))
        }
        if shown:
            print(f"{prefix}: {metrics_line(shown)}")


if __name__ == "__main__":
    run_command("eval", main)
