"""The datamodule gathers pair features from the store at batch time, pads and masks lists."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from xmr.data.datamodule import XMRDataModule, mining_tag, pair_features
from xmr.data.mining import load_lists, mine_lists
from xmr.data.store import FeatureStore


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


@pytest.mark.parametrize("kwargs", [{"direction": "up"}, {"batch_size": 0}, {"num_workers": -1}])
def test_bad_arguments(tmp_path: Path, kwargs) -> None:
    with pytest.raises(ValueError, match="data"):
        XMRDataModule(store=str(tmp_path), lists_dir=str(tmp_path), **kwargs)
