// Training checkpoints, each a directory committed atomically:
//
//   DIR/step-00000100/model.safetensors      the parameters under their checkpoint names
//   DIR/step-00000100/optimizer.safetensors  NAME.exp_avg, NAME.exp_avg_sq (+ step counts in metadata)
//   DIR/step-00000100/state.json             step, tokens, data position, RNG state, schedule ...
//   DIR/latest.json                          {"step": 100, "dir": "step-00000100"}
//
// A checkpoint is written into a temporary directory and renamed into place, then latest.json is
// replaced (temp file + rename). A crash at any point leaves latest.json naming a complete
// checkpoint; readers only follow latest.json.

import fs from 'node:fs';
import path from 'node:path';
import {
  entryToTensor,
  readCheckpoint,
  readEntryInto,
  readSafetensors,
  writeSafetensors,
} from '../io/safetensors.js';
import { fsyncDir, fsyncFile, writeFileAtomic } from '../util/fs.js';
import type { Tensor } from '../tensor/index.js';
import { firstNonFinite, type NamedParams } from './params.js';
import type { AdamW } from './optimizer.js';

export const LATEST_FILE = 'latest.json';
export const MODEL_FILE = 'model.safetensors';
export const OPTIMIZER_FILE = 'optimizer.safetensors';
export const STATE_FILE = 'state.json';

const TMP_RE = /^step-\d+\.tmp-\d+$/;

export function stepDirName(step: number): string {
  return `step-${String(step).padStart(8, '0')}`;
}

export interface Latest {
  step: number;
  dir: string;
}

/** Where a damaged or missing latest.json is reported (one line); tests replace it. */
export type Warn = (line: string) => void;

const defaultWarn: Warn = (line) => console.error(line);

/**
 * The checkpoint latest.json points at, or null when there is none. When latest.json is damaged
 * (cut short, not JSON, naming a missing directory) or missing beside complete step directories,
 * falls back to the newest complete step directory with a one-line warning.
 */
export function readLatest(dir: string, warn: Warn = defaultWarn): (Latest & { path: string }) | null {
  const file = path.join(dir, LATEST_FILE);
  let problem: string | null = null;
  if (fs.existsSync(file)) {
    try {
      return parseLatest(dir, file);
    } catch (e) {
      problem = (e as Error).message;
    }
  }
  const found = newestComplete(dir);
  if (!found) {
    if (problem) throw new Error(`${problem}; no complete checkpoint in ${dir} to fall back to`);
    return null;
  }
  warn(
    `warning: ${problem ?? `${file}: missing`}; resuming from the newest complete checkpoint ${found.path}`,
  );
  return found;
}

function parseLatest(dir: string, file: string): Latest & { path: string } {
  let latest: Latest;
  try {
    latest = JSON.parse(fs.readFileSync(file, 'utf8'));
  } catch (e) {
    throw new Error(`${file}: not valid JSON (${(e as Error).message})`, { cause: e });
  }
  if (
    !latest ||
    !Number.isInteger(latest.step) ||
    typeof latest.dir !== 'string' ||
    !/^step-\d+$/.test(latest.dir)
  )
    throw new Error(`${file}: expected {"step": N, "dir": "step-..."}`);
  const p = path.join(dir, latest.dir);
  if (!isCompleteCheckpoint(p)) throw new Error(`${file}: checkpoint ${p} is missing or incomplete`);
  return { ...latest, path: p };
}

/** A committed step directory: its state.json parses and names its step, its weights are there. */
export function isCompleteCheckpoint(p: string): boolean {
  try {
    const state = JSON.parse(fs.readFileSync(path.join(p, STATE_FILE), 'utf8')) as { step?: unknown };
    return Number.isInteger(state.step) && fs.statSync(path.join(p, MODEL_FILE)).size > 8;
  } catch {
    return false;
  }
}

function newestComplete(dir: string): (Latest & { path: string }) | null {
  let names: string[];
  try {
    names = fs.readdirSync(dir);
  } catch {
    return null;
  }
  const steps = names.filter((n) => /^step-\d+$/.test(n)).sort();
  for (let i = steps.length - 1; i >= 0; i--) {
    const p = path.join(dir, steps[i]);
    if (isCompleteCheckpoint(p)) return { step: Number(steps[i].slice(5)), dir: steps[i], path: p };
  }
  return null;
}

export function readState<S>(checkpoint: string): S {
  const file = path.join(checkpoint, STATE_FILE);
  try {
    return JSON.parse(fs.readFileSync(file, 'utf8')) as S;
  } catch (e) {
    throw new Error(`${file}: cannot read (${(e as Error).message})`, { cause: e });
  }
}

