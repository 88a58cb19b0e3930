"""Tests of the synthetic store generator: determinism, sizes, labelling, calibration."""

from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path

import numpy as np
import pytest

from xmr.data.datamodule import prepare_store_and_lists
from xmr.data.store import SPLITS, STORE_FILES, FeatureStore
from xmr.data.synth import LEARNABLE, PRESETS, SynthConfig, generate, write_synthetic_store
from xmr.metrics.zeroshot import full_gallery_recall, store_split_recall

# CLIP ViT-B/32 zero-shot on Flickr30k 1K test (open_clip's published numbers, PAPER.md).
CLIP_R1 = {"i2t": 0.789, "t2i": 0.588}


def _files(root: Path) -> dict[str, bytes]:
    """The store's own files (lists mined next to it by other tests are not part of the store)."""
    return {name: (root / name).read_bytes() for name in STORE_FILES}


def test_same_seed_same_bytes(tmp_path: Path, tiny_store: Path) -> None:
    again = write_synthetic_store(tmp_path / "again", PRESETS["tiny"])
    assert _files(again) == _files(tiny_store)


def test_different_seed_differs() -> None:
    a = generate(PRESETS["tiny"])
    b = generate(dataclasses.replace(PRESETS["tiny"], seed=1))
    assert not np.array_equal(a["image_emb"], b["image_emb"])
    assert not np.array_equal(a["text_emb"], b["text_emb"])
    assert a["captions"] != b["captions"]


@pytest.mark.parametrize(
    ("preset", "sizes", "dim"),
    [
        ("paper", (29000, 1014, 1000), 512),
        ("demo", (2000, 200, 200), 512),
        ("tiny", (60, 20, 20), 32),
    ],
)
def test_preset_sizes(preset: str, sizes: tuple[int, int, int], dim: int) -> None:
    cfg = PRESETS[preset]
    assert (cfg.num_train, cfg.num_val, cfg.num_test) == sizes
    assert cfg.captions_per_image == 5 and cfg.dim == dim
    assert cfg.num_texts == 5 * sum(sizes)


def test_tiny_store_contents(tiny_store: Path) -> None:
    s = FeatureStore.open(tiny_store)
    cfg = PRESETS["tiny"]
    assert s.manifest["splits"] == {"train": 60, "val": 20, "test": 20}
    assert (s.num_images, s.num_texts, s.image_dim, s.text_dim) == (100, 500, 32, 32)
    assert s.joint_space and s.image_emb.dtype == np.float16
    np.testing.assert_array_equal(s.text_image, np.repeat(np.arange(100), 5))
    # The split assignment is shuffled, not contiguous blocks.
    assert not np.array_equal(s.image_split, np.sort(s.image_split))
    enc = s.manifest["encoder"]
    assert enc["name"] == "synthetic" and enc["synthetic"] is True
    assert enc["generator"] == "xmr.data.synth"
    assert enc["config"] == json.loads(json.dumps(dataclasses.asdict(cfg)))
    assert all(i.startswith("synthetic_") for i in s.images())
    assert all(c.startswith("synthetic caption:") for c in s.captions())


def test_captions_name_the_concepts_of_their_image() -> None:
    data = generate(PRESETS["tiny"])
    topics = data["image_topic"]
    for t, caption in enumerate(data["captions"]):
        image = data["text_image"][t]
        assert f"topic-{topics[image]} " in caption + " "


def test_modality_gap() -> None:
    """Like CLIP, images and captions sit in two separate cones: a single direction (difference
    of the modality means) separates every image from every caption, and matched image-caption
    pairs are less similar than an image is to the average image."""
    data = generate(dataclasses.replace(PRESETS["demo"], num_train=1, num_val=0))
    img, txt, ti = data["image_emb"], data["text_emb"], data["text_image"]
    gap = img.mean(0) - txt.mean(0)  # (D,)
    gap /= np.linalg.norm(gap)
    assert (img @ gap).min() > (txt @ gap).max()
    matched = float((img[ti] * txt).sum(1).mean())
    img_img = float((img @ img.T).mean())
    img_txt = float((img @ txt.T).mean())
    assert 0.0 < img_txt < matched < img_img


def test_config_validation() -> None:
    with pytest.raises(ValueError, match="num_test must be >= 1"):
        SynthConfig(num_test=0)
    with pytest.raises(ValueError, match="min_concepts <= max_concepts"):
        SynthConfig(min_concepts=5, max_concepts=3)
    with pytest.raises(ValueError, match="caption_keep"):
        SynthConfig(caption_keep=1.5)


def _test_split_recall(cfg: SynthConfig) -> dict:
    data = generate(cfg)
    test = np.flatnonzero(data["image_split"] == SPLITS["test"])
    texts = np.flatnonzero(data["image_split"][data["text_image"]] == SPLITS["test"])
    return full_gallery_recall(
        data["image_emb"][test].astype(np.float16),
        data["text_emb"][texts].astype(np.float16),
        np.searchsorted(test, data["text_image"][texts]),
    )


