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
    fn: Callable[[], object], *, repeats: int = 5, number: int = 5, warmup: int = 2
) -> float:
    """Median over ``repeats`` of the mean seconds per call of ``fn`` (``number`` calls each)."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        for _ in range(number):
            fn()
        times.append((time.perf_counter() - t0) / number)
    return statistics.median(times)


def matmul_gflops(n: int = 1024, repeats: int = 5) -> float:
    """The machine's fp32 matmul rate (GFLOP/s) at ``n x n`` — the reference for efficiency."""
    a, b = torch.randn(n, n), torch.randn(n, n)
    sec = timeit(lambda: a @ b, repeats=repeats, number=3, warmup=2)
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
