// A causal linear-attention (causal low-rank) sequence mixer, the paper's linear-attention
// ablation (Bick et al. 2024, Sections 4-5): per head M_h = tril(C_h B_h^T), C and B of T x N
// projected from the input: the discrete Mamba-2 mixer without the decay and the conv.
//
//   in_proj: d_model -> [x (d_inner), B (H*N), C (H*N), z (d_inner)]
//   y_h = tril(C_h B_h^T) x_h,   out = out_proj(y * silu(z + z_bias))
//
// Computed through the materialized matrix (O(T^2); the recurrence h_t = h_{t-1} + x_t B_t^T
// would make it linear); decoding with a cache is not supported.

import {
  causalMask,
  matmul,
  permute,
  reshape,
  siluGate,
  split,
  zeros,
  type Tensor,
} from '../tensor/index.js';
import type { LayerCache } from './cache.js';
import { Linear, type InitOptions } from './layers.js';
import { Module } from './module.js';

export interface LinearAttentionMixerConfig {
  dModel: number;
  nHeads: number;
  /** N, the rank of each head's matrix */
  dState: number;
  bias: boolean;
}

export class LinearAttentionMixer extends Module {
  readonly in_proj: Linear;
  readonly z_bias: Tensor;
  readonly out_proj: Linear;
  readonly headDim: number;

  constructor(
    readonly cfg: LinearAttentionMixerConfig,
    init: InitOptions = {},
  ) {
    super();
    const { dModel: D, nHeads: H, dState: N } = cfg;
    if (D % H !== 0) throw new Error(`linear attention mixer: n_heads (${H}) must divide d_model (${D})`);
    this.headDim = D / H;
    this.in_proj = this.child('in_proj', new Linear(D, 2 * D + 2 * H * N, { ...init, bias: cfg.bias }));
    this.z_bias = this.param('z_bias', zeros([D]));
    this.out_proj = this.child('out_proj', new Linear(D, D, { ...init, bias: cfg.bias }));
  }

  createCache(): LayerCache {
    throw new Error(
      'linear attention mixer: decoding with a cache is not implemented (run the full sequence)',
    );
  }

  private project(u: Tensor): { x: Tensor; m: Tensor; z: Tensor } {
    const [b, t] = u.shape;
    const { nHeads: H, dState: N, dModel: D } = this.cfg;
    const [x, bm, cm, z] = split(this.in_proj.forward(u), [D, H * N, H * N, D], -1);
    const heads = (v: Tensor) => permute(reshape(v, [b, t, H, N]), [0, 2, 1, 3]); // (B, H, T, N)
    const m = causalMask(matmul(heads(cm), heads(bm), { transB: true }), 0); // (B, H, T, T)
    return { x, m, z };
  }

  /** u (B, T, d_model) -> the (B, H, T, T) mixing matrix tril(C B^T) */
  materialize(u: Tensor): Tensor {
    return this.project(u).m;
  }

  forward(
    u: Tensor,
    opts: { returnMatrix?: boolean; cache?: LayerCache } = {},
  ): { out: Tensor; matrix: Tensor | null } {
    if (opts.cache) this.createCache();
    const [b, t] = u.shape;
    const { nHeads: H, dModel: D } = this.cfg;
    const { x, m, z } = this.project(u);
    const xh = permute(reshape(x, [b, t, H, this.headDim]), [0, 2, 1, 3]);
    const y = reshape(permute(matmul(m, xh), [0, 2, 1, 3]), [b, t, D]);
    return { out: this.out_proj.forward(siluGate(y, z, this.z_bias)), matrix: opts.returnMatrix ? m : null };
  }
}
