// A rank of a small data-parallel job, for test/distributed.test.ts (run as a script:
// `RANK=r WORLD_SIZE=w MASTER_PORT=p node --import tsx test/dist-child.ts JSON`). Modes:
//   collectives  every CPU collective on known values; prints what this rank got
//   train        test/train-fixture.ts's tiny run, data parallel (optionally ZeRO-1); prints the
//                per-step losses and the final weights
//   die          trains; rank dieRank throws after step 2, the others must stop naming it
//   val          the tiny Llama's validation perplexity and KL (against itself sharpened) on
//                DIR/data's val split, each rank computing its share of the batches; prints them
import { CpuCollective } from '../src/backends/cpu/collective.js';
import { ProcessGroup, readDistEnv } from '../src/backends/group.js';
import { getBackend, noGrad, tensor } from '../src/tensor/index.js';
import { TokenDataset } from '../src/data/index.js';
import { validationKl, validationPerplexity } from '../src/distill/pipeline.js';
import { tinyLlama } from './helpers.js';
import { runTiny, type RunConfig } from './train-fixture.js';

const args = JSON.parse(process.argv[2]) as {
  mode: string;
  run?: RunConfig;
  zero?: boolean | 2;
  dieRank?: number;
  dir?: string;
};
const env = readDistEnv()!;
const group = ProcessGroup.join({ ...env, rendezvousTimeoutSec: 20, callTimeoutSec: 60 });
const c = new CpuCollective(group, getBackend());
if (args.mode === 'die') {
  // rank dieRank throws after step 2 (an error mid-training, not a clean exit)
  runTiny(args.run!, {
    dataParallel: { collective: c },
    onStep: (m) => {
      if (c.rank === args.dieRank && m.step === 2) throw new Error('injected failure');
    },
  });
}
if (args.mode === 'collectives') {
  const r = c.rank;
  const out = noGrad(() => {
    const x = tensor(Float32Array.of(r + 1, 0.5 * r, -r), [3], 'f32');
    c.allReduce(x.buffer, 'sum');
    const a = tensor(Float32Array.of(r + 1, 2 * r), [2], 'f32');
    c.allReduce(a.buffer, 'avg');
    const full = tensor(
      Float32Array.from({ length: 2 * c.worldSize }, (_, i) => i + 10 * r),
      [2 * c.worldSize],
      'f32',
    );
    const part = tensor(new Float32Array(2), [2], 'f32');
    c.reduceScatter(full.buffer, part.buffer, 'sum');
    const g = tensor(new Float32Array(2 * c.worldSize), [2 * c.worldSize], 'f32');
    c.allGather(tensor(Float32Array.of(r, -r), [2], 'f32').buffer, g.buffer);
    const b = tensor(Float32Array.of(r * 7), [1], 'f32');
    c.broadcast(b.buffer, c.worldSize - 1);
    c.barrier();
    return {
      sum: [...x.toArray()],
      avg: [...a.toArray()],
      rs: [...part.toArray()],
      ag: [...g.toArray()],
      bc: [...b.toArray()],
    };
  });
  console.log(JSON.stringify(out));
}
if (args.mode === 'train') {
  const { result, model } = runTiny(args.run!, {
    dataParallel: { collective: c, zero: args.zero, bucketBytes: 64 },
  });
  const weights = Object.fromEntries(model.namedParameters().map(([n, t]) => [n, [...t.toArray()]]));
  console.log(
    JSON.stringify({
      losses: result.history.map((m) => m.loss),
      norms: result.history.map((m) => m.grad_norm),
      weights,
      steps: result.steps,
    }),
  );
}
if (args.mode === 'val') {
  const val = TokenDataset.open(`${args.dir}/data`).split('val');
  const model = tinyLlama();
  // the batches this rank evaluates: one forward each
  let batches = 0;
  const forward = model.forward.bind(model);
  model.forward = (...a) => (batches++, forward(...a));
  const ppl = validationPerplexity(model, val, 16, 160, 2, c);
  const kl = validationKl(tinyLlama({}, true), tinyLlama(), val, 16, 160, 2, c);
  console.log(JSON.stringify({ ppl, kl, batches }));
}
c.close();
