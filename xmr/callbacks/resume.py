"""Resuming a run: ``last.ckpt`` every epoch, written atomically, with every random state.

A run killed at any point and started again with the same command (:func:`resume_checkpoint`)
redoes at most the epoch in progress and ends bit-identical to an uninterrupted run on CPU
(tests/test_resume.py, tests/test_determinism.py):

- :func:`last_checkpoint_callback` writes ``checkpoints/last.ckpt`` at the end of every epoch;
- :class:`AtomicCheckpointIO` writes every checkpoint into a temporary sibling and renames it;
- :class:`RNGStateCallback` saves and restores the global RNGs and the data module's train order;
- :class:`LastValidationCallback` saves the last validation's values, so that a run resumed after
  its last epoch (killed before ``results.json``) records the same ``val/*`` values;
- :class:`RunCheckpoint` (every checkpoint callback of a run) never writes ``-v1`` names and
  follows a run directory that was moved;
- :func:`clear_checkpoints`: a run that starts fresh deletes the checkpoints of an earlier attempt
  (a ``best.ckpt`` written before the first ``last.ckpt`` would otherwise be taken for its own).
"""

from __future__ import annotations

import logging
import os
import random
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO
from lightning.pytorch.callbacks import ModelCheckpoint

from xmr.utils.io import atomic_write

log = logging.getLogger(__name__)

LAST_CHECKPOINT = "last"  # <run dir>/checkpoints/last.ckpt


def resume_checkpoint(out: Path, enabled: bool = True) -> Path | None:
    """``<out>/checkpoints/last.ckpt`` when it exists and resuming is ``enabled``, else None."""
    last = Path(out) / "checkpoints" / f"{LAST_CHECKPOINT}.ckpt"
    return last if enabled and last.exists() else None


def clear_checkpoints(out: Path) -> list[Path]:
    """Delete the checkpoints in ``<out>/checkpoints`` (a run starting fresh: they belong to an
    earlier attempt, e.g. the ``best.ckpt`` of a run killed before its first ``last.ckpt``, or a
    run started again with ``resume=false``). Returns what was deleted."""
    ckpt_dir = Path(out) / "checkpoints"
    removed = sorted(ckpt_dir.glob("*.ckpt")) if ckpt_dir.is_dir() else []
    for path in removed:
        path.unlink(missing_ok=True)
    if removed:
        log.info("starting fresh: deleted %s", ", ".join(p.name for p in removed))
    return removed


class RunCheckpoint(ModelCheckpoint):
    """Lightning's ``ModelCheckpoint`` for a run directory that restarts and moves.

    - ``enable_version_counter`` defaults to False: a name is overwritten (atomically, by
      :class:`AtomicCheckpointIO`), never turned into ``best-v1.ckpt`` beside a stale
      ``best.ckpt``.
    - A checkpoint written under another ``dirpath`` (the run directory was moved or copied) is
      restored with its paths mapped into this ``dirpath``. Lightning's own callback would keep
      the old ``best_model_path`` and drop ``best_model_score`` and the top-k state, so a resumed
      run would test the old directory's weights (or the last ones) and record no best value.
    """

    def __init__(self, *args: Any, enable_version_counter: bool = False, **kwargs: Any) -> None:
        super().__init__(*args, enable_version_counter=enable_version_counter, **kwargs)

    @property
    def state_key(self) -> str:
        # Lightning's key names the class: keep ModelCheckpoint's, so checkpoints written before
        # (or read by a plain ModelCheckpoint) restore this callback's state and vice versa.
        return super().state_key.replace(type(self).__qualname__, "ModelCheckpoint", 1)

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        old = state_dict.get("dirpath")
        new = self.dirpath
        if old and new and str(old) != str(new):
            log.info("checkpoint dirpath moved: %s -> %s", old, new)
            state_dict = _relocated(state_dict, str(old), str(new))
        super().load_state_dict(state_dict)


def _relocated(state: dict[str, Any], old: str, new: str) -> dict[str, Any]:
    """``ModelCheckpoint`` state with the paths below ``old`` moved below ``new``."""

    def move(path: Any) -> Any:
        if isinstance(path, str) and path.startswith(old.rstrip(os.sep) + os.sep):
            return os.path.join(new, os.path.relpath(path, old))
        return path

    state = dict(state)
    state["dirpath"] = new
    for key in ("best_model_path", "kth_best_model_path", "last_model_path"):
        if key in state:
            state[key] = move(state[key])
    if isinstance(state.get("best_k_models"), dict):
        state["best_k_models"] = {move(k): v for k, v in state["best_k_models"].items()}
    return state


class LastValidationCallback(L.Callback):
    """Saves the last validation's ``val/*`` values in each checkpoint.

    ``results.json`` records them from ``trainer.callback_metrics``, which a run resumed after its
    last epoch (killed between the final ``last.ckpt`` and ``results.json``, or whose
    ``results.json`` could not be written) never fills: fit has nothing left to do.
    :meth:`values` gives this process's last validation, else the checkpoint's, so the record holds
    the values an uninterrupted run records. Plain floats: checkpoints load with
    ``weights_only=True``.
    """

    state_key = "xmr.last_validation"  # type: ignore[assignment]

    def __init__(self) -> None:
        self._trainer: L.Trainer | None = None
        self._restored: dict[str, float] = {}

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        self._trainer = trainer

    def values(self, trainer: L.Trainer | None = None) -> dict[str, float]:
        """The ``val/*`` values of the last validation of the run (this process's, else those
        restored from the checkpoint it resumed from; empty when neither validated)."""
        trainer = trainer or self._trainer
        metrics = trainer.callback_metrics if trainer is not None else {}
        current = {k: float(v) for k, v in metrics.items() if k.startswith("val/")}
        return current or dict(self._restored)

    def state_dict(self) -> dict[str, Any]:
        return {"val": self.values()}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._restored = {str(k): float(v) for k, v in (state_dict.get("val") or {}).items()}


