// Causal self-attention with grouped-query heads, rotary embeddings on a leading fraction of
// each head, and a KV cache for decoding. The projections are separate modules so that each
// family keeps its checkpoint names (q_proj/k_proj/v_proj + o_proj or dense).

import {
  attention,
  empty,
  keep,
  noGrad,
  reshape,
  rope as ropeOp,
  slice,
  writeSlice,
  type Tensor,
} from '../tensor/index.js';
import type { LayerCache } from './cache.js';
import { Linear, type InitOptions } from './layers.js';
import { Module } from './module.js';

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
}

/** Keys and values of past tokens: (B, capacity, Hkv, Dh), filled up to `length`. */
export class KVCache implements LayerCache {
  readonly kind = 'kv' as const;
  k: Tensor | null = null;
  v: Tensor | null = null;
  length = 0;

  constructor(
    readonly batch: number,
    readonly kvHeads: number,
    readonly headDim: number,
  ) {}

  /** Append (B, T, Hkv, Dh) keys and values; returns all keys and values so far. */
  append(k: Tensor, v: Tensor): { k: Tensor; v: Tensor } {
    const t = k.shape[1];
    const need = this.length + t;
    noGrad(() => {
      if (!this.k || this.k.shape[1] < need) {
        const cap = Math.max(need, 2 * (this.k?.shape[1] ?? 0), 64);
        const nk = keep(empty([this.batch, cap, this.kvHeads, this.headDim], k.dtype, k.backend));
        const nv = keep(empty([this.batch, cap, this.kvHeads, this.headDim], k.dtype, k.backend));
        if (this.k && this.v && this.length > 0) {
          writeSlice(nk, slice(this.k, 1, 0, this.length), 1, 0);
          writeSlice(nv, slice(this.v, 1, 0, this.length), 1, 0);
        }
        this.k?.dispose();
        this.v?.dispose();
        this.k = nk;
        this.v = nv;
      }
      writeSlice(this.k, k, 1, this.length);
      writeSlice(this.v!, v, 1, this.length);
    });
    this.length = need;
    return { k: slice(this.k!, 1, 0, need), v: slice(this.v!, 1, 0, need) };
  }

  dispose(): void {
    this.k?.dispose();
    this.v?.dispose();
    this.k = null;
    this.v = null;
    this.length = 0;
  }
}

export interface HeadsOptions {
  returnMatrix?: boolean;
  cache?: LayerCache;
  position?: number;
  rotaryDim: number;
  ropeTheta: number;
  ropeInterleaved: boolean;
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
  if (opts.rotaryDim > 0) {
    const ro = {
      rotaryDim: opts.rotaryDim,
      theta: opts.ropeTheta,
      interleaved: opts.ropeInterleaved,
      positionOffset: position,
    };
    q = ropeOp(q, ro);
    k = ropeOp(k, ro);
  }
  if (opts.cache) {
    if (!(opts.cache instanceof KVCache)) throw new Error('attention: the layer cache is not a KV cache');
    if (opts.cache.length !== position) {
      throw new Error(
        `attention: cache holds ${opts.cache.length} tokens but the input starts at position ${position}`,
      );
    }
    ({ k, v } = opts.cache.append(k, v));
  }
  const r = attention(q, k, v, { causal: true, returnProbs: opts.returnMatrix });
  return { out: reshape(r.out, [b, t, h * dh]), matrix: r.probs };
}

/** q/k/v/o projections + attendHeads: the Llama and Phi attention layer. */
export class Attention extends Module {
  readonly q_proj: Linear;
  readonly k_proj: Linear;
  readonly v_proj: Linear;
  readonly o_proj: Linear;

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
  }

  createCache(batch: number): KVCache {
    return new KVCache(batch, this.cfg.nKvHeads, this.cfg.headDim);
  }

  /** x (B, T, D) -> out (B, T, D) and, when asked, the probabilities (B, H, T, T) */
  forward(
    x: Tensor,
    opts: { returnMatrix?: boolean; cache?: LayerCache; position?: number } = {},
  ): { out: Tensor; matrix: Tensor | null } {
    const [b, t] = x.shape;
    const { nHeads, nKvHeads, headDim } = this.cfg;
    const q = reshape(this.q_proj.forward(x), [b, t, nHeads, headDim]);
    const k = reshape(this.k_proj.forward(x), [b, t, nKvHeads, headDim]);
    const v = reshape(this.v_proj.forward(x), [b, t, nKvHeads, headDim]);
    const r = attendHeads(q, k, v, { ...opts, ...this.cfg });
    return { out: this.o_proj.forward(r.out), matrix: r.matrix };
  }
}
