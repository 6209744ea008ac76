// Products of a few rows with a linear layer's weight: decoding's matrix products (M = batch, one
// token each), where reading the bf16 weight once is the whole cost. cuBLASLt picks slow kernels
// for M = 1 (about 1.1 TB/s on the H200); here every warp streams whole weight rows with 16-byte
// loads.
//
//   out (M, N) = alpha * x (M, K) W^T + beta * out + bias (N)
//
// x is (M, K) bf16, W (N, K) bf16 row-major (a Linear weight, used transposed), out (M, N) f32,
// bias (N) f32 or null; M <= GEMV_MAX_M, K % 8 == 0, x and W 16-byte aligned. One warp per output
// column n: lane l reads 16-byte chunks l, l + 32, ... of W's row n and of each x row, f32 sums,
// then a warp reduction; GEMV_WARPS columns per block.

#include "common.cuh"

#define GEMV_MAX_M 8
#define GEMV_WARPS 8

/** the 8 bf16 of a 16-byte chunk as floats */
__device__ __forceinline__ void unpack8(const uint4 v, float* f) {
  const u32 w[4] = {v.x, v.y, v.z, v.w};
#pragma unroll
  for (int i = 0; i < 4; i++) {
    f[2 * i] = __uint_as_float(w[i] << 16);
    f[2 * i + 1] = __uint_as_float(w[i] & 0xffff0000u);
  }
}

extern "C" __global__ void __launch_bounds__(GEMV_WARPS * 32)
    gemv_bf16_f32(const u16* __restrict__ x, const u16* __restrict__ w, float* out, const float* bias, int m,
                  i64 n, i64 k, float alpha, float beta) {
  const int lane = threadIdx.x & 31;
  const i64 col = (i64)blockIdx.x * GEMV_WARPS + (threadIdx.x >> 5);
  if (col >= n) return;
  float acc[GEMV_MAX_M];
#pragma unroll
  for (int r = 0; r < GEMV_MAX_M; r++) acc[r] = 0.f;
  const uint4* wrow = reinterpret_cast<const uint4*>(w + col * k);
  const uint4* xrows = reinterpret_cast<const uint4*>(x);
  const i64 chunks = k >> 3;
#pragma unroll 4
  for (i64 c = lane; c < chunks; c += 32) {
    float wf[8];
    unpack8(__ldg(wrow + c), wf);
#pragma unroll
    for (int r = 0; r < GEMV_MAX_M; r++) {
      if (r < m) {
        float xf[8];
        unpack8(__ldg(xrows + r * chunks + c), xf);
#pragma unroll
        for (int i = 0; i < 8; i++) acc[r] = fmaf(wf[i], xf[i], acc[r]);
      }
    }
  }
#pragma unroll
  for (int r = 0; r < GEMV_MAX_M; r++) {
    if (r < m) {
      float v = acc[r];
#pragma unroll
      for (int off = 16; off > 0; off >>= 1) v += __shfl_xor_sync(0xffffffffu, v, off);
      if (lane == 0) {
        const i64 at = (i64)r * n + col;
        float y = alpha * v;
        if (beta != 0.f) y += beta * out[at];
        if (bias) y += bias[col];
        out[at] = y;
      }
    }
  }
}
