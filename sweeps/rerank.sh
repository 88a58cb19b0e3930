#!/usr/bin/env bash
# xmr's two-stage recipe next to the paper's, 5 seeds each, then `xmr report` with every row of
# the comparison (full gallery first; each re-ranker also tested against its own first stage):
#   clip_cosine                          the store's cosine (the paper's first stage)
#   dcca, cmpm, vsepp, infonce           each pairwise model as its own first stage
#   infonce [first_stage=cosine]         InfoNCE re-ranking cosine's top 50
#   lambdarank, neural_ndcg, listnet, ranknet   the paper's ranker on the paper's lists
#   reranker_listnet [num_layers=1|0]    cosine -> re-ranker, and its no-attention ablation
#   reranker_listnet [redraw_train_lists=True]  the same, training lists re-drawn every epoch
#   reranker_listnet@<best>              best pairwise model (by validation) -> re-ranker
#
#   sweeps/rerank.sh                                   # DATA=synthetic_demo (SYNTHETIC)
#   DATA=flickr8k_bridge sweeps/rerank.sh              # the shared real store
#   SEEDS=0,1 EPOCHS=5 sweeps/rerank.sh                # quicker
# Extra arguments are Hydra overrides for every training job. Rerunning skips finished jobs.
source "$(dirname "$0")/_common.sh"
SEEDS=${SEEDS:-0,1,2,3,4}
EPOCHS=${EPOCHS:-15}          # the paper's rankers and the pairwise models
RERANK_EPOCHS=${RERANK_EPOCHS:-30}  # the re-rankers' ceiling (early stopping on validation)
PAIRWISE=${PAIRWISE:-dcca,cmpm,vsepp,infonce}
ROOT="$XMR_LOGS/sweeps/rerank/$(data_name "$DATA")"
COMMON=("data=$DATA" hydra/launcher=local trainer.enable_progress_bar=false)

xmr mine "data=$DATA"
xmr mine "data=$DATA" data/mining=pool
xmr train "data=$DATA" model=cosine "hydra.run.dir=$ROOT/clip_cosine" "$@"
xmr train -m "${COMMON[@]}" "model=$PAIRWISE" "seed=$SEEDS" "trainer.max_epochs=$EPOCHS" \
  protocol.full_gallery.first_stage=self "hydra.sweep.dir=$ROOT/pairwise" "$@"
xmr train -m "${COMMON[@]}" model=infonce "seed=$SEEDS" "trainer.max_epochs=$EPOCHS" \
  protocol.full_gallery.first_stage=cosine "hydra.sweep.dir=$ROOT/infonce_over_cosine" "$@"
xmr train -m "${COMMON[@]}" loss=lambdarank,neural_ndcg,listnet,ranknet "seed=$SEEDS" \
  "trainer.max_epochs=$EPOCHS" "hydra.sweep.dir=$ROOT/paper_rankers" "$@"
xmr train -m "${COMMON[@]}" experiment=rerank "seed=$SEEDS" model.net.num_layers=1,0 \
  "trainer.max_epochs=$RERANK_EPOCHS" "hydra.sweep.dir=$ROOT/rerank_cosine" "$@"
xmr train -m "${COMMON[@]}" experiment=rerank "seed=$SEEDS" data.redraw_train_lists=true \
  "trainer.max_epochs=$RERANK_EPOCHS" "hydra.sweep.dir=$ROOT/rerank_cosine_redraw" "$@"

# The best pairwise model by validation becomes a first stage: per seed, its embeddings as a
# store (xmr embed), pool lists mined on it, and a re-ranker trained over it.
mapfile -t BEST < <("$PY" -m xmr.report.select "$ROOT/pairwise" --methods "$PAIRWISE")
echo "first stage of the second pipeline (best by validation): ${BEST[0]}"
for line in "${BEST[@]:1}"; do
  read -r seed run <<<"$line"
  store="$ROOT/stores/${BEST[0]}_seed$seed"
  [[ -f $store/manifest.json ]] || xmr embed "run_dir=$run" "out=$store"
  xmr mine "data=$DATA" "data.store=$store" data.synth=null "data.lists_root=$store/lists" \
    data/mining=pool
  xmr train "${COMMON[@]}" experiment=rerank "data.store=$store" data.synth=null \
    "data.lists_root=$store/lists" "seed=$seed" "trainer.max_epochs=$RERANK_EPOCHS" \
    "hydra.run.dir=$ROOT/rerank_${BEST[0]}/seed_$seed" "$@"
done
xmr report "$ROOT" --out "$ROOT/report" ${IMAGES:+--images "$IMAGES"}
