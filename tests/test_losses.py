"""Tests of the ranking losses (xmr/losses, conf/loss).

Property tests run over every ``conf/loss/*.yaml`` (plus a few hyper-parameter variants); the
known-value tests compare the paper's four losses (and some extras) with hand computations or
with naive loop-based reference implementations written here independently, on synthetic lists.
"""

from __future__ import annotations

import itertools
import math
import random
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import hydra.utils
import pytest
import torch
import torch.nn.functional as F
from omegaconf import DictConfig, OmegaConf
from torch import Tensor, nn

import xmr.losses.neural_ndcg as neural_ndcg_module
from xmr.losses import (
    ApproxNDCGLoss,
    LambdaLoss,
    LambdaRankLoss,
    ListMLELoss,
    ListNetLoss,
    NeuralNDCGLoss,
    NeuralNDCGTransposedLoss,
    PointwiseBCELoss,
    RankNetLoss,
)
from xmr.losses.neural_ndcg import neural_sort, sinkhorn, sinkhorn_reference

CONF_DIR = Path(__file__).resolve().parents[1] / "conf" / "loss"
CONFIGS = sorted(CONF_DIR.glob("*.yaml"))
REQUIRED = {"lambdarank", "neural_ndcg", "listnet", "ranknet"}
EXTRAS = {
    "neural_ndcg_transposed",
    "approx_ndcg",
    "listmle",
    "lambdaloss_ndcg2",
    "lambdaloss_ndcg2pp",
    "pointwise_bce",
}
# Hyper-parameter variants also run through every property test.
VARIANTS: dict[str, dict[str, object]] = {
    "listnet": {"target": "softmax"},
    "lambdarank": {"k": 2},
    "lambdaloss_ndcg2": {"k": 2},
    "lambdaloss_ndcg2pp": {"k": 3},
    "neural_ndcg": {"k": 2, "temperature": 0.3},
    "neural_ndcg_transposed": {"k": 2},
    "approx_ndcg": {"k": 2, "alpha": 5.0},
}


