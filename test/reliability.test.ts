// Reliability (issue 19): config ranges, --set safety, atomic state files and resume fallbacks,
// divergence that never saves, output directories that keep what mohawk did not write, token ids
// checked against the vocabulary, tokenizer edges, and a short run of the fuzz harness.

import assert from 'node:assert/strict';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { describe, it } from 'node:test';
import { ConfigError, applyOverrides, checkAgainstTeacher, validateConfig } from '../src/distill/config.js';
import { DATA_RECORD_FILE, openData, runDistill } from '../src/distill/pipeline.js';
import { LlamaForCausalLM } from '../src/models/llama.js';
import { byteTokenizer, HuggingFaceTokenizer, loadTokenizer } from '../src/io/tokenizer.js';
import { regexHazard } from '../src/io/tokenizer-checks.js';
import { chooseCut, encodeInPieces } from '../src/io/long-text.js';
import { readSentencePieceModel, sentencePieceTokenizerJson } from '../src/io/llama2c.js';
import { CudaBackend } from '../src/backends/cuda/index.js';
import { spawnSync } from 'node:child_process';
import { TokenDataset, writeTokenSplits } from '../src/data/shards.js';
import { readLatest, writeCheckpoint } from '../src/train/checkpoint.js';
import { readMetrics } from '../src/train/metrics.js';
import { DivergenceError } from '../src/train/trainer.js';
import { firstNonFinite } from '../src/train/params.js';
import { writeFileAtomic } from '../src/util/fs.js';
import { Random } from '../src/util/random.js';
import { makeData, runTiny, TinyLM } from './train-fixture.js';
import { sum, square, scale, add } from '../src/tensor/index.js';

const tmp = (tag = 'rely') => fs.mkdtempSync(path.join(os.tmpdir(), `mohawk-${tag}-`));
const OK = { teacher: 't', data: { train: ['x'] }, stages: [{ stage: 3, tokens: 65536 }] };

describe('distill config ranges', () => {
  const stage = (extra: Record<string, unknown>) => ({
    ...OK,
    stages: [{ stage: 3, tokens: 65536, ...extra }],
  });
  it('absurd batch, state and token counts are refused with the field named', () => {
    assert.throws(
      () => validateConfig(stage({ microBatch: 1e9 }), 'c.yaml'),
      /c\.yaml: stages\[0\]\.microBatch must be at most 65536, got 1000000000/,
    );
    assert.throws(
      () => validateConfig(stage({ tokens: 1e300 }), 'c.yaml'),
      /stages\[0\]\.tokens must be at most 1000000000000000/,
    );
    assert.throws(
      () => validateConfig(stage({ batchTokens: 2 ** 53 }), 'c.yaml'),
      /stages\[0\]\.batchTokens must be at most/,
    );
    assert.throws(
      () => validateConfig(stage({ seqLen: 1 << 21 }), 'c.yaml'),
      /stages\[0\]\.seqLen must be at most/,
    );
    assert.throws(
      () => validateConfig(stage({ microBatch: 4096, seqLen: 8192, batchTokens: 4096 * 8192 }), 'c.yaml'),
      /stages\[0\]\.microBatch x seqLen \(4096 x 8192 = 33554432\) must be at most 16777216/,
    );
    assert.throws(
      () => validateConfig(stage({ microBatch: 3, seqLen: 100, batchTokens: 1000 }), 'c.yaml'),
      /stages\[0\]\.batchTokens \(1000\) must be a multiple of microBatch x seqLen \(3 x 100 = 300\)/,
    );
    assert.throws(
      () => validateConfig({ ...OK, student: { dState: 1e6 } }, 'c.yaml'),
      /student\.dState must be at most 4096, got 1000000/,
    );
    assert.throws(
      () => validateConfig({ ...OK, data: { train: ['x'], valTokens: 1e300 } }, 'c.yaml'),
      /data\.valTokens must be at most/,
    );
    assert.doesNotThrow(() =>
      validateConfig(stage({ microBatch: 8, seqLen: 256, batchTokens: 8192 }), 'c.yaml'),
    );
  });

  it('a seqLen beyond the teacher positions is refused once the teacher is known', () => {
    const cfg = validateConfig(stage({ seqLen: 512, microBatch: 16 }), 'c.yaml');
    assert.throws(
      () => checkAgainstTeacher(cfg, { maxSeqLen: 256 }, 'c.yaml'),
      /c\.yaml: stages\[0\]\.seqLen \(512\) exceeds the teacher's 256 positions/,
    );
    assert.doesNotThrow(() => checkAgainstTeacher(cfg, { maxSeqLen: 512 }, 'c.yaml'));
  });
});

