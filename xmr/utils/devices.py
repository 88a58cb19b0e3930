"""Which GPU a process trains on: the slots of a local sweep and a command's torch device.

A local sweep (``hydra/launcher=local``, :mod:`xmr.utils.launcher`) runs its jobs in worker
processes. On a node with G GPUs :func:`assign_devices` gives it ``G x jobs_per_gpu`` slots
(``XMR_JOBS_PER_GPU``, default 1), slot ``s`` on GPU ``s mod G``, and as many workers as slots;
each worker takes one slot for its whole life (:func:`claim_gpu_slot`, its start-up hook, run
before it imports torch) and sees that GPU alone (``CUDA_VISIBLE_DEVICES``). So a GPU never runs
more than ``jobs_per_gpu`` jobs at once and a job sees exactly one device. Without a GPU nothing
is pinned and ``XMR_JOBS`` (default 2) jobs run at once, as before.

Slots are advisory locks (:class:`xmr.utils.lock.DirLock`) in one directory per user and node,
``<tmp>/xmr-gpu-slots-<uid>`` unless the launcher's ``lock_dir`` says otherwise, so two sweeps
started on one node share the GPUs instead of doubling up: a worker that finds every slot taken
waits for one (logging once whom it waits for). The kernel drops a slot when its worker ends.

:func:`torch_device` is the device of a command that places tensors itself
(``xmr train-ensemble``): ``trainer.accelerator``, and the first visible GPU — inside a pinned
worker, the worker's own.

This module does not import torch at import time: a worker loads it to run its start-up hook,
before anything may initialise CUDA.
"""

from __future__ import annotations

import logging
import os
import re
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from xmr.utils.instantiate import ConfigError
from xmr.utils.lock import DirLock, LockBusy, describe_holder, read_holder

__all__ = [
    "CPU_JOBS",
    "DevicePlan",
    "assign_devices",
    "claim_gpu_slot",
    "default_lock_dir",
    "device_count",
    "slot_lock_name",
    "slot_table",
    "torch_device",
    "visible_gpus",
]

log = logging.getLogger(__name__)

#: Jobs at once on a node without a GPU when ``XMR_JOBS`` is unset (two single-thread jobs: the
#: 2-core machines' best, README "Performance").
CPU_JOBS = 2
#: The variable CUDA reads (once, when it initialises) to know which GPUs a process may use.
VISIBLE_ENV = "CUDA_VISIBLE_DEVICES"
#: Seconds between two looks at the slots while every one is taken.
POLL_S = 1.0

# Slots this process holds (kept open for the life of the process; see claim_gpu_slot).
_CLAIMED: list[DirLock] = []


@dataclass(frozen=True)
class DevicePlan:
    """How a local sweep runs: ``n_jobs`` jobs at once; ``devices[s]`` is the GPU (an index into
    the node's visible GPUs) of worker slot ``s``, empty on a node without a GPU."""

    n_jobs: int
    devices: tuple[int, ...] = ()
    jobs_per_gpu: int = 1


def assign_devices(n_jobs: int | None, device_count: int, jobs_per_gpu: int = 1) -> DevicePlan:
    """The device plan of a local sweep (module docstring) — the one place it is decided.

    ``n_jobs`` is what ``XMR_JOBS`` asks for (None: not set), ``device_count`` the node's visible
    GPUs, ``jobs_per_gpu`` the most jobs one GPU runs at once (``XMR_JOBS_PER_GPU``).

    - No GPU: ``n_jobs`` (default :data:`CPU_JOBS`) jobs at once, passed to joblib unchanged (so
      joblib's own meanings, e.g. -1 = one per core, stay); no slots.
    - G GPUs: ``G x jobs_per_gpu`` slots, slot ``s`` on GPU ``s mod G`` (the first G slots cover
      every GPU once); ``n_jobs`` unset or < 1 takes them all, a larger ``n_jobs`` is cut to the
      slots (a warning says so: sharing a GPU further is asked with ``jobs_per_gpu``).
    """
    if isinstance(jobs_per_gpu, bool) or not isinstance(jobs_per_gpu, int) or jobs_per_gpu < 1:
        raise ConfigError(f"XMR_JOBS_PER_GPU={jobs_per_gpu!r}: needs an integer >= 1")
    if n_jobs is not None and (isinstance(n_jobs, bool) or not isinstance(n_jobs, int)):
        raise ConfigError(f"XMR_JOBS={n_jobs!r}: needs an integer")
    if device_count < 1:
        return DevicePlan(CPU_JOBS if n_jobs is None else n_jobs, (), jobs_per_gpu)
    capacity = device_count * jobs_per_gpu
    n = capacity if n_jobs is None or n_jobs < 1 else n_jobs
    if n > capacity:
        log.warning(
            "XMR_JOBS=%d but %d GPU(s) x XMR_JOBS_PER_GPU=%d: running %d jobs at once "
            "(raise XMR_JOBS_PER_GPU to put more jobs on one GPU)",
            n,
            device_count,
            jobs_per_gpu,
            capacity,
        )
        n = capacity
    return DevicePlan(n, tuple(s % device_count for s in range(n)), jobs_per_gpu)


