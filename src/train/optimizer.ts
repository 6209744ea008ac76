// AdamW (Loshchilov & Hutter) with PyTorch's update, through the backend's fused kernel:
//   m = b1 m + (1 - b1) g;  v = b2 v + (1 - b2) g^2
//   p = p (1 - lr wd) - lr (m / (1 - b1^t)) / (sqrt(v / (1 - b2^t)) + eps)
// t counts the steps this parameter was updated (as PyTorch's per-parameter `step`). Weight decay
// is decoupled and skipped for norms, biases, D and z_bias (see params.ts). Decay only touches
// what trains in the step: a parameter without a gradient is skipped altogether, and the rows
// (first axis) of a decayed matrix whose gradient is exactly zero keep their values (the x and z
// rows of in_proj in stage 1, whose loss never reads them; embedding rows of absent tokens).
// State: exp_avg and exp_avg_sq per parameter, f32, outside every memory scope.
//
// Two ways to run a step: `step(lr)` passes the numbers to the kernel; `prepareDeviceStep` +
// `deviceStep` put lr, the clipping coefficient and the bias corrections in a small f64 device
// buffer that the kernels read, so a captured training step (a CUDA graph) replays with each
// step's values. The trainer uses the second in every mode but ZeRO (whose sharded pieces use
// `step`), so graph, eager and unsharded data-parallel runs agree exactly.
//
// The fused device step (default; MOHAWK_FUSED_OPTIM=0 restores the separate passes): one read of
// each gradient gives the sums of squares of its rows in f64 (`gradSquares`), whose total is the
// global norm for clipping and whose non-zero rows are the rows that decay (the same rows as
// sum(abs(g)) != 0: an f64 sum of exact squares is 0 only for an all-zero row); AdamW then reads
// those flags, sets a non-finite flag and can write the 16-bit copy of each updated weight.

import {
  abs,
  adamwStep,
  adamwStepDevice,
  adamwStepFused,
  affine,
  assign,
  equal,
  fillInPlace,
  gradRowSquares,
  keep,
  mul,
  noGrad,
  reshape,
  scope,
  sum,
  sumF64Into,
  upload,
  WeightCopies,
  zeros,
  type Tensor,
} from '../tensor/index.js';
import { defaultNoDecay, type NamedParams } from './params.js';

export interface AdamWConfig {
  /** peak learning rate (the schedule multiplies it) */
  lr: number;
  beta1?: number;
  beta2?: number;
  eps?: number;
  weightDecay?: number;
  /** parameters without weight decay; default: norms, biases, D, z_bias, vectors */
  noDecay?: (name: string, t: Tensor) => boolean;
}

export function checkAdamWConfig(c: AdamWConfig, where = 'optimizer'): void {
  const bad = (f: string, v: unknown, want: string): never => {
    throw new Error(`${where}: ${f} (${v}) must be ${want}`);
  };
  if (!(c.lr >= 0 && Number.isFinite(c.lr))) bad('lr', c.lr, 'a finite number >= 0');
  if (c.beta1 !== undefined && !(c.beta1 >= 0 && c.beta1 < 1)) bad('beta1', c.beta1, 'in [0, 1)');
  if (c.beta2 !== undefined && !(c.beta2 >= 0 && c.beta2 < 1)) bad('beta2', c.beta2, 'in [0, 1)');
  if (c.eps !== undefined && !(c.eps > 0)) bad('eps', c.eps, '> 0');
  if (c.weightDecay !== undefined && !(c.weightDecay >= 0)) bad('weightDecay', c.weightDecay, '>= 0');
}

interface Slot {
  name: string;
  param: Tensor;
  m: Tensor;
  v: Tensor;
  decay: boolean;
  step: number;
  /** this parameter's rows in the fused path's rowSquares: the first, and how many */
  rowAt: number;
  rows: number;
}

/** whether the fused optimizer passes are on (MOHAWK_FUSED_OPTIM=0 turns them off) */
export function fusedOptimizer(): boolean {
  return process.env.MOHAWK_FUSED_OPTIM !== '0';
}

