// Every op: forward against an independent float64 implementation (test/reference.ts or an
// inline formula), backward against central finite differences in float64.

import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { UNARY_OPS } from '../src/backends/backend.js';
import { bf16ToF32, f32ToBf16 } from '../src/backends/dtype.js';
import * as T from '../src/tensor/index.js';
import { scope, tensor, type Tensor } from '../src/tensor/index.js';
import { Random } from '../src/util/random.js';
import { assertClose, gradcheck, randn } from './helpers.js';
import * as ref from './reference.js';

const rng = new Random(1234);
const arr = (t: Tensor) => Array.from(t.toArray());

function elementwiseRef(name: string): (x: number) => number {
  const erf = (x: number) => {
    // Abramowitz-Stegun 7.1.26 is too coarse; integrate exp(-t^2) by Simpson's rule instead
    const n = 2000;
    const h = x / n;
    let s = 1 + Math.exp(-x * x);
    for (let i = 1; i < n; i++) s += (i % 2 ? 4 : 2) * Math.exp(-((i * h) ** 2));
    return ((2 / Math.sqrt(Math.PI)) * s * h) / 3;
  };
  const table: Record<string, (x: number) => number> = {
    neg: (x) => -x,
    exp: Math.exp,
    log: Math.log,
    sqrt: Math.sqrt,
    rsqrt: (x) => x ** -0.5,
    tanh: Math.tanh,
    sigmoid: (x) => 1 / (1 + Math.exp(-x)),
    softplus: (x) => Math.log(1 + Math.exp(x)),
    silu: (x) => x / (1 + Math.exp(-x)),
    relu: (x) => Math.max(0, x),
    gelu: (x) => 0.5 * x * (1 + erf(x / Math.SQRT2)),
    geluNew: (x) => 0.5 * x * (1 + Math.tanh(Math.sqrt(2 / Math.PI) * (x + 0.044715 * x ** 3))),
    square: (x) => x * x,
    abs: Math.abs,
    reciprocal: (x) => 1 / x,
  };
  return table[name];
}

describe('elementwise unary ops', () => {
  const positive = new Set(['log', 'sqrt', 'rsqrt', 'reciprocal']);
  // every unary kernel of the backend's closed list has its op (identity is no op)
  for (const name of UNARY_OPS.filter((op) => op !== 'identity')) {
    it(name, () => {
      const fn = (T as unknown as Record<string, (x: Tensor) => Tensor>)[name];
      let data = Array.from({ length: 23 }, () => rng.normal(0, 2));
      if (positive.has(name)) data = data.map((v) => Math.abs(v) + 0.3);
      // keep kinks away from finite-difference points
      if (name === 'relu' || name === 'abs') data = data.map((v) => (Math.abs(v) < 0.01 ? 0.5 : v));
      const x = tensor(data, [23], 'f64');
      const f = elementwiseRef(name);
      assertClose(arr(fn(x)), data.map(f), 1e-9, name, 1e-9);
      gradcheck((a) => fn(a), [x]);
      // f32 agrees with the f64 reference to float precision
      const x32 = tensor(data, [23], 'f32');
      assertClose(arr(fn(x32)), data.map(f), 1e-5, `${name} f32`, 1e-5);
    });
  }
  it('affine', () => {
    const x = randn(rng, [3, 4]);
    assertClose(
      arr(T.affine(x, 2.5, -1)),
      arr(x).map((v) => 2.5 * v - 1),
      1e-12,
    );
    gradcheck((a) => T.affine(a, 2.5, -1), [x]);
  });
});

describe('binary ops with broadcasting', () => {
  const cases: [number[], number[]][] = [
    [
      [3, 4],
      [3, 4],
    ],
    [[3, 4], [4]],
    [
      [2, 1, 5],
      [3, 1],
    ],
    [[1], [2, 3]],
    [
      [2, 3, 1, 4],
      [3, 5, 1],
    ],
  ];
  for (const [sa, sb] of cases) {
    for (const op of ['add', 'sub', 'mul', 'div'] as const) {
      it(`${op} ${JSON.stringify(sa)} ${JSON.stringify(sb)}`, () => {
        const a = randn(rng, sa);
        let b = randn(rng, sb);
        if (op === 'div') b = T.addScalar(T.abs(b), 0.5);
        const out = T[op](a, b);
        const shape = T.broadcastShapes(op, sa, sb);
        assert.deepEqual([...out.shape], shape);
        // reference: index each operand with broadcasting by hand
        const av = arr(a);
        const bv = arr(b);
        const expected: number[] = [];
        const n = shape.reduce((p, q) => p * q, 1);
        const idxOf = (flat: number, s: number[]) => {
          const coords: number[] = [];
          for (let i = shape.length - 1; i >= 0; i--) {
            coords.unshift(flat % shape[i]);
            flat = Math.floor(flat / shape[i]);
          }
          const off = shape.length - s.length;
          let o = 0;
          for (let i = 0; i < s.length; i++) o = o * s[i] + (s[i] === 1 ? 0 : coords[i + off]);
          return o;
        };
        const f = {
          add: (p: number, q: number) => p + q,
          sub: (p: number, q: number) => p - q,
          mul: (p: number, q: number) => p * q,
          div: (p: number, q: number) => p / q,
        }[op];
        for (let i = 0; i < n; i++) expected.push(f(av[idxOf(i, sa)], bv[idxOf(i, sb)]));
        assertClose(arr(out), expected, 1e-12, op);
        gradcheck((p, q) => T[op](p, q), [a, b.detach()]);
      });
    }
  }
  it('rejects shapes that do not broadcast, naming the op and shapes', () => {
    assert.throws(
      () => T.add(randn(rng, [3, 4]), randn(rng, [5])),
      /add: shapes \[3, 4\] and \[5\] do not broadcast/,
    );
  });
});