def device_count() -> int:
    """The GPUs torch sees in this process (0 without CUDA). Initialises the CUDA driver: call it
    in a sweep's launching process, never in a worker before :func:`claim_gpu_slot`."""
    import torch

    return int(torch.cuda.device_count()) if torch.cuda.is_available() else 0


def visible_gpus(count: int | None = None, environ: Mapping[str, str] | None = None) -> list[str]:
    """The names a worker puts in ``CUDA_VISIBLE_DEVICES`` for each GPU this process sees, in
    torch's order: the entries of this process's own ``CUDA_VISIBLE_DEVICES`` when it is set
    (``CUDA_VISIBLE_DEVICES=2,3 xmr train -m ...`` sweeps over GPUs 2 and 3; UUIDs stay UUIDs),
    else ``"0"`` ... ``"G-1"``. ``count`` defaults to :func:`device_count`."""
    environ = os.environ if environ is None else environ
    n = device_count() if count is None else int(count)
    given = environ.get(VISIBLE_ENV)
    if given is not None and given.strip():
        names = [x.strip() for x in given.split(",") if x.strip()]
        return names[:n]
    return [str(i) for i in range(n)]


def default_lock_dir() -> Path:
    """Where the slot locks of this user's local sweeps on this node live."""
    uid = os.getuid() if hasattr(os, "getuid") else 0
    return Path(tempfile.gettempdir()) / f"xmr-gpu-slots-{uid}"


def slot_lock_name(gpu: str, index: int) -> str:
    """The lock (a name in the lock directory) of the ``index``-th slot of GPU ``gpu``."""
    return f"gpu-{re.sub(r'[^A-Za-z0-9_.-]', '_', gpu)}.slot{index}"


def slot_table(plan: DevicePlan, gpus: Sequence[str]) -> list[tuple[str, str]]:
    """``(GPU name, lock name)`` of each slot of ``plan``, in slot order."""
    seen: dict[int, int] = {}
    table = []
    for d in plan.devices:
        k = seen.get(d, 0)
        seen[d] = k + 1
        table.append((gpus[d], slot_lock_name(gpus[d], k)))
    return table


def claim_gpu_slot(lock_dir: str, slots: Sequence[tuple[str, str]]) -> str:
    """A worker's start-up hook: take the first free slot of ``slots`` (``(GPU, lock name)``
    pairs, :func:`slot_table`), waiting while all are taken, hold it for the life of the process
    and make its GPU the only one this process sees (``CUDA_VISIBLE_DEVICES``). Returns the GPU.

    Must run before the process initialises CUDA (CUDA reads the variable once): a worker runs
    it before it unpickles any job, so before it imports torch.
    """
    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_initialized():
        raise RuntimeError(
            f"claim_gpu_slot: CUDA is initialised already in pid {os.getpid()}; "
            f"{VISIBLE_ENV} would not apply"
        )
    directory = Path(lock_dir)
    announced = False
    while True:
        for gpu, name in slots:
            lock = DirLock(directory / name, what=f"a local sweep's job on GPU {gpu}")
            try:
                lock.acquire(wait=False)
            except LockBusy:
                continue
            _CLAIMED.append(lock)
            os.environ[VISIBLE_ENV] = gpu
            if announced:
                log.warning("pid %d: GPU %s free now; going on", os.getpid(), gpu)
            return gpu
        if not announced:
            holders = "; ".join(
                f"{name}: {describe_holder(read_holder(directory / (name + '.lock')))}"
                for _, name in slots
            )
            log.warning(
                "pid %d: every GPU slot of this sweep is taken (%s); waiting for one",
                os.getpid(),
                holders,
            )
            announced = True
        time.sleep(POLL_S)


def torch_device(trainer: Mapping[str, Any]) -> Any:
    """The one ``torch.device`` of a command that places its tensors itself (the ensemble), from
    its ``trainer`` config: ``accelerator`` ``cpu`` -> the CPU; ``auto`` -> the GPU when CUDA is
    available, else the CPU; ``gpu`` / ``cuda`` -> the GPU (an error without one). The GPU is the
    first one visible (``cuda:0``): in a local sweep's worker, the worker's own; elsewhere pick it
    with ``CUDA_VISIBLE_DEVICES``. On a GPU ``devices`` must name one device (``1``, ``auto``,
    ``[0]``)."""
    import torch

    accelerator = str(trainer.get("accelerator", "auto") or "auto").lower()
    if accelerator == "cpu":
        return torch.device("cpu")
    if accelerator not in ("auto", "gpu", "cuda"):
        raise ConfigError(
            f"trainer.accelerator={accelerator!r}: this command runs on 'cpu', 'gpu' (= 'cuda') "
            "or 'auto'"
        )
    if not torch.cuda.is_available():
        if accelerator == "auto":
            return torch.device("cpu")
        raise ConfigError(f"trainer.accelerator={accelerator!r}: no CUDA device is visible")
    devices = trainer.get("devices", 1)
    one = devices is None or (
        devices in (1, "1", "auto")
        if not isinstance(devices, Sequence) or isinstance(devices, str)
        else list(devices) == [0]
    )
    if not one:
        raise ConfigError(
            f"trainer.devices={devices!r}: this command trains on one GPU, the first visible "
            "(devices=1); choose it with CUDA_VISIBLE_DEVICES=<gpu>, or run one job per GPU "
            "with hydra/launcher=local"
        )
    return torch.device("cuda", 0)
