// Decoding speed at the performance issue's shapes: the Phi-Mamba 1.5B student (recurrent state,
// constant memory per token) against the Phi-1.5-shaped teacher (KV cache), batch 1 at context
// 2k, 8k and 32k and batch 64 at 2k. Random weights. Time per new token after a prefill, greedy
// tokens fed back. The student decodes from the same prefill in up to four ways (--student):
// its step eager or replayed as one CUDA graph (generate's default), the greedy choice on the
// host from the logits read back (as a sampler needs) or on the device (B numbers read back);
// all must give the same greedy tokens (last column). The teacher (a growing KV cache) is eager.
// Run: node --import tsx bench/decode.ts [--layers N] [--contexts 2048,8192,32768] [--tokens 16]
//      [--student eager-host,graph-host,graph-device,eager-device] [--teacher on|off]
//      (BENCH_OUT=dir also writes decode.{md,json}, or decode-NAME.{md,json} with --name NAME)
//      --device cpu --d 64 --heads 4 --vocab 500: a small smoke run of the same code on the CPU

import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { parseArgs } from 'node:util';
import type { Backend } from '../src/backends/backend.js';
import { CpuBackend } from '../src/backends/cpu/index.js';
import { CudaBackend } from '../src/backends/cuda/index.js';
import { studentConfigFor } from '../src/distill/transfer.js';
import { Decoder } from '../src/generate/decode-graph.js';
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
    student: { type: 'string', default: 'eager-host,graph-host,graph-device,eager-device' },
    teacher: { type: 'string', default: 'on' },
    device: { type: 'string', default: 'cuda' },
    /** suffix of the result files: decode-NAME.{md,json} */
    name: { type: 'string' },
    d: { type: 'string', default: '2048' },
    heads: { type: 'string', default: '32' },
    vocab: { type: 'string', default: '51200' },
  },
});
/** the student's runs: the step as a graph or eager, the greedy choice on the host (logits read) or the device */
const studentModes = values.student!.split(',').map((m) => {
  const [step, sampler] = m.split('-');
  if (!['graph', 'eager'].includes(step) || !['host', 'device'].includes(sampler))
    throw new Error(`decode bench: --student takes graph|eager-host|device items, got "${m}"`);
  return { graph: step === 'graph', device: sampler === 'device' };
});
const L = Number(values.layers);
const D = Number(values.d);
const H = Number(values.heads);
const V = Number(values.vocab);
const contexts = values.contexts!.split(',').map(Number);
const newTokens = Number(values.tokens);
const cuda = values.device === 'cuda' ? new CudaBackend() : null;
const gpu: Backend = cuda ?? new CpuBackend();
setBackend(gpu);
if (cuda) {
  await cuda.warmup({ attentionHeadDims: [D / H] });
  setAutocast('bf16');
}

const maxCtx = Math.max(...contexts) + newTokens + 3;
// (the random-weight helpers take the CUDA backend; they use only Backend methods, so the CPU
// smoke run passes its backend)
const dev = gpu as CudaBackend;
const teacher = phiTeacher(dev, { layers: L, d: D, heads: H, vocab: V, maxPositions: maxCtx });
const student = new StudentLM(studentConfigFor(teacher, { chunkSize: 128 }), { deferInit: true });
randomizeParameters(dev, student);
gpu.synchronize();

interface DecodeRun {
  ms: number;
  memGiB: number;
  /** greedy tokens per step (batch entries joined) */
  tokens: string[];
  graph: boolean;
  nodes: number;
  /** why the run was eager when a graph was asked for */
  reason: string | null;
  /** an eager run on CUDA: the kernels of one more step, timed one by one (the graph's floor) */
  profile: { name: string; calls: number; ms: number }[] | null;
}

/** the index of the largest of each batch row of (B, V) logits */
function greedy(logits: Float32Array, batch: number): number[] {
  const v = logits.length / batch;
  return Array.from({ length: batch }, (_, b) => {
    let best = 0;
    for (let i = 1; i < v; i++) if (logits[b * v + i] > logits[b * v + best]) best = i;
    return best;
  });
}

function decodeRun(model: CausalLM, batch: number, ctx: number, graph: boolean, device: boolean): DecodeRun {
  const rng = new Random(3); // the same prompt for every mode
  // as generate does under autocast: the model's weights rounded to bf16 once, not on every
  // token (the copies count in the peak)
  const casts = cuda ? castParameters(model.parameters(), 'bf16') : null;
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
          // one token per sequence per step, the greedy choice fed back; the step includes the
          // host read of the logits a sampler needs (the argmax on the host is not timed), or
          // the argmax on the device and the read of B numbers
          const decoder = new Decoder(model, cache, batch, { graph, output: device ? 'greedy' : 'logits' });
          try {
            let next = Array.from({ length: batch }, () => rng.int(0, V));
            const tokens: string[] = [];
            const warm = 2; // an eager warm-up step, then the capture and its first replay
            let ms = 0;
            for (let i = 0; i < warm + newTokens; i++) {
              const t0 = performance.now();
              if (device) {
                next = decoder.next(next);
                if (i >= warm) ms += performance.now() - t0;
              } else {
                const logits = decoder.step(next);
                if (i >= warm) ms += performance.now() - t0;
                next = greedy(logits, batch);
              }
              tokens.push(next.join(' '));
            }
            // one more eager step with every kernel timed: the device time a graph cannot go below
            const profile =
              cuda && decoder.mode !== 'graph'
                ? cuda.profile(() => (device ? decoder.next(next) : decoder.step(next))).kernels
                : null;
            return {
              profile,
              ms: ms / newTokens,
              memGiB: gpu.memoryStats().peakBytes / 2 ** 30,
              tokens,
              graph: decoder.mode === 'graph',
              nodes: decoder.nodes,
              reason: graph ? decoder.reason : null,
            };
          } finally {
            decoder.dispose();
          }
        } finally {
          cache.dispose();
        }
      }),
    );
  } finally {
    casts?.dispose();
  }
}

