"""The few lines ``xmr train`` prints when a run ends: what it reached and where it is.

::

    xmr train: listnet, seed 0, on synthetic_tiny (SYNTHETIC store): trained 3 epochs
      test R@1    t2i 19.0%  i2t 25.5%   in the lists (list protocol)
      test R@1    t2i 17.0%  i2t 20.0%   full gallery (first stage's top 50 re-ranked)
      best val    rsum 151.0 at epoch 3/3 (checkpoints/best.ckpt)
      results     logs/train/runs/synthetic_tiny/loss=listnet/results.json

Recall in percent and epochs from 1, as on every console line (:mod:`xmr.utils.console`).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from xmr.callbacks.history import read_history
from xmr.data.store import DIRECTIONS
from xmr.runs.lifecycle import RESULTS_FILE
from xmr.utils.console import epoch_label, metric_text


def best_epoch(run_dir: Path, monitor: str, mode: str = "max") -> int | None:
    """Lightning's 0-based index of the validation epoch with the best ``monitor`` value in the
    run's ``metrics.jsonl`` (the first of equal ones), or None without validation records."""
    path = Path(run_dir) / "metrics.jsonl"
    if not path.exists():
        return None
    vals = [
        (float(r[monitor]), int(r["epoch"]))
        for r in read_history(path)
        if r.get("stage") == "val" and monitor in r
    ]
    if not vals:
        return None
    sign = 1.0 if mode == "max" else -1.0
    best = max(sign * v for v, _ in vals)
    return next(e for v, e in vals if sign * v == best)


def _recall_row(results: Mapping[str, Any], prefix: str) -> str | None:
    cells = [
        f"{d} {100.0 * float(results[key]):.1f}%"
        for d in DIRECTIONS
        if (key := f"{prefix}/{d}/recall@1") in results
    ]
    return "  ".join(cells) if cells else None


def summary_lines(
    results: Mapping[str, Any],
    run_dir: Path,
    *,
    monitor: str = "val/rsum",
    mode: str = "max",
    max_epochs: int | None = None,
    command: str = "xmr train",
) -> list[str]:
    """The end-of-run summary of ``results`` (a ``results.json`` record) of ``run_dir``."""
    run_dir = Path(run_dir)
    config = results.get("config") or {}
    data = (config.get("data") or {}).get("name", "?")
    synthetic = " (SYNTHETIC store)" if results.get("synthetic") else ""
    epochs = results.get("epochs_run")
    trained = f": trained {epochs} epochs" if isinstance(epochs, int) and epochs > 0 else ""
    lines = [
        f"{command}: {results.get('method', '?')}, seed {results.get('seed', '?')}, "
        f"on {data}{synthetic}{trained}"
    ]
    in_lists = _recall_row(results, "test")
    if in_lists:
        lines.append(f"  test R@1    {in_lists}   in the lists (list protocol)")
    full = _recall_row(results, "test_full")
    if full:
        top_k = (results.get("full_gallery") or {}).get("top_k")
        what = f"first stage's top {top_k} re-ranked" if top_k else "first stage re-ranked"
        lines.append(f"  test R@1    {full}   full gallery ({what})")
    best_key = monitor.replace("val/", "best_val/", 1)
    if results.get(best_key) is not None:
        epoch = best_epoch(run_dir, monitor, mode)
        where = f" at {epoch_label(epoch, max_epochs)}" if epoch is not None else ""
        ckpt = results.get("checkpoint")
        name = f" ({Path(ckpt).relative_to(run_dir)})" if ckpt and _inside(ckpt, run_dir) else ""
        shown = metric_text(monitor.rsplit("/", 1)[-1], float(results[best_key]))
        scope = monitor.split("/")[1] + " " if monitor.count("/") == 2 else ""
        lines.append(f"  best val    {scope}{shown}{where}{name}")
    elif not trained:
        lines.append("  no training (a scorer without parameters)")
    lines.append(f"  results     {run_dir / RESULTS_FILE}")
    return lines


def _inside(path: str | Path, root: Path) -> bool:
    try:
        Path(path).relative_to(root)
    except ValueError:
        return False
    return True
