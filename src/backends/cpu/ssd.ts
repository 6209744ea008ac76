// The discrete Mamba-2 SSM on the CPU: the chunked SSD scan with its backward pass, and the
// materialized mixing matrix with its backward pass. Every product goes through gemm (OpenBLAS
// when present), on strided views of the (B, T, H, P) / (B, T, G, N) layouts.
//
// Per batch b and head h (group g = h / (H / G)), within a chunk of L positions starting at t0,
// with cum[i] = sum_{k<=i} logA[t0 + k], W[i, j] = exp(cum[i] - cum[j]) for j <= i (else 0) and
// S0 the state entering the chunk (P x N):
//   Y     = (C B^T o W) X  +  diag(exp(cum)) C S0^T                       (L x P)
//   S_end = exp(cum[L-1]) S0 + X^T diag(w) B,  w[j] = exp(cum[L-1] - cum[j])  (P x N)

import type { SsdParams } from '../backend.js';
import { gemm, type FloatArray } from './blas.js';

/**
 * Checks the parameters. (The kernels read p's fields into locals themselves: an object literal of
 * derived sizes changed its map as fields went from small integers to doubles, and each change
 * deoptimized the hot loops around it back to the interpreter.)
 */
function checkParams(p: SsdParams): void {
  if (p.heads % p.groups !== 0)
    throw new Error(`ssd: heads (${p.heads}) must be a multiple of groups (${p.groups})`);
  if (!(p.chunkSize > 0)) throw new Error(`ssd: chunk size must be positive, got ${p.chunkSize}`);
}

function scratch(like: FloatArray, n: number): FloatArray {
  return like instanceof Float64Array ? new Float64Array(n) : new Float32Array(n);
}

/** cum[i] = sum_{k <= i} logA[(b, t0 + k, h)] */
function chunkCum(
  logA: FloatArray,
  cum: Float64Array,
  b: number,
  t0: number,
  L: number,
  T: number,
  H: number,
  h: number,
): void {
  let acc = 0;
  for (let i = 0; i < L; i++) {
    acc += logA[(b * T + t0 + i) * H + h];
    cum[i] = acc;
  }
}

/**
 * decay[k] = exp(logA[(b, t0 + k, h)]) = exp(cum[k] - cum[k-1]), so that row i of W is walked from
 * the diagonal down with one multiply a step: W[i, j] = W[i, j+1] decay[j+1] (L exps a chunk, not
 * L^2 / 2; float64, so the products agree with exp(cum[i] - cum[j]) to a few ulps)
 */
function chunkDecay(
  logA: FloatArray,
  decay: Float64Array,
  b: number,
  t0: number,
  L: number,
  T: number,
  H: number,
  h: number,
): void {
  for (let k = 0; k < L; k++) decay[k] = Math.exp(logA[(b * T + t0 + k) * H + h]);
}

