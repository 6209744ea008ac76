// The CUDA backend: every kernel of the Backend interface on an NVIDIA GPU. Driver API, NVRTC
// and cuBLAS through koffi (driver.ts, nvrtc.ts, cublas.ts); kernel sources in kernels/*.cu;
// device memory from a caching allocator (allocator.ts). All work is queued on one stream, in
// order; `read` and `synchronize` wait for it. The CPU backend is the reference: shapes,
// accumulate-versus-overwrite and the dropout hash are the same, f32 arithmetic (reductions,
// norms and losses accumulate in f32) where the CPU accumulates in f64.

import type {
  AdamWParams,
  AttentionParams,
  Backend,
  BinaryOp,
  DeviceBuffer,
  DType,
  HostArray,
  MatmulParams,
  MemoryStats,
  ReduceOp,
  RopeParams,
  SsdParams,
  SsmStepParams,
  UnaryOp,
} from '../backend.js';
import { denseStrides, DTYPE_BYTES } from '../backend.js';
import { f32ToBf16, f32ToF16 } from '../dtype.js';
import { CachingAllocator, formatBytes, type AllocatorStats } from './allocator.js';
import { Cublas, type GemmDType } from './cublas.js';
import { CudaError, Driver } from './driver.js';
import { KernelRegistry, Profiler, type Arg } from './kernels.js';
import { Nvrtc } from './nvrtc.js';
import {
  ATTENTION_TC_SIGNATURES,
  attentionTcBackward,
  attentionTcForward,
  attentionTcHeadDim,
  attentionTcPlan,
  type AttentionTcHost,
} from './attention-tc.js';
import {
  SSD_FAST_SIGNATURES,
  ssdFastBackward,
  ssdFastForward,
  ssdFastPlan,
  type SsdFastHost,
} from './ssd-fast.js';

export { CudaError } from './driver.js';

const DTYPE_CODE: Record<DType, number> = { f32: 0, f64: 1, i32: 2, bf16: 3, f16: 4 };

const UNARY_CODE: Record<UnaryOp, number> = {
  identity: 0,
  neg: 1,
  exp: 2,
  log: 3,
  sqrt: 4,
  rsqrt: 5,
  tanh: 6,
  sigmoid: 7,
  softplus: 8,
  silu: 9,
  relu: 10,
  gelu: 11,
  geluNew: 12,
  square: 13,
  abs: 14,
  reciprocal: 15,
};

const BINARY_CODE: Record<BinaryOp, number> = { add: 0, sub: 1, mul: 2, div: 3, maximum: 4, eq: 5 };

/** Kernel signatures (argument kinds, see kernels.ts) by module and name. */
export const KERNEL_SIGNATURES = {
  elementwise: {
    unary_f32: 'ppiffl',
    unary_f32_to16: 'ppiffil',
    unary_backward_f32: 'pppil',
    binary_f32: 'pppiiDDDl',
    copy_b4: 'plpliDDDl',
    copy_b2: 'plpliDDDl',
    copy_b8: 'plpliDDDl',
    accumulate_f32: 'plpliDDDli',
    accumulate_f64: 'plpliDDDli',
    accumulate_i32: 'plpliDDDli',
    binary_f32_i32: 'pppiiDDDl',
    cast_f32_bf16: 'ppl',
    cast_bf16_f32: 'ppl',
    copy_b4_i32: 'plpliDDDl',
    copy_b2_i32: 'plpliDDDl',
    copy_b8_i32: 'plpliDDDl',
    accumulate_f32_i32: 'plpliDDDli',
    fill_f64: 'pdl',
    cast_any: 'pipil',
    causal_mask_f32: 'ppliif',
    dropout_f32: 'ppdul',
    silu_gate_f32: 'ppppli',
    silu_gate_backward_f32: 'pppppp' + 'li',
    adamw_f32: 'ppppfffffffl',
  },
  reduce: {
    reduce_mid_f32: 'ppilllli',
    reduce_rows_f32: 'ppilll',
    cumsum_f32: 'ppllli',
    segsum_f32: 'ppli',
    segsum_bwd_suffix_f32: 'pli',
    segsum_bwd_rows_f32: 'pplii',
  },
  rows: {
    softmax_f32: 'ppii',
    softmax_backward_f32: 'pppii',
    layernorm_f32: 'ppppppif',
    layernorm_backward_f32: 'ppppppppli',
    rmsnorm_f32: 'ppppif',
    rmsnorm_backward_f32: 'ppppppli',
    cross_entropy_f32: 'ppppii',
    cross_entropy_backward_f32: 'pppppii',
    kl_div_f32: 'pppif',
    kl_div_backward_f32: 'ppppif',
    embedding_f32: 'ppplii',
    embedding_backward_f32: 'ppplii',
  },
  sequence: {
    conv1d_f32: 'pppplii' + 'i',
    conv1d_backward_x_f32: 'ppplii' + 'i',
    conv1d_backward_w_f32: 'pppplii' + 'il',
    conv1d_k4_f32: 'pppplii' + 'i',
    conv1d_backward_x_k4_f32: 'ppplii' + 'i',
    conv1d_backward_w_k4_f32: 'pppplii' + 'il',
    rope_table_f32: 'piidi',
    ssm_step_f32: 'pppppppp' + 'iiiiii',
    conv_state_push_f32: 'ppl' + 'ii',
    rope_f32: 'ppplii' + 'iiii',
  },
  attention: {
    attention_fwd: 'pppppiiiifi',
    attention_probs: 'ppppliiiifi',
    attention_bwd_delta: 'ppplii',
    attention_bwd_dq: 'pppppppiiiifi',
    attention_bwd_dkdv: 'ppppppppiiiifi',
  },
  attention_tc: ATTENTION_TC_SIGNATURES,
  ssd: {
    ssd_cumsum: 'ppS',
    ssd_chunk_matrices: 'ppppppppS',
    ssd_chunk_state: 'ppppS',
    ssd_state_pass: 'pppS',
    ssd_chunk_output: 'ppppppS',
    ssd_bwd_chunk_gstate: 'ppppS',
    ssd_bwd_state_pass: 'ppS',
    ssd_bwd_dx: 'ppppppS',
    ssd_bwd_dbc: 'ppppppppppS',
    ssd_bwd_dlogA: 'pppppppppS',
    mixer_fwd: 'ppppS',
    mixer_bwd_r: 'ppppppS',
    mixer_bwd_dbc: 'pppppS',
  },
  ssd_fast: SSD_FAST_SIGNATURES,
} as const;

type Module = keyof typeof KERNEL_SIGNATURES;

export class CudaBuffer implements DeviceBuffer {
  /** false once freed */
  live = true;
  constructor(
    readonly dtype: DType,
    readonly length: number,
    /** device address (0 for an empty buffer) */
    readonly ptr: number,
    /** bytes of the allocator block behind it */
    readonly blockSize: number,
  ) {}
}

export interface CudaBackendOptions {
  /** device ordinal (default $MOHAWK_CUDA_DEVICE or 0) */
  device?: number;
  /** TF32 tensor cores for f32 matmuls (default off, or $MOHAWK_TF32=1) */
  tf32?: boolean;
}

const THREADS = 256;
/** attention kernels: query/key rows per block, matching kernels/attention.cu */
const ATTN_ROWS = 64;
const MAX_HEAD_DIM = 256;
const MAX_CONV_K = 16;
/** time steps each conv thread walks (CONV_RUN in sequence.cu) */
const CONV_RUN = 32;
const convRuns = (t: number): number => Math.ceil(t / CONV_RUN);

function threadsPerRow(headDim: number): number {
  return headDim <= 32 ? 1 : headDim <= 64 ? 2 : headDim <= 128 ? 4 : 8;
}

/** Block size for one-block-per-row kernels. */
function rowThreads(cols: number): number {
  if (cols <= 32) return 32;
  if (cols <= 64) return 64;
  if (cols <= 128) return 128;
  if (cols <= 1024) return 256;
  if (cols <= 8192) return 512;
  return 1024;
}

/**
 * Drop size-1 axes and merge neighbours that are contiguous under every stride set, so most
 * strided loops run over one or two axes.
 */
