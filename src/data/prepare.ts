// Text and JSONL -> token shards: stream each input, tokenize it in pieces, append EOS after
// every document, and write the train and held-out ("val") splits with their index.json.
//
// Documents: a text file is one document; a JSONL file holds one document per line (the string
// in a configurable field, "text" by default), or one conversation per line: a `messages` list of
// {role, content}, rendered through the tokenizer's chat template. With `maskPrompt` a mask file
// beside the shards marks which tokens count as training targets: an assistant message's tokens
// (as the template renders them, its end marker included) count, the rest of a conversation
// (system and user turns, the markup that opens the assistant's turn) does not; plain text counts
// everywhere. Each rendered piece is tokenized on its own (templates put special tokens at the
// boundaries, where a tokenizer splits anyway).
// Held-out split, by fraction: the last `valFraction` of every source's bytes (cut at a line
// boundary, so a text file becomes a train document and a val document; JSONL lines starting
// past the cut go to val). This keeps val contiguous, so no training window overlaps it.
// Or explicit: `valInputs` go wholly to val.

import fs from 'node:fs';
import path from 'node:path';
import {
  INDEX_FILE,
  INDEX_FORMAT,
  ShardWriter,
  tokenDTypeFor,
  MaskWriter,
  writeFileAtomicSync,
  type SourceInfo,
  type TokenIndex,
} from './shards.js';

/** What tokenization needs: any tokenizer with these three members (encode adds no BOS/EOS). */
export interface TokenEncoder {
  encode(text: string): ArrayLike<number>;
  readonly eosTokenId: number | null;
  readonly vocabSize: number;
}

/** A chat template as prepare needs it (io/chat-template's ChatTemplate is one). */
export interface ChatRenderer {
  /** the rendered conversation in pieces, each marked whether it is an assistant's own text */
  segments(messages: { role: string; content: string }[]): { text: string; assistant: boolean }[];
}

export interface PrepareProgress {
  file: string;
  bytesDone: number;
  bytesTotal: number;
  tokens: number;
  documents: number;
  elapsedSec: number;
}

export interface PrepareOptions {
  /** files or directories (walked recursively, sorted; hidden files skipped) */
  inputs: string[];
  /** files or directories that go wholly to the held-out split */
  valInputs?: string[];
  /** output directory (created; earlier shards and index there are replaced) */
  out: string;
  /** fraction of each input's bytes held out (default 0.01, or 0 when valInputs are given) */
  valFraction?: number;
  /** the JSONL field holding each document's text */
  jsonlField?: string;
  /** the JSONL field holding a conversation (default "messages") */
  messagesField?: string;
  /** renders conversations; needed when a JSONL line holds `messages` */
  chat?: ChatRenderer;
  /** write a target mask: only assistant tokens of conversations count (plain text counts whole) */
  maskPrompt?: boolean;
  /** tokens per shard file */
  maxShardTokens?: number;
  /**
   * Text is tokenized in pieces of about this many bytes (default 1 MiB), cut before the last
   * space or newline of a whitespace run followed by printable ASCII, where GPT-2-style
   * byte-level BPE splits the same way as on the whole text. 0 tokenizes each document whole: exact for any tokenizer (use it for
   * SentencePiece, which marks the start of every piece).
   */
  chunkBytes?: number;
  /** recorded in index.json */
  tokenizerName?: string;
  /** overrides the tokenizer's EOS id */
  eosTokenId?: number;
  onProgress?: (p: PrepareProgress) => void;
}

export interface PrepareResult {
  index: TokenIndex;
  bytes: number;
  seconds: number;
}

const SHARD_RE = /^(train|val)-\d{5}\.bin$/;

/** Expand files and directories into a sorted list of files. */
export function listInputFiles(inputs: string[]): string[] {
  const out: string[] = [];
  const walk = (p: string): void => {
    let st: fs.Stats;
    try {
      st = fs.statSync(p);
    } catch {
      throw new Error(`${p}: no such file or directory`);
    }
    if (st.isDirectory()) {
      for (const name of fs.readdirSync(p).sort()) if (!name.startsWith('.')) walk(path.join(p, name));
    } else if (st.isFile()) {
      out.push(p);
    }
  };
  for (const p of inputs) walk(p);
  return out;
}

function isJsonl(file: string): boolean {
  return /\.jsonl$/i.test(file);
}

