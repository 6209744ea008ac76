// Softmax attention on the tensor cores (flash-attention-2 style), the default under bf16/f16
// autocast (AttentionParams.lowPrecision). Inputs and outputs stay f32 in device memory; tiles
// of q, k, v (and dO) are rounded to bf16 as they are copied into shared memory, the products
// run as mma.sync m16n8k16 (bf16 operands, f32 accumulation), and the online softmax, lse and
// delta stay in f32. The f32 kernels of attention.cu are the oracle (MOHAWK_ATTENTION=oracle).
// Compiled once per head dimension (-DHEAD_DIM=D with D a multiple of 16, at most 128).
//
// Layouts as in attention.cu: q, out, gOut, gq (B, tq, H, D); k, v, gk, gv (B, tk, Hkv, D);
// lse, delta (B, H, tq) (lse is the natural-log row log-sum-exp of the scaled scores). Query t
// sees keys s <= t + (tk - tq) when causal; head h reads kv head h / (H / Hkv).
//
// Every block has 4 warps; a warp owns 16 rows of the block's tile (queries in the forward and
// dq kernels, keys in the dk/dv kernel) and the other side streams through shared memory in
// tiles. Shared tiles are bf16 rows of D + 8 elements (the padding makes the ldmatrix row reads
// conflict-free). Fragment layouts of m16n8k16 (g = lane / 4, c = lane % 4):
//   A (16 x 16, row major): a0 (g, 2c..2c+1), a1 (g+8, 2c..), a2 (g, 2c+8..), a3 (g+8, 2c+8..)
//   B (16 x 8, k x n):      b0 (k 2c..2c+1, n g), b1 (k 2c+8..2c+9, n g)
//   C (16 x 8):             c0 c1 (g, 2c..2c+1), c2 c3 (g+8, 2c..2c+1)
// so a score accumulator tile becomes the A operand of the next product without leaving the
// registers. Exponentials are base 2 with log2(e) folded into the scale.
#include "common.cuh"

#ifndef HEAD_DIM
#define HEAD_DIM 64
#endif
#define HD HEAD_DIM
#if HD % 16 != 0 || HD > 128
#error "attention_tc: HEAD_DIM must be a multiple of 16, at most 128"
#endif
#define DP (HD + 8)   // shared row stride (bf16 elements)
#define NT (HD / 8)   // n-blocks of 8 over the head dimension
#define KT (HD / 16)  // k-steps of 16 over the head dimension
#define NTHR 128      // 4 warps (dq, dk/dv)
#define BQ 64         // query rows per block (dq)
#define BKV 64        // key rows per block (dk, dv)
// forward: FWD_WARPS warps of 16 query rows each, key tiles of BKF rows, prefetch on or off
#ifndef FWD_WARPS
#define FWD_WARPS 8
#endif
#ifndef BKF
#define BKF 32  // 64 at HD 64: registers spill under the 2-blocks cap, 5% slower
#endif
#ifndef FWD_PREFETCH
#define FWD_PREFETCH 1
#endif
#define FWD_THREADS (FWD_WARPS * 32)
#define BQF (FWD_WARPS * 16)
// backward: the next tile prefetched into registers (on or off), query rows per tile (dk, dv),
// key rows per tile (dq)
#ifndef BWD_PREFETCH
#define BWD_PREFETCH (HD <= 64)
#endif
#ifndef BQT
#define BQT (BWD_PREFETCH || HD > 64 ? 32 : 64)
#endif
#ifndef BKT
#define BKT (BWD_PREFETCH || HD > 64 ? 32 : 64)
#endif
#if BKF % 16 != 0 || BQT % 16 != 0 || BKT % 16 != 0 || BQT > NTHR || FWD_WARPS * 32 > 1024
#error "attention_tc: tiles of whole 16-row steps, BQT <= 128, at most 32 forward warps"
#endif
// minimum resident blocks per SM for each kernel (caps the registers; -D overrides for tuning)
#ifndef FWD_MINB
#define FWD_MINB ((HD <= 64 ? 512 : 256) / FWD_THREADS)
#endif
#ifndef DQ_MINB
#define DQ_MINB (HD <= 64 ? 3 : 2)
#endif
#ifndef DKDV_MINB
#define DKDV_MINB 2
#endif
#define LOG2E 1.4426950408889634f
#define LN2 0.6931471805599453f

// ---- primitives ------------------------------------------------------------------------------

/** two floats to a bf16 pair (round to nearest even), lo in the low half */
__device__ __forceinline__ u32 pack_bf16(float lo, float hi) {
  u32 r;
  asm("cvt.rn.bf16x2.f32 %0, %1, %2;" : "=r"(r) : "f"(hi), "f"(lo));
  return r;
}

__device__ __forceinline__ float ex2(float x) {
  float y;
  asm("ex2.approx.ftz.f32 %0, %1;" : "=f"(y) : "f"(x));
  return y;
}

__device__ __forceinline__ u32 smem_addr(const void* p) {
  u32 r;
  asm("{ .reg .u64 t; cvta.to.shared.u64 t, %1; cvt.u32.u64 %0, t; }" : "=r"(r) : "l"(p));
  return r;
}

/** four 8x8 bf16 matrices; lanes 8i..8i+7 give the row addresses of matrix i */
__device__ __forceinline__ void ldsm4(u32* r, const u16* p) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(smem_addr(p)));
}

/** the same, transposed */
__device__ __forceinline__ void ldsm4t(u32* r, const u16* p) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0,%1,%2,%3}, [%4];"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(smem_addr(p)));
}

