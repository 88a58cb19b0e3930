"""The first-stage list constructions (``strategy: first_stage`` and ``pool``), their training-list
drops, their eval misses through the datamodule and the metrics, and ``hard``/``random`` bytes."""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from _compose import make_cfg

from xmr.data import mining
from xmr.data.datamodule import XMRDataModule, mining_tag
from xmr.data.mining import (
    MINING_DEFAULTS,
    ListsError,
    build_problem,
    load_lists,
    mine_lists,
    mine_ranked,
)
from xmr.data.store import DIRECTIONS, SPLITS, FeatureStore
from xmr.metrics.full_gallery import cosine_gallery_scores, split_gallery
from xmr.metrics.functional import list_metrics
from xmr.metrics.ranking import pessimistic_topk
from xmr.metrics.retrieval import ListRetrievalMetrics
from xmr.utils.config import validate_config
from xmr.utils.instantiate import ConfigError

FILES = [(d, s) for s in SPLITS for d in DIRECTIONS]


def _first_stage_top(store: FeatureStore, direction: str, split: str, k: int) -> dict:
    """Brute force, with the full-gallery protocol's own code: each query's top ``k`` of the
    whole split gallery by cosine (pessimistic ties), as sets, and whether a relevant item is in."""
    parts = split_gallery(store, direction, split)
    emb = {"text": store.text_emb, "image": store.image_emb}
    q = torch.from_numpy(np.asarray(emb[parts["query_table"]][parts["queries"]], np.float32))
    g = torch.from_numpy(np.asarray(emb[parts["gallery_table"]][parts["gallery"]], np.float32))
    rel = torch.from_numpy(parts["query_key"][:, None] == parts["gallery_key"][None, :])
    top = pessimistic_topk(cosine_gallery_scores(g)(q), rel, torch.ones_like(rel), k).numpy()
    return {
        int(qid): (set(parts["gallery"][row].tolist()), bool(rel[i, row].any()))
        for i, (qid, row) in enumerate(zip(parts["queries"], top, strict=True))
    }


@pytest.fixture(scope="module")
def joint(small_store: Callable[..., Path]) -> FeatureStore:
    return FeatureStore.open(small_store(joint_space=True))


