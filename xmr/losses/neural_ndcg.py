"""NeuralNDCG and NeuralNDCG-Transposed: NDCG through a relaxed (NeuralSort) permutation matrix."""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor, nn

from xmr.losses._common import check_cutoff, check_positive, has_positive, mean_over_lists, prepare
from xmr.metrics.ranking import dcg_discounts, dcg_gains, ideal_dcg
from xmr.utils.precision import full_precision


def neural_sort(scores: Tensor, mask: Tensor, temperature: float) -> tuple[Tensor, Tensor]:
    """Deterministic NeuralSort relaxation (Grover et al. 2019) of the sorting permutation.

    For a list with ``n`` real items, row ``r = 1..n`` (rank) of the relaxed permutation matrix is
    ``softmax_i(((n + 1 - 2r) * s_i - sum_j |s_i - s_j|) / temperature)`` over the real items
    ``i, j``; as ``temperature -> 0`` row ``r`` tends to the one-hot of the r-th largest score.

    Padded items take no part: ``n`` counts real items only, padded columns get probability 0 and
    rows ``r > n`` are all 0, so the real ``n x n`` block equals that of the unpadded list.

    Args:
        scores: ``(B, L)`` scores, 0 at padding.
        mask: ``(B, L)`` bool, True = real.
        temperature: softmax temperature, > 0.

    Returns:
        ``(B, L, L)`` matrix ``P[b, r, i]`` (row = rank, column = item) and the ``(B, L)`` bool
        mask of its real rows (``r <= n``).
    """
    length = scores.shape[-1]
    m = mask.to(scores.dtype)  # (B, L)
    n = m.sum(dim=-1, keepdim=True)  # (B, 1) real items per list
    # sum_j |s_i - s_j| over real j.
    abs_sum = ((scores[:, :, None] - scores[:, None, :]).abs() * m[:, None, :]).sum(-1)  # (B, L)
    rank = torch.arange(1, length + 1, device=scores.device, dtype=scores.dtype)  # (L,)
    coef = n + 1.0 - 2.0 * rank[None, :]  # (B, L): n + 1 - 2r
    logits = (coef[:, :, None] * scores[:, None, :] - abs_sum[:, None, :]) / temperature
    row_real = rank[None, :] <= n  # (B, L): rank rows r <= n
    # Padded columns -> -inf; rows beyond n (incl. all-padding lists) -> any finite value, zeroed.
    logits = logits.masked_fill(~mask[:, None, :], float("-inf"))
    logits = logits.masked_fill(~row_real[:, :, None], 0.0)
    valid = (row_real[:, :, None] & mask[:, None, :]).to(scores.dtype)  # (B, L, L)
    return torch.softmax(logits, dim=-1) * valid, row_real


def sinkhorn_reference(
    matrix: Tensor,
    row_real: Tensor,
    col_real: Tensor,
    iterations: int,
    last: Literal["rows", "columns"] = "rows",
    eps: float = 1e-10,
) -> Tensor:
    """:func:`sinkhorn` written as plain tensor ops, differentiated by autograd (the reference
    the fast path is tested against, and the forward-only path: no gradient, no history kept)."""
    one = matrix.new_ones(())
    u = row_real.to(matrix.dtype)  # (B, L) row scaling
    v = col_real.to(matrix.dtype)  # (B, L) column scaling

    def scale_rows(v: Tensor) -> Tensor:  # rows of diag(u) K diag(v) sum to 1
        row_sum = torch.einsum("bri,bi->br", matrix, v).clamp(min=eps)  # (B, L)
        return torch.where(row_real, 1.0 / row_sum, one)

    def scale_columns(u: Tensor) -> Tensor:  # columns sum to 1
        col_sum = torch.einsum("bri,br->bi", matrix, u).clamp(min=eps)  # (B, L)
        return torch.where(col_real, 1.0 / col_sum, one)

    for _ in range(iterations):
        if last == "rows":
            v = scale_columns(u)
            u = scale_rows(v)
        else:
            u = scale_rows(v)
            v = scale_columns(u)
    return u[:, :, None] * matrix * v[:, None, :]


def _side(i: int, rows_first: bool) -> int:
    """Which scaling vector half-round ``i`` produces: 0 = u (rows), 1 = v (columns)."""
    return 0 if (i % 2 == 0) == rows_first else 1


