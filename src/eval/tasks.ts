// The zero-shot tasks of the paper on the preprocessed JSONL files (../shared/README.md), with
// lm-evaluation-harness prompts and metrics: acc everywhere, acc_norm for HellaSwag, PIQA and ARC,
// LAMBADA's greedy acc and perplexity; standard errors as the harness computes them.

import fs from 'node:fs';
import path from 'node:path';
import type { CausalLM } from '../models/types.js';
import {
  encodeRequest,
  evalMaxLength,
  rowFor,
  scoreRows,
  type EvalTokenizer,
  type Request,
  type RowScore,
} from './loglikelihood.js';

export const TASK_NAMES = [
  'lambada_openai',
  'hellaswag',
  'piqa',
  'arc_easy',
  'arc_challenge',
  'winogrande',
] as const;
export type TaskName = (typeof TASK_NAMES)[number];

/** One example: its requests (one per choice; one for LAMBADA) and the answer. */
export interface Doc {
  requests: Request[];
  /** index of the right choice (multiple choice); for LAMBADA the continuation text */
  gold: number | string;
  /** texts whose lengths normalize acc_norm (the choices without the leading space) */
  normTexts?: string[];
}

type Json = Record<string, unknown>;

function where(file: string, line: number): string {
  return `${file}:${line}`;
}

function fieldString(o: Json, key: string, at: string): string {
  const v = o[key];
  if (typeof v !== 'string')
    throw new Error(`${at}: field "${key}" must be a string, got ${JSON.stringify(v)}`);
  return v;
}

function fieldStrings(o: Json, key: string, at: string, count?: number): string[] {
  const v = o[key];
  if (!Array.isArray(v) || v.length < 2 || v.some((s) => typeof s !== 'string'))
    throw new Error(`${at}: field "${key}" must be an array of at least two strings`);
  if (count !== undefined && v.length !== count)
    throw new Error(`${at}: field "${key}" must hold ${count} strings, got ${v.length}`);
  return v as string[];
}

function fieldGold(o: Json, at: string, n: number): number {
  const v = o.gold;
  if (typeof v !== 'number' || !Number.isInteger(v) || v < 0 || v >= n)
    throw new Error(`${at}: field "gold" must be an integer in [0, ${n}), got ${JSON.stringify(v)}`);
  return v;
}

function multipleChoice(context: string, choices: string[], gold: number): Doc {
  return {
    requests: choices.map((c) => ({ context, continuation: ' ' + c })),
    gold,
    normTexts: choices,
  };
}

/** JSON object -> Doc for each task; `at` = "file:line" for errors. */
const PARSERS: Record<TaskName, (o: Json, at: string) => Doc> = {
  lambada_openai(o, at) {
    const continuation = fieldString(o, 'continuation', at);
    return {
      requests: [{ context: fieldString(o, 'context', at), continuation: ' ' + continuation }],
      gold: continuation,
    };
  },
  hellaswag(o, at) {
    const choices = fieldStrings(o, 'choices', at);
    return multipleChoice(fieldString(o, 'query', at), choices, fieldGold(o, at, choices.length));
  },
  piqa(o, at) {
    // the file's query is "Question: {goal}\n"; the harness prompt is "Question: {goal}\nAnswer:"
    const choices = fieldStrings(o, 'choices', at);
    return multipleChoice(fieldString(o, 'query', at) + 'Answer:', choices, fieldGold(o, at, choices.length));
  },
  arc_easy: arc,
  arc_challenge: arc,
  winogrande(o, at) {
    // partial scoring: each option completes the context; only the shared continuation is scored
    const options = fieldStrings(o, 'context_options', at, 2);
    const continuation = ' ' + fieldString(o, 'continuation', at);
    return {
      requests: options.map((context) => ({ context, continuation })),
      gold: fieldGold(o, at, options.length),
    };
  },
};

function arc(o: Json, at: string): Doc {
  const choices = fieldStrings(o, 'choices', at);
  return multipleChoice(fieldString(o, 'query', at) + '\nAnswer:', choices, fieldGold(o, at, choices.length));
}

export function isTaskName(name: string): name is TaskName {
  return (TASK_NAMES as readonly string[]).includes(name);
}

