// Data-parallel `mohawk distill` end to end: a small random Llama teacher and byte data made
// here, the same stage-3 config run on each number of ranks (plain, --zero and --zero-stage 2), the
// per-step losses compared with the first run and the tokens/s of each. On the GPU machine (ranks =
// GPUs):
//   node bench/dist-distill.js                 one GPU: plain, and ZeRO-1 / ZeRO-2 over a one-rank NCCL
//   node bench/dist-distill.js --ranks 1,2,8   a machine with 8 GPUs
// (`scripts/gpu-check.sh dist-distill` runs the first; BENCH_OUT=dir writes dist-distill.{md,json})
// Here, on CPU processes: node --import tsx bench/dist-distill.ts --device cpu --ranks 1,2 --d 32

import { spawnSync } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';
import { LlamaForCausalLM } from '../src/models/llama.js';
import { saveModel } from '../src/models/load.js';
import { byteTokenizer } from '../src/io/tokenizer.js';
import { writeTokenSplits } from '../src/data/shards.js';
import { Random } from '../src/util/random.js';

const { values } = parseArgs({
  options: {
    device: { type: 'string', default: 'cuda' },
    ranks: { type: 'string', default: '1' },
    d: { type: 'string', default: '512' },
    layers: { type: 'string', default: '4' },
    seq: { type: 'string', default: '512' },
    micro: { type: 'string', default: '4' },
    steps: { type: 'string', default: '20' },
    precision: { type: 'string', default: 'bf16' },
  },
});
const here = path.dirname(fileURLToPath(import.meta.url));
const mainTs = path.join(here, '../src/cli/main.ts');
const main = fs.existsSync(mainTs) ? mainTs : path.join(here, '../src/cli/main.js');
const ranks = values.ranks!.split(',').map(Number);
const D = Number(values.d);
const L = Number(values.layers);
const T = Number(values.seq);
const micro = Number(values.micro);
const maxRanks = Math.max(...ranks);
const batchTokens = maxRanks * micro * T;
const steps = Number(values.steps);
const cpu = values.device === 'cpu';

const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'mohawk-dist-bench-'));
const tok = byteTokenizer();
const heads = Math.max(1, D / 64);
const teacher = new LlamaForCausalLM(
  {
    vocabSize: tok.vocabSize,
    hiddenSize: D,
    intermediateSize: 4 * D,
    numLayers: L,
    numHeads: heads,
    numKvHeads: heads,
    headDim: D / heads,
    rmsNormEps: 1e-5,
    ropeTheta: 10000,
    maxPositionEmbeddings: T,
    tieWordEmbeddings: false,
    attentionBias: false,
    mlpBias: false,
    bosTokenId: 256,
    eosTokenId: 256,
  },
  { rng: new Random(1) },
);
const rng = new Random(9);
const n = batchTokens * (steps + 2) + 4 * T;
const doc = Array.from({ length: n }, (_, i) => (i % 7 === 0 ? 32 : 97 + ((rng.int(0, 5) + i) % 26)));
writeTokenSplits(
  path.join(dir, 'data'),
  { train: { documents: [doc.slice(0, n - 4 * T)] }, val: { documents: [doc.slice(n - 4 * T)] } },
  { vocabSize: tok.vocabSize, eosTokenId: 256 },
);
saveModel(path.join(dir, 'teacher'), teacher, tok);
teacher.dispose();
const cfg = path.join(dir, 'config.json');
fs.writeFileSync(
  cfg,
  JSON.stringify({
    teacher: path.join(dir, 'teacher'),
    out: path.join(dir, 'out'),
    seed: 1,
    precision: cpu ? 'f32' : values.precision,
    student: { chunkSize: Math.min(64, T) },
    data: { train: [path.join(dir, 'data')], valTokens: 2 * T },
    stageDefaults: { batchTokens, microBatch: micro, seqLen: T, schedule: 'wsd' },
    stages: [{ stage: 3, tokens: steps * batchTokens, lr: 1e-3 }],
  }),
);

interface Row {
  ranks: number;
  /** ZeRO stage: 0 (plain data parallel), 1 (--zero), 2 (--zero-stage 2) */
  zero: number;
  seconds: number;
  tokensPerS: number;
  maxLossDiff: number;
  valPpl: number;
}
const rows: Row[] = [];
let ref: number[] | null = null;
for (const r of ranks) {
  // --zero at 1 rank runs the sharded optimizer over a one-rank collective (NCCL on a GPU)
  for (const zero of [0, 1, 2]) {
    const out = path.join(dir, `out-${r}${zero ? `-zero${zero}` : ''}`);
    const args = [...process.execArgv, main, 'distill', '--config', cfg, '--json', '--out', out];
    args.push(...(cpu ? ['--device', 'cpu', '--nproc', String(r)] : ['--gpus', String(r)]));
    if (zero === 1) args.push('--zero');
    if (zero === 2) args.push('--zero-stage', '2');
    const t0 = performance.now();
    const p = spawnSync(process.execPath, args, { encoding: 'utf8', maxBuffer: 1 << 26 });
    const seconds = (performance.now() - t0) / 1000;
    if (p.status !== 0) throw new Error(`ranks ${r}${zero ? ` ZeRO-${zero}` : ''} failed:\n${p.stderr}`);
    const res = JSON.parse(p.stdout) as { stages: { valPpl: number }[] };
    const metrics = fs
      .readFileSync(path.join(out, 'stage1-kd', 'metrics.jsonl'), 'utf8')
      .trim()
      .split('\n')
      .map((l) => JSON.parse(l) as { loss: number; tokens_per_s: number });
    const losses = metrics.map((m) => m.loss);
    ref ??= losses;
    const tps = metrics
      .slice(2)
      .map((m) => m.tokens_per_s)
      .sort((a, b) => a - b);
    rows.push({
      ranks: r,
      zero,
      seconds,
      tokensPerS: tps[tps.length >> 1] ?? NaN,
      maxLossDiff: Math.max(...losses.map((l, i) => Math.abs(l - ref![i]) / Math.abs(ref![i]))),
      valPpl: res.stages[0].valPpl,
    });
  }
}
const lines = [
  `d ${D}, ${L} layers, ${micro} x ${T} tokens per micro-batch per rank, ${batchTokens} tokens per step, ${steps} steps, ${values.device}`,
  '',
  '| ranks | ZeRO | tokens/s (median step) | speedup | max relative loss difference vs 1 rank | val ppl | wall s |',
  '| ---: | --- | ---: | ---: | ---: | ---: | ---: |',
  ...rows.map(
    (x) =>
      `| ${x.ranks} | ${x.zero || 'no'} | ${x.tokensPerS.toFixed(0)} | ${(x.tokensPerS / rows[0].tokensPerS).toFixed(2)} | ${x.maxLossDiff.toExponential(2)} | ${x.valPpl.toFixed(4)} | ${x.seconds.toFixed(1)} |`,
  ),
];
console.log(lines.join('\n'));
console.log(JSON.stringify(rows));
if (process.env.BENCH_OUT) {
  fs.writeFileSync(path.join(process.env.BENCH_OUT, 'dist-distill.md'), lines.join('\n') + '\n');
  fs.writeFileSync(
    path.join(process.env.BENCH_OUT, 'dist-distill.json'),
    JSON.stringify(rows, null, 2) + '\n',
  );
}
fs.rmSync(dir, { recursive: true, force: true });
