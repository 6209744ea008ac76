// Data pipeline: shard round trips (uint16 and uint32, both read modes), prepare from text and
// JSONL against a byte tokenizer (an exact reference), held-out split sizes, chunked vs whole
// tokenization with a real BPE tokenizer, and the samplers' determinism, coverage and resume.

import assert from 'node:assert/strict';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { describe, it } from 'node:test';
import { fileURLToPath } from 'node:url';
import {
  evalBatches,
  piecesAreExact,
  prepareTokens,
  RandomWindows,
  SequentialWindows,
  TokenDataset,
  toTensors,
  writeTokenSplits,
  type Batch,
  type TokenEncoder,
} from '../src/data/index.js';
import { Random } from '../src/util/random.js';

const repoRoot = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');
const shared = path.resolve(repoRoot, '../shared');

function tmpDir(name: string): string {
  return fs.mkdtempSync(path.join(os.tmpdir(), `mohawk-data-${name}-`));
}

/** Tokens = UTF-8 bytes; EOS = 256. An exact reference: the stream is the bytes themselves. */
const byteTokenizer: TokenEncoder = {
  encode: (text) => Array.from(Buffer.from(text, 'utf8')),
  eosTokenId: 256,
  vocabSize: 257,
};

function randomDocs(rng: Random, n: number, vocab: number, maxLen: number): number[][] {
  return Array.from({ length: n }, () =>
    Array.from({ length: rng.int(1, maxLen) }, () => rng.int(0, vocab - 1)),
  );
}

function streamOf(docs: number[][], eos: number): number[] {
  return docs.flatMap((d) => [...d, eos]);
}

function readAll(ds: TokenDataset, split: string): number[] {
  const s = ds.split(split);
  const out = new Int32Array(s.length);
  s.read(0, s.length, out);
  return Array.from(out);
}

describe('token shards', () => {
  for (const [vocab, dtype, bpt] of [
    [1000, 'uint16', 2],
    [70000, 'uint32', 4],
  ] as const) {
    it(`round trip with ${dtype} tokens across several shards, both read modes`, () => {
      const dir = tmpDir(dtype);
      const rng = new Random(7);
      const train = randomDocs(rng, 20, vocab, 30);
      const val = randomDocs(rng, 5, vocab, 30);
      // ids near the top of the range exercise the width
      train[0].push(vocab - 1, vocab - 2);
      const eos = vocab - 1;
      const index = writeTokenSplits(
        dir,
        { train: { documents: train }, val: { documents: val } },
        { vocabSize: vocab, eosTokenId: eos, maxShardTokens: 37 },
      );
      assert.equal(index.dtype, dtype);
      const expTrain = streamOf(train, eos);
      assert.equal(index.splits.train.tokens, expTrain.length);
      assert.equal(index.splits.train.documents, 20);
      assert.equal(index.splits.train.shards.length, Math.ceil(expTrain.length / 37));
      for (const sh of index.splits.train.shards)
        assert.equal(fs.statSync(path.join(dir, sh.file)).size, sh.tokens * bpt);
      for (const mode of ['memory', 'read'] as const) {
        const ds = TokenDataset.open(dir, mode);
        assert.deepEqual(readAll(ds, 'train'), expTrain, `${mode}: train stream`);
        assert.deepEqual(readAll(ds, 'val'), streamOf(val, eos), `${mode}: val stream`);
        // windows that start and end inside different shards
        const s = ds.split('train');
        for (let k = 0; k < 50; k++) {
          const start = rng.int(0, s.length - 80);
          const out = new Int32Array(80);
          s.read(start, 80, out);
          assert.deepEqual(Array.from(out), expTrain.slice(start, start + 80), `${mode}: window at ${start}`);
        }
        assert.throws(() => s.read(s.length - 2, 3, new Int32Array(3)), /outside split train/);
        ds.close();
      }
    });
  }

  it('rejects a truncated shard and a missing split with messages naming them', () => {
    const dir = tmpDir('bad');
    const idx = writeTokenSplits(
      dir,
      { train: { documents: [[1, 2, 3, 4]] } },
      { vocabSize: 10, eosTokenId: 0 },
    );
    const shard = path.join(dir, idx.splits.train.shards[0].file);
    const ds = TokenDataset.open(dir);
    assert.throws(() => ds.split('val'), /no split "val" \(have train\)/);
    fs.truncateSync(shard, 3);
    assert.throws(
      () => TokenDataset.open(dir).split('train'),
      /train-00000\.bin: 3 bytes, expected 5 uint16 tokens/,
    );
    assert.throws(() => TokenDataset.open(path.join(dir, 'nope')), /index\.json: not found/);
  });
});

