// The CUDA backend against the CPU reference backend: every kernel forward and backward, on
// odd shapes (sizes 1, non-powers of two, T not a multiple of the chunk), f32 and the 16-bit
// storage types where they apply, plus the caching allocator and tensor scopes.
//
// Without a GPU (no libcuda.so.1, or no device) the device suites skip with the reason; set
// MOHAWK_REQUIRE_CUDA=1 to make that a failure instead (scripts/gpu-check.sh does). The
// allocator, axis-merging and kernel-signature checks run everywhere.
//
// Tolerances: errors are measured against the largest magnitude of the reference tensor
// (`tol * max|ref|`); f32 kernels that reduce in a different order than the CPU's f64 loops get
// 1e-5 to 1e-4 by reduction length (the SSD scan 1e-4 to 2e-4: its chunk cumsums are f32); products with bf16 operands are compared with the CPU
// product of the same bf16-rounded values; 16-bit conversions and the dropout mask are exact.

import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { after, afterEach, before, beforeEach, describe, it } from 'node:test';
import {
  UNARY_OPS,
  type Backend,
  type DeviceBuffer,
  type DType,
  type HostArray,
  type SsdParams,
} from '../src/backends/backend.js';
import { CpuBackend } from '../src/backends/cpu/index.js';
import { bf16ToF32, f16ToF32, f32ToBf16, f32ToF16 } from '../src/backends/dtype.js';
import { CachingAllocator, GraphPool, sizeClass } from '../src/backends/cuda/allocator.js';
import { CudaBackend, KERNEL_SIGNATURES, collapseAxes } from '../src/backends/cuda/index.js';
import { gemmTuneCandidates } from '../src/backends/cuda/cublas.js';
import { kernelsDir } from '../src/backends/cuda/kernels.js';
import { gemvSplits, gemvSwitch, gemvTuning } from '../src/backends/cuda/gemv.js';
import * as T from '../src/tensor/index.js';
import { Random } from '../src/util/random.js';
import { BatchEngine } from '../src/generate/batch.js';
import { generateIds } from '../src/generate/generate.js';
import { decodeGreedy, tinyStudent } from './decode-helpers.js';
import type { Batch, BatchSource } from '../src/data/index.js';
import { toTensors } from '../src/data/index.js';
import { hiddenStateAlignmentStep, matrixOrientationStep, stage3Loss } from '../src/distill/stages.js';
import { transferStudent } from '../src/distill/transfer.js';
import { train } from '../src/train/index.js';
import { studentConfigFor } from '../src/distill/transfer.js';
import { StudentLM } from '../src/models/phi-mamba.js';
import type { CausalLM } from '../src/models/types.js';
import { assertClose, tinyLlama, tinyPhi, twoConsumers, withEnv } from './helpers.js';
import { MLP } from '../src/nn/mlp.js';
import { DiscreteMamba2 } from '../src/nn/discrete-mamba2.js';

// ---- checks that need no GPU ------------------------------------------------------------------

describe('cuda: caching allocator (no GPU needed)', () => {
  it('rounds to size classes with at most 12.5% waste and reuses freed blocks', () => {
    for (const n of [1, 511, 512, 513, 4000, 1 << 20, (1 << 20) + 1, 3e6, 1e9 + 7]) {
      const c = sizeClass(n);
      assert.ok(c >= n, `class ${c} < ${n}`);
      assert.ok(c <= Math.max(512, n * 1.125 + 512), `class ${c} too large for ${n}`);
    }
    let next = 4096;
    const freed: number[] = [];
    const raw = { alloc: (b: number) => ((next += b + 4096), next), free: (p: number) => void freed.push(p) };
    const a = new CachingAllocator(raw);
    const x = a.allocate(1000);
    const y = a.allocate(3000);
    a.release(x.ptr, x.size);
    const z = a.allocate(900); // same 1024-byte class: the block comes back
    assert.equal(z.ptr, x.ptr);
    assert.equal(a.getStats().cacheHits, 1);
    assert.equal(a.getStats().driverAllocs, 2);
    a.release(y.ptr, y.size);
    a.release(z.ptr, z.size);
    assert.equal(a.getStats().cachedBytes, x.size + y.size);
    a.emptyCache();
    assert.deepEqual(freed.sort(), [x.ptr, y.ptr].sort());
    assert.equal(a.getStats().reservedBytes, 0);
  });

  it('frees its cache and retries once when the device is out of memory', () => {
    let budget = 4096;
    let next = 1;
    const raw = {
      alloc: (b: number) => (b <= budget ? ((budget -= b), (next += b)) : 0),
      free: () => void (budget += 2048),
    };
    const a = new CachingAllocator(raw);
    const x = a.allocate(2048);
    a.release(x.ptr, x.size);
    const y = a.allocate(4096); // needs the cached 2048 back
    assert.equal(y.size, 4096);
    assert.throws(() => a.allocate(8192), /out of device memory allocating 8.0 KiB/);
  });

  it('a graph pool hands freed blocks out only inside its open capture, and drains to the allocator', () => {
    const pool = new GraphPool();
    pool.put(4096, 1024);
    pool.put(8192, 1024);
    pool.put(12288, 2048);
    assert.equal(pool.heldBytes, 4096);
    assert.equal(pool.take(1024), 8192); // last freed first
    assert.equal(pool.take(512), 0); // no block of that class
    pool.put(8192, 1024);
    pool.open = false; // the capture ended: its blocks stay with the graph
    assert.equal(pool.take(1024), 0);
    const back: [number, number][] = [];
    pool.drain((ptr, size) => back.push([ptr, size]));
    assert.deepEqual(
      back.sort((x, y) => x[0] - y[0]),
      [
        [4096, 1024],
        [8192, 1024],
        [12288, 2048],
      ],
    );
    assert.equal(pool.heldBytes, 0);
  });

  it('merges contiguous axes and drops size-1 axes', () => {
    assert.deepEqual(collapseAxes([2, 3, 4], [[12, 4, 1]]), { shape: [24], strides: [[1]] });
    assert.deepEqual(
      collapseAxes(
        [2, 1, 3],
        [
          [3, 3, 1],
          [0, 0, 1],
        ],
      ),
      {
        shape: [2, 3],
        strides: [
          [3, 1],
          [0, 1],
        ],
      },
    );
    assert.deepEqual(collapseAxes([4, 5], [[1, 4]]), { shape: [4, 5], strides: [[1, 4]] });
    assert.deepEqual(collapseAxes([], [[]]), { shape: [], strides: [[]] });
  });

  it('declares every kernel with the argument kinds of its CUDA signature', () => {
    const dir = kernelsDir();
    const kind = (param: string): string => {
      const p = param.replace(/\\/g, ' ').trim(); // a kernel declared in a macro continues lines with a backslash
      if (p.includes('*')) return 'p';
      const type = p.replace(/^const\s+/, '').split(/\s+/)[0];
      const map: Record<string, string> = {
        int: 'i',
        u32: 'u',
        float: 'f',
        double: 'd',
        i64: 'l',
        Dims8: 'D',
        SsdDims: 'S',
      };
      assert.ok(type in map, `unknown parameter type in "${p}"`);
      return map[type];
    };
    for (const [module, kernels] of Object.entries(KERNEL_SIGNATURES)) {
      const src = readFileSync(join(dir, `${module}.cu`), 'utf8');
      const found = new Map<string, string>();
      const re = /extern "C" __global__ void(?:\s+__launch_bounds__\([^)]*\))?\s+(\w+)\(([^)]*)\)/g;
      for (const m of src.matchAll(re)) found.set(m[1], m[2].split(',').map(kind).join(''));
      // kernels stamped out by a macro: #define M(NAME, ...) ... void NAME(...), then lines M(name, ...)
      for (const m of src.matchAll(/#define (\w+)\(NAME\b[^)]*\)[\s\S]*?__global__ void NAME\(([^)]*)\)/g)) {
        found.delete('NAME');
        const sig = m[2].split(',').map(kind).join('');
        for (const use of src.matchAll(new RegExp(`^${m[1]}\\((\\w+)`, 'gm'))) found.set(use[1], sig);
      }
      for (const [name, sig] of Object.entries(kernels)) {
        assert.equal(found.get(name), sig, `${module}.cu: ${name}`);
      }
      assert.equal(found.size, Object.keys(kernels).length, `${module}.cu declares kernels not in the table`);
    }
  });
});

// ---- the device -------------------------------------------------------------------------------

function openGpu(): { gpu: CudaBackend | null; skip: string | false } {
  try {
    return { gpu: new CudaBackend(), skip: false };
  } catch (e) {
    const msg = (e as Error).message.split('\n')[0];
    if (process.env.MOHAWK_REQUIRE_CUDA === '1') throw e;
    return { gpu: null, skip: `no CUDA device: ${msg}` };
  }
}

const { gpu: maybeGpu, skip } = openGpu();
const gpu = maybeGpu as CudaBackend;
const cpu = new CpuBackend();
const rng = new Random(20240607);

interface Pair {
  c: DeviceBuffer;
  g: DeviceBuffer;
}

const held: [Backend, DeviceBuffer][] = [];

function hold(be: Backend, b: DeviceBuffer): DeviceBuffer {
  held.push([be, b]);
  return b;
}

function host(dtype: DType, data: ArrayLike<number>): HostArray {
  switch (dtype) {
    case 'f32':
      return Float32Array.from(data);
    case 'f64':
      return Float64Array.from(data);
    case 'i32':
      return Int32Array.from(data);
    default:
      return Uint16Array.from(data);
  }
}

/** the same values on both backends */
function pair(data: ArrayLike<number>, dtype: DType = 'f32'): Pair {
  const h = host(dtype, data);
  const c = hold(cpu, cpu.alloc(dtype, h.length));
  const g = hold(gpu, gpu.alloc(dtype, h.length));
  cpu.write(c, h);
  gpu.write(g, h);
  return { c, g };
}

/** an output: zeros on the CPU, NaN on the GPU, so unwritten elements fail the comparison */
function out(n: number, dtype: DType = 'f32'): Pair {
  const c = hold(cpu, cpu.alloc(dtype, n));
  const g = hold(gpu, gpu.alloc(dtype, n));
  cpu.fill(c, 0);
  gpu.fill(g, dtype === 'i32' ? -12345 : NaN);
  return { c, g };
}

function randn(n: number, std = 1): Float32Array {
  return rng.normals(n, 0, std);
}

function uniform(n: number, lo: number, hi: number): Float32Array {
  return rng.uniforms(n, lo, hi);
}

function numbers(a: HostArray, dtype: DType): Float64Array {
  if (dtype === 'bf16') return Float64Array.from(a, bf16ToF32);
  if (dtype === 'f16') return Float64Array.from(a, f16ToF32);
  return Float64Array.from(a);
}

/** the largest finite magnitude */
function maxAbs(a: ArrayLike<number>): number {
  let m = 0;
  for (let i = 0; i < a.length; i++) if (Number.isFinite(a[i]) && Math.abs(a[i]) > m) m = Math.abs(a[i]);
  return m;
}

/** GPU vs CPU with error at most tol * max|ref| (plus `floor`) */
function check(p: Pair, tol: number, what: string, floor = 1e-30): void {
  const buf = p.c as { dtype: DType };
  const ref = numbers(cpu.read(p.c), buf.dtype);
  const got = numbers(gpu.read(p.g), buf.dtype);
  assertClose(got, ref, tol * maxAbs(ref) + floor, what);
}

/** bit-exact equality of the raw values */
function checkExact(p: Pair, what: string): void {
  const ref = cpu.read(p.c);
  const got = gpu.read(p.g);
  assert.equal(got.length, ref.length, `${what}: length`);
  for (let i = 0; i < ref.length; i++) {
    if (!(Object.is(got[i], ref[i]) || (Number.isNaN(got[i]) && Number.isNaN(ref[i])))) {
      assert.fail(`${what}[${i}]: ${got[i]} vs ${ref[i]}`);
    }
  }
}

function both(fn: (be: Backend, side: 'c' | 'g') => void): void {
  fn(cpu, 'c');
  fn(gpu, 'g');
}

describe('cuda: selection without a GPU', { skip: skip ? false : 'a CUDA device is present' }, () => {
  it('useDevice("cuda") fails with a message naming what was looked for, and CPU stays the default', async () => {
    await assert.rejects(T.useDevice('cuda'), /libcuda\.so\.1|cuInit|no devices/);
    assert.equal(T.getBackend().name, 'cpu');
  });
});

