"""Dataset adapters: turn an annotation file + an image folder into one :class:`CaptionDataset`.

A :class:`CaptionDataset` is what ``xmr extract`` encodes into an ``xmr-features/1`` store:
image ids (paths relative to ``image_root``), captions, the image each caption describes and the
split of each image (codes of :data:`xmr.data.store.SPLITS`: 0 train, 1 val, 2 test).

Adapters:

* :func:`load_flickr30k` -- Karpathy's ``dataset_flickr30k.json`` + the ``flickr30k-images``
  folder (29,000 train / 1,014 val / 1,000 test images, 155,070 captions);
* :func:`load_coco` -- Karpathy's ``dataset_coco.json`` + the COCO 2014 image folder (image path
  ``<image_root>/<filepath>/<filename>``; the 5K ``test`` split; ``restval`` into train or dropped);
* :func:`load_caption_folder` -- a CSV/TSV with a header, one ``(image, caption[, split])`` row per
  caption, any number of captions per image; split from a column, from an existing feature store,
  or a seeded random split by fractions.

Every adapter checks that the image files exist. Missing files raise :class:`DatasetError` with
their count, the first few paths and how to obtain the data; with ``skip_missing=True`` the
missing images (and their captions) are dropped instead and reported in
:attr:`CaptionDataset.skipped` (which ``xmr extract`` copies into the store's manifest). Images
that exist but cannot be decoded are detected when they are read (:meth:`CaptionDataset.load_image`).
"""

from __future__ import annotations

import csv
import hashlib
import json
import logging
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from xmr.data.store import SPLITS, FeatureStore
from xmr.utils.errors import UserError

__all__ = [
    "ADAPTERS",
    "CaptionDataset",
    "DatasetError",
    "build_dataset",
    "load_caption_folder",
    "load_coco",
    "load_flickr30k",
    "load_karpathy",
]

log = logging.getLogger(__name__)

#: How many missing / problematic paths an error message lists.
SHOW_FIRST = 5

FLICKR30K_HELP = (
    "The Flickr30k photos are not distributed with the annotations. Request them through the "
    "dataset's official form (https://shannon.cs.illinois.edu/DenotationGraph/ , Young et al. "
    "2014; non-commercial research use), unpack the archive and point image_root at its "
    "'flickr30k-images/' folder, so that <image_root>/1000092795.jpg exists."
)
COCO_HELP = (
    "Download the COCO 2014 images (train2014.zip and val2014.zip from "
    "https://cocodataset.org/#download) and unpack both into image_root, so that "
    "<image_root>/val2014/COCO_val2014_000000391895.jpg exists (Karpathy's 'filepath' field "
    "names the sub-folder)."
)
FOLDER_HELP = (
    "Image paths in the caption table are taken relative to image_root (default: the table's own "
    "folder); check the image column and image_root."
)


class DatasetError(UserError, ValueError):
    """Invalid or incomplete dataset input; the message names the file and the rule broken."""


