// A linear layer's backward under 16-bit autocast with the bias gradient taken from the pass that
// rounds the output gradient (castColumnSums, MOHAWK_FUSED_BIAS_GRAD): the kernel against an f64
// loop, and the linear op's gradients against the unfused path and the bias's exact gradient.

import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import type { DeviceBuffer, UnaryOp } from '../src/backends/backend.js';
import { CpuBackend } from '../src/backends/cpu/index.js';
import { bf16ToF32, f16ToF32, f32ToBf16 } from '../src/backends/dtype.js';
import { MLP } from '../src/nn/mlp.js';
import * as T from '../src/tensor/index.js';
import { Random } from '../src/util/random.js';
import { assertClose, twoConsumers, withEnv } from './helpers.js';

/** the tanh GELU's derivative in f64 */
function geluNewGrad(x: number): number {
  const c = Math.sqrt(2 / Math.PI);
  const t = Math.tanh(c * (x + 0.044715 * x ** 3));
  return 0.5 * (1 + t) + 0.5 * x * (1 - t * t) * c * (1 + 3 * 0.044715 * x * x);
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
    it(`x ${JSON.stringify(shapeX)} -> ${outF}: the same gradients as the cast + column sum; the bias's the column sums of the upstream gradient (1e-5)`, () => {
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

/** the CPU backend with unaryKeep16 composed from its kernels (and 16-bit inputs to unaryBackward) */
class CpuKeep16 extends CpuBackend {
  unaryKeep16(op: UnaryOp, x: DeviceBuffer, out: DeviceBuffer, xOut: DeviceBuffer): void {
    this.unary(op, x, out, 1, 0);
    this.cast(x, xOut);
  }

  override unaryBackward(op: UnaryOp, x: DeviceBuffer, gy: DeviceBuffer, gx: DeviceBuffer): void {
    if (x.dtype === 'f32' || x.dtype === 'f64') return super.unaryBackward(op, x, gy, gx);
    const xf = this.alloc('f32', x.length);
    this.cast(x, xf);
    super.unaryBackward(op, xf, gy, gx);
    this.free(xf);
  }
}

describe('linearActivation: fc1 and its activation as one op under bf16 autocast (MOHAWK_FUSED_LINEAR_ACT)', () => {
  /** loss = sum(mlp(x) * weights) through the MLP module: gradients of x and every parameter */
  const run = (be: CpuBackend, act: 'gelu_new' | 'silu', env: string | undefined) =>
    withEnv('MOHAWK_FUSED_LINEAR_ACT', env, () => {
      const prev = T.getBackend();
      T.setBackend(be);
      try {
        const r = new Random(71);
        const mlp = new MLP(12, 40, act, { rng: r });
        const params = mlp.parameters();
        const x = T.keep(T.tensor(r.normals(3 * 7 * 12, 0, 1), [3, 7, 12]));
        x.requiresGrad = true;
        const weights = T.keep(T.tensor(r.normals(3 * 7 * 12, 0, 1), [3, 7, 12]));
        let ops: string[] = [];
        const loss = T.scope(() =>
          T.autocast('bf16', () => {
            const y = mlp.forward(x);
            ops = [y.node!.inputs[0].node!.op];
            const l = T.sum(T.mul(y, weights));
            l.backward();
            return l.item();
          }),
        );
        const grads = [x, ...params].map((t) => Array.from(t.grad!.toArray()));
        for (const t of [x, weights, ...params]) {
          t.grad?.dispose();
          t.dispose();
        }
        return { loss, grads, ops };
      } finally {
        T.setBackend(prev);
      }
    });

  for (const act of ['gelu_new', 'silu'] as const)
    it(`${act}: the composed ops' gradients (same numbers), near the f32-kept-input path`, () => {
      const keep16 = new CpuKeep16();
      const fused = run(keep16, act, undefined);
      const composed = run(keep16, act, '0');
      const plain = run(new CpuBackend(), act, undefined);
      assert.deepEqual(fused.ops, ['linearActivation']);
      assert.notDeepEqual(composed.ops, ['linearActivation']);
      assert.notDeepEqual(plain.ops, ['linearActivation']);
      // the same kernels in the same order (the pre-activation's gradient rounded once, the bias's
      // summed before rounding): equal
      assert.equal(fused.loss, composed.loss);
      assert.deepEqual(fused.grads, composed.grads);
      // the plain CPU backend keeps the f32 pre-activation for the derivative: bf16 apart
      assert.ok(Math.abs(fused.loss - plain.loss) <= 1e-2 * Math.abs(plain.loss) + 1e-3);
      plain.grads.forEach((g, i) =>
        assertClose(fused.grads[i], g, 2e-2 * Math.max(...g.map(Math.abs)) + 1e-6, `gradient ${i}`),
      );
    });
});

describe('linearActivation: its weight gradient written straight into an unwritten .grad', () => {
  it('equals the usual path (a fresh product copied in), with no copy into the buffer', () => {
    const be = new CpuKeep16();
    const run = (direct: boolean) =>
      withEnv('MOHAWK_GRAD_INTO', direct ? undefined : '0', () => {
        const prev = T.getBackend();
        T.setBackend(be);
        const realCopy = be.copyStrided.bind(be);
        let copiesIntoGrad = 0;
        try {
          const r = new Random(5);
          const x = T.keep(T.tensor(r.normals(2 * 6 * 8, 0, 1), [2, 6, 8]));
          const w = T.keep(T.tensor(r.normals(10 * 8, 0, 0.3), [10, 8]));
          const b = T.keep(T.tensor(r.normals(10, 0, 0.1), [10]));
          w.requiresGrad = true;
          b.requiresGrad = true;
          w.grad = T.keep(T.tensor(new Float32Array(80).fill(NaN), [10, 8])); // garbage: never read
          w.gradUnwritten = true;
          be.copyStrided = (...a: Parameters<CpuBackend['copyStrided']>) => {
            if (a[3] === w.grad!.buffer) copiesIntoGrad++;
            realCopy(...a);
          };
          T.scope(() =>
            T.autocast('bf16', () => {
              const y = T.linearActivation(x, w, b, 'geluNew');
              assert.ok(y, 'linearActivation applies on this backend');
              const yf = T.cast(y!, 'f32');
              T.sum(T.mul(yf, yf)).backward();
            }),
          );
          const out = { g: Array.from(w.grad.toArray()), flag: w.gradUnwritten, copiesIntoGrad };
          for (const t of [x, w, b]) {
            t.grad?.dispose();
            t.dispose();
          }
          return out;
        } finally {
          be.copyStrided = realCopy;
          T.setBackend(prev);
        }
      });
    const direct = run(true);
    const usual = run(false);
    assert.deepEqual(direct.g, usual.g);
    assert.ok(direct.g.every(Number.isFinite), 'no garbage read');
    assert.equal(direct.flag, false);
    assert.equal(direct.copiesIntoGrad, 0, 'the product wrote the gradient itself');
    assert.equal(usual.copiesIntoGrad, 1, 'the usual path copies the fresh gradient in');
  });
});

describe('an input read by two products under autocast (pendingGrad, MOHAWK_GRAD_ACCUMULATE)', () => {
  it("the second product adds its input gradient into the first one's (beta 1): no add pass, the same gradients", () => {
    for (const last of ['first', 'second'] as const) {
      const on = twoConsumers(new CpuBackend(), 'linear', true, last);
      const off = twoConsumers(new CpuBackend(), 'linear', false, last);
      assert.equal(off.adds, 1, 'autograd adds the two parts once without the accumulation');
      assert.equal(on.adds, 0, 'no add pass with it');
      // f32 sums of the same bf16 products, added in the product's epilogue instead of a pass
      on.grads.forEach((g, i) =>
        assertClose(g, off.grads[i], 1e-6 * Math.max(1, ...off.grads[i].map(Math.abs)), `gradient ${i}`),
      );
    }
  });
});
