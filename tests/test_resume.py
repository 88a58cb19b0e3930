"""Interruption: real ``kill -9`` of ``xmr`` subprocesses, then the same command again.

- training: resumes from ``checkpoints/last.ckpt`` and ends bit-identical to an uninterrupted run
  (weights, metrics, predictions); at most the epoch in progress is redone;
- a multirun sweep: the relaunch skips the finished job and completes the others;
- mining: the relaunch keeps the files mined before the kill (same inode) and publishes lists
  bytes-identical to an uninterrupted mine;
- extraction: the relaunch keeps the finished chunks and writes the same store;
- a rerun whose config differs (a sweep rerun handing a trial folder other settings) never resumes
  the old checkpoint: the old run is moved aside to ``<run>.old-<time>`` and the job starts afresh;
  a rerun of the same config (up to run-management keys) resumes in place.

Every store here is SYNTHETIC except the extraction test's real photos (tiny random encoder).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from _compose import make_cfg
from hydra import compose, initialize_config_dir

from xmr.data.mining import mine_lists
from xmr.data.store import FeatureStore
from xmr.data.synth import PRESETS, write_synthetic_store
from xmr.report.collect import collect, collect_unfinished
from xmr.runs.results import SET_ASIDE_FILE
from xmr.train import train

REPO = Path(__file__).resolve().parents[1]
CONF = REPO / "conf"
METRIC_PREFIXES = ("test/", "val/", "best_val/")


def _env(tmp: Path) -> dict[str, str]:
    return {**os.environ, "XMR_LOGS": str(tmp / "logs"), "XMR_DATA": str(tmp / "data")}


def _launch(cmd: list[str], tmp: Path, log: Path) -> subprocess.Popen:
    fh = open(log, "ab")  # noqa: SIM115 - closed with the process
    return subprocess.Popen(
        cmd, cwd=tmp, env=_env(tmp), stdout=fh, stderr=subprocess.STDOUT, start_new_session=True
    )


def _wait_until(
    proc: subprocess.Popen, ready: Callable[[], bool], log: Path, timeout: float = 240
) -> None:
    """Poll ``ready`` every 20 ms while ``proc`` runs; fail (with the log) if it ends first."""
    t0 = time.monotonic()
    while not ready():
        if proc.poll() is not None:
            pytest.fail(f"process ended (rc {proc.returncode}) first:\n{log.read_text()[-3000:]}")
        if time.monotonic() - t0 > timeout:
            os.killpg(proc.pid, signal.SIGKILL)
            pytest.fail(f"timed out waiting:\n{log.read_text()[-3000:]}")
        time.sleep(0.02)


def _kill9(proc: subprocess.Popen) -> None:
    os.killpg(proc.pid, signal.SIGKILL)
    assert proc.wait(timeout=30) == -signal.SIGKILL


def _run_to_end(cmd: list[str], tmp: Path, log: Path, timeout: float = 400) -> str:
    proc = _launch(cmd, tmp, log)
    rc = proc.wait(timeout=timeout)
    assert rc == 0, log.read_text()[-4000:]
    return log.read_text()


# ------------------------------------------------------------------------------------ training
def _train_overrides(store: Path, lists_root: Path, epochs: int) -> list[str]:
    return [
        "data=synthetic_tiny",
        f"data.store={store}",
        "data.synth=null",
        f"data.lists_root={lists_root}",
        f"trainer.max_epochs={epochs}",
        "trainer.enable_progress_bar=false",
        "model.net.dropout=0.1",  # dropout draws from the global RNG: it must be restored too
        "threads=1",
    ]


def _ckpt_epoch(path: Path) -> int | None:
    try:
        return int(torch.load(path, map_location="cpu", weights_only=True)["epoch"])
    except (FileNotFoundError, RuntimeError, EOFError):
        return None


def test_rerun_with_another_config_moves_the_old_run_aside_and_starts_fresh(
    tiny_store: Path, tmp_path: Path, caplog
) -> None:
    base = _train_overrides(tiny_store, tmp_path / "lists", 1)
    train(make_cfg(tmp_path, [*base, "model.net.fc_sizes=[16]"], "trial"))
    job = tmp_path / "trial"
    assert (job / "checkpoints" / "last.ckpt").is_file() and (job / "results.json").is_file()
    (job / "failed.json").write_text("{}")  # as an earlier failed attempt of that config left it

    # The rerun hands the same folder another config: before, it resumed the old last.ckpt and
    # crashed on a size mismatch, leaving new config.yaml beside old results.json + failed.json.
    with caplog.at_level(logging.WARNING, logger="xmr.runs.lifecycle"):
        results = train(make_cfg(tmp_path, [*base, "model.net.fc_sizes=[32]"], "trial"))
    (old,) = tmp_path.glob("trial.old-*")
    assert f"{job}: holds a run of another config (differs at model.net.fc_sizes)" in caplog.text
    assert f"moved it aside to {old}" in caplog.text
    assert json.loads((old / "results.json").read_text())["config"]["model"]["net"]["fc_sizes"] == [
        16
    ]
    assert (old / "checkpoints" / "last.ckpt").is_file() and (old / "failed.json").is_file()
    assert json.loads((old / SET_ASIDE_FILE).read_text())["differs"] == ["model.net.fc_sizes"]
    assert results["config"]["model"]["net"]["fc_sizes"] == [32] and results["epochs_run"] == 1
    assert not (job / "failed.json").exists()
    assert "fc_sizes:\n    - 32\n" in (job / "config.yaml").read_text()
    # the report sees the one job, not the run set aside
    assert [Path(r["_path"]).parent for r in collect(tmp_path)] == [job]
    assert collect_unfinished(tmp_path) == []


def test_rerun_of_the_same_config_resumes_in_place(
    tiny_store: Path, tmp_path: Path, monkeypatch, caplog
) -> None:
    import xmr.train as train_module

    overrides = _train_overrides(tiny_store, tmp_path / "lists", 1)

    def lost(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
        raise RuntimeError("killed after training")

    with monkeypatch.context() as m:
        m.setattr(train_module, "test_record", lost)
        with pytest.raises(RuntimeError, match="killed after training"):
            train(make_cfg(tmp_path, overrides, "job"))
    job = tmp_path / "job"
    assert (job / "failed.json").is_file() and (job / "checkpoints" / "last.ckpt").is_file()
    # run-management keys may change: the loggers (left out of the run dir's name)
    again = [*overrides, "logger=[csv,tensorboard]"]
    with caplog.at_level(logging.INFO, logger="xmr.train"):
        results = train(make_cfg(tmp_path, again, "job"))
    assert f"resuming from {job / 'checkpoints' / 'last.ckpt'}" in caplog.text
    assert not list(tmp_path.glob("job.old-*"))
    assert results["epochs_run"] == 1 and not (job / "failed.json").exists()


@pytest.mark.slow
def test_killed_training_resumes_to_the_uninterrupted_result(tiny_store: Path, tmp_path: Path):
    epochs = 14
    overrides = _train_overrides(tiny_store, tmp_path / "lists", epochs)
    reference = train(make_cfg(tmp_path, overrides, "reference"))  # also mines the lists

    run = tmp_path / "run"
    cmd = [sys.executable, "-m", "xmr.train", *overrides, f"hydra.run.dir={run}"]
    log = tmp_path / "train.log"
    proc = _launch(cmd, tmp_path, log)
    last = run / "checkpoints" / "last.ckpt"
    # Kill once two epochs are checkpointed: the run is then inside a later epoch.
    _wait_until(proc, lambda: (_ckpt_epoch(last) or 0) >= 1, log)
    _kill9(proc)
    killed_at = _ckpt_epoch(last)
    assert killed_at is not None and killed_at < epochs - 1, killed_at
    assert not (run / "results.json").exists() and not (run / "failed.json").exists()
    history_before = [r["epoch"] for r in map(json.loads, _lines(run / "metrics.jsonl"))]

    text = _run_to_end(cmd, tmp_path, log)
    assert f"resuming from {last}" in text
    results = json.loads((run / "results.json").read_text())
    keys = [k for k in reference if k.startswith(METRIC_PREFIXES)] + ["epochs_run"]
    assert keys and {k: results[k] for k in keys} == {k: reference[k] for k in keys}

    # Bit-identical weights and predictions, not merely equal (discrete) metrics.
    ref_state = torch.load(tmp_path / "reference/checkpoints/last.ckpt", weights_only=True)
    state = torch.load(last, weights_only=True)
    assert ref_state["epoch"] == state["epoch"] == epochs - 1
    assert ref_state["state_dict"].keys() == state["state_dict"].keys()
    for name, tensor in ref_state["state_dict"].items():
        assert torch.equal(tensor, state["state_dict"][name]), name
    for direction in ("t2i", "i2t"):
        with (
            np.load(tmp_path / "reference" / f"predictions_{direction}.npz") as a,
            np.load(run / f"predictions_{direction}.npz") as b,
        ):
            for k in ("query", "candidates", "scores", "labels"):
                assert np.array_equal(a[k], b[k], equal_nan=True), (direction, k)

    # At most the epoch in progress was redone: the killed run validated epochs 0..k with
    # k <= killed_at + 1, and the resumed run went on from killed_at + 1.
    val_epochs = [
        r["epoch"] for r in map(json.loads, _lines(run / "metrics.jsonl")) if r["stage"] == "val"
    ]
    before = history_before
    assert before == list(range(len(before))) and len(before) - 1 <= killed_at + 1
    assert val_epochs[len(before) :] == list(range(killed_at + 1, epochs))


def _lines(path: Path) -> list[str]:
    """Complete lines of a JSONL file (a kill may leave a torn last line)."""
    out = []
    for line in path.read_text().splitlines():
        try:
            json.loads(line)
        except json.JSONDecodeError:
            continue
        out.append(line)
    return [line for line in out if json.loads(line).get("stage") == "val"]


@pytest.mark.slow
def test_killed_sweep_relaunch_runs_only_the_missing_jobs(tiny_store: Path, tmp_path: Path):
    overrides = _train_overrides(tiny_store, tmp_path / "lists", 12)
    sweep = tmp_path / "sweep"
    cmd = [
        sys.executable,
        "-m",
        "xmr.train",
        "-m",
        *overrides,
        "seed=0,1,2",
        f"hydra.sweep.dir={sweep}",
        "hydra.sweep.subdir=${hydra.job.num}",  # job dirs 0, 1, 2
    ]
    log = tmp_path / "sweep.log"
    proc = _launch(cmd, tmp_path, log)

    def a_later_job_started() -> bool:  # jobs run one after another
        done = len(list(sweep.glob("*/results.json")))
        return 1 <= done < len(list(sweep.glob("*/checkpoints/last.ckpt")))

    _wait_until(proc, a_later_job_started, log)
    _kill9(proc)
    finished = {p: p.stat().st_mtime_ns for p in sweep.glob("*/results.json")}
    assert 1 <= len(finished) < 3

    text = _run_to_end(cmd, tmp_path, log)
    assert text.count("already finished") == len(finished), text[-3000:]
    seeds = sorted(json.loads(p.read_text())["seed"] for p in sweep.glob("*/results.json"))
    assert seeds == [0, 1, 2]
    for path, mtime in finished.items():
        assert path.stat().st_mtime_ns == mtime  # the finished jobs were not run again
    assert not list(sweep.glob("*/failed.json"))


@pytest.mark.slow
def test_sweep_with_a_failing_job_records_it_and_runs_the_others(
    tiny_store: Path, tmp_path: Path
) -> None:
    """Hydra's basic launcher runs every job of a sweep, then raises the first job error: the
    failing job leaves ``failed.json``, the others their results, and the exit status is not 0."""
    overrides = _train_overrides(tiny_store, tmp_path / "lists", 1)
    sweep = tmp_path / "sweep"
    cmd = [
        sys.executable,
        "-m",
        "xmr.train",
        "-m",
        *overrides,
        "optimizer.lr=-1,0.001",
        f"hydra.sweep.dir={sweep}",
        "hydra.sweep.subdir=${hydra.job.num}",  # job dirs 0, 1, 2
    ]
    log = tmp_path / "sweep.log"
    proc = _launch(cmd, tmp_path, log)
    assert proc.wait(timeout=400) != 0
    failed, ok = [sweep / "0"], [sweep / "1"]  # jobs in override order
    record = json.loads((failed[0] / "failed.json").read_text())
    assert record["error"].startswith("ConfigError: optimizer.lr=-1")
    assert record["seed"] == 0 and record["config"]["optimizer"]["lr"] == -1
    assert "Traceback" in record["traceback"]
    assert not (failed[0] / "results.json").exists()
    assert (ok[0] / "results.json").is_file() and not (ok[0] / "failed.json").exists()


# -------------------------------------------------------------------------------------- mining
@pytest.fixture(scope="module")
def mining_store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A SYNTHETIC store big enough that mining one file takes a noticeable time."""
    cfg = dataclasses.replace(PRESETS["demo"], num_train=2000, num_val=100, num_test=100, dim=64)
    return write_synthetic_store(tmp_path_factory.mktemp("mining") / "store", cfg)


