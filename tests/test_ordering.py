"""The one ordering of a list (xmr.metrics.ranking) seen from every place that ranks: NaN scores,
ties and padding give the same ranks in the metrics, in the test step's predictions, in the
predictions file and in Recall@K computed from that file's ranked labels."""

from __future__ import annotations

import math
from pathlib import Path

import lightning as L
import numpy as np
import pytest
import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader

from xmr.metrics.functional import list_metrics, ranks_of
from xmr.metrics.ranking import (
    RSUM_KS,
    dcg_discounts,
    dcg_gains,
    ideal_dcg,
    pessimistic_order,
    pessimistic_ranks,
    pessimistic_topk,
    ranked_recall_at_k,
    ranked_recall_curve,
    rsum,
)
from xmr.metrics.retrieval import ListRetrievalMetrics
from xmr.models.module import RankingModule, run_test_loop
from xmr.runs.results import load_predictions, write_predictions

NAN = float("nan")
INF = float("inf")

# Four lists of six candidates. Padding (mask False) carries a high score on purpose.
SCORES = torch.tensor(
    [
        [0.5, NAN, 0.9, 0.1, 0.5, 0.7],  # tie 0.5: irrelevant 4 before relevant 0; NaN 1 last
        [NAN, 0.2, 0.2, -INF, 0.3, 0.0],  # relevant NaN below the -inf negative, then padding
        [0.5, NAN, 0.9, 0.1, 9.0, 9.0],  # the list: its relevant NaN item ranks last
        [0.3, 0.3, NAN, 0.1, 0.2, 0.0],  # no relevant item
    ]
)
LABELS = torch.tensor(
    [
        [1.0, 0.0, 0.0, 0.0, 0.0, 0.0],
        [1.0, 0.0, 0.0, 0.0, 0.0, 0.0],
        [0.0, 1.0, 0.0, 0.0, 0.0, 0.0],
        [0.0, 0.0, 0.0, 0.0, 0.0, 0.0],
    ]
)
MASK = torch.tensor(
    [
        [True, True, True, True, True, False],
        [True, True, True, True, False, False],
        [True, True, True, True, False, False],
        [True, True, True, True, True, True],
    ]
)
ORDER = [[2, 4, 0, 3, 1, 5], [1, 2, 3, 0, 4, 5], [2, 0, 3, 1, 4, 5], [0, 1, 4, 3, 5, 2]]
RELEVANT_RANK = [3, 4, 4, None]  # 1-based rank of each list's relevant item
NAN_POSITION = [4, 3, 3, 5]  # 0-based position of each list's NaN item: last of its real ones


def _candidate_ids() -> Tensor:
    ids = 100 * torch.arange(1, 5)[:, None] + torch.arange(6)  # (4, 6)
    return ids.masked_fill(~MASK, -1)


class _FixedScorer(nn.Module):
    """Scores list ``b`` with row ``b`` of a fixed table; the query feature holds ``b``."""

    def __init__(self, table: Tensor) -> None:
        super().__init__()
        self.register_buffer("table", table.clone())

    def forward_split(self, q: Tensor, c: Tensor, mask: Tensor) -> Tensor:
        return self.table[q[:, 0].long()]  # (B, L)


class _OneBatch(L.LightningDataModule):
    def __init__(self, batch: dict) -> None:
        super().__init__()
        self.batch = batch

    def test_dataloader(self) -> DataLoader:
        return DataLoader([self.batch], batch_size=None)


