"""Synthetic feature stores shaped like Flickr30k + CLIP ViT-B/32 (seeded, deterministic).

Everything this module makes is **synthetic**: the manifest says ``"synthetic": true``, image ids
are ``synthetic_000123.jpg`` and captions read ``"synthetic caption: topic-7 concept-85 ..."``.
Use it to develop and test the pipeline at paper scale without CLIP weights or Flickr30k images;
never report its numbers as results on real data.

Generative model (all vectors in R^dim; ``unit(x) = x / ||x||``):

- ``num_topics`` topic vectors ``tau_t`` and, per topic, ``concepts_per_topic`` concept vectors
  ``u_{t,c}`` (all random unit vectors), so ``num_topics * concepts_per_topic`` shared concepts.
- Image i picks a topic ``t_i`` (Zipf popularity, exponent ``topic_zipf``: some scenes are
  common), ``k_i ~ U{min_concepts..max_concepts}`` distinct concepts of that topic with
  log-normal weights ``w`` (``||w|| = 1``), and a private detail vector ``d_i``::

      image_i = unit(topic_weight * tau + sum_c w_c u_c + image_detail * d_i
                     + modality_gap * a + shared_offset * s)

- Caption j of image i is a noisy partial view: it keeps each of the image's concepts with
  probability ``caption_keep``, sees ``caption_detail`` of the private detail, and adds isotropic
  noise ``caption_noise * n_j / sqrt(dim)``::

      text_ij = unit(topic_weight * tau + sum_{c kept} w_c u_c + caption_detail * d_i
                     + caption_noise * n_j / sqrt(dim) + modality_gap * b + shared_offset * s)

- ``a`` and ``b`` are distinct random directions: a constant per-modality offset before
  normalisation, i.e. CLIP's modality gap (images and texts sit in two separate cones);
  ``s`` is shared so unrelated image-text pairs have the small positive cosine CLIP shows.

Learnable structure (the paper and demo presets, :data:`LEARNABLE`; off when the two knobs are
0, which reproduces earlier stores bit for bit). Two seeded, fixed distortions that zero-shot
cosine cannot undo and a trained projection can:

- **caption nuisance**: a share ``nuisance_fraction`` of the caption noise's energy lies in a
  fixed ``nuisance_rank``-dimensional subspace ``N`` (orthonormal, from its own RNG stream)
  instead of being isotropic: ``caption_noise * (sqrt(1 - f) n / sqrt(dim) + sqrt(f) N z /
  sqrt(rank))`` (same expected energy). Cosine sees it as noise; a text head can project ``N``
  out.
- **image distortion**: every image vector goes through one fixed linear map ``M = (1 - b) I +
  b Q`` (``b = image_distortion``, ``Q`` a random rotation) before normalisation: cosine compares
  ``M x`` with text, an image head can learn ``M^-1``.

Headroom (what a learned model can gain over cosine; full gallery, R@1). Oracle = the exact
inverse of both distortions (nuisance projected out, ``M^-1`` applied), paper preset seed 0:
i2t 76.2 -> 90.1, t2i 56.9 -> 67.8. Trained InfoNCE heads re-ranking cosine's top 50 on the
demo store (15 epochs, seed 0): t2i 75.3 -> 80.3, i2t 92.0 -> 96.5; without the structure
(``caption_noise 2.2``, both knobs 0) the same run gave t2i 78.1 -> 77.9, i2t 91.0 -> 92.5.

Images of one topic form clusters of look-alikes (~17 per topic in a 1,000-image test split), so
errors are near misses and Recall@10 is much higher than Recall@1, as with CLIP.

Calibration (paper preset, its 1,000-image / 5,000-caption test split, full-gallery cosine,
measured with :func:`xmr.metrics.zeroshot.full_gallery_recall`; target = CLIP ViT-B/32 on
Flickr30k 1K, open_clip's published numbers):

    ============  ===================  ===================
                  i2t R@1 / R@5 / R@10  t2i R@1 / R@5 / R@10
    target        78.9 / 94.9 / 98.2   58.8 / 83.6 / 90.0
    seed 0        76.2 / 95.7 / 97.9   56.9 / 83.5 / 90.3
    seed 1        74.8 / 94.6 / 97.7   55.3 / 82.1 / 90.1
    seed 2        75.9 / 95.8 / 98.6   57.4 / 84.9 / 92.5
    ============  ===================  ===================

(Without the learnable structure — ``caption_noise 2.2``, nuisance and distortion 0 — seed 0
gave 79.2 / 95.9 / 98.3 and 61.3 / 85.6 / 92.0.) Mean cosine of matching pairs 0.31, of random
image-text pairs 0.09 (CLIP: ~0.3 / ~0.15). In a cosine-mined list the positive is beaten only
by look-alikes, so in-list R@1 >= full-gallery R@1 here (the paper reports 29.5 / 16.2 for
CLIP-cosine on its lists).
Paper-scale :func:`generate` takes 4-6.5 s, generating + writing the float16 store 8-10 s on
2 CPU cores; opening it with all checks 0.3-0.5 s.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from xmr.data.store import SPLITS, StoreError, write_store
from xmr.utils.instantiate import ConfigError

__all__ = [
    "PRESETS",
    "SynthConfig",
    "check_synthetic_store",
    "generate",
    "synth_config",
    "write_synthetic_store",
]

#: Images generated per vectorised step (fixed: part of the determinism contract).
_CHUNK_IMAGES = 4096


@dataclass(frozen=True)
class SynthConfig:
    """Sizes and structure knobs of a synthetic store (see the module docstring for the model)."""

    num_train: int = 29000
    num_val: int = 1014
    num_test: int = 1000
    captions_per_image: int = 5
    dim: int = 512
    seed: int = 0
    num_topics: int = 60
    concepts_per_topic: int = 12
    topic_zipf: float = 0.8
    topic_weight: float = 0.8
    min_concepts: int = 2
    max_concepts: int = 4
    concept_weight_sigma: float = 0.3
    image_detail: float = 0.7
    caption_keep: float = 0.6
    caption_detail: float = 0.1
    caption_noise: float = 2.2
    modality_gap: float = 0.8
    shared_offset: float = 0.7
    nuisance_rank: int = 0
    nuisance_fraction: float = 0.0
    image_distortion: float = 0.0

    def __post_init__(self) -> None:
        for name in ("num_train", "num_test", "captions_per_image", "dim", "num_topics"):
            if getattr(self, name) < 1:
                raise ConfigError(f"SynthConfig.{name} must be >= 1, got {getattr(self, name)}")
        if self.num_val < 0:
            raise ConfigError(f"SynthConfig.num_val must be >= 0, got {self.num_val}")
        if not 1 <= self.min_concepts <= self.max_concepts <= self.concepts_per_topic:
            raise ConfigError(
                "SynthConfig: need 1 <= min_concepts <= max_concepts <= concepts_per_topic, got "
                f"{self.min_concepts}, {self.max_concepts}, {self.concepts_per_topic}"
            )
        if not 0.0 <= self.caption_keep <= 1.0:
            raise ConfigError(
                f"SynthConfig.caption_keep must be in [0, 1], got {self.caption_keep}"
            )
        if not 0.0 <= self.nuisance_fraction <= 1.0:
            raise ConfigError(
                f"SynthConfig.nuisance_fraction must be in [0, 1], got {self.nuisance_fraction}"
            )
        if not 0.0 <= self.image_distortion < 1.0:
            raise ConfigError(
                f"SynthConfig.image_distortion must be in [0, 1), got {self.image_distortion}"
            )
        if self.nuisance_fraction > 0 and not 1 <= self.nuisance_rank <= self.dim:
            raise ConfigError(
                f"SynthConfig.nuisance_rank must be in [1, dim={self.dim}] when "
                f"nuisance_fraction > 0, got {self.nuisance_rank}"
            )

    @property
    def num_images(self) -> int:
        return self.num_train + self.num_val + self.num_test

    @property
    def num_texts(self) -> int:
        return self.num_images * self.captions_per_image


#: The learnable structure of the paper and demo presets (module docstring, "Headroom").
LEARNABLE: dict[str, Any] = {
    "nuisance_rank": 64,
    "nuisance_fraction": 0.9,
    "image_distortion": 0.55,
    "caption_noise": 1.35,
}

PRESETS: dict[str, SynthConfig] = {
    # Flickr30k Karpathy split sizes, CLIP ViT-B/32 width; calibrated (module docstring).
    "paper": SynthConfig(**LEARNABLE),
    # Small enough for the whole demo (generate, mine, train 4 losses x 2 directions) on 2 cores.
    "demo": SynthConfig(num_train=2000, num_val=200, num_test=200, **LEARNABLE),
    # For unit tests.
    "tiny": SynthConfig(num_train=60, num_val=20, num_test=20, dim=32, num_topics=8),
}


def _unit(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def generate(cfg: SynthConfig) -> dict[str, Any]:
    """Generate a synthetic store's content; same ``cfg`` (incl. seed) -> identical output.

    Returns a dict with the :func:`xmr.data.store.write_store` inputs:
    ``image_emb`` ``(N_img, dim)`` float32 unit rows, ``text_emb`` ``(N_txt, dim)`` float32 unit
    rows (caption ``j`` of image ``i`` is row ``i * captions_per_image + j``), ``text_image``
    ``(N_txt,)`` int64, ``image_split`` ``(N_img,)`` uint8 (a seeded shuffle of the split sizes),
    ``images`` and ``captions`` (lists of str); plus ``image_topic`` ``(N_img,)`` int64.
    """
    rng = np.random.default_rng(cfg.seed)
    n, cpi, dim = cfg.num_images, cfg.captions_per_image, cfg.dim
    kmax, m = cfg.max_concepts, cfg.concepts_per_topic

    topics = _unit(rng.standard_normal((cfg.num_topics, dim), dtype=np.float32))  # (T, D)
    concepts = _unit(rng.standard_normal((cfg.num_topics, m, dim), dtype=np.float32))  # (T, M, D)
    gap_img, gap_txt, shared = _unit(rng.standard_normal((3, dim), dtype=np.float32))  # (D,) x3
    img_offset = cfg.modality_gap * gap_img + cfg.shared_offset * shared  # (D,)
    txt_offset = cfg.modality_gap * gap_txt + cfg.shared_offset * shared  # (D,)
    f = float(cfg.nuisance_fraction)
    nuisance = np.zeros((dim, 0), dtype=np.float32)  # (D, R): orthonormal nuisance directions
    if f > 0:
        g = np.random.default_rng([cfg.seed, 1]).standard_normal((dim, cfg.nuisance_rank))
        nuisance = np.linalg.qr(g)[0].astype(np.float32)
    distortion = np.eye(dim, dtype=np.float32)  # (D, D): M = (1 - b) I + b Q, Q orthogonal
    if cfg.image_distortion > 0:
        q = np.linalg.qr(np.random.default_rng([cfg.seed, 2]).standard_normal((dim, dim)))[0]
        b = float(cfg.image_distortion)
        distortion = ((1.0 - b) * np.eye(dim) + b * q).astype(np.float32)
    popularity = np.arange(1, cfg.num_topics + 1, dtype=np.float64) ** -cfg.topic_zipf
    popularity /= popularity.sum()

    split = np.repeat(
        np.array([SPLITS["train"], SPLITS["val"], SPLITS["test"]], dtype=np.uint8),
        [cfg.num_train, cfg.num_val, cfg.num_test],
    )
    split = split[rng.permutation(n)]  # (N_img,)

    image_emb = np.empty((n, dim), dtype=np.float32)
    text_emb = np.empty((n * cpi, dim), dtype=np.float32)
    image_topic = np.empty(n, dtype=np.int64)
    captions: list[str] = []
    for s in range(0, n, _CHUNK_IMAGES):
        c = min(_CHUNK_IMAGES, n - s)
        topic = rng.choice(cfg.num_topics, size=c, p=popularity)  # (C,)
        # k distinct concepts of the topic: first k of a random permutation of its M concepts.
        local = np.argsort(rng.random((c, m)), axis=1)[:, :kmax]  # (C, Kmax)
        k = rng.integers(cfg.min_concepts, cfg.max_concepts + 1, size=c)  # (C,)
        present = np.arange(kmax)[None, :] < k[:, None]  # (C, Kmax)
        w = np.exp(cfg.concept_weight_sigma * rng.standard_normal((c, kmax))) * present
        w = (w / np.linalg.norm(w, axis=1, keepdims=True)).astype(np.float32)  # (C, Kmax)
        u = concepts[topic[:, None], local]  # (C, Kmax, D)
        detail = _unit(rng.standard_normal((c, dim), dtype=np.float32))  # (C, D)
        base = cfg.topic_weight * topics[topic]  # (C, D)

        img = base + np.einsum("ck,ckd->cd", w, u) + cfg.image_detail * detail + img_offset
        if cfg.image_distortion > 0:  # (C, D) @ (D, D): the fixed map M of the images
            img = img @ distortion.T
        image_emb[s : s + c] = _unit(img)

        keep = (rng.random((c, cpi, kmax)) < cfg.caption_keep) & present[:, None, :]  # (C, P, K)
        noise = rng.standard_normal((c, cpi, dim), dtype=np.float32)  # (C, P, D)
        txt = (
            (base + cfg.caption_detail * detail + txt_offset)[:, None, :]
            + np.einsum("cpk,ckd->cpd", w[:, None, :] * keep, u)
            + (cfg.caption_noise * np.sqrt(1.0 - f) / np.sqrt(dim)) * noise
        )  # (C, P, D)
        if f > 0:  # the caption noise's structured share, from its own RNG stream
            z = np.random.default_rng([cfg.seed, 1, s]).standard_normal(
                (c, cpi, cfg.nuisance_rank), dtype=np.float32
            )  # (C, P, R)
            txt += (cfg.caption_noise * np.sqrt(f) / np.sqrt(cfg.nuisance_rank)) * (
                z @ nuisance.T
            )  # (C, P, D)
        text_emb[s * cpi : (s + c) * cpi] = _unit(txt).reshape(c * cpi, dim)
        image_topic[s : s + c] = topic

        concept_id = topic[:, None] * m + local  # (C, Kmax) global concept ids
        for i in range(c):
            for j in range(cpi):
                words = " ".join(f"concept-{concept_id[i, q]}" for q in np.flatnonzero(keep[i, j]))
                captions.append(f"synthetic caption: topic-{topic[i]} {words}".rstrip())

    return {
        "image_emb": image_emb,
        "text_emb": text_emb,
        "text_image": np.repeat(np.arange(n, dtype=np.int64), cpi),
        "image_split": split,
        "images": [f"synthetic_{i:06d}.jpg" for i in range(n)],
        "captions": captions,
        "image_topic": image_topic,
    }


def synth_config(options: Mapping[str, Any]) -> SynthConfig:
    """The :class:`SynthConfig` of a data config's ``synth`` block: ``preset`` (a name in
    :data:`PRESETS`; absent or null = the :class:`SynthConfig` defaults) with every other key
    replacing that field."""
    opts = dict(options)
    preset = opts.pop("preset", None)
    if preset is not None and preset not in PRESETS:
        raise ConfigError(f"data.synth.preset={preset!r}: one of {sorted(PRESETS)}")
    return dataclasses.replace(PRESETS[preset] if preset else SynthConfig(), **opts)


def write_synthetic_store(
    path: str | os.PathLike[str], cfg: SynthConfig, *, overwrite: bool = False
) -> Path:
    """Generate ``cfg`` and write it as a float16 ``xmr-features/1`` store at ``path``.

    The manifest's ``encoder`` is ``{"name": "synthetic", "synthetic": True,
    "generator": "xmr.data.synth", "config": dataclasses.asdict(cfg)}``.
    """
    data = generate(cfg)
    return write_store(
        path,
        image_emb=data["image_emb"],
        text_emb=data["text_emb"],
        text_image=data["text_image"],
        image_split=data["image_split"],
        images=data["images"],
        captions=data["captions"],
        encoder={
            "name": "synthetic",
            "synthetic": True,
            "generator": "xmr.data.synth",
            "config": dataclasses.asdict(cfg),
        },
        joint_space=True,
        dtype="float16",
        normalize=True,
        overwrite=overwrite,
    )


def check_synthetic_store(path: str | os.PathLike[str], cfg: SynthConfig) -> None:
    """Refuse a synthetic store at ``path`` generated with settings other than ``cfg`` (a store
    left by an earlier version or another preset): names the differing fields. Fields its
    manifest lacks count as their defaults."""
    manifest = json.loads((Path(path) / "manifest.json").read_text(encoding="utf-8"))
    recorded = (manifest.get("encoder") or {}).get("config")
    if not isinstance(recorded, dict):
        return  # not a generated store: nothing to compare
    defaults = dataclasses.asdict(SynthConfig())
    wanted = dataclasses.asdict(cfg)
    differ = sorted(k for k in wanted if recorded.get(k, defaults[k]) != wanted[k])
    if differ:
        shown = ", ".join(f"{k}: {recorded.get(k, defaults[k])!r} != {wanted[k]!r}" for k in differ)
        raise StoreError(
            f"{Path(path) / 'manifest.json'}: this SYNTHETIC store was generated with other "
            f"settings than data.synth asks for ({shown}); delete {path} to generate it anew, "
            "or point data.store elsewhere"
        )
