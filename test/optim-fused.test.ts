// The fused optimizer passes (src/train/optimizer.ts, MOHAWK_FUSED_OPTIM) against the separate
// ones they replace, on the CPU backend: the rows' sums of squares against plain loops (exact
// zeros for all-zero rows, none for rows of tiny values whose f32 squares underflow), AdamW with
// the fused row flags equal to AdamW with sum(abs(g)) flags bit for bit, the non-finite flag, the
// 16-bit copy equal to a cast of the updated weights, and whole training runs (stage 3 with
// clipping, stage 1 where in_proj rows get no gradient) with and without the fusion: losses and
// weights equal to 1e-6 relative, gradient norms too (the fused norm sums in f64, the old one in f32).

import assert from 'node:assert/strict';
import { afterEach, describe, it } from 'node:test';
import type { Batch, BatchSource } from '../src/data/index.js';
import { toTensors } from '../src/data/index.js';
import { matrixOrientationStep, stage3Loss } from '../src/distill/stages.js';
import { transferStudent } from '../src/distill/transfer.js';
import {
  add,
  adamwStepFused,
  autocast,
  cast,
  getBackend,
  gradRowSquares,
  keep,
  linear,
  mul,
  scope,
  sum,
  sumF64Into,
  tensor,
  WeightCopies,
  withWeightCopies,
  zeros,
  type Tensor,
} from '../src/tensor/index.js';
import { AdamW, train, type TrainResult } from '../src/train/index.js';
import { Random } from '../src/util/random.js';
import { assertClose, tinyLlama } from './helpers.js';

const saved = process.env.MOHAWK_FUSED_OPTIM;
afterEach(() => {
  if (saved === undefined) delete process.env.MOHAWK_FUSED_OPTIM;
  else process.env.MOHAWK_FUSED_OPTIM = saved;
});

/** run fn with the fused passes on or off (read when an AdamW is made) */
function withFused<T>(on: boolean, fn: () => T): T {
  const prev = process.env.MOHAWK_FUSED_OPTIM;
  process.env.MOHAWK_FUSED_OPTIM = on ? '1' : '0';
  try {
    return fn();
  } finally {
    if (prev === undefined) delete process.env.MOHAWK_FUSED_OPTIM;
    else process.env.MOHAWK_FUSED_OPTIM = prev;
  }
}

const values = (t: Tensor) => Array.from(t.toArray());