/** c (16 x 8, f32) += a (16 x 16, bf16) b (16 x 8, bf16) */
__device__ __forceinline__ void mma(float* c, const u32* a, u32 b0, u32 b1) {
  asm("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
      "{%0,%1,%2,%3};"
      : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

// Addresses for ldmatrix (lane = this thread's lane), in a tile of rows of DP elements:
/** A operand: rows r0..r0+15, columns c0..c0+15 of a row-major (m x k) tile */
__device__ __forceinline__ const u16* a_addr(const u16* t, int r0, int c0, int lane) {
  return t + (r0 + (lane & 15)) * DP + c0 + ((lane >> 4) << 3);
}
/** B operands of two n-blocks (rows n0..n0+15 of an (n x k) tile), k columns c0..c0+15:
 *  registers 0, 1 for n-block n0 and 2, 3 for n0 + 8 (ldsm4) */
__device__ __forceinline__ const u16* bn_addr(const u16* t, int n0, int c0, int lane) {
  return t + (n0 + (lane & 7) + ((lane >> 4) << 3)) * DP + c0 + (((lane >> 3) & 1) << 3);
}
/** B operands from a (k x n) tile, k rows k0..k0+15, two n-blocks at columns n0, n0 + 8 (ldsm4t) */
__device__ __forceinline__ const u16* bk_addr(const u16* t, int k0, int n0, int lane) {
  return t + (k0 + (lane & 7) + (((lane >> 3) & 1) << 3)) * DP + n0 + ((lane >> 4) << 3);
}

/** the A operand (16 x 16) from two score accumulator n-blocks */
__device__ __forceinline__ void acc_to_a(u32* a, const float* lo, const float* hi) {
  a[0] = pack_bf16(lo[0], lo[1]);
  a[1] = pack_bf16(lo[2], lo[3]);
  a[2] = pack_bf16(hi[0], hi[1]);
  a[3] = pack_bf16(hi[2], hi[3]);
}

/** acc (16 x HD) += S t: S (16 x BK) in score accumulators, t (BK x HD) a bf16 tile in shared */
template <int BK>
__device__ __forceinline__ void acc_mma_tile(float (&acc)[NT][4], const float (&s)[BK / 8][4], const u16* t,
                                             int lane) {
#pragma unroll
  for (int kk = 0; kk < BK / 16; kk++) {
    u32 a[4];
    acc_to_a(a, s[2 * kk], s[2 * kk + 1]);
#pragma unroll
    for (int np = 0; np < NT / 2; np++) {
      u32 bf[4];
      ldsm4t(bf, bk_addr(t, kk * 16, np * 16, lane));
      mma(acc[2 * np], a, bf[0], bf[1]);
      mma(acc[2 * np + 1], a, bf[2], bf[3]);
    }
  }
}

/** float4 registers per thread that hold ROWS rows of HD floats spread over THREADS threads */
template <int ROWS, int THREADS>
struct TileRegs {
  static constexpr int V4 = HD / 4;
  static constexpr int TOTAL = ROWS * V4;
  static constexpr int N = (TOTAL + THREADS - 1) / THREADS;
};

/**
 * Rows [r0, r0 + ROWS) of a (.., n, heads, HD) f32 tensor for one head (`src` at row 0 of that
 * head, `stride` floats between rows) into this thread's registers x; zeros past n.
 */
template <int ROWS, int THREADS>
__device__ __forceinline__ void tile_fetch(float4* x, const float* src, int r0, int n, int stride) {
  typedef TileRegs<ROWS, THREADS> R;
#pragma unroll
  for (int u = 0; u < R::N; u++) {
    const int e = u * THREADS + threadIdx.x;
    const int rr = e / R::V4, c = e - rr * R::V4;
    x[u] = make_float4(0.f, 0.f, 0.f, 0.f);
    if (e < R::TOTAL && r0 + rr < n) x[u] = *reinterpret_cast<const float4*>(src + (i64)(r0 + rr) * stride + 4 * c);
  }
}

/** the registers of tile_fetch as bf16 rows of the shared tile dst */
template <int ROWS, int THREADS>
__device__ __forceinline__ void tile_store(u16* dst, const float4* x) {
  typedef TileRegs<ROWS, THREADS> R;
#pragma unroll
  for (int u = 0; u < R::N; u++) {
    const int e = u * THREADS + threadIdx.x;
    if (e < R::TOTAL) {
      const int rr = e / R::V4, c = e - rr * R::V4;
      uint2 w;
      w.x = pack_bf16(x[u].x, x[u].y);
      w.y = pack_bf16(x[u].z, x[u].w);
      *reinterpret_cast<uint2*>(dst + rr * DP + 4 * c) = w;
    }
  }
}

/** tile_fetch then tile_store, in batches of at most 8 float4 per thread */
template <int ROWS, int THREADS = NTHR>
__device__ __forceinline__ void load_tile(u16* dst, const float* src, int r0, int n, int stride) {
  constexpr int CAP = 8 * THREADS / (HD / 4);  // rows per part
  constexpr int PART = ROWS <= CAP ? ROWS : CAP >= 64 ? 64 : CAP >= 32 ? 32 : CAP >= 16 ? 16 : 8;
  static_assert(ROWS % PART == 0, "load_tile: rows in parts");
#pragma unroll
  for (int p0 = 0; p0 < ROWS; p0 += PART) {
    float4 x[TileRegs<PART, THREADS>::N];
    tile_fetch<PART, THREADS>(x, src, r0 + p0, n, stride);
    tile_store<PART, THREADS>(dst + p0 * DP, x);
  }
}

__device__ __forceinline__ float quad_max(float v) {
  v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, 1));
  return fmaxf(v, __shfl_xor_sync(0xffffffffu, v, 2));
}

__device__ __forceinline__ float quad_sum(float v) {
  v += __shfl_xor_sync(0xffffffffu, v, 1);
  return v + __shfl_xor_sync(0xffffffffu, v, 2);
}

/** out[i], out[i + 1] = a, b: f32, or with out16 bf16 (out then holds u16 elements) */
__device__ __forceinline__ void store_out2(float* out, i64 i, float a, float b, int out16) {
  if (out16) *reinterpret_cast<u32*>(reinterpret_cast<u16*>(out) + i) = pack_bf16(a, b);
  else *reinterpret_cast<float2*>(out + i) = make_float2(a, b);
}

/** the last key (exclusive) that some query of [q0, q0 + rows) sees */
__device__ __forceinline__ int key_end(int q0, int rows, int tq, int tk, int causal) {
  if (!causal) return tk;
  return max(0, min(tk, min(tq, q0 + rows) + (tk - tq)));
}

// ---- forward -----------------------------------------------------------------------------------

/**
 * out, lse from q, k, v. grid = (ceil(tq / BQF), H, B), block = FWD_WARPS * 32, dynamic shared
 * memory (BQF + 2 BKF) * DP * 2 bytes. With FWD_PREFETCH the next key/value tile is read from
 * device memory into registers while the tensor cores work on the current one. out is f32, or
 * bf16 with out16.
 */
