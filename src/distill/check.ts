// `mohawk distill --check`: a config resolved in full (every default filled in, paths absolute)
// with what each stage will do (steps, accumulation, schedule, trainable parameters), computed
// from the config files alone: the teacher's config.json gives the student's shapes, no weight
// is read and no model is built.

import fs from 'node:fs';
import path from 'node:path';
import { readConfig, withShapesOnly } from '../models/load.js';
import type { Json } from '../models/hf.js';
import { StudentLM, type StudentConfig as StudentShape } from '../models/phi-mamba.js';
import { familyFor } from '../models/registry.js';
import { warmupSteps } from '../train/schedule.js';
import type { DistillConfig, StageConfig } from './config.js';
import { STAGE_NAMES, stageTrainable } from './stages.js';
import { kernelLengthOf } from './pipeline.js';
import { studentConfigFromShape } from './transfer.js';

/**
 * The student's shape from a teacher's config.json, as transfer.ts's studentConfigFor derives it
 * from a loaded teacher (test/distill.test.ts checks that both agree parameter for parameter).
 */
export function studentShapeFromTeacherJson(
  json: Json,
  file: string,
  student: DistillConfig['student'],
): StudentShape {
  // the family's own reading of its config.json (models/registry.ts), no weights
  const teacher = familyFor(json, file).studentShape(json, file);
  for (const l of student.attentionLayers)
    if (l >= teacher.nLayer)
      throw new Error(
        `student.attentionLayers: ${l} is not a layer of the teacher (0..${teacher.nLayer - 1})`,
      );
  return studentConfigFromShape(teacher, {
    attentionLayers: student.attentionLayers,
    dState: student.dState ?? undefined,
    chunkSize: student.chunkSize,
    mixerInit: student.init === 'paper' ? 'paper' : 'attention',
    ...(student.mixer === 'ssd'
      ? {}
      : { mixerClass: student.mixer, kernelLength: student.kernelLength ?? 2048 }),
  });
}

/** Every parameter of a student (name, shape): StudentLM built on a backend that allocates nothing. */
export function studentParameterShapes(c: StudentShape): [string, number[]][] {
  const model = withShapesOnly(() => new StudentLM(c, { deferInit: true }))!;
  return model.namedParameters().map(([n, p]) => [n, [...p.shape]]);
}

export interface ResolvedStage extends StageConfig {
  name: string;
  steps: number;
  /** micro-batches per optimizer step */
  accumulation: number;
  warmupSteps: number;
  decaySteps: number;
  minLr: number;
  /** trainable parameters (elements) and tensors; null when the teacher's shape is unknown */
  trainableParameters: number | null;
  trainableTensors: number | null;
}

export interface CheckedConfig {
  config: Omit<DistillConfig, 'stages'>;
  student: { parameters: number; shapeFrom: string } | null;
  stages: ResolvedStage[];
  totalTokens: number;
  warnings: string[];
}

/** Resolve a validated config (see the file comment); throws on what a run would refuse. */
export function checkConfig(cfg: DistillConfig): CheckedConfig {
  const warnings: string[] = [];
  let shapes: [string, number[]][] | null = null;
  let blocks: { mixerKind: 'attention' | 'ssm' }[] = [];
  let shapeFrom = '';
  if (fs.existsSync(path.join(cfg.teacher, 'config.json'))) {
    const { json, file } = readConfig(cfg.teacher);
    const shape = studentShapeFromTeacherJson(json, file, {
      ...cfg.student,
      kernelLength: kernelLengthOf(cfg),
    });
    shapes = studentParameterShapes(shape);
    blocks = Array.from({ length: shape.nLayer }, (_, l) => ({
      mixerKind: shape.attentionLayers.has(l) ? 'attention' : 'ssm',
    }));
    shapeFrom = file;
  } else {
    warnings.push(`teacher: ${cfg.teacher} has no config.json (trainable counts unknown)`);
  }
  for (const d of [...cfg.data.train, ...cfg.data.val])
    if (!fs.existsSync(d)) warnings.push(`data: ${d} does not exist (yet)`);
  const size = (s: number[]) => s.reduce((a, b) => a * b, 1);
  const names = shapes?.map(([n]) => n) ?? [];
  const sizes = new Map(shapes?.map(([n, s]) => [n, size(s)]) ?? []);
  const stages = cfg.stages.map((s, i): ResolvedStage => {
    const micro = s.microBatch * s.seqLen;
    if (s.batchTokens % micro !== 0)
      throw new Error(
        `stages[${i}].batchTokens (${s.batchTokens}) must be a multiple of microBatch x seqLen (${s.microBatch} x ${s.seqLen})`,
      );
    const steps = Math.floor(s.tokens / s.batchTokens);
    if (steps < 1)
      throw new Error(`stages[${i}].tokens (${s.tokens}) is less than one step of ${s.batchTokens} tokens`);
    const warmup = warmupSteps({ kind: s.schedule, warmupFraction: s.warmup }, steps);
    const decaySteps = s.schedule === 'wsd' ? Math.min(steps - warmup, Math.round(s.decay * steps)) : 0;
    let count: number | null = null;
    let tensors: number | null = null;
    if (shapes) {
      const trained = stageTrainable(s.stage, names, { blocks }, s, `stages[${i}].freeze`);
      count = trained.reduce((a, n) => a + sizes.get(n)!, 0);
      tensors = trained.length;
    }
    return {
      ...s,
      name: STAGE_NAMES[s.stage],
      steps,
      accumulation: s.batchTokens / micro,
      warmupSteps: warmup,
      decaySteps,
      minLr: s.schedule === 'constant' ? s.lr : s.lr * s.minLrRatio,
      trainableParameters: count,
      trainableTensors: tensors,
    };
  });
  const { stages: _drop, ...rest } = cfg;
  void _drop;
  return {
    config: rest,
    student: shapes ? { parameters: shapes.reduce((a, [, s]) => a + size(s), 0), shapeFrom } : null,
    stages,
    totalTokens: stages.reduce((a, s) => a + s.steps * s.batchTokens, 0),
    warnings,
  };
}