describe('fused optimizer: the kernels on the CPU', () => {
  it('gradRowSquares: f64 sums of exact squares per row; all-zero rows exactly 0, tiny rows not', () => {
    const rows = 6;
    const len = 5;
    const rng = new Random(3);
    const g = Float32Array.from(rng.normals(rows * len));
    g.fill(0, 0, len); // row 0: no gradient
    g.fill(1e-30, 2 * len, 3 * len); // row 2: its f32 squares underflow, its f64 ones do not
    g.fill(0, 4 * len, 5 * len);
    g[4 * len + 3] = -0; // row 4: zeros, one negative
    const out = keep(zeros([rows + 2], 'f64'));
    gradRowSquares(tensor(g, [rows, len]), out, 1, rows);
    const got = values(out);
    assert.equal(got[0], 0, 'entries before `at` untouched');
    assert.equal(got[rows + 1], 0, 'entries after the rows untouched');
    for (let r = 0; r < rows; r++) {
      let ref = 0;
      for (let j = 0; j < len; j++) ref += g[r * len + j] * g[r * len + j];
      assertClose([got[1 + r]], [ref], 1e-12 * ref, `row ${r}`);
    }
    assert.equal(got[1], 0);
    assert.equal(got[5], 0);
    assert.ok(got[3] > 0, 'a row of 1e-30 has a gradient');
    const total = keep(zeros([3], 'f32'));
    sumF64Into(out, rows + 2, total, 2);
    assertClose(values(total), [0, 0, Math.fround(got.reduce((a, b) => a + b, 0))], 0, 'total');
    out.dispose();
    total.dispose();
  });

  it('gradRowSquares propagates NaN and infinity into the row and the total', () => {
    const g = tensor([1, 2, NaN, 4, Infinity, 0], [3, 2]);
    const out = keep(zeros([3], 'f64'));
    gradRowSquares(g, out, 0, 3);
    const got = values(out);
    assert.equal(got[0], 5);
    assert.ok(Number.isNaN(got[1]));
    assert.equal(got[2], Infinity);
    const total = keep(zeros([1], 'f32'));
    sumF64Into(out, 3, total, 0);
    assert.ok(Number.isNaN(values(total)[0]), 'the total of a NaN row is NaN');
    out.dispose();
    total.dispose();
  });

  it('adamwStepFused: the flags, the non-finite probe and the bf16 copy', () => {
    const rows = 4;
    const len = 3;
    const rng = new Random(9);
    const mk = (d: ArrayLike<number>) => keep(tensor(Array.from(d), [rows, len]));
    const p = mk(rng.normals(rows * len));
    const g = mk(rng.normals(rows * len));
    const m = mk(new Float32Array(rows * len));
    const v = mk(new Float32Array(rows * len));
    const sq = keep(tensor(Float64Array.of(1, 0, 2, 0), [4], 'f64'));
    const scalars = keep(tensor(Float64Array.of(0.1, 1, 1 - 0.9, 1 - 0.999), [4], 'f64'));
    const flag = keep(zeros([1], 'f32'));
    const p16 = keep(zeros([rows, len], 'bf16'));
    const before = values(p);
    adamwStepFused(p, g, m, v, scalars, sq, flag, p16, {
      beta1: 0.9,
      beta2: 0.999,
      eps: 1e-8,
      weightDecay: 0.5,
      biasAt: 2,
      rowLen: len,
      rowAt: 0,
    });
    const after = values(p);
    const gv = values(g);
    for (let r = 0; r < rows; r++)
      for (let c = 0; c < len; c++) {
        const k = r * len + c;
        // step 1: m^ / sqrt(v^) = sign(g); rows 1 and 3 (zero sums) do not decay
        const decay = r % 2 === 0 ? 1 - 0.1 * 0.5 : 1;
        assertClose([after[k]], [before[k] * decay - 0.1 * Math.sign(gv[k])], 1e-6, `row ${r} col ${c}`);
      }
    assert.equal(values(flag)[0], 0, 'finite weights: the flag stays 0');
    assert.deepEqual(values(p16), values(cast(p, 'bf16')), 'the bf16 copy is the cast of the new weights');
    // a NaN gradient makes its weight NaN: the flag goes to 1 (and stays)
    g.backend.write(
      g.buffer,
      Float32Array.from(gv, (x, i) => (i === 7 ? NaN : x)),
    );
    adamwStepFused(p, g, m, v, scalars, sq, flag, null, {
      beta1: 0.9,
      beta2: 0.999,
      eps: 1e-8,
      weightDecay: 0.5,
      biasAt: 2,
      rowLen: len,
      rowAt: 0,
    });
    assert.equal(values(flag)[0], 1, 'a NaN weight sets the flag');
    for (const t of [p, g, m, v, sq, scalars, flag, p16]) t.dispose();
  });
});

/** parameters with rows lacking a gradient, vectors (no decay) and one parameter without a gradient */
function makeParams(seed: number): { params: [string, Tensor][]; grads: (step: number) => void } {
  const rng = new Random(seed);
  const shapes: [string, number[]][] = [
    ['layers.0.mixer.in_proj.weight', [6, 4]],
    ['layers.0.mixer.D', [3]],
    ['layers.0.norm.weight', [4]],
    ['lm_head.weight', [5, 4]],
    ['layers.0.mlp.fc1.weight', [3, 4, 2]],
    ['layers.0.mlp.fc1.bias', [7]],
  ];
  const params = shapes.map(([n, s]): [string, Tensor] => {
    const t = keep(tensor(rng.normals(s.reduce((a, b) => a * b, 1)), s));
    t.requiresGrad = true;
    return [n, t];
  });
  const grads = (step: number) => {
    const r = new Random(seed * 100 + step);
    params.forEach(([, t], i) => {
      t.grad?.dispose();
      t.grad = null;
      if (i === 4 && step % 2 === 1) return; // skipped this step
      const g = r.normals(t.size, 0, 2);
      // in_proj: rows 1 and 4 without a gradient; lm_head: row 2 of tiny values
      if (i === 0) for (const row of [1, 4]) g.fill(0, row * 4, row * 4 + 4);
      if (i === 3) g.fill(1e-30, 8, 12);
      t.grad = keep(tensor(g, t.shape));
    });
  };
  return { params, grads };
}

