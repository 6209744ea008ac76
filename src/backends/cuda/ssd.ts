// Launchers of the SSD scan and the materialized mixer: the tensor-core chunked scan (ssd-fast.ts,
// kernels/ssd_fast.cu) where it takes the shape, else the simple kernels of kernels/ssd.cu (the
// oracle, also the materialized mixer matrix of stage 1 and its backward).

import type { DeviceBuffer, SsdParams } from '../backend.js';
import { moduleKernels, type CudaBuffer, type Host } from './host.js';
import type { SsdDims } from './kernels.js';
import { segsumAdjoint } from './reduce.js';
import {
  SSD_FAST_SIGNATURES,
  ssdFastBackward,
  ssdFastForward,
  ssdFastPlan,
  type SsdFastHost,
} from './ssd-fast.js';

/** Kernel signatures of kernels/ssd.cu (argument kinds, see kernels.ts). */
export const SSD_SIGNATURES = {
  ssd_cumsum: 'ppS',
  ssd_chunk_matrices: 'ppppppppS',
  ssd_chunk_state: 'ppppS',
  ssd_state_pass: 'pppS',
  ssd_chunk_output: 'ppppppS',
  ssd_bwd_chunk_gstate: 'ppppS',
  ssd_bwd_state_pass: 'ppS',
  ssd_bwd_dx: 'ppppppiS',
  ssd_bwd_dbc: 'ppppppppppS',
  ssd_bwd_dlogA: 'pppppppppS',
  mixer_fwd: 'ppppS',
  mixer_bwd_r: 'ppppppS',
  mixer_bwd_dbc: 'pppppS',
} as const;

const { k, run1 } = moduleKernels('ssd', SSD_SIGNATURES);

/** 'fast': kernels/ssd_fast.cu (the default); 'oracle': kernels/ssd.cu */
export type SsdImpl = 'fast' | 'oracle';

/** what ssd-fast.ts needs, over the backend's host */
function fastHost(h: Host): SsdFastHost<CudaBuffer> {
  return {
    kernel: (name, defines) => h.kernel('ssd_fast', name, SSD_FAST_SIGNATURES[name], defines),
    scratch: (n) => h.scratch(n),
    release: (b) => h.free(b),
    sumInto: (x, out, outer, n, inner) => h.sumInto(x, out, outer, n, inner),
    multiprocessors: () => h.sms,
  };
}

/** The kernels' SsdDims for p, after checking what they assume. */
function ssdDims(p: SsdParams, what: string): SsdDims {
  const { batch, seqLen, heads, groups, headDim, dState, chunkSize } = p;
  if (groups < 1 || heads % groups !== 0)
    throw new Error(`${what}: heads (${heads}) must be a multiple of groups (${groups})`);
  if (!(chunkSize > 0)) throw new Error(`${what}: chunk size must be positive, got ${chunkSize}`);
  if (heads > 65535 || batch > 65535)
    throw new Error(`cuda backend: ${what} with more than 65535 heads or sequences`);
  return {
    batch,
    seqLen,
    heads,
    groups,
    headDim,
    dState,
    chunk: chunkSize,
    nChunks: Math.ceil(seqLen / chunkSize),
  };
}

export function ssdScan(
  h: Host,
  impl: SsdImpl,
  x: DeviceBuffer,
  logA: DeviceBuffer,
  bm: DeviceBuffer,
  cm: DeviceBuffer,
  y: DeviceBuffer,
  states: DeviceBuffer,
  finalState: DeviceBuffer | null,
  p: SsdParams,
): void {
  const d = ssdDims(p, 'ssd');
  const xp = h.f(x, 'ssd x');
  const la = h.f(logA, 'ssd logA');
  const bp = h.f(bm, 'ssd B');
  const cp = h.f(cm, 'ssd C');
  const yp = h.f(y, 'ssd y');
  const sp = h.f(states, 'ssd states');
  const fp = finalState ? h.f(finalState, 'ssd final state') : 0;
  const { batch: B, seqLen: T, heads: H, headDim: P, dState: N, chunkSize: Q } = p;
  const nC = d.nChunks;
  if (B * H * T === 0) {
    if (finalState) h.fill(finalState, 0);
    return;
  }
  const plan = impl === 'fast' ? ssdFastPlan(p, h.driver.info.maxSharedPerBlockOptin) : null;
  if (plan) return ssdFastForward(fastHost(h), plan, p, xp, la, bp, cp, yp, sp, fp);
  const cum = h.scratch(B * H * T);
  const M = h.scratch(B * H * nC * Q * Q);
  run1(h, 'ssd_cumsum', B * nC * H, [la, cum.ptr, d]);
  run1(h, 'ssd_chunk_matrices', B * H * nC * Q * Q, [cp, bp, cum.ptr, 0, 0, M.ptr, 0, 0, d]);
  run1(h, 'ssd_chunk_state', B * nC * H * P * N, [xp, bp, cum.ptr, sp, d]);
  run1(h, 'ssd_state_pass', B * H * P * N, [sp, cum.ptr, fp, d]);
  run1(h, 'ssd_chunk_output', B * T * H * P, [xp, cp, cum.ptr, M.ptr, sp, yp, d]);
  h.free(M);
  h.free(cum);
}

