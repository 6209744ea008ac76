// Causal self-attention with grouped-query heads, rotary embeddings on a leading fraction of
// each head (plain or scaled: nn/rope.ts), optional sliding window, score soft-capping (Gemma 2)
// and per-head q/k RMSNorm (Qwen3), and a KV cache for decoding (a window's worth of keys when
// the layer slides). The projections are separate modules so that each family keeps its
// checkpoint names (q_proj/k_proj/v_proj + o_proj or dense).

import {
  add,
  attention,
  causalMask,
  empty,
  expand,
  keep,
  matmul,
  noGrad,
  permute,
  reshape,
  rope as ropeOp,
  scale as scaleOp,
  slice,
  softmax,
  tanh,
  tensor,
  writeSlice,
  type Tensor,
} from '../tensor/index.js';
import type { LayerCache } from './cache.js';
import { Linear, RMSNorm, type InitOptions } from './layers.js';
import { Module } from './module.js';
import { applyRopeTables, isScaledRope, ropeTables, type RopeConfig } from './rope.js';

export interface AttentionConfig {
  dModel: number;
  nHeads: number;
  nKvHeads: number;
  headDim: number;
  /** bias on q, k, v */
  qkvBias: boolean;
  /** bias on the output projection */
  outBias: boolean;
  /** leading dimensions of each head that rotate (0 = no rotary) */
  rotaryDim: number;
  ropeTheta: number;
  /** llama2.c's adjacent-pair layout instead of HF's rotate-half */
  ropeInterleaved: boolean;
  /** the output projection's checkpoint name: o_proj (Llama) or dense (Phi) */
  outName: 'o_proj' | 'dense';
  /** a scaled rotary embedding (rope_scaling / rope_parameters); absent: plain, ropeTheta */
  rope?: RopeConfig | null;
  /** a query sees the last `window` positions, its own included (sliding-window layers) */
  window?: number | null;
  /** scores -> softcap * tanh(scores / softcap) before the softmax (Gemma 2) */
  softcap?: number | null;
  /** factor on q k^T; default 1 / sqrt(headDim) */
  scale?: number | null;
  /** RMSNorm over each head of q and k before the rotary embedding (Qwen3): its epsilon */
  qkNormEps?: number | null;
}

/**
 * Keys and values of past tokens: (B, capacity, Hkv, Dh), `length` of them, the first at
 * absolute position `start`. Without a window every key stays (start = 0); with one, keys no
 * future query can see are dropped when the buffer is reallocated, so memory stays about two
 * windows.
 */
export class KVCache implements LayerCache {
  readonly kind = 'kv' as const;
  k: Tensor | null = null;
  v: Tensor | null = null;
  length = 0;
  start = 0;

  constructor(
    readonly batch: number,
    readonly kvHeads: number,
    readonly headDim: number,
    readonly window: number | null = null,
  ) {}

  /** absolute position of the next token */
  get end(): number {
    return this.start + this.length;
  }

  /**
   * Append (B, T, Hkv, Dh) keys and values; returns the keys and values the new queries may see
   * and the absolute position of the first of them.
   */
  append(k: Tensor, v: Tensor): { k: Tensor; v: Tensor; start: number } {
    const t = k.shape[1];
    // keys before the first new query's window are never needed again
    const drop =
      this.window === null ? 0 : Math.max(0, Math.min(this.length, this.end - this.window + 1 - this.start));
    noGrad(() => {
      if (!this.k || this.k.shape[1] < this.length + t) {
        const kept = this.length - drop;
        const need = kept + t;
        const grow = this.window === null ? 2 * (this.k?.shape[1] ?? 0) : 2 * this.window;
        const cap = Math.max(need, grow, 64);
        const nk = keep(empty([this.batch, cap, this.kvHeads, this.headDim], k.dtype, k.backend));
        const nv = keep(empty([this.batch, cap, this.kvHeads, this.headDim], k.dtype, k.backend));
        if (this.k && this.v && kept > 0) {
          writeSlice(nk, slice(this.k, 1, drop, this.length), 1, 0);
          writeSlice(nv, slice(this.v, 1, drop, this.length), 1, 0);
        }
        this.k?.dispose();
        this.v?.dispose();
        this.k = nk;
        this.v = nv;
        this.start += drop;
        this.length = kept;
      }
      writeSlice(this.k, k, 1, this.length);
      writeSlice(this.v!, v, 1, this.length);
    });
    this.length += t;
    const from = this.window === null ? 0 : Math.max(0, this.end - t - this.window + 1 - this.start);
    return {
      k: slice(this.k!, 1, from, this.length),
      v: slice(this.v!, 1, from, this.length),
      start: this.start + from,
    };
  }

