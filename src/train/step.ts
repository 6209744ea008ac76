// The training step on the device, in two parts that a graph can capture (issue 18, item 3):
//
//   gradients: zero the gradients in place, then per micro-batch the loss, its backward (the
//              gradients accumulate in place into the same buffers every step) and the loss
//              value into a small device vector; last, the squared global gradient norm. One
//              host read afterwards: the micro-batches' losses and the squared norm.
//   update:    AdamW with lr, the clipping coefficient and the bias corrections read from a
//              device buffer (AdamW.deviceStep), and a probe that is non-zero when a weight is
//              not finite. One host read afterwards: the probe.
//
// The host decides between the two (skip a non-finite step, the clipping coefficient, the lr of
// the schedule) from the first read. Eager runs execute exactly these kernels; with graphs
// (cudaGraph 'on', or 'auto' on CUDA) the first step of a session runs eagerly (kernels compiled,
// caches filled), the second captures each part and every step replays them: one launch per part
// instead of one per kernel. The batches are copied into static host arrays registered as the
// graph's inputs, so each replay reads the new step's tokens.
//
// What a captured loss must respect: the same kernels on the same shapes every step, no host read
// (capture refuses those), nothing on the host computed from a batch's contents, no draw from the
// run's generator (dropout seeds: checked), no dependence on ctx.step. The first replay on new
// data is checked against an eager forward of the same batch; any failure turns graphs off for
// the run with one note, and the step runs eagerly.

import {
  add,
  captureGraph,
  cast,
  fillInPlace,
  getAutocast,
  graphsAvailable,
  keep,
  noGrad,
  scale,
  scope,
  square,
  sum,
  Tensor,
  withWeightCopies,
  writeSlice,
  zeros,
  type GraphCapture,
  type WeightCopies,
} from '../tensor/index.js';
import type { Backend, HostArray } from '../backends/backend.js';
import type { TokenBatch } from '../data/batches.js';
import type { Random } from '../util/random.js';
import type { AdamW } from './optimizer.js';
import type { NamedParams } from './params.js';

/** `auto`: graphs on the CUDA backend when the loss is graph-safe; `on`: on any backend that captures */
export type CudaGraphMode = 'auto' | 'on' | 'off';

export const CUDA_GRAPH_MODES: readonly CudaGraphMode[] = ['auto', 'on', 'off'];

export interface StepContext {
  step: number;
  micro: number;
  accum: number;
}

/** what a loss function returns (trainer.ts's BackpropagatedLoss is the second form) */
export type StepLoss = Tensor | { value: number | Tensor };

export interface DeviceStepOptions<B extends TokenBatch> {
  lossFn: (batch: B, ctx: StepContext) => StepLoss;
  trained: NamedParams;
  optimizer: AdamW;
  accum: number;
  backend: Backend;
  mode: CudaGraphMode;
  /** the run's generator: a capture that draws from it is not replayable */
  rng?: Random;
  /** one line for the progress stream (why graphs are off, when they are) */
  note: (line: string) => void;
  label: string;
}

export interface GradientStats {
  /** each micro-batch's loss */
  losses: number[];
  /** sum of the squares of every gradient */
  sumSquares: number;
}

/** A host copy of a batch whose typed arrays stay the same objects (refilled each step). */
type StaticBatch<B> = B;

function cloneBatch<B extends TokenBatch>(b: B): StaticBatch<B> | string {
  const out: Record<string, unknown> = {};
  for (const [k, v] of Object.entries(b)) {
    if (ArrayBuffer.isView(v)) out[k] = (v as unknown as Int32Array).slice();
    else if (v === null || v === undefined || typeof v !== 'object') out[k] = v;
    else return `the batch's field ${k} is neither a typed array nor a plain value`;
  }
  return out as B;
}

/** copy b into the static batch; a reason when it does not fit (another shape) */
function refill<B extends TokenBatch>(dst: StaticBatch<B>, b: B): string | null {
  const d = dst as unknown as Record<string, unknown>;
  const src = Object.entries(b);
  if (src.length !== Object.keys(d).length) return 'the batch has other fields than the captured one';
  for (const [k, v] of src) {
    const t = d[k];
    if (ArrayBuffer.isView(v)) {
      const arr = v as unknown as Int32Array;
      if (
        !ArrayBuffer.isView(t) ||
        t.constructor !== arr.constructor ||
        (t as Int32Array).length !== arr.length
      )
        return `the batch's ${k} differs in type or length from the captured one`;
      (t as Int32Array).set(arr);
    } else if (t !== v) return `the batch's ${k} (${String(v)}) differs from the captured one (${String(t)})`;
  }
  return null;
}

