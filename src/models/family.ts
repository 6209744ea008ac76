// A model family: how a config.json becomes a model (registry.ts maps model_type to it), and the
// small contract distillation speaks (distill/transfer.ts never asks which family it has).
//
// The contract, for a teacher with L layers:
// - studentShape(): the student that mirrors the teacher everywhere but the mixers (block style,
//   norms, MLP, head, vocabulary), plus the teacher's attention per layer for hybrids;
// - sharedWeights(layer): the tensors the student copies bit for bit, already named and laid out
//   as the student's parameters (layer null: embeddings, final norm, head);
// - attentionWeights(layer): q, k, v, o of a layer in Linear layout (out, in), separate even when
//   the checkpoint fuses them, for the attention-derived mixer init and for hybrid layers.

import type { Tensor } from '../tensor/index.js';
import type { InitOptions } from '../nn/layers.js';
import type { Json } from './hf.js';
import type { AttentionCore, StudentConfig } from './phi-mamba.js';
import type { CausalLM } from './types.js';

export interface Family {
  /** the family's name (ModelInfo.family) */
  name: string;
  /** config.json model_type values this family reads */
  modelTypes: readonly string[];
  /** accepted `architectures` (head classes); the first is the one written on save */
  architectures: readonly string[];
  /**
   * the model a config.json describes; `file` names config.json in errors. Weights are random,
   * or zeros with `init.deferInit` (a checkpoint fills them right after).
   */
  build(config: Json, file: string, init?: InitOptions): CausalLM;
  /** the student that mirrors the model a config.json describes (no weights read or built) */
  studentShape(config: Json, file: string): StudentShape;
}

/** A teacher layer's attention projections, Linear layout (out, in); rows = heads * head size. */
export interface AttentionWeights {
  q: Tensor;
  k: Tensor;
  v: Tensor;
  qBias: Tensor | null;
  kBias: Tensor | null;
  vBias: Tensor | null;
  o: Tensor;
  oBias: Tensor | null;
  /** per-head RMSNorm weights on q and k (Qwen3), (head size) */
  qNorm?: Tensor | null;
  kNorm?: Tensor | null;
}

/** The student that mirrors a teacher: its config but the mixers, and the teacher's attention. */
export type StudentShape = Omit<StudentConfig, 'mixer' | 'attentionLayers' | 'padVocabSizeMultiple'> & {
  /** the teacher's query heads, key/value heads and head size */
  nHeads: number;
  nKvHeads: number;
  headDim: number;
  /** the teacher's attention in layer `layer`, as a hybrid keeps it */
  attention(layer: number): AttentionCore;
};

export interface DistillContract {
  studentShape(): StudentShape;
  /** student parameter name -> teacher tensor in the student's layout (null: outside the layers) */
  sharedWeights(layer: number | null): [string, Tensor][];
  attentionWeights(layer: number): AttentionWeights;
}

/** A teacher tensor by name, or an error naming it. */
export function tensorGetter(model: CausalLM): (name: string) => Tensor {
  const p = model.stateDict();
  return (n: string) => {
    const t = p.get(n);
    if (!t) throw new Error(`${model.info.family}: no tensor ${n}`);
    return t;
  };
}
