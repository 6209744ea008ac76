// The CPU backend's f32 ops on the WebAssembly SIMD kernels of wasm-math.ts: each copies a block of
// its Float32Arrays into the module's memory, runs a kernel, and copies the result out (the copies
// cost ~0.1 ns a float, the loops they replace 4-13 ns). Every function returns false, having done
// nothing, where WebAssembly is unavailable (or MOHAWK_WASM=off) or the shape does not fit; the
// caller then runs its plain loops, which stay the reference and the f64 path.

import {
  pad4,
  wasmMath,
  type BinaryKind,
  type GradKind,
  type UnaryKind,
  type WasmMath,
} from './wasm-math.js';

/** floats per operand per pass: 64 KiB, so a pass's operands stay in L2 */
const BLOCK = 16384;
/**
 * The most floats a kernel stages at once (64 MiB). WebAssembly memory never shrinks, so larger
 * work (attention scores at long context, a long sequence's conv) takes the plain loops instead.
 */
export const MAX_STAGED = 1 << 24;

/** o = alpha f(a) + beta elementwise; false (nothing done) without WebAssembly */
export function unaryF32(
  op: UnaryKind,
  a: Float32Array,
  o: Float32Array,
  alpha: number,
  beta: number,
): boolean {
  const w = wasmMath();
  if (!w) return false;
  const mem = w.reserve(2 * BLOCK);
  const n = a.length;
  for (let s = 0; s < n; s += BLOCK) {
    const len = Math.min(BLOCK, n - s);
    mem.set(a.subarray(s, s + len), 0);
    w.unary[op](0, BLOCK * 4, pad4(len) * 4, alpha, beta);
    o.set(mem.subarray(BLOCK, BLOCK + len), s);
  }
  return true;
}

/** gx = gy f'(x) elementwise; false without WebAssembly */
export function unaryGradF32(op: GradKind, x: Float32Array, gy: Float32Array, gx: Float32Array): boolean {
  const w = wasmMath();
  if (!w) return false;
  const mem = w.reserve(3 * BLOCK);
  const n = x.length;
  for (let s = 0; s < n; s += BLOCK) {
    const len = Math.min(BLOCK, n - s);
    mem.set(x.subarray(s, s + len), 0);
    mem.set(gy.subarray(s, s + len), BLOCK);
    w.grad[op](0, BLOCK * 4, 2 * BLOCK * 4, pad4(len) * 4);
    gx.set(mem.subarray(2 * BLOCK, 2 * BLOCK + len), s);
  }
  return true;
}

/** u = z + bias[col] for the rows' elements s .. s + len of a (rows, cols) gate input, into mem[at..] */
function gateInput(
  mem: Float32Array,
  at: number,
  z: Float32Array,
  bias: Float32Array,
  s: number,
  len: number,
  cols: number,
) {
  let c = s % cols;
  for (let i = 0; i < len; i++) {
    mem[at + i] = z[s + i] + bias[c];
    if (++c === cols) c = 0;
  }
}

/** out = y silu(z + bias) over (rows, cols); false without WebAssembly */
export function siluGateF32(
  y: Float32Array,
  z: Float32Array,
  bias: Float32Array,
  out: Float32Array,
  cols: number,
): boolean {
  const w = wasmMath();
  if (!w) return false;
  const mem = w.reserve(3 * BLOCK);
  const n = out.length;
  for (let s = 0; s < n; s += BLOCK) {
    const len = Math.min(BLOCK, n - s);
    mem.set(y.subarray(s, s + len), 0);
    gateInput(mem, BLOCK, z, bias, s, len, cols);
    w.siluGate(0, BLOCK * 4, 2 * BLOCK * 4, pad4(len) * 4);
    out.set(mem.subarray(2 * BLOCK, 2 * BLOCK + len), s);
  }
  return true;
}

/** the gradients of siluGate with respect to y and z; false without WebAssembly */
export function siluGateGradF32(
  y: Float32Array,
  z: Float32Array,
  bias: Float32Array,
  g: Float32Array,
  gy: Float32Array,
  gz: Float32Array,
  cols: number,
): boolean {
  const w = wasmMath();
  if (!w) return false;
  const mem = w.reserve(5 * BLOCK);
  const n = g.length;
  for (let s = 0; s < n; s += BLOCK) {
    const len = Math.min(BLOCK, n - s);
    mem.set(y.subarray(s, s + len), 0);
    gateInput(mem, BLOCK, z, bias, s, len, cols);
    mem.set(g.subarray(s, s + len), 2 * BLOCK);
    w.siluGateGrad(0, BLOCK * 4, 2 * BLOCK * 4, 3 * BLOCK * 4, 4 * BLOCK * 4, pad4(len) * 4);
    gy.set(mem.subarray(3 * BLOCK, 3 * BLOCK + len), s);
    gz.set(mem.subarray(4 * BLOCK, 4 * BLOCK + len), s);
  }
  return true;
}

