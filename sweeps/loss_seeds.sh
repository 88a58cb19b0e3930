#!/usr/bin/env bash
# The paper's main experiment: 4 losses x 5 seeds (both directions per job) + the CLIP-cosine
# baseline on the same lists, then `xmr report` (Table 2, significance, plots, report.html).
#   sweeps/loss_seeds.sh                                  # DATA=synthetic_demo (SYNTHETIC)
#   DATA=synthetic_paper sweeps/loss_seeds.sh trainer.max_epochs=10
#   DATA=flickr8k_bridge IMAGES=../shared/data/flickr8k-1k/images sweeps/loss_seeds.sh
# Extra arguments are Hydra overrides for every job (e.g. seed=0,1 narrows the seeds,
# data.direction=t2i,i2t makes the direction a separate axis). Rerunning skips finished jobs.
source "$(dirname "$0")/_common.sh"
ROOT="$XMR_LOGS/sweeps/loss_seeds/$(data_name "$DATA")"
xmr mine "data=$DATA"
xmr train -m +sweep=loss_seeds "data=$DATA" "$@"
# The baseline has no loss and no seed: one job, in the same tree.
xmr train "data=$DATA" "${DATA_ARGS[@]}" model=cosine "hydra.run.dir=$ROOT/clip_cosine"
xmr report "$ROOT" --out "$ROOT/report" ${IMAGES:+--images "$IMAGES"}
