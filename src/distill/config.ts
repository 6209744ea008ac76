// The distillation config: one YAML or JSON file, validated up front with errors that name the
// field, overridable from the command line with `--set path.to.field=value`.

import fs from 'node:fs';
import path from 'node:path';
import YAML from 'yaml';
import { compilePattern } from '../train/params.js';

export type StageKind = 1 | 2 | 3;

export interface StageConfig {
  /** 1 matrix orientation, 2 hidden-state alignment, 3 weight transfer + knowledge distillation */
  stage: StageKind;
  /** training budget in tokens (sequences x positions seen by the teacher) */
  tokens: number;
  /** tokens per optimizer step (gradient accumulation fills it with micro-batches) */
  batchTokens: number;
  /** sequences per forward pass */
  microBatch: number;
  /** positions per sequence */
  seqLen: number;
  lr: number;
  /** final learning rate as a fraction of lr */
  minLrRatio: number;
  schedule: 'wsd' | 'cosine' | 'constant';
  /** warmup as a fraction of the stage's steps */
  warmup: number;
  /** for wsd: the fraction of steps spent decaying at the end */
  decay: number;
  weightDecay: number;
  beta1: number;
  beta2: number;
  /** global gradient-norm clip (0 = off) */
  clip: number;
  /**
   * stage 2: align the mixer outputs (true, the MLP is not run) or the whole block outputs
   * (false: the teacher's MLP runs in the student's block and stays frozen, as in the reference)
   */
  mlpFrozen: boolean;
  /** stage 2 with mlpFrozen false: also train the MLPs of the SSM layers (not the reference's recipe) */
  trainMlp: boolean;
  /** stage 3: KL temperature */
  temperature: number;
  /** stage 3: weight of cross-entropy on the data */
  ceWeight: number;
  /** parameter-name patterns kept frozen in this stage: globs over dotted names or /regex/ */
  freeze: string[];
  /** checkpoint every N optimizer steps (0 = only at the end) */
  checkpointEvery: number;
}

export interface StudentConfig {
  /** layer indices that keep the teacher's attention (a hybrid) */
  attentionLayers: number[];
  /** SSM state size; default the teacher's head size */
  dState: number | null;
  chunkSize: number;
  /** initial per-token decay alpha = sigmoid(-a) of the SSM */
  alphaInit: number;
  /**
   * The mixer before stage 1 (the teacher's embeddings, norms, MLPs and head are copied either
   * way; stages 1-2 train only the mixer, so copying them up front equals the paper's transfer
   * at stage 3). 'paper': the reference's fresh mixer, conv as identity; 'attention': derived
   * from the teacher's Q/K/V/O (C <- Q, B <- K, x <- V, out_proj <- O). Old names: 'transfer' =
   * 'attention', 'random' = 'paper'.
   */
  init: 'paper' | 'attention';
  /**
   * the student's mixer class: 'ssd' (discrete Mamba-2, default), or the paper's ablations
   * 'toeplitz' (long convolution) and 'linear-attention' (causal low rank); these two start from
   * their own fresh init whatever `init` says
   */
  mixer: 'ssd' | 'toeplitz' | 'linear-attention';
  /** taps of the Toeplitz mixer's kernels; default the longest stage seqLen */
  kernelLength: number | null;
}

export interface DataConfig {
  /** a prepared token directory (mohawk data prepare), or text/JSONL files to tokenize */
  train: string[];
  /** held-out data: a prepared directory or files; default the prepared split of `train` */
  val: string[];
  /** tokens of held-out data scored after each stage */
  valTokens: number;
  /** JSONL field holding the text */
  jsonlField: string;
  /**
   * chat data (JSONL/Parquet with `messages`): the losses count only the assistant's tokens
   * (stage 3's KL and cross-entropy; stages 1-2 align on every position)
   */
  maskPrompt: boolean;
}

export interface DistillConfig {
  teacher: string;
  out: string;
  seed: number;
  device: 'cpu' | 'cuda';
  /**
   * 'bf16': matmul operands (and the SSD and attention products) in bf16 with f32 accumulation,
   * everything else f32 (autocast); 'f32': all f32
   */
  precision: 'f32' | 'bf16';
  student: StudentConfig;
  data: DataConfig;
  stages: StageConfig[];
  /** also train a same-size student from scratch on the same token budget, for comparison */
  scratchBaseline: boolean;
  /** the trainer's settings shared by every stage */
  train: TrainSettings;
}

