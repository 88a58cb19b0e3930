"""Fuzz the feature-store reader: random corruptions of a small store are read safely or refused.

Each example copies a small valid store, applies one or two random corruptions (flipped bytes in
the ``.npy`` files, truncated or deleted files, edited manifest fields, other dtypes or shapes,
NaN/inf rows, out-of-range indices, undecodable text) and opens it. The oracle:

- either :meth:`FeatureStore.open` raises :class:`StoreError` (never another exception type),
- or the store opens, and then everything training reads from it is safe: arrays have the
  manifest's shapes and allowed dtypes, every value is finite and every row unit-norm (the store
  says ``normalized``), ``text_image`` indexes an existing image, split codes are known, the text
  files decode, the fingerprint is computable, and lists can be mined from it (or mining refuses
  with :class:`ListsError`).

What the oracle cannot see: a corruption that turns a value into another *valid* value (a caption
re-pointed to another existing image, a low mantissa bit of an embedding) is indistinguishable
from a store that was written that way; the format has no checksums.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from xmr.data.mining import ListsError, mine_lists
from xmr.data.store import (
    NORM_TOLERANCE,
    SPLITS,
    STORE_FILES,
    FeatureStore,
    StoreError,
    write_store,
)

NPY_FILES = ("image_emb.npy", "text_emb.npy", "text_image.npy", "image_split.npy")
TEXT_FILES = ("images.txt", "captions.txt")
MANIFEST_KEYS = (
    "format",
    "encoder",
    "joint_space",
    "normalized",
    "image_dim",
    "text_dim",
    "num_images",
    "num_texts",
    "splits",
)


@pytest.fixture(scope="module")
def clean_store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """12 images (6/3/3), 2 captions each, 8-d float16, a joint space (SYNTHETIC random data)."""
    rng = np.random.default_rng(0)
    n, d = 12, 8
    img = rng.normal(size=(n, d))
    text_image = np.repeat(np.arange(n), 2)
    txt = img[text_image] + 0.5 * rng.normal(size=(2 * n, d))
    split = np.array([0] * 6 + [1] * 3 + [2] * 3, dtype=np.uint8)
    return write_store(
        tmp_path_factory.mktemp("fuzz") / "store",
        image_emb=img,
        text_emb=txt,
        text_image=text_image,
        image_split=split,
        images=[f"img{i}.jpg" for i in range(n)],
        captions=[f"caption {i} of image {i // 2}" for i in range(2 * n)],
        encoder={"name": "fuzz-synthetic"},
        joint_space=True,
    )


# ------------------------------------------------------------------------------ corruptions
json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**40), max_value=2**40)
    | st.floats(allow_nan=False)
    | st.text(max_size=8),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3)
    ),
    max_leaves=6,
)

flip = st.tuples(st.just("flip"), st.sampled_from(NPY_FILES), st.floats(0, 1), st.integers(1, 255))
truncate = st.tuples(st.just("truncate"), st.sampled_from(STORE_FILES), st.floats(0, 0.999))
delete = st.tuples(st.just("delete"), st.sampled_from(STORE_FILES))
manifest_set = st.tuples(st.just("manifest_set"), st.sampled_from(MANIFEST_KEYS), json_values)
manifest_int = st.tuples(
    st.just("manifest_set"),
    st.sampled_from(("image_dim", "text_dim", "num_images", "num_texts")),
    st.integers(-3, 40),
)
manifest_split = st.tuples(
    st.just("manifest_set"),
    st.just("splits"),
    st.dictionaries(st.sampled_from(("train", "val", "test", "extra")), st.integers(-1, 12)),
)
manifest_del = st.tuples(st.just("manifest_del"), st.sampled_from(MANIFEST_KEYS))
dtype_change = st.tuples(
    st.just("dtype"),
    st.sampled_from(NPY_FILES),
    st.sampled_from(
        ("float16", "float32", "float64", "int8", "int32", "int64", "uint8", "bool", ">f2", ">i8")
    ),
)
shape_change = st.tuples(
    st.just("shape"), st.sampled_from(NPY_FILES), st.sampled_from(("drop_row", "add_col", "flat"))
)
inject = st.tuples(
    st.just("inject"),
    st.sampled_from(NPY_FILES),
    st.sampled_from((np.nan, np.inf, -np.inf, 0.0, 3.0, -1.0, 12.0, 2**40)),
    st.integers(0, 23),
)
text_edit = st.tuples(
    st.just("text"),
    st.sampled_from(TEXT_FILES),
    st.sampled_from(("add_line", "drop_line", "bad_utf8", "no_final_newline", "crlf")),
)
corruption = st.one_of(
    flip,
    truncate,
    delete,
    manifest_set,
    manifest_int,
    manifest_split,
    manifest_del,
    dtype_change,
    shape_change,
    inject,
    text_edit,
)


def _apply(root: Path, c: tuple) -> None:
    kind, name = c[0], c[1]
    path = root / name if kind not in ("manifest_set", "manifest_del") else root / "manifest.json"
    if not path.exists():
        return  # an earlier corruption deleted it
    if kind == "flip":
        data = bytearray(path.read_bytes())
        if data:
            i = min(int(c[2] * len(data)), len(data) - 1)
            data[i] ^= c[3]
            path.write_bytes(bytes(data))
    elif kind == "truncate":
        data = path.read_bytes()
        path.write_bytes(data[: int(c[2] * len(data))])
    elif kind == "delete":
        path.unlink()
    elif kind in ("manifest_set", "manifest_del"):
        try:
            m = json.loads(path.read_text())
        except (ValueError, UnicodeDecodeError):
            return
        if not isinstance(m, dict):
            return
        if kind == "manifest_set":
            m[name] = c[2]
        else:
            m.pop(name, None)
        path.write_text(json.dumps(m))
    else:
        try:
            arr = np.load(path, allow_pickle=False)
        except (ValueError, OSError, EOFError):
            arr = None
        if kind == "text":
            data = path.read_bytes()
            edit = c[2]
            if edit == "add_line":
                data += b"one line too many\n"
            elif edit == "drop_line":
                data = b"\n".join(data.split(b"\n")[1:])
            elif edit == "bad_utf8":
                data = b"\xff\xfe caption \xc3\x28\n" + data.split(b"\n", 1)[-1]
            elif edit == "no_final_newline":
                data = data.rstrip(b"\n")
            else:
                data = data.replace(b"\n", b"\r\n")
            path.write_bytes(data)
            return
        if arr is None:
            return
        if kind == "dtype":
            with np.errstate(all="ignore"):
                arr = arr.astype(c[2])
        elif kind == "shape":
            if c[2] == "drop_row":
                arr = arr[:-1]
            elif c[2] == "add_col":
                arr = np.concatenate([arr.reshape(arr.shape[0], -1)] * 2, axis=1)
            else:
                arr = arr.reshape(-1)
        elif kind == "inject":
            flat = np.array(arr).reshape(-1)
            value = c[2]
            if flat.size and (flat.dtype.kind == "f" or np.isfinite(value)):
                with np.errstate(all="ignore"):
                    flat[c[3] % flat.size] = np.array(value).astype(flat.dtype)
            arr = flat.reshape(arr.shape)
        np.save(path, arr, allow_pickle=False)


def _assert_training_safe(fs: FeatureStore, tmp: Path) -> None:
    """A store that opened must be safe for everything training does with it."""
    m = fs.manifest
    assert fs.image_emb.shape == (m["num_images"], m["image_dim"])
    assert fs.text_emb.shape == (m["num_texts"], m["text_dim"])
    for emb in (fs.image_emb, fs.text_emb):
        assert emb.dtype in (np.dtype(np.float16), np.dtype(np.float32))
        x = np.asarray(emb, dtype=np.float64)
        assert np.isfinite(x).all()
        if m["normalized"]:
            assert np.all(np.abs(np.linalg.norm(x, axis=1) - 1) <= NORM_TOLERANCE)
    assert fs.text_image.shape == (m["num_texts"],)
    assert fs.text_image.min() >= 0 and fs.text_image.max() < m["num_images"]
    assert fs.image_split.shape == (m["num_images"],)
    assert set(np.unique(fs.image_split)) <= set(SPLITS.values())
    assert len(fs.images()) == m["num_images"] and len(fs.captions()) == m["num_texts"]
    assert len(fs.fingerprint()) == 16
    for split in SPLITS:
        ids = fs.split_text_ids(split)
        assert ids.size == 0 or ids.max() < m["num_texts"]
    try:
        out = mine_lists(
            fs, tmp / "lists", pool=4, hard=2, strategy="random", splits=("train", "test")
        )
    except ListsError:
        return
    assert (out / "lists.json").is_file()


@settings(
    max_examples=100,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(corruptions=st.lists(corruption, min_size=1, max_size=2))
def test_random_corruption_is_read_safely_or_refused(clean_store: Path, corruptions) -> None:
    with tempfile.TemporaryDirectory() as d:
        root = Path(d) / "store"
        shutil.copytree(clean_store, root)
        for c in corruptions:
            _apply(root, c)
        try:
            fs = FeatureStore.open(root)
        except StoreError as exc:
            assert str(root) in str(exc)  # the message names the file
            event(f"refused: {c[0]} {str(exc).split(': ', 1)[1][:40]}")
            return
        event(f"opened after {[c[0] for c in corruptions]}")
        _assert_training_safe(fs, Path(d))


def test_clean_copy_opens(clean_store: Path) -> None:
    """The oracle itself: an uncorrupted store passes every training-safety check."""
    with tempfile.TemporaryDirectory() as d:
        _assert_training_safe(FeatureStore.open(clean_store), Path(d))
