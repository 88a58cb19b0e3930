"""Reruns of interrupted, failed and moved runs record what an uninterrupted run records.

A kill is simulated in-process: a hook raises :class:`_Killed` (a ``BaseException``, so none of
xmr's error handling runs and no ``failed.json`` is written) at the named moment; the same
config is then trained again. Every store here is SYNTHETIC (the session's ``tiny_store``).
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from _compose import make_cfg, tiny_overrides
from lightning.pytorch.callbacks import ModelCheckpoint

from xmr.callbacks.history import MetricsHistoryCallback, append_record, read_history
from xmr.callbacks.resume import AtomicCheckpointIO, RunCheckpoint
from xmr.eval import evaluate
from xmr.runs.lifecycle import run_checkpoint, write_record
from xmr.train import train
from xmr.utils.io import owner_tag

METRIC_PREFIXES = ("val/", "test/", "test_full/", "best_val/")


class _Killed(BaseException):
    """Stands for ``kill -9``: not an ``Exception``, so ``xmr.train`` writes no ``failed.json``."""


@pytest.fixture(scope="module")
def lists_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("rerun_lists")


@pytest.fixture(scope="module")
def reference(
    tiny_store: Path, lists_root: Path, tmp_path_factory: pytest.TempPathFactory
) -> Callable[[int], Path]:
    """``reference(epochs)``: the directory of an uninterrupted run of ``epochs`` epochs (once
    per module per ``epochs``)."""
    made: dict[int, Path] = {}

    def make(epochs: int) -> Path:
        if epochs not in made:
            tmp = tmp_path_factory.mktemp(f"reference_{epochs}")
            train(make_cfg(tmp, _overrides(tiny_store, lists_root, epochs)))
            made[epochs] = tmp / "run"
        return made[epochs]

    return make


def _overrides(store: Path, lists_root: Path, epochs: int) -> list[str]:
    return [
        *tiny_overrides(store, f"data.lists_root={lists_root}", "threads=1"),
        f"trainer.max_epochs={epochs}",
        "model.net.dropout=0.1",  # dropout draws from the global RNG: resuming must restore it
    ]


def _results(run: Path) -> dict[str, Any]:
    return json.loads((run / "results.json").read_text())


def _metrics(results: dict[str, Any]) -> dict[str, Any]:
    keys = [k for k in results if k.startswith(METRIC_PREFIXES)] + ["epochs_run"]
    return {k: results[k] for k in keys}


def _kill_when_saving(monkeypatch: pytest.MonkeyPatch, name: str) -> None:
    """Raise :class:`_Killed` instead of writing the checkpoint file ``name``."""
    save = AtomicCheckpointIO.save_checkpoint

    def killed(self: AtomicCheckpointIO, checkpoint: dict, path: Any, **kwargs: Any) -> None:
        if Path(path).name == name:
            raise _Killed(f"killed before {name}")
        save(self, checkpoint, path, **kwargs)

    monkeypatch.setattr(AtomicCheckpointIO, "save_checkpoint", killed)


# ------------------------------------------------------------------ fault 1: resumed after the end
@pytest.mark.parametrize("how", ["killed_before_results", "results_write_failed", "moved"])
def test_rerun_after_the_last_epoch_records_the_uninterrupted_values(
    how: str,
    tiny_store: Path,
    lists_root: Path,
    reference: Callable[[int], Path],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Fit has nothing left to do on the rerun (last.ckpt is the final epoch's), so nothing
    validates: the record's ``val/*`` come from the checkpoint, ``best_val/*`` and the tested
    weights from the best checkpoint, in the run's current directory."""
    expected = _metrics(_results(reference(2)))
    overrides = _overrides(tiny_store, lists_root, 2)
    cfg = make_cfg(tmp_path, overrides)
    if how == "killed_before_results":
        monkeypatch.setattr("xmr.train.write_record", _raise_for_results(_Killed("kill -9")))
        with pytest.raises(_Killed):
            train(cfg)
        assert not (tmp_path / "run" / "failed.json").exists()
    elif how == "results_write_failed":
        monkeypatch.setattr("xmr.train.write_record", _raise_for_results(OSError("disk full")))
        with pytest.raises(OSError, match="disk full"):
            train(cfg)
        assert (tmp_path / "run" / "failed.json").is_file()
    else:  # a finished run's directory moved elsewhere, results.json left behind
        train(make_cfg(tmp_path, overrides, "old"))
        shutil.copytree(tmp_path / "old", tmp_path / "run")
        (tmp_path / "run" / "results.json").unlink()
        shutil.rmtree(tmp_path / "old")
    monkeypatch.undo()
    run = tmp_path / "run"
    assert not (run / "results.json").exists()
    assert (run / "checkpoints" / "last.ckpt").is_file()

    results = train(make_cfg(tmp_path, overrides))

    assert any(k.startswith("val/") for k in results) and "best_val/rsum" in results
    assert _metrics(results) == expected
    assert _metrics(_results(run)) == expected
    assert results["checkpoint"] == str(run / "checkpoints" / "best.ckpt")
    assert not (run / "failed.json").exists()


