"""Feature store: the on-disk format ``xmr-features/1`` and its validating reader and atomic writer.

A feature store is a directory that an encoder (CLIP via open_clip, a stand-in, the synthetic
generator) writes once and every later step reads, memory-mapped::

    manifest.json    {"format": "xmr-features/1", "encoder": {...provenance...},
                      "joint_space": bool, "image_dim": int, "text_dim": int,
                      "num_images": int, "num_texts": int, "normalized": bool,
                      "splits": {"train": n, "val": n, "test": n}}
    image_emb.npy    (num_images, image_dim) float16 | float32, rows L2-normalised
    text_emb.npy     (num_texts, text_dim)   float16 | float32, rows L2-normalised
    text_image.npy   (num_texts,) int64      index of the image each caption describes
    image_split.npy  (num_images,) uint8     0 train, 1 val, 2 test (a caption takes its image's)
    images.txt       num_images lines        image id / file name (non-blank, unique)
    captions.txt     num_texts lines         caption text, one line each

:meth:`FeatureStore.open` checks every invariant and raises :class:`StoreError` with a message
``"<file>: <rule broken>"``. :func:`write_store` writes atomically (temp sibling directory,
validate by re-opening, then :func:`xmr.utils.io.publish_dir`: fsync, rename), so a crash never
leaves a half-written store at ``path``.

Text files are UTF-8 and split on ``"\\n"`` only. The writer turns every line-breaking character
(``\\n``, ``\\r``, ``\\v``, ``\\f``, ``\\x1c``-``\\x1e``, ``\\x85``, ``\\u2028``, ``\\u2029``)
and every tab in a caption into one space each, so each caption is exactly one line whatever
tool reads it; image ids containing such characters are rejected (they name files).
"""

from __future__ import annotations

import codecs
import hashlib
import json
import os
import shutil
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from xmr.utils.errors import UserError
from xmr.utils.io import clean_stale_temps, owner_tag, publish_dir
from xmr.utils.lock import DirLock

__all__ = [
    "FORMAT",
    "NORM_TOLERANCE",
    "SPLITS",
    "FeatureStore",
    "StoreError",
    "first_stage_of",
    "read_manifest",
    "sanitize_caption",
    "write_store",
]

FORMAT = "xmr-features/1"
SPLITS: dict[str, int] = {"train": 0, "val": 1, "test": 2}
#: The two retrieval directions, in this order everywhere: t2i = a caption queries the images,
#: i2t = an image queries the captions.
DIRECTIONS: tuple[str, ...] = ("t2i", "i2t")
#: The order of the paper's tables (text retrieval first), for reports and logged tables.
TABLE_ORDER: tuple[str, ...] = ("i2t", "t2i")
DIRECTION_TITLES: dict[str, str] = {
    "i2t": "text retrieval (image → text)",
    "t2i": "image retrieval (text → image)",
}
REQUIRED_SPLITS = ("train", "test")
#: Largest allowed | ||x||_2 - 1 | for a row of a ``normalized: true`` store. float16 rounding of
#: a unit vector moves its norm by at most ~5e-4, so 1e-2 accepts any honest fp16 store.
NORM_TOLERANCE = 1e-2
#: Rows per chunk for the O(N * D) finite/norm scans (bounded memory, vectorised speed).
SCAN_CHUNK_ROWS = 32768

MANIFEST = "manifest.json"
IMAGE_EMB = "image_emb.npy"
TEXT_EMB = "text_emb.npy"
TEXT_IMAGE = "text_image.npy"
IMAGE_SPLIT = "image_split.npy"
IMAGES_TXT = "images.txt"
CAPTIONS_TXT = "captions.txt"
STORE_FILES = (MANIFEST, IMAGE_EMB, TEXT_EMB, TEXT_IMAGE, IMAGE_SPLIT, IMAGES_TXT, CAPTIONS_TXT)

_EMB_DTYPES = (np.dtype(np.float16), np.dtype(np.float32))
# Characters that str.splitlines() treats as line boundaries, plus tab.
_LINE_BREAKS = "\n\r\v\f\x1c\x1d\x1e\x85\u2028\u2029\t"
_CAPTION_TABLE = str.maketrans({c: " " for c in _LINE_BREAKS})


class StoreError(UserError, ValueError):
    """An invalid feature store (or invalid writer input); the message names file and rule."""


