// NCCL (libnccl.so.2) through koffi: one communicator per process from a unique id that rank 0
// makes and the process group hands out at the rendezvous, and the collectives queued on a
// communication stream of their own, ordered with the backend's (compute) stream by events:
// an event recorded on the compute stream is waited for by the communication stream before each
// collective, and the compute stream waits for the collective's event where the result is needed
// (at once for the plain calls, at `wait()` for allReduceAsync). So an all-reduce of gradients can
// run while the backward pass's kernels go on. Every collective of one communicator is on that one
// stream, in the order the ranks issue them. MOHAWK_NCCL_OVERLAP=0 queues them on the compute
// stream instead (no events).
// Values from nccl.h (NCCL 2.x): ncclDataType_t, ncclRedOp_t, ncclResult_t.

import fs from 'node:fs';
import path from 'node:path';
import koffi from 'koffi';
import type { DeviceBuffer, DType } from '../backend.js';
import {
  checkCollectiveSizes,
  type Collective,
  type PendingCollective,
  type ReduceKind,
} from '../collective.js';
import type { ProcessGroup } from '../group.js';
import { CudaError } from './driver.js';
import type { CudaBackend, CudaBuffer } from './index.js';
import { loadCudaLibrary } from './nvrtc.js';

type Fn = (...args: unknown[]) => number;

/** sizeof(ncclUniqueId) */
export const NCCL_UNIQUE_ID_BYTES = 128;
// ncclDataType_t
const NCCL_DTYPE: Partial<Record<DType, number>> = { i32: 2, f16: 6, f32: 7, f64: 8, bf16: 9 };
// ncclRedOp_t
const NCCL_SUM = 0;
const NCCL_AVG = 4;
// ncclResult_t
const NCCL_SUCCESS = 0;
const NCCL_IN_PROGRESS = 7;

// the id is passed by value to ncclCommInitRank: a named struct type koffi knows by that name
koffi.struct('mohawk_ncclUniqueId', {
  internal: koffi.array('uint8_t', NCCL_UNIQUE_ID_BYTES),
});

interface Raw {
  ncclGetVersion: Fn;
  ncclGetUniqueId: Fn;
  ncclCommInitRank: Fn;
  ncclCommDestroy: Fn;
  ncclCommAbort: Fn;
  ncclCommGetAsyncError: Fn;
  ncclAllReduce: Fn;
  ncclReduceScatter: Fn;
  ncclAllGather: Fn;
  ncclBroadcast: Fn;
  ncclGroupStart: Fn;
  ncclGroupEnd: Fn;
  ncclGetErrorString: (rc: number) => string;
}

let lib: { raw: Raw; path: string; version: number } | null = null;

/** The driver calls for a second stream and the events between streams (bound here, beside their one user). */
interface StreamRaw {
  cuStreamCreate: Fn;
  cuStreamDestroy: Fn;
  cuStreamSynchronize: Fn;
  cuStreamWaitEvent: Fn;
  cuEventCreate: Fn;
  cuEventRecord: Fn;
  cuEventDestroy: Fn;
}

let streamLib: StreamRaw | null = null;

function streamCalls(): StreamRaw {
  if (streamLib) return streamLib;
  let l: ReturnType<typeof koffi.load> | null = null;
  for (const name of ['libcuda.so.1', 'libcuda.so']) {
    try {
      l = koffi.load(name);
      break;
    } catch {
      // the backend already opened one of them; try the other name
    }
  }
  if (!l) throw new CudaError('nccl: libcuda.so.1 could not be loaded for the communication stream');
  const f = (decl: string): Fn => l.func(decl) as Fn;
  streamLib = {
    cuStreamCreate: f('int cuStreamCreate(_Out_ uint64_t *stream, unsigned int flags)'),
    cuStreamDestroy: f('int cuStreamDestroy_v2(uint64_t stream)'),
    cuStreamSynchronize: f('int cuStreamSynchronize(uint64_t stream)'),
    cuStreamWaitEvent: f('int cuStreamWaitEvent(uint64_t stream, uint64_t event, unsigned int flags)'),
    cuEventCreate: f('int cuEventCreate(_Out_ uint64_t *event, unsigned int flags)'),
    cuEventRecord: f('int cuEventRecord(uint64_t event, uint64_t stream)'),
    cuEventDestroy: f('int cuEventDestroy_v2(uint64_t event)'),
  };
  return streamLib;
}

