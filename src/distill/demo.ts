// The built-in demo: pretrain a tiny Llama-style teacher on Moby Dick (bytes as tokens), then
// distill it into a Llamba student (sequential blocks with the discrete Mamba-2 mixer) through
// the three MOHAWK stages, and compare with the same student trained from scratch on as many
// tokens. CPU, a few minutes on 2 cores; nothing downloaded.

import fs from 'node:fs';
import path from 'node:path';
import { byteTokenizer } from '../io/tokenizer.js';
import { LlamaForCausalLM, type LlamaConfig } from '../models/llama.js';
import { saveModel } from '../models/load.js';
import { crossEntropy } from '../tensor/index.js';
import { mobyDick } from '../data/builtin.js';
import { TokenDataset, writeTokenSplits } from '../data/shards.js';
import { RandomWindows, toTensors, type Batch } from '../data/batches.js';
import { train } from '../train/index.js';
import { Random } from '../util/random.js';
import { validateConfig } from './config.js';
import { runDistill, validationPerplexity, type DistillResult } from './pipeline.js';

export interface DemoOptions {
  out: string;
  /** scale every token budget (tests use a small one) */
  scale?: number;
  seed?: number;
  progress?: boolean;
  log?: (line: string) => void;
}

export interface DemoResult extends DistillResult {
  teacherTokens: number;
  seconds: number;
}

export const DEMO_TEACHER: Omit<LlamaConfig, 'vocabSize' | 'bosTokenId' | 'eosTokenId'> = {
  hiddenSize: 64,
  intermediateSize: 192,
  numLayers: 2,
  numHeads: 4,
  numKvHeads: 2,
  headDim: 16,
  rmsNormEps: 1e-5,
  ropeTheta: 10000,
  maxPositionEmbeddings: 1024,
  tieWordEmbeddings: true,
  attentionBias: false,
  mlpBias: false,
};

export function runDemo(o: DemoOptions): DemoResult {
  const t0 = performance.now();
  const log = o.log ?? ((l: string) => console.error(l));
  const scale = o.scale ?? 1;
  const seed = o.seed ?? 0;
  const budget = (n: number) => Math.max(2048, Math.round((n * scale) / 2048) * 2048);
  fs.mkdirSync(o.out, { recursive: true });

  // data: Moby Dick as bytes, the last 5% held out
  const tok = byteTokenizer();
  const text = mobyDick();
  const cut = text.lastIndexOf('\n', Math.floor(text.length * 0.95));
  const dataDir = path.join(o.out, 'data');
  writeTokenSplits(
    dataDir,
    {
      train: { documents: [tok.encode(text.slice(0, cut), { addBos: false })] },
      val: { documents: [tok.encode(text.slice(cut), { addBos: false })] },
    },
    { vocabSize: tok.vocabSize, eosTokenId: tok.eosTokenId!, tokenizer: 'bytes' },
  );
  const ds = TokenDataset.open(dataDir);
  const data = { train: ds.split('train'), val: ds.split('val') };
  log(`corpus: Moby Dick, ${data.train.length} training and ${data.val.length} held-out byte tokens`);

  // the teacher: a tiny Llama pretrained with cross-entropy
  const teacher = new LlamaForCausalLM(
    { ...DEMO_TEACHER, vocabSize: tok.vocabSize, bosTokenId: tok.bosTokenId, eosTokenId: tok.eosTokenId },
    { rng: new Random(seed) },
  );
  const teacherTokens = budget(1_000_000);
  log(`pretraining the teacher (${teacher.numParameters()} parameters) on ${teacherTokens} tokens`);
  train({
    params: teacher,
    lossFn: (b: Batch) => {
      const { input, target } = toTensors(b);
      return crossEntropy(teacher.forward(input).logits, target);
    },
    data: new RandomWindows(data.train, 32, 64, seed + 1),
    budgetTokens: teacherTokens,
    batchTokens: 2048,
    optimizer: { lr: 3e-3, beta1: 0.9, beta2: 0.95, eps: 1e-8, weightDecay: 0.01 },
    schedule: { kind: 'cosine', warmupFraction: 0.05, minLrRatio: 0.1 },
    maxGradNorm: 1,
    progress: o.progress ?? true,
    label: 'teacher',
    resume: false,
  });
  const teacherDir = path.join(o.out, 'teacher');
  saveModel(teacherDir, teacher, tok);

  // distillation: stages 1, 2, 3 and a from-scratch baseline at the same total tokens
  const stage = (n: number, tokens: number, lr: number, extra: object = {}) => ({
    stage: n,
    tokens: budget(tokens),
    lr,
    ...extra,
  });
  const cfg = validateConfig(
    {
      teacher: teacherDir,
      out: path.join(o.out, 'distill'),
      seed,
      student: { chunkSize: 32, alphaInit: 0.9 },
      data: { train: [dataDir], valTokens: 32768 },
      stageDefaults: {
        batchTokens: 2048,
        microBatch: 32,
        seqLen: 64,
        warmup: 0.05,
        decay: 0.3,
        schedule: 'wsd',
        clip: 1,
      },
      stages: [stage(1, 16_000, 2e-3), stage(2, 16_000, 2e-3), stage(3, 96_000, 2e-3, { temperature: 1 })],
      scratchBaseline: true,
    },
    '(demo config)',
    o.out,
  );
  const r = runDistill(cfg, {
    teacher: { model: teacher, tokenizer: tok },
    data,
    log,
    progress: o.progress ?? true,
  });
  void validationPerplexity;
  return { ...r, teacherTokens, seconds: (performance.now() - t0) / 1000 };
}
