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

from xmr.data.mining import MINING_DEFAULTS, load_lists, mine_lists
from xmr.data.store import DIRECTIONS, FeatureStore
from xmr.data.synth import check_synthetic_store, synth_config, write_synthetic_store

log = logging.getLogger(__name__)


def pair_features(q: Tensor, c: Tensor) -> Tensor:
    """Pair features ``x (B, L, D_q + D_c)`` = ``[query ; candidate]`` per item, from ``q (B, D_q)``
    and ``c (B, L, D_c)`` (zeros at padding stay zeros in the candidate half)."""
    return torch.cat([q.unsqueeze(1).expand(-1, c.shape[1], -1), c], dim=-1)


class _ListIndexDataset(Dataset[int]):
    """Yields list indices; the collate function gathers features for a whole batch at once."""

    def __init__(self, n: int) -> None:
        self.n = n

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> int:
        return i


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

    def __call__(self, idx: list[int]) -> dict[str, Any]:
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

    def __call__(self, idx: list[int]) -> dict[str, Tensor]:
        tid = self.text_ids[torch.as_tensor(idx, dtype=torch.long)]  # (B,)
        iid = self.text_image[tid]  # (B,)
        return {
            "image": self.image_table[iid].float(),
            "text": self.text_table[tid].float(),
            "image_id": iid,
            "text_id": tid,
        }


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
    ) -> None:
        super().__init__()
        if direction not in (*DIRECTIONS, "both"):
            raise ValueError(f"data.direction={direction!r}: one of t2i, i2t, both")
        if batch_size < 1 or eval_batch_size < 1 or num_workers < 0:
            raise ValueError(
                f"data: batch_size={batch_size} and eval_batch_size={eval_batch_size} must be "
                f">= 1, num_workers={num_workers} >= 0"
            )
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
        # Shuffling generators of the train loaders built last, in sorted direction order, and
        # states to put into those built next (restore_train_order).
        self._train_generators: list[torch.Generator] = []
        self._pending_train_order: list[Tensor] | None = None

    # -- preparation --------------------------------------------------------------------------
    def prepare_data(self) -> None:
        """Generate the synthetic store and mine lists when they are missing (rank 0 only)."""
        prepare_store_and_lists(self.store_path, self.lists_dir, self.synth, self.mining)

    def setup(self, stage: str | None = None) -> None:
        if self.store is not None:
            return
        self.store = FeatureStore.open(self.store_path)
        # Embedding tables held once, in the store's dtype (fp16 stays fp16: half the memory).
        self._tables = {
            "image": torch.from_numpy(np.array(self.store.image_emb)),
            "text": torch.from_numpy(np.array(self.store.text_emb)),
        }
        for direction in self.directions:
            for split in ("train", "val", "test"):
                lists = load_lists(self.lists_dir, direction, split, store=self.store)
                n = len(lists.queries)
                if self.max_lists is not None:
                    n = min(n, int(self.max_lists))
                qt, ct = ("text", "image") if direction == "t2i" else ("image", "text")
                self._gatherers[(direction, split)] = PairGatherer(
                    direction,
                    self._tables[qt],
                    self._tables[ct],
                    torch.from_numpy(np.asarray(lists.queries[:n], dtype=np.int64)),
                    torch.from_numpy(np.asarray(lists.candidates[:n], dtype=np.int64)),
                    torch.from_numpy(np.asarray(lists.labels[:n], dtype=np.uint8)),
                    None
                    if lists.relevant_total is None
                    else torch.from_numpy(np.asarray(lists.relevant_total[:n], dtype=np.int64)),
                )

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
    def gatherer(self, direction: str, split: str) -> PairGatherer:
        """The batch gatherer of ``(direction, split)`` (after :meth:`setup`)."""
        return self._gatherers[(direction, split)]

    def _loader(self, direction: str, split: str, shuffle: bool) -> DataLoader:
        gather = self._gatherers[(direction, split)]
        # Shuffled loaders draw from their own generator, seeded from the run's seed
        # (torch.initial_seed() after seed_everything) and the direction: the data order is a
        # function of (seed, direction, epoch) alone, whatever else consumes random numbers.
        generator = (
            torch.Generator().manual_seed(train_order_seed(torch.initial_seed(), direction))
            if shuffle
            else None
        )
        return DataLoader(
            _ListIndexDataset(len(gather.queries)),
            batch_size=self.batch_size if split == "train" else self.eval_batch_size,
            shuffle=shuffle,
            generator=generator,
            collate_fn=gather,
            num_workers=self.num_workers,
            persistent_workers=self.num_workers > 0,
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

    def iter_train_pairs(self, chunk: int = 4096) -> Iterator[tuple[Tensor, Tensor]]:
        """All train pairs in order, as ``(image (C, D_img), text (C, D_txt))`` chunks."""
        gather = self._train_pairs()
        for s in range(0, len(gather), chunk):
            b = gather(list(range(s, min(s + chunk, len(gather)))))
            yield b["image"], b["text"]

    def train_dataloader(self) -> CombinedLoader | DataLoader:
        if self.pair_batch_size is not None:
            self._train_generators, self._pending_train_order = [], None
            gather = self._train_pairs()
            return DataLoader(
                _ListIndexDataset(len(gather)),
                batch_size=self.pair_batch_size,
                shuffle=True,
                drop_last=len(gather) > self.pair_batch_size,
                collate_fn=gather,
                num_workers=self.num_workers,
                persistent_workers=self.num_workers > 0,
            )
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
        global RNG)."""
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


def train_order_seed(seed: int, direction: str) -> int:
    """Seed of the shuffling generator of ``direction``'s training lists in a run seeded ``seed``
    (also used by :mod:`xmr.models.ensemble`, whose members replay the same order)."""
    return (int(seed) * 1_000_003 + 7919 * (1 + DIRECTIONS.index(direction))) % (2**63)


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
    """Make sure ``store`` and ``lists_dir`` exist: generate (synthetic only) and mine if not."""
    if not (store / "manifest.json").exists():
        if not synth:
            raise FileNotFoundError(
                f"{store}/manifest.json: no feature store there, and this data config has no "
                "`synth` block to generate one. Point data.store at an xmr-features/1 store "
                "(see `xmr extract`) or use data=synthetic_demo."
            )
        cfg = synth_config(synth)
        log.info("generating SYNTHETIC feature store at %s (%s)", store, cfg)
        write_synthetic_store(store, cfg)
    elif synth:
        check_synthetic_store(store, synth_config(synth))
    if not (lists_dir / "lists.json").exists():
        log.info("mining candidate lists into %s (%s)", lists_dir, dict(mining))
        mine_lists(FeatureStore.open(store), lists_dir, **dict(mining))
