"""Interaction features of the Context-Aware Ranker: input width, values, padding, config errors."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from _compose import make_cfg

from xmr.data.store import write_store
from xmr.models.build import build_module
from xmr.models.ranker import ContextAwareRanker, interaction_features
from xmr.runs.naming import run_method
from xmr.train import train
from xmr.utils.instantiate import ConfigError, instantiate

CONF = Path(__file__).resolve().parents[1] / "conf"
ALL = ["cosine", "product", "absdiff"]


@pytest.mark.parametrize(
    "names, extra", [([], 0), (["cosine"], 1), (["product"], 8), (ALL, 1 + 8 + 8)]
)
def test_interaction_changes_the_input_width(names, extra) -> None:
    net = ContextAwareRanker(8, 8, interaction=names)
    assert net.input_dim == 16 + extra
    if extra:
        assert net.input_x.in_features == extra
    else:
        assert net.input_x is None
    assert net(torch.randn(2, 5, 16), torch.ones(2, 5, dtype=torch.bool)).shape == (2, 5)


def test_interaction_feature_values() -> None:
    q = torch.tensor([[1.0, 2.0, -1.0]])  # (1, 3)
    c = torch.tensor([[[2.0, 0.0, 1.0], [0.0, 0.0, 0.0]]])  # (1, 2, 3); second = zero padding
    f = interaction_features(q, c, ALL)  # (1, 2, 7)
    assert f.shape == (1, 2, 7)
    assert float(f[0, 0, 0]) == pytest.approx(1.0 / (6**0.5 * 5**0.5))  # (2 - 1) / (|q| |c|)
    assert torch.equal(f[0, 0, 1:4], torch.tensor([2.0, 0.0, -1.0]))
    assert torch.equal(f[0, 0, 4:], torch.tensor([1.0, 2.0, 2.0]))
    assert torch.isfinite(f).all() and float(f[0, 1, 0]) == 0.0  # zero candidate: finite


def test_interaction_is_padding_safe_and_permutation_equivariant() -> None:
    torch.manual_seed(0)
    net = ContextAwareRanker(6, 6, interaction=ALL, dropout=0.0).eval()
    q, c = torch.randn(2, 6), torch.randn(2, 4, 6)
    mask = torch.ones(2, 4, dtype=torch.bool)
    base = net.forward_split(q, c, mask)
    # Pad with garbage and with zeros: the real items' scores do not move, no NaN anywhere.
    for pad in (torch.randn(2, 3, 6) * 100, torch.zeros(2, 3, 6)):
        padded = net.forward_split(
            q, torch.cat([c, pad], 1), torch.cat([mask, torch.zeros(2, 3, dtype=torch.bool)], 1)
        )
        assert torch.isfinite(padded).all()
        assert torch.allclose(padded[:, :4], base, atol=1e-5)
        assert torch.all(padded[:, 4:] == 0)
    perm = torch.tensor([2, 0, 3, 1])
    assert torch.allclose(net.forward_split(q, c[:, perm], mask), base[:, perm], atol=1e-5)
    # forward on concatenated pair features agrees with forward_split.
    x = torch.cat([q.unsqueeze(1).expand(-1, 4, -1), c], -1)
    assert torch.allclose(net(x, mask), base, atol=1e-6)


def test_interaction_needs_one_space_and_known_names() -> None:
    with pytest.raises(ValueError, match="joint space.*query_dim=8 != cand_dim=6"):
        ContextAwareRanker(8, 6, interaction=["cosine"])
    with pytest.raises(ValueError, match="model.net.interaction"):
        ContextAwareRanker(8, 8, interaction=["dot"])
    with pytest.raises(ValueError, match="model.net.interaction"):
        ContextAwareRanker(8, 8, interaction=["cosine", "cosine"])


def test_interaction_refused_on_a_store_without_joint_space(tmp_path) -> None:
    # Equal dims but joint_space: false — the ranker could compute the features, the config
    # check refuses them because the two spaces are unrelated.
    rng = np.random.default_rng(0)
    store = tmp_path / "store"
    split = np.repeat(np.array([0, 1, 2], np.uint8), [20, 5, 5])
    write_store(
        store,
        image_emb=rng.normal(size=(30, 8)),
        text_emb=rng.normal(size=(60, 8)),
        text_image=np.repeat(np.arange(30), 2),
        image_split=split,
        images=[f"i{i}" for i in range(30)],
        captions=[f"c{i}" for i in range(60)],
        encoder={"name": "test"},
        joint_space=False,
    )
    cfg = make_cfg(
        tmp_path,
        [
            "data=synthetic_tiny",
            f"data.store={store}",
            "data.synth=null",
            "data.mining.strategy=random",
            "data.mining.pool=10",
            "data.mining.hard=4",
            "ks=[1,5]",
            "model.net.interaction=[cosine]",
        ],
    )
    dm = instantiate(cfg.data)
    dm.prepare_data()
    dm.setup()
    with pytest.raises(ConfigError, match="model.net.interaction.*joint_space: false"):
        build_module(cfg, dm)


def test_interaction_run_is_named_and_trains(tiny_store, tmp_path) -> None:
    cfg = make_cfg(
        tmp_path,
        [
            "data=synthetic_tiny",
            f"data.store={tiny_store}",
            "data.synth=null",
            "data.lists_root=" + str(tmp_path / "lists"),
            "loss=listnet",
            "trainer.max_epochs=1",
            "trainer.enable_progress_bar=false",
            "model.net.interaction=[cosine,product,absdiff]",
        ],
    )
    assert run_method(cfg) == "listnet+cosine+product+absdiff"
    results = train(cfg)
    assert results["method"] == "listnet+cosine+product+absdiff"
    assert 0.0 <= results["test/t2i/recall@1"] <= 1.0
    assert results["config"]["model"]["net"]["interaction"] == ALL


def test_cosine_feature_equals_torch_cosine_similarity() -> None:
    torch.manual_seed(1)
    q, c = torch.randn(3, 5), torch.randn(3, 4, 5)
    f = interaction_features(q, c, ["cosine"])[..., 0]  # (3, 4)
    assert torch.allclose(f, F.cosine_similarity(q.unsqueeze(1), c, dim=-1), atol=1e-6)
