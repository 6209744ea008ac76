// The CPU backend: the reference implementation of every kernel, in TypeScript over typed
// arrays (f32, and f64 for gradient checks), with matrix products through OpenBLAS when present.

import type {
  AdamWDeviceParams,
  AdamWFusedParams,
  AdamWParams,
  AttentionParams,
  Backend,
  BinaryOp,
  ColumnWindow,
  GraphCapture,
  DeviceBuffer,
  DType,
  HostArray,
  MatmulParams,
  MemoryStats,
  ReduceOp,
  RopeParams,
  SsdParams,
  SsmStepParams,
  UnaryOp,
} from '../backend.js';
import { denseStrides, DTYPE_BYTES, dropoutKeep, KERNEL_NAMES } from '../backend.js';
import { bf16ToF32, f16ToF32, f32ToBf16, f32ToF16 } from '../dtype.js';
import { gemm, loadBlas, type FloatArray } from './blas.js';
import { sigmoid, softplus, unaryDerivative, unaryFn } from './math.js';
import { CpuGraph, GraphPool, Recorder } from './graph.js';
import * as rows from './rows.js';
import * as seq from './sequence.js';
import * as ssd from './ssd.js';
import {
  binaryRunF32,
  columnSumF32,
  siluGateF32,
  siluGateGradF32,
  unaryF32,
  unaryGradF32,
} from './wasm-ops.js';
import { WASM_UNARY, WASM_UNARY_GRAD } from './wasm-math.js';

export class CpuBuffer implements DeviceBuffer {
  /** the graph whose capture allocated or freed it: its array goes back to that graph's pool */
  owner: GraphPool | null = null;
  constructor(
    readonly dtype: DType,
    readonly data: HostArray,
  ) {}
  get length(): number {
    return this.data.length;
  }
}

function writeData(b: CpuBuffer, data: HostArray, offset: number): void {
  (b.data as Float32Array).set(data as Float32Array, offset);
}

function makeArray(dtype: DType, length: number): HostArray {
  switch (dtype) {
    case 'f32':
      return new Float32Array(length);
    case 'f64':
      return new Float64Array(length);
    case 'i32':
      return new Int32Array(length);
    case 'bf16':
    case 'f16':
      return new Uint16Array(length);
  }
}

function fl(buf: DeviceBuffer, what: string): FloatArray {
  const b = buf as CpuBuffer;
  if (b.dtype !== 'f32' && b.dtype !== 'f64') {
    throw new Error(`cpu backend: ${what} must be f32 or f64, got ${b.dtype}`);
  }
  return b.data as FloatArray;
}

/** out16 (bf16 or f16) = src rounded to nearest even: a norm's copy for autocast products */
function round16(src: FloatArray, out16: DeviceBuffer, what: string): void {
  const b = out16 as CpuBuffer;
  if ((b.dtype !== 'bf16' && b.dtype !== 'f16') || b.length !== src.length)
    throw new Error(`cpu backend: ${what} must be ${src.length} bf16 or f16, got ${b.length} ${b.dtype}`);
  const d = b.data as Uint16Array;
  const conv = b.dtype === 'bf16' ? f32ToBf16 : f32ToF16;
  for (let i = 0; i < src.length; i++) d[i] = conv(src[i]);
}

/** a zeroed array of a's type and length (a gradient computed apart, then added) */
function scratchLike(a: FloatArray): FloatArray {
  return a instanceof Float64Array ? new Float64Array(a.length) : new Float32Array(a.length);
}

function ints(buf: DeviceBuffer, what: string): Int32Array {
  const b = buf as CpuBuffer;
  if (b.dtype !== 'i32') throw new Error(`cpu backend: ${what} must be i32, got ${b.dtype}`);
  return b.data as Int32Array;
}

/**
 * Merge the axes of an n-d index space that are contiguous in every operand (and drop axes of
 * size 1), so the runs of the last axis are as long as they can be: [32, 64, 192] over dense
 * operands is one run of 393216, [32, 64, 192] + [192] stays 2048 runs of 192.
 */
function mergeAxes(shape: number[], strides: number[][]): [number[], number[][]] {
  const outShape: number[] = [];
  const outStrides: number[][] = strides.map(() => []);
  for (let d = 0; d < shape.length; d++) {
    if (shape[d] === 1) continue;
    const last = outShape.length - 1;
    if (last >= 0 && strides.every((s, i) => outStrides[i][last] === s[d] * shape[d])) {
      outShape[last] *= shape[d];
      strides.forEach((s, i) => (outStrides[i][last] = s[d]));
    } else {
      outShape.push(shape[d]);
      strides.forEach((s, i) => outStrides[i].push(s[d]));
    }
  }
  return [outShape, outStrides];
}

/** Walk an n-d index space, calling `inner(offA, offB, offOut)` once per last-axis run. */
function forEachRun(
  fullShape: number[],
  fullA: number[],
  fullB: number[],
  fullOut: number[],
  baseA: number,
  baseB: number,
  baseOut: number,
  inner: (oa: number, ob: number, oo: number, len: number, sa: number, sb: number, so: number) => void,
): void {
  for (const s of fullShape) if (s === 0) return;
  const [shape, [stridesA, stridesB, stridesOut]] = mergeAxes(fullShape, [fullA, fullB, fullOut]);
  const nd = shape.length;
  if (nd === 0) {
    inner(baseA, baseB, baseOut, 1, 0, 0, 0);
    return;
  }
  const last = nd - 1;
  const len = shape[last];
  const sa = stridesA[last];
  const sb = stridesB[last];
  const so = stridesOut[last];
  const idx = new Array<number>(nd).fill(0);
  let oa = baseA;
  let ob = baseB;
  let oo = baseOut;
  while (true) {
    inner(oa, ob, oo, len, sa, sb, so);
    let d = last - 1;
    while (d >= 0) {
      idx[d]++;
      oa += stridesA[d];
      ob += stridesB[d];
      oo += stridesOut[d];
      if (idx[d] < shape[d]) break;
      oa -= stridesA[d] * shape[d];
      ob -= stridesB[d] * shape[d];
      oo -= stridesOut[d] * shape[d];
      idx[d] = 0;
      d--;
    }
    if (d < 0) return;
  }
}

/**
 * A fresh object of one fixed shape for the kernels' parameters: the callers build theirs in
 * varying ways, and every new hidden class reaching a hot kernel deoptimized its loops back to the
 * interpreter (30x slower for the rest of the call) until it was compiled again.
 */
function ssdParams(p: SsdParams): SsdParams {
  return {
    batch: p.batch,
    seqLen: p.seqLen,
    heads: p.heads,
    groups: p.groups,
    headDim: p.headDim,
    dState: p.dState,
    chunkSize: p.chunkSize,
    lowPrecision: p.lowPrecision === true,
  };
}

function attentionParams(p: AttentionParams): AttentionParams {
  return {
    batch: p.batch,
    tq: p.tq,
    tk: p.tk,
    heads: p.heads,
    kvHeads: p.kvHeads,
    headDim: p.headDim,
    scale: p.scale,
    causal: p.causal,
    lowPrecision: p.lowPrecision === true,
  };
}

/** rows r = 0 .. m-1 of c from `at` (pitch row.length) = row: one copy, then doubling copies */
function fillRows(c: FloatArray, row: FloatArray, at: number, m: number): void {
  const n = row.length;
  if (m === 0) return;
  c.set(row, at);
  for (let done = 1; done < m; done *= 2) c.copyWithin(at + done * n, at, at + Math.min(done, m - done) * n);
}

export class CpuBackend implements Backend {
  readonly name = 'cpu' as const;
  private live = new Set<CpuBuffer>();
  private liveBytes = 0;
  private peakBytes = 0;
  /** freed arrays by dtype and length, reused by alloc (bounded by POOL_BYTES) */
  private pool = new Map<string, HostArray[]>();
  private pooledBytes = 0;
  static POOL_BYTES = 1 << 30;
  /** use OpenBLAS for matmul when it loaded (tests turn it off to compare) */
  useBlas: boolean;
  /** the open graph capture (see capture) */
  private recording: Recorder | null = null;

