// Token shards on disk: each split ("train", "val") is one stream of token ids cut into raw
// little-endian files (uint16 when the vocabulary fits, else uint32), described by index.json.
// Documents end with the EOS token, so the stream is the documents concatenated.
//
// Layout of a prepared directory:
//   index.json            TokenIndex (below)
//   train-00000.bin ...   the train split's tokens, in order
//   val-00000.bin ...     the held-out split's tokens
//   train.mask, val.mask  optional (chat data with the prompt masked): one byte per token of the
//                         split, 1 when the token counts as a training target (an assistant's
//                         token), 0 when it does not (system and user turns, template markup)

import fs from 'node:fs';
import path from 'node:path';
import { writeFileAtomic } from '../util/fs.js';

export type TokenDType = 'uint16' | 'uint32';

export const INDEX_FILE = 'index.json';
export const INDEX_FORMAT = 'mohawk-tokens';

export interface ShardInfo {
  /** file name inside the directory */
  file: string;
  tokens: number;
}

export interface SplitInfo {
  tokens: number;
  documents: number;
  shards: ShardInfo[];
  /** file name of the split's target mask (one byte per token), when the data has one */
  mask?: string;
}

export interface SourceInfo {
  path: string;
  /** 'text' (one document per file) or 'jsonl' (one document per line) */
  kind: 'text' | 'jsonl';
  /** bytes, documents and tokens (EOS included) per split this source fed */
  splits: Record<string, { bytes: number; documents: number; tokens: number }>;
}

export interface TokenIndex {
  format: typeof INDEX_FORMAT;
  version: 1;
  vocab_size: number;
  dtype: TokenDType;
  eos_token_id: number;
  /** where the tokenizer came from, for the record */
  tokenizer?: string;
  /** how the held-out split was made */
  split_rule?: string;
  splits: Record<string, SplitInfo>;
  sources: SourceInfo[];
}

/** uint16 when every id in [0, vocabSize) fits, else uint32. */
export function tokenDTypeFor(vocabSize: number): TokenDType {
  if (!(Number.isInteger(vocabSize) && vocabSize > 0))
    throw new Error(`tokens: bad vocabulary size ${vocabSize}`);
  return vocabSize <= 65536 ? 'uint16' : 'uint32';
}

export function bytesPerToken(dtype: TokenDType): number {
  return dtype === 'uint16' ? 2 : 4;
}

/** Write a file atomically: a temporary file in the same directory, fsynced, renamed into place. */
export function writeFileAtomicSync(file: string, data: string | Uint8Array): void {
  writeFileAtomic(file, data);
}

// ---- writing --------------------------------------------------------------------------------

/** Appends token ids to one split's shards, buffering writes; `finish()` returns the split's info. */
export class ShardWriter {
  private readonly shards: ShardInfo[] = [];
  private fd: number | null = null;
  private inShard = 0;
  private readonly buf: Uint16Array | Uint32Array;
  private fill = 0;
  private total = 0;
  private docs = 0;

  constructor(
    readonly dir: string,
    readonly split: string,
    readonly dtype: TokenDType,
    readonly vocabSize: number,
    /** tokens per shard file */
    readonly maxShardTokens = 1 << 27,
    bufferTokens = 1 << 20,
  ) {
    if (!(Number.isInteger(maxShardTokens) && maxShardTokens > 0))
      throw new Error(`tokens: maxShardTokens ${maxShardTokens} must be a positive integer`);
    this.buf = dtype === 'uint16' ? new Uint16Array(bufferTokens) : new Uint32Array(bufferTokens);
  }

  get tokens(): number {
    return this.total + this.fill;
  }

  get documents(): number {
    return this.docs;
  }

  /** Append ids; `where` names the source in range errors. */
  append(ids: ArrayLike<number>, where = ''): void {
    for (let i = 0; i < ids.length; i++) {
      const id = ids[i];
      if (!(Number.isInteger(id) && id >= 0 && id < this.vocabSize)) {
        throw new Error(
          `${where ? `${where}: ` : ''}token id ${id} outside the vocabulary [0, ${this.vocabSize})`,
        );
      }
      this.buf[this.fill++] = id;
      if (this.fill === this.buf.length) this.flush();
    }
  }