@pytest.fixture(autouse=True)
def _one_thread() -> Iterator[None]:
    """The tensors here are tiny: intra-op threads only add overhead (and contention on CI)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def build(path: Path, **overrides: object) -> nn.Module:
    """Instantiate a loss config the way the training config would (Hydra ``_target_``)."""
    cfg = OmegaConf.load(path)
    assert isinstance(cfg, DictConfig), f"{path.name}: a loss config must be a mapping"
    for key, value in overrides.items():
        cfg[key] = value
    loss = hydra.utils.instantiate(cfg)
    assert isinstance(loss, nn.Module), f"{path.name}: _target_ must build an nn.Module"
    return loss


CASES = [pytest.param((p, {}), id=p.stem) for p in CONFIGS] + [
    pytest.param(
        (CONF_DIR / f"{name}.yaml", over), id=f"{name}-{'-'.join(map(str, over.values()))}"
    )
    for name, over in VARIANTS.items()
]


@pytest.fixture(params=CASES)
def loss_fn(request: pytest.FixtureRequest) -> nn.Module:
    path, overrides = request.param
    return build(path, **overrides)


def random_batch(
    b: int, length: int, seed: int, p_pos: float = 0.3, p_pad: float = 0.25, ties: bool = False
) -> tuple[Tensor, Tensor, Tensor]:
    """Synthetic ``(scores, labels, mask)``, float64; every list has >= 2 real items, 1 positive."""
    g = torch.Generator().manual_seed(seed)
    scores = torch.randn(b, length, generator=g, dtype=torch.float64)
    if ties:  # coarse grid: many exact ties
        scores = (scores * 2).round() / 2
    labels = (torch.rand(b, length, generator=g) < p_pos).to(torch.float64)
    mask = torch.rand(b, length, generator=g) >= p_pad
    mask[:, :2] = True
    labels[:, 0] = 1.0
    labels = labels * mask  # 0 at padding, as the datamodule delivers
    return scores, labels, mask


def permute_lists(seed: int, *tensors: Tensor) -> list[Tensor]:
    """Apply one random permutation per list jointly to all ``(B, L)`` tensors."""
    g = torch.Generator().manual_seed(seed)
    b, length = tensors[0].shape
    perm = torch.stack([torch.randperm(length, generator=g) for _ in range(b)])
    return [t.gather(1, perm) for t in tensors]


# ---------------------------------------- registry / configs


def test_every_required_loss_has_a_config() -> None:
    names = {p.stem for p in CONFIGS}
    assert names >= REQUIRED | EXTRAS, f"missing conf/loss configs: {(REQUIRED | EXTRAS) - names}"


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.stem)
def test_config_targets_an_xmr_loss_with_a_paper_docstring(path: Path) -> None:
    cfg = OmegaConf.load(path)
    target = str(cfg._target_)
    assert target.startswith("xmr.losses."), (
        f"{path.name}: _target_ must be xmr.losses.<module>.<Class>"
    )
    cls = hydra.utils.get_class(target)
    assert cls.__name__.endswith("Loss"), f"{path.name}: {cls.__name__} lacks the Loss suffix"
    doc = (cls.__doc__ or "").strip()
    first_line = doc.splitlines()[0] if doc else ""
    # Each loss docstring opens with its paper: authors and a year on the first line.
    assert any(str(year) in first_line for year in range(1990, 2030)), (
        f"{cls.__name__} docstring must open with its paper, got {first_line!r}"
    )
    # Every hyper-parameter in the config is a constructor argument (defaults are explicit).
    loss = build(path)
    assert isinstance(loss, nn.Module)


# ---------------------------------------- properties


def test_scalar_output(loss_fn: nn.Module) -> None:
    scores, labels, mask = random_batch(4, 7, seed=0)
    out = loss_fn(scores, labels, mask)
    assert out.dim() == 0 and out.dtype == torch.float64 and torch.isfinite(out)
    out32 = loss_fn(scores.float(), labels.float(), mask)
    assert out32.dim() == 0 and out32.dtype == torch.float32
    torch.testing.assert_close(out32.double(), out, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("seed", range(3))
def test_padding_never_changes_the_loss(loss_fn: nn.Module, seed: int) -> None:
    scores, labels, mask = random_batch(5, 8, seed=seed)
    scores.requires_grad_(True)
    base = loss_fn(scores, labels, mask)
    (base_grad,) = torch.autograd.grad(base, scores)

    # Append padded items with arbitrary (even non-finite) scores and arbitrary labels, then
    # shuffle so that padding also sits between real items.
    g = torch.Generator().manual_seed(100 + seed)
    extra = 6
    pad_scores = torch.randn(5, extra, generator=g, dtype=torch.float64) * 1e3
    pad_scores[0, 0], pad_scores[1, 1], pad_scores[2, 2] = math.inf, -math.inf, math.nan
    pad_labels = torch.randint(0, 2, (5, extra), generator=g).to(torch.float64)
    big_s = torch.cat([scores.detach(), pad_scores], dim=1)
    big_y = torch.cat([labels, pad_labels], dim=1)
    big_m = torch.cat([mask, torch.zeros(5, extra, dtype=torch.bool)], dim=1)
    origin = torch.arange(8 + extra).expand(5, -1)
    big_s, big_y, big_m, origin = permute_lists(seed, big_s, big_y, big_m, origin)
    big_s.requires_grad_(True)
    padded = loss_fn(big_s, big_y, big_m)
    (padded_grad,) = torch.autograd.grad(padded, big_s)

    torch.testing.assert_close(padded, base, rtol=1e-9, atol=1e-12)
    assert torch.isfinite(padded_grad).all()
    assert (padded_grad[~big_m] == 0).all(), "padded items must get zero gradient"
    # Real items get the same gradient as without the extra padding.
    grad_back = torch.zeros_like(padded_grad).scatter(1, origin, padded_grad)[:, :8]
    torch.testing.assert_close(grad_back, base_grad, rtol=1e-7, atol=1e-10)


@pytest.mark.parametrize(("seed", "ties"), [(0, False), (1, False), (2, True), (3, True)])
def test_joint_permutation_never_changes_the_loss(
    loss_fn: nn.Module, seed: int, ties: bool
) -> None:
    scores, labels, mask = random_batch(6, 9, seed=seed, ties=ties)
    base = loss_fn(scores, labels, mask)
    for rep in range(3):
        s, y, m = permute_lists(10 * seed + rep, scores, labels, mask)
        torch.testing.assert_close(loss_fn(s, y, m), base, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("seed", range(12))
def test_perfect_ranking_is_no_worse_than_reversed_or_shuffled(
    loss_fn: nn.Module, seed: int
) -> None:
    rng = random.Random(seed)
    length = rng.randint(2, 9)
    n_pos = rng.randint(1, length - 1)
    labels = torch.tensor([[1.0] * n_pos + [0.0] * (length - n_pos)], dtype=torch.float64)
    values = sorted((rng.uniform(-3, 3) for _ in range(length)), reverse=True)
    perfect = torch.tensor([values], dtype=torch.float64)  # highest scores on the positives
    mask = torch.ones(1, length, dtype=torch.bool)
    best = loss_fn(perfect, labels, mask)
    worst = loss_fn(perfect.flip(-1), labels, mask)
    assert best <= worst + 1e-12
    for _ in range(4):
        order = list(range(length))
        rng.shuffle(order)
        assert best <= loss_fn(perfect[:, order], labels, mask) + 1e-12


def _grad(
    loss_fn: nn.Module, scores: Tensor, labels: Tensor, mask: Tensor
) -> tuple[Tensor, Tensor]:
    scores = scores.clone().requires_grad_(True)
    out = loss_fn(scores, labels, mask)
    out.backward()
    assert scores.grad is not None
    return out.detach(), scores.grad


def test_gradients_finite(loss_fn: nn.Module) -> None:
    # Random float32 lists with padding; all-equal scores; a list without positive; a list of
    # positives only; a list of padding only; large-magnitude scores.
    scores, labels, mask = random_batch(6, 8, seed=7)
    scores, labels = scores.float(), labels.float()
    scores[1] = 0.0
    labels[2] = 0.0
    labels[3] = mask[3].float()
    mask[4] = False
    scores[5] = scores[5] * 300
    out, grad = _grad(loss_fn, scores, labels, mask)
    assert torch.isfinite(out) and torch.isfinite(grad).all()
    assert (grad[~mask] == 0).all()
    assert grad.abs().sum() > 0


def test_all_equal_scores_still_push_the_positive_up(loss_fn: nn.Module) -> None:
    # A constant scorer (e.g. at initialisation) must get a useful gradient: raising the
    # positive's score lowers the loss. Pessimistic tie-breaking makes this hold for LambdaLoss.
    labels = torch.tensor([[0.0, 1.0, 0.0, 0.0, 0.0]], dtype=torch.float64)
    mask = torch.tensor([[True, True, True, True, False]])
    out, grad = _grad(loss_fn, torch.zeros(1, 5, dtype=torch.float64), labels, mask)
    assert torch.isfinite(grad).all()
    assert grad[0, 1] < 0, f"gradient on the positive is {grad[0, 1].item()}"


def test_single_list_and_single_item(loss_fn: nn.Module) -> None:
    # B = 1
    scores, labels, mask = random_batch(1, 6, seed=3)
    out, grad = _grad(loss_fn, scores, labels, mask)
    assert torch.isfinite(out) and torch.isfinite(grad).all()
    # L = 1, positive and negative, B = 1 and B = 3
    for label in (0.0, 1.0):
        for b in (1, 3):
            s = torch.full((b, 1), 0.7, dtype=torch.float64)
            y = torch.full((b, 1), label, dtype=torch.float64)
            m = torch.ones(b, 1, dtype=torch.bool)
            out, grad = _grad(loss_fn, s, y, m)
            assert out.dim() == 0 and torch.isfinite(out) and torch.isfinite(grad).all()


def test_batch_without_positive_or_real_item_gives_zero(loss_fn: nn.Module) -> None:
    scores = torch.randn(2, 4, dtype=torch.float64)
    empty = torch.zeros(2, 4, dtype=torch.bool)
    out, grad = _grad(loss_fn, scores, torch.zeros(2, 4, dtype=torch.float64), empty)
    assert out == 0 and (grad == 0).all()
    if not isinstance(loss_fn, PointwiseBCELoss):
        # Ranking losses skip lists without a positive: zero loss, zero gradient.
        real = torch.ones(2, 4, dtype=torch.bool)
        out, grad = _grad(loss_fn, scores, torch.zeros(2, 4, dtype=torch.float64), real)
        assert out == 0 and (grad == 0).all()


def test_lists_without_positive_are_skipped(loss_fn: nn.Module) -> None:
    scores, labels, mask = random_batch(3, 6, seed=11)
    base = loss_fn(scores, labels, mask)
    extra_s = torch.cat([scores, torch.randn(1, 6, dtype=torch.float64)])
    extra_y = torch.cat([labels, torch.zeros(1, 6, dtype=torch.float64)])
    extra_m = torch.cat([mask, torch.ones(1, 6, dtype=torch.bool)])
    with_negative_list = loss_fn(extra_s, extra_y, extra_m)
    if isinstance(loss_fn, PointwiseBCELoss):
        # Documented exception: pointwise BCE learns from negative-only lists too.
        per_list_neg = F.softplus(extra_s[3]).mean()
        torch.testing.assert_close(with_negative_list, (3 * base + per_list_neg) / 4)
    else:
        torch.testing.assert_close(with_negative_list, base, rtol=1e-12, atol=1e-12)


def test_mean_over_lists(loss_fn: nn.Module) -> None:
    # The batch loss is the mean of the per-list losses (each computed alone).
    scores, labels, mask = random_batch(4, 7, seed=5)
    alone = torch.stack(
        [loss_fn(scores[i : i + 1], labels[i : i + 1], mask[i : i + 1]) for i in range(4)]
    )
    torch.testing.assert_close(loss_fn(scores, labels, mask), alone.mean(), rtol=1e-10, atol=1e-12)


def test_constants_follow_the_input_device(loss_fn: nn.Module) -> None:
    # On the "meta" device any constant built on the CPU (other than a 0-dim scalar) would make
    # the ops fail, so this checks device placement without a GPU.
    scores, labels, mask = random_batch(2, 5, seed=1)
    try:
        out = loss_fn(scores.to("meta"), labels.to("meta"), mask.to("meta"))
    except NotImplementedError as err:  # an op without a meta kernel: not a device bug
        pytest.skip(f"meta kernel missing: {err}")
    assert out.device.type == "meta" and out.dim() == 0


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device on this machine")
def test_cuda_matches_cpu(loss_fn: nn.Module) -> None:
    scores, labels, mask = random_batch(4, 9, seed=2)
    cpu = loss_fn(scores, labels, mask)
    gpu = loss_fn(scores.cuda(), labels.cuda(), mask.cuda())
    assert gpu.device.type == "cuda"
    torch.testing.assert_close(gpu.cpu(), cpu, rtol=1e-9, atol=1e-10)


def test_half_precision_inputs_are_promoted(loss_fn: nn.Module) -> None:
    scores, labels, mask = random_batch(3, 6, seed=4)
    out = loss_fn(scores.to(torch.bfloat16), labels.to(torch.bfloat16), mask)
    assert out.dtype == torch.float32 and torch.isfinite(out)


# ---------------------------------------- mixed precision (trainer.precision)


def _value_and_grad(
    loss_fn: nn.Module,
    scores: Tensor,
    labels: Tensor,
    mask: Tensor,
    autocast: str | None = None,
    dtype: torch.dtype = torch.bfloat16,
    cast: bool = False,
) -> tuple[Tensor, Tensor]:
    """The loss of ``scores`` (cast to ``dtype`` inside the graph with ``cast``, as a model's
    16-bit output would be), its forward under ``autocast`` on that device type (None: off), and
    its gradient with respect to the float32 ``scores``, taken outside autocast (as Lightning
    does)."""
    s = scores.detach().float().requires_grad_(True)
    with torch.autocast(autocast or "cpu", dtype=dtype, enabled=autocast is not None):
        out = loss_fn(s.to(dtype) if cast else s, labels.float(), mask)
    (grad,) = torch.autograd.grad(out, s)
    return out.detach(), grad


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.stem)
def test_every_loss_forward_is_guarded_for_autocast(path: Path) -> None:
    # docs/DESIGN.md "A loss": forward decorated with xmr.utils.precision.full_precision
    assert hasattr(type(build(path)).forward, "__wrapped__"), path.stem


def test_autocast_leaves_the_loss_in_float32(loss_fn: nn.Module) -> None:
    # Under CPU bfloat16 autocast (trainer.precision=bf16-mixed) einsum and bmm run in bfloat16
    # even on float32 inputs (NeuralNDCG's relaxed DCG and Sinkhorn scaling: off by ~1e-3
    # without the guard); every loss runs with autocast off (xmr.utils.precision
    # .full_precision), so float32 scores give exactly the float32 value and gradient.
    scores, labels, mask = random_batch(6, 9, seed=11)
    want, want_grad = _value_and_grad(loss_fn, scores, labels, mask)
    got, got_grad = _value_and_grad(loss_fn, scores, labels, mask, autocast="cpu")
    assert got.dtype == torch.float32 and got_grad.dtype == torch.float32
    assert torch.equal(got, want) and torch.equal(got_grad, want_grad)


def _separated_scores(b: int, length: int, seed: int) -> Tensor:
    """Scores whose order bfloat16 rounding cannot change: a shuffled grid with steps of
    4 / (L - 1) plus noise below 0.05 (bfloat16 rounds |s| <= 2.05 by at most 0.008)."""
    g = torch.Generator().manual_seed(seed)
    grid = torch.linspace(-2.0, 2.0, length)
    rows = [grid[torch.randperm(length, generator=g)] for _ in range(b)]
    return torch.stack(rows) + 0.05 * torch.rand(b, length, generator=g)


@pytest.mark.parametrize("seed", range(3))
def test_bfloat16_scores_stay_close_to_float32(loss_fn: nn.Module, seed: int) -> None:
    # A bf16-mixed step hands the loss scores rounded to bfloat16 (8 bits of mantissa). With
    # scores far enough apart that rounding keeps their order (the rank-based weights of
    # LambdaLoss and ListMLE's tie order then stay the same) the value stays within 1e-2 and the
    # gradient within 5e-2 (relative, in norm) of float32. Measured over 20 seeds, every config
    # and variant: value <= 1.9e-3, gradient <= 1.8e-2 (the sharpest: approx_ndcg alpha 5,
    # neural_ndcg temperature 0.3); the smooth losses' gradients <= 5e-3.
    _, labels, mask = random_batch(8, 12, seed=seed)
    scores = _separated_scores(8, 12, seed)
    want, want_grad = _value_and_grad(loss_fn, scores, labels, mask)
    got, got_grad = _value_and_grad(loss_fn, scores, labels, mask, autocast="cpu", cast=True)
    assert got.dtype == torch.float32
    assert abs(float(got - want)) <= 1e-2 * abs(float(want)), (float(got), float(want))
    rel = float((got_grad - want_grad).norm() / want_grad.norm())
    assert rel <= 5e-2, rel


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device on this machine")
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "fp16"])
def test_cuda_autocast_leaves_the_loss_in_float32(loss_fn: nn.Module, dtype: torch.dtype) -> None:
    # On the GPU autocast takes matrix products (Sinkhorn's bmm, NeuralNDCG's einsum) to 16
    # bits; the loss runs with autocast off, so float32 scores give the CPU float32 loss up to
    # the kernels' float32 rounding.
    if dtype == torch.bfloat16 and not torch.cuda.is_bf16_supported(including_emulation=False):
        pytest.skip("this GPU has no native bfloat16")
    scores, labels, mask = random_batch(6, 9, seed=11)
    want, want_grad = _value_and_grad(loss_fn, scores, labels, mask)
    got, got_grad = _value_and_grad(
        loss_fn, scores.cuda(), labels.cuda(), mask.cuda(), autocast="cuda", dtype=dtype
    )
    assert got.dtype == torch.float32 and got.device.type == "cuda"
    # (float16 matrix products would be off by ~1e-3 relative)
    torch.testing.assert_close(got.cpu(), want, rtol=2e-5, atol=1e-6)
    torch.testing.assert_close(got_grad.cpu(), want_grad, rtol=2e-4, atol=1e-6)


# ---------------------------------------- bad input


@pytest.mark.parametrize(
    ("scores", "labels", "mask", "match"),
    [
        (torch.zeros(2, 3), torch.zeros(2, 4), torch.ones(2, 3, dtype=torch.bool), "shape"),
        (torch.zeros(3), torch.zeros(3), torch.ones(3, dtype=torch.bool), "shape"),
        (torch.zeros(2, 3), torch.zeros(2, 3), torch.ones(2, 3), "mask must be a bool"),
        (
            torch.zeros(2, 3, dtype=torch.long),
            torch.zeros(2, 3),
            torch.ones(2, 3, dtype=torch.bool),
            "floating",
        ),
    ],
)
def test_bad_inputs_name_the_loss_and_rule(
    loss_fn: nn.Module, scores: Tensor, labels: Tensor, mask: Tensor, match: str
) -> None:
    with pytest.raises(ValueError, match=match) as info:
        loss_fn(scores, labels, mask)
    assert type(loss_fn).__name__ in str(info.value)


@pytest.mark.parametrize(
    ("cls", "kwargs", "match"),
    [
        (RankNetLoss, {"sigma": 0.0}, "RankNetLoss: sigma must be > 0"),
        (LambdaRankLoss, {"k": 0}, "LambdaRankLoss: k must be null"),
        (LambdaRankLoss, {"k": 2.5}, "LambdaRankLoss: k must be null"),
        (LambdaLoss, {"weighting": "ndcg1"}, "LambdaLoss: weighting must be one of"),
        (LambdaLoss, {"weighting": "ndcg2pp", "mu": -1}, "LambdaLoss: mu must be > 0"),
        (NeuralNDCGLoss, {"temperature": 0}, "NeuralNDCGLoss: temperature must be > 0"),
        (NeuralNDCGLoss, {"sinkhorn_iters": -1}, "NeuralNDCGLoss: sinkhorn_iters must be >= 0"),
        (NeuralNDCGTransposedLoss, {"sinkhorn_iters": 1.5}, "sinkhorn_iters must be an integer"),
        (ListNetLoss, {"target": "kl"}, "ListNetLoss: target must be one of"),
        (ApproxNDCGLoss, {"alpha": -2}, "ApproxNDCGLoss: alpha must be > 0"),
        (PointwiseBCELoss, {"pos_weight": 0}, "PointwiseBCELoss: pos_weight must be > 0"),
    ],
)
def test_bad_hyper_parameters_are_rejected(
    cls: type[nn.Module], kwargs: dict[str, Any], match: str
) -> None:
    with pytest.raises(ValueError, match=match):
        cls(**kwargs)


# ---------------------------------------- naive references


def _lists(scores: Tensor, labels: Tensor, mask: Tensor) -> list[tuple[list[float], list[float]]]:
    """Real items of each list as Python floats."""
    out = []
    for s_row, y_row, m_row in zip(scores.tolist(), labels.tolist(), mask.tolist(), strict=True):
        out.append(
            (
                [s for s, m in zip(s_row, m_row, strict=True) if m],
                [y for y, m in zip(y_row, m_row, strict=True) if m],
            )
        )
    return out


def _mean_over_positive_lists(values: Sequence[tuple[float, bool]]) -> float:
    kept = [v for v, ok in values if ok]
    return sum(kept) / len(kept) if kept else 0.0


def _disc(rank: int, k: int | None) -> float:
    return 0.0 if (k is not None and rank > k) else 1.0 / math.log2(rank + 1)


def _idcg(ys: list[float], k: int | None) -> float:
    return sum((2**y - 1) * _disc(r + 1, k) for r, y in enumerate(sorted(ys, reverse=True)))


def naive_ranknet(scores: Tensor, labels: Tensor, mask: Tensor, sigma: float) -> float:
    results = []
    for ss, ys in _lists(scores, labels, mask):
        terms = [
            math.log(1 + math.exp(-sigma * (ss[i] - ss[j])))
            for i in range(len(ss))
            for j in range(len(ss))
            if ys[i] > ys[j]
        ]
        results.append((sum(terms) / len(terms) if terms else 0.0, any(y > 0 for y in ys)))
    return _mean_over_positive_lists(results)


def naive_lambdaloss(
    scores: Tensor,
    labels: Tensor,
    mask: Tensor,
    scheme: str,
    sigma: float,
    k: int | None,
    mu: float = 10.0,
) -> float:
    results = []
    for ss, ys in _lists(scores, labels, mask):
        n = len(ss)
        # Pessimistic ranking: by score descending, the more relevant item last among ties.
        order = sorted(range(n), key=lambda i: (-ss[i], ys[i], i))
        rank = {item: pos + 1 for pos, item in enumerate(order)}
        max_dcg = max(_idcg(ys, k), 1e-10)
        gain = [(2 ** ys[i] - 1) / max_dcg for i in range(n)]
        total = 0.0
        for i in range(n):
            for j in range(n):
                if ys[i] <= ys[j]:
                    continue
                ri, rj = rank[i], rank[j]
                lambdarank = abs(gain[i] - gain[j]) * abs(_disc(ri, k) - _disc(rj, k))
                gap = abs(ri - rj)
                ndcg2 = abs(gain[i] - gain[j]) * abs(
                    1 / math.log2(1 + gap) - 1 / math.log2(2 + gap)
                )
                if k is not None and min(ri, rj) > k:
                    ndcg2 = 0.0
                weight = {
                    "lambdarank": lambdarank,
                    "ndcg2": ndcg2,
                    "ndcg2pp": mu * ndcg2 + lambdarank,
                }[scheme]
                total += weight * math.log2(1 + math.exp(-sigma * (ss[i] - ss[j])))
        results.append((total, any(y > 0 for y in ys)))
    return _mean_over_positive_lists(results)


def naive_neural_ndcg(
    scores: Tensor,
    labels: Tensor,
    mask: Tensor,
    tau: float,
    iters: int,
    k: int | None,
    last: str = "rows",
) -> float:
    results = []
    for ss, ys in _lists(scores, labels, mask):
        n = len(ss)
        p = []
        for r in range(1, n + 1):
            logits = [
                ((n + 1 - 2 * r) * ss[i] - sum(abs(ss[i] - sj) for sj in ss)) / tau
                for i in range(n)
            ]
            top = max(logits)
            exps = [math.exp(v - top) for v in logits]
            p.append([e / sum(exps) for e in exps])

        def norm_rows(m: list[list[float]], n: int = n) -> list[list[float]]:
            return [[v / sum(row) for v in row] for row in m]

        def norm_cols(m: list[list[float]], n: int = n) -> list[list[float]]:
            sums = [sum(m[r][i] for r in range(n)) for i in range(n)]
            return [[m[r][i] / sums[i] for i in range(n)] for r in range(n)]

        for _ in range(iters):
            p = norm_rows(norm_cols(p)) if last == "rows" else norm_cols(norm_rows(p))
        g = [2**y - 1 for y in ys]
        dcg = sum(_disc(r + 1, k) * sum(p[r][i] * g[i] for i in range(n)) for r in range(n))
        idcg = _idcg(ys, k)
        results.append((dcg / idcg if idcg > 0 else 0.0, idcg > 0))
    return -_mean_over_positive_lists(results)


def naive_ndcg(scores: Tensor, labels: Tensor, mask: Tensor, k: int | None) -> float:
    """True NDCG@k (distinct scores assumed), mean over lists with a positive."""
    results = []
    for ss, ys in _lists(scores, labels, mask):
        order = sorted(range(len(ss)), key=lambda i: -ss[i])
        dcg = sum((2 ** ys[i] - 1) * _disc(pos + 1, k) for pos, i in enumerate(order))
        idcg = _idcg(ys, k)
        results.append((dcg / idcg if idcg > 0 else 0.0, idcg > 0))
    return _mean_over_positive_lists(results)


# ---------------------------------------- known values: RankNet


def test_ranknet_hand_computed() -> None:
    # One positive (s = 0.5) above two negatives (s = 1.0, -0.3): two pairs, natural log.
    scores = torch.tensor([[0.5, 1.0, -0.3]])
    labels = torch.tensor([[1.0, 0.0, 0.0]])
    mask = torch.ones(1, 3, dtype=torch.bool)
    expected = (math.log(1 + math.exp(0.5)) + math.log(1 + math.exp(-0.8))) / 2
    assert RankNetLoss()(scores, labels, mask).item() == pytest.approx(expected, rel=1e-6)
    expected_s2 = (math.log(1 + math.exp(1.0)) + math.log(1 + math.exp(-1.6))) / 2
    assert RankNetLoss(sigma=2.0)(scores, labels, mask).item() == pytest.approx(
        expected_s2, rel=1e-6
    )


@pytest.mark.parametrize("sigma", [1.0, 0.5])
def test_ranknet_matches_naive_loop(sigma: float) -> None:
    scores, labels, mask = random_batch(5, 7, seed=21, p_pos=0.4)
    got = RankNetLoss(sigma=sigma)(scores, labels, mask).item()
    assert got == pytest.approx(naive_ranknet(scores, labels, mask, sigma), rel=1e-10)


# ---------------------------------------- known values: LambdaLoss


@pytest.mark.parametrize("scheme", ["lambdarank", "ndcg2", "ndcg2pp"])
def test_lambdaloss_matches_naive_loop_with_graded_labels(scheme: str) -> None:
    scores, labels, mask = random_batch(6, 9, seed=33, p_pos=0.4, ties=True)
    extra = torch.rand(labels.shape, generator=torch.Generator().manual_seed(3)) < 0.4
    labels = (labels + extra.to(labels.dtype) + (scores > 1.0).to(labels.dtype)) * mask  # 0..3
    loss = LambdaLoss(weighting=scheme, sigma=1.3, k=5)  # type: ignore[arg-type]
    expected = naive_lambdaloss(scores, labels, mask, scheme, 1.3, 5)
    assert loss(scores, labels, mask).item() == pytest.approx(expected, rel=1e-10)


def test_lambdarank_hand_computed() -> None:
    # Positive scored 0 below a negative scored 1: ranks 2 and 1, maxDCG = 1, G = (1, 0),
    # |ΔNDCG| = 1 - 1/log2(3); loss = |ΔNDCG| * log2(1 + e^1).
    scores = torch.tensor([[0.0, 1.0]])
    labels = torch.tensor([[1.0, 0.0]])
    mask = torch.ones(1, 2, dtype=torch.bool)
    expected = (1 - 1 / math.log2(3)) * math.log2(1 + math.e)
    assert LambdaRankLoss()(scores, labels, mask).item() == pytest.approx(expected, rel=1e-6)
    # Same with tied scores: the pessimistic tie puts the positive at rank 2, pair loss log2(2) = 1.
    tied = torch.zeros(1, 2)
    assert LambdaRankLoss()(tied, labels, mask).item() == pytest.approx(
        1 - 1 / math.log2(3), rel=1e-6
    )
    # NDCG-Loss2 on two items: gap 1, delta = |1/log2(2) - 1/log2(3)| — the same weight here.
    assert LambdaLoss(weighting="ndcg2")(scores, labels, mask).item() == pytest.approx(
        expected, rel=1e-6
    )


def test_lambdarank_cutoff_hand_computed() -> None:
    # Ranks by score: neg(3.0) 1, neg(2.0) 2, pos(1.0) 3. With k = 1: maxDCG@1 = 1, and only
    # the pair with the rank-1 negative has a non-zero |ΔNDCG@1| = 1 (d(1) = 1, d(3) = 0).
    scores = torch.tensor([[1.0, 3.0, 2.0]])
    labels = torch.tensor([[1.0, 0.0, 0.0]])
    mask = torch.ones(1, 3, dtype=torch.bool)
    expected = 1.0 * math.log2(1 + math.exp(2.0))
    assert LambdaRankLoss(k=1)(scores, labels, mask).item() == pytest.approx(expected, rel=1e-6)


@pytest.mark.parametrize(
    ("scheme", "sigma", "k", "ties"),
    [
        ("lambdarank", 1.0, None, False),
        ("lambdarank", 2.0, 3, False),
        ("lambdarank", 1.0, None, True),
        ("ndcg2", 1.0, None, False),
        ("ndcg2", 1.0, 2, True),
        ("ndcg2pp", 1.0, None, False),
        ("ndcg2pp", 0.7, 4, True),
    ],
)
def test_lambdaloss_matches_naive_loop(
    scheme: str, sigma: float, k: int | None, ties: bool
) -> None:
    scores, labels, mask = random_batch(6, 8, seed=31, p_pos=0.4, ties=ties)
    loss = LambdaLoss(weighting=scheme, sigma=sigma, k=k)  # type: ignore[arg-type]
    expected = naive_lambdaloss(scores, labels, mask, scheme, sigma, k)
    assert loss(scores, labels, mask).item() == pytest.approx(expected, rel=1e-10)


def test_lambdarank_config_is_the_lambdarank_scheme() -> None:
    loss = build(CONF_DIR / "lambdarank.yaml")
    assert isinstance(loss, LambdaRankLoss) and loss.weighting == "lambdarank"
    for name, weighting in (("lambdaloss_ndcg2", "ndcg2"), ("lambdaloss_ndcg2pp", "ndcg2pp")):
        other = build(CONF_DIR / f"{name}.yaml")
        assert isinstance(other, LambdaLoss) and other.weighting == weighting


# ---------------------------------------- known values: ListNet


def test_listnet_normalized_target_hand_computed() -> None:
    # Target (1, 0, 0); p = softmax(1, 0, 0) -> loss = -log(e / (e + 2)).
    scores = torch.tensor([[1.0, 0.0, 0.0]])
    labels = torch.tensor([[1.0, 0.0, 0.0]])
    mask = torch.ones(1, 3, dtype=torch.bool)
    loss = ListNetLoss(target="normalized")
    assert loss(scores, labels, mask).item() == pytest.approx(math.log(math.e + 2) - 1, rel=1e-6)
    # Two positives: target (1/2, 1/2, 0); scores (2, 0, 1).
    scores2 = torch.tensor([[2.0, 0.0, 1.0]])
    labels2 = torch.tensor([[1.0, 1.0, 0.0]])
    z = math.exp(2) + 1 + math.e
    expected = -(0.5 * (2 - math.log(z)) + 0.5 * (0 - math.log(z)))
    assert loss(scores2, labels2, mask).item() == pytest.approx(expected, rel=1e-6)


def test_listnet_softmax_target_hand_computed() -> None:
    # Target softmax(1, 0, 0) = (e, 1, 1) / (e + 2); scores (0, 0, 0) -> p uniform, loss = log 3.
    labels = torch.tensor([[1.0, 0.0, 0.0]])
    mask = torch.ones(1, 3, dtype=torch.bool)
    loss = ListNetLoss(target="softmax")
    assert loss(torch.zeros(1, 3), labels, mask).item() == pytest.approx(math.log(3), rel=1e-6)
    # Scores equal to the labels: p = target, the cross-entropy is the target's entropy.
    t = [math.e / (math.e + 2), 1 / (math.e + 2), 1 / (math.e + 2)]
    entropy = -sum(v * math.log(v) for v in t)
    assert loss(labels.clone(), labels, mask).item() == pytest.approx(entropy, rel=1e-6)


def test_listnet_softmax_target_mass_on_positive_of_51_items() -> None:
    # The PAPER.md trap: softmax(labels) puts e / (e + 50) ≈ 5.2 % on the one positive. With
    # scores equal to the labels the softmax-target loss is already at its minimum (the target
    # entropy), while the normalised target still asks for a larger margin.
    labels = torch.zeros(1, 51)
    labels[0, 0] = 1.0
    mask = torch.ones(1, 51, dtype=torch.bool)
    assert math.e / (math.e + 50) == pytest.approx(0.0516, abs=1e-4)
    scores = labels.clone().requires_grad_(True)
    ListNetLoss(target="softmax")(scores, labels, mask).backward()
    assert scores.grad is not None and scores.grad.abs().max() < 1e-6
    scores.grad = None
    ListNetLoss(target="normalized")(scores, labels, mask).backward()
    assert scores.grad is not None and scores.grad[0, 0] == pytest.approx(
        math.e / (math.e + 50) - 1, rel=1e-5
    )


def test_listnet_default_target_is_normalized() -> None:
    assert ListNetLoss().target == "normalized"
    assert build(CONF_DIR / "listnet.yaml").target == "normalized"


# ---------------------------------------- known values: NeuralNDCG


def test_neural_ndcg_two_items_hand_computed() -> None:
    # n = 2: NeuralSort rows are softmax(s / tau) and softmax(-s / tau), already doubly
    # stochastic: P = [[a, 1 - a], [1 - a, a]], a = sigmoid((s1 - s2) / tau).
    # Labels (1, 0): NeuralNDCG = a + (1 - a) / log2(3).
    scores = torch.tensor([[0.3, 0.8]])
    labels = torch.tensor([[1.0, 0.0]])
    mask = torch.ones(1, 2, dtype=torch.bool)
    for tau in (1.0, 0.5):
        a = 1 / (1 + math.exp(-(0.3 - 0.8) / tau))
        expected = -(a + (1 - a) / math.log2(3))
        for cls in (NeuralNDCGLoss, NeuralNDCGTransposedLoss):
            assert cls(temperature=tau)(scores, labels, mask).item() == pytest.approx(
                expected, rel=1e-6
            )


@pytest.mark.parametrize(
    ("tau", "iters", "k", "seed"),
    [(1.0, 50, None, 0), (0.5, 10, None, 1), (1.0, 50, 2, 2), (2.0, 0, 3, 3)],
)
def test_neural_ndcg_matches_naive_loop(tau: float, iters: int, k: int | None, seed: int) -> None:
    scores, labels, mask = random_batch(4, 6, seed=40 + seed, p_pos=0.4)
    for cls, last in ((NeuralNDCGLoss, "rows"), (NeuralNDCGTransposedLoss, "columns")):
        got = cls(temperature=tau, sinkhorn_iters=iters, k=k)(scores, labels, mask).item()
        expected = naive_neural_ndcg(scores, labels, mask, tau, iters, k, last)
        assert got == pytest.approx(expected, rel=1e-9)


@pytest.mark.parametrize("last", ["rows", "columns"])
@pytest.mark.parametrize("iters", [0, 1, 7, 50])
def test_sinkhorn_hand_written_backward_equals_autograd(last: str, iters: int) -> None:
    scores, _, mask = random_batch(6, 9, seed=90 + iters, p_pos=0.4)
    mask[2, 1:] = False  # a one-item list
    mask[3, :] = False  # an all-padding list: clamped sums, zero gradient
    scores = scores.masked_fill(~mask, 0.0)
    perm, row_real = neural_sort(scores, mask, 0.5)
    weight = torch.randn(perm.shape, dtype=perm.dtype, generator=torch.Generator().manual_seed(1))
    grads = []
    for fn in (sinkhorn, sinkhorn_reference):
        k = perm.detach().clone().requires_grad_()
        out = fn(k, row_real, mask, iters, last)
        (grad,) = torch.autograd.grad((out * weight).sum(), k)
        grads.append((out.detach(), grad))
    torch.testing.assert_close(grads[0][0], grads[1][0], rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(grads[0][1], grads[1][1], rtol=1e-10, atol=1e-12)


def test_sinkhorn_gradcheck() -> None:
    scores, _, mask = random_batch(3, 5, seed=5, p_pos=0.4)
    perm, row_real = neural_sort(scores.masked_fill(~mask, 0.0), mask, 1.0)
    k = perm.detach().clone().requires_grad_()
    assert torch.autograd.gradcheck(lambda x: sinkhorn(x, row_real, mask, 4, "rows"), (k,))


@pytest.mark.parametrize("cls", [NeuralNDCGLoss, NeuralNDCGTransposedLoss])
def test_neural_ndcg_under_vmap_equals_a_loop(cls: type[nn.Module], monkeypatch) -> None:
    # The vectorised ensemble vmaps each loss over its members; the Sinkhorn vmap rule folds the
    # members into the list dimension. Values and gradients must equal one call per member.
    folded = []
    apply = neural_ndcg_module._Sinkhorn.apply
    monkeypatch.setattr(
        neural_ndcg_module._Sinkhorn, "apply", lambda *a: folded.append(a[0].shape) or apply(*a)
    )
    loss = cls(temperature=0.7, sinkhorn_iters=15)
    batches = [random_batch(4, 7, seed=60 + g, p_pos=0.4) for g in range(3)]
    scores = torch.stack([b[0] for b in batches]).requires_grad_()
    labels = torch.stack([b[1] for b in batches])
    mask = torch.stack([b[2] for b in batches])
    values = torch.vmap(loss)(scores, labels, mask)  # (3,)
    (grad,) = torch.autograd.grad(values.sum(), scores)
    assert torch.Size([12, 7, 7]) in folded  # the 3 members' 4 lists went through in one call
    for g in range(3):
        s = scores[g].detach().clone().requires_grad_()
        want = loss(s, labels[g], mask[g])
        want.backward()
        torch.testing.assert_close(values[g], want, rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(grad[g], s.grad, rtol=1e-9, atol=1e-12)


def test_neural_ndcg_score_gradients_equal_the_autograd_reference(monkeypatch) -> None:
    scores, labels, mask = random_batch(5, 8, seed=11, p_pos=0.4)
    for cls in (NeuralNDCGLoss, NeuralNDCGTransposedLoss):
        got = []
        for fn in (neural_ndcg_module.sinkhorn, neural_ndcg_module.sinkhorn_reference):
            monkeypatch.setattr(neural_ndcg_module, "sinkhorn", fn)
            s = scores.clone().requires_grad_()
            value = cls(temperature=0.7, sinkhorn_iters=20)(s, labels, mask)
            value.backward()
            got.append((value.detach(), s.grad))
        monkeypatch.undo()
        torch.testing.assert_close(got[0][0], got[1][0], rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(got[0][1], got[1][1], rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("k", [None, 1, 3])
def test_neural_ndcg_tends_to_ndcg_as_temperature_vanishes(k: int | None) -> None:
    g = torch.Generator().manual_seed(7)
    b, length = 8, 9
    # Distinct scores (a random permutation of a grid with step 0.1), random labels and padding.
    scores = torch.stack([torch.randperm(length, generator=g) for _ in range(b)]).double() * 0.1
    labels = (torch.rand(b, length, generator=g) < 0.35).double()
    labels[:, 0] = 1.0
    mask = torch.rand(b, length, generator=g) > 0.2
    mask[:, 0] = True
    labels = labels * mask
    target = naive_ndcg(scores, labels, mask, k)
    errors = []
    for tau in (1.0, 0.1, 0.01, 1e-3):
        got = -NeuralNDCGLoss(temperature=tau, k=k)(scores, labels, mask).item()
        got_t = -NeuralNDCGTransposedLoss(temperature=tau, k=k)(scores, labels, mask).item()
        errors.append(max(abs(got - target), abs(got_t - target)))
    assert errors[-1] < 1e-6, errors
    assert errors[0] > errors[-1]


def test_neural_ndcg_perfect_ranking_at_low_temperature_is_minus_one() -> None:
    scores = torch.tensor([[3.0, 2.0, 1.0, 0.0, 7.0]])
    labels = torch.tensor([[1.0, 1.0, 0.0, 0.0, 1.0]])
    mask = torch.tensor([[True, True, True, True, False]])  # the padded item has the top score
    assert NeuralNDCGLoss(temperature=1e-3)(scores, labels, mask).item() == pytest.approx(
        -1.0, abs=1e-6
    )


# ---------------------------------------- known values: extras


def test_approx_ndcg_matches_published_example() -> None:
    # TF-Ranking's ApproxNDCGLoss documentation (temperature 0.1 = alpha 10):
    # y = [[1, 0]], s = [[0.6, 0.8]] -> -0.655107; ragged [[1, 0], [0, 1, 0]] -> -0.80536866.
    loss = ApproxNDCGLoss(alpha=10.0)
    one = loss(
        torch.tensor([[0.6, 0.8]]), torch.tensor([[1.0, 0.0]]), torch.ones(1, 2, dtype=torch.bool)
    )
    assert one.item() == pytest.approx(-0.655107, abs=1e-6)
    scores = torch.tensor([[0.6, 0.8, 0.0], [0.5, 0.8, 0.4]])
    labels = torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]])
    mask = torch.tensor([[True, True, False], [True, True, True]])
    assert loss(scores, labels, mask).item() == pytest.approx(-0.80536866, abs=1e-6)


def test_listmle_hand_computed() -> None:
    # Labels (1, 0, 0), scores (1, 2, 0): the tie between the negatives is broken by score,
    # so pi = (0, 1, 2): loss = [lse(1, 2, 0) - 1] + [lse(2, 0) - 2] + [0 - 0].
    def lse(*v: float) -> float:
        return math.log(sum(math.exp(x) for x in v))

    scores = torch.tensor([[1.0, 2.0, 0.0]], dtype=torch.float64)
    labels = torch.tensor([[1.0, 0.0, 0.0]], dtype=torch.float64)
    mask = torch.ones(1, 3, dtype=torch.bool)
    expected = (lse(1, 2, 0) - 1) + (lse(2, 0) - 2)
    assert ListMLELoss()(scores, labels, mask).item() == pytest.approx(expected, rel=1e-12)


def test_listmle_is_the_best_tie_order_nll() -> None:
    # With label ties, the loss is the smallest Plackett-Luce NLL over all tie-consistent orders.
    scores = torch.tensor([[0.3, -1.2, 0.9, 0.1, 2.0]], dtype=torch.float64)
    labels = torch.tensor([[1.0, 1.0, 0.0, 0.0, 0.0]], dtype=torch.float64)
    mask = torch.ones(1, 5, dtype=torch.bool)
    s = scores[0].tolist()

    def nll(order: Sequence[int]) -> float:
        return sum(
            math.log(sum(math.exp(s[j]) for j in order[r:])) - s[order[r]]
            for r in range(len(order))
        )

    best = min(
        nll(list(p) + list(q))
        for p in itertools.permutations([0, 1])
        for q in itertools.permutations([2, 3, 4])
    )
    assert ListMLELoss()(scores, labels, mask).item() == pytest.approx(best, rel=1e-12)


def test_pointwise_bce_matches_torch() -> None:
    scores, labels, mask = random_batch(4, 6, seed=9)
    per_list = [
        F.binary_cross_entropy_with_logits(scores[i][mask[i]], labels[i][mask[i]]) for i in range(4)
    ]
    expected = torch.stack(per_list).mean()
    torch.testing.assert_close(PointwiseBCELoss()(scores, labels, mask), expected)
    weighted = [
        F.binary_cross_entropy_with_logits(
            scores[i][mask[i]],
            labels[i][mask[i]],
            pos_weight=torch.tensor(3.0, dtype=torch.float64),
        )
        for i in range(4)
    ]
    torch.testing.assert_close(
        PointwiseBCELoss(pos_weight=3.0)(scores, labels, mask), torch.stack(weighted).mean()
    )


# ---------------------------------------- learning


def test_every_loss_learns_to_rank_synthetic_lists(loss_fn: nn.Module) -> None:
    # Synthetic lists: 10 items with 8-d features; the positive is the item that a hidden linear
    # scorer ranks first. A linear model started at w = 0 (all scores equal) and trained with the
    # loss must put the positive first on fresh synthetic lists far more often than chance (0.1).
    g = torch.Generator().manual_seed(0)
    w_true = torch.randn(8, generator=g, dtype=torch.float64)

    def lists(b: int) -> tuple[Tensor, Tensor, Tensor]:
        x = torch.randn(b, 10, 8, generator=g, dtype=torch.float64)
        y = F.one_hot((x @ w_true).argmax(-1), 10).to(torch.float64)
        mask = torch.ones(b, 10, dtype=torch.bool)
        mask[: b // 2, 7:] = False  # half the lists padded to 7 items (never the positive)
        y = y * mask
        keep = y.sum(-1) > 0
        return x[keep], y[keep], mask[keep]

    x, y, mask = lists(32)
    w = torch.zeros(8, dtype=torch.float64, requires_grad=True)
    opt = torch.optim.Adam([w], lr=0.1)
    for _ in range(40):
        opt.zero_grad()
        loss_fn(x @ w, y, mask).backward()
        opt.step()
    xt, yt, mt = lists(200)
    scores = (xt @ w.detach()).masked_fill(~mt, -math.inf)
    hit_at_1 = (yt.gather(1, scores.argmax(-1, keepdim=True)) > 0).double().mean().item()
    assert hit_at_1 > 0.6, f"hit@1 after training = {hit_at_1:.2f}"
