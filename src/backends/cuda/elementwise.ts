// Launchers of kernels/elementwise.cu: casts, unary and binary maps (strided, broadcasting),
// strided copies and accumulation, the causal mask, dropout, the gated output of the mixer, AdamW.

import {
  denseStrides,
  DTYPE_BYTES,
  UNARY_OPS,
  type AdamWDeviceParams,
  type AdamWParams,
  type BinaryOp,
  type DeviceBuffer,
  type UnaryOp,
} from '../backend.js';
import { DTYPE_CODE, moduleKernels, storage, type CudaBuffer, type Host } from './host.js';
import type { Arg } from './kernels.js';

/** Kernel signatures of kernels/elementwise.cu (argument kinds, see kernels.ts). */
export const ELEMENTWISE_SIGNATURES = {
  unary_f32: 'ppiffl',
  unary_f32_to16: 'ppiffil',
  unary_backward_f32: 'pppil',
  binary_f32: 'pppiiDDDl',
  copy_b4: 'plpliDDDl',
  copy_b2: 'plpliDDDl',
  copy_b8: 'plpliDDDl',
  accumulate_f32: 'plpliDDDli',
  accumulate_f64: 'plpliDDDli',
  accumulate_i32: 'plpliDDDli',
  binary_f32_i32: 'pppiiDDDl',
  cast_f32_bf16: 'ppl',
  cast_bf16_f32: 'ppl',
  copy_b4_i32: 'plpliDDDl',
  copy_b2_i32: 'plpliDDDl',
  copy_b8_i32: 'plpliDDDl',
  accumulate_f32_i32: 'plpliDDDli',
  fill_f64: 'pdl',
  cast_any: 'pipil',
  causal_mask_f32: 'ppliif',
  dropout_f32: 'ppdul',
  silu_gate_f32: 'ppppli',
  silu_gate_backward_f32: 'ppppppli',
  adamw_f32: 'ppppfffffffl',
  adamw_device_f32: 'pppppplifffdl',
  unary_f32_to16_keep: 'pppiil',
  unary_backward_from16: 'pppiil',
  gated_act_f32: 'pppippiil',
  gated_act_backward_f32: 'ppipppiil',
  silu_gate_d_f32: 'ppppppippilii',
  silu_gate_d_backward_f32: 'ppppippppppliii',
  add3_f32: 'ppppl',
  cast_colsum_x4: 'ppiipiplll',
  cast_colsum_act_x4: 'ppiipiplll',
  cast_colsum_x1: 'ppiipiplll',
  cast_colsum_act_x1: 'ppiipiplll',
  copy2d_b4x4: 'pllpllli',
  unary_f32_to16_keep_x4: 'pppiil',
  unary_backward_from16_x4: 'pppiil',
  gated_act_x4: 'pppippiil',
  gated_act_backward_x4: 'ppipppiil',
  silu_gate_d_x4: 'ppppppippilii',
  unary_f32_to16_x4: 'ppiffil',
} as const;

const { k, run1 } = moduleKernels('elementwise', ELEMENTWISE_SIGNATURES);

/** the 16-bit storage code of a buffer (bf16 1, f16 2) */
function storage16(h: Host, buf: DeviceBuffer, what: string): number {
  const b = h.buf(buf, what);
  if (b.dtype !== 'bf16' && b.dtype !== 'f16')
    throw new Error(`cuda backend: ${what} must be bf16 or f16, got ${b.dtype}`);
  return storage(b.dtype, what);
}

/** unary op codes: the position in UNARY_OPS, the order of the switch in elementwise.cu */
export const UNARY_CODE = Object.fromEntries(UNARY_OPS.map((op, i) => [op, i])) as Record<UnaryOp, number>;

const BINARY_CODE: Record<BinaryOp, number> = { add: 0, sub: 1, mul: 2, div: 3, maximum: 4, eq: 5 };

/**
 * Drop size-1 axes and merge neighbours that are contiguous under every stride set, so most
 * strided loops run over one or two axes.
 */