  /** Count one finished document (its EOS already appended). */
  endDocument(): void {
    this.docs++;
  }

  private flush(): void {
    let off = 0;
    while (off < this.fill) {
      if (this.fd === null || this.inShard === this.maxShardTokens) this.openShard();
      const n = Math.min(this.fill - off, this.maxShardTokens - this.inShard);
      const view = this.buf.subarray(off, off + n);
      fs.writeSync(this.fd!, new Uint8Array(view.buffer, view.byteOffset, view.byteLength));
      this.inShard += n;
      this.shards[this.shards.length - 1].tokens += n;
      off += n;
    }
    this.total += this.fill;
    this.fill = 0;
  }

  private openShard(): void {
    if (this.fd !== null) fs.closeSync(this.fd);
    const file = `${this.split}-${String(this.shards.length).padStart(5, '0')}.bin`;
    this.fd = fs.openSync(path.join(this.dir, file), 'w');
    this.shards.push({ file, tokens: 0 });
    this.inShard = 0;
  }

  finish(): SplitInfo {
    this.flush();
    if (this.fd !== null) fs.closeSync(this.fd);
    this.fd = null;
    return { tokens: this.total, documents: this.docs, shards: this.shards.map((s) => ({ ...s })) };
  }
}

/** Appends one byte per token (the target mask of a split) to `<split>.mask`, buffered. */
export class MaskWriter {
  readonly file: string;
  private readonly fd: number;
  private readonly buf = new Uint8Array(1 << 20);
  private fill = 0;
  private total = 0;
  private ones = 0;

  constructor(
    readonly dir: string,
    readonly split: string,
  ) {
    this.file = `${split}.mask`;
    this.fd = fs.openSync(path.join(dir, this.file), 'w');
  }

  get length(): number {
    return this.total + this.fill;
  }

  /** tokens marked 1 so far */
  get counted(): number {
    return this.ones;
  }

  /** `n` tokens, all counted (1) or all not (0) */
  append(n: number, counts: boolean): void {
    const v = counts ? 1 : 0;
    if (counts) this.ones += n;
    for (let i = 0; i < n; i++) {
      this.buf[this.fill++] = v;
      if (this.fill === this.buf.length) this.flush();
    }
  }

  private flush(): void {
    fs.writeSync(this.fd, this.buf.subarray(0, this.fill));
    this.total += this.fill;
    this.fill = 0;
  }

  finish(): string {
    this.flush();
    fs.closeSync(this.fd);
    return this.file;
  }
}

// ---- reading --------------------------------------------------------------------------------