class _Sinkhorn(torch.autograd.Function):
    """Sinkhorn scaling with a hand-written backward of the unrolled iterations.

    Forward (no graph): the scaling vector and pre-activation of every half-round are kept,
    ``(2T, B, L)`` each. Backward: the same recursion in reverse, one batched vector-matrix
    product and one vector product per half-round; the matrix gradient's outer-product terms of
    all half-rounds are summed by two batched products at the end. Autograd of
    :func:`sinkhorn_reference` records ~6 nodes per half-round instead — at 50 rounds over
    32 lists of 51 that was half of a NeuralNDCG training step on the CPU
    (``benchmarks/RESULTS.md``). Every matrix-vector product is taken as ``xᵀ M`` (row vector
    times matrix), 2-3x faster than ``M x`` for these shapes on the CPU.
    """

    @staticmethod
    def forward(K, row_real, col_real, iterations, last, eps):  # type: ignore[override]
        B, L, _ = K.shape
        Kt = K.transpose(1, 2).contiguous()  # K v = (vᵀ Kᵀ)ᵀ
        u0, v0 = row_real.to(K.dtype), col_real.to(K.dtype)  # (B, L)
        rows_first = last == "columns"  # the half-round that produces u comes first
        n = 2 * iterations
        out = K.new_empty(n, B, L)  # the scaling vector each half-round produced
        pre = K.new_empty(n, B, L)  # its pre-activation (K v or Kᵀ u)
        # Side 0 produces u = 1 / (K v) on real rows (v @ Kᵀ), side 1 v = 1 / (Kᵀ u) on real
        # columns (u @ K); padded rows / columns get 1.
        vecs, mats, pads = [u0, v0], (Kt, K), (~row_real, ~col_real)
        for i in range(n):
            side = _side(i, rows_first)
            x = vecs[1 - side]
            torch.bmm(x.unsqueeze(1), mats[side], out=pre[i].unsqueeze(1))
            vecs[side] = (
                torch.clamp(pre[i], min=eps, out=out[i]).reciprocal_().masked_fill_(pads[side], 1.0)
            )
        u, v = vecs
        # The scaling history goes out as extra (non-differentiable) outputs: setup_context
        # saves it, and the vmap rule below can reshape it.
        return u[:, :, None] * K * v[:, None, :], Kt, u, v, out, pre

    @staticmethod
    def setup_context(ctx, inputs, output):  # type: ignore[override]
        K, row_real, col_real, iterations, last, eps = inputs
        _, Kt, u, v, out, pre = output
        ctx.mark_non_differentiable(Kt, u, v, out, pre)
        ctx.rows_first, ctx.eps, ctx.n = last == "columns", eps, 2 * iterations
        ctx.save_for_backward(K, Kt, u, v, row_real, col_real, out, pre)

    @staticmethod
    def vmap(info, in_dims, K, row_real, col_real, iterations, last, eps):  # type: ignore[override]
        # Lists are independent: the vmapped dimension (the vectorised ensemble's members) folds
        # into the list dimension, one call serves all members.
        size = info.batch_size

        def fold(x: Tensor, dim: int | None) -> Tensor:
            x = x.movedim(dim, 0) if dim is not None else x.expand(size, *x.shape)
            return x.reshape(-1, *x.shape[2:])

        res = _Sinkhorn.apply(
            fold(K, in_dims[0]),
            fold(row_real, in_dims[1]),
            fold(col_real, in_dims[2]),
            iterations,
            last,
            eps,
        )
        out, Kt, u, v, hist_out, hist_pre = res
        lists = out.shape[0] // size
        first = [x.view(size, lists, *x.shape[1:]) for x in (out, Kt, u, v)]
        hist = [x.view(x.shape[0], size, lists, *x.shape[2:]) for x in (hist_out, hist_pre)]
        return (*first, *hist), (0, 0, 0, 0, 1, 1)

    @staticmethod
    def backward(ctx, grad, *_unused):  # type: ignore[override]
        K, Kt, u, v, row_real, col_real, out, pre = ctx.saved_tensors
        u0, v0 = row_real.to(K.dtype), col_real.to(K.dtype)
        n, rows_first = ctx.n, ctx.rows_first
        G = grad * K  # (B, L, L)
        dK = grad * (u[:, :, None] * v[:, None, :])
        du = torch.bmm(v.unsqueeze(1), G.transpose(1, 2)).squeeze(1)  # (G v): (B, L)
        dv = torch.bmm(u.unsqueeze(1), G).squeeze(1)  # (Gᵀ u): (B, L)
        if n == 0:
            return dK, None, None, None, None, None
        r0 = 0 if rows_first else 1  # half-rounds r0, r0 + 2, ... produced u
        c0 = 1 - r0
        # d(1/clamp(x, eps))/dx = -1/x² where x >= eps on a real row/column, else 0.
        real = torch.empty(n, *u.shape, dtype=torch.bool, device=K.device)
        real[r0::2], real[c0::2] = row_real, col_real
        factor = torch.where(real & (pre >= ctx.eps), -(out * out), 0.0)  # (n, B, L)
        d = torch.empty_like(out)  # gradient at each pre-activation
        # The gradient at vector side s flows back through its pre-activation to the other
        # vector: K d for side 1 (d @ Kᵀ), Kᵀ d for side 0 (d @ K).
        grads, live, mats = [du, dv], [True, True], (K, Kt)  # live False: exactly zero
        for i in range(n - 1, -1, -1):
            side = _side(i, rows_first)
            other = 1 - side
            torch.mul(grads[side], factor[i], out=d[i])
            back = torch.bmm(d[i].unsqueeze(1), mats[side]).squeeze(1)
            grads[other] = grads[other] + back if live[other] else back
            live[side], live[other] = False, True
        # Inputs of each half-round: the previous half-round's output (or the initial vector).
        x = torch.empty_like(out)
        x[1:] = out[:-1]
        x[0] = v0 if rows_first else u0
        # dK += Σ_u-rounds d_i x_iᵀ + Σ_v-rounds x_i d_iᵀ, each one batched product over rounds.
        dK = dK + torch.bmm(d[r0::2].permute(1, 2, 0), x[r0::2].transpose(0, 1))
        dK = dK + torch.bmm(x[c0::2].permute(1, 2, 0), d[c0::2].transpose(0, 1))
        return dK, None, None, None, None, None


