// GPU matrix products and launch overhead: cuBLAS bf16 GEMM TFLOP/s at 4096^3 and 8192^3 (the
// H200's measured bf16 ceiling is about 790), f32 GEMMs (exact and TF32), a device-to-device
// copy's bandwidth, and the cost of one kernel launch from Node through koffi.
// Run: node --import tsx bench/gpu-gemm.ts   (BENCH_OUT=dir also writes gpu-gemm.{md,json})

import type { MatmulParams } from '../src/backends/backend.js';
import { add, scope, setBackend, tensor } from '../src/tensor/index.js';
import { openCuda, printTable, randomBuffer, timeMs, type Row } from './gpu-util.js';

const gpu = openCuda();
const rows: Row[] = [];

function gemm(n: number, typeAB: 'bf16' | 'f32', typeC: 'bf16' | 'f32', tf32 = false): void {
  const a = randomBuffer(gpu, n * n, typeAB);
  const b = randomBuffer(gpu, n * n, typeAB);
  const c = gpu.alloc(typeC, n * n);
  const p: MatmulParams = {
    batch: 1,
    m: n,
    n,
    k: n,
    transA: false,
    transB: true, // x @ W^T, the Linear layout
    strideA: 0,
    strideB: 0,
    strideC: 0,
    alpha: 1,
    beta: 0,
  };
  gpu.cublas.tf32 = tf32;
  const reps = n >= 8192 ? 10 : 20;
  const ms = timeMs(gpu, () => gpu.matmul(a, b, c, p), reps, 3);
  gpu.cublas.tf32 = false;
  const tflops = (2 * n ** 3) / (ms / 1000) / 1e12;
  const label = `${typeAB}${tf32 ? ' (TF32)' : ''} -> ${typeC} GEMM ${n}^3, B transposed`;
  rows.push({
    what: label,
    ms,
    rate: `${tflops.toFixed(1)} TFLOP/s`,
    note: typeAB === 'bf16' ? `${((tflops / 790) * 100).toFixed(0)}% of 790` : '',
  });
  for (const x of [a, b, c]) gpu.free(x);
}

for (const n of [4096, 8192]) {
  gemm(n, 'bf16', 'bf16');
  gemm(n, 'bf16', 'f32');
}
gemm(4096, 'f32', 'f32');
gemm(4096, 'f32', 'f32', true);

// device-to-device bandwidth (bytes read + written)
{
  const n = 256 << 20; // 1 GiB of f32
  const a = randomBuffer(gpu, n);
  const b = gpu.alloc('f32', n);
  const ms = timeMs(gpu, () => gpu.copyStrided(a, 0, [1], b, 0, [1], [n], false), 10, 2);
  rows.push({
    what: 'copy 1 GiB device to device',
    ms,
    rate: `${((2 * n * 4) / (ms / 1000) / 1e9).toFixed(0)} GB/s`,
  });
  const ms2 = timeMs(gpu, () => gpu.unary('silu', a, b, 1, 0), 10, 2);
  rows.push({
    what: 'silu over 256M f32 (kernel)',
    ms: ms2,
    rate: `${((2 * n * 4) / (ms2 / 1000) / 1e9).toFixed(0)} GB/s`,
  });
  gpu.free(a);
  gpu.free(b);
}

// launch overhead: a one-element kernel, many times
{
  const x = randomBuffer(gpu, 1);
  const y = gpu.alloc('f32', 1);
  const n = 20000;
  const launch = () => gpu.unary('exp', x, y, 1, 0);
  for (let i = 0; i < 100; i++) launch();
  gpu.synchronize();
  const t0 = performance.now();
  for (let i = 0; i < n; i++) launch();
  const hostUs = ((performance.now() - t0) / n) * 1000;
  gpu.synchronize();
  const ms = gpu.time(() => {
    for (let i = 0; i < n; i++) launch();
  });
  rows.push({
    what: `launch of a 1-element kernel, host side (${n} launches)`,
    ms: hostUs / 1000,
    rate: `${hostUs.toFixed(2)} us/launch`,
  });
  rows.push({
    what: `launch of a 1-element kernel, device time per launch`,
    ms: ms / n,
    rate: `${((ms / n) * 1000).toFixed(2)} us/launch`,
  });
  gpu.free(x);
  gpu.free(y);
}

// one op through the tensor layer: allocation from the cache, the launch, the scope's free
{
  setBackend(gpu);
  const a = tensor([1], [1]);
  const b = tensor([2], [1]);
  const n = 20000;
  for (let i = 0; i < 100; i++) scope(() => void add(a, b));
  gpu.synchronize();
  const t0 = performance.now();
  for (let i = 0; i < n; i++) scope(() => void add(a, b));
  gpu.synchronize();
  const us = ((performance.now() - t0) / n) * 1000;
  rows.push({
    what: 'tensor-layer add of two 1-element tensors in a scope',
    ms: us / 1000,
    rate: `${us.toFixed(2)} us/op`,
  });
  a.dispose();
  b.dispose();
}

printTable('GPU GEMM and launch overhead', gpu, rows, 'gpu-gemm');