describe('cuda backend vs cpu backend', { skip }, () => {
  const baseline = skip ? 0 : gpu.memoryStats().liveBuffers;

  before(async () => {
    if (skip) return;
    // compile every module at once on worker threads (each would otherwise compile at first use)
    const t0 = performance.now();
    await gpu.warmup({ attentionHeadDims: [16, 8, 32, 64, 80, 128, 5, 6] });
    console.log(`# warm-up (NVRTC, concurrent): ${(performance.now() - t0).toFixed(0)} ms`);
  });

  afterEach(() => {
    for (const [be, b] of held.splice(0)) be.free(b);
    if (!skip) assert.equal(gpu.memoryStats().liveBuffers, baseline, 'a test leaked device buffers');
  });

  after(() => {
    if (skip) return;
    console.log(`# ${gpu.describe()}`);
    const a = gpu.allocatorStats();
    console.log(`# allocator: ${a.driverAllocs} driver allocations, ${a.cacheHits} cache hits`);
    const c = gpu.nvrtc;
    console.log(
      `# NVRTC: ${c.compiled} modules compiled in ${c.compileMs.toFixed(0)} ms, ${c.cacheHits} loaded from the disk cache`,
    );
  });

  // ---- memory ---------------------------------------------------------------------------------

  it('writes and reads every dtype, at offsets and empty', () => {
    for (const dtype of ['f32', 'f64', 'i32', 'bf16', 'f16'] as DType[]) {
      const data = host(dtype, dtype === 'i32' ? [1, -2, 3, 2147483647, -2147483648] : [1, 2, 3, 4, 5]);
      const b = hold(gpu, gpu.alloc(dtype, 7));
      gpu.fill(b, 0);
      gpu.write(b, data, 2);
      const r = gpu.read(b);
      assert.deepEqual(Array.from(r), [0, 0, ...Array.from(data)], dtype);
    }
    const e = hold(gpu, gpu.alloc('f32', 0));
    gpu.write(e, new Float32Array(0));
    assert.equal(gpu.read(e).length, 0);
    // an f32 buffer takes f64 data converted like TypedArray.set
    const f = hold(gpu, gpu.alloc('f32', 2));
    gpu.write(f, new Float64Array([0.1, 1e40]));
    assert.deepEqual(Array.from(gpu.read(f)), [Math.fround(0.1), Infinity]);
  });

  it('reuses freed blocks through the cache and reports live, peak and cached bytes', () => {
    gpu.resetPeak();
    const s0 = gpu.memoryStats();
    const before = gpu.allocatorStats();
    const a = gpu.alloc('f32', 1000);
    const s1 = gpu.memoryStats();
    assert.equal(s1.liveBuffers, s0.liveBuffers + 1);
    assert.equal(s1.liveBytes, s0.liveBytes + 4000);
    assert.ok(s1.peakBytes >= s1.liveBytes);
    gpu.free(a);
    const s2 = gpu.memoryStats();
    assert.equal(s2.liveBytes, s0.liveBytes);
    assert.ok(s2.cachedBytes >= 4000);
    const b = gpu.alloc('f32', 990); // same size class
    assert.equal((b as unknown as { ptr: number }).ptr, (a as unknown as { ptr: number }).ptr);
    assert.ok(gpu.allocatorStats().cacheHits > before.cacheHits);
    gpu.free(b);
    assert.throws(() => gpu.free(b), /used after free/);
    assert.equal(gpu.memoryStats().peakBytes, s0.liveBytes + 4000);
  });

  it('fills every dtype', () => {
    for (const v of [0, -1.5, 3.3, 1e-3]) {
      for (const dtype of ['f32', 'f64', 'i32'] as DType[]) {
        const p = out(37, dtype);
        both((be, s) => be.fill(p[s], v));
        checkExact(p, `fill ${dtype} ${v}`);
      }
      // 16-bit buffers hold the rounded value (the CPU backend fills raw integer bits instead)
      for (const [dtype, bits] of [
        ['bf16', f32ToBf16(v)],
        ['f16', f32ToF16(v)],
      ] as const) {
        const b = hold(gpu, gpu.alloc(dtype, 5));
        gpu.fill(b, v);
        assert.deepEqual(Array.from(gpu.read(b)), new Array(5).fill(bits), `fill ${dtype} ${v}`);
      }
    }
  });

  // ---- elementwise ----------------------------------------------------------------------------

  it('casts between every pair of dtypes bit for bit', () => {
    const specials = [
      0,
      -0,
      1,
      -1,
      0.1,
      65504,
      65520,
      1e-8,
      6e-8,
      3e38,
      -3e38,
      1e39,
      Infinity,
      -Infinity,
      NaN,
    ];
    const values = [...specials, ...randn(200, 30)];
    for (let i = 0; i < 40; i++) values.push(rng.normal() * 1e-6); // f16 subnormals
    for (const v of [5e9, -7.5e12, 1e19, -3e17, 2147483648.5, -2147483649]) values.push(v); // i32 wrap-around
    // ties of bf16 rounding: f32 values with the low 16 bits exactly 0x8000
    const u = new Uint32Array(1);
    const f = new Float32Array(u.buffer);
    for (const hi of [0x3f80, 0x3f81, 0xc0a3]) {
      u[0] = (hi << 16) | 0x8000;
      values.push(f[0]);
    }
    const types: DType[] = ['f32', 'f64', 'i32', 'bf16', 'f16'];
    for (const from of types) {
      const src = out(values.length, from);
      // make the source on the CPU from f64 values, then copy the same bits to the GPU
      const f64 = hold(cpu, cpu.alloc('f64', values.length));
      cpu.write(f64, Float64Array.from(values));
      cpu.cast(f64, src.c);
      gpu.write(src.g, cpu.read(src.c));
      for (const to of types) {
        const dst = out(values.length, to);
        both((be, s) => be.cast(src[s], dst[s]));
        checkExact(dst, `cast ${from} -> ${to}`);
      }
    }
    // the paired f32 <-> bf16 kernels: odd lengths (the last element alone), one element
    for (const len of [values.length - 1 + (values.length % 2), 1]) {
      const vals = values.slice(0, len);
      assert.equal(vals.length % 2, 1);
      const src = out(vals.length, 'f32');
      cpu.write(src.c, Float32Array.from(vals));
      gpu.write(src.g, Float32Array.from(vals));
      const mid = out(vals.length, 'bf16');
      both((be, s) => be.cast(src[s], mid[s]));
      checkExact(mid, `cast f32 -> bf16, ${vals.length} elements`);
      const back = out(vals.length, 'f32');
      both((be, s) => be.cast(mid[s], back[s]));
      checkExact(back, `cast bf16 -> f32, ${vals.length} elements`);
    }
  });

  it('unary ops and their derivatives', () => {
    const ops = UNARY_OPS;
    const positive = new Set(['log', 'sqrt', 'rsqrt', 'reciprocal']);
    for (const op of ops) {
      const n = 1001;
      const data = positive.has(op) ? uniform(n, 0.05, 5) : randn(n, 3);
      data[0] = positive.has(op) ? 1 : 0;
      const x = pair(data);
      const y = out(n);
      both((be, s) => be.unary(op, x[s], y[s], 1.5, -0.25));
      check(y, 2e-6, `${op} forward`, 1e-6);
      const gy = pair(randn(n));
      const gx = out(n);
      both((be, s) => be.unaryBackward(op, x[s], gy[s], gx[s]));
      check(gx, 2e-6, `${op} backward`, 1e-6);
      // written to 16-bit storage in the same pass (activations feeding 16-bit products)
      // (1000 elements: four per thread on the GPU)
      const x4 = pair(data.slice(0, 1000));
      for (const dt of ['bf16', 'f16'] as const) {
        const y16 = out(n, dt);
        both((be, s) => be.unary(op, x[s], y16[s], 1.5, -0.25));
        check(y16, dt === 'bf16' ? 8e-3 : 1e-3, `${op} forward into ${dt}`, 1e-6);
        const y16x4 = out(1000, dt);
        both((be, s) => be.unary(op, x4[s], y16x4[s], 1.5, -0.25));
        check(y16x4, dt === 'bf16' ? 8e-3 : 1e-3, `${op} forward into ${dt}, 1000 elements`, 1e-6);
      }
    }
  });

  it('binary ops with broadcasting and strided operands', () => {
    const ops = ['add', 'sub', 'mul', 'div', 'maximum', 'eq'] as const;
    const cases: { shape: number[]; as: number[]; bs: number[]; na: number; nb: number }[] = [
      { shape: [1000], as: [1], bs: [1], na: 1000, nb: 1000 },
      { shape: [3, 4, 5], as: [5, 0, 1], bs: [0, 5, 1], na: 15, nb: 20 }, // (3,1,5) op (1,4,5)
      { shape: [7, 9], as: [1, 7], bs: [0, 0], na: 63, nb: 1 }, // transposed op scalar
      { shape: [], as: [], bs: [], na: 1, nb: 1 },
      { shape: [2, 1, 3, 1, 2, 2, 3], as: [36, 0, 12, 0, 6, 3, 1], bs: [0, 0, 1, 0, 0, 0, 0], na: 72, nb: 3 },
    ];
    for (const op of ops) {
      for (const c of cases) {
        const da = randn(c.na);
        const db = op === 'div' ? uniform(c.nb, 0.5, 2) : randn(c.nb);
        if (op === 'eq') db.set(da.subarray(0, Math.min(c.na, c.nb, 3)));
        const a = pair(da);
        const b = pair(db);
        const n = c.shape.reduce((x, y) => x * y, 1);
        const o = out(n);
        both((be, s) => be.binary(op, a[s], c.as, b[s], c.bs, o[s], c.shape));
        check(o, 1e-7, `${op} over [${c.shape}]`);
      }
    }
    const nan = pair([NaN, 1, -Infinity]);
    const one = pair([0, NaN, -5]);
    const o = out(3);
    both((be, s) => be.binary('maximum', nan[s], [1], one[s], [1], o[s], [3]));
    checkExact(o, 'maximum propagates NaN');
  });

  it('strided copies: transposes, offsets, accumulation (with repeated destinations), 16/64-bit', () => {
    for (const dtype of ['f32', 'bf16', 'f64', 'i32'] as DType[]) {
      const src = pair(
        Array.from({ length: 60 }, (_, i) => (dtype === 'bf16' ? f32ToBf16(i - 7.5) : i * 1.25 - 7)),
        dtype,
      );
      const dst = pair(new Array(80).fill(dtype === 'bf16' ? f32ToBf16(1) : 1), dtype);
      // (3, 4, 5) permuted to (5, 3, 4) into a (5, 16) buffer at offset 3
      both((be, s) => be.copyStrided(src[s], 0, [1, 20, 5], dst[s], 3, [16, 4, 1], [5, 3, 4], false));
      checkExact(dst, `permute copy ${dtype}`);
      if (dtype !== 'bf16') {
        both((be, s) => be.copyStrided(src[s], 10, [1, 7], dst[s], 1, [9, 1], [7, 5], true));
        checkExact(dst, `accumulating copy ${dtype}`);
      }
    }
    // sum 6 rows into one destination row through a zero stride (atomics on the GPU)
    const src = pair(randn(6 * 33));
    const dst = pair(randn(33));
    both((be, s) => be.copyStrided(src[s], 0, [33, 1], dst[s], 0, [0, 1], [6, 33], true));
    check(dst, 1e-6, 'broadcast accumulate');
    // plain contiguous copy with offsets
    const a = pair(randn(100));
    const b = pair(randn(100));
    both((be, s) => be.copyStrided(a[s], 17, [1], b[s], 5, [1], [60], false));
    checkExact(b, 'contiguous copy');
    // blocks of columns (the in_proj split and its gradient): 16 bytes per thread where widths,
    // pitches and offsets are multiples of 4 elements, the general kernel otherwise
    for (const [rows, pitch, start, width] of [
      [37, 84, 8, 32],
      [5, 84, 80, 4],
      [9, 84, 3, 20],
      [3, 82, 4, 12],
    ]) {
      const m = pair(randn(rows * pitch));
      const col = pair(randn(rows * width));
      both((be, s) =>
        be.copyStrided(
          m[s],
          start,
          [2 * pitch, pitch, 1],
          col[s],
          0,
          [2 * width, width, 1],
          [rows >> 1, 2, width],
          false,
        ),
      );
      checkExact(col, `column block ${rows} x ${width} of pitch ${pitch} at ${start}`);
      const back = pair(randn(rows * pitch));
      both((be, s) =>
        be.copyStrided(col[s], 0, [width, 1], back[s], start, [pitch, 1], [rows, width], false),
      );
      checkExact(back, `column block written back ${rows} x ${width}`);
    }
  });

  it('reduce sum and max over (outer, n, inner), long and short', () => {
    const cases = [
      [1, 1, 1],
      [1, 200003, 1],
      [7, 3001, 1],
      [3, 5, 7],
      [1, 8192, 300],
      [5, 33, 1],
      [2, 1, 9],
      [1000, 64, 3],
      [70000, 70, 1],
    ];
    for (const [outer, n, inner] of cases) {
      for (const op of ['sum', 'max'] as const) {
        const x = pair(randn(outer * n * inner));
        const o = out(outer * inner);
        both((be, s) => be.reduce(op, x[s], o[s], outer, n, inner));
        check(o, op === 'sum' ? 2e-6 * Math.sqrt(n) : 0, `${op} (${outer}, ${n}, ${inner})`, 1e-6);
      }
    }
    const empty = out(6);
    const none = pair([]);
    both((be, s) => be.reduce('max', none[s], empty[s], 2, 0, 3));
    checkExact(empty, 'max over an empty axis');
    const nan = pair([1, NaN, 2, 3]);
    const o = out(1);
    both((be, s) => be.reduce('max', nan[s], o[s], 1, 4, 1));
    checkExact(o, 'max propagates NaN');
  });

  it('cumsum forward and reverse, segsum and its adjoint', () => {
    for (const [outer, n, inner] of [
      [3, 17, 5],
      [1, 1000, 1],
      [4, 1, 3],
    ]) {
      for (const reverse of [false, true]) {
        const x = pair(randn(outer * n * inner));
        const o = out(outer * n * inner);
        both((be, s) => be.cumsum(x[s], o[s], outer, n, inner, reverse));
        check(o, 2e-6 * Math.sqrt(n), `cumsum (${outer}, ${n}, ${inner}) reverse ${reverse}`, 1e-6);
      }
    }
    for (const [rows, t] of [
      [3, 17],
      [1, 1],
      [2, 130],
    ]) {
      const x = pair(randn(rows * t, 0.5));
      const o = out(rows * t * t);
      both((be, s) => be.segsum(x[s], o[s], rows, t));
      check(o, 1e-6 * Math.sqrt(t), `segsum (${rows}, ${t})`, 1e-6);
      const g = pair(randn(rows * t * t));
      const gx = out(rows * t);
      both((be, s) => be.segsumBackward(g[s], gx[s], rows, t));
      check(gx, 2e-6 * t, `segsum backward (${rows}, ${t})`, 1e-6);
    }
  });

  it('causal mask and dropout (the same mask bit for bit)', () => {
    for (const [rows, tq, tk] of [
      [3, 5, 5],
      [2, 3, 8],
      [1, 6, 4],
    ]) {
      const x = pair(randn(rows * tq * tk));
      const o = out(rows * tq * tk);
      both((be, s) => be.causalMask(x[s], o[s], rows, tq, tk, -1e9));
      checkExact(o, `causal mask (${rows}, ${tq}, ${tk})`);
    }
    for (const [p, seed] of [
      [0.1, 7],
      [0.5, -3],
      [0.9, 123456789],
    ]) {
      const n = 100003;
      const x = pair(randn(n));
      const o = out(n);
      both((be, s) => be.dropout(x[s], o[s], p, seed));
      checkExact(o, `dropout p=${p} seed=${seed}`);
    }
  });

  it('the mixer output gate y * silu(z + bias) and its backward', () => {
    for (const [rows, cols] of [
      [1, 1],
      [37, 19],
      [300, 256],
    ]) {
      const n = rows * cols;
      const [y, z, g] = [pair(randn(n)), pair(randn(n)), pair(randn(n))];
      const b = pair(randn(cols));
      const o = out(n);
      both((be, s) => be.siluGate(y[s], z[s], b[s], o[s], rows, cols));
      check(o, 1e-6, `siluGate (${rows}, ${cols})`);
      const [gy, gz] = [out(n), out(n)];
      both((be, s) => be.siluGateBackward(y[s], z[s], b[s], g[s], gy[s], gz[s], rows, cols));
      check(gy, 1e-6, 'siluGate backward y');
      check(gz, 1e-6, 'siluGate backward z');
    }
  });

  // ---- matmul ---------------------------------------------------------------------------------

  it('f32 matmul: transposes, batches with broadcast strides, alpha/beta, sizes 1 and odd', () => {
    const cases = [
      { batch: 1, m: 1, n: 1, k: 1 },
      { batch: 1, m: 17, n: 33, k: 65 },
      { batch: 3, m: 5, n: 7, k: 300 },
      { batch: 4, m: 64, n: 1, k: 48 },
      { batch: 2, m: 129, n: 127, k: 3 },
    ];
    for (const c of cases) {
      for (const transA of [false, true]) {
        for (const transB of [false, true]) {
          for (const bcast of ['none', 'A', 'B']) {
            if (c.batch === 1 && bcast !== 'none') continue;
            const sa = bcast === 'A' ? 0 : c.m * c.k;
            const sb = bcast === 'B' ? 0 : c.k * c.n;
            const a = pair(randn(bcast === 'A' ? c.m * c.k : c.batch * c.m * c.k));
            const b = pair(randn(bcast === 'B' ? c.k * c.n : c.batch * c.k * c.n));
            const cc = pair(randn(c.batch * c.m * c.n));
            const p = {
              ...c,
              transA,
              transB,
              strideA: sa,
              strideB: sb,
              strideC: c.m * c.n,
              alpha: 0.75,
              beta: 0.5,
            };
            both((be, s) => be.matmul(a[s], b[s], cc[s], p));
            check(cc, 2e-6 * Math.sqrt(c.k), `matmul ${JSON.stringify(p)}`, 1e-6);
          }
        }
      }
    }
    // k = 0: C = beta C
    const a = pair([]);
    const c = pair(randn(6));
    both((be, s) =>
      be.matmul(a[s], a[s], c[s], {
        batch: 1,
        m: 2,
        n: 3,
        k: 0,
        transA: false,
        transB: false,
        strideA: 0,
        strideB: 0,
        strideC: 6,
        alpha: 1,
        beta: 2,
      }),
    );
    check(c, 1e-7, 'matmul k = 0');
  });

  it('bf16 matmul on the tensor cores into f32 and bf16', () => {
    for (const c of [
      { batch: 1, m: 96, n: 80, k: 257 },
      { batch: 3, m: 1, n: 33, k: 64 },
      { batch: 2, m: 31, n: 7, k: 1024 },
    ]) {
      for (const transB of [false, true]) {
        // the same bf16 operands on both sides; the CPU multiplies their f32 values
        const bits = (n: number) => Uint16Array.from(randn(n), f32ToBf16);
        const ab = bits(c.batch * c.m * c.k);
        const bb = bits(c.batch * c.k * c.n);
        const ag = hold(gpu, gpu.alloc('bf16', ab.length));
        const bg = hold(gpu, gpu.alloc('bf16', bb.length));
        gpu.write(ag, ab);
        gpu.write(bg, bb);
        const ac = hold(cpu, cpu.alloc('f32', ab.length));
        const bc = hold(cpu, cpu.alloc('f32', bb.length));
        cpu.write(ac, Float32Array.from(ab, bf16ToF32));
        cpu.write(bc, Float32Array.from(bb, bf16ToF32));
        const p = {
          ...c,
          transA: false,
          transB,
          strideA: c.m * c.k,
          strideB: c.k * c.n,
          strideC: c.m * c.n,
          alpha: 1,
          beta: 0,
        };
        const o32 = out(c.batch * c.m * c.n);
        cpu.matmul(ac, bc, o32.c, p);
        gpu.matmul(ag, bg, o32.g, p);
        check(o32, 2e-6 * Math.sqrt(c.k), `bf16 matmul into f32 ${JSON.stringify(c)}`, 1e-6);
        const o16 = out(c.batch * c.m * c.n, 'bf16');
        cpu.cast(o32.c, o16.c);
        gpu.matmul(ag, bg, o16.g, p);
        check(o16, 8e-3, `bf16 matmul into bf16 ${JSON.stringify(c)}`, 1e-6);
      }
    }
  });

  it('gemv: decoding products (m <= 8 rows, bf16 weight transposed, f32 out) with bias, alpha and beta', () => {
    const launches = () => gpu.kernels.launchCounts().gemv_bf16_f32 ?? 0;
    const before = launches();
    const maxRows = gemvSwitch.maxRows;
    gemvSwitch.maxRows = 8; // every build (the backend sends only m = 1 to gemv.cu by default)
    for (const c of [
      { m: 1, n: 37, k: 8 },
      { m: 1, n: 300, k: 2056 },
      { m: 3, n: 129, k: 64 },
      { m: 8, n: 70, k: 520 },
      // split-K (2, 4 and 8 warps per column), n not a multiple of the block's columns, k not of 256
      { m: 1, n: 50, k: 8200 },
      { m: 3, n: 7, k: 16392 },
      { m: 8, n: 5, k: 32776 },
    ]) {
      for (const withBias of [false, true]) {
        const bits = (n: number) => Uint16Array.from(randn(n), f32ToBf16);
        const ab = bits(c.m * c.k);
        const wb = bits(c.n * c.k); // (n, k): a Linear weight
        const ag = hold(gpu, gpu.alloc('bf16', ab.length));
        const wg = hold(gpu, gpu.alloc('bf16', wb.length));
        gpu.write(ag, ab);
        gpu.write(wg, wb);
        const ac = hold(cpu, cpu.alloc('f32', ab.length));
        const wc = hold(cpu, cpu.alloc('f32', wb.length));
        cpu.write(ac, Float32Array.from(ab, bf16ToF32));
        cpu.write(wc, Float32Array.from(wb, bf16ToF32));
        const bias = withBias ? pair(randn(c.n)) : null;
        for (const [alpha, beta] of [
          [1, 0],
          [0.5, 1],
        ]) {
          const p = {
            batch: 1,
            ...c,
            transA: false,
            transB: true,
            strideA: c.m * c.k,
            strideB: c.n * c.k,
            strideC: c.m * c.n,
            alpha,
            beta,
          };
          const o = pair(randn(c.m * c.n)); // beta reads it
          cpu.matmul(ac, wc, o.c, p, bias?.c ?? null);
          gpu.matmul(ag, wg, o.g, p, bias?.g ?? null);
          check(o, 2e-6 * Math.sqrt(c.k), `gemv ${JSON.stringify({ ...c, withBias, alpha, beta })}`, 1e-6);
        }
      }
    }
    gemvSwitch.maxRows = maxRows;
    assert.equal(launches() - before, 28, 'every product above ran in gemv.cu (MOHAWK_GEMV=0 turns it off)');
    assert.deepEqual(
      [
        [300, 2056],
        [50, 8200],
        [7, 16392],
        [5, 32776],
        [2048, 8192],
        [8192, 2048],
      ].map(([n, k]) => gemvSplits(n, k, 132, { warps: 4, rows: 2, unroll: 4, wavesWarps: 16 })),
      [2, 4, 4, 4, 4, 1],
      'warps per column group (split-K) of the cases above and of the 1.5B decode shapes (H200, default shape)',
    );
  });

  it('matmul with a bias: the cuBLASLt epilogue (one product) and the broadcast kernel (batches)', (t) => {
    for (const c of [
      { batch: 1, m: 96, n: 80, k: 257, typ: 'bf16' },
      { batch: 1, m: 33, n: 17, k: 40, typ: 'f32' },
      { batch: 3, m: 5, n: 33, k: 64, typ: 'bf16' },
    ] as const) {
      for (const transB of [false, true]) {
        const n16 = (n: number) => Uint16Array.from(randn(n), f32ToBf16);
        const [na, nb] = [c.batch * c.m * c.k, c.k * c.n];
        const ah = c.typ === 'bf16' ? n16(na) : Float32Array.from(randn(na));
        const bh = c.typ === 'bf16' ? n16(nb) : Float32Array.from(randn(nb));
        const ag = hold(gpu, gpu.alloc(c.typ, na));
        const bg = hold(gpu, gpu.alloc(c.typ, nb));
        gpu.write(ag, ah);
        gpu.write(bg, bh);
        const widen = (h: Uint16Array | Float32Array) =>
          h instanceof Uint16Array ? Float32Array.from(h, bf16ToF32) : h;
        const ac = hold(cpu, cpu.alloc('f32', na));
        const bc = hold(cpu, cpu.alloc('f32', nb));
        cpu.write(ac, widen(ah));
        cpu.write(bc, widen(bh));
        const bias = pair(randn(c.n));
        const o = pair(randn(c.batch * c.m * c.n));
        const p = {
          batch: c.batch,
          m: c.m,
          n: c.n,
          k: c.k,
          transA: false,
          transB,
          strideA: c.m * c.k,
          strideB: 0,
          strideC: c.m * c.n,
          alpha: 0.75,
          beta: c.typ === 'f32' ? 0.5 : 0,
        };
        cpu.matmul(ac, bc, o.c, p, bias.c);
        const { kernels } = gpu.profile(() => gpu.matmul(ag, bg, o.g, p, bias.g));
        t.diagnostic(`bias ${JSON.stringify(c)} transB ${transB}: ${kernels.map((x) => x.name).join(', ')}`);
        check(o, 2e-6 * Math.sqrt(c.k), `matmul + bias ${JSON.stringify(p)}`, 1e-6);
      }
    }
  });

  // ---- rows -----------------------------------------------------------------------------------

  it('softmax and log-softmax with their backward passes', () => {
    for (const [rows, cols] of [
      [1, 1],
      [37, 7],
      [5, 1000],
      [3, 51200],
      [300, 64],
    ]) {
      for (const log of [false, true]) {
        const x = pair(randn(rows * cols, 4));
        const y = out(rows * cols);
        both((be, s) => be.softmax(x[s], y[s], rows, cols, log));
        check(y, 1e-5, `softmax (${rows}, ${cols}) log ${log}`, 1e-7);
        const gy = pair(randn(rows * cols));
        const gx = out(rows * cols);
        both((be, s) => be.softmaxBackward(y[s], gy[s], gx[s], rows, cols, log));
        check(gx, 2e-5, `softmax backward (${rows}, ${cols}) log ${log}`, 1e-7);
      }
    }
  });

  it('LayerNorm and RMSNorm, forward and backward', () => {
    for (const [rows, cols] of [
      [1, 1],
      [37, 33],
      [700, 384],
      [3, 2048],
    ]) {
      const x = pair(randn(rows * cols, 2).map((v) => v + 0.5));
      const wData = randn(cols);
      const gyData = randn(rows * cols);
      const w = pair(wData);
      const b = pair(randn(cols));
      const gy = pair(gyData);
      // gx is rstd * (gy * w - ...): errors are measured against that scale (with one column
      // the terms cancel to nearly 0)
      const gxFloor = (rstd: Pair) => 2e-5 * maxAbs(gyData) * maxAbs(wData) * maxAbs(cpu.read(rstd.c));
      for (const withBias of [true, false]) {
        const y = out(rows * cols);
        const mean = out(rows);
        const rstd = out(rows);
        both((be, s) =>
          be.layerNorm(x[s], w[s], withBias ? b[s] : null, y[s], mean[s], rstd[s], rows, cols, 1e-5),
        );
        check(y, 1e-5, `layerNorm (${rows}, ${cols})`);
        check(mean, 1e-5, 'layerNorm mean', 1e-6);
        check(rstd, 1e-5, 'layerNorm rstd');
        const gx = out(rows * cols);
        const gw = out(cols);
        const gb = out(cols);
        both((be, s) =>
          be.layerNormBackward(
            x[s],
            w[s],
            mean[s],
            rstd[s],
            gy[s],
            gx[s],
            gw[s],
            withBias ? gb[s] : null,
            rows,
            cols,
          ),
        );
        check(gx, 2e-5, `layerNorm backward x (${rows}, ${cols})`, gxFloor(rstd));
        check(gw, 1e-5 * Math.sqrt(rows), `layerNorm backward weight (${rows}, ${cols})`, 1e-6);
        if (withBias) check(gb, 1e-5 * Math.sqrt(rows), `layerNorm backward bias (${rows}, ${cols})`, 1e-6);
      }
      const y = out(rows * cols);
      const rstd = out(rows);
      both((be, s) => be.rmsNorm(x[s], w[s], y[s], rstd[s], rows, cols, 1e-6));
      check(y, 1e-5, `rmsNorm (${rows}, ${cols})`);
      const gx = out(rows * cols);
      const gw = out(cols);
      both((be, s) => be.rmsNormBackward(x[s], w[s], rstd[s], gy[s], gx[s], gw[s], rows, cols));
      check(gx, 2e-5, `rmsNorm backward x (${rows}, ${cols})`, gxFloor(rstd));
      check(gw, 1e-5 * Math.sqrt(rows), `rmsNorm backward weight (${rows}, ${cols})`, 1e-6);
    }
  });

  it('embedding lookup and its scatter-add backward (repeated ids), the backward exact and deterministic', () => {
    for (const [n, dim, vocab] of [
      [1, 1, 50],
      [300, 17, 50],
      [64, 384, 50],
      [5000, 300, 40], // many repeats per row, dim over one block's threads
      [4096, 64, 3000], // many blocks, each scanning every id
    ]) {
      const table = pair(randn(vocab * dim));
      const ids = pair(
        Array.from({ length: n }, (_, i) => (i % 3 === 0 ? 7 : rng.int(0, vocab))),
        'i32',
      );
      const o = out(n * dim);
      both((be, s) => be.embedding(table[s], ids[s], o[s], n, dim));
      checkExact(o, `embedding (${n}, ${dim})`);
      const g = pair(randn(n * dim));
      const gt = pair(randn(vocab * dim)); // accumulates into existing values
      both((be, s) => be.embeddingBackward(g[s], ids[s], gt[s], n, dim));
      // each row sums its tokens in token order on both backends (no atomics): equal bit for bit
      checkExact(gt, `embedding backward (${n}, ${dim}, vocab ${vocab})`);
    }
  });

  it('cross-entropy with ignored targets, and KL divergence with temperature', () => {
    for (const [rows, vocab] of [
      [1, 1],
      [37, 10],
      [8, 51200],
      [130, 1000],
    ]) {
      const logits = pair(randn(rows * vocab, 3));
      const targets = pair(
        Array.from({ length: rows }, (_, i) => (i % 5 === 4 ? -100 : rng.int(0, vocab))),
        'i32',
      );
      const losses = out(rows);
      const lse = out(rows);
      both((be, s) => be.crossEntropy(logits[s], targets[s], losses[s], lse[s], rows, vocab, -100));
      check(losses, 1e-5, `cross-entropy (${rows}, ${vocab})`, 1e-6);
      check(lse, 1e-6, `cross-entropy lse (${rows}, ${vocab})`, 1e-6);
      const gl = pair(randn(rows));
      const g = out(rows * vocab);
      both((be, s) => be.crossEntropyBackward(logits[s], targets[s], lse[s], gl[s], g[s], rows, vocab, -100));
      check(g, 1e-5, `cross-entropy backward (${rows}, ${vocab})`, 1e-7);
      for (const tau of [1, 2.5]) {
        const teacher = pair(randn(rows * vocab, 3));
        const kl = out(rows);
        both((be, s) => be.klDivergence(teacher[s], logits[s], kl[s], rows, vocab, tau));
        check(kl, 1e-5, `KL (${rows}, ${vocab}) tau ${tau}`, 1e-6);
        const gs = out(rows * vocab);
        both((be, s) => be.klDivergenceBackward(teacher[s], logits[s], gl[s], gs[s], rows, vocab, tau));
        check(gs, 1e-5, `KL backward (${rows}, ${vocab}) tau ${tau}`, 1e-7);
        // the forward's cache of log-sum-exps (CUDA fills it, the CPU ignores it), then the
        // backward from the cache, and the loss from the backward's own launch
        const cache = out(rows * 2);
        const kl2 = out(rows);
        both((be, s) => be.klDivergence(teacher[s], logits[s], kl2[s], rows, vocab, tau, cache[s]));
        check(kl2, 1e-5, `KL with the cache (${rows}, ${vocab}) tau ${tau}`, 1e-6);
        const gs2 = out(rows * vocab);
        both((be, s) =>
          be.klDivergenceBackward(teacher[s], logits[s], gl[s], gs2[s], rows, vocab, tau, cache[s]),
        );
        check(gs2, 1e-5, `KL backward from the cache (${rows}, ${vocab}) tau ${tau}`, 1e-7);
        const kl3 = out(rows);
        const gs3 = out(rows * vocab);
        both((be, s) =>
          be.klDivergenceBackward(teacher[s], logits[s], gl[s], gs3[s], rows, vocab, tau, null, kl3[s]),
        );
        check(kl3, 1e-5, `KL from the backward's launch (${rows}, ${vocab}) tau ${tau}`, 1e-6);
        check(gs3, 1e-5, `KL backward with the loss (${rows}, ${vocab}) tau ${tau}`, 1e-7);
        // a masked vocabulary: -inf in both models at the same entries (p = q = 0 there), every
        // third row from the second, each keeping its last entry
        const tm = randn(rows * vocab, 3);
        const sm = randn(rows * vocab, 3);
        for (let r = 1; r < rows; r += 3)
          for (let j = r % 4; j < vocab - 1; j += 4) tm[r * vocab + j] = sm[r * vocab + j] = -Infinity;
        const teacherM = pair(tm);
        const studentM = pair(sm);
        const klm = out(rows);
        both((be, s) => be.klDivergence(teacherM[s], studentM[s], klm[s], rows, vocab, tau));
        check(klm, 1e-5, `KL with masked entries (${rows}, ${vocab}) tau ${tau}`, 1e-6);
      }
    }
  });

  // ---- sequence mixers ------------------------------------------------------------------------

  it('causal conv1d forward and backward (kernel 4 and 1, T shorter than the kernel)', () => {
    for (const [batch, t, ch, k] of [
      [2, 37, 19, 4],
      [1, 2, 5, 4],
      [3, 9, 300, 1],
      [1, 1000, 8, 3],
      [2, 300, 40, 4],
    ]) {
      const x = pair(randn(batch * t * ch));
      const w = pair(randn(ch * k));
      const b = pair(randn(ch));
      const y = out(batch * t * ch);
      both((be, s) => be.causalConv1d(x[s], w[s], b[s], y[s], batch, t, ch, k));
      check(y, 1e-6, `conv1d (${batch}, ${t}, ${ch}, ${k})`);
      const gy = pair(randn(batch * t * ch));
      const gx = out(batch * t * ch);
      const gw = out(ch * k);
      const gb = out(ch);
      both((be, s) => be.causalConv1dBackward(x[s], w[s], gy[s], gx[s], gw[s], gb[s], batch, t, ch, k));
      check(gx, 1e-6, 'conv1d backward x');
      check(gw, 2e-6 * Math.sqrt(batch * t), 'conv1d backward weight', 1e-6);
      check(gb, 2e-6 * Math.sqrt(batch * t), 'conv1d backward bias', 1e-6);
    }
  });

  it('rotary embedding: halves and interleaved, partial rotary, offsets, inverse', () => {
    for (const c of [
      { batch: 2, seqLen: 9, heads: 3, headDim: 8, rotaryDim: 8, interleaved: false, positionOffset: 0 },
      { batch: 1, seqLen: 33, heads: 2, headDim: 64, rotaryDim: 32, interleaved: false, positionOffset: 5 },
      { batch: 2, seqLen: 5, heads: 4, headDim: 6, rotaryDim: 6, interleaved: true, positionOffset: 4000 },
    ]) {
      for (const inverse of [false, true]) {
        const p = { ...c, theta: 10000, inverse };
        const n = c.batch * c.seqLen * c.heads * c.headDim;
        const x = pair(randn(n));
        const y = out(n);
        both((be, s) => be.rope(x[s], y[s], p));
        check(y, 2e-7, `rope ${JSON.stringify(p)}`);
      }
    }
  });

  it('attention forward, probabilities and backward: causal, GQA, decode shapes, head dims', () => {
    const cases = [
      { batch: 2, tq: 37, tk: 37, heads: 4, kvHeads: 2, headDim: 16, causal: true },
      { batch: 1, tq: 1, tk: 9, heads: 2, kvHeads: 1, headDim: 8, causal: true },
      { batch: 1, tq: 70, tk: 70, heads: 3, kvHeads: 3, headDim: 64, causal: true },
      { batch: 2, tq: 5, tk: 130, heads: 2, kvHeads: 2, headDim: 80, causal: false },
      { batch: 1, tq: 65, tk: 65, heads: 1, kvHeads: 1, headDim: 128, causal: true },
      { batch: 1, tq: 6, tk: 4, heads: 2, kvHeads: 1, headDim: 5, causal: true }, // rows with no keys
    ];
    for (const c of cases) {
      const p = { ...c, scale: 1 / Math.sqrt(c.headDim) };
      const nq = c.batch * c.tq * c.heads * c.headDim;
      const nk = c.batch * c.tk * c.kvHeads * c.headDim;
      const q = pair(randn(nq));
      const k = pair(randn(nk));
      const v = pair(randn(nk));
      const o = out(nq);
      const lse = out(c.batch * c.heads * c.tq);
      const probs = out(c.batch * c.heads * c.tq * c.tk);
      both((be, s) => be.attention(q[s], k[s], v[s], o[s], lse[s], probs[s], p));
      const what = JSON.stringify(c);
      check(o, 1e-5, `attention ${what}`, 1e-7);
      check(lse, 1e-6, `attention lse ${what}`, 1e-6);
      check(probs, 1e-5, `attention probs ${what}`, 1e-7);
      const g = pair(randn(nq));
      const gq = out(nq);
      const gk = out(nk);
      const gv = out(nk);
      both((be, s) => be.attentionBackward(q[s], k[s], v[s], o[s], lse[s], g[s], gq[s], gk[s], gv[s], p));
      check(gq, 2e-5, `attention gq ${what}`, 1e-7);
      check(gk, 2e-5, `attention gk ${what}`, 1e-7);
      check(gv, 2e-5, `attention gv ${what}`, 1e-7);
    }
  });

  it('tensor-core attention (lowPrecision): causal, GQA, tq < tk, odd lengths, head dims 32/64/80/128', async () => {
    // bf16 products with f32 accumulation against the CPU in f64 on the same bf16-rounded inputs:
    // what differs is the bf16 rounding of the probabilities and dS before their products. Twice:
    // the default tiling, and 4-warp forward blocks without prefetching (MOHAWK_ATTENTION_TC_DEFINES)
    const configs = ['', 'FWD_WARPS=4,FWD_PREFETCH=0,BWD_PREFETCH=0,DKDV_MINB=2'];
    const tuned = (spec: string) =>
      Object.fromEntries(spec.split(',').map((kv) => [kv.split('=')[0], Number(kv.split('=')[1])]));
    await gpu.kernels.prepare(
      [32, 64, 80, 128].map((d) => ({
        module: 'attention_tc',
        defines: { HEAD_DIM: d, ...tuned(configs[1]) },
      })),
    );
    const cases = [
      { batch: 2, tq: 100, tk: 100, heads: 4, kvHeads: 2, headDim: 64, causal: true },
      { batch: 1, tq: 37, tk: 165, heads: 3, kvHeads: 1, headDim: 64, causal: true },
      { batch: 1, tq: 1, tk: 77, heads: 4, kvHeads: 2, headDim: 128, causal: true },
      { batch: 2, tq: 70, tk: 130, heads: 2, kvHeads: 2, headDim: 80, causal: false },
      { batch: 1, tq: 130, tk: 130, heads: 2, kvHeads: 1, headDim: 128, causal: true },
      { batch: 1, tq: 200, tk: 200, heads: 2, kvHeads: 2, headDim: 80, causal: true },
      { batch: 1, tq: 48, tk: 33, heads: 2, kvHeads: 2, headDim: 32, causal: false },
      { batch: 1, tq: 256, tk: 256, heads: 1, kvHeads: 1, headDim: 64, causal: true },
      { batch: 1, tq: 40, tk: 20, heads: 2, kvHeads: 1, headDim: 64, causal: true }, // rows with no keys
    ];
    const tol = { o: 1e-2, lse: 2e-3, probs: 1e-2, gq: 2e-2, gk: 2e-2, gv: 2e-2 };
    const bf = (x: Float32Array) => x.map((v) => bf16ToF32(f32ToBf16(v)));
    const failures: string[] = [];
    for (const spec of configs) {
      if (spec) process.env.MOHAWK_ATTENTION_TC_DEFINES = spec;
      else delete process.env.MOHAWK_ATTENTION_TC_DEFINES;
      for (const c of cases) {
        const p = { ...c, scale: 1 / Math.sqrt(c.headDim) };
        const nq = c.batch * c.tq * c.heads * c.headDim;
        const nk = c.batch * c.tk * c.kvHeads * c.headDim;
        const q = pair(bf(randn(nq, 1.5)));
        const k = pair(bf(randn(nk)));
        const v = pair(bf(randn(nk)));
        const g = pair(bf(randn(nq)));
        const o = out(nq);
        const lse = out(c.batch * c.heads * c.tq);
        const probs = out(c.batch * c.heads * c.tq * c.tk);
        const gq = out(nq);
        const gk = out(nk);
        const gv = out(nk);
        both((be, s) => {
          const ps = { ...p, lowPrecision: s === 'g' };
          be.attention(q[s], k[s], v[s], o[s], lse[s], probs[s], ps);
          be.attentionBackward(q[s], k[s], v[s], o[s], lse[s], g[s], gq[s], gk[s], gv[s], ps);
        });
        const errs: string[] = [];
        for (const [name, x] of Object.entries({ o, lse, probs, gq, gk, gv })) {
          const ref = cpu.read(x.c);
          const got = gpu.read(x.g);
          const scale = maxAbs(ref) || 1;
          let worst = 0;
          for (let i = 0; i < ref.length; i++) {
            // lse of a row without keys is -inf on both
            const e = ref[i] === got[i] ? 0 : Math.abs(got[i] - ref[i]) / scale;
            if (!(e <= worst)) worst = e; // NaN sticks
          }
          errs.push(`${name} ${worst.toExponential(1)}`);
          const t = tol[name as keyof typeof tol];
          if (!(worst <= t)) failures.push(`[${spec}] ${name} ${worst} > ${t} ${JSON.stringify(c)}`);
        }
        console.log(`# attention tc [${spec}] ${JSON.stringify(c)}: ${errs.join(', ')}`);
        for (const [be, b] of held.splice(0)) be.free(b);
      }
    }
    delete process.env.MOHAWK_ATTENTION_TC_DEFINES;
    assert.deepEqual(failures, []);
  });

  const ssdCases: SsdParams[] = [
    { batch: 2, seqLen: 37, heads: 4, groups: 2, headDim: 5, dState: 6, chunkSize: 8 },
    { batch: 1, seqLen: 1, heads: 1, groups: 1, headDim: 1, dState: 1, chunkSize: 4 },
    { batch: 1, seqLen: 100, heads: 2, groups: 1, headDim: 16, dState: 32, chunkSize: 32 },
    { batch: 2, seqLen: 64, heads: 3, groups: 3, headDim: 8, dState: 4, chunkSize: 64 },
    { batch: 1, seqLen: 260, heads: 2, groups: 2, headDim: 64, dState: 64, chunkSize: 128 },
  ];

  function ssdInputs(p: SsdParams) {
    const { batch: B, seqLen: L, heads: H, groups: G, headDim: P, dState: N } = p;
    return {
      x: pair(randn(B * L * H * P)),
      // logA = -softplus(a) like the mixer: decays in (0, 1)
      logA: pair(uniform(B * L * H, -1.5, -0.01)),
      bm: pair(randn(B * L * G * N, 0.5)),
      cm: pair(randn(B * L * G * N, 0.5)),
    };
  }

  it('SSD scan forward (states, final state) and backward', () => {
    for (const p of ssdCases) {
      const { batch: B, seqLen: L, heads: H, groups: G, headDim: P, dState: N, chunkSize: Q } = p;
      const nC = Math.ceil(L / Q);
      const { x, logA, bm, cm } = ssdInputs(p);
      const y = out(B * L * H * P);
      const states = out(B * nC * H * P * N);
      const fin = out(B * H * P * N);
      both((be, s) => be.ssdScan(x[s], logA[s], bm[s], cm[s], y[s], states[s], fin[s], p));
      const what = JSON.stringify(p);
      check(y, 1e-4, `ssd y ${what}`, 1e-6);
      check(states, 1e-4, `ssd states ${what}`, 1e-6);
      check(fin, 1e-4, `ssd final state ${what}`, 1e-6);
      const gy = pair(randn(B * L * H * P));
      const gx = out(B * L * H * P);
      const gl = out(B * L * H);
      const gb = out(B * L * G * N);
      const gc = out(B * L * G * N);
      both((be, s) =>
        be.ssdScanBackward(x[s], logA[s], bm[s], cm[s], states[s], gy[s], gx[s], gl[s], gb[s], gc[s], p),
      );
      check(gx, 2e-4, `ssd gx ${what}`, 1e-6);
      check(gl, 2e-4, `ssd glogA ${what}`, 1e-6);
      check(gb, 2e-4, `ssd gB ${what}`, 1e-6);
      check(gc, 2e-4, `ssd gC ${what}`, 1e-6);
    }
  });

  it('fast SSD scan (f32 and bf16 products) and the oracle against the CPU', () => {
    // the shared cases, the benchmark shape's small cousins (P = N = 64, chunk 128, T not a
    // multiple, one group), N != P, an odd chunk, P = 128, a chunk the fast kernels do not take
    // (the oracle runs instead), and shapes with hundreds of chunks
    const cases: SsdParams[] = [
      ...ssdCases,
      { batch: 2, seqLen: 300, heads: 4, groups: 4, headDim: 64, dState: 64, chunkSize: 128 },
      { batch: 1, seqLen: 256, heads: 4, groups: 1, headDim: 64, dState: 64, chunkSize: 128 },
      { batch: 1, seqLen: 200, heads: 2, groups: 2, headDim: 32, dState: 64, chunkSize: 64 },
      { batch: 1, seqLen: 77, heads: 3, groups: 1, headDim: 64, dState: 16, chunkSize: 21 },
      { batch: 1, seqLen: 70, heads: 2, groups: 2, headDim: 128, dState: 96, chunkSize: 32 },
      { batch: 1, seqLen: 40, heads: 1, groups: 1, headDim: 4, dState: 4, chunkSize: 300 },
      // more chunks than SMs: the persistent kernels walk several each (prefetching the next)
      { batch: 3, seqLen: 1003, heads: 8, groups: 2, headDim: 64, dState: 32, chunkSize: 50 },
      { batch: 2, seqLen: 700, heads: 6, groups: 3, headDim: 40, dState: 24, chunkSize: 40 },
      { batch: 2, seqLen: 500, heads: 10, groups: 5, headDim: 7, dState: 5, chunkSize: 16 },
    ];
    // relative to max|ref|: f32 as the oracle; bf16 operands (about 3 significant digits)
    const tolF32 = { y: 1e-4, states: 1e-4, fin: 1e-4, gx: 2e-4, gl: 2e-4, gb: 2e-4, gc: 2e-4 };
    const tolBf16 = { y: 2e-2, states: 2e-2, fin: 2e-2, gx: 3e-2, gl: 5e-2, gb: 3e-2, gc: 3e-2 };
    const failures: string[] = [];
    const prev = gpu.ssdImpl;
    try {
      for (const p of cases) {
        const { batch: B, seqLen: L, heads: H, groups: G, headDim: P, dState: N, chunkSize: Q } = p;
        const nC = Math.ceil(L / Q);
        const { x, logA, bm, cm } = ssdInputs(p);
        const gy = pair(randn(B * L * H * P));
        const sizes = { y: B * L * H * P, states: B * nC * H * P * N, fin: B * H * P * N };
        const gsizes = { gx: B * L * H * P, gl: B * L * H, gb: B * L * G * N, gc: B * L * G * N };
        const ref: Record<string, Float64Array> = {};
        {
          const c = Object.fromEntries(
            Object.entries({ ...sizes, ...gsizes }).map(([k, n]) => [k, hold(cpu, cpu.alloc('f32', n))]),
          );
          cpu.ssdScan(x.c, logA.c, bm.c, cm.c, c.y, c.states, c.fin, p);
          cpu.ssdScanBackward(x.c, logA.c, bm.c, cm.c, c.states, gy.c, c.gx, c.gl, c.gb, c.gc, p);
          for (const k of Object.keys(c)) ref[k] = Float64Array.from(cpu.read(c[k]));
        }
        const variants: { impl: 'fast' | 'oracle'; lp: boolean }[] = [
          { impl: 'fast', lp: false },
          { impl: 'fast', lp: true },
          { impl: 'oracle', lp: false },
        ];
        for (const { impl, lp } of variants) {
          gpu.ssdImpl = impl;
          const q = { ...p, lowPrecision: lp };
          const g = Object.fromEntries(
            Object.entries({ ...sizes, ...gsizes }).map(([k, n]) => {
              const b = hold(gpu, gpu.alloc('f32', n));
              gpu.fill(b, NaN);
              return [k, b];
            }),
          );
          gpu.ssdScan(x.g, logA.g, bm.g, cm.g, g.y, g.states, g.fin, q);
          gpu.ssdScanBackward(x.g, logA.g, bm.g, cm.g, g.states, gy.g, g.gx, g.gl, g.gb, g.gc, q);
          const tol = lp ? tolBf16 : tolF32;
          const what = `${impl} ${lp ? 'bf16' : 'f32'}`;
          const errs: string[] = [];
          for (const k of Object.keys(tol) as (keyof typeof tol)[]) {
            const got = gpu.read(g[k]);
            const r = ref[k];
            const scale = maxAbs(r) || 1;
            let worst = 0;
            for (let i = 0; i < r.length; i++) {
              const e = Math.abs(got[i] - r[i]) / scale;
              if (!(e <= worst)) worst = e; // NaN sticks
            }
            errs.push(`${k} ${worst.toExponential(1)}`);
            if (!(worst <= tol[k])) failures.push(`${what} ${k} ${worst} > ${tol[k]} ${JSON.stringify(p)}`);
          }
          console.log(`# ssd ${what} ${JSON.stringify(p)}: ${errs.join(', ')}`);
        }
        for (const [be, b] of held.splice(0)) be.free(b);
      }
    } finally {
      gpu.ssdImpl = prev;
    }
    assert.deepEqual(failures, []);
  });

  it('the fused decoding step of the mixer (conv, state update, output; caches in place)', () => {
    for (const [batch, H, G, P, N, K, silu, bias] of [
      [2, 4, 2, 16, 8, 4, true, true],
      [3, 3, 1, 64, 64, 4, false, false],
      [1, 2, 2, 40, 24, 3, true, true],
      [1, 1, 1, 7, 5, 1, false, true],
    ] as const) {
      const C = H * P + 2 * G * N;
      const xbc = pair(randn(batch * C));
      const conv = pair(randn(batch * (K - 1) * C));
      const w = pair(randn(C * K));
      const cb = bias ? pair(randn(C)) : null;
      const a = pair(randn(batch * H));
      const D = pair(randn(H));
      const ssm = pair(randn(batch * H * P * N));
      const y = out(batch * H * P);
      const p = { batch, heads: H, groups: G, headDim: P, dState: N, kernel: K, silu };
      // two steps, so the pushed conv state and the updated SSM state are read back in
      for (let step = 0; step < 2; step++) {
        both((be, s) => be.ssmStep(xbc[s], conv[s], w[s], cb ? cb[s] : null, a[s], D[s], ssm[s], y[s], p));
        check(y, 1e-5, `ssmStep y ${JSON.stringify(p)} step ${step}`, 1e-5);
        check(ssm, 1e-5, `ssmStep state ${JSON.stringify(p)} step ${step}`, 1e-5);
        check(conv, 0, `ssmStep conv state ${JSON.stringify(p)} step ${step}`);
      }
    }
  });

  it('materialized mixing matrix forward and backward', () => {
    for (const p of ssdCases.slice(0, 4)) {
      const { batch: B, seqLen: L, heads: H, groups: G, dState: N } = p;
      const q = { ...p, headDim: 1, chunkSize: L };
      const { logA, bm, cm } = ssdInputs(p);
      const m = out(B * H * L * L);
      both((be, s) => be.materializeMixer(logA[s], bm[s], cm[s], m[s], q));
      const what = JSON.stringify(q);
      check(m, 1e-5, `mixer ${what}`, 1e-7);
      const g = pair(randn(B * H * L * L));
      const gl = out(B * L * H);
      const gb = out(B * L * G * N);
      const gc = out(B * L * G * N);
      both((be, s) => be.materializeMixerBackward(logA[s], bm[s], cm[s], g[s], gl[s], gb[s], gc[s], q));
      check(gl, 5e-5, `mixer glogA ${what}`, 1e-6);
      check(gb, 5e-5, `mixer gB ${what}`, 1e-6);
      check(gc, 5e-5, `mixer gC ${what}`, 1e-6);
    }
  });

  it('the SSD scan agrees with the materialized matrix on the GPU alone', () => {
    const p = { batch: 1, seqLen: 150, heads: 2, groups: 1, headDim: 4, dState: 8, chunkSize: 64 };
    const { x, logA, bm, cm } = ssdInputs(p);
    const y = hold(gpu, gpu.alloc('f32', 150 * 2 * 4));
    const st = hold(gpu, gpu.alloc('f32', 3 * 2 * 4 * 8));
    gpu.ssdScan(x.g, logA.g, bm.g, cm.g, y, st, null, p);
    const m = hold(gpu, gpu.alloc('f32', 2 * 150 * 150));
    gpu.materializeMixer(logA.g, bm.g, cm.g, m, { ...p, headDim: 1, chunkSize: 150 });
    const M = gpu.read(m);
    const X = gpu.read(x.g);
    const Y = gpu.read(y);
    const ref = new Float64Array(Y.length);
    for (let h = 0; h < 2; h++)
      for (let t = 0; t < 150; t++)
        for (let pp = 0; pp < 4; pp++) {
          let acc = 0;
          for (let s = 0; s <= t; s++) acc += M[(h * 150 + t) * 150 + s] * X[(s * 2 + h) * 4 + pp];
          ref[(t * 2 + h) * 4 + pp] = acc;
        }
    assertClose(Float64Array.from(Y), ref, 2e-5 * maxAbs(ref), 'scan vs matrix');
  });

  it('fused AdamW step', () => {
    const n = 10007;
    const w = pair(randn(n));
    const g = pair(randn(n, 0.1));
    const m = pair(randn(n, 0.01));
    const v = pair(uniform(n, 0, 0.01));
    for (let step = 1; step <= 3; step++) {
      both((be, s) =>
        be.adamw(w[s], g[s], m[s], v[s], {
          lr: 1e-3,
          beta1: 0.9,
          beta2: 0.95,
          eps: 1e-8,
          weightDecay: 0.1,
          step,
        }),
      );
    }
    check(w, 1e-6, 'adamw param');
    check(m, 1e-6, 'adamw m');
    check(v, 1e-6, 'adamw v');
  });

  // ---- through the tensor layer ---------------------------------------------------------------

  it('the fused chunked head + KL + CE loss (f32 and bf16 autocast) against the unfused path on the CPU', () => {
    const [n, ds, dt, vocab] = [300, 48, 64, 1000];
    const run = (be: Backend, fused: boolean, autocast: 'bf16' | null) => {
      T.setBackend(be);
      T.setAutocast(autocast);
      const r = new Random(9);
      const mk = (shape: number[], std: number, grad: boolean) => {
        const t = T.tensor(r.normals(shape[0] * (shape[1] ?? 1), 0, std), shape);
        t.requiresGrad = grad;
        return T.keep(t);
      };
      const xs = mk([n, ds], 1, true);
      const ws = mk([vocab + 24, ds], 0.2, true);
      const bs = mk([vocab + 24], 0.2, true);
      const xt = mk([n, dt], 1, false);
      const wt = mk([vocab, dt], 0.2, false);
      const leaves = [xs, ws, bs];
      const targets = T.keep(
        T.tensor(
          Int32Array.from({ length: n }, (_, i) => (i * 37) % vocab),
          [n],
          'i32',
        ),
      );
      const loss = T.scope(() => {
        let l: T.Tensor;
        if (fused)
          l = T.linearKLDivergence(
            { x: xs, weight: ws, bias: bs },
            { x: xt, weight: wt, bias: null },
            { vocab, temperature: 1.3, targets, ceWeight: 0.4, chunkRows: 128 },
          ).loss;
        else {
          const zs = T.slice(T.linear(xs, ws, bs), -1, 0, vocab);
          const zt = T.noGrad(() => T.linear(xt, wt, null));
          l = T.add(T.klDivergence(zt, zs, { temperature: 1.3 }), T.scale(T.crossEntropy(zs, targets), 0.4));
        }
        l.backward();
        return l.item();
      });
      const grads = leaves.map((p) => Array.from(p.grad!.toArray()));
      for (const t of [...leaves, xt, wt, targets]) {
        t.grad?.dispose();
        t.dispose();
      }
      T.setAutocast(null);
      return { loss, grads };
    };
    try {
      const ref = run(cpu, false, null);
      for (const autocast of [null, 'bf16'] as const) {
        const g = run(gpu, true, autocast);
        // bf16 products: relative error about 2^-8 per operand
        const tol = autocast ? 2e-2 : 1e-4;
        assert.ok(
          Math.abs(g.loss - ref.loss) <= tol * Math.abs(ref.loss),
          `${autocast} loss ${g.loss} vs ${ref.loss}`,
        );
        ref.grads.forEach((r, i) =>
          assertClose(g.grads[i], r, tol * maxAbs(r) + 1e-7, `${autocast} gradient ${i}`),
        );
      }
    } finally {
      T.setBackend(cpu);
      T.setAutocast(null);
    }
  });

  it('the fused head under bf16 autocast without bias and CE: the KL backward writes the bf16 gradient (GPU vs CPU)', () => {
    const [n, d, vocab] = [260, 64, 3000];
    const run = (be: Backend) => {
      T.setBackend(be);
      T.setAutocast('bf16');
      const r = new Random(12);
      const mk = (shape: number[], std: number, grad: boolean) => {
        const t = T.tensor(r.normals(shape[0] * shape[1], 0, std), shape);
        t.requiresGrad = grad;
        return T.keep(t);
      };
      const xs = mk([n, d], 1, true);
      const ws = mk([vocab, d], 0.2, true);
      const xt = mk([n, d], 1, false);
      const wt = mk([vocab, d], 0.2, false);
      const loss = T.scope(() => {
        const l = T.linearKLDivergence(
          { x: xs, weight: ws, bias: null },
          { x: xt, weight: wt, bias: null },
          { vocab, temperature: 1, chunkRows: 100 },
        ).loss;
        l.backward();
        return l.item();
      });
      const grads = [xs, ws].map((p) => Array.from(p.grad!.toArray()));
      for (const t of [xs, ws, xt, wt]) {
        t.grad?.dispose();
        t.dispose();
      }
      T.setAutocast(null);
      return { loss, grads };
    };
    try {
      const ref = run(cpu);
      const g = run(gpu);
      // both round the same f32 gradient to bf16 (one ulp apart at most where the f32 sums differ)
      assert.ok(Math.abs(g.loss - ref.loss) <= 1e-4 * Math.abs(ref.loss), `loss ${g.loss} vs ${ref.loss}`);
      ref.grads.forEach((r, i) => assertClose(g.grads[i], r, 1e-2 * maxAbs(r), `gradient ${i}`));
    } finally {
      T.setBackend(cpu);
      T.setAutocast(null);
    }
  });

  it('graph capture: ops, a bias GEMM and written inputs replay like eager runs; reads refused; a private pool', () => {
    // (under MOHAWK_CUDA_SYNC=1 in the GPU check: launches inside the capture skip the per-launch wait)
    const rows = 16;
    const dim = 32;
    const width = 24;
    const vocab = 50;
    const r = new Random(11);
    const xh = r.normals(rows * dim, 0, 1);
    const idsH = Int32Array.from({ length: rows }, (_, i) => (i * 7) % vocab);
    const scaleH = Float32Array.from({ length: width }, (_, i) => 1 + i / width);
    const params = {
      w: r.normals(dim * width, 0, 0.3),
      bias: r.normals(width, 0, 0.1),
      table: r.normals(vocab * dim, 0, 1),
    };
    /** the computation: a linear layer with a bias (the cuBLASLt epilogue), unary ops, a sum, an embedding */
    const compute = (
      x: T.Tensor,
      ids: T.Tensor,
      scale: T.Tensor,
      w: T.Tensor,
      bias: T.Tensor,
      table: T.Tensor,
    ) => {
      const h = T.mul(T.silu(T.linear(x, w, bias)), scale); // (rows, width)
      const e = T.exp(T.scale(x, 0.1)); // freed, then its block reused by tanh inside the capture
      const es = T.sum(e, [1], true);
      e.dispose();
      const ts = T.sum(T.tanh(x), [1], true);
      const emb = T.sum(T.embedding(table, ids), [1], true);
      return T.add(h, T.add(T.add(es, ts), emb));
    };
    const eager = (be: Backend): Float32Array => {
      T.setBackend(be);
      return T.noGrad(() =>
        T.scope(() => {
          const w = T.tensor(params.w, [width, dim]);
          const bias = T.tensor(params.bias, [width]);
          const table = T.tensor(params.table, [vocab, dim]);
          const x = T.tensor(xh, [rows, dim]);
          const ids = T.tensor(idsH, [rows], 'i32');
          const scale = T.tensor(scaleH, [width]);
          return compute(x, ids, scale, w, bias, table).toArray() as Float32Array;
        }),
      );
    };
    T.setBackend(gpu);
    const w = T.keep(T.tensor(params.w, [width, dim]));
    const bias = T.keep(T.tensor(params.bias, [width]));
    const table = T.keep(T.tensor(params.table, [vocab, dim]));
    const x = T.keep(T.zeros([rows, dim]));
    const ids = T.keep(T.zeros([rows], 'i32'));
    const scale = T.keep(T.zeros([width]));
    let graph: T.GraphCapture | null = null;
    let y: T.Tensor | null = null;
    try {
      const step = () =>
        T.noGrad(() =>
          T.scope(() => {
            T.upload(x, xh);
            T.upload(ids, idsH);
            T.upload(scale, scaleH); // not registered: a constant of the graph
            return compute(x, ids, scale, w, bias, table);
          }),
        );
      step().dispose(); // warm-up: kernels compiled, the cuBLASLt plan chosen
      graph = T.captureGraph(() => {
        y = step();
      }, [xh, idsH]);
      console.log(`# graph capture: ${graph.nodes} nodes`);
      assert.ok(graph.nodes >= 10, `nodes: ${graph.nodes}`);
      const out = y as unknown as T.Tensor;
      // eager buffers allocated after the capture must not share its blocks
      const others = [T.keep(T.full([rows, dim], 9)), T.keep(T.full([rows, width], 9))];
      const scaleAtCapture = scaleH.slice();
      for (let round = 0; round < 3; round++) {
        xh.set(r.normals(rows * dim, 0, 1));
        for (let i = 0; i < rows; i++) idsH[i] = (i * 5 + round * 11 + 2) % vocab;
        scaleH.fill(7); // changes nothing: the graph keeps its snapshot
        T.setBackend(gpu);
        graph.replay();
        const got = out.toArray() as Float32Array;
        scaleH.set(scaleAtCapture);
        const ref = eager(cpu);
        const gEager = eager(gpu);
        assertClose(got, ref, 1e-5 * maxAbs(ref) + 1e-6, `replay ${round} vs the CPU`);
        assertClose(got, gEager, 1e-6 * maxAbs(ref), `replay ${round} vs an eager GPU run`);
        T.setBackend(gpu);
      }
      for (const o of others) {
        assert.ok(
          (o.toArray() as Float32Array).every((v) => v === 9),
          'a replay wrote an eager buffer',
        );
        o.dispose();
      }
      // a host read inside a capture is refused, and the stream is usable afterwards
      assert.throws(
        () => T.captureGraph(() => void T.scope(() => T.exp(x).toArray())),
        /read inside a graph capture/,
      );
      assert.throws(() => T.captureGraph(() => gpu.synchronize()), /synchronize inside a graph capture/);
      assert.equal(gpu.driver.isCapturing(), false);
      const z = T.scope(() => T.exp(T.full([3], 0)).toArray());
      assert.deepEqual(Array.from(z), [1, 1, 1]);
    } finally {
      (y as T.Tensor | null)?.dispose();
      graph?.destroy();
      for (const t of [w, bias, table, x, ids, scale]) t.dispose();
      T.setBackend(cpu);
    }
  });

  it('graph capture of a kernel module never compiled before: works, or throws naming the fix', () => {
    // attention with head dim 24 is not in the warm-up list: its module is first needed inside the capture
    const p = { batch: 1, tq: 3, tk: 3, heads: 2, kvHeads: 2, headDim: 24, scale: 0.2, causal: true };
    const n = 3 * 2 * 24;
    const qh = randn(n);
    const q = pair(qh);
    const o = out(n);
    const lse = out(6);
    cpu.attention(q.c, q.c, q.c, o.c, lse.c, null, p);
    let graph: ReturnType<NonNullable<Backend['capture']>>;
    try {
      graph = gpu.capture(() => gpu.attention(q.g, q.g, q.g, o.g, lse.g, null, p));
    } catch (e) {
      assert.match(
        (e as Error).message,
        /first used inside a graph capture|run the captured work once eagerly/,
      );
      assert.equal(gpu.driver.isCapturing(), false);
      return;
    }
    try {
      graph.replay();
      check(o, 1e-5, 'attention replayed');
    } finally {
      graph.destroy();
    }
  });

  it('graph decode: a student decoded through the replayed step gives the eager tokens (f32 and bf16), near the CPU', () => {
    try {
      T.setBackend(cpu);
      const cpuRun = decodeGreedy(tinyStudent(), 2, 6, false);
      T.setBackend(gpu);
      const model = tinyStudent(); // the same seeded weights, on the GPU
      const live = gpu.memoryStats().liveBuffers;
      const eager = decodeGreedy(model, 2, 6, false);
      const graph = decodeGreedy(model, 2, 6, true);
      assert.equal(graph.mode, 'graph', `not captured: ${graph.reason}`);
      console.log(`# decode step graph: ${graph.nodes} nodes`);
      assert.deepEqual(graph.tokens, eager.tokens, 'greedy tokens, graph vs eager');
      const onDevice = decodeGreedy(model, 2, 6, true, true); // the argmax inside the graph
      assert.equal(onDevice.mode, 'graph');
      assert.deepEqual(onDevice.tokens, eager.tokens, 'greedy tokens chosen on the device');
      graph.logits.forEach((l, i) =>
        assertClose(
          l,
          eager.logits[i],
          1e-6 * maxAbs(eager.logits[i]),
          `logits of step ${i}, graph vs eager`,
        ),
      );
      // the first step's input is the same token on both backends
      assertClose(
        graph.logits[0],
        cpuRun.logits[0],
        1e-4 * maxAbs(cpuRun.logits[0]),
        'first step vs the CPU',
      );
      // under bf16 autocast with the weights cast once, as generate and bench/decode run it
      const bf16 = (g: boolean) =>
        T.autocast('bf16', () => {
          const casts = T.castParameters(model.parameters(), 'bf16');
          try {
            return T.withCastParameters(casts, () => decodeGreedy(model, 2, 6, g));
          } finally {
            casts.dispose();
          }
        });
      const e16 = bf16(false);
      const g16 = bf16(true);
      assert.equal(g16.mode, 'graph', `bf16 not captured: ${g16.reason}`);
      assert.deepEqual(g16.tokens, e16.tokens, 'bf16 greedy tokens, graph vs eager');
      model.dispose();
      assert.equal(
        gpu.memoryStats().liveBuffers,
        live - model.parameters().length,
        'the decoders freed everything',
      );
    } finally {
      T.setBackend(cpu);
    }
  });

  it('the fused glue (gate with the D term, gated MLP product, 16-bit kept activation input) against the composed ops on the CPU', () => {
    // the CPU backend has none of the fused methods: ops.ts composes the same from its ops there
    assert.equal((cpu as Backend).siluGateD, undefined);
    const r0 = new Random(21);
    const cases: { what: string; shapes: number[][]; fn: (ts: T.Tensor[], dt: 'bf16' | null) => T.Tensor }[] =
      [
        {
          what: 'siluGateD (2, 37, 12), 3 heads',
          shapes: [[2, 37, 12], [2, 37, 12], [3], [2, 37, 12], [12]],
          fn: ([y, x, d, z, b], dt) => T.siluGateD(y, x, d, z, b, dt),
        },
        {
          what: 'siluGateD (1, 300, 256), 4 heads',
          shapes: [[1, 300, 256], [1, 300, 256], [4], [1, 300, 256], [256]],
          fn: ([y, x, d, z, b], dt) => T.siluGateD(y, x, d, z, b, dt),
        },
        {
          what: 'gated silu (3, 50, 40)',
          shapes: [
            [3, 50, 40],
            [3, 50, 40],
          ],
          fn: ([g, u], dt) => T.gatedActivation('silu', g, u, dt),
        },
        {
          what: 'gated geluNew (3, 50, 40)',
          shapes: [
            [3, 50, 40],
            [3, 50, 40],
          ],
          fn: ([g, u], dt) => T.gatedActivation('geluNew', g, u, dt),
        },
        {
          what: 'siluGateD (1, 7, 6), 2 heads: an odd size, one element per thread',
          shapes: [[1, 7, 6], [1, 7, 6], [2], [1, 7, 6], [6]],
          fn: ([y, x, d, z, b], dt) => T.siluGateD(y, x, d, z, b, dt),
        },
        {
          what: 'gated silu (3, 7, 5): an odd size, one element per thread',
          shapes: [
            [3, 7, 5],
            [3, 7, 5],
          ],
          fn: ([g, u], dt) => T.gatedActivation('silu', g, u, dt),
        },
        {
          what: 'geluNew into 16 bits (3, 7, 5), its input kept: an odd size',
          shapes: [[3, 7, 5]],
          fn: ([x], dt) => (dt ? T.unaryTo('geluNew', x, dt) : T.geluNew(x)),
        },
        {
          what: 'SwiGLU after bias-free products, its gradients back in 16 bits under autocast',
          shapes: [
            [3, 50, 40],
            [40, 40],
            [40, 40],
          ],
          fn: ([x, wg, wu], dt) =>
            T.gatedActivation('silu', T.linear(x, wg, null), T.linear(x, wu, null), dt, true),
        },
        {
          what: 'add3 (3, 50, 40)',
          shapes: [
            [3, 50, 40],
            [3, 50, 40],
            [3, 50, 40],
          ],
          fn: ([a, b, c]) => T.add3(a, b, c),
        },
        {
          what: 'causalConv1d (2, 77, 12), kernel 4 (a bf16 copy of x kept for the weight gradient)',
          shapes: [[2, 77, 12], [12, 4], [12]],
          fn: ([x, w, b]) => T.causalConv1d(x, w, b),
        },
        {
          what: 'causalConv1d (1, 40, 20), kernel 3',
          shapes: [[1, 40, 20], [20, 3], [20]],
          fn: ([x, w, b]) => T.causalConv1d(x, w, b),
        },
        {
          what: 'geluNew into 16 bits, its input kept in 16 bits (3, 50, 40)',
          shapes: [[3, 50, 40]],
          fn: ([x], dt) => (dt ? T.unaryTo('geluNew', x, dt) : T.geluNew(x)),
        },
      ];
    const run = (be: Backend, c: (typeof cases)[number], dt: 'bf16' | null, seed: number) => {
      T.setBackend(be);
      T.setAutocast(dt);
      const r = new Random(seed);
      const inputs = c.shapes.map((shape) => {
        const t = T.tensor(
          r.normals(
            shape.reduce((a, b) => a * b, 1),
            0,
            1,
          ),
          shape,
        );
        t.requiresGrad = true;
        return T.keep(t);
      });
      const cols = c.shapes[0][c.shapes[0].length - 1];
      const w = T.keep(T.tensor(r.normals(7 * cols, 0, 0.3), [7, cols]));
      const loss = T.scope(() => {
        // a product reads the result (in 16 bits under autocast), then a weighted sum
        const o = T.linear(c.fn(inputs, dt), w, null);
        const l = T.sum(T.mul(o, T.tensor(r.normals(o.size, 0, 1), o.shape)));
        l.backward();
        return l.item();
      });
      const grads = inputs.map((p) => Array.from(p.grad!.toArray()));
      for (const t of [...inputs, w]) {
        t.grad?.dispose();
        t.dispose();
      }
      T.setAutocast(null);
      return { loss, grads };
    };
    try {
      for (const c of cases) {
        for (const dt of [null, 'bf16'] as const) {
          const seed = r0.int(1, 1000);
          const ref = run(cpu, c, dt, seed);
          const g = run(gpu, c, dt, seed);
          // f32: different summation orders only (the D gradient sums 300 x 64 products);
          // bf16: the same values rounded on both sides, then bf16 products (2^-8 per operand)
          const tol = dt ? 2e-2 : 1e-4;
          assert.ok(
            Math.abs(g.loss - ref.loss) <= tol * Math.abs(ref.loss) + 1e-4,
            `${c.what} ${dt}: loss ${g.loss} vs ${ref.loss}`,
          );
          ref.grads.forEach((rg, i) =>
            assertClose(g.grads[i], rg, tol * maxAbs(rg) + 1e-6, `${c.what} ${dt}: gradient ${i}`),
          );
        }
      }
    } finally {
      T.setBackend(cpu);
      T.setAutocast(null);
    }
  });

  it('the Phi MLP with the tanh GELU in cuBLASLt epilogues (MOHAWK_GELU_EPILOGUE=1) against the composed MLP on the CPU, bf16 autocast', (t) => {
    const [rows, d, h, d2] = [96, 64, 256, 48];
    const run = (be: Backend, fused: boolean, grad: boolean) => {
      T.setBackend(be);
      T.setAutocast('bf16');
      const r = new Random(31);
      const mk = (shape: number[], std: number) => {
        const v = T.tensor(
          r.normals(
            shape.reduce((a, b) => a * b, 1),
            0,
            std,
          ),
          shape,
        );
        v.requiresGrad = grad;
        return T.keep(v);
      };
      const leaves = [
        mk([2, rows / 2, d], 1),
        mk([h, d], 0.2),
        mk([h], 0.5),
        mk([d2, h], 0.1),
        mk([d2], 0.5),
      ];
      const [x, w1, b1, w2, b2] = leaves;
      const weights = T.keep(T.tensor(r.normals(rows * d2, 0, 1), [2, rows / 2, d2]));
      let used = false;
      const res = T.scope(() => {
        const body = () => {
          let y: T.Tensor | null = fused ? T.geluMlp(x, w1, b1, w2, b2) : null;
          used = y !== null;
          y ??= T.linear(T.geluNew(T.linear(x, w1, b1)), w2, b2);
          return T.sum(T.mul(y, weights));
        };
        const l = grad ? body() : T.noGrad(body);
        if (grad) l.backward();
        return l.item();
      });
      const grads = grad ? leaves.map((p) => Array.from(p.grad!.toArray())) : [];
      for (const v of [...leaves, weights]) {
        v.grad?.dispose();
        v.dispose();
      }
      T.setAutocast(null);
      return { loss: res, grads, used };
    };
    // which GELU epilogue products cuBLASLt offers here (diagnostics for the record)
    for (const line of gpu.probeGeluEpilogues()) t.diagnostic(`cuBLASLt ${line}`);
    const prev = process.env.MOHAWK_GELU_EPILOGUE;
    process.env.MOHAWK_GELU_EPILOGUE = '1';
    try {
      for (const grad of [false, true]) {
        const ref = run(cpu, false, grad);
        const g = run(gpu, true, grad);
        t.diagnostic(
          `grad ${grad}: the epilogue product ${g.used ? 'ran' : 'was not available (composed ops ran)'}`,
        );
        // bf16 products and a bf16 activation on both sides (the CPU rounds the same f32 values)
        const tol = 2e-2;
        assert.ok(
          Math.abs(g.loss - ref.loss) <= tol * Math.abs(ref.loss) + 1e-3,
          `loss ${g.loss} vs ${ref.loss}`,
        );
        ref.grads.forEach((rg, i) => assertClose(g.grads[i], rg, tol * maxAbs(rg) + 1e-6, `gradient ${i}`));
      }
    } finally {
      if (prev === undefined) delete process.env.MOHAWK_GELU_EPILOGUE;
      else process.env.MOHAWK_GELU_EPILOGUE = prev;
      T.setBackend(cpu);
      T.setAutocast(null);
    }
  });

  it('students (Phi-Mamba, Llamba) with the fused glue: loss and every gradient against the CPU, f32 and bf16 autocast', () => {
    const teachers: [string, () => CausalLM][] = [
      ['phi', () => tinyPhi()],
      ['llama', () => tinyLlama()],
    ];
    const run = (be: Backend, make: () => CausalLM, dt: 'bf16' | null) => {
      T.setBackend(be);
      const teacher = make();
      const student = new StudentLM(studentConfigFor(teacher, { chunkSize: 8 }), { rng: new Random(3) });
      T.setAutocast(dt);
      const vocab = student.info.vocabSize;
      const ids = T.keep(
        T.tensor(
          Int32Array.from({ length: 2 * 21 }, (_, i) => (i * 29 + 3) % vocab),
          [2, 21],
          'i32',
        ),
      );
      const targets = T.keep(
        T.tensor(
          Int32Array.from({ length: 2 * 21 }, (_, i) => (i * 7 + 1) % vocab),
          [2, 21],
          'i32',
        ),
      );
      const loss = T.scope(() => {
        const l = T.crossEntropy(student.forward(ids).logits, targets);
        l.backward(undefined, { freeGraph: true });
        return l.item();
      });
      T.setAutocast(null);
      const grads = student
        .namedParameters()
        .map(([n, p]) => [n, Array.from(p.grad?.toArray() ?? [])] as const);
      for (const m of [teacher, student])
        for (const p of m.parameters()) {
          p.grad?.dispose();
          p.dispose();
        }
      ids.dispose();
      targets.dispose();
      return { loss, grads };
    };
    try {
      for (const [name, make] of teachers) {
        // f32: summation orders only (the SSD scan's f32 chunk sums)
        const ref = run(cpu, make, null);
        const g32 = run(gpu, make, null);
        assert.ok(
          Math.abs(g32.loss - ref.loss) <= 1e-4 * Math.abs(ref.loss),
          `${name} f32: loss ${g32.loss} vs ${ref.loss}`,
        );
        ref.grads.forEach(([n, rg], i) =>
          assertClose(g32.grads[i][1], rg, 2e-3 * maxAbs(rg) + 1e-6, `${name} f32: ${n}`),
        );
        // bf16 autocast: these tiny random students are sensitive to bf16 rounding (the CPU's own
        // bf16 run is up to ~25% of the largest gradient off its f32 run in layer 0), so the GPU's
        // bf16 run must be about as close to the f32 reference as the CPU's bf16 run is: within 3x
        // its error, per tensor, plus 2% of the tensor's largest gradient
        const cpu16 = run(cpu, make, 'bf16');
        const g16 = run(gpu, make, 'bf16');
        assert.ok(
          Math.abs(g16.loss - ref.loss) <= 2e-2 * Math.abs(ref.loss),
          `${name} bf16: loss ${g16.loss} vs ${ref.loss}`,
        );
        ref.grads.forEach(([n, rg], i) => {
          const maxErr = (a: readonly number[]) => a.reduce((m, v, j) => Math.max(m, Math.abs(v - rg[j])), 0);
          const bound = 3 * maxErr(cpu16.grads[i][1]) + 2e-2 * maxAbs(rg) + 1e-6;
          const err = maxErr(g16.grads[i][1]);
          assert.ok(
            err <= bound,
            `${name} bf16: ${n}: max error ${err} against f32 exceeds ${bound} (the CPU's bf16 run: ${maxErr(cpu16.grads[i][1])})`,
          );
        });
      }
    } finally {
      T.setBackend(cpu);
      T.setAutocast(null);
    }
  });

  it('graph decode: the batch engine replays its batched step and gives each sequence its generate tokens', () => {
    try {
      T.setBackend(gpu);
      const model = tinyStudent();
      const prompts = [
        [1, 2, 3, 4, 5],
        [7, 8],
        [60, 61, 62, 63, 64, 65, 66],
      ];
      const want = prompts.map((p, i) =>
        generateIds(model, p, { maxNewTokens: 8 + i, temperature: 0, stopAtEos: false, graph: false }),
      );
      const eng = new BatchEngine(model, { maxBatch: 3, graph: true });
      const got: number[][] = prompts.map(() => []);
      const submit = (i: number) =>
        eng.submit({
          promptIds: prompts[i],
          maxNewTokens: 8 + i,
          temperature: 0,
          stopAtEos: false,
          onToken: (t) => got[i].push(t),
        });
      submit(0);
      submit(1);
      let replays = 0;
      const step = () => {
        eng.step();
        if ((eng as unknown as { decoder: { mode: string } | null }).decoder?.mode === 'graph') replays++;
      };
      for (let k = 0; k < 4; k++) step();
      submit(2);
      for (let k = 0; k < 30 && eng.stats.active > 0; k++) step();
      assert.deepEqual(got, want);
      assert.ok(replays >= 4, `steps replayed: ${replays}`);
      eng.close();
      model.dispose();
    } finally {
      T.setBackend(cpu);
    }
  });

  it('a small network through the tensor layer: same loss and gradients, scopes free everything', () => {
    const run = (be: Backend) => {
      T.setBackend(be);
      const r = new Random(5);
      const mk = (shape: number[], std = 0.3) => {
        const t = T.tensor(
          r.normals(
            shape.reduce((a, b) => a * b, 1),
            0,
            std,
          ),
          shape,
        );
        t.requiresGrad = true;
        return T.keep(t);
      };
      const emb = mk([40, 24]);
      const wq = mk([24, 24]);
      const wo = mk([24, 40]);
      const ln = mk([24], 1);
      const a = mk([2, 13, 3]);
      const conv = mk([6, 4]);
      const params = [emb, wq, wo, ln, a, conv];
      const before = be.memoryStats().liveBuffers;
      const loss = T.scope(() => {
        const ids = T.tensor(
          Int32Array.from({ length: 26 }, (_, i) => (i * 7) % 40),
          [2, 13],
          'i32',
        );
        let h = T.embedding(emb, ids); // (2, 13, 24)
        h = T.layerNorm(h, ln, null, 1e-5);
        const q = T.reshape(T.matmul(h, wq), [2, 13, 4, 6]);
        const att = T.attention(q, q, q, { causal: true }).out;
        const mixed = T.reshape(att, [2, 13, 24]);
        const xs = T.reshape(T.causalConv1d(T.slice(mixed, 2, 0, 6), conv, null), [2, 13, 3, 2]);
        const logA = T.neg(T.softplus(a));
        const bc = T.reshape(T.slice(mixed, 2, 6, 18), [2, 13, 3, 4]);
        const y = T.ssdScan(xs, logA, bc, bc, { chunkSize: 4 }).y; // (2, 13, 3, 2)
        const z = T.add(T.slice(mixed, 2, 18, 24), T.reshape(y, [2, 13, 6]));
        const logits = T.matmul(T.concat([z, T.slice(mixed, 2, 0, 18)], 2), wo);
        const targets = T.tensor(
          Int32Array.from({ length: 26 }, (_, i) => (i * 3) % 40),
          [2, 13],
          'i32',
        );
        const l = T.add(T.crossEntropy(logits, targets), T.mean(T.gelu(logits)));
        l.backward();
        return l.item();
      });
      assert.equal(be.memoryStats().liveBuffers, before + params.length, 'scope left tensors behind');
      const grads = params.map((p) => Array.from(p.grad!.toArray()));
      for (const p of params) {
        p.grad!.dispose();
        p.dispose();
      }
      return { loss, grads };
    };
    try {
      const c = run(cpu);
      const g = run(gpu);
      assert.ok(Math.abs(c.loss - g.loss) <= 1e-5 * Math.abs(c.loss), `loss ${g.loss} vs ${c.loss}`);
      c.grads.forEach((ref, i) => assertClose(g.grads[i], ref, 1e-4 * maxAbs(ref) + 1e-7, `gradient ${i}`));
    } finally {
      T.setBackend(cpu);
    }
  });
});

