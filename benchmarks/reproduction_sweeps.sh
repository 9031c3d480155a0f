#!/usr/bin/env bash
# The sweeps behind docs/reproduction.md: SmolLM2-135M (smollm2-demo) and MiniLM (minilm-demo) on this machine's
# CPU, thinned with --grid and --limit to fit about 40 minutes on 2 shared cores.
# Usage (from the repository root): nohup benchmarks/reproduction_sweeps.sh > sweeps.log 2>&1 &
# Each sweep is resumable: rerunning this script skips every finished result (and so runs nothing once all are
# there). Each run's wall time is appended to OUT/NAME/wall_times.
set -u
cd "$(dirname "$0")/.."
SURGERY=${SURGERY:-.venv/bin/surgery}
DATA=${DATA:-../shared/data}
OUT=${OUT:-docs/reproduction}

sweep() {  # sweep NAME RECIPE ARGS...
  local name=$1 recipe=$2
  shift 2
  local start end
  start=$(date +%s)
  echo "=== $name: surgery sweep $recipe $* --out $OUT/$name"
  if "$SURGERY" sweep "$recipe" "$@" --data-dir "$DATA" --out "$OUT/$name"; then
    end=$(date +%s)
    echo "$(date -u +%FT%TZ) $((end - start)) s: $*" >> "$OUT/$name/wall_times"
    "$SURGERY" plot "$OUT/$name"
  fi
}

# Figs 3/14 and 15: hidden-state similarity and statistics on 20 LAMBADA texts.
sweep fig03 recipes/paper/fig03_similarity.yaml --model smollm2-demo --limit 20
sweep fig15 recipes/paper/fig15_skip_vs_repeat_states.yaml --model smollm2-demo --limit 20
# Fig 11 (every variant; its lines are Figs 4-9), 12 items per task. The first run (with N=4,8,12 and seeds 0..2)
# was stopped with SIGTERM after 15 results and resumed with this thinner grid.
sweep fig11 recipes/paper/fig11_all_variants.yaml --model smollm2-demo --tasks lambada_openai,arc_easy \
  --limit 12 --grid N=4,12 --grid seed=0,1
# Figs 4 and 10 share evaluations with Fig 11 (the full model, skip N=12): start from its results, which the
# sweep recognises by key, then evaluate only what is new.
seed_from() { mkdir -p "$OUT/$1" && { [ -f "$OUT/$1/results.jsonl" ] || cp "$OUT/$2/results.jsonl" "$OUT/$1/"; }; }
seed_from fig04 fig11
sweep fig04 recipes/paper/fig04_skip.yaml --model smollm2-demo --tasks lambada_openai,arc_easy --limit 12 \
  --grid "N=0..12 by 3"
# Fig 12 is Fig 4 against the % of layers skipped: the same evaluations (0 run).
seed_from fig12 fig04
sweep fig12 recipes/paper/fig12_skip_percent.yaml --model smollm2-demo --tasks lambada_openai,arc_easy --limit 12 \
  --grid "N=0..12 by 3"
sweep fig02 recipes/paper/fig02_skip_or_swap_one.yaml --model smollm2-demo --limit 12 --grid "layer=0..29 by 3"
seed_from fig10 fig11
sweep fig10 recipes/paper/fig10_looped_parallel_grid.yaml --model smollm2-demo --tasks lambada_openai \
  --limit 12 --grid N=4,8,12 --grid K=1,2,3,4
# A.8: MiniLM fine-tuned on SST-2 (300 training examples, 2 epochs, lr 1e-4) under each variant at N = 1.
sweep glue_a8 recipes/paper/glue_a8_full_finetune.yaml --model minilm-demo --tasks sst2 --limit 200 \
  --set max_train=300 --set epochs=2 --grid N=1 --variants skip,middle_repeat,parallel,looped_parallel_3x
