// safetensors: read (zero-copy views where alignment allows), validate strictly, write
// atomically; sharded checkpoints through model.safetensors.index.json.
//
// Format: 8-byte little-endian header length N, N bytes of JSON
// {name: {dtype, shape, data_offsets: [begin, end]}, "__metadata__": {str: str}}, then the data.

import fs from 'node:fs';
import path from 'node:path';
import type { DType } from '../backends/backend.js';
import { bf16ToF32, f16ToF32 } from '../backends/dtype.js';
import { tensor, type Tensor } from '../tensor/index.js';

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

export interface SafeEntry {
  name: string;
  dtype: SafeDType;
  shape: number[];
  /** the raw little-endian bytes (a view into the file's buffer) */
  bytes: Uint8Array;
}

export interface SafeFile {
  path: string;
  metadata: Record<string, string>;
  entries: Map<string, SafeEntry>;
}

export class SafetensorsError extends Error {}

function bad(file: string, msg: string): never {
  throw new SafetensorsError(`${file}: ${msg}`);
}

/** Parse and validate a safetensors buffer; `file` names it in errors. */
export function parseSafetensors(buf: Uint8Array, file: string): SafeFile {
  if (buf.length < 8) bad(file, `file is ${buf.length} bytes, shorter than the 8-byte header length`);
  const dv = new DataView(buf.buffer, buf.byteOffset, buf.byteLength);
  const headerLen = Number(dv.getBigUint64(0, true));
  if (headerLen > buf.length - 8)
    bad(file, `header length ${headerLen} runs past the end of the file (${buf.length} bytes)`);
  if (headerLen > 100_000_000) bad(file, `header length ${headerLen} is implausibly large`);
  let header: unknown;
  try {
    header = JSON.parse(new TextDecoder('utf-8', { fatal: true }).decode(buf.subarray(8, 8 + headerLen)));
  } catch (e) {
    bad(file, `header is not valid UTF-8 JSON (${(e as Error).message})`);
  }
  if (!header || typeof header !== 'object' || Array.isArray(header))
    bad(file, 'header is not a JSON object');
  const dataStart = 8 + headerLen;
  const dataLen = buf.length - dataStart;
  const metadata: Record<string, string> = {};
  const entries = new Map<string, SafeEntry>();
  const ranges: [number, number, string][] = [];
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
    if (!info || typeof info !== 'object') bad(file, `tensor ${name}: entry is not an object`);
    const dtype = info.dtype as SafeDType;
    if (typeof dtype !== 'string' || !(dtype in SAFE_DTYPE_BYTES))
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
    const numel = (shape as number[]).reduce((a, b) => a * b, 1);
    const expected = numel * SAFE_DTYPE_BYTES[dtype];
    if (expected !== end - begin) {
      bad(
        file,
        `tensor ${name}: shape [${(shape as number[]).join(', ')}] x ${dtype} needs ${expected} bytes, data_offsets give ${end - begin}`,
      );
    }
    ranges.push([begin, end, name]);
    entries.set(name, {
      name,
      dtype,
      shape: shape as number[],
      bytes: buf.subarray(dataStart + begin, dataStart + end),
    });
  }
  ranges.sort((a, b) => a[0] - b[0] || a[1] - b[1]);
  for (let i = 1; i < ranges.length; i++) {
    const [b0, e0, n0] = ranges[i - 1];
    const [b1, , n1] = ranges[i];
    if (b1 < e0 && e0 > b0) bad(file, `tensors ${n0} and ${n1} overlap in the data region`);
  }
  return { path: file, metadata, entries };
}

export function readSafetensors(file: string): SafeFile {
  let buf: Buffer;
  try {
    buf = fs.readFileSync(file);
  } catch (e) {
    throw new SafetensorsError(
      `${file}: cannot read (${(e as NodeJS.ErrnoException).code ?? (e as Error).message})`,
    );
  }
  return parseSafetensors(new Uint8Array(buf.buffer, buf.byteOffset, buf.byteLength), file);
}

function aligned<T>(
  bytes: Uint8Array,
  width: number,
  make: (b: ArrayBuffer, off: number, n: number) => T,
): T {
  if (bytes.byteOffset % width === 0)
    return make(bytes.buffer as ArrayBuffer, bytes.byteOffset, bytes.byteLength / width);
  const copy = bytes.slice();
  return make(copy.buffer, 0, copy.byteLength / width);
}

