// Long context: the passkey prompts (length, depth, the needle left out), the needle evaluation
// against direct greedy decoding and scoring, perplexity by position against per-piece scores,
// and the two commands end to end on a tiny teacher and its SSM student.

import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { describe, it } from 'node:test';
import { transferStudent } from '../src/distill/transfer.js';
import { answerDigits, evaluateNeedle, needleLengths, needlePromptText } from '../src/eval/needle.js';
import { perplexityByPosition } from '../src/eval/position.js';
import { tokenLogprobs } from '../src/eval/score.js';
import { generateIds } from '../src/generate/generate.js';
import { byteTokenizer } from '../src/io/tokenizer.js';
import { saveModel } from '../src/models/load.js';
import { Random } from '../src/util/random.js';
import { assertClose, tinyLlama } from './helpers.js';

const tok = byteTokenizer();
const teacher = tinyLlama({ maxPositionEmbeddings: 400 });
const student = transferStudent(teacher, { alphaInit: 0.9, chunkSize: 16 });

describe('passkey prompts', () => {
  it('fit the length, put the key at its depth, and leave it out on request', () => {
    for (const depth of [0, 0.5, 1]) {
      const text = needlePromptText(tok, 600, depth, '12345');
      const n = tok.encode(text).length;
      assert.ok(n <= 600 && n > 500, `length ${n}`);
      // the share of filler sentences before the key
      const at = text.indexOf('The pass key is 12345');
      const count = (t: string) => t.split('The grass is green').length - 1;
      const rel = count(text.slice(0, at)) / count(text);
      assert.ok(Math.abs(rel - depth) < 0.1, `depth ${depth}: key at ${rel.toFixed(2)}`);
      const without = needlePromptText(tok, 600, depth, '12345', false);
      assert.equal(without.includes('12345'), false);
      assert.equal(without.endsWith('The pass key is'), true);
    }
    assert.equal(answerDigits(' 71 432. Remember'), '71432');
    assert.equal(answerDigits(': abc'), '');
    assert.deepEqual(needleLengths(5000), [1024, 2048, 4096, 5000]);
    assert.deepEqual(needleLengths(1024), [1024]);
  });

  it('scores each trial as greedy decoding and direct scoring do; skips lengths past the context', () => {
    const r = evaluateNeedle(student, tok, { lengths: [200, 300], depths: [0, 1], trials: 2, seed: 3 });
    assert.equal(r.samples.length, 8);
    assert.deepEqual(r.skipped, []);
    for (const s of r.samples.slice(0, 3)) {
      const text = needlePromptText(tok, s.length - 8, s.depth, s.key);
      const ids = tok.encode(text);
      assert.equal(s.answer, tok.decode(generateIds(student, ids, { maxNewTokens: 8, temperature: 0 })));
      assert.equal(s.correct, answerDigits(s.answer).startsWith(s.key));
      // the key's NLL from the log-probs of the whole sequence
      const full = tok.encode(`${text} ${s.key}`);
      const lp = tokenLogprobs(student, full);
      const keyTokens = full.length - ids.length;
      const want = -lp.slice(lp.length - keyTokens).reduce((a, v) => a + v, 0) / keyTokens;
      assertClose([s.keyNll], [want], 1e-4, 'key NLL');
    }
    const cell = r.cells.find((c) => c.length === 300 && c.depth === 1)!;
    const mine = r.samples.filter((s) => s.length === 300 && s.depth === 1);
    assertClose(
      [cell.gain],
      [(mine[0].keyNllWithout - mine[0].keyNll + mine[1].keyNllWithout - mine[1].keyNll) / 2],
      1e-12,
    );
    const t = evaluateNeedle(teacher, tok, { lengths: [300, 500], depths: [0.5], trials: 1 });
    assert.deepEqual(t.skipped, [500], 'the teacher holds 400 positions');
    assert.equal(t.byLength[1].accuracy, null);
  });
});

