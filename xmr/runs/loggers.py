"""Experiment loggers: CSV (default), TensorBoard, Weights & Biases — one or several per run.

``conf/logger/<name>.yaml`` holds ``{<name>: {_target_: ...}}``, so options combine on the command
line: ``logger=wandb``, ``logger=[csv,wandb]``, ``logger=many`` (csv + tensorboard + wandb).
The CSV logger is :class:`RunCSVLogger`: Lightning's, keeping the rows of a resumed run's earlier
epochs in ``csv/metrics.csv``.
:func:`build_loggers` instantiates them and fills W&B's run names from the sweep:

* ``group``: what stays equal across the seeds of one setting — data name, method and every
  override except the seed (and the run-management keys of ``hydra.job.config.override_dirname``),
  e.g. ``synthetic_paper/listnet/trainer.max_epochs=1``, so a 5-seed sweep is one W&B group;
* ``name``: the job's override dirname (``loss=listnet,seed=3``), else the run directory's name;
* ``job_type``: the task name (``train``).

W&B mode (:func:`wandb_mode`): ``WANDB_MODE`` when set, else ``online`` when an API key is
configured (``WANDB_API_KEY`` or a netrc entry for the W&B host), else ``offline`` — runs are
then written under ``<run dir>/wandb/offline-run-*`` and uploaded later with ``wandb sync <dir>``.
An online run first checks that the W&B host (or the HTTPS proxy) accepts a TCP connection within
``connect_timeout`` seconds (:func:`wandb_unreachable`); when it does not (no network), the run
logs offline instead, with a WARNING saying how to upload it later — rather than waiting about
two minutes for ``wandb.init`` to time out and fail the job.

A resumed job continues its W&B run: the run id is kept in ``<run dir>/wandb/run_id``
(:func:`wandb_run_id`, created by the first launch) and W&B is started with ``resume="allow"``, so
an interrupted job started again is one W&B run, not two of the same name. W&B runs are tagged
with the data name, the model, the loss (models trained on lists) and ``synthetic`` for a
generated store (:func:`run_tags`); the parameter count is logged with the config
(:func:`log_config`), the learning rate by a ``LearningRateMonitor`` whenever a logger is on
(:func:`logger_callbacks`), and the training loss several times per epoch
(:func:`log_interval`).

The resolved config is logged with secrets removed (:func:`scrub_secrets`: any key naming a key,
token, secret or password, and any ``WANDB_API_KEY``-like value, is replaced by ``"***"``). The
final test table is logged as a ``wandb.Table`` (:func:`log_final_results`), and
:func:`finish_loggers` ends the W&B run, so the jobs of a multirun never share a run.
"""

from __future__ import annotations

import contextlib
import csv
import io
import logging
import math
import netrc
import os
import secrets
import socket
import string
import sys
import threading
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from lightning.pytorch.callbacks import Callback, LearningRateMonitor
from lightning.pytorch.loggers import CSVLogger, Logger
from lightning.pytorch.loggers.csv_logs import ExperimentWriter
from lightning.pytorch.loggers.logger import rank_zero_experiment
from lightning.pytorch.utilities import rank_zero_only
from omegaconf import DictConfig, ListConfig, OmegaConf

from xmr.data.store import TABLE_ORDER
from xmr.models.scorer import scorer_kind
from xmr.runs.naming import loss_name, method_name
from xmr.utils.instantiate import buildable, instantiate
from xmr.utils.io import atomic_write_text, write_once
from xmr.utils.secrets import scrub_secrets

log = logging.getLogger(__name__)

#: Overrides that do not define a setting (seed varies inside a group; the others manage runs).
GROUP_EXCLUDED_KEYS = ("seed", "resume", "threads", "trainer.enable_progress_bar", "hydra.verbose")


def _netrc_has_entry(host: str) -> bool:
    path = Path(os.environ.get("NETRC", Path.home() / ".netrc"))
    if not path.is_file():
        return False
    try:
        return netrc.netrc(str(path)).authenticators(host) is not None
    except (netrc.NetrcParseError, OSError):
        return False


