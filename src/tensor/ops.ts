// The op set, enumerated in one place. Each op checks shapes (errors name the op and the
// shapes), allocates its outputs, calls one or a few backend kernels, and records its backward
// pass beside the forward one.

import type {
  AdamWDeviceParams,
  AdamWFusedParams,
  AdamWParams,
  BinaryOp,
  DType,
  MatmulParams,
  UnaryOp,
} from '../backends/backend.js';
import {
  empty,
  full,
  gradHooksActive,
  pendingGrad,
  isGradEnabled,
  keep,
  noGrad,
  record,
  shapeStr,
  sizeOf,
  stridesOf,
  Tensor,
  zeros,
} from './tensor.js';

// ---- helpers --------------------------------------------------------------------------------

function fail(op: string, msg: string): never {
  throw new Error(`${op}: ${msg}`);
}

function isFloat(dtype: DType): boolean {
  return dtype === 'f32' || dtype === 'f64';
}

function checkFloat(op: string, ...ts: Tensor[]): void {
  for (const t of ts)
    if (!isFloat(t.dtype)) fail(op, `expected a float tensor, got ${t.dtype} ${shapeStr(t.shape)}`);
}

function sameBackend(op: string, ...ts: Tensor[]): void {
  const b = ts[0].backend;
  for (const t of ts) if (t.backend !== b) fail(op, 'tensors live on different backends');
}

function normAxis(op: string, axis: number, ndim: number): number {
  const a = axis < 0 ? axis + ndim : axis;
  if (a < 0 || a >= ndim) fail(op, `axis ${axis} out of range for ${ndim} dimensions`);
  return a;
}

function like(t: Tensor, shape: readonly number[] = t.shape): Tensor {
  return empty(shape, t.dtype, t.backend);
}

/** What the backward of a product reads: b for a's gradient, a for b's. */
function crossSaves(a: Tensor, b: Tensor): Tensor[] {
  return [...(a.requiresGrad ? [b] : []), ...(b.requiresGrad ? [a] : [])];
}

/** (outer, n, inner) around an axis */
function around(shape: readonly number[], axis: number): [number, number, number] {
  return [sizeOf(shape.slice(0, axis)), shape[axis], sizeOf(shape.slice(axis + 1))];
}

// ---- broadcasting ---------------------------------------------------------------------------

export function broadcastShapes(op: string, a: readonly number[], b: readonly number[]): number[] {
  const n = Math.max(a.length, b.length);
  const out = new Array<number>(n);
  for (let i = 0; i < n; i++) {
    const da = a[a.length - n + i] ?? 1;
    const db = b[b.length - n + i] ?? 1;
    if (da !== db && da !== 1 && db !== 1)
      fail(op, `shapes ${shapeStr(a)} and ${shapeStr(b)} do not broadcast`);
    out[i] = da === 1 ? db : da;
  }
  return out;
}

function broadcastStrides(shape: readonly number[], target: readonly number[]): number[] {
  const s = stridesOf(shape);
  const off = target.length - shape.length;
  return target.map((_, i) => (i < off || shape[i - off] === 1 ? 0 : s[i - off]));
}

/**
 * Sum g over the axes along which `shape` was broadcast to g's shape. Adjacent broadcast axes
 * are summed in one pass (a bias's gradient over (B, T, C) is one reduction over B * T rows).
 */
export function sumToShape(g: Tensor, shape: readonly number[]): Tensor {
  if (g.shape.length === shape.length && g.shape.every((d, i) => d === shape[i])) return g;
  const off = g.shape.length - shape.length;
  const want = g.shape.map((_, i) => (i < off ? 1 : shape[i - off]));
  for (let i = 0; i < g.ndim; i++)
    if (want[i] !== 1 && want[i] !== g.shape[i])
      fail('sumToShape', `cannot sum ${shapeStr(g.shape)} to ${shapeStr(shape)}`);
  // merge runs of axes that sum away (size-1 axes join them freely)
  const merged: number[] = [];
  const axes: number[] = [];
  for (let i = 0; i < g.ndim;) {
    if (want[i] !== 1) {
      merged.push(g.shape[i++]);
      continue;
    }
    let n = 1;
    while (i < g.ndim && want[i] === 1) n *= g.shape[i++];
    if (n > 1) axes.push(merged.length);
    merged.push(n);
  }
  if (axes.length === 0) return reshape(g, shape);
  return reshape(sum(reshape(g, merged), axes, true), shape);
}

// ---- elementwise ----------------------------------------------------------------------------

function binary(op: BinaryOp, a: Tensor, b: Tensor): Tensor {
  checkFloat(op, a, b);
  sameBackend(op, a, b);
  const shape = broadcastShapes(op, a.shape, b.shape);
  const out = empty(shape, a.dtype, a.backend);
  a.backend.binary(
    op,
    a.buffer,
    broadcastStrides(a.shape, shape),
    b.buffer,
    broadcastStrides(b.shape, shape),
    out.buffer,
    shape,
  );
  return out;
}

export function add(a: Tensor, b: Tensor): Tensor {
  return record(binary('add', a, b), 'add', [a, b], [], (g) => [
    a.requiresGrad ? sumToShape(g, a.shape) : null,
    b.requiresGrad ? sumToShape(g, b.shape) : null,
  ]);
}

/**
 * (a + b) + c for three tensors of one shape (a block's two residual adds): one pass where the
 * backend has it, the same values as add(add(a, b), c).
 */
export function add3(a: Tensor, b: Tensor, c: Tensor): Tensor {
  const be = a.backend;
  const same = (t: Tensor) =>
    t.dtype === 'f32' && t.backend === be && t.ndim === a.ndim && t.shape.every((d, i) => d === a.shape[i]);
  if (!(be.add3 && same(a) && same(b) && same(c) && fusedGlue('MOHAWK_FUSED_ADD'))) return add(add(a, b), c);
  const out = like(a);
  be.add3(a.buffer, b.buffer, c.buffer, out.buffer);
  return record(out, 'add3', [a, b, c], [], (g) => [g, g, g]);
}

export function sub(a: Tensor, b: Tensor): Tensor {
  return record(binary('sub', a, b), 'sub', [a, b], [], (g) => [
    a.requiresGrad ? sumToShape(g, a.shape) : null,
    b.requiresGrad ? sumToShape(neg(g), b.shape) : null,
  ]);
}

export function mul(a: Tensor, b: Tensor): Tensor {
  return record(binary('mul', a, b), 'mul', [a, b], crossSaves(a, b), (g) => [
    a.requiresGrad ? sumToShape(mul(g, b), a.shape) : null,
    b.requiresGrad ? sumToShape(mul(g, a), b.shape) : null,
  ]);
}

export function div(a: Tensor, b: Tensor): Tensor {
  return record(binary('div', a, b), 'div', [a, b], [a, b], (g) => [
    a.requiresGrad ? sumToShape(div(g, b), a.shape) : null,
    // d(a/b)/db = -a / b^2
    b.requiresGrad ? sumToShape(neg(div(mul(g, a), square(b))), b.shape) : null,
  ]);
}

/** Elementwise maximum (no gradient: used for masks and clamps). */
export function maximum(a: Tensor, b: Tensor): Tensor {
  return binary('maximum', a, b);
}

/** 1 where a == b, else 0 (no gradient). */
export function equal(a: Tensor, b: Tensor): Tensor {
  return binary('eq', a, b);
}

function unary(op: UnaryOp, x: Tensor, alpha = 1, beta = 0): Tensor {
  checkFloat(op, x);
  const out = like(x);
  x.backend.unary(op, x.buffer, out.buffer, alpha, beta);
  if (op === 'identity' || op === 'neg') {
    // constant derivative: the gradient is a scaled copy, and x need not be kept
    const factor = op === 'neg' ? -alpha : alpha;
    return record(out, op, [x], [], (g) => {
      const gx = like(g);
      g.backend.unary('identity', g.buffer, gx.buffer, factor, 0);
      return [gx];
    });
  }
  return record(out, op, [x], [x], (g) => {
    const gx = like(x);
    x.backend.unaryBackward(op, x.buffer, g.buffer, gx.buffer);
    if (alpha !== 1) {
      x.backend.unary('identity', gx.buffer, gx.buffer, alpha, 0);
    }
    return [gx];
  });
}

/**
 * f(x) stored in 16 bits, rounded in the same pass: an activation that feeds a 16-bit product
 * (the MLP under autocast). The gradient flows back in x's dtype.
 */
export function unaryTo(op: UnaryOp, x: Tensor, dtype: 'bf16' | 'f16'): Tensor {
  if (x.dtype !== 'f32') fail(op, `a 16-bit result needs an f32 input, got ${x.dtype}`);
  const out = empty(x.shape, dtype, x.backend);
  if (x.backend.unaryKeep16 && fusedGlue('MOHAWK_FUSED_MLP') && isGradEnabled() && x.requiresGrad) {
    // the backward reads a 16-bit copy of x written in the same pass: x itself is not kept
    const xk = empty(x.shape, dtype, x.backend);
    x.backend.unaryKeep16(op, x.buffer, out.buffer, xk.buffer);
    return record(out, op, [x], [xk], (g) => {
      const gg = g.dtype === 'f32' ? g : cast(g, 'f32');
      const gx = like(x);
      x.backend.unaryBackward(op, xk.buffer, gg.buffer, gx.buffer);
      return [gx];
    });
  }
  x.backend.unary(op, x.buffer, out.buffer, 1, 0);
  return record(out, op, [x], [x], (g) => {
    const gg = g.dtype === x.dtype ? g : cast(g, x.dtype);
    const gx = like(x);
    x.backend.unaryBackward(op, x.buffer, gg.buffer, gx.buffer);
    return [gx];
  });
}

/**
 * Whether a fused glue kernel may be used (the backend must also have it): on unless
 * MOHAWK_FUSED_GLUE=0 (all of them) or its own switch (one of `name`'s, listed in docs/cuda.md)
 * is 0, so one run can measure before and after.
 */
export function fusedGlue(
  name:
    | 'MOHAWK_FUSED_GATE'
    | 'MOHAWK_FUSED_MLP'
    | 'MOHAWK_FUSED_CONV'
    | 'MOHAWK_FUSED_ADD'
    | 'MOHAWK_MIXER_INPLACE'
    | 'MOHAWK_NORM_INPLACE'
    | 'MOHAWK_NORM_CAST16'
    | 'MOHAWK_FUSED_ADD_NORM'
    | 'MOHAWK_SSD_ADD_GX'
    | 'MOHAWK_FUSED_KL',
): boolean {
  return process.env.MOHAWK_FUSED_GLUE !== '0' && process.env[name] !== '0';
}

/**
 * The gated MLP's product f(g) * u (SwiGLU with silu), g and u of one shape. With `dtype` (under
 * autocast, feeding down_proj) the result is stored in 16 bits; where the backend fuses it, one
 * kernel each way, and the backward reads 16-bit copies of g and u written in the same pass.
 * Otherwise the composed ops.
 */
export function gatedActivation(
  op: UnaryOp,
  g: Tensor,
  u: Tensor,
  dtype: 'bf16' | 'f16' | null = null,
  /**
   * the gradients of g and u in `dtype` too, where the backend fuses the product: only for g and u
   * that nothing reads but this op and that come from products without a bias (the gradients then
   * only feed 16-bit products, which would round them anyway)
   */
  gradsInDtype = false,
): Tensor {
  checkFloat(op, g, u);
  sameBackend(op, g, u);
  if (g.ndim !== u.ndim || g.shape.some((d, i) => d !== u.shape[i]))
    fail(op, `gate ${shapeStr(g.shape)} and up ${shapeStr(u.shape)} differ`);
  const be = g.backend;
  if (!(
    be.gatedAct &&
    be.gatedActBackward &&
    g.dtype === 'f32' &&
    u.dtype === 'f32' &&
    fusedGlue('MOHAWK_FUSED_MLP')
  ))
    return mul(unary(op, g), u);
  const out = empty(g.shape, dtype ?? 'f32', be);
  const recording = isGradEnabled() && (g.requiresGrad || u.requiresGrad);
  const keep16 = recording && dtype !== null;
  const gk = keep16 ? empty(g.shape, dtype, be) : null;
  const uk = keep16 ? empty(u.shape, dtype, be) : null;
  be.gatedAct(op, g.buffer, u.buffer, out.buffer, gk?.buffer ?? null, uk?.buffer ?? null);
  const gs = gk ?? g;
  const us = uk ?? u;
  return record(out, op === 'silu' ? 'swiglu' : `gated ${op}`, [g, u], [gs, us], (go) => {
    const o = go.dtype === 'f32' ? go : cast(go, 'f32');
    const gdt = gradsInDtype && dtype ? dtype : g.dtype;
    const gg = empty(g.shape, gdt, be);
    const gu = empty(u.shape, gdt, be);
    be.gatedActBackward!(op, gs.buffer, us.buffer, o.buffer, gg.buffer, gu.buffer);
    return [g.requiresGrad ? gg : null, u.requiresGrad ? gu : null];
  });
}

