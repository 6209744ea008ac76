// The fused, chunked linear + softmax + KL (+ cross-entropy) loss against the unfused path
// (linear -> klDivergence / crossEntropy with autograd): loss values and every gradient, on the
// CPU backend, with chunks that do not divide the tokens, padded vocabularies, biases, temperature.

import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { stage3Loss } from '../src/distill/stages.js';
import { studentConfigFor } from '../src/distill/transfer.js';
import { LlamaForCausalLM } from '../src/models/llama.js';
import { StudentLM } from '../src/models/phi-mamba.js';
import * as T from '../src/tensor/index.js';
import { linearKLDivergence, noGrad, scope, type Tensor } from '../src/tensor/index.js';
import { Random } from '../src/util/random.js';
import { assertClose, randn } from './helpers.js';

interface Case {
  n: number;
  ds: number;
  dt: number;
  vocab: number;
  /** extra (padded) rows of the student's head */
  pad: number;
  bias: boolean;
  tau: number;
  ceWeight: number;
  chunkRows: number;
  dtype: 'f32' | 'f64';
}

function run(c: Case) {
  const rng = new Random(7);
  const leaf = (shape: number[], std = 1) => {
    const t = randn(rng, shape, c.dtype, std);
    t.requiresGrad = true;
    return t;
  };
  const xs = leaf([c.n, c.ds]);
  const ws = leaf([c.vocab + c.pad, c.ds], 0.5);
  const bs = c.bias ? leaf([c.vocab + c.pad], 0.5) : null;
  const xt = randn(rng, [c.n, c.dt], c.dtype);
  const wt = randn(rng, [c.vocab, c.dt], c.dtype, 0.5);
  const bt = c.bias ? randn(rng, [c.vocab], c.dtype, 0.5) : null;
  const targets = T.tensor(
    Int32Array.from({ length: c.n }, (_, i) => (i % 5 === 3 ? -100 : rng.int(0, c.vocab))),
    [c.n],
    'i32',
  );
  const grads = (loss: Tensor) => {
    loss.backward();
    const out = [xs, ws, ...(bs ? [bs] : [])].map((t) => Array.from(t.grad!.toArray()));
    for (const t of [xs, ws, bs]) if (t) t.grad = null;
    return out;
  };
  // unfused: full logits, then the ops with their own backward
  const ref = scope(() => {
    const zs = T.slice(T.linear(xs, ws, bs), -1, 0, c.vocab);
    const zt = noGrad(() => T.linear(xt, wt, bt));
    const kl = T.klDivergence(zt, zs, { temperature: c.tau });
    let loss = kl;
    let ce: Tensor | null = null;
    if (c.ceWeight > 0) {
      ce = T.crossEntropy(zs, targets);
      loss = T.add(loss, T.scale(ce, c.ceWeight));
    }
    return { loss: loss.item(), kl: kl.item(), ce: ce?.item() ?? null, grads: grads(loss) };
  });
  const fused = scope(() => {
    const r = linearKLDivergence(
      { x: xs, weight: ws, bias: bs },
      { x: xt, weight: wt, bias: bt },
      { vocab: c.vocab, temperature: c.tau, targets, ceWeight: c.ceWeight, chunkRows: c.chunkRows },
    );
    return { loss: r.loss.item(), kl: r.kl.item(), ce: r.ce?.item() ?? null, grads: grads(r.loss) };
  });
  return { ref, fused };
}

