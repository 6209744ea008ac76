// Evaluation: harness tokenization, each task's scoring against log-likelihoods computed directly
// from the model's forward (one sequence at a time, log-softmax in float64 on the host), batching,
// truncation, malformed files, acc_norm by bytes, sliding-window perplexity against a direct sum
// over windows, MOHAWK diagnostics against a direct computation, and the PNG encoder.

import assert from 'node:assert/strict';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { inflateSync } from 'node:zlib';
import { describe, it } from 'node:test';
import { loadModel } from '../src/models/load.js';
import { byteTokenizer } from '../src/io/tokenizer.js';
import { transferStudent } from '../src/distill/transfer.js';
import type { CausalLM } from '../src/models/types.js';
import { noGrad, scope, tensor } from '../src/tensor/index.js';
import {
  encodeRequest,
  rowFor,
  scoreRows,
  type EvalTokenizer,
  type ScoreRow,
} from '../src/eval/loglikelihood.js';
import {
  argmax,
  evaluateTask,
  loadTask,
  meanStderr,
  parseTask,
  taskMetrics,
  type Doc,
  type TaskName,
} from '../src/eval/tasks.js';
import { perplexity, slidingWindows } from '../src/eval/perplexity.js';
import { diagnose, renderMatrices } from '../src/eval/diagnose.js';
import { crc32, encodePng } from '../src/util/png.js';
import { assertClose } from './helpers.js';

const SHARED = path.resolve(import.meta.dirname, '../../shared');
const FIXTURE = path.join(SHARED, 'fixtures/reference/llama-tied');
const skip = fs.existsSync(FIXTURE) ? false : `${FIXTURE} not found`;

/** log-softmax rows of the logits of one sequence, in float64 on the host: (T, V) */
function directLogprobs(model: CausalLM, ids: number[]): Float64Array[] {
  const V = model.info.vocabSize;
  const logits = noGrad(() =>
    scope(() => Float64Array.from(model.forward(tensor(ids, [1, ids.length], 'i32')).logits.toArray())),
  );
  const rows: Float64Array[] = [];
  for (let t = 0; t < ids.length; t++) {
    const r = logits.subarray(t * V, (t + 1) * V);
    let m = -Infinity;
    for (const x of r) m = Math.max(m, x);
    let s = 0;
    for (const x of r) s += Math.exp(x - m);
    const lse = m + Math.log(s);
    rows.push(r.map((x) => x - lse));
  }
  return rows;
}

/** The direct log-likelihood of `cont` after `ctx` (already tokenized), with left truncation. */
function directLoglik(
  model: CausalLM,
  ctx: number[],
  cont: number[],
  maxLength: number,
): { ll: number; greedy: boolean } {
  let all = [...ctx, ...cont];
  if (all.length > maxLength + 1) all = all.slice(all.length - maxLength - 1);
  const lp = directLogprobs(model, all.slice(0, -1));
  let ll = 0;
  let greedy = true;
  for (let j = 0; j < cont.length; j++) {
    const pos = all.length - 1 - cont.length + j;
    ll += lp[pos][cont[j]];
    if (argmax(lp[pos]) !== cont[j]) greedy = false;
  }
  return { ll, greedy };
}

/** A word-level tokenizer: pieces are runs of whitespace followed by a word, or trailing space. */
function wordTokenizer(): EvalTokenizer & { vocab: Map<string, number>; pieces(text: string): string[] } {
  const vocab = new Map<string, number>([['<s>', 0]]);
  const pieces = (text: string) => text.match(/\s*\S+|\s+/g) ?? [];
  return {
    vocab,
    pieces,
    bosTokenId: 0,
    eosTokenId: null,
    addBos: true,
    encode(text: string, opts: { addBos?: boolean } = {}) {
      const ids = pieces(text).map((p) => {
        if (!vocab.has(p)) vocab.set(p, vocab.size);
        return vocab.get(p)!;
      });
      return (opts.addBos ?? true) ? [0, ...ids] : ids;
    },
  };
}