  constructor(options: { blas?: boolean } = {}) {
    this.useBlas = options.blas ?? loadBlas() !== null;
    if (this.useBlas && loadBlas() === null) {
      throw new Error('cpu backend: OpenBLAS was requested but libopenblas.so.0 could not be loaded');
    }
    // every kernel is recorded instead of run while a capture is open
    const self = this as unknown as Record<string, (...args: unknown[]) => void>;
    for (const name of KERNEL_NAMES) {
      const run = self[name];
      if (typeof run !== 'function') continue; // an optional kernel this backend does not have
      self[name] = (...args: unknown[]) => {
        const rec = this.recording;
        if (rec) rec.record(name, run, args);
        else run.apply(this, args);
      };
    }
  }

  describe(): string {
    const lib = loadBlas();
    return this.useBlas && lib ? `cpu (OpenBLAS ${lib.library})` : 'cpu (WebAssembly SIMD matmul, no BLAS)';
  }

  // ---- memory -------------------------------------------------------------------------------

  alloc(dtype: DType, length: number): DeviceBuffer {
    if (!Number.isInteger(length) || length < 0) throw new Error(`cpu backend: bad buffer length ${length}`);
    // reuse a freed array of the same dtype and length (kernels overwrite their outputs); inside a
    // capture, first one freed in the same capture
    const key = `${dtype}:${length}`;
    const rec = this.recording;
    let pooled = rec?.pool.take(key);
    if (!pooled) {
      pooled = this.pool.get(key)?.pop();
      if (pooled) this.pooledBytes -= pooled.byteLength;
    }
    const buf = new CpuBuffer(dtype, pooled ?? makeArray(dtype, length));
    if (rec) buf.owner = rec.pool;
    this.live.add(buf);
    this.liveBytes += length * DTYPE_BYTES[dtype];
    if (this.liveBytes > this.peakBytes) this.peakBytes = this.liveBytes;
    return buf;
  }

  free(buf: DeviceBuffer): void {
    const b = buf as CpuBuffer;
    if (!this.live.delete(b)) throw new Error('cpu backend: buffer freed twice or not from this backend');
    this.liveBytes -= b.length * DTYPE_BYTES[b.dtype];
    // recorded calls may touch it: it stays with the graph (freed in its capture, or allocated there)
    const owner = this.recording?.pool ?? (b.owner && !b.owner.destroyed ? b.owner : null);
    if (owner) {
      owner.put(`${b.dtype}:${b.length}`, b.data);
      return;
    }
    this.returnToPool(`${b.dtype}:${b.length}`, b.data);
  }

  write(buf: DeviceBuffer, data: HostArray, offset = 0): void {
    const b = buf as CpuBuffer;
    if (offset + data.length > b.length) {
      throw new Error(`cpu backend: write of ${data.length} at ${offset} overflows buffer of ${b.length}`);
    }
    if (this.recording) {
      this.recording.recordWrite(writeData, b, data, offset);
      return;
    }
    writeData(b, data, offset);
  }

  read(buf: DeviceBuffer): HostArray {
    if (this.recording) throw Recorder.refuse('read');
    return (buf as CpuBuffer).data.slice();
  }

  memoryStats(): MemoryStats {
    return {
      liveBuffers: this.live.size,
      liveBytes: this.liveBytes,
      peakBytes: this.peakBytes,
      cachedBytes: 0,
    };
  }

  resetPeak(): void {
    this.peakBytes = this.liveBytes;
  }

  synchronize(): void {
    if (this.recording) throw Recorder.refuse('synchronize');
  }

  capture(fn: () => void, inputs: readonly HostArray[] = []): GraphCapture {
    if (this.recording) throw new Error('cpu backend: graph capture inside another capture');
    const rec = new Recorder(inputs, (x) => x instanceof CpuBuffer);
    this.recording = rec;
    const release = (pool: GraphPool) => {
      for (const [key, list] of pool.free) for (const data of list) this.returnToPool(key, data);
      pool.free.clear();
    };
    try {
      fn();
    } catch (e) {
      this.recording = null;
      rec.pool.open = false;
      rec.pool.destroyed = true;
      release(rec.pool);
      throw e;
    }
    this.recording = null;
    return new CpuGraph(rec.calls, rec.pool, this, () => this.recording !== null, release);
  }

  /** keep a freed array for reuse by alloc (bounded by POOL_BYTES) */
  private returnToPool(key: string, data: HostArray): void {
    if (data.byteLength < 1024 || this.pooledBytes + data.byteLength > CpuBackend.POOL_BYTES) return;
    let list = this.pool.get(key);
    if (!list) this.pool.set(key, (list = []));
    list.push(data);
    this.pooledBytes += data.byteLength;
  }

  // ---- elementwise --------------------------------------------------------------------------

  fill(out: DeviceBuffer, value: number): void {
    const b = out as CpuBuffer;
    // 16-bit storage holds bit patterns: store the rounded value's bits
    const v = b.dtype === 'bf16' ? f32ToBf16(value) : b.dtype === 'f16' ? f32ToF16(value) : value;
    b.data.fill(v);
  }

  cast(x: DeviceBuffer, out: DeviceBuffer): void {
    const src = x as CpuBuffer;
    const dst = out as CpuBuffer;
    const n = src.length;
    if (dst.length !== n) throw new Error(`cpu backend: cast of ${n} elements into ${dst.length}`);
    const s = src.data;
    const d = dst.data;
    const read: (i: number) => number =
      src.dtype === 'bf16'
        ? (i) => bf16ToF32(s[i])
        : src.dtype === 'f16'
          ? (i) => f16ToF32(s[i])
          : (i) => s[i];
    if (dst.dtype === 'bf16') for (let i = 0; i < n; i++) d[i] = f32ToBf16(read(i));
    else if (dst.dtype === 'f16') for (let i = 0; i < n; i++) d[i] = f32ToF16(read(i));
    else if (dst.dtype === 'i32') for (let i = 0; i < n; i++) d[i] = Math.trunc(read(i));
    else for (let i = 0; i < n; i++) d[i] = read(i);
  }

  /**
   * A linear layer's output gradient for its 16-bit products and its bias's gradient, composed
   * from cast, unaryBackward and reduce (the same results as the unfused ops; the CUDA backend
   * reads g once).
   */
  castColumnSums(
    g: DeviceBuffer,
    g16: DeviceBuffer,
    sums: DeviceBuffer,
    rows: number,
    cols: number,
    op: UnaryOp | null,
    x: DeviceBuffer | null,
  ): void {
    const n = rows * cols;
    const d16 = (g16 as CpuBuffer).dtype;
    if (d16 !== 'bf16' && d16 !== 'f16')
      throw new Error(`cpu backend: castColumnSums output must be bf16 or f16, got ${d16}`);
    if (g.length !== n || g16.length !== n || sums.length !== cols)
      throw new Error(
        `cpu backend: castColumnSums of (${rows}, ${cols}): gradients of ${n}, sums of ${cols}`,
      );
    fl(g, 'castColumnSums gradient');
    const temps: DeviceBuffer[] = [];
    let v = g;
    if (op !== null) {
      if (!x || x.length !== n)
        throw new Error(`cpu backend: castColumnSums with ${op} needs its ${n} inputs`);
      let xf = x;
      if (x.dtype !== 'f32' && x.dtype !== 'f64') {
        xf = this.alloc('f32', n);
        this.cast(x, xf);
        temps.push(xf);
      }
      v = this.alloc(g.dtype, n);
      temps.push(v);
      this.unaryBackward(op, xf, g, v);
    }
    this.cast(v, g16);
    this.reduce('sum', v, sums, 1, rows, cols);
    for (const t of temps) this.free(t);
  }

