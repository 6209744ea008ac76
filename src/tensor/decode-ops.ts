// Ops of the recurrent student's decoding step (one token per sequence, no gradients), each one
// fused kernel where the backend has it (the CUDA backend: decode.cu, gemv.cu) and the composed
// ops otherwise, with the same values: LayerNorm stored in 16 bits for the products after it, the
// mixer's step with its output gate read straight from in_proj's output, and a Linear with its
// activation stored in 16 bits. MOHAWK_DECODE_FUSED=0 turns the fused kernels off (A/B runs).
// With gradients recorded they compose (the composed ops have their backward passes).

import type { Tensor } from './tensor.js';
import { empty, isGradEnabled, shapeStr, sizeOf } from './tensor.js';
import {
  add3,
  autocastOperand,
  cast,
  layerNorm,
  linear,
  reshape,
  siluGate,
  slice,
  ssmStep,
  unaryTo,
  type SsmStepOptions,
} from './ops.js';

/** whether the decode step's fused kernels may be used (the backend must also have them) */
export function decodeFusion(): boolean {
  return process.env.MOHAWK_DECODE_FUSED !== '0';
}

function recording(...ts: (Tensor | null)[]): boolean {
  return isGradEnabled() && ts.some((t) => t?.requiresGrad);
}

/** LayerNorm of x (..., C) f32 stored in `dtype` (the input of the products that follow). */
export function layerNormTo(
  x: Tensor,
  weight: Tensor,
  bias: Tensor | null,
  eps: number,
  dtype: 'bf16' | 'f16',
): Tensor {
  const be = x.backend;
  const fused =
    be.layerNormTo16 &&
    decodeFusion() &&
    !recording(x, weight, bias) &&
    [x, weight, ...(bias ? [bias] : [])].every((t) => t.dtype === 'f32' && t.backend === be);
  if (!fused) return cast(layerNorm(x, weight, bias, eps), dtype);
  const cols = x.shape[x.ndim - 1];
  if (weight.ndim !== 1 || weight.shape[0] !== cols || (bias && (bias.ndim !== 1 || bias.shape[0] !== cols)))
    throw new Error(`layerNormTo: weight/bias must be (${cols}) for x ${shapeStr(x.shape)}`);
  const out = empty(x.shape, dtype, be);
  be.layerNormTo16!(
    x.buffer,
    weight.buffer,
    bias?.buffer ?? null,
    out.buffer,
    x.size / Math.max(cols, 1),
    cols,
    eps,
  );
  return out;
}

/** where ssmStepGated finds its inputs in a row of in_proj's output */
export interface InProjLayout {
  /** values per row (in_proj's output features) */
  rowLen: number;
  /** first column of the conv inputs x, B, C */
  xOff: number;
  /** first column of z (H P) */
  zOff: number;
  /** first column of a (H) */
  aOff: number;
}

/**
 * One decoding step of the discrete Mamba-2 mixer with its output gate: zx (B, rowLen) is
 * in_proj's output (xbc, z and a at the columns of `layout`), the caches convState (B, K - 1, Cc)
 * and ssm (B, H, P, N) are updated in place as by ssmStep; the result (B, H P) is
 * (h C + D x) * silu(z + zBias), in `dtype` (null: f32). No backward (decoding).
 */
export function ssmStepGated(
  zx: Tensor,
  layout: InProjLayout,
  convState: Tensor,
  convWeight: Tensor,
  convBias: Tensor | null,
  D: Tensor,
  zBias: Tensor,
  ssm: Tensor,
  opts: SsmStepOptions & { dtype: 'bf16' | 'f16' | null },
): Tensor {
  const [batch, heads, headDim, dState] = ssm.shape;
  const hp = heads * headDim;
  const cc = hp + 2 * opts.groups * dState;
  if (zx.ndim !== 2 || zx.shape[0] !== batch || zx.shape[1] !== layout.rowLen)
    throw new Error(
      `ssmStepGated: in_proj output ${shapeStr(zx.shape)}, expected [${batch}, ${layout.rowLen}]`,
    );
  const within = (off: number, n: number) => off >= 0 && off + n <= layout.rowLen;
  if (!within(layout.xOff, cc) || !within(layout.zOff, hp) || !within(layout.aOff, heads))
    throw new Error(
      `ssmStepGated: layout ${JSON.stringify(layout)} does not fit ${cc} + ${hp} + ${heads} columns`,
    );
  const be = zx.backend;
  const all = [zx, convState, convWeight, D, zBias, ssm, ...(convBias ? [convBias] : [])];
  const fused =
    be.ssmStepGate &&
    decodeFusion() &&
    !recording(...all) &&
    all.every((t) => t.dtype === 'f32' && t.backend === be) &&
    convWeight.ndim === 2 &&
    convWeight.shape[0] === cc &&
    convState.ndim === 3 &&
    sizeOf(convState.shape) === batch * (convWeight.shape[1] - 1) * cc &&
    zBias.size === hp &&
    D.size === heads;
  if (!fused) {
    const part = (off: number, n: number) => slice(zx, 1, off, off + n);
    const y = ssmStep(
      part(layout.xOff, cc),
      convState,
      convWeight,
      convBias,
      part(layout.aOff, heads),
      D,
      ssm,
      opts,
    );
    const gated = siluGate(reshape(y, [batch, hp]), part(layout.zOff, hp), zBias);
    return opts.dtype ? cast(gated, opts.dtype) : gated;
  }
  const out = empty([batch, hp], opts.dtype ?? 'f32', be);
  be.ssmStepGate!(
    zx.buffer,
    layout,
    convState.buffer,
    convWeight.buffer,
    convBias?.buffer ?? null,
    D.buffer,
    zBias.buffer,
    ssm.buffer,
    out.buffer,
    {
      batch,
      heads,
      groups: opts.groups,
      headDim,
      dState,
      kernel: convWeight.shape[1],
      silu: opts.silu,
    },
  );
  return out;
}

