"""Where xmr's own files live (the Hydra config directory) and what a run directory is named.

Run and sweep-job directories are named after the command line's overrides
(``conf/hydra/default.yaml``: ``${xmr.job_dirname:}``), like Hydra's ``hydra.job.override_dirname``
but always one directory level whose name stays short: :func:`job_dirname`. The resolver is
registered when this module is imported, which every Hydra entry point of xmr does (it passes
:data:`CONF_DIR`).
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable, Sequence
from pathlib import Path

from hydra.core.hydra_config import HydraConfig
from hydra.core.override_parser.overrides_parser import OverridesParser
from omegaconf import OmegaConf

#: Absolute path of ``conf/``. Hydra entry points pass it as ``config_path`` so that they work the
#: same whether started as ``python -m xmr.train``, through the ``xmr`` console script, or from
#: another module (a relative path would be resolved against the calling module's package).
CONF_DIR: str = str(Path(__file__).resolve().parents[2] / "conf")

#: The resolver of a run's directory name (``${xmr.job_dirname:}`` in conf/hydra/default.yaml).
JOB_DIRNAME_RESOLVER = "xmr.job_dirname"
#: Override keys under these prefixes never name a run: they say where files go, not what is
#: computed (the config's ``paths`` group, which rerun detection ignores as well).
UNNAMED_PREFIXES = ("paths.",)
#: An override value longer than this, or holding a path separator, is shortened in a name.
MAX_VALUE_CHARS = 32
#: Characters of the readable part of a shortened value.
SHORT_TAIL_CHARS = 24


def short_value(value: str) -> str:
    """``value`` as it may appear in a directory name: unchanged when short and free of ``/``;
    else its last path component (at most :data:`SHORT_TAIL_CHARS` characters) and 8 hex digits
    of its SHA-256, so distinct values keep distinct names
    (``/data/stores/flickr8k-1k/zeroshot-bridge`` -> ``zeroshot-bridge-3f2a9c1b``)."""
    if len(value) <= MAX_VALUE_CHARS and "/" not in value and "\\" not in value:
        return value
    digest = hashlib.sha256(value.encode("utf-8")).hexdigest()[:8]
    tail = re.split(r"[/\\]", value.rstrip("/\\"))[-1][:SHORT_TAIL_CHARS]
    return f"{tail}-{digest}" if tail else digest


def job_dirname(
    overrides: Iterable[str],
    exclude_keys: Sequence[str] = (),
    *,
    item_sep: str = ",",
    kv_sep: str = "=",
) -> str:
    """A run directory's name from the command line's ``overrides`` (``loss=listnet,seed=3``).

    Hydra's ``override_dirname`` rule (the overrides sorted, those whose key is in
    ``exclude_keys`` left out, joined by ``item_sep``, ``=`` replaced by ``kv_sep``) plus: keys
    under :data:`UNNAMED_PREFIXES` are left out too, a config group's ``/`` becomes ``.``
    (``data/mining=pool`` -> ``data.mining=pool``) and a long or path-like value is shortened by
    :func:`short_value` (``data.store=/abs/path/store`` -> ``data.store=store-1a2b3c4d``), so the
    name is always one directory level and two different values never share it.
    """
    excluded = set(exclude_keys)
    parsed = OverridesParser.create().parse_overrides(list(overrides))
    items = []
    for override in sorted(parsed, key=lambda o: str(o.input_line)):
        key = override.key_or_group
        if key in excluded or key.startswith(UNNAMED_PREFIXES):
            continue
        line = str(override.input_line)
        name, sep, value = line.partition("=")
        items.append(name.replace("/", ".") + sep + (short_value(value) if sep else ""))
    return re.sub("=", kv_sep, item_sep.join(items))


def _job_dirname_of_running_job() -> str:
    """:func:`job_dirname` of the job Hydra is setting up: its task overrides and the
    ``hydra.job.config.override_dirname`` settings (``exclude_keys``, separators)."""
    hydra_cfg = HydraConfig.get()
    options = hydra_cfg.job.config.override_dirname
    return job_dirname(
        list(hydra_cfg.overrides.task),
        list(options.exclude_keys),
        item_sep=str(options.item_sep),
        kv_sep=str(options.kv_sep),
    )


if not OmegaConf.has_resolver(JOB_DIRNAME_RESOLVER):
    OmegaConf.register_new_resolver(JOB_DIRNAME_RESOLVER, _job_dirname_of_running_job)
