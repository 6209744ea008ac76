// Sampling against exact distributions (temperature, top-k, top-p), the generate loop against
// greedy decoding by full recompute, windowed scoring against a direct computation, and the
// score / generate / convert commands end to end.

import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { describe, it } from 'node:test';
import { tokenLogprobs } from '../src/eval/score.js';
import { generate, generateIds } from '../src/generate/generate.js';
import { argmax, sampleToken } from '../src/generate/sampling.js';
import { loadModel } from '../src/models/load.js';
import type { CausalLM } from '../src/models/types.js';
import { noGrad, scope, tensor } from '../src/tensor/index.js';
import { Random } from '../src/util/random.js';
import { assertClose, SHARED } from './helpers.js';

const skip = fs.existsSync(SHARED) ? false : `${SHARED} not found`;
const repoRoot = path.resolve(import.meta.dirname, '..');
const fixture = (name: string) => path.join(SHARED, 'fixtures/reference', name);

function softmax(logits: number[], temperature = 1): number[] {
  const m = Math.max(...logits);
  const e = logits.map((l) => Math.exp((l - m) / temperature));
  const z = e.reduce((a, b) => a + b, 0);
  return e.map((v) => v / z);
}

function frequencies(logits: number[], opts: Parameters<typeof sampleToken>[2], draws = 40000): number[] {
  const rng = new Random(5);
  const f = new Array<number>(logits.length).fill(0);
  for (let i = 0; i < draws; i++) f[sampleToken(logits, rng, opts)]++;
  return f.map((c) => c / draws);
}

describe('sampling', () => {
  const logits = [1.0, 2.5, -0.5, 2.0, 0.3, 1.7];

  it('temperature 0 is argmax; temperature T samples softmax(logits / T)', () => {
    assert.equal(sampleToken(logits, new Random(1), { temperature: 0 }), 1);
    assert.equal(argmax([3, 7, 7, 1]), 1, 'first of ties');
    for (const t of [1, 0.5, 2]) {
      // binomial standard error at 40k draws is below 0.0025
      assertClose(frequencies(logits, { temperature: t }), softmax(logits, t), 0.01, `temperature ${t}`);
    }
  });

  it('top-k keeps the k most likely tokens, renormalized', () => {
    const f = frequencies(logits, { temperature: 1, topK: 3 });
    const keep = [1, 3, 5];
    const p = softmax(keep.map((i) => logits[i]));
    const want = logits.map((_, i) => (keep.includes(i) ? p[keep.indexOf(i)] : 0));
    assertClose(f, want, 0.01, 'top-k 3');
    for (const i of [0, 2, 4]) assert.equal(f[i], 0, `token ${i} outside the top 3 was sampled`);
  });

  it('top-p keeps the smallest set whose probability reaches p', () => {
    const p = softmax(logits);
    const order = [...p.keys()].sort((a, b) => p[b] - p[a]);
    for (const topP of [0.3, 0.6, 0.9]) {
      const keep: number[] = [];
      let acc = 0;
      for (const i of order) {
        if (acc >= topP) break;
        keep.push(i);
        acc += p[i];
      }
      const z = keep.reduce((a, i) => a + p[i], 0);
      const want = p.map((v, i) => (keep.includes(i) ? v / z : 0));
      const f = frequencies(logits, { temperature: 1, topP });
      assertClose(f, want, 0.01, `top-p ${topP}`);
      for (let i = 0; i < p.length; i++)
        if (!keep.includes(i)) assert.equal(f[i], 0, `top-p ${topP}: token ${i}`);
    }
  });

  it('the same seed gives the same draws, another seed other draws', () => {
    const big = Array.from({ length: 100 }, (_, i) => Math.sin(i));
    const draw = (seed: number) => {
      const r = new Random(seed);
      return Array.from({ length: 50 }, () => sampleToken(big, r, { temperature: 1 }));
    };
    assert.deepEqual(draw(7), draw(7));
    assert.notDeepEqual(draw(7), draw(8));
  });
});

function greedyByRecompute(model: CausalLM, prompt: number[], n: number): number[] {
  const ids = [...prompt];
  const V = model.info.vocabSize;
  for (let i = 0; i < n; i++) {
    const l = noGrad(() =>
      scope(() => model.forward(tensor(ids, [1, ids.length], 'i32')).logits.toArray()),
    ).slice((ids.length - 1) * V);
    ids.push(argmax(l));
  }
  return ids.slice(prompt.length);
}

