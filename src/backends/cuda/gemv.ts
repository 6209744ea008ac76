// Launchers of kernels/gemv.cu: decoding's products of a few rows (M <= 8) with a bf16 Linear
// weight, in place of cuBLASLt, whose M = 1 kernels read the weights at a fraction of the
// bandwidth. MOHAWK_GEMV=0 turns them off (cuBLAS for every product).

import type { MatmulParams } from '../backend.js';
import { moduleKernels, type Host } from './host.js';
import type { CudaBuffer } from './host.js';

/** Kernel signatures of kernels/gemv.cu (argument kinds, see kernels.ts). */
export const GEMV_SIGNATURES = {
  gemv_bf16_f32: 'ppppillff',
} as const;

const { k } = moduleKernels('gemv', GEMV_SIGNATURES);

/** rows of x per launch and output columns per block, as in gemv.cu */
export const GEMV_MAX_M = 8;
const GEMV_WARPS = 8;

const enabled = process.env.MOHAWK_GEMV !== '0';

/** Whether gemv.cu takes this product: bf16 x (m, k) times a bf16 weight (n, k) transposed into f32. */
export function gemvTakes(a: CudaBuffer, b: CudaBuffer, c: CudaBuffer, p: MatmulParams): boolean {
  return (
    enabled &&
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
  const blocks = Math.ceil(p.n / GEMV_WARPS);
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
  ]);
}
