// Sequence kernels: the causal depthwise conv1d of the Mamba mixer (with backward) and the
// rotary position embedding.
#include "common.cuh"

#define MAX_CONV_K 16

// The three conv kernels walk runs of CONV_RUN time steps per (batch, channel) with the last K
// inputs in registers, so each value is read from memory once; neighbouring threads take
// neighbouring channels (coalesced). Each comes as a template over the kernel size: KC = 4 (the
// Mamba default) is fully unrolled in registers, KC = MAX_CONV_K takes any k <= 16 at run time.
#define CONV_RUN 32
// The walks load CONV_PF steps ahead (a register array) before using any of them
#define CONV_PF 8

/**
 * x (B, T, ldx) read on its first C columns (ldx = C: dense; more: a column window of a wider
 * matrix, the pointer already at the window), out (B, T, C), weight (C, K), bias (C) | null:
 * out[t] = bias + sum_j w[j] x[t - (K-1) + j]
 */
template <int KC>
__device__ void conv1d_fwd(const float* x, i64 ldx, const float* w, const float* bias, float* out, i64 batch,
                           int t, int c, int kRun, u16* xk = nullptr) {
  const int k = KC == MAX_CONV_K ? kRun : KC;
  const int runs = (t + CONV_RUN - 1) / CONV_RUN;
  const i64 n = batch * runs * c;
  FOR_EACH(i, n) {
    const int ch = (int)(i % c);
    const i64 br = i / c;
    const int s0 = (int)(br % runs) * CONV_RUN;
    const i64 base = (br / runs) * t * c + ch;  // (b, 0, ch)
    const i64 xbase = (br / runs) * t * ldx + ch;
    float wr[KC], win[KC];
#pragma unroll
    for (int j = 0; j < KC; j++) {
      wr[j] = j < k ? w[ch * k + j] : 0.f;
      const int src = s0 - (k - 1) + j;
      win[j] = j < k - 1 && src >= 0 ? x[xbase + (i64)src * ldx] : 0.f;
    }
    const float b0 = bias ? bias[ch] : 0.f;
    const int s1 = s0 + CONV_RUN < t ? s0 + CONV_RUN : t;
    for (int sb = s0; sb < s1; sb += CONV_PF) {
      // CONV_PF loads in flight per thread before any is used (the walk is latency-bound otherwise)
      float xv[CONV_PF];
#pragma unroll
      for (int u = 0; u < CONV_PF; u++) xv[u] = sb + u < s1 ? x[xbase + (i64)(sb + u) * ldx] : 0.f;
#pragma unroll
      for (int u = 0; u < CONV_PF; u++) {
        const int s = sb + u;
        if (s >= s1) break;
        const float xs = xv[u];
        if (xk) xk[base + (i64)s * c] = f32_to_bf16(xs);  // the bf16 copy the backward reads
        float acc = b0;
#pragma unroll
        for (int j = 0; j < KC; j++) {
          if (j == k - 1) win[j] = xs;
          if (j < k) acc += wr[j] * win[j];
        }
        out[base + (i64)s * c] = acc;
#pragma unroll
        for (int j = 0; j + 1 < KC; j++)
          if (j < k - 1) win[j] = win[j + 1];
      }
    }
  }
}

