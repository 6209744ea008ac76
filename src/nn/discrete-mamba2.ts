// The discrete Mamba-2 mixer of Phi-Mamba, with the checkpoint's parameter names.
//
//   in_proj: d_model -> [x (d_inner), B (G*N), C (G*N), z (d_inner), a (H)]
//   [x, B, C] <- act(causal depthwise conv1d, kernel d_conv, with bias)
//   alpha_t = sigmoid(-a_t) per head and token, i.e. log alpha = -softplus(a)
//   h_t = alpha_t h_{t-1} + x_t B_t^T,   y_t = h_t C_t + D x_t      (H heads of P = d_inner / H)
//   out = out_proj(y * silu(z + z_bias))
//
// One set of weights, three forms: the materialized (B, H, T, T) mixing matrix (stage 1), the
// chunked SSD scan (training and prefill) and the one-token recurrent step (decoding).

import {
  add,
  causalConv1d,
  concat,
  cumsum,
  empty,
  expand,
  eye,
  full,
  keep,
  logDecay,
  materializeMixer,
  matmul,
  mul,
  noGrad,
  permute,
  reshape,
  isGradEnabled,
  silu,
  siluGate,
  siluGateD,
  getAutocast,
  slice,
  ssmStep,
  ssmStepGated,
  split,
  ssdScan,
  sum,
  exp,
  transpose,
  writeSlice,
  zeros,
  type Tensor,
} from '../tensor/index.js';
import type { LayerCache } from './cache.js';
import { Linear, type InitOptions } from './layers.js';
import { Module } from './module.js';

export interface DiscreteMamba2Config {
  dModel: number;
  dState: number;
  nQkHeads: number;
  nVHeads: number;
  dConv: number;
  convBias: boolean;
  expand: number;
  chunkSize: number;
  activation: 'identity' | 'silu';
  /** bias on in_proj and out_proj */
  bias: boolean;
}

/** d_inner = expand x d_model (rounded: expand may be a fraction such as 4/3) */
export function innerDim(c: Pick<DiscreteMamba2Config, 'expand' | 'dModel'>): number {
  return Math.round(c.expand * c.dModel);
}

/** Check the dimensions; `where` names the config section in errors. */
export function checkMixerConfig(c: DiscreteMamba2Config, where: string): void {
  const dInner = innerDim(c);
  const fields: [string, number][] = [
    ['d_state', c.dState],
    ['n_qk_heads', c.nQkHeads],
    ['n_v_heads', c.nVHeads],
    ['d_conv', c.dConv],
    ['chunk_size', c.chunkSize],
  ];
  for (const [k, v] of fields)
    if (!(Number.isInteger(v) && v > 0))
      throw new Error(`${where}.${k} must be a positive integer, got ${v}`);
  // a teacher whose heads * head size is not a multiple of d_model (Gemma, Qwen3) gives a
  // fractional expand; d_inner itself must be a whole number
  if (!(c.expand > 0 && dInner > 0 && Math.abs(c.expand * c.dModel - dInner) < 1e-6))
    throw new Error(`${where}.expand (${c.expand}) times d_model (${c.dModel}) must be a positive integer`);
  if (c.expand > 64)
    throw new Error(`${where}.expand (${c.expand}) is larger than mohawk accepts (at most 64)`);
  if (dInner % c.nVHeads !== 0)
    throw new Error(`${where}.n_v_heads (${c.nVHeads}) must divide d_inner (${dInner} = expand x d_model)`);
  if (c.nVHeads % c.nQkHeads !== 0)
    throw new Error(`${where}.n_qk_heads (${c.nQkHeads}) must divide n_v_heads (${c.nVHeads})`);
  if (c.activation !== 'identity' && c.activation !== 'silu')
    throw new Error(`${where}.activation must be "identity" or "silu", got ${JSON.stringify(c.activation)}`);
}

/** Decoding state of one mixer: the last d_conv - 1 conv inputs and the SSM state. */
export class SsmCache implements LayerCache {
  readonly kind = 'ssm' as const;
  /** (B, d_conv - 1, conv channels) */
  conv: Tensor | null = null;
  /** (B, H, P, N) */
  ssm: Tensor | null = null;
  length = 0;

  set(conv: Tensor, ssm: Tensor): void {
    keep(conv);
    keep(ssm);
    if (this.conv !== conv) this.conv?.dispose();
    if (this.ssm !== ssm) this.ssm?.dispose();
    this.conv = conv;
    this.ssm = ssm;
  }

