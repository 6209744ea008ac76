// Decoding's matrix products: x (m, k) bf16 times a bf16 Linear weight (n, k) transposed into f32,
// with the bias, on the shapes of the 1.5B student (d_model 2048: out_proj 2048 x 2048, in_proj
// 8224 x 2048, fc1 8192 x 2048, fc2 2048 x 8192, lm_head 51200 x 2048), m = 1, 4, 8 rows, through
// kernels/gemv.cu and through cuBLASLt (the gemv switch off), as weight bandwidth (the weight's
// bytes over the time; the H200 streams about 4.8 TB/s). Each timed product reads a different copy
// of the weight (512 MiB in all), so the 50 MB L2 cannot hold it between products, as in decoding.
// The products are captured as one CUDA graph and replayed (as the decode step runs them), so the
// host's launch cost (about 5 us) does not hide the small products' device time.
// Then gemv.cu's compile-time shapes (gemvTuning: warps, rows, unroll, split-K target, L2 prefetch hint) are swept
// at m = 1, and the one with the least time for a whole decode step's products is printed.
// Run: node --import tsx bench/gpu-gemv.ts [--sweep on|off]  (BENCH_OUT=dir also writes gpu-gemv.json)

import { parseArgs } from 'node:util';
import type { DeviceBuffer, MatmulParams } from '../src/backends/backend.js';
import { gemvSwitch, gemvTuning } from '../src/backends/cuda/gemv.js';
import { openCuda, printTable, randomBuffer, timeMs, type Row } from './gpu-util.js';

const { values } = parseArgs({ options: { sweep: { type: 'string', default: 'on' } } });
const gpu = openCuda();
const rows: Row[] = [];
/** [n, k, uses per decode step of the 24-layer student] */
const shapes: [number, number, number, string][] = [
  [2048, 2048, 24, 'out_proj'],
  [8224, 2048, 24, 'in_proj'],
  [8192, 2048, 24, 'fc1'],
  [2048, 8192, 24, 'fc2'],
  [51200, 2048, 1, 'lm_head'],
];
const on = gemvSwitch.enabled;
// every row count through gemv.cu here, also those the backend sends to cuBLASLt
gemvSwitch.maxRows = 8;

interface Shape {
  n: number;
  k: number;
  ws: DeviceBuffer[];
  bias: DeviceBuffer;
}

function prepare(n: number, k: number): Shape {
  const bytes = n * k * 2;
  const copies = Math.max(2, Math.ceil((512 << 20) / bytes));
  // one random weight, copied on the device (host-side random data for 512 MiB would be slow)
  const w0 = randomBuffer(gpu, n * k, 'bf16', 0.02);
  const ws = [w0];
  for (let i = 1; i < copies; i++) {
    const w = gpu.alloc('bf16', n * k);
    gpu.copyStrided(w0, 0, [1], w, 0, [1], [n * k], false);
    ws.push(w);
  }
  return { n, k, ws, bias: randomBuffer(gpu, n) };
}

function release(s: Shape): void {
  for (const w of s.ws) gpu.free(w);
  gpu.free(s.bias);
}

/** ms per product of m rows with the shape's weight, through a graph of one product per copy */
function timeProducts(s: Shape, m: number): number {
  const x = randomBuffer(gpu, m * s.k, 'bf16');
  const c = gpu.alloc('f32', m * s.n);
  const p: MatmulParams = {
    batch: 1,
    m,
    n: s.n,
    k: s.k,
    transA: false,
    transB: true,
    strideA: 0,
    strideB: 0,
    strideC: 0,
    alpha: 1,
    beta: 0,
  };
  const all = () => s.ws.forEach((w) => gpu.matmul(x, w, c, p, s.bias));
  try {
    all(); // compiles, plans and fills caches before the capture
    gpu.synchronize();
    const g = gpu.capture(all);
    try {
      return timeMs(gpu, () => g.replay(), 7, 2) / s.ws.length;
    } finally {
      g.destroy();
    }
  } finally {
    gpu.free(x);
    gpu.free(c);
  }
}

const tb = (n: number, k: number, ms: number) => `${((n * k * 2) / (ms / 1000) / 1e12).toFixed(2)} TB/s`;
const defaults = { ...gemvTuning };
const configs: (typeof gemvTuning)[] = [];
if (values.sweep === 'on')
  for (const warps of [4, 8])
    for (const r of [1, 2, 4])
      for (const unroll of [2, 4, 8])
        for (const wavesWarps of [8, 16, 32])
          for (const l2pf of [0, 1]) configs.push({ warps, rows: r, unroll, wavesWarps, l2pf });
/** per config: the m = 1 products' time of one decode step (ms) */
const stepMs = new Map<string, number>();
const perShape: Row[] = [];
let stepGemv = 0;
let stepBlas = 0;

