"""xmr.utils.io: atomic publishing of a directory and resumable work directories; a full disk
named as such."""

from __future__ import annotations

import errno
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from xmr.utils.io import (
    WORK_STATE,
    NoSpaceLeftError,
    WorkDirMismatch,
    atomic_write,
    atomic_write_text,
    clean_stale_temps,
    is_no_space,
    owner_tag,
    publish_dir,
    resume_work_dir,
)


def _dir(path: Path, **files: str) -> Path:
    path.mkdir()
    for name, text in files.items():
        (path / name).write_text(text)
    return path


def test_publish_dir_renames_and_keeps_only_named_entries(tmp_path: Path) -> None:
    tmp = _dir(tmp_path / ".out.partial", a="1", b="2", **{WORK_STATE: "{}"})
    publish_dir(tmp, tmp_path / "out", keep=["a", "b"])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["a", "b"]


@pytest.mark.parametrize("exchange", [True, False], ids=["renameat2-exchange", "two-renames"])
def test_publish_dir_replaces_only_when_asked(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, exchange: bool
) -> None:
    if not exchange:
        monkeypatch.setattr("xmr.utils.io._exchange", lambda a, b: False)
    target = _dir(tmp_path / "out", old="x")
    with pytest.raises(FileExistsError):
        publish_dir(_dir(tmp_path / "new", a="1"), target)
    assert [p.name for p in target.iterdir()] == ["old"]
    publish_dir(tmp_path / "new", target, replace=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]
    assert [p.name for p in target.iterdir()] == ["a"]


