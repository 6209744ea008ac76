// mohawk distill: run the MOHAWK stages from a config file.

import path from 'node:path';
import { checkConfig, checkTable } from '../../distill/check.js';
import { loadConfig } from '../../distill/config.js';
import { resultsTable, runDistill } from '../../distill/pipeline.js';
import { useDevice } from '../../tensor/device.js';
import { CliError, flag, list, parse, str } from '../args.js';

const HELP = `usage: mohawk distill --config FILE [--out DIR] [--resume] [--set path=value ...] [--device D] [--precision P] [--check] [--json]

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
  --check            validate the config and print it fully resolved (defaults filled in, paths
                     absolute, per stage: tokens, steps, batch, schedule, trainable parameters)
                     from the config files alone, without loading weights or data; then exit
  --json             print the results (or the --check resolution) as JSON`;

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
      check: { type: 'boolean' },
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
  if (flag(p, 'check')) {
    const c = checkConfig(cfg);
    console.log(flag(p, 'json') ? JSON.stringify(c, null, 2) : checkTable(c));
    return 0;
  }
  await useDevice(cfg.device);
  const r = runDistill(cfg, { progress: !flag(p, 'json') }, flag(p, 'resume'));
  if (flag(p, 'json')) {
    console.log(JSON.stringify(r));
    return 0;
  }
  console.log(resultsTable(r));
  console.log(`\nstudent: ${r.studentDir}`);
  return 0;
}
