// safetensors: read tensor by tensor at their offsets (positioned reads on a file descriptor, never
// a whole-file buffer), validate as strictly as the reference `safetensors` library, write
// streamed and atomically, sharded through model.safetensors.index.json.
//
// Format: 8-byte little-endian header length N, N bytes of JSON
// {name: {dtype, shape, data_offsets: [begin, end]}, "__metadata__": {str: str}}, then the data.
// The tensors, in offset order, cover the data region exactly: no gaps, no overlaps, nothing after.

import fs from 'node:fs';
import path from 'node:path';
import type { DType, HostArray } from '../backends/backend.js';
import { bf16ToF32, f16ToF32, f32ToBf16, f32ToF16 } from '../backends/dtype.js';
import { empty, type Tensor } from '../tensor/index.js';
import { writeFileAtomic } from '../util/fs.js';

export type SafeDType =
  | 'BOOL'
  | 'U8'
  | 'I8'
  | 'F8_E4M3'
  | 'F8_E5M2'
  | 'U16'
  | 'I16'
  | 'F16'
  | 'BF16'
  | 'U32'
  | 'I32'
  | 'F32'
  | 'U64'
  | 'I64'
  | 'F64';

export const SAFE_DTYPE_BYTES: Record<SafeDType, number> = {
  BOOL: 1,
  U8: 1,
  I8: 1,
  F8_E4M3: 1,
  F8_E5M2: 1,
  U16: 2,
  I16: 2,
  F16: 2,
  BF16: 2,
  U32: 4,
  I32: 4,
  F32: 4,
  U64: 8,
  I64: 8,
  F64: 8,
};

/** the float dtypes a model's weights may come in */
export const FLOAT_DTYPES: ReadonlySet<SafeDType> = new Set(['F16', 'BF16', 'F32', 'F64']);

/** The reference library's limit on the header (100 MB). */
export const MAX_HEADER_BYTES = 100_000_000;

/**
 * One tensor of a checkpoint file, located but not read. Safetensors tensors are dense; PyTorch
 * tensors may carry element strides over their storage.
 */
export interface SafeEntry {
  name: string;
  dtype: SafeDType;
  shape: number[];
  /** the file it is read from (named in errors) */
  file: string;
  /** absolute byte offset in the file (or `buffer`) of element [0, ..., 0] */
  offset: number;
  /** bytes of the dense tensor (numel x dtype size) */
  byteLength: number;
  /** element strides over the storage; absent for row-major dense data */
  strides?: number[];
  /** the whole file in memory, when parsed from a buffer (tests, fuzzing) */
  buffer?: Uint8Array;
}

export interface SafeFile {
  path: string;
  metadata: Record<string, string>;
  /** tensors in the order of their data offsets */
  entries: Map<string, SafeEntry>;
  /** where the data region starts (8 + header length) */
  dataStart: number;
}

export class SafetensorsError extends Error {}

function bad(file: string, msg: string): never {
  throw new SafetensorsError(`${file}: ${msg}`);
}

export function numelOf(shape: readonly number[]): number {
  let n = 1;
  for (const d of shape) n *= d;
  return n;
}

/**
 * Validate a header (the JSON text after the 8-byte length) of a file of `fileSize` bytes whose
 * header length field says `headerLen`. Checks, as the reference library does: UTF-8 JSON object
 * starting with '{'; known dtypes; shapes of non-negative integers whose element count times the
 * dtype size equals the data_offsets span; offsets that, sorted, start at 0, follow each other
 * with no gap or overlap, and end exactly at the end of the file.
 */
