// Tokenizers against independent references: the built-in byte tokenizer against UTF-8 itself,
// the phi-17m byte-level BPE against a plain rank-ordered BPE written here, and the Llama-style
// tokenizer converted from llama2.c's tok512.bin against llama2.c's own encode/decode algorithm
// (re-implemented here from the .bin, not from our tokenizer.json).

import assert from 'node:assert/strict';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { describe, it } from 'node:test';
import { byteTokenizer, bytesToUnicode, HuggingFaceTokenizer, loadTokenizer } from '../src/io/tokenizer.js';
import { sentencePieceTokenizerJson, readLlama2cTokenizerBin } from '../src/io/llama2c.js';
import { SHARED } from './helpers.js';

const skip = fs.existsSync(SHARED) ? false : `${SHARED} not found`;
const tmp = () => fs.mkdtempSync(path.join(os.tmpdir(), 'mohawk-tok-'));

const SAMPLES = [
  'Hello, world!',
  '  two leading spaces and trailing  ',
  'naïve café — “quotes” and emoji 🦀 and 日本語',
  "It's 3.14159; don't we'll they've I'm",
  'line one\nline two\n\n\ttabbed',
  '',
  ' ',
];

function corpusSlices(): string[] {
  const out: string[] = [];
  const dir = path.join(SHARED, 'data/corpus/val');
  for (const f of fs.readdirSync(dir).sort()) {
    const text = fs.readFileSync(path.join(dir, f), 'utf8');
    out.push(text.slice(1000, 4000));
  }
  return out;
}

describe('built-in byte tokenizer', () => {
  it('ids are the UTF-8 bytes (plus BOS 256), and decode inverts encode', () => {
    const tok = byteTokenizer();
    assert.equal(tok.vocabSize, 257);
    assert.equal(tok.bosTokenId, 256);
    assert.equal(tok.eosTokenId, 256);
    assert.equal(tok.addBos, true);
    for (const s of SAMPLES) {
      const ids = tok.encode(s);
      assert.deepEqual(ids, [256, ...Buffer.from(s, 'utf8')], JSON.stringify(s));
      assert.equal(tok.decode(ids), s);
      assert.deepEqual(tok.encode(s, { addBos: false }), [...Buffer.from(s, 'utf8')]);
    }
    assert.equal(byteTokenizer({ addBos: false }).encode('ab')[0], 97);
  });
  it('saves as tokenizer.json + tokenizer_config.json and loads back the same', () => {
    const dir = tmp();
    byteTokenizer().save(dir);
    const back = loadTokenizer(dir);
    for (const s of SAMPLES) assert.deepEqual(back.encode(s), byteTokenizer().encode(s));
    assert.equal(back.addBos, true);
  });
});

/** GPT-2 style byte-level BPE: regex pre-tokenization, bytes -> printable chars, lowest-rank merges. */
function referenceByteBpe(json: { model: { vocab: Record<string, number>; merges: [string, string][] } }) {
  const ranks = new Map(json.model.merges.map(([a, b], i) => [`${a} ${b}`, i]));
  const byteChar = bytesToUnicode();
  const pat = /'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+/gu;
  return (text: string): number[] => {
    const ids: number[] = [];
    for (const m of text.matchAll(pat)) {
      let parts = [...Buffer.from(m[0], 'utf8')].map((b) => byteChar[b]);
      for (;;) {
        let best = -1;
        let bestRank = Infinity;
        for (let i = 0; i + 1 < parts.length; i++) {
          const r = ranks.get(`${parts[i]} ${parts[i + 1]}`);
          if (r !== undefined && r < bestRank) {
            bestRank = r;
            best = i;
          }
        }
        if (best < 0) break;
        const merged = parts[best] + parts[best + 1];
        const next: string[] = [];
        for (let i = 0; i < parts.length; i++) {
          if (
            i + 1 < parts.length &&
            parts[i] + parts[i + 1] === merged &&
            ranks.get(`${parts[i]} ${parts[i + 1]}`) === bestRank
          ) {
            next.push(merged);
            i++;
          } else next.push(parts[i]);
        }
        parts = next;
      }
      for (const p of parts) ids.push(json.model.vocab[p]);
    }
    return ids;
  };
}

