// GPU kernels at the workload's shapes, as first figures for the speed work: the SSD scan at
// batch 8, T 2048, 32 heads, P = N = 64, chunk 128 (reference: PyTorch + mamba_ssm, bf16,
// 1.17 ms forward, 5.1 ms forward + backward), attention at the teacher's shape, LayerNorm,
// cross-entropy and KL over a 51200-token vocabulary, and AdamW.
// Run: node --import tsx bench/gpu-ops.ts [--quick]   (BENCH_OUT=dir also writes gpu-ops.{md,json})

import type { SsdParams } from '../src/backends/backend.js';
import { heldBuffers, openCuda, printTable, TEACHER_ATTENTION, timeMs, type Row } from './gpu-util.js';

const gpu = openCuda();
const rows: Row[] = [];
const quick = process.argv.includes('--quick') || process.env.GPU_OPS_QUICK === '1';
const { rnd, buf, release } = heldBuffers(gpu);
const gbps = (bytes: number, ms: number) => `${(bytes / (ms / 1000) / 1e9).toFixed(0)} GB/s`;

/** One profiled run: a row per kernel with its share of the time. */
function profileRows(what: string, fn: () => void): void {
  const { kernels } = gpu.profile(fn);
  const total = kernels.reduce((a, k) => a + k.ms, 0);
  for (const k of kernels) {
    rows.push({
      what: `&nbsp;&nbsp;${what}: ${k.name} (${k.calls} launch${k.calls > 1 ? 'es' : ''})`,
      ms: k.ms,
      note: `${((k.ms / total) * 100).toFixed(0)}% (profiled run)`,
    });
  }
}

// ---- SSD scan ----------------------------------------------------------------------------------
// The fast kernels (kernels/ssd_fast.cu, the default) with f32 products (3xTF32) and with bf16
// products (lowPrecision, as under autocast), and the simple oracle kernels (ssd.cu) once.
// TFLOP/s count the chunk products once, dense: forward 2Q^2 N + 2Q^2 P + 4QPN per chunk
// (C B^T, its product with X, the chunk state, the inter-chunk output), backward
// 6Q^2 N + 4Q^2 P + 8QPN (C B^T, gY X^T, dC, dX, dB and the four state products).
for (const groups of [32, 1]) {
  const p: SsdParams = { batch: 8, seqLen: 2048, heads: 32, groups, headDim: 64, dState: 64, chunkSize: 128 };
  const { batch: B, seqLen: L, heads: H, headDim: P, dState: N, chunkSize: Q } = p;
  const nC = Math.ceil(L / Q);
  const x = rnd(B * L * H * P);
  // logA in (-1.5, 0): decays, as -softplus(a) gives
  const logA = buf(B * L * H);
  gpu.unary('softplus', rnd(B * L * H), logA, -1, 0);
  const bm = rnd(B * L * groups * N, 0.5);
  const cm = rnd(B * L * groups * N, 0.5);
  const y = buf(B * L * H * P);
  const states = buf(B * nC * H * P * N);
  const gy = rnd(B * L * H * P);
  const gx = buf(B * L * H * P);
  const gl = buf(B * L * H);
  const gb = buf(B * L * groups * N);
  const gc = buf(B * L * groups * N);
  const chunks = B * H * nC;
  const flopsF = chunks * (2 * Q * Q * N + 2 * Q * Q * P + 4 * Q * P * N);
  const flopsB = chunks * (6 * Q * Q * N + 4 * Q * Q * P + 8 * Q * P * N);
  const tflops = (f: number, ms: number) => `${(f / (ms / 1000) / 1e12).toFixed(1)} TFLOP/s`;
  const variants: { impl: 'fast' | 'oracle'; lp: boolean; label: string }[] = [
    { impl: 'fast', lp: true, label: 'fast, bf16 products' },
    { impl: 'fast', lp: false, label: 'fast, f32 (3xTF32) products' },
  ];
  if (groups === 32) variants.push({ impl: 'oracle', lp: false, label: 'oracle, f32' });
  for (const { impl, lp, label } of variants) {
    gpu.ssdImpl = impl;
    const q = { ...p, lowPrecision: lp };
    const fwd = () => gpu.ssdScan(x, logA, bm, cm, y, states, null, q);
    const bwd = () => gpu.ssdScanBackward(x, logA, bm, cm, states, gy, gx, gl, gb, gc, q);
    const reps = quick ? 3 : impl === 'oracle' ? 5 : 20;
    const msF = timeMs(gpu, fwd, reps, 2);
    const msFB = timeMs(gpu, () => (fwd(), bwd()), reps, 1);
    const shape = `B ${B}, T ${L}, H ${H}, G ${groups}, P ${P}, N ${N}, chunk ${Q}, ${label}`;
    rows.push({
      what: `SSD scan forward (${shape})`,
      ms: msF,
      rate: tflops(flopsF, msF),
      note: 'reference 1.17 ms (bf16); target <= 0.6 ms',
    });
    rows.push({
      what: `SSD scan forward + backward (${shape})`,
      ms: msFB,
      rate: tflops(flopsF + flopsB, msFB),
      note: 'reference 5.1 ms (bf16); target <= 2.5 ms',
    });
    if (groups === 32 && impl === 'fast')
      profileRows(`SSD forward + backward, ${label}`, () => (fwd(), bwd()));
  }
  gpu.ssdImpl = 'fast';
  release();
}

