// PyTorch checkpoints (`torch.save`: pytorch_model.bin, *.pt), read safely: the pickle is run by a
// small virtual machine that knows a closed list of globals (tensor rebuild functions, storages of
// each dtype, OrderedDict) as inert tokens and never calls anything; any other global is refused,
// naming the file and the global. Tensors come back located, not read: file offset, dtype, shape
// and element strides over their storage (views, transposes and shared storages as saved).
//
// Two containers:
// - zip (torch >= 1.6): ARCHIVE/data.pkl, ARCHIVE/data/KEY per storage (stored, not compressed)
// - legacy (torch < 1.6, or _use_new_zipfile_serialization=False): five pickles in a row (magic
//   number, protocol version, system info, the object, the storage keys), then each storage as
//   an 8-byte little-endian element count followed by its bytes.

import fs from 'node:fs';
import zlib from 'node:zlib';
import { numelOf, readAt, SAFE_DTYPE_BYTES, type SafeDType, type SafeEntry } from './safetensors.js';

export class TorchFormatError extends Error {}

function bad(file: string, msg: string): never {
  throw new TorchFormatError(`${file}: ${msg}`);
}

/** storage classes by their global name, and the dtype of their elements */
const STORAGES: Record<string, SafeDType> = {
  FloatStorage: 'F32',
  DoubleStorage: 'F64',
  HalfStorage: 'F16',
  BFloat16Storage: 'BF16',
  LongStorage: 'I64',
  IntStorage: 'I32',
  ShortStorage: 'I16',
  CharStorage: 'I8',
  ByteStorage: 'U8',
  BoolStorage: 'BOOL',
};

/** the globals a state dict needs; each is a token the VM interprets, never a function it calls */
const ALLOWED = new Set([
  'collections.OrderedDict',
  'torch._utils._rebuild_tensor',
  'torch._utils._rebuild_tensor_v2',
  'torch._utils._rebuild_parameter',
  ...Object.keys(STORAGES).map((s) => `torch.${s}`),
]);

class Global {
  constructor(readonly name: string) {}
}

class StorageRef {
  constructor(
    readonly key: string,
    readonly dtype: SafeDType,
    /** element count the pickle claims (checked against the bytes found) */
    readonly numel: number,
  ) {}
}

/** A tensor as the pickle describes it: a view of a storage. */
export class TensorRef {
  constructor(
    readonly storage: StorageRef,
    readonly storageOffset: number,
    readonly shape: number[],
    readonly strides: number[],
  ) {}
}

type Value = unknown;

/**
 * Run a pickle (protocols 0-5, the opcodes a state dict uses) and return the object it builds.
 * `persistentLoad` resolves persistent ids (storages). Nothing is ever called.
 */
