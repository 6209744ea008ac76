// The paper's mixer ablations as students: the Toeplitz (long convolution) and causal
// linear-attention mixers against independent loops, their save/load round trip, and each
// class through stage 1 (the matrix distance falls) and a short three-stage pipeline.

import assert from 'node:assert/strict';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { describe, it } from 'node:test';
import { ToeplitzMixer } from '../src/nn/toeplitz-mixer.js';
import { LinearAttentionMixer } from '../src/nn/linear-attention-mixer.js';
import { LlamaForCausalLM } from '../src/models/llama.js';
import { loadModel, saveModel } from '../src/models/load.js';
import { transferStudent } from '../src/distill/transfer.js';
import { matrixOrientationStep, stage1Loss } from '../src/distill/stages.js';
import { validateConfig } from '../src/distill/config.js';
import { runDistill } from '../src/distill/pipeline.js';
import { TokenDataset } from '../src/data/shards.js';
import { RandomWindows, toTensors } from '../src/data/batches.js';
import { train } from '../src/train/index.js';
import { noGrad, scope, split, tensor, type Tensor } from '../src/tensor/index.js';
import { byteTokenizer } from '../src/io/tokenizer.js';
import { Random } from '../src/util/random.js';
import { assertClose, randn, tinyLlama, writePatternedSplits } from './helpers.js';

const rng = new Random(31);
const arr = (t: Tensor) => Array.from(t.toArray());

function teacher(): LlamaForCausalLM {
  return tinyLlama();
}

/** byte-like token splits of a patterned text */
function bytes() {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'mohawk-mixers-'));
  writePatternedSplits(dir, 12000, 10000);
  const ds = TokenDataset.open(path.join(dir, 'data'));
  return { dir, train: ds.split('train'), val: ds.split('val') };
}

describe('mixer classes', () => {
  it('toeplitz: M[t, s] = k[t - s] within the kernel, 0 beyond and above the diagonal; y = the convolution', () => {
    const m = new ToeplitzMixer({ dModel: 8, nHeads: 2, kernelLength: 3, bias: false }, { rng });
    const k = arr(randn(rng, [3, 2], 'f32'));
    m.kernel.backend.write(m.kernel.buffer, Float32Array.from(k));
    const t = 5;
    const mat = arr(m.matrix(t));
    for (let h = 0; h < 2; h++)
      for (let i = 0; i < t; i++)
        for (let j = 0; j < t; j++) {
          const d = i - j;
          assert.equal(mat[h * t * t + i * t + j], d >= 0 && d < 3 ? k[d * 2 + h] : 0, `h${h} [${i}, ${j}]`);
        }
    // y = sum_d k[d] x_{t-d} per head, through forward (out_proj and gate as set below)
    const u = randn(rng, [1, t, 8], 'f32');
    const x = noGrad(() => arr(split(m.in_proj.forward(u), [8, 8], -1)[0]));
    const y = new Array<number>(t * 8).fill(0);
    for (let i = 0; i < t; i++)
      for (let c = 0; c < 8; c++)
        for (let d = 0; d < 3 && d <= i; d++)
          y[i * 8 + c] += k[d * 2 + Math.floor(c / 4)] * x[(i - d) * 8 + c];
    const got = noGrad(() => {
      const mm = m.materialize(u); // (1, H, T, T)
      const yy = arr(mm);
      const out: number[] = [];
      for (let i = 0; i < t; i++)
        for (let c = 0; c < 8; c++) {
          const h = Math.floor(c / 4);
          let s = 0;
          for (let j = 0; j < t; j++) s += yy[h * t * t + i * t + j] * x[j * 8 + c];
          out.push(s);
        }
      return out;
    });
    assertClose(got, y, 1e-5);
  });

  it('linear attention: M = tril(C B^T) per head from the projection', () => {
    const m = new LinearAttentionMixer({ dModel: 8, nHeads: 2, dState: 3, bias: true }, { rng });
    const t = 4;
    const u = randn(rng, [1, t, 8], 'f32');
    const proj = noGrad(() => arr(m.in_proj.forward(u)));
    const width = 8 + 6 + 6 + 8;
    const mat = noGrad(() => arr(m.materialize(u)));
    for (let h = 0; h < 2; h++)
      for (let i = 0; i < t; i++)
        for (let j = 0; j < t; j++) {
          let want = 0;
          if (j <= i)
            for (let n = 0; n < 3; n++)
              want += proj[i * width + 14 + h * 3 + n] * proj[j * width + 8 + h * 3 + n];
          assertClose([mat[h * t * t + i * t + j]], [want], 1e-5, `h${h} [${i}, ${j}]`);
        }
  });

  it('each class: saved and loaded with the same logits; stage 1 lowers its matrix distance', () => {
    const tch = teacher();
    tch.setTrainable(() => true, false);
    const ids = tensor(
      Array.from({ length: 2 * 32 }, () => rng.int(0, 257)),
      [2, 32],
      'i32',
    );
    for (const mixerClass of ['toeplitz', 'linear-attention'] as const) {
      const student = transferStudent(tch, {
        mixerClass,
        kernelLength: 32,
        mixerInit: 'paper',
        chunkSize: 16,
      });
      const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'mohawk-mixer-'));
      saveModel(dir, student, byteTokenizer());
      const { model: back } = loadModel(dir);
      assert.deepEqual(
        noGrad(() => scope(() => arr(back.forward(ids).logits))),
        noGrad(() => scope(() => arr(student.forward(ids).logits))),
        mixerClass,
      );
      const distance = () => noGrad(() => scope(() => stage1Loss(tch, student, ids).loss.item()));
      const before = distance();
      train({
        params: student,
        lossFn: (b, ctx) => matrixOrientationStep(tch, student, toTensors(b).input, 1 / ctx.accum),
        data: new RandomWindows(bytes().train, 4, 32, 3),
        budgetTokens: 20 * 128,
        optimizer: { lr: 1e-2, weightDecay: 0 },
        schedule: { kind: 'constant' },
        trainable: ['**.mixer.**'],
        progress: false,
      });
      const after = distance();
      // a Toeplitz matrix fits attention poorly at best (docs/distillation-results.md), so only
      // a fall is asked of it; the low-rank class must close a good part of the gap
      const bound = mixerClass === 'toeplitz' ? 0.995 : 0.9;
      assert.ok(after < bound * before, `${mixerClass}: stage-1 distance ${before} -> ${after}`);
    }
  });

  it('the three stages run for each class (student.mixer) and beat the fresh student', () => {
    const { dir, train: trainSplit, val } = bytes();
    const tch = teacher();
    for (const mixer of ['toeplitz', 'linear-attention']) {
      const res = runDistill(
        validateConfig(
          {
            teacher: 'in memory',
            out: path.join(dir, mixer),
            student: { mixer, init: 'paper' },
            data: { train: ['in memory'], valTokens: 1024 },
            stageDefaults: { batchTokens: 256, microBatch: 8, seqLen: 32, lr: 3e-3 },
            stages: [
              { stage: 1, tokens: 512 },
              { stage: 2, tokens: 512 },
              { stage: 3, tokens: 1024 },
            ],
          },
          'test',
        ),
        {
          teacher: { model: tch, tokenizer: byteTokenizer() },
          data: { train: trainSplit, val },
          progress: false,
          log: () => {},
        },
      );
      assert.equal(res.stages.length, 3);
      assert.ok(
        res.stages[2].valKl < res.initialKl,
        `${mixer}: KL ${res.initialKl} -> ${res.stages[2].valKl}`,
      );
    }
  });
});