describe('--set overrides', () => {
  it('__proto__, constructor and prototype never reach Object.prototype', () => {
    for (const o of [
      '__proto__.polluted=1',
      'stages.__proto__.polluted=1',
      'constructor.prototype.polluted=1',
    ]) {
      assert.throws(() => applyOverrides({ stages: [{}] }, [o]), ConfigError);
      assert.equal(({} as Record<string, unknown>).polluted, undefined, o);
    }
    // an inherited name is a new key (which validation then refuses), not the inherited function
    assert.deepEqual(JSON.stringify(applyOverrides({}, ['toString.x=1'])), '{"toString":{"x":1}}');
    assert.equal(typeof Object.prototype.toString, 'function');
    assert.throws(
      () => validateConfig(applyOverrides(OK, ['toString.x=1']), 'c.yaml'),
      /c\.yaml: toString is not a known setting/,
    );
  });
  it('a YAML alias or a broken value is a clear error', () => {
    assert.throws(
      () => applyOverrides({}, ['seed=*a']),
      (e: Error) => e instanceof ConfigError && /--set seed=\*a: the value is not valid YAML/.test(e.message),
    );
    assert.throws(() => applyOverrides({}, ['a..b=1']), /empty name in the path/);
    assert.deepEqual(applyOverrides({}, ['a.b=[1, 2]']), { a: { b: [1, 2] } });
  });
});

describe('state files', () => {
  it('writeFileAtomic replaces the file whole and leaves no temporary', () => {
    const dir = tmp();
    const f = path.join(dir, 'done.json');
    writeFileAtomic(f, 'old');
    writeFileAtomic(f, '{"a": 1}');
    assert.equal(fs.readFileSync(f, 'utf8'), '{"a": 1}');
    assert.deepEqual(fs.readdirSync(dir), ['done.json']);
    assert.throws(
      () => writeFileAtomic(path.join(dir, 'missing', 'x.json'), 'x'),
      /missing\/x\.json: cannot write/,
    );
  });

  it('a damaged or missing latest.json falls back to the newest complete checkpoint, with one warning', () => {
    const dir = tmp();
    const data = makeData(path.join(dir, 'data'));
    const ckpt = path.join(dir, 'ckpt');
    runTiny({ data, steps: 6, checkpointEvery: 2, checkpointDir: ckpt });
    // a half-written newer checkpoint and a cut latest.json
    fs.mkdirSync(path.join(ckpt, 'step-00000008'));
    fs.writeFileSync(path.join(ckpt, 'step-00000008', 'state.json'), '{"st');
    for (const damage of ['', '{"step": 6, "dir": "step-000', '{"step": 9, "dir": "step-00000009"}']) {
      fs.writeFileSync(path.join(ckpt, 'latest.json'), damage);
      const warnings: string[] = [];
      const latest = readLatest(ckpt, (l) => warnings.push(l));
      assert.equal(latest?.step, 6);
      assert.equal(warnings.length, 1);
      assert.match(
        warnings[0],
        /latest\.json: .*; resuming from the newest complete checkpoint .*step-00000006/,
      );
    }
    fs.rmSync(path.join(ckpt, 'latest.json'));
    const warnings: string[] = [];
    assert.equal(readLatest(ckpt, (l) => warnings.push(l))?.step, 6);
    assert.match(warnings[0], /latest\.json: missing/);
    // and the trainer resumes from it (same steps: nothing left to do)
    const r = runTiny({ data, steps: 6, checkpointEvery: 2, checkpointDir: ckpt }, { warn: () => {} });
    assert.equal(r.result.resumedFrom, 6);
    // nothing to fall back to: the error names the file
    const empty = tmp();
    fs.writeFileSync(path.join(empty, 'latest.json'), '');
    assert.throws(() => readLatest(empty, () => {}), /latest\.json: not valid JSON.*no complete checkpoint/);
  });
});

