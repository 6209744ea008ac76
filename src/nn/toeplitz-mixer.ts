// A Toeplitz (long convolution) sequence mixer, the paper's Toeplitz ablation (Bick et al. 2024,
// Section 4): per head a causal kernel k_h of `kernelLength` taps, M_h[t, s] = k_h[t - s].
//
//   in_proj: d_model -> [x (d_inner), z (d_inner)]
//   y_h = M_h x_h  (H heads of P = d_inner / H; the same matrix for every sequence)
//   out = out_proj(y * silu(z + z_bias))        (the gate of the discrete Mamba-2 mixer)
//
// The matrix form is the only one here (O(T^2) per head, fine for the small ablations; an FFT
// convolution would make it O(T log T)); decoding with a cache is not supported.

import {
  causalMask,
  concat,
  embedding,
  expand,
  matmul,
  permute,
  reshape,
  siluGate,
  split,
  tensor,
  zeros,
  type Tensor,
} from '../tensor/index.js';
import type { LayerCache } from './cache.js';
import { Linear, type InitOptions } from './layers.js';
import { Module } from './module.js';

export interface ToeplitzMixerConfig {
  dModel: number;
  nHeads: number;
  /** taps of each head's kernel; positions further apart do not mix */
  kernelLength: number;
  bias: boolean;
  /** initial kernel k[d] = (1 - decay) decay^d (rows of M sum to about 1, as attention's do) */
  decayInit?: number;
}

export class ToeplitzMixer extends Module {
  readonly in_proj: Linear;
  readonly kernel: Tensor;
  readonly z_bias: Tensor;
  readonly out_proj: Linear;
  readonly headDim: number;

  constructor(
    readonly cfg: ToeplitzMixerConfig,
    init: InitOptions = {},
  ) {
    super();
    const { dModel: D, nHeads: H, kernelLength: L } = cfg;
    if (!(Number.isInteger(L) && L > 0))
      throw new Error(`toeplitz mixer: kernel_length must be a positive integer, got ${L}`);
    if (D % H !== 0) throw new Error(`toeplitz mixer: n_heads (${H}) must divide d_model (${D})`);
    this.headDim = D / H;
    this.in_proj = this.child('in_proj', new Linear(D, 2 * D, { ...init, bias: cfg.bias }));
    const decay = cfg.decayInit ?? 0.9;
    // kernel (L, H): tap d of every head
    const k = new Float32Array(L * H);
    for (let d = 0; d < L; d++) k.fill((1 - decay) * decay ** d, d * H, (d + 1) * H);
    this.kernel = this.param('kernel', tensor(k, [L, H]));
    this.z_bias = this.param('z_bias', zeros([D]));
    this.out_proj = this.child('out_proj', new Linear(D, D, { ...init, bias: cfg.bias }));
  }

  createCache(): LayerCache {
    throw new Error('toeplitz mixer: decoding with a cache is not implemented (run the full sequence)');
  }

  /** The (1, H, T, T) mixing matrix for T positions (the same for every input). */
  matrix(t: number): Tensor {
    const L = this.cfg.kernelLength;
    const H = this.cfg.nHeads;
    // tap index t - s, clamped to a zero row (index L) beyond the kernel and above the diagonal
    const ids = new Int32Array(t * t);
    for (let i = 0; i < t; i++) for (let j = 0; j < t; j++) ids[i * t + j] = j <= i && i - j < L ? i - j : L;
    const table = concat([this.kernel, zeros([1, H], this.kernel.dtype, this.kernel.backend)], 0);
    const m = embedding(table, tensor(ids, [t, t], 'i32')); // (T, T, H)
    return causalMask(reshape(permute(m, [2, 0, 1]), [1, H, t, t]), 0);
  }

  /** u (B, T, d_model) -> the (B, H, T, T) mixing matrix */
  materialize(u: Tensor): Tensor {
    const [b, t] = u.shape;
    return expand(this.matrix(t), [b, this.cfg.nHeads, t, t]);
  }

  forward(
    u: Tensor,
    opts: { returnMatrix?: boolean; cache?: LayerCache } = {},
  ): { out: Tensor; matrix: Tensor | null } {
    if (opts.cache) this.createCache();
    const [b, t] = u.shape;
    const { nHeads: H, dModel: D } = this.cfg;
    const [x, z] = split(this.in_proj.forward(u), [D, D], -1);
    const m = this.materialize(u); // (B, H, T, T)
    const xh = permute(reshape(x, [b, t, H, this.headDim]), [0, 2, 1, 3]); // (B, H, T, P)
    const y = reshape(permute(matmul(m, xh), [0, 2, 1, 3]), [b, t, D]);
    const out = this.out_proj.forward(siluGate(y, z, this.z_bias));
    return { out, matrix: opts.returnMatrix ? m : null };
  }
}