/** gx (B, T, C): gx[s] = sum_j gy[s + (K-1) - j] w[j] over the outputs that read x[s] */
template <int KC>
__device__ void conv1d_bwd_x(const float* w, const float* gy, float* gx, i64 batch, int t, int c, int kRun) {
  const int k = KC == MAX_CONV_K ? kRun : KC;
  const int runs = (t + CONV_RUN - 1) / CONV_RUN;
  const i64 n = batch * runs * c;
  FOR_EACH(i, n) {
    const int ch = (int)(i % c);
    const i64 br = i / c;
    const int s0 = (int)(br % runs) * CONV_RUN;
    const i64 base = (br / runs) * t * c + ch;
    // ahead[j] = gy[s + j]; output s + j reads x[s] through weight k - 1 - j, kept as wrev[j]
    float wrev[KC], ahead[KC];
#pragma unroll
    for (int j = 0; j < KC; j++) {
      wrev[j] = j < k ? w[ch * k + (k - 1 - j)] : 0.f;
      const int dst = s0 + j;
      ahead[j] = j < k - 1 && dst < t ? gy[base + (i64)dst * c] : 0.f;
    }
    const int s1 = s0 + CONV_RUN < t ? s0 + CONV_RUN : t;
    for (int s = s0; s < s1; s++) {
      const int far = s + k - 1;
      const float g = far < t ? gy[base + (i64)far * c] : 0.f;
      float acc = 0.f;
#pragma unroll
      for (int j = 0; j < KC; j++) {
        if (j == k - 1) ahead[j] = g;
        if (j < k) acc += ahead[j] * wrev[j];
      }
      gx[base + (i64)s * c] = acc;
#pragma unroll
      for (int j = 0; j + 1 < KC; j++)
        if (j < k - 1) ahead[j] = ahead[j + 1];
    }
  }
}

/**
 * Partial weight and bias gradients: block b of the grid takes the (batch * T) rows
 * [b * rowsPerBlock, ...) and writes pw (gridDim.x, C, K) and pb (gridDim.x, C) | null;
 * the host sums them over blocks. Threads loop over channels.
 */
__device__ __forceinline__ float conv_x(const float* x, i64 i) { return x[i]; }
__device__ __forceinline__ float conv_x(const u16* x, i64 i) { return bf16_to_f32(x[i]); }

template <int KC, typename TX>
__device__ void conv1d_bwd_w(const TX* x, const float* gy, float* pw, float* pb, i64 batch, int t, int c,
                             int kRun, i64 rowsPerBlock) {
  const int k = KC == MAX_CONV_K ? kRun : KC;
  const i64 rows = batch * t;
  const i64 r0 = (i64)blockIdx.x * rowsPerBlock;
  const i64 r1 = r0 + rowsPerBlock < rows ? r0 + rowsPerBlock : rows;
  const int sStart = (int)(r0 % t);
  for (int ch = threadIdx.x; ch < c; ch += blockDim.x) {
    float accW[KC], win[KC];
#pragma unroll
    for (int j = 0; j < KC; j++) {
      accW[j] = 0.f;
      // the inputs before the first row, within its sequence
      const int back = (k - 1) - j;
      win[j] = j < k - 1 && sStart - back >= 0 ? conv_x(x, (r0 - back) * c + ch) : 0.f;
    }
    float accB = 0.f;
    int s = sStart;
    for (i64 r = r0; r < r1; r++, s++) {
      if (s == t) {  // a new sequence: nothing before it
        s = 0;
#pragma unroll
        for (int j = 0; j < KC; j++) win[j] = 0.f;
      }
      const float g = gy[r * c + ch];
      const float xr = conv_x(x, r * c + ch);
      accB += g;
#pragma unroll
      for (int j = 0; j < KC; j++) {
        if (j == k - 1) win[j] = xr;
        if (j < k) accW[j] += g * win[j];
      }
#pragma unroll
      for (int j = 0; j + 1 < KC; j++)
        if (j < k - 1) win[j] = win[j + 1];
    }
#pragma unroll
    for (int j = 0; j < KC; j++)
      if (j < k) pw[((i64)blockIdx.x * c + ch) * k + j] = accW[j];
    if (pb) pb[(i64)blockIdx.x * c + ch] = accB;
  }
}