// cuStreamCreate / cuEventCreate flags
const CU_STREAM_NON_BLOCKING = 1;
const CU_EVENT_DISABLE_TIMING = 2;

/** libnccl.so.2 under the usual Python package folders (nvidia-nccl-cu12/13 wheels). */
function pipNccl(): string[] {
  const out: string[] = [];
  for (const root of ['/usr/local/lib', '/usr/lib', '/opt/conda/lib']) {
    let entries: string[];
    try {
      entries = fs.readdirSync(root).filter((n) => /^python3\.\d+$/.test(n));
    } catch {
      continue;
    }
    for (const py of entries)
      for (const pk of ['dist-packages', 'site-packages']) {
        const f = path.join(root, py, pk, 'nvidia', 'nccl', 'lib', 'libnccl.so.2');
        if (fs.existsSync(f)) out.push(f);
      }
  }
  return out;
}

/** Load libnccl once; the error names what was looked for. */
export function loadNccl(): { raw: Raw; path: string; version: number } {
  if (lib) return lib;
  // $MOHAWK_NCCL: a path to the library; then the loader path, the CUDA folders, and the copy a
  // pip-installed PyTorch brings (site-packages/nvidia/nccl/lib)
  const names = [
    ...(process.env.MOHAWK_NCCL ? [process.env.MOHAWK_NCCL] : []),
    'libnccl.so.2',
    'libnccl.so',
    ...pipNccl(),
  ];
  const { lib: l, path } = loadCudaLibrary(names, 'NCCL (libnccl.so.2; or set MOHAWK_NCCL to its path)');
  const f = (decl: string): Fn => l.func(decl) as Fn;
  const raw: Raw = {
    ncclGetVersion: f('int ncclGetVersion(_Out_ int *version)'),
    ncclGetUniqueId: f('int ncclGetUniqueId(_Out_ uint8_t *uniqueId)'),
    ncclCommInitRank: l.func(
      'int ncclCommInitRank(_Out_ uint64_t *comm, int nranks, mohawk_ncclUniqueId commId, int rank)',
    ) as Fn,
    ncclCommDestroy: f('int ncclCommDestroy(uint64_t comm)'),
    ncclCommAbort: f('int ncclCommAbort(uint64_t comm)'),
    ncclCommGetAsyncError: f('int ncclCommGetAsyncError(uint64_t comm, _Out_ int *asyncError)'),
    ncclAllReduce: f(
      'int ncclAllReduce(uint64_t sendbuff, uint64_t recvbuff, size_t count, int datatype, int op, uint64_t comm, uint64_t stream)',
    ),
    ncclReduceScatter: f(
      'int ncclReduceScatter(uint64_t sendbuff, uint64_t recvbuff, size_t recvcount, int datatype, int op, uint64_t comm, uint64_t stream)',
    ),
    ncclAllGather: f(
      'int ncclAllGather(uint64_t sendbuff, uint64_t recvbuff, size_t sendcount, int datatype, uint64_t comm, uint64_t stream)',
    ),
    ncclBroadcast: f(
      'int ncclBroadcast(uint64_t sendbuff, uint64_t recvbuff, size_t count, int datatype, int root, uint64_t comm, uint64_t stream)',
    ),
    ncclGroupStart: f('int ncclGroupStart()'),
    ncclGroupEnd: f('int ncclGroupEnd()'),
    ncclGetErrorString: l.func('const char *ncclGetErrorString(int result)') as (rc: number) => string,
  };
  const out = [0];
  const rc = raw.ncclGetVersion(out);
  if (rc !== NCCL_SUCCESS) throw new CudaError(`nccl: ncclGetVersion failed (${rc})`);
  lib = { raw, path, version: out[0] };
  return lib;
}

/** A fresh ncclUniqueId (rank 0 makes it; the others get it through the rendezvous). */
export function ncclUniqueId(): Uint8Array {
  const { raw } = loadNccl();
  const id = new Uint8Array(NCCL_UNIQUE_ID_BYTES);
  const rc = raw.ncclGetUniqueId(id);
  if (rc !== NCCL_SUCCESS) throw new CudaError(`nccl: ncclGetUniqueId: ${raw.ncclGetErrorString(rc)}`);
  return id;
}

/** "2.21.5" from NCCL's integer version (major*10000 + minor*100 + patch since 2.9). */
export function ncclVersionString(v: number): string {
  return v >= 10000
    ? `${Math.floor(v / 10000)}.${Math.floor(v / 100) % 100}.${v % 100}`
    : `${Math.floor(v / 1000)}.${Math.floor(v / 100) % 10}.${v % 100}`;
}

