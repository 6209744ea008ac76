// A linear layer's backward under 16-bit autocast with the bias gradient taken from the pass that
// rounds the output gradient (castColumnSums, MOHAWK_FUSED_BIAS_GRAD): the kernel against an f64
// loop, and the linear op's gradients against the unfused path and the bias's exact gradient.

import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { CpuBackend } from '../src/backends/cpu/index.js';
import { bf16ToF32, f16ToF32, f32ToBf16 } from '../src/backends/dtype.js';
import * as T from '../src/tensor/index.js';
import { Random } from '../src/util/random.js';
import { assertClose } from './helpers.js';

/** the tanh GELU's derivative in f64 */
function geluNewGrad(x: number): number {
  const c = Math.sqrt(2 / Math.PI);
  const t = Math.tanh(c * (x + 0.044715 * x ** 3));
  return 0.5 * (1 + t) + 0.5 * x * (1 - t * t) * c * (1 + 3 * 0.044715 * x * x);
}

/** run fn with env `name` set to `value` (undefined: unset), restored afterwards */
function withEnv<R>(name: string, value: string | undefined, fn: () => R): R {
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

describe('castColumnSums (cpu)', () => {
  const cpu = new CpuBackend();
  for (const [rows, cols] of [
    [7, 5],
    [64, 12],
    [1, 3],
  ])
    for (const op of [null, 'geluNew'] as const)
      for (const dt of ['bf16', 'f16'] as const)
        it(`(${rows}, ${cols}) ${op ?? 'plain'} into ${dt}: the rounded values and f32 column sums`, () => {
          const r = new Random(rows * 100 + cols);
          const g = Float32Array.from(r.normals(rows * cols, 0, 2));
          const x16 = Uint16Array.from(r.normals(rows * cols, 0, 1.5), (v) => f32ToBf16(v));
          const gb = cpu.alloc('f32', rows * cols);
          const xb = cpu.alloc('bf16', rows * cols);
          const ob = cpu.alloc(dt, rows * cols);
          const sb = cpu.alloc('f32', cols);
          cpu.write(gb, g);
          cpu.write(xb, x16);
          cpu.castColumnSums(gb, ob, sb, rows, cols, op, op ? xb : null);
          const v = Array.from(g, (gi, i) => (op ? Math.fround(gi * geluNewGrad(bf16ToF32(x16[i]))) : gi));
          const o = cpu.read(ob) as Uint16Array;
          const dec = dt === 'bf16' ? bf16ToF32 : f16ToF32;
          // rounded to nearest: within half a unit in the last place (2^-8 bf16, 2^-11 f16, relative;
          // f16 subnormals 2^-25 absolute)
          const rel = dt === 'bf16' ? 2 ** -8 : 2 ** -11;
          assertClose(Array.from(o, dec), v, 2 ** -25, 'rounded gradient', rel);
          const sums = new Array<number>(cols).fill(0);
          for (let i = 0; i < rows; i++) for (let j = 0; j < cols; j++) sums[j] += v[i * cols + j];
          assertClose(
            Array.from(cpu.read(sb)),
            sums,
            1e-5 * Math.max(1, ...sums.map(Math.abs)),
            'column sums',
          );
          for (const b of [gb, xb, ob, sb]) cpu.free(b);
        });
});

describe('linear under bf16 autocast: the bias gradient from the cast pass', () => {
  /** loss = sum(linear(x, w, b) * weights) under bf16 autocast; gradients of x, w, b */
  const run = (shapeX: number[], outF: number) => {
    const r = new Random(shapeX.reduce((a, b) => a + b, outF));
    const inF = shapeX[shapeX.length - 1];
    const rows = shapeX.slice(0, -1).reduce((a, b) => a * b, 1);
    const mk = (shape: number[], std: number) => {
      const t = T.tensor(
        r.normals(
          shape.reduce((a, b) => a * b, 1),
          0,
          std,
        ),
        shape,
      );
      t.requiresGrad = true;
      return T.keep(t);
    };
    const x = mk(shapeX, 1);
    const w = mk([outF, inF], 0.3);
    const b = mk([outF], 0.5);
    const weights = T.keep(T.tensor(r.normals(rows * outF, 0, 1), [...shapeX.slice(0, -1), outF]));
    // count the fused passes
    const be = T.getBackend();
    const orig = be.castColumnSums!;
    let calls = 0;
    be.castColumnSums = (...args) => {
      calls++;
      orig.apply(be, args);
    };
    try {
      T.scope(() => T.autocast('bf16', () => T.sum(T.mul(T.linear(x, w, b), weights)).backward()));
    } finally {
      be.castColumnSums = orig;
    }
    const out = {
      grads: [x, w, b].map((t) => Array.from(t.grad!.toArray())),
      weights: Array.from(weights.toArray()),
      calls,
    };
    for (const t of [x, w, b, weights]) {
      t.grad?.dispose();
      t.dispose();
    }
    return out;
  };

  for (const [shapeX, outF] of [
    [[2, 9, 6], 10],
    [[5, 4], 3],
  ] as const)
    it(`x ${JSON.stringify(shapeX)} -> ${outF}: the same gradients as the cast + column sum, the bias's exactly`, () => {
      const fused = run([...shapeX], outF);
      const plain = withEnv('MOHAWK_FUSED_BIAS_GRAD', '0', () => run([...shapeX], outF));
      assert.equal(fused.calls, 1, 'one fused pass');
      assert.equal(plain.calls, 0, 'none with MOHAWK_FUSED_BIAS_GRAD=0');
      // the CPU composes castColumnSums from the same kernels: the same numbers
      assert.deepEqual(fused.grads, plain.grads);
      // the bias's gradient is the column sums of the (f32) upstream gradient, unrounded
      const rows = fused.weights.length / outF;
      const expected = new Array<number>(outF).fill(0);
      for (let i = 0; i < rows; i++)
        for (let j = 0; j < outF; j++) expected[j] += fused.weights[i * outF + j];
      assertClose(fused.grads[2], expected, 1e-5, 'bias gradient');
    });
});