// any kernel size up to MAX_CONV_K, and the unrolled kernel size 4
extern "C" __global__ void conv1d_f32(const float* x, const float* w, const float* bias, float* out, i64 batch,
                                      int t, int c, int k) {
  conv1d_fwd<MAX_CONV_K>(x, c, w, bias, out, batch, t, c, k);
}
extern "C" __global__ void conv1d_backward_x_f32(const float* w, const float* gy, float* gx, i64 batch, int t,
                                                 int c, int k) {
  conv1d_bwd_x<MAX_CONV_K>(w, gy, gx, batch, t, c, k);
}
extern "C" __global__ void conv1d_backward_w_f32(const float* x, const float* gy, float* pw, float* pb, i64 batch,
                                                 int t, int c, int k, i64 rowsPerBlock) {
  conv1d_bwd_w<MAX_CONV_K>(x, gy, pw, pb, batch, t, c, k, rowsPerBlock);
}
extern "C" __global__ void conv1d_k4_f32(const float* x, const float* w, const float* bias, float* out, i64 batch,
                                      int t, int c, int k) {
  conv1d_fwd<4>(x, c, w, bias, out, batch, t, c, k);
}
extern "C" __global__ void conv1d_backward_x_k4_f32(const float* w, const float* gy, float* gx, i64 batch, int t,
                                                 int c, int k) {
  conv1d_bwd_x<4>(w, gy, gx, batch, t, c, k);
}
extern "C" __global__ void conv1d_backward_w_k4_f32(const float* x, const float* gy, float* pw, float* pb, i64 batch,
                                                 int t, int c, int k, i64 rowsPerBlock) {
  conv1d_bwd_w<4>(x, gy, pw, pb, batch, t, c, k, rowsPerBlock);
}

// under autocast: the forward also writes a bf16 copy of x (xk), which the weight gradient then
// reads instead of the f32 input (half the bytes kept for backward)
extern "C" __global__ void conv1d_keep_f32(const float* x, const float* w, const float* bias, float* out, u16* xk,
                                           i64 batch, int t, int c, int k) {
  conv1d_fwd<MAX_CONV_K>(x, c, w, bias, out, batch, t, c, k, xk);
}
extern "C" __global__ void conv1d_k4_keep_f32(const float* x, const float* w, const float* bias, float* out, u16* xk,
                                              i64 batch, int t, int c, int k) {
  conv1d_fwd<4>(x, c, w, bias, out, batch, t, c, k, xk);
}
extern "C" __global__ void conv1d_backward_w_bf16x(const u16* x, const float* gy, float* pw, float* pb, i64 batch,
                                                   int t, int c, int k, i64 rowsPerBlock) {
  conv1d_bwd_w<MAX_CONV_K>(x, gy, pw, pb, batch, t, c, k, rowsPerBlock);
}
extern "C" __global__ void conv1d_backward_w_k4_bf16x(const u16* x, const float* gy, float* pw, float* pb, i64 batch,
                                                      int t, int c, int k, i64 rowsPerBlock) {
  conv1d_bwd_w<4>(x, gy, pw, pb, batch, t, c, k, rowsPerBlock);
}

// a column window of a wider matrix read in place (x at the window, rows ldx apart; xk null or the
// dense bf16 copy), and its backward (gx into the same window of a gradient buffer, rows ldg
// apart, added when acc; the weight gradient reading the window, or the bf16 copy through the
// kernels above)
extern "C" __global__ void conv1d_win_f32(const float* x, i64 ldx, const float* w, const float* bias, float* out,
                                          u16* xk, i64 batch, int t, int c, int k) {
  conv1d_fwd<MAX_CONV_K>(x, ldx, w, bias, out, batch, t, c, k, xk);
}
extern "C" __global__ void conv1d_k4_win_f32(const float* x, i64 ldx, const float* w, const float* bias,
                                             float* out, u16* xk, i64 batch, int t, int c, int k) {
  conv1d_fwd<4>(x, ldx, w, bias, out, batch, t, c, k, xk);
}
/**
 * The windowed conv's backward in one pass over gy (B, T, C): block (b, y) takes the rows
 * [b * rowsPerBlock, ...) of its share of the channels (one per thread where the grid allows) and
 * walks them in order with the last K inputs x and the next K gradients gy in registers, writing
 * gx (rows ldg apart, added when acc; the sum in conv1d_bwd_x's order) and the partial weight and
 * bias gradients pw (gridDim.x, C, K), pb (gridDim.x, C) | null (conv1d_bwd_w's). x is the window
 * (rows ldx apart) or the dense bf16 copy (ldx = C).
 */