// ---- attention ----------------------------------------------------------------------------------
// f32 on the CUDA cores (attention.cu, the oracle) and, under lowPrecision (bf16 autocast), the
// tensor-core kernels (attention_tc.cu); TFLOP/s count the causal half of the score matrix
for (const lowPrecision of [false, true]) {
  const p = { ...TEACHER_ATTENTION, lowPrecision };
  const n = p.batch * p.tq * p.heads * p.headDim;
  const q = rnd(n);
  const k = rnd(n);
  const v = rnd(n);
  const o = buf(n);
  const lse = buf(p.batch * p.heads * p.tq);
  const g = rnd(n);
  const gq = buf(n);
  const gk = buf(n);
  const gv = buf(n);
  const fwd = () => gpu.attention(q, k, v, o, lse, null, p);
  const msF = timeMs(gpu, fwd, quick ? 3 : 10, 2);
  const msFB = timeMs(
    gpu,
    () => (fwd(), gpu.attentionBackward(q, k, v, o, lse, g, gq, gk, gv, p)),
    quick ? 3 : 10,
    1,
  );
  const flops = 4 * p.batch * p.heads * p.tq * p.tk * p.headDim * 0.5; // causal: half the scores
  const shape = `B 4, T 2048, H 32, D 64, causal, ${lowPrecision ? 'bf16 tensor cores' : 'f32'}`;
  rows.push({
    what: `attention forward (${shape})`,
    ms: msF,
    rate: `${(flops / (msF / 1000) / 1e12).toFixed(1)} TFLOP/s`,
  });
  // backward counted as 2.5x the forward (five products: S again, dP, dV, dQ, dK), whatever more
  // a kernel recomputes
  rows.push({
    what: `attention forward + backward (${shape})`,
    ms: msFB,
    rate: `${((3.5 * flops) / (msFB / 1000) / 1e12).toFixed(1)} TFLOP/s`,
  });
  profileRows(
    `attention forward + backward (${lowPrecision ? 'bf16' : 'f32'})`,
    () => (fwd(), gpu.attentionBackward(q, k, v, o, lse, g, gq, gk, gv, p)),
  );
  release();
}

