"""Scorers over candidate lists: the Context-Aware Ranker, the CLIP-cosine baseline and its
reverse, the anti-cosine probe.

All map pair features ``x (B, L, D_q + D_c)`` — ``[query ; candidate]`` per item — and a padding
mask ``(B, L)`` (True = real candidate) to scores ``(B, L)``. Scores at padded slots are 0 and
carry no meaning: losses and metrics take the mask.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from xmr.data.datamodule import XMRDataModule
from xmr.metrics.full_gallery import cosine_gallery_scores
from xmr.models.encoder import encode, list_encoder
from xmr.models.scorer import ScorerKind, Scorers, constructor_options
from xmr.utils.instantiate import ConfigError
from xmr.utils.precision import float32_linear, full_precision

#: The activations of the FC block and the Transformer encoder layers (which support only these).
_ACTIVATIONS: dict[str, type[nn.Module]] = {"relu": nn.ReLU, "gelu": nn.GELU}
#: Per-pair interaction features of query q and candidate c (each needs one joint space).
INTERACTIONS: tuple[str, ...] = ("cosine", "product", "absdiff")


@full_precision
def list_cosine(q: Tensor, c: Tensor) -> Tensor:
    """Cosine of each query ``(B, D)`` with its candidates ``(B, L, D)``: ``(B, L)`` float32 (the
    first stage of the lists; an all-zero padded candidate gives 0), in float32 under autocast
    too."""
    qn = nn.functional.normalize(q.float(), dim=-1)  # (B, D)
    cn = nn.functional.normalize(c.float(), dim=-1)  # (B, L, D)
    return torch.einsum("bd,bld->bl", qn, cn)


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


def _integer(key: str, value: Any, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ConfigError(f"model.net.{key}={value!r}: must be an integer >= {minimum}")


def check_ranker_options(
    *,
    fc_sizes: Sequence[int],
    num_layers: int,
    num_heads: int,
    ff_dim: int,
    dropout: float,
    fc_dropout: float,
    activation: str,
    interaction: Sequence[str],
) -> None:
    """Raise :class:`ConfigError` naming the ``model.net`` key and its rule for an impossible
    Context-Aware Ranker option (the one place these options are checked: at start-up through
    :meth:`ContextAwareRanker.check_options`, and by the constructor)."""
    fc = list(fc_sizes) if isinstance(fc_sizes, Iterable) and not isinstance(fc_sizes, str) else []
    if not fc or any(isinstance(s, bool) or not isinstance(s, int) or s < 1 for s in fc):
        shown = fc if fc else fc_sizes
        raise ConfigError(f"model.net.fc_sizes={shown}: at least one size, each an integer >= 1")
    _integer("num_heads", num_heads, 1)
    if fc[-1] % num_heads:
        raise ConfigError(
            f"model.net.num_heads={num_heads} does not divide the encoder width "
            f"model.net.fc_sizes[-1]={fc[-1]}"
        )
    _integer("num_layers", num_layers, 0)
    _integer("ff_dim", ff_dim, 1)
    for key, p in (("dropout", dropout), ("fc_dropout", fc_dropout)):
        if isinstance(p, bool) or not isinstance(p, (int, float)) or not 0.0 <= p < 1.0:
            raise ConfigError(f"model.net.{key}={p!r}: must be in [0, 1)")
    if activation not in _ACTIVATIONS:
        raise ConfigError(
            f"model.net.activation={activation!r}: one of {sorted(_ACTIVATIONS)} (the "
            "activations the Transformer encoder layers support)"
        )
    names = [str(n) for n in (interaction or ())]
    if any(n not in INTERACTIONS for n in names) or len(set(names)) != len(names):
        raise ConfigError(f"model.net.interaction={names}: each of {INTERACTIONS} at most once")


class ContextAwareRanker(nn.Module, ScorerKind):
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
        check_ranker_options(
            fc_sizes=fc_sizes,
            num_layers=num_layers,
            num_heads=num_heads,
            ff_dim=ff_dim,
            dropout=dropout,
            fc_dropout=fc_dropout,
            activation=activation,
            interaction=interaction,
        )
        fc_sizes = [int(s) for s in fc_sizes]
        self.interaction = tuple(str(n) for n in (interaction or ()))
        if self.interaction and query_dim != cand_dim:
            raise ValueError(
                f"model.net.interaction={list(self.interaction)} needs one joint space, but "
                f"query_dim={query_dim} != cand_dim={cand_dim}"
            )
        if query_dim < 1 or cand_dim < 1:
            raise ValueError(f"model: query_dim={query_dim}, cand_dim={cand_dim} must be >= 1")
        d_model = fc_sizes[-1]
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

        self.encoder = list_encoder(d_model, num_layers, num_heads, ff_dim, dropout, activation)
        self.scorer = nn.Linear(d_model, 1)

    @classmethod
    def check_options(cls, net: Mapping[str, Any]) -> None:
        check_ranker_options(**constructor_options(cls, net))

    @classmethod
    def build_scorers(cls, model: Any, dm: XMRDataModule) -> Scorers:
        """One ranker per direction; interaction features need a joint-space store."""
        interaction = list(model.net.get("interaction") or [])
        if interaction and not dm.joint_space:
            raise ConfigError(
                f"model.net.interaction={interaction}: interaction features compare query and "
                f"candidate in one space, but {dm.store_path} has joint_space: false"
            )
        return super().build_scorers(model, dm)

    def forward_split(self, q: Tensor, c: Tensor, mask: Tensor) -> Tensor:
        """Scores from query ``q (B, D_q)`` and candidates ``c (B, L, D_c)``; mask ``(B, L)``."""
        h = self.input_c(c) + self.input_q(q).unsqueeze(1)  # (B, L, H0)
        if self.input_x is not None:
            h = h + self.input_x(interaction_features(q, c, self.interaction))  # (B, L, H0)
        h = self.input_rest(h)  # (B, L, H)
        if self.encoder is not None:
            h = encode(self.encoder, h, mask)  # (B, L, H): = self.encoder(h, ~mask), faster
        # The score head in float32 under autocast: bfloat16 scores would tie (and ties rank
        # pessimistically); the losses take the scores in float32 (xmr.utils.precision).
        scores = float32_linear(self.scorer, h).squeeze(-1)  # (B, L)
        return scores.masked_fill(~mask, 0.0)

    def forward(self, x: Tensor, mask: Tensor) -> Tensor:
        """Scores ``(B, L)`` from pair features ``x (B, L, D_q + D_c)`` = ``[query ; candidate]``."""
        q = x[:, 0, : self.query_dim]  # (B, D_q): the query half is the same on every item
        c = x[..., self.query_dim :]  # (B, L, D_c)
        return self.forward_split(q, c, mask)


class CosineScorer(nn.Module, ScorerKind):
    """The CLIP baseline: cosine similarity of query and candidate, no parameters.

    Needs a joint embedding space (``joint_space: true`` in the store, equal dims).
    """

    fits: ClassVar[bool] = False

    def __init__(self, query_dim: int, cand_dim: int) -> None:
        super().__init__()
        if query_dim != cand_dim:
            raise ValueError(
                f"cosine scorer needs one joint space: query_dim={query_dim} != cand_dim={cand_dim}"
            )
        self.query_dim = int(query_dim)

    def forward_split(self, q: Tensor, c: Tensor, mask: Tensor) -> Tensor:
        return list_cosine(q, c).masked_fill(~mask, 0.0)

    def gallery_scores(self, gallery: Tensor) -> Callable[[Tensor], Tensor]:
        """Cosine of queries ``(B, D)`` against the whole gallery ``(G, D)``: ``(B, G)``."""
        return cosine_gallery_scores(gallery)

    def forward(self, x: Tensor, mask: Tensor) -> Tensor:
        return self.forward_split(x[:, 0, : self.query_dim], x[..., self.query_dim :], mask)


class AntiCosineScorer(nn.Module, ScorerKind):
    """Minus the cosine of query and candidate, no parameters: the leakage probe as a model row.

    It knows nothing but the first-stage score and ranks the least similar candidate first, so
    it beats chance on lists only where the positive is not chosen like the negatives (the
    paper's ``hard`` lists: top-cosine negatives plus the positive; :mod:`xmr.data.probe`).

    In the full-gallery protocol its first stage is the cosine (``first_stage: cosine`` or
    ``auto`` on a joint-space store), whose top K it ranks in reverse; it offers no
    ``gallery_scores``, since ranking a whole gallery by anti-cosine retrieves the least similar
    items and is no first stage. Needs a joint embedding space, as :class:`CosineScorer`.
    """

    fits: ClassVar[bool] = False

    def __init__(self, query_dim: int, cand_dim: int) -> None:
        super().__init__()
        self.cosine = CosineScorer(query_dim, cand_dim)
        self.query_dim = int(query_dim)

    def forward_split(self, q: Tensor, c: Tensor, mask: Tensor) -> Tensor:
        return (-self.cosine.forward_split(q, c, mask)).masked_fill(~mask, 0.0)  # (B, L)

    def forward(self, x: Tensor, mask: Tensor) -> Tensor:
        return self.forward_split(x[:, 0, : self.query_dim], x[..., self.query_dim :], mask)
