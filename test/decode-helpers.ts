// Shared by the decode-graph tests (CPU recorder and CUDA): a small random Phi-Mamba student and
// greedy decoding through a Decoder, returning every step's tokens and logits.

import { Decoder } from '../src/generate/decode-graph.js';
import { StudentLM, type StudentConfig } from '../src/models/phi-mamba.js';
import { noGrad, scope, tensor } from '../src/tensor/index.js';
import { Random } from '../src/util/random.js';

/** A 3-layer student (d 32, 4 value heads, vocab 97) on the current backend; `attentionLayers` make it a hybrid. */
export function tinyStudent(attentionLayers: number[] = []): StudentLM {
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

/** greedy decoding through a Decoder after a 5-token prefill: the tokens and every step's logits */
export function decodeGreedy(
  model: StudentLM,
  batch: number,
  steps: number,
  graph: boolean,
  /** choose each token on the device (Decoder output 'greedy'; no logits returned) */
  onDevice = false,
) {
  const cache = model.createCache(batch);
  const decoder = new Decoder(model, cache, batch, { graph, output: onDevice ? 'greedy' : 'logits' });
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
    let next = Array.from({ length: batch }, (_, b) => {
      let best = 0;
      for (let v = 1; v < vocab; v++) if (row[b * vocab + v] > row[b * vocab + best]) best = v;
      return best;
    });
    for (let s = 0; s < steps; s++) {
      tokens.push(next);
      if (onDevice) {
        next = decoder.next(next);
        continue;
      }
      row = decoder.step(next);
      logits.push(row);
      next = Array.from({ length: batch }, (_, b) => {
        let best = 0;
        for (let v = 1; v < vocab; v++) if (row[b * vocab + v] > row[b * vocab + best]) best = v;
        return best;
      });
    }
    tokens.push(next);
    return { tokens, logits, mode: decoder.mode, nodes: decoder.nodes, reason: decoder.reason };
  } finally {
    decoder.dispose();
    cache.dispose();
  }
}
