"""``xmr report``: Table 2 numbers, CSV/LaTeX, significance, failed/missing jobs, plots, notebook.

The tiny sweep (2 losses x 2 seeds + CLIP cosine, 1 epoch, on a tiny SYNTHETIC store, plus one
failed and one missing job) is trained once per session in-process through ``xmr.train.train``
(tests/_sweep.py, conftest's ``tiny_sweep`` fixture) and shared with tests/test_html_report.py and
tests/test_sweeps.py.
"""

from __future__ import annotations

import csv
import importlib.util
import itertools
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
from _probe_sweep import PROBE
from _sweep import LOSSES
from scipy.stats import binomtest, permutation_test

from xmr.metrics.ranking import ranked_recall_at_k, ranked_recall_curve
from xmr.report.cli import build_report, main
from xmr.report.collect import assign_rows
from xmr.report.construction import lists_dir_of, probe_of
from xmr.report.significance import (
    ALPHA,
    DEFAULT_TEST,
    adjust_holm,
    compare_rows,
    family,
    first_stage_significance,
    holm,
    paired_bootstrap,
    paired_permutation,
    significance,
)
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
    assert list(rows) == ["clip_cosine", "listnet", "ranknet"]  # the baseline first
    for method, cols in expected.items():
        for col, (mean, std) in cols.items():
            assert float(rows[method][f"{col}_mean"]) == pytest.approx(mean, abs=1e-3)
            if method == "clip_cosine":  # one run: no sample std
                assert rows[method][f"{col}_std"] == ""
            else:
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
    lists = md[md.index("## List protocol (Table 2)") : md.index("## Significance")]
    line = next(ln for ln in lists.splitlines() if ln.startswith("| ranknet |"))
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
    assert tex.count(r"\begin{") == tex.count(r"\end{") == 4  # full gallery, then Table 2
    assert tex.count("{") - tex.count(r"\{") == tex.count("}") - tex.count(r"\}")
    assert tex.index("tab:xmr-full-gallery") < tex.index("tab:xmr-table2")
    full, lists = tex.split(r"\end{table}")[:2]
    assert "Full-gallery protocol" in re.search(r"\\caption\{(.*)\}\n", full).group(1)
    full_body = full.split(r"\midrule", 1)[1].split(r"\bottomrule", 1)[0].strip().splitlines()
    assert len(full_body) == 4  # 3 rows and the first stage alone
    assert all(ln.count("&") == 4 + 6 - 1 for ln in full_body)  # method, runs, stage, K, 6
    caption = re.search(r"\\caption\{(.*)\}\n", lists).group(1)
    assert "SYNTHETIC" in caption and "hit@K" in caption and "strategy hard" in caption
    body = lists.split(r"\midrule", 1)[1].split(r"\bottomrule", 1)[0].strip().splitlines()
    assert len(body) == 3
    for line in body:
        assert line.endswith(r"\\") and line.count("&") == 2 + 6 - 1  # method, runs, 6 values
    assert body[0].startswith(r"clip\_cosine & 1 & ")  # the baseline first, named as in table.md
    cells = [c.strip() for c in body[0].removesuffix(r"\\").split("&")[2:]]
    assert all(re.fullmatch(r"(\\textbf\{)?\d+\.\d\d --\}?", c) for c in cells), cells  # 1 run
    mean, std = _independent_stats(tiny_sweep, "recall")["listnet"]["i2t_R@1"]
    assert f"{mean:.2f} $\\pm$ {std:.2f}" in body[1] and body[1].startswith("listnet & ")


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


