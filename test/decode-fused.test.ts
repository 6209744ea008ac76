// The decoding step's fused kernels (src/tensor/decode-ops.ts) wired through the models, on the
// CPU: a CPU backend given the optional fused methods, each written from the CPU's own plain
// kernels exactly as decode-ops.ts composes them, must decode a Phi-Mamba student under bf16
// autocast to the same logits as the plain CPU backend (which composes), and every fused method
// must have been used. The CUDA kernels themselves are tested against the CPU in test/cuda.test.ts.

import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import type { DeviceBuffer, DType, SsmStepParams } from '../src/backends/backend.js';
import { CpuBackend } from '../src/backends/cpu/index.js';
import { linearParams } from '../src/backends/cuda/gemv.js';
import * as T from '../src/tensor/index.js';
import { decodeGreedy, tinyStudent } from './decode-helpers.js';

const dense = linearParams;

/** the CPU backend with the fused decode methods, composed from its plain kernels */
class FusedCpu extends CpuBackend {
  readonly calls: Record<string, number> = {};

  private count(name: string): void {
    this.calls[name] = (this.calls[name] ?? 0) + 1;
  }

  private tmp<R>(dtype: DType, n: number, fn: (b: DeviceBuffer) => R): R {
    const b = this.alloc(dtype, n);
    try {
      return fn(b);
    } finally {
      this.free(b);
    }
  }

  layerNormTo16(
    x: DeviceBuffer,
    weight: DeviceBuffer,
    bias: DeviceBuffer | null,
    out: DeviceBuffer,
    rows: number,
    cols: number,
    eps: number,
  ): void {
    this.count('layerNormTo16');
    this.tmp('f32', rows * cols, (f) =>
      this.tmp('f32', rows, (mean) =>
        this.tmp('f32', rows, (rstd) => {
          this.layerNorm(x, weight, bias, f, mean, rstd, rows, cols, eps);
          this.cast(f, out);
        }),
      ),
    );
  }

  ssmStepGate(
    zx: DeviceBuffer,
    layout: { rowLen: number; xOff: number; zOff: number; aOff: number },
    convState: DeviceBuffer,
    convWeight: DeviceBuffer,
    convBias: DeviceBuffer | null,
    D: DeviceBuffer,
    zBias: DeviceBuffer,
    ssm: DeviceBuffer,
    out: DeviceBuffer,
    p: SsmStepParams,
  ): void {
    this.count('ssmStepGate');
    const { batch: B, heads: H, groups: G, headDim: P, dState: N } = p;
    const cc = H * P + 2 * G * N;
    const part = (off: number, n: number, fn: (b: DeviceBuffer) => void) =>
      this.tmp('f32', B * n, (b) => {
        this.copyStrided(zx, off, [layout.rowLen, 1], b, 0, [n, 1], [B, n], false);
        fn(b);
      });
    part(layout.xOff, cc, (xbc) =>
      part(layout.zOff, H * P, (z) =>
        part(layout.aOff, H, (a) =>
          this.tmp('f32', B * H * P, (y) =>
            this.tmp('f32', B * H * P, (g) => {
              this.ssmStep(xbc, convState, convWeight, convBias, a, D, ssm, y, p);
              this.siluGate(y, z, zBias, g, B, H * P);
              this.cast(g, out);
            }),
          ),
        ),
      ),
    );
  }

  matmulAct(
    act: 'geluNew',
    a: DeviceBuffer,
    b: DeviceBuffer,
    c: DeviceBuffer,
    m: number,
    n: number,
    k: number,
    bias: DeviceBuffer | null,
  ): void {
    this.count('matmulAct');
    this.tmp('f32', m * n, (f) => {
      this.matmul(a, b, f, dense(m, n, k), bias);
      this.unary(act, f, c, 1, 0);
    });
  }