/** alpha * x + beta */
export function affine(x: Tensor, alpha: number, beta = 0): Tensor {
  return unary('identity', x, alpha, beta);
}
export const scale = (x: Tensor, alpha: number): Tensor => affine(x, alpha, 0);
export const addScalar = (x: Tensor, beta: number): Tensor => affine(x, 1, beta);
export const neg = (x: Tensor): Tensor => unary('neg', x);
export const exp = (x: Tensor): Tensor => unary('exp', x);
export const log = (x: Tensor): Tensor => unary('log', x);
export const sqrt = (x: Tensor): Tensor => unary('sqrt', x);
export const rsqrt = (x: Tensor): Tensor => unary('rsqrt', x);
export const tanh = (x: Tensor): Tensor => unary('tanh', x);
export const sigmoid = (x: Tensor): Tensor => unary('sigmoid', x);
export const softplus = (x: Tensor): Tensor => unary('softplus', x);
export const silu = (x: Tensor): Tensor => unary('silu', x);
export const relu = (x: Tensor): Tensor => unary('relu', x);
/** exact gelu, 0.5 x (1 + erf(x / sqrt 2)) */
export const gelu = (x: Tensor): Tensor => unary('gelu', x);
/** the tanh approximation (gelu_new in HF configs) */
export const geluNew = (x: Tensor): Tensor => unary('geluNew', x);
export const square = (x: Tensor): Tensor => unary('square', x);
export const abs = (x: Tensor): Tensor => unary('abs', x);
export const reciprocal = (x: Tensor): Tensor => unary('reciprocal', x);

/** Convert to another dtype (gradient converted back). */
export function cast(x: Tensor, dtype: DType): Tensor {
  if (x.dtype === dtype) return x.view(x.shape);
  const out = empty(x.shape, dtype, x.backend);
  x.backend.cast(x.buffer, out.buffer);
  return record(out, 'cast', [x], [], (g) => [cast(g, x.dtype)]);
}

// ---- reductions -----------------------------------------------------------------------------

function reduceAxes(op: string, x: Tensor, axes: number[] | undefined): number[] {
  const all = axes ?? x.shape.map((_, i) => i);
  return [...new Set(all.map((a) => normAxis(op, a, x.ndim)))].sort((p, q) => p - q);
}

function reducedShape(shape: readonly number[], axes: number[], keepdim: boolean): number[] {
  const out: number[] = [];
  shape.forEach((d, i) => {
    if (axes.includes(i)) {
      if (keepdim) out.push(1);
    } else out.push(d);
  });
  return out;
}

/** Sum over axes (all by default). */
export function sum(x: Tensor, axes?: number[], keepdim = false): Tensor {
  checkFloat('sum', x);
  const ax = reduceAxes('sum', x, axes);
  let cur = x;
  const curShape = [...x.shape];
  for (const a of ax) {
    const [outer, n, inner] = around(curShape, a);
    curShape[a] = 1;
    const next = empty(curShape, x.dtype, x.backend);
    x.backend.reduce('sum', cur.buffer, next.buffer, outer, n, inner);
    if (cur !== x) cur.dispose();
    cur = next;
  }
  const outShape = reducedShape(x.shape, ax, keepdim);
  const out = cur === x ? x.view(outShape) : cur.view(outShape);
  if (cur !== x) cur.dispose();
  return record(out, 'sum', [x], [], (g) => [expand(g.view(reducedShape(x.shape, ax, true)), x.shape)]);
}

export function mean(x: Tensor, axes?: number[], keepdim = false): Tensor {
  const ax = reduceAxes('mean', x, axes);
  const n = ax.reduce((acc, a) => acc * x.shape[a], 1);
  const s = sum(x, ax, keepdim);
  const out = scale(s, 1 / n);
  return out;
}

/** Max over one axis; the gradient goes to every position equal to the max. */
export function max(x: Tensor, axis: number, keepdim = false): Tensor {
  checkFloat('max', x);
  const a = normAxis('max', axis, x.ndim);
  const [outer, n, inner] = around(x.shape, a);
  const keptShape = reducedShape(x.shape, [a], true);
  const out = empty(keptShape, x.dtype, x.backend);
  x.backend.reduce('max', x.buffer, out.buffer, outer, n, inner);
  const result = out.view(reducedShape(x.shape, [a], keepdim));
  out.dispose();
  return record(result, 'max', [x], [x, result], (g) => {
    const mask = equal(x, result.view(keptShape));
    return [mul(mask, g.view(keptShape))];
  });
}

// ---- shape ----------------------------------------------------------------------------------

export function reshape(x: Tensor, shape: readonly number[]): Tensor {
  const s = [...shape];
  const inferred = s.indexOf(-1);
  if (inferred >= 0) {
    const known = sizeOf(s.filter((d) => d !== -1));
    s[inferred] = known === 0 ? 0 : x.size / known;
  }
  if (sizeOf(s) !== x.size || s.some((d) => !Number.isInteger(d))) {
    fail('reshape', `cannot reshape ${shapeStr(x.shape)} to ${shapeStr(shape)}`);
  }
  return record(x.view(s), 'reshape', [x], [], (g) => [g.view(x.shape)]);
}

export function permute(x: Tensor, dims: number[]): Tensor {
  if (dims.length !== x.ndim || new Set(dims).size !== dims.length) {
    fail('permute', `dims [${dims}] for shape ${shapeStr(x.shape)}`);
  }
  const d = dims.map((a) => normAxis('permute', a, x.ndim));
  const shape = d.map((a) => x.shape[a]);
  const out = empty(shape, x.dtype, x.backend);
  const srcStrides = stridesOf(x.shape);
  x.backend.copyStrided(
    x.buffer,
    0,
    d.map((a) => srcStrides[a]),
    out.buffer,
    0,
    stridesOf(shape),
    shape,
    false,
  );
  const inverse = new Array<number>(d.length);
  d.forEach((a, i) => (inverse[a] = i));
  return record(out, 'permute', [x], [], (g) => [permute(g, inverse)]);
}

export function transpose(x: Tensor, a = -2, b = -1): Tensor {
  const dims = x.shape.map((_, i) => i);
  const i = normAxis('transpose', a, x.ndim);
  const j = normAxis('transpose', b, x.ndim);
  [dims[i], dims[j]] = [dims[j], dims[i]];
  return permute(x, dims);
}

/** x[start:end] along one axis */
export function slice(x: Tensor, axis: number, start: number, end: number): Tensor {
  const a = normAxis('slice', axis, x.ndim);
  if (!(0 <= start && start <= end && end <= x.shape[a])) {
    fail('slice', `range [${start}, ${end}) outside axis ${a} of ${shapeStr(x.shape)}`);
  }
  const shape = [...x.shape];
  shape[a] = end - start;
  const out = empty(shape, x.dtype, x.backend);
  const st = stridesOf(x.shape);
  x.backend.copyStrided(x.buffer, start * st[a], st, out.buffer, 0, stridesOf(shape), shape, false);
  return record(
    out,
    'slice',
    [x],
    [],
    (g) => {
      const gx = zeros(x.shape, g.dtype, g.backend);
      g.backend.copyStrided(g.buffer, 0, stridesOf(shape), gx.buffer, start * st[a], st, shape, false);
      return [gx];
    },
    // several slices of one tensor (split) write into one gradient buffer
    {
      accumulateInto: (g, into, accumulate) =>
        g.backend.copyStrided(
          g.buffer,
          0,
          stridesOf(shape),
          into.buffer,
          start * st[a],
          st,
          shape,
          accumulate,
        ),
      region: { axis: a, start, end },
    },
  );
}

export function concat(xs: Tensor[], axis: number): Tensor {
  if (xs.length === 0) fail('concat', 'no tensors');
  const a = normAxis('concat', axis, xs[0].ndim);
  for (const t of xs) {
    if (
      t.ndim !== xs[0].ndim ||
      t.shape.some((d, i) => i !== a && d !== xs[0].shape[i]) ||
      t.dtype !== xs[0].dtype
    ) {
      fail('concat', `shapes ${xs.map((q) => shapeStr(q.shape)).join(', ')} differ off axis ${a}`);
    }
  }
  sameBackend('concat', ...xs);
  const shape = [...xs[0].shape];
  shape[a] = xs.reduce((acc, t) => acc + t.shape[a], 0);
  const out = empty(shape, xs[0].dtype, xs[0].backend);
  const st = stridesOf(shape);
  let off = 0;
  const offsets: number[] = [];
  for (const t of xs) {
    offsets.push(off);
    t.backend.copyStrided(t.buffer, 0, stridesOf(t.shape), out.buffer, off * st[a], st, [...t.shape], false);
    off += t.shape[a];
  }
  return record(out, 'concat', xs, [], (g) =>
    xs.map((t, i) => (t.requiresGrad ? slice(g, a, offsets[i], offsets[i] + t.shape[a]) : null)),
  );
}

export function split(x: Tensor, sizes: number[], axis: number): Tensor[] {
  const a = normAxis('split', axis, x.ndim);
  const total = sizes.reduce((p, q) => p + q, 0);
  if (total !== x.shape[a])
    fail('split', `sizes [${sizes}] do not add up to ${x.shape[a]} (axis ${a} of ${shapeStr(x.shape)})`);
  const out: Tensor[] = [];
  let off = 0;
  for (const s of sizes) {
    out.push(slice(x, a, off, off + s));
    off += s;
  }
  return out;
}

/** Broadcast to a larger shape (a copy; gradient summed back). */
export function expand(x: Tensor, shape: readonly number[]): Tensor {
  const target = broadcastShapes('expand', x.shape, shape);
  if (target.length !== shape.length || target.some((d, i) => d !== shape[i])) {
    fail('expand', `cannot expand ${shapeStr(x.shape)} to ${shapeStr(shape)}`);
  }
  const out = empty(shape, x.dtype, x.backend);
  x.backend.copyStrided(
    x.buffer,
    0,
    broadcastStrides(x.shape, shape),
    out.buffer,
    0,
    stridesOf(shape),
    [...shape],
    false,
  );
  return record(out, 'expand', [x], [], (g) => [sumToShape(g, x.shape)]);
}

// ---- linear algebra -------------------------------------------------------------------------

export interface MatmulOptions {
  transA?: boolean;
  transB?: boolean;
}

/**
 * op(a) @ op(b) over the last two axes, with leading (batch) axes equal on both sides or absent
 * on one (broadcast). a is (..., m, k) or (..., k, m) when transA; b is (..., k, n) or (..., n, k).
 */
export function matmul(a: Tensor, b: Tensor, opts: MatmulOptions = {}): Tensor {
  return product(a, b, opts, null);
}

/**
 * A linear layer: x (..., in) @ weight (out, in)^T + bias (out), the bias added by the product
 * itself where the backend can (a GEMM epilogue) instead of by a separate pass.
 */
export function linear(x: Tensor, weight: Tensor, bias: Tensor | null): Tensor {
  if (weight.ndim !== 2) fail('linear', `weight must be (out, in), got ${shapeStr(weight.shape)}`);
  if (bias) {
    checkFloat('linear', bias);
    checkVector('linear', bias, weight.shape[0], 'bias');
  }
  return product(x, weight, { transB: true }, bias);
}

function product(a: Tensor, b: Tensor, opts: MatmulOptions, bias: Tensor | null): Tensor {
  // mixed precision: f32 operands become bf16 (through the graph), the product accumulates in f32
  const lowA = a.dtype === 'bf16' || a.dtype === 'f16';
  const lowB = b.dtype === 'bf16' || b.dtype === 'f16';
  if (
    autocastDtype &&
    (a.dtype === 'f32' || b.dtype === 'f32') &&
    (a.dtype === 'f32' || lowA) &&
    (b.dtype === 'f32' || lowB)
  ) {
    return matmulImpl(
      a.dtype === 'f32' ? autocastOperand(a, autocastDtype) : a,
      b.dtype === 'f32' ? autocastOperand(b, autocastDtype) : b,
      opts,
      'f32',
      bias,
    );
  }
  if (lowA || lowB) {
    if (a.dtype !== b.dtype)
      fail('matmul', `dtypes ${a.dtype} and ${b.dtype} differ (16-bit operands need autocast)`);
    return matmulImpl(a, b, opts, 'f32', bias);
  }
  return matmulImpl(a, b, opts, a.dtype, bias);
}

let autocastDtype: 'bf16' | 'f16' | null = null;

// The 16-bit copy of an activation that feeds several products (a LayerNorm output read by
// q, k, v and the MLP) is made once. Only outputs of ops are memoized (`derived`), never
// parameters, caches or other tensors that are written in place.
const castMemo = new WeakMap<Tensor, Tensor>();

/**
 * 16-bit copies of parameters that do not change while they are used (a frozen teacher, a model
 * generating text): each is made the first time an autocast product reads it, then reused, so
 * tables that never enter a product (embeddings) are not copied. `dispose` frees them.
 */
export class ParameterCasts {
  private readonly candidates: Set<Tensor>;
  private readonly made = new Map<Tensor, Tensor>();

  constructor(
    params: Iterable<Tensor>,
    readonly dtype: 'bf16' | 'f16',
  ) {
    this.candidates = new Set([...params].filter((p) => p.dtype === 'f32'));
  }

  /** the copy of p (made now if needed), or undefined when p is not one of the parameters */
  get(p: Tensor): Tensor | undefined {
    if (!this.candidates.has(p)) return undefined;
    let c = this.made.get(p);
    if (!c) {
      c = noGrad(() => keep(cast(p, this.dtype)));
      this.made.set(p, c);
    }
    return c;
  }

  /** how many copies exist */
  get size(): number {
    return this.made.size;
  }

  dispose(): void {
    for (const c of this.made.values()) c.dispose();
    this.made.clear();
  }
}

let castParams: ParameterCasts | null = null;

export function castParameters(params: Iterable<Tensor>, dtype: 'bf16' | 'f16'): ParameterCasts {
  return new ParameterCasts(params, dtype);
}

/**
 * Run fn with autocast products reading the 16-bit copies of `casts` instead of casting those
 * parameters on every call (not for a parameter that fn trains: its gradient needs the cast).
 */
export function withCastParameters<T>(casts: ParameterCasts | null, fn: () => T): T {
  const prev = castParams;
  castParams = casts;
  try {
    return fn();
  } finally {
    castParams = prev;
  }
}