describe('fused optimizer: AdamW against the separate passes (CPU)', () => {
  const cfg = { lr: 0.02, beta1: 0.8, beta2: 0.95, eps: 1e-6, weightDecay: 0.3 };

  /** 5 steps of AdamW on makeParams(4): weights, moments, step counts and the norms seen */
  const run = (fused: boolean, path: 'step' | 'deviceStep') => {
    const { params, grads } = makeParams(4);
    const opt = withFused(fused, () => new AdamW(params, cfg));
    assert.equal(opt.fused, fused);
    const norms: number[] = [];
    for (let s = 0; s < 5; s++) {
      grads(s);
      const lr = cfg.lr * (1 + 0.3 * s);
      if (path === 'step') opt.step(lr);
      else {
        let sq = 0;
        if (fused) sq = opt.gradSquaresHost();
        else
          for (const [, t] of params) if (t.grad) for (const x of t.grad.toArray()) sq += Math.fround(x * x);
        norms.push(Math.sqrt(sq));
        opt.prepareDeviceStep(lr, 0.7); // a clipping scale
        opt.deviceStep({ squaresReady: fused });
      }
    }
    const state = opt.stateDict();
    const out = {
      weights: params.map(([, t]) => values(t)),
      moments: [...state.tensors.values()].map(values),
      steps: state.steps,
      norms,
    };
    opt.dispose();
    for (const [, t] of params) {
      t.grad?.dispose();
      t.dispose();
    }
    return out;
  };

  it('deviceStep: weights and moments equal bit for bit over 5 steps, the norm to 1e-6', () => {
    const fused = run(true, 'deviceStep');
    const plain = run(false, 'deviceStep');
    assert.deepEqual(fused.weights, plain.weights);
    assert.deepEqual(fused.moments, plain.moments);
    assert.deepEqual(fused.steps, plain.steps);
    assertClose(fused.norms, plain.norms, 0, 'gradient norms', 1e-6);
  });

  it('step(lr): fused, the device step at scale 1; within 1e-6 of the separate decay pass + adamw', () => {
    const fused = run(true, 'step');
    const plain = run(false, 'step');
    assert.deepEqual(fused.steps, plain.steps);
    fused.weights.forEach((w, i) => assertClose(w, plain.weights[i], 1e-6, `weight ${i}`, 1e-6));
    fused.moments.forEach((w, i) => assertClose(w, plain.moments[i], 1e-6, `moment ${i}`, 1e-6));
  });

  it('deviceStep without squaresReady computes the row flags itself', () => {
    const run = (ready: boolean) => {
      const { params, grads } = makeParams(6);
      const opt = withFused(true, () => new AdamW(params, cfg));
      for (let s = 0; s < 3; s++) {
        // the pass that computes its own: a stale pass over the previous step's gradients
        // first, which must not leak into it; the ready run: a pass over this step's
        if (!ready) opt.gradSquaresHost();
        grads(s);
        if (ready) opt.gradSquaresHost();
        opt.prepareDeviceStep(cfg.lr, 1);
        opt.deviceStep({ squaresReady: ready });
      }
      const w = params.map(([, t]) => values(t));
      opt.dispose();
      return w;
    };
    assert.deepEqual(run(false), run(true));
  });
});

