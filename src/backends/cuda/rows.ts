// Launchers of kernels/rows.cu: one block per row of softmax, LayerNorm, RMSNorm, cross-entropy
// and KL divergence (forward and backward), and the embedding gather/scatter.

import type { DeviceBuffer } from '../backend.js';
import { moduleKernels, partialBlocks, rowThreads, storage, type Host } from './host.js';

/** Kernel signatures of kernels/rows.cu (argument kinds, see kernels.ts). */
export const ROWS_SIGNATURES = {
  softmax_f32: 'ppii',
  softmax_backward_f32: 'pppii',
  layernorm_f32: 'ppppppifpi',
  layernorm_backward_f32: 'ppppppppli',
  layernorm_backward_acc_f32: 'ppppppppli',
  rmsnorm_f32: 'ppppifpi',
  add_rmsnorm_f32: 'ppppppifpi',
  layernorm_warp_f32: 'pppppplifpi',
  rmsnorm_warp_f32: 'pppplifpi',
  add_rmsnorm_warp_f32: 'pppppplifpi',
  rmsnorm_backward_f32: 'ppppppli',
  rmsnorm_backward_acc_f32: 'ppppppli',
  cross_entropy_f32: 'ppppii',
  cross_entropy_backward_f32: 'pppppii',
  kl_div_f32: 'ppppif',
  kl_div_backward_f32: 'ppppppifi',
  embedding_f32: 'ppplii',
  embedding_backward_f32: 'pppliii',
} as const;

const { k, run1 } = moduleKernels('rows', ROWS_SIGNATURES);

export function softmax(
  h: Host,
  x: DeviceBuffer,
  out: DeviceBuffer,
  rows: number,
  cols: number,
  log: boolean,
): void {
  const xp = h.f(x, 'softmax input');
  const op = h.f(out, 'softmax output');
  if (rows * cols === 0) return;
  k(h, 'softmax_f32').launch([rows, 1, 1], rowThreads(cols), 0, [xp, op, cols, log ? 1 : 0]);
}

export function softmaxBackward(
  h: Host,
  y: DeviceBuffer,
  gy: DeviceBuffer,
  gx: DeviceBuffer,
  rows: number,
  cols: number,
  log: boolean,
): void {
  const args = [h.f(y, 'softmax output'), h.f(gy, 'softmax gradient'), h.f(gx, 'softmax input gradient')];
  if (rows * cols === 0) return;
  k(h, 'softmax_backward_f32').launch([rows, 1, 1], rowThreads(cols), 0, [...args, cols, log ? 1 : 0]);
}

/** rows per block of the one-warp-per-row norm kernels */
const WARP_ROWS = 8;

/**
 * Whether a norm's rows take the one-warp-per-row kernels (values in registers): widths that are
 * multiples of 128 up to 2048 (NORM_WARP_MAXV in rows.cu); MOHAWK_NORM_WARP=0: never.
 */
function warpRows(cols: number): boolean {
  return cols > 0 && cols % 128 === 0 && cols <= 2048 && process.env.MOHAWK_NORM_WARP !== '0';
}

function warpGrid(rows: number): [number, number, number] {
  return [Math.ceil(rows / WARP_ROWS), 1, 1];
}

/** the kernel arguments (pointer, 16-bit type) of a norm's optional 16-bit copy of its output */
function copy16(h: Host, out16: DeviceBuffer | null, n: number): [number, number] {
  if (!out16) return [0, 0];
  const b = h.buf(out16, 'norm 16-bit output');
  if ((b.dtype !== 'bf16' && b.dtype !== 'f16') || b.length !== n)
    throw new Error(
      `cuda backend: a norm's 16-bit output must be ${n} bf16 or f16, got ${b.length} ${b.dtype}`,
    );
  return [b.ptr, b.dtype === 'bf16' ? 1 : 2];
}