/**
 * 16-bit copies of trained f32 parameters, kept equal to their rounding by the optimizer that
 * updates them (AdamW's fused step writes each updated weight's copy in the same pass, see
 * src/train/optimizer.ts): an autocast product reads the copy instead of casting the parameter
 * every step, and records the cast's backward, so the gradient reaches the f32 parameter as
 * through `cast`. A copy is made (a cast) the first time a product reads its parameter, unless
 * the set is sealed (a captured update writes only the copies that existed when it was
 * captured). Anything else that writes a parameter must `clear()` the copies.
 */
export class WeightCopies {
  private readonly made = new Map<Tensor, Tensor>();
  private sealed = false;

  constructor(
    params: Iterable<Tensor>,
    readonly dtype: 'bf16' | 'f16',
    private readonly candidates = new Set([...params].filter((p) => p.dtype === 'f32')),
  ) {}

  /** p's copy (made now when p is one of the parameters and the set is not sealed), else undefined */
  take(p: Tensor): Tensor | undefined {
    let c = this.made.get(p);
    if (!c && !this.sealed && this.candidates.has(p)) {
      c = noGrad(() => keep(cast(p, this.dtype)));
      this.made.set(p, c);
    }
    return c;
  }

  /** p's copy if one exists (what the optimizer writes) */
  get(p: Tensor): Tensor | undefined {
    return this.made.get(p);
  }

  /** no new copies from now on (products of other parameters cast as before) */
  seal(): void {
    this.sealed = true;
  }

  /** how many copies exist */
  get size(): number {
    return this.made.size;
  }

  /** drop every copy (the parameters were written by something other than the optimizer) */
  clear(): void {
    for (const c of this.made.values()) c.dispose();
    this.made.clear();
    this.sealed = false;
  }

  dispose(): void {
    this.clear();
  }
}

let weightCopies: WeightCopies | null = null;

/** Run fn with autocast products of the parameters of `copies` reading their 16-bit copies. */
export function withWeightCopies<T>(copies: WeightCopies | null, fn: () => T): T {
  const prev = weightCopies;
  weightCopies = copies;
  try {
    return fn();
  } finally {
    weightCopies = prev;
  }
}

/** Set the weight copies for every product from now on (null: none), as setAutocast. */
export function setWeightCopies(copies: WeightCopies | null): void {
  weightCopies = copies;
}

/**
 * x in 16 bits from the weight copies of `withWeightCopies` (a view that records the cast's
 * backward), or null when x has none.
 */
export function weightCopy(x: Tensor, dtype: 'bf16' | 'f16'): Tensor | null {
  if (!weightCopies || weightCopies.dtype !== dtype || x.dtype !== 'f32') return null;
  const c = weightCopies.take(x);
  if (!c) return null;
  return record(c.view(c.shape), 'cast', [x], [], (g) => [cast(g, x.dtype)]);
}

/** x in the autocast dtype: a parameter's cached copy, an op output's memoized cast, or a new cast */
export function autocastOperand(x: Tensor, dtype: 'bf16' | 'f16'): Tensor {
  const copy = weightCopy(x, dtype);
  if (copy) return copy;
  if (castParams && castParams.dtype === dtype && !(isGradEnabled() && x.requiresGrad)) {
    const c = castParams.get(x);
    if (c) return c;
  }
  // only op outputs are memoized: parameters, caches and optimizer state change in place
  if (!x.derived) return cast(x, dtype);
  const c = castMemo.get(x);
  const recording = isGradEnabled() && x.requiresGrad;
  if (c && !c.disposed && c.dtype === dtype && (c.node !== null) === recording) return c;
  const out = cast(x, dtype);
  castMemo.set(x, out);
  return out;
}

/** Run fn with matmuls in 16-bit operands and f32 accumulation (mixed precision). */
export function autocast<T>(dtype: 'bf16' | 'f16' | null, fn: () => T): T {
  const prev = autocastDtype;
  autocastDtype = dtype;
  try {
    return fn();
  } finally {
    autocastDtype = prev;
  }
}

/** The 16-bit dtype of autocast now, or null. */
export function getAutocast(): 'bf16' | 'f16' | null {
  return autocastDtype;
}

/** Set mixed precision for every matmul from now on (null turns it off). */
export function setAutocast(dtype: 'bf16' | 'f16' | null): void {
  autocastDtype = dtype;
}

/** The product; a 16-bit product has an f32 result. `bias` (n) needs b without batch axes. */
function matmulImpl(
  a: Tensor,
  b: Tensor,
  opts: MatmulOptions,
  outDtype: DType,
  bias: Tensor | null = null,
  into: Tensor | null = null,
  /** with `into`: add the product to what it holds (beta = 1) */
  accumulate = false,
): Tensor {
  const transA = opts.transA ?? false;
  const transB = opts.transB ?? false;
  sameBackend('matmul', a, b);
  if (a.dtype !== b.dtype) fail('matmul', `dtypes ${a.dtype} and ${b.dtype} differ`);
  if (a.ndim < 2 || b.ndim < 2)
    fail('matmul', `operands need 2+ dimensions, got ${shapeStr(a.shape)} and ${shapeStr(b.shape)}`);
  const [ar, ac] = a.shape.slice(-2);
  const [br, bc] = b.shape.slice(-2);
  const m = transA ? ac : ar;
  const k = transA ? ar : ac;
  const kb = transB ? bc : br;
  const n = transB ? br : bc;
  if (k !== kb) {
    fail(
      'matmul',
      `inner dimensions differ: ${shapeStr(a.shape)}${transA ? 'ᵀ' : ''} @ ${shapeStr(b.shape)}${transB ? 'ᵀ' : ''}`,
    );
  }
  const aBatch = a.shape.slice(0, -2);
  const bBatch = b.shape.slice(0, -2);
  let batchShape: number[];
  let batch: number;
  let mm = m;
  let strideA = m * k;
  let strideB = k * n;
  if (bBatch.length === 0 && !transA) {
    // fold a's batch axes into its rows: one large product
    batchShape = aBatch;
    batch = 1;
    mm = m * sizeOf(aBatch);
  } else if (bBatch.length === 0) {
    batchShape = aBatch;
    batch = sizeOf(aBatch);
    strideB = 0;
  } else if (aBatch.length === 0) {
    batchShape = bBatch;
    batch = sizeOf(bBatch);
    strideA = 0;
  } else {
    if (aBatch.length !== bBatch.length || aBatch.some((d, i) => d !== bBatch[i])) {
      fail('matmul', `batch axes differ: ${shapeStr(a.shape)} @ ${shapeStr(b.shape)}`);
    }
    batchShape = aBatch;
    batch = sizeOf(aBatch);
  }
  if (bias) {
    sameBackend('linear', a, bias);
    if (bias.dtype !== outDtype) fail('linear', `bias is ${bias.dtype}, the product ${outDtype}`);
    if (bBatch.length !== 0) fail('linear', `weight ${shapeStr(b.shape)} has batch axes`);
  }
  const outShape = [...batchShape, m, n];
  if (into && (into.dtype !== outDtype || into.size !== sizeOf(outShape)))
    fail(
      'matmul',
      `cannot write ${shapeStr(outShape)} ${outDtype} into ${shapeStr(into.shape)} ${into.dtype}`,
    );
  const out = into ?? empty(outShape, outDtype, a.backend);
  a.backend.matmul(
    a.buffer,
    b.buffer,
    out.buffer,
    {
      batch,
      m: mm,
      n,
      k,
      transA,
      transB,
      strideA,
      strideB,
      strideC: mm * n,
      alpha: 1,
      beta: into && accumulate ? 1 : 0,
    },
    bias?.buffer ?? null,
  );
  if (into) return into; // a gradient written in place (weightGradInto, pendingGrad): no graph
  const inputs = bias ? [a, b, bias] : [a, b];
  return record(out, bias ? 'linear' : 'matmul', inputs, crossSaves(a, b), (g) => {
    // C = op(A) op(B): dA from g op(B)^T, dB from op(A)^T g, then summed over broadcast batches.
    // With 16-bit operands the f32 gradient is rounded once for both products; a bias's gradient
    // (the f32 sums of g over its rows) then comes from the same pass where the backend fuses it.
    const low = a.dtype !== g.dtype && (a.dtype === 'bf16' || a.dtype === 'f16');
    const fused =
      low && bias?.requiresGrad && (a.requiresGrad || b.requiresGrad)
        ? castWithBiasGrad(g, a.dtype as 'bf16' | 'f16')
        : null;
    const g16 = fused ? fused[0] : low ? cast(g, a.dtype) : g;
    const gBias = fused ? fused[1] : null;
    let ga: Tensor | null = null;
    let gb: Tensor | null = null;
    // where another consumer's gradient of a came first (two products reading one norm output),
    // the product adds into it (beta = 1) instead of autograd adding a fresh one in a pass
    const pending =
      a.requiresGrad &&
      !transA &&
      b.ndim === 2 &&
      (g16.dtype === 'bf16' || g16.dtype === 'f16') &&
      gradAccumulate()
        ? pendingGrad(a)
        : null;
    if (pending) {
      matmulImpl(g16, b, { transB: !transB }, 'f32', null, pending, true);
    } else if (a.requiresGrad) {
      const full = transA
        ? matmul(b, g16, { transA: transB, transB: true })
        : matmul(g16, b, { transB: !transB });
      ga = sumToShape(full, a.shape);
    }
    if (b.requiresGrad) {
      // with a's batch folded into rows, one product over all rows gives dB directly
      const aa = batch === 1 && mm !== m ? a.view([mm, k]) : a;
      const gg = batch === 1 && mm !== m ? g16.view([mm, n]) : g16;
      // optim: straight into the parameter's gradient buffer where the training step left it unwritten
      if (!weightGradInto(b, gg, aa, transA, transB)) {
        const full = transB
          ? matmul(gg, aa, { transA: true, transB: transA })
          : matmul(aa, gg, { transA: !transA });
        gb = sumToShape(full, b.shape);
      }
    }
    // the bias's gradient sums the f32 gradient over every row
    return bias ? [ga, gb, bias.requiresGrad ? (gBias ?? sumToShape(g, bias.shape)) : null] : [ga, gb];
  });
}

/** whether products may add an input's gradient into one another consumer wrote (MOHAWK_GRAD_ACCUMULATE) */
function gradAccumulate(): boolean {
  return process.env.MOHAWK_GRAD_ACCUMULATE !== '0';
}

/**
 * Whether a linear layer's bias gradient may come from the pass that rounds its f32 output
 * gradient g (..., n) to 16 bits (`castColumnSums`): where the backend has it, unless
 * MOHAWK_FUSED_BIAS_GRAD=0 (then a cast and a separate column sum, for A/B runs).
 */
function fusedBiasGrad(g: Tensor): boolean {
  return (
    !!g.backend.castColumnSums &&
    g.dtype === 'f32' &&
    g.ndim >= 1 &&
    process.env.MOHAWK_FUSED_BIAS_GRAD !== '0'
  );
}

/**
 * g (..., n) f32 -> [g rounded to dtype, the f32 sums of g over every axis but the last (n)] in
 * one pass (a linear layer's output gradient for its 16-bit products, and its bias's gradient),
 * or null where that does not apply (see fusedBiasGrad): the caller casts and sums then.
 */
export function castWithBiasGrad(g: Tensor, dtype: 'bf16' | 'f16'): [Tensor, Tensor] | null {
  return fusedBiasGrad(g) ? castWithColumnSums(g, dtype) : null;
}

/**
 * g (..., n) f32 -> [v rounded to dtype (g's shape), the f32 sums of v over every axis but the
 * last (n)], v = g, or g * f'(x) for `op` with x the 16-bit input an activation kept (g's shape):
 * one pass over g (the backend's castColumnSums). Not recorded (a backward pass's helper).
 */
function castWithColumnSums(
  g: Tensor,
  dtype: 'bf16' | 'f16',
  op: UnaryOp | null = null,
  x: Tensor | null = null,
): [Tensor, Tensor] {
  const n = g.shape[g.ndim - 1];
  const rows = n === 0 ? 0 : g.size / n;
  const g16 = empty(g.shape, dtype, g.backend);
  const sums = empty([n], 'f32', g.backend);
  g.backend.castColumnSums!(g.buffer, g16.buffer, sums.buffer, rows, n, op, x?.buffer ?? null);
  return [g16, sums];
}

/** one dense product C (m, n) = op(A) op(B), no batch, beta 0: the backend's MatmulParams */
function denseParams(m: number, n: number, k: number, transA: boolean, transB: boolean): MatmulParams {
  return {
    batch: 1,
    m,
    n,
    k,
    transA,
    transB,
    strideA: m * k,
    strideB: k * n,
    strideC: m * n,
    alpha: 1,
    beta: 0,
  };
}

/**
 * f(linear(x, weight, bias)) stored in the autocast dtype (an MLP's first product and activation
 * while training under autocast, feeding the second product) as one op, so its backward makes the pre-activation's
 * gradient in one pass over the activation's f32 gradient: times f' at the kept 16-bit input,
 * rounded to 16 bits for the two products, and summed over the rows for the bias
 * (`castColumnSums`); the f32 pre-activation gradient never exists. With the product, bias and
 * activation in one pass, the same numbers as `unaryTo(op, linear(x, weight, bias), dtype)` with
 * the fused glue, up to the order of the bias sums; with the tanh GELU in cuBLASLt's epilogue (the
 * default where the backend has one) its own tanh, and on the H200 the bias rounded to bf16 in the
 * product (its gradient still against the f32 bias): one bf16 rounding apart. Returns null where it does not apply (no autocast, nothing to differentiate, no bias, a
 * backend without unaryKeep16 or castColumnSums, MOHAWK_FUSED_MLP=0 or MOHAWK_FUSED_LINEAR_ACT=0,
 * the tanh GELU under MOHAWK_GELU_EPILOGUE=1, which geluMlp runs): the caller composes the ops then.
 */
