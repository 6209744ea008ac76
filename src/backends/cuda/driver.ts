// Bindings to the CUDA driver API (libcuda.so.1) through koffi: the calls the backend uses for
// the context, one stream, memory, modules, launches and events. Handles and device addresses
// are plain numbers (they stay below 2^53 on x86-64); every failing call throws a CudaError that
// names the call and the error (cuGetErrorName / cuGetErrorString).

import koffi, { type LibraryHandle } from 'koffi';

export class CudaError extends Error {}

/** CUresult values the backend reacts to */
export const CUDA_SUCCESS = 0;
export const CUDA_ERROR_OUT_OF_MEMORY = 2;

// CUdevice_attribute
export const ATTR_MULTIPROCESSOR_COUNT = 16;
export const ATTR_COMPUTE_CAPABILITY_MAJOR = 75;
export const ATTR_COMPUTE_CAPABILITY_MINOR = 76;
export const ATTR_MAX_SHARED_MEMORY_PER_BLOCK_OPTIN = 97;
// CUfunction_attribute
export const FUNC_ATTR_MAX_DYNAMIC_SHARED_SIZE_BYTES = 8;
const CU_STREAM_NON_BLOCKING = 1;

type Fn = (...args: unknown[]) => number;

interface Raw {
  cuInit: Fn;
  cuDriverGetVersion: Fn;
  cuDeviceGetCount: Fn;
  cuDeviceGet: Fn;
  cuDeviceGetName: Fn;
  cuDeviceGetAttribute: Fn;
  cuDeviceTotalMem: Fn;
  cuDevicePrimaryCtxRetain: Fn;
  cuCtxSetCurrent: Fn;
  cuCtxSynchronize: Fn;
  cuStreamCreate: Fn;
  cuStreamSynchronize: Fn;
  cuMemAlloc: Fn;
  cuMemFree: Fn;
  cuMemGetInfo: Fn;
  cuMemcpyHtoDAsync: Fn;
  cuMemcpyDtoHAsync: Fn;
  cuMemcpyDtoDAsync: Fn;
  cuMemsetD32Async: Fn;
  cuMemsetD16Async: Fn;
  cuModuleLoadData: Fn;
  cuModuleGetFunction: Fn;
  cuFuncSetAttribute: Fn;
  cuLaunchKernel: Fn;
  cuEventCreate: Fn;
  cuEventRecord: Fn;
  cuEventSynchronize: Fn;
  cuEventElapsedTime: Fn;
  cuEventDestroy: Fn;
  cuGetErrorName: Fn;
  cuGetErrorString: Fn;
  /** graphs and pinned host memory (null when this driver lacks them: capture then throws) */
  graph: GraphRaw | null;
}

/** The driver calls of stream capture, CUDA graphs and pinned host staging. */
interface GraphRaw {
  cuStreamBeginCapture: Fn;
  cuStreamEndCapture: Fn;
  cuStreamIsCapturing: Fn;
  cuGraphInstantiateWithFlags: Fn;
  cuGraphGetNodes: Fn;
  cuGraphLaunch: Fn;
  cuGraphExecDestroy: Fn;
  cuGraphDestroy: Fn;
  cuMemHostAlloc: Fn;
  cuMemFreeHost: Fn;
  cuMemcpyHtoDAsyncFrom: Fn;
}

// CUstreamCaptureMode: relaxed lets the thread call cuMemAlloc and load modules while capturing
const CU_STREAM_CAPTURE_MODE_RELAXED = 2;
// CUstreamCaptureStatus
export const CU_STREAM_CAPTURE_STATUS_ACTIVE = 1;

function bindGraph(f: (decl: string) => Fn): GraphRaw | null {
  try {
    return {
      cuStreamBeginCapture: f('int cuStreamBeginCapture_v2(uint64_t stream, int mode)'),
      cuStreamEndCapture: f('int cuStreamEndCapture(uint64_t stream, _Out_ uint64_t *graph)'),
      cuStreamIsCapturing: f('int cuStreamIsCapturing(uint64_t stream, _Out_ int *status)'),
      cuGraphInstantiateWithFlags: f(
        'int cuGraphInstantiateWithFlags(_Out_ uint64_t *exec, uint64_t graph, unsigned long long flags)',
      ),
      cuGraphGetNodes: f('int cuGraphGetNodes(uint64_t graph, uint64_t nodes, _Out_ size_t *count)'),
      cuGraphLaunch: f('int cuGraphLaunch(uint64_t exec, uint64_t stream)'),
      cuGraphExecDestroy: f('int cuGraphExecDestroy(uint64_t exec)'),
      cuGraphDestroy: f('int cuGraphDestroy(uint64_t graph)'),
      cuMemHostAlloc: f('int cuMemHostAlloc(_Out_ uint64_t *ptr, size_t bytes, unsigned int flags)'),
      cuMemFreeHost: f('int cuMemFreeHost(uint64_t ptr)'),
      // the same copy as cuMemcpyHtoDAsync_v2, from a host address (pinned staging) instead of an array
      cuMemcpyHtoDAsyncFrom: f(
        'int cuMemcpyHtoDAsync_v2(uint64_t dst, uint64_t src, size_t bytes, uint64_t stream)',
      ),
    };
  } catch {
    return null;
  }
}