/** What the device step may take from the gradient part of the step (see AdamW.deviceStep). */
export interface DeviceStepExtras {
  /** `gradSquares` ran after the gradients' last change: the row flags need no new pass */
  squaresReady?: boolean;
  /** f32 [1]: set to 1 (fused path) when an updated weight is not finite, left alone otherwise */
  nonFinite?: Tensor | null;
}

/**
 * Decoupled decay of the rows that receive a gradient: p[r] *= 1 - lrWd where any element of
 * g[r] is non-zero, unchanged elsewhere. The same as PyTorch's p.mul_(1 - lr wd) before the
 * update (the Adam update does not read p) restricted to the trained rows.
 */
function decayTrainedRows(p: Tensor, g: Tensor, lrWd: number): void {
  noGrad(() =>
    scope(() => {
      const rows = p.ndim === 0 ? 1 : p.shape[0];
      const perRow = sum(abs(reshape(g, [rows, p.size / rows])), [1], true); // (rows, 1)
      // 1 - lrWd where the row has a gradient, 1 where it has none
      const factor = affine(equal(perRow, zeros([rows, 1], perRow.dtype, perRow.backend)), lrWd, 1 - lrWd);
      assign(p, mul(reshape(p, [rows, p.size / rows]), factor));
    }),
  );
}

export class AdamW {
  readonly beta1: number;
  readonly beta2: number;
  readonly eps: number;
  readonly weightDecay: number;
  private readonly slots: Slot[];
  /** [lr, gradient scale, then per slot 1 - beta1^t, 1 - beta2^t] (see deviceStep) */
  private scalarsHost: Float64Array | null = null;
  private scalars: Tensor | null = null;
  /** the fused passes (read once from MOHAWK_FUSED_OPTIM at construction) */
  readonly fused = fusedOptimizer();
  /** fused path: f64, one sum of squares per row of every slot's gradient (stable address) */
  private rowSquares: Tensor | null = null;
  private readonly totalRows: number;
  /** fused path: the 16-bit copies of the weights that the update writes (see weightCopies) */
  private copies: WeightCopies | null = null;

  constructor(
    params: NamedParams,
    readonly config: AdamWConfig,
  ) {
    checkAdamWConfig(config);
    this.beta1 = config.beta1 ?? 0.9;
    this.beta2 = config.beta2 ?? 0.999;
    this.eps = config.eps ?? 1e-8;
    this.weightDecay = config.weightDecay ?? 0.01;
    const noDecay = config.noDecay ?? defaultNoDecay;
    let rowAt = 0;
    this.slots = params.map(([name, param]) => {
      if (param.dtype !== 'f32')
        throw new Error(`optimizer: parameter ${name} is ${param.dtype}; AdamW keeps f32 weights`);
      const decay = !noDecay(name, param);
      // decayed: a flag per row of the first axis; otherwise only the sum counts (vectors: one row)
      const rows =
        param.size === 0 ? 0 : param.ndim === 0 || (!decay && param.ndim === 1) ? 1 : param.shape[0];
      const slot = {
        name,
        param,
        m: keep(zeros(param.shape, 'f32', param.backend)),
        v: keep(zeros(param.shape, 'f32', param.backend)),
        decay,
        step: 0,
        rowAt,
        rows,
      };
      rowAt += rows;
      return slot;
    });
    this.totalRows = rowAt;
  }

  /**
   * Fused path: the sums of squares of every gradient's rows in one read each, and their total
   * (in f64, rounded to f32) into out[at]: the squared global gradient norm. A following
   * `deviceStep({ squaresReady: true })` reads the rows' flags from this pass. Device work only.
   */
  gradSquares(out: Tensor, at: number): void {
    const rs = this.rowSquareBuffer();
    noGrad(() => {
      fillInPlace(rs, 0);
      for (const s of this.slots)
        if (s.param.grad && s.rows > 0) gradRowSquares(s.param.grad, rs, s.rowAt, s.rows);
      sumF64Into(rs, this.totalRows, out, at);
    });
  }