/** the same model with other facts (EOS, max length) */
function withInfo(model: CausalLM, info: Partial<CausalLM['info']>): CausalLM {
  return Object.create(model, { info: { value: { ...model.info, ...info } } }) as CausalLM;
}

describe('generate loop', { skip }, () => {
  it('cached greedy decoding equals greedy by full recompute; seeds repeat; EOS and max length stop', () => {
    for (const name of ['gpt2', 'phi', 'llama-untied']) {
      const { model } = loadModel(fixture(name));
      const prompt = [5, 17, 42];
      const ref = greedyByRecompute(model, prompt, 20);
      const plain = withInfo(model, { eosTokenId: null });
      assert.deepEqual(generateIds(plain, prompt, { maxNewTokens: 20, temperature: 0 }), ref, name);
      const a = generateIds(plain, prompt, { maxNewTokens: 15, temperature: 1, seed: 3 });
      assert.deepEqual(generateIds(plain, prompt, { maxNewTokens: 15, temperature: 1, seed: 3 }), a);
      assert.notDeepEqual(generateIds(plain, prompt, { maxNewTokens: 15, temperature: 1, seed: 4 }), a);
      // stops before emitting EOS
      const eos = ref[6];
      const firstEos = ref.indexOf(eos);
      const stopped = generateIds(withInfo(model, { eosTokenId: eos }), prompt, {
        maxNewTokens: 20,
        temperature: 0,
      });
      assert.deepEqual(stopped, ref.slice(0, firstEos));
      // never runs past the model's context
      const short = generateIds(withInfo(plain, { maxSeqLen: 10 }), prompt, {
        maxNewTokens: 20,
        temperature: 0,
      });
      assert.deepEqual(short, ref.slice(0, 8));
    }
  });
});

describe('windowed scoring', { skip }, () => {
  it('each token is scored once, with the preceding tokens of its window as context', () => {
    const { model } = loadModel(fixture('phi'));
    const rng = new Random(2);
    const ids = Array.from({ length: 40 }, () => rng.int(0, model.info.vocabSize));
    const full = tokenLogprobs(model, ids);
    assertClose(tokenLogprobs(model, ids, { window: 40 }), full, 0, 'one window');
    for (const [window, stride] of [
      [16, 8],
      [10, 9],
      [12, 5],
    ]) {
      const got = tokenLogprobs(model, ids, { window, stride });
      // direct: target t is scored in the first window [b, b + window) with b + window > t
      const want = ids.slice(1).map((_, j) => {
        const t = j + 1;
        let b = 0;
        while (b + window <= t) b += stride;
        const ctx = ids.slice(b, t + 1);
        return tokenLogprobs(model, ctx).at(-1)!;
      });
      assertClose(got, want, 1e-5, `window ${window} stride ${stride}`);
      assertClose(got.slice(0, window - 1), full.slice(0, window - 1), 1e-5, 'first window = full context');
    }
  });
});

function mohawk(args: string[]): { code: number; stdout: string; stderr: string } {
  const r = spawnSync(
    process.execPath,
    ['--import', 'tsx', path.join(repoRoot, 'src/cli/main.ts'), ...args],
    {
      cwd: repoRoot,
      encoding: 'utf8',
    },
  );
  return { code: r.status ?? -1, stdout: r.stdout, stderr: r.stderr };
}