function isHostArray(v: unknown): v is HostArray {
  return (
    v instanceof Float32Array ||
    v instanceof Float64Array ||
    v instanceof Int32Array ||
    v instanceof Uint16Array
  );
}

/** Sum of the squares of every gradient, on the device (null without any). */
function gradSquareSum(params: NamedParams): Tensor | null {
  let acc: Tensor | null = null;
  for (const [, p] of params) {
    if (!p.grad) continue;
    const s = sum(square(p.grad));
    acc = acc ? add(acc, s) : s;
  }
  return acc;
}

/** Non-zero exactly when a parameter holds a NaN or an infinity (sum of 0 * p; see params.ts). */
function nonFiniteProbe(params: NamedParams): Tensor | null {
  let acc: Tensor | null = null;
  for (const [, p] of params) {
    if (p.dtype === 'i32' || p.size === 0) continue;
    const z = sum(scale(p, 0));
    acc = acc ? add(acc, z) : z;
  }
  return acc;
}

function asF32(t: Tensor): Tensor {
  return t.dtype === 'f32' ? t : cast(t, 'f32');
}

export class DeviceStep<B extends TokenBatch> {
  /** micro-batch losses then the squared gradient norm (accum + 1), f32 */
  private readonly stats: Tensor;
  /** the non-finite probe of the update, f32 [1] */
  private readonly probe: Tensor;
  /** host loss values of losses that back-propagate themselves (null where on the device) */
  private readonly hostLoss: (number | null)[];
  private useGraphs: boolean;
  private gradGraph: GraphCapture | null = null;
  private updateGraph: GraphCapture | null = null;
  private statics: StaticBatch<B>[] | null = null;
  private gradWarm = false;
  private updateWarm = false;
  /** the captured gradients have been checked against an eager forward on new data */
  private verified = false;
  private capturedStep = -1;
  /** the loss function runs its own backward (see BackpropagatedLoss) */
  private selfBackprop = false;
  /** why graphs are off (once a fallback happened) */
  offReason: string | null = null;

  constructor(private readonly o: DeviceStepOptions<B>) {
    this.stats = keep(zeros([o.accum + 1], 'f32', o.backend));
    this.probe = keep(zeros([1], 'f32', o.backend));
    this.hostLoss = new Array<number | null>(o.accum).fill(null);
    const can = graphsAvailable(o.backend);
    this.useGraphs = o.mode === 'on' ? can : o.mode === 'auto' ? can && o.backend.name === 'cuda' : false;
    if (o.mode === 'on' && !can)
      this.off(
        typeof o.backend.capture !== 'function'
          ? `the ${o.backend.name} backend cannot capture graphs`
          : 'MOHAWK_CUDA_GRAPH=0',
      );
  }

  /** whether steps replay graphs now */
  get graphs(): boolean {
    return this.useGraphs && this.gradGraph !== null;
  }

  /** nodes of the captured parts (0 before capture) */
  get nodes(): { gradients: number; update: number } {
    return { gradients: this.gradGraph?.nodes ?? 0, update: this.updateGraph?.nodes ?? 0 };
  }

  private off(reason: string): void {
    this.gradGraph?.destroy();
    this.updateGraph?.destroy();
    this.gradGraph = this.updateGraph = null;
    if (this.useGraphs || this.o.mode === 'on')
      this.o.note(`${this.o.label}: CUDA graphs off, the step runs eagerly: ${reason}`);
    this.useGraphs = false;
    this.offReason = reason;
  }