describe('harness tokenization', () => {
  it('moves trailing whitespace of the context to the continuation; continuation = whole[len(ctx):]', () => {
    const tok = wordTokenizer();
    const id = (p: string) => tok.vocab.get(p);
    const e = encodeRequest(tok, { context: 'The cat ', continuation: 'sat' });
    // without the rule the context would end in a lone " " token and the continuation be "sat"
    assert.deepEqual(e.context, [0, id('The'), id(' cat')]);
    assert.deepEqual(e.continuation, [id(' sat')]);
    assert.equal(tok.vocab.has(' '), false);
    assert.equal(tok.vocab.has('sat'), false);
    // several trailing whitespace characters move together
    const e2 = encodeRequest(tok, { context: 'A dog\n ', continuation: 'ran far' });
    assert.deepEqual(e2.context, [0, id('A'), id(' dog')]);
    assert.deepEqual(e2.continuation, [id('\n ran'), id(' far')]);
    // BOS off; an empty context becomes [BOS] so the first continuation token is predicted
    assert.deepEqual(
      encodeRequest(tok, { context: 'The cat', continuation: ' sat' }, { addBos: false }).context,
      [id('The'), id(' cat')],
    );
    assert.deepEqual(
      encodeRequest(tok, { context: '', continuation: 'The' }, { addBos: false }).context,
      [0],
    );
  });

  it('truncates from the left to the last maxLength + 1 tokens', () => {
    const row = rowFor([1, 2, 3, 4, 5, 6], [7, 8], 5);
    assert.deepEqual(row, { input: [3, 4, 5, 6, 7], targets: [7, 8], truncated: false });
    assert.deepEqual(rowFor([1, 2], [3], 5), { input: [1, 2], targets: [3], truncated: false });
    // a continuation longer than the model: only its last maxLength tokens are scored
    assert.deepEqual(rowFor([1], [2, 3, 4, 5], 2), { input: [3, 4], targets: [4, 5], truncated: true });
  });
});

