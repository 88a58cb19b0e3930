"""Tests of xmr.metrics: hand-made lists, a naive pure-Python reference, torchmetrics, accumulation.

All data here is synthetic (hand-made or random).
"""

from __future__ import annotations

import math

import pytest
import torch
from torchmetrics.retrieval import (
    RetrievalHitRate,
    RetrievalMRR,
    RetrievalNormalizedDCG,
    RetrievalRecall,
)

from xmr.metrics import (
    PAD_RANK,
    ListRetrievalMetrics,
    has_positive,
    list_metrics,
    mrr,
    ndcg_at_k,
    ranks_of,
    recall_found_at_k,
    recall_hit_at_k,
)
from xmr.metrics.ranking import pessimistic_order

NAN = float("nan")


def _t(rows: list[list[float]]) -> torch.Tensor:
    return torch.tensor(rows, dtype=torch.float32)


def _all_real(scores: torch.Tensor) -> torch.Tensor:
    return torch.ones_like(scores, dtype=torch.bool)


def _close(actual: torch.Tensor, expected: list[float] | torch.Tensor) -> None:
    expected_t = torch.as_tensor(expected, dtype=actual.dtype)
    torch.testing.assert_close(actual, expected_t, equal_nan=True, atol=1e-6, rtol=1e-6)


# --------------------------------------------------------------------------- naive reference


def _naive_order(scores: list[float], labels: list[float], mask: list[bool]) -> list[int]:
    """Real items sorted by (score desc, label asc = pessimistic ties, index asc); NaN = -inf."""
    real = [i for i in range(len(scores)) if mask[i]]

    def key(i: int) -> tuple[float, float, int]:
        s = -math.inf if math.isnan(scores[i]) else scores[i]
        return (-s, labels[i], i)

    return sorted(real, key=key)


def _naive_metrics(
    scores: list[float], labels: list[float], mask: list[bool], ks: list[int], ndcg_k: int
) -> dict[str, float]:
    order = _naive_order(scores, labels, mask)
    rank = {i: pos + 1 for pos, i in enumerate(order)}
    relevant = [i for i in order if labels[i] > 0]
    out: dict[str, float] = {}
    if not relevant:
        for k in ks:
            out[f"recall@{k}"] = NAN
            out[f"recall_found@{k}"] = NAN
        out[f"ndcg@{ndcg_k}"] = NAN
        out["mrr"] = NAN
        return out
    for k in ks:
        found = sum(1 for i in relevant if rank[i] <= k)
        out[f"recall@{k}"] = 1.0 if found > 0 else 0.0
        out[f"recall_found@{k}"] = found / len(relevant)
    dcg = sum((2 ** labels[i] - 1) / math.log2(rank[i] + 1) for i in relevant if rank[i] <= ndcg_k)
    ideal = sorted((2 ** labels[i] - 1 for i in order), reverse=True)
    idcg = sum(g / math.log2(p + 1) for p, g in enumerate(ideal, start=1) if p <= ndcg_k)
    out[f"ndcg@{ndcg_k}"] = dcg / idcg
    out["mrr"] = 1.0 / min(rank[i] for i in relevant)
    return out