/** token windows from a counter: the same stream for every run */
function randomBatches(batch: number, seqLen: number, vocab: number, seed: number): BatchSource<Batch> {
  let i = 0;
  return {
    next: () => {
      const r = new Random(seed * 1000 + i++);
      const input = Int32Array.from({ length: batch * seqLen }, () => r.int(0, vocab));
      const target = Int32Array.from({ length: batch * seqLen }, () => r.int(0, vocab));
      return { batch, seqLen, input, target };
    },
    state: () => ({ i }),
    restore: (s) => {
      i = (s as { i: number }).i;
    },
  };
}

describe('fused optimizer: training runs with and without it (CPU)', () => {
  const optimizer = { lr: 3e-3, beta1: 0.9, beta2: 0.95, eps: 1e-8, weightDecay: 0.1 };
  const schedule = { kind: 'wsd' as const, warmupSteps: 2, decayFraction: 0.5 };

  // without clipping the norm does not enter the update: the weights are equal bit for bit; with
  // clipping the coefficient carries the norm's last bits (f64 against f32 sums) into them
  for (const [stage, clip] of [
    [3, 0],
    [3, 0.5],
    [1, 0.5],
  ] as const) {
    for (const mode of ['off', 'on'] as const) {
      it(`stage ${stage}, clip ${clip || 'off'}, graphs ${mode}: the losses, norms and weights of the separate passes`, () => {
        const teacher = tinyLlama({}, true);
        teacher.setTrainable(() => true, false);
        const run = (fused: boolean): { r: TrainResult; w: number[][] } =>
          withFused(fused, () => {
            const student = transferStudent(teacher, { chunkSize: 8, alphaInit: 0.9 });
            const r = train<Batch>({
              params: student,
              lossFn: (b: Batch, ctx: { accum: number }) => {
                const { input, target } = toTensors(b);
                return stage === 3
                  ? stage3Loss(teacher, student, input, target, { temperature: 2, ceWeight: 0.5 }).loss
                  : matrixOrientationStep(teacher, student, input, 1 / ctx.accum, true);
              },
              data: randomBatches(2, 16, 257, 3),
              budgetTokens: 5 * 64,
              batchTokens: 64,
              optimizer,
              schedule,
              maxGradNorm: clip,
              trainable: stage === 1 ? ['**.mixer.**'] : undefined,
              cudaGraph: mode,
              progress: false,
            });
            const w = student.namedParameters().map(([, t]) => values(t));
            student.dispose();
            return { r, w };
          });
        const f = run(true);
        const u = run(false);
        const curve = (r: TrainResult, k: 'loss' | 'grad_norm') => r.history.map((m) => m[k]);
        assertClose(curve(f.r, 'grad_norm'), curve(u.r, 'grad_norm'), 0, 'gradient norms', 1e-6);
        if (!clip) {
          assert.deepEqual(curve(f.r, 'loss'), curve(u.r, 'loss'));
          assert.deepEqual(f.w, u.w);
        } else {
          assert.ok(
            u.r.history.some((m) => m.grad_norm > clip),
            'clipping was exercised',
          );
          assertClose(curve(f.r, 'loss'), curve(u.r, 'loss'), 0, 'losses', 1e-6);
          f.w.forEach((w, i) =>
            assertClose(w, u.w[i], 1e-5 * Math.max(...u.w[i].map(Math.abs)), `weight ${i}`),
          );
        }
        teacher.dispose();
      });
    }
  }
});