for (const [n, k, uses, name] of shapes) {
  const s = prepare(n, k);
  for (const m of [1, 4, 8]) {
    const times: Record<string, number> = {};
    for (const [label, enabled] of [
      ['gemv.cu', true],
      ['cuBLASLt', false],
    ] as const) {
      if (label === 'gemv.cu' && !on) continue;
      gemvSwitch.enabled = enabled;
      Object.assign(gemvTuning, defaults);
      const ms = timeProducts(s, m);
      times[label] = ms;
      if (m === 1) {
        if (label === 'gemv.cu') stepGemv += uses * ms;
        else stepBlas += uses * ms;
      }
      rows.push({
        what: `${label}: ${name}, m ${m}, n ${n}, k ${k}, bias`,
        ms,
        rate: tb(n, k, ms),
        note:
          label === 'cuBLASLt' && times['gemv.cu']
            ? `gemv.cu ${(ms / times['gemv.cu']).toFixed(2)}x faster`
            : '',
      });
    }
  }
  gemvSwitch.enabled = true;
  const swept: { key: string; ms: number }[] = [];
  for (const cfg of configs) {
    Object.assign(gemvTuning, cfg);
    const key = JSON.stringify(cfg);
    const ms = timeProducts(s, 1);
    swept.push({ key, ms });
    stepMs.set(key, (stepMs.get(key) ?? 0) + uses * ms);
  }
  swept.sort((a, b) => a.ms - b.ms);
  for (const b of swept.slice(0, 3))
    perShape.push({ what: `sweep, m 1: ${name} ${n} x ${k}: ${b.key}`, ms: b.ms, rate: tb(n, k, b.ms) });
  Object.assign(gemvTuning, defaults);
  gemvSwitch.enabled = on;
  release(s);
}

// the decode step's fused launches at m = 1 (default shape): in_proj + fc1 (its GELU into bf16) in
// one launch, out_proj + fc2 with the residual sum in one launch, each over fresh weight copies
const single: Record<string, number> = {};
for (const r of rows) {
  const hit = /^gemv\.cu: (\w+), m 1,/.exec(r.what);
  if (hit) single[hit[1]] = r.ms;
}
if (on) {
  const bf16 = (n: number) => randomBuffer(gpu, n, 'bf16', 0.02);
  const timeFused = (bytes: number, what: string, parts: string[], make: () => () => void): void => {
    const copies = Math.max(2, Math.ceil((512 << 20) / bytes));
    const runs = Array.from({ length: copies }, make);
    const all = () => runs.forEach((f) => f());
    all();
    gpu.synchronize();
    const g = gpu.capture(all);
    const ms = timeMs(gpu, () => g.replay(), 7, 2) / copies;
    g.destroy();
    const apart = parts.reduce((a, p) => a + (single[p] ?? NaN), 0);
    rows.push({
      what,
      ms,
      rate: `${(bytes / (ms / 1000) / 1e12).toFixed(2)} TB/s`,
      note: `${parts.join(' + ')} apart: ${apart.toFixed(4)} ms`,
    });
  };
  const held: ReturnType<typeof bf16>[] = [];
  const keepB = <T extends ReturnType<typeof bf16>>(b: T) => (held.push(b), b);
  const x = keepB(bf16(2048));
  const zx = keepB(gpu.alloc('f32', 8224));
  const act = keepB(gpu.alloc('bf16', 8192));
  const b1 = keepB(randomBuffer(gpu, 8224));
  const b2 = keepB(randomBuffer(gpu, 8192));
  timeFused(
    2 * 2048 * (8224 + 8192),
    'gemv.cu launch: in_proj + fc1 (GELU into bf16), m 1',
    ['in_proj', 'fc1'],
    () => {
      const w1 = keepB(bf16(8224 * 2048));
      const w2 = keepB(bf16(8192 * 2048));
      return () => gpu.matmulPair(x, 1, 2048, w1, b1, zx, 8224, w2, b2, act, 8192, 'geluNew');
    },
  );
  const g16 = keepB(bf16(2048));
  const h16 = keepB(bf16(8192));
  const r = keepB(randomBuffer(gpu, 2048));
  const mix = keepB(gpu.alloc('f32', 2048));
  const out = keepB(gpu.alloc('f32', 2048));
  const bf = keepB(randomBuffer(gpu, 2048));
  timeFused(
    2 * 2048 * (2048 + 8192),
    'gemv.cu launch: out_proj + fc2 + the residual sum, m 1',
    ['out_proj', 'fc2'],
    () => {
      const wo = keepB(bf16(2048 * 2048));
      const wf = keepB(bf16(2048 * 8192));
      return () => gpu.blockOut(g16, wo, null, h16, wf, bf, r, mix, out, 1, 2048, 2048, 8192);
    },
  );
  for (const b of held) gpu.free(b);
}

rows.push({
  what: `one decode step's products at m 1 (24 layers + lm_head): gemv.cu ${JSON.stringify(defaults)}`,
  ms: stepGemv,
  note: on ? `cuBLASLt ${stepBlas.toFixed(3)} ms` : 'gemv off',
});
rows.push(...perShape);
const best = [...stepMs].sort((a, b) => a[1] - b[1]).slice(0, 5);
for (const [key, ms] of best)
  rows.push({
    what: `sweep: one decode step's products at m 1 with ${key}`,
    ms,
    note: 'best shapes for gemvTuning',
  });

printTable('decoding products (gemv.cu vs cuBLASLt, graph replays), weight bandwidth', gpu, rows, 'gpu-gemv');
