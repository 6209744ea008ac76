// The tape, scopes, the CPU backend's two matmul paths, and the seeded generator.

import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { CpuBackend } from '../src/backends/cpu/index.js';
import { blasHint, loadBlas } from '../src/backends/cpu/blas.js';
import { sgemmWasm, wasmGemm } from '../src/backends/cpu/wasm-gemm.js';
import * as T from '../src/tensor/index.js';
import { getBackend, keep, noGrad, scope, setBackend, tensor } from '../src/tensor/index.js';
import { Random } from '../src/util/random.js';
import { assertClose, randn } from './helpers.js';

const rng = new Random(5);
const live = () => getBackend().memoryStats().liveBuffers;

describe('autograd', () => {
  it('accumulates into leaves across backward calls and through shared inputs', () => {
    const x = randn(rng, [3]);
    x.requiresGrad = true;
    // y = sum(x * x + x): dy/dx = 2x + 1, twice
    for (let i = 0; i < 2; i++) scope(() => T.sum(T.add(T.mul(x, x), x)).backward());
    assertClose(
      Array.from(x.grad!.toArray()),
      Array.from(x.toArray()).map((v) => 2 * (2 * v + 1)),
      1e-12,
    );
  });
  it('records nothing under noGrad and for inputs that need no gradient', () => {
    const x = randn(rng, [2]);
    x.requiresGrad = true;
    const y = noGrad(() => T.exp(x));
    assert.equal(y.requiresGrad, false);
    assert.equal(y.node, null);
    const z = T.exp(randn(rng, [2]));
    assert.equal(z.requiresGrad, false);
  });
  it('backward needs a scalar or an explicit gradient', () => {
    const x = randn(rng, [2, 2]);
    x.requiresGrad = true;
    assert.throws(() => T.exp(x).backward(), /backward: output has shape \[2, 2\]/);
    const y = T.scale(x, 3);
    y.backward(T.ones([2, 2], 'f64'));
    assertClose(Array.from(x.grad!.toArray()), [3, 3, 3, 3], 0);
  });
  it('a diamond graph (one tensor feeding two paths) gets both contributions', () => {
    const x = randn(rng, [4]);
    x.requiresGrad = true;
    scope(() => {
      const h = T.tanh(x);
      T.sum(T.add(T.mul(h, h), T.scale(h, 2))).backward();
    });
    const xv = Array.from(x.toArray());
    const expected = xv.map((v) => {
      const t = Math.tanh(v);
      return (2 * t + 2) * (1 - t * t);
    });
    assertClose(Array.from(x.grad!.toArray()), expected, 1e-12);
  });
});

describe('memory scopes', () => {
  it('free every intermediate, keep parameters, gradients and returned tensors', () => {
    const w = randn(rng, [8, 8], 'f32');
    w.requiresGrad = true;
    const before = live();
    const kept = scope(() => {
      const x = randn(rng, [4, 8], 'f32');
      const h = T.relu(T.matmul(x, w));
      const loss = T.mean(T.square(h));
      loss.backward();
      return loss;
    });
    // the loss and the leaf gradient remain; nothing else
    assert.equal(live(), before + 2);
    assert.equal(kept.disposed, false);
    kept.dispose();
    w.grad!.dispose();
    w.grad = null;
    assert.equal(live(), before);
  });
  it('nested scopes move returned tensors outward, and errors still free', () => {
    const before = live();
    scope(() => {
      const inner = scope(() => {
        T.zeros([3]);
        return T.ones([2]);
      });
      assert.equal(inner.disposed, false);
    });
    assert.equal(live(), before);
    assert.throws(() =>
      scope(() => {
        T.zeros([10]);
        throw new Error('boom');
      }),
    );
    assert.equal(live(), before);
  });
  it('keep() takes a tensor out of the scope; views share a buffer until the last goes', () => {
    const before = live();
    const t = scope(() => keep(T.ones([3])));
    assert.equal(live(), before + 1);
    const v = t.view([3, 1]);
    t.dispose();
    assert.equal(live(), before + 1);
    assert.deepEqual(Array.from(v.toArray()), [1, 1, 1]);
    v.dispose();
    assert.equal(live(), before);
    assert.throws(() => t.toArray(), /used after dispose/);
  });
});