describe('divergence', () => {
  const dir = tmp('div');
  const data = makeData(path.join(dir, 'data'));

  it('lr 1e39: stops at the first step with the step, the label and no checkpoint written', () => {
    const ckpt = path.join(dir, 'huge');
    assert.throws(
      () =>
        runTiny(
          { data, steps: 8, checkpointEvery: 1, checkpointDir: ckpt },
          { optimizer: { lr: 1e39 }, label: 'stage 3 (kd)', maxGradNorm: 0 },
        ),
      (e: Error) =>
        e instanceof DivergenceError &&
        /^stage 3 \(kd\): diverged at step 1: \S+ is not finite after the update/.test(e.message) &&
        /No checkpoint was written/.test(e.message),
    );
    assert.equal(
      readLatest(ckpt, () => {}),
      null,
      'nothing saved',
    );
  });

  it('weights turning non-finite mid-run: stopped before the next save, naming the last good checkpoint', () => {
    const ckpt = path.join(dir, 'mid');
    const m = new TinyLM(1);
    assert.throws(
      () =>
        runTiny(
          { data, steps: 8, checkpointEvery: 2, checkpointDir: ckpt },
          {
            params: m,
            lossFn: (b, ctx) => {
              // a poisoned update in step 5 (as an overflowing optimizer would leave it)
              if (ctx.step === 4) {
                const [, p] = m.namedParameters()[0];
                p.backend.write(p.buffer, new Float32Array(p.size).fill(Infinity));
              }
              return m.loss(b, null);
            },
            label: 'stage 2 (hidden)',
          },
        ),
      /stage 2 \(hidden\): diverged at step 5: .* The last good checkpoint is .*step-00000004\./,
    );
    assert.equal(readLatest(ckpt, () => {})?.step, 4);
  });

  it('after a loss that rose far above its start, the message names the last checkpoint of a sane loss', () => {
    const ckpt = path.join(dir, 'rise');
    const m = new TinyLM(1);
    assert.throws(
      () =>
        runTiny(
          { data, steps: 8, checkpointEvery: 1, checkpointDir: ckpt },
          {
            params: m,
            keepCheckpoints: 0,
            warn: () => {},
            lossFn: (b, ctx) => {
              if (ctx.step === 5) {
                const [, p] = m.namedParameters()[0];
                p.backend.write(p.buffer, new Float32Array(p.size).fill(NaN));
              }
              return scale(m.loss(b, null), ctx.step < 3 ? 1 : 100);
            },
          },
        ),
      (e: Error) =>
        /diverged at step 6: .* The last checkpoint, .*step-00000005, was written with the loss far above its start and may be damaged; the last good checkpoint is .*step-00000003\./.test(
          e.message,
        ),
    );
  });

  it('a checkpoint with a non-finite weight is never written', () => {
    const m = new TinyLM(1);
    const [, p] = m.namedParameters()[1];
    p.backend.write(p.buffer, new Float32Array(p.size).fill(NaN));
    assert.equal(firstNonFinite(m.namedParameters()), m.namedParameters()[1][0]);
    assert.throws(
      () => writeCheckpoint(path.join(dir, 'nan'), { params: m.namedParameters(), step: 1, state: {} }),
      /refusing to write the checkpoint of step 1: \S+ is not finite/,
    );
    assert.ok(!fs.existsSync(path.join(dir, 'nan')));
  });

  it('a loss rising far above its start is warned about once', () => {
    const warnings: string[] = [];
    const m = new TinyLM(1);
    runTiny(
      { data, steps: 6 },
      {
        params: m,
        warn: (l) => warnings.push(l),
        lossFn: (_b, ctx) =>
          scale(
            add(sum(square(m.namedParameters()[0][1])), sum(square(m.namedParameters()[3][1]))),
            ctx.step < 3 ? 1 : 100,
          ),
      },
    );
    assert.equal(warnings.length, 1, warnings.join('\n'));
    assert.match(warnings[0], /warning: loss \S+ at step 4 is far above its start/);
  });
});