export function collapseAxes(
  shape: readonly number[],
  strides: readonly (readonly number[])[],
): {
  shape: number[];
  strides: number[][];
} {
  const outShape: number[] = [];
  const outStrides: number[][] = strides.map(() => []);
  for (let d = 0; d < shape.length; d++) {
    if (shape[d] === 1) continue;
    const last = outShape.length - 1;
    if (last >= 0 && strides.every((s, k) => outStrides[k][last] === s[d] * shape[d])) {
      outShape[last] *= shape[d];
      strides.forEach((s, k) => (outStrides[k][last] = s[d]));
    } else {
      outShape.push(shape[d]);
      strides.forEach((s, k) => outStrides[k].push(s[d]));
    }
  }
  return { shape: outShape, strides: outStrides };
}

/** whether a strided loop over `shape` fits the kernels' 32-bit index arithmetic */
function fits32(n: number, shape: readonly number[], strides: readonly (readonly number[])[]): boolean {
  const LIMIT = 2 ** 31 - 1;
  if (n > LIMIT) return false;
  return strides.every((s) => shape.reduce((acc, len, d) => acc + (len - 1) * Math.abs(s[d]), 0) <= LIMIT);
}

/** out[i] = value for an f64 buffer (the other dtypes are driver memsets) */
export function fillF64(h: Host, ptr: number, value: number, n: number): void {
  run1(h, 'fill_f64', n, [ptr, value, n]);
}

/** x *= scale in place on a device address (the identity unary with alpha = scale): C = beta C */
export function scaleInPlace(h: Host, ptr: number, scale: number, n: number): void {
  run1(h, 'unary_f32', n, [ptr, ptr, UNARY_CODE.identity, scale, 0, n]);
}

export function cast(h: Host, x: DeviceBuffer, out: DeviceBuffer): void {
  const src = h.buf(x, 'cast input');
  const dst = h.buf(out, 'cast output');
  if (dst.length !== src.length)
    throw new Error(`cuda backend: cast of ${src.length} elements into ${dst.length}`);
  const n = src.length;
  // paired accesses need 8-byte-aligned starts (allocator blocks are 256-byte aligned)
  const aligned = src.ptr % 8 === 0 && dst.ptr % 8 === 0;
  if (aligned && src.dtype === 'f32' && dst.dtype === 'bf16') {
    run1(h, 'cast_f32_bf16', Math.max(1, n >> 1), [src.ptr, dst.ptr, n]);
    return;
  }
  if (aligned && src.dtype === 'bf16' && dst.dtype === 'f32') {
    run1(h, 'cast_bf16_f32', Math.max(1, n >> 1), [src.ptr, dst.ptr, n]);
    return;
  }
  run1(h, 'cast_any', n, [src.ptr, DTYPE_CODE[src.dtype], dst.ptr, DTYPE_CODE[dst.dtype], n]);
}

export function unary(
  h: Host,
  op: UnaryOp,
  x: DeviceBuffer,
  out: DeviceBuffer,
  alpha: number,
  beta: number,
): void {
  const n = h.buf(x, op).length;
  const o = h.buf(out, `${op} output`);
  if (o.dtype === 'bf16' || o.dtype === 'f16') {
    const x4 = n % 4 === 0;
    run1(h, x4 ? 'unary_f32_to16_x4' : 'unary_f32_to16', x4 ? n / 4 : n, [
      h.f(x, `${op} input`),
      o.ptr,
      UNARY_CODE[op],
      alpha,
      beta,
      o.dtype === 'bf16' ? 1 : 0,
      n,
    ]);
    return;
  }
  run1(h, 'unary_f32', n, [h.f(x, `${op} input`), h.f(out, `${op} output`), UNARY_CODE[op], alpha, beta, n]);
}

/** out = f(x) and xOut = x, both rounded to 16 bits in one pass (x f32) */
export function unaryKeep16(
  h: Host,
  op: UnaryOp,
  x: DeviceBuffer,
  out: DeviceBuffer,
  xOut: DeviceBuffer,
): void {
  const n = h.buf(x, op).length;
  const ot = storage16(h, out, `${op} output`);
  if (
    storage16(h, xOut, `${op} kept input`) !== ot ||
    h.buf(out, op).length !== n ||
    h.buf(xOut, op).length !== n
  )
    throw new Error(`cuda backend: ${op} with a kept input: outputs of one 16-bit dtype and ${n} elements`);
  const x4 = n % 4 === 0;
  run1(h, x4 ? 'unary_f32_to16_keep_x4' : 'unary_f32_to16_keep', x4 ? n / 4 : n, [
    h.f(x, `${op} input`),
    h.buf(out, op).ptr,
    h.buf(xOut, op).ptr,
    UNARY_CODE[op],
    ot === 1 ? 1 : 0,
    n,
  ]);
}