export function parseHeader(
  headerBytes: Uint8Array,
  headerLen: number,
  fileSize: number,
  file: string,
): SafeFile {
  if (headerBytes.length === 0 || headerBytes[0] !== 0x7b)
    bad(file, `header does not start with '{' (header length ${headerLen} may be wrong)`);
  let header: unknown;
  try {
    header = JSON.parse(new TextDecoder('utf-8', { fatal: true }).decode(headerBytes));
  } catch (e) {
    bad(file, `header is not valid UTF-8 JSON (${(e as Error).message})`);
  }
  if (!header || typeof header !== 'object' || Array.isArray(header))
    bad(file, 'header is not a JSON object');
  const dataStart = 8 + headerLen;
  const dataLen = fileSize - dataStart;
  const metadata: Record<string, string> = {};
  const found: SafeEntry[] = [];
  const spans = new Map<SafeEntry, [number, number]>();
  for (const [name, raw] of Object.entries(header as Record<string, unknown>)) {
    if (name === '__metadata__') {
      if (!raw || typeof raw !== 'object' || Array.isArray(raw))
        bad(file, '__metadata__ must be an object of strings');
      for (const [k, v] of Object.entries(raw as Record<string, unknown>)) {
        if (typeof v !== 'string') bad(file, `__metadata__.${k} must be a string`);
        metadata[k] = v;
      }
      continue;
    }
    const info = raw as { dtype?: unknown; shape?: unknown; data_offsets?: unknown };
    if (!info || typeof info !== 'object' || Array.isArray(info))
      bad(file, `tensor ${name}: entry is not an object`);
    const dtype = info.dtype as SafeDType;
    if (typeof dtype !== 'string' || !Object.hasOwn(SAFE_DTYPE_BYTES, dtype))
      bad(file, `tensor ${name}: unknown dtype ${JSON.stringify(info.dtype)}`);
    const shape = info.shape;
    if (!Array.isArray(shape) || !shape.every((d) => Number.isSafeInteger(d) && d >= 0)) {
      bad(file, `tensor ${name}: shape ${JSON.stringify(shape)} is not a list of non-negative integers`);
    }
    const offs = info.data_offsets;
    if (!Array.isArray(offs) || offs.length !== 2 || !offs.every((d) => Number.isSafeInteger(d) && d >= 0)) {
      bad(file, `tensor ${name}: data_offsets ${JSON.stringify(offs)} must be two non-negative integers`);
    }
    const [begin, end] = offs as [number, number];
    if (begin > end) bad(file, `tensor ${name}: data_offsets [${begin}, ${end}] are reversed`);
    if (end > dataLen)
      bad(
        file,
        `tensor ${name}: data_offsets [${begin}, ${end}] run past the data region (${dataLen} bytes)`,
      );
    const expected = numelOf(shape as number[]) * SAFE_DTYPE_BYTES[dtype];
    if (expected !== end - begin) {
      bad(
        file,
        `tensor ${name}: shape [${(shape as number[]).join(', ')}] x ${dtype} needs ${expected} bytes, data_offsets give ${end - begin}`,
      );
    }
    const e: SafeEntry = {
      name,
      dtype,
      shape: shape as number[],
      file,
      offset: dataStart + begin,
      byteLength: end - begin,
    };
    found.push(e);
    spans.set(e, [begin, end]);
  }
  found.sort((a, b) => spans.get(a)![0] - spans.get(b)![0] || spans.get(a)![1] - spans.get(b)![1]);
  let at = 0;
  let prev: SafeEntry | null = null;
  for (const e of found) {
    const [begin, end] = spans.get(e)!;
    if (begin < at) bad(file, `tensors ${prev!.name} and ${e.name} overlap in the data region`);
    if (begin > at)
      bad(
        file,
        `tensor ${e.name}: data_offsets start at ${begin}, but the previous tensor ends at ${at} (a gap in the data region)`,
      );
    at = end;
    prev = e;
  }
  if (at !== dataLen)
    bad(
      file,
      `the tensors cover ${at} bytes of the data region, but it holds ${dataLen} (header length ${headerLen} or data_offsets are wrong)`,
    );
  return { path: file, metadata, entries: new Map(found.map((e) => [e.name, e])), dataStart };
}

/** Parse and validate a whole safetensors file held in memory; `file` names it in errors. */
export function parseSafetensors(buf: Uint8Array, file: string): SafeFile {
  if (buf.length < 8) bad(file, `file is ${buf.length} bytes, shorter than the 8-byte header length`);
  const dv = new DataView(buf.buffer, buf.byteOffset, buf.byteLength);
  const headerLen = checkHeaderLength(dv.getBigUint64(0, true), buf.length, file);
  const sf = parseHeader(buf.subarray(8, 8 + headerLen), headerLen, buf.length, file);
  for (const e of sf.entries.values()) e.buffer = buf;
  return sf;
}

function checkHeaderLength(raw: bigint, fileSize: number, file: string): number {
  if (raw > BigInt(fileSize - 8))
    bad(file, `header length ${raw} runs past the end of the file (${fileSize} bytes)`);
  const n = Number(raw);
  if (n > MAX_HEADER_BYTES) bad(file, `header length ${n} is larger than the limit of ${MAX_HEADER_BYTES}`);
  return n;
}

