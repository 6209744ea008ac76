// Phi-3 (HF Phi3ForCausalLM): Llama's decoder with fused projections (qkv_proj: rows q, k, v;
// gate_up_proj: rows gate, up), an optional partial rotary embedding, longrope ("su") scaling
// with short and long factors, and `sliding_window` over every layer when set.

import type { Family } from './family.js';
import { Fields, type Json } from './hf.js';
import { decoderFamily, readDecoderSizes, readLayerWindows, readWindow, type LlamaConfig } from './llama.js';

export function phi3ConfigFromJson(json: Json, file = 'config.json'): LlamaConfig {
  const f = new Fields(json, file);
  f.only('hidden_act', ['silu'], 'activation is not supported');
  const s = readDecoderSizes(f);
  const rope = f.ropeConfig(s.headDim, s.maxPositionEmbeddings, 10000);
  const window = readWindow(f);
  return {
    ...s,
    family: 'phi3',
    rmsNormEps: f.eps('rms_norm_eps', 1e-5),
    ropeTheta: rope.theta,
    rope,
    tieWordEmbeddings: f.bool('tie_word_embeddings', false),
    attentionBias: false,
    mlpBias: false,
    fused: true,
    slidingWindows: readLayerWindows(f, s.numLayers, window, () => true),
    bosTokenId: f.vocabTokenId('bos_token_id', s.vocabSize),
    eosTokenId: f.vocabTokenId('eos_token_id', s.vocabSize),
    sourceJson: json,
  };
}

export const phi3Family: Family = decoderFamily('phi3', ['phi3'], ['Phi3ForCausalLM'], phi3ConfigFromJson);