export function ssdScanBackward(
  h: Host,
  impl: SsdImpl,
  x: DeviceBuffer,
  logA: DeviceBuffer,
  bm: DeviceBuffer,
  cm: DeviceBuffer,
  states: DeviceBuffer,
  gy: DeviceBuffer,
  gx: DeviceBuffer,
  gLogA: DeviceBuffer,
  gB: DeviceBuffer,
  gC: DeviceBuffer,
  p: SsdParams,
  accumulateGx = false,
): void {
  const d = ssdDims(p, 'ssd');
  const xp = h.f(x, 'ssd x');
  const la = h.f(logA, 'ssd logA');
  const bp = h.f(bm, 'ssd B');
  const cp = h.f(cm, 'ssd C');
  const sp = h.f(states, 'ssd states');
  const gyp = h.f(gy, 'ssd gradient');
  const gxp = h.f(gx, 'ssd x gradient');
  const glp = h.f(gLogA, 'ssd logA gradient');
  const gbp = h.f(gB, 'ssd B gradient');
  const gcp = h.f(gC, 'ssd C gradient');
  const { batch: B, seqLen: T, heads: H, groups: G, headDim: P, dState: N, chunkSize: Q } = p;
  const nC = d.nChunks;
  if (B * T === 0) return;
  if (H === 0) {
    h.fill(gB, 0);
    h.fill(gC, 0);
    return;
  }
  const plan = impl === 'fast' ? ssdFastPlan(p, h.driver.info.maxSharedPerBlockOptin) : null;
  if (plan)
    return ssdFastBackward(fastHost(h), plan, p, xp, la, bp, cp, sp, gyp, gxp, glp, gbp, gcp, accumulateGx);
  const cum = h.scratch(B * H * T);
  const mat = B * H * nC * Q * Q;
  const M = h.scratch(mat);
  const Dw = h.scratch(mat);
  const R = h.scratch(mat);
  const gS = h.scratch(B * nC * H * P * N);
  run1(h, 'ssd_cumsum', B * nC * H, [la, cum.ptr, d]);
  run1(h, 'ssd_chunk_matrices', mat, [cp, bp, cum.ptr, xp, gyp, M.ptr, Dw.ptr, R.ptr, d]);
  run1(h, 'ssd_bwd_chunk_gstate', B * nC * H * P * N, [gyp, cp, cum.ptr, gS.ptr, d]);
  run1(h, 'ssd_bwd_state_pass', B * H * P * N, [gS.ptr, cum.ptr, d]);
  run1(h, 'ssd_bwd_dx', B * T * H * P, [gyp, bp, cum.ptr, M.ptr, gS.ptr, gxp, accumulateGx ? 1 : 0, d]);
  const perHead = G !== H;
  const gBh = perHead ? h.scratch(B * T * H * N) : null;
  const gCh = perHead ? h.scratch(B * T * H * N) : null;
  run1(h, 'ssd_bwd_dbc', B * T * H * N, [
    xp,
    gyp,
    bp,
    cp,
    cum.ptr,
    Dw.ptr,
    sp,
    gS.ptr,
    gBh ? gBh.ptr : gbp,
    gCh ? gCh.ptr : gcp,
    d,
  ]);
  if (gBh && gCh) {
    // (B, T, G, H/G, N) summed over the heads of each group
    h.sumInto(gBh.ptr, gbp, B * T * G, H / G, N);
    h.sumInto(gCh.ptr, gcp, B * T * G, H / G, N);
    h.free(gBh);
    h.free(gCh);
  }
  const dlog = k(h, 'ssd_bwd_dlogA');
  dlog.allowShared(Q * 4);
  dlog.launch([nC, H, B], 128, Q * 4, [xp, gyp, bp, cp, cum.ptr, R.ptr, sp, gS.ptr, glp, d]);
  for (const s of [cum, M, Dw, R, gS]) h.free(s);
}

export function materializeMixer(
  h: Host,
  logA: DeviceBuffer,
  bm: DeviceBuffer,
  cm: DeviceBuffer,
  out: DeviceBuffer,
  p: SsdParams,
): void {
  const d = ssdDims(p, 'mixer');
  run1(h, 'mixer_fwd', p.batch * p.heads * p.seqLen, [
    h.f(logA, 'mixer logA'),
    h.f(bm, 'mixer B'),
    h.f(cm, 'mixer C'),
    h.f(out, 'mixer output'),
    d,
  ]);
}

export function materializeMixerBackward(
  h: Host,
  logA: DeviceBuffer,
  bm: DeviceBuffer,
  cm: DeviceBuffer,
  gOut: DeviceBuffer,
  gLogA: DeviceBuffer,
  gB: DeviceBuffer,
  gC: DeviceBuffer,
  p: SsdParams,
): void {
  const d = ssdDims(p, 'mixer');
  const la = h.f(logA, 'mixer logA');
  const bp = h.f(bm, 'mixer B');
  const cp = h.f(cm, 'mixer C');
  const gop = h.f(gOut, 'mixer gradient');
  const glp = h.f(gLogA, 'mixer logA gradient');
  const gbp = h.f(gB, 'mixer B gradient');
  const gcp = h.f(gC, 'mixer C gradient');
  const { batch: B, seqLen: T, heads: H, groups: G, dState: N } = p;
  if (B * T === 0) return;
  if (H === 0) {
    h.fill(gB, 0);
    h.fill(gC, 0);
    return;
  }
  const Rm = h.scratch(B * H * T * T);
  const r = h.scratch(B * H * T * T);
  run1(h, 'mixer_bwd_r', B * H * T, [la, bp, cp, gop, Rm.ptr, r.ptr, d]);
  run1(h, 'mixer_bwd_dbc', B * T * G * N, [bp, cp, Rm.ptr, gbp, gcp, d]);
  segsumAdjoint(h, r.ptr, glp, B * H, T, H);
  h.free(Rm);
  h.free(r);
}
