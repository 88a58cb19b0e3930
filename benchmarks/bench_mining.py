"""Mining the first-stage lists at paper scale: seconds and peak RSS of
``mine_lists(strategy="first_stage")`` on the SYNTHETIC paper-scale store, in a subprocess.

    python benchmarks/bench_mining.py [--threads N] [--strategy first_stage] [--splits train,val,test]

Each query ranks its whole split gallery by cosine (train: 29,000 captions x 29,000 images for
t2i, 29,000 images x 145,000 captions for i2t; about 5.2 TFLOP of fp32 matmul in all) and keeps
its top 51.
The store is generated under ./data/synthetic-paper when missing (as `xmr synth
data=synthetic_paper`). Prints figures and the load average; asserts nothing about time.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import header  # noqa: E402

from xmr.data.synth import synth_config, write_synthetic_store  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
STORE = ROOT / "data" / "synthetic-paper"

# Run in a fresh process: its VmHWM is the peak RSS of the mining alone (store open included).
_CHILD = """
import json, sys, tempfile, time
from pathlib import Path
import torch
threads, strategy, splits, store = int(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4]
if threads:
    torch.set_num_threads(threads)
from xmr.data.mining import mine_lists
from xmr.data.store import FeatureStore
t0 = time.perf_counter()
with tempfile.TemporaryDirectory() as tmp:
    out = mine_lists(FeatureStore.open(store), Path(tmp) / "lists", strategy=strategy,
                     splits=tuple(splits.split(",")), verbose=True)
    stats = json.loads((out / "lists.json").read_text())["stats"]
    seconds = time.perf_counter() - t0
hwm = int(open("/proc/self/status").read().split("VmHWM:")[1].split()[0])
print("XMR_RESULT", json.dumps({"seconds": seconds, "peak_rss_mib": hwm / 1024,
      "threads": torch.get_num_threads(),
      "coverage": {k: v.get("coverage") for k, v in stats.items()},
      "dropped": {k: v.get("lists_dropped_no_positive") for k, v in stats.items()}}))
"""


def main(argv: list[str] | None = None) -> dict[str, float]:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: all)")
    ap.add_argument("--strategy", default="first_stage", choices=("first_stage", "pool"))
    ap.add_argument("--splits", default="train,val,test")
    args = ap.parse_args(argv)
    header(f"mining {args.strategy} lists at paper scale (SYNTHETIC store, splits {args.splits})")
    if not (STORE / "manifest.json").exists():
        write_synthetic_store(STORE, synth_config({"preset": "paper", "seed": 0}))
    load_before = os.getloadavg()[0]
    t0 = time.perf_counter()
    proc = subprocess.run(
        [
            sys.executable,
            "-c",
            _CHILD,
            str(args.threads or 0),
            args.strategy,
            args.splits,
            str(STORE),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    wall = time.perf_counter() - t0
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("XMR_RESULT ")]
    if proc.returncode != 0 or not lines:
        print(f"FAILED ({proc.stderr[-600:]})")
        return {}
    res = json.loads(lines[0].removeprefix("XMR_RESULT "))
    for ln in proc.stdout.splitlines():
        if ln.startswith("mined "):
            print("  " + ln)
    print(
        f"mine_lists(strategy={args.strategy!r}): {res['seconds']:.1f} s "
        f"(process wall {wall:.1f} s), peak RSS {res['peak_rss_mib']:.0f} MiB, "
        f"{res['threads']} torch threads; 1-min load {load_before:.2f} before, "
        f"{os.getloadavg()[0]:.2f} after"
    )
    print(f"coverage (first-stage recall@51): {res['coverage']}")
    print(f"training lists dropped (positive not retrieved): {res['dropped']}")
    out = {
        f"mine_{args.strategy}_s": res["seconds"],
        f"mine_{args.strategy}_rss_mib": res["peak_rss_mib"],
    }
    print(json.dumps({k: round(v, 3) for k, v in out.items()}))
    return out


if __name__ == "__main__":
    main()
