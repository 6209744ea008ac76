// The CPU backend's WebAssembly SIMD kernels (src/backends/cpu/wasm-math.ts, run through
// wasm-ops.ts) against the plain float64 loops they replace for f32: unary ops and their gradients,
// the silu gate, softmax, cross-entropy, KL, attention, conv1d, binary ops, RMSNorm, strided
// accumulation and column sums. f32 results must agree with the float64 loops to
// f32 precision: 2e-6 relative (a few ulps: the SIMD exp is within 2 ulps, and sums of f32 terms
// add their roundings) plus a small absolute floor for values near 0.

import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import type { AttentionParams } from '../src/backends/backend.js';
import { loadBlas } from '../src/backends/cpu/blas.js';
import { CpuBackend } from '../src/backends/cpu/index.js';
import * as rows from '../src/backends/cpu/rows.js';
import * as seq from '../src/backends/cpu/sequence.js';
import { wasmMath, WASM_UNARY, WASM_UNARY_GRAD } from '../src/backends/cpu/wasm-math.js';
import { siluGateF32, siluGateGradF32, unaryF32, unaryGradF32 } from '../src/backends/cpu/wasm-ops.js';
import { Random } from '../src/util/random.js';
import { assertClose } from './helpers.js';

const rng = new Random(77);
const normals = (n: number, std = 1) => Float64Array.from({ length: n }, () => rng.normal(0, std));
/** f64 values that are exactly representable in f32, and their f32 copy */
function pair(n: number, std = 1): [Float64Array, Float32Array] {
  const f = Float32Array.from(normals(n, std));
  return [Float64Array.from(f), f];
}

const sigmoid = (x: number) => 1 / (1 + Math.exp(-x));
const C = Math.sqrt(2 / Math.PI);
const ref: Record<string, { f: (x: number) => number; d: (x: number) => number }> = {
  identity: { f: (x) => x, d: () => 1 },
  neg: { f: (x) => -x, d: () => -1 },
  abs: { f: Math.abs, d: Math.sign },
  square: { f: (x) => x * x, d: (x) => 2 * x },
  relu: { f: (x) => (x > 0 ? x : 0), d: (x) => (x > 0 ? 1 : 0) },
  exp: { f: Math.exp, d: Math.exp },
  sigmoid: { f: sigmoid, d: (x) => sigmoid(x) * (1 - sigmoid(x)) },
  silu: { f: (x) => x * sigmoid(x), d: (x) => sigmoid(x) * (1 + x * (1 - sigmoid(x))) },
  geluNew: {
    // x sigmoid(2u) = 0.5 x (1 + tanh u), without 1 + tanh's cancellation for x << 0
    f: (x) => x * sigmoid(2 * C * (x + 0.044715 * x ** 3)),
    d: (x) => {
      const s = sigmoid(2 * C * (x + 0.044715 * x ** 3));
      return s + 2 * x * s * (1 - s) * C * (1 + 3 * 0.044715 * x * x);
    },
  },
};

