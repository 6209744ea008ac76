// MOHAWK end to end on the GPU: the same small distillation (stages 1, 2, 3 into a hybrid
// student) on the CPU backend and on the CUDA backend; the per-step losses of every stage and
// the held-out figures must track each other. Skips without a GPU or the reference fixtures.

import assert from 'node:assert/strict';
import { mkdtempSync, readFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, it } from 'node:test';
import type { Backend } from '../src/backends/backend.js';
import { CpuBackend } from '../src/backends/cpu/index.js';
import { validateConfig } from '../src/distill/config.js';
import { runDistill } from '../src/distill/pipeline.js';
import { writeTokenSplits } from '../src/data/shards.js';
import { setBackend } from '../src/tensor/index.js';
import { Random } from '../src/util/random.js';
import { fixtures, openGpuWithFixtures } from './gpu-helpers.js';

const { gpu, skip } = openGpuWithFixtures();

describe('cuda: mohawk distill end to end tracks the CPU run', { skip }, () => {
  it('stages 1-3 into a hybrid student: per-step losses and held-out figures agree', () => {
    const dir = mkdtempSync(join(tmpdir(), 'mohawk-cuda-distill-'));
    const r = new Random(4);
    const doc = Array.from({ length: 20000 }, (_, i) =>
      i % 9 === 0 ? 1 : 3 + ((r.int(0, 7) * 31 + i) % 500),
    );
    writeTokenSplits(
      join(dir, 'data'),
      { train: { documents: [doc.slice(0, 18000)] }, val: { documents: [doc.slice(18000)] } },
      { vocabSize: 512, eosTokenId: 2 },
    );
    const run = (be: Backend, name: string) => {
      setBackend(be);
      const cfg = validateConfig(
        {
          teacher: join(fixtures, 'llama-tied'),
          out: join(dir, name),
          seed: 5,
          student: { chunkSize: 16, attentionLayers: [1] },
          data: { train: [join(dir, 'data')], valTokens: 1024 },
          stageDefaults: { batchTokens: 512, microBatch: 8, seqLen: 64, schedule: 'wsd', lr: 2e-3 },
          stages: [
            { stage: 1, tokens: 2048 },
            { stage: 2, tokens: 2048 },
            { stage: 3, tokens: 4096 },
          ],
        },
        'test',
      );
      const res = runDistill(cfg, { progress: false, log: () => {} });
      const losses = ['stage1-matrix', 'stage2-hidden', 'stage3-kd'].map((s) =>
        readFileSync(join(dir, name, s, 'metrics.jsonl'), 'utf8')
          .trim()
          .split('\n')
          .map((l) => (JSON.parse(l) as { loss: number }).loss),
      );
      return { res, losses };
    };
    const c = run(new CpuBackend(), 'cpu');
    const g = run(gpu!, 'cuda');
    c.losses.forEach((cl, s) => {
      assert.equal(g.losses[s].length, cl.length);
      cl.forEach((v, i) => {
        const rel = Math.abs(g.losses[s][i] - v) / Math.max(Math.abs(v), 1e-6);
        assert.ok(rel < 2e-3, `stage ${s + 1} step ${i}: cpu ${v} vs gpu ${g.losses[s][i]}`);
      });
    });
    const cl = c.res.stages[2];
    const gl = g.res.stages[2];
    assert.ok(
      Math.abs(gl.valPpl - cl.valPpl) / cl.valPpl < 2e-3,
      `val ppl cpu ${cl.valPpl} gpu ${gl.valPpl}`,
    );
    assert.ok(
      Math.abs(gl.valKl - cl.valKl) < 2e-3 * Math.max(cl.valKl, 1e-3) + 1e-5,
      `val KL cpu ${cl.valKl} gpu ${gl.valKl}`,
    );
    setBackend(new CpuBackend());
  });
});
