// Choosing the next token from a row of logits: greedy at temperature 0, otherwise softmax at a
// temperature, optionally restricted to the top k tokens and to the smallest set whose
// probability reaches top_p.

import type { Random } from '../util/random.js';

export interface SamplingOptions {
  temperature?: number;
  topK?: number;
  topP?: number;
}

export function argmax(logits: ArrayLike<number>): number {
  let best = 0;
  for (let i = 1; i < logits.length; i++) if (logits[i] > logits[best]) best = i;
  return best;
}

export function sampleToken(logits: ArrayLike<number>, rng: Random, opts: SamplingOptions = {}): number {
  const temperature = opts.temperature ?? 1;
  if (temperature <= 0) return argmax(logits);
  const n = logits.length;
  let order = Array.from({ length: n }, (_, i) => i);
  const topK = opts.topK && opts.topK > 0 ? Math.min(opts.topK, n) : n;
  const topP = opts.topP ?? 1;
  if (topK < n || topP < 1) order.sort((a, b) => logits[b] - logits[a]);
  if (topK < n) order = order.slice(0, topK);
  let max = -Infinity;
  for (const i of order) if (logits[i] > max) max = logits[i];
  let probs = order.map((i) => Math.exp((logits[i] - max) / temperature));
  let total = probs.reduce((a, b) => a + b, 0);
  if (topP < 1) {
    let acc = 0;
    let keep = 0;
    while (keep < probs.length && acc < topP * total) acc += probs[keep++];
    order = order.slice(0, Math.max(keep, 1));
    probs = probs.slice(0, order.length);
    total = probs.reduce((a, b) => a + b, 0);
  }
  let u = rng.uniform() * total;
  for (let i = 0; i < order.length; i++) {
    u -= probs[i];
    if (u <= 0) return order[i];
  }
  return order[order.length - 1];
}