  dispose(): void {
    this.k?.dispose();
    this.v?.dispose();
    this.k = null;
    this.v = null;
    this.length = 0;
    this.start = 0;
  }
}

export interface HeadsOptions {
  returnMatrix?: boolean;
  cache?: LayerCache;
  position?: number;
  rotaryDim: number;
  ropeTheta: number;
  ropeInterleaved: boolean;
  rope?: RopeConfig | null;
  window?: number | null;
  softcap?: number | null;
  scale?: number | null;
}

/**
 * The part every family shares: rotary embedding, cache, and the attention op.
 * q (B, T, H, Dh), k and v (B, T, Hkv, Dh) -> out (B, T, H * Dh), matrix (B, H, T, T) if asked.
 */
export function attendHeads(
  q: Tensor,
  k: Tensor,
  v: Tensor,
  opts: HeadsOptions,
): { out: Tensor; matrix: Tensor | null } {
  const [b, t, h, dh] = q.shape;
  const position = opts.position ?? 0;
  const window = opts.window ?? null;
  const ro = {
    rotaryDim: opts.rotaryDim,
    theta: opts.ropeTheta,
    interleaved: opts.ropeInterleaved,
    positionOffset: position,
  };
  const scaled = opts.rope && isScaledRope(opts.rope);
  const plainRope = !scaled && opts.rotaryDim > 0;
  // the fused causal op serves when every key up to each query is inside its window (without a
  // cache the keys are the queries' tokens: tk = t); without a cache it gets q and k before the
  // rotary embedding and applies it itself (in its kernels where it can; it composes the ops
  // where gradients flow)
  const fusedOp = (tk: number) => !opts.softcap && (window === null || tk <= window);
  const ropeInOp = plainRope && !opts.cache && fusedOp(t);
  if (scaled) {
    const { cos, sin } = ropeTables(opts.rope!, position, t, q.backend);
    q = applyRopeTables(q, cos, sin, opts.rope!.rotaryDim);
    k = applyRopeTables(k, cos, sin, opts.rope!.rotaryDim);
  } else if (plainRope && !ropeInOp) {
    q = ropeOp(q, ro);
    k = ropeOp(k, ro);
  }
  let keyStart = position;
  if (opts.cache) {
    if (!(opts.cache instanceof KVCache)) throw new Error('attention: the layer cache is not a KV cache');
    if (opts.cache.end !== position) {
      throw new Error(
        `attention: cache holds ${opts.cache.end} tokens but the input starts at position ${position}`,
      );
    }
    let start: number;
    ({ k, v, start } = opts.cache.append(k, v));
    keyStart = start;
  }
  const tk = k.shape[1];
  const scale = opts.scale ?? 1 / Math.sqrt(dh);
  if (fusedOp(tk)) {
    // out feeds the output projection (a product): in bf16 under autocast without gradients
    const r = attention(q, k, v, {
      causal: true,
      scale,
      returnProbs: opts.returnMatrix,
      out16: true,
      rope: ropeInOp ? ro : undefined,
    });
    return { out: reshape(r.out, [b, t, h * dh]), matrix: r.probs };
  }
  const r = maskedAttention(q, k, v, {
    scale,
    softcap: opts.softcap ?? null,
    window,
    queryStart: position,
    keyStart,
  });
  return { out: reshape(r.out, [b, t, h * dh]), matrix: opts.returnMatrix ? r.probs : null };
}

/**
 * Attention from generic ops, for what the fused op does not do (sliding windows, soft-capped
 * scores): q (B, tq, H, Dh), k and v (B, tk, Hkv, Dh); query i (absolute position queryStart + i)
 * sees key j (keyStart + j) when the key is not later and, with a window, less than `window`
 * positions back. Returns out (B, tq, H, Dh) and the probabilities (B, H, tq, tk).
 */
