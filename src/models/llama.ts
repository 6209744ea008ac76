// Llama (HF LlamaForCausalLM) and the decoder every Llama-like family shares: RMSNorm,
// grouped-query attention with RoPE (plain or scaled), a gated MLP, sequential pre-norm blocks,
// tied or untied head. The other families (mistral.ts, qwen2.ts, qwen3.ts, phi3.ts, gemma.ts,
// gemma2.ts) read their own config.json into a LlamaConfig and switch on what they add: sliding
// windows, q/k norms, Gemma's (1 + w) norms, embedding scale, soft-capping and extra norms,
// Phi-3's fused projections. Parameter names are the checkpoint's.

import { add, matmul, mul, reshape, scale, slice, split, tanh, type Tensor } from '../tensor/index.js';
import { Attention, attendHeads, KVCache, type AttentionConfig } from '../nn/attention.js';
import { Embedding, Linear, RMSNorm, type InitOptions } from '../nn/layers.js';
import { activate, GatedMLP, type Activation } from '../nn/mlp.js';
import { Module } from '../nn/module.js';
import type { RopeConfig } from '../nn/rope.js';
import { Random } from '../util/random.js';
import { createModelCache, forwardLM } from './causal-lm.js';
import {
  tensorGetter,
  type AttentionWeights,
  type DistillContract,
  type Family,
  type StudentShape,
} from './family.js';
import { checkTensorSizes, Fields, MAX, type Json } from './hf.js';
import type { AttentionCore } from './phi-mamba.js';
import type {
  Block,
  BlockOptions,
  BlockOutput,
  CausalLM,
  ForwardOptions,
  ForwardResult,
  HeadParts,
  LayerCache,
  ModelCache,
  ModelInfo,
} from './types.js';

export interface LlamaConfig {
  vocabSize: number;
  hiddenSize: number;
  intermediateSize: number;
  numLayers: number;
  numHeads: number;
  numKvHeads: number;
  headDim: number;
  rmsNormEps: number;
  ropeTheta: number;
  maxPositionEmbeddings: number;
  tieWordEmbeddings: boolean;
  /** bias on q, k, v (and on o unless outBias says otherwise) */
  attentionBias: boolean;
  mlpBias: boolean;
  bosTokenId: number | null;
  eosTokenId: number | null;
  // ---- what the other Llama-like families add (absent: Llama's behavior) ----
  /** the family's name (ModelInfo.family); default 'llama' */
  family?: string;
  /** a scaled rotary embedding; absent: plain RoPE with ropeTheta over the whole head */
  rope?: RopeConfig;
  /** bias on o_proj; default attentionBias (Qwen2: q, k, v only) */
  outBias?: boolean;
  /** the gated MLP's activation; default silu */
  hiddenAct?: Activation;
  /** per layer, the sliding window or null (full attention) */
  slidingWindows?: (number | null)[];
  /** RMSNorm over each head of q and k (Qwen3) */
  qkNorm?: boolean;
  /** RMSNorm scales by (1 + w) (Gemma) */
  normOffset?: number;
  /** embeddings times sqrt(hidden_size), rounded to float32 (Gemma) */
  embedScale?: boolean;
  /** post_attention_layernorm on the attention output, pre/post_feedforward_layernorm (Gemma 2) */
  sandwichNorms?: boolean;
  /** factor on q k^T; default 1 / sqrt(head_dim) */
  attnScale?: number;
  attnSoftcap?: number | null;
  finalSoftcap?: number | null;
  /** one qkv_proj and one gate_up_proj (Phi-3) */
  fused?: boolean;
  /** the config.json the model was read from (saved back as it came) */
  sourceJson?: Json;
}

/** The fields every Llama-like config shares, with their range checks. */
export function readDecoderSizes(
  f: Fields,
  defaults: { headDim?: number } = {},
): Pick<
  LlamaConfig,
  'vocabSize' | 'hiddenSize' | 'intermediateSize' | 'numLayers' | 'numHeads' | 'numKvHeads' | 'headDim'
