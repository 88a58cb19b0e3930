"""Sweeps as config (conf/sweep/*.yaml) and skipping finished jobs on a rerun."""

from __future__ import annotations

import itertools
import json
import logging
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
from _sweep import job_cfg, tiny_sweep_root
from hydra import compose, initialize_config_dir
from hydra.core.hydra_config import HydraConfig
from hydra.core.override_parser.overrides_parser import OverridesParser
from omegaconf import OmegaConf, open_dict

from xmr.runs.results import finished_results
from xmr.train import train
from xmr.utils.paths import MAX_VALUE_CHARS, SHORT_TAIL_CHARS, job_dirname, short_value

REPO = Path(__file__).resolve().parents[1]
CONF = REPO / "conf"
SWEEPS = sorted(p.stem for p in (CONF / "sweep").glob("*.yaml"))


@pytest.fixture(scope="session")
def sweep_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny sweep of tests/test_report.py (trained once per session, shared)."""
    return tiny_sweep_root(tmp_path_factory.getbasetemp())


def compose_sweep(name: str, *overrides: str):
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return compose("train", overrides=[f"+sweep={name}", *overrides], return_hydra_config=True)


def sweep_values(params: dict) -> dict[str, list]:
    """key → the list of values of each sweep axis, parsed by Hydra's own override grammar."""
    parser = OverridesParser.create()
    out = {}
    for key, value in params.items():
        override = parser.parse_override(f"{key}={value}")
        out[key] = list(override.sweep_iterator()) if override.is_sweep_override() else [value]
    return out


def test_every_sweep_config_composes() -> None:
    assert {"loss_seeds", "paper_grid", "optuna"} <= set(SWEEPS)
    for name in SWEEPS:
        cfg = compose_sweep(name)
        assert cfg.hydra.sweeper.params, name
        assert f"sweeps/{name}/" in cfg.hydra.sweep.dir
        assert "${hydra:" not in cfg.hydra.sweep.dir  # unresolvable before the jobs start


# ------------------------------------------------------------------ job directory names


def test_job_dirname_is_one_short_level() -> None:
    """Hydra's override_dirname rule, plus: paths.* left out, a group's `/` written `.`, a long or
    path-like value shortened to its last component + a hash (distinct values stay distinct)."""
    plain = ["seed=3", "loss=listnet", "model.net.fc_sizes=[64,32]", "+foo=bar"]
    assert job_dirname(plain) == "+foo=bar,loss=listnet,model.net.fc_sizes=[64,32],seed=3"
    name = job_dirname(["data.store=/abs/a/store", "paths.log_dir=/x", "data/mining=pool"])
    assert name.startswith("data.store=store-") and name.endswith(",data.mining=pool")
    assert "/" not in name
    assert name != job_dirname(["data.store=/abs/b/store", "data/mining=pool"])
    assert job_dirname(["resume=false", "seed=1"], ["resume"]) == "seed=1"
    long = "x" * (MAX_VALUE_CHARS + 1)
    assert job_dirname([f"method={long}"]) == f"method={short_value(long)}"
    assert len(short_value(long)) <= SHORT_TAIL_CHARS + 9
    assert short_value("/abs/lists/") == f"lists-{short_value('/abs/lists/')[-8:]}"
    assert job_dirname([]) == ""


@pytest.mark.parametrize("sweep", [None, "loss_seeds", "paper_grid"])
def test_run_and_sweep_job_dirs_carry_no_path_from_values(sweep: str | None) -> None:
    """Resolved as Hydra resolves them for a job: the run dir and the sweep job's subdir are one
    level below runs/<data>/ (or the sweep dir), whatever paths the command line holds."""
    overrides = [
        "data.store=/abs/path/to/flickr8k-1k/features/zeroshot-bridge",
        "data.lists_root=/abs/path/to/lists",
        "paths.data_dir=/scratch/me/data",
        "data/mining=pool",
        "loss=listnet",
        "seed=3",
        "resume=false",
        "+skip_finished=false",
    ]
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        extra = [f"+sweep={sweep}"] if sweep else []
        cfg = compose("train", overrides=[*extra, *overrides], return_hydra_config=True)
    instance = HydraConfig.instance()
    before = instance.cfg
    instance.set_config(cfg)
    try:
        run_dir, subdir = str(cfg.hydra.run.dir), str(cfg.hydra.sweep.subdir)
    finally:
        instance.cfg = before
    assert run_dir.endswith(f"/runs/synthetic_demo/{subdir}")
    assert "/" not in subdir
    assert (
        subdir.split(",")
        == [  # sorted as Hydra sorts the override lines
            "data.lists_root=lists-" + short_value("/abs/path/to/lists")[-8:],
            "data.store=zeroshot-bridge-" + short_value(overrides[0].split("=")[1])[-8:],
            "data.mining=pool",
            "loss=listnet",
            "seed=3",
        ]
    )
    assert "paths" not in subdir and "sweep" not in subdir and "skip_finished" not in subdir


