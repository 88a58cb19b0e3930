"""``xmr extract``: encode a captioned image dataset with open_clip into an ``xmr-features/1`` store.

Pipeline: a dataset adapter (:mod:`xmr.data.adapters`) lists images, captions, caption->image
index and splits; the open_clip model's own eval preprocessing and tokenizer feed its image and
text towers; each output row is L2-normalised; the store is written with
:func:`xmr.data.store.write_store` (atomic; ``float16`` by default).

Resumable. Work happens in ``<out>.partial/``::

    state.json                 what the chunks were computed with (model, weights, preprocessing,
                               dataset fingerprint, chunk size); a resumed run must match it
    chunks/image_00012.npy     float32 (n, D) L2-normalised rows of images [12 * C, 12 * C + n)
    chunks/text_00003.npy      likewise for captions

Each chunk is written to a temporary name and renamed, so a chunk file is complete or absent.
An interrupted run started again with the same config skips the finished chunks; at the end the
store is assembled, validated, published at ``out`` and the work dir removed. ``out`` never holds
a half-written store.

Weights: ``model.pretrained`` is an open_clip tag (``openai``: downloaded into open_clip's cache),
a local checkpoint file, or ``null`` = random initialisation (seeded by ``model.init_seed``; the
manifest says ``"random_init": true``; for tests and timing only). On an offline machine pass the
file as ``model.checkpoint`` and keep the tag in ``model.pretrained``: the tag still selects the
preprocessing and QuickGELU setting the weights were trained with. (open_clip 3.x no longer turns
QuickGELU on by itself for ``ViT-B-32`` + ``openai``; this module does, from the tag's config.)
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import logging
import os
import shutil
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import hydra
import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf

from xmr.data.adapters import CaptionDataset, DatasetError, build_dataset
from xmr.data.store import write_store
from xmr.utils.console import run_command
from xmr.utils.errors import UserError
from xmr.utils.io import WORK_STATE, WorkDirMismatch, atomic_write, resume_work_dir
from xmr.utils.paths import CONF_DIR

__all__ = ["ExtractError", "load_open_clip", "main", "run_extraction", "work_dir_for"]

log = logging.getLogger(__name__)

STATE_FORMAT = "xmr-extract-partial/1"
KINDS = ("image", "text")

#: Called after each chunk file is written: ``on_chunk(kind, chunk_index)``.
ChunkHook = Callable[[str, int], None]


class ExtractError(UserError, ValueError):
    """Invalid extraction config or an incompatible partial run; the message says what to do."""


def work_dir_for(out: str | os.PathLike[str]) -> Path:
    """The resumable work directory of a store at ``out``: ``<out>.partial``."""
    out = Path(out)
    return out.with_name(out.name + ".partial")


# ------------------------------------------------------------------------------------- model
def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(1 << 24):
            h.update(block)
    return h.hexdigest()


def _register_model_config(name: str, config: Mapping[str, Any] | str, where: Path) -> dict:
    """Make a custom open_clip architecture ``name`` known (``open_clip.add_model_config``).

    ``config`` is a dict with ``embed_dim``, ``vision_cfg``, ``text_cfg`` (open_clip's JSON model
    config) or the path of such a JSON file. Built-in names cannot be redefined.
    """
    import open_clip
    from open_clip import factory

    if isinstance(config, str):
        try:
            loaded = json.loads(Path(config).read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as exc:
            raise ExtractError(
                f"model.config: cannot read JSON model config {config} ({exc})"
            ) from exc
    else:
        loaded = dict(config)
    cfg = json.loads(json.dumps(loaded))  # plain, JSON-able copy
    missing = [k for k in ("embed_dim", "vision_cfg", "text_cfg") if k not in cfg]
    if missing:
        raise ExtractError(f"model.config: open_clip model config lacks keys {missing}")
    builtin_dir = Path(factory.__file__).parent / "model_configs"
    if (builtin_dir / f"{name}.json").exists():
        raise ExtractError(
            f"model.name={name!r} is a built-in open_clip model; give the custom model.config "
            "another name"
        )
    where.mkdir(parents=True, exist_ok=True)
    path = where / f"{name}.json"
    path.write_text(json.dumps(cfg, indent=1), encoding="utf-8")
    open_clip.add_model_config(path)
    return cfg


def load_open_clip(
    model_cfg: Mapping[str, Any], device: torch.device, config_dir: Path
) -> tuple[torch.nn.Module, Callable, Callable, dict]:
    """Build the open_clip model, eval preprocessing, tokenizer and a provenance dict.

    ``model_cfg`` keys: ``name``, ``pretrained`` (tag | file | null), ``checkpoint`` (file | null),
    ``config`` (custom architecture dict/JSON path | null), ``quick_gelu`` (null = follow the tag),
    ``init_seed``, ``precision``.
    """
    import open_clip

    name = str(model_cfg["name"])
    pretrained = model_cfg.get("pretrained")
    checkpoint = model_cfg.get("checkpoint")
    custom = model_cfg.get("config")
    info: dict[str, Any] = {"name": "open_clip", "model": name}
    if custom is not None:
        info["model_config"] = _register_model_config(name, custom, config_dir)
    elif name not in open_clip.list_models():
        raise ExtractError(
            f"model.name={name!r} is not an open_clip architecture (open_clip.list_models()); "
            "pass model.config to define one"
        )

    tag: str | None = None
    weights: str | None = None
    if checkpoint:
        path = Path(checkpoint)
        if not path.is_file():
            raise ExtractError(f"model.checkpoint: file not found: {path}")
        weights, tag = str(path.resolve()), (str(pretrained) if pretrained else None)
    elif pretrained and Path(str(pretrained)).is_file():
        weights = str(Path(str(pretrained)).resolve())
    elif pretrained:
        tag = weights = str(pretrained)
    tag_cfg: dict[str, Any] = {}
    if tag is not None:
        tag_cfg = dict(open_clip.get_pretrained_cfg(name, tag) or {})
        if not tag_cfg:
            raise ExtractError(
                f"model.pretrained={tag!r}: neither a file nor an open_clip tag of {name!r} "
                f"(known tags: {open_clip.list_pretrained_tags_by_model(name)})"
            )
    quick_gelu = model_cfg.get("quick_gelu")
    if quick_gelu is None:
        quick_gelu = bool(tag_cfg.get("quick_gelu", False))
    kwargs: dict[str, Any] = {}
    if checkpoint and tag_cfg:  # file weights: take the preprocessing the tag was trained with
        for src, dst in (
            ("mean", "image_mean"),
            ("std", "image_std"),
            ("interpolation", "image_interpolation"),
            ("resize_mode", "image_resize_mode"),
        ):
            if src in tag_cfg:
                kwargs[dst] = tag_cfg[src]

    random_init = weights is None
    seed = int(model_cfg.get("init_seed", 0))
    torch.manual_seed(seed)  # random init (and nothing else random) depends on it
    try:
        model, _, preprocess = open_clip.create_model_and_transforms(
            name,
            pretrained=weights,
            precision=str(model_cfg.get("precision", "fp32")),
            device=device,
            force_quick_gelu=bool(quick_gelu),
            **kwargs,
        )
    except RuntimeError as exc:
        if tag is not None and not checkpoint:
            raise ExtractError(
                f"could not obtain weights for model.pretrained={tag!r} ({exc}). On an offline "
                "machine, download the checkpoint elsewhere and pass "
                "model.checkpoint=/path/to/file (keep model.pretrained as the tag)"
            ) from exc
        raise
    model.eval()
    tokenizer = open_clip.get_tokenizer(name)
    info.update(
        {
            "pretrained": tag,
            "checkpoint": weights if weights != tag else None,
            "random_init": random_init,
            "quick_gelu": bool(quick_gelu),
            "precision": str(model_cfg.get("precision", "fp32")),
            "preprocess": {
                k: list(v) if isinstance(v, tuple) else v
                for k, v in open_clip.get_model_preprocess_cfg(model).items()
            },
            "context_length": int(getattr(model, "context_length", 0) or 0),
            "open_clip_version": open_clip.__version__,
            "torch_version": torch.__version__,
        }
    )
    if weights is not None and weights != tag:
        info["checkpoint_sha256"] = _sha256(Path(weights))
    if random_init:
        info["init_seed"] = seed
        info["note"] = "RANDOM INITIALISATION: not CLIP features; for tests and timing only"
        log.warning(
            "model.pretrained is null: %s is RANDOMLY INITIALISED (seed %d); the store's "
            "features are meaningless for retrieval (manifest encoder.random_init = true)",
            name,
            seed,
        )
    return model, preprocess, tokenizer, info


# ------------------------------------------------------------------------------------- data
class _ImageItems(torch.utils.data.Dataset):
    """Image ``i`` -> ``(preprocessed (3, H, W) tensor, ok flag)``; decoding errors name the file."""

    def __init__(self, ds: CaptionDataset, preprocess: Callable, skip_bad: bool) -> None:
        self.ds, self.preprocess, self.skip_bad = ds, preprocess, skip_bad

    def __len__(self) -> int:
        return self.ds.num_images

    def __getitem__(self, i: int) -> tuple[torch.Tensor, bool]:
        try:
            return self.preprocess(self.ds.load_image(i)), True
        except DatasetError:
            if not self.skip_bad:
                raise
            from PIL import Image

            return self.preprocess(Image.new("RGB", (8, 8))), False


class _TextItems(torch.utils.data.Dataset):
    """Caption ``t`` -> its text; :meth:`collate` tokenizes a batch to ``(b, context_length)``."""

    def __init__(self, ds: CaptionDataset, tokenizer: Callable) -> None:
        self.ds, self.tokenizer = ds, tokenizer

    def __len__(self) -> int:
        return self.ds.num_texts

    def __getitem__(self, t: int) -> str:
        return self.ds.captions[t]

    def collate(self, batch: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        return self.tokenizer(batch), torch.ones(len(batch), dtype=torch.bool)


def _chunk_path(work: Path, kind: str, k: int) -> Path:
    return work / "chunks" / f"{kind}_{k:05d}.npy"


def _chunk_done(path: Path, rows: int) -> bool:
    if not path.is_file():
        return False
    try:
        arr = np.load(path, mmap_mode="r", allow_pickle=False)
    except (ValueError, OSError, EOFError):
        return False
    return arr.ndim == 2 and arr.shape[0] == rows


def _save_chunk(path: Path, arr: np.ndarray) -> None:
    """Write one chunk file atomically (complete or absent)."""

    def write(tmp: Path) -> None:
        with open(tmp, "wb") as fh:
            np.save(fh, arr, allow_pickle=False)

    atomic_write(path, write)


def _encode_kind(
    kind: str,
    items: torch.utils.data.Dataset,
    encode: Callable[[torch.Tensor], torch.Tensor],
    *,
    work: Path,
    chunk_size: int,
    batch_size: int,
    num_workers: int,
    device: torch.device,
    progress: bool,
    on_chunk: ChunkHook | None,
) -> tuple[int, float]:
    """Encode every missing chunk of ``kind``; return (items encoded now, seconds taken)."""
    from tqdm.auto import tqdm

    n = len(items)  # type: ignore[arg-type]
    n_chunks = (n + chunk_size - 1) // chunk_size
    bounds = [(k, k * chunk_size, min(n, (k + 1) * chunk_size)) for k in range(n_chunks)]
    pending = [b for b in bounds if not _chunk_done(_chunk_path(work, kind, b[0]), b[2] - b[1])]
    done_items = n - sum(hi - lo for _, lo, hi in pending)
    if done_items:
        log.info(
            "%s: resuming, %d of %d chunks already done", kind, n_chunks - len(pending), n_chunks
        )
    # Batches never straddle a chunk, so a chunk's rows do not depend on where a run stopped.
    batches: list[list[int]] = []
    owner: list[tuple[int, bool]] = []  # (chunk index, last batch of its chunk)
    for k, lo, hi in pending:
        starts = list(range(lo, hi, batch_size))
        for j, s in enumerate(starts):
            batches.append(list(range(s, min(hi, s + batch_size))))
            owner.append((k, j == len(starts) - 1))
    if not batches:
        return 0, 0.0
    # Captions: tokenized in the main process (cheap); images: decoded by `num_workers` workers.
    text = items.collate if isinstance(items, _TextItems) else None
    loader = torch.utils.data.DataLoader(
        items,
        batch_sampler=batches,
        num_workers=0 if text else num_workers,
        collate_fn=text,
        pin_memory=device.type == "cuda",
        persistent_workers=False,
    )
    unit = "img" if kind == "image" else "cap"
    bar = tqdm(total=n, initial=done_items, unit=unit, desc=f"encode {kind}", disable=not progress)
    parts: list[np.ndarray] = []
    t0 = time.perf_counter()
    encoded = 0
    with torch.inference_mode():
        for (x, ok), (k, last) in zip(loader, owner, strict=True):
            feats = encode(x.to(device, non_blocking=True)).float()  # (b, D)
            feats = torch.nn.functional.normalize(feats, dim=-1)
            feats[~ok.to(device)] = float("nan")  # marks undecodable images (skip_missing)
            parts.append(feats.cpu().numpy())
            encoded += x.shape[0]
            bar.update(x.shape[0])
            if last:
                _save_chunk(_chunk_path(work, kind, k), np.concatenate(parts))
                parts = []
                if on_chunk is not None:
                    on_chunk(kind, k)
    bar.close()
    return encoded, time.perf_counter() - t0


def _assemble(work: Path, kind: str, n: int, chunk_size: int) -> np.ndarray:
    n_chunks = (n + chunk_size - 1) // chunk_size
    return np.concatenate(
        [np.load(_chunk_path(work, kind, k), allow_pickle=False) for k in range(n_chunks)]
    )


# ------------------------------------------------------------------------------------- driver
def _plain(cfg: Any) -> dict[str, Any]:
    if isinstance(cfg, DictConfig):
        # Key by key, skipping `paths`/`hydra`: their `${hydra:...}` interpolations only resolve
        # under @hydra.main, not with the compose API the tests use.
        return {
            str(k): OmegaConf.to_container(v, resolve=True) if OmegaConf.is_config(v) else v
            for k, v in ((k, cfg[k]) for k in cfg if k not in ("paths", "hydra"))
        }
    return json.loads(json.dumps(dict(cfg)))


def _prepare_work_dir(work: Path, key: dict[str, Any], restart: bool) -> None:
    """Make ``work`` the work directory of ``key``; refuse one made from another config."""
    if restart and work.exists():
        log.info("restart=true: removing %s", work)
        shutil.rmtree(work)
    chunks = work / "chunks"
    if not (work / WORK_STATE).is_file() and chunks.is_dir() and any(chunks.iterdir()):
        raise ExtractError(
            f"{work}: chunk files without {WORK_STATE}; delete the folder or pass restart=true"
        )
    try:
        resume_work_dir(work, key, fmt=STATE_FORMAT, on_mismatch="raise")
    except WorkDirMismatch as exc:
        raise ExtractError(
            f"{work / WORK_STATE}: the partial extraction there was made with a different "
            f"config (differs in: {exc.differs}); rerun with the same config to resume, or "
            f"pass restart=true (or delete {work}) to start over"
        ) from exc
    chunks.mkdir(exist_ok=True)


def run_extraction(cfg: Any, *, on_chunk: ChunkHook | None = None) -> Path:
    """Run ``xmr extract`` with config ``cfg`` (a ``DictConfig`` or mapping shaped like
    ``conf/extract.yaml``); return the path of the finished store.

    ``on_chunk(kind, k)`` is called after chunk ``k`` of ``kind`` (``image``/``text``) is on disk
    (tests use it to simulate an interruption).
    """
    c = _plain(cfg)
    if not c.get("out"):
        raise ExtractError("out: the path of the feature store to write is required")
    out = Path(c["out"])
    overwrite = bool(c.get("overwrite", False))
    if out.exists() and not overwrite:
        raise FileExistsError(f"{out}: a store already exists there (pass overwrite=true)")
    chunk_size, batch_size = int(c.get("chunk_size", 2048)), int(c.get("batch_size", 256))
    if chunk_size <= 0 or batch_size <= 0:
        raise ExtractError(
            f"chunk_size and batch_size must be positive, got {chunk_size}, {batch_size}"
        )
    dtype = str(c.get("dtype", "float16"))
    if dtype not in ("float16", "float32"):
        raise ExtractError(f"dtype must be float16 or float32, got {dtype!r}")
    dev = str(c.get("device", "auto"))
    device = (
        torch.device("cuda" if torch.cuda.is_available() else "cpu")
        if dev == "auto"
        else torch.device(dev)
    )
    skip_missing = bool(c.get("skip_missing", False))

    # 1. dataset
    ds = build_dataset(str(c["data_adapter"]), c)
    if c.get("max_images"):
        ds = ds.sample_images(int(c["max_images"]), seed=int(c.get("sample_seed", 0)))
    log.info(
        "%s: %d images (%s), %d captions", ds.name, ds.num_images, ds.split_counts(), ds.num_texts
    )
    empty = [s for s in ("train", "test") if ds.split_counts()[s] == 0]
    if empty:  # a store needs both (xmr.data.store); fail before encoding anything
        raise ExtractError(
            f"{ds.name}: no {' and no '.join(empty)} images ({ds.split_counts()}); a feature "
            "store needs train and test images (check the split source or split_fractions)"
        )

    # 2. model (custom architecture configs are written into the work dir)
    work = work_dir_for(out)
    model, preprocess, tokenizer, encoder = load_open_clip(
        c["model"], device, work / "model_config"
    )
    encoder["dataset_adapter"] = ds.name
    encoder["sources"] = ds.sources
    if c.get("max_images"):
        encoder["max_images"] = {"n": int(c["max_images"]), "seed": int(c.get("sample_seed", 0))}

    key = {
        "model": encoder["model"],
        "model_config": encoder.get("model_config"),
        "pretrained": encoder["pretrained"],
        "checkpoint": encoder.get("checkpoint"),
        "checkpoint_sha256": encoder.get("checkpoint_sha256"),
        "init_seed": encoder.get("init_seed"),
        "quick_gelu": encoder["quick_gelu"],
        "precision": encoder["precision"],
        "preprocess": encoder["preprocess"],
        "context_length": encoder["context_length"],
        "dataset": ds.fingerprint(),
        "num_images": ds.num_images,
        "num_texts": ds.num_texts,
        "chunk_size": chunk_size,
    }
    _prepare_work_dir(work, key, bool(c.get("restart", False)))

    # 3. encode, chunk by chunk
    speed: dict[str, float] = {}
    jobs: list[tuple[str, torch.utils.data.Dataset, Callable[[torch.Tensor], torch.Tensor]]] = [
        ("image", _ImageItems(ds, preprocess, skip_missing), model.encode_image),  # type: ignore[list-item]
        ("text", _TextItems(ds, tokenizer), model.encode_text),  # type: ignore[list-item]
    ]
    for kind, items, encode in jobs:
        n_done, secs = _encode_kind(
            kind,
            items,
            encode,
            work=work,
            chunk_size=chunk_size,
            batch_size=batch_size,
            num_workers=int(c.get("num_workers", 0)),
            device=device,
            progress=bool(c.get("progress", True)),
            on_chunk=on_chunk,
        )
        if n_done:
            speed[kind] = n_done / secs
            log.info(
                "%s: encoded %d in %.1f s (%.1f items/s on %s)",
                kind,
                n_done,
                secs,
                speed[kind],
                device,
            )

    # 4. assemble, drop undecodable images (skip_missing only), publish atomically
    image_emb = _assemble(work, "image", ds.num_images, chunk_size)  # (N_img, D)
    text_emb = _assemble(work, "text", ds.num_texts, chunk_size)  # (N_txt, D)
    bad = np.flatnonzero(~np.isfinite(image_emb).all(axis=1))
    skipped = dict(ds.skipped)
    if bad.size and not skip_missing:  # NaN rows come from an earlier skip_missing=true run
        raise DatasetError(
            f"{bad.size} images could not be decoded (first: "
            f"{[str(ds.image_path(i)) for i in bad[:5]]}); fix them, or pass skip_missing=true"
        )
    if bad.size:
        keep = np.setdiff1d(np.arange(ds.num_images), bad)
        keep_text = np.isin(ds.text_image, keep)
        skipped["corrupt_images"] = int(bad.size)
        skipped["corrupt_captions"] = int((~keep_text).sum())
        skipped["first_corrupt"] = [ds.images[i] for i in bad[:5]]
        log.warning(
            "skip_missing=true: dropped %d undecodable images and their %d captions (first: %s)",
            bad.size,
            skipped["corrupt_captions"],
            skipped["first_corrupt"],
        )
        text_emb = text_emb[keep_text]
        image_emb = image_emb[keep]
        ds = ds.subset(keep)
    encoder["skipped"] = skipped
    encoder["date"] = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
    path = write_store(
        out,
        image_emb=image_emb,
        text_emb=text_emb,
        text_image=ds.text_image,
        image_split=ds.image_split,
        images=ds.images,
        captions=ds.captions,
        encoder=encoder,
        joint_space=True,
        dtype=dtype,
        normalize=True,
        overwrite=overwrite,
    )
    shutil.rmtree(work)
    log.info("wrote %s (%d images, %d captions, %s)", path, ds.num_images, ds.num_texts, dtype)
    return path


@hydra.main(version_base="1.3", config_path=CONF_DIR, config_name="extract")
def main(cfg: DictConfig) -> None:
    """Entry point of ``xmr extract`` / ``python -m xmr.extract``: prints the store's path."""
    if cfg.get("threads"):
        torch.set_num_threads(int(cfg.threads))
    print(run_extraction(cfg))


if __name__ == "__main__":
    run_command("extract", main)
