"""Helpers of benchmarks/gpu_check.sh: the environment record, the bf16-vs-fp32 comparison and the
summary (one JSON + printed lines) of a GPU check.

    python benchmarks/gpu_check.py env                        # JSON: torch, CUDA, GPUs
    python benchmarks/gpu_check.py compare BF16_RUN FP32_RUN [--tol 0.05]
    python benchmarks/gpu_check.py summary OUT_DIR            # -> OUT_DIR/gpu_check.json

``compare`` reads the two runs' ``results.json`` and checks every test Recall@K (list protocol
and full gallery, both directions) of the bf16-mixed run against the 32-true run within ``tol``
(absolute, as a fraction: 0.05 = 5 points); it exits 1 when one is outside, or NaN.
``summary`` gathers what the steps left in OUT_DIR (``steps.jsonl`` written by the shell script,
the runs, the ensemble's members, ``bench_gpu.json``) and exits 1 when a step failed or no CUDA
device was there (a dry run).
"""

from __future__ import annotations

import argparse
import json
import math
import re
import sys
from pathlib import Path
from typing import Any

#: The bf16-mixed run may differ from the 32-true run by this much in any test Recall@K
#: (absolute fraction): a broken mixed-precision path lands far outside (NaN, chance level),
#: two healthy runs of the same seed and data order stay well inside.
DEFAULT_TOL = 0.05
RECALL_KEY = re.compile(r"^test(_full)?/(t2i|i2t)/recall@\d+$")
ENSEMBLE_LINE = re.compile(
    r"ensemble epoch (\d+): (\d+) members, ([\d.]+) s training \((\d+) lists/s per member\)"
)
PYTEST_LINE = re.compile(r"(\d+) (passed|failed|skipped|deselected|errors?)")


def read_json(path: Path) -> dict[str, Any] | None:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def environment() -> dict[str, Any]:
    """torch, CUDA and the GPUs this process sees."""
    import torch

    info: dict[str, Any] = {
        "torch": torch.__version__,
        "cuda_build": torch.version.cuda,
        "cuda_available": torch.cuda.is_available(),
        "gpus": [],
    }
    if torch.cuda.is_available():
        for i in range(torch.cuda.device_count()):
            p = torch.cuda.get_device_properties(i)
            info["gpus"].append(
                {"name": p.name, "memory_gib": round(p.total_memory / 2**30, 1)}
                | {"capability": f"{p.major}.{p.minor}"}
            )
        info["bf16_supported"] = torch.cuda.is_bf16_supported()
    return info


def compare_runs(bf16: dict[str, Any], fp32: dict[str, Any], tol: float) -> dict[str, Any]:
    """Every test Recall@K of the two results records side by side, the largest |difference|
    and whether all lie within ``tol`` (a missing or NaN value fails)."""
    keys = sorted(k for k in fp32 if RECALL_KEY.match(k))
    rows: dict[str, dict[str, float | None]] = {}
    worst = 0.0
    ok = bool(keys)
    for k in keys:
        a, b = bf16.get(k), fp32.get(k)
        if not isinstance(a, (int, float)) or not isinstance(b, (int, float)) or math.isnan(a):
            rows[k] = {"bf16": a, "fp32": b, "diff": None}
            ok = False
            continue
        diff = float(a) - float(b)
        worst = max(worst, abs(diff))
        rows[k] = {"bf16": float(a), "fp32": float(b), "diff": diff}
    ok = ok and worst <= tol
    return {
        "tolerance": tol,
        "max_abs_diff": worst,
        "within_tolerance": ok,
        "best_val_rsum": {"bf16": bf16.get("best_val/rsum"), "fp32": fp32.get("best_val/rsum")},
        "recall": rows,
    }


def ensemble_figures(run_dir: Path, log: Path | None) -> dict[str, Any]:
    """Members finished under ``run_dir`` (their results.json), mean test R@1 per loss, and the
    epoch line of the ensemble's log (training seconds, lists/s per member)."""
    members = sorted(run_dir.glob("*/results.json"))
    by_loss: dict[str, list[float]] = {}
    for path in members:
        r = read_json(path) or {}
        loss = path.parent.name.split(",")[0].removeprefix("loss=")
        for d in ("t2i", "i2t"):
            v = r.get(f"test/{d}/recall@1")
            if isinstance(v, (int, float)):
                by_loss.setdefault(f"{loss}/{d}", []).append(float(v))
    out: dict[str, Any] = {
        "members_finished": len(members),
        "test_recall@1_mean": {k: sum(v) / len(v) for k, v in sorted(by_loss.items())},
    }
    if log is not None and log.is_file():
        found = ENSEMBLE_LINE.findall(log.read_text(encoding="utf-8", errors="replace"))
        if found:
            epoch, e, sec, rate = found[-1]
            out.update(members=int(e), train_s=float(sec), lists_per_s_per_member=int(rate))
    return out


def pytest_counts(log: Path) -> dict[str, int]:
    """``{"passed": n, "skipped": m, ...}`` from the last summary line of a pytest log."""
    if not log.is_file():
        return {}
    lines = [ln for ln in log.read_text(errors="replace").splitlines() if " in " in ln]
    last = lines[-1] if lines else ""
    return {kind: int(n) for n, kind in PYTEST_LINE.findall(last)}


