// Trainer: AdamW against a scalar float64 implementation of PyTorch's update, schedules at key
// steps, clipping, freezing, non-finite skip/stop, gradient accumulation equivalence, atomic
// checkpoints, and a run killed with SIGKILL then resumed reproducing the unbroken run exactly.

import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { describe, it } from 'node:test';
import { fileURLToPath } from 'node:url';
import { readSafetensors } from '../src/io/safetensors.js';
import { getBackend, keep, mul, scalar, sqrt, sum, tensor, type Tensor } from '../src/tensor/index.js';
import {
  AdamW,
  compilePattern,
  lrFactor,
  NonFiniteError,
  Progress,
  readLatest,
  readMetrics,
  train,
  type ScheduleConfig,
  type StepMetrics,
} from '../src/train/index.js';
import type { BatchSource, TokenBatch } from '../src/data/index.js';
import { Random } from '../src/util/random.js';
import { assertClose } from './helpers.js';
import { makeData, runTiny, TinyLM, type RunConfig } from './train-fixture.js';

const here = path.dirname(fileURLToPath(import.meta.url));
const repoRoot = path.resolve(here, '..');

function tmpDir(name: string): string {
  return fs.mkdtempSync(path.join(os.tmpdir(), `mohawk-train-${name}-`));
}

const dataDir = makeData(tmpDir('data'));

/** A batch source for losses that ignore the data: one "token" per micro-batch. */
function nullSource(): BatchSource<TokenBatch> {
  return { next: () => ({ batch: 1, seqLen: 1 }), state: () => ({}), restore: () => {} };
}

function values(t: Tensor): number[] {
  return Array.from(t.toArray());
}

describe('AdamW', () => {
  it('matches a scalar float64 implementation of PyTorch AdamW (bias correction, decoupled decay, per-parameter steps)', () => {
    const rng = new Random(4);
    const shapes: [string, number[]][] = [
      ['layers.0.mixer.in_proj.weight', [3, 4]],
      ['layers.0.mixer.in_proj.bias', [3]],
      ['layers.0.mixer.D', [2]],
      ['layers.0.mixer.z_bias', [3]],
      ['layers.0.input_layernorm.weight', [4]],
      ['lm_head.weight', [2, 5]],
    ];
    const params: [string, Tensor][] = shapes.map(([n, s]) => {
      const t = keep(tensor(rng.normals(s.reduce((a, b) => a * b, 1)), s));
      t.requiresGrad = true;
      return [n, t];
    });
    const cfg = { lr: 0.01, beta1: 0.8, beta2: 0.95, eps: 1e-6, weightDecay: 0.3 };
    const opt = new AdamW(params, cfg);
    assert.deepEqual(opt.decayed(), ['layers.0.mixer.in_proj.weight', 'lm_head.weight']);
    // the reference: plain numbers, PyTorch's formula step_size = lr / bc1, denom = sqrt(v) / sqrt(bc2) + eps
    const ref = params.map(([n, t]) => ({
      decay: n.endsWith('in_proj.weight') || n === 'lm_head.weight',
      p: values(t),
      m: values(t).map(() => 0),
      v: values(t).map(() => 0),
      step: 0,
    }));
    for (let s = 0; s < 7; s++) {
      const lr = cfg.lr * (1 + 0.5 * Math.sin(s));
      params.forEach(([, t], i) => {
        t.grad?.dispose();
        t.grad = null;
        if (i === 5 && s % 3 === 1) return; // no gradient: skipped, its step count stays behind
        const g = Array.from(rng.normals(t.size, 0, 2));
        t.grad = keep(tensor(g, t.shape));
        const r = ref[i];
        r.step++;
        const bc1 = 1 - cfg.beta1 ** r.step;
        const bc2 = 1 - cfg.beta2 ** r.step;
        for (let k = 0; k < g.length; k++) {
          r.m[k] = cfg.beta1 * r.m[k] + (1 - cfg.beta1) * g[k];
          r.v[k] = cfg.beta2 * r.v[k] + (1 - cfg.beta2) * g[k] * g[k];
          if (r.decay) r.p[k] *= 1 - lr * cfg.weightDecay;
          r.p[k] -= (lr / bc1) * (r.m[k] / (Math.sqrt(r.v[k]) / Math.sqrt(bc2) + cfg.eps));
        }
      });
      opt.step(lr);
      params.forEach(([n, t], i) => assertClose(values(t), ref[i].p, 1e-6, `${n} after step ${s + 1}`, 1e-5));
    }
    const { tensors, steps } = opt.stateDict();
    assert.equal(steps['lm_head.weight'], 5);
    assert.equal(steps['layers.0.mixer.D'], 7);
    assertClose(values(tensors.get('lm_head.weight.exp_avg_sq')!), ref[5].v, 1e-6, 'exp_avg_sq', 1e-5);
    opt.dispose();
  });
});