template <int KC, typename TX>
__device__ void conv1d_bwd_xw(const TX* x, i64 ldx, const float* w, const float* gy, float* gx, i64 ldg, int acc,
                              float* pw, float* pb, i64 batch, int t, int c, int kRun, i64 rowsPerBlock) {
  const int k = KC == MAX_CONV_K ? kRun : KC;
  const i64 rows = batch * t;
  const i64 r0 = (i64)blockIdx.x * rowsPerBlock;
  const i64 r1 = r0 + rowsPerBlock < rows ? r0 + rowsPerBlock : rows;
  const int sStart = (int)(r0 % t);
  // gridDim.y splits the channels: one channel per thread where the grid allows
  for (int ch = blockIdx.y * blockDim.x + threadIdx.x; ch < c; ch += blockDim.x * gridDim.y) {
    // wrev[j]: the weight through which output s + j reads x[s]; ahead[j] = gy[s + j]
    float wrev[KC], accW[KC], win[KC], ahead[KC];
#pragma unroll
    for (int j = 0; j < KC; j++) {
      wrev[j] = j < k ? w[ch * k + (k - 1 - j)] : 0.f;
      accW[j] = 0.f;
      const int back = (k - 1) - j;
      win[j] = j < k - 1 && sStart - back >= 0 ? conv_x(x, (r0 - back) * ldx + ch) : 0.f;
      ahead[j] = j < k - 1 && sStart + j < t ? gy[(r0 + j) * c + ch] : 0.f;
    }
    float accB = 0.f;
    int s = sStart;
    for (i64 rb = r0; rb < r1; rb += CONV_PF) {
      // CONV_PF rows' loads in flight before any is used: gy k - 1 rows ahead (0 past the
      // sequence's end), x, and gx where it is added to
      float farv[CONV_PF], xv[CONV_PF], gxv[CONV_PF];
      int su = s;
#pragma unroll
      for (int u = 0; u < CONV_PF; u++) {
        const i64 r = rb + u;
        if (su == t) su = 0;
        const bool in = r < r1;
        farv[u] = in && su + k - 1 < t ? gy[(r + k - 1) * c + ch] : 0.f;
        xv[u] = in ? conv_x(x, r * ldx + ch) : 0.f;
        gxv[u] = in && acc ? gx[r * ldg + ch] : 0.f;
        su++;
      }
#pragma unroll
      for (int u = 0; u < CONV_PF; u++, s++) {
        const i64 r = rb + u;
        if (r >= r1) break;
        if (s == t) {  // a new sequence: nothing before it, its own gradients ahead
          s = 0;
#pragma unroll
          for (int j = 0; j < KC; j++) {
            win[j] = 0.f;
            ahead[j] = j < k - 1 && j < t ? gy[(r + j) * c + ch] : 0.f;
          }
        }
        const float far = farv[u];
        const float xr = xv[u];
        float v = 0.f;
#pragma unroll
        for (int j = 0; j < KC; j++) {
          if (j == k - 1) {
            ahead[j] = far;
            win[j] = xr;
          }
          if (j < k) v += ahead[j] * wrev[j];
        }
        const float g = ahead[0];
        accB += g;
#pragma unroll
        for (int j = 0; j < KC; j++)
          if (j < k) accW[j] += g * win[j];
        gx[r * ldg + ch] = acc ? gxv[u] + v : v;
#pragma unroll
        for (int j = 0; j + 1 < KC; j++)
          if (j < k - 1) {
            win[j] = win[j + 1];
            ahead[j] = ahead[j + 1];
          }
      }
    }
#pragma unroll
    for (int j = 0; j < KC; j++)
      if (j < k) pw[((i64)blockIdx.x * c + ch) * k + j] = accW[j];
    if (pb) pb[(i64)blockIdx.x * c + ch] = accB;
  }
}

