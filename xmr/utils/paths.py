"""Where xmr's own files live (the Hydra config directory)."""

from __future__ import annotations

from pathlib import Path

#: Absolute path of ``conf/``. Hydra entry points pass it as ``config_path`` so that they work the
#: same whether started as ``python -m xmr.train``, through the ``xmr`` console script, or from
#: another module (a relative path would be resolved against the calling module's package).
CONF_DIR: str = str(Path(__file__).resolve().parents[2] / "conf")
