"""The leakage probe of candidate lists (xmr/data/probe.py, xmr/data/lists_probe.py): known values
on hand-made lists, the analytic chance against a Monte-Carlo estimate, the flag on lists that leak
and on lists that do not, the record in lists.json, ``xmr mine``'s line and ``model=anti_cosine``.
"""

from __future__ import annotations

import json
import logging
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
from _compose import make_cfg, tiny_overrides
from hydra import compose, initialize_config_dir

from xmr.data.lists_probe import probe_lists, read_probe
from xmr.data.mining import load_lists, mine_lists
from xmr.data.probe import (
    LEAK_P_VALUE,
    PROBE_KS,
    PROBE_RULE,
    binomial_tail,
    chance_recall,
    leaking_files,
    probe_file,
    probe_files,
    probe_line,
)
from xmr.data.store import FeatureStore, write_store
from xmr.metrics.full_gallery import evaluate_full_gallery, split_gallery
from xmr.metrics.ranking import pessimistic_order, ranked_recall_at_k
from xmr.models.ranker import AntiCosineScorer, CosineScorer
from xmr.prepare import mine_main
from xmr.train import train

REPO = Path(__file__).resolve().parents[1]
RAND_IMAGES = (400, 100, 100)  # train / val / test images of the random-embedding store


@dataclass
class Lists:
    queries: np.ndarray
    candidates: np.ndarray
    labels: np.ndarray
    direction: str = "t2i"
    split: str = "test"


def _angles(degrees: list[float]) -> np.ndarray:
    rad = np.deg2rad(np.asarray(degrees, dtype=np.float64))
    return np.stack([np.cos(rad), np.sin(rad)], axis=1)  # (N, 2) unit rows


@pytest.fixture(scope="module")
def angle_store(tmp_path_factory: pytest.TempPathFactory) -> FeatureStore:
    """2-d store with known cosines: images at 0, 30, 60, 90, 120 and 90 (a copy of image 3)
    degrees (train; images 6, 7 make the val and test splits); captions 0-2 at 0 degrees,
    captions 3, 4 at 90 and 180 degrees, caption 5 (of test image 7: a store's every test image
    has a caption) at 45 degrees."""
    root = tmp_path_factory.mktemp("angles") / "store"
    write_store(
        root,
        image_emb=_angles([0, 30, 60, 90, 120, 90, 45, 45]),
        text_emb=_angles([0, 0, 0, 90, 180, 45]),
        text_image=np.array([0, 1, 2, 3, 4, 7]),
        image_split=np.array([0, 0, 0, 0, 0, 0, 1, 2], np.uint8),
        images=[f"img{i}" for i in range(8)],
        captions=[f"cap{i}" for i in range(6)],
        encoder={"name": "angles"},
        joint_space=True,
        dtype="float32",
    )
    return FeatureStore.open(root)


@pytest.fixture(scope="module")
def random_store(tmp_path_factory: pytest.TempPathFactory) -> FeatureStore:
    """A joint-space store of random unit vectors: captions carry no trace of their image."""
    rng = np.random.default_rng(0)
    n, dim = sum(RAND_IMAGES), 32
    split = np.repeat(np.arange(3, dtype=np.uint8), RAND_IMAGES)
    root = tmp_path_factory.mktemp("random") / "store"
    write_store(
        root,
        image_emb=rng.normal(size=(n, dim)),
        text_emb=rng.normal(size=(5 * n, dim)),
        text_image=np.repeat(np.arange(n), 5),
        image_split=split,
        images=[f"img{i}" for i in range(n)],
        captions=[f"cap{i}" for i in range(5 * n)],
        encoder={"name": "random-unit-vectors"},
        joint_space=True,
    )
    return FeatureStore.open(root)


