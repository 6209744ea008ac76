// The discrete Mamba-2 SSM in f32: the chunked SSD scan (forward and backward) and the
// materialized mixing matrix (forward and backward). These are the simple, readable versions
// (one thread per output, chunk matrices in device scratch); they are the oracle for faster ones.
//
// Layouts: x, y, gx (B, T, H, P); logA, gLogA (B, T, H); bm, cm, gB, gC (B, T, G, N);
// states (B, nC, H, P, N) holds the state entering each chunk; final (B, H, P, N).
// Scratch (allocated by the host): cum (B, H, T) is the inclusive cumulative sum of logA
// restarted at each chunk; chunk matrices (B, H, nC, Q, Q) are indexed [i][j] within a chunk.
// Head h reads B and C of group h / (H / G).
//
// Within a chunk starting at t0 with L positions, cum_i = sum_{k<=i} logA[t0 + k], S0 the
// entering state:
//   y_i   = sum_{j<=i} exp(cum_i - cum_j) (C_i . B_j) x_j + exp(cum_i) S0 C_i
//   S_end = exp(cum_{L-1}) S0 + sum_j exp(cum_{L-1} - cum_j) x_j B_j^T
#include "common.cuh"

struct SsdDims {
  int batch, seqLen, heads, groups, headDim, dState, chunk, nChunks;
};

#define XI(d, b, t, h) ((((i64)(b) * (d).seqLen + (t)) * (d).heads + (h)) * (d).headDim)
#define BI(d, b, t, g) ((((i64)(b) * (d).seqLen + (t)) * (d).groups + (g)) * (d).dState)
#define CUMI(d, b, h, t) (((i64)(b) * (d).heads + (h)) * (d).seqLen + (t))
#define MATI(d, b, h, c) ((((i64)(b) * (d).heads + (h)) * (d).nChunks + (c)) * (d).chunk * (d).chunk)
#define STI(d, b, c, h) ((((i64)(b) * (d).nChunks + (c)) * (d).heads + (h)) * (d).headDim * (d).dState)

__device__ __forceinline__ int chunk_len(const SsdDims& d, int c) { return min(d.chunk, d.seqLen - c * d.chunk); }

/** cum (B, H, T) from logA; one thread per (b, c, h) */
extern "C" __global__ void ssd_cumsum(const float* logA, float* cum, SsdDims d) {
  const i64 n = (i64)d.batch * d.nChunks * d.heads;
  FOR_EACH(idx, n) {
    const int h = (int)(idx % d.heads);
    const i64 bc = idx / d.heads;
    const int c = (int)(bc % d.nChunks);
    const int b = (int)(bc / d.nChunks);
    const int t0 = c * d.chunk, L = chunk_len(d, c);
    float acc = 0.f;
    for (int i = 0; i < L; i++) {
      acc += logA[((i64)b * d.seqLen + t0 + i) * d.heads + h];
      cum[CUMI(d, b, h, t0 + i)] = acc;
    }
  }
}

/**
 * Per chunk (B, H, nC, Q, Q): M[i][j] = exp(cum_i - cum_j) (C_i . B_j) for j <= i < L, else 0.
 * With gy given (backward) also Dw[i][j] = exp(cum_i - cum_j) (gy_i . x_j) and
 * R[i][j] = M[i][j] (gy_i . x_j). One thread per entry.
 */
extern "C" __global__ void ssd_chunk_matrices(const float* cm, const float* bm, const float* cum, const float* x,
                                              const float* gy, float* M, float* Dw, float* R, SsdDims d) {
  const int Q = d.chunk, hpg = d.heads / d.groups;
  const i64 n = (i64)d.batch * d.heads * d.nChunks * Q * Q;
  FOR_EACH(idx, n) {
    const int j = (int)(idx % Q);
    const int i = (int)((idx / Q) % Q);
    const i64 bhc = idx / ((i64)Q * Q);
    const int c = (int)(bhc % d.nChunks);
    const int h = (int)((bhc / d.nChunks) % d.heads);
    const int b = (int)(bhc / ((i64)d.nChunks * d.heads));
    const int L = chunk_len(d, c), t0 = c * Q, g = h / hpg;
    float m = 0.f, dw = 0.f, r = 0.f;
    if (i < L && j <= i) {
      const float dec = expf(cum[CUMI(d, b, h, t0 + i)] - cum[CUMI(d, b, h, t0 + j)]);
      const float* ci = cm + BI(d, b, t0 + i, g);
      const float* bj = bm + BI(d, b, t0 + j, g);
      float cb = 0.f;
      for (int k = 0; k < d.dState; k++) cb += ci[k] * bj[k];
      m = dec * cb;
      if (gy) {
        const float* gi = gy + XI(d, b, t0 + i, h);
        const float* xj = x + XI(d, b, t0 + j, h);
        float dot = 0.f;
        for (int p = 0; p < d.headDim; p++) dot += gi[p] * xj[p];
        dw = dec * dot;
        r = m * dot;
      }
    }
    M[idx] = m;
    if (gy) {
      Dw[idx] = dw;
      R[idx] = r;
    }
  }
}