/** Validate a parsed index.json; errors name the file and the field. */
export function checkIndex(raw: unknown, file: string): TokenIndex {
  const bad = (msg: string): never => {
    throw new Error(`${file}: ${msg}`);
  };
  if (!raw || typeof raw !== 'object') bad('not a JSON object');
  const idx = raw as TokenIndex;
  if (idx.format !== INDEX_FORMAT) bad(`format is ${JSON.stringify(idx.format)}, expected "${INDEX_FORMAT}"`);
  if (idx.version !== 1) bad(`version ${idx.version} is not supported (expected 1)`);
  if (!(Number.isInteger(idx.vocab_size) && idx.vocab_size > 0)) bad(`vocab_size must be a positive integer`);
  if (idx.dtype !== 'uint16' && idx.dtype !== 'uint32')
    bad(`dtype must be "uint16" or "uint32", got ${idx.dtype}`);
  if (idx.dtype === 'uint16' && idx.vocab_size > 65536)
    bad(`vocab_size ${idx.vocab_size} does not fit uint16`);
  if (!(Number.isInteger(idx.eos_token_id) && idx.eos_token_id >= 0))
    bad('eos_token_id must be an integer >= 0');
  if (!idx.splits || typeof idx.splits !== 'object' || Array.isArray(idx.splits))
    bad('splits must be a mapping from split names to {tokens, documents, shards}');
  for (const [name, s] of Object.entries(idx.splits)) {
    if (!s || typeof s !== 'object' || Array.isArray(s))
      bad(`splits.${name} must be {tokens, documents, shards}, got ${JSON.stringify(s)}`);
    if (!Array.isArray(s.shards)) bad(`splits.${name}.shards must be a list`);
    for (const sh of s.shards) {
      if (!sh || typeof sh !== 'object' || !(Number.isInteger(sh.tokens) && sh.tokens >= 0))
        bad(`splits.${name}.shards: each must be {file, tokens} with tokens an integer >= 0`);
    }
    if (!(Number.isInteger(s.tokens) && s.tokens >= 0)) bad(`splits.${name}.tokens must be an integer >= 0`);
    const sum = s.shards.reduce((a, sh) => a + sh.tokens, 0);
    if (sum !== s.tokens) bad(`splits.${name}.tokens is ${s.tokens} but its shards hold ${sum}`);
    for (const sh of s.shards) {
      if (typeof sh.file !== 'string' || sh.file.includes('/') || sh.file.includes('\\'))
        bad(`splits.${name}: bad shard file name ${JSON.stringify(sh.file)}`);
    }
    if (s.mask !== undefined && (typeof s.mask !== 'string' || s.mask.includes('/') || s.mask.includes('\\')))
      bad(`splits.${name}.mask: bad file name ${JSON.stringify(s.mask)}`);
  }
  return idx;
}

/** How a split's shards are read: whole files loaded once ('memory') or positioned fs reads ('read'). */
export type ReadMode = 'memory' | 'read' | 'auto';

/** One split as a random-access stream of tokens, across its shard files. */
export class TokenSplit {
  /** total tokens */
  readonly length: number;
  private readonly starts: number[];
  private readonly files: string[];
  private readonly counts: number[];
  private readonly bpt: number;
  private loaded: (Uint16Array | Uint32Array)[] | null = null;
  private fds: (number | null)[] = [];
  private scratch: Buffer = Buffer.alloc(0);
  private readonly maskFile: string | null;
  private maskFd: number | null = null;

  constructor(
    readonly dir: string,
    readonly name: string,
    readonly info: SplitInfo,
    readonly dtype: TokenDType,
    mode: ReadMode = 'auto',
  ) {
    this.bpt = bytesPerToken(dtype);
    this.length = info.tokens;
    this.files = info.shards.map((s) => path.join(dir, s.file));
    this.counts = info.shards.map((s) => s.tokens);
    this.starts = [];
    let acc = 0;
    for (const c of this.counts) {
      this.starts.push(acc);
      acc += c;
    }
    this.files.forEach((f, i) => {
      let size: number;
      try {
        size = fs.statSync(f).size;
      } catch {
        throw new Error(
          `${path.join(dir, INDEX_FILE)}: shard ${info.shards[i].file} of split ${name} is missing`,
        );
      }
      if (size !== this.counts[i] * this.bpt) {
        throw new Error(
          `${f}: ${size} bytes, expected ${this.counts[i]} ${dtype} tokens (${this.counts[i] * this.bpt} bytes)`,
        );
      }
    });
    this.maskFile = info.mask ? path.join(dir, info.mask) : null;
    if (this.maskFile) {
      let size: number;
      try {
        size = fs.statSync(this.maskFile).size;
      } catch {
        throw new Error(`${path.join(dir, INDEX_FILE)}: mask ${info.mask} of split ${name} is missing`);
      }
      if (size !== this.length)
        throw new Error(`${this.maskFile}: ${size} bytes, expected one per token (${this.length})`);
    }
    const inMemory = mode === 'memory' || (mode === 'auto' && this.length * this.bpt <= 512 * 1024 * 1024);
    if (inMemory) {
      // one copy at open time, aligned for the typed array; batches then copy only their windows
      this.loaded = this.files.map((f, i) => {
        const out = dtype === 'uint16' ? new Uint16Array(this.counts[i]) : new Uint32Array(this.counts[i]);
        const fd = fs.openSync(f, 'r');
        try {
          readFully(fd, new Uint8Array(out.buffer), 0, f);
        } finally {
          fs.closeSync(fd);
        }
        return out;
      });
    } else {
      this.fds = this.files.map(() => null);
    }
  }