def _raise_for_results(error: BaseException) -> Callable[..., Any]:
    """``write_record`` that raises ``error`` instead of writing ``results.json``."""

    def write(path: Any, record: Any) -> Any:
        if Path(path).name == "results.json":
            raise error
        return write_record(path, record)

    return write


# --------------------------------------------------- fault 2: a stale best.ckpt of a killed start
def test_a_fresh_start_replaces_the_stale_best_checkpoint_and_eval_loads_the_named_one(
    tiny_store: Path,
    lists_root: Path,
    reference: Callable[[int], Path],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    overrides = _overrides(tiny_store, lists_root, 2)
    run = tmp_path / "run"
    _kill_when_saving(monkeypatch, "last.ckpt")  # killed between the first best and last
    with pytest.raises(_Killed):
        train(make_cfg(tmp_path, overrides))
    monkeypatch.undo()
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["best.ckpt"]

    results = train(make_cfg(tmp_path, overrides))  # starts fresh: no last.ckpt

    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["best.ckpt", "last.ckpt"]
    assert results["checkpoint"] == str(run / "checkpoints" / "best.ckpt")
    assert _metrics(results) == _metrics(_results(reference(2)))
    evaluated = evaluate(run, out=tmp_path / "eval")
    assert evaluated["checkpoint"] == results["checkpoint"]
    tested = {k: v for k, v in results.items() if k.startswith(("test/", "test_full/"))}
    assert {k: evaluated[k] for k in tested} == tested


def test_a_run_started_again_with_resume_off_deletes_the_old_checkpoints(
    tiny_store: Path, lists_root: Path, tmp_path: Path
) -> None:
    overrides = _overrides(tiny_store, lists_root, 1)
    train(make_cfg(tmp_path, overrides))
    ckpts = tmp_path / "run" / "checkpoints"
    (ckpts / "best-v1.ckpt").write_bytes(b"stale")  # as Lightning's version counter left them
    train(make_cfg(tmp_path, [*overrides, "resume=false", "+skip_finished=false"]))
    assert sorted(p.name for p in ckpts.iterdir()) == ["best.ckpt", "last.ckpt"]


def test_eval_loads_the_checkpoint_results_json_names(tmp_path: Path) -> None:
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    for name in ("best.ckpt", "best-v1.ckpt"):
        (run / "checkpoints" / name).write_bytes(b"x")
    assert run_checkpoint(run) == run / "checkpoints" / "best.ckpt"  # no results.json
    named = run / "checkpoints" / "best-v1.ckpt"  # a run of before: best.ckpt is a stale one
    (run / "results.json").write_text(json.dumps({"checkpoint": str(named)}))
    assert run_checkpoint(run) == named
    moved = tmp_path / "moved"
    run.rename(moved)  # results.json names the old place
    assert run_checkpoint(moved) == moved / "checkpoints" / "best-v1.ckpt"
    (moved / "results.json").write_text(json.dumps({"checkpoint": "checkpoints/best.ckpt"}))
    assert run_checkpoint(moved) == moved / "checkpoints" / "best.ckpt"


def test_run_checkpoint_keeps_lightnings_state_key_and_never_versions(tmp_path: Path) -> None:
    args = {"dirpath": str(tmp_path), "filename": "best", "monitor": "val/rsum", "mode": "max"}
    ours, theirs = RunCheckpoint(**args), ModelCheckpoint(**args)
    assert ours.state_key == theirs.state_key  # checkpoints of either restore the other
    assert ours._enable_version_counter is False


# ------------------------------------------------------------ litter: one record per epoch, temps
def test_an_interrupted_run_keeps_one_row_per_epoch_in_metrics_csv_and_jsonl(
    tiny_store: Path,
    lists_root: Path,
    reference: Callable[[int], Path],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Killed after the validation of epoch 2 of 4, before its last.ckpt: the rerun resumes from
    epoch 1's checkpoint and redoes epoch 2 (index 1), whose rows the killed attempt had logged."""
    overrides = _overrides(tiny_store, lists_root, 4)
    record = MetricsHistoryCallback.on_validation_end

    def killed(self: MetricsHistoryCallback, trainer: Any, pl_module: Any) -> None:
        record(self, trainer, pl_module)
        if trainer.current_epoch == 1:
            raise _Killed("after the validation of epoch 2 of 4")

    monkeypatch.setattr(MetricsHistoryCallback, "on_validation_end", killed)
    with pytest.raises(_Killed):
        train(make_cfg(tmp_path, overrides))
    monkeypatch.undo()
    run = tmp_path / "run"
    assert [r["epoch"] for r in read_history(run / "metrics.jsonl")] == [0, 1]
    # Litter of processes that are gone: a temporary file (as atomic_write names them) and one
    # of a process still running (this one), which stays.
    dead = _dead_pid()
    stale = run / "checkpoints" / f".last.ckpt.{owner_tag().split('-')[0]}-{dead}.0badc0de.tmp"
    live = run / f".results.json.{owner_tag()}.0badc0de.tmp"
    stale.touch()
    live.touch()

    train(make_cfg(tmp_path, overrides))

    ref = reference(4)
    csv_rows = (run / "csv" / "metrics.csv").read_text().splitlines()
    assert csv_rows == (ref / "csv" / "metrics.csv").read_text().splitlines()
    epochs = [row.split(",", 1)[0] for row in csv_rows[1:]]
    # 4: the test row; rows without an epoch: the learning rate, logged by step
    assert sorted(set(epochs) - {""}) == ["0", "1", "2", "3", "4"]
    with_epoch = [row for row in csv_rows[1:] if not row.startswith(",")]
    assert len(with_epoch) == len(set(with_epoch))  # no duplicated row of an epoch
    history = read_history(run / "metrics.jsonl")
    # A val record carries the train/* values then in callback_metrics, the previous epoch's,
    # which a resumed process has not logged for its first epoch: compare the rest.
    assert [_no_train(r) for r in history] == [
        _no_train(r) for r in read_history(ref / "metrics.jsonl")
    ]
    assert [(r["stage"], r["epoch"]) for r in history] == [
        *[("val", e) for e in range(4)],
        ("test", 4),
    ]
    assert not stale.exists() and live.exists()
    live.unlink()


def _no_train(record: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in record.items() if not k.startswith("train/")}


def test_history_supersedes_records_of_a_redone_epoch_and_a_torn_line(tmp_path: Path) -> None:
    path = tmp_path / "metrics.jsonl"
    for stage, epoch in [("val", 0), ("val", 1), ("val", 2)]:
        append_record(path, {"stage": stage, "epoch": epoch, "step": epoch})
    with open(path, "a") as fh:
        fh.write('{"stage": "val", "ep')  # torn by a kill
    append_record(path, {"stage": "val", "epoch": 1, "step": 11})  # resumed at epoch 1
    append_record(path, {"stage": "val", "epoch": 2, "step": 12})
    append_record(path, {"stage": "test", "epoch": 3, "step": 12})
    append_record(path, {"stage": "test", "epoch": 3, "step": 12})  # rerun of the test only
    assert [(r["stage"], r["epoch"], r["step"]) for r in read_history(path)] == [
        ("val", 0, 0),
        ("val", 1, 11),
        ("val", 2, 12),
        ("test", 3, 12),
    ]
    assert path.read_text().endswith("}\n") and len(path.read_text().splitlines()) == 4


def _dead_pid() -> int:
    """The pid of a process that has ended."""
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


# ----------------------------------------------------- failed.json and results.json never disagree
def test_failed_json_and_results_json_never_stand_together(
    tiny_store: Path, lists_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    overrides = _overrides(tiny_store, lists_root, 1)
    run = tmp_path / "run"
    # A failure after results.json was written (W&B's summary here): the results stand.
    monkeypatch.setattr("xmr.train.log_final_results", _raise(RuntimeError("wandb is down")))
    with pytest.raises(RuntimeError, match="wandb is down"):
        train(make_cfg(tmp_path, overrides))
    monkeypatch.undo()
    assert (run / "results.json").is_file() and not (run / "failed.json").exists()

    # A finished run started again (skipped) removes a stale failed.json beside its results.
    (run / "failed.json").write_text('{"error": "RuntimeError: an earlier attempt"}')
    train(make_cfg(tmp_path, overrides))
    assert (run / "results.json").is_file() and not (run / "failed.json").exists()

    # A failed rerun (another config) replaces the results of the earlier attempt.
    with pytest.raises(Exception, match="optimizer.lr"):
        train(make_cfg(tmp_path, [*overrides, "optimizer.lr=-1"]))
    assert (run / "failed.json").is_file() and not (run / "results.json").exists()


def _raise(error: BaseException) -> Callable[..., None]:
    def fail(*args: Any, **kwargs: Any) -> None:
        raise error

    return fail
