# Shared by the sweep launch scripts: the Python to use and where sweeps land.
# Sourced, not run.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
if [[ -x .venv/bin/python ]]; then PY=${PY:-.venv/bin/python}; else PY=${PY:-python3}; fi
export XMR_LOGS=${XMR_LOGS:-logs}
# `xmr` from the project's venv (or the given PY) even when it is not on PATH.
xmr() { "$PY" -m xmr.cli "$@"; }
DATA=${DATA:-synthetic_demo}
# Name of the data config's store (data.name); sweeps land in $XMR_LOGS/sweeps/<sweep>/<name>.
data_name() { "$PY" - "$1" <<'PY'
import sys
from omegaconf import OmegaConf
print(OmegaConf.load(f"conf/data/{sys.argv[1]}.yaml").name)
PY
}
# Single-valued data.* overrides among the arguments also apply to the baseline job, so that
# CLIP cosine is scored on the very same lists as the rankers.
DATA_ARGS=()
for arg in "$@"; do
  if [[ $arg == data.* && $arg != *,* ]]; then DATA_ARGS+=("$arg"); fi
done