export function unpickle(
  data: Uint8Array,
  file: string,
  persistentLoad: (pid: Value) => Value,
  start = 0,
): { value: Value; end: number } {
  const dv = new DataView(data.buffer, data.byteOffset, data.byteLength);
  const stack: Value[] = [];
  const marks: number[] = [];
  const memo = new Map<number, Value>();
  const text = new TextDecoder('utf-8', { fatal: true });
  const latin1 = new TextDecoder('latin1');
  let p = start;
  const need = (n: number) => {
    if (p + n > data.length) bad(file, `pickle ends early at byte ${p}`);
  };
  const u8 = () => (need(1), data[p++]);
  const u16 = () => (need(2), (p += 2), dv.getUint16(p - 2, true));
  const u32 = () => (need(4), (p += 4), dv.getUint32(p - 4, true));
  const i32 = () => (need(4), (p += 4), dv.getInt32(p - 4, true));
  const bytes = (n: number) => (need(n), (p += n), data.subarray(p - n, p));
  const line = () => {
    const end = data.indexOf(0x0a, p);
    if (end < 0) bad(file, `pickle ends early at byte ${p}`);
    const s = latin1.decode(data.subarray(p, end));
    p = end + 1;
    return s;
  };
  const pop = () => {
    if (stack.length === 0 || (marks.length && stack.length <= marks[marks.length - 1]))
      bad(file, `pickle stack underflow at byte ${p}`);
    return stack.pop();
  };
  const popMark = (): Value[] => {
    const m = marks.pop();
    if (m === undefined) bad(file, `pickle has no mark at byte ${p}`);
    return stack.splice(m);
  };
  const top = () => {
    if (stack.length === 0) bad(file, `pickle stack underflow at byte ${p}`);
    return stack[stack.length - 1];
  };
  const int = (v: Value, what: string): number => {
    if (typeof v !== 'number' || !Number.isSafeInteger(v))
      bad(file, `${what} must be an integer, got ${String(v)}`);
    return v;
  };
  const global = (mod: string, name: string): Global => {
    const full = `${mod}.${name}`;
    if (!ALLOWED.has(full))
      bad(
        file,
        `refusing to load: the pickle asks for the global ${full} (only tensors, storages and OrderedDict are allowed; nothing was run)`,
      );
    return new Global(full);
  };
  const setItems = (target: Value, items: Value[]) => {
    if (!(target instanceof Map)) bad(file, `pickle sets items on a ${typeof target} at byte ${p}`);
    for (let i = 0; i + 1 < items.length; i += 2) target.set(items[i], items[i + 1]);
  };
  const reduce = (fn: Value, args: Value): Value => {
    if (!(fn instanceof Global)) bad(file, `pickle calls something that is not a global at byte ${p}`);
    if (!Array.isArray(args)) bad(file, `${fn.name}: arguments are not a tuple`);
    switch (fn.name) {
      case 'collections.OrderedDict':
        return new Map();
      case 'torch._utils._rebuild_tensor':
      case 'torch._utils._rebuild_tensor_v2': {
        const [storage, offset, size, stride] = args;
        if (!(storage instanceof StorageRef)) bad(file, `${fn.name}: first argument is not a storage`);
        if (!Array.isArray(size) || !Array.isArray(stride) || size.length !== stride.length)
          bad(file, `${fn.name}: size and stride must be tuples of one length`);
        return new TensorRef(
          storage,
          int(offset, 'storage offset'),
          size.map((d) => int(d, 'size')),
          stride.map((d) => int(d, 'stride')),
        );
      }
      case 'torch._utils._rebuild_parameter':
        if (!(args[0] instanceof TensorRef)) bad(file, `${fn.name}: first argument is not a tensor`);
        return args[0];
      default:
        return bad(file, `refusing to call ${fn.name}`);
    }
  };
  const PROTO = 0x80;
  for (;;) {
    const op = u8();
    switch (op) {
      case PROTO:
        u8();
        break;
      case 0x95: // FRAME
        bytes(8);
        break;
      case 0x2e: // STOP
        if (stack.length !== 1) bad(file, `pickle stops with ${stack.length} values on the stack`);
        return { value: stack[0], end: p };
      case 0x28: // MARK
        marks.push(stack.length);
        break;
      case 0x7d: // EMPTY_DICT
        stack.push(new Map());
        break;
      case 0x5d: // EMPTY_LIST
        stack.push([]);
        break;
      case 0x29: // EMPTY_TUPLE
        stack.push(Object.freeze([]));
        break;
      case 0x74: // TUPLE
        stack.push(Object.freeze(popMark()));
        break;
      case 0x85: // TUPLE1
        stack.push(Object.freeze([pop()]));
        break;
      case 0x86: {
        // TUPLE2
        const b = pop();
        stack.push(Object.freeze([pop(), b]));
        break;
      }
      case 0x87: {
        // TUPLE3
        const c = pop();
        const b = pop();
        stack.push(Object.freeze([pop(), b, c]));
        break;
      }
      case 0x6c: // LIST
        stack.push(popMark());
        break;
      case 0x64: {
        // DICT
        const m = new Map();
        setItems(m, popMark());
        stack.push(m);
        break;
      }
      case 0x73: {
        // SETITEM
        const v = pop();
        const k = pop();
        setItems(top(), [k, v]);
        break;
      }
      case 0x75: {
        // SETITEMS
        const items = popMark();
        setItems(top(), items);
        break;
      }
      case 0x61: {
        // APPEND
        const v = pop();
        const l = top();
        if (!Array.isArray(l) || Object.isFrozen(l)) bad(file, `pickle appends to a non-list at byte ${p}`);
        l.push(v);
        break;
      }
      case 0x65: {
        // APPENDS
        const items = popMark();
        const l = top();
        if (!Array.isArray(l) || Object.isFrozen(l)) bad(file, `pickle appends to a non-list at byte ${p}`);
        for (const v of items) l.push(v);
        break;
      }
      case 0x71: // BINPUT
        memo.set(u8(), top());
        break;
      case 0x72: // LONG_BINPUT
        memo.set(u32(), top());
        break;
      case 0x70: // PUT
        memo.set(Number(line()), top());
        break;
      case 0x94: // MEMOIZE
        memo.set(memo.size, top());
        break;
      case 0x68: // BINGET
      case 0x6a: // LONG_BINGET
      case 0x67: {
        // GET
        const k = op === 0x68 ? u8() : op === 0x6a ? u32() : Number(line());
        if (!memo.has(k)) bad(file, `pickle reads memo ${k}, never written`);
        stack.push(memo.get(k));
        break;
      }
      case 0x4a: // BININT
        stack.push(i32());
        break;
      case 0x4b: // BININT1
        stack.push(u8());
        break;
      case 0x4d: // BININT2
        stack.push(u16());
        break;
      case 0x8a: {
        // LONG1: little-endian two's complement of n bytes
        const b = bytes(u8());
        let v = 0n;
        for (let i = b.length - 1; i >= 0; i--) v = (v << 8n) | BigInt(b[i]);
        if (b.length && b[b.length - 1] & 0x80) v -= 1n << BigInt(8 * b.length);
        stack.push(
          v >= BigInt(Number.MIN_SAFE_INTEGER) && v <= BigInt(Number.MAX_SAFE_INTEGER) ? Number(v) : v,
        );
        break;
      }
      case 0x49: {
        // INT
        const s = line();
        stack.push(s === '01' ? true : s === '00' ? false : Number(s));
        break;
      }
      case 0x4c: // LONG
        stack.push(Number(line().replace(/L$/, '')));
        break;
      case 0x47: // BINFLOAT (big-endian)
        need(8);
        stack.push(dv.getFloat64(p, false));
        p += 8;
        break;
      case 0x46: // FLOAT
        stack.push(Number(line()));
        break;
      case 0x58: // BINUNICODE
        stack.push(text.decode(bytes(u32())));
        break;
      case 0x8c: // SHORT_BINUNICODE
        stack.push(text.decode(bytes(u8())));
        break;
      case 0x8d: // BINUNICODE8
        need(8);
        p += 8;
        stack.push(text.decode(bytes(Number(dv.getBigUint64(p - 8, true)))));
        break;
      case 0x54: // BINSTRING
        stack.push(latin1.decode(bytes(i32())));
        break;
      case 0x55: // SHORT_BINSTRING
        stack.push(latin1.decode(bytes(u8())));
        break;
      case 0x56: // UNICODE (raw-unicode-escape; plain names only)
        stack.push(line());
        break;
      case 0x53: {
        // STRING: a quoted repr
        const s = line();
        stack.push(s.slice(1, -1));
        break;
      }
      case 0x42: // BINBYTES
        stack.push(bytes(u32()).slice());
        break;
      case 0x43: // SHORT_BINBYTES
        stack.push(bytes(u8()).slice());
        break;
      case 0x4e: // NONE
        stack.push(null);
        break;
      case 0x88: // NEWTRUE
        stack.push(true);
        break;
      case 0x89: // NEWFALSE
        stack.push(false);
        break;
      case 0x63: {
        // GLOBAL
        const mod = line();
        stack.push(global(mod, line()));
        break;
      }
      case 0x93: {
        // STACK_GLOBAL
        const name = pop();
        const mod = pop();
        if (typeof mod !== 'string' || typeof name !== 'string') bad(file, 'STACK_GLOBAL of non-strings');
        stack.push(global(mod, name));
        break;
      }
      case 0x52: {
        // REDUCE
        const args = pop();
        stack.push(reduce(pop(), args));
        break;
      }
      case 0x62: {
        // BUILD: object state; only the OrderedDict of a state dict carries one (_metadata), ignored
        pop();
        if (!(top() instanceof Map))
          bad(file, `pickle sets the state of something that is not a dict at byte ${p}`);
        break;
      }
      case 0x51: // BINPERSID
        stack.push(persistentLoad(pop()));
        break;
      case 0x50: // PERSID
        stack.push(persistentLoad(line()));
        break;
      case 0x30: // POP
        pop();
        break;
      case 0x31: // POP_MARK
        popMark();
        break;
      case 0x32: // DUP
        stack.push(top());
        break;
      default:
        bad(
          file,
          `refusing to load: pickle opcode 0x${op.toString(16)} at byte ${p - 1} is not one a state dict uses (nothing was run)`,
        );
    }
  }
}

