"""Run-time torch settings from the config (xmr.utils.runtime) and their validation."""

from __future__ import annotations

import pytest
import torch
from _compose import make_cfg
from omegaconf import OmegaConf

from xmr.utils.config import validate_config
from xmr.utils.instantiate import ConfigError
from xmr.utils.runtime import torch_runtime

TINY = 1e-39  # a float32 denormal


def _denormal_survives() -> bool:
    return (torch.tensor([TINY], dtype=torch.float32) * 1.0).item() != 0.0


def test_flush_denormal_holds_inside_the_block_only() -> None:
    assert _denormal_survives()
    with torch_runtime(OmegaConf.create({"threads": 1, "flush_denormal": True})):
        assert torch.get_num_threads() == 1
        assert not _denormal_survives()
    assert _denormal_survives()


def test_flush_denormal_false_keeps_ieee_underflow() -> None:
    with torch_runtime(OmegaConf.create({"threads": 1, "flush_denormal": False})):
        assert _denormal_survives()


def test_flush_denormal_is_reset_after_an_error() -> None:
    with pytest.raises(RuntimeError, match="boom"), torch_runtime(OmegaConf.create({"threads": 1})):
        raise RuntimeError("boom")
    assert _denormal_survives()


def test_flush_denormal_must_be_a_bool(tmp_path) -> None:
    cfg = make_cfg(tmp_path, ["data=synthetic_tiny", "flush_denormal=1"])
    with pytest.raises(ConfigError, match="flush_denormal=1: must be true or false"):
        validate_config(cfg)
