// Sequence kernels: the causal depthwise conv1d of the Mamba mixer (with backward) and the
// rotary position embedding.
#include "common.cuh"

#define MAX_CONV_K 16

/** x, out (B, T, C), weight (C, K), bias (C) | null: out[t] = bias + sum_j w[j] x[t - (K-1) + j] */
extern "C" __global__ void conv1d_f32(const float* x, const float* w, const float* bias, float* out, i64 batch,
                                      int t, int c, int k) {
  const i64 n = batch * t * c;
  FOR_EACH(i, n) {
    const int ch = (int)(i % c);
    const i64 bt = i / c;
    const int s = (int)(bt % t);
    const i64 rowBase = (bt - s) * c + ch;  // (b, 0, ch)
    float acc = bias ? bias[ch] : 0.f;
    for (int j = 0; j < k; j++) {
      const int src = s - (k - 1) + j;
      if (src >= 0) acc += w[ch * k + j] * x[rowBase + (i64)src * c];
    }
    out[i] = acc;
  }
}

/** gx (B, T, C): gx[s] = sum_j gy[s + (K-1) - j] w[j] over the outputs that read x[s] */
extern "C" __global__ void conv1d_backward_x_f32(const float* w, const float* gy, float* gx, i64 batch, int t,
                                                 int c, int k) {
  const i64 n = batch * t * c;
  FOR_EACH(i, n) {
    const int ch = (int)(i % c);
    const i64 bt = i / c;
    const int s = (int)(bt % t);
    const i64 rowBase = (bt - s) * c + ch;
    float acc = 0.f;
    for (int j = 0; j < k; j++) {
      const int dst = s + (k - 1) - j;
      if (dst < t) acc += gy[rowBase + (i64)dst * c] * w[ch * k + j];
    }
    gx[i] = acc;
  }
}

/**
 * Partial weight and bias gradients: block b of the grid takes the (batch * T) rows
 * [b * rowsPerBlock, ...) and writes pw (gridDim.x, C, K) and pb (gridDim.x, C) | null;
 * the host sums them over blocks. Threads loop over channels. K <= MAX_CONV_K.
 */
extern "C" __global__ void conv1d_backward_w_f32(const float* x, const float* gy, float* pw, float* pb, i64 batch,
                                                 int t, int c, int k, i64 rowsPerBlock) {
  const i64 rows = batch * t;
  const i64 r0 = (i64)blockIdx.x * rowsPerBlock;
  const i64 r1 = r0 + rowsPerBlock < rows ? r0 + rowsPerBlock : rows;
  for (int ch = threadIdx.x; ch < c; ch += blockDim.x) {
    float accW[MAX_CONV_K];
#pragma unroll
    for (int j = 0; j < MAX_CONV_K; j++) accW[j] = 0.f;
    float accB = 0.f;
    for (i64 r = r0; r < r1; r++) {
      const int s = (int)(r % t);
      const float g = gy[r * c + ch];
      accB += g;
#pragma unroll
      for (int j = 0; j < MAX_CONV_K; j++) {
        const int src = s - (k - 1) + j;
        if (j < k && src >= 0) accW[j] += g * x[(r - s + src) * c + ch];
      }
    }
#pragma unroll
    for (int j = 0; j < MAX_CONV_K; j++)
      if (j < k) pw[((i64)blockIdx.x * c + ch) * k + j] = accW[j];
    if (pb) pb[(i64)blockIdx.x * c + ch] = accB;
  }
}

/**
 * Rotary embedding on x, out (B, T, H, D) (out may alias x). Angles are computed as the CPU
 * backend does (inverse frequency and position * frequency rounded to f32, cos/sin of that in
 * double rounded to f32), and the rotation in double, so results match it to the last bit up to
 * the libm's cos/sin/pow. One thread per rotated pair or pass-through dimension.
 */
extern "C" __global__ void rope_f32(const float* x, float* out, i64 batch, int seqLen, int heads, int headDim,
                                    int rotaryDim, double theta, int interleaved, int positionOffset,
                                    int inverse) {
  const int half = rotaryDim / 2;
  const int per = half + headDim - rotaryDim;
  const i64 n = batch * seqLen * heads * per;
  FOR_EACH(i, n) {
    const i64 row = i / per;
    const int kk = (int)(i - row * per);
    const int s = (int)((row / heads) % seqLen);
    const i64 base = row * headDim;
    if (kk < half) {
      const float f = (float)((double)(2 * kk) / (double)rotaryDim);
      const float invFreq = (float)(1.0 / (double)(float)pow(theta, (double)f));
      const float angle = (float)((double)(positionOffset + s) * (double)invFreq);
      const double c = (double)(float)cos((double)angle);
      double sn = (double)(float)sin((double)angle);
      if (inverse) sn = -sn;
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