/** A tiny byte-level teacher and a config for a one-stage run in `dir`. */
function tinyRun(dir: string) {
  const tok = byteTokenizer();
  const teacher = new LlamaForCausalLM(
    {
      vocabSize: tok.vocabSize,
      hiddenSize: 16,
      intermediateSize: 32,
      numLayers: 1,
      numHeads: 2,
      numKvHeads: 2,
      headDim: 8,
      rmsNormEps: 1e-5,
      ropeTheta: 10000,
      maxPositionEmbeddings: 64,
      tieWordEmbeddings: false,
      attentionBias: false,
      mlpBias: false,
      bosTokenId: 256,
      eosTokenId: 256,
    },
    { rng: new Random(1) },
  );
  const text = (seed: number) => {
    const r = new Random(seed);
    return Array.from({ length: 6000 }, (_, i) =>
      i % 6 === 5 ? ' ' : String.fromCharCode(97 + r.int(0, 8)),
    ).join('');
  };
  fs.writeFileSync(path.join(dir, 'a.txt'), text(1));
  fs.writeFileSync(path.join(dir, 'b.txt'), text(2).toUpperCase());
  const cfg = (train: string, extra: Record<string, unknown> = {}) =>
    validateConfig(
      {
        teacher: 'in memory',
        out: path.join(dir, 'out'),
        student: { chunkSize: 16 },
        data: { train: [path.join(dir, train)], valTokens: 256 },
        stageDefaults: { batchTokens: 128, microBatch: 4, seqLen: 32, checkpointEvery: 1 },
        stages: [{ stage: 3, tokens: 256, lr: 1e-3 }],
        ...extra,
      },
      'test',
    );
  const hooks = (log: string[]) => ({
    teacher: { model: teacher, tokenizer: tok },
    progress: false,
    log: (l: string) => log.push(l),
  });
  return { tok, teacher, cfg, hooks };
}

describe('output directories and resume of a distill run', () => {
  it('OUT/data is reused only for the same data configuration; a changed data.train re-tokenizes', () => {
    const dir = tmp('data');
    const { tok, cfg } = tinyRun(dir);
    const log: string[] = [];
    const first = openData(cfg('a.txt'), tok, (l) => log.push(l), 257);
    const a = new Int32Array(16);
    first.train.read(0, 16, a);
    assert.ok(fs.existsSync(path.join(dir, 'out', 'data', DATA_RECORD_FILE)));
    openData(cfg('a.txt'), tok, (l) => log.push(l), 257);
    assert.match(log.at(-1)!, /reusing .*data \(same data configuration\)/);
    const second = openData(cfg('b.txt'), tok, (l) => log.push(l), 257);
    assert.ok(
      log.some((l) => /re-tokenizing .*data: data\.train differs/.test(l)),
      log.join('\n'),
    );
    const b = new Int32Array(16);
    second.train.read(0, 16, b);
    assert.deepEqual(
      Array.from(b),
      Array.from(
        tok.encode(fs.readFileSync(path.join(dir, 'b.txt'), 'utf8').slice(0, 16), { addBos: false }),
      ),
      'the new file was tokenized',
    );
    assert.notDeepEqual(Array.from(a), Array.from(b));
    // a changed file (same name) also re-tokenizes
    fs.appendFileSync(path.join(dir, 'b.txt'), ' MORE');
    openData(cfg('b.txt'), tok, (l) => log.push(l), 257);
    assert.match(log.at(-2)!, /re-tokenizing .*: an input file changed/);
  });

  it('token ids beyond the model vocabulary are found when the data is opened', () => {
    const dir = tmp('ids');
    const { cfg } = tinyRun(dir);
    writeTokenSplits(
      path.join(dir, 'prep'),
      { train: { documents: [[1, 2, 3, 300, 4]] }, val: { documents: [[1, 2]] } },
      { vocabSize: 512, eosTokenId: 0 },
    );
    assert.throws(
      () => openData(cfg('prep'), null, () => {}, 257),
      /train-00000\.bin: token 3 is id 300, outside the model's vocabulary of 257/,
    );
    // a prepared index whose val split is null
    const idx = path.join(dir, 'prep', 'index.json');
    const index = JSON.parse(fs.readFileSync(idx, 'utf8'));
    index.splits.val = null;
    fs.writeFileSync(idx, JSON.stringify(index));
    assert.throws(
      () => TokenDataset.open(path.join(dir, 'prep')),
      /index\.json: splits\.val must be \{tokens, documents, shards\}, got null/,
    );
  });

  it('a fresh run keeps files mohawk did not write and says what it replaces; a damaged done.json resumes', () => {
    const dir = tmp('out');
    const { cfg, hooks } = tinyRun(dir);
    const log: string[] = [];
    const c = cfg('a.txt');
    const r1 = runDistill(c, hooks(log));
    const stage = path.join(dir, 'out', 'stage1-kd');
    fs.writeFileSync(path.join(stage, 'my-notes.txt'), 'keep me');
    const log2: string[] = [];
    const r2 = runDistill(c, hooks(log2));
    assert.equal(fs.readFileSync(path.join(stage, 'my-notes.txt'), 'utf8'), 'keep me');
    assert.ok(
      log2.some((l) =>
        /fresh run in .*out: replacing stage1-kd\/ \(finished\), student, results\.json/.test(l),
      ),
      log2.join('\n'),
    );
    assert.ok(
      log2.some((l) => /kept 1 file\(s\) mohawk did not write in .*stage1-kd: my-notes\.txt/.test(l)),
    );
    assert.equal(r2.stages[0].loss, r1.stages[0].loss, 'the same run again');
    // a kill while done.json was written (an empty file) and a cut latest.json: resume still works
    fs.writeFileSync(path.join(stage, 'done.json'), '');
    fs.writeFileSync(path.join(stage, 'latest.json'), '{"st');
    const log3: string[] = [];
    const r3 = runDistill(c, hooks(log3), true);
    assert.ok(
      log3.some((l) => /^warning: .*done\.json: not valid JSON .*; finishing the stage again/.test(l)),
      log3.join('\n'),
    );
    assert.deepEqual([r3.stages[0].loss, r3.stages[0].valPpl], [r1.stages[0].loss, r1.stages[0].valPpl]);
    assert.ok(JSON.parse(fs.readFileSync(path.join(stage, 'done.json'), 'utf8')).valPpl > 0);
  });
});