export function linearActivation(x: Tensor, weight: Tensor, bias: Tensor | null, op: UnaryOp): Tensor | null {
  const be = x.backend;
  const dtype = autocastDtype;
  if (
    !bias ||
    !dtype ||
    (op === 'geluNew' && process.env.MOHAWK_GELU_EPILOGUE === '1') ||
    !be.unaryKeep16 ||
    !be.castColumnSums ||
    !fusedGlue('MOHAWK_FUSED_MLP') ||
    process.env.MOHAWK_FUSED_LINEAR_ACT === '0' ||
    !isGradEnabled() ||
    ![x, weight, bias].some((t) => t.requiresGrad)
  )
    return null;
  if (weight.ndim !== 2) fail('linear', `weight must be (out, in), got ${shapeStr(weight.shape)}`);
  checkVector('linear', bias, weight.shape[0], 'bias');
  if (bias.dtype !== 'f32' || ![x, weight].every((t) => t.dtype === 'f32' || t.dtype === dtype)) return null;
  const x16 = x.dtype === dtype ? x : autocastOperand(x, dtype);
  const w16 = weight.dtype === dtype ? weight : autocastOperand(weight, dtype);
  const [n, k] = w16.shape;
  // the checks matmul would make (the epilogue's product below does not go through it)
  if (x16.ndim < 2 || x16.shape[x16.ndim - 1] !== k)
    fail('matmul', `inner dimensions differ: ${shapeStr(x16.shape)} @ ${shapeStr(w16.shape)}ᵀ`);
  const rows = x16.size / Math.max(k, 1);
  const outShape = [...x16.shape.slice(0, -1), n];
  const out = empty(outShape, dtype, be);
  const preKeep = empty(outShape, dtype, be);
  // the tanh GELU in the product's epilogue: the activation and the 16-bit pre-activation written
  // by the GEMM itself, no f32 pre-activation and no pass over it (MOHAWK_LINEAR_ACT_EPILOGUE=0:
  // the product into f32, then one pass for both)
  const epilogue =
    op === 'geluNew' &&
    be.matmulGelu &&
    process.env.MOHAWK_LINEAR_ACT_EPILOGUE !== '0' &&
    rows > 0 &&
    be.matmulGelu(
      x16.buffer,
      w16.buffer,
      out.buffer,
      denseParams(rows, n, k, false, true),
      'gelu',
      bias.buffer,
      preKeep.buffer,
    );
  if (!epilogue) {
    // the f32 pre-activation, not recorded: only its 16-bit copy is kept for the backward
    const pre = noGrad(() => matmulImpl(x16, w16, { transB: true }, 'f32', bias));
    be.unaryKeep16(op, pre.buffer, out.buffer, preKeep.buffer);
    pre.dispose();
  }
  return record(out, 'linearActivation', [x16, w16, bias], [...crossSaves(x16, w16), preKeep], (g) => {
    const gf = g.dtype === 'f32' ? g : cast(g, 'f32');
    // the pre-activation's gradient g f'(pre), in 16 bits, and the bias's (its f32 column sums)
    const [gPre16, gBias] = castWithColumnSums(gf, dtype, op, preKeep);
    // added into the gradient another consumer of x wrote first, where there is one (pendingGrad)
    const pending = x16.requiresGrad && gradAccumulate() ? pendingGrad(x16) : null;
    if (pending) matmulImpl(gPre16, w16, {}, 'f32', null, pending, true);
    const gx = x16.requiresGrad && !pending ? matmul(gPre16, w16).view(x16.shape) : null;
    const g2 = gPre16.view([rows, n]);
    const x2 = x16.view([rows, k]);
    // straight into the parameter's gradient buffer where the training step left it unwritten
    const gw =
      w16.requiresGrad && !weightGradInto(w16, g2, x2, false, true) ? matmul(g2, x2, { transA: true }) : null;
    return [gx, gw, bias.requiresGrad ? gBias : null];
  });
}

/**
 * A product's dB written straight into its parameter's gradient buffer, when the training step
 * left that buffer unwritten (Tensor.gradUnwritten: it stands for zeros): b is the f32 parameter
 * or its 16-bit cast (whose backward passes the f32 gradient through unchanged), without batch
 * axes. The GEMM then writes the gradient there (beta 0): no fresh buffer, no copy; later
 * contributions add as usual. False where it does not apply (gradient-ready hooks listening, a
 * product that would run otherwise, MOHAWK_GRAD_INTO=0): the caller computes dB itself.
 */
function weightGradInto(b: Tensor, gg: Tensor, aa: Tensor, transA: boolean, transB: boolean): boolean {
  const p =
    b.node === null ? b : b.node.op === 'cast' && b.node.inputs.length === 1 ? b.node.inputs[0] : null;
  if (!p || p.node !== null || !p.requiresGrad || !p.gradUnwritten || !p.grad || p.grad.dtype !== 'f32')
    return false;
  if (b.ndim !== 2 || gg.ndim !== 2 || aa.ndim !== 2 || gg.dtype !== aa.dtype || p.grad.size !== b.size)
    return false;
  // as matmul() would run it: 16-bit operands, or f32 ones without autocast; both give f32
  const low = gg.dtype === 'bf16' || gg.dtype === 'f16';
  if (!(low || (gg.dtype === 'f32' && !autocastDtype))) return false;
  if (gradHooksActive() || process.env.MOHAWK_GRAD_INTO === '0') return false;
  if (transB) matmulImpl(gg, aa, { transA: true, transB: transA }, 'f32', null, p.grad);
  else matmulImpl(aa, gg, { transA: !transA }, 'f32', null, p.grad);
  p.gradUnwritten = false;
  return true;
}

/**
 * The Phi MLP, fc2(gelu_new(fc1 x)), under autocast with the tanh GELU in cuBLASLt's epilogues:
 * fc1's product writes the 16-bit activation and its 16-bit input (forward), fc2's backward
 * product applies the GELU derivative and sums fc1's bias gradient (backward), so no separate
 * activation, cast or bias-reduction pass runs. x (..., d), w1 (h, d), b1 (h), w2 (d2, h), b2
 * (d2), all f32. Returns null where it does not apply (no autocast, a backend without
 * `matmulGelu`, MOHAWK_GELU_EPILOGUE not 1, no algorithm): the caller composes the ops then.
 */
export function geluMlp(x: Tensor, w1: Tensor, b1: Tensor, w2: Tensor, b2: Tensor): Tensor | null {
  const dt = autocastDtype;
  const be = x.backend;
  if (!dt || !be.matmulGelu || process.env.MOHAWK_GELU_EPILOGUE !== '1') return null;
  const all = [x, w1, b1, w2, b2];
  // the weights may be held in 16 bits already (a frozen teacher under precision bf16)
  if (all.some((t) => (t.dtype !== 'f32' && !((t === w1 || t === w2) && t.dtype === dt)) || t.backend !== be))
    return null;
  const as16 = (t: Tensor) => (t.dtype === dt ? t : autocastOperand(t, dt));
  const d = x.shape[x.ndim - 1];
  const [h, d1] = w1.shape;
  const [d2, h2] = w2.shape;
  if (w1.ndim !== 2 || w2.ndim !== 2 || d1 !== d || h2 !== h)
    fail(
      'geluMlp',
      `x ${shapeStr(x.shape)}, fc1 ${shapeStr(w1.shape)}, fc2 ${shapeStr(w2.shape)} do not fit`,
    );
  checkVector('geluMlp', b1, h, 'fc1 bias');
  checkVector('geluMlp', b2, d2, 'fc2 bias');
  const lead = x.shape.slice(0, -1);
  const rows = sizeOf(lead);
  if (rows === 0) return null;
  const recording = isGradEnabled() && all.some((t) => t.requiresGrad);
  const x16 = autocastOperand(x, dt);
  const w116 = as16(w1);
  const act = empty([...lead, h], dt, be);
  const pre = recording ? empty([...lead, h], dt, be) : null;

  // act = gelu(x16 w1^T + b1), pre = x16 w1^T + b1, both 16-bit
  if (
    !be.matmulGelu(
      x16.buffer,
      w116.buffer,
      act.buffer,
      denseParams(rows, h, d, false, true),
      'gelu',
      b1.buffer,
      pre?.buffer ?? null,
    )
  ) {
    act.dispose();
    pre?.dispose();
    return null;
  }
  const w216 = as16(w2);
  const out = empty([...lead, d2], 'f32', be);
  be.matmul(act.buffer, w216.buffer, out.buffer, denseParams(rows, d2, h, false, true), b2.buffer);
  if (!recording) {
    act.dispose();
    return out;
  }
  const inputs = [x16, w116, b1, w216, b2];
  return record(out, 'geluMlp', inputs, [x16, w116, w216, act, pre!], (g) => {
    const castSums = b2.requiresGrad ? castWithBiasGrad(g, dt) : null;
    const g16 = castSums ? castSums[0] : cast(g, dt);
    const flat = (t: Tensor, cols: number) => t.view([rows, cols]);
    // fc2: its weight's gradient from the 16-bit activation, its bias's from the f32 gradient
    const gw2 = w216.requiresGrad ? matmul(flat(g16, d2), flat(act, h), { transA: true }) : null;
    const gb2 = castSums ? castSums[1] : b2.requiresGrad ? sumToShape(g, b2.shape) : null;
    // fc2's input gradient times gelu'(pre), in 16 bits, with fc1's bias gradient
    const gPre = empty([rows, h], dt, be);
    const gb1 = b1.requiresGrad ? empty([h], 'f32', be) : null;
    const fused = be.matmulGelu!(
      g16.buffer,
      w216.buffer,
      gPre.buffer,
      denseParams(rows, h, d2, false, false),
      'dgelu',
      gb1?.buffer ?? null,
      pre!.buffer,
    );
    let gb1Out: Tensor | null = gb1;
    if (!fused) {
      const gAct = matmul(flat(g16, d2), w216);
      be.unaryBackward('geluNew', pre!.buffer, gAct.buffer, gAct.buffer);
      gb1Out = b1.requiresGrad ? sumToShape(gAct, b1.shape) : null;
      be.cast(gAct.buffer, gPre.buffer);
    }
    const gx = x16.requiresGrad ? matmul(gPre, w116).view(x16.shape) : null;
    const gw1 = w116.requiresGrad ? matmul(gPre, flat(x16, d), { transA: true }) : null;
    return [gx, gw1, gb1Out, gw2, gb2];
  });
}

// ---- rows -----------------------------------------------------------------------------------

function lastAxisRows(op: string, x: Tensor, axis: number): [number, number] {
  if (normAxis(op, axis, x.ndim) !== x.ndim - 1) fail(op, 'only the last axis is supported');
  const cols = x.shape[x.ndim - 1];
  return [x.size / Math.max(cols, 1), cols];
}

export function softmax(x: Tensor, axis = -1): Tensor {
  checkFloat('softmax', x);
  const [rows, cols] = lastAxisRows('softmax', x, axis);
  const out = like(x);
  x.backend.softmax(x.buffer, out.buffer, rows, cols, false);
  return record(out, 'softmax', [x], [out], (g) => {
    const gx = like(x);
    x.backend.softmaxBackward(out.buffer, g.buffer, gx.buffer, rows, cols, false);
    return [gx];
  });
}

export function logSoftmax(x: Tensor, axis = -1): Tensor {
  checkFloat('logSoftmax', x);
  const [rows, cols] = lastAxisRows('logSoftmax', x, axis);
  const out = like(x);
  x.backend.softmax(x.buffer, out.buffer, rows, cols, true);
  return record(out, 'logSoftmax', [x], [out], (g) => {
    const gx = like(x);
    x.backend.softmaxBackward(out.buffer, g.buffer, gx.buffer, rows, cols, true);
    return [gx];
  });
}

function checkVector(op: string, v: Tensor, cols: number, what: string): void {
  if (v.ndim !== 1 || v.shape[0] !== cols)
    fail(op, `${what} has shape ${shapeStr(v.shape)}, expected [${cols}]`);
}

export function layerNorm(x: Tensor, weight: Tensor, bias: Tensor | null, eps: number): Tensor {
  checkFloat('layerNorm', x, weight);
  const cols = x.shape[x.ndim - 1];
  const rows = x.size / cols;
  checkVector('layerNorm', weight, cols, 'weight');
  if (bias) checkVector('layerNorm', bias, cols, 'bias');
  const out = like(x);
  const meanT = empty([rows], x.dtype, x.backend);
  const rstd = empty([rows], x.dtype, x.backend);
  const out16 = normCopy16(x);
  x.backend.layerNorm(
    x.buffer,
    weight.buffer,
    bias?.buffer ?? null,
    out.buffer,
    meanT.buffer,
    rstd.buffer,
    rows,
    cols,
    eps,
    out16?.buffer ?? null,
  );
  const inputs = bias ? [x, weight, bias] : [x, weight];
  const run = (g: Tensor, gx: Tensor, accumulate: boolean) => {
    const gw = like(weight);
    const gb = bias ? like(bias) : null;
    x.backend.layerNormBackward(
      x.buffer,
      weight.buffer,
      meanT.buffer,
      rstd.buffer,
      g.buffer,
      gx.buffer,
      gw.buffer,
      gb?.buffer ?? null,
      rows,
      cols,
      accumulate,
    );
    return bias ? [gx, gw, gb] : [gx, gw];
  };
  return memoCopy16(recordNorm(out, 'layerNorm', inputs, [x, weight, meanT, rstd], run), out16);
}

/**
 * Under autocast, a norm also writes its output rounded to the 16-bit dtype in the same pass:
 * the products that read the output (q, k, v, in_proj, the MLP) take that copy instead of
 * casting it (MOHAWK_NORM_CAST16=0: they cast it).
 */