  dispose(): void {
    this.conv?.dispose();
    this.ssm?.dispose();
    this.conv = null;
    this.ssm = null;
    this.length = 0;
  }
}

export class DiscreteMamba2 extends Module {
  readonly in_proj: Linear;
  readonly conv1d: Module;
  readonly convWeight: Tensor;
  readonly convBias: Tensor | null;
  readonly z_bias: Tensor;
  readonly D: Tensor;
  readonly out_proj: Linear;
  readonly dInner: number;
  readonly headDim: number;
  readonly convDim: number;

  constructor(
    readonly cfg: DiscreteMamba2Config,
    init: InitOptions = {},
  ) {
    super();
    checkMixerConfig(cfg, 'mixer');
    const c = cfg;
    this.dInner = innerDim(c);
    this.headDim = this.dInner / c.nVHeads;
    this.convDim = this.dInner + 2 * c.nQkHeads * c.dState;
    const projOut = 2 * this.dInner + 2 * c.nQkHeads * c.dState + c.nVHeads;
    this.in_proj = this.child('in_proj', new Linear(c.dModel, projOut, { ...init, bias: c.bias }));
    // checkpoint layout: conv1d.weight (channels, 1, d_conv), conv1d.bias (channels)
    this.conv1d = this.child('conv1d', new Module());
    const convInit = new Float64Array(this.convDim * c.dConv);
    const rng = init.rng;
    const bound = 1 / Math.sqrt(c.dConv);
    for (let i = 0; i < convInit.length; i++)
      convInit[i] = rng ? (2 * rng.uniform() - 1) * bound : i % c.dConv === c.dConv - 1 ? 1 : 0;
    this.convWeight = this.conv1d.param('weight', tensorFrom(convInit, [this.convDim, 1, c.dConv], init));
    this.convBias = c.convBias
      ? this.conv1d.param('bias', full([this.convDim], 0, init.dtype ?? 'f32'))
      : null;
    this.z_bias = this.param('z_bias', full([this.dInner], 0, init.dtype ?? 'f32'));
    this.D = this.param('D', full([c.nVHeads], 1, init.dtype ?? 'f32'));
    this.out_proj = this.child('out_proj', new Linear(this.dInner, c.dModel, { ...init, bias: c.bias }));
  }

  createCache(): SsmCache {
    return new SsmCache();
  }

  /** u (B, T, d_model) -> the conv output x, B, C and the gate inputs z, a (all (B, T, ...)) */
  private project(u: Tensor): { xBC: Tensor; z: Tensor; a: Tensor } {
    const [xBC, z, a] = split(this.in_proj.forward(u), [this.convDim, this.dInner, this.cfg.nVHeads], -1);
    return { xBC, z, a };
  }

  /**
   * in_proj, then the depthwise conv on x, B and C separately (the same as convolving [x, B, C]
   * and splitting, since each channel convolves alone): the conv outputs need no further copy.
   * Each conv reads its columns of in_proj's output in place where the backend can (and writes
   * its gradient there); so do the output gate for z (`zCols` of `proj`) and the log decay for a
   * (`aCols`): no split copies (MOHAWK_MIXER_INPLACE=0: all five).
   */
  private projectConvolved(u: Tensor): {
    x: Tensor;
    bm: Tensor;
    cm: Tensor;
    proj: Tensor;
    zCols: { start: number; end: number };
    aCols: { start: number; end: number };
  } {
    const [b, t] = u.shape;
    const { nQkHeads: G, nVHeads: H, dState: N, dConv: K } = this.cfg;
    const widths = [this.dInner, G * N, G * N];
    const proj = this.in_proj.forward(u);
    const zCols = { start: this.convDim, end: this.convDim + this.dInner };
    const aCols = { start: zCols.end, end: zCols.end + H };
    const w = split(reshape(this.convWeight, [this.convDim, K]), widths, 0);
    const bias = this.convBias ? split(this.convBias, widths, 0) : [null, null, null];
    const starts = [0, this.dInner, this.dInner + G * N];
    const conv = (i: number) =>
      this.activate(causalConv1d(proj, w[i], bias[i], { start: starts[i], end: starts[i] + widths[i] }));
    return {
      x: reshape(conv(0), [b, t, H, this.headDim]),
      bm: reshape(conv(1), [b, t, G, N]),
      cm: reshape(conv(2), [b, t, G, N]),
      proj,
      zCols,
      aCols,
    };
  }