// ---- the training step captured as CUDA graphs (src/train/step.ts) ----------------------------

describe('cuda: the training step as a CUDA graph', { skip }, () => {
  it('AdamW from device scalars (gradient scale, bias corrections, decay of the rows with a gradient) vs the CPU', () => {
    const rows = 37;
    const rowLen = 7; // rows straddle the kernel's element quads
    const n = rows * rowLen;
    const gData = randn(n, 0.1);
    for (const r of [0, 5, 36]) gData.fill(0, r * rowLen, (r + 1) * rowLen); // rows without a gradient
    const w = pair(randn(n));
    const g = pair(gData);
    const m = pair(randn(n, 0.01));
    const v = pair(uniform(n, 0, 0.01));
    const rowAbs = pair(
      Float32Array.from({ length: rows }, (_, r) =>
        gData.subarray(r * rowLen, (r + 1) * rowLen).reduce((a, x) => a + Math.abs(x), 0),
      ),
    );
    const s = { c: hold(cpu, cpu.alloc('f64', 6)), g: hold(gpu, gpu.alloc('f64', 6)) };
    for (let step = 1; step <= 3; step++) {
      // lr, gradient scale, an unused slot, then this parameter's bias corrections at 4, 5
      const scalars = Float64Array.of(
        1e-3 * step,
        0.5 + 0.2 * step,
        NaN,
        NaN,
        1 - 0.9 ** step,
        1 - 0.95 ** step,
      );
      both((be, side) => {
        be.write(s[side], scalars);
        be.adamwDevice(w[side], g[side], m[side], v[side], s[side], rowAbs[side], {
          beta1: 0.9,
          beta2: 0.95,
          eps: 1e-8,
          weightDecay: 0.1,
          biasAt: 4,
          rowLen,
        });
      });
    }
    check(w, 1e-6, 'adamwDevice param');
    check(m, 1e-6, 'adamwDevice m');
    check(v, 1e-6, 'adamwDevice v');
    for (const [be, b] of held.splice(0)) be.free(b);
  });

  it('stage 3 (f32, bf16 autocast), 1 and 2 steps (accumulation 2, clipping) replayed as graphs track the eager CUDA steps', () => {
    const baseline = gpu.memoryStats().liveBuffers;
    T.setBackend(gpu);
    try {
      const cases = [
        [3, null],
        [3, 'bf16'],
        [1, null],
        [2, null],
      ] as const;
      for (const [stage, precision] of cases) {
        const run = (mode: 'on' | 'off') => {
          const teacher = tinyLlama({}, true);
          teacher.setTrainable(() => true, false);
          const student = transferStudent(teacher, { chunkSize: 8, alphaInit: 0.9 });
          const notes: string[] = [];
          T.setAutocast(precision);
          try {
            const r = train<Batch>({
              params: student,
              lossFn: (b, ctx) => {
                const { input, target } = toTensors(b);
                // stages 1 and 2 back-propagate layer by layer, their value left on the device
                if (stage === 1) return matrixOrientationStep(teacher, student, input, 1 / ctx.accum, true);
                if (stage === 2)
                  return hiddenStateAlignmentStep(teacher, student, input, false, 1 / ctx.accum, true);
                return stage3Loss(teacher, student, input, target, { temperature: 2, ceWeight: 0.3 }).loss;
              },
              trainable: stage === 3 ? undefined : ['**.mixer.**'],
              data: counterBatches(4, 16, 257),
              budgetTokens: 7 * 128,
              batchTokens: 128,
              optimizer: { lr: 3e-3, beta1: 0.9, beta2: 0.95, eps: 1e-8, weightDecay: 0.1 },
              schedule: { kind: 'wsd', warmupSteps: 2, decayFraction: 0.5 },
              maxGradNorm: 0.5,
              cudaGraph: mode,
              progress: false,
              warn: (l) => notes.push(l),
            });
            const weights = student.namedParameters().map(([, t]) => Float64Array.from(t.toArray()));
            return { r, weights, notes };
          } finally {
            T.setAutocast(null);
            student.dispose();
            teacher.dispose();
          }
        };
        const eager = run('off');
        const graph = run('on');
        const what = `stage ${stage} ${precision ?? 'f32'}`;
        assert.deepEqual(
          graph.notes.filter((l) => /graphs off/.test(l)),
          [],
          `${what}: no fallback`,
        );
        assert.ok(graph.r.graphs && graph.r.graphs.gradients > 100, `${what}: steps replayed graphs`);
        // the same kernels on the same data: only atomics' order may differ
        const el = eager.r.history.map((m) => m.loss);
        const gl = graph.r.history.map((m) => m.loss);
        assertClose(gl, el, 1e-5 * maxAbs(el), `${what}: step losses`);
        assertClose(
          graph.r.history.map((m) => m.grad_norm),
          eager.r.history.map((m) => m.grad_norm),
          1e-4 * maxAbs(eager.r.history.map((m) => m.grad_norm)),
          `${what}: gradient norms`,
        );
        eager.weights.forEach((ref, i) =>
          assertClose(graph.weights[i], ref, 1e-5 * maxAbs(ref) + 1e-7, `${what}: weight ${i}`),
        );
      }
    } finally {
      T.setBackend(cpu);
    }
    assert.equal(gpu.memoryStats().liveBuffers, baseline, 'graphs and their pools freed with the run');
  });
});

