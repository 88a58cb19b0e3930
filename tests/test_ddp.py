"""DDP on CPU: 2 gloo processes on a tiny SYNTHETIC store give results shaped like one process."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch.distributed as dist
from _compose import make_cfg

from xmr.data.mining import load_lists
from xmr.data.store import FeatureStore
from xmr.runs.results import load_predictions
from xmr.train import train

ROOT = Path(__file__).resolve().parents[1]
CONF = ROOT / "conf"


def test_ddp_config_composes(tmp_path) -> None:
    cfg = make_cfg(tmp_path, ["trainer=ddp_cpu", "trainer.devices=3"], "c")
    assert cfg.trainer.strategy._target_ == "lightning.pytorch.strategies.DDPStrategy"
    assert cfg.trainer.strategy.process_group_backend == "gloo"
    assert cfg.trainer.accelerator == "cpu" and cfg.trainer.devices == 3
    gpu = make_cfg(tmp_path, ["trainer=ddp"], "g")
    assert gpu.trainer.strategy.process_group_backend is None  # nccl on CUDA, gloo otherwise


@pytest.mark.slow
@pytest.mark.skipif(not dist.is_available(), reason="torch.distributed is not available")
def test_two_process_ddp_matches_single_process_shape(tiny_store, tmp_path) -> None:
    common = [
        "data=synthetic_tiny",
        f"data.store={tiny_store}",
        f"data.lists_root={tmp_path / 'lists'}",
        "data.synth=null",
        "loss=listnet",
        "trainer.max_epochs=2",
        "trainer.enable_progress_bar=false",
        "threads=1",
        # An odd number of lists per split, so DistributedSampler has to pad one rank.
        "data.max_lists=19",
    ]
    # The single-process run also mines the lists that the DDP ranks then read.
    single = train(make_cfg(tmp_path, common, "single"))

    run_dir = tmp_path / "ddp"
    env = {**os.environ, "XMR_LOGS": str(tmp_path / "logs"), "XMR_DATA": str(tmp_path / "data")}
    env.pop("WANDB_API_KEY", None)
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "xmr.train",
            *common,
            "trainer=ddp_cpu",
            "trainer.devices=2",
            f"hydra.run.dir={run_dir}",
        ],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert "MEMBER: 2/2" in proc.stdout + proc.stderr  # Lightning started a second rank
    ddp = json.loads((run_dir / "results.json").read_text())

    assert set(ddp) == set(single)  # same keys
    assert ddp["config"]["trainer"]["strategy"]["process_group_backend"] == "gloo"
    store = FeatureStore.open(tiny_store)
    lists_dir = next((tmp_path / "lists").iterdir())
    for d in ("t2i", "i2t"):
        for k in (1, 5, 10):
            assert 0.0 <= ddp[f"test/{d}/recall@{k}"] <= 1.0
        lists = load_lists(lists_dir, d, "test", store)
        pred = load_predictions(run_dir / ddp["predictions"][d])
        # Exactly one row per test list, in list order, despite DistributedSampler's padding.
        np.testing.assert_array_equal(pred["query"], lists.queries[:19])
        assert pred["candidates"].shape == lists.candidates[:19].shape
        # The reported metric is the one recomputed from the de-duplicated predictions.
        assert ddp[f"test/{d}/recall@1"] == pytest.approx(pred["labels"][:, 0].mean(), abs=1e-6)
        assert ddp[f"test/{d}/lists"] == single[f"test/{d}/lists"] == 19
    # Only rank 0 wrote: one results file, no stray per-rank outputs.
    assert sorted(p.name for p in run_dir.glob("results*.json")) == ["results.json"]
