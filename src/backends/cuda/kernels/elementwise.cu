// Elementwise kernels: fill, cast, unary ops and their derivatives, strided binary ops, strided
// copies, the causal mask, dropout and the fused AdamW step. All f32 unless stated.
#include "common.cuh"

// Unary op codes, shared with src/backends/cuda/index.ts (UNARY_CODE).
#define U_IDENTITY 0
#define U_NEG 1
#define U_EXP 2
#define U_LOG 3
#define U_SQRT 4
#define U_RSQRT 5
#define U_TANH 6
#define U_SIGMOID 7
#define U_SOFTPLUS 8
#define U_SILU 9
#define U_RELU 10
#define U_GELU 11
#define U_GELU_NEW 12
#define U_SQUARE 13
#define U_ABS 14
#define U_RECIPROCAL 15

#define INV_SQRT_2 0.7071067811865476f
#define INV_SQRT_2PI 0.3989422804014327f

__device__ __forceinline__ float unary_f(int op, float x) {
  switch (op) {
    case U_IDENTITY: return x;
    case U_NEG: return -x;
    case U_EXP: return expf(x);
    case U_LOG: return logf(x);
    case U_SQRT: return sqrtf(x);
    case U_RSQRT: return 1.f / sqrtf(x);
    case U_TANH: return tanhf(x);
    case U_SIGMOID: return sigmoid(x);
    case U_SOFTPLUS: return softplus(x);
    case U_SILU: return x * sigmoid(x);
    case U_RELU: return x > 0.f ? x : 0.f;
    case U_GELU: return 0.5f * x * (1.f + erff(x * INV_SQRT_2));
    case U_GELU_NEW: return gelu_tanh(x);
    case U_SQUARE: return x * x;
    case U_ABS: return fabsf(x);
    case U_RECIPROCAL: return 1.f / x;
  }
  return QNAN;
}

/** f'(x) */
__device__ __forceinline__ float unary_df(int op, float x) {
  switch (op) {
    case U_IDENTITY: return 1.f;
    case U_NEG: return -1.f;
    case U_EXP: return expf(x);
    case U_LOG: return 1.f / x;
    case U_SQRT: return 0.5f / sqrtf(x);
    case U_RSQRT: return -0.5f / (x * sqrtf(x));
    case U_TANH: {
      const float t = tanhf(x);
      return 1.f - t * t;
    }
    case U_SIGMOID: {
      const float s = sigmoid(x);
      return s * (1.f - s);
    }
    case U_SOFTPLUS: return sigmoid(x);
    case U_SILU: {
      const float s = sigmoid(x);
      return s * (1.f + x * (1.f - s));
    }
    case U_RELU: return x > 0.f ? 1.f : 0.f;
    case U_GELU: return 0.5f * (1.f + erff(x * INV_SQRT_2)) + x * INV_SQRT_2PI * expf(-0.5f * x * x);
    case U_GELU_NEW: {
      const float t = tanhf(SQRT_2_OVER_PI * (x + 0.044715f * x * x * x));
      return 0.5f * (1.f + t) + 0.5f * x * (1.f - t * t) * SQRT_2_OVER_PI * (1.f + 3.f * 0.044715f * x * x);
    }
    case U_SQUARE: return 2.f * x;
    case U_ABS: return x > 0.f ? 1.f : (x < 0.f ? -1.f : 0.f);
    case U_RECIPROCAL: return -1.f / (x * x);
  }
  return QNAN;
}

/** x, out (n): out = alpha * f(x) + beta */
extern "C" __global__ void unary_f32(const float* x, float* out, int op, float alpha, float beta, i64 n) {
  FOR_EACH(i, n) out[i] = alpha * unary_f(op, x[i]) + beta;
}

/** the same into 16-bit storage (bf16 when bf16 != 0, else f16), rounded to nearest even */
extern "C" __global__ void unary_f32_to16(const float* x, u16* out, int op, float alpha, float beta, int bf16, i64 n) {
  FOR_EACH(i, n) {
    const float v = alpha * unary_f(op, x[i]) + beta;
    out[i] = bf16 ? f32_to_bf16(v) : f32_to_f16(v);
  }
}

/** x, gy, gx (n): gx = gy * f'(x); gx may alias gy */
extern "C" __global__ void unary_backward_f32(const float* x, const float* gy, float* gx, int op, i64 n) {
  FOR_EACH(i, n) gx[i] = gy[i] * unary_df(op, x[i]);
}

// Binary op codes, shared with index.ts (BINARY_CODE).
#define B_ADD 0
#define B_SUB 1
#define B_MUL 2
#define B_DIV 3
#define B_MAXIMUM 4
#define B_EQ 5

