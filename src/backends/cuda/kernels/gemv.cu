// Products of a few rows with a linear layer's weight: decoding's matrix products (M = batch, one
// token each), where reading the bf16 weight once is the whole cost. cuBLASLt picks slow kernels
// for M = 1 (2.3-2.8 TB/s on the H200 for the 1.5B student's big weights); here every warp streams
// GEMV_ROWS whole weight rows at once with 16-byte loads, two batches of GEMV_UNROLL loads per row
// in flight (the next batch is issued before the current one is used), so that enough bytes are in
// flight per multiprocessor to approach the memory bandwidth.
//
//   out (M, N) = act(alpha * x (M, K) W^T + beta * out + bias (N)), then (r1 + r2) + out when r1
//
// x is (M, K) bf16, W (N, K) bf16 row-major (a Linear weight, used transposed), out (M, N) f32, or
// bf16 / f16 when beta = 0 (ot: DT_F32, DT_BF16, DT_F16); bias (N) f32 or null; act 0 (none) or
// GEMV_ACT_GELU_NEW (the tanh GELU of elementwise.cu, in f32 before the rounding: the MLP's fc1
// writing fc2's 16-bit input); r1, r2 (M, N) f32 or null (r2 only with r1): the residual stream
// and the mixer's output added to fc2's in add3's order; M <= GEMV_M, K % 8 == 0, x and W 16-byte
// aligned.
//
// Compile-time shape (-D defines, chosen by gemv.ts; bench/gpu-gemv.ts sweeps them):
//   GEMV_M       largest M this build takes (1, 2, 4 or 8): accumulators per row
//   GEMV_WARPS   warps per block
//   GEMV_ROWS    weight rows (output columns) per warp, streamed together
//   GEMV_UNROLL  16-byte chunks per row and lane in one batch of loads
//   GEMV_L2PF    1: the weight loads carry the L2::256B prefetch hint
//
// A group of `splits` consecutive warps (1, 2, 4 or 8, dividing GEMV_WARPS) shares GEMV_ROWS
// output columns and splits their K (split-K, for small N where one warp per row group leaves
// the multiprocessors idle). Warp s of a group, lane l, reads the 16-byte chunks
// c = s * 32 + l + j * 32 * splits of its rows of W and of each x row (coalesced 512-byte runs per
// warp), sums in f32; then a warp reduction, and the splits' partial sums are added in order
// (s = 0, 1, ...) through shared memory: the result does not depend on timing.
// W is read once, so its loads skip L1 (x stays there for the other warps).

#include "common.cuh"

#ifndef GEMV_M
#define GEMV_M 8
#endif
#ifndef GEMV_WARPS
#define GEMV_WARPS 4
#endif
#ifndef GEMV_ROWS
#define GEMV_ROWS 4
#endif
#ifndef GEMV_UNROLL
#define GEMV_UNROLL 2
#endif
#ifndef GEMV_L2PF
#define GEMV_L2PF 0
#endif
#define GEMV_ACT_GELU_NEW 1
static_assert(GEMV_M * GEMV_ROWS <= 32, "gemv.cu: one lane writes each of a warp's GEMV_M x GEMV_ROWS outputs");

/** the 8 bf16 of a 16-byte chunk as floats */
__device__ __forceinline__ void unpack8(const uint4 v, float* f) {
  const u32 w[4] = {v.x, v.y, v.z, v.w};
#pragma unroll
  for (int i = 0; i < 4; i++) {
    f[2 * i] = __uint_as_float(w[i] << 16);
    f[2 * i + 1] = __uint_as_float(w[i] & 0xffff0000u);
  }
}

