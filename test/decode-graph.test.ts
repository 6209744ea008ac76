// The decode step as a replayed graph (the CPU recorder gives CUDA graph semantics): greedy
// decoding of a small random Phi-Mamba student through the graph gives the same tokens and the
// same logits, bit for bit, as eager decoding; models whose step changes per token (attention
// layers) stay eager; graphs turned off stay eager.

import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { CpuBackend } from '../src/backends/cpu/index.js';
import { BatchEngine } from '../src/generate/batch.js';
import { generateIds } from '../src/generate/generate.js';
import { greedyIds, greedyScores } from '../src/generate/decode-graph.js';
import {
  autocast,
  castParameters,
  scope,
  setBackend,
  tensor,
  withCastParameters,
} from '../src/tensor/index.js';
import { decodeGreedy as decode, tinyStudent } from './decode-helpers.js';

describe('decode graph (CPU recorder)', () => {
  const backend = new CpuBackend();
  setBackend(backend);

  it('replays the recurrent step: the same greedy tokens and logits as eager decoding, batch 1 and 3', () => {
    const model = tinyStudent();
    for (const batch of [1, 3]) {
      const live = backend.memoryStats().liveBuffers;
      const eager = decode(model, batch, 8, false);
      const graph = decode(model, batch, 8, true);
      assert.equal(eager.mode, 'eager');
      assert.equal(graph.mode, 'graph', `not captured: ${graph.reason}`);
      assert.ok(graph.nodes > 20, `nodes: ${graph.nodes}`);
      assert.deepEqual(graph.tokens, eager.tokens, `batch ${batch}: tokens`);
      graph.logits.forEach((l, i) =>
        assert.deepEqual(l, eager.logits[i], `batch ${batch}: logits of step ${i}`),
      );
      // the tokens change along the way: the replays really read the new ids
      assert.ok(new Set(eager.tokens.map((t) => t.join())).size > 1, 'greedy tokens never changed');
      assert.equal(backend.memoryStats().liveBuffers, live, 'the decoder freed its graph and buffers');
    }
  });

  it('under bf16 autocast with the weights cast once (as generate runs it): the same tokens and logits', () => {
    const model = tinyStudent();
    const run = (graph: boolean) =>
      autocast('bf16', () => {
        const casts = castParameters(model.parameters(), 'bf16');
        try {
          return withCastParameters(casts, () => decode(model, 2, 6, graph));
        } finally {
          casts.dispose();
        }
      });
    const eager = run(false);
    const graph = run(true);
    assert.equal(graph.mode, 'graph', `not captured: ${graph.reason}`);
    assert.deepEqual(graph.tokens, eager.tokens);
    graph.logits.forEach((l, i) => assert.deepEqual(l, eager.logits[i], `logits of step ${i}`));
  });

  it('greedy on the device (graph and eager) picks the host argmax tokens', () => {
    const model = tinyStudent();
    const host = decode(model, 3, 8, false);
    for (const graph of [false, true]) {
      const device = decode(model, 3, 8, graph, true);
      assert.equal(device.mode, graph ? 'graph' : 'eager');
      assert.deepEqual(device.tokens, host.tokens, `graph ${graph}`);
    }
    // ties: the first maximum, as the host argmax
    const scores = scope(() => {
      const logits = tensor(Float32Array.from([1, 3, 3, 0, 2, 2, 2, 1]), [2, 1, 4]);
      return greedyScores(logits, tensor(Float32Array.from([4, 3, 2, 1]), [4])).toArray();
    });
    assert.deepEqual(greedyIds(scores, 4), [1, 0]);
  });

  it('generate: the same tokens with the graph on and off', () => {
    const model = tinyStudent();
    const prompt = [5, 9, 33, 2];
    const off = generateIds(model, prompt, { maxNewTokens: 10, temperature: 0, graph: false });
    const on = generateIds(model, prompt, { maxNewTokens: 10, temperature: 0, graph: true });
    assert.equal(on.length, 10);
    assert.deepEqual(on, off);
  });

  it('continuous batching: the batched step as a graph gives each sequence its generate tokens', () => {
    const model = tinyStudent();
    const prompts = [[1, 2, 3, 4, 5], [7, 8], [60, 61, 62, 63, 64, 65, 66], [50]];
    const want = prompts.map((p, i) =>
      generateIds(model, p, {
        maxNewTokens: 9 + i,
        temperature: i === 3 ? 0.8 : 0,
        seed: 4,
        stopAtEos: false,
      }),
    );
    const live = backend.memoryStats().liveBuffers;
    const eng = new BatchEngine(model, { maxBatch: 3, graph: true });
    const got: number[][] = prompts.map(() => []);
    const submit = (i: number) =>
      eng.submit({
        promptIds: prompts[i],
        maxNewTokens: 9 + i,
        temperature: i === 3 ? 0.8 : 0,
        seed: 4,
        stopAtEos: false,
        onToken: (t) => got[i].push(t),
      });
    submit(0);
    submit(1);
    let replays = 0;
    const step = () => {
      eng.step();
      const d = (eng as unknown as { decoder: { mode: string } | null }).decoder;
      if (d?.mode === 'graph') replays++;
    };
    for (let k = 0; k < 4; k++) step(); // the pair decodes as a graph
    submit(2); // joins: the stack is rebuilt, warmed up and captured again
    submit(3); // waits for a free slot
    for (let k = 0; k < 40 && (eng.stats.active > 0 || eng.stats.waiting > 0); k++) step();
    assert.deepEqual(got, want);
    assert.ok(replays >= 6, `steps replayed as a graph: ${replays}`);
    eng.close();
    assert.equal(backend.memoryStats().liveBuffers, live, 'the engine freed its graphs and stacks');
  });

  it('keeps hybrids (attention layers) and graphs turned off eager', () => {
    const hybrid = decode(tinyStudent([1]), 1, 3, true);
    assert.equal(hybrid.mode, 'eager');
    assert.match(hybrid.reason ?? '', /attention/);
    const saved = process.env.MOHAWK_CUDA_GRAPH;
    process.env.MOHAWK_CUDA_GRAPH = '0';
    try {
      const off = decode(tinyStudent(), 1, 3, true);
      assert.equal(off.mode, 'eager');
      assert.match(off.reason ?? '', /MOHAWK_CUDA_GRAPH=0/);
    } finally {
      if (saved === undefined) delete process.env.MOHAWK_CUDA_GRAPH;
      else process.env.MOHAWK_CUDA_GRAPH = saved;
    }
  });
});
