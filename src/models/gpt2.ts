// GPT-2 (HF GPT2LMHeadModel): learned positions, fused c_attn, Conv1D weights stored as
// (in, out), pre-norm sequential blocks, gelu_new, head tied to the token embedding.

import { add, matmul, reshape, split, tensor, type Tensor } from '../tensor/index.js';
import { attendHeads } from '../nn/attention.js';
import { KVCache } from '../nn/attention.js';
import { Embedding, LayerNorm, normalTensor, type InitOptions } from '../nn/layers.js';
import { activate, ACTIVATIONS, type Activation } from '../nn/mlp.js';
import { Module } from '../nn/module.js';
import { full } from '../tensor/index.js';
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
  LayerCache,
  ModelCache,
  ModelInfo,
} from './types.js';

export interface Gpt2Config {
  vocabSize: number;
  nEmbd: number;
  nLayer: number;
  nHead: number;
  nInner: number;
  nPositions: number;
  layerNormEpsilon: number;
  activation: Activation;
  bosTokenId: number | null;
  eosTokenId: number | null;
}

export function gpt2ConfigFromJson(json: Json, file = 'config.json'): Gpt2Config {
  const f = new Fields(json, file);
  f.only('scale_attn_by_inverse_layer_idx', [false]);
  f.only('scale_attn_weights', [true]);
  f.only('add_cross_attention', [false]);
  f.only('tie_word_embeddings', [true], 'must be true for gpt2');
  f.only('activation_function', [...ACTIVATIONS], 'activation is not supported');
  const nEmbd = f.size('n_embd', undefined, 1, MAX.hidden);
  const nHead = f.size('n_head', undefined, 1, MAX.heads);
  if (nEmbd % nHead !== 0) f.fail('n_head', `(${nHead}) must divide n_embd (${nEmbd})`);
  const vocabSize = f.size('vocab_size', undefined, 1, MAX.vocab);
  const nInner = f.size('n_inner', 4 * nEmbd, 1, MAX.intermediate);
  checkTensorSizes(f, nEmbd, vocabSize, nInner, 'n_embd');
  // the learned positions are a table of n_positions rows
  const nPositions = f.size('n_positions', 1024, 1, MAX.learnedPositions);
  return {
    vocabSize,
    nEmbd,
    nLayer: f.size('n_layer', undefined, 1, MAX.layers),
    nHead,
    nInner,
    nPositions,
    layerNormEpsilon: f.eps('layer_norm_epsilon', 1e-5),
    activation: f.str('activation_function', 'gelu_new') as Activation,
    bosTokenId: f.vocabTokenId('bos_token_id', vocabSize, 'drop'),
    eosTokenId: f.vocabTokenId('eos_token_id', vocabSize, 'drop'),
  };
}

export function gpt2ConfigToJson(c: Gpt2Config): Json {
  return {
    architectures: ['GPT2LMHeadModel'],
    model_type: 'gpt2',
    vocab_size: c.vocabSize,
    n_embd: c.nEmbd,
    n_layer: c.nLayer,
    n_head: c.nHead,
    n_inner: c.nInner,
    n_positions: c.nPositions,
    layer_norm_epsilon: c.layerNormEpsilon,
    activation_function: c.activation,
    scale_attn_weights: true,
    tie_word_embeddings: true,
    bos_token_id: c.bosTokenId,
    eos_token_id: c.eosTokenId,
  };
}

/** GPT-2's Conv1D: y = x W + b with W stored (in, out) */
export class Conv1D extends Module {
  readonly weight: Tensor;
  readonly bias: Tensor;

  constructor(inFeatures: number, outFeatures: number, init: InitOptions) {
    super();
    this.weight = this.param('weight', normalTensor([inFeatures, outFeatures], 0.02, init));
    this.bias = this.param('bias', full([outFeatures], 0));
  }

  forward(x: Tensor): Tensor {
    return add(matmul(x, this.weight), this.bias);
  }
}

class Gpt2Attention extends Module {
  readonly c_attn: Conv1D;
  readonly c_proj: Conv1D;

  constructor(
    readonly c: Gpt2Config,
    init: InitOptions,
  ) {
    super();
    this.c_attn = this.child('c_attn', new Conv1D(c.nEmbd, 3 * c.nEmbd, init));
    this.c_proj = this.child('c_proj', new Conv1D(c.nEmbd, c.nEmbd, init));
  }

