// Shared helpers of the mohawk CUDA kernels. NVRTC compiles these sources with no system
// headers, so everything here is plain CUDA C with builtins only. The TypeScript loader pastes
// this file in place of `#include "common.cuh"` (nvcc resolves the include itself).
#pragma once

typedef long long i64;
typedef unsigned int u32;
typedef unsigned short u16;

#define NEG_INF __int_as_float(0xff800000)
#define POS_INF __int_as_float(0x7f800000)
#define QNAN __int_as_float(0x7fc00000)  // the canonical NaN, as JavaScript writes it

// Storage dtype codes, shared with src/backends/cuda/index.ts (DTYPE_CODE).
#define DT_F32 0
#define DT_F64 1
#define DT_I32 2
#define DT_BF16 3
#define DT_F16 4

// Shapes and strides of up to 8 axes, passed by value.
struct Dims8 {
  i64 v[8];
};

// One thread per element over n, with a grid-stride loop (grids are capped on the host).
#define FOR_EACH(i, n) for (i64 i = (i64)blockIdx.x * blockDim.x + threadIdx.x; i < (n); i += (i64)gridDim.x * blockDim.x)

__device__ __forceinline__ bool is_nan(float x) { return x != x; }

/** max that propagates NaN (Math.max semantics, which the CPU backend follows) */
__device__ __forceinline__ float max_nan(float a, float b) { return (is_nan(a) || is_nan(b)) ? QNAN : fmaxf(a, b); }

__device__ __forceinline__ float warp_sum(float v) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}

__device__ __forceinline__ float warp_max(float v) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v = max_nan(v, __shfl_xor_sync(0xffffffffu, v, o));
  return v;
}

// Block-wide reductions; blockDim.x is a multiple of 32 (at most 1024) and `sh` holds 32 floats
// (64 for block_lse). Every thread gets the result. Each call starts with a barrier, so
// consecutive calls may share `sh`; other writes to `sh` need a __syncthreads() first.
__device__ float block_sum(float v, float* sh) {
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nw = blockDim.x >> 5;
  v = warp_sum(v);
  __syncthreads();
  if (lane == 0) sh[warp] = v;
  __syncthreads();
  v = lane < nw ? sh[lane] : 0.f;
  return warp_sum(v);
}

__device__ float block_max(float v, float* sh) {
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nw = blockDim.x >> 5;
  v = warp_max(v);
  __syncthreads();
  if (lane == 0) sh[warp] = v;
  __syncthreads();
  v = lane < nw ? sh[lane] : NEG_INF;
  return warp_max(v);
}

// Running log-sum-exp as (max m, sum s of exp(x - m)); -inf entries contribute nothing.
__device__ __forceinline__ void lse_add(float& m, float& s, float x) {
  if (x == NEG_INF) return;
  if (x > m) {
    s = s * expf(m - x) + 1.f;
    m = x;
  } else {
    s += expf(x - m);  // NaN x (or m) makes s NaN, as on the CPU
  }
}

__device__ __forceinline__ void lse_merge(float& m, float& s, float m2, float s2) {
  if (m2 == NEG_INF && !is_nan(s2)) return;
  if (m == NEG_INF && !is_nan(s)) {
    m = m2;
    s = s2;
    return;
  }
  const float mm = fmaxf(m, m2);
  s = s * expf(m - mm) + s2 * expf(m2 - mm);
  m = mm;
  if (is_nan(m2) || is_nan(s2)) s = QNAN;
}

/** Block-wide log-sum-exp of the per-thread pairs: returns m + log(s) (-inf for an empty row). */
__device__ float block_lse(float m, float s, float* sh) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) {
    const float m2 = __shfl_xor_sync(0xffffffffu, m, o);
    const float s2 = __shfl_xor_sync(0xffffffffu, s, o);
    lse_merge(m, s, m2, s2);
  }
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nw = blockDim.x >> 5;
  __syncthreads();
  if (lane == 0) {
    sh[warp] = m;
    sh[32 + warp] = s;
  }
  __syncthreads();
  m = lane < nw ? sh[lane] : NEG_INF;
  s = lane < nw ? sh[32 + lane] : 0.f;
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) {
    const float m2 = __shfl_xor_sync(0xffffffffu, m, o);
    const float s2 = __shfl_xor_sync(0xffffffffu, s, o);
    lse_merge(m, s, m2, s2);
  }
  return m + logf(s);
}

// ---- activations that several modules apply ----------------------------------------------------

#define SQRT_2_OVER_PI 0.7978845608028654f

/** 1 / (1 + e^-x), taking exp of -|x| only (no overflow, no inf / inf) */
__device__ __forceinline__ float sigmoid(float x) {
  if (x >= 0.f) return 1.f / (1.f + expf(-x));
  const float e = expf(x);
  return e / (1.f + e);
}

/** log(1 + e^x) = max(x, 0) + log1p(e^-|x|) */
__device__ __forceinline__ float softplus(float x) { return fmaxf(x, 0.f) + log1pf(expf(-fabsf(x))); }

/** the tanh approximation of GELU (Hugging Face's gelu_new) */
__device__ __forceinline__ float gelu_tanh(float x) {
  return 0.5f * x * (1.f + tanhf(SQRT_2_OVER_PI * (x + 0.044715f * x * x * x)));
}

