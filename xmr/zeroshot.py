"""``xmr eval-zeroshot store=DIR [split=test] [ks=1,5,10]``: standard full-gallery Recall@K.

The sanity check before training: on the Flickr30k 1K test split of a store extracted with
open_clip ViT-B/32 (openai), expect image→text 78.9 / 94.9 / 98.2 and text→image 58.8 / 83.6 / 90.0
(open_clip's published numbers). Every caption of the split is a query over all images of the
split (hit if its image is in the top K); every image is a query over all captions (hit if any
of its captions is in the top K). Ties are broken pessimistically.
"""

from __future__ import annotations

import json
import sys

from xmr.data.store import FeatureStore
from xmr.metrics.zeroshot import full_gallery_recall
from xmr.utils.console import key_value_args, run_command

USAGE = "usage: xmr eval-zeroshot store=DIR [split=test] [ks=1,5,10]"


def zeroshot(store_path: str, split: str = "test", ks: tuple[int, ...] = (1, 5, 10)) -> dict:
    store = FeatureStore.open(store_path)
    if not store.joint_space:
        raise SystemExit(
            f"{store_path}/manifest.json: joint_space is false — cosine retrieval "
            "between image and text vectors is meaningless for this store"
        )
    img = store.split_image_ids(split)
    txt = store.split_text_ids(split)
    remap = {int(i): n for n, i in enumerate(img)}
    text_image = [remap[int(store.text_image[t])] for t in txt]
    import numpy as np

    return full_gallery_recall(
        np.asarray(store.image_emb[img], dtype=np.float32),
        np.asarray(store.text_emb[txt], dtype=np.float32),
        np.asarray(text_image, dtype=np.int64),
        ks=ks,
    )


def main(argv: list[str] | None = None) -> None:
    words = list(sys.argv[1:] if argv is None else argv)
    args, _ = key_value_args(words, USAGE, ("store", "split", "ks"), required=("store",))
    ks = tuple(int(k) for k in args.get("ks", "1,5,10").split(","))
    result = zeroshot(args["store"], args.get("split", "test"), ks)
    store = FeatureStore.open(args["store"], check_norms=False)
    enc = store.manifest.get("encoder", {})
    label = "SYNTHETIC" if enc.get("synthetic") else f"encoder={enc.get('name', '?')}"
    split = args.get("split", "test")
    print(f"full-gallery zero-shot retrieval, split={split}, {label}")
    for direction in ("i2t", "t2i"):
        vals = " ".join(f"R@{k}={100 * result[direction][f'recall@{k}']:.1f}" for k in ks)
        print(f"  {direction}: {vals}")
    print(json.dumps(result))


if __name__ == "__main__":
    run_command("eval-zeroshot", main)