export function unaryBackward(
  h: Host,
  op: UnaryOp,
  x: DeviceBuffer,
  gy: DeviceBuffer,
  gx: DeviceBuffer,
): void {
  const n = h.buf(x, op).length;
  const xb = h.buf(x, `${op} input`);
  if (xb.dtype === 'bf16' || xb.dtype === 'f16') {
    // the 16-bit copy an activation kept of its input (unaryKeep16)
    const x4 = n % 4 === 0;
    run1(h, x4 ? 'unary_backward_from16_x4' : 'unary_backward_from16', x4 ? n / 4 : n, [
      xb.ptr,
      h.f(gy, `${op} gradient`),
      h.f(gx, `${op} input gradient`),
      UNARY_CODE[op],
      storage(xb.dtype, op),
      n,
    ]);
    return;
  }
  run1(h, 'unary_backward_f32', n, [
    h.f(x, `${op} input`),
    h.f(gy, `${op} gradient`),
    h.f(gx, `${op} input gradient`),
    UNARY_CODE[op],
    n,
  ]);
}

/** threads of cast_colsum (elementwise.cu COLSUM_TX x COLSUM_TY) */
const COLSUM_TX = 32;
const COLSUM_TY = 8;

/**
 * g (rows, cols) f32 -> g16 = v rounded to g16's 16-bit dtype and sums (cols) f32 = the sums of v
 * over the rows, with v = g, or g * f'(x) for `op` (x the 16-bit input an activation kept): a
 * linear layer's output gradient for its 16-bit products and its bias's gradient, g read once.
 * Deterministic: per-split partial sums in a fixed order, then one fixed-order sum of those.
 */
export function castColumnSums(
  h: Host,
  g: DeviceBuffer,
  g16: DeviceBuffer,
  sums: DeviceBuffer,
  rows: number,
  cols: number,
  op: UnaryOp | null,
  x: DeviceBuffer | null,
): void {
  const n = rows * cols;
  const gp = h.f(g, 'castColumnSums gradient');
  const ot = storage16(h, g16, 'castColumnSums 16-bit gradient');
  const sp = h.f(sums, 'castColumnSums sums');
  if (h.buf(g, 'castColumnSums').length !== n || h.buf(g16, 'castColumnSums').length !== n)
    throw new Error(`cuda backend: castColumnSums of (${rows}, ${cols}) needs ${n} gradient elements`);
  if (h.buf(sums, 'castColumnSums').length !== cols)
    throw new Error(`cuda backend: castColumnSums sums must be ${cols} values`);
  let xp = 0;
  let xt = 0;
  if (op !== null) {
    if (!x) throw new Error(`cuda backend: castColumnSums with ${op} needs its input`);
    xt = storage16(h, x, `castColumnSums ${op} input`);
    if (h.buf(x, 'castColumnSums').length !== n)
      throw new Error(`cuda backend: castColumnSums ${op} input must be ${n} elements`);
    xp = h.buf(x, 'castColumnSums').ptr;
  }
  if (cols === 0) return;
  if (rows === 0) {
    h.fill(sums, 0);
    return;
  }
  const w = cols % 4 === 0 ? 4 : 1;
  const tiles = Math.ceil(cols / (COLSUM_TX * w));
  // about 16 blocks per multiprocessor (5 are resident at a time: several short waves balance
  // better than one or two long ones), each thread walking at least 4 rows
  let splits = Math.max(
    1,
    Math.min(Math.ceil((h.sms * 16) / tiles), Math.ceil(rows / (COLSUM_TY * 4)), 65535),
  );
  const chunk = Math.ceil(rows / splits);
  splits = Math.ceil(rows / chunk);
  const partial = splits === 1 ? null : h.scratch(splits * cols);
  const name =
    op === null
      ? w === 4
        ? 'cast_colsum_x4'
        : 'cast_colsum_x1'
      : w === 4
        ? 'cast_colsum_act_x4'
        : 'cast_colsum_act_x1';
  k(h, name).launch([tiles, splits, 1], COLSUM_TX * COLSUM_TY, 0, [
    gp,
    xp,
    op === null ? -1 : UNARY_CODE[op],
    xt,
    h.buf(g16, 'castColumnSums').ptr,
    ot,
    partial ? partial.ptr : sp,
    rows,
    cols,
    chunk,
  ]);
  if (partial) {
    h.sumInto(partial.ptr, sp, 1, splits, cols);
    h.free(partial);
  }
}