extern "C" __global__ void conv1d_backward_win_f32(const float* x, i64 ldx, const float* w, const float* gy,
                                                   float* gx, i64 ldg, int acc, float* pw, float* pb, i64 batch,
                                                   int t, int c, int k, i64 rowsPerBlock) {
  conv1d_bwd_xw<MAX_CONV_K>(x, ldx, w, gy, gx, ldg, acc, pw, pb, batch, t, c, k, rowsPerBlock);
}
extern "C" __global__ void conv1d_backward_k4_win_f32(const float* x, i64 ldx, const float* w, const float* gy,
                                                      float* gx, i64 ldg, int acc, float* pw, float* pb, i64 batch,
                                                      int t, int c, int k, i64 rowsPerBlock) {
  conv1d_bwd_xw<4>(x, ldx, w, gy, gx, ldg, acc, pw, pb, batch, t, c, k, rowsPerBlock);
}
extern "C" __global__ void conv1d_backward_win_bf16x(const u16* x, i64 ldx, const float* w, const float* gy,
                                                     float* gx, i64 ldg, int acc, float* pw, float* pb, i64 batch,
                                                     int t, int c, int k, i64 rowsPerBlock) {
  conv1d_bwd_xw<MAX_CONV_K>(x, ldx, w, gy, gx, ldg, acc, pw, pb, batch, t, c, k, rowsPerBlock);
}
extern "C" __global__ void conv1d_backward_k4_win_bf16x(const u16* x, i64 ldx, const float* w, const float* gy,
                                                        float* gx, i64 ldg, int acc, float* pw, float* pb, i64 batch,
                                                        int t, int c, int k, i64 rowsPerBlock) {
  conv1d_bwd_xw<4>(x, ldx, w, gy, gx, ldg, acc, pw, pb, batch, t, c, k, rowsPerBlock);
}

/**
 * One decoding step of the discrete Mamba-2 mixer for block (h, b): the conv outputs of head h's
 * x channels and of its group's B and C channels (from the conv state and the new inputs xbc,
 * into shared memory), then h = alpha h + x B^T in place on ssm and y = h C + D x, one warp per
 * row p of the state. The conv state is read here and pushed by conv_state_push_f32 afterwards
 * (the groups' B and C channels are read by several blocks).
 */
extern "C" __global__ void ssm_step_f32(const float* xbc, const float* convState, const float* convW,
                                        const float* convBias, const float* a, const float* D, float* ssm, float* y,
                                        int heads, int groups, int P, int N, int K, int act) {
  // block (h, b, z) takes rows [p0, p0 + pn) of head h's state: gridDim.z splits the rows so a
  // step of few sequences still fills the device (decoding at batch 1 is otherwise 32 blocks)
  extern __shared__ float sh[];  // x (pn), B (N), C (N)
  const int h = blockIdx.x;
  const i64 b = blockIdx.y;
  const int rowsPer = (P + gridDim.z - 1) / gridDim.z;
  const int p0 = blockIdx.z * rowsPer;
  const int pn = min(rowsPer, P - p0);
  if (pn <= 0) return;
  const int C = heads * P + 2 * groups * N;
  const int g = h / (heads / groups);
  const float* st = convState + b * (K - 1) * C;
  for (int i = threadIdx.x; i < pn + 2 * N; i += blockDim.x) {
    const int ch = i < pn       ? h * P + p0 + i
                   : i < pn + N ? heads * P + g * N + (i - pn)
                                : heads * P + groups * N + g * N + (i - pn - N);
    float acc = convBias ? convBias[ch] : 0.f;
    for (int j = 0; j < K - 1; j++) acc += convW[ch * K + j] * st[(i64)j * C + ch];
    acc += convW[ch * K + K - 1] * xbc[b * C + ch];
    if (act) acc = acc / (1.f + expf(-acc));
    sh[i] = acc;
  }
  __syncthreads();
  const float av = a[b * heads + h];
  const float alpha = expf(-softplus(av));
  const float d = D[h];
  float* hs = ssm + ((b * heads + h) * (i64)P + p0) * N;
  const float* bs = sh + pn;
  const float* cs = sh + pn + N;
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, warps = blockDim.x >> 5;
  for (int p = warp; p < pn; p += warps) {
    const float xp = sh[p];
    float acc = 0.f;
    for (int n = lane; n < N; n += 32) {
      const float v = alpha * hs[(i64)p * N + n] + xp * bs[n];
      hs[(i64)p * N + n] = v;
      acc += v * cs[n];
    }
    acc = warp_sum(acc);
    if (lane == 0) y[(b * heads + h) * (i64)P + p0 + p] = acc + d * xp;
  }
}

