// Host side of the tensor-core SSD scan (kernels/ssd_fast.cu): shape checks, shared-memory sizes,
// scratch and launches for the forward and backward passes. The CUDA backend calls it from
// ssdScan/ssdScanBackward and falls back to the simple kernels of ssd.cu (the oracle) for shapes
// it does not take (chunk > 256, P or N > 128, tiles beyond the shared memory of a block).

import type { SsdParams } from '../backend.js';
import { launchShared, type Arg, type KernelHost, type SsdDims } from './kernels.js';

/** Kernel signatures of kernels/ssd_fast.cu (argument kinds, see kernels.ts). */
export const SSD_FAST_SIGNATURES = {
  ssdf_state_bf16: 'pppppSi',
  ssdf_state_f32: 'pppppSi',
  ssdf_pass: 'pppSi',
  ssdf_out_bf16: 'ppppppS',
  ssdf_out_f32: 'ppppppS',
  ssdf_bwd_bf16: 'pppppppppppS',
  ssdf_bwd_f32: 'pppppppppppS',
  ssdf_bwd_acc_bf16: 'pppppppppppS',
  ssdf_bwd_acc_f32: 'pppppppppppS',
} as const;

export type SsdFastKernel = keyof typeof SSD_FAST_SIGNATURES;

/** What the fast scan needs from the backend. */
export interface SsdFastHost<Buf extends { ptr: number }> extends KernelHost<SsdFastKernel, Buf> {
  /** (outer, n, inner) -> (outer, inner) sums, device addresses */
  sumInto(x: number, out: number, outer: number, n: number, inner: number): void;
  multiprocessors(): number;
}

const THREADS = 256;
const round16 = (v: number) => Math.max(16, Math.ceil(v / 16) * 16);

export interface SsdFastPlan {
  defines: { SSD_P: number; SSD_N: number };
  /** dynamic shared memory in bytes per kernel family */
  shared: { state: number; out: number; bwd: number };
  nChunks: number;
}

/** The launch plan for p, or null when the fast kernels do not take this shape. */
export function ssdFastPlan(p: SsdParams, maxShared: number): SsdFastPlan | null {
  const { batch: B, seqLen: T, heads: H, headDim: P, dState: N, chunkSize: Q } = p;
  if (P < 1 || N < 1 || Q < 1 || Q > 256 || P > 128 || N > 128) return null;
  const nC = Math.ceil(T / Q);
  if (B > 65535 || B * H * nC > 2 ** 31 - 1) return null;
  const Pp = round16(P);
  const Np = round16(N);
  const QA = Math.ceil(Q / 16) * 16;
  const ldp = Pp + 4;
  const ldn = Np + 4;
  const shared = {
    state: 4 * (2 * QA + QA * ldp + QA * ldn),
    // S0 is read from global memory when P and N need no padding (see ssdf_out_*)
    out: 4 * (QA + 2 * QA * ldn + QA * ldp + (P === Pp && N === Np ? 0 : Pp * ldn)),
    bwd: 4 * (4 * QA + 2 * QA * ldn + 2 * QA * ldp + 2 * Pp * ldn + 32),
  };
  if (Math.max(shared.state, shared.out, shared.bwd) > maxShared) return null;
  return { defines: { SSD_P: Pp, SSD_N: Np }, shared, nChunks: nC };
}

function dims(p: SsdParams, nC: number): SsdDims {
  const { batch, seqLen, heads, groups, headDim, dState, chunkSize: chunk } = p;
  return { batch, seqLen, heads, groups, headDim, dState, chunk, nChunks: nC };
}

function launch<Buf extends { ptr: number }>(
  host: SsdFastHost<Buf>,
  plan: SsdFastPlan,
  name: SsdFastKernel,
  grid: [number, number, number],
  shared: number,
  args: Arg[],
): void {
  launchShared(host, name, plan.defines, grid, THREADS, shared, args);
}

function pass<Buf extends { ptr: number }>(
  host: SsdFastHost<Buf>,
  plan: SsdFastPlan,
  p: SsdParams,
  st: number,
  cl: number,
  fin: number,
  reverse: boolean,
): void {
  const n = p.batch * p.heads * p.headDim * p.dState;
  const blocks = Math.max(1, Math.min(Math.ceil(n / THREADS), host.multiprocessors() * 32));
  launch(host, plan, 'ssdf_pass', [blocks, 1, 1], 0, [st, cl, fin, dims(p, plan.nChunks), reverse ? 1 : 0]);
}

