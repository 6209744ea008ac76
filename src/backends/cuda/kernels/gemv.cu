// Products of a few rows with a linear layer's weight: decoding's matrix products (M = batch, one
// token each), where reading the bf16 weight once is the whole cost. cuBLASLt picks slow kernels
// for M = 1 (about 1.1 TB/s on the H200); here warps stream whole weight rows with 16-byte loads,
// GEMV_UNROLL of them outstanding per lane before the first FMA, so that enough bytes are in flight
// to approach the memory bandwidth.
//
//   out (M, N) = alpha * x (M, K) W^T + beta * out + bias (N)
//
// x is (M, K) bf16, W (N, K) bf16 row-major (a Linear weight, used transposed), out (M, N) f32,
// bias (N) f32 or null; M <= GEMV_MAX_M, K % 8 == 0, x and W 16-byte aligned.
//
// A block has GEMV_WARPS warps; `splits` (1, 2, 4 or 8, dividing GEMV_WARPS) consecutive warps share
// one output column n and split its K (split-K, for small N where one warp per column leaves the
// SMs idle). Warp s of a column, lane l, reads the 16-byte chunks s * 32 + l + j * 32 * splits of
// W's row n and of each x row (coalesced 512-byte runs per warp), sums in f32; then a warp
// reduction, and the splits' partial sums are added in order (s = 0, 1, ...) through shared memory.
// W is read once, so its loads skip L1 (x stays there for the other warps).

#include "common.cuh"

#define GEMV_MAX_M 8
#define GEMV_WARPS 8
#define GEMV_UNROLL 8

/** the 8 bf16 of a 16-byte chunk as floats */
__device__ __forceinline__ void unpack8(const uint4 v, float* f) {
  const u32 w[4] = {v.x, v.y, v.z, v.w};
#pragma unroll
  for (int i = 0; i < 4; i++) {
    f[2 * i] = __uint_as_float(w[i] << 16);
    f[2 * i + 1] = __uint_as_float(w[i] & 0xffff0000u);
  }
}

/** a 16-byte load of read-once data: read-only path, no L1 allocation */
__device__ __forceinline__ uint4 load_stream(const uint4* p) {
  uint4 v;
  asm volatile("ld.global.nc.L1::no_allocate.v4.u32 {%0, %1, %2, %3}, [%4];"
               : "=r"(v.x), "=r"(v.y), "=r"(v.z), "=r"(v.w)
               : "l"(p));
  return v;
}

/** acc[r] += sum over this lane's chunks c = start + j * stride (< chunks) of W[c] . x_r[c], r < M */
template <int M>
__device__ __forceinline__ void gemv_lane(const uint4* __restrict__ wrow, const uint4* __restrict__ xrows, i64 chunks,
                                          i64 start, i64 stride, float* acc) {
  for (i64 base = start; base < chunks; base += stride * GEMV_UNROLL) {
    uint4 wv[GEMV_UNROLL];
#pragma unroll
    for (int u = 0; u < GEMV_UNROLL; u++) {
      const i64 c = base + u * stride;
      wv[u] = c < chunks ? load_stream(wrow + c) : make_uint4(0u, 0u, 0u, 0u);
    }
#pragma unroll
    for (int u = 0; u < GEMV_UNROLL; u++) {
      const i64 c = base + u * stride;
      if (c < chunks) {
        float wf[8];
        unpack8(wv[u], wf);
#pragma unroll
        for (int r = 0; r < M; r++) {
          float xf[8];
          unpack8(__ldg(xrows + r * chunks + c), xf);
#pragma unroll
          for (int i = 0; i < 8; i++) acc[r] = fmaf(wf[i], xf[i], acc[r]);
        }
      }
    }
  }
}

extern "C" __global__ void __launch_bounds__(GEMV_WARPS * 32, 2)
    gemv_bf16_f32(const u16* __restrict__ x, const u16* __restrict__ w, float* out, const float* bias, int m,
                  i64 n, i64 k, float alpha, float beta, int splits) {
  __shared__ float partial[GEMV_WARPS][GEMV_MAX_M];
  const int lane = threadIdx.x & 31;
  const int warp = threadIdx.x >> 5;
  const int s = warp % splits;
  const i64 col = (i64)blockIdx.x * (GEMV_WARPS / splits) + warp / splits;
  float acc[GEMV_MAX_M];
#pragma unroll
  for (int r = 0; r < GEMV_MAX_M; r++) acc[r] = 0.f;
  if (col < n) {
    const uint4* wrow = reinterpret_cast<const uint4*>(w + col * k);
    const uint4* xrows = reinterpret_cast<const uint4*>(x);
    const i64 chunks = k >> 3;
    const i64 start = (i64)s * 32 + lane;
    const i64 stride = (i64)splits * 32;
    switch (m) {
      case 1: gemv_lane<1>(wrow, xrows, chunks, start, stride, acc); break;
      case 2: gemv_lane<2>(wrow, xrows, chunks, start, stride, acc); break;
      case 3: gemv_lane<3>(wrow, xrows, chunks, start, stride, acc); break;
      case 4: gemv_lane<4>(wrow, xrows, chunks, start, stride, acc); break;
      case 5: gemv_lane<5>(wrow, xrows, chunks, start, stride, acc); break;
      case 6: gemv_lane<6>(wrow, xrows, chunks, start, stride, acc); break;
      case 7: gemv_lane<7>(wrow, xrows, chunks, start, stride, acc); break;
      default: gemv_lane<8>(wrow, xrows, chunks, start, stride, acc); break;
    }
  }
#pragma unroll
  for (int r = 0; r < GEMV_MAX_M; r++) {
    if (r < m) {
      float v = acc[r];
#pragma unroll
      for (int off = 16; off > 0; off >>= 1) v += __shfl_xor_sync(0xffffffffu, v, off);
      if (lane == 0) partial[warp][r] = v;
    }
  }
  __syncthreads();
  if (col < n && s == 0 && lane < m) {
    float v = 0.f;
    for (int j = 0; j < splits; j++) v += partial[warp + j][lane];
    const i64 at = (i64)lane * n + col;
    float y = alpha * v;
    if (beta != 0.f) y += beta * out[at];
    if (bias) y += bias[col];
    out[at] = y;
  }
}