/** The entry's values as numbers (float dtypes widened to Float32Array/Float64Array). */
export function entryValues(e: SafeEntry, file = ''): Float32Array | Float64Array | Int32Array | Uint16Array {
  switch (e.dtype) {
    case 'F32':
      return aligned(e.bytes, 4, (b, o, n) => new Float32Array(b, o, n));
    case 'F64':
      return aligned(e.bytes, 8, (b, o, n) => new Float64Array(b, o, n));
    case 'I32':
      return aligned(e.bytes, 4, (b, o, n) => new Int32Array(b, o, n));
    case 'BF16':
    case 'F16': {
      const raw = aligned(e.bytes, 2, (b, o, n) => new Uint16Array(b, o, n));
      const conv = e.dtype === 'BF16' ? bf16ToF32 : f16ToF32;
      const out = new Float32Array(raw.length);
      for (let i = 0; i < raw.length; i++) out[i] = conv(raw[i]);
      return out;
    }
    case 'I64': {
      const raw = aligned(e.bytes, 8, (b, o, n) => new BigInt64Array(b, o, n));
      const out = new Int32Array(raw.length);
      for (let i = 0; i < raw.length; i++) {
        const v = raw[i];
        if (v > 2147483647n || v < -2147483648n)
          throw new SafetensorsError(`${file}: tensor ${e.name}: I64 value ${v} does not fit in i32`);
        out[i] = Number(v);
      }
      return out;
    }
    case 'U8':
    case 'I8':
    case 'BOOL':
    case 'I16':
    case 'U16':
    case 'U32': {
      const ctor = {
        U8: Uint8Array,
        I8: Int8Array,
        BOOL: Uint8Array,
        I16: Int16Array,
        U16: Uint16Array,
        U32: Uint32Array,
      }[e.dtype];
      const w = ctor.BYTES_PER_ELEMENT;
      const raw = aligned(e.bytes, w, (b, o, n) => new ctor(b, o, n));
      return Int32Array.from(raw as ArrayLike<number>);
    }
    default:
      throw new SafetensorsError(`${file}: tensor ${e.name}: dtype ${e.dtype} cannot be loaded as numbers`);
  }
}

/** A tensor holding the entry (floats as f32 unless `dtype` says otherwise, integers as i32). */
export function entryToTensor(e: SafeEntry, dtype?: DType, file = ''): Tensor {
  const values = entryValues(e, file);
  const isInt = values instanceof Int32Array;
  const target: DType = dtype ?? (isInt ? 'i32' : e.dtype === 'F64' ? 'f64' : 'f32');
  return tensor(values, e.shape, target);
}

/** Load every tensor of a file (or a directory with model.safetensors[.index.json]). */
export function loadTensors(fileOrDir: string, dtype?: DType): Map<string, Tensor> {
  const out = new Map<string, Tensor>();
  for (const f of checkpointFiles(fileOrDir)) {
    const sf = readSafetensors(f);
    for (const [name, e] of sf.entries) {
      if (out.has(name)) throw new SafetensorsError(`${f}: tensor ${name} appears in two shards`);
      out.set(name, entryToTensor(e, dtype, f));
    }
  }
  return out;
}