export function binary(
  h: Host,
  op: BinaryOp,
  a: DeviceBuffer,
  aStrides: number[],
  b: DeviceBuffer,
  bStrides: number[],
  out: DeviceBuffer,
  shape: number[],
): void {
  const n = shape.reduce((p, s) => p * s, 1);
  if (n === 0) return;
  const c = collapseAxes(shape, [aStrides, bStrides, denseStrides(shape)]);
  if (c.shape.length > 8) throw new Error(`cuda backend: ${op} over ${c.shape.length} axes (at most 8)`);
  const small = fits32(n, c.shape, c.strides);
  run1(h, small ? 'binary_f32_i32' : 'binary_f32', n, [
    h.f(a, `${op} left operand`),
    h.f(b, `${op} right operand`),
    h.f(out, `${op} output`),
    BINARY_CODE[op],
    c.shape.length,
    c.shape,
    c.strides[0],
    c.strides[1],
    n,
  ]);
}

export function copyStrided(
  h: Host,
  src: DeviceBuffer,
  srcOffset: number,
  srcStrides: number[],
  dst: DeviceBuffer,
  dstOffset: number,
  dstStrides: number[],
  shape: number[],
  accumulate: boolean,
): void {
  const s = h.buf(src, 'copy source');
  const d = h.buf(dst, 'copy destination');
  if (s.dtype !== d.dtype) throw new Error(`cuda backend: copy from ${s.dtype} to ${d.dtype}`);
  const n = shape.reduce((p, x) => p * x, 1);
  if (n === 0) return;
  const c = collapseAxes(shape, [srcStrides, dstStrides]);
  if (c.shape.length > 8) throw new Error(`cuda backend: copy over ${c.shape.length} axes (at most 8)`);
  const es = DTYPE_BYTES[s.dtype];
  const [ss, ds] = c.strides;
  if (!accumulate && (c.shape.length === 0 || (c.shape.length === 1 && ss[0] === 1 && ds[0] === 1))) {
    h.driver.copyOnDevice(d.ptr + dstOffset * es, s.ptr + srcOffset * es, n * es);
    return;
  }
  if (
    !accumulate &&
    es === 4 &&
    c.shape.length === 2 &&
    ss[1] === 1 &&
    ds[1] === 1 &&
    [c.shape[1], ss[0], ds[0], srcOffset, dstOffset].every((v) => v % 4 === 0) &&
    s.ptr % 16 === 0 &&
    d.ptr % 16 === 0 &&
    c.shape[1] < 2 ** 31
  ) {
    // a block of columns (a slice of the last axis): 16 bytes per thread
    run1(h, 'copy2d_b4x4', n / 4, [s.ptr, srcOffset, ss[0], d.ptr, dstOffset, ds[0], c.shape[0], c.shape[1]]);
    return;
  }
  const common: Arg[] = [s.ptr, srcOffset, d.ptr, dstOffset, c.shape.length, c.shape, ss, ds, n];
  const small = fits32(n, c.shape, [ss, ds]);
  if (!accumulate) {
    const name = small
      ? es === 4
        ? 'copy_b4_i32'
        : es === 2
          ? 'copy_b2_i32'
          : 'copy_b8_i32'
      : es === 4
        ? 'copy_b4'
        : es === 2
          ? 'copy_b2'
          : 'copy_b8';
    run1(h, name, n, common);
    return;
  }
  // several indices on one destination element need atomics
  const atomic = c.shape.some((len, i) => len > 1 && ds[i] === 0) ? 1 : 0;
  const name =
    s.dtype === 'f32'
      ? small
        ? 'accumulate_f32_i32'
        : 'accumulate_f32'
      : s.dtype === 'f64'
        ? 'accumulate_f64'
        : s.dtype === 'i32'
          ? 'accumulate_i32'
          : null;
  if (!name) throw new Error(`cuda backend: accumulating copy of ${s.dtype} (f32, f64 or i32 only)`);
  run1(h, name, n, [...common, atomic]);
}

