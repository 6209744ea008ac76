// Row kernels over (rows, cols): softmax, LayerNorm, RMSNorm, cross-entropy, KL divergence,
// and the embedding lookup. One block per row (blockDim a multiple of 32); f32 accumulation.
#include "common.cuh"

/** x, out (rows, cols): softmax (or log-softmax) over cols. grid = rows */
extern "C" __global__ void softmax_f32(const float* x, float* out, int cols, int log) {
  __shared__ float sh[64];
  const float* xr = x + (i64)blockIdx.x * cols;
  float* o = out + (i64)blockIdx.x * cols;
  float m = NEG_INF, s = 0.f;
  for (int j = threadIdx.x; j < cols; j += blockDim.x) lse_add(m, s, xr[j]);
  const float lse = block_lse(m, s, sh);
  if (log)
    for (int j = threadIdx.x; j < cols; j += blockDim.x) o[j] = xr[j] - lse;
  else
    for (int j = threadIdx.x; j < cols; j += blockDim.x) o[j] = expf(xr[j] - lse);
}

/** y (forward output), gy, gx (rows, cols). grid = rows */
extern "C" __global__ void softmax_backward_f32(const float* y, const float* gy, float* gx, int cols, int log) {
  __shared__ float sh[32];
  const i64 base = (i64)blockIdx.x * cols;
  float acc = 0.f;
  for (int j = threadIdx.x; j < cols; j += blockDim.x) acc += log ? gy[base + j] : gy[base + j] * y[base + j];
  const float s = block_sum(acc, sh);
  if (log)  // y = x - lse: gx = gy - softmax * sum(gy)
    for (int j = threadIdx.x; j < cols; j += blockDim.x) gx[base + j] = gy[base + j] - expf(y[base + j]) * s;
  else  // gx = y * (gy - sum(gy * y))
    for (int j = threadIdx.x; j < cols; j += blockDim.x) gx[base + j] = y[base + j] * (gy[base + j] - s);
}

/**
 * x, out (rows, cols), weight, bias (cols) | null; mean, rstd (rows) saved; o16 | null: out
 * rounded to 16 bits too (the copy autocast products read). grid = rows
 */
extern "C" __global__ void layernorm_f32(const float* x, const float* w, const float* b, float* out, float* mean,
                                         float* rstd, int cols, float eps, u16* o16, int t16) {
  __shared__ float sh[32];
  const i64 base = (i64)blockIdx.x * cols;
  float acc = 0.f;
  for (int j = threadIdx.x; j < cols; j += blockDim.x) acc += x[base + j];
  const float m = block_sum(acc, sh) / cols;
  acc = 0.f;
  for (int j = threadIdx.x; j < cols; j += blockDim.x) {
    const float d = x[base + j] - m;
    acc += d * d;
  }
  const float rs = 1.f / sqrtf(block_sum(acc, sh) / cols + eps);
  if (threadIdx.x == 0) {
    mean[blockIdx.x] = m;
    rstd[blockIdx.x] = rs;
  }
  for (int j = threadIdx.x; j < cols; j += blockDim.x) {
    const float v = (x[base + j] - m) * rs * w[j] + (b ? b[j] : 0.f);
    out[base + j] = v;
    if (o16) o16[base + j] = to16(v, t16);
  }
}

/**
 * LayerNorm backward: gx (rows, cols) and per-block partial sums pw, pb (gridDim.x, cols) of
 * gy * xhat and gy (reduced over blocks on the host side). Each block takes rows
 * blockIdx.x, blockIdx.x + gridDim.x, ...; pb may be null.
 */