describe('matmul', () => {
  const cases: { a: number[]; b: number[]; transA?: boolean; transB?: boolean }[] = [
    { a: [3, 5], b: [5, 4] },
    { a: [1, 5], b: [5, 1] },
    { a: [5, 3], b: [5, 4], transA: true },
    { a: [3, 5], b: [4, 5], transB: true },
    { a: [5, 3], b: [4, 5], transA: true, transB: true },
    { a: [2, 3, 5], b: [5, 4] },
    { a: [2, 3, 5], b: [4, 5], transB: true },
    { a: [2, 5, 3], b: [5, 4], transA: true },
    { a: [3, 5], b: [2, 5, 4] },
    { a: [2, 2, 3, 5], b: [2, 2, 5, 7] },
    { a: [2, 5, 3], b: [2, 7, 5], transA: true, transB: true },
  ];
  for (const c of cases) {
    it(JSON.stringify(c), () => {
      const a = randn(rng, c.a);
      const b = randn(rng, c.b);
      const out = T.matmul(a, b, c);
      const [ar, ac] = c.a.slice(-2);
      const [br, bc] = c.b.slice(-2);
      const m = c.transA ? ac : ar;
      const k = c.transA ? ar : ac;
      const n = c.transB ? br : bc;
      const batches = Math.max(a.size / (ar * ac), b.size / (br * bc));
      const av = arr(a);
      const bv = arr(b);
      const expected: number[] = [];
      for (let i = 0; i < batches; i++) {
        const ai = a.ndim > 2 ? i : 0;
        const bi = b.ndim > 2 ? i : 0;
        let am: ArrayLike<number> = av.slice(ai * ar * ac, (ai + 1) * ar * ac);
        let bm: ArrayLike<number> = bv.slice(bi * br * bc, (bi + 1) * br * bc);
        if (c.transA) am = ref.refTranspose(am, ar, ac);
        if (c.transB) bm = ref.refTranspose(bm, br, bc);
        expected.push(...ref.refMatmul(am, bm, m, k, n));
      }
      assertClose(arr(out), expected, 1e-12, 'matmul');
      gradcheck((p, q) => T.matmul(p, q, c), [a, b]);
    });
  }
  it('names the shapes when inner dimensions differ', () => {
    assert.throws(
      () => T.matmul(randn(rng, [3, 4]), randn(rng, [5, 2])),
      /matmul: inner dimensions differ: \[3, 4\] @ \[5, 2\]/,
    );
  });
});

describe('linear', () => {
  it('x W^T + b with the bias in the product: values and gradients of x, W and b', () => {
    const x = randn(rng, [2, 3, 4]);
    const w = randn(rng, [5, 4]);
    const b = randn(rng, [5]);
    const out = T.linear(x, w, b);
    const xv = arr(x);
    const wv = arr(w);
    const bv = arr(b);
    const expected: number[] = [];
    for (let r = 0; r < 6; r++)
      for (let o = 0; o < 5; o++) {
        let acc = bv[o];
        for (let i = 0; i < 4; i++) acc += xv[r * 4 + i] * wv[o * 4 + i];
        expected.push(acc);
      }
    assert.deepEqual(out.shape, [2, 3, 5]);
    assertClose(arr(out), expected, 1e-12, 'linear');
    gradcheck((p, q, c) => T.linear(p, q, c), [x, w, b]);
    assertClose(arr(T.linear(x, w, null)), arr(T.matmul(x, w, { transB: true })), 0, 'no bias');
  });
  it('names a bias of the wrong length', () => {
    assert.throws(
      () => T.linear(randn(rng, [3, 4]), randn(rng, [5, 4]), randn(rng, [4])),
      /linear: bias has shape \[4\], expected \[5\]/,
    );
  });
});

describe('reductions', () => {
  it('sum over axes, keepdim or not', () => {
    const x = randn(rng, [2, 3, 4]);
    const v = arr(x);
    const s1 = T.sum(x, [1]);
    assert.deepEqual([...s1.shape], [2, 4]);
    const expected: number[] = [];
    for (let i = 0; i < 2; i++)
      for (let k = 0; k < 4; k++) expected.push(v[i * 12 + k] + v[i * 12 + 4 + k] + v[i * 12 + 8 + k]);
    assertClose(arr(s1), expected, 1e-12);
    assert.deepEqual([...T.sum(x, [0, 2], true).shape], [1, 3, 1]);
    assertClose([T.sum(x).item()], [v.reduce((p, q) => p + q, 0)], 1e-12);
    gradcheck((a) => T.sum(a, [0, 2]), [x]);
    gradcheck((a) => T.mean(a, [-1], true), [x]);
  });
  it('mean', () => {
    const x = randn(rng, [5, 3]);
    assertClose([T.mean(x).item()], [arr(x).reduce((p, q) => p + q, 0) / 15], 1e-12);
  });
  it('max over an axis', () => {
    const x = randn(rng, [4, 7]);
    const v = arr(x);
    const m = T.max(x, 1);
    const expected = [0, 1, 2, 3].map((r) => Math.max(...v.slice(r * 7, r * 7 + 7)));
    assertClose(arr(m), expected, 0);
    gradcheck((a) => T.max(a, 0), [x]);
  });
});

