"""Two xmr processes on one directory: advisory locks (``xmr.utils.lock``), real processes.

- the lock records its holder, vanishes with a killed holder, and is re-entrant;
- two miners of one lists directory: the second waits (a log line names the first), then uses
  the lists the first published instead of mining into the same work directory;
- two ``mine_lists(..., overwrite=True)``: one after the other, both succeed;
- two trainings on a fresh data directory: one generates the synthetic store, the other waits
  and uses it (before: FileExistsError);
- two ``xmr train`` into one run directory: the second exits non-zero at once, naming the
  first, and writes nothing there.

Processes are forked (``multiprocessing``, fork) and ordered with Events set from hooks — the
first process pauses inside its work, the second signals from its "waiting" log line — never by
sleeping. The Events' timeouts only keep a broken lock from hanging the test.
"""

from __future__ import annotations

import logging
import multiprocessing as mp
import os
import signal
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
from hydra.core.global_hydra import GlobalHydra

import xmr.data.datamodule as datamodule
import xmr.data.mining as mining
import xmr.train as train_cmd
from xmr.data.datamodule import mining_tag, prepare_store_and_lists
from xmr.data.mining import MINING_DEFAULTS, mine_lists
from xmr.data.store import FeatureStore
from xmr.utils.lock import DirLock, LockBusy, lock_file_of, read_holder

pytestmark = pytest.mark.skipif(sys.platform != "linux", reason="fork + flock: Linux")

CTX = mp.get_context("fork")
WAIT = 60.0  # seconds; a safety net only (every step is driven by an Event)
TINY_MINING = {**MINING_DEFAULTS, "pool": 30, "hard": 10}
TINY_SYNTH = {"preset": "tiny", "seed": 0}


class _SetOnWaiting(logging.Handler):
    """Sets ``event`` when the lock logs that this process waits for another."""

    def __init__(self, event: Any) -> None:
        super().__init__()
        self.event = event
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        line = record.getMessage()
        self.lines.append(line)
        if "waiting for it" in line:
            self.event.set()


def _child(target: Any, *args: Any) -> Any:
    """A forked process running ``target(*args)``; one torch thread (OpenMP after fork)."""

    def run() -> None:
        torch.set_num_threads(1)
        target(*args)

    proc = CTX.Process(target=run, daemon=True)
    proc.start()
    return proc


def _finish(proc: Any, timeout: float = WAIT) -> int:
    proc.join(timeout)
    if proc.is_alive():
        proc.kill()
        pytest.fail("a child process did not finish")
    return proc.exitcode


def _paused(event_inside: Any, go: Any, real: Any) -> Any:
    """``real`` that first signals ``event_inside`` and waits for ``go``."""

    def wrapper(*args: Any, **kwargs: Any) -> Any:
        event_inside.set()
        assert go.wait(WAIT), "never released"
        return real(*args, **kwargs)

    return wrapper


def _watch_waiting(event: Any) -> _SetOnWaiting:
    handler = _SetOnWaiting(event)
    logging.getLogger("xmr.utils.lock").addHandler(handler)
    logging.getLogger("xmr.data.datamodule").addHandler(handler)
    logging.getLogger("xmr.data.datamodule").setLevel(logging.INFO)
    return handler


# ------------------------------------------------------------------------------------ the lock
def _hold(directory: Path, held: Any, release: Any) -> None:
    with DirLock(directory, what="holding it for a test"):
        held.set()
        release.wait(WAIT)


def test_lock_records_its_holder_and_vanishes_with_a_killed_process(tmp_path: Path) -> None:
    work = tmp_path / "work"
    held, release = CTX.Event(), CTX.Event()
    proc = _child(_hold, work, held, release)
    assert held.wait(WAIT)
    with pytest.raises(LockBusy) as busy:
        DirLock(work).acquire(wait=False)
    holder = busy.value.holder
    assert holder is not None and holder["pid"] == proc.pid
    assert holder["what"] == "holding it for a test" and holder["since"] and holder["host"]
    assert f"in use by pid {proc.pid} (command " in str(busy.value)
    os.kill(proc.pid, signal.SIGKILL)  # no clean release: the kernel drops the flock
    proc.join(WAIT)
    lock = DirLock(work).acquire(wait=False)
    assert read_holder(lock_file_of(work))["pid"] == os.getpid()
    lock.release()
    assert not lock_file_of(work).exists()  # a clean release deletes the lock file