export function ssdScan(
  x: FloatArray,
  logA: FloatArray,
  bm: FloatArray,
  cm: FloatArray,
  y: FloatArray,
  states: FloatArray,
  finalState: FloatArray | null,
  p: SsdParams,
  useBlas = true,
): void {
  checkParams(p);
  const { heads: H, groups: G, headDim: P, dState: N, seqLen: T, chunkSize: Q } = p;
  const nChunks = Math.ceil(T / Q);
  const headsPerGroup = H / G;
  const S = scratch(x, P * N);
  const cum = new Float64Array(Q);
  const step = new Float64Array(Q);
  const cb = scratch(x, Q * Q);
  const cs = scratch(x, Q * N);
  const ldx = H * P;
  const ldb = G * N;
  for (let b = 0; b < p.batch; b++) {
    for (let h = 0; h < H; h++) {
      const g = Math.floor(h / headsPerGroup);
      S.fill(0);
      for (let c = 0; c < nChunks; c++) {
        const t0 = c * Q;
        const L = Math.min(Q, T - t0);
        states.set(S, ((b * nChunks + c) * H + h) * P * N);
        chunkCum(logA, cum, b, t0, L, T, H, h);
        chunkDecay(logA, step, b, t0, L, T, H, h);
        const xOff = ((b * T + t0) * H + h) * P;
        const bOff = ((b * T + t0) * G + g) * N;
        // CB = C B^T (L x L), masked with the decays
        gemm(useBlas, false, true, L, L, N, 1, cm, bOff, ldb, bm, bOff, ldb, 0, cb, 0, L);
        for (let i = 0; i < L; i++) {
          for (let j = i, w = 1; j >= 0; w *= step[j], j--) cb[i * L + j] *= w;
          for (let j = i + 1; j < L; j++) cb[i * L + j] = 0;
        }
        // Y = (CB o W) X
        gemm(useBlas, false, false, L, P, L, 1, cb, 0, L, x, xOff, ldx, 0, y, xOff, ldx);
        // Y += diag(exp(cum)) C S0^T
        if (c > 0) {
          for (let i = 0; i < L; i++) {
            const e = Math.exp(cum[i]);
            for (let n = 0; n < N; n++) cs[i * N + n] = e * cm[bOff + i * ldb + n];
          }
          gemm(useBlas, false, true, L, P, N, 1, cs, 0, N, S, 0, N, 1, y, xOff, ldx);
        }
        // S = exp(cum[L-1]) S + X^T diag(w) B
        const last = cum[L - 1];
        for (let j = 0; j < L; j++) {
          const w = Math.exp(last - cum[j]);
          for (let n = 0; n < N; n++) cs[j * N + n] = w * bm[bOff + j * ldb + n];
        }
        const decay = Math.exp(last);
        for (let e = 0; e < P * N; e++) S[e] *= decay;
        gemm(useBlas, true, false, P, N, L, 1, x, xOff, ldx, cs, 0, N, 1, S, 0, N);
      }
      if (finalState) finalState.set(S, (b * H + h) * P * N);
    }
  }
}

