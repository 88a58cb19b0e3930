# ---
# jupyter:
#   jupytext:
#     formats: ipynb,py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # xmr: analysis of a sweep
#
# Loads a report directory (a sweep's output tree: `results.json`, `predictions_*.npz` and
# `metrics.jsonl` of every job) and shows
#
# 1. the full-gallery table, Table 2 (list protocol, mean ± std over seeds) with the leakage
#    probe of its lists, and the significance test against CLIP cosine on both protocols,
# 2. Recall@K curves (K = 1..50) per method and direction,
# 3. a per-query error analysis: the test queries where the best ranker **fixes** CLIP
#    cosine's top-1 (cosine wrong, ranker right) or **breaks** it (cosine right, ranker wrong),
#    with the caption text.
#
# Set `XMR_REPORT_DIR` to the directory (default: the demo's `logs/demo`). This file is a
# jupytext percent-format notebook: `jupytext --to ipynb notebooks/analysis.py` makes the
# `.ipynb`, and `python notebooks/analysis.py` runs it headless (plots go to files then).

# %%
import os
import sys
from pathlib import Path

import matplotlib

if "ipykernel" not in sys.modules:  # run as a script: headless
    matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np

from xmr.data.store import DIRECTION_TITLES, TABLE_ORDER, FeatureStore
from xmr.report.cli import build_report
from xmr.report.collect import run_predictions
from xmr.report.render import full_gallery_markdown, significance_markdown, to_markdown
from xmr.report.significance import align_predictions
from xmr.report.table import BASELINE

REPORT_DIR = Path(os.environ.get("XMR_REPORT_DIR", "logs/demo"))
OUT_DIR = Path(os.environ.get("XMR_NOTEBOOK_OUT", REPORT_DIR))
RESAMPLES = int(os.environ.get("XMR_RESAMPLES", "10000"))
report = build_report(REPORT_DIR, recall="hit", n_resamples=RESAMPLES)
print(f"{REPORT_DIR}: {len(report.runs)} finished runs, {len(report.unfinished)} failed/missing")
if report.synthetic:
    print("SYNTHETIC data: these runs used a generated store, not real images and captions.")

# %% [markdown]
# ## Full-gallery protocol, Table 2 and significance

# %%
print(full_gallery_markdown(report.rows, report.ks, report.full_construction))
print(to_markdown(report.rows, report.ks, report.recall, report.list_construction))
print("\n".join(report.probe_lines + report.probe_warnings))
print(
    significance_markdown(
        report.significance, n_resamples=report.n_resamples, seed=report.seed, test=report.test
    )
)
print("\n".join(report.gain_warnings))
for job in report.unfinished:
    print(f"{job['status']}: {job['_dir']}")

# %% [markdown]
# ## Recall@K curves

# %%
fig, axes = plt.subplots(1, 2, figsize=(11, 4), sharey=True)
for ax, direction in zip(axes, TABLE_ORDER, strict=True):
    for name, per_dir in report.curves.items():
        if direction in per_dir:
            curve = per_dir[direction]
            style = "--" if name.startswith(BASELINE) else "-"
            ax.plot(np.arange(1, len(curve) + 1), 100 * curve, style, label=name)
    ax.set_title(DIRECTION_TITLES[direction])
    ax.set_xscale("log")
    ax.set_xlabel("K")
    ax.grid(alpha=0.3)
axes[0].set_ylabel("Recall@K (%, hit@K)")
axes[0].legend(fontsize=8)
fig.suptitle(("SYNTHETIC — " if report.synthetic else "") + "Recall@K inside the test lists")
OUT_DIR.mkdir(parents=True, exist_ok=True)
fig.savefig(OUT_DIR / "notebook_recall_at_k.png", dpi=90, bbox_inches="tight")
plt.show()

