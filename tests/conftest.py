"""Shared pytest fixtures: small feature stores, the tiny sweep and the real shared data directory.

Plain helpers live beside this file: ``_compose.py`` (composing ``conf/train.yaml``),
``_sweep.py`` (the tiny sweep) and ``_probe_sweep.py`` (hand-made runs of both protocols on
lists with a leakage probe); no test module imports another test module.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from _probe_sweep import probe_sweep_root
from _sweep import tiny_sweep_root

from xmr.data.store import write_store
from xmr.data.synth import PRESETS, write_synthetic_store

#: ``../shared`` next to the repository root (read-only real data; may be absent).
SHARED = Path(__file__).resolve().parents[2] / "shared"


@pytest.fixture(scope="session")
def tiny_store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Path of a tiny **synthetic** ``xmr-features/1`` store, written once per session.

    Preset ``tiny``: 60 train / 20 val / 20 test images, 5 captions each, 32-d, joint space,
    float16, seed 0. Treat it as read-only (it is shared by all tests of the session); write
    candidate lists or other outputs to your own ``tmp_path``.
    """
    root = tmp_path_factory.mktemp("tiny_store") / "store"
    return write_synthetic_store(root, PRESETS["tiny"])


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """``Path`` of ``../shared/data`` (real Flickr8k-1k stores, Flickr30k annotations); skips if absent."""
    data = SHARED / "data"
    if not data.is_dir():
        pytest.skip(f"real shared data not found at {data}")
    return data


@pytest.fixture(scope="session")
def small_store(tmp_path_factory: pytest.TempPathFactory) -> Callable[..., Path]:
    """``small_store(joint_space=...)``: the path of a small store with real structure (captions
    are noisy views of their image, 5 per image), written once per session per kind.

    - ``joint_space=True``: 100 images (60 / 20 / 20), image and caption vectors 16-d in one
      space, each caption its image plus noise.
    - ``joint_space=False``: 80 images (50 / 15 / 15), images 24-d, captions 12-d, each caption a
      fixed linear map of its image plus noise.

    Treat the store as read-only apart from lists that runs mine into its ``lists/``.
    """
    made: dict[bool, Path] = {}

    def make(*, joint_space: bool) -> Path:
        if joint_space not in made:
            kind = "joint" if joint_space else "diff_dims"
            root = tmp_path_factory.mktemp(f"small_store_{kind}") / "store"
            made[joint_space] = _write_small_store(root, joint_space=joint_space)
        return made[joint_space]

    return make


def _write_small_store(root: Path, *, joint_space: bool) -> Path:
    rng = np.random.default_rng(0)
    n, dim, noise, (n_val, n_test) = (
        (100, 16, 0.9, (20, 20)) if joint_space else (80, 24, 1.5, (15, 15))
    )
    img = rng.normal(size=(n, dim))
    text_image = np.repeat(np.arange(n), 5)
    if joint_space:
        txt = img[text_image] + noise * rng.normal(size=(5 * n, dim))
    else:
        w = rng.normal(size=(dim, 12))
        txt = img[text_image] @ w + noise * rng.normal(size=(5 * n, 12))
    split = np.zeros(n, np.uint8)
    split[n - n_val - n_test : n - n_test], split[n - n_test :] = 1, 2
    return write_store(
        root,
        image_emb=img,
        text_emb=txt,
        text_image=text_image,
        image_split=split,
        images=[f"img{i}.jpg" for i in range(n)],
        captions=[f"caption {i}" for i in range(5 * n)],
        encoder={"name": "test-random" if joint_space else "test-diff-dims"},
        joint_space=joint_space,
    )


@pytest.fixture(scope="session")
def tiny_sweep(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny sweep of ``_sweep.py``, trained once per session (shared; read-only)."""
    return tiny_sweep_root(tmp_path_factory.getbasetemp())


@pytest.fixture(scope="session")
def probe_sweep(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The hand-made runs of ``_probe_sweep.py`` (both protocols, a leaking probe; no
    training): the directory holding the runs (shared; read-only)."""
    return probe_sweep_root(tmp_path_factory.mktemp("probe_sweep"))