__device__ __forceinline__ float binary_f(int op, float x, float y) {
  switch (op) {
    case B_ADD: return x + y;
    case B_SUB: return x - y;
    case B_MUL: return x * y;
    case B_DIV: return x / y;
    case B_MAXIMUM: return max_nan(x, y);
    case B_EQ: return x == y ? 1.f : 0.f;
  }
  return QNAN;
}

// ---- strided loops ------------------------------------------------------------------------------
// Every strided kernel comes in two index widths: 64-bit (any size) and 32-bit (`_i32`), which the
// host picks when the element count and every offset stay below 2^31 (64-bit division costs tens
// of instructions per axis and makes these loops compute-bound). The host merges axes first, so
// nd is usually 1 or 2; the outermost axis needs no division at all.

#define FOR_EACH_T(U, i, n) \
  for (U i = (U)blockIdx.x * blockDim.x + threadIdx.x; i < (U)(n); i += (U)gridDim.x * blockDim.x)

/** Offsets of element i of `shape` under two stride sets; axis 0 is the outermost. */
template <typename U, typename S>
__device__ __forceinline__ void strided_offsets(U i, int nd, const Dims8& shape, const Dims8& s1, const Dims8& s2,
                                                S& o1, S& o2) {
  U rem = i;
  o1 = 0;
  o2 = 0;
#pragma unroll
  for (int d = 7; d >= 1; d--) {
    if (d < nd) {
      const U len = (U)shape.v[d];
      const U q = rem / len;
      const S idx = (S)(rem - q * len);
      rem = q;
      o1 += idx * (S)s1.v[d];
      o2 += idx * (S)s2.v[d];
    }
  }
  if (nd > 0) {
    o1 += (S)rem * (S)s1.v[0];
    o2 += (S)rem * (S)s2.v[0];
  }
}

/** out[i] = a[i . sa] op b[i . sb] over `shape` (nd axes, at most 8), out dense (n elements). */
template <typename U, typename S>
__device__ __forceinline__ void binary_strided(const float* a, const float* b, float* out, int op, int nd,
                                               const Dims8& shape, const Dims8& sa, const Dims8& sb, i64 n) {
  if (nd == 1 && sa.v[0] == 1 && sb.v[0] == 1) {
    FOR_EACH_T(U, i, n) out[i] = binary_f(op, a[i], b[i]);
    return;
  }
  FOR_EACH_T(U, i, n) {
    S oa, ob;
    strided_offsets<U, S>(i, nd, shape, sa, sb, oa, ob);
    out[i] = binary_f(op, a[oa], b[ob]);
  }
}

/** dst[dOff + idx . ds] = src[sOff + idx . ss] over shape (n elements) */
template <typename U, typename S, typename T>
__device__ __forceinline__ void copy_strided(const T* src, i64 sOff, T* dst, i64 dOff, int nd, const Dims8& shape,
                                             const Dims8& ss, const Dims8& ds, i64 n) {
  src += sOff;
  dst += dOff;
  FOR_EACH_T(U, i, n) {
    S os, od;
    strided_offsets<U, S>(i, nd, shape, ss, ds, os, od);
    dst[od] = src[os];
  }
}

/** dst[...] += src[...]; `atomic` when several indices land on one destination (a zero stride) */
template <typename U, typename S, typename T>
__device__ __forceinline__ void accumulate_strided(const T* src, i64 sOff, T* dst, i64 dOff, int nd,
                                                   const Dims8& shape, const Dims8& ss, const Dims8& ds, i64 n,
                                                   int atomic) {
  src += sOff;
  dst += dOff;
  FOR_EACH_T(U, i, n) {
    S os, od;
    strided_offsets<U, S>(i, nd, shape, ss, ds, os, od);
    if (atomic)
      atomicAdd(dst + od, src[os]);
    else
      dst[od] += src[os];
  }
}

#define BINARY_KERNEL(NAME, U, S)                                                                      \
  extern "C" __global__ void NAME(const float* a, const float* b, float* out, int op, int nd, Dims8 shape, \
                                  Dims8 sa, Dims8 sb, i64 n) {                                         \
    binary_strided<U, S>(a, b, out, op, nd, shape, sa, sb, n);                                         \
  }
BINARY_KERNEL(binary_f32, i64, i64)
BINARY_KERNEL(binary_f32_i32, unsigned, int)

#define COPY_KERNEL(NAME, T, U, S)                                                                    \
  extern "C" __global__ void NAME(const T* src, i64 sOff, T* dst, i64 dOff, int nd, Dims8 shape, Dims8 ss, \
                                  Dims8 ds, i64 n) {                                                  \
    copy_strided<U, S, T>(src, sOff, dst, dOff, nd, shape, ss, ds, n);                                 \
  }
