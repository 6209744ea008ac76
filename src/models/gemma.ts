// Gemma (HF GemmaForCausalLM): Llama's decoder with RMSNorms that scale by (1 + w), the
// embeddings times sqrt(hidden_size) (a float32 constant, as transformers builds it in the
// model's dtype), a GeGLU MLP (`hidden_activation`, gelu_pytorch_tanh), `head_dim` (default 256)
// and the head tied to the embeddings.

import { ACTIVATIONS, type Activation } from '../nn/mlp.js';
import type { Family } from './family.js';
import { Fields, type Json } from './hf.js';
import { decoderFamily, readDecoderSizes, readFullRope, type LlamaConfig } from './llama.js';

/** Gemma's MLP activation: `hidden_activation` (transformers ignores `hidden_act` for Gemma) */
export function gemmaActivation(f: Fields): Activation {
  f.only('hidden_activation', [...ACTIVATIONS], 'activation is not supported');
  return f.str('hidden_activation', 'gelu_pytorch_tanh') as Activation;
}

/** What Gemma and Gemma 2 read first: causal attention only, the sizes (head_dim 256) and the rope. */
export function readGemmaDecoder(f: Fields, family: string) {
  f.only('use_bidirectional_attention', [false]);
  const s = readDecoderSizes(f, { headDim: 256 });
  return { s, rope: readFullRope(f, s, family) };
}

export function gemmaConfigFromJson(json: Json, file = 'config.json'): LlamaConfig {
  const f = new Fields(json, file);
  const { s, rope } = readGemmaDecoder(f, 'gemma');
  const bias = f.bool('attention_bias', false);
  return {
    ...s,
    family: 'gemma',
    rmsNormEps: f.eps('rms_norm_eps', 1e-6),
    ropeTheta: rope.theta,
    rope,
    tieWordEmbeddings: f.bool('tie_word_embeddings', true),
    attentionBias: bias,
    mlpBias: false,
    hiddenAct: gemmaActivation(f),
    normOffset: 1,
    embedScale: true,
    bosTokenId: f.vocabTokenId('bos_token_id', s.vocabSize),
    eosTokenId: f.vocabTokenId('eos_token_id', s.vocabSize),
    sourceJson: json,
  };
}

export const gemmaFamily: Family = decoderFamily(
  'gemma',
  ['gemma'],
  ['GemmaForCausalLM'],
  gemmaConfigFromJson,
);