  /** `gradSquares` read to the host (one read): the squared global gradient norm */
  gradSquaresHost(): number {
    return noGrad(() =>
      scope(() => {
        const out = zeros([1], 'f32', this.slots[0].param.backend);
        this.gradSquares(out, 0);
        return out.toArray()[0];
      }),
    );
  }

  /**
   * Fused path: the 16-bit copies of the trained weights for autocast products (run the loss
   * inside `withWeightCopies(opt.weightCopies(dtype), ...)`); each update writes the copy of every
   * weight it changes in the same pass, so no step casts them again. Null when the passes are
   * not fused. `loadStateDict` and anything that writes the weights otherwise clears them.
   */
  weightCopies(dtype: 'bf16' | 'f16'): WeightCopies | null {
    if (!this.fused || process.env.MOHAWK_WEIGHT_COPIES === '0') return null;
    if (this.copies && this.copies.dtype !== dtype) {
      this.copies.dispose();
      this.copies = null;
    }
    if (!this.copies)
      this.copies = new WeightCopies(
        this.slots.map((s) => s.param),
        dtype,
      );
    return this.copies;
  }

  private rowSquareBuffer(): Tensor {
    if (!this.rowSquares)
      this.rowSquares = keep(zeros([Math.max(1, this.totalRows)], 'f64', this.slots[0].param.backend));
    return this.rowSquares;
  }

  /** names of the parameters with weight decay */
  decayed(): string[] {
    return this.slots.filter((s) => s.decay).map((s) => s.name);
  }

  /**
   * One update at learning rate lr from each parameter's .grad (parameters without a grad are
   * skipped). Fused (the default): the device step with lr and scale 1.
   */
  step(lr: number): void {
    if (this.fused) {
      // the device step's kernels with this lr and no gradient scale: one pass per gradient for
      // the decayed rows and one for the update, instead of abs, sum, mul and a copy per matrix
      this.prepareDeviceStep(lr, 1);
      this.deviceStep();
      return;
    }
    for (const s of this.slots) {
      const g = s.param.grad;
      if (!g) continue;
      s.step++;
      const decay = s.decay ? this.weightDecay : 0;
      if (decay > 0 && lr > 0) decayTrainedRows(s.param, g, lr * decay);
      adamwStep(s.param, g, s.m, s.v, {
        lr,
        beta1: this.beta1,
        beta2: this.beta2,
        eps: this.eps,
        weightDecay: 0,
        step: s.step,
      });
    }
  }

  /**
   * Host half of a device step: lr, the gradient's scale (the clipping coefficient) and the bias
   * corrections of every parameter with a gradient (whose step count advances) into the host
   * array that `deviceStep` uploads. Touches nothing on the device.
   */
  prepareDeviceStep(lr: number, gradScale: number): void {
    const h = this.scalarHost();
    h[0] = lr;
    h[1] = gradScale;
    this.slots.forEach((s, i) => {
      if (!s.param.grad) return;
      s.step++;
      h[2 + 2 * i] = 1 - this.beta1 ** s.step;
      h[3 + 2 * i] = 1 - this.beta2 ** s.step;
    });
  }

