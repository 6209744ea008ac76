// mohawk approx: each class's fit against an independent computation or a property that a wrong
// fit breaks (exact recovery of a member of the class, optimality against perturbations, the
// lower bound below a feasible fit).

import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import {
  approximateAttention,
  lowrankDistance,
  semiseparableLowerBound,
  symmetricEigenvalues,
  toeplitzDistance,
} from '../src/eval/approx.js';
import { LlamaForCausalLM } from '../src/models/llama.js';
import { Random } from '../src/util/random.js';
import { assertClose } from './helpers.js';

const rng = new Random(12);

/** a random lower-triangular T x T matrix (rows of a softmax, like attention) */
function attentionLike(t: number): Float64Array {
  const a = new Float64Array(t * t);
  for (let i = 0; i < t; i++) {
    let z = 0;
    for (let j = 0; j <= i; j++) z += a[i * t + j] = Math.exp(2 * rng.normal());
    for (let j = 0; j <= i; j++) a[i * t + j] /= z;
  }
  return a;
}

function frob(a: Float64Array, m: Float64Array): number {
  return Math.sqrt(a.reduce((s, x, i) => s + (x - m[i]) ** 2, 0));
}

describe('structured fits of attention matrices', () => {
  it('toeplitz: the diagonal means are the least-squares fit (zero for a Toeplitz matrix, optimal against perturbations)', () => {
    const t = 12;
    const c = Array.from({ length: t }, () => rng.normal());
    const toe = new Float64Array(t * t);
    for (let i = 0; i < t; i++) for (let j = 0; j <= i; j++) toe[i * t + j] = c[i - j];
    assertClose([toeplitzDistance(toe, t)], [0], 1e-12);
    const a = attentionLike(t);
    const d = toeplitzDistance(a, t);
    // the fit built by hand, and perturbed fits never closer
    const mean = (k: number) => {
      let s = 0;
      for (let i = k; i < t; i++) s += a[i * t + i - k];
      return s / (t - k);
    };
    const fit = new Float64Array(t * t);
    for (let i = 0; i < t; i++) for (let j = 0; j <= i; j++) fit[i * t + j] = mean(i - j);
    assertClose([d], [frob(a, fit)], 1e-12);
    // any other Toeplitz matrix (one diagonal shifted) is farther
    for (let k = 0; k < 5; k++) {
      const diag = rng.int(0, t);
      const eps = 0.05 * (rng.uniform() < 0.5 ? -1 : 1);
      const shifted = fit.map((x, idx) => (Math.floor(idx / t) - (idx % t) === diag ? x + eps : x));
      assert.ok(frob(a, shifted) > d);
    }
  });

  it('lowrank: recovers a causal rank-N matrix exactly; beats the masked truncated SVD', () => {
    const t = 24;
    const n = 3;
    const q = Array.from({ length: t * n }, () => rng.normal());
    const k = Array.from({ length: t * n }, () => rng.normal());
    const m = new Float64Array(t * t);
    for (let i = 0; i < t; i++)
      for (let j = 0; j <= i; j++) for (let c = 0; c < n; c++) m[i * t + j] += q[i * n + c] * k[j * n + c];
    const norm = Math.sqrt(m.reduce((s, x) => s + x * x, 0));
    assert.ok(lowrankDistance(m, t, n, 60) < 1e-4 * norm, `${lowrankDistance(m, t, n, 60)} vs ${norm}`);
    const a = attentionLike(t);
    // truncated SVD (rank n) then the causal mask, through eigenvectors of A^T A by power iteration
    const svdMasked = (() => {
      const v: number[][] = [];
      for (let c = 0; c < n; c++) {
        let x = Array.from({ length: t }, () => rng.normal());
        for (let it = 0; it < 500; it++) {
          const ax = Array.from({ length: t }, (_, i) => x.reduce((s, xv, j) => s + a[i * t + j] * xv, 0));
          let y = Array.from({ length: t }, (_, j) => ax.reduce((s, av, i) => s + a[i * t + j] * av, 0));
          for (const u of v) {
            const d = y.reduce((s, yv, j) => s + yv * u[j], 0);
            y = y.map((yv, j) => yv - d * u[j]);
          }
          const nn = Math.hypot(...y);
          x = y.map((yv) => yv / nn);
        }
        v.push(x);
      }
      const fit = new Float64Array(t * t);
      for (let i = 0; i < t; i++)
        for (let j = 0; j <= i; j++)
          for (const u of v) fit[i * t + j] += u.reduce((s, uv, l) => s + a[i * t + l] * uv, 0) * u[j];
      return frob(a, fit);
    })();
    const als = lowrankDistance(a, t, n, 20);
    assert.ok(als <= svdMasked + 1e-9, `ALS ${als} vs masked SVD ${svdMasked}`);
    assert.equal(lowrankDistance(a, t, t), 0);
  });

  it('semiseparable: the lower bound is zero on an N-semiseparable matrix and below every feasible fit', () => {
    const g = Float64Array.from([4, 1, 0, 1, 3, 0, 0, 0, 2]);
    assertClose(
      Array.from(symmetricEigenvalues(g, 3)).sort((x, y) => x - y),
      [2, (7 - Math.sqrt(5)) / 2, (7 + Math.sqrt(5)) / 2],
      1e-10,
    );
    const t = 20;
    const n = 2;
    const m = new Float64Array(t * t);
    const q = Array.from({ length: t * n }, () => rng.normal());
    const k = Array.from({ length: t * n }, () => rng.normal());
    for (let i = 0; i < t; i++)
      for (let j = 0; j <= i; j++) for (let c = 0; c < n; c++) m[i * t + j] += q[i * n + c] * k[j * n + c];
    assert.ok(semiseparableLowerBound(m, t, n) < 1e-6);
    for (let r = 0; r < 3; r++) {
      const a = attentionLike(t);
      const lb = semiseparableLowerBound(a, t, n);
      assert.ok(lb > 0);
      assert.ok(lb <= lowrankDistance(a, t, n) + 1e-9, 'the bound lies below a feasible fit');
    }
  });

  it('on a teacher: per-layer rows, relative distances, ssd = lowrank, the bound below both', () => {
    const teacher = new LlamaForCausalLM(
      {
        vocabSize: 64,
        hiddenSize: 32,
        intermediateSize: 64,
        numLayers: 2,
        numHeads: 4,
        numKvHeads: 2,
        headDim: 8,
        rmsNormEps: 1e-5,
        ropeTheta: 10000,
        maxPositionEmbeddings: 64,
        tieWordEmbeddings: true,
        attentionBias: false,
        mlpBias: false,
        bosTokenId: 0,
        eosTokenId: 0,
      },
      { rng: new Random(3) },
    );
    const seqs = [0, 1].map(() => Array.from({ length: 24 }, () => rng.int(0, 64)));
    const r = approximateAttention(teacher, seqs, {
      classes: ['toeplitz', 'lowrank', 'ssd', 'semiseparable'],
      state: 4,
    });
    assert.equal(r.layers.length, 2);
    assert.equal(r.heads, 4);
    assert.equal(r.classes.ssd!.distance, r.classes.lowrank!.distance);
    assert.ok(r.classes.semiseparable!.distance <= r.classes.lowrank!.distance);
    for (const c of Object.values(r.classes)) {
      assert.ok(c.relative >= 0 && c.relative < 1.5);
      assertClose([c.relative], [c.distance / r.attentionNorm], 1e-12);
    }
    const full = approximateAttention(teacher, seqs, { classes: ['lowrank'], state: 24 });
    assert.equal(full.classes.lowrank!.distance, 0);
  });
});