describe('task files', () => {
  it('a malformed line gives an error naming the file and the line', () => {
    const good = JSON.stringify({ query: 'Question: q', choices: ['a', 'b'], gold: 1 });
    assert.throws(
      () => parseTask('arc_easy', `${good}\n${good}\n{"query": "x",\n`, 'arc_easy.jsonl'),
      (e: Error) => {
        assert.match(e.message, /^arc_easy\.jsonl:3: not valid JSON/);
        return true;
      },
    );
    assert.throws(
      () =>
        parseTask(
          'arc_easy',
          `${good}\n\n${JSON.stringify({ query: 'q', choices: ['a', 'b'], gold: 2 })}`,
          'f',
        ),
      /^Error: f:3: field "gold" must be an integer in \[0, 2\), got 2/,
    );
    assert.throws(
      () =>
        parseTask('winogrande', JSON.stringify({ context_options: ['a'], continuation: 'b', gold: 0 }), 'w'),
      /w:1: field "context_options" must be an array/,
    );
    assert.throws(
      () => parseTask('lambada_openai', '{"context": "x"}', 'l.jsonl'),
      /l\.jsonl:1: field "continuation"/,
    );
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'mohawk-eval-'));
    fs.writeFileSync(path.join(dir, 'piqa.jsonl'), `${good}\n[1, 2]\n`);
    assert.throws(
      () => loadTask('piqa', dir),
      new RegExp(`${path.join(dir, 'piqa.jsonl')}:2: expected a JSON object`),
    );
    fs.rmSync(dir, { recursive: true });
  });

  it('builds the harness prompts', () => {
    const q = (task: TaskName, o: object) => parseTask(task, JSON.stringify(o), 'x')[0];
    assert.deepEqual(q('piqa', { query: 'Question: How?\n', choices: ['a', 'b'], gold: 0 }).requests[1], {
      context: 'Question: How?\nAnswer:',
      continuation: ' b',
    });
    assert.deepEqual(
      q('arc_challenge', { query: 'Question: Why?', choices: ['a', 'b'], gold: 0 }).requests[0],
      {
        context: 'Question: Why?\nAnswer:',
        continuation: ' a',
      },
    );
    assert.deepEqual(q('hellaswag', { query: 'Act: he', choices: ['x', 'y'], gold: 0 }).requests[0], {
      context: 'Act: he',
      continuation: ' x',
    });
    const w = q('winogrande', { context_options: ['A so B', 'A so C'], continuation: 'won.', gold: 1 });
    assert.deepEqual(w.requests, [
      { context: 'A so B', continuation: ' won.' },
      { context: 'A so C', continuation: ' won.' },
    ]);
    assert.deepEqual(q('lambada_openai', { context: 'He said', continuation: 'hi' }).requests, [
      { context: 'He said', continuation: ' hi' },
    ]);
  });

  it('acc_norm divides by the length in bytes (chars on request); stderr is the sample stderr of the mean', () => {
    // "ééé" is 3 characters but 6 bytes: by bytes choice 0 wins (-1 vs -1.1), by characters 1 does
    const docs: Doc[] = [
      {
        requests: [
          { context: 'c', continuation: ' ééé' },
          { context: 'c', continuation: ' abcd' },
        ],
        gold: 0,
        normTexts: ['ééé', 'abcd'],
      },
      { requests: [], gold: 1, normTexts: ['ab', 'cd'] },
    ];
    const s = (ll: number) => ({ logprobs: new Float64Array([ll]), loglikelihood: ll });
    const scores = [
      [s(-6), s(-4.4)],
      [s(-1), s(-2)],
    ];
    const m = (by: 'bytes' | 'chars') =>
      Object.fromEntries(
        taskMetrics('arc_easy', docs, scores, { normBy: by }).metrics.map((x) => [x.metric, x]),
      );
    const bytes = m('bytes');
    assert.equal(bytes.acc.value, 0); // raw: doc 0 picks 1, doc 1 picks 0
    assert.equal(bytes.acc_norm.value, 0.5);
    assert.equal(m('chars').acc_norm.value, 0);
    // n = 2 values {0, 1}: sample sd = sqrt(0.5), stderr = sqrt(0.5 / 2) = 0.5
    assert.equal(bytes.acc_norm.stderr, 0.5);
    assertClose([meanStderr([1, 0, 0, 1, 1])!], [Math.sqrt(0.3 / 5)], 1e-15, 'stderr');
  });
});

