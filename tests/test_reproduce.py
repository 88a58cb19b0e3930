"""``xmr.reproduce`` without training: what the banner says the data is, the estimate's scale,
XMR_LOGS, whole-job wall times (a stand-in for ``xmr train``), and the expected numbers of the
quick reproduction (``reproducibility/expected_quick.json``) with their pass/fail check."""

from __future__ import annotations

import json
import re
import stat
from pathlib import Path

import pytest

from xmr import reproduce
from xmr.report.expected import (
    METRIC_KEYS,
    check,
    check_table,
    dumps_expected,
    load_expected,
    validate_expected,
)

REPRO_ENV = (
    "XMR_FEATURES",
    "XMR_LOGS",
    "REPRO_STORE",
    "REPRO_DATA",
    "REPRO_DIR",
    "REPRO_EPOCHS",
    "REPRO_SEEDS",
    "REPRO_BASELINES",
    "REPRO_QUICK",
    "REPRO_STRICT",
    "REPRO_DRY_RUN",
    "REPRO_SEC_PER_EPOCH",
    "REPRO_SEC_PER_JOB",
    "REPRO_SEC_PREPARE",
    "REPRO_SEC_PER_1K_LISTS",
)


@pytest.fixture
def clean_env(monkeypatch, tmp_path):
    for var in REPRO_ENV:
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("XMR_DATA", str(tmp_path / "data"))  # no store there: nothing generated
    return monkeypatch


def _observed_from(expected: dict) -> dict[str, dict[str, float]]:
    return {
        method: {key: entry["value"] for key, entry in entries.items()}
        for method, entries in expected["metrics"].items()
    }


def test_expected_quick_file_is_well_formed(clean_env) -> None:
    expected = load_expected(reproduce.EXPECTED_QUICK)  # validates the format
    # The settings are the quick mode's: a quick run is checked against this file.
    assert expected["settings"] == reproduce.make_plan(quick=True).settings()
    assert expected["settings"]["data"] == "synthetic_demo"
    assert expected["settings"]["epochs"] == 1 and expected["settings"]["seeds"] == 1
    produced = expected["produced"]
    assert re.fullmatch(r"[0-9a-f]{40}", produced["xmr_commit"])
    assert "reproduce" in produced["command"] and produced["date"][:2] == "20"
    methods = set(expected["metrics"])
    assert {"clip_cosine", "lambdarank", "neural_ndcg", "listnet", "ranknet"} <= methods
    for entries in expected["metrics"].values():
        assert set(entries) == set(METRIC_KEYS)
        for entry in entries.values():
            assert 0.0 <= entry["value"] <= 1.0 and 0.0 < entry["tol"] <= 0.1
    # The file is written the way dumps_expected writes it (one line per metric).
    assert reproduce.EXPECTED_QUICK.read_text(encoding="utf-8") == dumps_expected(expected)


def test_checker_passes_on_expected_numbers_and_fails_outside_tolerance() -> None:
    expected = load_expected(reproduce.EXPECTED_QUICK)
    observed = _observed_from(expected)
    rows = check(expected, observed)
    assert rows and all(r.passed for r in rows)
    assert (
        check_table(rows)
        .rstrip()
        .endswith(f"PASS: {len(rows)} of {len(rows)} metrics within tolerance")
    )

    method, entries = next(iter(expected["metrics"].items()))
    key = next(iter(entries))
    value, tol = entries[key]["value"], entries[key]["tol"]
    inside = {m: dict(v) for m, v in observed.items()}
    inside[method][key] = value + 0.9 * tol
    assert all(r.passed for r in check(expected, inside))
    outside = {m: dict(v) for m, v in observed.items()}
    outside[method][key] = value - 1.5 * tol
    rows = check(expected, outside)
    failed = [r for r in rows if not r.passed]
    assert [(r.method, r.metric, r.status) for r in failed] == [(method, key, "FAIL")]
    assert "FAIL: " in check_table(rows)
    # A method that did not finish fails every one of its metrics as missing.
    missing = {m: v for m, v in observed.items() if m != method}
    failed = [r for r in check(expected, missing) if not r.passed]
    assert len(failed) == len(entries) and {r.status for r in failed} == {"FAIL (missing)"}


