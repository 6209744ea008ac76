// Metrics as JSONL (one object per optimizer step) and the progress line on stderr.

import fs from 'node:fs';
import path from 'node:path';
import { writeFileAtomic } from '../util/fs.js';

export interface StepMetrics {
  /** optimizer steps completed (1-based) */
  step: number;
  /** mean loss of the step's micro-batches (NaN when non-finite) */
  loss: number;
  lr: number;
  /** global gradient norm before clipping (NaN when not computed) */
  grad_norm: number;
  /** tokens consumed so far, this step included */
  tokens: number;
  /** this step's throughput */
  tokens_per_s: number;
  /** wall time since the run began (resumed runs include the earlier sessions) */
  elapsed_s: number;
  /** true when the step was skipped for a non-finite loss or gradient */
  skipped?: boolean;
  /** anything an evaluation hook reported at this step */
  [key: string]: number | boolean | string | undefined;
}

/** Appends one JSON line per step; on resume, drops the lines after the resumed step. */
export class MetricsLog {
  private fd: number;

  constructor(
    readonly file: string,
    resumeStep: number | null,
  ) {
    fs.mkdirSync(path.dirname(file), { recursive: true });
    if (resumeStep !== null && fs.existsSync(file)) {
      const kept = fs
        .readFileSync(file, 'utf8')
        .split('\n')
        .filter((line) => {
          if (!line.trim()) return false;
          try {
            return (JSON.parse(line) as { step: number }).step <= resumeStep;
          } catch {
            return false; // a line cut short by a kill
          }
        });
      writeFileAtomic(file, kept.map((l) => l + '\n').join(''));
      this.fd = fs.openSync(file, 'a');
    } else {
      this.fd = fs.openSync(file, 'w');
    }
  }

  write(m: StepMetrics): void {
    fs.writeSync(this.fd, JSON.stringify(m) + '\n');
  }

  close(): void {
    fs.closeSync(this.fd);
  }
}

/**
 * Read a metrics file back (tests, reports). Lines are appended one per step, so a kill can cut
 * the last one short: it is skipped; a damaged line elsewhere is an error naming the file and line.
 */
export function readMetrics(file: string): StepMetrics[] {
  const lines = fs.readFileSync(file, 'utf8').split('\n');
  const out: StepMetrics[] = [];
  lines.forEach((l, i) => {
    if (!l.trim()) return;
    try {
      out.push(JSON.parse(l) as StepMetrics);
    } catch (e) {
      const last = lines.slice(i + 1).every((x) => !x.trim());
      if (!last) throw new Error(`${file}:${i + 1}: not valid JSON (${(e as Error).message})`, { cause: e });
    }
  });
  return out;
}

export interface ProgressOptions {
  /** default process.stderr */
  stream?: NodeJS.WritableStream & { isTTY?: boolean };
  /** printed before the figures, e.g. "stage 1" */
  label?: string;
  /** seconds between plain lines when the stream is not a terminal (default 10) */
  intervalSec?: number;
}

function fmtDuration(sec: number): string {
  if (!Number.isFinite(sec)) return '?';
  const s = Math.round(sec);
  if (s < 60) return `${s}s`;
  if (s < 3600) return `${Math.floor(s / 60)}m${String(s % 60).padStart(2, '0')}s`;
  return `${Math.floor(s / 3600)}h${String(Math.floor((s % 3600) / 60)).padStart(2, '0')}m`;
}

export function fmtCount(n: number): string {
  if (n >= 1e9) return `${(n / 1e9).toFixed(2)}B`;
  if (n >= 1e6) return `${(n / 1e6).toFixed(2)}M`;
  if (n >= 1e3) return `${(n / 1e3).toFixed(1)}k`;
  return String(Math.round(n));
}

/**
 * One status line: rewritten in place on a terminal, plain lines every intervalSec otherwise.
 * Throughput is averaged over this session; ETA = remaining tokens / that throughput.
 */
export class Progress {
  private readonly stream: NodeJS.WritableStream & { isTTY?: boolean };
  private readonly tty: boolean;
  private lastPrint = 0;
  private sessionTokens = 0;
  private sessionSec = 0;
  private dirty = false;

  constructor(
    readonly totalSteps: number,
    readonly totalTokens: number,
    readonly opts: ProgressOptions = {},
  ) {
    this.stream = opts.stream ?? process.stderr;
    this.tty = !!this.stream.isTTY;
  }

  update(m: StepMetrics, stepTokens: number, stepSec: number, skipped: number): void {
    this.sessionTokens += stepTokens;
    this.sessionSec += stepSec;
    const rate = this.sessionTokens / Math.max(this.sessionSec, 1e-9);
    const eta = (this.totalTokens - m.tokens) / rate;
    const pct = ((100 * m.step) / this.totalSteps).toFixed(1);
    const parts = [
      this.opts.label ? `${this.opts.label}:` : '',
      `step ${m.step}/${this.totalSteps} (${pct}%)`,
      `loss ${Number.isFinite(m.loss) ? m.loss.toFixed(4) : 'non-finite'}`,
      `lr ${m.lr.toExponential(2)}`,
      `${fmtCount(rate)} tok/s`,
      `ETA ${fmtDuration(eta)}`,
      skipped ? `skipped ${skipped}` : '',
    ].filter(Boolean);
    const line = parts.join('  ');
    const now = performance.now();
    const last = m.step === this.totalSteps;
    if (this.tty) {
      if (now - this.lastPrint >= 100 || last) {
        this.stream.write(`\r\x1b[K${line}`);
        this.lastPrint = now;
        this.dirty = true;
      }
    } else if (now - this.lastPrint >= (this.opts.intervalSec ?? 10) * 1000 || last || this.lastPrint === 0) {
      this.stream.write(line + '\n');
      this.lastPrint = now;
    }
  }

  /** Print a message on its own line (keeps the status line intact on a terminal). */
  note(msg: string): void {
    if (this.tty && this.dirty) this.stream.write('\r\x1b[K');
    this.stream.write(msg + '\n');
    this.dirty = false;
  }

  done(): void {
    if (this.tty && this.dirty) this.stream.write('\n');
    this.dirty = false;
  }
}