  unary(op: UnaryOp, x: DeviceBuffer, out: DeviceBuffer, alpha: number, beta: number): void {
    const od = (out as CpuBuffer).dtype;
    if (od === 'bf16' || od === 'f16') {
      // through an f32 buffer, rounded like cast
      const tmp = this.alloc('f32', out.length);
      this.unary(op, x, tmp, alpha, beta);
      this.cast(tmp, out);
      this.free(tmp);
      return;
    }
    const a = fl(x, `${op} input`);
    const o = fl(out, `${op} output`);
    const n = a.length;
    if (
      a instanceof Float32Array &&
      o instanceof Float32Array &&
      (WASM_UNARY as readonly string[]).includes(op) &&
      unaryF32(op as (typeof WASM_UNARY)[number], a, o, alpha, beta)
    )
      return;
    switch (op) {
      case 'identity':
        for (let i = 0; i < n; i++) o[i] = alpha * a[i] + beta;
        return;
      case 'exp':
        for (let i = 0; i < n; i++) o[i] = alpha * Math.exp(a[i]) + beta;
        return;
      case 'relu':
        for (let i = 0; i < n; i++) o[i] = alpha * (a[i] > 0 ? a[i] : 0) + beta;
        return;
      case 'silu':
        for (let i = 0; i < n; i++) o[i] = (alpha * a[i]) / (1 + Math.exp(-a[i])) + beta;
        return;
      case 'geluNew':
        for (let i = 0; i < n; i++) {
          const x = a[i];
          o[i] = alpha * 0.5 * x * (1 + Math.tanh(0.7978845608028654 * (x + 0.044715 * x * x * x))) + beta;
        }
        return;
      default: {
        const f = unaryFn(op);
        for (let i = 0; i < n; i++) o[i] = alpha * f(a[i]) + beta;
      }
    }
  }

  unaryBackward(op: UnaryOp, x: DeviceBuffer, gy: DeviceBuffer, gx: DeviceBuffer): void {
    const a = fl(x, `${op} input`);
    const g = fl(gy, `${op} gradient`);
    const o = fl(gx, `${op} input gradient`);
    if (
      a instanceof Float32Array &&
      g instanceof Float32Array &&
      o instanceof Float32Array &&
      (WASM_UNARY_GRAD as readonly string[]).includes(op) &&
      unaryGradF32(op as (typeof WASM_UNARY_GRAD)[number], a, g, o)
    )
      return;
    if (op === 'relu') {
      for (let i = 0; i < a.length; i++) o[i] = a[i] > 0 ? g[i] : 0;
      return;
    }
    if (op === 'silu') {
      for (let i = 0; i < a.length; i++) {
        const s = 1 / (1 + Math.exp(-a[i]));
        o[i] = g[i] * s * (1 + a[i] * (1 - s));
      }
      return;
    }
    const d = unaryDerivative(op);
    for (let i = 0; i < a.length; i++) o[i] = g[i] * d(a[i]);
  }

  binary(
    op: BinaryOp,
    a: DeviceBuffer,
    aStrides: number[],
    b: DeviceBuffer,
    bStrides: number[],
    out: DeviceBuffer,
    shape: number[],
  ): void {
    const x = fl(a, `${op} left operand`);
    const y = fl(b, `${op} right operand`);
    const o = fl(out, `${op} output`);
    const outStrides = denseStrides(shape);
    const run = binaryRun(op, x, y, o);
    forEachRun(shape, aStrides, bStrides, outStrides, 0, 0, 0, run);
  }

  copyStrided(
    src: DeviceBuffer,
    srcOffset: number,
    srcStrides: number[],
    dst: DeviceBuffer,
    dstOffset: number,
    dstStrides: number[],
    shape: number[],
    accumulate: boolean,
  ): void {
    const s = (src as CpuBuffer).data;
    const d = (dst as CpuBuffer).data;
    if ((src as CpuBuffer).dtype !== (dst as CpuBuffer).dtype) {
      throw new Error(`cpu backend: copy from ${(src as CpuBuffer).dtype} to ${(dst as CpuBuffer).dtype}`);
    }
    forEachRun(
      shape,
      srcStrides,
      dstStrides,
      dstStrides,
      srcOffset,
      dstOffset,
      dstOffset,
      (os, od, _, len, ss, sd) => {
        if (accumulate) {
          if (
            len >= WASM_RUN &&
            ss === 1 &&
            sd === 1 &&
            d instanceof Float32Array &&
            s instanceof Float32Array &&
            binaryRunF32('add', d, od, s, os, 1, d, od, len)
          )
            return;
          for (let i = 0; i < len; i++) d[od + i * sd] += s[os + i * ss];
        } else if (ss === 1 && sd === 1)
          (d as Float32Array).set((s as Float32Array).subarray(os, os + len), od);
        else for (let i = 0; i < len; i++) d[od + i * sd] = s[os + i * ss];
      },
    );
  }

  reduce(op: ReduceOp, x: DeviceBuffer, out: DeviceBuffer, outer: number, n: number, inner: number): void {
    const a = fl(x, `reduce ${op} input`);
    const o = fl(out, `reduce ${op} output`);
    if (op === 'sum' && inner >= 16 && a instanceof Float32Array && columnSumF32(a, o, outer, n, inner))
      return;
    const acc = new Float64Array(inner);
    for (let p = 0; p < outer; p++) {
      const base = p * n * inner;
      if (op === 'sum') {
        acc.fill(0);
        for (let j = 0; j < n; j++) {
          const row = base + j * inner;
          for (let i = 0; i < inner; i++) acc[i] += a[row + i];
        }
      } else {
        acc.fill(-Infinity);
        for (let j = 0; j < n; j++) {
          const row = base + j * inner;
          for (let i = 0; i < inner; i++) {
            const v = a[row + i];
            if (v > acc[i] || Number.isNaN(v)) acc[i] = v;
          }
        }
      }
      for (let i = 0; i < inner; i++) o[p * inner + i] = acc[i];
    }
  }

  cumsum(
    x: DeviceBuffer,
    out: DeviceBuffer,
    outer: number,
    n: number,
    inner: number,
    reverse: boolean,
  ): void {
    const a = fl(x, 'cumsum input');
    const o = fl(out, 'cumsum output');
    const acc = new Float64Array(inner);
    for (let p = 0; p < outer; p++) {
      acc.fill(0);
      const base = p * n * inner;
      for (let jj = 0; jj < n; jj++) {
        const j = reverse ? n - 1 - jj : jj;
        const row = base + j * inner;
        for (let i = 0; i < inner; i++) {
          acc[i] += a[row + i];
          o[row + i] = acc[i];
        }
      }
    }
  }

  segsum(x: DeviceBuffer, out: DeviceBuffer, nRows: number, t: number): void {
    const a = fl(x, 'segsum input');
    const o = fl(out, 'segsum output');
    for (let r = 0; r < nRows; r++) {
      for (let i = 0; i < t; i++) {
        const row = (r * t + i) * t;
        let acc = 0;
        o[row + i] = 0;
        for (let j = i - 1; j >= 0; j--) {
          acc += a[r * t + j + 1];
          o[row + j] = acc;
        }
        for (let j = i + 1; j < t; j++) o[row + j] = -Infinity;
      }
    }
  }

  segsumBackward(gOut: DeviceBuffer, gx: DeviceBuffer, nRows: number, t: number): void {
    const g = fl(gOut, 'segsum gradient');
    const o = fl(gx, 'segsum input gradient');
    // out[i, j] depends on x[k] for j < k <= i: gx[k] = sum_{i >= k} sum_{j < k} g[i, j]
    for (let r = 0; r < nRows; r++) {
      for (let k = 0; k < t; k++) o[r * t + k] = 0;
      for (let i = 0; i < t; i++) {
        const row = (r * t + i) * t;
        let prefix = 0; // sum_{j < k} g[i, j]
        for (let k = 1; k <= i; k++) {
          prefix += g[row + k - 1];
          o[r * t + k] += prefix;
        }
      }
    }
  }

  causalMask(x: DeviceBuffer, out: DeviceBuffer, nRows: number, tq: number, tk: number, value: number): void {
    const a = fl(x, 'causal mask input');
    const o = fl(out, 'causal mask output');
    const shift = tk - tq;
    for (let r = 0; r < nRows; r++) {
      for (let i = 0; i < tq; i++) {
        const row = (r * tq + i) * tk;
        for (let j = 0; j < tk; j++) o[row + j] = j > i + shift ? value : a[row + j];
      }
    }
  }

  dropout(x: DeviceBuffer, out: DeviceBuffer, p: number, seed: number): void {
    const a = fl(x, 'dropout input');
    const o = fl(out, 'dropout output');
    const scale = 1 / (1 - p);
    for (let i = 0; i < a.length; i++) o[i] = dropoutKeep(seed, i, p) ? a[i] * scale : 0;
  }

