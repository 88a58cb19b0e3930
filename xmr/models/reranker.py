"""A residual listwise re-ranker: it starts as its first stage and learns only corrections.

    score(q, c_i | list) = a · s0(q, c_i) + f(q, c_i, list)            (B, L)

``s0`` is the first stage's score — the cosine of the store's embeddings, which is the first
stage of the lists (``first_stage`` / ``pool`` mining) and of the full-gallery protocol; a
trained pairwise model serves as first stage through a store of its own embeddings. ``a`` is a
learnable scale (its initial value sets the softmax temperature of listwise losses). ``f`` is
exactly zero at initialisation, so an untrained re-ranker ranks exactly like its first stage:

    f = β · <P_q q, P_c c_i>  +  g(features_i, list)

- a learned **full bilinear** interaction ``<P_q q, P_c c> = qᵀ P_qᵀ P_c c`` (projections
  initialised at the identity when the dims agree, so at ``β = 1`` it equals the dot product),
  with its weight ``β`` initialised at 0;
- ``g``: an MLP over per-candidate features — the projected product ``P_q q ⊙ P_c c``, the
  absolute difference ``|P_q q − P_c c|``, the first-stage score ``s0`` and the candidate's
  first-stage rank in its list (``rank / L``, :func:`xmr.metrics.ranking.pessimistic_order` of
  ``s0``: it uses no labels) — followed, when ``num_layers > 0``, by a self-attention encoder over
  the list (no positional encoding: permutation equivariant; ``num_layers: 0`` is the
  no-attention ablation), and a linear output layer initialised at zero.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor, nn

from xmr.data.datamodule import XMRDataModule
from xmr.metrics.ranking import pessimistic_order, ranks_from_order
from xmr.models.encoder import encode, list_encoder
from xmr.models.ranker import list_cosine
from xmr.models.scorer import ScorerKind, Scorers, constructor_options
from xmr.utils.instantiate import ConfigError
from xmr.utils.precision import float32_linear

_ACTIVATIONS: dict[str, type[nn.Module]] = {"relu": nn.ReLU, "gelu": nn.GELU}


def _check(key: str, ok: bool, rule: str, value: Any) -> None:
    if not ok:
        raise ConfigError(f"model.net.{key}={value!r}: {rule}")


def check_reranker_options(
    *,
    proj_dim: int | None,
    hidden: int,
    num_layers: int,
    num_heads: int,
    ff_dim: int,
    dropout: float,
    activation: str,
    init_scale: float,
) -> None:
    """Raise :class:`ConfigError` naming the ``model.net`` key and its rule (the one place the
    re-ranker's options are checked: at start-up and by the constructor)."""

    def is_int(v: Any, minimum: int) -> bool:
        return not isinstance(v, bool) and isinstance(v, int) and v >= minimum

    _check("proj_dim", proj_dim is None or is_int(proj_dim, 1), "null or an integer >= 1", proj_dim)
    _check("hidden", is_int(hidden, 1), "an integer >= 1", hidden)
    _check("num_layers", is_int(num_layers, 0), "an integer >= 0", num_layers)
    _check("num_heads", is_int(num_heads, 1), "an integer >= 1", num_heads)
    _check(
        "num_heads", hidden % num_heads == 0, f"must divide model.net.hidden={hidden}", num_heads
    )
    _check("ff_dim", is_int(ff_dim, 1), "an integer >= 1", ff_dim)
    ok = not isinstance(dropout, bool) and isinstance(dropout, (int, float)) and 0 <= dropout < 1
    _check("dropout", ok, "must be in [0, 1)", dropout)
    _check("activation", activation in _ACTIVATIONS, f"one of {sorted(_ACTIVATIONS)}", activation)
    ok = (
        not isinstance(init_scale, bool) and isinstance(init_scale, (int, float)) and init_scale > 0
    )
    _check(
        "init_scale", ok, "must be > 0 (a positive scale keeps the first stage's order)", init_scale
    )


class ResidualReranker(nn.Module, ScorerKind):
    """Residual listwise re-ranker over a first stage (see the module docstring).

    Args:
        query_dim, cand_dim: feature dims of queries and candidates (from the store). The first
            stage is the cosine of the two, so the store must be a joint space.
        proj_dim: width of the bilinear projections (default: ``cand_dim``; identity init where
            the dims agree, else orthogonal).
        hidden: width of the per-candidate MLP and of the attention encoder.
        num_layers: self-attention layers over the list (0: none, the ablation).
        num_heads, ff_dim: of the attention layers.
        dropout: on the MLP's hidden layer and inside the attention layers.
        activation: ``relu`` or ``gelu``.
        init_scale: initial ``a`` (scores start at ``init_scale · cosine``).
    """

    def __init__(
        self,
        query_dim: int,
        cand_dim: int,
        proj_dim: int | None = None,
        hidden: int = 128,
        num_layers: int = 1,
        num_heads: int = 4,
        ff_dim: int = 256,
        dropout: float = 0.1,
        activation: str = "relu",
        init_scale: float = 10.0,
    ) -> None:
        super().__init__()
        check_reranker_options(
            proj_dim=proj_dim,
            hidden=hidden,
            num_layers=num_layers,
            num_heads=num_heads,
            ff_dim=ff_dim,
            dropout=dropout,
            activation=activation,
            init_scale=init_scale,
        )
        if query_dim != cand_dim:
            raise ConfigError(
                f"model.net: the re-ranker's first stage is the cosine of query and candidate, "
                f"which needs one joint space (query_dim={query_dim} != cand_dim={cand_dim})"
            )
        self.query_dim, self.cand_dim = int(query_dim), int(cand_dim)
        width = int(proj_dim or cand_dim)
        self.proj_q = nn.Linear(self.query_dim, width, bias=False)
        self.proj_c = nn.Linear(self.cand_dim, width, bias=False)
        for proj in (self.proj_q, self.proj_c):
            if width == proj.in_features:
                nn.init.eye_(proj.weight)
            else:
                nn.init.orthogonal_(proj.weight)
        self.scale = nn.Parameter(torch.tensor(float(init_scale)))  # a
        self.bilinear_weight = nn.Parameter(torch.zeros(()))  # β
        act = _ACTIVATIONS[activation]
        self.mlp = nn.Sequential(
            nn.Linear(2 * width + 2, hidden), act(), nn.Dropout(dropout)
        )  # features: P_q q ⊙ P_c c, |P_q q − P_c c|, s0, rank / L
        self.encoder = list_encoder(hidden, num_layers, num_heads, ff_dim, dropout, activation)
        self.out = nn.Linear(hidden, 1)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)

    @classmethod
    def check_options(cls, net: Mapping[str, Any]) -> None:
        check_reranker_options(**constructor_options(cls, net))

    @classmethod
    def build_scorers(cls, model: Any, dm: XMRDataModule) -> Scorers:
        """One re-ranker per direction, on a joint-space store (its first stage is cosine)."""
        if not dm.joint_space:
            raise ConfigError(
                f"model=reranker: the first stage is the cosine of the store's embeddings, but "
                f"{dm.store_path} has joint_space: false"
            )
        return super().build_scorers(model, dm)

    def first_stage(self, q: Tensor, c: Tensor) -> Tensor:
        """``s0``: cosine of query ``(B, D)`` and candidates ``(B, L, D)``, ``(B, L)``; the same
        function as the CLIP-cosine scorer's (:func:`xmr.models.ranker.list_cosine`)."""
        return list_cosine(q, c)

    def forward_split(self, q: Tensor, c: Tensor, mask: Tensor) -> Tensor:
        """Scores ``(B, L)`` of candidates ``c (B, L, D)`` for queries ``q (B, D)``; 0 at padding."""
        s0 = self.first_stage(q, c)  # (B, L)
        n_real = mask.sum(dim=1, keepdim=True).clamp(min=1).to(s0.dtype)  # (B, 1)
        rank = ranks_from_order(pessimistic_order(s0, None, mask)).to(s0.dtype)  # (B, L) 1-based
        pq = self.proj_q(q).unsqueeze(1)  # (B, 1, P)
        pc = self.proj_c(c)  # (B, L, P)
        bilinear = (pq * pc).sum(-1)  # (B, L): qᵀ P_qᵀ P_c c
        feats = torch.cat(
            [pq * pc, (pq - pc).abs(), s0.unsqueeze(-1), (rank / n_real).unsqueeze(-1)], dim=-1
        )  # (B, L, 2P + 2)
        h = self.mlp(feats)  # (B, L, H)
        if self.encoder is not None:
            h = encode(self.encoder, h, mask)  # (B, L, H)
        g = float32_linear(self.out, h).squeeze(-1)  # (B, L), float32 under autocast too
        scores = self.scale * s0 + self.bilinear_weight * bilinear + g
        return scores.masked_fill(~mask, 0.0)

    def forward(self, x: Tensor, mask: Tensor) -> Tensor:
        """Scores ``(B, L)`` from pair features ``x (B, L, 2D)`` = ``[query ; candidate]``."""
        return self.forward_split(x[:, 0, : self.query_dim], x[..., self.query_dim :], mask)