export function collapseAxes(
  shape: readonly number[],
  strides: readonly (readonly number[])[],
): {
  shape: number[];
  strides: number[][];
} {
  const outShape: number[] = [];
  const outStrides: number[][] = strides.map(() => []);
  for (let d = 0; d < shape.length; d++) {
    if (shape[d] === 1) continue;
    const last = outShape.length - 1;
    if (last >= 0 && strides.every((s, k) => outStrides[k][last] === s[d] * shape[d])) {
      outShape[last] *= shape[d];
      strides.forEach((s, k) => (outStrides[k][last] = s[d]));
    } else {
      outShape.push(shape[d]);
      strides.forEach((s, k) => outStrides[k].push(s[d]));
    }
  }
  return { shape: outShape, strides: outStrides };
}

/** whether a strided loop over `shape` fits the kernels' 32-bit index arithmetic */
function fits32(n: number, shape: readonly number[], strides: readonly (readonly number[])[]): boolean {
  const LIMIT = 2 ** 31 - 1;
  if (n > LIMIT) return false;
  return strides.every((s) => shape.reduce((acc, len, d) => acc + (len - 1) * Math.abs(s[d]), 0) <= LIMIT);
}

export class CudaBackend implements Backend {
  readonly name = 'cuda' as const;
  readonly driver: Driver;
  readonly nvrtc: Nvrtc;
  readonly cublas: Cublas;
  /** linear-layer biases in cuBLASLt's GEMM epilogue (MOHAWK_FUSED_BIAS=0: a separate kernel) */
  readonly fusedBias = process.env.MOHAWK_FUSED_BIAS !== '0';
  readonly kernels: KernelRegistry;
  private readonly allocator: CachingAllocator;
  private liveBuffers = 0;
  private liveBytes = 0;
  private peakBytes = 0;
  private readonly sms: number;
  private readonly workspaceBytes = 32 << 20;
  /** the SSD scan: 'fast' (kernels/ssd_fast.cu, the default) or 'oracle' (ssd.cu; MOHAWK_SSD=oracle) */
  ssdImpl: 'fast' | 'oracle' = process.env.MOHAWK_SSD === 'oracle' ? 'oracle' : 'fast';
  private readonly ssdFastHost: SsdFastHost<CudaBuffer> = {
    kernel: (name, defines) => this.k('ssd_fast', name, defines),
    scratch: (n) => this.scratch(n),
    release: (b) => this.free(b),
    sumInto: (x, out, outer, n, inner) => this.reduceInto(0, x, out, outer, n, inner),
    multiprocessors: () => this.sms,
  };

  /** tensor-core attention under lowPrecision (kernels/attention_tc.cu; MOHAWK_ATTENTION=oracle: attention.cu) */
  private readonly attentionTcHost: AttentionTcHost<CudaBuffer> = {
    kernel: (name, defines) => this.k('attention_tc', name, defines),
    scratch: (n) => this.scratch(n),
    release: (b) => this.free(b),
  };

  constructor(options: CudaBackendOptions = {}) {
    const ordinal = options.device ?? Number(process.env.MOHAWK_CUDA_DEVICE ?? 0);
    this.driver = Driver.open(ordinal);
    this.nvrtc = new Nvrtc();
    const drv = this.driver;
    this.allocator = new CachingAllocator(
      { alloc: (bytes) => drv.tryAlloc(bytes), free: (ptr) => drv.free(ptr) },
      () => drv.synchronizeContext(),
    );
    const workspace = drv.tryAlloc(this.workspaceBytes);
    if (!workspace) throw new CudaError('cuda backend: no device memory for the cuBLAS workspace');
    this.cublas = new Cublas(drv, workspace, this.workspaceBytes);
    this.cublas.tf32 = options.tf32 ?? process.env.MOHAWK_TF32 === '1';
    this.kernels = new KernelRegistry(drv, this.nvrtc);
    this.sms = drv.info.multiprocessors;
  }

  describe(): string {
    const i = this.driver.info;
    return (
      `cuda (${i.name}, ${this.kernels.archName}, ${i.multiprocessors} SMs, ${formatBytes(i.totalMemory)}, ` +
      `driver ${i.driverVersion}, NVRTC ${this.nvrtc.version}, cuBLAS ${this.cublas.version}` +
      `${this.cublas.tf32 ? ', TF32 matmuls' : ''})`
    );
  }

  // ---- launching ----------------------------------------------------------------------------

  private k<M extends Module>(
    module: M,
    name: keyof (typeof KERNEL_SIGNATURES)[M] & string,
    defines?: Record<string, number>,
  ) {
    const sig = (KERNEL_SIGNATURES[module] as Record<string, string>)[name];
    return this.kernels.get(module, name, sig, defines);
  }

  /** Grid for a grid-stride loop over n items. */
  private grid1(n: number, threads = THREADS): [number, number, number] {
    return [Math.max(0, Math.min(Math.ceil(n / threads), this.sms * 32)), 1, 1];
  }

  private run1<M extends Module>(
    module: M,
    name: keyof (typeof KERNEL_SIGNATURES)[M] & string,
    n: number,
    args: Arg[],
  ): void {
    if (n <= 0) return;
    this.k(module, name).launch(this.grid1(n), THREADS, 0, args);
  }

  // ---- memory -------------------------------------------------------------------------------

  alloc(dtype: DType, length: number): DeviceBuffer {
    if (!Number.isInteger(length) || length < 0) throw new Error(`cuda backend: bad buffer length ${length}`);
    const bytes = length * DTYPE_BYTES[dtype];
    const block = bytes > 0 ? this.allocator.allocate(bytes) : { ptr: 0, size: 0 };
    this.liveBuffers++;
    this.liveBytes += bytes;
    if (this.liveBytes > this.peakBytes) this.peakBytes = this.liveBytes;
    return new CudaBuffer(dtype, length, block.ptr, block.size);
  }

  free(buf: DeviceBuffer): void {
    const b = this.buf(buf, 'free');
    b.live = false;
    if (b.ptr) this.allocator.release(b.ptr, b.blockSize);
    this.liveBuffers--;
    this.liveBytes -= b.length * DTYPE_BYTES[b.dtype];
  }

  /** Device scratch for one call, freed (to the cache) once its kernels are queued. */
  private scratch(length: number, dtype: DType = 'f32'): CudaBuffer {
    return this.alloc(dtype, length) as CudaBuffer;
  }

  private buf(buf: DeviceBuffer, what: string): CudaBuffer {
    if (!(buf instanceof CudaBuffer))
      throw new Error(`cuda backend: ${what}: buffer is not from the cuda backend`);
    if (!buf.live) throw new Error(`cuda backend: ${what}: buffer used after free`);
    return buf;
  }

  /** device address of an f32 buffer */
  private f(buf: DeviceBuffer, what: string): number {
    const b = this.buf(buf, what);
    if (b.dtype !== 'f32') throw new Error(`cuda backend: ${what} must be f32, got ${b.dtype}`);
    return b.ptr;
  }

  private i32(buf: DeviceBuffer, what: string): number {
    const b = this.buf(buf, what);
    if (b.dtype !== 'i32') throw new Error(`cuda backend: ${what} must be i32, got ${b.dtype}`);
    return b.ptr;
  }

  write(buf: DeviceBuffer, data: HostArray, offset = 0): void {
    const b = this.buf(buf, 'write');
    if (offset + data.length > b.length) {
      throw new Error(`cuda backend: write of ${data.length} at ${offset} overflows buffer of ${b.length}`);
    }
    if (data.length === 0) return;
    const host = hostArrayFor(b.dtype, data);
    const es = DTYPE_BYTES[b.dtype];
    this.driver.copyToDevice(b.ptr + offset * es, host, data.length * es);
  }

  read(buf: DeviceBuffer): HostArray {
    const b = this.buf(buf, 'read');
    const out = newHostArray(b.dtype, b.length);
    if (b.length === 0) return out;
    this.driver.copyToHost(out, b.ptr, b.length * DTYPE_BYTES[b.dtype]);
    return out;
  }

  memoryStats(): MemoryStats {
    const s = this.allocator.getStats();
    return {
      liveBuffers: this.liveBuffers,
      liveBytes: this.liveBytes,
      peakBytes: this.peakBytes,
      cachedBytes: s.cachedBytes,
    };
  }