/**
 * Rows of `cols` floats staged in wasm memory `count` rows at a time with a pitch of pad4(cols),
 * the padding set to -Infinity (which exp maps to 0 and max ignores): `each(r, at)` runs for every
 * row r with the row's float offset `at` in each staged operand k at base + k * stride.
 */
class RowStage {
  readonly pitch: number;
  readonly count: number;
  readonly stride: number;
  readonly mem: Float32Array;
  constructor(
    readonly w: WasmMath,
    readonly cols: number,
    operands: number,
    readonly padValue = -Infinity,
    /** floats to keep after the operands (one more row and a few scalars) */
    extra = 0,
  ) {
    this.pitch = pad4(cols);
    this.count = Math.max(1, Math.floor(BLOCK / this.pitch));
    this.stride = this.count * this.pitch;
    this.mem = w.reserve(operands * this.stride + extra);
  }
  /** copy rows r0 .. r0 + n of src into operand k (one copy; the kernel spreads them to the pitch) */
  load(k: number, src: Float32Array, r0: number, n: number): void {
    const { mem, pitch, cols } = this;
    const base = k * this.stride;
    mem.set(src.subarray(r0 * cols, (r0 + n) * cols), base);
    if (pitch !== cols) this.w.spread(base * 4, n, cols * 4, pitch * 4, this.padValue);
  }
  /** copy operand k's rows back into dst rows r0 .. r0 + n (gathered back to back first) */
  store(k: number, dst: Float32Array, r0: number, n: number): void {
    const { mem, pitch, cols } = this;
    const base = k * this.stride;
    if (pitch !== cols) this.w.gather(base * 4, n, cols * 4, pitch * 4);
    dst.set(mem.subarray(base, base + n * cols), r0 * cols);
  }
}

/** softmax (or log-softmax) of each row; false without WebAssembly */
export function softmaxF32(
  x: Float32Array,
  out: Float32Array,
  rows: number,
  cols: number,
  log: boolean,
): boolean {
  const w = wasmMath();
  if (!w) return false;
  const probe = new RowStage(w, cols, 2);
  // after the two operands: per row the max and the sum of exps (f64 x 2)
  const st = new RowStage(w, cols, 2, -Infinity, 4 * probe.count);
  const bytes = st.pitch * 4;
  const statsAt = 2 * st.stride * 4;
  const stats = new Float64Array(w.memory.buffer, statsAt, 2 * st.count);
  for (let r0 = 0; r0 < rows; r0 += st.count) {
    const n = Math.min(st.count, rows - r0);
    st.load(0, x, r0, n);
    w.softmaxRows(0, st.stride * 4, n, bytes, statsAt);
    if (log)
      for (let r = 0; r < n; r++) {
        const lse = stats[2 * r] + Math.log(stats[2 * r + 1]);
        w.unary.identity(r * bytes, (st.stride + r * st.pitch) * 4, bytes, 1, -lse);
      }
    st.store(1, out, r0, n);
  }
  return true;
}

/** lse[r] = log sum_j exp(x[r, j]) and, with targets, losses[r] = lse[r] - x[r, target]; false without WebAssembly */
export function crossEntropyF32(
  logits: Float32Array,
  targets: Int32Array,
  losses: Float32Array | Float64Array,
  lse: Float32Array | Float64Array,
  rows: number,
  vocab: number,
  ignoreIndex: number,
): boolean {
  const w = wasmMath();
  if (!w) return false;
  const st = new RowStage(w, vocab, 2);
  const bytes = st.pitch * 4;
  for (let r0 = 0; r0 < rows; r0 += st.count) {
    const n = Math.min(st.count, rows - r0);
    st.load(0, logits, r0, n);
    for (let r = 0; r < n; r++) {
      const row = r0 + r;
      const max = w.rowMax(r * bytes, bytes);
      const l = max + Math.log(w.expSum(r * bytes, st.stride * 4, bytes, 1, -max, 1));
      lse[row] = l;
      const t = targets[row];
      if (t === ignoreIndex) {
        losses[row] = 0;
        continue;
      }
      if (t < 0 || t >= vocab)
        throw new Error(`cross-entropy: target ${t} outside the vocabulary of ${vocab}`);
      losses[row] = l - logits[row * vocab + t];
    }
  }
  return true;
}

