#!/usr/bin/env bash
# A small real gossip simulation with baselines, then its inspect table and plot.
# Usage: scripts/demo_simulation.sh [OUT_DIR]   (called by scripts/demo)
set -euo pipefail
cd "$(dirname "$0")/.."
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
GM=.venv/bin/gossipmed
OUT=${1:-runs/demo}
RUN="$OUT/sim-ring6"
rm -rf "$RUN"
$GM simulate --nodes 6 --topology ring --dataset icd10 --partition dirichlet --alpha 0.5 \
  --rounds ${DEMO_ROUNDS:-8} --local-steps 5 --max-train-examples 3000 --baselines --json \
  --out "$RUN" >/dev/null
$GM inspect "$RUN" --plot "$RUN/curves.png"
echo "plot: $RUN/curves.png   (metrics: $RUN/metrics.jsonl, summary: $RUN/summary.json)"
