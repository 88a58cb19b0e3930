"""Vectorised ensembles: E Context-Aware Rankers trained as one batched network in one process.

The members of a sweep (seeds, and losses) share one architecture, so their parameters stack
along a leading ensemble dimension ``E`` and one batched forward/backward trains them all:
every linear layer is one ``torch.baddbmm`` over ``E``, attention folds ``E`` into the batch of
:func:`xmr.models.encoder.attention`, LayerNorm runs without affine and applies each member's own
scale and shift. Since Adam (and AdamW) update each parameter element by element, one optimizer
over the stacked parameters holds exactly each member's own state.

Each member keeps what makes it a separate run:

* **initialisation** — member ``e`` is built as :class:`~xmr.models.ranker.ContextAwareRanker`
  instances (one per direction) right after ``seed_everything(seed_e)``, as ``xmr train`` builds
  them, and the stacked parameters are copies of theirs;
* **data order** — its own shuffling generators, seeded with
  :func:`xmr.data.datamodule.train_order_seed` and drawn through the same ``RandomSampler`` /
  ``BatchSampler`` as a DataLoader, cycling the shorter direction as Lightning's
  ``max_size_cycle`` does;
* **loss** — members may differ in loss; the per-member loss is ``torch.vmap``-ed over the
  members that share one;
* **optimizer state** — per element, as above; gradient-norm clipping is per member;
* **model selection** — its own best validation ``val/rsum`` (strictly greater, as
  ``ModelCheckpoint(mode="max")``) and its own best weights, tested at the end.

With dropout 0 an ensemble member reproduces the separate ``xmr train`` run of its seed and loss
up to float rounding (batched vs. single matrix products); with dropout > 0 the members draw
their masks from one shared stream, so they are separate runs with other masks.

Not supported (a clear error): early stopping (members would stop at different epochs),
pairwise baselines, models other than the Context-Aware Ranker, per-member optimizer settings.
"""

from __future__ import annotations

import copy
import logging
import math
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from lightning.pytorch.utilities import CombinedLoader
from torch import Tensor, nn
from torch.utils.data import DataLoader

from xmr.data.datamodule import train_order_seed
from xmr.models.encoder import attention, dropout, key_mask
from xmr.models.ranker import ContextAwareRanker, interaction_features

log = logging.getLogger(__name__)

__all__ = ["EnsembleRanker", "MemberBatches", "ensemble_losses", "clip_grad_norm_per_member"]


def _key(name: str) -> str:
    return name.replace(".", "__")


