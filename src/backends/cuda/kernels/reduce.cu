// Reductions and scans over (outer, n, inner) layouts, and the segment sums of the SSM.
// Sums accumulate in f32.
#include "common.cuh"

#define R_SUM 0
#define R_MAX 1

/**
 * x (outer, n, inner) -> out (outer, splits, inner): split s reduces the n-range
 * [s * chunk, min(n, (s + 1) * chunk)). One thread per (outer, inner) pair; blockIdx.y = split.
 * With splits = 1 this is the whole reduction; a second call over (outer, splits, inner) finishes it.
 */
extern "C" __global__ void reduce_mid_f32(const float* x, float* out, int op, i64 outer, i64 n, i64 inner,
                                          i64 chunk, int splits) {
  const i64 total = outer * inner;
  const int s = blockIdx.y;
  const i64 j0 = (i64)s * chunk;
  const i64 j1 = j0 + chunk < n ? j0 + chunk : n;
  FOR_EACH(t, total) {
    const i64 o = t / inner, i = t - o * inner;
    const float* p = x + o * n * inner + i;
    float acc = op == R_SUM ? 0.f : NEG_INF;
    if (op == R_SUM)
      for (i64 j = j0; j < j1; j++) acc += p[j * inner];
    else
      for (i64 j = j0; j < j1; j++) acc = max_nan(acc, p[j * inner]);
    out[(o * splits + s) * inner + i] = acc;
  }
}

/**
 * x (rows, n) -> out (rows, splits): block (s, r) reduces the contiguous range
 * [s * chunk, min(n, (s + 1) * chunk)) of rows r, r + gridDim.y, ... (the inner == 1 case of
 * reduce_mid, coalesced). grid = (splits, min(rows, 65535)).
 */
extern "C" __global__ void reduce_rows_f32(const float* x, float* out, int op, i64 rows, i64 n, i64 chunk) {
  __shared__ float sh[32];
  const int s = blockIdx.x, splits = gridDim.x;
  const i64 j0 = (i64)s * chunk;
  const i64 j1 = j0 + chunk < n ? j0 + chunk : n;
  for (i64 row = blockIdx.y; row < rows; row += gridDim.y) {
    const float* p = x + row * n;
    float acc = op == R_SUM ? 0.f : NEG_INF;
    for (i64 j = j0 + threadIdx.x; j < j1; j += blockDim.x) acc = op == R_SUM ? acc + p[j] : max_nan(acc, p[j]);
    acc = op == R_SUM ? block_sum(acc, sh) : block_max(acc, sh);
    if (threadIdx.x == 0) out[row * splits + s] = acc;
  }
}

/** x, out (outer, n, inner): out[.., t, ..] = sum_{s <= t} x (s >= t when reverse); one thread per (outer, inner) */
extern "C" __global__ void cumsum_f32(const float* x, float* out, i64 outer, i64 n, i64 inner, int reverse) {
  const i64 total = outer * inner;
  FOR_EACH(t, total) {
    const i64 o = t / inner, i = t - o * inner;
    const i64 base = o * n * inner + i;
    float acc = 0.f;
    for (i64 jj = 0; jj < n; jj++) {
      const i64 j = reverse ? n - 1 - jj : jj;
      acc += x[base + j * inner];
      out[base + j * inner] = acc;
    }
  }
}

/**
 * x (rows, T) -> out (rows, T, T): out[r, i, j] = sum_{k=j+1..i} x[r, k] for j <= i, -inf above.
 * One thread per column (r, j) walks down the rows, so each row's writes are coalesced.
 */
extern "C" __global__ void segsum_f32(const float* x, float* out, i64 rows, int t) {
  const i64 total = rows * t;
  FOR_EACH(c, total) {
    const i64 r = c / t;
    const int j = (int)(c - r * t);
    float* o = out + r * t * t + j;
    const float* xr = x + r * t;
    float acc = 0.f;
    for (int i = 0; i < t; i++) {
      if (i < j) {
        o[(i64)i * t] = NEG_INF;
      } else {
        if (i > j) acc += xr[i];
        o[(i64)i * t] = acc;
      }
    }
  }
}

/**
 * Step 1 of the segsum adjoint, in place on g (rows, T, T): g[r, i, j] becomes the column suffix
 * sum sum_{i' >= i} g[r, i', j] for j < i (entries with j >= i are left alone and never read).
 */
extern "C" __global__ void segsum_bwd_suffix_f32(float* g, i64 rows, int t) {
  const i64 total = rows * t;
  FOR_EACH(c, total) {
    const i64 r = c / t;
    const int j = (int)(c - r * t);
    float* col = g + r * t * t + j;
    float acc = 0.f;
    for (int i = t - 1; i > j; i--) {
      acc += col[(i64)i * t];
      col[(i64)i * t] = acc;
    }
  }
}

/**
 * Step 2: gx[r, k] = sum_{j < k} suffix[r, k, j] (= sum_{i >= k} sum_{j < k} gOut[r, i, j]).
 * One warp per (r, k). gx is written at r * T + k, or, when heads > 0, as (B, T, H) with
 * r = b * heads + h (the logA layout of the SSM).
 */
extern "C" __global__ void segsum_bwd_rows_f32(const float* suffix, float* gx, i64 rows, int t, int heads) {
  const i64 warps = rows * t;
  const i64 w = ((i64)blockIdx.x * blockDim.x + threadIdx.x) >> 5;
  const int lane = threadIdx.x & 31;
  if (w >= warps) return;
  const i64 r = w / t;
  const int k = (int)(w - r * t);
  const float* row = suffix + (r * t + k) * t;
  float acc = 0.f;
  for (int j = lane; j < k; j += 32) acc += row[j];
  acc = warp_sum(acc);
  if (lane == 0) {
    if (heads > 0) {
      const i64 b = r / heads, h = r - b * heads;
      gx[(b * t + k) * heads + h] = acc;
    } else {
      gx[r * t + k] = acc;
    }
  }
}