> & { maxPositionEmbeddings: number } {
  const vocabSize = f.size('vocab_size', undefined, 1, MAX.vocab);
  const hiddenSize = f.size('hidden_size', undefined, 1, MAX.hidden);
  const numHeads = f.size('num_attention_heads', undefined, 1, MAX.heads);
  const numKvHeads = f.size('num_key_value_heads', numHeads, 1, MAX.heads);
  if (numHeads % numKvHeads !== 0)
    f.fail('num_key_value_heads', `(${numKvHeads}) must divide num_attention_heads (${numHeads})`);
  const explicitHead = f.has('head_dim') || defaults.headDim !== undefined;
  if (!explicitHead && hiddenSize % numHeads !== 0)
    f.fail('num_attention_heads', `(${numHeads}) must divide hidden_size (${hiddenSize})`);
  const headDim = f.size('head_dim', defaults.headDim ?? hiddenSize / numHeads, 2, MAX.headDim);
  if (headDim % 2 !== 0) f.fail('head_dim', `(${headDim}) must be even for rotary embeddings`);
  const intermediateSize = f.size('intermediate_size', undefined, 1, MAX.intermediate);
  const numLayers = f.size('num_hidden_layers', undefined, 1, MAX.layers);
  checkTensorSizes(f, hiddenSize, vocabSize, intermediateSize);
  if (numHeads * headDim * hiddenSize > MAX.tensor)
    f.fail(
      'num_attention_heads',
      `(${numHeads}) times head_dim (${headDim}) times hidden_size is more than ${MAX.tensor} elements in one tensor`,
    );
  const maxPositionEmbeddings = f.size('max_position_embeddings', 2048, 1, MAX.positions);
  return {
    vocabSize,
    hiddenSize,
    intermediateSize,
    numLayers,
    numHeads,
    numKvHeads,
    headDim,
    maxPositionEmbeddings,
  };
}

/** sliding windows per layer from `layer_types` (transformers 5), or `which(i)` when absent */
export function readLayerWindows(
  f: Fields,
  numLayers: number,
  window: number | null,
  which: (layer: number) => boolean,
): (number | null)[] {
  const lt = f.json.layer_types;
  if (lt !== undefined && lt !== null) {
    if (!Array.isArray(lt) || lt.length !== numLayers)
      f.fail('layer_types', `must be a list of ${numLayers} entries (num_hidden_layers)`);
    return (lt as unknown[]).map((t, i) => {
      if (t === 'full_attention') return null;
      if (t === 'sliding_attention') {
        if (window === null)
          f.fail(`layer_types[${i}]`, 'is "sliding_attention" but sliding_window is not set');
        return window;
      }
      return f.fail(
        `layer_types[${i}]`,
        `${JSON.stringify(t)} is not supported (full_attention, sliding_attention)`,
      );
    });
  }
  return Array.from({ length: numLayers }, (_, i) => (window !== null && which(i) ? window : null));
}

/** sliding_window: a positive integer or null */
export function readWindow(f: Fields, key = 'sliding_window'): number | null {
  if (!f.has(key)) return null;
  return f.size(key, undefined, 1, MAX.positions);
}

export function llamaConfigFromJson(json: Json, file = 'config.json'): LlamaConfig {
  const f = new Fields(json, file);
  f.only('hidden_act', ['silu'], 'activation is not supported');
  f.only('pretraining_tp', [1]);
  const s = readDecoderSizes(f);
  const rope = f.ropeConfig(s.headDim, s.maxPositionEmbeddings);
  if (rope.rotaryDim !== s.headDim) f.fail('partial_rotary_factor', 'must be 1 for llama');
  return {
    ...s,
    rmsNormEps: f.eps('rms_norm_eps', 1e-6),
    ropeTheta: rope.theta,
    rope,
    tieWordEmbeddings: f.bool('tie_word_embeddings', false),
    attentionBias: f.bool('attention_bias', false),
    mlpBias: f.bool('mlp_bias', false),
    bosTokenId: f.vocabTokenId('bos_token_id', s.vocabSize),
    eosTokenId: f.vocabTokenId('eos_token_id', s.vocabSize),
    sourceJson: json,
  };
}

export function llamaConfigToJson(c: LlamaConfig): Json {
  if (c.sourceJson) return structuredClone(c.sourceJson);
  return {
    architectures: ['LlamaForCausalLM'],
    model_type: 'llama',
    vocab_size: c.vocabSize,
    hidden_size: c.hiddenSize,
    intermediate_size: c.intermediateSize,
    num_hidden_layers: c.numLayers,
    num_attention_heads: c.numHeads,
    num_key_value_heads: c.numKvHeads,
    head_dim: c.headDim,
    hidden_act: 'silu',
    rms_norm_eps: c.rmsNormEps,
    rope_parameters: { rope_theta: c.ropeTheta, rope_type: 'default' },
    max_position_embeddings: c.maxPositionEmbeddings,
    tie_word_embeddings: c.tieWordEmbeddings,
    attention_bias: c.attentionBias,
    mlp_bias: c.mlpBias,
    bos_token_id: c.bosTokenId,
    eos_token_id: c.eosTokenId,
    dtype: 'float32',
  };
}