export function ssdScanBackward(
  x: FloatArray,
  logA: FloatArray,
  bm: FloatArray,
  cm: FloatArray,
  states: FloatArray,
  gy: FloatArray,
  gx: FloatArray,
  gLogA: FloatArray,
  gB: FloatArray,
  gC: FloatArray,
  p: SsdParams,
  useBlas = true,
): void {
  checkParams(p);
  const { heads: H, groups: G, headDim: P, dState: N, seqLen: T, chunkSize: Q } = p;
  const nChunks = Math.ceil(T / Q);
  const headsPerGroup = H / G;
  gB.fill(0);
  gC.fill(0);
  const S0 = scratch(x, P * N);
  const gS = scratch(x, P * N); // gradient of the state leaving the current chunk
  const gS0 = scratch(x, P * N);
  const cum = new Float64Array(Q);
  const step = new Float64Array(Q);
  const gcum = new Float64Array(Q);
  const a = scratch(x, Q * Q); // CB o W
  const ds = scratch(x, Q * Q); // gY X^T, then dS o W
  const u = scratch(x, Q * Math.max(P, N));
  const v = scratch(x, Q * Math.max(P, N));
  const ldx = H * P;
  const ldb = G * N;
  for (let b = 0; b < p.batch; b++) {
    for (let h = 0; h < H; h++) {
      const g = Math.floor(h / headsPerGroup);
      gS.fill(0);
      for (let c = nChunks - 1; c >= 0; c--) {
        const t0 = c * Q;
        const L = Math.min(Q, T - t0);
        S0.set(states.subarray(((b * nChunks + c) * H + h) * P * N, ((b * nChunks + c) * H + h + 1) * P * N));
        chunkCum(logA, cum, b, t0, L, T, H, h);
        chunkDecay(logA, step, b, t0, L, T, H, h);
        gcum.fill(0, 0, L);
        const xOff = ((b * T + t0) * H + h) * P;
        const bOff = ((b * T + t0) * G + g) * N;
        // A = CB o W, dS = gY X^T
        gemm(useBlas, false, true, L, L, N, 1, cm, bOff, ldb, bm, bOff, ldb, 0, a, 0, L);
        gemm(useBlas, false, true, L, L, P, 1, gy, xOff, ldx, x, xOff, ldx, 0, ds, 0, L);
        for (let i = 0; i < L; i++) {
          let gi = 0;
          for (let j = i, w = 1; j >= 0; w *= step[j], j--) {
            const av = a[i * L + j] * w;
            a[i * L + j] = av;
            const r = ds[i * L + j] * av; // dS o CB o W: the decays' gradient
            gi += r;
            gcum[j] -= r;
            ds[i * L + j] *= w;
          }
          gcum[i] += gi;
          for (let j = i + 1; j < L; j++) {
            a[i * L + j] = 0;
            ds[i * L + j] = 0;
          }
        }
        // gX = A^T gY ; gC += (dS o W) B ; gB += (dS o W)^T C
        gemm(useBlas, true, false, L, P, L, 1, a, 0, L, gy, xOff, ldx, 0, gx, xOff, ldx);
        gemm(useBlas, false, false, L, N, L, 1, ds, 0, L, bm, bOff, ldb, 1, gC, bOff, ldb);
        gemm(useBlas, true, false, L, N, L, 1, ds, 0, L, cm, bOff, ldb, 1, gB, bOff, ldb);
        // the entering state's part of Y: diag(e^cum) C S0^T
        if (c > 0) {
          // U = C S0^T (L x P): gcum_i += e^cum_i <gY_i, U_i>
          gemm(useBlas, false, true, L, P, N, 1, cm, bOff, ldb, S0, 0, N, 0, u, 0, P);
          for (let i = 0; i < L; i++) {
            const e = Math.exp(cum[i]);
            let d = 0;
            for (let q = 0; q < P; q++) {
              const gyv = e * gy[xOff + i * ldx + q];
              v[i * P + q] = gyv; // diag(e^cum) gY
              d += gyv * u[i * P + q];
            }
            gcum[i] += d;
          }
          // gC += diag(e^cum) gY S0 ; gS0 = (diag(e^cum) gY)^T C
          gemm(useBlas, false, false, L, N, P, 1, v, 0, P, S0, 0, N, 1, gC, bOff, ldb);
          gemm(useBlas, true, false, P, N, L, 1, v, 0, P, cm, bOff, ldb, 0, gS0, 0, N);
        } else {
          gS0.fill(0);
        }
        // the state leaving the chunk: S_end = e^last S0 + X^T diag(w) B
        const last = cum[L - 1];
        const eLast = Math.exp(last);
        let inner = 0;
        for (let e = 0; e < P * N; e++) {
          gS0[e] += eLast * gS[e];
          inner += gS[e] * S0[e];
        }
        gcum[L - 1] += eLast * inner;
        // XgS = X gS (L x N)
        gemm(useBlas, false, false, L, N, P, 1, x, xOff, ldx, gS, 0, N, 0, u, 0, N);
        for (let j = 0; j < L; j++) {
          const w = Math.exp(last - cum[j]);
          let d = 0;
          for (let n = 0; n < N; n++) {
            const bv = bm[bOff + j * ldb + n];
            d += u[j * N + n] * bv;
            gB[bOff + j * ldb + n] += w * u[j * N + n];
            v[j * N + n] = w * bv; // diag(w) B
          }
          gcum[L - 1] += w * d;
          gcum[j] -= w * d;
        }
        // gX += diag(w) B gS^T
        gemm(useBlas, false, true, L, P, N, 1, v, 0, N, gS, 0, N, 1, gx, xOff, ldx);
        // glogA = reverse cumulative sum of gcum
        let rev = 0;
        for (let i = L - 1; i >= 0; i--) {
          rev += gcum[i];
          gLogA[(b * T + t0 + i) * H + h] = rev;
        }
        gS.set(gS0);
      }
    }
  }
}