@pytest.mark.slow
def test_killed_mining_resumes_and_keeps_finished_files(mining_store: Path, tmp_path: Path):
    out = tmp_path / "lists"
    partial = tmp_path / ".lists.partial"
    mining = {"pool": 200, "hard": 50, "t2i_captions_per_image": 1, "i2t_positives": 1}
    cmd = [
        sys.executable,
        "-m",
        "xmr.cli",
        "mine",
        "data=synthetic_tiny",
        f"data.store={mining_store}",
        "data.synth=null",
        f"data.lists_dir={out}",
        *[f"data.mining.{k}={v}" for k, v in mining.items()],
        "verbose=true",  # the full per-file statistics
    ]
    log = tmp_path / "mine.log"
    proc = _launch(cmd, tmp_path, log)
    _wait_until(proc, lambda: (partial / "t2i_train.npz.stats.json").exists(), log)
    _kill9(proc)
    assert not out.exists()  # nothing published
    inode = (partial / "t2i_train.npz").stat().st_ino

    text = _run_to_end(cmd, tmp_path, log)
    # The mine report states, per file, how many lists held positives beyond those added.
    assert text.count('"lists_with_extra_positives": 0') == 6, text[-3000:]
    assert not partial.exists()
    assert (out / "t2i_train.npz").stat().st_ino == inode  # kept, not mined again
    reference = mine_lists(
        FeatureStore.open(mining_store), tmp_path / "reference", seed=0, **mining
    )
    names = sorted(p.name for p in reference.iterdir())
    assert sorted(p.name for p in out.iterdir()) == names  # no stray work files
    for name in names:
        if name.endswith(".npz"):
            assert (out / name).read_bytes() == (reference / name).read_bytes(), name
    assert json.loads((out / "lists.json").read_text()) == json.loads(
        (reference / "lists.json").read_text()
    )