@pytest.fixture(scope="module")
def first_stage(joint: FeatureStore, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("fs") / "l"
    return mine_lists(joint, out, strategy="first_stage", list_size=6, t2i_captions_per_image="all")


@pytest.mark.parametrize(("direction", "split"), FILES)
def test_first_stage_is_the_brute_force_top_l(
    joint: FeatureStore, first_stage: Path, direction: str, split: str
) -> None:
    """Each list is its query's top L of the split gallery, the set the full-gallery protocol
    re-ranks; training lists without a retrieved positive are dropped (and counted), val/test
    ones kept with relevant_total."""
    lists = load_lists(first_stage, direction, split, store=joint)
    expected = _first_stage_top(joint, direction, split, 6)
    stats = json.loads((first_stage / "lists.json").read_text())["stats"][f"{direction}_{split}"]
    misses = {q for q, (_, hit) in expected.items() if not hit}
    if (direction, split) == ("t2i", "train"):  # 60 images: some positives fall outside
        assert misses
    if split == "train":
        assert set(lists.queries.tolist()) == set(expected) - misses
        assert stats["lists_dropped_no_positive"] == len(misses)
        assert lists.labels.any(axis=1).all()
    else:
        assert set(lists.queries.tolist()) == set(expected)
        assert stats["lists_without_positive"] == len(misses)
        assert int((~lists.labels.any(axis=1)).sum()) == len(misses)
    assert stats["queries"] == len(expected)
    assert stats["coverage"] == pytest.approx(1 - len(misses) / len(expected), abs=1e-4)
    for q, row in zip(lists.queries, lists.candidates, strict=True):
        assert set(row.tolist()) == expected[int(q)][0]
    text_image = np.asarray(joint.text_image)
    if direction == "t2i":
        assert (lists.relevant_total == 1).all()
        relevant = text_image[lists.queries][:, None] == lists.candidates
    else:  # every caption of the image is relevant, siblings included
        assert (lists.relevant_total == 5).all()
        relevant = text_image[lists.candidates] == lists.queries[:, None]
    assert (lists.labels.astype(bool) == relevant).all()


def test_first_stage_params_and_tag(first_stage: Path) -> None:
    params = json.loads((first_stage / "lists.json").read_text())["params"]
    assert params["strategy"] == "first_stage" and params["list_size"] == 6
    assert "pool_size" not in params
    assert mining_tag({"strategy": "first_stage"}) == "first_stage-L51-t2i1-i2t1-s0"
    assert mining_tag({"strategy": "pool"}) == "pool-Ptest_gallery-L51-t2i1-i2t1-s0"
    assert MINING_DEFAULTS["list_size"] == 51 and MINING_DEFAULTS["pool_size"] == "test_gallery"


def test_pool_lists_are_the_top_l_of_a_pool_holding_the_positive(
    joint: FeatureStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every pool holds the query's positive(s) and pool_size items in all; the list is the pool's
    top L by cosine."""
    seen = []
    original = mining.first_stage_top

    def spy(q_emb, c_emb, excl_start, excl_count, real, cand_key, k):  # type: ignore[no-untyped-def]
        top, top_real = original(q_emb, c_emb, excl_start, excl_count, real, cand_key, k)
        seen.append((q_emb, c_emb, excl_start, excl_count, real, top, top_real))
        return top, top_real

    monkeypatch.setattr(mining, "first_stage_top", spy)
    text_image = np.asarray(joint.text_image, np.int64)
    for direction in DIRECTIONS:
        problem, _ = build_problem(
            direction,
            text_image,
            np.asarray(joint.image_split),
            0,
            t2i_captions_per_image=None,
            i2t_positives=2,
            rng=np.random.default_rng(0),
            image_emb=joint.image_emb,
            text_emb=joint.text_emb,
        )
        seen.clear()
        out = mine_ranked(problem, list_size=5, pool_size=30, seed_key=(1, 2, 3))
        (q_emb, c_emb, ex_s, ex_c, real, top, top_real) = seen[0]
        assert top_real.all()
        b = real.shape[0]  # the first block of queries
        positives = torch.from_numpy(problem.positives[:b])
        assert real.gather(1, positives.clamp_min(0))[positives >= 0].all()  # positives in pool
        assert (real.sum(1) == 30).all()
        # Items relevant to the query but not chosen as positives stay out of the pool.
        local = torch.arange(real.shape[1])[None, :]
        block = (local >= ex_s[:, None]) & (local < (ex_s + ex_c)[:, None])
        chosen = torch.zeros_like(real).scatter_(1, positives.clamp_min(0), positives >= 0)
        assert not (real & block & ~chosen).any()
        scores = (q_emb @ c_emb.T).masked_fill(~real, -2.0)
        kth = scores.gather(1, top).min(dim=1).values  # the list's lowest score
        outside = real.clone()
        outside.scatter_(1, top, False)
        assert (scores.masked_fill(~outside, -2.0).max(dim=1).values <= kth).all()
        n_pos = (problem.positives >= 0).sum(1)
        assert len(seen) == -(-len(n_pos) // b)
        assert (out.relevant_total == n_pos).all()
        assert (out.labels.sum(1) <= n_pos).all() and out.labels.any(1).any()


def test_pool_size_test_gallery_and_full_pool(joint: FeatureStore, tmp_path: Path) -> None:
    """pool_size defaults to the test gallery (t2i: test images, i2t: test captions); a pool as
    large as the split gallery gives the first_stage lists of t2i."""
    out = mine_lists(joint, tmp_path / "p", strategy="pool", splits=("train",), list_size=6)
    params = json.loads((out / "lists.json").read_text())["params"]
    n_test_img = int((np.asarray(joint.image_split) == 2).sum())
    assert params["pool_size"] == "test_gallery"
    assert params["pool_size_resolved"] == {"t2i": n_test_img, "i2t": 5 * n_test_img}
    full = mine_lists(
        joint, tmp_path / "full", strategy="pool", pool_size=10_000, list_size=6, splits=("val",)
    )
    fs = mine_lists(joint, tmp_path / "fs", strategy="first_stage", list_size=6, splits=("val",))
    a, b = load_lists(full, "t2i", "val"), load_lists(fs, "t2i", "val")
    assert (a.queries == b.queries).all()
    for ra, rb in zip(a.candidates, b.candidates, strict=True):
        assert set(ra.tolist()) == set(rb.tolist())


def test_pool_short_pools_count_pools_larger_than_the_gallery(
    joint: FeatureStore, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """``short_pools`` of the pool strategy: queries whose split gallery holds fewer items than
    ``pool_size`` (each then ranks the whole gallery), warned about by file; a pool exactly the
    test gallery's size (the default) is not short on the test split, though the query's own
    positive is one of those items and i2t's other captions of the image stay out."""
    with caplog.at_level(logging.WARNING, logger="xmr.data.mining"):
        out = mine_lists(joint, tmp_path / "p", strategy="pool", list_size=6, splits=("test",))
    stats = json.loads((out / "lists.json").read_text())["stats"]
    assert stats["t2i_test"]["short_pools"] == stats["i2t_test"]["short_pools"] == 0
    assert "short" not in caplog.text
    n_val_img = int((np.asarray(joint.image_split) == 1).sum())
    with caplog.at_level(logging.WARNING, logger="xmr.data.mining"):
        out = mine_lists(
            joint,
            tmp_path / "v",
            strategy="pool",
            pool_size=n_val_img + 1,
            list_size=6,
            splits=("val",),
        )
    meta = json.loads((out / "lists.json").read_text())
    t2i, i2t = meta["stats"]["t2i_val"], meta["stats"]["i2t_val"]
    assert t2i["gallery_size"] == n_val_img and t2i["short_pools"] == t2i["queries"] > 0
    assert i2t["short_pools"] == 0  # 5 captions per image: a larger gallery
    assert mining.short_pool_warnings(meta) == [
        f"t2i_val.npz: {t2i['queries']} of {t2i['queries']} pools short: "
        f"pool_size={n_val_img + 1} but the split's gallery holds {n_val_img} items, so those "
        "queries drew from all of them (lists.json stats.short_pools)"
    ]
    assert f"t2i_val.npz: {t2i['queries']} of {t2i['queries']} pools short" in caplog.text


def test_eval_misses_count_as_misses_end_to_end(joint: FeatureStore, tmp_path: Path) -> None:
    """Val lists whose positive the first stage missed reach the metrics through the datamodule
    and count as misses: recall over all queries equals the full-gallery cosine recall."""
    lists_dir = mine_lists(
        joint, tmp_path / "l", strategy="first_stage", list_size=3, t2i_captions_per_image="all"
    )
    dm = XMRDataModule(str(joint.root), lists_dir=str(lists_dir), direction="both")
    dm.setup()
    for direction, loader in zip(dm.directions, dm.val_dataloader(), strict=True):
        metric = ListRetrievalMetrics(ks=(1, 3))
        for batch in loader:
            assert batch["relevant_total"].shape == batch["query"].shape
            scores = torch.einsum("bd,bld->bl", batch["q"], batch["c"])  # cosine re-ranking
            metric.update(scores, batch["labels"], batch["mask"], batch["relevant_total"])
        result = metric.compute()
        stats = json.loads((lists_dir / "lists.json").read_text())["stats"]
        expected = _first_stage_top(joint, direction, "val", 3)
        top1 = _first_stage_top(joint, direction, "val", 1)
        assert int(result["lists"]) == len(expected)
        assert int(result["lists_missed"]) == stats[f"{direction}_val"]["lists_without_positive"]
        assert int(result["lists_without_positive"]) == 0
        assert int(result["lists_missed"]) > 0 or direction == "i2t"
        hits3 = np.mean([hit for _, hit in expected.values()])
        hits1 = np.mean([hit for _, hit in top1.values()])
        assert float(result["recall@3"]) == pytest.approx(hits3, abs=1e-6)
        assert float(result["recall@1"]) == pytest.approx(hits1, abs=1e-6)


def test_list_metrics_with_relevant_total_known_values() -> None:
    scores = torch.tensor([[0.9, 0.5, 0.1], [0.9, 0.5, 0.1], [0.9, 0.5, 0.1], [0.9, 0.5, 0.1]])
    labels = torch.tensor([[0, 0, 0], [0, 0, 0], [1, 0, 0], [1, 0, 0]], dtype=torch.float32)
    mask = torch.ones(4, 3, dtype=torch.bool)
    total = torch.tensor([1, 0, 2, 1])
    out = list_metrics(scores, labels, mask, ks=(1,), relevant_total=total)
    hit, found = out["recall@1"], out["recall_found@1"]
    assert hit[0] == 0 and found[0] == 0 and out["mrr"][0] == 0  # a miss
    assert torch.isnan(hit[1]) and torch.isnan(out["mrr"][1])  # nothing relevant exists
    assert hit[2] == 1 and found[2] == 0.5  # one of the two relevant items found
    assert hit[3] == 1 and found[3] == 1
    plain = list_metrics(scores, labels, mask, ks=(1,))
    for key in plain:  # lists holding all their relevant items: the same values
        assert torch.equal(plain[key][3:], out[key][3:])
    metric = ListRetrievalMetrics(ks=(1,))
    metric.update(scores, labels, mask, total)
    result = metric.compute()
    assert int(result["lists_missed"]) == 1 and int(result["lists_without_positive"]) == 1
    assert float(result["recall@1"]) == pytest.approx(2 / 3)


@pytest.mark.parametrize("strategy", ["first_stage", "pool"])
def test_deterministic_and_resumable(
    joint: FeatureStore, tmp_path: Path, strategy: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    kw = {"strategy": strategy, "list_size": 6, "pool_size": 40, "seed": 5}
    a = mine_lists(joint, tmp_path / "a", **kw)
    b = mine_lists(joint, tmp_path / "b", **kw)
    names = sorted(p.name for p in a.iterdir())
    for n in names:
        if n != "lists.json":
            assert (a / n).read_bytes() == (b / n).read_bytes(), n
    # Interrupted after two files, then run again: only the missing files are mined.
    original, calls = mining._mine_ranked_file, []

    def interrupted(*args, **kwargs):  # type: ignore[no-untyped-def]
        if len(calls) == 2:
            raise KeyboardInterrupt
        calls.append(args[1:3])
        return original(*args, **kwargs)

    monkeypatch.setattr(mining, "_mine_ranked_file", interrupted)
    with pytest.raises(KeyboardInterrupt):
        mine_lists(joint, tmp_path / "c", **kw)
    assert (tmp_path / ".c.partial" / "t2i_train.npz").exists()
    calls.clear()
    monkeypatch.setattr(
        mining, "_mine_ranked_file", lambda *a, **k: calls.append(0) or original(*a, **k)
    )
    c = mine_lists(joint, tmp_path / "c", **kw)
    assert len(calls) == 4
    for n in names:
        if n != "lists.json":
            assert (a / n).read_bytes() == (c / n).read_bytes(), n
    if strategy == "pool":
        d = mine_lists(joint, tmp_path / "d", **{**kw, "seed": 6})
        assert (a / "i2t_train.npz").read_bytes() != (d / "i2t_train.npz").read_bytes()


@pytest.mark.parametrize("strategy", ["first_stage", "pool"])
def test_refused_on_a_store_without_joint_space(
    small_store: Callable[..., Path], tmp_path: Path, strategy: str
) -> None:
    store = FeatureStore.open(small_store(joint_space=False))
    with pytest.raises(ListsError, match=r"joint_space is false.*first stage"):
        mine_lists(store, tmp_path / "l", strategy=strategy)


def test_bad_parameters(joint: FeatureStore, tmp_path: Path) -> None:
    for kw, rule in (
        ({"list_size": 0}, "list_size"),
        ({"list_size": 2.5}, "list_size"),
        ({"pool_size": 0}, "pool_size"),
        ({"pool_size": "auto"}, "pool_size"),
    ):
        with pytest.raises(ListsError, match=rule):
            mine_lists(joint, tmp_path / "x", strategy="pool", **kw)


def test_hard_and_random_bytes_unchanged(joint: FeatureStore, tmp_path: Path) -> None:
    """hard and random lists keep their bytes (digests of the files before the first-stage
    strategies existed) and ignore list_size / pool_size."""
    digests = {}
    for strategy in ("hard", "random"):
        out = mine_lists(
            joint, tmp_path / strategy, strategy=strategy, pool=40, hard=8, list_size=3, seed=2
        )
        params = json.loads((out / "lists.json").read_text())["params"]
        assert "list_size" not in params and "pool_size" not in params
        for d, s in FILES:
            name = f"{d}_{s}.npz"
            digests[f"{strategy}/{name}"] = hashlib.sha256((out / name).read_bytes()).hexdigest()[
                :16
            ]
    assert digests == PINNED


PINNED: dict[str, str] = {
    "hard/t2i_train.npz": "33a79f0491ddd869",
    "hard/i2t_train.npz": "60bb7a33acccc955",
    "hard/t2i_val.npz": "cd01ce1aaf486193",
    "hard/i2t_val.npz": "e08806d0757dcd2e",
    "hard/t2i_test.npz": "cfabf02089039e04",
    "hard/i2t_test.npz": "ce71779f800206ff",
    "random/t2i_train.npz": "50caa82370a59eb7",
    "random/i2t_train.npz": "d478f1fecc97aa03",
    "random/t2i_val.npz": "c9c3d7c6416e7d59",
    "random/i2t_val.npz": "701142d24156987f",
    "random/t2i_test.npz": "539b2c3675324196",
    "random/i2t_test.npz": "c7a6c717973d6a4e",
}


@pytest.mark.parametrize(
    ("overrides", "error"),
    [
        (["data/mining=first_stage"], None),
        (["data/mining=pool"], None),
        (["data.mining.strategy=pool"], None),
        (["data.mining.strategy=pool", "data.mining.pool_size=300"], None),
        (["data.mining.strategy=bogus"], r"data.mining.strategy='bogus': one of hard, random"),
        (["data/mining=first_stage", "data.mining.list_size=0"], r"data.mining.list_size=0"),
        (["data/mining=first_stage", "data.mining.list_size=5"], r"ks=.*list_size = 5"),
        (["data/mining=pool", "data.mining.pool_size=0"], r"data.mining.pool_size=0"),
        (["data/mining=pool", "data.mining.pool_size=auto"], r"data.mining.pool_size='auto'"),
    ],
)
def test_config_keys_validated(tmp_path: Path, overrides: list[str], error: str | None) -> None:
    cfg = make_cfg(tmp_path, ["data=synthetic_tiny", *overrides])
    if error is None:
        validate_config(cfg)
        strategy = cfg.data.mining.strategy
        assert strategy in ("first_stage", "pool") and cfg.data.mining.list_size == 51
        assert mining_tag(cfg.data.mining).startswith(strategy)
    else:
        with pytest.raises(ConfigError, match=error):
            validate_config(cfg)


def test_misses_line(first_stage: Path) -> None:
    meta = json.loads((first_stage / "lists.json").read_text())
    line = mining.misses_line(meta)
    dropped = meta["stats"]["t2i_train"]["lists_dropped_no_positive"]
    assert line is not None and "\n" not in line and f"t2i_train {dropped}" in line
    assert mining.misses_line({**meta, "params": {"strategy": "hard"}}) is None


@pytest.mark.parametrize("with_pool", [False, True])
def test_first_stage_top_with_ties_equals_the_pessimistic_order_of_the_row(
    with_pool: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Many exact ties (candidates sharing 4 distinct vectors), ties spanning the top-k margin:
    the result is the pessimistic top k of the whole row, columns in key order."""
    gen = torch.Generator().manual_seed(0)
    b, m, d, k = 40, 300, 8, 5
    q = torch.randn(b, d, generator=gen)
    c = torch.randn(4, d, generator=gen)[torch.randint(0, 4, (m,), generator=gen)]  # (M, D)
    key = torch.randperm(m, generator=gen) * 3  # distinct keys, not the column order
    start = torch.randint(0, m - 5, (b,), generator=gen)
    count = torch.randint(1, 5, (b,), generator=gen)
    real = torch.rand(b, m, generator=gen) < 0.5 if with_pool else None
    whole_rows = []
    monkeypatch.setattr(
        mining, "pessimistic_topk", lambda *a: whole_rows.append(1) or pessimistic_topk(*a)
    )
    top, top_real = mining.first_stage_top(q, c, start, count, real, key, k)
    assert whole_rows  # the ties span the margin: rows ranked whole
    cols = key.argsort()
    scores = (q @ c.T)[:, cols]
    rel = (cols[None, :] >= start[:, None]) & (cols[None, :] < (start + count)[:, None])
    mask = torch.ones_like(rel) if real is None else real[:, cols]
    expected = cols[pessimistic_topk(scores.masked_fill(~mask, float("-inf")), rel, mask, k)]
    assert torch.equal(top[top_real], expected[top_real])
    assert top_real.all()