@pytest.mark.slow  # trains the tiny sweep once per session (shared)
def test_runs_write_full_gallery_outcomes_and_the_report_tests_them(
    tiny_sweep: Path, written: Path
) -> None:
    for path in sorted((tiny_sweep / "runs").glob("*/results.json")):
        res = json.loads(path.read_text())
        for d in ("t2i", "i2t"):
            assert res["predictions"][f"full_{d}"] == f"predictions_full_{d}.npz"
            with np.load(path.parent / f"predictions_full_{d}.npz") as z:
                rank, query = z["rank"], z["query"]
            assert len(query) == res["full_gallery"]["queries"][d]
            for k in (1, 5, 10):
                hits = ((rank > 0) & (rank <= k)).mean()
                assert hits == pytest.approx(res[f"test_full/{d}/recall@{k}"])
    with open(written / "significance.csv", newline="") as fh:
        recs = list(csv.DictReader(fh))
    full = [r for r in recs if r["protocol"] == "full_gallery" and r["seed"] == "pooled"]
    assert {(r["row"], r["direction"]) for r in full} == {
        (m, d) for m in LOSSES for d in ("i2t", "t2i")
    }
    assert all(r["p_holm"] != "" and float(r["p_holm"]) >= float(r["p"]) for r in full)


# ------------------------------------------------------------ significance on constructed data


def _fake_run(
    root: Path, name: str, method: str, seed: int, labels: np.ndarray, offset: int = 0
) -> dict:
    """A run directory with a results.json and predictions files (same lists both directions;
    candidate ids start at ``offset``: another offset, other lists)."""
    out = root / name
    out.mkdir(parents=True)
    q = len(labels)
    cands = offset + np.tile(np.arange(labels.shape[1]), (q, 1))
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


def _fake_full_run(root: Path, name: str, method: str, seed: int, rank, first) -> None:
    """A run with only full-gallery outcomes: re-ranked ``rank`` and ``first`` stage ranks."""
    out = root / name
    out.mkdir(parents=True)
    for d in ("t2i", "i2t"):
        np.savez(
            out / f"predictions_full_{d}.npz",
            query=np.arange(len(rank)),
            rank=np.asarray(rank, np.int64),
            first_stage_rank=np.asarray(first, np.int64),
        )
    res = {
        "format": "xmr-results/1",
        "method": method,
        "seed": seed,
        "predictions": {f"full_{d}": f"predictions_full_{d}.npz" for d in ("t2i", "i2t")},
        "config": {"model": {"name": method}, "data": {}, "seed": seed},
    }
    (out / "results.json").write_text(json.dumps(res))


def test_a_reranker_is_tested_against_its_own_first_stage_seeds_averaged_per_query(
    tmp_path: Path,
) -> None:
    """Each seed re-ranks its own first stage (here: different first stages per seed, as over
    ``xmr embed`` stores of per-seed models); the pooled test averages both sides per query over
    the seeds, so the unit is the query, not (seed, query)."""
    rng = np.random.default_rng(4)
    q = 300
    runs = []
    for seed in (0, 1, 2):
        first = rng.integers(1, 4, q)  # hit@1 for about a third of the queries
        rank = np.where(rng.random(q) < 0.5, 1, first)  # the re-ranker lifts half of them to 1
        _fake_full_run(tmp_path, f"rr{seed}", "reranker_listnet@infonce", seed, rank, first)
        runs.append(((rank == 1).astype(float), (first == 1).astype(float)))
    same = rng.integers(1, 5, q)
    _fake_full_run(tmp_path, "self", "infonce", 0, same, same)  # its own first stage: no test
    recs = first_stage_significance(table(build_report(tmp_path, n_resamples=200).runs), 1, 2000)
    assert {r["row"] for r in recs} == {"reranker_listnet@infonce"}
    pooled = {r["direction"]: r for r in recs if r["seed"] == "pooled"}
    value = np.mean([v for v, _ in runs], axis=0)  # (Q,) seeds averaged per query
    base = np.mean([b for _, b in runs], axis=0)
    want = paired_bootstrap(value, base, n_resamples=2000, seed=0)
    for d in ("t2i", "i2t"):
        assert pooled[d]["queries"] == q  # queries, not 3 x queries
        assert pooled[d]["delta"] == pytest.approx(100 * (value - base).mean())
        assert pooled[d]["p"] == pytest.approx(want["p"]) and pooled[d]["p"] < 1e-3
    per_seed = [r for r in recs if r["seed"] != "pooled"]
    assert len(per_seed) == 6 and all(r["protocol"] == "first_stage" for r in recs)


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


