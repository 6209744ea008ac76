// mohawk plot: a run's metrics as CSV and a report (HTML with inline SVG charts, or one SVG).

import path from 'node:path';
import { readRun, writeRunReport } from '../../distill/report.js';
import { CliError, flag, parse, str } from '../args.js';

const HELP = `usage: mohawk plot RUN_DIR [--out FILE] [--json]

Draw a run: a distill output directory (its stage directories' metrics.jsonl, done.json and
results.json) or any directory with a metrics.jsonl. Writes metrics.csv beside every
metrics.jsonl, RUN_DIR/metrics.csv for the whole run, and the report: the loss per stage, the
learning rate, gradient norm and tokens/s over the run's tokens, the validation perplexity and
KL to the teacher after each stage. distill keeps RUN_DIR/report.html current as it runs.

  --out FILE   the report (default RUN_DIR/report.html); a name ending in .svg writes the
               charts as one SVG image
  --json       print {"report", "csv", "parts": [{"name", "steps", "tokens"}]}`;

export async function run(argv: string[]): Promise<number> {
  const p = parse(argv, { out: { type: 'string' }, json: { type: 'boolean' } }, HELP, true);
  if (!p) return 0;
  const dir = p.positionals[0];
  if (!dir || p.positionals.length > 1) throw new CliError(`give one run directory\n\n${HELP}`);
  const out = str(p, 'out') ?? path.join(dir, 'report.html');
  if (!/\.(html?|svg)$/i.test(out)) throw new CliError(`--out must end in .html or .svg, got "${out}"`);
  const report = writeRunReport(dir, out);
  const parts = readRun(dir).parts.map((x) => ({
    name: x.name,
    steps: x.metrics.at(-1)?.step ?? 0,
    tokens: x.metrics.at(-1)?.tokens ?? 0,
  }));
  const csv = path.join(dir, 'metrics.csv');
  if (flag(p, 'json')) console.log(JSON.stringify({ report, csv, parts }));
  else {
    for (const x of parts)
      console.log(
        `${x.name.padEnd(20)} ${String(x.steps).padStart(7)} steps ${String(x.tokens).padStart(12)} tokens`,
      );
    console.log(`report: ${report}\ncsv:    ${csv}`);
  }
  return 0;
}