export function causalMask(
  h: Host,
  x: DeviceBuffer,
  out: DeviceBuffer,
  rows: number,
  tq: number,
  tk: number,
  value: number,
): void {
  run1(h, 'causal_mask_f32', rows * tq * tk, [
    h.f(x, 'causal mask input'),
    h.f(out, 'causal mask output'),
    rows,
    tq,
    tk,
    value,
  ]);
}

export function siluGate(
  h: Host,
  y: DeviceBuffer,
  z: DeviceBuffer,
  bias: DeviceBuffer,
  out: DeviceBuffer,
  rows: number,
  cols: number,
): void {
  run1(h, 'silu_gate_f32', rows * cols, [
    h.f(y, 'siluGate y'),
    h.f(z, 'siluGate z'),
    h.f(bias, 'siluGate bias'),
    h.f(out, 'siluGate output'),
    rows,
    cols,
  ]);
}

export function siluGateBackward(
  h: Host,
  y: DeviceBuffer,
  z: DeviceBuffer,
  bias: DeviceBuffer,
  g: DeviceBuffer,
  gy: DeviceBuffer,
  gz: DeviceBuffer,
  rows: number,
  cols: number,
): void {
  run1(h, 'silu_gate_backward_f32', rows * cols, [
    h.f(y, 'siluGate y'),
    h.f(z, 'siluGate z'),
    h.f(bias, 'siluGate bias'),
    h.f(g, 'siluGate gradient'),
    h.f(gy, 'siluGate y gradient'),
    h.f(gz, 'siluGate z gradient'),
    rows,
    cols,
  ]);
}

export function dropout(h: Host, x: DeviceBuffer, out: DeviceBuffer, p: number, seed: number): void {
  const n = h.buf(x, 'dropout').length;
  if (n > 2 ** 32) throw new Error('cuda backend: dropout over more than 2^32 elements');
  run1(h, 'dropout_f32', n, [h.f(x, 'dropout input'), h.f(out, 'dropout output'), p, (seed | 0) >>> 0, n]);
}

export function adamw(
  h: Host,
  param: DeviceBuffer,
  grad: DeviceBuffer,
  m: DeviceBuffer,
  v: DeviceBuffer,
  p: AdamWParams,
): void {
  const n = h.buf(param, 'adamw param').length;
  // four elements per thread (the buffers are 256-byte aligned allocations)
  run1(h, 'adamw_f32', Math.max(1, Math.ceil(n / 4)), [
    h.f(param, 'adamw param'),
    h.f(grad, 'adamw grad'),
    h.f(m, 'adamw m'),
    h.f(v, 'adamw v'),
    p.lr,
    p.beta1,
    p.beta2,
    p.eps,
    1 - p.lr * p.weightDecay,
    1 - p.beta1 ** p.step,
    1 - p.beta2 ** p.step,
    n,
  ]);
}