export function maskedAttention(
  q: Tensor,
  k: Tensor,
  v: Tensor,
  o: { scale: number; softcap: number | null; window: number | null; queryStart: number; keyStart: number },
): { out: Tensor; probs: Tensor } {
  const [b, tq, h, dh] = q.shape;
  const [, tk, hkv] = k.shape;
  const heads = (x: Tensor) => {
    if (hkv === h) return x;
    const g = h / hkv;
    return reshape(expand(reshape(x, [b, tk, hkv, 1, dh]), [b, tk, hkv, g, dh]), [b, tk, h, dh]);
  };
  const qh = permute(q, [0, 2, 1, 3]); // (B, H, tq, Dh)
  const kh = permute(heads(k), [0, 2, 1, 3]); // (B, H, tk, Dh)
  const vh = permute(heads(v), [0, 2, 1, 3]);
  let scores = scaleOp(matmul(qh, kh, { transB: true }), o.scale); // (B, H, tq, tk)
  if (o.softcap) scores = scaleOp(tanh(scaleOp(scores, 1 / o.softcap)), o.softcap);
  let masked: Tensor;
  if (o.window === null && o.keyStart + tk === o.queryStart + tq) {
    // keys end at the last query: the plain causal mask, on the device
    masked = causalMask(scores);
  } else {
    const mask = new Float32Array(tq * tk);
    for (let i = 0; i < tq; i++) {
      const qp = o.queryStart + i;
      for (let j = 0; j < tk; j++) {
        const kp = o.keyStart + j;
        const seen = kp <= qp && (o.window === null || qp - kp < o.window);
        mask[i * tk + j] = seen ? 0 : -Infinity;
      }
    }
    masked = add(scores, tensor(mask, [1, 1, tq, tk], scores.dtype, scores.backend));
  }
  const probs = softmax(masked, -1);
  const out = permute(matmul(probs, vh), [0, 2, 1, 3]); // (B, tq, H, Dh)
  return { out, probs };
}

/** q/k/v/o projections + attendHeads: the attention layer of the Llama-like and Phi families. */
export class Attention extends Module {
  readonly q_proj: Linear;
  readonly k_proj: Linear;
  readonly v_proj: Linear;
  readonly o_proj: Linear;
  readonly q_norm: RMSNorm | null;
  readonly k_norm: RMSNorm | null;

  constructor(
    readonly cfg: AttentionConfig,
    init: InitOptions = {},
  ) {
    super();
    const { dModel, nHeads, nKvHeads, headDim } = cfg;
    if (nHeads % nKvHeads !== 0)
      throw new Error(
        `attention: num_key_value_heads (${nKvHeads}) must divide num_attention_heads (${nHeads})`,
      );
    this.q_proj = this.child('q_proj', new Linear(dModel, nHeads * headDim, { ...init, bias: cfg.qkvBias }));
    this.k_proj = this.child(
      'k_proj',
      new Linear(dModel, nKvHeads * headDim, { ...init, bias: cfg.qkvBias }),
    );
    this.v_proj = this.child(
      'v_proj',
      new Linear(dModel, nKvHeads * headDim, { ...init, bias: cfg.qkvBias }),
    );
    this.o_proj = this.child(
      cfg.outName,
      new Linear(nHeads * headDim, dModel, { ...init, bias: cfg.outBias }),
    );
    const eps = cfg.qkNormEps;
    this.q_norm = eps != null ? this.child('q_norm', new RMSNorm(headDim, eps, init)) : null;
    this.k_norm = eps != null ? this.child('k_norm', new RMSNorm(headDim, eps, init)) : null;
  }

  createCache(batch: number): KVCache {
    return new KVCache(batch, this.cfg.nKvHeads, this.cfg.headDim, this.cfg.window ?? null);
  }

  /** x (B, T, D) -> out (B, T, D) and, when asked, the probabilities (B, H, T, T) */
  forward(
    x: Tensor,
    opts: { returnMatrix?: boolean; cache?: LayerCache; position?: number } = {},
  ): { out: Tensor; matrix: Tensor | null } {
    const [b, t] = x.shape;
    const { nHeads, nKvHeads, headDim } = this.cfg;
    let q = reshape(this.q_proj.forward(x), [b, t, nHeads, headDim]);
    let k = reshape(this.k_proj.forward(x), [b, t, nKvHeads, headDim]);
    const v = reshape(this.v_proj.forward(x), [b, t, nKvHeads, headDim]);
    if (this.q_norm && this.k_norm) {
      q = this.q_norm.forward(q);
      k = this.k_norm.forward(k);
    }
    const r = attendHeads(q, k, v, { ...opts, ...this.cfg });
    return { out: this.o_proj.forward(r.out), matrix: r.matrix };
  }
}