describe('rows: softmax, norms', () => {
  it('softmax and log-softmax', () => {
    const x = randn(rng, [3, 5, 7], 'f64', 3);
    assertClose(arr(T.softmax(x)), ref.refSoftmaxRows(arr(x), 15, 7), 1e-12);
    assertClose(arr(T.logSoftmax(x)), ref.refSoftmaxRows(arr(x), 15, 7, true), 1e-12);
    gradcheck((a) => T.softmax(a), [x]);
    gradcheck((a) => T.logSoftmax(a), [x]);
    // stable with large logits
    const big = tensor([1000, 1001, 999], [1, 3], 'f32');
    assertClose(arr(T.softmax(big)), ref.refSoftmaxRows([0, 1, -1], 1, 3), 1e-6);
  });
  it('layerNorm with and without bias', () => {
    const x = randn(rng, [2, 3, 6]);
    const w = randn(rng, [6]);
    const b = randn(rng, [6]);
    assertClose(arr(T.layerNorm(x, w, b, 1e-5)), ref.refLayerNorm(arr(x), arr(w), arr(b), 6, 6, 1e-5), 1e-10);
    assertClose(
      arr(T.layerNorm(x, w, null, 1e-5)),
      ref.refLayerNorm(arr(x), arr(w), null, 6, 6, 1e-5),
      1e-10,
    );
    gradcheck((p, q, r) => T.layerNorm(p, q, r, 1e-5), [x, w, b]);
    gradcheck((p, q) => T.layerNorm(p, q, null, 1e-5), [x, w]);
  });
  it('rmsNorm', () => {
    const x = randn(rng, [4, 5]);
    const w = randn(rng, [5]);
    assertClose(arr(T.rmsNorm(x, w, 1e-6)), ref.refRmsNorm(arr(x), arr(w), 4, 5, 1e-6), 1e-10);
    gradcheck((p, q) => T.rmsNorm(p, q, 1e-6), [x, w]);
  });
  it('norms on a residual stream: the input gradient added in place, as a separate add gives it', () => {
    const be = T.getBackend();
    const x = randn(rng, [2, 3, 6]);
    const w = randn(rng, [6]);
    const b = randn(rng, [6]);
    const c = randn(rng, [2, 3, 6]);
    // h = x + norm(x) * c: x's gradient comes from the add and from the norm's backward
    const blocks = [
      (p: Tensor, q: Tensor, r: Tensor) => T.add(p, T.mul(T.layerNorm(p, q, r, 1e-5), c)),
      (p: Tensor, q: Tensor) => T.add(T.mul(T.rmsNorm(p, q, 1e-6), c), p),
    ];
    const grads = (f: (...t: Tensor[]) => Tensor, inputs: Tensor[]) => {
      for (const t of inputs) {
        t.requiresGrad = true;
        t.grad?.dispose();
        t.grad = null;
      }
      T.scope(() => T.sum(T.square(f(...inputs))).backward());
      return inputs.map((t) => arr(t.grad!));
    };
    let added = 0;
    const ln = be.layerNormBackward.bind(be);
    const rms = be.rmsNormBackward.bind(be);
    be.layerNormBackward = (...a: Parameters<typeof ln>) => {
      if (a[10]) added++;
      ln(...a);
    };
    be.rmsNormBackward = (...a: Parameters<typeof rms>) => {
      if (a[8]) added++;
      rms(...a);
    };
    try {
      for (const [i, f] of blocks.entries()) {
        const inputs = i === 0 ? [x, w, b] : [x, w];
        gradcheck(f, inputs);
        const before = added;
        const inplace = grads(f, inputs);
        assert.equal(added, before + 1, 'the norm added into the residual gradient');
        process.env.MOHAWK_NORM_INPLACE = '0';
        try {
          assert.deepEqual(grads(f, inputs), inplace);
        } finally {
          delete process.env.MOHAWK_NORM_INPLACE;
        }
        assert.equal(added, before + 1);
      }
    } finally {
      be.layerNormBackward = ln;
      be.rmsNormBackward = rms;
    }
  });
  it('norms under autocast write the 16-bit copy their products read: the same results, fewer casts', () => {
    const be = T.getBackend();
    const x = randn(rng, [2, 3, 8], 'f32');
    const w = randn(rng, [8], 'f32');
    const b = randn(rng, [8], 'f32');
    const p = randn(rng, [8, 5], 'f32');
    const q = randn(rng, [8, 4], 'f32');
    const run = (on: boolean) => {
      process.env.MOHAWK_NORM_CAST16 = on ? '1' : '0';
      let casts = 0;
      const plain = be.cast.bind(be);
      be.cast = (...a: Parameters<typeof plain>) => {
        casts++;
        plain(...a);
      };
      try {
        for (const t of [x, w, b, p, q]) {
          t.requiresGrad = true;
          t.grad?.dispose();
          t.grad = null;
        }
        const loss = T.scope(() =>
          T.autocast('bf16', () => {
            // each norm's output read by two products: one copy (memoized) for both
            const n1 = T.layerNorm(x, w, b, 1e-5);
            const n2 = T.rmsNorm(x, w, 1e-6);
            const l = T.add(
              T.add(T.sum(T.square(T.matmul(n1, p))), T.sum(T.matmul(n1, q))),
              T.add(T.sum(T.square(T.matmul(n2, p))), T.sum(T.matmul(n2, q))),
            );
            l.backward();
            return l.item();
          }),
        );
        return { loss, casts, grads: [x, w, b, p, q].map((t) => arr(t.grad!)) };
      } finally {
        be.cast = plain;
        delete process.env.MOHAWK_NORM_CAST16;
      }
    };
    const off = run(false);
    const on = run(true);
    assert.equal(on.loss, off.loss);
    assert.deepEqual(on.grads, off.grads);
    assert.equal(on.casts, off.casts - 2, 'the two norm outputs are not cast');
  });
  it('addRmsNorm (residual add, then the norm of the sum, in one pass) equals add then rmsNorm', () => {
    const be = T.getBackend();
    const x = randn(rng, [2, 3, 8], 'f32');
    const r = randn(rng, [2, 3, 8], 'f32');
    const w = randn(rng, [8], 'f32');
    const c = randn(rng, [2, 3, 8], 'f32');
    const run = (fused: boolean) => {
      process.env.MOHAWK_FUSED_ADD_NORM = fused ? '1' : '0';
      let calls = 0;
      const plain = be.addRmsNorm!.bind(be);
      be.addRmsNorm = (...a: Parameters<typeof plain>) => {
        calls++;
        plain(...a);
      };
      try {
        for (const t of [x, r, w]) {
          t.requiresGrad = true;
          t.grad?.dispose();
          t.grad = null;
        }
        const vals = T.scope(() => {
          // as in a block: out = h + f(norm(h)), h = x + r
          const { sum, normed } = T.addRmsNorm(x, r, w, 1e-6);
          const out = T.add(sum, T.mul(T.square(normed), c));
          T.sum(T.square(out)).backward();
          return [arr(sum), arr(normed)];
        });
        return { calls, vals, grads: [x, r, w].map((t) => arr(t.grad!)) };
      } finally {
        be.addRmsNorm = plain;
        delete process.env.MOHAWK_FUSED_ADD_NORM;
      }
    };
    const composed = run(false);
    const fused = run(true);
    assert.equal(composed.calls, 0);
    assert.equal(fused.calls, 1);
    assert.deepEqual(fused.vals, composed.vals);
    assert.deepEqual(fused.grads, composed.grads);
  });
  it('norm shape errors name the op and shapes', () => {
    assert.throws(
      () => T.layerNorm(randn(rng, [2, 4]), randn(rng, [5]), null, 1e-5),
      /layerNorm: weight has shape \[5\], expected \[4\]/,
    );
  });
});