describe('AdamW weight decay', () => {
  it('decays only the rows that receive a gradient (rows without one keep their values)', () => {
    const rng = new Random(5);
    const w = keep(tensor(rng.normals(12), [4, 3]));
    w.requiresGrad = true;
    const before = values(w);
    const opt = new AdamW([['mixer.in_proj.weight', w]], { lr: 0.1, weightDecay: 0.5 });
    // rows 1 and 3 get a gradient, rows 0 and 2 none (the x / z rows of in_proj in stage 1)
    const g = [0, 0, 0, 1, -2, 3, 0, 0, 0, 0.5, 0, -1];
    w.grad = keep(tensor(g, [4, 3]));
    opt.step(0.1);
    const after = values(w);
    for (const r of [0, 2])
      assert.deepEqual(after.slice(r * 3, r * 3 + 3), before.slice(r * 3, r * 3 + 3), `row ${r} untouched`);
    // trained rows: p (1 - lr wd) - lr m^ / (sqrt(v^) + eps); at step 1 m^ / sqrt(v^) = sign(g)
    for (const r of [1, 3])
      for (let c = 0; c < 3; c++) {
        const k = r * 3 + c;
        const expect = before[k] * (1 - 0.1 * 0.5) - (g[k] === 0 ? 0 : 0.1 * Math.sign(g[k]));
        assertClose([after[k]], [expect], 1e-6, `row ${r} col ${c}`);
      }
    opt.dispose();
  });
});

describe('schedules', () => {
  const f = (c: ScheduleConfig, s: number, total: number) => lrFactor(c, s, total);
  it('warmup-stable-decay: linear warmup, flat, decay over the last fraction to the floor', () => {
    const c: ScheduleConfig = { kind: 'wsd', warmupSteps: 10, decayFraction: 0.2, minLrRatio: 0.1 };
    assertClose([f(c, 0, 100), f(c, 4, 100), f(c, 9, 100)], [0.1, 0.5, 1], 1e-12, 'warmup');
    assertClose([f(c, 10, 100), f(c, 50, 100), f(c, 79, 100)], [1, 1, 1], 1e-12, 'stable');
    // decay steps 80..99: progress 1/20 .. 20/20
    assertClose(
      [f(c, 80, 100), f(c, 89, 100), f(c, 99, 100)],
      [0.1 + 0.9 * 0.95, 0.1 + 0.9 * 0.5, 0.1],
      1e-12,
      'decay',
    );
    const cos = { ...c, decayShape: 'cosine' as const };
    assertClose([f(cos, 89, 100)], [0.1 + 0.9 * 0.5], 1e-12, 'cosine decay midpoint');
    const sq = { ...c, decayShape: 'sqrt' as const, minLrRatio: 0 };
    assertClose([f(sq, 84, 100)], [1 - Math.sqrt(0.25)], 1e-12, '1 - sqrt decay');
    const frac: ScheduleConfig = { kind: 'wsd', warmupFraction: 0.05, decayFraction: 0.5 };
    assertClose([f(frac, 0, 200), f(frac, 99, 200), f(frac, 199, 200)], [0.1, 1, 0], 1e-12, 'fractions');
  });

  it('cosine with warmup: peak after warmup, half way at the middle, floor at the end, monotone', () => {
    const c: ScheduleConfig = { kind: 'cosine', warmupSteps: 10, minLrRatio: 0.1 };
    assertClose([f(c, 9, 110), f(c, 59, 110), f(c, 109, 110)], [1, 0.55, 0.1], 1e-12, 'cosine');
    for (let s = 10; s < 109; s++) assert.ok(f(c, s + 1, 110) <= f(c, s, 110), `non-increasing at ${s}`);
    assert.equal(f({ kind: 'constant', warmupSteps: 4 }, 1, 10), 0.5);
    assert.equal(f({ kind: 'constant' }, 7, 10), 1);
  });
});

