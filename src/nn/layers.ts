// Basic layers with PyTorch's parameter layouts and names (weight (out, in) for Linear).

import {
  addRmsNorm,
  affine,
  embedding,
  full,
  layerNorm,
  linear,
  rmsNorm,
  tensor,
  type Tensor,
} from '../tensor/index.js';
import type { DType } from '../backends/backend.js';
import { Random } from '../util/random.js';
import { Module } from './module.js';

export interface InitOptions {
  rng?: Random;
  dtype?: DType;
  /** skip the random draws (parameters start at zero; the caller fills them, e.g. from a checkpoint) */
  deferInit?: boolean;
  /** the dtype of Linear weights when it differs (a frozen model held in bf16 for its products) */
  linearDtype?: DType;
}

/** normal(0, std) values as a tensor */
export function normalTensor(shape: number[], std: number, opts: InitOptions = {}): Tensor {
  if (opts.deferInit) return full(shape, 0, opts.dtype ?? 'f32');
  const rng = opts.rng ?? new Random(0);
  const n = shape.reduce((a, b) => a * b, 1);
  const data = new Float64Array(n);
  for (let i = 0; i < n; i++) data[i] = rng.normal(0, std);
  return tensor(data, shape, opts.dtype ?? 'f32');
}

export class Linear extends Module {
  readonly weight: Tensor;
  readonly bias: Tensor | null;

  constructor(
    readonly inFeatures: number,
    readonly outFeatures: number,
    opts: InitOptions & { bias?: boolean; std?: number } = {},
  ) {
    super();
    const std = opts.std ?? 1 / Math.sqrt(inFeatures);
    this.weight = this.param(
      'weight',
      normalTensor([outFeatures, inFeatures], std, { ...opts, dtype: opts.linearDtype ?? opts.dtype }),
    );
    this.bias = opts.bias ? this.param('bias', full([outFeatures], 0, opts.dtype ?? 'f32')) : null;
  }

  /** x (..., in) -> (..., out) */
  forward(x: Tensor): Tensor {
    return linear(x, this.weight, this.bias);
  }
}

export class Embedding extends Module {
  readonly weight: Tensor;

  constructor(
    readonly numEmbeddings: number,
    readonly dim: number,
    opts: InitOptions & { std?: number } = {},
  ) {
    super();
    this.weight = this.param('weight', normalTensor([numEmbeddings, dim], opts.std ?? 0.02, opts));
  }

  /** ids (...) i32 -> (..., dim) */
  forward(ids: Tensor): Tensor {
    return embedding(this.weight, ids);
  }
}

export class LayerNorm extends Module {
  readonly weight: Tensor;
  readonly bias: Tensor | null;

  constructor(
    readonly dim: number,
    readonly eps = 1e-5,
    opts: InitOptions & { bias?: boolean } = {},
  ) {
    super();
    this.weight = this.param('weight', full([dim], 1, opts.dtype ?? 'f32'));
    this.bias = (opts.bias ?? true) ? this.param('bias', full([dim], 0, opts.dtype ?? 'f32')) : null;
  }

  forward(x: Tensor): Tensor {
    return layerNorm(x, this.weight, this.bias, this.eps);
  }
}

export class RMSNorm extends Module {
  readonly weight: Tensor;
  /** the scale is (offset + weight): 0 for Llama, 1 for Gemma (whose weights start at zero) */
  readonly offset: number;

  constructor(
    readonly dim: number,
    readonly eps = 1e-6,
    opts: InitOptions & { offset?: number } = {},
  ) {
    super();
    this.offset = opts.offset ?? 0;
    this.weight = this.param('weight', full([dim], this.offset ? 0 : 1, opts.dtype ?? 'f32'));
  }

  forward(x: Tensor): Tensor {
    return rmsNorm(x, this.scale(), this.eps);
  }

  /** A pre-norm block's residual add and this norm of its result: { sum: x + r, normed } in one pass */
  forwardAdd(x: Tensor, r: Tensor): { sum: Tensor; normed: Tensor } {
    return addRmsNorm(x, r, this.scale(), this.eps);
  }

  private scale(): Tensor {
    return this.offset ? affine(this.weight, 1, this.offset) : this.weight;
  }
}