class EnsembleRanker(nn.Module):
    """E Context-Aware Rankers of one architecture as one module with stacked parameters.

    Args:
        members: the E rankers (same hyper-parameters); their current parameters are copied.

    Parameters keep the member's names with ``.`` → ``__`` and a leading ``E`` dimension, e.g.
    ``input_c__weight (E, H0, D_c)``. :meth:`member_state_dict` gives member ``e``'s
    ``state_dict`` back, loadable into a ``ContextAwareRanker``.
    """

    def __init__(self, members: Sequence[ContextAwareRanker]) -> None:
        super().__init__()
        if not members:
            raise ValueError("ensemble: needs at least one member")
        ref = members[0]
        if not isinstance(ref, ContextAwareRanker):
            raise TypeError(
                f"ensemble: members must be ContextAwareRanker (model=ranker), got "
                f"{type(ref).__name__}"
            )
        shapes = {n: p.shape for n, p in ref.named_parameters()}
        for i, m in enumerate(members[1:], 1):
            other = {n: p.shape for n, p in m.named_parameters()}
            if type(m) is not type(ref) or other != shapes:
                raise ValueError(f"ensemble: member {i} differs in architecture from member 0")
        self.num_members = len(members)
        self.names = list(shapes)
        self.params = nn.ParameterDict(
            {
                _key(n): nn.Parameter(
                    torch.stack([dict(m.named_parameters())[n].detach() for m in members]).clone()
                )
                for n in self.names
            }
        )
        self.query_dim, self.cand_dim = ref.query_dim, ref.cand_dim
        self.interaction: tuple[str, ...] = tuple(getattr(ref, "interaction", ()) or ())
        # Structure of the per-item input block: Linear layers are batched, the rest (activation,
        # dropout) are stateless modules applied as they are.
        self.rest: list[tuple[str, Any]] = []
        for i, mod in enumerate(ref.input_rest):
            if isinstance(mod, nn.Linear):
                self.rest.append(("linear", f"input_rest.{i}"))
            else:
                self.rest.append(("module", copy.deepcopy(mod)))
        self._rest_modules = nn.ModuleList([m for kind, m in self.rest if kind == "module"])
        self.layers: list[dict[str, Any]] = []
        if ref.encoder is not None:
            for i, layer in enumerate(ref.encoder.layers):
                act = layer.activation
                act_name = "gelu" if act is F.gelu or isinstance(act, nn.GELU) else "relu"
                self.layers.append(
                    {
                        "prefix": f"encoder.layers.{i}",
                        "heads": layer.self_attn.num_heads,
                        "dropout": float(layer.dropout.p),
                        "attn_dropout": float(layer.self_attn.dropout),
                        "eps": float(layer.norm1.eps),
                        "activation": act_name,
                        "norm_first": bool(layer.norm_first),
                    }
                )
            self.final_norm_eps = (
                float(ref.encoder.norm.eps) if ref.encoder.norm is not None else None
            )
        else:
            self.final_norm_eps = None

    # -- helpers -------------------------------------------------------------------------------
    def p(self, name: str) -> Tensor:
        return self.params[_key(name)]

    def _linear(self, x: Tensor, name: str, bias: bool = True) -> Tensor:
        """Per-member ``x (E, N, d_in) @ W_e^T + b_e`` → ``(E, N, d_out)``."""
        # nn.MultiheadAttention names its input projection in_proj_weight / in_proj_bias.
        sep = "_" if name.endswith("in_proj") else "."
        w = self.p(f"{name}{sep}weight")  # (E, d_out, d_in)
        if bias:
            return torch.baddbmm(self.p(f"{name}{sep}bias").unsqueeze(1), x, w.transpose(1, 2))
        return torch.bmm(x, w.transpose(1, 2))

    def _norm(self, x: Tensor, name: str, eps: float) -> Tensor:
        """Per-member LayerNorm over the last dim of ``x (E, N, H)``."""
        y = F.layer_norm(x, x.shape[-1:], eps=eps)
        return y * self.p(f"{name}.weight").unsqueeze(1) + self.p(f"{name}.bias").unsqueeze(1)

    def _dropout(self, x: Tensor, p: float) -> Tensor:
        return dropout(x, p, self.training)

    # -- forward -------------------------------------------------------------------------------
    def forward_split(self, q: Tensor, c: Tensor, mask: Tensor) -> Tensor:
        """Scores ``(E, B, L)`` of every member.

        Args:
            q: ``(E, B, D_q)`` per-member queries, or ``(B, D_q)`` shared by all members.
            c: ``(E, B, L, D_c)`` or ``(B, L, D_c)`` candidates (zeros at padding).
            mask: ``(E, B, L)`` or ``(B, L)`` bool, True = real candidate.
        """
        E = self.num_members
        shared = c.dim() == 3
        if shared:
            B, Lc, _ = c.shape
            # One input pass serves all members: c @ [W_1; ...; W_E]^T, (B*L, E*H0).
            w = self.p("input_c.weight")  # (E, H0, D_c)
            h0 = w.shape[1]
            hc = (c.reshape(B * Lc, -1) @ w.reshape(E * h0, -1).t()).view(B * Lc, E, h0)
            hc = hc.permute(1, 0, 2) + self.p("input_c.bias").unsqueeze(1)  # (E, B*L, H0)
            wq = self.p("input_q.weight")  # (E, H0, D_q)
            hq = (q @ wq.reshape(E * h0, -1).t()).view(B, E, h0).permute(1, 0, 2)  # (E, B, H0)
            qe, ce = q.expand(E, *q.shape), c.expand(E, *c.shape)
            mask = mask.expand(E, *mask.shape)
        else:
            _, B, Lc, _ = c.shape
            hc = self._linear(c.reshape(E, B * Lc, -1), "input_c")  # (E, B*L, H0)
            hq = self._linear(q, "input_q", bias=False)  # (E, B, H0)
            qe, ce = q, c
        h = hc.view(E, B, Lc, -1) + hq.unsqueeze(2)  # (E, B, L, H0)
        if self.interaction:
            feats = interaction_features(
                qe.reshape(E * B, -1), ce.reshape(E * B, Lc, -1), self.interaction
            )  # (E*B, L, F)
            h = h + self._linear(feats.view(E, B * Lc, -1), "input_x", bias=False).view(
                E, B, Lc, -1
            )
        x = h.reshape(E, B * Lc, -1)  # (E, N, H0), N = B*L
        for kind, item in self.rest:
            x = self._linear(x, item) if kind == "linear" else item(x)
        attn_mask = key_mask(mask.reshape(E * B, Lc))  # (E*B, 1, 1, L): True = attend; or None
        for spec in self.layers:
            x = self._encoder_layer(x, spec, attn_mask, B, Lc)
        if self.final_norm_eps is not None:
            x = self._norm(x, "encoder.norm", self.final_norm_eps)
        scores = self._linear(x, "scorer").view(E, B, Lc)  # (E, B, L)
        return scores.masked_fill(~mask, 0.0)

    def _encoder_layer(
        self, x: Tensor, spec: Mapping[str, Any], attn_mask: Tensor | None, B: int, Lc: int
    ) -> Tensor:
        """One ``nn.TransformerEncoderLayer`` (batch_first) for every member; ``x (E, B*L, H)``."""
        pre, eps = spec["prefix"], spec["eps"]

        def sa_block(y: Tensor) -> Tensor:
            E, N, H = y.shape
            heads = spec["heads"]
            qkv = self._linear(y, f"{pre}.self_attn.in_proj")  # (E, N, 3H)
            a, scale = attention(
                qkv.view(E * B, Lc, 3 * H), heads, attn_mask, spec["attn_dropout"], self.training
            )  # (E*B, L, H), before the dropout scale
            if scale != 1.0:
                a = a * scale
            a = a.reshape(E, N, H)
            return self._dropout(self._linear(a, f"{pre}.self_attn.out_proj"), spec["dropout"])

        def ff_block(y: Tensor) -> Tensor:
            act = F.gelu if spec["activation"] == "gelu" else F.relu
            y = self._dropout(act(self._linear(y, f"{pre}.linear1")), spec["dropout"])
            return self._dropout(self._linear(y, f"{pre}.linear2"), spec["dropout"])

        if spec["norm_first"]:
            x = x + sa_block(self._norm(x, f"{pre}.norm1", eps))
            return x + ff_block(self._norm(x, f"{pre}.norm2", eps))
        x = self._norm(x + sa_block(x), f"{pre}.norm1", eps)
        return self._norm(x + ff_block(x), f"{pre}.norm2", eps)

    # -- members -------------------------------------------------------------------------------
    def member_state_dict(self, e: int) -> dict[str, Tensor]:
        """Member ``e``'s parameters under ``ContextAwareRanker`` names (detached copies)."""
        return {n: self.p(n)[e].detach().clone() for n in self.names}

    def load_member(self, e: int, state: Mapping[str, Tensor]) -> None:
        """Overwrite member ``e``'s parameters from a ``ContextAwareRanker`` state dict."""
        with torch.no_grad():
            for n in self.names:
                self.p(n)[e].copy_(state[n])