describe('embedding', () => {
  it('gathers rows and scatter-adds gradients (repeated ids)', () => {
    const table = randn(rng, [6, 3]);
    const ids = tensor([1, 4, 1, 0, 5], [5], 'i32');
    const tv = arr(table);
    const expected = [1, 4, 1, 0, 5].flatMap((i) => tv.slice(i * 3, i * 3 + 3));
    assertClose(arr(T.embedding(table, ids)), expected, 0);
    gradcheck((t) => T.embedding(t, ids), [table]);
    assert.throws(
      () => T.embedding(table, tensor([7], [1], 'i32')),
      /token id 7 outside the vocabulary of 6/,
    );
  });
});

describe('shape ops', () => {
  it('reshape with -1, permute, transpose', () => {
    const x = randn(rng, [2, 3, 4]);
    assert.deepEqual([...T.reshape(x, [-1, 4]).shape], [6, 4]);
    const p = T.permute(x, [2, 0, 1]);
    assert.deepEqual([...p.shape], [4, 2, 3]);
    const v = arr(x);
    const pv = arr(p);
    for (let i = 0; i < 2; i++)
      for (let j = 0; j < 3; j++)
        for (let k = 0; k < 4; k++) assert.equal(pv[k * 6 + i * 3 + j], v[i * 12 + j * 4 + k]);
    gradcheck((a) => T.permute(a, [2, 0, 1]), [x]);
    gradcheck((a) => T.transpose(T.reshape(a, [6, 4])), [x]);
    assert.throws(() => T.reshape(x, [5, 5]), /reshape: cannot reshape \[2, 3, 4\] to \[5, 5\]/);
  });
  it('slice, concat, split, expand', () => {
    const x = randn(rng, [3, 5, 2]);
    const s = T.slice(x, 1, 1, 4);
    assert.deepEqual([...s.shape], [3, 3, 2]);
    const v = arr(x);
    assertClose(
      arr(s),
      [0, 1, 2].flatMap((i) => v.slice(i * 10 + 2, i * 10 + 8)),
      0,
    );
    gradcheck((a) => T.slice(a, 1, 1, 4), [x]);
    const parts = T.split(x, [2, 3], 1);
    const back = T.concat(parts, 1);
    assertClose(arr(back), v, 0);
    const y = randn(rng, [3, 1, 2]);
    gradcheck((a, b) => T.concat([a, b], 1), [x, y]);
    const e = T.expand(y, [2, 3, 4, 2]);
    assert.deepEqual([...e.shape], [2, 3, 4, 2]);
    gradcheck((a) => T.expand(a, [2, 3, 4, 2]), [y]);
    assert.throws(() => T.split(x, [2, 2], 1), /split: sizes \[2,2\] do not add up to 5/);
    assert.throws(() => T.slice(x, 0, 2, 5), /slice: range \[2, 5\) outside axis 0/);
  });
});

