"""End to end: configs compose, a tiny run trains, writes results/predictions, evaluates again."""

from __future__ import annotations

import errno
import io
import json
import logging
from pathlib import Path

import numpy as np
import pytest
import torch
from _compose import make_cfg, tiny_overrides
from omegaconf import DictConfig

from xmr.data.datamodule import mining_tag
from xmr.data.mining import load_lists
from xmr.data.store import FeatureStore
from xmr.eval import evaluate
from xmr.metrics.functional import recall_hit_at_k
from xmr.models.module import validation_keys
from xmr.runs.lifecycle import write_failure
from xmr.runs.results import load_predictions
from xmr.train import train
from xmr.utils.instantiate import ConfigError, instantiate
from xmr.utils.io import NoSpaceLeftError

CONF = Path(__file__).resolve().parents[1] / "conf"
SHARED = Path(__file__).resolve().parents[2] / "shared"


GROUPS = [
    "data",
    "data/mining",
    "model",
    "loss",
    "optimizer",
    "scheduler",
    "trainer",
    "callbacks",
    "logger",
    "experiment",
    "protocol",
]


@pytest.mark.parametrize(
    "group, option",
    [(g, p.stem) for g in GROUPS for p in sorted((CONF / g).glob("*.yaml"))],
)
def test_every_config_option_composes_and_instantiates(tmp_path, group, option) -> None:
    cfg = make_cfg(tmp_path, [f"{group}={option}"])
    node = cfg.get(group) if group != "experiment" else None
    if group == "data":
        dm = instantiate(cfg.data)
        assert dm.directions
    elif group == "data/mining":
        dm = instantiate(cfg.data)
        assert 1 <= dm.mining["hard"] <= dm.mining["pool"]
        assert dm.lists_dir.name == mining_tag(cfg.data.mining)
    elif group == "model":
        net = instantiate(cfg.model.net)(query_dim=8, cand_dim=8)
        assert net(torch.zeros(2, 3, 16), torch.ones(2, 3, dtype=torch.bool)).shape == (2, 3)
    elif group == "loss":
        loss = instantiate(cfg.loss)
        s, y, m = (
            torch.randn(2, 4),
            torch.tensor([[1.0, 0, 0, 0], [0, 1.0, 0, 0]]),
            torch.ones(2, 4, dtype=torch.bool),
        )
        assert torch.isfinite(loss(s, y, m))
    elif group == "optimizer":
        assert isinstance(
            instantiate(cfg.optimizer)([torch.nn.Parameter(torch.zeros(1))]), torch.optim.Optimizer
        )
    elif group == "scheduler":
        opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.1)
        assert instantiate(cfg.scheduler)(opt) is not None
    elif group in ("callbacks", "logger", "trainer"):
        if group == "callbacks":
            assert all(instantiate(c) is not None for c in node.values() if c is not None)
        elif group == "logger":
            assert instantiate(cfg.logger) is not None
        else:
            assert instantiate(cfg.trainer, logger=False).max_epochs >= 1
    elif group == "protocol":
        assert cfg.protocol.name == option
        full = cfg.protocol.full_gallery
        assert full is None or (full.top_k >= 1 and full.split == "test")
    else:
        assert cfg.trainer.max_epochs >= 1 and cfg.data.batch_size >= 1


def test_instantiate_refuses_foreign_targets() -> None:
    with pytest.raises(ConfigError, match="only targets in xmr, torch, lightning"):
        instantiate({"_target_": "os.system", "_args_": ["echo hi"]})


@pytest.mark.parametrize(
    "override, match",
    [
        ("model.net.num_heads=3", "num_heads=3 does not divide"),
        ("data.batch_size=-4", "data.batch_size=-4"),
        ("data.mining.hard=300", "hard=300 > data.mining.pool=30"),
        ("ks=[1,5,50]", "K=50 is larger than a candidate list"),
        ("trainer.max_epochs=0", "trainer.max_epochs=0"),
        ("optimizer.lr=-1", "optimizer.lr=-1"),
    ],
)
def test_impossible_config_fails_before_any_work(tmp_path, override, match) -> None:
    cfg = make_cfg(tmp_path, ["data=synthetic_tiny", override])
    with pytest.raises(ConfigError, match=match):
        train(cfg)
    assert not (tmp_path / "data").exists()  # nothing generated or mined