/** The safetensors files of a checkpoint: a file, or a directory's single or sharded weights. */
export function checkpointFiles(fileOrDir: string): string[] {
  let stat: fs.Stats;
  try {
    stat = fs.statSync(fileOrDir);
  } catch {
    throw new SafetensorsError(`${fileOrDir}: no such file or directory`);
  }
  if (!stat.isDirectory()) return [fileOrDir];
  const single = path.join(fileOrDir, 'model.safetensors');
  if (fs.existsSync(single)) return [single];
  const indexFile = path.join(fileOrDir, 'model.safetensors.index.json');
  if (!fs.existsSync(indexFile))
    throw new SafetensorsError(
      `${fileOrDir}: neither model.safetensors nor model.safetensors.index.json found`,
    );
  let index: { weight_map?: Record<string, string> };
  try {
    index = JSON.parse(fs.readFileSync(indexFile, 'utf8'));
  } catch (e) {
    throw new SafetensorsError(`${indexFile}: not valid JSON (${(e as Error).message})`);
  }
  if (!index.weight_map || typeof index.weight_map !== 'object')
    throw new SafetensorsError(`${indexFile}: weight_map missing`);
  const files = [...new Set(Object.values(index.weight_map))].sort();
  for (const f of files) {
    if (typeof f !== 'string' || f.includes('/') || f.includes('\\'))
      throw new SafetensorsError(`${indexFile}: bad shard name ${JSON.stringify(f)}`);
  }
  const paths = files.map((f) => path.join(fileOrDir, f));
  // every tensor must be in the shard the index names
  const shardOf = new Map<string, string>();
  for (const p of paths)
    for (const name of readSafetensors(p).entries.keys()) shardOf.set(name, path.basename(p));
  for (const [name, f] of Object.entries(index.weight_map)) {
    if (shardOf.get(name) !== f)
      throw new SafetensorsError(`${indexFile}: tensor ${name} is not in shard ${f}`);
  }
  return paths;
}

// ---- writing --------------------------------------------------------------------------------

export interface WriteEntry {
  dtype: SafeDType;
  shape: number[];
  bytes: Uint8Array;
}

const DTYPE_TO_SAFE: Record<DType, SafeDType> = {
  f32: 'F32',
  f64: 'F64',
  i32: 'I32',
  bf16: 'BF16',
  f16: 'F16',
};

/** A tensor's bytes for writing (read from its device). */
export function tensorEntry(t: Tensor): WriteEntry {
  const raw = t.read();
  return {
    dtype: DTYPE_TO_SAFE[t.dtype],
    shape: [...t.shape],
    bytes: new Uint8Array(raw.buffer, raw.byteOffset, raw.byteLength),
  };
}

/** Serialize entries (sorted by name, 8-byte aligned header) to one buffer. */
export function serializeSafetensors(
  entries: Map<string, WriteEntry>,
  metadata?: Record<string, string>,
): Uint8Array {
  const names = [...entries.keys()].sort();
  const header: Record<string, unknown> = {};
  if (metadata && Object.keys(metadata).length) header.__metadata__ = metadata;
  let off = 0;
  for (const n of names) {
    const e = entries.get(n)!;
    const numel = e.shape.reduce((a, b) => a * b, 1);
    if (numel * SAFE_DTYPE_BYTES[e.dtype] !== e.bytes.byteLength) {
      throw new SafetensorsError(
        `tensor ${n}: ${e.bytes.byteLength} bytes for shape [${e.shape.join(', ')}] x ${e.dtype}`,
      );
    }
    header[n] = { dtype: e.dtype, shape: e.shape, data_offsets: [off, off + e.bytes.byteLength] };
    off += e.bytes.byteLength;
  }
  let json = JSON.stringify(header);
  while ((8 + Buffer.byteLength(json)) % 8 !== 0) json += ' ';
  const hbytes = Buffer.from(json, 'utf8');
  const out = new Uint8Array(8 + hbytes.length + off);
  new DataView(out.buffer).setBigUint64(0, BigInt(hbytes.length), true);
  out.set(hbytes, 8);
  let pos = 8 + hbytes.length;
  for (const n of names) {
    const b = entries.get(n)!.bytes;
    out.set(b, pos);
    pos += b.byteLength;
  }
  return out;
}

/** Write a file atomically (a temporary file renamed into place). */
export function writeFileAtomic(file: string, data: Uint8Array | string): void {
  const tmp = `${file}.tmp-${process.pid}`;
  fs.writeFileSync(tmp, data);
  fs.renameSync(tmp, file);
}

/** Write tensors (read from their devices) or raw entries to a safetensors file, atomically. */
export function writeSafetensors(
  file: string,
  tensors: Map<string, Tensor | WriteEntry>,
  metadata?: Record<string, string>,
): void {
  const entries = new Map<string, WriteEntry>();
  for (const [n, t] of tensors) entries.set(n, 'bytes' in t ? t : tensorEntry(t));
  writeFileAtomic(file, serializeSafetensors(entries, metadata ?? { format: 'pt' }));
}
