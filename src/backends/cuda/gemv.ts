// Launchers of kernels/gemv.cu: decoding's products of a few rows (M <= 8) with a bf16 Linear
// weight, in place of cuBLASLt, whose M = 1 kernels read the weights at a fraction of the
// bandwidth. MOHAWK_GEMV=0 turns them off (cuBLAS for every product).

import type { MatmulParams } from '../backend.js';
import { moduleKernels, outCode, type Host } from './host.js';
import type { CudaBuffer } from './host.js';

/** Kernel signatures of kernels/gemv.cu (argument kinds, see kernels.ts). */
export const GEMV_SIGNATURES = {
  gemv_bf16_f32: 'ppppillffiiipppppliii',
  gemv_block_out: 'ppplppplpppili',
} as const;

const { k } = moduleKernels('gemv', GEMV_SIGNATURES);

/** rows of x per launch */
export const GEMV_MAX_M = 8;

/**
 * The compile-time shape of gemv.cu (its -D defines) and the split-K target. bench/gpu-gemv.ts
 * sweeps them; the defaults are its pick for the H200 (2026-12-02: one decode step's products at
 * m = 1 in 0.957 ms, against 1.183 with rows 2, unroll 4, wavesWarps 16 and 1.052 through cuBLASLt;
 * in_proj, fc1, fc2 at 3.0-3.1 TB/s, lm_head 4.0).
 * - warps: warps per block; rows: weight rows per warp (streamed together); unroll: 16-byte
 *   loads per row and lane in one batch (two batches in flight)
 * - wavesWarps: split K while the grid has fewer warps than this many per multiprocessor
 * - l2pf: 1 puts the L2's 256-byte prefetch hint on the weight loads
 */
export const gemvTuning = { warps: 4, rows: 4, unroll: 2, wavesWarps: 8, l2pf: 0 };

/** the build of gemv.cu for m rows: accumulators for 1, 2, 4 or 8 rows */
export function gemvBuildM(m: number): number {
  return m <= 1 ? 1 : m <= 2 ? 2 : m <= 4 ? 4 : 8;
}

/** the -D defines of gemv.cu's build for m rows at the current gemvTuning */
function gemvDefines(m: number): Record<string, number> {
  const t = gemvTuning;
  return {
    GEMV_M: gemvBuildM(m),
    GEMV_WARPS: t.warps,
    GEMV_ROWS: t.rows,
    GEMV_UNROLL: t.unroll,
    GEMV_L2PF: t.l2pf,
  };
}

/**
 * Warps per group of output columns (split-K: 1, 2, 4 or 8, at most the warps of a block):
 * doubled while the grid has fewer warps than `sms` x wavesWarps and each split keeps at least
 * one full batch of loads (32 lanes x unroll chunks of 8 elements) per row.
 */
export function gemvSplits(
  n: number,
  k: number,
  sms = 132,
  t: Pick<typeof gemvTuning, 'warps' | 'rows' | 'unroll' | 'wavesWarps'> = gemvTuning,
): number {
  const chunks = Math.floor(k / 8);
  const groups = Math.ceil(n / t.rows);
  let splits = 1;
  while (
    splits < Math.min(8, t.warps) &&
    groups * splits < sms * t.wavesWarps &&
    chunks / (2 * splits) >= 32 * t.unroll
  )
    splits *= 2;
  return splits;
}

/** c (m, n) = a (m, k) b^T with b (n, k): a Linear layer's product, one batch, as decoding runs it */
export function linearParams(m: number, n: number, k: number): MatmulParams {
  return {
    batch: 1,
    m,
    n,
    k,
    transA: false,
    transB: true,
    strideA: m * k,
    strideB: n * k,
    strideC: m * n,
    alpha: 1,
    beta: 0,
  };
}

/**
 * MOHAWK_GEMV=0 turns gemv.cu off; benchmarks flip `enabled` to time cuBLASLt on the same shapes.
 * Any weight size (at m = 1 gemv.cu beats cuBLASLt at every decode shape). `maxRows`: products of
 * more rows go to cuBLASLt
 * (bench/gpu-gemv.ts, H200: gemv.cu 0.3-0.8x of cuBLASLt at m = 4 and 8, where its x loads and
 * FMAs per weight load grow with m). Tests and the benchmark raise it to GEMV_MAX_M.
 */
export const gemvSwitch = { enabled: process.env.MOHAWK_GEMV !== '0', maxRows: 1 };

/**
 * Whether gemv.cu takes this product: bf16 x (m, k) times a bf16 weight (n, k) transposed into f32
 * (or into bf16 / f16 with beta 0).
 */
