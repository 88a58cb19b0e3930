"""CUDA-only checks of the GPU paths: mixed precision end to end, and the data path that gathers
batches on the device. Skipped without a CUDA device; on a GPU machine run them with
``pytest tests/test_gpu.py tests/test_losses.py -k cuda`` (benchmarks/gpu_check.sh).

Every test name holds ``cuda`` so that ``-k cuda`` selects them all.
"""

from __future__ import annotations

import math
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
from _compose import make_cfg, tiny_overrides
from _run_outputs import scores_by_pair, train_losses

from xmr.data.datamodule import XMRDataModule, is_index_batch
from xmr.data.store import FeatureStore
from xmr.models.module import RankingModule
from xmr.models.ranker import ContextAwareRanker
from xmr.train import train

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")


def _bf16() -> bool:
    return torch.cuda.is_available() and torch.cuda.is_bf16_supported(including_emulation=False)


PRECISIONS = [
    pytest.param("bf16-mixed", marks=pytest.mark.skipif(not _bf16(), reason="no native bfloat16")),
    "16-mixed",
]


@pytest.mark.parametrize("precision", PRECISIONS)
def test_cuda_mixed_precision_train_end_to_end(
    tiny_store: Path, tmp_path: Path, precision: str, monkeypatch
) -> None:
    # `xmr train trainer.accelerator=gpu trainer.precision=<p>` on the tiny SYNTHETIC store
    # (NeuralNDCG: Sinkhorn in float32) against the same run in 32-true on the GPU: training
    # steps under autocast, evaluation and scores in float32, results finite and close.
    # Dropout off and one epoch: SDPA may pick other kernels (other dropout masks) for 16-bit
    # inputs, and other masks alone move these numbers far more than precision does (on the
    # CPU: the training loss by 8.5 %, test scores correlated 0.57-0.62 after 2 epochs).
    # Tolerances: training and test losses within 2e-2 relative, test scores of the same
    # (query, candidate) correlated >= 0.95. The same comparison on the CPU (bf16-mixed, seeds
    # 0-3) measured <= 3.7e-3, <= 5.9e-3 and >= 0.982.
    seen: list[tuple[bool, bool, torch.dtype, str]] = []
    score = RankingModule.score

    def spy(self, batch):
        out = score(self, batch)
        seen.append((self.training, torch.is_autocast_enabled("cuda"), out.dtype, out.device.type))
        return out

    extra = [
        f"data.lists_root={tmp_path / 'lists'}",
        "loss=neural_ndcg",
        "protocol=lists",
        "model.net.dropout=0.0",
        "trainer.accelerator=gpu",
        "trainer.max_epochs=1",
    ]
    want = train(make_cfg(tmp_path, tiny_overrides(tiny_store, *extra), run="fp32"))
    monkeypatch.setattr(RankingModule, "score", spy)
    over = tiny_overrides(tiny_store, *extra, f"trainer.precision={precision}")
    got = train(make_cfg(tmp_path, over, run="amp"))
    monkeypatch.undo()
    assert {s[:2] for s in seen} == {(True, True), (False, False)}
    assert {s[2:] for s in seen} == {(torch.float32, "cuda")}
    tests = {k: v for k, v in got.items() if k.startswith("test/")}
    assert tests and all(math.isfinite(v) for v in tests.values())
    for d in ("t2i", "i2t"):
        key = f"test/{d}/loss"
        assert abs(got[key] - want[key]) <= 2e-2 * abs(want[key]), (key, got[key], want[key])
    pairs = zip(train_losses(tmp_path / "fp32"), train_losses(tmp_path / "amp"), strict=True)
    for a, b in pairs:
        assert abs(a - b) <= 2e-2 * abs(a), (a, b)
    for d in ("t2i", "i2t"):
        s32 = scores_by_pair(tmp_path / "fp32" / f"predictions_{d}.npz")
        s16 = scores_by_pair(tmp_path / "amp" / f"predictions_{d}.npz")
        assert np.corrcoef(s32, s16)[0, 1] >= 0.95


@pytest.mark.parametrize("precision", PRECISIONS)
def test_cuda_mixed_precision_with_dropout_finishes_finite(
    tiny_store: Path, tmp_path: Path, precision: str
) -> None:
    # The configured ranker (dropout 0.1: SDPA's dropout under autocast) and the full-gallery
    # protocol: the run finishes with finite results.
    over = tiny_overrides(
        tiny_store,
        f"data.lists_root={tmp_path / 'lists'}",
        "trainer.accelerator=gpu",
        f"trainer.precision={precision}",
    )
    got = train(make_cfg(tmp_path, over))
    values = {k: v for k, v in got.items() if k.startswith(("test/", "test_full/"))}
    assert values and all(math.isfinite(v) for v in values.values())
    assert all(math.isfinite(v) for v in train_losses(tmp_path / "run"))