export interface TrainSettings {
  /**
   * the training step captured as CUDA graphs and replayed (src/train/step.ts): 'auto' on the
   * CUDA backend when the stage's loss is graph-safe (every stage and the scratch baseline; masked
   * chat data and data-parallel runs stay eager), 'on' also on the CPU, 'off' never
   */
  cudaGraph: 'auto' | 'on' | 'off';
}

export const STAGE_DEFAULTS: Omit<StageConfig, 'stage' | 'tokens'> = {
  batchTokens: 8192,
  microBatch: 8,
  seqLen: 256,
  lr: 1e-3,
  minLrRatio: 0.1,
  schedule: 'wsd',
  warmup: 0.05,
  decay: 0.2,
  weightDecay: 0.0,
  beta1: 0.9,
  beta2: 0.95,
  clip: 1.0,
  mlpFrozen: true,
  trainMlp: false,
  temperature: 1,
  ceWeight: 0,
  freeze: [],
  checkpointEvery: 0,
};

/**
 * Upper bounds that keep a typo from exhausting memory or running for ever; far above any real
 * run (the paper's largest stage is 2.76e9 tokens in steps of 0.5M).
 */
export const LIMITS = {
  /** tokens of one stage */
  tokens: 1e15,
  /** tokens per optimizer step */
  batchTokens: 2 ** 32,
  microBatch: 65536,
  seqLen: 1 << 20,
  /** microBatch x seqLen: the positions of one forward pass */
  microTokens: 1 << 24,
  /** the SSM state size and the scan's chunk length */
  dState: 4096,
  chunkSize: 65536,
  valTokens: 1e12,
} as const;

export class ConfigError extends Error {}

const INIT_ALIASES = {
  paper: 'paper',
  attention: 'attention',
  transfer: 'attention',
  random: 'paper',
} as const;

type Json = Record<string, unknown>;

function err(file: string, field: string, msg: string): never {
  throw new ConfigError(`${file}: ${field} ${msg}`);
}

function num(
  file: string,
  obj: Json,
  key: string,
  field: string,
  fallback: number | undefined,
  opts: { min?: number; max?: number; integer?: boolean; exclusiveMin?: boolean } = {},
): number {
  const v = obj[key];
  if (v === undefined || v === null) {
    if (fallback === undefined) err(file, field, 'is required');
    return fallback;
  }
  if (typeof v !== 'number' || !Number.isFinite(v))
    err(file, field, `must be a number, got ${JSON.stringify(v)}`);
  if (opts.integer && !Number.isInteger(v)) err(file, field, `must be an integer, got ${v}`);
  if (opts.min !== undefined && (opts.exclusiveMin ? v <= opts.min : v < opts.min)) {
    err(file, field, `must be ${opts.exclusiveMin ? 'greater than' : 'at least'} ${opts.min}, got ${v}`);
  }
  if (opts.max !== undefined && v > opts.max) err(file, field, `must be at most ${opts.max}, got ${v}`);
  return v;
}

function str(file: string, obj: Json, key: string, field: string, fallback?: string): string {
  const v = obj[key];
  if (v === undefined || v === null) {
    if (fallback === undefined) err(file, field, 'is required');
    return fallback;
  }
  if (typeof v !== 'string' || v === '')
    err(file, field, `must be a non-empty string, got ${JSON.stringify(v)}`);
  return v;
}

function bool(file: string, obj: Json, key: string, field: string, fallback: boolean): boolean {
  const v = obj[key];
  if (v === undefined || v === null) return fallback;
  if (typeof v !== 'boolean') err(file, field, `must be true or false, got ${JSON.stringify(v)}`);
  return v;
}

function strList(file: string, obj: Json, key: string, field: string, fallback: string[]): string[] {
  const v = obj[key];
  if (v === undefined || v === null) return fallback;
  const list = typeof v === 'string' ? [v] : v;
  if (!Array.isArray(list) || !list.every((x) => typeof x === 'string'))
    err(file, field, `must be a string or a list of strings`);
  return list as string[];
}

function oneOf<T extends string>(
  file: string,
  obj: Json,
  key: string,
  field: string,
  allowed: readonly T[],
  fallback: T,
): T {
  const v = obj[key] ?? fallback;
  if (!allowed.includes(v as T))
    err(file, field, `must be one of ${allowed.join(', ')}, got ${JSON.stringify(v)}`);
  return v as T;
}