export function prepareTokens(encoder: TokenEncoder, opts: PrepareOptions): PrepareResult {
  const t0 = performance.now();
  const valInputs = opts.valInputs ?? [];
  const valFraction = opts.valFraction ?? (valInputs.length ? 0 : 0.01);
  if (!(valFraction >= 0 && valFraction < 1))
    throw new Error(`prepare: valFraction ${valFraction} must be in [0, 1)`);
  const eos = opts.eosTokenId ?? encoder.eosTokenId;
  if (eos === null || eos === undefined)
    throw new Error('prepare: the tokenizer has no EOS token; give eosTokenId to separate documents');
  const vocab = encoder.vocabSize;
  if (!(eos >= 0 && eos < vocab))
    throw new Error(`prepare: EOS id ${eos} outside the vocabulary [0, ${vocab})`);
  const field = opts.jsonlField ?? 'text';
  const chunkBytes = opts.chunkBytes ?? (piecesAreExact(encoder) ? 1 << 20 : 0);
  const trainFiles = listInputFiles(opts.inputs);
  const valFiles = listInputFiles(valInputs);
  if (!trainFiles.length) throw new Error('prepare: no input files');

  fs.mkdirSync(opts.out, { recursive: true });
  // a half-written directory must never look valid: drop the old index first, then old shards
  fs.rmSync(path.join(opts.out, INDEX_FILE), { force: true });
  for (const name of fs.readdirSync(opts.out)) if (SHARD_RE.test(name)) fs.rmSync(path.join(opts.out, name));

  const dtype = tokenDTypeFor(vocab);
  for (const name of ['train.mask', 'val.mask']) fs.rmSync(path.join(opts.out, name), { force: true });
  const writers = {
    train: new ShardWriter(opts.out, 'train', dtype, vocab, opts.maxShardTokens),
    val: new ShardWriter(opts.out, 'val', dtype, vocab, opts.maxShardTokens),
  };
  const masks = opts.maskPrompt
    ? { train: new MaskWriter(opts.out, 'train'), val: new MaskWriter(opts.out, 'val') }
    : null;
  const messagesField = opts.messagesField ?? 'messages';
  let conversations = 0;
  /** ids into a split, with their mask bit when masks are written */
  const put = (split: 'train' | 'val', ids: ArrayLike<number>, counts: boolean, where?: string): void => {
    writers[split].append(ids, where);
    masks?.[split].append(ids.length, counts);
  };
  const all = [...trainFiles.map((f) => ({ f, val: false })), ...valFiles.map((f) => ({ f, val: true }))];
  const bytesTotal = all.reduce((a, x) => a + fs.statSync(x.f).size, 0);
  let bytesDone = 0;
  const sources: SourceInfo[] = [];

  for (const { f, val } of all) {
    const kind = isJsonl(f) ? 'jsonl' : 'text';
    const info: SourceInfo = { path: f, kind, splits: {} };
    const size = fs.statSync(f).size;
    const fd = fs.openSync(f, 'r');
    try {
      const cut = val ? 0 : valFraction > 0 ? lineCut(fd, size, Math.floor(size * (1 - valFraction))) : size;
      const report = (bytes: number): void => {
        opts.onProgress?.({
          file: f,
          bytesDone: bytesDone + bytes,
          bytesTotal,
          tokens: writers.train.tokens + writers.val.tokens,
          documents: writers.train.documents + writers.val.documents,
          elapsedSec: (performance.now() - t0) / 1000,
        });
      };
      const parts: [string, number, number][] = [
        ['train', 0, cut],
        ['val', cut, size],
      ];
      for (const [split, from, to] of parts) {
        if (to <= from) continue;
        const sp = split as 'train' | 'val';
        const w = writers[sp];
        const before = { tokens: w.tokens, documents: w.documents };
        if (kind === 'text') {
          let any = false;
          forEachPiece(fd, from, to, chunkBytes, 'text', (text, _line, end) => {
            const ids = encoder.encode(text);
            put(sp, ids, true, f);
            any ||= ids.length > 0;
            report(from + end);
          });
          if (any) {
            put(sp, [eos], true);
            w.endDocument();
          }
        } else {
          forEachPiece(fd, from, to, 0, 'lines', (line, lineNo, end) => {
            if (!line.trim()) return;
            let obj: unknown;
            try {
              obj = JSON.parse(line);
            } catch (e) {
              throw new Error(`${f}:${lineNo}: not valid JSON (${(e as Error).message})`, { cause: e });
            }
            const rec = obj && typeof obj === 'object' ? (obj as Record<string, unknown>) : {};
            const text = rec[field];
            const where = `${f}:${lineNo}`;
            if (typeof text !== 'string' && Array.isArray(rec[messagesField])) {
              // a conversation through the chat template; EOS after it separates documents
              if (!opts.chat)
                throw new Error(
                  `${where}: a "${messagesField}" line needs a chat template (tokenizer_config.json: chat_template)`,
                );
              const messages = checkMessages(rec[messagesField] as unknown[], `${where}: ${messagesField}`);
              for (const seg of opts.chat.segments(messages))
                put(sp, encoder.encode(seg.text), seg.assistant, where);
              put(sp, [eos], false);
              w.endDocument();
              conversations++;
            } else if (typeof text !== 'string') {
              throw new Error(
                `${where}: field "${field}" missing or not a string (set the JSONL field, or give a "${messagesField}" list)`,
              );
            } else if (text.length) {
              put(sp, encoder.encode(text), true, where);
              put(sp, [eos], true);
              w.endDocument();
            }
            report(from + end);
          });
        }
        info.splits[split] = {
          bytes: to - from,
          documents: w.documents - before.documents,
          tokens: w.tokens - before.tokens,
        };
      }
    } finally {
      fs.closeSync(fd);
    }
    bytesDone += size;
    sources.push(info);
  }

  const index: TokenIndex = {
    format: INDEX_FORMAT,
    version: 1,
    vocab_size: vocab,
    dtype,
    eos_token_id: eos,
    tokenizer: opts.tokenizerName,
    split_rule: valFiles.length
      ? `val = ${valFiles.length} explicit file(s)${valFraction > 0 ? ` + last ${valFraction} of each input` : ''}`
      : valFraction > 0
        ? `val = last ${valFraction} of each input's bytes, cut at a line boundary`
        : 'no held-out split',
    splits: {},
    sources,
  };
  const train = writers.train.finish();
  const valSplit = writers.val.finish();
  if (masks) {
    const counted = masks.train.counted;
    train.mask = masks.train.finish();
    const valMask = masks.val.finish();
    if (valSplit.tokens > 0) valSplit.mask = valMask;
    else fs.rmSync(path.join(opts.out, valMask), { force: true });
    if (counted === 0) throw new Error('prepare: maskPrompt leaves no training target (no assistant tokens)');
  }
  if (conversations > 0)
    index.split_rule = `${index.split_rule}; ${conversations} conversation(s) through the chat template${masks ? ', loss on assistant tokens only' : ''}`;
  index.splits.train = train;
  if (valSplit.tokens > 0) index.splits.val = valSplit;
  writeFileAtomicSync(path.join(opts.out, INDEX_FILE), JSON.stringify(index, null, 2) + '\n');
  return { index, bytes: bytesTotal, seconds: (performance.now() - t0) / 1000 };
}