def wandb_api_key_configured() -> bool:
    """True when W&B could authenticate: ``WANDB_API_KEY`` set, or a netrc entry for its host."""
    if os.environ.get("WANDB_API_KEY"):
        return True
    host = urlparse(os.environ.get("WANDB_BASE_URL", "https://api.wandb.ai")).hostname
    return bool(host) and _netrc_has_entry(str(host))


def wandb_mode(mode: str | None = None) -> str:
    """The W&B mode: ``mode`` if given, else ``WANDB_MODE``, else online iff a key is configured."""
    if mode:
        return str(mode)
    if os.environ.get("WANDB_MODE"):
        return os.environ["WANDB_MODE"]
    return "online" if wandb_api_key_configured() else "offline"


def _wandb_endpoint() -> tuple[str, int]:
    """Host and port a W&B upload connects to first: the HTTPS proxy when one is set, else the
    W&B host (``WANDB_BASE_URL``, default ``https://api.wandb.ai``)."""
    base = urlparse(os.environ.get("WANDB_BASE_URL", "https://api.wandb.ai"))
    proxy = os.environ.get("HTTPS_PROXY") or os.environ.get("https_proxy")
    if base.scheme == "http":
        proxy = os.environ.get("HTTP_PROXY") or os.environ.get("http_proxy")
    url = urlparse(proxy) if proxy else base
    default_port = 80 if url.scheme == "http" else 443
    return str(url.hostname or "api.wandb.ai"), int(url.port or default_port)


def wandb_unreachable(timeout: float = 5.0) -> str | None:
    """Why W&B cannot be reached (``"api.wandb.ai:443: [Errno -3] ..."``), or None when a TCP
    connection to it (:func:`_wandb_endpoint`) opens within ``timeout`` seconds. The name lookup
    counts in the timeout: the probe runs in a thread that is not waited for beyond it."""
    host, port = _wandb_endpoint()
    outcome: dict[str, Any] = {}

    def probe() -> None:
        try:
            with socket.create_connection((host, port), timeout=timeout):
                outcome["ok"] = True
        except OSError as err:
            outcome["error"] = err

    thread = threading.Thread(target=probe, name="wandb-reachable", daemon=True)
    thread.start()
    thread.join(timeout)
    if outcome.get("ok"):
        return None
    return f"{host}:{port}: {outcome.get('error') or f'no connection within {timeout:g} s'}"


#: Where a run directory keeps its W&B run id (below the logger's ``save_dir``).
WANDB_ID_FILE = Path("wandb") / "run_id"


def wandb_run_id(save_dir: str | Path) -> str:
    """The W&B run id of the run directory ``save_dir``: read from ``wandb/run_id``, or drawn
    (12 random lowercase letters and digits) and written there by the first launch."""
    alphabet = string.ascii_lowercase + string.digits
    fresh = "".join(secrets.choice(alphabet) for _ in range(12))
    return write_once(Path(save_dir) / WANDB_ID_FILE, fresh + "\n").strip()


@buildable
def make_wandb_logger(
    *,
    project: str = "xmr",
    save_dir: str = ".",
    mode: str | None = None,
    group: str | None = None,
    name: str | None = None,
    job_type: str | None = None,
    entity: str | None = None,
    tags: Sequence[str] = (),
    log_model: bool = False,
    connect_timeout: float = 5.0,
    id: str | None = None,  # noqa: A002 - W&B's name for it
    resume: str | None = "allow",
    **kwargs: Any,
) -> Logger:
    """Lightning's ``WandbLogger`` with the mode chosen by :func:`wandb_mode`; an online mode
    whose host does not answer within ``connect_timeout`` seconds (:func:`wandb_unreachable`)
    falls back to offline, with a WARNING naming ``wandb sync`` for uploading the run later.

    ``id`` null = the run directory's own id (:func:`wandb_run_id`); with ``resume="allow"`` a
    job started again continues its W&B run. The W&B run is created lazily (first use of
    ``logger.experiment``, on global rank 0 only).
    """
    from lightning.pytorch.loggers import WandbLogger

    resolved = wandb_mode(mode)
    if resolved == "online":
        why = wandb_unreachable(connect_timeout)
        if why is not None:
            log.warning(
                "W&B is unreachable (%s): logging this run offline under %s instead; upload it "
                "later with `wandb sync %s`",
                why,
                Path(save_dir) / "wandb",
                Path(save_dir) / "wandb" / "offline-run-*",
            )
            resolved = "offline"
    Path(save_dir).mkdir(parents=True, exist_ok=True)
    if resume is not None:
        kwargs["resume"] = resume
    return WandbLogger(
        id=id or wandb_run_id(save_dir),
        project=project,
        save_dir=save_dir,
        offline=resolved == "offline",
        log_model=log_model if resolved == "online" else False,
        mode=resolved,
        group=group,
        name=name,
        job_type=job_type,
        entity=entity,
        tags=list(tags),
        **kwargs,
    )