extern "C" __global__ void __launch_bounds__(FWD_THREADS, FWD_MINB)
    attn_tc_fwd(const float* q, const float* k, const float* v, float* out, float* lse, int tq, int tk,
                int heads, int kvHeads, float scale, int causal, int out16) {
  extern __shared__ __align__(16) u16 smem[];
  u16* Qs = smem;
  u16* Ks = Qs + BQF * DP;
  u16* Vs = Ks + BKF * DP;
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, g = lane >> 2, c2 = (lane & 3) * 2;
  const int q0 = (gridDim.x - 1 - blockIdx.x) * BQF;  // the longest rows first
  const int b = blockIdx.z, h = blockIdx.y, kh = h / (heads / kvHeads);
  const int shift = tk - tq;
  const float* qb = q + ((i64)b * tq * heads + h) * HD;
  const float* kb = k + ((i64)b * tk * kvHeads + kh) * HD;
  const float* vb = v + ((i64)b * tk * kvHeads + kh) * HD;
  const int kEnd = key_end(q0, BQF, tq, tk, causal);
  const int nTiles = (kEnd + BKF - 1) / BKF;
  const int w0 = q0 + warp * 16;  // first row of this warp
  const int row0 = w0 + g, row1 = row0 + 8;
  const float sl2 = scale * LOG2E;
  const int kStride = kvHeads * HD;

  load_tile<BQF, FWD_THREADS>(Qs, qb, q0, tq, heads * HD);
  float4 pk[TileRegs<BKF, FWD_THREADS>::N], pv[TileRegs<BKF, FWD_THREADS>::N];
  if (nTiles > 0) {
    tile_fetch<BKF, FWD_THREADS>(pk, kb, 0, tk, kStride);
    tile_fetch<BKF, FWD_THREADS>(pv, vb, 0, tk, kStride);
    tile_store<BKF, FWD_THREADS>(Ks, pk);
    tile_store<BKF, FWD_THREADS>(Vs, pv);
  }
  __syncthreads();

  float o[NT][4];
#pragma unroll
  for (int n = 0; n < NT; n++) o[n][0] = o[n][1] = o[n][2] = o[n][3] = 0.f;
  float m0 = NEG_INF, m1 = NEG_INF, l0 = 0.f, l1 = 0.f;

  for (int it = 0; it < nTiles; it++) {
    const int k0 = it * BKF;
    const bool more = it + 1 < nTiles;
    if (FWD_PREFETCH && more) {
      tile_fetch<BKF, FWD_THREADS>(pk, kb, k0 + BKF, tk, kStride);
      tile_fetch<BKF, FWD_THREADS>(pv, vb, k0 + BKF, tk, kStride);
    }
    if (w0 < tq && !(causal && k0 > w0 + 15 + shift)) {  // else nothing this warp sees
      float s[BKF / 8][4];
#pragma unroll
      for (int n = 0; n < BKF / 8; n++) s[n][0] = s[n][1] = s[n][2] = s[n][3] = 0.f;
#pragma unroll
      for (int kt = 0; kt < KT; kt++) {
        u32 qf[4];
        ldsm4(qf, a_addr(Qs, warp * 16, kt * 16, lane));
#pragma unroll
        for (int np = 0; np < BKF / 16; np++) {
          u32 bf[4];
          ldsm4(bf, bn_addr(Ks, np * 16, kt * 16, lane));
          mma(s[2 * np], qf, bf[0], bf[1]);
          mma(s[2 * np + 1], qf, bf[2], bf[3]);
        }
      }
      const bool mask = k0 + BKF > tk || (causal && k0 + BKF - 1 > w0 + shift);
#pragma unroll
      for (int n = 0; n < BKF / 8; n++) {
#pragma unroll
        for (int e = 0; e < 4; e++) {
          float x = s[n][e] * sl2;
          if (mask) {
            const int j = k0 + n * 8 + c2 + (e & 1);
            const int r = e < 2 ? row0 : row1;
            if (j >= tk || (causal && j > r + shift)) x = NEG_INF;
          }
          s[n][e] = x;
        }
      }
      // online softmax over rows row0 (entries 0, 1) and row1 (entries 2, 3)
      float mx0 = NEG_INF, mx1 = NEG_INF;
#pragma unroll
      for (int n = 0; n < BKF / 8; n++) {
        mx0 = fmaxf(mx0, fmaxf(s[n][0], s[n][1]));
        mx1 = fmaxf(mx1, fmaxf(s[n][2], s[n][3]));
      }
      mx0 = fmaxf(m0, quad_max(mx0));
      mx1 = fmaxf(m1, quad_max(mx1));
      const float base0 = mx0 == NEG_INF ? 0.f : mx0;
      const float base1 = mx1 == NEG_INF ? 0.f : mx1;
      const float corr0 = ex2(m0 - base0), corr1 = ex2(m1 - base1);
      m0 = mx0;
      m1 = mx1;
      l0 *= corr0;
      l1 *= corr1;
#pragma unroll
      for (int n = 0; n < NT; n++) {
        o[n][0] *= corr0;
        o[n][1] *= corr0;
        o[n][2] *= corr1;
        o[n][3] *= corr1;
      }
#pragma unroll
      for (int n = 0; n < BKF / 8; n++) {
        s[n][0] = ex2(s[n][0] - base0);
        s[n][1] = ex2(s[n][1] - base0);
        s[n][2] = ex2(s[n][2] - base1);
        s[n][3] = ex2(s[n][3] - base1);
        l0 += s[n][0] + s[n][1];
        l1 += s[n][2] + s[n][3];
      }
      // o += p v
      acc_mma_tile<BKF>(o, s, Vs, lane);
    }
    if (more) {
      __syncthreads();  // every warp is done with this tile
      if (!FWD_PREFETCH) {
        tile_fetch<BKF, FWD_THREADS>(pk, kb, k0 + BKF, tk, kStride);
        tile_fetch<BKF, FWD_THREADS>(pv, vb, k0 + BKF, tk, kStride);
      }
      tile_store<BKF, FWD_THREADS>(Ks, pk);
      tile_store<BKF, FWD_THREADS>(Vs, pv);
      __syncthreads();
    }
  }

  l0 = quad_sum(l0);
  l1 = quad_sum(l1);
  const float inv0 = l0 > 0.f ? 1.f / l0 : 0.f, inv1 = l1 > 0.f ? 1.f / l1 : 0.f;
  if (row0 < tq) {
    const i64 orow = (((i64)b * tq + row0) * heads + h) * HD + c2;
#pragma unroll
    for (int n = 0; n < NT; n++) store_out2(out, orow + n * 8, o[n][0] * inv0, o[n][1] * inv0, out16);
    if ((lane & 3) == 0) lse[((i64)b * heads + h) * tq + row0] = l0 > 0.f ? (m0 + log2f(l0)) * LN2 : NEG_INF;
  }
  if (row1 < tq) {
    const i64 orow = (((i64)b * tq + row1) * heads + h) * HD + c2;
#pragma unroll
    for (int n = 0; n < NT; n++) store_out2(out, orow + n * 8, o[n][2] * inv1, o[n][3] * inv1, out16);
    if ((lane & 3) == 0) lse[((i64)b * heads + h) * tq + row1] = l1 > 0.f ? (m1 + log2f(l1)) * LN2 : NEG_INF;
  }
}

// ---- forward, version 2 ------------------------------------------------------------------------
//
// The same result as attn_tc_fwd, restructured the way flash-attention-2's forward is: k and v
// are first rounded to bf16 once per call (attn_tc_kv16, into scratch; every query block of a
// head reads them again, so the rounding is not repeated per block), then streamed by cp.async
// into F2_STAGES shared buffers (one barrier per tile, the next tiles in flight while the tensor
// cores work on this one). A warp owns F2_MT tiles of 16 query rows (so each k/v fragment read
// from shared memory feeds F2_MT products), keeps its q fragments in registers for the whole
// block (read from the f32 q once, no shared copy), and folds the softmax scale into one FMA per
// score: p = 2^(s sl2 - m sl2) with m the row max of the raw scores (needs scale > 0). With a
// rotary embedding (AttentionParams.rope) attn_tc_qkv16_rope rotates q and k and rounds q, k, v
// in one pass instead, and the forward reads the bf16 q.

