// Mistral (HF MistralForCausalLM): Llama's decoder with a sliding window over every layer
// (`sliding_window`, null = full attention) and an optional explicit `head_dim`.

import type { Family } from './family.js';
import { Fields, type Json } from './hf.js';
import {
  decoderFamily,
  readDecoderSizes,
  readFullRope,
  readLayerWindows,
  readWindow,
  type LlamaConfig,
} from './llama.js';

export function mistralConfigFromJson(json: Json, file = 'config.json'): LlamaConfig {
  const f = new Fields(json, file);
  f.only('hidden_act', ['silu'], 'activation is not supported');
  const s = readDecoderSizes(f);
  const rope = readFullRope(f, s, 'mistral');
  const window = readWindow(f);
  return {
    ...s,
    family: 'mistral',
    rmsNormEps: f.eps('rms_norm_eps', 1e-6),
    ropeTheta: rope.theta,
    rope,
    tieWordEmbeddings: f.bool('tie_word_embeddings', false),
    attentionBias: false,
    mlpBias: false,
    slidingWindows: readLayerWindows(f, s.numLayers, window, () => true),
    bosTokenId: f.vocabTokenId('bos_token_id', s.vocabSize),
    eosTokenId: f.vocabTokenId('eos_token_id', s.vocabSize),
    sourceJson: json,
  };
}

export const mistralFamily: Family = decoderFamily(
  'mistral',
  ['mistral'],
  ['MistralForCausalLM'],
  mistralConfigFromJson,
);
