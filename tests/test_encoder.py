"""The fast encoder forward (xmr.models.encoder) against nn.TransformerEncoder, and its dropout."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from xmr.models.encoder import attention, dropout, encode, keep_mask, masked
from xmr.models.ranker import ContextAwareRanker


def _encoder(norm_first: bool, activation: str, p: float = 0.1) -> nn.TransformerEncoder:
    layer = nn.TransformerEncoderLayer(
        d_model=32,
        nhead=4,
        dim_feedforward=48,
        dropout=p,
        activation=activation,
        batch_first=True,
        norm_first=norm_first,
    )
    return nn.TransformerEncoder(layer, 2, norm=nn.LayerNorm(32), enable_nested_tensor=False)


def _inputs(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(5, 9, 32, generator=g)
    mask = torch.ones(5, 9, dtype=torch.bool)
    mask[1, 6:] = False
    mask[3, 1:] = False  # one real item
    return x, mask


@pytest.mark.parametrize("norm_first", [True, False])
@pytest.mark.parametrize("activation", ["relu", "gelu"])
def test_encode_equals_module_in_eval(norm_first: bool, activation: str) -> None:
    torch.manual_seed(0)
    enc = _encoder(norm_first, activation).eval()
    x, mask = _inputs()
    want = enc(x, src_key_padding_mask=~mask)
    got = encode(enc, x, mask)
    # Padded positions carry no meaning downstream (scores are masked); compare real items.
    torch.testing.assert_close(got[mask], want[mask], atol=1e-5, rtol=1e-5)


def test_encode_gradients_equal_module_without_dropout() -> None:
    torch.manual_seed(1)
    enc = _encoder(True, "relu", p=0.0).train()
    x, mask = _inputs(1)
    w = torch.randn(5, 9, 32)
    (enc(x, src_key_padding_mask=~mask) * w)[mask].sum().backward()
    want = {n: p.grad.clone() for n, p in enc.named_parameters()}
    enc.zero_grad()
    (encode(enc, x, mask) * w)[mask].sum().backward()
    for n, p in enc.named_parameters():
        torch.testing.assert_close(p.grad, want[n], atol=1e-5, rtol=1e-4, msg=n)


def test_ranker_scores_unchanged_by_fast_encoder() -> None:
    torch.manual_seed(2)
    net = ContextAwareRanker(16, 16, fc_sizes=[32], num_layers=2, num_heads=4, ff_dim=48).eval()
    q, c = torch.randn(5, 16), torch.randn(5, 9, 16)
    _, mask = _inputs()
    h = net.input_rest(net.input_c(c) + net.input_q(q).unsqueeze(1))
    h = net.encoder(h, src_key_padding_mask=~mask)
    want = net.scorer(h).squeeze(-1).masked_fill(~mask, 0.0)
    torch.testing.assert_close(net.forward_split(q, c, mask), want, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("p", [0.1, 0.5, 0.9])
def test_keep_mask_rate_and_scale(p: float) -> None:
    torch.manual_seed(3)
    n = 400_000
    m, scale = keep_mask((n,), p)
    assert m.dtype == torch.float32
    assert set(torch.unique(m).tolist()) <= {0.0, 1.0}
    p_eff = round(p * 65536) / 65536
    assert abs(p_eff - p) <= 0.5 / 65536
    assert scale == pytest.approx(1.0 / (1.0 - p_eff), rel=1e-12)
    dropped = 1.0 - m.mean().item()
    sd = (p_eff * (1 - p_eff) / n) ** 0.5
    assert abs(dropped - p_eff) < 6 * sd, (dropped, p_eff)


def test_keep_mask_lanes_are_independent() -> None:
    # Four 16-bit lanes come from one 64-bit draw: neighbours must not be correlated.
    torch.manual_seed(4)
    m, _ = keep_mask((400_000,), 0.5)
    a, b = m[:-1], m[1:]
    corr = torch.corrcoef(torch.stack([a, b]))[0, 1].item()
    assert abs(corr) < 0.01
    by_lane = m.view(-1, 4).mean(0)  # each lane position keeps half
    assert torch.all((by_lane - 0.5).abs() < 0.01), by_lane


def test_dropout_is_unbiased_and_its_gradient_is_the_mask() -> None:
    torch.manual_seed(5)
    x = torch.full((200_000,), 2.0, requires_grad=True)
    y = dropout(x, 0.25, True)
    kept = y != 0
    assert torch.allclose(y[kept], torch.tensor(2.0 / 0.75))
    assert y.mean().item() == pytest.approx(2.0, rel=0.01)
    g = torch.randn(200_000)
    y.backward(g)
    torch.testing.assert_close(x.grad, g * kept / 0.75)


def test_dropout_identity_when_off_and_rejects_bad_p() -> None:
    x = torch.randn(10)
    assert dropout(x, 0.5, False) is x
    assert dropout(x, 0.0, True) is x
    with pytest.raises(ValueError, match="dropout probability 1.0"):
        masked(x, 1.0, True)


def test_dropout_is_repeatable_under_a_seed() -> None:
    x = torch.randn(1000)
    torch.manual_seed(6)
    a = dropout(x, 0.3, True)
    torch.manual_seed(6)
    b = dropout(x, 0.3, True)
    c = dropout(x, 0.3, True)
    assert torch.equal(a, b)
    assert not torch.equal(b, c)


def _qkv(n: int, length: int, heads: int, d: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, length, 3 * heads * d, generator=g).requires_grad_()


def _reference_attention(qkv: torch.Tensor, heads: int, mask: torch.Tensor | None, keep=None):
    """Plain multi-head attention; ``keep (B, heads, L, L)`` multiplies the weights."""
    n, length, h3 = qkv.shape
    d = h3 // (3 * heads)
    q, k, v = qkv.view(n, length, 3, heads, d).permute(2, 0, 3, 1, 4)
    s = q @ k.transpose(-1, -2) / d**0.5
    if mask is not None:
        s = s.masked_fill(~mask, float("-inf"))
    w = s.softmax(-1)
    if keep is not None:
        w = w * keep
    return (w @ v).transpose(1, 2).reshape(n, length, heads * d)


@pytest.mark.parametrize("padded", [True, False])
@pytest.mark.parametrize("block", [32, 2])
def test_attention_head_path_equals_reference_in_value_and_gradient(
    padded: bool, block: int, monkeypatch
) -> None:
    # p tiny enough that no weight is dropped (p' = 0): the CPU head-by-head path with its
    # hand-written backward must equal plain attention (block 2: 5 lists in 3 blocks per head).
    monkeypatch.setattr("xmr.models.encoder.ATTENTION_BLOCK", block)
    _, mask = _inputs()
    amask = mask.view(5, 1, 1, 9) if padded else None
    qkv = _qkv(5, 9, 4, 8, seed=7)
    got, scale = attention(qkv, 4, amask, 1e-9, True)
    assert scale == 1.0
    g = torch.randn(got.shape)
    (dgot,) = torch.autograd.grad((got * g).sum(), qkv)
    want = _reference_attention(qkv, 4, amask)
    (dwant,) = torch.autograd.grad((want * g).sum(), qkv)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(dgot, dwant, atol=1e-5, rtol=1e-5)
    sdpa, _ = attention(qkv, 4, amask, 0.0, True)  # the SDPA path agrees too
    torch.testing.assert_close(sdpa, want, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("block", [32, 2])
def test_attention_dropout_gradient_follows_its_mask(block: int, monkeypatch) -> None:
    # With dropout on, rebuild the keep mask from the generator state and compare value and
    # gradient with plain attention times that mask.
    from xmr.models.encoder import keep_mask

    monkeypatch.setattr("xmr.models.encoder.ATTENTION_BLOCK", block)
    qkv = _qkv(3, 7, 2, 4, seed=8)
    torch.manual_seed(123)
    got, scale = attention(qkv, 2, None, 0.3, True)
    torch.manual_seed(123)
    keep, want_scale = keep_mask((2, 3, 7, 7), 0.3)  # drawn in the same order: head, list
    assert scale == want_scale
    g = torch.randn(got.shape)
    (dgot,) = torch.autograd.grad((got * g).sum(), qkv)
    want = _reference_attention(qkv, 2, None, keep.transpose(0, 1))
    (dwant,) = torch.autograd.grad((want * g).sum(), qkv)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(dgot, dwant, atol=1e-5, rtol=1e-5)


def test_attention_dropout_zeroes_weights_at_the_rate() -> None:
    # v = identity rows: each output row is the (masked, unscaled) weight row itself.
    torch.manual_seed(8)
    n, length = 64, 16
    qk = torch.randn(n, length, 2 * length)
    v = torch.eye(length).expand(n, length, length)
    qkv = torch.cat([qk, v], dim=-1)  # one head of width 16
    out, scale = attention(qkv, 1, None, 0.5, True)
    full, _ = attention(qkv, 1, None, 0.0, True)
    zero = out == 0
    assert scale == pytest.approx(2.0)
    assert abs(zero.float().mean().item() - 0.5) < 0.02
    torch.testing.assert_close(out[~zero], full[~zero])


def test_attention_dropout_under_autocast_drops_what_float32_drops() -> None:
    # Under bf16-mixed on the CPU the fused projection reaches the attention in bfloat16. The
    # keep mask is still decided in float32 (int16 lanes are not exact in bfloat16: deciding it
    # there flipped 11 of these 16,384 weights), so the same seed drops the same weights.
    torch.manual_seed(8)
    n, length = 64, 16
    qk = torch.randn(n, length, 2 * length)
    v = torch.eye(length).expand(n, length, length)
    qkv = torch.cat([qk, v], dim=-1)  # one head; each output row is its weight row
    torch.manual_seed(3)
    want, want_scale = attention(qkv, 1, None, 0.1, True)
    torch.manual_seed(3)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got, scale = attention(qkv.bfloat16(), 1, None, 0.1, True)
    assert got.dtype == torch.bfloat16 and scale == want_scale
    assert torch.equal(got == 0, want == 0)
    torch.testing.assert_close(got.float(), want, atol=2e-2, rtol=2e-2)


def test_ranker_under_autocast_scores_in_float32_close_to_float32() -> None:
    # The whole ranker forward under bf16 autocast (dropout on: the CPU attention path, same
    # masks): the score head runs in float32, and the scores stay within 0.1 x their spread (std)
    # of the float32 ones (measured over 10 seeds: 0.015-0.039).
    torch.manual_seed(0)
    net = ContextAwareRanker(16, 16, num_layers=2, num_heads=4, ff_dim=32, dropout=0.1).train()
    g = torch.Generator().manual_seed(1)
    q, c = torch.randn(6, 16, generator=g), torch.randn(6, 9, 16, generator=g)
    mask = torch.ones(6, 9, dtype=torch.bool)
    mask[0, -3:] = False
    with torch.no_grad():
        torch.manual_seed(5)
        want = net.forward_split(q, c, mask)
        torch.manual_seed(5)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            got = net.forward_split(q, c, mask)
    assert got.dtype == torch.float32
    assert float((got - want).abs().max()) <= 0.1 * float(want[mask].std())
    assert torch.equal(got[~mask], torch.zeros_like(got[~mask]))


def test_train_mode_encoder_without_dropout_equals_eval() -> None:
    torch.manual_seed(9)
    enc = _encoder(True, "relu", p=0.0)
    x, mask = _inputs()
    torch.testing.assert_close(encode(enc.train(), x, mask), encode(enc.eval(), x, mask))