/** convState (B, K - 1, C): drop the oldest input of every channel and append xbc (B, C) */
extern "C" __global__ void conv_state_push_f32(float* convState, const float* xbc, i64 batch, int K, int C) {
  const i64 n = batch * C;
  FOR_EACH(i, n) {
    const i64 b = i / C;
    const int ch = (int)(i - b * C);
    float* s = convState + b * (K - 1) * C + ch;
    for (int j = 0; j + 1 < K - 1; j++) s[(i64)j * C] = s[(i64)(j + 1) * C];
    if (K > 1) s[(i64)(K - 2) * C] = xbc[i];
  }
}

/**
 * The rotation angles of rope as (cos, sin) pairs, table (seqLen, rotaryDim / 2, 2), computed as
 * the CPU backend does (inverse frequency and position * frequency rounded to f32, cos/sin of
 * that in double rounded to f32), so results match it to the last bit up to the libm's
 * cos/sin/pow. One thread per (position, pair); rope_f32 then only reads the table.
 */
extern "C" __global__ void rope_table_f32(float* table, int seqLen, int rotaryDim, double theta,
                                          int positionOffset) {
  const int half = rotaryDim / 2;
  const i64 n = (i64)seqLen * half;
  FOR_EACH(i, n) {
    const int s = (int)(i / half);
    const int kk = (int)(i - (i64)s * half);
    const float f = (float)((double)(2 * kk) / (double)rotaryDim);
    const float invFreq = (float)(1.0 / (double)(float)pow(theta, (double)f));
    const float angle = (float)((double)(positionOffset + s) * (double)invFreq);
    table[2 * i] = (float)cos((double)angle);
    table[2 * i + 1] = (float)sin((double)angle);
  }
}

/**
 * Rotary embedding on x, out (B, T, H, D) (out may alias x) with the angles of rope_table_f32;
 * the rotation runs in double. One thread per rotated pair or pass-through dimension.
 */
extern "C" __global__ void rope_f32(const float* x, float* out, const float* table, i64 batch, int seqLen,
                                    int heads, int headDim, int rotaryDim, int interleaved, int inverse) {
  const int half = rotaryDim / 2;
  const int per = half + headDim - rotaryDim;
  const i64 n = batch * seqLen * heads * per;
  FOR_EACH(i, n) {
    const i64 row = i / per;
    const int kk = (int)(i - row * per);
    const int s = (int)((row / heads) % seqLen);
    const i64 base = row * headDim;
    if (kk < half) {
      const float2 cs = ((const float2*)table)[(i64)s * half + kk];
      const double c = (double)cs.x;
      const double sn = inverse ? -(double)cs.y : (double)cs.y;
      const i64 ia = interleaved ? base + 2 * kk : base + kk;
      const i64 ib = interleaved ? base + 2 * kk + 1 : base + kk + half;
      const double a = x[ia], b = x[ib];
      out[ia] = (float)(a * c - b * sn);
      out[ib] = (float)(b * c + a * sn);
    } else {
      const i64 d = base + rotaryDim + (kk - half);
      out[d] = x[d];
    }
  }
}

// ---- the mixer's output gate with z read in place (a column window of in_proj's output) ----------
// The arithmetic of silu_gate_d_f32 / silu_gate_d_backward_f32 (elementwise.cu), with z's rows ldz
// apart and z's gradient written into its window of in_proj's output gradient.