def clip_grad_norm_per_member(
    params: Sequence[Tensor], max_norm: float, norm_type: float = 2.0
) -> Tensor:
    """``clip_grad_norm_`` for each member separately: parameters are stacked ``(E, ...)`` and
    member ``e``'s gradient norm is over all its slices ``p.grad[e]``. Returns the ``(E,)`` norms
    before clipping."""
    grads = [p.grad for p in params if p.grad is not None]
    if not grads:
        return torch.zeros(0)
    per = torch.stack([g.flatten(1).norm(norm_type, dim=1) for g in grads], dim=1)  # (E, P)
    total = per.norm(norm_type, dim=1)  # (E,)
    coef = (max_norm / (total + 1e-6)).clamp(max=1.0)  # (E,)
    for g in grads:
        g.mul_(coef.view(-1, *([1] * (g.dim() - 1))).to(g.dtype))
    return total


def ensemble_losses(
    scores: Tensor,
    labels: Tensor,
    mask: Tensor,
    groups: Sequence[tuple[Callable[[Tensor, Tensor, Tensor], Tensor], Sequence[int]]],
) -> Tensor:
    """Per-member losses ``(E,)`` of ``scores``, ``labels``, ``mask`` ``(E, B, L)``.

    ``groups`` pairs each loss with the member indices that train with it; each group is one
    ``torch.vmap``-ed call (a Python loop over its members where a loss does not vmap).
    """
    out = scores.new_zeros(scores.shape[0])
    parts: list[tuple[Tensor, Tensor]] = []
    for loss_fn, members in groups:
        idx = torch.as_tensor(list(members), device=scores.device)
        s, y, m = scores[idx], labels[idx], mask[idx]
        try:
            values = torch.vmap(loss_fn)(s, y, m)  # (G,)
        except Exception:  # noqa: BLE001 — a loss whose ops lack batching rules
            values = torch.stack([loss_fn(s[g], y[g], m[g]) for g in range(len(members))])
        parts.append((idx, values))
    for idx, values in parts:
        out = out.index_put((idx,), values)
    return out