def _run_counting_host_to_device(tiny_store: Path, tmp: Path, epochs: int, monkeypatch):
    """A GPU run of ``epochs`` epochs; returns every CPU→CUDA ``Tensor.to`` as (dtype, shape,
    pinned, non_blocking: Lightning's batch transfer) and the batches the data module received
    after Lightning's transfer."""
    moved: list[tuple[torch.dtype, tuple[int, ...], bool, bool]] = []
    received: list = []
    to, hook = torch.Tensor.to, XMRDataModule.on_after_batch_transfer

    def spy_to(self, *args, **kwargs):
        target = next(
            (a for a in (*args, kwargs.get("device")) if isinstance(a, torch.device)), None
        )
        if target is None:
            target = next((torch.device(a) for a in args if isinstance(a, str)), None)
        if self.device.type == "cpu" and target is not None and target.type == "cuda":
            batch = bool(kwargs.get("non_blocking", False))
            moved.append((self.dtype, tuple(self.shape), self.is_pinned(), batch))
        return to(self, *args, **kwargs)

    def spy_hook(self, batch, dataloader_idx):
        received.append(batch)
        return hook(self, batch, dataloader_idx)

    monkeypatch.setattr(torch.Tensor, "to", spy_to)
    monkeypatch.setattr(XMRDataModule, "on_after_batch_transfer", spy_hook)
    over = tiny_overrides(
        tiny_store,
        f"data.lists_root={tmp.parent / 'lists'}",
        "trainer.accelerator=gpu",
        f"trainer.max_epochs={epochs}",
        "protocol=lists",
    )
    train(make_cfg(tmp, over, run=f"e{epochs}"))
    monkeypatch.undo()
    return moved, received


def test_cuda_data_path_copies_only_indices_per_step(
    tiny_store: Path, tmp_path: Path, monkeypatch
) -> None:
    # On the GPU the loaders yield index batches (pinned), Lightning copies those, and the data
    # module gathers on the device from tables moved there once: a 1-epoch and a 3-epoch run
    # copy the same floating arrays host→device (the two embedding tables and the model's
    # weights, a fixed number of times per run), never a candidate block (B, L, D), and per step
    # only the index vectors.
    one, received1 = _run_counting_host_to_device(tiny_store, tmp_path / "a", 1, monkeypatch)
    three, received3 = _run_counting_host_to_device(tiny_store, tmp_path / "b", 3, monkeypatch)
    assert len(received3) > len(received1) > 0
    for batch in received1 + received3:
        for sub in [batch] if is_index_batch(batch) else batch.values():
            assert is_index_batch(sub) and sub["index"].device.type == "cuda"
    store = FeatureStore.open(tiny_store)
    tables = sorted([tuple(store.image_emb.shape), tuple(store.text_emb.shape)])
    floats = [
        Counter(m[1] for m in run if m[0].is_floating_point and len(m[1]) >= 2)
        for run in (one, three)
    ]
    assert floats[0] == floats[1]  # nothing per step (q (B, D) would grow with the epochs)
    assert all(floats[0][t] == 1 for t in tables)  # the tables, once
    assert not any(len(shape) == 3 for shape in floats[0])  # no (B, L, D) block
    per_step = [m for m in three if m[3]]  # what Lightning's batch transfer copied
    assert len(per_step) >= len(received3)
    for dtype, shape, pinned, _ in per_step:  # index vectors from pinned memory
        assert dtype == torch.int64 and len(shape) == 1 and shape[0] <= 64 and pinned


def test_cuda_ranker_under_autocast_scores_in_float32() -> None:
    # On the GPU the encoder takes SDPA (dropout by its own masks) under autocast; the score
    # head is float32 and the scores finite, 0 at padding.
    torch.manual_seed(0)
    net = ContextAwareRanker(16, 16, num_layers=2, num_heads=4, ff_dim=32, dropout=0.1)
    net = net.cuda().train()
    q, c = torch.randn(6, 16, device="cuda"), torch.randn(6, 9, 16, device="cuda")
    mask = torch.ones(6, 9, dtype=torch.bool, device="cuda")
    mask[0, -3:] = False
    dtype = torch.bfloat16 if _bf16() else torch.float16
    with torch.autocast("cuda", dtype=dtype):
        scores = net.forward_split(q, c, mask)
    assert scores.dtype == torch.float32 and bool(torch.isfinite(scores).all())
    assert bool((scores[~mask] == 0).all())
    scores.sum().backward()
    assert all(p.grad is None or bool(torch.isfinite(p.grad).all()) for p in net.parameters())