/**
 * The state each chunk adds, written into states (B, nC, H, P, N) for ssd_state_pass:
 * S_local[p][n] = sum_j exp(cum_{L-1} - cum_j) x_j[p] B_j[n]. One thread per entry.
 */
extern "C" __global__ void ssd_chunk_state(const float* x, const float* bm, const float* cum, float* states,
                                           SsdDims d) {
  const int P = d.headDim, N = d.dState, hpg = d.heads / d.groups;
  const i64 n = (i64)d.batch * d.nChunks * d.heads * P * N;
  FOR_EACH(idx, n) {
    const int nn = (int)(idx % N);
    const int p = (int)((idx / N) % P);
    const i64 bch = idx / ((i64)P * N);
    const int h = (int)(bch % d.heads);
    const int c = (int)((bch / d.heads) % d.nChunks);
    const int b = (int)(bch / ((i64)d.heads * d.nChunks));
    const int L = chunk_len(d, c), t0 = c * d.chunk, g = h / hpg;
    const float last = cum[CUMI(d, b, h, t0 + L - 1)];
    float acc = 0.f;
    for (int j = 0; j < L; j++) {
      const float w = expf(last - cum[CUMI(d, b, h, t0 + j)]);
      acc += w * x[XI(d, b, t0 + j, h) + p] * bm[BI(d, b, t0 + j, g) + nn];
    }
    states[idx] = acc;
  }
}

/**
 * In place on states: the local chunk states become the states entering each chunk,
 * S_{c+1} = exp(cum_last(c)) S_c + local_c, S_0 = 0; final (B, H, P, N) | null gets S_nC.
 * One thread per (b, h, p, n), sequential over chunks.
 */
extern "C" __global__ void ssd_state_pass(float* states, const float* cum, float* final, SsdDims d) {
  const i64 PN = (i64)d.headDim * d.dState;
  const i64 n = (i64)d.batch * d.heads * PN;
  FOR_EACH(idx, n) {
    const i64 e = idx % PN;
    const int h = (int)((idx / PN) % d.heads);
    const int b = (int)(idx / (PN * d.heads));
    float S = 0.f;
    for (int c = 0; c < d.nChunks; c++) {
      const i64 at = STI(d, b, c, h) + e;
      const float local = states[at];
      states[at] = S;
      const int L = chunk_len(d, c);
      S = expf(cum[CUMI(d, b, h, c * d.chunk + L - 1)]) * S + local;
    }
    if (final) final[idx] = S;
  }
}

/** y (B, T, H, P) from the chunk matrices and entering states. One thread per output. */
extern "C" __global__ void ssd_chunk_output(const float* x, const float* cm, const float* cum, const float* M,
                                            const float* states, float* y, SsdDims d) {
  const int P = d.headDim, N = d.dState, Q = d.chunk, hpg = d.heads / d.groups;
  const i64 n = (i64)d.batch * d.seqLen * d.heads * P;
  FOR_EACH(idx, n) {
    const int p = (int)(idx % P);
    const int h = (int)((idx / P) % d.heads);
    const i64 bt = idx / ((i64)P * d.heads);
    const int t = (int)(bt % d.seqLen);
    const int b = (int)(bt / d.seqLen);
    const int c = t / Q, i = t - c * Q, t0 = c * Q, g = h / hpg;
    const float* row = M + MATI(d, b, h, c) + (i64)i * Q;
    float acc = 0.f;
    for (int j = 0; j <= i; j++) acc += row[j] * x[XI(d, b, t0 + j, h) + p];
    const float* S0 = states + STI(d, b, c, h) + (i64)p * N;
    const float* ci = cm + BI(d, b, t, g);
    float inter = 0.f;
    for (int k = 0; k < N; k++) inter += S0[k] * ci[k];
    y[idx] = acc + expf(cum[CUMI(d, b, h, t)]) * inter;
  }
}

// ---- backward ---------------------------------------------------------------------------------

