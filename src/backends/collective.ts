// Collectives across processes (ranks) for data parallelism: NCCL on GPUs
// (cuda/nccl.ts), a TCP star through rank 0 on CPUs (cpu/collective.ts), and a world of one.
//
// Every call is collective: all ranks make the same calls in the same order with the same sizes.
// Calls are in place or into a caller-allocated output and, as kernels, are queued on the
// backend's stream where there is one (NCCL); the CPU collective returns when the result is there.
//
// Shapes (n = elements per rank, W = world size):
//   allReduce(x)              x is (n) on every rank; afterwards every rank holds the sum (or mean)
//   reduceScatter(x, out)     x is (W * n); out (n) on rank r = reduction of chunk r of every x
//   allGather(x, out)         x is (n); out (W * n) = every rank's x in rank order
//   broadcast(x, root)        x is (n); afterwards every rank holds root's x

import type { DeviceBuffer } from './backend.js';

export type ReduceKind = 'sum' | 'avg';

export interface Collective {
  /** 'nccl', 'cpu' or 'single' */
  readonly kind: string;
  readonly rank: number;
  readonly worldSize: number;
  allReduce(x: DeviceBuffer, op: ReduceKind): void;
  reduceScatter(x: DeviceBuffer, out: DeviceBuffer, op: ReduceKind): void;
  allGather(x: DeviceBuffer, out: DeviceBuffer): void;
  broadcast(x: DeviceBuffer, root: number): void;
  /**
   * Start an all-reduce that may overlap with the work queued after it (NCCL: on its own stream,
   * ordered after the work queued before it by an event); the buffer must stay allocated and
   * unchanged until `wait()`, which orders the work queued after that call behind the result.
   * Optional: `startAllReduce` runs the plain all-reduce where it is missing.
   */
  allReduceAsync?(x: DeviceBuffer, op: ReduceKind): PendingCollective;
  /**
   * All-reduce several buffers in place as one collective (NCCL: a group of all-reduces, one
   * launch), started as allReduceAsync starts one: no copy into one flat buffer. Optional.
   */
  allReduceManyAsync?(xs: DeviceBuffer[], op: ReduceKind): PendingCollective;
  /** reduceScatter as allReduceAsync starts an all-reduce (x and out stay allocated until `wait()`) */
  reduceScatterAsync?(x: DeviceBuffer, out: DeviceBuffer, op: ReduceKind): PendingCollective;
  /** returns once every rank has called it */
  barrier(): void;
  /** leave the group (every rank at the end; a peer that leaves without it is reported as lost) */
  close(): void;
}

/** An all-reduce started by `allReduceAsync`. */
export interface PendingCollective {
  /** order the work queued from now on behind the result (at most once) */
  wait(): void;
}

const DONE: PendingCollective = { wait: () => {} };

/** `c.allReduceAsync` where the collective has it, else the all-reduce at once. */
export function startAllReduce(c: Collective, x: DeviceBuffer, op: ReduceKind): PendingCollective {
  if (c.allReduceAsync) return c.allReduceAsync(x, op);
  c.allReduce(x, op);
  return DONE;
}

/** `c.reduceScatterAsync` where the collective has it, else the reduce-scatter at once. */
export function startReduceScatter(
  c: Collective,
  x: DeviceBuffer,
  out: DeviceBuffer,
  op: ReduceKind,
): PendingCollective {
  if (c.reduceScatterAsync) return c.reduceScatterAsync(x, out, op);
  c.reduceScatter(x, out, op);
  return DONE;
}

/** Size checks shared by the implementations; `who` names the collective in messages. */
export function checkCollectiveSizes(
  who: string,
  op: 'reduceScatter' | 'allGather',
  x: DeviceBuffer,
  out: DeviceBuffer,
  world: number,
): void {
  const [big, small] = op === 'reduceScatter' ? [x, out] : [out, x];
  if (big.length !== small.length * world)
    throw new Error(
      `${who}: ${op}: the full buffer has ${big.length} elements, expected world size ${world} x ${small.length}`,
    );
  if (x.dtype !== out.dtype) throw new Error(`${who}: ${op}: dtypes differ (${x.dtype}, ${out.dtype})`);
}
