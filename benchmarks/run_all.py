"""`make bench`: every xmr benchmark, figures printed (nothing asserted about time).

    python benchmarks/run_all.py [--threads N] [--quick]

Generates the SYNTHETIC paper-scale store under ./data when it is missing (about a minute).
The GPU section (bench_gpu.py) runs only where CUDA is available and prints a skip line
elsewhere; the CPU sections are the same either way.
On a shared machine, note the load average printed with each section: the numbers of a loaded
machine are not comparable with those of an idle one (see benchmarks/RESULTS.md).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import bench_gpu  # noqa: E402
import bench_mining  # noqa: E402
import bench_paper  # noqa: E402
import bench_rerank  # noqa: E402
import bench_step  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: all)")
    ap.add_argument("--quick", action="store_true", help="fewer repeats, smaller runs")
    args = ap.parse_args()
    threads = ["--threads", str(args.threads)] if args.threads else []
    bench_step.main([*threads, *(["--quick"] if args.quick else [])])
    bench_paper.main([*threads, *(["--lists", "500", "--rss-batches", "20"] if args.quick else [])])
    bench_mining.main(threads)
    bench_rerank.main([*threads, *(["--quick"] if args.quick else [])])
    bench_gpu.main(["--quick"] if args.quick else [])


if __name__ == "__main__":
    main()