function openFile(file: string): number {
  try {
    return fs.openSync(file, 'r');
  } catch (e) {
    throw new SafetensorsError(
      `${file}: cannot read (${(e as NodeJS.ErrnoException).code ?? (e as Error).message})`,
    );
  }
}

/** Read exactly `into.length` bytes at `position` (positioned reads, any file size). */
export function readAt(fd: number, into: Uint8Array, position: number, file: string): void {
  const CHUNK = 1 << 30;
  let done = 0;
  while (done < into.length) {
    const n = fs.readSync(fd, into, done, Math.min(CHUNK, into.length - done), position + done);
    if (n === 0) bad(file, `unexpected end of file at byte ${position + done}`);
    done += n;
  }
}

/** Read and validate a safetensors file's header; no tensor data is read. */
export function readSafetensors(file: string): SafeFile {
  const fd = openFile(file);
  try {
    const size = fs.fstatSync(fd).size;
    if (size < 8) bad(file, `file is ${size} bytes, shorter than the 8-byte header length`);
    const lenBytes = new Uint8Array(8);
    readAt(fd, lenBytes, 0, file);
    const headerLen = checkHeaderLength(new DataView(lenBytes.buffer).getBigUint64(0, true), size, file);
    const header = new Uint8Array(headerLen);
    readAt(fd, header, 8, file);
    return parseHeader(header, headerLen, size, file);
  } finally {
    fs.closeSync(fd);
  }
}

// ---- reading tensor data ---------------------------------------------------------------------

/** elements converted per step when streaming a tensor into its device buffer (64 MB of f32) */
const CHUNK_ELEMS = 1 << 24;

/** the bytes of elements [start, start + count) of a dense entry, read from its file */
function denseBytes(e: SafeEntry, start: number, count: number, fd: number | null): Uint8Array {
  const w = SAFE_DTYPE_BYTES[e.dtype];
  const out = new Uint8Array(count * w);
  const pos = e.offset + start * w;
  if (e.buffer) out.set(e.buffer.subarray(pos, pos + out.length));
  else readAt(fd!, out, pos, e.file);
  return out;
}

/** gather a strided entry into row-major bytes (the storage span it touches is read once) */
function gatherBytes(e: SafeEntry, fd: number | null): Uint8Array {
  const w = SAFE_DTYPE_BYTES[e.dtype];
  const strides = e.strides!;
  let span = 1;
  for (let i = 0; i < e.shape.length; i++) if (e.shape[i] > 0) span += (e.shape[i] - 1) * strides[i];
  const n = numelOf(e.shape);
  if (n === 0) return new Uint8Array(0);
  const raw = new Uint8Array(span * w);
  if (e.buffer) raw.set(e.buffer.subarray(e.offset, e.offset + raw.length));
  else readAt(fd!, raw, e.offset, e.file);
  const out = new Uint8Array(n * w);
  const idx = new Array<number>(e.shape.length).fill(0);
  let src = 0;
  for (let k = 0; k < n; k++) {
    out.set(raw.subarray(src * w, src * w + w), k * w);
    for (let d = e.shape.length - 1; d >= 0; d--) {
      idx[d]++;
      src += strides[d];
      if (idx[d] < e.shape[d]) break;
      src -= idx[d] * strides[d];
      idx[d] = 0;
    }
  }
  return out;
}

function isDense(e: SafeEntry): boolean {
  if (!e.strides) return true;
  let acc = 1;
  for (let i = e.shape.length - 1; i >= 0; i--) {
    if (e.shape[i] !== 1 && e.strides[i] !== acc) return false;
    acc *= e.shape[i];
  }
  return true;
}

function withFd<T>(e: SafeEntry, fn: (fd: number | null) => T): T {
  if (e.buffer) return fn(null);
  const fd = openFile(e.file);
  try {
    return fn(fd);
  } finally {
    fs.closeSync(fd);
  }
}

/** The entry's bytes, row-major (strided PyTorch tensors are gathered). */
export function entryBytes(e: SafeEntry): Uint8Array {
  return withFd(e, (fd) => (isDense(e) ? denseBytes(e, 0, numelOf(e.shape), fd) : gatherBytes(e, fd)));
}

