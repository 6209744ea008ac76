// Launchers of the attention kernels: the tensor-core flash attention (attention-tc.ts,
// kernels/attention_tc.cu) where it takes the shape, else the simple f32 kernels of
// kernels/attention.cu (the oracle), one module per head dimension.

import type { AttentionParams, DeviceBuffer } from '../backend.js';
import {
  ATTENTION_TC_SIGNATURES,
  attentionTcBackward,
  attentionTcForward,
  attentionTcPlan,
  attentionTcRopeInKernel,
  type AttentionTcHost,
} from './attention-tc.js';
import { grid1, moduleKernels, THREADS, type CudaBuffer, type Host } from './host.js';
import { cast } from './elementwise.js';
import { rope, ropeTable } from './sequence.js';

/** Kernel signatures of kernels/attention.cu (argument kinds, see kernels.ts). */
export const ATTENTION_SIGNATURES = {
  attention_fwd: 'pppppiiiifi',
  attention_probs: 'ppppliiiifi',
  attention_bwd_delta: 'ppplii',
  attention_bwd_dq: 'pppppppiiiifi',
  attention_bwd_dkdv: 'ppppppppiiiifi',
} as const;

const { k: kernel } = moduleKernels('attention', ATTENTION_SIGNATURES);

/** query/key rows per block, matching kernels/attention.cu */
const ATTN_ROWS = 64;
const MAX_HEAD_DIM = 256;

function threadsPerRow(headDim: number): number {
  return headDim <= 32 ? 1 : headDim <= 64 ? 2 : headDim <= 128 ? 4 : 8;
}

/** what attention-tc.ts needs, over the backend's host */
function tcHost(h: Host): AttentionTcHost<CudaBuffer> {
  return {
    kernel: (name, defines) => h.kernel('attention_tc', name, ATTENTION_TC_SIGNATURES[name], defines),
    scratch: (n) => h.scratch(n),
    release: (b) => h.free(b),
  };
}

function checkAttention(p: AttentionParams): void {
  if (p.heads % p.kvHeads !== 0) {
    throw new Error(`attention: heads (${p.heads}) must be a multiple of kvHeads (${p.kvHeads})`);
  }
  if (p.headDim > MAX_HEAD_DIM || p.headDim < 1) {
    throw new Error(`cuda backend: attention head dimension ${p.headDim} (1 to ${MAX_HEAD_DIM})`);
  }
  if (p.heads > 65535 || p.batch > 65535)
    throw new Error('cuda backend: attention with more than 65535 heads or sequences');
}

/** the tensor-core plan for p (lowPrecision, a head dimension it takes), or null for attention.cu */
function attentionPlan(h: Host, p: AttentionParams, pointers: number[]) {
  const { computeCapability, maxSharedPerBlockOptin } = h.driver.info;
  return attentionTcPlan(p, computeCapability, maxSharedPerBlockOptin, pointers);
}

