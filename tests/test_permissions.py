"""Shared results folders: everything xmr writes gets the ordinary permissions of the umask
(0666 / 0777 less it), so with the usual umask 022 teammates can read a store, a lists directory,
a run directory and a report. A writer going through ``tempfile.mkstemp`` (always 0600) or a
``mkdtemp`` directory (0700) would fail here."""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from pathlib import Path

from _compose import make_cfg, tiny_overrides

from xmr.data.synth import PRESETS, write_synthetic_store
from xmr.report.cli import main as report_main
from xmr.train import train


def _tree(root: Path) -> Iterator[Path]:
    yield root
    yield from root.rglob("*")


def _unreadable(root: Path) -> list[str]:
    """Entries below ``root`` that group/others cannot read (files) or list (directories)."""
    bad = []
    for path in _tree(root):
        mode = path.lstat().st_mode
        if stat.S_ISLNK(mode):
            continue
        want = 0o055 if stat.S_ISDIR(mode) else 0o044
        if mode & want != want:
            bad.append(f"{path.relative_to(root.parent)} {stat.filemode(mode)}")
    return bad


def test_store_lists_run_and_report_are_readable_by_group_and_others(tmp_path: Path) -> None:
    store, lists = tmp_path / "store", tmp_path / "lists"
    run, report = tmp_path / "run", tmp_path / "report"
    old = os.umask(0o022)
    try:
        write_synthetic_store(store, PRESETS["tiny"])  # xmr synth
        overrides = tiny_overrides(store, f"data.lists_root={lists}", "trainer.max_epochs=1")
        train(make_cfg(tmp_path, overrides))  # mines the lists, trains, tests, writes the run
        report_main([str(run), "--out", str(report), "--resamples", "50", "--gallery", "2"])
    finally:
        os.umask(old)
    names = {p.name for p in _tree(tmp_path)}
    expected = {"config.yaml", "results.json", "last.ckpt", "metrics.jsonl", "lists.json"}
    assert expected | {"predictions_t2i.npz", "table.md", "report.html"} <= names
    assert any(p.suffix == ".png" for p in report.iterdir())
    for root in (store, lists, run, report):
        assert not _unreadable(root), _unreadable(root)
