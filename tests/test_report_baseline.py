"""``xmr report`` always has its CLIP-cosine row: evaluated by the report when no run below ROOT
is a ``model=cosine`` run (xmr/report/baseline.py, xmr/runs/baseline.py), and the summary lines
the command ends with (xmr/report/summary.py).

A tiny sweep without a cosine run (one ListNet run, 2 epochs, on the session's tiny store) and a
real ``model=cosine`` run that landed elsewhere are trained once per module, in-process.
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from _compose import make_cfg, tiny_overrides

from xmr.report.baseline import BASELINE_DIR, REPORT_COMMAND
from xmr.report.cli import build_report, main
from xmr.report.summary import summary_lines
from xmr.report.table import BASELINE, Report, full_gallery_rows, table
from xmr.runs.baseline import EVALUATED_BY
from xmr.train import train

PREDICTIONS = (
    "predictions_t2i.npz",
    "predictions_i2t.npz",
    "predictions_full_t2i.npz",
    "predictions_full_i2t.npz",
)


@pytest.fixture(scope="module")
def trained(tiny_store: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``base/sweep/loss=listnet`` (no cosine run below ``base/sweep``) and
    ``base/elsewhere/clip_cosine`` (a real ``model=cosine`` run, outside the sweep)."""
    base = tmp_path_factory.mktemp("baseline")
    train(make_cfg(base, tiny_overrides(tiny_store, "loss=listnet"), "sweep/loss=listnet"))
    train(make_cfg(base, tiny_overrides(tiny_store, "model=cosine"), "elsewhere/clip_cosine"))
    return base


@pytest.fixture(scope="module")
def reported(trained: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[str]]:
    """``xmr report base/sweep --out OUT``: (OUT, the lines it printed)."""
    out = tmp_path_factory.mktemp("baseline_report")
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        main([str(trained / "sweep"), "--out", str(out), "--resamples", "500", "--no-plots"])
    return out, printed.getvalue().splitlines()


def _results(run_dir: Path) -> dict:
    return json.loads((run_dir / "results.json").read_text())


@pytest.mark.slow  # trains two tiny runs once per module
def test_report_evaluates_the_missing_cosine_like_a_cosine_run(
    trained: Path, reported: tuple[Path, list[str]]
) -> None:
    out, _ = reported
    mine, real = _results(out / BASELINE_DIR), _results(trained / "elsewhere" / "clip_cosine")
    assert mine[EVALUATED_BY] == REPORT_COMMAND and EVALUATED_BY not in real
    assert mine["method"] == real["method"] == BASELINE
    metrics = sorted(k for k in real if k.startswith(("test/", "test_full/")))
    assert any(k.startswith("test_full/") for k in metrics)
    assert sorted(k for k in mine if k.startswith(("test/", "test_full/"))) == metrics
    assert {k: mine[k] for k in metrics} == {k: real[k] for k in metrics}
    for key in ("seed", "synthetic", "store", "predictions", "full_gallery", "checkpoint"):
        assert mine[key] == real[key], key
    for key in ("data", "model", "protocol", "ks", "method"):
        assert mine["config"][key] == real["config"][key], key
    assert mine["config"]["loss"] != real["config"]["loss"]  # the sweep's run's, unused
    for name in PREDICTIONS:
        with (
            np.load(out / BASELINE_DIR / name) as a,
            np.load(trained / "elsewhere" / "clip_cosine" / name) as b,
        ):
            assert a.files == b.files
            for key in a.files:
                np.testing.assert_array_equal(a[key], b[key], err_msg=f"{name}:{key}")


