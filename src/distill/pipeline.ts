// The MOHAWK pipeline: teacher -> student (weight transfer + attention-derived mixer), then the
// configured stages in order, each continuing from the previous stage's weights, with a
// validation perplexity after each; optionally a same-size student trained from scratch on the
// same number of tokens. Every stage checkpoints into its own directory, so `resume` continues
// a killed run where it stopped.

import fs from 'node:fs';
import path from 'node:path';
import { loadModel, saveModel } from '../models/load.js';
import type { CausalLM } from '../models/types.js';
import type { Tokenizer } from '../io/tokenizer.js';
import { loadChatTemplate } from '../io/chat-template.js';
import { StudentLM } from '../models/phi-mamba.js';
import {
  castParameters,
  crossEntropy,
  getAutocast,
  klDivergence,
  noGrad,
  scope,
  setAutocast,
  withCastParameters,
  type Tensor,
} from '../tensor/index.js';
import { INDEX_FILE, TokenDataset, type TokenSplit } from '../data/shards.js';
import { prepareTokens } from '../data/prepare.js';
import { evalBatches, maskTensor, RandomWindows, toTensors, type Batch } from '../data/batches.js';
import { loadCheckpoint, readLatest, train, type TrainResult } from '../train/index.js';
import { Random } from '../util/random.js';
import type { DistillConfig, StageConfig } from './config.js';
import { STAGE_NAMES, stage1Loss, stage2Loss, stage3Loss, trainableIn } from './stages.js';
import { studentConfigFor, transferStudent } from './transfer.js';
import { RunReporter } from './report.js';

export interface StageResult {
  stage: number;
  name: string;
  tokens: number;
  steps: number;
  loss: number;
  valPpl: number;
  /** KL(teacher || student) per token on the validation windows */
  valKl: number;
  seconds: number;
}

export interface DistillResult {
  teacherPpl: number;
  initialPpl: number;
  initialKl: number;
  stages: StageResult[];
  scratch: { tokens: number; valPpl: number } | null;
  tokens: number;
  studentDir: string;
}

export interface PipelineHooks {
  log?: (line: string) => void;
  /** show the trainer's progress line (default true) */
  progress?: boolean;
  /** a teacher already in memory (the demo); otherwise cfg.teacher is loaded */
  teacher?: { model: CausalLM; tokenizer: Tokenizer | null };
  /** prepared data already on disk or in memory */
  data?: { train: TokenSplit; val: TokenSplit };
}

/** Open the config's data: a prepared token directory, or text files tokenized into out/data. */
export function openData(
  cfg: DistillConfig,
  tokenizer: Tokenizer | null,
  log: (l: string) => void,
): { train: TokenSplit; val: TokenSplit } {
  const first = cfg.data.train[0];
  let dir: string;
  if (cfg.data.train.length === 1 && fs.existsSync(path.join(first, INDEX_FILE))) {
    dir = first;
  } else {
    dir = path.join(cfg.out, 'data');
    if (!fs.existsSync(path.join(dir, INDEX_FILE))) {
      if (!tokenizer)
        throw new Error(`${cfg.teacher}: the teacher has no tokenizer.json, needed to tokenize data.train`);
      log(`tokenizing ${cfg.data.train.length} input(s) into ${dir}`);
      prepareTokens(
        {
          encode: (t) => tokenizer.encode(t, { addBos: false }),
          eosTokenId: tokenizer.eosTokenId,
          vocabSize: tokenizer.vocabSize,
        },
        {
          inputs: cfg.data.train,
          valInputs: cfg.data.val.length ? cfg.data.val : undefined,
          out: dir,
          jsonlField: cfg.data.jsonlField,
          chat: loadChatTemplate(cfg.teacher) ?? undefined,
          maskPrompt: cfg.data.maskPrompt,
        },
      );
    }
  }
  const ds = TokenDataset.open(dir);
  const train = ds.split('train');
  if (cfg.data.maskPrompt && !train.hasMask)
    throw new Error(
      `${dir}: data.maskPrompt is set but the prepared data has no mask (prepare it with --mask-prompt)`,
    );
  return { train, val: ds.split('val') };
}

/**
 * Mean per token of a summed loss over back-to-back validation windows (no gradients, one memory
 * scope per batch). `lossSum` gets a batch's input and target ids and returns the batch's sum.
 */