const fmt = (n: number) => n.toLocaleString('en-US');

/** The resolved config as text: the settings, then one line per stage. */
export function checkTable(c: CheckedConfig): string {
  const cfg = c.config;
  const lines = [
    `teacher           ${cfg.teacher}`,
    `out               ${cfg.out}`,
    `seed, device      ${cfg.seed}, ${cfg.device} (${cfg.precision})`,
    `student           init ${cfg.student.init}, attention layers [${cfg.student.attentionLayers.join(', ')}], ` +
      `d_state ${cfg.student.dState ?? 'head size'}, chunk ${cfg.student.chunkSize}, alpha ${cfg.student.alphaInit}` +
      (c.student ? `, ${fmt(c.student.parameters)} parameters` : ''),
    `data.train        ${cfg.data.train.join(', ')}`,
    `data.val          ${cfg.data.val.length ? cfg.data.val.join(', ') : '(the prepared val split)'}, ${fmt(cfg.data.valTokens)} tokens`,
    `scratchBaseline   ${cfg.scratchBaseline}`,
    '',
  ];
  const head = [
    '#',
    'stage',
    'tokens',
    'steps',
    'batch (accum x micro x seq)',
    'lr',
    'schedule',
    'trainable',
  ];
  const rows = c.stages.map((s, i) => [
    String(i),
    `${s.stage} ${s.name}`,
    fmt(s.steps * s.batchTokens),
    fmt(s.steps),
    `${fmt(s.batchTokens)} (${s.accumulation} x ${s.microBatch} x ${s.seqLen})`,
    `${s.lr} -> ${Number(s.minLr.toPrecision(3))}`,
    s.schedule === 'wsd'
      ? `wsd ${s.warmupSteps}/${s.steps - s.warmupSteps - s.decaySteps}/${s.decaySteps}`
      : s.schedule === 'cosine'
        ? `cosine, warmup ${s.warmupSteps}`
        : `constant, warmup ${s.warmupSteps}`,
    s.trainableParameters === null ? '?' : `${fmt(s.trainableParameters)} (${s.trainableTensors} tensors)`,
  ]);
  const w = head.map((h, j) => Math.max(h.length, ...rows.map((r) => r[j].length)));
  const line = (r: string[]) =>
    r.map((x, j) => (j === 1 || j === 6 ? x.padEnd(w[j]) : x.padStart(w[j]))).join('  ');
  lines.push(line(head), line(w.map((n) => '-'.repeat(n))), ...rows.map(line));
  lines.push('', `total ${fmt(c.totalTokens)} tokens`);
  for (const s of c.stages) {
    const extra: string[] = [];
    if (s.stage === 2) extra.push(`mlpFrozen ${s.mlpFrozen}`, `trainMlp ${s.trainMlp}`);
    if (s.stage === 3) extra.push(`temperature ${s.temperature}`, `ceWeight ${s.ceWeight}`);
    extra.push(
      `AdamW betas (${s.beta1}, ${s.beta2}), weight decay ${s.weightDecay}, clip ${s.clip}`,
      `freeze [${s.freeze.join(', ')}]`,
      `checkpointEvery ${s.checkpointEvery}`,
    );
    lines.push(`stage ${s.stage}: ${extra.join('; ')}`);
  }
  for (const warn of c.warnings) lines.push(`warning: ${warn}`);
  return lines.join('\n');
}