/** gLogits = gLoss softmax(logits) - gLoss at the target; false without WebAssembly */
export function crossEntropyGradF32(
  logits: Float32Array,
  targets: Int32Array,
  lse: Float32Array | Float64Array,
  gLoss: Float32Array | Float64Array,
  gLogits: Float32Array,
  rows: number,
  vocab: number,
  ignoreIndex: number,
): boolean {
  const w = wasmMath();
  if (!w) return false;
  const st = new RowStage(w, vocab, 2);
  const bytes = st.pitch * 4;
  for (let r0 = 0; r0 < rows; r0 += st.count) {
    const n = Math.min(st.count, rows - r0);
    st.load(0, logits, r0, n);
    for (let r = 0; r < n; r++) {
      const row = r0 + r;
      const dst = (st.stride + r * st.pitch) * 4;
      if (targets[row] === ignoreIndex) {
        w.unary.identity(r * bytes, dst, bytes, 0, 0);
        continue;
      }
      // g exp(x - lse) as g exp(max - lse) exp(x - max): the shift stays an exact f32
      const max = w.rowMax(r * bytes, bytes);
      w.expSum(r * bytes, dst, bytes, 1, -max, gLoss[row] * Math.exp(max - lse[row]));
    }
    st.store(1, gLogits, r0, n);
    for (let r = r0; r < r0 + n; r++) {
      const t = targets[r];
      if (t !== ignoreIndex) gLogits[r * vocab + t] -= gLoss[r];
    }
  }
  return true;
}

/** losses[r] = KL(softmax(teacher / tau) || softmax(student / tau)) per row; false without WebAssembly */
export function klDivergenceF32(
  teacher: Float32Array,
  student: Float32Array,
  losses: Float32Array | Float64Array,
  rows: number,
  vocab: number,
  tau: number,
): boolean {
  const w = wasmMath();
  if (!w) return false;
  const inv = 1 / tau;
  const probe = new RowStage(w, vocab, 2);
  // after teacher and student rows: a scratch row, then per row f64 x 5 (see klRows)
  const st = new RowStage(w, vocab, 2, -Infinity, probe.pitch + 10 * probe.count);
  const bytes = st.pitch * 4;
  const scratch = 2 * st.stride * 4;
  const statsAt = scratch + bytes;
  const stats = new Float64Array(w.memory.buffer, statsAt, 5 * st.count);
  for (let r0 = 0; r0 < rows; r0 += st.count) {
    const n = Math.min(st.count, rows - r0);
    st.load(0, teacher, r0, n);
    st.load(1, student, r0, n);
    w.klRows(0, st.stride * 4, n, bytes, inv, scratch, statsAt);
    for (let r = 0; r < n; r++) {
      const at = 5 * r;
      const [shiftT, shiftS, sumT, sumS, dot] = [
        stats[at],
        stats[at + 1],
        stats[at + 2],
        stats[at + 3],
        stats[at + 4],
      ];
      // sum p (log p - log q) = sum p (t - s) / tau - (lse_t - lse_s), p = exp(t / tau + shiftT) / sumT
      const lseGap = Math.log(sumT) - shiftT - (Math.log(sumS) - shiftS);
      losses[r0 + r] = (inv * dot) / sumT - lseGap;
    }
  }
  return true;
}

/** gStudent = gLoss / tau (softmax(student / tau) - softmax(teacher / tau)); false without WebAssembly */
export function klDivergenceGradF32(
  teacher: Float32Array,
  student: Float32Array,
  gLoss: Float32Array | Float64Array,
  gStudent: Float32Array,
  rows: number,
  vocab: number,
  tau: number,
): boolean {
  const w = wasmMath();
  if (!w) return false;
  const inv = 1 / tau;
  const probe = new RowStage(w, vocab, 3);
  // after teacher, student and gradient rows: per row the gradient's scale gLoss / tau (f64)
  const st = new RowStage(w, vocab, 3, -Infinity, 2 * probe.count);
  const bytes = st.pitch * 4;
  const csAt = 3 * st.stride * 4;
  const cs = new Float64Array(w.memory.buffer, csAt, st.count);
  for (let r0 = 0; r0 < rows; r0 += st.count) {
    const n = Math.min(st.count, rows - r0);
    st.load(0, teacher, r0, n);
    st.load(1, student, r0, n);
    for (let r = 0; r < n; r++) cs[r] = gLoss[r0 + r] * inv;
    w.klGradRows(0, st.stride * 4, 2 * st.stride * 4, n, bytes, inv, csAt);
    st.store(2, gStudent, r0, n);
  }
  return true;
}