/** Parse a task's JSONL text; errors name the file and the line. Blank lines are skipped. */
export function parseTask(task: TaskName, text: string, file: string, limit?: number): Doc[] {
  const docs: Doc[] = [];
  const lines = text.split('\n');
  for (let i = 0; i < lines.length; i++) {
    if (limit !== undefined && docs.length >= limit) break;
    const line = lines[i].trim();
    if (line === '') continue;
    const at = where(file, i + 1);
    let o: unknown;
    try {
      o = JSON.parse(line);
    } catch (e) {
      throw new Error(`${at}: not valid JSON (${(e as Error).message})`, { cause: e });
    }
    if (!o || typeof o !== 'object' || Array.isArray(o)) throw new Error(`${at}: expected a JSON object`);
    docs.push(PARSERS[task](o as Json, at));
  }
  return docs;
}

/** Read <dataDir>/<task>.jsonl. */
export function loadTask(task: TaskName, dataDir: string, limit?: number): Doc[] {
  const file = path.join(dataDir, `${task}.jsonl`);
  let text: string;
  try {
    text = fs.readFileSync(file, 'utf8');
  } catch {
    throw new Error(`${file}: cannot read the ${task} data`);
  }
  return parseTask(task, text, file, limit);
}

// ---- metrics ----------------------------------------------------------------------------------

export interface Metric {
  task: string;
  metric: string;
  value: number;
  /** null where undefined (a single example) */
  stderr: number | null;
}

/** Sample standard error of the mean (ddof = 1), as the harness's mean_stderr. */
export function meanStderr(xs: ArrayLike<number>): number | null {
  const n = xs.length;
  if (n < 2) return null;
  let m = 0;
  for (let i = 0; i < n; i++) m += xs[i];
  m /= n;
  let v = 0;
  for (let i = 0; i < n; i++) v += (xs[i] - m) ** 2;
  return Math.sqrt(v / (n - 1) / n);
}

function mean(xs: ArrayLike<number>): number {
  let s = 0;
  for (let i = 0; i < xs.length; i++) s += xs[i];
  return s / xs.length;
}

/** numpy's argmax: the first index of the largest value */
export function argmax(xs: ArrayLike<number>): number {
  let best = 0;
  for (let i = 1; i < xs.length; i++) if (xs[i] > xs[best]) best = i;
  return best;
}

export type NormLength = 'bytes' | 'chars';

/** the length acc_norm divides by: UTF-8 bytes (default) or Unicode code points (Python's len) */
export function normLength(text: string, by: NormLength = 'bytes'): number {
  return by === 'bytes' ? Buffer.byteLength(text, 'utf8') : [...text].length;
}

/** One example's outcome, as written by --log-samples. */
export interface Sample {
  task: string;
  index: number;
  loglikelihoods: number[];
  pred: number | string | null;
  gold: number | string;
  greedy_match?: boolean;
}

export interface TaskResult {
  task: TaskName;
  n: number;
  /** requests whose continuation exceeded the model's length (only its last tokens scored) */
  truncatedContinuations?: number;
  metrics: Metric[];
  samples: Sample[];
}

/** Metrics of a task from the scores of its requests (in the docs' order). */
export function taskMetrics(
  task: TaskName,
  docs: Doc[],
  scores: RowScore[][],
  opts: { normBy?: NormLength; decode?: (ids: number[]) => string } = {},
): TaskResult {
  const n = docs.length;
  const samples: Sample[] = [];
  if (task === 'lambada_openai') {
    const acc = new Float64Array(n);
    const ll = new Float64Array(n);
    docs.forEach((d, i) => {
      const s = scores[i][0];
      acc[i] = s.greedyMatch ? 1 : 0;
      ll[i] = s.loglikelihood;
      samples.push({
        task,
        index: i,
        loglikelihoods: [s.loglikelihood],
        pred: s.argmax && opts.decode ? opts.decode(Array.from(s.argmax)) : null,
        gold: d.gold,
        greedy_match: s.greedyMatch ?? false,
      });
    });
    // perplexity = exp(-mean log-likelihood) over examples (the harness's aggregation); its
    // standard error by the delta method, ppl * stderr(mean log-likelihood)
    const ppl = Math.exp(-mean(ll));
    const se = meanStderr(ll);
    return {
      task,
      n,
      metrics: [
        { task, metric: 'perplexity', value: ppl, stderr: se === null ? null : ppl * se },
        { task, metric: 'acc', value: mean(acc), stderr: meanStderr(acc) },
      ],
      samples,
    };
  }
  const acc = new Float64Array(n);
  const accNorm = new Float64Array(n);
  const hasNorm = docs.some((d) => d.normTexts);
  docs.forEach((d, i) => {
    const lls = scores[i].map((s) => s.loglikelihood);
    const pred = argmax(lls);
    acc[i] = pred === d.gold ? 1 : 0;
    if (d.normTexts) {
      const normed = lls.map((l, c) => l / normLength(d.normTexts![c], opts.normBy));
      accNorm[i] = argmax(normed) === d.gold ? 1 : 0;
    }
    samples.push({ task, index: i, loglikelihoods: lls, pred, gold: d.gold });
  });
  const metrics: Metric[] = [{ task, metric: 'acc', value: mean(acc), stderr: meanStderr(acc) }];
  if (hasNorm) metrics.push({ task, metric: 'acc_norm', value: mean(accNorm), stderr: meanStderr(accNorm) });
  return { task, n, metrics, samples };
}