/** token windows from a counter: the same stream for every run */
function counterBatches(batch: number, seqLen: number, vocab: number): BatchSource<Batch> {
  let i = 0;
  return {
    next: () => {
      const r = new Random(77 + i++);
      const input = Int32Array.from({ length: batch * seqLen }, () => r.int(0, vocab));
      const target = Int32Array.from({ length: batch * seqLen }, () => r.int(0, vocab));
      return { batch, seqLen, input, target };
    },
    state: () => ({ i }),
    restore: (st) => {
      i = (st as { i: number }).i;
    },
  };
}

// ---- optim: the fused optimizer passes (kernels/optim.cu, src/train/optimizer.ts) -------------
// GPU vs CPU: row sums of squares (f64, both orders exact to 1e-12 relative; zero rows exactly 0),
// their total rounded to f32, AdamW with the fused flags (1e-6 as adamwDevice), the non-finite flag
// exact, the bf16 copy equal to the cast of the GPU's own updated weights; and the whole AdamW with
// and without MOHAWK_FUSED_OPTIM on the GPU.

describe('cuda: fused optimizer passes vs the CPU', { skip }, () => {
  it('fused optimizer: gradRowSquares (16-byte and scalar rows) and sumF64 vs the CPU', () => {
    for (const [rows, rowLen] of [
      [37, 7],
      [29, 64],
      [3, 2052],
      [1, 1],
    ]) {
      const n = rows * rowLen;
      const gData = randn(n, 0.1);
      if (rows > 5) {
        gData.fill(0, 0, rowLen); // no gradient
        gData.fill(1e-30, 2 * rowLen, 3 * rowLen); // f32 squares would underflow
      }
      const g = pair(gData);
      const sq = out(rows + 3, 'f64');
      const tot = out(2);
      both((be, side) => {
        be.fill(sq[side], 0);
        be.gradRowSquares(g[side], sq[side], 2, rows, rowLen);
        be.fill(tot[side], 0);
        be.sumF64(sq[side], rows + 3, tot[side], 1);
      });
      check(sq, 1e-12, `row squares ${rows} x ${rowLen}`, 0);
      const got = gpu.read(sq.g);
      if (rows > 5) {
        assert.equal(got[2], 0, 'an all-zero row is exactly 0');
        assert.ok(got[4] > 0, 'a row of 1e-30 is not 0');
      }
      assert.equal(got[0], 0, 'entries before at untouched');
      check(tot, 1e-6, `total ${rows} x ${rowLen}`);
    }
    for (const [be, b] of held.splice(0)) be.free(b);
  });

  it('fused optimizer: adamwFused (quads and scalars) vs the CPU: weights, moments, flag, bf16 copy', () => {
    for (const [rows, rowLen] of [
      [37, 7],
      [33, 8],
    ]) {
      const n = rows * rowLen;
      const gData = randn(n, 0.1);
      for (const r of [0, 5, rows - 1]) gData.fill(0, r * rowLen, (r + 1) * rowLen);
      const w = pair(randn(n));
      const g = pair(gData);
      const m = pair(randn(n, 0.01));
      const v = pair(uniform(n, 0, 0.01));
      const sq = pair(
        Float64Array.from({ length: rows + 1 }, (_, r) =>
          r === 0 ? NaN : gData.subarray((r - 1) * rowLen, r * rowLen).reduce((a, x) => a + x * x, 0),
        ),
        'f64',
      );
      const flag = pair([0]);
      const w16 = out(n, 'bf16');
      const s = { c: hold(cpu, cpu.alloc('f64', 6)), g: hold(gpu, gpu.alloc('f64', 6)) };
      for (let step = 1; step <= 3; step++) {
        const scalars = Float64Array.of(
          1e-3 * step,
          0.5 + 0.2 * step,
          NaN,
          NaN,
          1 - 0.9 ** step,
          1 - 0.95 ** step,
        );
        both((be, side) => {
          be.write(s[side], scalars);
          be.adamwFused(w[side], g[side], m[side], v[side], s[side], sq[side], flag[side], w16[side], {
            beta1: 0.9,
            beta2: 0.95,
            eps: 1e-8,
            weightDecay: 0.1,
            biasAt: 4,
            rowLen,
            rowAt: 1,
          });
        });
      }
      check(w, 1e-6, `adamwFused param ${rowLen}`);
      check(m, 1e-6, `adamwFused m ${rowLen}`);
      check(v, 1e-6, `adamwFused v ${rowLen}`);
      checkExact(flag, 'finite: the flag stays 0');
      const mine = gpu.read(w.g);
      const copy = gpu.read(w16.g);
      for (let i = 0; i < n; i++) assert.equal(copy[i], f32ToBf16(mine[i]), `bf16 copy [${i}]`);
      // rows without a gradient kept their decay-free values on both (the flags agree)
      // a NaN gradient: the flag goes to 1 on both
      const bad = Float32Array.from(gData);
      bad[n - 3] = NaN;
      both((be, side) => {
        be.write(g[side], bad);
        be.adamwFused(w[side], g[side], m[side], v[side], s[side], null, flag[side], null, {
          beta1: 0.9,
          beta2: 0.95,
          eps: 1e-8,
          weightDecay: 0.1,
          biasAt: 4,
          rowLen,
          rowAt: 0,
        });
      });
      checkExact(flag, 'a NaN weight: the flag is 1');
      assert.equal(gpu.read(flag.g)[0], 1);
    }
    for (const [be, b] of held.splice(0)) be.free(b);
  });

  it('fused optimizer: AdamW on the GPU with and without MOHAWK_FUSED_OPTIM (device step, clipping scale, rows without gradients)', async () => {
    const { AdamW } = await import('../src/train/optimizer.js');
    const prev = process.env.MOHAWK_FUSED_OPTIM;
    T.setBackend(gpu);
    try {
      const run = (fused: boolean) => {
        process.env.MOHAWK_FUSED_OPTIM = fused ? '1' : '0';
        const r = new Random(11);
        const shapes: [string, number[]][] = [
          ['layers.0.mixer.in_proj.weight', [40, 24]],
          ['layers.0.mixer.D', [5]],
          ['lm_head.weight', [33, 24]],
          ['layers.0.mlp.fc1.bias', [9]],
        ];
        const params = shapes.map(([name, s]): [string, T.Tensor] => {
          const t = T.keep(T.tensor(r.normals(s.reduce((a, b) => a * b, 1)), s));
          t.requiresGrad = true;
          return [name, t];
        });
        const opt = new AdamW(params, { lr: 1e-2, weightDecay: 0.2 });
        assert.equal(opt.fused, fused);
        const norms: number[] = [];
        for (let step = 0; step < 4; step++) {
          params.forEach(([, t], i) => {
            t.grad?.dispose();
            const g = r.normals(t.size, 0, 1);
            if (i === 0) g.fill(0, 24 * 3, 24 * 9); // in_proj rows 3..8 without a gradient
            t.grad = T.keep(T.tensor(g, t.shape));
          });
          let sq = 0;
          if (fused) sq = opt.gradSquaresHost();
          else for (const [, t] of params) sq += T.sum(T.square(t.grad!)).item();
          norms.push(Math.sqrt(sq));
          opt.prepareDeviceStep(1e-2, 0.8);
          opt.deviceStep({ squaresReady: fused });
        }
        const weights = params.map(([, t]) => Array.from(t.toArray()));
        opt.dispose();
        for (const [, t] of params) {
          t.grad?.dispose();
          t.dispose();
        }
        return { weights, norms };
      };
      const f = run(true);
      const u = run(false);
      assertClose(f.norms, u.norms, 0, 'gradient norms', 1e-5);
      f.weights.forEach((w, i) => assertClose(w, u.weights[i], 1e-6 * maxAbs(u.weights[i]), `weight ${i}`));
    } finally {
      if (prev === undefined) delete process.env.MOHAWK_FUSED_OPTIM;
      else process.env.MOHAWK_FUSED_OPTIM = prev;
      T.setBackend(cpu);
    }
  });

  it('fused optimizer: a weight gradient written straight into the unwritten .grad (f32, bf16 with weight copies) vs the CPU', () => {
    const r = new Random(21);
    const xData = r.normals(3 * 40 * 24);
    const wData = r.normals(33 * 24);
    const run = (be: Backend, precision: 'f32' | 'bf16') => {
      T.setBackend(be);
      try {
        const x = T.keep(T.tensor(xData, [3, 40, 24]));
        const w = T.keep(T.tensor(wData, [33, 24]));
        w.requiresGrad = true;
        w.grad = T.keep(T.tensor(new Float32Array(33 * 24).fill(NaN), [33, 24]));
        w.gradUnwritten = true; // the GPU writes dW into it; the CPU too (same path)
        const copies = precision === 'bf16' ? new T.WeightCopies([w], 'bf16') : null;
        T.scope(() =>
          T.autocast(precision === 'bf16' ? 'bf16' : null, () => {
            const y = T.withWeightCopies(copies, () => T.linear(x, w, null));
            T.sum(T.mul(y, y)).backward();
          }),
        );
        const g = Array.from(w.grad.toArray());
        assert.equal(w.gradUnwritten, false, 'the product wrote the gradient');
        copies?.dispose();
        w.grad.dispose();
        w.dispose();
        x.dispose();
        return g;
      } finally {
        T.setBackend(cpu);
      }
    };
    for (const precision of ['f32', 'bf16'] as const) {
      const ref = run(cpu, precision);
      const got = run(gpu, precision);
      assertClose(got, ref, (precision === 'f32' ? 1e-5 : 1e-2) * maxAbs(ref), `dW ${precision}`);
    }
  });
});