describe('tokenizer safety', () => {
  const base = () => structuredClone((byteTokenizer() as unknown as { json: Record<string, unknown> }).json);
  const build = (json: Record<string, unknown>) =>
    new HuggingFaceTokenizer(json, { bos_token: '<|endoftext|>', eos_token: '<|endoftext|>' }, 'tok.json');

  it('refuses regular expressions that backtrack exponentially, accepts the published ones', () => {
    for (const p of ['(a+)+$', '(a|a)*b', '(\\w+\\s?)*$', '(.*){1,32}x', '(a)\\1'])
      assert.ok(regexHazard(p), p);
    for (const p of [
      "'s|'t|'re|'ve|'m|'ll|'d| ?\\p{L}+| ?\\p{N}+| ?[^\\s\\p{L}\\p{N}]+|\\s+(?!\\S)|\\s+",
      "(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}{1,3}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+",
      "[^\\r\\n\\p{L}\\p{N}]?[\\p{Lu}\\p{Lt}\\p{Lm}\\p{Lo}\\p{M}]*[\\p{Ll}\\p{Lm}\\p{Lo}\\p{M}]+(?i:'s|'t|'re)?",
      '[()+*]+',
      '(ab)+',
    ])
      assert.equal(regexHazard(p), null, p);
    const json = base();
    json.pre_tokenizer = {
      type: 'Sequence',
      pretokenizers: [
        { type: 'Split', pattern: { Regex: '(a+)+$' }, behavior: 'Isolated', invert: false },
        json.pre_tokenizer,
      ],
    };
    const t0 = performance.now();
    assert.throws(
      () => build(json),
      /tok\.json: pre_tokenizer\.pretokenizers\[0\]\.pattern has an unsafe regular expression "\(a\+\)\+\$": a repeated group that itself repeats/,
    );
    assert.ok(performance.now() - t0 < 1000);
  });

  it('ids beyond the vocabulary and malformed post-processors fail at load, naming the field', () => {
    const json = base();
    (json.added_tokens as Record<string, unknown>[])[0].id = 1e9;
    const t0 = performance.now();
    assert.throws(
      () => build(json),
      /tok\.json: added_tokens\[0\]\.id \(1000000000\) must be an integer id below 258/,
    );
    assert.ok(performance.now() - t0 < 1000, 'refused at once');
    const cases: [unknown, RegExp][] = [
      [{ type: 'TemplateProcessing', single: 'x' }, /post_processor\.single must be a list of pieces/],
      [
        {
          type: 'TemplateProcessing',
          single: [{ SpecialToken: { id: '<s>', type_id: 0 } }],
          special_tokens: {},
        },
        /post_processor\.single\[0\] names the special token "<s>", missing from special_tokens/,
      ],
      [
        {
          type: 'TemplateProcessing',
          single: [{ SpecialToken: { id: 'E', type_id: 0 } }],
          special_tokens: { E: { id: 'E', ids: [256], tokens: ['E'] } },
        },
        /post_processor\.single must place the text \(Sequence A\)/,
      ],
      [{ type: 'Sequence', processors: 'nope' }, /post_processor\.processors must be a list/],
      [{ type: 'BertProcessing', sep: 5 }, /post_processor\.sep must be \["token", id\], got 5/],
      [{ type: 'Bogus' }, /post_processor\.type "Bogus" is not a known post-processor/],
    ];
    for (const [pp, re] of cases) {
      const j = base();
      j.post_processor = pp;
      assert.throws(() => build(j), re);
    }
  });

  it('a truncated SentencePiece .model names the file and what is cut', () => {
    const src = path.resolve(import.meta.dirname, '../../shared/data/stories260K/tok512.model');
    if (!fs.existsSync(src)) return;
    const bytes = fs.readFileSync(src);
    const dir = tmp('spm');
    for (const n of [4, 100, 1000, bytes.length - 40]) {
      const f = path.join(dir, `t${n}.model`);
      fs.writeFileSync(f, bytes.subarray(0, n));
      assert.throws(
        () => readSentencePieceModel(f),
        (e: Error) => e.message.startsWith(`${f}: `) && /truncated|trainer_spec/.test(e.message),
      );
    }
    assert.equal(readSentencePieceModel(src).pieces.length, 512);
  });

  it('long texts are encoded in bounded pieces, with the same ids as whole', () => {
    const tok = byteTokenizer();
    const r = new Random(3);
    const words = ['the', 'cat', 'über', 'naïve', '42', 'end.\n', '  spaced', '\tx'];
    const text = Array.from({ length: 4000 }, () => words[r.int(0, words.length)]).join(' ');
    const raw = (t: string) => Array.from(tok.encode(t, { addBos: false }));
    let longest = 0;
    const spy = (t: string) => {
      longest = Math.max(longest, t.length);
      return raw(t);
    };
    const kind = chooseCut(raw);
    assert.equal(kind, 'before-space');
    const pieces = encodeInPieces(text, spy, kind, 512);
    assert.ok(longest <= 513 && longest > 100, `longest piece ${longest}`);
    assert.deepEqual(
      pieces,
      Array.from(new TextEncoder().encode(text)),
      'the byte tokenizer: ids are the bytes',
    );
    // the tokenizer itself never hands the library more than a piece of a long text
    const inner = (tok as unknown as { tok: { encode: (t: string, o: object) => { ids: number[] } } }).tok;
    const orig = inner.encode.bind(inner);
    let biggest = 0;
    inner.encode = (t: string, o: object) => {
      biggest = Math.max(biggest, t.length);
      return orig(t, o);
    };
    const ids = tok.encode(text.repeat(5), { addBos: false });
    assert.equal(ids.length, new TextEncoder().encode(text.repeat(5)).length);
    assert.ok(biggest < 4096, `the library saw ${biggest} characters at once`);
  });

  it('a SentencePiece-style tokenizer (tok512) gives the same ids in pieces as whole', (t) => {
    const src = path.resolve(import.meta.dirname, '../../shared/data/stories260K/tok512.model');
    if (!fs.existsSync(src)) return t.skip('no tok512.model');
    const sp = new HuggingFaceTokenizer(sentencePieceTokenizerJson(readSentencePieceModel(src)), {}, src);
    const r = new Random(4);
    const words = ['Once', 'upon', 'a', 'time,', 'Lily', 'saw', '42', 'cats.\n', '"Hi!"', 'über', '<s>'];
    const text = Array.from({ length: 1500 }, () => words[r.int(0, words.length)]).join(' ');
    assert.ok(text.length > 6000);
    const inner = (sp as unknown as { tok: { encode: (t: string, o: object) => { ids: number[] } } }).tok;
    const whole = inner.encode(text, { add_special_tokens: false }).ids;
    assert.deepEqual(sp.encode(text, { addBos: false }), whole);
  });

  it('a byte-level BPE tokenizer (phi-17m) gives the same ids in pieces as whole', (t) => {
    const dir = path.resolve(import.meta.dirname, '../../shared/data/teachers/phi-17m');
    if (!fs.existsSync(path.join(dir, 'tokenizer.json'))) return t.skip('no phi-17m');
    const tok = loadTokenizer(dir);
    const r = new Random(5);
    const words = [
      'Once',
      'upon',
      'a',
      'time,',
      '  two',
      '42',
      'cats.\n',
      '\tTab',
      'über',
      '<|endoftext|>',
      '\n\n',
    ];
    const text = Array.from({ length: 1500 }, () => words[r.int(0, words.length)]).join(' ');
    const inner = (tok as unknown as { tok: { encode: (t: string, o: object) => { ids: number[] } } }).tok;
    assert.deepEqual(
      tok.encode(text, { addBos: false }),
      inner.encode(text, { add_special_tokens: false }).ids,
    );
  });
});

