"""Loggers: W&B offline runs (real wandb library, no network), CSV, TensorBoard, several at once."""

from __future__ import annotations

import errno
import json
import logging
import socket
import threading
import time
from pathlib import Path

import pytest
from _compose import make_cfg
from lightning.pytorch.callbacks import ModelCheckpoint
from omegaconf import open_dict

from xmr.runs.loggers import (
    build_loggers,
    make_wandb_logger,
    read_offline_run,
    results_table_rows,
    run_names,
    wandb_mode,
    wandb_unreachable,
)
from xmr.train import train
from xmr.utils.secrets import scrub_secrets

pytest.importorskip("wandb")

CONF = Path(__file__).resolve().parents[1] / "conf"


@pytest.fixture(autouse=True)
def offline_wandb(monkeypatch, tmp_path) -> None:
    """W&B never reaches a network: offline, quiet, files under the test's tmp dir."""
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path / "wandb_dir"))
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.setenv("WANDB_CONSOLE", "off")
    monkeypatch.delenv("WANDB_API_KEY", raising=False)


def tiny_run(tiny_store: Path, tmp: Path, *extra: str) -> list[str]:
    return [
        "data=synthetic_tiny",
        f"data.store={tiny_store}",
        f"data.lists_root={tmp / 'lists'}",
        "data.synth=null",
        "trainer.max_epochs=1",
        "trainer.enable_progress_bar=false",
        "loss=listnet",
        *extra,
    ]


def test_mode_is_offline_without_a_key_and_online_with_one(monkeypatch, tmp_path) -> None:
    monkeypatch.delenv("WANDB_MODE", raising=False)
    monkeypatch.setenv("NETRC", str(tmp_path / "netrc"))
    assert wandb_mode() == "offline"
    (tmp_path / "netrc").write_text("machine api.wandb.ai\n  login user\n  password abc\n")
    assert wandb_mode() == "online"
    (tmp_path / "netrc").unlink()
    monkeypatch.setenv("WANDB_API_KEY", "k" * 40)
    assert wandb_mode() == "online"
    monkeypatch.setenv("WANDB_MODE", "disabled")
    assert wandb_mode() == "disabled"  # an explicit mode always wins
    assert wandb_mode("offline") == "offline"


@pytest.fixture
def online_key(monkeypatch) -> None:
    """An API key and no WANDB_MODE: W&B would go online (no proxy, the default host)."""
    monkeypatch.delenv("WANDB_MODE", raising=False)
    monkeypatch.setenv("WANDB_API_KEY", "k" * 40)
    for name in ("WANDB_BASE_URL", "HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy"):
        monkeypatch.delenv(name, raising=False)


def test_online_wandb_without_network_logs_offline_and_says_how_to_sync(
    online_key, monkeypatch, tmp_path, caplog
) -> None:
    tried = []

    def no_network(address, timeout=None, *args, **kwargs):  # noqa: ANN001, ANN002, ANN003, ANN202
        tried.append((address, timeout))
        raise OSError(errno.ENETUNREACH, "Network is unreachable")

    monkeypatch.setattr(socket, "create_connection", no_network)
    save_dir = tmp_path / "run"
    with caplog.at_level(logging.WARNING, logger="xmr.runs.loggers"):
        logger = make_wandb_logger(save_dir=str(save_dir), connect_timeout=0.5)
    assert tried == [(("api.wandb.ai", 443), 0.5)]  # one cheap probe, not wandb.init's retries
    assert logger._wandb_init["mode"] == "offline" and logger._offline
    assert "W&B is unreachable (api.wandb.ai:443: [Errno" in caplog.text
    assert f"`wandb sync {save_dir / 'wandb' / 'offline-run-*'}`" in caplog.text


def test_reachability_probe_has_a_deadline_and_a_reachable_host_stays_online(
    online_key, monkeypatch, tmp_path
) -> None:
    answer = threading.Event()

    def silent(address, timeout=None, *args, **kwargs):  # noqa: ANN001, ANN002, ANN003, ANN202
        answer.wait(5)  # a host that never answers (released at the end of the test)
        raise OSError(errno.ETIMEDOUT, "timed out")

    monkeypatch.setattr(socket, "create_connection", silent)
    t0 = time.monotonic()
    assert wandb_unreachable(0.2) == "api.wandb.ai:443: no connection within 0.2 s"
    assert time.monotonic() - t0 < 2
    answer.set()

    class Connection:
        def __enter__(self):  # noqa: ANN204
            return self

        def __exit__(self, *exc):  # noqa: ANN002, ANN204
            return False

    monkeypatch.setattr(socket, "create_connection", lambda *a, **k: Connection())
    assert wandb_unreachable(0.2) is None
    logger = make_wandb_logger(save_dir=str(tmp_path / "run"), connect_timeout=0.2)
    assert logger._wandb_init["mode"] == "online"  # the run itself is created lazily: no network


