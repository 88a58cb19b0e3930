"""Shared pytest fixtures: a tiny synthetic feature store and the real shared data directory."""

from __future__ import annotations

from pathlib import Path

import pytest

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
