"""PNG plots for ``xmr report`` (matplotlib, Agg backend: no display needed).

* :func:`plot_recall_curves` — mean Recall@K for K = 1..50 per row, one panel per direction,
  computed from the runs' test predictions files (:func:`xmr.report.curves.recall_curves`).
* :func:`plot_validation_curves` — validation values over epochs from each run's
  ``metrics.jsonl`` (:class:`xmr.callbacks.history.MetricsHistoryCallback`): ``val/rsum`` and
  ``val/{dir}/recall@1``; a thin line per run (seed), a thick one for the mean over runs.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # before pyplot: headless, also under CI and in tests

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from xmr.data.store import DIRECTION_TITLES, TABLE_ORDER  # noqa: E402
from xmr.report.table import BASELINE  # noqa: E402
from xmr.utils.io import atomic_write  # noqa: E402


def _colours(names: list[str]) -> dict[str, Any]:
    cmap = plt.get_cmap("tab10")
    return {name: cmap(i % 10) for i, name in enumerate(names)}


def _save(fig: Any, path: Path) -> Path:
    def write(tmp: Path) -> None:
        fig.savefig(tmp, format="png", dpi=110, bbox_inches="tight")

    atomic_write(path, write)
    plt.close(fig)
    return path


def _suptitle(fig: Any, title: str, synthetic: bool) -> None:
    fig.suptitle(("SYNTHETIC data — " if synthetic else "") + title, fontsize=11)


def plot_recall_curves(
    curves: dict[str, dict[str, np.ndarray]],
    path: str | Path,
    recall: str = "hit",
    synthetic: bool = False,
) -> Path:
    """Recall@K (%) against K; ``curves``: row → direction → ``(K,)`` fractions for K = 1..."""
    names = list(curves)
    colours = _colours(names)
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2), sharey=True)
    for ax, direction in zip(axes, TABLE_ORDER, strict=True):
        for name in names:
            curve = curves[name].get(direction)
            if curve is None:
                continue
            ks = np.arange(1, len(curve) + 1)
            dashed = name.startswith(BASELINE)
            ax.plot(
                ks,
                100 * curve,
                label=name,
                color="black" if dashed else colours[name],
                linestyle="--" if dashed else "-",
                linewidth=1.6,
            )
        ax.set_title(DIRECTION_TITLES[direction], fontsize=10)
        ax.set_xlabel("K")
        ax.set_xscale("log")
        ticks = [
            k
            for k in (1, 2, 5, 10, 20, 50)
            if k <= max(len(c.get(direction, [])) for c in curves.values())
        ]
        ax.set_xticks(ticks, [str(k) for k in ticks])
        ax.grid(True, alpha=0.3, which="both")
    axes[0].set_ylabel(f"Recall@K (%, {'hit@K' if recall == 'hit' else 'found/total'})")
    axes[0].legend(fontsize=8, loc="lower right")
    _suptitle(fig, "Recall@K inside the test candidate lists, mean over runs", synthetic)
    return _save(fig, Path(path))


def plot_validation_curves(
    histories: dict[str, list[list[dict[str, Any]]]],
    path: str | Path,
    synthetic: bool = False,
    keys: tuple[str, ...] = ("val/rsum", "val/i2t/recall@1", "val/t2i/recall@1"),
) -> Path:
    """Validation values over epochs; ``histories``: row → per run, its ``val`` records."""
    names = list(histories)
    colours = _colours(names)
    fig, axes = plt.subplots(1, len(keys), figsize=(5 * len(keys), 4.0))
    for ax, key in zip(np.atleast_1d(axes), keys, strict=True):
        scale = 1.0 if key.endswith("rsum") else 100.0
        for name in names:
            per_run = []
            for records in histories[name]:
                points = sorted((r["epoch"], r[key]) for r in records if key in r)
                if not points:
                    continue
                epochs, values = zip(*points, strict=True)
                per_run.append(dict(points))
                ax.plot(
                    epochs,
                    scale * np.asarray(values),
                    color=colours[name],
                    alpha=0.3,
                    linewidth=0.8,
                    marker="o",
                    markersize=2,
                )
            if per_run:
                common = sorted(set.intersection(*(set(p) for p in per_run)))
                mean = [scale * np.mean([p[e] for p in per_run]) for e in common]
                ax.plot(common, mean, color=colours[name], linewidth=2.0, marker="o", label=name)
        ax.set_title(key + (" (sum of R@1/5/10, %)" if key.endswith("rsum") else " (%)"))
        ax.set_xlabel("epoch")
        ax.grid(True, alpha=0.3)
    np.atleast_1d(axes)[0].legend(fontsize=8)
    _suptitle(fig, "Validation curves (thin: one run; thick: mean over runs)", synthetic)
    return _save(fig, Path(path))