def summary(out_dir: Path, wall_s: float | None = None) -> dict[str, Any]:
    """The check's record (``out_dir/gpu_check.json``) from what its steps left in ``out_dir``."""
    steps = []
    steps_file = out_dir / "steps.jsonl"
    if steps_file.is_file():
        for line in steps_file.read_text(encoding="utf-8").splitlines():
            if line.strip():
                steps.append(json.loads(line))
    record: dict[str, Any] = {
        "steps": steps,
        "wall_s": wall_s,
        "environment": read_json(out_dir / "env.json"),
        "tests": pytest_counts(out_dir / "cuda_tests.log"),
        "precision": read_json(out_dir / "precision_compare.json"),
        "ensemble": ensemble_figures(out_dir / "runs" / "ensemble", out_dir / "ensemble.log"),
        "bench": read_json(out_dir / "bench_gpu.json"),
    }
    env = record["environment"] or {}
    record["cuda"] = bool(env.get("cuda_available"))
    # Without a CUDA device every step may pass (tests skip, the bench prints its skip line):
    # a dry run of the script, never a passed GPU check.
    record["ok"] = record["cuda"] and bool(steps) and all(s.get("rc") == 0 for s in steps)
    (out_dir / "gpu_check.json").write_text(json.dumps(record, indent=1) + "\n", encoding="utf-8")
    return record


def print_summary(record: dict[str, Any], out_dir: Path) -> None:
    print("== GPU check summary ==")
    env = record.get("environment") or {}
    gpus = ", ".join(g["name"] for g in env.get("gpus", [])) or "none"
    print(f"torch {env.get('torch')} (CUDA {env.get('cuda_build')}), GPUs: {gpus}")
    for s in record["steps"]:
        status = {0: "ok", 124: "TIMED OUT", 137: "KILLED"}.get(
            s.get("rc"), f"FAILED rc={s.get('rc')}"
        )
        if s.get("rc") is None:
            status = f"SKIPPED ({s.get('note', '')})"
        print(
            f"  {s['name']:<12s} {status:<16s} {float(s.get('seconds', 0)):6.1f} s (limit {s.get('limit_s')} s)"
        )
    if record["tests"]:
        print("  CUDA tests: " + ", ".join(f"{n} {k}" for k, n in record["tests"].items()))
    prec = record.get("precision")
    if prec:
        verdict = "within" if prec["within_tolerance"] else "OUTSIDE"
        print(
            f"  bf16-mixed vs 32-true: max |diff| of test Recall@K {prec['max_abs_diff']:.3f} "
            f"{verdict} the tolerance {prec['tolerance']:.3f}; best val rsum "
            f"{prec['best_val_rsum']['bf16']} vs {prec['best_val_rsum']['fp32']}"
        )
    ens = record.get("ensemble") or {}
    if ens.get("members_finished"):
        line = f"  ensemble: {ens['members_finished']} members finished"
        if "lists_per_s_per_member" in ens:
            line += (
                f", {ens['train_s']:.1f} s training, {ens['lists_per_s_per_member']} lists/s "
                "per member"
            )
        print(line)
    bench = record.get("bench") or {}
    if bench.get("projection_s"):
        for k, v in bench["projection_s"].items():
            print(f"  projected full paper sweep, {k}: {v / 3600:.1f} h (training steps only)")
    elif bench.get("skipped"):
        print(f"  bench_gpu: skipped ({bench['skipped']})")
    if not record["cuda"]:
        print("  no CUDA device: a dry run of the script, not a GPU check")
    wall = "?" if record["wall_s"] is None else f"{record['wall_s']:.0f}"
    print(f"wall {wall} s; {'PASS' if record['ok'] else 'FAIL'}")
    print(f"record: {out_dir / 'gpu_check.json'}")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = ap.add_subparsers(dest="what", required=True)
    sub.add_parser("env", help="print torch / CUDA / GPU facts as JSON")
    cmp = sub.add_parser("compare", help="bf16-mixed vs 32-true test recalls")
    cmp.add_argument("bf16_run", type=Path)
    cmp.add_argument("fp32_run", type=Path)
    cmp.add_argument("--tol", type=float, default=DEFAULT_TOL)
    cmp.add_argument("--out", type=Path, default=None, help="also write the comparison here")
    summ = sub.add_parser("summary", help="gather the check's record and print it")
    summ.add_argument("out_dir", type=Path)
    summ.add_argument("--wall", type=float, default=None, help="the check's wall time (s)")
    args = ap.parse_args(argv)

    if args.what == "env":
        print(json.dumps(environment()))
        return 0
    if args.what == "compare":
        runs = [read_json(d / "results.json") for d in (args.bf16_run, args.fp32_run)]
        if any(r is None for r in runs):
            missing = [
                str(d)
                for d, r in zip((args.bf16_run, args.fp32_run), runs, strict=True)
                if r is None
            ]
            print(f"compare: no results.json in {', '.join(missing)}")
            return 1
        result = compare_runs(runs[0], runs[1], args.tol)
        if args.out is not None:
            args.out.write_text(json.dumps(result, indent=1) + "\n", encoding="utf-8")
        for k, row in result["recall"].items():
            diff = "n/a" if row["diff"] is None else f"{row['diff']:+.3f}"
            print(f"  {k:<24s} bf16 {row['bf16']}  fp32 {row['fp32']}  diff {diff}")
        print(
            f"max |diff| {result['max_abs_diff']:.3f}, tolerance {args.tol}: "
            + ("ok" if result["within_tolerance"] else "OUTSIDE")
        )
        return 0 if result["within_tolerance"] else 1
    record = summary(args.out_dir, args.wall)
    print_summary(record, args.out_dir)
    return 0 if record["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