// ---- running a task ---------------------------------------------------------------------------

export interface EvalOptions {
  batchSize?: number;
  /** prepend BOS (default: the tokenizer's setting) */
  addBos?: boolean;
  /** the model's context for left truncation (default: its maximum length, 2048 for pure SSMs) */
  maxLength?: number;
  normBy?: NormLength;
  onProgress?: (requestsDone: number, requestsTotal: number, tokensDone: number) => void;
}

/** Score every request of a task's docs and compute its metrics. */
export function evaluateTask(
  model: CausalLM,
  tok: EvalTokenizer,
  task: TaskName,
  docs: Doc[],
  opts: EvalOptions = {},
): TaskResult {
  const maxLength = opts.maxLength ?? evalMaxLength(model);
  const rows = docs.flatMap((d) =>
    d.requests.map((r) => {
      const e = encodeRequest(tok, r, { addBos: opts.addBos });
      return rowFor(e.context, e.continuation, maxLength);
    }),
  );
  const truncated = rows.filter((r) => r.truncated).length;
  const total = rows.length;
  const flat = scoreRows(model, rows, {
    batchSize: opts.batchSize,
    greedy: task === 'lambada_openai',
    onProgress: (done, tokens) => opts.onProgress?.(done, total, tokens),
  });
  const scores: RowScore[][] = [];
  let k = 0;
  for (const d of docs) {
    scores.push(flat.slice(k, k + d.requests.length));
    k += d.requests.length;
  }
  const decode = tok.decode?.bind(tok);
  const result = taskMetrics(task, docs, scores, { normBy: opts.normBy, decode });
  if (truncated > 0) result.truncatedContinuations = truncated;
  return result;
}

/**
 * The paper's average over the six tasks: LAMBADA acc, HellaSwag acc_norm, PIQA acc, ARC-E acc,
 * ARC-C acc_norm, WinoGrande acc (null unless all six are present).
 */
export const PAPER_METRICS: Record<TaskName, string> = {
  lambada_openai: 'acc',
  hellaswag: 'acc_norm',
  piqa: 'acc',
  arc_easy: 'acc',
  arc_challenge: 'acc_norm',
  winogrande: 'acc',
};

export function paperAverage(results: TaskResult[]): number | null {
  const vals: number[] = [];
  for (const t of TASK_NAMES) {
    const r = results.find((x) => x.task === t);
    const m = r?.metrics.find((x) => x.metric === PAPER_METRICS[t]);
    if (!m) return null;
    vals.push(m.value);
  }
  return mean(vals);
}

/** The harness's results JSON: { results: { task: { "acc,none": v, "acc_stderr,none": s } } }. */
export function harnessJson(results: TaskResult[]): {
  results: Record<string, Record<string, string | number | null>>;
  'n-samples': Record<string, { effective: number; truncated_continuations?: number }>;
} {
  const out: Record<string, Record<string, string | number | null>> = {};
  const ns: Record<string, { effective: number; truncated_continuations?: number }> = {};
  for (const r of results) {
    const o: Record<string, string | number | null> = { alias: r.task };
    for (const m of r.metrics) {
      o[`${m.metric},none`] = m.value;
      o[`${m.metric}_stderr,none`] = m.stderr;
    }
    out[r.task] = o;
    ns[r.task] = { effective: r.n };
    if (r.truncatedContinuations) ns[r.task].truncated_continuations = r.truncatedContinuations;
  }
  return { results: out, 'n-samples': ns };
}
