#!/usr/bin/env bash
# The figures of docs/results.md on the GPU machine: both real teachers (phi-17m and the converted
# stories260K) on the six zero-shot tasks, full sets, with `mohawk eval --device cuda`.
#
#   scripts/eval-figures.sh prepare            here: a prepared device folder (see gpu-check.sh)
#                                              plus the teachers and the task files, compressed
#   scripts/eval-figures.sh run [MODEL:TASKS]  on the GPU machine (carry .device-eval); default
#                                              every task for both models; e.g. phi:hellaswag
# Results: <model>-<task>.json (harness-shaped), .samples.jsonl and .log in /tmp/eval-figures,
# packed as $OUT/eval-figures.tar.xz (the device returns a few files, not dozens).
set -uo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
export DEVICE_DIR=${DEVICE_DIR:-.device-eval}
D=$DEVICE_DIR
# teachers/phi-17m, stories260K and eval/ from ../shared/data, packed here, unpacked there
DATA_TAR=${DATA_TAR:-$D/eval-data.tar.xz}

if [ "${1:-}" = prepare ]; then
  set -e
  bash scripts/gpu-check.sh prepare >/dev/null
  rm -rf "$D/fixtures" "$D/app/node_modules/koffi/doc"
  tar -C ../shared/data -cf - teachers/phi-17m stories260K eval | xz -T2 -6 >"$DATA_TAR"
  du -sh "$D" "$DATA_TAR"
  exit 0
fi
[ "${1:-}" = run ] || { echo "usage: scripts/eval-figures.sh prepare | run [MODEL:TASKS]..." >&2; exit 2; }
shift

OUT=${OUT:-/tmp/eval-out}
R=/tmp/eval-figures
mkdir -p "$OUT" "$R"
xz -dc "$D/node.xz" >/tmp/node && chmod +x /tmp/node && export PATH=/tmp:$PATH
ln -sfn "$D/app/node_modules" node_modules
export LD_LIBRARY_PATH=/usr/local/cuda/lib64:${LD_LIBRARY_PATH:-}
export MOHAWK_CACHE=/tmp/mohawk-cache MOHAWK_CUDA_KERNELS=$root/src/backends/cuda/kernels
DATA=/tmp/eval-data
mkdir -p $DATA && xz -dc "$DATA_TAR" | tar -C $DATA -xf -
MOHAWK="node $D/build/src/cli/main.js"
$MOHAWK convert llama2c --checkpoint $DATA/stories260K/stories260K.bin \
  --tokenizer $DATA/stories260K/tok512.model --out $DATA/stories260K-hf >"$R/convert.log" 2>&1 ||
  { cat "$R/convert.log"; exit 1; }
declare -A dir=([phi]=$DATA/teachers/phi-17m [s260]=$DATA/stories260K-hf)
all=lambada_openai,hellaswag,piqa,arc_easy,arc_challenge,winogrande
jobs=("$@")
[ ${#jobs[@]} -eq 0 ] && jobs=("phi:$all" "s260:$all")
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader >"$R/machine.txt"
status=0
for job in "${jobs[@]}"; do
  m=${job%%:*}
  IFS=, read -ra tasks <<<"${job#*:}"
  for task in "${tasks[@]}"; do
    t0=$(date +%s)
    $MOHAWK eval --model "${dir[$m]}" --tasks "$task" --data-dir $DATA/eval --device cuda \
      --batch-size "${BATCH:-64}" --log-samples "$R/$m-$task.samples.jsonl" --json \
      >"$R/$m-$task.json" 2>"$R/$m-$task.log"
    rc=$?
    [ $rc -eq 0 ] || status=1
    echo "$m $task: $(($(date +%s) - t0)) s, exit $rc"
    tail -c 200 "$R/$m-$task.log" | tail -1
  done
done
tar -C "$R" -cJf "$OUT/eval-figures.tar.xz" .
exit $status
