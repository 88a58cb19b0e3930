"""Shared helpers of the xmr benchmarks: machine description, robust timing, matmul peak."""

from __future__ import annotations

import os
import platform
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import torch
from omegaconf import OmegaConf

from xmr.utils.instantiate import instantiate
from xmr.utils.runtime import torch_runtime

CONF = Path(__file__).resolve().parents[1] / "conf"


def machine() -> dict[str, object]:
    """nproc, CPU model, torch version, threads and the 1-minute load average right now."""
    model = "?"
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as fh:
            for line in fh:
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return {
        "nproc": os.cpu_count(),
        "cpu": model,
        "torch": torch.__version__,
        "python": platform.python_version(),
        "threads": torch.get_num_threads(),
        "load1": round(os.getloadavg()[0], 2),
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
    }


def timeit(
    fn: Callable[[], object],
    *,
    repeats: int = 5,
    number: int = 5,
    warmup: int = 2,
    sync: Callable[[], object] | None = None,
) -> float:
    """Median over ``repeats`` of the mean seconds per call of ``fn`` (``number`` calls each).
    ``sync`` waits for queued work (``torch.cuda.synchronize`` on a GPU, where calls return
    before their kernels finish); it runs before each clock start and stop."""
    wait = sync or (lambda: None)
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        wait()
        t0 = time.perf_counter()
        for _ in range(number):
            fn()
        wait()
        times.append((time.perf_counter() - t0) / number)
    return statistics.median(times)


def matmul_gflops(
    n: int = 1024,
    repeats: int = 5,
    *,
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32,
) -> float:
    """The machine's matmul rate (GFLOP/s) at ``n x n`` — the reference for efficiency (fp32 on
    the CPU by default; on a GPU a large ``n`` measures its dense peak in ``dtype``)."""
    device = torch.device(device)
    a = torch.randn(n, n, device=device).to(dtype)
    b = torch.randn(n, n, device=device).to(dtype)
    sync = torch.cuda.synchronize if device.type == "cuda" else None
    sec = timeit(lambda: a @ b, repeats=repeats, number=3, warmup=2, sync=sync)
    return 2 * n**3 / sec / 1e9


def header(title: str) -> None:
    info = machine()
    print(f"\n== {title} ==")
    print("machine: " + ", ".join(f"{k}={v}" for k, v in info.items()))


def make_optimizer(params) -> torch.optim.Optimizer:
    """The optimizer ``xmr train`` builds by default (``conf/optimizer/adam.yaml``: Adam, lr 1e-3,
    fused)."""
    return instantiate(OmegaConf.load(CONF / "optimizer" / "adam.yaml"), where="optimizer")(params)


def runtime(threads: int | None, flush_denormal: bool = True):
    """The process settings of a training run (``xmr.utils.runtime.torch_runtime``), as a
    context manager: ``threads`` (None = all cores) and denormal flushing (default on, as
    ``conf/train.yaml``)."""
    return torch_runtime(OmegaConf.create({"threads": threads, "flush_denormal": flush_denormal}))