describe('fused optimizer: the bf16 weight copies AdamW writes (CPU)', () => {
  it('a product reads the copy, records the cast (same gradient), and seal / clear behave', () => {
    const rng = new Random(8);
    const w = keep(tensor(rng.normals(12), [4, 3]));
    w.requiresGrad = true;
    const x = keep(tensor(rng.normals(6), [2, 3]));
    const copies = new WeightCopies([w], 'bf16');
    const run = (c: WeightCopies | null) =>
      scope(() =>
        autocast('bf16', () => {
          const y = withWeightCopies(c, () => linear(x, w, null));
          sum(mul(y, y)).backward();
          const g = values(w.grad!);
          w.grad!.dispose();
          w.grad = null;
          return { y: values(y), g };
        }),
      );
    const plain = run(null);
    assert.equal(copies.size, 0);
    const viaCopy = run(copies);
    assert.equal(copies.size, 1, 'the copy was made by the first product');
    assert.deepEqual(viaCopy, plain, 'same product and gradient as a cast');
    assert.deepEqual(values(copies.get(w)!), values(cast(w, 'bf16')));
    copies.clear();
    copies.seal();
    assert.equal(copies.take(w), undefined, 'sealed: no new copy');
    assert.deepEqual(run(copies), plain, 'no copy: the product casts');
    copies.dispose();
    w.dispose();
    x.dispose();
  });

  for (const mode of ['off', 'on'] as const) {
    it(`stage 3 under bf16 autocast, graphs ${mode}: with the copies equal to casting every step, bit for bit, and fewer casts`, () => {
      const teacher = tinyLlama({}, true);
      teacher.setTrainable(() => true, false);
      const be = getBackend() as unknown as Record<string, (...a: unknown[]) => void>;
      const run = (copies: boolean) => {
        const prev = process.env.MOHAWK_WEIGHT_COPIES;
        process.env.MOHAWK_WEIGHT_COPIES = copies ? '1' : '0';
        const realCast = be.cast;
        let casts = 0;
        be.cast = (...a: unknown[]) => {
          casts++;
          realCast(...a);
        };
        try {
          return withFused(true, () =>
            autocast('bf16', () => {
              const student = transferStudent(teacher, { chunkSize: 8, alphaInit: 0.9 });
              const r = train<Batch>({
                params: student,
                lossFn: (b: Batch) => {
                  const { input, target } = toTensors(b);
                  return stage3Loss(teacher, student, input, target, { temperature: 2, ceWeight: 0.5 }).loss;
                },
                data: randomBatches(2, 16, 257, 4),
                budgetTokens: 5 * 64,
                batchTokens: 64,
                optimizer: { lr: 3e-3, weightDecay: 0.1 },
                schedule: { kind: 'wsd', warmupSteps: 2, decayFraction: 0.5 },
                maxGradNorm: 0.5,
                cudaGraph: mode,
                progress: false,
              });
              const w = student.namedParameters().map(([, t]) => values(t));
              student.dispose();
              return { curve: r.history.map((m) => [m.loss, m.grad_norm]), w, casts };
            }),
          );
        } finally {
          be.cast = realCast;
          if (prev === undefined) delete process.env.MOHAWK_WEIGHT_COPIES;
          else process.env.MOHAWK_WEIGHT_COPIES = prev;
        }
      };
      const withCopies = run(true);
      const casting = run(false);
      assert.deepEqual(withCopies.curve, casting.curve);
      assert.deepEqual(withCopies.w, casting.w);
      assert.ok(
        withCopies.casts < casting.casts,
        `fewer casts with the copies (${withCopies.casts} vs ${casting.casts})`,
      );
      teacher.dispose();
    });
  }
});

