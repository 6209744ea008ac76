// Shared test helpers: random tensors, closeness checks, and central finite differences in f64.

import assert from 'node:assert/strict';
import path from 'node:path';
import type { Backend, DType } from '../src/backends/backend.js';
import * as T from '../src/tensor/index.js';
import { noGrad, scope, sum, mul, tensor, Tensor } from '../src/tensor/index.js';
import { Random } from '../src/util/random.js';
import { LlamaForCausalLM, type LlamaConfig } from '../src/models/llama.js';
import { PhiForCausalLM } from '../src/models/phi.js';
import { writeTokenSplits } from '../src/data/shards.js';

export function randn(rng: Random, shape: number[], dtype: DType = 'f64', std = 1): Tensor {
  const n = shape.reduce((a, b) => a * b, 1);
  const data = new Float64Array(n);
  for (let i = 0; i < n; i++) data[i] = rng.normal(0, std);
  return tensor(data, shape, dtype);
}

export function param(t: Tensor): Tensor {
  t.requiresGrad = true;
  return t;
}

/** max |a - b| <= atol + rtol * |b| elementwise */
export function assertClose(
  actual: ArrayLike<number>,
  expected: ArrayLike<number>,
  atol: number,
  what = 'values',
  rtol = 0,
): void {
  assert.equal(actual.length, expected.length, `${what}: length ${actual.length} vs ${expected.length}`);
  let worst = 0;
  let at = -1;
  for (let i = 0; i < actual.length; i++) {
    const a = actual[i];
    const e = expected[i];
    if (Number.isNaN(a) !== Number.isNaN(e)) assert.fail(`${what}[${i}]: ${a} vs ${e}`);
    if (a === e) continue;
    const d = Math.abs(a - e) - rtol * Math.abs(e);
    if (!(d <= worst)) {
      worst = d;
      at = i;
    }
  }
  assert.ok(
    worst <= atol,
    `${what}: max error ${worst} at [${at}] (${actual[at]} vs ${expected[at]}) exceeds ${atol}`,
  );
}

/**
 * Compare the analytic gradients of sum(f(inputs) * W), W fixed random, with central
 * differences. Inputs should be f64 tensors; `maxPoints` samples positions of large inputs.
 */
export function gradcheck(
  f: (...xs: Tensor[]) => Tensor,
  inputs: Tensor[],
  opts: {
    eps?: number;
    atol?: number;
    rtol?: number;
    maxPoints?: number;
    seed?: number;
    only?: number[];
  } = {},
): void {
  const eps = opts.eps ?? 1e-6;
  const atol = opts.atol ?? 1e-7;
  const rtol = opts.rtol ?? 1e-5;
  const rng = new Random(opts.seed ?? 99);
  const probe = noGrad(() => scope(() => f(...inputs)));
  const weights = randn(rng, [...probe.shape], probe.dtype);
  probe.dispose();
  const objective = (): number => noGrad(() => scope(() => sum(mul(f(...inputs), weights)).item()));
  for (const x of inputs) {
    x.requiresGrad = true;
    x.grad?.dispose();
    x.grad = null;
  }
  scope(() => sum(mul(f(...inputs), weights)).backward());
  const which = opts.only ?? inputs.map((_, i) => i);
  for (const idx of which) {
    const x = inputs[idx];
    assert.ok(x.grad, `input ${idx} received no gradient`);
    const analytic = x.grad.toArray();
    const values = x.toArray() as Float64Array;
    const n = values.length;
    const maxPoints = opts.maxPoints ?? 40;
    const points = n <= maxPoints ? [...Array(n).keys()] : [...Array(maxPoints)].map(() => rng.int(0, n));
    for (const i of points) {
      const orig = values[i];
      values[i] = orig + eps;
      x.backend.write(x.buffer, values);
      const up = objective();
      values[i] = orig - eps;
      x.backend.write(x.buffer, values);
      const down = objective();
      values[i] = orig;
      x.backend.write(x.buffer, values);
      const numeric = (up - down) / (2 * eps);
      const err = Math.abs(numeric - analytic[i]);
      assert.ok(
        err <= atol + rtol * Math.abs(numeric),
        `gradient of input ${idx} at [${i}]: analytic ${analytic[i]} vs numeric ${numeric} (error ${err})`,
      );
    }
    x.grad.dispose();
    x.grad = null;
  }
  weights.dispose();
}

/** ../shared beside the repository: read-only data and reference fixtures (tests skip without it) */
export const SHARED = path.resolve(import.meta.dirname, '../../shared');

/** The tiny Llama teacher of the distill, mixer, serve and chat-data tests (byte vocabulary). */
export const TINY_LLAMA: LlamaConfig = {
  vocabSize: 257,
  hiddenSize: 32,
  intermediateSize: 64,
  numLayers: 2,
  numHeads: 4,
  numKvHeads: 2,
  headDim: 8,
  rmsNormEps: 1e-5,
  ropeTheta: 10000,
  maxPositionEmbeddings: 256,
  tieWordEmbeddings: false,
  attentionBias: false,
  mlpBias: false,
  bosTokenId: 256,
  eosTokenId: 256,
};

/**
 * A tiny random Llama (seed 1) from TINY_LLAMA with `overrides`; `sharpen` scales the projection
 * and lm_head weights by 3 so that its distributions carry structure (clear greedy winners).
 */
export function tinyLlama(overrides: Partial<LlamaConfig> = {}, sharpen = false): LlamaForCausalLM {
  const m = new LlamaForCausalLM({ ...TINY_LLAMA, ...overrides }, { rng: new Random(1) });
  if (sharpen)
    for (const [n, p] of m.namedParameters())
      if (n.endsWith('proj.weight') || n === 'lm_head.weight')
        p.backend.write(
          p.buffer,
          Float32Array.from(p.toArray(), (v) => v * 3),
        );
  return m;
}

