#!/usr/bin/env bash
# The GPU check in one command (docs/performance.md gives its time on one GPU):
#   1. the GPU rows of `bench perf` (iGPT-S extraction and a pretraining step in bf16 against a large
#      bf16 matmul's measured rate; the linear probe of 8 layers on the device), each with where its
#      time goes (--profile: the top kernels and the device's idle share), then
#   2. a short pretraining of igpt-wide at 28x28 on Fashion-MNIST (4,000 steps x 128 images, bf16,
#      through torch.compile on a GPU; COMPILE=0 runs it eager)
#      and a linear probe of every layer of it (bf16 extraction, probe on the device).
# Needs the project installed (`pip install --no-deps --no-build-isolation -e .`) and Fashion-MNIST's
# four IDX files under $BENCH_DATA_ROOT (or the system place). Everything goes to $OUT; the wall
# time of each step to $OUT/times.txt. A CPU trial of the chain (the suite runs it:
# tests/test_perf.py): DEVICE=cpu STEPS=2 BATCH=8 LIMIT=100 PRECISION=fp32 (bf16 on a CPU without
# bf16 instructions is emulated and far slower).
# PART=perf runs step 1 only and PART=chain step 2 only, into the same $OUT: two calls where one
# command may not run 8 minutes.
set -euo pipefail
PART=${PART:-all}
case "$PART" in
    all | perf | chain) ;;
    *) echo "gpu-check.sh: PART must be all, perf or chain, not '$PART'" >&2; exit 2 ;;
esac
OUT=${OUT:-gpu-check}
DEVICE=${DEVICE:-cuda}
STEPS=${STEPS:-4000}
BATCH=${BATCH:-128}
PRECISION=${PRECISION:-bf16}
LIMIT_ARGS=()
if [ -n "${LIMIT:-}" ]; then LIMIT_ARGS=(--limit "$LIMIT"); fi
COMPILE_ARGS=()
if [ "${COMPILE:-1}" = 1 ] && [[ "$DEVICE" == cuda* ]]; then COMPILE_ARGS=(--compile); fi
BENCH=${BENCH:-bench}
mkdir -p "$OUT"
export BENCH_CACHE="$OUT/cache"
TIMES="$OUT/times.txt"
if [ "$PART" != chain ]; then : > "$TIMES"; fi  # a chain after a perf part adds to its times
source "$(dirname "$0")/steps.sh"

# a failed perf step (a correctness check, say) is reported at the end: the pretraining still runs
failed=()
if [ "$PART" != chain ]; then
    step perf-gpu $BENCH perf --only gpu --profile --json "$OUT/perf-gpu.json" || failed+=(perf-gpu)
fi
if [ "$PART" != perf ]; then
    step pretrain $BENCH -q pretrain -b igpt-wide -d fashion-mnist --steps "$STEPS" --batch-size "$BATCH" --lr 2e-3 \
        --warmup $((STEPS / 25 + 1)) --precision "$PRECISION" --device "$DEVICE" --out "$OUT/pretrain" "${LIMIT_ARGS[@]}" "${COMPILE_ARGS[@]}"
    step probe-igpt $BENCH -q run -b igpt --weights "$OUT/pretrain" -t linear-probe -d fashion-mnist \
        --device "$DEVICE" --precision "$PRECISION" --results "$OUT/records" "${LIMIT_ARGS[@]}"
    step probe-pixels $BENCH -q run -b pixels -t linear-probe -d fashion-mnist --device "$DEVICE" \
        --results "$OUT/records" "${LIMIT_ARGS[@]}"
    $BENCH report "$OUT/records" --summary
fi
cat "$OUT/times.txt"
if [ ${#failed[@]} -gt 0 ]; then
    echo "failed: ${failed[*]} (its output is above)" >&2
    exit 1
fi