template <bool ACC>
__device__ void layernorm_bwd(const float* x, const float* w, const float* mean, const float* rstd, const float* gy,
                              float* gx, float* pw, float* pb, i64 rows, int cols) {
  __shared__ float sh[32];
  float* pwr = pw + (i64)blockIdx.x * cols;
  float* pbr = pb ? pb + (i64)blockIdx.x * cols : 0;
  for (int j = threadIdx.x; j < cols; j += blockDim.x) {
    pwr[j] = 0.f;
    if (pbr) pbr[j] = 0.f;
  }
  for (i64 r = blockIdx.x; r < rows; r += gridDim.x) {
    const i64 base = r * cols;
    const float m = mean[r], rs = rstd[r];
    float sg = 0.f, sgx = 0.f;
    for (int j = threadIdx.x; j < cols; j += blockDim.x) {
      const float xh = (x[base + j] - m) * rs;
      const float g = __fmul_rn(gy[base + j], w[j]);
      sg += g;
      sgx += g * xh;
    }
    sg = block_sum(sg, sh) / cols;
    sgx = block_sum(sgx, sh) / cols;
    // gx = rs * (g - mean(g) - xhat * mean(g * xhat)), g = gy * w rounded as in the sums above
    // (__fmul_rn keeps the compiler from fusing it into g - mean(g), so one column gives exactly 0)
    for (int j = threadIdx.x; j < cols; j += blockDim.x) {
      const float xh = (x[base + j] - m) * rs;
      const float gyj = gy[base + j];
      const float v = rs * (__fmul_rn(gyj, w[j]) - sg - xh * sgx);
      gx[base + j] = ACC ? gx[base + j] + v : v;
      pwr[j] += gyj * xh;
      if (pbr) pbr[j] += gyj;
    }
  }
}

extern "C" __global__ void layernorm_backward_f32(const float* x, const float* w, const float* mean,
                                                  const float* rstd, const float* gy, float* gx, float* pw,
                                                  float* pb, i64 rows, int cols) {
  layernorm_bwd<false>(x, w, mean, rstd, gy, gx, pw, pb, rows, cols);
}
// gx += the input gradient: the residual stream's other gradient is already there (no separate add)
extern "C" __global__ void layernorm_backward_acc_f32(const float* x, const float* w, const float* mean,
                                                      const float* rstd, const float* gy, float* gx, float* pw,
                                                      float* pb, i64 rows, int cols) {
  layernorm_bwd<true>(x, w, mean, rstd, gy, gx, pw, pb, rows, cols);
}

/** x, out (rows, cols), weight (cols); rstd (rows) saved; o16 as layernorm_f32's. grid = rows */
extern "C" __global__ void rmsnorm_f32(const float* x, const float* w, float* out, float* rstd, int cols, float eps,
                                       u16* o16, int t16) {
  __shared__ float sh[32];
  const i64 base = (i64)blockIdx.x * cols;
  float acc = 0.f;
  for (int j = threadIdx.x; j < cols; j += blockDim.x) acc += x[base + j] * x[base + j];
  const float rs = 1.f / sqrtf(block_sum(acc, sh) / cols + eps);
  if (threadIdx.x == 0) rstd[blockIdx.x] = rs;
  for (int j = threadIdx.x; j < cols; j += blockDim.x) {
    const float v = x[base + j] * rs * w[j];
    out[base + j] = v;
    if (o16) o16[base + j] = to16(v, t16);
  }
}

/**
 * A pre-norm block's residual add and the RMSNorm of its result: sum = a + b (rows, cols), then
 * rmsnorm_f32's arithmetic on sum (the same values as the two kernels). grid = rows
 */
extern "C" __global__ void add_rmsnorm_f32(const float* a, const float* b, const float* w, float* sum, float* out,
                                           float* rstd, int cols, float eps, u16* o16, int t16) {
  __shared__ float sh[32];
  const i64 base = (i64)blockIdx.x * cols;
  float acc = 0.f;
  for (int j = threadIdx.x; j < cols; j += blockDim.x) {
    const float v = a[base + j] + b[base + j];
    sum[base + j] = v;
    acc += v * v;
  }
  const float rs = 1.f / sqrtf(block_sum(acc, sh) / cols + eps);
  if (threadIdx.x == 0) rstd[blockIdx.x] = rs;
  // each thread reads back the sums it wrote
  for (int j = threadIdx.x; j < cols; j += blockDim.x) {
    const float v = sum[base + j] * rs * w[j];
    out[base + j] = v;
    if (o16) o16[base + j] = to16(v, t16);
  }
}