def test_known_values_on_hand_made_lists(angle_store: FeatureStore) -> None:
    # Cosines with a caption at 0 degrees: images 0..5 -> 1, .866, .5, 0, -.5, 0.
    lists = Lists(
        queries=np.array([0, 1, 2, 0, 1]),
        candidates=np.array(
            [
                [0, 1, 2, 3, -1],  # positive 3 is the least similar: anti-cosine hit; cos rank 4
                [3, 0, 4, 1, -1],  # positive 0 is the most similar: anti rank 4; cos rank 1
                [2, 4, -1, -1, -1],  # two positives: 4 is anti-cosine's first; best cos rank 1
                [0, 1, -1, -1, -1],  # no positive: excluded, counted
                [5, 3, -1, -1, -1],  # positive 3 tied with 5: ties go against it (rank 2 both ways)
            ]
        ),
        labels=np.array(
            [
                [0, 0, 0, 1, 0],
                [0, 1, 0, 0, 0],
                [1, 1, 0, 0, 0],
                [0, 0, 0, 0, 0],
                [0, 1, 0, 0, 0],
            ],
            dtype=np.uint8,
        ),
    )
    entry = probe_file(lists, angle_store)
    assert entry["lists"] == 5 and entry["lists_without_positive"] == 1
    assert entry["mean_list_size"] == pytest.approx(14 / 5)
    assert entry["anti_cosine"] == pytest.approx(
        {"recall@1": 0.5, "recall@5": 1.0, "recall@10": 1.0}
    )
    # chance R@1 per list: 1/4, 1/4, 2/2, 1/2
    assert entry["chance"] == pytest.approx({"recall@1": 0.5, "recall@5": 1.0, "recall@10": 1.0})
    # best positive cosine ranks 4, 1, 1, 2
    assert entry["positive_rank"] == pytest.approx(
        {"median": 1.5, "p10": 1.0, "p90": 3.4, "mean": 2.0}
    )
    # 2 hits in 4 lists against a chance of 0.5: not significant, and not 2x chance.
    assert entry["p_value"] == pytest.approx(11 / 16) and entry["leak"] is False


def test_i2t_files_take_images_as_queries(angle_store: FeatureStore) -> None:
    # Image 0 (0 degrees) against captions 3 (90), 4 (180), 0 (0): the positive 4 is the least similar.
    lists = Lists(
        queries=np.array([0]),
        candidates=np.array([[3, 4, 0]]),
        labels=np.array([[0, 1, 0]], dtype=np.uint8),
        direction="i2t",
    )
    entry = probe_file(lists, angle_store)
    assert entry["anti_cosine"]["recall@1"] == 1.0
    assert entry["positive_rank"]["median"] == 3.0
    assert entry["chance"]["recall@1"] == pytest.approx(1 / 3)


def test_a_store_without_joint_space_gets_chance_only(small_store) -> None:
    store = FeatureStore.open(small_store(joint_space=False))
    lists = Lists(
        queries=np.array([0, 5]),
        candidates=np.array([[0, 1, 2], [1, 2, -1]]),
        labels=np.array([[1, 0, 0], [0, 1, 0]], dtype=np.uint8),
    )
    entry = probe_file(lists, store)
    assert entry["anti_cosine"] is None and entry["p_value"] is None and entry["leak"] is False
    assert entry["chance"]["recall@1"] == pytest.approx((1 / 3 + 1 / 2) / 2)
    assert entry["positive_rank"] == {"median": None, "p10": None, "p90": None, "mean": None}
    line = probe_line(probe_files(store, [lists]))
    assert "not applicable" in line and "t2i/test" in line


def test_analytic_chance_matches_monte_carlo() -> None:
    gen = torch.Generator().manual_seed(0)
    sizes = np.array([2, 3, 7, 10, 12, 30, 51])
    positives = np.array([1, 2, 1, 3, 5, 1, 2])
    draws = 20_000
    for size, pos in zip(sizes, positives, strict=True):
        labels = torch.zeros(draws, 60)
        labels[:, :pos] = 1
        mask = torch.zeros(draws, 60, dtype=torch.bool)
        mask[:, :size] = True
        order = pessimistic_order(torch.rand(draws, 60, generator=gen), labels, mask)
        ranked = labels.gather(1, order)
        for k in (*PROBE_KS, 3):
            simulated = float(ranked_recall_at_k(ranked, k).mean())
            exact = float(chance_recall(np.array([size]), np.array([pos]), k)[0])
            expected = 1 - math.comb(size - pos, k) / math.comb(size, k) if k <= size else 1.0
            assert exact == pytest.approx(expected, abs=1e-12)
            assert simulated == pytest.approx(exact, abs=4 * math.sqrt(0.25 / draws)), (
                size,
                pos,
                k,
            )


def test_binomial_tail_is_exact() -> None:
    for n, p, s in [(10, 0.3, 4), (50, 0.02, 3), (7, 0.5, 0), (7, 0.5, 7), (200, 1 / 51, 20)]:
        exact = sum(math.comb(n, k) * p**k * (1 - p) ** (n - k) for k in range(s, n + 1))
        assert binomial_tail(s, n, p) == pytest.approx(exact, rel=1e-9, abs=1e-300)
    assert binomial_tail(11, 10, 0.5) == 0.0