COPY_KERNEL(copy_b4, u32, i64, i64)
COPY_KERNEL(copy_b2, u16, i64, i64)
COPY_KERNEL(copy_b8, i64, i64, i64)
COPY_KERNEL(copy_b4_i32, u32, unsigned, int)
COPY_KERNEL(copy_b2_i32, u16, unsigned, int)
COPY_KERNEL(copy_b8_i32, i64, unsigned, int)

#define ACCUMULATE_KERNEL(NAME, T, U, S)                                                              \
  extern "C" __global__ void NAME(const T* src, i64 sOff, T* dst, i64 dOff, int nd, Dims8 shape, Dims8 ss, \
                                  Dims8 ds, i64 n, int atomic) {                                      \
    accumulate_strided<U, S, T>(src, sOff, dst, dOff, nd, shape, ss, ds, n, atomic);                  \
  }
ACCUMULATE_KERNEL(accumulate_f32, float, i64, i64)
ACCUMULATE_KERNEL(accumulate_f64, double, i64, i64)
ACCUMULATE_KERNEL(accumulate_i32, int, i64, i64)
ACCUMULATE_KERNEL(accumulate_f32_i32, float, unsigned, int)

/** out (n) f64 = value */
extern "C" __global__ void fill_f64(double* out, double value, i64 n) {
  FOR_EACH(i, n) out[i] = value;
}

__device__ __forceinline__ double load_as_double(const void* x, int dt, i64 i) {
  switch (dt) {
    case DT_F32: return (double)((const float*)x)[i];
    case DT_F64: return ((const double*)x)[i];
    case DT_I32: return (double)((const int*)x)[i];
    case DT_BF16: return (double)bf16_to_f32(((const u16*)x)[i]);
    case DT_F16: return (double)f16_to_f32(((const u16*)x)[i]);
  }
  return 0.0;
}

/**
 * x (n) of dtype xt -> out (n) of dtype ot. As on the CPU: values go through double, then f32
 * before bf16/f16 (round to nearest even each time); i32 truncates toward zero and wraps (ToInt32).
 */
extern "C" __global__ void cast_any(const void* x, int xt, void* out, int ot, i64 n) {
  FOR_EACH(i, n) {
    const double v = load_as_double(x, xt, i);
    switch (ot) {
      case DT_F32: ((float*)out)[i] = (float)v; break;
      case DT_F64: ((double*)out)[i] = v; break;
      case DT_I32: {  // ToInt32: truncate, then modulo 2^32 (fmod is exact); NaN and infinities give 0
        double r = fmod(trunc(v), 4294967296.0);
        if (r != r || r == POS_INF || r == NEG_INF) r = 0.0;
        if (r < 0.0) r += 4294967296.0;
        ((int*)out)[i] = (int)(u32)r;
        break;
      }
      case DT_BF16: ((u16*)out)[i] = f32_to_bf16((float)v); break;
      case DT_F16: ((u16*)out)[i] = f32_to_f16((float)v); break;
    }
  }
}

/** x, out (rows, tq, tk): entries with key s > query t + (tk - tq) become `value` */
extern "C" __global__ void causal_mask_f32(const float* x, float* out, i64 rows, int tq, int tk, float value) {
  const i64 n = rows * tq * tk;
  const int shift = tk - tq;
  FOR_EACH(i, n) {
    const int s = (int)(i % tk);
    const int t = (int)((i / tk) % tq);
    out[i] = s > t + shift ? value : x[i];
  }
}

/** The counter-based hash of backend.ts (hashUniform), bit for bit. */
__device__ __forceinline__ double hash_uniform(u32 seed, u32 index) {
  u32 h = ((index ^ 0x9e3779b9u) * 0x85ebca6bu) ^ (seed * 0xc2b2ae35u);
  h ^= h >> 16;
  h *= 0x7feb352du;
  h ^= h >> 15;
  h *= 0x846ca68bu;
  h ^= h >> 16;
  return (double)h / 4294967296.0;
}

/** x, out (n): out = keep ? x / (1 - p) : 0, keep = hash(seed, i) >= p (computed in double as on the CPU) */
extern "C" __global__ void dropout_f32(const float* x, float* out, double p, u32 seed, i64 n) {
  const double scale = 1.0 / (1.0 - p);
  FOR_EACH(i, n) out[i] = hash_uniform(seed, (u32)i) >= p ? (float)((double)x[i] * scale) : 0.f;
}

/**
 * One AdamW step (common.cuh's adamw_one) in place on param, grad, m, v (n) f32; four elements per
 * thread per iteration (128-bit accesses), then the tail.
 */
