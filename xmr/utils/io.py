"""Atomic publishing and resumable work directories: a reader never sees a half-written output.

- A file is written into a temporary sibling, fsynced and renamed into place
  (:func:`atomic_write`, :func:`atomic_write_text`, :func:`atomic_write_json`).
- A directory is built in a temporary sibling by the caller and published by
  :func:`publish_dir`: every file and the directory are fsynced, then one rename puts it in
  place. An existing directory is replaced by swapping the two in one step (Linux
  ``renameat2(RENAME_EXCHANGE)``), so the path always holds the old or the new directory, never
  neither and never a mix (see :func:`publish_dir` for systems without the swap).
- A resumable work directory (:func:`resume_work_dir`) records the inputs its parts were
  computed from (``state.json``); a run started again with the same inputs keeps the finished
  parts, one with other inputs discards them or is refused.
- Every temporary name carries its owner, ``<host>-<pid>`` (:func:`owner_tag`): a temporary file
  ``.<name>.<owner>.<random>.tmp`` (:func:`atomic_write`), a store being written
  ``<name>.tmp-<owner>`` (:func:`xmr.data.store.write_store`), a directory being replaced
  ``.<name>.old-<owner>`` (:func:`publish_dir`). A process killed mid-write leaves them behind;
  :func:`clean_stale_temps` deletes those of processes of this host that are gone, and the next
  run calls it where it writes (run directories, work directories, the parent of a published
  directory). Temporaries of names without an owner (written before owners were recorded) are
  left alone: nothing tells whether their writer still runs.
- A write that fails because the file system is full raises :class:`NoSpaceLeftError`, whose
  message names the file: ``no space left on device at <path>`` (:func:`no_space_reported`; the
  original error, e.g. torch's ``[enforce fail at inline_container.cc:672] . unexpected pos``,
  stays chained under it).
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import errno
import json
import os
import re
import shutil
import socket
import zlib
from collections.abc import Callable, Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any, Literal

import numpy as np

from xmr.utils.errors import UserError

__all__ = [
    "WORK_STATE",
    "NoSpaceLeftError",
    "WorkDirMismatch",
    "atomic_write",
    "atomic_write_json",
    "atomic_write_text",
    "clean_stale_temps",
    "owner_tag",
    "is_no_space",
    "no_space_reported",
    "publish_dir",
    "remove_if_exists",
    "resume_work_dir",
    "stale_temp",
    "write_once",
]

#: The file of a work directory that records its format and inputs.
WORK_STATE = "state.json"


# ------------------------------------------------------------------------------------- owners
def _host_tag() -> str:
    """8 hex digits naming this host (a hash of its name): temporaries on a file system shared
    by several hosts are only judged by the host that wrote them."""
    return f"{zlib.crc32(socket.gethostname().encode('utf-8')):08x}"


def owner_tag() -> str:
    """``<host>-<pid>``: the process writing a temporary, as recorded in its name."""
    return f"{_host_tag()}-{os.getpid()}"


_OWNER = r"(?P<host>[0-9a-f]{8})-(?P<pid>[0-9]+)"
#: Temporary names of :func:`atomic_write`, :func:`xmr.data.store.write_store`, :func:`publish_dir`.
_TEMP_NAMES = (
    re.compile(rf"^\..+\.{_OWNER}\.[0-9a-f]{{8}}\.tmp$"),
    re.compile(rf"^.+\.tmp-{_OWNER}$"),
    re.compile(rf"^\..+\.old-{_OWNER}$"),
)


def _process_alive(pid: int) -> bool:
    """Whether process ``pid`` of this host runs (one of another user counts as running)."""
    if pid <= 0:
        return True  # not a pid a writer can have: never judged dead
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def stale_temp(path: Path) -> bool:
    """True when ``path`` is a temporary (named with its owner) of a process of this host that no
    longer runs."""
    for pattern in _TEMP_NAMES:
        m = pattern.match(path.name)
        if m:
            return m["host"] == _host_tag() and not _process_alive(int(m["pid"]))
    return False


def clean_stale_temps(directory: str | Path, *, recursive: bool = False) -> list[Path]:
    """Delete the temporaries in ``directory`` (and below it, when ``recursive``) left by
    processes of this host that are gone (:func:`stale_temp`): files and directories. Those of
    running processes, of other hosts and names without an owner stay. Returns what was
    deleted."""
    directory = Path(directory)
    if not directory.is_dir():
        return []
    removed: list[Path] = []
    pending = [directory]
    while pending:
        here = pending.pop()
        try:
            entries = list(here.iterdir())
        except OSError:
            continue
        for entry in entries:
            if stale_temp(entry):
                if entry.is_dir() and not entry.is_symlink():
                    shutil.rmtree(entry, ignore_errors=True)
                else:
                    entry.unlink(missing_ok=True)
                removed.append(entry)
            elif recursive and entry.is_dir() and not entry.is_symlink():
                pending.append(entry)
    return removed


# ------------------------------------------------------------------------------------- full disk
#: Errors torch raises when a write stops short (``torch.save`` into a full file system): the
#: ``OSError`` (ENOSPC) behind them may be only in the chained traceback, or nowhere.
_SHORT_WRITE_MESSAGES = ("unexpected pos", "file write failed")


def is_no_space(exc: BaseException) -> bool:
    """Whether ``exc`` is a full file system: an ``OSError`` with errno ENOSPC (or EDQUOT, a full
    quota) anywhere in its chain (``__cause__`` / ``__context__``), or torch's short-write
    ``RuntimeError`` (``unexpected pos``, ``file write failed``)."""
    stack, seen = [exc], set()
    while stack:
        e = stack.pop()
        if e is None or id(e) in seen:
            continue
        seen.add(id(e))
        if isinstance(e, OSError) and e.errno in (errno.ENOSPC, errno.EDQUOT):
            return True
        if isinstance(e, RuntimeError) and any(m in str(e) for m in _SHORT_WRITE_MESSAGES):
            return True
        stack += [e.__cause__, e.__context__]
    return False


def _free_space(path: Path) -> str:
    for where in (path.parent, *path.parents):
        try:
            free = shutil.disk_usage(where).free
        except OSError:
            continue
        for unit in ("B", "KiB", "MiB", "GiB"):
            if free < 1024 or unit == "GiB":
                return f"{free:.0f} {unit}" if unit == "B" else f"{free:.1f} {unit}"
            free /= 1024
    return "unknown"


class NoSpaceLeftError(OSError):
    """Writing ``path`` failed because its file system is full (errno ENOSPC); the message is
    ``no space left on device at <path> (<free space now>; <the original error>)``."""

    def __init__(self, path: str | Path, cause: BaseException | None = None) -> None:
        self.path = Path(path)
        detail = f"{_free_space(self.path)} free there now"
        if cause is not None:
            detail += f"; {type(cause).__name__}: {str(cause).strip()[:300]}"
        super().__init__(errno.ENOSPC, f"no space left on device at {self.path} ({detail})")

    def __str__(self) -> str:
        return str(self.strerror)


@contextlib.contextmanager
def no_space_reported(path: str | Path) -> Iterator[None]:
    """Turn an error of a full file system (:func:`is_no_space`) raised inside the block into a
    :class:`NoSpaceLeftError` naming ``path``, chained from the original; others pass as they are."""
    try:
        yield
    except NoSpaceLeftError:
        raise
    except Exception as exc:
        if is_no_space(exc):
            raise NoSpaceLeftError(path, exc) from exc
        raise


# ------------------------------------------------------------------------------------- files
def _temp_sibling(path: Path) -> Path:
    """Create an empty, uniquely named hidden sibling of ``path``, named with its owner
    (:func:`owner_tag`; permissions as ``open`` gives: 0666 less the umask, like any other file
    the program writes)."""
    while True:
        tmp = path.with_name(f".{path.name}.{owner_tag()}.{os.urandom(4).hex()}.tmp")
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
        except FileExistsError:
            continue
        os.close(fd)
        return tmp


def atomic_write(path: str | Path, write: Callable[[Path], None]) -> Path:
    """Call ``write(tmp)`` on a temporary sibling of ``path``, fsync it, then rename it into place.

    A full file system raises :class:`NoSpaceLeftError` naming ``path`` (the temporary file is
    removed, which gives back the space it took)."""
    path = Path(path)
    with no_space_reported(path):
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = _temp_sibling(path)
        try:
            write(tmp)
            with open(tmp, "rb") as fh:
                os.fsync(fh.fileno())
            os.replace(tmp, path)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
    return path


def atomic_write_text(path: str | Path, text: str) -> Path:
    return atomic_write(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))


def write_once(path: str | Path, text: str) -> str:
    """Create ``path`` holding ``text`` unless it exists; return what the file holds then.

    The file appears complete or not at all (a hard link of a finished temporary sibling, which
    fails when ``path`` exists), so concurrent writers (the ranks of one job) all read the text of
    the first one."""
    path = Path(path)
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = _temp_sibling(path)
        try:
            tmp.write_text(text, encoding="utf-8")
            with open(tmp, "rb") as fh:
                os.fsync(fh.fileno())
            os.link(tmp, path)
        except FileExistsError:
            pass
        finally:
            tmp.unlink(missing_ok=True)
    return path.read_text(encoding="utf-8")


def atomic_write_json(path: str | Path, obj: Any) -> Path:
    return atomic_write_text(
        path, json.dumps(obj, indent=2, sort_keys=False, default=_json_default) + "\n"
    )


def _json_default(o: Any) -> Any:
    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


def remove_if_exists(path: str | Path) -> bool:
    """Delete ``path`` if it is there (a stale marker such as ``failed.json``); True if it was."""
    try:
        Path(path).unlink()
    except FileNotFoundError:
        return False
    return True


# ------------------------------------------------------------------------------------- directories
def _fsync_path(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_tree(root: Path) -> None:
    """fsync every file below ``root``, then every directory, ``root`` last."""
    dirs = []
    for here, _, files in os.walk(root):
        for name in files:
            _fsync_path(Path(here) / name)
        dirs.append(Path(here))
    for d in reversed(dirs):
        _fsync_path(d)


_RENAME_EXCHANGE = 2


def _exchange(a: Path, b: Path) -> bool:
    """Atomically swap two directories (Linux ``renameat2(RENAME_EXCHANGE)``); False if unsupported."""
    libc_name = ctypes.util.find_library("c")
    if libc_name is None:
        return False
    try:
        libc = ctypes.CDLL(libc_name, use_errno=True)
        renameat2 = libc.renameat2
    except (OSError, AttributeError):
        return False
    at_fdcwd = -100
    rc = renameat2(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), _RENAME_EXCHANGE)
    if rc == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.EINVAL, errno.ENOSYS, errno.EPERM, errno.EOPNOTSUPP):
        return False
    raise OSError(err, os.strerror(err), str(a))


def publish_dir(
    tmp: str | Path,
    target: str | Path,
    *,
    replace: bool = False,
    keep: Iterable[str] | None = None,
) -> Path:
    """Publish the finished directory ``tmp`` (a sibling of ``target``) at ``target`` atomically.

    Every file below ``tmp`` and ``tmp`` itself are fsynced, then ``tmp`` is renamed to
    ``target`` and the parent directory fsynced. With ``keep``, the top-level entries of ``tmp``
    not named there (work files) are deleted first, so exactly those names are published.

    An existing ``target`` is an error unless ``replace``. It is then replaced by the one
    mechanism used everywhere: ``renameat2(RENAME_EXCHANGE)`` swaps ``tmp`` and ``target`` in one
    step (``target`` always holds a complete directory, old or new) and the old one, now at
    ``tmp``, is deleted. Where the kernel or file system lacks the swap, two renames: the old
    directory is parked at ``.<name>.old-<owner>`` beside it, the new one renamed into place (the
    old one is put back if that fails), then the old one deleted; between the two renames
    ``target`` is briefly absent, never a mix. A failure to delete the old directory once the
    new one is in place is not an error (the new directory is published). Old directories left
    beside ``target`` by dead processes (:func:`clean_stale_temps`) are deleted first.

    On an error ``tmp`` is left to the caller (which removes it, or keeps it to resume).
    """
    tmp, target = Path(tmp), Path(target)
    if keep is not None:
        names = set(keep)
        for entry in tmp.iterdir():
            if entry.name not in names:
                if entry.is_dir() and not entry.is_symlink():
                    shutil.rmtree(entry)
                else:
                    entry.unlink()
    _fsync_tree(tmp)
    clean_stale_temps(target.parent)
    if target.exists():
        if not replace:
            raise FileExistsError(f"{target}: already exists (not replacing it)")
        if _exchange(tmp, target):
            shutil.rmtree(tmp, ignore_errors=True)  # tmp now holds the old directory
        else:
            old = target.with_name(f".{target.name}.old-{owner_tag()}")
            if old.exists():
                shutil.rmtree(old)  # left by a crashed replace of a process with the same pid
            os.replace(target, old)
            try:
                os.replace(tmp, target)
            except BaseException:
                os.replace(old, target)
                raise
            shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(tmp, target)
    _fsync_path(target.parent)
    return target


# ------------------------------------------------------------------------------------- work dirs
class WorkDirMismatch(UserError, ValueError):
    """A work directory holds parts computed from other inputs (``differs``: the keys)."""

    def __init__(self, path: Path, differs: list[str]) -> None:
        self.path, self.differs = path, differs
        super().__init__(f"{path / WORK_STATE}: made from other inputs (differs in: {differs})")


def resume_work_dir(
    path: str | Path,
    key: Mapping[str, Any],
    *,
    fmt: str,
    on_mismatch: Literal["discard", "raise"] = "discard",
) -> Path:
    """The resumable work directory ``path`` for a computation whose inputs are ``key``.

    ``path/state.json`` records ``{"format": fmt, "key": key}`` (``key`` must be JSON-able; it is
    compared after a JSON round trip). When it matches, ``path`` is returned as it is and the
    caller keeps the parts found there. When it records other inputs, or is missing or
    unreadable while ``path`` exists: ``on_mismatch="discard"`` deletes ``path`` and starts an
    empty one; ``"raise"`` raises :class:`WorkDirMismatch` for a state of other inputs and adopts
    a directory without a state (the caller decides whether what is there may be kept).
    A new state is written atomically. Temporaries of dead processes inside a kept directory
    are deleted (:func:`clean_stale_temps`).
    """
    path = Path(path)
    want = {"format": fmt, "key": json.loads(json.dumps(dict(key)))}
    state_path = path / WORK_STATE
    state: Any = None
    if state_path.is_file():
        try:
            state = json.loads(state_path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            state = {}
        if state == want:
            clean_stale_temps(path, recursive=True)
            return path
        if on_mismatch == "raise":
            old = state.get("key") if isinstance(state, dict) else None
            old = old if isinstance(old, dict) else {}
            new = want["key"]
            differs = sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))
            if not isinstance(state, dict) or state.get("format") != fmt:
                differs = differs or ["format"]
            raise WorkDirMismatch(path, differs)
    if path.exists() and on_mismatch == "discard":
        shutil.rmtree(path)
    path.mkdir(parents=True, exist_ok=True)
    atomic_write_text(state_path, json.dumps(want, indent=1) + "\n")
    return path
