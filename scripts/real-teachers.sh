#!/usr/bin/env bash
# MOHAWK on the two real teachers, every variant at equal total tokens (docs/results.md):
#   phi-17m  -> Phi-Mamba on corpus/train, validated on corpus/val
#   stories260K (llama2.c) -> Llama-style Phi-Mamba on text sampled from the teacher
# Variants: stage 3 alone, stages 2+3, stages 1+2+3 (+ a from-scratch student at the same tokens).
#
#   scripts/real-teachers.sh prepare      here: .device (see gpu-check.sh) plus the teachers and
#                                         the corpus, compressed, in .device/real
#   scripts/real-teachers.sh run          on the GPU machine (carry .device), or here with
#                                         DEVICE=cpu MOHAWK="node --import tsx src/cli/main.ts"
# Environment: TOKENS_PHI, TOKENS_STORIES (total tokens per variant), OUT (results folder),
# EXTRA_SET (more --set options for every run, e.g. "--set data.valTokens=4096"),
# TEACHERS (default "phi17m stories260K"), VARIANTS (default "3 23 123"; e.g. VARIANTS=3
# TEACHERS=phi17m for a quick check that a speed change leaves the result alone).
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
export DEVICE_DIR=${DEVICE_DIR:-.device}
D=$DEVICE_DIR
# the teachers and the corpus, packed here and unpacked on the GPU machine
DATA_TAR=${DATA_TAR:-$D/real/shared.tar.xz}

if [ "${1:-}" = prepare ]; then
  bash scripts/gpu-check.sh prepare >/dev/null
  rm -rf "$D/fixtures" "$D/app/node_modules/koffi/doc"
  mkdir -p "$(dirname "$DATA_TAR")"
  tar -C ../shared/data -cf - teachers/phi-17m corpus/train corpus/val stories260K | xz -T2 -6 >"$DATA_TAR"
  du -sh "$D" "$DATA_TAR"
  exit 0
fi

OUT=${OUT:-/tmp/real}
DEVICE=${DEVICE:-cuda}
TOKENS_PHI=${TOKENS_PHI:-2097152}
TOKENS_STORIES=${TOKENS_STORIES:-1048576}
mkdir -p "$OUT"
if [ -z "${MOHAWK:-}" ]; then
  xz -dc "$D/node.xz" >/tmp/node && chmod +x /tmp/node && export PATH=/tmp:$PATH
  ln -sfn "$D/app/node_modules" node_modules
  export LD_LIBRARY_PATH=/usr/local/cuda/lib64:${LD_LIBRARY_PATH:-}
  export MOHAWK_CACHE=/tmp/mohawk-cache MOHAWK_CUDA_KERNELS=$root/src/backends/cuda/kernels NCCL_NVLS_ENABLE=0
  MOHAWK="node $D/build/src/cli/main.js"
  SHARED=/tmp/shared
  mkdir -p $SHARED && xz -dc "$DATA_TAR" | tar -C $SHARED -xf -
else
  SHARED=$(cd ../shared/data && pwd)
fi
W=$OUT/work
mkdir -p "$W"
log() { echo "[$(date -u +%H:%M:%S)] $*"; }

# stage splits of a total T: 3 alone; 2+3 = T/5 + 4T/5; 1+2+3 = T/10 + T/10 + 8T/10
variants() {
  local T=$1 lr3=$2
  echo "3|[{stage: 3, tokens: $T, lr: $lr3}]"
  echo "23|[{stage: 2, tokens: $((T / 5))}, {stage: 3, tokens: $((T - T / 5)), lr: $lr3}]"
  echo "123|[{stage: 1, tokens: $((T / 10)), seqLen: 128, microBatch: 16}, {stage: 2, tokens: $((T / 10))}, {stage: 3, tokens: $((T - 2 * (T / 10))), lr: $lr3}]"
}

run_variants() {
  local name=$1 config=$2 teacher=$3 data=$4 T=$5 lr3=$6
  while IFS='|' read -r v stages; do
    [[ " ${VARIANTS:-3 23 123} " == *" $v "* ]] || continue
    local scratch=false
    [ "$v" = 123 ] && scratch=true
    log "$name: stages $v ($T tokens)"
    $MOHAWK distill --config "$config" --device "$DEVICE" --out "$W/$name-$v" \
      --set "teacher=$teacher" --set "data.train=[$data]" --set "data.val=[]" \
      --set "stages=$stages" --set "scratchBaseline=$scratch" ${EXTRA_SET:-} --json >"$W/$name-$v.json" 2>"$W/$name-$v.log" ||
      { tail -20 "$W/$name-$v.log"; return 1; }
    grep -v "step " "$W/$name-$v.log" >>"$OUT/runs.log"
    tail -1 "$W/$name-$v.log"
  done < <(variants "$T" "$lr3")
}

# ---- phi-17m --------------------------------------------------------------------------------
if [[ " ${TEACHERS:-phi17m stories260K} " == *" phi17m "* ]]; then
log "phi-17m: tokenizing corpus/train (held out: corpus/val)"
[ -f "$W/data-phi17m/index.json" ] || $MOHAWK data prepare --tokenizer "$SHARED/teachers/phi-17m" --input "$SHARED/corpus/train" \
  --val "$SHARED/corpus/val" --out "$W/data-phi17m" >"$W/data-phi17m.log" 2>&1
tail -3 "$W/data-phi17m.log"
run_variants phi17m configs/phi-17m.yaml "$SHARED/teachers/phi-17m" "$W/data-phi17m" "$TOKENS_PHI" 5.0e-4
fi

# ---- stories260K ----------------------------------------------------------------------------
if [[ " ${TEACHERS:-phi17m stories260K} " == *" stories260K "* ]]; then
log "stories260K: convert and sample"
$MOHAWK convert llama2c --checkpoint "$SHARED/stories260K/stories260K.bin" \
  --tokenizer "$SHARED/stories260K/tok512.bin" --out "$W/stories260K"
$MOHAWK sample-data --model "$W/stories260K" --tokens $((TOKENS_STORIES * 2)) --out "$W/data-stories" \
  --batch 64 --seq-len 256 --device "$DEVICE" >"$W/sample-stories.log" 2>&1
tail -3 "$W/sample-stories.log"
run_variants stories260K configs/stories260k.yaml "$W/stories260K" "$W/data-stories" "$TOKENS_STORIES" 1.0e-3
fi

# one file with every run's results
node -e '
const fs = require("fs"), path = require("path");
const w = process.argv[1], out = {};
for (const f of fs.readdirSync(w).filter((f) => f.endsWith(".json")).sort()) out[f.replace(/\.json$/, "")] = JSON.parse(fs.readFileSync(path.join(w, f), "utf8"));
fs.writeFileSync(process.argv[2], JSON.stringify(out, null, 2));
' "$W" "$OUT/summary.json"
log "done: $OUT/summary.json"
