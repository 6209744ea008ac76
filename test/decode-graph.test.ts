// The decode step as a replayed graph (the CPU recorder gives CUDA graph semantics): greedy
// decoding of a small random Phi-Mamba student through the graph gives the same tokens and the
// same logits, bit for bit, as eager decoding; models whose step changes per token (attention
// layers) stay eager; graphs turned off stay eager.

import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { CpuBackend } from '../src/backends/cpu/index.js';
import { Decoder } from '../src/generate/decode-graph.js';
import { generateIds } from '../src/generate/generate.js';
import { StudentLM, type StudentConfig } from '../src/models/phi-mamba.js';
import { noGrad, scope, setBackend, tensor } from '../src/tensor/index.js';
import { Random } from '../src/util/random.js';

function tinyStudent(attentionLayers: number[] = []): StudentLM {
  const config: StudentConfig = {
    vocabSize: 97,
    padVocabSizeMultiple: 8,
    dModel: 32,
    nLayer: 3,
    style: 'phi',
    normEps: 1e-5,
    intermediateSize: 64,
    activation: 'gelu_new',
    mlpBias: true,
    lmHeadBias: true,
    tieEmbeddings: false,
    maxPositionEmbeddings: 0,
    mixer: {
      dState: 8,
      nQkHeads: 2,
      nVHeads: 4,
      dConv: 4,
      convBias: true,
      expand: 1,
      chunkSize: 4,
      activation: 'identity',
      bias: false,
    },
    attentionLayers: new Map(
      attentionLayers.map((i) => [
        i,
        { nHeads: 4, nKvHeads: 4, headDim: 8, rotaryDim: 8, ropeTheta: 10000, qkvBias: true, outBias: true },
      ]),
    ),
    bosTokenId: null,
    eosTokenId: null,
  };
  return new StudentLM(config, { rng: new Random(5) });
}

/** greedy decoding through a Decoder: the tokens and every step's logits */
function decode(model: StudentLM, batch: number, steps: number, graph: boolean) {
  const cache = model.createCache(batch);
  const decoder = new Decoder(model, cache, batch, { graph });
  const logits: Float32Array[] = [];
  const tokens: number[][] = [];
  try {
    // a prefill of 5 tokens per sequence, eager as in generate
    let row = noGrad(() =>
      scope(() => {
        const ids = tensor(
          Int32Array.from({ length: batch * 5 }, (_, i) => (i * 13 + 3) % 97),
          [batch, 5],
          'i32',
        );
        return model.forward(ids, { cache, lastLogitsOnly: true }).logits.toArray() as Float32Array;
      }),
    );
    const vocab = row.length / batch;
    for (let s = 0; s < steps; s++) {
      const next = Array.from({ length: batch }, (_, b) => {
        let best = 0;
        for (let v = 1; v < vocab; v++) if (row[b * vocab + v] > row[b * vocab + best]) best = v;
        return best;
      });
      tokens.push(next);
      row = decoder.step(next);
      logits.push(row);
    }
    return { tokens, logits, mode: decoder.mode, nodes: decoder.nodes, reason: decoder.reason };
  } finally {
    decoder.dispose();
    cache.dispose();
  }
}

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

  it('generate: the same tokens with the graph on and off', () => {
    const model = tinyStudent();
    const prompt = [5, 9, 33, 2];
    const off = generateIds(model, prompt, { maxNewTokens: 10, temperature: 0, graph: false });
    const on = generateIds(model, prompt, { maxNewTokens: 10, temperature: 0, graph: true });
    assert.equal(on.length, 10);
    assert.deepEqual(on, off);
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
