"""Tests of xmr.data.mining: hard-negative mining and the validation of candidate lists.

All stores here are synthetic (random unit vectors written with ``write_store``), except the
real-data test on the shared flickr8k-1k zero-shot-bridge store (skipped when absent).
"""

from __future__ import annotations

import inspect
import json
import logging
import time
import zipfile
from pathlib import Path

import numpy as np
import pytest
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from xmr.data.datamodule import mining_tag
from xmr.data.mining import (
    MINING_DEFAULTS,
    CandidateLists,
    ListsError,
    MiningProblem,
    load_lists,
    mine_arrays,
    mine_lists,
    read_lists_meta,
    sample_pools,
)
from xmr.data.store import SPLITS, FeatureStore, write_store
from xmr.prepare import mine_main

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
REAL_STORE = SHARED / "data" / "flickr8k-1k" / "features" / "zeroshot-bridge"
FILES = [(d, s) for s in ("train", "val", "test") for d in ("t2i", "i2t")]


def make_store(
    path: Path,
    *,
    captions_per_image: np.ndarray | int = 5,
    n_split: tuple[int, int, int] = (120, 40, 40),
    dim: int = 16,
    joint_space: bool = True,
    seed: int = 0,
    dtype: str = "float32",
) -> FeatureStore:
    """A synthetic store: random Gaussian vectors (normalised by write_store).

    Images are ordered train, val, test; caption ids are shuffled so that captions of one image are
    not contiguous in the id space (the miner must not rely on that).
    """
    rng = np.random.default_rng(seed)
    n_img = sum(n_split)
    cpi = np.broadcast_to(np.asarray(captions_per_image), (n_img,))
    text_image = rng.permutation(np.repeat(np.arange(n_img), cpi))
    split = np.repeat(np.arange(3), n_split).astype(np.uint8)
    write_store(
        path,
        image_emb=rng.standard_normal((n_img, dim)),
        text_emb=rng.standard_normal((text_image.size, dim)),
        text_image=text_image,
        image_split=split,
        images=[f"synthetic_img{i}" for i in range(n_img)],
        captions=[f"synthetic caption {i}" for i in range(text_image.size)],
        encoder={"name": "synthetic-random"},
        joint_space=joint_space,
        dtype=dtype,
    )
    return FeatureStore.open(path)