  /** The micro-batches' losses and backward into the gradients, the squared norm: device work only. */
  private runGradients(batches: readonly B[], step: number): void {
    const { accum, trained } = this.o;
    // fused: the first gradient of the step is copied into each buffer (no zero fill, no add)
    const unwritten = this.o.optimizer.fused;
    noGrad(() => {
      fillInPlace(this.stats, 0);
      for (const [, p] of trained)
        if (p.grad) {
          if (unwritten) p.gradUnwritten = true;
          else fillInPlace(p.grad, 0);
        }
    });
    try {
      this.backwardAll(batches, step);
    } catch (e) {
      // a failed step leaves no buffer that a later backward would overwrite instead of add to
      for (const [, p] of trained) p.gradUnwritten = false;
      throw e;
    }
    // the buffers of parameters no backward reached: zeros
    for (const [, p] of trained)
      if (p.gradUnwritten) {
        if (p.grad) noGrad(() => fillInPlace(p.grad!, 0));
        p.gradUnwritten = false;
      }
    // fused: one read per gradient (the optimizer keeps its rows' flags for the update)
    if (this.o.optimizer.fused) this.o.optimizer.gradSquares(this.stats, accum);
    else
      noGrad(() =>
        scope(() => {
          const sq = gradSquareSum(trained);
          if (sq) writeSlice(this.stats, asF32(sq).view([1]), 0, accum);
        }),
      );
  }

  /** each micro-batch's loss into stats and its backward into the gradients */
  private backwardAll(batches: readonly B[], step: number): void {
    const { accum, lossFn } = this.o;
    const copies = this.weightCopies();
    for (let micro = 0; micro < accum; micro++) {
      this.hostLoss[micro] = null;
      scope(() => {
        const loss = withWeightCopies(copies, () => lossFn(batches[micro], { step, micro, accum }));
        if (!(loss instanceof Tensor)) {
          // back-propagated by the loss function; its value a host number or a device scalar
          this.selfBackprop = true;
          if (typeof loss.value === 'number') this.hostLoss[micro] = loss.value;
          else noGrad(() => writeSlice(this.stats, asF32(loss.value as Tensor).view([1]), 0, micro));
          return;
        }
        if (loss.size !== 1)
          throw new Error(`${this.o.label}: lossFn returned shape [${loss.shape}], expected a scalar`);
        if (!loss.requiresGrad)
          throw new Error(`${this.o.label}: the loss does not depend on any trainable parameter`);
        noGrad(() => writeSlice(this.stats, asF32(loss).view([1]), 0, micro));
        (accum === 1 ? loss : scale(loss, 1 / accum)).backward(undefined, { freeGraph: true });
      });
    }
  }

  /** the optimizer's 16-bit weight copies under autocast (fused passes), else null */
  private weightCopies(): WeightCopies | null {
    const dt = getAutocast();
    return dt ? this.o.optimizer.weightCopies(dt) : null;
  }

  private readStats(): GradientStats {
    const s = this.stats.toArray();
    const losses = this.hostLoss.map((h, i) => h ?? s[i]);
    return { losses, sumSquares: s[this.o.accum] };
  }

  /** The step's losses and squared gradient norm, the gradients left in each parameter's .grad. */
  gradients(batches: readonly B[], step: number): GradientStats {
    if (!this.useGraphs || !this.gradWarm) {
      this.runGradients(batches, step);
      this.gradWarm = true;
      // a loss that reads its value to the host: never captured
      if (this.useGraphs && this.hostLoss.some((h) => h !== null))
        this.off('the loss reads its value on the host (a back-propagated loss with a number value)');
      return this.readStats();
    }
    if (!this.gradGraph && !this.capture(batches, step)) {
      this.runGradients(batches, step);
      return this.readStats();
    }
    const misfit = this.statics!.map((s, i) => refill(s, batches[i])).find((r) => r !== null);
    if (misfit) {
      this.off(misfit);
      this.runGradients(batches, step);
      return this.readStats();
    }
    this.gradGraph!.replay();
    const stats = this.readStats();
    if (!this.verified && step !== this.capturedStep) {
      this.verified = true;
      const why = this.verify(batches, stats, step);
      if (why) this.off(why);
      // a loss that back-propagates itself added its gradients again in the check: redo the step
      if (why || this.selfBackprop) {
        this.runGradients(batches, step);
        return this.readStats();
      }
    }
    return stats;
  }