/** the state kernel: mode 0 the local chunk states X^T diag(w) B, mode 1 gY^T diag(exp(cum)) C */
function chunkStates<Buf extends { ptr: number }>(
  host: SsdFastHost<Buf>,
  plan: SsdFastPlan,
  p: SsdParams,
  xs: number,
  bs: number,
  logA: number,
  out: number,
  cl: number,
  mode: 0 | 1,
): void {
  const lp = p.lowPrecision === true;
  const args = [xs, bs, logA, out, cl, dims(p, plan.nChunks), mode];
  const grid: [number, number, number] = [p.heads * plan.nChunks, p.batch, 1];
  launch(host, plan, lp ? 'ssdf_state_bf16' : 'ssdf_state_f32', grid, plan.shared.state, args);
}

/** y and states (and the final state when fin != 0) for x, logA, bm, cm (device addresses). */
export function ssdFastForward<Buf extends { ptr: number }>(
  host: SsdFastHost<Buf>,
  plan: SsdFastPlan,
  p: SsdParams,
  x: number,
  logA: number,
  bm: number,
  cm: number,
  y: number,
  states: number,
  fin: number,
): void {
  const lp = p.lowPrecision === true;
  const d = dims(p, plan.nChunks);
  const cl = host.scratch(p.batch * p.heads * plan.nChunks);
  chunkStates(host, plan, p, x, bm, logA, states, cl.ptr, 0);
  pass(host, plan, p, states, cl.ptr, fin, false);
  const args = [x, bm, cm, logA, states, y, d];
  const grid: [number, number, number] = [p.heads * plan.nChunks, p.batch, 1];
  launch(host, plan, lp ? 'ssdf_out_bf16' : 'ssdf_out_f32', grid, plan.shared.out, args);
  host.release(cl);
}

/** gx (or added to it with accumulateGx), gLogA, gB, gC (overwritten) from the forward inputs, its states and gy. */
export function ssdFastBackward<Buf extends { ptr: number }>(
  host: SsdFastHost<Buf>,
  plan: SsdFastPlan,
  p: SsdParams,
  x: number,
  logA: number,
  bm: number,
  cm: number,
  states: number,
  gy: number,
  gx: number,
  gLogA: number,
  gB: number,
  gC: number,
  accumulateGx = false,
): void {
  const lp = p.lowPrecision === true;
  const { batch: B, seqLen: T, heads: H, groups: G, headDim: P, dState: N } = p;
  const nC = plan.nChunks;
  const d = dims(p, nC);
  const grid: [number, number, number] = [H * nC, B, 1];
  const cl = host.scratch(B * H * nC);
  const gS = host.scratch(B * nC * H * P * N);
  chunkStates(host, plan, p, gy, cm, logA, gS.ptr, cl.ptr, 1);
  pass(host, plan, p, gS.ptr, cl.ptr, 0, true);
  // per-head gradients of B and C when a group has several heads, summed afterwards
  const perHead = G !== H;
  const gBh = perHead ? host.scratch(B * T * H * N) : null;
  const gCh = perHead ? host.scratch(B * T * H * N) : null;
  const name = accumulateGx
    ? lp
      ? 'ssdf_bwd_acc_bf16'
      : 'ssdf_bwd_acc_f32'
    : lp
      ? 'ssdf_bwd_bf16'
      : 'ssdf_bwd_f32';
  launch(host, plan, name, grid, plan.shared.bwd, [
    x,
    bm,
    cm,
    logA,
    states,
    gS.ptr,
    gy,
    gx,
    gBh ? gBh.ptr : gB,
    gCh ? gCh.ptr : gC,
    gLogA,
    d,
  ]);
  if (gBh && gCh) {
    host.sumInto(gBh.ptr, gB, B * T * G, H / G, N);
    host.sumInto(gCh.ptr, gC, B * T * G, H / G, N);
    host.release(gBh);
    host.release(gCh);
  }
  host.release(gS);
  host.release(cl);
}
