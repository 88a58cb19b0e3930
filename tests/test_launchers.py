"""Hydra launchers: SLURM (submitit) and local joblib configs compose; a real joblib multirun."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import hydra.utils
import pytest
from hydra import compose, initialize_config_dir
from hydra.core.plugins import Plugins
from hydra.plugins.launcher import Launcher
from omegaconf import DictConfig, open_dict

from xmr.utils import devices
from xmr.utils.instantiate import instantiate
from xmr.utils.launcher import LocalLauncher, plan_of

ROOT = Path(__file__).resolve().parents[1]
CONF = ROOT / "conf"


def compose_hydra(overrides: list[str]) -> DictConfig:
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return compose("train", overrides=overrides, return_hydra_config=True)


def test_slurm_launcher_reads_its_defaults_from_the_environment(monkeypatch) -> None:
    pytest.importorskip("hydra_plugins.hydra_submitit_launcher")
    monkeypatch.setenv("XMR_SLURM_PARTITION", "gpu-a100")
    monkeypatch.setenv("XMR_SLURM_TIMEOUT_MIN", "90")
    monkeypatch.setenv("XMR_SLURM_GPUS", "2")
    launcher = compose_hydra(["hydra/launcher=slurm"]).hydra.launcher
    assert launcher._target_ == (
        "hydra_plugins.hydra_submitit_launcher.submitit_launcher.SlurmLauncher"
    )
    assert launcher.partition == "gpu-a100"
    assert launcher.timeout_min == 90 and launcher.gpus_per_node == 2
    assert launcher.cpus_per_task == 4 and launcher.tasks_per_node == 1  # defaults
    assert launcher.account is None


def test_slurm_launcher_without_environment_has_no_partition(monkeypatch) -> None:
    pytest.importorskip("hydra_plugins.hydra_submitit_launcher")
    for var in ("XMR_SLURM_PARTITION", "XMR_SLURM_TIMEOUT_MIN", "XMR_SLURM_GPUS"):
        monkeypatch.delenv(var, raising=False)
    launcher = compose_hydra(["hydra/launcher=slurm"]).hydra.launcher
    assert launcher.partition is None and launcher.timeout_min == 240
    assert launcher.gpus_per_node == 1


@pytest.mark.parametrize(
    "option, target",
    [
        ("submitit_slurm", "hydra_submitit_launcher.submitit_launcher.SlurmLauncher"),
        ("submitit_local", "hydra_submitit_launcher.submitit_launcher.LocalLauncher"),
        ("joblib", "hydra_joblib_launcher.joblib_launcher.JoblibLauncher"),
        ("local", "xmr_launcher.LocalLauncher"),
    ],
)
def test_launcher_options_compose(option, target, monkeypatch) -> None:
    pytest.importorskip("hydra_plugins.hydra_joblib_launcher")
    pytest.importorskip("hydra_plugins.hydra_submitit_launcher")
    monkeypatch.setenv("XMR_JOBS", "3")
    cfg = compose_hydra([f"hydra/launcher={option}"])
    assert cfg.hydra.launcher._target_ == f"hydra_plugins.{target}"
    if option == "local":
        assert cfg.hydra.launcher.n_jobs == 3 and cfg.hydra.launcher.jobs_per_gpu == 1


def test_local_launcher_runs_one_job_per_gpu_by_default(monkeypatch) -> None:
    """XMR_JOBS unset: every GPU slot (G x XMR_JOBS_PER_GPU) on a GPU node, 2 jobs without one."""
    monkeypatch.delenv("XMR_JOBS", raising=False)
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    monkeypatch.setenv("XMR_JOBS_PER_GPU", "2")
    launcher_cfg = compose_hydra(["hydra/launcher=local"]).hydra.launcher
    assert launcher_cfg.n_jobs is None and launcher_cfg.jobs_per_gpu == 2
    # Hydra finds the plugin class in the hydra_plugins namespace (it builds launchers only
    # from there).
    found = {f"{c.__module__}.{c.__name__}" for c in Plugins.instance().discover(Launcher)}
    assert launcher_cfg._target_ in found
    launcher = hydra.utils.instantiate(launcher_cfg)
    assert isinstance(launcher, LocalLauncher)
    monkeypatch.setattr(devices, "device_count", lambda: 4)
    plan, slots = plan_of(launcher.n_jobs, launcher.jobs_per_gpu, devices.visible_gpus())
    assert plan.n_jobs == 8 and len(slots) == 8 and len(set(slots)) == 8
    monkeypatch.setattr(devices, "device_count", lambda: 0)
    plan, slots = plan_of(launcher.n_jobs, launcher.jobs_per_gpu, devices.visible_gpus())
    assert plan.n_jobs == 2 and slots == []


@pytest.mark.slow
def test_joblib_multirun_runs_two_jobs_in_parallel(tiny_store, tmp_path) -> None:
    pytest.importorskip("hydra_plugins.hydra_joblib_launcher")
    overrides = [
        "data=synthetic_tiny",
        f"data.store={tiny_store}",
        f"data.lists_root={tmp_path / 'lists'}",
        "data.synth=null",
        "loss=listnet",
        "trainer.max_epochs=1",
        "trainer.enable_progress_bar=false",
        "threads=1",
    ]
    # Mine once up front: parallel jobs must not mine the same lists directory at once.
    cfg = compose_hydra(overrides)
    with open_dict(cfg):
        cfg.paths.root_dir = str(ROOT)
    instantiate(cfg.data).prepare_data()

    sweep = tmp_path / "sweep"
    env = {**os.environ, "XMR_LOGS": str(tmp_path / "logs"), "XMR_DATA": str(tmp_path / "data")}
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "xmr.train",
            "-m",
            *overrides,
            "hydra/launcher=local",
            "hydra.launcher.n_jobs=2",
            "seed=0,1",
            f"hydra.sweep.dir={sweep}",
        ],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert "local launcher: 2 jobs, " in proc.stdout + proc.stderr
    paths = sorted(sweep.rglob("results.json"))
    # One level per job although data.store / data.lists_root are absolute paths.
    assert [p.parent.parent for p in paths] == [sweep, sweep], paths
    results = [json.loads(p.read_text()) for p in paths]
    assert sorted(r["seed"] for r in results) == [0, 1]
    assert len({r["config"]["paths"]["output_dir"] for r in results}) == 2  # one dir per job
    for r in results:
        assert 0.0 <= r["test/t2i/recall@1"] <= r["test/t2i/recall@10"] <= 1.0


def test_reproduce_plan_and_estimate_follow_the_environment(monkeypatch, tmp_path, capsys) -> None:
    from xmr import reproduce

    for var in ("XMR_FEATURES", "REPRO_STORE", "REPRO_DATA", "REPRO_BASELINES"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("REPRO_EPOCHS", "3")
    monkeypatch.setenv("REPRO_SEEDS", "2")
    monkeypatch.setenv("REPRO_DIR", str(tmp_path / "out"))
    plan = reproduce.make_plan()
    assert plan.data == "synthetic_paper" and plan.synthetic  # no real store configured
    assert plan.ranker_jobs == 4 * 2 and plan.epochs == 3
    models = {p.stem for p in (CONF / "model").glob("*.yaml")} - {"ranker"}
    assert set(plan.trainable_baselines) | set(plan.fixed_baselines) == models
    assert "cosine" in plan.fixed_baselines
    # T = prepare + trained jobs x (job + E x epoch) + fixed jobs x job, with plugged-in costs
    monkeypatch.setenv("REPRO_SEC_PER_EPOCH", "10")
    monkeypatch.setenv("REPRO_SEC_PER_JOB", "2")
    monkeypatch.setenv("REPRO_SEC_PREPARE", "5")
    total, formula = reproduce.estimate(plan)
    n_trained = 8 + 2 * len(plan.trainable_baselines)
    assert total == 5 + n_trained * (2 + 3 * 10) + len(plan.fixed_baselines) * 2
    assert "T_epoch" in formula

    monkeypatch.setenv("REPRO_DRY_RUN", "1")
    reproduce.main()
    printed = capsys.readouterr().out
    assert "SYNTHETIC" in printed and "expected wall time" in printed
    assert not (tmp_path / "out").exists()  # a dry run runs nothing

    monkeypatch.setenv("REPRO_SEEDS", "0")
    with pytest.raises(SystemExit, match="REPRO_SEEDS='0'"):
        reproduce.make_plan()
    monkeypatch.setenv("REPRO_SEEDS", "1")
    monkeypatch.setenv("XMR_FEATURES", str(tmp_path / "nowhere"))
    with pytest.raises(SystemExit, match="nowhere/manifest.json"):
        reproduce.make_plan()
