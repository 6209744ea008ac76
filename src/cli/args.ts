// Flag parsing shared by the commands: node's util.parseArgs with typed helpers and errors
// that name the flag.

import { parseArgs, type ParseArgsConfig } from 'node:util';
import type { Backend } from '../backends/backend.js';
import { deviceHint, useDevice } from '../tensor/device.js';
import { setAutocast } from '../tensor/ops.js';

export class CliError extends Error {}

export type Options = NonNullable<ParseArgsConfig['options']>;

export interface Parsed {
  values: Record<string, string | boolean | (string | boolean)[] | undefined>;
  positionals: string[];
}

/** Parse argv; `--help` prints the help text and returns null. */
export function parse(
  argv: string[],
  options: Options,
  help: string,
  allowPositionals = false,
): Parsed | null {
  let parsed: Parsed;
  try {
    parsed = parseArgs({
      args: argv,
      options: { ...options, help: { type: 'boolean', short: 'h' } },
      allowPositionals,
      strict: true,
    }) as Parsed;
  } catch (e) {
    throw new CliError(`${(e as Error).message}\n\n${help}`);
  }
  if (parsed.values.help) {
    console.log(help);
    return null;
  }
  return parsed;
}

export function str(p: Parsed, name: string): string | undefined {
  const v = p.values[name];
  return typeof v === 'string' ? v : undefined;
}

export function required(p: Parsed, name: string, help: string): string {
  const v = str(p, name);
  if (v === undefined) throw new CliError(`--${name} is required\n\n${help}`);
  return v;
}

export function num(
  p: Parsed,
  name: string,
  fallback: number,
  opts: { integer?: boolean; min?: number; max?: number } = {},
): number {
  const v = str(p, name);
  if (v === undefined) return fallback;
  const n = Number(v);
  if (!Number.isFinite(n) || (opts.integer && !Number.isInteger(n))) {
    throw new CliError(`--${name} expects ${opts.integer ? 'an integer' : 'a number'}, got "${v}"`);
  }
  if (opts.min !== undefined && n < opts.min)
    throw new CliError(`--${name} must be at least ${opts.min}, got ${n}`);
  if (opts.max !== undefined && n > opts.max)
    throw new CliError(`--${name} must be at most ${opts.max}, got ${n}`);
  return n;
}

export function flag(p: Parsed, name: string): boolean {
  return p.values[name] === true;
}

export function list(p: Parsed, name: string): string[] {
  const v = p.values[name];
  if (v === undefined) return [];
  return (Array.isArray(v) ? v : [v]).filter((x): x is string => typeof x === 'string');
}

/** The --device option of every command: cpu (the default, or $MOHAWK_DEVICE) or cuda. */
export const deviceOption: Options = { device: { type: 'string' } };

/** --device and --precision: the options of every command that runs a model (selectDevice reads them). */
export const runOptions: Options = { device: { type: 'string' }, precision: { type: 'string' } };

/** The help lines of --device and --precision, their text starting at `column`. */
export function runHelp(column: number): string {
  const flag = (name: string) => `  ${name.padEnd(column - 2)}`;
  return (
    `${flag('--device D')}cpu (default) or cuda\n` +
    `${flag('--precision P')}f32 (default) or bf16 (bf16 products with f32 accumulation, for GPUs)`
  );
}

/**
 * Select the backend named by --device (else $MOHAWK_DEVICE, else cpu); CUDA errors name what is
 * missing. With --precision bf16 (else $MOHAWK_PRECISION) products run under bf16 autocast.
 */
export async function selectDevice(p: Parsed): Promise<Backend> {
  const name = str(p, 'device') ?? process.env.MOHAWK_DEVICE ?? 'cpu';
  if (name !== 'cpu' && name !== 'cuda') throw new CliError(`--device expects cpu or cuda, got "${name}"`);
  const precision = str(p, 'precision') ?? process.env.MOHAWK_PRECISION ?? 'f32';
  if (precision !== 'f32' && precision !== 'bf16')
    throw new CliError(`--precision expects f32 or bf16, got "${precision}"`);
  const backend = await useDevice(name);
  const hint = deviceHint(backend);
  if (hint) console.error(hint);
  setAutocast(precision === 'bf16' ? 'bf16' : null);
  return backend;
}
