"""Start-up checks of a composed config: impossible values are caught before any work is done.

Unknown keys and wrong types on the command line are already refused by Hydra's struct mode; the
checks here catch values that are well-typed but impossible, naming the key and the rule.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from omegaconf import DictConfig, ListConfig

from xmr.data.mining import (
    MINING_DEFAULTS,
    RANKED_STRATEGIES,
    STRATEGIES,
    TEST_GALLERY,
    ListsError,
    check_redrawable,
)
from xmr.data.store import DIRECTIONS
from xmr.metrics.ranking import RSUM_KS
from xmr.models.module import validation_keys
from xmr.models.scorer import scorer_kind
from xmr.utils.instantiate import ConfigError, check_targets
from xmr.utils.precision import check_precision


def _positive_int(cfg: DictConfig, key: str, value: Any, minimum: int = 1) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
        raise ConfigError(f"{key}={value!r}: must be an integer >= {minimum}")


def validate_config(cfg: DictConfig) -> None:
    """Raise :class:`ConfigError` naming the key and the rule for an impossible config."""
    check_targets(cfg, "config")
    data = cfg.data
    _positive_int(cfg, "data.batch_size", data.get("batch_size"))
    _positive_int(cfg, "data.eval_batch_size", data.get("eval_batch_size"))
    _positive_int(cfg, "data.num_workers", data.get("num_workers", 0), minimum=0)
    if data.get("direction") not in ("t2i", "i2t", "both"):
        raise ConfigError(f"data.direction={data.get('direction')!r}: one of t2i, i2t, both")
    mining = data.get("mining") or {}
    strategy = mining.get("strategy", MINING_DEFAULTS["strategy"])
    if strategy not in STRATEGIES:
        raise ConfigError(f"data.mining.strategy={strategy!r}: one of {', '.join(STRATEGIES)}")
    pool, hard = (mining.get(k, MINING_DEFAULTS[k]) for k in ("pool", "hard"))
    _positive_int(cfg, "data.mining.pool", pool)
    _positive_int(cfg, "data.mining.hard", hard)
    if hard > pool:
        raise ConfigError(
            f"data.mining.hard={hard} > data.mining.pool={pool}: hard negatives are "
            "kept from the pool, so hard <= pool"
        )
    redraw = data.get("redraw_train_lists", False)
    if not isinstance(redraw, bool):
        raise ConfigError(f"data.redraw_train_lists={redraw!r}: must be true or false")
    if redraw:
        try:
            check_redrawable(strategy)
        except ListsError as e:
            raise ConfigError(str(e)) from None
    ks = _check_ks(cfg.get("ks", [1, 5, 10]))
    if strategy in RANKED_STRATEGIES:
        list_size = mining.get("list_size", MINING_DEFAULTS["list_size"])
        _positive_int(cfg, "data.mining.list_size", list_size)
        pool_size = mining.get("pool_size", MINING_DEFAULTS["pool_size"])
        bad_int = not isinstance(pool_size, int) or isinstance(pool_size, bool) or pool_size < 1
        if pool_size != TEST_GALLERY and bad_int:
            raise ConfigError(
                f"data.mining.pool_size={pool_size!r}: must be an integer >= 1 or "
                f"{TEST_GALLERY} (the size of the test gallery of each direction)"
            )
        if max(ks) > list_size:
            raise ConfigError(
                f"ks={ks}: K={max(ks)} is larger than a candidate list "
                f"(data.mining.list_size = {list_size})"
            )
    elif max(ks) > hard + 1:
        raise ConfigError(
            f"ks={ks}: K={max(ks)} is larger than a candidate list "
            f"(data.mining.hard + 1 = {hard + 1})"
        )
    # model.net: the scorer class checks its own options (one place per key).
    scorer_kind(cfg.model).check_options(cfg.model.net)
    _check_loss(cfg)
    max_lists = data.get("max_lists")
    if max_lists is not None:
        _positive_int(cfg, "data.max_lists", max_lists)
    for key in ("t2i_captions_per_image", "i2t_positives"):
        value = mining.get(key, 1)
        if value != "all":
            _positive_int(cfg, f"data.mining.{key}", value)
    _positive_int(cfg, "data.mining.seed", mining.get("seed", 0), minimum=0)
    _positive_int(cfg, "seed", cfg.get("seed", 0), minimum=0)
    threads = cfg.get("threads")
    if threads is not None:
        _positive_int(cfg, "threads", threads)
    if not isinstance(cfg.get("flush_denormal", True), bool):
        raise ConfigError(f"flush_denormal={cfg.get('flush_denormal')!r}: must be true or false")
    _positive_int(cfg, "trainer.max_epochs", cfg.trainer.get("max_epochs", 1))
    precision = cfg.trainer.get("precision", "32-true")
    problem = check_precision(precision, cfg.trainer.get("accelerator", "auto"))
    if problem is not None:
        raise ConfigError(f"trainer.precision={precision!r}: {problem}")
    lr = cfg.get("optimizer", {}).get("lr", 1e-3) if cfg.get("optimizer") else 1e-3
    if isinstance(lr, bool) or not isinstance(lr, (int, float)) or not 0 < lr < math.inf:
        raise ConfigError(f"optimizer.lr={lr!r}: must be a finite number > 0")
    _check_monitor(cfg, ks)


def _check_ks(value: Any) -> list[int]:
    """``ks``: a non-empty list of distinct integers >= 1 (the Recall@K cut-offs)."""
    if not isinstance(value, (ListConfig, Sequence)) or isinstance(value, str):
        raise ConfigError(f"ks={value!r}: must be a list of cut-offs such as [1, 5, 10]")
    ks = list(value)
    if not ks:
        raise ConfigError("ks=[]: must hold at least one cut-off (e.g. [1, 5, 10])")
    for k in ks:
        if not isinstance(k, int) or isinstance(k, bool) or k < 1:
            raise ConfigError(f"ks[]={k!r}: must be an integer >= 1")
    if len(set(ks)) != len(ks):
        raise ConfigError(f"ks={ks}: a cut-off repeats; each K once")
    return ks


def _check_monitor(cfg: DictConfig, ks: list[int]) -> None:
    """``monitor``: a key this run's validation logs (:func:`validation_keys`), and
    ``monitor_mode``: min or max, the one under which a better model has the better value."""
    monitor, mode = cfg.get("monitor"), cfg.get("monitor_mode", "max")
    if mode not in ("min", "max"):
        raise ConfigError(f"monitor_mode={mode!r}: one of min, max")
    if monitor is None or not str(monitor).startswith("val/"):
        raise ConfigError(f"monitor={monitor!r}: must be a validation key such as val/rsum")
    direction = cfg.data.get("direction")
    directions = DIRECTIONS if direction == "both" else (direction,)
    kind = scorer_kind(cfg.model)
    keys = validation_keys(directions, ks, with_loss=kind.fits and kind.trains_on == "lists")
    if monitor not in keys:
        if monitor == "val/rsum":
            rsum_ks = ", ".join(map(str, RSUM_KS))
            why = f"rsum sums Recall@K for K in {rsum_ks} and ks={ks} holds none of them"
        else:
            why = f"this run logs {', '.join(keys)} (data.direction={direction}, ks={ks})"
        raise ConfigError(f"monitor={monitor!r}: not a key this run logs; {why}")
    if mode != keys[monitor]:
        raise ConfigError(
            f"monitor_mode={mode!r}: {monitor} is better when "
            f"{'lower' if keys[monitor] == 'min' else 'higher'}, so monitor_mode={keys[monitor]}"
        )


#: Loss hyper-parameters that must be > 0 (temperatures, slopes, weights), and cut-offs that must
#: be null or >= 1, wherever they appear in ``cfg.loss``.
_POSITIVE_LOSS_KEYS = ("temperature", "sigma", "alpha", "mu", "pos_weight")
_CUTOFF_LOSS_KEYS = ("k", "sinkhorn_iters")


def _check_loss(cfg: DictConfig) -> None:
    loss = cfg.get("loss")
    if not isinstance(loss, DictConfig):
        return
    for key in _POSITIVE_LOSS_KEYS:
        if key in loss:
            v = loss.get(key)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not v > 0:
                raise ConfigError(f"loss.{key}={v!r}: must be a number > 0")
    for key in _CUTOFF_LOSS_KEYS:
        if key in loss and loss.get(key) is not None:
            _positive_int(cfg, f"loss.{key}", loss.get(key))
