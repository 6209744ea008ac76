// Run logs as tables and pictures: a distill run directory (OUT/stageN-*/metrics.jsonl, each
// stage's done.json, OUT/results.json) or any training directory with a metrics.jsonl becomes
// metrics.csv files (one beside every metrics.jsonl, one for the whole run) and report.html: the
// loss per stage, learning rate, gradient norm and tokens/s over the run's tokens, and the
// validation perplexity and KL to the teacher after each stage. The pipeline rewrites them as the
// run goes; `mohawk plot` draws them for any run.

import fs from 'node:fs';
import path from 'node:path';
import type { StepMetrics } from '../train/metrics.js';
import { lineChart, PALETTE, stackCharts, type Series } from '../util/svg-plot.js';

export interface RunPart {
  /** the directory's name: stage1-matrix, stage3-kd, scratch, or the run itself */
  name: string;
  dir: string;
  metrics: StepMetrics[];
  /** done.json of a finished stage (valPpl, valKl, ...) */
  done: {
    valPpl?: number;
    valKl?: number;
    tokens?: number;
    loss?: number;
    steps?: number;
    seconds?: number;
  } | null;
  /** tokens of the run before this part (stages follow each other; a baseline starts at 0) */
  offset: number;
}

export interface RunLog {
  dir: string;
  parts: RunPart[];
  /** results.json of a finished distill run */
  results: { teacherPpl?: number; initialPpl?: number; initialKl?: number } | null;
}

function readJsonl(file: string): StepMetrics[] {
  if (!fs.existsSync(file)) return [];
  const out: StepMetrics[] = [];
  for (const line of fs.readFileSync(file, 'utf8').split('\n')) {
    if (!line.trim()) continue;
    try {
      out.push(JSON.parse(line) as StepMetrics);
    } catch {
      // a line being written right now, or cut by a kill
    }
  }
  return out;
}

function readJson<T>(file: string): T | null {
  try {
    return JSON.parse(fs.readFileSync(file, 'utf8')) as T;
  } catch {
    return null;
  }
}

/** stageN-* in stage order, then anything else with metrics (a from-scratch baseline). */
function partOrder(a: string, b: string): number {
  const na = /^stage(\d+)/.exec(a);
  const nb = /^stage(\d+)/.exec(b);
  if (na && nb) return Number(na[1]) - Number(nb[1]);
  if (na) return -1;
  if (nb) return 1;
  return a.localeCompare(b);
}

/** Read a run directory: its own metrics.jsonl, or its subdirectories' (the stages). */
export function readRun(dir: string): RunLog {
  if (!fs.existsSync(dir) || !fs.statSync(dir).isDirectory()) throw new Error(`${dir}: not a directory`);
  const names = fs.existsSync(path.join(dir, 'metrics.jsonl'))
    ? ['.']
    : fs
        .readdirSync(dir)
        .filter((n) => fs.existsSync(path.join(dir, n, 'metrics.jsonl')))
        .sort(partOrder);
  if (names.length === 0) throw new Error(`${dir}: no metrics.jsonl here or in its subdirectories`);
  let offset = 0;
  const parts = names.map((n): RunPart => {
    const d = path.join(dir, n);
    const metrics = readJsonl(path.join(d, 'metrics.jsonl'));
    const stage = /^stage\d+/.test(n);
    const part: RunPart = {
      name: n === '.' ? path.basename(path.resolve(dir)) : n,
      dir: d,
      metrics,
      done: readJson(path.join(d, 'done.json')),
      offset: stage ? offset : 0,
    };
    if (stage) offset += part.done?.tokens ?? metrics.at(-1)?.tokens ?? 0;
    return part;
  });
  return { dir, parts, results: readJson(path.join(dir, 'results.json')) };
}

const BASE_COLUMNS = ['step', 'tokens', 'loss', 'lr', 'grad_norm', 'tokens_per_s', 'elapsed_s', 'skipped'];