// ---- zip ------------------------------------------------------------------------------------

interface ZipEntry {
  name: string;
  method: number;
  size: number;
  compressedSize: number;
  /** absolute offset of the entry's data */
  dataOffset: number;
}

function readZipDirectory(fd: number, size: number, file: string): Map<string, ZipEntry> {
  const tailLen = Math.min(size, 65557);
  const tail = new Uint8Array(tailLen);
  readAt(fd, tail, size - tailLen, file);
  const tv = new DataView(tail.buffer);
  let eocd = -1;
  for (let i = tailLen - 22; i >= 0; i--)
    if (tv.getUint32(i, true) === 0x06054b50) {
      eocd = i;
      break;
    }
  if (eocd < 0) bad(file, 'not a zip file (no end of central directory)');
  let count = tv.getUint16(eocd + 10, true);
  let cdSize = tv.getUint32(eocd + 12, true);
  let cdOffset = tv.getUint32(eocd + 16, true);
  if (count === 0xffff || cdSize === 0xffffffff || cdOffset === 0xffffffff) {
    // zip64: the locator sits right before the end record and points at the zip64 end record
    const loc = eocd - 20;
    if (loc < 0 || tv.getUint32(loc, true) !== 0x07064b50) bad(file, 'zip64 locator missing');
    const recOff = Number(tv.getBigUint64(loc + 8, true));
    const rec = new Uint8Array(56);
    readAt(fd, rec, recOff, file);
    const rv = new DataView(rec.buffer);
    if (rv.getUint32(0, true) !== 0x06064b50) bad(file, 'zip64 end record missing');
    count = Number(rv.getBigUint64(32, true));
    cdSize = Number(rv.getBigUint64(40, true));
    cdOffset = Number(rv.getBigUint64(48, true));
  }
  if (cdOffset + cdSize > size || cdSize > 1 << 30)
    bad(file, 'zip central directory runs past the end of the file');
  const cd = new Uint8Array(cdSize);
  readAt(fd, cd, cdOffset, file);
  const cv = new DataView(cd.buffer);
  const entries = new Map<string, ZipEntry>();
  let p = 0;
  const local = new Uint8Array(30);
  const lv = new DataView(local.buffer);
  for (let k = 0; k < count; k++) {
    if (p + 46 > cdSize || cv.getUint32(p, true) !== 0x02014b50)
      bad(file, 'zip central directory is damaged');
    const method = cv.getUint16(p + 10, true);
    let compressedSize = cv.getUint32(p + 20, true);
    let uncompressed = cv.getUint32(p + 24, true);
    const nameLen = cv.getUint16(p + 28, true);
    const extraLen = cv.getUint16(p + 30, true);
    const commentLen = cv.getUint16(p + 32, true);
    let localOffset = cv.getUint32(p + 42, true);
    if (p + 46 + nameLen + extraLen > cdSize) bad(file, 'zip central directory is damaged');
    const name = new TextDecoder().decode(cd.subarray(p + 46, p + 46 + nameLen));
    // zip64 extra field: the 64-bit values of the fields set to 0xffffffff, in this order
    let e = p + 46 + nameLen;
    const extraEnd = e + extraLen;
    while (e + 4 <= extraEnd) {
      const id = cv.getUint16(e, true);
      const len = cv.getUint16(e + 2, true);
      if (id === 0x0001) {
        let q = e + 4;
        const next = () => {
          const v = Number(cv.getBigUint64(q, true));
          q += 8;
          return v;
        };
        if (uncompressed === 0xffffffff) uncompressed = next();
        if (compressedSize === 0xffffffff) compressedSize = next();
        if (localOffset === 0xffffffff) localOffset = next();
      }
      e += 4 + len;
    }
    readAt(fd, local, localOffset, file);
    if (lv.getUint32(0, true) !== 0x04034b50) bad(file, `zip entry ${name}: local header missing`);
    const dataOffset = localOffset + 30 + lv.getUint16(26, true) + lv.getUint16(28, true);
    if (dataOffset + compressedSize > size) bad(file, `zip entry ${name} runs past the end of the file`);
    entries.set(name, { name, method, size: uncompressed, compressedSize, dataOffset });
    p += 46 + nameLen + extraLen + commentLen;
  }
  return entries;
}

