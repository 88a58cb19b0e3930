"""``make reproduce``: the paper's whole pipeline in one command.

    make reproduce                              # 4 losses x 5 seeds x 100 epochs + baselines
    REPRO_EPOCHS=1 REPRO_SEEDS=1 make reproduce # the quick version (one epoch, one seed)
    XMR_FEATURES=/data/f30k-clip make reproduce # on a REAL Flickr30k store (data=flickr30k)

Steps: (1) build/mine the data — the REAL store that ``XMR_FEATURES`` (or ``REPRO_STORE``) points
at, read as ``data=flickr30k``, else the paper-scale SYNTHETIC store (``data=synthetic_paper``,
generated on first use; every table is then labelled SYNTHETIC); (2) the ranker sweep
``+sweep=loss_seeds``: LambdaRank, NeuralNDCG, ListNet, RankNet x ``REPRO_SEEDS`` seeds, both
directions in every job, with the paper's settings (``experiment=paper``) and ``REPRO_EPOCHS``
epochs; (3) every baseline in ``conf/model`` (each option whose ``name`` is not ``ranker``): the
parameter-free CLIP cosine once, trainable baselines once per seed; (4) ``xmr report``.

The expected wall time is printed first (see :func:`estimate`); per-job wall times are measured
afterwards from each run directory (``config.yaml`` written at job start → ``results.json`` at its
end) and written to ``<out>/wall_times.md``. Finished jobs are skipped on a rerun (the sweep's
``finished_results``), so an interrupted reproduction continues where it stopped.

Environment: ``REPRO_EPOCHS`` (100), ``REPRO_SEEDS`` (5), ``REPRO_DIR``
(``logs/reproduce/<data>``), ``REPRO_DATA`` (a data config name, overriding the choice above),
``REPRO_BASELINES`` (comma list of model options, default: all), ``REPRO_SEC_PER_EPOCH`` /
``REPRO_SEC_PER_JOB`` / ``REPRO_SEC_PREPARE`` (the estimate's constants), ``REPRO_DRY_RUN=1``
(print the plan and the estimate only).
"""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from omegaconf import OmegaConf

from xmr.models.scorer import scorer_kind

ROOT = Path(__file__).resolve().parents[1]
CONF = ROOT / "conf"
LOSSES = ("lambdarank", "neural_ndcg", "listnet", "ranknet")

# The estimate's constants, for a 2-core CPU machine without a GPU (`threads: 1`) at paper scale
# (SYNTHETIC paper-scale store: 29,000 train lists per direction, 50 hard negatives + 1 positive,
# 512-d): a one-epoch job of `xmr train experiment=paper` takes about 60 s wall there, 10-15 s of
# it start-up, test and writing results. On a busier or faster machine plug in your own numbers
# with REPRO_SEC_PER_EPOCH / REPRO_SEC_PER_JOB / REPRO_SEC_PREPARE.
SEC_PER_EPOCH = 50.0  # one epoch of one ranker job (both directions) incl. validation
SEC_PER_JOB = 15.0  # start-up, data loading, test and writing results of one job
SEC_PREPARE = 120.0  # generating + mining the paper-scale synthetic store (once)


@dataclass
class Plan:
    """What :func:`main` runs: the data choice and the jobs per group."""

    data: str
    store: str | None
    synthetic: bool
    epochs: int
    seeds: int
    out: Path
    ranker_jobs: int
    trainable_baselines: list[str] = field(default_factory=list)
    fixed_baselines: list[str] = field(default_factory=list)

    @property
    def trained_jobs(self) -> int:
        return self.ranker_jobs + len(self.trainable_baselines) * self.seeds

    @property
    def jobs(self) -> int:
        return self.trained_jobs + len(self.fixed_baselines)


def _env_int(name: str, default: int) -> int:
    raw = os.environ.get(name, "")
    if not raw:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise SystemExit(f"{name}={raw!r}: must be a positive integer") from None
    if value < 1:
        raise SystemExit(f"{name}={raw!r}: must be a positive integer")
    return value