  /** Copy tokens [start, start + n) into out[outOffset ..] as int32. */
  read(start: number, n: number, out: Int32Array, outOffset = 0): void {
    if (!(
      Number.isInteger(start) &&
      Number.isInteger(n) &&
      start >= 0 &&
      n >= 0 &&
      start + n <= this.length
    )) {
      throw new Error(
        `tokens: read [${start}, ${start + n}) outside split ${this.name} of ${this.length} tokens`,
      );
    }
    let shard = this.shardOf(start);
    let pos = start;
    let o = outOffset;
    let left = n;
    while (left > 0) {
      const inShard = pos - this.starts[shard];
      const take = Math.min(left, this.counts[shard] - inShard);
      if (this.loaded) {
        out.set(this.loaded[shard].subarray(inShard, inShard + take), o);
      } else {
        this.readFromFile(shard, inShard, take, out, o);
      }
      pos += take;
      o += take;
      left -= take;
      shard++;
    }
  }

  /** Whether the split has a target mask (chat data with the prompt masked). */
  get hasMask(): boolean {
    return this.maskFile !== null;
  }

  /** Copy the mask bytes of tokens [start, start + n) into out[outOffset ..] (1 = counts). */
  readMask(start: number, n: number, out: Uint8Array, outOffset = 0): void {
    if (!this.maskFile) throw new Error(`tokens: split ${this.name} has no mask`);
    if (!(Number.isInteger(start) && Number.isInteger(n) && start >= 0 && n >= 0 && start + n <= this.length))
      throw new Error(
        `tokens: mask read [${start}, ${start + n}) outside split ${this.name} of ${this.length} tokens`,
      );
    this.maskFd ??= fs.openSync(this.maskFile, 'r');
    readFully(this.maskFd, out.subarray(outOffset, outOffset + n), start, this.maskFile);
  }

  private readFromFile(shard: number, at: number, n: number, out: Int32Array, o: number): void {
    const bytes = n * this.bpt;
    if (this.scratch.length < bytes) this.scratch = Buffer.alloc(Math.max(bytes, 1 << 16));
    let fd = this.fds[shard];
    if (fd === null) fd = this.fds[shard] = fs.openSync(this.files[shard], 'r');
    readFully(fd, this.scratch.subarray(0, bytes), at * this.bpt, this.files[shard]);
    const s = this.scratch;
    if (this.bpt === 2) for (let i = 0; i < n; i++) out[o + i] = s.readUInt16LE(2 * i);
    else for (let i = 0; i < n; i++) out[o + i] = s.readUInt32LE(4 * i);
  }

  /** the shard holding token `pos` (binary search over shard starts) */
  private shardOf(pos: number): number {
    let lo = 0;
    let hi = this.starts.length - 1;
    while (lo < hi) {
      const mid = (lo + hi + 1) >> 1;
      if (this.starts[mid] <= pos) lo = mid;
      else hi = mid - 1;
    }
    // skip empty shards
    while (lo < this.counts.length - 1 && pos >= this.starts[lo] + this.counts[lo]) lo++;
    return lo;
  }

  /**
   * The first token id >= `limit` (a model's vocabulary), as the shard file, the token's position
   * in it and the id; null when every id is below the limit. One pass over the split.
   */
  firstOutOfRange(limit: number): { file: string; position: number; id: number } | null {
    const chunk = 1 << 20;
    const buf = new Int32Array(chunk);
    for (let shard = 0; shard < this.files.length; shard++) {
      const count = this.counts[shard];
      for (let at = 0; at < count; at += chunk) {
        const n = Math.min(chunk, count - at);
        let view: ArrayLike<number>;
        if (this.loaded) view = this.loaded[shard].subarray(at, at + n);
        else {
          this.readFromFile(shard, at, n, buf, 0);
          view = buf;
        }
        for (let i = 0; i < n; i++) {
          if (view[i] >= limit) return { file: this.files[shard], position: at + i, id: view[i] };
        }
      }
    }
    return null;
  }