/**
 * act(x W^T + bias) stored in `dtype` (a Linear, then its activation into the 16-bit input of the
 * next product): one kernel where the backend has matmulAct, else linear (under autocast: f32
 * out) and unaryTo. x (..., in) f32 or in `dtype`, weight (out, in), bias (out) f32 | null.
 */
export function linearAct(
  x: Tensor,
  weight: Tensor,
  bias: Tensor | null,
  act: 'geluNew',
  dtype: 'bf16' | 'f16',
): Tensor {
  const be = x.backend;
  const k = x.shape[x.ndim - 1];
  const fused =
    be.matmulAct &&
    decodeFusion() &&
    !recording(x, weight, bias) &&
    weight.ndim === 2 &&
    weight.shape[1] === k &&
    (x.dtype === 'f32' || x.dtype === dtype) &&
    (weight.dtype === 'f32' || weight.dtype === dtype) &&
    (!bias || (bias.dtype === 'f32' && bias.size === weight.shape[0])) &&
    [x, weight, ...(bias ? [bias] : [])].every((t) => t.backend === be);
  if (!fused) {
    const h = linear(x, weight, bias);
    return unaryTo(act, h.dtype === 'f32' ? h : cast(h, 'f32'), dtype);
  }
  const n = weight.shape[0];
  const rows = x.size / Math.max(k, 1);
  const x16 = x.dtype === dtype ? x : autocastOperand(x, dtype);
  const w16 = weight.dtype === dtype ? weight : autocastOperand(weight, dtype);
  const out = empty([...x.shape.slice(0, -1), n], dtype, be);
  be.matmulAct!(act, x16.buffer, w16.buffer, out.buffer, rows, n, k, bias?.buffer ?? null);
  return out;
}

/**
 * (r1 + r2) + (x W^T + bias), f32 (a parallel block's last Linear with the residual sum of add3 in
 * its pass): one kernel where the backend has matmulResidual, else add3(r1, r2, linear(...)).
 * x (..., in) f32 or in `dtype`, weight (out, in), bias (out) f32 | null, r1, r2 (..., out) f32.
 */
export function linearResidual(
  x: Tensor,
  weight: Tensor,
  bias: Tensor | null,
  r1: Tensor,
  r2: Tensor,
  dtype: 'bf16' | 'f16',
): Tensor {
  const be = x.backend;
  const k = x.shape[x.ndim - 1];
  const outShape = [...x.shape.slice(0, -1), weight.shape[0]];
  const fits = (t: Tensor) =>
    t.dtype === 'f32' &&
    t.backend === be &&
    t.ndim === outShape.length &&
    t.shape.every((d, i) => d === outShape[i]);
  const fused =
    be.matmulResidual &&
    decodeFusion() &&
    !recording(x, weight, bias, r1, r2) &&
    weight.ndim === 2 &&
    weight.shape[1] === k &&
    (x.dtype === 'f32' || x.dtype === dtype) &&
    (weight.dtype === 'f32' || weight.dtype === dtype) &&
    (!bias || (bias.dtype === 'f32' && bias.size === weight.shape[0])) &&
    fits(r1) &&
    fits(r2) &&
    [x, weight, ...(bias ? [bias] : [])].every((t) => t.backend === be);
  if (!fused) return add3(r1, r2, linear(x, weight, bias));
  const n = weight.shape[0];
  const x16 = x.dtype === dtype ? x : autocastOperand(x, dtype);
  const w16 = weight.dtype === dtype ? weight : autocastOperand(weight, dtype);
  const out = empty(outShape, 'f32', be);
  be.matmulResidual!(
    x16.buffer,
    w16.buffer,
    out.buffer,
    x.size / Math.max(k, 1),
    n,
    k,
    bias?.buffer ?? null,
    r1.buffer,
    r2.buffer,
  );
  return out;
}