describe('prepare', () => {
  function corpus(dir: string): { a: string; b: string; j: string } {
    const rng = new Random(3);
    const words = ['the', 'whale', 'Ishmael', 'sea', 'ship,', 'naïve', '—', 'ocean.', 'über'];
    const line = (): string =>
      Array.from({ length: rng.int(1, 12) }, () => words[rng.int(0, words.length)]).join(' ');
    const text = (lines: number): string => Array.from({ length: lines }, () => line()).join('\n') + '\n';
    fs.mkdirSync(path.join(dir, 'in', 'sub'), { recursive: true });
    const a = path.join(dir, 'in', 'a.txt');
    const b = path.join(dir, 'in', 'sub', 'b.txt');
    const j = path.join(dir, 'in', 'c.jsonl');
    fs.writeFileSync(a, text(400));
    fs.writeFileSync(b, '\n\n  ' + text(300) + '\n\n\n');
    fs.writeFileSync(
      j,
      Array.from({ length: 50 }, (_, i) => JSON.stringify({ id: i, body: `${line()}\n${line()}` })).join(
        '\n',
      ) + '\n',
    );
    return { a, b, j };
  }

  it('text and JSONL to shards: exact byte streams, EOS after each document, tail split at a newline', () => {
    const dir = tmpDir('prep');
    const { a, b, j } = corpus(dir);
    const out = path.join(dir, 'out');
    const seen: number[] = [];
    const { index } = prepareTokens(byteTokenizer, {
      inputs: [path.join(dir, 'in')],
      out,
      valFraction: 0.1,
      jsonlField: 'body',
      chunkBytes: 64, // many pieces: any dropped or repeated byte would show
      onProgress: (p) => seen.push(p.bytesDone),
    });
    assert.ok(seen.length > 10 && seen.every((v, i) => i === 0 || v >= seen[i - 1]), 'progress is monotone');
    // files in sorted order: a.txt, c.jsonl, sub/b.txt
    const expected = { train: [] as number[], val: [] as number[] };
    let docs = { train: 0, val: 0 };
    for (const f of [a, j, b]) {
      const bytes = fs.readFileSync(f);
      const cutAt = Math.floor(bytes.length * 0.9);
      const cut = bytes.indexOf(0x0a, cutAt) + 1;
      if (f.endsWith('.jsonl')) {
        let pos = 0;
        for (const line of bytes.toString('utf8').split('\n')) {
          const lineBytes = Buffer.byteLength(line) + 1;
          if (line) {
            const split = pos >= cut ? 'val' : 'train';
            expected[split].push(...Buffer.from(JSON.parse(line).body as string), 256);
            docs[split]++;
          }
          pos += lineBytes;
        }
      } else {
        expected.train.push(...bytes.subarray(0, cut), 256);
        expected.val.push(...bytes.subarray(cut), 256);
        docs = { train: docs.train + 1, val: docs.val + 1 };
      }
    }
    const ds = TokenDataset.open(out);
    assert.equal(ds.index.dtype, 'uint16');
    assert.equal(ds.eosTokenId, 256);
    assert.deepEqual(readAll(ds, 'train'), expected.train);
    assert.deepEqual(readAll(ds, 'val'), expected.val);
    assert.equal(index.splits.train.documents, docs.train);
    assert.equal(index.splits.val.documents, docs.val);
    // about 10% of the bytes are held out (each cut moves forward to the next newline)
    const frac = index.splits.val.tokens / (index.splits.val.tokens + index.splits.train.tokens);
    assert.ok(frac > 0.085 && frac < 0.115, `held-out fraction ${frac}`);
    const src = index.sources.find((s) => s.path === a)!;
    assert.equal(src.splits.train.bytes + src.splits.val.bytes, fs.statSync(a).size);
  });

  it('explicit held-out files, and no held-out split with fraction 0', () => {
    const dir = tmpDir('prep2');
    const { a, b, j } = corpus(dir);
    const r1 = prepareTokens(byteTokenizer, {
      inputs: [a, j],
      valInputs: [b],
      out: path.join(dir, 'o1'),
      jsonlField: 'body',
    });
    assert.equal(r1.index.splits.val.tokens, fs.statSync(b).size + 1);
    assert.equal(r1.index.splits.val.documents, 1);
    const r2 = prepareTokens(byteTokenizer, { inputs: [a], out: path.join(dir, 'o2'), valFraction: 0 });
    assert.equal(r2.index.splits.val, undefined);
    assert.equal(r2.index.splits.train.tokens, fs.statSync(a).size + 1);
  });

  it('names the file, line and field when a JSONL document is missing', () => {
    const dir = tmpDir('prep3');
    const f = path.join(dir, 'x.jsonl');
    fs.writeFileSync(f, '{"text": "ok"}\n{"body": "no text"}\n');
    assert.throws(
      () => prepareTokens(byteTokenizer, { inputs: [f], out: path.join(dir, 'o') }),
      /x\.jsonl:2: field "text" missing/,
    );
    fs.writeFileSync(f, '{"text": "ok"}\n{not json\n');
    assert.throws(
      () => prepareTokens(byteTokenizer, { inputs: [f], out: path.join(dir, 'o') }),
      /x\.jsonl:2: not valid JSON/,
    );
    assert.throws(
      () => prepareTokens({ ...byteTokenizer, vocabSize: 100 }, { inputs: [f], out: path.join(dir, 'o') }),
      /EOS id 256 outside the vocabulary/,
    );
  });

  it('byte-level BPE gives the same tokens in pieces as on the whole text (phi-17m tokenizer)', async (t) => {
    const tokFile = path.join(shared, 'data/teachers/phi-17m/tokenizer.json');
    const textFile = path.join(shared, 'data/corpus/train/sotu.txt');
    if (!fs.existsSync(tokFile) || !fs.existsSync(textFile)) {
      t.skip(`${shared} is missing`);
      return;
    }
    const { Tokenizer } = await import('@huggingface/tokenizers');
    const tok = new Tokenizer(JSON.parse(fs.readFileSync(tokFile, 'utf8')), {});
    const enc: TokenEncoder = {
      encode: (s) => tok.encode(s, { add_special_tokens: false }).ids,
      eosTokenId: 0,
      vocabSize: 8192,
    };
    const dir = tmpDir('bpe');
    // 150 kB from the middle of a real file, with its blank lines and indentation
    const raw = fs.readFileSync(textFile);
    const start = raw.indexOf(0x0a, 200_000) + 1;
    const sample = path.join(dir, 'sample.txt');
    fs.writeFileSync(sample, raw.subarray(start, start + 150_000));
    const whole = prepareTokens(enc, {
      inputs: [sample],
      out: path.join(dir, 'whole'),
      valFraction: 0,
      chunkBytes: 0,
    });
    const pieces = prepareTokens(enc, {
      inputs: [sample],
      out: path.join(dir, 'pieces'),
      valFraction: 0,
      chunkBytes: 2048,
    });
    assert.ok(whole.index.splits.train.tokens > 20_000);
    assert.equal(pieces.index.splits.train.tokens, whole.index.splits.train.tokens);
    assert.deepEqual(
      readAll(TokenDataset.open(path.join(dir, 'pieces')), 'train'),
      readAll(TokenDataset.open(path.join(dir, 'whole')), 'train'),
    );
  });
  it('detects tokenizers that cannot be cut into pieces (SentencePiece) and then encodes whole documents', async (t) => {
    const bin = path.join(shared, 'data/stories260K/stories260K.bin');
    if (!fs.existsSync(bin)) {
      t.skip(`${shared} is missing`);
      return;
    }
    const { convertLlama2c } = await import('../src/io/llama2c.js');
    const { loadTokenizer } = await import('../src/io/tokenizer.js');
    const dir = tmpDir('sp');
    convertLlama2c(bin, path.join(shared, 'data/stories260K/tok512.model'), path.join(dir, 'model'));
    const tok = loadTokenizer(path.join(dir, 'model'));
    const enc: TokenEncoder = {
      encode: (x) => tok.encode(x, { addBos: false }),
      eosTokenId: tok.eosTokenId,
      vocabSize: tok.vocabSize,
    };
    assert.equal(piecesAreExact(enc), false);
    assert.equal(piecesAreExact(byteTokenizer), true);
    const text =
      Array.from({ length: 300 }, (_, i) => `Once upon a time, story ${i} had a cat.`).join(' ') + '\n';
    fs.writeFileSync(path.join(dir, 'story.txt'), text);
    const r = prepareTokens(enc, {
      inputs: [path.join(dir, 'story.txt')],
      out: path.join(dir, 'out'),
      valFraction: 0,
    });
    assert.deepEqual(readAll(TokenDataset.open(path.join(dir, 'out')), 'train'), [
      ...Array.from(enc.encode(text)),
      tok.eosTokenId,
    ]);
    assert.equal(r.index.eos_token_id, 2);
  });
});

