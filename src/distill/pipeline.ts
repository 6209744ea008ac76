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
import { listInputFiles, prepareTokens } from '../data/prepare.js';
import { evalBatches, maskTensor, RandomWindows, toTensors, type Batch } from '../data/batches.js';
import {
  DivergenceError,
  loadCheckpoint,
  readLatest,
  train,
  type LossContext,
  type TrainResult,
} from '../train/index.js';
import type { Collective } from '../backends/collective.js';
import { computeOverRanks, type DataParallel } from '../train/distributed.js';
import { firstNonFinite } from '../train/params.js';
import { readJsonFile, writeJsonAtomic } from '../util/fs.js';
import { Random } from '../util/random.js';
import { checkAgainstTeacher, type DistillConfig, type StageConfig } from './config.js';
import {
  hiddenStateAlignmentStep,
  matrixOrientationStep,
  STAGE_NAMES,
  stage3Loss,
  stageTrainable,
} from './stages.js';
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
  /**
   * run every stage data parallel over these ranks (see docs/distributed.md): all ranks run
   * this pipeline; rank 0 alone logs and writes files (results, student, done.json, the
   * model in checkpoints), the others only their optimizer shards under ZeRO-1
   */
  dataParallel?: DataParallel;
}

/** rank 0 (or no data parallelism) */
function isRoot(hooks: PipelineHooks): boolean {
  return (hooks.dataParallel?.collective.rank ?? 0) === 0;
}

/** every rank here before any goes on (no-op in one process) */
function barrier(hooks: PipelineHooks): void {
  hooks.dataParallel?.collective.barrier();
}

/** Written beside OUT/data's index.json: the data configuration that produced it. */
export const DATA_RECORD_FILE = 'mohawk-data.json';

/** A sentence whose token ids fingerprint a tokenizer (a changed tokenizer changes them). */
const FINGERPRINT_TEXT =
  'The quick brown fox jumps over the lazy dog. 1234 \u00e9t\u00e9 \u4e2d\u6587\n\tend';

/** What produced OUT/data: the inputs (with sizes and times), the field, and the tokenizer. */
function dataRecord(cfg: DistillConfig, tokenizer: Tokenizer | null): Record<string, unknown> {
  const files = (inputs: string[]) =>
    listInputFiles(inputs).map((f) => {
      const st = fs.statSync(f);
      return { path: f, bytes: st.size, mtimeMs: Math.floor(st.mtimeMs) };
    });
  return {
    version: 1,
    train: cfg.data.train,
    val: cfg.data.val,
    jsonlField: cfg.data.jsonlField,
    files: { train: files(cfg.data.train), val: files(cfg.data.val) },
    tokenizer: tokenizer
      ? {
          vocabSize: tokenizer.vocabSize,
          eosTokenId: tokenizer.eosTokenId,
          fingerprint: tokenizer.encode(FINGERPRINT_TEXT, { addBos: false }),
        }
      : null,
  };
}

/** Why the recorded data configuration differs from this one (the first difference), or null. */
function recordDiffers(dir: string, want: Record<string, unknown>): string | null {
  const file = path.join(dir, DATA_RECORD_FILE);
  let have: Record<string, unknown> | null;
  try {
    have = readJsonFile<Record<string, unknown>>(file);
  } catch (e) {
    return (e as Error).message;
  }
  if (!have) return `${file} is missing (made by an older mohawk or by hand)`;
  for (const key of Object.keys(want)) {
    if (JSON.stringify(have[key]) !== JSON.stringify(want[key]))
      return key === 'files'
        ? 'an input file changed (size or modification time)'
        : `data.${key === 'tokenizer' ? "tokenizer (the teacher's)" : key} differs`;
  }
  return null;
}

/**
 * Open the config's data: a prepared token directory, or text files tokenized into out/data.
 * OUT/data is reused only when the data configuration recorded beside it is this one; every token
 * id is checked against the model's vocabulary (`vocabSize`, default the tokenizer's).
 */