describe('commands', { skip }, () => {
  it('score --ids --json prints the reference log-probs, nll and ppl', () => {
    const exp = JSON.parse(fs.readFileSync(path.join(fixture('gpt2'), 'expected.json'), 'utf8')) as {
      ids: number[][];
      logprobs: number[][];
    };
    const r = mohawk(['score', '--model', fixture('gpt2'), '--ids', exp.ids[0].join(','), '--json']);
    assert.equal(r.code, 0, r.stderr);
    const out = JSON.parse(r.stdout) as { tokens: number; logprobs: number[]; nll: number; ppl: number };
    assert.deepEqual(Object.keys(out), ['tokens', 'logprobs', 'nll', 'ppl']);
    assert.equal(out.tokens, exp.ids[0].length);
    assertClose(out.logprobs, exp.logprobs[0], 1e-4, 'score --json logprobs');
    const nll = -exp.logprobs[0].reduce((a, b) => a + b, 0) / exp.logprobs[0].length;
    assert.ok(Math.abs(out.nll - nll) < 1e-5, `nll ${out.nll} vs ${nll}`);
    assert.ok(Math.abs(out.ppl - Math.exp(out.nll)) < 1e-9 * out.ppl, 'ppl = exp(nll)');
  });

  it('--precision bf16 scores close to f32 (bf16 products); a bad precision names the flag', () => {
    const exp = JSON.parse(fs.readFileSync(path.join(fixture('gpt2'), 'expected.json'), 'utf8')) as {
      ids: number[][];
      logprobs: number[][];
    };
    const args = ['score', '--model', fixture('gpt2'), '--ids', exp.ids[0].join(','), '--json'];
    const r = mohawk([...args, '--precision', 'bf16']);
    assert.equal(r.code, 0, r.stderr);
    const got = (JSON.parse(r.stdout) as { logprobs: number[] }).logprobs;
    assertClose(got, exp.logprobs[0], 0.1, 'bf16 log-probs');
    assert.ok(
      got.some((v, i) => Math.abs(v - exp.logprobs[0][i]) > 1e-6),
      'bf16 rounding shows',
    );
    const bad = mohawk([...args, '--precision', 'fp8']);
    assert.equal(bad.code, 2);
    assert.match(bad.stderr, /--precision expects f32 or bf16, got "fp8"/);
  });

  it('convert llama2c, then score --text (BOS prepended) and generate --json from the result', () => {
    const base = path.join(SHARED, 'data/stories260K');
    const out = path.join(fs.mkdtempSync(path.join(os.tmpdir(), 'mohawk-cli-')), 'stories260K');
    const c = mohawk([
      'convert',
      'llama2c',
      '--checkpoint',
      path.join(base, 'stories260K.bin'),
      '--tokenizer',
      path.join(base, 'tok512.model'),
      '--out',
      out,
    ]);
    assert.equal(c.code, 0, c.stderr);
    const { model, tokenizer } = loadModel(out);
    const text = 'Once upon a time, there was a little girl named Lily.';
    const s = mohawk(['score', '--model', out, '--text', text, '--json']);
    assert.equal(s.code, 0, s.stderr);
    const sc = JSON.parse(s.stdout) as { tokens: number; logprobs: number[] };
    const ids = tokenizer!.encode(text);
    assert.equal(ids[0], 1);
    assert.equal(sc.tokens, ids.length);
    assertClose(sc.logprobs, tokenLogprobs(model, ids), 1e-6, 'score --text');
    const greedy = ['generate', '--model', out, '--prompt', 'Once upon a time', '--max-new-tokens', '25'];
    const g = mohawk([...greedy, '--temperature', '0', '--json']);
    assert.equal(g.code, 0, g.stderr);
    const gen = JSON.parse(g.stdout) as { prompt: string; completion: string; ids: number[] };
    assert.deepEqual(Object.keys(gen), ['prompt', 'completion', 'ids']);
    const lib = generate(model, tokenizer!, { prompt: 'Once upon a time', maxNewTokens: 25, temperature: 0 });
    assert.deepEqual(gen, { prompt: 'Once upon a time', completion: lib.completion, ids: lib.ids });
    assert.ok(gen.ids.length > 0 && gen.completion.length > 0, 'generated nothing');
    // the completion continues the prompt's text: no space lost at the seam (SentencePiece strips
    // the first space of a decode), streamed pieces add up to it
    for (const prompt of ['Lily', 'Once upon a time,', 'The cat sat']) {
      let streamed = '';
      const r = generate(model, tokenizer!, {
        prompt,
        maxNewTokens: 12,
        temperature: 0,
        onText: (t) => (streamed += t),
      });
      assert.equal(prompt + r.completion, tokenizer!.decode([...tokenizer!.encode(prompt), ...r.ids]));
      assert.match(r.completion, /^[ ,.]/, `completion ${JSON.stringify(r.completion)} glued to the prompt`);
      assert.equal(streamed, r.completion);
    }
    // streaming prints the prompt, then the completion
    const st = mohawk([...greedy, '--temperature', '0']);
    assert.equal(st.stdout, `Once upon a time${lib.completion}\n`);
  });

  it('errors are one line naming the file or flag', () => {
    const r = mohawk(['score', '--model', path.join(os.tmpdir(), 'no-such-model'), '--ids', '1,2']);
    assert.notEqual(r.code, 0);
    assert.match(r.stderr.trim(), /^mohawk: .*no-such-model: config\.json not found[^\n]*$/);
    const b = mohawk(['score', '--model', fixture('gpt2'), '--ids', '1,99999']);
    assert.notEqual(b.code, 0);
    assert.match(b.stderr, /--ids: "99999" is not a token id below the vocabulary size/);
  });
});
