// Fused kernels of the recurrent student's decoding step (one token per sequence, no gradients):
// the same arithmetic as the kernels they replace, fewer launches and graph nodes per layer.
//
//   layernorm_to16    LayerNorm (as rows.cu's layernorm_f32) stored in 16 bits: the input of the
//                     next products, without the separate autocast cast
//   ssm_step_gate     the mixer's step (as sequence.cu's ssm_step_f32) reading x, B, C, z and a
//                     straight from the in_proj output row (no split copies), with the output
//                     gate (y + D x) * silu(z + z_bias) applied and stored in out's dtype
//   conv_push_rows    the conv state push of that step, reading the new inputs from the in_proj
//                     output row

#include "common.cuh"

/**
 * x (rows, cols) f32, w, b (cols) f32 | null -> out (rows, cols) in dtype ot: the values of
 * layernorm_f32 (same sums, same expression), rounded once. grid = rows, blockDim as rowThreads.
 */
extern "C" __global__ void layernorm_to16(const float* x, const float* w, const float* b, void* out, int ot, int cols,
                                          float eps) {
  __shared__ float sh[32];
  const i64 base = (i64)blockIdx.x * cols;
  // up to LN_HELD values per thread stay in registers (read once: a decoding step's row of 2048
  // with 512 threads); the sums run in layernorm_f32's order either way
  constexpr int LN_HELD = 8;
  const bool held = cols <= LN_HELD * (int)blockDim.x;
  float v[LN_HELD];
  float acc = 0.f;
  if (held) {
#pragma unroll
    for (int q = 0; q < LN_HELD; q++) {
      const int j = threadIdx.x + q * blockDim.x;
      v[q] = j < cols ? x[base + j] : 0.f;
    }
#pragma unroll
    for (int q = 0; q < LN_HELD; q++)
      if (threadIdx.x + q * blockDim.x < cols) acc += v[q];
  } else {
    for (int j = threadIdx.x; j < cols; j += blockDim.x) acc += x[base + j];
  }
  const float m = block_sum(acc, sh) / cols;
  acc = 0.f;
  if (held) {
#pragma unroll
    for (int q = 0; q < LN_HELD; q++)
      if (threadIdx.x + q * blockDim.x < cols) {
        const float d = v[q] - m;
        acc += d * d;
      }
  } else {
    for (int j = threadIdx.x; j < cols; j += blockDim.x) {
      const float d = x[base + j] - m;
      acc += d * d;
    }
  }
  const float rs = 1.f / sqrtf(block_sum(acc, sh) / cols + eps);
  if (held) {
#pragma unroll
    for (int q = 0; q < LN_HELD; q++) {
      const int j = threadIdx.x + q * blockDim.x;
      if (j < cols) store_dtype(out, ot, base + j, (v[q] - m) * rs * w[j] + (b ? b[j] : 0.f));
    }
  } else {
    for (int j = threadIdx.x; j < cols; j += blockDim.x)
      store_dtype(out, ot, base + j, (x[base + j] - m) * rs * w[j] + (b ? b[j] : 0.f));
  }
}

/**
 * One decoding step of the discrete Mamba-2 mixer with its output gate, for sequence b and rows
 * [p0, p0 + pn) of head h (block (h, b, z), gridDim.z splitting each head's P rows as ssm_step_f32).
 * zx (B, rowLen) is in_proj's output: the conv inputs xbc (C = heads P + 2 groups N channels) at
 * column xOff, z (heads P) at zOff, a (heads) at aOff. convState (B, K - 1, C) is read here and
 * pushed by conv_push_rows afterwards, or here when convPush (= convState) is given: allowed when
 * every channel has one reader, i.e. one block per head (gridDim.z = 1) and a group per head
 * (groups = heads), so each thread of the conv loop pushes the channel it read. ssm (B, heads, P,
 * N) is updated in place, and
 *   out (B, heads P) = (h C + D x) * silu(z + zBias)   in dtype ot
 * with the products and sums of ssm_step_f32 and silu_gate_f32. Dynamic shared memory:
 (2 rowsPer + 2 N) floats.
 */
