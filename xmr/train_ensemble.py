"""Train the runs of a sweep (seeds × losses) as one vectorised ensemble in one process.

    python -m xmr.train_ensemble data=synthetic_tiny ensemble.seeds=[0,1] trainer.max_epochs=2
    python -m xmr.train_ensemble +sweep=paper_ensemble        # Table 2: 4 losses x 5 seeds, both

Every member (loss, seed) gets its own run directory ``<output dir>/loss=<loss>,seed=<seed>/``
(the job names of ``+sweep=loss_seeds``) holding what a separate ``xmr train loss=<loss>
seed=<seed>`` run leaves: ``config.yaml`` (the member's config: the ensemble's, with its loss and
seed), ``checkpoints/best.ckpt`` (its best-validation weights, loadable by ``xmr eval``),
``metrics.jsonl``, ``predictions_{t2i,i2t}.npz`` and ``results.json`` — so ``xmr report`` reads
an ensemble's output unchanged. See :mod:`xmr.models.ensemble` for what stays per member and what is
not supported. A rerun skips members whose ``results.json`` is complete; an interrupted ensemble
starts its unfinished members from scratch (no mid-training resume).
"""

from __future__ import annotations

import copy
import json
import logging
import time
from pathlib import Path
from typing import Any

import hydra
import lightning as L
import torch
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf, open_dict

from xmr.data.datamodule import XMRDataModule
from xmr.metrics.ranking import rsum
from xmr.metrics.retrieval import ListRetrievalMetrics
from xmr.models.build import build_module
from xmr.models.ensemble import (
    EnsembleRanker,
    MemberBatches,
    clip_grad_norm_per_member,
    ensemble_losses,
)
from xmr.models.module import RankingModule
from xmr.models.ranker import ContextAwareRanker
from xmr.models.scorer import scorer_kind
from xmr.runs.lifecycle import (
    CONFIG_FILE,
    RESULTS_FILE,
    output_dir_of,
    test_record,
    write_record,
)
from xmr.runs.naming import method_name
from xmr.runs.results import finished_results
from xmr.utils.console import run_command
from xmr.utils.devices import torch_device
from xmr.utils.instantiate import ConfigError, instantiate
from xmr.utils.io import atomic_write
from xmr.utils.paths import CONF_DIR
from xmr.utils.provenance import utc_now
from xmr.utils.runtime import torch_runtime

log = logging.getLogger(__name__)


# -- members -----------------------------------------------------------------------------------
def _loss_choice(cfg: DictConfig) -> str | None:
    if HydraConfig.initialized():
        return HydraConfig.get().runtime.choices.get("loss")
    return method_name(cfg)


def member_configs(cfg: DictConfig) -> list[tuple[str, int, DictConfig]]:
    """``(loss name, seed, config)`` of each member: the ensemble's config without ``ensemble``,
    with the member's ``seed``, ``loss`` (``conf/loss/<name>.yaml``; the composed ``loss`` itself
    for the loss chosen on the command line, overrides included) and run directory."""
    ens = cfg.get("ensemble")
    if ens is None:
        raise ConfigError(
            "ensemble: missing; use conf/ensemble.yaml (python -m xmr.train_ensemble)"
        )
    seeds = list(ens.get("seeds") or [])
    if not seeds or any(isinstance(s, bool) or not isinstance(s, int) or s < 0 for s in seeds):
        raise ConfigError(f"ensemble.seeds={seeds}: needs a non-empty list of integers >= 0")
    if len(set(seeds)) != len(seeds):
        raise ConfigError(f"ensemble.seeds={seeds}: seeds must be distinct")
    chosen = _loss_choice(cfg)
    losses = [str(x) for x in (ens.get("losses") or [chosen])]
    if len(set(losses)) != len(losses):
        raise ConfigError(f"ensemble.losses={losses}: losses must be distinct")
    out_root = output_dir_of(cfg)
    members = []
    for name in losses:
        if name == chosen:
            loss_cfg = copy.deepcopy(cfg.loss)
        else:
            path = Path(CONF_DIR) / "loss" / f"{name}.yaml"
            if not path.is_file():
                options = sorted(p.stem for p in path.parent.glob("*.yaml"))
                raise ConfigError(f"ensemble.losses: {name!r} is not a conf/loss option {options}")
            loss_cfg = OmegaConf.load(path)
        for seed in seeds:
            m = copy.deepcopy(cfg)
            with open_dict(m):
                del m["ensemble"]
                m.seed = int(seed)
                m.loss = loss_cfg
                m.task_name = "train"
                m.paths.output_dir = str(out_root / f"loss={name},seed={seed}")
            members.append((name, int(seed), m))
    return members