  siluGate(
    y: DeviceBuffer,
    z: DeviceBuffer,
    bias: DeviceBuffer,
    out: DeviceBuffer,
    rows: number,
    cols: number,
  ): void {
    const yv = fl(y, 'siluGate y');
    const o = fl(out, 'siluGate output');
    const zv = fl(z, 'siluGate z');
    const bv = fl(bias, 'siluGate bias');
    if (
      yv instanceof Float32Array &&
      zv instanceof Float32Array &&
      bv instanceof Float32Array &&
      o instanceof Float32Array &&
      siluGateF32(yv, zv, bv, o, cols)
    )
      return;
    eachGate(z, bias, rows, cols, (i, u) => (o[i] = (yv[i] * u) / (1 + Math.exp(-u))));
  }

  siluGateBackward(
    y: DeviceBuffer,
    z: DeviceBuffer,
    bias: DeviceBuffer,
    g: DeviceBuffer,
    gy: DeviceBuffer,
    gz: DeviceBuffer,
    rows: number,
    cols: number,
  ): void {
    const yv = fl(y, 'siluGate y');
    const gv = fl(g, 'siluGate gradient');
    const oy = fl(gy, 'siluGate y gradient');
    const oz = fl(gz, 'siluGate z gradient');
    const zv = fl(z, 'siluGate z');
    const bv = fl(bias, 'siluGate bias');
    if (
      yv instanceof Float32Array &&
      zv instanceof Float32Array &&
      bv instanceof Float32Array &&
      gv instanceof Float32Array &&
      oy instanceof Float32Array &&
      oz instanceof Float32Array &&
      siluGateGradF32(yv, zv, bv, gv, oy, oz, cols)
    )
      return;
    eachGate(z, bias, rows, cols, (i, u) => {
      const s = 1 / (1 + Math.exp(-u));
      oy[i] = gv[i] * u * s;
      oz[i] = gv[i] * yv[i] * s * (1 + u * (1 - s));
    });
  }

  ssmStep(
    xbc: DeviceBuffer,
    convState: DeviceBuffer,
    convWeight: DeviceBuffer,
    convBias: DeviceBuffer | null,
    a: DeviceBuffer,
    D: DeviceBuffer,
    ssm: DeviceBuffer,
    y: DeviceBuffer,
    p: SsmStepParams,
  ): void {
    const { batch, heads: H, groups: G, headDim: P, dState: N, kernel: K } = p;
    const xv = fl(xbc, 'ssmStep xbc');
    const st = fl(convState, 'ssmStep conv state');
    const w = fl(convWeight, 'ssmStep conv weight');
    const cb = convBias ? fl(convBias, 'ssmStep conv bias') : null;
    const av = fl(a, 'ssmStep a');
    const dv = fl(D, 'ssmStep D');
    const h = fl(ssm, 'ssmStep state');
    const yv = fl(y, 'ssmStep output');
    const C = H * P + 2 * G * N;
    const conv = new Float64Array(C);
    for (let b = 0; b < batch; b++) {
      for (let ch = 0; ch < C; ch++) {
        let acc = cb ? cb[ch] : 0;
        for (let j = 0; j < K - 1; j++) acc += w[ch * K + j] * st[(b * (K - 1) + j) * C + ch];
        acc += w[ch * K + K - 1] * xv[b * C + ch];
        conv[ch] = p.silu ? acc * sigmoid(acc) : acc;
      }
      for (let hh = 0; hh < H; hh++) {
        const g = Math.floor(hh / (H / G));
        const alpha = Math.exp(-softplus(av[b * H + hh]));
        for (let pp = 0; pp < P; pp++) {
          const x = conv[hh * P + pp];
          let acc = 0;
          const base = ((b * H + hh) * P + pp) * N;
          for (let n = 0; n < N; n++) {
            const v = alpha * h[base + n] + x * conv[H * P + g * N + n];
            h[base + n] = v;
            acc += v * conv[H * P + G * N + g * N + n];
          }
          yv[(b * H + hh) * P + pp] = acc + dv[hh] * x;
        }
      }
      // push the new inputs into the conv state
      for (let ch = 0; ch < C; ch++) {
        for (let j = 0; j < K - 2; j++) st[(b * (K - 1) + j) * C + ch] = st[(b * (K - 1) + j + 1) * C + ch];
        if (K > 1) st[(b * (K - 1) + K - 2) * C + ch] = xv[b * C + ch];
      }
    }
  }

  // ---- linear algebra -----------------------------------------------------------------------

  matmul(
    a: DeviceBuffer,
    b: DeviceBuffer,
    c: DeviceBuffer,
    p: MatmulParams,
    bias?: DeviceBuffer | null,
  ): void {
    // 16-bit operands (mixed precision) are widened to f32; the product is f32
    const widen = (x: DeviceBuffer, what: string): FloatArray => {
      const xb = x as CpuBuffer;
      if (xb.dtype !== 'bf16' && xb.dtype !== 'f16') return fl(x, what);
      const conv = xb.dtype === 'bf16' ? bf16ToF32 : f16ToF32;
      const out = new Float32Array(xb.length);
      for (let i = 0; i < out.length; i++) out[i] = conv(xb.data[i]);
      return out;
    };
    const A = widen(a, 'matmul A');
    const B = widen(b, 'matmul B');
    const C = fl(c, 'matmul C');
    if (A.constructor !== C.constructor || B.constructor !== C.constructor) {
      throw new Error('cpu backend: matmul operands must share one dtype');
    }
    const lda = p.transA ? p.m : p.k;
    const ldb = p.transB ? p.k : p.n;
    const bv = bias ? fl(bias, 'matmul bias') : null;
    if (bv && (bv.constructor !== C.constructor || bv.length !== p.n))
      throw new Error(`cpu backend: matmul bias must be ${p.n} values of C's dtype`);
    // a bias into an overwritten C: C's rows start as the bias and the product accumulates onto them
    const biasFirst = bv !== null && p.beta === 0;
    for (let i = 0; i < p.batch; i++) {
      if (biasFirst) fillRows(C, bv, i * p.strideC, p.m);
      gemm(
        this.useBlas,
        p.transA,
        p.transB,
        p.m,
        p.n,
        p.k,
        p.alpha,
        A,
        i * p.strideA,
        lda,
        B,
        i * p.strideB,
        ldb,
        biasFirst ? 1 : p.beta,
        C,
        i * p.strideC,
        p.n,
      );
    }
    if (bv && !biasFirst) {
      for (let i = 0; i < p.batch; i++)
        for (let r = 0; r < p.m; r++) {
          const o = i * p.strideC + r * p.n;
          for (let j = 0; j < p.n; j++) C[o + j] += bv[j];
        }
    }
  }

  // ---- rows ---------------------------------------------------------------------------------

  softmax(x: DeviceBuffer, out: DeviceBuffer, nRows: number, cols: number, log: boolean): void {
    rows.softmax(fl(x, 'softmax input'), fl(out, 'softmax output'), nRows, cols, log);
  }

  softmaxBackward(
    y: DeviceBuffer,
    gy: DeviceBuffer,
    gx: DeviceBuffer,
    nRows: number,
    cols: number,
    log: boolean,
  ): void {
    rows.softmaxBackward(
      fl(y, 'softmax output'),
      fl(gy, 'softmax gradient'),
      fl(gx, 'softmax input gradient'),
      nRows,
      cols,
      log,
    );
  }

  layerNorm(
    x: DeviceBuffer,
    weight: DeviceBuffer,
    bias: DeviceBuffer | null,
    out: DeviceBuffer,
    mean: DeviceBuffer,
    rstd: DeviceBuffer,
    nRows: number,
    cols: number,
    eps: number,
    out16: DeviceBuffer | null = null,
  ): void {
    rows.layerNorm(
      fl(x, 'layerNorm input'),
      fl(weight, 'layerNorm weight'),
      bias ? fl(bias, 'layerNorm bias') : null,
      fl(out, 'layerNorm output'),
      fl(mean, 'layerNorm mean'),
      fl(rstd, 'layerNorm rstd'),
      nRows,
      cols,
      eps,
    );
    if (out16) round16(fl(out, 'norm output'), out16, "a norm's 16-bit output");
  }