describe('scoring against the model forward', { skip }, () => {
  const { model } = skip ? ({} as { model: CausalLM }) : loadModel(FIXTURE);
  const tok = byteTokenizer();
  const maxLength = skip ? 0 : model.info.maxSeqLen; // 256 positions

  const long = 'A long story about a river that never stops; '.repeat(7); // > 256 bytes: truncated
  const tasks: Record<TaskName, object[]> = {
    lambada_openai: [
      { context: 'She opened the door and saw', continuation: 'nobody' },
      { context: 'The end of the ', continuation: 'line' },
      { context: long, continuation: 'sea' },
    ],
    hellaswag: [
      {
        query: 'Baking: A man mixes flour. he',
        choices: ['bakes bread.', 'sings.', 'runs away.', 'sleeps.'],
        gold: 0,
      },
      {
        query: 'Café: She orders',
        choices: ['a crème brûlée.', 'tea.', 'nothing at all.', 'naïve soup.'],
        gold: 2,
      },
    ],
    piqa: [
      {
        query: 'Question: How to open a jar?\n',
        choices: ['Twist the lid.', 'Hit it with a shoe.'],
        gold: 0,
      },
      {
        query: 'Question: Dry wet shoes\n',
        choices: ['Use newspaper.', 'Put them in the oven at 500°C.'],
        gold: 0,
      },
    ],
    arc_easy: [
      { query: 'Question: What do plants need?', choices: ['light', 'sand', 'noise', 'metal'], gold: 0 },
    ],
    arc_challenge: [
      { query: 'Question: Which is a mammal?', choices: ['whale', 'shark', 'trout'], gold: 0 },
      { query: `Question: ${long}?`, choices: ['yes', 'no'], gold: 1 },
    ],
    winogrande: [
      {
        context_options: [
          'The cup fell off the table because the cup',
          'The cup fell off the table because the table',
        ],
        continuation: 'was tilted.',
        gold: 1,
      },
    ],
  };

  for (const [task, objs] of Object.entries(tasks) as [TaskName, object[]][]) {
    it(`${task}: log-likelihoods, predictions and metrics equal a direct computation`, () => {
      const docs = parseTask(task, objs.map((o) => JSON.stringify(o)).join('\n'), `${task}.jsonl`);
      const r = evaluateTask(model, tok, task, docs, { batchSize: 3 });
      const acc: number[] = [];
      const accNorm: number[] = [];
      docs.forEach((d, i) => {
        const direct = d.requests.map((q) => {
          // the byte tokenizer splits nothing across the boundary: whole = ctx + cont
          let { context, continuation } = q;
          const m = /\s+$/.exec(context);
          if (m) [context, continuation] = [context.slice(0, m.index), m[0] + continuation];
          const bytes = (s: string) => Array.from(Buffer.from(s, 'utf8'));
          return directLoglik(model, [256, ...bytes(context)], bytes(continuation), maxLength);
        });
        const sample = r.samples[i];
        assertClose(
          sample.loglikelihoods,
          direct.map((x) => x.ll),
          2e-4,
          `${task}[${i}] log-likelihoods`,
          1e-5,
        );
        if (task === 'lambada_openai') {
          assert.equal(sample.greedy_match, direct[0].greedy, `${task}[${i}] greedy`);
          acc.push(direct[0].greedy ? 1 : 0);
        } else {
          const lls = direct.map((x) => x.ll);
          assert.equal(sample.pred, argmax(lls), `${task}[${i}] pred`);
          acc.push(argmax(lls) === d.gold ? 1 : 0);
          if (d.normTexts) {
            const normed = lls.map((l, c) => l / Buffer.byteLength(d.normTexts![c], 'utf8'));
            accNorm.push(argmax(normed) === d.gold ? 1 : 0);
          }
        }
      });
      const metric = (name: string) => r.metrics.find((m) => m.metric === name)!;
      const mean = (xs: number[]) => xs.reduce((a, b) => a + b, 0) / xs.length;
      assert.equal(metric('acc').value, mean(acc));
      if (accNorm.length) assert.equal(metric('acc_norm').value, mean(accNorm));
      if (task === 'lambada_openai') {
        const lls = r.samples.map((s) => s.loglikelihoods[0]);
        assertClose([metric('perplexity').value], [Math.exp(-mean(lls))], 1e-9, 'perplexity', 1e-12);
      }
    });
  }

  it('greedy match: true exactly when every target is the argmax, whatever the batch', () => {
    const ctx = Array.from(Buffer.from('Once upon a time there', 'utf8'));
    // the model's own greedy continuation of 4 tokens, found one token at a time
    const greedy: number[] = [];
    for (let i = 0; i < 4; i++) {
      const lp = directLogprobs(model, [...ctx, ...greedy]);
      greedy.push(argmax(lp[lp.length - 1]));
    }
    const other = [...greedy];
    other[2] = (other[2] + 1) % 256;
    const rows: ScoreRow[] = [
      rowFor(ctx, greedy, maxLength),
      rowFor(ctx.slice(3), other, maxLength),
      rowFor(ctx.slice(5), [greedy[0]], maxLength),
    ];
    for (const bs of [1, 3]) {
      const s = scoreRows(model, rows, { batchSize: bs, greedy: true });
      assert.equal(s[0].greedyMatch, true);
      assert.deepEqual(Array.from(s[0].argmax!), greedy);
      assert.equal(s[1].greedyMatch, false);
      const d = directLoglik(model, ctx.slice(5), [greedy[0]], maxLength);
      assert.equal(s[2].greedyMatch, d.greedy);
    }
  });

  it('right padding does not change scores: batch sizes 1 and 7 agree', () => {
    const rows: ScoreRow[] = [];
    for (let i = 0; i < 9; i++) {
      const n = 5 + ((i * 37) % 60);
      const ids = Array.from({ length: n }, (_, j) => (i * 31 + j * 17) % 512);
      rows.push({ input: ids.slice(0, -1), targets: ids.slice(n - 1 - (i % 4)) });
    }
    const a = scoreRows(model, rows, { batchSize: 1 });
    const b = scoreRows(model, rows, { batchSize: 7 });
    a.forEach((s, i) => assertClose(b[i].logprobs, s.logprobs, 1e-5, `row ${i}`));
  });
});