@dataclass(frozen=True)
class CaptionDataset:
    """Images with captions and a split, ready to be encoded.

    Attributes:
        name: adapter name (``flickr30k``, ``coco``, ``folder``).
        image_root: folder the image ids are relative to.
        images: ``N_img`` image ids (relative paths; what the store's ``images.txt`` holds).
        captions: ``N_txt`` captions (single lines).
        text_image: ``(N_txt,)`` int64, index into ``images`` of the image each caption describes.
        image_split: ``(N_img,)`` uint8, 0 train / 1 val / 2 test.
        sources: provenance: absolute paths of the annotation file and image folder, options.
        skipped: report of what was dropped (``{"missing_images": n, "missing_captions": m,
            "first_missing": [...]}``); empty when nothing was.
    """

    name: str
    image_root: Path
    images: list[str]
    captions: list[str]
    text_image: np.ndarray  # (N_txt,) int64
    image_split: np.ndarray  # (N_img,) uint8
    sources: dict[str, Any] = field(default_factory=dict)
    skipped: dict[str, Any] = field(default_factory=dict)
    how_to_obtain: str = ""

    def __post_init__(self) -> None:
        n_img, n_txt = len(self.images), len(self.captions)
        if self.text_image.shape != (n_txt,):
            raise DatasetError(f"{self.name}: text_image must have shape ({n_txt},)")
        if self.image_split.shape != (n_img,):
            raise DatasetError(f"{self.name}: image_split must have shape ({n_img},)")
        if n_txt and (self.text_image.min() < 0 or self.text_image.max() >= n_img):
            raise DatasetError(f"{self.name}: text_image index out of range [0, {n_img})")

    # ------------------------------------------------------------------------------- sizes
    @property
    def num_images(self) -> int:
        return len(self.images)

    @property
    def num_texts(self) -> int:
        return len(self.captions)

    def split_counts(self) -> dict[str, int]:
        """Number of images per split name."""
        counts = np.bincount(self.image_split.astype(np.int64), minlength=len(SPLITS))
        return {name: int(counts[code]) for name, code in SPLITS.items()}

    def image_path(self, i: int) -> Path:
        """Absolute-or-root-relative path of image ``i`` on disk."""
        return self.image_root / self.images[i]

    def fingerprint(self) -> str:
        """16-hex hash of image ids, captions, caption->image index and splits (resume checks)."""
        h = hashlib.sha256()
        h.update("\n".join(self.images).encode())
        h.update(b"\0")
        h.update("\n".join(self.captions).encode())
        h.update(np.ascontiguousarray(self.text_image, dtype="<i8").tobytes())
        h.update(np.ascontiguousarray(self.image_split, dtype=np.uint8).tobytes())
        return h.hexdigest()[:16]

    # ------------------------------------------------------------------------------- images
    def load_image(self, i: int) -> Any:
        """Decode image ``i`` as an RGB ``PIL.Image``; :class:`DatasetError` names a bad file."""
        from PIL import Image

        path = self.image_path(i)
        try:
            with Image.open(path) as im:
                return im.convert("RGB")  # forces a full decode
        except FileNotFoundError as exc:
            raise DatasetError(
                f"{path}: image file is missing (image {i}). {self.how_to_obtain}"
            ) from exc
        except Exception as exc:  # PIL raises many types for broken files
            raise DatasetError(
                f"{path}: image file cannot be decoded (image {i}: {type(exc).__name__}: {exc}); "
                "replace the file, or remove it from the annotations"
            ) from exc

    def missing_images(self) -> list[int]:
        """Indices of images whose file does not exist."""
        return [i for i, rel in enumerate(self.images) if not (self.image_root / rel).is_file()]

    def subset(self, image_ids: Sequence[int] | np.ndarray) -> CaptionDataset:
        """The dataset restricted to ``image_ids`` (kept in the given order) and their captions."""
        keep = np.asarray(image_ids, dtype=np.int64)  # (n,)
        new_index = np.full(self.num_images, -1, dtype=np.int64)
        new_index[keep] = np.arange(keep.size)
        mapped = new_index[self.text_image]  # (N_txt,)
        texts = np.flatnonzero(mapped >= 0)
        return replace(
            self,
            images=[self.images[i] for i in keep],
            captions=[self.captions[t] for t in texts],
            text_image=mapped[texts],
            image_split=self.image_split[keep].copy(),
        )

    def sample_images(self, max_images: int, seed: int = 0) -> CaptionDataset:
        """A seeded random subset of ``max_images`` images and their captions, stratified by split.

        Each non-empty split gets ``round(max_images * n_split / N_img)`` images, at least one
        (the largest split absorbs the rounding difference), so small smoke-run subsets keep
        train, val and test. Images keep their original order.
        """
        if max_images <= 0:
            raise DatasetError(f"max_images must be positive, got {max_images}")
        if max_images >= self.num_images:
            return self
        rng = np.random.default_rng(seed)
        members = [np.flatnonzero(self.image_split == code) for code in SPLITS.values()]
        alloc = [
            max(1, round(max_images * m.size / self.num_images)) if m.size else 0 for m in members
        ]
        largest = int(np.argmax([m.size for m in members]))
        alloc[largest] = max(1, alloc[largest] + max_images - sum(alloc))
        keep = [
            rng.choice(m, size=min(a, m.size), replace=False)
            for m, a in zip(members, alloc, strict=True)
        ]
        return self.subset(np.sort(np.concatenate(keep)))

    def check_images(self, *, skip_missing: bool = False) -> CaptionDataset:
        """Check that every image file exists.

        Raises :class:`DatasetError` (count, first :data:`SHOW_FIRST` paths, how to get the data)
        when some are missing, unless ``skip_missing``: then those images and their captions are
        dropped, a warning is logged and :attr:`skipped` records the counts.
        """
        missing = self.missing_images()
        if not missing:
            return self
        first = [str(self.image_path(i)) for i in missing[:SHOW_FIRST]]
        root_note = (
            "" if self.image_root.is_dir() else f" (the folder {self.image_root} does not exist)"
        )
        if not skip_missing:
            raise DatasetError(
                f"{self.name}: {len(missing):,} of {self.num_images:,} image files are missing "
                f"under image_root={self.image_root}{root_note}; first missing: {first}. "
                f"{self.how_to_obtain} Or set skip_missing=true to drop missing images and their captions "
                "(reported in the manifest)."
            )
        missing_set = set(missing)
        keep = [i for i in range(self.num_images) if i not in missing_set]
        if not keep:
            raise DatasetError(
                f"{self.name}: all {self.num_images:,} image files are missing under "
                f"image_root={self.image_root}{root_note}; nothing to keep. {self.how_to_obtain}"
            )
        out = self.subset(keep)
        report = {
            "missing_images": len(missing),
            "missing_captions": self.num_texts - out.num_texts,
            "first_missing": [self.images[i] for i in missing[:SHOW_FIRST]],
        }
        log.warning(
            "%s: skip_missing=true: dropped %d missing images and their %d captions (first: %s)",
            self.name,
            report["missing_images"],
            report["missing_captions"],
            first,
        )
        return replace(out, skipped={**self.skipped, **report})