// ---- reading a checkpoint -------------------------------------------------------------------

/** where a storage's bytes are */
interface StorageData {
  offset: number;
  bytes: number;
}

function storagePid(file: string, refs: Map<string, StorageRef>) {
  return (pid: Value): Value => {
    if (!Array.isArray(pid) || pid[0] !== 'storage')
      bad(file, `unknown persistent id ${JSON.stringify(String(pid))} (only storages are allowed)`);
    const [, type, key, , numel] = pid as [string, Value, Value, Value, Value];
    if (!(type instanceof Global)) bad(file, 'storage type is not a storage class');
    const dtype = STORAGES[type.name.slice('torch.'.length)];
    if (!dtype) bad(file, `storage type ${type.name} is not supported`);
    const k = String(key);
    const known = refs.get(k);
    if (known) return known;
    if (typeof numel !== 'number' || !Number.isSafeInteger(numel) || numel < 0)
      bad(file, `storage ${k}: element count ${String(numel)} is not an integer`);
    const ref = new StorageRef(k, dtype, numel);
    refs.set(k, ref);
    return ref;
  };
}

/** flatten the unpickled object into name -> tensor (nested dicts with dotted names) */
function collectTensors(obj: Value, file: string, prefix = '', out = new Map<string, TensorRef>()) {
  if (!(obj instanceof Map)) bad(file, 'the checkpoint is not a dict of tensors (a state dict)');
  for (const [k, v] of obj) {
    const name = prefix + String(k);
    if (v instanceof TensorRef) out.set(name, v);
    else if (v instanceof Map) collectTensors(v, file, `${name}.`, out);
    // other values (ints, strings, None) are not weights
  }
  return out;
}