  /** reserved/cached bytes and cache hits of the caching allocator */
  allocatorStats(): AllocatorStats {
    return this.allocator.getStats();
  }

  resetPeak(): void {
    this.peakBytes = this.liveBytes;
    this.allocator.resetPeak();
  }

  /** Return every cached block to the driver. */
  emptyCache(): void {
    this.allocator.emptyCache();
  }

  synchronize(): void {
    this.driver.synchronize();
  }

  /** Time fn on the device with events (ms); fn queues work, the call waits for it. */
  time(fn: () => void): number {
    const a = this.driver.createEvent();
    const b = this.driver.createEvent();
    try {
      this.driver.record(a);
      fn();
      this.driver.record(b);
      return this.driver.elapsed(a, b);
    } finally {
      this.driver.destroyEvent(a);
      this.driver.destroyEvent(b);
    }
  }

  /**
   * Compile (or load from the disk cache) every kernel module now, several at once, instead of
   * one by one at first use; attention is compiled for each of `attentionHeadDims` (the
   * tensor-core attention for those of them it takes).
   */
  async warmup(opts: { attentionHeadDims?: number[] } = {}): Promise<void> {
    const modules: { module: string; defines?: Record<string, number> }[] = Object.keys(KERNEL_SIGNATURES)
      .filter((m) => m !== 'attention' && m !== 'attention_tc')
      .map((module) => ({ module }));
    for (const d of opts.attentionHeadDims ?? []) {
      modules.push({ module: 'attention', defines: { HEAD_DIM: d } });
      if (attentionTcHeadDim(d)) modules.push({ module: 'attention_tc', defines: { HEAD_DIM: d } });
    }
    await this.kernels.prepare(modules);
  }

  /**
   * Run fn with every kernel launch and GEMM timed by events; returns fn's result and the device
   * time per kernel (largest first). For profiles, not for production runs.
   */
  profile<R>(fn: () => R): { result: R; kernels: { name: string; calls: number; ms: number }[] } {
    const prev = this.kernels.profiler;
    const prof = new Profiler(this.driver);
    this.kernels.profiler = prof;
    try {
      const result = fn();
      return { result, kernels: prof.collect() };
    } finally {
      this.kernels.profiler = prev;
    }
  }

  // ---- elementwise --------------------------------------------------------------------------

  fill(out: DeviceBuffer, value: number): void {
    const b = this.buf(out, 'fill');
    if (b.length === 0) return;
    switch (b.dtype) {
      case 'f32':
        F32[0] = value;
        this.driver.memset32(b.ptr, U32[0], b.length);
        return;
      case 'i32':
        this.driver.memset32(b.ptr, value | 0, b.length);
        return;
      case 'bf16':
        this.driver.memset16(b.ptr, f32ToBf16(value), b.length);
        return;
      case 'f16':
        this.driver.memset16(b.ptr, f32ToF16(value), b.length);
        return;
      case 'f64':
        this.run1('elementwise', 'fill_f64', b.length, [b.ptr, value, b.length]);
    }
  }

  cast(x: DeviceBuffer, out: DeviceBuffer): void {
    const src = this.buf(x, 'cast input');
    const dst = this.buf(out, 'cast output');
    if (dst.length !== src.length)
      throw new Error(`cuda backend: cast of ${src.length} elements into ${dst.length}`);
    const n = src.length;
    // paired accesses need 8-byte-aligned starts (allocator blocks are 256-byte aligned)
    const aligned = src.ptr % 8 === 0 && dst.ptr % 8 === 0;
    if (aligned && src.dtype === 'f32' && dst.dtype === 'bf16') {
      this.run1('elementwise', 'cast_f32_bf16', Math.max(1, n >> 1), [src.ptr, dst.ptr, n]);
      return;
    }
    if (aligned && src.dtype === 'bf16' && dst.dtype === 'f32') {
      this.run1('elementwise', 'cast_bf16_f32', Math.max(1, n >> 1), [src.ptr, dst.ptr, n]);
      return;
    }
    this.run1('elementwise', 'cast_any', n, [
      src.ptr,
      DTYPE_CODE[src.dtype],
      dst.ptr,
      DTYPE_CODE[dst.dtype],
      n,
    ]);
  }

  unary(op: UnaryOp, x: DeviceBuffer, out: DeviceBuffer, alpha: number, beta: number): void {
    const n = this.buf(x, op).length;
    const o = this.buf(out, `${op} output`);
    if (o.dtype === 'bf16' || o.dtype === 'f16') {
      this.run1('elementwise', 'unary_f32_to16', n, [
        this.f(x, `${op} input`),
        o.ptr,
        UNARY_CODE[op],
        alpha,
        beta,
        o.dtype === 'bf16' ? 1 : 0,
        n,
      ]);
      return;
    }
    this.run1('elementwise', 'unary_f32', n, [
      this.f(x, `${op} input`),
      this.f(out, `${op} output`),
      UNARY_CODE[op],
      alpha,
      beta,
      n,
    ]);
  }

  unaryBackward(op: UnaryOp, x: DeviceBuffer, gy: DeviceBuffer, gx: DeviceBuffer): void {
    const n = this.buf(x, op).length;
    this.run1('elementwise', 'unary_backward_f32', n, [
      this.f(x, `${op} input`),
      this.f(gy, `${op} gradient`),
      this.f(gx, `${op} input gradient`),
      UNARY_CODE[op],
      n,
    ]);
  }

  binary(
    op: BinaryOp,
    a: DeviceBuffer,
    aStrides: number[],
    b: DeviceBuffer,
    bStrides: number[],
    out: DeviceBuffer,
    shape: number[],
  ): void {
    const n = shape.reduce((p, s) => p * s, 1);
    if (n === 0) return;
    const c = collapseAxes(shape, [aStrides, bStrides, denseStrides(shape)]);
    if (c.shape.length > 8) throw new Error(`cuda backend: ${op} over ${c.shape.length} axes (at most 8)`);
    const small = fits32(n, c.shape, c.strides);
    this.run1('elementwise', small ? 'binary_f32_i32' : 'binary_f32', n, [
      this.f(a, `${op} left operand`),
      this.f(b, `${op} right operand`),
      this.f(out, `${op} output`),
      BINARY_CODE[op],
      c.shape.length,
      c.shape,
      c.strides[0],
      c.strides[1],
      n,
    ]);
  }

  copyStrided(
    src: DeviceBuffer,
    srcOffset: number,
    srcStrides: number[],
    dst: DeviceBuffer,
    dstOffset: number,
    dstStrides: number[],
    shape: number[],
    accumulate: boolean,
  ): void {
    const s = this.buf(src, 'copy source');
    const d = this.buf(dst, 'copy destination');
    if (s.dtype !== d.dtype) throw new Error(`cuda backend: copy from ${s.dtype} to ${d.dtype}`);
    const n = shape.reduce((p, x) => p * x, 1);
    if (n === 0) return;
    const c = collapseAxes(shape, [srcStrides, dstStrides]);
    if (c.shape.length > 8) throw new Error(`cuda backend: copy over ${c.shape.length} axes (at most 8)`);
    const es = DTYPE_BYTES[s.dtype];
    const [ss, ds] = c.strides;
    if (!accumulate && (c.shape.length === 0 || (c.shape.length === 1 && ss[0] === 1 && ds[0] === 1))) {
      this.driver.copyOnDevice(d.ptr + dstOffset * es, s.ptr + srcOffset * es, n * es);
      return;
    }
    const common: Arg[] = [s.ptr, srcOffset, d.ptr, dstOffset, c.shape.length, c.shape, ss, ds, n];
    const small = fits32(n, c.shape, [ss, ds]);
    if (!accumulate) {
      const name = small
        ? es === 4
          ? 'copy_b4_i32'
          : es === 2
            ? 'copy_b2_i32'
            : 'copy_b8_i32'
        : es === 4
          ? 'copy_b4'
          : es === 2
            ? 'copy_b2'
            : 'copy_b8';
      this.run1('elementwise', name, n, common);
      return;
    }
    // several indices on one destination element need atomics
    const atomic = c.shape.some((len, i) => len > 1 && ds[i] === 0) ? 1 : 0;
    const name =
      s.dtype === 'f32'
        ? small
          ? 'accumulate_f32_i32'
          : 'accumulate_f32'
        : s.dtype === 'f64'
          ? 'accumulate_f64'
          : s.dtype === 'i32'
            ? 'accumulate_i32'
            : null;
    if (!name) throw new Error(`cuda backend: accumulating copy of ${s.dtype} (f32, f64 or i32 only)`);
    this.run1('elementwise', name, n, [...common, atomic]);
  }

