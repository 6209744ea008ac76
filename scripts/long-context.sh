#!/usr/bin/env bash
# The long-context figures of docs/long-context.md for phi-17m, its Phi-Mamba student and a hybrid
# (attention kept in layer 3): distill both (stage 3 alone, TOKENS tokens), then perplexity by
# position on corpus/val (teacher context 2048, students also at 8192) and passkey retrieval.
#
#   scripts/real-teachers.sh prepare      here: .device with node, the build, teacher and corpus
#   scripts/long-context.sh               on the GPU machine (carry .device), or here with
#                                         DEVICE=cpu MOHAWK="node --import tsx src/cli/main.ts"
# Environment: TOKENS (default 4194304), OUT (default /tmp/long-context).
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
D=${DEVICE_DIR:-.device}
OUT=${OUT:-/tmp/long-context}
DEVICE=${DEVICE:-cuda}
TOKENS=${TOKENS:-4194304}
mkdir -p "$OUT"
if [ -z "${MOHAWK:-}" ]; then
  xz -dc "$D/node.xz" >/tmp/node && chmod +x /tmp/node && export PATH=/tmp:$PATH
  ln -sfn "$D/app/node_modules" node_modules
  export LD_LIBRARY_PATH=/usr/local/cuda/lib64:${LD_LIBRARY_PATH:-}
  export MOHAWK_CACHE=/tmp/mohawk-cache MOHAWK_CUDA_KERNELS=$root/src/backends/cuda/kernels
  MOHAWK="node $D/build/src/cli/main.js"
  SHARED=/tmp/shared
  mkdir -p $SHARED && xz -dc "${DATA_TAR:-$D/real/shared.tar.xz}" | tar -C $SHARED -xf -
else
  SHARED=$(cd ../shared/data && pwd)
fi
T=$SHARED/teachers/phi-17m
log() { echo "[$(date -u +%H:%M:%S)] $*"; }
[ -f "$OUT/data/index.json" ] || $MOHAWK data prepare --tokenizer "$T" --input "$SHARED/corpus/train" \
  --val "$SHARED/corpus/val" --out "$OUT/data" >"$OUT/data.log" 2>&1
for v in student hybrid; do
  layers="[]"
  [ $v = hybrid ] && layers="[3]"
  log "distill $v ($TOKENS tokens)"
  [ -f "$OUT/$v/results.json" ] || $MOHAWK distill --config configs/phi-17m.yaml --device "$DEVICE" --out "$OUT/$v" \
    --set "teacher=$T" --set "data.train=[$OUT/data]" --set "data.val=[]" --set scratchBaseline=false --set "student.attentionLayers=$layers" \
    --set "stages=[{stage: 3, tokens: $TOKENS, lr: 0.001}]" --json >"$OUT/$v.json" 2>"$OUT/$v.log"
done
VAL=$(ls "$SHARED"/corpus/val/*.txt)
log "perplexity by position, context 2048 (all three)"
# shellcheck disable=SC2086
$MOHAWK perplexity --device "$DEVICE" --model "$T" --compare "$OUT/student/student" --compare "$OUT/hybrid/student" \
  --file $VAL --by-position --context 2048 --bucket 128 --plot "$OUT/position-2048.svg" --json >"$OUT/position-2048.json"
log "perplexity by position, context 8192 (students)"
# shellcheck disable=SC2086
$MOHAWK perplexity --device "$DEVICE" --model "$OUT/student/student" --compare "$OUT/hybrid/student" \
  --file $VAL --by-position --context 8192 --bucket 512 --plot "$OUT/position-8192.svg" --json >"$OUT/position-8192.json"
for m in "$T" "$OUT/student/student" "$OUT/hybrid/student"; do
  n=$(basename "$(dirname "$m")")
  [ "$m" = "$T" ] && n=teacher
  log "needle: $n"
  $MOHAWK eval --device "$DEVICE" --model "$m" --tasks needle --max-context 8192 --needle-trials 8 \
    --plot "$OUT/needle-$n.svg" --json >"$OUT/needle-$n.json"
done
log "done: $OUT"
