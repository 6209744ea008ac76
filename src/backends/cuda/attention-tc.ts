// Host side of the tensor-core attention (kernels/attention_tc.cu): which shapes it takes, shared
// memory sizes and launches for the forward and backward passes. The CUDA backend calls it from
// attention/attentionBackward when AttentionParams.lowPrecision is set (bf16 autocast) and falls
// back to the f32 kernels of attention.cu (the oracle) otherwise, for head dimensions that are
// not a multiple of 16 or above 128, and with MOHAWK_ATTENTION=oracle.

import type { AttentionParams } from '../backend.js';
import { launchShared, type Arg, type KernelHost } from './kernels.js';

/** Kernel signatures of kernels/attention_tc.cu (argument kinds, see kernels.ts). */
export const ATTENTION_TC_SIGNATURES = {
  attn_tc_fwd: 'pppppiiiifii',
  attn_tc_kv16: 'ppppl',
  attn_tc_qkv16_rope: 'ppppppplliiiiii',
  attn_tc_fwd2: 'pppppiiiifiii',
  attn_tc_bwd_dq: 'ppppppppiiiifi',
  attn_tc_bwd_dkdv: 'ppppppppiiiifi',
} as const;

export type AttentionTcKernel = keyof typeof ATTENTION_TC_SIGNATURES;

/** What the tensor-core attention needs from the backend. */
export type AttentionTcHost<Buf extends { ptr: number }> = KernelHost<AttentionTcKernel, Buf>;

/** as in attention_tc.cu: threads per block and query rows per block (dq), key rows per block (dk, dv) */
const THREADS = 128;
const BQ = 64;
const BKV = 64;

/** Head dimensions the tensor-core kernels take. */
export function attentionTcHeadDim(headDim: number): boolean {
  return headDim >= 16 && headDim <= 128 && headDim % 16 === 0;
}

export interface AttentionTcPlan {
  defines: Record<string, number>;
  /** dynamic shared memory in bytes per kernel */
  shared: { fwd: number; fwd2: number; dq: number; dkdv: number };
  /** forward: warps per block (16 query rows each) */
  fwdWarps: number;
  /**
   * the forward of version 2 (attn_tc_kv16 + attn_tc_fwd2: bf16 k/v streamed by cp.async, q in
   * registers), or null for attn_tc_fwd: its warps per block and query rows per block
   */
  fwd2: { warps: number; rows: number; kv32: boolean } | null;
}

/**
 * Whether the forward runs version 2: MOHAWK_ATTN_V2=0 never (attn_tc_fwd, as before), =all at
 * every length, default from 64 query rows on (below that, e.g. decoding, rounding all of k and v
 * to bf16 first costs more than it saves). Needs scale > 0 (the scale is folded into the max).
 */
function useFwd2(p: AttentionParams): boolean {
  const v = process.env.MOHAWK_ATTN_V2;
  if (v === '0' || !(p.scale > 0)) return false;
  return v === 'all' || p.tq >= 64;
}

/**
 * The launch plan for p, or null when the tensor-core kernels do not take it: no lowPrecision,
 * a head dimension they do not cover, a device before sm_80 (no bf16 mma), buffers that are not
 * 16-byte aligned (the tiles are read as float4), or not enough shared memory.
 */
export function attentionTcPlan(
  p: AttentionParams,
  computeCapability: readonly [number, number],
  maxShared: number,
  pointers: readonly number[],
): AttentionTcPlan | null {
  if (!p.lowPrecision || process.env.MOHAWK_ATTENTION === 'oracle') return null;
  if (computeCapability[0] < 8 || !attentionTcHeadDim(p.headDim)) return null;
  if (pointers.some((ptr) => ptr % 16 !== 0)) return null;
  const D = p.headDim;
  const tuning = tuningDefines();
  // the defaults of attention_tc.cu
  const fwdWarps = tuning.FWD_WARPS ?? 8;
  const bkf = tuning.BKF ?? 32;
  const bwdPrefetch = tuning.BWD_PREFETCH ?? (D <= 64 ? 1 : 0);
  const bqt = tuning.BQT ?? (bwdPrefetch || D > 64 ? 32 : 64); // query rows per tile (dk, dv)
  const bkt = tuning.BKT ?? (bwdPrefetch || D > 64 ? 32 : 64); // key rows per tile (dq)
  const row = 2 * (D + 8); // bytes per shared bf16 row
  // version 2 of the forward (defaults of attention_tc.cu): warps, 16-row tiles per warp, key
  // rows per tile, shared stages
  const f2 = {
    warps: tuning.F2_WARPS ?? 4,
    mt: tuning.F2_MT ?? (D <= 64 ? 2 : 1),
    bk: tuning.F2_BK ?? 64,
    kv32: (tuning.F2_KV32 ?? 0) !== 0,
    stages: tuning.F2_KV32 ? 2 : (tuning.F2_STAGES ?? 3),
  };
  const shared = {
    fwd: (16 * fwdWarps + 2 * bkf) * row,
    fwd2: f2.stages * 2 * f2.bk * row,
    dq: (2 * BQ + 2 * bkt) * row,
    dkdv: (2 * BKV + 2 * bqt) * row + 2 * bqt * 4,
  };
  if (Math.max(shared.fwd, shared.dq, shared.dkdv) > maxShared) return null;
  const fwd2 =
    useFwd2(p) && shared.fwd2 <= maxShared
      ? { warps: f2.warps, rows: 16 * f2.warps * f2.mt, kv32: f2.kv32 }
      : null;
  return { defines: { HEAD_DIM: D, ...tuning }, shared, fwdWarps, fwd2 };
}

