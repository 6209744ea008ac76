// Whole models on the GPU: each reference checkpoint of ../shared/fixtures/reference runs forward
// and backward (cross-entropy on its own next tokens) on the CPU and on the CUDA backend; logits'
// log-probabilities, loss and every parameter gradient must agree, and both must reproduce the
// log-probabilities that Hugging Face transformers computed for the fixture.
//
// Skips without a GPU (see test/cuda.test.ts) or without ../shared; a model family whose module
// is not in src/models yet is skipped by name.

import assert from 'node:assert/strict';
import { existsSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { describe, it } from 'node:test';
import type { Backend } from '../src/backends/backend.js';
import { CpuBackend } from '../src/backends/cpu/index.js';
import { loadTensors } from '../src/io/safetensors.js';
import * as T from '../src/tensor/index.js';
import { assertClose } from './helpers.js';
import { fixtures, openGpuWithFixtures, repoRoot } from './gpu-helpers.js';

const { gpu, skip } = openGpuWithFixtures();
const cpu = new CpuBackend();

interface Family {
  fixture: string;
  module: string;
  model: string;
  config: string;
}

const FAMILIES: Family[] = [
  { fixture: 'llama-untied', module: 'llama', model: 'LlamaForCausalLM', config: 'llamaConfigFromJson' },
  { fixture: 'llama-tied', module: 'llama', model: 'LlamaForCausalLM', config: 'llamaConfigFromJson' },
  { fixture: 'phi', module: 'phi', model: 'PhiForCausalLM', config: 'phiConfigFromJson' },
  { fixture: 'gpt2', module: 'gpt2', model: 'Gpt2LMHeadModel', config: 'gpt2ConfigFromJson' },
  { fixture: 'phi-mamba', module: 'phi-mamba', model: 'StudentLM', config: 'studentConfigFromJson' },
];

interface Expected {
  ids: number[][];
  logprobs: number[][];
}

interface Run {
  logprobs: number[][];
  loss: number;
  grads: Map<string, Float64Array>;
}

type ModelModule = Record<string, unknown>;

function runModel(be: Backend, mod: ModelModule, f: Family, expected: Expected): Run {
  T.setBackend(be);
  const dir = join(fixtures, f.fixture);
  const json = JSON.parse(readFileSync(join(dir, 'config.json'), 'utf8')) as Record<string, unknown>;
  const config = (mod[f.config] as (j: unknown) => unknown)(json);
  const Model = mod[f.model] as new (c: unknown) => {
    forward(ids: T.Tensor): { logits: T.Tensor };
    loadStateDict(t: Map<string, T.Tensor>, o?: { source?: string }): void;
    namedParameters(): [string, T.Tensor][];
    dispose(): void;
  };
  const model = new Model(config);
  const weights = loadTensors(dir);
  model.loadStateDict(weights, { source: dir });
  for (const t of weights.values()) t.dispose();
  const params = model.namedParameters();
  for (const [, p] of params) p.requiresGrad = true;
  const [b, len] = [expected.ids.length, expected.ids[0].length];
  const out = T.scope(() => {
    const ids = T.tensor(Int32Array.from(expected.ids.flat()), [b, len], 'i32');
    // next-token targets; the last position of each row has none
    const next = expected.ids.flatMap((row) => [...row.slice(1), -100]);
    const targets = T.tensor(Int32Array.from(next), [b, len], 'i32');
    const { logits } = model.forward(ids);
    const loss = T.crossEntropy(logits, targets, { ignoreIndex: -100 });
    loss.backward();
    return { logits: Float64Array.from(logits.toArray()), loss: loss.item() };
  });
  const vocab = out.logits.length / (b * len);
  const logprobs = expected.ids.map((row, r) =>
    row.slice(1).map((tok, t) => {
      const base = (r * len + t) * vocab;
      let max = -Infinity;
      for (let j = 0; j < vocab; j++) max = Math.max(max, out.logits[base + j]);
      let s = 0;
      for (let j = 0; j < vocab; j++) s += Math.exp(out.logits[base + j] - max);
      return out.logits[base + tok] - max - Math.log(s);
    }),
  );
  const grads = new Map(params.map(([n, p]) => [n, Float64Array.from(p.grad!.toArray())]));
  model.dispose();
  return { logprobs, loss: out.loss, grads };
}

function maxAbs(a: ArrayLike<number>): number {
  let m = 0;
  for (let i = 0; i < a.length; i++) m = Math.max(m, Math.abs(a[i]));
  return m;
}

describe('cuda: whole models against the CPU backend and Hugging Face', { skip }, () => {
  for (const f of FAMILIES) {
    it(`${f.fixture}: forward log-probabilities, loss and every gradient`, async (t) => {
      const path = join(repoRoot, 'src', 'models', `${f.module}.ts`);
      if (!existsSync(path) && !existsSync(path.replace(/\.ts$/, '.js'))) {
        t.skip(`src/models/${f.module}.ts is not there yet`);
        return;
      }
      const spec = `../src/models/${f.module}.js`;
      const mod = (await import(spec)) as ModelModule;
      if (typeof mod[f.model] !== 'function' || typeof mod[f.config] !== 'function') {
        t.skip(`src/models/${f.module} has no ${f.model} / ${f.config}`);
        return;
      }
      const expected = JSON.parse(
        readFileSync(join(fixtures, f.fixture, 'expected.json'), 'utf8'),
      ) as Expected;
      try {
        const c = runModel(cpu, mod, f, expected);
        const g = runModel(gpu!, mod, f, expected);
        const gpuVsHf = maxAbs(g.logprobs.flat().map((v, i) => v - expected.logprobs.flat()[i]));
        const cpuVsHf = maxAbs(c.logprobs.flat().map((v, i) => v - expected.logprobs.flat()[i]));
        t.diagnostic(
          `max |logprob - transformers|: gpu ${gpuVsHf.toExponential(2)}, cpu ${cpuVsHf.toExponential(2)}`,
        );
        assertClose(g.logprobs.flat(), c.logprobs.flat(), 1e-4, `${f.fixture} logprobs gpu vs cpu`);
        assert.ok(Math.abs(g.loss - c.loss) <= 1e-5 * Math.abs(c.loss), `loss ${g.loss} vs ${c.loss}`);
        for (const [name, ref] of c.grads) {
          assertClose(g.grads.get(name)!, ref, 1e-4 * maxAbs(ref) + 1e-7, `${f.fixture} gradient of ${name}`);
        }
        // the GPU reproduces transformers at least as well as f32 allows
        assert.ok(
          gpuVsHf <= Math.max(1e-3, 2 * cpuVsHf),
          `gpu logprobs differ from transformers by ${gpuVsHf}`,
        );
      } finally {
        T.setBackend(cpu);
      }
    });
  }
});
