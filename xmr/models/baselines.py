"""Trainable pair baselines on frozen features: DCCA, CMPM + CMPC, VSE++ and InfoNCE.

Each baseline is a :class:`PairEmbeddingModel`: an image head and a text head that project the two
modalities (whose dims may differ: ``joint_space: false`` stores are fine) into one learned space
of width E. It trains on (image, caption) pairs of the train split with :meth:`pair_loss` —
*pairs, not lists*: the datamodule's pair loader yields every train caption with its image (see
:meth:`xmr.data.datamodule.XMRDataModule.use_pair_training`) — and scores a candidate list by the
cosine of query and candidate in the learned space, so it is evaluated on exactly the lists (and
the full gallery) the rankers see.

One model serves both directions: the LightningModule holds it once (``pair_model``) and wraps it
in a :class:`DirectionScorer` per direction, which knows which side of a list is text and which is
image.

Constructor convention: the net factory of a model config is called like a ranker's,
``factory(query_dim=..., cand_dim=...)``, in the **t2i orientation**: ``query_dim`` is the text
dim and ``cand_dim`` the image dim. ``forward(x, mask)`` / ``forward_split(q, c, mask)`` on the
model itself score t2i lists (caption query, image candidates).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from xmr.data.datamodule import XMRDataModule
from xmr.data.store import DIRECTIONS, EMBEDDED_KIND, FeatureStore, write_store
from xmr.losses.pairwise import (
    cmpc_loss,
    cmpm_label_distribution,
    cmpm_loss,
    covariances,
    dcca_correlation,
    inv_sqrt,
    max_violation_hinge,
    same_image,
    symmetric_infonce,
)
from xmr.models.scorer import ScorerKind, Scorers
from xmr.utils.instantiate import instantiate

_ACTIVATIONS: dict[str, type[nn.Module]] = {"relu": nn.ReLU, "gelu": nn.GELU, "tanh": nn.Tanh}


# -- models ------------------------------------------------------------------------------------------
class ProjectionHead(nn.Module):
    """MLP ``in_dim → hidden_sizes... → out_dim`` (linear when ``hidden_sizes`` is empty).

    ``identity_init`` starts a linear head at the identity (needs ``in_dim == out_dim``): on a
    joint-space store the model then starts from zero-shot cosine and fine-tunes from there.
    """

    def __init__(
        self,
        in_dim: int,
        out_dim: int,
        hidden_sizes: Sequence[int] = (),
        dropout: float = 0.0,
        activation: str = "relu",
        identity_init: bool = False,
    ) -> None:
        super().__init__()
        if activation not in _ACTIVATIONS:
            raise ValueError(f"model.net.activation={activation!r}: one of {sorted(_ACTIVATIONS)}")
        sizes = [int(in_dim), *[int(h) for h in hidden_sizes], int(out_dim)]
        if any(s < 1 for s in sizes):
            raise ValueError(f"model.net: projection sizes {sizes} must all be >= 1")
        layers: list[nn.Module] = []
        for i, (d_in, d_out) in enumerate(zip(sizes[:-1], sizes[1:], strict=True)):
            layers.append(nn.Linear(d_in, d_out))
            if i < len(sizes) - 2:
                layers += [_ACTIVATIONS[activation](), nn.Dropout(dropout)]
        self.net = nn.Sequential(*layers)
        if identity_init and len(sizes) == 2 and sizes[0] == sizes[1]:
            with torch.no_grad():
                self.net[0].weight.copy_(torch.eye(sizes[0]))
                self.net[0].bias.zero_()

    def forward(self, x: Tensor) -> Tensor:
        """``(..., in_dim) → (..., out_dim)``."""
        return self.net(x)


class PairEmbeddingModel(nn.Module, ScorerKind):
    """Base of the pair baselines: two projection heads, cosine scoring, a pair loss.

    Args:
        query_dim: text dim; cand_dim: image dim (t2i orientation, see the module docstring).
        out_dim: width E of the learned space; None = the text dim when the two dims agree
            (a joint space) else 256.
        hidden_sizes: hidden layers of each head ([] = linear heads).
        identity_init: start linear heads of matching dims at the identity.
        num_classes: number of image ids (CMPC's classifier); passed by the trainer.
    """

    trains_on: ClassVar[str] = "pairs"

    @classmethod
    def build_scorers(cls, model: Any, dm: XMRDataModule) -> Scorers:
        """One model for both directions of ``dm`` (t2i orientation: query = text, candidate =
        image), a :class:`DirectionScorer` view per direction; ``dm`` then trains on pair
        batches of ``model.pair_batch_size`` (:meth:`XMRDataModule.use_pair_training`)."""
        store = dm.store or FeatureStore.open(dm.store_path, check_norms=False)
        factory = instantiate(model.net, where="model.net")
        shared = factory(
            query_dim=store.text_dim, cand_dim=store.image_dim, num_classes=store.num_images
        )
        dm.use_pair_training(int(model.get("pair_batch_size", 128)))
        return Scorers({d: shared.view(d) for d in dm.directions}, shared=shared)

    def __init__(
        self,
        query_dim: int,
        cand_dim: int,
        out_dim: int | None = None,
        hidden_sizes: Sequence[int] = (),
        dropout: float = 0.0,
        activation: str = "relu",
        identity_init: bool = True,
        num_classes: int | None = None,
    ) -> None:
        super().__init__()
        if query_dim < 1 or cand_dim < 1:
            raise ValueError(f"model: query_dim={query_dim}, cand_dim={cand_dim} must be >= 1")
        self.text_dim, self.image_dim = int(query_dim), int(cand_dim)
        self.query_dim = self.text_dim  # forward(x) splits x as a t2i list: [text ; image]
        if out_dim is None:
            out_dim = self.text_dim if self.text_dim == self.image_dim else 256
        self.out_dim = int(out_dim)
        self.num_classes = num_classes
        kw = {"hidden_sizes": hidden_sizes, "dropout": dropout, "activation": activation}
        self.text_head = ProjectionHead(
            self.text_dim, self.out_dim, **kw, identity_init=identity_init
        )
        self.image_head = ProjectionHead(
            self.image_dim, self.out_dim, **kw, identity_init=identity_init
        )

    # embeddings in the learned space (what retrieval compares by cosine)
    def embed_text(self, x: Tensor) -> Tensor:
        """``(..., D_text) → (..., E)``."""
        return self.text_head(x.float())

    def embed_image(self, x: Tensor) -> Tensor:
        """``(..., D_image) → (..., E)``."""
        return self.image_head(x.float())

    def pair_loss(self, image: Tensor, text: Tensor, image_ids: Tensor) -> Tensor:
        """Training loss of a batch of pairs: ``image (B, D_image)``, ``text (B, D_text)``,
        ``image_ids (B,)`` (pairs with equal ids show the same image)."""
        raise NotImplementedError

    def calibrate(self, pairs: Iterable[tuple[Tensor, Tensor]]) -> None:
        """Refit post-hoc statistics on the train pairs ``(image, text)`` chunks (DCCA's linear
        CCA); a no-op for the other baselines."""

    def score_split(self, q: Tensor, c: Tensor, mask: Tensor, direction: str) -> Tensor:
        """Cosine scores ``(B, L)`` of query ``q (B, D_q)`` and candidates ``c (B, L, D_c)``;
        for ``t2i`` q is text and c images, for ``i2t`` the other way round. 0 at padding."""
        if direction == "t2i":
            qe, ce = self.embed_text(q), self.embed_image(c)  # (B, E), (B, L, E)
        elif direction == "i2t":
            qe, ce = self.embed_image(q), self.embed_text(c)
        else:
            raise ValueError(f"direction={direction!r}: one of {DIRECTIONS}")
        scores = torch.einsum("be,ble->bl", F.normalize(qe, dim=-1), F.normalize(ce, dim=-1))
        return scores.masked_fill(~mask, 0.0)

    def forward_split(self, q: Tensor, c: Tensor, mask: Tensor) -> Tensor:
        """t2i scores (caption query ``q (B, D_text)``, image candidates ``c (B, L, D_image)``)."""
        return self.score_split(q, c, mask, "t2i")

    def forward(self, x: Tensor, mask: Tensor) -> Tensor:
        """t2i scores from pair features ``x (B, L, D_text + D_image)``."""
        return self.forward_split(x[:, 0, : self.text_dim], x[..., self.text_dim :], mask)

    @torch.no_grad()
    def embed_store(
        self,
        store: FeatureStore,
        out: str | Path,
        *,
        source: Mapping[str, Any],
        overwrite: bool = False,
        chunk: int = 4096,
    ) -> Path:
        """Write a joint-space store at ``out`` holding this model's embeddings of every image and
        caption of ``store`` (same ids, captions and splits), so that its cosine is this model's
        score: a first stage that mining (``first_stage`` / ``pool``), the full-gallery protocol
        and a re-ranker use like any store. ``source`` (e.g. the run directory and checkpoint)
        goes into the manifest's ``encoder`` with the base store's encoder."""
        was_training = self.training
        self.eval()
        device = next(self.parameters(), torch.zeros(())).device

        def embed(rows: np.ndarray, fn: Any) -> np.ndarray:
            parts = [
                fn(torch.from_numpy(np.asarray(rows[i : i + chunk], dtype=np.float32)).to(device))
                .float()
                .cpu()
                .numpy()
                for i in range(0, len(rows), chunk)
            ]
            return np.concatenate(parts, axis=0)  # (N, E)

        try:
            image_emb = embed(store.image_emb, self.embed_image)
            text_emb = embed(store.text_emb, self.embed_text)
        finally:
            self.train(was_training)
        encoder = {
            "kind": EMBEDDED_KIND,
            "model": type(self).__name__,
            **{k: str(v) for k, v in source.items()},
            "base": store.manifest.get("encoder", {}),
            "base_store": str(store.root),
        }
        return write_store(
            out,
            image_emb=image_emb,
            text_emb=text_emb,
            text_image=store.text_image,
            image_split=store.image_split,
            images=store.images(),
            captions=store.captions(),
            encoder=encoder,
            joint_space=True,
            dtype="float32",
            overwrite=overwrite,
        )

    def view(self, direction: str) -> DirectionScorer:
        """The scorer of one direction, sharing this model's weights."""
        return DirectionScorer(self, direction)


class DirectionScorer(nn.Module):
    """One direction of a :class:`PairEmbeddingModel`, with the ranker's scorer interface.

    The model is referenced, not registered as a submodule: the LightningModule registers it once
    (``pair_model``), so the checkpoint holds each weight once, under ``pair_model.*``.
    """

    def __init__(self, model: PairEmbeddingModel, direction: str) -> None:
        super().__init__()
        if direction not in DIRECTIONS:
            raise ValueError(f"direction={direction!r}: one of {DIRECTIONS}")
        object.__setattr__(self, "model", model)  # unregistered on purpose (see class docstring)
        self.direction = direction
        self.query_dim = model.text_dim if direction == "t2i" else model.image_dim

    def forward_split(self, q: Tensor, c: Tensor, mask: Tensor) -> Tensor:
        return self.model.score_split(q, c, mask, self.direction)

    def gallery_scores(self, gallery: Tensor) -> Callable[[Tensor], Tensor]:
        """Scores of queries ``(B, D_q)`` against the whole gallery ``(G, D_c)`` in the model's
        learned space: ``(B, G)`` (the model scores each pair alone, so it can rank a gallery)."""
        model = self.model
        embed_q, embed_g = (
            (model.embed_text, model.embed_image)
            if self.direction == "t2i"
            else (model.embed_image, model.embed_text)
        )
        device = next(model.parameters()).device
        g = F.normalize(embed_g(gallery.to(device)), dim=-1)  # (G, E)
        return lambda q: (F.normalize(embed_q(q.to(device)), dim=-1) @ g.T).cpu()

    def forward(self, x: Tensor, mask: Tensor) -> Tensor:
        return self.forward_split(x[:, 0, : self.query_dim], x[..., self.query_dim :], mask)


class DCCAModel(PairEmbeddingModel):
    """DCCA (Andrew et al. 2013): two MLPs trained to maximise the total canonical correlation of
    their outputs (:func:`dcca_correlation`, loss = its negative). Retrieval: the outputs are
    centred and mapped by the linear CCA fitted on all train pairs (:meth:`calibrate`: ``A =
    S11^-1/2 U``, ``B = S22^-1/2 V`` from the SVD ``T = U S V'``), then compared by cosine.

    Needs training batches larger than ``out_dim`` (the covariance estimates).
    """

    def __init__(
        self,
        query_dim: int,
        cand_dim: int,
        out_dim: int = 64,
        hidden_sizes: Sequence[int] = (512,),
        dropout: float = 0.0,
        activation: str = "relu",
        r1: float = 1e-3,
        r2: float = 1e-3,
        num_classes: int | None = None,
    ) -> None:
        super().__init__(
            query_dim, cand_dim, out_dim, hidden_sizes, dropout, activation, identity_init=False
        )
        self.r1, self.r2 = float(r1), float(r2)
        if self.r1 < 0 or self.r2 < 0:
            raise ValueError(f"model.net.r1={r1}, r2={r2}: ridge terms must be >= 0")
        e = self.out_dim
        self.register_buffer("image_mean", torch.zeros(e))
        self.register_buffer("text_mean", torch.zeros(e))
        self.register_buffer("image_cca", torch.eye(e))
        self.register_buffer("text_cca", torch.eye(e))

    def pair_loss(self, image: Tensor, text: Tensor, image_ids: Tensor) -> Tensor:
        if image.shape[0] <= self.out_dim:
            raise ValueError(
                f"DCCA: a batch of {image.shape[0]} pairs cannot estimate {self.out_dim}-d "
                "covariances; raise model.pair_batch_size above model.net.out_dim"
            )
        h1, h2 = self.image_head(image.float()), self.text_head(text.float())
        return -dcca_correlation(h1, h2, self.r1, self.r2)

    @torch.no_grad()
    def calibrate(self, pairs: Iterable[tuple[Tensor, Tensor]]) -> None:
        h1s, h2s = [], []
        for image, text in pairs:
            h1s.append(self.image_head(image.float()).double())
            h2s.append(self.text_head(text.float()).double())
        h1, h2 = torch.cat(h1s), torch.cat(h2s)  # (m, E)
        s11, s22, s12 = covariances(h1, h2, self.r1, self.r2)
        i11, i22 = inv_sqrt(s11), inv_sqrt(s22)
        u, _, vh = torch.linalg.svd(i11 @ s12 @ i22)
        self.image_mean.copy_(h1.mean(0).float())
        self.text_mean.copy_(h2.mean(0).float())
        self.image_cca.copy_((i11 @ u).float())
        self.text_cca.copy_((i22 @ vh.T).float())

    def embed_image(self, x: Tensor) -> Tensor:
        return (self.image_head(x.float()) - self.image_mean) @ self.image_cca

    def embed_text(self, x: Tensor) -> Tensor:
        return (self.text_head(x.float()) - self.text_mean) @ self.text_cca


class CMPMModel(PairEmbeddingModel):
    """CMPM + CMPC (Zhang & Lu, ECCV 2018): :func:`cmpm_loss` with image-id labels plus
    ``cmpc_weight`` × :func:`cmpc_loss` (norm-softmax classifier over the ``num_classes`` image
    ids; 0 disables it)."""

    def __init__(
        self,
        query_dim: int,
        cand_dim: int,
        out_dim: int | None = 512,
        hidden_sizes: Sequence[int] = (),
        dropout: float = 0.0,
        activation: str = "relu",
        identity_init: bool = True,
        label_norm: str = "l1",
        cmpc_weight: float = 1.0,
        num_classes: int | None = None,
    ) -> None:
        super().__init__(
            query_dim, cand_dim, out_dim, hidden_sizes, dropout, activation, identity_init
        )
        cmpm_label_distribution(torch.zeros(1, dtype=torch.long), label_norm)  # validates
        self.label_norm = label_norm
        self.cmpc_weight = float(cmpc_weight)
        self.classifier: nn.Parameter | None = None
        if self.cmpc_weight > 0 and num_classes is not None:
            self.classifier = nn.Parameter(torch.randn(self.out_dim, int(num_classes)) * 0.01)

    def pair_loss(self, image: Tensor, text: Tensor, image_ids: Tensor) -> Tensor:
        x, z = self.embed_image(image), self.embed_text(text)
        loss = cmpm_loss(x, z, image_ids, self.label_norm)
        if self.cmpc_weight > 0:
            if self.classifier is None:
                raise RuntimeError("CMPC needs num_classes (the trainer passes the image count)")
            loss = loss + self.cmpc_weight * cmpc_loss(x, z, image_ids, self.classifier)
        return loss


class VSEPPModel(PairEmbeddingModel):
    """VSE++ (Faghri et al. 2018): :func:`max_violation_hinge` with ``margin`` on the cosine
    similarities of the in-batch pairs."""

    def __init__(
        self,
        query_dim: int,
        cand_dim: int,
        out_dim: int | None = None,
        hidden_sizes: Sequence[int] = (),
        dropout: float = 0.0,
        activation: str = "relu",
        identity_init: bool = True,
        margin: float = 0.2,
        num_classes: int | None = None,
    ) -> None:
        super().__init__(
            query_dim, cand_dim, out_dim, hidden_sizes, dropout, activation, identity_init
        )
        if margin < 0:
            raise ValueError(f"model.net.margin={margin}: must be >= 0")
        self.margin = float(margin)

    def pair_loss(self, image: Tensor, text: Tensor, image_ids: Tensor) -> Tensor:
        x = F.normalize(self.embed_image(image), dim=1)  # (B, E)
        z = F.normalize(self.embed_text(text), dim=1)  # (B, E)
        return max_violation_hinge(x @ z.T, same_image(image_ids), self.margin)


class InfoNCEModel(PairEmbeddingModel):
    """CLIP-style fine-tuning of projection heads: :func:`symmetric_infonce` over in-batch pairs,
    logits = ``exp(logit_scale)`` × cosine, with a learnable temperature (initial ``temperature``,
    ``exp(logit_scale)`` clamped at 100 as in CLIP)."""

    def __init__(
        self,
        query_dim: int,
        cand_dim: int,
        out_dim: int | None = None,
        hidden_sizes: Sequence[int] = (),
        dropout: float = 0.0,
        activation: str = "relu",
        identity_init: bool = True,
        temperature: float = 0.07,
        learn_temperature: bool = True,
        num_classes: int | None = None,
    ) -> None:
        super().__init__(
            query_dim, cand_dim, out_dim, hidden_sizes, dropout, activation, identity_init
        )
        if temperature <= 0:
            raise ValueError(f"model.net.temperature={temperature}: must be > 0")
        self.logit_scale = nn.Parameter(
            torch.tensor(math.log(1.0 / temperature)), requires_grad=learn_temperature
        )

    def pair_loss(self, image: Tensor, text: Tensor, image_ids: Tensor) -> Tensor:
        x = F.normalize(self.embed_image(image), dim=1)  # (B, E)
        z = F.normalize(self.embed_text(text), dim=1)  # (B, E)
        scale = self.logit_scale.clamp(max=math.log(100.0)).exp()
        return symmetric_infonce(scale * (x @ z.T), same_image(image_ids))