def _check_supported(cfg: DictConfig) -> None:
    if not issubclass(scorer_kind(cfg.model), ContextAwareRanker):
        raise ConfigError(
            f"model.net._target_={cfg.model.net.get('_target_')!r}: the ensemble trains "
            "ContextAwareRanker (model=ranker)"
        )
    if (cfg.get("callbacks") or {}).get("early_stopping") is not None:
        raise ConfigError(
            "callbacks.early_stopping: not supported by the ensemble (members would stop at "
            "different epochs); use callbacks=default"
        )
    algo = cfg.trainer.get("gradient_clip_algorithm") or "norm"
    if cfg.trainer.get("gradient_clip_val") and algo != "norm":
        raise ConfigError(f"trainer.gradient_clip_algorithm={algo!r}: the ensemble clips by norm")
    precision = cfg.trainer.get("precision", "32-true")
    if precision != "32-true":
        raise ConfigError(
            f"trainer.precision={precision!r}: the ensemble trains in float32 only "
            "(trainer.precision=32-true); mixed precision is for `xmr train`"
        )
    if int(cfg.trainer.get("accumulate_grad_batches") or 1) != 1:
        raise ConfigError("trainer.accumulate_grad_batches: must be 1 for the ensemble")
    if cfg.data.get("redraw_train_lists"):
        raise ConfigError(
            "data.redraw_train_lists: not supported by the ensemble (its members train on the "
            "mined lists); use data.redraw_train_lists=false"
        )


# -- evaluation --------------------------------------------------------------------------------
@torch.no_grad()
def _validate(
    ensembles: dict[str, EnsembleRanker],
    dm: XMRDataModule,
    groups: list[tuple[Any, list[int]]],
    device: torch.device,
    ks: tuple[int, ...],
) -> list[dict[str, torch.Tensor]]:
    """Per member: ``val/{d}/{metric}``, ``val/{d}/loss`` and ``val/rsum`` (as ``xmr train``),
    over the batches of the data module's validation loaders."""
    E = next(iter(ensembles.values())).num_members
    out: list[dict[str, torch.Tensor]] = [{} for _ in range(E)]
    loaders = dict(zip(dm.directions, dm.val_dataloader(), strict=True))
    for d, ens in ensembles.items():
        ens.eval()
        metrics = [ListRetrievalMetrics(ks=ks).to(device) for _ in range(E)]
        loss_sum, count = torch.zeros(E, device=device), 0
        for b in loaders[d]:
            q, c, y, mask = (b[k].to(device) for k in ("q", "c", "labels", "mask"))
            scores = ens.forward_split(q, c, mask)  # (E, B, L)
            for e in range(E):
                metrics[e].update(scores[e], y, mask)
            ye, me = y.expand(E, *y.shape), mask.expand(E, *mask.shape)
            loss_sum += ensemble_losses(scores, ye, me, groups) * len(q)
            count += len(q)
        for e in range(E):
            for name, value in metrics[e].compute().items():
                out[e][f"val/{d}/{name}"] = torch.as_tensor(value, dtype=torch.float32)
            out[e][f"val/{d}/loss"] = (loss_sum[e] / max(count, 1)).float()
    for e in range(E):
        total = rsum(out[e], "val", ensembles)
        out[e]["val/rsum"] = torch.zeros((), device=device) if total is None else total
    return out