def test_sweep_configs_name_jobs_by_the_shared_rule() -> None:
    """One place for job names: no sweep config sets its own exclude_keys or override_dirname."""
    for path in sorted((CONF / "sweep").glob("*.yaml")):
        text = path.read_text(encoding="utf-8")
        assert "exclude_keys" not in text and "override_dirname" not in text, path.name


def test_loss_seeds_is_4_losses_by_5_seeds_both_directions() -> None:
    cfg = compose_sweep("loss_seeds")
    axes = sweep_values(OmegaConf.to_container(cfg.hydra.sweeper.params))
    assert sorted(axes["loss"]) == sorted(["lambdarank", "neural_ndcg", "listnet", "ranknet"])
    assert axes["seed"] == [0, 1, 2, 3, 4]
    assert math.prod(len(v) for v in axes.values()) == 20
    for loss in axes["loss"]:
        assert (CONF / "loss" / f"{loss}.yaml").exists()
    assert cfg.data.direction == "both"  # one job trains both directions
    assert "sweep" in cfg.hydra.job.config.override_dirname.exclude_keys


def test_paper_grid_points_are_valid_rankers() -> None:
    cfg = compose_sweep("paper_grid")
    axes = sweep_values(OmegaConf.to_container(cfg.hydra.sweeper.params))
    assert set(axes) == {
        "model.net.fc_sizes",
        "model.net.num_layers",
        "model.net.num_heads",
        "model.net.ff_dim",
    }
    # the paper's chosen point is on the grid
    assert [64] in axes["model.net.fc_sizes"] and 2 in axes["model.net.num_layers"]
    assert 4 in axes["model.net.num_heads"] and 128 in axes["model.net.ff_dim"]
    for fc, heads in itertools.product(axes["model.net.fc_sizes"], axes["model.net.num_heads"]):
        assert fc[-1] % heads == 0, f"d_model={fc[-1]} not divisible by {heads} heads"


def test_optuna_searches_the_paper_grid_space_and_maximises() -> None:
    pytest.importorskip("hydra_plugins.hydra_optuna_sweeper")
    cfg = compose_sweep("optuna")
    sweeper = cfg.hydra.sweeper
    assert sweeper._target_.endswith("OptunaSweeper")
    assert sweeper.direction == "maximize" and sweeper.n_trials >= 1
    assert cfg.monitor_mode == "max"  # the returned value (best validation value) is maximised
    grid = sweep_values(OmegaConf.to_container(compose_sweep("paper_grid").hydra.sweeper.params))
    space = sweep_values(OmegaConf.to_container(sweeper.params))
    assert set(space) == set(grid)
    for key in grid:
        # optuna's categorical choices are scalars: list values travel as their override text
        assert sorted(map(str, space[key])) == sorted(
            str(v).replace(" ", "") if isinstance(v, list) else str(v) for v in grid[key]
        )


# ------------------------------------------------------------------ skipping finished jobs


@pytest.mark.slow
def test_rerun_of_a_finished_job_is_skipped(sweep_root: Path, caplog) -> None:
    out = sweep_root / "runs" / "loss=listnet,seed=0"
    before = (out / "results.json").stat().st_mtime_ns
    cfg = job_cfg(sweep_root, "loss=listnet", "seed=0", run="loss=listnet,seed=0")
    with open_dict(cfg):
        cfg.trainer.enable_progress_bar = True  # run-time only: still the same job
        cfg.threads = 1
    with caplog.at_level(logging.INFO, logger="xmr.train"):
        results = train(cfg)
    assert "already finished" in caplog.text
    assert (out / "results.json").stat().st_mtime_ns == before
    assert results == json.loads((out / "results.json").read_text())