extern "C" __global__ void adamw_f32(float* param, const float* grad, float* m, float* v, float lr, float beta1,
                                     float beta2, float eps, float decay, float bc1, float bc2, i64 n) {
  const i64 quads = n / 4;
  float4* p4 = (float4*)param;
  const float4* g4 = (const float4*)grad;
  float4* m4 = (float4*)m;
  float4* v4 = (float4*)v;
  FOR_EACH(i, quads) {
    float4 p = p4[i], mm = m4[i], vv = v4[i];
    const float4 g = g4[i];
    adamw_one(p.x, g.x, mm.x, vv.x, lr, beta1, beta2, eps, decay, bc1, bc2);
    adamw_one(p.y, g.y, mm.y, vv.y, lr, beta1, beta2, eps, decay, bc1, bc2);
    adamw_one(p.z, g.z, mm.z, vv.z, lr, beta1, beta2, eps, decay, bc1, bc2);
    adamw_one(p.w, g.w, mm.w, vv.w, lr, beta1, beta2, eps, decay, bc1, bc2);
    p4[i] = p;
    m4[i] = mm;
    v4[i] = vv;
  }
  if (blockIdx.x == 0 && threadIdx.x < n - quads * 4) {
    const i64 i = quads * 4 + threadIdx.x;
    adamw_one(param[i], grad[i], m[i], v[i], lr, beta1, beta2, eps, decay, bc1, bc2);
  }
}

/**
 * adamw_f32 with the step's numbers read from a device buffer (a captured step replays with new
 * values): scalars (f64) = [lr, grad scale, ..., 1 - beta1^t at bias_at, 1 - beta2^t at bias_at + 1].
 * param, grad, m, v (n) f32; row_abs (n / row_len) f32 or null: the decay 1 - lr wd applies to the
 * rows whose entry is non-zero (every element when null). The same float arithmetic as adamw_f32,
 * with g' = scale g.
 */
extern "C" __global__ void adamw_device_f32(float* param, const float* grad, float* m, float* v,
                                            const double* scalars, const float* row_abs, i64 row_len, int bias_at,
                                            float beta1, float beta2, float eps, double wd, i64 n) {
  const float lr = (float)scalars[0];
  const float scale = (float)scalars[1];
  const float bc1 = (float)scalars[bias_at];
  const float bc2 = (float)scalars[bias_at + 1];
  const float decay_all = (float)(1.0 - scalars[0] * wd);
  FOR_EACH(i, n) {
    const float decay = row_abs == nullptr || row_abs[i / row_len] != 0.f ? decay_all : 1.f;
    float p = param[i], mm = m[i], vv = v[i];
    adamw_one(p, grad[i] * scale, mm, vv, lr, beta1, beta2, eps, decay, bc1, bc2);
    param[i] = p;
    m[i] = mm;
    v[i] = vv;
  }
}

/** out = y * silu(z + bias[col]) over (rows, cols): the Mamba mixer's output gate in one pass */
extern "C" __global__ void silu_gate_f32(const float* y, const float* z, const float* bias, float* out, i64 rows,
                                         int cols) {
  const i64 n = rows * cols;
  FOR_EACH(i, n) {
    const float u = z[i] + bias[i % cols];
    out[i] = y[i] * u * sigmoid(u);
  }
}

/** gy = g silu(u), gz = g y silu'(u), u = z + bias[col] */
extern "C" __global__ void silu_gate_backward_f32(const float* y, const float* z, const float* bias, const float* g,
                                                  float* gy, float* gz, i64 rows, int cols) {
  const i64 n = rows * cols;
  FOR_EACH(i, n) {
    const float u = z[i] + bias[i % cols];
    const float s = sigmoid(u);
    const float gi = g[i];
    gy[i] = gi * u * s;
    gz[i] = gi * y[i] * s * (1.f + u * (1.f - s));
  }
}

// ---- the autocast casts ------------------------------------------------------------------------
// f32 <-> bf16, the casts mixed precision does around every matmul: the same values as cast_any
// (f32 -> double -> f32 is exact), without the per-element type switches and the double round
// trip; two elements per thread per iteration through 64-bit / 32-bit accesses when aligned.

extern "C" __global__ void cast_f32_bf16(const float* x, u16* out, i64 n) {
  const i64 pairs = n / 2;
  const float2* x2 = (const float2*)x;
  u32* o2 = (u32*)out;
  FOR_EACH(i, pairs) {
    const float2 v = x2[i];
    o2[i] = (u32)f32_to_bf16(v.x) | ((u32)f32_to_bf16(v.y) << 16);
  }
  if (n % 2 && blockIdx.x == 0 && threadIdx.x == 0) out[n - 1] = f32_to_bf16(x[n - 1]);
}