function normCopy16(x: Tensor): Tensor | null {
  return autocastDtype && x.dtype === 'f32' && fusedGlue('MOHAWK_NORM_CAST16')
    ? empty(x.shape, autocastDtype, x.backend)
    : null;
}

/** out16 recorded as cast(out) and left where autocastOperand finds it; returns out */
function memoCopy16(out: Tensor, out16: Tensor | null): Tensor {
  if (!out16) return out;
  const dtype = out.dtype;
  castMemo.set(
    out,
    record(out16, 'cast', [out], [], (g) => [cast(g, dtype)]),
  );
  return out;
}

/**
 * Record a norm whose backward adds its input's gradient to the one autograd already holds (the
 * residual stream's other branch) in the same pass, instead of a separate add
 * (MOHAWK_NORM_INPLACE=0: a fresh gradient, added by autograd).
 */
function recordNorm(
  out: Tensor,
  op: string,
  inputs: Tensor[],
  saves: Tensor[],
  run: (g: Tensor, gx: Tensor, accumulate: boolean) => (Tensor | null)[],
): Tensor {
  return recordIntoFirst(out, op, inputs, saves, run, fusedGlue('MOHAWK_NORM_INPLACE'));
}

/**
 * Record an op whose backward writes its first input's gradient into the buffer autograd holds
 * for it, added to what is there when another consumer's part came first (`accumulate`):
 * accumulateInto over all of that input, which autograd runs before backward. With `enabled`
 * false, a plain record (a fresh gradient that autograd adds). `run(g, gx, accumulate)` returns
 * [gx, the other inputs' gradients...].
 */
function recordIntoFirst(
  out: Tensor,
  op: string,
  inputs: Tensor[],
  saves: Tensor[],
  run: (g: Tensor, gx: Tensor, accumulate: boolean) => (Tensor | null)[],
  enabled: boolean,
): Tensor {
  const x = inputs[0];
  const plain = (g: Tensor) => run(g, like(x), false);
  if (!enabled || x.ndim === 0) return record(out, op, inputs, saves, plain);
  let pending: (Tensor | null)[] | null = null;
  return record(
    out,
    op,
    inputs,
    saves,
    (g) => {
      const r = pending ?? plain(g);
      pending = null;
      return [null, ...r.slice(1)];
    },
    {
      accumulateInto: (g, into, accumulate) => {
        const r = run(g, into, accumulate);
        // out of every scope until backward returns them, right after
        for (const t of r.slice(1)) if (t) keep(t);
        pending = r;
      },
      region: { axis: 0, start: 0, end: x.shape[0] },
    },
  );
}

export function rmsNorm(x: Tensor, weight: Tensor, eps: number): Tensor {
  checkFloat('rmsNorm', x, weight);
  const cols = x.shape[x.ndim - 1];
  const rows = x.size / cols;
  checkVector('rmsNorm', weight, cols, 'weight');
  const out = like(x);
  const rstd = empty([rows], x.dtype, x.backend);
  const out16 = normCopy16(x);
  x.backend.rmsNorm(x.buffer, weight.buffer, out.buffer, rstd.buffer, rows, cols, eps, out16?.buffer ?? null);
  return memoCopy16(recordRmsNorm(out, x, weight, rstd, rows, cols), out16);
}

/** Record out = rmsNorm(x) w (rstd from its forward): the backward adds into x's gradient (recordNorm). */
function recordRmsNorm(
  out: Tensor,
  x: Tensor,
  weight: Tensor,
  rstd: Tensor,
  rows: number,
  cols: number,
): Tensor {
  return recordNorm(out, 'rmsNorm', [x, weight], [x, weight, rstd], (g, gx, accumulate) => {
    const gw = like(weight);
    x.backend.rmsNormBackward(
      x.buffer,
      weight.buffer,
      rstd.buffer,
      g.buffer,
      gx.buffer,
      gw.buffer,
      rows,
      cols,
      accumulate,
    );
    return [gx, gw];
  });
}

/**
 * A pre-norm block's residual add and the RMSNorm of its result: sum = x + r, normed =
 * rmsNorm(sum, weight); one pass where the backend has it (the same values), recorded as the two
 * ops. MOHAWK_FUSED_ADD_NORM=0: add, then rmsNorm.
 */
export function addRmsNorm(
  x: Tensor,
  r: Tensor,
  weight: Tensor,
  eps: number,
): { sum: Tensor; normed: Tensor } {
  const be = x.backend;
  if (
    !be.addRmsNorm ||
    x.dtype !== 'f32' ||
    r.dtype !== 'f32' ||
    x.ndim !== r.ndim ||
    x.shape.some((d, i) => d !== r.shape[i]) ||
    !fusedGlue('MOHAWK_FUSED_ADD_NORM')
  ) {
    const sum = add(x, r);
    return { sum, normed: rmsNorm(sum, weight, eps) };
  }
  checkFloat('rmsNorm', x, r, weight);
  sameBackend('addRmsNorm', x, r, weight);
  const cols = x.shape[x.ndim - 1];
  const rows = x.size / cols;
  checkVector('rmsNorm', weight, cols, 'weight');
  const sum = like(x);
  const out = like(x);
  const rstd = empty([rows], x.dtype, be);
  const out16 = normCopy16(x);
  be.addRmsNorm(
    x.buffer,
    r.buffer,
    weight.buffer,
    sum.buffer,
    out.buffer,
    rstd.buffer,
    rows,
    cols,
    eps,
    out16?.buffer ?? null,
  );
  record(sum, 'add', [x, r], [], (g) => [
    x.requiresGrad ? sumToShape(g, x.shape) : null,
    r.requiresGrad ? sumToShape(g, r.shape) : null,
  ]);
  const normed = recordRmsNorm(out, sum, weight, rstd, rows, cols);
  return { sum, normed: memoCopy16(normed, out16) };
}

/** table (V, D), ids i32 of any shape -> (...ids.shape, D); backward scatter-adds into the table */
export function embedding(table: Tensor, ids: Tensor): Tensor {
  checkFloat('embedding', table);
  if (ids.dtype !== 'i32') fail('embedding', `ids must be i32, got ${ids.dtype}`);
  if (table.ndim !== 2) fail('embedding', `table must be (vocab, dim), got ${shapeStr(table.shape)}`);
  const dim = table.shape[1];
  const out = empty([...ids.shape, dim], table.dtype, table.backend);
  table.backend.embedding(table.buffer, ids.buffer, out.buffer, ids.size, dim);
  return record(out, 'embedding', [table], [ids], (g) => {
    const gt = zeros(table.shape, table.dtype, table.backend);
    table.backend.embeddingBackward(g.buffer, ids.buffer, gt.buffer, ids.size, dim);
    return [gt];
  });
}

// ---- sequence -------------------------------------------------------------------------------

/** Over the last two axes (tq, tk): entries with key s > query t + (tk - tq) become `value`. */
export function causalMask(x: Tensor, value = -Infinity): Tensor {
  checkFloat('causalMask', x);
  if (x.ndim < 2) fail('causalMask', `needs (..., tq, tk), got ${shapeStr(x.shape)}`);
  const [tq, tk] = x.shape.slice(-2);
  const rows = x.size / (tq * tk);
  const out = like(x);
  x.backend.causalMask(x.buffer, out.buffer, rows, tq, tk, value);
  return record(out, 'causalMask', [x], [], (g) => {
    const gx = like(g);
    g.backend.causalMask(g.buffer, gx.buffer, rows, tq, tk, 0);
    return [gx];
  });
}

export function cumsum(x: Tensor, axis: number, reverse = false): Tensor {
  checkFloat('cumsum', x);
  const a = normAxis('cumsum', axis, x.ndim);
  const [outer, n, inner] = around(x.shape, a);
  const out = like(x);
  x.backend.cumsum(x.buffer, out.buffer, outer, n, inner, reverse);
  return record(out, 'cumsum', [x], [], (g) => {
    const gx = like(g);
    g.backend.cumsum(g.buffer, gx.buffer, outer, n, inner, !reverse);
    return [gx];
  });
}

/** Log-space segment sum over the last axis: (..., T) -> (..., T, T), -inf above the diagonal. */
export function segsum(x: Tensor): Tensor {
  checkFloat('segsum', x);
  const t = x.shape[x.ndim - 1];
  const rows = x.size / t;
  const out = empty([...x.shape, t], x.dtype, x.backend);
  x.backend.segsum(x.buffer, out.buffer, rows, t);
  return record(out, 'segsum', [x], [], (g) => {
    const gx = like(x);
    x.backend.segsumBackward(g.buffer, gx.buffer, rows, t);
    return [gx];
  });
}

/**
 * x (B, T, C), weight (C, K), bias (C) | null -> (B, T, C), causal depthwise. With `cols`, x is
 * (B, T, W) and the conv runs over its columns [start, end) only (C = end - start): read in place
 * where the backend can (the mixer's in_proj output without split copies; its gradient written
 * into that part of x's gradient buffer), else through a slice. MOHAWK_MIXER_INPLACE=0: the slice.
 */
export function causalConv1d(
  x: Tensor,
  weight: Tensor,
  bias: Tensor | null,
  cols?: { start: number; end: number },
): Tensor {
  if (cols && !(cols.start === 0 && cols.end === x.shape[x.ndim - 1])) {
    // in place when backward needs no f32 x: without gradients, or under bf16 autocast, where the
    // weight gradient reads a dense bf16 copy of the window that the forward writes
    const keep16 =
      autocastDtype === 'bf16' &&
      (weight.requiresGrad || bias?.requiresGrad === true) &&
      fusedGlue('MOHAWK_FUSED_CONV');
    if (
      x.ndim === 3 &&
      x.backend.causalConv1dWindow &&
      (!isGradEnabled() || keep16) &&
      fusedGlue('MOHAWK_MIXER_INPLACE')
    )
      return causalConv1dWindow(x, weight, bias, cols, isGradEnabled());
    return causalConv1d(slice(x, -1, cols.start, cols.end), weight, bias);
  }
  checkFloat('causalConv1d', x, weight);
  if (x.ndim !== 3) fail('causalConv1d', `x must be (B, T, C), got ${shapeStr(x.shape)}`);
  const [batch, t, c] = x.shape;
  if (weight.ndim !== 2 || weight.shape[0] !== c)
    fail('causalConv1d', `weight ${shapeStr(weight.shape)} for ${c} channels, expected [${c}, K]`);
  if (bias) checkVector('causalConv1d', bias, c, 'bias');
  const k = weight.shape[1];
  const out = like(x);
  const be = x.backend;
  const inputs = bias ? [x, weight, bias] : [x, weight];
  // under bf16 autocast the weight gradient reads a bf16 copy of x written by the forward pass
  const keep16 =
    autocastDtype === 'bf16' &&
    x.dtype === 'f32' &&
    be.causalConv1dKeep16 !== undefined &&
    isGradEnabled() &&
    (weight.requiresGrad || bias?.requiresGrad === true) &&
    fusedGlue('MOHAWK_FUSED_CONV');
  const xk = keep16 ? empty(x.shape, 'bf16', be) : null;
  if (xk)
    be.causalConv1dKeep16!(
      x.buffer,
      weight.buffer,
      bias?.buffer ?? null,
      out.buffer,
      xk.buffer,
      batch,
      t,
      c,
      k,
    );
  else be.causalConv1d(x.buffer, weight.buffer, bias?.buffer ?? null, out.buffer, batch, t, c, k);
  const xs = xk ?? x;
  return record(out, 'causalConv1d', inputs, [xs, weight], (g) => {
    const gx = like(x);
    const gw = like(weight);
    const gb = bias ? like(bias) : null;
    x.backend.causalConv1dBackward(
      xs.buffer,
      weight.buffer,
      g.buffer,
      gx.buffer,
      gw.buffer,
      gb?.buffer ?? null,
      batch,
      t,
      c,
      k,
    );
    return bias ? [gx, gw, gb] : [gx, gw];
  });
}

/** causalConv1d on the columns [start, end) of x (B, T, W), read in place */
function causalConv1dWindow(
  x: Tensor,
  weight: Tensor,
  bias: Tensor | null,
  cols: { start: number; end: number },
  keep16: boolean,
): Tensor {
  checkFloat('causalConv1d', x, weight);
  const [batch, t, width] = x.shape;
  const { start, end } = cols;
  if (!(Number.isInteger(start) && Number.isInteger(end) && 0 <= start && start <= end && end <= width))
    fail('causalConv1d', `columns [${start}, ${end}) outside ${shapeStr(x.shape)}`);
  const c = end - start;
  if (weight.ndim !== 2 || weight.shape[0] !== c)
    fail('causalConv1d', `weight ${shapeStr(weight.shape)} for ${c} channels, expected [${c}, K]`);
  if (bias) checkVector('causalConv1d', bias, c, 'bias');
  const k = weight.shape[1];
  const be = x.backend;
  const out = empty([batch, t, c], x.dtype, be);
  const win = { offset: start, stride: width };
  // with gradients, the weight gradient reads a dense bf16 copy of the window written by the
  // forward pass (as causalConv1d's under autocast), so the wide x need not be kept for it
  const xk = keep16 ? empty([batch, t, c], 'bf16', be) : null;
  be.causalConv1dWindow!(
    x.buffer,
    win,
    weight.buffer,
    bias?.buffer ?? null,
    out.buffer,
    xk?.buffer ?? null,
    batch,
    t,
    c,
    k,
  );
  const xs = xk ?? x;
  const inputs = bias ? [x, weight, bias] : [x, weight];
  // x's gradient goes into its window of x's gradient buffer (accumulateInto, which autograd runs
  // before backward), computed together with the weight's: backward then hands those over
  let pending: { gw: Tensor; gb: Tensor | null } | null = null;
  const run = (g: Tensor, gx: Tensor, gxWin: { offset: number; stride: number }, accumulate: boolean) => {
    const gw = like(weight);
    const gb = bias ? like(bias) : null;
    be.causalConv1dWindowBackward!(
      xs.buffer,
      xk ? null : win,
      weight.buffer,
      g.buffer,
      gx.buffer,
      gxWin,
      accumulate,
      gw.buffer,
      gb?.buffer ?? null,
      batch,
      t,
      c,
      k,
    );
    return { gw, gb };
  };
  return record(
    out,
    'causalConv1d',
    inputs,
    [xs, weight],
    (g) => {
      // without x's gradient, a scratch buffer takes it
      const r = pending ?? run(g, like(out), { offset: 0, stride: c }, false);
      pending = null;
      return bias ? [null, r.gw, r.gb] : [null, r.gw];
    },
    {
      accumulateInto: (g, into, accumulate) => {
        const r = run(g, into, win, accumulate);
        // out of every scope until backward returns them, right after
        keep(r.gw);
        if (r.gb) keep(r.gb);
        pending = r;
      },
      region: { axis: 2, start, end },
    },
  );
}