describe('parameter patterns', () => {
  it('globs match whole names or module paths; /regex/ searches', () => {
    const mlp = compilePattern('model.layers.*.mlp');
    assert.ok(mlp('model.layers.3.mlp.fc1.weight'));
    assert.ok(!mlp('model.layers.3.mlp_x.weight'));
    assert.ok(!mlp('model.layers.3.4.mlp.weight'));
    assert.ok(compilePattern('**.bias')('a.b.c.bias'));
    assert.ok(!compilePattern('*.bias')('a.b.bias'));
    assert.ok(compilePattern('/mixer\\.(in|out)_proj/')('backbone.layers.0.mixer.out_proj.weight'));
    assert.throws(() => compilePattern('/(/'), /not a valid regular expression/);
  });
});

describe('train loop', () => {
  it('clips the global gradient norm (PyTorch coefficient) and reports the norm before clipping', () => {
    // beta1 = beta2 = 0 make the first update -lr g / (|g| + eps): it reveals the clipped gradient
    const c = [3, -4, 1, 2, 5, -1];
    const norm = Math.hypot(...c);
    for (const maxGradNorm of [0, 2]) {
      const w = keep(tensor([0.5, 0.1, -0.2, 0.3, 0, 1], [2, 3]));
      w.requiresGrad = true;
      const before = values(w);
      const r = train({
        params: [['w', w]],
        lossFn: () => sum(mul(w, tensor(c, [2, 3]))),
        data: nullSource(),
        budgetTokens: 1,
        optimizer: { lr: 0.1, beta1: 0, beta2: 0, eps: 1, weightDecay: 0 },
        schedule: { kind: 'constant' },
        maxGradNorm,
        progress: false,
      });
      assert.ok(Math.abs(r.history[0].grad_norm - norm) < 1e-5, `grad norm ${r.history[0].grad_norm}`);
      const coef = maxGradNorm ? maxGradNorm / (norm + 1e-6) : 1;
      const expected = before.map((p, k) => p - (0.1 * c[k] * coef) / (Math.abs(c[k] * coef) + 1));
      assertClose(values(w), expected, 1e-6, `weights with maxGradNorm ${maxGradNorm}`);
      w.dispose();
    }
  });

  it('freezes parameters by glob and regex, trains only `trainable`, and restores requiresGrad', () => {
    const snapshot = (m: TinyLM) => new Map(m.namedParameters().map(([n, t]) => [n, values(t)]));
    const init = snapshot(new TinyLM(1));
    const { model } = runTiny({ data: dataDir, steps: 3 }, { freeze: ['norm', '/^out\\.bias$/'] });
    const after = snapshot(model);
    for (const [n, v] of after) {
      const frozen = n.startsWith('norm.') || n === 'out.bias';
      assert.equal(
        JSON.stringify(v) === JSON.stringify(init.get(n)),
        frozen,
        `${n} ${frozen ? 'frozen' : 'trained'}`,
      );
    }
    assert.ok(model.parameters().every((t) => t.requiresGrad));
    const only = snapshot(runTiny({ data: dataDir, steps: 2 }, { trainable: ['out.*'] }).model);
    for (const [n, v] of only)
      assert.equal(
        JSON.stringify(v) === JSON.stringify(init.get(n)),
        !n.startsWith('out.'),
        `${n} with trainable out.*`,
      );
    assert.throws(
      () => runTiny({ data: dataDir, steps: 1 }, { freeze: ['layers.*.mlp'] }),
      /freeze pattern "layers\.\*\.mlp" matches no parameter/,
    );
  });

  it('skips steps with a non-finite loss or gradient, counts them, and stops after the limit', () => {
    const dir = tmpDir('nonfinite');
    const w = keep(tensor([1, 2, 0.5], [3]));
    w.requiresGrad = true;
    const seen: number[][] = [];
    const r = train({
      params: [['w', w]],
      // step 1: NaN loss; step 3: finite loss (sqrt(0) = 0) with an infinite gradient
      lossFn: (_b, ctx) =>
        ctx.step === 1
          ? mul(sum(w), scalar(NaN))
          : ctx.step === 3
            ? sum(sqrt(mul(w, tensor([0, 1, 1], [3]))))
            : sum(mul(w, w)),
      data: nullSource(),
      budgetTokens: 5,
      optimizer: { lr: 0.1, weightDecay: 0 },
      schedule: { kind: 'constant' },
      metricsFile: path.join(dir, 'metrics.jsonl'),
      onStep: () => seen.push(values(w)),
      progress: false,
    });
    assert.equal(r.skipped, 2);
    assert.deepEqual(seen[1], seen[0], 'no update on the NaN-loss step');
    assert.deepEqual(seen[3], seen[2], 'no update on the infinite-gradient step');
    assert.notDeepEqual(seen[4], seen[3]);
    const m = readMetrics(path.join(dir, 'metrics.jsonl'));
    assert.deepEqual(
      m.map((x) => x.skipped ?? false),
      [false, true, false, true, false],
    );
    assert.equal(m[1].loss, null, 'NaN is written as null');
    assert.throws(
      () =>
        train({
          params: [['w', w]],
          lossFn: () => mul(sum(w), scalar(Infinity)),
          data: nullSource(),
          budgetTokens: 10,
          optimizer: { lr: 0.1 },
          schedule: { kind: 'constant' },
          maxNonFinite: 2,
          progress: false,
        }),
      (e: Error) =>
        e instanceof NonFiniteError &&
        /stopping at step 3: 3 steps had a non-finite loss or gradient \(limit 2\)/.test(e.message),
    );
  });

  it('frees everything it allocates: only the model weights outlive a run; flat across steps', () => {
    const backend = getBackend();
    const before = backend.memoryStats().liveBuffers;
    const perStep: number[] = [];
    const { model } = runTiny(
      { data: dataDir, steps: 8, batchTokens: 64 },
      { onStep: () => perStep.push(backend.memoryStats().liveBuffers) },
    );
    assert.ok(
      perStep.every((n) => n === perStep[0]),
      `live buffers per step: ${perStep}`,
    );
    model.dispose();
    assert.equal(backend.memoryStats().liveBuffers, before);
  });

  it('gradient accumulation: 2 x half batch equals 1 x full batch', () => {
    const base: RunConfig = { data: dataDir, sampler: 'sequential', steps: 6, dropout: false };
    const full = runTiny({ ...base, batch: 4, batchTokens: 32 });
    const half = runTiny({ ...base, batch: 2, batchTokens: 32 });
    assertClose(
      half.result.history.map((m) => m.loss),
      full.result.history.map((m) => m.loss),
      1e-5,
      'step losses',
    );
    assertClose(
      half.result.history.map((m) => m.grad_norm),
      full.result.history.map((m) => m.grad_norm),
      1e-5,
      'gradient norms',
    );
    const fp = new Map(full.model.namedParameters());
    for (const [n, t] of half.model.namedParameters()) assertClose(values(t), values(fp.get(n)!), 1e-5, n);
    // and it did train
    assert.ok(full.result.history[5].loss < full.result.history[0].loss);
  });
});

