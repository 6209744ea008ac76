// Kernel modules and launches. Each kernels/<module>.cu is compiled by NVRTC on first use (once
// per set of -D defines) and loaded into the context. Each kernel owns a block of host memory
// at a stable address holding its argument values and the void*[] that cuLaunchKernel reads,
// so a launch writes the values with a DataView and makes one FFI call.

import { existsSync, readFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import koffi from 'koffi';
import { CudaError, type Driver } from './driver.js';
import type { Nvrtc } from './nvrtc.js';

/**
 * Argument kinds of a kernel signature: p pointer, i int32, u uint32, f float, d double,
 * l int64, D Dims8 (8 x int64), S SsdDims (8 x int32).
 */
export type ArgKind = 'p' | 'i' | 'u' | 'f' | 'd' | 'l' | 'D' | 'S';

const ARG_BYTES: Record<ArgKind, number> = { p: 8, i: 4, u: 4, f: 4, d: 8, l: 8, D: 64, S: 32 };

/** struct SsdDims of kernels/ssd.cu and kernels/ssd_fast.cu, field by field (the 'S' argument) */
export interface SsdDims {
  batch: number;
  seqLen: number;
  heads: number;
  groups: number;
  headDim: number;
  dState: number;
  chunk: number;
  nChunks: number;
}

/** the fields of SsdDims in the order of the CUDA struct */
const SSD_DIMS_FIELDS = [
  'batch',
  'seqLen',
  'heads',
  'groups',
  'headDim',
  'dState',
  'chunk',
  'nChunks',
] as const;

export type Arg = number | readonly number[] | SsdDims;

const TWO32 = 4294967296;

/** The folder of the .cu sources: next to this file (src/ or a build that copied them), or src/ from dist/. */
export function kernelsDir(): string {
  const here = dirname(fileURLToPath(import.meta.url));
  const candidates = [
    process.env.MOHAWK_CUDA_KERNELS,
    join(here, 'kernels'),
    join(here, '..', '..', '..', 'src', 'backends', 'cuda', 'kernels'),
  ].filter((d): d is string => !!d);
  for (const d of candidates) if (existsSync(join(d, 'common.cuh'))) return d;
  throw new CudaError(
    `cuda backend: kernel sources not found (looked for common.cuh in ${candidates.join(', ')}; ` +
      'set MOHAWK_CUDA_KERNELS to the folder src/backends/cuda/kernels)',
  );
}

/** The source of a module with common.cuh pasted in (NVRTC gets no include paths of ours). */
export function moduleSource(dir: string, module: string): string {
  const common = readFileSync(join(dir, 'common.cuh'), 'utf8').replace('#pragma once', '');
  const src = readFileSync(join(dir, `${module}.cu`), 'utf8');
  if (!src.includes('#include "common.cuh"')) return src;
  return src.replace('#include "common.cuh"', common);
}

/** Per-kernel device times: while enabled, events are recorded around every launch. */
export class Profiler {
  private readonly pool: number[] = [];
  private marks: { name: string; start: number; end: number }[] = [];

  /** gemmShapes: GEMMs are named with their shapes (m n k, transposes), one entry per shape */
  constructor(
    private readonly driver: Driver,
    readonly gemmShapes = false,
  ) {}

  around<T>(name: string, fn: () => T): T {
    return this.timed(name, fn, () => true);
  }

  /** As around, for an attempt that may launch nothing (false): only a true one is counted. */
  attempt(name: string, fn: () => boolean): boolean {
    return this.timed(name, fn, (ok) => ok);
  }

  private timed<T>(name: string, fn: () => T, counts: (r: T) => boolean): T {
    const start = this.pool.pop() ?? this.driver.createEvent();
    const end = this.pool.pop() ?? this.driver.createEvent();
    this.driver.record(start);
    const r = fn();
    this.driver.record(end);
    if (counts(r)) this.marks.push({ name, start, end });
    else this.pool.push(start, end);
    return r;
  }

  /** Wait for the device; milliseconds and calls per name, largest first. */
  collect(): { name: string; calls: number; ms: number }[] {
    const acc = new Map<string, { calls: number; ms: number }>();
    for (const m of this.marks) {
      const ms = this.driver.elapsed(m.start, m.end);
      const a = acc.get(m.name) ?? { calls: 0, ms: 0 };
      a.calls++;
      a.ms += ms;
      acc.set(m.name, a);
      this.pool.push(m.start, m.end);
    }
    this.marks = [];
    return [...acc].map(([name, a]) => ({ name, ...a })).sort((x, y) => y.ms - x.ms);
  }
}

export class Kernel {
  private readonly mem: unknown;
  private readonly view: DataView;
  private readonly offsets: number[];
  private readonly kinds: ArgKind[];
  private readonly params: number;
  launches = 0;
  private dynamicShared = 0;

  constructor(
    private readonly driver: Driver,
    private readonly fn: number,
    readonly name: string,
    signature: string,
    private readonly syncEach: boolean,
    private readonly profiler: () => Profiler | null,
    /** true while a graph capture is open: launches are recorded, so nothing waits for them */
    private readonly capturing: () => boolean = () => false,
  ) {
    this.kinds = [...signature] as ArgKind[];
    for (const k of this.kinds) {
      if (!(k in ARG_BYTES))
        throw new Error(`cuda backend: bad argument kind "${k}" in the signature of ${name}`);
    }
    const n = this.kinds.length;
    // [ void* params[n] | values, each 8-byte aligned ]
    let off = n * 8;
    this.offsets = this.kinds.map((k) => {
      const at = off;
      off += Math.ceil(ARG_BYTES[k] / 8) * 8;
      return at;
    });
    const bytes = Math.max(off, 8);
    this.mem = koffi.alloc('uint8_t', bytes);
    this.view = new DataView(koffi.view(this.mem, bytes));
    this.params = Number(koffi.address(this.mem));
    for (let i = 0; i < n; i++) this.writeU64(i * 8, this.params + this.offsets[i]);
  }

  private writeU64(off: number, v: number): void {
    if (v >= 0 && v < Number.MAX_SAFE_INTEGER) {
      this.view.setUint32(off, v % TWO32, true);
      this.view.setUint32(off + 4, Math.floor(v / TWO32), true);
    } else {
      this.view.setBigInt64(off, BigInt(Math.trunc(v)), true);
    }
  }

  /** Raise the dynamic shared memory limit of this kernel (needed above 48 KiB). */
  allowShared(bytes: number): void {
    if (bytes > 48 * 1024 && bytes > this.dynamicShared) {
      this.driver.setMaxDynamicShared(this.fn, bytes, this.name);
      this.dynamicShared = bytes;
    }
  }

  /** Queue one launch on the backend's stream; grid is (x, y, z), block is 1-D. */
  launch(grid: readonly [number, number, number], block: number, shared: number, args: readonly Arg[]): void {
    const kinds = this.kinds;
    if (args.length !== kinds.length) {
      throw new Error(`cuda backend: ${this.name} takes ${kinds.length} arguments, got ${args.length}`);
    }
    const v = this.view;
    for (let i = 0; i < kinds.length; i++) {
      const off = this.offsets[i];
      const a = args[i];
      switch (kinds[i]) {
        case 'p':
        case 'l':
          this.writeU64(off, a as number);
          break;
        case 'i':
          v.setInt32(off, a as number, true);
          break;
        case 'u':
          v.setUint32(off, (a as number) >>> 0, true);
          break;
        case 'f':
          v.setFloat32(off, a as number, true);
          break;
        case 'd':
          v.setFloat64(off, a as number, true);
          break;
        case 'D': {
          const arr = a as readonly number[];
          for (let j = 0; j < 8; j++) this.writeU64(off + 8 * j, j < arr.length ? arr[j] : 0);
          break;
        }
        case 'S': {
          const d = a as SsdDims;
          for (let j = 0; j < 8; j++) v.setInt32(off + 4 * j, d[SSD_DIMS_FIELDS[j]], true);
          break;
        }
      }
    }
    const [gx, gy, gz] = grid;
    if (gx === 0 || gy === 0 || gz === 0) return;
    const prof = this.profiler();
    if (prof)
      prof.around(this.name, () =>
        this.driver.launch(this.fn, gx, gy, gz, block, shared, this.params, this.name),
      );
    else this.driver.launch(this.fn, gx, gy, gz, block, shared, this.params, this.name);
    this.launches++;
    if (this.syncEach && !this.capturing()) {
      try {
        this.driver.synchronize();
      } catch (e) {
        throw new CudaError(`${(e as Error).message} (in or before kernel ${this.name})`);
      }
    }
  }
}

/** Compiles and loads modules on demand, and hands out their kernels. */
/**
 * What a module's launch code (attention-tc.ts, ssd-fast.ts) needs from the backend: its kernels
 * compiled with given defines, and device scratch buffers.
 */
export interface KernelHost<Name extends string, Buf extends { ptr: number }> {
  kernel(name: Name, defines: Record<string, number>): Kernel;
  scratch(length: number): Buf;
  release(buf: Buf): void;
}

/** Launch a module's kernel compiled with `defines`, allowing it `shared` bytes of dynamic shared memory. */
export function launchShared<Name extends string, Buf extends { ptr: number }>(
  host: KernelHost<Name, Buf>,
  name: Name,
  defines: Record<string, number>,
  grid: readonly [number, number, number],
  threads: number,
  shared: number,
  args: readonly Arg[],
): void {
  const k = host.kernel(name, defines);
  k.allowShared(shared);
  k.launch(grid, threads, shared, args);
}

export class KernelRegistry {
  private readonly modules = new Map<string, number>();
  private readonly kernels = new Map<string, Kernel>();
  private readonly dir: string;
  private readonly arch: string;
  private readonly syncEach = process.env.MOHAWK_CUDA_SYNC === '1';
  /** set to time every launch (CudaBackend.profile) */
  profiler: Profiler | null = null;
  /** set while a graph capture is open (CudaBackend.capture) */
  capturing = false;

  constructor(
    private readonly driver: Driver,
    private readonly nvrtc: Nvrtc,
  ) {
    this.dir = kernelsDir();
    const [major, minor] = driver.info.computeCapability;
    this.arch = `sm_${major}${minor}`;
  }

  get archName(): string {
    return this.arch;
  }

  private build(module: string, defines: Record<string, number>) {
    const defs = Object.entries(defines)
      .map(([k, v]) => `-D${k}=${v}`)
      .sort();
    const options = [`-arch=${this.arch}`, '-std=c++17', ...defs];
    if (existsSync('/usr/local/cuda/include')) options.push('-I/usr/local/cuda/include');
    return { modKey: `${module}${defs.join(' ')}`, what: `${module}.cu ${defs.join(' ')}`.trim(), options };
  }

  /** Compile the given modules concurrently (NVRTC on worker threads) and load them. */
  async prepare(list: { module: string; defines?: Record<string, number> }[]): Promise<void> {
    const todo = list
      .map((m) => ({ ...m, ...this.build(m.module, m.defines ?? {}) }))
      .filter(
        (m, i, all) => !this.modules.has(m.modKey) && all.findIndex((o) => o.modKey === m.modKey) === i,
      );
    const images = await Promise.all(
      todo.map((m) => this.nvrtc.compileAsync(moduleSource(this.dir, m.module), `${m.module}.cu`, m.options)),
    );
    todo.forEach((m, i) => this.modules.set(m.modKey, this.driver.loadModule(images[i], m.what)));
  }

  /** The kernel `name` of kernels/<module>.cu compiled with `defines`; `signature` lists its argument kinds. */
  get(module: string, name: string, signature: string, defines: Record<string, number> = {}): Kernel {
    const { modKey, what, options } = this.build(module, defines);
    const key = `${modKey}:${name}`;
    let k = this.kernels.get(key);
    if (k) return k;
    let mod = this.modules.get(modKey);
    if (mod === undefined) {
      const image = this.nvrtc.compile(moduleSource(this.dir, module), `${module}.cu`, options);
      try {
        mod = this.driver.loadModule(image, what);
      } catch (e) {
        if (!this.capturing) throw e;
        throw new CudaError(
          `cuda backend: kernel module ${what} was first used inside a graph capture and could not be ` +
            `loaded there (${(e as Error).message}); run the captured work once eagerly first`,
        );
      }
      this.modules.set(modKey, mod);
    }
    k = new Kernel(
      this.driver,
      this.driver.getFunction(mod, name),
      name,
      signature,
      this.syncEach,
      () => this.profiler,
      () => this.capturing,
    );
    this.kernels.set(key, k);
    return k;
  }

  /** launches per kernel name, for profiles */
  launchCounts(): Record<string, number> {
    const out: Record<string, number> = {};
    for (const k of this.kernels.values()) out[k.name] = (out[k.name] ?? 0) + k.launches;
    return out;
  }
}
