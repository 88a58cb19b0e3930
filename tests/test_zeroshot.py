"""Full-gallery zero-shot recall: checked against a naive per-query sorting reference."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from xmr.data.store import FeatureStore, write_store
from xmr.metrics.zeroshot import full_gallery_recall, store_split_recall
from xmr.zeroshot import main as zeroshot_main

KS = (1, 2, 5, 10)


def naive_recall(img: np.ndarray, txt: np.ndarray, text_image: np.ndarray, ks=KS) -> dict:
    """Per query: stable-sort the gallery by (-score, relevant), so ties put irrelevant first."""
    img = img.astype(np.float64)
    txt = txt.astype(np.float64)
    out = {}
    for direction, queries, gallery in (("i2t", img, txt), ("t2i", txt, img)):
        hits = {k: [] for k in ks}
        for q in range(len(queries)):
            if direction == "i2t":
                relevant = [text_image[j] == q for j in range(len(gallery))]
                if not any(relevant):
                    continue  # images without captions are left out
            else:
                relevant = [j == text_image[q] for j in range(len(gallery))]
            scores = [float(queries[q] @ gallery[j]) for j in range(len(gallery))]
            order = sorted(range(len(gallery)), key=lambda j: (-scores[j], relevant[j]))
            first = next(pos for pos, j in enumerate(order) if relevant[j])
            for k in ks:
                hits[k].append(first < k)
        out[direction] = {f"recall@{k}": float(np.mean(hits[k])) for k in ks}
    return out


def _assert_same(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for d in a:
        assert a[d].keys() == b[d].keys()
        for k in a[d]:
            assert a[d][k] == pytest.approx(b[d][k], abs=1e-12), (d, k)


@pytest.mark.parametrize("chunk", [1, 7, 512])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_matches_naive_on_random_data_with_ties(seed: int, chunk: int) -> None:
    rng = np.random.default_rng(seed)
    n, m, d = 23, 61, 3
    # Small integer vectors: exact float32 dot products with many ties.
    img = rng.integers(-1, 2, size=(n, d)).astype(np.float32)
    txt = rng.integers(-1, 2, size=(m, d)).astype(np.float32)
    text_image = rng.integers(0, n, size=m)  # uneven: some images have 0 captions, some many
    got = full_gallery_recall(img, txt, text_image, ks=KS, chunk=chunk)
    _assert_same(got, naive_recall(img, txt, text_image))


def test_matches_naive_on_continuous_data() -> None:
    rng = np.random.default_rng(3)
    img = rng.standard_normal((40, 8)).astype(np.float16)
    txt = rng.standard_normal((200, 8)).astype(np.float16)
    text_image = np.repeat(np.arange(40), 5)
    _assert_same(
        full_gallery_recall(img, txt, text_image, ks=KS, chunk=16),
        naive_recall(img, txt, text_image),
    )


def test_hand_example() -> None:
    # 2 images, 3 captions (0, 1 -> image 0; 2 -> image 1), 2-d.
    img = np.array([[1.0, 0.0], [0.0, 1.0]], dtype=np.float32)
    txt = np.array([[0.0, 1.0], [0.6, 0.8], [1.0, 0.0]], dtype=np.float32)
    r = full_gallery_recall(img, txt, np.array([0, 0, 1]), ks=(1, 2))
    # image 0 scores captions (0, .6, 1): best own caption (.6) is 2nd -> miss@1, hit@2.
    # image 1 scores (1, .8, 0): own caption (0) is last of 3 -> miss@1, miss@2.
    assert r["i2t"] == {"recall@1": 0.0, "recall@2": 0.5}
    # caption 0 -> (0, 1): image 0 2nd; caption 1 -> (.6, .8): 2nd; caption 2 -> (1, 0): 2nd.
    assert r["t2i"] == {"recall@1": 0.0, "recall@2": 1.0}


def test_constant_scorer_is_pessimistic() -> None:
    img = np.zeros((10, 4), dtype=np.float32)
    txt = np.zeros((50, 4), dtype=np.float32)
    r = full_gallery_recall(img, txt, np.repeat(np.arange(10), 5), ks=(1, 9, 10, 45, 46))
    # All scores tie: the relevant items rank after every irrelevant one.
    assert r["t2i"] == {
        "recall@1": 0.0,
        "recall@9": 0.0,
        "recall@10": 1.0,
        "recall@45": 1.0,
        "recall@46": 1.0,
    }
    assert r["i2t"] == {
        "recall@1": 0.0,
        "recall@9": 0.0,
        "recall@10": 0.0,
        "recall@45": 0.0,
        "recall@46": 1.0,
    }


def test_bad_inputs() -> None:
    img = np.zeros((3, 4), np.float32)
    with pytest.raises(ValueError, match="must be"):
        full_gallery_recall(img, np.zeros((5, 3), np.float32), np.zeros(5, int))
    with pytest.raises(ValueError, match=r"text_image values must lie in \[0, 3\)"):
        full_gallery_recall(img, np.zeros((2, 4), np.float32), np.array([0, 3]))


def test_tiny_synthetic_store(tiny_store: Path) -> None:
    s = FeatureStore.open(tiny_store)
    for split in ("val", "test"):
        r = store_split_recall(s, split, ks=KS)
        img_ids, txt_ids = s.split_image_ids(split), s.split_text_ids(split)
        local = np.searchsorted(img_ids, s.text_image[txt_ids])
        _assert_same(r, naive_recall(s.image_emb[img_ids], s.text_emb[txt_ids], local))
        # 20 images: chance t2i R@1 is 5%; the synthetic captions carry their image's concepts.
        assert r["t2i"]["recall@1"] > 0.2 and r["i2t"]["recall@1"] > 0.2
        for d in r:
            vals = [r[d][f"recall@{k}"] for k in KS]
            assert vals == sorted(vals)


def test_store_split_recall_needs_joint_space(shared_data: Path) -> None:
    root = shared_data / "flickr8k-1k" / "features" / "raw"
    if not root.is_dir():
        pytest.skip(f"{root} not found")
    with pytest.raises(ValueError, match="joint_space is false"):
        store_split_recall(FeatureStore.open(root))


def test_real_zeroshot_bridge_test_split(shared_data: Path) -> None:
    root = shared_data / "flickr8k-1k" / "features" / "zeroshot-bridge"
    if not root.is_dir():
        pytest.skip(f"{root} not found")
    s = FeatureStore.open(root)
    r = store_split_recall(s, "test", ks=(1, 5, 10))
    img_ids, txt_ids = s.split_image_ids("test"), s.split_text_ids("test")
    local = np.searchsorted(img_ids, s.text_image[txt_ids])
    _assert_same(r, naive_recall(s.image_emb[img_ids], s.text_emb[txt_ids], local, ks=(1, 5, 10)))
    print(
        "zeroshot-bridge (not CLIP) test split, 100 images / 500 captions: "
        + ", ".join(f"{d} {k} {100 * v:.1f}%" for d in r for k, v in r[d].items())
    )
    # A weak but real zero-shot encoder: well above chance (1% t2i R@1, 5% i2t R@1 among 100).
    assert r["t2i"]["recall@1"] > 0.05
    assert r["t2i"]["recall@10"] > 0.3


# ------------------------------------------------------------------ xmr eval-zeroshot's lines


def _encoded_store(root: Path, encoder: dict) -> Path:
    """6 train, 3 val (one without captions), 4 test images; 2 captions per captioned image."""
    rng = np.random.default_rng(0)
    split = [0] * 6 + [1] * 3 + [2] * 4
    captioned = [i for i in range(13) if i != 8]  # val image 8 has no caption
    text_image = np.repeat(captioned, 2)
    return write_store(
        root,
        image_emb=rng.normal(size=(13, 8)),
        text_emb=rng.normal(size=(text_image.size, 8)),
        text_image=text_image,
        image_split=split,
        images=[f"img{i}.jpg" for i in range(13)],
        captions=[f"caption {t}" for t in range(text_image.size)],
        encoder=encoder,
        joint_space=True,
    )


RANDOM = {"name": "open_clip", "model": "xmr-tiny-random", "pretrained": None, "random_init": True}
PRETRAINED = {
    "name": "open_clip",
    "model": "ViT-B-32",
    "pretrained": "openai",
    "random_init": False,
}


@pytest.mark.parametrize(
    ("encoder", "random_init"),
    [
        (RANDOM, True),
        (PRETRAINED, False),
        # a manifest written before `random_init` was recorded: no tag and no checkpoint
        ({"name": "open_clip", "model": "RN50", "pretrained": None, "checkpoint": None}, True),
        ({"name": "open_clip", "model": "RN50", "pretrained": None, "checkpoint": "/w.pt"}, False),
        ({"name": "zeroshot-bridge"}, False),
    ],
)
def test_random_init_store_is_recognised(tmp_path: Path, encoder: dict, random_init: bool) -> None:
    assert FeatureStore.open(_encoded_store(tmp_path / "s", encoder)).random_init is random_init


def test_eval_zeroshot_warns_on_a_random_init_store_and_names_the_galleries(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    store = _encoded_store(tmp_path / "s", RANDOM)
    zeroshot_main([f"store={store}", "ks=1,2"])
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].endswith("encoder=open_clip xmr-tiny-random (random init)")
    assert lines[1].startswith("WARNING:") and "RANDOMLY INITIALISED" in lines[1]
    assert "meaningless" in lines[1]
    assert lines[2].startswith("  i2t: R@1=") and lines[2].endswith(
        "(4 test images over 8 test captions)"
    )
    assert lines[3].startswith("  t2i: R@1=") and lines[3].endswith(
        "(8 test captions over 4 test images)"
    )
    result = json.loads(lines[4])
    assert result["sizes"] == {
        "i2t": {"queries": 4, "gallery": 8},
        "t2i": {"queries": 8, "gallery": 4},
    }
    assert result["t2i"] == store_split_recall(FeatureStore.open(store), "test", ks=(1, 2))["t2i"]


def test_eval_zeroshot_of_pretrained_features_has_no_warning(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    store = _encoded_store(tmp_path / "s", PRETRAINED)
    zeroshot_main([f"store={store}", "split=val"])
    out = capsys.readouterr().out
    assert "WARNING" not in out and "encoder=open_clip ViT-B-32 (openai)" in out
    # An image without a caption is no i2t query, but stays in the t2i gallery.
    assert "(2 val images over 4 val captions)" in out
    assert "(4 val captions over 3 val images)" in out
