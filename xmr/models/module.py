"""The LightningModule: one ranker per direction, a pluggable loss, Recall@K per direction.

Logged keys are ``{stage}/{direction}/{metric}`` (e.g. ``val/t2i/recall@1``) plus
``{stage}/rsum`` — :func:`xmr.metrics.ranking.rsum`: the sum of hit@1/5/10 over the trained
directions, in percent, the usual single-number summary of cross-modal retrieval (the monitored
key is ``monitor`` in conf/train.yaml); ``train/loss`` (the epoch's mean, per direction
``train/{direction}/loss``) and ``train/loss_step`` (each logged step). The test predictions rank each list in the pessimistic
order of :func:`xmr.metrics.ranking.pessimistic_order`, the order the metrics use.
:func:`validation_keys` lists the validation keys a run can monitor.

A training loss that is not finite (NaN or inf), or weights that are not finite at the end of an
epoch, stop the run with :class:`TrainingDivergedError` naming the epoch and batch: a diverged
run raises (so ``xmr train`` writes ``failed.json``, never ``results.json``) instead of testing
garbage weights. On the CPU in one process the loss is checked after every batch (cheap); on
an accelerator or under DDP a device-side flag is read every :data:`FINITE_CHECK_EVERY` batches
and at the last batch of each epoch (no host synchronisation per step; under DDP every rank stops
together).

Precision (``trainer.precision``, :mod:`xmr.utils.precision`): training steps run under
Lightning's autocast (``bf16-mixed``, ``16-mixed``), with the losses and the rankers' score heads
in float32; validation and test steps always run in float32.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import lightning as L
import numpy as np
import torch
from torch import Tensor, nn

from xmr.data.datamodule import pair_features
from xmr.metrics.ranking import RSUM_KS, pessimistic_order, rsum
from xmr.metrics.retrieval import ListRetrievalMetrics
from xmr.utils.precision import autocast_off

#: Batches between reads of the device-side non-finite-loss flag on an accelerator or under DDP
#: (and at the last batch of every epoch); on the CPU in one process every batch is checked.
FINITE_CHECK_EVERY = 50


class TrainingDivergedError(FloatingPointError):
    """Training produced a non-finite (NaN or inf) loss or non-finite weights."""


def validation_keys(
    directions: Sequence[str], ks: Sequence[int], *, with_loss: bool
) -> dict[str, str]:
    """The keys a run's validation logs that can select its checkpoint (``monitor``), each with
    the ``monitor_mode`` under which a better model has the better value: ``val/rsum`` (when
    ``ks`` holds a cut-off of :data:`xmr.metrics.ranking.RSUM_KS`; otherwise it is logged as a
    constant 0), ``val/{d}/{name}`` for the means of :class:`ListRetrievalMetrics` (``max``) and,
    ``with_loss`` (a model trained on lists with a loss), ``val/{d}/loss`` (``min``). The counts
    (``val/{d}/lists``, ...) are logged too but say nothing about the model."""
    keys: dict[str, str] = {}
    if any(k in RSUM_KS for k in ks):
        keys["val/rsum"] = "max"
    for d in directions:
        for name in ListRetrievalMetrics.mean_names(ks):
            keys[f"val/{d}/{name}"] = "max"
        if with_loss:
            keys[f"val/{d}/loss"] = "min"
    return keys


def gather_predictions(
    local: Mapping[str, Mapping[str, np.ndarray]], world_size: int
) -> dict[str, dict[str, np.ndarray]]:
    """All ranks' test predictions, one row per query, in the order of the (unsharded) lists.

    Under DDP the test loader uses a ``DistributedSampler(shuffle=False)``: rank ``r`` sees list
    indices ``r, r + W, r + 2W, ...``, and the index sequence is padded with its own start to a
    multiple of ``W``. Interleaving the ranks' rows restores the list order; the padding rows are
    repeats of queries already present and are dropped (first occurrence kept, by query id —
    every candidate list has its own query). Collective: every rank must call it.
    """
    import torch.distributed as dist

    gathered: list[Any] = [None] * world_size
    dist.all_gather_object(gathered, {d: dict(a) for d, a in local.items()})
    out: dict[str, dict[str, np.ndarray]] = {}
    for direction in gathered[0]:
        parts = [g[direction] for g in gathered]
        lengths = {len(p["query"]) for p in parts}
        merged = {}
        for key in parts[0]:
            if len(lengths) == 1:  # interleave: row i of rank r is list i * W + r
                stacked = np.stack([p[key] for p in parts], axis=1)  # (n, W, ...)
                merged[key] = stacked.reshape(-1, *stacked.shape[2:])
            else:
                merged[key] = np.concatenate([p[key] for p in parts])
        _, first = np.unique(merged["query"], return_index=True)
        keep = np.sort(first)
        out[direction] = {k: v[keep] for k, v in merged.items()}
    return out


class RankingModule(L.LightningModule):
    """Wraps one network per direction, the loss and an optimizer partial.

    Args:
        networks: direction (``t2i``/``i2t``) → scorer mapping pair features to ``(B, L)`` scores.
        loss: ``forward(scores, labels, mask) -> scalar``.
        optimizer: partial ``params -> Optimizer`` (Hydra ``_partial_: true``); None for
            parameter-free scorers (CLIP cosine).
        scheduler: optional partial ``optimizer -> LR scheduler`` (stepped per epoch).
        ks: cut-offs of Recall@K.
        collect_predictions: keep the ranked test lists for the predictions file.
        pair_model: a pairwise baseline (:class:`xmr.models.baselines.PairEmbeddingModel`)
            shared by both directions (``networks`` then hold its per-direction views). It
            trains on pair batches (``image``, ``text``, ``image_id``) with its own
            ``pair_loss``; ``loss`` may be None.
    """

    def __init__(
        self,
        networks: Mapping[str, nn.Module],
        loss: nn.Module | None,
        optimizer: Callable[..., torch.optim.Optimizer] | None = None,
        scheduler: Callable[..., Any] | None = None,
        ks: Sequence[int] = (1, 5, 10),
        collect_predictions: bool = True,
        pair_model: nn.Module | None = None,
    ) -> None:
        super().__init__()
        self.pair_model = pair_model
        self._pair_model_stale = False  # trained since its last calibrate()
        self.nets = nn.ModuleDict(dict(networks))
        self.loss_fn = loss
        self.optimizer_factory = optimizer
        self.scheduler_factory = scheduler
        self.ks = tuple(int(k) for k in ks)
        self.collect_predictions = collect_predictions
        self.metrics = nn.ModuleDict(
            {
                f"{stage}_{d}": ListRetrievalMetrics(ks=self.ks)
                for stage in ("val", "test")
                for d in self.nets
            }
        )
        self.predictions: dict[str, dict[str, np.ndarray]] = {}
        self._pred_parts: dict[str, list[dict[str, np.ndarray]]] = {}
        # Deferred non-finite check: (first bad batch of this epoch or -1, its loss), on device.
        self._nonfinite: tuple[Tensor, Tensor] | None = None

    @property
    def directions(self) -> list[str]:
        return list(self.nets.keys())

    def score(self, batch: Mapping[str, Any]) -> Tensor:
        """Scores ``(B, L)`` of one batch with the network of its direction."""
        net = self.nets[batch["direction"]]
        if hasattr(net, "forward_split"):
            return net.forward_split(batch["q"], batch["c"], batch["mask"])
        return net(pair_features(batch["q"], batch["c"]), batch["mask"])

    # -- training ------------------------------------------------------------------------------
    def training_step(self, batch: Mapping[str, Mapping[str, Any]], batch_idx: int) -> Tensor:
        if "image_id" in batch:  # a pair batch: pairwise baselines train on pairs, not lists
            return self._pair_step(batch)  # type: ignore[arg-type]
        if self.loss_fn is None:
            raise RuntimeError("training needs a loss (config group `loss`)")
        total = torch.zeros((), device=self.device)
        for direction, sub in batch.items():
            loss = self.loss_fn(self.score(sub), sub["labels"], sub["mask"])
            self.log(
                f"train/{direction}/loss",
                loss,
                on_step=False,
                on_epoch=True,
                batch_size=len(sub["query"]),
                sync_dist=True,
            )
            total = total + loss
        self.log(
            "train/loss",
            total,
            on_step=False,
            on_epoch=True,
            prog_bar=True,
            batch_size=max(len(sub["query"]) for sub in batch.values()),
            sync_dist=True,
        )
        self._log_step_loss(total)
        return total

    def _log_step_loss(self, loss: Tensor) -> None:
        """``train/loss_step``: the loss of the step, for the loggers' per-step curve (every
        ``log_every_n_steps`` steps; :func:`xmr.runs.loggers.log_interval` keeps several per
        epoch). ``train/loss`` is the epoch's mean."""
        self.log("train/loss_step", loss.detach(), on_step=True, on_epoch=False, batch_size=1)

    def _pair_step(self, batch: Mapping[str, Tensor]) -> Tensor:
        if self.pair_model is None:
            raise RuntimeError("a pair batch reached a module without a pair_model")
        loss = self.pair_model.pair_loss(batch["image"], batch["text"], batch["image_id"])
        self._pair_model_stale = True
        self.log(
            "train/loss",
            loss,
            on_step=False,
            on_epoch=True,
            prog_bar=True,
            batch_size=len(batch["image_id"]),
        )
        self._log_step_loss(loss)
        return loss

    # -- divergence ----------------------------------------------------------------------------
    def on_train_epoch_start(self) -> None:
        self._nonfinite = None

    def on_train_batch_end(self, outputs: Any, batch: Any, batch_idx: int) -> None:
        loss = outputs.get("loss") if isinstance(outputs, Mapping) else outputs
        trainer = self.trainer
        last = batch_idx + 1 >= trainer.num_training_batches
        if isinstance(loss, Tensor):
            loss = loss.detach()
            if loss.device.type == "cpu" and trainer.world_size == 1:
                if not bool(torch.isfinite(loss)):
                    self._diverged(f"the training loss is {float(loss)}", batch_idx)
            else:
                self._note_nonfinite(loss, batch_idx)
                if last or (batch_idx + 1) % FINITE_CHECK_EVERY == 0:
                    self._check_nonfinite()
        # Weights once per epoch, before any callback writes last.ckpt (on_train_epoch_end): a
        # last step that broke the weights has no later loss to show it.
        if last and not self._weights_finite():
            self._diverged("the weights are not finite after the epoch's last step", batch_idx)

    def _weights_finite(self) -> bool:
        params = [p.detach() for p in self.parameters() if p.requires_grad]
        if not params:
            return True
        finite = bool(torch.stack([torch.isfinite(p).all() for p in params]).all())
        return bool(self.trainer.strategy.reduce_boolean_decision(finite, all=True))

    def _note_nonfinite(self, loss: Tensor, batch_idx: int) -> None:
        """Remember the first non-finite loss of the epoch on the device (no host sync)."""
        if self._nonfinite is None:
            self._nonfinite = (
                torch.full((), -1, dtype=torch.int64, device=loss.device),
                torch.zeros((), dtype=loss.dtype, device=loss.device),
            )
        at, value = self._nonfinite
        new = (at < 0) & ~torch.isfinite(loss)
        self._nonfinite = (torch.where(new, batch_idx, at), torch.where(new, loss, value))

    def _check_nonfinite(self) -> None:
        """Read the deferred flag (every rank: the earliest bad batch of any rank) and stop."""
        if self._nonfinite is None:
            return
        at, value = self._nonfinite
        if self.trainer.world_size > 1:  # every rank must stop, or the others wait forever
            none = torch.iinfo(torch.int64).max
            first = self.trainer.strategy.reduce(torch.where(at < 0, none, at), reduce_op="min")
            at = torch.where(first == none, -1, first)
        batch_idx = int(at)
        if batch_idx >= 0:
            shown = f"{float(value)}" if int(self._nonfinite[0]) == batch_idx else "not finite"
            self._diverged(f"the training loss is {shown}", batch_idx)

    def _diverged(self, what: str, batch_idx: int) -> None:
        trainer = self.trainer
        lrs = [g.get("lr") for opt in trainer.optimizers for g in opt.param_groups]
        lr = lrs[0] if lrs and isinstance(lrs[0], (int, float)) else None
        lr_text = f" (optimizer.lr is {float(lr):g})" if lr is not None else ""
        raise TrainingDivergedError(
            f"training diverged at epoch {trainer.current_epoch}, batch {batch_idx}: {what}. "
            f"Most likely the learning rate is too large{lr_text}: lower optimizer.lr; else "
            "the feature store (data.store) holds extreme values or the loss settings are "
            "extreme. The run stops without results.json."
        )

    def _calibrate_pair_model(self) -> None:
        """Refit the pair model's post-hoc statistics (DCCA's linear CCA) on the train pairs
        once it has trained since the last fit; a loaded checkpoint keeps its own."""
        if self.pair_model is None or not self._pair_model_stale:
            return
        dm = getattr(self.trainer, "datamodule", None)
        if dm is None or not hasattr(dm, "iter_train_pairs"):
            return
        was_training = self.pair_model.training
        self.pair_model.eval()
        self.pair_model.calibrate(dm.iter_train_pairs(device=self.device))
        self.pair_model.train(was_training)
        self._pair_model_stale = False

    # -- evaluation ----------------------------------------------------------------------------
    def _eval_step(self, stage: str, batch: Mapping[str, Any]) -> None:
        # Evaluation in float32 whatever trainer.precision (Lightning autocasts validation and
        # test steps too): the metrics, predictions files and a later `xmr eval` of the
        # checkpoint then agree, and no score ties only because it was rounded to 16 bits.
        with autocast_off(self.device):
            self._evaluate(stage, batch)

    def _evaluate(self, stage: str, batch: Mapping[str, Any]) -> None:
        direction = batch["direction"]
        scores = self.score(batch)
        labels, mask = batch["labels"], batch["mask"]
        relevant_total = batch.get("relevant_total")  # (B,) or None; see xmr.data.datamodule
        self.metrics[f"{stage}_{direction}"].update(scores, labels, mask, relevant_total)
        if self.loss_fn is not None:
            self.log(
                f"{stage}/{direction}/loss",
                self.loss_fn(scores, labels, mask),
                on_step=False,
                on_epoch=True,
                batch_size=len(batch["query"]),
                add_dataloader_idx=False,
                sync_dist=True,
            )
        if stage == "test" and self.collect_predictions:
            order = pessimistic_order(scores, labels, mask)  # (B, L), padding last
            part = {
                "query": batch["query"].cpu().numpy(),
                "candidates": torch.gather(batch["candidates"], 1, order).cpu().numpy(),
                "scores": torch.gather(scores.float().masked_fill(~mask, float("nan")), 1, order)
                .cpu()
                .numpy(),
                "labels": torch.gather(labels, 1, order).to(torch.uint8).cpu().numpy(),
            }
            if relevant_total is not None:  # DDP: the test metrics are recomputed from parts
                part["relevant_total"] = relevant_total.cpu().numpy()
            self._pred_parts.setdefault(direction, []).append(part)

    def validation_step(
        self, batch: Mapping[str, Any], batch_idx: int, dataloader_idx: int = 0
    ) -> None:
        self._eval_step("val", batch)

    def test_step(self, batch: Mapping[str, Any], batch_idx: int, dataloader_idx: int = 0) -> None:
        self._eval_step("test", batch)

    def _log_epoch(self, stage: str) -> None:
        values: dict[str, Tensor] = {}
        for d in self.directions:
            metric = self.metrics[f"{stage}_{d}"]
            for name, value in metric.compute().items():
                values[f"{stage}/{d}/{name}"] = torch.as_tensor(value, dtype=torch.float32)
            metric.reset()
        total = rsum(values, stage, self.directions)
        if total is None:  # no cut-off of the rsum among ks
            total = torch.zeros((), device=self.device)
        self.log_dict(values, prog_bar=False, add_dataloader_idx=False, batch_size=1)
        self.log(f"{stage}/rsum", total, prog_bar=True, add_dataloader_idx=False, batch_size=1)

    def on_validation_epoch_start(self) -> None:
        self._calibrate_pair_model()

    def on_validation_epoch_end(self) -> None:
        self._log_epoch("val")

    def on_test_epoch_start(self) -> None:
        self._calibrate_pair_model()
        self._pred_parts = {}

    def on_test_epoch_end(self) -> None:
        local = {
            d: {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}
            for d, parts in self._pred_parts.items()
        }
        trainer = self._trainer
        world_size = int(trainer.world_size) if trainer is not None else 1
        if world_size > 1 and self.collect_predictions:
            # DDP: DistributedSampler pads the last batch with repeated lists, so every rank's
            # metrics and predictions hold a few duplicates. Gather all ranks' ranked lists,
            # keep one row per query, and recompute the test metrics from them on every rank.
            self.predictions = gather_predictions(local, world_size)
            self._recompute_test_metrics(self.predictions)
            self._log_epoch("test")
            for d in self.directions:
                self.metrics[f"test_{d}"].sync_on_compute = True
                self.metrics[f"test_{d}"]._to_sync = True
        else:
            self._log_epoch("test")
            self.predictions = local

    def _recompute_test_metrics(self, predictions: Mapping[str, Mapping[str, np.ndarray]]) -> None:
        """Refill the test metrics from complete ranked lists, without cross-rank reduction.

        Padding is where the candidate id is -1; a NaN score of a real candidate stays a score
        (the metrics rank it last among the real candidates)."""
        for d, arrays in predictions.items():
            metric = self.metrics[f"test_{d}"]
            metric.reset()
            scores = torch.from_numpy(arrays["scores"]).to(self.device)  # (Q, L)
            mask = torch.from_numpy(arrays["candidates"] >= 0).to(self.device)  # (Q, L)
            labels = torch.from_numpy(arrays["labels"].astype(np.float32)).to(self.device)
            total = arrays.get("relevant_total")
            metric.update(scores, labels, mask, None if total is None else torch.from_numpy(total))
            metric.sync_on_compute = False  # every rank holds all lists now
            metric._to_sync = False

    # -- optimisation --------------------------------------------------------------------------
    def configure_optimizers(self) -> Any:
        params = [p for p in self.parameters() if p.requires_grad]
        if not params or self.optimizer_factory is None:
            return None
        optimizer = self.optimizer_factory(params)
        if self.scheduler_factory is None:
            return optimizer
        return {
            "optimizer": optimizer,
            "lr_scheduler": {"scheduler": self.scheduler_factory(optimizer), "interval": "epoch"},
        }


def run_test_loop(
    module: L.LightningModule,
    datamodule: L.LightningDataModule,
    trainer: L.Trainer | None = None,
    accelerator: str = "cpu",
) -> dict[str, float]:
    """Run Lightning's test loop and merge the per-dataloader dicts into one ``{key: value}``.

    Without a ``trainer``, a bare single-device one is built (no logger, checkpoints, progress
    bar): what re-evaluation and ensemble members need.
    """
    if trainer is None:
        trainer = L.Trainer(
            accelerator=accelerator,
            devices=1,
            logger=False,
            enable_progress_bar=False,
            enable_model_summary=False,
            enable_checkpointing=False,
        )
    merged: dict[str, float] = {}
    for part in trainer.test(module, datamodule=datamodule, verbose=False):
        merged.update({k: float(v) for k, v in part.items()})
    return merged