function validationMean(
  val: TokenSplit,
  seqLen: number,
  maxTokens: number,
  batch: number,
  lossSum: (input: Tensor, target: Tensor) => Tensor,
): number {
  let total = 0;
  let count = 0;
  const windows = Math.max(1, Math.floor(maxTokens / seqLen));
  for (const b of evalBatches(val, batch, Math.min(seqLen, val.length - 1), windows)) {
    total += noGrad(() =>
      scope(() => {
        const { input, target } = toTensors(b);
        return lossSum(input, target).item();
      }),
    );
    count += b.batch * b.seqLen;
  }
  return total / count;
}

/** Mean KL(teacher || student) per token over back-to-back validation windows. */
export function validationKl(
  teacher: CausalLM,
  student: CausalLM,
  val: TokenSplit,
  seqLen: number,
  maxTokens: number,
  batch = 8,
): number {
  return validationMean(val, seqLen, maxTokens, batch, (input) =>
    klDivergence(teacher.forward(input).logits, student.forward(input).logits, { reduction: 'sum' }),
  );
}

/** Mean cross-entropy (nats/token) over back-to-back validation windows, as a perplexity. */
export function validationPerplexity(
  model: CausalLM,
  val: TokenSplit,
  seqLen: number,
  maxTokens: number,
  batch = 8,
): number {
  const nll = validationMean(val, seqLen, maxTokens, batch, (input, target) =>
    crossEntropy(model.forward(input).logits, target, { reduction: 'sum' }),
  );
  return Math.exp(nll);
}

function stageDir(cfg: DistillConfig, i: number, s: StageConfig): string {
  return path.join(cfg.out, `stage${i + 1}-${s.stage === 1 ? 'matrix' : s.stage === 2 ? 'hidden' : 'kd'}`);
}

function readDone(dir: string): StageResult | null {
  const f = path.join(dir, 'done.json');
  return fs.existsSync(f) ? (JSON.parse(fs.readFileSync(f, 'utf8')) as StageResult) : null;
}

/** Train `model` with one stage's loss; returns the trainer's result. */
function runStage(
  cfg: DistillConfig,
  i: number,
  s: StageConfig,
  teacher: CausalLM,
  student: CausalLM,
  trainSplit: TokenSplit,
  hooks: PipelineHooks,
  resume: boolean,
  onStep?: () => void,
): TrainResult {
  const data = new RandomWindows(trainSplit, s.microBatch, s.seqLen, cfg.seed * 1000 + i + 1);
  const trainable = student
    .namedParameters()
    .filter(([n]) => trainableIn(s.stage, n, student, s))
    .map(([n]) => n);
  const lossFn = (b: Batch) => {
    const { input, target } = toTensors(b);
    if (s.stage === 1) return stage1Loss(teacher, student, input).loss;
    if (s.stage === 2) return stage2Loss(teacher, student, input, s.mlpFrozen).loss;
    return stage3Loss(teacher, student, input, target, s, maskTensor(b)).loss;
  };
  const dir = stageDir(cfg, i, s);
  return train({
    params: student,
    lossFn,
    data,
    budgetTokens: s.tokens,
    batchTokens: s.batchTokens,
    optimizer: { lr: s.lr, beta1: s.beta1, beta2: s.beta2, eps: 1e-8, weightDecay: s.weightDecay },
    schedule: {
      kind: s.schedule,
      warmupFraction: s.warmup,
      decayFraction: s.decay,
      minLrRatio: s.minLrRatio,
    },
    maxGradNorm: s.clip,
    trainable,
    freeze: s.freeze,
    checkpointDir: dir,
    checkpointEvery: s.checkpointEvery || undefined,
    resume,
    metricsFile: path.join(dir, 'metrics.jsonl'),
    rng: new Random(cfg.seed + i),
    progress: hooks.progress ?? true,
    label: `stage ${s.stage} (${STAGE_NAMES[s.stage]})`,
    onStep,
  });
}

