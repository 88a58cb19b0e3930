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


def test_attention_explicit_path_equals_sdpa() -> None:
    # p tiny enough that no weight is dropped (p' = 0): the explicit CPU path must equal SDPA.
    torch.manual_seed(7)
    q, k, v = (torch.randn(5, 4, 9, 8, requires_grad=True) for _ in range(3))
    _, mask = _inputs()
    amask = mask.view(5, 1, 1, 9)
    got, scale = attention(q, k, v, amask, 1e-9, True)
    want, _ = attention(q, k, v, amask, 0.0, True)
    assert scale == 1.0
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)


def test_attention_dropout_zeroes_weights_at_the_rate() -> None:
    # v = identity rows: the output row is the (masked, unscaled) weight row itself.
    torch.manual_seed(8)
    n, length = 64, 16
    q = torch.randn(n, 1, length, length)
    k = torch.randn(n, 1, length, length)
    v = torch.eye(length).expand(n, 1, length, length)
    amask = torch.ones(n, 1, 1, length, dtype=torch.bool)
    out, scale = attention(q, k, v, amask, 0.5, True)
    full, _ = attention(q, k, v, amask, 0.0, True)
    zero = out == 0
    assert scale == pytest.approx(2.0)
    assert abs(zero.float().mean().item() - 0.5) < 0.02
    torch.testing.assert_close(out[~zero], full[~zero])


def test_train_mode_encoder_without_dropout_equals_eval() -> None:
    torch.manual_seed(9)
    enc = _encoder(True, "relu", p=0.0)
    x, mask = _inputs()
    torch.testing.assert_close(encode(enc.train(), x, mask), encode(enc.eval(), x, mask))