/**
 * Two Linears of one input (the parallel block's in_proj and fc1): [x W1^T + b1 (f32),
 * act(x W2^T + b2) in `dtype`], one kernel where the backend has matmulPair, else linear and
 * linearAct. x (..., in) f32 or in `dtype`; weights (out, in) f32 or in `dtype`; biases f32 | null.
 */
export function linearPair(
  x: Tensor,
  w1: Tensor,
  b1: Tensor | null,
  w2: Tensor,
  b2: Tensor | null,
  act: 'geluNew',
  dtype: 'bf16' | 'f16',
): [Tensor, Tensor] {
  const be = x.backend;
  const k = x.shape[x.ndim - 1];
  const lead = x.shape.slice(0, -1);
  const okW = (w: Tensor, b: Tensor | null) =>
    w.ndim === 2 &&
    w.shape[1] === k &&
    (w.dtype === 'f32' || w.dtype === dtype) &&
    w.backend === be &&
    (!b || (b.dtype === 'f32' && b.size === w.shape[0] && b.backend === be));
  const fused =
    be.matmulPair &&
    decodeFusion() &&
    !recording(x, w1, b1, w2, b2) &&
    (x.dtype === 'f32' || x.dtype === dtype) &&
    okW(w1, b1) &&
    okW(w2, b2);
  if (!fused) return [linear(x, w1, b1), linearAct(x, w2, b2, act, dtype)];
  const as16 = (t: Tensor) => (t.dtype === dtype ? t : autocastOperand(t, dtype));
  const [n1, n2] = [w1.shape[0], w2.shape[0]];
  const y1 = empty([...lead, n1], 'f32', be);
  const y2 = empty([...lead, n2], dtype, be);
  be.matmulPair!(
    as16(x).buffer,
    x.size / Math.max(k, 1),
    k,
    as16(w1).buffer,
    b1?.buffer ?? null,
    y1.buffer,
    n1,
    as16(w2).buffer,
    b2?.buffer ?? null,
    y2.buffer,
    n2,
    act,
  );
  return [y1, y2];
}

/**
 * A parallel block's last two products and its residual sum (a decoding step): mixerOut =
 * g Wo^T + bo (out_proj) and out = (x + mixerOut) + (h Wf^T + bf) (fc2, add3's order), one kernel
 * where the backend has blockOut, else linear and linearResidual. g (..., k1), h (..., k2) f32 or
 * in `dtype`; weights (n, k) f32 or in `dtype`; biases f32 | null; x (..., n) f32.
 */
export function parallelBlockOut(
  g: Tensor,
  wo: Tensor,
  bo: Tensor | null,
  h: Tensor,
  wf: Tensor,
  bf: Tensor | null,
  x: Tensor,
  dtype: 'bf16' | 'f16',
): { out: Tensor; mixerOut: Tensor } {
  const be = g.backend;
  const [k1, k2] = [g.shape[g.ndim - 1], h.shape[h.ndim - 1]];
  const n = wo.shape[0];
  const lead = g.shape.slice(0, -1);
  const rows = g.size / Math.max(k1, 1);
  const okW = (w: Tensor, b: Tensor | null, k: number) =>
    w.ndim === 2 &&
    w.shape[0] === n &&
    w.shape[1] === k &&
    (w.dtype === 'f32' || w.dtype === dtype) &&
    w.backend === be &&
    (!b || (b.dtype === 'f32' && b.size === n && b.backend === be));
  const fused =
    be.blockOut &&
    decodeFusion() &&
    !recording(g, wo, bo, h, wf, bf, x) &&
    [g, h].every((t) => (t.dtype === 'f32' || t.dtype === dtype) && t.backend === be) &&
    h.size / Math.max(k2, 1) === rows &&
    okW(wo, bo, k1) &&
    okW(wf, bf, k2) &&
    x.dtype === 'f32' &&
    x.backend === be &&
    x.size === rows * n &&
    x.shape[x.ndim - 1] === n;
  if (!fused) {
    const mixerOut = linear(g, wo, bo);
    return { out: linearResidual(h, wf, bf, x, mixerOut, dtype), mixerOut };
  }
  const as16 = (t: Tensor) => (t.dtype === dtype ? t : autocastOperand(t, dtype));
  const mixerOut = empty([...lead, n], 'f32', be);
  const out = empty(x.shape, 'f32', be);
  be.blockOut!(
    as16(g).buffer,
    as16(wo).buffer,
    bo?.buffer ?? null,
    as16(h).buffer,
    as16(wf).buffer,
    bf?.buffer ?? null,
    x.buffer,
    mixerOut.buffer,
    out.buffer,
    rows,
    n,
    k1,
    k2,
  );
  return { out, mixerOut };
}
