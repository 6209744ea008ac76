// Decoding speed at the performance issue's shapes: the Phi-Mamba 1.5B student (recurrent state,
// constant memory per token) against the Phi-1.5-shaped teacher (KV cache), batch 1 at context
// 2k, 8k and 32k and batch 64 at 2k. Random weights. Time per new token after a prefill.
// Run: node --import tsx bench/decode.ts [--layers N] [--contexts 2048,8192,32768] [--tokens 16]
//      (BENCH_OUT=dir also writes decode.{md,json})

import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { parseArgs } from 'node:util';
import { CudaBackend } from '../src/backends/cuda/index.js';
import { studentConfigFor } from '../src/distill/transfer.js';
import { StudentLM } from '../src/models/phi-mamba.js';
import type { CausalLM } from '../src/models/types.js';
import {
  castParameters,
  noGrad,
  scope,
  setAutocast,
  setBackend,
  tensor,
  withCastParameters,
} from '../src/tensor/index.js';
import { Random } from '../src/util/random.js';
import { phiTeacher, randomizeParameters } from './gpu-util.js';

const { values } = parseArgs({
  options: {
    layers: { type: 'string', default: '24' },
    contexts: { type: 'string', default: '2048,8192,32768' },
    tokens: { type: 'string', default: '16' },
    'batch-large': { type: 'string', default: '64' },
  },
});
const L = Number(values.layers);
const D = 2048;
const H = 32;
const V = 51200;
const contexts = values.contexts!.split(',').map(Number);
const newTokens = Number(values.tokens);
const gpu = new CudaBackend();
setBackend(gpu);
await gpu.warmup({ attentionHeadDims: [D / H] });
setAutocast('bf16');

const maxCtx = Math.max(...contexts) + newTokens + 1;
const teacher = phiTeacher(gpu, { layers: L, d: D, heads: H, vocab: V, maxPositions: maxCtx });
const student = new StudentLM(studentConfigFor(teacher, { chunkSize: 128 }), { deferInit: true });
randomizeParameters(gpu, student);
gpu.synchronize();

const rng = new Random(3);
function decodeMs(model: CausalLM, batch: number, ctx: number): { ms: number; memGiB: number } {
  // as generate does under autocast: the model's weights rounded to bf16 once, not on every
  // token (the copies count in the peak)
  const casts = castParameters(model.parameters(), 'bf16');
  try {
    return withCastParameters(casts, () =>
      noGrad(() => {
        const cache = model.createCache(batch);
        try {
          // prefill in pieces of at most 16384 tokens over the batch (8192 per sequence at most),
          // logits of the last position only; a student cache continued by a piece runs the
          // chunked scan from its state, a KV cache appends
          const piece = Math.max(1, Math.min(8192, Math.floor(16384 / batch)));
          for (let done = 0; done < ctx;) {
            const n = Math.min(piece, ctx - done);
            scope(() => {
              const ids = tensor(
                Int32Array.from({ length: batch * n }, () => rng.int(0, V)),
                [batch, n],
                'i32',
              );
              model.forward(ids, { cache, lastLogitsOnly: true });
            });
            done += n;
          }
          gpu.synchronize();
          gpu.resetPeak();
          const step = () =>
            scope(() => {
              const ids = tensor(
                Int32Array.from({ length: batch }, () => rng.int(0, V)),
                [batch, 1],
                'i32',
              );
              model.forward(ids, { cache }).logits.read(); // the host read a sampler needs
            });
          step();
          const t0 = performance.now();
          for (let i = 0; i < newTokens; i++) step();
          const ms = (performance.now() - t0) / newTokens;
          return { ms, memGiB: gpu.memoryStats().peakBytes / 2 ** 30 };
        } finally {
          cache.dispose();
        }
      }),
    );
  } finally {
    casts.dispose();
  }
}

const cases: [number, number][] = [
  ...contexts.map((c) => [1, c] as [number, number]),
  [Number(values['batch-large']), 2048],
];
const rows: string[] = [];
const json: unknown[] = [];
for (const [batch, ctx] of cases) {
  for (const [name, model] of [
    ['student (recurrent)', student],
    ['teacher (KV cache)', teacher],
  ] as const) {
    let cell: string;
    try {
      const r = decodeMs(model, batch, ctx);
      cell = `| ${name} | ${batch} | ${ctx} | ${r.ms.toFixed(2)} | ${((batch * 1000) / r.ms).toFixed(0)} | ${r.memGiB.toFixed(1)} |`;
      json.push({ model: name, batch, ctx, ...r });
    } catch (e) {
      cell = `| ${name} | ${batch} | ${ctx} | failed: ${(e as Error).message.split('\n')[0].slice(0, 80)} | | |`;
    }
    rows.push(cell);
    console.log(cell);
  }
}
const lines = [
  `# decode: ${new Date().toISOString().slice(0, 10)}, ${gpu.describe()}, ${L} layers, d ${D}, bf16 autocast`,
  '| model | batch | context | ms per step | tokens/s | peak GiB during decode |',
  '| --- | ---: | ---: | ---: | ---: | ---: |',
  ...rows,
];
console.log(lines.join('\n'));
if (process.env.BENCH_OUT) {
  writeFileSync(join(process.env.BENCH_OUT, 'decode.md'), lines.join('\n') + '\n');
  writeFileSync(join(process.env.BENCH_OUT, 'decode.json'), JSON.stringify(json, null, 2));
}