/** Byte-like token splits of a patterned text (seed 9) in DIR/data: `trainTokens` train, the rest val. */
export function writePatternedSplits(dir: string, tokens: number, trainTokens: number): void {
  const r = new Random(9);
  const doc = Array.from({ length: tokens }, (_, i) => (i % 7 === 0 ? 32 : 97 + ((r.int(0, 5) + i) % 26)));
  writeTokenSplits(
    path.join(dir, 'data'),
    { train: { documents: [doc.slice(0, trainTokens)] }, val: { documents: [doc.slice(trainTokens)] } },
    { vocabSize: TINY_LLAMA.vocabSize, eosTokenId: 256 },
  );
}

/** fn() with the environment variable `name` set to value (unset for undefined), restored after */
export function withEnv<R>(name: string, value: string | undefined, fn: () => R): R {
  const prev = process.env[name];
  if (value === undefined) delete process.env[name];
  else process.env[name] = value;
  try {
    return fn();
  } finally {
    if (prev === undefined) delete process.env[name];
    else process.env[name] = prev;
  }
}

/**
 * x (leaf) -> n = 1.5 x, read under bf16 autocast by a linear layer and then by `second` (a linear
 * layer, or fc1 + GELU as one op); the loss weights both outputs. Returns the gradients of x, w1,
 * w2, b1 and how many adds of an x-sized gradient the backend ran (autograd summing the two
 * consumers' parts), with MOHAWK_GRAD_ACCUMULATE on or off (test/bias-grad, test/cuda).
 */
export function twoConsumers(
  be: Backend,
  second: 'linear' | 'linearActivation',
  accumulate: boolean,
  /** which consumer's backward runs last (finding the other's gradient): the order of the loss's terms */
  last: 'first' | 'second' = 'first',
): { grads: number[][]; adds: number } {
  return withEnv('MOHAWK_GRAD_ACCUMULATE', accumulate ? undefined : '0', () => {
    const prevBackend = T.getBackend();
    T.setBackend(be);
    const r = new Random(11);
    const x = T.keep(T.tensor(r.normals(6 * 40, 0, 1), [2, 3, 40]));
    x.requiresGrad = true;
    const w1 = T.keep(T.tensor(r.normals(24 * 40, 0, 0.3), [24, 40]));
    const w2 = T.keep(T.tensor(r.normals(56 * 40, 0, 0.3), [56, 40]));
    const b1 = T.keep(T.tensor(r.normals(24, 0, 0.1), [24]));
    const b2 = T.keep(T.tensor(r.normals(56, 0, 0.1), [56]));
    for (const p of [w1, w2, b1, b2]) p.requiresGrad = true;
    const c1 = T.keep(T.tensor(r.normals(6 * 24, 0, 1), [2, 3, 24]));
    const c2 = T.keep(T.tensor(r.normals(6 * 56, 0, 1), [2, 3, 56]));
    let adds = 0;
    const own = Object.prototype.hasOwnProperty.call(be, 'binary');
    const prevOwn = be.binary;
    const binary = be.binary.bind(be);
    be.binary = (op, a, as, b, bs, out, shape) => {
      if (op === 'add' && shape.reduce((p, q) => p * q, 1) === x.size) adds++;
      return binary(op, a, as, b, bs, out, shape);
    };
    try {
      T.scope(() =>
        T.autocast('bf16', () => {
          const n = T.scale(x, 1.5);
          const y1 = T.linear(n, w1, b1);
          const y2 = second === 'linear' ? T.linear(n, w2, null) : T.linearActivation(n, w2, b2, 'geluNew');
          if (!y2) throw new Error(`twoConsumers: ${second} does not apply on ${be.name}`);
          const t1 = T.sum(T.mul(y1, c1));
          // fc1 + GELU as one op stores its output in bf16
          const t2 = T.sum(T.mul(y2.dtype === 'f32' ? y2 : T.cast(y2, 'f32'), c2));
          // backward takes the loss's last term first: the other consumer then finds its gradient
          (last === 'first' ? T.add(t1, t2) : T.add(t2, t1)).backward();
        }),
      );
      const grads = [x, w1, w2, b1].map((t) => Array.from(t.grad!.toArray()));
      return { grads, adds };
    } finally {
      // the backend's own method again (an instance property only where there was one)
      if (own) be.binary = prevOwn;
      else Reflect.deleteProperty(be, 'binary');
      for (const t of [x, w1, w2, b1, b2, c1, c2]) {
        t.grad?.dispose();
        t.dispose();
      }
      T.setBackend(prevBackend);
    }
  });
}

/** a tiny Phi teacher (vocab 97, d 32, 4 heads of 8, partial rotary 0.5, gelu_new), seeded */
export function tinyPhi(numLayers = 2): PhiForCausalLM {
  return new PhiForCausalLM(
    {
      vocabSize: 97,
      hiddenSize: 32,
      intermediateSize: 128,
      numLayers,
      numHeads: 4,
      numKvHeads: 4,
      headDim: 8,
      rotaryDim: 4,
      partialRotaryFactor: 0.5,
      ropeTheta: 10000,
      layerNormEps: 1e-5,
      hiddenAct: 'gelu_new',
      maxPositionEmbeddings: 64,
      tieWordEmbeddings: false,
      bosTokenId: 0,
      eosTokenId: 0,
    },
    { rng: new Random(1) },
  );
}
