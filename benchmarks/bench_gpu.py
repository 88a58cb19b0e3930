"""GPU figures at the paper's shape: training lists/s per loss (single runs) and of the
vectorised ensemble, in fp32 and under bf16 autocast; the ensemble's speed-up over sequential
runs; the fraction of the GPU's dense matmul peak; peak GPU memory; and the projected wall time
of the full paper sweep as single runs and as the ensemble.

    python benchmarks/bench_gpu.py [--quick] [--members 20] [--json PATH]

Runs only where CUDA is available; elsewhere it prints one skip line and exits 0 (so
`make bench` runs it everywhere). The steps are bench_step.py's (same model, losses, fused Adam,
random unit-vector lists, 16 batches in turn), on the GPU. The reference peak is a large dense
matmul measured here (fp32 with TF32 off, TF32, bf16), as bench_step.py's matmul_gflops is on
the CPU. The projection counts training steps only — validation, test, start-up and moving
batches to the GPU are extra (gpu_check.sh times a real epoch for that) — over the full grid:
4 losses x 5 seeds x 100 epochs x (29,000 t2i + 29,000 i2t lists) = 116 M list passes. Prints
figures; asserts nothing about time.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import header, matmul_gflops, runtime, timeit  # noqa: E402
from bench_step import LOSSES, B, ensemble_step, flops_per_step, single_step  # noqa: E402

SKIP_LINE = "== GPU: skipped (no CUDA device: torch.cuda.is_available() is False) =="
#: The full paper sweep (README "Reproducing the paper"): lists per epoch, both directions.
PAPER_LISTS_PER_EPOCH = 2 * 29_000
PAPER_EPOCHS = 100
PAPER_SEEDS = 5
PRECISIONS = ("fp32", "bf16")


@contextlib.contextmanager
def matmul_precision(value: str) -> Iterator[None]:
    """``torch.set_float32_matmul_precision(value)`` for the block ("highest": TF32 off)."""
    before = torch.get_float32_matmul_precision()
    torch.set_float32_matmul_precision(value)
    try:
        yield
    finally:
        torch.set_float32_matmul_precision(before)


def under(precision: str, step: Callable[[], None], device_type: str) -> Callable[[], None]:
    """``step`` in fp32, or under bf16 autocast (what Lightning's bf16-mixed does)."""
    if precision == "fp32":
        return step

    def bf16_step() -> None:
        with torch.autocast(device_type, dtype=torch.bfloat16):
            step()

    return bf16_step


def measure(
    make: Callable[[], Callable[[], None]], device: torch.device, *, repeats: int, number: int
) -> dict:
    """Seconds per call of the step ``make()`` builds and, on a GPU, the peak memory of building
    and running it (``torch.cuda.max_memory_allocated``); ``error`` instead when it fails."""
    cuda = device.type == "cuda"
    if cuda:
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    try:
        step = make()
        sec = timeit(
            step,
            repeats=repeats,
            number=number,
            warmup=min(3, number),
            sync=torch.cuda.synchronize if cuda else None,
        )
    except Exception as err:  # one failing precision or loss must not hide the others
        return {"error": f"{type(err).__name__}: {err}"[:300]}
    mem = torch.cuda.max_memory_allocated() / 2**20 if cuda else None
    return {"sec": sec, "peak_mem_mib": mem}


def hours(seconds: float) -> str:
    return f"{seconds / 3600:.1f} h" if seconds >= 3600 else f"{seconds / 60:.1f} min"


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--members", type=int, default=20, help="ensemble size (multiple of 4)")
    ap.add_argument("--quick", action="store_true", help="fewer repeats, a smaller peak matmul")
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    ap.add_argument("--json", type=Path, default=None, help="also write the figures here")
    args = ap.parse_args(argv)
    if not torch.cuda.is_available():
        print(SKIP_LINE)
        out: dict = {"skipped": "no CUDA device"}
    else:
        reps, number, n = (3, 10, 4096) if args.quick else (7, 20, 8192)
        with runtime(args.threads):
            out = run("cuda", members=args.members, repeats=reps, number=number, matmul_n=n)
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(out, indent=1) + "\n", encoding="utf-8")
    return out