const LIBRARIES = ['libcuda.so.1', 'libcuda.so'];

function bind(lib: LibraryHandle): Raw {
  const f = (decl: string): Fn => lib.func(decl) as Fn;
  // cuEventElapsedTime became cuEventElapsedTime_v2 in CUDA 12.8; older drivers have only the first
  let elapsed: Fn;
  try {
    elapsed = f('int cuEventElapsedTime_v2(_Out_ float *ms, uint64_t start, uint64_t end)');
  } catch {
    elapsed = f('int cuEventElapsedTime(_Out_ float *ms, uint64_t start, uint64_t end)');
  }
  return {
    cuInit: f('int cuInit(unsigned int flags)'),
    cuDriverGetVersion: f('int cuDriverGetVersion(_Out_ int *version)'),
    cuDeviceGetCount: f('int cuDeviceGetCount(_Out_ int *count)'),
    cuDeviceGet: f('int cuDeviceGet(_Out_ int *device, int ordinal)'),
    cuDeviceGetName: f('int cuDeviceGetName(_Out_ uint8_t *name, int len, int device)'),
    cuDeviceGetAttribute: f('int cuDeviceGetAttribute(_Out_ int *value, int attribute, int device)'),
    cuDeviceTotalMem: f('int cuDeviceTotalMem_v2(_Out_ size_t *bytes, int device)'),
    cuDevicePrimaryCtxRetain: f('int cuDevicePrimaryCtxRetain(_Out_ uint64_t *ctx, int device)'),
    cuCtxSetCurrent: f('int cuCtxSetCurrent(uint64_t ctx)'),
    cuCtxSynchronize: f('int cuCtxSynchronize()'),
    cuStreamCreate: f('int cuStreamCreate(_Out_ uint64_t *stream, unsigned int flags)'),
    cuStreamSynchronize: f('int cuStreamSynchronize(uint64_t stream)'),
    cuMemAlloc: f('int cuMemAlloc_v2(_Out_ uint64_t *ptr, size_t bytes)'),
    cuMemFree: f('int cuMemFree_v2(uint64_t ptr)'),
    cuMemGetInfo: f('int cuMemGetInfo_v2(_Out_ size_t *free, _Out_ size_t *total)'),
    cuMemcpyHtoDAsync: f(
      'int cuMemcpyHtoDAsync_v2(uint64_t dst, const void *src, size_t bytes, uint64_t stream)',
    ),
    cuMemcpyDtoHAsync: f('int cuMemcpyDtoHAsync_v2(void *dst, uint64_t src, size_t bytes, uint64_t stream)'),
    cuMemcpyDtoDAsync: f(
      'int cuMemcpyDtoDAsync_v2(uint64_t dst, uint64_t src, size_t bytes, uint64_t stream)',
    ),
    cuMemsetD32Async: f('int cuMemsetD32Async(uint64_t ptr, unsigned int value, size_t n, uint64_t stream)'),
    cuMemsetD16Async: f(
      'int cuMemsetD16Async(uint64_t ptr, unsigned short value, size_t n, uint64_t stream)',
    ),
    cuModuleLoadData: f('int cuModuleLoadData(_Out_ uint64_t *module, const void *image)'),
    cuModuleGetFunction: f('int cuModuleGetFunction(_Out_ uint64_t *fn, uint64_t module, const char *name)'),
    cuFuncSetAttribute: f('int cuFuncSetAttribute(uint64_t fn, int attribute, int value)'),
    cuLaunchKernel: f(
      'int cuLaunchKernel(uint64_t fn, unsigned int gx, unsigned int gy, unsigned int gz, unsigned int bx, unsigned int by, unsigned int bz, unsigned int shmem, uint64_t stream, uint64_t params, uint64_t extra)',
    ),
    cuEventCreate: f('int cuEventCreate(_Out_ uint64_t *event, unsigned int flags)'),
    cuEventRecord: f('int cuEventRecord(uint64_t event, uint64_t stream)'),
    cuEventSynchronize: f('int cuEventSynchronize(uint64_t event)'),
    cuEventElapsedTime: elapsed,
    cuEventDestroy: f('int cuEventDestroy_v2(uint64_t event)'),
    cuGetErrorName: f('int cuGetErrorName(int error, _Out_ const char **name)'),
    cuGetErrorString: f('int cuGetErrorString(int error, _Out_ const char **text)'),
    graph: bindGraph(f),
  };
}