def _fail(root: Path, name: str, rule: str) -> StoreError:
    return StoreError(f"{root / name}: {rule}")


def _is_int(x: Any) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def _count_lines(path: Path) -> int:
    """Number of lines as :func:`_read_lines` splits them (``"\\n"`` separators only).

    Also checks that the file is valid UTF-8 (incrementally, in the same single pass), so that
    :meth:`FeatureStore.captions` / :meth:`FeatureStore.images` cannot fail later.
    """
    n = 0
    last = b""
    decoder = codecs.getincrementaldecoder("utf-8")()
    with open(path, "rb") as fh:
        try:
            while block := fh.read(1 << 22):
                n += block.count(b"\n")
                last = block[-1:]
                decoder.decode(block)
            decoder.decode(b"", final=True)
        except UnicodeDecodeError as exc:
            raise StoreError(
                f"{path}: not valid UTF-8 text ({exc.reason} at byte {exc.start})"
            ) from exc
    if last and last != b"\n":
        n += 1  # final line without a trailing newline
    return n


def _read_lines(path: Path) -> list[str]:
    # newline="": no universal-newline translation, so a stray "\r" never makes an extra line
    # (lines are split on "\n" only, exactly as _count_lines counts them).
    try:
        with open(path, encoding="utf-8", newline="") as fh:
            text = fh.read()
    except UnicodeDecodeError as exc:
        raise StoreError(f"{path}: not valid UTF-8 text ({exc.reason})") from exc
    lines = text.split("\n")
    if lines[-1] == "":
        lines.pop()
    return [line[:-1] if line.endswith("\r") else line for line in lines]


def _bad_norm(chunk: np.ndarray, sq: np.ndarray, start: int) -> str | None:
    """The rule broken by the first row of a finite float32 ``chunk`` (C, D) (rows ``start``,
    ``start + 1``, ...) whose cosine similarity float32 cannot compute, or None: a zero norm
    (the cosine of a zero vector is undefined), or a squared norm ``sq`` (C,) below float32's
    smallest normal number (flushed to zero during runs) or overflowing to inf (every similarity
    would be 0 or NaN)."""
    tiny = np.finfo(np.float32).tiny
    bad = ~((sq >= tiny) & np.isfinite(sq))
    if not bad.any():
        return None
    i = int(np.flatnonzero(bad)[0])
    norm = float(np.linalg.norm(chunk[i].astype(np.float64)))
    if norm == 0.0:
        return f"row {start + i} has L2 norm 0: the cosine similarity of a zero vector is undefined"
    limit = "underflows" if sq[i] < tiny else "overflows"
    return (
        f"row {start + i} has L2 norm {norm:.6g}: its square {limit} float32, so its cosine "
        "similarities cannot be computed (rescale the features)"
    )


def _scan_rows(arr: np.ndarray, root: Path, name: str, *, check_unit: bool) -> None:
    """Check that every row is finite and has L2 norm 1 ± NORM_TOLERANCE (``check_unit``) or,
    in a store that is not normalised, a norm float32 can compute cosines with (:func:`_bad_norm`).

    Works in float32 chunks of :data:`SCAN_CHUNK_ROWS` rows so a memory-mapped store is read once
    with bounded memory.
    """
    for start in range(0, arr.shape[0], SCAN_CHUNK_ROWS):
        chunk = np.asarray(arr[start : start + SCAN_CHUNK_ROWS], dtype=np.float32)  # (C, D)
        sq = np.einsum("ij,ij->i", chunk, chunk)  # (C,) squared norms
        if not np.isfinite(sq).all():
            bad = ~np.isfinite(chunk).all(axis=1)
            if bad.any():
                row = start + int(np.flatnonzero(bad)[0])
                raise _fail(root, name, f"non-finite value (NaN or inf) in row {row}")
        if not check_unit:
            rule = _bad_norm(chunk, sq, start)
            if rule is not None:
                raise _fail(root, name, rule)
            continue
        if not np.isfinite(sq).all():
            # Finite entries whose squares overflow float32: certainly not unit-norm.
            sq = np.einsum("ij,ij->i", chunk.astype(np.float64), chunk.astype(np.float64))
        dev = np.abs(np.sqrt(sq) - 1.0)  # (C,)
        if (dev > NORM_TOLERANCE).any():
            i = int(np.argmax(dev > NORM_TOLERANCE))
            raise _fail(
                root,
                name,
                f"row {start + i} has L2 norm {float(np.sqrt(sq[i])):.6g}, but manifest "
                f"says normalized: true (rows must have norm 1 ± {NORM_TOLERANCE})",
            )