function csvCell(v: unknown): string {
  if (v === undefined || v === null) return '';
  const s = String(v);
  return /[",\n]/.test(s) ? `"${s.replace(/"/g, '""')}"` : s;
}

/** Metrics as CSV: `lead` columns, the base columns, then every other key seen, in order. */
export function metricsCsv(rows: Record<string, unknown>[], lead: string[] = []): string {
  const cols = [...lead, ...BASE_COLUMNS];
  for (const r of rows) for (const k of Object.keys(r)) if (!cols.includes(k)) cols.push(k);
  return [cols.join(','), ...rows.map((r) => cols.map((c) => csvCell(r[c])).join(','))].join('\n') + '\n';
}

/** The charts of a run (SVG strings). */
export function runCharts(run: RunLog): { title: string; svg: string }[] {
  const charts: { title: string; svg: string }[] = [];
  const color = (i: number) => PALETTE[i % PALETTE.length];
  const stages = run.parts.filter((p) => p.offset > 0 || /^stage\d+/.test(p.name) || run.parts.length === 1);
  const markers =
    stages.length > 1
      ? stages.map((p) => ({ x: p.offset, label: p.name.replace(/^stage(\d+)-.*/, 'stage $1') }))
      : [];
  const global = (p: RunPart, key: string): [number, number][] =>
    p.metrics.map((m) => [p.offset + m.tokens, Number(m[key] ?? NaN)]);
  const series = (key: string): Series[] =>
    run.parts.map((p, i) => ({
      name: p.name,
      points: global(p, key),
      color: color(i),
      dashed: !stages.includes(p),
    }));
  // the loss per part: each stage's loss has its own scale (Frobenius, L2, KL)
  run.parts.forEach((p, i) => {
    const pts: [number, number][] = p.metrics.map((m) => [m.tokens, m.loss]);
    charts.push({
      title: `loss: ${p.name}`,
      svg: lineChart({
        title: `loss: ${p.name}`,
        xLabel: 'tokens (this stage)',
        yLabel: 'loss',
        series: [{ name: '', points: pts, color: color(i) }],
        logY: true,
      }),
    });
  });
  const overRun = (key: string, title: string, logY = false) =>
    charts.push({
      title,
      svg: lineChart({ title, xLabel: 'tokens (run)', yLabel: key, series: series(key), logY, markers }),
    });
  overRun('lr', 'learning rate');
  overRun('grad_norm', 'gradient norm (before clipping)', true);
  overRun('tokens_per_s', 'throughput (tokens/s)');
  // validation after each stage (and after weight transfer, from results.json)
  const val = (key: 'valPpl' | 'valKl', initial?: number): [number, number][] => {
    const pts: [number, number][] = initial !== undefined ? [[0, initial]] : [];
    for (const p of stages)
      if (p.done?.[key] !== undefined) pts.push([p.offset + (p.done.tokens ?? 0), p.done[key]]);
    return pts;
  };
  const ppl = val('valPpl', run.results?.initialPpl);
  if (ppl.length) {
    const s: Series[] = [{ name: 'student', points: ppl, dots: true, color: color(0) }];
    const t = run.results?.teacherPpl;
    const end = Math.max(...ppl.map(([x]) => x), 1);
    if (t !== undefined)
      s.push({
        name: 'teacher',
        points: [
          [0, t],
          [end, t],
        ],
        dashed: true,
        color: '#555',
      });
    charts.push({
      title: 'validation perplexity',
      svg: lineChart({
        title: 'validation perplexity after each stage',
        xLabel: 'tokens (run)',
        yLabel: 'perplexity',
        series: s,
        logY: true,
        markers,
      }),
    });
  }
  const kl = val('valKl', run.results?.initialKl);
  if (kl.length)
    charts.push({
      title: 'validation KL',
      svg: lineChart({
        title: 'validation KL(teacher || student) after each stage',
        xLabel: 'tokens (run)',
        yLabel: 'nats/token',
        series: [{ name: 'student', points: kl, dots: true, color: color(1) }],
        logY: true,
        markers,
      }),
    });
  return charts;
}

function fmt(v: number | undefined, digits = 4): string {
  return v === undefined || !Number.isFinite(v) ? '' : v.toPrecision(digits);
}

/** The run as one self-contained HTML page (inline SVG, no scripts). */
export function reportHtml(run: RunLog): string {
  const finished = run.results !== null;
  const rows = run.parts.map((p) => {
    const last = p.metrics.at(-1);
    return `<tr><td>${p.name}</td><td>${last?.step ?? 0}</td><td>${last?.tokens ?? 0}</td><td>${fmt(last?.loss)}</td><td>${fmt(
      p.done?.valPpl,
    )}</td><td>${fmt(p.done?.valKl)}</td><td>${last ? Math.round(last.elapsed_s) : ''}</td><td>${p.done ? 'done' : 'running'}</td></tr>`;
  });
  const r = run.results;
  const title = `mohawk run ${path.basename(path.resolve(run.dir))}`;
  return `<!doctype html>
<html><head><meta charset="utf-8"><title>${title}</title>
${finished ? '' : '<meta http-equiv="refresh" content="30">'}
<style>body{font-family:sans-serif;margin:24px;color:#222}table{border-collapse:collapse;margin:12px 0}td,th{border:1px solid #ccc;padding:3px 8px;text-align:right}td:first-child,th:first-child{text-align:left}.charts{display:flex;flex-wrap:wrap;gap:8px}</style>
</head><body>
<h1>${title}</h1>
<p>${path.resolve(run.dir)} &middot; written ${new Date().toISOString()}${finished ? ' &middot; finished' : ' &middot; in progress (this page reloads every 30 s)'}</p>
${
  r
    ? `<p>teacher validation perplexity ${fmt(r.teacherPpl)}; student after weight transfer ${fmt(r.initialPpl)} (KL ${fmt(r.initialKl)})</p>`
    : ''
}
<table><tr><th>part</th><th>steps</th><th>tokens</th><th>last loss</th><th>val ppl</th><th>val KL</th><th>seconds</th><th></th></tr>
${rows.join('\n')}
</table>
<div class="charts">
${runCharts(run)
  .map((c) => c.svg)
  .join('\n')}
</div>
</body></html>
`;
}

function writeAtomic(file: string, text: string): void {
  const tmp = `${file}.tmp-${process.pid}`;
  fs.writeFileSync(tmp, text);
  fs.renameSync(tmp, file);
}

/**
 * Write metrics.csv beside every metrics.jsonl of the run, the run's metrics.csv (all parts, with
 * the part and the run's token count) and the report (HTML, or one SVG when `out` ends in .svg).
 * Returns the report's path.
 */
export function writeRunReport(dir: string, out = path.join(dir, 'report.html')): string {
  const run = readRun(dir);
  for (const p of run.parts)
    if (p.dir !== dir) writeAtomic(path.join(p.dir, 'metrics.csv'), metricsCsv(p.metrics));
  const all = run.parts.flatMap((p) =>
    p.metrics.map((m) => ({ ...m, part: p.name, run_tokens: p.offset + m.tokens })),
  );
  writeAtomic(path.join(dir, 'metrics.csv'), metricsCsv(all, ['part', 'run_tokens']));
  fs.mkdirSync(path.dirname(path.resolve(out)), { recursive: true });
  if (out.endsWith('.svg')) writeAtomic(out, stackCharts(runCharts(run).map((c) => c.svg)));
  else writeAtomic(out, reportHtml(run));
  return out;
}

/**
 * Keeps a run's report current while it trains: `tick()` after each step rewrites it when
 * `intervalSec` have passed, `flush()` rewrites it now. A failure to write is reported once and
 * never stops the run.
 */
export class RunReporter {
  private last = -Infinity;
  private warned = false;

  constructor(
    readonly dir: string,
    readonly intervalSec = 30,
    readonly log: (line: string) => void = () => {},
  ) {}

  tick(): void {
    if (performance.now() - this.last >= this.intervalSec * 1000) this.flush();
  }

  flush(): void {
    this.last = performance.now();
    try {
      writeRunReport(this.dir);
    } catch (e) {
      if (!this.warned)
        this.log(`report: cannot write ${path.join(this.dir, 'report.html')}: ${(e as Error).message}`);
      this.warned = true;
    }
  }
}
