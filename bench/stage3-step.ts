// A MOHAWK stage-3 step at the performance issue's shapes: teacher Phi-1.5 (24 layers, d 2048,
// 32 heads, vocab 51200, partial rotary 0.5), student Phi-Mamba 1.5B (the same blocks with the
// discrete Mamba-2 mixer, d_state 64, chunk 128), batch 4 x 2048 tokens, KL loss, AdamW, bf16
// matmuls with f32 accumulation. Random weights. Prints tokens/s, MFU (matmul FLOPs of the
// teacher forward and the student forward + backward over 790 TFLOP/s), step time, peak memory,
// and the time per kernel family of one profiled step.
// --model llama3: a Llama-3.2-1B-shaped teacher (d 2048, 16 layers, 32 / 8 heads, SwiGLU 8192, vocab
// 128256, tied) into its Llamba student (the same blocks with the mixer); MFU counts the tied head's
// matmul once per model. --fused: the loss fused with both heads (linearKLDivergence), chunked so the
// full (tokens x vocab) logits never exist.
// The frozen teacher holds its linear weights in bf16, as `mohawk distill` does under precision bf16
// (--teacher-f32: f32 weights plus bf16 copies made once, the earlier setup). After the profile, a
// memory breakdown of one more step: the bytes live at each phase and, at the end of the forward
// pass, the tensors the student's graph keeps for backward, grouped by the op that made them.
// --trainer: the timed steps are the trainer's (src/train/step.ts, what `mohawk distill` runs): the
// gradients and the update (global norm, clipping at 1, AdamW from device scalars) captured as two
// CUDA graphs after a warm-up step and replayed; the loss read once per step. Without it the step
// is the eager loop below (item() after the forward, AdamW.step), as in the earlier figures. The
// profile and the memory breakdown always come from the eager loop.
// Run: node --import tsx bench/stage3-step.ts [--model phi|llama3] [--fused] [--layers N] [--batch B]
//      [--seq T] [--steps S] [--teacher-f32] [--unfused] [--gelu-epilogue] [--trainer] [--split-mixer]
//      [--unfused-norm-grad] [--unfused-norm-cast] [--gemm-shapes] (BENCH_OUT=dir also writes
//      stage3-step[-NAME].{md,json})
// --gemm-shapes: the profile names each GEMM shape apart, and a table gives each shape's TFLOP/s.
// MOHAWK_GEMM_TUNE=N (the backend's autotuning) adds the tuned products: the candidate picked and
// its time against the heuristic's first choice.

import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { parseArgs } from 'node:util';
import { DTYPE_BYTES, type DeviceBuffer } from '../src/backends/backend.js';
import { CudaBackend } from '../src/backends/cuda/index.js';
import { stage3Loss } from '../src/distill/stages.js';
import { studentConfigFor } from '../src/distill/transfer.js';
import { StudentLM } from '../src/models/phi-mamba.js';
import {
  castParameters,
  scope,
  setAutocast,
  setBackend,
  tensor,
  withCastParameters,
  type Tensor,
} from '../src/tensor/index.js';
import { setWeightCopies } from '../src/tensor/index.js';
import { AdamW } from '../src/train/optimizer.js';
import { DeviceStep } from '../src/train/step.js';
import { toTensors, type Batch } from '../src/data/batches.js';
import { Random } from '../src/util/random.js';
import { llama3Teacher, phiTeacher, randomizeParameters } from './gpu-util.js';