export interface DeviceInfo {
  ordinal: number;
  name: string;
  computeCapability: [number, number];
  multiprocessors: number;
  totalMemory: number;
  maxSharedPerBlockOptin: number;
  driverVersion: string;
}

/** One device's primary context and the stream all work is queued on. */
export class Driver {
  readonly stream: number;
  readonly context: number;
  readonly info: DeviceInfo;
  private readonly out = [0];
  private readonly outF = new Float32Array(1);

  private constructor(
    private readonly raw: Raw,
    ordinal: number,
  ) {
    const out = this.out;
    this.check('cuInit', raw.cuInit(0));
    this.check('cuDriverGetVersion', raw.cuDriverGetVersion(out));
    const version = out[0];
    this.check('cuDeviceGetCount', raw.cuDeviceGetCount(out));
    const count = out[0];
    if (count === 0) throw new CudaError('cuda backend: the CUDA driver reports no devices');
    if (ordinal < 0 || ordinal >= count) {
      throw new CudaError(
        `cuda backend: device ${ordinal} requested, but the driver reports ${count} device(s)`,
      );
    }
    this.check('cuDeviceGet', raw.cuDeviceGet(out, ordinal));
    const dev = out[0];
    const nameBuf = new Uint8Array(256);
    this.check('cuDeviceGetName', raw.cuDeviceGetName(nameBuf, nameBuf.length, dev));
    const name = Buffer.from(nameBuf).toString('utf8').replace(/\0.*$/s, '');
    const attr = (a: number, what: string): number => {
      this.check(`cuDeviceGetAttribute(${what})`, raw.cuDeviceGetAttribute(out, a, dev));
      return out[0];
    };
    const major = attr(ATTR_COMPUTE_CAPABILITY_MAJOR, 'compute capability major');
    const minor = attr(ATTR_COMPUTE_CAPABILITY_MINOR, 'compute capability minor');
    const sms = attr(ATTR_MULTIPROCESSOR_COUNT, 'multiprocessor count');
    const smem = attr(ATTR_MAX_SHARED_MEMORY_PER_BLOCK_OPTIN, 'max shared memory per block (opt-in)');
    this.check('cuDeviceTotalMem', raw.cuDeviceTotalMem(out, dev));
    const total = Number(out[0]);
    this.check('cuDevicePrimaryCtxRetain', raw.cuDevicePrimaryCtxRetain(out, dev));
    this.context = Number(out[0]);
    this.check('cuCtxSetCurrent', raw.cuCtxSetCurrent(this.context));
    this.check('cuStreamCreate', raw.cuStreamCreate(out, CU_STREAM_NON_BLOCKING));
    this.stream = Number(out[0]);
    this.info = {
      ordinal,
      name,
      computeCapability: [major, minor],
      multiprocessors: sms,
      totalMemory: total,
      maxSharedPerBlockOptin: smem,
      driverVersion: `${Math.floor(version / 1000)}.${(version % 1000) / 10}`,
    };
  }

  /** Load libcuda and set up device `ordinal`; the error names what was looked for. */
  static open(ordinal = 0): Driver {
    let lib: LibraryHandle | null = null;
    const failures: string[] = [];
    for (const name of LIBRARIES) {
      try {
        lib = koffi.load(name);
        break;
      } catch (e) {
        failures.push(`${name}: ${(e as Error).message}`);
      }
    }
    if (!lib) {
      throw new CudaError(
        `cuda backend: the NVIDIA driver library was not found (looked for ${LIBRARIES.join(', ')} on the ` +
          `loader path; is an NVIDIA driver installed?)\n  ${failures.join('\n  ')}`,
      );
    }
    return new Driver(bind(lib), ordinal);
  }