/** x (B, T, C), w (C, K), bias (C) -> out (B, T, C), one sequence at a time; false without WebAssembly or when C % 4 != 0 */
export function causalConv1dF32(
  x: Float32Array,
  w: Float32Array,
  bias: Float32Array | null,
  out: Float32Array,
  batch: number,
  t: number,
  c: number,
  k: number,
): boolean {
  const wm = c % 4 === 0 && (k + 1 + 2 * t) * c <= MAX_STAGED ? wasmMath() : null;
  if (!wm) return false;
  // layout (floats): taps (K, C), bias (C), x (T, C), out (T, C)
  const [wtAt, biasAt, xAt, outAt] = [0, k * c, (k + 1) * c, (k + 1 + t) * c];
  const mem = wm.reserve((k + 1 + 2 * t) * c);
  for (let ch = 0; ch < c; ch++) {
    for (let j = 0; j < k; j++) mem[wtAt + j * c + ch] = w[ch * k + j];
    mem[biasAt + ch] = bias ? bias[ch] : 0;
  }
  const n = t * c;
  for (let b = 0; b < batch; b++) {
    mem.set(x.subarray(b * n, (b + 1) * n), xAt);
    wm.conv(xAt * 4, wtAt * 4, biasAt * 4, outAt * 4, t, c * 4, k);
    out.set(mem.subarray(outAt, outAt + n), b * n);
  }
  return true;
}

/** the gradients of causalConv1dF32; weight and bias gradients summed over the batch in float64 */
export function causalConv1dGradF32(
  x: Float32Array,
  w: Float32Array,
  gy: Float32Array,
  gx: Float32Array,
  gw: Float32Array,
  gb: Float32Array | null,
  batch: number,
  t: number,
  c: number,
  k: number,
): boolean {
  const wm = c % 4 === 0 && (2 * k + 1 + 3 * t) * c <= MAX_STAGED ? wasmMath() : null;
  if (!wm) return false;
  // layout (floats): taps (K, C), their gradient (K, C), bias gradient (C), x, gy, gx (T, C)
  const kc = k * c;
  const [wtAt, gwAt, gbAt, xAt, gyAt, gxAt] = [
    0,
    kc,
    2 * kc,
    2 * kc + c,
    2 * kc + c + t * c,
    2 * kc + c + 2 * t * c,
  ];
  const mem = wm.reserve(2 * kc + c + 3 * t * c);
  for (let ch = 0; ch < c; ch++) for (let j = 0; j < k; j++) mem[wtAt + j * c + ch] = w[ch * k + j];
  const accW = new Float64Array(kc);
  const accB = new Float64Array(c);
  const n = t * c;
  for (let b = 0; b < batch; b++) {
    mem.fill(0, gwAt, gbAt + c);
    mem.set(x.subarray(b * n, (b + 1) * n), xAt);
    mem.set(gy.subarray(b * n, (b + 1) * n), gyAt);
    wm.convGrad(xAt * 4, wtAt * 4, gyAt * 4, gxAt * 4, gwAt * 4, gbAt * 4, t, c * 4, k);
    gx.set(mem.subarray(gxAt, gxAt + n), b * n);
    for (let i = 0; i < kc; i++) accW[i] += mem[gwAt + i];
    for (let i = 0; i < c; i++) accB[i] += mem[gbAt + i];
  }
  for (let ch = 0; ch < c; ch++) for (let j = 0; j < k; j++) gw[ch * k + j] = accW[j * c + ch];
  if (gb) for (let i = 0; i < c; i++) gb[i] = accB[i];
  return true;
}

/**
 * o[oo + i] = x[oa + i] op y[ob + i] (yStride 1) or op y[ob] (yStride 0) for i < len; false
 * without WebAssembly
 */
export function binaryRunF32(
  op: BinaryKind,
  x: Float32Array,
  oa: number,
  y: Float32Array,
  ob: number,
  yStride: 0 | 1,
  o: Float32Array,
  oo: number,
  len: number,
): boolean {
  const w = wasmMath();
  if (!w) return false;
  const mem = w.reserve(3 * BLOCK);
  for (let s = 0; s < len; s += BLOCK) {
    const n = Math.min(BLOCK, len - s);
    mem.set(x.subarray(oa + s, oa + s + n), 0);
    if (yStride === 1) {
      mem.set(y.subarray(ob + s, ob + s + n), BLOCK);
      w.binary[op](0, BLOCK * 4, 2 * BLOCK * 4, pad4(n) * 4);
    } else w.binaryScalar[op](0, y[ob], 2 * BLOCK * 4, pad4(n) * 4);
    o.set(mem.subarray(2 * BLOCK, 2 * BLOCK + n), oo + s);
  }
  return true;
}

