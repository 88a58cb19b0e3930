#!/usr/bin/env bash
# The GPU check of xmr: what a machine with one GPU runs, offline, in under 5 minutes, from a
# fresh checkout.
#
#   make install && benchmarks/gpu_check.sh [OUT_DIR]
#   PY=/path/to/python benchmarks/gpu_check.sh [OUT_DIR]     # an existing env with xmr installed
#
# Steps, each under `timeout` (limit in seconds); the whole check stops starting steps once
# GPU_CHECK_BUDGET (default 285 s) is spent, so it ends within 5 minutes:
#   data      100  in the background, from the start: the SYNTHETIC paper-scale store (29,000 /
#                  1,014 / 1,000 images x 5 captions, 512-d) and its lists (`xmr synth`,
#                  `xmr mine data=synthetic_paper`; both on the CPU; ~70 s on the 2-core dev VM,
#                  nothing when ./data holds them already)
#   env        15  torch / CUDA / GPU facts (env.json), nvidia-smi
#   cuda_tests 75  tests/test_gpu.py and every tests/test_*.py with a skipif on
#                  torch.cuda.is_available(), -k "cuda or gpu"
#   bench      45  python benchmarks/bench_gpu.py --quick (bench_gpu.json)
#   bf16       40  xmr train experiment=paper loss=$GPU_CHECK_LOSS (neural_ndcg), 1 epoch over the
#                  first GPU_CHECK_LISTS (9,600 = 300 batches; 0 = all 29,000) training lists per
#                  direction, full val and test, trainer.precision=bf16-mixed
#   fp32       40  the same with trainer.precision=32-true
#   compare    15  test Recall@K (lists and full gallery, both directions) of bf16 vs fp32 within
#                  GPU_CHECK_TOL (0.05 = 5 points, absolute)
#   ensemble   60  xmr train-ensemble +sweep=paper_ensemble (E = 20: 4 losses x 5 seeds), 1 epoch,
#                  the same training lists
# Writes OUT_DIR (default: $OUT when set, else logs/gpu_check): one log per step, steps.jsonl,
# the runs under runs/, and gpu_check.json (every figure); prints a summary; exits 1 when a step
# failed or timed out. GPU_CHECK_DATA=synthetic_tiny runs the same steps on a tiny store (a dry
# run of the script itself, e.g. on a CPU).
set -u -o pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
if [ -z "${PY:-}" ]; then
    if [ -x "$ROOT/.venv/bin/python" ]; then PY="$ROOT/.venv/bin/python"; else PY=python3; fi
fi
export PY
OUT_DIR=${1:-${OUT:-$ROOT/logs/gpu_check}}
BUDGET=${GPU_CHECK_BUDGET:-285}
LISTS=${GPU_CHECK_LISTS:-9600}
LOSS=${GPU_CHECK_LOSS:-neural_ndcg}
TOL=${GPU_CHECK_TOL:-0.05}
DATA=${GPU_CHECK_DATA:-synthetic_paper}

if ! "$PY" -c "import xmr" 2>/dev/null; then
    echo "gpu_check: $PY cannot import xmr; run 'make install' or set PY=<python of an env with xmr>" >&2
    exit 2
fi
mkdir -p "$OUT_DIR"
OUT_DIR=$(cd "$OUT_DIR" && pwd)
STEPS="$OUT_DIR/steps.jsonl"
rm -rf "$OUT_DIR/runs"  # fresh runs: a finished run of an earlier check would be skipped
: > "$STEPS"

now() { date +%s.%N; }
START=$(now)
DEADLINE=$(awk -v s="$START" -v b="$BUDGET" 'BEGIN { printf "%.3f", s + b }')

# limit CAP: the seconds a step may take now: CAP, or what is left of the budget.
limit() {
    awk -v cap="$1" -v d="$DEADLINE" -v n="$(now)" \
        'BEGIN { l = int(d - n); if (l > cap) l = cap; if (l < 0) l = 0; print l }'
}