#ifndef F2_WARPS
#define F2_WARPS 4
#endif
#ifndef F2_MT
#define F2_MT (HD <= 64 ? 2 : 1)
#endif
#ifndef F2_BK
#define F2_BK 64
#endif
#ifndef F2_STAGES
#define F2_STAGES 3
#endif
#ifndef F2_MINB
#define F2_MINB 2
#endif
// F2_KV32: no attn_tc_kv16 pass; k16, v16 are then the f32 k, v, each block rounding its tiles as
// it stores them from registers (two stages, the next tile in registers while this one computes)
#ifndef F2_KV32
#define F2_KV32 0
#endif
#if F2_KV32
#undef F2_STAGES
#define F2_STAGES 2
#endif
#define F2_THREADS (F2_WARPS * 32)
#define BQ2 (16 * F2_WARPS * F2_MT)
#if F2_BK < 16 || (F2_BK & (F2_BK - 1)) != 0 || F2_STAGES < 2 || F2_MT < 1 || F2_WARPS * 32 > 1024
#error "attention_tc: F2_BK a power of two >= 16, F2_STAGES >= 2, F2_MT >= 1, at most 32 warps"
#endif

__device__ __forceinline__ void cp_async16(u16* dst, const u16* src, bool ok) {
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;" ::"r"(smem_addr(dst)), "l"(src), "r"(ok ? 16 : 0)
               : "memory");
}
__device__ __forceinline__ void cp_commit() { asm volatile("cp.async.commit_group;" ::: "memory"); }
template <int N>
__device__ __forceinline__ void cp_wait_group() {
  asm volatile("cp.async.wait_group %0;" ::"n"(N) : "memory");
}

/**
 * k16, v16 = bf16(k), bf16(v) (round to nearest even): n4 groups of 4 elements each (the whole
 * (B, tk, Hkv, D) tensors; D is a multiple of 16). grid-stride, any grid.
 */
extern "C" __global__ void attn_tc_kv16(const float* k, const float* v, u16* k16, u16* v16, i64 n4) {
  FOR_EACH(i, n4) {
    const float4 a = reinterpret_cast<const float4*>(k)[i];
    const float4 c = reinterpret_cast<const float4*>(v)[i];
    reinterpret_cast<uint2*>(k16)[i] = make_uint2(pack_bf16(a.x, a.y), pack_bf16(a.z, a.w));
    reinterpret_cast<uint2*>(v16)[i] = make_uint2(pack_bf16(c.x, c.y), pack_bf16(c.z, c.w));
  }
}

/** the rotation of rope_f32 (in double, rounded to f32): a' = a c - b s, b' = b c + a s */
__device__ __forceinline__ void rope_pair(float& a, float& b, float2 cs) {
  const double c = (double)cs.x, sn = (double)cs.y;
  const double x = a, y = b;
  a = (float)(x * c - y * sn);
  b = (float)(y * c + x * sn);
}

/**
 * Four columns c0 .. c0 + 3 of a row at `base` of x, rotated where rope_f32 would rotate them
 * (halves: c0 < rotaryDim / 2 pairs with c0 + rotaryDim / 2, both groups written here, and
 * rotaryDim / 2 a multiple of 4; pairs: adjacent, rotaryDim even), rounded to bf16 into y. The
 * group at c0 + rotaryDim / 2 of a rotated half is written by its partner (nothing to do).
 * table row pos of (cos, sin) pairs as rope_table_f32 writes it.
 */
__device__ __forceinline__ void rope_group16(const float* x, u16* y, i64 base, int c0, const float* table, int pos,
                                             int rotaryDim, int interleaved) {
  const int half = rotaryDim / 2;
  const float2* cs = reinterpret_cast<const float2*>(table) + (i64)pos * half;
  float4 a = *reinterpret_cast<const float4*>(x + base + c0);
  if (!interleaved && c0 < half) {
    float4 b = *reinterpret_cast<const float4*>(x + base + c0 + half);
    rope_pair(a.x, b.x, cs[c0]);
    rope_pair(a.y, b.y, cs[c0 + 1]);
    rope_pair(a.z, b.z, cs[c0 + 2]);
    rope_pair(a.w, b.w, cs[c0 + 3]);
    *reinterpret_cast<uint2*>(y + base + c0 + half) = make_uint2(pack_bf16(b.x, b.y), pack_bf16(b.z, b.w));
  } else if (!interleaved && c0 < rotaryDim) {
    return;
  } else if (interleaved) {
    if (c0 < rotaryDim) rope_pair(a.x, a.y, cs[c0 / 2]);
    if (c0 + 2 < rotaryDim) rope_pair(a.z, a.w, cs[c0 / 2 + 1]);
  }
  *reinterpret_cast<uint2*>(y + base + c0) = make_uint2(pack_bf16(a.x, a.y), pack_bf16(a.z, a.w));
}

/**
 * q16 = bf16(rope(q)), k16 = bf16(rope(k)), v16 = bf16(v) with the rotary embedding of rope_f32
 * (the same f32 values, then rounded): q (B, tq, H, HD) row t and k (B, tk, Hkv, HD) row s at
 * table rows t and s. One thread per group of four columns of q, then k, then v; grid-stride.
 */
extern "C" __global__ void attn_tc_qkv16_rope(const float* q, const float* k, const float* v, u16* q16, u16* k16,
                                              u16* v16, const float* table, i64 qRows, i64 kRows, int tq, int tk,
                                              int heads, int kvHeads, int rotaryDim, int interleaved) {
  constexpr int G = HD / 4;  // groups per row
  const i64 nq = qRows * G, nk = kRows * G;
  FOR_EACH(i, nq + 2 * nk) {
    if (i < nq) {
      const i64 row = i / G;
      rope_group16(q, q16, row * HD, (int)(i - row * G) * 4, table, (int)((row / heads) % tq), rotaryDim,
                   interleaved);
    } else if (i < nq + nk) {
      const i64 j = i - nq, row = j / G;
      rope_group16(k, k16, row * HD, (int)(j - row * G) * 4, table, (int)((row / kvHeads) % tk), rotaryDim,
                   interleaved);
    } else {
      const i64 j = i - nq - nk;
      const float4 a = reinterpret_cast<const float4*>(v)[j];
      reinterpret_cast<uint2*>(v16)[j] = make_uint2(pack_bf16(a.x, a.y), pack_bf16(a.z, a.w));
    }
  }
}

/**
 * out, lse from q (f32) and k16, v16 (bf16, as attn_tc_kv16 writes them), layouts as attn_tc_fwd.
 * grid = (ceil(tq / BQ2), H, B), block = F2_THREADS, dynamic shared memory
 * F2_STAGES * 2 * F2_BK * DP * 2 bytes. scale > 0. out is f32, or bf16 with out16; q is f32,
 * or bf16 with q16 (attn_tc_qkv16_rope's rotated q, with its rotated k16).
 */