  layerNormBackward(
    x: DeviceBuffer,
    weight: DeviceBuffer,
    mean: DeviceBuffer,
    rstd: DeviceBuffer,
    gy: DeviceBuffer,
    gx: DeviceBuffer,
    gWeight: DeviceBuffer,
    gBias: DeviceBuffer | null,
    nRows: number,
    cols: number,
    accumulate = false,
  ): void {
    const out = fl(gx, 'layerNorm input gradient');
    const gxs = accumulate ? scratchLike(out) : out;
    rows.layerNormBackward(
      fl(x, 'layerNorm input'),
      fl(weight, 'layerNorm weight'),
      fl(mean, 'layerNorm mean'),
      fl(rstd, 'layerNorm rstd'),
      fl(gy, 'layerNorm gradient'),
      gxs,
      fl(gWeight, 'layerNorm weight gradient'),
      gBias ? fl(gBias, 'layerNorm bias gradient') : null,
      nRows,
      cols,
    );
    if (accumulate) for (let i = 0; i < out.length; i++) out[i] += gxs[i];
  }

  rmsNorm(
    x: DeviceBuffer,
    weight: DeviceBuffer,
    out: DeviceBuffer,
    rstd: DeviceBuffer,
    nRows: number,
    cols: number,
    eps: number,
    out16: DeviceBuffer | null = null,
  ): void {
    rows.rmsNorm(
      fl(x, 'rmsNorm input'),
      fl(weight, 'rmsNorm weight'),
      fl(out, 'rmsNorm output'),
      fl(rstd, 'rmsNorm rstd'),
      nRows,
      cols,
      eps,
    );
    if (out16) round16(fl(out, 'norm output'), out16, "a norm's 16-bit output");
  }

  addRmsNorm(
    a: DeviceBuffer,
    b: DeviceBuffer,
    weight: DeviceBuffer,
    sum: DeviceBuffer,
    out: DeviceBuffer,
    rstd: DeviceBuffer,
    nRows: number,
    cols: number,
    eps: number,
    out16: DeviceBuffer | null,
  ): void {
    const as = fl(a, 'addRmsNorm a');
    const bs = fl(b, 'addRmsNorm b');
    const ss = fl(sum, 'addRmsNorm sum');
    for (let i = 0; i < ss.length; i++) ss[i] = as[i] + bs[i];
    rows.rmsNorm(
      ss,
      fl(weight, 'rmsNorm weight'),
      fl(out, 'rmsNorm output'),
      fl(rstd, 'rmsNorm rstd'),
      nRows,
      cols,
      eps,
    );
    if (out16) round16(fl(out, 'rmsNorm output'), out16, "a norm's 16-bit output");
  }

  rmsNormBackward(
    x: DeviceBuffer,
    weight: DeviceBuffer,
    rstd: DeviceBuffer,
    gy: DeviceBuffer,
    gx: DeviceBuffer,
    gWeight: DeviceBuffer,
    nRows: number,
    cols: number,
    accumulate = false,
  ): void {
    const out = fl(gx, 'rmsNorm input gradient');
    const gxs = accumulate ? scratchLike(out) : out;
    rows.rmsNormBackward(
      fl(x, 'rmsNorm input'),
      fl(weight, 'rmsNorm weight'),
      fl(rstd, 'rmsNorm rstd'),
      fl(gy, 'rmsNorm gradient'),
      gxs,
      fl(gWeight, 'rmsNorm weight gradient'),
      nRows,
      cols,
    );
    if (accumulate) for (let i = 0; i < out.length; i++) out[i] += gxs[i];
  }

  embedding(table: DeviceBuffer, ids: DeviceBuffer, out: DeviceBuffer, n: number, dim: number): void {
    const t = fl(table, 'embedding table');
    const id = ints(ids, 'embedding ids');
    const o = fl(out, 'embedding output');
    const vocab = t.length / dim;
    for (let i = 0; i < n; i++) {
      const row = id[i];
      if (row < 0 || row >= vocab)
        throw new Error(`embedding: token id ${row} outside the vocabulary of ${vocab}`);
      o.set(t.subarray(row * dim, row * dim + dim), i * dim);
    }
  }

  embeddingBackward(
    gOut: DeviceBuffer,
    ids: DeviceBuffer,
    gTable: DeviceBuffer,
    n: number,
    dim: number,
  ): void {
    const g = fl(gOut, 'embedding gradient');
    const id = ints(ids, 'embedding ids');
    const o = fl(gTable, 'embedding table gradient');
    for (let i = 0; i < n; i++) {
      const row = id[i] * dim;
      for (let j = 0; j < dim; j++) o[row + j] += g[i * dim + j];
    }
  }

  // ---- sequence mixers ----------------------------------------------------------------------

  causalConv1d(
    x: DeviceBuffer,
    weight: DeviceBuffer,
    bias: DeviceBuffer | null,
    out: DeviceBuffer,
    batch: number,
    t: number,
    channels: number,
    kernel: number,
  ): void {
    seq.causalConv1d(
      fl(x, 'conv1d input'),
      fl(weight, 'conv1d weight'),
      bias ? fl(bias, 'conv1d bias') : null,
      fl(out, 'conv1d output'),
      batch,
      t,
      channels,
      kernel,
    );
  }

  causalConv1dBackward(
    x: DeviceBuffer,
    weight: DeviceBuffer,
    gy: DeviceBuffer,
    gx: DeviceBuffer,
    gWeight: DeviceBuffer,
    gBias: DeviceBuffer | null,
    batch: number,
    t: number,
    channels: number,
    kernel: number,
  ): void {
    seq.causalConv1dBackward(
      fl(x, 'conv1d input'),
      fl(weight, 'conv1d weight'),
      fl(gy, 'conv1d gradient'),
      fl(gx, 'conv1d input gradient'),
      fl(gWeight, 'conv1d weight gradient'),
      gBias ? fl(gBias, 'conv1d bias gradient') : null,
      batch,
      t,
      channels,
      kernel,
    );
  }

  causalConv1dWindow(
    x: DeviceBuffer,
    xWin: ColumnWindow,
    weight: DeviceBuffer,
    bias: DeviceBuffer | null,
    out: DeviceBuffer,
    xKeep: DeviceBuffer | null,
    batch: number,
    t: number,
    channels: number,
    kernel: number,
  ): void {
    const xs = fl(x, 'conv1d input');
    seq.causalConv1dWindow(
      xs,
      xWin,
      fl(weight, 'conv1d weight'),
      bias ? fl(bias, 'conv1d bias') : null,
      fl(out, 'conv1d output'),
      batch,
      t,
      channels,
      kernel,
    );
    if (xKeep) {
      // the bf16 copy of the window, as a GPU backend keeps it for the weight gradient
      const keep = xKeep as CpuBuffer;
      if (keep.dtype !== 'bf16')
        throw new Error(`cpu backend: conv1d kept input must be bf16, got ${keep.dtype}`);
      const dense = seq.gatherWindow(xs, xWin, batch * t, channels);
      const k16 = keep.data as Uint16Array;
      for (let i = 0; i < dense.length; i++) k16[i] = f32ToBf16(dense[i]);
    }
  }

  causalConv1dWindowBackward(
    x: DeviceBuffer,
    xWin: ColumnWindow | null,
    weight: DeviceBuffer,
    gy: DeviceBuffer,
    gx: DeviceBuffer,
    gxWin: ColumnWindow,
    accumulate: boolean,
    gWeight: DeviceBuffer,
    gBias: DeviceBuffer | null,
    batch: number,
    t: number,
    channels: number,
    kernel: number,
  ): void {
    const xb = x as CpuBuffer;
    const xs =
      xb.dtype === 'bf16'
        ? Float32Array.from(xb.data as Uint16Array, (v) => bf16ToF32(v))
        : fl(x, 'conv1d input');
    seq.causalConv1dWindowBackward(
      xs,
      xWin,
      fl(weight, 'conv1d weight'),
      fl(gy, 'conv1d gradient'),
      fl(gx, 'conv1d input gradient'),
      gxWin,
      accumulate,
      fl(gWeight, 'conv1d weight gradient'),
      gBias ? fl(gBias, 'conv1d bias gradient') : null,
      batch,
      t,
      channels,
      kernel,
    );
  }

