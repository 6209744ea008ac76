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
  type DType,
  type UnaryOp,
} from '../backend.js';
import { moduleKernels, type Host } from './host.js';
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
} as const;

const { run1 } = moduleKernels('elementwise', ELEMENTWISE_SIGNATURES);

/** dtype codes of cast_any (elementwise.cu) */
const DTYPE_CODE: Record<DType, number> = { f32: 0, f64: 1, i32: 2, bf16: 3, f16: 4 };

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
    run1(h, 'unary_f32_to16', n, [
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

export function unaryBackward(
  h: Host,
  op: UnaryOp,
  x: DeviceBuffer,
  gy: DeviceBuffer,
  gx: DeviceBuffer,
): void {
  const n = h.buf(x, op).length;
  run1(h, 'unary_backward_f32', n, [
    h.f(x, `${op} input`),
    h.f(gy, `${op} gradient`),
    h.f(gx, `${op} input gradient`),
    UNARY_CODE[op],
    n,
  ]);
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