def _bad_image_ids(ids: Sequence[str]) -> str | None:
    """The rule the image ids break, or None: each id non-blank and unique (they name files,
    and reports and predictions refer to images by them)."""
    seen: dict[str, int] = {}
    for i, s in enumerate(ids):
        if not s.strip():
            return f"image {i} (line {i + 1}) has an empty id; every image needs a unique id"
        if s in seen:
            return f"image {i} repeats the id {s!r} of image {seen[s]}; image ids must be unique"
        seen[s] = i
    return None


def _captionless_test_images(
    text_image: np.ndarray, image_split: np.ndarray, ids: Sequence[str]
) -> str | None:
    """The rule broken by test images that no caption describes, or None: such an image is an
    image->text query without any relevant caption (the test metrics would leave it out, and a
    test split without captions gives no text->image queries and NaN full-gallery results)."""
    described = np.bincount(text_image, minlength=len(image_split)) > 0  # (N_img,)
    bad = np.flatnonzero((image_split == SPLITS["test"]) & ~described)
    if bad.size == 0:
        return None
    first = int(bad[0])
    return (
        f"{bad.size} of {int((image_split == SPLITS['test']).sum())} test images have no caption "
        f"(first: image {first}, {ids[first]!r}); every test image needs at least one caption"
    )


def _load_npy(root: Path, name: str) -> np.ndarray:
    path = root / name
    if not path.is_file():
        raise _fail(root, name, "missing file")
    try:
        return np.load(path, mmap_mode="r", allow_pickle=False)
    except (ValueError, OSError, EOFError) as exc:
        raise _fail(root, name, f"not a readable .npy array ({exc})") from exc


#: ``encoder.kind`` of a store written by ``xmr embed`` (a trained pairwise model's embeddings).
EMBEDDED_KIND = "xmr-embed"
#: The first stage of an ordinary store: its own (CLIP, stand-in, synthetic) cosine.
COSINE = "cosine"