export function adamwDevice(
  h: Host,
  param: DeviceBuffer,
  grad: DeviceBuffer,
  m: DeviceBuffer,
  v: DeviceBuffer,
  scalars: DeviceBuffer,
  rowAbs: DeviceBuffer | null,
  p: AdamWDeviceParams,
): void {
  const n = h.buf(param, 'adamwDevice param').length;
  const s = h.buf(scalars, 'adamwDevice scalars');
  if (s.dtype !== 'f64' || s.length < p.biasAt + 2)
    throw new Error(
      `cuda backend: adamwDevice scalars must be f64 with ${p.biasAt + 2} entries, got ${s.dtype} (${s.length})`,
    );
  run1(h, 'adamw_device_f32', n, [
    h.f(param, 'adamwDevice param'),
    h.f(grad, 'adamwDevice grad'),
    h.f(m, 'adamwDevice m'),
    h.f(v, 'adamwDevice v'),
    s.ptr,
    rowAbs ? h.f(rowAbs, 'adamwDevice rowAbs') : 0,
    Math.max(1, p.rowLen),
    p.biasAt,
    p.beta1,
    p.beta2,
    p.eps,
    p.weightDecay,
    n,
  ]);
}
/** out = f(g) * u (out f32 or 16 bits); with gKeep, uKeep (out's 16-bit dtype) also g and u rounded */
export function gatedAct(
  h: Host,
  op: UnaryOp,
  g: DeviceBuffer,
  u: DeviceBuffer,
  out: DeviceBuffer,
  gKeep: DeviceBuffer | null,
  uKeep: DeviceBuffer | null,
): void {
  const n = h.buf(g, 'gated activation').length;
  const o = h.buf(out, 'gated activation output');
  const ot = storage(o.dtype, 'gated activation output');
  const keep = gKeep !== null && uKeep !== null;
  if (
    keep &&
    (ot === 0 || h.buf(gKeep, 'kept g').dtype !== o.dtype || h.buf(uKeep, 'kept u').dtype !== o.dtype)
  )
    throw new Error('cuda backend: a gated activation keeps its inputs in the 16-bit dtype of its output');
  const x4 = n % 4 === 0;
  run1(h, x4 ? 'gated_act_x4' : 'gated_act_f32', x4 ? n / 4 : n, [
    h.f(g, 'gated activation g'),
    h.f(u, 'gated activation u'),
    o.ptr,
    ot,
    keep ? h.buf(gKeep, 'kept g').ptr : 0,
    keep ? h.buf(uKeep, 'kept u').ptr : 0,
    keep ? 1 : 0,
    UNARY_CODE[op],
    n,
  ]);
}

/**
 * gg = go u f'(g), gu = go f(g); g and u f32 or both in one 16-bit dtype (kept by gatedAct); gg and
 * gu f32 or both in one 16-bit dtype
 */
export function gatedActBackward(
  h: Host,
  op: UnaryOp,
  g: DeviceBuffer,
  u: DeviceBuffer,
  go: DeviceBuffer,
  gg: DeviceBuffer,
  gu: DeviceBuffer,
): void {
  const gb = h.buf(g, 'gated activation g');
  const ub = h.buf(u, 'gated activation u');
  if (gb.dtype !== ub.dtype)
    throw new Error(`cuda backend: gated activation g ${gb.dtype} and u ${ub.dtype} differ`);
  const ggb = h.buf(gg, 'gated activation g gradient');
  if (h.buf(gu, 'gated activation u gradient').dtype !== ggb.dtype)
    throw new Error('cuda backend: the gated activation gradients must share one dtype');
  const x4 = gb.length % 4 === 0;
  run1(h, x4 ? 'gated_act_backward_x4' : 'gated_act_backward_f32', x4 ? gb.length / 4 : gb.length, [
    gb.ptr,
    ub.ptr,
    storage(gb.dtype, 'gated activation g'),
    h.f(go, 'gated activation gradient'),
    ggb.ptr,
    h.buf(gu, 'gated activation u gradient').ptr,
    storage(ggb.dtype, 'gated activation g gradient'),
    UNARY_CODE[op],
    gb.length,
  ]);
}

/** v = y + D[col / headDim] x, out = v silu(z + bias) (out f32 or 16 bits); y, x, z (rows, cols) */
export function siluGateD(
  h: Host,
  y: DeviceBuffer,
  x: DeviceBuffer,
  D: DeviceBuffer,
  z: DeviceBuffer,
  bias: DeviceBuffer,
  out: DeviceBuffer,
  rows: number,
  cols: number,
  headDim: number,
  yKeep: DeviceBuffer | null = null,
  zKeep: DeviceBuffer | null = null,
): void {
  const o = h.buf(out, 'siluGateD output');
  const ot = storage(o.dtype, 'siluGateD output');
  const keep = yKeep !== null && zKeep !== null;
  if (
    keep &&
    (ot === 0 || h.buf(yKeep, 'kept y').dtype !== o.dtype || h.buf(zKeep, 'kept z').dtype !== o.dtype)
  )
    throw new Error('cuda backend: siluGateD keeps y and z in the 16-bit dtype of its output');
  const x4 = (rows * cols) % 4 === 0;
  run1(h, x4 ? 'silu_gate_d_x4' : 'silu_gate_d_f32', x4 ? (rows * cols) / 4 : rows * cols, [
    h.f(y, 'siluGateD y'),
    h.f(x, 'siluGateD x'),
    h.f(D, 'siluGateD D'),
    h.f(z, 'siluGateD z'),
    h.f(bias, 'siluGateD bias'),
    o.ptr,
    ot,
    keep ? h.buf(yKeep, 'kept y').ptr : 0,
    keep ? h.buf(zKeep, 'kept z').ptr : 0,
    keep ? 1 : 0,
    rows,
    cols,
    headDim,
  ]);
}