/** the attention settings of layer `i` (also what a hybrid student keeps of it) */
export function layerAttention(c: LlamaConfig, i: number): AttentionConfig {
  return {
    dModel: c.hiddenSize,
    nHeads: c.numHeads,
    nKvHeads: c.numKvHeads,
    headDim: c.headDim,
    qkvBias: c.attentionBias,
    outBias: c.outBias ?? c.attentionBias,
    rotaryDim: c.rope?.rotaryDim ?? c.headDim,
    ropeTheta: c.ropeTheta,
    ropeInterleaved: false,
    outName: 'o_proj',
    rope: c.rope && c.rope.type !== 'default' ? c.rope : null,
    window: c.slidingWindows?.[i] ?? null,
    softcap: c.attnSoftcap ?? null,
    scale: c.attnScale ?? null,
    qkNormEps: c.qkNorm ? c.rmsNormEps : null,
  };
}

/** Phi-3's attention: one fused qkv_proj (rows q, then k, then v) and o_proj. */
export class FusedAttention extends Module {
  readonly qkv_proj: Linear;
  readonly o_proj: Linear;

  constructor(
    readonly cfg: AttentionConfig,
    init: InitOptions,
  ) {
    super();
    const { dModel, nHeads, nKvHeads, headDim } = cfg;
    this.qkv_proj = this.child(
      'qkv_proj',
      new Linear(dModel, (nHeads + 2 * nKvHeads) * headDim, { ...init, bias: cfg.qkvBias }),
    );
    this.o_proj = this.child('o_proj', new Linear(nHeads * headDim, dModel, { ...init, bias: cfg.outBias }));
  }

  createCache(batch: number): KVCache {
    return new KVCache(batch, this.cfg.nKvHeads, this.cfg.headDim, this.cfg.window ?? null);
  }

  forward(
    x: Tensor,
    opts: { returnMatrix?: boolean; cache?: LayerCache; position?: number } = {},
  ): { out: Tensor; matrix: Tensor | null } {
    const [b, t] = x.shape;
    const { nHeads, nKvHeads, headDim } = this.cfg;
    const [q, k, v] = split(
      this.qkv_proj.forward(x),
      [nHeads * headDim, nKvHeads * headDim, nKvHeads * headDim],
      -1,
    );
    const r = attendHeads(
      reshape(q, [b, t, nHeads, headDim]),
      reshape(k, [b, t, nKvHeads, headDim]),
      reshape(v, [b, t, nKvHeads, headDim]),
      { ...opts, ...this.cfg },
    );
    return { out: this.o_proj.forward(r.out), matrix: r.matrix };
  }
}

/** Phi-3's MLP: one gate_up_proj (rows gate, then up) and down_proj. */
export class FusedGatedMLP extends Module {
  readonly gate_up_proj: Linear;
  readonly down_proj: Linear;

  constructor(
    dModel: number,
    readonly hidden: number,
    readonly act: Activation,
    opts: InitOptions & { bias?: boolean },
  ) {
    super();
    this.gate_up_proj = this.child('gate_up_proj', new Linear(dModel, 2 * hidden, opts));
    this.down_proj = this.child('down_proj', new Linear(hidden, dModel, opts));
  }

  forward(x: Tensor): Tensor {
    const [gate, up] = split(this.gate_up_proj.forward(x), [this.hidden, this.hidden], -1);
    return this.down_proj.forward(mul(activate(gate, this.act), up));
  }
}

export class LlamaBlock extends Module implements Block {
  readonly mixerKind = 'attention' as const;
  readonly input_layernorm: RMSNorm;
  readonly self_attn: Attention | FusedAttention;
  readonly post_attention_layernorm: RMSNorm;
  readonly pre_feedforward_layernorm: RMSNorm | null;
  readonly post_feedforward_layernorm: RMSNorm | null;
  readonly mlp: GatedMLP | FusedGatedMLP;

