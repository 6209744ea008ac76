// The MOHAWK stage-3 step on the CPU against PyTorch on the same machine, in one run: the demo's
// shapes (Llama teacher d 64, 2 layers, 4 heads / 2 KV heads, SwiGLU 192, byte vocabulary, tied;
// Llamba student, chunk 32; 32 x 64 tokens) and phi-17m's (Phi d 384, 6 layers, 6 heads, partial
// rotary 0.5, gelu 1536, vocab 8192; Phi-Mamba student, d_state 64, chunk 64; 4 x 256 tokens).
// Random weights; teacher forward without gradients, student forward + backward on the KL
// divergence, AdamW over every student parameter. PyTorch runs bench/reference/cpu_stage3.py (the
// same step written as a PyTorch user would) with the same thread count as OpenBLAS. Both wall time
// and CPU time (user + system over all threads) per step are reported: on a shared machine the CPU
// time is the steadier figure. A ratio above 1 means mohawk is faster.
// Run: OPENBLAS_NUM_THREADS=2 npx tsx bench/cpu-stage3.ts [--steps N] [--only demo|phi17m]
//      [--python /usr/bin/python3]   (MOHAWK_BLAS=off measures the WebAssembly fallback)

import { spawnSync } from 'node:child_process';
import os from 'node:os';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';
import { CpuBackend } from '../src/backends/cpu/index.js';
import { stage3Loss } from '../src/distill/stages.js';
import { studentConfigFor } from '../src/distill/transfer.js';
import { LlamaForCausalLM } from '../src/models/llama.js';
import { PhiForCausalLM } from '../src/models/phi.js';
import { StudentLM } from '../src/models/phi-mamba.js';
import type { CausalLM } from '../src/models/types.js';
import { scope, setBackend, tensor } from '../src/tensor/index.js';
import { AdamW } from '../src/train/optimizer.js';
import { Random } from '../src/util/random.js';

const { values } = parseArgs({
  options: {
    steps: { type: 'string', default: '5' },
    only: { type: 'string' },
    python: { type: 'string', default: '/usr/bin/python3' },
    json: { type: 'boolean', default: false },
  },
});
const steps = Number(values.steps);
const threads = Number(process.env.OPENBLAS_NUM_THREADS ?? os.cpus().length);

interface Shape {
  name: string;
  style: 'llama' | 'phi';
  d: number;
  layers: number;
  heads: number;
  kvHeads: number;
  ffn: number;
  vocab: number;
  rotary: number;
  tied: boolean;
  chunk: number;
  batch: number;
  seq: number;
}

const SHAPES: Shape[] = [
  {
    name: 'demo',
    style: 'llama',
    d: 64,
    layers: 2,
    heads: 4,
    kvHeads: 2,
    ffn: 192,
    vocab: 259,
    rotary: 1,
    tied: true,
    chunk: 32,
    batch: 32,
    seq: 64,
  },
  {
    name: 'phi17m',
    style: 'phi',
    d: 384,
    layers: 6,
    heads: 6,
    kvHeads: 6,
    ffn: 1536,
    vocab: 8192,
    rotary: 0.5,
    tied: false,
    chunk: 64,
    batch: 4,
    seq: 256,
  },
];

function teacherFor(s: Shape): CausalLM {
  const rng = new Random(0);
  const headDim = s.d / s.heads;
  if (s.style === 'llama')
    return new LlamaForCausalLM(
      {
        vocabSize: s.vocab,
        hiddenSize: s.d,
        intermediateSize: s.ffn,
        numLayers: s.layers,
        numHeads: s.heads,
        numKvHeads: s.kvHeads,
        headDim,
        rmsNormEps: 1e-5,
        ropeTheta: 10000,
        maxPositionEmbeddings: s.seq,
        tieWordEmbeddings: s.tied,
        attentionBias: false,
        mlpBias: false,
        bosTokenId: null,
        eosTokenId: null,
      },
      { rng },
    );
  return new PhiForCausalLM(
    {
      vocabSize: s.vocab,
      hiddenSize: s.d,
      intermediateSize: s.ffn,
      numLayers: s.layers,
      numHeads: s.heads,
      numKvHeads: s.kvHeads,
      headDim,
      rotaryDim: headDim * s.rotary,
      partialRotaryFactor: s.rotary,
      ropeTheta: 10000,
      layerNormEps: 1e-5,
      hiddenAct: 'gelu_new',
      maxPositionEmbeddings: s.seq,
      tieWordEmbeddings: s.tied,
      bosTokenId: null,
      eosTokenId: null,
    },
    { rng },
  );
}