  reduce(op: ReduceOp, x: DeviceBuffer, out: DeviceBuffer, outer: number, n: number, inner: number): void {
    const xp = this.f(x, `reduce ${op} input`);
    const op_ = this.f(out, `reduce ${op} output`);
    if (outer * inner === 0) return;
    if (n === 0) {
      this.fill(out, op === 'sum' ? 0 : -Infinity);
      return;
    }
    this.reduceInto(op === 'sum' ? 0 : 1, xp, op_, outer, n, inner);
  }

  /** (outer, n, inner) -> (outer, inner), splitting long reductions over blocks. */
  private reduceInto(op: number, x: number, out: number, outer: number, n: number, inner: number): void {
    if (inner === 1 && n > 64) {
      const target = this.sms * 4;
      let splits = outer >= target ? 1 : Math.min(Math.ceil(target / outer), Math.ceil(n / 8192));
      splits = Math.max(1, Math.min(splits, 65535));
      const chunk = Math.ceil(n / splits);
      splits = Math.ceil(n / chunk);
      const kern = this.k('reduce', 'reduce_rows_f32');
      const rowsGrid = Math.min(outer, 65535);
      if (splits === 1) {
        kern.launch([1, rowsGrid, 1], rowThreads(n), 0, [x, out, op, outer, n, n]);
        return;
      }
      const tmp = this.scratch(outer * splits);
      kern.launch([splits, rowsGrid, 1], rowThreads(chunk), 0, [x, tmp.ptr, op, outer, n, chunk]);
      kern.launch([1, rowsGrid, 1], rowThreads(splits), 0, [tmp.ptr, out, op, outer, splits, splits]);
      this.free(tmp);
      return;
    }
    const total = outer * inner;
    const target = this.sms * 2048;
    let splits = total * 2 >= target ? 1 : Math.min(Math.ceil(target / total), Math.ceil(n / 64));
    splits = Math.max(1, Math.min(splits, 65535));
    const chunk = Math.ceil(n / splits);
    splits = Math.ceil(n / chunk);
    const kern = this.k('reduce', 'reduce_mid_f32');
    const g = this.grid1(total);
    if (splits === 1) {
      kern.launch(g, THREADS, 0, [x, out, op, outer, n, inner, n, 1]);
      return;
    }
    const tmp = this.scratch(outer * splits * inner);
    kern.launch([g[0], splits, 1], THREADS, 0, [x, tmp.ptr, op, outer, n, inner, chunk, splits]);
    kern.launch(g, THREADS, 0, [tmp.ptr, out, op, outer, splits, inner, splits, 1]);
    this.free(tmp);
  }

  cumsum(
    x: DeviceBuffer,
    out: DeviceBuffer,
    outer: number,
    n: number,
    inner: number,
    reverse: boolean,
  ): void {
    this.run1('reduce', 'cumsum_f32', outer * inner, [
      this.f(x, 'cumsum input'),
      this.f(out, 'cumsum output'),
      outer,
      n,
      inner,
      reverse ? 1 : 0,
    ]);
  }

  segsum(x: DeviceBuffer, out: DeviceBuffer, rows: number, t: number): void {
    this.run1('reduce', 'segsum_f32', rows * t, [
      this.f(x, 'segsum input'),
      this.f(out, 'segsum output'),
      rows,
      t,
    ]);
  }

  segsumBackward(gOut: DeviceBuffer, gx: DeviceBuffer, rows: number, t: number): void {
    const g = this.f(gOut, 'segsum gradient');
    const gxp = this.f(gx, 'segsum input gradient');
    if (rows * t === 0) return;
    const tmp = this.scratch(rows * t * t);
    this.driver.copyOnDevice(tmp.ptr, g, rows * t * t * 4);
    this.segsumAdjoint(tmp.ptr, gxp, rows, t, 0);
    this.free(tmp);
  }

  /** gx from segment-sum gradients g (rows, T, T), destroying g; heads > 0 writes gx as (B, T, H). */
  private segsumAdjoint(g: number, gx: number, rows: number, t: number, heads: number): void {
    this.run1('reduce', 'segsum_bwd_suffix_f32', rows * t, [g, rows, t]);
    const warps = rows * t;
    this.k('reduce', 'segsum_bwd_rows_f32').launch([Math.ceil((warps * 32) / THREADS), 1, 1], THREADS, 0, [
      g,
      gx,
      rows,
      t,
      heads,
    ]);
  }

  causalMask(x: DeviceBuffer, out: DeviceBuffer, rows: number, tq: number, tk: number, value: number): void {
    this.run1('elementwise', 'causal_mask_f32', rows * tq * tk, [
      this.f(x, 'causal mask input'),
      this.f(out, 'causal mask output'),
      rows,
      tq,
      tk,
      value,
    ]);
  }

  siluGate(
    y: DeviceBuffer,
    z: DeviceBuffer,
    bias: DeviceBuffer,
    out: DeviceBuffer,
    rows: number,
    cols: number,
  ): void {
    this.run1('elementwise', 'silu_gate_f32', rows * cols, [
      this.f(y, 'siluGate y'),
      this.f(z, 'siluGate z'),
      this.f(bias, 'siluGate bias'),
      this.f(out, 'siluGate output'),
      rows,
      cols,
    ]);
  }

  siluGateBackward(
    y: DeviceBuffer,
    z: DeviceBuffer,
    bias: DeviceBuffer,
    g: DeviceBuffer,
    gy: DeviceBuffer,
    gz: DeviceBuffer,
    rows: number,
    cols: number,
  ): void {
    this.run1('elementwise', 'silu_gate_backward_f32', rows * cols, [
      this.f(y, 'siluGate y'),
      this.f(z, 'siluGate z'),
      this.f(bias, 'siluGate bias'),
      this.f(g, 'siluGate gradient'),
      this.f(gy, 'siluGate y gradient'),
      this.f(gz, 'siluGate z gradient'),
      rows,
      cols,
    ]);
  }

  dropout(x: DeviceBuffer, out: DeviceBuffer, p: number, seed: number): void {
    const n = this.buf(x, 'dropout').length;
    if (n > 2 ** 32) throw new Error('cuda backend: dropout over more than 2^32 elements');
    this.run1('elementwise', 'dropout_f32', n, [
      this.f(x, 'dropout input'),
      this.f(out, 'dropout output'),
      p,
      (seed | 0) >>> 0,
      n,
    ]);
  }

  // ---- linear algebra -----------------------------------------------------------------------