#: The notebook runner's modules beyond xmr's dependencies (the dev extra installs them).
NOTEBOOK_MISSING = [m for m in ("nbclient", "ipykernel") if importlib.util.find_spec(m) is None]


def _notebook_texts(nb) -> list[str]:
    """Every output of ``nb``'s code cells as text (Markdown of displayed tables, streams)."""
    texts = []
    for c in nb.cells:
        for o in c.get("outputs", []):
            if o["output_type"] == "error":
                pytest.fail(f"cell failed: {o['ename']}: {o['evalue']}")
            if o["output_type"] == "stream":
                texts.append(o["text"])
            elif "data" in o:
                texts.append(o["data"].get("text/markdown", o["data"].get("text/plain", "")))
    return texts


def test_notebook_is_a_jupytext_notebook_naming_its_runs_root() -> None:
    import jupytext

    nb = jupytext.read(REPO / "notebooks" / "analysis.py")  # a valid percent-format notebook
    assert sum(c.cell_type == "code" for c in nb.cells) >= 4
    intro = nb.cells[0].source
    assert "XMR_RUNS_ROOT" in intro and "runs root" in intro and "notebooks/run.py" in intro
    runner = (REPO / "notebooks" / "run.py").read_text()
    assert "RUNS_ROOT" in runner and "XMR_REPORT_DIR" not in REPO.joinpath(".ci/run").read_text()


