// Qwen3 (HF Qwen3ForCausalLM): Llama's decoder with an RMSNorm over each head of q and k
// (q_norm, k_norm) before the rotary embedding, `head_dim` (default 128, not hidden / heads),
// `attention_bias` on q, k, v and o, and Qwen2's sliding-window settings.

import type { Family } from './family.js';
import { Fields, type Json } from './hf.js';
import { decoderStudentShape, LlamaForCausalLM, readDecoderSizes, type LlamaConfig } from './llama.js';
import { qwenWindows } from './qwen2.js';

export function qwen3ConfigFromJson(json: Json, file = 'config.json'): LlamaConfig {
  const f = new Fields(json, file);
  f.only('hidden_act', ['silu'], 'activation is not supported');
  const s = readDecoderSizes(f, { headDim: 128 });
  const rope = f.ropeConfig(s.headDim, s.maxPositionEmbeddings, 10000);
  if (rope.rotaryDim !== s.headDim) f.fail('partial_rotary_factor', 'must be 1 for qwen3');
  return {
    ...s,
    family: 'qwen3',
    rmsNormEps: f.eps('rms_norm_eps', 1e-6),
    ropeTheta: rope.theta,
    rope,
    tieWordEmbeddings: f.bool('tie_word_embeddings', false),
    attentionBias: f.bool('attention_bias', false),
    mlpBias: false,
    qkNorm: true,
    slidingWindows: qwenWindows(f, s.numLayers),
    bosTokenId: f.vocabTokenId('bos_token_id', s.vocabSize),
    eosTokenId: f.vocabTokenId('eos_token_id', s.vocabSize),
    sourceJson: json,
  };
}

export const qwen3Family: Family = {
  name: 'qwen3',
  modelTypes: ['qwen3'],
  architectures: ['Qwen3ForCausalLM'],
  studentShape: (json, file) => decoderStudentShape(qwen3ConfigFromJson(json, file)),
  build: (json, file, init) => new LlamaForCausalLM(qwen3ConfigFromJson(json, file), init),
};
