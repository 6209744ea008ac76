// Small models without the launch tax (issue 18, item 3): MOHAWK stage-3 training steps through
// the trainer (train(): losses, backward, the global norm read, clipping, AdamW) at the shapes of
// the shared small teachers, with the step captured as CUDA graphs and replayed, and eagerly, in
// one run. Random weights (the teachers' shapes, not their files, which stay off the GPU machine).
//
//   phi-17m:     Phi teacher d 384, 6 layers, 6 heads (partial rotary 0.5), MLP 1536, vocab 8192
//                -> Phi-Mamba student, chunk 64; configs/phi-17m.yaml stage 3: micro-batch
//                8 x 256, 16384 tokens per step (8 micro-batches)
//   stories260K: Llama-2 teacher d 64, 5 layers, 8 / 4 heads, SwiGLU 172, vocab 512, tied
//                -> Llamba student, chunk 64; configs/stories260k.yaml stage 3: 16 x 256,
//                8192 tokens per step (2 micro-batches)
//
// Prints tokens/s with graphs off and on (the median step after warm-up and capture), the
// speed-up, the captured graphs' node counts, and the largest relative difference between the
// two runs' step losses (the same kernels run either way: expect ~0).
// Run: node --import tsx bench/small-train.ts [--model phi-17m|stories260k|both] [--steps N]
//      [--bf16] [--micro B] [--seq T] [--accum A] [--cpu]  (BENCH_OUT=dir writes small-train.{md,json})

import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { parseArgs } from 'node:util';
import { CpuBackend } from '../src/backends/cpu/index.js';
import type { CudaBackend } from '../src/backends/cuda/index.js';
import type { Batch, BatchSource } from '../src/data/batches.js';
import { toTensors } from '../src/data/batches.js';
import { stage3Loss } from '../src/distill/stages.js';
import { transferStudent } from '../src/distill/transfer.js';
import { LlamaForCausalLM } from '../src/models/llama.js';
import type { CausalLM } from '../src/models/types.js';
import { castParameters, setAutocast, setBackend, withCastParameters } from '../src/tensor/index.js';
import { train, type TrainResult } from '../src/train/index.js';
import { Random } from '../src/util/random.js';
import { openCuda, phiTeacher, randomizeParameters } from './gpu-util.js';

const { values } = parseArgs({
  options: {
    model: { type: 'string', default: 'both' },
    steps: { type: 'string', default: '20' },
    bf16: { type: 'boolean', default: false },
    micro: { type: 'string' },
    seq: { type: 'string' },
    accum: { type: 'string' },
    // a smoke test of this script on the CPU backend (its graph recorder), at small --micro/--seq
    cpu: { type: 'boolean', default: false },
  },
});

interface Shape {
  name: string;
  micro: number;
  seq: number;
  accum: number;
  vocab: number;
  build: (gpu: CudaBackend) => CausalLM;
}

const SHAPES: Shape[] = [
  {
    name: 'phi-17m',
    micro: 8,
    seq: 256,
    accum: 8,
    vocab: 8192,
    build: (gpu) => phiTeacher(gpu, { layers: 6, d: 384, heads: 6, vocab: 8192, maxPositions: 2048 }),
  },
  {
    name: 'stories260k',
    micro: 16,
    seq: 256,
    accum: 2,
    vocab: 512,
    build: (gpu) => {
      const t = new LlamaForCausalLM(
        {
          vocabSize: 512,
          hiddenSize: 64,
          intermediateSize: 172,
          numLayers: 5,
          numHeads: 8,
          numKvHeads: 4,
          headDim: 8,
          rmsNormEps: 1e-5,
          ropeTheta: 10000,
          maxPositionEmbeddings: 512,
          tieWordEmbeddings: true,
          attentionBias: false,
          mlpBias: false,
          bosTokenId: 1,
          eosTokenId: 2,
        },
        { deferInit: true },
      );
      randomizeParameters(gpu, t);
      return t;
    },
  },
];

const which = values.model === 'both' ? SHAPES : SHAPES.filter((s) => s.name === values.model);
if (!which.length) throw new Error(`--model expects phi-17m, stories260k or both, got ${values.model}`);
const steps = Number(values.steps);
if (!(Number.isInteger(steps) && steps >= 4))
  throw new Error(`--steps (${values.steps}) must be an integer >= 4`);

/** random token windows from a counter (the same stream for both modes) */
function randomBatches(batch: number, seqLen: number, vocab: number): BatchSource<Batch> {
  let i = 0;
  return {
    next: () => {
      const r = new Random(1000 + i++);
      const input = new Int32Array(batch * seqLen);
      const target = new Int32Array(batch * seqLen);
      for (let k = 0; k < input.length; k++) {
        input[k] = r.int(0, vocab);
        target[k] = r.int(0, vocab);
      }
      return { batch, seqLen, input, target };
    },
    state: () => ({ i }),
    restore: (s) => {
      i = (s as { i: number }).i;
    },
  };
}