# -- CSV ---------------------------------------------------------------------------------------
def _row_value(row: Mapping[str, Any], key: str) -> float | None:
    """A row's ``epoch`` or ``step`` (None when it has none, or the row is torn: a value
    missing)."""
    if any(v is None for v in row.values()):
        return None
    try:
        value = float(row.get(key, ""))
    except (TypeError, ValueError):
        return None
    return value if math.isfinite(value) else None


def _row_epoch(row: Mapping[str, Any]) -> float | None:
    return _row_value(row, "epoch")


def _before(row: Mapping[str, Any], epoch: float, step: float) -> bool:
    """Whether an earlier attempt's ``row`` comes before what this process logs from (``epoch``,
    ``step``): by its epoch, or by its step for rows logged without one (the learning rate)."""
    e = _row_epoch(row)
    if e is not None:
        return e < epoch
    s = _row_value(row, "step")
    return s is not None and s < step


def _csv_text(keys: Sequence[str], rows: Sequence[Mapping[str, Any]]) -> str:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(keys))
    writer.writeheader()
    writer.writerows(rows)
    return buf.getvalue()


class _ResumedCSVWriter(ExperimentWriter):
    """Lightning's CSV writer, which deletes ``metrics.csv`` when it starts, made to keep it.

    The first save merges: the rows there of epochs before the first epoch this process logs
    stay (a resumed run logs from its resume epoch on; a fresh start from 0, dropping them all;
    a run resumed after its last epoch logs only its test row). Later rows of a killed attempt, a
    torn last row and the test row of an earlier attempt are dropped, so each epoch's rows appear
    once. Every rewrite is atomic.
    """

    def _check_log_dir_exists(self) -> None:
        self._earlier: list[dict[str, Any]] | None = None
        if os.path.isfile(self.metrics_file_path):
            with open(self.metrics_file_path, newline="", encoding="utf-8") as fh:
                self._earlier = list(csv.DictReader(fh))

    def save(self) -> None:
        if self._earlier is None or not self.metrics:
            super().save()
            return
        epochs = [e for e in map(_row_epoch, self.metrics) if e is not None]
        steps = [s for r in self.metrics if (s := _row_value(r, "step")) is not None]
        start, first_step = min(epochs, default=math.inf), min(steps, default=math.inf)
        kept = [
            {k: v for k, v in r.items() if v not in ("", None)}  # columns it has values in
            for r in self._earlier
            if _before(r, start, first_step)
        ]
        self._earlier = None
        keys = {k for r in kept for k in r}
        self.metrics_keys = sorted(keys | set().union(*self.metrics))
        atomic_write_text(self.metrics_file_path, _csv_text(self.metrics_keys, kept + self.metrics))
        self.metrics = []

    def _rewrite_with_new_header(self, fieldnames: list[str]) -> None:
        with open(self.metrics_file_path, newline="", encoding="utf-8") as fh:
            rows = list(csv.DictReader(fh))
        atomic_write_text(self.metrics_file_path, _csv_text(fieldnames, rows))


