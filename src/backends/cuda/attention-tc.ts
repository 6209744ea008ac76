// Host side of the tensor-core attention (kernels/attention_tc.cu): which shapes it takes, shared
// memory sizes and launches for the forward and backward passes. The CUDA backend calls it from
// attention/attentionBackward when AttentionParams.lowPrecision is set (bf16 autocast) and falls
// back to the f32 kernels of attention.cu (the oracle) otherwise, for head dimensions that are
// not a multiple of 16 or above 128, and with MOHAWK_ATTENTION=oracle.

import type { AttentionParams } from '../backend.js';
import { launchShared, type Arg, type KernelHost } from './kernels.js';

/** Kernel signatures of kernels/attention_tc.cu (argument kinds, see kernels.ts). */
export const ATTENTION_TC_SIGNATURES = {
  attn_tc_fwd: 'pppppiiiifi',
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
  shared: { fwd: number; dq: number; dkdv: number };
  /** forward: warps per block (16 query rows each) */
  fwdWarps: number;
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
  const shared = {
    fwd: (16 * fwdWarps + 2 * bkf) * row,
    dq: (2 * BQ + 2 * bkt) * row,
    dkdv: (2 * BKV + 2 * bqt) * row + 2 * bqt * 4,
  };
  if (Math.max(shared.fwd, shared.dq, shared.dkdv) > maxShared) return null;
  return { defines: { HEAD_DIM: D, ...tuning }, shared, fwdWarps };
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
];

/**
 * Extra -D defines for tuning runs, e.g. MOHAWK_ATTENTION_TC_DEFINES="FWD_WARPS=4,BKF=32":
 * forward warps per block, key rows per forward tile, prefetch (0/1) in the forward and in the
 * backward kernels, rows per streamed tile in dk/dv (BQT) and dq (BKT), and the minimum blocks
 * per SM of each kernel (register caps). Defaults as in attention_tc.cu.
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

/** out (B, tq, H, D) and lse (B, H, tq) from q, k, v (device addresses of f32 buffers). */
export function attentionTcForward<Buf extends { ptr: number }>(
  host: AttentionTcHost<Buf>,
  plan: AttentionTcPlan,
  p: AttentionParams,
  q: number,
  k: number,
  v: number,
  out: number,
  lse: number,
): void {
  if (p.batch * p.heads * p.tq === 0) return;
  const grid: [number, number, number] = [Math.ceil(p.tq / (16 * plan.fwdWarps)), p.heads, p.batch];
  const args = [q, k, v, out, lse, ...flags(p)];
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