// ---- one warp per row: the row's values stay in registers (cols a multiple of 128, at most
// 128 * NORM_WARP_MAXV); a pass over memory instead of three, and no block-wide barriers ----------

#define NORM_WARP_MAXV 16

/** the 4 values v rounded to 16 bits (t16 as to16) at o16 + 4 q, in one 8-byte store */
__device__ __forceinline__ void store16x4(u16* o16, int t16, i64 q, float4 v) {
  const u32 a = to16(v.x, t16), b = to16(v.y, t16), c = to16(v.z, t16), d = to16(v.w, t16);
  ((uint2*)o16)[q] = make_uint2(a | (b << 16), c | (d << 16));
}

/**
 * LayerNorm (kind 0), RMSNorm (1) or the residual add and RMSNorm (2: x = a + a2, written to sum)
 * of rows of `cols` = 128 nv, one warp per row: out = norm(x) w (+ b), mean (LayerNorm), rstd,
 * and o16 | null, out rounded to 16 bits. out, mean and rstd may be null (not written: a norm
 * whose only reader takes the 16-bit copy). Lane l holds float4s l, l + 32, ...
 */
__device__ void norm_warp(int kind, const float* a, const float* a2, const float* w, const float* b, float* sum,
                          float* out, float* mean, float* rstd, i64 rows, int cols, float eps, u16* o16, int t16) {
  const int lane = threadIdx.x & 31;
  const i64 row = (i64)blockIdx.x * (blockDim.x >> 5) + (threadIdx.x >> 5);
  if (row >= rows) return;
  const int nv = cols >> 7;
  const i64 q0 = row * (cols >> 2);
  float4 v[NORM_WARP_MAXV];
  float s = 0.f, ss = 0.f;
#pragma unroll
  for (int k = 0; k < NORM_WARP_MAXV; k++) {
    if (k < nv) {
      const i64 q = q0 + lane + 32 * k;
      v[k] = ((const float4*)a)[q];
      if (kind == 2) {
        const float4 u = ((const float4*)a2)[q];
        v[k] = make_float4(v[k].x + u.x, v[k].y + u.y, v[k].z + u.z, v[k].w + u.w);
        ((float4*)sum)[q] = v[k];
      }
      s += (v[k].x + v[k].y) + (v[k].z + v[k].w);
      ss += (v[k].x * v[k].x + v[k].y * v[k].y) + (v[k].z * v[k].z + v[k].w * v[k].w);
    }
  }
  float m = 0.f, rs;
  if (kind == 0) {
    m = warp_sum(s) / cols;
    float dd = 0.f;  // the variance from the deviations, as layernorm_f32
#pragma unroll
    for (int k = 0; k < NORM_WARP_MAXV; k++)
      if (k < nv) {
        const float dx = v[k].x - m, dy = v[k].y - m, dz = v[k].z - m, dw = v[k].w - m;
        dd += (dx * dx + dy * dy) + (dz * dz + dw * dw);
      }
    rs = 1.f / sqrtf(warp_sum(dd) / cols + eps);
    if (lane == 0 && mean) mean[row] = m;
  } else {
    rs = 1.f / sqrtf(warp_sum(ss) / cols + eps);
  }
  if (lane == 0 && rstd) rstd[row] = rs;
#pragma unroll
  for (int k = 0; k < NORM_WARP_MAXV; k++) {
    if (k < nv) {
      const int c4 = lane + 32 * k;
      const float4 wv = ((const float4*)w)[c4];
      float4 o;
      if (kind == 0) {
        const float4 bv = b ? ((const float4*)b)[c4] : make_float4(0.f, 0.f, 0.f, 0.f);
        o = make_float4((v[k].x - m) * rs * wv.x + bv.x, (v[k].y - m) * rs * wv.y + bv.y,
                        (v[k].z - m) * rs * wv.z + bv.z, (v[k].w - m) * rs * wv.w + bv.w);
      } else {
        o = make_float4(v[k].x * rs * wv.x, v[k].y * rs * wv.y, v[k].z * rs * wv.z, v[k].w * rs * wv.w);
      }
      if (out) ((float4*)out)[q0 + c4] = o;
      if (o16) store16x4(o16, t16, q0 + c4, o);
    }
  }
}

