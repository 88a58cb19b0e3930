"""What a model kind offers the run that builds it.

A model option (``conf/model/<name>.yaml``) names its scorer class in ``net._target_``; the class
derives from :class:`ScorerKind` and answers, without any flag in the config:

- :attr:`~ScorerKind.fits` — whether it has parameters to fit (False: a run only evaluates it,
  and ``xmr eval`` needs no checkpoint);
- :attr:`~ScorerKind.trains_on` — ``"lists"``: the run's ranking loss (``cfg.loss``) over
  candidate lists; ``"pairs"``: its own ``pair_loss`` over (image, caption) pairs of the train
  split, no ranking loss;
- :meth:`~ScorerKind.check_options` — start-up checks of its ``model.net`` options, before any
  data is generated or mined;
- :meth:`~ScorerKind.build_scorers` — its scorers for a data module: one per direction, and the
  model they share when they share one.

A new model kind is a class deriving :class:`ScorerKind` (``forward_split(q, c, mask) -> (B, L)``
scores) plus ``conf/model/<name>.yaml``; :func:`xmr.models.build.build_module` and the commands
need no edit.
"""

from __future__ import annotations

import inspect
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

from torch import nn

from xmr.data.datamodule import XMRDataModule
from xmr.utils.instantiate import ConfigError, check_target, instantiate


@dataclass
class Scorers:
    """A model kind's scorers for one data module.

    Attributes:
        networks: direction → scorer of ``(B, L)`` scores (``forward_split(q, c, mask)``).
        shared: the model the directions' scorers share (registered once by the LightningModule;
            for ``trains_on == "pairs"`` the model whose ``pair_loss`` trains), else None.
    """

    networks: dict[str, nn.Module]
    shared: nn.Module | None = None


class ScorerKind:
    """The interface of a model kind (see the module docstring). Defaults: parameters to fit,
    trained with the ranking loss over lists, one scorer per direction built by
    ``model.net(query_dim=..., cand_dim=...)``."""

    fits: ClassVar[bool] = True
    trains_on: ClassVar[str] = "lists"

    @classmethod
    def check_options(cls, net: Mapping[str, Any]) -> None:
        """Raise :class:`ConfigError` naming the ``model.net`` key and its rule; no checks here."""

    @classmethod
    def build_scorers(cls, model: Any, dm: XMRDataModule) -> Scorers:
        """One scorer per direction of ``dm`` from the ``model`` config (``model.net``), built in
        the order of ``dm.directions`` (so a seed gives the same initial weights)."""
        networks = {}
        for direction in dm.directions:
            query_dim, cand_dim = dm.dims(direction)
            factory = instantiate(model.net, where="model.net")
            networks[direction] = factory(query_dim=query_dim, cand_dim=cand_dim)
        return Scorers(networks)


def constructor_options(cls: type, net: Mapping[str, Any]) -> dict[str, Any]:
    """The keyword options of ``cls``'s constructor that have defaults, each from ``net`` (a
    ``model.net`` config) where given, else its default: what a ``check_options`` checks."""
    defaults = {
        name: p.default
        for name, p in inspect.signature(cls.__init__).parameters.items()  # type: ignore[misc]
        if p.default is not inspect.Parameter.empty
    }
    return {k: net.get(k, v) for k, v in defaults.items()}


def scorer_kind(model: Any) -> type[ScorerKind]:
    """The scorer class that the ``model`` config (``cfg.model``) names in ``net._target_``."""
    net = model.get("net") if model is not None else None
    target = net.get("_target_") if net is not None else None
    if not target:
        raise ConfigError("model.net._target_: missing; a model option names its scorer class")
    kind = check_target(str(target), "model.net")
    if not (isinstance(kind, type) and issubclass(kind, ScorerKind)):
        raise ConfigError(
            f"model.net._target_={target!r}: not a scorer class (one deriving "
            "xmr.models.scorer.ScorerKind)"
        )
    return kind