@pytest.mark.parametrize("seed", [0, 1])
def test_calibration_on_a_1k_test_split(seed: int) -> None:
    """The paper preset's per-image distribution on a 1,000-image test split (the train split is
    left out: images are i.i.d., so this is the paper preset's test-split recall at another
    seed) lands within 5 points of CLIP ViT-B/32's Flickr30k 1K R@1."""
    cfg = dataclasses.replace(PRESETS["paper"], num_train=1, num_val=0, seed=seed)
    r = _test_split_recall(cfg)
    for d, target in CLIP_R1.items():
        assert abs(r[d]["recall@1"] - target) <= 0.05, (d, r[d])
    # Errors are near misses, as with CLIP: R@10 far above R@1.
    assert r["i2t"]["recall@10"] > 0.93 and r["t2i"]["recall@10"] > 0.85


@pytest.mark.slow
def test_paper_preset_generation_and_calibration(tmp_path: Path) -> None:
    t0 = time.perf_counter()
    root = write_synthetic_store(tmp_path / "paper", PRESETS["paper"])
    t_write = time.perf_counter() - t0
    t0 = time.perf_counter()
    s = FeatureStore.open(root)
    t_open = time.perf_counter() - t0
    r = store_split_recall(s, "test")
    print(
        f"paper preset: generate+write {t_write:.1f} s, open {t_open:.2f} s; "
        + ", ".join(f"{d} {k} {100 * v:.1f}" for d in r for k, v in r[d].items())
    )
    assert (s.num_images, s.num_texts) == (31014, 155070)
    assert s.split_image_ids("test").size == 1000 and s.split_text_ids("test").size == 5000
    assert t_write < 60 and t_open < 2
    for d, target in CLIP_R1.items():
        assert abs(r[d]["recall@1"] - target) <= 0.05, (d, r[d])


def test_learnable_structure_is_off_by_default_and_seeded() -> None:
    """Both knobs at 0 leave the generator's output as it was (the structure has RNG streams of
    its own); with them on, the same seed gives the same store."""

    plain = SynthConfig(num_train=40, num_val=10, num_test=10, dim=96, num_topics=6)
    structured = dataclasses.replace(plain, **LEARNABLE)
    a, b = generate(structured), generate(structured)
    assert np.array_equal(a["text_emb"], b["text_emb"])
    base = generate(plain)
    # The structure touches only the embeddings: ids, splits and captions are the same draws.
    assert np.array_equal(a["image_split"], base["image_split"])
    assert a["captions"] == base["captions"]
    assert not np.array_equal(a["image_emb"], base["image_emb"])


def test_caption_nuisance_lies_in_its_subspace() -> None:
    """With nuisance_fraction 0.9 the caption noise has most of its energy in the fixed
    rank-R subspace: caption rows project much more onto it than onto a random subspace."""

    cfg = SynthConfig(
        num_train=200,
        num_val=0,
        num_test=20,
        dim=128,
        num_topics=6,
        caption_noise=2.0,
        nuisance_rank=8,
        nuisance_fraction=0.9,
    )
    text = generate(cfg)["text_emb"]
    basis = np.linalg.qr(np.random.default_rng([cfg.seed, 1]).standard_normal((128, 8)))[0]
    other = np.linalg.qr(np.random.default_rng(123).standard_normal((128, 8)))[0]
    on = (np.linalg.norm(text @ basis, axis=1) ** 2).mean()
    off = (np.linalg.norm(text @ other, axis=1) ** 2).mean()
    assert on > 5 * off
    plain = generate(dataclasses.replace(cfg, nuisance_fraction=0.0))["text_emb"]
    assert (np.linalg.norm(plain @ basis, axis=1) ** 2).mean() < 2 * off


@pytest.mark.parametrize(
    ("field", "value", "rule"),
    [
        ("nuisance_fraction", 1.5, r"in \[0, 1\]"),
        ("image_distortion", 1.0, r"in \[0, 1\)"),
        ("nuisance_rank", 0, "nuisance_rank must be in"),
    ],
)
def test_learnable_knobs_are_validated(field: str, value: float, rule: str) -> None:

    kwargs = {"nuisance_fraction": 0.5, "nuisance_rank": 4, field: value}
    with pytest.raises(ValueError, match=rule):
        SynthConfig(dim=16, **kwargs)


def test_a_store_generated_with_other_settings_is_refused(tmp_path: Path) -> None:
    old = SynthConfig(num_train=30, num_val=10, num_test=10, dim=16, num_topics=4)
    write_synthetic_store(tmp_path / "s", old)
    synth = {**dataclasses.asdict(old), "caption_noise": 1.0}
    with pytest.raises(ValueError, match=r"caption_noise: 2\.2 != 1\.0"):
        prepare_store_and_lists(tmp_path / "s", tmp_path / "l", synth, {})
    # The same settings pass (and mining goes on).
    prepare_store_and_lists(
        tmp_path / "s", tmp_path / "l", dataclasses.asdict(old), {"pool": 20, "hard": 5}
    )