def _clean_caption(text: Any, where: str) -> str:
    if not isinstance(text, str):
        raise DatasetError(f"{where}: caption must be a string, got {type(text).__name__}")
    cleaned = " ".join(text.split())  # one line: collapse all whitespace, line breaks included
    if not cleaned:
        raise DatasetError(f"{where}: empty caption")
    return cleaned


# ----------------------------------------------------------------------------------- Karpathy
def load_karpathy(
    annotations: str | os.PathLike[str],
    image_root: str | os.PathLike[str],
    *,
    name: str = "karpathy",
    restval_to_train: bool = True,
    check_images: bool = True,
    skip_missing: bool = False,
    how_to_obtain: str = "",
) -> CaptionDataset:
    """Read a Karpathy-format split file (``dataset_{flickr8k,flickr30k,coco}.json``).

    Layout: ``{"images": [{"filename", ["filepath"], "split", "sentences": [{"raw", ...}]}]}``.
    An image's path is ``<image_root>/<filepath>/<filename>`` (``filepath`` only in COCO). Split
    ``train``/``val``/``test`` map to 0/1/2; ``restval`` (COCO) goes to train when
    ``restval_to_train`` and is dropped otherwise. Captions are the ``raw`` sentences, whitespace
    collapsed, in file order, grouped by image.
    """
    path = Path(annotations)
    if not path.is_file():
        raise DatasetError(
            f"{path}: annotation file not found. Karpathy's split files (dataset_flickr30k.json, "
            "dataset_coco.json) come in caption_datasets.zip from "
            "https://cs.stanford.edu/people/karpathy/deepimagesent/"
        )
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise DatasetError(f"{path}: not a readable JSON file ({exc})") from exc
    if not isinstance(data, dict) or not isinstance(data.get("images"), list):
        raise DatasetError(
            f"{path}: expected a JSON object with an 'images' list (Karpathy format)"
        )

    split_codes = dict(SPLITS)
    images: list[str] = []
    splits: list[int] = []
    captions: list[str] = []
    text_image: list[int] = []
    dropped_restval = 0
    for k, entry in enumerate(data["images"]):
        where = f"{path}: images[{k}]"
        if not isinstance(entry, dict):
            raise DatasetError(f"{where}: must be an object")
        for key in ("filename", "split", "sentences"):
            if key not in entry:
                raise DatasetError(f"{where}: missing field {key!r}")
        split = entry["split"]
        if split == "restval":
            if not restval_to_train:
                dropped_restval += 1
                continue
            code = SPLITS["train"]
        elif split in split_codes:
            code = split_codes[split]
        else:
            raise DatasetError(
                f"{where}: unknown split {split!r} (known: train, val, test, restval)"
            )
        rel = str(entry["filename"])
        if entry.get("filepath"):
            rel = f"{entry['filepath']}/{rel}"
        sentences = entry["sentences"]
        if not isinstance(sentences, list) or not sentences:
            raise DatasetError(f"{where} ({rel}): 'sentences' must be a non-empty list")
        img = len(images)
        images.append(rel)
        splits.append(code)
        for j, sent in enumerate(sentences):
            if not isinstance(sent, dict) or "raw" not in sent:
                raise DatasetError(f"{where}.sentences[{j}]: missing field 'raw'")
            captions.append(_clean_caption(sent["raw"], f"{where}.sentences[{j}].raw"))
            text_image.append(img)
    if not images:
        raise DatasetError(f"{path}: no images")
    if len(set(images)) != len(images):
        raise DatasetError(f"{path}: duplicate image file names")
    root = Path(image_root)
    ds = CaptionDataset(
        name=name,
        image_root=root,
        images=images,
        captions=captions,
        text_image=np.asarray(text_image, dtype=np.int64),
        image_split=np.asarray(splits, dtype=np.uint8),
        sources={
            "annotations": str(path.resolve()),
            "image_root": str(root.resolve()),
            "restval_to_train": restval_to_train,
            "dropped_restval_images": dropped_restval,
        },
        how_to_obtain=how_to_obtain,
    )
    return ds.check_images(skip_missing=skip_missing) if check_images else ds