# %% [markdown]
# ## Per-query error analysis
#
# For each direction: the ranker row with the best mean R@1, its lowest-seed run, against the
# CLIP-cosine run, on the same test queries (rows of the predictions files).

# %%
baseline_runs = [
    r for row in report.rows.values() if row["method"] == BASELINE for r in row["runs"]
]
stores: dict[str, FeatureStore] = {}


def describe(store: FeatureStore | None, item: int, kind: str) -> str:
    """Caption text of a text id; name and first caption of an image id."""
    if store is None:
        return f"{kind} #{item}"
    if kind == "text":
        return store.captions()[item]
    first = int(np.flatnonzero(np.asarray(store.text_image) == item)[0])
    return f"[{store.images()[item]}] {store.captions()[first]}"


analysis = {}
for direction in TABLE_ORDER:
    rankers = [
        (row.get(f"{direction}/R@1", (-1.0, 0.0))[0], name, row)
        for name, row in report.rows.items()
        if row["method"] != BASELINE and row["runs"]
    ]
    if not rankers or not baseline_runs:
        print(f"{direction}: needs a ranker and a CLIP-cosine run")
        continue
    _, name, row = max(rankers, key=lambda t: t[0])
    run = min(row["runs"], key=lambda r: str(r.get("seed")))
    pred, base = run_predictions(run, direction), run_predictions(baseline_runs[0], direction)
    if pred is None or base is None or (pair := align_predictions(pred, base)) is None:
        print(f"{direction}: no comparable predictions")
        continue
    a, b = pair
    ranker_ok = pred["labels"][a, 0] > 0  # (Q,) top-1 is relevant
    cosine_ok = base["labels"][b, 0] > 0  # (Q,)
    fixes = np.flatnonzero(ranker_ok & ~cosine_ok)
    breaks = np.flatnonzero(~ranker_ok & cosine_ok)
    analysis[direction] = {"ranker": name, "fixes": len(fixes), "breaks": len(breaks)}
    store_path = (run.get("store") or {}).get("path")
    if store_path and store_path not in stores:
        try:
            stores[store_path] = FeatureStore.open(store_path, check_norms=False)
        except Exception as err:  # the analysis still runs on ids
            print(f"store {store_path} not readable here: {err}")
    store = stores.get(store_path)
    q_kind, c_kind = ("text", "image") if direction == "t2i" else ("image", "text")
    print(
        f"\n== {direction} ({DIRECTION_TITLES[direction]}): {name} (seed {run.get('seed')}) vs CLIP cosine"
    )
    print(
        f"queries: {len(a)}; both right {int((ranker_ok & cosine_ok).sum())}, "
        f"ranker fixes {len(fixes)}, ranker breaks {len(breaks)}, "
        f"both wrong {int((~ranker_ok & ~cosine_ok).sum())}"
    )
    for label, idx in (("fixes", fixes), ("breaks", breaks)):
        for i in idx[:3]:
            q = int(pred["query"][a[i]])
            print(f"  {label}: query {describe(store, q, q_kind)!r}")
            print(
                f"     ranker top-1: {describe(store, int(pred['candidates'][a[i], 0]), c_kind)!r}"
            )
            print(
                f"     cosine top-1: {describe(store, int(base['candidates'][b[i], 0]), c_kind)!r}"
            )

# %% [markdown]
# ## Validation curves

# %%
fig, ax = plt.subplots(figsize=(6, 4))
for name, runs in report.histories.items():
    for k, records in enumerate(runs):
        points = sorted((r["epoch"], r["val/rsum"]) for r in records if "val/rsum" in r)
        if points:
            ax.plot(*zip(*points, strict=True), "o-", alpha=0.6, label=name if k == 0 else None)
ax.set_xlabel("epoch")
ax.set_ylabel("val/rsum")
ax.legend(fontsize=8)
fig.savefig(OUT_DIR / "notebook_validation.png", dpi=90, bbox_inches="tight")
plt.show()
print("analysis:", analysis)
