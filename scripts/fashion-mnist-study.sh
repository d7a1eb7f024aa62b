#!/usr/bin/env bash
# The reference study of Fashion-MNIST, one command, two routes:
#   - iGPT sizes whose bits/dim differ at equal steps ($SIZES), six saves each, and a deeper model
#     ($DEEP, at least 8 blocks) trained longer ($DEEP_STEPS), all with one recipe and palette;
#   - the correlation study over every checkpoint of $SIZES, probes on the full train split (no
#     --limit), its per-size, partial-given-step and matched-step statistics;
#   - the deep model's every layer probed at its last three saves (has its depth curve settled?);
#   - the deep model ($MAIN) probed on every layer (and the five around the best, concatenated),
#     kNN and low-data probes, and the paired test of its best inner layer against its top block;
#   - pixels raw and at the model's view (pixels-view --weights), a random-init resnet18 (every
#     residual branch on: the default), the same protocols, paired against the iGPT;
#   - fine-tuning of the iGPT and resnet18 on the same data and epochs, each with its learning rate
#     chosen on val from a grid (-o lr=A,B,C);
#   - tables, plots and the page (bench report), the paired tables (bench compare --paired).
# Routes: DEVICE=cuda (default) trains at 28x28 in bf16 through torch.compile, sized for about
# 10 minutes on one H100/H200 (an estimate from igpt-wide's pretraining there);
# PART=pretrain and PART=evaluate split it into two calls. DEVICE=cpu trains at 14x14 (hours on
# 2 cores; every step resumes or is skipped when done, so a run may span sessions) and fine-tunes on
# FT_LIMIT rows per split (10000: a subset of train, val and test whole; FT_LIMIT= for all). A toy run:
#   DEVICE=cpu STEPS=12 DEEP_STEPS=12 LIMIT=100 N=10 SIZES="igpt-2x32 igpt-2x64" DEEP=igpt-8x32 \
#       FT_EPOCHS=1 SHOTS=1,5 RES=/tmp/toy RUNS=/tmp/toy-runs scripts/fashion-mnist-study.sh
# Records go to $RES (records/, correlation/, depth/), checkpoints and the activation cache to $RUNS;
# relative folders (the defaults) keep the records free of this machine's paths. Each step's wall
# time goes to $RES/times.txt.
set -euo pipefail
DEVICE=${DEVICE:-cuda}
case "$DEVICE" in
    cuda*) ROUTE=gpu; IMAGE=${IMAGE:-28}; STEPS=${STEPS:-1500}; BATCH=${BATCH:-128}; PRECISION=${PRECISION:-bf16}
           LRS_IGPT=${LRS_IGPT:-3e-5,1e-4,3e-4}; FT_EPOCHS=${FT_EPOCHS:-2}; N=${N:-500} ;;
    cpu) ROUTE=cpu; IMAGE=${IMAGE:-14}; STEPS=${STEPS:-5000}; BATCH=${BATCH:-16}
         LRS_IGPT=${LRS_IGPT:-3e-5,1e-4,3e-4}; FT_EPOCHS=${FT_EPOCHS:-3}; N=${N:-400}; FT_LIMIT=${FT_LIMIT-10000}
         # bf16 only where the CPU computes it natively (AVX512-BF16 or AMX); emulated, it is slower than fp32
         PRECISION=${PRECISION:-$(${PYTHON:-python} -c 'from bench.runtime import cpu_bf16_hardware as h; print("bf16" if h() else "fp32")')} ;;
    *) echo "fashion-mnist-study.sh: DEVICE must be cuda[:N] or cpu, not '$DEVICE'" >&2; exit 2 ;;
esac
PART=${PART:-all}
case "$PART" in
    all | pretrain | evaluate) ;;
    *) echo "fashion-mnist-study.sh: PART must be all, pretrain or evaluate, not '$PART'" >&2; exit 2 ;;
esac
RES=${RES:-results/fashion-mnist/study-$ROUTE}
RUNS=${RUNS:-runs/fm-study-$ROUTE}
DATASET=${DATASET:-fashion-mnist}
SIZES=${SIZES:-igpt-4x64 igpt-8x128 igpt-4x256}
DEEP=${DEEP:-igpt-12x128}
DEEP_STEPS=${DEEP_STEPS:-$((2 * STEPS))}
MAIN=${MAIN:-$DEEP}            # the iGPT of the protocols and the paired tests
LR=${LR:-2e-3}
LRS_RESNET=${LRS_RESNET:-3e-4,1e-3,3e-3}
SHOTS=${SHOTS:-1,5,10,100}
EXTRACTOR=${EXTRACTOR:-classifier}  # sample-quality's feature space for FD, KID, precision/recall
LIMIT_ARGS=()
[ -n "${LIMIT:-}" ] && LIMIT_ARGS=(--limit "$LIMIT")
COMPILE_ARGS=()
[ "$ROUTE" = gpu ] && [ "${COMPILE:-1}" = 1 ] && COMPILE_ARGS=(--compile)
BENCH=${BENCH:-bench}
PYTHON=${PYTHON:-python}
export BENCH_CACHE=${BENCH_CACHE:-$RUNS/cache}
mkdir -p "$RES"
TIMES="$RES/times.txt"
[ "$PART" = evaluate ] || : > "$TIMES"
source "$(dirname "$0")/steps.sh"

for n in "$STEPS" "$DEEP_STEPS"; do
    [ "$n" -ge 6 ] 2>/dev/null || { echo "fashion-mnist-study.sh: STEPS and DEEP_STEPS must be at least 6 (six saves), not '$n'" >&2; exit 2; }