// gate_store and gate_load test t == 0 first where common.cuh's store_any and load_any test the
// 16-bit codes first: the same values for the codes 0, 1, 2 that the host passes, but compiled to
// different code (checked against the PTX), so they stay apart while these kernels are unchanged.

/** v in storage t (0 f32, 1 bf16, 2 f16) at element i */
__device__ __forceinline__ void gate_store(void* p, int t, i64 i, float v) {
  if (t == 0)
    ((float*)p)[i] = v;
  else
    ((u16*)p)[i] = t == 1 ? f32_to_bf16(v) : f32_to_f16(v);
}

/** v[0..3] at elements i..i+3 (i a multiple of 4) in storage t, in one 16- or 8-byte store */
__device__ __forceinline__ void gate_store4(void* p, int t, i64 i, const float* v) {
  if (t == 0) {
    *(float4*)((float*)p + i) = make_float4(v[0], v[1], v[2], v[3]);
    return;
  }
  u32 h[4];
#pragma unroll
  for (int k = 0; k < 4; k++) h[k] = to16(v[k], t);
  *(uint2*)((u16*)p + i) = make_uint2(h[0] | (h[1] << 16), h[2] | (h[3] << 16));
}

__device__ __forceinline__ float gate_load(const void* p, int t, i64 i) {
  if (t == 0) return ((const float*)p)[i];
  return from16(((const u16*)p)[i], t);
}

/**
 * y, x, out (rows, cols) dense, z (rows, ldz) on its first cols columns (the pointer at the
 * window), D (cols / headDim), bias (cols): v = y + D[col / headDim] x, out = v silu(z + bias) in
 * storage ot; with keep also y and z rounded to ot (dense yk, zk) for the backward. V = 4: four
 * columns per thread (cols, ldz and the window's offset multiples of 4: 16-byte loads).
 */
template <int V>
__device__ void gate_win(const float* y, const float* x, const float* D, const float* z, i64 ldz, const float* bias,
                         void* out, int ot, u16* yk, u16* zk, int keep, i64 rows, int cols, int headDim) {
  const int cv = cols / V;
  const i64 n = rows * cv;
  FOR_EACH(q, n) {
    const i64 r = q / cv;
    const int c0 = (int)(q - r * cv) * V;
    const i64 i0 = r * cols + c0;
    float zv[V], yv[V], xv[V];
    if (V == 4) {
      const float4 z4 = *(const float4*)(z + r * ldz + c0);
      const float4 y4 = *(const float4*)(y + i0);
      const float4 x4 = *(const float4*)(x + i0);
      zv[0] = z4.x, zv[1] = z4.y, zv[2] = z4.z, zv[3] = z4.w;
      yv[0] = y4.x, yv[1] = y4.y, yv[2] = y4.z, yv[3] = y4.w;
      xv[0] = x4.x, xv[1] = x4.y, xv[2] = x4.z, xv[3] = x4.w;
    } else {
#pragma unroll
      for (int k = 0; k < V; k++) {
        zv[k] = z[r * ldz + c0 + k];
        yv[k] = y[i0 + k];
        xv[k] = x[i0 + k];
      }
    }
    float ov[V];
#pragma unroll
    for (int k = 0; k < V; k++) {
      const int c = c0 + k;
      const float u = zv[k] + bias[c];
      const float v = yv[k] + D[c / headDim] * xv[k];
      ov[k] = v * u * sigmoid(u);
    }
    if (V == 4) {
      // one store per output (four scattered 2-byte stores per thread cost as much as the loads)
      gate_store4(out, ot, i0, ov);
      if (keep) {
        gate_store4(yk, ot, i0, yv);
        gate_store4(zk, ot, i0, zv);
      }
    } else {
#pragma unroll
      for (int k = 0; k < V; k++) {
        gate_store(out, ot, i0 + k, ov[k]);
        if (keep) {
          gate_store(yk, ot, i0 + k, yv[k]);
          gate_store(zk, ot, i0 + k, zv[k]);
        }
      }
    }
  }
}