describe('commands', () => {
  it('sample-data checks that the output is writable before loading or sampling anything', async () => {
    const dir = tmp('cli');
    const file = path.join(dir, 'a-file');
    fs.writeFileSync(file, '');
    const { run } = await import('../src/cli/commands/sample-data.js');
    await assert.rejects(
      run(['--model', path.join(dir, 'no-model'), '--tokens', '10', '--out', path.join(file, 'out.jsonl')]),
      /--out .*a-file\/out\.jsonl: cannot write there \(E[A-Z]+\)/,
    );
  });
});

describe('cuda embedding: an id outside the vocabulary is an error', { skip: cudaSkip() }, () => {
  it('the launch fails instead of returning a zero row', () => {
    const root = path.resolve(import.meta.dirname, '..');
    const script = `
      const { useDevice } = await import('./src/tensor/device.ts');
      await useDevice('cuda');
      const { tensor, embedding } = await import('./src/tensor/index.ts');
      const table = tensor(new Float32Array(8).fill(1), [4, 2]);
      const out = embedding(table, tensor([0, 9], [2], 'i32')).toArray();
      console.log('no error', Array.from(out));`;
    const r = spawnSync(process.execPath, ['--import', 'tsx', '--input-type=module', '-e', script], {
      cwd: root,
      encoding: 'utf8',
    });
    assert.notEqual(r.status, 0, r.stdout);
    assert.doesNotMatch(r.stdout, /no error/);
  });
});