  private activate(x: Tensor): Tensor {
    return this.cfg.activation === 'silu' ? silu(x) : x;
  }

  /** conv output (B, T, convDim) -> x (B, T, H, P), B and C (B, T, G, N) */
  private heads(xBC: Tensor): { x: Tensor; bm: Tensor; cm: Tensor } {
    const [b, t] = xBC.shape;
    const { nQkHeads: G, nVHeads: H, dState: N } = this.cfg;
    const [x, bm, cm] = split(xBC, [this.dInner, G * N, G * N], -1);
    return {
      x: reshape(x, [b, t, H, this.headDim]),
      bm: reshape(bm, [b, t, G, N]),
      cm: reshape(cm, [b, t, G, N]),
    };
  }

  private conv(xBC: Tensor): Tensor {
    const w = reshape(this.convWeight, [this.convDim, this.cfg.dConv]);
    return this.activate(causalConv1d(xBC, w, this.convBias));
  }

  /** y (B, T, H, P) -> out_proj(y * silu(z + z_bias)) */
  private output(y: Tensor, z: Tensor): Tensor {
    const [b, t] = z.shape;
    return this.out_proj.forward(siluGate(reshape(y, [b, t, this.dInner]), z, this.z_bias));
  }

  /** D per head as (1, 1, H, 1), for D * x */
  private dPerHead(): Tensor {
    return reshape(this.D, [1, 1, this.cfg.nVHeads, 1]);
  }

  /**
   * u (B, T, d_model) -> out (B, T, d_model), via the chunked scan; with `returnMatrix` also the
   * mixing matrix (B, H, T, T), D on the diagonal. With a cache: prefill (empty cache) or steps.
   */
  forward(
    u: Tensor,
    opts: { returnMatrix?: boolean; cache?: LayerCache } = {},
  ): { out: Tensor; matrix: Tensor | null } {
    if (opts.cache) {
      if (!(opts.cache instanceof SsmCache)) throw new Error('mixer: the layer cache is not an SSM cache');
      return {
        out:
          opts.cache.length === 0
            ? this.prefill(u, opts.cache)
            : u.shape[1] === 1
              ? this.steps(u, opts.cache)
              : this.continueChunked(u, opts.cache),
        matrix: null,
      };
    }
    const { x, bm, cm, proj, zCols, aCols } = this.projectConvolved(u);
    const logA = logDecay(proj, aCols);
    const { y } = ssdScan(x, logA, bm, cm, { chunkSize: this.cfg.chunkSize });
    // (y + D x) * silu(z + z_bias) in one kernel each way where the backend has it, stored in 16
    // bits under autocast (out_proj reads it so), z read from in_proj's output
    const [b, t] = u.shape;
    const flat = (v: Tensor) => reshape(v, [b, t, this.dInner]);
    const gated = siluGateD(flat(y), flat(x), this.D, proj, this.z_bias, getAutocast(), zCols);
    const out = this.out_proj.forward(gated);
    return { out, matrix: opts.returnMatrix ? this.matrixOf(logA, bm, cm) : null };
  }

  /** The (B, H, T, T) mixing matrix of u, D on the diagonal (form (a)). */
  materialize(u: Tensor): Tensor {
    const { xBC, a } = this.project(u);
    const { bm, cm } = this.heads(this.conv(xBC));
    return this.matrixOf(logDecay(a), bm, cm);
  }

  private matrixOf(logA: Tensor, bm: Tensor, cm: Tensor): Tensor {
    const t = logA.shape[1];
    const m = materializeMixer(logA, bm, cm);
    const diag = mul(reshape(this.D, [1, this.cfg.nVHeads, 1, 1]), eye(t, m.dtype));
    return add(m, diag);
  }

  /** The output computed through the materialized matrix: y_t = sum_s M[t, s] x_s (form (a)). */
  forwardMatrix(u: Tensor): Tensor {
    const { xBC, z, a } = this.project(u);
    const { x, bm, cm } = this.heads(this.conv(xBC));
    const m = this.matrixOf(logDecay(a), bm, cm); // (B, H, T, T)
    const y = permute(matmul(m, permute(x, [0, 2, 1, 3])), [0, 2, 1, 3]); // (B, T, H, P)
    return this.output(y, z);
  }

