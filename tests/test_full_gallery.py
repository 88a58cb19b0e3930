"""The full-gallery protocol: first stage over the whole test gallery, re-ranking of the top K."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf

from xmr.data.store import FeatureStore, write_store
from xmr.metrics.full_gallery import (
    FullGalleryError,
    evaluate_full_gallery,
    hits_at_k,
    rerank_outcomes,
    rerank_recall,
    run_protocol,
)
from xmr.metrics.zeroshot import full_gallery_recall, store_split_recall
from xmr.models.baselines import VSEPPModel
from xmr.models.ranker import ContextAwareRanker, CosineScorer
from xmr.report.render import full_gallery_markdown
from xmr.report.table import full_gallery_rows


def _cosine_nets(dim: int) -> dict[str, CosineScorer]:
    return {"t2i": CosineScorer(dim, dim), "i2t": CosineScorer(dim, dim)}


def test_k_equal_to_gallery_reproduces_zeroshot_full_gallery_recall(tiny_store) -> None:
    store = FeatureStore.open(tiny_store)
    metrics, info, outcomes = evaluate_full_gallery(
        _cosine_nets(store.text_dim), store, top_k=10**6, first_stage="cosine"
    )
    expected = store_split_recall(store, "test")
    for d in ("t2i", "i2t"):
        for k in (1, 5, 10):
            assert metrics[f"test_full/{d}/recall@{k}"] == expected[d][f"recall@{k}"]
            assert metrics[f"test_full/{d}/first_stage_recall@{k}"] == expected[d][f"recall@{k}"]
        assert metrics[f"test_full/{d}/coverage"] == 1.0
    assert info["first_stage"] == "cosine"
    assert info["gallery"] == {"t2i": 20, "i2t": 100} and info["queries"] == {"t2i": 100, "i2t": 20}
    # The per-query outcomes give the same Recall@K, one row per query of the split.
    for d in ("t2i", "i2t"):
        out = outcomes[d]
        assert len(out["query"]) == len(out["rank"]) == info["queries"][d]
        assert np.array_equal(out["rank"], out["first_stage_rank"])  # cosine re-ranks cosine
        for k in (1, 5, 10):
            assert hits_at_k(out["rank"], k).mean() == metrics[f"test_full/{d}/recall@{k}"]


def test_k_one_equals_cosine_recall_at_one(tiny_store) -> None:
    store = FeatureStore.open(tiny_store)
    metrics, _, _ = evaluate_full_gallery(
        _cosine_nets(store.text_dim), store, top_k=1, first_stage="cosine"
    )
    expected = store_split_recall(store, "test")
    for d in ("t2i", "i2t"):
        for k in (1, 5, 10):  # only the top 1 is ranked: a positive below it is a miss
            assert metrics[f"test_full/{d}/recall@{k}"] == expected[d]["recall@1"]


def _hand_problem():
    """One query, gallery of 5; the first stage puts the only positive (item 3) third."""
    gallery = torch.eye(5)  # (G, D)
    first_scores = torch.tensor([[0.9, 0.8, 0.1, 0.7, 0.0]])  # positive item 3 at rank 3
    relevant = torch.tensor([[False, False, False, True, False]])

    def first(q):
        return first_scores.expand(q.shape[0], -1)

    def oracle(q, c, mask):  # a perfect re-ranker: the positive's one-hot column is index 3
        return c[..., 3]

    return gallery, first, relevant, oracle


def test_positive_outside_top_k_is_a_miss_even_for_a_perfect_reranker() -> None:
    gallery, first, relevant, oracle = _hand_problem()
    q = torch.zeros(1, 5)
    out = rerank_recall(first, oracle, q, gallery, lambda sl: relevant[sl], top_k=2, ks=(1, 5))
    assert out == {
        "recall@1": 0.0,
        "recall@5": 0.0,  # not inserted: k > K counts the top K only
        "first_stage_recall@1": 0.0,
        "first_stage_recall@5": 1.0,
        "coverage": 0.0,
    }
    out = rerank_recall(first, oracle, q, gallery, lambda sl: relevant[sl], top_k=3, ks=(1, 5))
    assert out["recall@1"] == 1.0 and out["coverage"] == 1.0


def test_per_query_outcomes_are_first_relevant_ranks() -> None:
    gallery, first, relevant, oracle = _hand_problem()
    q = torch.zeros(1, 5)
    # K = 2: the positive (first stage rank 3) is outside the top K: rank 0, a miss at every k.
    out = rerank_outcomes(first, oracle, q, gallery, lambda sl: relevant[sl], top_k=2, ks=(1, 5))
    assert out["rank"].tolist() == [0] and out["first_stage_rank"].tolist() == [3]
    out = rerank_outcomes(first, oracle, q, gallery, lambda sl: relevant[sl], top_k=3, ks=(1,))
    assert out["rank"].tolist() == [1] and out["first_stage_rank"].tolist() == [3]
    assert hits_at_k(np.array([0, 1, 3, 6]), 5).tolist() == [0.0, 1.0, 1.0, 0.0]


def test_reranker_order_decides_within_the_top_k() -> None:
    gallery, first, relevant, _ = _hand_problem()
    q = torch.zeros(1, 5)

    def reverse(q, c, mask):  # scores = -first-stage scores of the candidates
        return -(c @ torch.tensor([0.9, 0.8, 0.1, 0.7, 0.0]))

    out = rerank_recall(first, reverse, q, gallery, lambda sl: relevant[sl], top_k=3, ks=(1, 2, 3))
    # top 3 by first stage: items 0, 1, 3; reversed: 3, 1, 0 -> the positive first.
    assert out["recall@1"] == 1.0 and out["first_stage_recall@1"] == 0.0


def test_ties_break_pessimistically_in_the_first_stage() -> None:
    gallery = torch.eye(4)
    relevant = torch.tensor([[True, False, False, False]])
    const = rerank_recall(
        lambda q: torch.zeros(q.shape[0], 4),
        lambda q, c, m: torch.zeros(c.shape[:2]),
        torch.zeros(1, 4),
        gallery,
        lambda sl: relevant[sl],
        top_k=3,
        ks=(1, 3, 4),
    )
    assert const["first_stage_recall@1"] == 0.0 and const["first_stage_recall@3"] == 0.0
    assert const["first_stage_recall@4"] == 1.0 and const["coverage"] == 0.0


def test_pair_model_first_stage_is_its_own_space(tmp_path) -> None:
    # A store whose dims differ: no cosine; `self` ranks by the model's learned space, and with
    # K = gallery it equals full_gallery_recall on the model's embeddings.
    rng = np.random.default_rng(0)
    n = 30
    split = np.repeat(np.array([0, 1, 2], np.uint8), [10, 5, 15])
    write_store(
        tmp_path / "s",
        image_emb=rng.normal(size=(n, 6)),
        text_emb=rng.normal(size=(3 * n, 4)),
        text_image=np.repeat(np.arange(n), 3),
        image_split=split,
        images=[f"i{i}" for i in range(n)],
        captions=[f"c{i}" for i in range(3 * n)],
        encoder={"name": "test"},
        joint_space=False,
    )
    store = FeatureStore.open(tmp_path / "s")
    torch.manual_seed(0)
    model = VSEPPModel(query_dim=4, cand_dim=6, out_dim=5)
    nets = {d: model.view(d) for d in ("t2i", "i2t")}
    metrics, info, _ = evaluate_full_gallery(nets, store, top_k=10**6)
    assert info["first_stage"] == "self"
    img_ids, txt_ids = store.split_image_ids("test"), store.split_text_ids("test")
    with torch.no_grad():
        ie = model.embed_image(torch.from_numpy(np.asarray(store.image_emb[img_ids], np.float32)))
        te = model.embed_text(torch.from_numpy(np.asarray(store.text_emb[txt_ids], np.float32)))
    ie = torch.nn.functional.normalize(ie, dim=-1).numpy()
    te = torch.nn.functional.normalize(te, dim=-1).numpy()
    local = {int(g): i for i, g in enumerate(img_ids)}
    expected = full_gallery_recall(
        ie, te, np.array([local[int(store.text_image[t])] for t in txt_ids])
    )
    for d in ("t2i", "i2t"):
        for k in (1, 5, 10):
            assert metrics[f"test_full/{d}/recall@{k}"] == pytest.approx(expected[d][f"recall@{k}"])
    # A ranker has no first stage on this store: skipped with a reason; cosine is refused.
    rankers = {"t2i": ContextAwareRanker(4, 6), "i2t": ContextAwareRanker(6, 4)}
    metrics, info, outcomes = evaluate_full_gallery(rankers, store)
    assert outcomes == {}
    assert metrics == {} and "does not score pairs alone" in info["skipped"]
    with pytest.raises(FullGalleryError, match="first_stage=cosine.*joint_space: false"):
        evaluate_full_gallery(nets, store, first_stage="cosine")
    with pytest.raises(FullGalleryError, match="protocol.top_k=0"):
        evaluate_full_gallery(nets, store, top_k=0)


def test_protocol_config_group(tiny_store) -> None:
    store = FeatureStore.open(tiny_store)
    nets = _cosine_nets(store.text_dim)
    lists_only = OmegaConf.create(
        {"ks": [1, 5], "protocol": {"name": "lists", "full_gallery": None}}
    )
    assert run_protocol(lists_only, nets, store) == ({}, None, {})
    conf = Path(__file__).resolve().parents[1] / "conf" / "protocol" / "full_gallery.yaml"
    cfg = OmegaConf.create({"ks": [1, 5], "protocol": OmegaConf.load(conf)})
    metrics, info, _ = run_protocol(cfg, nets, store)
    assert info["top_k"] == 50 and "test_full/t2i/recall@5" in metrics
    assert "test_full/t2i/recall@10" not in metrics  # ks come from the run's config
    assert metrics["test_full/rsum"] == pytest.approx(
        100 * sum(metrics[f"test_full/{d}/recall@{k}"] for d in ("t2i", "i2t") for k in (1, 5))
    )


def test_report_has_a_labelled_full_gallery_table() -> None:
    def run(seed: int, r1: float) -> dict:
        return {
            "seed": seed,
            "store": {"path": "/x/store"},
            "test_full/t2i/recall@1": r1,
            "test_full/t2i/first_stage_recall@1": 0.1,
            "full_gallery": {"top_k": 20, "first_stage": "cosine"},
        }

    rows = {
        "listnet": {"synthetic": False, "runs": [run(0, 0.2), run(1, 0.4)]},
        "lists_only": {"synthetic": False, "runs": [{"seed": 0}]},
    }
    fg = full_gallery_rows(rows, ks=(1,))
    assert set(fg) == {"listnet"} and fg["listnet"]["n"] == 2
    mean, std = fg["listnet"]["t2i/R@1"]
    assert mean == pytest.approx(30.0) and std == pytest.approx(np.std([20, 40], ddof=1))
    md = full_gallery_markdown(rows, ks=(1,))
    assert (
        "Full-gallery protocol" in md and "| listnet | 2 | cosine | 20 | — | 30.00 ± 14.14 |" in md
    )
    assert "first stage alone (cosine, no re-ranking)" in md