class RunCSVLogger(CSVLogger):
    """Lightning's ``CSVLogger`` for a run that resumes: ``<log dir>/metrics.csv`` holds the whole
    history, one set of rows per epoch, however often the run was killed and started again
    (:class:`_ResumedCSVWriter`). Lightning's own deletes the file when a resumed run starts."""

    @property
    @rank_zero_experiment
    def experiment(self) -> ExperimentWriter:
        if self._experiment is None:
            self._fs.makedirs(self.root_dir, exist_ok=True)
            self._experiment = _ResumedCSVWriter(log_dir=self.log_dir)
        return self._experiment


def _hydra_overrides() -> list[str] | None:
    from hydra.core.hydra_config import HydraConfig

    if not HydraConfig.initialized():
        return None
    return list(HydraConfig.get().overrides.task)


#: Override prefixes that never name a setting: where things are written and how they are logged.
NON_SETTING_PREFIXES = ("logger", "paths.", "hydra.", "hydra/")


def _override_dirname(overrides: Sequence[str], exclude: Sequence[str]) -> str:
    kept = []
    for item in sorted(overrides):
        key = item.split("=", 1)[0].lstrip("+~")
        if key not in exclude and not key.startswith(NON_SETTING_PREFIXES):
            kept.append(item)
    return ",".join(kept)


def run_names(cfg: DictConfig, overrides: Sequence[str] | None = None) -> dict[str, str]:
    """W&B ``group`` / ``name`` / ``job_type`` of a run (see the module docstring).

    ``overrides`` defaults to Hydra's task overrides (the command line) when Hydra is running.
    """
    overrides = list(overrides) if overrides is not None else (_hydra_overrides() or [])
    data_name = str(cfg.data.get("name", "data"))
    method = method_name(cfg)
    setting = _override_dirname(overrides, (*GROUP_EXCLUDED_KEYS, "loss", "data", "method"))
    group = "/".join(p for p in (data_name, method, setting) if p)
    name = _override_dirname(overrides, GROUP_EXCLUDED_KEYS[1:])
    if not name:
        out = cfg.get("paths", {}).get("output_dir") if "paths" in cfg else None
        try:
            name = Path(str(out)).name if out else ""
        except Exception:  # noqa: BLE001 - unresolvable interpolation outside Hydra
            name = ""
    return {
        "group": group,
        "name": name or f"seed={cfg.get('seed', 0)}",
        "job_type": str(cfg.get("task_name", "train")),
    }


def _logger_nodes(cfg: DictConfig) -> list[tuple[str, DictConfig]]:
    node = cfg.get("logger")
    if node is None or node is False:
        return []
    if isinstance(node, ListConfig):
        return [(f"logger[{i}]", n) for i, n in enumerate(node) if n is not None]
    if "_target_" in node:
        return [("logger", node)]
    return [(f"logger.{k}", v) for k, v in node.items() if v is not None]


def _is_wandb_target(target: str) -> bool:
    return target.endswith(("make_wandb_logger", "WandbLogger"))


def run_tags(cfg: DictConfig, synthetic: bool = False) -> list[str]:
    """W&B tags of a run: the data name, the model, the loss (for a model trained on lists with
    ``cfg.loss``) and ``synthetic`` when the store was generated."""
    tags = [str(cfg.data.get("name", "data")), str(cfg.model.get("name", "model"))]
    kind = scorer_kind(cfg.model)
    if kind.fits and kind.trains_on == "lists":
        tags.append(loss_name(cfg))
    if synthetic:
        tags.append("synthetic")
    return list(dict.fromkeys(tags))


def build_loggers(cfg: DictConfig, synthetic: bool = False) -> list[Logger]:
    """Instantiate every logger of ``cfg.logger`` (one node, a name → node mapping, or a list).

    W&B loggers with ``group``/``name``/``job_type`` left null get them from :func:`run_names`,
    and :func:`run_tags` after their own ``tags`` (``synthetic``: the store was generated).
    """
    loggers: list[Logger] = []
    for where, node in _logger_nodes(cfg):
        extra: dict[str, Any] = {}
        if _is_wandb_target(str(node.get("_target_", ""))):
            names = run_names(cfg)
            extra = {k: v for k, v in names.items() if node.get(k) is None}
            own = [str(t) for t in (node.get("tags") or [])]
            extra["tags"] = list(dict.fromkeys([*own, *run_tags(cfg, synthetic)]))
        loggers.append(instantiate(node, where=where, **extra))
    return loggers