extern "C" __global__ void cast_bf16_f32(const u16* x, float* out, i64 n) {
  const i64 pairs = n / 2;
  const u32* x2 = (const u32*)x;
  float2* o2 = (float2*)out;
  FOR_EACH(i, pairs) {
    const u32 v = x2[i];
    o2[i] = make_float2(bf16_to_f32((u16)(v & 0xffff)), bf16_to_f32((u16)(v >> 16)));
  }
  if (n % 2 && blockIdx.x == 0 && threadIdx.x == 0) out[n - 1] = bf16_to_f32(x[n - 1]);
}

// ---- fused glue of the training step (issue 18) --------------------------------------------------
// Storage codes of these kernels: 0 = f32, 1 = bf16, 2 = f16 (load_any, store_any in common.cuh).

/**
 * x (n) f32 -> out = f(x) and xk = x, both in 16 bits (bf16 when bf16 != 0, else f16): an
 * activation feeding a 16-bit product whose backward then reads the 16-bit copy of its input.
 */
extern "C" __global__ void unary_f32_to16_keep(const float* x, u16* out, u16* xk, int op, int bf16, i64 n) {
  FOR_EACH(i, n) {
    const float v = x[i];
    out[i] = bf16 ? f32_to_bf16(unary_f(op, v)) : f32_to_f16(unary_f(op, v));
    xk[i] = bf16 ? f32_to_bf16(v) : f32_to_f16(v);
  }
}

/** x (n) in 16 bits (xt 1 = bf16, 2 = f16), gy, gx (n) f32: gx = gy * f'(x); gx may alias gy */
extern "C" __global__ void unary_backward_from16(const u16* x, const float* gy, float* gx, int op, int xt, i64 n) {
  FOR_EACH(i, n) gx[i] = gy[i] * unary_df(op, load_any(x, xt, i));
}

/**
 * The gated MLP's product: g, u (n) f32 -> out = f(g) * u in storage ot; with keep != 0 also g and
 * u rounded to the same 16-bit storage (gk, uk) for the backward.
 */
extern "C" __global__ void gated_act_f32(const float* g, const float* u, void* out, int ot, u16* gk, u16* uk,
                                         int keep, int op, i64 n) {
  FOR_EACH(i, n) {
    const float a = g[i];
    const float b = u[i];
    store_any(out, ot, i, unary_f(op, a) * b);
    if (keep) {
      store_any(gk, ot, i, a);
      store_any(uk, ot, i, b);
    }
  }
}

/**
 * g, u (n) in storage st (f32 or 16 bits), go (n) f32 -> gg = go * u * f'(g), gu = go * f(g) in
 * storage gt (16 bits where they only feed 16-bit products)
 */
extern "C" __global__ void gated_act_backward_f32(const void* g, const void* u, int st, const float* go, void* gg,
                                                  void* gu, int gt, int op, i64 n) {
  FOR_EACH(i, n) {
    const float a = load_any(g, st, i);
    const float b = load_any(u, st, i);
    const float o = go[i];
    store_any(gg, gt, i, o * b * unary_df(op, a));
    store_any(gu, gt, i, o * unary_f(op, a));
  }
}

/**
 * The mixer's output with its D term: y, x, z (rows, cols) f32, D (cols / headDim), bias (cols):
 * v = y + D[col / headDim] x, out = v * silu(z + bias[col]) in storage ot; with keep != 0 also y
 * and z rounded to out's 16-bit storage (yk, zk) for the backward.
 */
extern "C" __global__ void silu_gate_d_f32(const float* y, const float* x, const float* D, const float* z,
                                           const float* bias, void* out, int ot, u16* yk, u16* zk, int keep,
                                           i64 rows, int cols, int headDim) {
  const i64 n = rows * cols;
  FOR_EACH(i, n) {
    const int c = (int)(i % cols);
    const float zi = z[i];
    const float yi = y[i];
    const float u = zi + bias[c];
    const float v = yi + D[c / headDim] * x[i];
    store_any(out, ot, i, v * u * sigmoid(u));
    if (keep) {
      store_any(yk, ot, i, yi);
      store_any(zk, ot, i, zi);
    }
  }
}

/**
 * Its backward, one thread per column over a band of rowsPerBlock rows (blockIdx.y), so the D
 * gradient's column sums need no atomics: gy = g silu(u), gx = gy D, gz = g v silu'(u), and
 * partial[blockIdx.y, col] = sum over the band of gy x (then summed over bands and each head's
 * columns by the caller). y and z in storage st (f32, or the 16-bit copies the forward kept).
 */