def _pairwise_ranks(scores: Tensor, labels: Tensor, mask: Tensor) -> Tensor:
    """The pessimistic order by ``(B, L, L)`` comparisons: item ``j`` is above item ``i`` when it
    is real and ``i`` is padding, or both are real and ``s_j > s_i`` (NaN as -inf), or the scores
    tie and ``y_j < y_i``, or scores and labels tie and ``j < i``."""
    s = torch.nan_to_num(scores, nan=-INF, posinf=INF, neginf=-INF)
    si, sj = s[:, :, None], s[:, None, :]  # (B, L, 1), (B, 1, L)
    yi, yj = labels[:, :, None], labels[:, None, :]
    idx = torch.arange(s.shape[-1])
    earlier = (idx[None, :] < idx[:, None])[None]  # (1, L, L): j < i
    tie = si == sj
    same_kind = mask[:, :, None] == mask[:, None, :]
    by_score = (sj > si) | (tie & (yj < yi)) | (tie & (yj == yi) & earlier)
    by_padding = mask[:, None, :] & ~mask[:, :, None]  # j real, i padding
    padding_tie = ~mask[:, :, None] & ~mask[:, None, :] & earlier
    above = (same_kind & mask[:, :, None] & by_score) | by_padding | padding_tie  # (B, L, L)
    return 1 + above.sum(dim=-1)  # (B, L)


def test_the_order_of_nan_ties_and_padding() -> None:
    assert pessimistic_order(SCORES, LABELS, MASK).tolist() == ORDER
    ranks = ranks_of(SCORES, LABELS, MASK)  # (B, L), PAD_RANK at padding
    for b, want in enumerate(RELEVANT_RANK):
        if want is not None:
            assert int(ranks[b][LABELS[b] > 0]) == want
        nan_item = int(torch.isnan(SCORES[b]).nonzero())
        assert int(ranks[b, nan_item]) == int(MASK[b].sum())  # last among the real items
    # The training step's ranks (LambdaLoss) are the same order, padding after the real items.
    assert torch.equal(
        pessimistic_ranks(SCORES, LABELS, MASK), _pairwise_ranks(SCORES, LABELS, MASK)
    )