function object(file: string, v: unknown, field: string): Json {
  if (v === undefined || v === null) return {};
  if (typeof v !== 'object' || Array.isArray(v)) err(file, field, 'must be a mapping');
  return v as Json;
}

function checkKeys(file: string, obj: Json, field: string, allowed: string[]): void {
  for (const k of Object.keys(obj)) {
    if (!allowed.includes(k))
      err(file, `${field ? `${field}.` : ''}${k}`, `is not a known setting (known: ${allowed.join(', ')})`);
  }
}

const STAGE_KEYS = ['stage', 'tokens', ...Object.keys(STAGE_DEFAULTS)];

function parseStage(file: string, raw: unknown, i: number, defaults: Json): StageConfig {
  const field = `stages[${i}]`;
  const o = { ...defaults, ...object(file, raw, field) };
  checkKeys(file, object(file, raw, field), field, STAGE_KEYS);
  const stage = num(file, o, 'stage', `${field}.stage`, undefined, {
    integer: true,
    min: 1,
    max: 3,
  }) as StageKind;
  const d = STAGE_DEFAULTS;
  const s: StageConfig = {
    stage,
    tokens: num(file, o, 'tokens', `${field}.tokens`, undefined, {
      min: 0,
      exclusiveMin: true,
      max: LIMITS.tokens,
    }),
    batchTokens: num(file, o, 'batchTokens', `${field}.batchTokens`, d.batchTokens, {
      integer: true,
      min: 1,
      max: LIMITS.batchTokens,
    }),
    microBatch: num(file, o, 'microBatch', `${field}.microBatch`, d.microBatch, {
      integer: true,
      min: 1,
      max: LIMITS.microBatch,
    }),
    seqLen: num(file, o, 'seqLen', `${field}.seqLen`, d.seqLen, {
      integer: true,
      min: 2,
      max: LIMITS.seqLen,
    }),
    lr: num(file, o, 'lr', `${field}.lr`, d.lr, { min: 0, exclusiveMin: true }),
    minLrRatio: num(file, o, 'minLrRatio', `${field}.minLrRatio`, d.minLrRatio, { min: 0, max: 1 }),
    schedule: oneOf(
      file,
      o,
      'schedule',
      `${field}.schedule`,
      ['wsd', 'cosine', 'constant'] as const,
      d.schedule,
    ),
    warmup: num(file, o, 'warmup', `${field}.warmup`, d.warmup, { min: 0, max: 1 }),
    decay: num(file, o, 'decay', `${field}.decay`, d.decay, { min: 0, max: 1 }),
    weightDecay: num(file, o, 'weightDecay', `${field}.weightDecay`, d.weightDecay, { min: 0 }),
    beta1: num(file, o, 'beta1', `${field}.beta1`, d.beta1, { min: 0, max: 1 }),
    beta2: num(file, o, 'beta2', `${field}.beta2`, d.beta2, { min: 0, max: 1 }),
    clip: num(file, o, 'clip', `${field}.clip`, d.clip, { min: 0 }),
    mlpFrozen: bool(file, o, 'mlpFrozen', `${field}.mlpFrozen`, d.mlpFrozen),
    trainMlp: bool(file, o, 'trainMlp', `${field}.trainMlp`, d.trainMlp),
    temperature: num(file, o, 'temperature', `${field}.temperature`, d.temperature, {
      min: 0,
      exclusiveMin: true,
    }),
    ceWeight: num(file, o, 'ceWeight', `${field}.ceWeight`, d.ceWeight, { min: 0 }),
    freeze: strList(file, o, 'freeze', `${field}.freeze`, d.freeze),
    checkpointEvery: num(file, o, 'checkpointEvery', `${field}.checkpointEvery`, d.checkpointEvery, {
      integer: true,
      min: 0,
    }),
  };
  for (const p of s.freeze) {
    try {
      compilePattern(p);
    } catch (e) {
      err(file, `${field}.freeze`, `holds an invalid pattern ${JSON.stringify(p)} (${(e as Error).message})`);
    }
  }
  if (s.trainMlp && (s.stage !== 2 || s.mlpFrozen))
    err(
      file,
      `${field}.trainMlp`,
      `needs stage 2 with mlpFrozen: false (the MLP's output must be in the loss)`,
    );
  if (s.warmup + (s.schedule === 'wsd' ? s.decay : 0) > 1)
    err(file, `${field}.warmup`, `plus decay must not exceed 1`);
  const micro = s.microBatch * s.seqLen;
  if (micro > LIMITS.microTokens)
    err(
      file,
      `${field}.microBatch`,
      `x seqLen (${s.microBatch} x ${s.seqLen} = ${micro}) must be at most ${LIMITS.microTokens} tokens per forward pass`,
    );
  if (s.batchTokens % micro !== 0)
    err(
      file,
      `${field}.batchTokens`,
      `(${s.batchTokens}) must be a multiple of microBatch x seqLen (${s.microBatch} x ${s.seqLen} = ${micro})`,
    );
  return s;
}

