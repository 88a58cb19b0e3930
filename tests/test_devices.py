"""Device assignment of local sweeps (xmr.utils.devices, hydra/launcher=local) and of the
ensemble, tested without a GPU: the device count is simulated (passed in, or replaced in the
launching process of tests/_device_app.py), and a job records the CUDA_VISIBLE_DEVICES its worker
process saw."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import textwrap
from collections import Counter, defaultdict
from pathlib import Path

import pytest
import torch

from xmr.utils import devices
from xmr.utils.devices import (
    CPU_JOBS,
    DevicePlan,
    assign_devices,
    slot_table,
    torch_device,
    visible_gpus,
)
from xmr.utils.instantiate import ConfigError

ROOT = Path(__file__).resolve().parents[1]
APP = Path(__file__).resolve().parent / "_device_app.py"


def _max_overlap(intervals: list[tuple[float, float]]) -> int:
    """The most intervals open at one time."""
    events = sorted([(s, 1) for s, _ in intervals] + [(e, -1) for _, e in intervals])
    now = most = 0
    for _, step in events:
        now += step
        most = max(most, now)
    return most


# -- the plan --------------------------------------------------------------------------------
def test_four_gpus_one_job_each() -> None:
    plan = assign_devices(None, 4, 1)
    assert plan == DevicePlan(4, (0, 1, 2, 3), 1)


def test_jobs_per_gpu_two_puts_two_on_each_gpu() -> None:
    plan = assign_devices(None, 4, 2)
    assert plan.n_jobs == 8
    assert Counter(plan.devices) == {0: 2, 1: 2, 2: 2, 3: 2}
    assert plan.devices[:4] == (0, 1, 2, 3)  # the first slots cover every GPU once


def test_more_jobs_than_slots_are_cut_to_the_slots(caplog) -> None:
    with caplog.at_level(logging.WARNING, logger="xmr.utils.devices"):
        plan = assign_devices(8, 4, 1)
    assert plan == DevicePlan(4, (0, 1, 2, 3), 1)
    assert "XMR_JOBS=8" in caplog.text and "XMR_JOBS_PER_GPU" in caplog.text
    # Fewer jobs than GPUs: one GPU each, the first ones.
    assert assign_devices(2, 4, 1).devices == (0, 1)
    assert assign_devices(-1, 2, 1).n_jobs == 2  # joblib's "all" = every slot on a GPU node


def test_no_gpu_keeps_todays_behaviour() -> None:
    assert assign_devices(None, 0, 1) == DevicePlan(CPU_JOBS, (), 1) and CPU_JOBS == 2
    assert assign_devices(3, 0, 1) == DevicePlan(3, (), 1)
    assert assign_devices(-1, 0, 4).n_jobs == -1  # passed to joblib unchanged


@pytest.mark.parametrize("bad", [0, -1, True, "2"])
def test_jobs_per_gpu_must_be_a_positive_integer(bad) -> None:
    with pytest.raises(ConfigError, match="XMR_JOBS_PER_GPU"):
        assign_devices(None, 2, bad)


def test_visible_gpus_follow_the_launching_shell() -> None:
    assert visible_gpus(4, environ={}) == ["0", "1", "2", "3"]
    assert visible_gpus(2, environ={"CUDA_VISIBLE_DEVICES": "2,3"}) == ["2", "3"]
    assert visible_gpus(1, environ={"CUDA_VISIBLE_DEVICES": "GPU-ab12, GPU-cd34"}) == ["GPU-ab12"]
    assert visible_gpus(0, environ={"CUDA_VISIBLE_DEVICES": ""}) == []


def test_slot_table_names_one_lock_per_slot() -> None:
    table = slot_table(assign_devices(None, 2, 2), ["2", "GPU-x/y"])
    assert table == [
        ("2", "gpu-2.slot0"),
        ("GPU-x/y", "gpu-GPU-x_y.slot0"),
        ("2", "gpu-2.slot1"),
        ("GPU-x/y", "gpu-GPU-x_y.slot1"),
    ]


# -- slots across processes ------------------------------------------------------------------
def _claimer(lock_dir: Path, slots: list[tuple[str, str]], hold_s: float) -> subprocess.Popen:
    code = textwrap.dedent(
        f"""
        import os, sys, time
        from xmr.utils.devices import claim_gpu_slot
        gpu = claim_gpu_slot({str(lock_dir)!r}, {slots!r})
        assert os.environ["CUDA_VISIBLE_DEVICES"] == gpu
        print(gpu, time.time(), "torch" in sys.modules, flush=True)
        time.sleep({hold_s})
        """
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.Popen(
        [sys.executable, "-c", code], env=env, stdout=subprocess.PIPE, text=True, cwd=ROOT
    )


def _claimed(proc: subprocess.Popen) -> tuple[str, float, bool]:
    line = proc.stdout.readline().split()
    assert line, "the claiming process printed nothing"
    return line[0], float(line[1]), line[2] == "True"


def test_a_slot_is_held_by_one_process_and_the_next_waits(tmp_path) -> None:
    slots = [("0", "gpu-0.slot0"), ("1", "gpu-1.slot0")]
    first = _claimer(tmp_path, slots, hold_s=1.5)
    gpu, first_at, torch_imported = _claimed(first)
    assert gpu == "0" and not torch_imported  # pinned before torch was imported
    second = _claimer(tmp_path, slots, hold_s=0)
    assert _claimed(second)[0] == "1"  # slot 0 is taken: the next free one
    second.wait(timeout=30)
    # Every slot taken: a claimer waits until a holder ends (the kernel drops its lock).
    third = _claimer(tmp_path, slots[:1], hold_s=0)
    gpu, got_at, _ = _claimed(third)
    assert gpu == "0" and got_at >= first_at + 1.5  # after the first holder's 1.5 s
    assert third.wait(timeout=30) == 0 and first.wait(timeout=30) == 0
    holder = json.loads((tmp_path / "gpu-0.slot0.lock").read_text())
    assert holder["pid"] == third.pid and "GPU 0" in holder["what"]


# -- a real local sweep ----------------------------------------------------------------------
@pytest.mark.parametrize(
    "gpus, per_gpu",
    [
        (4, 1),
        pytest.param(2, 2, marks=pytest.mark.slow),
        pytest.param(0, 1, marks=pytest.mark.slow),
    ],
)
def test_local_sweep_pins_each_worker_to_one_gpu(tmp_path, gpus, per_gpu) -> None:
    """8 jobs on a simulated node of ``gpus`` GPUs: at most ``per_gpu`` at once on a GPU, each
    job sees exactly one GPU; no GPU: 2 jobs at once, nothing pinned."""
    pytest.importorskip("joblib")
    env = {k: v for k, v in os.environ.items() if k not in ("XMR_JOBS", "CUDA_VISIBLE_DEVICES")}
    env.update(XMR_TEST_GPUS=str(gpus), XMR_JOBS_PER_GPU=str(per_gpu), PYTHONPATH=str(ROOT))
    out = tmp_path / "out"
    out.mkdir()
    proc = subprocess.run(
        [
            sys.executable,
            str(APP),
            "-m",
            "hydra/launcher=local",
            "job=0,1,2,3,4,5,6,7",
            "sleep=0.6",
            f"out={out}",
            f"hydra.sweep.dir={tmp_path / 'sweep'}",
            f"hydra.launcher.lock_dir={tmp_path / 'locks'}",
        ],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    jobs = [json.loads(p.read_text()) for p in sorted(out.glob("job*.json"))]
    assert sorted(j["job"] for j in jobs) == list(range(8))
    assert not any(j["torch_imported"] for j in jobs)
    if gpus == 0:
        assert "8 jobs, 2 at once (no GPU)" in proc.stderr + proc.stdout
        assert all(j["visible"] is None for j in jobs)  # nothing pinned
        assert _max_overlap([(j["start"], j["end"]) for j in jobs]) <= CPU_JOBS
        return
    assert f"8 jobs, {gpus * per_gpu} at once on {gpus} GPU(s)" in proc.stderr + proc.stdout
    by_gpu: dict[str, list[dict]] = defaultdict(list)
    for j in jobs:
        assert j["visible"] in {str(i) for i in range(gpus)}  # exactly one device
        by_gpu[j["visible"]].append(j)
    for gpu, on in by_gpu.items():
        assert _max_overlap([(j["start"], j["end"]) for j in on]) <= per_gpu, gpu
        assert len({j["pid"] for j in on}) <= per_gpu, gpu  # workers keep their GPU
    pids = {j["pid"]: j["visible"] for j in jobs}
    assert len(pids) <= gpus * per_gpu


# -- one device for the ensemble -------------------------------------------------------------
def test_torch_device_reads_the_trainer_config(monkeypatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert torch_device({"accelerator": "cpu"}) == torch.device("cpu")
    assert torch_device({"accelerator": "auto", "devices": 1}) == torch.device("cpu")
    with pytest.raises(ConfigError, match="no CUDA device"):
        torch_device({"accelerator": "gpu"})
    with pytest.raises(ConfigError, match="trainer.accelerator='tpu'"):
        torch_device({"accelerator": "tpu"})

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)  # a simulated GPU
    for devs in (1, "auto", [0], None):
        assert torch_device({"accelerator": "auto", "devices": devs}) == torch.device("cuda", 0)
    assert torch_device({"accelerator": "cuda"}) == torch.device("cuda", 0)
    assert torch_device({"accelerator": "cpu", "devices": 4}) == torch.device("cpu")
    for devs in (2, [1], [0, 1]):
        with pytest.raises(ConfigError, match="CUDA_VISIBLE_DEVICES"):
            torch_device({"accelerator": "gpu", "devices": devs})


def test_device_module_does_not_import_torch() -> None:
    """A worker loads xmr.utils.devices to pin itself before anything may initialise CUDA."""
    code = (
        "import sys, xmr.utils.devices, hydra_plugins.xmr_launcher; print('torch' in sys.modules)"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code],
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "False"
    assert devices.default_lock_dir().name.startswith("xmr-gpu-slots-")