describe('progress line', () => {
  const fake = (isTTY: boolean) => {
    const chunks: string[] = [];
    return {
      chunks,
      stream: { isTTY, write: (c: string) => chunks.push(c) > 0 } as unknown as NodeJS.WritableStream,
    };
  };
  const m = (step: number): StepMetrics => ({
    step,
    loss: 2.5,
    lr: 1e-3,
    grad_norm: 1,
    tokens: step * 1000,
    tokens_per_s: 1000,
    elapsed_s: step,
  });
  it('rewrites one line on a terminal and prints plain lines otherwise, with loss, tokens/s and ETA', () => {
    const tty = fake(true);
    const p = new Progress(4, 4000, { stream: tty.stream, label: 'stage1' });
    for (let s = 1; s <= 4; s++) p.update(m(s), 1000, 0.5, 0);
    p.done();
    assert.ok(tty.chunks[0].startsWith('\r\x1b[K'), 'carriage return + clear line');
    assert.match(
      tty.chunks[0],
      /stage1: +step 1\/4 \(25\.0%\) +loss 2\.5000 +lr 1\.00e-3 +2\.0k tok\/s +ETA 2s/,
    );
    assert.ok(tty.chunks.at(-2)!.includes('step 4/4'), 'the last step is always shown');
    assert.equal(tty.chunks.at(-1), '\n');
    const plain = fake(false);
    const q = new Progress(4, 4000, { stream: plain.stream, intervalSec: 3600 });
    for (let s = 1; s <= 4; s++) q.update(m(s), 1000, 0.5, 1);
    // the first and the last step, each a full line
    assert.equal(plain.chunks.length, 2);
    assert.ok(plain.chunks.every((c) => c.endsWith('\n') && !c.includes('\r')));
    assert.match(plain.chunks[1], /step 4\/4 \(100\.0%\).*ETA 0s +skipped 1/);
  });
});

