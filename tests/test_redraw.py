"""Training lists drawn anew every epoch (``data.redraw_train_lists``, mining strategy ``pool``):
epoch 0 is the mined file bit for bit, a later epoch draws new pools for the same queries, other
strategies are refused by name, and a training run trains on each epoch's lists, deterministically
and identically when resumed. Every store here is SYNTHETIC (the tiny preset)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from _compose import make_cfg, tiny_overrides

from xmr.data import mining
from xmr.data.datamodule import XMRDataModule
from xmr.data.mining import (
    ListsError,
    check_lists,
    load_lists,
    mine_lists,
    mined_options,
    read_lists_meta,
    redraw_train_lists,
)
from xmr.data.store import DIRECTIONS, FeatureStore
from xmr.train import train
from xmr.utils.config import validate_config
from xmr.utils.instantiate import ConfigError

POOL = {"strategy": "pool", "list_size": 11, "seed": 4}


@pytest.fixture(scope="module")
def store(tiny_store: Path) -> FeatureStore:
    return FeatureStore.open(tiny_store)


@pytest.fixture(scope="module")
def pool_lists(store: FeatureStore, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return mine_lists(store, tmp_path_factory.mktemp("redraw") / "pool", **POOL)


def _positives(lists: mining.CandidateLists) -> dict[int, set[int]]:
    return {
        int(q): set(c[y.astype(bool)].tolist())
        for q, c, y in zip(lists.queries, lists.candidates, lists.labels, strict=True)
    }


@pytest.mark.parametrize("direction", DIRECTIONS)
def test_epoch_0_is_the_mined_file_and_later_epochs_draw_new_pools(
    store: FeatureStore, pool_lists: Path, tmp_path: Path, direction: str
) -> None:
    options = mined_options(read_lists_meta(pool_lists))
    assert options == {**mining.MINING_DEFAULTS, **POOL}
    mined = load_lists(pool_lists, direction, "train", store)
    zero = redraw_train_lists(store, direction, options, 0)
    arrays = {
        "queries": zero.queries,
        "candidates": zero.candidates,
        "labels": zero.labels,
        "relevant_total": zero.relevant_total,
    }
    mining._write_npz(tmp_path / "zero.npz", arrays)
    name = mining.lists_filename(direction, "train")
    assert (tmp_path / "zero.npz").read_bytes() == (pool_lists / name).read_bytes()

    text_image = np.asarray(store.text_image, dtype=np.int64)
    image_split = np.asarray(store.image_split)
    epochs = {e: redraw_train_lists(store, direction, options, e) for e in (1, 2)}
    pos0 = _positives(mined)
    for e, lists in epochs.items():
        check_lists(lists, where=f"epoch {e}", text_image=text_image, image_split=image_split)
        assert lists.split == "train" and lists.direction == direction
        assert not np.array_equal(lists.candidates, mined.candidates) or not np.array_equal(
            lists.queries, mined.queries
        ), e
        # The same queries (a list whose positive misses the top is dropped) and positives.
        pos = _positives(lists)
        common = pos.keys() & pos0.keys()
        assert len(common) >= 0.9 * len(pos0), (e, len(common), len(pos0))
        assert all(pos[q] == pos0[q] for q in common)
        again = redraw_train_lists(store, direction, options, e)  # a function of the epoch
        assert np.array_equal(again.candidates, lists.candidates)
    assert not np.array_equal(epochs[1].candidates[:20], epochs[2].candidates[:20])


@pytest.mark.parametrize("strategy", ["hard", "random", "first_stage"])
def test_other_strategies_are_refused_by_name(
    store: FeatureStore, tmp_path: Path, strategy: str
) -> None:
    with pytest.raises(ListsError, match=r"data\.mining\.strategy=pool, got '" + strategy):
        redraw_train_lists(store, "t2i", {"strategy": strategy}, 1)
    mining_option = "data/mining=first_stage" if strategy == "first_stage" else "data/mining=tiny"
    cfg = make_cfg(
        tmp_path,
        ["data=synthetic_tiny", mining_option, f"data.mining.strategy={strategy}"]
        + ["data.redraw_train_lists=true"],
    )
    with pytest.raises(ConfigError, match=r"data\.redraw_train_lists=true needs data\.mining"):
        validate_config(cfg)


def test_bad_arguments(store: FeatureStore, pool_lists: Path, tmp_path: Path) -> None:
    with pytest.raises(ListsError, match="epoch"):
        redraw_train_lists(store, "t2i", POOL, -1)
    with pytest.raises(ListsError, match="unknown options"):
        redraw_train_lists(store, "t2i", {**POOL, "splits": ["train"]}, 1)
    with pytest.raises(ValueError, match="data.redraw_train_lists='yes'"):
        XMRDataModule(store=str(tmp_path), redraw_train_lists="yes")  # type: ignore[arg-type]
    # The datamodule refuses lists of another strategy when it sets up, before any training.
    hard = mine_lists(store, tmp_path / "hard", pool=30, hard=10)
    dm = XMRDataModule(store=str(store.root), lists_dir=str(hard), redraw_train_lists=True)
    with pytest.raises(ListsError, match=r"data\.mining\.strategy=pool, got 'hard'"):
        dm.setup()
    # Without a trainer the train loader holds epoch 0: the mined lists.
    dm = XMRDataModule(store=str(store.root), lists_dir=str(pool_lists), redraw_train_lists=True)
    dm.setup()
    dm.train_dataloader()
    mined = load_lists(pool_lists, "i2t", "train")
    assert torch.equal(dm.gatherer("i2t", "train").candidates, torch.from_numpy(mined.candidates))


def _redraw_overrides(store: Path, lists_root: Path, epochs: int) -> list[str]:
    return [
        *tiny_overrides(store),
        "model=reranker",
        "data/mining=pool",
        "data.mining.list_size=11",
        "data.redraw_train_lists=true",
        f"data.lists_root={lists_root}",
        f"trainer.max_epochs={epochs}",
        "threads=1",
    ]


def test_training_draws_each_epochs_lists_deterministically_and_resumes(
    tiny_store: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    seen: list[tuple[int, dict[str, torch.Tensor]]] = []
    original = XMRDataModule.train_dataloader

    def recording(self: XMRDataModule):  # type: ignore[no-untyped-def]
        loader = original(self)
        lists = {d: self.gatherer(d, "train").candidates for d in self.directions}
        seen.append((self.train_lists_epoch, lists))
        return loader

    monkeypatch.setattr(XMRDataModule, "train_dataloader", recording)
    lists_root = tmp_path / "lists"
    first = train(make_cfg(tmp_path, _redraw_overrides(tiny_store, lists_root, 2), "a"))
    # The train loader was built once per epoch: epoch 0 on the mined lists, epoch 1 on new ones.
    assert [e for e, _ in seen] == [0, 1]
    store = FeatureStore.open(tiny_store)
    (lists_dir,) = lists_root.iterdir()
    options = mined_options(read_lists_meta(lists_dir))
    for d in DIRECTIONS:
        mined = torch.from_numpy(load_lists(lists_dir, d, "train").candidates)
        redrawn = torch.from_numpy(redraw_train_lists(store, d, options, 1).candidates)
        assert torch.equal(seen[0][1][d], mined) and torch.equal(seen[1][1][d], redrawn)
        assert not torch.equal(seen[1][1][d], mined)

    first_lists = seen[1][1]
    # Deterministic: the same command gives the same test metrics.
    second = train(make_cfg(tmp_path, _redraw_overrides(tiny_store, lists_root, 2), "b"))
    test = {k: v for k, v in first.items() if k.startswith("test/")}
    assert test and test == {k: v for k, v in second.items() if k.startswith("test/")}

    # Killed after epoch 0 (when epoch 1's loader is built, after epoch 0's last.ckpt), then
    # started again: epoch 1 draws the same lists and the same order, so the weights end
    # bit-identical.
    class Killed(BaseException):
        pass

    def killed_at_epoch_1(self: XMRDataModule):  # type: ignore[no-untyped-def]
        loader = recording(self)
        if self.train_lists_epoch == 1:
            raise Killed
        return loader

    seen.clear()
    monkeypatch.setattr(XMRDataModule, "train_dataloader", killed_at_epoch_1)
    with pytest.raises(Killed):
        train(make_cfg(tmp_path, _redraw_overrides(tiny_store, lists_root, 2), "c"))
    assert [e for e, _ in seen] == [0, 1]
    monkeypatch.setattr(XMRDataModule, "train_dataloader", recording)
    seen.clear()
    resumed = train(make_cfg(tmp_path, _redraw_overrides(tiny_store, lists_root, 2), "c"))
    # (Lightning builds the loader of the epoch a fit resumes in twice: both hold its lists.)
    assert {e for e, _ in seen} == {1}
    for _, lists in seen:
        assert all(torch.equal(lists[d], first_lists[d]) for d in DIRECTIONS)
    assert {k: v for k, v in resumed.items() if k.startswith("test/")} == test
    a = torch.load(tmp_path / "a/checkpoints/last.ckpt", weights_only=True)["state_dict"]
    c = torch.load(tmp_path / "c/checkpoints/last.ckpt", weights_only=True)["state_dict"]
    assert a.keys() == c.keys() and all(torch.equal(a[k], c[k]) for k in a)