/** gS (B, nC, H, P, N): sum_i exp(cum_i) gy_i[p] C_i[n] per chunk (the entering state's gradient from its outputs) */
extern "C" __global__ void ssd_bwd_chunk_gstate(const float* gy, const float* cm, const float* cum, float* gS,
                                                SsdDims d) {
  const int P = d.headDim, N = d.dState, hpg = d.heads / d.groups;
  const i64 n = (i64)d.batch * d.nChunks * d.heads * P * N;
  FOR_EACH(idx, n) {
    const int nn = (int)(idx % N);
    const int p = (int)((idx / N) % P);
    const i64 bch = idx / ((i64)P * N);
    const int h = (int)(bch % d.heads);
    const int c = (int)((bch / d.heads) % d.nChunks);
    const int b = (int)(bch / ((i64)d.heads * d.nChunks));
    const int L = chunk_len(d, c), t0 = c * d.chunk, g = h / hpg;
    float acc = 0.f;
    for (int i = 0; i < L; i++)
      acc += expf(cum[CUMI(d, b, h, t0 + i)]) * gy[XI(d, b, t0 + i, h) + p] * cm[BI(d, b, t0 + i, g) + nn];
    gS[idx] = acc;
  }
}

/**
 * In place on gS: local terms become the gradient of the state leaving each chunk,
 * G_{c-1} = exp(cum_last(c)) G_c + local_c, G_{nC-1} = 0. One thread per (b, h, p, n).
 */
extern "C" __global__ void ssd_bwd_state_pass(float* gS, const float* cum, SsdDims d) {
  const i64 PN = (i64)d.headDim * d.dState;
  const i64 n = (i64)d.batch * d.heads * PN;
  FOR_EACH(idx, n) {
    const i64 e = idx % PN;
    const int h = (int)((idx / PN) % d.heads);
    const int b = (int)(idx / (PN * d.heads));
    float G = 0.f;
    for (int c = d.nChunks - 1; c >= 0; c--) {
      const i64 at = STI(d, b, c, h) + e;
      const float local = gS[at];
      gS[at] = G;
      const int L = chunk_len(d, c);
      G = expf(cum[CUMI(d, b, h, c * d.chunk + L - 1)]) * G + local;
    }
  }
}

/** gx (B, T, H, P): sum_{i>=j} M[i][j] gy_i + exp(cum_{L-1} - cum_j) (G B_j), G leaving the chunk */
extern "C" __global__ void ssd_bwd_dx(const float* gy, const float* bm, const float* cum, const float* M,
                                      const float* gS, float* gx, int accGx, SsdDims d) {
  const int P = d.headDim, N = d.dState, Q = d.chunk, hpg = d.heads / d.groups;
  const i64 n = (i64)d.batch * d.seqLen * d.heads * P;
  FOR_EACH(idx, n) {
    const int p = (int)(idx % P);
    const int h = (int)((idx / P) % d.heads);
    const i64 bt = idx / ((i64)P * d.heads);
    const int t = (int)(bt % d.seqLen);
    const int b = (int)(bt / d.seqLen);
    const int c = t / Q, j = t - c * Q, t0 = c * Q, g = h / hpg, L = chunk_len(d, c);
    const float* mat = M + MATI(d, b, h, c);
    float acc = 0.f;
    for (int i = j; i < L; i++) acc += mat[(i64)i * Q + j] * gy[XI(d, b, t0 + i, h) + p];
    const float* G = gS + STI(d, b, c, h) + (i64)p * N;
    const float* bj = bm + BI(d, b, t, g);
    float s = 0.f;
    for (int k = 0; k < N; k++) s += G[k] * bj[k];
    const float v = acc + expf(cum[CUMI(d, b, h, t0 + L - 1)] - cum[CUMI(d, b, h, t)]) * s;
    gx[idx] = accGx ? gx[idx] + v : v;  // accGx: added to x's other gradient
  }
}

/**
 * Per-head gradients of C and B, (B, T, H, N) (summed over the heads of a group afterwards):
 *   gC_i = sum_{j<=i} Dw[i][j] B_j + exp(cum_i) S0^T gy_i
 *   gB_j = sum_{i>=j} Dw[i][j] C_i + exp(cum_{L-1} - cum_j) G^T x_j
 * One thread per (b, t, h, n).
 */