describe('fused optimizer: gradient buffers written by copy (gradUnwritten)', () => {
  it('the first gradient overwrites a buffer that stands for zeros, later ones add', () => {
    const w = keep(tensor([1, 2, 3], [3]));
    w.requiresGrad = true;
    w.grad = keep(tensor([100, 100, 100], [3])); // garbage standing for zeros
    w.gradUnwritten = true;
    scope(() => sum(mul(w, w)).backward());
    assert.deepEqual(values(w.grad), [2, 4, 6]);
    assert.equal(w.gradUnwritten, false);
    scope(() => sum(w).backward());
    assert.deepEqual(values(w.grad), [3, 5, 7], 'the second contribution adds');
    w.grad.dispose();
    w.grad = null;
    w.gradUnwritten = true;
    scope(() => sum(w).backward());
    assert.equal(w.gradUnwritten, false, 'a leaf without a buffer forgets the flag');
    scope(() => sum(w).backward());
    assert.deepEqual(values(w.grad!), [2, 2, 2]);
    w.grad!.dispose();
    w.dispose();
  });

  it('a parameter that gets no gradient in a step has zeros, as with the fill (trainer, eager)', () => {
    const run = (fused: boolean) =>
      withFused(fused, () => {
        const a = keep(tensor([0.5, -1, 2], [3]));
        const b = keep(tensor([1, 1, -3], [3]));
        a.requiresGrad = b.requiresGrad = true;
        const x = keep(tensor([1, 2, 3], [3]));
        const params: [string, Tensor][] = [
          ['a.weight', a],
          ['b.weight', b],
        ];
        const r = train<Batch>({
          params,
          // b only in odd steps: its buffer exists from step 1 and must read as zeros in step 2
          lossFn: (_batch, ctx) =>
            ctx.step % 2 === 1 ? add(sum(mul(mul(a, x), a)), sum(mul(b, b))) : sum(mul(mul(a, x), a)),
          data: randomBatches(1, 4, 10, 1),
          budgetTokens: 6 * 4,
          batchTokens: 4,
          optimizer: { lr: 0.1, weightDecay: 0.1 },
          schedule: { kind: 'wsd', warmupSteps: 1, decayFraction: 0.5 },
          maxGradNorm: 0,
          cudaGraph: 'off',
          progress: false,
        });
        const out = { w: [values(a), values(b)], loss: r.history.map((m) => m.loss) };
        for (const t of [a, b, x]) t.dispose();
        return out;
      });
    assert.deepEqual(run(true), run(false));
  });
});

describe('fused optimizer: weight gradients written straight into unwritten buffers', () => {
  for (const precision of ['f32', 'bf16'] as const)
    for (const copies of precision === 'bf16' ? [false, true] : [false])
      it(`${precision}${copies ? ' with weight copies' : ''}: dW lands in .grad with no copy, equal to the usual path`, () => {
        const rng = new Random(12);
        const x = keep(tensor(rng.normals(2 * 5 * 4), [2, 5, 4]));
        const data = rng.normals(12);
        const be = getBackend() as unknown as Record<string, (...a: unknown[]) => void>;
        const run = (direct: boolean) => {
          const w = keep(tensor(data, [3, 4]));
          w.requiresGrad = true;
          w.grad = keep(tensor(new Float32Array(12).fill(NaN), [3, 4])); // garbage: never read
          w.gradUnwritten = true;
          const wc = copies ? new WeightCopies([w], 'bf16') : null;
          const prev = process.env.MOHAWK_GRAD_INTO;
          process.env.MOHAWK_GRAD_INTO = direct ? '1' : '0';
          const realCopy = be.copyStrided;
          let copiesIntoGrad = 0;
          be.copyStrided = (...a: unknown[]) => {
            if (a[3] === w.grad!.buffer) copiesIntoGrad++;
            realCopy(...a);
          };
          try {
            scope(() =>
              autocast(precision === 'bf16' ? 'bf16' : null, () => {
                const y = withWeightCopies(wc, () => linear(x, w, null));
                sum(mul(y, y)).backward();
              }),
            );
          } finally {
            be.copyStrided = realCopy;
            if (prev === undefined) delete process.env.MOHAWK_GRAD_INTO;
            else process.env.MOHAWK_GRAD_INTO = prev;
          }
          const out = { g: values(w.grad), flag: w.gradUnwritten, copiesIntoGrad };
          wc?.dispose();
          w.grad.dispose();
          w.dispose();
          return out;
        };
        const direct = run(true);
        const usual = run(false);
        assert.deepEqual(direct.g, usual.g);
        assert.equal(direct.flag, false);
        assert.equal(direct.copiesIntoGrad, 0, 'the product wrote the gradient itself');
        assert.equal(usual.copiesIntoGrad, 1, 'the usual path copies the fresh gradient in');
        x.dispose();
      });
});