def load_flickr30k(
    annotations: str | os.PathLike[str],
    image_root: str | os.PathLike[str],
    *,
    check_images: bool = True,
    skip_missing: bool = False,
) -> CaptionDataset:
    """Flickr30k with Karpathy's split: ``dataset_flickr30k.json`` + ``flickr30k-images/``.

    29,000 train / 1,014 val / 1,000 test images, 5 captions each (155,070 in all).
    """
    return load_karpathy(
        annotations,
        image_root,
        name="flickr30k",
        check_images=check_images,
        skip_missing=skip_missing,
        how_to_obtain=FLICKR30K_HELP,
    )


def load_coco(
    annotations: str | os.PathLike[str],
    image_root: str | os.PathLike[str],
    *,
    restval_to_train: bool = True,
    check_images: bool = True,
    skip_missing: bool = False,
) -> CaptionDataset:
    """MS-COCO with Karpathy's split: ``dataset_coco.json`` + the COCO 2014 images.

    Karpathy's file has 82,783 ``train``, 30,504 ``restval``, 5,000 ``val`` and 5,000 ``test``
    images; the usual protocol trains on train + restval (``restval_to_train=True``, 113,287
    images) and tests on the 5K test split.
    """
    return load_karpathy(
        annotations,
        image_root,
        name="coco",
        restval_to_train=restval_to_train,
        check_images=check_images,
        skip_missing=skip_missing,
        how_to_obtain=COCO_HELP,
    )


# ----------------------------------------------------------------------------------- folder
def _read_table(path: Path, delimiter: str | None) -> tuple[list[str], list[list[str]]]:
    if delimiter is None:
        delimiter = "\t" if path.suffix.lower() in (".tsv", ".tab", ".txt") else ","
    try:
        with open(path, encoding="utf-8", newline="") as fh:
            rows = list(csv.reader(fh, delimiter=delimiter, quoting=csv.QUOTE_MINIMAL))
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise DatasetError(f"{path}: cannot read the caption table ({exc})") from exc
    rows = [r for r in rows if r]  # blank lines
    if not rows:
        raise DatasetError(f"{path}: empty caption table (a header line is required)")
    return [h.strip() for h in rows[0]], rows[1:]


