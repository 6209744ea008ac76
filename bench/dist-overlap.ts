// The gradient all-reduce overlapped with the backward pass against the same buckets sent after
// it, on NCCL: one training step's forward + backward of a Phi-shaped model (random weights,
// cross-entropy, bf16 autocast) timed three ways:
//   none      no communication (the single-GPU step)
//   after     the buckets all-reduced after the backward (allReduceGrads: each bucket copied into
//             one flat buffer and back; what mohawk did before)
//   overlap   the buckets sent on NCCL's own stream as the backward finishes their gradients, each
//             a group of in-place all-reduces (GradReducer, what the trainer does now)
// At one rank NCCL's all-reduce moves nothing, so the difference to `none` is what the buckets
// cost (copies, launches, events); the gain of the overlap itself needs several GPUs:
//   node bench/dist-overlap.js                    one GPU (`scripts/gpu-check.sh dist-overlap`)
//   node bench/dist-overlap.js --gpus 8           one process per GPU, rank 0 prints
// Options: --layers 8 --d 2048 --vocab 51200 --batch 4 --seq 1024 --steps 6 --bucket-mb 25
// (BENCH_OUT=dir also writes dist-overlap.{md,json})

import { spawn } from 'node:child_process';
import net from 'node:net';
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';
import { CudaBackend } from '../src/backends/cuda/index.js';
import { NcclCollective, ncclUniqueId } from '../src/backends/cuda/nccl.js';
import { ProcessGroup, readDistEnv } from '../src/backends/group.js';
import { crossEntropy, scope, setAutocast, setBackend, tensor } from '../src/tensor/index.js';
import { allReduceGrads, GradReducer, openCollective } from '../src/train/distributed.js';
import type { NamedParams } from '../src/train/params.js';
import { Random } from '../src/util/random.js';
import { phiTeacher } from './gpu-util.js';

const { values } = parseArgs({
  options: {
    gpus: { type: 'string', default: '1' },
    layers: { type: 'string', default: '8' },
    d: { type: 'string', default: '2048' },
    vocab: { type: 'string', default: '51200' },
    batch: { type: 'string', default: '4' },
    seq: { type: 'string', default: '1024' },
    steps: { type: 'string', default: '6' },
    'bucket-mb': { type: 'string', default: '25' },
  },
});

const gpus = Number(values.gpus);
const env = readDistEnv();
if (gpus > 1 && !env) {
  // the launcher: one child per GPU with torchrun's variables; rank 0's output is the result
  const port = await new Promise<number>((resolve) => {
    const s = net.createServer().listen(0, '127.0.0.1', () => {
      const p = (s.address() as net.AddressInfo).port;
      s.close(() => resolve(p));
    });
  });
  const me = fileURLToPath(import.meta.url);
  const codes = await Promise.all(
    Array.from(
      { length: gpus },
      (_, r) =>
        new Promise<number>((resolve) => {
          const p = spawn(process.execPath, [...process.execArgv, me, ...process.argv.slice(2)], {
            env: {
              ...process.env,
              RANK: String(r),
              LOCAL_RANK: String(r),
              WORLD_SIZE: String(gpus),
              MASTER_ADDR: '127.0.0.1',
              MASTER_PORT: String(port),
            },
            stdio: ['ignore', r === 0 ? 'inherit' : 'ignore', 'inherit'],
          });
          p.on('exit', (code) => resolve(code ?? 1));
        }),
    ),
  );
  process.exit(codes.some((c) => c !== 0) ? 1 : 0);
}

const gpu = new CudaBackend(env ? { device: env.localRank } : {});
setBackend(gpu);
const c = env
  ? await openCollective(env, gpu)
  : new NcclCollective(
      gpu,
      ProcessGroup.join({
        rank: 0,
        worldSize: 1,
        masterAddr: '127.0.0.1',
        masterPort: 0,
        blob: ncclUniqueId(),
      }),
    );
const root = c.rank === 0;
const L = Number(values.layers);
const D = Number(values.d);
const V = Number(values.vocab);
const B = Number(values.batch);
const T = Number(values.seq);
const steps = Number(values.steps);
const bucketBytes = Number(values['bucket-mb']) * 2 ** 20;
await gpu.warmup({ attentionHeadDims: [D / 32] });
setAutocast('bf16');

const model = phiTeacher(gpu, { layers: L, d: D, vocab: V, maxPositions: T });
model.setTrainable(() => true, true);
const params: NamedParams = model.namedParameters();
const nParams = params.reduce((s, [, p]) => s + p.size, 0);
const rng = new Random(5 + c.rank);
const ids = () =>
  tensor(
    Int32Array.from({ length: B * T }, () => rng.int(0, V)),
    [B, T],
    'i32',
  );
const backward = (): void =>
  scope(() => {
    const logits = model.forward(ids()).logits;
    crossEntropy(logits, ids()).backward(undefined, { freeGraph: true });
  });
const reducer = new GradReducer(c, params, bucketBytes);
const modes = {
  none: () => backward(),
  after: () => {
    backward();
    allReduceGrads(
      c,
      params,
      params.map(() => true),
      bucketBytes,
    );
  },
  overlap: () => {
    reducer.during(backward);
    reducer.finish();
  },
};

const rows: { mode: string; ms: number; tokensPerS: number; overNone: number }[] = [];
for (const [mode, run] of Object.entries(modes)) {
  const times: number[] = [];
  for (let i = 0; i < steps + 1; i++) {
    c.barrier();
    const s = performance.now();
    run();
    gpu.synchronize();
    if (i > 0) times.push(performance.now() - s); // the first: warm-up (and the reducer's plan)
    model.zeroGrad();
  }
  times.sort((a, b) => a - b);
  const ms = times[times.length >> 1];
  rows.push({ mode, ms, tokensPerS: (c.worldSize * B * T) / (ms / 1000), overNone: 0 });
}
for (const r of rows) r.overNone = r.ms / rows[0].ms - 1;
const lines = [
  `Phi-shaped ${L} x d${D}, vocab ${V} (${(nParams / 1e6).toFixed(0)}M parameters, ${reducer.buckets.length} buckets of <= ${values['bucket-mb']} MiB), ` +
    `${B} x ${T} tokens per rank, ${c.worldSize} rank(s) on ${gpu.describe()}, bf16 autocast, median of ${steps} steps`,
  '',
  '| gradients | ms per step | tokens/s (all ranks) | vs none |',
  '| --- | ---: | ---: | ---: |',
  ...rows.map(
    (r) =>
      `| ${r.mode} | ${r.ms.toFixed(1)} | ${r.tokensPerS.toFixed(0)} | ${r.mode === 'none' ? '' : `${(100 * r.overNone).toFixed(1)}%`} |`,
  ),
];
if (root) {
  console.log(lines.join('\n'));
  console.log(JSON.stringify(rows));
  if (process.env.BENCH_OUT) {
    writeFileSync(join(process.env.BENCH_OUT, 'dist-overlap.md'), lines.join('\n') + '\n');
    writeFileSync(join(process.env.BENCH_OUT, 'dist-overlap.json'), JSON.stringify(rows, null, 2) + '\n');
  }
}
c.close();