export function openData(
  cfg: DistillConfig,
  tokenizer: Tokenizer | null,
  log: (l: string) => void,
  vocabSize?: number,
): { train: TokenSplit; val: TokenSplit } {
  const first = cfg.data.train[0];
  let dir: string;
  const limit = vocabSize ?? tokenizer?.vocabSize ?? Infinity;
  if (cfg.data.train.length === 1 && fs.existsSync(path.join(first, INDEX_FILE))) {
    dir = first;
  } else {
    dir = path.join(cfg.out, 'data');
    const record = dataRecord(cfg, tokenizer);
    const prepared = fs.existsSync(path.join(dir, INDEX_FILE));
    const why = prepared ? recordDiffers(dir, record) : 'not prepared yet';
    if (why === null) log(`reusing ${dir} (same data configuration)`);
    else {
      if (!tokenizer)
        throw new Error(`${cfg.teacher}: the teacher has no tokenizer.json, needed to tokenize data.train`);
      if (tokenizer.vocabSize > limit)
        log(
          `warning: the tokenizer has ${tokenizer.vocabSize} tokens but the model only ${limit}; ` +
            'data with ids beyond the model stops the preparation',
        );
      if (prepared) log(`re-tokenizing ${dir}: ${why}`);
      log(`tokenizing ${cfg.data.train.length} input(s) into ${dir}`);
      fs.rmSync(path.join(dir, DATA_RECORD_FILE), { force: true });
      prepareTokens(
        {
          encode: (t) => tokenizer.encode(t, { addBos: false }),
          eosTokenId: tokenizer.eosTokenId,
          vocabSize: Math.min(tokenizer.vocabSize, limit),
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
      writeJsonAtomic(path.join(dir, DATA_RECORD_FILE), record);
    }
  }
  const ds = TokenDataset.open(dir);
  const splits = { train: ds.split('train'), val: ds.split('val') };
  if (cfg.data.maskPrompt && !splits.train.hasMask)
    throw new Error(
      `${dir}: data.maskPrompt is set but the prepared data has no mask (prepare it with --mask-prompt)`,
    );
  if (Number.isFinite(limit)) {
    for (const split of Object.values(splits)) {
      const bad = split.firstOutOfRange(limit);
      if (bad)
        throw new Error(
          `${bad.file}: token ${bad.position} is id ${bad.id}, outside the model's vocabulary of ${limit} ` +
            `(prepared with another tokenizer?)`,
        );
    }
  }
  return splits;
}

/**
 * Mean per token of a summed loss over back-to-back validation windows (no gradients, one memory
 * scope per batch). `lossSum` gets a batch's input and target ids and returns the batch's sum.
 * With a collective each rank computes its share of the batches and every rank gets the figure
 * one process would (train/distributed.ts computeOverRanks).
 */
function validationMean(
  val: TokenSplit,
  seqLen: number,
  maxTokens: number,
  batch: number,
  lossSum: (input: Tensor, target: Tensor) => Tensor,
  collective?: Collective | null,
): number {
  const windows = Math.max(1, Math.floor(maxTokens / seqLen));
  const batches = [...evalBatches(val, batch, Math.min(seqLen, val.length - 1), windows)];
  const sums = computeOverRanks(collective, batches.length, (i) =>
    noGrad(() =>
      scope(() => {
        const { input, target } = toTensors(batches[i]);
        return lossSum(input, target).item();
      }),
    ),
  );
  let total = 0;
  let count = 0;
  batches.forEach((b, i) => {
    total += sums[i];
    count += b.batch * b.seqLen;
  });
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
  collective?: Collective | null,
): number {
  return validationMean(
    val,
    seqLen,
    maxTokens,
    batch,
    (input) =>
      klDivergence(teacher.forward(input).logits, student.forward(input).logits, { reduction: 'sum' }),
    collective,
  );
}

/** Mean cross-entropy (nats/token) over back-to-back validation windows, as a perplexity. */
export function validationPerplexity(
  model: CausalLM,
  val: TokenSplit,
  seqLen: number,
  maxTokens: number,
  batch = 8,
  collective?: Collective | null,
): number {
  const nll = validationMean(
    val,
    seqLen,
    maxTokens,
    batch,
    (input, target) => crossEntropy(model.forward(input).logits, target, { reduction: 'sum' }),
    collective,
  );
  return Math.exp(nll);
}

/** The Toeplitz mixer's kernel taps: the config's, else the longest stage sequence. */
export function kernelLengthOf(cfg: DistillConfig): number {
  return cfg.student.kernelLength ?? Math.max(...cfg.stages.map((s) => s.seqLen));
}

function stageDir(cfg: DistillConfig, i: number, s: StageConfig): string {
  return path.join(cfg.out, `stage${i + 1}-${s.stage === 1 ? 'matrix' : s.stage === 2 ? 'hidden' : 'kd'}`);
}

/**
 * A finished stage's done.json, or null. A damaged one (cut short by a kill or a full disk) is
 * reported in one line and the stage is finished again from its last checkpoint.
 */
function readDone(dir: string, log: (l: string) => void): StageResult | null {
  const f = path.join(dir, 'done.json');
  let done: StageResult | null;
  try {
    done = readJsonFile<StageResult>(f);
  } catch (e) {
    log(`warning: ${(e as Error).message}; finishing the stage again from its last checkpoint`);
    return null;
  }
  if (done === null) return null;
  if (!done || typeof done !== 'object' || !Number.isInteger(done.stage) || typeof done.valPpl !== 'number') {
    log(`warning: ${f}: not a stage result; finishing the stage again from its last checkpoint`);
    return null;
  }
  return done;
}

/** Files and directories of a stage directory that mohawk writes (a fresh run removes only these). */
const STAGE_ENTRY =
  /^(done\.json|metrics\.jsonl|metrics\.csv|latest\.json|step-\d+|step-\d+\.tmp-\d+|step-\d+\.shards|.*\.tmp-\d+)$/;

/**
 * Empty a stage directory of what mohawk wrote there, keeping anything else (a user's notes, ...);
 * returns the names kept.
 */
function clearStageDir(dir: string, log: (l: string) => void): string[] {
  if (!fs.existsSync(dir)) return [];
  const kept: string[] = [];
  for (const name of fs.readdirSync(dir)) {
    if (STAGE_ENTRY.test(name)) fs.rmSync(path.join(dir, name), { recursive: true, force: true });
    else kept.push(name);
  }
  if (kept.length) log(`kept ${kept.length} file(s) mohawk did not write in ${dir}: ${kept.join(', ')}`);
  else fs.rmdirSync(dir);
  return kept;
}

/** What a fresh (not resumed) run in cfg.out will replace, as one line, or null when nothing. */
export function overwriteNotice(cfg: DistillConfig): string | null {
  const items: string[] = [];
  const dirs = cfg.stages.map((s, i) => stageDir(cfg, i, s));
  if (cfg.scratchBaseline) dirs.push(path.join(cfg.out, 'scratch'));
  for (const d of dirs) {
    if (!fs.existsSync(d)) continue;
    let latest: { step: number } | null = null;
    try {
      latest = readLatest(d, () => {});
    } catch {
      // a damaged latest.json: still replaced
    }
    const done = fs.existsSync(path.join(d, 'done.json'));
    items.push(
      `${path.basename(d)}/ (${done ? 'finished' : latest ? `checkpoint at step ${latest.step}` : 'partial'})`,
    );
  }
  for (const f of ['student', 'results.json', 'report.html', 'metrics.csv'])
    if (fs.existsSync(path.join(cfg.out, f))) items.push(f);
  if (!items.length) return null;
  return `fresh run in ${cfg.out}: replacing ${items.join(', ')} (--resume continues the run instead)`;
}

/** Refuse to write a student with a NaN or an infinity in its weights. */
function checkFinite(model: CausalLM, what: string): void {
  const bad = firstNonFinite(model.namedParameters());
  if (bad) throw new Error(`${what}: ${bad} is not finite; the student is not written`);
}

/** Train `model` with one stage's loss; returns the trainer's result. */
function runStage(
  cfg: DistillConfig,
  i: number,
  s: StageConfig,
  teacher: CausalLM,
  student: StudentLM,
  trainSplit: TokenSplit,
  hooks: PipelineHooks,
  resume: boolean,
  onStep?: () => void,
): TrainResult {
  const data = new RandomWindows(trainSplit, s.microBatch, s.seqLen, cfg.seed * 1000 + i + 1);
  const trainable = stageTrainable(
    s.stage,
    student.namedParameters().map(([n]) => n),
    student,
    s,
    `stages[${i}].freeze`,
  );
  // stages 1 and 2 back-propagate layer by layer (see stages.ts)
  const lossFn = (b: Batch, ctx: LossContext) => {
    const { input, target } = toTensors(b);
    // the value stays on the device: the step can replay as a CUDA graph
    if (s.stage === 1) return matrixOrientationStep(teacher, student, input, 1 / ctx.accum, true);
    if (s.stage === 2)
      return hiddenStateAlignmentStep(teacher, student, input, s.mlpFrozen, 1 / ctx.accum, true);
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
    checkpointDir: dir,
    checkpointEvery: s.checkpointEvery || undefined,
    resume,
    metricsFile: path.join(dir, 'metrics.jsonl'),
    rng: new Random(cfg.seed + i),
    progress: hooks.progress ?? true,
    label: `stage ${s.stage} (${STAGE_NAMES[s.stage]})`,
    dataParallel: hooks.dataParallel,
    onStep,
    cudaGraph: cfg.train.cudaGraph,
  });
}

/** Run the configured stages; resumes completed or partial stages from cfg.out when `resume`. */
export function runDistill(cfg: DistillConfig, hooks: PipelineHooks = {}, resume = false): DistillResult {
  const log = !isRoot(hooks) ? () => {} : (hooks.log ?? ((l: string) => console.error(l)));
  fs.mkdirSync(cfg.out, { recursive: true });
  // under bf16 the frozen teacher's linear weights are held once, in bf16, read straight from the file
  const { model: teacher, tokenizer } =
    hooks.teacher ?? loadModel(cfg.teacher, cfg.precision === 'bf16' ? { linearDtype: 'bf16' } : {});
  checkAgainstTeacher(cfg, teacher.info);
  if (!resume) {
    const notice = overwriteNotice(cfg);
    if (notice) log(notice);
  }
  teacher.setTrainable(() => true, false);
  if (cfg.precision === 'f32') return distillWith(cfg, hooks, resume, log, teacher, tokenizer);
  // bf16 autocast; the frozen teacher's other matrices (a tied head) are rounded once for the run
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
  // data parallel: rank 0 tokenizes (when needed) before the others open the data
  if (!hooks.data && hooks.dataParallel) {
    if (isRoot(hooks)) openData(cfg, tokenizer, log, teacher.info.vocabSize);
    barrier(hooks);
  }
  const { train: trainSplit, val } = hooks.data ?? openData(cfg, tokenizer, log, teacher.info.vocabSize);
  const evalLen = Math.min(cfg.stages[cfg.stages.length - 1].seqLen, teacher.info.maxSeqLen);
  // data parallel: each rank evaluates its share of the validation batches
  const dpc = hooks.dataParallel?.collective;
  const ppl = (m: CausalLM) => validationPerplexity(m, val, evalLen, cfg.data.valTokens, 8, dpc);
  const kl = (m: CausalLM) => validationKl(teacher, m, val, evalLen, cfg.data.valTokens, 8, dpc);
  const teacherPpl = ppl(teacher);
  log(
    `teacher validation perplexity ${teacherPpl.toFixed(3)} (${Math.min(cfg.data.valTokens, val.length)} tokens)`,
  );
  const student = transferStudent(teacher, {
    attentionLayers: cfg.student.attentionLayers,
    dState: cfg.student.dState ?? undefined,
    chunkSize: cfg.student.chunkSize,
    alphaInit: cfg.student.alphaInit,
    mixerInit: cfg.student.init,
    mixerClass: cfg.student.mixer,
    kernelLength: kernelLengthOf(cfg),
    copyWeights: true,
    seed: cfg.seed,
  });
  const initialPpl = ppl(student);
  const initialKl = kl(student);
  log(`student after weight transfer: validation perplexity ${initialPpl.toFixed(3)}`);
  const stages: StageResult[] = [];
  // metrics.csv and report.html beside the metrics, rewritten as the run goes
  const reporter = isRoot(hooks) ? new RunReporter(cfg.out, 30, log) : null;
  cfg.stages.forEach((s, i) => {
    const dir = stageDir(cfg, i, s);
    const done = resume ? readDone(dir, log) : null;
    if (done) {
      const latest = readLatest(dir, log);
      if (!latest)
        throw new Error(`${dir}: done.json without a checkpoint; remove the directory to rerun the stage`);
      loadCheckpoint(latest.path, student.namedParameters());
      log(
        `stage ${s.stage} (${STAGE_NAMES[s.stage]}) already done: validation perplexity ${done.valPpl.toFixed(3)}`,
      );
      stages.push(done);
      return;
    }
    if (!resume && isRoot(hooks)) clearStageDir(dir, log);
    barrier(hooks);
    log(`stage ${s.stage} (${STAGE_NAMES[s.stage]}): ${s.tokens} tokens`);
    let r: TrainResult;
    try {
      r = runStage(cfg, i, s, teacher, student, trainSplit, hooks, resume, () => reporter?.tick());
    } catch (e) {
      // a stage that diverges before its first checkpoint: the last good one is the previous stage's
      if (e instanceof DivergenceError && /No checkpoint was written/.test(e.message)) {
        const prev = i > 0 ? readLatest(stageDir(cfg, i - 1, cfg.stages[i - 1]), () => {}) : null;
        throw new DivergenceError(
          e.message.replace(
            'No checkpoint was written in this run.',
            prev
              ? `No checkpoint was written in this stage; the last good checkpoint is ${prev.path} (the end of stage ${cfg.stages[i - 1].stage}).`
              : 'No checkpoint was written in this stage (it is the first).',
          ),
          { cause: e },
        );
      }
      throw e;
    }
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
    checkFinite(student, `${dir}`);
    if (!Number.isFinite(result.valPpl))
      log(
        `warning: stage ${s.stage} ends with validation perplexity ${result.valPpl} (loss ${r.loss}); the run may have diverged`,
      );
    if (isRoot(hooks)) writeJsonAtomic(path.join(dir, 'done.json'), result);
    reporter?.flush();
    log(
      `stage ${s.stage} done: loss ${r.loss.toFixed(4)}, validation perplexity ${result.valPpl.toFixed(3)}`,
    );
    stages.push(result);
  });
  const studentDir = path.join(cfg.out, 'student');
  checkFinite(student, studentDir);
  if (isRoot(hooks)) saveModel(studentDir, student, tokenizer);
  const tokens = stages.reduce((a, s) => a + s.tokens, 0);
  let scratch: DistillResult['scratch'] = null;
  if (cfg.scratchBaseline) scratch = trainScratch(cfg, teacher, trainSplit, tokens, ppl, hooks, resume, log);
  const result: DistillResult = { teacherPpl, initialPpl, initialKl, stages, scratch, tokens, studentDir };
  if (isRoot(hooks)) writeJsonAtomic(path.join(cfg.out, 'results.json'), result);
  reporter?.flush();
  barrier(hooks);
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
  const done = resume ? readDone(dir, log) : null;
  if (done) return { tokens: done.tokens, valPpl: done.valPpl };
  if (!resume && isRoot(hooks)) clearStageDir(dir, log);
  barrier(hooks);
  const scfg = studentConfigFor(teacher, {
    attentionLayers: cfg.student.attentionLayers,
    dState: cfg.student.dState ?? undefined,
    chunkSize: cfg.student.chunkSize,
    mixerClass: cfg.student.mixer,
    kernelLength: kernelLengthOf(cfg),
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
    dataParallel: hooks.dataParallel,
    cudaGraph: cfg.train.cudaGraph,
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
  if (isRoot(hooks)) writeJsonAtomic(path.join(dir, 'done.json'), res);
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
