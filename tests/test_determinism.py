"""Same seed, same command -> bit-identical ``results.json`` on CPU (SYNTHETIC tiny store), up
to ``provenance.started`` (the run's start time).

The run is done twice in the same output directory (the first run's outputs deleted in between),
so even the paths inside ``results.json`` agree; any other timestamp or nondeterministic value
would break the byte comparison. A failed run's ``failed.json`` is removed by the next success.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
from hydra import compose, initialize_config_dir
from omegaconf import DictConfig, open_dict

from xmr.train import train

REPO = Path(__file__).resolve().parents[1]


def _cfg(tmp: Path, store: Path, *extra: str) -> DictConfig:
    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        cfg = compose(
            "train",
            overrides=[
                "data=synthetic_tiny",
                f"data.store={store}",
                "data.synth=null",
                f"data.lists_root={tmp / 'lists'}",
                "trainer.max_epochs=1",
                "trainer.enable_progress_bar=false",
                "seed=3",
                *extra,
            ],
        )
    with open_dict(cfg):
        cfg.paths.root_dir = str(REPO)
        cfg.paths.data_dir = str(tmp / "data")
        cfg.paths.log_dir = str(tmp / "logs")
        cfg.paths.output_dir = str(tmp / "run")
    return cfg


def test_same_seed_gives_bit_identical_results_json(tiny_store: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    train(_cfg(tmp_path, tiny_store))
    first = (run / "results.json").read_bytes()
    first_pred = {d: dict(np.load(run / f"predictions_{d}.npz")) for d in ("t2i", "i2t")}
    shutil.rmtree(run)
    train(_cfg(tmp_path, tiny_store))
    second = (run / "results.json").read_bytes()
    assert _unstarted(second) == _unstarted(first)
    for d, arrays in first_pred.items():
        with np.load(run / f"predictions_{d}.npz") as z:
            for k, v in arrays.items():
                assert np.array_equal(z[k], v, equal_nan=True), (d, k)
    results = json.loads(first)
    assert results["seed"] == 3 and results["config"]["seed"] == 3
    assert set(results["provenance"]) >= {"xmr", "git", "torch", "argv", "hostname", "started"}


def _unstarted(text: bytes) -> bytes:
    """``results.json`` bytes with the value of ``provenance.started`` blanked."""
    started = json.loads(text)["provenance"]["started"]
    assert text.count(started.encode()) == 1
    return text.replace(started.encode(), b"")


def test_success_removes_a_stale_failed_json(tiny_store: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    run.mkdir()
    (run / "failed.json").write_text('{"error": "RuntimeError: an earlier attempt"}')
    train(_cfg(tmp_path, tiny_store))
    assert (run / "results.json").is_file() and not (run / "failed.json").exists()