const cases: [number, number][] = [
  ...contexts.map((c) => [1, c] as [number, number]),
  [Number(values['batch-large']), 2048],
];
const rows: string[] = [];
const json: unknown[] = [];
const runs: [string, CausalLM, boolean, boolean][] = [
  ...studentModes.map(
    (m) => ['student (recurrent)', student, m.graph, m.device] as [string, CausalLM, boolean, boolean],
  ),
  ...(values.teacher === 'on'
    ? [['teacher (KV cache)', teacher, false, false] as [string, CausalLM, boolean, boolean]]
    : []),
];
for (const [batch, ctx] of cases) {
  let reference: string[] | null = null; // the student's greedy tokens of the first mode
  for (const [name, model, graph, device] of runs) {
    let cell: string;
    const sampler = device ? 'argmax on the device' : 'logits to the host';
    try {
      const r = decodeRun(model, batch, ctx, graph, device);
      let same = '';
      if (model === student) {
        if (!reference) reference = r.tokens;
        else {
          const agree = r.tokens.filter((t, i) => t === reference![i]).length;
          same = agree === r.tokens.length ? 'yes' : `no (${agree}/${r.tokens.length} steps)`;
        }
      }
      const mode = r.graph
        ? `graph (${r.nodes} nodes)`
        : r.reason
          ? `eager: ${r.reason.slice(0, 60)}`
          : 'eager';
      cell =
        `| ${name} | ${mode} | ${sampler} | ${batch} | ${ctx} | ${r.ms.toFixed(2)} | ${((batch * 1000) / r.ms).toFixed(0)} | ` +
        `${r.memGiB.toFixed(1)} | ${same} |`;
      json.push({
        model: name,
        graph: r.graph,
        nodes: r.nodes,
        sampler: device ? 'device' : 'host',
        batch,
        ctx,
        ms: r.ms,
        tokensPerSecond: (batch * 1000) / r.ms,
        memGiB: r.memGiB,
        sameTokens: same === '' ? null : same === 'yes',
        reason: r.reason,
        profile: r.profile,
      });
    } catch (e) {
      cell = `| ${name} | ${graph ? 'graph' : 'eager'} | ${sampler} | ${batch} | ${ctx} | failed: ${(e as Error).message.split('\n')[0].slice(0, 80)} | | | |`;
    }
    rows.push(cell);
    console.log(cell);
  }
}
// where an eager student step's device time goes (the first eager run of each case)
const profiles: string[] = [];
for (const j of json as { model: string; graph: boolean; batch: number; ctx: number; sampler: string }[]) {
  const p = (j as unknown as { profile?: DecodeRun['profile'] }).profile;
  if (
    !p ||
    j.model !== 'student (recurrent)' ||
    profiles.some((l) => l.includes(`batch ${j.batch}, context ${j.ctx}`))
  )
    continue;
  const total = p.reduce((a, k) => a + k.ms, 0);
  const calls = p.reduce((a, k) => a + k.calls, 0);
  profiles.push(
    '',
    `profile of one eager student step (batch ${j.batch}, context ${j.ctx}, greedy on the ${j.sampler}): ` +
      `${calls} kernels, ${total.toFixed(3)} ms of kernel time (events around every launch)`,
    '| kernel | calls | ms |',
    '| --- | ---: | ---: |',
    ...p.slice(0, 12).map((k) => `| ${k.name} | ${k.calls} | ${k.ms.toFixed(3)} |`),
  );
}
const lines = [
  `# decode: ${new Date().toISOString().slice(0, 10)}, ${gpu.describe()}, ${L} layers, d ${D}${cuda ? ', bf16 autocast' : ''}`,
  '| model | step | greedy choice | batch | context | ms per step | tokens/s | peak GiB during decode | same greedy tokens as the first student row |',
  '| --- | --- | --- | ---: | ---: | ---: | ---: | ---: | --- |',
  ...rows,
  ...profiles,
];
console.log(lines.join('\n'));
if (process.env.BENCH_OUT) {
  const file = `decode${values.name ? `-${values.name}` : ''}`;
  writeFileSync(join(process.env.BENCH_OUT, `${file}.md`), lines.join('\n') + '\n');
  writeFileSync(join(process.env.BENCH_OUT, `${file}.json`), JSON.stringify(json, null, 2));
}
