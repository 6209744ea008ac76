// The kill test: `kill -9` a `mohawk distill` at random moments, `--resume` it (sometimes killing
// the resumed run too), and compare the finished run with an uninterrupted one bit for bit: the
// student's model.safetensors byte for byte, and every stage's loss, perplexity and KL.
//
//   node --import tsx scripts/kill-test.ts [--trials N] [--seed S] [--dir DIR] [--json]
//
// A tiny Llama teacher (byte vocabulary, 2 layers) and 30k tokens are made in DIR; the config runs
// stages 1, 2 and 3 with a checkpoint every step, so kills land in training, in validation, in
// checkpoint and done.json writes, and in the student's save.

import { spawn } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { parseArgs } from 'node:util';
import { saveModel } from '../src/models/load.js';
import { byteTokenizer } from '../src/io/tokenizer.js';
import { Random } from '../src/util/random.js';
import { tinyLlama, writePatternedSplits } from '../test/helpers.js';

const { values } = parseArgs({
  options: {
    trials: { type: 'string' },
    seed: { type: 'string' },
    dir: { type: 'string' },
    json: { type: 'boolean' },
  },
});
const trials = Number(values.trials ?? 8);
const rng = new Random(Number(values.seed ?? 1));
const root = values.dir ?? fs.mkdtempSync(path.join(os.tmpdir(), 'mohawk-kill-'));
const repo = path.resolve(import.meta.dirname, '..');
const log = (l: string) => process.stderr.write(l + '\n');

function setup(): void {
  const tok = byteTokenizer();
  saveModel(path.join(root, 'teacher'), tinyLlama(), tok);
  writePatternedSplits(root, 30000, 26000);
}

function config(name: string): string {
  const file = path.join(root, `${name}.json`);
  fs.writeFileSync(
    file,
    JSON.stringify({
      teacher: path.join(root, 'teacher'),
      out: path.join(root, name),
      seed: 1,
      student: { chunkSize: 16 },
      data: { train: [path.join(root, 'data')], valTokens: 1024 },
      stageDefaults: { batchTokens: 256, microBatch: 8, seqLen: 32, checkpointEvery: 1 },
      stages: [
        { stage: 1, tokens: 1024, lr: 3e-3 },
        { stage: 2, tokens: 1024, lr: 3e-3 },
        { stage: 3, tokens: 2048, lr: 2e-3 },
      ],
    }),
  );
  return file;
}

/** Run distill; kill it with SIGKILL after `killAfterMs` (null: let it finish). */
function distill(
  cfg: string,
  resume: boolean,
  killAfterMs: number | null,
): Promise<{ code: number | null; killed: boolean; ms: number; stderr: string }> {
  return new Promise((resolve) => {
    const t0 = performance.now();
    const args = [
      '--import',
      'tsx',
      path.join(repo, 'src/cli/main.ts'),
      'distill',
      '--config',
      cfg,
      '--json',
    ];
    if (resume) args.push('--resume');
    const p = spawn(process.execPath, args, { cwd: repo, stdio: ['ignore', 'ignore', 'pipe'] });
    let stderr = '';
    p.stderr!.on('data', (d) => (stderr += d));
    let killed = false;
    const timer =
      killAfterMs === null
        ? null
        : setTimeout(() => {
            killed = p.kill('SIGKILL');
          }, killAfterMs);
    p.on('exit', (code) => {
      if (timer) clearTimeout(timer);
      resolve({ code, killed: killed && code === null, ms: performance.now() - t0, stderr });
    });
  });
}

interface Outcome {
  trial: number;
  kills: number[];
  resumes: number;
  identical: boolean;
  problem?: string;
}

function compare(name: string, ref: string): string | null {
  const a = fs.readFileSync(path.join(root, name, 'student', 'model.safetensors'));
  const b = fs.readFileSync(path.join(root, ref, 'student', 'model.safetensors'));
  if (!a.equals(b)) return 'student weights differ';
  const pick = (n: string) =>
    (
      JSON.parse(fs.readFileSync(path.join(root, n, 'results.json'), 'utf8')).stages as Record<
        string,
        number
      >[]
    ).map((s) => [s.stage, s.tokens, s.steps, s.loss, s.valPpl, s.valKl]);
  if (JSON.stringify(pick(name)) !== JSON.stringify(pick(ref))) return 'results.json figures differ';
  return null;
}

async function main(): Promise<void> {
  setup();
  log(`kill test in ${root}: ${trials} trial(s)`);
  const whole = await distill(config('whole'), false, null);
  if (whole.code !== 0) throw new Error(`the uninterrupted run failed:\n${whole.stderr}`);
  log(`uninterrupted run: ${(whole.ms / 1000).toFixed(1)} s`);
  const outcomes: Outcome[] = [];
  for (let t = 0; t < trials; t++) {
    const name = `killed-${t}`;
    const cfg = config(name);
    const kills: number[] = [];
    let resumes = 0;
    // the first run is always killed; each resumed run is killed again with probability 1/2
    let r = await distill(cfg, false, Math.round(rng.uniform() * whole.ms));
    while (true) {
      if (r.killed) kills.push(Math.round(r.ms));
      else if (r.code !== 0) {
        outcomes.push({
          trial: t,
          kills,
          resumes,
          identical: false,
          problem: `exit ${r.code}: ${r.stderr.trim().split('\n').at(-1)}`,
        });
        break;
      } else {
        const problem = compare(name, 'whole');
        outcomes.push({
          trial: t,
          kills,
          resumes,
          identical: problem === null,
          ...(problem ? { problem } : {}),
        });
        break;
      }
      resumes++;
      const again = kills.length < 3 && rng.uniform() < 0.5;
      r = await distill(cfg, true, again ? Math.round(rng.uniform() * whole.ms) : null);
    }
    const o = outcomes[outcomes.length - 1];
    log(
      `trial ${t}: killed at ${o.kills.map((k) => `${(k / 1000).toFixed(1)} s`).join(', ')}; ` +
        `${o.resumes} resume(s); ${o.identical ? 'bit-identical' : `DIFFERENT: ${o.problem}`}`,
    );
    fs.rmSync(path.join(root, name), { recursive: true, force: true });
  }
  const killsTotal = outcomes.reduce((a, o) => a + o.kills.length, 0);
  const same = outcomes.filter((o) => o.identical).length;
  const summary = { trials, kills: killsTotal, identical: same, wholeSeconds: whole.ms / 1000, outcomes };
  if (values.json) console.log(JSON.stringify(summary));
  else
    console.log(
      `${killsTotal} kills over ${trials} runs: ${same}/${trials} resumed runs bit-identical to the uninterrupted run`,
    );
  if (!values.dir) fs.rmSync(root, { recursive: true, force: true });
  process.exitCode = same === trials ? 0 : 1;
}

await main();
