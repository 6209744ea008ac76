// CPU backend benchmark: matmul GFLOP/s with OpenBLAS and the WebAssembly fallback (MOHAWK_WASM=off:
// the plain TypeScript loops), and the forward+backward of a small MLP. Wall time, and CPU time
// (user + system of all threads: the steadier figure on a shared machine; compare at
// OPENBLAS_NUM_THREADS=1). Run: npx tsx bench/cpu-matmul.ts [--quick]

import os from 'node:os';
import { CpuBackend } from '../src/backends/cpu/index.js';
import { loadBlas } from '../src/backends/cpu/blas.js';
import { matmul, mean, relu, scope, setBackend, square, tensor } from '../src/tensor/index.js';
import { Random } from '../src/util/random.js';

const quick = process.argv.includes('--quick');

/** median wall and CPU milliseconds of repeated runs after a warm-up */
function timeIt(fn: () => void, minMs = 300, maxReps = 50): { wall: number; cpu: number } {
  fn(); // warm up
  const times: number[] = [];
  const cpus: number[] = [];
  const start = performance.now();
  while (times.length < maxReps && (performance.now() - start < minMs || times.length < 3)) {
    const t0 = performance.now();
    const c0 = process.cpuUsage();
    fn();
    times.push(performance.now() - t0);
    const c = process.cpuUsage(c0);
    cpus.push((c.user + c.system) / 1000);
  }
  const med = (xs: number[]) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)];
  return { wall: med(times), cpu: med(cpus) };
}

const gflops = (flop: number, ms: number) => (flop / (ms / 1000) / 1e9).toFixed(1);

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
    const t = timeIt(() => scope(() => void matmul(a, b)), 300, blas ? 50 : 10);
    rows.push([
      backend.describe(),
      `matmul ${n}^3`,
      t.wall.toFixed(2),
      gflops(2 * n ** 3, t.wall),
      t.cpu.toFixed(2),
      gflops(2 * n ** 3, t.cpu),
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
  const t = timeIt(
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
    blas ? 20 : 5,
  );
  const flops = 3 * 2 * tokens * d * h * 2; // forward 2 GEMMs, backward 4
  rows.push([
    backend.describe(),
    `MLP fwd+bwd ${tokens}x${d}->${h}->${d}`,
    t.wall.toFixed(1),
    gflops(flops, t.wall),
    t.cpu.toFixed(1),
    gflops(flops, t.cpu),
  ]);
}

const cpu = os.cpus()[0]?.model ?? 'unknown cpu';
console.log(
  `# ${new Date().toISOString().slice(0, 10)}, ${os.cpus().length} x ${cpu}, node ${process.version}`,
);
console.log(
  `# threads: OPENBLAS_NUM_THREADS=${process.env.OPENBLAS_NUM_THREADS ?? '(default)'}, load ${os.loadavg()[0].toFixed(1)}`,
);
console.log('| backend | work | wall ms | GFLOP/s (wall) | CPU ms | GFLOP per CPU-second |');
console.log('| --- | --- | ---: | ---: | ---: | ---: |');
for (const r of rows) console.log(`| ${r.join(' | ')} |`);