const { values } = parseArgs({
  options: {
    model: { type: 'string', default: 'phi' },
    fused: { type: 'boolean', default: false },
    'gemm-shapes': { type: 'boolean', default: false },
    name: { type: 'string', default: '' },
    layers: { type: 'string' },
    batch: { type: 'string', default: '4' },
    seq: { type: 'string', default: '2048' },
    steps: { type: 'string', default: '4' },
    d: { type: 'string', default: '2048' },
    vocab: { type: 'string' },
    fp32: { type: 'boolean', default: false },
    'teacher-f32': { type: 'boolean', default: false },
    // the glue fusions off (MOHAWK_FUSED_GLUE=0): the gate with its D term, the MLP products
    unfused: { type: 'boolean', default: false },
    // the Phi MLP's tanh GELU in cuBLASLt's epilogues (MOHAWK_GELU_EPILOGUE=1; off by default)
    'gelu-epilogue': { type: 'boolean', default: false },
    // the timed steps through the trainer's device step with CUDA graphs
    trainer: { type: 'boolean', default: false },
    // the mixer's in_proj output split by copies, as before (MOHAWK_MIXER_INPLACE=0)
    'split-mixer': { type: 'boolean', default: false },
    // norms' and the SSD scan's input gradients added by a separate pass, as before
    // (MOHAWK_NORM_INPLACE=0, MOHAWK_SSD_ADD_GX=0)
    'unfused-norm-grad': { type: 'boolean', default: false },
    // norms' outputs cast to bf16 by the products, and residual add + RMSNorm as two kernels, as
    // before (MOHAWK_NORM_CAST16=0, MOHAWK_FUSED_ADD_NORM=0)
    'unfused-norm-cast': { type: 'boolean', default: false },
  },
});
if (values['unfused-norm-cast']) {
  process.env.MOHAWK_NORM_CAST16 = '0';
  process.env.MOHAWK_FUSED_ADD_NORM = '0';
}
if (values['split-mixer']) process.env.MOHAWK_MIXER_INPLACE = '0';
if (values['unfused-norm-grad']) {
  process.env.MOHAWK_NORM_INPLACE = '0';
  process.env.MOHAWK_SSD_ADD_GX = '0';
}
if (values.unfused) process.env.MOHAWK_FUSED_GLUE = '0';
if (values['gelu-epilogue']) process.env.MOHAWK_GELU_EPILOGUE = '1';
const llama = values.model === 'llama3';
if (!llama && values.model !== 'phi') throw new Error(`--model expects phi or llama3, got ${values.model}`);
const L = Number(values.layers ?? (llama ? 16 : 24));
const B = Number(values.batch);
const T = Number(values.seq);
const D = Number(values.d);
const V = Number(values.vocab ?? (llama ? 128256 : 51200));
const H = 32;
const steps = Number(values.steps);

const gpu = new CudaBackend();
setBackend(gpu);
await gpu.warmup({ attentionHeadDims: [D / H] });
if (!values.fp32) setAutocast('bf16');

const t0 = performance.now();
// as the pipeline loads the teacher under precision bf16: linear weights held in bf16 only
const linearDtype = values.fp32 || values['teacher-f32'] ? undefined : ('bf16' as const);
const teacher = llama
  ? llama3Teacher(gpu, { layers: L, d: D, vocab: V, maxPositions: T, linearDtype })
  : phiTeacher(gpu, { layers: L, d: D, heads: H, vocab: V, maxPositions: T, linearDtype });
teacher.setTrainable(() => true, false);
const scfg = studentConfigFor(teacher, { chunkSize: 128 });
const student = new StudentLM(scfg, { deferInit: true });
randomizeParameters(gpu, student);
const opt = new AdamW(student.namedParameters(), {
  lr: 1e-4,
  beta1: 0.9,
  beta2: 0.95,
  eps: 1e-8,
  weightDecay: 0.1,
});
gpu.synchronize();
const buildS = (performance.now() - t0) / 1000;

// matmul FLOPs per token: the linear layers (2 per multiply-add), teacher forward once, student 3x;
// Phi: attention 4 d^2 + MLP 8 d^2; Llama-3: q, o d^2 each, k, v d^2/4 each, SwiGLU 3 x 4 d^2
const tParams = L * (llama ? 2.5 * D * D + 12 * D * D : 4 * D * D + 8 * D * D) + D * V;
const m = scfg.mixer;
const dInner = m.expand * D;
const sParams =
  L * (D * (2 * dInner + 2 * m.nQkHeads * m.dState + m.nVHeads) + dInner * D + (llama ? 12 : 8) * D * D) +
  D * V;
const flopsPerToken = 2 * tParams + 6 * sParams;
const rng = new Random(5);
const hostIds = () => Int32Array.from({ length: B * T }, () => rng.int(0, V));
const ids = () => tensor(hostIds(), [B, T], 'i32');