const INT_ARRAYS = {
  U8: Uint8Array,
  I8: Int8Array,
  BOOL: Uint8Array,
  I16: Int16Array,
  U16: Uint16Array,
  I32: Int32Array,
  U32: Uint32Array,
  I64: BigInt64Array,
  U64: BigUint64Array,
} as const;

/** the default dtype an entry loads as: f32 for floats (f64 for F64), i32 for integers */
export function defaultDType(dtype: SafeDType): DType {
  if (dtype === 'F64') return 'f64';
  return FLOAT_DTYPES.has(dtype) ? 'f32' : 'i32';
}

/** Convert bytes (a fresh, aligned copy) of `src` dtype to a host array of `dst`. */
function convert(bytes: Uint8Array, src: SafeDType, dst: DType, e: SafeEntry): HostArray {
  const buf = bytes.buffer as ArrayBuffer;
  const off = bytes.byteOffset;
  const n = bytes.byteLength / SAFE_DTYPE_BYTES[src];
  const float = FLOAT_DTYPES.has(src);
  const wantFloat = dst !== 'i32';
  if (float !== wantFloat || src.startsWith('F8'))
    bad(
      e.file,
      `tensor ${e.name}: dtype ${src} cannot be loaded as ${dst} (expected ${wantFloat ? 'a floating-point dtype (F32, BF16, F16, F64)' : 'an integer dtype'})`,
    );
  if (!float) {
    const Ctor = INT_ARRAYS[src as keyof typeof INT_ARRAYS];
    const raw = new Ctor(buf, off, n);
    const out = new Int32Array(n);
    for (let i = 0; i < n; i++) {
      const v = raw[i];
      const x = typeof v === 'bigint' ? Number(v) : v;
      if (x > 2147483647 || x < -2147483648)
        bad(e.file, `tensor ${e.name}: ${src} value ${v} does not fit in i32`);
      out[i] = x;
    }
    return out;
  }
  // the same 16-bit dtype: the bits as they are (bf16 stays bf16, no f32 detour)
  if ((src === 'BF16' && dst === 'bf16') || (src === 'F16' && dst === 'f16'))
    return new Uint16Array(buf, off, n);
  if (src === 'F32' && dst === 'f32') return new Float32Array(buf, off, n);
  if (src === 'F64' && dst === 'f64') return new Float64Array(buf, off, n);
  let get: (i: number) => number;
  if (src === 'F32') {
    const a = new Float32Array(buf, off, n);
    get = (i) => a[i];
  } else if (src === 'F64') {
    const a = new Float64Array(buf, off, n);
    get = (i) => a[i];
  } else {
    const a = new Uint16Array(buf, off, n);
    const widen = src === 'BF16' ? bf16ToF32 : f16ToF32;
    get = (i) => widen(a[i]);
  }
  if (dst === 'f32' || dst === 'f64') {
    const out = dst === 'f32' ? new Float32Array(n) : new Float64Array(n);
    for (let i = 0; i < n; i++) out[i] = get(i);
    return out;
  }
  const narrow = dst === 'bf16' ? f32ToBf16 : f32ToF16;
  const out = new Uint16Array(n);
  for (let i = 0; i < n; i++) out[i] = narrow(get(i));
  return out;
}

/**
 * Stream an entry into a tensor of the same shape, converting to the tensor's dtype in chunks
 * (peak host memory: one chunk, not the whole tensor). Integer data into a float tensor, or the
 * reverse, is refused naming the file and the tensor.
 */
export function readEntryInto(e: SafeEntry, t: Tensor): void {
  const n = numelOf(e.shape);
  if (n !== t.size) bad(e.file, `tensor ${e.name}: ${n} elements, the destination holds ${t.size}`);
  withFd(e, (fd) => {
    if (!isDense(e)) {
      t.backend.write(t.buffer, convert(gatherBytes(e, fd), e.dtype, t.dtype, e), 0);
      return;
    }
    for (let start = 0; start < n; start += CHUNK_ELEMS) {
      const count = Math.min(CHUNK_ELEMS, n - start);
      t.backend.write(t.buffer, convert(denseBytes(e, start, count, fd), e.dtype, t.dtype, e), start);
    }
  });
}

