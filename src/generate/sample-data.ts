// Training text sampled from a teacher, for distillation where the teacher's own data is not at
// hand: `batch` sequences decoded together (one KV cache / recurrent state for the batch), each
// from the start token for seqLen - 1 steps, then cut into documents at the separator tokens
// (BOS and EOS: llama2.c models end a story by emitting BOS, HF models by emitting EOS).
// Or from prompts (samplePromptCompletions): the teacher's continuation of each prompt of a file.

import type { CausalLM } from '../models/types.js';
import { noGrad, scope, slice, tensor } from '../tensor/index.js';
import { Random } from '../util/random.js';
import { BatchEngine } from './batch.js';
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

export interface PromptSampleOptions extends SamplingOptions {
  /** new tokens per prompt at most (the teacher may end earlier with EOS) */
  maxNewTokens: number;
  /** stop taking prompts once this many new tokens have been generated (default: all prompts) */
  tokens?: number;
  /** sequences decoded together (default 8) */
  batch?: number;
  /** prompt i samples with seed + i (default 0) */
  seed?: number;
  onProgress?: (generated: number, prompts: number) => void;
}

/**
 * The teacher's continuation of each prompt (token ids, EOS not included), decoded with
 * continuous batching: `batch` prompts at a time, a new one joining as soon as one ends. Returns
 * one completion per prompt taken (fewer than the prompts when `tokens` ran out first).
 */
export function samplePromptCompletions(
  model: CausalLM,
  prompts: number[][],
  o: PromptSampleOptions,
): number[][] {
  if (!(Number.isInteger(o.maxNewTokens) && o.maxNewTokens >= 1))
    throw new Error(`sample-data: maxNewTokens (${o.maxNewTokens}) must be >= 1`);
  const engine = new BatchEngine(model, { maxBatch: o.batch ?? 8 });
  const out: number[][] = [];
  const budget = o.tokens ?? Infinity;
  let generated = 0;
  let next = 0;
  let running = 0;
  try {
    const submit = () => {
      const i = next++;
      out.push([]);
      running++;
      engine.submit({
        promptIds: prompts[i],
        maxNewTokens: o.maxNewTokens,
        temperature: o.temperature,
        topK: o.topK,
        topP: o.topP,
        seed: (o.seed ?? 0) + i,
        onToken: (id) => {
          out[i].push(id);
          generated++;
        },
        onDone: () => running--,
      });
    };
    while (next < prompts.length || running > 0) {
      while (next < prompts.length && running < (o.batch ?? 8) && generated < budget) submit();
      if (running === 0) break;
      engine.step();
      o.onProgress?.(generated, next);
    }
  } finally {
    engine.close();
  }
  return out;
}