extern "C" __global__ void __launch_bounds__(1024) ssm_step_gate(const float* zx, i64 rowLen, int xOff, int zOff, int aOff,
                                         const float* convState, const float* convW, const float* convBias,
                                         const float* D, const float* zBias, float* ssm, float* convPush, void* out,
                                         int ot, int heads, int groups, int P, int N, int K, int act) {
  extern __shared__ float sh[];  // x (pn), B (N), C (N), u = z + zBias (pn)
  const int h = blockIdx.x;
  const i64 b = blockIdx.y;
  const int rowsPer = (P + gridDim.z - 1) / gridDim.z;
  const int p0 = blockIdx.z * rowsPer;
  const int pn = min(rowsPer, P - p0);
  if (pn <= 0) return;
  const int C = heads * P + 2 * groups * N;
  const int g = h / (heads / groups);
  const float* row = zx + b * rowLen;
  const float* xbc = row + xOff;
  const float* st = convState + b * (K - 1) * C;
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, warps = blockDim.x >> 5;
  float* hs = ssm + ((b * heads + h) * (i64)P + p0) * N;
  // loads that need nothing computed are issued first, so their latencies overlap the conv's:
  // a, D, and (N <= 64) this warp's first two state rows
  const float av = row[aOff + h];
  const float d = D[h];
  const bool two = N <= 64;
  float h0 = 0.f, h1 = 0.f, h2 = 0.f, h3 = 0.f;
  if (two && warp < pn) {
    if (lane < N) h0 = hs[(i64)warp * N + lane];
    if (lane + 32 < N) h1 = hs[(i64)warp * N + lane + 32];
  }
  if (two && warp + warps < pn) {
    if (lane < N) h2 = hs[(i64)(warp + warps) * N + lane];
    if (lane + 32 < N) h3 = hs[(i64)(warp + warps) * N + lane + 32];
  }
  for (int i = threadIdx.x; i < 2 * pn + 2 * N; i += blockDim.x) {
    if (i >= pn + 2 * N) {
      const int col = h * P + p0 + (i - pn - 2 * N);
      sh[i] = row[zOff + col] + zBias[col];
      continue;
    }
    const int ch = i < pn       ? h * P + p0 + i
                   : i < pn + N ? heads * P + g * N + (i - pn)
                                : heads * P + groups * N + g * N + (i - pn - N);
    float acc = convBias ? convBias[ch] : 0.f;
    for (int j = 0; j < K - 1; j++) acc += convW[ch * K + j] * st[(i64)j * C + ch];
    const float xin = xbc[ch];
    acc += convW[ch * K + K - 1] * xin;
    if (act) acc = acc / (1.f + expf(-acc));
    sh[i] = acc;
    if (convPush) {
      // this thread is the channel's only reader (see above): push it now
      float* sp = convPush + b * (K - 1) * C + ch;
      for (int j = 0; j + 1 < K - 1; j++) sp[(i64)j * C] = sp[(i64)(j + 1) * C];
      if (K > 1) sp[(i64)(K - 2) * C] = xin;
    }
  }
  __syncthreads();
  const float alpha = expf(-softplus(av));
  const float* bs = sh + pn;
  const float* cs = sh + pn + N;
  const float* us = sh + pn + 2 * N;
  for (int p = warp; p < pn; p += warps) {
    const float xp = sh[p];
    float acc = 0.f;
    if (two) {
      // the sums of ssm_step_f32 (n = lane, then lane + 32), the first two rows from registers
      if (lane < N) {
        const float old = p == warp ? h0 : p == warp + warps ? h2 : hs[(i64)p * N + lane];
        const float v = alpha * old + xp * bs[lane];
        hs[(i64)p * N + lane] = v;
        acc += v * cs[lane];
      }
      if (lane + 32 < N) {
        const float old = p == warp ? h1 : p == warp + warps ? h3 : hs[(i64)p * N + lane + 32];
        const float v = alpha * old + xp * bs[lane + 32];
        hs[(i64)p * N + lane + 32] = v;
        acc += v * cs[lane + 32];
      }
    } else {
      for (int n = lane; n < N; n += 32) {
        const float v = alpha * hs[(i64)p * N + n] + xp * bs[n];
        hs[(i64)p * N + n] = v;
        acc += v * cs[n];
      }
    }
    acc = warp_sum(acc);
    if (lane == 0) {
      const float y = acc + d * xp;
      const float u = us[p];
      store_dtype(out, ot, b * (i64)(heads * P) + h * P + p0 + p, y * u * sigmoid(u));
    }
  }
}

/** convState (B, K - 1, C): drop the oldest input of every channel, append zx[b, xOff + ch] */
extern "C" __global__ void conv_push_rows(float* convState, const float* zx, i64 rowLen, int xOff, i64 batch, int K,
                                          int C) {
  const i64 n = batch * C;
  FOR_EACH(i, n) {
    const i64 b = i / C;
    const int ch = (int)(i - b * C);
    float* s = convState + b * (K - 1) * C + ch;
    for (int j = 0; j + 1 < K - 1; j++) s[(i64)j * C] = s[(i64)(j + 1) * C];
    if (K > 1) s[(i64)(K - 2) * C] = zx[b * rowLen + xOff + ch];
  }
}
