// Phi (HF PhiForCausalLM, Phi-1/1.5/2): attention and MLP in parallel on one shared LayerNorm,
// partial rotary embeddings, gelu_new, biases everywhere, final LayerNorm, lm_head with bias.

import { add3, getAutocast, isGradEnabled, layerNormTo, type Tensor } from '../tensor/index.js';
import { Attention } from '../nn/attention.js';
import { Embedding, LayerNorm, Linear, type InitOptions } from '../nn/layers.js';
import { ACTIVATIONS, MLP, type Activation } from '../nn/mlp.js';
import { Module } from '../nn/module.js';
import { Random } from '../util/random.js';
import { createModelCache, forwardLM } from './causal-lm.js';
import { tensorGetter, type DistillContract, type Family, type StudentShape } from './family.js';
import { checkTensorSizes, Fields, MAX, type Json } from './hf.js';
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

export interface PhiConfig {
  vocabSize: number;
  hiddenSize: number;
  intermediateSize: number;
  numLayers: number;
  numHeads: number;
  numKvHeads: number;
  headDim: number;
  rotaryDim: number;
  partialRotaryFactor: number;
  ropeTheta: number;
  layerNormEps: number;
  hiddenAct: Activation;
  maxPositionEmbeddings: number;
  tieWordEmbeddings: boolean;
  bosTokenId: number | null;
  eosTokenId: number | null;
}

export function phiConfigFromJson(json: Json, file = 'config.json'): PhiConfig {
  const f = new Fields(json, file);
  f.only('qk_layernorm', [false]);
  f.only('hidden_act', [...ACTIVATIONS], 'activation is not supported');
  const hiddenSize = f.size('hidden_size', undefined, 1, MAX.hidden);
  const numHeads = f.size('num_attention_heads', undefined, 1, MAX.heads);
  const numKvHeads = f.size('num_key_value_heads', numHeads, 1, MAX.heads);
  if (hiddenSize % numHeads !== 0)
    f.fail('num_attention_heads', `(${numHeads}) must divide hidden_size (${hiddenSize})`);
  if (numHeads % numKvHeads !== 0)
    f.fail('num_key_value_heads', `(${numKvHeads}) must divide num_attention_heads (${numHeads})`);
  const headDim = hiddenSize / numHeads;
  const rope = f.rope(10000, 0.5);
  const rotaryDim = Math.floor(rope.partialRotaryFactor * headDim);
  if (rotaryDim % 2 !== 0 || rotaryDim > headDim)
    f.fail('partial_rotary_factor', `gives ${rotaryDim} rotary dimensions of ${headDim}; must be even`);
  const vocabSize = f.size('vocab_size', undefined, 1, MAX.vocab);
  const intermediateSize = f.size('intermediate_size', undefined, 1, MAX.intermediate);
  checkTensorSizes(f, hiddenSize, vocabSize, intermediateSize);
  return {
    vocabSize,
    hiddenSize,
    intermediateSize,
    numLayers: f.size('num_hidden_layers', undefined, 1, MAX.layers),
    numHeads,
    numKvHeads,
    headDim,
    rotaryDim,
    partialRotaryFactor: rope.partialRotaryFactor,
    ropeTheta: rope.theta,
    layerNormEps: f.eps('layer_norm_eps', 1e-5),
    hiddenAct: f.str('hidden_act', 'gelu_new') as Activation,
    maxPositionEmbeddings: f.size('max_position_embeddings', 2048, 1, MAX.positions),
    tieWordEmbeddings: f.bool('tie_word_embeddings', false),
    bosTokenId: f.vocabTokenId('bos_token_id', vocabSize),
    eosTokenId: f.vocabTokenId('eos_token_id', vocabSize),
  };
}

export function phiConfigToJson(c: PhiConfig): Json {
  return {
    architectures: ['PhiForCausalLM'],
    model_type: 'phi',
    vocab_size: c.vocabSize,
    hidden_size: c.hiddenSize,
    intermediate_size: c.intermediateSize,
    num_hidden_layers: c.numLayers,
    num_attention_heads: c.numHeads,
    num_key_value_heads: c.numKvHeads,
    hidden_act: c.hiddenAct,
    layer_norm_eps: c.layerNormEps,
    partial_rotary_factor: c.partialRotaryFactor,
    rope_parameters: {
      rope_theta: c.ropeTheta,
      partial_rotary_factor: c.partialRotaryFactor,
      rope_type: 'default',
    },
    max_position_embeddings: c.maxPositionEmbeddings,
    tie_word_embeddings: c.tieWordEmbeddings,
    qk_layernorm: false,
    bos_token_id: c.bosTokenId,
    eos_token_id: c.eosTokenId,
    dtype: 'float32',
  };
}

export class PhiBlock extends Module implements Block {
  readonly mixerKind = 'attention' as const;
  readonly input_layernorm: LayerNorm;
  readonly self_attn: Attention;
  readonly mlp: MLP;

  constructor(c: PhiConfig, init: InitOptions) {
    super();
    this.input_layernorm = this.child('input_layernorm', new LayerNorm(c.hiddenSize, c.layerNormEps));
    this.self_attn = this.child(
      'self_attn',
      new Attention(
        {
          dModel: c.hiddenSize,
          nHeads: c.numHeads,
          nKvHeads: c.numKvHeads,
          headDim: c.headDim,
          qkvBias: true,
          outBias: true,
          rotaryDim: c.rotaryDim,
          ropeTheta: c.ropeTheta,
          ropeInterleaved: false,
          outName: 'dense',
        },
        init,
      ),
    );
    this.mlp = this.child('mlp', new MLP(c.hiddenSize, c.intermediateSize, c.hiddenAct, init));
  }

