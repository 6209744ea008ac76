// Memory per GPU of a data-parallel stage-3 run, computed (no GPU, no memory: the models are built
// on the shapes-only backend): the Phi-1.5 teacher and its Phi-Mamba 1.5B student with their real
// parameter shapes, and the optimizer state of each rank from ShardedAdamW itself (its row cuts,
// padding and pieces for the worst rank), for 1 and 8 GPUs, plain data parallel, ZeRO-1 and
// ZeRO-2. Then the largest student (same-size teacher) that fits on 8 GPUs of 139 GiB.
//
// Bytes as mohawk holds them under `precision: bf16`: the frozen teacher f32 (4 / parameter) plus
// the bf16 copies of its matrices made once (2 / matrix element), or those copies only (a
// bf16-only teacher: not built); the student's f32 weights (4), f32 gradients (4; ZeRO-2: its
// rows only, 4 x rows, plus one bucket in flight), the bf16 autocast copies of its matrices that
// the backward reads (2 / matrix element), the AdamW moments (8; ZeRO-1/2: 8 x rows) and the f32
// copy of the rank's rows the sharded update runs on (4 x rows). Activations are not computed:
// they are the measured single-H200 peak at 4 x 2048 tokens (59.7 GiB, docs/benchmarks.md) less
// the state counted here, scaled linearly in tokens and in parameters for other sizes (stated
// beside the figures). Not counted: the cuBLAS workspace (32 MiB), NCCL's buffers, the allocator's
// fragmentation.
//   node --import tsx bench/dist-memory.ts [--world 8] [--gib 139]   (BENCH_OUT=dir writes dist-memory.{md,json})

import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { parseArgs } from 'node:util';
import type { Collective } from '../src/backends/collective.js';
import { studentConfigFor } from '../src/distill/transfer.js';
import { withShapesOnly } from '../src/models/load.js';
import { StudentLM } from '../src/models/phi-mamba.js';
import { PhiForCausalLM } from '../src/models/phi.js';
import type { Tensor } from '../src/tensor/index.js';
import type { NamedParams } from '../src/train/params.js';
import { ShardedAdamW } from '../src/train/zero.js';

const { values } = parseArgs({
  options: {
    world: { type: 'string', default: '8' },
    gib: { type: 'string', default: '139' },
  },
});
const W = Number(values.world);
const GPU_GIB = Number(values.gib);
const GiB = 2 ** 30;
const BUCKET = 25 << 20;

const { teacher, student } = withShapesOnly(() => {
  const t = new PhiForCausalLM(
    {
      vocabSize: 51200,
      hiddenSize: 2048,
      intermediateSize: 8192,
      numLayers: 24,
      numHeads: 32,
      numKvHeads: 32,
      headDim: 64,
      rotaryDim: 32,
      partialRotaryFactor: 0.5,
      ropeTheta: 10000,
      layerNormEps: 1e-5,
      hiddenAct: 'gelu_new',
      maxPositionEmbeddings: 2048,
      tieWordEmbeddings: false,
      bosTokenId: 0,
      eosTokenId: 0,
    },
    { deferInit: true },
  );
  return { teacher: t, student: new StudentLM(studentConfigFor(t, { chunkSize: 128 }), { deferInit: true }) };
})!;

const count = (ps: NamedParams) => ps.reduce((a, [, p]) => a + p.size, 0);
/** elements of the matrices autocast copies to bf16 (2-D weights read by products; not the embedding) */
const matrices = (ps: NamedParams) =>
  ps.filter(([n, p]) => p.ndim === 2 && !n.includes('embed')).reduce((a, [, p]) => a + p.size, 0);
const tParams = teacher.namedParameters();
const sParams = student.namedParameters();
const nT = count(tParams);
const nS = count(sParams);

/** The largest number of rows (elements) any rank owns under ShardedAdamW at world size w. */
function worstRows(w: number): number {
  let worst = 0;
  for (let r = 0; r < w; r++) {
    const c = { rank: r, worldSize: w } as Collective;
    const opt = withShapesOnly(
      () => new ShardedAdamW(sParams as [string, Tensor][], { lr: 1e-4 }, c, BUCKET),
    )!;
    worst = Math.max(worst, opt.localElements);
  }
  return worst;
}

type Layout = 'data parallel' | 'ZeRO-1' | 'ZeRO-2';
interface Column {
  world: number;
  layout: Layout;
  teacherBf16Only: boolean;
}
interface Figures {
  teacher: number;
  weightsCasts: number;
  grads: number;
  optimizer: number;
  state: number;
}