const gpu = values.cpu ? (new CpuBackend() as unknown as CudaBackend) : openCuda();
setBackend(gpu);
if (values.bf16) setAutocast('bf16');

interface Row {
  model: string;
  tokensPerStep: number;
  eagerTokS: number;
  graphTokS: number;
  speedup: number;
  nodes: { gradients: number; update: number } | null;
  maxLossRelDiff: number;
  eagerMs: number;
  graphMs: number;
}

const median = (xs: number[]) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)];

function runOne(shape: Shape, mode: 'on' | 'off'): TrainResult {
  const micro = Number(values.micro ?? shape.micro);
  const seq = Number(values.seq ?? shape.seq);
  const accum = Number(values.accum ?? shape.accum);
  const teacher = shape.build(gpu);
  teacher.setTrainable(() => true, false);
  const student = transferStudent(teacher, { chunkSize: 64, alphaInit: 0.9 });
  const casts = values.bf16 ? castParameters(teacher.parameters(), 'bf16') : null;
  const notes: string[] = [];
  try {
    return withCastParameters(casts, () =>
      train<Batch>({
        params: student,
        lossFn: (b) => {
          const { input, target } = toTensors(b);
          return stage3Loss(teacher, student, input, target, { temperature: 1, ceWeight: 0 }).loss;
        },
        data: randomBatches(micro, seq, shape.vocab),
        budgetTokens: steps * micro * seq * accum,
        batchTokens: micro * seq * accum,
        optimizer: { lr: 5e-4, beta1: 0.9, beta2: 0.95, eps: 1e-8, weightDecay: 0.1 },
        schedule: { kind: 'wsd', warmupFraction: 0.05, decayFraction: 0.3 },
        maxGradNorm: 1,
        cudaGraph: mode,
        progress: false,
        warn: (l) => {
          notes.push(l);
          console.error(l);
        },
      }),
    );
  } finally {
    casts?.dispose();
    student.dispose();
    teacher.dispose();
  }
}

const rows: Row[] = [];
for (const shape of which) {
  const eager = runOne(shape, 'off');
  const graph = runOne(shape, 'on');
  // steps after the warm-up (eager) and the capture step
  const tail = (r: TrainResult) => r.history.slice(3).map((m) => m.tokens_per_s);
  const eagerTokS = median(tail(eager));
  const graphTokS = median(tail(graph));
  let maxLossRelDiff = 0;
  eager.history.forEach((m, i) => {
    const g = graph.history[i].loss;
    maxLossRelDiff = Math.max(maxLossRelDiff, Math.abs(g - m.loss) / Math.max(1e-12, Math.abs(m.loss)));
  });
  const tokensPerStep = eager.tokens / eager.steps;
  rows.push({
    model: shape.name,
    tokensPerStep,
    eagerTokS,
    graphTokS,
    speedup: graphTokS / eagerTokS,
    nodes: graph.graphs,
    maxLossRelDiff,
    eagerMs: (tokensPerStep / eagerTokS) * 1000,
    graphMs: (tokensPerStep / graphTokS) * 1000,
  });
}

const lines = [
  `# small-model stage-3 training steps, CUDA graphs off / on: ${new Date().toISOString().slice(0, 10)}, ${gpu.describe()}`,
  `${steps} steps per run, median of steps 4..${steps}; ${values.bf16 ? 'bf16 autocast' : 'f32'}; random weights`,
  '',
  '| model | tokens/step | eager tok/s | graph tok/s | speed-up | eager ms/step | graph ms/step | graph nodes (grad + update) | max rel. loss diff |',
  '| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |',
  ...rows.map(
    (r) =>
      `| ${r.model} | ${r.tokensPerStep} | ${r.eagerTokS.toFixed(0)} | ${r.graphTokS.toFixed(0)} | ${r.speedup.toFixed(2)}x | ` +
      `${r.eagerMs.toFixed(2)} | ${r.graphMs.toFixed(2)} | ${r.nodes ? `${r.nodes.gradients} + ${r.nodes.update}` : 'not captured'} | ` +
      `${r.maxLossRelDiff.toExponential(1)} |`,
  ),
];
console.log(lines.join('\n'));
console.log(JSON.stringify({ rows }));
if (process.env.BENCH_OUT) {
  writeFileSync(join(process.env.BENCH_OUT, 'small-train.md'), lines.join('\n') + '\n');
  writeFileSync(join(process.env.BENCH_OUT, 'small-train.json'), JSON.stringify({ rows }, null, 2));
}