function toEntries(
  tensors: Map<string, TensorRef>,
  data: (ref: StorageRef) => StorageData,
  file: string,
): Map<string, SafeEntry> {
  const entries = new Map<string, SafeEntry>();
  for (const [name, t] of tensors) {
    const w = SAFE_DTYPE_BYTES[t.storage.dtype];
    const st = data(t.storage);
    const have = st.bytes / w;
    if (t.storage.numel !== have)
      bad(
        file,
        `tensor ${name}: storage ${t.storage.key} holds ${have} elements, the pickle says ${t.storage.numel}`,
      );
    const numel = numelOf(t.shape);
    let last = t.storageOffset;
    for (let i = 0; i < t.shape.length; i++) {
      if (t.strides[i] < 0) bad(file, `tensor ${name}: negative stride ${t.strides[i]}`);
      if (t.shape[i] > 0) last += (t.shape[i] - 1) * t.strides[i];
    }
    if (numel > 0 && (t.storageOffset < 0 || last >= have))
      bad(
        file,
        `tensor ${name}: shape [${t.shape.join(', ')}], strides [${t.strides.join(', ')}] at offset ${t.storageOffset} reach element ${last} of a storage of ${have}`,
      );
    entries.set(name, {
      name,
      dtype: t.storage.dtype,
      shape: t.shape,
      file,
      offset: st.offset + t.storageOffset * w,
      byteLength: numel * w,
      strides: t.strides,
    });
  }
  return entries;
}

const LEGACY_MAGIC = 0x1950a86a20f9469cfc6cn;

/**
 * Locate the tensors of a PyTorch checkpoint (zip or legacy) without reading their data. Throws,
 * naming the file, for any global or opcode outside the allow-list: nothing in the file runs.
 */
export function readTorch(file: string): Map<string, SafeEntry> {
  let fd: number;
  try {
    fd = fs.openSync(file, 'r');
  } catch (e) {
    throw new TorchFormatError(
      `${file}: cannot read (${(e as NodeJS.ErrnoException).code ?? (e as Error).message})`,
    );
  }
  try {
    const size = fs.fstatSync(fd).size;
    const head = new Uint8Array(Math.min(size, 4));
    readAt(fd, head, 0, file);
    if (head[0] === 0x50 && head[1] === 0x4b) return readZipCheckpoint(fd, size, file);
    if (head[0] === 0x80) return readLegacyCheckpoint(fd, size, file);
    return bad(file, 'not a PyTorch checkpoint (neither a zip archive nor a legacy pickle)');
  } finally {
    fs.closeSync(fd);
  }
}

