"""Vectorised ensembles: the stacked network equals its members, members replay their runs'
data order, and an ensemble's members reproduce separate `xmr train` runs (dropout 0)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from hydra import compose, initialize_config_dir
from omegaconf import DictConfig, open_dict
from torch.utils.data import DataLoader

from xmr.data.datamodule import train_order_seed
from xmr.losses.lambdarank import LambdaRankLoss
from xmr.losses.listnet import ListNetLoss
from xmr.losses.neural_ndcg import NeuralNDCGLoss
from xmr.losses.ranknet import RankNetLoss
from xmr.models.ensemble import (
    EnsembleRanker,
    MemberBatches,
    clip_grad_norm_per_member,
    ensemble_losses,
)
from xmr.models.ranker import ContextAwareRanker
from xmr.report.collect import collect
from xmr.report.table import table
from xmr.runs.results import load_predictions
from xmr.train import train
from xmr.train_ensemble import member_configs, train_ensemble
from xmr.utils.instantiate import ConfigError

CONF = Path(__file__).resolve().parents[1] / "conf"


def _members(e: int, d: int = 16, **kw) -> list[ContextAwareRanker]:
    nets = []
    for seed in range(e):
        torch.manual_seed(seed)
        nets.append(ContextAwareRanker(d, d, **kw))
    return nets


def _inputs(e: int, b: int = 4, length: int = 7, d: int = 16):
    g = torch.Generator().manual_seed(0)
    q = torch.randn(e, b, d, generator=g)
    mask = torch.rand(e, b, length, generator=g) > 0.3
    mask[..., 0] = True  # every list has a real item
    c = torch.randn(e, b, length, d, generator=g) * mask[..., None]
    y = ((torch.rand(e, b, length, generator=g) > 0.6) & mask).float()
    return q, c, mask, y


@pytest.mark.parametrize("kw", [{}, {"fc_sizes": [32, 8], "num_heads": 2, "activation": "gelu"}])
@pytest.mark.parametrize("mode", ["train", "eval"])
def test_stacked_forward_equals_members(kw, mode) -> None:
    nets = _members(3, dropout=0.0, **kw)
    ens = EnsembleRanker(nets)
    q, c, mask, _ = _inputs(3)
    for n in [*nets, ens]:
        getattr(n, mode)()
    with torch.no_grad():
        ref = torch.stack([n.forward_split(q[e], c[e], mask[e]) for e, n in enumerate(nets)])
        shared_ref = torch.stack([n.forward_split(q[0], c[0], mask[0]) for n in nets])
        out = ens.forward_split(q, c, mask)  # (E, B, L) per-member inputs
        shared = ens.forward_split(q[0], c[0], mask[0])  # one input for all members
    assert out.shape == (3, 4, 7)
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(shared, shared_ref, atol=1e-5, rtol=1e-5)
    assert (out[~mask] == 0).all()


def test_stacked_gradients_equal_members_and_roundtrip() -> None:
    nets = _members(2, dropout=0.0)
    ens = EnsembleRanker(nets)
    q, c, mask, y = _inputs(2)
    loss = ListNetLoss()
    sum(
        loss(n.forward_split(q[e], c[e], mask[e]), y[e], mask[e]) for e, n in enumerate(nets)
    ).backward()
    ensemble_losses(ens.forward_split(q, c, mask), y, mask, [(loss, [0, 1])]).sum().backward()
    for name in ens.names:
        ref = torch.stack([dict(n.named_parameters())[name].grad for n in nets])
        torch.testing.assert_close(ens.p(name).grad, ref, atol=1e-5, rtol=1e-4)
    # member_state_dict loads back into a ContextAwareRanker and gives the member's weights
    fresh = ContextAwareRanker(16, 16, dropout=0.0)
    fresh.load_state_dict(ens.member_state_dict(1))
    for name, p in nets[1].named_parameters():
        assert torch.equal(dict(fresh.named_parameters())[name], p)


def test_ensemble_losses_per_member_and_group() -> None:
    """Each member's value is its own loss on its own slice (vmap vs a plain loop)."""
    _, _, mask, y = _inputs(4)
    scores = torch.randn(4, 4, 7)
    losses = [ListNetLoss(), RankNetLoss(), LambdaRankLoss(), NeuralNDCGLoss()]
    groups = [(losses[0], [0, 2]), (losses[1], [1]), (losses[2], [3])]
    out = ensemble_losses(scores, y, mask, groups)
    expected = torch.stack(
        [
            losses[0](scores[0], y[0], mask[0]),
            losses[1](scores[1], y[1], mask[1]),
            losses[0](scores[2], y[2], mask[2]),
            losses[2](scores[3], y[3], mask[3]),
        ]
    )
    torch.testing.assert_close(out, expected)
    nd = ensemble_losses(scores, y, mask, [(losses[3], [0, 1, 2, 3])])
    torch.testing.assert_close(
        nd, torch.stack([losses[3](scores[e], y[e], mask[e]) for e in range(4)])
    )