  /** n = ln(x); out = x + attn(n) + mlp(n) */
  forward(x: Tensor, opts: BlockOptions = {}): BlockOutput {
    // without gradients under autocast (the frozen teacher, evaluation, decoding) the products
    // read only the norm's 16-bit output: it is written alone, and fc2 adds the residual sum
    const dt = getAutocast();
    const ln = this.input_layernorm;
    const low = !!dt && !isGradEnabled();
    const n = low ? layerNormTo(x, ln.weight, ln.bias, ln.eps, dt) : ln.forward(x);
    const a = this.self_attn.forward(n, opts);
    const out = low ? this.mlp.forwardResidual(n, x, a.out) : add3(x, a.out, this.mlp.forward(n));
    return { out, mixerOut: a.out, matrix: a.matrix };
  }

  createCache(batch: number): LayerCache {
    return this.self_attn.createCache(batch);
  }
}

export class PhiForCausalLM extends Module implements CausalLM {
  readonly info: ModelInfo;
  readonly blocks: PhiBlock[];
  private readonly embedTokens: Embedding;
  private readonly finalNorm: LayerNorm;
  private readonly lmHead: Linear;

  constructor(
    readonly config: PhiConfig,
    init: InitOptions = {},
  ) {
    super();
    const c = config;
    if (c.tieWordEmbeddings) throw new Error('phi: tie_word_embeddings is not supported for phi checkpoints');
    const opts = { ...init, rng: init.rng ?? new Random(0) };
    const model = this.child('model', new Module());
    this.embedTokens = model.child('embed_tokens', new Embedding(c.vocabSize, c.hiddenSize, opts));
    const layers = model.child('layers', new Module());
    this.blocks = [];
    for (let i = 0; i < c.numLayers; i++) this.blocks.push(layers.child(String(i), new PhiBlock(c, opts)));
    this.finalNorm = model.child('final_layernorm', new LayerNorm(c.hiddenSize, c.layerNormEps));
    this.lmHead = this.child('lm_head', new Linear(c.hiddenSize, c.vocabSize, { ...opts, bias: true }));
    this.info = {
      family: 'phi',
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
    return this.lmHead.forward(this.finalNorm.forward(h));
  }

  headParts(h: Tensor): HeadParts {
    return { x: this.finalNorm.forward(h), weight: this.lmHead.weight, bias: this.lmHead.bias };
  }

  forward(ids: Tensor, opts?: ForwardOptions): ForwardResult {
    return forwardLM(this, ids, opts);
  }

  createCache(batch: number): ModelCache {
    return createModelCache(this.blocks, batch);
  }

  configJson(): Json {
    return phiConfigToJson(this.config);
  }

  distillContract(): DistillContract {
    const c = this.config;
    const get = tensorGetter(this);
    return {
      studentShape: () => phiStudentShape(c),
      sharedWeights: (l) => {
        if (l === null) {
          return [
            ['backbone.embedding.weight', get('model.embed_tokens.weight')],
            ['backbone.final_layernorm.weight', get('model.final_layernorm.weight')],
            ['backbone.final_layernorm.bias', get('model.final_layernorm.bias')],
            ['lm_head.weight', get('lm_head.weight')],
            ['lm_head.bias', get('lm_head.bias')],
          ];
        }
        return [
          'input_layernorm.weight',
          'input_layernorm.bias',
          'mlp.fc1.weight',
          'mlp.fc1.bias',
          'mlp.fc2.weight',
          'mlp.fc2.bias',
        ].map((n) => [`backbone.layers.${l}.${n}`, get(`model.layers.${l}.${n}`)]);
      },
      attentionWeights: (l) => {
        const a = `model.layers.${l}.self_attn.`;
        return {
          q: get(a + 'q_proj.weight'),
          k: get(a + 'k_proj.weight'),
          v: get(a + 'v_proj.weight'),
          qBias: get(a + 'q_proj.bias'),
          kBias: get(a + 'k_proj.bias'),
          vBias: get(a + 'v_proj.bias'),
          o: get(a + 'dense.weight'),
          oBias: get(a + 'dense.bias'),
        };
      },
    };
  }
}

/** The student that mirrors this teacher (from its config alone: no weights needed). */
export function phiStudentShape(c: PhiConfig): StudentShape {
  return {
    vocabSize: c.vocabSize,
    dModel: c.hiddenSize,
    nLayer: c.numLayers,
    style: 'phi',
    normEps: c.layerNormEps,
    intermediateSize: c.intermediateSize,
    activation: c.hiddenAct,
    mlpBias: true,
    lmHeadBias: true,
    tieEmbeddings: false,
    maxPositionEmbeddings: 0,
    bosTokenId: c.bosTokenId,
    eosTokenId: c.eosTokenId,
    nHeads: c.numHeads,
    nKvHeads: c.numKvHeads,
    headDim: c.headDim,
    attention: () => ({
      nHeads: c.numHeads,
      nKvHeads: c.numKvHeads,
      headDim: c.headDim,
      rotaryDim: c.rotaryDim,
      ropeTheta: c.ropeTheta,
      qkvBias: true,
      outBias: true,
    }),
  };
}

export const phiFamily: Family = {
  name: 'phi',
  modelTypes: ['phi'],
  architectures: ['PhiForCausalLM'],
  studentShape: (json, file) => phiStudentShape(phiConfigFromJson(json, file)),
  build: (json, file, init) => new PhiForCausalLM(phiConfigFromJson(json, file), init),
};