describe('cpu backend matmul paths', () => {
  it(
    'OpenBLAS and the TypeScript fallback agree',
    { skip: loadBlas() ? false : 'libopenblas.so.0 not installed' },
    () => {
      const prev = getBackend();
      try {
        const results: Float32Array[] = [];
        for (const blas of [true, false]) {
          setBackend(new CpuBackend({ blas }));
          const r = new Random(3);
          const a = tensor(r.normals(37 * 53), [37, 53]);
          const b = tensor(r.normals(29 * 53), [29, 53]);
          results.push(T.matmul(a, b, { transB: true }).toArray() as Float32Array);
        }
        assertClose(results[0], results[1], 2e-5, 'blas vs fallback', 1e-5);
      } finally {
        setBackend(prev);
      }
    },
  );
  it('reports which path it uses', () => {
    assert.match(new CpuBackend({ blas: false }).describe(), /no BLAS/);
    // the start-up hint names the package exactly when OpenBLAS is missing
    const hint = blasHint();
    if (loadBlas()) assert.equal(hint, null);
    else if (process.env.MOHAWK_BLAS !== 'off') assert.match(hint ?? '', /libopenblas0-pthread/);
  });
  it('the WebAssembly kernel equals a float64 product (transposes, offsets, alpha, beta, ragged tiles)', () => {
    assert.ok(wasmGemm(), 'WebAssembly SIMD is available in Node >= 20');
    const r = new Random(11);
    // shapes around the 4 x 8 register tile and the 256-deep k block
    for (const [m, n, k] of [
      [1, 1, 1],
      [5, 9, 3],
      [4, 8, 256],
      [37, 29, 300],
      [70, 17, 513],
    ])
      for (const transA of [false, true])
        for (const transB of [false, true]) {
          const lda = (transA ? m : k) + 2;
          const ldb = (transB ? k : n) + 1;
          const ldc = n + 3;
          const [aOff, bOff, cOff] = [5, 7, 2];
          const a = Float32Array.from(r.normals(aOff + (transA ? k : m) * lda));
          const b = Float32Array.from(r.normals(bOff + (transB ? n : k) * ldb));
          const c = Float32Array.from(r.normals(cOff + m * ldc));
          const expected = Float64Array.from(c);
          for (let i = 0; i < m; i++)
            for (let j = 0; j < n; j++) {
              let s = 0;
              for (let p = 0; p < k; p++) {
                const av = transA ? a[aOff + p * lda + i] : a[aOff + i * lda + p];
                const bv = transB ? b[bOff + j * ldb + p] : b[bOff + p * ldb + j];
                s += av * bv;
              }
              expected[cOff + i * ldc + j] = 0.5 * s - 1.5 * c[cOff + i * ldc + j];
            }
          const done = sgemmWasm(
            transA,
            transB,
            m,
            n,
            k,
            0.5,
            a,
            aOff,
            lda,
            b,
            bOff,
            ldb,
            -1.5,
            c,
            cOff,
            ldc,
          );
          assert.ok(done);
          // f32 accumulation over k terms of unit variance: error grows like sqrt(k) * 2^-24
          assertClose(c, expected, 2e-5 * Math.sqrt(k), `sgemm ${m}x${n}x${k} tA=${transA} tB=${transB}`);
        }
  });
});

describe('random', () => {
  it('repeats from a seed, restores state, and has the right moments', () => {
    const a = new Random(42);
    const b = new Random(42);
    const xs = Array.from({ length: 5 }, () => a.uniform());
    assert.deepEqual(
      xs,
      Array.from({ length: 5 }, () => b.uniform()),
    );
    const state = a.getState();
    const next = [a.normal(), a.int(0, 10), a.uniform()];
    a.setState(JSON.parse(JSON.stringify(state)));
    assert.deepEqual([a.normal(), a.int(0, 10), a.uniform()], next);
    const r = new Random(7);
    const n = 20000;
    const v = r.normals(n);
    const m = v.reduce((p, q) => p + q, 0) / n;
    const s = v.reduce((p, q) => p + q * q, 0) / n - m * m;
    assert.ok(Math.abs(m) < 0.03 && Math.abs(s - 1) < 0.05, `mean ${m} var ${s}`);
    const counts = new Array(5).fill(0);
    for (let i = 0; i < 5000; i++) counts[r.int(0, 5)]++;
    for (const c of counts) assert.ok(c > 900 && c < 1100, `int counts ${counts}`);
    assert.notDeepEqual(new Random(1).uniforms(3), new Random(2).uniforms(3));
  });
});

