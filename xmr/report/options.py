"""The command line of ``xmr report`` (its argument parser) and the defaults it shows.

Kept apart from :mod:`xmr.report.cli` so that ``xmr report --help`` is answered without importing
the report's machinery (torch, Lightning, matplotlib).
"""

from __future__ import annotations

import argparse

#: Random sign patterns / bootstrap resamples of the significance tests
#: (:mod:`xmr.report.significance`).
N_RESAMPLES = 10_000
#: The paired tests ``xmr report --test`` offers (:mod:`xmr.report.significance`); the first is
#: the default.
TESTS = ("permutation", "bootstrap")
DEFAULT_TEST = TESTS[0]


def report_parser() -> argparse.ArgumentParser:
    """``xmr report ROOT [--out DIR] [--recall found] [--images DIR] ...``."""
    parser = argparse.ArgumentParser(
        prog="xmr report",
        description="Collect a sweep's runs into the paper's Table 2, a significance test, "
        "plots and an HTML page.",
    )
    parser.add_argument("root", help="directory holding the runs (results.json files below it)")
    parser.add_argument("--out", help="where to write the report (default: ROOT)")
    parser.add_argument("--recall", choices=("hit", "found"), default="hit")
    parser.add_argument(
        "--images", help="folder of the store's photos (images.txt names) for the HTML gallery"
    )
    parser.add_argument(
        "--test",
        choices=TESTS,
        default=DEFAULT_TEST,
        help="paired test over queries: sign-flip randomisation (permutation, default) or "
        "bootstrap",
    )
    parser.add_argument(
        "--resamples", type=int, default=N_RESAMPLES, help="random sign patterns / resamples"
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of the test's resampling")
    parser.add_argument(
        "--compare",
        nargs=2,
        metavar=("A", "B"),
        help="print the paired test of row A against row B in both protocols; write nothing",
    )
    parser.add_argument("--gallery", type=int, default=6, help="gallery queries per direction")
    parser.add_argument("--no-plots", action="store_true", help="skip the PNG plots")
    parser.add_argument("--no-html", action="store_true", help="skip report.html")
    parser.add_argument(
        "--no-baseline",
        action="store_true",
        help="when no run below ROOT is CLIP cosine, leave it out instead of evaluating it "
        "(into OUT/clip_cosine) on the runs' store and test lists",
    )
    return parser
