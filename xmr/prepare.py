"""``xmr synth`` and ``xmr mine``: build a data config's store and candidate lists.

xmr synth data=synthetic_paper               # the paper-scale SYNTHETIC store
xmr mine data=synthetic_paper data.mining.pool=200 data.mining.hard=50
xmr mine data=flickr30k data.store=/path/to/store
xmr mine verbose=true                        # also print every statistic of lists.json

``xmr mine`` prints a short summary (where the lists are, one line per file, the leakage probe);
the full statistics are in the lists directory's ``lists.json``.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

import hydra
from omegaconf import DictConfig

from xmr.data.datamodule import prepare_store_and_lists
from xmr.data.lists_probe import recorded_or_computed
from xmr.data.mining import lists_summary, mine_lists, misses_line, warn_short_pools
from xmr.data.probe import probe_line, warn_leaks
from xmr.data.store import FeatureStore
from xmr.data.synth import synth_config, write_synthetic_store
from xmr.utils.instantiate import instantiate
from xmr.utils.paths import CONF_DIR

log = logging.getLogger(__name__)


def _datamodule(cfg: DictConfig):  # noqa: ANN202
    return instantiate(cfg.data, where="data")


@hydra.main(version_base="1.3", config_path=CONF_DIR, config_name="prepare")
def synth_main(cfg: DictConfig) -> None:
    """Generate the data config's synthetic store (refuses a data config without `synth`)."""
    if not cfg.data.get("synth"):
        raise SystemExit(f"data={cfg.data.get('name')}: this data config has no `synth` block")
    synth_cfg = synth_config(cfg.data.synth)
    store = Path(cfg.data.store)
    if (store / "manifest.json").exists() and not cfg.overwrite:
        print(f"{store}: store exists (pass overwrite=true to regenerate)")
        return
    t0 = time.perf_counter()
    write_synthetic_store(store, synth_cfg, overwrite=bool(cfg.overwrite))
    print(f"wrote SYNTHETIC store {store} in {time.perf_counter() - t0:.1f} s")


@hydra.main(version_base="1.3", config_path=CONF_DIR, config_name="prepare")
def mine_main(cfg: DictConfig) -> None:
    """Mine the data config's candidate lists (generating a synthetic store first if needed)."""
    dm = _datamodule(cfg)
    t0 = time.perf_counter()
    existed = (dm.lists_dir / "lists.json").exists()
    prepare_store_and_lists(dm.store_path, dm.lists_dir, dm.synth, dm.mining)
    if cfg.overwrite and existed:
        # Lists were there already: mine again, replacing them atomically.
        mine_lists(FeatureStore.open(dm.store_path), dm.lists_dir, overwrite=True, **dm.mining)
    meta = json.loads((dm.lists_dir / "lists.json").read_text())
    print(f"lists ready in {time.perf_counter() - t0:.1f} s")
    print("\n".join(lists_summary(meta, dm.lists_dir)))
    if cfg.get("verbose"):
        print(json.dumps(meta.get("stats", {}), indent=1))
    # The leakage probe: recorded by the miner (which warns when it mines); computed now for
    # lists mined before the probe existed (not written back).
    probe = recorded_or_computed(dm.lists_dir, dm.store_path)
    if existed and not cfg.overwrite:  # the miner warns when it mines
        warn_short_pools(meta)
        warn_leaks(probe)
    print(probe_line(probe))
    line = misses_line(meta)
    if line:
        print(line)