/** A JSONL `messages` list checked: objects with a string role and string content. */
function checkMessages(list: unknown[], where: string): { role: string; content: string }[] {
  if (list.length === 0) throw new Error(`${where} is empty`);
  return list.map((m, i) => {
    const { role, content } = (m ?? {}) as { role?: unknown; content?: unknown };
    if (typeof role !== 'string' || typeof content !== 'string')
      throw new Error(`${where}[${i}] must be {role: string, content: string}`);
    return { role, content };
  });
}

/** Cut points of the kind `chunkBytes` uses, as (before, after) pairs. */
const PROBES: [string, string][] = [
  ['The cat sat on the mat.', '\nThe dog ran.'],
  ['It was the best of times,', ' it was the worst of times'],
  ['end of a paragraph.\n', '\nNext one, 42 times'],
  ['trailing spaces  ', " 'quoted' words"],
  ['über naïve', ' café\n\tindented'],
];

/** Whether this tokenizer encodes text cut the way `chunkBytes` cuts it exactly as the whole text. */
export function piecesAreExact(encoder: TokenEncoder): boolean {
  const same = (a: ArrayLike<number>, b: ArrayLike<number>): boolean =>
    a.length === b.length && Array.prototype.every.call(a, (v: number, i: number) => v === b[i]);
  return PROBES.every(([x, y]) =>
    same(encoder.encode(x + y), [...Array.from(encoder.encode(x)), ...Array.from(encoder.encode(y))]),
  );
}

// ---- streaming ------------------------------------------------------------------------------

const NL = 0x0a;