def test_lock_is_reentrant_within_a_process(tmp_path: Path) -> None:
    outer = DirLock(tmp_path / "d").acquire(wait=False)
    inner = DirLock(tmp_path / "d" / ".." / "d").acquire(wait=False)  # one lock, any spelling
    inner.release()
    assert outer.held and lock_file_of(tmp_path / "d").exists()
    outer.release()
    assert not outer.held and not lock_file_of(tmp_path / "d").exists()


# ------------------------------------------------------------------------------------ mining
def _prepare(
    store: Path, lists: Path, synth: Any, inside: Any, go: Any, waiting: Any, out: Any, pause: str
) -> None:
    """One ``xmr mine`` / ``xmr train`` data preparation, reporting what it generated / mined."""
    calls = {"synth": 0, "mine": 0}
    real_synth, real_mine = datamodule.write_synthetic_store, datamodule.mine_lists

    def counted(name: str, real: Any) -> Any:
        def f(*args: Any, **kwargs: Any) -> Any:
            calls[name] += 1
            return real(*args, **kwargs)

        return f

    synth_fn, mine_fn = counted("synth", real_synth), counted("mine", real_mine)
    if pause == "synth":
        synth_fn = _paused(inside, go, synth_fn)
    elif pause == "mine":
        mine_fn = _paused(inside, go, mine_fn)
    datamodule.write_synthetic_store, datamodule.mine_lists = synth_fn, mine_fn
    handler = _watch_waiting(waiting)
    try:
        prepare_store_and_lists(store, lists, synth, TINY_MINING)
        out.put({"ok": True, **calls, "lines": handler.lines})
    except BaseException as err:  # reported to the test
        out.put({"ok": False, "error": repr(err), **calls, "lines": handler.lines})


def _two_preparations(store: Path, lists: Path, synth: Any, pause: str) -> tuple[dict, dict]:
    """First process pauses inside its generation / mining; the second starts, announces that
    it waits; then the first is released. Returns both reports (first, second)."""
    inside, go, waiting = CTX.Event(), CTX.Event(), CTX.Event()
    never = CTX.Event()
    out_a, out_b = CTX.Queue(), CTX.Queue()
    a = _child(_prepare, store, lists, synth, inside, go, never, out_a, pause)
    assert inside.wait(WAIT), "the first process never started its work"
    b = _child(_prepare, store, lists, synth, CTX.Event(), CTX.Event(), waiting, out_b, "")
    assert waiting.wait(WAIT), "the second process did not wait for the first"
    go.set()
    first, second = out_a.get(timeout=WAIT), out_b.get(timeout=WAIT)
    assert _finish(a) == 0 and _finish(b) == 0
    return first, second


def test_two_miners_of_one_lists_dir_the_second_waits_and_uses_the_lists(
    tiny_store: Path, tmp_path: Path
) -> None:
    lists = tmp_path / "lists" / mining_tag(TINY_MINING)
    first, second = _two_preparations(tiny_store, lists, None, pause="mine")
    assert first["ok"] and first["mine"] == 1, first
    assert second["ok"], second
    assert second["mine"] == 0, "the second miner mined again instead of using the lists"
    assert any("mining candidate lists" in line for line in second["lines"])  # named the holder
    assert any("mined meanwhile by another process" in line for line in second["lines"])
    assert (lists / "lists.json").is_file()
    assert not (lists.parent / f".{lists.name}.partial").exists()
    assert not lock_file_of(lists).exists()


def _mine_over(store: Path, lists: Path, inside: Any, go: Any, waiting: Any, out: Any) -> None:
    if inside is not None:  # pause inside mining, after the lists directory was claimed
        mining.build_problem = _paused(inside, go, mining.build_problem)
    _watch_waiting(waiting)
    try:
        mine_lists(FeatureStore.open(store), lists, overwrite=True, **TINY_MINING)
        out.put("ok")
    except BaseException as err:  # reported to the test
        out.put(repr(err))