describe('batch samplers', () => {
  const dir = tmpDir('samplers');
  const rng = new Random(11);
  const docs = randomDocs(rng, 40, 500, 60);
  writeTokenSplits(
    dir,
    { train: { documents: docs } },
    { vocabSize: 500, eosTokenId: 499, maxShardTokens: 101 },
  );
  const stream = streamOf(docs, 499);
  const split = TokenDataset.open(dir).split('train');

  function checkWindows(b: Batch): number[] {
    const starts: number[] = [];
    for (let r = 0; r < b.batch; r++) {
      const inp = Array.from(b.input.subarray(r * b.seqLen, (r + 1) * b.seqLen));
      const tgt = Array.from(b.target.subarray(r * b.seqLen, (r + 1) * b.seqLen));
      assert.deepEqual(tgt.slice(0, -1), inp.slice(1), 'target is input shifted by one');
      // the row is a contiguous piece of the stream
      const s = stream.findIndex(
        (_, i) =>
          i + b.seqLen < stream.length &&
          stream.slice(i, i + b.seqLen + 1).every((v, k) => v === [...inp, tgt[tgt.length - 1]][k]),
      );
      assert.ok(s >= 0, 'row found in the stream');
      starts.push(s);
    }
    return starts;
  }

  it('random windows: contiguous, seeded, and different seeds differ', () => {
    const a = new RandomWindows(split, 3, 16, 5);
    const b = new RandomWindows(split, 3, 16, 5);
    const c = new RandomWindows(split, 3, 16, 6);
    for (let k = 0; k < 5; k++) {
      const ba = a.next();
      checkWindows(ba);
      assert.deepEqual(ba, b.next());
      assert.notDeepEqual(ba.input, c.next().input);
    }
  });

  it('packed sequential windows: back to back in order, each window once per shuffled epoch', () => {
    const T = 20;
    const seq = new SequentialWindows(split, 4, T);
    const W = Math.floor((stream.length - 1) / T);
    assert.equal(seq.windows, W);
    const first = seq.next();
    assert.deepEqual(checkWindows(first).length, 4);
    for (let r = 0; r < 4; r++)
      assert.deepEqual(Array.from(first.input.subarray(r * T, (r + 1) * T)), stream.slice(r * T, r * T + T));
    const sh = new SequentialWindows(split, 5, T, { shuffle: true, seed: 9 });
    const count = new Map<number, number>();
    const starts: number[] = [];
    const batches = Math.ceil(W / 5);
    for (let k = 0; k < batches; k++) {
      const b = sh.next();
      for (let r = 0; r < 5; r++) starts.push(findStart(b, r));
    }
    function findStart(b: Batch, r: number): number {
      for (let w = 0; w < W; w++)
        if (stream.slice(w * T, w * T + T).every((v, i) => v === b.input[r * T + i])) return w;
      return -1;
    }
    for (const s of starts.slice(0, W)) count.set(s, (count.get(s) ?? 0) + 1);
    assert.equal(count.size, W, 'every window appears in the first epoch');
    assert.ok(!count.has(-1));
    assert.notDeepEqual(starts.slice(0, W), [...Array(W).keys()], 'shuffled');
    assert.equal(sh.position.epoch, 1, 'wrapped into the second epoch');
  });

  it('resume from a JSON state continues exactly (both samplers, across an epoch boundary)', () => {
    const makers = [
      () => new RandomWindows(split, 3, 16, 42),
      () => new SequentialWindows(split, 7, 16, { shuffle: true, seed: 3 }),
      () => new SequentialWindows(split, 7, 16),
    ];
    for (const make of makers) {
      const ref = make();
      const run = make();
      for (let k = 0; k < 20; k++) run.next();
      const state = JSON.parse(JSON.stringify(run.state()));
      for (let k = 0; k < 20; k++) ref.next();
      const resumed = make();
      resumed.restore(state);
      for (let k = 0; k < 30; k++) assert.deepEqual(resumed.next(), ref.next(), `batch ${k} after resume`);
    }
    const other = new SequentialWindows(split, 7, 32);
    assert.throws(
      () => other.restore(new SequentialWindows(split, 7, 16).state()),
      /seqLen 16 differs from 32/,
    );
  });

  it('two batches of B/2 rows hold the rows of one batch of B', () => {
    for (const make of [
      (b: number) => new RandomWindows(split, b, 12, 1),
      (b: number) => new SequentialWindows(split, b, 12, { shuffle: true, seed: 1 }),
    ]) {
      const full = make(4);
      const half = make(2);
      for (let k = 0; k < 5; k++) {
        const f = full.next();
        const h1 = half.next();
        const h2 = half.next();
        assert.deepEqual(f.input, Int32Array.from([...h1.input, ...h2.input]));
        assert.deepEqual(f.target, Int32Array.from([...h1.target, ...h2.target]));
      }
    }
  });

  it('evaluation batches cover every window once; tensors have shape (B, T)', () => {
    const T = 25;
    const W = Math.floor((stream.length - 1) / T);
    let rows = 0;
    let last: Batch | null = null;
    for (const b of evalBatches(split, 6, T)) {
      for (let r = 0; r < b.batch; r++)
        assert.deepEqual(
          Array.from(b.input.subarray(r * T, (r + 1) * T)),
          stream.slice((rows + r) * T, (rows + r) * T + T),
        );
      rows += b.batch;
      last = b;
    }
    assert.equal(rows, W);
    assert.equal(last!.batch, W % 6 || 6);
    const { input, target } = toTensors(last!);
    assert.deepEqual(input.shape, [last!.batch, T]);
    assert.equal(target.dtype, 'i32');
    assert.deepEqual(Array.from(target.toArray()), Array.from(last!.target));
  });
});