// as the pipeline does under bf16: the frozen teacher's other f32 matrices (a tied head) rounded once
const teacherCasts = values.fp32 ? null : castParameters(teacher.parameters(), 'bf16');
// optim: as the trainer's device step does, the student's products read the bf16 weight copies
// that the fused AdamW writes (none with MOHAWK_FUSED_OPTIM=0 or MOHAWK_WEIGHT_COPIES=0: a cast
// per weight per step). BENCH_DEVICE_STEP=1: each step is the trainer's (src/train/step.ts,
// eager): persistent gradient buffers, the global norm read and clipping at 1, AdamW from device
// scalars, the non-finite probe read; the memory breakdown is then skipped.
const studentCopies = values.fp32 ? null : opt.weightCopies('bf16');
setWeightCopies(studentCopies);
/** the trainer's step at these shapes (src/train/step.ts): eager ('off') or as CUDA graphs ('on') */
const makeDeviceStep = (mode: 'on' | 'off') =>
  new DeviceStep<Batch>({
    lossFn: (b) => {
      const { input, target } = toTensors(b);
      return withCastParameters(teacherCasts, () =>
        stage3Loss(teacher, student, input, target, { temperature: 1, ceWeight: 0 }, null, {
          fusedHead: values.fused,
        }),
      ).loss;
    },
    trained: student.namedParameters(),
    optimizer: opt,
    accum: 1,
    backend: gpu,
    mode,
    note: (l) => console.error(l),
    label: 'stage3-step',
  });
const deviceStep = process.env.BENCH_DEVICE_STEP === '1' ? makeDeviceStep('off') : null;
let deviceSteps = 0;

/** the trainer's step: gradients, the norm read, clipping at 1 (as train() clips), the update and its probe read */
function trainerStep(ds: DeviceStep<Batch>): number {
  const st = ds.gradients([{ batch: B, seqLen: T, input: hostIds(), target: hostIds() }], deviceSteps++);
  const norm = Math.sqrt(st.sumSquares);
  if (ds.update(1e-4, norm > 1 ? 1 / (norm + 1e-6) : 1))
    throw new Error('stage3-step: a weight is not finite');
  return st.losses[0];
}

interface Probe {
  /** after the forward pass (teacher and student), before backward */
  forward(loss: Tensor): void;
  backward(): void;
  optimizer(): void;
}

function step(probe?: Probe): number {
  if (deviceStep) return trainerStep(deviceStep);
  const loss = scope(() => {
    const input = ids();
    const target = ids();
    const r = withCastParameters(teacherCasts, () =>
      stage3Loss(teacher, student, input, target, { temperature: 1, ceWeight: 0 }, null, {
        fusedHead: values.fused,
      }),
    );
    const value = r.loss.item();
    probe?.forward(r.loss);
    r.loss.backward(undefined, { freeGraph: true });
    probe?.backward();
    return value;
  });
  opt.step(1e-4);
  probe?.optimizer();
  student.zeroGrad();
  return loss;
}

/** --trainer: the trainer's step, captured as graphs on its second call, replayed after */
const graphStep = values.trainer ? makeDeviceStep('on') : null;

const GiB = 2 ** 30;
const bytesOf = (ts: Iterable<Tensor>) => {
  let n = 0;
  for (const t of ts) n += t.disposed ? 0 : t.size * DTYPE_BYTES[t.dtype];
  return n;
};

/**
 * Tensors reachable from the loss through recorded graph inputs, live, grouped by the op that made
 * them and their dtype ("parameter" for leaves); one entry per buffer (views share one).
 */
function graphBreakdown(root: Tensor): Map<string, number> {
  const seen = new Set<Tensor>();
  const buffers = new Set<unknown>();
  const groups = new Map<string, number>();
  const stack = [root];
  const params = new Set(student.parameters());
  while (stack.length) {
    const t = stack.pop()!;
    if (seen.has(t)) continue;
    seen.add(t);
    for (const i of t.node?.inputs ?? []) stack.push(i);
    if (t.disposed || params.has(t) || buffers.has(t.buffer)) continue;
    buffers.add(t.buffer);
    const weight = t.node?.op === 'cast' && params.has(t.node.inputs[0]);
    const key = `${t.node ? t.node.op : 'leaf'}${weight ? ' (weights)' : ''} ${t.dtype}`;
    groups.set(key, (groups.get(key) ?? 0) + t.size * DTYPE_BYTES[t.dtype]);
  }
  return groups;
}

