"""The CLIP-cosine row of every report: evaluated by ``xmr report`` when no run below ROOT is
CLIP cosine.

CLIP cosine has no parameters, so the report never has to go without it (nor without the
significance tests against it): :func:`ensure_baseline` leaves the runs as they are when a
finished ``clip_cosine`` run (a ``model=cosine`` run) is among them, and otherwise evaluates it
(:func:`xmr.runs.baseline.evaluate_baseline`: the list protocol and the full-gallery protocol,
with the same ``top_k``, first stage, split and ``ks`` as the runs) into ``<out>/clip_cosine/`` —
``results.json`` (marked ``evaluated_by: "xmr report"``) and the predictions files a
``model=cosine`` run writes — and adds it to the runs.

Which store and lists: those of the runs. Runs over several (store, lists directory) pairs get
one baseline, for the pair most finished runs share (ties: the first in path order), and the
report says so (one CLIP-cosine row keeps the tables and the significance tests unambiguous; a
pair without a baseline of its own is compared with nothing in the list protocol, where the
queries' candidate sets differ). The config evaluated is that of the pair's first run (one
tested with the full-gallery protocol when there is one) with the model replaced
(:func:`xmr.runs.baseline.baseline_config`; both directions when the pair's runs cover both).
Runs over a store of ``xmr embed`` (a trained model's embeddings) are not CLIP's and never chosen.

A baseline that cannot be evaluated here (the store or the lists are not on this machine, a
store without a joint space, the directory taken by a run) is not an error: the report says why
(:attr:`Baseline.note`) and goes on without it. An evaluated baseline left below ROOT by an
earlier report is dropped from the runs when a real ``model=cosine`` run is there, and evaluated
anew (or reused when its config is the same) otherwise.
"""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from xmr.data.store import COSINE, first_stage_of
from xmr.report.construction import lists_dir_of
from xmr.report.table import BASELINE
from xmr.runs.baseline import (
    EVALUATED_BY,
    BaselineDirTaken,
    baseline_config,
    evaluate_baseline,
)
from xmr.runs.lifecycle import RESULTS_FILE
from xmr.utils.errors import UserError

log = logging.getLogger(__name__)

#: The command named in an evaluated baseline's ``results.json`` (``evaluated_by``).
REPORT_COMMAND = "xmr report"
#: The directory below ``--out`` the evaluated baseline is written to.
BASELINE_DIR = "clip_cosine"


@dataclass
class Baseline:
    """What :func:`ensure_baseline` did: the runs to report (the evaluated baseline included),
    the evaluated baseline's record (None when a run provides it, or when none could be
    evaluated) and the report's line about it (``""`` when a run below ROOT provides it)."""

    runs: list[dict[str, Any]]
    evaluated: dict[str, Any] | None = None
    note: str = ""


def evaluated_here(run: dict[str, Any]) -> bool:
    """Whether ``run`` is a baseline evaluated by ``xmr report``, not a run of its own."""
    return run.get(EVALUATED_BY) == REPORT_COMMAND


def _store_of(run: dict[str, Any]) -> str | None:
    store = (run.get("store") or {}).get("path")
    if store:
        return str(store)
    data = (run.get("config") or {}).get("data") or {}
    return str(data["store"]) if data.get("store") else None


def _key(run: dict[str, Any]) -> tuple[str, str] | None:
    """(store, lists directory) of a run CLIP cosine can be evaluated for, else None."""
    if run.get("method") == BASELINE or not isinstance(run.get("config"), dict):
        return None
    if first_stage_of((run.get("store") or {}).get("encoder") or None) != COSINE:
        return None  # a trained model's embeddings (xmr embed): its cosine is not CLIP's
    store, lists = _store_of(run), lists_dir_of(run)
    return (store, str(lists)) if store and lists else None


def ensure_baseline(runs: list[dict[str, Any]], out: str | Path) -> Baseline:
    """The runs with a CLIP-cosine baseline (module docstring); ``out``: the report's directory
    (the baseline goes to ``<out>/clip_cosine``)."""
    own = [r for r in runs if not evaluated_here(r)]
    if any(r.get("method") == BASELINE for r in own):
        return Baseline(own)
    keys = [(_key(r), r) for r in own]
    counts = Counter(k for k, _ in keys if k is not None)
    if not counts:
        return Baseline(
            own,
            note="No CLIP-cosine run below ROOT, and no run names a store and "
            "lists CLIP cosine could be evaluated on.",
        )
    (store, lists), n = counts.most_common(1)[0]  # ties: the first seen (path order)
    group = [r for k, r in keys if k == (store, lists)]
    run = next((r for r in group if r.get("full_gallery")), group[0])
    directions = {str(((r.get("config") or {}).get("data") or {}).get("direction")) for r in group}
    cfg = baseline_config(run["config"], **({"direction": "both"} if len(directions) > 1 else {}))
    where = Path(out) / BASELINE_DIR
    try:
        record = evaluate_baseline(cfg, where, by=REPORT_COMMAND)
    except (UserError, BaselineDirTaken, FileNotFoundError, ValueError) as err:
        log.warning("CLIP cosine not evaluated: %s", err)
        return Baseline(
            own,
            note=f"No CLIP-cosine run below ROOT, and xmr report could not "
            f"evaluate it on store {store}, lists {lists}: {err}",
        )
    record = {**record, "_path": str(where / RESULTS_FILE)}
    note = f"CLIP cosine evaluated by xmr report on {store}, lists {lists} (in {where})"
    total = sum(counts.values())
    if n < total:
        note += (
            f"; the store and lists of {n} of {total} runs — the other {total - n} runs use "
            f"other stores or lists ({len(counts) - 1} more), which have no CLIP-cosine baseline"
        )
    return Baseline([*own, record], record, note + ".")