def test_clip_grad_norm_per_member() -> None:
    a = torch.zeros(2, 3, requires_grad=True)
    b = torch.zeros(2, 4, requires_grad=True)
    a.grad = torch.tensor([[3.0, 0, 0], [0.1, 0, 0]])
    b.grad = torch.tensor([[4.0, 0, 0, 0], [0, 0, 0, 0]])
    norms = clip_grad_norm_per_member([a, b], max_norm=1.0)
    torch.testing.assert_close(norms, torch.tensor([5.0, 0.1]))
    # member 0 (norm 5) scaled to norm 1; member 1 (norm 0.1 < 1) untouched
    torch.testing.assert_close(a.grad[0], torch.tensor([0.6, 0, 0]), atol=1e-5, rtol=0)
    torch.testing.assert_close(a.grad[1], torch.tensor([0.1, 0, 0]))


def test_member_batches_equal_dataloader_order() -> None:
    """A member's batches over two epochs are those of a shuffled DataLoader with its generator."""
    seeds = [3, 11]
    order = MemberBatches({"t2i": 10}, 4, seeds)
    got = [[b["t2i"].tolist() for b in order.epoch()] for _ in range(2)]
    for e, s in enumerate(seeds):
        loader = DataLoader(
            list(range(10)),
            batch_size=4,
            shuffle=True,
            generator=torch.Generator().manual_seed(train_order_seed(s, "t2i")),
        )
        for epoch in range(2):
            assert [row[e] for row in got[epoch]] == [b.tolist() for b in loader]
    assert got[0] != got[1]  # a new order each epoch
    assert all(len(b[0]) == len(b[1]) for ep in got for b in ep)


def test_architecture_mismatch_rejected() -> None:
    torch.manual_seed(0)
    with pytest.raises(ValueError, match="member 1 differs"):
        EnsembleRanker([ContextAwareRanker(16, 16), ContextAwareRanker(16, 16, ff_dim=64)])


# -- end to end ----------------------------------------------------------------------------------
def _cfg(tmp: Path, name: str, overrides: list[str], store: Path, run: str) -> DictConfig:
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose(
            name,
            overrides=[
                "data=synthetic_tiny",
                f"data.store={store}",
                f"data.lists_root={tmp / 'lists'}",
                "data.synth=null",
                "trainer.max_epochs=2",
                "trainer.enable_progress_bar=false",
                "model.net.dropout=0.0",
                "threads=1",
                *overrides,
            ],
        )
    with open_dict(cfg):
        cfg.paths.root_dir = str(CONF.parent)
        cfg.paths.data_dir = str(tmp / "data")
        cfg.paths.log_dir = str(tmp / "logs")
        cfg.paths.output_dir = str(tmp / run)
    return cfg


