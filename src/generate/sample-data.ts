// Training text sampled from a teacher, for distillation where the teacher's own data is not at
// hand: `batch` sequences decoded together (one KV cache / recurrent state for the batch), each
// from the start token for seqLen - 1 steps, then cut into documents at the separator tokens
// (BOS and EOS: llama2.c models end a story by emitting BOS, HF models by emitting EOS).

import type { CausalLM } from '../models/types.js';
import { noGrad, scope, slice, tensor } from '../tensor/index.js';
import { Random } from '../util/random.js';
import { sampleToken, type SamplingOptions } from './sampling.js';

export interface SampleDataOptions extends SamplingOptions {
  /** stop once this many tokens have been generated */
  tokens: number;
  /** sequences decoded together (default 8) */
  batch?: number;
  /** positions per sequence, the start token included (default min(max length, 256)) */
  seqLen?: number;
  seed?: number;
  /** the first token of every sequence (default BOS, else EOS) */
  startToken?: number;
  /** tokens that end a document (default BOS and EOS) */
  separators?: number[];
  onProgress?: (generated: number, total: number) => void;
}

/** Documents of token ids (separators removed, empty ones dropped), about `tokens` in all. */
export function sampleDocuments(model: CausalLM, o: SampleDataOptions): number[][] {
  const info = model.info;
  const start = o.startToken ?? info.bosTokenId ?? info.eosTokenId;
  if (start === null || start === undefined)
    throw new Error('sample-data: the model has neither bos_token_id nor eos_token_id; give a start token');
  const separators = new Set(
    o.separators ?? [info.bosTokenId, info.eosTokenId].filter((t): t is number => t !== null),
  );
  const batch = o.batch ?? 8;
  const seqLen = Math.min(o.seqLen ?? 256, info.maxSeqLen);
  if (!(Number.isInteger(batch) && batch > 0)) throw new Error(`sample-data: batch (${batch}) must be >= 1`);
  if (!(Number.isInteger(seqLen) && seqLen >= 2))
    throw new Error(`sample-data: seqLen (${seqLen}) must be >= 2`);
  if (!(o.tokens > 0)) throw new Error(`sample-data: tokens (${o.tokens}) must be > 0`);
  const rng = new Random(o.seed ?? 0);
  const docs: number[][] = [];
  let generated = 0;
  while (generated < o.tokens) {
    const rows: number[][] = Array.from({ length: batch }, () => []);
    const cache = model.createCache(batch);
    try {
      let input = new Array<number>(batch).fill(start);
      for (let t = 1; t < seqLen && generated < o.tokens; t++) {
        // (B, 1) ids -> the logits of the last position, (B, V) on the host
        const logits = noGrad(() =>
          scope(() => {
            const out = model.forward(tensor(input, [batch, 1], 'i32'), { cache }).logits;
            return slice(out, 1, out.shape[1] - 1, out.shape[1]).toArray();
          }),
        );
        const vocab = logits.length / batch;
        input = rows.map((row, b) => {
          const id = sampleToken(logits.subarray(b * vocab, (b + 1) * vocab), rng, o);
          row.push(id);
          return id;
        });
        generated += batch;
        o.onProgress?.(Math.min(generated, o.tokens), o.tokens);
      }
    } finally {
      cache.dispose();
    }
    for (const row of rows) {
      let doc: number[] = [];
      for (const id of row) {
        if (separators.has(id)) {
          if (doc.length) docs.push(doc);
          doc = [];
        } else doc.push(id);
      }
      if (doc.length) docs.push(doc);
    }
  }
  return docs;
}
