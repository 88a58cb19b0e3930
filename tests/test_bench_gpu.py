"""The GPU benchmark and check script, as far as a machine without a GPU can test them: the
skip line, the projection's arithmetic, the code path on the CPU (slow), the shell script's
syntax and the check's Python helpers (environment, bf16-vs-fp32 comparison, summary)."""

from __future__ import annotations

import json
import math
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
BENCH = ROOT / "benchmarks"
sys.path.insert(0, str(BENCH))

import bench_gpu  # noqa: E402
import gpu_check  # noqa: E402


def test_bench_gpu_prints_its_skip_line_without_cuda(monkeypatch, capsys, tmp_path) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    out = bench_gpu.main(["--quick", "--json", str(tmp_path / "b.json")])
    assert capsys.readouterr().out.strip() == bench_gpu.SKIP_LINE
    assert out == {"skipped": "no CUDA device"}
    assert json.loads((tmp_path / "b.json").read_text()) == out


def test_run_all_has_the_gpu_section_last() -> None:
    text = (BENCH / "run_all.py").read_text(encoding="utf-8")
    body = text.split("def main", 1)[1]
    assert body.index("bench_rerank.main") < body.index("bench_gpu.main")


def test_projection_of_the_full_paper_sweep(capsys) -> None:
    # 10 ms per single-run step (3,200 lists/s); the E=20 ensemble 50 ms per step (640 lists/s
    # per member).
    single = {"fp32": {name: {"sec": 0.01} for name in bench_gpu.LOSSES}}
    ensemble = {"fp32": {"sec": 0.05, "lists_per_s_per_member": 32 / 0.05}}
    out = bench_gpu.projection(single, ensemble, 20, gpus=4)
    grid = 4 * 5 * 100 * 58_000  # 116 M list passes
    assert out["fp32/single_runs_1gpu"] == pytest.approx(grid / 3200)
    assert out["fp32/single_runs_4gpu"] == pytest.approx(grid / 3200 / 4)
    assert out["fp32/ensemble_1gpu"] == pytest.approx(100 * 58_000 / 640)
    printed = capsys.readouterr().out
    assert "116 M list passes" in printed and "training steps only" in printed
    # A failed measurement leaves its projection out rather than guessing.
    single["bf16"] = {name: {"error": "x"} for name in bench_gpu.LOSSES}
    assert not any(k.startswith("bf16") for k in bench_gpu.projection(single, {}, 20, 1))


@pytest.mark.slow
def test_bench_gpu_code_path_runs_on_the_cpu(capsys) -> None:
    """Every measurement of the GPU section, on the CPU with tiny repeats (the code, not the
    figures)."""
    torch.set_num_threads(1)
    out = bench_gpu.run("cpu", members=4, repeats=1, number=1, matmul_n=64, precisions=("fp32",))
    assert set(out["single"]["fp32"]) == set(bench_gpu.LOSSES)
    assert all(r["lists_per_s"] > 0 for r in out["single"]["fp32"].values())
    assert out["ensemble"]["fp32"]["speedup"] > 0
    assert out["projection_s"]["fp32/single_runs_1gpu"] > 0
    assert "full paper sweep" in capsys.readouterr().out


def test_gpu_check_script_parses() -> None:
    bash = shutil.which("bash")
    assert bash is not None
    proc = subprocess.run([bash, "-n", str(BENCH / "gpu_check.sh")], capture_output=True)
    assert proc.returncode == 0, proc.stderr
    text = (BENCH / "gpu_check.sh").read_text(encoding="utf-8")
    # Every step is time-boxed and the caps of the sequential path fit in 5 minutes.
    assert text.count("timeout -k 5") == 1 and "GPU_CHECK_BUDGET:-285" in text


