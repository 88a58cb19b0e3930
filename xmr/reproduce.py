"""``make reproduce``: the paper's whole pipeline in one command.

    make reproduce                              # 4 losses x 5 seeds x 100 epochs + baselines
    make reproduce-quick                        # the checked quick version (--quick --strict)
    REPRO_EPOCHS=1 REPRO_SEEDS=1 make reproduce # one epoch, one seed, paper-scale SYNTHETIC store
    XMR_FEATURES=/data/f30k-clip make reproduce # on a REAL Flickr30k store (data=flickr30k)

Steps: (1) build/mine the data — the REAL store that ``XMR_FEATURES`` (or ``REPRO_STORE``) points
at, read as ``data=flickr30k``, else the paper-scale SYNTHETIC store (``data=synthetic_paper``,
generated on first use; every table is then labelled SYNTHETIC); (2) the rankers: LambdaRank,
NeuralNDCG, ListNet, RankNet x ``REPRO_SEEDS`` seeds, both directions in every job, with the
paper's settings (``experiment=paper``) and ``REPRO_EPOCHS`` epochs; (3) every baseline in
``conf/model`` (each option whose ``name`` is not ``ranker``): a parameter-free scorer (CLIP
cosine, ...) once, trainable baselines once per seed; (4) ``xmr report``. Each job is one
``xmr train`` process, so its wall time is the whole job's: process start, imports, data
loading, training, test and writing results.

The banner says what the data is: SYNTHETIC (the generator preset, its sizes) or REAL (the
store's path and encoder, from its ``manifest.json``), whatever the data config is called. The
expected wall time printed first is scaled to the store's size (:func:`estimate`); with a store
of unknown size (a real store not there yet) there is no estimate. Whole-job wall times are
written to ``<out>/wall_times.md`` (and ``wall_times.json``). Finished jobs are skipped on a
rerun (``xmr.runs.results.finished_results``), so an interrupted reproduction continues where it
stopped; the table marks them ``skipped`` and keeps the time measured when they ran.

**Quick mode** (``--quick`` / ``REPRO_QUICK=1``, ``make reproduce-quick``): the demo-sized
SYNTHETIC store (``data=synthetic_demo``: 2,000 / 200 / 200 images), 1 epoch, 1 seed, every loss
and baseline. Its numbers are checked against ``reproducibility/expected_quick.json`` (values
and a tolerance per metric, and how they were produced; :mod:`xmr.report.expected`): a pass/fail
table is printed and written to ``<out>/expected_check.md``. The check runs after every
reproduction whose settings (data, epochs, seeds, losses, baselines) are the file's; a failure
exits 1 only with ``--strict`` (``REPRO_STRICT=1``; ``make reproduce-quick`` sets it), since a
run on other hardware may legitimately drift, and ``--strict`` refuses to start (exit 2) when
there is nothing to check against. ``--check-only`` checks the results already in the output
directory without running anything; ``--write-expected`` (maintainers) rewrites the expected
file from this run's numbers.

Environment: ``REPRO_EPOCHS`` (100; quick: 1), ``REPRO_SEEDS`` (5; quick: 1), ``REPRO_DIR``
(``$XMR_LOGS/reproduce/<data>/epochs-<E>_seeds-<S>``; ``XMR_LOGS`` defaults to ``logs``, a relative
one is taken from the repository root like the sweeps' ``sweeps/_common.sh``), ``REPRO_DATA`` (a
data config name, overriding the choice above), ``REPRO_BASELINES`` (comma list of model options,
default: all), ``REPRO_SEC_PER_1K_LISTS`` / ``REPRO_SEC_PER_EPOCH`` / ``REPRO_SEC_PER_JOB`` /
``REPRO_SEC_PREPARE`` (the estimate's constants, see :func:`estimate`), ``REPRO_DRY_RUN=1`` (print
the plan and the estimate only), ``REPRO_QUICK=1``, ``REPRO_STRICT=1``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hydra import compose, initialize_config_dir
from hydra.errors import HydraException
from omegaconf import OmegaConf, open_dict

from xmr.data.synth import synth_config
from xmr.models.scorer import scorer_kind
from xmr.report.collect import collect
from xmr.report.expected import (
    check,
    check_table,
    dumps_expected,
    expected_document,
    fixed_methods,
    load_expected,
    observed_metrics,
)
from xmr.utils.provenance import git_state, utc_now

ROOT = Path(__file__).resolve().parents[1]
CONF = ROOT / "conf"
LOSSES = ("lambdarank", "neural_ndcg", "listnet", "ranknet")
EXPECTED_QUICK = ROOT / "reproducibility" / "expected_quick.json"
#: What --quick / REPRO_QUICK=1 sets (explicit REPRO_* variables still win).
QUICK = {"data": "synthetic_demo", "epochs": 1, "seeds": 1}
#: The canonical command of the quick reproduction (recorded in the expected file).
QUICK_COMMAND = "make reproduce-quick  (python -m xmr.reproduce --quick --strict)"

# The estimate's constants, for a 2-core CPU machine without a GPU (`threads: 1`), measured at
# paper scale (SYNTHETIC paper-scale store: 29,000 train lists per direction, 50 hard negatives +
# 1 positive, 512-d): a one-epoch job of `xmr train experiment=paper` takes about 60 s wall there,
# 10-15 s of it start-up, test and writing results. An epoch's cost is scaled by the number of
# training lists and their length, the preparation's by the number of captions. On a busier or
# faster machine plug in your own numbers with REPRO_SEC_PER_1K_LISTS / REPRO_SEC_PER_EPOCH /
# REPRO_SEC_PER_JOB / REPRO_SEC_PREPARE.
SEC_PER_1K_LISTS = 50.0 / 58.0  # one epoch, per 1,000 training lists of 51 (both directions
# counted, validation included): 50 s for the paper-scale store's 2 x 29,000 lists
SEC_PER_JOB = 15.0  # one job's process start, data loading, test and writing results
SEC_PREPARE = 120.0  # generating + mining the paper-scale synthetic store (155,070 captions)
PAPER_TEXTS = 155_070
PAPER_LIST_SIZE = 51


@dataclass(frozen=True)
class DataInfo:
    """What the data of a plan is, from its data config and its store's ``manifest.json``."""

    store: Path
    synthetic: bool
    exists: bool  # the store's manifest.json is there
    preset: str | None = None  # SYNTHETIC: the generator preset (data.synth.preset)
    seed: int | None = None  # SYNTHETIC: the generator seed
    encoder: str | None = None  # the manifest's encoder, in words
    images: dict[str, int] | None = None  # images per split (train, val, test)
    num_texts: int | None = None
    dim: int | None = None
    train_lists: int | None = None  # training lists of one epoch, directions summed
    list_size: int | None = None

    def describe(self, data: str) -> str:
        """The banner's words: SYNTHETIC + preset and sizes, or REAL + store path + encoder."""
        sizes = ""
        if self.images is not None:
            split = "/".join(f"{self.images.get(s, 0):,}" for s in ("train", "val", "test"))
            sizes = f"{split} train/val/test images"
            if self.num_texts is not None:
                sizes += f", {self.num_texts:,} captions"
            if self.dim is not None:
                sizes += f", {self.dim}-d"
        if self.synthetic:
            what = (
                f"seeded generator preset {self.preset!r} (seed {self.seed})"
                if self.preset is not None
                else f"a synthetic store (encoder: {self.encoder})"
            )
            where = f"store {self.store}" + ("" if self.exists else ", generated on first use")
            return f"SYNTHETIC data: {what}; {sizes}; data={data}, {where}"
        if not self.exists:
            return f"REAL data: store {self.store} (not found: no manifest.json); data={data}"
        return f"REAL data: store {self.store}, encoder {self.encoder}; {sizes}; data={data}"