@pytest.mark.parametrize("seed", range(6))
def test_ranks_by_sorting_equal_the_pairwise_definition(seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    b, length = 16, 3 + 5 * seed
    scores = torch.randint(0, 4, (b, length), generator=g).double() / 4  # many ties
    odd = torch.rand(b, length, generator=g)
    scores = scores.masked_fill(odd < 0.1, NAN).masked_fill(odd > 0.95, -INF)
    scores = scores.masked_fill((odd > 0.9) & (odd <= 0.95), INF)
    mask = torch.rand(b, length, generator=g) < 0.8
    labels = torch.randint(0, 3, (b, length), generator=g).double() * mask  # 0..2, 0 at padding
    assert torch.equal(
        pessimistic_ranks(scores, labels, mask), _pairwise_ranks(scores, labels, mask)
    )
    # Without labels the tie rule drops out: equal scores keep their input order.
    no_labels = torch.zeros_like(labels)
    assert torch.equal(
        pessimistic_order(scores, None, mask), pessimistic_order(scores, no_labels, mask)
    )


@pytest.mark.parametrize("seed", range(4))
def test_topk_is_the_head_of_the_order(seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    for trial in range(40):
        b, length = 5, int(torch.randint(1, 60, (1,), generator=g))
        scores = torch.randint(0, 5, (b, length), generator=g).float()  # many ties
        odd = torch.rand(b, length, generator=g)
        scores = scores.masked_fill(odd < 0.1, NAN).masked_fill(odd > 0.93, -INF)
        labels = torch.randint(0, 3, (b, length), generator=g).float() if trial % 3 else None
        mask = torch.rand(b, length, generator=g) < (0.2 if trial % 2 else 0.9)  # short lists
        for k in (1, 2, 5, 10, 100):
            want = pessimistic_order(scores, labels, mask)[:, :k]
            assert torch.equal(pessimistic_topk(scores, labels, mask, k), want)


def test_order_is_vmap_safe() -> None:
    g = torch.Generator().manual_seed(0)
    scores = torch.randint(0, 3, (3, 5, 7), generator=g).float()  # (E, B, L)
    labels = (torch.rand(5, 7, generator=g) < 0.3).float()
    mask = torch.rand(5, 7, generator=g) < 0.8
    got = torch.vmap(pessimistic_ranks, in_dims=(0, None, None))(scores, labels, mask)
    for e in range(3):
        assert torch.equal(got[e], pessimistic_ranks(scores[e], labels, mask))


def test_metrics_predictions_file_and_ranked_recall_agree(tmp_path: Path) -> None:
    ks = (1, 3, 5)
    # Training-time metrics.
    metric = ListRetrievalMetrics(ks=ks)
    metric.update(SCORES, LABELS, MASK)
    direct = metric.compute()
    ranks = [r for r in RELEVANT_RANK if r is not None]
    assert float(direct["mrr"]) == pytest.approx(sum(1 / r for r in ranks) / len(ranks))
    for k in ks:
        want = sum(r <= k for r in ranks) / len(ranks)
        assert float(direct[f"recall@{k}"]) == pytest.approx(want)
    assert int(direct["lists_without_positive"]) == 1

    # The LightningModule's test step: metrics and ranked predictions.
    batch = {
        "q": torch.arange(4, dtype=torch.float32)[:, None],  # (B, 1): the list index
        "c": torch.zeros(4, 6, 1),
        "labels": LABELS,
        "mask": MASK,
        "query": torch.arange(4),
        "candidates": _candidate_ids(),
        "direction": "t2i",
    }
    module = RankingModule({"t2i": _FixedScorer(SCORES)}, loss=None, ks=ks)
    logged = run_test_loop(module, _OneBatch(batch))
    for k in ks:
        assert logged[f"test/t2i/recall@{k}"] == pytest.approx(float(direct[f"recall@{k}"]))
    assert logged["test/t2i/mrr"] == pytest.approx(float(direct["mrr"]))
    preds = module.predictions["t2i"]
    assert preds["candidates"].tolist() == _candidate_ids().gather(1, torch.tensor(ORDER)).tolist()

    # The predictions file: ranked candidates, NaN scores at the NaN item (last real) and at
    # padding, candidate id -1 at padding.
    name = write_predictions(tmp_path, module.predictions)["t2i"]
    loaded = load_predictions(tmp_path / name)
    for key in ("query", "candidates", "labels"):
        np.testing.assert_array_equal(loaded[key], preds[key])
    np.testing.assert_array_equal(loaded["scores"], preds["scores"])  # NaN == NaN here
    for b in range(4):
        real = int(MASK[b].sum())
        assert (loaded["candidates"][b, :real] >= 0).all()
        assert (loaded["candidates"][b, real:] == -1).all()
        assert np.isnan(loaded["scores"][b, NAN_POSITION[b]]) and NAN_POSITION[b] == real - 1
        assert np.isnan(loaded["scores"][b, real:]).all()
        finite = loaded["scores"][b, : real - 1]
        assert (finite[:-1] >= finite[1:]).all()
        rel = np.flatnonzero(loaded["labels"][b])
        assert (int(rel[0]) + 1 if rel.size else None) == RELEVANT_RANK[b]

    # Recall@K from the file's ranked labels, per query and as a curve.
    per_list = list_metrics(SCORES.double(), LABELS, MASK, ks=ks)
    for k in ks:
        for definition, key in (("hit", "recall"), ("found", "recall_found")):
            got = ranked_recall_at_k(loaded["labels"], k, definition)  # (Q,)
            torch.testing.assert_close(got, per_list[f"{key}@{k}"], equal_nan=True)
    curve = ranked_recall_curve(loaded["labels"], 6)
    want = [sum(r <= k for r in ranks) / len(ranks) for k in range(1, 7)]
    torch.testing.assert_close(curve, torch.tensor(want, dtype=torch.float64))

    # The DDP path refills the test metrics from the ranked predictions: a NaN-scored candidate
    # stays a candidate (padding comes from candidate id -1), so the values do not change.
    module._recompute_test_metrics({"t2i": loaded})
    again = module.metrics["test_t2i"].compute()
    for key, value in direct.items():
        torch.testing.assert_close(again[key], value, equal_nan=True)


def _report_per_query_recall(labels: np.ndarray, k: int, recall: str) -> np.ndarray:
    """The report's Recall@K from ranked labels, written out as a reference."""
    rel = labels.astype(np.float64)
    total = rel.sum(1)
    top = rel[:, :k].sum(1)
    with np.errstate(invalid="ignore", divide="ignore"):
        value = (top > 0).astype(np.float64) if recall == "hit" else top / total
    return np.where(total > 0, value, np.nan)


@pytest.mark.parametrize("recall", ["hit", "found"])
def test_ranked_recall_matches_a_naive_reference(recall: str) -> None:
    rng = np.random.default_rng(1)
    labels = (rng.random((40, 12)) < 0.15).astype(np.uint8)  # some rows without a positive
    for k in (1, 2, 5, 12, 30):
        got = ranked_recall_at_k(labels, k, recall).numpy()
        np.testing.assert_array_equal(got, _report_per_query_recall(labels, k, recall))
    curve = ranked_recall_curve(labels, 50, recall).numpy()  # K = 1 .. L
    keep = labels.sum(1) > 0
    want = [np.mean(_report_per_query_recall(labels, k, recall)[keep]) for k in range(1, 13)]
    np.testing.assert_allclose(curve, want, rtol=1e-12)
    assert torch.isnan(ranked_recall_curve(np.zeros((3, 4)), 10, recall)).all()
    with pytest.raises(ValueError, match="definition"):
        ranked_recall_at_k(labels, 1, "mean")


def test_rsum_sums_the_fixed_cut_offs_over_directions() -> None:
    values = {f"val/{d}/recall@{k}": 0.1 * k for d in ("t2i", "i2t") for k in (1, 5, 10, 50)}
    assert RSUM_KS == (1, 5, 10)
    assert rsum(values, "val", ["t2i", "i2t"]) == pytest.approx(2 * 100 * (0.1 + 0.5 + 1.0))
    assert rsum({"val/t2i/recall@1": torch.tensor(0.25)}, "val", ["t2i"]) == 25.0
    assert rsum(values, "test", ["t2i"]) is None


def test_dcg_pieces() -> None:
    labels = torch.tensor([[2.0, 0.0, 1.0, 1.0]])
    mask = torch.tensor([[True, True, True, False]])
    gains = dcg_gains(labels, mask)
    assert gains.tolist() == [[3.0, 0.0, 1.0, 0.0]]
    ranks = torch.tensor([1.0, 2.0, 3.0])
    assert dcg_discounts(ranks, k=2).tolist() == pytest.approx([1.0, 1 / math.log2(3), 0.0])
    assert float(ideal_dcg(gains, None)) == pytest.approx(3.0 + 1 / math.log2(3))
    assert float(ideal_dcg(torch.zeros(1, 3), None)) == 0.0  # no positive: nDCG undefined


def test_ranked_recall_counts_a_missed_positive_as_zero() -> None:
    """With ``relevant_total`` (first_stage / pool lists), a list without its positive is a miss
    (0), a query with no relevant item anywhere stays NaN, and found@K divides by the total."""
    labels = np.array([[0, 1, 0], [0, 0, 0], [0, 0, 0], [1, 0, 1]], dtype=np.uint8)
    total = np.array([1, 2, 0, 3])
    hit = ranked_recall_at_k(labels, 1, "hit", relevant_total=total).numpy()
    assert hit[0] == 0 and hit[1] == 0 and np.isnan(hit[2]) and hit[3] == 1
    found = ranked_recall_at_k(labels, 3, "found", relevant_total=total).numpy()
    np.testing.assert_allclose(found[[0, 1, 3]], [1.0, 0.0, 2 / 3])
    plain = ranked_recall_at_k(labels, 1, "hit").numpy()
    assert np.isnan(plain[1])  # without the total a list without a positive is left out