done
saves() {  # five saves, a sixth of the steps apart (the last step is saved too: six checkpoints)
    seq -s, $(($1 / 6)) $(($1 / 6)) $(($1 - $1 / 6))
}
pretrain() {  # NAME STEPS
    step "pretrain-$1" $BENCH -q pretrain -b "$1" -d "$DATASET" --image-size "$IMAGE" --steps "$2" \
        --batch-size "$BATCH" --lr "$LR" --warmup $(($2 / 25 + 1)) --save-at "$(saves "$2")" \
        --precision "$PRECISION" --device "$DEVICE" --out "$RUNS/$1" "${LIMIT_ARGS[@]}" "${COMPILE_ARGS[@]}"
}

if [ "$PART" != evaluate ]; then
    for size in $SIZES; do pretrain "$size" "$STEPS"; done
    pretrain "$DEEP" "$DEEP_STEPS"
fi
[ "$PART" = pretrain ] && { cat "$TIMES"; exit 0; }

RUN=(-d "$DATASET" --device "$DEVICE" "${LIMIT_ARGS[@]}")
WEIGHTS=()
for size in $SIZES; do WEIGHTS+=(--weights "$RUNS/$size/checkpoints/*"); done
step correlation $BENCH -q run -t correlation -b igpt "${WEIGHTS[@]}" -o n="$N" -o extractor="$EXTRACTOR" --results "$RES/correlation" "${RUN[@]}"
# The deep model's depth curve and bits/dim at its last three saves: whether the curve has settled.
DEEP_LAST=()
for save in $(ls -d "$RUNS/$DEEP"/checkpoints/step-* | tail -n 3); do DEEP_LAST+=(--weights "$save"); done
step depth-igpt $BENCH -q run -b igpt "${DEEP_LAST[@]}" -t bits-per-dim -o split=val -t linear-probe \
    --precision "$PRECISION" --results "$RES/depth" "${RUN[@]}"
step probes-igpt $BENCH -q run -b igpt --weights "$RUNS/$MAIN" -t linear-probe -t knn -t low-data-probe \
    -o concat=best5 -o shots="$SHOTS" --precision "$PRECISION" --results "$RES/records" "${RUN[@]}"
step probes-pixels-view $BENCH -q run -b pixels-view --weights "$RUNS/$MAIN" -t linear-probe -t knn -t low-data-probe \
    -o shots="$SHOTS" --results "$RES/records" "${RUN[@]}"
step probes-pixels-resnet18 $BENCH -q run -b pixels -b resnet18 -t linear-probe -t knn -t low-data-probe \
    -o shots="$SHOTS" --results "$RES/records" "${RUN[@]}"
FT_LIMIT_ARGS=("${LIMIT_ARGS[@]}")
[ -n "${FT_LIMIT:-}" ] && [ -z "${LIMIT:-}" ] && FT_LIMIT_ARGS=(--limit "$FT_LIMIT")
FT=(-t finetune -o epochs="$FT_EPOCHS" --results "$RES/records" -d "$DATASET" --device "$DEVICE" "${FT_LIMIT_ARGS[@]}")
step finetune-igpt $BENCH -q run -b igpt --weights "$RUNS/$MAIN" -o lr="$LRS_IGPT" "${FT[@]}"
step finetune-resnet18 $BENCH -q run -b resnet18 -o lr="$LRS_RESNET" "${FT[@]}"

# Paired tables, every run against the iGPT on the same test images (linear probe, fine-tuning);
# then the iGPT's best inner layer (by val) against its top block.
igpt_probe=$(ls "$RES"/records/igpt@*__linear-probe__*.json)
view_probe=$(ls "$RES"/records/pixels-view@*__linear-probe__*.json)
pixels_probe=$(ls "$RES"/records/pixels__*__linear-probe__*.json)
resnet_probe=$(ls "$RES"/records/resnet18__*__linear-probe__*.json)
igpt_ft=$(ls "$RES"/records/igpt@*__finetune__*.json)
resnet_ft=$(ls "$RES"/records/resnet18__*__finetune__*.json)
{
    $BENCH compare --paired --format md "$igpt_probe" "$view_probe" "$pixels_probe" "$resnet_probe"
    echo
    $BENCH compare --paired --format md "$igpt_ft" "$resnet_ft"
} > "$RES/paired.md"
read -r inner top < <($PYTHON - "$igpt_probe" <<'EOF'
import sys
from bench import api
df = api.report(sys.argv[1])
val = df[(df.split == "val") & (df.metric == "top1") & ~df.layer.astype(str).str.contains("+", regex=False)]
layers = list(val.sort_values("layer_index").layer)  # h0 (embeddings), h1..hN (blocks), final
inner = val[val.layer.isin(layers[1:-2])]
print(inner.loc[inner.value.astype(float).idxmax()].layer, layers[-2])
EOF
)
$BENCH compare --paired --format md --layers "$top,$inner" "$igpt_probe" > "$RES/depth-paired.md"

step report $BENCH report "$RES/records" "$RES/correlation" "$RES/depth" --format html --out "$RES/report.html" --plot "$RES/plots"
$BENCH report "$RES/records" "$RES/correlation" "$RES/depth" --summary --format md > "$RES/results.md"
for size in $SIZES $DEEP; do
    cp "$RUNS/$size/log.jsonl" "$RES/$size-pretrain-log.jsonl"
    cp "$RUNS/$size/run.json" "$RES/$size-pretrain-settings.json"
done
cat "$TIMES"