/** Run the configured stages; resumes completed or partial stages from cfg.out when `resume`. */
export function runDistill(cfg: DistillConfig, hooks: PipelineHooks = {}, resume = false): DistillResult {
  const log = hooks.log ?? ((l: string) => console.error(l));
  fs.mkdirSync(cfg.out, { recursive: true });
  const { model: teacher, tokenizer } = hooks.teacher ?? loadModel(cfg.teacher);
  teacher.setTrainable(() => true, false);
  if (cfg.precision === 'f32') return distillWith(cfg, hooks, resume, log, teacher, tokenizer);
  // bf16 autocast; the frozen teacher's matrices are rounded once for the whole run
  const prev = getAutocast();
  const casts = castParameters(teacher.parameters(), 'bf16');
  setAutocast('bf16');
  try {
    return withCastParameters(casts, () => distillWith(cfg, hooks, resume, log, teacher, tokenizer));
  } finally {
    setAutocast(prev);
    casts.dispose();
  }
}

function distillWith(
  cfg: DistillConfig,
  hooks: PipelineHooks,
  resume: boolean,
  log: (l: string) => void,
  teacher: CausalLM,
  tokenizer: Tokenizer | null,
): DistillResult {
  const { train: trainSplit, val } = hooks.data ?? openData(cfg, tokenizer, log);
  const evalLen = Math.min(cfg.stages[cfg.stages.length - 1].seqLen, teacher.info.maxSeqLen);
  const ppl = (m: CausalLM) => validationPerplexity(m, val, evalLen, cfg.data.valTokens);
  const kl = (m: CausalLM) => validationKl(teacher, m, val, evalLen, cfg.data.valTokens);
  const teacherPpl = ppl(teacher);
  log(
    `teacher validation perplexity ${teacherPpl.toFixed(3)} (${Math.min(cfg.data.valTokens, val.length)} tokens)`,
  );
  const student = transferStudent(teacher, {
    attentionLayers: cfg.student.attentionLayers,
    dState: cfg.student.dState ?? undefined,
    chunkSize: cfg.student.chunkSize,
    alphaInit: cfg.student.alphaInit,
    mixerInit: cfg.student.init === 'transfer' ? 'attention' : 'random',
    copyWeights: true,
    seed: cfg.seed,
  });
  const initialPpl = ppl(student);
  const initialKl = kl(student);
  log(`student after weight transfer: validation perplexity ${initialPpl.toFixed(3)}`);
  const stages: StageResult[] = [];
  // metrics.csv and report.html beside the metrics, rewritten as the run goes
  const reporter = new RunReporter(cfg.out, 30, log);
  cfg.stages.forEach((s, i) => {
    const dir = stageDir(cfg, i, s);
    const done = resume ? readDone(dir) : null;
    if (done) {
      const latest = readLatest(dir);
      if (!latest)
        throw new Error(`${dir}: done.json without a checkpoint; remove the directory to rerun the stage`);
      loadCheckpoint(latest.path, student.namedParameters());
      log(
        `stage ${s.stage} (${STAGE_NAMES[s.stage]}) already done: validation perplexity ${done.valPpl.toFixed(3)}`,
      );
      stages.push(done);
      return;
    }
    if (!resume && fs.existsSync(dir)) fs.rmSync(dir, { recursive: true, force: true });
    log(`stage ${s.stage} (${STAGE_NAMES[s.stage]}): ${s.tokens} tokens`);
    const r = runStage(cfg, i, s, teacher, student, trainSplit, hooks, resume, () => reporter.tick());
    const result: StageResult = {
      stage: s.stage,
      name: STAGE_NAMES[s.stage],
      tokens: r.tokens,
      steps: r.steps,
      loss: r.loss,
      valPpl: ppl(student),
      valKl: kl(student),
      seconds: r.elapsedSec,
    };
    fs.writeFileSync(path.join(dir, 'done.json'), JSON.stringify(result, null, 2) + '\n');
    reporter.flush();
    log(
      `stage ${s.stage} done: loss ${r.loss.toFixed(4)}, validation perplexity ${result.valPpl.toFixed(3)}`,
    );
    stages.push(result);
  });
  const studentDir = path.join(cfg.out, 'student');
  saveModel(studentDir, student, tokenizer);
  const tokens = stages.reduce((a, s) => a + s.tokens, 0);
  let scratch: DistillResult['scratch'] = null;
  if (cfg.scratchBaseline) scratch = trainScratch(cfg, teacher, trainSplit, tokens, ppl, hooks, resume, log);
  const result: DistillResult = { teacherPpl, initialPpl, initialKl, stages, scratch, tokens, studentDir };
  fs.writeFileSync(path.join(cfg.out, 'results.json'), JSON.stringify(result, null, 2) + '\n');
  reporter.flush();
  student.dispose();
  return result;
}