/** RMSNorm rows: out = x / rms(x) w, rstd[r] = 1 / rms; false without WebAssembly */
export function rmsNormF32(
  x: Float32Array,
  w: Float32Array,
  out: Float32Array,
  rstd: Float32Array | Float64Array,
  rows: number,
  cols: number,
  eps: number,
): boolean {
  const wm = wasmMath();
  if (!wm) return false;
  // operands: x rows, out rows, then the weight row
  const st = new RowStage(wm, cols, 3, 0);
  const bytes = st.pitch * 4;
  const wAt = 2 * st.stride;
  st.mem.set(w, wAt);
  st.mem.fill(0, wAt + cols, wAt + st.pitch);
  for (let r0 = 0; r0 < rows; r0 += st.count) {
    const n = Math.min(st.count, rows - r0);
    st.load(0, x, r0, n);
    for (let r = 0; r < n; r++) {
      const rs = 1 / Math.sqrt(wm.sumSq(r * bytes, bytes) / cols + eps);
      rstd[r0 + r] = rs;
      wm.rmsScale(r * bytes, wAt * 4, (st.stride + r * st.pitch) * 4, bytes, rs);
    }
    st.store(1, out, r0, n);
  }
  return true;
}

/** the RMSNorm backward: gx overwritten, gw = sum over rows (float64 across blocks); false without WebAssembly */
export function rmsNormGradF32(
  x: Float32Array,
  w: Float32Array,
  rstd: Float32Array | Float64Array,
  gy: Float32Array,
  gx: Float32Array,
  gw: Float32Array | Float64Array,
  rows: number,
  cols: number,
): boolean {
  const wm = wasmMath();
  if (!wm) return false;
  // operands: x, gy, gx rows; then the weight row and its per-block gradient
  const st = new RowStage(wm, cols, 4, 0);
  const bytes = st.pitch * 4;
  const [wAt, gwAt] = [3 * st.stride, 3 * st.stride + st.pitch];
  st.mem.set(w, wAt);
  st.mem.fill(0, wAt + cols, wAt + st.pitch);
  const accW = new Float64Array(cols);
  for (let r0 = 0; r0 < rows; r0 += st.count) {
    const n = Math.min(st.count, rows - r0);
    st.load(0, x, r0, n);
    st.load(1, gy, r0, n);
    st.mem.fill(0, gwAt, gwAt + st.pitch);
    for (let r = 0; r < n; r++) {
      const [xAt, gyAt, gxAt] = [
        r * bytes,
        (st.stride + r * st.pitch) * 4,
        (2 * st.stride + r * st.pitch) * 4,
      ];
      const rs = rstd[r0 + r];
      // gx = rs (gy w - xhat mean(gy w xhat)), xhat = x rs
      const c = (rs * rs * rs * wm.dot3(xAt, gyAt, wAt * 4, bytes)) / cols;
      wm.rmsGradRow(xAt, wAt * 4, gyAt, gxAt, gwAt * 4, bytes, rs, c);
    }
    st.store(2, gx, r0, n);
    for (let j = 0; j < cols; j++) accW[j] += st.mem[gwAt + j];
  }
  for (let j = 0; j < cols; j++) gw[j] = accW[j];
  return true;
}

/**
 * out[p, i] = sum_j x[p, j, i] for x (outer, n, inner), inner a multiple of 4, summed in float64;
 * false without WebAssembly or for other widths
 */
export function columnSumF32(
  x: Float32Array,
  out: Float32Array | Float64Array,
  outer: number,
  n: number,
  inner: number,
): boolean {
  const w = inner % 4 === 0 && inner <= BLOCK ? wasmMath() : null;
  if (!w) return false;
  const rowsPer = Math.max(1, Math.floor(BLOCK / inner));
  // layout (floats): the f64 accumulators (2 inner), then a block of rows
  const accAt = 0;
  const blockAt = 2 * inner;
  const mem = w.reserve(blockAt + rowsPer * inner);
  const acc = new Float64Array(w.memory.buffer, 0, inner);
  for (let p = 0; p < outer; p++) {
    acc.fill(0);
    for (let j0 = 0; j0 < n; j0 += rowsPer) {
      const rows = Math.min(rowsPer, n - j0);
      const from = (p * n + j0) * inner;
      mem.set(x.subarray(from, from + rows * inner), blockAt);
      w.colSum(blockAt * 4, accAt, rows, inner * 4);
    }
    for (let i = 0; i < inner; i++) out[p * inner + i] = acc[i];
  }
  return true;
}
