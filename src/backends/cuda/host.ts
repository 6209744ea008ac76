// What a kernel module's launchers (elementwise.ts, reduce.ts, rows.ts, sequence.ts, attention.ts,
// ssd.ts) need from the backend: buffers checked by dtype, device scratch, the compiled kernels of
// a module, and the launch-shape helpers they share. cuda/index.ts implements Host; each module
// file holds its kernel signature table beside the launchers that use it.

import type { DeviceBuffer, DType } from '../backend.js';
import type { GraphPool } from './allocator.js';
import type { Driver } from './driver.js';
import type { Arg, Kernel } from './kernels.js';

export class CudaBuffer implements DeviceBuffer {
  /** false once freed */
  live = true;
  /** the graph whose capture allocated it: its block goes back to that graph's pool */
  owner: GraphPool | null = null;
  constructor(
    readonly dtype: DType,
    readonly length: number,
    /** device address (0 for an empty buffer) */
    readonly ptr: number,
    /** bytes of the allocator block behind it */
    readonly blockSize: number,
  ) {}
}

export interface Host {
  readonly driver: Driver;
  /** multiprocessors of the device */
  readonly sms: number;
  /** `name` of kernels/<module>.cu with its argument kinds, compiled with `defines` */
  kernel(module: string, name: string, signature: string, defines?: Record<string, number>): Kernel;
  /** the CUDA buffer behind buf (checked: from this backend, not freed) */
  buf(buf: DeviceBuffer, what: string): CudaBuffer;
  /** device address of an f32 buffer */
  f(buf: DeviceBuffer, what: string): number;
  /** device address of an i32 buffer */
  i32(buf: DeviceBuffer, what: string): number;
  /** device scratch for one call, freed (to the allocator's cache) once its kernels are queued */
  scratch(length: number, dtype?: DType): CudaBuffer;
  free(buf: DeviceBuffer): void;
  fill(buf: DeviceBuffer, value: number): void;
  /** (outer, n, inner) -> (outer, inner) sums of device addresses (reduce.ts) */
  sumInto(x: number, out: number, outer: number, n: number, inner: number): void;
}

/** threads per block of the grid-stride kernels */
export const THREADS = 256;

/** Grid for a grid-stride loop over n items. */
export function grid1(h: Host, n: number, threads = THREADS): [number, number, number] {
  return [Math.max(0, Math.min(Math.ceil(n / threads), h.sms * 32)), 1, 1];
}

/** A module's launchers: `k(name)` compiles/looks up a kernel, `run1` launches a grid-stride loop. */
export function moduleKernels<Sigs extends Record<string, string>>(module: string, signatures: Sigs) {
  const k = (h: Host, name: keyof Sigs & string, defines?: Record<string, number>): Kernel =>
    h.kernel(module, name, signatures[name], defines);
  const run1 = (h: Host, name: keyof Sigs & string, n: number, args: Arg[]): void => {
    if (n <= 0) return;
    k(h, name).launch(grid1(h, n), THREADS, 0, args);
  };
  return { k, run1 };
}

/** Block size for one-block-per-row kernels. */
export function rowThreads(cols: number): number {
  if (cols <= 32) return 32;
  if (cols <= 64) return 64;
  if (cols <= 128) return 128;
  if (cols <= 1024) return 256;
  if (cols <= 8192) return 512;
  return 1024;
}

/** Blocks for the row-loop backward kernels (each writes one row of partial column sums). */
export function partialBlocks(h: Host, rows: number): number {
  return Math.max(1, Math.min(rows, h.sms * 4));
}

export function roundUp(n: number, m: number): number {
  return Math.ceil(n / m) * m;
}

/** storage codes of the glue kernels (0 f32, 1 bf16, 2 f16); `what` names the buffer in errors */
export function storage(dtype: DType, what: string): number {
  if (dtype === 'f32') return 0;
  if (dtype === 'bf16') return 1;
  if (dtype === 'f16') return 2;
  throw new Error(`cuda backend: ${what} must be f32, bf16 or f16, got ${dtype}`);
}

/** dtype codes of common.cuh (DT_F32 0, DT_F64 1, DT_I32 2, DT_BF16 3, DT_F16 4): cast_any, decode, gemv */
export const DTYPE_CODE: Record<DType, number> = { f32: 0, f64: 1, i32: 2, bf16: 3, f16: 4 };

/** the DTYPE_CODE of an output that must be f32, bf16 or f16 */
export function outCode(dtype: DType, what: string): number {
  storage(dtype, what);
  return DTYPE_CODE[dtype];
}