@pytest.fixture(scope="module")
def trained_run(small_store, tmp_path_factory) -> tuple[Path, dict, DictConfig]:
    tmp = tmp_path_factory.mktemp("train")
    cfg = make_cfg(tmp, tiny_overrides(small_store(joint_space=True), "loss=listnet"))
    results = train(cfg)
    return Path(cfg.paths.output_dir), results, cfg


def test_run_writes_results_checkpoint_predictions(trained_run, small_store) -> None:
    random_store = small_store(joint_space=True)
    out, results, _ = trained_run
    on_disk = json.loads((out / "results.json").read_text())
    assert on_disk["method"] == "listnet" and on_disk["seed"] == 0
    for d in ("t2i", "i2t"):
        for k in (1, 5, 10):
            for name in (f"recall@{k}", f"recall_found@{k}"):
                assert 0.0 <= on_disk[f"test/{d}/{name}"] <= 1.0
        assert 0.0 < on_disk[f"test/{d}/ndcg@10"] <= 1.0
        # One positive per list (the default): the two recall definitions agree.
        assert on_disk[f"test/{d}/recall@1"] == pytest.approx(on_disk[f"test/{d}/recall_found@1"])
    assert Path(on_disk["checkpoint"]).exists()
    assert (out / "checkpoints" / "last.ckpt").exists() and (out / "config.yaml").exists()
    assert on_disk["epochs_run"] >= 1 and "best_val/rsum" in on_disk

    store = FeatureStore.open(random_store)
    for d in ("t2i", "i2t"):
        pred = load_predictions(out / on_disk["predictions"][d])
        lists = load_lists(random_store / "lists" / "hard-p30-h10-t2i1-i2t1-s0", d, "test", store)
        assert pred["candidates"].shape == lists.candidates.shape
        np.testing.assert_array_equal(np.sort(pred["candidates"], 1), np.sort(lists.candidates, 1))
        s = pred["scores"]
        assert np.all(np.diff(np.nan_to_num(s, nan=-np.inf), axis=1) <= 0)  # best first
        # recall@1 recomputed from the predictions file alone
        top1 = pred["labels"][:, 0].mean()
        assert top1 == pytest.approx(on_disk[f"test/{d}/recall@1"], abs=1e-6)


def test_monitorable_keys_are_the_keys_validation_logs(trained_run) -> None:
    """The keys the start-up check accepts as ``monitor`` (xmr.models.module.validation_keys)
    are exactly the logged validation keys, less the counts."""
    out, _, cfg = trained_run
    first = json.loads((out / "metrics.jsonl").read_text().splitlines()[0])
    logged = {k for k in first if k.startswith("val/") and "lists" not in k}
    assert set(validation_keys(("t2i", "i2t"), cfg.ks, with_loss=True)) == logged


def test_eval_rebuilds_the_run_and_reproduces_its_metrics(trained_run, tmp_path) -> None:
    out, results, _ = trained_run
    again = evaluate(out, out=tmp_path)
    for key, value in results.items():
        if key.startswith("test/") and not key.endswith("loss"):
            assert again[key] == pytest.approx(value, abs=1e-6), key
    assert (tmp_path / "predictions_t2i.npz").exists() and (tmp_path / "eval_results.json").exists()


def test_same_seed_same_numbers(small_store, tmp_path) -> None:
    random_store = small_store(joint_space=True)
    a = train(
        make_cfg(tmp_path, tiny_overrides(random_store, "loss=ranknet", "data.direction=t2i"), "a")
    )
    b = train(
        make_cfg(tmp_path, tiny_overrides(random_store, "loss=ranknet", "data.direction=t2i"), "b")
    )
    keys = [k for k in a if k.startswith(("test/", "val/", "best_val/"))]
    assert keys and all(a[k] == b[k] for k in keys)
    assert not any(k.startswith("test/i2t") for k in a)  # one direction trained