/**
 * A norm's forward (layernorm, rmsnorm, add_rmsnorm): one warp per row where the width allows
 * (warpRows), else one block per row; both take the same arguments but the row count.
 */
function launchNorm(
  h: Host,
  base: 'layernorm' | 'rmsnorm' | 'add_rmsnorm',
  args: number[],
  rows: number,
  cols: number,
  eps: number,
  out16: DeviceBuffer | null,
): void {
  const tail = [eps, ...copy16(h, out16, rows * cols)];
  if (warpRows(cols))
    k(h, `${base}_warp_f32`).launch(warpGrid(rows), 32 * WARP_ROWS, 0, [...args, rows, cols, ...tail]);
  else k(h, `${base}_f32`).launch([rows, 1, 1], rowThreads(cols), 0, [...args, cols, ...tail]);
}

/**
 * LayerNorm of many rows written only in 16 bits (o16 of dtype; no f32 output, mean or rstd), one
 * warp per row; false (nothing launched) where the width does not take the warp kernel.
 */
export function layerNormWarpTo16(
  h: Host,
  x: number,
  w: number,
  b: number,
  o16: number,
  dtype: string,
  rows: number,
  cols: number,
  eps: number,
): boolean {
  if (!warpRows(cols) || (dtype !== 'bf16' && dtype !== 'f16')) return false;
  k(h, 'layernorm_warp_f32').launch(warpGrid(rows), 32 * WARP_ROWS, 0, [
    x,
    w,
    b,
    0,
    0,
    0,
    rows,
    cols,
    eps,
    o16,
    dtype === 'bf16' ? 1 : 2,
  ]);
  return true;
}

export function layerNorm(
  h: Host,
  x: DeviceBuffer,
  weight: DeviceBuffer,
  bias: DeviceBuffer | null,
  out: DeviceBuffer,
  mean: DeviceBuffer,
  rstd: DeviceBuffer,
  rows: number,
  cols: number,
  eps: number,
  out16: DeviceBuffer | null = null,
): void {
  const args = [
    h.f(x, 'layerNorm input'),
    h.f(weight, 'layerNorm weight'),
    bias ? h.f(bias, 'layerNorm bias') : 0,
    h.f(out, 'layerNorm output'),
    h.f(mean, 'layerNorm mean'),
    h.f(rstd, 'layerNorm rstd'),
  ];
  if (rows === 0) return;
  launchNorm(h, 'layernorm', args, rows, cols, eps, out16);
}

export function layerNormBackward(
  h: Host,
  x: DeviceBuffer,
  weight: DeviceBuffer,
  mean: DeviceBuffer,
  rstd: DeviceBuffer,
  gy: DeviceBuffer,
  gx: DeviceBuffer,
  gWeight: DeviceBuffer,
  gBias: DeviceBuffer | null,
  rows: number,
  cols: number,
  accumulate = false,
): void {
  const gw = h.f(gWeight, 'layerNorm weight gradient');
  const gb = gBias ? h.f(gBias, 'layerNorm bias gradient') : 0;
  const args = [
    h.f(x, 'layerNorm input'),
    h.f(weight, 'layerNorm weight'),
    h.f(mean, 'layerNorm mean'),
    h.f(rstd, 'layerNorm rstd'),
    h.f(gy, 'layerNorm gradient'),
    h.f(gx, 'layerNorm input gradient'),
  ];
  if (cols === 0) return;
  if (rows === 0) {
    h.fill(gWeight, 0);
    if (gBias) h.fill(gBias, 0);
    return;
  }
  const blocks = partialBlocks(h, rows);
  const pw = h.scratch(blocks * cols);
  const pb = gBias ? h.scratch(blocks * cols) : null;
  k(h, accumulate ? 'layernorm_backward_acc_f32' : 'layernorm_backward_f32').launch(
    [blocks, 1, 1],
    rowThreads(cols),
    0,
    [...args, pw.ptr, pb ? pb.ptr : 0, rows, cols],
  );
  h.sumInto(pw.ptr, gw, 1, blocks, cols);
  if (pb) h.sumInto(pb.ptr, gb, 1, blocks, cols);
  h.free(pw);
  if (pb) h.free(pb);
}

