// Per-token log-probabilities of a token sequence under a model, in windows when the sequence
// is longer than the model's context.

import { crossEntropy, noGrad, scope, tensor } from '../tensor/index.js';
import type { CausalLM } from '../models/types.js';

export interface ScoreOptions {
  /** the longest window scored at once (default: the model's maximum length, capped at 4096) */
  window?: number;
  /** how far each window advances (default: half the window); every token is scored once */
  stride?: number;
}

/**
 * log p(ids[t] | ids[<t]) for t = 1..N-1. Sequences longer than the window are scored in
 * windows that advance by `stride`; each window scores only the tokens not scored before,
 * with the preceding tokens of the window as context (the Hugging Face perplexity recipe).
 */
export function tokenLogprobs(model: CausalLM, ids: number[], opts: ScoreOptions = {}): Float64Array {
  const n = ids.length;
  const out = new Float64Array(Math.max(n - 1, 0));
  if (n < 2) return out;
  const window = Math.max(2, Math.min(opts.window ?? Math.min(model.info.maxSeqLen, 4096), n));
  const stride = Math.max(1, Math.min(opts.stride ?? Math.floor(window / 2), window - 1));
  for (const id of ids) {
    if (!Number.isInteger(id) || id < 0 || id >= model.info.vocabSize) {
      throw new Error(`score: token id ${id} outside the vocabulary of ${model.info.vocabSize}`);
    }
  }
  let scoredUpTo = 0; // targets 1..scoredUpTo are done
  for (let begin = 0; scoredUpTo < n - 1; begin += stride) {
    const end = Math.min(begin + window, n);
    const chunk = ids.slice(begin, end);
    const nll = noGrad(() =>
      scope(() => {
        const input = tensor(chunk.slice(0, -1), [1, chunk.length - 1], 'i32');
        const target = tensor(chunk.slice(1), [1, chunk.length - 1], 'i32');
        const logits = model.forward(input).logits;
        return crossEntropy(logits, target, { reduction: 'none' }).toArray();
      }),
    );
    // target index t (absolute) = begin + 1 + j
    for (let j = 0; j < nll.length; j++) {
      const t = begin + 1 + j;
      if (t > scoredUpTo) out[t - 1] = -nll[j];
    }
    scoredUpTo = end - 1;
    if (end === n) break;
  }
  return out;
}
