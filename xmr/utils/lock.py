"""Advisory directory locks: one process at a time works on a directory.

:class:`DirLock` takes an exclusive ``fcntl.flock`` on ``<dir>.lock``, a file beside the
directory (a directory published by a rename, as stores and lists are, cannot hold its own lock).
The holder writes who it is into the lock file — ``{"pid", "host", "command", "since", "what"}``
— so that a second process can say whom it waits for (:func:`describe_holder`). The kernel drops
the lock when its process ends, however it ends (a ``kill -9`` leaves at most a stale lock file,
which the next process simply locks again); a clean release deletes the file.

- ``acquire(wait=True)`` blocks until the lock is free, logging once, at WARNING, which process
  holds it (mining, store generation: the waiter then finds the work done and uses it);
- ``acquire(wait=False)`` raises :class:`LockBusy` at once (a training run directory).

Locks are re-entrant within a process (a nested acquire of a held lock counts, the last release
unlocks), so a caller may lock a directory around a function that locks it too. A child created
by ``fork`` does not count as the holder (it shares the descriptor but takes nothing itself).
Locks are advisory: they order xmr processes among themselves and stop nothing else.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import logging
import os
import socket
import sys
import time
from pathlib import Path
from types import TracebackType
from typing import Any

__all__ = ["LOCK_SUFFIX", "DirLock", "LockBusy", "describe_holder", "lock_file_of", "read_holder"]

log = logging.getLogger(__name__)

#: ``<dir><LOCK_SUFFIX>`` is the lock file of ``<dir>``.
LOCK_SUFFIX = ".lock"

# Locks this process holds: lock file -> [descriptor, depth, pid that took it].
_HELD: dict[str, list[int]] = {}


def lock_file_of(directory: str | Path) -> Path:
    """The lock file of ``directory``: ``<directory>.lock`` beside it (absolute, symlinks of the
    parent resolved, so that every spelling of one directory names one lock)."""
    path = Path(os.path.realpath(os.path.abspath(directory)))
    return path.with_name(path.name + LOCK_SUFFIX)


def read_holder(lock_file: str | Path) -> dict[str, Any] | None:
    """What the holder of ``lock_file`` recorded, or None (no file, being written, unreadable)."""
    try:
        holder = json.loads(Path(lock_file).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return holder if isinstance(holder, dict) else None


def describe_holder(holder: dict[str, Any] | None) -> str:
    """``pid 123 (command 'xmr train seed=1', since 2025-01-31 12:00:00)``; a holder that recorded
    nothing (yet) is ``another process``. A holder on another host names it (``pid 123 on h``)."""
    if not holder:
        return "another process (it has not recorded itself)"
    where = f"pid {holder.get('pid', '?')}"
    if holder.get("host") and holder.get("host") != socket.gethostname():
        where += f" on {holder['host']}"
    return f"{where} (command {holder.get('command', '?')!r}, since {holder.get('since', '?')})"


class LockBusy(RuntimeError):
    """``directory`` is locked by another process (``holder``: what it recorded, or None)."""

    def __init__(self, directory: Path, lock_file: Path, holder: dict[str, Any] | None) -> None:
        self.directory, self.lock_file, self.holder = directory, lock_file, holder
        super().__init__(f"{directory} is in use by {describe_holder(holder)}")


class DirLock:
    """The advisory lock of ``directory`` (module docstring); ``what`` names the work in the
    holder record and the log lines (``"mining candidate lists"``). As a context manager it
    acquires with ``wait`` (default True) and releases on exit."""

    def __init__(self, directory: str | Path, *, what: str = "", wait: bool = True) -> None:
        self.directory = Path(os.path.abspath(directory))
        self.lock_file = lock_file_of(directory)
        self.what = what
        self.wait = wait
        self.waited = False  # True once an acquire had to wait for another process

    # ------------------------------------------------------------------ acquire / release
    def acquire(self, *, wait: bool | None = None) -> DirLock:
        """Take the lock (module docstring); returns ``self``. Raises :class:`LockBusy` when
        ``wait`` is False and another process holds it."""
        wait = self.wait if wait is None else wait
        key = str(self.lock_file)
        held = _HELD.get(key)
        if held is not None and held[2] == os.getpid():
            held[1] += 1
            return self
        self.lock_file.parent.mkdir(parents=True, exist_ok=True)
        announced = False
        while True:
            fd = os.open(self.lock_file, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o666)
            try:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except OSError as err:
                    if err.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                        raise
                    holder = read_holder(self.lock_file)
                    if not wait:
                        raise LockBusy(self.directory, self.lock_file, holder) from None
                    if not announced:
                        log.warning(
                            "%s: in use by %s; waiting for it to finish%s",
                            self.directory,
                            describe_holder(holder),
                            f" ({self.what})" if self.what else "",
                        )
                        announced = self.waited = True
                    fcntl.flock(fd, fcntl.LOCK_EX)
                if self._still_the_lock_file(fd):
                    break
            except BaseException:
                os.close(fd)
                raise
            # The holder released and deleted the file we had opened: lock the current one.
            os.close(fd)
        self._record(fd)
        _HELD[key] = [fd, 1, os.getpid()]
        if announced:
            log.warning("%s: free now; going on", self.directory)
        return self

    def _still_the_lock_file(self, fd: int) -> bool:
        try:
            now = os.stat(self.lock_file)
        except FileNotFoundError:
            return False
        mine = os.fstat(fd)
        return (mine.st_dev, mine.st_ino) == (now.st_dev, now.st_ino)

    def _record(self, fd: int) -> None:
        holder = {
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "command": " ".join(sys.argv) or sys.executable,
            "since": time.strftime("%Y-%m-%d %H:%M:%S"),
            "what": self.what,
        }
        data = (json.dumps(holder) + "\n").encode("utf-8")
        os.ftruncate(fd, 0)
        os.pwrite(fd, data, 0)

    def release(self) -> None:
        """Undo one :meth:`acquire`; the last one deletes the lock file and unlocks it."""
        key = str(self.lock_file)
        held = _HELD.get(key)
        if held is None or held[2] != os.getpid():
            return
        held[1] -= 1
        if held[1] > 0:
            return
        del _HELD[key]
        # Delete while still holding it: a process waiting on this file finds it gone once it
        # gets it and locks the path anew (acquire's loop), so two never both hold "the" lock.
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.lock_file)
        os.close(held[0])

    @property
    def held(self) -> bool:
        """Whether this process holds the lock."""
        held = _HELD.get(str(self.lock_file))
        return held is not None and held[2] == os.getpid()

    def __enter__(self) -> DirLock:
        return self.acquire()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.release()