extern "C" __global__ void ssd_bwd_dbc(const float* x, const float* gy, const float* bm, const float* cm,
                                       const float* cum, const float* Dw, const float* states, const float* gS,
                                       float* gBh, float* gCh, SsdDims d) {
  const int P = d.headDim, N = d.dState, Q = d.chunk, hpg = d.heads / d.groups;
  const i64 n = (i64)d.batch * d.seqLen * d.heads * N;
  FOR_EACH(idx, n) {
    const int nn = (int)(idx % N);
    const int h = (int)((idx / N) % d.heads);
    const i64 bt = idx / ((i64)N * d.heads);
    const int t = (int)(bt % d.seqLen);
    const int b = (int)(bt / d.seqLen);
    const int c = t / Q, k = t - c * Q, t0 = c * Q, g = h / hpg, L = chunk_len(d, c);
    const float* mat = Dw + MATI(d, b, h, c);
    // t as the query position i = k
    float accC = 0.f;
    for (int j = 0; j <= k; j++) accC += mat[(i64)k * Q + j] * bm[BI(d, b, t0 + j, g) + nn];
    const float* S0 = states + STI(d, b, c, h) + nn;
    const float* gi = gy + XI(d, b, t, h);
    float sc = 0.f;
    for (int p = 0; p < P; p++) sc += S0[(i64)p * N] * gi[p];
    gCh[idx] = accC + expf(cum[CUMI(d, b, h, t)]) * sc;
    // t as the key position j = k
    float accB = 0.f;
    for (int i = k; i < L; i++) accB += mat[(i64)i * Q + k] * cm[BI(d, b, t0 + i, g) + nn];
    const float* G = gS + STI(d, b, c, h) + nn;
    const float* xj = x + XI(d, b, t, h);
    float sb = 0.f;
    for (int p = 0; p < P; p++) sb += G[(i64)p * N] * xj[p];
    gBh[idx] = accB + expf(cum[CUMI(d, b, h, t0 + L - 1)] - cum[CUMI(d, b, h, t)]) * sb;
  }
}

/**
 * gLogA (B, T, H): one block per (chunk, head, batch); gcum (dynamic shared, Q floats) collects
 * the gradient of each cum_i, then a reverse cumulative sum turns it into the gradient of logA:
 *   gcum_i = sum_{j<=i} R[i][j] - sum_{i'>=i} R[i'][i] + exp(cum_i) gy_i . (S0 C_i)
 *            - w_i v_i + [i = L-1] (exp(cum_{L-1}) <G, S0> + sum_j w_j v_j)
 * with w_j = exp(cum_{L-1} - cum_j) and v_j = x_j . (G B_j).
 */
extern "C" __global__ void ssd_bwd_dlogA(const float* x, const float* gy, const float* bm, const float* cm,
                                         const float* cum, const float* R, const float* states, const float* gS,
                                         float* gLogA, SsdDims d) {
  extern __shared__ float gcum[];
  __shared__ float sh[32];
  const int c = blockIdx.x, h = blockIdx.y, b = blockIdx.z;
  const int P = d.headDim, N = d.dState, Q = d.chunk, g = h / (d.heads / d.groups);
  const int L = chunk_len(d, c), t0 = c * Q;
  const float* mat = R + MATI(d, b, h, c);
  const float* S0 = states + STI(d, b, c, h);
  const float* G = gS + STI(d, b, c, h);
  const float last = cum[CUMI(d, b, h, t0 + L - 1)];
  float wv = 0.f;  // this thread's share of sum_j w_j v_j
  for (int i = threadIdx.x; i < L; i += blockDim.x) {
    float acc = 0.f;
    for (int j = 0; j <= i; j++) acc += mat[(i64)i * Q + j];
    for (int ii = i; ii < L; ii++) acc -= mat[(i64)ii * Q + i];
    const float* ci = cm + BI(d, b, t0 + i, g);
    const float* bi = bm + BI(d, b, t0 + i, g);
    const float* gi = gy + XI(d, b, t0 + i, h);
    const float* xi = x + XI(d, b, t0 + i, h);
    float out = 0.f, v = 0.f;
    for (int p = 0; p < P; p++) {
      float sc = 0.f, gb = 0.f;
      for (int k = 0; k < N; k++) {
        sc += S0[(i64)p * N + k] * ci[k];
        gb += G[(i64)p * N + k] * bi[k];
      }
      out += gi[p] * sc;
      v += xi[p] * gb;
    }
    const float ci_ = cum[CUMI(d, b, h, t0 + i)];
    const float w = expf(last - ci_);
    acc += expf(ci_) * out - w * v;
    wv += w * v;
    gcum[i] = acc;
  }
  float inner = 0.f;
  for (i64 e = threadIdx.x; e < (i64)P * N; e += blockDim.x) inner += G[e] * S0[e];
  inner = block_sum(inner, sh);
  wv = block_sum(wv, sh);
  __syncthreads();
  if (threadIdx.x == 0) {
    gcum[L - 1] += expf(last) * inner + wv;
    float rev = 0.f;
    for (int i = L - 1; i >= 0; i--) {
      rev += gcum[i];
      gLogA[((i64)b * d.seqLen + t0 + i) * d.heads + h] = rev;
    }
  }
}

