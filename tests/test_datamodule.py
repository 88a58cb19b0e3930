"""The datamodule gathers pair features from the store at batch time, pads and masks lists."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from _compose import make_cfg, tiny_overrides

from xmr.data.datamodule import (
    PAIRS,
    IndexCollate,
    PairGatherer,
    XMRDataModule,
    is_index_batch,
    mining_tag,
    pair_features,
)
from xmr.data.mining import load_lists, mine_lists
from xmr.data.store import FeatureStore
from xmr.train import train


@pytest.fixture(scope="module")
def all_positive_lists(tiny_store: Path, tmp_path_factory) -> Path:
    """i2t lists with all 5 captions as positives: lengths differ when pools are short."""
    out = tmp_path_factory.mktemp("lists") / "all"
    mine_lists(
        FeatureStore.open(tiny_store),
        out,
        pool=30,
        hard=10,
        i2t_positives="all",
        t2i_captions_per_image="all",
        seed=1,
    )
    return out


def test_batches_are_store_rows_concatenated(tiny_store: Path, all_positive_lists: Path) -> None:
    dm = XMRDataModule(
        store=str(tiny_store),
        lists_dir=str(all_positive_lists),
        direction="both",
        batch_size=4,
        eval_batch_size=8,
    )
    dm.setup()
    store = FeatureStore.open(tiny_store)
    img = np.asarray(store.image_emb, np.float32)
    txt = np.asarray(store.text_emb, np.float32)
    for direction, (qt, ct) in {"t2i": (txt, img), "i2t": (img, txt)}.items():
        lists = load_lists(all_positive_lists, direction, "val", store)
        loader = dm.val_dataloader()[dm.directions.index(direction)]
        batch = next(iter(loader))
        n, length = batch["labels"].shape
        assert batch["direction"] == direction
        assert "x" not in batch  # the pair array is built only by scorers that need it
        x = pair_features(batch["q"], batch["c"])
        assert x.shape == (n, length, qt.shape[1] + ct.shape[1])
        for b in range(n):
            qid = int(batch["query"][b])
            assert qid == lists.queries[b]
            for j in range(length):
                cid = int(batch["candidates"][b, j])
                assert bool(batch["mask"][b, j]) == (cid >= 0)
                if cid >= 0:
                    expect = np.concatenate([qt[qid], ct[cid]])
                    np.testing.assert_allclose(x[b, j].numpy(), expect, rtol=1e-6)
                    assert batch["labels"][b, j] == lists.labels[b, j]
                else:  # padding: masked, label 0, zero features
                    assert batch["labels"][b, j] == 0 and torch.all(batch["c"][b, j] == 0)
        torch.testing.assert_close(x[:, 0, : qt.shape[1]], batch["q"])


def test_multi_positive_i2t_lists_hold_all_captions(
    tiny_store: Path, all_positive_lists: Path
) -> None:
    dm = XMRDataModule(store=str(tiny_store), lists_dir=str(all_positive_lists), direction="i2t")
    dm.setup()
    batch = next(iter(dm.test_dataloader()[0]))
    assert torch.all(batch["labels"].sum(1) == 5)  # every caption of the query image is relevant


def test_training_loader_yields_both_directions(tiny_store: Path, all_positive_lists: Path) -> None:
    dm = XMRDataModule(store=str(tiny_store), lists_dir=str(all_positive_lists), batch_size=8)
    dm.setup()
    combined = dm.train_dataloader()
    batch, _, _ = next(iter(combined))
    assert set(batch) == {"t2i", "i2t"}
    assert batch["t2i"]["c"].shape[0] == 8 and batch["i2t"]["direction"] == "i2t"


def test_lists_dir_spells_out_the_mining_options(tiny_store: Path) -> None:
    mining = {"pool": 30, "hard": 10, "seed": 2, "i2t_positives": "all"}
    dm = XMRDataModule(store=str(tiny_store), mining=mining)
    assert dm.lists_dir == tiny_store / "lists" / mining_tag(mining)
    assert "i2tall" in dm.lists_dir.name and "s2" in dm.lists_dir.name


def test_missing_store_without_synth_block_is_a_clear_error(tmp_path: Path) -> None:
    dm = XMRDataModule(store=str(tmp_path / "nowhere"), lists_dir=str(tmp_path / "lists"))
    with pytest.raises(FileNotFoundError, match="nowhere/manifest.json: no feature store there"):
        dm.prepare_data()


@pytest.mark.parametrize(
    "kwargs",
    [{"direction": "up"}, {"batch_size": 0}, {"num_workers": -1}, {"gather_on_device": "yes"}],
)
def test_bad_arguments(tmp_path: Path, kwargs) -> None:
    with pytest.raises(ValueError, match="data"):
        XMRDataModule(store=str(tmp_path), lists_dir=str(tmp_path), **kwargs)


# ---------------------------------------- gathering on the device (GPU data path)


def _batches_equal(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for k, v in a.items():
        assert torch.equal(v, b[k]) if isinstance(v, torch.Tensor) else v == b[k], k


def test_device_gatherers_gather_on_their_tables_device(
    tiny_store: Path, all_positive_lists: Path
) -> None:
    # The 'meta' device stands in for a GPU: a gatherer moved there gathers there (shapes only),
    # its tables are copied once per device and shared by every gatherer, and it is made once.
    dm = XMRDataModule(store=str(tiny_store), lists_dir=str(all_positive_lists))
    dm.setup()
    g = dm.gatherer("t2i", "val", "meta")
    assert g is dm.gatherer("t2i", "val", "meta")  # cached: made once per run
    assert g.query_table is dm.gatherer("i2t", "test", "meta").cand_table  # one text table
    batch = g(torch.arange(3, device="meta"))
    host = dm.gatherer("t2i", "val")(list(range(3)))
    for k, v in host.items():
        if isinstance(v, torch.Tensor):
            assert batch[k].device.type == "meta" and batch[k].shape == v.shape, k
    pairs = dm.gatherer(PAIRS, PAIRS, "meta")(torch.arange(4, device="meta"))
    assert pairs["image"].device.type == "meta" and pairs["text"].shape[0] == 4


def test_index_batches_gather_to_the_collated_batches(
    tiny_store: Path, all_positive_lists: Path
) -> None:
    dm = XMRDataModule(store=str(tiny_store), lists_dir=str(all_positive_lists))
    dm.setup()
    idx = [5, 0, 3, 7]
    for d in dm.directions:
        index = IndexCollate(d, "train")(idx)
        assert is_index_batch(index) and set(index) == {"index", "direction", "split"}
        _batches_equal(dm.gather_batch(index), dm.gatherer(d, "train")(idx))
    both = {d: IndexCollate(d, "val")(idx) for d in dm.directions}
    gathered = dm.on_after_batch_transfer(both, 0)
    for d in dm.directions:
        _batches_equal(gathered[d], dm.gatherer(d, "val")(idx))
    dm.use_pair_training(4)
    _batches_equal(dm.gather_batch(IndexCollate(PAIRS, PAIRS)(idx)), dm._train_pairs()(idx))
    feature_batch = dm.gatherer("t2i", "val")(idx)
    assert dm.gather_batch(feature_batch) is feature_batch  # gathered already: left alone


def test_a_replaced_host_gatherer_is_moved_again(
    tiny_store: Path, all_positive_lists: Path
) -> None:
    # Re-drawn training lists replace the train gatherers every epoch: the device copy follows.
    dm = XMRDataModule(store=str(tiny_store), lists_dir=str(all_positive_lists))
    dm.setup()
    first = dm.gatherer("t2i", "train", "meta")
    host = dm.gatherer("t2i", "train")
    redrawn = PairGatherer("t2i", host.query_table, host.cand_table, host.queries[:3],
                           host.candidates[:3], host.labels[:3])  # fmt: skip
    dm._gatherers[("t2i", "train")] = redrawn
    second = dm.gatherer("t2i", "train", "meta")
    assert second is not first and second.queries.shape == (3,)
    assert second.query_table is first.query_table  # the tables stay where they are


def _spy_transfers(monkeypatch) -> tuple[list[dict], list[tuple[int, ...]]]:
    """Record what Lightning hands the data module after each transfer (before the gather), and
    the shape of every floating 3-D tensor (a (B, L, D) candidate block) sent to a device with
    ``Tensor.to`` (Lightning's transfer: ``tensor.to(device, ...)``)."""
    received: list[dict] = []
    moved: list[tuple[int, ...]] = []
    hook, to = XMRDataModule.on_after_batch_transfer, torch.Tensor.to

    def spy_hook(self, batch, dataloader_idx):
        received.append(batch)
        return hook(self, batch, dataloader_idx)

    def spy_to(self, *args, **kwargs):
        to_device = any(isinstance(a, (torch.device, str)) for a in (*args, kwargs.get("device")))
        if to_device and self.is_floating_point() and self.dim() == 3:
            moved.append(tuple(self.shape))
        return to(self, *args, **kwargs)

    monkeypatch.setattr(XMRDataModule, "on_after_batch_transfer", spy_hook)
    monkeypatch.setattr(torch.Tensor, "to", spy_to)
    return received, moved


@pytest.mark.parametrize("model", ["ranker", "dcca"])
def test_gathering_on_the_device_trains_bit_identically(
    tiny_store: Path, tmp_path: Path, model: str, monkeypatch
) -> None:
    # data.gather_on_device=true on the CPU runs the GPU data path with the CPU as the device:
    # the loaders yield index batches only, Lightning moves those, the data module gathers after
    # the transfer, and no (B, L, D) candidate block is ever moved per step. The results equal
    # the default run's bit for bit (the ranker on lists; DCCA on pairs + calibration). (The
    # full-gallery protocol, once after training, moves its re-ranked top K itself: lists only.)
    extra = [
        f"model={model}",
        f"data.lists_root={tmp_path / 'lists'}",
        "trainer.max_epochs=1",
        "protocol=lists",
    ]
    want = train(make_cfg(tmp_path, tiny_overrides(tiny_store, *extra), run="default"))
    received, moved = _spy_transfers(monkeypatch)
    over = tiny_overrides(tiny_store, *extra, "+data.gather_on_device=true")
    got = train(make_cfg(tmp_path, over, run="device"))
    monkeypatch.undo()
    assert received and not moved
    for batch in received:
        subs = batch.values() if not is_index_batch(batch) else [batch]
        for sub in subs:
            assert is_index_batch(sub)
            assert sub["index"].dtype == torch.int64 and sub["index"].dim() == 1
    for key, value in want.items():
        if key.startswith(("test/", "test_full/", "best_val/", "val/")):
            assert got[key] == value, key
    for d in ("t2i", "i2t"):
        with (
            np.load(tmp_path / "default" / f"predictions_{d}.npz") as a,
            np.load(tmp_path / "device" / f"predictions_{d}.npz") as b,
        ):
            for k in a.files:
                assert np.array_equal(a[k], b[k], equal_nan=True), (d, k)


def test_default_cpu_run_gathers_in_the_loader(
    tiny_store: Path, tmp_path: Path, monkeypatch
) -> None:
    # On the CPU (gather_on_device unset) the collate function gathers, as before: the batches
    # Lightning moves are feature batches.
    received, moved = _spy_transfers(monkeypatch)
    extra = [f"data.lists_root={tmp_path / 'lists'}", "trainer.max_epochs=1", "protocol=lists"]
    train(make_cfg(tmp_path, tiny_overrides(tiny_store, *extra)))
    monkeypatch.undo()
    assert received and moved
    assert not any(is_index_batch(b) or any(map(is_index_batch, b.values())) for b in received)