describe('sliding-window perplexity', { skip }, () => {
  const { model } = skip ? ({} as { model: CausalLM }) : loadModel(FIXTURE);
  const ids = Array.from({ length: 97 }, (_, i) => (i * 7919 + 13) % 512);

  it('windows score every token after the first exactly once, with at most T - 1 tokens of context', () => {
    for (const [T, S] of [
      [24, 10],
      [24, 23],
      [8, 1],
      [200, 50],
    ]) {
      const seen = new Array<number>(ids.length).fill(0);
      for (const w of slidingWindows(ids.length, T, S)) {
        assert.ok(w.end - w.begin <= T && w.from > w.begin);
        for (let t = w.from; t < w.end; t++) seen[t]++;
      }
      assert.deepEqual(seen, [0, ...new Array(ids.length - 1).fill(1)], `T ${T} S ${S}`);
    }
    assert.throws(() => slidingWindows(10, 8, 8), /stride 8 must be in \[1, context - 1 = 7\]/);
  });

  it('equals the direct sum over windows (independent loop, one forward per window)', () => {
    for (const [T, S] of [
      [24, 10],
      [32, 31],
      [120, 60],
    ]) {
      // the HF recipe written out: windows start at 0, S, 2S, ...; each scores its targets that
      // no earlier window reached
      let direct = 0;
      let prevEnd = 0;
      for (let begin = 0; ; begin += S) {
        const end = Math.min(begin + T, ids.length);
        const lp = directLogprobs(model, ids.slice(begin, end - 1));
        for (let t = Math.max(prevEnd, begin + 1); t < end; t++) direct -= lp[t - begin - 1][ids[t]];
        prevEnd = end;
        if (end === ids.length) break;
      }
      const r = perplexity(model, ids, { context: T, stride: S, batchSize: 3 });
      assert.equal(r.tokens, ids.length - 1);
      assertClose([r.nllSum], [direct], 1e-3, `T ${T} S ${S} nll sum`, 1e-6);
      assertClose([r.ppl], [Math.exp(direct / (ids.length - 1))], 1e-6, 'ppl', 1e-6);
    }
  });

  it('documents are scored independently and pooled', () => {
    const a = ids.slice(0, 40);
    const b = ids.slice(50);
    const opts = { context: 16, stride: 5, batchSize: 4 };
    const ra = perplexity(model, a, opts);
    const rb = perplexity(model, b, opts);
    const both = perplexity(model, [a, b], opts);
    assert.equal(both.tokens, a.length - 1 + b.length - 1);
    assert.equal(both.documents, 2);
    assertClose(both.logprobs, [...ra.logprobs, ...rb.logprobs], 1e-5, 'pooled log-probs');
  });
});

