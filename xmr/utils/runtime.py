"""Process-wide torch settings a run takes from its config: intra-op threads and denormals."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager

import torch
from omegaconf import DictConfig


@contextmanager
def torch_runtime(cfg: DictConfig) -> Iterator[None]:
    """Apply ``cfg.threads`` (null = all cores) and, for the duration of the block,
    ``cfg.flush_denormal`` (default true).

    Flushing denormals (FTZ/DAZ on x86) makes float values below ~1.2e-38 exactly zero, so
    arithmetic on them stops costing microcode assists. On the 2-core CPU a ranker step on one
    repeated (memorised) batch, whose gradients underflow, took 22.0 ms with denormals and
    18.3 ms without; with fresh batches the difference was within noise (``benchmarks/
    RESULTS.md``). It protects late, saturated training. Nothing the rankers compute is
    meaningful at that magnitude; ``flush_denormal: false`` keeps IEEE gradual
    underflow. The flag is CPU state of the calling thread and also governs plain Python floats,
    so it is switched off again when the block ends (a run inside a notebook or test process
    leaves no trace).
    """
    torch.set_num_threads(int(cfg.get("threads") or os.cpu_count() or 1))
    flush = bool(cfg.get("flush_denormal", True))
    if flush:
        torch.set_flush_denormal(True)
    try:
        yield
    finally:
        if flush:
            torch.set_flush_denormal(False)