export class NcclCollective implements Collective {
  readonly kind = 'nccl';
  readonly rank: number;
  readonly worldSize: number;
  readonly version: string;
  private readonly raw: Raw;
  private comm: number;
  /** the backend's stream (kernels) */
  private readonly compute: number;
  /** where the collectives run: a stream of their own, or `compute` with MOHAWK_NCCL_OVERLAP=0 */
  readonly stream: number;
  private readonly streams: StreamRaw | null;
  /** recorded on the compute stream before each collective */
  private readonly before: number = 0;
  /** events recorded after collectives, free for reuse */
  private readonly spare: number[] = [];
  private readonly events: number[] = [];

  /**
   * The communicator of `group` on `backend`'s device: rank 0 made `id` (ncclUniqueId()) and
   * passed it as the group's blob; every rank calls this with `group.blob`.
   */
  constructor(
    private readonly backend: CudaBackend,
    readonly group: ProcessGroup,
    id: Uint8Array = group.blob,
  ) {
    const l = loadNccl();
    this.raw = l.raw;
    this.version = ncclVersionString(l.version);
    this.rank = group.rank;
    this.worldSize = group.worldSize;
    this.compute = backend.driver.stream;
    this.streams = process.env.MOHAWK_NCCL_OVERLAP === '0' ? null : streamCalls();
    if (this.streams) {
      const out = [0];
      this.cu('cuStreamCreate', this.streams.cuStreamCreate(out, CU_STREAM_NON_BLOCKING));
      this.stream = Number(out[0]);
      this.before = this.newEvent();
    } else this.stream = this.compute;
    if (id.length !== NCCL_UNIQUE_ID_BYTES)
      throw new CudaError(`nccl: the unique id has ${id.length} bytes, expected ${NCCL_UNIQUE_ID_BYTES}`);
    const out = [0];
    this.check(
      'ncclCommInitRank',
      this.raw.ncclCommInitRank(out, this.worldSize, { internal: id }, this.rank),
    );
    this.comm = Number(out[0]);
  }

  private cu(call: string, rc: number): void {
    this.backend.driver.check(call, rc);
  }

  private newEvent(): number {
    const out = [0];
    this.cu('cuEventCreate', this.streams!.cuEventCreate(out, CU_EVENT_DISABLE_TIMING));
    const e = Number(out[0]);
    this.events.push(e);
    return e;
  }

  /** the communication stream waits for the work queued so far on the compute stream */
  private enter(): void {
    const s = this.streams;
    if (!s) return;
    this.cu('cuEventRecord', s.cuEventRecord(this.before, this.compute));
    this.cu('cuStreamWaitEvent', s.cuStreamWaitEvent(this.stream, this.before, 0));
  }

  /** an event after the collectives queued so far on the communication stream */
  private leave(): number {
    const s = this.streams;
    if (!s) return 0;
    const e = this.spare.pop() ?? this.newEvent();
    this.cu('cuEventRecord', s.cuEventRecord(e, this.stream));
    return e;
  }

  /** the compute stream waits for event e (from leave); e is free again afterwards */
  private join(e: number): void {
    const s = this.streams;
    if (!s) return;
    this.cu('cuStreamWaitEvent', s.cuStreamWaitEvent(this.compute, e, 0));
    this.spare.push(e);
  }

  private check(what: string, rc: number): void {
    if (rc === NCCL_SUCCESS || rc === NCCL_IN_PROGRESS) return;
    throw new CudaError(`nccl: rank ${this.rank}: ${what}: ${this.raw.ncclGetErrorString(rc)} (${rc})`);
  }

  /** Throw when the communicator reports an asynchronous error (a peer failed, a network error). */
  checkAsync(): void {
    const out = [0];
    this.check('ncclCommGetAsyncError', this.raw.ncclCommGetAsyncError(this.comm, out));
    if (out[0] !== NCCL_SUCCESS && out[0] !== NCCL_IN_PROGRESS)
      throw new CudaError(
        `nccl: rank ${this.rank}: asynchronous error: ${this.raw.ncclGetErrorString(out[0])} (${out[0]})`,
      );
  }

  private dt(b: DeviceBuffer, what: string): number {
    const d = NCCL_DTYPE[b.dtype];
    if (d === undefined) throw new CudaError(`nccl: ${what}: dtype ${b.dtype} is not supported`);
    return d;
  }