describe('diagnostics', { skip }, () => {
  const { model: teacher } = skip ? ({} as { model: CausalLM }) : loadModel(FIXTURE);
  const ids = [
    Array.from({ length: 20 }, (_, i) => (i * 131 + 7) % 512),
    Array.from({ length: 20 }, (_, i) => (i * 29 + 300) % 512),
  ];

  it('per-layer distances and KL equal a direct computation from the teacher capture', () => {
    const student = transferStudent(teacher, { alphaInit: 0.9, dInit: 0.1, chunkSize: 8 });
    const d = diagnose(teacher, student, ids, { picture: { layer: 1, head: 3 } });
    const B = ids.length;
    const T = ids[0].length;
    const expected = noGrad(() =>
      scope(() => {
        const cap = teacher.forward(tensor(ids.flat(), [B, T], 'i32'), {
          capture: { layerInputs: true, mixerMatrices: true, layerOutputs: true },
        });
        const layers = teacher.blocks.map((_, l) => {
          const s = student.blocks[l].forward(cap.captured.layerInputs![l], { returnMatrix: true });
          const ms = s.matrix!.toArray();
          const mt = cap.captured.mixerMatrices![l].toArray();
          const H = cap.captured.mixerMatrices![l].shape[1];
          let frob = 0;
          for (let bh = 0; bh < B * H; bh++) {
            let ss = 0;
            for (let k = 0; k < T * T; k++) ss += (ms[bh * T * T + k] - mt[bh * T * T + k]) ** 2;
            frob += Math.sqrt(ss) / (B * H);
          }
          const ys = s.out.toArray();
          const yt = cap.captured.layerOutputs![l].toArray();
          const D = teacher.info.dModel;
          let l2 = 0;
          for (let t = 0; t < B * T; t++) {
            let ss = 0;
            for (let k = 0; k < D; k++) ss += (ys[t * D + k] - yt[t * D + k]) ** 2;
            l2 += Math.sqrt(ss) / (B * T);
          }
          const pic = l === 1 ? Array.from(mt.subarray(3 * T * T, 4 * T * T)) : null;
          return { frob, l2, pic };
        });
        // KL(p || q) per token from host log-softmax
        const V = teacher.info.vocabSize;
        const lt = cap.logits.toArray();
        const ls = student.forward(tensor(ids.flat(), [B, T], 'i32')).logits.toArray();
        const logsm = (x: ArrayLike<number>, o: number) => {
          let m = -Infinity;
          for (let v = 0; v < V; v++) m = Math.max(m, x[o + v]);
          let s = 0;
          for (let v = 0; v < V; v++) s += Math.exp(x[o + v] - m);
          return Array.from({ length: V }, (_, v) => x[o + v] - m - Math.log(s));
        };
        let kl = 0;
        for (let t = 0; t < B * T; t++) {
          const p = logsm(lt, t * V);
          const q = logsm(ls, t * V);
          for (let v = 0; v < V; v++) kl += (Math.exp(p[v]) * (p[v] - q[v])) / (B * T);
        }
        return { layers, kl };
      }),
    );
    assert.equal(d.layers.length, teacher.blocks.length);
    d.layers.forEach((l, i) => {
      assertClose([l.matrixDistance], [expected.layers[i].frob], 1e-4, `layer ${i} matrix distance`, 1e-4);
      assertClose([l.outputDistance], [expected.layers[i].l2], 1e-4, `layer ${i} output distance`, 1e-4);
      assert.ok(
        l.matrixDistance > 0.01 && l.outputDistance > 0.01,
        'a fresh student differs from its teacher',
      );
    });
    assertClose([d.kl], [expected.kl], 1e-4, 'KL', 1e-4);
    assertClose(d.picture!.teacher, expected.layers[1].pic!, 1e-6, 'picture (teacher matrix)');
  });

  it('a hybrid that keeps every attention layer sits at distance 0 from its teacher', () => {
    const hybrid = transferStudent(teacher, { attentionLayers: [0, 1] });
    const d = diagnose(teacher, hybrid, ids);
    for (const l of d.layers) {
      assert.equal(l.mixer, 'attention');
      assert.ok(l.matrixDistance < 1e-5 && l.outputDistance < 1e-4, JSON.stringify(l));
      assert.ok(l.teacherMatrixNorm > 0.5 && l.teacherOutputNorm > 0.1);
    }
    assert.ok(Math.abs(d.kl) < 1e-5);
    assertClose([d.studentNll], [d.teacherNll], 1e-5, 'next-token loss');
  });
});

