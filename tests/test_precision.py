"""Mixed precision (``trainer.precision``, xmr/utils/precision.py): the start-up check, and a
bf16-mixed run on the CPU against the same float32 run.

The losses' own bfloat16 tests are in tests/test_losses.py (every conf/loss option), the
encoder's in tests/test_encoder.py; the GPU runs (bf16-mixed, 16-mixed) in tests/test_gpu.py.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
from _compose import make_cfg, tiny_overrides
from _run_outputs import scores_by_pair, train_losses
from omegaconf import OmegaConf

from xmr.models.module import RankingModule
from xmr.runs.results import config_differences
from xmr.train import train
from xmr.utils.config import validate_config
from xmr.utils.instantiate import ConfigError
from xmr.utils.precision import PRECISIONS, precision_problem


def test_default_precision_is_float32(tmp_path: Path) -> None:
    cfg = make_cfg(tmp_path, ["data=synthetic_tiny"])
    assert cfg.trainer.precision == "32-true"
    assert set(PRECISIONS) == {"32-true", "bf16-mixed", "16-mixed"}


@pytest.mark.parametrize("value", ["fp16", "16", "64-true", "bf16-true", "16-true", "half"])
def test_unknown_precisions_are_refused_by_name(tmp_path: Path, value: str) -> None:
    cfg = make_cfg(tmp_path, ["data=synthetic_tiny", f"trainer.precision={value}"])
    with pytest.raises(ConfigError, match=r"trainer.precision=.*not a precision xmr trains in"):
        validate_config(cfg)
    try:
        validate_config(cfg)
    except ConfigError as err:  # the message lists the choices
        assert all(p in str(err) for p in PRECISIONS)


def test_float16_mixed_precision_is_refused_on_the_cpu(tmp_path: Path) -> None:
    # Lightning would quietly switch to bf16-mixed; xmr says why and what to use instead.
    cfg = make_cfg(tmp_path, ["data=synthetic_tiny", "trainer=cpu", "trainer.precision=16-mixed"])
    with pytest.raises(ConfigError, match="16-mixed.*needs a CUDA GPU.*use bf16-mixed"):
        train(cfg)
    assert not (tmp_path / "data").exists()  # refused before any data is generated
    for ok in ("bf16-mixed", "32-true"):
        validate_config(
            make_cfg(tmp_path, ["data=synthetic_tiny", "trainer=cpu", f"trainer.precision={ok}"])
        )


@pytest.mark.skipif(torch.cuda.is_available(), reason="auto resolves to the GPU here")
def test_float16_mixed_is_refused_when_auto_means_the_cpu(tmp_path: Path) -> None:
    cfg = make_cfg(tmp_path, ["data=synthetic_tiny", "trainer.precision=16-mixed"])
    with pytest.raises(ConfigError, match="this run is on the CPU"):
        validate_config(cfg)


def test_bfloat16_is_refused_on_a_gpu_without_it() -> None:
    assert precision_problem("bf16-mixed", "cuda", bf16_supported=True) is None
    problem = precision_problem("bf16-mixed", "cuda", bf16_supported=False)
    assert problem is not None and "use 16-mixed" in problem
    assert precision_problem("16-mixed", "cuda") is None


def test_runs_recorded_before_the_precision_key_are_the_same_job(tmp_path: Path) -> None:
    # A run recorded without trainer.precision trained in float32: a rerun of its sweep with the
    # default (32-true) skips it as finished; another precision is another job.
    cfg = make_cfg(tmp_path, ["data=synthetic_tiny"])
    saved = OmegaConf.to_container(cfg, resolve=True)
    del saved["trainer"]["precision"]
    assert config_differences(saved, cfg) == []
    bf16 = make_cfg(tmp_path, ["data=synthetic_tiny", "trainer.precision=bf16-mixed"])
    assert config_differences(saved, bf16) == ["trainer.precision"]


def test_bf16_mixed_run_on_the_cpu_is_close_to_float32(
    tiny_store: Path, tmp_path: Path, monkeypatch
) -> None:
    # `xmr train trainer.precision=bf16-mixed` end to end on the tiny SYNTHETIC store (NeuralNDCG,
    # dropout on: the CPU attention path), against the same float32 run. Training steps run
    # under autocast, evaluation in float32, scores in float32 throughout.
    # Tolerances, with what was measured (2 epochs, seeds 0-3): the training losses in
    # metrics.jsonl and the test losses within 1e-2 relative (<= 4.8e-3, <= 3.1e-3); every test
    # metric finite; the test scores of the same (query, candidate) correlated >= 0.98 with
    # float32's (>= 0.9908). Ranking metrics on 20 test lists are not compared: one list that
    # flips moves recall by 5 points (seed 0: test/rsum 295 in bf16, 300 in float32).
    seen: list[tuple[bool, bool, torch.dtype]] = []
    score = RankingModule.score

    def spy(self, batch):
        out = score(self, batch)
        seen.append((self.training, torch.is_autocast_enabled("cpu"), out.dtype))
        return out

    extra = [f"data.lists_root={tmp_path / 'lists'}", "loss=neural_ndcg", "protocol=lists"]
    want = train(make_cfg(tmp_path, tiny_overrides(tiny_store, *extra), run="fp32"))
    monkeypatch.setattr(RankingModule, "score", spy)
    over = tiny_overrides(tiny_store, *extra, "trainer.precision=bf16-mixed")
    got = train(make_cfg(tmp_path, over, run="bf16"))
    monkeypatch.undo()

    assert got["config"]["trainer"]["precision"] == "bf16-mixed"
    assert {s[:2] for s in seen} == {(True, True), (False, False)}  # train autocast, eval not
    assert {s[2] for s in seen} == {torch.float32}
    tests = {k: v for k, v in got.items() if k.startswith("test/")}
    assert tests and all(math.isfinite(v) for v in tests.values())
    for d in ("t2i", "i2t"):
        key = f"test/{d}/loss"
        assert abs(got[key] - want[key]) <= 1e-2 * abs(want[key]), (key, got[key], want[key])
    for a, b in zip(train_losses(tmp_path / "fp32"), train_losses(tmp_path / "bf16"), strict=True):
        assert abs(a - b) <= 1e-2 * abs(a), (a, b)
    for d in ("t2i", "i2t"):
        s32, s16 = (
            scores_by_pair(tmp_path / run / f"predictions_{d}.npz") for run in ("fp32", "bf16")
        )
        assert np.corrcoef(s32, s16)[0, 1] >= 0.98