export interface RopeOptions {
  /** leading dimensions of each head that rotate; default the whole head */
  rotaryDim?: number;
  theta?: number;
  /** adjacent pairs (llama2.c) instead of halves (HF) */
  interleaved?: boolean;
  positionOffset?: number;
}

/** Rotary embedding of x (B, T, H, D). */
export function rope(x: Tensor, opts: RopeOptions = {}): Tensor {
  checkFloat('rope', x);
  if (x.ndim !== 4) fail('rope', `x must be (B, T, H, D), got ${shapeStr(x.shape)}`);
  const [batch, seqLen, heads, headDim] = x.shape;
  const rotaryDim = opts.rotaryDim ?? headDim;
  if (rotaryDim % 2 !== 0 || rotaryDim > headDim)
    fail('rope', `rotaryDim ${rotaryDim} must be even and at most ${headDim}`);
  const params = {
    batch,
    seqLen,
    heads,
    headDim,
    rotaryDim,
    theta: opts.theta ?? 10000,
    interleaved: opts.interleaved ?? false,
    positionOffset: opts.positionOffset ?? 0,
    inverse: false,
  };
  const out = like(x);
  x.backend.rope(x.buffer, out.buffer, params);
  return record(out, 'rope', [x], [], (g) => {
    const gx = like(g);
    g.backend.rope(g.buffer, gx.buffer, { ...params, inverse: true });
    return [gx];
  });
}

export interface AttentionOptions {
  causal?: boolean;
  /** default 1 / sqrt(headDim) */
  scale?: number;
  /** also return the (B, H, tq, tk) probability matrix (no gradient flows through it) */
  returnProbs?: boolean;
  /**
   * out in bf16 under bf16 autocast when no gradient is recorded (the kernel rounds as it writes,
   * so no f32 output and no cast pass): for a consumer that is a product, which would round it to
   * bf16 anyway, so the result is the same. MOHAWK_ATTN_OUT16=0 keeps f32.
   */
  out16?: boolean;
  /**
   * rotate q and k first, as rope(q, rope) and rope(k, rope) would (each row t of both at
   * position positionOffset + t); without gradients the backend does it inside the attention
   * (MOHAWK_ATTN_ROPE=0: always the separate rope ops)
   */
  rope?: RopeOptions;
}

/**
 * Scaled-dot-product attention with grouped-query heads:
 * q (B, tq, H, D), k and v (B, tk, Hkv, D) -> out (B, tq, H, D).
 */
export function attention(
  q: Tensor,
  k: Tensor,
  v: Tensor,
  opts: AttentionOptions = {},
): { out: Tensor; probs: Tensor | null } {
  checkFloat('attention', q, k, v);
  sameBackend('attention', q, k, v);
  if (q.ndim !== 4 || k.ndim !== 4 || v.ndim !== 4) {
    fail(
      'attention',
      `expected 4-d q, k, v, got ${shapeStr(q.shape)}, ${shapeStr(k.shape)}, ${shapeStr(v.shape)}`,
    );
  }
  const [batch, tq, heads, headDim] = q.shape;
  const [kb, tk, kvHeads, kd] = k.shape;
  if (kb !== batch || kd !== headDim || v.shape.some((d, i) => d !== k.shape[i]) || heads % kvHeads !== 0) {
    fail(
      'attention',
      `q ${shapeStr(q.shape)}, k ${shapeStr(k.shape)}, v ${shapeStr(v.shape)} do not fit (heads must be a multiple of kv heads)`,
    );
  }
  if ((opts.causal ?? true) && tk < tq) fail('attention', `causal attention needs tk (${tk}) >= tq (${tq})`);
  const recording = isGradEnabled() && (q.requiresGrad || k.requiresGrad || v.requiresGrad);
  let ropeParams:
    { rotaryDim: number; theta: number; interleaved: boolean; positionOffset: number } | undefined;
  if (opts.rope) {
    if (recording || opts.returnProbs || process.env.MOHAWK_ATTN_ROPE === '0') {
      q = rope(q, opts.rope);
      k = rope(k, opts.rope);
    } else {
      const rotaryDim = opts.rope.rotaryDim ?? headDim;
      if (rotaryDim % 2 !== 0 || rotaryDim > headDim)
        fail('attention', `rotaryDim ${rotaryDim} must be even and at most ${headDim}`);
      ropeParams = {
        rotaryDim,
        theta: opts.rope.theta ?? 10000,
        interleaved: opts.rope.interleaved ?? false,
        positionOffset: opts.rope.positionOffset ?? 0,
      };
    }
  }
  const p = {
    batch,
    tq,
    tk,
    heads,
    kvHeads,
    headDim,
    scale: opts.scale ?? 1 / Math.sqrt(headDim),
    causal: opts.causal ?? true,
    lowPrecision: autocastDtype !== null,
    rope: ropeParams,
  };
  const out16 =
    opts.out16 === true &&
    autocastDtype === 'bf16' &&
    q.dtype === 'f32' &&
    !recording &&
    process.env.MOHAWK_ATTN_OUT16 !== '0';
  const out = out16 ? empty(q.shape, 'bf16', q.backend) : like(q);
  const lse = empty([batch, heads, tq], q.dtype, q.backend);
  const probs = opts.returnProbs ? empty([batch, heads, tq, tk], q.dtype, q.backend) : null;
  q.backend.attention(q.buffer, k.buffer, v.buffer, out.buffer, lse.buffer, probs?.buffer ?? null, p);
  record(out, 'attention', [q, k, v], [q, k, v, out, lse], (g) => {
    const gq = like(q);
    const gk = like(k);
    const gv = like(v);
    q.backend.attentionBackward(
      q.buffer,
      k.buffer,
      v.buffer,
      out.buffer,
      lse.buffer,
      g.buffer,
      gq.buffer,
      gk.buffer,
      gv.buffer,
      p,
    );
    return [gq, gk, gv];
  });
  return { out, probs };
}

function ssdShapes(op: string, logA: Tensor, bm: Tensor, cm: Tensor, x: Tensor | null) {
  if (logA.ndim !== 3 || bm.ndim !== 4 || cm.ndim !== 4) {
    fail(
      op,
      `expected logA (B, T, H), B and C (B, T, G, N), got ${shapeStr(logA.shape)}, ${shapeStr(bm.shape)}, ${shapeStr(cm.shape)}`,
    );
  }
  const [batch, seqLen, heads] = logA.shape;
  const [bb, bt, groups, dState] = bm.shape;
  if (bb !== batch || bt !== seqLen || cm.shape.some((d, i) => d !== bm.shape[i]) || heads % groups !== 0) {
    fail(
      op,
      `logA ${shapeStr(logA.shape)}, B ${shapeStr(bm.shape)}, C ${shapeStr(cm.shape)} do not fit (heads must be a multiple of groups)`,
    );
  }
  let headDim = 0;
  if (x) {
    if (x.ndim !== 4 || x.shape[0] !== batch || x.shape[1] !== seqLen || x.shape[2] !== heads) {
      fail(op, `x ${shapeStr(x.shape)} does not fit logA ${shapeStr(logA.shape)} (expected (B, T, H, P))`);
    }
    headDim = x.shape[3];
  }
  return { batch, seqLen, heads, groups, dState, headDim };
}

export interface SsdOptions {
  chunkSize?: number;
  /** also return the state after the last token, (B, H, P, N), without gradient */
  returnFinalState?: boolean;
}

/**
 * The chunked SSD scan (discrete Mamba-2 without D): h_t = exp(logA_t) h_{t-1} + x_t B_t^T,
 * y_t = h_t C_t. x (B, T, H, P), logA (B, T, H), B and C (B, T, G, N) -> y (B, T, H, P).
 */
export function ssdScan(
  x: Tensor,
  logA: Tensor,
  bm: Tensor,
  cm: Tensor,
  opts: SsdOptions = {},
): { y: Tensor; finalState: Tensor | null } {
  checkFloat('ssdScan', x, logA, bm, cm);
  sameBackend('ssdScan', x, logA, bm, cm);
  const s = ssdShapes('ssdScan', logA, bm, cm, x);
  const p = { ...s, chunkSize: opts.chunkSize ?? 64, lowPrecision: autocastDtype !== null };
  const nChunks = Math.ceil(s.seqLen / p.chunkSize);
  const y = like(x);
  const states = empty([s.batch, nChunks, s.heads, s.headDim, s.dState], x.dtype, x.backend);
  const finalState = opts.returnFinalState
    ? empty([s.batch, s.heads, s.headDim, s.dState], x.dtype, x.backend)
    : null;
  x.backend.ssdScan(
    x.buffer,
    logA.buffer,
    bm.buffer,
    cm.buffer,
    y.buffer,
    states.buffer,
    finalState?.buffer ?? null,
    p,
  );
  // x's gradient added in the same pass to the one autograd holds (the mixer's gate, D x, reads x
  // too), as a norm's (MOHAWK_SSD_ADD_GX=0: a fresh gradient and a separate add)
  recordIntoFirst(
    y,
    'ssdScan',
    [x, logA, bm, cm],
    [x, logA, bm, cm, states],
    (g, gx, accumulate) => {
      const gl = like(logA);
      const gb = like(bm);
      const gc = like(cm);
      x.backend.ssdScanBackward(
        x.buffer,
        logA.buffer,
        bm.buffer,
        cm.buffer,
        states.buffer,
        g.buffer,
        gx.buffer,
        gl.buffer,
        gb.buffer,
        gc.buffer,
        p,
        accumulate,
      );
      return [gx, gl, gb, gc];
    },
    fusedGlue('MOHAWK_SSD_ADD_GX'),
  );
  return { y, finalState };
}

export interface SsmStepOptions {
  /** B and C groups (G) */
  groups: number;
  /** silu after the conv */
  silu: boolean;
}

/**
 * One decoding step of the discrete Mamba-2 mixer, the caches updated in place (see
 * `Backend.ssmStep`): xbc (B, Cc) the new conv inputs [x, B, C]; convState (B, K - 1, Cc);
 * convWeight (Cc, K); convBias (Cc) | null; a (B, H) raw decay inputs; D (H); ssm (B, H, P, N).
 * Returns y (B, H, P). No gradient: it is for decoding, under noGrad.
 */
export function ssmStep(
  xbc: Tensor,
  convState: Tensor,
  convWeight: Tensor,
  convBias: Tensor | null,
  a: Tensor,
  D: Tensor,
  ssm: Tensor,
  opts: SsmStepOptions,
): Tensor {
  const all = [xbc, convState, convWeight, a, D, ssm, ...(convBias ? [convBias] : [])];
  checkFloat('ssmStep', ...all);
  sameBackend('ssmStep', ...all);
  if (all.some((t) => t.dtype !== xbc.dtype)) fail('ssmStep', 'tensors of different dtypes');
  if (isGradEnabled() && all.some((t) => t.requiresGrad))
    fail('ssmStep', 'has no backward; run it under noGrad (decoding)');
  if (ssm.ndim !== 4) fail('ssmStep', `ssm must be (B, H, P, N), got ${shapeStr(ssm.shape)}`);
  const [batch, heads, headDim, dState] = ssm.shape;
  const groups = opts.groups;
  const cc = heads * headDim + 2 * groups * dState;
  if (!(groups > 0 && heads % groups === 0)) fail('ssmStep', `groups ${groups} must divide heads ${heads}`);
  if (convWeight.ndim !== 2 || convWeight.shape[0] !== cc)
    fail('ssmStep', `conv weight ${shapeStr(convWeight.shape)}, expected [${cc}, K]`);
  const kernel = convWeight.shape[1];
  const want: [string, Tensor, number[]][] = [
    ['xbc', xbc, [batch, cc]],
    ['conv state', convState, [batch, kernel - 1, cc]],
    ['a', a, [batch, heads]],
    ['D', D, [heads]],
  ];
  if (convBias) want.push(['conv bias', convBias, [cc]]);
  for (const [what, t, shape] of want)
    if (t.ndim !== shape.length || t.shape.some((d, i) => d !== shape[i]))
      fail('ssmStep', `${what} has shape ${shapeStr(t.shape)}, expected ${shapeStr(shape)}`);
  const y = empty([batch, heads, headDim], xbc.dtype, xbc.backend);
  xbc.backend.ssmStep(
    xbc.buffer,
    convState.buffer,
    convWeight.buffer,
    convBias?.buffer ?? null,
    a.buffer,
    D.buffer,
    ssm.buffer,
    y.buffer,
    { batch, heads, groups, headDim, dState, kernel, silu: opts.silu },
  );
  return y;
}

