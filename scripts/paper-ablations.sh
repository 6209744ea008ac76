#!/usr/bin/env bash
# The measurements of issue 15 (docs/distillation-results.md, "Paper ablations"), on the two real
# teachers, every variant at equal total tokens:
#   init    paper | attention, each with the stage ablation 3 / 2+3 / 1+2+3 and a student from
#           scratch, at three budgets (BUDGETS_PHI: 2%, 5% and 20% of phi-17m's 19.66M training
#           tokens; BUDGETS_STORIES for stories260K, whose training tokens llama2.c does not record)
#   hybrid  1 and 2 attention layers kept (2 interleaved and 2 grouped) against the pure student
#   mixer   ssd / toeplitz / linear-attention through 1+2+3
#
#   scripts/paper-ablations.sh prepare       here: .device-paper, everything the phi-17m runs need
#                                            on the GPU machine and nothing else (see below)
#   scripts/paper-ablations.sh               on the GPU machine, carrying .device-paper (phi-17m)
#                                            or .device (scripts/real-teachers.sh prepare)
#   scripts/paper-ablations.sh summary       gather the finished runs into $OUT/summary.json
#   scripts/paper-ablations.sh tables [F]    that summary (or F) as the docs' markdown tables
#   DEVICE=cpu MOHAWK="node --import tsx src/cli/main.ts" SHARED=../shared/data \
#     BUDGETS_STORIES="32768" PARTS=init TEACHERS=stories260K scripts/paper-ablations.sh   # here
#
# `prepare` fits the phi-17m ablations into one device call's 64 MiB (tracked files included):
# .device-paper/node.xz (a stripped Node, xz -9e), app.tar.xz (the compiled CLI and only the
# runtime packages distill's path imports: koffi + its linux-x64 binary, yaml, hyparquet,
# @huggingface/tokenizers and jinja) and phi17m.tar.xz (the teacher and corpus/train's first
# SLICE_TOKENS tokens, already tokenized, with corpus/val as the held-out split). It prints what
# travels. Every run reads the same slice (the loader wraps around after a full pass).
#
# Environment: OUT (results folder, default /tmp/paper), PARTS (default "init hybrid mixer"),
# TEACHERS (default "phi17m stories260K"), EXTRA_SET (more --set options for every run), S1_MICRO
# (stage 1's sequences of 128 tokens per micro-batch, default 16), INITS (default "paper
# attention") and VARIANTS (default "3 23 123") to run part of the init part; JOBS (runs at once
# as separate processes, default 1: several share one GPU well for students this small);
# DEVICE_DIR (default .device-paper where it holds app.tar.xz, else .device); SLICE_TOKENS
# (prepare: default 4194304); REUSE (prepare: a prepared folder whose node.xz and phi17m.tar.xz,
# which do not depend on the code, are copied instead of made again; the app is always rebuilt).
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
OUT=${OUT:-/tmp/paper}
W=$OUT/work
U=${UNPACK:-/tmp/mohawk-paper} # where the GPU machine unpacks node, the app and the data
log() { echo "[$(date -u +%H:%M:%S)] $*"; }

# every finished run's --json output in one file
summary() {
  [ -d "$W" ] || { echo "paper-ablations: no runs in $W" >&2; return 1; }
  node -e '
const fs = require("fs"), path = require("path");
const w = process.argv[1], out = {};
for (const f of fs.readdirSync(w).filter((f) => f.endsWith(".json")).sort()) out[f.replace(/\.json$/, "")] = JSON.parse(fs.readFileSync(path.join(w, f), "utf8"));
fs.writeFileSync(process.argv[2], JSON.stringify(out, null, 2));
console.log(Object.keys(out).length + " runs in " + process.argv[2]);
' "$W" "$OUT/summary.json"
}