  siluGateDWindow(
    y: DeviceBuffer,
    x: DeviceBuffer,
    D: DeviceBuffer,
    z: DeviceBuffer,
    zWin: ColumnWindow,
    bias: DeviceBuffer,
    out: DeviceBuffer,
    rows: number,
    cols: number,
    headDim: number,
    yKeep: DeviceBuffer | null,
    zKeep: DeviceBuffer | null,
  ): void {
    const ys = fl(y, 'siluGateD y');
    const xs = fl(x, 'siluGateD x');
    const ds = fl(D, 'siluGateD D');
    const zs = fl(z, 'siluGateD z');
    const bs = fl(bias, 'siluGateD bias');
    const store = (buf: DeviceBuffer) => {
      const b = buf as CpuBuffer;
      const conv = b.dtype === 'bf16' ? f32ToBf16 : b.dtype === 'f16' ? f32ToF16 : (v: number) => v;
      return (i: number, v: number) => (b.data[i] = conv(v));
    };
    const o = store(out);
    const yk = yKeep ? store(yKeep) : null;
    const zk = zKeep ? store(zKeep) : null;
    for (let r = 0; r < rows; r++)
      for (let c = 0; c < cols; c++) {
        const i = r * cols + c;
        const zi = zs[zWin.offset + r * zWin.stride + c];
        const u = zi + bs[c];
        const v = ys[i] + ds[Math.floor(c / headDim)] * xs[i];
        o(i, v * u * sigmoid(u));
        yk?.(i, ys[i]);
        zk?.(i, zi);
      }
  }

  siluGateDWindowBackward(
    y: DeviceBuffer,
    x: DeviceBuffer,
    D: DeviceBuffer,
    z: DeviceBuffer,
    bias: DeviceBuffer,
    g: DeviceBuffer,
    gy: DeviceBuffer,
    gx: DeviceBuffer,
    gz: DeviceBuffer,
    gzWin: ColumnWindow,
    accumulate: boolean,
    gD: DeviceBuffer,
    gBias: DeviceBuffer | null,
    rows: number,
    cols: number,
    headDim: number,
  ): void {
    // y and z f32/f64, or the 16-bit copies the forward kept
    const load = (buf: DeviceBuffer, what: string): ((i: number) => number) => {
      const b = buf as CpuBuffer;
      if (b.dtype === 'bf16' || b.dtype === 'f16') {
        const d = b.data as Uint16Array;
        const conv = b.dtype === 'bf16' ? bf16ToF32 : f16ToF32;
        return (i) => conv(d[i]);
      }
      const d = fl(buf, what);
      return (i) => d[i];
    };
    const ys = load(y, 'siluGateD y');
    const zs = load(z, 'siluGateD z');
    const xs = fl(x, 'siluGateD x');
    const ds = fl(D, 'siluGateD D');
    const bs = fl(bias, 'siluGateD bias');
    const gs = fl(g, 'siluGateD gradient');
    const gyo = fl(gy, 'siluGateD y gradient');
    const gxo = fl(gx, 'siluGateD x gradient');
    const gzo = fl(gz, 'siluGateD z gradient');
    const accD = new Float64Array(ds.length);
    const accB = new Float64Array(cols);
    for (let r = 0; r < rows; r++)
      for (let c = 0; c < cols; c++) {
        const i = r * cols + c;
        const h = Math.floor(c / headDim);
        const u = zs(i) + bs[c];
        const sg = sigmoid(u);
        const v = ys(i) + ds[h] * xs[i];
        const gyi = gs[i] * u * sg;
        gyo[i] = gyi;
        gxo[i] = gyi * ds[h];
        const gzi = gs[i] * v * sg * (1 + u * (1 - sg));
        const o = gzWin.offset + r * gzWin.stride + c;
        gzo[o] = accumulate ? gzo[o] + gzi : gzi;
        accD[h] += gyi * xs[i];
        accB[c] += gzi;
      }
    fl(gD, 'siluGateD D gradient').set(accD);
    if (gBias) fl(gBias, 'siluGateD bias gradient').set(accB);
  }

  logDecayWindow(
    a: DeviceBuffer,
    aWin: ColumnWindow,
    out: DeviceBuffer,
    aKeep: DeviceBuffer | null,
    rows: number,
    cols: number,
  ): void {
    const as = seq.gatherWindow(fl(a, 'logDecay a'), aWin, rows, cols);
    const o = fl(out, 'logDecay output');
    for (let i = 0; i < as.length; i++) o[i] = -softplus(as[i]);
    if (aKeep) fl(aKeep, 'logDecay kept a').set(as);
  }

  logDecayWindowBackward(
    a: DeviceBuffer,
    g: DeviceBuffer,
    ga: DeviceBuffer,
    gaWin: ColumnWindow,
    accumulate: boolean,
    rows: number,
    cols: number,
  ): void {
    const as = fl(a, 'logDecay a');
    const gs = fl(g, 'logDecay gradient');
    const d = as instanceof Float64Array ? new Float64Array(rows * cols) : new Float32Array(rows * cols);
    for (let i = 0; i < d.length; i++) d[i] = -gs[i] * sigmoid(as[i]);
    seq.scatterWindow(d, fl(ga, 'logDecay a gradient'), gaWin, rows, cols, accumulate);
  }

  rope(x: DeviceBuffer, out: DeviceBuffer, p: RopeParams): void {
    seq.rope(fl(x, 'rope input'), fl(out, 'rope output'), p);
  }

  attention(
    q: DeviceBuffer,
    k: DeviceBuffer,
    v: DeviceBuffer,
    out: DeviceBuffer,
    lse: DeviceBuffer,
    probs: DeviceBuffer | null,
    p: AttentionParams,
  ): void {
    if (p.rope) {
      // q and k rotated as rope does, then attention
      const rp = { ...p.rope, batch: p.batch, headDim: p.headDim, inverse: false };
      const qr = this.alloc((q as CpuBuffer).dtype, q.length);
      const kr = this.alloc((k as CpuBuffer).dtype, k.length);
      this.rope(q, qr, { ...rp, seqLen: p.tq, heads: p.heads });
      this.rope(k, kr, { ...rp, seqLen: p.tk, heads: p.kvHeads });
      this.attention(qr, kr, v, out, lse, probs, { ...p, rope: undefined });
      this.free(qr);
      this.free(kr);
      return;
    }
    if ((out as CpuBuffer).dtype === 'bf16') {
      // a 16-bit output (lowPrecision): through an f32 buffer, rounded like cast
      const tmp = this.alloc('f32', out.length);
      this.attention(q, k, v, tmp, lse, probs, p);
      this.cast(tmp, out);
      this.free(tmp);
      return;
    }
    seq.attention(
      this.useBlas,
      fl(q, 'attention q'),
      fl(k, 'attention k'),
      fl(v, 'attention v'),
      fl(out, 'attention output'),
      fl(lse, 'attention lse'),
      probs ? fl(probs, 'attention probs') : null,
      attentionParams(p),
    );
  }

  attentionBackward(
    q: DeviceBuffer,
    k: DeviceBuffer,
    v: DeviceBuffer,
    out: DeviceBuffer,
    lse: DeviceBuffer,
    gOut: DeviceBuffer,
    gq: DeviceBuffer,
    gk: DeviceBuffer,
    gv: DeviceBuffer,
    p: AttentionParams,
  ): void {
    seq.attentionBackward(
      this.useBlas,
      fl(q, 'attention q'),
      fl(k, 'attention k'),
      fl(v, 'attention v'),
      fl(out, 'attention output'),
      fl(lse, 'attention lse'),
      fl(gOut, 'attention gradient'),
      fl(gq, 'attention q gradient'),
      fl(gk, 'attention k gradient'),
      fl(gv, 'attention v gradient'),
      attentionParams(p),
    );
  }

  ssdScan(
    x: DeviceBuffer,
    logA: DeviceBuffer,
    bm: DeviceBuffer,
    cm: DeviceBuffer,
    y: DeviceBuffer,
    states: DeviceBuffer,
    finalState: DeviceBuffer | null,
    p: SsdParams,
  ): void {
    ssd.ssdScan(
      fl(x, 'ssd x'),
      fl(logA, 'ssd logA'),
      fl(bm, 'ssd B'),
      fl(cm, 'ssd C'),
      fl(y, 'ssd y'),
      fl(states, 'ssd states'),
      finalState ? fl(finalState, 'ssd final state') : null,
      ssdParams(p),
      this.useBlas,
    );
  }