describe('sequence ops', () => {
  it('causalMask on (rows, tq, tk) including tk > tq', () => {
    const x = randn(rng, [2, 3, 5]);
    const out = arr(T.causalMask(x, -7));
    const v = arr(x);
    for (let r = 0; r < 2; r++)
      for (let i = 0; i < 3; i++)
        for (let j = 0; j < 5; j++) {
          const idx = (r * 3 + i) * 5 + j;
          assert.equal(out[idx], j > i + 2 ? -7 : v[idx]);
        }
    gradcheck((a) => T.causalMask(a, 0), [x]);
  });
  it('cumsum forward and reverse', () => {
    const x = randn(rng, [2, 5, 3]);
    const v = arr(x);
    const c = arr(T.cumsum(x, 1));
    for (let b = 0; b < 2; b++)
      for (let k = 0; k < 3; k++) {
        let acc = 0;
        for (let t = 0; t < 5; t++) {
          acc += v[b * 15 + t * 3 + k];
          assertClose([c[b * 15 + t * 3 + k]], [acc], 1e-12);
        }
      }
    gradcheck((a) => T.cumsum(a, 1), [x]);
    gradcheck((a) => T.cumsum(a, -1, true), [x]);
  });
  it('segsum', () => {
    const x = randn(rng, [2, 6]);
    const v = arr(x);
    const s = arr(T.segsum(x));
    for (let r = 0; r < 2; r++)
      for (let i = 0; i < 6; i++)
        for (let j = 0; j < 6; j++) {
          let e = -Infinity;
          if (j <= i) {
            e = 0;
            for (let k = j + 1; k <= i; k++) e += v[r * 6 + k];
          }
          const got = s[(r * 6 + i) * 6 + j];
          if (e === -Infinity) assert.equal(got, -Infinity);
          else assertClose([got], [e], 1e-12);
        }
    // gradient through the finite part: exp(segsum) is 0 above the diagonal
    gradcheck((a) => T.exp(T.segsum(a)), [x]);
  });
  it('causalConv1d with and without bias, kernel 4 and 3', () => {
    for (const K of [4, 3]) {
      const x = randn(rng, [2, 7, 5]);
      const w = randn(rng, [5, K]);
      const b = randn(rng, [5]);
      assertClose(arr(T.causalConv1d(x, w, b)), ref.refConv(arr(x), arr(w), arr(b), 2, 7, 5, K), 1e-12);
      assertClose(arr(T.causalConv1d(x, w, null)), ref.refConv(arr(x), arr(w), null, 2, 7, 5, K), 1e-12);
      gradcheck((p, q, r) => T.causalConv1d(p, q, r), [x, w, b]);
    }
  });
  it('causalConv1d on column windows read in place: values, gradients written into their part of x', () => {
    const be = T.getBackend();
    // x rounded to bf16 values: under bf16 autocast the weight gradient reads a bf16 copy of the
    // window, which then equals x, so finite differences in f64 still apply
    const bf = (t: Tensor) =>
      tensor(
        Array.from(t.toArray(), (v) => bf16ToF32(f32ToBf16(v))),
        [...t.shape],
        'f64',
      );
    const x = bf(randn(rng, [2, 9, 11]));
    for (const K of [4, 3]) {
      const w = randn(rng, [5, K]);
      const b = randn(rng, [5]);
      const cols = { start: 3, end: 8 };
      const sliced = () => arr(T.causalConv1d(T.slice(x, 2, 3, 8), w, b));
      const win = arr(T.noGrad(() => T.causalConv1d(x, w, b, cols)));
      assertClose(win, sliced(), 0);
      assertClose(win, ref.refConv(arr(T.slice(x, 2, 3, 8)), arr(w), arr(b), 2, 9, 5, K), 1e-12);
      // two overlapping windows and a use of all of x: the second write into x's gradient adds
      const w2 = randn(rng, [5, K]);
      const f = (p: Tensor, q: Tensor, r: Tensor, q2: Tensor) =>
        T.add(
          T.add(T.causalConv1d(p, q, r, cols), T.causalConv1d(p, q2, null, { start: 6, end: 11 })),
          T.slice(T.mul(p, p), 2, 2, 7),
        );
      let calls = 0;
      const plain = be.causalConv1dWindowBackward!.bind(be);
      be.causalConv1dWindowBackward = (...args: Parameters<typeof plain>) => {
        calls++;
        plain(...args);
      };
      try {
        T.autocast('bf16', () => gradcheck(f, [x, w, b, w2]));
      } finally {
        be.causalConv1dWindowBackward = plain;
      }
      assert.ok(calls >= 2, `the windowed backward ran ${calls} times`);
      for (const t of [x, w, b]) {
        t.grad?.dispose();
        t.grad = null;
        t.requiresGrad = false;
      }
    }
  });
  it('rope in both layouts, partial rotary, with a position offset', () => {
    for (const interleaved of [false, true]) {
      const x = randn(rng, [2, 5, 3, 8]);
      const opts = { rotaryDim: 4, theta: 10000, interleaved, positionOffset: 3 };
      // the kernel rounds angles as float32 does; compare to a float64 reference at 1e-5
      assertClose(arr(T.rope(x, opts)), ref.refRope(arr(x), 2, 5, 3, 8, 4, 10000, interleaved, 3), 1e-5);
      gradcheck((a) => T.rope(a, opts), [x]);
    }
  });
  it('attention: causal, grouped-query heads, probabilities, cached queries (tk > tq)', () => {
    const cases = [
      { B: 2, Tq: 5, Tk: 5, H: 4, Hk: 2, D: 3, causal: true },
      { B: 1, Tq: 3, Tk: 7, H: 2, Hk: 2, D: 4, causal: true },
      { B: 1, Tq: 4, Tk: 6, H: 3, Hk: 1, D: 2, causal: false },
    ];
    for (const c of cases) {
      const q = randn(rng, [c.B, c.Tq, c.H, c.D]);
      const k = randn(rng, [c.B, c.Tk, c.Hk, c.D]);
      const v = randn(rng, [c.B, c.Tk, c.Hk, c.D]);
      const { out, probs } = T.attention(q, k, v, { causal: c.causal, returnProbs: true });
      const r = ref.refAttention(arr(q), arr(k), arr(v), c.B, c.Tq, c.Tk, c.H, c.Hk, c.D, c.causal);
      assertClose(arr(out), r.out, 1e-12, 'attention out');
      assertClose(arr(probs!), r.probs, 1e-12, 'attention probs');
      gradcheck((p, s, u) => T.attention(p, s, u, { causal: c.causal }).out, [q, k, v]);
    }
  });
  it('attention out16: bf16 out under bf16 autocast without gradients, equal to the rounded f32 out', () => {
    const q = randn(rng, [2, 9, 4, 8], 'f32');
    const k = randn(rng, [2, 9, 2, 8], 'f32');
    const v = randn(rng, [2, 9, 2, 8], 'f32');
    const w = randn(rng, [6, 32], 'f32');
    const run = (out16: boolean) =>
      T.autocast('bf16', () => {
        const o = T.attention(q, k, v, { out16 }).out;
        // the consumer: a product (the output projection), which rounds an f32 input to bf16 itself
        const y = T.matmul(T.reshape(o, [18, 32]), w, { transB: true });
        return { dtype: o.dtype, out: arr(o), y: arr(y) };
      });
    const plain = run(false);
    const fused = run(true);
    assert.equal(plain.dtype, 'f32');
    assert.equal(fused.dtype, 'bf16');
    assert.deepEqual(fused.out, arr(T.cast(tensor(plain.out, [2, 9, 4, 8], 'f32'), 'bf16')));
    assert.deepEqual(fused.y, plain.y);
    // f32 where a gradient is recorded, without autocast, and with MOHAWK_ATTN_OUT16=0
    const qg = q.detach();
    qg.requiresGrad = true;
    assert.equal(
      T.autocast('bf16', () => T.attention(qg, k, v, { out16: true }).out.dtype),
      'f32',
    );
    assert.equal(T.attention(q, k, v, { out16: true }).out.dtype, 'f32');
    process.env.MOHAWK_ATTN_OUT16 = '0';
    try {
      assert.equal(
        T.autocast('bf16', () => T.attention(q, k, v, { out16: true }).out.dtype),
        'f32',
      );
    } finally {
      delete process.env.MOHAWK_ATTN_OUT16;
    }
  });
  it('attention rope: equals rope then attention, inside the backend without gradients and composed with', () => {
    for (const ro of [
      { rotaryDim: 4, theta: 10000, interleaved: false, positionOffset: 3 },
      { rotaryDim: 6, theta: 500, interleaved: true, positionOffset: 0 },
    ]) {
      const q = randn(rng, [2, 5, 4, 8]);
      const k = randn(rng, [2, 5, 2, 8]);
      const v = randn(rng, [2, 5, 2, 8]);
      const ref = arr(T.attention(T.rope(q, ro), T.rope(k, ro), v).out);
      assert.deepEqual(arr(T.noGrad(() => T.attention(q, k, v, { rope: ro }).out)), ref);
      gradcheck((p, s, u) => T.attention(p, s, u, { rope: ro }).out, [q, k, v]);
    }
  });
  it('attention equals its composition from generic ops', () => {
    const q = randn(rng, [1, 6, 2, 4]);
    const k = randn(rng, [1, 6, 2, 4]);
    const v = randn(rng, [1, 6, 2, 4]);
    const qh = T.permute(q, [0, 2, 1, 3]);
    const kh = T.permute(k, [0, 2, 1, 3]);
    const vh = T.permute(v, [0, 2, 1, 3]);
    const scores = T.scale(T.matmul(qh, kh, { transB: true }), 0.5);
    const composed = T.permute(T.matmul(T.softmax(T.causalMask(scores)), vh), [0, 2, 1, 3]);
    assertClose(arr(T.attention(q, k, v).out), arr(composed), 1e-12);
  });
});