# ---------------------------------------------------------------------------------- extraction
FLICKR8K = REPO.parent / "shared" / "data" / "flickr8k-1k"
SHARED_STORE = FLICKR8K / "features" / "zeroshot-bridge"
TINY_CLIP = {
    "embed_dim": 32,
    "vision_cfg": {"image_size": 32, "layers": 1, "width": 32, "patch_size": 16, "head_width": 16},
    "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1},
}


@pytest.mark.slow
def test_killed_extraction_resumes_from_its_chunks(tmp_path: Path) -> None:
    if not (FLICKR8K / "captions.tsv").is_file() or not SHARED_STORE.is_dir():
        pytest.skip(f"shared real data absent ({FLICKR8K})")
    from xmr.extract import run_extraction, work_dir_for

    tiny = json.dumps(TINY_CLIP).replace('"', "").replace(" ", "")  # Hydra dict override
    args = [
        "data_adapter=folder",
        f"annotations={FLICKR8K / 'captions.tsv'}",
        f"image_root={FLICKR8K / 'images'}",
        f"folder.split_from={SHARED_STORE}",
        "max_images=60",
        "model.name=xmr-tiny-resume",
        "model.pretrained=null",
        "num_workers=0",
        "batch_size=4",
        "chunk_size=4",
        "progress=false",
    ]
    out = tmp_path / "store"
    cmd = [sys.executable, "-m", "xmr.extract", *args, f"out={out}", f"model.config={tiny}"]
    log = tmp_path / "extract.log"
    proc = _launch(cmd, tmp_path, log)
    chunks = work_dir_for(out) / "chunks"
    _wait_until(proc, lambda: (chunks / "image_00002.npy").exists(), log)
    _kill9(proc)
    assert not out.exists()
    kept = {p.name: p.stat().st_ino for p in chunks.glob("*.npy")}
    assert 3 <= len(kept) < 15 + 75  # 60 images, 300 captions in chunks of 4: interrupted

    text = _run_to_end(cmd, tmp_path, log)
    assert f"image: resuming, {sum(n.startswith('image') for n in kept)} of 15 chunks" in text
    resumed = FeatureStore.open(out)
    assert not work_dir_for(out).exists()

    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose("extract", overrides=[*args, f"out={tmp_path / 'reference'}"])
    cfg.model.config = TINY_CLIP
    reference = FeatureStore.open(run_extraction(cfg))
    assert np.array_equal(resumed.image_emb, reference.image_emb)
    assert np.array_equal(resumed.text_emb, reference.text_emb)
    assert resumed.captions() == reference.captions()
    assert np.array_equal(resumed.text_image, reference.text_image)