/** The same student architecture from random weights, trained with cross-entropy on the data. */
function trainScratch(
  cfg: DistillConfig,
  teacher: CausalLM,
  trainSplit: TokenSplit,
  tokens: number,
  ppl: (m: CausalLM) => number,
  hooks: PipelineHooks,
  resume: boolean,
  log: (l: string) => void,
): { tokens: number; valPpl: number } {
  const last = cfg.stages[cfg.stages.length - 1];
  const dir = path.join(cfg.out, 'scratch');
  const done = resume ? readDone(dir) : null;
  if (done) return { tokens: done.tokens, valPpl: done.valPpl };
  if (!resume && fs.existsSync(dir)) fs.rmSync(dir, { recursive: true, force: true });
  const scfg = studentConfigFor(teacher, {
    attentionLayers: cfg.student.attentionLayers,
    dState: cfg.student.dState ?? undefined,
    chunkSize: cfg.student.chunkSize,
  });
  const model = new StudentLM(scfg, { rng: new Random(cfg.seed + 7) });
  log(`from scratch: ${tokens} tokens of cross-entropy`);
  const r = train({
    params: model,
    lossFn: (b: Batch) => {
      const { input, target } = toTensors(b);
      return crossEntropy(model.forward(input).logits, target);
    },
    data: new RandomWindows(trainSplit, last.microBatch, last.seqLen, cfg.seed * 1000 + 999),
    budgetTokens: tokens,
    batchTokens: last.batchTokens,
    optimizer: {
      lr: last.lr,
      beta1: last.beta1,
      beta2: last.beta2,
      eps: 1e-8,
      weightDecay: last.weightDecay,
    },
    schedule: {
      kind: last.schedule,
      warmupFraction: last.warmup,
      decayFraction: last.decay,
      minLrRatio: last.minLrRatio,
    },
    maxGradNorm: last.clip,
    checkpointDir: dir,
    resume,
    metricsFile: path.join(dir, 'metrics.jsonl'),
    progress: hooks.progress ?? true,
    label: 'from scratch',
  });
  const valPpl = ppl(model);
  const res: StageResult = {
    stage: 0,
    name: 'from scratch',
    valKl: NaN,
    tokens: r.tokens,
    steps: r.steps,
    loss: r.loss,
    valPpl,
    seconds: r.elapsedSec,
  };
  fs.writeFileSync(path.join(dir, 'done.json'), JSON.stringify(res, null, 2) + '\n');
  log(`from scratch done: validation perplexity ${valPpl.toFixed(3)}`);
  model.dispose();
  return { tokens: r.tokens, valPpl };
}

/** The results as a readable table. */
export function resultsTable(r: DistillResult): string {
  const rows: string[][] = [
    ['teacher', '', r.teacherPpl.toFixed(3), ''],
    ['student after weight transfer', '0', r.initialPpl.toFixed(3), r.initialKl.toFixed(4)],
  ];
  let acc = 0;
  for (const s of r.stages) {
    acc += s.tokens;
    rows.push([
      `student after stage ${s.stage} (${s.name})`,
      String(acc),
      s.valPpl.toFixed(3),
      s.valKl.toFixed(4),
    ]);
  }
  if (r.scratch)
    rows.push([
      'student from scratch (cross-entropy)',
      String(r.scratch.tokens),
      r.scratch.valPpl.toFixed(3),
      '',
    ]);
  const w0 = Math.max(...rows.map((x) => x[0].length), 5);
  const fmt = (x: string[]) =>
    `${x[0].padEnd(w0)}  ${x[1].padStart(10)}  ${x[2].padStart(9)}  ${x[3].padStart(13)}`;
  const lines = [
    fmt(['model', 'tokens', 'val ppl', 'KL to teacher']),
    fmt(['-'.repeat(w0), '-'.repeat(10), '-'.repeat(9), '-'.repeat(13)]),
  ];
  for (const x of rows) lines.push(fmt(x));
  return lines.join('\n');
}
