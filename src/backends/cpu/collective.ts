// The CPU collective: processes on one machine (or several), through the process group's TCP star
// on rank 0 (../group.ts). Values travel as host arrays read and written through the backend;
// sums are taken in f64 in rank order on rank 0, so every rank gets the same, deterministic result.
// reduceScatter is an all-reduce followed by this rank's chunk: simple, and CPU jobs are small.

import type { Backend, DeviceBuffer } from '../backend.js';
import {
  checkCollectiveSizes,
  type Collective,
  type PendingCollective,
  type ReduceKind,
} from '../collective.js';
import type { ProcessGroup } from '../group.js';

function floats(b: Backend, x: DeviceBuffer, what: string): Float32Array | Float64Array {
  const h = b.read(x);
  if (!(h instanceof Float32Array || h instanceof Float64Array))
    throw new Error(`cpu collective: ${what} needs an f32 or f64 buffer, got ${x.dtype}`);
  return h;
}

export class CpuCollective implements Collective {
  readonly kind = 'cpu';
  readonly rank: number;
  readonly worldSize: number;

  constructor(
    readonly group: ProcessGroup,
    private readonly backend: Backend,
  ) {
    this.rank = group.rank;
    this.worldSize = group.worldSize;
  }

  allReduce(x: DeviceBuffer, op: ReduceKind): void {
    if (this.worldSize === 1) return;
    this.backend.write(x, this.group.allReduce(floats(this.backend, x, 'allReduce'), op));
  }

  /** The buffers end to end in one message (the star's cost is per message), then back in place. */
  allReduceManyAsync(xs: DeviceBuffer[], op: ReduceKind): PendingCollective {
    if (this.worldSize === 1) return { wait: () => {} };
    const parts = xs.map((x) => floats(this.backend, x, 'allReduceMany'));
    const f64 = parts.some((p) => p instanceof Float64Array);
    const all = new (f64 ? Float64Array : Float32Array)(parts.reduce((a, p) => a + p.length, 0));
    let off = 0;
    for (const p of parts) {
      all.set(p, off);
      off += p.length;
    }
    const sum = this.group.allReduce(all, op);
    off = 0;
    xs.forEach((x, i) => {
      const n = parts[i].length;
      this.backend.write(
        x,
        parts[i] instanceof Float64Array
          ? sum.subarray(off, off + n)
          : Float32Array.from(sum.subarray(off, off + n)),
      );
      off += n;
    });
    return { wait: () => {} };
  }

  reduceScatter(x: DeviceBuffer, out: DeviceBuffer, op: ReduceKind): void {
    checkCollectiveSizes('cpu collective', 'reduceScatter', x, out, this.worldSize);
    const all = this.group.allReduce(floats(this.backend, x, 'reduceScatter'), op);
    const n = out.length;
    this.backend.write(out, all.subarray(this.rank * n, (this.rank + 1) * n));
  }

  allGather(x: DeviceBuffer, out: DeviceBuffer): void {
    checkCollectiveSizes('cpu collective', 'allGather', x, out, this.worldSize);
    this.backend.write(out, this.group.allGather(floats(this.backend, x, 'allGather')));
  }

  broadcast(x: DeviceBuffer, root: number): void {
    if (this.worldSize === 1) return;
    this.backend.write(x, this.group.broadcast(floats(this.backend, x, 'broadcast'), root));
  }

  barrier(): void {
    this.group.barrier();
  }

  close(): void {
    this.group.close();
  }
}
