#!/usr/bin/env bash
# The whole GPU check in one device call: the CUDA test suite against the CPU backend, then the
# GPU benchmarks; logs and results under $OUT.
#
#   scripts/gpu-check.sh prepare   here: compile TypeScript to .device/build, and put a Node binary
#                                  and the production node_modules in .device (git-ignored)
#   scripts/gpu-check.sh [PART...] on the GPU machine (carry .device): unpack node, then the parts
#                                  (tests:PATTERN: only the CUDA unit tests whose names match, in
#                                  cuda.test, cuda-models, cuda-distill and cuda-nccl)
#                                  (default: tests gpu-gemm gpu-ops stage3-step; any subset, in order;
#                                  a benchmark with arguments: NAME@ARG,ARG,... e.g.
#                                  stage3-step@--model,llama3,--fused,--name,llama3-fused)
#
# The device machine has CUDA but no Node.js and no devDependencies, hence the prepared .device.
# DEVICE_DIR=.device-x (git-ignored) keeps a second prepared copy apart, e.g. for two engineers;
# give the same DEVICE_DIR on the GPU machine and carry that folder.
set -uo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
D=${DEVICE_DIR:-.device}

if [ "${1:-}" = prepare ]; then
  set -e
  rm -rf $D/build
  # other engineers' files in progress may not typecheck; tsc still writes the build
  npx tsc -p tsconfig.json --outDir $D/build --sourceMap false --declaration false ||
    echo "gpu-check: tsc reported errors (see above); the build was written anyway"
  mkdir -p $D/build/src/backends/cuda/kernels
  cp src/backends/cuda/kernels/*.cu src/backends/cuda/kernels/*.cuh $D/build/src/backends/cuda/kernels/
  # the reference checkpoints for the whole-model test (../shared does not travel)
  rm -rf $D/fixtures && cp -r ../shared/fixtures/reference $D/fixtures
  # ignore-scripts: the project's own "prepare" (a tsc build) cannot run there; koffi ships prebuilt
  if [ "$D" = .device ] || [ ! -d .device/app ]; then
    npm_config_ignore_scripts=true bash ../shared/tools/device-node.sh >/dev/null
  fi
  if [ "$D" != .device ]; then
    rm -rf "$D/app" && cp -r .device/node.xz .device/app "$D/"
    grep -qxF "/$D/" .git/info/exclude || echo "/$D/" >>.git/info/exclude
  fi
  # the GPU check needs koffi and yaml at most; the text datasets stay here
  rm -rf $D/app/node_modules/@stdlib
  du -sh $D $D/node.xz $D/app/node_modules $D/build
  exit 0
fi

OUT=${OUT:-/tmp/gpu-check}
mkdir -p "$OUT"
{ [ -x /tmp/node ] || { xz -dc $D/node.xz >/tmp/node.part && chmod +x /tmp/node.part && mv /tmp/node.part /tmp/node; }; } && export PATH=/tmp:$PATH
ln -sfn $D/app/node_modules node_modules
export LD_LIBRARY_PATH=/usr/local/cuda/lib64:${LD_LIBRARY_PATH:-}
export MOHAWK_CACHE=/tmp/mohawk-cache
export MOHAWK_CUDA_KERNELS=$root/src/backends/cuda/kernels
export MOHAWK_FIXTURES=$root/$D/fixtures
export NCCL_NVLS_ENABLE=0

{
  date -u
  node --version
  nvidia-smi --query-gpu=name,driver_version,memory.total,memory.used,clocks.sm,clocks.max.sm --format=csv
  git log --oneline -1 2>/dev/null || true
} >"$OUT/machine.txt" 2>&1
cat "$OUT/machine.txt"

status=0
parts=("$@")
[ ${#parts[@]} -eq 0 ] && parts=(tests gpu-gemm gpu-ops stage3-step)
for part in "${parts[@]}"; do
  if [ "$part" = tests ]; then
    echo "== CUDA tests (every launch synchronized, so a fault names its kernel)"
    t0=$(date +%s)
    st=0
    MOHAWK_REQUIRE_CUDA=1 MOHAWK_CUDA_SYNC=1 node --test --test-reporter=spec --test-concurrency=1 \
      $D/build/test/cuda.test.js $D/build/test/cuda-models.test.js $D/build/test/cuda-distill.test.js \
      $D/build/test/cuda-nccl.test.js \
      >"$OUT/tests.log" 2>&1 || st=1
    # the embedding's out-of-range check (reliability.test.ts: a child process on the GPU)
    MOHAWK_REQUIRE_CUDA=1 node --test --test-reporter=spec --test-name-pattern="cuda embedding" \
      $D/build/test/reliability.test.js >>"$OUT/tests.log" 2>&1 || st=1
    tail -n 40 "$OUT/tests.log"
    echo "tests: exit $st, $(($(date +%s) - t0)) s"
    if [ $st -ne 0 ]; then
      status=1
      if [ -z "${NO_SANITIZER:-}" ] && command -v compute-sanitizer >/dev/null; then
        echo "== tests failed: memcheck run (first 150 s)"
        MOHAWK_REQUIRE_CUDA=1 timeout 150 compute-sanitizer --tool memcheck --print-limit 20 \
          node --test --test-reporter=spec --test-concurrency=1 $D/build/test/cuda.test.js \
          $D/build/test/cuda-models.test.js >"$OUT/sanitizer.log" 2>&1
        grep -m 30 -E "Invalid|Error|ERROR|not ok" "$OUT/sanitizer.log"
      fi
    fi
  elif [ "${part%%:*}" = tests ]; then
    # tests:PATTERN runs only the CUDA unit tests whose names match PATTERN (a regular expression)
    echo "== CUDA tests matching ${part#tests:}"
    MOHAWK_REQUIRE_CUDA=1 MOHAWK_CUDA_SYNC=1 node --test --test-reporter=spec --test-concurrency=1 \
      --test-name-pattern="${part#tests:}" $D/build/test/cuda.test.js $D/build/test/cuda-models.test.js \
      $D/build/test/cuda-distill.test.js $D/build/test/cuda-nccl.test.js \
      >"$OUT/tests-pattern.log" 2>&1 || status=1
    tail -n 60 "$OUT/tests-pattern.log"
  else
    bench=${part%%@*}
    args=()
    log=$bench
    if [ "$bench" != "$part" ]; then
      IFS=, read -r -a args <<<"${part#*@}"
      log=$bench-$(echo "${part#*@}" | tr -c 'A-Za-z0-9\n' '-' | sed 's/--*/-/g; s/^-//; s/-$//')
    fi
    echo "== bench $bench ${args[*]}"
    t0=$(date +%s)
    BENCH_OUT=$OUT timeout "${BENCH_TIMEOUT:-300}" node "$D/build/bench/$bench.js" "${args[@]}" >"$OUT/$log.log" 2>&1 || status=1
    cat "$OUT/$log.log"
    echo "$part: $(($(date +%s) - t0)) s"
  fi
done
echo "gpu-check: exit $status"
exit $status