describe('SSD scan and the materialized mixer', () => {
  const configs = [
    { B: 2, T: 13, H: 4, G: 2, P: 3, N: 5, Q: 4 },
    { B: 1, T: 8, H: 2, G: 2, P: 4, N: 4, Q: 8 },
    { B: 1, T: 5, H: 3, G: 1, P: 2, N: 3, Q: 16 },
  ];
  for (const c of configs) {
    it(`scan vs recurrence and matrix ${JSON.stringify(c)}`, () => {
      const x = randn(rng, [c.B, c.T, c.H, c.P]);
      const logA = T.neg(T.softplus(randn(rng, [c.B, c.T, c.H])));
      const Bm = randn(rng, [c.B, c.T, c.G, c.N]);
      const Cm = randn(rng, [c.B, c.T, c.G, c.N]);
      const { y, finalState } = T.ssdScan(x, logA, Bm, Cm, { chunkSize: c.Q, returnFinalState: true });
      const r = ref.refSsmRecurrent(arr(x), arr(logA), arr(Bm), arr(Cm), c.B, c.T, c.H, c.G, c.P, c.N);
      assertClose(arr(y), r.y, 1e-10, 'ssd y');
      assertClose(arr(finalState!), r.state, 1e-10, 'ssd final state');
      const M = T.materializeMixer(logA, Bm, Cm);
      assertClose(
        arr(M),
        ref.refMixerMatrix(arr(logA), arr(Bm), arr(Cm), c.B, c.T, c.H, c.G, c.N),
        1e-10,
        'mixer',
      );
      const la = logA.detach();
      gradcheck((p, l, b, cc) => T.ssdScan(p, l, b, cc, { chunkSize: c.Q }).y, [x, la, Bm, Cm], {
        maxPoints: 25,
      });
      gradcheck((l, b, cc) => T.materializeMixer(l, b, cc), [la, Bm, Cm], { maxPoints: 25 });
    });
  }
});

