"""The method name of a run: the ``method`` field of its ``results.json`` and its row in
``xmr report``.

* :func:`method_name` — ``method`` when set; the model name of a scorer without parameters (``ScorerKind.fits``); else the loss (the
  ``conf/loss`` option chosen, or the one whose content matches the run's loss).
* :func:`run_method` — the name a run records in ``results.json`` (``xmr train``, ``xmr eval``):
  :func:`method_name`, except that models trained on pairs (``ScorerKind.trains_on``) are named by their model and rankers with
  interaction features get ``+cosine+product``-style suffixes.
* A run over a store written by ``xmr embed`` (a trained pairwise model as the first stage) gets
  ``@<first stage>`` appended (``reranker_listnet@infonce``,
  :func:`xmr.data.store.first_stage_of`), so the two-stage pipelines over different first stages
  are separate rows; over an encoder's store (first stage: its cosine) nothing is appended.
* :func:`method_of_config` — :func:`run_method` of a plain config mapping (a job's
  ``config.yaml`` or ``failed.json``), so that a failed or missing job is counted in the row its
  finished run would fill; ``"unknown"`` when the config is absent or broken.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf

from xmr.data.store import COSINE, first_stage_of
from xmr.models.scorer import scorer_kind
from xmr.utils.paths import CONF_DIR

UNKNOWN = "unknown"
#: ``model.name`` of the paper's Context-Aware Ranker, whose rows are named by their loss alone.
PAPER_RANKER = "ranker"


def method_name(cfg: DictConfig) -> str:
    """The row name of a run in reports: the loss for trainable rankers, else the model name."""
    if cfg.get("method"):
        return str(cfg.method)
    if not scorer_kind(cfg.model).fits:
        return str(cfg.model.get("name", "scorer"))
    return loss_name(cfg)


def loss_name(cfg: DictConfig) -> str:
    """The ``conf/loss`` option of the run's loss: the command line's choice, else the option
    whose content (or, failing that, whose class) matches ``cfg.loss``, else the class name."""
    if HydraConfig.initialized():
        choice = HydraConfig.get().runtime.choices.get("loss")
        if choice:
            return str(choice)
    # Outside a Hydra app (compose API): the conf/loss option whose content this loss matches.
    loss = OmegaConf.to_container(cfg.loss, resolve=True)
    options = sorted((Path(CONF_DIR) / "loss").glob("*.yaml"))
    for path in options:
        if OmegaConf.to_container(OmegaConf.load(path), resolve=True) == loss:
            return path.stem
    for path in options:  # same loss class, other hyper-parameters
        if OmegaConf.load(path).get("_target_") == loss.get("_target_"):  # type: ignore[union-attr,arg-type]
            return path.stem
    target = str(loss.get("_target_", "loss")).rsplit(".", 1)[-1]  # type: ignore[union-attr]
    return re.sub(r"(?<!^)(?=[A-Z])", "_", target.removesuffix("Loss")).lower()


def run_method(cfg: DictConfig) -> str:
    """Row name of a run in reports: ``method`` when set; the model name for pairwise baselines
    (``dcca``, ``cmpm``, ...); else :func:`method_name` (the loss for the paper's ranker), with
    ``+cosine+product+absdiff``-style suffixes when the ranker uses interaction features; another
    model trained on lists is named ``<model>_<loss>`` (``reranker_listnet``), so its row never
    merges with the paper's ranker trained with the same loss; over a store of ``xmr embed``,
    ``@<first stage>`` is appended (``reranker_listnet@infonce``)."""
    if cfg.get("method"):
        return str(cfg.method)
    return _base_method(cfg) + _first_stage_suffix(cfg)


def _base_method(cfg: DictConfig) -> str:
    kind = scorer_kind(cfg.model)
    if kind.trains_on == "pairs":
        return str(cfg.model.get("name", "pair_baseline"))
    name = method_name(cfg)
    if not kind.fits:
        return name
    model = str(cfg.model.get("name") or PAPER_RANKER)
    if model != PAPER_RANKER:
        name = f"{model}_{name}"
    inter = list(cfg.model.get("net", {}).get("interaction") or [])
    return name + "".join(f"+{n}" for n in inter)


def _first_stage_suffix(cfg: DictConfig) -> str:
    """``@<name>`` when the run's store is a trained model's embeddings (``xmr embed``)."""
    try:
        store = OmegaConf.select(cfg, "data.store", default=None)
    except Exception:  # noqa: BLE001 - an unresolvable path names no first stage
        store = None
    first = first_stage_of(str(store)) if store else COSINE
    return "" if first == COSINE else f"@{first}"


def method_of_config(config: Mapping[str, Any] | None) -> str:
    """:func:`run_method` of a plain (resolved) config mapping; :data:`UNKNOWN` when ``config``
    is empty or too broken to name (a failed job is still listed)."""
    if not config:
        return UNKNOWN
    try:
        return run_method(OmegaConf.create(dict(config)))
    except Exception:  # noqa: BLE001 - a broken config still gets listed
        return UNKNOWN