def unit(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> FeatureStore:
    return make_store(tmp_path_factory.mktemp("store") / "s")


@pytest.fixture(scope="module")
def mined(store: FeatureStore, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return mine_lists(store, tmp_path_factory.mktemp("lists") / "l", pool=60, hard=10, seed=3)


# ---------------------------------------------------------------------------------- structure


@pytest.mark.parametrize(("direction", "split"), FILES)
def test_lists_shape_positives_and_split(
    store: FeatureStore, mined: Path, direction: str, split: str
) -> None:
    lists = load_lists(mined, direction, split, store)
    ti, sp = store.text_image, store.image_split
    code = SPLITS[split]
    n_img = int((sp == code).sum())
    assert lists.num_lists == n_img  # one query per image in both directions (defaults)
    assert lists.list_length == 10 + 1  # hard + one positive
    assert lists.mask.all()  # 5 captions per image, pools large enough: no padding
    assert lists.labels.sum(axis=1).tolist() == [1] * n_img
    q, c, y = lists.queries, lists.candidates, lists.labels.astype(bool)
    if direction == "t2i":
        assert (sp[ti[q]] == code).all() and (sp[c] == code).all()
        assert (c[y] == ti[q]).all()  # the positive is the caption's image
        assert (c[~y] != ti[q][:, None].repeat(c.shape[1], 1)[~y]).all()
        assert np.unique(ti[q]).size == q.size  # one caption per image
    else:
        assert (sp[q] == code).all() and (sp[ti[c]] == code).all()
        assert (ti[c[y]] == q).all()  # the positive describes the query image
        assert (ti[c][~y] != np.repeat(q, c.shape[1]).reshape(c.shape)[~y]).all()  # no sibling
    for row in c:
        assert np.unique(row).size == row.size


def test_stats_recorded(mined: Path) -> None:
    meta = read_lists_meta(mined)
    assert meta["format"] == "xmr-lists/1" and meta["seed"] == 3
    assert meta["params"]["pool"] == 60 and meta["params"]["hard"] == 10
    s = meta["stats"]["i2t_train"]
    assert s["num_lists"] == 120 and s["list_length"] == 11
    assert s["positives_per_list"] == {"min": 1, "mean": 1.0, "max": 1}
    assert s["lists_with_extra_positives"] == 0 and s["lists_with_multiple_positives"] == 0
    assert s["short_pools"] == 0  # 600 - 5 captions available > 60
    # val has 40 images: 39 negative images per t2i query < pool 60 -> every pool is short.
    assert meta["stats"]["t2i_val"]["short_pools"] == 40
    assert meta["stats"]["t2i_val"]["negatives_available"]["max"] == 39


def test_positive_slot_roughly_uniform(tmp_path: Path) -> None:
    st = make_store(tmp_path / "s", captions_per_image=1, n_split=(3000, 10, 10), dim=8)
    out = mine_lists(st, tmp_path / "l", pool=40, hard=9, splits=("train",))
    lab = load_lists(out, "t2i", "train").labels
    slots = np.argmax(lab, axis=1)
    counts = np.bincount(slots, minlength=10)
    expected = lab.shape[0] / 10
    chi2 = float(((counts - expected) ** 2 / expected).sum())
    assert chi2 < 27.9, counts  # chi-square, 9 dof, p = 0.001


# ---------------------------------------------------------------------------------- hardness


def test_mine_arrays_matches_naive_reference() -> None:
    """Hard negatives = top cosine among the same sampled pool (naive per-query reference)."""
    rng = np.random.default_rng(7)
    m, q, d, pool, hard = 900, 600, 12, 50, 15  # > RNG_BLOCK queries: several blocks
    cand_emb = unit(rng.standard_normal((m, d))).astype(np.float32)
    query_emb = unit(rng.standard_normal((q, d))).astype(np.float32)
    excl_count = rng.integers(1, 6, q)
    excl_start = rng.integers(0, m - 6, q)
    cand_ids = rng.permutation(10_000)[:m]
    problem = MiningProblem(
        query_ids=np.arange(q),
        cand_ids=cand_ids,
        excl_start=excl_start,
        excl_count=excl_count,
        positives=excl_start[:, None],
        query_emb=query_emb,
        cand_emb=cand_emb,
    )
    out = mine_arrays(problem, pool=pool, hard=hard, strategy="hard", seed_key=(11, 4))
    assert out.candidates.shape == (q, hard + 1)
    # Re-derive the pools by the documented protocol: generator [*seed_key, block], pools first.
    n_avail = m - excl_count
    for blk, start in enumerate(range(0, q, 256)):
        stop = min(start + 256, q)
        pools = sample_pools(np.random.default_rng([11, 4, blk]), n_avail[start:stop], pool)
        for i in range(start, stop):
            local = pools[i - start]
            local = np.where(local >= excl_start[i], local + excl_count[i], local)
            assert not ((local >= excl_start[i]) & (local < excl_start[i] + excl_count[i])).any()
            cos = np.array([float(np.dot(cand_emb[j], query_emb[i])) for j in local])
            keep = np.argsort(-cos, kind="stable")[:hard]
            expect = set(cand_ids[local[keep]].tolist())
            row, lab = out.candidates[i], out.labels[i].astype(bool)
            assert set(row[~lab].tolist()) == expect
            assert row[lab].tolist() == [cand_ids[excl_start[i]]]
            dropped = np.delete(cos, keep)
            assert cos[keep].min() >= dropped.max() - 1e-6


def test_full_pool_gives_global_top_negatives(tmp_path: Path) -> None:
    """With pool >= available negatives, the hard negatives are the split's most similar ones."""
    st = make_store(tmp_path / "s", captions_per_image=3, n_split=(30, 20, 20), dim=8)
    out = mine_lists(st, tmp_path / "l", pool=500, hard=7)
    img, txt, ti, sp = unit(st.image_emb), unit(st.text_emb), st.text_image, st.image_split
    meta = read_lists_meta(out)
    for split, code in SPLITS.items():
        t2i = load_lists(out, "t2i", split, st)
        assert meta["stats"][f"t2i_{split}"]["short_pools"] == t2i.num_lists
        for qid, row, lab in zip(t2i.queries, t2i.candidates, t2i.labels, strict=True):
            negs = np.flatnonzero((sp == code) & (np.arange(sp.size) != ti[qid]))
            cos = img[negs] @ txt[qid]
            kept = row[lab == 0]
            assert cos[np.isin(negs, kept)].min() >= cos[~np.isin(negs, kept)].max() - 1e-6
        i2t = load_lists(out, "i2t", split, st)
        for qid, row, lab in zip(i2t.queries, i2t.candidates, i2t.labels, strict=True):
            negs = np.flatnonzero((sp[ti] == code) & (ti != qid))
            cos = txt[negs] @ img[qid]
            kept = row[lab == 0]
            assert kept.size == 7
            assert cos[np.isin(negs, kept)].min() >= cos[~np.isin(negs, kept)].max() - 1e-6


def test_sample_pools_distinct_uniform_and_short() -> None:
    rng = np.random.default_rng(0)
    for n in (1000, 150):  # rejection regime, then the random-key regime
        pools = sample_pools(rng, np.full(4000, n), 30)
        assert pools.shape == (4000, 30) and pools.min() >= 0 and pools.max() < n
        assert all(np.unique(r).size == 30 for r in pools)
        for cols in (slice(None), slice(0, 5)):  # the first k entries: a uniform subset too
            counts = np.bincount(pools[:, cols].ravel(), minlength=n)
            expected = counts.sum() / n
            chi2 = float(((counts - expected) ** 2 / expected).sum())
            assert chi2 < (n - 1) + 5 * np.sqrt(2 * (n - 1)), (n, cols, chi2)  # ~5 sd above df
    short = sample_pools(rng, np.array([3, 40, 0]), 10)
    assert sorted(short[0, :3]) == [0, 1, 2] and (short[0, 3:] == -1).all()
    assert np.unique(short[1]).size == 10 and (short[2] == -1).all()


# ---------------------------------------------------------------------------------- options


def test_captions_all_and_positives_all(tmp_path: Path) -> None:
    cpi = np.tile([1, 2, 3, 5, 7], 20)  # variable caption counts: padding needed in i2t
    st = make_store(tmp_path / "s", captions_per_image=cpi, n_split=(60, 20, 20))
    out = mine_lists(
        st, tmp_path / "l", pool=30, hard=6, t2i_captions_per_image="all", i2t_positives="all"
    )
    ti, sp = st.text_image, st.image_split
    for split, code in SPLITS.items():
        t2i = load_lists(out, "t2i", split, st)
        assert sorted(t2i.queries.tolist()) == np.flatnonzero(sp[ti] == code).tolist()
        assert t2i.list_length == 7 and t2i.labels.sum(axis=1).max() == 1
        i2t = load_lists(out, "i2t", split, st)
        assert i2t.list_length == 6 + 7
        n_caps = np.bincount(ti, minlength=sp.size)[i2t.queries]
        assert i2t.labels.sum(axis=1).tolist() == n_caps.tolist()  # every caption is a positive
        assert (i2t.mask.sum(axis=1) == 6 + n_caps).all()
        pad = ~i2t.mask
        assert (i2t.candidates[pad] == -1).all() and (i2t.labels[pad] == 0).all()
        assert all(not m[np.argmin(m) :].any() for m in i2t.mask if not m.all())  # pad at end
        s = read_lists_meta(out)["stats"][f"i2t_{split}"]
        assert s["lists_with_multiple_positives"] == int((n_caps > 1).sum())
        assert s["padded_lists"] == int((n_caps < 7).sum())


def test_seeded_random_caption_choice(tmp_path: Path) -> None:
    st = make_store(tmp_path / "s", n_split=(300, 10, 10), dim=8)
    ti = st.text_image
    first = {int(i): int(np.flatnonzero(ti == i)[0]) for i in range(300)}
    a = mine_lists(st, tmp_path / "a", pool=20, hard=5, seed=0, splits=("train",))
    b = mine_lists(st, tmp_path / "b", pool=20, hard=5, seed=1, splits=("train",))
    qa, qb = load_lists(a, "t2i", "train").queries, load_lists(b, "t2i", "train").queries
    is_first = np.array([first[int(ti[c])] == c for c in qa])
    assert 0.1 < is_first.mean() < 0.35  # a random one of 5, not always the first
    assert (qa != qb).mean() > 0.6  # another seed picks other captions
    pa = load_lists(a, "i2t", "train")
    pos = pa.candidates[pa.labels.astype(bool)]
    assert 0.1 < np.mean([first[int(ti[c])] == c for c in pos]) < 0.35


def test_determinism_bytes(store: FeatureStore, tmp_path: Path) -> None:
    kw = {"pool": 50, "hard": 8, "seed": 5}
    a, b = mine_lists(store, tmp_path / "a", **kw), mine_lists(store, tmp_path / "b", **kw)
    c = mine_lists(store, tmp_path / "c", **{**kw, "seed": 6})
    names = sorted(p.name for p in a.iterdir())
    assert names == sorted([f"{d}_{s}.npz" for d, s in FILES] + ["lists.json"])
    for n in names:
        assert (a / n).read_bytes() == (b / n).read_bytes(), n
    assert (a / "t2i_train.npz").read_bytes() != (c / "t2i_train.npz").read_bytes()


def test_random_strategy_and_non_joint_store(tmp_path: Path) -> None:
    st = make_store(tmp_path / "s", joint_space=False, n_split=(50, 10, 10))
    with pytest.raises(ListsError, match="joint_space"):
        mine_lists(st, tmp_path / "l")
    out = mine_lists(st, tmp_path / "l", pool=40, hard=12, strategy="random")
    lists = load_lists(out, "i2t", "train", st)
    assert lists.list_length == 13 and read_lists_meta(out)["params"]["strategy"] == "random"


def test_hard_is_harder_than_random(store: FeatureStore, mined: Path, tmp_path: Path) -> None:
    rnd = mine_lists(store, tmp_path / "r", pool=60, hard=10, seed=3, strategy="random")
    img, txt = unit(store.image_emb), unit(store.text_emb)

    def mean_neg_cos(d: Path) -> float:
        lists = load_lists(d, "t2i", "train")
        neg = lists.labels == 0
        cos = np.einsum("qld,qd->ql", img[lists.candidates], txt[lists.queries])
        return float(cos[neg].mean())

    assert mean_neg_cos(mined) > mean_neg_cos(rnd) + 0.1


def test_bad_parameters(store: FeatureStore, tmp_path: Path) -> None:
    bad = [
        {"hard": 60, "pool": 50},
        {"hard": 0},
        {"strategy": "semi"},
        {"t2i_captions_per_image": 0},
        {"i2t_positives": "some"},
        {"splits": ("train", "dev")},
        {"seed": -1},
    ]
    for kw in bad:
        with pytest.raises(ListsError):
            mine_lists(store, tmp_path / "l", **kw)
    assert not (tmp_path / "l").exists()


def test_overwrite_rules(store: FeatureStore, tmp_path: Path) -> None:
    out = mine_lists(store, tmp_path / "l", pool=20, hard=4, splits=("test",))
    with pytest.raises(FileExistsError):
        mine_lists(store, out, pool=20, hard=4)
    mine_lists(store, out, pool=20, hard=5, overwrite=True)
    assert read_lists_meta(out)["params"]["hard"] == 5
    assert sorted(p.name for p in tmp_path.iterdir()) == ["l"]  # no temp leftovers
    other = tmp_path / "not_lists"
    other.mkdir()
    (other / "precious.txt").write_text("x")
    with pytest.raises(FileExistsError, match="not a lists directory"):
        mine_lists(store, other, overwrite=True)
    assert (other / "precious.txt").exists()


def test_empty_split(tmp_path: Path) -> None:
    st = make_store(tmp_path / "s", n_split=(30, 0, 10))
    out = mine_lists(st, tmp_path / "l", pool=20, hard=4)
    assert load_lists(out, "t2i", "val", st).num_lists == 0
    assert load_lists(out, "i2t", "test", st).num_lists == 10


def test_images_without_captions(tmp_path: Path) -> None:
    cpi = np.tile([2, 0, 1, 3], 15)
    cpi[50:] = np.maximum(cpi[50:], 1)  # a store's every test image has a caption
    st = make_store(tmp_path / "s", captions_per_image=cpi, n_split=(40, 10, 10))
    out = mine_lists(st, tmp_path / "l", pool=20, hard=4)
    i2t = load_lists(out, "i2t", "train", st)
    assert (
        i2t.num_lists == 30
        and read_lists_meta(out)["stats"]["i2t_train"]["queries_skipped_no_caption"] == 10
    )
    t2i = load_lists(out, "t2i", "train", st)
    captionless = np.flatnonzero(cpi[:40] == 0)
    assert np.isin(t2i.candidates, captionless).any()  # still valid t2i negatives


def test_hygiene_check_built_into_mining(
    store: FeatureStore, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A miner that let siblings into the pool is stopped before anything is written."""
    import dataclasses

    import xmr.data.mining as lists_mod

    real_build = lists_mod.build_problem

    def leaky_build(*args, **kwargs):  # type: ignore[no-untyped-def]
        problem, skipped = real_build(*args, **kwargs)
        return dataclasses.replace(problem, excl_count=np.zeros_like(problem.excl_count)), skipped

    monkeypatch.setattr(lists_mod, "build_problem", leaky_build)
    with pytest.raises(ListsError, match="just mined"):
        mine_lists(store, tmp_path / "l", pool=10_000, hard=50)
    assert list(tmp_path.iterdir()) == []  # atomic: no directory, no temp leftovers


# ---------------------------------------------------------------------------------- validation


def _rewrite(path: Path, **arrays: np.ndarray) -> None:
    with np.load(path) as z:
        data = {k: z[k] for k in z.files}
    data.update(arrays)
    np.savez(path, **data)


def _tampers(store: FeatureStore) -> dict:
    ti = store.text_image

    def sibling_negative(d: Path) -> None:  # a sibling caption labelled 0
        lists = load_lists(d, "i2t", "train")
        c, y = lists.candidates.copy(), lists.labels.copy()
        q = int(lists.queries[0])
        pos = int(c[0][y[0] == 1][0])
        sib = int(np.flatnonzero((ti == q) & (np.arange(ti.size) != pos))[0])
        c[0, np.flatnonzero(y[0] == 0)[0]] = sib
        _rewrite(d / "i2t_train.npz", candidates=c)

    def field(name: str, f):  # type: ignore[no-untyped-def]
        def go(d: Path) -> None:
            with np.load(d / "i2t_train.npz") as z:
                arr = z[name].copy()
            _rewrite(d / "i2t_train.npz", **{name: f(arr)})

        return go

    def neg_idx(d: Path) -> tuple[int, int]:
        lists = load_lists(d, "i2t", "train")
        return 0, int(np.flatnonzero(lists.labels[0] == 0)[0])

    def pad_label(d: Path) -> None:
        r, c = neg_idx(d)
        with np.load(d / "i2t_train.npz") as z:
            cand, lab = z["candidates"].copy(), z["labels"].copy()
        cand[r, c], lab[r, c] = -1, 1
        _rewrite(d / "i2t_train.npz", candidates=cand, labels=lab)

    def other_split(d: Path) -> None:
        r, c = neg_idx(d)
        test_caption = int(np.flatnonzero(store.image_split[ti] == 2)[0])
        field("candidates", lambda a: (a.__setitem__((r, c), test_caption), a)[1])(d)

    def no_positive(d: Path) -> None:
        with np.load(d / "i2t_train.npz") as z:
            lab = z["labels"].copy()
        lab[0] = 0
        _rewrite(d / "i2t_train.npz", labels=lab)

    def zip_missing_array(d: Path) -> None:
        with np.load(d / "i2t_train.npz") as z:
            q, c = z["queries"], z["candidates"]
        np.savez(d / "i2t_train.npz", queries=q, candidates=c)

    return {
        "missing file": (lambda d: (d / "i2t_train.npz").unlink(), "missing"),
        "missing lists.json": (lambda d: (d / "lists.json").unlink(), "lists.json: missing"),
        "format tag": (
            lambda d: (d / "lists.json").write_text(json.dumps({"format": "other"})),
            "format",
        ),
        "missing array": (zip_missing_array, "missing arrays"),
        "shape": (field("labels", lambda a: a[:, :-1]), "shape"),
        "label values": (field("labels", lambda a: a * 2), r"\{0, 1\}"),
        "id range": (field("candidates", lambda a: a + store.num_texts), "out of range"),
        "below -1": (field("candidates", lambda a: a - 10**9), ">= 0, or -1"),
        "padding label": (pad_label, "padding"),
        "duplicate": (
            field("candidates", lambda a: (a.__setitem__((0, 1), a[0, 0]), a)[1]),
            "duplicate candidate",
        ),
        "no positive": (no_positive, "at least one positive"),
        "irrelevant labelled 1": (
            field("labels", lambda a: (a.__setitem__((0, np.argmin(a[0])), 1), a)[1]),
            "disagrees with text_image relevance",
        ),
        "sibling labelled 0": (sibling_negative, "disagrees with text_image relevance"),
        "other split": (other_split, "not from split 'train'"),
        "not a zip": (lambda d: (d / "i2t_train.npz").write_bytes(b"junk"), "unreadable"),
    }


def test_load_lists_validation_errors(store: FeatureStore, mined: Path, tmp_path: Path) -> None:
    import shutil

    for name, (tamper, pattern) in _tampers(store).items():
        d = tmp_path / name.replace(" ", "_").replace(".", "_")
        shutil.copytree(mined, d)
        load_lists(d, "i2t", "train", store)  # intact copy loads
        tamper(d)
        with pytest.raises(ListsError, match=pattern) as err:
            load_lists(d, "i2t", "train", store)
        assert "i2t_train.npz" in str(err.value) or "lists.json" in str(err.value), name
    with pytest.raises(ListsError, match="direction"):
        load_lists(mined, "x2y", "train")


def test_load_lists_fingerprint_mismatch(mined: Path, tmp_path: Path) -> None:
    other = make_store(tmp_path / "other", seed=99)
    with pytest.raises(ListsError, match="store_fingerprint"):
        load_lists(mined, "t2i", "train", other)


def test_candidate_lists_dataclass(mined: Path) -> None:
    lists = load_lists(mined, "t2i", "test")
    assert isinstance(lists, CandidateLists)
    assert (lists.direction, lists.split) == ("t2i", "test")
    assert lists.queries.dtype == np.int64 and lists.candidates.dtype == np.int64
    assert lists.labels.dtype == np.uint8
    with zipfile.ZipFile(mined / "t2i_test.npz") as zf:  # plain np.savez layout
        assert sorted(zf.namelist()) == ["candidates.npy", "labels.npy", "queries.npy"]


# ---------------------------------------------------------------------------------- scale, real


def test_timing_mid_size(tmp_path: Path) -> None:
    """Timing print (not an assertion) on a synthetic 8,000-image x 5-caption, 128-d store."""
    st = make_store(tmp_path / "s", n_split=(8000, 500, 500), dim=128, dtype="float16")
    t0 = time.perf_counter()
    out = mine_lists(st, tmp_path / "l", splits=("train",))
    dt = time.perf_counter() - t0
    print(f"\nmining synthetic 8000 img x 5 cap, 128-d, train t2i+i2t: {dt:.2f}s")
    assert read_lists_meta(out)["stats"]["i2t_train"]["num_lists"] == 8000


def test_mining_defaults_are_defined_once_and_agree() -> None:
    """conf/data/mining/default.yaml (the configs' defaults) equals MINING_DEFAULTS, which are
    mine_lists's defaults and the lists directory name's."""
    conf = OmegaConf.to_container(OmegaConf.load(REPO / "conf/data/mining/default.yaml"))
    assert conf == MINING_DEFAULTS
    params = inspect.signature(mine_lists).parameters
    assert {k: params[k].default for k in MINING_DEFAULTS} == MINING_DEFAULTS
    assert mining_tag({}) == "hard-p200-h50-t2i1-i2t1-s0"


def test_tiny_store_fixture_defaults(tiny_store: Path, tmp_path: Path) -> None:
    """Paper defaults (pool 200, hard 50) on the shared tiny synthetic store (60/20/20 images)."""
    st = FeatureStore.open(tiny_store)
    out = mine_lists(st, tmp_path / "l")
    for direction, split in FILES:
        lists = load_lists(out, direction, split, st)
        n_img = st.split_image_ids(split).size
        assert lists.num_lists == n_img
        # t2i: at most n_img - 1 negative images exist; i2t: 5 * (n_img - 1) negative captions.
        negatives = min(50, n_img - 1) if direction == "t2i" else min(50, 5 * (n_img - 1))
        assert lists.list_length == negatives + 1
        assert lists.mask.all() and (lists.labels.sum(axis=1) == 1).all()


def test_real_flickr8k_zeroshot_bridge(tmp_path: Path) -> None:
    if not (REAL_STORE / "manifest.json").is_file():
        pytest.skip(f"real store absent: {REAL_STORE}")
    st = FeatureStore.open(REAL_STORE)
    out = mine_lists(st, tmp_path / "lists", seed=0)
    meta = read_lists_meta(out)
    assert meta["store"] == str(REAL_STORE.resolve())
    expected = {"train": 800, "val": 100, "test": 100}
    for direction, split in FILES:
        lists = load_lists(out, direction, split, st)
        assert lists.num_lists == expected[split]
        s = meta["stats"][f"{direction}_{split}"]
        assert s["lists_with_extra_positives"] == 0
        if split == "train":
            assert lists.list_length == 51 and s["short_pools"] == 0
        elif direction == "t2i":
            assert lists.list_length == 51 and s["short_pools"] == 100  # only 99 other images
        else:
            assert lists.list_length == 51 and s["short_pools"] == 0  # 495 captions available
    # Hard negatives are closer to the query than random ones on real features.
    rnd = mine_lists(st, tmp_path / "random", strategy="random", splits=("train",))
    img, txt = unit(st.image_emb), unit(st.text_emb)
    means = []
    for d in (out, rnd):
        lists = load_lists(d, "i2t", "train", st)
        cos = np.einsum("qld,qd->ql", txt[lists.candidates], img[lists.queries])
        means.append(float(cos[lists.labels == 0].mean()))
    assert means[0] > means[1]


def test_xmr_mine_overwrite_mines_existing_lists_again(tiny_store: Path, tmp_path: Path) -> None:
    """``xmr mine`` keeps existing lists; with ``overwrite=true`` it mines them again (the same
    bytes: the same inputs) and replaces them atomically."""
    lists = tmp_path / "lists"
    overrides = ["data=synthetic_tiny", f"data.store={tiny_store}", f"data.lists_dir={lists}"]
    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        cfg = compose("prepare", overrides=overrides)
    mine_main(cfg)
    inode, data = (lists / "t2i_train.npz").stat().st_ino, (lists / "t2i_train.npz").read_bytes()
    mine_main(cfg)
    assert (lists / "t2i_train.npz").stat().st_ino == inode  # kept
    cfg.overwrite = True
    mine_main(cfg)
    assert (lists / "t2i_train.npz").stat().st_ino != inode  # mined again
    assert (lists / "t2i_train.npz").read_bytes() == data
    assert sorted(p.name for p in tmp_path.iterdir()) == ["lists"]


def test_xmr_mine_prints_a_short_summary_and_warns_on_short_pools(
    tiny_store: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    caplog: pytest.LogCaptureFixture,
) -> None:
    """``xmr mine`` prints where the lists are, one line per file and the probe (the statistics
    stay in lists.json; ``verbose=true`` prints them too) and warns, naming the file and the
    count, about pools larger than the split (tiny store: 19 negative images per t2i val/test
    query, pool 30)."""
    lists = tmp_path / "lists"
    overrides = ["data=synthetic_tiny", f"data.store={tiny_store}", f"data.lists_dir={lists}"]
    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        cfg = compose("prepare", overrides=overrides)
    with caplog.at_level(logging.WARNING, logger="xmr.data.mining"):
        mine_main(cfg)
    out = capsys.readouterr().out.splitlines()
    assert len(out) <= 12, out
    assert out[1].startswith(f"lists: {lists} (hard: pool 30, hard 10, seed 0; ")
    assert "lists.json" in out[1]
    files = {ln.split()[0]: ln for ln in out if ln.startswith("  ")}
    assert sorted(files) == sorted(f"{d}_{s}" for d, s in FILES)
    assert files["t2i_train"].split(None, 1)[1] == "60 lists x 11"
    assert files["t2i_val"].endswith("20 lists x 11, 20 short pools")
    assert sum(ln.startswith("probe:") for ln in out) == 1
    short = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert [m.split(":")[0] for m in short] == ["t2i_val.npz", "t2i_test.npz"]
    assert short[0].startswith("t2i_val.npz: 20 of 20 pools short: pool=30 but the split has ")

    # Existing lists: the same summary and warnings; verbose=true adds every statistic.
    caplog.clear()
    cfg.verbose = True
    with caplog.at_level(logging.WARNING, logger="xmr.data.mining"):
        mine_main(cfg)
    text = capsys.readouterr().out
    assert len(text.splitlines()) > 100 and '"negatives_available"' in text
    assert len([r for r in caplog.records if "pools short" in r.getMessage()]) == 2