extern "C" __global__ void __launch_bounds__(F2_THREADS, F2_MINB)
    attn_tc_fwd2(const float* q, const u16* k16, const u16* v16, float* out, float* lse, int tq, int tk,
                 int heads, int kvHeads, float scale, int causal, int out16, int q16) {
  extern __shared__ __align__(16) u16 smem[];
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, g = lane >> 2, c2 = (lane & 3) * 2;
  const int q0 = (gridDim.x - 1 - blockIdx.x) * BQ2;  // the longest rows first
  const int b = blockIdx.z, h = blockIdx.y, kh = h / (heads / kvHeads);
  const int shift = tk - tq;
  const int kStride = kvHeads * HD, qStride = heads * HD;
  const int kEnd = key_end(q0, BQ2, tq, tk, causal);
  const int nTiles = (kEnd + F2_BK - 1) / F2_BK;
  const int w0 = q0 + warp * 16 * F2_MT;  // first row of this warp; its rows are w0 .. w0 + 16 F2_MT - 1
  const float sl2 = scale * LOG2E;

#if !F2_KV32
  const u16* kb = k16 + ((i64)b * tk * kvHeads + kh) * HD;
  const u16* vb = v16 + ((i64)b * tk * kvHeads + kh) * HD;
  // key rows [tile F2_BK, + F2_BK) of k16 and v16 into the tile's stage (zeros past tk)
  auto load_kv = [&](int tile) {
    u16* Ks = smem + (tile % F2_STAGES) * (2 * F2_BK * DP);
    u16* Vs = Ks + F2_BK * DP;
    const int k0 = tile * F2_BK;
    constexpr int CH = HD / 8;  // 16-byte chunks per row
    constexpr int TOTAL = F2_BK * CH;
#pragma unroll
    for (int u = 0; u < (TOTAL + F2_THREADS - 1) / F2_THREADS; u++) {
      const int idx = u * F2_THREADS + threadIdx.x;
      if (TOTAL % F2_THREADS == 0 || idx < TOTAL) {
        const int r = idx / CH, c = (idx - r * CH) * 8;
        const bool ok = k0 + r < tk;
        const i64 off = ok ? (i64)(k0 + r) * kStride + c : 0;
        cp_async16(Ks + r * DP + c, kb + off, ok);
        cp_async16(Vs + r * DP + c, vb + off, ok);
      }
    }
  };
#endif
#if F2_KV32
  // f32 k and v (F2_KV32): the first tile rounded into stage 0 now, the next ones through registers
  const float* kb32 = reinterpret_cast<const float*>(k16) + ((i64)b * tk * kvHeads + kh) * HD;
  const float* vb32 = reinterpret_cast<const float*>(v16) + ((i64)b * tk * kvHeads + kh) * HD;
  float4 pk[TileRegs<F2_BK, F2_THREADS>::N], pv[TileRegs<F2_BK, F2_THREADS>::N];
  if (nTiles > 0) {
    tile_fetch<F2_BK, F2_THREADS>(pk, kb32, 0, tk, kStride);
    tile_fetch<F2_BK, F2_THREADS>(pv, vb32, 0, tk, kStride);
    tile_store<F2_BK, F2_THREADS>(smem, pk);
    tile_store<F2_BK, F2_THREADS>(smem + F2_BK * DP, pv);
  }
#else
#pragma unroll
  for (int s = 0; s < F2_STAGES - 1; s++) {
    if (s < nTiles) load_kv(s);
    cp_commit();
  }
#endif

  // this warp's q rows as A fragments (bf16), straight from device memory (zeros past tq): the
  // f32 q rounded here, or with q16 the bf16 q of attn_tc_qkv16_rope (q then holds u16 elements)
  u32 qf[F2_MT][KT][4];
#pragma unroll
  for (int m = 0; m < F2_MT; m++) {
#pragma unroll
    for (int rr = 0; rr < 2; rr++) {
      const int r = w0 + m * 16 + g + 8 * rr;
      const i64 off = ((i64)b * tq * heads + h) * HD + (i64)r * qStride + c2;
#pragma unroll
      for (int u = 0; u < 2 * KT; u++) {
        u32 x = 0u;
        if (r < tq) {
          if (q16) {
            x = *reinterpret_cast<const u32*>(reinterpret_cast<const u16*>(q) + off + 8 * u);
          } else {
            const float2 y = *reinterpret_cast<const float2*>(q + off + 8 * u);
            x = pack_bf16(y.x, y.y);
          }
        }
        qf[m][u >> 1][(u & 1) * 2 + rr] = x;
      }
    }
  }

  float o[F2_MT][NT][4];
  float mr[F2_MT][2], lr[F2_MT][2];  // running max (raw scores) and partial sums of rows g, g + 8
#pragma unroll
  for (int m = 0; m < F2_MT; m++) {
#pragma unroll
    for (int n = 0; n < NT; n++) o[m][n][0] = o[m][n][1] = o[m][n][2] = o[m][n][3] = 0.f;
    mr[m][0] = mr[m][1] = NEG_INF;
    lr[m][0] = lr[m][1] = 0.f;
  }

  for (int it = 0; it < nTiles; it++) {
#if F2_KV32
    __syncthreads();  // tile it stored by everyone, and every warp is done with tile it - 1
    const bool more = it + 1 < nTiles;
    if (more) {  // the next tile into registers while the tensor cores work on this one
      tile_fetch<F2_BK, F2_THREADS>(pk, kb32, (it + 1) * F2_BK, tk, kStride);
      tile_fetch<F2_BK, F2_THREADS>(pv, vb32, (it + 1) * F2_BK, tk, kStride);
    }
#else
    cp_wait_group<F2_STAGES - 2>();  // this thread's copies of tile it landed
    __syncthreads();                 // everyone's, and every warp is done with tile it - 1
    {
      const int next = it + F2_STAGES - 1;  // into the stage tile it - 1 used
      if (next < nTiles) load_kv(next);
      cp_commit();
    }
#endif
    const u16* Ks = smem + (it % F2_STAGES) * (2 * F2_BK * DP);
    const u16* Vs = Ks + F2_BK * DP;
    const int k0 = it * F2_BK;
    if (w0 < tq && !(causal && k0 > w0 + 16 * F2_MT - 1 + shift)) {  // else no row of this warp sees it

      float s[F2_MT][F2_BK / 8][4];
#pragma unroll
      for (int m = 0; m < F2_MT; m++)
#pragma unroll
        for (int n = 0; n < F2_BK / 8; n++) s[m][n][0] = s[m][n][1] = s[m][n][2] = s[m][n][3] = 0.f;
#pragma unroll
      for (int kt = 0; kt < KT; kt++) {
#pragma unroll
        for (int np = 0; np < F2_BK / 16; np++) {
          u32 bf[4];
          ldsm4(bf, bn_addr(Ks, np * 16, kt * 16, lane));
#pragma unroll
          for (int m = 0; m < F2_MT; m++) {
            mma(s[m][2 * np], qf[m][kt], bf[0], bf[1]);
            mma(s[m][2 * np + 1], qf[m][kt], bf[2], bf[3]);
          }
        }
      }
      if (k0 + F2_BK > tk || (causal && k0 + F2_BK - 1 > w0 + shift)) {
#pragma unroll
        for (int m = 0; m < F2_MT; m++)
#pragma unroll
          for (int n = 0; n < F2_BK / 8; n++)
#pragma unroll
            for (int e = 0; e < 4; e++) {
              const int j = k0 + n * 8 + c2 + (e & 1);
              const int r = w0 + m * 16 + g + (e < 2 ? 0 : 8);
              if (j >= tk || (causal && j > r + shift)) s[m][n][e] = NEG_INF;
            }
      }
      // online softmax per row (entries 0, 1: row g; 2, 3: row g + 8 of each 16-row tile); the
      // accumulators are rescaled only when some row of the warp got a new max (corr != 1; with
      // corr == 1 the product would change nothing)
      float cr[F2_MT][2];
      bool grew = false;
#pragma unroll
      for (int m = 0; m < F2_MT; m++) {
        float t0[F2_BK / 8], t1[F2_BK / 8];
#pragma unroll
        for (int n = 0; n < F2_BK / 8; n++) {
          t0[n] = fmaxf(s[m][n][0], s[m][n][1]);
          t1[n] = fmaxf(s[m][n][2], s[m][n][3]);
        }
#pragma unroll
        for (int w = F2_BK / 16; w >= 1; w >>= 1)  // a tree over the n-blocks
#pragma unroll
          for (int n = 0; n < w; n++) {
            t0[n] = fmaxf(t0[n], t0[n + w]);
            t1[n] = fmaxf(t1[n], t1[n + w]);
          }
        const float mx0 = quad_max(fmaxf(mr[m][0], t0[0]));
        const float mx1 = quad_max(fmaxf(mr[m][1], t1[0]));
        const float base0 = mx0 == NEG_INF ? 0.f : mx0 * sl2;
        const float base1 = mx1 == NEG_INF ? 0.f : mx1 * sl2;
        const float corr0 = ex2(mr[m][0] * sl2 - base0), corr1 = ex2(mr[m][1] * sl2 - base1);
        cr[m][0] = corr0;
        cr[m][1] = corr1;
        grew |= corr0 != 1.f || corr1 != 1.f;
        mr[m][0] = mx0;
        mr[m][1] = mx1;
        float sum0 = 0.f, sum1 = 0.f;
#pragma unroll
        for (int n = 0; n < F2_BK / 8; n++) {
          s[m][n][0] = ex2(fmaf(s[m][n][0], sl2, -base0));
          s[m][n][1] = ex2(fmaf(s[m][n][1], sl2, -base0));
          s[m][n][2] = ex2(fmaf(s[m][n][2], sl2, -base1));
          s[m][n][3] = ex2(fmaf(s[m][n][3], sl2, -base1));
          sum0 += s[m][n][0] + s[m][n][1];
          sum1 += s[m][n][2] + s[m][n][3];
        }
        lr[m][0] = lr[m][0] * corr0 + sum0;
        lr[m][1] = lr[m][1] * corr1 + sum1;
      }
      if (__any_sync(0xffffffffu, grew)) {
#pragma unroll
        for (int m = 0; m < F2_MT; m++)
#pragma unroll
          for (int n = 0; n < NT; n++) {
            o[m][n][0] *= cr[m][0];
            o[m][n][1] *= cr[m][0];
            o[m][n][2] *= cr[m][1];
            o[m][n][3] *= cr[m][1];
          }
      }
      // o += p v, each v fragment feeding the F2_MT row tiles
#pragma unroll
      for (int kk = 0; kk < F2_BK / 16; kk++) {
        u32 a[F2_MT][4];
#pragma unroll
        for (int m = 0; m < F2_MT; m++) acc_to_a(a[m], s[m][2 * kk], s[m][2 * kk + 1]);
#pragma unroll
        for (int np = 0; np < NT / 2; np++) {
          u32 bf[4];
          ldsm4t(bf, bk_addr(Vs, kk * 16, np * 16, lane));
#pragma unroll
          for (int m = 0; m < F2_MT; m++) {
            mma(o[m][2 * np], a[m], bf[0], bf[1]);
            mma(o[m][2 * np + 1], a[m], bf[2], bf[3]);
          }
        }
      }
    }
#if F2_KV32
    if (more) {  // the next tile into the other stage (every warp finished the tile it held)
      u16* Kn = smem + ((it + 1) & 1) * (2 * F2_BK * DP);
      tile_store<F2_BK, F2_THREADS>(Kn, pk);
      tile_store<F2_BK, F2_THREADS>(Kn + F2_BK * DP, pv);
    }
#endif
  }

#pragma unroll
  for (int m = 0; m < F2_MT; m++) {
#pragma unroll
    for (int half = 0; half < 2; half++) {
      const int row = w0 + m * 16 + g + 8 * half;
      const float l = quad_sum(lr[m][half]);
      const float inv = l > 0.f ? 1.f / l : 0.f;
      if (row < tq) {
        const i64 orow = (((i64)b * tq + row) * heads + h) * HD + c2;
#pragma unroll
        for (int n = 0; n < NT; n++)
          store_out2(out, orow + n * 8, o[m][n][2 * half] * inv, o[m][n][2 * half + 1] * inv, out16);
        if ((lane & 3) == 0)
          lse[((i64)b * heads + h) * tq + row] = l > 0.f ? (mr[m][half] * sl2 + log2f(l)) * LN2 : NEG_INF;
      }
    }
  }
}

