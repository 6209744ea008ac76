// The chunked SSD scan on the tensor cores (forward and backward); ssd.cu keeps the simple
// versions as the oracle. Same math and layouts as ssd.cu:
//   x, y, gx (B, T, H, P); logA, gLogA (B, T, H); bm, cm (B, T, G, N); states (B, nC, H, P, N)
//   (the state entering each chunk); head h reads group h / (H / G).
// Within a chunk of L positions starting at t0, cum_i = sum_{k<=i} logA[t0 + k], S0 entering:
//   Y     = (C B^T o W) X + diag(exp(cum)) C S0^T,    W[i][j] = exp(cum_i - cum_j) (j <= i)
//   S_end = exp(cum_{L-1}) S0 + X^T diag(w) B,        w_j = exp(cum_{L-1} - cum_j)
//
// Kernels (one block of 8 warps per (head, chunk, batch), h fastest so that the heads of a group
// read the same B and C rows from L2):
//   ssdf_state_*  a P x N product per chunk: the local state X^T diag(w) B (forward) or the
//                 gradient of the entering state gY^T diag(exp(cum)) C (backward); also writes
//                 cum_{L-1} per chunk for the pass
//   ssdf_pass     sequential over chunks, in place: local states -> entering states (forward,
//                 and the final state), or local gradients -> gradients of the leaving states
//   ssdf_out_*    the chunk output; each warp owns 16 rows i and streams 16-column blocks of
//                 C B^T through registers (mask and decay applied in registers, the block then
//                 reused as the A operand of the product with X, as flash attention does)
//   ssdf_bwd_*    dX, dB, dC and dlogA per chunk. Phase A, warp on rows i (queries):
//                 dC = (W o gY X^T) B + diag(exp(cum)) gY S0 and the row sums of R = M o gY X^T;
//                 phase B, warp on rows j (keys): dX = M^T gY + diag(w) B G^T,
//                 dB = (W o gY X^T)^T C + diag(w) X G and the column sums of R; then dcum and its
//                 reverse cumulative sum (dlogA). G is the gradient of the state leaving the chunk.
//
// Tiles live in shared memory as f32 (rows padded to 16, row stride cols + 4). The products are
// warp-level mma.sync: `_bf16` kernels round operands to bf16 (m16n8k16, f32 accumulation), the
// `_f32` kernels split each f32 operand into two tf32 parts (hi + lo) and sum three tf32 products
// (m16n8k8), which keeps about f32 accuracy. P and N are compile-time (SSD_P, SSD_N: multiples
// of 16, at least the real sizes; padding is zero); the chunk length is a run-time value (<= 256).
#include "common.cuh"

#ifndef SSD_P
#define SSD_P 64
#endif
#ifndef SSD_N
#define SSD_N 64
#endif

#define PP SSD_P
#define NP SSD_N
#define LDP (PP + 4)
#define LDN (NP + 4)
#define WARPS 8
// two output blocks per SM where their registers allow it (shared memory: see ssd-fast.ts)
#define OUT_MIN_BLOCKS (PP <= 64 && NP <= 64 ? 2 : 1)

struct SsdDims {
  int batch, seqLen, heads, groups, headDim, dState, chunk, nChunks;
};

#define XI(d, b, t, h) ((((i64)(b) * (d).seqLen + (t)) * (d).heads + (h)) * (d).headDim)
#define BI(d, b, t, g) ((((i64)(b) * (d).seqLen + (t)) * (d).groups + (g)) * (d).dState)
#define STI(d, b, c, h) ((((i64)(b) * (d).nChunks + (c)) * (d).heads + (h)) * (d).headDim * (d).dState)

// ---- warp-level tensor-core products ----------------------------------------------------------
// lane = 4 g + t. Accumulator of a 16 x 8 tile: c0 (g, 2t), c1 (g, 2t+1), c2 (g+8, 2t), c3 (g+8, 2t+1).

__device__ __forceinline__ u32 pack_bf16(float lo, float hi) {
  u32 r;
  asm("cvt.rn.bf16x2.f32 %0, %1, %2;" : "=r"(r) : "f"(hi), "f"(lo));
  return r;
}

__device__ __forceinline__ u32 to_tf32(float x) {
  u32 r;
  asm("cvt.rna.tf32.f32 %0, %1;" : "=r"(r) : "f"(x));
  return r;
}

/** A operand, 16 rows x 16 k: bf16 pairs, or f32 values of two k8 steps */
template <bool LP>
struct FA;
template <>
struct FA<true> {
  u32 r[4];
};
template <>
struct FA<false> {
  float r[8];
};
/** B operand, 16 k x 8 columns */
template <bool LP>
struct FB;
template <>
struct FB<true> {
  u32 r[2];
};
template <>
struct FB<false> {
  float r[4];
};