def test_member_config_errors(tmp_path, tiny_store) -> None:
    cfg = _cfg(tmp_path, "ensemble", ["ensemble.seeds=[0,0]"], tiny_store, "e")
    with pytest.raises(ConfigError, match=r"ensemble.seeds=\[0, 0\]: seeds must be distinct"):
        member_configs(cfg)
    cfg = _cfg(tmp_path, "ensemble", ["ensemble.losses=[nope]"], tiny_store, "e")
    with pytest.raises(ConfigError, match="'nope' is not a conf/loss option"):
        member_configs(cfg)
    cfg = _cfg(tmp_path, "ensemble", ["callbacks=early_stopping"], tiny_store, "e")
    with pytest.raises(ConfigError, match="callbacks.early_stopping"):
        train_ensemble(cfg)
    cfg = _cfg(tmp_path, "ensemble", ["trainer.precision=bf16-mixed"], tiny_store, "e")
    with pytest.raises(ConfigError, match="the ensemble trains in float32 only"):
        train_ensemble(cfg)
    redraw = ["data/mining=pool", "data.redraw_train_lists=true"]
    with pytest.raises(ConfigError, match="data.redraw_train_lists: not supported"):
        train_ensemble(_cfg(tmp_path, "ensemble", redraw, tiny_store, "e"))
    cfg = _cfg(
        tmp_path,
        "ensemble",
        ["ensemble.seeds=[1,2]", "ensemble.losses=[listnet,ranknet]"],
        tiny_store,
        "e",
    )
    members = member_configs(cfg)
    assert [(n, s) for n, s, _ in members] == [
        ("listnet", 1),
        ("listnet", 2),
        ("ranknet", 1),
        ("ranknet", 2),
    ]
    assert members[2][2].loss._target_.endswith("RankNetLoss") and members[2][2].seed == 1
    assert members[3][2].paths.output_dir.endswith("loss=ranknet,seed=2")


@pytest.mark.slow
def test_ensemble_members_equal_separate_runs(tmp_path, tiny_store) -> None:
    """2 losses x 2 seeds as one ensemble == separate `xmr train` runs (dropout 0, float tol)."""
    ens_cfg = _cfg(
        tmp_path,
        "ensemble",
        ["ensemble.seeds=[0,1]", "ensemble.losses=[listnet,ranknet]"],
        tiny_store,
        "ens",
    )
    results = train_ensemble(ens_cfg)
    assert [(r["method"], r["seed"]) for r in results] == [
        ("listnet", 0),
        ("listnet", 1),
        ("ranknet", 0),
        ("ranknet", 1),
    ]
    for loss, seed in [("listnet", 0), ("ranknet", 1)]:
        ref_cfg = _cfg(
            tmp_path, "train", [f"loss={loss}", f"seed={seed}"], tiny_store, f"{loss}{seed}"
        )
        ref = train(ref_cfg)
        member_dir = tmp_path / "ens" / f"loss={loss},seed={seed}"
        got = json.loads((member_dir / "results.json").read_text())
        assert got["method"] == ref["method"] == loss and got["seed"] == seed
        test_keys = sorted(k for k in ref if k.startswith("test/"))
        assert test_keys and test_keys == sorted(k for k in got if k.startswith("test/"))
        for k in test_keys:
            assert got[k] == pytest.approx(ref[k], abs=1e-4), k
        assert got["best_val/rsum"] == pytest.approx(ref["best_val/rsum"], abs=1e-3)
        for d in ("t2i", "i2t"):
            a = load_predictions(member_dir / f"predictions_{d}.npz")
            b = load_predictions(tmp_path / f"{loss}{seed}" / f"predictions_{d}.npz")
            np.testing.assert_array_equal(a["query"], b["query"])
            # Up to a per-list shift: ranking losses are shift-invariant, so the scorer's bias
            # gets a zero gradient up to float noise, which Adam's normalisation turns into
            # lr-sized steps of either sign; batched and single matmuls differ in that noise.
            sa = a["scores"] - np.nanmean(a["scores"], axis=1, keepdims=True)
            sb = b["scores"] - np.nanmean(b["scores"], axis=1, keepdims=True)
            np.testing.assert_allclose(sa, sb, atol=2e-4, equal_nan=True)
            np.testing.assert_array_equal(a["candidates"], b["candidates"])
    # members differ from each other (own seed, own loss)
    assert (
        results[0]["test/t2i/mrr"] != results[1]["test/t2i/mrr"]
        or results[0]["best_val/rsum"] != results[1]["best_val/rsum"]
    )
    # `xmr report` reads the ensemble's output unchanged: 2 methods x 2 seeds
    rows = table(collect(tmp_path / "ens"))
    assert {m: r["n"] for m, r in rows.items()} == {"listnet": 2, "ranknet": 2}
    # a rerun finds every member finished and trains nothing
    again = train_ensemble(ens_cfg)
    assert [r["test/rsum"] for r in again] == [r["test/rsum"] for r in results]