/** a 16-byte load of read-once data: read-only path, no L1 allocation (GEMV_L2PF: with the L2's 256-byte prefetch hint) */
__device__ __forceinline__ uint4 load_stream(const uint4* p) {
  uint4 v;
#if GEMV_L2PF
  asm volatile("ld.global.nc.L1::no_allocate.L2::256B.v4.u32 {%0, %1, %2, %3}, [%4];"
               : "=r"(v.x), "=r"(v.y), "=r"(v.z), "=r"(v.w)
               : "l"(p));
#else
  asm volatile("ld.global.nc.L1::no_allocate.v4.u32 {%0, %1, %2, %3}, [%4];"
               : "=r"(v.x), "=r"(v.y), "=r"(v.z), "=r"(v.w)
               : "l"(p));
#endif
  return v;
}

/** one batch of loads: chunk c = start + (b * GEMV_UNROLL + u) * stride of each of the warp's rows */
__device__ __forceinline__ void load_batch(uint4 (&buf)[GEMV_ROWS][GEMV_UNROLL], const uint4* (&wrow)[GEMV_ROWS],
                                           i64 chunks, i64 start, i64 stride, i64 b) {
#pragma unroll
  for (int u = 0; u < GEMV_UNROLL; u++) {
    const i64 c = start + (b * GEMV_UNROLL + u) * stride;
#pragma unroll
    for (int r = 0; r < GEMV_ROWS; r++) buf[r][u] = c < chunks ? load_stream(wrow[r] + c) : make_uint4(0u, 0u, 0u, 0u);
  }
}

/** acc[i][r] += W_r[c] . x_i[c] over the chunks of batch b (x rows i < m) */
__device__ __forceinline__ void use_batch(const uint4 (&buf)[GEMV_ROWS][GEMV_UNROLL], const uint4* __restrict__ xrows,
                                          int m, i64 chunks, i64 start, i64 stride, i64 b,
                                          float (&acc)[GEMV_M][GEMV_ROWS]) {
#pragma unroll
  for (int u = 0; u < GEMV_UNROLL; u++) {
    const i64 c = start + (b * GEMV_UNROLL + u) * stride;
    if (c < chunks) {
      float wf[GEMV_ROWS][8];
#pragma unroll
      for (int r = 0; r < GEMV_ROWS; r++) unpack8(buf[r][u], wf[r]);
#pragma unroll
      for (int i = 0; i < GEMV_M; i++) {
        if (i < m) {
          float xf[8];
          unpack8(__ldg(xrows + i * chunks + c), xf);
#pragma unroll
          for (int r = 0; r < GEMV_ROWS; r++)
#pragma unroll
            for (int e = 0; e < 8; e++) acc[i][r] = fmaf(wf[r][e], xf[e], acc[i][r]);
        }
      }
    }
  }
}

/**
 * acc[i][r] += W_r . x_i over this lane's chunks c = start + j * stride (< chunks): batches of
 * GEMV_UNROLL chunks per lane and row, the same count for every lane of the warp; two buffers, so
 * batch b + 1 is in flight while batch b is used
 */
__device__ __forceinline__ void stream_rows(const uint4* (&wrow)[GEMV_ROWS], const uint4* __restrict__ xrows, int m,
                                            i64 chunks, i64 start, i64 stride, float (&acc)[GEMV_M][GEMV_ROWS]) {
  const i64 perBatch = stride * GEMV_UNROLL;
  const i64 batches = (chunks + perBatch - 1) / perBatch;
  uint4 a[GEMV_ROWS][GEMV_UNROLL], bb[GEMV_ROWS][GEMV_UNROLL];
  load_batch(a, wrow, chunks, start, stride, 0);
  for (i64 b = 0; b < batches; b += 2) {
    if (b + 1 < batches) load_batch(bb, wrow, chunks, start, stride, b + 1);
    use_batch(a, xrows, m, chunks, start, stride, b, acc);
    if (b + 1 < batches) {
      if (b + 2 < batches) load_batch(a, wrow, chunks, start, stride, b + 2);
      use_batch(bb, xrows, m, chunks, start, stride, b + 1, acc);
    }
  }
}

