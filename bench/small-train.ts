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
// speed-up, the captured graphs' node counts, the largest relative difference between the two
// runs' step losses (the same kernels run either way: expect ~0), and the kernel time of one
// eager step measured launch by launch (events around each kernel): with graphs the step cannot
// be faster than that, so graph ms close to it means the GPU's work, not the host, is the limit.
// Run: node --import tsx bench/small-train.ts [--model phi-17m|stories260k|both] [--steps N]
//      [--bf16] [--micro B] [--seq T] [--accum A] [--cpu] [--name N] [--repeat off+on]
//      (BENCH_OUT=dir writes small-train-NAME.md, NAME from the options unless given)

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
import {
  castParameters,
  setAutocast,
  setBackend,
  withCastParameters,
  type Tensor,
} from '../src/tensor/index.js';
import { AdamW, train, type TrainResult } from '../src/train/index.js';
import { DeviceStep } from '../src/train/step.js';
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
    // names the written file: small-train-NAME.md (default from the options, so runs do not overwrite)
    name: { type: 'string' },
    // a smoke test of this script on the CPU backend (its graph recorder), at small --micro/--seq
    cpu: { type: 'boolean', default: false },
    // extra runs, each compared step by step with the first eager run: e.g. off,on for a second
    // eager and a second graph run (tells run-to-run differences from a replay fault)
    repeat: { type: 'string', default: '' },
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
const repeatModes = values.repeat
  ? values.repeat.split(/[,+]/).map((m) => {
      if (m !== 'on' && m !== 'off') throw new Error(`--repeat expects on/off modes joined by + or ,, got ${values.repeat}`);
      return m as 'on' | 'off';
    })
  : [];
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
  /** one eager step under the kernel profiler */
  kernelMs: number;
  launches: number;
  topKernels: [string, number][];
  /** the step losses of both runs, for a look at where they part */
  losses: { eager: number[]; graph: number[] };
  /** --repeat: each extra run's mode, its largest relative loss difference to the eager run, its losses */
  repeats: { mode: 'on' | 'off'; maxLossRelDiff: number; losses: number[] }[];
}

const median = (xs: number[]) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)];

function dims(shape: Shape): { micro: number; seq: number; accum: number } {
  return {
    micro: Number(values.micro ?? shape.micro),
    seq: Number(values.seq ?? shape.seq),
    accum: Number(values.accum ?? shape.accum),
  };
}

/** teacher, student and the stage-3 loss at this shape; fn's result, everything disposed after */
function withModels<R>(shape: Shape, fn: (student: CausalLM, loss: (b: Batch) => Tensor) => R): R {
  const teacher = shape.build(gpu);
  teacher.setTrainable(() => true, false);
  const student = transferStudent(teacher, { chunkSize: 64, alphaInit: 0.9 });
  const casts = values.bf16 ? castParameters(teacher.parameters(), 'bf16') : null;
  try {
    return withCastParameters(casts, () =>
      fn(student, (b) => {
        const { input, target } = toTensors(b);
        return stage3Loss(teacher, student, input, target, { temperature: 1, ceWeight: 0 }).loss;
      }),
    );
  } finally {
    casts?.dispose();
    student.dispose();
    teacher.dispose();
  }
}

const adamw = { lr: 5e-4, beta1: 0.9, beta2: 0.95, eps: 1e-8, weightDecay: 0.1 };

function runOne(shape: Shape, mode: 'on' | 'off'): TrainResult {
  const { micro, seq, accum } = dims(shape);
  return withModels(shape, (student, lossFn) =>
    train<Batch>({
      params: student,
      lossFn,
      data: randomBatches(micro, seq, shape.vocab),
      budgetTokens: steps * micro * seq * accum,
      batchTokens: micro * seq * accum,
      optimizer: adamw,
      schedule: { kind: 'wsd', warmupFraction: 0.05, decayFraction: 0.3 },
      maxGradNorm: 1,
      cudaGraph: mode,
      progress: false,
      warn: (l) => console.error(l),
    }),
  );
}

/**
 * One eager step (the trainer's device step: gradients, then the update) under the kernel
 * profiler, after a warm-up step: kernel time (the sum of the launches' event times), launches,
 * and the largest kernel families.
 */