if [ "${1:-}" = prepare ]; then
  D=${DEVICE_DIR:-.device-paper}
  SHARED=$(cd "${SHARED:-../shared/data}" && pwd)
  SLICE_TOKENS=${SLICE_TOKENS:-4194304}
  mkdir -p "$D"
  T=$(mktemp -d)
  trap 'rm -rf "$T"' EXIT
  # REUSE=DIR: take node.xz and phi17m.tar.xz (code-independent) from another prepared folder
  if [ -n "${REUSE:-}" ]; then
    for f in node.xz phi17m.tar.xz; do [ -f "$REUSE/$f" ] && cp "$REUSE/$f" "$D/$f"; done
  fi
  if [ ! -f "$D/node.xz" ]; then
    log "node: strip + xz -9e (a few minutes)"
    cp "$(command -v node)" "$T/node" && strip "$T/node" && xz -T2 -9e "$T/node" && mv "$T/node.xz" "$D/node.xz"
  fi
  log "app: compiled CLI + distill's runtime packages"
  npx tsc -p tsconfig.build.json --outDir "$T/app/build" --sourceMap false --declaration false ||
    echo "paper-ablations: tsc reported errors (see above); the build was written anyway"
  cp package.json "$T/app/"
  for p in koffi @koromix/koffi-linux-x64 yaml hyparquet @huggingface/tokenizers @huggingface/jinja; do
    mkdir -p "$(dirname "$T/app/node_modules/$p")" && cp -rL "node_modules/$p" "$T/app/node_modules/$p"
  done
  rm -rf "$T/app/node_modules/koffi/doc"
  tar -C "$T" -cf - app | xz -T2 -9 >"$D/app.tar.xz"
  if [ -n "${REUSE:-}" ] && [ -f "$REUSE/phi17m.tar.xz" ]; then
    log "phi-17m: teacher and tokens from $REUSE"
  else
    log "phi-17m: the teacher and the first $SLICE_TOKENS tokens of corpus/train"
    mkdir -p "$T/real/teachers" "$T/slice"
    cp -r "$SHARED/teachers/phi-17m" "$T/real/teachers/phi-17m"
    # the same leading fraction of every source (cut at a line), so the slice keeps the corpus's mix
    node -e '
  const fs = require("fs"), path = require("path");
  const [src, dst, frac] = [process.argv[1], process.argv[2], Number(process.argv[3])];
  for (const f of fs.readdirSync(src).sort()) {
    const b = fs.readFileSync(path.join(src, f));
    const cut = b.lastIndexOf(10, Math.floor(b.length * frac));
    fs.writeFileSync(path.join(dst, f), b.subarray(0, cut + 1));
  }' "$SHARED/corpus/train" "$T/slice" "$(node -e "console.log(Math.min(1, $SLICE_TOKENS / 5841676 * 1.005))")"
    node "$T/app/build/cli/main.js" data prepare --tokenizer "$SHARED/teachers/phi-17m" --input "$T/slice" \
      --val "$SHARED/corpus/val" --out "$T/real/data-phi17m" | tail -4
    tar -C "$T/real" -cf - teachers/phi-17m data-phi17m | xz -T2 -9 >"$D/phi17m.tar.xz"
  fi
  carried=$(du -cb "$D"/node.xz "$D"/app.tar.xz "$D"/phi17m.tar.xz | tail -1 | cut -f1)
  tracked=$(git ls-files -z | xargs -0 du -cb 2>/dev/null | tail -1 | cut -f1)
  untracked=$( (git ls-files -z -o --exclude-standard | xargs -0 -r du -cb 2>/dev/null || true) | tail -1 | cut -f1)
  untracked=${untracked:-0}
  du -b "$D"/node.xz "$D"/app.tar.xz "$D"/phi17m.tar.xz
  total=$((carried + tracked + untracked))
  echo "travels: $D $carried + tracked files $tracked + untracked files $untracked = $total bytes" \
    "($((total / 1048576)) MiB of 64)"
  [ "$total" -le $((64 * 1048576)) ] || { echo "paper-ablations: over the 64 MiB a device call carries" >&2; exit 1; }
  exit 0
fi
if [ "${1:-}" = tables ]; then # markdown tables of a summary.json: tables [FILE] (default $OUT/summary.json)
  node -e '
