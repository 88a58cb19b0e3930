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
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import json
import os
import shutil
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any, Literal

import numpy as np

from xmr.utils.errors import UserError

__all__ = [
    "WORK_STATE",
    "WorkDirMismatch",
    "atomic_write",
    "atomic_write_json",
    "atomic_write_text",
    "publish_dir",
    "remove_if_exists",
    "resume_work_dir",
    "write_once",
]

#: The file of a work directory that records its format and inputs.
WORK_STATE = "state.json"


# ------------------------------------------------------------------------------------- files
def _temp_sibling(path: Path) -> Path:
    """Create an empty, uniquely named hidden sibling of ``path`` (permissions as ``open`` gives:
    0666 less the umask, like any other file the program writes)."""
    while True:
        tmp = path.with_name(f".{path.name}.{os.urandom(4).hex()}.tmp")
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
        except FileExistsError:
            continue
        os.close(fd)
        return tmp


def atomic_write(path: str | Path, write: Callable[[Path], None]) -> Path:
    """Call ``write(tmp)`` on a temporary sibling of ``path``, fsync it, then rename it into place."""
    path = Path(path)
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
    directory is parked at ``.<name>.old-<pid>`` beside it, the new one renamed into place (the
    old one is put back if that fails), then the old one deleted; between the two renames
    ``target`` is briefly absent, never a mix. A failure to delete the old directory once the
    new one is in place is not an error (the new directory is published).

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
    if target.exists():
        if not replace:
            raise FileExistsError(f"{target}: already exists (not replacing it)")
        if _exchange(tmp, target):
            shutil.rmtree(tmp, ignore_errors=True)  # tmp now holds the old directory
        else:
            old = target.with_name(f".{target.name}.old-{os.getpid()}")
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
    A new state is written atomically.
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