/**
 * The SSM's mixing matrix: logA (B, T, H), B and C (B, T, G, N) -> (B, H, T, T) with
 * M[t, s] = C_t . B_s * exp(sum_{k=s+1..t} logA_k) for s <= t, 0 above the diagonal.
 */
export function materializeMixer(logA: Tensor, bm: Tensor, cm: Tensor): Tensor {
  checkFloat('materializeMixer', logA, bm, cm);
  const s = ssdShapes('materializeMixer', logA, bm, cm, null);
  const p = { ...s, headDim: 1, chunkSize: s.seqLen || 1 };
  const out = empty([s.batch, s.heads, s.seqLen, s.seqLen], logA.dtype, logA.backend);
  logA.backend.materializeMixer(logA.buffer, bm.buffer, cm.buffer, out.buffer, p);
  return record(out, 'materializeMixer', [logA, bm, cm], [logA, bm, cm], (g) => {
    const gl = like(logA);
    const gb = like(bm);
    const gc = like(cm);
    logA.backend.materializeMixerBackward(
      logA.buffer,
      bm.buffer,
      cm.buffer,
      g.buffer,
      gl.buffer,
      gb.buffer,
      gc.buffer,
      p,
    );
    return [gl, gb, gc];
  });
}

// ---- losses ---------------------------------------------------------------------------------

export interface CrossEntropyOptions {
  ignoreIndex?: number;
  /** 'mean' over rows whose target is not ignored (default), 'sum', or 'none' (per row) */
  reduction?: 'mean' | 'sum' | 'none';
}

/** logits (..., V), targets i32 (...) -> the negative log-likelihood of the targets. */
export function crossEntropy(logits: Tensor, targets: Tensor, opts: CrossEntropyOptions = {}): Tensor {
  checkFloat('crossEntropy', logits);
  if (targets.dtype !== 'i32') fail('crossEntropy', `targets must be i32, got ${targets.dtype}`);
  const vocab = logits.shape[logits.ndim - 1];
  const rows = logits.size / vocab;
  if (targets.size !== rows)
    fail(
      'crossEntropy',
      `logits ${shapeStr(logits.shape)} and targets ${shapeStr(targets.shape)} do not fit`,
    );
  const ignoreIndex = opts.ignoreIndex ?? -100;
  const losses = empty(targets.shape, logits.dtype, logits.backend);
  const lse = empty([rows], logits.dtype, logits.backend);
  logits.backend.crossEntropy(
    logits.buffer,
    targets.buffer,
    losses.buffer,
    lse.buffer,
    rows,
    vocab,
    ignoreIndex,
  );
  record(losses, 'crossEntropy', [logits], [logits, targets, lse], (g) => {
    const gl = like(logits);
    logits.backend.crossEntropyBackward(
      logits.buffer,
      targets.buffer,
      lse.buffer,
      g.buffer,
      gl.buffer,
      rows,
      vocab,
      ignoreIndex,
    );
    return [gl];
  });
  const reduction = opts.reduction ?? 'mean';
  if (reduction === 'none') return losses;
  const total = sum(losses);
  if (reduction === 'sum') return total;
  // count the rows that are not ignored, on the host only when something is ignored
  let count = rows;
  if (opts.ignoreIndex !== undefined) {
    const t = targets.toArray();
    count = 0;
    for (let i = 0; i < t.length; i++) if (t[i] !== ignoreIndex) count++;
  }
  return scale(total, 1 / Math.max(count, 1));
}

export interface KlOptions {
  temperature?: number;
  reduction?: 'mean' | 'sum' | 'none';
}

/**
 * KL(p || q) per row with p = softmax(teacher / tau), q = softmax(student / tau); the gradient
 * flows to the student logits only.
 */
export function klDivergence(teacher: Tensor, student: Tensor, opts: KlOptions = {}): Tensor {
  checkFloat('klDivergence', teacher, student);
  if (teacher.ndim !== student.ndim || teacher.shape.some((d, i) => d !== student.shape[i])) {
    fail('klDivergence', `teacher ${shapeStr(teacher.shape)} and student ${shapeStr(student.shape)} differ`);
  }
  const tau = opts.temperature ?? 1;
  const vocab = student.shape[student.ndim - 1];
  const rows = student.size / vocab;
  const losses = empty(student.shape.slice(0, -1), student.dtype, student.backend);
  // the backward's cache (both rows' log-sum-exps on CUDA), only when a backward can come
  const lse =
    student.requiresGrad && isGradEnabled() && fusedGlue('MOHAWK_FUSED_KL')
      ? empty([rows, 2], 'f32', student.backend)
      : null;
  student.backend.klDivergence(teacher.buffer, student.buffer, losses.buffer, rows, vocab, tau, lse?.buffer);
  record(losses, 'klDivergence', [student], [teacher, student, ...(lse ? [lse] : [])], (g) => {
    const gs = like(student);
    student.backend.klDivergenceBackward(
      teacher.buffer,
      student.buffer,
      g.buffer,
      gs.buffer,
      rows,
      vocab,
      tau,
      lse?.buffer,
    );
    return [gs];
  });
  const reduction = opts.reduction ?? 'mean';
  if (reduction === 'none') return losses;
  return reduction === 'sum' ? sum(losses) : mean(losses);
}

/** y * silu(z + bias) with y, z (..., C) and bias (C): the Mamba mixer's output gate, one kernel each way. */
export function siluGate(y: Tensor, z: Tensor, bias: Tensor): Tensor {
  checkFloat('siluGate', y, z, bias);
  sameBackend('siluGate', y, z, bias);
  if (y.ndim !== z.ndim || y.shape.some((d, i) => d !== z.shape[i]))
    fail('siluGate', `y ${shapeStr(y.shape)} and z ${shapeStr(z.shape)} differ`);
  const cols = y.shape[y.ndim - 1] ?? 1;
  checkVector('siluGate', bias, cols, 'bias');
  const rows = y.size / Math.max(cols, 1);
  const out = like(y);
  y.backend.siluGate(y.buffer, z.buffer, bias.buffer, out.buffer, rows, cols);
  return record(out, 'siluGate', [y, z, bias], [y, z, bias], (g) => {
    const gy = like(y);
    const gz = like(z);
    y.backend.siluGateBackward(y.buffer, z.buffer, bias.buffer, g.buffer, gy.buffer, gz.buffer, rows, cols);
    return [gy, gz, bias.requiresGrad ? sumToShape(gz, bias.shape) : null];
  });
}

/**
 * The discrete Mamba-2 mixer's gated output with its D term: (y + D_h x) * silu(z + bias), y, x, z
 * (..., C), D (H) per head of C / H columns, bias (C). Where the backend fuses it, one kernel each
 * way, the result stored in `dtype` when given (under autocast, feeding out_proj); otherwise the
 * composed ops (the D term, then siluGate), with an f32 result.
 */
export function siluGateD(
  y: Tensor,
  x: Tensor,
  D: Tensor,
  z: Tensor,
  bias: Tensor,
  dtype: 'bf16' | 'f16' | null = null,
  zCols?: { start: number; end: number },
): Tensor {
  if (zCols) {
    // z is the columns [start, end) of a wider (..., W): read in place where the backend can
    // (the mixer's in_proj output; z's gradient written into that part of its gradient), when
    // backward needs no f32 z (under autocast it reads the 16-bit copy); else through a slice
    const be = y.backend;
    const needGrad = isGradEnabled() && [y, x, D, z, bias].some((t) => t.requiresGrad);
    if (
      be.siluGateDWindow &&
      be.siluGateDWindowBackward &&
      [y, x, D, z, bias].every((t) => t.dtype === 'f32') &&
      (dtype !== null || (!needGrad && be.siluGateD !== undefined)) &&
      fusedGlue('MOHAWK_FUSED_GATE') &&
      fusedGlue('MOHAWK_MIXER_INPLACE')
    )
      return siluGateDWindow(y, x, D, z, bias, dtype, zCols);
    return siluGateD(y, x, D, slice(z, -1, zCols.start, zCols.end), bias, dtype);
  }
  checkFloat('siluGateD', y, x, D, z, bias);
  sameBackend('siluGateD', y, x, D, z, bias);
  for (const [what, t] of [
    ['x', x],
    ['z', z],
  ] as const)
    if (t.ndim !== y.ndim || t.shape.some((d, i) => d !== y.shape[i]))
      fail('siluGateD', `${what} ${shapeStr(t.shape)} and y ${shapeStr(y.shape)} differ`);
  const cols = y.shape[y.ndim - 1] ?? 1;
  checkVector('siluGateD', bias, cols, 'bias');
  if (D.ndim !== 1 || D.shape[0] < 1 || cols % D.shape[0] !== 0)
    fail('siluGateD', `D ${shapeStr(D.shape)} must have one value per head of ${cols} columns`);
  const heads = D.shape[0];
  const headDim = cols / heads;
  const be = y.backend;
  const all = [y, x, D, z, bias];
  if (!(
    be.siluGateD &&
    be.siluGateDBackward &&
    all.every((t) => t.dtype === 'f32') &&
    fusedGlue('MOHAWK_FUSED_GATE')
  )) {
    // as the mixer composed it before: D as (1, .., 1, H, 1) against x as (..., H, P)
    const lead = y.shape.slice(0, -1);
    const perHead = (t: Tensor) => reshape(t, [...lead, heads, headDim]);
    const dPerHead = reshape(D, [...lead.map(() => 1), heads, 1]);
    return siluGate(reshape(add(perHead(y), mul(perHead(x), dPerHead)), y.shape), z, bias);
  }
  const rows = y.size / Math.max(cols, 1);
  const out = empty(y.shape, dtype ?? 'f32', be);
  // under autocast the backward reads 16-bit copies of y and z, written in the same pass: the f32
  // ones are not kept (x is, for the scan's backward anyway)
  const keep16 = dtype !== null && isGradEnabled() && all.some((t) => t.requiresGrad);
  const yk = keep16 ? empty(y.shape, dtype, be) : null;
  const zk = keep16 ? empty(z.shape, dtype, be) : null;
  be.siluGateD(
    y.buffer,
    x.buffer,
    D.buffer,
    z.buffer,
    bias.buffer,
    out.buffer,
    rows,
    cols,
    headDim,
    yk?.buffer,
    zk?.buffer,
  );
  const ys = yk ?? y;
  const zs = zk ?? z;
  return record(out, 'siluGateD', all, [ys, x, D, zs, bias], (g) => {
    const gf = g.dtype === 'f32' ? g : cast(g, 'f32');
    const gy = like(y);
    const gx = like(x);
    const gz = like(z);
    const gD = like(D);
    be.siluGateDBackward!(
      ys.buffer,
      x.buffer,
      D.buffer,
      zs.buffer,
      bias.buffer,
      gf.buffer,
      gy.buffer,
      gx.buffer,
      gz.buffer,
      gD.buffer,
      rows,
      cols,
      headDim,
    );
    return [
      y.requiresGrad ? gy : null,
      x.requiresGrad ? gx : null,
      D.requiresGrad ? gD : null,
      z.requiresGrad ? gz : null,
      bias.requiresGrad ? sumToShape(gz, bias.shape) : null,
    ];
  });
}

/** siluGateD with z the columns [start, end) of a wider (..., W), read and differentiated in place */
function siluGateDWindow(
  y: Tensor,
  x: Tensor,
  D: Tensor,
  z: Tensor,
  bias: Tensor,
  dtype: 'bf16' | 'f16' | null,
  zCols: { start: number; end: number },
): Tensor {
  sameBackend('siluGateD', y, x, D, z, bias);
  const cols = y.shape[y.ndim - 1] ?? 1;
  const { start, end } = zCols;
  const width = z.shape[z.ndim - 1] ?? 1;
  if (x.ndim !== y.ndim || x.shape.some((d, i) => d !== y.shape[i]))
    fail('siluGateD', `x ${shapeStr(x.shape)} and y ${shapeStr(y.shape)} differ`);
  if (
    z.ndim !== y.ndim ||
    z.shape.some((d, i) => i < z.ndim - 1 && d !== y.shape[i]) ||
    !(Number.isInteger(start) && 0 <= start && end - start === cols && end <= width)
  )
    fail('siluGateD', `columns [${start}, ${end}) of z ${shapeStr(z.shape)} for y ${shapeStr(y.shape)}`);
  checkVector('siluGateD', bias, cols, 'bias');
  if (D.ndim !== 1 || D.shape[0] < 1 || cols % D.shape[0] !== 0)
    fail('siluGateD', `D ${shapeStr(D.shape)} must have one value per head of ${cols} columns`);
  const headDim = cols / D.shape[0];
  const be = y.backend;
  const rows = y.size / Math.max(cols, 1);
  const win = { offset: start, stride: width };
  const out = empty(y.shape, dtype ?? 'f32', be);
  const all = [y, x, D, z, bias];
  const keep16 = dtype !== null && isGradEnabled() && all.some((t) => t.requiresGrad);
  const yk = keep16 ? empty(y.shape, dtype, be) : null;
  const zk = keep16 ? empty(y.shape, dtype, be) : null;
  be.siluGateDWindow!(
    y.buffer,
    x.buffer,
    D.buffer,
    z.buffer,
    win,
    bias.buffer,
    out.buffer,
    rows,
    cols,
    headDim,
    yk?.buffer ?? null,
    zk?.buffer ?? null,
  );
  // recorded only with keep16 (siluGateD takes this path then): backward reads the 16-bit copies
  const ys = yk ?? y;
  const zs = zk ?? z;
  type Grads = { gy: Tensor; gx: Tensor; gD: Tensor; gb: Tensor | null };
  let pending: Grads | null = null;
  const run = (
    g: Tensor,
    gz: Tensor,
    gzWin: { offset: number; stride: number },
    accumulate: boolean,
  ): Grads => {
    const gf = g.dtype === 'f32' ? g : cast(g, 'f32');
    const r = { gy: like(y), gx: like(x), gD: like(D), gb: bias.requiresGrad ? like(bias) : null };
    be.siluGateDWindowBackward!(
      ys.buffer,
      x.buffer,
      D.buffer,
      zs.buffer,
      bias.buffer,
      gf.buffer,
      r.gy.buffer,
      r.gx.buffer,
      gz.buffer,
      gzWin,
      accumulate,
      r.gD.buffer,
      r.gb?.buffer ?? null,
      rows,
      cols,
      headDim,
    );
    if (gf !== g) gf.dispose();
    return r;
  };
  // inputs with z first: its gradient goes into its columns of z's gradient buffer
  // (accumulateInto, which autograd runs before backward), with the others computed in the same
  // pass and handed over by backward
  return record(
    out,
    'siluGateD',
    [z, y, x, D, bias],
    [ys, x, D, zs, bias],
    (g) => {
      // without z's gradient, a scratch buffer takes it
      const r = pending ?? run(g, like(y), { offset: 0, stride: cols }, false);
      pending = null;
      return [
        null,
        y.requiresGrad ? r.gy : null,
        x.requiresGrad ? r.gx : null,
        D.requiresGrad ? r.gD : null,
        r.gb,
      ];
    },
    {
      accumulateInto: (g, into, accumulate) => {
        const r = run(g, into, win, accumulate);
        // out of every scope until backward returns them, right after
        for (const t of [r.gy, r.gx, r.gD, r.gb]) if (t) keep(t);
        pending = r;
      },
      region: { axis: z.ndim - 1, start, end },
    },
  );
}