def test_validate_expected_names_the_broken_rule() -> None:
    good = load_expected(reproduce.EXPECTED_QUICK)
    validate_expected(good)
    broken = json.loads(json.dumps(good))
    method = next(iter(broken["metrics"]))
    broken["metrics"][method]["test/t2i/recall@1"]["tol"] = -0.1
    with pytest.raises(ValueError, match="tol must be >= 0"):
        validate_expected(broken)
    broken = json.loads(json.dumps(good))
    del broken["produced"]["xmr_commit"]
    with pytest.raises(ValueError, match="produced.xmr_commit"):
        validate_expected(broken)


def _fake_results(out: Path, expected: dict, shift: float = 0.0) -> None:
    for i, (method, entries) in enumerate(expected["metrics"].items()):
        run = out / "jobs" / f"job{i}"
        run.mkdir(parents=True)
        results = {"method": method, "seed": 0, "config": {}}
        results.update({key: entry["value"] + shift for key, entry in entries.items()})
        (run / "results.json").write_text(json.dumps(results), encoding="utf-8")


def test_check_only_exits_1_under_strict_when_a_metric_is_off(clean_env, tmp_path, capsys) -> None:
    expected = load_expected(reproduce.EXPECTED_QUICK)
    good, bad = tmp_path / "good", tmp_path / "bad"
    _fake_results(good, expected)
    _fake_results(bad, expected, shift=0.2)  # beyond every tolerance
    clean_env.setenv("REPRO_DIR", str(good))
    with pytest.raises(SystemExit) as done:
        reproduce.main(["--quick", "--check-only", "--strict"])
    assert done.value.code == 0
    assert "PASS" in capsys.readouterr().out and (good / "expected_check.md").is_file()
    clean_env.setenv("REPRO_DIR", str(bad))
    with pytest.raises(SystemExit) as done:
        reproduce.main(["--quick", "--check-only", "--strict"])
    assert done.value.code == 1
    assert "FAIL" in (bad / "expected_check.md").read_text(encoding="utf-8")
    with pytest.raises(SystemExit) as done:  # without --strict a mismatch is reported only
        reproduce.main(["--quick", "--check-only"])
    assert done.value.code == 0
    # --strict with settings the file has no numbers for refuses before running anything.
    clean_env.setenv("REPRO_EPOCHS", "3")
    with pytest.raises(SystemExit, match="--strict: .* no numbers for these settings"):
        reproduce.main(["--quick", "--strict"])


def test_banner_says_synthetic_preset_or_real_store_and_encoder(clean_env, tmp_path) -> None:
    plan = reproduce.make_plan()
    banner = plan.info.describe(plan.data)
    assert banner.startswith("SYNTHETIC data: seeded generator preset 'paper'")
    assert "29,000/1,014/1,000" in banner and "REAL" not in banner

    store = tmp_path / "real-store"
    store.mkdir()
    manifest = {
        "format": "xmr-features/1",
        "encoder": {"name": "open_clip", "model": "ViT-B-32", "pretrained": "openai"},
        "joint_space": True,
        "image_dim": 512,
        "text_dim": 512,
        "num_images": 50,
        "num_texts": 250,
        "normalized": True,
        "splits": {"train": 30, "val": 10, "test": 10},
    }
    (store / "manifest.json").write_text(json.dumps(manifest), encoding="utf-8")
    # A data config whose name does not say what it is (flickr8k_bridge) over a real store.
    clean_env.setenv("REPRO_DATA", "flickr8k_bridge")
    clean_env.setenv("REPRO_STORE", str(store))
    plan = reproduce.make_plan()
    banner = plan.info.describe(plan.data)
    assert banner.startswith(f"REAL data: store {store}, encoder open_clip (model ViT-B-32")
    assert "SYNTHETIC" not in banner and "generator" not in banner
    assert "30/10/10 train/val/test images" in banner and not plan.synthetic