  /** y computed by the recurrence, one token at a time, from an empty state (form (c)). */
  forwardRecurrent(u: Tensor): Tensor {
    // the states stay in the caller's scope and in the graph, so the cache never owns them
    const cache = new SsmCache();
    const [b, t] = u.shape;
    cache.conv = zeros([b, this.cfg.dConv - 1, this.convDim], u.dtype);
    cache.ssm = zeros([b, this.cfg.nVHeads, this.headDim, this.cfg.dState], u.dtype);
    cache.length = 1; // a (zero) state exists: use the step path for every token
    const parts: Tensor[] = [];
    for (let i = 0; i < t; i++) parts.push(this.steps(slice(u, 1, i, i + 1), cache, true));
    return concat(parts, 1);
  }

  /** Full forward from an empty state, keeping the final conv and SSM states. */
  private prefill(u: Tensor, cache: SsmCache): Tensor {
    const [b, t] = u.shape;
    const { xBC, z, a } = this.project(u);
    const { x, bm, cm } = this.heads(this.conv(xBC));
    const { y, finalState } = ssdScan(x, logDecay(a), bm, cm, {
      chunkSize: this.cfg.chunkSize,
      returnFinalState: true,
    });
    const out = this.output(add(y, mul(x, this.dPerHead())), z);
    const k = this.cfg.dConv - 1;
    noGrad(() => {
      const conv = zeros([b, k, this.convDim], u.dtype);
      const keepN = Math.min(k, t);
      if (keepN > 0) writeSlice(conv, slice(xBC, 1, t - keepN, t), 1, k - keepN);
      cache.set(conv, finalState!);
    });
    cache.length = t;
    return out;
  }

  /** B or C (B, T, G, N) -> (B, H, T, N): each group's row repeated for its value heads */
  private perValueHead(m: Tensor): Tensor {
    const [b, t, g, n] = m.shape;
    const h = this.cfg.nVHeads;
    const grouped = reshape(permute(m, [0, 2, 1, 3]), [b, g, 1, t, n]);
    return reshape(expand(grouped, [b, g, h / g, t, n]), [b, h, t, n]);
  }

  /**
   * Several new tokens after a non-empty cache, through the chunked scan (a long prompt prefilled
   * in pieces). The scan starts from a zero state; the cached state h0 adds, by linearity,
   *   y_t += exp(cum_t) C_t h0^T per head, and h_T += exp(cum_T) h0,
   * with cum_t the sum of logA over the new tokens up to t. The conv runs over the cached k-1
   * inputs followed by the new ones, and only the new positions are kept.
   */
  private continueChunked(u: Tensor, cache: SsmCache): Tensor {
    const [b, t] = u.shape;
    const H = this.cfg.nVHeads;
    const k = this.cfg.dConv - 1;
    const { xBC, z, a } = this.project(u);
    const window = concat([cache.conv!, xBC], 1); // (B, k + t, C)
    const { x, bm, cm } = this.heads(slice(this.conv(window), 1, k, k + t));
    const logA = logDecay(a); // (B, t, H)
    const { y, finalState } = ssdScan(x, logA, bm, cm, {
      chunkSize: this.cfg.chunkSize,
      returnFinalState: true,
    });
    const h0 = cache.ssm!; // (B, H, P, N)
    const decay = exp(cumsum(logA, 1)); // (B, t, H)
    // C per value head, (B, H, t, N), times h0^T (B, H, N, P) -> (B, H, t, P)
    const cH = this.perValueHead(cm); // (B, H, t, N)
    const fromH0 = permute(matmul(cH, h0, { transB: true }), [0, 2, 1, 3]); // (B, t, H, P)
    const yAll = add(add(y, mul(fromH0, reshape(decay, [b, t, H, 1]))), mul(x, this.dPerHead()));
    const out = this.output(yAll, z);
    noGrad(() => {
      const last = reshape(slice(decay, 1, t - 1, t), [b, H, 1, 1]);
      const state = add(finalState!, mul(h0, last));
      const conv = slice(window, 1, t, t + k);
      cache.set(conv.detach(), state.detach());
    });
    cache.length += t;
    return out;
  }

  /**
   * One decoding step from in_proj's output zx (B, 1, convDim + dInner + H, project()'s columns)
   * to the mixer's output (B, 1, d_model), the cache updated in place: the step and its output gate
   * read zx in place (ssmStepGated, one kernel where the backend fuses it), the gate's output in 16
   * bits under autocast (out_proj's input). No gradients.
   */
  stepFromInProj(zx: Tensor, cache: SsmCache): Tensor {
    return this.out_proj.forward(this.stepGated(zx, cache));
  }

