// Launchers of kernels/reduce.cu: sums and maxima over the middle axis of (outer, n, inner),
// cumulative sums, and the segment sums of the materialized mixer with their adjoint.

import type { DeviceBuffer, ReduceOp } from '../backend.js';
import { grid1, moduleKernels, rowThreads, THREADS, type Host } from './host.js';

/** Kernel signatures of kernels/reduce.cu (argument kinds, see kernels.ts). */
export const REDUCE_SIGNATURES = {
  reduce_mid_f32: 'ppilllli',
  reduce_rows_f32: 'ppilll',
  cumsum_f32: 'ppllli',
  segsum_f32: 'ppli',
  segsum_bwd_suffix_f32: 'pli',
  segsum_bwd_rows_f32: 'pplii',
} as const;

const { k, run1 } = moduleKernels('reduce', REDUCE_SIGNATURES);

export function reduce(
  h: Host,
  op: ReduceOp,
  x: DeviceBuffer,
  out: DeviceBuffer,
  outer: number,
  n: number,
  inner: number,
): void {
  const xp = h.f(x, `reduce ${op} input`);
  const op_ = h.f(out, `reduce ${op} output`);
  if (outer * inner === 0) return;
  if (n === 0) {
    h.fill(out, op === 'sum' ? 0 : -Infinity);
    return;
  }
  reduceInto(h, op === 'sum' ? 0 : 1, xp, op_, outer, n, inner);
}

/** (outer, n, inner) -> (outer, inner), splitting long reductions over blocks. */
export function reduceInto(
  h: Host,
  op: number,
  x: number,
  out: number,
  outer: number,
  n: number,
  inner: number,
): void {
  if (inner === 1 && n > 64) {
    const target = h.sms * 4;
    let splits = outer >= target ? 1 : Math.min(Math.ceil(target / outer), Math.ceil(n / 8192));
    splits = Math.max(1, Math.min(splits, 65535));
    const chunk = Math.ceil(n / splits);
    splits = Math.ceil(n / chunk);
    const kern = k(h, 'reduce_rows_f32');
    const rowsGrid = Math.min(outer, 65535);
    if (splits === 1) {
      kern.launch([1, rowsGrid, 1], rowThreads(n), 0, [x, out, op, outer, n, n]);
      return;
    }
    const tmp = h.scratch(outer * splits);
    kern.launch([splits, rowsGrid, 1], rowThreads(chunk), 0, [x, tmp.ptr, op, outer, n, chunk]);
    kern.launch([1, rowsGrid, 1], rowThreads(splits), 0, [tmp.ptr, out, op, outer, splits, splits]);
    h.free(tmp);
    return;
  }
  const total = outer * inner;
  const target = h.sms * 2048;
  let splits = total * 2 >= target ? 1 : Math.min(Math.ceil(target / total), Math.ceil(n / 64));
  splits = Math.max(1, Math.min(splits, 65535));
  const chunk = Math.ceil(n / splits);
  splits = Math.ceil(n / chunk);
  const kern = k(h, 'reduce_mid_f32');
  const g = grid1(h, total);
  if (splits === 1) {
    kern.launch(g, THREADS, 0, [x, out, op, outer, n, inner, n, 1]);
    return;
  }
  const tmp = h.scratch(outer * splits * inner);
  kern.launch([g[0], splits, 1], THREADS, 0, [x, tmp.ptr, op, outer, n, inner, chunk, splits]);
  kern.launch(g, THREADS, 0, [tmp.ptr, out, op, outer, splits, inner, splits, 1]);
  h.free(tmp);
}

export function cumsum(
  h: Host,
  x: DeviceBuffer,
  out: DeviceBuffer,
  outer: number,
  n: number,
  inner: number,
  reverse: boolean,
): void {
  run1(h, 'cumsum_f32', outer * inner, [
    h.f(x, 'cumsum input'),
    h.f(out, 'cumsum output'),
    outer,
    n,
    inner,
    reverse ? 1 : 0,
  ]);
}

export function segsum(h: Host, x: DeviceBuffer, out: DeviceBuffer, rows: number, t: number): void {
  run1(h, 'segsum_f32', rows * t, [h.f(x, 'segsum input'), h.f(out, 'segsum output'), rows, t]);
}

export function segsumBackward(h: Host, gOut: DeviceBuffer, gx: DeviceBuffer, rows: number, t: number): void {
  const g = h.f(gOut, 'segsum gradient');
  const gxp = h.f(gx, 'segsum input gradient');
  if (rows * t === 0) return;
  const tmp = h.scratch(rows * t * t);
  h.driver.copyOnDevice(tmp.ptr, g, rows * t * t * 4);
  segsumAdjoint(h, tmp.ptr, gxp, rows, t, 0);
  h.free(tmp);
}

/** gx from segment-sum gradients g (rows, T, T), destroying g; heads > 0 writes gx as (B, T, H). */
export function segsumAdjoint(h: Host, g: number, gx: number, rows: number, t: number, heads: number): void {
  run1(h, 'segsum_bwd_suffix_f32', rows * t, [g, rows, t]);
  const warps = rows * t;
  k(h, 'segsum_bwd_rows_f32').launch([Math.ceil((warps * 32) / THREADS), 1, 1], THREADS, 0, [
    g,
    gx,
    rows,
    t,
    heads,
  ]);
}
