#!/usr/bin/env bash
# The measurements of issue 15 (docs/distillation-results.md, "Paper ablations"), on the two real
# teachers, every variant at equal total tokens:
#   init    paper | attention, each with the stage ablation 3 / 2+3 / 1+2+3 and a student from
#           scratch, at three budgets (BUDGETS_PHI: 2%, 5% and 20% of phi-17m's 19.66M training
#           tokens; BUDGETS_STORIES for stories260K, whose training tokens llama2.c does not record)
#   hybrid  1 and 2 attention layers kept (2 interleaved and 2 grouped) against the pure student
#   mixer   ssd / toeplitz / linear-attention through 1+2+3
#
#   scripts/real-teachers.sh prepare                  here: .device (node, build, teachers, corpus)
#   scripts/paper-ablations.sh                        on the GPU machine, carrying .device
#   DEVICE=cpu MOHAWK="node --import tsx src/cli/main.ts" SHARED=../shared/data \
#     BUDGETS_STORIES="32768" PARTS=init TEACHERS=stories260K scripts/paper-ablations.sh   # here
# Environment: OUT (results folder, default /tmp/paper), PARTS (default "init hybrid mixer"),
# TEACHERS (default "phi17m stories260K"), EXTRA_SET (more --set options for every run), S1_MICRO
# (stage 1's sequences of 128 tokens per micro-batch, default 16), INITS (default "paper
# attention") and VARIANTS (default "3 23 123") to run part of the init part.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
D=${DEVICE_DIR:-.device}
OUT=${OUT:-/tmp/paper}
DEVICE=${DEVICE:-cuda}
BUDGETS_PHI=${BUDGETS_PHI:-"393216 983040 3932160"}
BUDGETS_STORIES=${BUDGETS_STORIES:-"131072 262144 1048576"}
PARTS=${PARTS:-init hybrid mixer}
TEACHERS=${TEACHERS:-phi17m stories260K}
if [ -z "${MOHAWK:-}" ]; then
  xz -dc "$D/node.xz" >/tmp/node && chmod +x /tmp/node && export PATH=/tmp:$PATH
  ln -sfn "$D/app/node_modules" node_modules
  export LD_LIBRARY_PATH=/usr/local/cuda/lib64:${LD_LIBRARY_PATH:-}
  export MOHAWK_CACHE=/tmp/mohawk-cache MOHAWK_CUDA_KERNELS=$root/src/backends/cuda/kernels NCCL_NVLS_ENABLE=0
  MOHAWK="node $D/build/src/cli/main.js"
  SHARED=/tmp/shared
  mkdir -p $SHARED && xz -dc "$D/real/shared.tar.xz" | tar -C $SHARED -xf -
fi
SHARED=$(cd "${SHARED:-../shared/data}" && pwd)
W=$OUT/work
mkdir -p "$W"
log() { echo "[$(date -u +%H:%M:%S)] $*"; }

# one run: NAME CONFIG TEACHER DATA STAGES [more --set ...]
one() {
  local name=$1 config=$2 teacher=$3 data=$4 stages=$5
  shift 5
  [ -f "$W/$name.json" ] && return 0
  log "$name"
  $MOHAWK distill --config "$config" --device "$DEVICE" --out "$W/$name" \
    --set "teacher=$teacher" --set "data.train=[$data]" --set "data.val=[]" \
    --set "stages=$stages" "$@" ${EXTRA_SET:-} --json >"$W/$name.json.tmp" 2>"$W/$name.log" ||
    { tail -20 "$W/$name.log"; return 1; }
  mv "$W/$name.json.tmp" "$W/$name.json"
  tail -1 "$W/$name.log"
}

