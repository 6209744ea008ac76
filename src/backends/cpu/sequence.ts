// Sequence kernels of the CPU backend: causal depthwise conv1d, rotary embedding, attention.

import type { AttentionParams, ColumnWindow, RopeParams } from '../backend.js';
import { gemm, type FloatArray } from './blas.js';
import { wasmMath, type WasmMath } from './wasm-math.js';
import { causalConv1dF32, causalConv1dGradF32, MAX_STAGED } from './wasm-ops.js';

/** x (B, T, C), w (C, K), bias (C) -> out (B, T, C): out[t] = bias + sum_j w[j] x[t - (K-1) + j] */
export function causalConv1d(
  x: FloatArray,
  w: FloatArray,
  bias: FloatArray | null,
  out: FloatArray,
  batch: number,
  t: number,
  c: number,
  k: number,
): void {
  if (
    x instanceof Float32Array &&
    w instanceof Float32Array &&
    (bias === null || bias instanceof Float32Array) &&
    out instanceof Float32Array &&
    causalConv1dF32(x, w, bias, out, batch, t, c, k)
  )
    return;
  for (let b = 0; b < batch; b++) {
    for (let s = 0; s < t; s++) {
      const o = (b * t + s) * c;
      for (let ch = 0; ch < c; ch++) {
        let acc = bias ? bias[ch] : 0;
        for (let j = 0; j < k; j++) {
          const src = s - (k - 1) + j;
          if (src >= 0) acc += w[ch * k + j] * x[(b * t + src) * c + ch];
        }
        out[o + ch] = acc;
      }
    }
  }
}

export function causalConv1dBackward(
  x: FloatArray,
  w: FloatArray,
  gy: FloatArray,
  gx: FloatArray,
  gw: FloatArray,
  gb: FloatArray | null,
  batch: number,
  t: number,
  c: number,
  k: number,
): void {
  if (
    x instanceof Float32Array &&
    w instanceof Float32Array &&
    gy instanceof Float32Array &&
    gx instanceof Float32Array &&
    gw instanceof Float32Array &&
    (gb === null || gb instanceof Float32Array) &&
    causalConv1dGradF32(x, w, gy, gx, gw, gb, batch, t, c, k)
  )
    return;
  const accW = new Float64Array(c * k);
  const accB = new Float64Array(c);
  gx.fill(0);
  for (let b = 0; b < batch; b++) {
    for (let s = 0; s < t; s++) {
      const o = (b * t + s) * c;
      for (let ch = 0; ch < c; ch++) {
        const g = gy[o + ch];
        accB[ch] += g;
        for (let j = 0; j < k; j++) {
          const src = s - (k - 1) + j;
          if (src < 0) continue;
          const xi = (b * t + src) * c + ch;
          accW[ch * k + j] += g * x[xi];
          gx[xi] += g * w[ch * k + j];
        }
      }
    }
  }
  for (let i = 0; i < c * k; i++) gw[i] = accW[i];
  if (gb) for (let i = 0; i < c; i++) gb[i] = accB[i];
}

/** A dense (rows, c) copy of the window of x (rows `win.stride` apart from `win.offset`). */
export function gatherWindow(x: FloatArray, win: ColumnWindow, rows: number, c: number): FloatArray {
  const out = x instanceof Float64Array ? new Float64Array(rows * c) : new Float32Array(rows * c);
  for (let r = 0; r < rows; r++)
    out.set(x.subarray(win.offset + r * win.stride, win.offset + r * win.stride + c), r * c);
  return out;
}

/** dense (rows, c) src into the window of dst, added to what is there when accumulate */
export function scatterWindow(
  src: FloatArray,
  dst: FloatArray,
  win: ColumnWindow,
  rows: number,
  c: number,
  accumulate: boolean,
): void {
  for (let r = 0; r < rows; r++) {
    const o = win.offset + r * win.stride;
    if (!accumulate) dst.set(src.subarray(r * c, r * c + c), o);
    else for (let j = 0; j < c; j++) dst[o + j] += src[r * c + j];
  }
}

/**
 * causalConv1d on a column window of x (B, T, W) read in place: the window gathered, then the
 * dense conv (the CPU has no bandwidth to save; this keeps one implementation of the arithmetic)
 */
export function causalConv1dWindow(
  x: FloatArray,
  xWin: ColumnWindow,
  w: FloatArray,
  bias: FloatArray | null,
  out: FloatArray,
  batch: number,
  t: number,
  c: number,
  k: number,
): void {
  causalConv1d(gatherWindow(x, xWin, batch * t, c), w, bias, out, batch, t, c, k);
}

