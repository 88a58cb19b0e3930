"""``xmr report``: Table 2 numbers, CSV/LaTeX, significance, failed/missing jobs, plots, notebook.

The tiny sweep (2 losses x 2 seeds + CLIP cosine, 1 epoch, on a tiny SYNTHETIC store, plus one
failed and one missing job) is trained once per session in-process through ``xmr.train.train``
(tests/_sweep.py, conftest's ``tiny_sweep`` fixture) and shared with tests/test_html_report.py and
tests/test_sweeps.py.
"""

from __future__ import annotations

import csv
import json
import os
import re
import statistics
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml
from _sweep import LOSSES

from xmr.metrics.ranking import ranked_recall_at_k, ranked_recall_curve
from xmr.report.cli import build_report, main
from xmr.report.collect import assign_rows
from xmr.report.significance import paired_bootstrap, significance
from xmr.report.table import BASELINE, table
from xmr.runs.naming import method_of_config

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def written(tiny_sweep: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("report")
    main([str(tiny_sweep / "runs"), "--out", str(out), "--resamples", "2000", "--no-html"])
    return out


def _independent_stats(root: Path, key: str) -> dict[str, dict[str, tuple[float, float]]]:
    """method → column → (mean, sample std) in %, straight from the results.json files."""
    values: dict[str, dict[str, list[float]]] = {}
    for path in sorted((root / "runs").glob("*/results.json")):
        res = json.loads(path.read_text())
        method = "clip_cosine" if path.parent.name == "clip_cosine" else path.parent.name[5:12]
        for d in ("i2t", "t2i"):
            for k in (1, 5, 10):
                values.setdefault(method, {}).setdefault(f"{d}_R@{k}", []).append(
                    100 * res[f"test/{d}/{key}@{k}"]
                )
    return {
        m: {
            c: (statistics.mean(v), statistics.stdev(v) if len(v) > 1 else 0.0)
            for c, v in cols.items()
        }
        for m, cols in values.items()
    }


@pytest.mark.slow  # trains the tiny sweep once per session (shared)
def test_csv_numbers_equal_independent_mean_and_std(tiny_sweep: Path, written: Path) -> None:
    expected = _independent_stats(tiny_sweep, "recall")
    with open(written / "table.csv", newline="") as fh:
        rows = {r["row"]: r for r in csv.DictReader(fh)}
    assert set(rows) == {"listnet", "ranknet", "clip_cosine"}
    assert list(rows) == ["listnet", "ranknet", "clip_cosine"]  # Table 2 order, CLIP last
    for method, cols in expected.items():
        for col, (mean, std) in cols.items():
            assert float(rows[method][f"{col}_mean"]) == pytest.approx(mean, abs=1e-3)
            assert float(rows[method][f"{col}_std"]) == pytest.approx(std, abs=1e-3)
        assert rows[method]["synthetic"] == "true"
    assert rows["listnet"]["runs"] == "2" and rows["listnet"]["jobs"] == "3"
    assert rows["listnet"]["missing"] == "1" and rows["ranknet"]["failed"] == "1"
    assert rows["listnet"]["seeds"] == "0 1"


@pytest.mark.slow  # trains the tiny sweep once per session (shared)
def test_markdown_table_caption_and_cells(tiny_sweep: Path, written: Path) -> None:
    md = (written / "table.md").read_text()
    assert "SYNTHETIC" in md and "hit@K" in md and "paired bootstrap" in md
    expected = _independent_stats(tiny_sweep, "recall")
    line = next(ln for ln in md.splitlines() if ln.startswith("| ranknet |"))
    cells = [c.strip() for c in line.strip("|").split("|")]
    assert cells[1] == "2 of 3"
    mean, std = expected["ranknet"]["t2i_R@5"]
    assert cells[2 + 3 + 1] == f"{mean:.2f} ± {std:.2f}"  # t2i block follows the 3 i2t columns


@pytest.mark.slow  # trains the tiny sweep once per session (shared)
def test_failed_and_missing_jobs_are_listed(tiny_sweep: Path, written: Path) -> None:
    md = (written / "table.md").read_text()
    section = md.split("## Failed / missing jobs", 1)[1]
    assert "loss=listnet,seed=2" in section and "missing" in section
    assert "loss=ranknet,seed=2" in section and "failed" in section
    assert "RuntimeError: loss is NaN at epoch 3" in section  # the exception line, not "..."


@pytest.mark.slow  # trains the tiny sweep once per session (shared)
def test_latex_is_well_formed(tiny_sweep: Path, written: Path) -> None:
    tex = (written / "table.tex").read_text()
    assert tex.count(r"\begin{") == tex.count(r"\end{") == 2
    assert tex.count("{") - tex.count(r"\{") == tex.count("}") - tex.count(r"\}")
    caption = re.search(r"\\caption\{(.*)\}\n", tex).group(1)
    assert "SYNTHETIC" in caption and "hit@K" in caption
    body = tex.split(r"\midrule", 1)[1].split(r"\bottomrule", 1)[0].strip().splitlines()
    assert len(body) == 3
    for line in body:
        assert line.endswith(r"\\") and line.count("&") == 2 + 6 - 1  # method, runs, 6 values
    assert body[-1].startswith("CLIP cosine")
    mean, std = _independent_stats(tiny_sweep, "recall")["listnet"]["i2t_R@1"]
    assert f"${mean:.2f} \\pm {std:.2f}$" in body[0]


@pytest.mark.slow  # trains the tiny sweep once per session (shared)
def test_found_recall_uses_the_other_keys(tiny_sweep: Path, tmp_path: Path) -> None:
    main(
        [
            str(tiny_sweep / "runs"),
            "--out",
            str(tmp_path),
            "--recall",
            "found",
            "--no-plots",
            "--no-html",
            "--resamples",
            "200",
        ]
    )
    md = (tmp_path / "table.md").read_text()
    assert "found/total" in md and "hit@K" not in md.split("\n\n", 3)[2]
    expected = _independent_stats(tiny_sweep, "recall_found")
    with open(tmp_path / "table.csv", newline="") as fh:
        rows = {r["row"]: r for r in csv.DictReader(fh)}
    assert float(rows["listnet"]["t2i_R@10_mean"]) == pytest.approx(
        expected["listnet"]["t2i_R@10"][0], abs=1e-3
    )


@pytest.mark.slow  # trains the tiny sweep once per session (shared)
def test_plots_are_pngs(written: Path) -> None:
    for name in ("recall_at_k.png", "validation_curves.png"):
        data = (written / name).read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 10_000


@pytest.mark.slow  # trains the tiny sweep once per session (shared)
def test_significance_csv_has_per_seed_and_pooled(written: Path) -> None:
    with open(written / "significance.csv", newline="") as fh:
        recs = list(csv.DictReader(fh))
    for method in LOSSES:
        for d in ("i2t", "t2i"):
            seeds = {r["seed"] for r in recs if r["row"] == method and r["direction"] == d}
            assert seeds == {"0", "1", "pooled"}
    assert all(0.0 <= float(r["p"]) <= 1.0 for r in recs)


# ------------------------------------------------------------ significance on constructed data


def _fake_run(root: Path, name: str, method: str, seed: int, labels: np.ndarray) -> dict:
    """A run directory with a results.json and predictions files (same lists both directions)."""
    out = root / name
    out.mkdir(parents=True)
    q = len(labels)
    cands = np.tile(np.arange(labels.shape[1]), (q, 1))
    for d in ("t2i", "i2t"):
        np.savez(
            out / f"predictions_{d}.npz",
            query=np.arange(q),
            candidates=cands,
            scores=np.zeros(labels.shape, np.float32),
            labels=labels.astype(np.uint8),
        )
    res = {
        "format": "xmr-results/1",
        "method": method,
        "seed": seed,
        "synthetic": True,
        "predictions": {"t2i": "predictions_t2i.npz", "i2t": "predictions_i2t.npz"},
        "config": {"model": {"name": method}, "data": {}, "seed": seed},
    }
    for d in ("t2i", "i2t"):
        for k in (1, 5, 10):
            res[f"test/{d}/recall@{k}"] = float(ranked_recall_at_k(labels, k).numpy().mean())
    (out / "results.json").write_text(json.dumps(res))
    return res


def _labels_top1(rng: np.random.Generator, q: int, p_hit: float) -> np.ndarray:
    """Ranked labels (Q, 11), one positive: at rank 1 with probability p_hit, else at 2..11."""
    labels = np.zeros((q, 11), np.uint8)
    pos = np.where(rng.random(q) < p_hit, 0, rng.integers(1, 11, q))
    labels[np.arange(q), pos] = 1
    return labels


def test_significance_identical_and_clearly_better(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    cosine = _labels_top1(rng, 200, 0.3)
    _fake_run(tmp_path, "cos", BASELINE, 0, cosine)
    for seed in (0, 1):
        _fake_run(tmp_path, f"same{seed}", "copycat", seed, cosine)
        _fake_run(tmp_path, f"good{seed}", "better", seed, _labels_top1(rng, 200, 0.9))
    report = build_report(tmp_path, n_resamples=5000)
    recs = {(r["row"], r["direction"], r["seed"]): r for r in report.significance}
    same = recs[("copycat", "t2i", "pooled")]
    assert same["delta"] == 0.0 and same["p"] == pytest.approx(1.0)
    good = recs[("better", "i2t", "pooled")]
    assert good["p"] < 1e-3 and good["low"] > 0
    # Δ = mean over queries of (mean over seeds of hit@1) - cosine hit@1, in percent points
    expected = 100 * (
        np.mean([ranked_recall_at_k(_load(tmp_path / f"good{s}"), 1).numpy() for s in (0, 1)])
        - cosine[:, 0].mean()
    )
    assert good["delta"] == pytest.approx(expected)


def _load(run_dir: Path) -> np.ndarray:
    with np.load(run_dir / "predictions_t2i.npz") as z:
        return z["labels"]


def test_significance_refuses_different_lists(tmp_path: Path) -> None:
    rng = np.random.default_rng(2)
    _fake_run(tmp_path, "cos", BASELINE, 0, _labels_top1(rng, 50, 0.3))
    _fake_run(tmp_path, "other", "listnet", 0, _labels_top1(rng, 40, 0.3))  # 40 other queries
    recs = significance(table(build_report(tmp_path, n_resamples=100).runs))
    assert recs and all("different test lists" in r["note"] for r in recs)


def test_paired_bootstrap_matches_normal_approximation() -> None:
    rng = np.random.default_rng(0)
    a = (rng.random(2000) < 0.5).astype(float)
    b = (rng.random(2000) < 0.45).astype(float)
    res = paired_bootstrap(a, b, n_resamples=4000, seed=3)
    d = a - b
    se = d.std(ddof=1) / np.sqrt(len(d))  # independent: CLT standard error of the mean
    assert res["delta"] == pytest.approx(d.mean())
    assert res["high"] - res["low"] == pytest.approx(2 * 1.96 * se, rel=0.1)
    assert res == paired_bootstrap(a, b, n_resamples=4000, seed=3)  # seeded


def test_recall_curve_matches_naive_loop() -> None:
    rng = np.random.default_rng(0)
    labels = (rng.random((30, 12)) < 0.15).astype(np.uint8)
    labels[0] = 0  # no positive: excluded
    curve = ranked_recall_curve(labels, 50, "hit").numpy()
    found = ranked_recall_curve(labels, 50, "found").numpy()
    assert curve.shape == (12,)
    kept = [row for row in labels if row.sum() > 0]
    for k in range(1, 13):
        assert curve[k - 1] == pytest.approx(np.mean([row[:k].any() for row in kept]))
        assert found[k - 1] == pytest.approx(np.mean([row[:k].sum() / row.sum() for row in kept]))
    assert np.isnan(ranked_recall_at_k(labels, 1).numpy()[0])


def test_grid_points_are_rows_but_direction_and_seed_are_not() -> None:
    def job(method: str, layers: int, direction: str, seed: int) -> dict:
        cfg = {"model": {"net": {"num_layers": layers}}, "data": {"direction": direction}}
        return {"method": method, "seed": seed, "config": cfg}

    names = assign_rows(
        [
            job("listnet", 1, "t2i", 0),
            job("listnet", 2, "i2t", 1),
            job("listnet", 1, "i2t", 1),
            job("clip_cosine", 0, "both", 0),
        ]
    )
    assert names == [
        "listnet [num_layers=1]",
        "listnet [num_layers=2]",
        "listnet [num_layers=1]",
        "clip_cosine",
    ]


def test_unfinished_jobs_are_named_as_their_results_would_be() -> None:
    """A failed or missing job's row is the ``method`` its results.json would record."""
    listnet = yaml.safe_load((REPO / "conf" / "loss" / "listnet.yaml").read_text())
    net = {"_target_": "xmr.models.ranker.ContextAwareRanker", "interaction": ["cosine", "product"]}
    ranker = {"model": {"net": net}}
    assert method_of_config({**ranker, "loss": listnet}) == "listnet+cosine+product"
    dcca_net = {"_target_": "xmr.models.baselines.DCCAModel"}
    dcca = {"model": {"name": "dcca", "net": dcca_net}, "loss": listnet}
    assert method_of_config(dcca) == "dcca"
    assert method_of_config({"method": "mine", **dcca}) == "mine"
    assert method_of_config(None) == method_of_config({"model": 3}) == "unknown"


def test_report_on_an_empty_directory_names_it(tmp_path: Path) -> None:
    with pytest.raises(SystemExit, match=str(tmp_path)):
        main([str(tmp_path)])


# ------------------------------------------------------------------------------ the notebook


@pytest.mark.slow  # trains the tiny sweep once per session (shared)
def test_notebook_runs_headless_on_the_sweep(tiny_sweep: Path, tmp_path: Path) -> None:
    import jupytext

    notebook = REPO / "notebooks" / "analysis.py"
    nb = jupytext.read(notebook)  # a valid jupytext percent notebook
    assert sum(c.cell_type == "code" for c in nb.cells) >= 4
    env = {
        **os.environ,
        "XMR_REPORT_DIR": str(tiny_sweep / "runs"),
        "XMR_NOTEBOOK_OUT": str(tmp_path),
        "XMR_RESAMPLES": "200",
        "MPLBACKEND": "Agg",
    }
    proc = subprocess.run(
        [sys.executable, str(notebook)], env=env, capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = proc.stdout
    assert "SYNTHETIC" in out and "| listnet |" in out
    blocks = re.findall(
        r"== (\w+) .*?: (\w+) \(seed (\d+)\) vs CLIP cosine\nqueries: (\d+); both right (\d+), "
        r"ranker fixes (\d+), ranker breaks (\d+), both wrong (\d+)",
        out,
    )
    assert {b[0] for b in blocks} == {"t2i", "i2t"}
    runs = tiny_sweep / "runs"
    cosine = json.loads((runs / "clip_cosine" / "results.json").read_text())
    for d, method, seed, q, both, fixes, breaks, neither in blocks:
        ranker = json.loads((runs / f"loss={method},seed={seed}" / "results.json").read_text())
        q, fixes, breaks = int(q), int(fixes), int(breaks)
        assert int(both) + fixes + breaks + int(neither) == q
        # fixes - breaks = (ranker top-1 hits) - (cosine top-1 hits), from results.json alone
        hits = q * (ranker[f"test/{d}/recall@1"] - cosine[f"test/{d}/recall@1"])
        assert fixes - breaks == round(hits)
    assert (tmp_path / "notebook_recall_at_k.png").stat().st_size > 5000