  /**
   * Device half: upload the scalars (from the same host array every step: a capture input, see
   * `stepScalars`), then update each parameter that has a gradient, the decay limited to its rows
   * with a gradient. Reads nothing back, so a graph can capture it. With the fused passes, the
   * rows' flags come from `gradSquares` (run here unless extras.squaresReady) and
   * extras.nonFinite is flagged by the update itself.
   */
  deviceStep(extras: DeviceStepExtras = {}): void {
    const h = this.scalarHost();
    if (!this.scalars) this.scalars = keep(zeros([h.length], 'f64', this.slots[0].param.backend));
    const scalars = this.scalars;
    noGrad(() =>
      scope(() => {
        upload(scalars, h);
        if (this.fused) {
          const rs = this.rowSquareBuffer();
          if (!extras.squaresReady) {
            fillInPlace(rs, 0);
            for (const s of this.slots)
              if (s.param.grad && s.decay && s.rows > 0) gradRowSquares(s.param.grad, rs, s.rowAt, s.rows);
          }
          this.slots.forEach((s, i) => {
            const g = s.param.grad;
            if (!g) return;
            const decay = s.decay ? this.weightDecay : 0;
            adamwStepFused(
              s.param,
              g,
              s.m,
              s.v,
              scalars,
              decay > 0 ? rs : null,
              extras.nonFinite ?? null,
              this.copies?.get(s.param) ?? null,
              {
                beta1: this.beta1,
                beta2: this.beta2,
                eps: this.eps,
                weightDecay: decay,
                biasAt: 2 + 2 * i,
                rowLen: s.param.size / Math.max(s.rows, 1),
                rowAt: s.rowAt,
              },
            );
          });
          return;
        }
        this.slots.forEach((s, i) => {
          const g = s.param.grad;
          if (!g) return;
          const decay = s.decay ? this.weightDecay : 0;
          const rows = s.param.ndim === 0 ? 1 : s.param.shape[0];
          const rowLen = s.param.size / Math.max(rows, 1);
          const rowAbs = decay > 0 ? sum(abs(reshape(g, [rows, rowLen])), [1]) : null;
          adamwStepDevice(s.param, g, s.m, s.v, scalars, rowAbs, {
            beta1: this.beta1,
            beta2: this.beta2,
            eps: this.eps,
            weightDecay: decay,
            biasAt: 2 + 2 * i,
            rowLen,
          });
        });
      }),
    );
  }

  /** the host array of the device step's scalars (register it as a capture input) */
  get stepScalars(): Float64Array {
    return this.scalarHost();
  }

  private scalarHost(): Float64Array {
    if (!this.scalarsHost) this.scalarsHost = new Float64Array(2 + 2 * this.slots.length);
    return this.scalarsHost;
  }

  /** The state as named tensors (`NAME.exp_avg`, `NAME.exp_avg_sq`) and per-parameter step counts. */
  stateDict(): { tensors: Map<string, Tensor>; steps: Record<string, number> } {
    const tensors = new Map<string, Tensor>();
    const steps: Record<string, number> = {};
    for (const s of this.slots) {
      tensors.set(`${s.name}.exp_avg`, s.m);
      tensors.set(`${s.name}.exp_avg_sq`, s.v);
      steps[s.name] = s.step;
    }
    return { tensors, steps };
  }

  /** Restore from `stateDict()`'s form; `source` names the file in errors. */
  loadStateDict(
    tensors: Map<string, Tensor>,
    steps: Record<string, number>,
    source = 'optimizer state',
  ): void {
    // a resume writes the weights too: their 16-bit copies are made again from them
    this.copies?.clear();
    for (const s of this.slots) {
      for (const [suffix, dst] of [
        ['exp_avg', s.m],
        ['exp_avg_sq', s.v],
      ] as const) {
        const src = tensors.get(`${s.name}.${suffix}`);
        if (!src) throw new Error(`${source}: missing tensor ${s.name}.${suffix}`);
        if (src.size !== dst.size)
          throw new Error(
            `${source}: tensor ${s.name}.${suffix} has ${src.size} elements, expected ${dst.size}`,
          );
        assign(dst, src);
      }
      const st = steps[s.name];
      if (!Number.isInteger(st) || st < 0) throw new Error(`${source}: no step count for ${s.name}`);
      s.step = st;
    }
    const known = new Set(this.slots.map((s) => s.name));
    for (const name of Object.keys(steps)) {
      if (!known.has(name)) throw new Error(`${source}: state for ${name}, which is not trained in this run`);
    }
  }

  dispose(): void {
    this.copies?.dispose();
    this.copies = null;
    this.scalars?.dispose();
    this.scalars = null;
    this.rowSquares?.dispose();
    this.rowSquares = null;
    for (const s of this.slots) {
      s.m.dispose();
      s.v.dispose();
    }
  }
}