describe('mixed precision', () => {
  it('autocast matmul equals the f32 product of bf16-rounded operands, with gradients', () => {
    const a = tensor(new Random(1).normals(12), [3, 4]);
    const b = tensor(new Random(2).normals(20), [5, 4]);
    a.requiresGrad = true;
    b.requiresGrad = true;
    const round = (t: T.Tensor) => T.cast(T.cast(t.detach(), 'bf16'), 'f32');
    const expected = T.matmul(round(a), round(b), { transB: true });
    const got = T.autocast('bf16', () => {
      const y = T.matmul(a, b, { transB: true });
      T.sum(y).backward();
      return y;
    });
    assert.equal(got.dtype, 'f32');
    assertClose(Array.from(got.toArray()), Array.from(expected.toArray()), 1e-5);
    // dL/da = ones @ bf16(b), rounded to bf16 on the way (the gradient runs in bf16 too)
    const ga = T.matmul(T.ones([3, 5]), round(b));
    assertClose(Array.from(a.grad!.toArray()), Array.from(ga.toArray()), 2e-2, 'grad a', 1e-2);
    assert.equal(a.grad!.dtype, 'f32');
  });
});

describe('backward with freeGraph', () => {
  it('gives the same gradients and frees every intermediate during the pass', () => {
    const w = randn(new Random(8), [6, 6], 'f32');
    w.requiresGrad = true;
    const x = randn(new Random(9), [5, 6], 'f32');
    const grads: number[][] = [];
    for (const free of [false, true]) {
      const before = live();
      scope(() => {
        const h = T.tanh(T.matmul(x, w));
        const loss = T.mean(T.square(T.softmax(h)));
        loss.backward(undefined, { freeGraph: free });
        if (free) assert.equal(h.disposed, true);
        // after a freeing backward only the loss, the gradient and non-graph buffers remain
        return null;
      });
      grads.push(Array.from(w.grad!.toArray()));
      w.grad!.dispose();
      w.grad = null;
      assert.equal(live(), before);
    }
    assert.deepEqual(grads[1], grads[0]);
  });
});

/** Count the backend's cast calls until restore(). */
function countCasts(be: ReturnType<typeof getBackend>): { count: number; restore(): void } {
  const orig = be.cast.bind(be);
  const spy = {
    count: 0,
    restore: () => {
      be.cast = orig;
    },
  };
  be.cast = (a, b) => {
    spy.count++;
    orig(a, b);
  };
  return spy;
}

describe('backward frees what it makes', () => {
  it('no buffer is left behind outside any scope, also for inputs that need no gradient', () => {
    const x = randn(new Random(51), [4, 10]);
    x.requiresGrad = true;
    const c = randn(new Random(52), [10]); // broadcast, no gradient wanted
    const loss = T.sum(T.mul(T.add(x, c), T.sub(x, c)));
    const before = live();
    loss.backward(undefined, { freeGraph: true });
    // the add, sub and mul outputs are freed and x.grad is new: nothing else stays
    assert.equal(live(), before - 2);
    assertClose(
      Array.from(x.grad!.toArray()),
      Array.from(x.toArray(), (v) => 2 * v),
      1e-12,
    );
  });
});