  matmul(
    a: DeviceBuffer,
    b: DeviceBuffer,
    c: DeviceBuffer,
    p: MatmulParams,
    bias?: DeviceBuffer | null,
  ): void {
    const A = this.buf(a, 'matmul A');
    const B = this.buf(b, 'matmul B');
    const C = this.buf(c, 'matmul C');
    if (A.dtype !== B.dtype)
      throw new Error(`cuda backend: matmul operands differ: ${A.dtype} and ${B.dtype}`);
    const ab = A.dtype;
    if (ab !== 'f32' && ab !== 'bf16' && ab !== 'f16') {
      throw new Error(`cuda backend: matmul operands must be f32, bf16 or f16, got ${ab}`);
    }
    const cd = C.dtype;
    if (!(cd === ab || (cd === 'f32' && ab !== 'f32'))) {
      throw new Error(`cuda backend: matmul of ${ab} operands into ${cd} (expected ${ab} or f32)`);
    }
    const BIAS = bias ? this.buf(bias, 'matmul bias') : null;
    if (BIAS && (BIAS.dtype !== cd || BIAS.length !== p.n))
      throw new Error(
        `cuda backend: matmul bias must be ${p.n} values of ${cd}, got ${BIAS.length} ${BIAS.dtype}`,
      );
    if (BIAS && p.batch > 1 && p.strideC !== p.m * p.n)
      throw new Error('cuda backend: a matmul bias needs dense batch entries of C');
    if (p.batch === 0 || p.m === 0 || p.n === 0) return;
    // the bias added by a broadcast kernel in place, where cuBLASLt does not fuse it
    const addBias = () => this.binary('add', c, [p.n, 1], bias!, [0, 1], c, [p.batch * p.m, p.n]);
    if (p.k === 0) {
      // C = beta C
      if (p.beta === 0 || cd !== 'f32') {
        if (p.beta !== 0) throw new Error('cuda backend: matmul with k = 0 and beta != 0 needs an f32 C');
        this.fill(c, 0);
      } else {
        const n = C.length;
        this.run1('elementwise', 'unary_f32', n, [C.ptr, C.ptr, UNARY_CODE.identity, p.beta, 0, n]);
      }
      if (BIAS) addBias();
      return;
    }
    const gemmArgs = () => ({
      a: A.ptr,
      b: B.ptr,
      c: C.ptr,
      typeAB: ab as GemmDType,
      typeC: cd as GemmDType,
      transA: p.transA,
      transB: p.transB,
      m: p.m,
      n: p.n,
      k: p.k,
      strideA: p.strideA,
      strideB: p.strideB,
      strideC: p.strideC,
      batch: p.batch,
      alpha: p.alpha,
      beta: p.beta,
    });
    const prof = this.kernels.profiler;
    if (BIAS && p.batch === 1 && this.fusedBias) {
      // cuBLASLt's bias epilogue: no extra pass over C (false: no algorithm for this case)
      const fused = () => this.cublas.gemmBias(gemmArgs(), BIAS.ptr);
      if (prof ? prof.around(`cuBLASLt GEMM+bias ${ab} -> ${cd}`, fused) : fused()) return;
    }
    const gemm = () => this.cublas.gemm(gemmArgs());
    if (prof) prof.around(`cuBLAS GEMM ${ab} -> ${cd}`, gemm);
    else gemm();
    if (BIAS) addBias();
  }

  // ---- rows ---------------------------------------------------------------------------------

  softmax(x: DeviceBuffer, out: DeviceBuffer, rows: number, cols: number, log: boolean): void {
    const xp = this.f(x, 'softmax input');
    const op = this.f(out, 'softmax output');
    if (rows * cols === 0) return;
    this.k('rows', 'softmax_f32').launch([rows, 1, 1], rowThreads(cols), 0, [xp, op, cols, log ? 1 : 0]);
  }

  softmaxBackward(
    y: DeviceBuffer,
    gy: DeviceBuffer,
    gx: DeviceBuffer,
    rows: number,
    cols: number,
    log: boolean,
  ): void {
    const args = [
      this.f(y, 'softmax output'),
      this.f(gy, 'softmax gradient'),
      this.f(gx, 'softmax input gradient'),
    ];
    if (rows * cols === 0) return;
    this.k('rows', 'softmax_backward_f32').launch([rows, 1, 1], rowThreads(cols), 0, [
      ...args,
      cols,
      log ? 1 : 0,
    ]);
  }

  layerNorm(
    x: DeviceBuffer,
    weight: DeviceBuffer,
    bias: DeviceBuffer | null,
    out: DeviceBuffer,
    mean: DeviceBuffer,
    rstd: DeviceBuffer,
    rows: number,
    cols: number,
    eps: number,
  ): void {
    const args = [
      this.f(x, 'layerNorm input'),
      this.f(weight, 'layerNorm weight'),
      bias ? this.f(bias, 'layerNorm bias') : 0,
      this.f(out, 'layerNorm output'),
      this.f(mean, 'layerNorm mean'),
      this.f(rstd, 'layerNorm rstd'),
    ];
    if (rows === 0) return;
    this.k('rows', 'layernorm_f32').launch([rows, 1, 1], rowThreads(cols), 0, [...args, cols, eps]);
  }

  /** Blocks for the row-loop backward kernels, and the column sums of their partials. */
  private partialBlocks(rows: number): number {
    return Math.max(1, Math.min(rows, this.sms * 4));
  }

  private sumPartials(partial: number, out: number, blocks: number, cols: number): void {
    this.reduceInto(0, partial, out, 1, blocks, cols);
  }

  layerNormBackward(
    x: DeviceBuffer,
    weight: DeviceBuffer,
    mean: DeviceBuffer,
    rstd: DeviceBuffer,
    gy: DeviceBuffer,
    gx: DeviceBuffer,
    gWeight: DeviceBuffer,
    gBias: DeviceBuffer | null,
    rows: number,
    cols: number,
  ): void {
    const gw = this.f(gWeight, 'layerNorm weight gradient');
    const gb = gBias ? this.f(gBias, 'layerNorm bias gradient') : 0;
    const args = [
      this.f(x, 'layerNorm input'),
      this.f(weight, 'layerNorm weight'),
      this.f(mean, 'layerNorm mean'),
      this.f(rstd, 'layerNorm rstd'),
      this.f(gy, 'layerNorm gradient'),
      this.f(gx, 'layerNorm input gradient'),
    ];
    if (cols === 0) return;
    if (rows === 0) {
      this.fill(gWeight, 0);
      if (gBias) this.fill(gBias, 0);
      return;
    }
    const blocks = this.partialBlocks(rows);
    const pw = this.scratch(blocks * cols);
    const pb = gBias ? this.scratch(blocks * cols) : null;
    this.k('rows', 'layernorm_backward_f32').launch([blocks, 1, 1], rowThreads(cols), 0, [
      ...args,
      pw.ptr,
      pb ? pb.ptr : 0,
      rows,
      cols,
    ]);
    this.sumPartials(pw.ptr, gw, blocks, cols);
    if (pb) this.sumPartials(pb.ptr, gb, blocks, cols);
    this.free(pw);
    if (pb) this.free(pb);
  }

  rmsNorm(
    x: DeviceBuffer,
    weight: DeviceBuffer,
    out: DeviceBuffer,
    rstd: DeviceBuffer,
    rows: number,
    cols: number,
    eps: number,
  ): void {
    const args = [
      this.f(x, 'rmsNorm input'),
      this.f(weight, 'rmsNorm weight'),
      this.f(out, 'rmsNorm output'),
      this.f(rstd, 'rmsNorm rstd'),
    ];
    if (rows === 0) return;
    this.k('rows', 'rmsnorm_f32').launch([rows, 1, 1], rowThreads(cols), 0, [...args, cols, eps]);
  }

  rmsNormBackward(
    x: DeviceBuffer,
    weight: DeviceBuffer,
    rstd: DeviceBuffer,
    gy: DeviceBuffer,
    gx: DeviceBuffer,
    gWeight: DeviceBuffer,
    rows: number,
    cols: number,
  ): void {
    const gw = this.f(gWeight, 'rmsNorm weight gradient');
    const args = [
      this.f(x, 'rmsNorm input'),
      this.f(weight, 'rmsNorm weight'),
      this.f(rstd, 'rmsNorm rstd'),
      this.f(gy, 'rmsNorm gradient'),
      this.f(gx, 'rmsNorm input gradient'),
    ];
    if (cols === 0) return;
    if (rows === 0) {
      this.fill(gWeight, 0);
      return;
    }
    const blocks = this.partialBlocks(rows);
    const pw = this.scratch(blocks * cols);
    this.k('rows', 'rmsnorm_backward_f32').launch([blocks, 1, 1], rowThreads(cols), 0, [
      ...args,
      pw.ptr,
      rows,
      cols,
    ]);
    this.sumPartials(pw.ptr, gw, blocks, cols);
    this.free(pw);
  }

  embedding(table: DeviceBuffer, ids: DeviceBuffer, out: DeviceBuffer, n: number, dim: number): void {
    const t = this.f(table, 'embedding table');
    const vocab = dim > 0 ? this.buf(table, 'embedding table').length / dim : 0;
    this.run1('rows', 'embedding_f32', n * dim, [
      t,
      this.i32(ids, 'embedding ids'),
      this.f(out, 'embedding output'),
      n,
      dim,
      vocab,
    ]);
  }