const TUNABLE = [
  'FWD_WARPS',
  'BKF',
  'FWD_PREFETCH',
  'FWD_MINB',
  'BWD_PREFETCH',
  'BQT',
  'BKT',
  'DQ_MINB',
  'DKDV_MINB',
  'F2_WARPS',
  'F2_MT',
  'F2_BK',
  'F2_STAGES',
  'F2_MINB',
  'F2_KV32',
];

/**
 * Extra -D defines for tuning runs, e.g. MOHAWK_ATTENTION_TC_DEFINES="FWD_WARPS=4,BKF=32":
 * forward warps per block, key rows per forward tile, prefetch (0/1) in the forward and in the
 * backward kernels, rows per streamed tile in dk/dv (BQT) and dq (BKT), and the minimum blocks
 * per SM of each kernel (register caps); for the version-2 forward its warps (F2_WARPS), 16-row
 * query tiles per warp (F2_MT), key rows per tile (F2_BK), shared stages (F2_STAGES) and register
 * cap (F2_MINB), and F2_KV32=1 for f32 k/v tiles rounded by each block (no attn_tc_kv16 pass).
 * Defaults as in attention_tc.cu.
 */
function tuningDefines(): Record<string, number> {
  const spec = process.env.MOHAWK_ATTENTION_TC_DEFINES;
  const out: Record<string, number> = {};
  if (!spec) return out;
  for (const part of spec.split(',')) {
    const m = /^\s*(\w+)\s*=\s*(\d+)\s*$/.exec(part);
    if (!m || !TUNABLE.includes(m[1]))
      throw new Error(
        `MOHAWK_ATTENTION_TC_DEFINES: cannot use "${part}" (NAME=integer, NAME one of ${TUNABLE.join(', ')})`,
      );
    out[m[1]] = Number(m[2]);
  }
  return out;
}

function launch<Buf extends { ptr: number }>(
  host: AttentionTcHost<Buf>,
  plan: AttentionTcPlan,
  name: AttentionTcKernel,
  grid: [number, number, number],
  shared: number,
  args: Arg[],
  threads = THREADS,
): void {
  launchShared(host, name, plan.defines, grid, threads, shared, args);
}

function flags(p: AttentionParams): number[] {
  return [p.tq, p.tk, p.heads, p.kvHeads, p.scale, p.causal ? 1 : 0];
}

/** The rotary embedding inside the version-2 forward: the (cos, sin) table of rope_table_f32. */
export interface AttentionTcRope {
  table: number;
  rotaryDim: number;
  interleaved: boolean;
}

/**
 * Whether the kernels of `plan` rotate q and k themselves (p.rope, in attn_tc_qkv16_rope): the
 * version-2 forward with its rounding pass (not F2_KV32), halves of a multiple of 4 columns
 * (rotaryDim a multiple of 8) or adjacent pairs.
 */
export function attentionTcRopeInKernel(plan: AttentionTcPlan, p: AttentionParams): boolean {
  const r = p.rope;
  if (!r || !plan.fwd2 || plan.fwd2.kv32 || p.tk === 0) return false;
  return r.rotaryDim > 0 && r.rotaryDim <= p.headDim && r.rotaryDim % (r.interleaved ? 2 : 8) === 0;
}

/**
 * out (B, tq, H, D) and lse (B, H, tq) from q, k, v (device addresses of f32 buffers); out is
 * f32, or bf16 with out16; with rope (attentionTcRopeInKernel) q and k rotated first.
 */
