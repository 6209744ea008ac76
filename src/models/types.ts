// The contract every model family meets (teachers and students alike), so that distillation,
// evaluation and generation never special-case a family.
//
// A causal LM is: embed(ids) -> blocks[0..L-1] -> head. Each block maps the residual stream
// (B, T, D) to the next one and can report what distillation needs: its mixer's output and its
// mixing matrix (attention probabilities for attention, the SSM's materialized matrix for SSM
// mixers). Decoding state lives in a cache object owned by the caller.

import type { Tensor } from '../tensor/index.js';
import type { Module } from '../nn/module.js';
import type { LayerCache } from '../nn/cache.js';
import type { DistillContract } from './family.js';

/** What a forward pass should hand back besides logits. */
export interface Capture {
  /** per layer, the residual stream entering the block (B, T, D) */
  layerInputs?: boolean;
  /** per layer, the residual stream leaving the block (B, T, D) */
  layerOutputs?: boolean;
  /** per layer, the mixer's output before any residual add (B, T, D) */
  mixerOutputs?: boolean;
  /** per layer, the mixing matrix (B, H, T, T): attention probabilities or the SSM matrix */
  mixerMatrices?: boolean;
}

export interface Captured {
  layerInputs?: Tensor[];
  layerOutputs?: Tensor[];
  mixerOutputs?: Tensor[];
  mixerMatrices?: Tensor[];
}

export type { LayerCache };

/** Decoding state for the whole model; `position` = tokens consumed so far. */
export interface ModelCache {
  position: number;
  layers: LayerCache[];
  dispose(): void;
}

export interface BlockOptions {
  /** compute and return the mixing matrix (needs the full sequence; no cache) */
  returnMatrix?: boolean;
  /** decoding state to read and update in place; x holds only the new tokens */
  cache?: LayerCache;
  /** position of x's first token (with a cache) */
  position?: number;
}

export interface BlockOutput {
  /** the residual stream after the block (B, T, D) */
  out: Tensor;
  /** the mixer's output (B, T, D), before residual adds */
  mixerOut: Tensor;
  /** (B, H, T, T) when asked for */
  matrix: Tensor | null;
}

export interface Block extends Module {
  /** 'attention' for a Transformer layer, 'ssm' for a discrete Mamba-2 layer */
  readonly mixerKind: 'attention' | 'ssm';
  forward(x: Tensor, opts?: BlockOptions): BlockOutput;
  /** a fresh, empty decoding state for `batch` sequences */
  createCache(batch: number): LayerCache;
}

export interface ForwardOptions {
  capture?: Capture;
  /**
   * in place of the model's head: `(h) => h` returns the residual stream after the last block as
   * `logits`, for a loss fused with the head (`headParts`, `linearKLDivergence`)
   */
  head?: (h: Tensor) => Tensor;
  cache?: ModelCache;
  /**
   * logits (B, 1, V) of the last position only: a prefill that feeds a sampler needs no more,
   * and (B, T, V) at a 51200-token vocabulary is the largest tensor of a long prefill
   */
  lastLogitsOnly?: boolean;
}

export interface ForwardResult {
  /** (B, T, V) */
  logits: Tensor;
  captured: Captured;
}

/** Facts about a model that tools above the models layer need. */
export interface ModelInfo {
  /** 'llama' | 'phi' | 'gpt2' | 'phi-mamba' | 'llamba' ... */
  family: string;
  vocabSize: number;
  dModel: number;
  nLayers: number;
  /** the longest context the model supports (positions), or Infinity for pure SSMs */
  maxSeqLen: number;
  bosTokenId: number | null;
  eosTokenId: number | null;
}

/** The head as a linear map: logits = x weight[:vocab]^T (+ bias[:vocab]). */
export interface HeadParts {
  /** the final norm's output (B, T, D) */
  x: Tensor;
  /** (V', D) with V' >= vocabSize (padded vocabularies use the first vocabSize rows) */
  weight: Tensor;
  bias: Tensor | null;
}

export interface CausalLM extends Module {
  readonly info: ModelInfo;
  readonly blocks: Block[];
  /** ids (B, T) i32 -> residual stream (B, T, D); `position` offsets learned positions */
  embed(ids: Tensor, position?: number): Tensor;
  /** final norm + lm_head: (B, T, D) -> (B, T, V) */
  head(h: Tensor): Tensor;
  /** the final norm applied and the lm_head's weights, for losses fused with the head */
  headParts?(h: Tensor): HeadParts;
  forward(ids: Tensor, opts?: ForwardOptions): ForwardResult;
  createCache(batch: number): ModelCache;
  /** the config.json object describing this model (for saving) */
  configJson(): Record<string, unknown>;
  /** what distillation needs from this model as a teacher (absent: it cannot teach) */
  distillContract?(): DistillContract;
}
