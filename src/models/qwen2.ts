// Qwen2 / Qwen2.5 (HF Qwen2ForCausalLM): Llama's decoder with biases on q, k and v (never on o),
// and sliding windows on the layers from `max_window_layers` on when `use_sliding_window` is set
// (or as `layer_types` lists them).

import type { Family } from './family.js';
import { Fields, type Json } from './hf.js';
import {
  decoderStudentShape,
  LlamaForCausalLM,
  readDecoderSizes,
  readLayerWindows,
  readWindow,
  type LlamaConfig,
} from './llama.js';

/** the sliding windows of Qwen2 and Qwen3 configs */
export function qwenWindows(f: Fields, numLayers: number): (number | null)[] {
  const use = f.bool('use_sliding_window', false);
  const window = use ? readWindow(f) : null;
  const maxWindowLayers = f.int('max_window_layers', 28, 0);
  return readLayerWindows(f, numLayers, window, (i) => i >= maxWindowLayers);
}

export function qwen2ConfigFromJson(json: Json, file = 'config.json'): LlamaConfig {
  const f = new Fields(json, file);
  f.only('hidden_act', ['silu'], 'activation is not supported');
  const s = readDecoderSizes(f);
  const rope = f.ropeConfig(s.headDim, s.maxPositionEmbeddings, 10000);
  if (rope.rotaryDim !== s.headDim) f.fail('partial_rotary_factor', 'must be 1 for qwen2');
  return {
    ...s,
    family: 'qwen2',
    rmsNormEps: f.eps('rms_norm_eps', 1e-6),
    ropeTheta: rope.theta,
    rope,
    tieWordEmbeddings: f.bool('tie_word_embeddings', false),
    attentionBias: true,
    outBias: false,
    mlpBias: false,
    slidingWindows: qwenWindows(f, s.numLayers),
    bosTokenId: f.vocabTokenId('bos_token_id', s.vocabSize),
    eosTokenId: f.vocabTokenId('eos_token_id', s.vocabSize),
    sourceJson: json,
  };
}

export const qwen2Family: Family = {
  name: 'qwen2',
  modelTypes: ['qwen2'],
  architectures: ['Qwen2ForCausalLM'],
  studentShape: (json, file) => decoderStudentShape(qwen2ConfigFromJson(json, file)),
  build: (json, file, init) => new LlamaForCausalLM(qwen2ConfigFromJson(json, file), init),
};