// A second product of the same x may share the launch (two Linears reading one input: the
// parallel block's in_proj and fc1): blocks from `blocks1` on compute out2 = act2(x W2^T + bias2)
// (n2 rows of W2, in dtype ot2, alpha 1, no beta, no residual); blocks1 = gridDim.x without one.
extern "C" __global__ void __launch_bounds__(GEMV_WARPS * 32)
    gemv_bf16_f32(const u16* __restrict__ x, const u16* __restrict__ w, void* out, const float* bias, int m,
                  i64 n, i64 k, float alpha, float beta, int splits, int act, int ot, const float* r1,
                  const float* r2, const u16* __restrict__ w2, void* out2, const float* bias2, i64 n2, int act2,
                  int ot2, int blocks1) {
  __shared__ float partial[GEMV_WARPS][GEMV_M * GEMV_ROWS];
  const int lane = threadIdx.x & 31;
  const int warp = threadIdx.x >> 5;
  const int s = warp % splits;
  i64 bx = blockIdx.x;
  if (bx >= blocks1) {
    bx -= blocks1;
    w = w2;
    out = out2;
    bias = bias2;
    n = n2;
    act = act2;
    ot = ot2;
    alpha = 1.f;
    beta = 0.f;
    r1 = nullptr;
    r2 = nullptr;
  }
  // the first of this warp's GEMV_ROWS output columns
  const i64 col0 = (bx * (GEMV_WARPS / splits) + warp / splits) * GEMV_ROWS;
  const i64 chunks = k >> 3;
  const i64 start = (i64)s * 32 + lane;
  const i64 stride = (i64)splits * 32;
  const uint4* xrows = reinterpret_cast<const uint4*>(x);
  const uint4* wrow[GEMV_ROWS];
#pragma unroll
  for (int r = 0; r < GEMV_ROWS; r++) {
    // rows past N read row N - 1 (in bounds) and are not written
    const i64 col = col0 + r < n ? col0 + r : n - 1;
    wrow[r] = reinterpret_cast<const uint4*>(w + col * k);
  }
  float acc[GEMV_M][GEMV_ROWS];
#pragma unroll
  for (int i = 0; i < GEMV_M; i++)
#pragma unroll
    for (int r = 0; r < GEMV_ROWS; r++) acc[i][r] = 0.f;

  if (col0 < n) stream_rows(wrow, xrows, m, chunks, start, stride, acc);
  // warp sums; with split-K through shared memory, added in the order of the splits
#pragma unroll
  for (int i = 0; i < GEMV_M; i++)
#pragma unroll
    for (int r = 0; r < GEMV_ROWS; r++)
      if (i < m) acc[i][r] = warp_sum(acc[i][r]);
  if (splits > 1) {
    if (lane == 0) {
#pragma unroll
      for (int i = 0; i < GEMV_M; i++)
#pragma unroll
        for (int r = 0; r < GEMV_ROWS; r++) partial[warp][i * GEMV_ROWS + r] = acc[i][r];
    }
    __syncthreads();
  }
  // lane i * GEMV_ROWS + r writes x row i's column col0 + r
  if (s == 0 && lane < GEMV_M * GEMV_ROWS) {
    const int i = lane / GEMV_ROWS;
    const int r = lane % GEMV_ROWS;
    const i64 col = col0 + r;
    if (i < m && col < n) {
      float v = 0.f;
      if (splits > 1) {
        for (int j = 0; j < splits; j++) v += partial[warp + j][lane];
      } else {
        // every lane holds the warp sums: pick this lane's
#pragma unroll
        for (int ii = 0; ii < GEMV_M; ii++)
#pragma unroll
          for (int rr = 0; rr < GEMV_ROWS; rr++)
            if (ii == i && rr == r) v = acc[ii][rr];
      }
      const i64 at = (i64)i * n + col;
      float y = alpha * v;
      if (beta != 0.f) y += beta * ((const float*)out)[at];
      if (bias) y += bias[col];
      if (act == GEMV_ACT_GELU_NEW) y = gelu_tanh(y);
      if (r1) y = (r2 ? r1[at] + r2[at] : r1[at]) + y;
      store_dtype(out, ot, at, y);
    }
  }
}

