// Data parallelism for the trainer: W ranks (processes, one per GPU) each compute a contiguous
// block of every step's micro-batches, then the gradients are summed across ranks. The result is
// the gradient of the same global batch as one process, so the learning-rate schedule, clipping
// (the norm of the summed gradient) and the update are the same; so are the weights on every
// rank, which start from rank 0's.
//
// Gradients are all-reduced in buckets of about `bucketBytes`, each bucket flattened into one
// buffer: few large collectives instead of one per tensor. GradReducer sends them while the
// step's last backward pass runs: the autograd calls it when a parameter's gradient is final
// (withGradReadyHook), a bucket starts its all-reduce as soon as its last parameter is ready
// (NCCL: on its own stream, so the backward's kernels go on), and the optimizer waits for all of
// them. The buckets hold the parameters in the order their gradients became ready in the first
// step (rank 0's order, so that every rank issues the same collectives); the first step uses the
// reverse parameter order, the order a sequential model's backward finishes them.

import type { Backend } from '../backends/backend.js';
import { startAllReduce, type Collective, type PendingCollective } from '../backends/collective.js';
import { CpuCollective } from '../backends/cpu/collective.js';
import type { CudaBackend } from '../backends/cuda/index.js';
import { ProcessGroup, type DistEnv } from '../backends/group.js';
import {
  concat,
  keep,
  noGrad,
  reshape,
  scope,
  slice,
  tensor,
  withGradReadyHook,
  zeros,
  type Tensor,
} from '../tensor/index.js';
import type { NamedParams } from './params.js';

/** 25 MiB of f32 per bucket (PyTorch DDP's default). */
export const DEFAULT_BUCKET_BYTES = 25 << 20;

/** What the trainer needs to run data parallel. */
export interface DataParallel {
  collective: Collective;
  /**
   * shard the AdamW moments across ranks (true or 1: ZeRO-1, see zero.ts); 2: the gradients too
   * (ZeRO-2: reduce-scattered per bucket during every micro-batch's backward)
   */
  zero?: boolean | 1 | 2;
  bucketBytes?: number;
}

/** The micro-batches [start, end) of a step of `accum` that `rank` computes. */
export function rankMicroBatches(
  accum: number,
  rank: number,
  world: number,
  where = 'train',
): [number, number] {
  if (accum % world !== 0)
    throw new Error(
      `${where}: the step's ${accum} micro-batch(es) do not split over ${world} ranks; ` +
        `make batchTokens a multiple of ${world} x microBatch x seqLen`,
    );
  const per = accum / world;
  return [rank * per, (rank + 1) * per];
}

/** Copy rank 0's values of every parameter to the others. */
export function broadcastParams(c: Collective, params: NamedParams): void {
  if (c.worldSize === 1) return;
  for (const [, p] of params) c.broadcast(p.buffer, 0);
}

export interface StepStats {
  /** the step's summed micro-batch losses over all ranks */
  lossSum: number;
  /** some rank saw a non-finite loss */
  anyBad: boolean;
  /** per parameter: some rank has a gradient for it */
  hasGrad: boolean[];
}

/**
 * One small all-reduce of what every rank must agree on before the update; `hadGrad` says which
 * parameters got a gradient on this rank (default: those with a .grad now).
 */
export function reduceStepStats(
  c: Collective,
  lossSum: number,
  bad: boolean,
  params: NamedParams,
  hadGrad: boolean[] = params.map(([, p]) => !!p.grad),
): StepStats {
  const local = [lossSum, bad ? 1 : 0, ...hadGrad.map((h) => (h ? 1 : 0))];
  if (c.worldSize === 1) return { lossSum, anyBad: bad, hasGrad: [...hadGrad] };
  const v = noGrad(() =>
    scope(() => {
      const t = tensor(Float32Array.from(local), [local.length], 'f32');
      c.allReduce(t.buffer, 'sum');
      return t.toArray();
    }),
  );
  return { lossSum: v[0], anyBad: v[1] > 0, hasGrad: params.map((_, i) => v[2 + i] > 0) };
}

