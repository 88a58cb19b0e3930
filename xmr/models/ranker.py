"""Scorers over candidate lists: the Context-Aware Ranker and the CLIP-cosine baseline.

Both map pair features ``x (B, L, D_q + D_c)`` — ``[query ; candidate]`` per item — and a padding
mask ``(B, L)`` (True = real candidate) to scores ``(B, L)``. Scores at padded slots are 0 and
carry no meaning: losses and metrics take the mask.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from xmr.models.encoder import encode

_ACTIVATIONS: dict[str, type[nn.Module]] = {"relu": nn.ReLU, "gelu": nn.GELU, "tanh": nn.Tanh}
#: Per-pair interaction features of query q and candidate c (each needs one joint space).
INTERACTIONS: tuple[str, ...] = ("cosine", "product", "absdiff")


def interaction_width(names: Sequence[str], dim: int) -> int:
    """Width of the interaction features: 1 for ``cosine``, ``dim`` for ``product`` / ``absdiff``."""
    return sum(1 if n == "cosine" else dim for n in names)


def interaction_features(q: Tensor, c: Tensor, names: Sequence[str]) -> Tensor:
    """Per-pair features ``(B, L, F)`` of query ``q (B, D)`` and candidates ``c (B, L, D)``, in the
    order of ``names``: ``cosine`` = cos(q, c) ``(B, L, 1)``, ``product`` = q ⊙ c ``(B, L, D)``,
    ``absdiff`` = |q − c| ``(B, L, D)``. All-zero candidates (padding) give a finite cosine 0."""
    parts = []
    for name in names:
        if name == "cosine":
            qn = nn.functional.normalize(q, dim=-1).unsqueeze(1)  # (B, 1, D)
            parts.append((qn * nn.functional.normalize(c, dim=-1)).sum(-1, keepdim=True))
        elif name == "product":
            parts.append(q.unsqueeze(1) * c)
        elif name == "absdiff":
            parts.append((q.unsqueeze(1) - c).abs())
        else:
            raise ValueError(f"model.net.interaction: unknown {name!r}; one of {INTERACTIONS}")
    return torch.cat(parts, dim=-1)


class ContextAwareRanker(nn.Module):
    """Context-Aware Ranker (Pobrotyn et al. 2020, "Context-Aware Learning to Rank with
    Self-Attention"; the model of the allRank library).

    Per item: a fully connected input block (``fc_sizes``, default [64]); then a Transformer
    encoder over the items of a list — no positional encoding, so the model is permutation
    equivariant — with a key-padding mask; then a linear scorer. Like allRank, the encoder layers
    are pre-norm and followed by a final LayerNorm.

    The first input layer is split as ``W·[q; c] = W_q·q + W_c·c`` so the query half is computed
    once per list (``forward_split``) rather than once per candidate.

    ``interaction`` (subset of :data:`INTERACTIONS`) appends per-pair interaction features
    (:func:`interaction_features`) to each item's input, ``[q; c; cos(q, c); q ⊙ c; |q − c|]``:
    the paper's concatenation gives the first layer no multiplicative query × candidate term.
    They need ``query_dim == cand_dim`` (one joint space). :attr:`input_dim` is the per-item
    input width.
    """

    def __init__(
        self,
        query_dim: int,
        cand_dim: int,
        fc_sizes: Sequence[int] = (64,),
        num_layers: int = 2,
        num_heads: int = 4,
        ff_dim: int = 128,
        dropout: float = 0.1,
        fc_dropout: float = 0.0,
        activation: str = "relu",
        interaction: Sequence[str] = (),
    ) -> None:
        super().__init__()
        fc_sizes = list(fc_sizes)
        self.interaction = tuple(str(n) for n in (interaction or ()))
        unknown = [n for n in self.interaction if n not in INTERACTIONS]
        if unknown or len(set(self.interaction)) != len(self.interaction):
            raise ValueError(
                f"model.net.interaction={list(self.interaction)}: each of {INTERACTIONS} at most once"
            )
        if self.interaction and query_dim != cand_dim:
            raise ValueError(
                f"model.net.interaction={list(self.interaction)} needs one joint space, but "
                f"query_dim={query_dim} != cand_dim={cand_dim}"
            )
        if query_dim < 1 or cand_dim < 1:
            raise ValueError(f"model: query_dim={query_dim}, cand_dim={cand_dim} must be >= 1")
        if not fc_sizes or any(int(s) < 1 for s in fc_sizes):
            raise ValueError(f"model.fc_sizes={fc_sizes}: needs at least one size, all >= 1")
        d_model = int(fc_sizes[-1])
        if num_heads < 1 or d_model % num_heads != 0:
            raise ValueError(
                f"model.num_heads={num_heads} must divide the encoder width "
                f"model.fc_sizes[-1]={d_model}"
            )
        if num_layers < 0 or ff_dim < 1 or not 0.0 <= dropout < 1.0 or not 0.0 <= fc_dropout < 1:
            raise ValueError(
                f"model: num_layers={num_layers} >= 0, ff_dim={ff_dim} >= 1 and dropouts in [0, 1)"
            )
        if activation not in _ACTIVATIONS:
            raise ValueError(f"model.activation={activation!r}: one of {sorted(_ACTIVATIONS)}")
        self.query_dim, self.cand_dim = int(query_dim), int(cand_dim)
        act = _ACTIVATIONS[activation]

        self.input_q = nn.Linear(self.query_dim, fc_sizes[0], bias=False)
        self.input_c = nn.Linear(self.cand_dim, fc_sizes[0])
        n_inter = interaction_width(self.interaction, self.cand_dim)
        self.input_x = nn.Linear(n_inter, fc_sizes[0], bias=False) if n_inter else None
        self.input_dim = self.query_dim + self.cand_dim + n_inter
        layers: list[nn.Module] = [act(), nn.Dropout(fc_dropout)]
        for d_in, d_out in zip(fc_sizes[:-1], fc_sizes[1:], strict=False):
            layers += [nn.Linear(d_in, d_out), act(), nn.Dropout(fc_dropout)]
        self.input_rest = nn.Sequential(*layers)

        if num_layers > 0:
            layer = nn.TransformerEncoderLayer(
                d_model=d_model,
                nhead=num_heads,
                dim_feedforward=ff_dim,
                dropout=dropout,
                activation=activation if activation in ("relu", "gelu") else "relu",
                batch_first=True,
                norm_first=True,
            )
            self.encoder: nn.Module | None = nn.TransformerEncoder(
                layer, num_layers=num_layers, norm=nn.LayerNorm(d_model), enable_nested_tensor=False
            )
        else:
            self.encoder = None
        self.scorer = nn.Linear(d_model, 1)

    def forward_split(self, q: Tensor, c: Tensor, mask: Tensor) -> Tensor:
        """Scores from query ``q (B, D_q)`` and candidates ``c (B, L, D_c)``; mask ``(B, L)``."""
        h = self.input_c(c) + self.input_q(q).unsqueeze(1)  # (B, L, H0)
        if self.input_x is not None:
            h = h + self.input_x(interaction_features(q, c, self.interaction))  # (B, L, H0)
        h = self.input_rest(h)  # (B, L, H)
        if self.encoder is not None:
            h = encode(self.encoder, h, mask)  # (B, L, H): = self.encoder(h, ~mask), faster
        scores = self.scorer(h).squeeze(-1)  # (B, L)
        return scores.masked_fill(~mask, 0.0)

    def forward(self, x: Tensor, mask: Tensor) -> Tensor:
        """Scores ``(B, L)`` from pair features ``x (B, L, D_q + D_c)`` = ``[query ; candidate]``."""
        q = x[:, 0, : self.query_dim]  # (B, D_q): the query half is the same on every item
        c = x[..., self.query_dim :]  # (B, L, D_c)
        return self.forward_split(q, c, mask)


class CosineScorer(nn.Module):
    """The CLIP baseline: cosine similarity of query and candidate, no parameters.

    Needs a joint embedding space (``joint_space: true`` in the store, equal dims).
    """

    def __init__(self, query_dim: int, cand_dim: int) -> None:
        super().__init__()
        if query_dim != cand_dim:
            raise ValueError(
                f"cosine scorer needs one joint space: query_dim={query_dim} != cand_dim={cand_dim}"
            )
        self.query_dim = int(query_dim)

    def forward_split(self, q: Tensor, c: Tensor, mask: Tensor) -> Tensor:
        q = torch.nn.functional.normalize(q.float(), dim=-1)  # (B, D)
        c = torch.nn.functional.normalize(c.float(), dim=-1)  # (B, L, D)
        scores = torch.einsum("bd,bld->bl", q, c)  # (B, L)
        return scores.masked_fill(~mask, 0.0)

    def forward(self, x: Tensor, mask: Tensor) -> Tensor:
        return self.forward_split(x[:, 0, : self.query_dim], x[..., self.query_dim :], mask)