const median = (xs: number[]) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)];

/** wall and CPU (user + system, all threads) milliseconds per step */
interface Times {
  ms: number[];
  cpuMs: number[];
}

function mohawkStep(s: Shape): Times {
  const teacher = teacherFor(s);
  teacher.setTrainable(() => true, false);
  const student = new StudentLM(studentConfigFor(teacher, { chunkSize: s.chunk }), { rng: new Random(1) });
  const opt = new AdamW(student.namedParameters(), {
    lr: 1e-4,
    beta1: 0.9,
    beta2: 0.95,
    eps: 1e-8,
    weightDecay: 0.1,
  });
  const rng = new Random(2);
  const ids = () =>
    tensor(
      Int32Array.from({ length: s.batch * s.seq }, () => rng.int(0, s.vocab)),
      [s.batch, s.seq],
      'i32',
    );
  const step = () => {
    scope(() => {
      const input = ids();
      const r = stage3Loss(teacher, student, input, input, { temperature: 1, ceWeight: 0 });
      r.loss.item();
      r.loss.backward(undefined, { freeGraph: true });
    });
    opt.step(1e-4);
    student.zeroGrad();
  };
  step(); // warm-up
  const out: Times = { ms: [], cpuMs: [] };
  for (let i = 0; i < steps; i++) {
    const t0 = performance.now();
    const c0 = process.cpuUsage();
    step();
    out.ms.push(performance.now() - t0);
    const c = process.cpuUsage(c0);
    out.cpuMs.push((c.user + c.system) / 1000);
  }
  return out;
}

function torchStep(s: Shape): (Times & { torch: string }) | { error: string } {
  const script = fileURLToPath(new URL('./reference/cpu_stage3.py', import.meta.url));
  const cfg = {
    style: s.style,
    d: s.d,
    layers: s.layers,
    heads: s.heads,
    kv_heads: s.kvHeads,
    ffn: s.ffn,
    vocab: s.vocab,
    rotary: s.rotary,
    tied: s.tied,
    d_state: s.d / s.heads,
    chunk: s.chunk,
    batch: s.batch,
    seq: s.seq,
    steps,
    threads,
  };
  const r = spawnSync(values.python!, [script, JSON.stringify(cfg)], { encoding: 'utf8' });
  if (r.status !== 0) return { error: (r.stderr || String(r.error)).trim().split('\n').slice(-1)[0] };
  return JSON.parse(r.stdout.trim().split('\n').slice(-1)[0]) as Times & { torch: string };
}

const backend = new CpuBackend();
setBackend(backend);
const rows: string[] = [];
const json: object[] = [];
for (const s of SHAPES) {
  if (values.only && values.only !== s.name) continue;
  // interleaved in one run: mohawk, then PyTorch, on the same machine state
  const ours = mohawkStep(s);
  const ref = torchStep(s);
  const tokens = s.batch * s.seq;
  const tokS = (ms: number) => ((tokens / ms) * 1000).toFixed(0);
  const cells = [s.name, `${s.batch} x ${s.seq}`, median(ours.ms).toFixed(1), tokS(median(ours.ms))];
  if ('ms' in ref) {
    const [tm, tc, om, oc] = [median(ref.ms), median(ref.cpuMs), median(ours.ms), median(ours.cpuMs)];
    cells.push(
      tm.toFixed(1),
      tokS(tm),
      (tm / om).toFixed(2),
      oc.toFixed(0),
      tc.toFixed(0),
      (tc / oc).toFixed(2),
    );
  } else cells.push(ref.error, '', '', '', '', '');
  rows.push(`| ${cells.join(' | ')} |`);
  json.push({ shape: s, mohawkMs: ours, torch: ref });
}
console.log(
  `# stage-3 step on the CPU: ${new Date().toISOString()}, ${os.cpus().length} x ${os.cpus()[0]?.model}, ` +
    `${threads} threads, ${backend.describe()}, node ${process.version}, load ${os.loadavg()[0].toFixed(1)}`,
);
console.log(
  '| shape | tokens | mohawk ms | mohawk tok/s | PyTorch ms | PyTorch tok/s | speed ratio (wall) | ' +
    'mohawk CPU ms | PyTorch CPU ms | speed ratio (CPU time) |',
);
console.log('| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |');
for (const r of rows) console.log(r);
if (values.json) console.log(JSON.stringify(json));