extern "C" __global__ void silu_gate_d_backward_f32(const void* y, const float* x, const float* D, const void* z,
                                                    int st, const float* bias, const float* g, float* gy,
                                                    float* gx, float* gz, float* partial, i64 rows, int cols,
                                                    int headDim, int rowsPerBlock) {
  const int c = blockIdx.x * blockDim.x + threadIdx.x;
  if (c >= cols) return;
  const float b = bias[c];
  const float d = D[c / headDim];
  const i64 r0 = (i64)blockIdx.y * rowsPerBlock;
  const i64 r1 = min(rows, r0 + rowsPerBlock);
  float acc = 0.f;
  for (i64 r = r0; r < r1; r++) {
    const i64 i = r * cols + c;
    const float u = load_any(z, st, i) + b;
    const float s = sigmoid(u);
    const float xi = x[i];
    const float v = load_any(y, st, i) + d * xi;
    const float gi = g[i];
    const float gyi = gi * u * s;
    gy[i] = gyi;
    gx[i] = gyi * d;
    gz[i] = gi * v * s * (1.f + u * (1.f - s));
    acc += gyi * xi;
  }
  partial[(i64)blockIdx.y * cols + c] = acc;
}

/** a, b, c, out (n) f32: out = a + b + c (the Phi block's two residual adds in one pass) */
extern "C" __global__ void add3_f32(const float* a, const float* b, const float* c, float* out, i64 n) {
  FOR_EACH(i, n) out[i] = (a[i] + b[i]) + c[i];
}

/**
 * A 2-d copy of 4-byte elements, 16 bytes per thread: dst[dOff + r dPitch + j] = src[sOff + r sPitch
 * + j] for r < rows, j < width (width, pitches and offsets multiples of 4 elements, 16-byte aligned
 * bases): a column block of a matrix (the in_proj split and its gradient) at full bandwidth.
 */
extern "C" __global__ void copy2d_b4x4(const u32* src, i64 sOff, i64 sPitch, u32* dst, i64 dOff, i64 dPitch,
                                       i64 rows, int width) {
  const int w4 = width >> 2;
  const i64 n = rows * w4;
  FOR_EACH(i, n) {
    const i64 r = i / w4;
    const i64 j = (i - r * w4) * 4;
    *(uint4*)(dst + dOff + r * dPitch + j) = *(const uint4*)(src + sOff + r * sPitch + j);
  }
}

// ---- four elements per thread (n % 4 == 0; device buffers are 256-byte aligned) -----------------
// The same per-element arithmetic as the kernels above, with 16-byte (f32) and 8-byte (16-bit)
// accesses: these passes are bandwidth-bound and the 2-byte accesses left half of it unused.

__device__ __forceinline__ float4 load4(const void* p, int t, i64 q) {
  if (t == 0) return ((const float4*)p)[q];
  const uint2 v = ((const uint2*)p)[q];
  const u16 h[4] = {(u16)(v.x & 0xffffu), (u16)(v.x >> 16), (u16)(v.y & 0xffffu), (u16)(v.y >> 16)};
  float f[4];
#pragma unroll
  for (int k = 0; k < 4; k++) f[k] = from16(h[k], t);
  return make_float4(f[0], f[1], f[2], f[3]);
}

__device__ __forceinline__ void store4(void* p, int t, i64 q, float4 v) {
  if (t == 0) {
    ((float4*)p)[q] = v;
    return;
  }
  const float f[4] = {v.x, v.y, v.z, v.w};
  u32 h[4];
#pragma unroll
  for (int k = 0; k < 4; k++) h[k] = to16(f[k], t);
  ((uint2*)p)[q] = make_uint2(h[0] | (h[1] << 16), h[2] | (h[3] << 16));
}

#define MAP4(v, expr)       \
  do {                      \
    float* _v = (float*)&v; \
    for (int k = 0; k < 4; k++) _v[k] = (expr); \
  } while (0)

extern "C" __global__ void unary_f32_to16_keep_x4(const float* x, u16* out, u16* xk, int op, int bf16, i64 n) {
  const int t = bf16 ? 1 : 2;
  FOR_EACH(q, n / 4) {
    const float4 v = ((const float4*)x)[q];
    const float* a = (const float*)&v;
    float4 o;
    MAP4(o, unary_f(op, a[k]));
    store4(out, t, q, o);
    store4(xk, t, q, v);
  }
}

extern "C" __global__ void unary_backward_from16_x4(const u16* x, const float* gy, float* gx, int op, int xt, i64 n) {
  FOR_EACH(q, n / 4) {
    const float4 xv = load4(x, xt, q);
    const float4 g = ((const float4*)gy)[q];
    const float* a = (const float*)&xv;
    const float* b = (const float*)&g;
    float4 o;
    MAP4(o, b[k] * unary_df(op, a[k]));
    ((float4*)gx)[q] = o;
  }
}