describe('gradient accumulation', () => {
  it('slices of one tensor (split) add into one buffer, with a direct use and an unused piece', () => {
    const x = randn(new Random(11), [3, 7]);
    x.requiresGrad = true;
    const w = randn(new Random(12), [3, 7]);
    scope(() => {
      const [p, q, r] = T.split(x, [2, 4, 1], -1);
      void r; // unused: its columns get only the direct term
      // L = sum(p^2) + 3 sum(q) + sum(w * x)
      const loss = T.add(T.add(T.sum(T.square(p)), T.scale(T.sum(q), 3)), T.sum(T.mul(w, x)));
      loss.backward(undefined, { freeGraph: true });
      return null;
    });
    const xv = x.toArray();
    const wv = w.toArray();
    const expected = Array.from(xv, (v, i) => {
      const c = i % 7;
      return wv[i] + (c < 2 ? 2 * v : c < 6 ? 3 : 0);
    });
    assertClose(Array.from(x.grad!.toArray()), expected, 1e-12);
  });
  it('overlapping slices, slices on two axes and gaps get the same gradient as the dense sum', () => {
    const x = randn(new Random(21), [4, 6]);
    x.requiresGrad = true;
    const wa = randn(new Random(22), [4, 3]);
    const wb = randn(new Random(23), [4, 4]);
    const wc = randn(new Random(24), [2, 6]);
    scope(() => {
      // columns [0, 3) and [2, 6) overlap at column 2; rows [1, 3) cross both; row 0 and 3 of
      // the row slice's complement only get the column terms
      const a = T.sum(T.mul(T.slice(x, 1, 0, 3), wa));
      const b = T.sum(T.mul(T.slice(x, 1, 2, 6), wb));
      const c = T.sum(T.mul(T.slice(x, 0, 1, 3), wc));
      T.add(T.add(a, b), c).backward(undefined, { freeGraph: true });
      return null;
    });
    const [av, bv, cv] = [wa.toArray(), wb.toArray(), wc.toArray()];
    const expected: number[] = [];
    for (let r = 0; r < 4; r++)
      for (let col = 0; col < 6; col++) {
        let g = 0;
        if (col < 3) g += av[r * 3 + col];
        if (col >= 2) g += bv[r * 4 + col - 2];
        if (r >= 1 && r < 3) g += cv[(r - 1) * 6 + col];
        expected.push(g);
      }
    assertClose(Array.from(x.grad!.toArray()), expected, 1e-12);
    // a middle piece unused: its part of the gradient is zero, not left-over memory (new buffers
    // start as NaN here, as a reused device block would hold garbage)
    const be = getBackend();
    const alloc = be.alloc.bind(be);
    be.alloc = (dtype, length) => {
      const b = alloc(dtype, length);
      if (dtype === 'f64') be.write(b, new Float64Array(length).fill(NaN));
      return b;
    };
    try {
      const y = randn(new Random(25), [3, 5]);
      y.requiresGrad = true;
      scope(() => {
        const [p, , q] = T.split(y, [2, 1, 2], -1);
        T.add(T.sum(p), T.sum(T.scale(q, 2))).backward();
        return null;
      });
      assert.deepEqual(Array.from(y.grad!.toArray()), [1, 1, 0, 2, 2, 1, 1, 0, 2, 2, 1, 1, 0, 2, 2]);
    } finally {
      be.alloc = alloc;
    }
  });
  it('withCastParameters: products read the 16-bit copies, except a parameter being trained', () => {
    const be = getBackend();
    const x = tensor(new Random(41).normals(12), [3, 4]);
    const w = tensor(new Random(42).normals(8), [2, 4]);
    w.name = 'w';
    const casts = T.castParameters([w, tensor([1, 2, 3], [3], 'f64')], 'bf16');
    const spy = countCasts(be);
    try {
      const plain = scope(() => T.autocast('bf16', () => T.matmul(x, w, { transB: true }).toArray()));
      const n0 = spy.count; // x and w
      const cached = scope(() =>
        T.withCastParameters(casts, () =>
          T.autocast('bf16', () => T.matmul(x, w, { transB: true }).toArray()),
        ),
      );
      assert.equal(spy.count - n0, n0, 'x cast, and w once into its copy');
      assert.equal(casts.size, 1, 'one copy, made on first use');
      const again = scope(() =>
        T.withCastParameters(casts, () =>
          T.autocast('bf16', () => T.matmul(x, w, { transB: true }).toArray()),
        ),
      );
      assert.equal(spy.count - n0, n0 + 1, 'then only x');
      assert.deepEqual(Array.from(again), Array.from(plain));
      assert.deepEqual(Array.from(cached), Array.from(plain));
      // trained: the product casts w itself so that the gradient reaches it
      w.requiresGrad = true;
      scope(() =>
        T.withCastParameters(casts, () =>
          T.autocast('bf16', () => T.sum(T.matmul(x, w, { transB: true })).backward()),
        ),
      );
      assert.ok(w.grad, 'w received its gradient');
    } finally {
      spy.restore();
      casts.dispose();
    }
  });
  it('the cast memo never returns a stale copy of a tensor written in place', () => {
    const x = tensor(new Random(43).normals(6), [2, 3]);
    const w = tensor(new Random(44).normals(6), [2, 3]); // unnamed, written in place below
    const prod = () => Array.from(T.matmul(x, w, { transB: true }).toArray());
    T.autocast('bf16', () => {
      const before = prod();
      T.assign(w, T.scale(w, 2));
      assertClose(
        prod(),
        before.map((v) => 2 * v),
        1e-6,
      );
      const z = T.zeros([2, 3]);
      const p0 = Array.from(T.matmul(x, z, { transB: true }).toArray());
      T.writeSlice(z, T.ones([1, 3]), 0, 0);
      const p1 = Array.from(T.matmul(x, z, { transB: true }).toArray());
      assert.deepEqual(p0, [0, 0, 0, 0]);
      assert.notDeepEqual(p1, p0);
    });
  });
  it('sums a broadcast gradient over merged runs of axes', () => {
    const g = randn(new Random(13), [2, 3, 4, 5]);
    const got = T.sumToShape(g, [3, 1, 5]); // sums axes 0 and 2
    const gv = g.toArray();
    const expected: number[] = [];
    for (let b = 0; b < 3; b++)
      for (let d = 0; d < 5; d++) {
        let acc = 0;
        for (let a = 0; a < 2; a++) for (let c = 0; c < 4; c++) acc += gv[((a * 3 + b) * 4 + c) * 5 + d];
        expected.push(acc);
      }
    assert.deepEqual(got.shape, [3, 1, 5]);
    assertClose(Array.from(got.toArray()), expected, 1e-12);
    const bias = T.sumToShape(g, [5]); // axes 0..2 as one reduction
    const bv = Array.from({ length: 5 }, (_, d) => {
      let acc = 0;
      for (let i = 0; i < 24; i++) acc += gv[i * 5 + d];
      return acc;
    });
    assertClose(Array.from(bias.toArray()), bv, 1e-12);
    assert.throws(() => T.sumToShape(g, [4, 4]), /sumToShape: cannot sum \[2, 3, 4, 5\] to \[4, 4\]/);
  });
  it('under autocast an activation read by two products is rounded once; leaves every time', () => {
    const be = getBackend();
    const x = tensor(new Random(14).normals(12), [3, 4]);
    x.requiresGrad = true;
    const w1 = tensor(new Random(15).normals(8), [2, 4]);
    const w2 = tensor(new Random(16).normals(8), [2, 4]);
    w1.name = 'w1';
    w2.name = 'w2';
    w1.requiresGrad = true;
    // x's gradient: both products' contributions (bf16-rounded weights, bf16-rounded ones)
    const round = (t: T.Tensor) => T.cast(T.cast(t.detach(), 'bf16'), 'f32');
    const expected = T.add(T.matmul(T.ones([3, 2]), round(w1)), T.matmul(T.ones([3, 2]), round(w2)));
    const spy = countCasts(be);
    try {
      scope(() =>
        T.autocast('bf16', () => {
          const h = T.scale(x, 1); // an activation: the output of an op
          const loss = T.add(
            T.sum(T.matmul(h, w1, { transB: true })),
            T.sum(T.matmul(h, w2, { transB: true })),
          );
          assert.equal(spy.count, 3); // h once, w1 and w2
          loss.backward();
          return null;
        }),
      );
      // backward: each product's f32 gradient once (2), and nothing else
      assert.equal(spy.count, 5);
      // a parameter changed in place is read afresh by the next product
      const before = scope(() => T.autocast('bf16', () => T.matmul(x, w1, { transB: true }).toArray()));
      T.assign(w1, T.scale(w1, 2));
      const after = scope(() => T.autocast('bf16', () => T.matmul(x, w1, { transB: true }).toArray()));
      assertClose(
        Array.from(after),
        Array.from(before, (v) => 2 * v),
        1e-6,
      );
    } finally {
      spy.restore();
    }
    assertClose(Array.from(x.grad!.toArray()), Array.from(expected.toArray()), 2e-2, 'grad x', 1e-2);
  });
});

