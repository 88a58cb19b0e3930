"""``xmr extract`` end to end on real photos with a tiny randomly initialised open_clip model.

No weights are downloaded: the model is the shipped ``conf/encoder/tiny_random.yaml``
architecture, a custom 2-layer ViT / 2-layer text transformer (``pretrained=null``), so the
features are random projections of real photos and captions; the tests check the machinery
(shapes, norms, determinism, resume, provenance, errors), not quality. The offline trial run of
docs/real_data.md (``xmr extract encoder=tiny_random ...``) is run as documented.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from hydra import compose, initialize_config_dir
from PIL import Image

from xmr.data.adapters import DatasetError
from xmr.data.store import FeatureStore
from xmr.extract import ExtractError, load_open_clip, run_extraction, work_dir_for
from xmr.zeroshot import main as zeroshot_main

REPO = Path(__file__).resolve().parents[1]
FLICKR8K = REPO.parent / "shared" / "data" / "flickr8k-1k"
SHARED_STORE = FLICKR8K / "features" / "zeroshot-bridge"

#: The shipped tiny open_clip model (``xmr extract encoder=tiny_random``).
TINY_RANDOM = yaml.safe_load((REPO / "conf" / "encoder" / "tiny_random.yaml").read_text())
#: Its architecture: 64-d joint space, 64x64 images in 16x16 patches, captions cut to 16 tokens
#: (the text tower dominates the CPU time).
TINY = TINY_RANDOM["config"]
TINY_NAME = "xmr-tiny-test"


def _cfg(out: Path, *overrides: str, flickr8k: bool = True, tiny: bool = True):
    """The real conf/extract.yaml composed with the tiny model and ``overrides``."""
    base = [
        f"out={out}",
        f"model.name={TINY_NAME}",
        "model.pretrained=null",
        "batch_size=32",
        "chunk_size=64",
        "num_workers=0",
        "progress=false",
    ]
    if flickr8k:
        base += [
            "data_adapter=folder",
            f"annotations={FLICKR8K / 'captions.tsv'}",
            f"image_root={FLICKR8K / 'images'}",
            f"folder.split_from={SHARED_STORE}",
        ]
    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        cfg = compose("extract", overrides=[*base, *overrides])
    if tiny:
        cfg.model.config = TINY
    return cfg


class _Interrupt(RuntimeError):
    pass


@pytest.fixture(scope="module")
def shared() -> Path:
    if not (FLICKR8K / "captions.tsv").is_file() or not SHARED_STORE.is_dir():
        pytest.skip(f"shared real data absent ({FLICKR8K})")
    return FLICKR8K


@pytest.fixture(scope="module")
def full_run(shared: Path, tmp_path_factory: pytest.TempPathFactory) -> FeatureStore:
    """One uninterrupted extraction of 200 real photos (1,000 captions) with 2 loader workers."""
    out = tmp_path_factory.mktemp("full") / "store"
    path = run_extraction(_cfg(out, "max_images=200", "num_workers=2"))
    return FeatureStore.open(path)


@pytest.mark.slow  # full_run: an extraction of 200 real photos
def test_store_shapes_norms_and_provenance(full_run: FeatureStore) -> None:
    fs = full_run
    assert (fs.num_images, fs.num_texts) == (200, 1000)
    assert fs.image_emb.shape == (200, 64) and fs.text_emb.shape == (1000, 64)
    assert fs.image_emb.dtype == np.float16 and fs.joint_space
    for emb in (fs.image_emb, fs.text_emb):
        norms = np.linalg.norm(np.asarray(emb, dtype=np.float32), axis=1)
        assert np.abs(norms - 1).max() < 2e-3  # unit rows, up to float16 rounding
    assert not work_dir_for(fs.root).exists()  # work dir removed after publishing

    enc = fs.manifest["encoder"]
    assert enc["random_init"] is True and "RANDOM" in enc["note"]
    assert enc["model"] == TINY_NAME and enc["model_config"] == TINY
    assert enc["dataset_adapter"] == "folder" and enc["pretrained"] is None
    assert enc["open_clip_version"] and enc["date"] and enc["preprocess"]["size"] == [64, 64]
    assert enc["sources"]["annotations"] == str((FLICKR8K / "captions.tsv").resolve())


@pytest.mark.slow  # full_run: an extraction of 200 real photos
def test_store_rows_follow_the_captions_table(full_run: FeatureStore) -> None:
    """Image ids, captions, caption->image index and splits agree with the raw TSV + shared store."""
    fs = full_run
    rows = [line.split("\t") for line in (FLICKR8K / "captions.tsv").read_text().splitlines()[1:]]
    by_image: dict[str, list[str]] = {}
    for img, cap in rows:
        by_image.setdefault(img, []).append(" ".join(cap.split()))
    ref = FeatureStore.open(SHARED_STORE, check_norms=False)
    ref_split = dict(zip(ref.images(), ref.image_split.tolist(), strict=True))
    images, captions = fs.images(), fs.captions()
    assert len(set(images)) == 200 and set(images) <= set(by_image)
    for i, img in enumerate(images):
        assert [captions[t] for t in np.flatnonzero(fs.text_image == i)] == by_image[img]
        assert fs.image_split[i] == ref_split[img]


@pytest.mark.slow  # full_run: an extraction of 200 real photos
def test_resume_after_interruption_equals_uninterrupted_run(
    full_run: FeatureStore, tmp_path: Path
) -> None:
    out = tmp_path / "store"
    calls: list[tuple[str, int]] = []

    def stop_after_two(kind: str, k: int) -> None:
        calls.append((kind, k))
        if len(calls) == 2:
            raise _Interrupt

    with pytest.raises(_Interrupt):
        run_extraction(_cfg(out, "max_images=200"), on_chunk=stop_after_two)
    work = work_dir_for(out)
    assert not out.exists()  # no half-written store
    assert sorted(p.name for p in (work / "chunks").iterdir()) == [
        "image_00000.npy",
        "image_00001.npy",
    ]

    calls.clear()
    run_extraction(_cfg(out, "max_images=200"), on_chunk=lambda kind, k: calls.append((kind, k)))
    # Only the missing chunks were computed: 200 images / 64 = chunks 0-3, 1000 captions: 0-15.
    assert calls == [("image", 2), ("image", 3)] + [("text", k) for k in range(16)]
    resumed = FeatureStore.open(out)
    # Same seed, same data -> bit-identical features (also across 0 vs 2 loader workers).
    assert np.array_equal(resumed.image_emb, full_run.image_emb)
    assert np.array_equal(resumed.text_emb, full_run.text_emb)
    assert resumed.images() == full_run.images() and resumed.captions() == full_run.captions()
    assert np.array_equal(resumed.text_image, full_run.text_image)
    assert np.array_equal(resumed.image_split, full_run.image_split)
    assert not work.exists()


def test_seed_changes_features_and_rows_do_not_depend_on_batch_mates(
    full_run: FeatureStore, tmp_path: Path
) -> None:
    # Another random subset (sample_seed) under the same init seed: each shared image and caption
    # gets the same vector as in the 200-image run, whatever else is in its batch.
    same = FeatureStore.open(
        run_extraction(_cfg(tmp_path / "a", "max_images=20", "sample_seed=7", "batch_size=8"))
    )
    other = FeatureStore.open(
        run_extraction(_cfg(tmp_path / "b", "max_images=20", "sample_seed=7", "model.init_seed=1"))
    )
    full_idx = {img: i for i, img in enumerate(full_run.images())}
    common = [(i, full_idx[img]) for i, img in enumerate(same.images()) if img in full_idx]
    assert common, "the two random subsets share no image"
    a = np.asarray([same.image_emb[i] for i, _ in common], dtype=np.float32)
    b = np.asarray([full_run.image_emb[j] for _, j in common], dtype=np.float32)
    np.testing.assert_allclose(a, b, atol=2e-3)  # fp16 storage; batch size 8 vs 32
    # A different init seed gives different features for the very same images.
    cos = np.sum(
        np.asarray(same.image_emb, np.float32) * np.asarray(other.image_emb, np.float32), axis=1
    )
    assert same.images() == other.images() and cos.max() < 0.99


def test_config_mismatch_refuses_to_resume(shared: Path, tmp_path: Path) -> None:
    out = tmp_path / "store"

    def stop(kind: str, k: int) -> None:
        raise _Interrupt

    with pytest.raises(_Interrupt):
        run_extraction(_cfg(out, "max_images=12", "chunk_size=8"), on_chunk=stop)
    with pytest.raises(ExtractError, match=r"differs in: \['chunk_size'\]"):
        run_extraction(_cfg(out, "max_images=12", "chunk_size=16"))
    with pytest.raises(ExtractError, match=r"differs in: \['init_seed'\]"):
        run_extraction(_cfg(out, "max_images=12", "chunk_size=8", "model.init_seed=3"))
    path = run_extraction(_cfg(out, "max_images=12", "chunk_size=16", "restart=true"))
    assert FeatureStore.open(path).num_images == 12


def test_existing_store_needs_overwrite(shared: Path, tmp_path: Path) -> None:
    out = tmp_path / "store"
    run_extraction(_cfg(out, "max_images=12", "dtype=float32"))
    assert FeatureStore.open(out).image_emb.dtype == np.float32
    with pytest.raises(FileExistsError, match="overwrite=true"):
        run_extraction(_cfg(out, "max_images=12"))
    run_extraction(_cfg(out, "max_images=12", "overwrite=true"))
    assert FeatureStore.open(out).image_emb.dtype == np.float16


def test_local_checkpoint_is_loaded(shared: Path, tmp_path: Path) -> None:
    """Offline weights: a checkpoint file gives the features of the model it was saved from."""
    ref = FeatureStore.open(
        run_extraction(_cfg(tmp_path / "ref", "max_images=12", "model.init_seed=5"))
    )
    model_cfg = {"name": TINY_NAME, "pretrained": None, "config": TINY, "init_seed": 5}
    model, *_ = load_open_clip(model_cfg, torch.device("cpu"), tmp_path / "cfg")
    ckpt = tmp_path / "tiny.pt"
    torch.save(model.state_dict(), ckpt)
    for key in ("model.checkpoint", "model.pretrained"):  # both spellings are accepted
        out = tmp_path / key
        fs = FeatureStore.open(run_extraction(_cfg(out, "max_images=12", f"{key}={ckpt}")))
        assert np.array_equal(fs.image_emb, ref.image_emb)
        assert np.array_equal(fs.text_emb, ref.text_emb)
        enc = fs.manifest["encoder"]
        assert enc["random_init"] is False and enc["checkpoint"] == str(ckpt.resolve())
        assert len(enc["checkpoint_sha256"]) == 64


def test_unknown_tag_and_missing_checkpoint(shared: Path, tmp_path: Path) -> None:
    with pytest.raises(ExtractError, match=r"'no-such-tag'.*known tags: \[.*'openai'"):
        run_extraction(
            _cfg(
                tmp_path / "s",
                "max_images=5",
                "model.name=ViT-B-32",
                "model.pretrained=no-such-tag",
                tiny=False,
            )
        )
    with pytest.raises(ExtractError, match="model.checkpoint: file not found"):
        run_extraction(_cfg(tmp_path / "s", "max_images=5", f"model.checkpoint={tmp_path}/x.pt"))


def _tiny_folder(tmp_path: Path) -> Path:
    """6 real photos + one garbage .jpg, with a seeded split that puts images in train and test."""
    imgs = tmp_path / "imgs"
    imgs.mkdir()
    names = sorted(os.listdir(FLICKR8K / "images"))[:6]
    for name in names:
        Image.open(FLICKR8K / "images" / name).save(imgs / name)
    (imgs / "broken.jpg").write_bytes(b"\xff\xd8 not really a jpeg" * 20)
    rows = [f"{n}\tcaption of {n}" for n in [*names[:3], "broken.jpg", *names[3:]]]
    tsv = tmp_path / "caps.tsv"
    tsv.write_text("image\tcaption\n" + "\n".join(rows) + "\n")
    return tsv


@pytest.mark.parametrize("workers", [0, pytest.param(1, marks=pytest.mark.slow)])
def test_corrupt_image_fails_naming_the_file(shared: Path, tmp_path: Path, workers: int) -> None:
    tsv = _tiny_folder(tmp_path)
    overrides = [
        "data_adapter=folder",
        f"annotations={tsv}",
        f"image_root={tmp_path / 'imgs'}",
        "folder.split_fractions=[0.5,0,0.5]",
        f"num_workers={workers}",
    ]
    with pytest.raises(DatasetError, match=r"broken\.jpg: image file cannot be decoded"):
        run_extraction(_cfg(tmp_path / "s", *overrides, flickr8k=False))
    assert not (tmp_path / "s").exists()

    path = run_extraction(_cfg(tmp_path / "s", *overrides, "skip_missing=true", flickr8k=False))
    fs = FeatureStore.open(path)
    assert fs.num_images == 6 and "broken.jpg" not in fs.images()
    assert fs.captions() == [f"caption of {n}" for n in fs.images()]
    skipped = fs.manifest["encoder"]["skipped"]
    assert skipped["corrupt_images"] == 1 and skipped["first_corrupt"] == ["broken.jpg"]


@pytest.mark.slow  # a fresh interpreter imports torch + open_clip: ~10 s on 2 cores
def test_cli_entry_point(shared: Path, tmp_path: Path) -> None:
    """``python -m xmr.extract`` with Hydra overrides, the tiny model given on the command line."""
    tiny = json.dumps(TINY).replace('"', "").replace(" ", "")  # Hydra's dict override grammar
    out = tmp_path / "store"
    cmd = [
        sys.executable,
        "-m",
        "xmr.extract",
        "data_adapter=folder",
        f"annotations={FLICKR8K / 'captions.tsv'}",
        f"image_root={FLICKR8K / 'images'}",
        "folder.split_fractions=[0.6,0.2,0.2]",
        "max_images=12",
        f"out={out}",
        f"model.name={TINY_NAME}-cli",
        "model.pretrained=null",
        f"model.config={tiny}",
        "num_workers=0",
        "progress=false",
    ]
    env = {**os.environ, "XMR_LOGS": str(tmp_path / "logs")}
    res = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=tmp_path, timeout=120)
    assert res.returncode == 0, res.stderr[-3000:]
    assert res.stdout.strip().endswith(str(out))
    fs = FeatureStore.open(out)
    assert fs.num_images == 12 and fs.manifest["encoder"]["model_config"] == TINY
    assert fs.manifest["encoder"]["sources"]["split"] == {"fractions": [0.6, 0.2, 0.2], "seed": 0}


def _documented_trial_run() -> list[str]:
    """The ``xmr extract`` overrides of docs/real_data.md's offline trial run, as documented."""
    text = (REPO / "docs" / "real_data.md").read_text(encoding="utf-8")
    (block,) = [
        b for b in re.findall(r"```bash\n(.*?)```", text, re.S) if "encoder=tiny_random" in b
    ]
    command = block.replace("\\\n", " ").splitlines()[0]
    words = shlex.split(command)
    assert words[:3] == ["xmr", "extract", "encoder=tiny_random"], words
    return words[2:]