@full_precision
def sinkhorn(
    matrix: Tensor,
    row_real: Tensor,
    col_real: Tensor,
    iterations: int,
    last: Literal["rows", "columns"] = "rows",
    eps: float = 1e-10,
) -> Tensor:
    """Sinkhorn scaling of non-negative ``(B, L, L)`` matrices toward doubly stochastic ones.

    Alternately divides each column and each row by its sum, ``iterations`` times (a fixed
    number: no data-dependent early stop, so no host-device synchronisation). ``last`` names the
    marginal normalised last, which is therefore exact: ``"rows"`` (each row sums to 1) or
    ``"columns"``. Only the real block (``row_real (B, L)`` x ``col_real (B, L)``) is scaled;
    padded rows and columns must be 0 on entry and stay 0 with a finite gradient.

    Computed in the equivalent scaling-vector form ``diag(u) K diag(v)``: each round is two
    batched matrix-vector products, and the backward stores vectors, not ``(B, L, L)`` matrices.
    The backward is written by hand (:class:`_Sinkhorn`; equal to autograd of
    :func:`sinkhorn_reference` up to float rounding, ``tests/test_losses.py``); under
    ``torch.vmap`` (the vectorised ensemble's per-member losses) the vmapped lists fold into
    one call. Under autocast it runs in float32 (:func:`xmr.utils.precision.full_precision`).
    """
    if last not in ("rows", "columns"):
        raise ValueError(f"sinkhorn: last must be 'rows' or 'columns', got {last!r}")
    # Under vmap the wrapped tensor does not report requires_grad; grad mode still tells.
    wrapped = torch._C._functorch.is_functorch_wrapped_tensor(matrix)
    if not torch.is_grad_enabled() or not (matrix.requires_grad or wrapped):
        # forward only (evaluation): nothing to keep for a backward
        return sinkhorn_reference(matrix, row_real, col_real, iterations, last, eps)
    return _Sinkhorn.apply(matrix, row_real, col_real, int(iterations), last, float(eps))[0]


class _NeuralNDCGBase(nn.Module):
    """Shared NeuralSort + Sinkhorn pipeline; subclasses say how ``P`` meets gains and discounts."""

    sinkhorn_last: Literal["rows", "columns"] = "rows"

    def __init__(
        self, temperature: float = 1.0, sinkhorn_iters: int = 50, k: int | None = None
    ) -> None:
        super().__init__()
        name = type(self).__name__
        self.temperature = check_positive(name, "temperature", temperature)
        if isinstance(sinkhorn_iters, bool) or int(sinkhorn_iters) != sinkhorn_iters:
            raise ValueError(f"{name}: sinkhorn_iters must be an integer, got {sinkhorn_iters!r}")
        if int(sinkhorn_iters) < 0:
            raise ValueError(f"{name}: sinkhorn_iters must be >= 0, got {sinkhorn_iters!r}")
        self.sinkhorn_iters = int(sinkhorn_iters)
        self.k = check_cutoff(name, k)

    def extra_repr(self) -> str:
        return f"temperature={self.temperature}, sinkhorn_iters={self.sinkhorn_iters}, k={self.k}"

    def relaxed_dcg(self, perm: Tensor, gain: Tensor, discount: Tensor) -> Tensor:
        """``(B,)`` relaxed DCG from ``perm (B, L, L)``, ``gain (B, L)``, ``discount (L,)``."""
        raise NotImplementedError

    @full_precision
    def forward(self, scores: Tensor, labels: Tensor, mask: Tensor) -> Tensor:
        """``-mean NeuralNDCG@k`` of ``scores (B, L)``, ``labels (B, L)``, ``mask (B, L)``."""
        s, y = prepare(type(self).__name__, scores, labels, mask)  # (B, L) each
        perm, row_real = neural_sort(s, mask, self.temperature)  # (B, L, L), (B, L)
        perm = sinkhorn(perm, row_real, mask, self.sinkhorn_iters, self.sinkhorn_last)
        gain = dcg_gains(y, mask)  # (B, L)
        positions = torch.arange(1, s.shape[-1] + 1, device=s.device, dtype=s.dtype)  # (L,)
        discount = dcg_discounts(positions, self.k)  # (L,)
        dcg = self.relaxed_dcg(perm, gain, discount)  # (B,)
        ndcg = dcg / ideal_dcg(gain, self.k).clamp(min=1e-10)  # (B,)
        return -mean_over_lists(ndcg, has_positive(y, mask), s)


