"""Per-epoch record of the logged metrics (``metrics.jsonl``) and a one-line summary per epoch."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import lightning as L

from xmr.utils.io import no_space_reported

log = logging.getLogger(__name__)


class MetricsHistoryCallback(L.Callback):
    """Appends ``{"epoch", "step", <logged key>: value, ...}`` to ``<dirpath>/metrics.jsonl`` after
    every validation epoch and test run, and logs ``epoch N: train/loss … val/t2i/recall@1 …``.

    Each line is one complete JSON record written with a single ``write`` call; a reader skips a
    trailing partial line left by a kill. Validation curves in reports are drawn from this file.
    """

    def __init__(
        self, dirpath: str, keys: tuple[str, ...] = ("recall@1", "recall@5", "recall@10")
    ) -> None:
        self.path = Path(dirpath) / "metrics.jsonl"
        self.keys = keys

    def _record(self, trainer: L.Trainer, stage: str) -> None:
        if not trainer.is_global_zero or trainer.sanity_checking:
            return
        values = {
            k: float(v)
            for k, v in trainer.callback_metrics.items()
            if k.startswith((stage + "/", "train/"))
        }
        record = {
            "stage": stage,
            "epoch": int(trainer.current_epoch),
            "step": int(trainer.global_step),
            **values,
        }
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with no_space_reported(self.path), open(self.path, "a", encoding="utf-8") as fh:
            fh.write(json.dumps(record) + "\n")
        shown = " ".join(
            f"{k}={v:.4f}"
            for k, v in sorted(values.items())
            if k.endswith(("loss", "rsum")) or k.rsplit("/", 1)[-1] in self.keys
        )
        log.info("%s epoch %d: %s", stage, trainer.current_epoch, shown)

    # Lightning calls a callback's *_epoch_end before the module's, where the epoch's metrics are
    # computed: record at *_end, when they are in `callback_metrics`.
    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._record(trainer, "val")

    def on_test_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._record(trainer, "test")


def read_history(path: str | Path) -> list[dict]:
    """Records of a ``metrics.jsonl``; a torn last line (killed run) is skipped."""
    records = []
    for line in Path(path).read_text(encoding="utf-8").splitlines():
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return records