def baselines(conf: Path = CONF, only: list[str] | None = None) -> tuple[list[str], list[str]]:
    """Model options other than the ranker: (trainable, parameter-free), by config file stem."""
    trainable, fixed = [], []
    for path in sorted((conf / "model").glob("*.yaml")):
        node = OmegaConf.load(path)
        if str(node.get("name", path.stem)) == "ranker":
            continue
        if only is not None and path.stem not in only:
            continue
        (trainable if scorer_kind(node).fits else fixed).append(path.stem)
    return trainable, fixed


def make_plan() -> Plan:
    """The plan from the environment (see the module docstring)."""
    store = os.environ.get("REPRO_STORE") or os.environ.get("XMR_FEATURES") or None
    data = os.environ.get("REPRO_DATA") or ("flickr30k" if store else "synthetic_paper")
    if store and not (Path(store) / "manifest.json").is_file():
        raise SystemExit(f"{store}/manifest.json: XMR_FEATURES does not point at a feature store")
    synthetic = data.startswith("synthetic")
    only = os.environ.get("REPRO_BASELINES")
    trainable, fixed = baselines(only=only.split(",") if only is not None and only else None)
    if only == "":
        trainable, fixed = [], []
    seeds = _env_int("REPRO_SEEDS", 5)
    out = Path(os.environ.get("REPRO_DIR") or ROOT / "logs" / "reproduce" / data)
    return Plan(
        data=data,
        store=store if not synthetic else None,
        synthetic=synthetic,
        epochs=_env_int("REPRO_EPOCHS", 100),
        seeds=seeds,
        out=out.resolve(),
        ranker_jobs=len(LOSSES) * seeds,
        trainable_baselines=trainable,
        fixed_baselines=fixed,
    )


def estimate(plan: Plan) -> tuple[float, str]:
    """Expected wall time (seconds) and the formula, from the measured per-epoch/per-job costs.

    ``T = T_prepare + N_trained * (T_job + E * T_epoch) + N_fixed * T_job`` with ``T_epoch`` the
    time of one training epoch (both directions, with validation) of the paper's ranker at paper
    scale, ``T_job`` the fixed cost of a job, ``T_prepare`` store generation + mining. Trainable
    baselines are assumed to cost a ranker epoch per epoch (not measured separately).
    """
    t_epoch = float(os.environ.get("REPRO_SEC_PER_EPOCH", SEC_PER_EPOCH))
    t_job = float(os.environ.get("REPRO_SEC_PER_JOB", SEC_PER_JOB))
    t_prep = float(os.environ.get("REPRO_SEC_PREPARE", SEC_PREPARE))
    total = (
        t_prep
        + plan.trained_jobs * (t_job + plan.epochs * t_epoch)
        + len(plan.fixed_baselines) * t_job
    )
    formula = (
        f"T = T_prepare + N_trained x (T_job + E x T_epoch) + N_fixed x T_job\n"
        f"  = {t_prep:.0f} + {plan.trained_jobs} x ({t_job:.0f} + {plan.epochs} x {t_epoch:.0f})"
        f" + {len(plan.fixed_baselines)} x {t_job:.0f} s = {total:.0f} s ({_human(total)})\n"
        f"  T_epoch, T_job measured on an idle 2-core CPU machine, 1 thread, paper scale (no GPU);\n"
        f"  jobs run one after another; scale"
        f"  by your machine's speed (REPRO_SEC_PER_EPOCH=... etc. to plug in your own numbers)."
    )
    return total, formula


