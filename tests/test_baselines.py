"""Pair baselines (DCCA, CMPM + CMPC, VSE++, InfoNCE): losses vs hand / numpy references, training
on tiny stores (one with differing image / text dims), and `xmr train model=...` end to end."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from _compose import make_cfg, tiny_overrides
from omegaconf import open_dict

from xmr.data.store import FeatureStore
from xmr.eval import evaluate
from xmr.losses.pairwise import (
    cmpc_loss,
    cmpm_label_distribution,
    cmpm_loss,
    dcca_correlation,
    max_violation_hinge,
    same_image,
    symmetric_infonce,
)
from xmr.models.baselines import CMPMModel, DCCAModel, InfoNCEModel, VSEPPModel
from xmr.train import train
from xmr.utils.instantiate import instantiate

CONF = Path(__file__).resolve().parents[1] / "conf"
MODELS = {"dcca": DCCAModel, "cmpm": CMPMModel, "vsepp": VSEPPModel, "infonce": InfoNCEModel}


def _inv_sqrt_np(s: np.ndarray) -> np.ndarray:
    w, v = np.linalg.eigh(s)
    return (v / np.sqrt(w)) @ v.T


def test_dcca_correlation_matches_numpy_reference() -> None:
    rng = np.random.default_rng(1)
    h1 = rng.normal(size=(200, 5))
    h2 = h1[:, :4] @ rng.normal(size=(4, 4)) + rng.normal(size=(200, 4))
    r1, r2 = 1e-2, 1e-3
    # Reference: S^-1/2 by eigendecomposition, trace norm as the sum of singular values (SVD).
    a, b = h1 - h1.mean(0), h2 - h2.mean(0)
    m = len(a)
    s11 = a.T @ a / (m - 1) + r1 * np.eye(5)
    s22 = b.T @ b / (m - 1) + r2 * np.eye(4)
    s12 = a.T @ b / (m - 1)
    t = _inv_sqrt_np(s11) @ s12 @ _inv_sqrt_np(s22)
    expected = np.linalg.svd(t, compute_uv=False).sum()
    got = dcca_correlation(torch.from_numpy(h1), torch.from_numpy(h2), r1, r2)
    assert float(got) == pytest.approx(expected, rel=1e-6)


def test_dcca_correlation_of_linearly_related_views_is_their_rank() -> None:
    # h2 an invertible linear map of h1: every canonical correlation is 1, total = dims.
    h1 = torch.randn(300, 3, dtype=torch.float64)
    h2 = h1 @ torch.tensor(
        [[2.0, 0.5, 0.0], [0.0, 1.0, -1.0], [1.0, 0.0, 3.0]], dtype=torch.float64
    )
    assert float(dcca_correlation(h1, h2, 0.0, 0.0)) == pytest.approx(3.0, abs=1e-5)
    # Independent views: correlations near 0.
    assert float(dcca_correlation(h1, torch.randn(300, 3, dtype=torch.float64), 0, 0)) < 0.5


def test_dcca_gradient_is_finite_on_rank_deficient_outputs() -> None:
    # 8-d outputs of 3-d data: a rank-deficient covariance, where eigenvector gradients blow up.
    x = torch.randn(50, 3)
    w1 = torch.randn(3, 8, requires_grad=True)
    w2 = torch.randn(3, 8, requires_grad=True)
    corr = dcca_correlation(x @ w1, (x + 0.1 * torch.randn(50, 3)) @ w2)
    corr.backward()
    assert torch.isfinite(corr) and torch.isfinite(w1.grad).all() and torch.isfinite(w2.grad).all()


def test_cmpm_label_distribution_per_row() -> None:
    ids = torch.tensor([0, 0, 1, 2, 2, 2])
    q = cmpm_label_distribution(ids, "l1")
    assert torch.allclose(q.sum(1), torch.ones(6))
    assert torch.allclose(q[0], torch.tensor([0.5, 0.5, 0, 0, 0, 0]))
    assert torch.allclose(q[2], torch.tensor([0.0, 0, 1, 0, 0, 0]))
    assert torch.allclose(q[4], torch.tensor([0.0, 0, 0, 1, 1, 1]) / 3)
    # The released code divides by the L2 norm: 1/sqrt(n positives of the row).
    q2 = cmpm_label_distribution(ids, "l2")
    assert torch.allclose(q2[0], torch.tensor([1, 1, 0, 0, 0, 0]) / math.sqrt(2))
    assert torch.allclose(q2[5], torch.tensor([0, 0, 0, 1, 1, 1]) / math.sqrt(3))
    with pytest.raises(ValueError, match="label_norm"):
        cmpm_label_distribution(ids, "l3")


def test_cmpm_loss_matches_hand_computation() -> None:
    torch.manual_seed(0)
    x, z = torch.randn(4, 3), torch.randn(4, 3)
    ids = torch.tensor([7, 7, 1, 2])
    q = torch.tensor([[0.5, 0.5, 0, 0], [0.5, 0.5, 0, 0], [0, 0, 1.0, 0], [0, 0, 0, 1.0]])
    total = 0.0
    for a, b in ((x, z), (z, x)):
        for i in range(4):
            logits = torch.stack([a[i] @ (b[j] / b[j].norm()) for j in range(4)])
            p = logits.softmax(0)
            total += float(sum(p[j] * (p[j].log() - math.log(q[i, j] + 1e-8)) for j in range(4)))
    assert float(cmpm_loss(x, z, ids)) == pytest.approx(total / 4, rel=1e-5)


def test_cmpc_is_classification_of_the_projections() -> None:
    torch.manual_seed(0)
    x, z, w = torch.randn(3, 4), torch.randn(3, 4), torch.randn(4, 5)
    ids = torch.tensor([0, 3, 4])
    zn, xn, wn = z / z.norm(dim=1, keepdim=True), x / x.norm(dim=1, keepdim=True), w / w.norm(dim=0)
    x_hat = (x * zn).sum(1, keepdim=True) * zn
    z_hat = (z * xn).sum(1, keepdim=True) * xn
    expected = F.cross_entropy(x_hat @ wn, ids) + F.cross_entropy(z_hat @ wn, ids)
    assert float(cmpc_loss(x, z, ids, w)) == pytest.approx(float(expected), rel=1e-6)


def test_vsepp_max_violation_hinge_on_a_hand_made_matrix() -> None:
    sim = torch.tensor([[0.9, 0.5, 0.1], [0.3, 0.8, 0.75], [0.2, 0.1, 0.4]])
    # Image anchors (rows): only row 1 violates, by 0.2 + 0.75 - 0.8 = 0.15.
    # Caption anchors (columns): column 2 worst negative is image 1: 0.2 + 0.75 - 0.4 = 0.55
    # (image 0 gives 0.2 + 0.1 - 0.4 < 0). Mean over the 3 pairs: (0.15 + 0.55) / 3.
    eye = torch.eye(3, dtype=torch.bool)
    assert float(max_violation_hinge(sim, eye, 0.2)) == pytest.approx(0.7 / 3)
    # The max, not the sum, of violations: add a second, smaller violation in row 1.
    sim2 = sim.clone()
    sim2[1, 0] = 0.7  # 0.2 + 0.7 - 0.8 = 0.1 < 0.15; column 0: 0.2 + 0.7 - 0.9 = 0.0
    assert float(max_violation_hinge(sim2, eye, 0.2)) == pytest.approx(0.7 / 3)
    # Captions 1 and 2 of the same image are not negatives of each other: nothing violates.
    positive = same_image(torch.tensor([0, 1, 1]))
    assert float(max_violation_hinge(sim, positive, 0.2)) == pytest.approx(0.0)


def test_symmetric_infonce() -> None:
    torch.manual_seed(0)
    logits = torch.randn(5, 5)
    ids = torch.arange(5)
    target = torch.arange(5)
    by_hand = 0.5 * (
        -(logits.diagonal() - logits.logsumexp(1)).mean()
        - (logits.diagonal() - logits.logsumexp(0)).mean()
    )
    got = symmetric_infonce(logits, same_image(ids))
    assert float(got) == pytest.approx(float(by_hand), rel=1e-6)
    # Symmetric: swapping the roles of images and captions gives the same loss.
    assert float(symmetric_infonce(logits.T, same_image(ids))) == pytest.approx(float(got))
    assert float(got) == pytest.approx(
        0.5 * float(F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target))
    )
    # Another caption of the same image leaves the denominators.
    dup = torch.tensor([0, 0, 1, 2, 3])
    row0 = -(logits[0, 0] - torch.cat([logits[0, :1], logits[0, 2:]]).logsumexp(0))
    col0 = -(logits[0, 0] - torch.cat([logits[:1, 0], logits[2:, 0]]).logsumexp(0))
    row1 = -(logits[1, 1] - logits[1, 1:].logsumexp(0))
    col1 = -(logits[1, 1] - logits[1:, 1].logsumexp(0))
    rest_r = sum(-(logits[i, i] - logits[i].logsumexp(0)) for i in range(2, 5))
    rest_c = sum(-(logits[i, i] - logits[:, i].logsumexp(0)) for i in range(2, 5))
    expected = 0.5 * ((row0 + row1 + rest_r) / 5 + (col0 + col1 + rest_c) / 5)
    assert float(symmetric_infonce(logits, same_image(dup))) == pytest.approx(float(expected))


def _pairs(store_path: Path) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    store = FeatureStore.open(store_path)
    tid = store.split_text_ids("train")
    iid = torch.from_numpy(np.asarray(store.text_image[tid], dtype=np.int64))
    img = torch.from_numpy(np.asarray(store.image_emb, dtype=np.float32))[iid]
    txt = torch.from_numpy(np.asarray(store.text_emb, dtype=np.float32)[tid])
    return img, txt, iid


@pytest.mark.parametrize("name", list(MODELS))
@pytest.mark.parametrize("which", ["tiny", "diff_dims"])
def test_each_baseline_loss_decreases(name, which, tiny_store, small_store) -> None:
    path = tiny_store if which == "tiny" else small_store(joint_space=False)
    img, txt, iid = _pairs(path)
    torch.manual_seed(0)
    cfg = make_cfg(Path("/nonexistent"), [f"model={name}"])
    with open_dict(cfg):  # small heads: a fast test
        cfg.model.net.out_dim = 8 if name == "dcca" else 16
        cfg.model.net.hidden_sizes = [32] if name == "dcca" else []
    model = instantiate(cfg.model.net)(
        query_dim=txt.shape[1], cand_dim=img.shape[1], num_classes=int(iid.max()) + 1
    )
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    batch = slice(0, 128)
    first = float(model.pair_loss(img[batch], txt[batch], iid[batch]).detach())
    for _ in range(30):
        opt.zero_grad()
        loss = model.pair_loss(img[batch], txt[batch], iid[batch])
        loss.backward()
        opt.step()
    last = float(model.pair_loss(img[batch], txt[batch], iid[batch]).detach())
    assert math.isfinite(last) and last < first - 1e-3, (first, last)
    # Scores lists in both directions with the one model, 0 at padding.
    mask = torch.tensor([[True, True, False]])
    s_t2i = model.view("t2i").forward_split(txt[:1], img[:3].unsqueeze(0), mask)
    s_i2t = model.view("i2t").forward_split(img[:1], txt[:3].unsqueeze(0), mask)
    assert s_t2i.shape == s_i2t.shape == (1, 3) and s_t2i[0, 2] == 0 and s_i2t[0, 2] == 0


def test_dcca_refuses_batches_smaller_than_its_space() -> None:
    model = DCCAModel(query_dim=4, cand_dim=6, out_dim=16, hidden_sizes=[8])
    with pytest.raises(ValueError, match="pair_batch_size"):
        model.pair_loss(torch.randn(10, 6), torch.randn(10, 4), torch.arange(10))


def test_dcca_calibration_gives_the_canonical_variates() -> None:
    # After calibrate(), the i-th embedded coordinates of matching pairs are the i-th canonical
    # variates: their correlation is the i-th singular value of T on the head outputs (numpy).
    torch.manual_seed(0)
    img = torch.randn(400, 6)
    txt = img[:, :4] @ torch.randn(4, 4) + 0.5 * torch.randn(400, 4)
    model = DCCAModel(query_dim=4, cand_dim=6, out_dim=4, hidden_sizes=[16], r1=0.0, r2=0.0)
    with torch.no_grad():
        model.calibrate([(img[:200], txt[:200]), (img[200:], txt[200:])])  # two chunks
        h1 = model.image_head(img).double().numpy()
        h2 = model.text_head(txt).double().numpy()
        u, v = model.embed_image(img).double(), model.embed_text(txt).double()
    a, b = h1 - h1.mean(0), h2 - h2.mean(0)
    m = len(a)
    t = _inv_sqrt_np(a.T @ a / (m - 1)) @ (a.T @ b / (m - 1)) @ _inv_sqrt_np(b.T @ b / (m - 1))
    sigma = np.linalg.svd(t, compute_uv=False)
    for i in range(2):
        corr = np.corrcoef(u[:, i].numpy(), v[:, i].numpy())[0, 1]
        assert corr == pytest.approx(sigma[i], abs=1e-3)
    # The variates are whitened: unit variance, uncorrelated.
    np.testing.assert_allclose(np.cov(u.numpy().T), np.eye(4), atol=1e-3)


@pytest.mark.parametrize(
    "name, store_kind", [("dcca", "diff_dims"), ("cmpm", "diff_dims"), ("infonce", "tiny")]
)
def test_xmr_train_baseline_end_to_end(name, store_kind, tiny_store, small_store, tmp_path):
    store = small_store(joint_space=False) if store_kind == "diff_dims" else tiny_store
    extra = [f"model={name}", "model.pair_batch_size=64", "model.net.out_dim=16"]
    if store_kind == "diff_dims":
        extra.append("data.mining.strategy=random")  # no joint space: no cosine mining
    if name == "dcca":
        extra += ["model.net.out_dim=8", "model.net.hidden_sizes=[32]"]  # overrides win: last
    cfg = make_cfg(tmp_path, tiny_overrides(store, *extra))
    results = train(cfg)
    out = Path(cfg.paths.output_dir)
    on_disk = json.loads((out / "results.json").read_text())
    assert on_disk["method"] == name
    for d in ("t2i", "i2t"):
        for k in (1, 5, 10):
            assert 0.0 <= on_disk[f"test/{d}/recall@{k}"] <= 1.0
            assert 0.0 <= on_disk[f"test_full/{d}/recall@{k}"] <= 1.0
        assert (out / f"predictions_{d}.npz").exists()
    stage = "self" if store_kind == "diff_dims" else "cosine"
    assert on_disk["full_gallery"]["first_stage"] == stage
    # One set of weights for both directions, stored once.
    ckpt = torch.load(on_disk["checkpoint"], map_location="cpu", weights_only=True)
    keys = list(ckpt["state_dict"])
    assert keys and all(k.startswith("pair_model.") for k in keys), keys
    # Evaluation rebuilds the run and reproduces both protocols.
    again = evaluate(out, out=tmp_path / "eval")
    for key, value in results.items():
        if key.startswith(("test/", "test_full/")) and not key.endswith("loss"):
            assert again[key] == pytest.approx(value, abs=1e-6), key
