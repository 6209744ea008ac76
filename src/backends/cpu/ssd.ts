// The discrete Mamba-2 SSM on the CPU: the chunked SSD scan with its backward pass, and the
// materialized mixing matrix with its backward pass.
//
// Per batch b and head h (group g = h / (H / G)), within a chunk of L positions starting at t0,
// with cum[i] = sum_{k<=i} logA[t0 + k] and S0 the state entering the chunk (P x N):
//   y_i   = sum_{j<=i} exp(cum[i] - cum[j]) (C_i . B_j) x_j  +  exp(cum[i]) S0 C_i
//   S_end = exp(cum[L-1]) S0 + sum_j exp(cum[L-1] - cum[j]) x_j B_j^T

import type { SsdParams } from '../backend.js';
import type { FloatArray } from './blas.js';

interface Layout {
  H: number;
  G: number;
  P: number;
  N: number;
  T: number;
  Q: number;
  nChunks: number;
  headsPerGroup: number;
}

function layout(p: SsdParams): Layout {
  const { heads: H, groups: G, headDim: P, dState: N, seqLen: T, chunkSize: Q } = p;
  if (H % G !== 0) throw new Error(`ssd: heads (${H}) must be a multiple of groups (${G})`);
  if (!(Q > 0)) throw new Error(`ssd: chunk size must be positive, got ${Q}`);
  return { H, G, P, N, T, Q, nChunks: Math.ceil(T / Q), headsPerGroup: H / G };
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
): void {
  const { H, G, P, N, T, Q, nChunks, headsPerGroup } = layout(p);
  const S = new Float64Array(P * N);
  const cum = new Float64Array(Q);
  const cb = new Float64Array(Q * Q);
  for (let b = 0; b < p.batch; b++) {
    for (let h = 0; h < H; h++) {
      const g = Math.floor(h / headsPerGroup);
      S.fill(0);
      for (let c = 0; c < nChunks; c++) {
        const t0 = c * Q;
        const L = Math.min(Q, T - t0);
        const stBase = ((b * nChunks + c) * H + h) * P * N;
        for (let e = 0; e < P * N; e++) states[stBase + e] = S[e];
        let acc = 0;
        for (let i = 0; i < L; i++) {
          acc += logA[(b * T + t0 + i) * H + h];
          cum[i] = acc;
        }
        // C_i . B_j for j <= i
        for (let i = 0; i < L; i++) {
          const ci = ((b * T + t0 + i) * G + g) * N;
          for (let j = 0; j <= i; j++) {
            const bj = ((b * T + t0 + j) * G + g) * N;
            let d = 0;
            for (let n = 0; n < N; n++) d += cm[ci + n] * bm[bj + n];
            cb[i * Q + j] = d * Math.exp(cum[i] - cum[j]);
          }
        }
        for (let i = 0; i < L; i++) {
          const yi = ((b * T + t0 + i) * H + h) * P;
          const ci = ((b * T + t0 + i) * G + g) * N;
          const decay = Math.exp(cum[i]);
          for (let pp = 0; pp < P; pp++) {
            let v = 0;
            for (let j = 0; j <= i; j++) v += cb[i * Q + j] * x[((b * T + t0 + j) * H + h) * P + pp];
            let inter = 0;
            for (let n = 0; n < N; n++) inter += S[pp * N + n] * cm[ci + n];
            y[yi + pp] = v + decay * inter;
          }
        }
        // state passing
        const total = Math.exp(cum[L - 1]);
        for (let e = 0; e < P * N; e++) S[e] *= total;
        for (let j = 0; j < L; j++) {
          const w = Math.exp(cum[L - 1] - cum[j]);
          const xj = ((b * T + t0 + j) * H + h) * P;
          const bj = ((b * T + t0 + j) * G + g) * N;
          for (let pp = 0; pp < P; pp++) {
            const xv = w * x[xj + pp];
            if (xv === 0) continue;
            for (let n = 0; n < N; n++) S[pp * N + n] += xv * bm[bj + n];
          }
        }
      }
      if (finalState) {
        const fb = (b * H + h) * P * N;
        for (let e = 0; e < P * N; e++) finalState[fb + e] = S[e];
      }
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
): void {
  const { H, G, P, N, T, Q, nChunks, headsPerGroup } = layout(p);
  gB.fill(0);
  gC.fill(0);
  const S0 = new Float64Array(P * N);
  const gS = new Float64Array(P * N); // gradient of the state leaving the current chunk
  const gS0 = new Float64Array(P * N);
  const cum = new Float64Array(Q);
  const gcum = new Float64Array(Q);
  const gxl = new Float64Array(Q * P);
  const u = new Float64Array(P);
  for (let b = 0; b < p.batch; b++) {
    for (let h = 0; h < H; h++) {
      const g = Math.floor(h / headsPerGroup);
      gS.fill(0);
      for (let c = nChunks - 1; c >= 0; c--) {
        const t0 = c * Q;
        const L = Math.min(Q, T - t0);
        const stBase = ((b * nChunks + c) * H + h) * P * N;
        for (let e = 0; e < P * N; e++) S0[e] = states[stBase + e];
        let acc = 0;
        for (let i = 0; i < L; i++) {
          acc += logA[(b * T + t0 + i) * H + h];
          cum[i] = acc;
        }
        gcum.fill(0);
        gxl.fill(0);
        gS0.fill(0);
        const xi = (i: number) => ((b * T + t0 + i) * H + h) * P;
        const bi = (i: number) => ((b * T + t0 + i) * G + g) * N;
        // intra-chunk part
        for (let i = 0; i < L; i++) {
          const gyi = xi(i);
          const ci = bi(i);
          for (let j = 0; j <= i; j++) {
            const w = Math.exp(cum[i] - cum[j]);
            const bj = bi(j);
            const xj = xi(j);
            let cbv = 0;
            for (let n = 0; n < N; n++) cbv += cm[ci + n] * bm[bj + n];
            let dS = 0;
            for (let pp = 0; pp < P; pp++) dS += gy[gyi + pp] * x[xj + pp];
            const wcb = w * cbv;
            for (let pp = 0; pp < P; pp++) gxl[j * P + pp] += wcb * gy[gyi + pp];
            const wd = w * dS;
            for (let n = 0; n < N; n++) {
              gC[ci + n] += wd * bm[bj + n];
              gB[bj + n] += wd * cm[ci + n];
            }
            const gl = dS * wcb;
            gcum[i] += gl;
            gcum[j] -= gl;
          }
        }
        // contribution of the entering state to the outputs
        for (let i = 0; i < L; i++) {
          const e = Math.exp(cum[i]);
          const gyi = xi(i);
          const ci = bi(i);
          let dot = 0;
          for (let pp = 0; pp < P; pp++) {
            let s = 0;
            for (let n = 0; n < N; n++) s += S0[pp * N + n] * cm[ci + n];
            u[pp] = s;
            dot += gy[gyi + pp] * s;
          }
          gcum[i] += e * dot;
          for (let pp = 0; pp < P; pp++) {
            const gv = e * gy[gyi + pp];
            if (gv === 0) continue;
            for (let n = 0; n < N; n++) {
              gC[ci + n] += gv * S0[pp * N + n];
              gS0[pp * N + n] += gv * cm[ci + n];
            }
          }
        }
        // the state leaving the chunk
        const last = L - 1;
        const eTotal = Math.exp(cum[last]);
        let inner = 0;
        for (let e = 0; e < P * N; e++) {
          gS0[e] += eTotal * gS[e];
          inner += gS[e] * S0[e];
        }
        gcum[last] += eTotal * inner;
        for (let j = 0; j < L; j++) {
          const w = Math.exp(cum[last] - cum[j]);
          const xj = xi(j);
          const bj = bi(j);
          let v = 0;
          for (let pp = 0; pp < P; pp++) {
            let s = 0; // (gS B_j)_p
            for (let n = 0; n < N; n++) s += gS[pp * N + n] * bm[bj + n];
            gxl[j * P + pp] += w * s;
            v += x[xj + pp] * s;
          }
          for (let n = 0; n < N; n++) {
            let s = 0; // (gS^T x_j)_n
            for (let pp = 0; pp < P; pp++) s += gS[pp * N + n] * x[xj + pp];
            gB[bj + n] += w * s;
          }
          gcum[last] += w * v;
          gcum[j] -= w * v;
        }
        // write gx and turn gcum into glogA (reverse cumulative sum)
        for (let j = 0; j < L; j++) for (let pp = 0; pp < P; pp++) gx[xi(j) + pp] = gxl[j * P + pp];
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

export function materializeMixer(
  logA: FloatArray,
  bm: FloatArray,
  cm: FloatArray,
  out: FloatArray,
  p: SsdParams,
): void {
  const { H, G, N, T, headsPerGroup } = layout(p);
  for (let b = 0; b < p.batch; b++) {
    for (let h = 0; h < H; h++) {
      const g = Math.floor(h / headsPerGroup);
      const base = (b * H + h) * T * T;
      for (let t = 0; t < T; t++) {
        const ci = ((b * T + t) * G + g) * N;
        let seg = 0; // sum_{k=s+1..t} logA_k
        for (let s = t; s >= 0; s--) {
          const bs = ((b * T + s) * G + g) * N;
          let d = 0;
          for (let n = 0; n < N; n++) d += cm[ci + n] * bm[bs + n];
          out[base + t * T + s] = d * Math.exp(seg);
          seg += logA[(b * T + s) * H + h];
        }
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
): void {
  const { H, G, N, T, headsPerGroup } = layout(p);
  gB.fill(0);
  gC.fill(0);
  const r = new Float64Array(T);
  for (let b = 0; b < p.batch; b++) {
    for (let h = 0; h < H; h++) {
      const g = Math.floor(h / headsPerGroup);
      const base = (b * H + h) * T * T;
      for (let t = 0; t < T; t++) gLogA[(b * T + t) * H + h] = 0;
      for (let t = 0; t < T; t++) {
        const ci = ((b * T + t) * G + g) * N;
        let seg = 0;
        for (let s = t; s >= 0; s--) {
          const bs = ((b * T + s) * G + g) * N;
          const w = Math.exp(seg);
          const gm = gOut[base + t * T + s];
          let d = 0;
          for (let n = 0; n < N; n++) d += cm[ci + n] * bm[bs + n];
          r[s] = gm * d * w; // g * M[t, s]
          const gw = gm * w;
          for (let n = 0; n < N; n++) {
            gC[ci + n] += gw * bm[bs + n];
            gB[bs + n] += gw * cm[ci + n];
          }
          seg += logA[(b * T + s) * H + h];
        }
        // dM[t,s]/dlogA_k = M[t,s] for s < k <= t
        let prefix = 0;
        for (let k = 1; k <= t; k++) {
          prefix += r[k - 1];
          gLogA[(b * T + k) * H + h] += prefix;
        }
      }
    }
  }
}