/** one more step with probes: bytes live at each phase and what the student's graph holds */
function memoryBreakdown(): string[] {
  gpu.synchronize();
  const live = () => gpu.memoryStats().liveBytes;
  const studentParams = bytesOf(student.parameters());
  const teacherParams = bytesOf(teacher.parameters());
  const start = live();
  gpu.resetPeak();
  const phase: { what: string; bytes: number }[] = [];
  let graph = new Map<string, number>();
  let graphTotal = 0;
  step({
    forward(loss) {
      const now = live();
      graph = graphBreakdown(loss);
      graphTotal = [...graph.values()].reduce((a, b) => a + b, 0);
      phase.push({ what: 'after the forward pass (teacher + student), before backward', bytes: now });
      phase.push({ what: `peak so far`, bytes: gpu.memoryStats().peakBytes });
    },
    backward() {
      phase.push({ what: 'after backward (gradients live)', bytes: live() });
      phase.push({ what: 'peak so far', bytes: gpu.memoryStats().peakBytes });
    },
    optimizer() {
      phase.push({ what: 'after the optimizer step', bytes: live() });
    },
  });
  const fwd = phase[0].bytes;
  const rows = [
    ['student parameters (f32)', studentParams],
    ['AdamW moments (f32, 2 per parameter)', 2 * studentParams],
    [`teacher parameters (${linearDtype ? 'bf16 linear weights' : 'f32'})`, teacherParams],
    ['at the start of a step (the above + cast copies of the teacher + caches)', start],
    ...phase.map((p) => [p.what, p.bytes] as [string, number]),
    ['forward: graph tensors reachable from the loss (below)', graphTotal],
    [
      'forward: other new bytes (saved by closures: scan states, norm statistics; teacher logits)',
      fwd - start - graphTotal,
    ],
  ] as [string, number][];
  const sorted = [...graph.entries()].sort((a, b) => b[1] - a[1]);
  return [
    '',
    'memory of one step (live bytes, GiB):',
    '| what | GiB |',
    '| --- | ---: |',
    ...rows.map(([w, b]) => `| ${w} | ${(b / GiB).toFixed(2)} |`),
    '',
    'the student graph at the end of the forward pass, by producing op and dtype:',
    '| op dtype | GiB |',
    '| --- | ---: |',
    ...sorted.map(([k, b]) => `| ${k} | ${(b / GiB).toFixed(2)} |`),
  ];
}