def test_hard_lists_of_random_vectors_leak_random_lists_do_not(
    random_store: FeatureStore, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING, logger="xmr.data.probe"):
        hard = mine_lists(random_store, tmp_path / "hard", pool=200, hard=50, strategy="hard")
    probe = read_probe(hard)
    assert probe is not None and probe["rule"] == PROBE_RULE
    assert leaking_files(probe) == list(probe["files"])  # all six files
    train = probe["files"]["t2i_train"]
    # The positive is a random vector; the negatives are the top 50 of 200: it is usually last.
    assert train["anti_cosine"]["recall@1"] > 0.5 and train["positive_rank"]["median"] == 51
    assert train["chance"]["recall@1"] == pytest.approx(1 / 51)
    assert train["p_value"] < LEAK_P_VALUE
    assert "leak" in caplog.text and "t2i_train" in caplog.text
    assert "LEAK in 6 of 6 files" in probe_line(probe)

    # Random negatives: the random positive is one more random vector, at chance.
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="xmr.data.probe"):
        rnd = mine_lists(random_store, tmp_path / "random", pool=200, hard=50, strategy="random")
    probe = read_probe(rnd)
    assert probe is not None and leaking_files(probe) == []
    assert not [r for r in caplog.records if r.name == "xmr.data.probe"]  # (short pools warn)
    for entry in probe["files"].values():
        assert entry["p_value"] > LEAK_P_VALUE
        assert entry["anti_cosine"]["recall@1"] < 2 * entry["chance"]["recall@1"]
    assert "no leak in 6 files" in probe_line(probe)


def test_lists_whose_positive_is_chosen_like_the_negatives_do_not_leak(
    random_store: FeatureStore,
) -> None:
    """Top 51 by cosine of a random pool of 201 that holds the positive (kept where the positive
    survives): positive and negatives obey one rule, so anti-cosine stays at chance."""
    rng = np.random.default_rng(1)
    img = np.flatnonzero(random_store.image_split == 0)
    txt = np.flatnonzero(random_store.image_split[random_store.text_image] == 0)
    unit = np.asarray(random_store.image_emb, np.float32)
    texts = np.asarray(random_store.text_emb, np.float32)
    queries, candidates, labels = [], [], []
    for t in txt:
        positive = int(random_store.text_image[t])
        pool = np.append(rng.choice(img[img != positive], 200, replace=False), positive)
        top = pool[np.argsort(-(unit[pool] @ texts[t]), kind="stable")[:51]]
        if positive in top:
            queries.append(t)
            candidates.append(rng.permutation(top))
            labels.append((candidates[-1] == positive).astype(np.uint8))
    lists = Lists(np.array(queries), np.array(candidates), np.array(labels), split="train")
    assert len(queries) > 300
    entry = probe_file(lists, random_store)
    assert entry["leak"] is False and entry["p_value"] > LEAK_P_VALUE
    assert entry["anti_cosine"]["recall@1"] < 2 * entry["chance"]["recall@1"]


def test_random_lists_on_features_with_signal_do_not_leak(small_store, tmp_path: Path) -> None:
    """Captions are noisy copies of their image: the positive is the most similar, anti-cosine
    falls below chance, and that is no leak."""
    store = FeatureStore.open(small_store(joint_space=True))
    out = mine_lists(store, tmp_path / "random", pool=30, hard=10, strategy="random")
    probe = read_probe(out)
    assert probe is not None and leaking_files(probe) == []
    train = probe["files"]["t2i_train"]
    assert train["anti_cosine"]["recall@1"] < train["chance"]["recall@1"]
    assert train["positive_rank"]["median"] < 3


def test_lists_json_schema_and_old_lists(tiny_store: Path, tmp_path: Path) -> None:
    store = FeatureStore.open(tiny_store)
    out = mine_lists(store, tmp_path / "lists", pool=30, hard=10)
    meta = json.loads((out / "lists.json").read_text())
    probe = meta["probe"]
    assert set(probe) == {"rule", "files"} and isinstance(probe["rule"], str)
    assert list(probe["files"]) == [
        f"{d}_{s}" for s in ("train", "val", "test") for d in ("t2i", "i2t")
    ]
    for key, entry in probe["files"].items():
        assert set(entry) == {
            "lists",
            "lists_without_positive",
            "mean_list_size",
            "anti_cosine",
            "chance",
            "positive_rank",
            "leak",
            "p_value",
        }
        lists = load_lists(out, *key.split("_"), store=store)
        assert entry["lists"] == lists.num_lists and entry["lists_without_positive"] == 0
        assert entry["mean_list_size"] == pytest.approx(lists.mask.sum(1).mean())
        for part in ("anti_cosine", "chance"):
            assert set(entry[part]) == {"recall@1", "recall@5", "recall@10"}
            assert all(isinstance(v, float) and 0.0 <= v <= 1.0 for v in entry[part].values())
        assert set(entry["positive_rank"]) == {"median", "p10", "p90", "mean"}
        assert 1.0 <= entry["positive_rank"]["p10"] <= entry["positive_rank"]["p90"]
        assert isinstance(entry["leak"], bool) and 0.0 <= entry["p_value"] <= 1.0
    # The probe of the directory on disk is the recorded one; old lists (no probe) read None.
    assert probe_lists(store, out) == probe
    del meta["probe"]
    (out / "lists.json").write_text(json.dumps(meta))
    assert read_probe(out) is None