function profileStep(shape: Shape): { ms: number; launches: number; top: [string, number][] } {
  const { micro, seq, accum } = dims(shape);
  return withModels(shape, (student, lossFn) => {
    const trained = student.namedParameters();
    const optimizer = new AdamW(trained, adamw);
    const step = new DeviceStep<Batch>({
      lossFn,
      trained,
      optimizer,
      accum,
      backend: gpu,
      mode: 'off',
      note: () => {},
      label: 'profile',
    });
    const data = randomBatches(micro, seq, shape.vocab);
    const batches = () => Array.from({ length: accum }, () => data.next());
    try {
      step.gradients(batches(), 0);
      step.update(adamw.lr, 1);
      if (values.cpu) return { ms: NaN, launches: NaN, top: [] };
      const { kernels } = gpu.profile(() => {
        step.gradients(batches(), 1);
        step.update(adamw.lr, 1);
      });
      const fam = new Map<string, number>();
      for (const k of kernels) {
        const f = k.name.replace(/_(f32|bf16|f16).*$/, '');
        fam.set(f, (fam.get(f) ?? 0) + k.ms);
      }
      return {
        ms: kernels.reduce((a, k) => a + k.ms, 0),
        launches: kernels.reduce((a, k) => a + k.calls, 0),
        top: [...fam.entries()].sort((a, b) => b[1] - a[1]).slice(0, 8),
      };
    } finally {
      step.dispose();
      optimizer.dispose();
      student.zeroGrad();
    }
  });
}

const rows: Row[] = [];
for (const shape of which) {
  const eager = runOne(shape, 'off');
  const graph = runOne(shape, 'on');
  // steps after the warm-up (eager) and the capture step
  const tail = (r: TrainResult) => r.history.slice(3).map((m) => m.tokens_per_s);
  const eagerTokS = median(tail(eager));
  const graphTokS = median(tail(graph));
  const relDiff = (other: TrainResult) => {
    let d = 0;
    eager.history.forEach((m, i) => {
      const g = other.history[i].loss;
      d = Math.max(d, Math.abs(g - m.loss) / Math.max(1e-12, Math.abs(m.loss)));
    });
    return d;
  };
  const maxLossRelDiff = relDiff(graph);
  const repeats = repeatModes.map((mode) => {
    const r = runOne(shape, mode);
    return { mode, maxLossRelDiff: relDiff(r), losses: r.history.map((m) => m.loss) };
  });
  const tokensPerStep = eager.tokens / eager.steps;
  const prof = profileStep(shape);
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
    kernelMs: prof.ms,
    launches: prof.launches,
    topKernels: prof.top,
    losses: { eager: eager.history.map((m) => m.loss), graph: graph.history.map((m) => m.loss) },
    repeats,
  });
}

const lines = [
  `# small-model stage-3 training steps, CUDA graphs off / on: ${new Date().toISOString().slice(0, 10)}, ${gpu.describe()}`,
  `${steps} steps per run, median of steps 4..${steps}; ${values.bf16 ? 'bf16 autocast' : 'f32'}; random weights; ` +
    `micro-batch x accumulation: ${which.map((s) => `${s.name} ${dims(s).micro} x ${dims(s).seq} x ${dims(s).accum}`).join(', ')}`,
  '',
  '| model | tokens/step | eager tok/s | graph tok/s | speed-up | eager ms/step | graph ms/step | kernel ms/step (launches) | graph nodes (grad + update) | max rel. loss diff |',
  '| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |',
  ...rows.map(
    (r) =>
      `| ${r.model} | ${r.tokensPerStep} | ${r.eagerTokS.toFixed(0)} | ${r.graphTokS.toFixed(0)} | ${r.speedup.toFixed(2)}x | ` +
      `${r.eagerMs.toFixed(2)} | ${r.graphMs.toFixed(2)} | ${r.kernelMs.toFixed(2)} (${r.launches}) | ` +
      `${r.nodes ? `${r.nodes.gradients} + ${r.nodes.update}` : 'not captured'} | ${r.maxLossRelDiff.toExponential(1)} |`,
  ),
  '',
  ...rows.flatMap((r) =>
    r.repeats.map(
      (x, i) => `- ${r.model}, repeat ${i + 1} (graphs ${x.mode}): max rel. loss diff to the first eager run ${x.maxLossRelDiff.toExponential(1)}`,
    ),
  ),
  '',
  'kernel time of the eager step by family (ms):',
  ...rows.map((r) => `- ${r.model}: ${r.topKernels.map(([n, ms]) => `${n} ${ms.toFixed(2)}`).join(', ')}`),
];
console.log(lines.join('\n'));
console.log(JSON.stringify({ rows }));
if (process.env.BENCH_OUT) {
  const name =
    values.name ??
    [
      values.model !== 'both' ? values.model : '',
      values.micro ? `m${values.micro}` : '',
      values.seq ? `t${values.seq}` : '',
      values.accum ? `a${values.accum}` : '',
      values.bf16 ? 'bf16' : 'f32',
    ]
      .filter((x) => x)
      .join('-');
  // one file per run (the JSON is in the log): device calls bring back a limited number of files
  writeFileSync(join(process.env.BENCH_OUT, `small-train-${name}.md`), lines.join('\n') + '\n');
}