export function rmsNorm(
  h: Host,
  x: DeviceBuffer,
  weight: DeviceBuffer,
  out: DeviceBuffer,
  rstd: DeviceBuffer,
  rows: number,
  cols: number,
  eps: number,
  out16: DeviceBuffer | null = null,
): void {
  const args = [
    h.f(x, 'rmsNorm input'),
    h.f(weight, 'rmsNorm weight'),
    h.f(out, 'rmsNorm output'),
    h.f(rstd, 'rmsNorm rstd'),
  ];
  if (rows === 0) return;
  launchNorm(h, 'rmsnorm', args, rows, cols, eps, out16);
}

/** sum = a + b, out = rmsNorm(sum) (and out16) in one pass (Backend.addRmsNorm) */
export function addRmsNorm(
  h: Host,
  a: DeviceBuffer,
  b: DeviceBuffer,
  weight: DeviceBuffer,
  sum: DeviceBuffer,
  out: DeviceBuffer,
  rstd: DeviceBuffer,
  rows: number,
  cols: number,
  eps: number,
  out16: DeviceBuffer | null,
): void {
  const args = [
    h.f(a, 'addRmsNorm a'),
    h.f(b, 'addRmsNorm b'),
    h.f(weight, 'rmsNorm weight'),
    h.f(sum, 'addRmsNorm sum'),
    h.f(out, 'rmsNorm output'),
    h.f(rstd, 'rmsNorm rstd'),
  ];
  if (rows === 0) return;
  launchNorm(h, 'add_rmsnorm', args, rows, cols, eps, out16);
}

export function rmsNormBackward(
  h: Host,
  x: DeviceBuffer,
  weight: DeviceBuffer,
  rstd: DeviceBuffer,
  gy: DeviceBuffer,
  gx: DeviceBuffer,
  gWeight: DeviceBuffer,
  rows: number,
  cols: number,
  accumulate = false,
): void {
  const gw = h.f(gWeight, 'rmsNorm weight gradient');
  const args = [
    h.f(x, 'rmsNorm input'),
    h.f(weight, 'rmsNorm weight'),
    h.f(rstd, 'rmsNorm rstd'),
    h.f(gy, 'rmsNorm gradient'),
    h.f(gx, 'rmsNorm input gradient'),
  ];
  if (cols === 0) return;
  if (rows === 0) {
    h.fill(gWeight, 0);
    return;
  }
  const blocks = partialBlocks(h, rows);
  const pw = h.scratch(blocks * cols);
  k(h, accumulate ? 'rmsnorm_backward_acc_f32' : 'rmsnorm_backward_f32').launch(
    [blocks, 1, 1],
    rowThreads(cols),
    0,
    [...args, pw.ptr, rows, cols],
  );
  h.sumInto(pw.ptr, gw, 1, blocks, cols);
  h.free(pw);
}

export function embedding(
  h: Host,
  table: DeviceBuffer,
  ids: DeviceBuffer,
  out: DeviceBuffer,
  n: number,
  dim: number,
): void {
  const t = h.f(table, 'embedding table');
  const vocab = dim > 0 ? h.buf(table, 'embedding table').length / dim : 0;
  run1(h, 'embedding_f32', n * dim, [
    t,
    h.i32(ids, 'embedding ids'),
    h.f(out, 'embedding output'),
    n,
    dim,
    vocab,
  ]);
}