  errorName(rc: number): string {
    const s: (string | null)[] = [null];
    if (this.raw.cuGetErrorName(rc, s) !== CUDA_SUCCESS || !s[0]) return `CUresult ${rc}`;
    const d: (string | null)[] = [null];
    const text = this.raw.cuGetErrorString(rc, d) === CUDA_SUCCESS && d[0] ? ` (${d[0]})` : '';
    return `${s[0]}${text}`;
  }

  check(call: string, rc: number): void {
    if (rc === CUDA_SUCCESS) return;
    // errors of queued kernels surface at the next call that waits for them
    const hint =
      process.env.MOHAWK_CUDA_SYNC === '1'
        ? ''
        : '; an error of an earlier kernel may surface here: rerun with MOHAWK_CUDA_SYNC=1 to name it';
    throw new CudaError(`cuda: ${call} failed: ${this.errorName(rc)}${rc >= 700 && rc < 800 ? hint : ''}`);
  }

  // ---- memory ---------------------------------------------------------------------------------

  /** cuMemAlloc; returns 0 when the device is out of memory (the caller may free its cache and retry) */
  tryAlloc(bytes: number): number {
    const rc = this.raw.cuMemAlloc(this.out, bytes);
    if (rc === CUDA_ERROR_OUT_OF_MEMORY) return 0;
    this.check(`cuMemAlloc(${bytes} bytes)`, rc);
    return Number(this.out[0]);
  }

  free(ptr: number): void {
    this.check('cuMemFree', this.raw.cuMemFree(ptr));
  }

  memInfo(): { free: number; total: number } {
    const f = [0];
    const t = [0];
    this.check('cuMemGetInfo', this.raw.cuMemGetInfo(f, t));
    return { free: Number(f[0]), total: Number(t[0]) };
  }

  copyToDevice(dst: number, src: ArrayBufferView, bytes: number): void {
    this.check('cuMemcpyHtoDAsync', this.raw.cuMemcpyHtoDAsync(dst, src, bytes, this.stream));
  }

  /** Waits for the stream first, so the copy sees every queued kernel. */
  copyToHost(dst: ArrayBufferView, src: number, bytes: number): void {
    this.check('cuMemcpyDtoHAsync', this.raw.cuMemcpyDtoHAsync(dst, src, bytes, this.stream));
    this.synchronize();
  }

  copyOnDevice(dst: number, src: number, bytes: number): void {
    this.check('cuMemcpyDtoDAsync', this.raw.cuMemcpyDtoDAsync(dst, src, bytes, this.stream));
  }

  memset32(ptr: number, value: number, n: number): void {
    this.check('cuMemsetD32Async', this.raw.cuMemsetD32Async(ptr, value >>> 0, n, this.stream));
  }

  memset16(ptr: number, value: number, n: number): void {
    this.check('cuMemsetD16Async', this.raw.cuMemsetD16Async(ptr, value & 0xffff, n, this.stream));
  }

  synchronize(): void {
    this.check('cuStreamSynchronize', this.raw.cuStreamSynchronize(this.stream));
  }

  synchronizeContext(): void {
    this.check('cuCtxSynchronize', this.raw.cuCtxSynchronize());
  }

  // ---- modules and launches ---------------------------------------------------------------------

  loadModule(image: Uint8Array, what: string): number {
    this.check(`cuModuleLoadData(${what})`, this.raw.cuModuleLoadData(this.out, image));
    return Number(this.out[0]);
  }

  getFunction(module: number, name: string): number {
    this.check(`cuModuleGetFunction(${name})`, this.raw.cuModuleGetFunction(this.out, module, name));
    return Number(this.out[0]);
  }

  setMaxDynamicShared(fn: number, bytes: number, name: string): void {
    this.check(
      `cuFuncSetAttribute(${name}, max dynamic shared memory ${bytes})`,
      this.raw.cuFuncSetAttribute(fn, FUNC_ATTR_MAX_DYNAMIC_SHARED_SIZE_BYTES, bytes),
    );
  }

  /** params: the address of a void*[] of argument addresses (see kernels.ts) */
  launch(
    fn: number,
    gx: number,
    gy: number,
    gz: number,
    bx: number,
    shmem: number,
    params: number,
    name: string,
  ): void {
    const rc = this.raw.cuLaunchKernel(fn, gx, gy, gz, bx, 1, 1, shmem, this.stream, params, 0);
    if (rc !== CUDA_SUCCESS) {
      throw new CudaError(
        `cuda: cuLaunchKernel(${name}, grid ${gx}x${gy}x${gz}, block ${bx}, shared ${shmem}) failed: ${this.errorName(rc)}`,
      );
    }
  }