def logger_callbacks(loggers: Sequence[Logger]) -> list[Callback]:
    """Callbacks that only make sense with a logger: the learning rate of every optimizer
    (``lr-<Optimizer>``), which CSV, TensorBoard and W&B all record."""
    return [LearningRateMonitor()] if loggers else []


def log_interval(configured: int, batches_per_epoch: int) -> int:
    """``Trainer.log_every_n_steps`` for an epoch of ``batches_per_epoch`` batches: the configured
    value, capped so that an epoch logs the training loss about four times or more (Lightning's
    default of 50 never logs a 40-batch epoch, and warns). 0 (no logging) stays 0."""
    if configured <= 0:
        return configured
    return min(configured, max(1, batches_per_epoch // 4))


def _wandb_loggers(loggers: Sequence[Logger]) -> list[Logger]:
    from lightning.pytorch.loggers import WandbLogger

    return [lg for lg in loggers if isinstance(lg, WandbLogger)]


def parameter_counts(module: Any) -> dict[str, int]:
    """``{"params/total": n, "params/trainable": n}`` of a torch module."""
    params = list(module.parameters())
    return {
        "params/total": sum(p.numel() for p in params),
        "params/trainable": sum(p.numel() for p in params if p.requires_grad),
    }


def log_config(loggers: Sequence[Logger], cfg: DictConfig, module: Any = None) -> None:
    """Log the resolved config (secrets scrubbed) as hyper-parameters of every logger, with the
    ``module``'s parameter counts (:func:`parameter_counts`) when given."""
    if not loggers:
        return
    params = scrub_secrets(OmegaConf.to_container(cfg, resolve=True))
    if module is not None:
        params.update(parameter_counts(module))
    for lg in loggers:
        lg.log_hyperparams(params)


def results_table_rows(
    results: Mapping[str, Any], ks: Sequence[int] = (1, 5, 10)
) -> tuple[list[str], list[list[Any]]]:
    """Columns and rows of the final test table: one row per direction, R@K in percent."""
    columns = ["method", "seed", "direction", *[f"R@{k}" for k in ks], "ndcg@10", "mrr"]
    rows = []
    for direction in TABLE_ORDER:
        if f"test/{direction}/recall@{ks[0]}" not in results:
            continue
        row: list[Any] = [results.get("method"), results.get("seed"), direction]
        row += [100.0 * float(results[f"test/{direction}/recall@{k}"]) for k in ks]
        row += [
            float(results.get(f"test/{direction}/ndcg@10", float("nan"))),
            float(results.get(f"test/{direction}/mrr", float("nan"))),
        ]
        rows.append(row)
    return columns, rows


def log_final_results(loggers: Sequence[Logger], results: Mapping[str, Any]) -> None:
    """Put the final test metrics in each W&B run's summary and log them as ``test/table``."""
    wandb_loggers = _wandb_loggers(loggers)
    if not wandb_loggers or not results:
        return
    import wandb

    columns, rows = results_table_rows(results, ks=(1, 5, 10))
    summary = {
        k: float(v)
        for k, v in results.items()
        if k.startswith(("test/", "best_val/")) and isinstance(v, (int, float))
    }
    summary["synthetic"] = bool(results.get("synthetic", False))
    if rank_zero_only.rank != 0:  # other ranks hold a dummy experiment
        return
    for lg in wandb_loggers:
        run = lg.experiment
        run.log({"test/table": wandb.Table(columns=columns, data=rows)})
        run.summary.update(summary)


def finish_loggers(loggers: Sequence[Logger], exit_code: int = 0) -> None:
    """Flush every logger and end the W&B run (so the next job of a multirun starts its own)."""
    for lg in loggers:
        # Finishing must not mask the job's own error.
        with contextlib.suppress(Exception):
            lg.finalize("success" if exit_code == 0 else "failed")
    if _wandb_loggers(loggers) or "wandb" in sys.modules:
        import wandb

        if wandb.run is not None:
            wandb.finish(exit_code=exit_code)


# -- reading an offline run back ---------------------------------------------------------------
_WANDB_HEADER = 7  # b":W&B" + magic (2 bytes) + version (1 byte)
_WANDB_BLOCK = 32768
_FULL, _FIRST, _MIDDLE, _LAST = 1, 2, 3, 4


def _wandb_record_payloads(path: Path) -> list[bytes]:
    """Payloads of a ``.wandb`` file (LevelDB log framing: 32 KiB blocks of records, each
    ``crc32 (4) | length (2, little endian) | type (1) | data``; FIRST/MIDDLE/LAST chunks)."""
    raw = Path(path).read_bytes()
    if raw[:4] != b":W&B":
        raise ValueError(f"{path}: not a W&B run file (header {raw[:4]!r}, expected b':W&B')")
    payloads: list[bytes] = []
    pending = b""
    pos = _WANDB_HEADER
    while pos + 7 <= len(raw):
        left_in_block = _WANDB_BLOCK - pos % _WANDB_BLOCK
        if left_in_block < 7:  # block trailer padding
            pos += left_in_block
            continue
        length = int.from_bytes(raw[pos + 4 : pos + 6], "little")
        kind = raw[pos + 6]
        data = raw[pos + 7 : pos + 7 + length]
        pos += 7 + length
        if kind == 0 and length == 0:  # zero padding
            continue
        if kind == _FULL:
            payloads.append(data)
        elif kind == _FIRST:
            pending = data
        elif kind == _MIDDLE:
            pending += data
        elif kind == _LAST:
            payloads.append(pending + data)
            pending = b""
    return payloads


def read_offline_run(run_dir: str | Path) -> dict[str, Any]:
    """What an offline W&B run directory (``wandb/offline-run-*``) recorded.

    Returns ``{"run": {"id", "group", "name", "job_type", "project", "tags"}, "config": {key: value},
    "summary": {key: value}, "history_keys": set[str], "exit_code": int | None}`` decoded from its ``run-*.wandb`` file
    (values JSON-decoded; ``exit_code`` is None until the run's exit record is on disk — the
    W&B service may still be writing for a moment after ``wandb.finish()``). For inspection and tests; ``wandb sync`` is the way to upload.
    """
    import json

    from wandb.proto import wandb_internal_pb2 as pb

    files = sorted(Path(run_dir).glob("run-*.wandb"))
    if not files:
        raise FileNotFoundError(f"{run_dir}: no run-*.wandb file (not a W&B run directory)")
    out: dict[str, Any] = {
        "run": {},
        "config": {},
        "summary": {},
        "history_keys": set(),
        "exit_code": None,
    }
    for payload in _wandb_record_payloads(files[0]):
        record = pb.Record()
        try:
            record.ParseFromString(payload)
        except Exception:  # noqa: BLE001 - a torn last record of a killed run
            continue
        kind = record.WhichOneof("record_type")
        if kind == "run":
            r = record.run
            out["run"] = {
                "id": r.run_id,
                "group": r.run_group,
                "name": r.display_name,
                "job_type": r.job_type,
                "project": r.project,
                "tags": list(r.tags),
            }
            items = r.config.update
        elif kind == "config":
            items = record.config.update
        elif kind == "summary":
            for item in record.summary.update:
                out["summary"][item.key or "/".join(item.nested_key)] = json.loads(item.value_json)
            continue
        elif kind == "exit":
            out["exit_code"] = int(record.exit.exit_code)
            continue
        elif kind == "history":
            out["history_keys"].update(i.key or "/".join(i.nested_key) for i in record.history.item)
            continue
        else:
            continue
        for item in items:
            key = item.key or "/".join(item.nested_key)
            out["config"][key] = json.loads(item.value_json)
    return out