def test_scrub_secrets_hides_keys_tokens_and_the_env_key(monkeypatch) -> None:
    monkeypatch.setenv("WANDB_API_KEY", "0123456789abcdef")
    cfg = {
        "seed": 3,
        "wandb": {"api_key": "x", "Token": "y", "project": "xmr"},
        "hub": [{"secret": 1}, "url?key=0123456789abcdef"],
        "db_password": "p",
    }
    clean = scrub_secrets(cfg)
    assert clean["seed"] == 3 and clean["wandb"]["project"] == "xmr"
    assert clean["wandb"]["api_key"] == clean["wandb"]["Token"] == "***"
    assert clean["hub"][0]["secret"] == "***" and clean["db_password"] == "***"
    assert "0123456789abcdef" not in json.dumps(clean)


def test_run_names_group_seeds_of_one_setting(tmp_path) -> None:
    cfg = make_cfg(tmp_path, ["data=synthetic_tiny", "loss=listnet"])
    a = run_names(cfg, ["loss=listnet", "seed=0", "model.net.num_layers=1", "logger=wandb"])
    b = run_names(cfg, ["seed=4", "loss=listnet", "model.net.num_layers=1", "logger=wandb"])
    other = run_names(cfg, ["loss=listnet", "seed=0", "model.net.num_layers=2"])
    assert a["group"] == b["group"] == "synthetic_tiny/listnet/model.net.num_layers=1"
    assert other["group"] != a["group"]
    assert a["name"] != b["name"] and "seed=0" in a["name"] and "logger" not in a["name"]
    assert a["job_type"] == "train"


def test_results_table_rows_one_row_per_direction() -> None:
    results = {"method": "listnet", "seed": 1}
    for d, base in (("t2i", 0.1), ("i2t", 0.2)):
        results.update({f"test/{d}/recall@{k}": base * k / 10 for k in (1, 5, 10)})
        results.update({f"test/{d}/ndcg@10": 0.5, f"test/{d}/mrr": 0.4})
    columns, rows = results_table_rows(results)
    assert columns[:6] == ["method", "seed", "direction", "R@1", "R@5", "R@10"]
    assert [r[2] for r in rows] == ["i2t", "t2i"]
    assert rows[1][3:6] == pytest.approx([1.0, 5.0, 10.0])  # 0.1·K/10 in percent


@pytest.mark.parametrize("choice", ["csv", "tensorboard", "wandb", "[csv,wandb]", "many"])
def test_logger_options_compose_into_loggers(tmp_path, choice) -> None:
    cfg = make_cfg(tmp_path, ["data=synthetic_tiny", f"logger={choice}"])
    loggers = build_loggers(cfg)
    expected = {"csv": 1, "tensorboard": 1, "wandb": 1, "[csv,wandb]": 2, "many": 3}[choice]
    assert len(loggers) == expected
    with open_dict(cfg):
        cfg.logger = None
    assert build_loggers(cfg) == []


def _run_dirs(out: Path) -> list[Path]:
    return sorted((out / "wandb").glob("offline-run-*"))


def _read_finished(run_dir: Path, timeout: float = 30.0) -> dict:
    """The offline run once its exit record is on disk (W&B's service writes asynchronously)."""
    deadline = time.monotonic() + timeout
    while True:
        run = read_offline_run(run_dir)
        if run["exit_code"] is not None or time.monotonic() > deadline:
            return run
        time.sleep(0.2)


def test_two_wandb_jobs_in_one_process_write_two_offline_runs(tiny_store, tmp_path) -> None:
    results = []
    for seed, choice in ((0, "many"), (1, "[csv,wandb]")):
        cfg = make_cfg(
            tmp_path,
            tiny_run(tiny_store, tmp_path, f"logger={choice}", f"seed={seed}"),
            f"s{seed}",
        )
        results.append(train(cfg))
    import wandb

    assert wandb.run is None  # each job finished its run
    runs = [_read_finished(d) for out in ("s0", "s1") for d in _run_dirs(tmp_path / out)]
    assert len(runs) == 2, "each job writes exactly one offline run in its own directory"
    assert runs[0]["run"]["id"] != runs[1]["run"]["id"]
    for seed, (run, res) in enumerate(zip(runs, results, strict=True)):
        assert run["exit_code"] == 0 and run["config"]["seed"] == seed
        assert "api_key" not in json.dumps(run["config"])
        assert run["run"]["job_type"] == "train"
        assert run["run"]["group"] == runs[0]["run"]["group"]  # seeds share a group
        assert {"val/rsum", "test/t2i/recall@1", "test/i2t/recall@1"} <= run["history_keys"]
        assert run["summary"]["test/t2i/recall@1"] == pytest.approx(res["test/t2i/recall@1"])
        assert run["summary"]["test/table/nrows"] == 2  # the wandb.Table: one row per direction
    # the CSV and TensorBoard loggers ran beside it
    assert (tmp_path / "s0" / "csv" / "metrics.csv").stat().st_size > 0
    events = list((tmp_path / "s0" / "tensorboard").glob("events.out.tfevents.*"))
    assert events and all(e.stat().st_size > 0 for e in events)