const rowsAt = new Map<number, number>();
function figures(col: Column): Figures {
  const rows =
    col.layout === 'data parallel'
      ? nS
      : (rowsAt.get(col.world) ?? rowsAt.set(col.world, worstRows(col.world)).get(col.world)!);
  const teacher = (col.teacherBf16Only ? 0 : 4 * nT) + 2 * matrices(tParams);
  const weightsCasts = 4 * nS + 2 * matrices(sParams);
  const grads = col.layout === 'ZeRO-2' ? 4 * rows + BUCKET : 4 * nS;
  const optimizer = col.layout === 'data parallel' ? 8 * nS : 12 * rows;
  return { teacher, weightsCasts, grads, optimizer, state: teacher + weightsCasts + grads + optimizer };
}

// activations at 4 x 2048 tokens: the measured peak less the state of that run (1 GPU, plain)
const MEASURED_PEAK = 59.7 * GiB;
const single = figures({ world: 1, layout: 'data parallel', teacherBf16Only: false });
const activations = MEASURED_PEAK - single.state;

const cols: Column[] = [
  { world: 1, layout: 'data parallel', teacherBf16Only: false },
  { world: W, layout: 'data parallel', teacherBf16Only: false },
  { world: W, layout: 'ZeRO-1', teacherBf16Only: false },
  { world: W, layout: 'ZeRO-1', teacherBf16Only: true },
  { world: W, layout: 'ZeRO-2', teacherBf16Only: false },
  { world: W, layout: 'ZeRO-2', teacherBf16Only: true },
];
const f = cols.map(figures);
const g = (b: number) => `${(b / GiB).toFixed(2)}`;
const head = cols.map(
  (c) =>
    `${c.world} GPU${c.world > 1 ? 's' : ''}, ${c.layout}${c.teacherBf16Only ? ', bf16-only teacher' : ''}`,
);
const lines = [
  `Phi-1.5 teacher (${(nT / 1e9).toFixed(3)}B parameters) -> Phi-Mamba student (${(nS / 1e9).toFixed(3)}B), stage 3 in bf16, ` +
    `buckets of 25 MiB; computed (shapes-only models, ShardedAdamW's own pieces for the worst rank); GiB per GPU`,
  '',
  `| per GPU | ${head.join(' | ')} |`,
  `| --- | ${head.map(() => '---:').join(' | ')} |`,
  `| teacher (f32 + bf16 matrices, or bf16 only) | ${f.map((x) => g(x.teacher)).join(' | ')} |`,
  `| student f32 weights + bf16 copies of its matrices | ${f.map((x) => g(x.weightsCasts)).join(' | ')} |`,
  `| student gradients (ZeRO-2: its rows + a bucket) | ${f.map((x) => g(x.grads)).join(' | ')} |`,
  `| AdamW moments (+ f32 rows under ZeRO) | ${f.map((x) => g(x.optimizer)).join(' | ')} |`,
  `| **state** | ${f.map((x) => `**${g(x.state)}**`).join(' | ')} |`,
  `| + activations at 4 x 2048 tokens (${g(activations)}, from the measured ${g(MEASURED_PEAK)} peak) | ${f.map((x) => g(x.state + activations)).join(' | ')} |`,
];

// the largest student on W GPUs of GPU_GIB: bytes per student parameter from the figures above
// (teacher of the same size), activations at 1 x 2048 tokens scaled linearly in parameters
const actPerParam = activations / 4 / nS;
const fits: { layout: string; bytesPerParam: number; billions: number }[] = [];
for (const col of cols.slice(1)) {
  const x = figures(col);
  const perParam = (x.state - (col.layout === 'ZeRO-2' ? BUCKET : 0)) / nS;
  const billions = (GPU_GIB * GiB) / (perParam + actPerParam) / 1e9;
  fits.push({ layout: head[cols.indexOf(col)], bytesPerParam: perParam, billions });
}
lines.push(
  '',
  `Largest student on ${W} x ${GPU_GIB} GiB (teacher of the same size; activations at 1 x 2048 tokens per micro-batch, ` +
    `${g(actPerParam * 1e9)} GiB per billion parameters, scaled from the 1.5B figure):`,
  '',
  '| layout | bytes per student parameter (teacher + student state) | largest student |',
  '| --- | ---: | ---: |',
  ...fits.map((x) => `| ${x.layout} | ${x.bytesPerParam.toFixed(2)} | about ${x.billions.toFixed(1)}B |`),
);
console.log(lines.join('\n'));
const json = {
  teacherParams: nT,
  studentParams: nS,
  world: W,
  columns: cols.map((c, i) => ({ ...c, ...f[i] })),
  activations,
  fits,
};
console.log(JSON.stringify(json));
if (process.env.BENCH_OUT) {
  writeFileSync(join(process.env.BENCH_OUT, 'dist-memory.md'), lines.join('\n') + '\n');
  writeFileSync(join(process.env.BENCH_OUT, 'dist-memory.json'), JSON.stringify(json, null, 2) + '\n');
}
