// `mohawk distill --device cpu --nproc 2` against one process on a tiny teacher: the same
// per-step losses in every stage (1, 2, 3 and the scratch baseline), the same validation
// perplexities, plain, with ZeRO-1 (--zero) and with ZeRO-2 (--zero-stage 2); and a worker
// killed mid-run stops the job within seconds with the rank named.
//
// Tolerance 1e-4 relative: two ranks sum the step's gradients in another order than one process
// accumulating its micro-batches (f32), and the difference compounds over the steps.

import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { describe, it } from 'node:test';
import { LlamaForCausalLM } from '../src/models/llama.js';
import { saveModel } from '../src/models/load.js';
import { byteTokenizer } from '../src/io/tokenizer.js';
import { writeTokenSplits } from '../src/data/shards.js';
import { Random } from '../src/util/random.js';

const root = path.resolve(import.meta.dirname, '..');

function setup(dir: string): void {
  const tok = byteTokenizer();
  const teacher = new LlamaForCausalLM(
    {
      vocabSize: tok.vocabSize,
      hiddenSize: 16,
      intermediateSize: 32,
      numLayers: 2,
      numHeads: 2,
      numKvHeads: 1,
      headDim: 8,
      rmsNormEps: 1e-5,
      ropeTheta: 10000,
      maxPositionEmbeddings: 128,
      tieWordEmbeddings: false,
      attentionBias: false,
      mlpBias: false,
      bosTokenId: 256,
      eosTokenId: 256,
    },
    { rng: new Random(1) },
  );
  const r = new Random(9);
  const doc = Array.from({ length: 8000 }, (_, i) => (i % 7 === 0 ? 32 : 97 + ((r.int(0, 5) + i) % 26)));
  writeTokenSplits(
    path.join(dir, 'data'),
    { train: { documents: [doc.slice(0, 7000)] }, val: { documents: [doc.slice(7000)] } },
    { vocabSize: tok.vocabSize, eosTokenId: 256 },
  );
  saveModel(path.join(dir, 'teacher'), teacher, tok);
}

function config(dir: string, out: string, tokens = 1): string {
  const f = path.join(dir, `${out}.json`);
  fs.writeFileSync(
    f,
    JSON.stringify({
      teacher: path.join(dir, 'teacher'),
      out: path.join(dir, out),
      seed: 1,
      student: { chunkSize: 8 },
      data: { train: [path.join(dir, 'data')], valTokens: 256 },
      // 2 micro-batches of 4 x 16 tokens per step: one per rank
      stageDefaults: { batchTokens: 128, microBatch: 4, seqLen: 16, schedule: 'wsd' },
      stages: [
        { stage: 1, tokens: 384 * tokens, lr: 3e-3 },
        { stage: 2, tokens: 384 * tokens, lr: 3e-3 },
        { stage: 3, tokens: 512 * tokens, lr: 2e-3 },
      ],
      scratchBaseline: true,
    }),
  );
  return f;
}

function cli(args: string[]) {
  const p = spawn(
    process.execPath,
    ['--import', 'tsx', path.join(root, 'src/cli/main.ts'), 'distill', ...args],
    {
      cwd: root,
      stdio: ['ignore', 'pipe', 'pipe'],
    },
  );
  let out = '';
  let err = '';
  p.stdout.on('data', (d) => (out += d));
  p.stderr.on('data', (d) => (err += d));
  const done = new Promise<{ code: number | null; out: string; err: string }>((resolve) =>
    p.on('exit', (code) => resolve({ code, out, err })),
  );
  return { p, done, err: () => err };
}

interface Result {
  stages: { loss: number; valPpl: number; valKl: number }[];
  scratch: { valPpl: number };
}

const losses = (dir: string, stage: string): number[] =>
  fs
    .readFileSync(path.join(dir, stage, 'metrics.jsonl'), 'utf8')
    .trim()
    .split('\n')
    .map((l) => JSON.parse(l).loss);

function close(a: number[], b: number[], what: string): void {
  assert.equal(a.length, b.length, what);
  a.forEach((v, i) =>
    assert.ok(Math.abs(v - b[i]) <= 1e-4 * Math.abs(b[i]), `${what}[${i}]: ${v} vs ${b[i]}`),
  );
}

describe('mohawk distill --nproc (CPU processes)', () => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'mohawk-dp-'));
  setup(dir);

  it('2 processes, plain, ZeRO-1 and ZeRO-2, give the losses and validation figures of one', async () => {
    const runs = await Promise.all([
      cli(['--config', config(dir, 'one'), '--json']).done,
      cli(['--config', config(dir, 'two'), '--json', '--device', 'cpu', '--nproc', '2']).done,
      cli(['--config', config(dir, 'zero'), '--json', '--device', 'cpu', '--nproc', '2', '--zero']).done,
      cli([
        '--config',
        config(dir, 'zero2'),
        '--json',
        '--device',
        'cpu',
        '--nproc',
        '2',
        '--zero-stage',
        '2',
      ]).done,
    ]);
    for (const r of runs) assert.equal(r.code, 0, r.err);
    const [one, two, zero, zero2] = runs.map((r) => JSON.parse(r.out) as Result);
    for (const [name, r] of [
      ['two', two],
      ['zero', zero],
      ['zero2', zero2],
    ] as const) {
      close(
        r.stages.map((s) => s.valPpl),
        one.stages.map((s) => s.valPpl),
        `${name}: validation perplexity per stage`,
      );
      close(
        r.stages.map((s) => s.valKl),
        one.stages.map((s) => s.valKl),
        `${name}: validation KL per stage`,
      );
      close([r.scratch.valPpl], [one.scratch.valPpl], `${name}: scratch perplexity`);
      for (const st of ['stage1-matrix', 'stage2-hidden', 'stage3-kd', 'scratch'])
        close(losses(path.join(dir, name), st), losses(path.join(dir, 'one'), st), `${name}: ${st} losses`);
    }
    // the figures move: a test that compares two idle runs would prove nothing
    assert.notEqual(one.stages[2].valPpl, one.stages[1].valPpl);
    assert.ok(
      fs.existsSync(
        path.join(dir, 'zero', 'stage3-kd', 'step-00000004', 'optimizer-shard-00001-of-00002.safetensors'),
      ),
    );
  });

  it('killing one worker stops the job within seconds, naming the rank', async () => {
    const job = cli(['--config', config(dir, 'killed', 1000), '--device', 'cpu', '--nproc', '2']);
    const metrics = path.join(dir, 'killed', 'stage1-matrix', 'metrics.jsonl');
    const pid = await new Promise<number>((resolve, reject) => {
      const timer = setInterval(() => {
        const m = /rank 1: pid (\d+)/.exec(job.err());
        if (m && fs.existsSync(metrics) && fs.readFileSync(metrics, 'utf8').length > 0) {
          clearInterval(timer);
          resolve(Number(m[1]));
        }
      }, 50);
      void job.done.then((r) => {
        clearInterval(timer);
        reject(new Error(`the job ended before it could be killed: ${r.err}`));
      });
    });
    const t0 = Date.now();
    process.kill(pid, 'SIGKILL');
    const r = await job.done;
    const seconds = (Date.now() - t0) / 1000;
    assert.equal(r.code, 1);
    assert.match(r.err, /distributed job failed: rank 1 \(pid \d+\) was killed by SIGKILL/);
    assert.ok(seconds < 10, `the job took ${seconds} s to stop`);
  });
});