def test_wandb_run_is_finished_even_when_the_job_fails(tiny_store, tmp_path, monkeypatch) -> None:
    import wandb

    from xmr.models.module import RankingModule

    def broken_step(self, batch, batch_idx):  # noqa: ANN001, ANN202
        assert wandb.run is not None  # the run was started before fitting
        raise RuntimeError("injected failure")

    monkeypatch.setattr(RankingModule, "training_step", broken_step)
    cfg = make_cfg(tmp_path, tiny_run(tiny_store, tmp_path, "logger=wandb"), "fail")
    with pytest.raises(RuntimeError, match="injected failure"):
        train(cfg)
    assert wandb.run is None
    (run_dir,) = _run_dirs(tmp_path / "fail")
    assert _read_finished(run_dir)["exit_code"] == 1


def test_a_resumed_job_continues_its_wandb_run_with_tags_and_parameter_count(
    tiny_store, tmp_path
) -> None:
    # First launch: killed after its first epoch's checkpoint (no results.json).
    job = tiny_run(tiny_store, tmp_path, "logger=wandb", "trainer.max_epochs=2")
    end_of_epoch = ModelCheckpoint.on_train_epoch_end

    class Killed(BaseException):
        pass

    def killed(self, trainer, pl_module):  # noqa: ANN001, ANN202
        end_of_epoch(self, trainer, pl_module)
        if trainer.current_epoch == 0 and str(self.dirpath).endswith("checkpoints"):
            raise Killed

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(ModelCheckpoint, "on_train_epoch_end", killed)
        with pytest.raises(Killed):
            train(make_cfg(tmp_path, job, "job"))
    # Second launch of the same command: resumes from last.ckpt to two epochs.
    results = train(make_cfg(tmp_path, job, "job"))
    assert results["epochs_run"] == 2
    runs = [_read_finished(d) for d in _run_dirs(tmp_path / "job")]
    assert len(runs) == 2, "each launch writes its offline part"
    run_id = (tmp_path / "job" / "wandb" / "run_id").read_text().strip()
    assert runs[0]["run"]["id"] == runs[1]["run"]["id"] == run_id, "one W&B run for the job"
    for run in runs:
        assert {"synthetic_tiny", "ranker", "listnet", "synthetic"} <= set(run["run"]["tags"])
        assert run["config"]["params/trainable"] == run["config"]["params/total"] > 0
    # per-step training loss (several points per epoch) and the learning rate
    assert {"train/loss_step", "lr-Adam", "train/loss"} <= runs[0]["history_keys"] | runs[1][
        "history_keys"
    ]
    assert {"train/loss_step", "lr-Adam"} <= runs[0]["history_keys"]


def test_wandb_run_id_is_written_once_per_run_dir(tmp_path) -> None:
    from xmr.runs.loggers import wandb_run_id

    first = wandb_run_id(tmp_path / "a")
    assert first == wandb_run_id(tmp_path / "a") and len(first) == 12 and first.isalnum()
    assert wandb_run_id(tmp_path / "b") != first


def test_the_training_loss_is_logged_several_times_per_epoch(tiny_store, tmp_path) -> None:
    from xmr.data.datamodule import XMRDataModule
    from xmr.runs.loggers import log_interval

    assert log_interval(50, 63) == 15  # the synthetic_demo epoch: about 4 points, not 0
    assert log_interval(50, 1000) == 50  # long epochs keep the configured interval
    assert log_interval(50, 3) == 1 and log_interval(0, 100) == 0  # 0 = no logging, kept
    dm = XMRDataModule(
        store=str(tiny_store),
        lists_dir=str(tmp_path / "lists"),
        batch_size=16,
        mining={
            "pool": 30,
            "hard": 10,
            "t2i_captions_per_image": 1,
            "i2t_positives": 1,
        },
    )
    dm.prepare_data()
    dm.setup()
    assert dm.train_batches_per_epoch() == -(-dm.num_lists("t2i", "train") // 16) == 4
    dm.use_pair_training(32)
    assert dm.train_batches_per_epoch() == 300 // 32  # 60 images x 5 captions, last batch dropped