/** Validate a parsed config object; `file` names it in errors; relative paths resolve against `baseDir`. */
export function validateConfig(raw: unknown, file: string, baseDir = '.'): DistillConfig {
  const o = object(file, raw, '(top level)');
  checkKeys(file, o, '', [
    'teacher',
    'out',
    'seed',
    'device',
    'precision',
    'student',
    'data',
    'stages',
    'stageDefaults',
    'scratchBaseline',
    'train',
  ]);
  const resolve = (p: string) => path.resolve(baseDir, p);
  const st = object(file, o.student, 'student');
  checkKeys(file, st, 'student', [
    'attentionLayers',
    'dState',
    'chunkSize',
    'alphaInit',
    'init',
    'mixer',
    'kernelLength',
  ]);
  const attentionLayers = st.attentionLayers ?? [];
  if (
    !Array.isArray(attentionLayers) ||
    !attentionLayers.every((x) => Number.isInteger(x) && (x as number) >= 0)
  ) {
    err(file, 'student.attentionLayers', 'must be a list of layer indices');
  }
  const student: StudentConfig = {
    attentionLayers: attentionLayers as number[],
    dState:
      st.dState === undefined || st.dState === null
        ? null
        : num(file, st, 'dState', 'student.dState', undefined, { integer: true, min: 1, max: LIMITS.dState }),
    chunkSize: num(file, st, 'chunkSize', 'student.chunkSize', 64, {
      integer: true,
      min: 1,
      max: LIMITS.chunkSize,
    }),
    alphaInit: num(file, st, 'alphaInit', 'student.alphaInit', 0.99, { min: 0, max: 1, exclusiveMin: true }),
    init: INIT_ALIASES[
      oneOf(
        file,
        st,
        'init',
        'student.init',
        ['paper', 'attention', 'transfer', 'random'] as const,
        'attention',
      )
    ],
    mixer: oneOf(file, st, 'mixer', 'student.mixer', ['ssd', 'toeplitz', 'linear-attention'] as const, 'ssd'),
    kernelLength:
      st.kernelLength === undefined || st.kernelLength === null
        ? null
        : num(file, st, 'kernelLength', 'student.kernelLength', undefined, { integer: true, min: 1 }),
  };
  const da = object(file, o.data, 'data');
  checkKeys(file, da, 'data', ['train', 'val', 'valTokens', 'jsonlField', 'maskPrompt']);
  const data: DataConfig = {
    train: strList(file, da, 'train', 'data.train', []).map(resolve),
    val: strList(file, da, 'val', 'data.val', []).map(resolve),
    valTokens: num(file, da, 'valTokens', 'data.valTokens', 65536, {
      integer: true,
      min: 1,
      max: LIMITS.valTokens,
    }),
    jsonlField: str(file, da, 'jsonlField', 'data.jsonlField', 'text'),
    maskPrompt: bool(file, da, 'maskPrompt', 'data.maskPrompt', false),
  };
  if (data.train.length === 0)
    err(file, 'data.train', 'is required (a prepared token directory or text files)');
  const stageDefaults = object(file, o.stageDefaults, 'stageDefaults');
  checkKeys(file, stageDefaults, 'stageDefaults', Object.keys(STAGE_DEFAULTS));
  if (!Array.isArray(o.stages) || o.stages.length === 0) err(file, 'stages', 'must be a non-empty list');
  const stages = (o.stages as unknown[]).map((s, i) => parseStage(file, s, i, stageDefaults));
  for (let i = 1; i < stages.length; i++) {
    if (stages[i].stage < stages[i - 1].stage)
      err(
        file,
        `stages[${i}].stage`,
        `(${stages[i].stage}) must not come before stage ${stages[i - 1].stage}`,
      );
  }
  return {
    teacher: resolve(str(file, o, 'teacher', 'teacher')),
    out: resolve(str(file, o, 'out', 'out', 'runs/distill')),
    seed: num(file, o, 'seed', 'seed', 0, { integer: true, min: 0 }),
    device: oneOf(file, o, 'device', 'device', ['cpu', 'cuda'] as const, 'cpu'),
    precision: oneOf(file, o, 'precision', 'precision', ['f32', 'bf16'] as const, 'f32'),
    student,
    data,
    stages,
    scratchBaseline: bool(file, o, 'scratchBaseline', 'scratchBaseline', false),
    train: parseTrain(file, object(file, o.train, 'train')),
  };
}