/**
 * Sum every gradient over the ranks, in buckets. Parameters some rank has a gradient for get one
 * (zeros stand in where this rank has none); the others keep none, so the optimizer skips them
 * as it would in one process.
 */
export function allReduceGrads(
  c: Collective,
  params: NamedParams,
  hasGrad: boolean[],
  bucketBytes = DEFAULT_BUCKET_BYTES,
): void {
  const limit = Math.max(1, Math.floor(bucketBytes / 4));
  let bucket: Tensor[] = [];
  let elems = 0;
  const flush = (): void => {
    if (!bucket.length) return;
    const ps = bucket;
    noGrad(() =>
      scope(() => {
        const flat = concat(
          ps.map((p) => (p.grad ? reshape(p.grad, [p.size]) : zeros([p.size], 'f32', p.backend))),
          0,
        );
        c.allReduce(flat.buffer, 'sum');
        let off = 0;
        for (const p of ps) {
          const g = keep(reshape(slice(flat, 0, off, off + p.size), p.shape));
          off += p.size;
          p.grad?.dispose();
          p.grad = g;
        }
      }),
    );
    bucket = [];
    elems = 0;
  };
  for (let i = params.length - 1; i >= 0; i--) {
    if (!hasGrad[i]) continue;
    const p = params[i][1];
    if (elems > 0 && elems + p.size > limit) flush();
    bucket.push(p);
    elems += p.size;
  }
  flush();
}

/**
 * n figures (validation batches, say) computed over the ranks: rank r computes items r, r + W,
 * r + 2W ... and every rank gets all n values, in item order (an all-reduce of an f64 vector in
 * which each item is non-zero on one rank only, so the sums are exact). A sum taken over them in
 * order is then one process's, bit for bit. Without a collective every item is computed here.
 */
export function computeOverRanks(
  c: Collective | null | undefined,
  n: number,
  compute: (i: number) => number,
): number[] {
  if (!c || c.worldSize === 1) return Array.from({ length: n }, (_, i) => compute(i));
  const v = new Float64Array(n);
  for (let i = c.rank; i < n; i += c.worldSize) v[i] = compute(i);
  return noGrad(() =>
    scope(() => {
      const t = tensor(v, [n], 'f64');
      c.allReduce(t.buffer, 'sum');
      return Array.from(t.toArray());
    }),
  );
}

/**
 * Cut parameters (indices into `sizes`, in the order given) into buckets of whole parameters of
 * at most `limit` elements; a larger parameter is a bucket alone.
 */
export function orderedBuckets(
  order: readonly number[],
  sizes: readonly number[],
  limit: number,
): number[][] {
  const out: number[][] = [];
  let cur: number[] = [];
  let elems = 0;
  for (const i of order) {
    if (elems > 0 && elems + sizes[i] > limit) {
      out.push(cur);
      cur = [];
      elems = 0;
    }
    cur.push(i);
    elems += sizes[i];
  }
  if (cur.length) out.push(cur);
  return out;
}

interface InFlight {
  params: number[];
  /** the bucket's gradients end to end; null when they travel in place (allReduceManyAsync) */
  flat: Tensor | null;
  pending: PendingCollective;
  /** where the sums go once there (default: back into the parameters' .grad) */
  done?: () => void;
}

/**
 * A bucket layout the reducer must keep (ZeRO: the sharded optimizer's buckets) and how each
 * bucket travels: `send(k, grads)` starts bucket k's collective from the gradients of plan[k]'s
 * parameters (flat, 1-D; zeros where this rank has none), copying what it needs before it returns
 * (the gradients are freed then), and says what to do once it has arrived.
 */
export interface FixedBuckets {
  plan: number[][];
  send: (k: number, grads: Tensor[]) => { pending: PendingCollective; done: () => void };
}

