// Decoding's matrix products: x (m, k) bf16 times a bf16 Linear weight (n, k) transposed into f32,
// m = 1, 4, 8 rows, on the shapes of the 1.5B student (d_model 2048, MLP 8192, vocabulary ~10k),
// through kernels/gemv.cu and through cuBLASLt (the gemv switch off), as weight bandwidth (the
// weight's bytes over the time; the H200 streams about 4.8 TB/s). Each timed call reads a different
// copy of the weight (512 MiB in all), so the 50 MB L2 cannot hold it between calls, as in decoding.
// Run: node --import tsx bench/gpu-gemv.ts   (BENCH_OUT=dir also writes gpu-gemv.json)

import type { MatmulParams } from '../src/backends/backend.js';
import { gemvSwitch } from '../src/backends/cuda/gemv.js';
import { openCuda, printTable, randomBuffer, timeMs, type Row } from './gpu-util.js';

const gpu = openCuda();
const rows: Row[] = [];
const shapes: [number, number][] = [
  [2048, 2048],
  [4096, 2048],
  [8192, 2048],
  [2048, 8192],
  [10000, 2048],
];
const on = gemvSwitch.enabled;
// every shape through gemv.cu here, also those above the size where the backend prefers cuBLASLt
gemvSwitch.maxWeight = Infinity;

for (const [n, k] of shapes) {
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
  const bias = randomBuffer(gpu, n);
  for (const m of [1, 4, 8]) {
    const x = randomBuffer(gpu, m * k, 'bf16');
    const c = gpu.alloc('f32', m * n);
    const p: MatmulParams = {
      batch: 1,
      m,
      n,
      k,
      transA: false,
      transB: true,
      strideA: 0,
      strideB: 0,
      strideC: 0,
      alpha: 1,
      beta: 0,
    };
    const times: Record<string, number> = {};
    for (const [label, enabled] of [
      ['gemv.cu', true],
      ['cuBLASLt', false],
    ] as const) {
      if (label === 'gemv.cu' && !on) continue;
      gemvSwitch.enabled = enabled;
      // one timed sample = every copy once; the figure is per product
      const ms = timeMs(gpu, () => ws.forEach((w) => gpu.matmul(x, w, c, p, bias)), 5, 1) / copies;
      times[label] = ms;
      rows.push({
        what: `${label}: m ${m}, n ${n}, k ${k}, bias`,
        ms,
        rate: `${(bytes / (ms / 1000) / 1e12).toFixed(2)} TB/s`,
        note:
          label === 'cuBLASLt' && times['gemv.cu']
            ? `gemv.cu ${(ms / times['gemv.cu']).toFixed(2)}x faster`
            : '',
      });
    }
    gemvSwitch.enabled = on;
    gpu.free(x);
    gpu.free(c);
  }
  for (const w of ws) gpu.free(w);
  gpu.free(bias);
}

printTable('decoding products (gemv.cu vs cuBLASLt), weight bandwidth', gpu, rows, 'gpu-gemv');