__device__ __forceinline__ void mma_bf16(float* c, const u32* a, const u32* b) {
  asm("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
      "{%0,%1,%2,%3};"
      : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
}

__device__ __forceinline__ void mma_tf32(float* c, const u32* a, const u32* b) {
  asm("mma.sync.aligned.m16n8k8.row.col.f32.tf32.tf32.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
      "{%0,%1,%2,%3};"
      : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
}

/** c += a b over 16 k */
__device__ __forceinline__ void mma16(float* c, const FA<true>& a, const FB<true>& b) { mma_bf16(c, a.r, b.r); }

__device__ __forceinline__ void mma16(float* c, const FA<false>& a, const FB<false>& b) {
#pragma unroll
  for (int s = 0; s < 2; s++) {
    u32 ah[4], al[4], bh[2], bl[2];
#pragma unroll
    for (int q = 0; q < 4; q++) {
      ah[q] = to_tf32(a.r[4 * s + q]);
      al[q] = to_tf32(a.r[4 * s + q] - __uint_as_float(ah[q]));
    }
#pragma unroll
    for (int q = 0; q < 2; q++) {
      bh[q] = to_tf32(b.r[2 * s + q]);
      bl[q] = to_tf32(b.r[2 * s + q] - __uint_as_float(bh[q]));
    }
    mma_tf32(c, al, bh);
    mma_tf32(c, ah, bl);
    mma_tf32(c, ah, bh);
  }
}

__device__ __forceinline__ int lane_g() { return (threadIdx.x & 31) >> 2; }
__device__ __forceinline__ int lane_t() { return threadIdx.x & 3; }

/** A(r, k) = s[(r0 + r) ld + k0 + k] */
template <bool LP>
__device__ __forceinline__ FA<LP> ldA_rk(const float* s, int ld, int r0, int k0) {
  const int g = lane_g(), t = lane_t();
  FA<LP> a;
  if constexpr (LP) {
    const float* p0 = s + (r0 + g) * ld + k0 + 2 * t;
    const float* p1 = p0 + 8 * ld;
    const float2 v00 = *(const float2*)p0, v10 = *(const float2*)p1;
    const float2 v01 = *(const float2*)(p0 + 8), v11 = *(const float2*)(p1 + 8);
    a.r[0] = pack_bf16(v00.x, v00.y);
    a.r[1] = pack_bf16(v10.x, v10.y);
    a.r[2] = pack_bf16(v01.x, v01.y);
    a.r[3] = pack_bf16(v11.x, v11.y);
  } else {
#pragma unroll
    for (int q = 0; q < 2; q++) {
      const float* p0 = s + (r0 + g) * ld + k0 + 8 * q + t;
      a.r[4 * q + 0] = p0[0];
      a.r[4 * q + 1] = p0[8 * ld];
      a.r[4 * q + 2] = p0[4];
      a.r[4 * q + 3] = p0[8 * ld + 4];
    }
  }
  return a;
}

/** A(r, k) = s[(k0 + k) ld + r0 + r] */
template <bool LP>
__device__ __forceinline__ FA<LP> ldA_kr(const float* s, int ld, int r0, int k0) {
  const int g = lane_g(), t = lane_t();
  FA<LP> a;
  if constexpr (LP) {
    const float* p = s + (k0 + 2 * t) * ld + r0 + g;
    a.r[0] = pack_bf16(p[0], p[ld]);
    a.r[1] = pack_bf16(p[8], p[ld + 8]);
    a.r[2] = pack_bf16(p[8 * ld], p[9 * ld]);
    a.r[3] = pack_bf16(p[8 * ld + 8], p[9 * ld + 8]);
  } else {
#pragma unroll
    for (int q = 0; q < 2; q++) {
      const float* p = s + (k0 + 8 * q + t) * ld + r0 + g;
      a.r[4 * q + 0] = p[0];
      a.r[4 * q + 1] = p[8];
      a.r[4 * q + 2] = p[4 * ld];
      a.r[4 * q + 3] = p[4 * ld + 8];
    }
  }
  return a;
}

/** B(k, n) = s[(n0 + n) ld + k0 + k] */
template <bool LP>
__device__ __forceinline__ FB<LP> ldB_nk(const float* s, int ld, int k0, int n0) {
  const int g = lane_g(), t = lane_t();
  FB<LP> b;
  if constexpr (LP) {
    const float* p = s + (n0 + g) * ld + k0 + 2 * t;
    const float2 v0 = *(const float2*)p, v1 = *(const float2*)(p + 8);
    b.r[0] = pack_bf16(v0.x, v0.y);
    b.r[1] = pack_bf16(v1.x, v1.y);
  } else {
    const float* p = s + (n0 + g) * ld + k0 + t;
    b.r[0] = p[0];
    b.r[1] = p[4];
    b.r[2] = p[8];
    b.r[3] = p[12];
  }
  return b;
}

/**
 * The A operands of rows r0..r0+15 of a shared tile, K columns in 16-wide steps: frag(k). With
 * 16-bit products they are converted once and kept in registers; in f32 they are loaded when used.
 */
template <bool LP, int K>
struct RowFrags {
  FA<LP> f[LP ? K / 16 : 1];
  const float* s;
  int ld, r0;
  __device__ __forceinline__ RowFrags(const float* s_, int ld_, int r0_) : s(s_), ld(ld_), r0(r0_) {
    if constexpr (LP) {
#pragma unroll
      for (int k = 0; k < K / 16; k++) f[k] = ldA_rk<LP>(s, ld, r0, 16 * k);
    }
  }
  __device__ __forceinline__ FA<LP> operator()(int k) const {
    if constexpr (LP) return f[k];
    else return ldA_rk<LP>(s, ld, r0, 16 * k);
  }
};

/**
 * One 16 x 16 tile of a strip product: acc[q] += A B^T over K (a multiple of 16), A's 16-row
 * fragments from frag(k), B^T's 16 columns from rows 16 kk.. of s (two 8-column halves, q).
 */
template <bool LP, int K, typename Frag>
__device__ __forceinline__ void strip_mma(float (&acc)[2][4], const Frag& frag, const float* s, int ld, int kk) {
#pragma unroll
  for (int k = 0; k < K / 16; k++) {
    const FA<LP> a = frag(k);
#pragma unroll
    for (int q = 0; q < 2; q++) mma16(acc[q], a, ldB_nk<LP>(s, ld, 16 * k, 16 * kk + 8 * q));
  }
}

/** B(k, n) = s[(k0 + k) ld + n0 + n] */
template <bool LP>
__device__ __forceinline__ FB<LP> ldB_kn(const float* s, int ld, int k0, int n0) {
  const int g = lane_g(), t = lane_t();
  FB<LP> b;
  if constexpr (LP) {
    const float* p = s + (k0 + 2 * t) * ld + n0 + g;
    b.r[0] = pack_bf16(p[0], p[ld]);
    b.r[1] = pack_bf16(p[8 * ld], p[9 * ld]);
  } else {
    const float* p = s + (k0 + t) * ld + n0 + g;
    b.r[0] = p[0];
    b.r[1] = p[4 * ld];
    b.r[2] = p[8 * ld];
    b.r[3] = p[12 * ld];
  }
  return b;
}

/** Two accumulator tiles (16 x 8 each, columns 0-7 and 8-15) as the A operand of the next product. */
__device__ __forceinline__ FA<true> acc_to_A(const float* c0, const float* c1, FA<true>*) {
  FA<true> a;
  a.r[0] = pack_bf16(c0[0], c0[1]);
  a.r[1] = pack_bf16(c0[2], c0[3]);
  a.r[2] = pack_bf16(c1[0], c1[1]);
  a.r[3] = pack_bf16(c1[2], c1[3]);
  return a;
}

__device__ __forceinline__ FA<false> acc_to_A(const float* c0, const float* c1, FA<false>*) {
  // tf32 A of a k8 step: a0 (g, t), a1 (g+8, t), a2 (g, t+4), a3 (g+8, t+4); column t sits in
  // lane 4g + t/2, register t&1 (row g) or 2 + (t&1) (row g+8)
  const int lane = threadIdx.x & 31, t = lane & 3;
  const int src0 = (lane & ~3) | (t >> 1), src1 = src0 + 2;
  const bool odd = t & 1;
  FA<false> a;
#pragma unroll
  for (int q = 0; q < 2; q++) {
    const float* c = q ? c1 : c0;
    const float v0 = __shfl_sync(0xffffffffu, c[0], src0), v1 = __shfl_sync(0xffffffffu, c[1], src0);
    const float v2 = __shfl_sync(0xffffffffu, c[2], src0), v3 = __shfl_sync(0xffffffffu, c[3], src0);
    const float w0 = __shfl_sync(0xffffffffu, c[0], src1), w1 = __shfl_sync(0xffffffffu, c[1], src1);
    const float w2 = __shfl_sync(0xffffffffu, c[2], src1), w3 = __shfl_sync(0xffffffffu, c[3], src1);
    a.r[4 * q + 0] = odd ? v1 : v0;
    a.r[4 * q + 1] = odd ? v3 : v2;
    a.r[4 * q + 2] = odd ? w1 : w0;
    a.r[4 * q + 3] = odd ? w3 : w2;
  }
  return a;
}

/** the sum over the 4 lanes of a row group */
__device__ __forceinline__ float quad_sum(float v) {
  v += __shfl_xor_sync(0xffffffffu, v, 1);
  v += __shfl_xor_sync(0xffffffffu, v, 2);
  return v;
}

// ---- shared-memory tiles -----------------------------------------------------------------------

/**
 * dst[r][c] (row stride ld, rows rowsP, columns colsP) = src[r * stride + c] (scaled by
 * scale[r] when given) for r < rows, c < cols, else 0. All threads of the block.
 */
__device__ __forceinline__ void load_tile(float* dst, int ld, int rowsP, int colsP, const float* __restrict__ src,
                                          i64 stride, int rows, int cols, const float* scale) {
  const int nth = blockDim.x;
  if ((cols & 3) == 0 && (stride & 3) == 0) {
    const int c4 = colsP >> 2, total = rowsP * c4;
    for (int base = threadIdx.x; base < total; base += 4 * nth) {
      float4 v[4];
#pragma unroll
      for (int u = 0; u < 4; u++) {
        const int idx = base + u * nth, r = idx / c4, c = (idx - r * c4) * 4;
        v[u] = make_float4(0.f, 0.f, 0.f, 0.f);
        if (idx < total && r < rows && c < cols) v[u] = __ldg((const float4*)(src + r * stride + c));
      }
#pragma unroll
      for (int u = 0; u < 4; u++) {
        const int idx = base + u * nth, r = idx / c4, c = (idx - r * c4) * 4;
        if (idx < total) {
          float4 w = v[u];
          if (scale) {
            const float f = scale[r];
            w.x *= f, w.y *= f, w.z *= f, w.w *= f;
          }
          *(float4*)(dst + r * ld + c) = w;
        }
      }
    }
  } else {
    const int total = rowsP * colsP;
    for (int idx = threadIdx.x; idx < total; idx += nth) {
      const int r = idx / colsP, c = idx - r * colsP;
      float v = (r < rows && c < cols) ? __ldg(src + r * stride + c) : 0.f;
      if (scale) v *= scale[r];
      dst[r * ld + c] = v;
    }
  }
}

__device__ __forceinline__ u32 smem_addr(const void* p) {
  u32 a;
  asm("{ .reg .u64 t; cvta.to.shared.u64 t, %1; cvt.u32.u64 %0, t; }" : "=r"(a) : "l"(p));
  return a;
}

/**
 * load_tile without scaling through cp.async (16 bytes at a time, zero-filled outside the
 * source) when rows are whole float4s; then cp_wait() and a barrier before use. Otherwise the
 * synchronous load_tile.
 */
__device__ __forceinline__ void load_tile_async(float* dst, int ld, int rowsP, int colsP, const float* src,
                                                i64 stride, int rows, int cols) {
  if ((cols & 3) != 0 || (stride & 3) != 0 || (((unsigned long long)src) & 15) != 0) {
    load_tile(dst, ld, rowsP, colsP, src, stride, rows, cols, nullptr);
    return;
  }
  const int c4 = colsP >> 2, total = rowsP * c4;
  for (int idx = threadIdx.x; idx < total; idx += blockDim.x) {
    const int r = idx / c4, c = (idx - r * c4) * 4;
    const bool ok = r < rows && c < cols;
    const float* from = ok ? src + r * stride + c : src;
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;" ::"r"(smem_addr(dst + r * ld + c)), "l"(from),
                 "r"(ok ? 16 : 0)
                 : "memory");
  }
}

__device__ __forceinline__ void cp_wait() { asm volatile("cp.async.wait_all;" ::: "memory"); }

/**
 * cum[i] (i < Qp) = sum_{k <= i, k < L} logA[b, t0 + k, h]; one warp (the calling one). Qp <= 256.
 */
__device__ __forceinline__ void chunk_cum(const float* __restrict__ logA, const SsdDims& d, int b, int h, int t0,
                                          int L, int Qp, float* cum) {
  const int lane = threadIdx.x & 31, per = (Qp + 31) >> 5;
  float v[8];
  float run = 0.f;
#pragma unroll
  for (int k = 0; k < 8; k++) {
    const int i = lane * per + k;
    if (k < per) {
      run += (i < L) ? __ldg(logA + ((i64)b * d.seqLen + t0 + i) * d.heads + h) : 0.f;
      v[k] = run;
    }
  }
  float incl = run;
#pragma unroll
  for (int o = 1; o < 32; o <<= 1) {
    const float n = __shfl_up_sync(0xffffffffu, incl, o);
    if (lane >= o) incl += n;
  }
  const float excl = incl - run;
#pragma unroll
  for (int k = 0; k < 8; k++) {
    const int i = lane * per + k;
    if (k < per && i < Qp) cum[i] = excl + v[k];
  }
}

/** cum[i] (i < Qp) = sum_{k <= i} raw[k] (raw zero from L on); one warp (the calling one). */
__device__ __forceinline__ void chunk_cum_smem(const float* raw, int Qp, float* cum) {
  const int lane = threadIdx.x & 31, per = (Qp + 31) >> 5;
  float v[8];
  float run = 0.f;
#pragma unroll
  for (int k = 0; k < 8; k++) {
    const int i = lane * per + k;
    if (k < per) {
      run += (i < Qp) ? raw[i] : 0.f;
      v[k] = run;
    }
  }
  float incl = run;
#pragma unroll
  for (int o = 1; o < 32; o <<= 1) {
    const float n = __shfl_up_sync(0xffffffffu, incl, o);
    if (lane >= o) incl += n;
  }
  const float excl = incl - run;
#pragma unroll
  for (int k = 0; k < 8; k++) {
    const int i = lane * per + k;
    if (k < per && i < Qp) cum[i] = excl + v[k];
  }
}

/** raw[i] = logA[b, t0 + i, h] for i < L, 0 up to Qp, through cp.async (4 bytes each) */
__device__ __forceinline__ void load_logA_async(float* raw, const float* logA, const SsdDims& d, int b, int h, int t0,
                                                int L, int Qp) {
  for (int i = threadIdx.x; i < Qp; i += blockDim.x) {
    const bool ok = i < L;
    const float* from = logA + (ok ? ((i64)b * d.seqLen + t0 + i) * d.heads + h : 0);
    asm volatile("cp.async.ca.shared.global [%0], [%1], 4, %2;" ::"r"(smem_addr(raw + i)), "l"(from), "r"(ok ? 4 : 0)
                 : "memory");
  }
}

__device__ __forceinline__ void cp_commit() { asm volatile("cp.async.commit_group;" ::: "memory"); }
template <int N>
__device__ __forceinline__ void cp_wait_group() {
  asm volatile("cp.async.wait_group %0;" ::"n"(N) : "memory");
}

/** out[p], out[p + 1] for p < P (a float2 store where P is even) */
__device__ __forceinline__ void store2(float* row, int p, int P, float v0, float v1) {
  if ((P & 1) == 0) {
    if (p < P) *(float2*)(row + p) = make_float2(v0, v1);
  } else {
    if (p < P) row[p] = v0;
    if (p + 1 < P) row[p + 1] = v1;
  }
}

/** the two values store2 would write at row + p (0 past P) */
__device__ __forceinline__ void load2(const float* row, int p, int P, float& v0, float& v1) {
  if ((P & 1) == 0 && p < P) {
    const float2 v = *(const float2*)(row + p);
    v0 = v.x, v1 = v.y;
  } else {
    v0 = p < P ? row[p] : 0.f;
    v1 = p + 1 < P ? row[p + 1] : 0.f;
  }
}

__host__ __device__ constexpr int round16(int v) { return (v + 15) & ~15; }

// ---- chunk state (P x N per chunk) -------------------------------------------------------------

/**
 * mode 0: out = X^T diag(exp(cum_{L-1} - cum)) B (xs = x (B,T,H,P), bs = B (B,T,G,N));
 * mode 1: out = gY^T diag(exp(cum)) C (xs = gy, bs = C). out (B, nC, H, P, N); cl (B, H, nC)
 * gets cum_{L-1}. Shared: cum (QA), scale (QA), X (QA x LDP), B (QA x LDN).
 */
template <bool LP>
__device__ __forceinline__ void state_compute(const float* Xs, const float* Bs, int Qp, float* o, int P, int N);

template <bool LP>
__device__ void chunk_state(const float* __restrict__ xs, const float* __restrict__ bs,
                            const float* __restrict__ logA, float* __restrict__ out, float* __restrict__ cl,
                            const SsdDims& d, int mode) {
  extern __shared__ float4 smem4[];
  float* sm = (float*)smem4;
  const int H = d.heads, h = blockIdx.x % H, c = blockIdx.x / H, b = blockIdx.y;
  const int Q = d.chunk, QA = round16(Q), t0 = c * Q, L = min(Q, d.seqLen - t0), Qp = round16(L);
  const int g = h / (H / d.groups), P = d.headDim, N = d.dState;
  float* cum = sm;
  float* sc = cum + QA;
  float* Xs = sc + QA;
  float* Bs = Xs + QA * LDP;
  const int warp = threadIdx.x >> 5;
  load_tile_async(Xs, LDP, Qp, PP, xs + XI(d, b, t0, h), (i64)H * P, L, P);
  load_tile_async(Bs, LDN, Qp, NP, bs + BI(d, b, t0, g), (i64)d.groups * N, L, N);
  if (warp == 0) chunk_cum(logA, d, b, h, t0, L, Qp, cum);
  __syncthreads();
  const float last = cum[L - 1];
  for (int i = threadIdx.x; i < Qp; i += blockDim.x) sc[i] = i < L ? expf(mode == 0 ? last - cum[i] : cum[i]) : 0.f;
  if (threadIdx.x == 0) cl[((i64)b * H + h) * d.nChunks + c] = last;
  cp_wait();
  __syncthreads();
  // rows of B (or C) times their weights
  for (int e = threadIdx.x; e < Qp * NP; e += blockDim.x) Bs[(e / NP) * LDN + e % NP] *= sc[e / NP];
  __syncthreads();
  state_compute<LP>(Xs, Bs, Qp, out + STI(d, b, c, h), P, N);
}

/** o (P x N, row stride N) = Xs^T Bs over Qp rows (both tiles in shared memory) */
template <bool LP>
__device__ __forceinline__ void state_compute(const float* Xs, const float* Bs, int Qp, float* o, int P, int N) {
  const int warp = threadIdx.x >> 5, gq = lane_g(), t = lane_t();
  // tasks: 16 rows of p x 16 columns of n
  for (int task = warp; task < (PP / 16) * (NP / 16); task += WARPS) {
    const int p0 = (task / (NP / 16)) * 16, n0 = (task % (NP / 16)) * 16;
    float acc[2][4] = {};
    for (int k0 = 0; k0 < Qp; k0 += 16) {
      const FA<LP> a = ldA_kr<LP>(Xs, LDP, p0, k0);
#pragma unroll
      for (int q = 0; q < 2; q++) mma16(acc[q], a, ldB_kn<LP>(Bs, LDN, k0, n0 + 8 * q));
    }
#pragma unroll
    for (int q = 0; q < 2; q++) {
      const int n = n0 + 8 * q + 2 * t, pa = p0 + gq, pb = pa + 8;
      if (pa < P) store2(o + (i64)pa * N, n, N, acc[q][0], acc[q][1]);
      if (pb < P) store2(o + (i64)pb * N, n, N, acc[q][2], acc[q][3]);
    }
  }
}

extern "C" __global__ void __launch_bounds__(256) ssdf_state_bf16(const float* xs, const float* bs, const float* logA,
                                                                  float* out, float* cl, SsdDims d, int mode) {
  chunk_state<true>(xs, bs, logA, out, cl, d, mode);
}

extern "C" __global__ void __launch_bounds__(256) ssdf_state_f32(const float* xs, const float* bs, const float* logA,
                                                                 float* out, float* cl, SsdDims d, int mode) {
  chunk_state<false>(xs, bs, logA, out, cl, d, mode);
}

/**
 * In place over chunks: forward (reverse 0) S_0 = 0, S_{c+1} = exp(cl_c) S_c + local_c,
 * st[c] <- S_c, fin (B, H, P, N) | null <- S_nC; backward (reverse 1) G_{nC-1} = 0,
 * G_{c-1} = exp(cl_c) G_c + local_c, st[c] <- G_c. One thread per 4 elements (b, h, p, n..n+3)
 * when P N is a multiple of 4 (else per element); the locals of 8 chunks are loaded at once.
 */
extern "C" __global__ void ssdf_pass(float* st, const float* cl, float* fin, SsdDims d, int reverse) {
  const i64 PN = (i64)d.headDim * d.dState;
  const int nC = d.nChunks, vec = (PN & 3) == 0 ? 4 : 1;
  const i64 PNv = PN / vec;
  const i64 n = (i64)d.batch * d.heads * PNv;
  FOR_EACH(idx, n) {
    const i64 e = (idx % PNv) * vec;
    const int h = (int)((idx / PNv) % d.heads);
    const int b = (int)(idx / (PNv * d.heads));
    const float* clp = cl + ((i64)b * d.heads + h) * nC;
    float4 S = make_float4(0.f, 0.f, 0.f, 0.f);
    for (int c0 = 0; c0 < nC; c0 += 8) {
      float4 loc[8];
#pragma unroll
      for (int u = 0; u < 8; u++) {
        const int c = reverse ? nC - 1 - (c0 + u) : c0 + u;
        loc[u] = make_float4(0.f, 0.f, 0.f, 0.f);
        if (c0 + u < nC) {
          const float* at = st + STI(d, b, c, h) + e;
          if (vec == 4) loc[u] = *(const float4*)at;
          else loc[u].x = *at;
        }
      }
#pragma unroll
      for (int u = 0; u < 8; u++) {
        if (c0 + u < nC) {
          const int c = reverse ? nC - 1 - (c0 + u) : c0 + u;
          float* at = st + STI(d, b, c, h) + e;
          if (vec == 4) *(float4*)at = S;
          else *at = S.x;
          const float a = expf(clp[c]);
          S.x = a * S.x + loc[u].x, S.y = a * S.y + loc[u].y;
          S.z = a * S.z + loc[u].z, S.w = a * S.w + loc[u].w;
        }
      }
    }
    if (fin) {
      float* at = fin + ((i64)b * d.heads + h) * PN + e;
      if (vec == 4) *(float4*)at = S;
      else *at = S.x;
    }
  }
}

// ---- forward output ----------------------------------------------------------------------------

template <bool LP>
__device__ __forceinline__ void out_compute(const float* cum, const float* Cs, const float* Bs, const float* Xs,
                                            const float* S0, int lds0, int L, int Qp, float* y, const SsdDims& d,
                                            int b, int h, int t0);

/** Shared: cum (QA), C, B (QA x LDN), X (QA x LDP), S0 (PP x LDN). */
template <bool LP>
__device__ void chunk_out(const float* __restrict__ x, const float* __restrict__ bm, const float* __restrict__ cm,
                          const float* __restrict__ logA, const float* __restrict__ st, float* __restrict__ y,
                          const SsdDims& d) {
  extern __shared__ float4 smem4[];
  float* sm = (float*)smem4;
  const int H = d.heads, h = blockIdx.x % H, c = blockIdx.x / H, b = blockIdx.y;
  const int Q = d.chunk, QA = round16(Q), t0 = c * Q, L = min(Q, d.seqLen - t0), Qp = round16(L);
  const int g = h / (H / d.groups), P = d.headDim, N = d.dState, G = d.groups;
  float* cum = sm;
  float* Cs = cum + QA;
  float* Bs = Cs + QA * LDN;
  float* Xs = Bs + QA * LDN;
  float* Ss = Xs + QA * LDP;
  const int warp = threadIdx.x >> 5;
  load_tile_async(Cs, LDN, Qp, NP, cm + BI(d, b, t0, g), (i64)G * N, L, N);
  load_tile_async(Bs, LDN, Qp, NP, bm + BI(d, b, t0, g), (i64)G * N, L, N);
  load_tile_async(Xs, LDP, Qp, PP, x + XI(d, b, t0, h), (i64)H * P, L, P);
  // S0 as a B operand: straight from global memory (L1) when P and N need no padding, which
  // keeps the shared memory under half an SM (two blocks per SM); else a zero-padded tile
  const bool s0g = P == PP && N == NP;
  const float* S0 = s0g ? st + STI(d, b, c, h) : Ss;
  const int lds0 = s0g ? N : LDN;
  if (!s0g) load_tile_async(Ss, LDN, PP, NP, st + STI(d, b, c, h), N, P, N);
  if (warp == 0) chunk_cum(logA, d, b, h, t0, L, Qp, cum);
  cp_wait();
  __syncthreads();
  out_compute<LP>(cum, Cs, Bs, Xs, S0, lds0, L, Qp, y, d, b, h, t0);
}

/** y rows t0 .. t0 + L - 1 of head h from the tiles in shared memory (S0 in shared or global memory) */
template <bool LP>
__device__ __forceinline__ void out_compute(const float* cum, const float* Cs, const float* Bs, const float* Xs,
                                            const float* S0, int lds0, int L, int Qp, float* y, const SsdDims& d,
                                            int b, int h, int t0) {
  const int warp = threadIdx.x >> 5, gq = lane_g(), t = lane_t(), P = d.headDim;
  for (int s = warp; s < Qp / 16; s += WARPS) {
    const int r0 = 16 * s, i0 = r0 + gq, i1 = i0 + 8;
    const RowFrags<LP, NP> cfrag(Cs, LDN, r0);
    float acc[PP / 8][4] = {};
    // inter-chunk: exp(cum_i) C_i S0^T
#pragma unroll
    for (int k = 0; k < NP / 16; k++) {
      const FA<LP> a = cfrag(k);
#pragma unroll
      for (int pt = 0; pt < PP / 8; pt++) mma16(acc[pt], a, ldB_nk<LP>(S0, lds0, 16 * k, 8 * pt));
    }
    const float ci0 = cum[i0], ci1 = cum[i1];
    {
      const float e0 = expf(ci0), e1 = expf(ci1);
#pragma unroll
      for (int pt = 0; pt < PP / 8; pt++) {
        acc[pt][0] *= e0, acc[pt][1] *= e0;
        acc[pt][2] *= e1, acc[pt][3] *= e1;
      }
    }
    // intra-chunk, 16 columns j at a time
    for (int kk = 0; kk <= s; kk++) {
      float sc[2][4] = {};
      strip_mma<LP, NP>(sc, cfrag, Bs, LDN, kk);
#pragma unroll
      for (int q = 0; q < 2; q++) {
        const int j0 = 16 * kk + 8 * q + 2 * t, j1 = j0 + 1;
        const float cj0 = cum[j0], cj1 = cum[j1];
        sc[q][0] = j0 <= i0 ? sc[q][0] * expf(ci0 - cj0) : 0.f;
        sc[q][1] = j1 <= i0 ? sc[q][1] * expf(ci0 - cj1) : 0.f;
        sc[q][2] = j0 <= i1 ? sc[q][2] * expf(ci1 - cj0) : 0.f;
        sc[q][3] = j1 <= i1 ? sc[q][3] * expf(ci1 - cj1) : 0.f;
      }
      const FA<LP> m = acc_to_A(sc[0], sc[1], (FA<LP>*)nullptr);
#pragma unroll
      for (int pt = 0; pt < PP / 8; pt++) mma16(acc[pt], m, ldB_kn<LP>(Xs, LDP, 16 * kk, 8 * pt));
    }
#pragma unroll
    for (int pt = 0; pt < PP / 8; pt++) {
      const int p = 8 * pt + 2 * t;
      if (i0 < L) store2(y + XI(d, b, t0 + i0, h), p, P, acc[pt][0], acc[pt][1]);
      if (i1 < L) store2(y + XI(d, b, t0 + i1, h), p, P, acc[pt][2], acc[pt][3]);
    }
  }
}

extern "C" __global__ void __launch_bounds__(256, OUT_MIN_BLOCKS) ssdf_out_bf16(const float* x, const float* bm, const float* cm,
                                                                   const float* logA, const float* st, float* y,
                                                                   SsdDims d) {
  chunk_out<true>(x, bm, cm, logA, st, y, d);
}

extern "C" __global__ void __launch_bounds__(256, OUT_MIN_BLOCKS) ssdf_out_f32(const float* x, const float* bm, const float* cm,
                                                                  const float* logA, const float* st, float* y,
                                                                  SsdDims d) {
  chunk_out<false>(x, bm, cm, logA, st, y, d);
}

// ---- backward ----------------------------------------------------------------------------------

/**
 * gx (B,T,H,P), gBh and gCh (B,T,H,N) (per head; the host sums them over a group), gLogA (B,T,H).
 * st: entering states S0; gS: gradients of the leaving states G (both (B, nC, H, P, N)).
 * Shared: cum, rA, rB, bd (QA each), C, B (QA x LDN), X, gY (QA x LDP), S0, G (PP x LDN), 32.
 * dcum_i = rowsum_i(R) - colsum_i(R) + C_i . dC_inter_i - B_i . dB_inter_i
 *          + [i = L-1] (exp(cum_{L-1}) <G, S0> + sum_j B_j . dB_inter_j),   R = M o (gY X^T)
 */
template <bool LP, bool ACC>
__device__ void chunk_bwd(const float* __restrict__ x, const float* __restrict__ bm, const float* __restrict__ cm,
                          const float* __restrict__ logA, const float* __restrict__ st,
                          const float* __restrict__ gS, const float* __restrict__ gy, float* __restrict__ gx,
                          float* __restrict__ gBh, float* __restrict__ gCh, float* __restrict__ gLogA,
                          const SsdDims& d) {
  extern __shared__ float4 smem4[];
  float* sm = (float*)smem4;
  const int H = d.heads, h = blockIdx.x % H, c = blockIdx.x / H, b = blockIdx.y;
  const int Q = d.chunk, QA = round16(Q), t0 = c * Q, L = min(Q, d.seqLen - t0), Qp = round16(L);
  const int g = h / (H / d.groups), P = d.headDim, N = d.dState, G = d.groups;
  float* cum = sm;
  float* rA = cum + QA;
  float* rB = rA + QA;
  float* bd = rB + QA;
  float* Cs = bd + QA;
  float* Bs = Cs + QA * LDN;
  float* Xs = Bs + QA * LDN;
  float* Ys = Xs + QA * LDP;
  float* S0s = Ys + QA * LDP;
  float* Gs = S0s + PP * LDN;
  float* red = Gs + PP * LDN;
  const int warp = threadIdx.x >> 5;
  load_tile_async(Cs, LDN, Qp, NP, cm + BI(d, b, t0, g), (i64)G * N, L, N);
  load_tile_async(Bs, LDN, Qp, NP, bm + BI(d, b, t0, g), (i64)G * N, L, N);
  load_tile_async(Xs, LDP, Qp, PP, x + XI(d, b, t0, h), (i64)H * P, L, P);
  load_tile_async(Ys, LDP, Qp, PP, gy + XI(d, b, t0, h), (i64)H * P, L, P);
  load_tile_async(S0s, LDN, PP, NP, st + STI(d, b, c, h), N, P, N);
  load_tile_async(Gs, LDN, PP, NP, gS + STI(d, b, c, h), N, P, N);
  if (warp == 0) chunk_cum(logA, d, b, h, t0, L, Qp, cum);
  cp_wait();
  __syncthreads();
  const int gq = lane_g(), t = lane_t(), strips = Qp / 16;
  const float last = cum[L - 1];
  const i64 bhN = (i64)H * N;
  // phase A: rows i
  for (int s = warp; s < strips; s += WARPS) {
    const int r0 = 16 * s, i0 = r0 + gq, i1 = i0 + 8;
    const RowFrags<LP, NP> cfrag(Cs, LDN, r0);
    const RowFrags<LP, PP> yfrag(Ys, LDP, r0);
    float acc[NP / 8][4] = {};
    // dC inter: exp(cum_i) gY_i S0
#pragma unroll
    for (int k = 0; k < PP / 16; k++) {
      const FA<LP> a = yfrag(k);
#pragma unroll
      for (int nt = 0; nt < NP / 8; nt++) mma16(acc[nt], a, ldB_kn<LP>(S0s, LDN, 16 * k, 8 * nt));
    }
    const float ci0 = cum[i0], ci1 = cum[i1];
    float row0 = 0.f, row1 = 0.f;  // C_i . dC_inter_i, then + rowsum R
    {
      const float e0 = expf(ci0), e1 = expf(ci1);
#pragma unroll
      for (int nt = 0; nt < NP / 8; nt++) {
        const int n = 8 * nt + 2 * t;
        acc[nt][0] *= e0, acc[nt][1] *= e0;
        acc[nt][2] *= e1, acc[nt][3] *= e1;
        row0 += acc[nt][0] * Cs[i0 * LDN + n] + acc[nt][1] * Cs[i0 * LDN + n + 1];
        row1 += acc[nt][2] * Cs[i1 * LDN + n] + acc[nt][3] * Cs[i1 * LDN + n + 1];
      }
    }
    for (int kk = 0; kk <= s; kk++) {
      float cb[2][4] = {}, dg[2][4] = {};
      strip_mma<LP, NP>(cb, cfrag, Bs, LDN, kk);
      strip_mma<LP, PP>(dg, yfrag, Xs, LDP, kk);
#pragma unroll
      for (int q = 0; q < 2; q++) {
        const int j0 = 16 * kk + 8 * q + 2 * t, j1 = j0 + 1;
        const float cj0 = cum[j0], cj1 = cum[j1];
        dg[q][0] = j0 <= i0 ? dg[q][0] * expf(ci0 - cj0) : 0.f;
        dg[q][1] = j1 <= i0 ? dg[q][1] * expf(ci0 - cj1) : 0.f;
        dg[q][2] = j0 <= i1 ? dg[q][2] * expf(ci1 - cj0) : 0.f;
        dg[q][3] = j1 <= i1 ? dg[q][3] * expf(ci1 - cj1) : 0.f;
        row0 += cb[q][0] * dg[q][0] + cb[q][1] * dg[q][1];
        row1 += cb[q][2] * dg[q][2] + cb[q][3] * dg[q][3];
      }
      const FA<LP> w = acc_to_A(dg[0], dg[1], (FA<LP>*)nullptr);
#pragma unroll
      for (int nt = 0; nt < NP / 8; nt++) mma16(acc[nt], w, ldB_kn<LP>(Bs, LDN, 16 * kk, 8 * nt));
    }
    row0 = quad_sum(row0);
    row1 = quad_sum(row1);
    if (t == 0) {
      rA[i0] = row0;
      rA[i1] = row1;
    }
#pragma unroll
    for (int nt = 0; nt < NP / 8; nt++) {
      const int n = 8 * nt + 2 * t;
      if (i0 < L) store2(gCh + ((i64)b * d.seqLen + t0 + i0) * bhN + (i64)h * N, n, N, acc[nt][0], acc[nt][1]);
      if (i1 < L) store2(gCh + ((i64)b * d.seqLen + t0 + i1) * bhN + (i64)h * N, n, N, acc[nt][2], acc[nt][3]);
    }
  }
  // phase B: rows j
  for (int s = warp; s < strips; s += WARPS) {
    const int r0 = 16 * s, j0 = r0 + gq, j1 = j0 + 8;
    const RowFrags<LP, NP> bfrag(Bs, LDN, r0);
    const RowFrags<LP, PP> xfrag(Xs, LDP, r0);
    float ax[PP / 8][4] = {}, ab[NP / 8][4] = {};
    // ACC: x's gradient is added to what gx holds (the gate's D-term part): loaded here, so the
    // loads are in flight during the products below rather than in front of the stores (up to
    // P = 64; larger heads would spill the registers, and load at the stores)
    constexpr bool PRE = ACC && PP <= 64;
    float old[PRE ? PP / 8 : 1][4];
    if (PRE) {
#pragma unroll
      for (int pt = 0; pt < (PRE ? PP / 8 : 0); pt++) {
        const int p = 8 * pt + 2 * t;
        old[pt][0] = old[pt][1] = old[pt][2] = old[pt][3] = 0.f;
        if (j0 < L) load2(gx + XI(d, b, t0 + j0, h), p, P, old[pt][0], old[pt][1]);
        if (j1 < L) load2(gx + XI(d, b, t0 + j1, h), p, P, old[pt][2], old[pt][3]);
      }
    }
    // dX inter: w_j B_j G^T; dB inter: w_j X_j G
#pragma unroll
    for (int k = 0; k < NP / 16; k++) {
      const FA<LP> a = bfrag(k);
#pragma unroll
      for (int pt = 0; pt < PP / 8; pt++) mma16(ax[pt], a, ldB_nk<LP>(Gs, LDN, 16 * k, 8 * pt));
    }
#pragma unroll
    for (int k = 0; k < PP / 16; k++) {
      const FA<LP> a = xfrag(k);
#pragma unroll
      for (int nt = 0; nt < NP / 8; nt++) mma16(ab[nt], a, ldB_kn<LP>(Gs, LDN, 16 * k, 8 * nt));
    }
    const float cj0 = cum[j0], cj1 = cum[j1];
    float col0 = 0.f, col1 = 0.f;  // B_j . dB_inter_j, then (separately) colsum R
    {
      const float w0 = expf(last - cj0), w1 = expf(last - cj1);
#pragma unroll
      for (int pt = 0; pt < PP / 8; pt++) {
        ax[pt][0] *= w0, ax[pt][1] *= w0;
        ax[pt][2] *= w1, ax[pt][3] *= w1;
      }
#pragma unroll
      for (int nt = 0; nt < NP / 8; nt++) {
        const int n = 8 * nt + 2 * t;
        ab[nt][0] *= w0, ab[nt][1] *= w0;
        ab[nt][2] *= w1, ab[nt][3] *= w1;
        col0 += ab[nt][0] * Bs[j0 * LDN + n] + ab[nt][1] * Bs[j0 * LDN + n + 1];
        col1 += ab[nt][2] * Bs[j1 * LDN + n] + ab[nt][3] * Bs[j1 * LDN + n + 1];
      }
    }
    const float bd0 = quad_sum(col0), bd1 = quad_sum(col1);
    col0 = col1 = 0.f;
    for (int kk = s; kk < strips; kk++) {
      float cb[2][4] = {}, dg[2][4] = {};
      strip_mma<LP, NP>(cb, bfrag, Cs, LDN, kk);
      strip_mma<LP, PP>(dg, xfrag, Ys, LDP, kk);
#pragma unroll
      for (int q = 0; q < 2; q++) {
        const int i0 = 16 * kk + 8 * q + 2 * t, i1 = i0 + 1;
        const float ci0 = cum[i0], ci1 = cum[i1];
        const float d00 = i0 >= j0 ? expf(ci0 - cj0) : 0.f, d01 = i1 >= j0 ? expf(ci1 - cj0) : 0.f;
        const float d10 = i0 >= j1 ? expf(ci0 - cj1) : 0.f, d11 = i1 >= j1 ? expf(ci1 - cj1) : 0.f;
        cb[q][0] = d00 == 0.f ? 0.f : cb[q][0] * d00;
        cb[q][1] = d01 == 0.f ? 0.f : cb[q][1] * d01;
        cb[q][2] = d10 == 0.f ? 0.f : cb[q][2] * d10;
        cb[q][3] = d11 == 0.f ? 0.f : cb[q][3] * d11;
        col0 += cb[q][0] * dg[q][0] + cb[q][1] * dg[q][1];
        col1 += cb[q][2] * dg[q][2] + cb[q][3] * dg[q][3];
        dg[q][0] = d00 == 0.f ? 0.f : dg[q][0] * d00;
        dg[q][1] = d01 == 0.f ? 0.f : dg[q][1] * d01;
        dg[q][2] = d10 == 0.f ? 0.f : dg[q][2] * d10;
        dg[q][3] = d11 == 0.f ? 0.f : dg[q][3] * d11;
      }
      const FA<LP> m = acc_to_A(cb[0], cb[1], (FA<LP>*)nullptr);
      const FA<LP> w = acc_to_A(dg[0], dg[1], (FA<LP>*)nullptr);
#pragma unroll
      for (int pt = 0; pt < PP / 8; pt++) mma16(ax[pt], m, ldB_kn<LP>(Ys, LDP, 16 * kk, 8 * pt));
#pragma unroll
      for (int nt = 0; nt < NP / 8; nt++) mma16(ab[nt], w, ldB_kn<LP>(Cs, LDN, 16 * kk, 8 * nt));
    }
    col0 = quad_sum(col0);
    col1 = quad_sum(col1);
    if (t == 0) {
      rB[j0] = -col0 - bd0;
      rB[j1] = -col1 - bd1;
      bd[j0] = bd0;
      bd[j1] = bd1;
    }
#pragma unroll
    for (int pt = 0; pt < PP / 8; pt++) {
      const int p = 8 * pt + 2 * t;
      if (ACC) {
        float o[4] = {0.f, 0.f, 0.f, 0.f};
        if (PRE) {
#pragma unroll
          for (int e = 0; e < 4; e++) o[e] = old[PRE ? pt : 0][e];
        } else {
          if (j0 < L) load2(gx + XI(d, b, t0 + j0, h), p, P, o[0], o[1]);
          if (j1 < L) load2(gx + XI(d, b, t0 + j1, h), p, P, o[2], o[3]);
        }
        ax[pt][0] += o[0], ax[pt][1] += o[1];
        ax[pt][2] += o[2], ax[pt][3] += o[3];
      }
      if (j0 < L) store2(gx + XI(d, b, t0 + j0, h), p, P, ax[pt][0], ax[pt][1]);
      if (j1 < L) store2(gx + XI(d, b, t0 + j1, h), p, P, ax[pt][2], ax[pt][3]);
    }
#pragma unroll
    for (int nt = 0; nt < NP / 8; nt++) {
      const int n = 8 * nt + 2 * t;
      if (j0 < L) store2(gBh + ((i64)b * d.seqLen + t0 + j0) * bhN + (i64)h * N, n, N, ab[nt][0], ab[nt][1]);
      if (j1 < L) store2(gBh + ((i64)b * d.seqLen + t0 + j1) * bhN + (i64)h * N, n, N, ab[nt][2], ab[nt][3]);
    }
  }
  // <G, S0> (the padding of P and N is zero; the 4 columns past NP are never written)
  float inner = 0.f;
  for (int e = threadIdx.x; e < PP * NP; e += blockDim.x) {
    const int at = (e / NP) * LDN + e % NP;
    inner += Gs[at] * S0s[at];
  }
  inner = block_sum(inner, red);  // starts with a barrier: rA, rB, bd are complete
  if (warp == 0) {
    const int lane = threadIdx.x & 31;
    float sbd = 0.f;
    for (int i = lane; i < L; i += 32) sbd += bd[i];
    sbd = warp_sum(sbd);
    // reverse inclusive scan of dcum over i < L: lane owns positions L-1-(lane*per + k)
    const int per = (L + 31) >> 5;
    float v[8];
    float run = 0.f;
#pragma unroll
    for (int k = 0; k < 8; k++) {
      const int r = lane * per + k, i = L - 1 - r;
      if (k < per) {
        float gc = 0.f;
        if (r < L) {
          gc = rA[i] + rB[i];
          if (r == 0) gc += expf(last) * inner + sbd;
        }
        run += gc;
        v[k] = run;
      }
    }
    float incl = run;
#pragma unroll
    for (int o = 1; o < 32; o <<= 1) {
      const float n = __shfl_up_sync(0xffffffffu, incl, o);
      if (lane >= o) incl += n;
    }
    const float excl = incl - run;
#pragma unroll
    for (int k = 0; k < 8; k++) {
      const int r = lane * per + k, i = L - 1 - r;
      if (k < per && r < L) gLogA[((i64)b * d.seqLen + t0 + i) * H + h] = excl + v[k];
    }
  }
}

extern "C" __global__ void __launch_bounds__(256, 1) ssdf_bwd_bf16(const float* x, const float* bm, const float* cm,
                                                                   const float* logA, const float* st, const float* gS,
                                                                   const float* gy, float* gx, float* gBh, float* gCh,
                                                                   float* gLogA, SsdDims d) {
  chunk_bwd<true, false>(x, bm, cm, logA, st, gS, gy, gx, gBh, gCh, gLogA, d);
}

extern "C" __global__ void __launch_bounds__(256, 1) ssdf_bwd_f32(const float* x, const float* bm, const float* cm,
                                                                  const float* logA, const float* st, const float* gS,
                                                                  const float* gy, float* gx, float* gBh, float* gCh,
                                                                  float* gLogA, SsdDims d) {
  chunk_bwd<false, false>(x, bm, cm, logA, st, gS, gy, gx, gBh, gCh, gLogA, d);
}

// the same, x's gradient added to what gx holds (ssdScanBackward with accumulateGx)
extern "C" __global__ void __launch_bounds__(256, 1)
    ssdf_bwd_acc_bf16(const float* x, const float* bm, const float* cm, const float* logA, const float* st,
                      const float* gS, const float* gy, float* gx, float* gBh, float* gCh, float* gLogA, SsdDims d) {
  chunk_bwd<true, true>(x, bm, cm, logA, st, gS, gy, gx, gBh, gCh, gLogA, d);
}

extern "C" __global__ void __launch_bounds__(256, 1)
    ssdf_bwd_acc_f32(const float* x, const float* bm, const float* cm, const float* logA, const float* st,
                     const float* gS, const float* gy, float* gx, float* gBh, float* gCh, float* gLogA, SsdDims d) {
  chunk_bwd<false, true>(x, bm, cm, logA, st, gS, gy, gx, gBh, gCh, gLogA, d);
}