  matmulResidual(
    a: DeviceBuffer,
    b: DeviceBuffer,
    c: DeviceBuffer,
    m: number,
    n: number,
    k: number,
    bias: DeviceBuffer | null,
    r1: DeviceBuffer,
    r2: DeviceBuffer,
  ): void {
    this.count('matmulResidual');
    this.matmul(a, b, c, dense(m, n, k), bias);
    this.tmp('f32', m * n, (s) => {
      // add3's order: (r1 + r2) + c
      this.binary('add', r1, [n, 1], r2, [n, 1], s, [m, n]);
      this.binary('add', s, [n, 1], c, [n, 1], c, [m, n]);
    });
  }

  matmulPair(
    a: DeviceBuffer,
    m: number,
    k: number,
    w1: DeviceBuffer,
    bias1: DeviceBuffer | null,
    c1: DeviceBuffer,
    n1: number,
    w2: DeviceBuffer,
    bias2: DeviceBuffer | null,
    c2: DeviceBuffer,
    n2: number,
    act2: 'geluNew',
  ): void {
    this.count('matmulPair');
    this.matmul(a, w1, c1, dense(m, n1, k), bias1);
    this.matmulAct(act2, a, w2, c2, m, n2, k, bias2);
  }

  blockOut(
    g: DeviceBuffer,
    wo: DeviceBuffer,
    bo: DeviceBuffer | null,
    h: DeviceBuffer,
    wf: DeviceBuffer,
    bf: DeviceBuffer | null,
    r: DeviceBuffer,
    mix: DeviceBuffer,
    out: DeviceBuffer,
    m: number,
    n: number,
    k1: number,
    k2: number,
  ): void {
    this.count('blockOut');
    this.matmul(g, wo, mix, dense(m, n, k1), bo);
    this.matmulResidual(h, wf, out, m, n, k2, bf, r, mix);
  }
}

describe('decode step: the fused ops wired through the Phi-Mamba student (CPU)', () => {
  it('decodes to the same logits with the fused methods as with the composed ops (bf16 autocast), using every method', () => {
    const prev = T.getBackend();
    const run = (be: CpuBackend) => {
      T.setBackend(be);
      const model = tinyStudent();
      try {
        return T.autocast('bf16', () => {
          const casts = T.castParameters(model.parameters(), 'bf16');
          try {
            return T.withCastParameters(casts, () => decodeGreedy(model, 2, 4, false));
          } finally {
            casts.dispose();
          }
        });
      } finally {
        model.dispose();
        T.setBackend(prev);
      }
    };
    const plain = run(new CpuBackend());
    const fusedBe = new FusedCpu();
    const fused = run(fusedBe);
    assert.deepEqual(fused.tokens, plain.tokens, 'greedy tokens');
    fused.logits.forEach((l, i) =>
      assert.deepEqual(Array.from(l), Array.from(plain.logits[i]), `logits of step ${i}`),
    );
    // 3 layers x 4 steps; the final norm once per step and after the prefill (its last token); the
    // prefill's MLPs (5 tokens, no gradients) through linearAct and linearResidual too
    assert.deepEqual(fusedBe.calls, {
      layerNormTo16: 3 * 4 + 4 + 1,
      matmulPair: 3 * 4,
      matmulAct: 3 * 4 + 3,
      ssmStepGate: 3 * 4,
      blockOut: 3 * 4,
      matmulResidual: 3 * 4 + 3,
    });
  });

  it('MOHAWK_DECODE_FUSED=0 composes even where the backend has the fused methods', () => {
    const prev = T.getBackend();
    const saved = process.env.MOHAWK_DECODE_FUSED;
    process.env.MOHAWK_DECODE_FUSED = '0';
    const be = new FusedCpu();
    T.setBackend(be);
    const model = tinyStudent();
    try {
      T.autocast('bf16', () => decodeGreedy(model, 1, 2, false));
      assert.deepEqual(be.calls, {});
    } finally {
      model.dispose();
      T.setBackend(prev);
      if (saved === undefined) delete process.env.MOHAWK_DECODE_FUSED;
      else process.env.MOHAWK_DECODE_FUSED = saved;
    }
  });
});
