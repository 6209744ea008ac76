// A tiny, deterministic training run shared by test/train.test.ts and the child process it kills
// (run as a script: `node --import tsx test/train-fixture.ts CONFIG_JSON`).
//
// Model: embedding (V, D) -> LayerNorm -> dropout -> Linear (D, V) with bias; loss = cross-entropy
// of the next token. Data: a fixed token stream in a prepared directory. Dropout draws its seed
// from the run's Random, so an exact resume also needs the RNG state restored.

import fs from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import {
  SequentialWindows,
  RandomWindows,
  TokenDataset,
  toTensors,
  writeTokenSplits,
  type Batch,
} from '../src/data/index.js';
import { Module } from '../src/nn/module.js';
import { Embedding, LayerNorm, Linear } from '../src/nn/layers.js';
import { crossEntropy, dropout, type Tensor } from '../src/tensor/index.js';
import { train, type TrainOptions, type TrainResult } from '../src/train/index.js';
import { Random } from '../src/util/random.js';

export const VOCAB = 24;
export const DIM = 8;

export class TinyLM extends Module {
  readonly emb: Embedding;
  readonly norm: LayerNorm;
  readonly out: Linear;

  constructor(seed = 0) {
    super();
    const rng = new Random(seed);
    this.emb = this.child('emb', new Embedding(VOCAB, DIM, { rng, std: 0.5 }));
    this.norm = this.child('norm', new LayerNorm(DIM));
    this.out = this.child('out', new Linear(DIM, VOCAB, { rng, bias: true }));
  }

  loss(b: Batch, rng: Random | null, p = 0.1): Tensor {
    const { input, target } = toTensors(b);
    let h = this.norm.forward(this.emb.forward(input));
    if (rng) h = dropout(h, p, rng.seed());
    return crossEntropy(this.out.forward(h), target);
  }
}

/** A token directory with a fixed pseudo-random stream (some structure, so the loss can fall). */
export function makeData(dir: string): string {
  if (fs.existsSync(path.join(dir, 'index.json'))) return dir;
  const rng = new Random(123);
  const docs: number[][] = [];
  for (let d = 0; d < 40; d++) {
    const doc: number[] = [];
    let t = rng.int(1, VOCAB);
    for (let i = 0; i < 50; i++) {
      doc.push(t);
      t = rng.uniform() < 0.7 ? ((t * 3 + 1) % (VOCAB - 1)) + 1 : rng.int(1, VOCAB);
    }
    docs.push(doc);
  }
  writeTokenSplits(
    dir,
    { train: { documents: docs } },
    { vocabSize: VOCAB, eosTokenId: 0, maxShardTokens: 300 },
  );
  return dir;
}

export interface RunConfig {
  data: string;
  checkpointDir?: string;
  metricsFile?: string;
  checkpointEvery?: number;
  /** SIGKILL this process after this step's metrics are written */
  killAtStep?: number;
  /** SIGKILL this process while writing the checkpoint of this step (files half written) */
  killInCheckpointAt?: number;
  /** micro-batch rows and tokens per step */
  batch?: number;
  batchTokens?: number;
  steps?: number;
  seqLen?: number;
  sampler?: 'random' | 'sequential';
  dropout?: boolean;
}

export function runTiny(
  c: RunConfig,
  extra: Partial<TrainOptions<Batch>> = {},
): { result: TrainResult; model: TinyLM } {
  const model = new TinyLM(1);
  const split = TokenDataset.open(c.data).split('train');
  const seqLen = c.seqLen ?? 8;
  const batch = c.batch ?? 4;
  const data =
    c.sampler === 'sequential'
      ? new SequentialWindows(split, batch, seqLen, { shuffle: true, seed: 5 })
      : new RandomWindows(split, batch, seqLen, 5);
  const rng = new Random(77);
  const batchTokens = c.batchTokens ?? batch * seqLen;
  const result = train<Batch>({
    params: model,
    lossFn: (b) => model.loss(b, c.dropout === false ? null : rng),
    data,
    rng,
    budgetTokens: (c.steps ?? 10) * batchTokens,
    batchTokens,
    optimizer: { lr: 0.05, weightDecay: 0.1 },
    schedule: { kind: 'wsd', warmupSteps: 2, decayFraction: 0.3 },
    checkpointDir: c.checkpointDir,
    checkpointEvery: c.checkpointEvery,
    metricsFile: c.metricsFile,
    progress: false,
    onStep: (m) => {
      if (m.step === c.killAtStep) process.kill(process.pid, 'SIGKILL');
    },
    beforeCommit: (tmp, step) => {
      fs.writeFileSync(path.join(tmp, 'config.json'), JSON.stringify({ step }));
      if (step === c.killInCheckpointAt) process.kill(process.pid, 'SIGKILL');
    },
    ...extra,
  });
  return { result, model };
}

if (process.argv[1] && path.resolve(process.argv[1]) === fileURLToPath(import.meta.url)) {
  runTiny(JSON.parse(process.argv[2]) as RunConfig);
}
