"""A fast functional forward of ``nn.TransformerEncoder`` for the ranker's short lists, and a
cheap dropout.

At the paper's shape (32 lists × 51 items, width 64, 4 heads of 16) a training step is dominated
not by matrix products but by what surrounds them. Measured on the 2-core CPU, 1 thread
(``benchmarks/RESULTS.md``): ``F.dropout`` drew its Bernoulli masks at ~1 µs per 1,000 elements
(a ListNet step took 29.9 ms with dropout, 16.5 ms without); ``nn.MultiheadAttention`` moves ``batch_first`` inputs to sequence-first
and back, several copies per layer. This module runs the same computation with the same
parameters (the modules stay ``nn.TransformerEncoderLayer``, so state dicts and checkpoints are
unchanged):

* :func:`encoder_layer` — one ``nn.TransformerEncoderLayer`` (``batch_first=True``, pre- or
  post-norm, ReLU or GELU) from its parameters: fused QKV projection, attention by
  ``scaled_dot_product_attention`` (or, with attention dropout on the CPU, in head-major order
  with a hand-written backward, :func:`attention`), dropout by :func:`masked` with the
  scales folded into the next linear map. In eval mode it equals the module's output up to float
  rounding (``tests/test_encoder.py``).
* :func:`dropout` — inverted dropout whose keep mask comes from 16 random bits per element
  (four per 64-bit draw of the generator) instead of one Bernoulli draw each: keep probability
  ``1 - p'`` with ``p' = round(p · 65536) / 65536`` (``|p' - p| ≤ 7.7e-6``), output scaled by
  ``1 / (1 - p')`` so the expectation is the input. CPU only: on a GPU (which draws Bernoulli
  masks fast) and under ``torch.func`` transforms it is ``F.dropout``. Draws come from the default
  CPU generator, so ``seed_everything`` makes runs repeatable as before (the masks differ from
  ``F.dropout``'s).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["keep_mask", "key_mask", "masked", "dropout", "attention", "encoder_layer", "encode"]

_BITS = 16
_LEVELS = 1 << _BITS  # 65,536


def _lanes(count: int, device: torch.device | None = None) -> Tensor:
    """``count`` uniform int16 values: ``randint`` over the whole int64 range gives 64 random
    bits per draw, four int16 lanes."""
    words = torch.randint(
        -(2**63), 2**63 - 1, ((count + 3) // 4,), dtype=torch.int64, device=device
    )
    return words.view(torch.int16)[:count]  # uniform over [-32768, 32767]


def _keep_from_lanes(lanes: Tensor, drop: int) -> Tensor:
    """The float32 keep mask (1 or 0) of ``lanes``: lanes below ``t = drop - 32768`` are dropped.

    Float arithmetic instead of a bool compare + cast (2-5x slower on the CPU): lanes are
    integers (exact in float32, not in bfloat16 or float16), so ``lanes - (t - 1)`` is >= 1 when
    kept and <= 0 when dropped.
    """
    return lanes.to(torch.float32).sub_(drop - _LEVELS // 2 - 1).clamp_(0.0, 1.0)


def keep_mask(
    shape: torch.Size | tuple[int, ...], p: float, device: torch.device | None = None
) -> tuple[Tensor, float]:
    """A random float32 keep mask ``(shape)`` — 1 with probability ``1 - p'``, else 0 — and the
    inverse keep probability ``1 / (1 - p')``; ``p' = round(p · 65536) / 65536``."""
    drop = round(p * _LEVELS)
    lanes = _lanes(math.prod(shape), device).view(shape)
    return _keep_from_lanes(lanes, drop), _LEVELS / (_LEVELS - drop)


def key_mask(mask: Tensor) -> Tensor | None:
    """The attention key mask ``(N, 1, 1, L)`` of a ``(N, L)`` padding mask (True = real item), or
    None when no item is padded (the usual 51-candidate lists: no masking work). The check reads
    the mask on the host, so it is made on the CPU only (on a GPU it would synchronise)."""
    if mask.device.type == "cpu" and bool(mask.all()):
        return None
    return mask.view(mask.shape[0], 1, 1, mask.shape[1])


def _use_fast(x: Tensor) -> bool:
    # GPUs draw Bernoulli masks fast; torch.func transforms (vmap) need F.dropout's rules.
    return x.device.type == "cpu" and not torch._C._functorch.is_functorch_wrapped_tensor(x)


def masked(x: Tensor, p: float, training: bool) -> tuple[Tensor, float]:
    """Dropout without its scale: ``(x ⊙ m, 1 / (1 - p'))``, for callers that fold the scale into
    a following linear map or sum; ``(x, 1.0)`` when not ``training`` or ``p == 0``."""
    if not training or p <= 0.0:
        return x, 1.0
    if not 0.0 <= p < 1.0:
        raise ValueError(f"dropout probability {p} not in [0, 1)")
    if not _use_fast(x):
        return F.dropout(x, p, True), 1.0
    m, scale = keep_mask(x.shape, p, x.device)
    return x * m.to(x.dtype), scale


def dropout(x: Tensor, p: float, training: bool) -> Tensor:
    """Inverted dropout with 16-bit keep masks (see the module docstring); identity when not
    ``training`` or ``p == 0``; ``F.dropout`` off the CPU and under ``torch.func`` transforms."""
    y, scale = masked(x, p, training)
    return y if scale == 1.0 else y.mul_(scale)


#: (list, head) slices per block of :class:`_HeadAttention`: a block's weights, 64 · 51 · 51
#: floats = 666 kB, stay in cache through scores, softmax, mask and product (the vectorised
#: ensemble has E times the lists: unblocked, its weights streamed through memory at ~3x the
#: time per list).
ATTENTION_BLOCK = 64


class _HeadAttention(torch.autograd.Function):
    """Attention with dropout on the weights, from the fused projection ``qkv``.

    ``qkv`` is copied once into head-major order ``(3, heads · B, L, d)``, so that every batched
    product runs over all (list, head) slices of a block at once, and the gradient is assembled
    in that order and copied back once (``nn.MultiheadAttention``'s layout needed several copies
    per direction and a stack of the q/k/v gradients). The weights — ``(heads · B, L, L)``,
    1.3 MB at the paper's shape — go through scores, softmax, mask and product in blocks of
    :data:`ATTENTION_BLOCK` slices, in cache; each block's softmax output and keep mask (as
    :func:`keep_mask`) are stored for the backward.

    ``qkv (B, L, 3H)`` contiguous, ``bias (B, 1, L)`` additive key mask (0 or -inf) or None when
    no key is padded; returns the output ``(B, L, H)`` without the dropout scale, and the scale.
    """

    @staticmethod
    def forward(ctx, qkv, heads, bias, p):  # type: ignore[override]
        B, L, H3 = qkv.shape
        d = H3 // (3 * heads)
        n = heads * B
        alpha = d**-0.5
        hm = qkv.view(B, L, 3, heads, d).permute(2, 3, 0, 1, 4).reshape(3, n, L, d)  # one copy
        q, k, v = hm[0], hm[1], hm[2]  # (heads · B, L, d) each, contiguous
        if bias is not None:
            bias = bias.expand(heads, B, 1, L).reshape(n, 1, L)
        drop = round(p * _LEVELS)
        lanes = _lanes(n * L * L).view(n, L, L)  # drawn once; turned into masks per block
        out = qkv.new_empty(n, L, d)
        none = qkv.new_empty(())
        saved: list[Tensor] = []
        for s in range(0, n, ATTENTION_BLOCK):
            b = slice(s, s + ATTENTION_BLOCK)
            kt = k[b].transpose(1, 2)
            if bias is None:
                w = torch.baddbmm(none, q[b], kt, beta=0.0, alpha=alpha)
            else:
                w = torch.baddbmm(bias[b], q[b], kt, alpha=alpha)
            w = torch.softmax(w, -1)  # (block, L, L)
            # as keep_mask; the threshold compared in float32 (int16 lanes are exact there, not
            # in bfloat16 under autocast), the 0/1 mask then in qkv's dtype (a no-op in float32)
            m = _keep_from_lanes(lanes[b], drop).to(qkv.dtype)
            torch.bmm(w * m, v[b], out=out[b])
            saved += [w, m]
        ctx.heads, ctx.alpha = heads, alpha
        ctx.save_for_backward(hm, *saved)
        out = out.view(heads, B, L, d).permute(1, 2, 0, 3).reshape(B, L, heads * d)  # one copy
        return out, _LEVELS / (_LEVELS - drop)

    @staticmethod
    def backward(ctx, grad, _grad_scale):  # type: ignore[override]
        hm, *saved = ctx.saved_tensors
        heads, alpha = ctx.heads, ctx.alpha
        _, n, L, d = hm.shape
        B = n // heads
        q, k, v = hm[0], hm[1], hm[2]
        g = grad.reshape(B, L, heads, d).permute(2, 0, 1, 3).reshape(n, L, d)  # head-major
        dhm = torch.empty_like(hm)
        for i, s in enumerate(range(0, n, ATTENTION_BLOCK)):
            b = slice(s, s + ATTENTION_BLOCK)
            w, m = saved[2 * i], saved[2 * i + 1]
            torch.bmm((w * m).transpose(1, 2), g[b], out=dhm[2, b])
            dw = torch.bmm(g[b], v[b].transpose(1, 2)).mul_(m)  # through the mask
            ds = torch._softmax_backward_data(dw, w, -1, w.dtype)
            torch.bmm(ds, k[b], out=dhm[0, b]).mul_(alpha)
            torch.bmm(ds.transpose(1, 2), q[b], out=dhm[1, b]).mul_(alpha)
        dqkv = dhm.view(3, heads, B, L, d).permute(2, 3, 0, 1, 4).reshape(B, L, 3 * heads * d)
        return dqkv, None, None, None


def attention(
    qkv: Tensor, heads: int, mask: Tensor | None, p: float, training: bool
) -> tuple[Tensor, float]:
    """Multi-head attention ``softmax(q kᵀ / √d + mask) v`` from the fused projection
    ``qkv (B, L, 3H)`` (``[q | k | v]``, each ``heads`` × ``d``, as ``nn.MultiheadAttention``'s
    ``in_proj``) with key mask ``(B, 1, 1, L)`` (bool, True = attend; None = attend to all) and
    dropout ``p`` on the weights.

    Returns the output ``(B, L, H)`` (heads concatenated) *without* the dropout scale, and that
    scale (see :func:`masked`). ``scaled_dot_product_attention`` where it is the fast path (no
    dropout, or a GPU); on the CPU with dropout its math path draws Bernoulli masks, so
    :class:`_HeadAttention` forms, masks and applies the weights block by block."""
    B, L, H3 = qkv.shape
    H = H3 // 3
    p = p if training else 0.0
    if p == 0.0 or not _use_fast(qkv):
        q, k, v = qkv.view(B, L, 3, heads, H // heads).permute(2, 0, 3, 1, 4)  # (B, h, L, d)
        a = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=p)
        return a.transpose(1, 2).reshape(B, L, H), 1.0
    if not 0.0 <= p < 1.0:
        raise ValueError(f"dropout probability {p} not in [0, 1)")
    bias = None
    if mask is not None:
        bias = torch.zeros(mask.shape, dtype=qkv.dtype, device=qkv.device)
        bias = bias.masked_fill_(~mask, -math.inf).view(B, 1, L)
    return _HeadAttention.apply(qkv.contiguous(), heads, bias, p)


def encoder_layer(layer: nn.TransformerEncoderLayer, x: Tensor, mask: Tensor | None) -> Tensor:
    """``layer(x, src_key_padding_mask=~mask)`` for a ``batch_first`` layer, from its parameters.

    Dropout scales are folded into the next linear map's weight or into the residual sum, so
    each mask costs one multiplication.

    Args:
        layer: the module (its parameters, norm placement, activation and dropout rates).
        x: ``(B, L, H)`` items.
        mask: ``(B, 1, 1, L)`` bool, True = real item (attend to it); None = no padding.
    """
    attn = layer.self_attn
    B, L, H = x.shape
    heads = attn.num_heads
    training = layer.training
    p = layer.dropout.p

    def sa_block(y: Tensor) -> tuple[Tensor, float]:
        qkv = F.linear(y, attn.in_proj_weight, attn.in_proj_bias)  # (B, L, 3H)
        a, s = attention(qkv, heads, mask, attn.dropout, training)  # (B, L, H)
        w = attn.out_proj.weight if s == 1.0 else attn.out_proj.weight * s
        a = F.linear(a, w, attn.out_proj.bias)
        return masked(a, p, training)

    def ff_block(y: Tensor) -> tuple[Tensor, float]:
        y, s = masked(
            layer.activation(F.linear(y, layer.linear1.weight, layer.linear1.bias)), p, training
        )
        w = layer.linear2.weight if s == 1.0 else layer.linear2.weight * s
        return masked(F.linear(y, w, layer.linear2.bias), p, training)

    def residual(x: Tensor, branch: tuple[Tensor, float]) -> Tensor:
        return torch.add(x, branch[0], alpha=branch[1])

    n1, n2 = layer.norm1, layer.norm2
    if layer.norm_first:
        x = residual(x, sa_block(F.layer_norm(x, (H,), n1.weight, n1.bias, n1.eps)))
        return residual(x, ff_block(F.layer_norm(x, (H,), n2.weight, n2.bias, n2.eps)))
    x = F.layer_norm(residual(x, sa_block(x)), (H,), n1.weight, n1.bias, n1.eps)
    return F.layer_norm(residual(x, ff_block(x)), (H,), n2.weight, n2.bias, n2.eps)


def encode(encoder: nn.TransformerEncoder, x: Tensor, mask: Tensor) -> Tensor:
    """``encoder(x, src_key_padding_mask=~mask)`` by :func:`encoder_layer`; ``x (B, L, H)``,
    ``mask (B, L)`` bool, True = real item."""
    attn_mask = key_mask(mask)
    for layer in encoder.layers:
        x = encoder_layer(layer, x, attn_mask)
    if encoder.norm is not None:
        x = encoder.norm(x)
    return x


def list_encoder(
    d_model: int, num_layers: int, num_heads: int, ff_dim: int, dropout: float, activation: str
) -> nn.TransformerEncoder | None:
    """Self-attention over the items of a list, as allRank builds it: pre-norm encoder layers
    and a final LayerNorm, no positional encoding (permutation equivariant); run it with
    :func:`encode`. None when ``num_layers`` is 0."""
    if num_layers <= 0:
        return None
    layer = nn.TransformerEncoderLayer(
        d_model=d_model,
        nhead=num_heads,
        dim_feedforward=ff_dim,
        dropout=dropout,
        activation=activation,
        batch_first=True,
        norm_first=True,
    )
    return nn.TransformerEncoder(
        layer, num_layers=num_layers, norm=nn.LayerNorm(d_model), enable_nested_tensor=False
    )