describe('losses', () => {
  it('crossEntropy with ignore index and reductions', () => {
    const logits = randn(rng, [2, 3, 7], 'f64', 2);
    const targets = tensor([1, 6, -100, 0, 3, 3], [2, 3], 'i32');
    const lv = arr(logits);
    const ls = ref.refSoftmaxRows(lv, 6, 7, true);
    const tv = [1, 6, -100, 0, 3, 3];
    const per = tv.map((t, r) => (t === -100 ? 0 : -ls[r * 7 + t]));
    assertClose(arr(T.crossEntropy(logits, targets, { reduction: 'none' })), per, 1e-12);
    const meanNll = per.reduce((p, q) => p + q, 0) / 5;
    assertClose([T.crossEntropy(logits, targets, { ignoreIndex: -100 }).item()], [meanNll], 1e-12);
    gradcheck((l) => T.crossEntropy(l, targets, { ignoreIndex: -100 }), [logits]);
  });
  it('klDivergence with temperature', () => {
    const t = randn(rng, [4, 9], 'f64', 2);
    const s = randn(rng, [4, 9], 'f64', 2);
    for (const tau of [1, 2.5]) {
      const p = ref.refSoftmaxRows(
        arr(t).map((v) => v / tau),
        4,
        9,
      );
      const lq = ref.refSoftmaxRows(
        arr(s).map((v) => v / tau),
        4,
        9,
        true,
      );
      const expected = [0, 1, 2, 3].map((r) => {
        let kl = 0;
        for (let j = 0; j < 9; j++) kl += p[r * 9 + j] * (Math.log(p[r * 9 + j]) - lq[r * 9 + j]);
        return kl;
      });
      assertClose(arr(T.klDivergence(t, s, { temperature: tau, reduction: 'none' })), expected, 1e-12);
      gradcheck((q) => T.klDivergence(t, q, { temperature: tau }), [s]);
    }
    // zero when the distributions match
    assertClose([T.klDivergence(t, t).item()], [0], 1e-12);
  });
  it('dropout is seeded, scaled, and its gradient uses the same mask', () => {
    const x = T.ones([1000], 'f64');
    const a = arr(T.dropout(x, 0.25, 7));
    const b = arr(T.dropout(x, 0.25, 7));
    assert.deepEqual(a, b);
    const kept = a.filter((v) => v !== 0);
    assert.ok(Math.abs(kept.length / 1000 - 0.75) < 0.05, `kept ${kept.length}`);
    for (const v of kept) assertClose([v], [1 / 0.75], 1e-12);
    assert.notDeepEqual(arr(T.dropout(x, 0.25, 8)), a);
    gradcheck((q) => T.dropout(q, 0.3, 11), [randn(rng, [20])]);
  });
  it('ssmStep has no backward and names a tensor of the wrong shape', () => {
    const [B, H, G, P, N, K] = [1, 2, 1, 3, 2, 4];
    const C = H * P + 2 * G * N;
    const args = () => ({
      xbc: randn(rng, [B, C]),
      conv: randn(rng, [B, K - 1, C]),
      w: randn(rng, [C, K]),
      a: randn(rng, [B, H]),
      D: randn(rng, [H]),
      ssm: randn(rng, [B, H, P, N]),
    });
    const v = args();
    v.w.requiresGrad = true;
    assert.throws(
      () => T.ssmStep(v.xbc, v.conv, v.w, null, v.a, v.D, v.ssm, { groups: G, silu: false }),
      /ssmStep: has no backward; run it under noGrad/,
    );
    const u = args();
    assert.throws(
      () =>
        T.ssmStep(u.xbc, u.conv, u.w, null, randn(rng, [B, H + 1]), u.D, u.ssm, { groups: G, silu: false }),
      /ssmStep: a has shape \[1, 3\], expected \[1, 2\]/,
    );
  });
  it('unaryTo rounds f(x) to 16 bits in one pass, like cast(f(x)), with the same gradient', () => {
    const x = tensor(new Random(31).normals(50, 0, 2), [5, 10], 'f32');
    for (const dt of ['bf16', 'f16'] as const) {
      const fused = T.unaryTo('geluNew', x, dt);
      assert.equal(fused.dtype, dt);
      assert.deepEqual(Array.from(fused.read()), Array.from(T.cast(T.geluNew(x), dt).read()));
    }
    const w = tensor(new Random(32).normals(50), [5, 10], 'f32');
    const grad = (f: (v: Tensor) => Tensor) => {
      const v = x.detach();
      v.requiresGrad = true;
      scope(() => T.sum(T.mul(T.cast(f(v), 'f32'), w)).backward());
      return arr(v.grad!);
    };
    assert.deepEqual(
      grad((v) => T.unaryTo('geluNew', v, 'bf16')),
      grad((v) => T.cast(T.geluNew(v), 'bf16')),
    );
    assert.throws(
      () => T.unaryTo('gelu', randn(rng, [2]), 'bf16'),
      /gelu: a 16-bit result needs an f32 input/,
    );
  });
  it('siluGate equals y * silu(z + bias), with the gradients of y, z and bias', () => {
    const y = randn(rng, [2, 3, 5]);
    const z = randn(rng, [2, 3, 5]);
    const b = randn(rng, [5]);
    const composed = T.mul(y, T.silu(T.add(z, b)));
    assertClose(arr(T.siluGate(y, z, b)), arr(composed), 1e-14);
    gradcheck((p, q, c) => T.siluGate(p, q, c), [y, z, b]);
    assert.throws(
      () => T.siluGate(y, randn(rng, [2, 5]), b),
      /siluGate: y \[2, 3, 5\] and z \[2, 5\] differ/,
    );
  });
});

describe('the mixer gate with z read in place', () => {
  it('siluGateD with z a column window of a wider matrix, under bf16 autocast: the composed values and gradients', () => {
    const be = T.getBackend();
    // bf16 values where the fused backward reads 16-bit copies (y, z) or gets a 16-bit gradient
    const bf = (t: Tensor) =>
      T.keep(
        tensor(
          Array.from(t.toArray(), (v) => bf16ToF32(f32ToBf16(v))),
          [...t.shape],
          'f32',
        ),
      );
    const y = bf(randn(rng, [2, 3, 8]));
    const x = T.keep(randn(rng, [2, 3, 8], 'f32'));
    const zw = bf(randn(rng, [2, 3, 13]));
    const D = T.keep(randn(rng, [2], 'f32'));
    const b = T.keep(randn(rng, [8], 'f32'));
    const wts = bf(randn(rng, [2, 3, 8]));
    const inputs = [zw, y, x, D, b];
    let calls = 0;
    const plain = be.siluGateDWindowBackward!.bind(be);
    const run = (inplace: boolean) => {
      process.env.MOHAWK_MIXER_INPLACE = inplace ? '1' : '0';
      for (const t of inputs) {
        t.requiresGrad = true;
        t.grad?.dispose();
        t.grad = null;
      }
      const out = T.scope(() =>
        T.autocast('bf16', () => {
          const gated = T.siluGateD(y, x, D, zw, b, 'bf16', { start: 4, end: 12 });
          // (cast to the same dtype returns a view without gradient)
          const o = gated.dtype === 'f32' ? gated : T.cast(gated, 'f32');
          // all of z's matrix used elsewhere too: the in-place gradient adds to it
          T.add(T.sum(T.mul(o, wts)), T.sum(T.square(zw))).backward();
          return Float64Array.from(o.toArray());
        }),
      );
      return { out, grads: inputs.map((t) => Float64Array.from(t.grad!.toArray())) };
    };
    be.siluGateDWindowBackward = (...args: Parameters<typeof plain>) => {
      calls++;
      plain(...args);
    };
    try {
      const composed = run(false);
      assert.equal(calls, 0);
      const inplace = run(true);
      assert.equal(calls, 1, 'the in-place backward ran');
      // the in-place result is stored in bf16
      assertClose(inplace.out, composed.out, 2 ** -8 * Math.max(...composed.out.map(Math.abs)));
      composed.grads.forEach((g, i) =>
        assertClose(inplace.grads[i], g, 1e-5 * Math.max(...g.map(Math.abs)), `gradient ${i}`),
      );
    } finally {
      be.siluGateDWindowBackward = plain;
      delete process.env.MOHAWK_MIXER_INPLACE;
      for (const t of [...inputs, wts]) {
        t.grad?.dispose();
        t.dispose();
      }
    }
  });
});