  forward(x: Tensor, opts: BlockOptions): { out: Tensor; matrix: Tensor | null } {
    const [b, t] = x.shape;
    const hd = this.c.nEmbd / this.c.nHead;
    const [q, k, v] = split(this.c_attn.forward(x), [this.c.nEmbd, this.c.nEmbd, this.c.nEmbd], -1).map((p) =>
      reshape(p, [b, t, this.c.nHead, hd]),
    );
    const r = attendHeads(q, k, v, { ...opts, rotaryDim: 0, ropeTheta: 10000, ropeInterleaved: false });
    return { out: this.c_proj.forward(r.out), matrix: r.matrix };
  }
}

class Gpt2Mlp extends Module {
  readonly c_fc: Conv1D;
  readonly c_proj: Conv1D;

  constructor(
    readonly c: Gpt2Config,
    init: InitOptions,
  ) {
    super();
    this.c_fc = this.child('c_fc', new Conv1D(c.nEmbd, c.nInner, init));
    this.c_proj = this.child('c_proj', new Conv1D(c.nInner, c.nEmbd, init));
  }

  forward(x: Tensor): Tensor {
    return this.c_proj.forward(activate(this.c_fc.forward(x), this.c.activation));
  }
}

export class Gpt2Block extends Module implements Block {
  readonly mixerKind = 'attention' as const;
  readonly ln_1: LayerNorm;
  readonly attn: Gpt2Attention;
  readonly ln_2: LayerNorm;
  readonly mlp: Gpt2Mlp;

  constructor(
    readonly c: Gpt2Config,
    init: InitOptions,
  ) {
    super();
    this.ln_1 = this.child('ln_1', new LayerNorm(c.nEmbd, c.layerNormEpsilon));
    this.attn = this.child('attn', new Gpt2Attention(c, init));
    this.ln_2 = this.child('ln_2', new LayerNorm(c.nEmbd, c.layerNormEpsilon));
    this.mlp = this.child('mlp', new Gpt2Mlp(c, init));
  }

  forward(x: Tensor, opts: BlockOptions = {}): BlockOutput {
    const a = this.attn.forward(this.ln_1.forward(x), opts);
    const h = add(x, a.out);
    const out = add(h, this.mlp.forward(this.ln_2.forward(h)));
    return { out, mixerOut: a.out, matrix: a.matrix };
  }

  createCache(batch: number): LayerCache {
    return new KVCache(batch, this.c.nHead, this.c.nEmbd / this.c.nHead);
  }
}

export class Gpt2LMHeadModel extends Module implements CausalLM {
  readonly info: ModelInfo;
  readonly blocks: Gpt2Block[];
  private readonly wte: Embedding;
  private readonly wpe: Embedding;
  private readonly lnF: LayerNorm;

  constructor(
    readonly config: Gpt2Config,
    init: InitOptions = {},
  ) {
    super();
    const c = config;
    const opts = { ...init, rng: init.rng ?? new Random(0) };
    const tr = this.child('transformer', new Module());
    this.wte = tr.child('wte', new Embedding(c.vocabSize, c.nEmbd, opts));
    this.wpe = tr.child('wpe', new Embedding(c.nPositions, c.nEmbd, { ...opts, std: 0.01 }));
    const h = tr.child('h', new Module());
    this.blocks = [];
    for (let i = 0; i < c.nLayer; i++) this.blocks.push(h.child(String(i), new Gpt2Block(c, opts)));
    this.lnF = tr.child('ln_f', new LayerNorm(c.nEmbd, c.layerNormEpsilon));
    this.info = {
      family: 'gpt2',
      vocabSize: c.vocabSize,
      dModel: c.nEmbd,
      nLayers: c.nLayer,
      maxSeqLen: c.nPositions,
      bosTokenId: c.bosTokenId,
      eosTokenId: c.eosTokenId,
    };
  }

  embed(ids: Tensor, position = 0): Tensor {
    const [b, t] = ids.shape;
    if (position + t > this.config.nPositions) {
      throw new Error(`gpt2: positions up to ${position + t} exceed n_positions (${this.config.nPositions})`);
    }
    const pos = tensor(
      Int32Array.from({ length: t }, (_, i) => position + i),
      [1, t],
      'i32',
    );
    void b;
    return add(this.wte.forward(ids), this.wpe.forward(pos));
  }

  head(h: Tensor): Tensor {
    return matmul(this.lnF.forward(h), this.wte.weight, { transB: true });
  }

  forward(ids: Tensor, opts?: ForwardOptions): ForwardResult {
    return forwardLM(this, ids, opts);
  }