/**
 * Sums the gradients of `params` over the ranks in buckets while a backward pass runs. A step:
 * `during(fn)` runs the step's last backward (fn) with the autograd's gradient-ready hook on;
 * each parameter whose gradient is final is marked, and every bucket whose parameters are all
 * marked starts its all-reduce, buckets strictly in plan order (every rank issues the same
 * collectives in the same order). `finish()` starts what is left (zeros stand in for gradients
 * this rank has none of), waits for all of it and puts the sums in .grad; it returns which
 * parameters had a gradient here. Earlier micro-batches of the step run without the hook and
 * only accumulate (no communication: PyTorch's no_sync).
 *
 * A parameter's gradient must be final when the hook says so: a later backward in the same
 * `during` adding to a parameter already sent is an error (per-layer losses touch each layer's
 * parameters in one backward, so they qualify).
 */
export class GradReducer {
  private plan: number[][];
  private bucketOf: Int32Array;
  /** per bucket: parameters not marked yet this step */
  private missing: number[] = [];
  /** the next bucket to start */
  private next = 0;
  private marked: Uint8Array;
  private had: boolean[];
  private inFlight: InFlight[] = [];
  /** parameters in the order they were marked this step */
  private seen: number[] = [];
  private replanned: boolean;
  private readonly index = new Map<Tensor, number>();
  private readonly limit: number;
  private readonly hook = (leaf: Tensor): void => this.ready(leaf);

  constructor(
    private readonly c: Collective,
    private readonly params: NamedParams,
    bucketBytes = DEFAULT_BUCKET_BYTES,
    private readonly fixed: FixedBuckets | null = null,
  ) {
    this.limit = Math.max(1, Math.floor(bucketBytes / 4));
    params.forEach(([, p], i) => this.index.set(p, i));
    const reverse = params.map((_, i) => params.length - 1 - i);
    this.replanned = fixed !== null;
    this.plan = fixed
      ? fixed.plan
      : orderedBuckets(
          reverse,
          params.map(([, p]) => p.size),
          this.limit,
        );
    this.bucketOf = new Int32Array(params.length);
    this.marked = new Uint8Array(params.length);
    this.had = params.map(() => false);
    this.reset();
  }

  /** The buckets (parameter names) in the order they start. */
  get buckets(): string[][] {
    return this.plan.map((b) => b.map((i) => this.params[i][0]));
  }

  private reset(): void {
    this.plan.forEach((b, k) => b.forEach((i) => (this.bucketOf[i] = k)));
    this.missing = this.plan.map((b) => b.length);
    this.next = 0;
    this.marked.fill(0);
    this.had = this.params.map(() => false);
    this.seen = [];
  }

  /** Run fn (the step's last backward) with the buckets starting as gradients become final. */
  during<T>(fn: () => T): T {
    return withGradReadyHook(this.hook, fn);
  }

  private ready(leaf: Tensor): void {
    const i = this.index.get(leaf);
    if (i === undefined) return;
    const b = this.bucketOf[i];
    if (this.marked[i]) {
      if (b < this.next)
        throw new Error(
          `data parallel: ${this.params[i][0]} got another gradient after its bucket was sent ` +
            '(a later backward of the same micro-batch added to it)',
        );
      return;
    }
    this.marked[i] = 1;
    this.seen.push(i);
    this.missing[b]--;
    while (this.next < this.plan.length && this.missing[this.next] === 0) this.start(this.next++);
  }