const rows: { what: string; value: string }[] = [];
const timed = graphStep ? () => trainerStep(graphStep) : () => step();
timed(); // warm-up: kernels, allocator
if (graphStep) {
  timed(); // the capture
  timed(); // the first replay on new data, checked against an eager forward (DeviceStep.verify)
}
gpu.synchronize();
gpu.resetPeak();
const times: number[] = [];
let loss = 0;
for (let i = 0; i < steps; i++) {
  const s = performance.now();
  loss = timed();
  gpu.synchronize();
  times.push(performance.now() - s);
}
times.sort((a, b) => a - b);
const ms = times[Math.floor(times.length / 2)];
const tokS = (B * T) / (ms / 1000);
const mfu = (flopsPerToken * tokS) / 790e12;
const peak = gpu.memoryStats().peakBytes / 2 ** 30;
// what the caching allocator held from the driver at most (live, cached free blocks, and the
// trainer's graph pools, whose blocks stay out of the live count between replays)
const reserved = gpu.allocatorStats().peakReservedBytes / 2 ** 30;
rows.push(
  {
    what: 'shape',
    value:
      `teacher ${llama ? 'Llama-3' : 'Phi'} ${L} x d${D} vocab ${V}, student ${llama ? 'Llamba' : 'Phi-Mamba'} ` +
      `(d_state ${m.dState}, chunk ${m.chunkSize}), batch ${B} x ${T}, ${values.fp32 ? 'f32' : 'bf16 autocast'}, ` +
      `${values.fused ? 'fused chunked head + KL' : 'full logits + KL'}, teacher linear weights ${linearDtype ?? 'f32'}, ` +
      `glue fusions ${process.env.MOHAWK_FUSED_GLUE === '0' ? 'off' : 'on'}, ` +
      `GELU epilogue ${process.env.MOHAWK_GELU_EPILOGUE === '1' ? 'on' : 'off'}, ` +
      (graphStep
        ? `the trainer's step (${graphStep.graphs ? `CUDA graphs, ${graphStep.nodes.gradients} + ${graphStep.nodes.update} kernels` : `eager: ${graphStep.offReason}`}, clipping at 1)`
        : 'the eager loop (AdamW.step, no clipping)'),
  },
  {
    what: 'parameters',
    value: `teacher ${(teacher.numParameters() / 1e9).toFixed(2)}B, student ${(student.numParameters() / 1e9).toFixed(2)}B`,
  },
  {
    what: 'step time (median)',
    value: `${ms.toFixed(0)} ms (of ${steps}; all: ${times.map((t) => t.toFixed(0)).join(', ')})`,
  },
  { what: 'tokens/s', value: tokS.toFixed(0) },
  { what: 'MFU (linear-layer matmul FLOPs / 790 TFLOP/s)', value: `${(mfu * 100).toFixed(1)}%` },
  { what: 'peak memory', value: `${peak.toFixed(1)} GiB` },
  {
    what: 'peak reserved (the allocator: live + cached + graph pools)',
    value: `${reserved.toFixed(1)} GiB`,
  },
  { what: 'loss (random weights)', value: loss.toFixed(3) },
  { what: 'build time', value: `${buildS.toFixed(1)} s` },
);
rows.push({
  what: 'optimizer (optim)',
  value:
    `${opt.fused ? `fused passes${studentCopies ? ', bf16 weight copies' : ''}` : 'separate passes'}; ` +
    `${deviceStep ? "the trainer's device step (norm, clipping, probe)" : 'loss, backward, AdamW.step(lr)'}`,
});
// where the time goes: kernel families of one profiled step, and (host side) the elementwise,
// cast, copy and reduction calls of that step by op and size, since one kernel serves many ops
const calls = new Map<string, { calls: number; elements: number }>();
const tally = (key: string, elements: number) => {
  const e = calls.get(key) ?? { calls: 0, elements: 0 };
  e.calls++;
  e.elements += elements;
  calls.set(key, e);
};
const be = gpu as unknown as Record<string, (...args: unknown[]) => unknown>;
const len = (b: unknown) => (b as DeviceBuffer).length;
const dt = (b: unknown) => (b as DeviceBuffer).dtype;
const probes: Record<string, (a: unknown[]) => [string, number]> = {
  binary: (a) => [`binary ${a[0]}`, (a[6] as number[]).reduce((p, q) => p * q, 1)],
  unary: (a) => [`unary ${a[0]} -> ${dt(a[2])}`, len(a[1])],
  unaryBackward: (a) => [`unary backward ${a[0]} (x ${dt(a[1])})`, len(a[1])],
  cast: (a) => [`cast ${dt(a[0])} -> ${dt(a[1])}`, len(a[0])],
  castColumnSums: (a) => [`cast + column sums (${a[5] ?? 'plain'}) -> ${dt(a[1])}`, len(a[0])],
  copyStrided: (a) => [
    `copy ${(a[7] as boolean) ? 'accumulate' : 'plain'} ${(a[2] as number[]).length}-d ${dt(a[0])}`,
    (a[6] as number[]).reduce((p, q) => p * q, 1),
  ],
  reduce: (a) => [`reduce ${a[0]} (inner ${a[5] === 1 ? '1' : '> 1'})`, len(a[1])],
  fill: (a) => [`fill ${dt(a[0])}`, len(a[0])],
};
const originals = Object.keys(probes).map((name) => [name, be[name]] as const);
for (const [name, fn] of originals)
  be[name] = (...args: unknown[]) => {
    const [key, n] = probes[name](args);
    tally(key, n);
    return fn.apply(gpu, args);
  };