describe('linearKLDivergence (fused, chunked head + KL + CE)', () => {
  const base: Case = {
    n: 23,
    ds: 12,
    dt: 16,
    vocab: 37,
    pad: 0,
    bias: false,
    tau: 1,
    ceWeight: 0,
    chunkRows: 5,
    dtype: 'f64',
  };
  const cases: [string, Partial<Case>][] = [
    ['KL only, chunks of 5 over 23 tokens', {}],
    ['one chunk', { chunkRows: 100 }],
    ['KL + cross-entropy with ignored targets, temperature 2', { ceWeight: 0.5, tau: 2 }],
    ['biases and a padded student vocabulary', { bias: true, pad: 3, ceWeight: 0.25 }],
  ];
  for (const [name, over] of cases)
    it(`${name}: equals the unfused loss and gradients (f64, 1e-10)`, () => {
      const { ref, fused } = run({ ...base, ...over });
      assertClose([fused.loss, fused.kl], [ref.loss, ref.kl], 1e-10, 'loss, kl');
      if (ref.ce !== null) assertClose([fused.ce!], [ref.ce], 1e-10, 'ce');
      else assert.equal(fused.ce, null);
      ref.grads.forEach((g, i) => assertClose(fused.grads[i], g, 1e-10, `gradient ${i}`));
    });
  it('f32: within float rounding of the unfused path', () => {
    const { ref, fused } = run({ ...base, dtype: 'f32', ceWeight: 1, bias: true });
    assertClose([fused.loss], [ref.loss], 1e-5, 'loss', 1e-5);
    ref.grads.forEach((g, i) => assertClose(fused.grads[i], g, 1e-6, `gradient ${i}`, 1e-4));
  });
  it('bf16 autocast, KL only, no bias: the gradient rounded by the KL backward equals the composed cast (MOHAWK_FUSED_KL=0) bit for bit', () => {
    const c: Case = { ...base, dtype: 'f32', n: 40, vocab: 300, chunkRows: 16 };
    const under = (env: string | undefined) => {
      const prev = process.env.MOHAWK_FUSED_KL;
      if (env === undefined) delete process.env.MOHAWK_FUSED_KL;
      else process.env.MOHAWK_FUSED_KL = env;
      T.setAutocast('bf16');
      try {
        return run(c);
      } finally {
        T.setAutocast(null);
        if (prev === undefined) delete process.env.MOHAWK_FUSED_KL;
        else process.env.MOHAWK_FUSED_KL = prev;
      }
    };
    const direct = under(undefined);
    const composed = under('0');
    assert.equal(direct.fused.loss, composed.fused.loss);
    direct.fused.grads.forEach((g, i) => assert.deepEqual(g, composed.fused.grads[i], `gradient ${i}`));
    // and within bf16 rounding of the unfused path
    direct.ref.grads.forEach((g, i) =>
      assertClose(direct.fused.grads[i], g, 2e-2 * Math.max(...g.map(Math.abs)), `gradient ${i}`),
    );
  });
  it('checks shapes and targets', () => {
    const r = new Random(1);
    const x = randn(r, [4, 3]);
    const w = randn(r, [5, 3]);
    assert.throws(
      () => linearKLDivergence({ x, weight: w, bias: null }, { x: randn(r, [3, 3]), weight: w, bias: null }),
      /equal N/,
    );
    assert.throws(
      () => linearKLDivergence({ x, weight: w, bias: null }, { x, weight: w, bias: null }, { ceWeight: 1 }),
      /needs 4 i32 targets/,
    );
  });
});

describe('stage 3 with the fused head', () => {
  it('gives the unfused loss and student gradients (Llama teacher, Llamba student with a padded vocabulary)', () => {
    const teacher = new LlamaForCausalLM(
      {
        vocabSize: 50,
        hiddenSize: 16,
        intermediateSize: 24,
        numLayers: 1,
        numHeads: 2,
        numKvHeads: 1,
        headDim: 8,
        rmsNormEps: 1e-5,
        ropeTheta: 10000,
        maxPositionEmbeddings: 32,
        tieWordEmbeddings: true,
        attentionBias: false,
        mlpBias: false,
        bosTokenId: null,
        eosTokenId: null,
      },
      { rng: new Random(3) },
    );
    teacher.setTrainable(() => true, false);
    const cfg = { ...studentConfigFor(teacher, { chunkSize: 4 }), padVocabSizeMultiple: 16 };
    const student = new StudentLM(cfg, { rng: new Random(4) });
    assert.equal(student.paddedVocab, 64);
    const rng = new Random(5);
    const ids = T.tensor(
      Int32Array.from({ length: 2 * 8 }, () => rng.int(0, 50)),
      [2, 8],
      'i32',
    );
    const target = T.tensor(
      Int32Array.from({ length: 2 * 8 }, () => rng.int(0, 50)),
      [2, 8],
      'i32',
    );
    const run = (fusedHead: boolean) =>
      scope(() => {
        const r = stage3Loss(teacher, student, ids, target, { temperature: 1.5, ceWeight: 0.3 }, null, {
          fusedHead,
          chunkRows: 5,
        });
        r.loss.backward();
        const grads = student.namedParameters().map(([n, p]) => [n, Array.from(p.grad!.toArray())] as const);
        student.zeroGrad();
        return { loss: r.loss.item(), kl: r.parts.kl.item(), ce: r.parts.ce.item(), grads };
      });
    const ref = run(false);
    const fused = run(true);
    assertClose([fused.loss, fused.kl, fused.ce], [ref.loss, ref.kl, ref.ce], 1e-5, 'loss, kl, ce', 1e-5);
    for (let i = 0; i < ref.grads.length; i++)
      assertClose(fused.grads[i][1], ref.grads[i][1], 1e-6, `gradient of ${ref.grads[i][0]}`, 1e-3);
  });
});