describe('the SSD scan adding x gradient in place', () => {
  it('x also read elsewhere (the gate D x): the same gradients as a fresh one and a separate add', () => {
    const be = T.getBackend();
    const [B, L, H, P, G, N] = [2, 9, 2, 3, 1, 4];
    const x = randn(rng, [B, L, H, P]);
    const logA = T.neg(T.softplus(randn(rng, [B, L, H])));
    const bm = randn(rng, [B, L, G, N]);
    const cm = randn(rng, [B, L, G, N]);
    const d = randn(rng, [B, L, H, P]);
    const f = (p: Tensor, q: Tensor, r: Tensor) =>
      T.add(T.mul(T.ssdScan(p, logA, q, r, { chunkSize: 4 }).y, d), T.mul(p, d));
    let added = 0;
    const plain = be.ssdScanBackward.bind(be);
    be.ssdScanBackward = (...a: Parameters<typeof plain>) => {
      if (a[11]) added++;
      plain(...a);
    };
    const grads = (on: boolean) => {
      process.env.MOHAWK_SSD_ADD_GX = on ? '1' : '0';
      for (const t of [x, bm, cm]) {
        t.requiresGrad = true;
        t.grad?.dispose();
        t.grad = null;
      }
      T.scope(() => T.sum(T.square(f(x, bm, cm))).backward());
      return [x, bm, cm].map((t) => arr(t.grad!));
    };
    try {
      const off = grads(false);
      assert.equal(added, 0);
      const on = grads(true);
      assert.equal(added, 1, 'the scan added its x gradient');
      assert.deepEqual(on, off);
      gradcheck(f, [x, bm, cm]);
    } finally {
      be.ssdScanBackward = plain;
      delete process.env.MOHAWK_SSD_ADD_GX;
    }
  });
});

describe('the mixer log decay read in place', () => {
  it('logDecay on a column window: -softplus(a), its gradient written into its part of a', () => {
    const be = T.getBackend();
    const a = randn(rng, [2, 5, 9], 'f32');
    const cols = { start: 6, end: 9 };
    const ref = arr(T.neg(T.softplus(T.slice(a, 2, 6, 9))));
    assertClose(arr(T.noGrad(() => T.logDecay(a, cols))), ref, 1e-7);
    let calls = 0;
    const plain = be.logDecayWindowBackward!.bind(be);
    be.logDecayWindowBackward = (...x: Parameters<typeof plain>) => {
      calls++;
      plain(...x);
    };
    const grad = (inplace: boolean) => {
      process.env.MOHAWK_MIXER_INPLACE = inplace ? '1' : '0';
      a.requiresGrad = true;
      a.grad?.dispose();
      a.grad = null;
      // all of a used elsewhere too: the in-place gradient adds to it
      T.scope(() => T.add(T.sum(T.square(T.logDecay(a, cols))), T.sum(T.square(a))).backward());
      return arr(a.grad!);
    };
    try {
      const split = grad(false);
      assert.equal(calls, 0);
      const inplace = grad(true);
      assert.equal(calls, 1);
      assertClose(inplace, split, 1e-6);
      // f64 on the CPU: against finite differences
      gradcheck((p) => T.logDecay(p, { start: 1, end: 4 }), [randn(rng, [2, 3, 5])]);
    } finally {
      be.logDecayWindowBackward = plain;
      delete process.env.MOHAWK_MIXER_INPLACE;
    }
  });
});

describe('cast and 16-bit storage', () => {
  it('bf16 and f16 round to nearest even', async () => {
    const { f32ToBf16, bf16ToF32, f32ToF16, f16ToF32 } = await import('../src/backends/dtype.js');
    // 1 + 2^-8 is halfway between two bf16 values: ties to even (1.0)
    assert.equal(f32ToBf16(1 + 2 ** -8), 0x3f80);
    // 1 + 3 * 2^-8 is halfway: ties to the even neighbour 1 + 2^-6
    assert.equal(f32ToBf16(1 + 3 * 2 ** -8), 0x3f82);
    assert.equal(bf16ToF32(0x3f80), 1);
    assert.equal(f32ToF16(1 + 2 ** -11), 0x3c00);
    assert.equal(f32ToF16(1 + 3 * 2 ** -11), 0x3c02);
    assert.equal(f32ToF16(65520), 0x7c00); // rounds to infinity
    assert.equal(f16ToF32(0x0001), 2 ** -24); // smallest subnormal
    assert.equal(f32ToF16(2 ** -25 * 1.5), 0x0001);
    assert.ok(Number.isNaN(bf16ToF32(f32ToBf16(NaN))));
    // every f16 value survives a round trip through f32
    for (let h = 0; h < 0x7c00; h += 7) assert.equal(f32ToF16(f16ToF32(h)), h);
    const x = tensor([1.5, -2.25, 3.1], [3], 'f32');
    const back = T.cast(T.cast(x, 'bf16'), 'f32');
    assertClose(arr(back), [1.5, -2.25, bf16ToF32(f32ToBf16(3.1))], 0);
    gradcheck((q) => T.cast(T.cast(q, 'f32'), 'f64'), [randn(rng, [5])], {
      atol: 1e-4,
      rtol: 1e-4,
      eps: 1e-2,
    });
  });
});