// ---- the materialized mixing matrix ----------------------------------------------------------

/**
 * out (B, H, T, T): out[t][s] = C_t . B_s * exp(sum_{k=s+1..t} logA_k) for s <= t, else 0.
 * One thread per column (b, h, s) walks down t, so writes are coalesced across s.
 */
extern "C" __global__ void mixer_fwd(const float* logA, const float* bm, const float* cm, float* out, SsdDims d) {
  const int T = d.seqLen, N = d.dState, hpg = d.heads / d.groups;
  const i64 n = (i64)d.batch * d.heads * T;
  FOR_EACH(idx, n) {
    const int s = (int)(idx % T);
    const int h = (int)((idx / T) % d.heads);
    const int b = (int)(idx / ((i64)T * d.heads));
    const int g = h / hpg;
    float* col = out + ((i64)b * d.heads + h) * T * T + s;
    const float* bs = bm + BI(d, b, s, g);
    float seg = 0.f;
    for (int t = 0; t < T; t++) {
      if (t < s) {
        col[(i64)t * T] = 0.f;
        continue;
      }
      if (t > s) seg += logA[((i64)b * T + t) * d.heads + h];
      const float* ct = cm + BI(d, b, t, g);
      float dot = 0.f;
      for (int k = 0; k < N; k++) dot += ct[k] * bs[k];
      col[(i64)t * T] = dot * expf(seg);
    }
  }
}

/**
 * For the mixer backward, on and below the diagonal: Rm[t][s] = gOut[t][s] exp(seg(t, s)) and
 * r[t][s] = Rm[t][s] (C_t . B_s) (= gOut * M, the gradient that flows into the segment sums).
 * Entries above the diagonal are not written. One thread per column (b, h, s).
 */
extern "C" __global__ void mixer_bwd_r(const float* logA, const float* bm, const float* cm, const float* gOut,
                                       float* Rm, float* r, SsdDims d) {
  const int T = d.seqLen, N = d.dState, hpg = d.heads / d.groups;
  const i64 n = (i64)d.batch * d.heads * T;
  FOR_EACH(idx, n) {
    const int s = (int)(idx % T);
    const int h = (int)((idx / T) % d.heads);
    const int b = (int)(idx / ((i64)T * d.heads));
    const int g = h / hpg;
    const i64 base = ((i64)b * d.heads + h) * T * T + s;
    const float* bs = bm + BI(d, b, s, g);
    float seg = 0.f;
    for (int t = s; t < T; t++) {
      if (t > s) seg += logA[((i64)b * T + t) * d.heads + h];
      const float* ct = cm + BI(d, b, t, g);
      float dot = 0.f;
      for (int k = 0; k < N; k++) dot += ct[k] * bs[k];
      const float v = gOut[base + (i64)t * T] * expf(seg);
      Rm[base + (i64)t * T] = v;
      r[base + (i64)t * T] = v * dot;
    }
  }
}

/**
 * gC (B, T, G, N) = sum over the group's heads and s <= t of Rm[t][s] B_s, and
 * gB (B, T, G, N) = sum over the group's heads and t >= s of Rm[t][s] C_t. One thread per entry.
 */
extern "C" __global__ void mixer_bwd_dbc(const float* bm, const float* cm, const float* Rm, float* gB, float* gC,
                                         SsdDims d) {
  const int T = d.seqLen, N = d.dState, G = d.groups, hpg = d.heads / d.groups;
  const i64 n = (i64)d.batch * T * G * N;
  FOR_EACH(idx, n) {
    const int nn = (int)(idx % N);
    const int g = (int)((idx / N) % G);
    const i64 bt = idx / ((i64)N * G);
    const int t = (int)(bt % T);
    const int b = (int)(bt / T);
    float accC = 0.f, accB = 0.f;
    for (int hh = 0; hh < hpg; hh++) {
      const int h = g * hpg + hh;
      const float* mat = Rm + ((i64)b * d.heads + h) * T * T;
      for (int s = 0; s <= t; s++) accC += mat[(i64)t * T + s] * bm[BI(d, b, s, g) + nn];
      for (int u = t; u < T; u++) accB += mat[(i64)u * T + t] * cm[BI(d, b, u, g) + nn];
    }
    gC[idx] = accC;
    gB[idx] = accB;
  }
}