def test_two_overwriting_miners_run_one_after_the_other(tiny_store: Path, tmp_path: Path) -> None:
    lists = tmp_path / "lists" / "hard"
    inside, go, waiting, out = CTX.Event(), CTX.Event(), CTX.Event(), CTX.Queue()
    a = _child(_mine_over, tiny_store, lists, inside, go, CTX.Event(), out)
    assert inside.wait(WAIT)
    b = _child(_mine_over, tiny_store, lists, None, None, waiting, out)
    assert waiting.wait(WAIT), "the second miner did not wait for the first"
    go.set()
    assert [out.get(timeout=WAIT), out.get(timeout=WAIT)] == ["ok", "ok"]
    assert _finish(a) == 0 and _finish(b) == 0
    reference = mine_lists(FeatureStore.open(tiny_store), tmp_path / "ref", **TINY_MINING)
    for name in ("t2i_train.npz", "i2t_test.npz"):
        assert (lists / name).read_bytes() == (reference / name).read_bytes()


def test_two_trainings_on_a_fresh_data_dir_generate_the_store_once(tmp_path: Path) -> None:
    store = tmp_path / "data" / "synthetic-tiny"
    lists = store / "lists" / mining_tag(TINY_MINING)
    first, second = _two_preparations(store, lists, TINY_SYNTH, pause="synth")
    assert first["ok"] and first["synth"] == 1, first
    assert second["ok"], second  # before: FileExistsError from write_store
    assert second["synth"] == 0
    assert first["mine"] + second["mine"] == 1  # whichever reached the lists first mined them
    assert any("generated meanwhile by another process" in line for line in second["lines"])
    FeatureStore.open(store)
    assert (lists / "lists.json").is_file()
    assert not lock_file_of(store).exists() and not lock_file_of(lists).exists()


# ------------------------------------------------------------------------------------ run dirs
def _train_argv(store: Path, run_dir: Path) -> list[str]:
    return [
        "xmr train",
        "data=synthetic_tiny",
        f"data.store={store}",
        "data.synth=null",
        f"data.lists_root={run_dir.parent / 'lists'}",
        "trainer.max_epochs=1",
        "trainer.enable_progress_bar=false",
        f"hydra.run.dir={run_dir}",
    ]


def _xmr_train(argv: list[str], inside: Any, go: Any, out: Any) -> None:
    """``xmr train`` as the console script runs it (Hydra, callbacks and all), in this process."""
    GlobalHydra.instance().clear()
    sys.argv = list(argv)
    if inside is not None:  # pause once the run is under way (config.yaml written)
        train_cmd._fit_and_test = _paused(inside, go, train_cmd._fit_and_test)
    try:
        train_cmd.main()
        out.put(("exit", 0, ""))
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else 1
        out.put(("exit", code, "" if isinstance(exc.code, int) else str(exc.code)))


def _snapshot(root: Path) -> dict[str, tuple[int, int]]:
    return {
        str(p.relative_to(root)): (p.stat().st_mtime_ns, p.stat().st_size)
        for p in sorted(root.rglob("*"))
    }


def test_second_training_in_a_busy_run_dir_is_refused_and_writes_nothing(
    tiny_store: Path, tmp_path: Path
) -> None:
    run_dir = tmp_path / "runs" / "job"
    inside, go, out_a, out_b = CTX.Event(), CTX.Event(), CTX.Queue(), CTX.Queue()
    a = _child(_xmr_train, _train_argv(tiny_store, run_dir), inside, go, out_a)
    assert inside.wait(WAIT), "the first training never started"
    before = _snapshot(run_dir)
    assert "config.yaml" in before and ".hydra/config.yaml" in before
    b = _child(_xmr_train, _train_argv(tiny_store, run_dir), None, None, out_b)
    _, code, message = out_b.get(timeout=WAIT)
    assert _finish(b) == 0  # the child itself reports the command's exit status
    assert code != 0
    assert message.startswith(f"error: {run_dir} is in use by pid {a.pid} (command 'xmr train ")
    assert message.endswith("; wait for it or use another hydra.run.dir")
    assert _snapshot(run_dir) == before, "the refused run wrote into the run directory"
    go.set()
    assert out_a.get(timeout=WAIT) == ("exit", 0, "")
    assert _finish(a) == 0
    assert (run_dir / "results.json").is_file()
    assert not lock_file_of(run_dir).exists()  # released at the end of the run