extern "C" __global__ void layernorm_warp_f32(const float* x, const float* w, const float* b, float* out,
                                              float* mean, float* rstd, i64 rows, int cols, float eps, u16* o16,
                                              int t16) {
  norm_warp(0, x, nullptr, w, b, nullptr, out, mean, rstd, rows, cols, eps, o16, t16);
}
extern "C" __global__ void rmsnorm_warp_f32(const float* x, const float* w, float* out, float* rstd, i64 rows,
                                            int cols, float eps, u16* o16, int t16) {
  norm_warp(1, x, nullptr, w, nullptr, nullptr, out, nullptr, rstd, rows, cols, eps, o16, t16);
}
extern "C" __global__ void add_rmsnorm_warp_f32(const float* a, const float* a2, const float* w, float* sum,
                                                float* out, float* rstd, i64 rows, int cols, float eps, u16* o16,
                                                int t16) {
  norm_warp(2, a, a2, w, nullptr, sum, out, nullptr, rstd, rows, cols, eps, o16, t16);
}

/** RMSNorm backward: gx (rows, cols), partial sums pw (gridDim.x, cols) of gy * xhat. */
template <bool ACC>
__device__ void rmsnorm_bwd(const float* x, const float* w, const float* rstd, const float* gy, float* gx, float* pw,
                            i64 rows, int cols) {
  __shared__ float sh[32];
  float* pwr = pw + (i64)blockIdx.x * cols;
  for (int j = threadIdx.x; j < cols; j += blockDim.x) pwr[j] = 0.f;
  for (i64 r = blockIdx.x; r < rows; r += gridDim.x) {
    const i64 base = r * cols;
    const float rs = rstd[r];
    float sgx = 0.f;
    for (int j = threadIdx.x; j < cols; j += blockDim.x) sgx += __fmul_rn(gy[base + j], w[j]) * (x[base + j] * rs);
    sgx = block_sum(sgx, sh) / cols;
    // gx = rs * (g - xhat * mean(g * xhat)), g = gy * w
    for (int j = threadIdx.x; j < cols; j += blockDim.x) {
      const float xh = x[base + j] * rs, g = gy[base + j];
      const float v = rs * (__fmul_rn(g, w[j]) - xh * sgx);
      gx[base + j] = ACC ? gx[base + j] + v : v;
      pwr[j] += g * xh;
    }
  }
}

extern "C" __global__ void rmsnorm_backward_f32(const float* x, const float* w, const float* rstd,
                                                const float* gy, float* gx, float* pw, i64 rows, int cols) {
  rmsnorm_bwd<false>(x, w, rstd, gy, gx, pw, rows, cols);
}
extern "C" __global__ void rmsnorm_backward_acc_f32(const float* x, const float* w, const float* rstd,
                                                    const float* gy, float* gx, float* pw, i64 rows, int cols) {
  rmsnorm_bwd<true>(x, w, rstd, gy, gx, pw, rows, cols);
}

/**
 * logits (rows, V), targets (rows) i32 -> losses (rows) = lse - logit[target] (0 where target ==
 * ignore, NaN where the target is outside the vocabulary), lse (rows). grid = rows
 */
