// Shared by the GPU benchmarks: open the CUDA backend, fill device buffers with random values
// (never zeros), the Phi-1.5-shaped teacher with random weights, time queued work with CUDA
// events, and print/save a table.

import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import type { AttentionParams, DeviceBuffer, DType } from '../src/backends/backend.js';
import { CudaBackend } from '../src/backends/cuda/index.js';
import { LlamaForCausalLM } from '../src/models/llama.js';
import { PhiForCausalLM } from '../src/models/phi.js';
import type { Module } from '../src/nn/module.js';
import { Random } from '../src/util/random.js';

export function openCuda(): CudaBackend {
  return new CudaBackend();
}

const rng = new Random(1);
let pool: Float32Array | null = null;

/** A device buffer of `n` normal(0, std) values (a 4M-value random pool repeated), cast to dtype. */
export function randomBuffer(gpu: CudaBackend, n: number, dtype: DType = 'f32', std = 1): DeviceBuffer {
  pool ??= rng.normals(1 << 22);
  const f = gpu.alloc('f32', n);
  for (let off = 0; off < n; off += pool.length) {
    const len = Math.min(pool.length, n - off);
    // shift the pool by the offset so repeats are not aligned copies
    const start = (off / pool.length) % 1024;
    const chunk = pool.subarray(start, start + len);
    gpu.write(f, std === 1 ? chunk : chunk.map((v) => v * std), off);
    if (chunk.length < len) gpu.write(f, pool.subarray(0, len - chunk.length), off + chunk.length);
  }
  if (dtype === 'f32') return f;
  const out = gpu.alloc(dtype, n);
  gpu.cast(f, out);
  gpu.free(f);
  return out;
}

/** Buffers that live until `release()`: random (`rnd`) or uninitialized (`buf`), f32. */
export function heldBuffers(gpu: CudaBackend) {
  const held: DeviceBuffer[] = [];
  const keep = (b: DeviceBuffer) => (held.push(b), b);
  return {
    rnd: (n: number, std = 1) => keep(randomBuffer(gpu, n, 'f32', std)),
    buf: (n: number) => keep(gpu.alloc('f32', n)),
    release: () => {
      for (const b of held.splice(0)) gpu.free(b);
    },
  };
}

/**
 * normal(0, std) parameters for m, norm weights left at 1: device-to-device copies out of one
 * random pool, each parameter from a different place in it (fast for billions of values).
 */
export function randomizeParameters(gpu: CudaBackend, m: Module, std = 0.02): void {
  const POOL = 1 << 24;
  // one pool per parameter dtype (a teacher held in bf16 has bf16 linear weights)
  const pools = new Map<DType, DeviceBuffer>();
  for (const [name, p] of m.namedParameters()) {
    if (name.endsWith('norm.weight') || name.endsWith('layernorm.weight')) continue;
    let pool = pools.get(p.dtype);
    if (!pool) pools.set(p.dtype, (pool = randomBuffer(gpu, POOL, p.dtype, std)));
    for (let off = 0; off < p.size; off += POOL) {
      const len = Math.min(POOL, p.size - off);
      const src = len <= POOL - 1024 ? p.size % 1024 : 0;
      gpu.copyStrided(pool, src, [1], p.buffer, off, [1], [len], false);
    }
  }
  for (const pool of pools.values()) gpu.free(pool);
}

/** The performance issue's teacher shape (Phi-1.5: d 2048, 32 heads, partial rotary 0.5, vocab 51200), random weights. */
export function phiTeacher(
  gpu: CudaBackend,
  o: {
    layers: number;
    d?: number;
    heads?: number;
    vocab?: number;
    maxPositions: number;
    linearDtype?: DType;
  },
): PhiForCausalLM {
  const d = o.d ?? 2048;
  const heads = o.heads ?? 32;
  const teacher = new PhiForCausalLM(
    {
      vocabSize: o.vocab ?? 51200,
      hiddenSize: d,
      intermediateSize: 4 * d,
      numLayers: o.layers,
      numHeads: heads,
      numKvHeads: heads,
      headDim: d / heads,
      rotaryDim: d / heads / 2,
      partialRotaryFactor: 0.5,
      ropeTheta: 10000,
      layerNormEps: 1e-5,
      hiddenAct: 'gelu_new',
      maxPositionEmbeddings: o.maxPositions,
      tieWordEmbeddings: false,
      bosTokenId: 0,
      eosTokenId: 0,
    },
    { deferInit: true, linearDtype: o.linearDtype },
  );
  randomizeParameters(gpu, teacher);
  return teacher;
}

/**
 * A Llama-3.2-1B-shaped teacher (d 2048, 16 layers, 32 query / 8 KV heads of 64, SwiGLU 8192,
 * vocab 128256, tied embeddings, rope theta 500000), random weights.
 */
export function llama3Teacher(
  gpu: CudaBackend,
  o: { layers: number; d?: number; vocab?: number; maxPositions: number; linearDtype?: DType },
): LlamaForCausalLM {
  const d = o.d ?? 2048;
  const teacher = new LlamaForCausalLM(
    {
      vocabSize: o.vocab ?? 128256,
      hiddenSize: d,
      intermediateSize: 4 * d,
      numLayers: o.layers,
      numHeads: d / 64,
      numKvHeads: d / 256,
      headDim: 64,
      rmsNormEps: 1e-5,
      ropeTheta: 500000,
      maxPositionEmbeddings: o.maxPositions,
      tieWordEmbeddings: true,
      attentionBias: false,
      mlpBias: false,
      bosTokenId: null,
      eosTokenId: null,
    },
    { deferInit: true, linearDtype: o.linearDtype },
  );
  randomizeParameters(gpu, teacher);
  return teacher;
}

/** Median device time (ms) of `reps` runs of fn after `warmup` runs, each timed with events. */
/** The teacher's attention at the performance issue's shape: B 4, T 2048, 32 heads of 64, causal. */
export const TEACHER_ATTENTION: AttentionParams = {
  batch: 4,
  tq: 2048,
  tk: 2048,
  heads: 32,
  kvHeads: 32,
  headDim: 64,
  scale: 1 / 8,
  causal: true,
};

export function timeMs(gpu: CudaBackend, fn: () => void, reps = 10, warmup = 2): number {
  for (let i = 0; i < warmup; i++) fn();
  gpu.synchronize();
  const times: number[] = [];
  for (let i = 0; i < reps; i++) times.push(gpu.time(fn));
  times.sort((a, b) => a - b);
  return times[Math.floor(times.length / 2)];
}

export interface Row {
  what: string;
  ms: number;
  /** e.g. "TFLOP/s" figures, with their unit */
  rate?: string;
  note?: string;
}

export function printTable(title: string, gpu: CudaBackend, rows: Row[], file: string): void {
  const lines = [
    `# ${title}: ${new Date().toISOString().slice(0, 10)}, ${gpu.describe()}, node ${process.version}`,
    '| work | ms | rate | note |',
    '| --- | ---: | ---: | --- |',
    ...rows.map(
      (r) =>
        `| ${r.what} | ${r.ms < 0.1 ? r.ms.toFixed(4) : r.ms.toFixed(3)} | ${r.rate ?? ''} | ${r.note ?? ''} |`,
    ),
  ];
  console.log(lines.join('\n'));
  const out = process.env.BENCH_OUT;
  if (out) {
    writeFileSync(
      join(out, `${file}.json`),
      JSON.stringify({ title, device: gpu.describe(), rows }, null, 2),
    );
  }
}
