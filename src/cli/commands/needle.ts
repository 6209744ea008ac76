// mohawk eval --tasks needle: passkey retrieval at growing context lengths and several depths.

import fs from 'node:fs';
import path from 'node:path';
import { evaluateNeedle, needleLengths } from '../../eval/needle.js';
import { loadModel } from '../../models/load.js';
import { heatmap } from '../../util/svg-plot.js';
import { CliError, flag, num, selectDevice, str, type Options, type Parsed } from '../args.js';
import { progressLine } from '../progress.js';

export const needleOptions: Options = {
  'max-context': { type: 'string' },
  'needle-depths': { type: 'string' },
  'needle-trials': { type: 'string' },
  plot: { type: 'string' },
};

export const needleHelp = `
needle (--tasks needle): a 5-digit pass key hidden in filler text at each depth, asked for at the
end, answered by greedy decoding; context lengths 1024, 2048, ... up to --max-context tokens.
Also the key gain: the key's NLL without the needle minus with it (what the model retrieved).
  --max-context N      the longest context (default 4096); lengths past the model's are n/a
  --needle-depths LIST depths as fractions of the filler (default 0,0.25,0.5,0.75,1)
  --needle-trials N    keys per length and depth (default 4)
  --plot FILE.svg      a picture: accuracy per length and depth`;

export async function runNeedle(p: Parsed, dir: string): Promise<number> {
  const maxContext = num(p, 'max-context', 4096, { integer: true, min: 256 });
  const depths = (str(p, 'needle-depths') ?? '0,0.25,0.5,0.75,1').split(',').map((x) => Number(x.trim()));
  if (depths.some((d) => !(d >= 0 && d <= 1)))
    throw new CliError(`--needle-depths: fractions in [0, 1], got "${str(p, 'needle-depths')}"`);
  const trials = num(p, 'needle-trials', 4, { integer: true, min: 1 });
  const plot = str(p, 'plot');
  if (plot !== undefined && !plot.endsWith('.svg')) throw new CliError(`--plot: an .svg file, got "${plot}"`);
  await selectDevice(p);
  const { model, tokenizer } = loadModel(dir);
  if (!tokenizer) throw new CliError(`--model: ${dir} has no tokenizer.json (needle needs text)`);
  const lengths = needleLengths(maxContext, Math.min(1024, maxContext));
  const t0 = Date.now();
  const r = evaluateNeedle(model, tokenizer, {
    lengths,
    depths,
    trials,
    onTrial: (done, total) => progressLine('needle', done, total, 0, t0, 'trials'),
  });
  progressLine('needle', 1, 1, 0, t0, 'trials', true);
  const cell = (l: number, d: number) =>
    r.cells.find((c) => c.length === l && c.depth === d)?.accuracy ?? null;
  if (plot)
    fs.writeFileSync(
      plot,
      heatmap({
        title: `passkey retrieval: ${path.basename(path.resolve(dir))}`,
        rows: lengths.map(String),
        cols: depths.map((d) => `${Math.round(d * 100)}%`),
        values: lengths.map((l) => depths.map((d) => cell(l, d))),
        rowLabel: 'context (tokens)',
        colLabel: 'depth of the key',
      }),
    );
  if (flag(p, 'json')) {
    console.log(
      JSON.stringify(
        {
          task: 'needle',
          model: dir,
          lengths,
          depths,
          trials,
          by_length: r.byLength,
          cells: r.cells,
          skipped: r.skipped,
          samples: r.samples,
        },
        null,
        2,
      ),
    );
    return 0;
  }
  const head = ['context', ...depths.map((d) => `${Math.round(d * 100)}%`), 'all', 'key gain'];
  const rows = lengths.map((l) => [
    String(l),
    ...depths.map((d) => {
      const v = cell(l, d);
      return v === null ? 'n/a' : v.toFixed(2);
    }),
    (() => {
      const v = r.byLength.find((b) => b.length === l)?.accuracy ?? null;
      return v === null ? 'n/a' : v.toFixed(2);
    })(),
    (() => {
      const v = r.byLength.find((b) => b.length === l)?.gain ?? null;
      return v === null ? 'n/a' : v.toFixed(3);
    })(),
  ]);
  const widths = head.map((_, c) => Math.max(...[head, ...rows].map((x) => x[c].length)));
  for (const row of [head, ...rows]) console.log(row.map((x, c) => x.padStart(widths[c])).join('  '));
  console.log(
    `accuracy of ${trials} key(s) per cell (greedy answer starts with the key); key gain: NLL of the key ` +
      'without the needle minus with it, nats per key token (> 0: the model used the needle)',
  );
  if (r.skipped.length)
    console.log(
      `n/a: longer than the model's context (${model.info.maxSeqLen} tokens): ${r.skipped.join(', ')}`,
    );
  if (plot) console.log(`picture: ${plot}`);
  return 0;
}
