"""What each of the report's tables measured on (its caption) and the leakage probe of the lists.

- :func:`list_construction` — the list protocol: list strategy, pool, L (candidates per list),
  positives per list, store and encoder with its split sizes, test queries per direction,
  SYNTHETIC, ListNet target;
- :func:`full_construction` — the full-gallery protocol: first stage, K, gallery and queries per
  direction, positives per query, store and encoder with its split sizes, SYNTHETIC, ListNet
  target;
- :func:`probes` / :func:`probe_lines` — the leakage probe of the lists the list-protocol runs
  used (recorded in their ``lists.json`` under ``"probe"``, or computed for older lists), its
  lines and WARNING lines.

A run's lists directory is its config's ``data.lists_dir``, else
``<data.lists_root>/<mining tag>`` (:func:`xmr.data.datamodule.mining_tag`; ``lists_root``
defaults to ``<data.store>/lists``), as :class:`xmr.data.datamodule.XMRDataModule` resolves it.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from xmr.data.datamodule import mining_tag
from xmr.data.lists_probe import recorded_or_computed
from xmr.data.mining import MINING_DEFAULTS, ListsError
from xmr.data.store import (
    COSINE,
    SPLITS,
    TABLE_ORDER,
    StoreError,
    first_stage_of,
    read_manifest,
)
from xmr.report.collect import run_predictions

#: The split whose lists the report's list-protocol table measures.
TEST_SPLIT = "test"


def _config(run: dict[str, Any]) -> dict[str, Any]:
    config = run.get("config")
    return config if isinstance(config, dict) else {}


def _all_runs(rows: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    return [run for row in rows.values() for run in row["runs"]]


def lists_dir_of(run: dict[str, Any]) -> Path | None:
    """The lists directory a run was trained and tested on (module docstring), or None when its
    config names no store."""
    data = _config(run).get("data") or {}
    if data.get("lists_dir"):
        return Path(str(data["lists_dir"]))
    root = data.get("lists_root") or (
        Path(str(data["store"])) / "lists" if data.get("store") else None
    )
    if root is None:
        return None
    return Path(str(root)) / mining_tag(data.get("mining") or {})


def probe_of(lists_dir: str | Path, store: str | Path | None) -> dict[str, Any] | None:
    """The leakage probe of ``lists_dir``: the one recorded in its ``lists.json``, else (lists
    mined before probes were recorded) computed from the lists and ``store`` without writing it
    back; None when the lists or the store cannot be read here."""
    try:
        return recorded_or_computed(lists_dir, store, check_norms=False)
    except (ListsError, StoreError, OSError):
        return None


def _values(values: list[Any]) -> str:
    """Distinct values in first-seen order: ``200``, or ``200 or 100`` when runs differ."""
    seen = list(dict.fromkeys(str(v) for v in values if v is not None))
    return " or ".join(seen) if seen else "?"


def _splits_text(manifest: dict[str, Any] | None) -> str:
    """``images train/val/test 60/20/20, 500 captions`` from a store's manifest, or ``""``."""
    splits = (manifest or {}).get("splits")
    if not isinstance(splits, dict) or not all(k in splits for k in SPLITS):
        return ""
    sizes = "/".join(str(splits[k]) for k in SPLITS)
    texts = manifest.get("num_texts") if manifest else None
    return f"images {'/'.join(SPLITS)} {sizes}" + (f", {texts} captions" if texts else "")


def _store_text(runs: list[dict[str, Any]]) -> str:
    """The runs' stores: name (path), encoder, split sizes (read from the store's manifest when
    it is at hand); stores that differ only by name (one per seed, as ``xmr embed`` writes them)
    are named together."""
    groups: dict[tuple[str, str, str], list[str]] = {}
    for run in runs:
        store = run.get("store") or {}
        path = store.get("path")
        encoder = store.get("encoder") or {}
        name = encoder.get("name")
        if first_stage_of(encoder) != COSINE:  # a trained pairwise model's store (xmr embed)
            name = f"{first_stage_of(encoder)} embeddings (xmr embed)"
        sizes = _splits_text(read_manifest(path)) if path else ""
        where = str(Path(str(path)).parent) if path else "?"
        label = f"{Path(str(path)).name} ({path})" if path else "?"
        names = groups.setdefault((where, f"encoder {name or '?'}", sizes), [])
        if label not in names:
            names.append(label)
    parts = []
    for (where, encoder, sizes), labels in groups.items():
        if len(labels) == 1:
            head = f"store {labels[0]}"
        else:
            short = ", ".join(label.split(" (", 1)[0] for label in labels)
            head = f"{len(labels)} stores {short} (in {where})"
        parts.append(", ".join(p for p in (head, encoder, sizes) if p))
    return " or ".join(parts) if parts else "?"