export function attention(
  h: Host,
  q: DeviceBuffer,
  k: DeviceBuffer,
  v: DeviceBuffer,
  out: DeviceBuffer,
  lse: DeviceBuffer,
  probs: DeviceBuffer | null,
  p: AttentionParams,
): void {
  checkAttention(p);
  const qp = h.f(q, 'attention q');
  const kp = h.f(k, 'attention k');
  const lp = h.f(lse, 'attention lse');
  // a bf16 output under lowPrecision: written by the tensor-core kernels as they round, else
  // computed into f32 scratch and rounded
  const ob = h.buf(out, 'attention output');
  const out16 = ob.dtype === 'bf16';
  if (out16 && !p.lowPrecision) throw new Error('cuda backend: a bf16 attention output needs lowPrecision');
  const args = [qp, kp, h.f(v, 'attention v'), out16 ? ob.ptr : h.f(out, 'attention output'), lp];
  if (p.batch * p.heads * p.tq === 0) return;
  const hd = { HEAD_DIM: p.headDim };
  const tc = attentionPlan(h, p, args);
  if (p.rope) {
    const r = p.rope;
    if (tc && !probs && attentionTcRopeInKernel(tc, p)) {
      // q and k rotated as attn_tc_qkv16_rope rounds them (with v) for the version-2 forward
      const table = ropeTable(h, Math.max(p.tq, p.tk), r.rotaryDim, r.theta, r.positionOffset);
      const tr = { table: table.ptr, rotaryDim: r.rotaryDim, interleaved: r.interleaved };
      attentionTcForward(tcHost(h), tc, p, args[0], args[1], args[2], args[3], args[4], out16, tr);
      h.free(table);
    } else {
      // rotated copies of q and k, then the attention without rope
      const rp = { ...r, batch: p.batch, headDim: p.headDim, inverse: false };
      const qr = h.scratch(p.batch * p.tq * p.heads * p.headDim);
      const kr = h.scratch(p.batch * p.tk * p.kvHeads * p.headDim);
      rope(h, q, qr, { ...rp, seqLen: p.tq, heads: p.heads });
      rope(h, k, kr, { ...rp, seqLen: p.tk, heads: p.kvHeads });
      attention(h, qr, kr, v, out, lse, probs, { ...p, rope: undefined });
      h.free(qr);
      h.free(kr);
    }
    return;
  }
  if (tc) attentionTcForward(tcHost(h), tc, p, args[0], args[1], args[2], args[3], args[4], out16);
  else {
    const n = p.batch * p.tq * p.heads * p.headDim;
    const o32 = out16 ? h.scratch(n) : null;
    kernel(h, 'attention_fwd', hd).launch(
      [Math.ceil(p.tq / ATTN_ROWS), p.heads, p.batch],
      ATTN_ROWS * threadsPerRow(p.headDim),
      0,
      [
        args[0],
        args[1],
        args[2],
        o32?.ptr ?? args[3],
        lp,
        p.tq,
        p.tk,
        p.heads,
        p.kvHeads,
        p.scale,
        p.causal ? 1 : 0,
      ],
    );
    if (o32) {
      cast(h, o32, ob); // rounded as every cast to bf16 is
      h.free(o32);
    }
  }
  if (probs) {
    const n = p.batch * p.heads * p.tq * p.tk;
    if (n === 0) return;
    kernel(h, 'attention_probs', hd).launch(grid1(h, n), THREADS, 0, [
      qp,
      kp,
      lp,
      h.f(probs, 'attention probs'),
      p.batch,
      p.tq,
      p.tk,
      p.heads,
      p.kvHeads,
      p.scale,
      p.causal ? 1 : 0,
    ]);
  }
}

export function attentionBackward(
  h: Host,
  q: DeviceBuffer,
  k: DeviceBuffer,
  v: DeviceBuffer,
  out: DeviceBuffer,
  lse: DeviceBuffer,
  gOut: DeviceBuffer,
  gq: DeviceBuffer,
  gk: DeviceBuffer,
  gv: DeviceBuffer,
  p: AttentionParams,
): void {
  checkAttention(p);
  const qp = h.f(q, 'attention q');
  const kp = h.f(k, 'attention k');
  const vp = h.f(v, 'attention v');
  const op = h.f(out, 'attention output');
  const lp = h.f(lse, 'attention lse');
  const gop = h.f(gOut, 'attention gradient');
  const gqp = h.f(gq, 'attention q gradient');
  const gkp = h.f(gk, 'attention k gradient');
  const gvp = h.f(gv, 'attention v gradient');
  if (p.batch * p.kvHeads * p.tk === 0 && p.batch * p.heads * p.tq === 0) return;
  const tc = attentionPlan(h, p, [qp, kp, vp, op, gop, gqp, gkp, gvp]);
  if (tc) return attentionTcBackward(tcHost(h), tc, p, qp, kp, vp, op, lp, gop, gqp, gkp, gvp);
  const hd = { HEAD_DIM: p.headDim };
  const threads = ATTN_ROWS * threadsPerRow(p.headDim);
  const flags = [p.tq, p.tk, p.heads, p.kvHeads, p.scale, p.causal ? 1 : 0];
  const rows = p.batch * p.tq * p.heads;
  const delta = h.scratch(Math.max(1, rows));
  if (rows > 0) {
    kernel(h, 'attention_bwd_delta', hd).launch([Math.ceil((rows * 32) / THREADS), 1, 1], THREADS, 0, [
      op,
      gop,
      delta.ptr,
      p.batch,
      p.tq,
      p.heads,
    ]);
    kernel(h, 'attention_bwd_dq', hd).launch([Math.ceil(p.tq / ATTN_ROWS), p.heads, p.batch], threads, 0, [
      qp,
      kp,
      vp,
      lp,
      delta.ptr,
      gop,
      gqp,
      ...flags,
    ]);
  }
  if (p.batch * p.kvHeads * p.tk > 0) {
    kernel(h, 'attention_bwd_dkdv', hd).launch(
      [Math.ceil(p.tk / ATTN_ROWS), p.kvHeads, p.batch],
      threads,
      0,
      [qp, kp, vp, lp, delta.ptr, gop, gkp, gvp, ...flags],
    );
  }
  h.free(delta);
}
