#!/usr/bin/env bash
# A small real gossip simulation (tiny clinical LM, ICD-10 chapters, DP-SGD, signed+encrypted
# envelopes) with local-only and centralized baselines, then its inspect table and plot, and
# finally one answer from the consortium's adapter (`gossipmed generate`, a few seconds).
# Usage: scripts/demo_simulation.sh [OUT_DIR]   (called by scripts/demo)
# Sizes are kept small for a 2-core laptop; scale with DEMO_NODES / DEMO_ROUNDS / DEMO_STEPS.
set -euo pipefail
cd "$(dirname "$0")/.."
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
GM=.venv/bin/gossipmed
OUT=${1:-runs/demo}
RUN="$OUT/sim-ring"
rm -rf "$RUN"
echo "simulating ${DEMO_NODES:-4} sites on a ring with baselines (a few minutes on 2 cores)..."
$GM simulate --nodes "${DEMO_NODES:-4}" --topology ring --dataset icd10 \
  --partition dirichlet --alpha 0.5 --rounds "${DEMO_ROUNDS:-20}" \
  --local-steps "${DEMO_STEPS:-10}" --eval-every 5 --eval-size 210 \
  --max-train-examples 4000 --baselines --out "$RUN" >/dev/null
$GM inspect "$RUN" --plot "$RUN/curves.png"
echo "metrics: $RUN/metrics.jsonl, summary: $RUN/summary.json"
echo
ADAPTER=$(ls -d "$RUN"/adapters/*/ | head -n 1)
echo "== Ask the consortium's model: $(basename "$ADAPTER")'s adapter after gossip names an ICD-10 chapter"
$GM generate --adapter "$ADAPTER" --dataset icd10 --max-new-tokens 8 \
  --prompt "Diagnosis: Type 2 diabetes mellitus with hyperglycemia"