def _listnet_target(rows: dict[str, dict[str, Any]], runs_of: Any) -> str:
    """``ListNet target: X`` over the rows trained with ListNet (``listnet`` in the row's method:
    ``listnet``, ``reranker_listnet``, ``reranker_listnet@infonce``; ``loss.target`` of their
    runs), or ``""`` without any."""
    targets = []
    for row in rows.values():
        for run in runs_of(row):
            if "listnet" in str(row["method"]):  # a ranker is named by its loss
                targets.append((_config(run).get("loss") or {}).get("target"))
    return f"ListNet target: {_values(targets)}." if targets else ""


def _synthetic_text(runs: list[dict[str, Any]]) -> str:
    flags = {bool(r.get("synthetic")) for r in runs}
    if flags == {True}:
        return "SYNTHETIC store (generated, not real images or captions)."
    if flags == {True, False}:
        return "Some runs on a SYNTHETIC store."
    return "Real (not synthetic) store."


def _per_direction(values: dict[str, list[Any]]) -> str:
    parts = {d: _values(values.get(d, [])) for d in TABLE_ORDER if values.get(d)}
    if not parts:
        return "?"
    if len(set(parts.values())) == 1 and len(parts) == len(TABLE_ORDER):
        return next(iter(parts.values()))
    return ", ".join(f"{v} ({d})" for d, v in parts.items())


def list_construction(rows: dict[str, dict[str, Any]]) -> str:
    """The list-protocol table's construction (its caption's second part)."""
    runs = _all_runs(rows)
    if not runs:
        return ""
    strategy, pool, i2t_pos = [], [], []
    length: dict[str, list[Any]] = {}
    queries: dict[str, list[Any]] = {}
    for run in runs:
        mining = {**MINING_DEFAULTS, **((_config(run).get("data") or {}).get("mining") or {})}
        strategy.append(mining["strategy"])
        pool.append(mining["pool"])
        i2t_pos.append(mining["i2t_positives"])
        for d in TABLE_ORDER:
            pred = run_predictions(run, d)
            n = run.get(f"test/{d}/lists")
            if pred is not None:
                length.setdefault(d, []).append(int(pred["candidates"].shape[1]))
                n = len(pred["query"]) if n is None else n
            if n is not None:
                queries.setdefault(d, []).append(int(n))
    parts = [
        f"Lists ({TEST_SPLIT} split): strategy {_values(strategy)}, pool {_values(pool)}, "
        f"L = {_per_direction(length)} candidates per list, positives per list 1 (t2i) and "
        f"{_values(i2t_pos)} (i2t); {_store_text(runs)}; queries "
        f"{_per_direction(queries)}. {_synthetic_text(runs)}",
        _listnet_target(rows, lambda row: row["runs"]),
    ]
    return " ".join(p for p in parts if p)


def _full_runs(row: dict[str, Any]) -> list[dict[str, Any]]:
    return [r for r in row["runs"] if any(k.startswith("test_full/") for k in r)]


def full_construction(rows: dict[str, dict[str, Any]]) -> str:
    """The full-gallery table's construction (its caption's second part)."""
    runs = [r for row in rows.values() for r in _full_runs(row)]
    if not runs:
        return ""
    infos = [r.get("full_gallery") or {} for r in runs]
    gallery: dict[str, list[Any]] = {}
    queries: dict[str, list[Any]] = {}
    for info in infos:
        for d in TABLE_ORDER:
            if d in (info.get("gallery") or {}):
                gallery.setdefault(d, []).append(info["gallery"][d])
            if d in (info.get("queries") or {}):
                queries.setdefault(d, []).append(info["queries"][d])
    parts = [
        f"Gallery ({_values([i.get('split') for i in infos])} split): first stage "
        f"{_values([i.get('first_stage') for i in infos])}, K = "
        f"{_values([i.get('top_k') for i in infos])} re-ranked, gallery "
        f"{_per_direction(gallery)} items, positives per query 1 image (t2i) and every caption "
        f"of the image (i2t); {_store_text(runs)}; queries {_per_direction(queries)}. "
        f"{_synthetic_text(runs)}",
        _listnet_target(rows, _full_runs),
    ]
    return " ".join(p for p in parts if p)