/**
 * gy = g silu(u), gx = gy D (the D term's part of x's gradient), gz = g v silu'(u), gD (cols /
 * headDim) = sum of gy x over rows and each head's columns: column sums per band of rows, then
 * summed over bands and heads (no atomics, the same result every run).
 */
export function siluGateDBackward(
  h: Host,
  y: DeviceBuffer,
  x: DeviceBuffer,
  D: DeviceBuffer,
  z: DeviceBuffer,
  bias: DeviceBuffer,
  g: DeviceBuffer,
  gy: DeviceBuffer,
  gx: DeviceBuffer,
  gz: DeviceBuffer,
  gD: DeviceBuffer,
  rows: number,
  cols: number,
  headDim: number,
): void {
  if (rows === 0 || cols === 0) {
    h.fill(gD, 0);
    return;
  }
  const { threads, colBlocks, rowsPerBlock, bands } = gateBands(h, rows, cols);
  const yb = h.buf(y, 'siluGateD y');
  const zb = h.buf(z, 'siluGateD z');
  if (yb.dtype !== zb.dtype)
    throw new Error(`cuda backend: siluGateD y ${yb.dtype} and z ${zb.dtype} differ`);
  const partial = h.scratch(bands * cols);
  k(h, 'silu_gate_d_backward_f32').launch([colBlocks, bands, 1], threads, 0, [
    yb.ptr,
    h.f(x, 'siluGateD x'),
    h.f(D, 'siluGateD D'),
    zb.ptr,
    storage(yb.dtype, 'siluGateD y'),
    h.f(bias, 'siluGateD bias'),
    h.f(g, 'siluGateD gradient'),
    h.f(gy, 'siluGateD y gradient'),
    h.f(gx, 'siluGateD x gradient'),
    h.f(gz, 'siluGateD z gradient'),
    partial.ptr,
    rows,
    cols,
    headDim,
    rowsPerBlock,
  ]);
  sumGateD(h, partial, gD, bands, cols, headDim);
  h.free(partial);
}

/**
 * The gate backward's grid: one thread per column (blocks of 256), bands of rows for about 8
 * blocks per multiprocessor (each band's column sums apart: no atomics).
 */
export function gateBands(
  h: Host,
  rows: number,
  cols: number,
): { threads: number; colBlocks: number; rowsPerBlock: number; bands: number } {
  const threads = 256;
  const colBlocks = Math.ceil(cols / threads);
  const bands0 = Math.max(1, Math.min(rows, Math.ceil((h.sms * 8) / colBlocks), 65535));
  const rowsPerBlock = Math.ceil(rows / bands0);
  return { threads, colBlocks, rowsPerBlock, bands: Math.ceil(rows / rowsPerBlock) };
}

/** gD (cols / headDim) = the band partials (bands, cols) summed over the bands, then each head's columns */
export function sumGateD(
  h: Host,
  partial: CudaBuffer,
  gD: DeviceBuffer,
  bands: number,
  cols: number,
  headDim: number,
): void {
  const colSums = h.scratch(cols);
  h.sumInto(partial.ptr, colSums.ptr, 1, bands, cols);
  h.sumInto(colSums.ptr, h.f(gD, 'siluGateD D gradient'), cols / headDim, headDim, 1);
  h.free(colSums);
}

/** out = (a + b) + c, dense f32 of n elements */
export function add3(h: Host, a: DeviceBuffer, b: DeviceBuffer, c: DeviceBuffer, out: DeviceBuffer): void {
  const n = h.buf(out, 'add3 output').length;
  for (const [what, t] of [
    ['a', a],
    ['b', b],
    ['c', c],
  ] as const)
    if (h.buf(t, `add3 ${what}`).length !== n)
      throw new Error(`cuda backend: add3 ${what} is not ${n} elements`);
  run1(h, 'add3_f32', n, [h.f(a, 'add3 a'), h.f(b, 'add3 b'), h.f(c, 'add3 c'), h.f(out, 'add3 output'), n]);
}