def test_tiny_random_encoder_is_a_random_init_custom_model() -> None:
    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        cfg = compose("extract", overrides=["encoder=tiny_random", "out=x", "annotations=a"])
    model = cfg.model
    assert model.name == "xmr-tiny-random" and model.pretrained is None
    assert model.checkpoint is None and model.config is not None
    assert model.init_seed == 0 and model.precision == "fp32"  # the rest of conf/extract.yaml
    assert TINY["embed_dim"] == 64 and TINY["text_cfg"]["context_length"] == 16


def test_offline_trial_run_as_documented(
    shared: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    """docs/real_data.md's offline recipe, run from the repository root with ../shared beside it
    (``out`` moved to a temporary directory): 100 real photos through the shipped tiny
    random-init model, then ``xmr eval-zeroshot`` warns and names the gallery sizes."""
    overrides = _documented_trial_run()
    assert any(o.startswith("annotations=../shared/") for o in overrides)
    out = tmp_path / "store"
    overrides = [f"out={out}" if o.startswith("out=") else o for o in overrides]
    monkeypatch.chdir(REPO)  # the documented relative paths
    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        cfg = compose("extract", overrides=[*overrides, "progress=false"])
    fs = FeatureStore.open(run_extraction(cfg))
    enc = fs.manifest["encoder"]
    assert enc["random_init"] is True and enc["pretrained"] is None and fs.random_init
    assert enc["model"] == "xmr-tiny-random" and enc["model_config"] == TINY
    assert (fs.num_images, fs.num_texts, fs.image_dim) == (100, 500, 64)
    assert fs.manifest["splits"] == {"train": 80, "val": 10, "test": 10}
    capsys.readouterr()
    zeroshot_main([f"store={out}"])
    lines = capsys.readouterr().out.splitlines()
    assert "(random init)" in lines[0] and lines[1].startswith("WARNING:")
    assert "RANDOMLY INITIALISED" in lines[1] and "meaningless" in lines[1]
    assert lines[2].endswith("(10 test images over 50 test captions)")
    assert lines[3].endswith("(50 test captions over 10 test images)")
