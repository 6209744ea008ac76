// Data parallelism for the trainer: W ranks (processes, one per GPU) each compute a contiguous
// block of every step's micro-batches, then the gradients are summed across ranks. The result is
// the gradient of the same global batch as one process, so the learning-rate schedule, clipping
// (the norm of the summed gradient) and the update are the same; so are the weights on every
// rank, which start from rank 0's.
//
// Gradients are all-reduced in buckets of about `bucketBytes` (parameters in reverse order, the
// order backward finishes them), each bucket flattened into one buffer: few large collectives
// instead of one per tensor. The buckets run after the step's last backward, not during it: the
// autograd has no per-parameter completion hook yet, and on one CUDA stream NCCL would queue
// behind the backward kernels anyway (overlap needs a second stream and events).

import type { Backend } from '../backends/backend.js';
import type { Collective } from '../backends/collective.js';
import { CpuCollective } from '../backends/cpu/collective.js';
import type { CudaBackend } from '../backends/cuda/index.js';
import { ProcessGroup, type DistEnv } from '../backends/group.js';
import { concat, keep, noGrad, reshape, scope, slice, tensor, zeros, type Tensor } from '../tensor/index.js';
import type { NamedParams } from './params.js';

/** 25 MiB of f32 per bucket (PyTorch DDP's default). */
export const DEFAULT_BUCKET_BYTES = 25 << 20;

/** What the trainer needs to run data parallel. */
export interface DataParallel {
  collective: Collective;
  /** shard the AdamW moments across ranks (ZeRO-1, see zero.ts) */
  zero?: boolean;
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

/** One small all-reduce of what every rank must agree on before the gradients move. */
export function reduceStepStats(
  c: Collective,
  lossSum: number,
  bad: boolean,
  params: NamedParams,
): StepStats {
  const local = [lossSum, bad ? 1 : 0, ...params.map(([, p]) => (p.grad ? 1 : 0))];
  if (c.worldSize === 1) return { lossSum, anyBad: bad, hasGrad: params.map(([, p]) => !!p.grad) };
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
