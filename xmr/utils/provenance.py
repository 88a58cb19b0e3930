"""Where a run's numbers came from: the ``provenance`` block of ``results.json`` (and of
``eval_results.json`` / ``failed.json``), collected here and nowhere else::

    "provenance": {
      "xmr": "0.1.0",                 # installed distribution's version (null: not installed)
      "git": {"commit": "<40 hex>", "dirty": false},   # null unless xmr runs from a git checkout
      "python": "3.11.9", "torch": "2.14.1+cu130", "lightning": "2.6.6", "hydra": "1.3.8",
      "argv": ["xmr train", "loss=listnet", "seed=3"],   # the command line, secrets scrubbed
      "hostname": "node17",
      "started": "2026-05-01T09:30:12+00:00"           # UTC, when the run (job) started
    }

``git`` describes the checkout the imported ``xmr`` package lives in (``git rev-parse HEAD`` and
``git status --porcelain`` there, a few seconds at most, once per process); ``dirty`` is true when
``git status`` lists anything (modified or untracked files; ignored ones such as ``logs/`` do not
count). Without git, outside a checkout, or when git fails or times out the value is null: the
record is never refused for want of it. Nothing here enters a run's config, so
:func:`xmr.runs.results.finished_results` (which compares configs) ignores it, and two runs of one
command differ in ``results.json`` only by ``started``.
"""

from __future__ import annotations

import functools
import importlib.metadata
import os
import platform
import socket
import subprocess
import sys
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from xmr.utils.secrets import SECRET_KEY_PATTERN

#: The checkout (or install location) holding the ``xmr`` package.
PACKAGE_ROOT = Path(__file__).resolve().parents[2]
#: Seconds each git command may take before the commit is recorded as unknown.
GIT_TIMEOUT_S = 5.0
#: Record key -> distribution whose installed version it holds.
DISTRIBUTIONS = {"xmr": "xmr", "torch": "torch", "lightning": "lightning", "hydra": "hydra-core"}


def utc_now() -> str:
    """The current time as ISO 8601 UTC to the second (a run's ``started``)."""
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def _version(distribution: str) -> str | None:
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return None


def _git(root: Path, *args: str) -> str | None:
    """stdout of ``git args`` run in ``root``; None when git is absent, fails or times out."""
    try:
        done = subprocess.run(
            ["git", *args],
            cwd=root,
            capture_output=True,
            text=True,
            timeout=GIT_TIMEOUT_S,
            check=False,
            # Read-only: never take the index lock a concurrent git command may want.
            env={**os.environ, "GIT_OPTIONAL_LOCKS": "0"},
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return done.stdout if done.returncode == 0 else None


def git_state(root: str | Path = PACKAGE_ROOT) -> dict[str, Any] | None:
    """``{"commit", "dirty"}`` of the git checkout at ``root``; None when ``root`` is not the top
    of a checkout (an installed package) or git cannot tell. ``dirty`` is None when only the
    commit could be read."""
    root = Path(root)
    if not (root / ".git").exists():  # a directory, or a file in a worktree / submodule
        return None
    commit = _git(root, "rev-parse", "HEAD")
    if commit is None or not commit.strip():
        return None
    status = _git(root, "status", "--porcelain")
    return {"commit": commit.strip(), "dirty": None if status is None else bool(status.strip())}


@functools.lru_cache(maxsize=1)
def _package_git_state() -> dict[str, Any] | None:
    return git_state(PACKAGE_ROOT)  # the code cannot change under a running process: ask once


def scrub_argv(argv: list[str]) -> list[str]:
    """The command line with the value of every secret-looking ``key=value`` replaced by ``***``
    (the rule of :mod:`xmr.utils.secrets`)."""
    out = []
    for arg in argv:
        key, sep, _ = arg.partition("=")
        out.append(f"{key}=***" if sep and SECRET_KEY_PATTERN.search(key) else arg)
    return out


def collect_provenance(started: str | None = None) -> dict[str, Any]:
    """The ``provenance`` block (module docstring); ``started`` defaults to now."""
    versions = {key: _version(dist) for key, dist in DISTRIBUTIONS.items()}
    return {
        "xmr": versions["xmr"],
        "git": _package_git_state(),
        "python": platform.python_version(),
        "torch": versions["torch"],
        "lightning": versions["lightning"],
        "hydra": versions["hydra"],
        "argv": scrub_argv(list(sys.argv)),
        "hostname": socket.gethostname(),
        "started": started or utc_now(),
    }