export function gemvTakes(a: CudaBuffer, b: CudaBuffer, c: CudaBuffer, p: MatmulParams): boolean {
  return (
    gemvSwitch.enabled &&
    a.dtype === 'bf16' &&
    b.dtype === 'bf16' &&
    (c.dtype === 'f32' || ((c.dtype === 'bf16' || c.dtype === 'f16') && p.beta === 0)) &&
    p.batch === 1 &&
    p.m >= 1 &&
    p.m <= Math.min(GEMV_MAX_M, gemvSwitch.maxRows) &&
    !p.transA &&
    p.transB &&
    p.k % 8 === 0 &&
    p.n > 0 &&
    a.ptr % 16 === 0 &&
    b.ptr % 16 === 0
  );
}

/**
 * A second product of the same x in the same launch: c2 (m, n) = act(x w^T + bias), w (n, k) bf16,
 * c2 f32 or 16-bit, bias (n) f32 | null.
 */
export interface GemvSecond {
  w: CudaBuffer;
  c: CudaBuffer;
  bias: CudaBuffer | null;
  n: number;
  act: number;
}

/**
 * out (m, n) = act(alpha x (m, k) W^T + beta out + bias (n)), W (n, k); act 0 (none) or 1 (the
 * tanh GELU, gemv.cu's GEMV_ACT_GELU_NEW); then (r1 + r2) + out with the residual addends r1, r2
 * (m, n) f32 (r2 only with r1); see gemvTakes for the cases.
 */
export function gemv(
  h: Host,
  a: CudaBuffer,
  b: CudaBuffer,
  c: CudaBuffer,
  bias: CudaBuffer | null,
  p: MatmulParams,
  act = 0,
  r1: CudaBuffer | null = null,
  r2: CudaBuffer | null = null,
  second: GemvSecond | null = null,
): void {
  const t = gemvTuning;
  const n2 = second ? second.n : 0;
  const splits = gemvSplits(p.n + n2, p.k, h.sms, t);
  const cols = t.rows * (t.warps / splits);
  const blocks1 = Math.ceil(p.n / cols);
  const blocks = blocks1 + Math.ceil(n2 / cols);
  const defines = gemvDefines(p.m);
  k(h, 'gemv_bf16_f32', defines).launch([blocks, 1, 1], t.warps * 32, 0, [
    a.ptr,
    b.ptr,
    c.ptr,
    bias ? bias.ptr : 0,
    p.m,
    p.n,
    p.k,
    p.alpha,
    p.beta,
    splits,
    act,
    outCode(c.dtype, 'gemv output'),
    r1 ? r1.ptr : 0,
    r2 ? r2.ptr : 0,
    second ? second.w.ptr : 0,
    second ? second.c.ptr : 0,
    second?.bias ? second.bias.ptr : 0,
    n2,
    second ? second.act : 0,
    second ? outCode(second.c.dtype, 'gemv second output') : 0,
    blocks1,
  ]);
}

/**
 * The parallel block's out_proj and fc2 in one launch (gemv.cu gemv_block_out): mix (m, n) =
 * g Wo^T + bo and out = (r + mix) + (h Wf^T + bf), all f32 out; g (m, k1), h (m, k2), Wo (n, k1),
 * Wf (n, k2) bf16. False (nothing launched) where gemv.cu does not take both products.
 */
export function gemvBlockOut(
  h: Host,
  g: CudaBuffer,
  wo: CudaBuffer,
  bo: CudaBuffer | null,
  hx: CudaBuffer,
  wf: CudaBuffer,
  bf: CudaBuffer | null,
  r: CudaBuffer,
  mix: CudaBuffer,
  out: CudaBuffer,
  m: number,
  n: number,
  k1: number,
  k2: number,
): boolean {
  if (
    !gemvTakes(g, wo, mix, linearParams(m, n, k1)) ||
    !gemvTakes(hx, wf, out, linearParams(m, n, k2)) ||
    [bo, bf, r, mix, out].some((b) => b !== null && b.dtype !== 'f32')
  )
    return false;
  const t = gemvTuning;
  const splits = gemvSplits(n, k1 + k2, h.sms, t);
  const blocks = Math.ceil(n / (t.rows * (t.warps / splits)));
  const defines = gemvDefines(m);
  k(h, 'gemv_block_out', defines).launch([blocks, 1, 1], t.warps * 32, 0, [
    g.ptr,
    wo.ptr,
    bo ? bo.ptr : 0,
    k1,
    hx.ptr,
    wf.ptr,
    bf ? bf.ptr : 0,
    k2,
    r.ptr,
    mix.ptr,
    out.ptr,
    m,
    n,
    splits,
  ]);
  return true;
}