function parseTrain(file: string, tr: Json): TrainSettings {
  checkKeys(file, tr, 'train', ['cudaGraph']);
  return {
    cudaGraph: oneOf(file, tr, 'cudaGraph', 'train.cudaGraph', ['auto', 'on', 'off'] as const, 'auto'),
  };
}

/** Keys that would reach Object.prototype (or a constructor) instead of the config. */
const FORBIDDEN_KEYS = new Set(['__proto__', 'constructor', 'prototype']);

/** Apply `a.b.0.c=value` overrides (values parsed as YAML scalars) to a raw config object. */
export function applyOverrides(raw: Json, overrides: string[]): Json {
  const out = structuredClone(raw);
  for (const o of overrides) {
    const eq = o.indexOf('=');
    if (eq <= 0) throw new ConfigError(`--set ${o}: expected path=value`);
    const keys = o.slice(0, eq).split('.');
    for (const k of keys) {
      if (k === '') throw new ConfigError(`--set ${o}: empty name in the path`);
      if (FORBIDDEN_KEYS.has(k)) throw new ConfigError(`--set ${o}: "${k}" is not a config field`);
    }
    let value: unknown;
    try {
      value = YAML.parse(o.slice(eq + 1)) as unknown;
    } catch (e) {
      throw new ConfigError(
        `--set ${o}: the value is not valid YAML (${(e as Error).message.split('\n')[0]})`,
      );
    }
    let cur: Record<string, unknown> | unknown[] = out;
    keys.forEach((k, i) => {
      const last = i === keys.length - 1;
      const key: string | number = Array.isArray(cur) ? Number(k) : k;
      if (Array.isArray(cur) && !(Number.isInteger(key) && (key as number) >= 0)) {
        throw new ConfigError(`--set ${o}: "${k}" is not a list index`);
      }
      const container = cur as Record<string | number, unknown>;
      if (last) container[key] = value;
      else {
        const own = Object.hasOwn(container, key) ? container[key] : undefined;
        if (own === undefined || own === null) container[key] = /^\d+$/.test(keys[i + 1]) ? [] : {};
        cur = container[key] as Record<string, unknown> | unknown[];
        if (typeof cur !== 'object' || cur === null)
          throw new ConfigError(`--set ${o}: ${keys.slice(0, i + 1).join('.')} is not a mapping`);
      }
    });
  }
  return out;
}

/**
 * Checks that need the teacher: every stage's seqLen within the positions the teacher was built
 * for (learned position tables end there; rotary teachers were never trained past it).
 */
export function checkAgainstTeacher(
  cfg: DistillConfig,
  teacher: { maxSeqLen: number },
  file = 'config',
): void {
  cfg.stages.forEach((s, i) => {
    if (s.seqLen > teacher.maxSeqLen)
      err(
        file,
        `stages[${i}].seqLen`,
        `(${s.seqLen}) exceeds the teacher's ${teacher.maxSeqLen} positions (${cfg.teacher})`,
      );
  });
}

/** Read, override and validate a config file. */
export function loadConfig(file: string, overrides: string[] = []): DistillConfig {
  let text: string;
  try {
    text = fs.readFileSync(file, 'utf8');
  } catch {
    throw new ConfigError(`${file}: cannot read the config file`);
  }
  let raw: unknown;
  try {
    raw = file.endsWith('.json') ? JSON.parse(text) : YAML.parse(text);
  } catch (e) {
    throw new ConfigError(
      `${file}: not valid ${file.endsWith('.json') ? 'JSON' : 'YAML'} (${(e as Error).message.split('\n')[0]})`,
    );
  }
  return validateConfig(
    applyOverrides(object(file, raw, '(top level)'), overrides),
    file,
    path.dirname(path.resolve(file)),
  );
}
