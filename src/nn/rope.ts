// Rotary embeddings with the scaled variants of the Hugging Face checkpoints (transformers'
// modeling_rope_utils): linear, dynamic (NTK), llama3, yarn and longrope. Each variant gives the
// inverse frequencies of the rotary pairs and a factor on cos/sin; the default variant with no
// factor runs the fused rope op, the others rotate with tables built here (float32 arithmetic,
// as transformers computes them).

import { add, cast, concat, mul, neg, slice, tensor, type Tensor } from '../tensor/index.js';
import type { Backend } from '../backends/backend.js';

export type RopeType = 'default' | 'linear' | 'dynamic' | 'llama3' | 'yarn' | 'longrope';

export const ROPE_TYPES: readonly RopeType[] = ['default', 'linear', 'dynamic', 'llama3', 'yarn', 'longrope'];

/** A rotary embedding as the config describes it (the fields of its rope type). */
export interface RopeConfig {
  type: RopeType;
  theta: number;
  /** leading dimensions of each head that rotate */
  rotaryDim: number;
  /** the model's max_position_embeddings */
  maxPositionEmbeddings: number;
  /** linear, dynamic, llama3, yarn; longrope: max_position_embeddings / original (derived) */
  factor?: number;
  /** llama3, yarn, longrope: the pretraining context */
  originalMaxPositionEmbeddings?: number;
  /** llama3 */
  lowFreqFactor?: number;
  highFreqFactor?: number;
  /** yarn, longrope: explicit factor on cos/sin */
  attentionFactor?: number;
  /** yarn */
  betaFast?: number;
  betaSlow?: number;
  mscale?: number;
  mscaleAllDim?: number;
  truncate?: boolean;
  /** longrope: per-pair divisors of the frequencies beyond / within the original context */
  longFactor?: number[];
  shortFactor?: number[];
}

const f32 = Math.fround;

/** base^(-2i/dim) in float32, i = 0 .. dim/2 - 1 */
function defaultInvFreq(base: number, dim: number): Float64Array {
  return Float64Array.from({ length: dim / 2 }, (_, i) => f32(1 / f32(Math.pow(base, f32((2 * i) / dim)))));
}

function mscaleOf(scale: number, m = 1): number {
  return scale <= 1 ? 1 : 0.1 * m * Math.log(scale) + 1;
}

/**
 * Inverse frequencies (rotaryDim / 2) and the cos/sin factor for a forward whose last position
 * is `seqLen - 1` (dynamic and longrope depend on it).
 */
