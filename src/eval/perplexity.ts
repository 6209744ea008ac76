// Sliding-window perplexity (the Hugging Face recipe): windows of T tokens start every S tokens;
// each window scores only the tokens no earlier window scored, so every token after the first is
// scored exactly once, with up to T - 1 tokens of context. Windows are scored in batches.

import type { CausalLM } from '../models/types.js';
import { scoreRows, type ScoreRow } from './loglikelihood.js';

export interface Window {
  /** the window holds ids[begin..end) */
  begin: number;
  end: number;
  /** it scores targets ids[from..end) */
  from: number;
}

/** The windows over n tokens for context T and stride S (1 <= S <= T - 1). */
export function slidingWindows(n: number, context: number, stride: number): Window[] {
  if (!(Number.isInteger(context) && context >= 2))
    throw new Error(`perplexity: context ${context} must be >= 2`);
  if (!(Number.isInteger(stride) && stride >= 1 && stride <= context - 1))
    throw new Error(
      `perplexity: stride ${stride} must be in [1, context - 1 = ${context - 1}] so every token is scored with context`,
    );
  const out: Window[] = [];
  let scored = 1; // targets below this index are done (token 0 has no context)
  for (let begin = 0; scored < n; begin += stride) {
    const end = Math.min(begin + context, n);
    out.push({ begin, end, from: scored });
    scored = end;
  }
  return out;
}

export interface PerplexityOptions {
  /** T, tokens per window (model input T - 1 plus the last target) */
  context: number;
  /** S, how far windows advance */
  stride: number;
  /** windows per forward (default 8) */
  batchSize?: number;
  onProgress?: (windowsDone: number, windowsTotal: number, tokensDone: number) => void;
}

export interface PerplexityResult {
  /** tokens scored: the sum over documents of (length - 1) */
  tokens: number;
  /** the sum of -log p over scored tokens (nats) */
  nllSum: number;
  /** mean nats per scored token */
  nll: number;
  ppl: number;
  windows: number;
  documents: number;
  /** log p of each scored token, in order (targets 1..n-1 of each document in turn) */
  logprobs: Float64Array;
}

/**
 * Perplexity of one token sequence, or of several documents scored independently (each from its
 * own first token) and pooled; the windows of all documents share batches.
 */
export function perplexity(
  model: CausalLM,
  ids: number[] | number[][],
  opts: PerplexityOptions,
): PerplexityResult {
  const docs = (ids.length > 0 && Array.isArray(ids[0]) ? ids : [ids]) as number[][];
  const rows: ScoreRow[] = [];
  const offsets: number[] = []; // where each row's log-probs go in the pooled output
  let base = 0;
  docs.forEach((doc, d) => {
    if (doc.length < 2)
      throw new Error(`perplexity: document ${d} has ${doc.length} token(s), nothing to score`);
    for (const w of slidingWindows(doc.length, opts.context, opts.stride)) {
      rows.push({ input: doc.slice(w.begin, w.end - 1), targets: doc.slice(w.from, w.end) });
      offsets.push(base + w.from - 1);
    }
    base += doc.length - 1;
  });
  const scores = scoreRows(model, rows, {
    batchSize: opts.batchSize ?? 8,
    onProgress: (done, tokens) => opts.onProgress?.(done, rows.length, tokens),
  });
  const logprobs = new Float64Array(base);
  let nllSum = 0;
  scores.forEach((s, i) => {
    logprobs.set(s.logprobs, offsets[i]);
    nllSum -= s.loglikelihood;
  });
  return {
    tokens: base,
    nllSum,
    nll: nllSum / base,
    ppl: Math.exp(nllSum / base),
    windows: rows.length,
    documents: docs.length,
    logprobs,
  };
}