/**
 * gemv_block_out's stream: chunk c of the virtual row [Wo_r (c1 chunks) | Wf_r (c2 chunks)] against
 * [g_i | h_i], into acc1 (c < c1) or acc2, double-buffered as stream_rows across the seam, so the
 * two products cost one pipeline
 */
__device__ __forceinline__ void stream_rows_cat(const uint4* (&orow)[GEMV_ROWS], const uint4* (&frow)[GEMV_ROWS],
                                                const uint4* __restrict__ g, const uint4* __restrict__ h, int m,
                                                i64 c1, i64 c2, i64 start, i64 stride,
                                                float (&acc1)[GEMV_M][GEMV_ROWS],
                                                float (&acc2)[GEMV_M][GEMV_ROWS]) {
  const i64 chunks = c1 + c2;
  const i64 perBatch = stride * GEMV_UNROLL;
  const i64 batches = (chunks + perBatch - 1) / perBatch;
  uint4 a[GEMV_ROWS][GEMV_UNROLL], bb[GEMV_ROWS][GEMV_UNROLL];
  auto load = [&](uint4 (&buf)[GEMV_ROWS][GEMV_UNROLL], i64 b) {
#pragma unroll
    for (int u = 0; u < GEMV_UNROLL; u++) {
      const i64 c = start + (b * GEMV_UNROLL + u) * stride;
#pragma unroll
      for (int r = 0; r < GEMV_ROWS; r++)
        buf[r][u] = c < c1       ? load_stream(orow[r] + c)
                    : c < chunks ? load_stream(frow[r] + (c - c1))
                                 : make_uint4(0u, 0u, 0u, 0u);
    }
  };
  auto use = [&](const uint4 (&buf)[GEMV_ROWS][GEMV_UNROLL], i64 b) {
#pragma unroll
    for (int u = 0; u < GEMV_UNROLL; u++) {
      const i64 c = start + (b * GEMV_UNROLL + u) * stride;
      if (c < chunks) {
        float wf[GEMV_ROWS][8];
#pragma unroll
        for (int r = 0; r < GEMV_ROWS; r++) unpack8(buf[r][u], wf[r]);
        const bool first = c < c1;
#pragma unroll
        for (int i = 0; i < GEMV_M; i++) {
          if (i < m) {
            float xf[8];
            unpack8(first ? __ldg(g + i * c1 + c) : __ldg(h + i * c2 + (c - c1)), xf);
#pragma unroll
            for (int r = 0; r < GEMV_ROWS; r++) {
              float t = first ? acc1[i][r] : acc2[i][r];
#pragma unroll
              for (int e = 0; e < 8; e++) t = fmaf(wf[r][e], xf[e], t);
              if (first)
                acc1[i][r] = t;
              else
                acc2[i][r] = t;
            }
          }
        }
      }
    }
  };
  load(a, 0);
  for (i64 b = 0; b < batches; b += 2) {
    if (b + 1 < batches) load(bb, b + 1);
    use(a, b);
    if (b + 1 < batches) {
      if (b + 2 < batches) load(a, b + 2);
      use(bb, b + 1);
    }
  }
}

/**
 * The parallel block's last two products in one pass (decoding): for output column j < n and row
 * i < m of the inputs,
 *   mix[i, j] = g_i . Wo_j + bo_j                       (out_proj: g (m, k1), Wo (n, k1))
 *   out[i, j] = (r[i, j] + mix[i, j]) + (h_i . Wf_j + bf_j)   (fc2: h (m, k2), Wf (n, k2))
 * the residual sum in add3's order; g, h, Wo, Wf bf16 (16-byte aligned, k1, k2 multiples of 8),
 * bo, bf f32 | null, r, mix, out f32. Warps, rows per warp and splits as gemv_bf16_f32 (each split
 * takes its share of both rows' chunks).
 */