def read_manifest(store: str | os.PathLike[str]) -> dict[str, Any] | None:
    """A store's ``manifest.json`` read leniently (not validated: see :meth:`FeatureStore.open`),
    or None when it is missing or unreadable (a report on runs whose store is elsewhere)."""
    try:
        manifest = json.loads((Path(store) / MANIFEST).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return None
    return manifest if isinstance(manifest, dict) else None


def first_stage_of(store: str | os.PathLike[str] | Mapping[str, Any] | None) -> str:
    """The name of the first stage a store's cosine is: :data:`COSINE` for an encoder's store,
    the pairwise model's name (``infonce``, ``vsepp``, ...) for a store written by ``xmr embed``.

    ``store``: a store directory (its manifest is read leniently: a missing or unreadable one
    counts as :data:`COSINE`), or a manifest's ``encoder`` mapping."""
    if store is None:
        return COSINE
    if isinstance(store, Mapping):
        encoder: Any = store
    else:
        manifest = read_manifest(store)
        encoder = manifest.get("encoder") if manifest is not None else None
    if not isinstance(encoder, Mapping) or encoder.get("kind") != EMBEDDED_KIND:
        return COSINE
    if encoder.get("method"):
        return str(encoder["method"])
    # Stores written before the manifest named the method: InfoNCEModel -> infonce.
    return str(encoder.get("model", "embedded")).removesuffix("Model").lower()


def _check_manifest(root: Path) -> dict:
    path = root / MANIFEST
    if not path.is_file():
        raise _fail(root, MANIFEST, "missing file")
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise _fail(root, MANIFEST, f"not valid JSON ({exc})") from exc
    if not isinstance(manifest, dict):
        raise _fail(root, MANIFEST, "top level must be a JSON object")

    expected: dict[str, tuple[str, Any]] = {
        "format": ("a string", lambda v: isinstance(v, str)),
        "encoder": ("an object (encoder provenance)", lambda v: isinstance(v, dict)),
        "joint_space": ("a boolean", lambda v: isinstance(v, bool)),
        "normalized": ("a boolean", lambda v: isinstance(v, bool)),
        "image_dim": ("a positive integer", lambda v: _is_int(v) and v > 0),
        "text_dim": ("a positive integer", lambda v: _is_int(v) and v > 0),
        "num_images": ("a positive integer", lambda v: _is_int(v) and v > 0),
        "num_texts": ("a positive integer", lambda v: _is_int(v) and v > 0),
        "splits": ("an object {split: count}", lambda v: isinstance(v, dict)),
    }
    for key, (what, ok) in expected.items():
        if key not in manifest:
            raise _fail(root, MANIFEST, f"missing key {key!r}")
        if not ok(manifest[key]):
            raise _fail(root, MANIFEST, f"key {key!r} must be {what}, got {manifest[key]!r}")
    if manifest["format"] != FORMAT:
        raise _fail(root, MANIFEST, f"format must be {FORMAT!r}, got {manifest['format']!r}")
    splits = manifest["splits"]
    for name, n in splits.items():
        if name not in SPLITS:
            raise _fail(
                root, MANIFEST, f"unknown split {name!r} in 'splits' (known: {list(SPLITS)})"
            )
        if not _is_int(n) or n < 0:
            raise _fail(
                root, MANIFEST, f"splits[{name!r}] must be a non-negative integer, got {n!r}"
            )
    for name in REQUIRED_SPLITS:
        if splits.get(name, 0) <= 0:
            raise _fail(root, MANIFEST, f"split {name!r} must be present with at least one image")
    if sum(splits.values()) != manifest["num_images"]:
        raise _fail(
            root,
            MANIFEST,
            f"split counts {splits} sum to {sum(splits.values())}, "
            f"but num_images is {manifest['num_images']}",
        )
    return manifest


def _check_embedding(
    root: Path, name: str, arr: np.ndarray, rows: int, dim: int, rows_key: str, dim_key: str
) -> None:
    if arr.ndim != 2:
        raise _fail(root, name, f"must be 2-D (rows, dim), got shape {arr.shape}")
    if arr.shape[0] != rows:
        raise _fail(root, name, f"has {arr.shape[0]} rows, but manifest {rows_key} is {rows}")
    if arr.shape[1] != dim:
        raise _fail(root, name, f"has dim {arr.shape[1]}, but manifest {dim_key} is {dim}")
    if arr.dtype not in _EMB_DTYPES:
        raise _fail(root, name, f"dtype must be float16 or float32, got {arr.dtype}")


@dataclass(frozen=True)
class FeatureStore:
    """A validated, memory-mapped ``xmr-features/1`` store. Build it with :meth:`open`.

    Attributes:
        root: the store directory.
        manifest: the parsed ``manifest.json``.
        image_emb: ``(N_img, D_img)`` float16|float32, read-only memory map.
        text_emb: ``(N_txt, D_txt)`` float16|float32, read-only memory map.
        text_image: ``(N_txt,)`` int64, the image each caption describes.
        image_split: ``(N_img,)`` uint8, split code of each image (see :data:`SPLITS`).
    """

    root: Path
    manifest: dict
    image_emb: np.ndarray  # (N_img, D_img)
    text_emb: np.ndarray  # (N_txt, D_txt)
    text_image: np.ndarray  # (N_txt,) int64
    image_split: np.ndarray  # (N_img,) uint8

    @classmethod
    def open(cls, path: str | os.PathLike[str], *, check_norms: bool = True) -> FeatureStore:
        """Open and validate the store at ``path``.

        Checks, raising :class:`StoreError` (``"<file>: <rule>"``) on the first violation:
        directory and all seven files present; manifest is a JSON object with every key of the
        right type, ``format == "xmr-features/1"``, known split names with counts summing to
        ``num_images`` and non-empty ``train`` and ``test``; array ndim/shape/dtype agree with the
        manifest; ``text_image`` integer in ``[0, num_images)``; ``image_split`` integer codes in
        :data:`SPLITS` whose counts equal manifest ``splits``; line counts of ``images.txt`` and
        ``captions.txt``; image ids non-blank and unique; every test image described by at least
        one caption. With ``check_norms`` (default) it also scans both embedding matrices for
        NaN/inf and, when ``normalized: true``, for rows with ``| ||x|| - 1 | >``
        :data:`NORM_TOLERANCE`, otherwise for rows whose cosine float32 cannot compute (zero
        norm, squared norm underflowing or overflowing float32); pass ``check_norms=False`` to
        skip these O(N * D) scans when reopening a store already validated. A store may have no
        ``val`` images; training refuses it (:meth:`xmr.data.datamodule.XMRDataModule.setup`).
        """
        root = Path(path)
        if not root.is_dir():
            raise StoreError(f"{root}: missing feature-store directory")
        m = _check_manifest(root)

        image_emb = _load_npy(root, IMAGE_EMB)
        _check_embedding(
            root, IMAGE_EMB, image_emb, m["num_images"], m["image_dim"], "num_images", "image_dim"
        )
        text_emb = _load_npy(root, TEXT_EMB)
        _check_embedding(
            root, TEXT_EMB, text_emb, m["num_texts"], m["text_dim"], "num_texts", "text_dim"
        )

        text_image = _load_npy(root, TEXT_IMAGE)
        if text_image.ndim != 1 or text_image.shape[0] != m["num_texts"]:
            raise _fail(
                root,
                TEXT_IMAGE,
                f"shape must be (num_texts,) = ({m['num_texts']},), got {text_image.shape}",
            )
        if text_image.dtype.kind not in "iu":
            raise _fail(root, TEXT_IMAGE, f"dtype must be integer (int64), got {text_image.dtype}")
        text_image = np.asarray(text_image, dtype=np.int64)  # small: load into memory
        lo, hi = int(text_image.min()), int(text_image.max())
        if lo < 0 or hi >= m["num_images"]:
            bad = lo if lo < 0 else hi
            raise _fail(
                root,
                TEXT_IMAGE,
                f"image index {bad} out of range [0, num_images={m['num_images']})",
            )

        image_split = _load_npy(root, IMAGE_SPLIT)
        if image_split.ndim != 1 or image_split.shape[0] != m["num_images"]:
            raise _fail(
                root,
                IMAGE_SPLIT,
                f"shape must be (num_images,) = ({m['num_images']},), got {image_split.shape}",
            )
        if image_split.dtype.kind not in "iu":
            raise _fail(
                root, IMAGE_SPLIT, f"dtype must be integer (uint8), got {image_split.dtype}"
            )
        codes = np.asarray(image_split, dtype=np.int64)
        unknown = ~np.isin(codes, list(SPLITS.values()))
        if unknown.any():
            i = int(np.flatnonzero(unknown)[0])
            raise _fail(
                root,
                IMAGE_SPLIT,
                f"unknown split code {int(codes[i])} at image {i} (known: {SPLITS})",
            )
        counts = np.bincount(codes, minlength=len(SPLITS))
        for name, code in SPLITS.items():
            want = m["splits"].get(name, 0)
            if int(counts[code]) != want:
                raise _fail(
                    root,
                    IMAGE_SPLIT,
                    f"{int(counts[code])} images have split {name!r} (code {code}), "
                    f"but manifest splits[{name!r}] is {want}",
                )
        image_split = codes.astype(np.uint8)

        image_ids: list[str] = []
        for name, want, key in (
            (IMAGES_TXT, m["num_images"], "num_images"),
            (CAPTIONS_TXT, m["num_texts"], "num_texts"),
        ):
            if not (root / name).is_file():
                raise _fail(root, name, "missing file")
            if name == IMAGES_TXT:  # small: read whole, for the id rules below
                image_ids = _read_lines(root / name)
                got = len(image_ids)
            else:
                got = _count_lines(root / name)
            if got != want:
                raise _fail(root, name, f"has {got} lines, but manifest {key} is {want}")
        rule = _bad_image_ids(image_ids)
        if rule is not None:
            raise _fail(root, IMAGES_TXT, rule)
        rule = _captionless_test_images(text_image, image_split, image_ids)
        if rule is not None:
            raise _fail(root, TEXT_IMAGE, rule)

        if check_norms:
            _scan_rows(image_emb, root, IMAGE_EMB, check_unit=m["normalized"])
            _scan_rows(text_emb, root, TEXT_EMB, check_unit=m["normalized"])

        text_image.flags.writeable = False
        image_split.flags.writeable = False
        return cls(
            root=root,
            manifest=m,
            image_emb=image_emb,
            text_emb=text_emb,
            text_image=text_image,
            image_split=image_split,
        )

    # ----------------------------------------------------------------------------------- sizes
    @property
    def num_images(self) -> int:
        return int(self.manifest["num_images"])

    @property
    def num_texts(self) -> int:
        return int(self.manifest["num_texts"])

    @property
    def image_dim(self) -> int:
        return int(self.manifest["image_dim"])

    @property
    def text_dim(self) -> int:
        return int(self.manifest["text_dim"])

    @property
    def joint_space(self) -> bool:
        """True when image and text vectors share one space (cosine is meaningful, e.g. CLIP)."""
        return bool(self.manifest["joint_space"])

    @property
    def synthetic(self) -> bool:
        """True for a generated store (``xmr synth``), not one encoded from data."""
        return bool(self.manifest.get("encoder", {}).get("synthetic", False))

    @property
    def random_init(self) -> bool:
        """True when the store's encoder had random weights: ``xmr extract`` with
        ``model.pretrained=null`` records ``encoder.random_init: true``; an open_clip encoder with
        neither a pretrained tag nor a checkpoint counts too. Its features carry no retrieval
        signal."""
        enc = self.manifest.get("encoder", {})
        if "random_init" in enc:
            return bool(enc["random_init"])
        return enc.get("name") == "open_clip" and not (
            enc.get("pretrained") or enc.get("checkpoint")
        )

    @property
    def text_split(self) -> np.ndarray:
        """``(N_txt,)`` uint8: the split code of each caption's image."""
        return self.image_split[self.text_image]

    # ----------------------------------------------------------------------------------- text
    def images(self) -> list[str]:
        """Image ids (``images.txt``), one per image row; read on each call."""
        return _read_lines(self.root / IMAGES_TXT)

    def captions(self) -> list[str]:
        """Captions (``captions.txt``), one per text row; read on each call."""
        return _read_lines(self.root / CAPTIONS_TXT)

    # ----------------------------------------------------------------------------------- splits
    @staticmethod
    def _code(split: str) -> int:
        if split not in SPLITS:
            raise KeyError(f"unknown split {split!r}; known: {list(SPLITS)}")
        return SPLITS[split]

    def split_image_ids(self, split: str) -> np.ndarray:
        """``(n,)`` int64: ascending ids of the images in ``split``."""
        return np.flatnonzero(self.image_split == self._code(split)).astype(np.int64)

    def split_text_ids(self, split: str) -> np.ndarray:
        """``(m,)`` int64: ascending ids of the captions whose image is in ``split``."""
        return np.flatnonzero(self.text_split == self._code(split)).astype(np.int64)

    # ----------------------------------------------------------------------------------- identity
    def fingerprint(self) -> str:
        """A 16-hex-digit hash identifying this store's content.

        Hashes the format, sizes, dims, dtypes, splits and ``joint_space``/``normalized`` flags,
        the full ``text_image`` and ``image_split`` arrays, and up to 64 evenly spaced rows of
        each embedding matrix. Cheap (no full scan); candidate lists record it so that lists
        mined from another store are detected.
        """
        h = hashlib.sha256()
        m = self.manifest
        head = {
            k: m[k]
            for k in ("format", "joint_space", "normalized", "image_dim", "text_dim")
            + ("num_images", "num_texts")
        }
        head["splits"] = {k: m["splits"].get(k, 0) for k in SPLITS}
        head["dtypes"] = [str(self.image_emb.dtype), str(self.text_emb.dtype)]
        h.update(json.dumps(head, sort_keys=True).encode())
        h.update(np.ascontiguousarray(self.text_image, dtype="<i8").tobytes())
        h.update(np.ascontiguousarray(self.image_split, dtype=np.uint8).tobytes())
        for arr in (self.image_emb, self.text_emb):
            rows = np.unique(
                np.linspace(0, arr.shape[0] - 1, num=min(64, arr.shape[0])).astype(int)
            )
            sample = np.asarray(arr[rows], dtype=arr.dtype.newbyteorder("<"))
            h.update(np.ascontiguousarray(sample).tobytes())
        return h.hexdigest()[:16]


# ------------------------------------------------------------------------------------- writing
def sanitize_caption(caption: str) -> str:
    """Replace each line-breaking character and each tab by one space (see module docstring)."""
    return caption.translate(_CAPTION_TABLE)


def _normalized(x: np.ndarray, name: str, dtype: np.dtype, normalize: bool) -> np.ndarray:
    """Return ``x`` cast to ``dtype``, rows L2-normalised (in float32/64 chunks) if asked."""
    out = np.empty(x.shape, dtype=dtype)
    for start in range(0, x.shape[0], SCAN_CHUNK_ROWS):
        chunk = np.asarray(x[start : start + SCAN_CHUNK_ROWS], dtype=np.float64)  # (C, D)
        if not np.isfinite(chunk).all():
            row = start + int(np.flatnonzero(~np.isfinite(chunk).all(axis=1))[0])
            raise StoreError(f"{name}: non-finite value (NaN or inf) in row {row}")
        if normalize:
            norms = np.linalg.norm(chunk, axis=1, keepdims=True)  # (C, 1)
            if (norms == 0).any():
                row = start + int(np.flatnonzero(norms[:, 0] == 0)[0])
                raise StoreError(f"{name}: row {row} has zero norm and cannot be normalised")
            chunk = chunk / norms
        out[start : start + SCAN_CHUNK_ROWS] = chunk
        if not normalize:  # the rows as stored must allow cosines (FeatureStore.open checks it)
            stored = out[start : start + SCAN_CHUNK_ROWS].astype(np.float32)
            if not np.isfinite(stored).all():
                row = start + int(np.flatnonzero(~np.isfinite(stored).all(axis=1))[0])
                raise StoreError(f"{name}: row {row} is not finite once cast to {dtype}")
            rule = _bad_norm(stored, np.einsum("ij,ij->i", stored, stored), start)
            if rule is not None:
                raise StoreError(f"{name}: {rule}")
    return out


def _save_npy(path: Path, arr: np.ndarray) -> None:
    with open(path, "wb") as fh:
        np.save(fh, arr, allow_pickle=False)


def _save_text(path: Path, text: str) -> None:
    with open(path, "w", encoding="utf-8", newline="\n") as fh:
        fh.write(text)


def write_store(
    path: str | os.PathLike[str],
    *,
    image_emb: np.ndarray,
    text_emb: np.ndarray,
    text_image: np.ndarray | Sequence[int],
    image_split: np.ndarray | Sequence[int],
    images: Sequence[str],
    captions: Sequence[str],
    encoder: Mapping[str, Any],
    joint_space: bool,
    dtype: str = "float16",
    normalize: bool = True,
    overwrite: bool = False,
) -> Path:
    """Write an ``xmr-features/1`` store at ``path`` atomically and return ``Path(path)``.

    Args:
        image_emb: ``(N_img, D_img)`` array-like of finite floats.
        text_emb: ``(N_txt, D_txt)`` array-like of finite floats.
        text_image: ``(N_txt,)`` image index of each caption.
        image_split: ``(N_img,)`` split code of each image (:data:`SPLITS`).
        images: ``N_img`` image ids (no line breaks or tabs).
        captions: ``N_txt`` captions; line breaks and tabs become spaces (:func:`sanitize_caption`).
        encoder: provenance dict stored verbatim (must be JSON-serialisable).
        joint_space: whether image and text vectors share one space.
        dtype: ``"float16"`` (default) or ``"float32"`` for the stored embeddings.
        normalize: L2-normalise rows before casting. Manifest ``normalized`` is then true; without
            it, ``normalized`` records whether every stored row already has unit norm
            (within :data:`NORM_TOLERANCE`).
        overwrite: replace an existing store at ``path``; otherwise an existing path is an error.

    Files are written into ``<path>.tmp-<owner>`` (:func:`xmr.utils.io.owner_tag`), validated with :meth:`FeatureStore.open`, and
    only then published at ``path`` by :func:`xmr.utils.io.publish_dir` (fsync, rename; an
    existing store is swapped out in one step), so ``path`` never holds a mix. On any error the
    temp directory is removed and an old store stays untouched. Writers of one path take turns
    (``<path>.lock``, :class:`xmr.utils.lock.DirLock`): a second one waits for the first.
    """
    target = Path(path)
    if target.exists() and not overwrite:
        raise FileExistsError(f"{target}: already exists (pass overwrite=True to replace it)")
    if dtype not in ("float16", "float32"):
        raise StoreError(f"dtype: must be 'float16' or 'float32', got {dtype!r}")
    out_dtype = np.dtype(dtype)

    img = np.asarray(image_emb)
    txt = np.asarray(text_emb)
    t2i = np.asarray(text_image)
    split = np.asarray(image_split)
    for name, arr in (("image_emb", img), ("text_emb", txt)):
        if arr.ndim != 2 or arr.shape[0] == 0 or arr.shape[1] == 0:
            raise StoreError(f"{name}: must be a non-empty 2-D array, got shape {arr.shape}")
    if t2i.shape != (txt.shape[0],) or t2i.dtype.kind not in "iu":
        raise StoreError(
            f"text_image: must be ({txt.shape[0]},) integers, got {t2i.shape} {t2i.dtype}"
        )
    if split.shape != (img.shape[0],) or split.dtype.kind not in "iu":
        raise StoreError(
            f"image_split: must be ({img.shape[0]},) integers, got {split.shape} {split.dtype}"
        )
    if not np.isin(split, list(SPLITS.values())).all():
        raise StoreError(f"image_split: codes must be in {SPLITS}")
    if len(images) != img.shape[0]:
        raise StoreError(f"images: {len(images)} ids for {img.shape[0]} image rows")
    if len(captions) != txt.shape[0]:
        raise StoreError(f"captions: {len(captions)} captions for {txt.shape[0]} text rows")
    image_ids = [str(s) for s in images]
    for i, s in enumerate(image_ids):
        if any(c in s for c in _LINE_BREAKS):
            raise StoreError(f"images: id {i} ({s!r}) contains a line break or tab")
    rule = _bad_image_ids(image_ids)
    if rule is not None:
        raise StoreError(f"images: {rule}")
    if t2i.min() >= 0 and t2i.max() < img.shape[0]:  # else FeatureStore.open names the index
        rule = _captionless_test_images(t2i.astype(np.int64), split, image_ids)
        if rule is not None:
            raise StoreError(f"text_image: {rule}")
    caption_lines = [sanitize_caption(str(c)) for c in captions]
    if not isinstance(encoder, Mapping):
        raise StoreError(f"encoder: must be a dict of provenance, got {type(encoder).__name__}")

    img_out = _normalized(img, "image_emb", out_dtype, normalize)
    txt_out = _normalized(txt, "text_emb", out_dtype, normalize)
    if normalize:
        normalized = True
    else:
        normalized = all(
            bool(np.all(np.abs(np.linalg.norm(a.astype(np.float32), axis=1) - 1) <= NORM_TOLERANCE))
            for a in (img_out, txt_out)
        )
    counts = np.bincount(split.astype(np.int64), minlength=len(SPLITS))
    manifest = {
        "format": FORMAT,
        "encoder": dict(encoder),
        "joint_space": bool(joint_space),
        "image_dim": int(img.shape[1]),
        "text_dim": int(txt.shape[1]),
        "num_images": int(img.shape[0]),
        "num_texts": int(txt.shape[0]),
        "normalized": normalized,
        "splits": {name: int(counts[code]) for name, code in SPLITS.items()},
    }
    try:
        manifest_text = json.dumps(manifest, indent=1, allow_nan=False) + "\n"
    except (TypeError, ValueError) as exc:
        raise StoreError(f"encoder: provenance must be JSON-serialisable ({exc})") from exc

    # One writer per store path at a time (xmr.utils.lock): a second one waits here and then
    # finds the store published (an error unless it replaces it).
    with DirLock(target, what="writing a feature store"):
        target.parent.mkdir(parents=True, exist_ok=True)
        clean_stale_temps(target.parent)  # stores half-written by processes that are gone
        tmp = target.with_name(f"{target.name}.tmp-{owner_tag()}")
        if tmp.exists():
            shutil.rmtree(tmp)  # leftover of a crashed write by a process with the same pid
        try:
            tmp.mkdir()
            _save_npy(tmp / IMAGE_EMB, img_out)
            _save_npy(tmp / TEXT_EMB, txt_out)
            _save_npy(tmp / TEXT_IMAGE, t2i.astype(np.int64))
            _save_npy(tmp / IMAGE_SPLIT, split.astype(np.uint8))
            _save_text(tmp / IMAGES_TXT, "".join(s + "\n" for s in image_ids))
            _save_text(tmp / CAPTIONS_TXT, "".join(s + "\n" for s in caption_lines))
            _save_text(tmp / MANIFEST, manifest_text)  # last: a store without it never validates
            FeatureStore.open(tmp)  # validate before publishing
            if target.exists() and not overwrite:
                raise FileExistsError(f"{target}: appeared while writing (overwrite=False)")
            publish_dir(tmp, target, replace=overwrite)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    return target