def test_estimate_scales_with_the_store_and_says_when_it_cannot(clean_env, tmp_path) -> None:
    clean_env.setenv("REPRO_EPOCHS", "10")
    clean_env.setenv("REPRO_SEEDS", "2")
    paper = reproduce.make_plan()
    quick = reproduce.make_plan(quick=True)
    assert paper.info.train_lists == 2 * 29_000 and quick.info.train_lists == 2 * 2_000
    assert paper.jobs == quick.jobs
    clean_env.setenv("REPRO_SEC_PER_JOB", "0")
    clean_env.setenv("REPRO_SEC_PREPARE", "0")
    t_paper, _ = reproduce.estimate(paper)
    t_quick, formula = reproduce.estimate(quick)
    # Same jobs and epochs: the time is proportional to the training lists.
    assert t_paper / t_quick == pytest.approx(29_000 / 2_000)
    assert "4,000 training lists" in formula

    clean_env.delenv("REPRO_SEC_PREPARE")
    clean_env.setenv("REPRO_DATA", "flickr30k")  # its store is not there: size unknown
    plan = reproduce.make_plan()
    assert not plan.info.exists and plan.info.train_lists is None
    total, formula = reproduce.estimate(plan)
    assert total is None and "no estimate" in formula


def test_output_goes_under_xmr_logs(clean_env, tmp_path) -> None:
    clean_env.setenv("XMR_LOGS", str(tmp_path / "elsewhere"))
    plan = reproduce.make_plan(quick=True)
    assert plan.out == tmp_path / "elsewhere" / "reproduce" / "synthetic_demo" / "epochs-1_seeds-1"
    clean_env.setenv("XMR_LOGS", "rel-logs")  # relative: from the repository root, like sweeps
    assert reproduce.make_plan().out.is_relative_to(reproduce.ROOT / "rel-logs")
    clean_env.setenv("REPRO_DIR", str(tmp_path / "exact"))
    assert reproduce.make_plan().out == tmp_path / "exact"


def test_job_wall_times_are_whole_processes_and_skips_keep_them(clean_env, tmp_path) -> None:
    # A stand-in for `python -m xmr.train`: sleeps (its start-up), then writes results.json into
    # hydra.run.dir unless it is there already (a finished job is skipped).
    fake = tmp_path / "fake-python"
    fake.write_text(
        "#!/bin/sh\n"
        'for a; do last="$a"; done\n'
        'dir="${last#hydra.run.dir=\\"}"; dir="${dir%\\"}"\n'
        'if [ ! -f "$dir/results.json" ]; then\n'
        '  sleep 0.3; mkdir -p "$dir"\n'
        '  echo \'{"method": "m", "seed": 0, "epochs_run": 1}\' > "$dir/results.json"\n'
        "fi\n",
        encoding="utf-8",
    )
    fake.chmod(fake.stat().st_mode | stat.S_IXUSR)
    clean_env.setenv("REPRO_DIR", str(tmp_path / "out"))
    clean_env.setenv("REPRO_BASELINES", "cosine")
    plan = reproduce.make_plan(quick=True)
    rows = reproduce.run_jobs(plan, str(fake))
    assert len(rows) == len(reproduce.LOSSES) + 1
    assert all(r["status"] == "ran" and r["seconds"] >= 0.3 for r in rows)
    assert (plan.out / "rankers" / "listnet" / "seed-0" / "results.json").is_file()
    again = reproduce.run_jobs(plan, str(fake))
    assert all(r["status"].startswith("skipped") for r in again)
    assert [r["seconds"] for r in again] == [r["seconds"] for r in rows]  # kept from the run
    table = reproduce.wall_times_markdown(again)
    assert "whole-job wall time" in table and "skipped (finished earlier)" in table
