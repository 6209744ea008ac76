// mohawk distill: run the MOHAWK stages from a config file.

import path from 'node:path';
import { expandParquetInputs } from '../../data/parquet.js';
import { loadConfig } from '../../distill/config.js';
import { resultsTable, runDistill } from '../../distill/pipeline.js';
import { useDevice } from '../../tensor/device.js';
import { CliError, flag, list, parse, str } from '../args.js';

const HELP = `usage: mohawk distill --config FILE [--out DIR] [--resume] [--set path=value ...] [--device D] [--precision P] [--json]

Distill a Transformer teacher into a Mamba-2 student with the MOHAWK stages the config lists:
1 matrix orientation, 2 hidden-state alignment, 3 weight transfer + knowledge distillation.
Each stage checkpoints into OUT/stageN-*; the student lands in OUT/student, results in
OUT/results.json. See configs/ for examples and docs/distill.md for every field.

  --config FILE      YAML or JSON config
  --out DIR          overrides the config's out
  --resume           continue a killed run from its checkpoints (finished stages are skipped)
  --set path=value   override any config field, e.g. --set stages.2.tokens=2e6 (repeatable)
  --device D         cpu or cuda (overrides the config's device)
  --precision P      f32 or bf16 (overrides the config's precision; bf16 is the fast path on GPUs)
  --json             print the results as JSON`;

export async function run(argv: string[]): Promise<number> {
  const p = parse(
    argv,
    {
      config: { type: 'string' },
      out: { type: 'string' },
      resume: { type: 'boolean' },
      set: { type: 'string', multiple: true },
      device: { type: 'string' },
      precision: { type: 'string' },
      json: { type: 'boolean' },
    },
    HELP,
  );
  if (!p) return 0;
  const file = str(p, 'config');
  if (!file) throw new CliError(`--config is required\n\n${HELP}`);
  const overrides = list(p, 'set');
  const out = str(p, 'out');
  if (out) overrides.push(`out=${JSON.stringify(path.resolve(out))}`);
  const device = str(p, 'device');
  if (device) overrides.push(`device=${device}`);
  const precision = str(p, 'precision');
  if (precision) overrides.push(`precision=${precision}`);
  const cfg = loadConfig(file, overrides);
  await useDevice(cfg.device);
  // Parquet inputs become JSONL first (hyparquet reads asynchronously)
  const sources = path.join(cfg.out, 'data-sources');
  const log = (l: string) => console.error(l);
  cfg.data.train = await expandParquetInputs(cfg.data.train, sources, { text: cfg.data.jsonlField }, log);
  cfg.data.val = await expandParquetInputs(cfg.data.val, sources, { text: cfg.data.jsonlField }, log);
  const r = runDistill(cfg, { progress: !flag(p, 'json') }, flag(p, 'resume'));
  if (flag(p, 'json')) {
    console.log(JSON.stringify(r));
    return 0;
  }
  console.log(resultsTable(r));
  console.log(`\nstudent: ${r.studentDir}`);
  return 0;
}
