"""The one route from a config to an object.

Configs travel with checkpoints and results, so a `_target_` is code that a config file can make
us run. Every `hydra.utils.instantiate` in xmr goes through :func:`instantiate`, and every config
(from the command line or read back from a run's ``config.yaml``) is checked by
:func:`check_targets` first. A target is accepted only when

1. its dotted path starts with ``xmr.``, ``torch.`` or ``lightning.`` (checked before anything is
   imported, so a foreign module is never even loaded), and
2. the object the path resolves to is something xmr means to build:

   * a class defined in xmr (``obj.__module__`` is an ``xmr`` module: a path that reaches
     through an xmr module to a re-exported name, such as ``xmr.data.store.shutil.copyfile``,
     resolves to ``shutil.copyfile`` and is refused), or a function of xmr marked with
     :func:`buildable`;
   * a torch or lightning **class** of a kind a run is made of: a module, an optimizer, a learning
     rate scheduler, a Trainer, a callback, a logger, a strategy, an accelerator, a plugin.

Functions of torch and lightning (``torch.load``, ``torch.hub.load``, ``torch.save``, ...) are
never targets; neither is anything that is not a class of those kinds.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, TypeVar

import hydra.utils
from omegaconf import DictConfig, ListConfig, OmegaConf

from xmr.utils.errors import UserError

ALLOWED_TARGET_PREFIXES: tuple[str, ...] = ("xmr.", "torch.", "lightning.")

F = TypeVar("F", bound=Callable[..., Any])


class ConfigError(UserError, ValueError):
    """A config is invalid: names the config key and the rule it breaks."""


def buildable(fn: F) -> F:
    """Mark an xmr factory function as a valid `_target_` (classes of xmr need no mark)."""
    fn.__xmr_buildable__ = True  # type: ignore[attr-defined]
    return fn


@functools.lru_cache(maxsize=1)
def _allowed_bases() -> tuple[type, ...]:
    """The kinds of torch/lightning classes a run is built from."""
    import lightning.pytorch as pl
    import torch
    from lightning.pytorch.accelerators import Accelerator
    from lightning.pytorch.callbacks import Callback
    from lightning.pytorch.loggers import Logger
    from lightning.pytorch.plugins import Precision
    from lightning.pytorch.plugins.environments import ClusterEnvironment
    from lightning.pytorch.profilers import Profiler
    from lightning.pytorch.strategies import Strategy

    return (
        torch.nn.Module,
        torch.optim.Optimizer,
        torch.optim.lr_scheduler.LRScheduler,
        torch.optim.lr_scheduler.ReduceLROnPlateau,
        pl.Trainer,
        pl.LightningDataModule,
        Callback,
        Logger,
        Strategy,
        Accelerator,
        Precision,
        ClusterEnvironment,
        Profiler,
    )


def _refuse(where: str, target: str, why: str) -> ConfigError:
    return ConfigError(
        f"{where}._target_ = {target!r}: {why}; only targets in "
        f"{', '.join(p.rstrip('.') for p in ALLOWED_TARGET_PREFIXES)} that name a class xmr builds "
        "(an xmr class or marked xmr factory; a torch/lightning module, optimizer, scheduler, "
        "trainer, callback, logger, strategy or plugin) may be instantiated"
    )


def check_target(target: str, where: str = "config") -> Any:
    """Resolve ``target`` and return the object it names, or raise :class:`ConfigError`."""
    if not target.startswith(ALLOWED_TARGET_PREFIXES):
        raise _refuse(where, target, "not an xmr, torch or lightning path")
    try:
        obj = hydra.utils.get_object(target)
    except Exception as e:  # ImportError, AttributeError, ValueError: the path names nothing
        raise _refuse(where, target, f"it names no object ({type(e).__name__})") from None
    module = str(getattr(obj, "__module__", "") or "")
    if module == "xmr" or module.startswith("xmr."):
        if isinstance(obj, type) or getattr(obj, "__xmr_buildable__", False):
            return obj
        raise _refuse(where, target, "an xmr function that is not marked @buildable")
    if module.startswith(("torch", "lightning")) and isinstance(obj, type):
        if issubclass(obj, _allowed_bases()):
            return obj
        raise _refuse(where, target, f"{module}.{obj.__name__} is not a kind of class a run uses")
    raise _refuse(where, target, f"it resolves to {module or '?'}.{getattr(obj, '__name__', obj)}")


def check_targets(node: Any, where: str = "config") -> None:
    """Check every `_target_` in a config tree (see the module docstring for the rule)."""
    if isinstance(node, DictConfig):
        if "_target_" in node:
            value = node.get("_target_")
            if value is not None:
                check_target(str(value), where)
        for key in node:
            check_targets(node._get_node(key), f"{where}.{key}")  # type: ignore[union-attr]
    elif isinstance(node, ListConfig):
        for i in range(len(node)):
            check_targets(node._get_node(i), f"{where}[{i}]")
    elif isinstance(node, dict):
        check_targets(OmegaConf.create(node), where)


def instantiate(cfg: Any, where: str = "config", **kwargs: Any) -> Any:
    """`hydra.utils.instantiate` restricted to the targets :func:`check_target` accepts."""
    if isinstance(cfg, dict):
        cfg = OmegaConf.create(cfg)
    check_targets(cfg, where)
    for value in kwargs.values():
        check_targets(value, where)
    return hydra.utils.instantiate(cfg, **kwargs)
