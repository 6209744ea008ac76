// Softmax attention in f32, flash style: scores never reach device memory except for the
// optional probabilities. Compiled once per head dimension (-DHEAD_DIM=D, D <= 256).
//
// Layouts: q, out, gq (B, tq, H, D); k, v, gk, gv (B, tk, Hkv, D); lse, delta (B, H, tq);
// probs (B, H, tq, tk). Query t sees keys s <= t + (tk - tq) when causal. Head h reads kv head
// h / (H / Hkv) (grouped-query attention).
//
// A row (query or key) is held by TPR consecutive threads, each with SL of its D values
// (dimension d = lane + TPR * e); dot products are reduced across those lanes with shuffles.
#include "common.cuh"

#ifndef HEAD_DIM
#define HEAD_DIM 64
#endif
#define HD HEAD_DIM
#define TPR (HD <= 32 ? 1 : HD <= 64 ? 2 : HD <= 128 ? 4 : 8)
#define SL ((HD + TPR - 1) / TPR)
#define BQ 64                        // query rows per block (forward, dq)
#define BK (HD <= 128 ? 32 : 16)     // key rows per shared-memory tile
#define BKV 64                       // key rows per block (dk, dv)
#define BQ2 (HD <= 128 ? 32 : 16)    // query rows per shared-memory tile (dk, dv)