# stage splits of a total T (as scripts/real-teachers.sh): 3; 2+3 = T/5 + 4T/5; 1+2+3 = T/10 + T/10 + 8T/10
stages_of() {
  local v=$1 T=$2 lr3=$3
  case $v in
    3) echo "[{stage: 3, tokens: $T, lr: $lr3}]" ;;
    23) echo "[{stage: 2, tokens: $((T / 5))}, {stage: 3, tokens: $((T - T / 5)), lr: $lr3}]" ;;
    123) echo "[{stage: 1, tokens: $((T / 10)), seqLen: 128, microBatch: ${S1_MICRO:-16}}, {stage: 2, tokens: $((T / 10))}, {stage: 3, tokens: $((T - 2 * (T / 10))), lr: $lr3}]" ;;
  esac
}

teacher_runs() {
  local t=$1 config=$2 teacher=$3 data=$4 budgets=$5 lr3=$6 layers=$7
  if [[ " $PARTS " == *" init "* ]]; then
    for T in $budgets; do
      for init in ${INITS:-paper attention}; do
        for v in ${VARIANTS:-3 23 123}; do
          local scratch=false
          [ "$v" = 123 ] && [ "$init" = paper ] && scratch=true
          one "$t-$init-$v-$T" "$config" "$teacher" "$data" "$(stages_of $v "$T" "$lr3")" \
            --set "student.init=$init" --set "scratchBaseline=$scratch"
        done
      done
    done
  fi
  local T=${budgets##* }
  if [[ " $PARTS " == *" hybrid "* ]]; then
    local mid=$((layers / 2))
    for h in "1:[$mid]" "2i:[$((layers / 3)),$((2 * layers / 3))]" "2g:[$((mid - 1)),$mid]"; do
      one "$t-hybrid-${h%%:*}-$T" "$config" "$teacher" "$data" "$(stages_of 123 "$T" "$lr3")" \
        --set "student.init=paper" --set "student.attentionLayers=${h#*:}" --set "scratchBaseline=false"
    done
  fi
  if [[ " $PARTS " == *" mixer "* ]]; then
    for m in toeplitz linear-attention; do
      one "$t-mixer-$m-$T" "$config" "$teacher" "$data" "$(stages_of 123 "$T" "$lr3")" \
        --set "student.init=paper" --set "student.mixer=$m" --set "scratchBaseline=false"
    done
  fi
}

if [[ " $TEACHERS " == *" phi17m "* ]]; then
  [ -f "$W/data-phi17m/index.json" ] || $MOHAWK data prepare --tokenizer "$SHARED/teachers/phi-17m" \
    --input "$SHARED/corpus/train" --val "$SHARED/corpus/val" --out "$W/data-phi17m" >"$W/data-phi17m.log" 2>&1
  teacher_runs phi17m configs/phi-17m.yaml "$SHARED/teachers/phi-17m" "$W/data-phi17m" "$BUDGETS_PHI" 5.0e-4 6
fi
if [[ " $TEACHERS " == *" stories260K "* ]]; then
  [ -f "$W/stories260K/config.json" ] || $MOHAWK convert llama2c --checkpoint "$SHARED/stories260K/stories260K.bin" \
    --tokenizer "$SHARED/stories260K/tok512.bin" --out "$W/stories260K"
  max=0
  for T in $BUDGETS_STORIES; do [ "$T" -gt "$max" ] && max=$T; done
  [ -f "$W/data-stories/index.json" ] || $MOHAWK sample-data --model "$W/stories260K" --tokens $((max * 2)) \
    --out "$W/data-stories" --batch 64 --seq-len 256 --device "$DEVICE" >"$W/sample-stories.log" 2>&1
  teacher_runs stories260K configs/stories260k.yaml "$W/stories260K" "$W/data-stories" "$BUDGETS_STORIES" 1.0e-3 5
fi

node -e '
const fs = require("fs"), path = require("path");
const w = process.argv[1], out = {};
for (const f of fs.readdirSync(w).filter((f) => f.endsWith(".json")).sort()) out[f.replace(/\.json$/, "")] = JSON.parse(fs.readFileSync(path.join(w, f), "utf8"));
fs.writeFileSync(process.argv[2], JSON.stringify(out, null, 2));
' "$W" "$OUT/summary.json"
log "done: $OUT/summary.json"