  ssdScanBackward(
    x: DeviceBuffer,
    logA: DeviceBuffer,
    bm: DeviceBuffer,
    cm: DeviceBuffer,
    states: DeviceBuffer,
    gy: DeviceBuffer,
    gx: DeviceBuffer,
    gLogA: DeviceBuffer,
    gB: DeviceBuffer,
    gC: DeviceBuffer,
    p: SsdParams,
    accumulateGx = false,
  ): void {
    const out = fl(gx, 'ssd x gradient');
    const gxs = accumulateGx ? scratchLike(out) : out;
    ssd.ssdScanBackward(
      fl(x, 'ssd x'),
      fl(logA, 'ssd logA'),
      fl(bm, 'ssd B'),
      fl(cm, 'ssd C'),
      fl(states, 'ssd states'),
      fl(gy, 'ssd gradient'),
      gxs,
      fl(gLogA, 'ssd logA gradient'),
      fl(gB, 'ssd B gradient'),
      fl(gC, 'ssd C gradient'),
      ssdParams(p),
      this.useBlas,
    );
    if (accumulateGx) for (let i = 0; i < out.length; i++) out[i] += gxs[i];
  }

  materializeMixer(
    logA: DeviceBuffer,
    bm: DeviceBuffer,
    cm: DeviceBuffer,
    out: DeviceBuffer,
    p: SsdParams,
  ): void {
    ssd.materializeMixer(
      fl(logA, 'mixer logA'),
      fl(bm, 'mixer B'),
      fl(cm, 'mixer C'),
      fl(out, 'mixer output'),
      ssdParams(p),
    );
  }

  materializeMixerBackward(
    logA: DeviceBuffer,
    bm: DeviceBuffer,
    cm: DeviceBuffer,
    gOut: DeviceBuffer,
    gLogA: DeviceBuffer,
    gB: DeviceBuffer,
    gC: DeviceBuffer,
    p: SsdParams,
  ): void {
    ssd.materializeMixerBackward(
      fl(logA, 'mixer logA'),
      fl(bm, 'mixer B'),
      fl(cm, 'mixer C'),
      fl(gOut, 'mixer gradient'),
      fl(gLogA, 'mixer logA gradient'),
      fl(gB, 'mixer B gradient'),
      fl(gC, 'mixer C gradient'),
      ssdParams(p),
      this.useBlas,
    );
  }

  // ---- losses -------------------------------------------------------------------------------

  crossEntropy(
    logits: DeviceBuffer,
    targets: DeviceBuffer,
    losses: DeviceBuffer,
    lse: DeviceBuffer,
    nRows: number,
    vocab: number,
    ignoreIndex: number,
  ): void {
    rows.crossEntropy(
      fl(logits, 'cross-entropy logits'),
      ints(targets, 'cross-entropy targets'),
      fl(losses, 'cross-entropy losses'),
      fl(lse, 'cross-entropy lse'),
      nRows,
      vocab,
      ignoreIndex,
    );
  }

  crossEntropyBackward(
    logits: DeviceBuffer,
    targets: DeviceBuffer,
    lse: DeviceBuffer,
    gLoss: DeviceBuffer,
    gLogits: DeviceBuffer,
    nRows: number,
    vocab: number,
    ignoreIndex: number,
  ): void {
    rows.crossEntropyBackward(
      fl(logits, 'cross-entropy logits'),
      ints(targets, 'cross-entropy targets'),
      fl(lse, 'cross-entropy lse'),
      fl(gLoss, 'cross-entropy gradient'),
      fl(gLogits, 'cross-entropy logits gradient'),
      nRows,
      vocab,
      ignoreIndex,
    );
  }

  klDivergence(
    teacher: DeviceBuffer,
    student: DeviceBuffer,
    losses: DeviceBuffer,
    nRows: number,
    vocab: number,
    temperature: number,
  ): void {
    rows.klDivergence(
      fl(teacher, 'KL teacher logits'),
      fl(student, 'KL student logits'),
      fl(losses, 'KL losses'),
      nRows,
      vocab,
      temperature,
    );
  }

  klDivergenceBackward(
    teacher: DeviceBuffer,
    student: DeviceBuffer,
    gLoss: DeviceBuffer,
    gStudent: DeviceBuffer,
    nRows: number,
    vocab: number,
    temperature: number,
    _lse: DeviceBuffer | null = null, // no cache on the CPU: the backward recomputes
    losses: DeviceBuffer | null = null,
  ): void {
    if (losses) this.klDivergence(teacher, student, losses, nRows, vocab, temperature);
    if (gStudent.dtype === 'bf16' || gStudent.dtype === 'f16') {
      // through an f32 buffer, rounded like cast
      const tmp = this.alloc('f32', gStudent.length);
      this.klDivergenceBackward(teacher, student, gLoss, tmp, nRows, vocab, temperature);
      this.cast(tmp, gStudent);
      this.free(tmp);
      return;
    }
    rows.klDivergenceBackward(
      fl(teacher, 'KL teacher logits'),
      fl(student, 'KL student logits'),
      fl(gLoss, 'KL gradient'),
      fl(gStudent, 'KL student gradient'),
      nRows,
      vocab,
      temperature,
    );
  }

  // ---- optimizer ----------------------------------------------------------------------------

  adamw(param: DeviceBuffer, grad: DeviceBuffer, m: DeviceBuffer, v: DeviceBuffer, p: AdamWParams): void {
    const w = fl(param, 'adamw param');
    const g = fl(grad, 'adamw grad');
    const mm = fl(m, 'adamw m');
    const vv = fl(v, 'adamw v');
    const bc1 = 1 - p.beta1 ** p.step;
    const bc2 = 1 - p.beta2 ** p.step;
    const decay = 1 - p.lr * p.weightDecay;
    for (let i = 0; i < w.length; i++) {
      const gi = g[i];
      const mi = p.beta1 * mm[i] + (1 - p.beta1) * gi;
      const vi = p.beta2 * vv[i] + (1 - p.beta2) * gi * gi;
      mm[i] = mi;
      vv[i] = vi;
      w[i] = w[i] * decay - (p.lr * (mi / bc1)) / (Math.sqrt(vi / bc2) + p.eps);
    }
  }

  adamwDevice(
    param: DeviceBuffer,
    grad: DeviceBuffer,
    m: DeviceBuffer,
    v: DeviceBuffer,
    scalars: DeviceBuffer,
    rowAbs: DeviceBuffer | null,
    p: AdamWDeviceParams,
  ): void {
    const ra = rowAbs ? fl(rowAbs, 'adamwDevice rowAbs') : null;
    adamwRows(param, grad, m, v, scalars, ra ? (r) => ra[r] !== 0 : null, p, 'adamwDevice');
  }

  gradRowSquares(
    grad: DeviceBuffer,
    rowSquares: DeviceBuffer,
    at: number,
    rows: number,
    rowLen: number,
  ): void {
    const g = fl(grad, 'gradRowSquares grad');
    const out = rowSquares as CpuBuffer;
    if (out.dtype !== 'f64' || out.length < at + rows)
      throw new Error(`cpu backend: gradRowSquares rowSquares must be f64 with ${at + rows} entries`);
    if (g.length !== rows * rowLen)
      throw new Error(`cpu backend: gradRowSquares: the gradient is not ${rows} x ${rowLen}`);
    const o = out.data as Float64Array;
    for (let r = 0; r < rows; r++) {
      let acc = 0;
      for (let i = r * rowLen, end = i + rowLen; i < end; i++) acc += g[i] * g[i];
      o[at + r] = acc;
    }
  }

  sumF64(x: DeviceBuffer, n: number, out: DeviceBuffer, at: number): void {
    const xs = x as CpuBuffer;
    if (xs.dtype !== 'f64' || xs.length < n)
      throw new Error(`cpu backend: sumF64 input must be f64 with ${n} entries`);
    const o = fl(out, 'sumF64 output');
    let acc = 0;
    for (let i = 0; i < n; i++) acc += (xs.data as Float64Array)[i];
    o[at] = acc;
  }

