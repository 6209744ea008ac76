// Launchers of kernels/gemv.cu: decoding's products of a few rows (M <= 8) with a bf16 Linear
// weight, in place of cuBLASLt, whose M = 1 kernels read the weights at a fraction of the
// bandwidth. MOHAWK_GEMV=0 turns them off (cuBLAS for every product).

import type { MatmulParams } from '../backend.js';
import { moduleKernels, type Host } from './host.js';
import type { CudaBuffer } from './host.js';

/** Kernel signatures of kernels/gemv.cu (argument kinds, see kernels.ts). */
export const GEMV_SIGNATURES = {
  gemv_bf16_f32: 'ppppillffi',
} as const;

const { k } = moduleKernels('gemv', GEMV_SIGNATURES);

/** rows of x per launch, warps per block and 16-byte loads in flight per lane, as in gemv.cu */
export const GEMV_MAX_M = 8;
const GEMV_WARPS = 8;
const GEMV_UNROLL = 8;
/** warps wanted in flight: 132 SMs x 16 resident warps (two blocks of 8 each) on the H200, x 2 */
const GEMV_TARGET_WARPS = 4096;

/**
 * Warps per output column (split-K: 1, 2, 4 or 8): doubled while the grid has fewer warps than
 * GEMV_TARGET_WARPS and each split keeps at least two full rounds of loads (32 lanes x GEMV_UNROLL
 * chunks of 8) per lane.
 */
export function gemvSplits(n: number, k: number): number {
  const chunks = Math.floor(k / 8);
  let splits = 1;
  while (
    splits < GEMV_WARPS &&
    n * splits < GEMV_TARGET_WARPS &&
    chunks / (2 * splits) >= 2 * 32 * GEMV_UNROLL
  )
    splits *= 2;
  return splits;
}

/**
 * MOHAWK_GEMV=0 turns gemv.cu off; benchmarks flip `enabled` to time cuBLASLt on the same shapes.
 * `maxWeight` (elements of W): above it cuBLASLt is faster on the H200 (bench/gpu-gemv.ts,
 * 2026-12-02: gemv.cu 1.04-1.47x at 2048 x 2048 and 4096 x 2048, 0.5-0.94x from 8192 x 2048 up).
 */
export const gemvSwitch = { enabled: process.env.MOHAWK_GEMV !== '0', maxWeight: 4096 * 2048 };

/** Whether gemv.cu takes this product: bf16 x (m, k) times a bf16 weight (n, k) transposed into f32. */
export function gemvTakes(a: CudaBuffer, b: CudaBuffer, c: CudaBuffer, p: MatmulParams): boolean {
  return (
    gemvSwitch.enabled &&
    a.dtype === 'bf16' &&
    b.dtype === 'bf16' &&
    c.dtype === 'f32' &&
    p.batch === 1 &&
    p.m >= 1 &&
    p.m <= GEMV_MAX_M &&
    !p.transA &&
    p.transB &&
    p.k % 8 === 0 &&
    p.n > 0 &&
    p.n * p.k <= gemvSwitch.maxWeight &&
    a.ptr % 16 === 0 &&
    b.ptr % 16 === 0
  );
}

/** out (m, n) = alpha x (m, k) W^T + beta out + bias (n), W (n, k); see gemvTakes for the cases. */
export function gemv(
  h: Host,
  a: CudaBuffer,
  b: CudaBuffer,
  c: CudaBuffer,
  bias: CudaBuffer | null,
  p: MatmulParams,
): void {
  const splits = gemvSplits(p.n, p.k);
  const blocks = Math.ceil(p.n / (GEMV_WARPS / splits));
  k(h, 'gemv_bf16_f32').launch([blocks, 1, 1], GEMV_WARPS * 32, 0, [
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
  ]);
}