extern "C" __global__ void cross_entropy_f32(const float* logits, const int* targets, float* losses, float* lse,
                                             int vocab, int ignore) {
  __shared__ float sh[64];
  const float* xr = logits + (i64)blockIdx.x * vocab;
  float m = NEG_INF, s = 0.f;
  for (int j = threadIdx.x; j < vocab; j += blockDim.x) lse_add(m, s, xr[j]);
  const float l = block_lse(m, s, sh);
  if (threadIdx.x == 0) {
    const int t = targets[blockIdx.x];
    lse[blockIdx.x] = l;
    losses[blockIdx.x] = t == ignore ? 0.f : (t < 0 || t >= vocab) ? QNAN : l - xr[t];
  }
}

/** gLogits (rows, V) = gLoss[row] * (softmax - onehot(target)); zero rows where target == ignore */
extern "C" __global__ void cross_entropy_backward_f32(const float* logits, const int* targets, const float* lse,
                                                      const float* gLoss, float* gLogits, int vocab, int ignore) {
  const i64 base = (i64)blockIdx.x * vocab;
  const int t = targets[blockIdx.x];
  const float g = gLoss[blockIdx.x], l = lse[blockIdx.x];
  for (int j = threadIdx.x; j < vocab; j += blockDim.x) {
    float v = 0.f;
    if (t != ignore) {
      v = g * expf(logits[base + j] - l);
      if (j == t) v -= g;
    }
    gLogits[base + j] = v;
  }
}

/** Both row log-sum-exps of teacher / tau and student / tau. */
__device__ void kl_lses(const float* tr, const float* sr, int vocab, float inv, float* sh, float& lt, float& ls) {
  float mt = NEG_INF, st = 0.f, ms = NEG_INF, ss = 0.f;
  for (int j = threadIdx.x; j < vocab; j += blockDim.x) {
    lse_add(mt, st, tr[j] * inv);
    lse_add(ms, ss, sr[j] * inv);
  }
  lt = block_lse(mt, st, sh);
  ls = block_lse(ms, ss, sh);
}

/**
 * The teacher's running (max m, sum s = sum e^(a - m), w = sum e^(a - m) (a - b)) with a = t / tau,
 * b = s / tau: KL = w / s - lse_t + lse_s, so one pass gives the KL and both log-sum-exps. An a
 * of -inf (p = 0) adds nothing to w, as the two-pass form skipped p = 0.
 */
__device__ __forceinline__ void klw_add(float& m, float& s, float& w, float a, float b) {
  if (a == NEG_INF) return;
  if (a > m) {
    const float r = expf(m - a);  // 0 while m is -inf
    s = s * r + 1.f;
    // an underflowed weight drops w (which may be +inf from a -inf student logit: no inf * 0)
    w = (r > 0.f ? w * r : 0.f) + (a - b);
    m = a;
  } else {
    const float e = expf(a - m);  // NaN a (or m) makes s NaN, as lse_add
    s += e;
    if (e > 0.f) w += e * (a - b);
  }
}

__device__ __forceinline__ void klw_merge(float& m, float& s, float& w, float m2, float s2, float w2) {
  if (m2 == NEG_INF && !is_nan(s2)) return;
  if (m == NEG_INF && !is_nan(s)) {
    m = m2, s = s2, w = w2;
    return;
  }
  const float mm = fmaxf(m, m2);
  const float r1 = expf(m - mm), r2 = expf(m2 - mm);
  s = s * r1 + s2 * r2;
  w = (r1 > 0.f ? w * r1 : 0.f) + (r2 > 0.f ? w2 * r2 : 0.f);
  m = mm;
  if (is_nan(m2) || is_nan(s2)) s = QNAN;
}

/**
 * KL(p || q) per row, p = softmax(teacher / tau), q = softmax(student / tau); (rows, V) -> losses
 * (rows). lse (rows, 2), when not null, receives both log-sum-exps of the row (teacher, student)
 * for kl_div_backward_f32 to skip its first pass. One pass over both rows (klw_add), 16-byte loads
 * where V and the rows allow. grid = rows, blockDim.x a multiple of 32, at most 1024.
 */