// ---- biasgrad (issue 18): the bias gradient from the pass that rounds the output gradient ------

describe(
  'cuda: castColumnSums and the linear backward under bf16 autocast (MOHAWK_FUSED_BIAS_GRAD)',
  { skip },
  () => {
    // live buffers when each test starts (earlier suites may keep caches alive)
    let baseline = 0;
    beforeEach(() => {
      if (!skip) baseline = gpu.memoryStats().liveBuffers;
    });
    afterEach(() => {
      for (const [be, b] of held.splice(0)) be.free(b);
      if (!skip) assert.equal(gpu.memoryStats().liveBuffers, baseline, 'a test leaked device buffers');
    });

    it('castColumnSums against the CPU: plain and through the GELU (inlined) and SiLU (any op) derivatives, bf16 and f16, x4 and odd widths, split rows', () => {
      // (rows, cols): one block, widths not a multiple of 4 (the scalar kernel), many row splits
      const shapes = [
        [1, 4],
        [3, 5],
        [37, 128],
        [513, 7],
        [2048, 260],
        [4100, 1024],
        [300, 6000],
      ];
      for (const [rows, cols] of shapes)
        for (const op of [null, 'geluNew', 'silu'] as const)
          for (const dt of ['bf16', 'f16'] as const) {
            const what = `(${rows}, ${cols}) ${op ?? 'plain'} ${dt}`;
            const n = rows * cols;
            const gHost = randn(n, 3);
            const g = pair(gHost);
            const x = pair(Array.from(randn(n, 2), f32ToBf16), 'bf16');
            const o = out(n, dt);
            const s = out(cols);
            both((be, k) => be.castColumnSums!(g[k], o[k], s[k], rows, cols, op, op ? x[k] : null));
            if (op === null) checkExact(o, `${what}: rounded gradient`);
            else {
              // the derivative in f32 on the GPU (tanhf; 0.5 (1 + t) cancels where t is near -1), in f64
              // on the CPU: one 16-bit rounding step apart, or 4e-6 of the largest gradient where the
              // derivative is tiny
              const ref = numbers(cpu.read(o.c), dt);
              const got = numbers(gpu.read(o.g), dt);
              assertClose(
                got,
                ref,
                4e-6 * maxAbs(gHost),
                `${what}: rounded gradient`,
                dt === 'bf16' ? 2 ** -7 : 2 ** -10,
              );
            }
            // f32 sums in another order than the CPU's (and the f32 derivative): per column within
            // 4e-6 of the sum of |g| down that column
            const ref = numbers(cpu.read(s.c), 'f32');
            const got = numbers(gpu.read(s.g), 'f32');
            for (let c = 0; c < cols; c++) {
              let absSum = 0;
              for (let r = 0; r < rows; r++) absSum += Math.abs(gHost[r * cols + c]);
              const err = Math.abs(got[c] - ref[c]);
              if (!(err <= 4e-6 * absSum + 1e-6))
                assert.fail(`${what}: column sum ${c}: ${got[c]} vs ${ref[c]} (sum of |g| ${absSum})`);
            }
          }
    });

    it('a linear layer under bf16 autocast: fused against MOHAWK_FUSED_BIAS_GRAD=0 on the GPU and against the CPU', () => {
      // (lead, in, out): rows folded from batch axes; an odd output width (the scalar kernel)
      const cases: [number[], number, number][] = [
        [[4, 333], 64, 256],
        [[2, 96], 48, 37],
      ];
      const run = (be: Backend, lead: number[], inF: number, outF: number, fusedBias: boolean) =>
        withEnv('MOHAWK_FUSED_BIAS_GRAD', fusedBias ? undefined : '0', () => {
          T.setBackend(be);
          const r = new Random(inF * 7 + outF);
          const rows = lead.reduce((a, b) => a * b, 1);
          const mk = (shape: number[], std: number) => {
            const t = T.tensor(
              r.normals(
                shape.reduce((a, b) => a * b, 1),
                0,
                std,
              ),
              shape,
            );
            t.requiresGrad = true;
            return T.keep(t);
          };
          const x = mk([...lead, inF], 1);
          const w = mk([outF, inF], 0.2);
          const b = mk([outF], 0.5);
          const weights = T.keep(T.tensor(r.normals(rows * outF, 0, 1), [...lead, outF]));
          T.scope(() => T.autocast('bf16', () => T.sum(T.mul(T.linear(x, w, b), weights)).backward()));
          const grads = [x, w, b].map((t) => Array.from(t.grad!.toArray()));
          for (const t of [x, w, b, weights]) {
            t.grad?.dispose();
            t.dispose();
          }
          return grads;
        });
      try {
        for (const [lead, inF, outF] of cases) {
          const what = `${JSON.stringify(lead)} x ${inF} -> ${outF}`;
          const fused = run(gpu, lead, inF, outF, true);
          const plain = run(gpu, lead, inF, outF, false);
          const ref = run(cpu, lead, inF, outF, true);
          // the same bf16 gradient feeds the same products: x's and w's gradients agree
          for (const i of [0, 1])
            assertClose(
              fused[i],
              plain[i],
              1e-5 * maxAbs(plain[i]),
              `${what}: gradient ${i}, fused vs unfused`,
            );
          assertClose(
            fused[2],
            plain[2],
            1e-5 * maxAbs(plain[2]) + 1e-6,
            `${what}: bias gradient, fused vs unfused`,
          );
          // against the CPU: bf16 products (2^-8 per operand), the bias's gradient in f32 on both sides
          for (const i of [0, 1])
            assertClose(fused[i], ref[i], 2e-2 * maxAbs(ref[i]) + 1e-6, `${what}: gradient ${i} vs cpu`);
          assertClose(fused[2], ref[2], 1e-5 * maxAbs(ref[2]) + 1e-6, `${what}: bias gradient vs cpu`);
        }
      } finally {
        T.setBackend(cpu);
      }
    });

    it('the Phi MLP with fc1 and its GELU as one op (linearActivation) against MOHAWK_FUSED_LINEAR_ACT=0 on the GPU and the CPU, bf16 autocast', () => {
      const run = (be: Backend, linearAct: boolean) =>
        withEnv('MOHAWK_FUSED_LINEAR_ACT', linearAct ? undefined : '0', () => {
          T.setBackend(be);
          const r = new Random(5);
          const mlp = new MLP(64, 256, 'gelu_new', { rng: r });
          const params = mlp.parameters();
          const x = T.keep(T.tensor(r.normals(2 * 150 * 64, 0, 1), [2, 150, 64]));
          x.requiresGrad = true;
          const weights = T.keep(T.tensor(r.normals(2 * 150 * 64, 0, 1), [2, 150, 64]));
          let op = '';
          const loss = T.scope(() =>
            T.autocast('bf16', () => {
              const y = mlp.forward(x);
              op = y.node!.inputs[0].node?.op ?? '';
              const l = T.sum(T.mul(y, weights));
              l.backward();
              return l.item();
            }),
          );
          const grads = [x, ...params].map((t) => Array.from(t.grad!.toArray()));
          for (const t of [x, weights, ...params]) {
            t.grad?.dispose();
            t.dispose();
          }
          return { loss, grads, op };
        });
      try {
        // the activation pass first (the same kernels' arithmetic as composed), then cuBLASLt's
        // GELU epilogue writing the activation and the kept pre-activation
        const fused = withEnv('MOHAWK_LINEAR_ACT_EPILOGUE', '0', () => run(gpu, true));
        const epilogue = withEnv('MOHAWK_LINEAR_ACT_EPILOGUE', undefined, () => {
          const unary = () => gpu.kernels.launchCounts().unary_f32_to16_keep_x4 ?? 0;
          const before = unary();
          const r = run(gpu, true);
          assert.equal(unary() - before, 0, 'the epilogue run made no activation pass');
          return r;
        });
        const composed = run(gpu, false);
        const ref = run(cpu, true);
        assert.equal(epilogue.op, 'linearActivation');
        // cuBLASLt's tanh against ours, both rounded to bf16: bf16 apart at most
        assert.ok(
          Math.abs(epilogue.loss - composed.loss) <= 1e-2 * Math.abs(composed.loss) + 1e-3,
          `epilogue loss ${epilogue.loss} vs ${composed.loss}`,
        );
        epilogue.grads.forEach((g, i) =>
          assertClose(
            g,
            composed.grads[i],
            2e-2 * maxAbs(composed.grads[i]) + 1e-6,
            `epilogue gradient ${i}`,
          ),
        );
        assert.equal(fused.op, 'linearActivation');
        assert.notEqual(composed.op, 'linearActivation');
        // the same kernels' arithmetic on the GPU: the bias sums in another order only
        assert.equal(fused.loss, composed.loss);
        fused.grads.forEach((g, i) =>
          assertClose(
            g,
            composed.grads[i],
            1e-5 * maxAbs(composed.grads[i]) + 1e-6,
            `gradient ${i} vs composed`,
          ),
        );
        // the CPU keeps the f32 pre-activation for the derivative: bf16 apart
        assert.ok(
          Math.abs(fused.loss - ref.loss) <= 2e-2 * Math.abs(ref.loss) + 1e-3,
          `loss ${fused.loss} vs ${ref.loss}`,
        );
        ref.grads.forEach((g, i) =>
          assertClose(fused.grads[i], g, 2e-2 * maxAbs(g) + 1e-6, `gradient ${i} vs cpu`),
        );
      } finally {
        T.setBackend(cpu);
      }
    });
  },
);