extern "C" __global__ void silu_gate_d_win_f32(const float* y, const float* x, const float* D, const float* z, i64 ldz,
                                               const float* bias, void* out, int ot, u16* yk, u16* zk, int keep,
                                               i64 rows, int cols, int headDim) {
  gate_win<1>(y, x, D, z, ldz, bias, out, ot, yk, zk, keep, rows, cols, headDim);
}
extern "C" __global__ void silu_gate_d_win_x4(const float* y, const float* x, const float* D, const float* z, i64 ldz,
                                              const float* bias, void* out, int ot, u16* yk, u16* zk, int keep,
                                              i64 rows, int cols, int headDim) {
  gate_win<4>(y, x, D, z, ldz, bias, out, ot, yk, zk, keep, rows, cols, headDim);
}

/**
 * Its backward, one thread per column over a band of rowsPerBlock rows (blockIdx.y), as
 * silu_gate_d_backward_f32: gy = g silu(u), gx = gy D, gz = g v silu'(u) into gz's window (rows
 * ldgz apart; added to what is there when acc), partialD[band, col] = sum of gy x and, when
 * partialB is given, partialB[band, col] = sum of gz (z's bias gradient). y and z dense, in
 * storage st (f32, or the 16-bit copies the forward kept).
 */
extern "C" __global__ void silu_gate_d_backward_win_f32(const void* y, const float* x, const float* D, const void* z,
                                                        int st, const float* bias, const float* g, float* gy,
                                                        float* gx, float* gz, i64 ldgz, int acc, float* partialD,
                                                        float* partialB, i64 rows, int cols, int headDim,
                                                        int rowsPerBlock) {
  const int c = blockIdx.x * blockDim.x + threadIdx.x;
  if (c >= cols) return;
  const float b = bias[c];
  const float d = D[c / headDim];
  const i64 r0 = (i64)blockIdx.y * rowsPerBlock;
  const i64 r1 = min(rows, r0 + rowsPerBlock);
  float accD = 0.f, accB = 0.f;
  for (i64 r = r0; r < r1; r++) {
    const i64 i = r * cols + c;
    const float u = gate_load(z, st, i) + b;
    const float s = sigmoid(u);
    const float xi = x[i];
    const float v = gate_load(y, st, i) + d * xi;
    const float gi = g[i];
    const float gyi = gi * u * s;
    gy[i] = gyi;
    gx[i] = gyi * d;
    const float gzi = gi * v * s * (1.f + u * (1.f - s));
    float* o = gz + r * ldgz + c;
    *o = acc ? *o + gzi : gzi;
    accD += gyi * xi;
    accB += gzi;
  }
  partialD[(i64)blockIdx.y * cols + c] = accD;
  if (partialB) partialB[(i64)blockIdx.y * cols + c] = accB;
}

// ---- the mixer's log decay read in place: log alpha = -softplus(a), a a column window of in_proj's output ----

/**
 * out (rows, cols) = -softplus(a) and, when aKeep is given, aKeep (rows, cols) = a (the dense copy
 * the backward reads); a the window, rows lda apart. The arithmetic of unary softplus, then neg.
 */
extern "C" __global__ void log_decay_win_f32(const float* a, i64 lda, float* out, float* aKeep, i64 rows, int cols) {
  const i64 n = rows * cols;
  FOR_EACH(i, n) {
    const i64 r = i / cols;
    const float x = a[r * lda + (i - r * cols)];
    out[i] = -softplus(x);
    if (aKeep) aKeep[i] = x;
  }
}

/** ga (the window, rows lga apart; added to when acc) = (-g) sigmoid(a), a and g dense (rows, cols) */
extern "C" __global__ void log_decay_backward_win_f32(const float* a, const float* g, float* ga, i64 lga, int acc,
                                                      i64 rows, int cols) {
  const i64 n = rows * cols;
  FOR_EACH(i, n) {
    const i64 r = i / cols;
    const float v = -g[i] * sigmoid(a[i]);
    float* o = ga + r * lga + (i - r * cols);
    *o = acc ? *o + v : v;
  }
}