def test_xmr_mine_prints_the_probe_line(
    random_store: FeatureStore, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    lists = tmp_path / "lists"
    overrides = [
        "data=synthetic_tiny",
        f"data.store={random_store.root}",
        "data.synth=null",
        f"data.lists_dir={lists}",
        "data.mining.pool=200",
        "data.mining.hard=50",
    ]
    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        cfg = compose("prepare", overrides=overrides)
    mine_main(cfg)
    lines = [ln for ln in capsys.readouterr().out.splitlines() if ln.startswith("probe:")]
    assert len(lines) == 1
    assert lines[0].startswith("probe: anti-cosine in-list R@1 t2i/train ")
    assert "vs chance 2.0% — LEAK in 6 of 6 files" in lines[0]
    # Old lists (mined before the probe): computed on the spot, the same line, not written.
    meta = json.loads((lists / "lists.json").read_text())
    del meta["probe"]
    (lists / "lists.json").write_text(json.dumps(meta))
    mine_main(cfg)
    again = [ln for ln in capsys.readouterr().out.splitlines() if ln.startswith("probe:")]
    assert again == lines and read_probe(lists) is None


def test_anti_cosine_scorer_is_minus_cosine() -> None:
    q, c, mask = torch.randn(2, 5), torch.randn(2, 4, 5), torch.ones(2, 4, dtype=torch.bool)
    mask[1, 3] = False
    anti = AntiCosineScorer(5, 5)
    s = anti.forward_split(q, c, mask)
    torch.testing.assert_close(s, -CosineScorer(5, 5).forward_split(q, c, mask))
    assert s[1, 3] == 0 and (AntiCosineScorer.fits, AntiCosineScorer.trains_on) == (False, "lists")
    assert not hasattr(anti, "gallery_scores")  # never its own first stage
    with pytest.raises(ValueError, match="joint space"):
        AntiCosineScorer(5, 6)


def test_anti_cosine_in_the_full_gallery_reverses_the_cosine_top_k(tiny_store: Path) -> None:
    store = FeatureStore.open(tiny_store)
    top_k = 5
    nets = {"t2i": AntiCosineScorer(32, 32)}
    metrics, info, _ = evaluate_full_gallery(nets, store, top_k=top_k, first_stage="auto")
    assert info["first_stage"] == "cosine"
    # Direct: a hit at 1 when the cosine's K-th item (pessimistic order) is relevant.
    parts = split_gallery(store, "t2i")
    q = torch.nn.functional.normalize(
        torch.from_numpy(np.asarray(store.text_emb, np.float32)), dim=-1
    )
    g = torch.nn.functional.normalize(
        torch.from_numpy(np.asarray(store.image_emb, np.float32)), dim=-1
    )
    scores = q[parts["queries"]] @ g[parts["gallery"]].T
    rel = torch.from_numpy(parts["query_key"][:, None] == parts["gallery_key"][None, :])
    order = pessimistic_order(scores, rel, torch.ones_like(rel))[:, :top_k]
    kth = rel.gather(1, order)[:, top_k - 1].double().mean()
    assert metrics["test_full/t2i/recall@1"] == pytest.approx(float(kth))
    assert metrics["test_full/t2i/recall@5"] == metrics["test_full/t2i/first_stage_recall@5"]
    with pytest.raises(ValueError, match="first_stage=self"):
        evaluate_full_gallery(nets, store, top_k=top_k, first_stage="self")


def test_model_anti_cosine_evaluates_end_to_end(random_store: FeatureStore, tmp_path: Path) -> None:
    results = train(make_cfg(tmp_path, tiny_overrides(random_store.root, "model=anti_cosine")))
    assert results["method"] == "anti_cosine" and results["checkpoint"] is None
    # Its in-list R@1 on the test lists is the probe's anti-cosine R@1 of those lists.
    lists_dir = Path(random_store.root) / "lists" / "hard-p30-h10-t2i1-i2t1-s0"
    probe = read_probe(lists_dir)
    assert probe is not None
    for direction in ("t2i", "i2t"):
        value = probe["files"][f"{direction}_test"]["anti_cosine"]["recall@1"]
        assert results[f"test/{direction}/recall@1"] == pytest.approx(value, abs=1e-6)
    assert "test_full/t2i/recall@1" in results