describe('commands', { skip }, () => {
  /** run a command module, capturing what it prints on stdout */
  async function capture(fn: () => Promise<number>): Promise<string> {
    const lines: string[] = [];
    const orig = console.log;
    const origErr = process.stderr.write;
    console.log = (...a: unknown[]) => void lines.push(a.join(' '));
    process.stderr.write = (() => true) as typeof process.stderr.write;
    try {
      assert.equal(await fn(), 0);
    } finally {
      console.log = orig;
      process.stderr.write = origErr;
    }
    return lines.join('\n');
  }

  it('eval writes harness-shaped JSON and one sample line per example; perplexity and diagnose run', async () => {
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'mohawk-eval-cli-'));
    const { model } = loadModel(FIXTURE);
    const { saveModel } = await import('../src/models/load.js');
    saveModel(path.join(dir, 'teacher'), model, byteTokenizer());
    saveModel(path.join(dir, 'student'), transferStudent(model, { alphaInit: 0.9 }), byteTokenizer());
    const data = path.join(dir, 'data');
    fs.mkdirSync(data);
    fs.writeFileSync(
      path.join(data, 'piqa.jsonl'),
      [
        { query: 'Question: How to open a jar?\n', choices: ['Twist the lid.', 'Hit it.'], gold: 0 },
        { query: 'Question: Dry shoes\n', choices: ['Use paper.', 'Use an oven.'], gold: 0 },
        { query: 'Question: Boil an egg\n', choices: ['Use water.', 'Use sand.'], gold: 0 },
      ]
        .map((o) => JSON.stringify(o))
        .join('\n') + '\n',
    );
    fs.writeFileSync(
      path.join(data, 'lambada_openai.jsonl'),
      JSON.stringify({ context: 'She opened the door and saw', continuation: 'nobody' }) + '\n',
    );
    const samples = path.join(dir, 'samples.jsonl');
    const evalCmd = await import('../src/cli/commands/eval.js');
    const out = await capture(() =>
      evalCmd.run([
        ...['--model', path.join(dir, 'teacher'), '--tasks', 'piqa,lambada_openai', '--data-dir', data],
        ...['--limit', '2', '--batch-size', '3', '--log-samples', samples, '--json'],
      ]),
    );
    const j = JSON.parse(out) as {
      results: Record<string, Record<string, number>>;
      rows: { task: string; metric: string; value: number; stderr: number | null }[];
    };
    assert.deepEqual(Object.keys(j.results), ['piqa', 'lambada_openai']);
    assert.ok('acc,none' in j.results.piqa && 'acc_norm_stderr,none' in j.results.piqa);
    assert.ok('perplexity,none' in j.results.lambada_openai);
    assert.deepEqual(
      j.rows.map((r) => `${r.task} ${r.metric}`),
      ['piqa acc', 'piqa acc_norm', 'lambada_openai perplexity', 'lambada_openai acc'],
    );
    const lines = fs
      .readFileSync(samples, 'utf8')
      .trim()
      .split('\n')
      .map((l) => JSON.parse(l) as Record<string, unknown>);
    assert.equal(lines.length, 3); // --limit 2 of piqa, the one LAMBADA example
    assert.deepEqual(Object.keys(lines[0]), ['task', 'index', 'loglikelihoods', 'pred', 'gold']);
    assert.equal((lines[0].loglikelihoods as number[]).length, 2);
    assert.equal(lines[2].task, 'lambada_openai');
    assert.equal(typeof lines[2].greedy_match, 'boolean');
    // the table's mean acc equals the samples' mean
    const piqa = lines.filter((l) => l.task === 'piqa');
    const acc = piqa.filter((l) => l.pred === l.gold).length / piqa.length;
    assert.equal(j.results.piqa['acc,none'], acc);

    const text = path.join(dir, 'text.txt');
    fs.writeFileSync(text, 'Once upon a time there was a river. '.repeat(12));
    const ppl = await import('../src/cli/commands/perplexity.js');
    const pj = JSON.parse(
      await capture(() =>
        ppl.run([
          '--model',
          path.join(dir, 'teacher'),
          '--file',
          text,
          '--context',
          '64',
          '--stride',
          '20',
          '--json',
        ]),
      ),
    ) as { files: { tokens: number; nll: number }[] };
    const direct = perplexity(model, byteTokenizer().encode(fs.readFileSync(text, 'utf8')), {
      context: 64,
      stride: 20,
    });
    assert.equal(pj.files[0].tokens, direct.tokens);
    assertClose([pj.files[0].nll], [direct.nll], 1e-9, 'perplexity command');

    const diag = await import('../src/cli/commands/diagnose.js');
    const image = path.join(dir, 'm.png');
    const dj = JSON.parse(
      await capture(() =>
        diag.run([
          ...['--teacher', path.join(dir, 'teacher'), '--student', path.join(dir, 'student'), '--file', text],
          ...['--tokens', '32', '--layer', '1', '--head', '2', '--out-image', image, '--json'],
        ]),
      ),
    ) as { layers: unknown[]; kl: number };
    assert.equal(dj.layers.length, 2);
    assert.ok(dj.kl > 0);
    assert.deepEqual([...fs.readFileSync(image).subarray(1, 4)], [0x50, 0x4e, 0x47]);
    fs.rmSync(dir, { recursive: true });
  });

  it('--data-dir: a missing directory is named', async () => {
    const evalCmd = await import('../src/cli/commands/eval.js');
    await assert.rejects(
      evalCmd.run(['--model', FIXTURE, '--data-dir', '/nonexistent/eval']),
      /--data-dir: \/nonexistent\/eval does not exist/,
    );
  });
});