/** The first `n` values of an entry, row-major, as numbers (only those bytes are read when dense). */
export function entryHead(e: SafeEntry, n: number): number[] {
  const count = Math.min(n, numelOf(e.shape));
  const bytes = withFd(e, (fd) =>
    isDense(e)
      ? denseBytes(e, 0, count, fd)
      : gatherBytes(e, fd).subarray(0, count * SAFE_DTYPE_BYTES[e.dtype]),
  );
  if (e.dtype.startsWith('F8')) bad(e.file, `tensor ${e.name}: ${e.dtype} values cannot be shown`);
  const aligned = bytes.byteOffset === 0 ? bytes : bytes.slice();
  return Array.from(convert(aligned, e.dtype, defaultDType(e.dtype), e));
}

/** The entry's values as numbers (floats widened to Float32Array, F64 kept, integers as Int32Array). */
export function entryValues(e: SafeEntry): Float32Array | Float64Array | Int32Array {
  return convert(entryBytes(e), e.dtype, defaultDType(e.dtype), e) as
    Float32Array | Float64Array | Int32Array;
}

/** A tensor holding the entry (floats as f32 unless `dtype` says otherwise, integers as i32). */
export function entryToTensor(e: SafeEntry, dtype?: DType): Tensor {
  const t = empty(e.shape, dtype ?? defaultDType(e.dtype));
  try {
    readEntryInto(e, t);
  } catch (err) {
    t.dispose();
    throw err;
  }
  return t;
}

// ---- checkpoints of several files ------------------------------------------------------------

/** The safetensors files of a checkpoint: a file, or a directory's single or sharded weights. */
export function checkpointFiles(fileOrDir: string): string[] {
  return readCheckpoint(fileOrDir).files;
}

function readIndex(indexFile: string): Record<string, string> {
  let index: { weight_map?: unknown };
  try {
    index = JSON.parse(fs.readFileSync(indexFile, 'utf8'));
  } catch (e) {
    throw new SafetensorsError(`${indexFile}: not valid JSON (${(e as Error).message})`);
  }
  const map = index?.weight_map;
  if (!map || typeof map !== 'object' || Array.isArray(map))
    throw new SafetensorsError(`${indexFile}: weight_map missing`);
  for (const [name, f] of Object.entries(map)) {
    if (typeof f !== 'string' || f === '' || f.includes('/') || f.includes('\\') || f.startsWith('.'))
      throw new SafetensorsError(`${indexFile}: tensor ${name}: bad shard name ${JSON.stringify(f)}`);
  }
  return map as Record<string, string>;
}

export interface CheckpointTensors {
  entries: Map<string, SafeEntry>;
  /** the weight files read */
  files: string[];
  /** the file to name in errors about the whole checkpoint (the single file or the index) */
  source: string;
  metadata: Record<string, string>;
}

/**
 * The tensors of a sharded checkpoint through its index ({"weight_map": {name: shard}}), each
 * shard located with `readFile`: every tensor in exactly the shard the index names.
 */
export function readIndexed(
  dir: string,
  indexFile: string,
  readFile: (file: string) => { entries: Map<string, SafeEntry>; metadata?: Record<string, string> },
): CheckpointTensors {
  const map = readIndex(indexFile);
  const shards = [...new Set(Object.values(map))].sort();
  const entries = new Map<string, SafeEntry>();
  const files = shards.map((f) => path.join(dir, f));
  let metadata: Record<string, string> = {};
  for (const f of files) {
    if (!fs.existsSync(f)) throw new SafetensorsError(`${indexFile}: shard ${path.basename(f)} not found`);
    const sf = readFile(f);
    metadata = { ...sf.metadata, ...metadata };
    for (const [name, e] of sf.entries) {
      if (entries.has(name)) throw new SafetensorsError(`${f}: tensor ${name} appears in two shards`);
      if (map[name] !== path.basename(f))
        throw new SafetensorsError(
          `${indexFile}: tensor ${name} is in shard ${path.basename(f)}, the index names ${map[name] ?? 'no shard'}`,
        );
      entries.set(name, e);
    }
  }
  for (const [name, f] of Object.entries(map))
    if (!entries.has(name)) throw new SafetensorsError(`${indexFile}: tensor ${name} is not in shard ${f}`);
  return { entries, files, source: indexFile, metadata };
}

/**
 * The tensors of a safetensors checkpoint, located (headers only): a file, or a directory with
 * model.safetensors or model.safetensors.index.json and its shards.
 */
