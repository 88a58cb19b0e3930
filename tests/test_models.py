"""The Context-Aware Ranker and the cosine scorer: shapes, padding, permutation equivariance."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from xmr.metrics.ranking import pessimistic_order
from xmr.models.baselines import PairEmbeddingModel
from xmr.models.ranker import ContextAwareRanker, CosineScorer
from xmr.models.scorer import ScorerKind, scorer_kind
from xmr.utils.instantiate import ConfigError

MODEL_OPTIONS = sorted((Path(__file__).resolve().parents[1] / "conf" / "model").glob("*.yaml"))


def _net(**kw) -> ContextAwareRanker:
    torch.manual_seed(0)
    net = ContextAwareRanker(
        query_dim=8,
        cand_dim=6,
        fc_sizes=[16],
        num_layers=2,
        num_heads=4,
        ff_dim=32,
        dropout=0.0,
        **kw,
    )
    return net.eval()


def _batch(b: int = 3, length: int = 7):
    g = torch.Generator().manual_seed(1)
    q = torch.randn(b, 8, generator=g)
    c = torch.randn(b, length, 6, generator=g)
    mask = torch.ones(b, length, dtype=torch.bool)
    return q, c, mask


def test_split_forward_equals_concatenated_forward() -> None:
    net = _net()
    q, c, mask = _batch()
    x = torch.cat([q.unsqueeze(1).expand(-1, c.shape[1], -1), c], dim=-1)  # (B, L, 14)
    torch.testing.assert_close(net(x, mask), net.forward_split(q, c, mask))
    assert net(x, mask).shape == (3, 7)


def test_padding_does_not_change_real_scores() -> None:
    net = _net()
    q, c, mask = _batch()
    base = net.forward_split(q, c, mask)
    pad = torch.randn(3, 4, 6) * 10  # arbitrary garbage in the padded slots
    c2 = torch.cat([c, pad], dim=1)
    mask2 = torch.cat([mask, torch.zeros(3, 4, dtype=torch.bool)], dim=1)
    padded = net.forward_split(q, c2, mask2)
    torch.testing.assert_close(padded[:, :7], base, atol=1e-5, rtol=1e-5)
    assert torch.all(padded[:, 7:] == 0)


def test_permutation_equivariance() -> None:
    net = _net()
    q, c, mask = _batch()
    perm = torch.randperm(7, generator=torch.Generator().manual_seed(3))
    torch.testing.assert_close(
        net.forward_split(q, c[:, perm], mask[:, perm]),
        net.forward_split(q, c, mask)[:, perm],
        atol=1e-5,
        rtol=1e-5,
    )


def test_context_matters_items_see_each_other() -> None:
    """Self-attention: changing one candidate changes the other candidates' scores."""
    net = _net()
    q, c, mask = _batch()
    c2 = c.clone()
    c2[:, 0] += 5.0
    assert not torch.allclose(
        net.forward_split(q, c, mask)[:, 1:], net.forward_split(q, c2, mask)[:, 1:]
    )


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"num_heads": 3}, "num_heads=3 does not divide"),
        ({"fc_sizes": []}, "fc_sizes"),
        ({"fc_sizes": [0]}, "fc_sizes"),
        ({"dropout": 1.5}, "dropout"),
        ({"activation": "swishy"}, "activation"),
    ],
)
def test_bad_hyperparameters_are_named(kwargs, match) -> None:
    args = {"query_dim": 8, "cand_dim": 8, "fc_sizes": [16], "num_heads": 4} | kwargs
    with pytest.raises(ValueError, match=match):
        ContextAwareRanker(**args)


def test_activation_the_encoder_cannot_honour_is_refused() -> None:
    with pytest.raises(
        ConfigError, match=r"model\.net\.activation='tanh': one of \['gelu', 'relu'\]"
    ):
        ContextAwareRanker(query_dim=8, cand_dim=8, fc_sizes=[16], activation="tanh")


@pytest.mark.parametrize("path", MODEL_OPTIONS, ids=lambda p: p.stem)
def test_every_model_option_names_a_scorer_kind(path: Path) -> None:
    """A model option plugs in through its class: no flag decides how it is built or trained."""
    node = OmegaConf.load(path)
    kind = scorer_kind(node)
    assert issubclass(kind, ScorerKind) and kind.trains_on in ("lists", "pairs")
    kind.check_options(node.net)  # the shipped options pass the start-up checks


def test_scorer_kinds_say_what_they_fit_and_train_on() -> None:
    assert (ContextAwareRanker.fits, ContextAwareRanker.trains_on) == (True, "lists")
    assert (CosineScorer.fits, CosineScorer.trains_on) == (False, "lists")
    assert (PairEmbeddingModel.fits, PairEmbeddingModel.trains_on) == (True, "pairs")


def test_a_model_target_that_is_not_a_scorer_is_refused() -> None:
    node = OmegaConf.create({"net": {"_target_": "torch.nn.Linear"}})
    with pytest.raises(ConfigError, match="not a scorer class"):
        scorer_kind(node)


def test_cosine_scorer_is_cosine() -> None:
    q, c, mask = torch.randn(2, 5), torch.randn(2, 4, 5), torch.ones(2, 4, dtype=torch.bool)
    mask[1, 3] = False
    s = CosineScorer(5, 5).forward_split(q, c, mask)
    ref = torch.nn.functional.cosine_similarity(q.unsqueeze(1), c, dim=-1)
    torch.testing.assert_close(s[0], ref[0])
    torch.testing.assert_close(s[1, :3], ref[1, :3])
    assert s[1, 3] == 0
    with pytest.raises(ValueError, match="joint space"):
        CosineScorer(5, 6)


def test_pessimistic_order_ties_padding_last() -> None:
    scores = torch.tensor([[0.5, 0.5, 0.9, 0.1]])
    labels = torch.tensor([[1.0, 0.0, 0.0, 1.0]])
    mask = torch.tensor([[True, True, True, False]])
    # 0.9 first; the tie 0.5/0.5 puts the irrelevant item (1) before the relevant one (0).
    assert pessimistic_order(scores, labels, mask).tolist() == [[2, 1, 0, 3]]
