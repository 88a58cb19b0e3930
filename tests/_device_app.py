"""A tiny Hydra app for tests/test_devices.py: each job records what its worker process sees.

    python tests/_device_app.py -m hydra/launcher=local job=0,1,2,3 out=DIR [gpus=N]

It composes xmr's ``hydra/launcher=local`` (conf/ on the search path) and simulates a node with
``XMR_TEST_GPUS`` GPUs in the launching process (``xmr.utils.devices.device_count`` replaced:
there is no GPU here; the workers never ask). A job writes ``DIR/job<job>.json``: its pid, the
``CUDA_VISIBLE_DEVICES`` it saw, whether torch was imported in its process, start and end times.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

import hydra
from hydra.core.config_store import ConfigStore
from omegaconf import DictConfig

from xmr.utils import devices
from xmr.utils.paths import CONF_DIR

if os.environ.get("XMR_TEST_GPUS") is not None:
    devices.device_count = lambda: int(os.environ["XMR_TEST_GPUS"])

ConfigStore.instance().store(name="device_app", node={"job": 0, "sleep": 1.0, "out": "???"})


def job(cfg: DictConfig) -> None:
    start = time.time()
    time.sleep(float(cfg.sleep))
    record = {
        "job": int(cfg.job),
        "pid": os.getpid(),
        "visible": os.environ.get("CUDA_VISIBLE_DEVICES"),
        "torch_imported": "torch" in sys.modules,
        "start": start,
        "end": time.time(),
    }
    Path(cfg.out, f"job{cfg.job}.json").write_text(json.dumps(record))


if __name__ == "__main__":
    sys.argv.append(f"hydra.searchpath=[file://{CONF_DIR}]")
    hydra.main(version_base="1.3", config_path=None, config_name="device_app")(job)()
