"""Bad input is refused at start-up with a message naming the file or field and the rule.

Fills the gaps left by tests/test_store.py, tests/test_mining.py and tests/test_adapters.py:
configs (unknown keys, wrong types, impossible values) through the real entry points, candidate
lists that do not belong to the store being trained on, an empty split, a diverging run (NaN
loss), odd caption tables.
Stores here are SYNTHETIC.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from _compose import make_cfg, tiny_overrides
from hydra import compose, initialize_config_dir
from hydra.errors import ConfigCompositionException

from xmr.data.adapters import DatasetError, build_dataset
from xmr.data.mining import ListsError, mine_lists
from xmr.data.store import FeatureStore, StoreError, write_store
from xmr.data.synth import PRESETS, write_synthetic_store
from xmr.models.module import FINITE_CHECK_EVERY, RankingModule, TrainingDivergedError
from xmr.train import train
from xmr.utils.instantiate import ConfigError

REPO = Path(__file__).resolve().parents[1]
CONF = REPO / "conf"


# ----------------------------------------------------------------------------------- configs
@pytest.mark.parametrize("override", ["bogus=1", "data.bogus=1", "trainer.no_such_flag=true"])
def test_unknown_config_key_is_refused_by_hydra(override: str) -> None:
    with (
        initialize_config_dir(config_dir=str(CONF), version_base="1.3"),
        pytest.raises(ConfigCompositionException, match="Could not override"),
    ):
        compose("train", overrides=["data=synthetic_tiny", override])


@pytest.mark.slow  # starts `python -m xmr.train` in a subprocess
def test_unknown_key_on_the_command_line_fails_before_any_work(tmp_path: Path) -> None:
    env = {**os.environ, "XMR_LOGS": str(tmp_path / "logs"), "XMR_DATA": str(tmp_path / "data")}
    proc = subprocess.run(
        [sys.executable, "-m", "xmr.train", "data=synthetic_tiny", "data.batch_sise=8"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode != 0
    assert "data.batch_sise" in proc.stderr and "not in struct" in proc.stderr.replace("\n", " ")
    assert not (tmp_path / "data").exists()


@pytest.mark.parametrize(
    "overrides, match",
    [
        # wrong types (Hydra accepts any value for keys of plain YAML configs)
        (["data.batch_size=abc"], r"data\.batch_size='abc': must be an integer"),
        (["trainer.max_epochs=1.5"], r"trainer\.max_epochs=1\.5: must be an integer"),
        (["ks=[1,abc]"], r"ks\[\]='abc': must be an integer"),
        (["model.net.dropout=abc"], r"model\.net\.dropout='abc': must be in \[0, 1\)"),
        (["optimizer.lr=fast"], r"optimizer\.lr='fast': must be a finite number > 0"),
        (["optimizer.lr=true"], r"optimizer\.lr=True: must be a finite number > 0"),
        (["ks=5"], r"ks=5: must be a list of cut-offs"),
        # impossible values
        (["data.direction=x2y"], r"data\.direction='x2y': one of t2i, i2t, both"),
        (["data.eval_batch_size=0"], r"data\.eval_batch_size=0"),
        (["data.max_lists=0"], r"data\.max_lists=0"),
        (["data.mining.strategy=best"], r"data\.mining\.strategy='best'"),
        (["data.mining.i2t_positives=0"], r"data\.mining\.i2t_positives=0"),
        (["data.mining.pool=-5"], r"data\.mining\.pool=-5"),
        (["data.redraw_train_lists=yes"], r"data\.redraw_train_lists='yes': must be true or"),
        (["data.redraw_train_lists=true"], r"data\.redraw_train_lists=true needs data\.mining"),
        (["seed=-1"], r"seed=-1: must be an integer >= 0"),
        (["threads=0"], r"threads=0"),
        (["model.net.fc_sizes=[]"], r"model\.net\.fc_sizes=\[\]"),
        (["model.net.dropout=1.0"], r"model\.net\.dropout=1\.0: must be in \[0, 1\)"),
        (["model.net.activation=tanh"], r"model\.net\.activation='tanh': one of"),
        (["monitor=test/rsum"], r"monitor='test/rsum': must be a validation key"),
        (["optimizer.lr=inf"], r"optimizer\.lr=inf: must be a finite number > 0"),
        (["optimizer.lr=nan"], r"optimizer\.lr=nan: must be a finite number > 0"),
        (["optimizer.lr=0"], r"optimizer\.lr=0: must be a finite number > 0"),
        (["ks=[]"], r"ks=\[\]: must hold at least one cut-off"),
        (["ks=[0]"], r"ks\[\]=0: must be an integer >= 1"),
        (["ks=[1,1,5]"], r"ks=\[1, 1, 5\]: a cut-off repeats"),
        (
            ["monitor=val/rsun"],
            r"monitor='val/rsun': not a key this run logs; this run logs val/rsum",
        ),
        (["monitor=val/t2i/recall@20"], r"monitor='val/t2i/recall@20': not a key this run logs"),
        (
            ["data.direction=t2i", "monitor=val/i2t/mrr"],
            r"monitor='val/i2t/mrr': not a key .* \(data\.direction=t2i, ks=\[1, 5, 10\]\)",
        ),
        (["ks=[2,3]"], r"monitor='val/rsum': .* ks=\[2, 3\] holds none of them"),
        (["model=cosine", "monitor=val/t2i/loss"], r"monitor='val/t2i/loss': not a key"),
        (["monitor_mode=maximum"], r"monitor_mode='maximum': one of min, max"),
        (
            ["monitor=val/t2i/loss"],
            r"monitor_mode='max': val/t2i/loss is better when lower, so monitor_mode=min",
        ),
        (["monitor=val/i2t/mrr", "monitor_mode=min"], r"monitor_mode='min': val/i2t/mrr is better"),
        (["loss=neural_ndcg", "loss.temperature=0"], r"loss\.temperature=0: must be a number > 0"),
        (["loss=ranknet", "loss.sigma=-1"], r"loss\.sigma=-1: must be a number > 0"),
        (["loss=approx_ndcg", "loss.alpha=0"], r"loss\.alpha=0"),
        (["loss=lambdarank", "loss.k=0"], r"loss\.k=0: must be an integer >= 1"),
        (["loss=neural_ndcg", "loss.sinkhorn_iters=0"], r"loss\.sinkhorn_iters=0"),
        (["loss=pointwise_bce", "loss.pos_weight=-2"], r"loss\.pos_weight=-2"),
    ],
)
def test_bad_config_value_fails_at_start_up(tmp_path: Path, overrides: list[str], match: str):
    cfg = make_cfg(tmp_path, ["data=synthetic_tiny", *overrides])
    with pytest.raises(ConfigError, match=match):
        train(cfg)
    assert not (tmp_path / "data").exists()  # validated before any data was generated or mined
    record = json.loads((tmp_path / "run" / "failed.json").read_text())
    assert record["error"].startswith("ConfigError: ") and record["seed"] == cfg.seed


# ------------------------------------------------------------------------- lists vs store
@pytest.fixture(scope="module")
def two_stores(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Path]:
    """The tiny SYNTHETIC store with lists, and another store (other seed) of the same size."""
    root = tmp_path_factory.mktemp("lists_vs_store")
    a = write_synthetic_store(root / "a", PRESETS["tiny"])
    b = write_synthetic_store(
        root / "b", PRESETS["tiny"].__class__(**{**PRESETS["tiny"].__dict__, "seed": 7})
    )
    lists = mine_lists(FeatureStore.open(a), root / "lists_a", pool=30, hard=10)
    return a, b, lists


def _train_on(tmp: Path, store: Path, lists: Path) -> None:
    train(
        make_cfg(
            tmp,
            [
                "data=synthetic_tiny",
                f"data.store={store}",
                "data.synth=null",
                f"data.lists_dir={lists}",
                "trainer.max_epochs=1",
                "trainer.enable_progress_bar=false",
            ],
        )
    )


def test_lists_of_another_store_are_refused(two_stores, tmp_path: Path) -> None:
    a, b, lists = two_stores
    with pytest.raises(ListsError, match=r"lists\.json: store_fingerprint .* does not match"):
        _train_on(tmp_path, b, lists)
    assert not (tmp_path / "run" / "checkpoints").exists()  # refused before training


def test_lists_of_a_smaller_store_are_refused(two_stores, tmp_path: Path) -> None:
    a, _, _ = two_stores
    small = write_synthetic_store(
        tmp_path / "small",
        PRESETS["tiny"].__class__(**{**PRESETS["tiny"].__dict__, "num_train": 20}),
    )
    lists = mine_lists(FeatureStore.open(a), tmp_path / "lists", pool=30, hard=10)
    with pytest.raises(ListsError, match="store_fingerprint"):
        _train_on(tmp_path, small, lists)


@pytest.mark.parametrize(
    "tamper, match",
    [
        ("no_positive", "at least one positive"),
        ("duplicate", "duplicate candidate"),
        ("label_2", r"labels must be in \{0, 1\}"),
        ("truncated", "unreadable npz"),
    ],
)
def test_tampered_lists_stop_training_naming_the_file(
    two_stores, tmp_path: Path, tamper: str, match: str
) -> None:
    a, _, lists = two_stores
    copy = tmp_path / "lists"
    shutil.copytree(lists, copy)
    path = copy / "t2i_val.npz"
    with np.load(path) as z:
        arrays = {k: z[k].copy() for k in z.files}
    if tamper == "truncated":
        path.write_bytes(path.read_bytes()[:100])
    else:
        if tamper == "no_positive":
            arrays["labels"][3] = 0
        elif tamper == "duplicate":
            arrays["candidates"][3, 1] = arrays["candidates"][3, 0]
        else:
            arrays["labels"][3, 0] = 2
        np.savez(path, **arrays)
    with pytest.raises(ListsError, match=match) as err:
        _train_on(tmp_path, a, copy)
    assert "t2i_val.npz" in str(err.value)


# ---------------------------------------------------------------------------------- splits
def _small_store(path: Path, split: np.ndarray, text_image: np.ndarray) -> Path:
    """A 40-image SYNTHETIC store (8-d, joint space) with the given splits and captions."""
    rng = np.random.default_rng(0)
    n, d = 40, 8
    img = rng.normal(size=(n, d))
    return write_store(
        path,
        image_emb=img,
        text_emb=img[text_image] + 0.3 * rng.normal(size=(len(text_image), d)),
        text_image=text_image,
        image_split=split,
        images=[f"i{i}" for i in range(n)],
        captions=[f"c{i}" for i in range(len(text_image))],
        encoder={"name": "synthetic-test"},
        joint_space=True,
    )


def _small_store_overrides(store: Path) -> list[str]:
    return [
        "data=synthetic_tiny",
        f"data.store={store}",
        "data.synth=null",
        "data.mining.pool=10",
        "data.mining.hard=5",
        "ks=[1,5]",
        "trainer.max_epochs=1",
        "trainer.enable_progress_bar=false",
    ]


def test_store_without_a_val_split_is_refused_for_training(tmp_path: Path) -> None:
    """No validation images: a run could select no checkpoint and would silently keep its last
    epoch, so training refuses the store by name before the first step; a model without
    parameters (no training) is still evaluated on it."""
    split = np.array([0] * 30 + [2] * 10, dtype=np.uint8)
    store = _small_store(tmp_path / "store", split, np.repeat(np.arange(40), 2))
    overrides = _small_store_overrides(store)
    with pytest.raises(
        StoreError, match=r"manifest\.json: splits\['val'\] = 0, but training"
    ) as err:
        train(make_cfg(tmp_path, overrides))
    assert str(store) in str(err.value) and "early stopping" in str(err.value)
    run = tmp_path / "run"
    assert (run / "failed.json").exists() and not (run / "results.json").exists()
    assert not (run / "checkpoints").exists()
    results = train(make_cfg(tmp_path, [*overrides, "model=cosine"], run="cosine"))
    assert 0.0 <= results["test/t2i/recall@1"] <= 1.0 and "best_val/rsum" not in results


def test_val_images_without_captions_are_refused_for_training(tmp_path: Path) -> None:
    """Val images but no val captions: no validation lists in either direction (an image query
    needs a relevant caption), so training stops naming the empty lists file."""
    split = np.array([0] * 24 + [1] * 8 + [2] * 8, dtype=np.uint8)
    text_image = np.repeat(np.concatenate([np.arange(24), np.arange(32, 40)]), 2)
    store = _small_store(tmp_path / "store", split, text_image)
    with pytest.raises(ListsError, match=r"t2i_val\.npz: no t2i validation lists"):
        train(make_cfg(tmp_path, _small_store_overrides(store)))
    assert not (tmp_path / "run" / "results.json").exists()


def test_diverging_training_stops_with_failed_json(tiny_store: Path, tmp_path: Path) -> None:
    """A learning rate of 1e30 turns the weights to inf/NaN after the first step: the run stops
    at the first non-finite loss, naming epoch, batch and the likely cause; no results.json."""
    cfg = make_cfg(
        tmp_path,
        [*tiny_overrides(tiny_store, "optimizer.lr=1e30"), f"data.lists_root={tmp_path}/lists"],
    )
    with pytest.raises(TrainingDivergedError) as err:
        train(cfg)
    message = str(err.value)
    assert "training diverged at epoch 0, batch 1: the training loss is nan" in message
    assert "optimizer.lr is 1e+30" in message and "lower optimizer.lr" in message
    run = tmp_path / "run"
    assert not (run / "results.json").exists()
    record = json.loads((run / "failed.json").read_text())
    assert record["error"].startswith("TrainingDivergedError: training diverged at epoch 0")


class _Strategy:
    """A one-process stand-in for a DDP strategy: reductions return their input."""

    def reduce(self, tensor: torch.Tensor, reduce_op: str = "mean") -> torch.Tensor:
        assert reduce_op == "min"
        return tensor

    def reduce_boolean_decision(self, decision: bool, all: bool = True) -> bool:
        return decision


def _hooked(world_size: int, batches: int) -> RankingModule:
    """A module whose training hooks see a fake trainer (``world_size`` processes, ``batches``
    batches per epoch, epoch 2, SGD at lr 5)."""
    module = RankingModule({"t2i": torch.nn.Linear(3, 1)}, loss=None)
    module._trainer = SimpleNamespace(  # type: ignore[assignment]
        num_training_batches=batches,
        world_size=world_size,
        strategy=_Strategy(),
        optimizers=[torch.optim.SGD(module.parameters(), lr=5.0)],
        current_epoch=2,
    )
    module.on_train_epoch_start()
    return module


def _end_batch(module: RankingModule, batch_idx: int, loss: float) -> None:
    module.on_train_batch_end({"loss": torch.tensor(loss)}, None, batch_idx)


def test_non_finite_loss_stops_at_once_on_one_cpu_process() -> None:
    module = _hooked(world_size=1, batches=10)
    _end_batch(module, 0, 0.5)
    with pytest.raises(TrainingDivergedError, match=r"epoch 2, batch 1: the training loss is inf"):
        _end_batch(module, 1, float("inf"))


def test_non_finite_loss_is_read_lazily_under_ddp() -> None:
    """Under DDP (or on an accelerator) the flag stays on the device until the next check (every
    FINITE_CHECK_EVERY batches and the epoch's last batch), which names the first bad batch."""
    module = _hooked(world_size=2, batches=FINITE_CHECK_EVERY + 5)
    _end_batch(module, 0, 0.5)
    _end_batch(module, 1, float("nan"))  # noted, not read yet
    _end_batch(module, 2, 0.5)
    with pytest.raises(TrainingDivergedError, match=r"epoch 2, batch 1: the training loss is nan"):
        for i in range(3, FINITE_CHECK_EVERY):
            _end_batch(module, i, 0.5)
    module.on_train_epoch_start()  # a new epoch forgets the old flag
    _end_batch(module, FINITE_CHECK_EVERY - 1, 0.5)


def test_non_finite_weights_stop_the_epoch_before_last_ckpt() -> None:
    """A last step that broke the weights has no later loss to show it: the last batch of each
    epoch checks the weights too (before last.ckpt is written at the epoch's end)."""
    module = _hooked(world_size=1, batches=2)
    with torch.no_grad():
        module.nets["t2i"].weight[0, 1] = float("nan")
    _end_batch(module, 0, 0.5)  # not the last batch: weights not read
    with pytest.raises(TrainingDivergedError, match="batch 1: the weights are not finite"):
        _end_batch(module, 1, 0.5)


def test_store_without_a_test_split_is_refused(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    with pytest.raises(Exception, match="test") as err:
        write_store(
            tmp_path / "s",
            image_emb=rng.normal(size=(4, 3)),
            text_emb=rng.normal(size=(4, 3)),
            text_image=np.arange(4),
            image_split=np.zeros(4, np.uint8),
            images=list("abcd"),
            captions=list("abcd"),
            encoder={},
            joint_space=True,
        )
    assert "split 'test' must be present" in str(err.value)


# --------------------------------------------------------------------------------- adapters
def _folder(tmp: Path, table: bytes) -> dict:
    (tmp / "a.jpg").write_bytes(b"x")
    (tmp / "captions.tsv").write_bytes(table)
    return {"annotations": str(tmp / "captions.tsv"), "image_root": str(tmp), "check_images": False}


@pytest.mark.parametrize(
    "table, match",
    [
        (b"image\tcaption\n", "no"),  # header only: no captions
        (b"image\tcaption\na.jpg\t\n", "empty caption"),
        (b"image\tcaption\na.jpg\t\xff\xfe bad bytes\n", "captions.tsv"),
        (b"image\tcaption\n\tsome caption\n", "empty image path"),
    ],
)
def test_bad_caption_table_names_the_file(tmp_path: Path, table: bytes, match: str) -> None:
    with pytest.raises(DatasetError, match=match) as err:
        build_dataset("folder", _folder(tmp_path, table))
    assert "captions.tsv" in str(err.value)