export function readCheckpoint(fileOrDir: string): CheckpointTensors {
  let stat: fs.Stats;
  try {
    stat = fs.statSync(fileOrDir);
  } catch {
    throw new SafetensorsError(`${fileOrDir}: no such file or directory`);
  }
  if (!stat.isDirectory()) {
    const sf = readSafetensors(fileOrDir);
    return { entries: sf.entries, files: [fileOrDir], source: fileOrDir, metadata: sf.metadata };
  }
  const single = path.join(fileOrDir, 'model.safetensors');
  if (fs.existsSync(single)) return readCheckpoint(single);
  const indexFile = path.join(fileOrDir, 'model.safetensors.index.json');
  if (!fs.existsSync(indexFile))
    throw new SafetensorsError(
      `${fileOrDir}: neither model.safetensors nor model.safetensors.index.json found`,
    );
  return readIndexed(fileOrDir, indexFile, readSafetensors);
}

/** Load every tensor of a file (or a directory with model.safetensors[.index.json]). */
export function loadTensors(fileOrDir: string, dtype?: DType): Map<string, Tensor> {
  const out = new Map<string, Tensor>();
  try {
    for (const [name, e] of readCheckpoint(fileOrDir).entries) out.set(name, entryToTensor(e, dtype));
  } catch (err) {
    for (const t of out.values()) t.dispose();
    throw err;
  }
  return out;
}

// ---- writing --------------------------------------------------------------------------------

export interface WriteEntry {
  dtype: SafeDType;
  shape: number[];
  bytes: Uint8Array;
}

/** what can be written: a tensor (read from its device), raw bytes, or a tensor of another file */
export type WriteSource = Tensor | WriteEntry | SafeEntry;

export const DTYPE_TO_SAFE: Record<DType, SafeDType> = {
  f32: 'F32',
  f64: 'F64',
  i32: 'I32',
  bf16: 'BF16',
  f16: 'F16',
};

const SAFE_TO_DTYPE: Partial<Record<SafeDType, DType>> = {
  F32: 'f32',
  F64: 'f64',
  I32: 'i32',
  BF16: 'bf16',
  F16: 'f16',
};

/** the float dtypes a saved model may be converted to */
export type SaveDType = 'f32' | 'bf16' | 'f16';

export interface WriteOptions {
  metadata?: Record<string, string>;
  /** convert floating-point tensors to this dtype (integers are written as they are) */
  dtype?: SaveDType;
}

function isTensorSource(s: WriteSource): s is Tensor {
  return typeof (s as Tensor).read === 'function';
}

function sourceDType(s: WriteSource): SafeDType {
  return isTensorSource(s) ? DTYPE_TO_SAFE[s.dtype] : s.dtype;
}

function outDType(s: WriteSource, dtype?: SaveDType): SafeDType {
  const src = sourceDType(s);
  return dtype && FLOAT_DTYPES.has(src) ? DTYPE_TO_SAFE[dtype] : src;
}

/** bytes a source takes in the file */
function outBytes(s: WriteSource, dtype?: SaveDType): number {
  return numelOf(s.shape) * SAFE_DTYPE_BYTES[outDType(s, dtype)];
}

/** the source's bytes in the output dtype, a chunk at a time */
function* sourceChunks(name: string, s: WriteSource, out: SafeDType): Generator<Uint8Array> {
  const src = sourceDType(s);
  const w = SAFE_DTYPE_BYTES[src];
  const n = numelOf(s.shape);
  const at: SafeEntry = {
    name,
    dtype: src,
    shape: [...s.shape],
    file: 'memory',
    offset: 0,
    byteLength: n * w,
  };
  let whole: Uint8Array | null = null;
  if (isTensorSource(s)) {
    const h = s.read();
    whole = new Uint8Array(h.buffer, h.byteOffset, h.byteLength);
  } else if ('bytes' in s) {
    if (s.bytes.byteLength !== n * w)
      throw new SafetensorsError(
        `tensor ${name}: ${s.bytes.byteLength} bytes for shape [${s.shape.join(', ')}] x ${src}`,
      );
    whole = s.bytes;
  } else if (!isDense(s)) {
    whole = withFd(s, (fd) => gatherBytes(s, fd));
  }
  const file = isTensorSource(s) || 'bytes' in s ? null : s;
  const fd = file && !file.buffer && whole === null ? openFile(file.file) : null;
  try {
    for (let start = 0; start < n; start += CHUNK_ELEMS) {
      const count = Math.min(CHUNK_ELEMS, n - start);
      let bytes = whole
        ? whole.subarray(start * w, (start + count) * w)
        : denseBytes(file!, start, count, fd);
      if (out === src) {
        yield bytes;
        continue;
      }
      if (bytes.byteOffset % w !== 0) bytes = bytes.slice();
      const h = convert(bytes, src, SAFE_TO_DTYPE[out]!, at);
      yield new Uint8Array(h.buffer, h.byteOffset, h.byteLength);
    }
  } finally {
    if (fd !== null) fs.closeSync(fd);
  }
}