class NeuralNDCGLoss(_NeuralNDCGBase):
    """Pobrotyn & Białobrzeski 2021, "NeuralNDCG: Direct Optimisation of a Ranking Metric via
    Differentiable Relaxation of Sorting" (arXiv:2102.07831). Also allRank's ``neuralNDCG``.

    ``P`` is the NeuralSort relaxation of the permutation matrix that sorts the scores
    (:func:`neural_sort`, temperature ``temperature``), made approximately doubly stochastic by
    ``sinkhorn_iters`` rounds of Sinkhorn scaling (:func:`sinkhorn`). ``P @ g`` is the relaxed
    sorted gain vector, so with gains ``g_i = 2^y_i - 1`` and discounts ``d_r = 1 / log2(r + 1)``
    (0 beyond the cut-off ``k``; ``None`` = the full list)::

        NeuralNDCG@k = sum_{r <= k} d_r * (P @ g)_r / IDCG@k,     loss = -mean NeuralNDCG@k

    As ``temperature -> 0`` (distinct scores), ``P`` tends to the true permutation matrix and
    NeuralNDCG to NDCG. The loss is negative, in ``[-1, 0]`` up to Sinkhorn tolerance.

    Padding: padded items are left out of ``P`` entirely (their columns are 0 and ``n`` counts
    real items only), so they can never be sorted into a real position, and the value does not
    depend on padding. allRank reaches the same effect by masking scores to -1e8.

    Reduction: mean over lists with at least one real positive (IDCG > 0); lists without a
    positive are skipped.

    Args:
        temperature: NeuralSort temperature ``tau`` > 0.
        sinkhorn_iters: Sinkhorn rounds (allRank: at most 50, with early stop at tolerance 1e-6;
            here a fixed count, 0 = no scaling).
        k: NDCG cut-off; ``None`` = the full list.

    Shapes: ``scores``, ``labels``, ``mask`` ``(B, L)``; returns a scalar. Memory ``O(B L^2)``.
    """

    def relaxed_dcg(self, perm: Tensor, gain: Tensor, discount: Tensor) -> Tensor:
        sorted_gain = torch.einsum("bri,bi->br", perm, gain)  # (B, L): expected gain at rank r
        return (sorted_gain * discount[None, :]).sum(dim=-1)


class NeuralNDCGTransposedLoss(_NeuralNDCGBase):
    """Pobrotyn & Białobrzeski 2021, "NeuralNDCG: Direct Optimisation of a Ranking Metric via
    Differentiable Relaxation of Sorting", the *transposed* variant NeuralNDCG^T (allRank's
    ``neuralNDCG_transposed``).

    The same relaxed ``P`` as :class:`NeuralNDCGLoss`, read by columns: ``P^T @ d`` gives each
    item its expected discount (a distribution over ranks per item), and::

        NeuralNDCG^T@k = sum_i g_i * (P^T @ d)_i / IDCG@k,     loss = -mean NeuralNDCG^T@k

    with ``d_r = 0`` beyond ``k``. Since ``d^T (P g) = g^T (P^T d)``, the two variants differ only
    through ``P``: here Sinkhorn normalises columns last, so each item's rank distribution sums to
    exactly 1, whereas :class:`NeuralNDCGLoss` makes each rank's item distribution exact. With
    enough Sinkhorn rounds the two values coincide. Padding, reduction, arguments and shapes as
    :class:`NeuralNDCGLoss`.
    """

    sinkhorn_last = "columns"

    def relaxed_dcg(self, perm: Tensor, gain: Tensor, discount: Tensor) -> Tensor:
        item_discount = torch.einsum("bri,r->bi", perm, discount)  # (B, L): expected discount
        return (gain * item_discount).sum(dim=-1)
