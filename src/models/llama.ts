// Llama (HF LlamaForCausalLM): RMSNorm, grouped-query attention with RoPE, SwiGLU MLP,
// sequential pre-norm blocks, tied or untied head. Parameter names are the checkpoint's.

import { add, matmul, type Tensor } from '../tensor/index.js';
import { Attention } from '../nn/attention.js';
import { Embedding, Linear, RMSNorm, type InitOptions } from '../nn/layers.js';
import { GatedMLP } from '../nn/mlp.js';
import { Module } from '../nn/module.js';
import { Random } from '../util/random.js';
import { createModelCache, forwardLM } from './causal-lm.js';
import { Fields, type Json } from './hf.js';
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
  attentionBias: boolean;
  mlpBias: boolean;
  bosTokenId: number | null;
  eosTokenId: number | null;
}

export function llamaConfigFromJson(json: Json, file = 'config.json'): LlamaConfig {
  const f = new Fields(json, file);
  f.only('hidden_act', ['silu'], 'activation is not supported');
  f.only('pretraining_tp', [1]);
  const hiddenSize = f.int('hidden_size', undefined, 1);
  const numHeads = f.int('num_attention_heads', undefined, 1);
  const numKvHeads = f.int('num_key_value_heads', numHeads, 1);
  if (numHeads % numKvHeads !== 0)
    f.fail('num_key_value_heads', `(${numKvHeads}) must divide num_attention_heads (${numHeads})`);
  if (!f.has('head_dim') && hiddenSize % numHeads !== 0)
    f.fail('num_attention_heads', `(${numHeads}) must divide hidden_size (${hiddenSize})`);
  const headDim = f.int('head_dim', hiddenSize / numHeads, 2);
  if (headDim % 2 !== 0) f.fail('head_dim', `(${headDim}) must be even for rotary embeddings`);
  const rope = f.rope();
  if (rope.partialRotaryFactor !== 1) f.fail('partial_rotary_factor', 'must be 1 for llama');
  return {
    vocabSize: f.int('vocab_size', undefined, 1),
    hiddenSize,
    intermediateSize: f.int('intermediate_size', undefined, 1),
    numLayers: f.int('num_hidden_layers', undefined, 1),
    numHeads,
    numKvHeads,
    headDim,
    rmsNormEps: f.num('rms_norm_eps', 1e-6),
    ropeTheta: rope.theta,
    maxPositionEmbeddings: f.int('max_position_embeddings', 2048, 1),
    tieWordEmbeddings: f.bool('tie_word_embeddings', false),
    attentionBias: f.bool('attention_bias', false),
    mlpBias: f.bool('mlp_bias', false),
    bosTokenId: f.tokenId('bos_token_id'),
    eosTokenId: f.tokenId('eos_token_id'),
  };
}

export function llamaConfigToJson(c: LlamaConfig): Json {
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

export class LlamaBlock extends Module implements Block {
  readonly mixerKind = 'attention' as const;
  readonly input_layernorm: RMSNorm;
  readonly self_attn: Attention;
  readonly post_attention_layernorm: RMSNorm;
  readonly mlp: GatedMLP;

  constructor(c: LlamaConfig, init: InitOptions) {
    super();
    this.input_layernorm = this.child('input_layernorm', new RMSNorm(c.hiddenSize, c.rmsNormEps));
    this.self_attn = this.child(
      'self_attn',
      new Attention(
        {
          dModel: c.hiddenSize,
          nHeads: c.numHeads,
          nKvHeads: c.numKvHeads,
          headDim: c.headDim,
          qkvBias: c.attentionBias,
          outBias: c.attentionBias,
          rotaryDim: c.headDim,
          ropeTheta: c.ropeTheta,
          ropeInterleaved: false,
          outName: 'o_proj',
        },
        init,
      ),
    );
    this.post_attention_layernorm = this.child(
      'post_attention_layernorm',
      new RMSNorm(c.hiddenSize, c.rmsNormEps),
    );
    this.mlp = this.child(
      'mlp',
      new GatedMLP(c.hiddenSize, c.intermediateSize, { ...init, bias: c.mlpBias }),
    );
  }

  /** h = x + attn(norm(x)); out = h + mlp(norm(h)) */
  forward(x: Tensor, opts: BlockOptions = {}): BlockOutput {
    const a = this.self_attn.forward(this.input_layernorm.forward(x), opts);
    const h = add(x, a.out);
    const out = add(h, this.mlp.forward(this.post_attention_layernorm.forward(h)));
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
    for (let i = 0; i < c.numLayers; i++) this.blocks.push(layers.child(String(i), new LlamaBlock(c, opts)));
    this.norm = model.child('norm', new RMSNorm(c.hiddenSize, c.rmsNormEps));
    this.lmHead = c.tieWordEmbeddings
      ? null
      : this.child('lm_head', new Linear(c.hiddenSize, c.vocabSize, opts));
    this.info = {
      family: 'llama',
      vocabSize: c.vocabSize,
      dModel: c.hiddenSize,
      nLayers: c.numLayers,
      maxSeqLen: c.maxPositionEmbeddings,
      bosTokenId: c.bosTokenId,
      eosTokenId: c.eosTokenId,
    };
  }

  embed(ids: Tensor): Tensor {
    return this.embedTokens.forward(ids);
  }

  head(h: Tensor): Tensor {
    const n = this.norm.forward(h);
    return this.lmHead ? this.lmHead.forward(n) : matmul(n, this.embedTokens.weight, { transB: true });
  }

  headParts(h: Tensor): HeadParts {
    const x = this.norm.forward(h);
    return this.lmHead
      ? { x, weight: this.lmHead.weight, bias: this.lmHead.bias }
      : { x, weight: this.embedTokens.weight, bias: null };
  }

  forward(ids: Tensor, opts?: ForwardOptions): ForwardResult {
    return forwardLM(this, ids, opts);
  }

  createCache(batch: number): ModelCache {
    return createModelCache(this.blocks, batch);
  }

  configJson(): Json {
    return llamaConfigToJson(this.config);
  }
}