extern "C" __global__ void kl_div_f32(const float* teacher, const float* student, float* losses, float* lse,
                                      int vocab, float inv) {
  __shared__ float sh[4 * 32];
  const i64 base = (i64)blockIdx.x * vocab;
  const float* tr = teacher + base;
  const float* sr = student + base;
  float mt = NEG_INF, st = 0.f, wt = 0.f, ms = NEG_INF, ss = 0.f;
  if ((vocab & 3) == 0 && ((size_t)tr & 15) == 0 && ((size_t)sr & 15) == 0) {
    const float4* t4 = (const float4*)tr;
    const float4* s4 = (const float4*)sr;
    for (int j = threadIdx.x; j < vocab / 4; j += blockDim.x) {
      const float4 a = t4[j], b = s4[j];
      klw_add(mt, st, wt, a.x * inv, b.x * inv);
      klw_add(mt, st, wt, a.y * inv, b.y * inv);
      klw_add(mt, st, wt, a.z * inv, b.z * inv);
      klw_add(mt, st, wt, a.w * inv, b.w * inv);
      lse_add(ms, ss, b.x * inv);
      lse_add(ms, ss, b.y * inv);
      lse_add(ms, ss, b.z * inv);
      lse_add(ms, ss, b.w * inv);
    }
  } else {
    for (int j = threadIdx.x; j < vocab; j += blockDim.x) {
      klw_add(mt, st, wt, tr[j] * inv, sr[j] * inv);
      lse_add(ms, ss, sr[j] * inv);
    }
  }
  // warps, then the block (lanes hold the warps' triples and pairs)
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) {
    klw_merge(mt, st, wt, __shfl_xor_sync(0xffffffffu, mt, o), __shfl_xor_sync(0xffffffffu, st, o),
              __shfl_xor_sync(0xffffffffu, wt, o));
    lse_merge(ms, ss, __shfl_xor_sync(0xffffffffu, ms, o), __shfl_xor_sync(0xffffffffu, ss, o));
  }
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nw = blockDim.x >> 5;
  if (lane == 0) {
    sh[warp] = mt, sh[32 + warp] = st, sh[64 + warp] = wt;
    sh[96 + warp] = ms;
  }
  __shared__ float shs[32];
  if (lane == 0) shs[warp] = ss;
  __syncthreads();
  if (warp == 0) {
    mt = lane < nw ? sh[lane] : NEG_INF;
    st = lane < nw ? sh[32 + lane] : 0.f;
    wt = lane < nw ? sh[64 + lane] : 0.f;
    ms = lane < nw ? sh[96 + lane] : NEG_INF;
    ss = lane < nw ? shs[lane] : 0.f;
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) {
      klw_merge(mt, st, wt, __shfl_xor_sync(0xffffffffu, mt, o), __shfl_xor_sync(0xffffffffu, st, o),
                __shfl_xor_sync(0xffffffffu, wt, o));
      lse_merge(ms, ss, __shfl_xor_sync(0xffffffffu, ms, o), __shfl_xor_sync(0xffffffffu, ss, o));
    }
    if (lane == 0) {
      const float lt = mt + logf(st), ls = ms + logf(ss);
      // an empty teacher row (every p = 0) has nothing to sum: 0, as the two-pass form
      losses[blockIdx.x] = st > 0.f ? wt / st - lt + ls : (is_nan(st) ? QNAN : 0.f);
      if (lse) {
        lse[2 * blockIdx.x] = lt;
        lse[2 * blockIdx.x + 1] = ls;
      }
    }
  }
}

/**
 * gStudent (rows, V; f32, or bf16 / f16 by out16) = gLoss[row] * (q - p) / tau. lse (rows, 2) not null: the log-sum-exps that
 * kl_div_f32 wrote (one pass over the rows instead of two). losses not null: also the rows' KL,
 * as kl_div_f32 computes it, from the same pass (the loss and its gradient in one launch).
 * grid = rows
 */
