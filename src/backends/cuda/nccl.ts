// NCCL (libnccl.so.2) through koffi: one communicator per process from a unique id that rank 0
// makes and the process group hands out at the rendezvous, and the collectives queued on the
// backend's stream (the same stream as every kernel, so they are ordered with the compute).
// Values from nccl.h (NCCL 2.x): ncclDataType_t, ncclRedOp_t, ncclResult_t.

import fs from 'node:fs';
import path from 'node:path';
import koffi from 'koffi';
import type { DeviceBuffer, DType } from '../backend.js';
import { checkCollectiveSizes, type Collective, type ReduceKind } from '../collective.js';
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
  ncclGetErrorString: (rc: number) => string;
}

let lib: { raw: Raw; path: string; version: number } | null = null;

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
  private readonly stream: number;

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
    this.stream = backend.driver.stream;
    if (id.length !== NCCL_UNIQUE_ID_BYTES)
      throw new CudaError(`nccl: the unique id has ${id.length} bytes, expected ${NCCL_UNIQUE_ID_BYTES}`);
    const out = [0];
    this.check(
      'ncclCommInitRank',
      this.raw.ncclCommInitRank(out, this.worldSize, { internal: id }, this.rank),
    );
    this.comm = Number(out[0]);
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
    const p = this.ptr(x);
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
  }

  reduceScatter(x: DeviceBuffer, out: DeviceBuffer, op: ReduceKind): void {
    checkCollectiveSizes('nccl', 'reduceScatter', x, out, this.worldSize);
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
  }

  allGather(x: DeviceBuffer, out: DeviceBuffer): void {
    checkCollectiveSizes('nccl', 'allGather', x, out, this.worldSize);
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
  }

  broadcast(x: DeviceBuffer, root: number): void {
    const p = this.ptr(x);
    this.check(
      'ncclBroadcast',
      this.raw.ncclBroadcast(p, p, x.length, this.dt(x, 'broadcast'), root, this.comm, this.stream),
    );
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
    this.check('ncclCommDestroy', this.raw.ncclCommDestroy(this.comm));
    this.comm = 0;
    this.group.close();
  }
}