@pytest.mark.slow  # trains two tiny runs once per module
def test_report_has_the_cosine_row_its_tests_and_says_who_evaluated_it(
    trained: Path, reported: tuple[Path, list[str]]
) -> None:
    out, _ = reported
    md = (out / "table.md").read_text()
    store = _results(trained / "sweep" / "loss=listnet")["store"]["path"]
    assert f"CLIP cosine evaluated by xmr report on {store}, lists " in md
    assert "No CLIP-cosine baseline with predictions files" not in md
    assert "| clip_cosine |" in md
    assert "CLIP cosine evaluated by xmr report" in (out / "report.html").read_text()
    with open(out / "significance.csv") as fh:
        records = [r for r in csv.DictReader(fh) if r["row"] == "listnet"]
    tested = {(r["protocol"], r["direction"]) for r in records if r["p"] not in ("", "nan")}
    assert {(p, d) for p in ("full_gallery", "lists") for d in ("t2i", "i2t")} <= tested
    assert all(r["base"] == BASELINE for r in records if r["protocol"] != "first_stage")


@pytest.mark.slow  # trains two tiny runs once per module
def test_summary_lines_end_the_output(trained: Path, reported: tuple[Path, list[str]]) -> None:
    out, lines = reported
    tail = lines[-4:]
    assert tail[0].startswith(f"wrote {out / 'table.md'} (and table.csv, table.tex,")
    assert "report.html" in tail[0]
    assert tail[1] == f"runs: 1 finished below {trained / 'sweep'}"  # one job folder: not named
    assert tail[2].startswith("CLIP cosine evaluated by xmr report on ")
    assert tail[2].endswith(f"(in {out / BASELINE_DIR}).")
    report = build_report(trained / "sweep", n_resamples=500, baseline_out=out)
    fg = full_gallery_rows(report.rows, (1,))
    parts = [
        f"{d} R@1 {fg['listnet'][f'{d}/R@1'][0]:.2f} vs CLIP cosine "
        f"{fg[BASELINE][f'{d}/R@1'][0]:.2f} "
        f"({fg['listnet'][f'{d}/R@1'][0] - fg[BASELINE][f'{d}/R@1'][0]:+.2f} points, Holm p "
        for d in ("t2i", "i2t")
    ]
    verdict = tail[3]
    assert verdict.startswith(f"best full-gallery row: listnet — {parts[0]}")
    assert f"), {parts[1]}" in verdict
    assert verdict.endswith("); SYNTHETIC data")
    assert all(len(line) < 400 for line in tail)


@pytest.mark.slow  # trains two tiny runs once per module
def test_no_baseline_flag_leaves_it_out(trained: Path, tmp_path: Path) -> None:
    main(
        [str(trained / "sweep"), "--out", str(tmp_path), "--no-plots", "--no-html", "--no-baseline"]
    )
    assert not (tmp_path / BASELINE_DIR).exists()
    md = (tmp_path / "table.md").read_text()
    assert "| clip_cosine |" not in md and "evaluated by xmr report" not in md
    with open(tmp_path / "significance.csv") as fh:
        assert {r["protocol"] for r in csv.DictReader(fh)} == {"first_stage"}  # none vs cosine


@pytest.mark.slow  # trains two tiny runs once per module
def test_evaluated_baseline_below_root_is_reused_and_yields_to_a_real_run(
    trained: Path, tmp_path: Path
) -> None:
    root = tmp_path / "sweep"
    shutil.copytree(trained / "sweep", root)
    args = [str(root), "--no-plots", "--no-html", "--resamples", "100"]
    main(args)  # --out defaults to ROOT: the baseline lands below ROOT
    first = _results(root / BASELINE_DIR)
    report = build_report(root, n_resamples=100, baseline_out=root)
    assert report.rows[BASELINE]["n"] == 1  # collected once, not twice
    main(args)
    assert _results(root / BASELINE_DIR)["provenance"] == first["provenance"]  # reused
    # A real model=cosine run below ROOT provides the baseline: the evaluated one is dropped.
    shutil.copytree(trained / "elsewhere" / "clip_cosine", root / "cosine_run")
    report = build_report(root, n_resamples=100, baseline_out=root)
    assert report.baseline_note == ""
    assert [r["_path"] for r in report.rows[BASELINE]["runs"]] == [
        str(root / "cosine_run" / "results.json")
    ]