  embeddingBackward(
    gOut: DeviceBuffer,
    ids: DeviceBuffer,
    gTable: DeviceBuffer,
    n: number,
    dim: number,
  ): void {
    const vocab = dim > 0 ? this.buf(gTable, 'embedding table gradient').length / dim : 0;
    this.run1('rows', 'embedding_backward_f32', n * dim, [
      this.f(gOut, 'embedding gradient'),
      this.i32(ids, 'embedding ids'),
      this.f(gTable, 'embedding table gradient'),
      n,
      dim,
      vocab,
    ]);
  }

  // ---- sequence mixers ----------------------------------------------------------------------

  causalConv1d(
    x: DeviceBuffer,
    weight: DeviceBuffer,
    bias: DeviceBuffer | null,
    out: DeviceBuffer,
    batch: number,
    t: number,
    channels: number,
    kernel: number,
  ): void {
    if (kernel > MAX_CONV_K)
      throw new Error(`cuda backend: conv1d kernel size ${kernel} (at most ${MAX_CONV_K})`);
    this.run1('sequence', kernel === 4 ? 'conv1d_k4_f32' : 'conv1d_f32', batch * convRuns(t) * channels, [
      this.f(x, 'conv1d input'),
      this.f(weight, 'conv1d weight'),
      bias ? this.f(bias, 'conv1d bias') : 0,
      this.f(out, 'conv1d output'),
      batch,
      t,
      channels,
      kernel,
    ]);
  }

  causalConv1dBackward(
    x: DeviceBuffer,
    weight: DeviceBuffer,
    gy: DeviceBuffer,
    gx: DeviceBuffer,
    gWeight: DeviceBuffer,
    gBias: DeviceBuffer | null,
    batch: number,
    t: number,
    channels: number,
    kernel: number,
  ): void {
    if (kernel > MAX_CONV_K)
      throw new Error(`cuda backend: conv1d kernel size ${kernel} (at most ${MAX_CONV_K})`);
    const xp = this.f(x, 'conv1d input');
    const wp = this.f(weight, 'conv1d weight');
    const gyp = this.f(gy, 'conv1d gradient');
    const gw = this.f(gWeight, 'conv1d weight gradient');
    const gb = gBias ? this.f(gBias, 'conv1d bias gradient') : 0;
    this.run1(
      'sequence',
      kernel === 4 ? 'conv1d_backward_x_k4_f32' : 'conv1d_backward_x_f32',
      batch * convRuns(t) * channels,
      [wp, gyp, this.f(gx, 'conv1d input gradient'), batch, t, channels, kernel],
    );
    if (channels * kernel === 0) return;
    const rows = batch * t;
    if (rows === 0) {
      this.fill(gWeight, 0);
      if (gBias) this.fill(gBias, 0);
      return;
    }
    const blocks = Math.max(1, Math.min(Math.ceil(rows / 16), this.sms * 4));
    const perBlock = Math.ceil(rows / blocks);
    const nb = Math.ceil(rows / perBlock);
    const pw = this.scratch(nb * channels * kernel);
    const pb = gBias ? this.scratch(nb * channels) : null;
    this.k('sequence', kernel === 4 ? 'conv1d_backward_w_k4_f32' : 'conv1d_backward_w_f32').launch(
      [nb, 1, 1],
      Math.min(THREADS, roundUp(channels, 32)),
      0,
      [xp, gyp, pw.ptr, pb ? pb.ptr : 0, batch, t, channels, kernel, perBlock],
    );
    this.sumPartials(pw.ptr, gw, nb, channels * kernel);
    if (pb) this.sumPartials(pb.ptr, gb, nb, channels);
    this.free(pw);
    if (pb) this.free(pb);
  }

  rope(x: DeviceBuffer, out: DeviceBuffer, p: RopeParams): void {
    if (p.rotaryDim % 2 !== 0 || p.rotaryDim > p.headDim) {
      throw new Error(`rope: rotaryDim (${p.rotaryDim}) must be even and at most headDim (${p.headDim})`);
    }
    const half = p.rotaryDim / 2;
    const per = half + p.headDim - p.rotaryDim;
    const table = this.scratch(Math.max(1, p.seqLen * half * 2));
    if (half > 0)
      this.run1('sequence', 'rope_table_f32', p.seqLen * half, [
        table.ptr,
        p.seqLen,
        p.rotaryDim,
        p.theta,
        p.positionOffset,
      ]);
    this.run1('sequence', 'rope_f32', p.batch * p.seqLen * p.heads * per, [
      this.f(x, 'rope input'),
      this.f(out, 'rope output'),
      table.ptr,
      p.batch,
      p.seqLen,
      p.heads,
      p.headDim,
      p.rotaryDim,
      p.interleaved ? 1 : 0,
      p.inverse ? 1 : 0,
    ]);
    this.free(table);
  }

  ssmStep(
    xbc: DeviceBuffer,
    convState: DeviceBuffer,
    convWeight: DeviceBuffer,
    convBias: DeviceBuffer | null,
    a: DeviceBuffer,
    D: DeviceBuffer,
    ssm: DeviceBuffer,
    y: DeviceBuffer,
    p: SsmStepParams,
  ): void {
    const { batch, heads: H, groups: G, headDim: P, dState: N, kernel: K } = p;
    if (batch === 0 || H === 0) return;
    if (H > 65535 || batch > 65535)
      throw new Error('cuda backend: ssmStep with more than 65535 heads or sequences');
    const C = H * P + 2 * G * N;
    const xp = this.f(xbc, 'ssmStep xbc');
    const sp = this.f(convState, 'ssmStep conv state');
    this.k('sequence', 'ssm_step_f32').launch([H, batch, 1], 128, (P + 2 * N) * 4, [
      xp,
      sp,
      this.f(convWeight, 'ssmStep conv weight'),
      convBias ? this.f(convBias, 'ssmStep conv bias') : 0,
      this.f(a, 'ssmStep a'),
      this.f(D, 'ssmStep D'),
      this.f(ssm, 'ssmStep state'),
      this.f(y, 'ssmStep output'),
      H,
      G,
      P,
      N,
      K,
      p.silu ? 1 : 0,
    ]);
    if (K > 1) this.run1('sequence', 'conv_state_push_f32', batch * C, [sp, xp, batch, K, C]);
  }

  private checkAttention(p: AttentionParams): void {
    if (p.heads % p.kvHeads !== 0) {
      throw new Error(`attention: heads (${p.heads}) must be a multiple of kvHeads (${p.kvHeads})`);
    }
    if (p.headDim > MAX_HEAD_DIM || p.headDim < 1) {
      throw new Error(`cuda backend: attention head dimension ${p.headDim} (1 to ${MAX_HEAD_DIM})`);
    }
    if (p.heads > 65535 || p.batch > 65535)
      throw new Error('cuda backend: attention with more than 65535 heads or sequences');
  }

  /** the tensor-core plan for p (lowPrecision, a head dimension it takes), or null for attention.cu */
  private attentionPlan(p: AttentionParams, pointers: number[]) {
    const { computeCapability, maxSharedPerBlockOptin } = this.driver.info;
    return attentionTcPlan(p, computeCapability, maxSharedPerBlockOptin, pointers);
  }

  attention(
    q: DeviceBuffer,
    k: DeviceBuffer,
    v: DeviceBuffer,
    out: DeviceBuffer,
    lse: DeviceBuffer,
    probs: DeviceBuffer | null,
    p: AttentionParams,
  ): void {
    this.checkAttention(p);
    const qp = this.f(q, 'attention q');
    const kp = this.f(k, 'attention k');
    const lp = this.f(lse, 'attention lse');
    const args = [qp, kp, this.f(v, 'attention v'), this.f(out, 'attention output'), lp];
    if (p.batch * p.heads * p.tq === 0) return;
    const hd = { HEAD_DIM: p.headDim };
    const tc = this.attentionPlan(p, args);
    if (tc) attentionTcForward(this.attentionTcHost, tc, p, args[0], args[1], args[2], args[3], args[4]);
    else
      this.k('attention', 'attention_fwd', hd).launch(
        [Math.ceil(p.tq / ATTN_ROWS), p.heads, p.batch],
        ATTN_ROWS * threadsPerRow(p.headDim),
        0,
        [...args, p.tq, p.tk, p.heads, p.kvHeads, p.scale, p.causal ? 1 : 0],
      );
    if (probs) {
      const n = p.batch * p.heads * p.tq * p.tk;
      if (n === 0) return;
      this.k('attention', 'attention_probs', hd).launch(this.grid1(n), THREADS, 0, [
        qp,
        kp,
        lp,
        this.f(probs, 'attention probs'),
        p.batch,
        p.tq,
        p.tk,
        p.heads,
        p.kvHeads,
        p.scale,
        p.causal ? 1 : 0,
      ]);
    }
  }

