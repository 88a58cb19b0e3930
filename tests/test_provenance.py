"""A run's provenance (``xmr.utils.provenance``): code version, git commit and dirty flag, library
versions, command line, host, start time; git absent or failing gives null, never an error; the
block is outside the config, so a rerun of a finished job is still skipped."""

from __future__ import annotations

import importlib.metadata
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from _compose import make_cfg, tiny_overrides
from omegaconf import OmegaConf

from xmr.runs.lifecycle import write_failure
from xmr.runs.results import RESULTS_FORMAT, finished_results
from xmr.utils import provenance
from xmr.utils.provenance import collect_provenance, git_state, scrub_argv

needs_git = pytest.mark.skipif(shutil.which("git") is None, reason="git not installed")


def _git(root: Path, *args: str) -> str:
    cmd = ["git", "-c", "user.name=t", "-c", "user.email=t@t", "-c", "commit.gpgsign=false"]
    return subprocess.run(
        [*cmd, *args], cwd=root, check=True, capture_output=True, text=True
    ).stdout


@needs_git
def test_git_state_of_a_checkout(tmp_path: Path) -> None:
    _git(tmp_path, "init", "-q")
    (tmp_path / "a.py").write_text("x = 1\n")
    _git(tmp_path, "add", "a.py")
    _git(tmp_path, "commit", "-q", "-m", "one")
    head = _git(tmp_path, "rev-parse", "HEAD").strip()
    assert git_state(tmp_path) == {"commit": head, "dirty": False}
    (tmp_path / "a.py").write_text("x = 2\n")
    assert git_state(tmp_path) == {"commit": head, "dirty": True}


def test_git_state_is_null_without_a_checkout_or_without_git(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert git_state(tmp_path) is None  # an installed package: no .git at its root
    (tmp_path / ".git").mkdir()
    monkeypatch.setenv("PATH", str(tmp_path / "no-bin"))  # no git executable
    assert git_state(tmp_path) is None

    def hangs(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
        raise subprocess.TimeoutExpired(args[0], provenance.GIT_TIMEOUT_S)

    monkeypatch.setattr(provenance.subprocess, "run", hangs)
    assert git_state(tmp_path) is None


def test_collect_provenance(monkeypatch: pytest.MonkeyPatch) -> None:
    argv = ["xmr train", "loss=listnet", "logger.wandb.api_key=abc123", "+token=t"]
    monkeypatch.setattr(sys, "argv", argv)
    p = collect_provenance("2026-01-02T03:04:05+00:00")
    assert set(p) == {
        "xmr",
        "git",
        "python",
        "torch",
        "lightning",
        "hydra",
        "argv",
        "hostname",
        "started",
    }
    assert p["argv"] == ["xmr train", "loss=listnet", "logger.wandb.api_key=***", "+token=***"]
    assert p["started"] == "2026-01-02T03:04:05+00:00"
    assert p["torch"] == importlib.metadata.version("torch")
    assert p["hydra"] == importlib.metadata.version("hydra-core")
    assert p["python"].count(".") == 2 and p["hostname"]
    assert collect_provenance()["started"].endswith("+00:00")  # default: now, UTC
    json.dumps(p)  # plain JSON
    if (provenance.PACKAGE_ROOT / ".git").exists() and shutil.which("git"):
        assert p["git"] is not None and len(p["git"]["commit"]) == 40
    assert scrub_argv(["password"]) == ["password"]  # a bare word, not key=value


def test_finished_results_ignores_provenance(tmp_path: Path) -> None:
    """A finished job is skipped whatever its provenance says (another host, time, commit)."""
    cfg = make_cfg(tmp_path, tiny_overrides(tmp_path / "store"))
    out = tmp_path / "run"
    out.mkdir()
    record = {
        "format": RESULTS_FORMAT,
        "test/t2i/recall@1": 0.5,
        "predictions": {},
        "provenance": {**collect_provenance(), "hostname": "elsewhere", "git": None},
        "config": OmegaConf.to_container(cfg, resolve=True),
    }
    (out / "results.json").write_text(json.dumps(record))
    assert finished_results(out, cfg) == record


def test_failed_json_records_provenance(tmp_path: Path) -> None:
    cfg = make_cfg(tmp_path, tiny_overrides(tmp_path / "store"))
    path = write_failure(tmp_path, cfg, RuntimeError("boom"), started="2026-01-02T03:04:05+00:00")
    record = json.loads(path.read_text())
    assert record["provenance"]["started"] == "2026-01-02T03:04:05+00:00"
    assert "provenance" not in record["config"]