@pytest.mark.slow  # trains two tiny runs once per module
def test_baseline_not_evaluable_here_is_said_not_fatal(trained: Path, tmp_path: Path) -> None:
    root = tmp_path / "sweep" / "loss=listnet"
    shutil.copytree(trained / "sweep" / "loss=listnet", root)
    results = _results(root)
    gone = str(tmp_path / "no-such-store")
    results["store"]["path"] = results["config"]["data"]["store"] = gone
    results["config"]["data"]["lists_dir"] = None
    (root / "results.json").write_text(json.dumps(results))
    report = build_report(root.parent, n_resamples=100, baseline_out=tmp_path / "out")
    assert report.baseline_note.startswith(
        f"No CLIP-cosine run below ROOT, and xmr report could not evaluate it on store {gone}"
    )
    assert BASELINE not in report.rows
    assert not (tmp_path / "out" / BASELINE_DIR / "results.json").exists()


def _fake_run(root: Path, folder: str, method: str, seed: int, r1: dict[str, float]) -> dict:
    """A finished run's record as ``collect`` returns it, full-gallery R@1 only."""
    path = root / folder / f"{method},seed={seed}" / "results.json"
    run = {"method": method, "seed": seed, "synthetic": True, "_path": str(path), "config": {}}
    for d, value in r1.items():
        run[f"test_full/{d}/recall@1"] = run[f"test/{d}/recall@1"] = value
    return run


def test_summary_names_the_folders_and_the_best_row_by_mean_r1(tmp_path: Path) -> None:
    root = tmp_path / "demo"
    runs = [
        _fake_run(root, "clip_cosine", BASELINE, 0, {"t2i": 0.30, "i2t": 0.40}),
        _fake_run(root, "rankers", "listnet", 0, {"t2i": 0.50, "i2t": 0.30}),  # mean 40
        _fake_run(root, "rankers", "listnet", 1, {"t2i": 0.40, "i2t": 0.30}),  # mean 35 -> 37.5
        _fake_run(root, "rankers", "ranknet", 0, {"t2i": 0.33, "i2t": 0.45}),  # mean 39
        _fake_run(root, "baselines", "dcca", 0, {"t2i": 0.90}),  # one direction: never best
    ]
    report = Report(root, "hit", (1,), runs, [], table(runs, (1,)), 100, 0, "permutation")
    written = {name: root / name for name in ("table.md", "table.csv", "report.html")}
    lines = summary_lines(report, written)
    assert lines == [
        f"wrote {root / 'table.md'} (and table.csv, report.html)",
        f"runs: 5 finished below {root} (baselines/, clip_cosine/, rankers/)",
        "best full-gallery row: ranknet — t2i R@1 33.00 vs CLIP cosine 30.00 (+3.00 points), "
        "i2t R@1 45.00 vs CLIP cosine 40.00 (+5.00 points); SYNTHETIC data",
    ]
    report.baseline_note = "CLIP cosine evaluated by xmr report on S, lists L (in O)."
    report.unfinished = [{"status": "failed"}]
    lines = summary_lines(report, written)
    assert len(lines) == 4 and lines[2] == report.baseline_note
    assert lines[1].endswith("; 1 failed or missing")
    # Without CLIP cosine the verdict says so; without full-gallery keys it uses the lists.
    rest = [r for r in runs if r["method"] != BASELINE]
    for run in rest:
        for key in [k for k in run if k.startswith("test_full/")]:
            del run[key]
    report = Report(root, "hit", (1,), rest, [], table(rest, (1,)), 100, 0, "permutation")
    assert summary_lines(report, written)[-1] == (
        "best in-list row: ranknet — t2i R@1 33.00, i2t R@1 45.00 "
        "(no CLIP-cosine row to compare with); SYNTHETIC data"
    )