def load_caption_folder(
    captions_file: str | os.PathLike[str],
    image_root: str | os.PathLike[str] | None = None,
    *,
    image_column: str = "image",
    caption_column: str = "caption",
    split_column: str | None = None,
    delimiter: str | None = None,
    split_fractions: Sequence[float] = (0.8, 0.1, 0.1),
    split_seed: int = 0,
    split_from: str | os.PathLike[str] | None = None,
    check_images: bool = True,
    skip_missing: bool = False,
) -> CaptionDataset:
    """A generic captioned-image folder described by a CSV/TSV table with a header line.

    One row per caption: image path (relative to ``image_root``, default the table's folder),
    caption, and optionally a split (``train``/``val``/``test``) in ``split_column``. Captions are
    grouped by image (images in order of first appearance, captions in file order). The delimiter
    is a tab for ``.tsv``/``.tab``/``.txt`` files and a comma otherwise, unless given.

    Split of each image, in order of precedence:

    * ``split_column``: taken from the table (all rows of an image must agree);
    * ``split_from``: copied from an existing feature store (matched by image id = ``images.txt``
      line), e.g. to encode the images of a shared store again with another encoder;
    * otherwise a seeded random split: images shuffled with ``numpy.random.default_rng(split_seed)``,
      the first ``round(n * f_train)`` train, the next ``round(n * f_val)`` val, the rest test.
    """
    path = Path(captions_file)
    if not path.is_file():
        raise DatasetError(f"{path}: caption table not found")
    header, rows = _read_table(path, delimiter)
    wanted = [("image_column", image_column), ("caption_column", caption_column)]
    if split_column is not None:
        wanted.append(("split_column", split_column))
    cols: dict[str, int] = {}
    for key, col in wanted:
        if col not in header:
            raise DatasetError(f"{path}: {key}={col!r} is not a column of the header {header}")
        cols[key] = header.index(col)

    image_index: dict[str, int] = {}
    image_split_names: list[str | None] = []
    split_row: list[int] = []
    per_image: list[list[str]] = []
    for r, row in enumerate(rows, start=2):  # line numbers as an editor shows them
        where = f"{path}: line {r}"
        if len(row) != len(header):
            raise DatasetError(
                f"{where}: has {len(row)} fields, the header has {len(header)} "
                "(quote captions that contain the delimiter)"
            )
        rel = row[cols["image_column"]].strip()
        if not rel:
            raise DatasetError(f"{where}: empty image path")
        caption = _clean_caption(row[cols["caption_column"]], where)
        split_name = row[cols["split_column"]].strip() if split_column is not None else None
        if split_name is not None and split_name not in SPLITS:
            raise DatasetError(f"{where}: unknown split {split_name!r} (known: {list(SPLITS)})")
        img = image_index.get(rel)
        if img is None:
            img = image_index[rel] = len(per_image)
            per_image.append([])
            image_split_names.append(split_name)
            split_row.append(r)
        elif split_name != image_split_names[img]:
            raise DatasetError(
                f"{where}: image {rel!r} has split {split_name!r}, but line {split_row[img]} "
                f"gave it {image_split_names[img]!r} (all rows of an image must agree)"
            )
        per_image[img].append(caption)
    if not per_image:
        raise DatasetError(f"{path}: no caption rows after the header")

    images = list(image_index)
    captions = [c for caps in per_image for c in caps]
    text_image = np.repeat(np.arange(len(images)), [len(c) for c in per_image]).astype(np.int64)
    sources: dict[str, Any] = {"annotations": str(path.resolve())}
    if split_column is not None:
        image_split = np.asarray([SPLITS[s] for s in image_split_names], dtype=np.uint8)  # type: ignore[index]
        sources["split"] = f"column {split_column!r}"
    elif split_from is not None:
        image_split = _split_from_store(split_from, images, path)
        sources["split"] = f"from store {Path(split_from).resolve()}"
    else:
        image_split = _seeded_split(len(images), split_fractions, split_seed)
        sources["split"] = {"fractions": [float(f) for f in split_fractions], "seed": split_seed}
    root = Path(image_root) if image_root is not None else path.parent
    sources["image_root"] = str(root.resolve())
    ds = CaptionDataset(
        name="folder",
        image_root=root,
        images=images,
        captions=captions,
        text_image=text_image,
        image_split=image_split,
        sources=sources,
        how_to_obtain=FOLDER_HELP,
    )
    return ds.check_images(skip_missing=skip_missing) if check_images else ds