// ==== helper "decode" (issue 18, batch-1 decoding): gemv.cu's shapes and the fused decode-step kernels ====

describe('cuda: decoding at the memory floor (gemv shapes, fused step kernels)', { skip }, () => {
  // every gemv.cu build (the backend sends only m = 1 to it by default)
  const maxRows = gemvSwitch.maxRows;
  before(() => {
    gemvSwitch.maxRows = 8;
  });
  after(() => {
    gemvSwitch.maxRows = maxRows;
  });
  afterEach(() => {
    for (const [be, b] of held.splice(0)) be.free(b);
  });

  it('gemv: every compile-time shape the benchmark sweeps, at the 1.5B decode shapes, against the CPU', () => {
    const saved = { ...gemvTuning };
    const launches = () => gpu.kernels.launchCounts().gemv_bf16_f32 ?? 0;
    const before = launches();
    let runs = 0;
    try {
      for (const c of [
        { m: 1, n: 8224, k: 2048 }, // in_proj
        { m: 1, n: 2048, k: 8192 }, // fc2 (split-K)
        { m: 4, n: 515, k: 2048 },
        { m: 8, n: 33, k: 8200 },
        { m: 2, n: 1, k: 8 },
      ]) {
        const bits = (n: number) => Uint16Array.from(randn(n), f32ToBf16);
        const ab = bits(c.m * c.k);
        const wb = bits(c.n * c.k);
        const ag = hold(gpu, gpu.alloc('bf16', ab.length));
        const wg = hold(gpu, gpu.alloc('bf16', wb.length));
        gpu.write(ag, ab);
        gpu.write(wg, wb);
        const ac = hold(cpu, cpu.alloc('f32', ab.length));
        const wc = hold(cpu, cpu.alloc('f32', wb.length));
        cpu.write(ac, Float32Array.from(ab, bf16ToF32));
        cpu.write(wc, Float32Array.from(wb, bf16ToF32));
        const bias = pair(randn(c.n));
        const p = {
          batch: 1,
          ...c,
          transA: false,
          transB: true,
          strideA: c.m * c.k,
          strideB: c.n * c.k,
          strideC: c.m * c.n,
          alpha: 0.5,
          beta: 1,
        };
        const init = randn(c.m * c.n);
        const ref = hold(cpu, cpu.alloc('f32', c.m * c.n));
        cpu.write(ref, init);
        cpu.matmul(ac, wc, ref, p, bias.c);
        // every swept shape at m = 1 (decoding at batch 1), three of them for the other builds
        const shapes =
          c.m === 1
            ? [4, 8].flatMap((warps) =>
                [1, 2, 4].flatMap((rows) => [2, 4, 8].map((unroll) => ({ warps, rows, unroll }))),
              )
            : [
                { warps: 4, rows: 2, unroll: 4 },
                { warps: 8, rows: 4, unroll: 2 },
                { warps: 4, rows: 1, unroll: 8 },
              ];
        for (const { warps, rows, unroll } of shapes)
          for (const l2pf of c.m === 1 && c.n > 1000 ? [0, 1] : [0]) {
            Object.assign(gemvTuning, { warps, rows, unroll, wavesWarps: 16, l2pf });
            const o = { c: ref, g: hold(gpu, gpu.alloc('f32', c.m * c.n)) };
            gpu.write(o.g, init);
            gpu.matmul(ag, wg, o.g, p, bias.g);
            runs++;
            check(
              o,
              2e-6 * Math.sqrt(c.k),
              `gemv ${JSON.stringify({ ...c, warps, rows, unroll, l2pf })}`,
              1e-6,
            );
          }
      }
    } finally {
      Object.assign(gemvTuning, saved);
    }
    assert.equal(launches() - before, runs, 'every product above ran in gemv.cu');
  });

  /** fn's outputs (and the tensors it updates in place) on one backend, from seeded inputs */
  const onBackend = (
    be: Backend,
    seed: number,
    shapes: number[][],
    fn: (ts: T.Tensor[]) => T.Tensor[],
    dt: 'bf16' | null = null,
  ): Float64Array[] => {
    T.setBackend(be);
    T.setAutocast(dt);
    const r = new Random(seed);
    const inputs = shapes.map((shape) =>
      T.keep(
        T.tensor(
          r.normals(
            shape.reduce((a, b) => a * b, 1),
            0,
            1,
          ),
          shape,
        ),
      ),
    );
    try {
      return T.noGrad(() =>
        T.scope(() =>
          fn(inputs).map((t) =>
            Float64Array.from(t.dtype === 'bf16' ? T.cast(t, 'f32').toArray() : t.toArray()),
          ),
        ),
      );
    } finally {
      for (const t of inputs) t.dispose();
      T.setAutocast(null);
      T.setBackend(cpu);
    }
  };

  it('layerNormTo: LayerNorm stored in bf16 in one kernel (few rows: one block per row; many: one warp per row) against the CPU (LayerNorm, then the cast)', () => {
    assert.equal((cpu as Backend).layerNormTo16, undefined, 'the CPU composes it');
    for (const [rows, cols, bias] of [
      [3, 2048, true],
      [1, 37, false],
      [5, 1000, true],
      [300, 256, true], // many rows: one warp per row, the 16 bits written alone
      [260, 384, false],
    ] as const) {
      const shapes = [[rows, cols], [cols], [cols]];
      const fn = ([x, w, b]: T.Tensor[]) => [T.layerNormTo(x, w, bias ? b : null, 1e-5, 'bf16')];
      const ref = onBackend(cpu, 5, shapes, fn)[0];
      const warp = () => gpu.kernels.launchCounts().layernorm_warp_f32 ?? 0;
      const before = warp();
      const got = onBackend(gpu, 5, shapes, fn)[0];
      // many rows of a width the warp kernel takes: it writes the 16 bits alone
      assert.equal(
        warp() - before,
        rows >= 256 ? 1 : 0,
        `layerNormTo (${rows}, ${cols}): warp kernel launches`,
      );
      // the same f32 values up to the sums' order, rounded to bf16 (2^-8) on both sides
      assertClose(got, ref, 8e-3 * maxAbs(ref), `layerNormTo (${rows}, ${cols}) bias ${bias}`);
    }
  });

  it('ssmStepGated: the mixer step with its output gate read from in_proj output columns, two steps, against the CPU', () => {
    assert.equal((cpu as Backend).ssmStepGate, undefined, 'the CPU composes it');
    for (const [batch, H, G, P, N, K, silu, bias, dt] of [
      [2, 4, 2, 16, 8, 4, true, true, null],
      [2, 4, 2, 16, 8, 4, true, true, 'bf16'],
      [1, 32, 32, 64, 64, 4, false, true, 'bf16'], // the 1.5B student's shapes (a group per head: conv pushed inline)
      [3, 4, 4, 16, 8, 3, true, true, null], // a group per head, batch 3
      [3, 3, 1, 40, 24, 3, true, false, null],
      [1, 1, 1, 7, 5, 1, false, true, null],
      [1, 2, 1, 8, 80, 4, true, true, 'bf16'], // N > 64: the state rows in a loop
    ] as const) {
      const hp = H * P;
      const cc = hp + 2 * G * N;
      // columns in another order than in_proj's, with gaps: [pad 3 | z | pad 2 | a | xbc | pad 1]
      const rowLen = 3 + hp + 2 + H + cc + 1;
      const layout = { rowLen, zOff: 3, aOff: 3 + hp + 2, xOff: 3 + hp + 2 + H };
      const shapes = [
        [batch, rowLen],
        [batch, rowLen],
        [batch, K - 1, cc],
        [cc, K],
        [cc],
        [H],
        [hp],
        [batch, H, P, N],
      ];
      const fn = ([zx1, zx2, conv0, w, cb, D, zb, ssm0]: T.Tensor[]) => {
        const conv = T.add(conv0, T.zeros(conv0.shape)); // fresh state buffers, updated in place
        const ssm = T.add(ssm0, T.zeros(ssm0.shape));
        const opts = { groups: G, silu, dtype: dt };
        const y1 = T.ssmStepGated(zx1, layout, conv, w, bias ? cb : null, D, zb, ssm, opts);
        const y2 = T.ssmStepGated(zx2, layout, conv, w, bias ? cb : null, D, zb, ssm, opts);
        return [y1, y2, ssm, conv];
      };
      const what = JSON.stringify({ batch, H, G, P, N, K, silu, bias, dt });
      const ref = onBackend(cpu, 9, shapes, fn);
      const got = onBackend(gpu, 9, shapes, fn);
      const tol = dt ? 8e-3 : 1e-5;
      assertClose(got[0], ref[0], tol * maxAbs(ref[0]) + 1e-6, `ssmStepGated ${what}: step 1 output`);
      assertClose(got[1], ref[1], tol * maxAbs(ref[1]) + 1e-6, `ssmStepGated ${what}: step 2 output`);
      assertClose(got[2], ref[2], 1e-5 * maxAbs(ref[2]) + 1e-6, `ssmStepGated ${what}: SSM state`);
      assert.deepEqual(Array.from(got[3]), Array.from(ref[3]), `ssmStepGated ${what}: conv state`);
    }
  });

  it('linearAct: the product, bias and tanh GELU into bf16 (gemv.cu epilogue for few rows, composed otherwise) against the CPU', () => {
    assert.equal((cpu as Backend).matmulAct, undefined, 'the CPU composes it');
    const launches = () => gpu.kernels.launchCounts().gemv_bf16_f32 ?? 0;
    for (const [m, k, n, xLow] of [
      [1, 2048, 300, true],
      [5, 64, 33, false],
      [20, 64, 33, false], // above gemv's rows: cuBLASLt's GELU epilogue where it has one
      [96, 256, 384, true], // aligned: the GELU epilogue, bf16 out, no activation pass
    ] as const) {
      for (const epilogue of [true, false]) {
        gpu.actEpilogue = epilogue;
        const shapes = [[m, k], [n, k], [n]];
        const fn = ([x, w, b]: T.Tensor[]) => [
          T.linearAct(xLow ? T.cast(x, 'bf16') : x, w, b, 'geluNew', 'bf16'),
        ];
        const ref = onBackend(cpu, 13, shapes, fn, 'bf16')[0];
        const before = launches();
        const unary = () => gpu.kernels.launchCounts().unary_f32_to16_x4 ?? 0;
        const unaryBefore = unary();
        let got: Float64Array;
        try {
          got = onBackend(gpu, 13, shapes, fn, 'bf16')[0];
        } finally {
          gpu.actEpilogue = true;
        }
        const what = `linearAct (${m}, ${k}) x (${n}, ${k}), epilogue ${epilogue}`;
        assert.equal(launches() - before, m <= 8 ? 1 : 0, `${what}: gemv.cu launches`);
        if (m === 96) assert.equal(unary() - unaryBefore, epilogue ? 0 : 1, `${what}: activation passes`);
        // the same bf16 operands; f32 sums in another order (and cuBLASLt's tanh), rounded to bf16
        assertClose(got, ref, 1e-2 * maxAbs(ref) + 1e-6, what);
      }
    }
  });

  it('linearResidual: (r1 + r2) + the product with bias, f32 (gemv.cu epilogue for few rows, add3 otherwise) against the CPU', () => {
    assert.equal((cpu as Backend).matmulResidual, undefined, 'the CPU composes it');
    const launches = () => gpu.kernels.launchCounts().gemv_bf16_f32 ?? 0;
    for (const [m, k, n, xLow] of [
      [1, 8192, 2048, true], // fc2 of the 1.5B student
      [3, 64, 33, false],
      [20, 64, 33, false], // above gemv's rows: the product, then add3
    ] as const) {
      const shapes = [[m, k], [n, k], [n], [m, n], [m, n]];
      const fn = ([x, w, b, r1, r2]: T.Tensor[]) => [
        T.linearResidual(xLow ? T.cast(x, 'bf16') : x, w, b, r1, r2, 'bf16'),
      ];
      const ref = onBackend(cpu, 17, shapes, fn, 'bf16')[0];
      const before = launches();
      const got = onBackend(gpu, 17, shapes, fn, 'bf16')[0];
      assert.equal(
        launches() - before,
        m <= 8 ? 1 : 0,
        `linearResidual (${m}, ${k}) x (${n}, ${k}): gemv.cu launches`,
      );
      // the same bf16 operands, f32 sums in another order
      assertClose(
        got,
        ref,
        2e-6 * Math.sqrt(k) * maxAbs(ref) + 1e-5,
        `linearResidual (${m}, ${k}) x (${n}, ${k})`,
      );
    }
  });

  it('linearPair: two Linears of one input in one gemv.cu launch (f32, and the GELU into bf16) against the CPU', () => {
    assert.equal((cpu as Backend).matmulPair, undefined, 'the CPU composes it');
    const launches = () => gpu.kernels.launchCounts().gemv_bf16_f32 ?? 0;
    for (const [m, k, n1, n2, xLow] of [
      [1, 2048, 8224, 8192, true], // in_proj and fc1 of the 1.5B student
      [3, 64, 33, 70, false],
      [1, 16392, 5, 3, true], // split-K over both products
      [20, 64, 33, 70, false], // above gemv's rows: composed
    ] as const) {
      const shapes = [[m, k], [n1, k], [n1], [n2, k], [n2]];
      const fn = ([x, w1, b1, w2, b2]: T.Tensor[]) =>
        T.linearPair(xLow ? T.cast(x, 'bf16') : x, w1, b1, w2, b2, 'geluNew', 'bf16');
      const ref = onBackend(cpu, 19, shapes, fn, 'bf16');
      const before = launches();
      const got = onBackend(gpu, 19, shapes, fn, 'bf16');
      const what = `linearPair (${m}, ${k}) x (${n1} + ${n2}, ${k})`;
      assert.equal(launches() - before, m <= 8 ? 1 : 0, `${what}: gemv.cu launches`);
      assertClose(got[0], ref[0], 2e-6 * Math.sqrt(k) * maxAbs(ref[0]) + 1e-5, `${what}: the f32 product`);
      assertClose(got[1], ref[1], 1e-2 * maxAbs(ref[1]) + 1e-6, `${what}: the GELU in bf16`);
    }
  });

  it('parallelBlockOut: out_proj and fc2 in one gemv.cu launch with the residual sum (add3 order) against the CPU', () => {
    assert.equal((cpu as Backend).blockOut, undefined, 'the CPU composes it');
    const launches = () => gpu.kernels.launchCounts().gemv_block_out ?? 0;
    for (const [m, k1, k2, n, bias] of [
      [1, 2048, 8192, 2048, false], // the 1.5B student (out_proj without a bias)
      [3, 64, 2056, 45, true],
      [20, 64, 128, 45, true], // above gemv's rows: composed
    ] as const) {
      const shapes = [[m, k1], [n, k1], [n], [m, k2], [n, k2], [n], [m, n]];
      const fn = ([g, wo, bo, h, wf, bf, x]: T.Tensor[]) => {
        const r = T.parallelBlockOut(
          T.cast(g, 'bf16'),
          wo,
          bias ? bo : null,
          T.cast(h, 'bf16'),
          wf,
          bf,
          x,
          'bf16',
        );
        return [r.mixerOut, r.out];
      };
      const ref = onBackend(cpu, 23, shapes, fn, 'bf16');
      const before = launches();
      const got = onBackend(gpu, 23, shapes, fn, 'bf16');
      const what = `parallelBlockOut m ${m}, (${n}, ${k1}) and (${n}, ${k2})`;
      assert.equal(launches() - before, m <= 8 ? 1 : 0, `${what}: gemv_block_out launches`);
      assertClose(got[0], ref[0], 2e-6 * Math.sqrt(k1) * maxAbs(ref[0]) + 1e-5, `${what}: out_proj`);
      assertClose(got[1], ref[1], 2e-6 * Math.sqrt(k2) * maxAbs(ref[1]) + 1e-5, `${what}: the block output`);
    }
  });

  it('graph decode in bf16 with the fused step kernels: fewer graph nodes, logits near the unfused step (MOHAWK_DECODE_FUSED=0)', () => {
    const saved = process.env.MOHAWK_DECODE_FUSED;
    try {
      T.setBackend(gpu);
      const model = tinyStudent();
      const run = (fused: boolean) => {
        process.env.MOHAWK_DECODE_FUSED = fused ? '1' : '0';
        return T.autocast('bf16', () => {
          const casts = T.castParameters(model.parameters(), 'bf16');
          try {
            return T.withCastParameters(casts, () => decodeGreedy(model, 2, 6, true));
          } finally {
            casts.dispose();
          }
        });
      };
      const off = run(false);
      const on = run(true);
      console.log(`# bf16 decode step graph: ${on.nodes} nodes fused, ${off.nodes} unfused`);
      assert.equal(on.mode, 'graph', `not captured: ${on.reason}`);
      assert.ok(on.nodes < off.nodes, `fused step ${on.nodes} nodes, unfused ${off.nodes}`);
      // the first step reads the same token: bf16 roundings of the same values on both paths
      assertClose(
        on.logits[0],
        off.logits[0],
        2e-2 * maxAbs(off.logits[0]),
        'first step logits, fused vs unfused',
      );
      model.dispose();
    } finally {
      if (saved === undefined) delete process.env.MOHAWK_DECODE_FUSED;
      else process.env.MOHAWK_DECODE_FUSED = saved;
      T.setBackend(cpu);
    }
  });
});

