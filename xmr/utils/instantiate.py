"""The one route from a config to an object.

Configs travel with checkpoints and results, so a `_target_` is code that a config file can make
us run. Every `hydra.utils.instantiate` in xmr goes through :func:`instantiate`, which only accepts
targets inside the packages below (the direction Hydra 1.4 takes with its allow-list).
"""

from __future__ import annotations

from typing import Any

import hydra.utils
from omegaconf import DictConfig, ListConfig, OmegaConf

ALLOWED_TARGET_PREFIXES: tuple[str, ...] = ("xmr.", "torch.", "lightning.")


class ConfigError(ValueError):
    """A config is invalid: names the config key and the rule it breaks."""


def _check_targets(node: Any, where: str) -> None:
    if isinstance(node, DictConfig):
        target = node.get("_target_") if "_target_" in node else None
        if target is not None and not str(target).startswith(ALLOWED_TARGET_PREFIXES):
            raise ConfigError(
                f"{where}._target_ = {target!r}: only targets in "
                f"{', '.join(p.rstrip('.') for p in ALLOWED_TARGET_PREFIXES)} may be instantiated"
            )
        for key in node:
            _check_targets(node._get_node(key), f"{where}.{key}")  # type: ignore[union-attr]
    elif isinstance(node, ListConfig):
        for i in range(len(node)):
            _check_targets(node._get_node(i), f"{where}[{i}]")


def instantiate(cfg: Any, where: str = "config", **kwargs: Any) -> Any:
    """`hydra.utils.instantiate` restricted to `xmr.*`, `torch.*` and `lightning.*` targets."""
    if isinstance(cfg, dict):
        cfg = OmegaConf.create(cfg)
    _check_targets(cfg, where)
    return hydra.utils.instantiate(cfg, **kwargs)
