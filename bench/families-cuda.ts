// The teacher families on the GPU: every reference checkpoint in test/fixtures/families (written
// by transformers 5.17) scored on CUDA, its token log-probabilities against transformers' own.
// A check rather than a timing; run by scripts/gpu-check.sh as the part `families-cuda`.
// Run: node --import tsx bench/families-cuda.ts [--dir test/fixtures/families] [--tol 2e-4] [--device cpu]

import fs from 'node:fs';
import path from 'node:path';
import { parseArgs } from 'node:util';
import { tokenLogprobs } from '../src/eval/score.js';
import { loadModel } from '../src/models/load.js';
import { useDevice } from '../src/tensor/device.js';

const { values } = parseArgs({
  options: {
    dir: { type: 'string', default: 'test/fixtures/families' },
    tol: { type: 'string', default: '2e-4' },
    device: { type: 'string', default: 'cuda' },
  },
});
const root = path.resolve(values.dir!);
const tol = Number(values.tol);
await useDevice(values.device);

interface Expected {
  ids: number[][];
  logprobs: number[][];
}

let worst = 0;
const rows: string[] = ['| family | max abs log-prob diff | seconds |', '| --- | ---: | ---: |'];
for (const name of fs.readdirSync(root).sort()) {
  const dir = path.join(root, name);
  if (!fs.existsSync(path.join(dir, 'expected.json'))) continue;
  const exp = JSON.parse(fs.readFileSync(path.join(dir, 'expected.json'), 'utf8')) as Expected;
  const t0 = performance.now();
  const { model } = loadModel(dir, { tokenizer: false });
  let diff = 0;
  exp.ids.forEach((ids, b) => {
    // the whole sequence in one window, as transformers scored it: dynamic rope depends on the
    // input's length, so a dummy last token makes the model see all of ids (its score is dropped)
    const lp = tokenLogprobs(model, [...ids, 0], { window: ids.length + 1 }).subarray(0, ids.length - 1);
    lp.forEach((v, t) => (diff = Math.max(diff, Math.abs(v - exp.logprobs[b][t]))));
  });
  model.dispose();
  worst = Math.max(worst, diff);
  rows.push(`| ${name} | ${diff.toExponential(2)} | ${((performance.now() - t0) / 1000).toFixed(2)} |`);
}
console.log(rows.join('\n'));
console.log(`worst ${worst.toExponential(2)} (tolerance ${tol})`);
if (process.env.BENCH_OUT)
  fs.writeFileSync(path.join(process.env.BENCH_OUT, 'families-cuda.md'), rows.join('\n') + '\n');
process.exit(worst <= tol ? 0 : 1);