  attentionBackward(
    q: DeviceBuffer,
    k: DeviceBuffer,
    v: DeviceBuffer,
    out: DeviceBuffer,
    lse: DeviceBuffer,
    gOut: DeviceBuffer,
    gq: DeviceBuffer,
    gk: DeviceBuffer,
    gv: DeviceBuffer,
    p: AttentionParams,
  ): void {
    this.checkAttention(p);
    const qp = this.f(q, 'attention q');
    const kp = this.f(k, 'attention k');
    const vp = this.f(v, 'attention v');
    const op = this.f(out, 'attention output');
    const lp = this.f(lse, 'attention lse');
    const gop = this.f(gOut, 'attention gradient');
    const gqp = this.f(gq, 'attention q gradient');
    const gkp = this.f(gk, 'attention k gradient');
    const gvp = this.f(gv, 'attention v gradient');
    if (p.batch * p.kvHeads * p.tk === 0 && p.batch * p.heads * p.tq === 0) return;
    const tc = this.attentionPlan(p, [qp, kp, vp, op, gop, gqp, gkp, gvp]);
    if (tc) return attentionTcBackward(this.attentionTcHost, tc, p, qp, kp, vp, op, lp, gop, gqp, gkp, gvp);
    const hd = { HEAD_DIM: p.headDim };
    const threads = ATTN_ROWS * threadsPerRow(p.headDim);
    const flags = [p.tq, p.tk, p.heads, p.kvHeads, p.scale, p.causal ? 1 : 0];
    const rows = p.batch * p.tq * p.heads;
    const delta = this.scratch(Math.max(1, rows));
    if (rows > 0) {
      this.k('attention', 'attention_bwd_delta', hd).launch(
        [Math.ceil((rows * 32) / THREADS), 1, 1],
        THREADS,
        0,
        [op, gop, delta.ptr, p.batch, p.tq, p.heads],
      );
      this.k('attention', 'attention_bwd_dq', hd).launch(
        [Math.ceil(p.tq / ATTN_ROWS), p.heads, p.batch],
        threads,
        0,
        [qp, kp, vp, lp, delta.ptr, gop, gqp, ...flags],
      );
    }
    if (p.batch * p.kvHeads * p.tk > 0) {
      this.k('attention', 'attention_bwd_dkdv', hd).launch(
        [Math.ceil(p.tk / ATTN_ROWS), p.kvHeads, p.batch],
        threads,
        0,
        [qp, kp, vp, lp, delta.ptr, gop, gkp, gvp, ...flags],
      );
    }
    this.free(delta);
  }

  private ssdDims(p: SsdParams, what: string): number[] {
    const { batch, seqLen, heads, groups, headDim, dState, chunkSize } = p;
    if (groups < 1 || heads % groups !== 0)
      throw new Error(`${what}: heads (${heads}) must be a multiple of groups (${groups})`);
    if (!(chunkSize > 0)) throw new Error(`${what}: chunk size must be positive, got ${chunkSize}`);
    if (heads > 65535 || batch > 65535)
      throw new Error(`cuda backend: ${what} with more than 65535 heads or sequences`);
    return [batch, seqLen, heads, groups, headDim, dState, chunkSize, Math.ceil(seqLen / chunkSize)];
  }

  ssdScan(
    x: DeviceBuffer,
    logA: DeviceBuffer,
    bm: DeviceBuffer,
    cm: DeviceBuffer,
    y: DeviceBuffer,
    states: DeviceBuffer,
    finalState: DeviceBuffer | null,
    p: SsdParams,
  ): void {
    const d = this.ssdDims(p, 'ssd');
    const xp = this.f(x, 'ssd x');
    const la = this.f(logA, 'ssd logA');
    const bp = this.f(bm, 'ssd B');
    const cp = this.f(cm, 'ssd C');
    const yp = this.f(y, 'ssd y');
    const sp = this.f(states, 'ssd states');
    const fp = finalState ? this.f(finalState, 'ssd final state') : 0;
    const { batch: B, seqLen: T, heads: H, headDim: P, dState: N, chunkSize: Q } = p;
    const nC = d[7];
    if (B * H * T === 0) {
      if (finalState) this.fill(finalState, 0);
      return;
    }
    const plan = this.ssdImpl === 'fast' ? ssdFastPlan(p, this.driver.info.maxSharedPerBlockOptin) : null;
    if (plan) return ssdFastForward(this.ssdFastHost, plan, p, xp, la, bp, cp, yp, sp, fp);
    const cum = this.scratch(B * H * T);
    const M = this.scratch(B * H * nC * Q * Q);
    this.run1('ssd', 'ssd_cumsum', B * nC * H, [la, cum.ptr, d]);
    this.run1('ssd', 'ssd_chunk_matrices', B * H * nC * Q * Q, [cp, bp, cum.ptr, 0, 0, M.ptr, 0, 0, d]);
    this.run1('ssd', 'ssd_chunk_state', B * nC * H * P * N, [xp, bp, cum.ptr, sp, d]);
    this.run1('ssd', 'ssd_state_pass', B * H * P * N, [sp, cum.ptr, fp, d]);
    this.run1('ssd', 'ssd_chunk_output', B * T * H * P, [xp, cp, cum.ptr, M.ptr, sp, yp, d]);
    this.free(M);
    this.free(cum);
  }

  ssdScanBackward(
    x: DeviceBuffer,
    logA: DeviceBuffer,
    bm: DeviceBuffer,
    cm: DeviceBuffer,
    states: DeviceBuffer,
    gy: DeviceBuffer,
    gx: DeviceBuffer,
    gLogA: DeviceBuffer,
    gB: DeviceBuffer,
    gC: DeviceBuffer,
    p: SsdParams,
  ): void {
    const d = this.ssdDims(p, 'ssd');
    const xp = this.f(x, 'ssd x');
    const la = this.f(logA, 'ssd logA');
    const bp = this.f(bm, 'ssd B');
    const cp = this.f(cm, 'ssd C');
    const sp = this.f(states, 'ssd states');
    const gyp = this.f(gy, 'ssd gradient');
    const gxp = this.f(gx, 'ssd x gradient');
    const glp = this.f(gLogA, 'ssd logA gradient');
    const gbp = this.f(gB, 'ssd B gradient');
    const gcp = this.f(gC, 'ssd C gradient');
    const { batch: B, seqLen: T, heads: H, groups: G, headDim: P, dState: N, chunkSize: Q } = p;
    const nC = d[7];
    if (B * T === 0) return;
    if (H === 0) {
      this.fill(gB, 0);
      this.fill(gC, 0);
      return;
    }
    const plan = this.ssdImpl === 'fast' ? ssdFastPlan(p, this.driver.info.maxSharedPerBlockOptin) : null;
    if (plan) return ssdFastBackward(this.ssdFastHost, plan, p, xp, la, bp, cp, sp, gyp, gxp, glp, gbp, gcp);
    const cum = this.scratch(B * H * T);
    const mat = B * H * nC * Q * Q;
    const M = this.scratch(mat);
    const Dw = this.scratch(mat);
    const R = this.scratch(mat);
    const gS = this.scratch(B * nC * H * P * N);
    this.run1('ssd', 'ssd_cumsum', B * nC * H, [la, cum.ptr, d]);
    this.run1('ssd', 'ssd_chunk_matrices', mat, [cp, bp, cum.ptr, xp, gyp, M.ptr, Dw.ptr, R.ptr, d]);
    this.run1('ssd', 'ssd_bwd_chunk_gstate', B * nC * H * P * N, [gyp, cp, cum.ptr, gS.ptr, d]);
    this.run1('ssd', 'ssd_bwd_state_pass', B * H * P * N, [gS.ptr, cum.ptr, d]);
    this.run1('ssd', 'ssd_bwd_dx', B * T * H * P, [gyp, bp, cum.ptr, M.ptr, gS.ptr, gxp, d]);
    const perHead = G !== H;
    const gBh = perHead ? this.scratch(B * T * H * N) : null;
    const gCh = perHead ? this.scratch(B * T * H * N) : null;
    this.run1('ssd', 'ssd_bwd_dbc', B * T * H * N, [
      xp,
      gyp,
      bp,
      cp,
      cum.ptr,
      Dw.ptr,
      sp,
      gS.ptr,
      gBh ? gBh.ptr : gbp,
      gCh ? gCh.ptr : gcp,
      d,
    ]);
    if (gBh && gCh) {
      // (B, T, G, H/G, N) summed over the heads of each group
      this.reduceInto(0, gBh.ptr, gbp, B * T * G, H / G, N);
      this.reduceInto(0, gCh.ptr, gcp, B * T * G, H / G, N);
      this.free(gBh);
      this.free(gCh);
    }
    const dlog = this.k('ssd', 'ssd_bwd_dlogA');
    dlog.allowShared(Q * 4);
    dlog.launch([nC, H, B], 128, Q * 4, [xp, gyp, bp, cp, cum.ptr, R.ptr, sp, gS.ptr, glp, d]);
    for (const s of [cum, M, Dw, R, gS]) this.free(s);
  }