// ==== mixer (helper "mixer"): the in_proj output read in place, no split copies ===============

describe('cuda: the mixer reads in_proj in place', { skip }, () => {
  afterEach(() => {
    for (const [be, b] of held.splice(0)) be.free(b);
  });

  it('causalConv1dWindow forward (and its bf16 copy) and backward into a window, written or added', () => {
    // (batch, T, width of the wide matrix, window start, channels, kernel)
    for (const [batch, t, width, start, ch, k] of [
      [2, 37, 50, 7, 19, 4],
      [1, 2, 9, 4, 5, 4],
      [3, 9, 301, 1, 300, 1],
      [1, 1000, 24, 8, 8, 3],
      [2, 300, 100, 40, 40, 4],
    ]) {
      const what = `conv1d window (${batch}, ${t}, ${width}) [${start}, ${start + ch}) kernel ${k}`;
      const win = { offset: start, stride: width };
      const x = pair(randn(batch * t * width));
      const w = pair(randn(ch * k));
      const b = pair(randn(ch));
      const y = out(batch * t * ch);
      const xk = out(batch * t * ch, 'bf16');
      both((be, s) => be.causalConv1dWindow!(x[s], win, w[s], b[s], y[s], xk[s], batch, t, ch, k));
      check(y, 1e-6, what);
      checkExact(xk, `${what}: bf16 copy`);
      const y2 = out(batch * t * ch);
      both((be, s) => be.causalConv1dWindow!(x[s], win, w[s], null, y2[s], null, batch, t, ch, k));
      check(y2, 1e-6, `${what}, no bias`);
      const gy = pair(randn(batch * t * ch));
      for (const kept of [false, true])
        for (const accumulate of [false, true]) {
          // gx starts from other values: outside the window they must stay as they are
          const gx = pair(randn(batch * t * width));
          const gw = out(ch * k);
          const gb = out(ch);
          both((be, s) =>
            be.causalConv1dWindowBackward!(
              kept ? xk[s] : x[s],
              kept ? null : win,
              w[s],
              gy[s],
              gx[s],
              win,
              accumulate,
              gw[s],
              gb[s],
              batch,
              t,
              ch,
              k,
            ),
          );
          const how = `${what} backward (${kept ? 'bf16 copy' : 'f32 window'}, ${accumulate ? 'added' : 'written'})`;
          check(gx, 1e-6, `${how}: x`);
          check(gw, 2e-6 * Math.sqrt(batch * t), `${how}: weight`, 1e-6);
          check(gb, 2e-6 * Math.sqrt(batch * t), `${how}: bias`, 1e-6);
        }
    }
  });

  it('siluGateDWindow (z read in place) forward and backward (z gradient written or added, bias gradient)', () => {
    // (rows, cols, headDim, width of z's matrix, window start): 16-byte and scalar paths
    for (const [rows, cols, headDim, width, start] of [
      [37, 64, 16, 200, 128],
      [5, 6, 3, 13, 4],
      [300, 256, 64, 1028, 768],
    ]) {
      const what = `siluGateD window (${rows}, ${cols}) of width ${width} at ${start}`;
      const win = { offset: start, stride: width };
      const y = pair(randn(rows * cols));
      const x = pair(randn(rows * cols));
      const D = pair(randn(cols / headDim));
      const z = pair(randn(rows * width));
      const bias = pair(randn(cols));
      for (const dtype of ['f32', 'bf16'] as DType[]) {
        const o = out(rows * cols, dtype);
        const yk = dtype === 'f32' ? null : out(rows * cols, dtype);
        const zk = dtype === 'f32' ? null : out(rows * cols, dtype);
        both((be, s) =>
          be.siluGateDWindow!(
            y[s],
            x[s],
            D[s],
            z[s],
            win,
            bias[s],
            o[s],
            rows,
            cols,
            headDim,
            yk?.[s] ?? null,
            zk?.[s] ?? null,
          ),
        );
        if (dtype === 'f32') check(o, 1e-6, `${what}: out`);
        else check(o, 2 ** -8, `${what}: out (bf16)`);
        if (yk && zk) {
          checkExact(yk, `${what}: kept y`);
          checkExact(zk, `${what}: kept z`);
        }
        const g = pair(randn(rows * cols));
        for (const accumulate of [false, true]) {
          const gy = out(rows * cols);
          const gx = out(rows * cols);
          const gz = pair(randn(rows * width));
          const gD = out(cols / headDim);
          const gb = out(cols);
          both((be, s) =>
            be.siluGateDWindowBackward!(
              (yk ?? y)[s],
              x[s],
              D[s],
              (zk ?? z)[s],
              bias[s],
              g[s],
              gy[s],
              gx[s],
              gz[s],
              win,
              accumulate,
              gD[s],
              gb[s],
              rows,
              cols,
              headDim,
            ),
          );
          const how = `${what} backward from ${dtype} (${accumulate ? 'added' : 'written'})`;
          check(gy, 1e-6, `${how}: y`);
          check(gx, 1e-6, `${how}: x`);
          check(gz, 1e-6, `${how}: z`);
          check(gD, 1e-5, `${how}: D`, 1e-6);
          check(gb, 1e-5, `${how}: bias`, 1e-6);
        }
      }
    }
  });

  it('LayerNorm and RMSNorm backward adding into the input gradient (the residual stream)', () => {
    for (const [rows, cols] of [
      [37, 33],
      [700, 384],
      [3, 2048],
    ]) {
      const x = pair(randn(rows * cols, 2).map((v) => v + 0.5));
      const w = pair(randn(cols));
      const b = pair(randn(cols));
      const gy = pair(randn(rows * cols));
      const y = out(rows * cols);
      const mean = out(rows);
      const rstd = out(rows);
      both((be, s) => be.layerNorm(x[s], w[s], b[s], y[s], mean[s], rstd[s], rows, cols, 1e-5));
      const gx = pair(randn(rows * cols));
      const gw = out(cols);
      const gb = out(cols);
      both((be, s) =>
        be.layerNormBackward(x[s], w[s], mean[s], rstd[s], gy[s], gx[s], gw[s], gb[s], rows, cols, true),
      );
      // (the norm's part to the tolerance of the test above, against the larger sum)
      check(gx, 1e-4, `layerNorm backward added (${rows}, ${cols})`, 1e-5);
      check(gw, 1e-5 * Math.sqrt(rows), 'layerNorm weight gradient', 1e-6);
      check(gb, 1e-5 * Math.sqrt(rows), 'layerNorm bias gradient', 1e-6);
      const rs = out(rows);
      both((be, s) => be.rmsNorm(x[s], w[s], y[s], rs[s], rows, cols, 1e-6));
      const gx2 = pair(randn(rows * cols));
      const gw2 = out(cols);
      both((be, s) => be.rmsNormBackward(x[s], w[s], rs[s], gy[s], gx2[s], gw2[s], rows, cols, true));
      check(gx2, 1e-4, `rmsNorm backward added (${rows}, ${cols})`, 1e-5);
      check(gw2, 1e-5 * Math.sqrt(rows), 'rmsNorm weight gradient', 1e-6);
    }
  });

  it('LayerNorm and RMSNorm with the 16-bit copy of their output (bf16, f16)', () => {
    for (const [rows, cols] of [
      [37, 33],
      [3, 2048],
    ]) {
      const x = pair(randn(rows * cols, 2));
      const w = pair(randn(cols));
      const b = pair(randn(cols));
      for (const dtype of ['bf16', 'f16'] as DType[]) {
        const y = out(rows * cols);
        const y16 = out(rows * cols, dtype);
        const mean = out(rows);
        const rstd = out(rows);
        both((be, s) => be.layerNorm(x[s], w[s], b[s], y[s], mean[s], rstd[s], rows, cols, 1e-5, y16[s]));
        check(y, 1e-5, `layerNorm (${rows}, ${cols}) with a ${dtype} copy`);
        // the copy is the GPU's own output rounded
        const cast16 = hold(gpu, gpu.alloc(dtype, rows * cols));
        gpu.cast(y.g, cast16);
        assert.deepEqual(
          Array.from(gpu.read(y16.g)),
          Array.from(gpu.read(cast16)),
          `layerNorm ${dtype} copy`,
        );
        check(y16, 2 ** -7, `layerNorm ${dtype} copy vs the CPU's`);
        both((be, s) => be.rmsNorm(x[s], w[s], y[s], rstd[s], rows, cols, 1e-6, y16[s]));
        check(y, 1e-5, `rmsNorm (${rows}, ${cols}) with a ${dtype} copy`);
        gpu.cast(y.g, cast16);
        assert.deepEqual(Array.from(gpu.read(y16.g)), Array.from(gpu.read(cast16)), `rmsNorm ${dtype} copy`);
      }
    }
  });

  it('addRmsNorm: the residual add and the RMSNorm of the sum in one pass', () => {
    for (const [rows, cols] of [
      [37, 33],
      [3, 2048],
      [700, 384],
    ]) {
      const a = pair(randn(rows * cols));
      const b = pair(randn(rows * cols));
      const w = pair(randn(cols));
      const sum = out(rows * cols);
      const y = out(rows * cols);
      const rstd = out(rows);
      const y16 = out(rows * cols, 'bf16');
      both((be, s) => be.addRmsNorm!(a[s], b[s], w[s], sum[s], y[s], rstd[s], rows, cols, 1e-6, y16[s]));
      checkExact(sum, `addRmsNorm (${rows}, ${cols}) sum`);
      check(y, 1e-5, `addRmsNorm (${rows}, ${cols}) out`);
      check(rstd, 1e-5, `addRmsNorm (${rows}, ${cols}) rstd`);
      // the same values as rmsNorm of the sum on the GPU
      const y2 = out(rows * cols);
      const rstd2 = out(rows);
      gpu.rmsNorm(sum.g, w.g, y2.g, rstd2.g, rows, cols, 1e-6);
      assert.deepEqual(
        Array.from(gpu.read(y.g)),
        Array.from(gpu.read(y2.g)),
        'addRmsNorm vs rmsNorm of the sum',
      );
      const cast16 = hold(gpu, gpu.alloc('bf16', rows * cols));
      gpu.cast(y.g, cast16);
      assert.deepEqual(Array.from(gpu.read(y16.g)), Array.from(gpu.read(cast16)), 'addRmsNorm bf16 copy');
    }
  });

  it('logDecayWindow (-softplus of a window read in place) and its backward, written or added', () => {
    for (const [rows, cols, width, start] of [
      [37, 3, 20, 17],
      [1000, 32, 1056, 1024],
    ]) {
      const win = { offset: start, stride: width };
      const a = pair(randn(rows * width, 3));
      const y = out(rows * cols);
      const ak = out(rows * cols);
      both((be, s) => be.logDecayWindow!(a[s], win, y[s], ak[s], rows, cols));
      check(y, 1e-6, `logDecay (${rows}, ${cols}) of width ${width}`);
      checkExact(ak, 'logDecay kept a');
      const g = pair(randn(rows * cols));
      for (const accumulate of [false, true]) {
        const ga = pair(randn(rows * width));
        both((be, s) => be.logDecayWindowBackward!(ak[s], g[s], ga[s], win, accumulate, rows, cols));
        check(ga, 1e-6, `logDecay backward (${accumulate ? 'added' : 'written'})`);
      }
    }
  });

  it('SSD scan backward adding x gradient onto what gx holds (fast f32 and bf16, oracle)', () => {
    const cases: SsdParams[] = [
      { batch: 2, seqLen: 300, heads: 4, groups: 4, headDim: 64, dState: 64, chunkSize: 128 },
      { batch: 1, seqLen: 77, heads: 3, groups: 1, headDim: 64, dState: 16, chunkSize: 21 },
      { batch: 2, seqLen: 500, heads: 10, groups: 5, headDim: 7, dState: 5, chunkSize: 16 },
    ];
    const prev = gpu.ssdImpl;
    try {
      for (const p of cases) {
        const { batch: B, seqLen: L, heads: H, groups: G, headDim: P, dState: N, chunkSize: Q } = p;
        const nC = Math.ceil(L / Q);
        const n = B * L * H * P;
        const x = pair(randn(n));
        const logA = pair(uniform(B * L * H, -1.5, -0.01));
        const bm = pair(randn(B * L * G * N, 0.5));
        const cm = pair(randn(B * L * G * N, 0.5));
        const gy = pair(randn(n));
        const y = out(n);
        const states = out(B * nC * H * P * N);
        for (const [impl, lp] of [
          ['fast', false],
          ['fast', true],
          ['oracle', false],
        ] as const) {
          gpu.ssdImpl = impl;
          const q = { ...p, lowPrecision: lp };
          both((be, s) => be.ssdScan(x[s], logA[s], bm[s], cm[s], y[s], states[s], null, q));
          // the plain gradient on the GPU, then the same added onto other values
          const plain = out(n);
          const gl = out(B * L * H);
          const gb = out(B * L * G * N);
          const gc = out(B * L * G * N);
          gpu.ssdScanBackward(x.g, logA.g, bm.g, cm.g, states.g, gy.g, plain.g, gl.g, gb.g, gc.g, q);
          const base = randn(n);
          const gx = pair(base);
          gpu.ssdScanBackward(x.g, logA.g, bm.g, cm.g, states.g, gy.g, gx.g, gl.g, gb.g, gc.g, q, true);
          const got = gpu.read(gx.g);
          const want = Float64Array.from(gpu.read(plain.g), (v, i) => Math.fround(v + base[i]));
          assertClose(
            got,
            want,
            1e-6 * maxAbs(want),
            `ssd gx added (${impl} ${lp ? 'bf16' : 'f32'}) ${JSON.stringify(p)}`,
          );
          // and the CPU's (f32 only: the bf16 scan rounds its operands)
          if (!lp) {
            cpu.ssdScanBackward(x.c, logA.c, bm.c, cm.c, states.c, gy.c, gx.c, gl.c, gb.c, gc.c, q, true);
            check(gx, 2e-4, `ssd gx added vs the CPU (${impl})`, 1e-6);
          }
        }
      }
    } finally {
      gpu.ssdImpl = prev;
    }
  });

  it('the Phi-Mamba mixer under bf16 autocast: the same outputs and gradients as with split copies', () => {
    const run = (inplace: boolean) => {
      const prev = process.env.MOHAWK_MIXER_INPLACE;
      process.env.MOHAWK_MIXER_INPLACE = inplace ? '1' : '0';
      T.setBackend(gpu);
      try {
        const m = new DiscreteMamba2(
          {
            dModel: 64,
            dState: 16,
            nQkHeads: 2,
            nVHeads: 4,
            dConv: 4,
            convBias: true,
            expand: 1,
            chunkSize: 16,
            activation: 'identity',
            bias: false,
          },
          { rng: new Random(9) },
        );
        const r = new Random(10);
        const u = T.keep(T.tensor(r.normals(2 * 45 * 64, 0, 1), [2, 45, 64]));
        u.requiresGrad = true;
        const wts = T.keep(T.tensor(r.normals(2 * 45 * 64, 0, 1), [2, 45, 64]));
        const y = T.scope(() =>
          T.autocast('bf16', () => {
            const o = m.forward(u).out;
            T.sum(T.mul(o, wts)).backward();
            return Float64Array.from(o.toArray());
          }),
        );
        const grads = [u, ...m.parameters()].map((p) => Float64Array.from(p.grad!.toArray()));
        for (const p of [u, wts, ...m.parameters()]) {
          p.grad?.dispose();
          p.dispose();
        }
        return { y, grads };
      } finally {
        T.setBackend(cpu);
        if (prev === undefined) delete process.env.MOHAWK_MIXER_INPLACE;
        else process.env.MOHAWK_MIXER_INPLACE = prev;
      }
    };
    const split = run(false);
    const inplace = run(true);
    assertClose(inplace.y, split.y, 1e-6 * maxAbs(split.y), 'mixer output');
    split.grads.forEach((ref, i) =>
      assertClose(inplace.grads[i], ref, 1e-5 * maxAbs(ref) + 1e-7, `gradient ${i} (0: the input)`),
    );
  });
});