describe('byte-level BPE (phi-17m tokenizer.json)', { skip }, () => {
  it('encodes like a reference BPE, round-trips, and reads BOS/EOS from the config', () => {
    const dir = path.join(SHARED, 'data/teachers/phi-17m');
    const tok = loadTokenizer(dir);
    assert.equal(tok.vocabSize, 8192);
    assert.equal(tok.eosTokenId, 0);
    assert.equal(tok.bosTokenId, 0);
    assert.equal(tok.addBos, false, 'the ByteLevel post-processor adds no BOS');
    const ref = referenceByteBpe(JSON.parse(fs.readFileSync(path.join(dir, 'tokenizer.json'), 'utf8')));
    for (const s of [...SAMPLES, ...corpusSlices()]) {
      const ids = tok.encode(s);
      assert.deepEqual(ids, ref(s), `encode ${JSON.stringify(s.slice(0, 40))}`);
      assert.equal(tok.decode(ids), s);
    }
    assert.deepEqual(tok.encode('hi', { addBos: true }).slice(0, 1), [0]);
    // special tokens are dropped by decode
    assert.equal(tok.decode([0, ...tok.encode('a cat')]), 'a cat');
  });
});

/** llama2.c's tokenizer: vocab strings (with ' ', not U+2581) and scores straight from tok512.bin */
function readTok512Bin(file: string, n: number): { pieces: Buffer[]; scores: number[] } {
  const buf = fs.readFileSync(file);
  const pieces: Buffer[] = [];
  const scores: number[] = [];
  let off = 4;
  for (let i = 0; i < n; i++) {
    scores.push(buf.readFloatLE(off));
    const len = buf.readInt32LE(off + 4);
    pieces.push(buf.subarray(off + 8, off + 8 + len));
    off += 8 + len;
  }
  return { pieces, scores };
}

/** llama2.c run.c encode(): dummy prefix, per-character lookup with byte fallback, best-score merges */
function llama2cEncode(v: { pieces: Buffer[]; scores: number[] }, text: string, bos: boolean): number[] {
  const lookup = new Map<string, number>();
  v.pieces.forEach((p, i) => {
    const k = p.toString('latin1');
    if (!lookup.has(k)) lookup.set(k, i);
  });
  const idOf = (b: Buffer) => lookup.get(b.toString('latin1')) ?? -1;
  const t: number[] = bos ? [1] : [];
  if (text !== '') t.push(idOf(Buffer.from(' ')));
  for (const ch of text) {
    const b = Buffer.from(ch, 'utf8');
    const id = idOf(b);
    if (id >= 0) t.push(id);
    else for (const byte of b) t.push(byte + 3);
  }
  for (;;) {
    let bestScore = -1e10;
    let bestId = -1;
    let bestIdx = -1;
    for (let i = 0; i + 1 < t.length; i++) {
      const id = idOf(Buffer.concat([v.pieces[t[i]], v.pieces[t[i + 1]]]));
      if (id >= 0 && v.scores[id] > bestScore) {
        bestScore = v.scores[id];
        bestId = id;
        bestIdx = i;
      }
    }
    if (bestIdx < 0) break;
    t.splice(bestIdx, 2, bestId);
  }
  return t;
}

/** llama2.c decode(): strip the space after BOS, <0xXX> pieces are raw bytes */
function llama2cDecode(v: { pieces: Buffer[] }, ids: number[]): string {
  const out: Buffer[] = [];
  let prev = 1;
  for (const id of ids) {
    let p = v.pieces[id];
    if (prev === 1 && p[0] === 0x20) p = p.subarray(1);
    const m = /^<0x([0-9A-F]{2})>$/.exec(p.toString('latin1'));
    out.push(m ? Buffer.from([parseInt(m[1], 16)]) : p);
    prev = id;
  }
  return Buffer.concat(out).toString('utf8');
}

