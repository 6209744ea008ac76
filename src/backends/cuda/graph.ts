// CUDA graphs: stream capture of the backend's one stream, replayed with one cuGraphLaunch.
//
// During a capture (cuStreamBeginCapture in relaxed mode, so the private pool may still call
// cuMemAlloc) every launch, GEMM, memset and copy queued on the stream becomes a node instead of
// running. Host writes become copies from page-locked staging (cuMemHostAlloc): a copy from
// pageable memory cannot be captured. The staging of a registered input is refilled from its host
// array before every launch (after the previous launch has read it); every other staging keeps
// the snapshot taken at capture. Blocks allocated or freed during the capture stay in the graph's
// private pool (allocator.ts GraphPool) until destroy.

import koffi from 'koffi';
import type { DType, GraphCapture, HostArray } from '../backend.js';
import { DTYPE_BYTES } from '../backend.js';
import { GraphPool } from './allocator.js';
import type { Driver } from './driver.js';

/** One host-to-device copy captured from page-locked staging. */
interface Staging {
  /** host address of the staging (cuMemHostAlloc) */
  ptr: number;
  /** the staging as the destination's host array type */
  view: HostArray;
  /** the registered input refilled into it before every launch, or null for a constant */
  source: HostArray | null;
}

/** Page-locked bytes taken before the capture begins, for its small writes (token ids, constants). */
const ARENA_BYTES = 256 << 10;

/** What an open capture collects: its pool, its staged writes and the registered inputs. */
export class CaptureState {
  readonly pool = new GraphPool();
  readonly staging: Staging[] = [];
  private readonly inputs: Set<HostArray>;
  /** page-locked blocks to free with the graph */
  private readonly hostBlocks: number[] = [];
  private arena = 0;
  private arenaUsed = 0;

  /** Takes the staging arena (before cuStreamBeginCapture: no host allocation in most captures). */
  constructor(
    private readonly driver: Driver,
    inputs: readonly HostArray[],
  ) {
    this.inputs = new Set(inputs);
    this.arena = driver.hostAlloc(ARENA_BYTES);
    this.hostBlocks.push(this.arena);
  }

  /** page-locked room for `bytes`: from the arena, else a block of its own (allocated during the capture) */
  private room(bytes: number): number {
    const at = Math.ceil(this.arenaUsed / 64) * 64;
    if (at + bytes <= ARENA_BYTES) {
      this.arenaUsed = at + bytes;
      return this.arena + at;
    }
    const ptr = this.driver.hostAlloc(bytes);
    this.hostBlocks.push(ptr);
    return ptr;
  }

  /** Queue (record) the copy of `data` into device address `dst` of a `dtype` buffer through staging. */
  stageWrite(driver: Driver, dst: number, dtype: DType, data: HostArray): void {
    const bytes = data.length * DTYPE_BYTES[dtype];
    const ptr = this.room(bytes);
    const view = hostView(dtype, ptr, data.length);
    this.staging.push({ ptr, view, source: this.inputs.has(data) ? data : null });
    view.set(data as Float32Array); // converted as the eager write converts (TypedArray.set)
    driver.copyToDeviceFrom(dst, ptr, bytes);
  }

  /** Free the pinned staging and give the pool's blocks back (after the graph is gone). */
  release(driver: Driver, releaseBlock: (ptr: number, size: number) => void): void {
    this.pool.open = false;
    this.pool.destroyed = true;
    this.pool.drain(releaseBlock);
    this.staging.length = 0;
    for (const p of this.hostBlocks.splice(0)) driver.freeHost(p);
  }
}

/** A typed array over page-locked host memory at `ptr`. */
function hostView(dtype: DType, ptr: number, length: number): HostArray {
  const buf = koffi.view(BigInt(ptr), length * DTYPE_BYTES[dtype]);
  switch (dtype) {
    case 'f32':
      return new Float32Array(buf);
    case 'f64':
      return new Float64Array(buf);
    case 'i32':
      return new Int32Array(buf);
    case 'bf16':
    case 'f16':
      return new Uint16Array(buf);
  }
}

/** An instantiated graph with its pool and staging. */
export class CudaGraph implements GraphCapture {
  private live = true;
  private readonly inputs: Staging[];
  /** recorded after each launch that read inputs: the next refill waits for it */
  private done = 0;
  private pending = false;

  constructor(
    private readonly driver: Driver,
    private graph: number,
    private exec: number,
    readonly nodes: number,
    private readonly state: CaptureState,
    private readonly releaseBlock: (ptr: number, size: number) => void,
    private readonly capturing: () => boolean,
  ) {
    this.inputs = state.staging.filter((s) => s.source !== null);
    state.pool.open = false;
  }

  replay(): void {
    if (!this.live) throw new Error('cuda backend: replay of a destroyed graph');
    if (this.capturing()) throw new Error('cuda backend: replay of a graph inside another graph capture');
    if (this.inputs.length) {
      // the previous launch's copies must have read the staging before it is refilled
      if (this.pending) this.driver.waitEvent(this.done);
      for (const s of this.inputs) s.view.set(s.source as Float32Array);
      if (!this.done) this.done = this.driver.createEvent();
    }
    this.driver.launchGraph(this.exec);
    if (this.inputs.length) {
      this.driver.record(this.done);
      this.pending = true;
    }
  }

  destroy(): void {
    if (!this.live) return;
    this.live = false;
    // queued launches finish before their graph, staging and blocks go
    this.driver.synchronize();
    this.driver.destroyGraph(this.graph, this.exec);
    this.graph = 0;
    this.exec = 0;
    if (this.done) this.driver.destroyEvent(this.done);
    this.state.release(this.driver, this.releaseBlock);
  }
}