// ---- a linear layer's output gradient for its 16-bit products, with the bias gradient -----------
// (biasgrad, issue 18) One read of the f32 gradient instead of two (the cast, then a column sum).
// Rows of COLSUM_TY threads walk a block's rows; each thread holds four columns (x4) or one.
#define COLSUM_TX 32
#define COLSUM_TY 8
// OP of cast_colsum: a plain cast, or the derivative of the runtime op; others are the op itself
#define COLSUM_PLAIN -1
#define COLSUM_ANY_OP -2

/**
 * g (rows, cols) f32 -> v = g, or g * f'(x) for an op (x (rows, cols) in 16 bits, xt 1 = bf16,
 * 2 = f16: the input an activation kept); g16 (rows, cols) = v rounded to ot (1 bf16, 2 f16);
 * partial (gridDim.y, cols) f32: partial[s, c] = the sum of v over the rows [s chunk, (s + 1) chunk)
 * of column c, in a fixed order (each thread its rows in turn, then the COLSUM_TY threads of a
 * column in turn), so the result does not depend on scheduling. Blocks of COLSUM_TX * COLSUM_TY
 * threads (COLSUM_TY rows of COLSUM_TX); blockIdx.x = a tile of COLSUM_TX * W columns (W = 4 needs
 * cols % 4 == 0: 16-byte rows), blockIdx.y = s. OP: COLSUM_PLAIN, COLSUM_ANY_OP (f' of `op`, its
 * switch inside the loop: not unrolled, to keep the code small) or a unary op code known at compile
 * time (one derivative inlined, rows unrolled four times). sh holds COLSUM_TY * COLSUM_TX * W floats.
 */
template <int W, int OP>
__device__ __forceinline__ void cast_colsum(const float* __restrict__ g, const u16* __restrict__ x, int op, int xt,
                                            u16* __restrict__ g16, int ot, float* __restrict__ partial, i64 rows,
                                            i64 cols, i64 chunk, float* sh) {
  const int tx = threadIdx.x % COLSUM_TX, ty = threadIdx.x / COLSUM_TX;
  const int dop = OP == COLSUM_ANY_OP ? op : OP;
  const i64 c0 = ((i64)blockIdx.x * COLSUM_TX + tx) * W;
  const i64 r0 = (i64)blockIdx.y * chunk;
  const i64 r1 = r0 + chunk < rows ? r0 + chunk : rows;
  float acc[W];
#pragma unroll
  for (int k = 0; k < W; k++) acc[k] = 0.f;
  constexpr int unroll = OP == COLSUM_ANY_OP ? 1 : 4;
  if (c0 < cols) {
#pragma unroll(unroll)
    for (i64 r = r0 + ty; r < r1; r += COLSUM_TY) {
      const i64 i = r * cols + c0;
      float v[W];
      if constexpr (W == 4) {
        const float4 gv = *(const float4*)(g + i);
        v[0] = gv.x;
        v[1] = gv.y;
        v[2] = gv.z;
        v[3] = gv.w;
        if constexpr (OP != COLSUM_PLAIN) {
          const float4 xv = load4(x, xt, i / 4);
          const float* a = (const float*)&xv;
#pragma unroll
          for (int k = 0; k < W; k++) v[k] *= unary_df(dop, a[k]);
        }
        store4(g16, ot, i / 4, make_float4(v[0], v[1], v[2], v[3]));
      } else {
        v[0] = g[i];
        if constexpr (OP != COLSUM_PLAIN) v[0] *= unary_df(dop, load_any(x, xt, i));
        store_any(g16, ot, i, v[0]);
      }
#pragma unroll
      for (int k = 0; k < W; k++) acc[k] += v[k];
    }
  }
#pragma unroll
  for (int k = 0; k < W; k++) sh[ty * COLSUM_TX * W + tx * W + k] = acc[k];
  __syncthreads();
  if (ty == 0 && c0 < cols) {
#pragma unroll
    for (int k = 0; k < W; k++) {
      float s = 0.f;
#pragma unroll
      for (int y = 0; y < COLSUM_TY; y++) s += sh[y * COLSUM_TX * W + tx * W + k];
      partial[(i64)blockIdx.y * cols + c0 + k] = s;
    }
  }
}