def _append_jsonl(path: Path, record: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a", encoding="utf-8") as fh:
        fh.write(json.dumps(record) + "\n")


def _test_member(
    cfg: DictConfig,
    name: str,
    module: RankingModule,
    dm: XMRDataModule,
    out: Path,
    *,
    best_ckpt: Path,
    best_val: float | None,
    val: dict[str, float],
    epochs_run: int,
    ensemble: dict[str, int],
    started: str,
) -> dict[str, Any]:
    """Test one member with the same Lightning test loop as ``xmr train``; write its results."""
    inter = list(cfg.model.get("net", {}).get("interaction") or [])
    results = test_record(
        cfg,
        module,
        dm,
        out,
        method=name + "".join(f"+{n}" for n in inter),
        accelerator=str(cfg.trainer.get("accelerator", "auto")),
        val_metrics=val,
        checkpoint=best_ckpt,
        epochs_run=epochs_run,
        best_val=best_val,
        started=started,
    )
    results["ensemble"] = dict(ensemble)  # trained as member `index` of `members`
    return write_record(out / RESULTS_FILE, results)


# -- training ----------------------------------------------------------------------------------
def train_ensemble(cfg: DictConfig) -> list[dict[str, Any]]:
    """Train every member of ``cfg.ensemble`` at once; returns their results (in member order).

    Members whose run directory already holds a complete ``results.json`` for the same config
    are skipped (:func:`xmr.runs.results.finished_results`), as sweeps do.
    """
    with torch_runtime(cfg):
        return _train_ensemble(cfg)


def _train_ensemble(cfg: DictConfig) -> list[dict[str, Any]]:
    started = utc_now()  # provenance.started of every member's results.json
    _check_supported(cfg)
    members = member_configs(cfg)
    done: dict[int, dict[str, Any]] = {}
    for i, (_, _, m) in enumerate(members):
        r = finished_results(Path(m.paths.output_dir), m)
        if r is not None:
            done[i] = r
    todo = [i for i in range(len(members)) if i not in done]
    if not todo:
        log.info("ensemble: all %d members finished already", len(members))
        return [done[i] for i in range(len(members))]
    names = [members[i][0] for i in todo]
    seeds = [members[i][1] for i in todo]
    cfgs = [members[i][2] for i in todo]
    E = len(todo)
    log.info(
        "ensemble of %d members: %s",
        E,
        [f"{n}/seed={s}" for n, s in zip(names, seeds, strict=True)],
    )

    dm: XMRDataModule = instantiate(cfg.data, where="data")
    dm.prepare_data()
    dm.setup()
    # Each member's networks exactly as `xmr train` builds them under its seed.
    modules: list[RankingModule] = []
    for m in cfgs:
        L.seed_everything(int(m.seed), workers=True)
        modules.append(build_module(m, dm))
    for mod in modules:
        for net in mod.nets.values():
            if not isinstance(net, ContextAwareRanker):
                raise ConfigError(f"model: {type(net).__name__} is not a ContextAwareRanker")
    device = torch_device(cfg.trainer)  # in a local sweep's worker: the worker's GPU
    directions = list(dm.directions)
    ensembles = {d: EnsembleRanker([mod.nets[d] for mod in modules]).to(device) for d in directions}
    params = [p for d in directions for p in ensembles[d].parameters()]
    optimizer = instantiate(cfg.optimizer, where="optimizer")(params)
    scheduler = (
        instantiate(cfg.scheduler, where="scheduler")(optimizer) if cfg.get("scheduler") else None
    )
    loss_fns: dict[str, Any] = {}
    groups_idx: dict[str, list[int]] = {}
    for e, (n, m) in enumerate(zip(names, cfgs, strict=True)):
        if n not in loss_fns:
            loss_fns[n] = instantiate(m.loss, where="loss")
        groups_idx.setdefault(n, []).append(e)
    groups = [(loss_fns[n], idx) for n, idx in groups_idx.items()]
    clip = float(cfg.trainer.get("gradient_clip_val") or 0.0)
    ks = tuple(int(k) for k in cfg.get("ks", (1, 5, 10)))

    order = MemberBatches({d: dm.num_lists(d, "train") for d in directions}, dm.batch_size, seeds)
    # The data module's gatherers with tables and lists on the ensemble's device, so gathering
    # happens there (on a GPU no per-step host-to-device copy of the (E, B, L, D) features):
    # idx (E, B) gathers q (E, B, D_q), c (E, B, L, D_c), labels and mask (E, B, L).
    gathers = {d: dm.gatherer(d, "train", device) for d in directions}
    outs = [Path(m.paths.output_dir) for m in cfgs]
    for m, out in zip(cfgs, outs, strict=True):
        out.mkdir(parents=True, exist_ok=True)
        (out / "metrics.jsonl").unlink(missing_ok=True)
        write_record(out / CONFIG_FILE, m)

    best_val: list[torch.Tensor | None] = [None] * E
    best_state: list[dict[str, dict[str, torch.Tensor]] | None] = [None] * E
    last_val: list[dict[str, torch.Tensor]] = [{} for _ in range(E)]
    max_epochs = int(cfg.trainer.get("max_epochs") or 1)
    step = 0
    for epoch in range(max_epochs):
        t0 = time.perf_counter()
        for ens in ensembles.values():
            ens.train()
        train_sum = {d: torch.zeros(E, device=device) for d in directions}
        train_n = {d: 0 for d in directions}
        lists = 0
        for idx in order.epoch():
            optimizer.zero_grad(set_to_none=True)
            total = torch.zeros((), device=device)
            for d in directions:
                b = gathers[d](idx[d].to(device))  # (E, B, ...): one gather for all members
                q, c, y, mask = (b[k].to(device) for k in ("q", "c", "labels", "mask"))
                scores = ensembles[d].forward_split(q, c, mask)  # (E, B, L)
                losses = ensemble_losses(scores, y, mask, groups)  # (E,)
                total = total + losses.sum()
                train_sum[d] += losses.detach() * idx[d].shape[1]
                train_n[d] += idx[d].shape[1]
                lists += idx[d].numel()
            total.backward()
            if clip > 0:
                clip_grad_norm_per_member(params, clip)
            optimizer.step()
            step += 1
        train_time = time.perf_counter() - t0
        vals = _validate(ensembles, dm, groups, device, ks)
        if scheduler is not None:
            scheduler.step()
        for e in range(E):
            val_rsum = vals[e]["val/rsum"]
            if best_val[e] is None or bool(val_rsum > best_val[e]):
                best_val[e] = val_rsum
                best_state[e] = {d: ensembles[d].member_state_dict(e) for d in directions}
            last_val[e] = vals[e]
            record: dict[str, Any] = {"stage": "val", "epoch": epoch, "step": step}
            record.update({k: float(v) for k, v in vals[e].items()})
            for d in directions:
                record[f"train/{d}/loss"] = float(train_sum[d][e] / max(train_n[d], 1))
            _append_jsonl(outs[e] / "metrics.jsonl", record)
        log.info(
            "ensemble epoch %d: %d members, %.1f s training (%.0f lists/s per member), val/rsum %s",
            epoch,
            E,
            train_time,
            lists / E / max(train_time, 1e-9),
            [round(float(v["val/rsum"]), 2) for v in vals],
        )

    results_by_member: dict[int, dict[str, Any]] = dict(done)
    for e, i in enumerate(todo):
        mod, out = modules[e], outs[e]
        for d in directions:
            mod.nets[d].load_state_dict(best_state[e][d])  # type: ignore[index]
        mod.cpu() if device.type == "cpu" else mod.to(device)
        ckpt = out / "checkpoints" / "best.ckpt"
        ckpt.parent.mkdir(parents=True, exist_ok=True)
        state = {"state_dict": {k: v.detach().cpu() for k, v in mod.state_dict().items()}}
        atomic_write(ckpt, lambda tmp, state=state: torch.save(state, tmp))
        res = _test_member(
            cfgs[e],
            names[e],
            mod,
            dm,
            out,
            best_ckpt=ckpt,
            best_val=float(best_val[e]) if best_val[e] is not None else None,
            val={k: float(v) for k, v in last_val[e].items()},
            epochs_run=max_epochs,
            ensemble={"members": E, "index": e},
            started=started,
        )
        results_by_member[i] = res
    return [results_by_member[i] for i in range(len(members))]


@hydra.main(version_base="1.3", config_path=CONF_DIR, config_name="ensemble")
def main(cfg: DictConfig) -> None:
    """Hydra entry point (``python -m xmr.train_ensemble``)."""
    results = train_ensemble(cfg)
    for r in results:
        print(
            f"{r['method']:>14s} seed {r['seed']}: test/rsum {r.get('test/rsum', float('nan')):.2f}"
        )


if __name__ == "__main__":
    run_command("train-ensemble", main)