  constructor(
    readonly c: LlamaConfig,
    index: number,
    init: InitOptions,
  ) {
    super();
    const norm = () => new RMSNorm(c.hiddenSize, c.rmsNormEps, { offset: c.normOffset ?? 0 });
    this.input_layernorm = this.child('input_layernorm', norm());
    const ac = layerAttention(c, index);
    this.self_attn = this.child(
      'self_attn',
      c.fused ? new FusedAttention(ac, init) : new Attention(ac, init),
    );
    this.post_attention_layernorm = this.child('post_attention_layernorm', norm());
    this.pre_feedforward_layernorm = c.sandwichNorms ? this.child('pre_feedforward_layernorm', norm()) : null;
    this.post_feedforward_layernorm = c.sandwichNorms
      ? this.child('post_feedforward_layernorm', norm())
      : null;
    const act = c.hiddenAct ?? 'silu';
    this.mlp = this.child(
      'mlp',
      c.fused
        ? new FusedGatedMLP(c.hiddenSize, c.intermediateSize, act, { ...init, bias: c.mlpBias })
        : new GatedMLP(c.hiddenSize, c.intermediateSize, { ...init, bias: c.mlpBias, act }),
    );
  }

  /**
   * h = x + attn(norm(x)); out = h + mlp(norm(h)); with sandwich norms (Gemma 2)
   * h = x + post_attn_norm(attn(norm(x))); out = h + post_ff_norm(mlp(pre_ff_norm(h)))
   */
  forward(x: Tensor, opts: BlockOptions = {}): BlockOutput {
    const a = this.self_attn.forward(this.input_layernorm.forward(x), opts);
    if (this.pre_feedforward_layernorm && this.post_feedforward_layernorm) {
      const h = add(x, this.post_attention_layernorm.forward(a.out));
      const m = this.mlp.forward(this.pre_feedforward_layernorm.forward(h));
      return { out: add(h, this.post_feedforward_layernorm.forward(m)), mixerOut: a.out, matrix: a.matrix };
    }
    // h = x + attn and norm(h) in one pass
    const { sum: h, normed } = this.post_attention_layernorm.forwardAdd(x, a.out);
    const out = add(h, this.mlp.forward(normed));
    return { out, mixerOut: a.out, matrix: a.matrix };
  }

  createCache(batch: number): LayerCache {
    return this.self_attn.createCache(batch);
  }
}

export class LlamaForCausalLM extends Module implements CausalLM {
  readonly info: ModelInfo;
  readonly blocks: LlamaBlock[];
  private readonly embedTokens: Embedding;
  private readonly norm: RMSNorm;
  private readonly lmHead: Linear | null;

  constructor(
    readonly config: LlamaConfig,
    init: InitOptions = {},
  ) {
    super();
    const c = config;
    const rng = init.rng ?? new Random(0);
    const opts = { ...init, rng };
    const model = this.child('model', new Module());
    this.embedTokens = new Embedding(c.vocabSize, c.hiddenSize, opts);
    model.child('embed_tokens', this.embedTokens);
    const layers = new Module();
    model.child('layers', layers);
    this.blocks = [];
    for (let i = 0; i < c.numLayers; i++)
      this.blocks.push(layers.child(String(i), new LlamaBlock(c, i, opts)));
    this.norm = model.child('norm', new RMSNorm(c.hiddenSize, c.rmsNormEps, { offset: c.normOffset ?? 0 }));
    this.lmHead = c.tieWordEmbeddings
      ? null
      : this.child('lm_head', new Linear(c.hiddenSize, c.vocabSize, opts));
    this.info = {
      family: c.family ?? 'llama',
      vocabSize: c.vocabSize,
      dModel: c.hiddenSize,
      nLayers: c.numLayers,
      // dynamic NTK scaling stretches the trained context by its factor
      maxSeqLen:
        c.rope?.type === 'dynamic'
          ? Math.floor(c.maxPositionEmbeddings * c.rope.factor!)
          : c.maxPositionEmbeddings,
      bosTokenId: c.bosTokenId,
      eosTokenId: c.eosTokenId,
    };
    // a final soft-cap (Gemma 2) cannot be applied by a loss fused with the head: no parts then
    if (!c.finalSoftcap)
      this.headParts = (h: Tensor): HeadParts => {
        const x = this.norm.forward(h);
        return this.lmHead
          ? { x, weight: this.lmHead.weight, bias: this.lmHead.bias }
          : { x, weight: this.embedTokens.weight, bias: null };
      };
  }