/** The byte offset where the held-out tail starts: just after the first newline at or after `at`. */
function lineCut(fd: number, size: number, at: number): number {
  if (at >= size) return size;
  const buf = Buffer.alloc(1 << 16);
  for (let pos = at; pos < size; pos += buf.length) {
    const n = fs.readSync(fd, buf, 0, Math.min(buf.length, size - pos), pos);
    const i = buf.subarray(0, n).indexOf(NL);
    if (i >= 0) return pos + i + 1;
  }
  // no newline after the cut: back up to a UTF-8 character boundary
  const one = Buffer.alloc(1);
  let pos = at;
  while (pos > 0) {
    fs.readSync(fd, one, 0, 1, pos);
    if ((one[0] & 0xc0) !== 0x80) break;
    pos--;
  }
  return pos;
}

/**
 * Where to end a piece of text (exclusive), or -1: just before the last space, tab or newline
 * that ends a whitespace run and precedes printable ASCII. GPT-2-style byte-level BPE splits
 * there anyway (the run but its last character; then the last character, alone or leading the
 * next word), so the pieces tokenize exactly as the whole text. `desperate`: any newline or
 * character boundary.
 */
function pieceCut(data: Buffer, desperate: boolean): number {
  for (let i = data.length - 2; i >= 1; i--) {
    const c = data[i];
    const n = data[i + 1];
    // a letter or digit next: never a special token such as <|endoftext|> (its segment ends there)
    const word = (n >= 0x30 && n <= 0x39) || (n >= 0x41 && n <= 0x5a) || (n >= 0x61 && n <= 0x7a);
    if ((c === 0x20 || c === NL || c === 0x09) && word) return i;
  }
  if (!desperate) return -1;
  const nl = data.lastIndexOf(NL);
  if (nl > 0) return nl + 1;
  let i = data.length - 1;
  while (i > 0 && (data[i] & 0xc0) === 0x80) i--;
  return i > 0 ? i : -1;
}

/**
 * Stream bytes [from, to) of a file as 'lines' (each line, without its newline) or as 'text'
 * pieces of about chunkBytes (0 = the whole range at once). fn gets the piece, its 1-based line
 * number (lines mode) and the byte offset (relative to `from`) where it ends.
 */
function forEachPiece(
  fd: number,
  from: number,
  to: number,
  chunkBytes: number,
  mode: 'lines' | 'text',
  fn: (piece: string, lineNo: number, end: number) => void,
): void {
  const decoder = new TextDecoder('utf-8');
  const block = mode === 'lines' ? 1 << 22 : chunkBytes <= 0 ? Math.max(1, to - from) : chunkBytes;
  let carry: Buffer = Buffer.alloc(0);
  let pos = from;
  let lineNo = 0;
  let consumed = 0;
  // lines before `from` (for JSONL error messages) are counted cheaply only when from > 0
  if (mode === 'lines' && from > 0) lineNo = countNewlines(fd, from);
  while (pos < to) {
    const n = Math.min(block, to - pos);
    const buf = Buffer.alloc(n);
    let got = 0;
    while (got < n) {
      const r = fs.readSync(fd, buf, got, n - got, pos + got);
      if (r === 0) throw new Error(`read: unexpected end of file at byte ${pos + got}`);
      got += r;
    }
    pos += n;
    const data = carry.length ? Buffer.concat([carry, buf]) : buf;
    const last = pos >= to;
    if (mode === 'lines') {
      let start = 0;
      for (let i = data.indexOf(NL); i >= 0; i = data.indexOf(NL, start)) {
        lineNo++;
        consumed += i + 1 - start;
        fn(decoder.decode(data.subarray(start, i)), lineNo, consumed);
        start = i + 1;
      }
      carry = data.subarray(start);
      if (last && carry.length) {
        lineNo++;
        consumed += carry.length;
        fn(decoder.decode(carry), lineNo, consumed);
        carry = Buffer.alloc(0);
      }
    } else if (chunkBytes <= 0 || last) {
      if (last) {
        consumed += data.length;
        fn(decoder.decode(data), 0, consumed);
        carry = Buffer.alloc(0);
      } else {
        carry = data;
      }
    } else {
      const cut = pieceCut(data, data.length > 8 * chunkBytes);
      if (cut < 0) {
        carry = data;
      } else {
        consumed += cut;
        fn(decoder.decode(data.subarray(0, cut)), 0, consumed);
        carry = data.subarray(cut);
      }
    }
  }
}

function countNewlines(fd: number, upto: number): number {
  const buf = Buffer.alloc(1 << 20);
  let count = 0;
  for (let pos = 0; pos < upto; pos += buf.length) {
    const n = fs.readSync(fd, buf, 0, Math.min(buf.length, upto - pos), pos);
    for (let i = 0; i < n; i++) if (buf[i] === NL) count++;
  }
  return count;
}