  close(): void {
    if (this.maskFd !== null) fs.closeSync(this.maskFd);
    this.maskFd = null;
    for (const fd of this.fds) if (fd !== null) fs.closeSync(fd);
    this.fds = this.fds.map(() => null);
    this.loaded = null;
  }
}

function readFully(fd: number, into: Uint8Array, position: number, file: string): void {
  let off = 0;
  while (off < into.length) {
    const got = fs.readSync(fd, into, off, into.length - off, position + off);
    if (got === 0) throw new Error(`${file}: unexpected end of file at byte ${position + off}`);
    off += got;
  }
}

/** A prepared token directory: index.json and its shards. */
export class TokenDataset {
  private readonly open = new Map<string, TokenSplit>();

  private constructor(
    readonly dir: string,
    readonly index: TokenIndex,
    private readonly mode: ReadMode,
  ) {}

  /** Open a directory written by `prepareTokens` (or anything writing the same index.json). */
  static open(dir: string, mode: ReadMode = 'auto'): TokenDataset {
    const file = path.join(dir, INDEX_FILE);
    let text: string;
    try {
      text = fs.readFileSync(file, 'utf8');
    } catch {
      throw new Error(`${file}: not found (prepare the data with \`mohawk data prepare\`)`);
    }
    let raw: unknown;
    try {
      raw = JSON.parse(text);
    } catch (e) {
      throw new Error(`${file}: not valid JSON (${(e as Error).message})`, { cause: e });
    }
    return new TokenDataset(dir, checkIndex(raw, file), mode);
  }

  get vocabSize(): number {
    return this.index.vocab_size;
  }

  get eosTokenId(): number {
    return this.index.eos_token_id;
  }

  splitNames(): string[] {
    return Object.keys(this.index.splits);
  }

  has(name: string): boolean {
    return name in this.index.splits;
  }

  /** The split's token stream (opened once, shared). */
  split(name: string): TokenSplit {
    let s = this.open.get(name);
    if (!s) {
      const info = this.index.splits[name];
      if (!info) {
        throw new Error(
          `${path.join(this.dir, INDEX_FILE)}: no split "${name}" (have ${this.splitNames().join(', ') || 'none'})`,
        );
      }
      s = new TokenSplit(this.dir, name, info, this.index.dtype, this.mode);
      this.open.set(name, s);
    }
    return s;
  }

  close(): void {
    for (const s of this.open.values()) s.close();
    this.open.clear();
  }
}

/** Write token ids as one split of a directory (used by `sample-data` and tests); returns the index. */
export function writeTokenSplits(
  dir: string,
  splits: Record<string, { documents: ArrayLike<number>[] }>,
  opts: { vocabSize: number; eosTokenId: number; maxShardTokens?: number; tokenizer?: string },
): TokenIndex {
  fs.mkdirSync(dir, { recursive: true });
  const dtype = tokenDTypeFor(opts.vocabSize);
  const index: TokenIndex = {
    format: INDEX_FORMAT,
    version: 1,
    vocab_size: opts.vocabSize,
    dtype,
    eos_token_id: opts.eosTokenId,
    tokenizer: opts.tokenizer,
    splits: {},
    sources: [],
  };
  for (const [name, { documents }] of Object.entries(splits)) {
    const w = new ShardWriter(dir, name, dtype, opts.vocabSize, opts.maxShardTokens);
    for (const d of documents) {
      w.append(d, `split ${name}`);
      w.append([opts.eosTokenId]);
      w.endDocument();
    }
    index.splits[name] = w.finish();
  }
  writeFileAtomicSync(path.join(dir, INDEX_FILE), JSON.stringify(index, null, 2) + '\n');
  return index;
}