describe('commands and teacher samples', () => {
  const capture = async (fn: () => Promise<number>): Promise<{ code: number; out: string }> => {
    const orig = console.log;
    const err = process.stderr.write.bind(process.stderr);
    let out = '';
    console.log = (...a: unknown[]) => void (out += a.join(' ') + '\n');
    process.stderr.write = (() => true) as typeof process.stderr.write;
    try {
      return { code: await fn(), out };
    } finally {
      console.log = orig;
      process.stderr.write = err;
    }
  };

  it('mohawk data prepare / info with a tokenizer directory', async () => {
    const { byteTokenizer: makeByteTokenizer } = await import('../src/io/tokenizer.js');
    const cmd = await import('../src/cli/commands/data.js');
    const dir = tmpDir('cli');
    makeByteTokenizer().save(path.join(dir, 'tok'));
    fs.writeFileSync(path.join(dir, 'a.txt'), 'hello world\n'.repeat(50));
    fs.writeFileSync(path.join(dir, 'b.jsonl'), '{"t": "one"}\n{"t": "two"}\n');
    const out = path.join(dir, 'out');
    const r = await capture(() =>
      cmd.run([
        'prepare',
        '--tokenizer',
        path.join(dir, 'tok'),
        '--input',
        path.join(dir, 'a.txt'),
        '--val',
        path.join(dir, 'b.jsonl'),
        '--jsonl-field',
        't',
        '--out',
        out,
      ]),
    );
    assert.equal(r.code, 0);
    assert.match(r.out, /a\.txt\s+train\s+600 B\s+1\s+601/);
    assert.match(r.out, /total val\s+val\s+2\s+8/);
    const ds = TokenDataset.open(out);
    assert.deepEqual(readAll(ds, 'val'), [...Buffer.from('one'), 256, ...Buffer.from('two'), 256]);
    const info = await capture(() => cmd.run(['info', out, '--json']));
    assert.equal(JSON.parse(info.out).splits.train.tokens, 601);
    await assert.rejects(
      cmd.run(['prepare', '--tokenizer', path.join(dir, 'tok'), '--out', out]),
      /--input is required/,
    );
  });

  it('batched teacher sampling: greedy rows equal batch-1 greedy decoding, seeded runs repeat', async (t) => {
    const modelDir = path.join(shared, 'fixtures/reference/llama-tied');
    if (!fs.existsSync(modelDir)) {
      t.skip(`${shared} is missing`);
      return;
    }
    const { loadModel } = await import('../src/models/load.js');
    const { generateIds } = await import('../src/generate/generate.js');
    const { sampleDocuments } = await import('../src/generate/sample-data.js');
    const { model } = loadModel(modelDir, { tokenizer: false });
    // separators none, so each row is one document of seqLen - 1 tokens
    const greedy = sampleDocuments(model, {
      tokens: 3 * 11,
      batch: 3,
      seqLen: 12,
      temperature: 0,
      separators: [],
    });
    const single = generateIds(model, [1], { maxNewTokens: 11, temperature: 0, stopAtEos: false });
    assert.deepEqual(greedy, [single, single, single]);
    const a = sampleDocuments(model, { tokens: 60, batch: 4, seqLen: 16, seed: 3 });
    const b = sampleDocuments(model, { tokens: 60, batch: 4, seqLen: 16, seed: 3 });
    const c = sampleDocuments(model, { tokens: 60, batch: 4, seqLen: 16, seed: 4 });
    assert.deepEqual(a, b);
    assert.notDeepEqual(a, c);
    assert.ok(
      a.flat().every((id) => id !== 1 && id !== 2),
      'separators removed',
    );
    assert.ok(a.flat().length >= 50 && a.flat().length <= 60);
  });
});
