// Perplexity against position in the context: each document is cut into pieces of `context`
// tokens, each piece scored from its own start, so the target at index t of a piece is predicted
// from exactly t tokens of context. The mean NLL per position, pooled over pieces and bucketed,
// is the curve: flat or falling for a model that uses its whole context, rising where a model
// goes past what it can hold.

import type { CausalLM } from '../models/types.js';
import { scoreRows, type ScoreRow } from './loglikelihood.js';

export interface PositionBucket {
  /** positions [from, to): tokens of context before the target */
  from: number;
  to: number;
  /** targets pooled into this bucket */
  tokens: number;
  nll: number;
  ppl: number;
}

export interface PositionResult {
  context: number;
  pieces: number;
  tokens: number;
  /** mean NLL over every scored target */
  nll: number;
  buckets: PositionBucket[];
  /** per position 1..context-1: the summed NLL and the count (for finer curves) */
  nllSum: Float64Array;
  count: Float64Array;
}

export function perplexityByPosition(
  model: CausalLM,
  docs: number[][],
  opts: {
    context: number;
    /** positions per bucket (default context / 16) */
    bucket?: number;
    batchSize?: number;
    onProgress?: (done: number, total: number, tokens: number) => void;
  },
): PositionResult {
  const T = opts.context;
  if (!(Number.isInteger(T) && T >= 2)) throw new Error(`perplexity: context ${T} must be >= 2`);
  if (T > model.info.maxSeqLen + 1)
    throw new Error(`perplexity: context ${T} exceeds the model's length (${model.info.maxSeqLen}) + 1`);
  const rows: ScoreRow[] = [];
  for (const d of docs)
    for (let s = 0; s + 1 < d.length; s += T) {
      const piece = d.slice(s, Math.min(s + T, d.length));
      if (piece.length < 2) continue;
      rows.push({ input: piece.slice(0, -1), targets: piece.slice(1) });
    }
  if (rows.length === 0) throw new Error('perplexity: no piece of 2 or more tokens to score');
  const scores = scoreRows(model, rows, {
    batchSize: opts.batchSize ?? 4,
    onProgress: (done, tokens) => opts.onProgress?.(done, rows.length, tokens),
  });
  const nllSum = new Float64Array(T);
  const count = new Float64Array(T);
  let total = 0;
  let n = 0;
  for (const s of scores)
    s.logprobs.forEach((lp, i) => {
      nllSum[i + 1] -= lp; // target i + 1 of the piece has i + 1 tokens of context
      count[i + 1]++;
      total -= lp;
      n++;
    });
  const width = Math.max(1, opts.bucket ?? Math.ceil(T / 16));
  const buckets: PositionBucket[] = [];
  for (let from = 1; from < T; from += width) {
    const to = Math.min(T, from + width);
    let sum = 0;
    let c = 0;
    for (let p = from; p < to; p++) {
      sum += nllSum[p];
      c += count[p];
    }
    if (c > 0) buckets.push({ from, to, tokens: c, nll: sum / c, ppl: Math.exp(sum / c) });
  }
  return { context: T, pieces: rows.length, tokens: n, nll: total / n, buckets, nllSum, count };
}
