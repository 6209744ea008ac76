// Row-wise kernels of the CPU backend: softmax, norms and losses over (rows, cols).
// Every row accumulates in float64. f32 rows with exp in them run in WebAssembly SIMD
// (wasm-ops.ts) when it is available; these loops are the reference and the f64 path.

import type { FloatArray } from './blas.js';
import {
  crossEntropyF32,
  crossEntropyGradF32,
  klDivergenceF32,
  klDivergenceGradF32,
  rmsNormF32,
  rmsNormGradF32,
  softmaxF32,
} from './wasm-ops.js';

const f32 = (...xs: FloatArray[]) => xs.every((x) => x instanceof Float32Array);

export function softmax(x: FloatArray, out: FloatArray, rows: number, cols: number, log: boolean): void {
  if (f32(x, out) && softmaxF32(x as Float32Array, out as Float32Array, rows, cols, log)) return;
  for (let r = 0; r < rows; r++) {
    const base = r * cols;
    let max = -Infinity;
    for (let j = 0; j < cols; j++) if (x[base + j] > max) max = x[base + j];
    if (max === -Infinity) max = 0; // a fully masked row: stay finite
    let sum = 0;
    for (let j = 0; j < cols; j++) sum += Math.exp(x[base + j] - max);
    if (log) {
      const lse = max + Math.log(sum);
      for (let j = 0; j < cols; j++) out[base + j] = x[base + j] - lse;
    } else {
      const inv = 1 / sum;
      for (let j = 0; j < cols; j++) out[base + j] = Math.exp(x[base + j] - max) * inv;
    }
  }
}

export function softmaxBackward(
  y: FloatArray,
  gy: FloatArray,
  gx: FloatArray,
  rows: number,
  cols: number,
  log: boolean,
): void {
  for (let r = 0; r < rows; r++) {
    const base = r * cols;
    if (log) {
      // y = x - lse: gx = gy - softmax * sum(gy)
      let s = 0;
      for (let j = 0; j < cols; j++) s += gy[base + j];
      for (let j = 0; j < cols; j++) gx[base + j] = gy[base + j] - Math.exp(y[base + j]) * s;
    } else {
      // gx = y * (gy - sum(gy * y))
      let s = 0;
      for (let j = 0; j < cols; j++) s += gy[base + j] * y[base + j];
      for (let j = 0; j < cols; j++) gx[base + j] = y[base + j] * (gy[base + j] - s);
    }
  }
}

export function layerNorm(
  x: FloatArray,
  w: FloatArray,
  b: FloatArray | null,
  out: FloatArray,
  mean: FloatArray,
  rstd: FloatArray,
  rows: number,
  cols: number,
  eps: number,
): void {
  for (let r = 0; r < rows; r++) {
    const base = r * cols;
    let m = 0;
    for (let j = 0; j < cols; j++) m += x[base + j];
    m /= cols;
    let v = 0;
    for (let j = 0; j < cols; j++) {
      const d = x[base + j] - m;
      v += d * d;
    }
    v /= cols;
    const rs = 1 / Math.sqrt(v + eps);
    mean[r] = m;
    rstd[r] = rs;
    for (let j = 0; j < cols; j++) out[base + j] = (x[base + j] - m) * rs * w[j] + (b ? b[j] : 0);
  }
}

export function layerNormBackward(
  x: FloatArray,
  w: FloatArray,
  mean: FloatArray,
  rstd: FloatArray,
  gy: FloatArray,
  gx: FloatArray,
  gw: FloatArray,
  gb: FloatArray | null,
  rows: number,
  cols: number,
): void {
  const accW = new Float64Array(cols);
  const accB = new Float64Array(cols);
  for (let r = 0; r < rows; r++) {
    const base = r * cols;
    const m = mean[r];
    const rs = rstd[r];
    // gx = rs * (g - mean(g) - xhat * mean(g * xhat)), g = gy * w
    let sg = 0;
    let sgx = 0;
    for (let j = 0; j < cols; j++) {
      const xh = (x[base + j] - m) * rs;
      const g = gy[base + j] * w[j];
      sg += g;
      sgx += g * xh;
      accW[j] += gy[base + j] * xh;
      accB[j] += gy[base + j];
    }
    sg /= cols;
    sgx /= cols;
    for (let j = 0; j < cols; j++) {
      const xh = (x[base + j] - m) * rs;
      gx[base + j] = rs * (gy[base + j] * w[j] - sg - xh * sgx);
    }
  }
  for (let j = 0; j < cols; j++) gw[j] = accW[j];
  if (gb) for (let j = 0; j < cols; j++) gb[j] = accB[j];
}

export function rmsNorm(
  x: FloatArray,
  w: FloatArray,
  out: FloatArray,
  rstd: FloatArray,
  rows: number,
  cols: number,
  eps: number,
): void {
  if (
    f32(x, w, out) &&
    rmsNormF32(x as Float32Array, w as Float32Array, out as Float32Array, rstd, rows, cols, eps)
  )
    return;
  for (let r = 0; r < rows; r++) {
    const base = r * cols;
    let ss = 0;
    for (let j = 0; j < cols; j++) ss += x[base + j] * x[base + j];
    const rs = 1 / Math.sqrt(ss / cols + eps);
    rstd[r] = rs;
    for (let j = 0; j < cols; j++) out[base + j] = x[base + j] * rs * w[j];
  }
}

