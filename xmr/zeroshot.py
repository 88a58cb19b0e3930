"""``xmr eval-zeroshot store=DIR [split=test] [ks=1,5,10]``: standard full-gallery Recall@K.

The sanity check before training: on the Flickr30k 1K test split of a store extracted with
open_clip ViT-B/32 (openai), expect image→text 78.9 / 94.9 / 98.2 and text→image 58.8 / 83.6 / 90.0
(open_clip's published numbers). Every caption of the split is a query over all images of the
split (hit if its image is in the top K); every image is a query over all captions (hit if any
of its captions is in the top K). Ties are broken pessimistically.

Each direction's line names its queries and gallery (e.g. 1000 test images over 5000 test
captions): recall depends on the gallery's size. A store extracted from a randomly initialised
encoder (``xmr extract encoder=tiny_random``, or any ``model.pretrained=null``; the manifest's
``encoder.random_init``) gets a WARNING line: its numbers are meaningless. The last line is the
numbers as JSON, with the sizes under ``"sizes"``.
"""

from __future__ import annotations

import json
import sys

import numpy as np

from xmr.data.store import FeatureStore
from xmr.metrics.zeroshot import full_gallery_recall
from xmr.utils.console import key_value_args, run_command

USAGE = "usage: xmr eval-zeroshot store=DIR [split=test] [ks=1,5,10]"

RANDOM_INIT_WARNING = (
    "WARNING: this store was extracted with a RANDOMLY INITIALISED encoder (manifest "
    "encoder.random_init: true, no pretrained weights): the numbers below are meaningless for "
    "retrieval (an untrained model's features, not CLIP's); extract with pretrained weights "
    "(docs/real_data.md) for numbers to compare."
)


def _open(store_path: str) -> FeatureStore:
    store = FeatureStore.open(store_path)
    if not store.joint_space:
        raise SystemExit(
            f"{store_path}/manifest.json: joint_space is false — cosine retrieval "
            "between image and text vectors is meaningless for this store"
        )
    return store


def _recall(store: FeatureStore, split: str, ks: tuple[int, ...]) -> dict:
    img = store.split_image_ids(split)
    txt = store.split_text_ids(split)
    remap = {int(i): n for n, i in enumerate(img)}
    text_image = [remap[int(store.text_image[t])] for t in txt]
    return full_gallery_recall(
        np.asarray(store.image_emb[img], dtype=np.float32),
        np.asarray(store.text_emb[txt], dtype=np.float32),
        np.asarray(text_image, dtype=np.int64),
        ks=ks,
    )


def zeroshot(store_path: str, split: str = "test", ks: tuple[int, ...] = (1, 5, 10)) -> dict:
    """``{"i2t": {"recall@K": ...}, "t2i": {...}}`` of the store at ``store_path`` on ``split``."""
    return _recall(_open(store_path), split, ks)


def gallery_sizes(store: FeatureStore, split: str = "test") -> dict[str, dict[str, int]]:
    """Per direction, the queries and the gallery each one ranks on ``split``: ``i2t`` = the
    images with a caption over all captions, ``t2i`` = the captions over all images."""
    images = store.split_image_ids(split)
    captions = store.split_text_ids(split)
    with_caption = int(np.unique(store.text_image[captions]).size)
    return {
        "i2t": {"queries": with_caption, "gallery": int(captions.size)},
        "t2i": {"queries": int(captions.size), "gallery": int(images.size)},
    }


def encoder_label(store: FeatureStore) -> str:
    """What encoded the store, as the header line says it."""
    enc = store.manifest.get("encoder", {})
    if store.synthetic:
        return "SYNTHETIC"
    label = f"encoder={enc.get('name', '?')}"
    if enc.get("model"):
        weights = "random init" if store.random_init else enc.get("pretrained") or "checkpoint"
        label += f" {enc['model']} ({weights})"
    return label


def result_lines(store: FeatureStore, split: str, ks: tuple[int, ...], result: dict) -> list[str]:
    """The lines ``xmr eval-zeroshot`` prints: header, the random-init WARNING when it applies,
    one line per direction with its queries and gallery, the JSON."""
    sizes = gallery_sizes(store, split)
    lines = [f"full-gallery zero-shot retrieval, split={split}, {encoder_label(store)}"]
    if store.random_init:
        lines.append(RANDOM_INIT_WARNING)
    kinds = {"i2t": ("images", "captions"), "t2i": ("captions", "images")}
    for direction in ("i2t", "t2i"):
        (q_kind, g_kind), n = kinds[direction], sizes[direction]
        vals = " ".join(f"R@{k}={100 * result[direction][f'recall@{k}']:.1f}" for k in ks)
        lines.append(
            f"  {direction}: {vals}   ({n['queries']} {split} {q_kind} over "
            f"{n['gallery']} {split} {g_kind})"
        )
    lines.append(json.dumps({**result, "sizes": sizes}))
    return lines


def main(argv: list[str] | None = None) -> None:
    words = list(sys.argv[1:] if argv is None else argv)
    args, _ = key_value_args(words, USAGE, ("store", "split", "ks"), required=("store",))
    ks = tuple(int(k) for k in args.get("ks", "1,5,10").split(","))
    split = args.get("split", "test")
    store = _open(args["store"])
    result = _recall(store, split, ks)
    print("\n".join(result_lines(store, split, ks, result)))


if __name__ == "__main__":
    run_command("eval-zeroshot", main)