  private ptr(b: DeviceBuffer): number {
    return (b as CudaBuffer).ptr;
  }

  allReduce(x: DeviceBuffer, op: ReduceKind): void {
    this.join(this.allReduceQueued(x, op));
  }

  allReduceAsync(x: DeviceBuffer, op: ReduceKind): PendingCollective {
    return this.pending(this.allReduceQueued(x, op));
  }

  allReduceManyAsync(xs: DeviceBuffer[], op: ReduceKind): PendingCollective {
    this.enter();
    this.check('ncclGroupStart', this.raw.ncclGroupStart());
    try {
      for (const x of xs) {
        const p = this.ptr(x);
        this.check(
          'ncclAllReduce',
          this.raw.ncclAllReduce(
            p,
            p,
            x.length,
            this.dt(x, 'allReduceMany'),
            op === 'avg' ? NCCL_AVG : NCCL_SUM,
            this.comm,
            this.stream,
          ),
        );
      }
    } finally {
      this.check('ncclGroupEnd', this.raw.ncclGroupEnd());
    }
    return this.pending(this.leave());
  }

  reduceScatterAsync(x: DeviceBuffer, out: DeviceBuffer, op: ReduceKind): PendingCollective {
    return this.pending(this.reduceScatterQueued(x, out, op));
  }

  private pending(e: number): PendingCollective {
    let done = false;
    return {
      wait: () => {
        if (done) return;
        done = true;
        this.join(e);
      },
    };
  }

  private allReduceQueued(x: DeviceBuffer, op: ReduceKind): number {
    const p = this.ptr(x);
    this.enter();
    this.check(
      'ncclAllReduce',
      this.raw.ncclAllReduce(
        p,
        p,
        x.length,
        this.dt(x, 'allReduce'),
        op === 'avg' ? NCCL_AVG : NCCL_SUM,
        this.comm,
        this.stream,
      ),
    );
    return this.leave();
  }

  reduceScatter(x: DeviceBuffer, out: DeviceBuffer, op: ReduceKind): void {
    this.join(this.reduceScatterQueued(x, out, op));
  }

  private reduceScatterQueued(x: DeviceBuffer, out: DeviceBuffer, op: ReduceKind): number {
    checkCollectiveSizes('nccl', 'reduceScatter', x, out, this.worldSize);
    this.enter();
    this.check(
      'ncclReduceScatter',
      this.raw.ncclReduceScatter(
        this.ptr(x),
        this.ptr(out),
        out.length,
        this.dt(x, 'reduceScatter'),
        op === 'avg' ? NCCL_AVG : NCCL_SUM,
        this.comm,
        this.stream,
      ),
    );
    return this.leave();
  }

  allGather(x: DeviceBuffer, out: DeviceBuffer): void {
    checkCollectiveSizes('nccl', 'allGather', x, out, this.worldSize);
    this.enter();
    this.check(
      'ncclAllGather',
      this.raw.ncclAllGather(
        this.ptr(x),
        this.ptr(out),
        x.length,
        this.dt(x, 'allGather'),
        this.comm,
        this.stream,
      ),
    );
    this.join(this.leave());
  }

  broadcast(x: DeviceBuffer, root: number): void {
    const p = this.ptr(x);
    this.enter();
    this.check(
      'ncclBroadcast',
      this.raw.ncclBroadcast(p, p, x.length, this.dt(x, 'broadcast'), root, this.comm, this.stream),
    );
    this.join(this.leave());
  }

  /** Every rank's queued work done (a one-element all-reduce, then the stream). */
  barrier(): void {
    const b = this.backend.alloc('f32', 1);
    try {
      this.backend.fill(b, 0);
      this.allReduce(b, 'sum');
      this.backend.synchronize();
      this.checkAsync();
    } finally {
      this.backend.free(b);
    }
  }

  close(): void {
    if (!this.comm) return;
    this.backend.synchronize();
    const s = this.streams;
    if (s) this.cu('cuStreamSynchronize', s.cuStreamSynchronize(this.stream));
    this.check('ncclCommDestroy', this.raw.ncclCommDestroy(this.comm));
    this.comm = 0;
    if (s) {
      for (const e of this.events.splice(0)) this.cu('cuEventDestroy', s.cuEventDestroy(e));
      this.cu('cuStreamDestroy', s.cuStreamDestroy(this.stream));
    }
    this.group.close();
  }
}
