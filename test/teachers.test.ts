// Teachers: HF checkpoints give the reference logits; llama2.c conversion reproduces
// llama2.c's text; KV-cache decoding equals the full forward.

import assert from 'node:assert/strict';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { describe, it } from 'node:test';
import { loadModel } from '../src/models/load.js';
import { tokenLogprobs } from '../src/eval/score.js';
import { noGrad, scope, slice, tensor } from '../src/tensor/index.js';
import { assertClose } from './helpers.js';

export const SHARED = path.resolve(import.meta.dirname, '../../shared');
const haveShared = fs.existsSync(SHARED);
const skip = haveShared ? false : `${SHARED} not found`;

interface Expected {
  ids: number[][];
  logprobs: number[][];
  last_logits: number[][];
}

describe('HF reference fixtures', { skip }, () => {
  for (const name of ['llama-untied', 'llama-tied', 'phi', 'gpt2']) {
    it(`${name}: log-probs and last logits within 1e-4`, () => {
      const dir = path.join(SHARED, 'fixtures/reference', name);
      const exp = JSON.parse(fs.readFileSync(path.join(dir, 'expected.json'), 'utf8')) as Expected;
      const { model } = loadModel(dir);
      exp.ids.forEach((ids, s) => {
        const lp = tokenLogprobs(model, ids);
        assertClose(lp, exp.logprobs[s], 1e-4, `${name} logprobs[${s}]`);
        const last = noGrad(() =>
          scope(() => {
            const logits = model.forward(tensor(ids, [1, ids.length], 'i32')).logits;
            return slice(logits, 1, ids.length - 1, ids.length).toArray();
          }),
        );
        assertClose(last, exp.last_logits[s], 1e-4, `${name} last_logits[${s}]`);
      });
    });
  }

  it('KV-cache decoding reproduces the full forward (llama GQA, phi partial rotary, gpt2)', () => {
    for (const name of ['llama-tied', 'phi', 'gpt2']) {
      const dir = path.join(SHARED, 'fixtures/reference', name);
      const exp = JSON.parse(fs.readFileSync(path.join(dir, 'expected.json'), 'utf8')) as Expected;
      const { model } = loadModel(dir);
      const ids = exp.ids[0];
      const full = noGrad(() =>
        scope(() => model.forward(tensor(ids, [1, ids.length], 'i32')).logits.toArray()),
      );
      const cache = model.createCache(1);
      const V = model.info.vocabSize;
      // prefill 5 tokens, then one at a time
      const parts: number[] = [];
      noGrad(() => {
        let pos = 0;
        for (const len of [5, ...Array(ids.length - 5).fill(1)]) {
          const step = scope(() =>
            model.forward(tensor(ids.slice(pos, pos + len), [1, len], 'i32'), { cache }).logits.toArray(),
          );
          parts.push(...step);
          pos += len;
        }
      });
      assert.equal(cache.position, ids.length);
      assertClose(parts, full, 1e-4, `${name} cached logits`);
      cache.dispose();
      assert.equal(parts.length, ids.length * V);
    }
  });
});

describe('llama2.c stories260K', { skip }, () => {
  it('converts, loads, and greedy decoding from BOS reproduces llama2.c', async () => {
    const { convertLlama2c } = await import('../src/io/llama2c.js');
    const { generate } = await import('../src/generate/generate.js');
    const out = fs.mkdtempSync(path.join(os.tmpdir(), 'mohawk-l2c-'));
    const base = path.join(SHARED, 'data/stories260K');
    convertLlama2c(path.join(base, 'stories260K.bin'), path.join(base, 'tok512.bin'), out);
    const { model, tokenizer } = loadModel(out);
    const r = generate(model, tokenizer!, { prompt: '', maxNewTokens: 60, temperature: 0 });
    assert.ok(
      r.completion.startsWith(
        'Once upon a time, there was a little girl named Lily. She loved to play outside in the park. One day, she saw a big, red ball.',
      ),
      r.completion,
    );
    // the .model tokenizer gives the same vocabulary and encodes text the same way
    const out2 = fs.mkdtempSync(path.join(os.tmpdir(), 'mohawk-l2c-'));
    convertLlama2c(path.join(base, 'stories260K.bin'), path.join(base, 'tok512.model'), out2);
    const t2 = loadModel(out2).tokenizer!;
    const text = 'Once upon a time, Lily saw a big dog.';
    assert.deepEqual(t2.encode(text), tokenizer!.encode(text));
    assert.equal(tokenizer!.decode(tokenizer!.encode(text)), text);
    assert.equal(tokenizer!.encode(text)[0], 1);
  });
});
