"""Per-epoch record of the logged metrics (``metrics.jsonl``) and a one-line summary per epoch."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import lightning as L

from xmr.utils.console import epoch_label, metrics_line
from xmr.utils.io import atomic_write_text, no_space_reported

log = logging.getLogger(__name__)


class MetricsHistoryCallback(L.Callback):
    """Appends ``{"epoch", "step", <logged key>: value, ...}`` to ``<dirpath>/metrics.jsonl`` after
    every validation epoch and test run, and logs ``val epoch 3/10: rsum 151.0 | i2t R@1 25.0% …``
    (epochs from 1, recall in percent: :func:`xmr.utils.console.metrics_line`; the record keeps
    Lightning's 0-based ``epoch`` and fractions).

    Each line is one complete JSON record written with a single ``write`` call; a reader skips a
    trailing partial line left by a kill. Validation curves in reports are drawn from this file.

    One record per (stage, epoch), whatever the run went through: a record of epoch ``e``
    supersedes the records of the same stage and epoch and every record of a later epoch (those
    of an attempt that was killed before its checkpoint, redone by the resumed run; a fresh start
    supersedes them all with its first record). The file is then rewritten atomically
    (:func:`xmr.utils.io.atomic_write_text`), as it is when a kill left a torn last line.
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
        append_record(self.path, record)
        shown = metrics_line(
            {
                k: v
                for k, v in values.items()
                if k in ("train/loss", f"{stage}/rsum")
                or (k.startswith(f"{stage}/") and k.rsplit("/", 1)[-1] in (*self.keys, "loss"))
            }
        )
        # Epochs count from 1 on screen (the progress bar agrees); the record keeps the index.
        # The test runs after the last epoch, on the best checkpoint: no epoch to name.
        where = epoch_label(record["epoch"], trainer.max_epochs) if stage == "val" else ""
        log.info("%s%s: %s", stage, f" {where}" if where else "", shown)

    # Lightning calls a callback's *_epoch_end before the module's, where the epoch's metrics are
    # computed: record at *_end, when they are in `callback_metrics`.
    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._record(trainer, "val")

    def on_test_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._record(trainer, "test")


def read_history(path: str | Path) -> list[dict]:
    """Records of a ``metrics.jsonl``; a torn last line (killed run) is skipped."""
    return _parse_history(Path(path).read_text(encoding="utf-8"))


def _parse_history(text: str) -> list[dict]:
    records = []
    for line in text.splitlines():
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return records


def _superseded(old: dict, new: dict) -> bool:
    """Whether ``new`` replaces the earlier record ``old`` (see :class:`MetricsHistoryCallback`)."""
    epoch = old.get("epoch")
    if not isinstance(epoch, int):
        return False
    return epoch > new["epoch"] or (epoch == new["epoch"] and old.get("stage") == new["stage"])


def append_record(path: Path, record: dict) -> None:
    """Add ``record`` to the ``metrics.jsonl`` at ``path``: appended with one ``write`` when it
    supersedes nothing there and the file ends with a complete line, else the file is rewritten
    atomically without the superseded records (and a torn last line)."""
    line = json.dumps(record) + "\n"
    text = path.read_text(encoding="utf-8") if path.is_file() else ""
    earlier = _parse_history(text)
    kept = [r for r in earlier if not _superseded(r, record)]
    if len(kept) == len(earlier) and (not text or text.endswith("\n")):
        path.parent.mkdir(parents=True, exist_ok=True)
        # the atomic rewrite below names a full disk itself (xmr.utils.io.atomic_write)
        with no_space_reported(path), open(path, "a", encoding="utf-8") as fh:
            fh.write(line)
        return
    atomic_write_text(path, "".join(json.dumps(r) + "\n" for r in kept) + line)