def test_gpu_check_env_on_this_machine(capsys) -> None:
    assert gpu_check.main(["env"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["torch"] == torch.__version__
    assert info["cuda_available"] == torch.cuda.is_available()


def _results(r1: float, nan: bool = False) -> dict:
    rec = {"best_val/rsum": 123.0, "test/t2i/ndcg@10": 0.5}
    for d in ("t2i", "i2t"):
        for k in (1, 5, 10):
            rec[f"test/{d}/recall@{k}"] = r1 * k / 10 + 0.5
            rec[f"test_full/{d}/recall@{k}"] = r1 * k / 10 + 0.4
    if nan:
        rec["test/i2t/recall@5"] = math.nan
    return rec


def test_gpu_check_compare_within_and_outside_the_tolerance(tmp_path, capsys) -> None:
    runs = {}
    for name, r1, nan in [("fp32", 0.30, False), ("bf16", 0.32, False), ("bad", 0.02, False)]:
        runs[name] = tmp_path / name
        runs[name].mkdir()
        (runs[name] / "results.json").write_text(json.dumps(_results(r1, nan)))
    runs["nan"] = tmp_path / "nan"
    runs["nan"].mkdir()
    (runs["nan"] / "results.json").write_text(json.dumps(_results(0.3, nan=True)))

    out = tmp_path / "cmp.json"
    assert gpu_check.main(["compare", str(runs["bf16"]), str(runs["fp32"]), "--out", str(out)]) == 0
    cmp = json.loads(out.read_text())
    assert cmp["within_tolerance"] and cmp["max_abs_diff"] == pytest.approx(0.02)
    assert len(cmp["recall"]) == 12  # 2 protocols x 2 directions x 3 K; ndcg is not compared
    assert gpu_check.main(["compare", str(runs["bad"]), str(runs["fp32"])]) == 1
    assert gpu_check.main(["compare", str(runs["nan"]), str(runs["fp32"])]) == 1
    assert gpu_check.main(["compare", str(tmp_path / "none"), str(runs["fp32"])]) == 1
    assert "no results.json" in capsys.readouterr().out


def test_gpu_check_summary_gathers_the_steps(tmp_path, capsys) -> None:
    steps = [
        {"name": "data", "rc": 0, "seconds": 40.0, "limit_s": 100, "background": True},
        {"name": "cuda_tests", "rc": 0, "seconds": 20.0, "limit_s": 75, "background": False},
        {"name": "bench", "rc": 0, "seconds": 30.0, "limit_s": 45, "background": False},
    ]
    (tmp_path / "steps.jsonl").write_text("".join(json.dumps(s) + "\n" for s in steps))
    (tmp_path / "cuda_tests.log").write_text("....\n4 passed, 2 deselected in 3.1s\n")
    env = {"torch": "2.x", "cuda_available": True, "gpus": [{"name": "H200"}]}
    (tmp_path / "env.json").write_text(json.dumps(env))
    bench = {"projection_s": {"fp32/single_runs_1gpu": 36000.0}}
    (tmp_path / "bench_gpu.json").write_text(json.dumps(bench))
    member = tmp_path / "runs" / "ensemble" / "loss=listnet,seed=0"
    member.mkdir(parents=True)
    (member / "results.json").write_text(json.dumps({"test/t2i/recall@1": 0.25}))
    (tmp_path / "ensemble.log").write_text(
        "x ensemble epoch 0: 20 members, 12.5 s training (1535 lists/s per member), val/rsum [1]\n"
    )
    assert gpu_check.main(["summary", str(tmp_path), "--wall", "250"]) == 0
    record = json.loads((tmp_path / "gpu_check.json").read_text())
    assert record["ok"] and record["wall_s"] == 250
    assert record["tests"] == {"passed": 4, "deselected": 2}
    assert record["ensemble"]["members_finished"] == 1
    assert record["ensemble"]["lists_per_s_per_member"] == 1535
    assert record["ensemble"]["test_recall@1_mean"] == {"listnet/t2i": 0.25}
    printed = capsys.readouterr().out
    assert "H200" in printed and "10.0 h" in printed and "PASS" in printed

    env["cuda_available"] = False  # every step passed, but on a CPU: a dry run
    (tmp_path / "env.json").write_text(json.dumps(env))
    assert gpu_check.main(["summary", str(tmp_path)]) == 1
    assert "dry run" in capsys.readouterr().out
    (tmp_path / "env.json").write_text(json.dumps({**env, "cuda_available": True}))
    steps.append({"name": "fp32", "rc": 124, "seconds": 40.0, "limit_s": 40})
    (tmp_path / "steps.jsonl").write_text("".join(json.dumps(s) + "\n" for s in steps))
    assert gpu_check.main(["summary", str(tmp_path)]) == 1
    assert "TIMED OUT" in capsys.readouterr().out