function cudaSkip(): string | false {
  try {
    new CudaBackend();
    return false;
  } catch (e) {
    return `no CUDA device: ${(e as Error).message.split('\n')[0]}`;
  }
}

describe('metrics', () => {
  it('a last line cut short by a kill is skipped; damage elsewhere names the line', () => {
    const f = path.join(tmp('metrics'), 'metrics.jsonl');
    fs.writeFileSync(f, '{"step": 1, "loss": 2}\n{"step": 2, "loss": 1.5}\n{"step": 3, "lo');
    assert.deepEqual(
      readMetrics(f).map((m) => m.step),
      [1, 2],
    );
    fs.writeFileSync(f, '{"step": 1, "loss": 2}\n{"st\n{"step": 3, "loss": 1}\n');
    assert.throws(() => readMetrics(f), /metrics\.jsonl:2: not valid JSON/);
  });
});

describe('a diverging distill run', () => {
  it('lr 1e39 in stage 3: stops with the stage, the step and the last good checkpoint; no student written', () => {
    const dir = tmp('diverge');
    const { hooks } = tinyRun(dir);
    const c = validateConfig(
      {
        teacher: 'in memory',
        out: path.join(dir, 'out'),
        student: { chunkSize: 16 },
        data: { train: [path.join(dir, 'a.txt')], valTokens: 256 },
        stageDefaults: { batchTokens: 128, microBatch: 4, seqLen: 32, clip: 0 },
        stages: [
          { stage: 2, tokens: 256, lr: 1e-3 },
          { stage: 3, tokens: 1024, lr: 1e39 },
        ],
      },
      'test',
    );
    assert.throws(
      () => runDistill(c, hooks([])),
      (e: Error) =>
        e instanceof DivergenceError &&
        /^stage 3 \(knowledge distillation\): diverged at step 1: \S+ is not finite/.test(e.message) &&
        /the last good checkpoint is .*stage1-hidden\/step-00000002 \(the end of stage 2\)/.test(e.message),
    );
    assert.ok(!fs.existsSync(path.join(dir, 'out', 'student')), 'no student written');
    assert.ok(!fs.existsSync(path.join(dir, 'out', 'stage2-kd', 'done.json')));
  });
});
