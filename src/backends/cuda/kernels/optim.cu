// The optimizer's passes over every gradient and weight, fused (src/train/optimizer.ts, issue 18):
// one read of each gradient for the global norm and the rows that have a gradient, and AdamW that
// also flags non-finite weights and writes the 16-bit copy the next step's products read.
// The unfused path (elementwise.cu's adamw_device_f32 with abs / square / sum passes) is the oracle.
#include "common.cuh"

__device__ __forceinline__ double warp_sum_f64(double v) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}

/**
 * g (rows, row_len) f32 -> row_sq[r] = sum_j g[r, j]^2, each square exact and summed in f64 (so
 * a row is 0 exactly when all its elements are, with no underflow, and NaN / inf propagate).
 * One warp per row (grid-stride over rows); 16-byte loads when row_len % 4 == 0.
 */
extern "C" __global__ void grad_row_squares_f32(const float* g, double* row_sq, i64 rows, i64 row_len) {
  const int lane = threadIdx.x & 31;
  const i64 warps = ((i64)gridDim.x * blockDim.x) >> 5;
  const bool vec = (row_len & 3) == 0;
  for (i64 r = (((i64)blockIdx.x * blockDim.x) >> 5) + (threadIdx.x >> 5); r < rows; r += warps) {
    const float* p = g + r * row_len;
    double acc = 0.0;
    if (vec) {
      const float4* p4 = (const float4*)p;
      const i64 q = row_len >> 2;
      // several 16-byte loads in flight per lane (a 2048-wide row is 16 per lane)
#pragma unroll 4
      for (i64 j = lane; j < q; j += 32) {
        const float4 v = p4[j];
        acc += (double)v.x * v.x + (double)v.y * v.y + (double)v.z * v.z + (double)v.w * v.w;
      }
    } else {
      for (i64 j = lane; j < row_len; j += 32) acc += (double)p[j] * p[j];
    }
    acc = warp_sum_f64(acc);
    if (lane == 0) row_sq[r] = acc;
  }
}

/** out[at] = (float) sum of x (n) f64, in f64; one block of 1024 threads (a fixed order: repeatable) */
extern "C" __global__ void sum_f64_to_f32(const double* x, i64 n, float* out, i64 at) {
  __shared__ double sh[32];
  double acc = 0.0;
  for (i64 i = threadIdx.x; i < n; i += blockDim.x) acc += x[i];
  acc = warp_sum_f64(acc);
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nw = blockDim.x >> 5;
  if (lane == 0) sh[warp] = acc;
  __syncthreads();
  if (warp == 0) {
    acc = lane < nw ? sh[lane] : 0.0;
    acc = warp_sum_f64(acc);
    if (lane == 0) out[at] = (float)acc;
  }
}

/** neither NaN nor infinite (the exponent bits not all set) */
__device__ __forceinline__ bool finite_(float x) { return (__float_as_uint(x) & 0x7f800000u) != 0x7f800000u; }

/**
 * adamw_device_f32 (same scalars, same arithmetic) with three more outputs from the same pass:
 * the decay applies to the rows whose row_sq (f64, from grad_row_squares_f32) is non-zero (every
 * row when null); *non_finite (null for none) = 1 when an updated weight is NaN or infinite (left alone
 * otherwise); p16 (n, 16 bits: kind 1 bf16, 2 f16; null for none) = the updated weight rounded.
 * param, grad, m, v (n) f32. Four elements per thread when n and row_len are multiples of 4.
 */
extern "C" __global__ void adamw_fused_f32(float* param, const float* grad, float* m, float* v,
                                           const double* scalars, const double* row_sq, i64 row_len, int bias_at,
                                           float beta1, float beta2, float eps, double wd, float* non_finite,
                                           u16* p16, int kind, i64 n) {
  const float lr = (float)scalars[0];
  const float scale = (float)scalars[1];
  const float bc1 = (float)scalars[bias_at];
  const float bc2 = (float)scalars[bias_at + 1];
  const float decay_all = (float)(1.0 - scalars[0] * wd);
  if ((n & 3) == 0 && (row_len & 3) == 0) {
    float4* p4 = (float4*)param;
    const float4* g4 = (const float4*)grad;
    float4* m4 = (float4*)m;
    float4* v4 = (float4*)v;
    const i64 quads = n >> 2, row_quads = row_len >> 2;
    const bool narrow = quads <= 0xffffffffLL;  // a 32-bit division for the row (all real sizes)
    FOR_EACH(i, quads) {
      const i64 row = narrow ? (i64)((u32)i / (u32)row_quads) : i / row_quads;
      const float decay = row_sq == nullptr || row_sq[row] != 0.0 ? decay_all : 1.f;
      float4 p = p4[i], mm = m4[i], vv = v4[i];
      const float4 g = g4[i];
      adamw_one(p.x, g.x * scale, mm.x, vv.x, lr, beta1, beta2, eps, decay, bc1, bc2);
      adamw_one(p.y, g.y * scale, mm.y, vv.y, lr, beta1, beta2, eps, decay, bc1, bc2);
      adamw_one(p.z, g.z * scale, mm.z, vv.z, lr, beta1, beta2, eps, decay, bc1, bc2);
      adamw_one(p.w, g.w * scale, mm.w, vv.w, lr, beta1, beta2, eps, decay, bc1, bc2);
      p4[i] = p;
      m4[i] = mm;
      v4[i] = vv;
      if (non_finite != nullptr && !(finite_(p.x) && finite_(p.y) && finite_(p.z) && finite_(p.w))) *non_finite = 1.f;
      if (p16 != nullptr) {
        uint2 h;
        h.x = (u32)to16(p.x, kind) | ((u32)to16(p.y, kind) << 16);
        h.y = (u32)to16(p.z, kind) | ((u32)to16(p.w, kind) << 16);
        ((uint2*)p16)[i] = h;
      }
    }
    return;
  }
  FOR_EACH(i, n) {
    const float decay = row_sq == nullptr || row_sq[i / row_len] != 0.0 ? decay_all : 1.f;
    float p = param[i], mm = m[i], vv = v[i];
    adamw_one(p, grad[i] * scale, mm, vv, lr, beta1, beta2, eps, decay, bc1, bc2);
    param[i] = p;
    m[i] = mm;
    v[i] = vv;
    if (non_finite != nullptr && !finite_(p)) *non_finite = 1.f;
    if (p16 != nullptr) p16[i] = to16(p, kind);
  }
}