def probes(rows: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    """The lists directories the list-protocol runs used, each ``{"lists_dir", "rows",
    "probe"}`` (``probe``: the ``lists.json`` entry, or None)."""
    found: dict[str, dict[str, Any]] = {}
    for name, row in rows.items():
        for run in row["runs"]:
            lists_dir = lists_dir_of(run)
            if lists_dir is None:
                continue
            store = (_config(run).get("data") or {}).get("store")
            entry = found.setdefault(
                str(lists_dir),
                {"lists_dir": str(lists_dir), "store": store, "rows": [], "probe": None},
            )
            if name not in entry["rows"]:
                entry["rows"].append(name)
    for entry in found.values():
        entry["probe"] = probe_of(entry["lists_dir"], entry.pop("store"))
    return list(found.values())


def _pct(value: Any) -> str:
    return f"{100 * float(value):.2f}%" if _finite(value) else "—"


def _finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value)


def _num(value: Any) -> str:
    return f"{float(value):g}" if _finite(value) else "—"


def probe_lines(entries: list[dict[str, Any]]) -> tuple[list[str], list[str]]:
    """(lines, WARNING lines) of the leakage probes of :func:`probes`, per lists directory and
    direction of the test split: anti-cosine in-list R@1 against chance, the positive's
    first-stage rank (median, p10–p90), the probe's verdict."""
    lines: list[str] = []
    warnings: list[str] = []
    for entry in entries:
        where = entry["lists_dir"]
        probe = entry["probe"]
        if probe is None:
            lines.append(f"Leakage probe of `{where}`: none recorded in its lists.json.")
            continue
        lines.append(f"Leakage probe of `{where}` (rule: {probe.get('rule', '?')}):")
        files = probe.get("files") or {}
        for d in TABLE_ORDER:
            stats = files.get(f"{d}_{TEST_SPLIT}")
            if not isinstance(stats, dict):
                lines.append(f"- {d} ({TEST_SPLIT}): not probed.")
                continue
            anti = stats.get("anti_cosine") or {}
            chance = stats.get("chance") or {}
            rank = stats.get("positive_rank") or {}
            leak = bool(stats.get("leak"))
            verdict = (
                f"{'LEAK' if leak else 'no leak'} (p = {_num(stats.get('p_value'))})"
                if stats.get("p_value") is not None
                else ("LEAK" if leak else "no leak")
            )
            anti_text = (
                f"anti-cosine in-list R@1 {_pct(anti.get('recall@1'))} vs chance "
                f"{_pct(chance.get('recall@1'))}"
                if anti
                else f"anti-cosine not measured (chance R@1 {_pct(chance.get('recall@1'))})"
            )
            lines.append(
                f"- {d} ({TEST_SPLIT}, {stats.get('lists', '?')} lists, mean size "
                f"{_num(stats.get('mean_list_size'))}): {anti_text}; positive's first-stage rank "
                f"median {_num(rank.get('median'))} (p10 {_num(rank.get('p10'))}, p90 "
                f"{_num(rank.get('p90'))}); {verdict}."
            )
            if leak:
                warnings.append(
                    f"WARNING: the leakage probe flags the {d} {TEST_SPLIT} lists of `{where}` "
                    f"(rows: {', '.join(entry['rows'])}): ranking by the lowest cosine finds the "
                    f"positive above chance (in-list R@1 {_pct(anti.get('recall@1'))} vs "
                    f"{_pct(chance.get('recall@1'))}), so the positive is told apart by how it was "
                    "added and list-protocol numbers can be gamed; judge by the full-gallery table."
                )
    return lines, warnings
