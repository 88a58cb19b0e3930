"""LightningDataModule over a feature store and its candidate lists.

Pair features are gathered from the embedding tables at batch time — never a materialised
``(Q, L, D)`` array. A batch (see docs/DESIGN.md) is a dict::

    q          (B, D_q)          float32   query embedding
    c          (B, L, D_c)       float32   candidate embeddings (zeros at padding)
    labels     (B, L)            float32   1 relevant, 0 not (0 at padding)
    mask       (B, L)            bool      True = real candidate, False = padding
    query      (B,)              int64     query ids (text ids for t2i, image ids for i2t)
    candidates (B, L)            int64     candidate ids, -1 at padding
    direction  str               "t2i" or "i2t"
    relevant_total (B,)          int64     only for lists of the first-stage strategies: items
                                           relevant to the query in the set its list was ranked
                                           from (a list without a positive is then a miss)

Lists of one file share one length; lists of different files (or lists with padding) are padded
with id -1 and masked. With ``direction: both`` the training loader yields
``{"t2i": batch, "i2t": batch}`` (cycling the shorter one); evaluation loaders come one per
direction, in the order of :attr:`XMRDataModule.directions`.

Where batches are gathered: on the CPU, the loaders' collate function gathers the features (the
batch above comes out of the loader). When the trainer's device is a GPU (or
``gather_on_device: true``), the embedding tables and the lists go to that device once per run
(:meth:`XMRDataModule.on_after_batch_transfer`; the train lists of a re-drawn epoch once per
epoch), the loaders yield only index batches ``{"index": (B,) int64, "direction", "split"}``
(pinned on CUDA, so their copy to the device is asynchronous) and the gather runs on the device:
no per-step host-to-device copy of features and no host synchronisation.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from lightning.pytorch.utilities import CombinedLoader
from torch import Tensor
from torch.utils.data import DataLoader, Dataset

from xmr.data.mining import (
    MINING_DEFAULTS,
    CandidateLists,
    ListsError,
    check_redrawable,
    lists_filename,
    load_lists,
    mine_lists,
    mined_options,
    read_lists_meta,
    redraw_train_lists,
)
from xmr.data.store import DIRECTIONS, MANIFEST, FeatureStore, StoreError
from xmr.data.synth import check_synthetic_store, synth_config, write_synthetic_store
from xmr.utils.lock import DirLock

log = logging.getLogger(__name__)


def pair_features(q: Tensor, c: Tensor) -> Tensor:
    """Pair features ``x (B, L, D_q + D_c)`` = ``[query ; candidate]`` per item, from ``q (B, D_q)``
    and ``c (B, L, D_c)`` (zeros at padding stay zeros in the candidate half)."""
    return torch.cat([q.unsqueeze(1).expand(-1, c.shape[1], -1), c], dim=-1)


class _ListIndexDataset(Dataset[int]):
    """Yields list indices (in ``order`` when given: a permutation of ``range(n)``); the collate
    function gathers features for a whole batch at once."""

    def __init__(self, n: int, order: Tensor | None = None) -> None:
        self.n = n
        self.order = order

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> int:
        return i if self.order is None else int(self.order[i])


class PairGatherer:
    """Gathers the pair features of a batch of lists from the embedding tables (picklable)."""

    def __init__(
        self,
        direction: str,
        query_table: Tensor,
        cand_table: Tensor,
        queries: Tensor,
        candidates: Tensor,
        labels: Tensor,
        relevant_total: Tensor | None = None,
    ) -> None:
        self.direction = direction
        self.query_table, self.cand_table = query_table, cand_table  # (N_q, D_q), (N_c, D_c)
        self.queries, self.candidates, self.labels = queries, candidates, labels  # (Q,), (Q, L)
        self.relevant_total = relevant_total  # (Q,) or None

    def to(
        self,
        device: torch.device | str,
        query_table: Tensor | None = None,
        cand_table: Tensor | None = None,
    ) -> PairGatherer:
        """This gatherer with its tables and lists on ``device`` (the same tensors when they are
        there already: ``Tensor.to`` does not copy). ``query_table`` / ``cand_table``: tables
        already on ``device`` to use instead of copying this gatherer's (gatherers of one store
        share them)."""
        return PairGatherer(
            self.direction,
            self.query_table.to(device) if query_table is None else query_table,
            self.cand_table.to(device) if cand_table is None else cand_table,
            self.queries.to(device),
            self.candidates.to(device),
            self.labels.to(device),
            None if self.relevant_total is None else self.relevant_total.to(device),
        )

    def __call__(self, idx: list[int] | Tensor) -> dict[str, Any]:
        """The batch of list indices ``idx`` (a list, or an index tensor of any shape on the
        tables' device: ``(E, B)`` gives ``q (E, B, D_q)``, ``c (E, B, L, D_c)``, ...)."""
        ix = torch.as_tensor(idx, dtype=torch.long)
        qid = self.queries[ix]  # (B,)
        cid = self.candidates[ix]  # (B, L)
        mask = cid >= 0  # (B, L)
        q = self.query_table[qid].float()  # (B, D_q)
        c = self.cand_table[cid.clamp_min(0)].float()  # (B, L, D_c)
        c = c * mask.unsqueeze(-1)
        # No (B, L, D_q + D_c) pair array: rankers take q and c (``forward_split``); a scorer
        # that needs the concatenation builds it with :func:`pair_features`.
        batch = {
            "q": q,
            "c": c,
            "labels": self.labels[ix].float(),
            "mask": mask,
            "query": qid,
            "candidates": cid,
            "direction": self.direction,
        }
        if self.relevant_total is not None:
            batch["relevant_total"] = self.relevant_total[ix]  # (B,)
        return batch


class TrainPairGatherer:
    """Gathers (image, caption) pairs of the train split for pairwise baselines (picklable).

    A batch is ``{"image": (B, D_img), "text": (B, D_txt), "image_id": (B,), "text_id": (B,)}``
    (float32, int64): one row per train caption, with its image.
    """

    def __init__(
        self, image_table: Tensor, text_table: Tensor, text_ids: Tensor, text_image: Tensor
    ) -> None:
        self.image_table, self.text_table = image_table, text_table  # (N_img, D), (N_txt, D)
        self.text_ids, self.text_image = text_ids, text_image  # (P,) train captions, (N_txt,)

    def __len__(self) -> int:
        return len(self.text_ids)

    def to(
        self,
        device: torch.device | str,
        image_table: Tensor | None = None,
        text_table: Tensor | None = None,
    ) -> TrainPairGatherer:
        """This gatherer on ``device`` (as :meth:`PairGatherer.to`)."""
        return TrainPairGatherer(
            self.image_table.to(device) if image_table is None else image_table,
            self.text_table.to(device) if text_table is None else text_table,
            self.text_ids.to(device),
            self.text_image.to(device),
        )

    def __call__(self, idx: list[int] | Tensor) -> dict[str, Tensor]:
        tid = self.text_ids[torch.as_tensor(idx, dtype=torch.long)]  # (B,)
        iid = self.text_image[tid]  # (B,)
        return {
            "image": self.image_table[iid].float(),
            "text": self.text_table[tid].float(),
            "image_id": iid,
            "text_id": tid,
        }


#: The ``split`` of an index batch of (image, caption) pairs (pairwise baselines' training).
PAIRS = "pairs"


class IndexCollate:
    """Collate function of a loader whose batches are gathered on the device: list (or pair)
    indices only, ``{"index": (B,) int64, "direction": str, "split": str}`` (picklable).
    :meth:`XMRDataModule.gather_batch` turns one into the feature batch."""

    def __init__(self, direction: str, split: str) -> None:
        self.direction, self.split = direction, split

    def __call__(self, idx: list[int]) -> dict[str, Any]:
        return {
            "index": torch.as_tensor(idx, dtype=torch.long),
            "direction": self.direction,
            "split": self.split,
        }


def is_index_batch(batch: Any) -> bool:
    """Whether ``batch`` is an :class:`IndexCollate` batch (not yet gathered)."""
    return isinstance(batch, Mapping) and "index" in batch and "split" in batch


class XMRDataModule(L.LightningDataModule):
    """Feature store + candidate lists → batches of pair features.

    Args:
        store: path of an ``xmr-features/1`` store.
        lists_dir: directory of candidate lists (``xmr mine`` output); when None it is
            ``<lists_root>/<tag of the mining options>`` (``lists_root`` defaults to
            ``<store>/lists``), so other mining options never reuse stale lists.
        direction: ``t2i`` (caption → images), ``i2t`` (image → captions) or ``both``.
        synth: when set and ``store`` does not exist, ``prepare_data`` generates a synthetic
            store with these options (``preset``, ``seed`` and any ``SynthConfig`` field).
        mining: options of :func:`xmr.data.mining.mine_lists`; used by ``prepare_data`` when
            ``lists_dir`` holds no lists yet.
        batch_size / eval_batch_size: lists per training / evaluation batch.
        num_workers: DataLoader workers (0 = gather in the main process; gathering is cheap).
        max_lists: cap per split (for quick runs), None = all.
        redraw_train_lists: draw the training lists anew every epoch (mining strategy ``pool``
            only): epoch 0 trains on the mined lists, epoch e >= 1 on
            :func:`xmr.data.mining.redraw_train_lists` for e (the same queries, new random
            pools; a function of the lists' mining options and e alone, so resuming is exact).
            The trainer must rebuild the train loader every epoch
            (``reload_dataloaders_every_n_epochs=1``; ``xmr train`` sets it when
            :attr:`redraws_train_lists`). Validation and test lists never change.
        gather_on_device: where the batches of a trainer's loaders are gathered. None (auto):
            on the trainer's device when it is not the CPU (tables and lists moved there once,
            loaders yield index batches, :meth:`on_after_batch_transfer` gathers), in the
            loaders' collate function on the CPU. True: on the trainer's device always (on the
            CPU the batches are the same as the collate function's). False: in the collate
            function always. Loaders iterated without a trainer always gather in the collate
            function.
    """

    def __init__(
        self,
        store: str,
        lists_dir: str | None = None,
        lists_root: str | None = None,
        direction: str = "both",
        synth: Mapping[str, Any] | None = None,
        mining: Mapping[str, Any] | None = None,
        batch_size: int = 32,
        eval_batch_size: int = 256,
        num_workers: int = 0,
        max_lists: int | None = None,
        name: str | None = None,
        redraw_train_lists: bool = False,
        gather_on_device: bool | None = None,
    ) -> None:
        super().__init__()
        if direction not in (*DIRECTIONS, "both"):
            raise ValueError(f"data.direction={direction!r}: one of t2i, i2t, both")
        if batch_size < 1 or eval_batch_size < 1 or num_workers < 0:
            raise ValueError(
                f"data: batch_size={batch_size} and eval_batch_size={eval_batch_size} must be "
                f">= 1, num_workers={num_workers} >= 0"
            )
        if not isinstance(redraw_train_lists, bool):
            raise ValueError(f"data.redraw_train_lists={redraw_train_lists!r}: true or false")
        if gather_on_device is not None and not isinstance(gather_on_device, bool):
            raise ValueError(f"data.gather_on_device={gather_on_device!r}: true, false or null")
        self.gather_on_device = gather_on_device
        self.store_path = Path(store)
        self.mining = dict(mining) if mining else {}
        if lists_dir is None:
            root = Path(lists_root) if lists_root else self.store_path / "lists"
            lists_dir = str(root / mining_tag(self.mining))
        self.lists_dir = Path(lists_dir)
        self.directions: tuple[str, ...] = DIRECTIONS if direction == "both" else (direction,)
        self.synth = dict(synth) if synth else None
        self.batch_size, self.eval_batch_size = int(batch_size), int(eval_batch_size)
        self.num_workers = int(num_workers)
        self.max_lists = max_lists
        self.name = name or self.store_path.name
        self.store: FeatureStore | None = None
        self._tables: dict[str, Tensor] = {}
        self._gatherers: dict[tuple[str, str], PairGatherer] = {}
        self.pair_batch_size: int | None = None  # set by use_pair_training
        self.redraw_train_lists = redraw_train_lists
        # Re-drawn training lists: the mining options of the lists (from lists.json), the mined
        # train gatherers (epoch 0) and the epoch whose lists the train gatherers hold (None:
        # the mined lists, not yet announced).
        self._redraw_options: dict[str, Any] = {}
        self._mined_train: dict[str, PairGatherer] = {}
        self._train_epoch: int | None = None
        # Shuffling generators of the train loaders built last, in sorted direction order, and
        # states to put into those built next (restore_train_order).
        self._train_generators: list[torch.Generator] = []
        self._pending_train_order: list[Tensor] | None = None
        # Gathering on a device: the tables there (one copy per device) and, per (direction,
        # split, device), the host gatherer a device gatherer was made from and that gatherer
        # (rebuilt when the host one is replaced: re-drawn training lists).
        self._device_tables: dict[torch.device, dict[str, Tensor]] = {}
        self._device_gatherers: dict[tuple[str, str, torch.device], tuple[Any, Any]] = {}

    # -- preparation --------------------------------------------------------------------------
    def prepare_data(self) -> None:
        """Generate the synthetic store and mine lists when they are missing (rank 0 only)."""
        prepare_store_and_lists(self.store_path, self.lists_dir, self.synth, self.mining)

    def setup(self, stage: str | None = None) -> None:
        """Open the store and load its lists (once); for ``stage == "fit"`` (Lightning's
        ``trainer.fit``) also :meth:`check_validation`."""
        if self.store is None:
            self._load()
        if stage == "fit":
            self.check_validation()

    def check_validation(self) -> None:
        """Refuse to train without validation lists (:class:`StoreError` / :class:`ListsError`
        naming the store or lists file): a run keeps the checkpoint that is best on them
        (``monitor``) and early stopping watches them; without them it would silently keep its
        last epoch. A store may lack a ``val`` split for other uses (evaluating a fixed scorer)."""
        if self.store is None:
            raise RuntimeError("call setup() first")
        if self.store.split_image_ids("val").size == 0:
            raise StoreError(
                f"{self.store.root / MANIFEST}: splits['val'] = 0, but training needs validation "
                "images: the checkpoint kept (best.ckpt) and early stopping are chosen by the "
                "monitored validation key; give the store a val split, or evaluate without "
                "training (train=false, or a model without parameters such as model=cosine)"
            )
        for d in self.directions:
            if self.num_lists(d, "val") == 0:
                raise ListsError(
                    f"{self.lists_dir / lists_filename(d, 'val')}: no {d} validation lists, but "
                    "training needs them (the checkpoint kept and early stopping are chosen on "
                    "the validation lists); check the store's val images and their captions"
                )

    def _load(self) -> None:
        self.store = FeatureStore.open(self.store_path)
        # Embedding tables held once, in the store's dtype (fp16 stays fp16: half the memory).
        self._tables = {
            "image": torch.from_numpy(np.array(self.store.image_emb)),
            "text": torch.from_numpy(np.array(self.store.text_emb)),
        }
        if self.redraw_train_lists:
            # Re-drawn with the options the lists were mined with, whatever named the directory.
            self._redraw_options = mined_options(read_lists_meta(self.lists_dir))
            check_redrawable(self._redraw_options["strategy"])
        for direction in self.directions:
            for split in ("train", "val", "test"):
                lists = load_lists(self.lists_dir, direction, split, store=self.store)
                self._gatherers[(direction, split)] = self._make_gatherer(lists)
            self._mined_train[direction] = self._gatherers[(direction, "train")]

    def _make_gatherer(self, lists: CandidateLists) -> PairGatherer:
        """The gatherer of one lists file (its first ``max_lists`` lists)."""
        n = len(lists.queries)
        if self.max_lists is not None:
            n = min(n, int(self.max_lists))
        qt, ct = ("text", "image") if lists.direction == "t2i" else ("image", "text")
        return PairGatherer(
            lists.direction,
            self._tables[qt],
            self._tables[ct],
            torch.from_numpy(np.asarray(lists.queries[:n], dtype=np.int64)),
            torch.from_numpy(np.asarray(lists.candidates[:n], dtype=np.int64)),
            torch.from_numpy(np.asarray(lists.labels[:n], dtype=np.uint8)),
            None
            if lists.relevant_total is None
            else torch.from_numpy(np.asarray(lists.relevant_total[:n], dtype=np.int64)),
        )

    # -- re-drawn training lists --------------------------------------------------------------
    @property
    def redraws_train_lists(self) -> bool:
        """Whether :meth:`train_dataloader` draws the training lists anew every epoch (so the
        trainer must rebuild it every epoch): ``redraw_train_lists`` and list batches (pair
        batches use no lists)."""
        return self.redraw_train_lists and self.pair_batch_size is None

    @property
    def train_lists_epoch(self) -> int:
        """The epoch whose training lists the train gatherers hold (0: the mined lists)."""
        return self._train_epoch or 0

    def draw_train_lists(self, epoch: int) -> None:
        """Make the train gatherers hold the training lists of ``epoch``: the mined lists for
        epoch 0, :func:`xmr.data.mining.redraw_train_lists` for a later one (after
        :meth:`setup`; needs ``redraw_train_lists``). Logs the number of lists, once per epoch."""
        if self.store is None:
            raise RuntimeError("call setup() first")
        if not self.redraw_train_lists:
            raise RuntimeError("draw_train_lists needs redraw_train_lists=True")
        if epoch == self._train_epoch:
            return
        for d in self.directions:
            self._gatherers[(d, "train")] = (
                self._mined_train[d]
                if epoch == 0
                else self._make_gatherer(
                    redraw_train_lists(self.store, d, self._redraw_options, epoch)
                )
            )
        self._train_epoch = epoch
        counts = ", ".join(f"{d} {self.num_lists(d, 'train')}" for d in self.directions)
        what = "the mined training lists" if epoch == 0 else "training lists drawn anew"
        log.info("epoch %d: %s (%s lists)", epoch, what, counts)

    def _fit_epoch(self) -> int:
        """The epoch the trainer's fit is about to train (0 without a trainer). Not
        ``trainer.current_epoch``: when a fit resumed from an end-of-epoch checkpoint builds its
        first train loader, that still counts the checkpoint's epoch as unfinished (it catches up
        after the loader is built); the epochs processed do not lag."""
        if self.trainer is None:
            return 0
        return int(self.trainer.fit_loop.epoch_progress.current.processed)

    # -- shapes --------------------------------------------------------------------------------
    def dims(self, direction: str) -> tuple[int, int]:
        """(query_dim, candidate_dim) for a direction."""
        store = self.store or FeatureStore.open(self.store_path, check_norms=False)
        if direction == "t2i":
            return store.text_dim, store.image_dim
        return store.image_dim, store.text_dim

    @property
    def joint_space(self) -> bool:
        store = self.store or FeatureStore.open(self.store_path, check_norms=False)
        return bool(store.joint_space)

    def num_lists(self, direction: str, split: str) -> int:
        return len(self._gatherers[(direction, split)].queries)

    def train_batches_per_epoch(self) -> int:
        """Training batches in one epoch of :meth:`train_dataloader` (one process, after
        :meth:`setup`): pair batches (the last short one dropped), else the longest direction's
        list batches (the directions are cycled to the longest)."""
        if self.pair_batch_size is not None:
            n = len(self._train_pairs())
            return max(1, n // self.pair_batch_size) if n > self.pair_batch_size else 1
        return max(-(-self.num_lists(d, "train") // self.batch_size) for d in self.directions)

    # -- loaders -------------------------------------------------------------------------------
    def gatherer(
        self, direction: str, split: str, device: torch.device | str | None = None
    ) -> PairGatherer:
        """The batch gatherer of ``(direction, split)`` (after :meth:`setup`); with ``device``,
        its copy with tables and lists on that device (:meth:`on_device`)."""
        if device is not None:
            return self.on_device(direction, split, device)
        return self._gatherers[(direction, split)]

    def _device_gathering(self) -> torch.device | None:
        """The device this module's loaders leave the gathering to (they then yield index
        batches), or None: their collate function gathers. See ``gather_on_device``."""
        trainer = self.trainer
        if trainer is None or self.gather_on_device is False:
            return None
        device = trainer.strategy.root_device
        if self.gather_on_device is None and device.type == "cpu":
            return None
        return device

    def _collate(self, direction: str, split: str, gather: Any) -> dict[str, Any]:
        """DataLoader options of a loader of ``(direction, split)`` whose collate function is
        ``gather`` on the host: that, or index batches (pinned for a CUDA device)."""
        device = self._device_gathering()
        if device is None:
            return {"collate_fn": gather}
        return {"collate_fn": IndexCollate(direction, split), "pin_memory": device.type == "cuda"}

    def _loader(
        self, direction: str, split: str, shuffle: bool, epoch: int | None = None
    ) -> DataLoader:
        gather = self._gatherers[(direction, split)]
        n = len(gather.queries)
        dataset = _ListIndexDataset(n)
        # Shuffled loaders draw from their own generator, seeded from the run's seed
        # (torch.initial_seed() after seed_everything) and the direction: the data order is a
        # function of (seed, direction, epoch) alone, whatever else consumes random numbers.
        generator = (
            torch.Generator().manual_seed(
                train_order_seed(torch.initial_seed(), direction, epoch or 0)
            )
            if shuffle
            else None
        )
        if shuffle and epoch is not None:
            # A loader built for one epoch (re-drawn lists): its order is drawn now and held by
            # the dataset, so every iterator Lightning makes of it (two in an uninterrupted
            # epoch, one in a resumed one) walks the same order. The generator then only takes
            # the iterators' base-seed draws, which would otherwise come from the global RNG.
            dataset = _ListIndexDataset(n, torch.randperm(n, generator=generator))
            shuffle = False
        return DataLoader(
            dataset,
            batch_size=self.batch_size if split == "train" else self.eval_batch_size,
            shuffle=shuffle,
            generator=generator,
            num_workers=self.num_workers,
            persistent_workers=self.num_workers > 0,
            **self._collate(direction, split, gather),
        )

    # -- pairs (pairwise baselines) -----------------------------------------------------------
    def use_pair_training(self, batch_size: int) -> None:
        """Make :meth:`train_dataloader` yield (image, caption) pair batches of the train split
        (every train caption once per epoch, shuffled; the last short batch dropped) instead of
        list batches. Validation and test still use the candidate lists."""
        if int(batch_size) < 2:
            raise ValueError(f"model.pair_batch_size={batch_size}: must be >= 2")
        self.pair_batch_size = int(batch_size)

    def _train_pairs(self) -> TrainPairGatherer:
        if self.store is None:
            raise RuntimeError("call setup() first")
        return TrainPairGatherer(
            self._tables["image"],
            self._tables["text"],
            torch.from_numpy(np.asarray(self.store.split_text_ids("train"), dtype=np.int64)),
            torch.from_numpy(np.asarray(self.store.text_image, dtype=np.int64)),
        )

    def iter_train_pairs(
        self, chunk: int = 4096, device: torch.device | str | None = None
    ) -> Iterator[tuple[Tensor, Tensor]]:
        """All train pairs in order, as ``(image (C, D_img), text (C, D_txt))`` chunks, gathered
        on ``device`` (None: the CPU) from the tables there."""
        gather = self._train_pairs() if device is None else self.on_device(PAIRS, PAIRS, device)
        index = torch.arange(len(gather), device=gather.text_ids.device)
        for s in range(0, len(gather), chunk):
            b = gather(index[s : s + chunk])
            yield b["image"], b["text"]

    # -- gathering on the device --------------------------------------------------------------
    def on_device(self, direction: str, split: str, device: torch.device | str) -> Any:
        """The gatherer of ``(direction, split)`` (``(PAIRS, PAIRS)``: the train pairs'
        :class:`TrainPairGatherer`) with its tables and lists on ``device``, made once per run
        (per epoch for re-drawn training lists); the tables are copied to a device once and
        shared by its gatherers. On the CPU it shares the host gatherer's tensors."""
        if self.store is None:
            raise RuntimeError("call setup() first")
        device = torch.device(device)
        if device not in self._device_tables:
            self._device_tables[device] = {k: t.to(device) for k, t in self._tables.items()}
        tables = self._device_tables[device]
        key = (direction, split, device)
        if split == PAIRS:
            cached = self._device_gatherers.get(key)
            if cached is None:
                gather = self._train_pairs().to(device, tables["image"], tables["text"])
                self._device_gatherers[key] = cached = (None, gather)
            return cached[1]
        host = self._gatherers[(direction, split)]
        cached = self._device_gatherers.get(key)
        if cached is None or cached[0] is not host:
            qt, ct = ("text", "image") if direction == "t2i" else ("image", "text")
            cached = (host, host.to(device, tables[qt], tables[ct]))
            self._device_gatherers[key] = cached
        return cached[1]

    def gather_batch(self, batch: Any) -> Any:
        """The feature batch of an index batch (:class:`IndexCollate`), gathered on the device
        its ``index`` is on; a dict of index batches (``direction: both``) gathers each. Any
        other batch is returned as is."""
        if is_index_batch(batch):
            gather = self.on_device(batch["direction"], batch["split"], batch["index"].device)
            return gather(batch["index"])
        if isinstance(batch, Mapping) and batch and all(map(is_index_batch, batch.values())):
            return {k: self.gather_batch(v) for k, v in batch.items()}
        return batch

    def on_after_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        """Lightning's hook after a batch reached the device: gather index batches there."""
        return self.gather_batch(batch)

    def train_dataloader(self) -> CombinedLoader | DataLoader:
        if self.pair_batch_size is not None:
            self._train_generators, self._pending_train_order = [], None
            gather = self._train_pairs()
            return DataLoader(
                _ListIndexDataset(len(gather)),
                batch_size=self.pair_batch_size,
                shuffle=True,
                drop_last=len(gather) > self.pair_batch_size,
                num_workers=self.num_workers,
                persistent_workers=self.num_workers > 0,
                **self._collate(PAIRS, PAIRS, gather),
            )
        if self.redraws_train_lists:
            # Rebuilt every epoch: the lists and the order of epoch e are functions of the
            # mining options, (seed, direction) and e alone, so a resumed fit needs no saved
            # order.
            epoch = self._fit_epoch()
            self.draw_train_lists(epoch)
            self._pending_train_order = None
            loaders = {d: self._loader(d, "train", True, epoch=epoch) for d in self.directions}
            self._train_generators = [loaders[d].generator for d in sorted(loaders)]
            return CombinedLoader(loaders, mode="max_size_cycle")
        loaders = {d: self._loader(d, "train", shuffle=True) for d in self.directions}
        self._train_generators = [loaders[d].generator for d in sorted(loaders)]
        states, self._pending_train_order = self._pending_train_order, None
        if states is not None:
            if len(states) == len(self._train_generators):
                for g, state in zip(self._train_generators, states, strict=True):
                    g.set_state(state)
            else:
                log.warning(
                    "resume: %d saved train-order states for %d shuffled loaders; the data "
                    "order will differ from an uninterrupted run",
                    len(states),
                    len(self._train_generators),
                )
        return CombinedLoader(loaders, mode="max_size_cycle")

    # -- train order (resuming) ---------------------------------------------------------------
    def train_order_state(self) -> list[Tensor]:
        """The states of the shuffling generators of the train loaders built last (one per
        direction, in sorted direction order; none for pair batches, which shuffle from the
        global RNG). Loaders rebuilt every epoch (re-drawn lists) ignore restored states: their
        order is a function of (seed, direction, epoch)."""
        return [g.get_state() for g in self._train_generators]

    def restore_train_order(self, states: Sequence[Tensor]) -> None:
        """Put ``states`` (from :meth:`train_order_state`) into the shuffling generators of the
        train loaders that :meth:`train_dataloader` builds next, once: a resumed run then draws
        the data order an uninterrupted run would. Lightning builds the loaders of a resumed fit
        after restoring callback states and creates each epoch's iterator (which draws its base
        seed from the generator) right away, so the states must be in place at build time."""
        self._pending_train_order = list(states)

    def val_dataloader(self) -> list[DataLoader]:
        return [self._loader(d, "val", shuffle=False) for d in self.directions]

    def test_dataloader(self) -> list[DataLoader]:
        return [self._loader(d, "test", shuffle=False) for d in self.directions]


def train_order_seed(seed: int, direction: str, epoch: int = 0) -> int:
    """Seed of the shuffling generator of ``direction``'s training lists in a run seeded ``seed``
    (also used by :mod:`xmr.models.ensemble`, whose members replay the same order). ``epoch``:
    the epoch of a loader rebuilt every epoch (re-drawn lists); epoch 0 is the seed of a loader
    built once."""
    base = (int(seed) * 1_000_003 + 7919 * (1 + DIRECTIONS.index(direction))) % (2**63)
    if epoch == 0:
        return base
    return int(np.random.SeedSequence([base, int(epoch)]).generate_state(1, np.uint64)[0] >> 1)


def mining_tag(mining: Mapping[str, Any]) -> str:
    """A directory name that spells out the mining options that shape the lists, e.g.
    ``hard-p200-h50-t2i1-i2t1-s0``, ``first_stage-L51-t2i1-i2t1-s0`` or
    ``pool-Ptest_gallery-L51-t2i1-i2t1-s0`` (options not given take
    :data:`xmr.data.mining.MINING_DEFAULTS`)."""
    m = {**MINING_DEFAULTS, **mining}
    if m["strategy"] == "first_stage":
        shape = f"L{m['list_size']}"
    elif m["strategy"] == "pool":
        shape = f"P{m['pool_size']}-L{m['list_size']}"
    else:
        shape = f"p{m['pool']}-h{m['hard']}"
    return (
        f"{m['strategy']}-{shape}"
        f"-t2i{m['t2i_captions_per_image']}-i2t{m['i2t_positives']}-s{m['seed']}"
    )


def prepare_store_and_lists(
    store: Path,
    lists_dir: Path,
    synth: Mapping[str, Any] | None,
    mining: Mapping[str, Any],
) -> None:
    """Make sure ``store`` and ``lists_dir`` exist: generate (synthetic only) and mine if not.

    Safe to run in several processes at once (two ``xmr train`` on a fresh data directory): the
    one that finds the store (the lists) missing generates (mines) it under the directory's lock
    (:class:`xmr.utils.lock.DirLock`); the others wait for that lock, then find the work done and
    use it. A store or lists directory that exists is only read: no lock, so read-only shared
    data stays usable."""
    if not (store / "manifest.json").exists():
        if not synth:
            raise FileNotFoundError(
                f"{store}/manifest.json: no feature store there, and this data config has no "
                "`synth` block to generate one. Point data.store at an xmr-features/1 store "
                "(see `xmr extract`) or use data=synthetic_demo."
            )
        cfg = synth_config(synth)
        with DirLock(store, what="generating a SYNTHETIC feature store"):
            if (store / "manifest.json").exists():
                log.info("%s: generated meanwhile by another process; using it", store)
            else:
                log.info("generating SYNTHETIC feature store at %s (%s)", store, cfg)
                write_synthetic_store(store, cfg)
    if synth:
        check_synthetic_store(store, synth_config(synth))
    if not (lists_dir / "lists.json").exists():
        with DirLock(lists_dir, what="mining candidate lists"):
            if (lists_dir / "lists.json").exists():
                log.info("%s: mined meanwhile by another process; using it", lists_dir)
            else:
                log.info("mining candidate lists into %s (%s)", lists_dir, dict(mining))
                mine_lists(FeatureStore.open(store), lists_dir, **dict(mining))