extern "C" __global__ void kl_div_backward_f32(const float* teacher, const float* student, const float* gLoss,
                                               void* gStudent, const float* lse, float* losses, int vocab,
                                               float inv, int out16) {
  __shared__ float sh[64];
  const i64 base = (i64)blockIdx.x * vocab;
  float lt, ls;
  if (lse) {
    lt = lse[2 * blockIdx.x];
    ls = lse[2 * blockIdx.x + 1];
  } else {
    kl_lses(teacher + base, student + base, vocab, inv, sh, lt, ls);
  }
  const float g = gLoss[blockIdx.x] * inv;
  float acc = 0.f;
  for (int j = threadIdx.x; j < vocab; j += blockDim.x) {
    const float logp = teacher[base + j] * inv - lt;
    const float logq = student[base + j] * inv - ls;
    const float p = expf(logp);
    const float q = expf(logq);
    const float v = g * (q - p);
    // out16: 0 f32, 1 bf16, 2 f16 (the gradient rounded once, for the products that read it)
    if (out16 == 0)
      ((float*)gStudent)[base + j] = v;
    else
      ((u16*)gStudent)[base + j] = out16 == 1 ? f32_to_bf16(v) : f32_to_f16(v);
    if (losses && p > 0.f) acc += p * (logp - logq);
  }
  if (losses) {
    acc = block_sum(acc, sh);
    if (threadIdx.x == 0) losses[blockIdx.x] = acc;
  }
}

/**
 * table (vocab, dim), ids (n) i32 -> out (n, dim). An id outside the vocabulary is an error, not
 * a zero row: the kernel traps, and the next synchronization reports the failed launch.
 */
extern "C" __global__ void embedding_f32(const float* table, const int* ids, float* out, i64 n, int dim,
                                         int vocab) {
  const i64 total = n * dim;
  FOR_EACH(i, total) {
    const i64 r = i / dim;
    const int j = (int)(i - r * dim);
    const int id = ids[r];
    if (id < 0 || id >= vocab) __trap();
    out[i] = table[(i64)id * dim + j];
  }
}

/**
 * gTable[ids[i]] += gOut[i], gOut (n, dim), gTable (vocab, dim). Deterministic: block b owns the
 * table rows [b * rowsPer, (b + 1) * rowsPer) and adds the tokens that land there in token order,
 * so a repeated id sums in the same order every run (atomics would not, and training runs that
 * should repeat would drift apart). Each block scans all ids a tile at a time: a warp ballot marks
 * the tile's tokens in its rows, then the block walks the marks in order, its threads over dim.
 * Launch: blockDim.x a multiple of 32, at most 1024.
 */
extern "C" __global__ void embedding_backward_f32(const float* gOut, const int* ids, float* gTable, i64 n, int dim,
                                                  int vocab, int rowsPer) {
  __shared__ unsigned marks[32];
  const int lo = blockIdx.x * rowsPer;
  const int hi = min(vocab, lo + rowsPer);
  const int warps = blockDim.x >> 5;
  const int lane = threadIdx.x & 31;
  const int warp = threadIdx.x >> 5;
  for (i64 base = 0; base < n; base += blockDim.x) {
    const i64 i = base + threadIdx.x;
    const int id = i < n ? ids[i] : -1;
    const unsigned m = __ballot_sync(0xffffffffu, id >= lo && id < hi);
    if (lane == 0) marks[warp] = m;
    __syncthreads();
    for (int w = 0; w < warps; w++) {
      unsigned mw = marks[w];
      while (mw) {
        const int bit = __ffs(mw) - 1;
        mw &= mw - 1;
        const i64 t = base + (w << 5) + bit;
        const int row = ids[t];
        const float* g = gOut + t * dim;
        float* dst = gTable + (i64)row * dim;
        for (int j = threadIdx.x; j < dim; j += blockDim.x) dst[j] += g[j];
      }
    }
    __syncthreads();
  }
}
