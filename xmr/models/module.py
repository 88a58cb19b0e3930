"""The LightningModule: one ranker per direction, a pluggable loss, Recall@K per direction.

Logged keys are ``{stage}/{direction}/{metric}`` (e.g. ``val/t2i/recall@1``) plus
``{stage}/rsum`` — the sum of hit@1/5/10 over the trained directions, in percent, the usual
single-number summary of cross-modal retrieval and the default monitored key (:data:`MONITOR`).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import lightning as L
import numpy as np
import torch
from torch import Tensor, nn

from xmr.metrics.retrieval import ListRetrievalMetrics

MONITOR = "val/rsum"
RSUM_KS: tuple[int, ...] = (1, 5, 10)


def ranked_order(scores: Tensor, labels: Tensor, mask: Tensor) -> Tensor:
    """Candidate order ``(B, L)``: by score descending, ties with the irrelevant item first
    (pessimistic, as the metrics), padding last."""
    s = scores.float().masked_fill(~mask, float("-inf"))
    by_label = torch.argsort(labels.float() - (~mask).float() * 2, dim=1, stable=True)
    order = torch.argsort(torch.gather(s, 1, by_label), dim=1, descending=True, stable=True)
    return torch.gather(by_label, 1, order)


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
    """

    def __init__(
        self,
        networks: Mapping[str, nn.Module],
        loss: nn.Module | None,
        optimizer: Callable[..., torch.optim.Optimizer] | None = None,
        scheduler: Callable[..., Any] | None = None,
        ks: Sequence[int] = (1, 5, 10),
        collect_predictions: bool = True,
    ) -> None:
        super().__init__()
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

    @property
    def directions(self) -> list[str]:
        return list(self.nets.keys())

    def score(self, batch: Mapping[str, Any]) -> Tensor:
        """Scores ``(B, L)`` of one batch with the network of its direction."""
        net = self.nets[batch["direction"]]
        if hasattr(net, "forward_split") and "q" in batch:
            return net.forward_split(batch["q"], batch["c"], batch["mask"])
        return net(batch["x"], batch["mask"])

    # -- training ------------------------------------------------------------------------------
    def training_step(self, batch: Mapping[str, Mapping[str, Any]], batch_idx: int) -> Tensor:
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
            )
            total = total + loss
        self.log(
            "train/loss",
            total,
            on_step=False,
            on_epoch=True,
            prog_bar=True,
            batch_size=max(len(sub["query"]) for sub in batch.values()),
        )
        return total

    # -- evaluation ----------------------------------------------------------------------------
    def _eval_step(self, stage: str, batch: Mapping[str, Any]) -> None:
        direction = batch["direction"]
        scores = self.score(batch)
        labels, mask = batch["labels"], batch["mask"]
        self.metrics[f"{stage}_{direction}"].update(scores, labels, mask)
        if self.loss_fn is not None:
            self.log(
                f"{stage}/{direction}/loss",
                self.loss_fn(scores, labels, mask),
                on_step=False,
                on_epoch=True,
                batch_size=len(batch["query"]),
                add_dataloader_idx=False,
            )
        if stage == "test" and self.collect_predictions:
            order = ranked_order(scores, labels, mask)  # (B, L)
            self._pred_parts.setdefault(direction, []).append(
                {
                    "query": batch["query"].cpu().numpy(),
                    "candidates": torch.gather(batch["candidates"], 1, order).cpu().numpy(),
                    "scores": torch.gather(
                        scores.float().masked_fill(~mask, float("nan")), 1, order
                    )
                    .cpu()
                    .numpy(),
                    "labels": torch.gather(labels, 1, order).to(torch.uint8).cpu().numpy(),
                }
            )

    def validation_step(
        self, batch: Mapping[str, Any], batch_idx: int, dataloader_idx: int = 0
    ) -> None:
        self._eval_step("val", batch)

    def test_step(self, batch: Mapping[str, Any], batch_idx: int, dataloader_idx: int = 0) -> None:
        self._eval_step("test", batch)

    def _log_epoch(self, stage: str) -> None:
        values: dict[str, Tensor] = {}
        rsum = torch.zeros((), device=self.device)
        for d in self.directions:
            metric = self.metrics[f"{stage}_{d}"]
            for name, value in metric.compute().items():
                values[f"{stage}/{d}/{name}"] = torch.as_tensor(value, dtype=torch.float32)
            for k in RSUM_KS:
                if f"{stage}/{d}/recall@{k}" in values:
                    rsum = rsum + 100.0 * values[f"{stage}/{d}/recall@{k}"].to(rsum.device)
            metric.reset()
        self.log_dict(values, prog_bar=False, add_dataloader_idx=False, batch_size=1)
        self.log(f"{stage}/rsum", rsum, prog_bar=True, add_dataloader_idx=False, batch_size=1)

    def on_validation_epoch_end(self) -> None:
        self._log_epoch("val")

    def on_test_epoch_start(self) -> None:
        self._pred_parts = {}

    def on_test_epoch_end(self) -> None:
        self._log_epoch("test")
        self.predictions = {
            d: {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}
            for d, parts in self._pred_parts.items()
        }

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