  // ---- events ---------------------------------------------------------------------------------

  createEvent(): number {
    this.check('cuEventCreate', this.raw.cuEventCreate(this.out, 0));
    return Number(this.out[0]);
  }

  record(event: number): void {
    this.check('cuEventRecord', this.raw.cuEventRecord(event, this.stream));
  }

  /** milliseconds between two recorded events (waits for the second) */
  elapsed(start: number, end: number): number {
    this.check('cuEventSynchronize', this.raw.cuEventSynchronize(end));
    this.check('cuEventElapsedTime', this.raw.cuEventElapsedTime(this.outF, start, end));
    return this.outF[0];
  }

  destroyEvent(event: number): void {
    this.check('cuEventDestroy', this.raw.cuEventDestroy(event));
  }

  /** wait until the work queued before the event's record is done */
  waitEvent(event: number): void {
    this.check('cuEventSynchronize', this.raw.cuEventSynchronize(event));
  }

  // ---- graphs (stream capture) and pinned host memory ----------------------------------------

  private graphApi(call: string): GraphRaw {
    if (!this.raw.graph)
      throw new CudaError(`cuda: ${call}: this driver (${this.info.driverVersion}) lacks the CUDA graph API`);
    return this.raw.graph;
  }

  /** Start recording the stream's work into a graph instead of running it (relaxed mode). */
  beginCapture(): void {
    const g = this.graphApi('cuStreamBeginCapture');
    this.check('cuStreamBeginCapture', g.cuStreamBeginCapture(this.stream, CU_STREAM_CAPTURE_MODE_RELAXED));
  }

  /** End the capture: the recorded graph's handle; throws when the capture was invalidated. */
  endCapture(): number {
    const g = this.graphApi('cuStreamEndCapture');
    this.out[0] = 0;
    const rc = g.cuStreamEndCapture(this.stream, this.out);
    const graph = Number(this.out[0]);
    if (rc !== CUDA_SUCCESS) {
      if (graph) g.cuGraphDestroy(graph);
      this.check('cuStreamEndCapture', rc);
    }
    return graph;
  }

  /** whether the stream is capturing now */
  isCapturing(): boolean {
    const g = this.graphApi('cuStreamIsCapturing');
    this.check('cuStreamIsCapturing', g.cuStreamIsCapturing(this.stream, this.out));
    return this.out[0] === CU_STREAM_CAPTURE_STATUS_ACTIVE;
  }

  instantiateGraph(graph: number): number {
    const g = this.graphApi('cuGraphInstantiateWithFlags');
    this.check('cuGraphInstantiateWithFlags', g.cuGraphInstantiateWithFlags(this.out, graph, 0));
    return Number(this.out[0]);
  }

  graphNodeCount(graph: number): number {
    const g = this.graphApi('cuGraphGetNodes');
    this.check('cuGraphGetNodes', g.cuGraphGetNodes(graph, 0, this.out));
    return Number(this.out[0]);
  }

  launchGraph(exec: number): void {
    this.check('cuGraphLaunch', this.graphApi('cuGraphLaunch').cuGraphLaunch(exec, this.stream));
  }

  destroyGraph(graph: number, exec: number): void {
    const g = this.graphApi('cuGraphDestroy');
    if (exec) this.check('cuGraphExecDestroy', g.cuGraphExecDestroy(exec));
    if (graph) this.check('cuGraphDestroy', g.cuGraphDestroy(graph));
  }

  /** Page-locked host memory (a legal source for a copy captured into a graph): its address. */
  hostAlloc(bytes: number): number {
    const g = this.graphApi('cuMemHostAlloc');
    this.check(`cuMemHostAlloc(${bytes} bytes)`, g.cuMemHostAlloc(this.out, bytes, 0));
    return Number(this.out[0]);
  }

  freeHost(ptr: number): void {
    this.check('cuMemFreeHost', this.graphApi('cuMemFreeHost').cuMemFreeHost(ptr));
  }

  /** cuMemcpyHtoDAsync from a host address (pinned staging from hostAlloc) */
  copyToDeviceFrom(dst: number, src: number, bytes: number): void {
    const g = this.graphApi('cuMemcpyHtoDAsync');
    this.check('cuMemcpyHtoDAsync', g.cuMemcpyHtoDAsyncFrom(dst, src, bytes, this.stream));
  }
}