// ---- backward ----------------------------------------------------------------------------------

/**
 * gq, and delta = rowsum(gOut * out) (B, H, tq) for the dk/dv kernel that runs next.
 * grid = (ceil(tq / BQ), H, B), block = 128, dynamic shared memory (2 BQ + 2 BKT) * DP * 2 bytes.
 */
extern "C" __global__ void __launch_bounds__(NTHR, DQ_MINB)
    attn_tc_bwd_dq(const float* q, const float* k, const float* v, const float* out, const float* lse,
                   const float* gOut, float* delta, float* gq, int tq, int tk, int heads, int kvHeads,
                   float scale, int causal) {
  extern __shared__ __align__(16) u16 smem[];
  u16* Qs = smem;
  u16* Gs = Qs + BQ * DP;
  u16* Ks = Gs + BQ * DP;
  u16* Vs = Ks + BKT * DP;
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, g = lane >> 2, c2 = (lane & 3) * 2;
  const int q0 = (gridDim.x - 1 - blockIdx.x) * BQ;
  const int b = blockIdx.z, h = blockIdx.y, kh = h / (heads / kvHeads);
  const int shift = tk - tq;
  const i64 qoff = ((i64)b * tq * heads + h) * HD;
  const float* kb = k + ((i64)b * tk * kvHeads + kh) * HD;
  const float* vb = v + ((i64)b * tk * kvHeads + kh) * HD;
  const int kEnd = key_end(q0, BQ, tq, tk, causal);
  const int w0 = q0 + warp * 16;
  const int row0 = w0 + g, row1 = row0 + 8;
  const float sl2 = scale * LOG2E;
  const i64 stat = ((i64)b * heads + h) * tq;

  const int nTiles = (kEnd + BKT - 1) / BKT;
  const int kStride = kvHeads * HD;
  load_tile<BQ>(Qs, q + qoff, q0, tq, heads * HD);
  load_tile<BQ>(Gs, gOut + qoff, q0, tq, heads * HD);
  float4 pk[TileRegs<BKT, NTHR>::N], pv[TileRegs<BKT, NTHR>::N];
  if (nTiles > 0) {
    tile_fetch<BKT, NTHR>(pk, kb, 0, tk, kStride);
    tile_fetch<BKT, NTHR>(pv, vb, 0, tk, kStride);
    tile_store<BKT, NTHR>(Ks, pk);
    tile_store<BKT, NTHR>(Vs, pv);
  }
  // delta of row w0 + lane / 2: each of two lanes sums half of the row in f32
  float dsum = 0.f;
  {
    const int r = w0 + (lane >> 1);
    if (r < tq) {
      const float* orow = out + qoff + (i64)r * heads * HD;
      const float* grow = gOut + qoff + (i64)r * heads * HD;
#pragma unroll
      for (int d = (lane & 1) * 4; d < HD; d += 8) {
        const float4 x = *reinterpret_cast<const float4*>(orow + d);
        const float4 y = *reinterpret_cast<const float4*>(grow + d);
        dsum += x.x * y.x + x.y * y.y + x.z * y.z + x.w * y.w;
      }
    }
    dsum += __shfl_xor_sync(0xffffffffu, dsum, 1);
    if (r < tq && (lane & 1) == 0) delta[stat + r] = dsum;
  }
  const float dl0 = __shfl_sync(0xffffffffu, dsum, 2 * g);
  const float dl1 = __shfl_sync(0xffffffffu, dsum, 2 * g + 16);
  const float ls0 = row0 < tq ? lse[stat + row0] * LOG2E : POS_INF;
  const float ls1 = row1 < tq ? lse[stat + row1] * LOG2E : POS_INF;
  __syncthreads();
  u32 qf[KT][4], gf[KT][4];
#pragma unroll
  for (int kt = 0; kt < KT; kt++) {
    ldsm4(qf[kt], a_addr(Qs, warp * 16, kt * 16, lane));
    ldsm4(gf[kt], a_addr(Gs, warp * 16, kt * 16, lane));
  }

  float dq[NT][4];
#pragma unroll
  for (int n = 0; n < NT; n++) dq[n][0] = dq[n][1] = dq[n][2] = dq[n][3] = 0.f;

  for (int it = 0; it < nTiles; it++) {
    const int k0 = it * BKT;
    const bool more = it + 1 < nTiles;
    if (BWD_PREFETCH && more) {
      tile_fetch<BKT, NTHR>(pk, kb, k0 + BKT, tk, kStride);
      tile_fetch<BKT, NTHR>(pv, vb, k0 + BKT, tk, kStride);
    }
    if (w0 < tq && !(causal && k0 > w0 + 15 + shift)) {  // else nothing this warp sees
      float s[BKT / 8][4], dp[BKT / 8][4];
#pragma unroll
      for (int n = 0; n < BKT / 8; n++) {
        s[n][0] = s[n][1] = s[n][2] = s[n][3] = 0.f;
        dp[n][0] = dp[n][1] = dp[n][2] = dp[n][3] = 0.f;
      }
#pragma unroll
      for (int kt = 0; kt < KT; kt++) {
#pragma unroll
        for (int np = 0; np < BKT / 16; np++) {
          u32 bf[4];
          ldsm4(bf, bn_addr(Ks, np * 16, kt * 16, lane));
          mma(s[2 * np], qf[kt], bf[0], bf[1]);
          mma(s[2 * np + 1], qf[kt], bf[2], bf[3]);
          ldsm4(bf, bn_addr(Vs, np * 16, kt * 16, lane));
          mma(dp[2 * np], gf[kt], bf[0], bf[1]);
          mma(dp[2 * np + 1], gf[kt], bf[2], bf[3]);
        }
      }
      const bool mask = k0 + BKT > tk || (causal && k0 + BKT - 1 > w0 + shift);
#pragma unroll
      for (int n = 0; n < BKT / 8; n++) {
#pragma unroll
        for (int e = 0; e < 4; e++) {
          float p = ex2(s[n][e] * sl2 - (e < 2 ? ls0 : ls1));
          if (mask) {
            const int j = k0 + n * 8 + c2 + (e & 1);
            const int r = e < 2 ? row0 : row1;
            if (j >= tk || (causal && j > r + shift)) p = 0.f;
          }
          s[n][e] = p * (dp[n][e] - (e < 2 ? dl0 : dl1));  // dS
        }
      }
      // dq += dS k
      acc_mma_tile<BKT>(dq, s, Ks, lane);
    }
    if (more) {
      __syncthreads();  // every warp is done with this tile
      if (!BWD_PREFETCH) {
        tile_fetch<BKT, NTHR>(pk, kb, k0 + BKT, tk, kStride);
        tile_fetch<BKT, NTHR>(pv, vb, k0 + BKT, tk, kStride);
      }
      tile_store<BKT, NTHR>(Ks, pk);
      tile_store<BKT, NTHR>(Vs, pv);
      __syncthreads();
    }
  }

  if (row0 < tq) {
    float* grow = gq + qoff + (i64)row0 * heads * HD + c2;
#pragma unroll
    for (int n = 0; n < NT; n++)
      *reinterpret_cast<float2*>(grow + n * 8) = make_float2(dq[n][0] * scale, dq[n][1] * scale);
  }
  if (row1 < tq) {
    float* grow = gq + qoff + (i64)row1 * heads * HD + c2;
#pragma unroll
    for (int n = 0; n < NT; n++)
      *reinterpret_cast<float2*>(grow + n * 8) = make_float2(dq[n][2] * scale, dq[n][3] * scale);
  }
}

