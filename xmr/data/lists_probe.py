"""The leakage probe of a lists directory on disk (definitions and rule: :mod:`xmr.data.probe`).

- :func:`read_probe` — the probe ``xmr mine`` recorded in ``lists.json`` (None for lists mined
  before the probe existed);
- :func:`probe_lists` — the probe computed now from the directory's files (validated with
  :func:`xmr.data.mining.load_lists` against the store), same schema; nothing is written;
- :func:`recorded_or_computed` — the recorded probe, else the computed one.

The miner itself (:func:`xmr.data.mining.mine_lists`) records the probe through
:func:`xmr.data.probe.probe_paths`; this module sits above the miner so that it can read lists
directories with the miner's own loader.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from xmr.data.mining import load_lists, read_lists_meta
from xmr.data.probe import probe_files
from xmr.data.store import DIRECTIONS, FeatureStore


def read_probe(lists_dir: str | Path) -> dict[str, Any] | None:
    """``lists.json["probe"]`` of a lists directory, or None when it has none.

    Raises:
        ListsError: ``lists.json`` missing or not an ``xmr-lists/1`` file.
    """
    probe = read_lists_meta(lists_dir).get("probe")
    return probe if isinstance(probe, dict) else None


def probe_lists(store: FeatureStore, lists_dir: str | Path) -> dict[str, Any]:
    """The probe of every file of ``lists_dir`` (its mined splits, both directions), computed
    from the files; the schema of ``lists.json["probe"]`` (:mod:`xmr.data.probe`).

    Raises:
        ListsError: a missing or invalid file, or lists mined from another store.
    """
    meta = read_lists_meta(lists_dir)
    splits = meta["params"].get("splits", [])
    directions = meta["params"].get("directions", list(DIRECTIONS))
    return probe_files(
        store, (load_lists(lists_dir, d, s, store=store) for s in splits for d in directions)
    )


def recorded_or_computed(
    lists_dir: str | Path, store: str | Path | None, *, check_norms: bool = True
) -> dict[str, Any] | None:
    """:func:`read_probe`, else (lists mined before the probe was recorded) :func:`probe_lists`
    on ``store`` (opened with ``check_norms``) — not written back; None when neither is
    available (no store given).

    Raises:
        ListsError, StoreError, OSError: unreadable lists or store.
    """
    probe = read_probe(lists_dir)
    if probe is None and store is not None:
        probe = probe_lists(FeatureStore.open(store, check_norms=check_norms), lists_dir)
    return probe