let kernels: { name: string; calls: number; ms: number }[];
try {
  kernels = gpu.profile(() => step(), { gemmShapes: values['gemm-shapes'] }).kernels;
} finally {
  for (const [name, fn] of originals) be[name] = fn;
}
const fam = new Map<string, { ms: number; calls: number }>();
for (const k of kernels) {
  // the dtype suffixes only (unary_f32_to16_keep stays apart from unary_f32)
  const f = k.name.replace(/(_(f32|bf16|f16|i32))+$/, '');
  const e = fam.get(f) ?? { ms: 0, calls: 0 };
  e.ms += k.ms;
  e.calls += k.calls;
  fam.set(f, e);
}
const total = [...fam.values()].reduce((a, b) => a + b.ms, 0);
// each GEMM shape's rate (names end in ' (m n k, NT[, batch B][, beta])' under --gemm-shapes)
const gemmRows = kernels
  .map((k) => {
    const m = / \((\d+) (\d+) (\d+), ([NT]{2})(?:, batch (\d+))?/.exec(k.name);
    if (!m) return null;
    const flops = 2 * Number(m[1]) * Number(m[2]) * Number(m[3]) * Number(m[5] ?? 1) * k.calls;
    return { name: k.name, calls: k.calls, ms: k.ms, tflops: flops / (k.ms * 1e-3) / 1e12 };
  })
  .filter((r) => r !== null);
const tuned = gpu.tunedProducts();
const prof = [...fam.entries()].sort((a, b) => b[1].ms - a[1].ms).slice(0, 28);
// a failure here must not lose the figures above
let memory: string[];
try {
  memory = memoryBreakdown();
} catch (e) {
  memory = ['', `memory breakdown failed: ${(e as Error).message}`];
}
const lines = [
  `# stage-3 step: ${new Date().toISOString().slice(0, 10)}, ${gpu.describe()}`,
  '| what | value |',
  '| --- | --- |',
  ...rows.map((r) => `| ${r.what} | ${r.value} |`),
  '',
  `profile of one step (events around every launch; total ${total.toFixed(0)} ms of kernel time):`,
  '| kernel family | launches | ms | share |',
  '| --- | ---: | ---: | ---: |',
  ...prof.map(
    ([n, e]) => `| ${n} | ${e.calls} | ${e.ms.toFixed(1)} | ${((e.ms / total) * 100).toFixed(0)}% |`,
  ),
  '',
  ...(gemmRows.length
    ? [
        'GEMMs by shape (m n k of the row-major product C (m, n) = op(A) op(B)):',
        '| GEMM | calls | ms | TFLOP/s |',
        '| --- | ---: | ---: | ---: |',
        ...gemmRows.map((r) => `| ${r.name} | ${r.calls} | ${r.ms.toFixed(2)} | ${r.tflops.toFixed(0)} |`),
        '',
      ]
    : []),
  ...(tuned.length
    ? [
        `tuned products (MOHAWK_GEMM_TUNE=${process.env.MOHAWK_GEMM_TUNE}): the pick's rank in the heuristic's order, ms of the pick / of the first:`,
        '| plan | rank | ms | first ms |',
        '| --- | ---: | ---: | ---: |',
        ...tuned.map((t) => `| ${t.plan} | ${t.rank} | ${t.ms.toFixed(3)} | ${t.firstMs.toFixed(3)} |`),
        '',
      ]
    : []),
  'elementwise, cast, copy and reduction calls of that step (host side; largest by elements moved):',
  '| call | calls | M elements |',
  '| --- | ---: | ---: |',
  ...[...calls.entries()]
    .sort((a, b) => b[1].elements - a[1].elements)
    .slice(0, 30)
    .map(([k, e]) => `| ${k} | ${e.calls} | ${(e.elements / 1e6).toFixed(1)} |`),
  ...memory,
];
console.log(lines.join('\n'));
if (process.env.BENCH_OUT) {
  const file = `stage3-step${values.name ? `-${values.name}` : ''}`;
  writeFileSync(join(process.env.BENCH_OUT, `${file}.md`), lines.join('\n') + '\n');
  writeFileSync(
    join(process.env.BENCH_OUT, `${file}.json`),
    JSON.stringify(
      {
        ms,
        times,
        tokS,
        mfu,
        peakGiB: peak,
        peakReservedGiB: reserved,
        flopsPerToken,
        profile: [...fam.entries()].sort((a, b) => b[1].ms - a[1].ms),
        gemms: gemmRows,
        tuned,
        memory,
      },
      null,
      2,
    ),
  );
}