const s = JSON.parse(require("fs").readFileSync(process.argv[1], "utf8"));
const cell = (r) => (r ? `${r.valPpl.toFixed(2)} / ${r.valKl.toFixed(3)}` : "-");
const last = (r) => (r ? r.stages[r.stages.length - 1] : null);
const secs = (r) => (r ? r.stages.reduce((a, x) => a + x.seconds, 0) : 0);
for (const t of [...new Set(Object.keys(s).map((k) => k.split("-")[0]))]) {
  const runs = Object.keys(s).filter((k) => k.startsWith(t + "-"));
  const any = s[runs[0]];
  console.log(`\n${t}: teacher perplexity ${any.teacherPpl.toFixed(3)}; cells: validation perplexity / KL(teacher || student) per token\n`);
  console.log("| init | budget (tokens) | after transfer | 3 | 2+3 | 1+2+3 | from scratch (ppl) |");
  console.log("| --- | ---: | ---: | ---: | ---: | ---: | ---: |");
  const budgets = [...new Set(runs.filter((k) => /-(paper|attention)-/.test(k)).map((k) => Number(k.split("-").pop())))].sort((a, b) => a - b);
  for (const init of ["paper", "attention"])
    for (const T of budgets) {
      const r = (v) => s[`${t}-${init}-${v}-${T}`];
      const some = r(3) ?? r(23) ?? r(123);
      if (!some) continue;
      const init0 = `${some.initialPpl.toFixed(1)} / ${some.initialKl.toFixed(3)}`;
      const sc = r(123)?.scratch ? r(123).scratch.valPpl.toFixed(2) : "-";
      console.log(`| ${init} | ${T} | ${init0} | ${cell(last(r(3)))} | ${cell(last(r(23)))} | ${cell(last(r(123)))} | ${sc} |`);
    }
  const other = runs.filter((k) => /-(hybrid|mixer)-/.test(k));
  if (other.length) {
    console.log("\n| run (init paper, 1+2+3) | after stage 1 | after stage 2 | after stage 3 | stage-1 loss (end) | seconds (stages) |");
    console.log("| --- | ---: | ---: | ---: | ---: | ---: |");
    for (const k of other) {
      const st = s[k].stages, at = (n) => st.find((x) => x.stage === n);
      console.log(`| ${k} | ${cell(at(1))} | ${cell(at(2))} | ${cell(at(3))} | ${at(1) ? at(1).loss.toFixed(3) : "-"} | ${secs(s[k]).toFixed(0)} |`);
    }
  }
  console.log("\nstage seconds per run: " + runs.map((k) => `${k} ${secs(s[k]).toFixed(0)}`).join(", "));
}' "${2:-$OUT/summary.json}"
  exit 0
fi
if [ "${1:-}" = summary ]; then
  export PATH=$U:$PATH # the unpacked node on the GPU machine
  summary
  exit 0
fi

DEVICE=${DEVICE:-cuda}
BUDGETS_PHI=${BUDGETS_PHI:-"393216 983040 3932160"}
BUDGETS_STORIES=${BUDGETS_STORIES:-"131072 262144 1048576"}
PARTS=${PARTS:-init hybrid mixer}
TEACHERS=${TEACHERS:-phi17m stories260K}
JOBS=${JOBS:-1}
if [ -z "${MOHAWK:-}" ]; then
  D=${DEVICE_DIR:-.device-paper}
  [ -f "$D/app.tar.xz" ] || D=${DEVICE_DIR:-.device}
  mkdir -p $U
  { [ -x $U/node ] || { xz -dc "$D/node.xz" >$U/node.part && chmod +x $U/node.part && mv $U/node.part $U/node; }; } && export PATH=$U:$PATH
  export LD_LIBRARY_PATH=/usr/local/cuda/lib64:${LD_LIBRARY_PATH:-}
  export MOHAWK_CACHE=$U/cache MOHAWK_CUDA_KERNELS=$root/src/backends/cuda/kernels NCCL_NVLS_ENABLE=0
  SHARED=$U/shared
  mkdir -p $SHARED
  if [ -f "$D/app.tar.xz" ]; then # scripts/paper-ablations.sh prepare
    xz -dc "$D/app.tar.xz" | tar -C $U -xf -
    xz -dc "$D/phi17m.tar.xz" | tar -C $SHARED -xf -
    MOHAWK="node $U/app/build/cli/main.js"
  else # scripts/real-teachers.sh prepare
    ln -sfn "$D/app/node_modules" node_modules
    xz -dc "$D/real/shared.tar.xz" | tar -C $SHARED -xf -
    MOHAWK="node $D/build/src/cli/main.js"
  fi
  nvidia-smi --query-gpu=name,compute_mode,memory.total --format=csv,noheader || true
  if [ "$JOBS" -gt 1 ] && nvidia-smi --query-gpu=compute_mode --format=csv,noheader 2>/dev/null | grep -qi exclusive; then
    log "the GPU is in an exclusive compute mode: one run at a time"
    JOBS=1
  fi
fi
SHARED=$(cd "${SHARED:-../shared/data}" && pwd)
mkdir -p "$W"
# a stopped script (timeout) stops its runs too
trap 'kill $(jobs -p) 2>/dev/null; exit 143' TERM INT