export function rmsNormBackward(
  x: FloatArray,
  w: FloatArray,
  rstd: FloatArray,
  gy: FloatArray,
  gx: FloatArray,
  gw: FloatArray,
  rows: number,
  cols: number,
): void {
  if (
    f32(x, w, gy, gx) &&
    rmsNormGradF32(
      x as Float32Array,
      w as Float32Array,
      rstd,
      gy as Float32Array,
      gx as Float32Array,
      gw,
      rows,
      cols,
    )
  )
    return;
  const accW = new Float64Array(cols);
  for (let r = 0; r < rows; r++) {
    const base = r * cols;
    const rs = rstd[r];
    // gx = rs * (g - xhat * mean(g * xhat)), g = gy * w
    let sgx = 0;
    for (let j = 0; j < cols; j++) {
      const xh = x[base + j] * rs;
      sgx += gy[base + j] * w[j] * xh;
      accW[j] += gy[base + j] * xh;
    }
    sgx /= cols;
    for (let j = 0; j < cols; j++) gx[base + j] = rs * (gy[base + j] * w[j] - x[base + j] * rs * sgx);
  }
  for (let j = 0; j < cols; j++) gw[j] = accW[j];
}

function rowLse(x: FloatArray, base: number, cols: number, scale: number): number {
  let max = -Infinity;
  for (let j = 0; j < cols; j++) if (x[base + j] * scale > max) max = x[base + j] * scale;
  let sum = 0;
  for (let j = 0; j < cols; j++) sum += Math.exp(x[base + j] * scale - max);
  return max + Math.log(sum);
}

export function crossEntropy(
  logits: FloatArray,
  targets: Int32Array,
  losses: FloatArray,
  lse: FloatArray,
  rows: number,
  vocab: number,
  ignoreIndex: number,
): void {
  if (f32(logits) && crossEntropyF32(logits as Float32Array, targets, losses, lse, rows, vocab, ignoreIndex))
    return;
  for (let r = 0; r < rows; r++) {
    const t = targets[r];
    const base = r * vocab;
    const l = rowLse(logits, base, vocab, 1);
    lse[r] = l;
    if (t === ignoreIndex) {
      losses[r] = 0;
      continue;
    }
    if (t < 0 || t >= vocab) throw new Error(`cross-entropy: target ${t} outside the vocabulary of ${vocab}`);
    losses[r] = l - logits[base + t];
  }
}

export function crossEntropyBackward(
  logits: FloatArray,
  targets: Int32Array,
  lse: FloatArray,
  gLoss: FloatArray,
  gLogits: FloatArray,
  rows: number,
  vocab: number,
  ignoreIndex: number,
): void {
  if (
    f32(logits, gLogits) &&
    crossEntropyGradF32(
      logits as Float32Array,
      targets,
      lse,
      gLoss,
      gLogits as Float32Array,
      rows,
      vocab,
      ignoreIndex,
    )
  )
    return;
  for (let r = 0; r < rows; r++) {
    const t = targets[r];
    const base = r * vocab;
    if (t === ignoreIndex) {
      for (let j = 0; j < vocab; j++) gLogits[base + j] = 0;
      continue;
    }
    const g = gLoss[r];
    const l = lse[r];
    for (let j = 0; j < vocab; j++) gLogits[base + j] = g * Math.exp(logits[base + j] - l);
    gLogits[base + t] -= g;
  }
}

export function klDivergence(
  teacher: FloatArray,
  student: FloatArray,
  losses: FloatArray,
  rows: number,
  vocab: number,
  tau: number,
): void {
  if (
    f32(teacher, student) &&
    klDivergenceF32(teacher as Float32Array, student as Float32Array, losses, rows, vocab, tau)
  )
    return;
  const inv = 1 / tau;
  for (let r = 0; r < rows; r++) {
    const base = r * vocab;
    const lt = rowLse(teacher, base, vocab, inv);
    const ls = rowLse(student, base, vocab, inv);
    let kl = 0;
    for (let j = 0; j < vocab; j++) {
      const logp = teacher[base + j] * inv - lt;
      const logq = student[base + j] * inv - ls;
      const p = Math.exp(logp);
      if (p > 0) kl += p * (logp - logq);
    }
    losses[r] = kl;
  }
}

export function klDivergenceBackward(
  teacher: FloatArray,
  student: FloatArray,
  gLoss: FloatArray,
  gStudent: FloatArray,
  rows: number,
  vocab: number,
  tau: number,
): void {
  if (
    f32(teacher, student, gStudent) &&
    klDivergenceGradF32(
      teacher as Float32Array,
      student as Float32Array,
      gLoss,
      gStudent as Float32Array,
      rows,
      vocab,
      tau,
    )
  )
    return;
  const inv = 1 / tau;
  for (let r = 0; r < rows; r++) {
    const base = r * vocab;
    const lt = rowLse(teacher, base, vocab, inv);
    const ls = rowLse(student, base, vocab, inv);
    const g = gLoss[r] * inv;
    for (let j = 0; j < vocab; j++) {
      const p = Math.exp(teacher[base + j] * inv - lt);
      const q = Math.exp(student[base + j] * inv - ls);
      gStudent[base + j] = g * (q - p);
    }
  }
}