export function attentionTcForward<Buf extends { ptr: number }>(
  host: AttentionTcHost<Buf>,
  plan: AttentionTcPlan,
  p: AttentionParams,
  q: number,
  k: number,
  v: number,
  out: number,
  lse: number,
  out16 = false,
  rope: AttentionTcRope | null = null,
): void {
  if (p.batch * p.heads * p.tq === 0) return;
  if (rope && !attentionTcRopeInKernel(plan, p))
    throw new Error('attention_tc: the rotary embedding in the kernels needs the version-2 forward');
  if (plan.fwd2 && p.tk > 0) {
    const grid: [number, number, number] = [Math.ceil(p.tq / plan.fwd2.rows), p.heads, p.batch];
    const threads = 32 * plan.fwd2.warps;
    const tail = [out, lse, ...flags(p), out16 ? 1 : 0];
    if (plan.fwd2.kv32) {
      // F2_KV32: each block rounds the f32 k and v tiles it reads
      launch(host, plan, 'attn_tc_fwd2', grid, plan.shared.fwd2, [q, k, v, ...tail, 0], threads);
      return;
    }
    const nq = p.batch * p.tq * p.heads * p.headDim;
    const n = p.batch * p.tk * p.kvHeads * p.headDim;
    if (rope) {
      // q, k rotated and rounded, v rounded, in one pass (one scratch: nq + 2 n bf16)
      const s16 = host.scratch(nq / 2 + n);
      const q16 = s16.ptr;
      const k16 = q16 + 2 * nq;
      const v16 = k16 + 2 * n;
      const groups = (nq + 2 * n) / 4;
      const args = [
        ...[q, k, v, q16, k16, v16, rope.table],
        ...[p.batch * p.tq * p.heads, p.batch * p.tk * p.kvHeads, p.tq, p.tk, p.heads, p.kvHeads],
        ...[rope.rotaryDim, rope.interleaved ? 1 : 0],
      ];
      launch(
        host,
        plan,
        'attn_tc_qkv16_rope',
        [Math.min(Math.ceil(groups / 256), 65535), 1, 1],
        0,
        args,
        256,
      );
      launch(host, plan, 'attn_tc_fwd2', grid, plan.shared.fwd2, [q16, k16, v16, ...tail, 1], threads);
      host.release(s16);
      return;
    }
    // k and v rounded to bf16 once (one scratch holds both: n bf16 each = n floats)
    const kv16 = host.scratch(n);
    const k16 = kv16.ptr;
    const v16 = kv16.ptr + 2 * n;
    const n4 = n / 4;
    launch(
      host,
      plan,
      'attn_tc_kv16',
      [Math.min(Math.ceil(n4 / 256), 65535), 1, 1],
      0,
      [k, v, k16, v16, n4],
      256,
    );
    launch(host, plan, 'attn_tc_fwd2', grid, plan.shared.fwd2, [q, k16, v16, ...tail, 0], threads);
    host.release(kv16);
    return;
  }
  const grid: [number, number, number] = [Math.ceil(p.tq / (16 * plan.fwdWarps)), p.heads, p.batch];
  const args = [q, k, v, out, lse, ...flags(p), out16 ? 1 : 0];
  launch(host, plan, 'attn_tc_fwd', grid, plan.shared.fwd, args, 32 * plan.fwdWarps);
}

/** gq, gk, gv (overwritten) from the forward's inputs, out, lse and the output gradient. */
export function attentionTcBackward<Buf extends { ptr: number }>(
  host: AttentionTcHost<Buf>,
  plan: AttentionTcPlan,
  p: AttentionParams,
  q: number,
  k: number,
  v: number,
  out: number,
  lse: number,
  gOut: number,
  gq: number,
  gk: number,
  gv: number,
): void {
  const rows = p.batch * p.heads * p.tq;
  const delta = host.scratch(Math.max(1, rows));
  if (rows > 0) {
    // gq, and delta = rowsum(gOut * out) for the dk/dv kernel
    launch(host, plan, 'attn_tc_bwd_dq', [Math.ceil(p.tq / BQ), p.heads, p.batch], plan.shared.dq, [
      q,
      k,
      v,
      out,
      lse,
      gOut,
      delta.ptr,
      gq,
      ...flags(p),
    ]);
  }
  if (p.batch * p.kvHeads * p.tk > 0) {
    launch(host, plan, 'attn_tc_bwd_dkdv', [Math.ceil(p.tk / BKV), p.kvHeads, p.batch], plan.shared.dkdv, [
      q,
      k,
      v,
      lse,
      delta.ptr,
      gOut,
      gk,
      gv,
      ...flags(p),
    ]);
  }
  host.release(delta);
}
