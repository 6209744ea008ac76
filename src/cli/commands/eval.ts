// mohawk eval: zero-shot tasks with lm-evaluation-harness semantics.

import fs from 'node:fs';
import path from 'node:path';
import { loadModel } from '../../models/load.js';
import { evalMaxLength } from '../../eval/loglikelihood.js';
import {
  evaluateTask,
  harnessJson,
  isTaskName,
  loadTask,
  PAPER_METRICS,
  paperAverage,
  TASK_NAMES,
  type NormLength,
  type TaskName,
  type TaskResult,
} from '../../eval/tasks.js';
import { CliError, flag, num, parse, required, runHelp, runOptions, selectDevice, str } from '../args.js';
import { progressLine } from '../progress.js';
import { runNeedle, needleHelp, needleOptions } from './needle.js';

const HELP = `usage: mohawk eval --model DIR [--tasks LIST] [options]

Zero-shot evaluation as lm-evaluation-harness scores it: the log-likelihood of each choice given
the prompt (trailing spaces of the context move into the continuation; left truncation to the
model's length), acc, acc_norm (log-likelihood / length of the choice in bytes), LAMBADA's greedy
acc and perplexity, with standard errors.

  --model DIR          a model directory (config.json, model.safetensors, tokenizer.json)
  --tasks LIST         comma-separated, default all: ${TASK_NAMES.join(',')};
                       or needle (synthetic passkey retrieval, below)
  --data-dir DIR       the task JSONL files (default ../shared/data/eval when it exists)
  --limit N            only the first N examples of each task
  --batch-size B       requests per forward (default 16)
  --no-bos             do not prepend BOS even if the tokenizer adds it
  --max-length N       truncate inputs from the left to N tokens (default: the model's length)
  --acc-norm-length U  bytes (default) or chars (Python len, as lm-eval 0.4 divides by)
  --log-samples PATH   write one JSON line per example {task, index, loglikelihoods, pred, gold}
  --json               print the results as JSON (harness-shaped)
${needleHelp}
${runHelp(23)}`;

function fmt(v: number | null, digits = 4): string {
  return v === null || !Number.isFinite(v) ? 'N/A' : v.toFixed(digits);
}

export function resultsTable(results: TaskResult[]): string {
  const rows: string[][] = [['Task', 'n', 'Metric', 'Value', '', 'Stderr']];
  for (const r of results)
    for (const m of r.metrics) {
      const digits = m.metric === 'perplexity' ? 2 : 4;
      rows.push([r.task, String(r.n), m.metric, fmt(m.value, digits), '±', fmt(m.stderr, digits)]);
    }
  const avg = paperAverage(results);
  if (avg !== null) rows.push(['average (paper)', '', 'see below', fmt(avg), '', '']);
  const widths = rows[0].map((_, c) => Math.max(...rows.map((r) => r[c].length)));
  const line = (r: string[]) =>
    '|' +
    r.map((x, c) => ` ${c === 3 || c === 5 ? x.padStart(widths[c]) : x.padEnd(widths[c])} `).join('|') +
    '|';
  const out = [
    line(rows[0]),
    '|' + widths.map((w) => '-'.repeat(w + 2)).join('|') + '|',
    ...rows.slice(1).map(line),
  ];
  if (avg !== null)
    out.push('', `average (paper) = mean of ${TASK_NAMES.map((t) => `${t} ${PAPER_METRICS[t]}`).join(', ')}`);
  return out.join('\n');
}

export function defaultDataDir(given: string | undefined): string {
  if (given !== undefined) {
    if (!fs.existsSync(given)) throw new CliError(`--data-dir: ${given} does not exist`);
    return given;
  }
  const d = path.resolve('../shared/data/eval');
  if (!fs.existsSync(d))
    throw new CliError(`--data-dir: not given, and the default ${d} (../shared/data/eval) does not exist`);
  return d;
}