describe('pendingGrad', () => {
  it('hands a backward the gradient another consumer wrote, and refuses a second part for that input', () => {
    setBackend(new CpuBackend());
    const x = keep(tensor([1, 2, 3], [3]));
    x.requiresGrad = true;
    // a consumer that adds its part (3 g) into the pending gradient, then (wrongly) returns it too
    const triple = (t: T.Tensor, cheat: boolean) => {
      const out = T.scale(
        noGrad(() => T.scale(t, 1)),
        3,
      );
      return T.record(out, 'triple', [t], [], (g) => {
        const p = T.pendingGrad(t);
        if (!p) return [T.scale(g, 3)];
        T.getBackend().binary('add', p.buffer, [1], T.scale(g, 3).buffer, [1], p.buffer, [3]);
        return [cheat ? T.scale(g, 3) : null];
      });
    };
    // backward runs the loss's last term first: scale(x, 2)'s part is pending when triple runs
    scope(() => T.sum(T.add(triple(x, false), T.scale(x, 2))).backward());
    assert.deepEqual(Array.from(x.grad!.toArray()), [5, 5, 5]);
    x.grad!.dispose();
    x.grad = null;
    assert.throws(
      () => scope(() => T.sum(T.add(triple(x, true), T.scale(x, 2))).backward()),
      /backward of triple: a gradient for input 0, whose part it already added through pendingGrad/,
    );
    x.dispose();
  });
});