function readZipCheckpoint(fd: number, size: number, file: string): Map<string, SafeEntry> {
  const zip = readZipDirectory(fd, size, file);
  const pkl = [...zip.values()].find((e) => /^[^/]+\/data\.pkl$/.test(e.name));
  if (!pkl) bad(file, 'zip archive has no ARCHIVE/data.pkl (not a torch.save checkpoint)');
  const prefix = pkl.name.slice(0, -'data.pkl'.length);
  if (pkl.size > 1 << 30) bad(file, `${pkl.name} is ${pkl.size} bytes, too large for a state dict`);
  const raw = new Uint8Array(pkl.compressedSize);
  readAt(fd, raw, pkl.dataOffset, file);
  let pickle: Uint8Array;
  if (pkl.method === 0) pickle = raw;
  else if (pkl.method === 8) pickle = zlib.inflateRawSync(raw, { maxOutputLength: pkl.size + 1 });
  else bad(file, `${pkl.name}: zip compression method ${pkl.method} is not supported`);
  const refs = new Map<string, StorageRef>();
  const { value } = unpickle(pickle, file, storagePid(file, refs));
  const tensors = collectTensors(value, file);
  return toEntries(
    tensors,
    (ref) => {
      const e = zip.get(`${prefix}data/${ref.key}`);
      if (!e) bad(file, `storage ${ref.key}: zip entry ${prefix}data/${ref.key} is missing`);
      if (e.method !== 0)
        bad(
          file,
          `storage ${ref.key}: zip entry is compressed (method ${e.method}); torch.save writes them stored`,
        );
      return { offset: e.dataOffset, bytes: e.size };
    },
    file,
  );
}

function readLegacyCheckpoint(fd: number, size: number, file: string): Map<string, SafeEntry> {
  // the five pickles are small next to the storages that follow; read a prefix, growing it as needed
  let len = Math.min(size, 1 << 20);
  for (;;) {
    const buf = new Uint8Array(len);
    readAt(fd, buf, 0, file);
    try {
      return legacyFrom(buf, fd, size, file);
    } catch (e) {
      if (!(e instanceof TorchFormatError) || !/pickle ends early/.test(e.message) || len === size) throw e;
      len = Math.min(size, len * 4);
    }
  }
}

function legacyFrom(buf: Uint8Array, fd: number, size: number, file: string): Map<string, SafeEntry> {
  const none = () => bad(file, 'legacy header pickles carry no persistent ids');
  const magic = unpickle(buf, file, none);
  if (magic.value !== Number(LEGACY_MAGIC) && magic.value !== LEGACY_MAGIC)
    bad(file, 'not a PyTorch checkpoint (legacy magic number missing)');
  const protocol = unpickle(buf, file, none, magic.end);
  if (protocol.value !== 1001)
    bad(file, `legacy protocol version ${String(protocol.value)} is not supported`);
  const sysInfo = unpickle(buf, file, none, protocol.end);
  if (sysInfo.value instanceof Map && sysInfo.value.get('little_endian') === false)
    bad(file, 'big-endian checkpoints are not supported');
  const refs = new Map<string, StorageRef>();
  const main = unpickle(buf, file, storagePid(file, refs), sysInfo.end);
  const keys = unpickle(buf, file, none, main.end);
  if (!Array.isArray(keys.value)) bad(file, 'legacy storage key list missing');
  // storages follow in the order of the key list: 8-byte element count, then the elements
  const where = new Map<string, StorageData>();
  let pos = keys.end;
  const countBytes = new Uint8Array(8);
  for (const k of keys.value) {
    const ref = refs.get(String(k));
    if (!ref) bad(file, `legacy storage ${String(k)} is not used by any tensor`);
    if (pos + 8 > size) bad(file, `legacy storage ${ref.key} runs past the end of the file`);
    readAt(fd, countBytes, pos, file);
    const n = Number(new DataView(countBytes.buffer).getBigInt64(0, true));
    const bytes = n * SAFE_DTYPE_BYTES[ref.dtype];
    if (n < 0 || pos + 8 + bytes > size) bad(file, `legacy storage ${ref.key} runs past the end of the file`);
    where.set(ref.key, { offset: pos + 8, bytes });
    pos += 8 + bytes;
  }
  return toEntries(
    collectTensors(main.value, file),
    (ref) => where.get(ref.key) ?? bad(file, `storage ${ref.key} has no data`),
    file,
  );
}