// ---- rows ---------------------------------------------------------------------------------------
{
  const rowsN = 8192;
  const cols = 2048;
  const x = rnd(rowsN * cols);
  const w = rnd(cols);
  const b = rnd(cols);
  const y = buf(rowsN * cols);
  const mean = buf(rowsN);
  const rstd = buf(rowsN);
  const gy = rnd(rowsN * cols);
  const gx = buf(rowsN * cols);
  const gw = buf(cols);
  const gb = buf(cols);
  const ms = timeMs(gpu, () => gpu.layerNorm(x, w, b, y, mean, rstd, rowsN, cols, 1e-5));
  rows.push({ what: 'LayerNorm forward (8192, 2048)', ms, rate: gbps(2 * rowsN * cols * 4, ms) });
  const msB = timeMs(gpu, () => gpu.layerNormBackward(x, w, mean, rstd, gy, gx, gw, gb, rowsN, cols));
  rows.push({ what: 'LayerNorm backward (8192, 2048)', ms: msB, rate: gbps(3 * rowsN * cols * 4, msB) });
  release();
}
{
  const rowsN = quick ? 2048 : 8192;
  const vocab = 51200;
  const logits = rnd(rowsN * vocab, 3);
  const teacher = rnd(rowsN * vocab, 3);
  const ids = gpu.alloc('i32', rowsN);
  gpu.write(
    ids,
    Int32Array.from({ length: rowsN }, (_, i) => (i * 7919) % vocab),
  );
  const losses = buf(rowsN);
  const lse = buf(rowsN);
  const gl = rnd(rowsN);
  const g = buf(rowsN * vocab);
  const bytes = rowsN * vocab * 4;
  const ms = timeMs(gpu, () => gpu.crossEntropy(logits, ids, losses, lse, rowsN, vocab, -100));
  rows.push({ what: `cross-entropy forward (${rowsN}, ${vocab})`, ms, rate: gbps(bytes, ms) });
  const msB = timeMs(gpu, () => gpu.crossEntropyBackward(logits, ids, lse, gl, g, rowsN, vocab, -100));
  rows.push({ what: `cross-entropy backward (${rowsN}, ${vocab})`, ms: msB, rate: gbps(2 * bytes, msB) });
  const msK = timeMs(gpu, () => gpu.klDivergence(teacher, logits, losses, rowsN, vocab, 1));
  rows.push({ what: `KL divergence forward (${rowsN}, ${vocab})`, ms: msK, rate: gbps(2 * bytes, msK) });
  const msKB = timeMs(gpu, () => gpu.klDivergenceBackward(teacher, logits, gl, g, rowsN, vocab, 1));
  rows.push({ what: `KL divergence backward (${rowsN}, ${vocab})`, ms: msKB, rate: gbps(3 * bytes, msKB) });
  gpu.free(ids);
  release();
}
{
  const n = 100_000_000;
  const w = rnd(n);
  const g = rnd(n, 0.01);
  const m = buf(n);
  const v = buf(n);
  gpu.fill(m, 0);
  gpu.fill(v, 0);
  let step = 0;
  const ms = timeMs(gpu, () =>
    gpu.adamw(w, g, m, v, { lr: 1e-4, beta1: 0.9, beta2: 0.95, eps: 1e-8, weightDecay: 0.1, step: ++step }),
  );
  rows.push({ what: 'AdamW step over 100M f32 parameters', ms, rate: gbps(7 * n * 4, ms) });
  release();
}

// ---- a linear layer's output gradient under bf16 autocast (biasgrad) -------------------------------
// dY (8192 tokens, n) f32 -> its bf16 copy for the two products + the bias's column sums: the cast
// and a column sum (two reads of dY) against castColumnSums (one), and fc1's (GELU) gradient through
// unaryBackward first against castColumnSums with the op (no f32 pre-activation gradient).
for (const n of quick ? [8192] : [2048, 8192, 51200]) {
  const rowsN = 8192;
  const g = rnd(rowsN * n);
  const g16 = gpu.alloc('bf16', rowsN * n);
  const x16 = gpu.alloc('bf16', rowsN * n);
  gpu.cast(rnd(rowsN * n), x16);
  const gPre = buf(rowsN * n);
  const sums = buf(n);
  const e = rowsN * n;
  const msPlain = timeMs(gpu, () => (gpu.cast(g, g16), gpu.reduce('sum', g, sums, 1, rowsN, n)));
  rows.push({ what: `dY (${rowsN}, ${n}): cast + column sum`, ms: msPlain, rate: gbps(e * 10, msPlain) });
  const msFused = timeMs(gpu, () => gpu.castColumnSums(g, g16, sums, rowsN, n, null, null));
  rows.push({ what: `dY (${rowsN}, ${n}): castColumnSums`, ms: msFused, rate: gbps(e * 6, msFused) });
  if (n === 8192) {
    const msAct = timeMs(
      gpu,
      () => (
        gpu.unaryBackward('geluNew', x16, g, gPre),
        gpu.cast(gPre, g16),
        gpu.reduce('sum', gPre, sums, 1, rowsN, n)
      ),
    );
    rows.push({
      what: `fc1 dY (${rowsN}, ${n}): GELU backward + cast + column sum`,
      ms: msAct,
      rate: gbps(e * 20, msAct),
    });
    const msActF = timeMs(gpu, () => gpu.castColumnSums(g, g16, sums, rowsN, n, 'geluNew', x16));
    rows.push({
      what: `fc1 dY (${rowsN}, ${n}): castColumnSums with the GELU`,
      ms: msActF,
      rate: gbps(e * 8, msActF),
    });
  }
  gpu.free(g16);
  gpu.free(x16);
  release();
}

printTable('GPU kernels at workload shapes', gpu, rows, 'gpu-ops');
const launches = Object.entries(gpu.kernels.launchCounts()).sort((a, b) => b[1] - a[1]);
console.log(`# launches per kernel: ${launches.map(([k, n]) => `${k} ${n}`).join(', ')}`);