/** The header bytes (JSON padded with spaces to 8-byte alignment, as the reference writer does). */
function headerFor(
  names: string[],
  tensors: Map<string, WriteSource>,
  opts: WriteOptions,
): { header: Buffer; dataBytes: number } {
  const header: Record<string, unknown> = {};
  if (opts.metadata && Object.keys(opts.metadata).length) header.__metadata__ = opts.metadata;
  let off = 0;
  for (const n of names) {
    const s = tensors.get(n)!;
    const b = outBytes(s, opts.dtype);
    header[n] = { dtype: outDType(s, opts.dtype), shape: [...s.shape], data_offsets: [off, off + b] };
    off += b;
  }
  let json = JSON.stringify(header);
  while ((8 + Buffer.byteLength(json)) % 8 !== 0) json += ' ';
  const h = Buffer.from(json, 'utf8');
  const out = Buffer.alloc(8 + h.length);
  out.writeBigUInt64LE(BigInt(h.length), 0);
  h.copy(out, 8);
  return { header: out, dataBytes: off };
}

const ZEROS = new Uint8Array(1 << 20);

function isZero(b: Uint8Array): boolean {
  for (let at = 0; at < b.length; at += ZEROS.length) {
    const part = b.subarray(at, Math.min(b.length, at + ZEROS.length));
    if (Buffer.compare(part, ZEROS.subarray(0, part.length)) !== 0) return false;
  }
  return true;
}

function writeAll(fd: number, bytes: Uint8Array, position: number): void {
  let done = 0;
  while (done < bytes.length) done += fs.writeSync(fd, bytes, done, bytes.length - done, position + done);
}

/**
 * Write tensors to `file` (sorted by name), streamed a tensor chunk at a time into a temporary
 * file that is synced and renamed into place: a reader sees the old file or the new one, never
 * half of one. `metadata` defaults to {format: "pt"}, as the Hugging Face writers put it.
 */
export function writeSafetensors(
  file: string,
  tensors: Map<string, WriteSource>,
  metadata?: Record<string, string>,
  opts: Omit<WriteOptions, 'metadata'> = {},
): void {
  const o: WriteOptions = { ...opts, metadata: metadata ?? { format: 'pt' } };
  const names = [...tensors.keys()].sort();
  const { header, dataBytes } = headerFor(names, tensors, o);
  const tmp = `${file}.tmp-${process.pid}`;
  const fd = fs.openSync(tmp, 'w');
  try {
    writeAll(fd, header, 0);
    let pos = header.length;
    for (const n of names) {
      const s = tensors.get(n)!;
      for (const chunk of sourceChunks(n, s, outDType(s, o.dtype))) {
        // runs of zeros are skipped (the file is extended below): they stay holes, not disk blocks
        if (!isZero(chunk)) writeAll(fd, chunk, pos);
        pos += chunk.length;
      }
    }
    fs.ftruncateSync(fd, pos);
    if (pos !== header.length + dataBytes)
      throw new SafetensorsError(`${file}: wrote ${pos} bytes, expected ${header.length + dataBytes}`);
    fs.fsyncSync(fd);
  } catch (e) {
    fs.closeSync(fd);
    fs.rmSync(tmp, { force: true });
    throw e;
  }
  fs.closeSync(fd);
  fs.renameSync(tmp, file);
}

/** Serialize entries (sorted by name, 8-byte aligned header) to one buffer (small files, tests). */
export function serializeSafetensors(
  entries: Map<string, WriteSource>,
  metadata?: Record<string, string>,
): Uint8Array {
  const names = [...entries.keys()].sort();
  const { header, dataBytes } = headerFor(names, entries, { metadata });
  const out = new Uint8Array(header.length + dataBytes);
  out.set(header, 0);
  let pos = header.length;
  for (const n of names) {
    const s = entries.get(n)!;
    for (const chunk of sourceChunks(n, s, sourceDType(s))) {
      out.set(chunk, pos);
      pos += chunk.length;
    }
  }
  return out;
}