__device__ __forceinline__ float group_sum(float v) {
#pragma unroll
  for (int o = TPR / 2; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}

/** Load a row slice of D values (zeros past D or for a missing row). */
__device__ __forceinline__ void load_slice(float* dst, const float* row, bool valid, int lane) {
#pragma unroll
  for (int e = 0; e < SL; e++) {
    const int d = lane + TPR * e;
    dst[e] = (valid && d < HD) ? row[d] : 0.f;
  }
}

__device__ __forceinline__ float dot_slice(const float* a, const float* srow, int lane) {
  float p = 0.f;
#pragma unroll
  for (int e = 0; e < SL; e++) {
    const int d = lane + TPR * e;
    if (d < HD) p += a[e] * srow[d];
  }
  return group_sum(p);
}

/** Copy rows [r0, r0 + rows) of a (.., n, heads, D) tensor for one head into tile (rows, HD). */
__device__ __forceinline__ void load_tile(float* tile, const float* src, int rows, int r0, int n, i64 rowBase,
                                          int stride) {
  for (int e = threadIdx.x; e < rows * HD; e += blockDim.x) {
    const int rr = e / HD, d = e - rr * HD;
    const int j = r0 + rr;
    tile[e] = j < n ? src[rowBase + (i64)j * stride + d] : 0.f;
  }
}

/** out, lse from q, k, v. grid = (ceil(tq / BQ), H, B), block = BQ * TPR */
extern "C" __global__ void __launch_bounds__(BQ* TPR)
    attention_fwd(const float* q, const float* k, const float* v, float* out, float* lse, int tq, int tk,
                  int heads, int kvHeads, float scale, int causal) {
  __shared__ float Ks[BK * HD];
  __shared__ float Vs[BK * HD];
  const int b = blockIdx.z, h = blockIdx.y, kh = h / (heads / kvHeads);
  const int r = threadIdx.x / TPR, lane = threadIdx.x % TPR;
  const int i = blockIdx.x * BQ + r;
  const bool valid = i < tq;
  const int shift = tk - tq;
  const i64 qoff = (((i64)b * tq + i) * heads + h) * HD;
  float qr[SL], acc[SL];
  load_slice(qr, q + qoff, valid, lane);
#pragma unroll
  for (int e = 0; e < SL; e++) acc[e] = 0.f;
  const int last = causal ? i + shift : tk - 1;  // last key this row sees
  int kEnd = tk;
  if (causal) {
    const int lastRow = min(tq - 1, blockIdx.x * BQ + BQ - 1);
    kEnd = max(0, min(tk, lastRow + shift + 1));
  }
  const i64 kvBase = ((i64)b * tk * kvHeads + kh) * HD;
  float m = NEG_INF, l = 0.f;
  for (int k0 = 0; k0 < kEnd; k0 += BK) {
    __syncthreads();
    load_tile(Ks, k, BK, k0, tk, kvBase, kvHeads * HD);
    load_tile(Vs, v, BK, k0, tk, kvBase, kvHeads * HD);
    __syncthreads();
    float s[BK];
    float tileMax = NEG_INF;
#pragma unroll
    for (int kj = 0; kj < BK; kj++) {
      const float p = dot_slice(qr, Ks + kj * HD, lane);
      const int j = k0 + kj;
      s[kj] = (j < tk && j <= last) ? p * scale : NEG_INF;
      tileMax = fmaxf(tileMax, s[kj]);
    }
    const float mNew = fmaxf(m, tileMax);
    if (mNew == NEG_INF) continue;
    const float corr = expf(m - mNew);
    l *= corr;
#pragma unroll
    for (int e = 0; e < SL; e++) acc[e] *= corr;
#pragma unroll
    for (int kj = 0; kj < BK; kj++) {
      const float p = expf(s[kj] - mNew);
      l += p;
#pragma unroll
      for (int e = 0; e < SL; e++) {
        const int d = lane + TPR * e;
        if (d < HD) acc[e] += p * Vs[kj * HD + d];
      }
    }
    m = mNew;
  }
  if (!valid) return;
  const float inv = l > 0.f ? 1.f / l : 0.f;
#pragma unroll
  for (int e = 0; e < SL; e++) {
    const int d = lane + TPR * e;
    if (d < HD) out[qoff + d] = acc[e] * inv;
  }
  if (lane == 0) lse[((i64)b * heads + h) * tq + i] = l > 0.f ? m + logf(l) : NEG_INF;
}

/** probs (B, H, tq, tk) = exp(scale q.k - lse), 0 where masked. One thread per entry. */
extern "C" __global__ void attention_probs(const float* q, const float* k, const float* lse, float* probs,
                                           i64 batch, int tq, int tk, int heads, int kvHeads, float scale,
                                           int causal) {
  const i64 n = batch * heads * tq * tk;
  const int shift = tk - tq;
  FOR_EACH(idx, n) {
    const int j = (int)(idx % tk);
    const i64 row = idx / tk;  // (b, h, i)
    const int i = (int)(row % tq);
    const i64 bh = row / tq;
    const int h = (int)(bh % heads);
    const i64 b = bh / heads;
    const int kh = h / (heads / kvHeads);
    float p = 0.f;
    if (!causal || j <= i + shift) {
      const float* qr = q + ((b * tq + i) * heads + h) * HD;
      const float* kr = k + ((b * tk + j) * kvHeads + kh) * HD;
      float dot = 0.f;
      for (int d = 0; d < HD; d++) dot += qr[d] * kr[d];
      p = expf(dot * scale - lse[row]);
    }
    probs[idx] = p;
  }
}

/** delta (B, H, tq) = rowsum(gOut * out); one warp per row */
extern "C" __global__ void attention_bwd_delta(const float* out, const float* gOut, float* delta, i64 batch,
                                               int tq, int heads) {
  const i64 rows = batch * tq * heads;
  const i64 w = ((i64)blockIdx.x * blockDim.x + threadIdx.x) >> 5;
  const int lane = threadIdx.x & 31;
  if (w >= rows) return;
  float acc = 0.f;
  for (int d = lane; d < HD; d += 32) acc += out[w * HD + d] * gOut[w * HD + d];
  acc = warp_sum(acc);
  if (lane == 0) {
    const int h = (int)(w % heads);
    const i64 bi = w / heads;
    const int i = (int)(bi % tq);
    const i64 b = bi / tq;
    delta[(b * heads + h) * tq + i] = acc;
  }
}

/** gq. grid = (ceil(tq / BQ), H, B), block = BQ * TPR */
extern "C" __global__ void __launch_bounds__(BQ* TPR)
    attention_bwd_dq(const float* q, const float* k, const float* v, const float* lse, const float* delta,
                     const float* gOut, float* gq, int tq, int tk, int heads, int kvHeads, float scale,
                     int causal) {
  __shared__ float Ks[BK * HD];
  __shared__ float Vs[BK * HD];
  const int b = blockIdx.z, h = blockIdx.y, kh = h / (heads / kvHeads);
  const int r = threadIdx.x / TPR, lane = threadIdx.x % TPR;
  const int i = blockIdx.x * BQ + r;
  const bool valid = i < tq;
  const int shift = tk - tq;
  const i64 qoff = (((i64)b * tq + i) * heads + h) * HD;
  float qr[SL], dor[SL], dq[SL];
  load_slice(qr, q + qoff, valid, lane);
  load_slice(dor, gOut + qoff, valid, lane);
#pragma unroll
  for (int e = 0; e < SL; e++) dq[e] = 0.f;
  const i64 stat = ((i64)b * heads + h) * tq + i;
  const float li = valid ? lse[stat] : 0.f;
  const float di = valid ? delta[stat] : 0.f;
  const int last = causal ? i + shift : tk - 1;
  int kEnd = tk;
  if (causal) {
    const int lastRow = min(tq - 1, blockIdx.x * BQ + BQ - 1);
    kEnd = max(0, min(tk, lastRow + shift + 1));
  }
  const i64 kvBase = ((i64)b * tk * kvHeads + kh) * HD;
  for (int k0 = 0; k0 < kEnd; k0 += BK) {
    __syncthreads();
    load_tile(Ks, k, BK, k0, tk, kvBase, kvHeads * HD);
    load_tile(Vs, v, BK, k0, tk, kvBase, kvHeads * HD);
    __syncthreads();
#pragma unroll 4
    for (int kj = 0; kj < BK; kj++) {
      const int j = k0 + kj;
      const float s = dot_slice(qr, Ks + kj * HD, lane) * scale;
      const float dp = dot_slice(dor, Vs + kj * HD, lane);
      const float p = (valid && j < tk && j <= last) ? expf(s - li) : 0.f;
      const float ds = p * (dp - di);
#pragma unroll
      for (int e = 0; e < SL; e++) {
        const int d = lane + TPR * e;
        if (d < HD) dq[e] += ds * Ks[kj * HD + d];
      }
    }
  }
  if (!valid) return;
#pragma unroll
  for (int e = 0; e < SL; e++) {
    const int d = lane + TPR * e;
    if (d < HD) gq[qoff + d] = dq[e] * scale;
  }
}

/** gk, gv: one block per (key tile, kv head, batch) sums over the heads of its group. block = BKV * TPR */
extern "C" __global__ void __launch_bounds__(BKV* TPR)
    attention_bwd_dkdv(const float* q, const float* k, const float* v, const float* lse, const float* delta,
                       const float* gOut, float* gk, float* gv, int tq, int tk, int heads, int kvHeads,
                       float scale, int causal) {
  __shared__ float Qs[BQ2 * HD];
  __shared__ float Os[BQ2 * HD];
  __shared__ float Ls[BQ2];
  __shared__ float Ds[BQ2];
  const int b = blockIdx.z, kh = blockIdx.y;
  const int group = heads / kvHeads;
  const int r = threadIdx.x / TPR, lane = threadIdx.x % TPR;
  const int j = blockIdx.x * BKV + r;
  const bool valid = j < tk;
  const int shift = tk - tq;
  const i64 koff = (((i64)b * tk + j) * kvHeads + kh) * HD;
  float kr[SL], vr[SL], dk[SL], dv[SL];
  load_slice(kr, k + koff, valid, lane);
  load_slice(vr, v + koff, valid, lane);
#pragma unroll
  for (int e = 0; e < SL; e++) {
    dk[e] = 0.f;
    dv[e] = 0.f;
  }
  // queries that see some key of this block: i >= firstKey - shift
  int qStart = 0;
  if (causal) qStart = max(0, blockIdx.x * BKV - shift);
  qStart = (qStart / BQ2) * BQ2;
  for (int hh = 0; hh < group; hh++) {
    const int h = kh * group + hh;
    const i64 qBase = ((i64)b * tq * heads + h) * HD;
    const i64 statBase = ((i64)b * heads + h) * tq;
    for (int q0 = qStart; q0 < tq; q0 += BQ2) {
      __syncthreads();
      load_tile(Qs, q, BQ2, q0, tq, qBase, heads * HD);
      load_tile(Os, gOut, BQ2, q0, tq, qBase, heads * HD);
      for (int e = threadIdx.x; e < BQ2; e += blockDim.x) {
        const int i = q0 + e;
        Ls[e] = i < tq ? lse[statBase + i] : 0.f;
        Ds[e] = i < tq ? delta[statBase + i] : 0.f;
      }
      __syncthreads();
#pragma unroll 4
      for (int qi = 0; qi < BQ2; qi++) {
        const int i = q0 + qi;
        const float s = dot_slice(kr, Qs + qi * HD, lane) * scale;
        const float dp = dot_slice(vr, Os + qi * HD, lane);
        const bool vis = valid && i < tq && (!causal || j <= i + shift);
        const float p = vis ? expf(s - Ls[qi]) : 0.f;
        const float ds = p * (dp - Ds[qi]);
#pragma unroll
        for (int e = 0; e < SL; e++) {
          const int d = lane + TPR * e;
          if (d < HD) {
            dv[e] += p * Os[qi * HD + d];
            dk[e] += ds * Qs[qi * HD + d];
          }
        }
      }
    }
  }
  if (!valid) return;
#pragma unroll
  for (int e = 0; e < SL; e++) {
    const int d = lane + TPR * e;
    if (d < HD) {
      gk[koff + d] = dk[e] * scale;
      gv[koff + d] = dv[e];
    }
  }
}

