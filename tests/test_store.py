"""Tests of the xmr-features/1 feature store: round trip, every validation rule, atomic writes."""

from __future__ import annotations

import json
import re
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from xmr.data import store as store_mod
from xmr.data.store import SPLITS, FeatureStore, StoreError, write_store

N_IMG, CPI, DIM_IMG, DIM_TXT = 10, 2, 4, 6
SPLIT = np.array([0, 0, 1, 0, 2, 0, 1, 0, 2, 0], dtype=np.uint8)  # 6 train, 2 val, 2 test


def _inputs(seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    return {
        "image_emb": rng.standard_normal((N_IMG, DIM_IMG)) * 3.0,  # not unit: writer normalises
        "text_emb": rng.standard_normal((N_IMG * CPI, DIM_TXT)),
        "text_image": np.repeat(np.arange(N_IMG), CPI),
        "image_split": SPLIT,
        "images": [f"img_{i}.jpg" for i in range(N_IMG)],
        "captions": [f"caption {t}" for t in range(N_IMG * CPI)],
        "encoder": {"name": "unit-test", "version": 1},
        "joint_space": False,
    }


@pytest.fixture
def store_dir(tmp_path: Path) -> Path:
    return write_store(tmp_path / "store", **_inputs())


# ----------------------------------------------------------------------------- round trip
def test_round_trip(tmp_path: Path) -> None:
    inp = _inputs()
    inp["captions"][3] = "two\nlines\tand\r\nbreaks\u2028x"
    root = write_store(tmp_path / "s", **inp)
    s = FeatureStore.open(root)
    assert s.root == root
    assert (s.num_images, s.num_texts, s.image_dim, s.text_dim) == (10, 20, 4, 6)
    assert s.joint_space is False
    assert s.manifest["format"] == "xmr-features/1"
    assert s.manifest["encoder"] == {"name": "unit-test", "version": 1}
    assert s.manifest["normalized"] is True
    assert s.manifest["splits"] == {"train": 6, "val": 2, "test": 2}
    assert s.image_emb.dtype == np.float16 and s.text_emb.dtype == np.float16
    assert isinstance(s.image_emb, np.memmap) and not s.image_emb.flags.writeable
    # Stored rows are the inputs divided by their norms (up to float16 rounding).
    want = inp["image_emb"] / np.linalg.norm(inp["image_emb"], axis=1, keepdims=True)
    np.testing.assert_allclose(s.image_emb.astype(np.float64), want, atol=1e-3)
    assert s.text_image.dtype == np.int64 and s.image_split.dtype == np.uint8
    np.testing.assert_array_equal(s.text_image, inp["text_image"])
    np.testing.assert_array_equal(s.image_split, SPLIT)
    np.testing.assert_array_equal(s.text_split, np.repeat(SPLIT, CPI))
    assert s.images() == inp["images"]
    caps = s.captions()
    assert len(caps) == 20 and caps[0] == "caption 0"
    assert caps[3] == "two lines and  breaks x"  # each break/tab -> one space, one line
    np.testing.assert_array_equal(s.split_image_ids("test"), [4, 8])
    np.testing.assert_array_equal(s.split_text_ids("val"), [4, 5, 12, 13])
    with pytest.raises(KeyError, match="unknown split 'dev'"):
        s.split_image_ids("dev")


def test_float32_without_normalisation(tmp_path: Path) -> None:
    inp = _inputs()
    root = write_store(tmp_path / "s", **inp, dtype="float32", normalize=False)
    s = FeatureStore.open(root)
    assert s.manifest["normalized"] is False  # the raw rows are not unit-norm
    np.testing.assert_array_equal(s.image_emb, inp["image_emb"].astype(np.float32))


def test_fingerprint(tmp_path: Path, store_dir: Path) -> None:
    fp = FeatureStore.open(store_dir).fingerprint()
    assert re.fullmatch(r"[0-9a-f]{16}", fp)
    assert FeatureStore.open(store_dir, check_norms=False).fingerprint() == fp
    assert FeatureStore.open(write_store(tmp_path / "same", **_inputs())).fingerprint() == fp
    other = FeatureStore.open(write_store(tmp_path / "other", **_inputs(seed=1)))
    assert other.fingerprint() != fp


# ----------------------------------------------------------------------------- validation
def _manifest(root: Path) -> dict:
    return json.loads((root / "manifest.json").read_text())


def _set_manifest(**changes: object) -> Callable[[Path], None]:
    def apply(root: Path) -> None:
        m = _manifest(root)
        for k, v in changes.items():
            if v is _DELETE:
                del m[k]
            else:
                m[k] = v
        (root / "manifest.json").write_text(json.dumps(m))

    return apply


_DELETE = object()


def _save(name: str, make: Callable[[Path], np.ndarray]) -> Callable[[Path], None]:
    def apply(root: Path) -> None:
        arr = make(root)
        np.save(root / name, arr)

    return apply


def _load(root: Path, name: str) -> np.ndarray:
    return np.array(np.load(root / name))


def _with(name: str, edit: Callable[[np.ndarray], None], dtype: object = None):
    def make(root: Path) -> np.ndarray:
        a = _load(root, name)
        if dtype is not None:
            a = a.astype(dtype)
        edit(a)
        return a

    return _save(name, make)


def _setitem(idx: object, value: object) -> Callable[[np.ndarray], None]:
    def edit(a: np.ndarray) -> None:
        a[idx] = value

    return edit


def _noop(a: np.ndarray) -> None:
    pass


def _lines(name: str, delta: int) -> Callable[[Path], None]:
    def apply(root: Path) -> None:
        lines = (root / name).read_text().split("\n")[:-1]
        lines = lines + ["extra"] * delta if delta > 0 else lines[:delta]
        (root / name).write_text("".join(line + "\n" for line in lines))

    return apply


def _edit_line(name: str, index: int, text: str) -> Callable[[Path], None]:
    def apply(root: Path) -> None:
        lines = (root / name).read_text().split("\n")
        lines[index] = text
        (root / name).write_text("\n".join(lines))

    return apply


CORRUPTIONS: dict[str, tuple[Callable[[Path], None], str]] = {
    "manifest-not-json": (
        lambda r: (r / "manifest.json").write_text("{not json"),
        r"manifest\.json: not valid JSON",
    ),
    "manifest-list": (
        lambda r: (r / "manifest.json").write_text("[1, 2]"),
        r"manifest\.json: top level must be a JSON object",
    ),
    "missing-key": (_set_manifest(image_dim=_DELETE), r"manifest\.json: missing key 'image_dim'"),
    "missing-encoder": (_set_manifest(encoder=_DELETE), r"manifest\.json: missing key 'encoder'"),
    "num-as-string": (
        _set_manifest(num_images="10"),
        r"manifest\.json: key 'num_images' must be a positive integer",
    ),
    "num-as-bool": (
        _set_manifest(num_texts=True),
        r"manifest\.json: key 'num_texts' must be a positive integer",
    ),
    "joint-not-bool": (
        _set_manifest(joint_space="yes"),
        r"manifest\.json: key 'joint_space' must be a boolean",
    ),
    "encoder-not-dict": (
        _set_manifest(encoder="clip"),
        r"manifest\.json: key 'encoder' must be an object",
    ),
    "wrong-format": (
        _set_manifest(format="xmr-features/0"),
        r"manifest\.json: format must be 'xmr-features/1'",
    ),
    "unknown-split-name": (
        _set_manifest(splits={"train": 6, "val": 2, "test": 2, "dev": 0}),
        r"manifest\.json: unknown split 'dev'",
    ),
    "no-test-split": (
        _set_manifest(splits={"train": 8, "val": 2}),
        r"manifest\.json: split 'test' must be present",
    ),
    "negative-split-count": (
        _set_manifest(splits={"train": 6, "val": -2, "test": 6}),
        r"manifest\.json: splits\['val'\] must be a non-negative integer",
    ),
    "split-sum": (
        _set_manifest(splits={"train": 6, "val": 2, "test": 3}),
        r"manifest\.json: split counts .* sum to 11, but num_images is 10",
    ),
    "image-dim": (
        _set_manifest(image_dim=5),
        r"image_emb\.npy: has dim 4, but manifest image_dim is 5",
    ),
    "text-dim": (
        _set_manifest(text_dim=3),
        r"text_emb\.npy: has dim 6, but manifest text_dim is 3",
    ),
    "image-rows": (
        _save("image_emb.npy", lambda r: _load(r, "image_emb.npy")[:9]),
        r"image_emb\.npy: has 9 rows, but manifest num_images is 10",
    ),
    "text-rows": (
        _save("text_emb.npy", lambda r: np.concatenate([_load(r, "text_emb.npy")] * 2)),
        r"text_emb\.npy: has 40 rows, but manifest num_texts is 20",
    ),
    "image-1d": (
        _save("image_emb.npy", lambda r: _load(r, "image_emb.npy").ravel()),
        r"image_emb\.npy: must be 2-D",
    ),
    "text-float64": (
        _with("text_emb.npy", _noop, dtype=np.float64),
        r"text_emb\.npy: dtype must be float16 or float32, got float64",
    ),
    "image-int": (
        _with("image_emb.npy", _noop, dtype=np.int32),
        r"image_emb\.npy: dtype must be float16 or float32, got int32",
    ),
    "npy-garbage": (
        lambda r: (r / "text_image.npy").write_bytes(b"garbage"),
        r"text_image\.npy: not a readable \.npy array",
    ),
    "npy-pickled-object": (
        lambda r: np.save(r / "text_image.npy", np.array([None] * 20, dtype=object)),
        r"text_image\.npy: not a readable \.npy array",
    ),
    "text-image-float": (
        _with("text_image.npy", _noop, dtype=np.float64),
        r"text_image\.npy: dtype must be integer",
    ),
    "text-image-length": (
        _save("text_image.npy", lambda r: _load(r, "text_image.npy")[:-1]),
        r"text_image\.npy: shape must be \(num_texts,\) = \(20,\)",
    ),
    "text-image-too-big": (
        _with("text_image.npy", _setitem(7, 10)),
        r"text_image\.npy: image index 10 out of range \[0, num_images=10\)",
    ),
    "text-image-negative": (
        _with("text_image.npy", _setitem(0, -1)),
        r"text_image\.npy: image index -1 out of range",
    ),
    "split-code": (
        _with("image_split.npy", _setitem(3, 3)),
        r"image_split\.npy: unknown split code 3 at image 3",
    ),
    "split-float": (
        _with("image_split.npy", _noop, dtype=np.float32),
        r"image_split\.npy: dtype must be integer",
    ),
    "split-length": (
        _save("image_split.npy", lambda r: _load(r, "image_split.npy")[:-1]),
        r"image_split\.npy: shape must be \(num_images,\)",
    ),
    "split-counts": (
        _with("image_split.npy", _setitem(0, SPLITS["val"])),
        r"image_split\.npy: 5 images have split 'train' \(code 0\), but manifest "
        r"splits\['train'\] is 6",
    ),
    "image-nan": (
        _with("image_emb.npy", _setitem((2, 1), np.nan)),
        r"image_emb\.npy: non-finite value \(NaN or inf\) in row 2",
    ),
    "text-inf": (
        _with("text_emb.npy", _setitem((5, 0), np.inf)),
        r"text_emb\.npy: non-finite value \(NaN or inf\) in row 5",
    ),
    "text-not-unit": (
        _with("text_emb.npy", _setitem(3, 0.5)),
        r"text_emb\.npy: row 3 has L2 norm 1\.22474, but manifest says normalized: true",
    ),
    "image-zero-row": (
        _with("image_emb.npy", _setitem(9, 0.0)),
        r"image_emb\.npy: row 9 has L2 norm 0,",
    ),
    "images-duplicate-id": (
        _edit_line("images.txt", 3, "img_1.jpg"),
        r"images\.txt: image 3 repeats the id 'img_1\.jpg' of image 1; image ids must be unique",
    ),
    "images-empty-id": (
        _edit_line("images.txt", 4, " "),
        r"images\.txt: image 4 \(line 5\) has an empty id",
    ),
    "test-image-without-caption": (
        _with("text_image.npy", _setitem([8, 9], 0)),  # image 4 (test) loses both captions
        r"text_image\.npy: 1 of 2 test images have no caption \(first: image 4, 'img_4\.jpg'\); "
        r"every test image needs at least one caption",
    ),
    "images-extra-line": (
        _lines("images.txt", 1),
        r"images\.txt: has 11 lines, but manifest num_images is 10",
    ),
    "captions-missing-line": (
        _lines("captions.txt", -1),
        r"captions\.txt: has 19 lines, but manifest num_texts is 20",
    ),
}


@pytest.mark.parametrize("case", sorted(CORRUPTIONS))
def test_corruption_is_rejected(store_dir: Path, case: str) -> None:
    corrupt, pattern = CORRUPTIONS[case]
    corrupt(store_dir)
    with pytest.raises(StoreError, match=re.escape(str(store_dir)) + "/" + pattern):
        FeatureStore.open(store_dir)


@pytest.mark.parametrize("name", store_mod.STORE_FILES)
def test_missing_file(store_dir: Path, name: str) -> None:
    (store_dir / name).unlink()
    with pytest.raises(StoreError, match=re.escape(f"{name}: missing file")):
        FeatureStore.open(store_dir)


def test_missing_directory(tmp_path: Path) -> None:
    with pytest.raises(StoreError, match="nope: missing feature-store directory"):
        FeatureStore.open(tmp_path / "nope")


def test_check_norms_false_skips_row_scans(store_dir: Path) -> None:
    CORRUPTIONS["text-not-unit"][0](store_dir)
    with pytest.raises(StoreError):
        FeatureStore.open(store_dir)
    s = FeatureStore.open(store_dir, check_norms=False)
    assert s.num_texts == 20


def test_unnormalised_store_skips_the_unit_norm_check(store_dir: Path) -> None:
    _set_manifest(normalized=False)(store_dir)
    CORRUPTIONS["text-not-unit"][0](store_dir)
    assert FeatureStore.open(store_dir).manifest["normalized"] is False
    CORRUPTIONS["text-inf"][0](store_dir)
    with pytest.raises(StoreError, match="non-finite"):
        FeatureStore.open(store_dir)


@pytest.mark.parametrize(
    ("value", "pattern"),
    [
        (0.0, r"row 3 has L2 norm 0: the cosine similarity of a zero vector is undefined"),
        (1e30, r"row 3 has L2 norm 2e\+30: its square overflows float32"),
        (1e-25, r"row 3 has L2 norm 2e-25: its square underflows float32"),
    ],
    ids=["zero", "huge", "tiny"],
)
def test_unnormalised_store_refuses_rows_without_a_cosine(
    tmp_path: Path, value: float, pattern: str
) -> None:
    """A ``normalized: false`` float32 store: a row whose norm is 0, or whose squared norm leaves
    float32's normal range, has no usable cosine; the file and the first such row are named."""
    root = write_store(tmp_path / "s", **_inputs(), dtype="float32", normalize=False)
    _with("image_emb.npy", _setitem(3, value))(root)
    with pytest.raises(StoreError, match=re.escape(str(root)) + r"/image_emb\.npy: " + pattern):
        FeatureStore.open(root)
    assert FeatureStore.open(root, check_norms=False).num_images == N_IMG


def test_store_without_val_split(tmp_path: Path) -> None:
    inp = _inputs()
    inp["image_split"] = np.where(SPLITS["val"] == SPLIT, SPLITS["train"], SPLIT)
    s = FeatureStore.open(write_store(tmp_path / "s", **inp))
    assert s.manifest["splits"] == {"train": 8, "val": 0, "test": 2}
    assert s.split_image_ids("val").size == 0


# ----------------------------------------------------------------------------- writer
@pytest.mark.parametrize(
    ("field", "value", "pattern"),
    [
        ("image_emb", "nan-row", r"image_emb: non-finite value \(NaN or inf\) in row 1"),
        ("text_emb", "zero-row", r"text_emb: row 2 has zero norm"),
        ("images", "newline", r"images: id 4 \('a\\nb'\) contains a line break"),
        ("captions", "short", r"captions: 19 captions for 20 text rows"),
        ("image_split", "bad-code", r"image_split: codes must be in"),
        ("text_image", "float", r"text_image: must be \(20,\) integers"),
        ("encoder", "not-json", r"encoder: provenance must be JSON-serialisable"),
        ("images", "duplicate", r"images: image 5 repeats the id 'img_2\.jpg' of image 2"),
        ("images", "empty", r"images: image 6 \(line 7\) has an empty id"),
        ("text_image", "captionless-test", r"text_image: 1 of 2 test images have no caption"),
        ("image_emb", "raw-zero-row", r"image_emb: row 3 has L2 norm 0"),
        (
            "text_emb",
            "raw-huge-row",
            r"text_emb: row 1 has L2 norm 2\.44949e\+30: its square overflows",
        ),
    ],
)
def test_writer_rejects_bad_input(tmp_path: Path, field: str, value: str, pattern: str) -> None:
    inp = _inputs()
    if value == "nan-row":
        inp[field][1, 0] = np.nan
    elif value == "zero-row":
        inp[field][2] = 0.0
    elif value == "newline":
        inp[field][4] = "a\nb"
    elif value == "short":
        inp[field] = inp[field][:-1]
    elif value == "bad-code":
        inp[field] = np.where(SPLIT == 1, 7, SPLIT)
    elif value == "float":
        inp[field] = inp[field].astype(float)
    elif value == "not-json":
        inp[field] = {"model": object()}
    elif value == "duplicate":
        inp[field][5] = inp[field][2]
    elif value == "empty":
        inp[field][6] = ""
    elif value == "captionless-test":
        inp[field] = np.where(inp[field] == 8, 0, inp[field])  # image 8 (test) loses its captions
    elif value in ("raw-zero-row", "raw-huge-row"):
        row = 3 if value == "raw-zero-row" else 1
        inp[field][row] = 0.0 if value == "raw-zero-row" else 1e30
    raw = value.startswith("raw-")  # rows stored as given (float32), not normalised
    with pytest.raises(StoreError, match=pattern):
        write_store(
            tmp_path / "s", **inp, **({"dtype": "float32", "normalize": False} if raw else {})
        )
    assert list(tmp_path.iterdir()) == []


def test_writer_refuses_to_clobber_without_overwrite(store_dir: Path) -> None:
    fp = FeatureStore.open(store_dir).fingerprint()
    with pytest.raises(FileExistsError, match="overwrite=True"):
        write_store(store_dir, **_inputs(seed=1))
    assert FeatureStore.open(store_dir).fingerprint() == fp


@pytest.mark.parametrize("exchange", [True, False], ids=["renameat2-exchange", "two-renames"])
def test_overwrite_replaces_store(
    store_dir: Path, monkeypatch: pytest.MonkeyPatch, exchange: bool
) -> None:
    if not exchange:
        monkeypatch.setattr("xmr.utils.io._exchange", lambda a, b: False)
    old = FeatureStore.open(store_dir).fingerprint()
    write_store(store_dir, **_inputs(seed=1), overwrite=True)
    new = FeatureStore.open(store_dir)
    assert new.fingerprint() != old
    assert (
        new.fingerprint()
        == FeatureStore.open(write_store(store_dir.parent / "ref", **_inputs(seed=1))).fingerprint()
    )
    assert sorted(p.name for p in store_dir.parent.iterdir()) == ["ref", "store"]


def _failing_np_save(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    calls: list[int] = []
    real_save = np.save

    def flaky_save(*args: object, **kwargs: object) -> None:
        calls.append(1)
        if len(calls) > 1:
            raise OSError("disk full (simulated)")
        real_save(*args, **kwargs)

    monkeypatch.setattr(store_mod.np, "save", flaky_save)
    return calls


def test_failed_write_leaves_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls = _failing_np_save(monkeypatch)
    with pytest.raises(OSError, match="simulated"):
        write_store(tmp_path / "s", **_inputs())
    assert len(calls) == 2  # it failed midway, after writing one file
    assert list(tmp_path.iterdir()) == []


def test_failed_overwrite_keeps_old_store(store_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    fp = FeatureStore.open(store_dir).fingerprint()
    _failing_np_save(monkeypatch)
    with pytest.raises(OSError, match="simulated"):
        write_store(store_dir, **_inputs(seed=1), overwrite=True)
    assert FeatureStore.open(store_dir).fingerprint() == fp
    assert [p.name for p in store_dir.parent.iterdir()] == ["store"]


def test_failed_validation_leaves_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*args: object, **kwargs: object) -> None:
        raise StoreError("validation failed (simulated)")

    monkeypatch.setattr(FeatureStore, "open", refuse)
    with pytest.raises(StoreError, match="simulated"):
        write_store(tmp_path / "s", **_inputs())
    assert list(tmp_path.iterdir()) == []


# ----------------------------------------------------------------------------- scale, real data
@pytest.mark.slow
def test_paper_scale_open_is_fast(tmp_path: Path) -> None:
    """A Flickr30k-sized fp16 store (31,014 x 512 images, 155,070 x 512 texts) opens in < 2 s."""
    rng = np.random.default_rng(0)
    n, m, d = 31014, 155070, 512
    root = tmp_path / "big"
    root.mkdir()
    for name, rows in (("image_emb.npy", n), ("text_emb.npy", m)):
        x = rng.standard_normal((rows, d), dtype=np.float32)
        np.save(root / name, (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float16))
    split = np.zeros(n, np.uint8)
    split[29000:30014], split[30014:] = 1, 2
    np.save(root / "image_split.npy", split)
    np.save(root / "text_image.npy", np.repeat(np.arange(n, dtype=np.int64), 5))
    (root / "images.txt").write_text("".join(f"{i}.jpg\n" for i in range(n)))
    (root / "captions.txt").write_text("".join(f"caption {t}\n" for t in range(m)))
    manifest = {
        "format": "xmr-features/1",
        "encoder": {"name": "random"},
        "joint_space": True,
        "image_dim": d,
        "text_dim": d,
        "num_images": n,
        "num_texts": m,
        "normalized": True,
        "splits": {"train": 29000, "val": 1014, "test": 1000},
    }
    (root / "manifest.json").write_text(json.dumps(manifest))
    t0 = time.perf_counter()
    s = FeatureStore.open(root)
    elapsed = time.perf_counter() - t0
    print(f"paper-scale open with all checks: {elapsed:.2f} s")
    assert s.num_texts == m
    assert elapsed < 2.0


@pytest.mark.parametrize(
    ("name", "joint", "dims"), [("zeroshot-bridge", True, (384, 384)), ("raw", False, (1280, 384))]
)
def test_real_shared_stores_open(
    shared_data: Path, name: str, joint: bool, dims: tuple[int, int]
) -> None:
    root = shared_data / "flickr8k-1k" / "features" / name
    if not root.is_dir():
        pytest.skip(f"{root} not found")
    s = FeatureStore.open(root)
    assert (s.num_images, s.num_texts) == (1000, 5000)
    assert (s.image_dim, s.text_dim) == dims
    assert s.joint_space is joint
    assert [s.split_image_ids(k).size for k in SPLITS] == [800, 100, 100]
    assert len(s.images()) == 1000 and len(s.captions()) == 5000
    assert s.images()[0].endswith(".jpg")