def _random_lists(
    seed: int, b: int = 64, length: int = 12, *, ties: bool = True
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Synthetic lists with padding (incl. fully padded lists) and, if ``ties``, many tied scores."""
    g = torch.Generator().manual_seed(seed)
    if ties:
        scores = torch.randint(0, 4, (b, length), generator=g).float()  # (B, L) heavy ties
    else:
        scores = torch.rand(b, length, generator=g)  # (B, L) ties have probability ~0
    labels = (torch.rand(b, length, generator=g) < 0.25).to(torch.uint8)  # (B, L)
    lengths = torch.randint(0, length + 1, (b,), generator=g)  # (B,) 0 = fully padded
    mask = torch.arange(length)[None, :] < lengths[:, None]  # (B, L)
    # Shuffle padding positions so that padding is not always at the end.
    perm = torch.argsort(torch.rand(b, length, generator=g), dim=1)
    mask = mask.gather(1, perm)
    # Give padding high scores and positive labels: it must still never count.
    scores = torch.where(mask, scores, 100.0)
    labels = torch.where(mask, labels, torch.ones_like(labels))
    return scores, labels, mask


# --------------------------------------------------------------------------- hand-made lists


def test_known_values_distinct_scores() -> None:
    scores = _t([[0.9, 0.8, 0.7, 0.6]])
    labels = torch.tensor([[0, 1, 0, 1]])
    mask = _all_real(scores)
    assert ranks_of(scores, labels, mask).tolist() == [[1, 2, 3, 4]]
    _close(recall_hit_at_k(scores, labels, mask, 1), [0.0])
    _close(recall_hit_at_k(scores, labels, mask, 2), [1.0])
    _close(recall_found_at_k(scores, labels, mask, 1), [0.0])
    _close(recall_found_at_k(scores, labels, mask, 3), [0.5])
    _close(recall_found_at_k(scores, labels, mask, 4), [1.0])
    _close(mrr(scores, labels, mask), [0.5])
    # Relevant at ranks 2 and 4; ideal puts them at 1 and 2.
    ideal = 1.0 + 1.0 / math.log2(3)
    _close(ndcg_at_k(scores, labels, mask, 10), [(1 / math.log2(3) + 1 / math.log2(5)) / ideal])
    _close(ndcg_at_k(scores, labels, mask, 2), [(1 / math.log2(3)) / ideal])
    _close(ndcg_at_k(scores, labels, mask, 1), [0.0])


def test_recall_definitions_differ_with_several_positives() -> None:
    scores = _t([[0.9, 0.8, 0.7, 0.6, 0.5]])
    labels = torch.tensor([[1, 0, 1, 0, 1]])  # 3 positives at ranks 1, 3, 5
    mask = _all_real(scores)
    _close(recall_hit_at_k(scores, labels, mask, 1), [1.0])
    _close(recall_found_at_k(scores, labels, mask, 1), [1 / 3])
    _close(recall_found_at_k(scores, labels, mask, 3), [2 / 3])
    _close(recall_found_at_k(scores, labels, mask, 5), [1.0])
    ideal3 = 1.0 + 1 / math.log2(3) + 1 / math.log2(4)
    _close(ndcg_at_k(scores, labels, mask, 3), [(1.0 + 1 / math.log2(4)) / ideal3])
    _close(mrr(scores, labels, mask), [1.0])


def test_recall_definitions_agree_with_one_positive() -> None:
    scores, labels, mask = _random_lists(3, ties=False)
    one = torch.zeros_like(labels)
    first_real = mask.float().argmax(dim=1)  # (B,)
    one[torch.arange(len(one)), first_real] = 1
    one = one * mask
    for k in (1, 2, 5):
        _close(
            recall_found_at_k(scores, one, mask, k), recall_hit_at_k(scores, one, mask, k).tolist()
        )


def test_ties_are_pessimistic() -> None:
    scores = _t([[0.5, 0.5, 0.5, 0.5], [0.5, 0.9, 0.5, 0.1], [0.5, 0.5, 0.5, 0.0]])
    labels = torch.tensor([[1, 0, 0, 0], [1, 0, 0, 0], [1, 1, 0, 0]])
    mask = _all_real(scores)
    ranks = ranks_of(scores, labels, mask)
    # Row 0: constant scorer puts the positive last. Row 1: positive tied with item 2 ranks
    # below it. Row 2: both positives below the tied negative; equal labels keep input order.
    assert ranks.tolist() == [[4, 1, 2, 3], [3, 1, 2, 4], [2, 3, 1, 4]]
    _close(recall_hit_at_k(scores, labels, mask, 1), [0.0, 0.0, 0.0])
    _close(recall_hit_at_k(scores, labels, mask, 2), [0.0, 0.0, 1.0])
    _close(recall_found_at_k(scores, labels, mask, 2), [0.0, 0.0, 0.5])
    _close(mrr(scores, labels, mask), [1 / 4, 1 / 3, 1 / 2])
    _close(ndcg_at_k(scores, labels, mask, 10)[:1], [1 / math.log2(5)])


def test_constant_scorer_equals_worst_ranking() -> None:
    _, labels, mask = _random_lists(5)
    constant = torch.zeros(labels.shape)
    worst = -labels.float()  # every relevant item strictly below every irrelevant one
    got = list_metrics(constant, labels, mask, (1, 3, 5))
    ref = list_metrics(worst, labels, mask, (1, 3, 5))
    for key in got:
        _close(got[key], ref[key])


def test_perfect_ranking_scores_one() -> None:
    _, labels, mask = _random_lists(6)
    labels = labels * mask
    perfect = labels.float()  # positives tied with each other only
    npos = (labels > 0).sum(dim=1).float()
    valid = npos > 0
    got = list_metrics(perfect, labels, mask, (1, 2))
    for key in ("recall@1", "recall@2", "ndcg@10", "mrr"):
        assert torch.all(got[key][valid] == 1.0), key
    _close(got["recall_found@2"][valid], (2.0 / npos[valid]).clamp(max=1.0))


def test_padding_is_never_ranked() -> None:
    scores = _t([[0.1, 5.0, 0.2, 7.0]])
    labels = torch.tensor([[1, 1, 0, 0]])  # the padded positive must not count
    mask = torch.tensor([[True, False, True, False]])
    assert ranks_of(scores, labels, mask).tolist() == [[2, PAD_RANK, 1, PAD_RANK]]
    _close(recall_hit_at_k(scores, labels, mask, 1), [0.0])
    _close(recall_hit_at_k(scores, labels, mask, 2), [1.0])
    _close(recall_found_at_k(scores, labels, mask, 2), [1.0])
    _close(mrr(scores, labels, mask), [0.5])
    _close(ndcg_at_k(scores, labels, mask), [1 / math.log2(3)])


def test_adding_padding_changes_nothing() -> None:
    scores, labels, mask = _random_lists(7)
    g = torch.Generator().manual_seed(0)
    extra = 5
    scores2 = torch.cat([scores, torch.randn(len(scores), extra, generator=g) * 100], dim=1)
    labels2 = torch.cat([labels, torch.ones(len(labels), extra, dtype=labels.dtype)], dim=1)
    mask2 = torch.cat([mask, torch.zeros(len(mask), extra, dtype=torch.bool)], dim=1)
    a = list_metrics(scores, labels, mask, (1, 5, 20))
    b = list_metrics(scores2, labels2, mask2, (1, 5, 20))
    for key in a:
        _close(b[key], a[key])


def test_permuting_candidates_changes_nothing() -> None:
    scores, labels, mask = _random_lists(8)  # with ties: the tie rule must not depend on order
    perm = torch.argsort(torch.rand(scores.shape, generator=torch.Generator().manual_seed(1)))
    a = list_metrics(scores, labels, mask, (1, 3))
    b = list_metrics(scores.gather(1, perm), labels.gather(1, perm), mask.gather(1, perm), (1, 3))
    for key in a:
        _close(b[key], a[key])


def test_lists_without_positive_are_nan() -> None:
    scores = _t([[0.3, 0.2, 0.1], [0.3, 0.2, 0.1], [0.3, 0.2, 0.1], [0.3, 0.2, 0.1]])
    labels = torch.tensor([[0, 0, 0], [0, 1, 0], [0, 1, 0], [1, 0, 0]])
    mask = torch.tensor(
        [[True, True, True], [True, False, True], [False, False, False], [True, True, True]]
    )
    # Rows 0-2 have no relevant *real* item (none / only padded / fully padded list).
    assert has_positive(labels, mask).tolist() == [False, False, False, True]
    for values in (
        recall_hit_at_k(scores, labels, mask, 1),
        recall_found_at_k(scores, labels, mask, 1),
        ndcg_at_k(scores, labels, mask),
        mrr(scores, labels, mask),
        mrr(scores, labels, mask, k=1),
    ):
        assert torch.isnan(values[:3]).all()
        assert values[3].item() == 1.0


def test_k_larger_than_list_is_whole_list() -> None:
    scores = _t([[0.9, 0.8, 0.7], [0.9, 0.8, 0.0]])
    labels = torch.tensor([[0, 0, 1], [0, 0, 1]])
    mask = torch.tensor([[True, True, True], [True, True, False]])
    _close(recall_hit_at_k(scores, labels, mask, 100), [1.0, NAN])
    _close(recall_found_at_k(scores, labels, mask, 100), [1.0, NAN])
    _close(ndcg_at_k(scores, labels, mask, 100), [1 / math.log2(4), NAN])
    _close(mrr(scores, labels, mask, k=100), [1 / 3, NAN])
    _close(mrr(scores, labels, mask, k=2), [0.0, NAN])


def test_nan_scores_rank_last_among_real() -> None:
    scores = _t([[NAN, 0.1, -math.inf, 9.0]])
    labels = torch.tensor([[1, 0, 0, 0]])
    mask = torch.tensor([[True, True, True, False]])
    # NaN acts as -inf; tied with the -inf negative it ranks below it (pessimistic).
    assert ranks_of(scores, labels, mask).tolist() == [[3, 1, 2, PAD_RANK]]
    assert pessimistic_order(scores, None, mask).tolist() == [[1, 0, 2, 3]]


def test_pessimistic_order_without_labels() -> None:
    scores = _t([[0.2, 0.9, 5.0, 0.5, 0.5]])
    mask = torch.tensor([[True, True, False, True, True]])
    assert pessimistic_order(scores, None, mask).tolist() == [[1, 3, 4, 0, 2]]
    s, _, m = _random_lists(9)
    order = pessimistic_order(s, None, m)  # (B, L)
    assert torch.equal(order.sort(dim=1).values, torch.arange(s.shape[1]).expand_as(s))
    sorted_mask = m.gather(1, order)
    assert torch.equal(sorted_mask, m.sum(1, keepdim=True) > torch.arange(s.shape[1]))
    sorted_scores = torch.where(sorted_mask, s.gather(1, order), -math.inf)
    assert (sorted_scores[:, :-1] >= sorted_scores[:, 1:]).all()


@pytest.mark.parametrize("k", [0, -1, 1.5, True])
def test_bad_k_raises(k: object) -> None:
    scores = _t([[0.1, 0.2]])
    labels = torch.tensor([[1, 0]])
    mask = _all_real(scores)
    for fn in (recall_hit_at_k, recall_found_at_k, ndcg_at_k, mrr):
        with pytest.raises(ValueError, match="k"):
            fn(scores, labels, mask, k)  # type: ignore[operator]
    with pytest.raises(ValueError, match="ks"):
        ListRetrievalMetrics(ks=(1, k))  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="ndcg_k"):
        ListRetrievalMetrics(ndcg_k=k)  # type: ignore[arg-type]


def test_bad_inputs_raise_naming_the_field() -> None:
    scores = _t([[0.1, 0.2]])
    labels = torch.tensor([[1, 0]])
    with pytest.raises(ValueError, match="mask must be a bool"):
        ranks_of(scores, labels, torch.ones(1, 2))
    with pytest.raises(ValueError, match="labels shape"):
        ranks_of(scores, torch.tensor([[1, 0, 0]]), _all_real(scores))
    with pytest.raises(ValueError, match="scores must be 2-D"):
        ranks_of(scores[0], labels[0], _all_real(scores)[0])
    with pytest.raises(ValueError, match="mask shape"):
        ranks_of(scores, labels, torch.ones(1, 3, dtype=torch.bool))
    with pytest.raises(ValueError, match="ks must not repeat"):
        ListRetrievalMetrics(ks=(1, 1))


# --------------------------------------------------------------------------- references


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("ties", [True, False])
def test_vectorised_matches_naive_reference(seed: int, ties: bool) -> None:
    ks, ndcg_k = [1, 3, 5, 20], 4
    scores, labels, mask = _random_lists(seed, ties=ties)
    if seed == 1:  # NaN and -inf scores follow the same rule (NaN acts as -inf)
        scores[::5, 0] = NAN
        scores[::3, 1] = -math.inf
    if seed == 2:
        labels = labels.float()  # the datamodule's float labels behave like uint8 ones
    got = list_metrics(scores, labels, mask, ks, ndcg_k)
    ranks = ranks_of(scores, labels, mask)
    for b in range(len(scores)):
        s, lab, m = scores[b].tolist(), labels[b].tolist(), mask[b].tolist()
        expected = _naive_metrics(s, lab, m, ks, ndcg_k)
        for key, value in expected.items():
            v = got[key][b].item()
            assert (math.isnan(v) and math.isnan(value)) or v == pytest.approx(value, abs=1e-6), (
                b,
                key,
            )
        order = _naive_order(s, lab, m)
        assert [ranks[b, i].item() for i in order] == list(range(1, len(order) + 1))
    # The single-metric functions agree with list_metrics.
    _close(recall_hit_at_k(scores, labels, mask, 3), got["recall@3"])
    _close(recall_found_at_k(scores, labels, mask, 5), got["recall_found@5"])
    _close(ndcg_at_k(scores, labels, mask, ndcg_k), got[f"ndcg@{ndcg_k}"])
    _close(mrr(scores, labels, mask), got["mrr"])


@pytest.mark.parametrize("seed", [0, 1])
def test_matches_torchmetrics_without_ties(seed: int) -> None:
    ks = (1, 3, 5, 20)  # 20 exceeds every list length
    scores, labels, mask = _random_lists(seed, b=48, length=12, ties=False)
    indexes = torch.arange(len(scores))[:, None].expand_as(scores)[mask]  # real items only
    preds, target = scores[mask], labels[mask].bool()
    acc = ListRetrievalMetrics(ks=ks, ndcg_k=5)
    acc.update(scores, labels, mask)
    result = acc.compute()
    assert result["lists_without_positive"].item() > 0  # the exclusion path is exercised

    def tm(metric_cls: type, **kw: object) -> float:
        metric = metric_cls(empty_target_action="skip", **kw)
        return float(metric(preds, target, indexes=indexes))

    for k in ks:
        assert result[f"recall@{k}"].item() == pytest.approx(tm(RetrievalHitRate, top_k=k))
        assert result[f"recall_found@{k}"].item() == pytest.approx(tm(RetrievalRecall, top_k=k))
    assert result["ndcg@5"].item() == pytest.approx(tm(RetrievalNormalizedDCG, top_k=5))
    assert result["mrr"].item() == pytest.approx(tm(RetrievalMRR))


# --------------------------------------------------------------------------- accumulator


def _assert_results_equal(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(a[key], b[key], equal_nan=True, msg=key)


def test_accumulator_keys_and_means() -> None:
    scores, labels, mask = _random_lists(11)
    metric = ListRetrievalMetrics(ks=(1, 5, 10), ndcg_k=10)
    metric.update(scores, labels, mask)
    result = metric.compute()
    assert list(result) == [
        "recall@1",
        "recall@5",
        "recall@10",
        "recall_found@1",
        "recall_found@5",
        "recall_found@10",
        "ndcg@10",
        "mrr",
        "lists",
        "lists_without_positive",
        "lists_missed",
    ]
    per_list = list_metrics(scores, labels, mask, (1, 5, 10), 10)
    n_without = int((~has_positive(labels, mask)).sum())
    assert n_without > 0
    assert result["lists"].item() == len(scores)
    assert result["lists_without_positive"].item() == n_without
    for key, values in per_list.items():
        assert result[key].item() == pytest.approx(values.nanmean().item(), abs=1e-6)
        assert 0.0 <= result[key].item() <= 1.0


def test_accumulator_one_batch_equals_many_updates() -> None:
    scores, labels, mask = _random_lists(12, b=60)
    whole = ListRetrievalMetrics()
    whole.update(scores, labels, mask)
    split = ListRetrievalMetrics()
    for start in range(0, 60, 7):  # uneven batches; some get extra padding columns
        s, lab, m = scores[start : start + 7], labels[start : start + 7], mask[start : start + 7]
        pad = start % 3
        s = torch.cat([s, torch.full((len(s), pad), 50.0)], dim=1)
        lab = torch.cat([lab, torch.ones(len(lab), pad, dtype=lab.dtype)], dim=1)
        m = torch.cat([m, torch.zeros(len(m), pad, dtype=torch.bool)], dim=1)
        split.update(s, lab, m)
    _assert_results_equal(whole.compute(), split.compute())


def test_accumulator_states_sum_across_processes() -> None:
    scores, labels, mask = _random_lists(13, b=50)
    whole = ListRetrievalMetrics()
    whole.update(scores, labels, mask)
    expected = whole.compute()

    # Two "processes" see different (uneven) shares of the lists.
    rank0, rank1 = ListRetrievalMetrics(), ListRetrievalMetrics()
    rank0.update(scores[:17], labels[:17], mask[:17])
    rank1.update(scores[17:], labels[17:], mask[17:])

    merged = ListRetrievalMetrics()
    merged.update(scores[:0], labels[:0], mask[:0])  # an empty batch adds nothing
    merged.merge_state(rank0)
    merged.merge_state(rank1)
    _assert_results_equal(merged.compute(), expected)

    # What DDP's dist_reduce_fx="sum" does: add every state elementwise.
    summed = ListRetrievalMetrics()
    summed.update(scores[:0], labels[:0], mask[:0])
    for name in summed._defaults:
        setattr(summed, name, getattr(rank0, name) + getattr(rank1, name))
    _assert_results_equal(summed.compute(), expected)
    for name, reduce in summed._reductions.items():
        assert reduce is not None, name  # every state is dist-reducible


def test_accumulator_without_lists_is_nan_and_reset_clears() -> None:
    metric = ListRetrievalMetrics(ks=(1,))
    scores = _t([[0.2, 0.1]])
    metric.update(scores, torch.tensor([[0, 0]]), _all_real(scores))
    result = metric.compute()
    assert torch.isnan(result["recall@1"]) and torch.isnan(result["mrr"])
    assert result["lists"].item() == 1 and result["lists_without_positive"].item() == 1
    metric.reset()
    metric.update(scores, torch.tensor([[0, 1]]), _all_real(scores))
    result = metric.compute()
    assert result["recall@1"].item() == 0.0 and result["mrr"].item() == 0.5
    assert result["lists"].item() == 1 and result["lists_without_positive"].item() == 0