describe('checkpoints and resume', () => {
  const fixture = path.join(here, 'train-fixture.ts');
  const runChild = (c: RunConfig): void => {
    const r = spawnSync(process.execPath, ['--import', 'tsx', fixture, JSON.stringify(c)], {
      cwd: repoRoot,
      encoding: 'utf8',
    });
    assert.equal(r.signal, 'SIGKILL', `child should be killed (status ${r.status}, stderr ${r.stderr})`);
  };
  const comparable = (m: StepMetrics[]) =>
    m.map(({ step, loss, lr, grad_norm, tokens }) => ({ step, loss, lr, grad_norm, tokens }));

  // the unbroken reference run
  const refDir = tmpDir('ref');
  const common: RunConfig = { data: dataDir, steps: 10, checkpointEvery: 3, sampler: 'random' };
  const ref = runTiny({
    ...common,
    checkpointDir: path.join(refDir, 'ckpt'),
    metricsFile: path.join(refDir, 'metrics.jsonl'),
  });
  const refMetrics = readMetrics(path.join(refDir, 'metrics.jsonl'));
  const refParams = ref.model.namedParameters().map(([n, t]) => [n, values(t)]);

  it('writes weights, optimizer state and state.json; keeps the last two', () => {
    const ckpt = path.join(refDir, 'ckpt');
    const latest = readLatest(ckpt)!;
    assert.equal(latest.step, 10);
    assert.deepEqual(fs.readdirSync(ckpt).sort(), ['latest.json', 'step-00000009', 'step-00000010']);
    const model = readSafetensors(path.join(latest.path, 'model.safetensors'));
    assert.deepEqual([...model.entries.keys()].sort(), [
      'emb.weight',
      'norm.bias',
      'norm.weight',
      'out.bias',
      'out.weight',
    ]);
    const opt = readSafetensors(path.join(latest.path, 'optimizer.safetensors'));
    assert.ok(opt.entries.has('out.weight.exp_avg_sq'));
    assert.equal(JSON.parse(opt.metadata.steps)['emb.weight'], 10);
    const state = JSON.parse(fs.readFileSync(path.join(latest.path, 'state.json'), 'utf8'));
    assert.equal(state.step, 10);
    assert.equal(state.tokens, 320);
    assert.equal(state.data.kind, 'random-windows');
    assert.equal(state.rng.s.length, 4);
    assert.deepEqual(JSON.parse(fs.readFileSync(path.join(latest.path, 'config.json'), 'utf8')), {
      step: 10,
    });
    assert.equal(refMetrics.length, 10);
    assert.ok(refMetrics[9].loss < refMetrics[0].loss, 'the loss falls');
  });

  it('a run killed with SIGKILL mid-way and resumed reproduces the unbroken run exactly', () => {
    const dir = tmpDir('kill');
    const c: RunConfig = {
      ...common,
      checkpointDir: path.join(dir, 'ckpt'),
      metricsFile: path.join(dir, 'metrics.jsonl'),
    };
    runChild({ ...c, killAtStep: 8 });
    assert.equal(readLatest(c.checkpointDir!)!.step, 6);
    assert.equal(
      readMetrics(c.metricsFile!).length,
      8,
      'the killed run logged steps 7 and 8 past its checkpoint',
    );
    const resumed = runTiny(c);
    assert.equal(resumed.result.resumedFrom, 6);
    assert.equal(resumed.result.history.length, 4);
    assert.deepEqual(comparable(readMetrics(c.metricsFile!)), comparable(refMetrics));
    assert.deepEqual(
      resumed.model.namedParameters().map(([n, t]) => [n, values(t)]),
      refParams,
    );
  });

  it('a kill while a checkpoint is being written leaves no partial checkpoint visible', () => {
    const dir = tmpDir('atomic');
    const ckpt = path.join(dir, 'ckpt');
    const c: RunConfig = { ...common, checkpointDir: ckpt, metricsFile: path.join(dir, 'metrics.jsonl') };
    runChild({ ...c, killInCheckpointAt: 6 });
    const names = fs.readdirSync(ckpt);
    assert.ok(
      names.some((n) => /^step-00000006\.tmp-\d+$/.test(n)),
      `half-written temporary left behind: ${names}`,
    );
    assert.ok(!names.includes('step-00000006'), 'no step-6 checkpoint visible');
    assert.equal(readLatest(ckpt)!.step, 3);
    const resumed = runTiny(c);
    assert.equal(resumed.result.resumedFrom, 3);
    assert.deepEqual(comparable(readMetrics(c.metricsFile!)), comparable(refMetrics));
    assert.ok(!fs.readdirSync(ckpt).some((n) => n.includes('.tmp-')), 'stale temporaries pruned');
    // an error while writing (not a kill) also leaves nothing behind
    const dir2 = tmpDir('atomic2');
    assert.throws(
      () =>
        runTiny(
          { ...common, checkpointDir: path.join(dir2, 'ckpt') },
          {
            beforeCommit: (_tmp, step) => {
              if (step === 6) throw new Error('disk full');
            },
          },
        ),
      /disk full/,
    );
    assert.deepEqual(fs.readdirSync(path.join(dir2, 'ckpt')).sort(), ['latest.json', 'step-00000003']);
  });

  it('refuses to resume with a different batch or budget, or to overwrite without resuming', () => {
    assert.throws(
      () => runTiny({ ...common, steps: 12, checkpointDir: path.join(refDir, 'ckpt') }),
      /made with total_steps 10, this run has 12/,
    );
    assert.throws(
      () => runTiny({ ...common, checkpointDir: path.join(refDir, 'ckpt') }, { resume: false }),
      /already holds a checkpoint \(step 10\); resume, or remove the directory/,
    );
  });
});