describe('perplexity by position', () => {
  it('equals the per-piece log-probs pooled by position', () => {
    const rng = new Random(2);
    const docs = [
      Array.from({ length: 70 }, () => rng.int(0, 255)),
      Array.from({ length: 33 }, () => rng.int(0, 255)),
    ];
    const T = 32;
    const r = perplexityByPosition(teacher, docs, { context: T, bucket: 8 });
    const sum = new Float64Array(T);
    const cnt = new Float64Array(T);
    for (const d of docs)
      for (let s = 0; s + 1 < d.length; s += T) {
        const piece = d.slice(s, s + T);
        if (piece.length < 2) continue;
        tokenLogprobs(teacher, piece).forEach((lp, i) => {
          sum[i + 1] -= lp;
          cnt[i + 1]++;
        });
      }
    assert.equal(r.pieces, 4); // 32 + 32 + 6 tokens, then 32 + 1 (a 1-token piece is skipped)
    assertClose(Array.from(r.nllSum), Array.from(sum), 1e-4, 'per-position NLL sums');
    assert.deepEqual(Array.from(r.count), Array.from(cnt));
    assert.deepEqual(
      r.buckets.map((b) => [b.from, b.to]),
      [
        [1, 9],
        [9, 17],
        [17, 25],
        [25, 32],
      ],
    );
    const b0 = r.buckets[0];
    let s0 = 0;
    let c0 = 0;
    for (let p = 1; p < 9; p++) {
      s0 += sum[p];
      c0 += cnt[p];
    }
    assertClose([b0.nll, b0.ppl], [s0 / c0, Math.exp(s0 / c0)], 1e-5, 'bucket', 1e-6);
    assert.throws(() => perplexityByPosition(teacher, docs, { context: 1000 }), /exceeds the model's length/);
  });
});

describe('long-context commands', () => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'mohawk-long-'));
  saveModel(path.join(dir, 'teacher'), teacher, tok);
  saveModel(path.join(dir, 'student'), student, tok);
  const root = path.resolve(import.meta.dirname, '..');
  const mohawk = (...args: string[]) =>
    spawnSync(process.execPath, ['--import', 'tsx', path.join(root, 'src/cli/main.ts'), ...args], {
      encoding: 'utf8',
      cwd: root,
    });

  it('mohawk perplexity --by-position --compare --plot --json', () => {
    const file = path.join(dir, 'text.txt');
    fs.writeFileSync(file, 'Call me Ishmael. Some years ago, never mind how long precisely. '.repeat(12));
    const svg = path.join(dir, 'pos.svg');
    const r = mohawk(
      'perplexity',
      '--model',
      path.join(dir, 'teacher'),
      '--compare',
      path.join(dir, 'student'),
      '--file',
      file,
      '--by-position',
      '--context',
      '256',
      '--bucket',
      '64',
      '--plot',
      svg,
      '--json',
    );
    assert.equal(r.status, 0, r.stderr);
    const j = JSON.parse(r.stdout) as { models: { buckets: { from: number }[]; pieces: number }[] };
    assert.equal(j.models.length, 2);
    assert.deepEqual(
      j.models[1].buckets.map((b) => b.from),
      [1, 65, 129, 193],
    );
    assert.equal((fs.readFileSync(svg, 'utf8').match(/<path /g) ?? []).length, 2, 'one curve per model');
  });

  it('mohawk eval --tasks needle --json', () => {
    const r = mohawk(
      'eval',
      '--model',
      path.join(dir, 'student'),
      '--tasks',
      'needle',
      '--max-context',
      '256',
      '--needle-depths',
      '0.5',
      '--needle-trials',
      '1',
      '--json',
    );
    assert.equal(r.status, 0, r.stderr);
    const j = JSON.parse(r.stdout) as { lengths: number[]; cells: { accuracy: number; gain: number }[] };
    assert.deepEqual(j.lengths, [256]);
    assert.equal(j.cells.length, 1);
    assert.ok(Number.isFinite(j.cells[0].gain));
    const bad = mohawk('eval', '--model', path.join(dir, 'student'), '--tasks', 'needle,piqa');
    assert.notEqual(bad.status, 0);
    assert.match(bad.stderr, /needle on its own/);
  });
});