  private start(k: number): void {
    const ids = this.plan[k];
    if (this.fixed) {
      const fixed = this.fixed;
      const sent = noGrad(() =>
        scope(() =>
          fixed.send(
            k,
            ids.map((i) => {
              const p = this.params[i][1];
              this.had[i] = !!p.grad;
              return p.grad ? reshape(p.grad, [p.size]) : zeros([p.size], 'f32', p.backend);
            }),
          ),
        ),
      );
      this.freeGrads(ids);
      this.inFlight.push({ params: ids, flat: null, ...sent });
      return;
    }
    if (this.c.allReduceManyAsync) {
      // in place: the gradients themselves travel (zeros where this rank has none), no copies
      const grads = ids.map((i) => {
        const p = this.params[i][1];
        this.had[i] = !!p.grad;
        p.grad ??= noGrad(() => keep(zeros(p.shape, 'f32', p.backend)));
        return p.grad.buffer;
      });
      this.inFlight.push({ params: ids, flat: null, pending: this.c.allReduceManyAsync(grads, 'sum') });
      return;
    }
    const flat = noGrad(() =>
      scope(() =>
        keep(
          concat(
            ids.map((i) => {
              const p = this.params[i][1];
              this.had[i] = !!p.grad;
              return p.grad ? reshape(p.grad, [p.size]) : zeros([p.size], 'f32', p.backend);
            }),
            0,
          ),
        ),
      ),
    );
    // the flat copy travels; the gradients themselves are freed now
    this.freeGrads(ids);
    this.inFlight.push({ params: ids, flat, pending: startAllReduce(this.c, flat.buffer, 'sum') });
  }

  private freeGrads(ids: number[]): void {
    for (const i of ids) {
      const p = this.params[i][1];
      p.grad?.dispose();
      p.grad = null;
    }
  }

  /**
   * Start the buckets not started yet, wait for every one and put the sums in the parameters'
   * .grad (or where FixedBuckets says). Returns which parameters had a gradient on this rank.
   */
  finish(): boolean[] {
    while (this.next < this.plan.length) this.start(this.next++);
    noGrad(() => {
      for (const { params, flat, pending, done } of this.inFlight.splice(0)) {
        pending.wait();
        done?.();
        if (!flat) continue; // summed in place, or sent by FixedBuckets
        scope(() => {
          let off = 0;
          for (const i of params) {
            const p = this.params[i][1];
            p.grad = keep(reshape(slice(flat, 0, off, off + p.size), p.shape));
            off += p.size;
          }
        });
        flat.dispose();
      }
    });
    const had = this.had;
    if (!this.replanned) this.replan();
    this.reset();
    return had;
  }

  /**
   * After the first step: buckets in the order the gradients became ready (rank 0's order, sent
   * to all; parameters never ready follow in reverse order), so later steps start each bucket as
   * soon as its last gradient is final.
   */
  private replan(): void {
    this.replanned = true;
    const n = this.params.length;
    const seen = new Set(this.seen);
    let order = [...this.seen];
    for (let i = n - 1; i >= 0; i--) if (!seen.has(i)) order.push(i);
    if (this.c.worldSize > 1)
      order = noGrad(() =>
        scope(() => {
          const t = tensor(Float32Array.from(order), [n], 'f32');
          this.c.broadcast(t.buffer, 0);
          return Array.from(t.toArray(), (v) => Math.round(v));
        }),
      );
    this.plan = orderedBuckets(
      order,
      this.params.map(([, p]) => p.size),
      this.limit,
    );
  }

  /** Free what is in flight (after an error). */
  dispose(): void {
    for (const f of this.inFlight.splice(0)) {
      f.pending.wait();
      f.flat?.dispose();
    }
  }
}

/**
 * Join the job `env` describes and open its collective on `backend`: NCCL on CUDA (rank 0 makes
 * the unique id, the rendezvous hands it out), the TCP star on the CPU.
 */
export async function openCollective(env: DistEnv, backend: Backend): Promise<Collective> {
  const where = {
    rank: env.rank,
    worldSize: env.worldSize,
    masterAddr: env.masterAddr,
    masterPort: env.masterPort,
  };
  if (backend.name === 'cuda') {
    const nccl = await import('../backends/cuda/nccl.js');
    const blob = env.rank === 0 ? nccl.ncclUniqueId() : undefined;
    const group = ProcessGroup.join({ ...where, blob });
    try {
      return new nccl.NcclCollective(backend as CudaBackend, group);
    } catch (e) {
      group.close();
      throw e;
    }
  }
  return new CpuCollective(ProcessGroup.join(where), backend);
}