describe('PNG', () => {
  it('round-trips pixels through zlib with valid chunk CRCs', () => {
    // CRC-32 check value of "123456789"
    assert.equal(crc32(Buffer.from('123456789')), 0xcbf43926);
    const img = renderMatrices([1, 0, 0.25, 0.5], [0.5, 0, -1, 1], 2, 4);
    const png = encodePng(img.width, img.height, img.rgb);
    assert.deepEqual([...png.subarray(0, 8)], [0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a]);
    let at = 8;
    const chunks: Record<string, Buffer> = {};
    while (at < png.length) {
      const len = png.readUInt32BE(at);
      const type = png.toString('ascii', at + 4, at + 8);
      const data = png.subarray(at + 8, at + 8 + len);
      assert.equal(png.readUInt32BE(at + 8 + len), crc32(png.subarray(at + 4, at + 8 + len)), `${type} CRC`);
      chunks[type] = data;
      at += 12 + len;
    }
    assert.equal(chunks.IHDR.readUInt32BE(0), img.width);
    assert.equal(chunks.IHDR.readUInt32BE(4), img.height);
    const raw = inflateSync(chunks.IDAT);
    const stride = 1 + img.width * 3;
    for (let y = 0; y < img.height; y++) {
      assert.equal(raw[y * stride], 0);
      assert.deepEqual(
        [...raw.subarray(y * stride + 1, (y + 1) * stride)],
        [...img.rgb.subarray(y * img.width * 3, (y + 1) * img.width * 3)],
      );
    }
    // cell (t = 0, s = 0) of the left panel holds the maximum (1): dark red; (0, 1) is masked grey
    const px = (x: number, y: number) => [
      ...img.rgb.subarray((y * img.width + x) * 3, (y * img.width + x) * 3 + 3),
    ];
    assert.deepEqual(px(8, 8), [155, 0, 0]);
    assert.deepEqual(px(10, 8), [225, 225, 225]);
    // the right panel's negative entry (1, 0) = -1: dark blue
    assert.deepEqual(px(8 + 4 + 8, 10), [0, 0, 155]);
  });
});
