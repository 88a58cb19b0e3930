#!/usr/bin/env bash
# Optuna (TPE) over the grid's space, maximising the best validation value each trial returns.
#   sweeps/optuna.sh hydra.sweeper.n_trials=10
# The best parameters: $XMR_LOGS/sweeps/optuna/<data>/optimization_results.yaml.
source "$(dirname "$0")/_common.sh"
ROOT="$XMR_LOGS/sweeps/optuna/$(data_name "$DATA")"
xmr mine "data=$DATA"
xmr train -m +sweep=optuna "data=$DATA" "$@"
xmr train "data=$DATA" "${DATA_ARGS[@]}" model=cosine "hydra.run.dir=$ROOT/clip_cosine"
xmr report "$ROOT" --out "$ROOT/report" ${IMAGES:+--images "$IMAGES"}
cat "$ROOT/optimization_results.yaml"
