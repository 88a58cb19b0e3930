#!/usr/bin/env bash
# The ranker grid search (FC size x layers x heads x hidden: 81 jobs), then `xmr report`
# (one row per grid point; pick the best by validation value: best_val/rsum in results.json).
#   sweeps/paper_grid.sh                       # DATA=synthetic_demo, loss: the default
#   sweeps/paper_grid.sh loss=listnet trainer.max_epochs=20
source "$(dirname "$0")/_common.sh"
ROOT="$XMR_LOGS/sweeps/paper_grid/$(data_name "$DATA")"
xmr mine "data=$DATA"
xmr train -m +sweep=paper_grid "data=$DATA" "$@"
xmr train "data=$DATA" "${DATA_ARGS[@]}" model=cosine "hydra.run.dir=$ROOT/clip_cosine"
xmr report "$ROOT" --out "$ROOT/report" ${IMAGES:+--images "$IMAGES"}