/** cum over the whole sequence of (b, h), in float64 */
function seqCum(logA: FloatArray, cum: Float64Array, b: number, T: number, H: number, h: number): void {
  let acc = 0;
  for (let t = 0; t < T; t++) {
    acc += logA[(b * T + t) * H + h];
    cum[t] = acc;
  }
}

export function materializeMixer(
  logA: FloatArray,
  bm: FloatArray,
  cm: FloatArray,
  out: FloatArray,
  p: SsdParams,
  useBlas = true,
): void {
  checkParams(p);
  const { heads: H, groups: G, dState: N, seqLen: T } = p;
  const headsPerGroup = H / G;
  const cum = new Float64Array(T);
  const ldb = G * N;
  for (let b = 0; b < p.batch; b++) {
    for (let h = 0; h < H; h++) {
      const g = Math.floor(h / headsPerGroup);
      const base = (b * H + h) * T * T;
      const bOff = (b * T * G + g) * N;
      seqCum(logA, cum, b, T, H, h);
      gemm(useBlas, false, true, T, T, N, 1, cm, bOff, ldb, bm, bOff, ldb, 0, out, base, T);
      for (let t = 0; t < T; t++) {
        for (let s = 0; s <= t; s++) out[base + t * T + s] *= Math.exp(cum[t] - cum[s]);
        for (let s = t + 1; s < T; s++) out[base + t * T + s] = 0;
      }
    }
  }
}

export function materializeMixerBackward(
  logA: FloatArray,
  bm: FloatArray,
  cm: FloatArray,
  gOut: FloatArray,
  gLogA: FloatArray,
  gB: FloatArray,
  gC: FloatArray,
  p: SsdParams,
  useBlas = true,
): void {
  checkParams(p);
  const { heads: H, groups: G, dState: N, seqLen: T } = p;
  const headsPerGroup = H / G;
  gB.fill(0);
  gC.fill(0);
  const cum = new Float64Array(T);
  const gcum = new Float64Array(T);
  const m = scratch(gOut, T * T);
  const gw = scratch(gOut, T * T);
  const ldb = G * N;
  for (let b = 0; b < p.batch; b++) {
    for (let h = 0; h < H; h++) {
      const g = Math.floor(h / headsPerGroup);
      const base = (b * H + h) * T * T;
      const bOff = (b * T * G + g) * N;
      seqCum(logA, cum, b, T, H, h);
      gemm(useBlas, false, true, T, T, N, 1, cm, bOff, ldb, bm, bOff, ldb, 0, m, 0, T);
      gcum.fill(0);
      for (let t = 0; t < T; t++) {
        for (let s = 0; s <= t; s++) {
          const w = Math.exp(cum[t] - cum[s]);
          const go = gOut[base + t * T + s];
          const r = go * m[t * T + s] * w; // g * M[t, s]: dM/dcum_t = M, dM/dcum_s = -M
          gcum[t] += r;
          gcum[s] -= r;
          gw[t * T + s] = go * w;
        }
        for (let s = t + 1; s < T; s++) gw[t * T + s] = 0;
      }
      // gC += (g o W) B ; gB += (g o W)^T C
      gemm(useBlas, false, false, T, N, T, 1, gw, 0, T, bm, bOff, ldb, 1, gC, bOff, ldb);
      gemm(useBlas, true, false, T, N, T, 1, gw, 0, T, cm, bOff, ldb, 1, gB, bOff, ldb);
      let rev = 0;
      for (let t = T - 1; t >= 0; t--) {
        rev += gcum[t];
        gLogA[(b * T + t) * H + h] = rev;
      }
    }
  }
}