// ---- 16-bit storage: the same bit-exact rounding as src/backends/dtype.ts ---------------------

__device__ __forceinline__ float bf16_to_f32(u16 h) { return __uint_as_float(((u32)h) << 16); }

/** round to nearest even; NaN stays a quiet NaN with its sign and top payload bits */
__device__ __forceinline__ u16 f32_to_bf16(float x) {
  const u32 bits = __float_as_uint(x);
  if ((bits & 0x7fffffffu) > 0x7f800000u) return (u16)(((bits >> 16) | 0x0040u) & 0xffffu);
  return (u16)(((bits + 0x7fffu + ((bits >> 16) & 1u)) >> 16) & 0xffffu);
}

__device__ __forceinline__ float f16_to_f32(u16 h) {
  const u32 sign = ((u32)h & 0x8000u) << 16;
  const u32 exp = ((u32)h >> 10) & 0x1fu;
  const u32 mant = (u32)h & 0x3ffu;
  if (exp == 0) {
    const float v = (float)mant * 5.9604644775390625e-8f;  // mant * 2^-24, exact
    return sign ? -v : v;
  }
  if (exp == 0x1f) return mant ? QNAN : __uint_as_float(sign | 0x7f800000u);
  return __uint_as_float(sign | ((exp + 112u) << 23) | (mant << 13));
}

/** round to nearest even, with subnormals and overflow to infinity */
__device__ __forceinline__ u16 f32_to_f16(float x) {
  const u32 bits = __float_as_uint(x);
  const u32 sign = (bits >> 16) & 0x8000u;
  const int exp = (int)((bits >> 23) & 0xffu);
  u32 mant = bits & 0x7fffffu;
  if (exp == 0xff) return (u16)(sign | 0x7c00u | (mant ? 0x200u : 0u));
  const int e = exp - 127 + 15;
  if (e >= 0x1f) return (u16)(sign | 0x7c00u);
  if (e <= 0) {
    if (e < -10) return (u16)sign;
    mant |= 0x800000u;
    const int shift = 14 - e;
    const u32 half = 1u << (shift - 1);
    const u32 rem = mant & ((1u << shift) - 1u);
    u32 r = mant >> shift;
    if (rem > half || (rem == half && (r & 1u))) r++;
    return (u16)(sign | r);
  }
  const u32 rem = mant & 0x1fffu;
  u32 r = ((u32)e << 10) | (mant >> 13);
  if (rem > 0x1000u || (rem == 0x1000u && (r & 1u))) r++;
  return (u16)(sign | r);
}

// ---- a float in storage chosen at run time ---------------------------------------------------
// Two code sets reach the kernels: the storage codes of the glue kernels (host.ts storage(): 0 f32,
// 1 bf16, 2 f16) and the dtype codes above (host.ts DTYPE_CODE, decode.cu and gemv.cu's outputs).

/** x rounded to 16 bits: bf16 when t == 1, else f16 */
__device__ __forceinline__ u16 to16(float x, int t) { return t == 1 ? f32_to_bf16(x) : f32_to_f16(x); }

/** h widened from 16 bits: bf16 when t == 1, else f16 */
__device__ __forceinline__ float from16(u16 h, int t) { return t == 1 ? bf16_to_f32(h) : f16_to_f32(h); }

/** p[i] as f32, p in storage t (1 bf16, 2 f16, else f32) */
__device__ __forceinline__ float load_any(const void* p, int t, i64 i) {
  if (t == 1) return bf16_to_f32(((const u16*)p)[i]);
  if (t == 2) return f16_to_f32(((const u16*)p)[i]);
  return ((const float*)p)[i];
}

/** p[i] = v, p in storage t (1 bf16, 2 f16, else f32) */
__device__ __forceinline__ void store_any(void* p, int t, i64 i, float v) {
  if (t == 1) ((u16*)p)[i] = f32_to_bf16(v);
  else if (t == 2) ((u16*)p)[i] = f32_to_f16(v);
  else ((float*)p)[i] = v;
}

/** out[i] = v, out in dtype dt (DT_BF16, DT_F16, else f32) */
__device__ __forceinline__ void store_dtype(void* out, int dt, i64 i, float v) {
  if (dt == DT_BF16)
    ((u16*)out)[i] = f32_to_bf16(v);
  else if (dt == DT_F16)
    ((u16*)out)[i] = f32_to_f16(v);
  else
    ((float*)out)[i] = v;
}

// ---- the optimizer ---------------------------------------------------------------------------

/**
 * One decoupled-weight-decay Adam step on one element (elementwise.cu's adamw kernels and
 * optim.cu's fused one). bc1 = 1 - beta1^step and bc2 = 1 - beta2^step come from the host (in
 * double, then rounded); decay = 1 - lr weight_decay, or 1 where no decay applies.
 */
__device__ __forceinline__ void adamw_one(float& p, float g, float& m, float& v, float lr, float beta1, float beta2,
                                          float eps, float decay, float bc1, float bc2) {
  m = beta1 * m + (1.f - beta1) * g;
  v = beta2 * v + (1.f - beta2) * g * g;
  p = p * decay - (lr * (m / bc1)) / (sqrtf(v / bc2) + eps);
}