# one run: NAME CONFIG TEACHER DATA STAGES [more --set ...]; JOBS of them at once
run_one() {
  local name=$1 config=$2 teacher=$3 data=$4 stages=$5
  shift 5
  local t0=$SECONDS
  log "$name: start"
  if $MOHAWK distill --config "$config" --device "$DEVICE" --out "$W/$name" \
    --set "teacher=$teacher" --set "data.train=[$data]" --set "data.val=[]" \
    --set "stages=$stages" "$@" ${EXTRA_SET:-} --json >"$W/$name.json.tmp" 2>"$W/$name.log"; then
    mv "$W/$name.json.tmp" "$W/$name.json"
    log "$name: done in $((SECONDS - t0)) s: $(tail -1 "$W/$name.log")"
  else
    log "$name: FAILED after $((SECONDS - t0)) s"
    tail -20 "$W/$name.log"
  fi
}
one() {
  [ -f "$W/$1.json" ] && return 0
  if [ "$JOBS" -le 1 ]; then
    run_one "$@"
    return 0
  fi
  while [ "$(jobs -rp | wc -l)" -ge "$JOBS" ]; do wait -n || true; done
  run_one "$@" &
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

# runs in order of importance (init, hybrid, mixer), the largest budget first so that parallel
# runs pack well; the slowest (Toeplitz) last, where a timeout costs least
teacher_runs() {
  local t=$1 config=$2 teacher=$3 data=$4 budgets=$5 lr3=$6 layers=$7
  local desc
  desc=$(echo "$budgets" | tr ' ' '\n' | sort -rn | tr '\n' ' ')
  if [[ " $PARTS " == *" init "* ]]; then
    for T in $desc; do
      for init in ${INITS:-paper attention}; do
        for v in ${VARIANTS:-123 23 3}; do
          local scratch=false
          [ "$v" = 123 ] && [ "$init" = paper ] && scratch=true
          one "$t-$init-$v-$T" "$config" "$teacher" "$data" "$(stages_of $v "$T" "$lr3")" \
            --set "student.init=$init" --set "scratchBaseline=$scratch"
        done
      done
    done
  fi
  local T=${desc%% *}
  if [[ " $PARTS " == *" hybrid "* ]]; then
    local mid=$((layers / 2))
    for h in "1:[$mid]" "2i:[$((layers / 3)),$((2 * layers / 3))]" "2g:[$((mid - 1)),$mid]"; do
      one "$t-hybrid-${h%%:*}-$T" "$config" "$teacher" "$data" "$(stages_of 123 "$T" "$lr3")" \
        --set "student.init=paper" --set "student.attentionLayers=${h#*:}" --set "scratchBaseline=false"
    done
  fi
  if [[ " $PARTS " == *" mixer "* ]]; then
    for m in linear-attention toeplitz; do
      one "$t-mixer-$m-$T" "$config" "$teacher" "$data" "$(stages_of 123 "$T" "$lr3")" \
        --set "student.init=paper" --set "student.mixer=$m" --set "scratchBaseline=false"
    done
  fi
}

log "start: TEACHERS=$TEACHERS PARTS=$PARTS JOBS=$JOBS"
if [[ " $TEACHERS " == *" phi17m "* ]]; then
  data=$SHARED/data-phi17m # prepared by `prepare`; else tokenized here from the whole corpus
  if [ ! -f "$data/index.json" ]; then
    data=$W/data-phi17m
    [ -f "$data/index.json" ] || $MOHAWK data prepare --tokenizer "$SHARED/teachers/phi-17m" \
      --input "$SHARED/corpus/train" --val "$SHARED/corpus/val" --out "$data" >"$W/data-phi17m.log" 2>&1
  fi
  teacher_runs phi17m configs/phi-17m.yaml "$SHARED/teachers/phi-17m" "$data" "$BUDGETS_PHI" 5.0e-4 6
fi
if [[ " $TEACHERS " == *" stories260K "* ]]; then
  wait || true
  [ -f "$W/stories260K/config.json" ] || $MOHAWK convert llama2c --checkpoint "$SHARED/stories260K/stories260K.bin" \
    --tokenizer "$SHARED/stories260K/tok512.bin" --out "$W/stories260K"
  max=0
  for T in $BUDGETS_STORIES; do [ "$T" -gt "$max" ] && max=$T; done
  [ -f "$W/data-stories/index.json" ] || $MOHAWK sample-data --model "$W/stories260K" --tokens $((max * 2)) \
    --out "$W/data-stories" --batch 64 --seq-len 256 --device "$DEVICE" >"$W/sample-stories.log" 2>&1
  teacher_runs stories260K configs/stories260k.yaml "$W/stories260K" "$W/data-stories" "$BUDGETS_STORIES" 1.0e-3 5
fi
wait || true
summary
log "done: $OUT/summary.json"