def run(
    device: str,
    *,
    members: int = 20,
    repeats: int = 7,
    number: int = 20,
    matmul_n: int = 8192,
    precisions: tuple[str, ...] = PRECISIONS,
) -> dict:
    """Every figure of this benchmark on ``device`` (a GPU; the CPU only to exercise the code)."""
    dev = torch.device(device)
    cuda = dev.type == "cuda"
    header("GPU: training step at the paper's shape (B=32, L=51, 512+512-d, FC 64, 2x4 heads)")
    out: dict = {"device": str(dev), "gpus": torch.cuda.device_count() if cuda else 0}
    if cuda:
        props = torch.cuda.get_device_properties(dev)
        print(
            f"device: {props.name}, {props.total_memory / 2**30:.0f} GiB, capability "
            f"{props.major}.{props.minor}, CUDA {torch.version.cuda}, {out['gpus']} GPU(s) "
            "visible"
        )
        out["device"] = props.name

    n = matmul_n
    peak = {}
    with matmul_precision("highest"):
        peak["fp32"] = matmul_gflops(n, device=dev)
    with matmul_precision("high"):
        peak["tf32"] = matmul_gflops(n, device=dev)
    peak["bf16"] = matmul_gflops(n, device=dev, dtype=torch.bfloat16)
    print(
        f"dense matmul {n}^3 (reference peak): fp32 {peak['fp32'] / 1e3:.1f} TFLOP/s, "
        f"tf32 {peak['tf32'] / 1e3:.1f}, bf16 {peak['bf16'] / 1e3:.1f}"
    )
    out["peak_gflops"] = peak
    flops = {name: flops_per_step(name) for name in LOSSES}  # counted on the CPU: same graph

    def mem(r: dict) -> str:
        return "" if r["peak_mem_mib"] is None else f"  peak mem {r['peak_mem_mib']:.0f} MiB"

    single: dict[str, dict[str, dict]] = {p: {} for p in precisions}
    for p in precisions:
        for name in LOSSES:
            r = measure(
                lambda name=name, p=p: under(p, single_step(name, device=dev), dev.type),
                dev,
                repeats=repeats,
                number=number,
            )
            if "sec" in r:
                rate = flops[name] / r["sec"] / 1e9
                r.update(lists_per_s=B / r["sec"], of_peak=rate / peak[p])
                print(
                    f"{p} {name:>12s}: {r['sec'] * 1e3:6.2f} ms/step {r['lists_per_s']:8.0f} "
                    f"lists/s  {rate:7.1f} GFLOP/s = {r['of_peak']:6.2%} of the {p} peak" + mem(r)
                )
            else:
                print(f"{p} {name:>12s}: FAILED {r['error']}")
            single[p][name] = r
    out["single"] = single

    e = members
    ensemble: dict[str, dict] = {}
    for p in precisions:
        r = measure(
            lambda p=p: under(p, ensemble_step(e, LOSSES, device=dev), dev.type),
            dev,
            repeats=repeats,
            number=max(1, number // 4),
        )
        secs = [single[p][name]["sec"] for name in LOSSES if "sec" in single[p][name]]
        if "sec" in r:
            r["lists_per_s_per_member"] = B / r["sec"]
            rate = sum(flops[name] for name in LOSSES) * (e // len(LOSSES)) / r["sec"] / 1e9
            r["of_peak"] = rate / peak[p]
            line = (
                f"{p} ensemble E={e}: {r['sec'] * 1e3:6.1f} ms/step, "
                f"{r['lists_per_s_per_member']:.0f} lists/s per member "
                f"({e * B / r['sec']:.0f} member-lists/s), {r['of_peak']:.2%} of the {p} peak"
                + mem(r)
            )
            if len(secs) == len(LOSSES):
                seq = sum(secs) / len(secs)
                r["speedup"] = seq * e / r["sec"]
                line += f"; vs {B / seq:.0f} lists/s sequential: speed-up x{r['speedup']:.2f}"
            print(line)
        else:
            print(f"{p} ensemble E={e}: FAILED {r['error']}")
        ensemble[p] = r
    out["ensemble"] = {"members": e, **ensemble}

    out["projection_s"] = projection(single, ensemble, e, out["gpus"])
    print(json.dumps(out, default=float))
    return out


def projection(
    single: dict[str, dict[str, dict]], ensemble: dict[str, dict], members: int, gpus: int
) -> dict[str, float]:
    """Print and return the projected training time (s) of the full paper sweep per precision:
    single runs one after another on one GPU (and G at once on G GPUs), and as ensembles of
    ``members`` (4 losses x 5 seeds = 20: one ensemble is the whole grid)."""
    grid_lists = len(LOSSES) * PAPER_SEEDS * PAPER_EPOCHS * PAPER_LISTS_PER_EPOCH
    print(
        f"full paper sweep: {len(LOSSES)} losses x {PAPER_SEEDS} seeds x {PAPER_EPOCHS} epochs x "
        f"{PAPER_LISTS_PER_EPOCH:,} lists = {grid_lists / 1e6:.0f} M list passes "
        "(training steps only: + validation, test, start-up, batch copies)"
    )
    out: dict[str, float] = {}
    for p in single:
        secs = [r["sec"] for r in single[p].values() if "sec" in r]
        if len(secs) == len(LOSSES):
            t = grid_lists / (B / (sum(secs) / len(secs)))
            out[f"{p}/single_runs_1gpu"] = t
            text = f"{p}: single runs one at a time on 1 GPU {hours(t)}"
            if gpus > 1:
                out[f"{p}/single_runs_{gpus}gpu"] = t / gpus
                text += f", {gpus} at once on {gpus} GPUs {hours(t / gpus)}"
            r = ensemble.get(p, {})
            if "sec" in r:
                n_ens = grid_lists / (members * PAPER_EPOCHS * PAPER_LISTS_PER_EPOCH)
                t_ens = n_ens * PAPER_EPOCHS * PAPER_LISTS_PER_EPOCH / r["lists_per_s_per_member"]
                out[f"{p}/ensemble_1gpu"] = t_ens
                text += f"; as {n_ens:g} ensemble(s) of {members} on 1 GPU {hours(t_ens)}"
            print(text)
    return out


if __name__ == "__main__":
    main()
