"""PNG plots for ``xmr report`` (matplotlib figures without pyplot: no display needed).

* :func:`plot_recall_curves` — mean Recall@K for K = 1..50 per row, one panel per direction,
  computed from the runs' test predictions files (:func:`xmr.report.curves.recall_curves`).
* :func:`plot_validation_curves` — validation values over epochs from each run's
  ``metrics.jsonl`` (:class:`xmr.callbacks.history.MetricsHistoryCallback`): ``val/rsum`` and
  ``val/{dir}/recall@1``, and a panel of the training loss
  (:func:`xmr.report.curves.train_loss_points`); a thin line per run (seed), a thick one for the
  mean over runs; integer epochs; CLIP cosine's validation value as a dashed reference line
  where its run recorded one (:func:`xmr.report.curves.baseline_reference`), else the figure
  says there is none.

Each row keeps one colour in both figures (``order``: the report's rows). The figures are
``matplotlib.figure.Figure`` objects drawn by Agg when saved: importing this module leaves the
process's matplotlib backend alone (a notebook that imports ``xmr.report`` keeps inline plots).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib
import numpy as np
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from xmr.data.store import DIRECTION_TITLES, TABLE_ORDER
from xmr.report.curves import TRAIN_LOSS, VAL_KEYS, train_loss_points
from xmr.report.table import BASELINE
from xmr.utils.io import atomic_write


def _colours(names: list[str], order: list[str] | None = None) -> dict[str, Any]:
    """A colour per name, by its place in ``order`` (the report's rows) when given, so that a
    row has the same colour in every figure."""
    cmap = matplotlib.colormaps["tab10"]
    order = list(order or []) + [n for n in names if n not in (order or [])]
    return {name: cmap(order.index(name) % 10) for name in names}


def _save(fig: Any, path: Path) -> Path:
    def write(tmp: Path) -> None:
        fig.savefig(tmp, format="png", dpi=110, bbox_inches="tight")

    atomic_write(path, write)
    return path


def _suptitle(fig: Any, title: str, synthetic: bool) -> None:
    fig.suptitle(("SYNTHETIC data — " if synthetic else "") + title, fontsize=11)


def plot_recall_curves(
    curves: dict[str, dict[str, np.ndarray]],
    path: str | Path,
    recall: str = "hit",
    synthetic: bool = False,
    order: list[str] | None = None,
) -> Path:
    """Recall@K (%) against K; ``curves``: row → direction → ``(K,)`` fractions for K = 1..."""
    names = list(curves)
    colours = _colours(names, order)
    fig = Figure(figsize=(11, 4.2))
    axes = fig.subplots(1, 2, sharey=True)
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


def _mean_line(per_run: list[dict[int, float]]) -> tuple[list[int], list[float]]:
    """The epochs every run has, and the mean over the runs at each."""
    common = sorted(set.intersection(*(set(p) for p in per_run)))
    return common, [float(np.mean([p[e] for p in per_run])) for e in common]


def plot_validation_curves(
    histories: dict[str, list[list[dict[str, Any]]]],
    path: str | Path,
    synthetic: bool = False,
    keys: tuple[str, ...] = VAL_KEYS,
    reference: dict[str, float] | None = None,
    order: list[str] | None = None,
) -> Path:
    """Write :func:`validation_figure` as a PNG; returns ``path``."""
    return _save(validation_figure(histories, synthetic, keys, reference, order), Path(path))


def validation_figure(
    histories: dict[str, list[list[dict[str, Any]]]],
    synthetic: bool = False,
    keys: tuple[str, ...] = VAL_KEYS,
    reference: dict[str, float] | None = None,
    order: list[str] | None = None,
) -> Any:
    """Validation values over epochs, one panel per key, and the training loss in a last panel
    (a matplotlib figure); ``histories``: row → per run, its records
    (:func:`xmr.report.curves.histories`); ``reference``: key → CLIP cosine's value, drawn as a
    dashed line."""
    names = list(histories)
    colours = _colours(names, order)
    reference = reference or {}
    panels = [*keys, TRAIN_LOSS]
    cols = 2
    fig = Figure(figsize=(12, 4.2 * ((len(panels) + 1) // cols)))
    axes = fig.subplots((len(panels) + cols - 1) // cols, cols)
    axes = np.atleast_1d(axes).ravel()
    for ax in axes[len(panels) :]:
        ax.set_visible(False)
    for ax, key in zip(axes, panels, strict=False):
        scale = 1.0 if key.endswith(("rsum", "loss")) else 100.0
        drawn = False
        for name in names:
            per_run = []
            for records in histories[name]:
                if key == TRAIN_LOSS:
                    points = train_loss_points(records)
                else:
                    points = sorted(
                        (int(r["epoch"]), float(r[key]))
                        for r in records
                        if r.get("stage") == "val" and key in r
                    )
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
                common, mean = _mean_line(per_run)
                ax.plot(
                    common,
                    scale * np.asarray(mean),
                    color=colours[name],
                    linewidth=2.0,
                    marker="o",
                    label=name,
                )
                drawn = True
        if key in reference:
            ax.axhline(
                scale * reference[key],
                color="black",
                linestyle="--",
                linewidth=1.4,
                label=f"{BASELINE} (val)",
            )
        if key == TRAIN_LOSS:
            ax.set_title(f"{key} (per epoch; each row's own loss)")
            if not drawn:
                ax.text(0.5, 0.5, "no train/loss recorded", ha="center", transform=ax.transAxes)
        else:
            ax.set_title(key + (" (sum of R@1/5/10, %)" if key.endswith("rsum") else " (%)"))
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(True, alpha=0.3)
    axes[0].legend(fontsize=8)
    missing = [k for k in keys if k not in reference]
    note = (
        f"\ndashed: {BASELINE}'s validation value"
        + (f" (not recorded for {', '.join(missing)})" if missing else "")
        if len(missing) < len(keys)
        else f"\n{BASELINE}: no validation value recorded, no reference line"
    )
    _suptitle(fig, "Validation curves (thin: one run; thick: mean over runs)" + note, synthetic)
    fig.tight_layout()
    return fig