@pytest.mark.slow
def test_finished_results_rules(sweep_root: Path, tmp_path: Path) -> None:
    src = sweep_root / "runs" / "loss=ranknet,seed=1"
    cfg = job_cfg(sweep_root, "loss=ranknet", "seed=1", run="loss=ranknet,seed=1")
    assert finished_results(src, cfg) is not None
    other = job_cfg(sweep_root, "loss=ranknet", "seed=1", "trainer.max_epochs=2", run="x")
    assert finished_results(src, other) is None  # another config: redo
    with open_dict(cfg):
        cfg.skip_finished = False
    assert finished_results(src, cfg) is None  # asked to redo
    cfg = job_cfg(sweep_root, "loss=ranknet", "seed=1", run="loss=ranknet,seed=1")
    # a copy with a torn results.json, and one without its predictions files
    torn, nopred = tmp_path / "torn", tmp_path / "nopred"
    for d in (torn, nopred):
        d.mkdir()
    text = (src / "results.json").read_text()
    (torn / "results.json").write_text(text[: len(text) // 2])
    (nopred / "results.json").write_text(text)
    assert finished_results(torn, cfg) is None
    assert finished_results(nopred, cfg) is None
    assert finished_results(tmp_path / "absent", cfg) is None


@pytest.mark.slow
def test_multirun_then_rerun_skips_both_jobs(sweep_root: Path, tmp_path: Path) -> None:
    """A real `-m` sweep (2 jobs) through Hydra, then the same command again."""
    env = {**os.environ, "XMR_LOGS": str(tmp_path / "logs"), "XMR_DATA": str(tmp_path / "data")}
    # data=synthetic_tiny finds its store at $XMR_DATA/synthetic-tiny: the sweep's (lists mined)
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "synthetic-tiny").symlink_to(sweep_root / "store")
    cmd = [
        sys.executable,
        "-m",
        "xmr.train",
        "-m",
        "+sweep=loss_seeds",
        "data=synthetic_tiny",
        f"data.store={tmp_path / 'data' / 'synthetic-tiny'}",  # a path: shortened in job names
        "trainer.max_epochs=1",
        "trainer.enable_progress_bar=false",
        "loss=listnet",  # the command line narrows the sweep's axes
        "seed=0,1",
        "threads=1",
    ]

    def run() -> str:
        proc = subprocess.run(
            cmd, env=env, cwd=tmp_path, capture_output=True, text=True, timeout=400
        )
        assert proc.returncode == 0, proc.stderr[-3000:]
        return proc.stdout + proc.stderr

    run()
    root = tmp_path / "logs" / "sweeps" / "loss_seeds" / "synthetic_tiny"
    jobs = sorted(p.parent for p in root.glob("*/results.json"))
    names = [j.name for j in jobs]
    assert len(jobs) == 2 and all("data=synthetic_tiny" in n.split(",") for n in names), names
    assert all("loss=listnet" in n and "sweep" not in n for n in names)
    assert all(n.startswith("data.store=synthetic-tiny-") for n in names), names  # one level
    assert {json.loads((j / "results.json").read_text())["seed"] for j in jobs} == {0, 1}
    mtimes = [(j / "results.json").stat().st_mtime_ns for j in jobs]

    log = run()
    assert log.count("already finished") == 2, log[-3000:]
    assert [(j / "results.json").stat().st_mtime_ns for j in jobs] == mtimes


def test_the_thread_count_identifies_a_run(tmp_path: Path) -> None:
    """threads changes results (float reductions summed in another order), so a run with other
    threads is another job: not skipped as finished, and in a directory of its own."""
    from omegaconf import OmegaConf

    from xmr.runs.results import RERUN_NEUTRAL_KEYS, config_differences

    assert "threads" not in RERUN_NEUTRAL_KEYS
    one = {"seed": 0, "threads": 1, "paths": {"output_dir": "/a"}}
    two = {"seed": 0, "threads": 2, "paths": {"output_dir": "/b"}}
    assert config_differences(one, OmegaConf.create(two)) == ["threads"]
    hydra_conf = OmegaConf.load(Path(__file__).resolve().parents[1] / "conf/hydra/default.yaml")
    assert "threads" not in list(hydra_conf.job.config.override_dirname.exclude_keys)
    assert job_dirname(["seed=0", "threads=2"]) == "seed=0,threads=2"