  embed(ids: Tensor): Tensor {
    const e = this.embedTokens.forward(ids);
    // transformers multiplies by sqrt(hidden_size) as a tensor of the model's dtype
    return this.config.embedScale ? scale(e, Math.fround(Math.sqrt(this.config.hiddenSize))) : e;
  }

  head(h: Tensor): Tensor {
    const n = this.norm.forward(h);
    const logits = this.lmHead
      ? this.lmHead.forward(n)
      : matmul(n, this.embedTokens.weight, { transB: true });
    const cap = this.config.finalSoftcap;
    return cap ? scale(tanh(scale(logits, 1 / cap)), cap) : logits;
  }

  /**
   * the head's pieces for a loss fused with it; absent with a final soft-cap (Gemma 2), which a
   * fused linear + softmax cannot apply
   */
  readonly headParts?: (h: Tensor) => HeadParts;

  forward(ids: Tensor, opts?: ForwardOptions): ForwardResult {
    return forwardLM(this, ids, opts);
  }

  createCache(batch: number): ModelCache {
    return createModelCache(this.blocks, batch);
  }

  configJson(): Json {
    return llamaConfigToJson(this.config);
  }

  distillContract(): DistillContract {
    return decoderContract(this);
  }
}

/** the attention a hybrid student keeps of layer `i` */
export function attentionCore(c: LlamaConfig, i: number): AttentionCore {
  const a = layerAttention(c, i);
  return {
    nHeads: a.nHeads,
    nKvHeads: a.nKvHeads,
    headDim: a.headDim,
    rotaryDim: a.rotaryDim,
    ropeTheta: a.ropeTheta,
    qkvBias: a.qkvBias,
    outBias: a.outBias,
    ...(a.rope ? { rope: a.rope } : {}),
    ...(a.window ? { window: a.window } : {}),
    ...(a.softcap ? { softcap: a.softcap } : {}),
    ...(a.scale ? { scale: a.scale } : {}),
    ...(a.qkNormEps != null ? { qkNormEps: a.qkNormEps } : {}),
  };
}

/** rows [start, end) of a matrix or a vector, as a new tensor */
function rows(t: Tensor, start: number, end: number): Tensor {
  return slice(t, 0, start, end);
}

/** The distillation contract of every Llama-like family: a Llama-style student, weights as they are. */
function decoderContract(model: LlamaForCausalLM): DistillContract {
  const c = model.config;
  const get = tensorGetter(model);
  const opt = (n: string) => model.stateDict().get(n) ?? null;
  const hd = c.headDim;
  return {
    studentShape: () => decoderStudentShape(c),
    sharedWeights: (l) => {
      if (l === null) {
        const out: [string, Tensor][] = [
          ['backbone.embedding.weight', get('model.embed_tokens.weight')],
          ['backbone.final_layernorm.weight', get('model.norm.weight')],
        ];
        if (!c.tieWordEmbeddings) out.push(['lm_head.weight', get('lm_head.weight')]);
        return out;
      }
      const t = `model.layers.${l}.`;
      const s = `backbone.layers.${l}.`;
      const norms = ['input_layernorm.weight', 'post_attention_layernorm.weight'];
      if (c.sandwichNorms)
        norms.push('pre_feedforward_layernorm.weight', 'post_feedforward_layernorm.weight');
      const out: [string, Tensor][] = norms.map((n) => [s + n, get(t + n)]);
      if (c.fused) {
        // gate_up_proj: rows gate, then up; the student keeps them apart (the same numbers)
        const I = c.intermediateSize;
        const gu = get(t + 'mlp.gate_up_proj.weight');
        out.push(
          [s + 'mlp.gate_proj.weight', rows(gu, 0, I)],
          [s + 'mlp.up_proj.weight', rows(gu, I, 2 * I)],
        );
        out.push([s + 'mlp.down_proj.weight', get(t + 'mlp.down_proj.weight')]);
        if (c.mlpBias) {
          const gb = get(t + 'mlp.gate_up_proj.bias');
          out.push([s + 'mlp.gate_proj.bias', rows(gb, 0, I)], [s + 'mlp.up_proj.bias', rows(gb, I, 2 * I)]);
          out.push([s + 'mlp.down_proj.bias', get(t + 'mlp.down_proj.bias')]);
        }
        return out;
      }
      const mlp = ['mlp.gate_proj.weight', 'mlp.up_proj.weight', 'mlp.down_proj.weight'];
      if (c.mlpBias) mlp.push('mlp.gate_proj.bias', 'mlp.up_proj.bias', 'mlp.down_proj.bias');
      return [...out, ...mlp.map((n): [string, Tensor] => [s + n, get(t + n)])];
    },
    attentionWeights: (l): AttentionWeights => {
      const a = `model.layers.${l}.self_attn.`;
      const qb = c.attentionBias;
      const ob = c.outBias ?? c.attentionBias;
      const norms = c.qkNorm ? { qNorm: get(a + 'q_norm.weight'), kNorm: get(a + 'k_norm.weight') } : {};
      if (c.fused) {
        const H = c.numHeads * hd;
        const K = c.numKvHeads * hd;
        const w = get(a + 'qkv_proj.weight');
        const b = qb ? get(a + 'qkv_proj.bias') : null;
        return {
          q: rows(w, 0, H),
          k: rows(w, H, H + K),
          v: rows(w, H + K, H + 2 * K),
          qBias: b && rows(b, 0, H),
          kBias: b && rows(b, H, H + K),
          vBias: b && rows(b, H + K, H + 2 * K),
          o: get(a + 'o_proj.weight'),
          oBias: ob ? get(a + 'o_proj.bias') : null,
          ...norms,
        };
      }
      return {
        q: get(a + 'q_proj.weight'),
        k: get(a + 'k_proj.weight'),
        v: get(a + 'v_proj.weight'),
        qBias: qb ? get(a + 'q_proj.bias') : null,
        kBias: qb ? get(a + 'k_proj.bias') : null,
        vBias: qb ? get(a + 'v_proj.bias') : null,
        o: get(a + 'o_proj.weight'),
        oBias: opt(a + 'o_proj.bias') && ob ? get(a + 'o_proj.bias') : null,
        ...norms,
      };
    },
  };
}

