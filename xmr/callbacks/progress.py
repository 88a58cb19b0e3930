"""The training progress bar, counting epochs from 1 like every line xmr prints.

Lightning's bars show its 0-based epoch index (``Epoch 2/2`` in the last of 3 epochs) while the
history lines and the end-of-run summary say ``epoch 3/3``
(:func:`xmr.utils.console.epoch_label`); these subclasses show ``Epoch 3/3``. The rich bar when
``rich`` is installed (Lightning's own default then), the tqdm bar otherwise.
"""

from __future__ import annotations

import importlib.util
from typing import Any

import lightning as L
from lightning.pytorch.callbacks import ProgressBar, RichProgressBar, TQDMProgressBar

from xmr.utils.console import epoch_label


def _description(trainer: L.Trainer) -> str:
    label = epoch_label(int(trainer.current_epoch), trainer.max_epochs)
    return label[0].upper() + label[1:]


class EpochRichProgressBar(RichProgressBar):
    """Lightning's rich bar with 1-based epochs."""

    def _get_train_description(self, current_epoch: int) -> str:
        text = _description(self.trainer)
        # Same padding as Lightning's: no flicker between "Epoch N/M" and "Validation".
        return f"{text:{len(self.validation_description)}}"


class EpochTQDMProgressBar(TQDMProgressBar):
    """Lightning's tqdm bar with 1-based epochs."""

    def on_train_epoch_start(self, trainer: L.Trainer, *args: Any) -> None:
        super().on_train_epoch_start(trainer, *args)
        self.train_progress_bar.set_description(_description(trainer))


def progress_bar() -> ProgressBar:
    """The bar a training run shows: rich when available (as Lightning chooses), else tqdm."""
    if importlib.util.find_spec("rich") is not None:
        return EpochRichProgressBar()
    return EpochTQDMProgressBar()