export function embeddingBackward(
  h: Host,
  gOut: DeviceBuffer,
  ids: DeviceBuffer,
  gTable: DeviceBuffer,
  n: number,
  dim: number,
): void {
  const vocab = dim > 0 ? h.buf(gTable, 'embedding table gradient').length / dim : 0;
  const args = [
    h.f(gOut, 'embedding gradient'),
    h.i32(ids, 'embedding ids'),
    h.f(gTable, 'embedding table gradient'),
  ];
  if (n * dim === 0) return;
  // rows per block: enough blocks to fill the GPU twice over, each scanning all n ids
  const rowsPer = Math.max(1, Math.ceil(vocab / (2 * h.sms)));
  const threads = Math.min(1024, Math.max(32, Math.ceil(Math.min(dim, 256) / 32) * 32));
  k(h, 'embedding_backward_f32').launch([Math.ceil(vocab / rowsPer), 1, 1], threads, 0, [
    ...args,
    n,
    dim,
    vocab,
    rowsPer,
  ]);
}

export function crossEntropy(
  h: Host,
  logits: DeviceBuffer,
  targets: DeviceBuffer,
  losses: DeviceBuffer,
  lse: DeviceBuffer,
  rows: number,
  vocab: number,
  ignoreIndex: number,
): void {
  const args = [
    h.f(logits, 'cross-entropy logits'),
    h.i32(targets, 'cross-entropy targets'),
    h.f(losses, 'cross-entropy losses'),
    h.f(lse, 'cross-entropy lse'),
  ];
  if (rows === 0) return;
  k(h, 'cross_entropy_f32').launch([rows, 1, 1], rowThreads(vocab), 0, [...args, vocab, ignoreIndex]);
}

export function crossEntropyBackward(
  h: Host,
  logits: DeviceBuffer,
  targets: DeviceBuffer,
  lse: DeviceBuffer,
  gLoss: DeviceBuffer,
  gLogits: DeviceBuffer,
  rows: number,
  vocab: number,
  ignoreIndex: number,
): void {
  const args = [
    h.f(logits, 'cross-entropy logits'),
    h.i32(targets, 'cross-entropy targets'),
    h.f(lse, 'cross-entropy lse'),
    h.f(gLoss, 'cross-entropy gradient'),
    h.f(gLogits, 'cross-entropy logits gradient'),
  ];
  if (rows * vocab === 0) return;
  k(h, 'cross_entropy_backward_f32').launch([rows, 1, 1], rowThreads(vocab), 0, [
    ...args,
    vocab,
    ignoreIndex,
  ]);
}

export function klDivergence(
  h: Host,
  teacher: DeviceBuffer,
  student: DeviceBuffer,
  losses: DeviceBuffer,
  rows: number,
  vocab: number,
  temperature: number,
  lse: DeviceBuffer | null = null,
): void {
  const args = [
    h.f(teacher, 'KL teacher logits'),
    h.f(student, 'KL student logits'),
    h.f(losses, 'KL losses'),
    lse ? h.f(lse, 'KL log-sum-exps') : 0,
  ];
  if (rows === 0) return;
  k(h, 'kl_div_f32').launch([rows, 1, 1], rowThreads(vocab), 0, [...args, vocab, 1 / temperature]);
}

export function klDivergenceBackward(
  h: Host,
  teacher: DeviceBuffer,
  student: DeviceBuffer,
  gLoss: DeviceBuffer,
  gStudent: DeviceBuffer,
  rows: number,
  vocab: number,
  temperature: number,
  lse: DeviceBuffer | null = null,
  losses: DeviceBuffer | null = null,
): void {
  const args = [
    h.f(teacher, 'KL teacher logits'),
    h.f(student, 'KL student logits'),
    h.f(gLoss, 'KL gradient'),
    h.buf(gStudent, 'KL student gradient').ptr,
    lse ? h.f(lse, 'KL log-sum-exps') : 0,
    losses ? h.f(losses, 'KL losses') : 0,
  ];
  const out16 = storage(gStudent.dtype, 'KL student gradient');
  if (rows * vocab === 0) return;
  k(h, 'kl_div_backward_f32').launch([rows, 1, 1], rowThreads(vocab), 0, [
    ...args,
    vocab,
    1 / temperature,
    out16,
  ]);
}
