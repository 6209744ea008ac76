// Gemma 2 (HF Gemma2ForCausalLM): Gemma with soft-capped attention scores
// (`attn_logit_softcapping`) and final logits (`final_logit_softcapping`), scores scaled by
// query_pre_attn_scalar^-1/2, a norm after attention and around the MLP (pre/post_feedforward_
// layernorm), and sliding-window attention on every other layer (0, 2, 4, ... or `layer_types`).

import type { Family } from './family.js';
import { gemmaActivation, readGemmaDecoder } from './gemma.js';
import { Fields, type Json } from './hf.js';
import { decoderFamily, readLayerWindows, readWindow, type LlamaConfig } from './llama.js';

export function gemma2ConfigFromJson(json: Json, file = 'config.json'): LlamaConfig {
  const f = new Fields(json, file);
  const { s, rope } = readGemmaDecoder(f, 'gemma2');
  const softcap = (key: string, fallback: number): number | null => {
    if (json[key] === null) return null;
    const v = f.num(key, fallback);
    if (!(v > 0)) f.fail(key, `must be positive or null, got ${v}`);
    return v;
  };
  const scalar = f.num('query_pre_attn_scalar', 256);
  if (!(scalar > 0)) f.fail('query_pre_attn_scalar', `must be positive, got ${scalar}`);
  const window = json.sliding_window === undefined ? 4096 : readWindow(f);
  const bias = f.bool('attention_bias', false);
  return {
    ...s,
    family: 'gemma2',
    rmsNormEps: f.eps('rms_norm_eps', 1e-6),
    ropeTheta: rope.theta,
    rope,
    tieWordEmbeddings: f.bool('tie_word_embeddings', true),
    attentionBias: bias,
    mlpBias: false,
    hiddenAct: gemmaActivation(f),
    normOffset: 1,
    embedScale: true,
    sandwichNorms: true,
    attnScale: 1 / Math.sqrt(scalar),
    attnSoftcap: softcap('attn_logit_softcapping', 50),
    finalSoftcap: softcap('final_logit_softcapping', 30),
    slidingWindows: readLayerWindows(f, s.numLayers, window, (i) => i % 2 === 0),
    bosTokenId: f.vocabTokenId('bos_token_id', s.vocabSize),
    eosTokenId: f.vocabTokenId('eos_token_id', s.vocabSize),
    sourceJson: json,
  };
}

export const gemma2Family: Family = decoderFamily(
  'gemma2',
  ['gemma2'],
  ['Gemma2ForCausalLM'],
  gemma2ConfigFromJson,
);