// ---- attn: the tensor-core attention forward, version 2 (attn_tc_kv16 + attn_tc_fwd2) ----------

/**
 * Each named output's largest difference to the CPU's, relative to the largest |CPU value| (o16
 * read as bf16; equal values, -inf lse on both, count 0; NaN fails): a line of them to the log, and
 * a failure per output over its tolerance.
 */
function compareOutputs(
  outputs: Record<string, Pair>,
  tol: Record<string, number>,
  label: string,
  failures: string[],
): void {
  const errs: string[] = [];
  for (const [name, x] of Object.entries(outputs)) {
    const dt = name === 'o16' ? 'bf16' : 'f32';
    const ref = numbers(cpu.read(x.c), dt);
    const got = numbers(gpu.read(x.g), dt);
    const scale = maxAbs(ref) || 1;
    let worst = 0;
    for (let i = 0; i < ref.length; i++) {
      const e = ref[i] === got[i] ? 0 : Math.abs(got[i] - ref[i]) / scale;
      if (!(e <= worst)) worst = e; // NaN sticks
    }
    errs.push(`${name} ${worst.toExponential(1)}`);
    if (!(worst <= tol[name])) failures.push(`${label}: ${name} ${worst} > ${tol[name]}`);
  }
  console.log(`# ${label}: ${errs.join(', ')}`);
}

describe('cuda: attention forward version 2 vs cpu', { skip }, () => {
  afterEach(() => {
    for (const [be, b] of held.splice(0)) be.free(b);
  });

  it('attention forward version 2 (attn_tc_fwd2, MOHAWK_ATTN_V2): causal, GQA, tq < tk, odd lengths, rows without keys, head dims 16-128, tilings, bf16 out', () => {
    // out (f32 and bf16), lse and the probabilities fed with its lse, against the CPU in f64 on bf16-rounded
    // inputs (what differs: the bf16 rounding of the probabilities before p v), as for the first
    // version; MOHAWK_ATTN_V2=all takes version 2 at every length, =0 the first version
    const configs = [
      { v2: 'all', defines: '' },
      { v2: 'all', defines: 'F2_WARPS=8,F2_MT=1' },
      { v2: 'all', defines: 'F2_STAGES=2,F2_BK=32,F2_MT=3' },
      { v2: 'all', defines: 'F2_WARPS=2,F2_BK=16,F2_STAGES=4,F2_MINB=1' },
      { v2: 'all', defines: 'F2_KV32=1,F2_BK=32' },
      { v2: '0', defines: '' },
    ];
    const cases = [
      { batch: 2, tq: 300, tk: 300, heads: 4, kvHeads: 1, headDim: 64, causal: true },
      { batch: 1, tq: 200, tk: 521, heads: 2, kvHeads: 2, headDim: 64, causal: true },
      { batch: 2, tq: 100, tk: 100, heads: 4, kvHeads: 2, headDim: 64, causal: true },
      { batch: 1, tq: 37, tk: 165, heads: 3, kvHeads: 1, headDim: 64, causal: true },
      { batch: 1, tq: 1, tk: 77, heads: 4, kvHeads: 2, headDim: 128, causal: true },
      { batch: 2, tq: 70, tk: 130, heads: 2, kvHeads: 2, headDim: 80, causal: false },
      { batch: 1, tq: 130, tk: 333, heads: 2, kvHeads: 1, headDim: 128, causal: false },
      { batch: 1, tq: 200, tk: 200, heads: 2, kvHeads: 2, headDim: 80, causal: true },
      { batch: 1, tq: 48, tk: 33, heads: 2, kvHeads: 2, headDim: 32, causal: false },
      { batch: 1, tq: 257, tk: 257, heads: 2, kvHeads: 1, headDim: 16, causal: true },
      { batch: 1, tq: 40, tk: 20, heads: 2, kvHeads: 1, headDim: 64, causal: true }, // rows with no keys
      { batch: 1, tq: 70, tk: 70, heads: 2, kvHeads: 1, headDim: 24, causal: true }, // f32 kernels (D 24)
    ];
    const tol = { o: 1e-2, lse: 2e-3, probs: 1e-2, o16: 1e-2 };
    const bf = (x: Float32Array) => x.map((v) => bf16ToF32(f32ToBf16(v)));
    const failures: string[] = [];
    try {
      for (const cfg of configs) {
        process.env.MOHAWK_ATTN_V2 = cfg.v2;
        if (cfg.defines) process.env.MOHAWK_ATTENTION_TC_DEFINES = cfg.defines;
        else delete process.env.MOHAWK_ATTENTION_TC_DEFINES;
        for (const c of cases) {
          const p = { ...c, scale: 1 / Math.sqrt(c.headDim) };
          const nq = c.batch * c.tq * c.heads * c.headDim;
          const nk = c.batch * c.tk * c.kvHeads * c.headDim;
          const q = pair(bf(randn(nq, 1.5)));
          const k = pair(bf(randn(nk)));
          const v = pair(bf(randn(nk)));
          const o = out(nq);
          const lse = out(c.batch * c.heads * c.tq);
          const probs = out(c.batch * c.heads * c.tq * c.tk);
          // and a bf16 out (the CPU rounds its result; the kernels round theirs as they write)
          const o16 = out(nq, 'bf16');
          const lse2 = out(c.batch * c.heads * c.tq);
          both((be, s) => {
            const ps = { ...p, lowPrecision: s === 'g' };
            be.attention(q[s], k[s], v[s], o[s], lse[s], probs[s], ps);
            be.attention(q[s], k[s], v[s], o16[s], lse2[s], null, ps);
          });
          compareOutputs(
            { o, lse, probs, o16 },
            tol,
            `attention v2 [${cfg.v2} ${cfg.defines}] ${JSON.stringify(c)}`,
            failures,
          );
          for (const [be, b] of held.splice(0)) be.free(b);
        }
      }
    } finally {
      delete process.env.MOHAWK_ATTN_V2;
      delete process.env.MOHAWK_ATTENTION_TC_DEFINES;
    }
    assert.deepEqual(failures, []);
  });

  it('attention with the rotary embedding inside (p.rope): halves and pairs, partial, GQA, offsets, fallbacks', () => {
    // q and k rotated as they are rounded (attn_tc_qkv16_rope) or, where the kernels cannot
    // (rotaryDim not a multiple of 8 for halves, short tq, F2_KV32, V2=0), by rope into scratch;
    // against the CPU, which rotates and then attends
    const configs = [
      { v2: '', defines: '' },
      { v2: '0', defines: '' },
      { v2: '', defines: 'F2_KV32=1,F2_BK=32' },
    ];
    const cases = [
      { batch: 2, t: 200, heads: 4, kvHeads: 4, headDim: 64, rotaryDim: 32, interleaved: false, offset: 0 },
      { batch: 1, t: 130, heads: 4, kvHeads: 2, headDim: 64, rotaryDim: 64, interleaved: false, offset: 7 },
      { batch: 1, t: 150, heads: 2, kvHeads: 1, headDim: 64, rotaryDim: 64, interleaved: true, offset: 0 },
      { batch: 1, t: 100, heads: 2, kvHeads: 2, headDim: 64, rotaryDim: 24, interleaved: false, offset: 3 },
      { batch: 1, t: 100, heads: 2, kvHeads: 2, headDim: 64, rotaryDim: 20, interleaved: false, offset: 0 },
      { batch: 1, t: 70, heads: 2, kvHeads: 1, headDim: 32, rotaryDim: 6, interleaved: true, offset: 1 },
      { batch: 1, t: 140, heads: 2, kvHeads: 1, headDim: 128, rotaryDim: 128, interleaved: false, offset: 0 },
      { batch: 1, t: 90, heads: 2, kvHeads: 2, headDim: 80, rotaryDim: 40, interleaved: true, offset: 0 },
      { batch: 1, t: 33, heads: 2, kvHeads: 1, headDim: 64, rotaryDim: 32, interleaved: false, offset: 2 },
    ];
    const tol = { o: 1e-2, lse: 2e-3, o16: 1e-2 };
    const bf = (x: Float32Array) => x.map((v) => bf16ToF32(f32ToBf16(v)));
    const failures: string[] = [];
    try {
      for (const cfg of configs) {
        if (cfg.v2) process.env.MOHAWK_ATTN_V2 = cfg.v2;
        else delete process.env.MOHAWK_ATTN_V2;
        if (cfg.defines) process.env.MOHAWK_ATTENTION_TC_DEFINES = cfg.defines;
        else delete process.env.MOHAWK_ATTENTION_TC_DEFINES;
        for (const c of cases) {
          const p = {
            batch: c.batch,
            tq: c.t,
            tk: c.t,
            heads: c.heads,
            kvHeads: c.kvHeads,
            headDim: c.headDim,
            scale: 1 / Math.sqrt(c.headDim),
            causal: true,
            rope: {
              rotaryDim: c.rotaryDim,
              theta: 10000,
              interleaved: c.interleaved,
              positionOffset: c.offset,
            },
          };
          const nq = c.batch * c.t * c.heads * c.headDim;
          const nk = c.batch * c.t * c.kvHeads * c.headDim;
          const q = pair(bf(randn(nq, 1.5)));
          const k = pair(bf(randn(nk)));
          const v = pair(bf(randn(nk)));
          const o = out(nq);
          const lse = out(c.batch * c.heads * c.t);
          const o16 = out(nq, 'bf16');
          const lse2 = out(c.batch * c.heads * c.t);
          both((be, s) => {
            const ps = { ...p, lowPrecision: s === 'g' };
            be.attention(q[s], k[s], v[s], o[s], lse[s], null, ps);
            be.attention(q[s], k[s], v[s], o16[s], lse2[s], null, ps);
          });
          compareOutputs(
            { o, lse, o16 },
            tol,
            `attention rope [${cfg.v2} ${cfg.defines}] ${JSON.stringify(c)}`,
            failures,
          );
          for (const [be, b] of held.splice(0)) be.free(b);
        }
      }
    } finally {
      delete process.env.MOHAWK_ATTN_V2;
      delete process.env.MOHAWK_ATTENTION_TC_DEFINES;
    }
    assert.deepEqual(failures, []);
  });
});

describe('cuda: GEMM autotuning (MOHAWK_GEMM_TUNE)', { skip }, () => {
  it('tuned products (plain, accumulating, with a bias, bf16 out) equal the CPU product; C survives the timing', () => {
    assert.equal(gemmTuneCandidates(undefined), 0);
    assert.equal(gemmTuneCandidates('1'), 0);
    assert.equal(gemmTuneCandidates('8'), 8);
    assert.throws(() => gemmTuneCandidates('many'), /MOHAWK_GEMM_TUNE: expected 0 \(off\) or a count/);
    const tg = new CudaBackend({ gemmTune: 8 });
    const bufs: DeviceBuffer[] = [];
    const put = (dtype: DType, h: HostArray) => {
      const b = tg.alloc(dtype, h.length);
      tg.write(b, h);
      bufs.push(b);
      return b;
    };
    try {
      for (const c of [
        { m: 256, n: 192, k: 320, transA: false, transB: false, beta: 0, bias: false, out: 'f32' },
        { m: 128, n: 256, k: 192, transA: true, transB: false, beta: 1, bias: false, out: 'f32' },
        { m: 192, n: 128, k: 256, transA: false, transB: true, beta: 0, bias: true, out: 'f32' },
        { m: 136, n: 264, k: 72, transA: false, transB: true, beta: 0, bias: false, out: 'bf16' },
      ] as const) {
        const bits = (n: number) => Uint16Array.from(randn(n), f32ToBf16);
        const ab = bits(c.m * c.k);
        const bb = bits(c.k * c.n);
        const c0 = Float32Array.from(randn(c.m * c.n));
        const biasH = Float32Array.from(randn(c.n));
        const p = {
          batch: 1,
          m: c.m,
          n: c.n,
          k: c.k,
          transA: c.transA,
          transB: c.transB,
          strideA: c.m * c.k,
          strideB: c.k * c.n,
          strideC: c.m * c.n,
          alpha: 0.5,
          beta: c.beta,
        };
        const ac = hold(cpu, cpu.alloc('f32', ab.length));
        const bc = hold(cpu, cpu.alloc('f32', bb.length));
        cpu.write(ac, Float32Array.from(ab, bf16ToF32));
        cpu.write(bc, Float32Array.from(bb, bf16ToF32));
        const cc = hold(cpu, cpu.alloc('f32', c0.length));
        cpu.write(cc, c0);
        const biasC = hold(cpu, cpu.alloc('f32', c.n));
        cpu.write(biasC, biasH);
        cpu.matmul(ac, bc, cc, p, c.bias ? biasC : null);
        const ref = Float64Array.from(cpu.read(cc) as Float32Array);
        const cg = put(c.out, c.out === 'f32' ? c0 : Uint16Array.from(c0, f32ToBf16));
        const biasG = c.bias ? put('f32', biasH) : null;
        tg.matmul(put('bf16', ab), put('bf16', bb), cg, p, biasG);
        const got = numbers(tg.read(cg), c.out);
        const tol = (c.out === 'f32' ? 2e-6 * Math.sqrt(c.k) : 8e-3) * maxAbs(ref) + 1e-6;
        let worst = 0;
        for (let i = 0; i < ref.length; i++) worst = Math.max(worst, Math.abs(got[i] - ref[i]));
        assert.ok(worst <= tol, `tuned matmul ${JSON.stringify(c)}: error ${worst} > ${tol}`);
      }
      // every product shape above was timed once and kept a candidate
      const tuned = tg.tunedProducts();
      assert.ok(tuned.length >= 1, 'no product was tuned');
      for (const t of tuned)
        assert.ok(t.rank >= 0 && t.ms > 0 && t.ms <= t.firstMs + 1e-9, JSON.stringify(t));
    } finally {
      for (const b of bufs) tg.free(b);
      for (const [be, b] of held.splice(0)) be.free(b);
    }
  });
});

describe('cuda: an input read by two products adds its gradient in the second GEMM', { skip }, () => {
  it('linear then linear / linearActivation: no add pass with MOHAWK_GRAD_ACCUMULATE, the same gradients as without, the CPU close', () => {
    try {
      const cpuRef = twoConsumers(cpu, 'linear', false);
      for (const second of ['linear', 'linearActivation'] as const)
        for (const last of ['first', 'second'] as const) {
          const on = twoConsumers(gpu, second, true, last);
          const off = twoConsumers(gpu, second, false, last);
          const what = `${second}, the ${last} consumer last`;
          assert.equal(off.adds, 1, `${what}: autograd adds the two parts without the accumulation`);
          assert.equal(on.adds, 0, `${what}: no add pass with it`);
          on.grads.forEach((g, i) =>
            assertClose(g, off.grads[i], 1e-5 * maxAbs(off.grads[i]) + 1e-7, `${what}: gradient ${i}`),
          );
          if (second === 'linear')
            on.grads.forEach((g, i) =>
              assertClose(
                g,
                cpuRef.grads[i],
                1e-4 * maxAbs(cpuRef.grads[i]) + 1e-6,
                `linear: gradient ${i} vs cpu`,
              ),
            );
        }
    } finally {
      T.setBackend(cpu);
    }
  });
});
