// npm run fuzz -- --cases N [--seed S] [--kinds a,b] [--timeout-ms T] [--memory-mb M] [--json]
// Mutated inputs of six kinds (safetensors, config.json, tokenizers, llama2.c files, YAML and
// --set, prepared data) through mohawk's readers; prints the outcome counts per kind and class.

import { parseArgs } from 'node:util';
import { KINDS, type Kind } from './cases.js';
import { fuzzTable, runFuzz } from './harness.js';

const { values } = parseArgs({
  options: {
    cases: { type: 'string' },
    seed: { type: 'string' },
    kinds: { type: 'string' },
    'timeout-ms': { type: 'string' },
    'memory-mb': { type: 'string' },
    json: { type: 'boolean' },
  },
});
const int = (v: string | undefined, d: number) => (v === undefined ? d : Number.parseInt(v, 10));
const kinds = values.kinds ? (values.kinds.split(',') as Kind[]) : KINDS;
for (const k of kinds)
  if (!KINDS.includes(k)) throw new Error(`--kinds: unknown kind ${k} (known: ${KINDS.join(', ')})`);
const cases = int(values.cases, 600);
const tty = process.stderr.isTTY;
let last = 0;
const report = await runFuzz({
  cases,
  seed: int(values.seed, 1),
  kinds,
  timeoutMs: int(values['timeout-ms'], 5000),
  memoryMb: int(values['memory-mb'], 1024),
  onProgress: (done, total) => {
    const now = performance.now();
    if (now - last < (tty ? 200 : 10000) && done < total) return;
    last = now;
    process.stderr.write(
      `${tty ? '\r\x1b[K' : ''}fuzz: ${done}/${total} cases${tty && done < total ? '' : '\n'}`,
    );
  },
});
if (values.json) console.log(JSON.stringify(report));
else {
  console.log(fuzzTable(report));
  console.log(`\n${report.cases} cases, seed ${report.seed}, ${report.seconds.toFixed(1)} s`);
  for (const [kind, byClass] of Object.entries(report.examples))
    for (const [cls, list] of Object.entries(byClass))
      if (cls !== 'clean-error') for (const d of list ?? []) console.log(`${kind} ${cls}: ${d}`);
}
const bad = report.totals.crash + report.totals.hang + report.totals['quiet-wrong'];
process.exitCode = bad ? 1 : 0;
