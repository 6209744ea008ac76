// The CUDA backend: every kernel of the Backend interface on an NVIDIA GPU. Driver API, NVRTC
// and cuBLAS through koffi (driver.ts, nvrtc.ts, cublas.ts); kernel sources in kernels/*.cu;
// device memory from a caching allocator (allocator.ts). All work is queued on one stream, in
// order; `read` and `synchronize` wait for it. The CPU backend is the reference: shapes,
// accumulate-versus-overwrite and the dropout hash are the same, f32 arithmetic (reductions,
// norms and losses accumulate in f32) where the CPU accumulates in f64.

import type {
  AdamWDeviceParams,
  AdamWFusedParams,
  AdamWParams,
  AttentionParams,
  Backend,
  BinaryOp,
  ColumnWindow,
  GraphCapture,
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
import { DTYPE_BYTES } from '../backend.js';
import { f32ToBf16, f32ToF16 } from '../dtype.js';
import { CachingAllocator, formatBytes, sizeClass, type AllocatorStats } from './allocator.js';
import * as attention from './attention.js';
import { ATTENTION_SIGNATURES } from './attention.js';
import { ATTENTION_TC_SIGNATURES, attentionTcHeadDim } from './attention-tc.js';
import { Cublas, gemmTuneCandidates, type GemmDType } from './cublas.js';
import { CudaError, Driver } from './driver.js';
import * as elementwise from './elementwise.js';
import { GEMV_SIGNATURES, gemv, gemvBlockOut, gemvTakes, linearParams } from './gemv.js';
import * as decode from './decode.js';
import { CaptureState, CudaGraph } from './graph.js';
import { ELEMENTWISE_SIGNATURES } from './elementwise.js';
import { CudaBuffer, type Host } from './host.js';
import { KernelRegistry, Profiler } from './kernels.js';
import { Nvrtc } from './nvrtc.js';
import * as optim from './optim.js';
import { OPTIM_SIGNATURES } from './optim.js';
import * as reduce from './reduce.js';
import { REDUCE_SIGNATURES } from './reduce.js';
import * as rowKernels from './rows.js';
import { ROWS_SIGNATURES } from './rows.js';
import * as sequence from './sequence.js';
import { SEQUENCE_SIGNATURES } from './sequence.js';
import * as ssd from './ssd.js';
import { SSD_SIGNATURES } from './ssd.js';
import { SSD_FAST_SIGNATURES } from './ssd-fast.js';

export { CudaError } from './driver.js';
export { CudaBuffer } from './host.js';
export { collapseAxes } from './elementwise.js';

/** Kernel signatures (argument kinds, see kernels.ts) by module: each table lives beside its launchers. */
export const KERNEL_SIGNATURES = {
  elementwise: ELEMENTWISE_SIGNATURES,
  reduce: REDUCE_SIGNATURES,
  rows: ROWS_SIGNATURES,
  sequence: SEQUENCE_SIGNATURES,
  attention: ATTENTION_SIGNATURES,
  attention_tc: ATTENTION_TC_SIGNATURES,
  ssd: SSD_SIGNATURES,
  ssd_fast: SSD_FAST_SIGNATURES,
  gemv: GEMV_SIGNATURES,
  optim: OPTIM_SIGNATURES,
  decode: decode.DECODE_SIGNATURES,
} as const;

export interface CudaBackendOptions {
  /** device ordinal (default $MOHAWK_CUDA_DEVICE or 0) */
  device?: number;
  /** TF32 tensor cores for f32 matmuls (default off, or $MOHAWK_TF32=1) */
  tf32?: boolean;
  /**
   * GEMM autotuning: time this many of cuBLASLt's candidates on each product shape's first run and
   * keep the fastest (default $MOHAWK_GEMM_TUNE, else 0: the heuristic's first choice)
   */
  gemmTune?: number;
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
  /** linearAct's product with the GELU in cuBLASLt's epilogue (MOHAWK_ACT_EPILOGUE=0: product, then a pass) */
  actEpilogue = process.env.MOHAWK_ACT_EPILOGUE !== '0';
  /** the SSD scan: 'fast' (kernels/ssd_fast.cu, the default) or 'oracle' (ssd.cu; MOHAWK_SSD=oracle) */
  ssdImpl: 'fast' | 'oracle' = process.env.MOHAWK_SSD === 'oracle' ? 'oracle' : 'fast';
  /** what the kernel modules' launchers use (host.ts) */
  readonly host: Host;
  /** the open graph capture (see capture) */
  private capturing: CaptureState | null = null;

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
    this.cublas = new Cublas(
      drv,
      workspace,
      this.workspaceBytes,
      options.gemmTune ?? gemmTuneCandidates(process.env.MOHAWK_GEMM_TUNE),
      () => this.capturing !== null,
    );
    this.cublas.tf32 = options.tf32 ?? process.env.MOHAWK_TF32 === '1';
    this.kernels = new KernelRegistry(drv, this.nvrtc);
    this.sms = drv.info.multiprocessors;
    this.host = {
      driver: drv,
      sms: this.sms,
      kernel: (module, name, signature, defines) => this.kernels.get(module, name, signature, defines),
      buf: (b, what) => this.buf(b, what),
      f: (b, what) => this.f(b, what),
      i32: (b, what) => this.i32(b, what),
      scratch: (n, dtype) => this.scratch(n, dtype),
      free: (b) => this.free(b),
      fill: (b, v) => this.fill(b, v),
      sumInto: (x, out, outer, n, inner) => reduce.reduceInto(this.host, 0, x, out, outer, n, inner),
    };
  }

  describe(): string {
    const i = this.driver.info;
    return (
      `cuda (${i.name}, ${this.kernels.archName}, ${i.multiprocessors} SMs, ${formatBytes(i.totalMemory)}, ` +
      `driver ${i.driverVersion}, NVRTC ${this.nvrtc.version}, cuBLAS ${this.cublas.version}` +
      `${this.cublas.tf32 ? ', TF32 matmuls' : ''})`
    );
  }

  // ---- memory -------------------------------------------------------------------------------

  alloc(dtype: DType, length: number): DeviceBuffer {
    if (!Number.isInteger(length) || length < 0) throw new Error(`cuda backend: bad buffer length ${length}`);
    const bytes = length * DTYPE_BYTES[dtype];
    const cap = this.capturing;
    // inside a capture: first a block freed in the same capture
    const reused = cap && bytes > 0 ? cap.pool.take(sizeClass(bytes)) : 0;
    const block = reused
      ? { ptr: reused, size: sizeClass(bytes) }
      : bytes > 0
        ? this.allocator.allocate(bytes)
        : { ptr: 0, size: 0 };
    this.liveBuffers++;
    this.liveBytes += bytes;
    if (this.liveBytes > this.peakBytes) this.peakBytes = this.liveBytes;
    const out = new CudaBuffer(dtype, length, block.ptr, block.size);
    if (cap) out.owner = cap.pool;
    return out;
  }

  free(buf: DeviceBuffer): void {
    const b = this.buf(buf, 'free');
    b.live = false;
    // a block a graph's kernels may touch stays with that graph (freed in its capture, or allocated there)
    const owner = this.capturing?.pool ?? (b.owner && !b.owner.destroyed ? b.owner : null);
    if (b.ptr) {
      if (owner) owner.put(b.ptr, b.blockSize);
      else this.allocator.release(b.ptr, b.blockSize);
    }
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
    const es = DTYPE_BYTES[b.dtype];
    if (this.capturing) {
      this.capturing.stageWrite(this.driver, b.ptr + offset * es, b.dtype, data);
      return;
    }
    const host = hostArrayFor(b.dtype, data);
    this.driver.copyToDevice(b.ptr + offset * es, host, data.length * es);
  }

  read(buf: DeviceBuffer): HostArray {
    if (this.capturing) throw refuseInCapture('read');
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
    if (this.capturing) throw refuseInCapture('emptyCache');
    this.allocator.emptyCache();
  }

  synchronize(): void {
    if (this.capturing) throw refuseInCapture('synchronize');
    this.driver.synchronize();
  }

  /**
   * Capture fn's work on the stream as a CUDA graph (see Backend.capture for the rules). Run the
   * same work once eagerly first: kernels compile, cuBLASLt picks its plans and the allocator's
   * cache fills there. Not under the kernel profiler or MOHAWK_CUDA_SYNC=1 per-launch checks
   * (those are skipped while capturing).
   */
  capture(fn: () => void, inputs: readonly HostArray[] = []): GraphCapture {
    if (this.capturing) throw new Error('cuda backend: graph capture inside another capture');
    if (this.kernels.profiler)
      throw new Error(
        'cuda backend: graph capture under the kernel profiler (its events cannot be captured)',
      );
    const state = new CaptureState(this.driver, inputs);
    const release = (ptr: number, size: number) => this.allocator.release(ptr, size);
    const close = () => {
      this.capturing = null;
      this.kernels.capturing = false;
      this.allocator.holdCache = false;
    };
    try {
      this.driver.beginCapture();
    } catch (e) {
      state.release(this.driver, release);
      throw e;
    }
    this.capturing = state;
    this.kernels.capturing = true;
    this.allocator.holdCache = true;
    try {
      fn();
    } catch (e) {
      close();
      try {
        this.driver.destroyGraph(this.driver.endCapture(), 0);
      } catch {
        // the capture was invalidated by the failing call: nothing to destroy
      }
      state.release(this.driver, release);
      throw e;
    }
    close();
    let graph = 0;
    let exec = 0;
    try {
      graph = this.driver.endCapture();
      exec = this.driver.instantiateGraph(graph);
      const nodes = this.driver.graphNodeCount(graph);
      return new CudaGraph(this.driver, graph, exec, nodes, state, release, () => this.capturing !== null);
    } catch (e) {
      if (graph) this.driver.destroyGraph(graph, exec);
      state.release(this.driver, release);
      throw new CudaError(`cuda backend: graph capture failed: ${(e as Error).message}`);
    }
  }

  /** Time fn on the device with events (ms); fn queues work, the call waits for it. */
  time(fn: () => void): number {
    if (this.capturing) throw refuseInCapture('time');
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
  /** what GEMM autotuning (MOHAWK_GEMM_TUNE) picked so far (empty when it is off) */
  tunedProducts(): { plan: string; rank: number; ms: number; firstMs: number }[] {
    return this.cublas.tunedProducts();
  }

  profile<R>(
    fn: () => R,
    opts: { gemmShapes?: boolean } = {},
  ): { result: R; kernels: { name: string; calls: number; ms: number }[] } {
    if (this.capturing) throw refuseInCapture('profile');
    const prev = this.kernels.profiler;
    const prof = new Profiler(this.driver, opts.gemmShapes ?? false);
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
        elementwise.fillF64(this.host, b.ptr, value, b.length);
    }
  }

  cast(x: DeviceBuffer, out: DeviceBuffer): void {
    elementwise.cast(this.host, x, out);
  }

  unary(op: UnaryOp, x: DeviceBuffer, out: DeviceBuffer, alpha: number, beta: number): void {
    elementwise.unary(this.host, op, x, out, alpha, beta);
  }

  unaryBackward(op: UnaryOp, x: DeviceBuffer, gy: DeviceBuffer, gx: DeviceBuffer): void {
    elementwise.unaryBackward(this.host, op, x, gy, gx);
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
    elementwise.binary(this.host, op, a, aStrides, b, bStrides, out, shape);
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
    elementwise.copyStrided(
      this.host,
      src,
      srcOffset,
      srcStrides,
      dst,
      dstOffset,
      dstStrides,
      shape,
      accumulate,
    );
  }

  reduce(op: ReduceOp, x: DeviceBuffer, out: DeviceBuffer, outer: number, n: number, inner: number): void {
    reduce.reduce(this.host, op, x, out, outer, n, inner);
  }

  cumsum(
    x: DeviceBuffer,
    out: DeviceBuffer,
    outer: number,
    n: number,
    inner: number,
    reverse: boolean,
  ): void {
    reduce.cumsum(this.host, x, out, outer, n, inner, reverse);
  }

  segsum(x: DeviceBuffer, out: DeviceBuffer, rows: number, t: number): void {
    reduce.segsum(this.host, x, out, rows, t);
  }

  segsumBackward(gOut: DeviceBuffer, gx: DeviceBuffer, rows: number, t: number): void {
    reduce.segsumBackward(this.host, gOut, gx, rows, t);
  }

  causalMask(x: DeviceBuffer, out: DeviceBuffer, rows: number, tq: number, tk: number, value: number): void {
    elementwise.causalMask(this.host, x, out, rows, tq, tk, value);
  }

  siluGate(
    y: DeviceBuffer,
    z: DeviceBuffer,
    bias: DeviceBuffer,
    out: DeviceBuffer,
    rows: number,
    cols: number,
  ): void {
    elementwise.siluGate(this.host, y, z, bias, out, rows, cols);
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
    elementwise.siluGateBackward(this.host, y, z, bias, g, gy, gz, rows, cols);
  }

  // the fused glue of the training step (optional Backend methods; see backend.ts)

  unaryKeep16(op: UnaryOp, x: DeviceBuffer, out: DeviceBuffer, xOut: DeviceBuffer): void {
    elementwise.unaryKeep16(this.host, op, x, out, xOut);
  }

  castColumnSums(
    g: DeviceBuffer,
    g16: DeviceBuffer,
    sums: DeviceBuffer,
    rows: number,
    cols: number,
    op: UnaryOp | null,
    x: DeviceBuffer | null,
  ): void {
    elementwise.castColumnSums(this.host, g, g16, sums, rows, cols, op, x);
  }

  gatedAct(
    op: UnaryOp,
    g: DeviceBuffer,
    u: DeviceBuffer,
    out: DeviceBuffer,
    gKeep: DeviceBuffer | null,
    uKeep: DeviceBuffer | null,
  ): void {
    elementwise.gatedAct(this.host, op, g, u, out, gKeep, uKeep);
  }

  gatedActBackward(
    op: UnaryOp,
    g: DeviceBuffer,
    u: DeviceBuffer,
    go: DeviceBuffer,
    gg: DeviceBuffer,
    gu: DeviceBuffer,
  ): void {
    elementwise.gatedActBackward(this.host, op, g, u, go, gg, gu);
  }

  siluGateD(
    y: DeviceBuffer,
    x: DeviceBuffer,
    D: DeviceBuffer,
    z: DeviceBuffer,
    bias: DeviceBuffer,
    out: DeviceBuffer,
    rows: number,
    cols: number,
    headDim: number,
    yKeep?: DeviceBuffer | null,
    zKeep?: DeviceBuffer | null,
  ): void {
    elementwise.siluGateD(
      this.host,
      y,
      x,
      D,
      z,
      bias,
      out,
      rows,
      cols,
      headDim,
      yKeep ?? null,
      zKeep ?? null,
    );
  }

  siluGateDBackward(
    y: DeviceBuffer,
    x: DeviceBuffer,
    D: DeviceBuffer,
    z: DeviceBuffer,
    bias: DeviceBuffer,
    g: DeviceBuffer,
    gy: DeviceBuffer,
    gx: DeviceBuffer,
    gz: DeviceBuffer,
    gD: DeviceBuffer,
    rows: number,
    cols: number,
    headDim: number,
  ): void {
    elementwise.siluGateDBackward(this.host, y, x, D, z, bias, g, gy, gx, gz, gD, rows, cols, headDim);
  }

  dropout(x: DeviceBuffer, out: DeviceBuffer, p: number, seed: number): void {
    elementwise.dropout(this.host, x, out, p, seed);
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
        elementwise.scaleInPlace(this.host, C.ptr, p.beta, n);
      }
      if (BIAS) addBias();
      return;
    }
    if (C.dtype === 'f32' && gemvTakes(A, B, C, p) && (!BIAS || BIAS.dtype === 'f32')) {
      // decoding's few-row products with a bf16 weight: one pass over the weight (gemv.cu)
      gemv(this.host, A, B, C, BIAS, p);
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
      if (prof ? prof.attempt(`cuBLASLt GEMM+bias ${ab} -> ${cd}${gemmShape(prof, p)}`, fused) : fused())
        return;
    }
    const gemm = () => this.cublas.gemm(gemmArgs());
    if (prof) prof.around(`cuBLAS GEMM ${ab} -> ${cd}${gemmShape(prof, p)}`, gemm);
    else gemm();
    if (BIAS) addBias();
  }

  add3(a: DeviceBuffer, b: DeviceBuffer, c: DeviceBuffer, out: DeviceBuffer): void {
    elementwise.add3(this.host, a, b, c, out);
  }

  // ---- the fused kernels of the recurrent decoding step (decode.ts) ----

  layerNormTo16(
    x: DeviceBuffer,
    weight: DeviceBuffer,
    bias: DeviceBuffer | null,
    out: DeviceBuffer,
    rows: number,
    cols: number,
    eps: number,
  ): void {
    decode.layerNormTo16(this.host, x, weight, bias, out, rows, cols, eps);
  }

  ssmStepGate(
    zx: DeviceBuffer,
    layout: { rowLen: number; xOff: number; zOff: number; aOff: number },
    convState: DeviceBuffer,
    convWeight: DeviceBuffer,
    convBias: DeviceBuffer | null,
    D: DeviceBuffer,
    zBias: DeviceBuffer,
    ssm: DeviceBuffer,
    out: DeviceBuffer,
    p: SsmStepParams,
  ): void {
    decode.ssmStepGate(this.host, zx, layout, convState, convWeight, convBias, D, zBias, ssm, out, p);
  }

  matmulAct(
    act: 'geluNew',
    a: DeviceBuffer,
    b: DeviceBuffer,
    c: DeviceBuffer,
    m: number,
    n: number,
    k: number,
    bias: DeviceBuffer | null,
  ): void {
    const A = this.buf(a, 'matmulAct A');
    const B = this.buf(b, 'matmulAct B');
    const C = this.buf(c, 'matmulAct C');
    const BIAS = bias ? this.buf(bias, 'matmulAct bias') : null;
    if (
      (A.dtype !== 'bf16' && A.dtype !== 'f16') ||
      B.dtype !== A.dtype ||
      (C.dtype !== 'bf16' && C.dtype !== 'f16')
    )
      throw new Error(
        `cuda backend: matmulAct needs 16-bit A, B (one dtype) and C, got ${A.dtype}, ${B.dtype}, ${C.dtype}`,
      );
    decode.checkF32(BIAS, n, 'matmulAct bias');
    decode.matmulAct(this.host, act, A, B, C, m, n, k, BIAS, () => {
      const p = linearParams(m, n, k);
      // the bias and the tanh GELU in cuBLASLt's epilogue, written in 16 bits: no f32 product, no
      // second pass (the frozen teacher's MLPs; MOHAWK_ACT_EPILOGUE=0: the two passes below)
      if (this.actEpilogue && C.dtype === A.dtype && this.matmulGelu(a, b, c, p, 'gelu', bias, null)) return;
      // the product into f32 (bias in cuBLASLt's epilogue), then the activation rounded to 16 bits
      const f = this.scratch(m * n, 'f32');
      this.matmul(a, b, f, p, bias);
      this.unary(act, f, c, 1, 0);
      this.free(f);
    });
  }
  matmulPair(
    a: DeviceBuffer,
    m: number,
    k: number,
    w1: DeviceBuffer,
    bias1: DeviceBuffer | null,
    c1: DeviceBuffer,
    n1: number,
    w2: DeviceBuffer,
    bias2: DeviceBuffer | null,
    c2: DeviceBuffer,
    n2: number,
    act2: 'geluNew',
  ): void {
    const A = this.buf(a, 'matmulPair A');
    const W1 = this.buf(w1, 'matmulPair w1');
    const W2 = this.buf(w2, 'matmulPair w2');
    const C1 = this.buf(c1, 'matmulPair c1');
    const C2 = this.buf(c2, 'matmulPair c2');
    const B1 = bias1 ? this.buf(bias1, 'matmulPair bias1') : null;
    const B2 = bias2 ? this.buf(bias2, 'matmulPair bias2') : null;
    decode.checkF32(C1, m * n1, 'matmulPair c1');
    decode.checkF32(B1, n1, 'matmulPair bias1');
    if ((A.dtype !== 'bf16' && A.dtype !== 'f16') || W1.dtype !== A.dtype)
      throw new Error(
        `cuda backend: matmulPair needs 16-bit A and w1 of one dtype, got ${A.dtype}, ${W1.dtype}`,
      );
    decode.matmulPair(this.host, A, m, k, W1, B1, C1, n1, W2, B2, C2, n2, act2, () => {
      this.matmul(a, w1, c1, linearParams(m, n1, k), bias1);
      this.matmulAct(act2, a, w2, c2, m, n2, k, bias2);
    });
  }

  blockOut(
    g: DeviceBuffer,
    wo: DeviceBuffer,
    bo: DeviceBuffer | null,
    h: DeviceBuffer,
    wf: DeviceBuffer,
    bf: DeviceBuffer | null,
    r: DeviceBuffer,
    mix: DeviceBuffer,
    out: DeviceBuffer,
    m: number,
    n: number,
    k1: number,
    k2: number,
  ): void {
    const G = this.buf(g, 'blockOut g');
    const H = this.buf(h, 'blockOut h');
    const WO = this.buf(wo, 'blockOut wo');
    const WF = this.buf(wf, 'blockOut wf');
    const BO = bo ? this.buf(bo, 'blockOut bo') : null;
    const BF = bf ? this.buf(bf, 'blockOut bf') : null;
    const R = this.buf(r, 'blockOut r');
    const MIX = this.buf(mix, 'blockOut mix');
    const OUT = this.buf(out, 'blockOut out');
    for (const [what, t, len] of [
      ['r', R, m * n],
      ['mix', MIX, m * n],
      ['out', OUT, m * n],
      ['bo', BO, n],
      ['bf', BF, n],
    ] as const)
      decode.checkF32(t, len, `blockOut ${what}`);
    if (![G, H, WO, WF].every((t) => t.dtype === G.dtype) || (G.dtype !== 'bf16' && G.dtype !== 'f16'))
      throw new Error(
        `cuda backend: blockOut needs 16-bit g, h, wo, wf of one dtype, got ${G.dtype}, ${H.dtype}, ${WO.dtype}, ${WF.dtype}`,
      );
    if (gemvBlockOut(this.host, G, WO, BO, H, WF, BF, R, MIX, OUT, m, n, k1, k2)) return;
    this.matmul(g, wo, mix, linearParams(m, n, k1), bo);
    this.matmulResidual(h, wf, out, m, n, k2, bf, r, mix);
  }

  matmulResidual(
    a: DeviceBuffer,
    b: DeviceBuffer,
    c: DeviceBuffer,
    m: number,
    n: number,
    k: number,
    bias: DeviceBuffer | null,
    r1: DeviceBuffer,
    r2: DeviceBuffer,
  ): void {
    const A = this.buf(a, 'matmulResidual A');
    const B = this.buf(b, 'matmulResidual B');
    const C = this.buf(c, 'matmulResidual C');
    const R1 = this.buf(r1, 'matmulResidual r1');
    const R2 = this.buf(r2, 'matmulResidual r2');
    const BIAS = bias ? this.buf(bias, 'matmulResidual bias') : null;
    if ((A.dtype !== 'bf16' && A.dtype !== 'f16') || B.dtype !== A.dtype || C.dtype !== 'f32')
      throw new Error(
        `cuda backend: matmulResidual needs 16-bit A, B (one dtype) and an f32 C, got ${A.dtype}, ${B.dtype}, ${C.dtype}`,
      );
    decode.checkF32(R1, m * n, 'matmulResidual r1');
    decode.checkF32(R2, m * n, 'matmulResidual r2');
    decode.checkF32(BIAS, n, 'matmulResidual bias');
    decode.matmulResidual(this.host, A, B, C, m, n, k, BIAS, R1, R2, () => {
      const p = linearParams(m, n, k);
      this.matmul(a, b, c, p, bias);
      this.add3(r1, r2, c, c);
    });
  }

  matmulGelu(
    a: DeviceBuffer,
    b: DeviceBuffer,
    c: DeviceBuffer,
    p: MatmulParams,
    mode: 'gelu' | 'dgelu',
    bias: DeviceBuffer | null,
    aux: DeviceBuffer | null,
  ): boolean {
    const A = this.buf(a, 'matmulGelu A');
    const B = this.buf(b, 'matmulGelu B');
    const C = this.buf(c, 'matmulGelu C');
    const ab = A.dtype;
    if (B.dtype !== ab || C.dtype !== ab || (ab !== 'bf16' && ab !== 'f16'))
      throw new Error(
        `cuda backend: matmulGelu needs one 16-bit dtype for A, B, C, got ${ab}, ${B.dtype}, ${C.dtype}`,
      );
    if (p.batch !== 1) throw new Error(`cuda backend: matmulGelu of batch ${p.batch} (1 only)`);
    const BIAS = bias ? this.buf(bias, 'matmulGelu bias') : null;
    if (BIAS && (BIAS.dtype !== 'f32' || BIAS.length !== p.n))
      throw new Error(
        `cuda backend: matmulGelu bias must be ${p.n} values of f32, got ${BIAS.length} ${BIAS.dtype}`,
      );
    const AUX = aux ? this.buf(aux, 'matmulGelu aux') : null;
    if (AUX && (AUX.dtype !== ab || AUX.length !== p.m * p.n))
      throw new Error(
        `cuda backend: matmulGelu aux must be ${p.m * p.n} values of ${ab}, got ${AUX.length} ${AUX.dtype}`,
      );
    if (p.m === 0 || p.n === 0 || p.k === 0) return false;
    const g = {
      a: A.ptr,
      b: B.ptr,
      c: C.ptr,
      typeAB: ab as GemmDType,
      typeC: ab as GemmDType,
      transA: p.transA,
      transB: p.transB,
      m: p.m,
      n: p.n,
      k: p.k,
      strideA: p.strideA,
      strideB: p.strideB,
      strideC: p.strideC,
      batch: 1,
      alpha: p.alpha,
      beta: p.beta,
    };
    const prof = this.kernels.profiler;
    const attempt = (bias: number, biasType: GemmDType) => {
      const run = () => this.cublas.gemmGelu(g, mode, bias, AUX?.ptr ?? 0, biasType);
      return prof ? prof.attempt(`cuBLASLt GEMM+${mode} ${ab}${gemmShape(prof, p)}`, run) : run();
    };
    if (attempt(BIAS?.ptr ?? 0, 'f32')) return true;
    if (!BIAS) return false;
    // no algorithm with an f32 bias: cuBLASLt may want it in C's dtype (rounded, as PyTorch's
    // autocast rounds a bias); the bias gradient then comes back in that dtype and is widened
    const b16 = this.scratch(p.n, ab);
    try {
      if (mode === 'gelu') {
        this.cast(bias!, b16);
        return attempt(b16.ptr, ab as GemmDType);
      }
      if (!attempt(b16.ptr, ab as GemmDType)) return false;
      this.cast(b16, bias!);
      return true;
    } finally {
      this.free(b16);
    }
  }

  /**
   * Which cuBLASLt GELU epilogue products this device offers for a small bf16 case (test
   * diagnostics): each mode with and without a bias / aux, the bias in f32 and in bf16.
   */
  probeGeluEpilogues(): string[] {
    const found: string[] = [];
    const [m, n, k] = [64, 128, 64];
    const a = this.alloc('bf16', m * k);
    const b = this.alloc('bf16', k * n);
    const c = this.alloc('bf16', m * n);
    const aux = this.alloc('bf16', m * n);
    const bias32 = this.alloc('f32', n);
    const bias16 = this.alloc('bf16', n);
    for (const buf of [a, b, c, aux, bias32, bias16]) this.fill(buf, 0);
    const bufOf = (x: DeviceBuffer) => this.buf(x, 'probe');
    const g = (transB: boolean) => ({
      a: bufOf(a).ptr,
      b: bufOf(b).ptr,
      c: bufOf(c).ptr,
      typeAB: 'bf16' as GemmDType,
      typeC: 'bf16' as GemmDType,
      transA: false,
      transB,
      m,
      n,
      k,
      strideA: m * k,
      strideB: k * n,
      strideC: m * n,
      batch: 1,
      alpha: 1,
      beta: 0,
    });
    for (const mode of ['gelu', 'dgelu'] as const)
      for (const transB of [true, false])
        for (const [bname, bptr, btype] of [
          ['no bias', 0, 'f32'],
          ['f32 bias', bufOf(bias32).ptr, 'f32'],
          ['bf16 bias', bufOf(bias16).ptr, 'bf16'],
        ] as const)
          for (const withAux of mode === 'gelu' ? [false, true] : [true]) {
            const ok = this.cublas.gemmGelu(g(transB), mode, bptr, withAux ? bufOf(aux).ptr : 0, btype);
            found.push(`${mode} transB ${transB} ${bname}${withAux ? ' aux' : ''}: ${ok ? 'yes' : 'no'}`);
          }
    this.synchronize();
    for (const buf of [a, b, c, aux, bias32, bias16]) this.free(buf);
    return found;
  }

  // ---- rows ---------------------------------------------------------------------------------

  softmax(x: DeviceBuffer, out: DeviceBuffer, rows: number, cols: number, log: boolean): void {
    rowKernels.softmax(this.host, x, out, rows, cols, log);
  }

  softmaxBackward(
    y: DeviceBuffer,
    gy: DeviceBuffer,
    gx: DeviceBuffer,
    rows: number,
    cols: number,
    log: boolean,
  ): void {
    rowKernels.softmaxBackward(this.host, y, gy, gx, rows, cols, log);
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
    out16: DeviceBuffer | null = null,
  ): void {
    rowKernels.layerNorm(this.host, x, weight, bias, out, mean, rstd, rows, cols, eps, out16);
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
    accumulate = false,
  ): void {
    rowKernels.layerNormBackward(
      this.host,
      x,
      weight,
      mean,
      rstd,
      gy,
      gx,
      gWeight,
      gBias,
      rows,
      cols,
      accumulate,
    );
  }

  rmsNorm(
    x: DeviceBuffer,
    weight: DeviceBuffer,
    out: DeviceBuffer,
    rstd: DeviceBuffer,
    rows: number,
    cols: number,
    eps: number,
    out16: DeviceBuffer | null = null,
  ): void {
    rowKernels.rmsNorm(this.host, x, weight, out, rstd, rows, cols, eps, out16);
  }

  addRmsNorm(
    a: DeviceBuffer,
    b: DeviceBuffer,
    weight: DeviceBuffer,
    sum: DeviceBuffer,
    out: DeviceBuffer,
    rstd: DeviceBuffer,
    rows: number,
    cols: number,
    eps: number,
    out16: DeviceBuffer | null,
  ): void {
    rowKernels.addRmsNorm(this.host, a, b, weight, sum, out, rstd, rows, cols, eps, out16);
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
    accumulate = false,
  ): void {
    rowKernels.rmsNormBackward(this.host, x, weight, rstd, gy, gx, gWeight, rows, cols, accumulate);
  }

  embedding(table: DeviceBuffer, ids: DeviceBuffer, out: DeviceBuffer, n: number, dim: number): void {
    rowKernels.embedding(this.host, table, ids, out, n, dim);
  }

  embeddingBackward(
    gOut: DeviceBuffer,
    ids: DeviceBuffer,
    gTable: DeviceBuffer,
    n: number,
    dim: number,
  ): void {
    rowKernels.embeddingBackward(this.host, gOut, ids, gTable, n, dim);
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
    sequence.causalConv1d(this.host, x, weight, bias, out, batch, t, channels, kernel);
  }

  causalConv1dKeep16(
    x: DeviceBuffer,
    weight: DeviceBuffer,
    bias: DeviceBuffer | null,
    out: DeviceBuffer,
    xKeep: DeviceBuffer,
    batch: number,
    t: number,
    channels: number,
    kernel: number,
  ): void {
    sequence.causalConv1d(this.host, x, weight, bias, out, batch, t, channels, kernel, xKeep);
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
    sequence.causalConv1dBackward(this.host, x, weight, gy, gx, gWeight, gBias, batch, t, channels, kernel);
  }

  causalConv1dWindow(
    x: DeviceBuffer,
    xWin: ColumnWindow,
    weight: DeviceBuffer,
    bias: DeviceBuffer | null,
    out: DeviceBuffer,
    xKeep: DeviceBuffer | null,
    batch: number,
    t: number,
    channels: number,
    kernel: number,
  ): void {
    sequence.causalConv1dWindow(this.host, x, xWin, weight, bias, out, xKeep, batch, t, channels, kernel);
  }

  causalConv1dWindowBackward(
    x: DeviceBuffer,
    xWin: ColumnWindow | null,
    weight: DeviceBuffer,
    gy: DeviceBuffer,
    gx: DeviceBuffer,
    gxWin: ColumnWindow,
    accumulate: boolean,
    gWeight: DeviceBuffer,
    gBias: DeviceBuffer | null,
    batch: number,
    t: number,
    channels: number,
    kernel: number,
  ): void {
    sequence.causalConv1dWindowBackward(
      this.host,
      x,
      xWin,
      weight,
      gy,
      gx,
      gxWin,
      accumulate,
      gWeight,
      gBias,
      batch,
      t,
      channels,
      kernel,
    );
  }

  siluGateDWindow(
    y: DeviceBuffer,
    x: DeviceBuffer,
    D: DeviceBuffer,
    z: DeviceBuffer,
    zWin: ColumnWindow,
    bias: DeviceBuffer,
    out: DeviceBuffer,
    rows: number,
    cols: number,
    headDim: number,
    yKeep: DeviceBuffer | null,
    zKeep: DeviceBuffer | null,
  ): void {
    sequence.siluGateDWindow(this.host, y, x, D, z, zWin, bias, out, rows, cols, headDim, yKeep, zKeep);
  }

  siluGateDWindowBackward(
    y: DeviceBuffer,
    x: DeviceBuffer,
    D: DeviceBuffer,
    z: DeviceBuffer,
    bias: DeviceBuffer,
    g: DeviceBuffer,
    gy: DeviceBuffer,
    gx: DeviceBuffer,
    gz: DeviceBuffer,
    gzWin: ColumnWindow,
    accumulate: boolean,
    gD: DeviceBuffer,
    gBias: DeviceBuffer | null,
    rows: number,
    cols: number,
    headDim: number,
  ): void {
    sequence.siluGateDWindowBackward(
      this.host,
      y,
      x,
      D,
      z,
      bias,
      g,
      gy,
      gx,
      gz,
      gzWin,
      accumulate,
      gD,
      gBias,
      rows,
      cols,
      headDim,
    );
  }

  logDecayWindow(
    a: DeviceBuffer,
    aWin: ColumnWindow,
    out: DeviceBuffer,
    aKeep: DeviceBuffer | null,
    rows: number,
    cols: number,
  ): void {
    sequence.logDecayWindow(this.host, a, aWin, out, aKeep, rows, cols);
  }

  logDecayWindowBackward(
    a: DeviceBuffer,
    g: DeviceBuffer,
    ga: DeviceBuffer,
    gaWin: ColumnWindow,
    accumulate: boolean,
    rows: number,
    cols: number,
  ): void {
    sequence.logDecayWindowBackward(this.host, a, g, ga, gaWin, accumulate, rows, cols);
  }

  rope(x: DeviceBuffer, out: DeviceBuffer, p: RopeParams): void {
    sequence.rope(this.host, x, out, p);
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
    sequence.ssmStep(this.host, xbc, convState, convWeight, convBias, a, D, ssm, y, p);
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
    attention.attention(this.host, q, k, v, out, lse, probs, p);
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
    attention.attentionBackward(this.host, q, k, v, out, lse, gOut, gq, gk, gv, p);
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
    ssd.ssdScan(this.host, this.ssdImpl, x, logA, bm, cm, y, states, finalState, p);
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
    accumulateGx = false,
  ): void {
    ssd.ssdScanBackward(
      this.host,
      this.ssdImpl,
      x,
      logA,
      bm,
      cm,
      states,
      gy,
      gx,
      gLogA,
      gB,
      gC,
      p,
      accumulateGx,
    );
  }

  materializeMixer(
    logA: DeviceBuffer,
    bm: DeviceBuffer,
    cm: DeviceBuffer,
    out: DeviceBuffer,
    p: SsdParams,
  ): void {
    ssd.materializeMixer(this.host, logA, bm, cm, out, p);
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
    ssd.materializeMixerBackward(this.host, logA, bm, cm, gOut, gLogA, gB, gC, p);
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
    rowKernels.crossEntropy(this.host, logits, targets, losses, lse, rows, vocab, ignoreIndex);
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
    rowKernels.crossEntropyBackward(
      this.host,
      logits,
      targets,
      lse,
      gLoss,
      gLogits,
      rows,
      vocab,
      ignoreIndex,
    );
  }

  klDivergence(
    teacher: DeviceBuffer,
    student: DeviceBuffer,
    losses: DeviceBuffer,
    rows: number,
    vocab: number,
    temperature: number,
    lse: DeviceBuffer | null = null,
  ): void {
    rowKernels.klDivergence(this.host, teacher, student, losses, rows, vocab, temperature, lse);
  }

  klDivergenceBackward(
    teacher: DeviceBuffer,
    student: DeviceBuffer,
    gLoss: DeviceBuffer,
    gStudent: DeviceBuffer,
    rows: number,
    vocab: number,
    temperature: number,
    lse: DeviceBuffer | null = null,
    losses: DeviceBuffer | null = null,
  ): void {
    rowKernels.klDivergenceBackward(
      this.host,
      teacher,
      student,
      gLoss,
      gStudent,
      rows,
      vocab,
      temperature,
      lse,
      losses,
    );
  }

  // ---- optimizer ----------------------------------------------------------------------------

  adamw(param: DeviceBuffer, grad: DeviceBuffer, m: DeviceBuffer, v: DeviceBuffer, p: AdamWParams): void {
    elementwise.adamw(this.host, param, grad, m, v, p);
  }

  adamwDevice(
    param: DeviceBuffer,
    grad: DeviceBuffer,
    m: DeviceBuffer,
    v: DeviceBuffer,
    scalars: DeviceBuffer,
    rowAbs: DeviceBuffer | null,
    p: AdamWDeviceParams,
  ): void {
    elementwise.adamwDevice(this.host, param, grad, m, v, scalars, rowAbs, p);
  }

  gradRowSquares(
    grad: DeviceBuffer,
    rowSquares: DeviceBuffer,
    at: number,
    rows: number,
    rowLen: number,
  ): void {
    optim.gradRowSquares(this.host, grad, rowSquares, at, rows, rowLen);
  }

  sumF64(x: DeviceBuffer, n: number, out: DeviceBuffer, at: number): void {
    optim.sumF64(this.host, x, n, out, at);
  }

  adamwFused(
    param: DeviceBuffer,
    grad: DeviceBuffer,
    m: DeviceBuffer,
    v: DeviceBuffer,
    scalars: DeviceBuffer,
    rowSquares: DeviceBuffer | null,
    nonFinite: DeviceBuffer | null,
    param16: DeviceBuffer | null,
    p: AdamWFusedParams,
  ): void {
    optim.adamwFused(this.host, param, grad, m, v, scalars, rowSquares, nonFinite, param16, p);
  }
}

/** The error of a host read or wait inside a capture: the call named, the way out said. */
function refuseInCapture(call: string): Error {
  return new CudaError(
    `cuda backend: ${call} inside a graph capture (a capture records kernels without running ` +
      `them: read results after replay(), outside the captured function)`,
  );
}

const F32 = new Float32Array(1);
const U32 = new Uint32Array(F32.buffer);

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

/** A GEMM's shape for the profile's name, where the profile asks for shapes: ' (m n k, NT, batch)' */
function gemmShape(prof: Profiler, p: MatmulParams): string {
  if (!prof.gemmShapes) return '';
  const t = `${p.transA ? 'T' : 'N'}${p.transB ? 'T' : 'N'}`;
  return ` (${p.m} ${p.n} ${p.k}, ${t}${p.batch > 1 ? `, batch ${p.batch}` : ''}${p.beta ? ', beta' : ''})`;
}