# record NAME RC SECONDS LIMIT NOTE BACKGROUND: one JSON line in steps.jsonl.
record() {
    printf '{"name": "%s", "rc": %s, "seconds": %s, "limit_s": %s, "log": "%s", "note": "%s", "background": %s}\n' \
        "$1" "$2" "$3" "$4" "$OUT_DIR/$1.log" "$5" "$6" >> "$STEPS"
}

# step NAME CAP COMMAND...: run COMMAND under timeout, its output in OUT_DIR/NAME.log.
step() {
    local name=$1 cap=$2 background=${BACKGROUND:-false}
    shift 2
    local lim
    lim=$(limit "$cap")
    if [ "$lim" -lt 5 ]; then
        record "$name" null 0 "$lim" "out of time" "$background"
        echo "[$name] skipped: the budget of $BUDGET s is spent"
        return 0
    fi
    echo "[$name] limit ${lim} s: $*"
    local t0 rc dt
    t0=$(now)
    timeout -k 5 "$lim" "$@" > "$OUT_DIR/$name.log" 2>&1
    rc=$?
    dt=$(awk -v a="$t0" -v b="$(now)" 'BEGIN { printf "%.1f", b - a }')
    record "$name" "$rc" "$dt" "$lim" "" "$background"
    echo "[$name] rc=$rc in ${dt} s"
}

echo "== xmr GPU check: $(date -u +%FT%TZ), $PY, budget $BUDGET s, output in $OUT_DIR =="

# data: generated on the CPU while the GPU-free steps run.
BACKGROUND=true step data 100 bash -c \
    '"$PY" -m xmr.cli synth data="$0" && "$PY" -m xmr.cli mine data="$0"' "$DATA" &
DATA_PID=$!

step env 15 bash -c \
    '(nvidia-smi -L || echo "nvidia-smi: not available") && "$PY" benchmarks/gpu_check.py env > "$0/env.json"' \
    "$OUT_DIR"

mapfile -t CUDA_TESTS < <(grep -lE 'skipif\(.*cuda\.is_available' tests/test_*.py)
if [ -f tests/test_gpu.py ] && ! printf '%s\n' "${CUDA_TESTS[@]}" | grep -qx tests/test_gpu.py; then
    CUDA_TESTS+=(tests/test_gpu.py)
fi
if [ "${#CUDA_TESTS[@]}" -gt 0 ]; then
    step cuda_tests 75 "$PY" -m pytest -q -rs -p no:cacheprovider "${CUDA_TESTS[@]}" -k "cuda or gpu"
else
    record cuda_tests null 0 0 "no test skips without CUDA" false
fi

wait "$DATA_PID"

step bench 45 "$PY" benchmarks/bench_gpu.py --quick --json "$OUT_DIR/bench_gpu.json"

CUT=()
if [ "$LISTS" != 0 ]; then CUT=("data.max_lists=$LISTS"); fi
RUN=(experiment=paper "data=$DATA" "loss=$LOSS" trainer.max_epochs=1
    trainer.enable_progress_bar=false ${CUT[@]+"${CUT[@]}"})
step bf16 40 "$PY" -m xmr.cli train "${RUN[@]}" ++trainer.precision=bf16-mixed \
    "hydra.run.dir=$OUT_DIR/runs/bf16"
step fp32 40 "$PY" -m xmr.cli train "${RUN[@]}" ++trainer.precision=32-true \
    "hydra.run.dir=$OUT_DIR/runs/fp32"
step compare 15 "$PY" benchmarks/gpu_check.py compare "$OUT_DIR/runs/bf16" "$OUT_DIR/runs/fp32" \
    --tol "$TOL" --out "$OUT_DIR/precision_compare.json"
step ensemble 60 "$PY" -m xmr.cli train-ensemble +sweep=paper_ensemble "data=$DATA" \
    trainer.max_epochs=1 trainer.enable_progress_bar=false ${CUT[@]+"${CUT[@]}"} \
    "hydra.run.dir=$OUT_DIR/runs/ensemble"

WALL=$(awk -v a="$START" -v b="$(now)" 'BEGIN { printf "%.1f", b - a }')
timeout 20 "$PY" benchmarks/gpu_check.py summary "$OUT_DIR" --wall "$WALL" | tee "$OUT_DIR/summary.txt"
exit "${PIPESTATUS[0]}"