/** its backward: x the window (dense when xWin is null), gx written into the window gxWin */
export function causalConv1dWindowBackward(
  x: FloatArray,
  xWin: ColumnWindow | null,
  w: FloatArray,
  gy: FloatArray,
  gx: FloatArray,
  gxWin: ColumnWindow,
  accumulate: boolean,
  gw: FloatArray,
  gb: FloatArray | null,
  batch: number,
  t: number,
  c: number,
  k: number,
): void {
  const rows = batch * t;
  const xd = xWin ? gatherWindow(x, xWin, rows, c) : x;
  const gxd = gx instanceof Float64Array ? new Float64Array(rows * c) : new Float32Array(rows * c);
  causalConv1dBackward(xd, w, gy, gxd, gw, gb, batch, t, c, k);
  scatterWindow(gxd, gx, gxWin, rows, c, accumulate);
}

/**
 * Rotary embedding on x (B, T, H, D). Angles follow the reference implementations, which
 * compute inverse frequencies and position * frequency in float32 before cos/sin.
 */
export function rope(x: FloatArray, out: FloatArray, p: RopeParams): void {
  const { batch, seqLen, heads, headDim, rotaryDim, theta, interleaved, positionOffset, inverse } = p;
  const half = rotaryDim / 2;
  const cos = new Float64Array(seqLen * half);
  const sin = new Float64Array(seqLen * half);
  for (let i = 0; i < half; i++) {
    const invFreq = Math.fround(1 / Math.fround(theta ** Math.fround((2 * i) / rotaryDim)));
    for (let s = 0; s < seqLen; s++) {
      const angle = Math.fround((positionOffset + s) * invFreq);
      cos[s * half + i] = Math.fround(Math.cos(angle));
      sin[s * half + i] = inverse ? -Math.fround(Math.sin(angle)) : Math.fround(Math.sin(angle));
    }
  }
  for (let b = 0; b < batch; b++) {
    for (let s = 0; s < seqLen; s++) {
      for (let h = 0; h < heads; h++) {
        const base = ((b * seqLen + s) * heads + h) * headDim;
        for (let i = 0; i < half; i++) {
          const ia = interleaved ? base + 2 * i : base + i;
          const ib = interleaved ? base + 2 * i + 1 : base + i + half;
          const c = cos[s * half + i];
          const sn = sin[s * half + i];
          const a = x[ia];
          const bb = x[ib];
          out[ia] = a * c - bb * sn;
          out[ib] = bb * c + a * sn;
        }
        for (let d = rotaryDim; d < headDim; d++) out[base + d] = x[base + d];
      }
    }
  }
}

function newScratch(like: FloatArray, n: number): FloatArray {
  return like instanceof Float64Array ? new Float64Array(n) : new Float32Array(n);
}

/**
 * The (tq, tk) probabilities of one head: for f32 with tk a multiple of 4, a view of the
 * WebAssembly memory at byte 0, so the softmax rows run there in SIMD without a copy (the products
 * write and read the view directly); otherwise a plain scratch array.
 */
function probsScratch(like: FloatArray, tq: number, tk: number): { scores: FloatArray; w: WasmMath | null } {
  const w =
    like instanceof Float32Array && tk % 4 === 0 && tq * tk + 4 * tq <= MAX_STAGED ? wasmMath() : null;
  if (!w) return { scores: newScratch(like, tq * tk), w: null };
  // after the scores: room for softmaxRows' per-row stats (f64 x 2)
  return { scores: w.reserve(tq * tk + 4 * tq).subarray(0, tq * tk), w };
}

/** scores (tq, tk) = scale * q_h k_h^T, causal masked, turned into probabilities in place */
function headProbs(
  useBlas: boolean,
  q: FloatArray,
  k: FloatArray,
  p: AttentionParams,
  b: number,
  h: number,
  scores: FloatArray,
  lseOut: FloatArray | null,
  lseIn: FloatArray | null,
  w: WasmMath | null,
): void {
  const { tq, tk, heads, kvHeads, headDim, scale, causal } = p;
  const kh = Math.floor(h / (heads / kvHeads));
  gemm(
    useBlas,
    false,
    true,
    tq,
    tk,
    headDim,
    scale,
    q,
    (b * tq * heads + h) * headDim,
    heads * headDim,
    k,
    (b * tk * kvHeads + kh) * headDim,
    kvHeads * headDim,
    0,
    scores,
    0,
    tk,
  );
  const shift = tk - tq;
  if (w) {
    // scores is the wasm memory from byte 0: masked entries become -inf, which exp maps to 0
    const bytes = tk * 4;
    if (causal)
      for (let i = 0; i < tq; i++) {
        const last = Math.min(tk - 1, i + shift);
        if (last < tk - 1) scores.fill(-Infinity, i * tk + Math.max(last + 1, 0), (i + 1) * tk);
      }
    const lseBase = (b * heads + h) * tq;
    // rows that see no key at all (causal, tq > tk) attend to nothing: probabilities 0
    const empty = causal ? Math.min(tq, Math.max(0, -shift)) : 0;
    if (lseIn) {
      for (let i = 0; i < tq; i++) w.expSum(i * bytes, i * bytes, bytes, 1, -lseIn[lseBase + i], 1);
      scores.fill(0, 0, empty * tk);
      return;
    }
    // the rows' max and sum of exps (f64 pairs) after the scores
    const statsAt = tq * bytes;
    w.softmaxRows(0, 0, tq, bytes, statsAt);
    scores.fill(0, 0, empty * tk);
    if (lseOut) {
      const stats = new Float64Array(w.memory.buffer, statsAt, 2 * tq);
      for (let i = 0; i < tq; i++) lseOut[lseBase + i] = stats[2 * i] + Math.log(stats[2 * i + 1]);
    }
    return;
  }
  for (let i = 0; i < tq; i++) {
    const row = i * tk;
    const last = causal ? Math.min(tk - 1, i + shift) : tk - 1;
    const lseIdx = (b * heads + h) * tq + i;
    let lse: number;
    if (lseIn) {
      lse = lseIn[lseIdx];
    } else {
      let max = -Infinity;
      for (let j = 0; j <= last; j++) if (scores[row + j] > max) max = scores[row + j];
      let sum = 0;
      for (let j = 0; j <= last; j++) sum += Math.exp(scores[row + j] - max);
      lse = max + Math.log(sum);
      if (lseOut) lseOut[lseIdx] = lse;
    }
    for (let j = 0; j <= last; j++) scores[row + j] = Math.exp(scores[row + j] - lse);
    for (let j = last + 1; j < tk; j++) scores[row + j] = 0;
  }
}

