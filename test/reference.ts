// Independent naive float64 implementations used as references by the tests: plain loops over
// number arrays, written from the definitions, sharing no code with the backends.

export type Arr = ArrayLike<number>;

export function refMatmul(a: Arr, b: Arr, m: number, k: number, n: number): Float64Array {
  const out = new Float64Array(m * n);
  for (let i = 0; i < m; i++)
    for (let j = 0; j < n; j++) {
      let s = 0;
      for (let p = 0; p < k; p++) s += a[i * k + p] * b[p * n + j];
      out[i * n + j] = s;
    }
  return out;
}

export function refTranspose(a: Arr, r: number, c: number): Float64Array {
  const out = new Float64Array(r * c);
  for (let i = 0; i < r; i++) for (let j = 0; j < c; j++) out[j * r + i] = a[i * c + j];
  return out;
}

export function refSoftmaxRows(x: Arr, rows: number, cols: number, log = false): Float64Array {
  const out = new Float64Array(rows * cols);
  for (let r = 0; r < rows; r++) {
    let m = -Infinity;
    for (let j = 0; j < cols; j++) m = Math.max(m, x[r * cols + j]);
    let s = 0;
    for (let j = 0; j < cols; j++) s += Math.exp(x[r * cols + j] - m);
    for (let j = 0; j < cols; j++) {
      out[r * cols + j] = log ? x[r * cols + j] - m - Math.log(s) : Math.exp(x[r * cols + j] - m) / s;
    }
  }
  return out;
}

export function refLayerNorm(
  x: Arr,
  w: Arr,
  b: Arr | null,
  rows: number,
  cols: number,
  eps: number,
): Float64Array {
  const out = new Float64Array(rows * cols);
  for (let r = 0; r < rows; r++) {
    let mu = 0;
    for (let j = 0; j < cols; j++) mu += x[r * cols + j] / cols;
    let v = 0;
    for (let j = 0; j < cols; j++) v += (x[r * cols + j] - mu) ** 2 / cols;
    for (let j = 0; j < cols; j++)
      out[r * cols + j] = ((x[r * cols + j] - mu) / Math.sqrt(v + eps)) * w[j] + (b ? b[j] : 0);
  }
  return out;
}

export function refRmsNorm(x: Arr, w: Arr, rows: number, cols: number, eps: number): Float64Array {
  const out = new Float64Array(rows * cols);
  for (let r = 0; r < rows; r++) {
    let ms = 0;
    for (let j = 0; j < cols; j++) ms += x[r * cols + j] ** 2 / cols;
    for (let j = 0; j < cols; j++) out[r * cols + j] = (x[r * cols + j] / Math.sqrt(ms + eps)) * w[j];
  }
  return out;
}

/** x (B, T, C), w (C, K), bias (C): zero-padded on the left by K-1 */
export function refConv(
  x: Arr,
  w: Arr,
  bias: Arr | null,
  B: number,
  T: number,
  C: number,
  K: number,
): Float64Array {
  const out = new Float64Array(B * T * C);
  for (let b = 0; b < B; b++)
    for (let t = 0; t < T; t++)
      for (let c = 0; c < C; c++) {
        let s = bias ? bias[c] : 0;
        for (let j = 0; j < K; j++) {
          const src = t + j - (K - 1);
          if (src >= 0) s += w[c * K + j] * x[(b * T + src) * C + c];
        }
        out[(b * T + t) * C + c] = s;
      }
  return out;
}

/** rotary embedding on (B, T, H, D), as a 2-d rotation of pairs picked by the layout */
export function refRope(
  x: Arr,
  B: number,
  T: number,
  H: number,
  D: number,
  rot: number,
  theta: number,
  interleaved: boolean,
  offset: number,
): Float64Array {
  const out = Float64Array.from(x);
  for (let b = 0; b < B; b++)
    for (let t = 0; t < T; t++)
      for (let h = 0; h < H; h++)
        for (let i = 0; i < rot / 2; i++) {
          const angle = (offset + t) * Math.pow(theta, (-2 * i) / rot);
          const base = ((b * T + t) * H + h) * D;
          const p = interleaved ? base + 2 * i : base + i;
          const q = interleaved ? base + 2 * i + 1 : base + i + rot / 2;
          out[p] = x[p] * Math.cos(angle) - x[q] * Math.sin(angle);
          out[q] = x[q] * Math.cos(angle) + x[p] * Math.sin(angle);
        }
  return out;
}

