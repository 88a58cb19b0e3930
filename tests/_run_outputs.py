"""Reading a finished run's outputs in tests that compare two runs (precision tests)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from xmr.callbacks.history import read_history


def train_losses(run: Path) -> list[float]:
    """The training losses ``metrics.jsonl`` holds (``train/...`` of every record, in order)."""
    losses = [
        v
        for r in read_history(run / "metrics.jsonl")
        for k, v in sorted(r.items())
        if k.startswith("train/")
    ]
    assert losses
    return losses


def scores_by_pair(path: Path) -> np.ndarray:
    """The real candidates' scores of a predictions file, each list in candidate-id order (the
    lists come in the same order in every run)."""
    with np.load(path) as z:
        order = np.argsort(z["candidates"], axis=1, kind="stable")
        scores = np.take_along_axis(z["scores"], order, 1)
        real = np.take_along_axis(z["candidates"], order, 1) >= 0
        return scores[real]