describe('SentencePiece-style BPE with byte fallback (llama2.c tok512)', { skip }, () => {
  const base = path.join(SHARED, 'data/stories260K');
  const stories = () =>
    fs
      .readFileSync(path.join(SHARED, 'data/corpus/extra/tinystories-sample.txt'), 'utf8')
      .split('\n')
      .filter((l) => l.trim() !== '')
      .slice(0, 40);

  it('tokenizer.json from tok512.bin encodes and decodes like llama2.c', () => {
    const v = readTok512Bin(path.join(base, 'tok512.bin'), 512);
    const tok = new HuggingFaceTokenizer(
      sentencePieceTokenizerJson(readLlama2cTokenizerBin(path.join(base, 'tok512.bin'), 512)),
      { bos_token: '<s>', eos_token: '</s>', add_bos_token: true },
    );
    assert.equal(tok.bosTokenId, 1);
    assert.equal(tok.eosTokenId, 2);
    assert.equal(tok.addBos, true);
    let checked = 0;
    for (const s of [...SAMPLES.filter((x) => x.trim() !== ''), ...stories()]) {
      const ids = tok.encode(s);
      assert.deepEqual(ids, llama2cEncode(v, s, true), `encode ${JSON.stringify(s.slice(0, 50))}`);
      // byte fallback: characters outside the 512 pieces still round-trip exactly
      assert.equal(tok.decode(ids), s);
      assert.equal(llama2cDecode(v, ids.slice(1)), s);
      checked++;
    }
    assert.ok(checked > 20, `only ${checked} samples checked`);
    const emoji = tok.encode('🦀', { addBos: false });
    assert.equal(emoji.length, 5, 'the dummy-prefix space + 4 UTF-8 bytes');
    assert.ok(
      emoji.slice(1).every((id) => id >= 3 && id < 3 + 256),
      `byte-fallback ids after the dummy prefix ${emoji.join(',')}`,
    );
  });

  it('tok512.model (SentencePiece protobuf) gives the same tokenizer as tok512.bin', async () => {
    const { readSentencePieceModel } = await import('../src/io/llama2c.js');
    const a = readLlama2cTokenizerBin(path.join(base, 'tok512.bin'), 512);
    const b = readSentencePieceModel(path.join(base, 'tok512.model'));
    assert.deepEqual(b.pieces, a.pieces);
    for (let i = 0; i < 512; i++) assert.ok(Math.abs(a.scores[i] - b.scores[i]) < 1e-6, `score ${i}`);
  });

  it('BOS default comes from tokenizer_config.json, else from the post-processor', () => {
    const json = sentencePieceTokenizerJson(readLlama2cTokenizerBin(path.join(base, 'tok512.bin'), 512));
    const cfg = { bos_token: '<s>', eos_token: '</s>' };
    assert.equal(new HuggingFaceTokenizer(json, cfg).addBos, true, 'TemplateProcessing adds <s>');
    assert.equal(new HuggingFaceTokenizer(json, { ...cfg, add_bos_token: false }).addBos, false);
    const noPost = { ...json, post_processor: null };
    assert.equal(new HuggingFaceTokenizer(noPost, cfg).addBos, false);
    assert.equal(new HuggingFaceTokenizer(noPost, { ...cfg, add_bos_token: true }).addBos, true);
    const t = new HuggingFaceTokenizer(json, { ...cfg, add_bos_token: false });
    assert.equal(t.encode('Lily')[0] === 1, false);
    assert.equal(t.encode('Lily', { addBos: true })[0], 1);
  });
});

describe('tokenizer errors', () => {
  it('an unknown model type, a missing model and bad JSON name the file and field', () => {
    const dir = tmp();
    const file = path.join(dir, 'tokenizer.json');
    for (const type of ['Unigram', 'WordPiece', 'WordLevel']) {
      fs.writeFileSync(file, JSON.stringify({ model: { type, vocab: {} } }));
      assert.throws(
        () => loadTokenizer(dir),
        (e: Error) =>
          e.message.startsWith(file) &&
          e.message.includes(`model.type "${type}" is not supported`) &&
          !e.message.includes('\n'),
      );
    }
    fs.writeFileSync(file, JSON.stringify({ version: '1.0' }));
    assert.throws(
      () => loadTokenizer(dir),
      (e: Error) => e.message === `${file}: model is missing`,
    );
    fs.writeFileSync(file, '{"model": ');
    assert.throws(
      () => loadTokenizer(dir),
      (e: Error) => e.message.startsWith(`${file}: not valid JSON`),
    );
    fs.rmSync(file);
    assert.throws(() => loadTokenizer(dir), /tokenizer\.json not found/);
  });
});