  createCache(batch: number): ModelCache {
    return createModelCache(this.blocks, batch);
  }

  configJson(): Json {
    return gpt2ConfigToJson(this.config);
  }

  distillContract(): DistillContract {
    const c = this.config;
    const get = tensorGetter(this);
    const D = c.nEmbd;
    return {
      studentShape: () => gpt2StudentShape(c),
      sharedWeights: (l) => {
        if (l === null) {
          return [
            ['backbone.embedding.weight', get('transformer.wte.weight')],
            ['backbone.position_embedding.weight', get('transformer.wpe.weight')],
            ['backbone.final_layernorm.weight', get('transformer.ln_f.weight')],
            ['backbone.final_layernorm.bias', get('transformer.ln_f.bias')],
          ];
        }
        const t = `transformer.h.${l}.`;
        const s = `backbone.layers.${l}.`;
        // Conv1D stores (in, out); the student's Linear wants (out, in)
        return [
          [s + 'input_layernorm.weight', get(t + 'ln_1.weight')],
          [s + 'input_layernorm.bias', get(t + 'ln_1.bias')],
          [s + 'post_attention_layernorm.weight', get(t + 'ln_2.weight')],
          [s + 'post_attention_layernorm.bias', get(t + 'ln_2.bias')],
          [s + 'mlp.fc1.weight', transposed(get(t + 'mlp.c_fc.weight'))],
          [s + 'mlp.fc1.bias', get(t + 'mlp.c_fc.bias')],
          [s + 'mlp.fc2.weight', transposed(get(t + 'mlp.c_proj.weight'))],
          [s + 'mlp.fc2.bias', get(t + 'mlp.c_proj.bias')],
        ];
      },
      attentionWeights: (l) => {
        const t = `transformer.h.${l}.attn.`;
        const w = transposed(get(t + 'c_attn.weight')); // (3D, D)
        const b = get(t + 'c_attn.bias');
        return {
          q: rows(w, 0, D),
          k: rows(w, D, 2 * D),
          v: rows(w, 2 * D, 3 * D),
          qBias: rows(b, 0, D),
          kBias: rows(b, D, 2 * D),
          vBias: rows(b, 2 * D, 3 * D),
          o: transposed(get(t + 'c_proj.weight')),
          oBias: get(t + 'c_proj.bias'),
        };
      },
    };
  }
}

/** Conv1D (in, out) -> Linear (out, in), as a new host-built tensor */
function transposed(t: Tensor): Tensor {
  const [r, c] = t.shape;
  const src = t.toArray();
  const out = new Float32Array(r * c);
  for (let i = 0; i < r; i++) for (let j = 0; j < c; j++) out[j * r + i] = src[i * c + j];
  return tensor(out, [c, r], t.dtype);
}

/** rows [start, end) of a matrix, or elements of a vector */
function rows(t: Tensor, start: number, end: number): Tensor {
  const [, c] = t.shape;
  const src = t.toArray();
  return t.ndim === 1
    ? tensor(src.slice(start, end), [end - start], t.dtype)
    : tensor(src.slice(start * c, end * c), [end - start, c], t.dtype);
}

/** The student that mirrors this teacher (from its config alone: no weights needed). */
export function gpt2StudentShape(c: Gpt2Config): StudentShape {
  const hd = c.nEmbd / c.nHead;
  return {
    vocabSize: c.vocabSize,
    dModel: c.nEmbd,
    nLayer: c.nLayer,
    style: 'gpt2',
    normEps: c.layerNormEpsilon,
    intermediateSize: c.nInner,
    activation: c.activation,
    mlpBias: true,
    lmHeadBias: false,
    tieEmbeddings: true,
    maxPositionEmbeddings: c.nPositions,
    bosTokenId: c.bosTokenId,
    eosTokenId: c.eosTokenId,
    nHeads: c.nHead,
    nKvHeads: c.nHead,
    headDim: hd,
    attention: () => ({
      nHeads: c.nHead,
      nKvHeads: c.nHead,
      headDim: hd,
      rotaryDim: 0,
      ropeTheta: 10000,
      qkvBias: true,
      outBias: true,
    }),
  };
}

export const gpt2Family: Family = {
  name: 'gpt2',
  modelTypes: ['gpt2'],
  architectures: ['GPT2LMHeadModel'],
  studentShape: (json, file) => gpt2StudentShape(gpt2ConfigFromJson(json, file)),
  build: (json, file, init) => new Gpt2LMHeadModel(gpt2ConfigFromJson(json, file), init),
};