export function attention(
  useBlas: boolean,
  q: FloatArray,
  k: FloatArray,
  v: FloatArray,
  out: FloatArray,
  lse: FloatArray,
  probs: FloatArray | null,
  p: AttentionParams,
): void {
  const { batch, tq, tk, heads, kvHeads, headDim } = p;
  if (heads % kvHeads !== 0)
    throw new Error(`attention: heads (${heads}) must be a multiple of kvHeads (${kvHeads})`);
  const { scores, w } = probsScratch(out, tq, tk);
  for (let b = 0; b < batch; b++) {
    for (let h = 0; h < heads; h++) {
      headProbs(useBlas, q, k, p, b, h, scores, lse, null, w);
      if (probs) probs.set(scores, (b * heads + h) * tq * tk);
      const kh = Math.floor(h / (heads / kvHeads));
      // out_h (tq, D) = P (tq, tk) v_h (tk, D)
      gemm(
        useBlas,
        false,
        false,
        tq,
        headDim,
        tk,
        1,
        scores,
        0,
        tk,
        v,
        (b * tk * kvHeads + kh) * headDim,
        kvHeads * headDim,
        0,
        out,
        (b * tq * heads + h) * headDim,
        heads * headDim,
      );
    }
  }
}

export function attentionBackward(
  useBlas: boolean,
  q: FloatArray,
  k: FloatArray,
  v: FloatArray,
  out: FloatArray,
  lse: FloatArray,
  gOut: FloatArray,
  gq: FloatArray,
  gk: FloatArray,
  gv: FloatArray,
  p: AttentionParams,
): void {
  const { batch, tq, tk, heads, kvHeads, headDim, scale } = p;
  const { scores: probs, w } = probsScratch(out, tq, tk);
  const dp = newScratch(out, tq * tk);
  gk.fill(0);
  gv.fill(0);
  const ldq = heads * headDim;
  const ldk = kvHeads * headDim;
  for (let b = 0; b < batch; b++) {
    for (let h = 0; h < heads; h++) {
      const kh = Math.floor(h / (heads / kvHeads));
      const qOff = (b * tq * heads + h) * headDim;
      const kOff = (b * tk * kvHeads + kh) * headDim;
      headProbs(useBlas, q, k, p, b, h, probs, null, lse, w);
      // gv_h += P^T gOut_h
      gemm(useBlas, true, false, tk, headDim, tq, 1, probs, 0, tk, gOut, qOff, ldq, 1, gv, kOff, ldk);
      // dP = gOut_h v_h^T
      gemm(useBlas, false, true, tq, tk, headDim, 1, gOut, qOff, ldq, v, kOff, ldk, 0, dp, 0, tk);
      // dS = P * (dP - rowsum(gOut * out))
      for (let i = 0; i < tq; i++) {
        let d = 0;
        for (let e = 0; e < headDim; e++) d += gOut[qOff + i * ldq + e] * out[qOff + i * ldq + e];
        const row = i * tk;
        for (let j = 0; j < tk; j++) dp[row + j] = probs[row + j] * (dp[row + j] - d);
      }
      // gq_h = scale * dS k_h ; gk_h += scale * dS^T q_h
      gemm(useBlas, false, false, tq, headDim, tk, scale, dp, 0, tk, k, kOff, ldk, 0, gq, qOff, ldq);
      gemm(useBlas, true, false, tk, headDim, tq, scale, dp, 0, tk, q, qOff, ldq, 1, gk, kOff, ldk);
    }
  }
}
