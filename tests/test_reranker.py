"""The residual re-ranker: exactly its first stage when untrained (list and full-gallery
protocols), options checked by name, and it learns a bilinear correction cosine cannot express."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from _compose import make_cfg

from xmr.data.store import first_stage_of
from xmr.metrics.ranking import pessimistic_order
from xmr.models.reranker import ResidualReranker
from xmr.runs.naming import run_method
from xmr.train import train
from xmr.utils.instantiate import ConfigError


def _lists(b: int = 6, n: int = 9, d: int = 16, seed: int = 0) -> tuple:
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(b, d, generator=g)
    c = torch.randn(b, n, d, generator=g)
    mask = torch.ones(b, n, dtype=torch.bool)
    mask[0, -3:] = False
    c[0, -3:] = 0.0
    return q, c, mask


def _cosine(q: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
    qn = torch.nn.functional.normalize(q, dim=-1)
    return torch.einsum("bd,bld->bl", qn, torch.nn.functional.normalize(c, dim=-1))


@pytest.mark.parametrize("num_layers", [0, 1])
def test_untrained_reranker_is_its_first_stage(num_layers: int) -> None:
    q, c, mask = _lists()
    net = ResidualReranker(16, 16, num_layers=num_layers, init_scale=7.0).train()
    scores = net.forward_split(q, c, mask)
    cos = _cosine(q, c)
    torch.testing.assert_close(scores[mask], 7.0 * cos[mask], rtol=0, atol=1e-6)
    assert torch.equal(pessimistic_order(scores, None, mask), pessimistic_order(cos, None, mask))
    assert (scores[~mask] == 0).all()


def test_the_correction_trains_from_zero() -> None:
    """f starts at exactly zero but is not stuck there: one step moves β and the output layer."""
    q, c, mask = _lists()
    net = ResidualReranker(16, 16, num_layers=1, dropout=0.0)
    labels = torch.zeros(mask.shape)
    labels[:, 1] = 1.0
    scores = net.forward_split(q, c, mask)
    loss = -(torch.log_softmax(scores.masked_fill(~mask, -1e9), dim=1) * labels).sum()
    loss.backward()
    assert net.bilinear_weight.grad is not None and net.bilinear_weight.grad.abs() > 0
    assert net.out.weight.grad is not None and net.out.weight.grad.abs().sum() > 0


def test_permuting_candidates_permutes_scores() -> None:
    q, c, mask = _lists()
    c = torch.randn(c.shape, generator=torch.Generator().manual_seed(1))  # no tied scores
    mask = torch.ones_like(mask)
    net = ResidualReranker(16, 16, num_layers=1, dropout=0.0).eval()
    with torch.no_grad():
        net.out.weight.normal_()
        net.bilinear_weight.fill_(0.5)
    perm = torch.randperm(c.shape[1])
    a = net.forward_split(q, c, mask)
    b = net.forward_split(q, c[:, perm], mask[:, perm])
    torch.testing.assert_close(a[:, perm], b, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(
    ("key", "value", "rule"),
    [
        ("hidden", 0, "integer >= 1"),
        ("num_heads", 3, "must divide"),
        ("dropout", 1.0, r"\[0, 1\)"),
        ("activation", "tanh", "one of"),
        ("init_scale", 0.0, "must be > 0"),
        ("num_layers", -1, "integer >= 0"),
    ],
)
def test_bad_options_are_refused_by_name(key: str, value: object, rule: str) -> None:
    with pytest.raises(ConfigError, match=rf"model\.net\.{key}=.*{rule}"):
        ResidualReranker(16, 16, **{key: value})
    with pytest.raises(ConfigError, match=rf"model\.net\.{key}="):
        ResidualReranker.check_options({key: value})


def test_reranker_needs_a_joint_space() -> None:
    with pytest.raises(ConfigError, match="joint space"):
        ResidualReranker(16, 8)


def test_untrained_reranker_equals_cosine_in_both_protocols(
    tiny_store: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``train=false``: the re-ranker is evaluated as initialised, in the list protocol and in
    the full-gallery protocol (which re-ranks cosine's top K): every recall equals cosine's."""
    monkeypatch.chdir(tmp_path)
    common = [
        "data=synthetic_tiny",
        f"data.store={tiny_store}",
        "data.synth=null",
        f"data.lists_root={tmp_path / 'lists'}",
        "trainer.enable_progress_bar=false",
    ]
    results = {}
    for model in ("cosine", "reranker"):
        out = tmp_path / model
        cfg = make_cfg(out, [*common, f"model={model}", "train=false"])
        train(cfg)
        results[model] = json.loads((out / "run" / "results.json").read_text())
    keys = [
        k for k in results["cosine"] if k.startswith(("test/", "test_full/")) and "/loss" not in k
    ]
    assert any(k.startswith("test_full/") for k in keys)
    for k in keys:
        assert results["reranker"][k] == pytest.approx(results["cosine"][k], abs=1e-9), k


def test_embed_makes_a_pairwise_model_a_first_stage(tiny_store: Path, tmp_path: Path) -> None:
    """``xmr embed``: the store of a trained InfoNCE run's embeddings ranks every gallery exactly
    as the model itself does (its cosine is the model's score), so it serves as first stage."""
    from _compose import tiny_overrides

    from xmr.data.store import FeatureStore
    from xmr.embed import embed
    from xmr.metrics.zeroshot import store_split_recall

    extra = ["model=infonce", "model.pair_batch_size=64", "protocol.full_gallery.first_stage=self"]
    cfg = make_cfg(tmp_path, tiny_overrides(tiny_store, *extra, f"data.lists_root={tmp_path}/l"))
    results = train(cfg)
    out = embed(cfg.paths.output_dir, tmp_path / "infonce-store")
    store = FeatureStore.open(out)
    assert store.joint_space and store.manifest["encoder"]["model"] == "InfoNCEModel"
    # The store names its first stage, and a run over it gets a row of its own.
    assert first_stage_of(out) == "infonce" and first_stage_of(tiny_store) == "cosine"
    over = make_cfg(tmp_path / "rr", ["model=reranker", "loss=listnet", f"data.store={out}"])
    assert run_method(over) == "reranker_listnet@infonce"
    zs = store_split_recall(store, "test")
    for d in ("t2i", "i2t"):
        for k in (1, 5, 10):
            want = results[f"test_full/{d}/first_stage_recall@{k}"]
            assert zs[d][f"recall@{k}"] == pytest.approx(want), (d, k)
    with pytest.raises(SystemExit, match="exists"):
        embed(cfg.paths.output_dir, out)


def test_a_reranker_row_is_named_apart_from_the_papers_ranker(tmp_path: Path) -> None:
    assert run_method(make_cfg(tmp_path, ["model=reranker", "loss=listnet"])) == "reranker_listnet"
    assert run_method(make_cfg(tmp_path, ["model=ranker", "loss=listnet"])) == "listnet"
    assert run_method(make_cfg(tmp_path, ["model=cosine"])) == "clip_cosine"


def test_first_stage_of_stores_written_before_the_method_was_recorded() -> None:
    assert first_stage_of({"kind": "xmr-embed", "model": "VSEPPModel"}) == "vsepp"
    assert first_stage_of({"kind": "xmr-embed", "method": "cmpm", "model": "X"}) == "cmpm"
    assert first_stage_of({"name": "ViT-B-32"}) == "cosine"
    assert first_stage_of("/no/such/store") == "cosine"