export interface WriteCheckpointOptions {
  params: NamedParams;
  optimizer?: AdamW;
  step: number;
  state: object;
  /** called with the temporary directory before it is committed (e.g. to add config.json) */
  beforeCommit?: (tmpDir: string) => void;
  /** keep this many most recent step directories (default 2; 0 keeps all) */
  keep?: number;
}

/** Write a checkpoint atomically; returns its directory. */
export function writeCheckpoint(dir: string, o: WriteCheckpointOptions): string {
  const bad = firstNonFinite(o.params);
  if (bad)
    throw new Error(`${dir}: refusing to write the checkpoint of step ${o.step}: ${bad} is not finite`);
  fs.mkdirSync(dir, { recursive: true });
  const name = stepDirName(o.step);
  const final = path.join(dir, name);
  const tmp = `${final}.tmp-${process.pid}`;
  fs.rmSync(tmp, { recursive: true, force: true });
  fs.mkdirSync(tmp);
  try {
    writeSafetensors(path.join(tmp, MODEL_FILE), new Map(o.params), { format: 'pt' });
    if (o.optimizer) {
      const { tensors, steps } = o.optimizer.stateDict();
      writeSafetensors(path.join(tmp, OPTIMIZER_FILE), tensors, {
        format: 'pt',
        steps: JSON.stringify(steps),
      });
    }
    fs.writeFileSync(path.join(tmp, STATE_FILE), JSON.stringify(o.state, null, 2) + '\n');
    o.beforeCommit?.(tmp);
    // the directory is renamed into place only once every file in it is on the disk
    for (const n of fs.readdirSync(tmp)) fsyncFile(path.join(tmp, n));
    fsyncDir(tmp);
  } catch (e) {
    fs.rmSync(tmp, { recursive: true, force: true });
    throw e;
  }
  const latest = readLatestQuiet(dir);
  if (fs.existsSync(final)) {
    // left by a run that crashed before updating latest.json (same step, same contents when resumed exactly)
    if (latest?.dir === name) throw new Error(`${final}: refusing to replace the latest checkpoint`);
    fs.rmSync(final, { recursive: true, force: true });
  }
  fs.renameSync(tmp, final);
  fsyncDir(dir);
  writeFileAtomic(path.join(dir, LATEST_FILE), JSON.stringify({ step: o.step, dir: name }) + '\n');
  prune(dir, name, o.keep ?? 2);
  return final;
}

function readLatestQuiet(dir: string): Latest | null {
  try {
    return readLatest(dir, () => {});
  } catch {
    return null;
  }
}

/** Remove older step directories beyond `keep`, and temporaries of crashed writers. */
function prune(dir: string, current: string, keep: number): void {
  const names = fs.readdirSync(dir);
  for (const n of names) {
    if (TMP_RE.test(n) && !n.endsWith(`.tmp-${process.pid}`))
      fs.rmSync(path.join(dir, n), { recursive: true, force: true });
  }
  if (keep <= 0) return;
  const steps = names.filter((n) => /^step-\d+$/.test(n) && n <= current).sort();
  for (const n of steps.slice(0, Math.max(0, steps.length - keep)))
    fs.rmSync(path.join(dir, n), { recursive: true, force: true });
}

/** Copy a checkpoint's weights into params (every trained name must be present) and the optimizer state. */
export function loadCheckpoint(checkpoint: string, params: NamedParams, optimizer?: AdamW): void {
  const modelFile = path.join(checkpoint, MODEL_FILE);
  // streamed tensor by tensor into the parameters: no second copy of the model
  const weights = readCheckpoint(modelFile).entries;
  for (const [name, p] of params) {
    const src = weights.get(name);
    if (!src) throw new Error(`${modelFile}: missing tensor ${name}`);
    if (src.shape.length !== p.shape.length || src.shape.some((d, i) => d !== p.shape[i]))
      throw new Error(`${modelFile}: tensor ${name} has shape [${src.shape}], expected [${p.shape}]`);
    readEntryInto(src, p);
  }
  if (!optimizer) return;
  const optFile = path.join(checkpoint, OPTIMIZER_FILE);
  const sf = readSafetensors(optFile);
  let steps: Record<string, number>;
  try {
    steps = JSON.parse(sf.metadata.steps ?? '');
  } catch {
    throw new Error(`${optFile}: metadata "steps" missing or not JSON`);
  }
  const stateTensors = new Map([...sf.entries].map(([n, e]) => [n, entryToTensor(e, 'f32')]));
  try {
    optimizer.loadStateDict(stateTensors, steps, optFile);
  } finally {
    disposeAll(stateTensors);
  }
}

function disposeAll(m: Map<string, Tensor>): void {
  for (const t of m.values()) t.dispose();
}