/**
 * The discrete Mamba-2 mixer's log decay, log alpha = -softplus(a). With `cols`, a is (..., W)
 * and its columns [start, end) are read in place where the backend can (in_proj's output, a's
 * gradient written into that part of its gradient; a dense copy of those columns kept for the
 * backward), else through a slice (MOHAWK_MIXER_INPLACE=0).
 */
export function logDecay(a: Tensor, cols?: { start: number; end: number }): Tensor {
  const width = a.shape[a.ndim - 1] ?? 1;
  if (cols && !(cols.start === 0 && cols.end === width)) {
    const be = a.backend;
    if (
      be.logDecayWindow &&
      be.logDecayWindowBackward &&
      (a.dtype === 'f32' || a.dtype === 'f64') &&
      a.ndim >= 1 &&
      fusedGlue('MOHAWK_MIXER_INPLACE')
    )
      return logDecayWindow(a, cols);
    return neg(softplus(slice(a, -1, cols.start, cols.end)));
  }
  return neg(softplus(a));
}

function logDecayWindow(a: Tensor, cols: { start: number; end: number }): Tensor {
  const { start, end } = cols;
  const width = a.shape[a.ndim - 1];
  if (!(Number.isInteger(start) && Number.isInteger(end) && 0 <= start && start <= end && end <= width))
    fail('logDecay', `columns [${start}, ${end}) outside ${shapeStr(a.shape)}`);
  const c = end - start;
  const shape = [...a.shape.slice(0, -1), c];
  const rows = sizeOf(shape) / Math.max(c, 1);
  const be = a.backend;
  const win = { offset: start, stride: width };
  const out = empty(shape, a.dtype, be);
  const ak = isGradEnabled() && a.requiresGrad ? empty(shape, a.dtype, be) : null;
  be.logDecayWindow!(a.buffer, win, out.buffer, ak?.buffer ?? null, rows, c);
  const into = (g: Tensor, ga: Tensor, accumulate: boolean) =>
    be.logDecayWindowBackward!(ak!.buffer, g.buffer, ga.buffer, win, accumulate, rows, c);
  return record(
    out,
    'logDecay',
    [a],
    ak ? [ak] : [],
    (g) => {
      // (autograd writes the window through accumulateInto; this is the plain form)
      const ga = zeros(a.shape, a.dtype, be);
      into(g, ga, true);
      return [ga];
    },
    { accumulateInto: into, region: { axis: a.ndim - 1, start, end } },
  );
}

/** Inverted dropout with a mask drawn from (seed, element index); identity when p = 0. */
export function dropout(x: Tensor, p: number, seed: number): Tensor {
  checkFloat('dropout', x);
  if (!(p >= 0 && p < 1)) fail('dropout', `probability ${p} must be in [0, 1)`);
  if (p === 0) return x;
  const out = like(x);
  x.backend.dropout(x.buffer, out.buffer, p, seed);
  return record(out, 'dropout', [x], [], (g) => {
    const gx = like(g);
    g.backend.dropout(g.buffer, gx.buffer, p, seed);
    return [gx];
  });
}

// ---- creation helpers that depend on ops ----------------------------------------------------

/** An identity-like (T, T) float tensor. */
export function eye(t: number, dtype: DType = 'f32'): Tensor {
  const data = new Float64Array(t * t);
  for (let i = 0; i < t; i++) data[i * t + i] = 1;
  const out = full([t, t], 0, dtype);
  out.backend.write(out.buffer, dtype === 'f64' ? data : Float32Array.from(data));
  return out;
}

/** In place, outside the graph: dst[..., start:start+n, ...] = src along `axis` (caches). */
export function writeSlice(dst: Tensor, src: Tensor, axis: number, start: number): void {
  const a = normAxis('writeSlice', axis, dst.ndim);
  if (
    src.ndim !== dst.ndim ||
    src.shape.some((d, i) => i !== a && d !== dst.shape[i]) ||
    start + src.shape[a] > dst.shape[a]
  ) {
    fail(
      'writeSlice',
      `cannot write ${shapeStr(src.shape)} into ${shapeStr(dst.shape)} at ${start} on axis ${a}`,
    );
  }
  if (src.dtype !== dst.dtype) fail('writeSlice', `dtypes ${src.dtype} and ${dst.dtype} differ`);
  const st = stridesOf(dst.shape);
  dst.backend.copyStrided(
    src.buffer,
    0,
    stridesOf(src.shape),
    dst.buffer,
    start * st[a],
    st,
    [...src.shape],
    false,
  );
}

// ---- in-place updates outside the graph (optimizer steps, checkpoint restores) ---------------

/** In place, outside the graph: dst = src (same number of elements; src converted to dst's dtype). */
export function assign(dst: Tensor, src: Tensor): void {
  if (dst.size !== src.size) fail('assign', `cannot assign ${shapeStr(src.shape)} to ${shapeStr(dst.shape)}`);
  sameBackend('assign', dst, src);
  const from = src.dtype === dst.dtype ? src : cast(src, dst.dtype);
  dst.backend.copyStrided(from.buffer, 0, [1], dst.buffer, 0, [1], [dst.size], false);
  if (from !== src) from.dispose();
}

/** An AdamW step's operands: param, grad, m, v f32 of one size, on one backend. */
function checkAdamwOperands(op: string, param: Tensor, grad: Tensor, m: Tensor, v: Tensor): void {
  for (const [what, t] of [
    ['param', param],
    ['grad', grad],
    ['m', m],
    ['v', v],
  ] as const) {
    if (t.dtype !== 'f32') fail(op, `${what} ${param.name ?? ''} must be f32, got ${t.dtype}`);
    if (t.size !== param.size)
      fail(op, `${what} has shape ${shapeStr(t.shape)}, param ${shapeStr(param.shape)}`);
  }
}

/** One fused AdamW step in place (the backend's `adamw` kernel): param, grad, m, v are f32 of one size. */
export function adamwStep(param: Tensor, grad: Tensor, m: Tensor, v: Tensor, p: AdamWParams): void {
  checkAdamwOperands('adamwStep', param, grad, m, v);
  sameBackend('adamwStep', param, grad, m, v);
  if (!(Number.isInteger(p.step) && p.step >= 1)) fail('adamwStep', `step ${p.step} must be an integer >= 1`);
  param.backend.adamw(param.buffer, grad.buffer, m.buffer, v.buffer, p);
}

/**
 * The AdamW step with its per-step numbers read from `scalars` (f64, see AdamWDeviceParams):
 * nothing is baked into the launch, so a captured training step replays with new values. rowAbs
 * (f32, one entry per row of param's first axis) limits the decay to rows with a gradient.
 */
export function adamwStepDevice(
  param: Tensor,
  grad: Tensor,
  m: Tensor,
  v: Tensor,
  scalars: Tensor,
  rowAbs: Tensor | null,
  p: AdamWDeviceParams,
): void {
  checkAdamwOperands('adamwStepDevice', param, grad, m, v);
  sameBackend('adamwStepDevice', param, grad, m, v, scalars);
  if (
    scalars.dtype !== 'f64' ||
    !(Number.isInteger(p.biasAt) && p.biasAt >= 2 && p.biasAt + 2 <= scalars.size)
  )
    fail(
      'adamwStepDevice',
      `scalars ${shapeStr(scalars.shape)} ${scalars.dtype} must be f64 with bias corrections at ${p.biasAt}`,
    );
  if (rowAbs && (rowAbs.dtype !== 'f32' || rowAbs.size * p.rowLen !== param.size))
    fail(
      'adamwStepDevice',
      `rowAbs ${shapeStr(rowAbs.shape)} does not give one f32 per row of ${p.rowLen} elements`,
    );
  param.backend.adamwDevice(
    param.buffer,
    grad.buffer,
    m.buffer,
    v.buffer,
    scalars.buffer,
    rowAbs?.buffer ?? null,
    p,
  );
}

/**
 * One read of grad (f32) seen as (rows, size / rows): rowSquares[at + r] (f64) = the sum of the
 * squares of row r, in f64 (exactly 0 when the row is all zeros; NaN / infinity propagate).
 */
export function gradRowSquares(grad: Tensor, rowSquares: Tensor, at: number, rows: number): void {
  sameBackend('gradRowSquares', grad, rowSquares);
  if (grad.dtype !== 'f32') fail('gradRowSquares', `grad must be f32, got ${grad.dtype}`);
  if (!(Number.isInteger(rows) && rows >= 1 && grad.size % rows === 0))
    fail('gradRowSquares', `${rows} rows do not divide ${shapeStr(grad.shape)}`);
  if (rowSquares.dtype !== 'f64' || !(Number.isInteger(at) && at >= 0 && at + rows <= rowSquares.size))
    fail(
      'gradRowSquares',
      `rowSquares ${shapeStr(rowSquares.shape)} ${rowSquares.dtype} has no f64 rows ${at}..${at + rows}`,
    );
  grad.backend.gradRowSquares(grad.buffer, rowSquares.buffer, at, rows, grad.size / rows);
}

/** out[at] (f32) = the sum of x's first n entries (f64), in f64 and rounded once. */
export function sumF64Into(x: Tensor, n: number, out: Tensor, at: number): void {
  sameBackend('sumF64Into', x, out);
  if (x.dtype !== 'f64' || n > x.size) fail('sumF64Into', `x must be f64 with ${n} entries`);
  if (out.dtype !== 'f32' || !(at >= 0 && at < out.size))
    fail('sumF64Into', `out must be f32 with an entry ${at}`);
  x.backend.sumF64(x.buffer, n, out.buffer, at);
}

/**
 * The device AdamW step (adamwStepDevice's arithmetic) with, in the same pass: the decay limited
 * to the rows whose entry of rowSquares (f64, from p.rowAt; see gradRowSquares) is non-zero,
 * nonFinite[0] (f32) set to 1 when an updated weight is not finite, and param16 (bf16 or f16,
 * param's size) = the updated weights rounded (the copy autocast products read).
 */
export function adamwStepFused(
  param: Tensor,
  grad: Tensor,
  m: Tensor,
  v: Tensor,
  scalars: Tensor,
  rowSquares: Tensor | null,
  nonFinite: Tensor | null,
  param16: Tensor | null,
  p: AdamWFusedParams,
): void {
  checkAdamwOperands('adamwStepFused', param, grad, m, v);
  sameBackend('adamwStepFused', param, grad, m, v, scalars);
  if (
    scalars.dtype !== 'f64' ||
    !(Number.isInteger(p.biasAt) && p.biasAt >= 2 && p.biasAt + 2 <= scalars.size)
  )
    fail(
      'adamwStepFused',
      `scalars ${shapeStr(scalars.shape)} ${scalars.dtype} must be f64 with bias corrections at ${p.biasAt}`,
    );
  const rows = Math.ceil(param.size / Math.max(1, p.rowLen));
  if (rowSquares && (rowSquares.dtype !== 'f64' || p.rowAt + rows > rowSquares.size))
    fail(
      'adamwStepFused',
      `rowSquares ${shapeStr(rowSquares.shape)} has no f64 rows ${p.rowAt}..${p.rowAt + rows}`,
    );
  if (nonFinite && (nonFinite.dtype !== 'f32' || nonFinite.size < 1))
    fail('adamwStepFused', 'nonFinite must be an f32 tensor');
  if (param16 && ((param16.dtype !== 'bf16' && param16.dtype !== 'f16') || param16.size !== param.size))
    fail('adamwStepFused', `param16 must be bf16 or f16 of ${param.size} elements`);
  for (const t of [rowSquares, nonFinite, param16]) if (t) sameBackend('adamwStepFused', param, t);
  param.backend.adamwFused(
    param.buffer,
    grad.buffer,
    m.buffer,
    v.buffer,
    scalars.buffer,
    rowSquares?.buffer ?? null,
    nonFinite?.buffer ?? null,
    param16?.buffer ?? null,
    p,
  );
}

/** In place, outside the graph: every element of t = value (gradients zeroed for the next step). */
export function fillInPlace(t: Tensor, value: number): void {
  t.backend.fill(t.buffer, value);
}