// a plain cast (op < 0) and through an activation's derivative (op >= 0) are separate kernels: the
// derivative's registers would otherwise lower the plain pass's occupancy; the tanh GELU (the Phi
// MLP's) gets its own inlined derivative
extern "C" __global__ void cast_colsum_x4(const float* g, const u16* x, int op, int xt, u16* g16, int ot,
                                          float* partial, i64 rows, i64 cols, i64 chunk) {
  __shared__ float sh[COLSUM_TY * COLSUM_TX * 4];
  cast_colsum<4, COLSUM_PLAIN>(g, x, op, xt, g16, ot, partial, rows, cols, chunk, sh);
}
extern "C" __global__ void cast_colsum_act_x4(const float* g, const u16* x, int op, int xt, u16* g16, int ot,
                                              float* partial, i64 rows, i64 cols, i64 chunk) {
  __shared__ float sh[COLSUM_TY * COLSUM_TX * 4];
  if (op == U_GELU_NEW)
    cast_colsum<4, U_GELU_NEW>(g, x, op, xt, g16, ot, partial, rows, cols, chunk, sh);
  else
    cast_colsum<4, COLSUM_ANY_OP>(g, x, op, xt, g16, ot, partial, rows, cols, chunk, sh);
}
extern "C" __global__ void cast_colsum_x1(const float* g, const u16* x, int op, int xt, u16* g16, int ot,
                                          float* partial, i64 rows, i64 cols, i64 chunk) {
  __shared__ float sh[COLSUM_TY * COLSUM_TX];
  cast_colsum<1, COLSUM_PLAIN>(g, x, op, xt, g16, ot, partial, rows, cols, chunk, sh);
}
extern "C" __global__ void cast_colsum_act_x1(const float* g, const u16* x, int op, int xt, u16* g16, int ot,
                                              float* partial, i64 rows, i64 cols, i64 chunk) {
  __shared__ float sh[COLSUM_TY * COLSUM_TX];
  cast_colsum<1, COLSUM_ANY_OP>(g, x, op, xt, g16, ot, partial, rows, cols, chunk, sh);
}

extern "C" __global__ void gated_act_x4(const float* g, const float* u, void* out, int ot, u16* gk, u16* uk, int keep,
                                        int op, i64 n) {
  FOR_EACH(q, n / 4) {
    const float4 gv = ((const float4*)g)[q];
    const float4 uv = ((const float4*)u)[q];
    const float* a = (const float*)&gv;
    const float* b = (const float*)&uv;
    float4 o;
    MAP4(o, unary_f(op, a[k]) * b[k]);
    store4(out, ot, q, o);
    if (keep) {
      store4(gk, ot, q, gv);
      store4(uk, ot, q, uv);
    }
  }
}

extern "C" __global__ void gated_act_backward_x4(const void* g, const void* u, int st, const float* go, void* gg,
                                                 void* gu, int gt, int op, i64 n) {
  FOR_EACH(q, n / 4) {
    const float4 gv = load4(g, st, q);
    const float4 uv = load4(u, st, q);
    const float4 ov = ((const float4*)go)[q];
    const float* a = (const float*)&gv;
    const float* b = (const float*)&uv;
    const float* o = (const float*)&ov;
    float4 r1, r2;
    MAP4(r1, o[k] * b[k] * unary_df(op, a[k]));
    MAP4(r2, o[k] * unary_f(op, a[k]));
    store4(gg, gt, q, r1);
    store4(gu, gt, q, r2);
  }
}

extern "C" __global__ void silu_gate_d_x4(const float* y, const float* x, const float* D, const float* z,
                                          const float* bias, void* out, int ot, u16* yk, u16* zk, int keep, i64 rows,
                                          int cols, int headDim) {
  const i64 n = rows * cols;
  FOR_EACH(q, n / 4) {
    const float4 yv = ((const float4*)y)[q];
    const float4 xv = ((const float4*)x)[q];
    const float4 zv = ((const float4*)z)[q];
    const float* ya = (const float*)&yv;
    const float* xa = (const float*)&xv;
    const float* za = (const float*)&zv;
    float4 o;
    float* oa = (float*)&o;
#pragma unroll
    for (int k = 0; k < 4; k++) {
      const int c = (int)((q * 4 + k) % cols);
      const float u = za[k] + bias[c];
      const float v = ya[k] + D[c / headDim] * xa[k];
      oa[k] = v * u * sigmoid(u);
    }
    store4(out, ot, q, o);
    if (keep) {
      store4(yk, ot, q, yv);
      store4(zk, ot, q, zv);
    }
  }
}

extern "C" __global__ void unary_f32_to16_x4(const float* x, u16* out, int op, float alpha, float beta, int bf16,
                                             i64 n) {
  const int t = bf16 ? 1 : 2;
  FOR_EACH(q, n / 4) {
    const float4 v = ((const float4*)x)[q];
    const float* a = (const float*)&v;
    float4 o;
    MAP4(o, alpha * unary_f(op, a[k]) + beta);
    store4(out, t, q, o);
  }
}