@pytest.mark.slow  # trains the tiny sweep once per session (shared); starts a kernel
@pytest.mark.skipif(
    bool(NOTEBOOK_MISSING),
    reason=f"{' and '.join(NOTEBOOK_MISSING)} not importable (install the dev extra): "
    "the notebook cannot be executed as a notebook",
)
def test_notebook_executes_as_a_notebook_on_the_sweep(tiny_sweep: Path, tmp_path: Path) -> None:
    """notebooks/run.py: jupytext -> nbformat -> nbclient in an ipykernel kernel; the executed
    analysis.ipynb holds Markdown tables and inline plots, and its fixes/breaks agree with the
    runs' results.json."""
    import nbformat

    env = {**os.environ, "MPLBACKEND": "Agg"}  # the runner drops it: plots inline all the same
    out = tmp_path / "nb"
    cmd = [sys.executable, str(REPO / "notebooks" / "run.py"), str(tiny_sweep / "runs")]
    proc = subprocess.run(
        [*cmd, "--out", str(out), "--resamples", "200", "--timeout", "300"],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    executed = out / "analysis.ipynb"
    assert proc.stdout.strip() == str(executed)
    nb = nbformat.read(executed, as_version=4)
    nbformat.validate(nb)
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert all(c.execution_count for c in code)  # every cell ran, in a kernel
    outputs = [o for c in code for o in c.outputs]
    markdown = [o["data"]["text/markdown"] for o in outputs if "text/markdown" in o.get("data", {})]
    assert any("| listnet |" in m for m in markdown)  # Table 2 as a rendered table
    assert any("SYNTHETIC" in m for m in markdown)
    assert sum("image/png" in o.get("data", {}) for o in outputs) == 2  # both plots inline
    text = "\n".join(_notebook_texts(nb))
    assert "<IPython.core.display.Markdown object>" not in text
    rows = re.findall(
        r"^\| (t2i|i2t) \| (\w+) \| (\d+) \| (\d+) \| (\d+) \| (\d+) \| (\d+) \| (\d+) \|$",
        text,
        flags=re.M,
    )
    assert {r[0] for r in rows} == {"t2i", "i2t"}
    runs = tiny_sweep / "runs"
    cosine = json.loads((runs / "clip_cosine" / "results.json").read_text())
    for d, method, seed, q, both, fixes, breaks, neither in rows:
        ranker = json.loads((runs / f"loss={method},seed={seed}" / "results.json").read_text())
        q, fixes, breaks = int(q), int(fixes), int(breaks)
        assert int(both) + fixes + breaks + int(neither) == q
        # fixes - breaks = (ranker top-1 hits) - (cosine top-1 hits), from results.json alone
        hits = q * (ranker[f"test/{d}/recall@1"] - cosine[f"test/{d}/recall@1"])
        assert fixes - breaks == round(hits)
    assert (out / "notebook_recall_at_k.png").stat().st_size > 5000


# ------------------------------------------- both protocols, probe, Holm (hand-made runs)


def test_holm_matches_hand_computed_values() -> None:
    # sorted: 0.005·4 = 0.02, 0.01·3 = 0.03, 0.03·2 = 0.06, 0.04·1 = 0.04 → max(0.06, 0.04)
    assert holm([0.01, 0.04, 0.03, 0.005]) == pytest.approx([0.03, 0.06, 0.06, 0.02])
    adjusted = holm([0.02, float("nan"), 0.5])  # NaN is not counted in m and stays NaN
    assert adjusted[0] == pytest.approx(0.04) and np.isnan(adjusted[1])
    assert adjusted[2] == pytest.approx(0.5)
    assert holm([0.6, 0.7]).tolist() == [1.0, 1.0]  # capped at 1
    assert holm([]).size == 0


def test_holm_covers_every_shown_test_of_both_protocols(probe_sweep: Path) -> None:
    report = build_report(probe_sweep, n_resamples=2000)
    shown = family(report.significance)
    # 2 methods x 2 directions x 2 protocols; listnet's family members are its pooled records
    assert len(shown) == 8 and {r["protocol"] for r in shown} == {"full_gallery", "lists"}
    assert all(r["seed"] == "pooled" for r in shown if r["row"] == "listnet")
    expected = holm([r["p"] for r in shown])
    assert [r["p_holm"] for r in shown] == pytest.approx(expected.tolist())
    per_seed = [r for r in report.significance if r["row"] == "listnet" and r["seed"] != "pooled"]
    assert per_seed and all(np.isnan(r["p_holm"]) for r in per_seed)
    # the full-gallery test pairs per-query hit@1 of predictions_full_*.npz
    full = {(r["row"], r["direction"]): r for r in shown if r["protocol"] == "full_gallery"}
    assert full[("listnet", "t2i")]["delta"] == 0.0  # the same ranks as cosine
    assert full[("ranknet", "i2t")]["delta"] > 0 and full[("ranknet", "i2t")]["p_holm"] < ALPHA
    assert adjust_holm([]) == []


def test_report_leads_with_the_full_gallery_and_captions_the_construction(
    probe_sweep: Path, tmp_path: Path
) -> None:
    main([str(probe_sweep), "--out", str(tmp_path), "--resamples", "2000", "--no-plots"])
    md = (tmp_path / "table.md").read_text()
    full, lists, sig = (
        md.index("## Full-gallery protocol"),
        md.index("## List protocol (Table 2)"),
        md.index("## Significance vs CLIP cosine"),
    )
    assert full < lists < sig
    full_part, list_part = md[full:lists], md[lists:sig]
    for text in (
        "first stage cosine",
        "K = 50 re-ranked",
        "gallery 500 (i2t), 100 (t2i) items",
        "queries 200",
        "store flickr-fake (/data/flickr-fake), encoder ViT-B-32",
        "Real (not synthetic) store.",
        "ListNet target: normalized.",
    ):
        assert text in full_part.split("\n\n")[1], text
    caption = list_part.split("\n\n")[1]
    for text in (
        "Lists (test split): strategy hard, pool 200, L = 11 candidates per list",
        "positives per list 1 (t2i) and 2 (i2t)",
        "store flickr-fake (/data/flickr-fake), encoder ViT-B-32",
        "queries 200",
        "Real (not synthetic) store.",
        "ListNet target: normalized.",
    ):
        assert text in caption, text
    # the list-protocol numbers come after the full-gallery ones for the same row
    assert md.index("| ranknet | 1 | cosine | 50 |") < md.index("| ranknet | 1 |", lists)


def test_probe_lines_and_leak_warning(probe_sweep: Path, tmp_path: Path, capsys) -> None:
    runs = [json.loads(p.read_text()) for p in sorted(probe_sweep.glob("*/results.json"))]
    lists_dir = lists_dir_of(runs[0])
    assert probe_of(lists_dir, None) == PROBE
    main([str(probe_sweep), "--out", str(tmp_path), "--resamples", "500", "--no-plots"])
    err = capsys.readouterr().err
    md = (tmp_path / "table.md").read_text()
    probe_part = md[md.index("## List protocol") : md.index("## Significance")]
    assert f"Leakage probe of `{lists_dir}` (rule: {PROBE['rule']}):" in probe_part
    assert (
        "- t2i (test, 200 lists, mean size 11): anti-cosine in-list R@1 80.00% vs chance 9.09%; "
        "positive's first-stage rank median 40 (p10 20, p90 50); LEAK (p = 1e-09)."
    ) in probe_part
    assert "- i2t (test, 200 lists, mean size 11): anti-cosine in-list R@1 10.00% vs" in probe_part
    assert "no leak (p = 0.4)" in probe_part
    warnings = [ln for ln in probe_part.splitlines() if ln.startswith("WARNING:")]
    assert len(warnings) == 1 and "t2i test lists" in warnings[0] and "i2t" not in warnings[0]
    assert warnings[0] in err  # and on the console
    tex = (tmp_path / "table.tex").read_text()
    assert "WARNING: the leakage probe flags the t2i test lists" in tex
    # Lists without a probe say so; unreadable lists too.
    assert probe_of(tmp_path, None) is None


def test_in_list_gain_not_matched_in_full_gallery_is_flagged(
    probe_sweep: Path, tmp_path: Path, capsys
) -> None:
    report = build_report(probe_sweep, n_resamples=2000)
    # listnet gains in the lists in both directions, its full-gallery ranks equal cosine's
    assert len(report.gain_warnings) == 2
    assert all(w.startswith("WARNING: listnet ") for w in report.gain_warnings)
    assert "full-gallery Δ R@1 +0.00 pp" in report.gain_warnings[0]
    assert not any("ranknet" in w for w in report.gain_warnings)  # matched in the full gallery
    main([str(probe_sweep), "--out", str(tmp_path), "--resamples", "2000", "--no-plots"])
    md = (tmp_path / "table.md").read_text()
    sig = md[md.index("## Significance") :]
    assert "Holm-adjusted p < 0.05" in sig  # the rule is stated
    assert sum(ln.startswith("WARNING: listnet ") for ln in sig.splitlines()) == 2
    assert "| full gallery | listnet | t2i | 2 |" in sig
    assert sig.index("| full gallery |") < sig.index("| lists |")
    err = capsys.readouterr().err
    assert all(w in err for w in report.gain_warnings)


def test_csv_holds_both_protocols(probe_sweep: Path, tmp_path: Path) -> None:
    main([str(probe_sweep), "--out", str(tmp_path), "--resamples", "200", "--no-plots"])
    with open(tmp_path / "table.csv", newline="") as fh:
        rows = {r["row"]: r for r in csv.DictReader(fh)}
    res = json.loads((probe_sweep / "ranknet_s0" / "results.json").read_text())
    ranknet = rows["ranknet"]
    assert float(ranknet["t2i_R@1_mean"]) == pytest.approx(100 * res["test/t2i/recall@1"])
    assert float(ranknet["full_t2i_R@1_mean"]) == pytest.approx(100 * res["test_full/t2i/recall@1"])
    assert float(ranknet["full_first_i2t_R@5_mean"]) == pytest.approx(
        100 * res["test_full/i2t/first_stage_recall@5"]
    )
    assert ranknet["full_first_stage"] == "cosine" and ranknet["full_top_k"] == "50"
    with open(tmp_path / "significance.csv", newline="") as fh:
        recs = list(csv.DictReader(fh))
    assert {r["protocol"] for r in recs} == {"full_gallery", "lists"}
    assert all(r["p_holm"] == "" for r in recs if r["row"] == "listnet" and r["seed"] != "pooled")


# ------------------------------------------ the permutation test, --test, --compare A B


def _exact_sign_flip_p(a: np.ndarray, b: np.ndarray) -> float:
    """Two-sided p of the paired sign-flip test by enumerating every sign pattern."""
    d = a - b
    observed = d.mean()
    signs = np.array(list(itertools.product((1.0, -1.0), repeat=len(d))))  # (2^Q, Q)
    null = (signs * d).mean(1)
    less = np.mean(null <= observed + 1e-12)
    greater = np.mean(null >= observed - 1e-12)
    return float(min(1.0, 2 * min(less, greater)))


def test_permutation_test_is_the_exact_sign_flip_test_on_few_queries() -> None:
    a = np.array([1, 0, 1, 1, 0, 0, 1, 0, 1, 1, 0, 1], float)
    b = np.array([0, 0, 0, 1, 1, 0, 0, 0, 0, 1, 0, 0], float)
    res = paired_permutation(a, b, n_resamples=10_000, seed=0)  # 2^5 discordant patterns: exact
    assert res["p"] == pytest.approx(_exact_sign_flip_p(a, b))
    full = permutation_test(  # scipy on every pair (zeros included), exact as well
        (a, b),
        lambda x, y, axis: np.mean(x - y, axis=axis),
        permutation_type="samples",
        n_resamples=10_000,
    )
    assert res["p"] == pytest.approx(full.pvalue)
    assert res["delta"] == pytest.approx((a - b).mean()) and res["queries"] == 12
    assert paired_permutation(a, a)["p"] == 1.0  # identical systems
    nan = np.r_[a, np.nan]
    assert paired_permutation(nan, np.r_[b, 0.0], 10_000)["queries"] == 12  # NaN dropped


def test_permutation_test_on_hits_is_the_sign_test_and_seeded() -> None:
    rng = np.random.default_rng(7)
    a = (rng.random(3000) < 0.50).astype(float)
    b = (rng.random(3000) < 0.47).astype(float)
    res = paired_permutation(a, b, n_resamples=20_000, seed=1)
    # with 0/1 outcomes the sign-flip null is the exact binomial sign test on discordant queries
    wins, losses = int(((a - b) > 0).sum()), int(((a - b) < 0).sum())
    want = binomtest(wins, wins + losses, 0.5).pvalue
    assert res["p"] == pytest.approx(want, abs=0.01)
    assert res == paired_permutation(a, b, n_resamples=20_000, seed=1)  # seeded
    boot = paired_bootstrap(a, b, n_resamples=20_000, seed=1)
    assert (res["low"], res["high"]) == (boot["low"], boot["high"])  # the bootstrap's interval


def test_report_test_option_default_and_bootstrap_unchanged(probe_sweep: Path) -> None:
    boot = build_report(probe_sweep, n_resamples=1000, test="bootstrap")
    perm = build_report(probe_sweep, n_resamples=1000)
    assert perm.test == DEFAULT_TEST == "permutation" and boot.test == "bootstrap"
    with np.load(probe_sweep / "ranknet_s0" / "predictions_full_t2i.npz") as z:
        ranknet = (z["rank"] == 1).astype(float)
    with np.load(probe_sweep / "clip_cosine" / "predictions_full_t2i.npz") as z:
        cosine = (z["rank"] == 1).astype(float)
    for report, test in ((boot, paired_bootstrap), (perm, paired_permutation)):
        rec = next(
            r
            for r in report.significance
            if (r["protocol"], r["row"], r["direction"]) == ("full_gallery", "ranknet", "t2i")
        )
        want = test(ranknet, cosine, n_resamples=1000, seed=0)
        assert rec["p"] == want["p"] and rec["delta"] == pytest.approx(100 * want["delta"])
        assert rec["base"] == BASELINE
    with pytest.raises(ValueError, match="one of permutation, bootstrap"):
        build_report(probe_sweep, test="t-test")


def _hits(run_dir: Path, direction: str, full: bool) -> np.ndarray:
    name = f"predictions_full_{direction}.npz" if full else f"predictions_{direction}.npz"
    with np.load(run_dir / name) as z:
        return (z["rank"] == 1).astype(float) if full else z["labels"][:, 0].astype(float)


def test_compare_two_rows_in_both_protocols_seeds_averaged_per_query(
    probe_sweep: Path, capsys
) -> None:
    main([str(probe_sweep), "--compare", "listnet", "ranknet", "--resamples", "1000"])
    out = capsys.readouterr().out
    assert "listnet vs ranknet" in out and "randomisation" in out
    assert not (probe_sweep / "table.md").exists()  # --compare writes nothing
    records = compare_rows(
        table(build_report(probe_sweep, n_resamples=10).runs),
        "listnet",
        "ranknet",
        n_resamples=1000,
    )
    shown = family(records)
    assert len(shown) == 4 and all(r["base"] == "ranknet" for r in records)
    assert [r["p_holm"] for r in shown] == pytest.approx(holm([r["p"] for r in shown]).tolist())
    for full, title in ((True, "full gallery"), (False, "lists")):
        for d in ("i2t", "t2i"):
            listnet = np.mean([_hits(probe_sweep / f"listnet_s{s}", d, full) for s in (0, 1)], 0)
            ranknet = _hits(probe_sweep / "ranknet_s0", d, full)
            want = paired_permutation(listnet, ranknet, n_resamples=1000, seed=0)
            rec = next(
                r
                for r in shown
                if r["direction"] == d and r["protocol"] == ("full_gallery" if full else "lists")
            )
            assert rec["seed"] == "pooled" and rec["queries"] == 200
            assert rec["delta"] == pytest.approx(100 * want["delta"]) and rec["p"] == want["p"]
            assert f"| {title} | {d} | 2 | 200 | {rec['delta']:+.2f} |" in out
    with pytest.raises(SystemExit, match="no row 'nope'; rows: 'clip_cosine', 'listnet'"):
        main([str(probe_sweep), "--compare", "nope", "ranknet"])


def test_compare_pairs_seeds_whose_lists_differ_by_seed(tmp_path: Path) -> None:
    """Rows over per-seed stores (``xmr embed``) rank other lists per seed: seed s of A is paired
    with seed s of B, and the pooled test averages each query over the seeds."""
    rng = np.random.default_rng(3)
    want_a, want_b = [], []
    for seed in (0, 1):
        a, b = _labels_top1(rng, 120, 0.8), _labels_top1(rng, 120, 0.4)
        _fake_run(tmp_path, f"a{seed}", "reranker_listnet@infonce", seed, a, offset=100 * seed)
        _fake_run(tmp_path, f"b{seed}", "infonce", seed, b, offset=100 * seed)
        want_a.append(a[:, 0].astype(float))
        want_b.append(b[:, 0].astype(float))
    _fake_run(tmp_path, "c0", "vsepp", 0, _labels_top1(rng, 120, 0.5), offset=7)  # other lists
    rows = table(build_report(tmp_path, n_resamples=10).runs)
    records = compare_rows(rows, "reranker_listnet@infonce", "infonce", n_resamples=500)
    lists = {r["seed"]: r for r in records if r["protocol"] == "lists" and r["direction"] == "t2i"}
    assert set(lists) == {0, 1, "pooled"}
    for seed in (0, 1):
        assert lists[seed]["delta"] == pytest.approx(100 * (want_a[seed] - want_b[seed]).mean())
    pooled = paired_permutation(np.mean(want_a, 0), np.mean(want_b, 0), n_resamples=500)
    assert lists["pooled"]["p"] == pooled["p"]
    other = compare_rows(rows, "vsepp", "infonce", n_resamples=100)
    assert {r["note"] for r in other} == {"different test lists than infonce: not compared"}