  materializeMixer(
    logA: DeviceBuffer,
    bm: DeviceBuffer,
    cm: DeviceBuffer,
    out: DeviceBuffer,
    p: SsdParams,
  ): void {
    const d = this.ssdDims(p, 'mixer');
    this.run1('ssd', 'mixer_fwd', p.batch * p.heads * p.seqLen, [
      this.f(logA, 'mixer logA'),
      this.f(bm, 'mixer B'),
      this.f(cm, 'mixer C'),
      this.f(out, 'mixer output'),
      d,
    ]);
  }

  materializeMixerBackward(
    logA: DeviceBuffer,
    bm: DeviceBuffer,
    cm: DeviceBuffer,
    gOut: DeviceBuffer,
    gLogA: DeviceBuffer,
    gB: DeviceBuffer,
    gC: DeviceBuffer,
    p: SsdParams,
  ): void {
    const d = this.ssdDims(p, 'mixer');
    const la = this.f(logA, 'mixer logA');
    const bp = this.f(bm, 'mixer B');
    const cp = this.f(cm, 'mixer C');
    const gop = this.f(gOut, 'mixer gradient');
    const glp = this.f(gLogA, 'mixer logA gradient');
    const gbp = this.f(gB, 'mixer B gradient');
    const gcp = this.f(gC, 'mixer C gradient');
    const { batch: B, seqLen: T, heads: H, groups: G, dState: N } = p;
    if (B * T === 0) return;
    if (H === 0) {
      this.fill(gB, 0);
      this.fill(gC, 0);
      return;
    }
    const Rm = this.scratch(B * H * T * T);
    const r = this.scratch(B * H * T * T);
    this.run1('ssd', 'mixer_bwd_r', B * H * T, [la, bp, cp, gop, Rm.ptr, r.ptr, d]);
    this.run1('ssd', 'mixer_bwd_dbc', B * T * G * N, [bp, cp, Rm.ptr, gbp, gcp, d]);
    this.segsumAdjoint(r.ptr, glp, B * H, T, H);
    this.free(Rm);
    this.free(r);
  }

  // ---- losses -------------------------------------------------------------------------------

  crossEntropy(
    logits: DeviceBuffer,
    targets: DeviceBuffer,
    losses: DeviceBuffer,
    lse: DeviceBuffer,
    rows: number,
    vocab: number,
    ignoreIndex: number,
  ): void {
    const args = [
      this.f(logits, 'cross-entropy logits'),
      this.i32(targets, 'cross-entropy targets'),
      this.f(losses, 'cross-entropy losses'),
      this.f(lse, 'cross-entropy lse'),
    ];
    if (rows === 0) return;
    this.k('rows', 'cross_entropy_f32').launch([rows, 1, 1], rowThreads(vocab), 0, [
      ...args,
      vocab,
      ignoreIndex,
    ]);
  }

  crossEntropyBackward(
    logits: DeviceBuffer,
    targets: DeviceBuffer,
    lse: DeviceBuffer,
    gLoss: DeviceBuffer,
    gLogits: DeviceBuffer,
    rows: number,
    vocab: number,
    ignoreIndex: number,
  ): void {
    const args = [
      this.f(logits, 'cross-entropy logits'),
      this.i32(targets, 'cross-entropy targets'),
      this.f(lse, 'cross-entropy lse'),
      this.f(gLoss, 'cross-entropy gradient'),
      this.f(gLogits, 'cross-entropy logits gradient'),
    ];
    if (rows * vocab === 0) return;
    this.k('rows', 'cross_entropy_backward_f32').launch([rows, 1, 1], rowThreads(vocab), 0, [
      ...args,
      vocab,
      ignoreIndex,
    ]);
  }

  klDivergence(
    teacher: DeviceBuffer,
    student: DeviceBuffer,
    losses: DeviceBuffer,
    rows: number,
    vocab: number,
    temperature: number,
  ): void {
    const args = [
      this.f(teacher, 'KL teacher logits'),
      this.f(student, 'KL student logits'),
      this.f(losses, 'KL losses'),
    ];
    if (rows === 0) return;
    this.k('rows', 'kl_div_f32').launch([rows, 1, 1], rowThreads(vocab), 0, [
      ...args,
      vocab,
      1 / temperature,
    ]);
  }

  klDivergenceBackward(
    teacher: DeviceBuffer,
    student: DeviceBuffer,
    gLoss: DeviceBuffer,
    gStudent: DeviceBuffer,
    rows: number,
    vocab: number,
    temperature: number,
  ): void {
    const args = [
      this.f(teacher, 'KL teacher logits'),
      this.f(student, 'KL student logits'),
      this.f(gLoss, 'KL gradient'),
      this.f(gStudent, 'KL student gradient'),
    ];
    if (rows * vocab === 0) return;
    this.k('rows', 'kl_div_backward_f32').launch([rows, 1, 1], rowThreads(vocab), 0, [
      ...args,
      vocab,
      1 / temperature,
    ]);
  }

  // ---- optimizer ----------------------------------------------------------------------------

  adamw(param: DeviceBuffer, grad: DeviceBuffer, m: DeviceBuffer, v: DeviceBuffer, p: AdamWParams): void {
    const n = this.buf(param, 'adamw param').length;
    // four elements per thread (the buffers are 256-byte aligned allocations)
    this.run1('elementwise', 'adamw_f32', Math.max(1, Math.ceil(n / 4)), [
      this.f(param, 'adamw param'),
      this.f(grad, 'adamw grad'),
      this.f(m, 'adamw m'),
      this.f(v, 'adamw v'),
      p.lr,
      p.beta1,
      p.beta2,
      p.eps,
      1 - p.lr * p.weightDecay,
      1 - p.beta1 ** p.step,
      1 - p.beta2 ** p.step,
      n,
    ]);
  }
}

const F32 = new Float32Array(1);
const U32 = new Uint32Array(F32.buffer);

function roundUp(n: number, m: number): number {
  return Math.ceil(n / m) * m;
}

function newHostArray(dtype: DType, length: number): HostArray {
  switch (dtype) {
    case 'f32':
      return new Float32Array(length);
    case 'f64':
      return new Float64Array(length);
    case 'i32':
      return new Int32Array(length);
    case 'bf16':
    case 'f16':
      return new Uint16Array(length);
  }
}

/** data as the host array type of dtype (converted the way TypedArray.set converts). */
function hostArrayFor(dtype: DType, data: HostArray): HostArray {
  const want =
    dtype === 'f32'
      ? Float32Array
      : dtype === 'f64'
        ? Float64Array
        : dtype === 'i32'
          ? Int32Array
          : Uint16Array;
  if (data instanceof want) return data;
  const out = new want(data.length);
  out.set(data);
  return out;
}

let shared: CudaBackend | null = null;

/** The CUDA backend on device $MOHAWK_CUDA_DEVICE (default 0); throws a message naming what is missing. */
export function createCudaBackend(options: CudaBackendOptions = {}): Backend {
  if (!shared) shared = new CudaBackend(options);
  return shared;
}