  adamwFused(
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
    const w = fl(param, 'adamwFused param');
    const rowLen = Math.max(1, p.rowLen);
    const rs = rowSquares ? (rowSquares as CpuBuffer) : null;
    if (rs && (rs.dtype !== 'f64' || rs.length < p.rowAt + Math.ceil(w.length / rowLen)))
      throw new Error('cpu backend: adamwFused rowSquares must be f64 with an entry per row from rowAt');
    // the device step's arithmetic, with the rows' flags from their sums of squares
    const sq = rs ? (rs.data as Float64Array) : null;
    adamwRows(param, grad, m, v, scalars, sq ? (r) => sq[p.rowAt + r] !== 0 : null, p, 'adamwFused');
    if (nonFinite) {
      const nf = fl(nonFinite, 'adamwFused nonFinite');
      for (let i = 0; i < w.length; i++)
        if (!Number.isFinite(w[i])) {
          nf[0] = 1;
          break;
        }
    }
    if (param16) round16(w, param16, 'adamwFused param16');
  }
}

/** adamwDevice's update; `decayRow(r)` says whether row r decays (every row when null) */
function adamwRows(
  param: DeviceBuffer,
  grad: DeviceBuffer,
  m: DeviceBuffer,
  v: DeviceBuffer,
  scalars: DeviceBuffer,
  decayRow: ((row: number) => boolean) | null,
  p: AdamWDeviceParams,
  what: string,
): void {
  const w = fl(param, `${what} param`);
  const g = fl(grad, `${what} grad`);
  const mm = fl(m, `${what} m`);
  const vv = fl(v, `${what} v`);
  const s = fl(scalars, `${what} scalars`);
  const [lr, scale] = [s[0], s[1]];
  const [bc1, bc2] = [s[p.biasAt], s[p.biasAt + 1]];
  const decayAll = 1 - lr * p.weightDecay;
  const rowLen = Math.max(1, p.rowLen);
  for (let r = 0, i = 0; i < w.length; r++) {
    const decay = decayRow === null || decayRow(r) ? decayAll : 1;
    for (const end = Math.min(i + rowLen, w.length); i < end; i++) {
      const gi = g[i] * scale;
      const mi = p.beta1 * mm[i] + (1 - p.beta1) * gi;
      const vi = p.beta2 * vv[i] + (1 - p.beta2) * gi * gi;
      mm[i] = mi;
      vv[i] = vi;
      w[i] = w[i] * decay - (lr * (mi / bc1)) / (Math.sqrt(vi / bc2) + p.eps);
    }
  }
}

/** runs at least this long go through WebAssembly (f32); shorter ones cost less in the loops */
const WASM_RUN = 64;

/** one last-axis run of a binary op; unit and zero (broadcast) strides get their own loops */
function binaryRun(
  op: BinaryOp,
  x: FloatArray,
  y: FloatArray,
  o: FloatArray,
): (oa: number, ob: number, oo: number, len: number, sa: number, sb: number, so: number) => void {
  const wasm = x instanceof Float32Array && y instanceof Float32Array && o instanceof Float32Array;
  switch (op) {
    case 'add':
      return (oa, ob, oo, len, sa, sb) => {
        if (wasm && len >= WASM_RUN) {
          const [x32, y32, o32] = [x as Float32Array, y as Float32Array, o as Float32Array];
          if (sa === 1 && (sb === 1 || sb === 0) && binaryRunF32('add', x32, oa, y32, ob, sb, o32, oo, len))
            return;
          if (sa === 0 && sb === 1 && binaryRunF32('add', y32, ob, x32, oa, 0, o32, oo, len)) return;
        }
        if (sa === 1 && sb === 1) for (let i = 0; i < len; i++) o[oo + i] = x[oa + i] + y[ob + i];
        else if (sa === 1 && sb === 0) {
          const v = y[ob];
          for (let i = 0; i < len; i++) o[oo + i] = x[oa + i] + v;
        } else if (sa === 0 && sb === 1) {
          const u = x[oa];
          for (let i = 0; i < len; i++) o[oo + i] = u + y[ob + i];
        } else for (let i = 0; i < len; i++) o[oo + i] = x[oa + i * sa] + y[ob + i * sb];
      };
    case 'sub':
      return (oa, ob, oo, len, sa, sb) => {
        if (wasm && len >= WASM_RUN) {
          const [x32, y32, o32] = [x as Float32Array, y as Float32Array, o as Float32Array];
          if (sa === 1 && (sb === 1 || sb === 0) && binaryRunF32('sub', x32, oa, y32, ob, sb, o32, oo, len))
            return;
        }
        if (sa === 1 && sb === 1) for (let i = 0; i < len; i++) o[oo + i] = x[oa + i] - y[ob + i];
        else if (sa === 1 && sb === 0) {
          const v = y[ob];
          for (let i = 0; i < len; i++) o[oo + i] = x[oa + i] - v;
        } else if (sa === 0 && sb === 1) {
          const u = x[oa];
          for (let i = 0; i < len; i++) o[oo + i] = u - y[ob + i];
        } else for (let i = 0; i < len; i++) o[oo + i] = x[oa + i * sa] - y[ob + i * sb];
      };
    case 'mul':
      return (oa, ob, oo, len, sa, sb) => {
        if (wasm && len >= WASM_RUN) {
          const [x32, y32, o32] = [x as Float32Array, y as Float32Array, o as Float32Array];
          if (sa === 1 && (sb === 1 || sb === 0) && binaryRunF32('mul', x32, oa, y32, ob, sb, o32, oo, len))
            return;
          if (sa === 0 && sb === 1 && binaryRunF32('mul', y32, ob, x32, oa, 0, o32, oo, len)) return;
        }
        if (sa === 1 && sb === 1) for (let i = 0; i < len; i++) o[oo + i] = x[oa + i] * y[ob + i];
        else if (sa === 1 && sb === 0) {
          const v = y[ob];
          for (let i = 0; i < len; i++) o[oo + i] = x[oa + i] * v;
        } else if (sa === 0 && sb === 1) {
          const u = x[oa];
          for (let i = 0; i < len; i++) o[oo + i] = u * y[ob + i];
        } else for (let i = 0; i < len; i++) o[oo + i] = x[oa + i * sa] * y[ob + i * sb];
      };
    case 'div':
      return (oa, ob, oo, len, sa, sb) => {
        if (wasm && len >= WASM_RUN) {
          const [x32, y32, o32] = [x as Float32Array, y as Float32Array, o as Float32Array];
          if (sa === 1 && (sb === 1 || sb === 0) && binaryRunF32('div', x32, oa, y32, ob, sb, o32, oo, len))
            return;
        }
        if (sa === 1 && sb === 1) for (let i = 0; i < len; i++) o[oo + i] = x[oa + i] / y[ob + i];
        else if (sa === 1 && sb === 0) {
          const v = y[ob];
          for (let i = 0; i < len; i++) o[oo + i] = x[oa + i] / v;
        } else if (sa === 0 && sb === 1) {
          const u = x[oa];
          for (let i = 0; i < len; i++) o[oo + i] = u / y[ob + i];
        } else for (let i = 0; i < len; i++) o[oo + i] = x[oa + i * sa] / y[ob + i * sb];
      };
    case 'maximum':
      return (oa, ob, oo, len, sa, sb) => {
        for (let i = 0; i < len; i++) o[oo + i] = Math.max(x[oa + i * sa], y[ob + i * sb]);
      };
    case 'eq':
      return (oa, ob, oo, len, sa, sb) => {
        for (let i = 0; i < len; i++) o[oo + i] = x[oa + i * sa] === y[ob + i * sb] ? 1 : 0;
      };
  }
}

/** f(i, u) for every element i of the (rows, cols) gate input, u = z[i] + bias[col] */
function eachGate(
  z: DeviceBuffer,
  bias: DeviceBuffer,
  rows: number,
  cols: number,
  f: (i: number, u: number) => void,
): void {
  const zv = fl(z, 'siluGate z');
  const bv = fl(bias, 'siluGate bias');
  for (let r = 0; r < rows; r++) for (let c = 0; c < cols; c++) f(r * cols + c, zv[r * cols + c] + bv[c]);
}
