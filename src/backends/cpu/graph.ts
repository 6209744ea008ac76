// Graph capture on the CPU: a recorder that gives the exact semantics of a CUDA graph, so code
// that captures and replays (the decode step, the training step) is tested without a GPU.
//
// While a capture is open every kernel call is recorded (its name, its buffer references and a
// copy of its scalar arguments) and NOT run; `read` and `synchronize` throw; `write` records a
// snapshot of its data, or a reference for a registered input (re-read at every replay).
// Buffers allocated or freed during the capture belong to the graph's private pool, as on CUDA:
// what the recorded calls touch is never handed to anyone else while the graph lives.

import type { GraphCapture, HostArray } from '../backend.js';

/** Arrays held by one graph: buffers freed inside its capture (or later, if allocated there). */
export class GraphPool {
  /** freed arrays by `${dtype}:${length}`, reused by allocations of the same capture */
  readonly free = new Map<string, HostArray[]>();
  /** true while its capture is open: only then are freed arrays handed out again */
  open = true;
  destroyed = false;

  take(key: string): HostArray | undefined {
    return this.open ? this.free.get(key)?.pop() : undefined;
  }

  put(key: string, data: HostArray): void {
    let list = this.free.get(key);
    if (!list) this.free.set(key, (list = []));
    list.push(data);
  }
}

/** One recorded call: the backend method (unwrapped) and its arguments as captured. */
interface Call {
  name: string;
  run: (...args: unknown[]) => void;
  args: unknown[];
}

/** A copy of an argument as the kernel must see it at replay: arrays and parameter records copied. */
function snapshotArg(a: unknown, isBuffer: (x: unknown) => boolean): unknown {
  if (Array.isArray(a)) return [...(a as unknown[])];
  if (a !== null && typeof a === 'object' && !isBuffer(a) && !ArrayBuffer.isView(a)) return { ...a };
  return a;
}

/** The open capture of a CPU backend: the call list being recorded and its pool. */
export class Recorder {
  readonly calls: Call[] = [];
  readonly pool = new GraphPool();
  private readonly inputs: Set<HostArray>;

  constructor(
    inputs: readonly HostArray[],
    private readonly isBuffer: (x: unknown) => boolean,
  ) {
    this.inputs = new Set(inputs);
  }

  record(name: string, run: (...args: unknown[]) => void, args: unknown[]): void {
    this.calls.push({ name, run, args: args.map((a) => snapshotArg(a, this.isBuffer)) });
  }

  /** write(buf, data, offset): a registered input by reference, anything else as a snapshot */
  recordWrite<B>(
    run: (buf: B, data: HostArray, offset: number) => void,
    buf: B,
    data: HostArray,
    offset: number,
  ): void {
    const src = this.inputs.has(data) ? data : data.slice();
    this.calls.push({ name: 'write', run: run as (...args: unknown[]) => void, args: [buf, src, offset] });
  }

  static refuse(call: string): Error {
    return new Error(
      `cpu backend: ${call} inside a graph capture (a capture records kernels without running ` +
        `them: read results after replay(), outside the captured function)`,
    );
  }
}

/** The finished graph: replays the recorded calls in order on `self`. */
export class CpuGraph implements GraphCapture {
  private calls: Call[] | null;

  constructor(
    calls: Call[],
    private readonly pool: GraphPool,
    private readonly self: unknown,
    private readonly capturing: () => boolean,
    private readonly release: (pool: GraphPool) => void,
  ) {
    this.calls = calls;
    pool.open = false;
  }

  get nodes(): number {
    return this.calls?.length ?? 0;
  }

  replay(): void {
    if (!this.calls) throw new Error('cpu backend: replay of a destroyed graph');
    if (this.capturing()) throw new Error('cpu backend: replay of a graph inside another graph capture');
    for (const c of this.calls) c.run.apply(this.self, c.args);
  }

  destroy(): void {
    if (!this.calls) return;
    this.calls = null;
    this.pool.destroyed = true;
    this.release(this.pool);
  }
}
