// Launchers of kernels/optim.cu: the optimizer's fused passes (the row sums of squares of a
// gradient, their f64 total, and AdamW with the decayed rows, a non-finite flag and the 16-bit
// copy of the updated weights in one pass).

import type { AdamWFusedParams, DeviceBuffer } from '../backend.js';
import { grid1, moduleKernels, THREADS, type Host } from './host.js';

/** Kernel signatures of kernels/optim.cu (argument kinds, see kernels.ts). */
export const OPTIM_SIGNATURES = {
  grad_row_squares_f32: 'ppll',
  sum_f64_to_f32: 'plpl',
  adamw_fused_f32: 'pppppplifffdppil',
} as const;

const { k } = moduleKernels('optim', OPTIM_SIGNATURES);

function f64(h: Host, buf: DeviceBuffer, what: string, need: number): number {
  const b = h.buf(buf, what);
  if (b.dtype !== 'f64' || b.length < need)
    throw new Error(
      `cuda backend: ${what} must be f64 with at least ${need} entries, got ${b.dtype} (${b.length})`,
    );
  return b.ptr;
}

export function gradRowSquares(
  h: Host,
  grad: DeviceBuffer,
  rowSquares: DeviceBuffer,
  at: number,
  rows: number,
  rowLen: number,
): void {
  const g = h.f(grad, 'gradRowSquares grad');
  if (h.buf(grad, 'gradRowSquares grad').length !== rows * rowLen)
    throw new Error(`cuda backend: gradRowSquares: the gradient is not ${rows} x ${rowLen}`);
  const out = f64(h, rowSquares, 'gradRowSquares rowSquares', at + rows);
  if (rows === 0) return;
  // one warp per row, eight warps per block
  k(h, 'grad_row_squares_f32').launch(grid1(h, rows * 32), THREADS, 0, [g, out + at * 8, rows, rowLen]);
}

export function sumF64(h: Host, x: DeviceBuffer, n: number, out: DeviceBuffer, at: number): void {
  const xp = f64(h, x, 'sumF64 input', n);
  const o = h.buf(out, 'sumF64 output');
  if (o.dtype !== 'f32' || o.length <= at)
    throw new Error(
      `cuda backend: sumF64 output must be f32 with an entry ${at}, got ${o.dtype} (${o.length})`,
    );
  k(h, 'sum_f64_to_f32').launch([1, 1, 1], 1024, 0, [xp, n, o.ptr, at]);
}

export function adamwFused(
  h: Host,
  param: DeviceBuffer,
  grad: DeviceBuffer,
  m: DeviceBuffer,
  v: DeviceBuffer,
  scalars: DeviceBuffer,
  rowSquares: DeviceBuffer | null,
  nonFinite: DeviceBuffer | null,
  param16: DeviceBuffer | null,
  p: AdamWFusedParams,
): void {
  const n = h.buf(param, 'adamwFused param').length;
  const rowLen = Math.max(1, p.rowLen);
  const s = f64(h, scalars, 'adamwFused scalars', p.biasAt + 2);
  const rows = rowSquares ? f64(h, rowSquares, 'adamwFused rowSquares', p.rowAt + Math.ceil(n / rowLen)) : 0;
  let p16 = 0;
  let kind = 0;
  if (param16) {
    const b = h.buf(param16, 'adamwFused param16');
    if ((b.dtype !== 'bf16' && b.dtype !== 'f16') || b.length !== n)
      throw new Error(
        `cuda backend: adamwFused param16 must be bf16 or f16 of ${n}, got ${b.dtype} (${b.length})`,
      );
    p16 = b.ptr;
    kind = b.dtype === 'bf16' ? 1 : 2;
  }
  if (n === 0) return;
  const quads = n % 4 === 0 && rowLen % 4 === 0;
  k(h, 'adamw_fused_f32').launch(grid1(h, quads ? n / 4 : n), THREADS, 0, [
    h.f(param, 'adamwFused param'),
    h.f(grad, 'adamwFused grad'),
    h.f(m, 'adamwFused m'),
    h.f(v, 'adamwFused v'),
    s,
    rows ? rows + p.rowAt * 8 : 0,
    rowLen,
    p.biasAt,
    p.beta1,
    p.beta2,
    p.eps,
    p.weightDecay,
    nonFinite ? h.f(nonFinite, 'adamwFused nonFinite') : 0,
    p16,
    kind,
    n,
  ]);
}
