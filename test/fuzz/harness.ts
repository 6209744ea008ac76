// The fuzz harness: seeded cases over the six input kinds, run in a worker thread (in-process)
// under a watchdog: a case that runs past `timeoutMs` is a hang, one that runs the worker out of
// its `memoryMb` heap is a crash; either way the worker is replaced and the run goes on. Outcomes
// are counted per kind and class, with the first few examples of every class but success.

import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { Worker } from 'node:worker_threads';
import { KINDS, type Kind, type Outcome, type OutcomeClass } from './cases.js';

export const CLASSES: OutcomeClass[] = ['clean-error', 'success', 'quiet-wrong', 'crash', 'hang'];

export interface FuzzOptions {
  cases: number;
  seed?: number;
  kinds?: readonly Kind[];
  /** per case (default 5000 ms) */
  timeoutMs?: number;
  /** the worker's heap limit (default 1024 MB) */
  memoryMb?: number;
  /** examples kept per kind and bad class (default 5) */
  examples?: number;
  onProgress?: (done: number, total: number) => void;
}

export interface FuzzReport {
  seed: number;
  cases: number;
  seconds: number;
  counts: Record<Kind, Record<OutcomeClass, number>>;
  totals: Record<OutcomeClass, number>;
  examples: Record<Kind, Partial<Record<OutcomeClass, string[]>>>;
}

export async function runFuzz(o: FuzzOptions): Promise<FuzzReport> {
  const seed = o.seed ?? 1;
  const kinds = o.kinds ?? KINDS;
  const timeoutMs = o.timeoutMs ?? 5000;
  const memoryMb = o.memoryMb ?? 1024;
  const keep = o.examples ?? 5;
  const work = fs.mkdtempSync(path.join(os.tmpdir(), 'mohawk-fuzz-'));
  const counts = Object.fromEntries(
    kinds.map((k) => [k, Object.fromEntries(CLASSES.map((c) => [c, 0]))]),
  ) as FuzzReport['counts'];
  const examples = Object.fromEntries(kinds.map((k) => [k, {}])) as FuzzReport['examples'];
  const t0 = performance.now();

  let worker: Worker | null = null;
  const start = (): Promise<Worker> =>
    new Promise((resolve, reject) => {
      // the worker is TypeScript: register tsx's loader in it, then import it
      const boot =
        `import(${JSON.stringify(import.meta.resolve('tsx/esm/api'))})` +
        `.then((m) => { m.register(); return import(${JSON.stringify(new URL('./worker.ts', import.meta.url).href)}); })`;
      const w = new Worker(boot, {
        eval: true,
        workerData: { work },
        resourceLimits: { maxOldGenerationSizeMb: memoryMb },
        stdout: true,
        stderr: true,
      });
      w.once('message', () => resolve(w));
      w.once('error', reject);
    });
  const record = (kind: Kind, out: Outcome): void => {
    counts[kind][out.cls]++;
    if (out.cls === 'success') return;
    const list = (examples[kind][out.cls] ??= []);
    if (list.length < keep) list.push(out.detail);
  };
  const one = (w: Worker, kind: Kind, index: number): Promise<Outcome | 'hang' | Error> =>
    new Promise((resolve) => {
      const timer = setTimeout(() => finish('hang'), timeoutMs);
      const onMessage = (m: { outcome: Outcome }) => finish(m.outcome);
      const onError = (e: Error) => finish(e);
      const onExit = (code: number) => finish(new Error(`worker exited with code ${code}`));
      function finish(v: Outcome | 'hang' | Error): void {
        clearTimeout(timer);
        w.off('message', onMessage);
        w.off('error', onError);
        w.off('exit', onExit);
        resolve(v);
      }
      w.on('message', onMessage);
      w.on('error', onError);
      w.on('exit', onExit);
      w.postMessage({ kind, seed, index });
    });

  try {
    for (let i = 0; i < o.cases; i++) {
      const kind = kinds[i % kinds.length];
      const index = Math.floor(i / kinds.length);
      worker ??= await start();
      const v = await one(worker, kind, index);
      if (v === 'hang') {
        record(kind, { cls: 'hang', detail: `case ${index}: no answer within ${timeoutMs} ms` });
        await worker.terminate();
        worker = null;
      } else if (v instanceof Error) {
        const oom = /ERR_WORKER_OUT_OF_MEMORY|out of memory/i.test(
          `${(v as NodeJS.ErrnoException).code} ${v.message}`,
        );
        record(kind, {
          cls: 'crash',
          detail: `case ${index}: ${oom ? `out of memory (${memoryMb} MB heap)` : v.message}`,
        });
        await worker.terminate();
        worker = null;
      } else record(kind, v);
      o.onProgress?.(i + 1, o.cases);
    }
  } finally {
    await worker?.terminate();
    fs.rmSync(work, { recursive: true, force: true });
  }
  const totals = Object.fromEntries(
    CLASSES.map((c) => [c, kinds.reduce((a, k) => a + counts[k][c], 0)]),
  ) as FuzzReport['totals'];
  return { seed, cases: o.cases, seconds: (performance.now() - t0) / 1000, counts, totals, examples };
}

/** The counts as a table: one row per kind, one column per class. */
export function fuzzTable(r: FuzzReport): string {
  const kinds = Object.keys(r.counts) as Kind[];
  const w = Math.max(...kinds.map((k) => k.length), 5);
  const head = ['kind'.padEnd(w), ...CLASSES.map((c) => c.padStart(11))].join('  ');
  const rows = kinds.map((k) =>
    [k.padEnd(w), ...CLASSES.map((c) => String(r.counts[k][c]).padStart(11))].join('  '),
  );
  const total = ['total'.padEnd(w), ...CLASSES.map((c) => String(r.totals[c]).padStart(11))].join('  ');
  return [head, '-'.repeat(head.length), ...rows, '-'.repeat(head.length), total].join('\n');
}