export function ropeFrequencies(
  c: RopeConfig,
  seqLen: number,
): { invFreq: Float64Array; attentionFactor: number } {
  const dim = c.rotaryDim;
  const base = c.theta;
  switch (c.type) {
    case 'default':
      return { invFreq: defaultInvFreq(base, dim), attentionFactor: 1 };
    case 'linear': {
      const inv = defaultInvFreq(base, dim).map((v) => f32(v / c.factor!));
      return { invFreq: inv, attentionFactor: 1 };
    }
    case 'dynamic': {
      const max = c.maxPositionEmbeddings;
      const len = seqLen > max ? seqLen : max;
      const factor = c.factor!;
      const b = base * Math.pow((factor * len) / max - (factor - 1), dim / (dim - 2));
      return { invFreq: defaultInvFreq(b, dim), attentionFactor: 1 };
    }
    case 'llama3': {
      const inv = defaultInvFreq(base, dim);
      const factor = c.factor!;
      const low = c.lowFreqFactor!;
      const high = c.highFreqFactor!;
      const old = c.originalMaxPositionEmbeddings!;
      const lowWavelen = old / low;
      const highWavelen = old / high;
      const out = inv.map((v) => {
        const wavelen = f32((2 * Math.PI) / v);
        if (wavelen > lowWavelen) return f32(v / factor);
        if (wavelen < highWavelen) return v;
        const smooth = f32((old / wavelen - low) / (high - low));
        return f32(f32(((1 - smooth) * v) / factor) + f32(smooth * v));
      });
      return { invFreq: out, attentionFactor: 1 };
    }
    case 'yarn': {
      const orig = c.originalMaxPositionEmbeddings ?? c.maxPositionEmbeddings;
      const factor = c.factor ?? c.maxPositionEmbeddings / orig;
      let attentionFactor = c.attentionFactor;
      if (attentionFactor === undefined) {
        attentionFactor =
          c.mscale && c.mscaleAllDim
            ? mscaleOf(factor, c.mscale) / mscaleOf(factor, c.mscaleAllDim)
            : mscaleOf(factor);
      }
      const betaFast = c.betaFast || 32;
      const betaSlow = c.betaSlow || 1;
      const correctionDim = (rot: number) =>
        (dim * Math.log(orig / (rot * 2 * Math.PI))) / (2 * Math.log(base));
      let low = correctionDim(betaFast);
      let high = correctionDim(betaSlow);
      if (c.truncate ?? true) {
        low = Math.floor(low);
        high = Math.ceil(high);
      }
      low = Math.max(low, 0);
      high = Math.min(high, dim - 1);
      if (low === high) high += 0.001;
      const out = new Float64Array(dim / 2);
      for (let i = 0; i < dim / 2; i++) {
        const posFreq = f32(Math.pow(base, f32((2 * i) / dim)));
        const extrapolation = f32(1 / posFreq);
        const interpolation = f32(1 / f32(factor * posFreq));
        const ramp = Math.min(1, Math.max(0, f32((i - low) / (high - low))));
        const extrapolationFactor = f32(1 - ramp);
        out[i] = f32(
          f32(interpolation * f32(1 - extrapolationFactor)) + f32(extrapolation * extrapolationFactor),
        );
      }
      return { invFreq: out, attentionFactor };
    }
    case 'longrope': {
      const orig = c.originalMaxPositionEmbeddings ?? c.maxPositionEmbeddings;
      const factor = c.originalMaxPositionEmbeddings
        ? c.maxPositionEmbeddings / c.originalMaxPositionEmbeddings
        : (c.factor ?? 1);
      let attentionFactor = c.attentionFactor;
      if (attentionFactor === undefined)
        attentionFactor = factor <= 1 ? 1 : Math.sqrt(1 + Math.log(factor) / Math.log(orig));
      const ext = seqLen > orig ? c.longFactor! : c.shortFactor!;
      const out = Float64Array.from({ length: dim / 2 }, (_, i) =>
        f32(1 / f32(f32(ext[i]) * f32(Math.pow(base, f32((2 * i) / dim))))),
      );
      return { invFreq: out, attentionFactor };
    }
  }
}

/** whether this rotary embedding needs the table path (anything but plain default rope) */
export function isScaledRope(c: RopeConfig): boolean {
  return c.type !== 'default';
}

/**
 * cos and sin tables (1, T, 1, rotaryDim) for positions start .. start + T - 1, float32 as
 * transformers builds them: angle = pos * invFreq, cos(angle) * attentionFactor.
 */
export function ropeTables(
  c: RopeConfig,
  start: number,
  t: number,
  backend?: Backend,
): { cos: Tensor; sin: Tensor } {
  const { invFreq, attentionFactor } = ropeFrequencies(c, start + t);
  const half = c.rotaryDim / 2;
  const af = f32(attentionFactor);
  const cos = new Float32Array(t * c.rotaryDim);
  const sin = new Float32Array(t * c.rotaryDim);
  for (let p = 0; p < t; p++) {
    for (let i = 0; i < half; i++) {
      const angle = f32((start + p) * invFreq[i]);
      const cv = f32(f32(Math.cos(angle)) * af);
      const sv = f32(f32(Math.sin(angle)) * af);
      cos[p * c.rotaryDim + i] = cos[p * c.rotaryDim + half + i] = cv;
      sin[p * c.rotaryDim + i] = sin[p * c.rotaryDim + half + i] = sv;
    }
  }
  return {
    cos: tensor(cos, [1, t, 1, c.rotaryDim], 'f32', backend),
    sin: tensor(sin, [1, t, 1, c.rotaryDim], 'f32', backend),
  };
}

/** x (B, T, H, D) rotated by the tables (HF's rotate-half layout), dims past rotaryDim unchanged */
export function applyRopeTables(x: Tensor, cos: Tensor, sin: Tensor, rotaryDim: number): Tensor {
  const d = x.shape[3];
  const rot = rotaryDim === d ? x : slice(x, 3, 0, rotaryDim);
  const h = rotaryDim / 2;
  const rotated = concat([neg(slice(rot, 3, h, rotaryDim)), slice(rot, 3, 0, h)], 3);
  const c = cos.dtype === x.dtype ? cos : cast(cos, x.dtype);
  const s = sin.dtype === x.dtype ? sin : cast(sin, x.dtype);
  const out = add(mul(rot, c), mul(rotated, s));
  return rotaryDim === d ? out : concat([out, slice(x, 3, rotaryDim, d)], 3);
}