class MemberBatches:
    """Each member's own order of the training lists of every direction, as ``xmr train`` gets it.

    Member ``e`` and direction ``d`` iterate a shuffled ``DataLoader`` over list indices with
    ``generator=Generator().manual_seed(train_order_seed(seed_e, d))`` — the loader
    :class:`~xmr.data.datamodule.XMRDataModule` builds, whose iterator also draws its base seed
    from that generator — combined across directions by Lightning's own
    ``CombinedLoader(mode="max_size_cycle")`` and iterated as the fit loop does (no look-ahead). So
    member ``e``'s batches, and its generators' states from epoch to epoch, equal the run's.

    Args:
        num_lists: direction → number of training lists.
        batch_size: lists per batch.
        seeds: the members' run seeds.
    """

    def __init__(self, num_lists: Mapping[str, int], batch_size: int, seeds: Sequence[int]) -> None:
        self.directions = list(num_lists)
        self.members = [
            {
                d: DataLoader(
                    range(int(n)),
                    batch_size=int(batch_size),
                    shuffle=True,
                    generator=torch.Generator().manual_seed(train_order_seed(int(s), d)),
                    collate_fn=list,
                )
                for d, n in num_lists.items()
            }
            for s in seeds
        ]
        self.steps = max(math.ceil(int(n) / int(batch_size)) for n in num_lists.values())

    def __len__(self) -> int:
        return self.steps

    def epoch(self) -> Iterator[dict[str, Tensor]]:
        """One epoch: per step, direction → ``(E, B)`` list indices (row e = member e's batch).

        Exactly ``len(self)`` steps and no look-ahead fetch, as Lightning's fit loop (which knows
        the loader's length) draws them: a further ``next`` would advance the generators.
        """
        iters = [iter(CombinedLoader(m, mode="max_size_cycle")) for m in self.members]
        for _ in range(self.steps):
            rows = [next(it)[0] for it in iters]
            yield {d: torch.as_tensor([r[d] for r in rows], dtype=torch.long) for d in rows[0]}