  /** stepFromInProj without out_proj: the gated output (B, 1, dInner), out_proj's input */
  stepGated(zx: Tensor, cache: SsmCache): Tensor {
    const b = zx.shape[0];
    const { nVHeads: H, nQkHeads: G, dConv: K } = this.cfg;
    const rowLen = this.convDim + this.dInner + H;
    const gated = ssmStepGated(
      reshape(zx, [b, rowLen]),
      { rowLen, xOff: 0, zOff: this.convDim, aOff: this.convDim + this.dInner },
      cache.conv!,
      reshape(this.convWeight, [this.convDim, K]),
      this.convBias,
      this.D,
      this.z_bias,
      cache.ssm!,
      { groups: G, silu: this.cfg.activation === 'silu', dtype: getAutocast() },
    );
    cache.length += 1;
    return reshape(gated, [b, 1, this.dInner]);
  }

  /**
   * Decoding: tokens one at a time, each through one fused step (`ssmStep`: conv, state update
   * and output for every head in one kernel) that updates the cache in place.
   */
  private stepsFused(u: Tensor, cache: SsmCache): Tensor {
    const [b, t] = u.shape;
    const { nVHeads: H, nQkHeads: G, dConv: K } = this.cfg;
    const P = this.headDim;
    if (t === 1) return this.stepFromInProj(this.in_proj.forward(u), cache);
    const { xBC, z, a } = this.project(u);
    const w = reshape(this.convWeight, [this.convDim, K]);
    const at = (x: Tensor, i: number) => slice(x, 1, i, i + 1);
    const outs: Tensor[] = [];
    for (let i = 0; i < t; i++) {
      const y = ssmStep(
        reshape(at(xBC, i), [b, this.convDim]),
        cache.conv!,
        w,
        this.convBias,
        reshape(at(a, i), [b, H]),
        this.D,
        cache.ssm!,
        { groups: G, silu: this.cfg.activation === 'silu' },
      );
      outs.push(this.output(reshape(y, [b, 1, H, P]), at(z, i)));
    }
    cache.length += t;
    return concat(outs, 1);
  }

  /**
   * Tokens one at a time through the recurrence, updating the cache (form (c)).
   * With `differentiable` the state updates stay in the graph (for gradient tests).
   */
  private steps(u: Tensor, cache: SsmCache, differentiable = false): Tensor {
    if (!differentiable && !isGradEnabled()) return this.stepsFused(u, cache);
    const [b, t] = u.shape;
    const { nVHeads: H, dConv: K } = this.cfg;
    const P = this.headDim;
    const { xBC, z, a } = this.project(u);
    const w = transpose(reshape(this.convWeight, [this.convDim, K])); // (K, C)
    const outs: Tensor[] = [];
    let convState = cache.conv!;
    let state = cache.ssm!;
    for (let i = 0; i < t; i++) {
      const xi = slice(xBC, 1, i, i + 1); // (B, 1, C)
      const window = concat([convState, xi], 1); // (B, K, C)
      let conv = sum(mul(window, w), [1], true); // (B, 1, C)
      if (this.convBias) conv = add(conv, this.convBias);
      conv = this.activate(conv);
      const { x, bm, cm } = this.heads(conv); // x (B,1,H,P), B C (B,1,G,N)
      const alpha = exp(logDecay(slice(a, 1, i, i + 1))); // (B, 1, H)
      const bH = this.perValueHead(bm);
      const cH = this.perValueHead(cm);
      const xH = reshape(x, [b, H, P, 1]);
      // h = alpha h + x B^T ; y = h C + D x
      state = add(mul(state, reshape(alpha, [b, H, 1, 1])), mul(xH, bH));
      const y = add(reshape(matmul(state, cH, { transB: true }), [b, 1, H, P]), mul(x, this.dPerHead()));
      outs.push(this.output(y, slice(z, 1, i, i + 1)));
      convState = slice(window, 1, 1, K);
    }
    if (differentiable) {
      cache.conv = convState;
      cache.ssm = state;
    } else {
      noGrad(() => cache.set(convState.detach(), state.detach()));
    }
    cache.length += t;
    return t === 1 ? outs[0] : concat(outs, 1);
  }
}

function tensorFrom(data: Float64Array, shape: number[], init: InitOptions): Tensor {
  const t = empty(shape, init.dtype ?? 'f32');
  t.backend.write(t.buffer, (init.dtype ?? 'f32') === 'f64' ? data : Float32Array.from(data));
  return t;
}