/** q (B, Tq, H, D), k v (B, Tk, Hk, D); returns out and probs (B, H, Tq, Tk) */
export function refAttention(
  q: Arr,
  k: Arr,
  v: Arr,
  B: number,
  Tq: number,
  Tk: number,
  H: number,
  Hk: number,
  D: number,
  causal: boolean,
): { out: Float64Array; probs: Float64Array } {
  const out = new Float64Array(B * Tq * H * D);
  const probs = new Float64Array(B * H * Tq * Tk);
  const scale = 1 / Math.sqrt(D);
  for (let b = 0; b < B; b++)
    for (let h = 0; h < H; h++) {
      const kh = Math.floor((h * Hk) / H);
      for (let i = 0; i < Tq; i++) {
        const s = new Float64Array(Tk).fill(-Infinity);
        for (let j = 0; j < Tk; j++) {
          if (causal && j > i + Tk - Tq) continue;
          let d = 0;
          for (let e = 0; e < D; e++)
            d += q[((b * Tq + i) * H + h) * D + e] * k[((b * Tk + j) * Hk + kh) * D + e];
          s[j] = d * scale;
        }
        const p = refSoftmaxRows(s, 1, Tk);
        for (let j = 0; j < Tk; j++) {
          probs[((b * H + h) * Tq + i) * Tk + j] = p[j];
          for (let e = 0; e < D; e++)
            out[((b * Tq + i) * H + h) * D + e] += p[j] * v[((b * Tk + j) * Hk + kh) * D + e];
        }
      }
    }
  return { out, probs };
}

/** The SSM by its recurrence, one token at a time: x (B,T,H,P), logA (B,T,H), Bm Cm (B,T,G,N). */
export function refSsmRecurrent(
  x: Arr,
  logA: Arr,
  Bm: Arr,
  Cm: Arr,
  B: number,
  T: number,
  H: number,
  G: number,
  P: number,
  N: number,
): { y: Float64Array; state: Float64Array } {
  const y = new Float64Array(B * T * H * P);
  const state = new Float64Array(B * H * P * N);
  for (let b = 0; b < B; b++)
    for (let h = 0; h < H; h++) {
      const g = Math.floor((h * G) / H);
      const st = new Float64Array(P * N);
      for (let t = 0; t < T; t++) {
        const a = Math.exp(logA[(b * T + t) * H + h]);
        for (let p = 0; p < P; p++)
          for (let n = 0; n < N; n++) {
            st[p * N + n] =
              a * st[p * N + n] + x[((b * T + t) * H + h) * P + p] * Bm[((b * T + t) * G + g) * N + n];
          }
        for (let p = 0; p < P; p++) {
          let s = 0;
          for (let n = 0; n < N; n++) s += st[p * N + n] * Cm[((b * T + t) * G + g) * N + n];
          y[((b * T + t) * H + h) * P + p] = s;
        }
      }
      state.set(st, (b * H + h) * P * N);
    }
  return { y, state };
}

/** M[b,h,t,s] = C_t . B_s * prod_{k=s+1..t} exp(logA_k) */
export function refMixerMatrix(
  logA: Arr,
  Bm: Arr,
  Cm: Arr,
  B: number,
  T: number,
  H: number,
  G: number,
  N: number,
): Float64Array {
  const out = new Float64Array(B * H * T * T);
  for (let b = 0; b < B; b++)
    for (let h = 0; h < H; h++) {
      const g = Math.floor((h * G) / H);
      for (let t = 0; t < T; t++)
        for (let s = 0; s <= t; s++) {
          let prod = 1;
          for (let k = s + 1; k <= t; k++) prod *= Math.exp(logA[(b * T + k) * H + h]);
          let d = 0;
          for (let n = 0; n < N; n++)
            d += Cm[((b * T + t) * G + g) * N + n] * Bm[((b * T + s) * G + g) * N + n];
          out[((b * H + h) * T + t) * T + s] = d * prod;
        }
    }
  return out;
}
