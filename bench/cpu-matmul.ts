// CPU backend benchmark: matmul GFLOP/s with OpenBLAS and the TypeScript fallback, and the
// forward+backward of a small MLP. Run: npx tsx bench/cpu-matmul.ts [--quick]

import os from 'node:os';
import { CpuBackend } from '../src/backends/cpu/index.js';
import { loadBlas } from '../src/backends/cpu/blas.js';
import { matmul, mean, relu, scope, setBackend, square, tensor } from '../src/tensor/index.js';
import { Random } from '../src/util/random.js';

const quick = process.argv.includes('--quick');

function timeIt(fn: () => void, minMs = 300, maxReps = 50): number {
  fn(); // warm up
  const times: number[] = [];
  const start = performance.now();
  while (times.length < maxReps && (performance.now() - start < minMs || times.length < 3)) {
    const t0 = performance.now();
    fn();
    times.push(performance.now() - t0);
  }
  times.sort((a, b) => a - b);
  return times[Math.floor(times.length / 2)];
}

const rng = new Random(0);
const rows: string[][] = [];
const paths = loadBlas() ? [true, false] : [false];
for (const blas of paths) {
  const backend = new CpuBackend({ blas });
  setBackend(backend);
  for (const n of quick ? [256, 512] : [256, 512, 1024, 2048]) {
    if (!blas && n > 1024 && quick) continue;
    const a = tensor(rng.normals(n * n), [n, n]);
    const b = tensor(rng.normals(n * n), [n, n]);
    const ms = timeIt(() => scope(() => void matmul(a, b)), blas ? 300 : 100, blas ? 50 : 3);
    rows.push([
      backend.describe(),
      `matmul ${n}^3`,
      ms.toFixed(2),
      ((2 * n ** 3) / (ms / 1000) / 1e9).toFixed(1),
    ]);
    a.dispose();
    b.dispose();
  }
  // MLP: (4096 tokens, 256) -> 1024 -> 256, relu, mse; forward + backward
  const tokens = 4096;
  const d = 256;
  const h = 1024;
  const x = tensor(rng.normals(tokens * d), [tokens, d]);
  const w1 = tensor(rng.normals(h * d, 0, 0.05), [h, d]);
  const w2 = tensor(rng.normals(d * h, 0, 0.05), [d, h]);
  w1.requiresGrad = true;
  w2.requiresGrad = true;
  const ms = timeIt(
    () =>
      scope(() => {
        const y = matmul(relu(matmul(x, w1, { transB: true })), w2, { transB: true });
        mean(square(y)).backward();
        w1.grad?.dispose();
        w2.grad?.dispose();
        w1.grad = null;
        w2.grad = null;
      }),
    300,
    blas ? 20 : 2,
  );
  const flops = 3 * 2 * tokens * d * h * 2; // forward 2 GEMMs, backward 4
  rows.push([
    backend.describe(),
    `MLP fwd+bwd ${tokens}x${d}->${h}->${d}`,
    ms.toFixed(1),
    (flops / (ms / 1000) / 1e9).toFixed(1),
  ]);
}

const cpu = os.cpus()[0]?.model ?? 'unknown cpu';
console.log(
  `# ${new Date().toISOString().slice(0, 10)}, ${os.cpus().length} x ${cpu}, node ${process.version}`,
);
console.log('| backend | work | ms | GFLOP/s |');
console.log('| --- | --- | ---: | ---: |');
for (const r of rows) console.log(`| ${r.join(' | ')} |`);
