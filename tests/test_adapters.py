"""Dataset adapters: real Flickr30k annotations, hand-made COCO JSON, CSV/TSV caption folders."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from xmr.data.adapters import (
    DatasetError,
    build_dataset,
    load_caption_folder,
    load_coco,
    load_flickr30k,
)

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
FLICKR30K_JSON = SHARED / "flickr30k" / "dataset_flickr30k.json"
FLICKR8K = SHARED / "flickr8k-1k"


def _png(path: Path, color: tuple[int, int, int] = (200, 30, 30)) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (6, 4), color).save(path)


# ------------------------------------------------------------------------------- Flickr30k
@pytest.fixture(scope="module")
def flickr30k_raw() -> dict:
    """The real Karpathy JSON parsed once (38 MB); used as an independent reference."""
    if not FLICKR30K_JSON.is_file():
        pytest.skip(f"real Flickr30k annotations absent ({FLICKR30K_JSON})")
    return json.loads(FLICKR30K_JSON.read_text(encoding="utf-8"))


@pytest.fixture(scope="module")
def flickr30k(flickr30k_raw: dict, tmp_path_factory: pytest.TempPathFactory):
    root = tmp_path_factory.mktemp("flickr30k-images")
    return load_flickr30k(FLICKR30K_JSON, root, check_images=False)


def test_flickr30k_karpathy_split_counts(flickr30k) -> None:
    # Karpathy split of Flickr30k: 29,000 / 1,014 / 1,000 images, 5 captions each.
    assert flickr30k.split_counts() == {"train": 29000, "val": 1014, "test": 1000}
    assert flickr30k.num_images == 31014
    assert flickr30k.num_texts == 155070
    assert np.array_equal(np.bincount(flickr30k.text_image), np.full(31014, 5))


def test_flickr30k_matches_raw_json(flickr30k, flickr30k_raw: dict) -> None:
    entries = flickr30k_raw["images"]
    for k in (0, 1234, 31013):
        e = entries[k]
        assert flickr30k.images[k] == e["filename"]
        caps = [flickr30k.captions[t] for t in np.flatnonzero(flickr30k.text_image == k)]
        assert caps == [" ".join(s["raw"].split()) for s in e["sentences"]]
        assert flickr30k.image_split[k] == {"train": 0, "val": 1, "test": 2}[e["split"]]
    assert all("\n" not in c and c for c in flickr30k.captions)


def test_flickr30k_missing_image_folder_is_a_clear_error(
    flickr30k_raw: dict, tmp_path: Path
) -> None:
    root = tmp_path / "flickr30k-images"  # does not exist
    with pytest.raises(DatasetError) as err:
        load_flickr30k(FLICKR30K_JSON, root)
    msg = str(err.value)
    assert "31,014 of 31,014 image files are missing" in msg
    first = flickr30k_raw["images"][0]["filename"]
    assert str(root / first) in msg  # lists the first missing paths
    assert "flickr30k-images" in msg and "official form" in msg  # how to obtain the data
    assert "skip_missing" in msg


def test_flickr30k_skip_missing_keeps_present_images(flickr30k, tmp_path: Path) -> None:
    present = [flickr30k.images[i] for i in (3, 30000)]
    for name in present:
        _png(tmp_path / name)
    # Same dataset as load_flickr30k(..., skip_missing=True), without parsing the JSON again.
    ds = replace(flickr30k, image_root=tmp_path).check_images(skip_missing=True)
    assert ds.images == present
    assert ds.num_texts == 10 and ds.text_image.tolist() == [0] * 5 + [1] * 5
    assert ds.skipped["missing_images"] == 31012
    assert ds.skipped["missing_captions"] == 155060
    assert ds.image_split.tolist() == [flickr30k.image_split[3], flickr30k.image_split[30000]]


# ------------------------------------------------------------------------------- COCO
def _coco_json(tmp_path: Path) -> Path:
    """A hand-made Karpathy-format COCO file: 2 train, 1 restval, 1 val, 2 test images."""
    layout = [
        ("train2014", "COCO_train2014_000000000001.jpg", "train", 2),
        ("val2014", "COCO_val2014_000000000002.jpg", "restval", 1),
        ("train2014", "COCO_train2014_000000000003.jpg", "train", 3),
        ("val2014", "COCO_val2014_000000000004.jpg", "val", 1),
        ("val2014", "COCO_val2014_000000000005.jpg", "test", 2),
        ("val2014", "COCO_val2014_000000000006.jpg", "test", 1),
    ]
    images, sentid = [], 0
    for imgid, (fp, fn, split, n_caps) in enumerate(layout):
        sents = []
        for j in range(n_caps):
            sents.append({"raw": f"image {imgid} caption {j}\n", "imgid": imgid, "sentid": sentid})
            sentid += 1
        images.append(
            {"filepath": fp, "filename": fn, "split": split, "imgid": imgid, "sentences": sents}
        )
        _png(tmp_path / "coco" / fp / fn, (imgid * 40, 0, 0))
    path = tmp_path / "dataset_coco.json"
    path.write_text(json.dumps({"images": images, "dataset": "coco"}))
    return path


def test_coco_restval_into_train(tmp_path: Path) -> None:
    ds = load_coco(_coco_json(tmp_path), tmp_path / "coco")
    assert ds.images[1] == "val2014/COCO_val2014_000000000002.jpg"  # filepath/filename
    assert ds.image_split.tolist() == [0, 0, 0, 1, 2, 2]  # restval -> train
    assert ds.num_texts == 10
    assert ds.text_image.tolist() == [0, 0, 1, 2, 2, 2, 3, 4, 4, 5]
    assert ds.captions[2] == "image 1 caption 0"  # newline stripped
    assert ds.image_path(4).is_file()


def test_coco_restval_dropped(tmp_path: Path) -> None:
    ds = load_coco(_coco_json(tmp_path), tmp_path / "coco", restval_to_train=False)
    assert "val2014/COCO_val2014_000000000002.jpg" not in ds.images
    assert ds.split_counts() == {"train": 2, "val": 1, "test": 2}
    assert ds.num_texts == 9 and ds.sources["dropped_restval_images"] == 1


def test_coco_missing_image_names_path_and_count(tmp_path: Path) -> None:
    ann = _coco_json(tmp_path)
    (tmp_path / "coco" / "val2014" / "COCO_val2014_000000000005.jpg").unlink()
    with pytest.raises(DatasetError, match=r"1 of 6 image files are missing") as err:
        load_coco(ann, tmp_path / "coco")
    assert "val2014/COCO_val2014_000000000005.jpg" in str(err.value)
    assert "cocodataset.org" in str(err.value)


def test_karpathy_unknown_split_and_missing_field(tmp_path: Path) -> None:
    ann = _coco_json(tmp_path)
    data = json.loads(ann.read_text())
    data["images"][2]["split"] = "holdout"
    ann.write_text(json.dumps(data))
    with pytest.raises(DatasetError, match=r"images\[2\]: unknown split 'holdout'"):
        load_coco(ann, tmp_path / "coco")
    del data["images"][2]["sentences"]
    ann.write_text(json.dumps(data))
    with pytest.raises(DatasetError, match=r"images\[2\]: missing field 'sentences'"):
        load_coco(ann, tmp_path / "coco")


def test_karpathy_missing_annotation_file_says_where_to_get_it(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match="karpathy/deepimagesent"):
        load_flickr30k(tmp_path / "dataset_flickr30k.json", tmp_path)


# ------------------------------------------------------------------------------- folder
def _folder(tmp_path: Path, rows: list[str], header: str = "image\tcaption", name="caps.tsv"):
    sep = "\t" if name.endswith(".tsv") else ","
    for line in rows:
        img = line.split(sep)[0]
        if not (tmp_path / "imgs" / img).exists():
            _png(tmp_path / "imgs" / img)
    path = tmp_path / name
    path.write_text("\n".join([header, *rows]) + "\n", encoding="utf-8")
    return path


def test_folder_groups_captions_by_image(tmp_path: Path) -> None:
    tsv = _folder(tmp_path, ["a.jpg\tfirst a", "b.jpg\tonly b", "a.jpg\tsecond a", "c.jpg\tc"])
    ds = load_caption_folder(tsv, tmp_path / "imgs", split_fractions=(0.34, 0.33, 0.33))
    assert ds.images == ["a.jpg", "b.jpg", "c.jpg"]
    assert ds.captions == ["first a", "second a", "only b", "c"]
    assert ds.text_image.tolist() == [0, 0, 1, 2]
    assert sorted(ds.image_split.tolist()) == [0, 1, 2]  # round(3 * .34) = 1 per split


def test_folder_split_column_csv(tmp_path: Path) -> None:
    rows = ['x.jpg,"a, quoted caption",test', "y.jpg,plain,train", "x.jpg,again,test"]
    csv_path = _folder(tmp_path, rows, header="image,caption,split", name="caps.csv")
    ds = load_caption_folder(csv_path, tmp_path / "imgs", split_column="split")
    assert ds.captions == ["a, quoted caption", "again", "plain"]
    assert ds.image_split.tolist() == [2, 0]


def test_folder_split_column_must_agree(tmp_path: Path) -> None:
    csv_path = _folder(
        tmp_path, ["x.jpg,a,test", "x.jpg,b,train"], header="image,caption,split", name="c.csv"
    )
    with pytest.raises(DatasetError, match=r"line 3: image 'x.jpg' has split 'train'.*line 2"):
        load_caption_folder(csv_path, tmp_path / "imgs", split_column="split")


def test_folder_seeded_split_is_reproducible(tmp_path: Path) -> None:
    rows = [f"{i}.jpg\tcaption {i}" for i in range(50)]
    tsv = _folder(tmp_path, rows)
    a = load_caption_folder(tsv, tmp_path / "imgs", split_seed=3)
    b = load_caption_folder(tsv, tmp_path / "imgs", split_seed=3)
    c = load_caption_folder(tsv, tmp_path / "imgs", split_seed=4)
    assert np.array_equal(a.image_split, b.image_split)
    assert not np.array_equal(a.image_split, c.image_split)
    assert a.split_counts() == {"train": 40, "val": 5, "test": 5}
    with pytest.raises(DatasetError, match="split_fractions"):
        load_caption_folder(tsv, tmp_path / "imgs", split_fractions=(0.5, 0.5, 0.5))


def test_folder_missing_column(tmp_path: Path) -> None:
    tsv = _folder(tmp_path, ["a.jpg\tcap"])
    with pytest.raises(DatasetError, match=r"caption_column='text' is not a column"):
        load_caption_folder(tsv, tmp_path / "imgs", caption_column="text")
    with pytest.raises(DatasetError, match=r"split_column='split' is not a column"):
        load_caption_folder(tsv, tmp_path / "imgs", split_column="split")


def test_folder_ragged_row_names_line(tmp_path: Path) -> None:
    tsv = _folder(tmp_path, ["a.jpg\tcap", "b.jpg\tcap\textra"])
    with pytest.raises(DatasetError, match=r"caps.tsv: line 3: has 3 fields"):
        load_caption_folder(tsv, tmp_path / "imgs")


def test_folder_missing_images(tmp_path: Path) -> None:
    tsv = _folder(tmp_path, ["a.jpg\tcap a", "b.jpg\tcap b", "c.jpg\tcap c"])
    (tmp_path / "imgs" / "b.jpg").unlink()
    with pytest.raises(DatasetError, match=r"1 of 3 image files are missing") as err:
        load_caption_folder(tsv, tmp_path / "imgs")
    assert str(tmp_path / "imgs" / "b.jpg") in str(err.value)
    ds = load_caption_folder(tsv, tmp_path / "imgs", skip_missing=True)
    assert ds.images == ["a.jpg", "c.jpg"] and ds.captions == ["cap a", "cap c"]
    assert ds.skipped == {"missing_images": 1, "missing_captions": 1, "first_missing": ["b.jpg"]}


def test_folder_corrupt_image_error_names_file(tmp_path: Path) -> None:
    tsv = _folder(tmp_path, ["a.jpg\tcap a", "bad.jpg\tcap b"])
    (tmp_path / "imgs" / "bad.jpg").write_bytes(b"this is not a jpeg" * 10)
    ds = load_caption_folder(tsv, tmp_path / "imgs")  # exists: passes the file check
    assert ds.load_image(0).size == (6, 4)
    with pytest.raises(DatasetError, match=r"bad\.jpg: image file cannot be decoded"):
        ds.load_image(1)


def test_folder_split_from_store_follows_shared_store() -> None:
    store = FLICKR8K / "features" / "zeroshot-bridge"
    if not store.is_dir():
        pytest.skip(f"shared flickr8k-1k data absent ({FLICKR8K})")
    from xmr.data.store import FeatureStore

    ds = load_caption_folder(
        FLICKR8K / "captions.tsv", FLICKR8K / "images", split_from=store, check_images=True
    )
    fs = FeatureStore.open(store, check_norms=False)
    assert ds.images == fs.images()
    assert np.array_equal(ds.image_split, fs.image_split)
    assert ds.captions == fs.captions() and np.array_equal(ds.text_image, fs.text_image)
    assert ds.split_counts() == {"train": 800, "val": 100, "test": 100}


def test_build_dataset_dispatch_and_errors(tmp_path: Path) -> None:
    tsv = _folder(tmp_path, ["a.jpg\tcap a", "b.jpg\tcap b"])
    ds = build_dataset(
        "folder",
        {"annotations": str(tsv), "image_root": str(tmp_path / "imgs"), "folder": {}},
    )
    assert ds.name == "folder" and ds.num_texts == 2
    with pytest.raises(DatasetError, match="unknown adapter 'flickr8k'"):
        build_dataset("flickr8k", {"annotations": str(tsv)})
    with pytest.raises(DatasetError, match="image_root: required"):
        build_dataset("coco", {"annotations": str(tsv)})


def test_subset_and_sample_remap_captions(tmp_path: Path) -> None:
    rows = [f"{i}.jpg\tcap {i} {j}" for i in range(10) for j in range(2)]
    ds = load_caption_folder(_folder(tmp_path, rows), tmp_path / "imgs")
    sub = ds.sample_images(4, seed=1)
    assert sub.num_images == 4 and sub.num_texts == 8
    for t, img in enumerate(sub.text_image):
        assert sub.captions[t].startswith(f"cap {sub.images[img].split('.')[0]} ")