describe('WebAssembly SIMD kernels for f32', () => {
  it('are available in Node >= 20', () => assert.ok(wasmMath()));

  it('unary ops match float64 over lengths that are not multiples of 4 or of the block', () => {
    for (const n of [1, 7, 16384 * 2 + 3]) {
      const [x64, x32] = pair(n, 3);
      for (const op of WASM_UNARY) {
        const out = new Float32Array(n);
        assert.ok(unaryF32(op, x32, out, 1.5, -0.25));
        const expected = Array.from(x64, (x) => 1.5 * ref[op].f(x) - 0.25);
        assertClose(out, expected, 1e-6, `${op} n=${n}`, 2e-6);
      }
      for (const op of WASM_UNARY_GRAD) {
        const [g64, g32] = pair(n);
        const gx = new Float32Array(n);
        assert.ok(unaryGradF32(op, x32, g32, gx));
        assertClose(
          gx,
          Array.from(x64, (x, i) => g64[i] * ref[op].d(x)),
          1e-6,
          `${op} gradient n=${n}`,
          2e-6,
        );
      }
    }
  });

  it('exp: 0 below the smallest normal, infinities and NaN pass, large values stay accurate', () => {
    const x = Float32Array.from([-Infinity, -200, -87.5, -87.3, -1e-30, 0, 1e-30, 20, 88.3, 88.8, Infinity]);
    const out = new Float32Array(x.length);
    unaryF32('exp', x, out, 1, 0);
    const expected = Array.from(x, (v) => (v < -87.34 ? 0 : Math.fround(Math.exp(v))));
    assertClose(out, expected, 0, 'exp', 2.5e-7);
    const nan = new Float32Array(1);
    unaryF32('exp', Float32Array.from([NaN]), nan, 1, 0);
    assert.ok(Number.isNaN(nan[0]));
    const s = new Float32Array(4);
    unaryF32('sigmoid', Float32Array.from([-Infinity, -100, 100, Infinity]), s, 1, 0);
    assert.deepEqual(Array.from(s), [0, 0, 1, 1]);
  });

  it('the silu gate and its gradients match float64, the bias broadcast along rows', () => {
    const [rowsN, cols] = [37, 13];
    const n = rowsN * cols;
    const [y64, y32] = pair(n);
    const [z64, z32] = pair(n, 2);
    const [b64, b32] = pair(cols);
    const [g64, g32] = pair(n);
    const out = new Float32Array(n);
    const gy = new Float32Array(n);
    const gz = new Float32Array(n);
    assert.ok(siluGateF32(y32, z32, b32, out, cols));
    assert.ok(siluGateGradF32(y32, z32, b32, g32, gy, gz, cols));
    const u = Array.from(z64, (z, i) => z + b64[i % cols]);
    assertClose(
      out,
      u.map((v, i) => y64[i] * ref.silu.f(v)),
      1e-6,
      'siluGate',
      2e-6,
    );
    assertClose(
      gy,
      u.map((v, i) => g64[i] * ref.silu.f(v)),
      1e-6,
      'siluGate dy',
      2e-6,
    );
    assertClose(
      gz,
      u.map((v, i) => g64[i] * y64[i] * ref.silu.d(v)),
      1e-6,
      'siluGate dz',
      2e-6,
    );
  });

  it('softmax and log-softmax rows, with padded widths and -inf entries', () => {
    for (const cols of [7, 64, 259]) {
      const n = 5 * cols;
      const [x64, x32] = pair(n, 4);
      for (const i of [3, cols + 1, 2 * cols]) {
        x64[i] = -Infinity;
        x32[i] = -Infinity;
      }
      x64.fill(-Infinity, 4 * cols, n); // a fully masked row: NaN (0 / 0) like the plain loop
      x32.fill(-Infinity, 4 * cols, n);
      for (const log of [false, true]) {
        const out = new Float32Array(n);
        const expected = new Float64Array(n);
        rows.softmax(x32, out, 5, cols, log);
        rows.softmax(x64, expected, 5, cols, log);
        const live = 4 * cols;
        // log-softmax is x - lse with lse rounded to f32 first: an absolute error of ulps of |lse| (~10)
        const atol = log ? 4e-6 : 1e-7;
        assertClose(
          out.subarray(0, live),
          expected.subarray(0, live),
          atol,
          `softmax cols=${cols} log=${log}`,
          2e-6,
        );
        for (let i = live; i < n; i++)
          assert.ok(Object.is(out[i], Math.fround(expected[i])), `masked row [${i}]`);
      }
    }
  });

  it('cross-entropy and its gradient, with an ignored target', () => {
    const [r, vocab] = [9, 259];
    const [x64, x32] = pair(r * vocab, 3);
    const targets = Int32Array.from({ length: r }, (_, i) => (i === 4 ? -100 : rng.int(0, vocab)));
    const [l32, s32, l64, s64] = [
      new Float32Array(r),
      new Float32Array(r),
      new Float64Array(r),
      new Float64Array(r),
    ];
    rows.crossEntropy(x32, targets, l32, s32, r, vocab, -100);
    rows.crossEntropy(x64, targets, l64, s64, r, vocab, -100);
    assertClose(l32, l64, 1e-6, 'losses', 2e-6);
    assertClose(s32, s64, 1e-6, 'lse', 2e-6);
    const gl = Float64Array.from(normals(r));
    const g32 = new Float32Array(r * vocab);
    const g64 = new Float64Array(r * vocab);
    rows.crossEntropyBackward(x32, targets, s32, Float32Array.from(gl), g32, r, vocab, -100);
    rows.crossEntropyBackward(x64, targets, s64, gl, g64, r, vocab, -100);
    assertClose(g32, g64, 1e-7, 'logits gradient', 2e-6);
    assert.ok(g32.subarray(4 * vocab, 5 * vocab).every((v) => v === 0));
  });

  it('KL divergence and its gradient, with temperature and -inf teacher entries', () => {
    const [r, vocab] = [6, 259];
    for (const tau of [1, 2]) {
      const [t64, t32] = pair(r * vocab, 3);
      const [s64, s32] = pair(r * vocab, 3);
      t64[5] = -Infinity;
      t32[5] = -Infinity;
      const [k32, k64] = [new Float32Array(r), new Float64Array(r)];
      rows.klDivergence(t32, s32, k32, r, vocab, tau);
      rows.klDivergence(t64, s64, k64, r, vocab, tau);
      assertClose(k32, k64, 1e-6, `KL tau=${tau}`, 2e-6);
      // identical rows: exactly the same exps on both sides, so 0 up to the sums' rounding
      const same = new Float32Array(r);
      rows.klDivergence(s32, s32, same, r, vocab, tau);
      assertClose(same, new Float64Array(r), 1e-7, 'KL of a row with itself');
      const gl = normals(r);
      const [g32, g64] = [new Float32Array(r * vocab), new Float64Array(r * vocab)];
      rows.klDivergenceBackward(t32, s32, Float32Array.from(gl), g32, r, vocab, tau);
      rows.klDivergenceBackward(t64, s64, gl, g64, r, vocab, tau);
      assertClose(g32, g64, 1e-8, `KL gradient tau=${tau}`, 2e-6);
    }
  });

  it('attention forward and backward in f32 (probabilities in the wasm memory) match float64', () => {
    const base = { batch: 2, heads: 4, kvHeads: 2, headDim: 8, scale: 1 / Math.sqrt(8), causal: true };
    // tq > tk: the first rows see no key (their output, probabilities and gradients are 0)
    for (const [tq, tk] of [
      [12, 16],
      [6, 4],
    ])
      attentionCase({ ...base, tq, tk, lowPrecision: false } as AttentionParams);
  });

  const attentionCase = (p: AttentionParams): void => {
    const [q64, q32] = pair(p.batch * p.tq * p.heads * p.headDim, 2);
    const [k64, k32] = pair(p.batch * p.tk * p.kvHeads * p.headDim, 2);
    const [v64, v32] = pair(p.batch * p.tk * p.kvHeads * p.headDim);
    const [go64, go32] = pair(q64.length);
    for (const useBlas of loadBlas() ? [true, false] : [false]) {
      const run = <A extends Float32Array | Float64Array>(
        make: (n: number) => A,
        q: A,
        k: A,
        v: A,
        go: A,
      ) => {
        const out = make(q.length);
        const lse = make(p.batch * p.heads * p.tq);
        const probs = make(p.batch * p.heads * p.tq * p.tk);
        seq.attention(useBlas, q, k, v, out, lse, probs, p);
        const [gq, gk, gv] = [make(q.length), make(k.length), make(v.length)];
        seq.attentionBackward(useBlas, q, k, v, out, lse, go, gq, gk, gv, p);
        return { out, lse, probs, gq, gk, gv };
      };
      const a = run((n) => new Float32Array(n), q32, k32, v32, go32);
      const b = run((n) => new Float64Array(n), q64, k64, v64, go64);
      // an empty row's log-sum-exp is -inf on both sides
      for (const r of [a, b]) r.lse.forEach((x, i) => (r.lse[i] = x === -Infinity ? -1e30 : x));
      // f32 against float64 (sums over up to 16 keys of values of order 1)
      for (const key of ['out', 'lse', 'probs', 'gq', 'gk', 'gv'] as const)
        assertClose(a[key], b[key], 5e-6, `attention ${key} (blas ${useBlas}, tq ${p.tq}, tk ${p.tk})`, 1e-5);
      // causal: every probability past the diagonal (shift tk - tq) is exactly 0
      const shift = p.tk - p.tq;
      for (let row = 0; row < p.batch * p.heads * p.tq; row++)
        for (let j = Math.max(0, (row % p.tq) + shift + 1); j < p.tk; j++)
          assert.equal(a.probs[row * p.tk + j], 0);
    }
  };

  it('causal depthwise conv1d and its gradients (channels a multiple of 4) match float64', () => {
    for (const [B, T, Cc, K] of [
      [3, 9, 12, 4],
      [2, 2, 8, 4],
    ]) {
      const [x64, x32] = pair(B * T * Cc);
      const [w64, w32] = pair(Cc * K);
      const [b64, b32] = pair(Cc);
      const [g64, g32] = pair(B * T * Cc);
      for (const withBias of [true, false]) {
        const o32 = new Float32Array(B * T * Cc);
        const o64 = new Float64Array(B * T * Cc);
        seq.causalConv1d(x32, w32, withBias ? b32 : null, o32, B, T, Cc, K);
        seq.causalConv1d(x64, w64, withBias ? b64 : null, o64, B, T, Cc, K);
        assertClose(o32, o64, 1e-6, `conv1d T=${T}`, 2e-6);
      }
      const [gx32, gw32, gb32] = [
        new Float32Array(x32.length),
        new Float32Array(w32.length),
        new Float32Array(Cc),
      ];
      const [gx64, gw64, gb64] = [
        new Float64Array(x32.length),
        new Float64Array(w32.length),
        new Float64Array(Cc),
      ];
      seq.causalConv1dBackward(x32, w32, g32, gx32, gw32, gb32, B, T, Cc, K);
      seq.causalConv1dBackward(x64, w64, g64, gx64, gw64, gb64, B, T, Cc, K);
      assertClose(gx32, gx64, 1e-6, 'conv1d input gradient', 2e-6);
      assertClose(gw32, gw64, 1e-5, 'conv1d weight gradient', 2e-6);
      assertClose(gb32, gb64, 1e-5, 'conv1d bias gradient', 2e-6);
    }
  });

  it('binary ops over long f32 runs: dense, a broadcast row, a broadcast scalar on either side', () => {
    const be = new CpuBackend();
    const cases: [number[], number[]][] = [
      [
        [3, 1000],
        [3, 1000],
      ],
      [[3, 100], [100]],
      [
        [3, 100],
        [3, 1],
      ],
      [
        [3, 1],
        [3, 100],
      ],
      [[20000], [1]],
    ];
    for (const [sa, sb] of cases) {
      const shape = sa.map((d, i) => Math.max(d, sb[i - (sa.length - sb.length)] ?? 1));
      const bStrides = sb.map((d, i) => (d === 1 ? 0 : sb.slice(i + 1).reduce((p, q) => p * q, 1)));
      const aStrides = sa.map((d, i) => (d === 1 ? 0 : sa.slice(i + 1).reduce((p, q) => p * q, 1)));
      while (bStrides.length < shape.length) bStrides.unshift(0);
      const [a64, a32] = pair(sa.reduce((p, q) => p * q, 1));
      const [b64, b32] = pair(sb.reduce((p, q) => p * q, 1));
      for (let i = 0; i < b64.length; i++) if (Math.abs(b64[i]) < 0.1) b64[i] = b32[i] = 0.5;
      const n = shape.reduce((p, q) => p * q, 1);
      for (const op of ['add', 'sub', 'mul', 'div'] as const) {
        const out = (x: Float32Array | Float64Array, y: Float32Array | Float64Array, dt: 'f32' | 'f64') => {
          const [bx, by, bo] = [be.alloc(dt, x.length), be.alloc(dt, y.length), be.alloc(dt, n)];
          be.write(bx, x);
          be.write(by, y);
          be.binary(op, bx, aStrides, by, bStrides, bo, shape);
          return be.read(bo) as Float32Array | Float64Array;
        };
        // f32 results are the f64 ones rounded once (each element is a single operation)
        const got = out(a32, b32, 'f32');
        const expected = Float32Array.from(out(a64, b64, 'f64'));
        assert.deepEqual(
          Array.from(got),
          Array.from(expected),
          `${op} ${JSON.stringify(sa)} ${JSON.stringify(sb)}`,
        );
      }
    }
  });

  it('RMSNorm forward and backward match float64 (padded and unpadded widths, many blocks)', () => {
    for (const [r, cols] of [
      [5, 7],
      [300, 64],
    ]) {
      const [x64, x32] = pair(r * cols, 2);
      const [w64, w32] = pair(cols);
      const [g64, g32] = pair(r * cols);
      const [o32, s32, o64, s64] = [
        new Float32Array(r * cols),
        new Float32Array(r),
        new Float64Array(r * cols),
        new Float64Array(r),
      ];
      rows.rmsNorm(x32, w32, o32, s32, r, cols, 1e-5);
      rows.rmsNorm(x64, w64, o64, s64, r, cols, 1e-5);
      assertClose(o32, o64, 1e-6, `rmsNorm ${r}x${cols}`, 2e-6);
      assertClose(s32, s64, 1e-7, 'rstd', 2e-6);
      const [gx32, gw32, gx64, gw64] = [
        new Float32Array(r * cols),
        new Float32Array(cols),
        new Float64Array(r * cols),
        new Float64Array(cols),
      ];
      rows.rmsNormBackward(x32, w32, s32, g32, gx32, gw32, r, cols);
      rows.rmsNormBackward(x64, w64, s64, g64, gx64, gw64, r, cols);
      assertClose(gx32, gx64, 1e-6, 'rmsNorm input gradient', 2e-6);
      assertClose(gw32, gw64, 1e-5, 'rmsNorm weight gradient', 1e-5);
    }
  });

  it('strided copies that accumulate into long f32 runs match float64', () => {
    const be = new CpuBackend();
    // src (3, 100) into columns 5..104 of dst (3, 120), adding
    const [s64, s32] = pair(300);
    const [d64, d32] = pair(360);
    const run = (src: Float32Array | Float64Array, dst: Float32Array | Float64Array, dt: 'f32' | 'f64') => {
      const [bs, bd] = [be.alloc(dt, src.length), be.alloc(dt, dst.length)];
      be.write(bs, src);
      be.write(bd, dst);
      be.copyStrided(bs, 0, [100, 1], bd, 5, [120, 1], [3, 100], true);
      return be.read(bd);
    };
    assert.deepEqual(Array.from(run(s32, d32, 'f32')), Array.from(Float32Array.from(run(s64, d64, 'f64'))));
  });

  it('column sums (reduce over a middle axis) of f32 match float64 to one rounding', () => {
    const be = new CpuBackend();
    for (const [outer, n, inner] of [
      [2, 300, 64],
      [1, 2048, 260],
    ]) {
      const [x64, x32] = pair(outer * n * inner);
      const run = (x: Float32Array | Float64Array, dt: 'f32' | 'f64') => {
        const [bx, bo] = [be.alloc(dt, x.length), be.alloc(dt, outer * inner)];
        be.write(bx, x);
        be.reduce('sum', bx, bo, outer, n, inner);
        return be.read(bo);
      };
      // float64 accumulation of the same f32 inputs: the f32 result is the f64 sum rounded once
      assert.deepEqual(Array.from(run(x32, 'f32')), Array.from(Float32Array.from(run(x64, 'f64'))));
    }
  });
});
