// Gemma (HF GemmaForCausalLM): Llama's decoder with RMSNorms that scale by (1 + w), the
// embeddings times sqrt(hidden_size) (a float32 constant, as transformers builds it in the
// model's dtype), a GeGLU MLP (`hidden_activation`, gelu_pytorch_tanh), `head_dim` (default 256)
// and the head tied to the embeddings.

import { ACTIVATIONS, type Activation } from '../nn/mlp.js';
import type { Family } from './family.js';
import { Fields, type Json } from './hf.js';
import { decoderStudentShape, LlamaForCausalLM, readDecoderSizes, type LlamaConfig } from './llama.js';

/** Gemma's MLP activation: `hidden_activation` (transformers ignores `hidden_act` for Gemma) */
export function gemmaActivation(f: Fields): Activation {
  f.only('hidden_activation', [...ACTIVATIONS], 'activation is not supported');
  return f.str('hidden_activation', 'gelu_pytorch_tanh') as Activation;
}

export function gemmaConfigFromJson(json: Json, file = 'config.json'): LlamaConfig {
  const f = new Fields(json, file);
  f.only('use_bidirectional_attention', [false]);
  const s = readDecoderSizes(f, { headDim: 256 });
  const rope = f.ropeConfig(s.headDim, s.maxPositionEmbeddings, 10000);
  if (rope.rotaryDim !== s.headDim) f.fail('partial_rotary_factor', 'must be 1 for gemma');
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

export const gemmaFamily: Family = {
  name: 'gemma',
  modelTypes: ['gemma'],
  architectures: ['GemmaForCausalLM'],
  studentShape: (json, file) => decoderStudentShape(gemmaConfigFromJson(json, file)),
  build: (json, file, init) => new LlamaForCausalLM(gemmaConfigFromJson(json, file), init),
};