/**
 * gk, gv: one block per (key tile, kv head, batch) sums over the heads of its group; reads the
 * delta that attn_tc_bwd_dq wrote. grid = (ceil(tk / BKV), Hkv, B), block = 128, dynamic shared
 * memory (2 BKV + 2 BQT) * DP * 2 + 2 BQT * 4 bytes.
 */
extern "C" __global__ void __launch_bounds__(NTHR, DKDV_MINB)
    attn_tc_bwd_dkdv(const float* q, const float* k, const float* v, const float* lse, const float* delta,
                     const float* gOut, float* gk, float* gv, int tq, int tk, int heads, int kvHeads,
                     float scale, int causal) {
  extern __shared__ __align__(16) u16 smem[];
  u16* Ks = smem;
  u16* Vs = Ks + BKV * DP;
  u16* Qs = Vs + BKV * DP;
  u16* Gs = Qs + BQT * DP;
  float* Ls = reinterpret_cast<float*>(Gs + BQT * DP);
  float* Ds = Ls + BQT;
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, g = lane >> 2, c2 = (lane & 3) * 2;
  const int k0 = blockIdx.x * BKV;  // the keys with the most queries first
  const int b = blockIdx.z, kh = blockIdx.y, group = heads / kvHeads;
  const int shift = tk - tq;
  const i64 koff = ((i64)b * tk * kvHeads + kh) * HD;
  const int w0 = k0 + warp * 16;  // first key of this warp
  const int key0 = w0 + g, key1 = key0 + 8;
  const float sl2 = scale * LOG2E;

  load_tile<BKV>(Ks, k + koff, k0, tk, kvHeads * HD);
  load_tile<BKV>(Vs, v + koff, k0, tk, kvHeads * HD);

  float dk[NT][4], dv[NT][4];
#pragma unroll
  for (int n = 0; n < NT; n++) {
    dk[n][0] = dk[n][1] = dk[n][2] = dk[n][3] = 0.f;
    dv[n][0] = dv[n][1] = dv[n][2] = dv[n][3] = 0.f;
  }
  // the first query that sees a key of this block: i >= k0 - shift; then (head, query tile) pairs
  int qStart = causal ? max(0, k0 - shift) : 0;
  qStart -= qStart % BQT;
  const int nQT = qStart < tq ? (tq - qStart + BQT - 1) / BQT : 0;
  const int nIt = group * nQT;
  const int qStride = heads * HD;
  float4 pq[TileRegs<BQT, NTHR>::N], pg[TileRegs<BQT, NTHR>::N];
  float pl = 0.f, pd = 0.f;
  // the query rows, output gradient rows, lse and delta of iteration it into registers
  auto fetch = [&](int it) {
    const int hh = it / nQT;
    const int q0 = qStart + (it - hh * nQT) * BQT;
    const int h = kh * group + hh;
    const i64 qoff = ((i64)b * tq * heads + h) * HD;
    tile_fetch<BQT, NTHR>(pq, q + qoff, q0, tq, qStride);
    tile_fetch<BQT, NTHR>(pg, gOut + qoff, q0, tq, qStride);
    const int i = q0 + (int)threadIdx.x;
    if (threadIdx.x < BQT) {
      const i64 stat = ((i64)b * heads + h) * tq;
      pl = i < tq ? lse[stat + i] * LOG2E : POS_INF;  // padding rows get p = 0
      pd = i < tq ? delta[stat + i] : 0.f;
    }
  };
  auto store = [&]() {
    tile_store<BQT, NTHR>(Qs, pq);
    tile_store<BQT, NTHR>(Gs, pg);
    if (threadIdx.x < BQT) {
      Ls[threadIdx.x] = pl;
      Ds[threadIdx.x] = pd;
    }
  };
  if (nIt > 0) {
    fetch(0);
    store();
  }
  __syncthreads();

  for (int it = 0; it < nIt; it++) {
    const int q0 = qStart + (it % nQT) * BQT;
    const bool more = it + 1 < nIt;
    if (BWD_PREFETCH && more) fetch(it + 1);
    if (w0 < tk && !(causal && w0 > q0 + BQT - 1 + shift)) {  // else no query sees these keys
      // sT = k q^T and dpT = v gOut^T: rows are this warp's keys, columns the tile's queries
      float st[BQT / 8][4], dpt[BQT / 8][4];
#pragma unroll
      for (int n = 0; n < BQT / 8; n++) {
        st[n][0] = st[n][1] = st[n][2] = st[n][3] = 0.f;
        dpt[n][0] = dpt[n][1] = dpt[n][2] = dpt[n][3] = 0.f;
      }
#pragma unroll
      for (int kt = 0; kt < KT; kt++) {
        u32 ak[4], av[4];
        ldsm4(ak, a_addr(Ks, warp * 16, kt * 16, lane));
        ldsm4(av, a_addr(Vs, warp * 16, kt * 16, lane));
#pragma unroll
        for (int np = 0; np < BQT / 16; np++) {
          u32 bf[4];
          ldsm4(bf, bn_addr(Qs, np * 16, kt * 16, lane));
          mma(st[2 * np], ak, bf[0], bf[1]);
          mma(st[2 * np + 1], ak, bf[2], bf[3]);
          ldsm4(bf, bn_addr(Gs, np * 16, kt * 16, lane));
          mma(dpt[2 * np], av, bf[0], bf[1]);
          mma(dpt[2 * np + 1], av, bf[2], bf[3]);
        }
      }
      const bool mask = causal && w0 + 15 > q0 + shift;
#pragma unroll
      for (int n = 0; n < BQT / 8; n++) {
        const int c = n * 8 + c2;  // query column within the tile
        const float2 L = *reinterpret_cast<const float2*>(Ls + c);
        const float2 D = *reinterpret_cast<const float2*>(Ds + c);
#pragma unroll
        for (int e = 0; e < 4; e++) {
          float p = ex2(st[n][e] * sl2 - ((e & 1) ? L.y : L.x));
          if (mask) {
            const int j = e < 2 ? key0 : key1;
            if (j > q0 + c + (e & 1) + shift) p = 0.f;
          }
          dpt[n][e] = p * (dpt[n][e] - ((e & 1) ? D.y : D.x));  // dS^T
          st[n][e] = p;                                         // P^T
        }
      }
      // dv += P^T gOut, dk += dS^T q
#pragma unroll
      for (int kk = 0; kk < BQT / 16; kk++) {
        u32 ap[4], ad[4];
        acc_to_a(ap, st[2 * kk], st[2 * kk + 1]);
        acc_to_a(ad, dpt[2 * kk], dpt[2 * kk + 1]);
#pragma unroll
        for (int np = 0; np < NT / 2; np++) {
          u32 bf[4];
          ldsm4t(bf, bk_addr(Gs, kk * 16, np * 16, lane));
          mma(dv[2 * np], ap, bf[0], bf[1]);
          mma(dv[2 * np + 1], ap, bf[2], bf[3]);
          ldsm4t(bf, bk_addr(Qs, kk * 16, np * 16, lane));
          mma(dk[2 * np], ad, bf[0], bf[1]);
          mma(dk[2 * np + 1], ad, bf[2], bf[3]);
        }
      }
    }
    if (more) {
      __syncthreads();  // every warp is done with this tile
      if (!BWD_PREFETCH) fetch(it + 1);
      store();
      __syncthreads();
    }
  }

  if (key0 < tk) {
    const i64 off = koff + (i64)key0 * kvHeads * HD + c2;
#pragma unroll
    for (int n = 0; n < NT; n++) {
      *reinterpret_cast<float2*>(gk + off + n * 8) = make_float2(dk[n][0] * scale, dk[n][1] * scale);
      *reinterpret_cast<float2*>(gv + off + n * 8) = make_float2(dv[n][0], dv[n][1]);
    }
  }
  if (key1 < tk) {
    const i64 off = koff + (i64)key1 * kvHeads * HD + c2;
#pragma unroll
    for (int n = 0; n < NT; n++) {
      *reinterpret_cast<float2*>(gk + off + n * 8) = make_float2(dk[n][2] * scale, dk[n][3] * scale);
      *reinterpret_cast<float2*>(gv + off + n * 8) = make_float2(dv[n][2], dv[n][3]);
    }
  }
}