  /** capture the gradient part on static copies of these batches; false (and off) when it fails */
  private capture(batches: readonly B[], step: number): boolean {
    const statics: StaticBatch<B>[] = [];
    for (const b of batches) {
      const c = cloneBatch(b);
      if (typeof c === 'string') {
        this.off(c);
        return false;
      }
      statics.push(c);
    }
    const inputs = statics.flatMap((s) => Object.values(s).filter(isHostArray));
    const rngBefore = this.o.rng?.getState();
    try {
      this.gradGraph = captureGraph(() => this.runGradients(statics, step), inputs, this.o.backend);
    } catch (e) {
      if (rngBefore) this.o.rng!.setState(rngBefore);
      this.off(`capture failed: ${(e as Error).message}`);
      return false;
    }
    if (rngBefore && JSON.stringify(this.o.rng!.getState()) !== JSON.stringify(rngBefore)) {
      this.o.rng!.setState(rngBefore);
      this.off(
        "the loss draws from the run's random generator (dropout seeds), which a graph would replay unchanged",
      );
      return false;
    }
    this.statics = statics;
    this.capturedStep = step;
    return true;
  }

  /**
   * The first replay on a batch other than the captured one against an eager forward of the same
   * batch: a loss that copies its input arrays, or computes something on the host from the batch,
   * replays the captured batch and fails here. Null when they agree (relative 1e-4).
   */
  private verify(batches: readonly B[], stats: GradientStats, step: number): string | null {
    const { accum, lossFn } = this.o;
    for (let micro = 0; micro < accum; micro++) {
      // with gradients recorded (not run), so every op takes the path it takes in the step
      const eager = scope(() => {
        const loss = withWeightCopies(this.weightCopies(), () =>
          lossFn(batches[micro], { step, micro, accum }),
        );
        if (loss instanceof Tensor) return loss.item();
        return typeof loss.value === 'number' ? loss.value : loss.value.item();
      });
      const got = stats.losses[micro];
      const same = got === eager || Math.abs(got - eager) <= 1e-4 * Math.max(1, Math.abs(eager));
      if (!same && (Number.isFinite(got) || Number.isFinite(eager)))
        return `the replayed loss ${got} differs from an eager run's ${eager} on the same batch (micro-batch ${micro}): the loss does not read the step's batch through its arrays`;
    }
    return null;
  }

  private runUpdate(): void {
    const { optimizer, trained } = this.o;
    if (optimizer.fused) {
      // the update flags its own non-finite weights; the probe covers the parameters it skips
      noGrad(() => fillInPlace(this.probe, 0));
      optimizer.deviceStep({ squaresReady: true, nonFinite: this.probe });
      noGrad(() =>
        scope(() => {
          const z = nonFiniteProbe(trained.filter(([, p]) => !p.grad));
          if (z) writeSlice(this.probe, add(this.probe, asF32(z).view([1])), 0, 0);
        }),
      );
      return;
    }
    optimizer.deviceStep();
    noGrad(() =>
      scope(() => {
        const z = nonFiniteProbe(trained);
        if (z) writeSlice(this.probe, asF32(z).view([1]), 0, 0);
      }),
    );
  }

  /**
   * AdamW at lr with the gradients scaled by gradScale; returns whether a trained weight is no
   * longer finite (one host read).
   */
  update(lr: number, gradScale: number): boolean {
    this.o.optimizer.prepareDeviceStep(lr, gradScale);
    if (this.useGraphs && this.updateWarm && this.gradGraph && !this.updateGraph) {
      // the captured update writes the copies that exist now: no new ones after it
      this.weightCopies()?.seal();
      try {
        this.updateGraph = captureGraph(
          () => this.runUpdate(),
          [this.o.optimizer.stepScalars],
          this.o.backend,
        );
        this.o.note(
          `${this.o.label}: the step replays as CUDA graphs (${this.gradGraph.nodes} + ${this.updateGraph.nodes} kernels)`,
        );
      } catch (e) {
        this.off(`capture of the update failed: ${(e as Error).message}`);
      }
    }
    if (this.useGraphs && this.updateGraph) this.updateGraph.replay();
    else this.runUpdate();
    this.updateWarm = true;
    return this.probe.toArray()[0] !== 0;
  }

  dispose(): void {
    this.gradGraph?.destroy();
    this.updateGraph?.destroy();
    this.gradGraph = this.updateGraph = null;
    this.stats.dispose();
    this.probe.dispose();
  }
}