def _human(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


def _run(cmd: list[str]) -> None:
    print("+ " + " ".join(shlex.quote(c) for c in cmd), flush=True)
    subprocess.run(cmd, cwd=ROOT, check=True)


def job_wall_times(root: Path) -> list[dict[str, object]]:
    """Per finished job below ``root``: method, seed, epochs and wall seconds (config → results)."""
    rows = []
    for res_path in sorted(root.rglob("results.json")):
        cfg_path = res_path.with_name("config.yaml")
        if not cfg_path.exists():
            continue
        res = json.loads(res_path.read_text())
        rows.append(
            {
                "job": str(res_path.parent.relative_to(root)),
                "method": res.get("method"),
                "seed": res.get("seed"),
                "epochs": res.get("epochs_run"),
                "seconds": round(res_path.stat().st_mtime - cfg_path.stat().st_mtime, 1),
            }
        )
    return rows


def wall_times_markdown(rows: list[dict[str, object]]) -> str:
    lines = ["| job | method | seed | epochs | wall time (s) |", "|---|---|---:|---:|---:|"]
    lines += [
        f"| {r['job']} | {r['method']} | {r['seed']} | {r['epochs']} | {r['seconds']} |"
        for r in rows
    ]
    return "\n".join(lines) + "\n"


def main() -> None:
    plan = make_plan()
    label = "SYNTHETIC" if plan.synthetic else "REAL"
    py = sys.executable
    print(
        f"== xmr reproduce: {label} data (data={plan.data}"
        + (f", store={plan.store}" if plan.store else ", paper-scale seeded generator")
        + ") =="
    )
    print(
        f"== {len(LOSSES)} losses x {plan.seeds} seed(s), both directions per job, "
        f"{plan.epochs} epoch(s); baselines: "
        f"{', '.join(plan.fixed_baselines + plan.trainable_baselines) or 'none'} =="
    )
    total, formula = estimate(plan)
    print(f"== expected wall time: {_human(total)} for {plan.jobs} jobs ==\n{formula}", flush=True)
    if os.environ.get("REPRO_DRY_RUN"):
        return

    common = [
        "experiment=paper",
        f"data={plan.data}",
        f"trainer.max_epochs={plan.epochs}",
        "trainer.enable_progress_bar=false",
    ]
    if plan.store:
        common.append(f"data.store={plan.store}")
    seeds = f"seed=range(0,{plan.seeds})"
    t0 = time.perf_counter()
    _run(
        [py, "-m", "xmr.cli", "mine", f"data={plan.data}"]
        + ([f"data.store={plan.store}"] if plan.store else [])
    )
    t_prepare = time.perf_counter() - t0
    # Baselines get the same data (hence the very same lists: the data configs' mining defaults,
    # conf/data/mining/default.yaml, are the paper's) but not experiment=paper, whose ranker
    # settings (model.net.*) do not apply to other models.
    base = [c for c in common if c != "experiment=paper"]
    _run(
        [
            py,
            "-m",
            "xmr.train",
            "-m",
            "+sweep=loss_seeds",
            *common,
            seeds,
            f"hydra.sweep.dir={plan.out / 'rankers'}",
        ]
    )
    for model in plan.trainable_baselines:
        _run(
            [
                py,
                "-m",
                "xmr.train",
                "-m",
                *base,
                f"model={model}",
                seeds,
                f"hydra.sweep.dir={plan.out / 'baselines' / model}",
            ]
        )
    for model in plan.fixed_baselines:
        _run(
            [
                py,
                "-m",
                "xmr.train",
                *base,
                f"model={model}",
                f"hydra.run.dir={plan.out / 'baselines' / model}",
            ]
        )
    _run([py, "-m", "xmr.cli", "report", str(plan.out), "--out", str(plan.out / "report")])
    elapsed = time.perf_counter() - t0

    rows = job_wall_times(plan.out)
    times = wall_times_markdown(rows)
    (plan.out / "wall_times.md").write_text(
        f"# Wall time per job ({label} data={plan.data}, {plan.epochs} epoch(s))\n\n{times}\n"
        f"prepare (store + mining): {t_prepare:.0f} s; whole pipeline: {elapsed:.0f} s; "
        f"estimate was {total:.0f} s\n",
        encoding="utf-8",
    )
    report_md = plan.out / "report" / "report.md"
    if report_md.exists():
        print(report_md.read_text(encoding="utf-8"))
    print(times)
    print(f"prepare: {t_prepare:.0f} s; whole pipeline: {elapsed:.0f} s (estimate {total:.0f} s)")
    print(
        f"== {label}: report in {plan.out / 'report'}, wall times in {plan.out / 'wall_times.md'}"
    )


if __name__ == "__main__":
    main()