def test_cosine_baseline_matches_direct_computation(small_store, tmp_path) -> None:
    random_store = small_store(joint_space=True)
    results = train(make_cfg(tmp_path, tiny_overrides(random_store, "model=cosine")))
    assert results["method"] == "clip_cosine" and results["checkpoint"] is None
    store = FeatureStore.open(random_store)
    lists_dir = Path(random_store) / "lists" / "hard-p30-h10-t2i1-i2t1-s0"
    lists = load_lists(lists_dir, "t2i", "test", store)
    q = torch.from_numpy(np.asarray(store.text_emb, np.float32))[lists.queries]
    c = torch.from_numpy(np.asarray(store.image_emb, np.float32))[lists.candidates]
    scores = torch.einsum("bd,bld->bl", q, c)
    labels = torch.from_numpy(lists.labels.astype(np.float32))
    direct = recall_hit_at_k(scores, labels, torch.ones_like(labels, dtype=torch.bool), 1).mean()
    assert results["test/t2i/recall@1"] == pytest.approx(float(direct), abs=1e-6)


class _FullDisk(io.RawIOBase):
    """A file on a file system that fills up after ``room`` bytes."""

    def __init__(self, room: int) -> None:
        self.room = room

    def writable(self) -> bool:
        return True

    def write(self, data) -> int:  # noqa: ANN001
        self.room -= len(data)
        if self.room < 0:
            raise OSError(errno.ENOSPC, "No space left on device")
        return len(data)


def test_full_disk_while_checkpointing_fails_the_run_naming_the_file(
    small_store, tmp_path, monkeypatch
) -> None:
    real_save = torch.save

    def save_on_a_full_disk(obj, f, *args, **kwargs):  # noqa: ANN001, ANN002, ANN003, ANN202
        return real_save(obj, _FullDisk(room=2048), *args, **kwargs)  # the real torch error

    monkeypatch.setattr(torch, "save", save_on_a_full_disk)
    cfg = make_cfg(tmp_path, tiny_overrides(small_store(joint_space=True), "trainer.max_epochs=1"))
    out = Path(cfg.paths.output_dir)
    with pytest.raises(NoSpaceLeftError, match=f"^no space left on device at {out}/checkpoints/"):
        train(cfg)
    failed = json.loads((out / "failed.json").read_text())
    error = failed["error"]
    assert error.startswith(f"NoSpaceLeftError: no space left on device at {out}/checkpoints/")
    assert "unexpected pos" in error  # before: this was all the error said
    assert "No space left on device" in failed["traceback"]  # the chained OSError, kept
    assert not list((out / "checkpoints").glob(".*.tmp"))


def test_failure_record_that_cannot_be_written_does_not_hide_the_error(
    tmp_path, monkeypatch, caplog
) -> None:
    def full(path, obj):  # noqa: ANN001, ANN202
        raise NoSpaceLeftError(path)

    monkeypatch.setattr("xmr.runs.lifecycle.atomic_write_json", full)
    cfg = make_cfg(tmp_path, ["data=synthetic_tiny"])
    with caplog.at_level(logging.ERROR, logger="xmr.runs.lifecycle"):
        write_failure(tmp_path, cfg, RuntimeError("the job's own error"))
    assert "could not be written (no space left on device at" in caplog.text
    assert "the run failed with RuntimeError: the job's own error" in caplog.text


@pytest.mark.slow
def test_real_shared_store_mine_train_eval(tmp_path) -> None:
    store = SHARED / "data" / "flickr8k-1k" / "features" / "zeroshot-bridge"
    if not store.exists():
        pytest.skip(f"{store} absent: the real shared data is not beside this checkout")
    cfg = make_cfg(
        tmp_path,
        [
            "data=flickr8k_bridge",
            f"data.store={store}",
            "loss=listnet",
            "trainer.max_epochs=3",
            "trainer.enable_progress_bar=false",
        ],
    )
    ranker = train(cfg)
    cosine = train(
        make_cfg(
            tmp_path, ["data=flickr8k_bridge", f"data.store={store}", "model=cosine"], "cosine"
        )
    )
    for res in (ranker, cosine):
        assert res["synthetic"] is False
        for d in ("t2i", "i2t"):
            for k in (1, 5, 10):
                v = res[f"test/{d}/recall@{k}"]
                assert np.isfinite(v) and 0.0 <= v <= 1.0
            assert (
                res[f"test/{d}/recall@1"] <= res[f"test/{d}/recall@5"] <= res[f"test/{d}/recall@10"]
            )
    # A real zero-shot encoder beats chance (1/51) inside the lists.
    assert cosine["test/t2i/recall@10"] > 10 / 51
    print({k: round(v, 4) for k, v in ranker.items() if k.startswith("test/") and "@" in k})
    print({k: round(v, 4) for k, v in cosine.items() if k.startswith("test/") and "@" in k})