def _seeded_split(n: int, fractions: Sequence[float], seed: int) -> np.ndarray:
    """``(n,)`` uint8 split codes: a seeded shuffle cut by ``(train, val, test)`` fractions."""
    fr = [float(f) for f in fractions]
    if len(fr) != 3 or min(fr) < 0 or abs(sum(fr) - 1.0) > 1e-6:
        raise DatasetError(
            f"split_fractions must be three non-negative numbers (train, val, test) summing "
            f"to 1, got {list(fractions)}"
        )
    order = np.random.default_rng(seed).permutation(n)
    n_train = round(n * fr[0])
    n_val = min(round(n * fr[1]), n - n_train)
    split = np.full(n, SPLITS["test"], dtype=np.uint8)
    split[order[:n_train]] = SPLITS["train"]
    split[order[n_train : n_train + n_val]] = SPLITS["val"]
    return split


def _split_from_store(
    store_path: str | os.PathLike[str], images: Sequence[str], table: Path
) -> np.ndarray:
    store = FeatureStore.open(store_path, check_norms=False)
    store_split = dict(zip(store.images(), store.image_split.tolist(), strict=True))
    absent = [rel for rel in images if rel not in store_split]
    if absent:
        raise DatasetError(
            f"{table}: {len(absent)} images are not in the split_from store {store.root} "
            f"(images.txt); first: {absent[:SHOW_FIRST]}"
        )
    return np.asarray([store_split[rel] for rel in images], dtype=np.uint8)


# ----------------------------------------------------------------------------------- dispatch
ADAPTERS = ("flickr30k", "coco", "folder")


def build_dataset(adapter: str, options: Mapping[str, Any]) -> CaptionDataset:
    """Build a dataset from ``xmr extract``'s config: ``adapter`` in :data:`ADAPTERS`.

    ``options`` keys: ``annotations``, ``image_root``, ``skip_missing``, ``check_images``;
    ``restval_to_train`` (coco); ``folder`` = {``image_column``, ``caption_column``,
    ``split_column``, ``delimiter``, ``split_fractions``, ``split_seed``, ``split_from``} (folder).
    """
    if adapter not in ADAPTERS:
        raise DatasetError(f"data_adapter: unknown adapter {adapter!r} (known: {list(ADAPTERS)})")
    annotations = options.get("annotations")
    if not annotations:
        raise DatasetError(f"annotations: required for data_adapter={adapter}")
    image_root = options.get("image_root")
    common = {
        "check_images": bool(options.get("check_images", True)),
        "skip_missing": bool(options.get("skip_missing", False)),
    }
    if adapter in ("flickr30k", "coco") and not image_root:
        raise DatasetError(f"image_root: required for data_adapter={adapter}")
    if adapter == "flickr30k":
        return load_flickr30k(annotations, image_root, **common)  # type: ignore[arg-type]
    if adapter == "coco":
        return load_coco(
            annotations,
            image_root,  # type: ignore[arg-type]
            restval_to_train=bool(options.get("restval_to_train", True)),
            **common,
        )
    folder = dict(options.get("folder") or {})
    return load_caption_folder(
        annotations,
        image_root,
        image_column=folder.get("image_column", "image"),
        caption_column=folder.get("caption_column", "caption"),
        split_column=folder.get("split_column"),
        delimiter=folder.get("delimiter"),
        split_fractions=tuple(folder.get("split_fractions", (0.8, 0.1, 0.1))),
        split_seed=int(folder.get("split_seed", 0)),
        split_from=folder.get("split_from"),
        **common,
    )
