#!/usr/bin/env bash
# The correlation study of results/fashion-mnist/correlation/: two model sizes pretrained
# at 14x14 with bf16 autocast on the CPU, eight saves each, then one `bench run -t correlation`
# over all sixteen checkpoints, the pixels baseline at the same --limit, the tables and plots.
#   - igpt-wide (4 blocks x 256): the run of scripts/fashion-mnist-reference.sh ($WIDE), made first;
#   - igpt-mini (8 blocks x 128): pretrained here with the same recipe ($MINI).
# The probes and sample metrics use --limit $LIMIT rows per split (the CPU route; pretraining uses
# every training image). Each step's wall time goes to $RES/times.txt.
#   scripts/fashion-mnist-correlation.sh
#   LIMIT=300 PRETRAIN_LIMIT=300 STEPS=40 N=50 WIDE=/tmp/trial-run RES=/tmp/trial-corr MINI=/tmp/trial-mini \
#       scripts/fashion-mnist-correlation.sh     # a quick trial (WIDE made with LIMIT=300 by the other script)
set -euo pipefail
RES=${RES:-results/fashion-mnist/correlation}
WIDE=${WIDE:-runs/fm-wide-bf16}
MINI=${MINI:-runs/fm-mini-bf16}
STEPS=${STEPS:-5000}
LIMIT=${LIMIT:-2000}
N=${N:-400}
PRETRAIN_ARGS=()
[ -n "${PRETRAIN_LIMIT:-}" ] && PRETRAIN_ARGS=(--limit "$PRETRAIN_LIMIT")
BENCH=${BENCH:-bench}
mkdir -p "$RES"
TIMES="$RES/times.txt"
: > "$TIMES"
source "$(dirname "$0")/steps.sh"

[ -d "$WIDE/checkpoints" ] || { echo "error: $WIDE has no checkpoints; run scripts/fashion-mnist-reference.sh first (or set WIDE)" >&2; exit 2; }
step pretrain-mini $BENCH -q pretrain -b igpt-mini -d fashion-mnist --image-size 14 --steps "$STEPS" --batch-size 16 \
    --lr 2e-3 --warmup $((STEPS / 25)) --save-at "$(seq -s, $((STEPS / 8)) $((STEPS / 8)) $((STEPS - 1)))" \
    --precision bf16 --out "$MINI" "${PRETRAIN_ARGS[@]}"
step pixels $BENCH -q run -b pixels -t linear-probe -d fashion-mnist --limit "$LIMIT" --results "$RES/records"
step study $BENCH -q run -t correlation -b igpt --weights "$WIDE/checkpoints/*" --weights "$MINI/checkpoints/*" \
    -d fashion-mnist --limit "$LIMIT" -o n="$N" --results "$RES/records"
step report $BENCH report "$RES/records" --format html --out "$RES/report.html" --plot "$RES/plots"
$BENCH report "$RES/records" --summary --format md > "$RES/results.md"
for run in "$WIDE" "$MINI"; do
    cp "$run/log.jsonl" "$RES/$(basename "$run")-pretrain-log.jsonl"
    cp "$run/run.json" "$RES/$(basename "$run")-pretrain-settings.json"
done