extern "C" __global__ void __launch_bounds__(GEMV_WARPS * 32)
    gemv_block_out(const u16* __restrict__ g, const u16* __restrict__ wo, const float* bo, i64 k1,
                   const u16* __restrict__ h, const u16* __restrict__ wf, const float* bf, i64 k2, const float* r,
                   float* mix, float* out, int m, i64 n, int splits) {
  __shared__ float partial[2][GEMV_WARPS][GEMV_M * GEMV_ROWS];
  const int lane = threadIdx.x & 31;
  const int warp = threadIdx.x >> 5;
  const int s = warp % splits;
  const i64 col0 = ((i64)blockIdx.x * (GEMV_WARPS / splits) + warp / splits) * GEMV_ROWS;
  const i64 start = (i64)s * 32 + lane;
  const i64 stride = (i64)splits * 32;
  const uint4* orow[GEMV_ROWS];
  const uint4* frow[GEMV_ROWS];
#pragma unroll
  for (int rr = 0; rr < GEMV_ROWS; rr++) {
    const i64 col = col0 + rr < n ? col0 + rr : n - 1;
    orow[rr] = reinterpret_cast<const uint4*>(wo + col * k1);
    frow[rr] = reinterpret_cast<const uint4*>(wf + col * k2);
  }
  float acc1[GEMV_M][GEMV_ROWS], acc2[GEMV_M][GEMV_ROWS];
#pragma unroll
  for (int i = 0; i < GEMV_M; i++)
#pragma unroll
    for (int rr = 0; rr < GEMV_ROWS; rr++) acc1[i][rr] = acc2[i][rr] = 0.f;
  if (col0 < n)
    stream_rows_cat(orow, frow, reinterpret_cast<const uint4*>(g), reinterpret_cast<const uint4*>(h), m, k1 >> 3,
                    k2 >> 3, start, stride, acc1, acc2);
#pragma unroll
  for (int i = 0; i < GEMV_M; i++)
#pragma unroll
    for (int rr = 0; rr < GEMV_ROWS; rr++)
      if (i < m) {
        acc1[i][rr] = warp_sum(acc1[i][rr]);
        acc2[i][rr] = warp_sum(acc2[i][rr]);
      }
  if (splits > 1) {
    if (lane == 0) {
#pragma unroll
      for (int i = 0; i < GEMV_M; i++)
#pragma unroll
        for (int rr = 0; rr < GEMV_ROWS; rr++) {
          partial[0][warp][i * GEMV_ROWS + rr] = acc1[i][rr];
          partial[1][warp][i * GEMV_ROWS + rr] = acc2[i][rr];
        }
    }
    __syncthreads();
  }
  if (s == 0 && lane < GEMV_M * GEMV_ROWS) {
    const int i = lane / GEMV_ROWS;
    const int rr = lane % GEMV_ROWS;
    const i64 col = col0 + rr;
    if (i < m && col < n) {
      float v1 = 0.f, v2 = 0.f;
      if (splits > 1) {
        for (int j = 0; j < splits; j++) {
          v1 += partial[0][warp + j][lane];
          v2 += partial[1][warp + j][lane];
        }
      } else {
#pragma unroll
        for (int ii = 0; ii < GEMV_M; ii++)
#pragma unroll
          for (int q = 0; q < GEMV_ROWS; q++)
            if (ii == i && q == rr) {
              v1 = acc1[ii][q];
              v2 = acc2[ii][q];
            }
      }
      const i64 at = (i64)i * n + col;
      // the values of out_proj and fc2 through gemv_bf16_f32 (alpha 1), then add3's order
      float mv = 1.f * v1;
      if (bo) mv += bo[col];
      float fv = 1.f * v2;
      if (bf) fv += bf[col];
      mix[at] = mv;
      out[at] = (r[at] + mv) + fv;
    }
  }
}