def resume_hint(out: Path) -> str:
    """What to do after an interrupted run of ``out``: start the same command again."""
    last = resume_checkpoint(out)
    if last is not None:
        return f"run the same command again to resume from {last}"
    return f"run the same command again to start over (no checkpoint yet in {Path(out) / 'checkpoints'})"


class RNGStateCallback(L.Callback):
    """Saves every random state a training epoch draws from in each checkpoint, and puts it back
    when a run resumes, so that a resumed run continues exactly as an uninterrupted one.

    Lightning restores model, optimizer, scheduler, loops and callbacks by itself, but no random
    state. Saved: the torch (CPU and CUDA), numpy and python global RNGs (dropout and anything
    else) and the data module's train order (``train_order_state``: the states of its shuffling
    generators; without them a resumed run would replay epoch 0's order). The train order goes
    back through the data module's ``restore_train_order`` before it builds the resumed fit's
    loaders; the global RNGs at ``on_train_start``, before the first batch is drawn. Everything
    is stored as tensors and plain python values, so checkpoints load with ``weights_only=True``.
    """

    state_key = "xmr.rng"  # type: ignore[assignment]

    def __init__(self) -> None:
        self._trainer: L.Trainer | None = None
        self._pending: dict[str, Any] | None = None

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        self._trainer = trainer

    def _datamodule(self) -> Any:
        return getattr(self._trainer, "datamodule", None)

    def state_dict(self) -> dict[str, Any]:
        kind, keys, pos, has_gauss, cached = np.random.get_state()  # type: ignore[misc]
        state: dict[str, Any] = {
            "torch": torch.get_rng_state(),
            "numpy": {
                "kind": str(kind),
                "keys": torch.from_numpy(np.asarray(keys, dtype=np.int64)),
                "pos": int(pos),
                "has_gauss": int(has_gauss),
                "cached_gaussian": float(cached),
            },
            "python": random.getstate(),
            "loaders": [],
        }
        dm = self._datamodule()
        if self._trainer is not None and self._trainer.training and dm is not None:
            state["loaders"] = list(dm.train_order_state())
        if torch.cuda.is_available() and torch.cuda.is_initialized():
            state["cuda"] = torch.cuda.get_rng_state_all()
        return state

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._pending = dict(state_dict)
        dm = self._datamodule()
        states = list(state_dict.get("loaders") or [])
        if dm is not None and states:
            dm.restore_train_order(states)

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        state, self._pending = self._pending, None
        if state is None:
            return
        # The global RNGs go back as late as possible: nothing between here and the first batch
        # draws from them, in a fresh epoch as in a resumed one.
        torch.set_rng_state(state["torch"])
        n = state["numpy"]
        np.random.set_state(
            (
                n["kind"],
                n["keys"].numpy().astype(np.uint32),
                n["pos"],
                n["has_gauss"],
                n["cached_gaussian"],
            )
        )
        version, internal, gauss = state["python"]
        random.setstate((version, tuple(internal), gauss))
        if "cuda" in state and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(state["cuda"])


def last_checkpoint_callback(out: Path) -> ModelCheckpoint:
    """``<out>/checkpoints/last.ckpt``, overwritten at the end of every training epoch (after
    validation, so it holds the monitored checkpoint's best-so-far and early stopping's state).

    Lightning's ``save_last=True`` is not enough for resuming: in Lightning 2.x it writes
    ``last.ckpt`` only in epochs where a top-k checkpoint was saved, i.e. where the monitored
    metric improved, so a killed run would redo every epoch since its best one.
    """
    return RunCheckpoint(
        dirpath=str(Path(out) / "checkpoints"),
        filename=LAST_CHECKPOINT,
        monitor=None,
        save_top_k=1,
        every_n_epochs=1,
        save_on_train_epoch_end=True,
        enable_version_counter=False,
    )


class AtomicCheckpointIO(TorchCheckpointIO):
    """Checkpoint saving into a temporary sibling, fsync, rename (:func:`xmr.utils.io.atomic_write`).

    Lightning's ``_atomic_save`` writes through an fsspec transaction whose temporary file lives in
    the system temp dir; when that is another filesystem the final move is a copy, so a kill can
    leave a truncated ``last.ckpt`` (and the temp file leaks). Here the rename stays inside the
    checkpoint directory: a reader sees the old checkpoint or the new one, never a partial one.
    """

    def save_checkpoint(
        self, checkpoint: dict[str, Any], path: Any, storage_options: Any | None = None
    ) -> None:
        if storage_options is not None:
            raise TypeError(
                f"AtomicCheckpointIO: storage_options not supported ({storage_options})"
            )

        def _save(tmp: Path) -> None:
            with open(tmp, "wb") as fh:
                torch.save(checkpoint, fh)

        atomic_write(Path(path), _save)