export async function run(argv: string[]): Promise<number> {
  const p = parse(
    argv,
    {
      model: { type: 'string' },
      tasks: { type: 'string' },
      'data-dir': { type: 'string' },
      limit: { type: 'string' },
      'batch-size': { type: 'string' },
      'no-bos': { type: 'boolean' },
      'max-length': { type: 'string' },
      'acc-norm-length': { type: 'string' },
      'log-samples': { type: 'string' },
      json: { type: 'boolean' },
      ...needleOptions,
      ...runOptions,
    },
    HELP,
  );
  if (!p) return 0;
  const dir = required(p, 'model', HELP);
  const tasks = (str(p, 'tasks') ?? TASK_NAMES.join(','))
    .split(',')
    .map((s) => s.trim())
    .filter((s) => s !== '');
  if (tasks.includes('needle')) {
    if (tasks.length > 1) throw new CliError('--tasks: run needle on its own (--tasks needle)');
    return runNeedle(p, dir);
  }
  for (const t of tasks)
    if (!isTaskName(t)) throw new CliError(`--tasks: unknown task "${t}" (known: ${TASK_NAMES.join(', ')})`);
  if (tasks.length === 0) throw new CliError('--tasks: no task given');
  const dataDir = defaultDataDir(str(p, 'data-dir'));
  const limit = str(p, 'limit') === undefined ? undefined : num(p, 'limit', 0, { integer: true, min: 1 });
  const batchSize = num(p, 'batch-size', 16, { integer: true, min: 1 });
  const normBy = (str(p, 'acc-norm-length') ?? 'bytes') as NormLength;
  if (normBy !== 'bytes' && normBy !== 'chars')
    throw new CliError(`--acc-norm-length expects bytes or chars, got "${normBy}"`);
  // read every task file first so that a malformed line fails before any scoring
  const docs = (tasks as TaskName[]).map((t) => ({ task: t, docs: loadTask(t, dataDir, limit) }));
  await selectDevice(p);
  const { model, tokenizer } = loadModel(dir);
  if (!tokenizer) throw new CliError(`--model: ${dir} has no tokenizer.json (eval needs text)`);
  const maxLength =
    str(p, 'max-length') === undefined
      ? evalMaxLength(model)
      : num(p, 'max-length', 0, { integer: true, min: 1, max: model.info.maxSeqLen });
  const addBos = flag(p, 'no-bos') ? false : undefined;
  const results: TaskResult[] = [];
  const logPath = str(p, 'log-samples');
  const log = logPath === undefined ? null : fs.openSync(logPath, 'w');
  try {
    for (const { task, docs: d } of docs) {
      const t0 = Date.now();
      const r = evaluateTask(model, tokenizer, task, d, {
        batchSize,
        addBos,
        maxLength,
        normBy,
        onProgress: (done, total, tokens) => progressLine(task, done, total, tokens, t0, 'requests'),
      });
      progressLine(task, 1, 1, 0, t0, 'requests', true);
      if (r.truncatedContinuations)
        process.stderr.write(
          `${task}: warning: ${r.truncatedContinuations} continuation(s) longer than ${maxLength} tokens; only their last ${maxLength} tokens were scored\n`,
        );
      results.push(r);
      if (log !== null) for (const s of r.samples) fs.writeSync(log, JSON.stringify(s) + '\n');
    }
  } finally {
    if (log !== null) fs.closeSync(log);
  }
  if (flag(p, 'json')) {
    const rows = results.flatMap((r) => r.metrics);
    console.log(
      JSON.stringify(
        {
          ...harnessJson(results),
          rows,
          average: paperAverage(results),
          config: {
            model: dir,
            tasks,
            limit: limit ?? null,
            batch_size: batchSize,
            add_bos: addBos ?? tokenizer.addBos,
            max_length: maxLength,
            acc_norm_length: normBy,
          },
        },
        null,
        2,
      ),
    );
  } else console.log(resultsTable(results));
  return 0;
}
