#!/usr/bin/env bash
# The reference results of results/fashion-mnist/: every protocol on Fashion-MNIST for
#   - pixels (linear probe, kNN, low-data probes),
#   - a random-init resnet18 (the same, plus supervised fine-tuning: the paper's supervised row),
#   - igpt-wide pretrained with the recipe of results/README.md (14x14, bf16; all five protocols:
#     linear probe per layer and on the 5 layers around the best, kNN, low-data, fine-tuning).
# Pretraining saves every eighth of the steps (the correlation study of results/fashion-mnist/correlation/ reads them).
# One command; each step's wall time goes to $RES/times.txt. On a GPU it takes minutes, on the
# 2-core CPU hours (fine-tuning dominates; run each step with OMP_NUM_THREADS=1 when two share the
# CPU); LIMIT=N makes a quick trial of the whole chain.
#   scripts/fashion-mnist-reference.sh                  # the committed run
#   LIMIT=300 STEPS=40 EPOCHS=1 SHOTS=1,5 RES=/tmp/trial RUN=/tmp/trial-run scripts/fashion-mnist-reference.sh
set -euo pipefail
RES=${RES:-results/fashion-mnist}
RUN=${RUN:-runs/fm-wide-bf16}
STEPS=${STEPS:-5000}
EPOCHS=${EPOCHS:-5}            # resnet18 fine-tuning
EPOCHS_IGPT=${EPOCHS_IGPT:-1}   # iGPT fine-tuning: one epoch over...
FT_LIMIT=${FT_LIMIT:-20000}     # ...at most 20,000 rows per split on the CPU route (FT_LIMIT= for all)
PRECISION=${PRECISION:-bf16}   # fine-tuning autocast (auto = bf16 on a GPU, fp32 on a CPU)
SHOTS=${SHOTS:-1,5,10,100}
LIMIT_ARGS=()
[ -n "${LIMIT:-}" ] && LIMIT_ARGS=(--limit "$LIMIT")
BENCH=${BENCH:-bench}
mkdir -p "$RES"
TIMES="$RES/times.txt"
: > "$TIMES"
source "$(dirname "$0")/steps.sh"

step pretrain $BENCH -q pretrain -b igpt-wide -d fashion-mnist --image-size 14 --steps "$STEPS" --batch-size 16 \
    --lr 2e-3 --warmup $((STEPS / 25)) --save-at "$(seq -s, $((STEPS / 8)) $((STEPS / 8)) $((STEPS - 1)))" \
    --precision bf16 --out "$RUN" "${LIMIT_ARGS[@]}"
step probes-pixels-resnet18 $BENCH -q run -b pixels -b resnet18 -t linear-probe -t knn -t low-data-probe \
    -d fashion-mnist -o shots="$SHOTS" --results "$RES/records" "${LIMIT_ARGS[@]}"
step probes-igpt $BENCH -q run -b igpt --weights "$RUN" -t linear-probe -t knn -t low-data-probe -d fashion-mnist \
    -o concat=best5 -o shots="$SHOTS" --results "$RES/records" "${LIMIT_ARGS[@]}"
step finetune-resnet18 $BENCH -q run -b resnet18 -t finetune -d fashion-mnist -o epochs="$EPOCHS" \
    -o precision="$PRECISION" --results "$RES/records" "${LIMIT_ARGS[@]}"
FT_ARGS=("${LIMIT_ARGS[@]}")
[ -z "${LIMIT:-}" ] && [ -n "$FT_LIMIT" ] && FT_ARGS=(--limit "$FT_LIMIT")
step finetune-igpt $BENCH -q run -b igpt --weights "$RUN" -t finetune -d fashion-mnist -o epochs="$EPOCHS_IGPT" \
    -o precision="$PRECISION" --results "$RES/records" "${FT_ARGS[@]}"
step report $BENCH report "$RES/records" --format html --out "$RES/report.html" --plot "$RES/plots"
$BENCH report "$RES/records" --summary --format md > "$RES/results.md"
cp "$RUN/log.jsonl" "$RES/pretrain-log.jsonl"
cp "$RUN/run.json" "$RES/pretrain-settings.json"