def test_failed_second_rename_puts_the_old_directory_back(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("xmr.utils.io._exchange", lambda a, b: False)
    target = _dir(tmp_path / "out", old="x")
    tmp = _dir(tmp_path / "new", a="1")
    real_replace = os.replace

    def flaky(src: object, dst: object) -> None:
        if Path(str(src)) == tmp:
            raise OSError("rename failed (simulated)")
        real_replace(src, dst)

    monkeypatch.setattr("xmr.utils.io.os.replace", flaky)
    with pytest.raises(OSError, match="simulated"):
        publish_dir(tmp, target, replace=True)
    assert [p.name for p in target.iterdir()] == ["old"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["new", "out"]


def test_resume_work_dir_keeps_parts_of_the_same_key(tmp_path: Path) -> None:
    work = resume_work_dir(tmp_path / "w", {"a": 1, "t": (1, 2)}, fmt="f/1")
    (work / "part").write_text("done")
    assert json.loads((work / WORK_STATE).read_text()) == {
        "format": "f/1",
        "key": {"a": 1, "t": [1, 2]},
    }
    # The same key (compared after a JSON round trip: a tuple equals its list) resumes.
    assert resume_work_dir(work, {"a": 1, "t": [1, 2]}, fmt="f/1") == work
    assert (work / "part").read_text() == "done"


def test_resume_work_dir_of_another_key_is_discarded_or_refused(tmp_path: Path) -> None:
    work = resume_work_dir(tmp_path / "w", {"a": 1, "b": 2}, fmt="f/1")
    (work / "part").write_text("done")
    with pytest.raises(WorkDirMismatch, match=r"differs in: \['b'\]"):
        resume_work_dir(work, {"a": 1, "b": 3}, fmt="f/1", on_mismatch="raise")
    with pytest.raises(WorkDirMismatch, match=r"differs in: \['format'\]"):
        resume_work_dir(work, {"a": 1, "b": 2}, fmt="f/2", on_mismatch="raise")
    assert (work / "part").exists()
    resume_work_dir(work, {"a": 1, "b": 3}, fmt="f/1")
    assert sorted(p.name for p in work.iterdir()) == [WORK_STATE]


def test_resume_work_dir_with_a_damaged_state_starts_over(tmp_path: Path) -> None:
    work = _dir(tmp_path / "w", part="stale", **{WORK_STATE: "{not json"})
    resume_work_dir(work, {"a": 1}, fmt="f/1")
    assert sorted(p.name for p in work.iterdir()) == [WORK_STATE]


def test_atomic_write_gives_ordinary_permissions(tmp_path: Path) -> None:
    umask = os.umask(0o022)
    try:
        path = atomic_write_text(tmp_path / "a.txt", "x")
    finally:
        os.umask(umask)
    assert path.read_text() == "x" and path.stat().st_mode & 0o777 == 0o644
    assert [p.name for p in tmp_path.iterdir()] == ["a.txt"]


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_atomic_write_names_its_temporary_with_its_owner(tmp_path: Path) -> None:
    seen: list[str] = []
    atomic_write(tmp_path / "a.bin", lambda tmp: seen.append(tmp.name) or tmp.write_bytes(b"1"))
    assert seen[0].startswith(f".a.bin.{owner_tag()}.") and seen[0].endswith(".tmp")
    assert owner_tag().endswith(f"-{os.getpid()}")


def test_temporaries_of_dead_processes_are_cleaned_on_the_next_run(tmp_path: Path) -> None:
    host = owner_tag().split("-")[0]
    dead, other_host = f"{host}-{_dead_pid()}", f"{int(host, 16) ^ 1:08x}-{_dead_pid()}"
    names = {
        # a file of atomic_write, a store of write_store, an old directory of publish_dir
        "dead_file": f".results.json.{dead}.0123abcd.tmp",
        "dead_store": f"store.tmp-{dead}",
        "dead_old": f".lists.old-{dead}",
        "live_file": f".results.json.{owner_tag()}.0123abcd.tmp",  # this process: running
        "other_host": f".results.json.{other_host}.0123abcd.tmp",  # not ours to judge
        "no_owner": ".results.json.0123abcd.tmp",  # written before owners were recorded
        "ordinary": "results.json",
    }
    for key, name in names.items():
        if key in ("dead_store", "dead_old"):
            (tmp_path / name).mkdir()
            (tmp_path / name / "x.npy").write_bytes(b"")
        else:
            (tmp_path / name).write_bytes(b"")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / names["dead_file"]).write_bytes(b"")

    removed = clean_stale_temps(tmp_path)
    assert sorted(p.name for p in removed) == sorted(
        names[k] for k in ("dead_file", "dead_store", "dead_old")
    )
    assert (tmp_path / "sub" / names["dead_file"]).exists()  # not recursive unless asked
    assert clean_stale_temps(tmp_path, recursive=True) == [tmp_path / "sub" / names["dead_file"]]
    left = {k for k, n in names.items() if (tmp_path / n).exists()}
    assert left == {"live_file", "other_host", "no_owner", "ordinary"}

    # A resumed work directory is cleaned of them too.
    work = resume_work_dir(tmp_path / "w", {"a": 1}, fmt="f/1")
    (work / names["dead_file"]).write_bytes(b"")
    resume_work_dir(work, {"a": 1}, fmt="f/1")
    assert not (work / names["dead_file"]).exists()


def _disk_full(tmp: Path) -> None:
    tmp.write_bytes(b"x" * 100)
    raise OSError(errno.ENOSPC, "No space left on device")


def _torch_short_write(tmp: Path) -> None:
    """What ``torch.save`` raises on a full disk: ENOSPC only in the chained traceback."""
    try:
        _disk_full(tmp)
    except OSError:
        raise RuntimeError(  # noqa: B904 - implicit context only, as torch leaves it
            "[enforce fail at inline_container.cc:672] . unexpected pos 704 vs 598"
        )


@pytest.mark.parametrize("writer", [_disk_full, _torch_short_write])
def test_a_full_disk_is_reported_with_the_file_being_written(tmp_path: Path, writer) -> None:
    target = tmp_path / "checkpoints" / "last.ckpt"
    with pytest.raises(NoSpaceLeftError) as err:
        atomic_write(target, writer)
    message = str(err.value)
    assert message.startswith(f"no space left on device at {target} (")
    assert " free there now; " in message
    assert ("unexpected pos" in message) == (writer is _torch_short_write)  # the original, too
    assert err.value.errno == errno.ENOSPC and is_no_space(err.value.__cause__)
    assert list(target.parent.iterdir()) == []  # the partial temporary file is gone


def test_other_write_errors_pass_unchanged(tmp_path: Path) -> None:
    def denied(tmp: Path) -> None:
        raise PermissionError(errno.EACCES, "Permission denied")

    with pytest.raises(PermissionError):
        atomic_write(tmp_path / "x", denied)
    assert not is_no_space(RuntimeError("some other torch error"))
    assert is_no_space(
        RuntimeError("[enforce fail at inline_container.cc:778] . file write failed")
    )
    assert is_no_space(OSError(errno.EDQUOT, "Disk quota exceeded"))
