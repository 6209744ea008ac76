// mohawk distill: run the MOHAWK stages from a config file.

import path from 'node:path';
import { checkConfig, checkTable } from '../../distill/check.js';
import { expandParquetInputs } from '../../data/parquet.js';
import { loadConfig } from '../../distill/config.js';
import { resultsTable, runDistill } from '../../distill/pipeline.js';
import { useDevice } from '../../tensor/device.js';
import { readDistEnv } from '../../backends/group.js';
import { openCollective } from '../../train/distributed.js';
import { CliError, flag, list, num, parse, str } from '../args.js';
import { launchWorkers } from '../launch.js';

const HELP = `usage: mohawk distill --config FILE [--out DIR] [--resume] [--set path=value ...] [--device D] [--precision P] [--check] [--json]
                       [--gpus N | --nproc N] [--zero] [--zero-stage 1|2]

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
  --json             print the results (or the --check resolution) as JSON
  --gpus N           data parallel over N local GPUs: one worker process per GPU, supervised
  --nproc N          data parallel over N local worker processes (with --device cpu: CPU processes)
  --zero             shard the AdamW moments across the ranks (ZeRO-1)
  --zero-stage S     1 (as --zero) or 2: the gradients sharded too, reduce-scattered during every
                     micro-batch's backward (ZeRO-2; implies --zero)
Under torchrun-style launchers or srun, each process reads RANK, WORLD_SIZE, LOCAL_RANK,
MASTER_ADDR, MASTER_PORT (or SLURM_PROCID, SLURM_NTASKS, SLURM_LOCALID); see docs/distributed.md.`;

/** argv without the launcher's own flags (`--gpus N`, `--nproc=N` ...) */
function workerArgv(argv: string[]): string[] {
  const out: string[] = [];
  for (let i = 0; i < argv.length; i++) {
    if (argv[i] === '--gpus' || argv[i] === '--nproc') i++;
    else if (!argv[i].startsWith('--gpus=') && !argv[i].startsWith('--nproc=')) out.push(argv[i]);
  }
  return out;
}

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
      gpus: { type: 'string' },
      nproc: { type: 'string' },
      zero: { type: 'boolean' },
      'zero-stage': { type: 'string' },
    },
    HELP,
  );
  if (!p) return 0;
  const file = str(p, 'config');
  if (!file) throw new CliError(`--config is required\n\n${HELP}`);
  const gpus = str(p, 'gpus') !== undefined ? num(p, 'gpus', 1, { integer: true, min: 1 }) : undefined;
  const nproc = str(p, 'nproc') !== undefined ? num(p, 'nproc', 1, { integer: true, min: 1 }) : undefined;
  if (gpus !== undefined && nproc !== undefined) throw new CliError('give --gpus or --nproc, not both');
  if (gpus !== undefined || nproc !== undefined) {
    const args = ['distill', ...workerArgv(argv)];
    if (gpus !== undefined) args.push('--device', 'cuda');
    return launchWorkers({ nproc: (gpus ?? nproc)!, argv: args });
  }
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
  const env = readDistEnv();
  if (env && env.worldSize > 1 && cfg.device === 'cuda' && process.env.MOHAWK_CUDA_DEVICE === undefined) {
    // one GPU per process: the local rank's, or the only one a launcher left visible
    const visible = process.env.CUDA_VISIBLE_DEVICES?.split(',').filter((d) => d.trim() !== '');
    process.env.MOHAWK_CUDA_DEVICE = String(visible?.length === 1 ? 0 : env.localRank);
  }
  const backend = await useDevice(cfg.device);
  // Parquet inputs become JSONL first (hyparquet reads asynchronously)
  const sources = path.join(cfg.out, 'data-sources');
  const log = (l: string) => console.error(l);
  cfg.data.train = await expandParquetInputs(cfg.data.train, sources, { text: cfg.data.jsonlField }, log);
  cfg.data.val = await expandParquetInputs(cfg.data.val, sources, { text: cfg.data.jsonlField }, log);
  const stage = str(p, 'zero-stage') !== undefined ? num(p, 'zero-stage', 1, { integer: true, min: 1 }) : 0;
  if (stage > 2) throw new CliError(`--zero-stage (${stage}) must be 1 or 2`);
  const zero = stage === 2 ? 2 : stage === 1 || flag(p, 'zero');
  // a job of one rank opens its collective only for --zero (it then runs the sharded path, e.g. on NCCL)
  const collective = env && (env.worldSize > 1 || zero) ? await openCollective(env, backend) : null;
  const r = runDistill(
    cfg,
    {
      progress: !flag(p, 'json'),
      dataParallel: collective ? { collective, zero } : undefined,
    },
    flag(p, 'resume'),
  );
  // leave the group only after success: a rank that fails goes without a goodbye, so the
  // others see it as lost and stop instead of waiting for it
  collective?.close();
  if (collective && collective.rank !== 0) return 0;
  if (flag(p, 'json')) {
    console.log(JSON.stringify(r));
    return 0;
  }
  console.log(resultsTable(r));
  console.log(`\nstudent: ${r.studentDir}`);
  return 0;
}