@dataclass
class Plan:
    """What :func:`main` runs: the data choice and the jobs per group."""

    data: str
    store: str | None  # the store given by XMR_FEATURES / REPRO_STORE (passed as data.store)
    info: DataInfo
    epochs: int
    seeds: int
    out: Path
    ranker_jobs: int
    trainable_baselines: list[str] = field(default_factory=list)
    fixed_baselines: list[str] = field(default_factory=list)
    quick: bool = False

    @property
    def synthetic(self) -> bool:
        return self.info.synthetic

    @property
    def label(self) -> str:
        return "SYNTHETIC" if self.synthetic else "REAL"

    @property
    def trained_jobs(self) -> int:
        return self.ranker_jobs + len(self.trainable_baselines) * self.seeds

    @property
    def jobs(self) -> int:
        return self.trained_jobs + len(self.fixed_baselines)

    def settings(self) -> dict[str, Any]:
        """The keys an expected file's ``settings`` are compared on."""
        return {
            "data": self.data,
            "epochs": self.epochs,
            "seeds": self.seeds,
            "losses": list(LOSSES),
            "baselines": sorted(self.fixed_baselines + self.trainable_baselines),
        }


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


def _env_flag(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() not in ("", "0", "false", "no")


def _quote(value: str | Path) -> str:
    """A Hydra override value, double-quoted (a path may hold ``,`` ``=`` or spaces)."""
    return '"' + str(value).replace('"', '\\"') + '"'


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


def logs_root() -> Path:
    """``$XMR_LOGS`` (default ``logs``), a relative one taken from the repository root."""
    root = Path(os.environ.get("XMR_LOGS") or "logs")
    return root if root.is_absolute() else ROOT / root


def _describe_encoder(encoder: Any) -> str:
    if not isinstance(encoder, dict):
        return "unknown (no encoder in manifest.json)"
    name = str(encoder.get("name", "unnamed"))
    parts = [f"{k} {encoder[k]}" for k in ("model", "pretrained", "image", "text") if k in encoder]
    return name + (f" ({'; '.join(parts)})" if parts else "")


def describe_data(data: str, store: str | None = None) -> DataInfo:
    """:class:`DataInfo` of the data config ``data`` (composed like a job's, with
    ``experiment=paper``) over ``store`` (its own store when None)."""
    overrides = ["experiment=paper", f"data={data}"]
    if store:
        overrides.append(f"data.store={_quote(store)}")
    try:
        with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
            cfg = compose("train", overrides=overrides)
    except HydraException as err:
        raise SystemExit(f"data={data}: {err}") from None
    with open_dict(cfg):
        cfg.paths.root_dir = os.environ.get("XMR_ROOT") or str(ROOT)
    node = cfg.data
    path = Path(str(node.store))
    path = (path if path.is_absolute() else ROOT / path).resolve()
    manifest_path = path / "manifest.json"
    manifest: dict[str, Any] | None = None
    if manifest_path.is_file():
        try:
            manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as err:
            raise SystemExit(f"{manifest_path}: unreadable ({err})") from None
    synth = OmegaConf.to_container(node.synth, resolve=True) if node.get("synth") else None
    info: dict[str, Any] = {"store": path, "exists": manifest is not None}
    if isinstance(synth, dict):  # a generated store: sizes from the generator's config
        sc = synth_config(synth)
        info.update(
            synthetic=True,
            preset=synth.get("preset"),
            seed=sc.seed,
            images={"train": sc.num_train, "val": sc.num_val, "test": sc.num_test},
            num_texts=sc.num_texts,
            dim=sc.dim,
        )
        cpi = sc.captions_per_image
    elif manifest is not None:
        encoder = manifest.get("encoder")
        splits = manifest.get("splits") or {}
        info.update(
            synthetic=bool(isinstance(encoder, dict) and encoder.get("synthetic")),
            encoder=_describe_encoder(encoder),
            images={k: int(splits.get(k, 0)) for k in ("train", "val", "test")},
            num_texts=int(manifest.get("num_texts", 0)) or None,
            dim=manifest.get("image_dim"),
        )
        n_img = int(manifest.get("num_images", 0)) or 1
        cpi = (info["num_texts"] or n_img) / n_img
    else:  # a real store that is not there (yet): nothing is known about its size
        return DataInfo(store=path, synthetic=False, exists=False)
    if manifest is not None and info.get("encoder") is None:
        info["encoder"] = _describe_encoder(manifest.get("encoder"))
    mining = node.mining
    strategy = str(mining.get("strategy", "hard"))
    list_size = (
        int(mining.hard) + int(mining.get("i2t_positives", 1))
        if strategy in ("hard", "random")
        else int(mining.list_size)
    )
    n_train = info["images"]["train"]
    per_dir = {
        "t2i": round(n_train * min(int(mining.get("t2i_captions_per_image", 1)), cpi)),
        "i2t": n_train,
    }
    directions = ["t2i", "i2t"] if str(node.direction) == "both" else [str(node.direction)]
    cap = node.get("max_lists")
    train_lists = sum(
        min(per_dir[d], int(cap)) if cap is not None else per_dir[d] for d in directions
    )
    return DataInfo(**info, train_lists=train_lists, list_size=list_size)


def make_plan(quick: bool = False) -> Plan:
    """The plan from the environment (see the module docstring)."""
    quick = quick or _env_flag("REPRO_QUICK")
    store = os.environ.get("REPRO_STORE") or os.environ.get("XMR_FEATURES") or None
    default_data = QUICK["data"] if quick else ("flickr30k" if store else "synthetic_paper")
    data = os.environ.get("REPRO_DATA") or default_data
    if store and not (Path(store) / "manifest.json").is_file():
        raise SystemExit(f"{store}/manifest.json: XMR_FEATURES does not point at a feature store")
    info = describe_data(data, store)
    only = os.environ.get("REPRO_BASELINES")
    trainable, fixed = baselines(only=only.split(",") if only is not None and only else None)
    if only == "":
        trainable, fixed = [], []
    epochs = _env_int("REPRO_EPOCHS", QUICK["epochs"] if quick else 100)
    seeds = _env_int("REPRO_SEEDS", QUICK["seeds"] if quick else 5)
    out = Path(
        os.environ.get("REPRO_DIR")
        or logs_root() / "reproduce" / data / f"epochs-{epochs}_seeds-{seeds}"
    )
    return Plan(
        data=data,
        store=store,
        info=info,
        epochs=epochs,
        seeds=seeds,
        out=out.resolve(),
        ranker_jobs=len(LOSSES) * seeds,
        trainable_baselines=trainable,
        fixed_baselines=fixed,
        quick=quick,
    )


def estimate(plan: Plan) -> tuple[float | None, str]:
    """Expected wall time (seconds; None: no estimate) and the formula.

    ``T = T_prepare + N_trained * (T_job + E * T_epoch) + N_fixed * T_job`` with ``T_epoch`` the
    time of one training epoch (both directions, with validation), scaled from the paper-scale
    measurement by the store's training lists and their length, ``T_job`` the fixed cost of a
    job (process start, data loading, test, writing results), ``T_prepare`` store generation +
    mining, scaled by the number of captions. Trainable baselines are assumed to cost a ranker
    epoch per epoch (not measured separately). Without the store's size (a real store that is not
    there) and without plugged-in ``REPRO_SEC_PER_EPOCH`` / ``REPRO_SEC_PREPARE``: no estimate.
    """
    info = plan.info
    t_job = float(os.environ.get("REPRO_SEC_PER_JOB", SEC_PER_JOB))
    per_1k = float(os.environ.get("REPRO_SEC_PER_1K_LISTS", SEC_PER_1K_LISTS))
    raw_epoch = os.environ.get("REPRO_SEC_PER_EPOCH")
    raw_prep = os.environ.get("REPRO_SEC_PREPARE")
    notes = []
    if raw_epoch:
        t_epoch: float | None = float(raw_epoch)
        notes.append("T_epoch = REPRO_SEC_PER_EPOCH")
    elif info.train_lists is not None and info.list_size is not None:
        t_epoch = per_1k * info.train_lists / 1000 * info.list_size / PAPER_LIST_SIZE
        notes.append(
            f"T_epoch = {per_1k:.3f} s per 1,000 lists of {PAPER_LIST_SIZE} x "
            f"{info.train_lists:,} training lists of {info.list_size} = {t_epoch:.1f} s"
        )
    else:
        t_epoch = None
    if raw_prep:
        t_prep: float | None = float(raw_prep)
        notes.append("T_prepare = REPRO_SEC_PREPARE")
    elif info.num_texts is not None:
        t_prep = SEC_PREPARE * info.num_texts / PAPER_TEXTS
        notes.append(
            f"T_prepare = {SEC_PREPARE:.0f} s x {info.num_texts:,} / {PAPER_TEXTS:,} captions "
            f"= {t_prep:.0f} s (less when the store and lists exist)"
        )
    else:
        t_prep = None
    if t_epoch is None or t_prep is None:
        return None, (
            f"  no estimate: the size of {info.store} is unknown (no manifest.json); plug in "
            "REPRO_SEC_PER_EPOCH=... and REPRO_SEC_PREPARE=... for one"
        )
    n_fixed = len(plan.fixed_baselines)
    total = t_prep + plan.trained_jobs * (t_job + plan.epochs * t_epoch) + n_fixed * t_job
    formula = (
        f"T = T_prepare + N_trained x (T_job + E x T_epoch) + N_fixed x T_job\n"
        f"  = {t_prep:.0f} + {plan.trained_jobs} x ({t_job:.0f} + {plan.epochs} x {t_epoch:.1f})"
        f" + {n_fixed} x {t_job:.0f} s = {total:.0f} s ({_human(total)})\n"
        + "".join(f"  {n}\n" for n in notes)
        + "  constants measured on an idle 2-core CPU machine, 1 thread, paper scale (no GPU);\n"
        "  jobs run one after another; scale by your machine's speed "
        "(REPRO_SEC_PER_1K_LISTS=... etc. to plug in your own numbers)."
    )
    return total, formula


def _human(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


def _run(cmd: list[str]) -> float:
    """Run ``cmd`` from the repository root; its wall seconds. Exit with its status if it fails."""
    print("+ " + " ".join(shlex.quote(c) for c in cmd), flush=True)
    t0 = time.perf_counter()
    done = subprocess.run(cmd, cwd=ROOT, check=False)
    seconds = time.perf_counter() - t0
    if done.returncode != 0:
        print(
            f"== the command above failed (exit {done.returncode}); rerun the reproduction to "
            "continue (finished jobs are skipped) ==",
            file=sys.stderr,
        )
        raise SystemExit(done.returncode)
    return seconds


@dataclass(frozen=True)
class Job:
    """One ``xmr train`` process: its run directory (relative to the plan's ``out``) and args."""

    name: str
    args: list[str]


def jobs(plan: Plan) -> list[Job]:
    """Every training / evaluation job of the plan, in running order."""
    common = [
        f"data={plan.data}",
        f"trainer.max_epochs={plan.epochs}",
        "trainer.enable_progress_bar=false",
    ]
    if plan.store:
        common.append(f"data.store={_quote(plan.store)}")
    out = []
    for loss in LOSSES:
        for seed in range(plan.seeds):
            args = ["experiment=paper", *common, f"loss={loss}", f"seed={seed}"]
            out.append(Job(f"rankers/{loss}/seed-{seed}", args))
    # Baselines get the same data (hence the very same lists: the data configs' mining defaults,
    # conf/data/mining/default.yaml, are the paper's) but not experiment=paper, whose ranker
    # settings (model.net.*) do not apply to other models.
    for model in plan.trainable_baselines:
        for seed in range(plan.seeds):
            args = [*common, f"model={model}", f"seed={seed}"]
            out.append(Job(f"baselines/{model}/seed-{seed}", args))
    for model in plan.fixed_baselines:
        out.append(Job(f"baselines/{model}", [*common, f"model={model}"]))
    return out


def _load_times(path: Path) -> dict[str, dict[str, Any]]:
    try:
        rows = json.loads(path.read_text(encoding="utf-8"))
        return {str(r["job"]): r for r in rows["jobs"]}
    except (OSError, ValueError, KeyError, TypeError):
        return {}


def run_jobs(plan: Plan, py: str) -> list[dict[str, Any]]:
    """Run every job, one process each; per job its whole wall time and whether it ran now."""
    times_path = plan.out / "wall_times.json"
    earlier = _load_times(times_path)
    rows: list[dict[str, Any]] = []
    for job in jobs(plan):
        run_dir = plan.out / job.name
        results = run_dir / "results.json"
        before = results.stat().st_mtime if results.is_file() else None
        cmd = [py, "-m", "xmr.train", *job.args, f"hydra.run.dir={_quote(run_dir)}"]
        seconds = _run(cmd)
        skipped = before is not None and results.stat().st_mtime == before
        res = json.loads(results.read_text(encoding="utf-8")) if results.is_file() else {}
        row = {
            "job": job.name,
            "method": res.get("method"),
            "seed": res.get("seed"),
            "epochs": res.get("epochs_run"),
            "status": "skipped (finished earlier)" if skipped else "ran",
            "seconds": round(seconds, 1),
        }
        if skipped and job.name in earlier and earlier[job.name].get("status") == "ran":
            row["seconds"] = earlier[job.name]["seconds"]  # the time it took when it ran
            row["check_seconds"] = round(seconds, 1)
        rows.append(row)
        times_path.parent.mkdir(parents=True, exist_ok=True)
        times_path.write_text(json.dumps({"jobs": rows}, indent=1) + "\n", encoding="utf-8")
    return rows


def wall_times_markdown(rows: list[dict[str, Any]]) -> str:
    lines = [
        "| job | method | seed | epochs | status | whole-job wall time (s) |",
        "|---|---|---:|---:|---|---:|",
    ]
    lines += [
        f"| {r['job']} | {r['method']} | {r['seed']} | {r['epochs']} | {r['status']} "
        f"| {r['seconds']} |"
        for r in rows
    ]
    return "\n".join(lines) + "\n"


def _expected_for(plan: Plan, path: Path) -> dict[str, Any] | None:
    """The expected file at ``path`` when its settings are the plan's, else None."""
    if not path.is_file():
        return None
    try:
        expected = load_expected(path)
    except ValueError as err:
        raise SystemExit(str(err)) from None
    return expected if expected["settings"] == plan.settings() else None


def check_results(plan: Plan, expected: dict[str, Any]) -> bool:
    """Print and write (``<out>/expected_check.md``) the pass/fail table; True when all pass."""
    rows = check(expected, observed_metrics(collect(plan.out)))
    produced = expected["produced"]
    table = check_table(rows)
    head = (
        f"# Check against {EXPECTED_QUICK.relative_to(ROOT)} "
        f"(produced {produced['date']} at xmr {produced['xmr_commit'][:12]} by "
        f"`{produced['command']}`)\n\n"
    )
    (plan.out / "expected_check.md").write_text(head + table, encoding="utf-8")
    print(head + table, flush=True)
    return all(r.passed for r in rows)


def write_expected(plan: Plan, path: Path, elapsed: float) -> None:
    """Rewrite the expected file from this run's results (``--write-expected``)."""
    runs = collect(plan.out)
    git = git_state(ROOT) or {}
    threads = {(r.get("config") or {}).get("threads") for r in runs}
    produced = {
        "command": QUICK_COMMAND if plan.quick else "python -m xmr.reproduce",
        "argv": " ".join(["python -m xmr.reproduce", *map(shlex.quote, sys.argv[1:])]),
        "xmr_commit": str(git.get("commit") or "unknown"),
        "dirty": git.get("dirty"),
        "date": utc_now(),
        "host": f"{platform.system()} {platform.machine()}, {os.cpu_count()} CPU cores",
        "threads": sorted(t for t in threads if t is not None),
        "python": platform.python_version(),
        "torch": next((r["provenance"].get("torch") for r in runs if r.get("provenance")), None),
        "wall_seconds": round(elapsed),
    }
    doc = expected_document(observed_metrics(runs), fixed_methods(runs), plan.settings(), produced)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(dumps_expected(doc), encoding="utf-8")
    print(f"== wrote {path} ({sum(len(m) for m in doc['metrics'].values())} metrics) ==")


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m xmr.reproduce",
        description="The paper's pipeline: mine, 4 losses x seeds + baselines, report "
        "(environment: see the module docstring).",
    )
    p.add_argument(
        "--quick",
        action="store_true",
        help="demo-sized SYNTHETIC store, 1 epoch, 1 seed, checked against "
        "reproducibility/expected_quick.json (also REPRO_QUICK=1)",
    )
    p.add_argument(
        "--strict",
        action="store_true",
        help="exit 1 when a metric is outside its tolerance, 2 when there is nothing to check "
        "against (also REPRO_STRICT=1)",
    )
    p.add_argument(
        "--check-only", action="store_true", help="check the output directory's results only"
    )
    p.add_argument(
        "--write-expected",
        action="store_true",
        help="rewrite reproducibility/expected_quick.json from this run (maintainers)",
    )
    return p


def main(argv: list[str] | None = None) -> None:
    """``python -m xmr.reproduce [--quick] [--strict] [--check-only] [--write-expected]``;
    ``argv`` None: no options (``__main__`` passes the command line)."""
    args = _parser().parse_args([] if argv is None else argv)
    strict = args.strict or _env_flag("REPRO_STRICT")
    plan = make_plan(quick=args.quick)
    expected = _expected_for(plan, EXPECTED_QUICK)
    if strict and expected is None and not args.write_expected:
        raise SystemExit(
            f"--strict: {EXPECTED_QUICK.relative_to(ROOT)} holds no numbers for these settings "
            f"({plan.settings()}); run the quick mode (--quick) or drop --strict"
        )
    if args.check_only:
        if expected is None:
            raise SystemExit("--check-only: no expected numbers for these settings")
        ok = check_results(plan, expected)
        raise SystemExit(0 if ok or not strict else 1)

    print(f"== xmr reproduce: {plan.info.describe(plan.data)} ==")
    print(
        f"== {len(LOSSES)} losses x {plan.seeds} seed(s), both directions per job, "
        f"{plan.epochs} epoch(s); baselines: "
        f"{', '.join(plan.fixed_baselines + plan.trainable_baselines) or 'none'}; "
        f"output: {plan.out} =="
    )
    total, formula = estimate(plan)
    when = "no estimate" if total is None else _human(total)
    print(f"== expected wall time: {when} for {plan.jobs} jobs ==\n{formula}", flush=True)
    if expected is not None:
        print(f"== results will be checked against {EXPECTED_QUICK.relative_to(ROOT)} ==")
    if os.environ.get("REPRO_DRY_RUN"):
        return
    if not plan.synthetic and not plan.info.exists:
        raise SystemExit(
            f"{plan.info.store}/manifest.json: no feature store there (data={plan.data}); point "
            "XMR_FEATURES at one (docs/real_data.md)"
        )

    py = sys.executable
    t0 = time.perf_counter()
    try:
        t_prepare = _run(
            [py, "-m", "xmr.cli", "mine", f"data={plan.data}"]
            + ([f"data.store={_quote(plan.store)}"] if plan.store else [])
        )
        rows = run_jobs(plan, py)
        t_report = _run(
            [py, "-m", "xmr.cli", "report", str(plan.out), "--out", str(plan.out / "report")]
        )
    except KeyboardInterrupt:
        print("\n== interrupted; rerun the same command to continue ==", file=sys.stderr)
        raise SystemExit(130) from None
    elapsed = time.perf_counter() - t0

    times = wall_times_markdown(rows)
    ran = [r for r in rows if r["status"] == "ran"]
    job_total = sum(float(r["seconds"]) for r in rows)
    est = "no estimate" if total is None else f"estimate was {total:.0f} s"
    summary = (
        f"prepare (store + mining, one process): {t_prepare:.0f} s; {len(rows)} jobs, whole-job "
        f"times summed: {job_total:.0f} s ({len(ran)} run now, {len(rows) - len(ran)} skipped "
        f"with their earlier times); report: {t_report:.0f} s; whole pipeline (this "
        f"invocation): {elapsed:.0f} s ({est})"
    )
    described = describe_data(plan.data, plan.store).describe(plan.data)  # the store exists now
    (plan.out / "wall_times.md").write_text(
        f"# Whole-job wall time ({described}; {plan.epochs} epoch(s))\n\n"
        "Each job is one `xmr train` process: start-up, imports, data loading, training, test "
        "and writing results. A skipped job keeps the time it took when it ran.\n\n"
        f"{times}\n{summary}\n",
        encoding="utf-8",
    )
    report_md = plan.out / "report" / "report.md"
    if report_md.exists():
        print(report_md.read_text(encoding="utf-8"))
    print(times)
    print(summary)
    print(
        f"== {plan.label}: report in {plan.out / 'report'}, wall times in "
        f"{plan.out / 'wall_times.md'} =="
    )
    if args.write_expected:
        write_expected(plan, EXPECTED_QUICK, elapsed)
        expected = load_expected(EXPECTED_QUICK)
    if expected is None:
        print(
            f"== not checked: {EXPECTED_QUICK.relative_to(ROOT)} holds numbers for other "
            "settings (the quick mode: --quick) =="
        )
        return
    if not check_results(plan, expected) and strict:
        raise SystemExit(1)


if __name__ == "__main__":
    main(sys.argv[1:])