/** The student that mirrors this teacher (from its config alone: no weights needed). */
export function decoderStudentShape(c: LlamaConfig): StudentShape {
  return {
    vocabSize: c.vocabSize,
    dModel: c.hiddenSize,
    nLayer: c.numLayers,
    style: 'llama',
    normEps: c.rmsNormEps,
    intermediateSize: c.intermediateSize,
    activation: c.hiddenAct ?? 'silu',
    mlpBias: c.mlpBias,
    lmHeadBias: false,
    tieEmbeddings: c.tieWordEmbeddings,
    maxPositionEmbeddings: 0,
    bosTokenId: c.bosTokenId,
    eosTokenId: c.eosTokenId,
    ...(c.normOffset ? { normOffset: c.normOffset } : {}),
    ...(c.embedScale ? { embedScale: true } : {}),
    ...(c.sandwichNorms ? { sandwichNorms: true } : {}),
    ...(c.finalSoftcap ? { finalSoftcap: c.finalSoftcap } : {}),
    nHeads: c.numHeads,
    nKvHeads: c.numKvHeads,
    headDim: c.headDim,
    attention: (l: number) => attentionCore(c, l),
  };
}

export const llamaFamily: Family = {
  name: 'llama',
  modelTypes: ['llama'],
  architectures: ['LlamaForCausalLM'],
  studentShape: (json, file) => decoderStudentShape(llamaConfigFromJson(json, file)),
  build: (json, file, init) => new LlamaForCausalLM(llamaConfigFromJson(json, file), init),
};

/**
 * The rope of a family whose rotary embedding covers the whole head: `partial_rotary_factor` other
 * than 1 is an error naming the family.
 */
export function readFullRope(
  f: Fields,
  s: { headDim: number; maxPositionEmbeddings: number },
  family: string,
): RopeConfig {
  const rope = f.ropeConfig(s.headDim, s.maxPositionEmbeddings, 10000);
  if (rope.rotaryDim !== s.headDim) f.fail('partial_rotary_factor', `must be 1 for ${family}`);
  return rope;
}

/** A family whose models are this decoder, built from the LlamaConfig that `read` makes of config.json. */
export function decoderFamily(
  name: string,
  modelTypes: readonly string[],
  architectures: readonly string[],
  read: (json: Json, file: string) => LlamaConfig,
): Family {
  return {
    name,
    modelTypes,
    architectures,
    studentShape: (json, file) => decoderStudentShape(read(json, file)),
    build: (json, file, init) => new LlamaForCausalLM(read(json, file), init),
  };
}