/** A tensor's bytes for writing (read from its device). */
export function tensorEntry(t: Tensor): WriteEntry {
  const raw = t.read();
  return {
    dtype: DTYPE_TO_SAFE[t.dtype],
    shape: [...t.shape],
    bytes: new Uint8Array(raw.buffer, raw.byteOffset, raw.byteLength),
  };
}

/** Parse a size: a number of bytes, or with a unit (5GB, 500MB, 2GiB, as Hugging Face writes them). */
export function parseSize(s: string | number): number {
  if (typeof s === 'number') return s;
  const m = /^\s*(\d+(?:\.\d+)?)\s*(|B|KB|MB|GB|TB|KIB|MIB|GIB|TIB)\s*$/i.exec(s);
  if (!m) throw new SafetensorsError(`size "${s}" is not a number of bytes or like 5GB, 500MB, 2GiB`);
  const unit = m[2].toUpperCase();
  const mult: Record<string, number> = {
    '': 1,
    B: 1,
    KB: 1e3,
    MB: 1e6,
    GB: 1e9,
    TB: 1e12,
    KIB: 2 ** 10,
    MIB: 2 ** 20,
    GIB: 2 ** 30,
    TIB: 2 ** 40,
  };
  const v = Math.floor(Number(m[1]) * mult[unit]);
  if (!(v > 0)) throw new SafetensorsError(`size "${s}" must be positive`);
  return v;
}

export const DEFAULT_SHARD_SIZE = 5e9;

export interface SaveTensorsOptions extends WriteOptions {
  /** the largest shard in bytes (default 5GB, as Hugging Face); a bigger tensor gets a shard of its own */
  shardSize?: number;
}

/**
 * Save a model's tensors into `dir` as Hugging Face does: model.safetensors when they fit in one
 * shard, else model-0000K-of-0000N.safetensors with model.safetensors.index.json
 * ({"metadata": {"total_size"}, "weight_map"}). Every file is written atomically, the index
 * last; weight files of an earlier save that the new one does not use are removed.
 */
export function saveTensors(
  dir: string,
  tensors: Map<string, WriteSource>,
  opts: SaveTensorsOptions = {},
): string[] {
  const max = opts.shardSize ?? DEFAULT_SHARD_SIZE;
  const metadata = opts.metadata ?? { format: 'pt' };
  const shards: Map<string, WriteSource>[] = [];
  let cur = new Map<string, WriteSource>();
  let curBytes = 0;
  let total = 0;
  for (const [n, s] of tensors) {
    const b = outBytes(s, opts.dtype);
    total += b;
    if (cur.size && curBytes + b > max) {
      shards.push(cur);
      cur = new Map();
      curBytes = 0;
    }
    cur.set(n, s);
    curBytes += b;
  }
  if (cur.size || shards.length === 0) shards.push(cur);
  fs.mkdirSync(dir, { recursive: true });
  const indexFile = path.join(dir, 'model.safetensors.index.json');
  const pad = (k: number) => String(k).padStart(5, '0');
  const names =
    shards.length === 1
      ? ['model.safetensors']
      : shards.map((_, k) => `model-${pad(k + 1)}-of-${pad(shards.length)}.safetensors`);
  shards.forEach((m, k) => writeSafetensors(path.join(dir, names[k]), m, metadata, { dtype: opts.dtype }));
  if (shards.length > 1) {
    const weightMap: Record<string, string> = {};
    shards.forEach((m, k) => {
      for (const n of m.keys()) weightMap[n] = names[k];
    });
    writeFileAtomic(
      indexFile,
      JSON.stringify({ metadata: { total_size: total }, weight_map: weightMap }, null, 2) + '\n',
    );
  }
  // leftovers of an earlier save in the other layout (model.safetensors wins when both exist)
  const keep = new Set(names);
  for (const f of fs.readdirSync(dir)) {
    const stale =
      (f === 'model.safetensors' || /^model-\d{5}-of-\d{5}\.safetensors$/.test(f)) && !keep.has(f);
    if (stale || (f === 'model.safetensors.index.json' && shards.length === 1)) fs.rmSync(path.join(dir, f));
  }
  return names.map((n) => path.join(dir, n));
}
