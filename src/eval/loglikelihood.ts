// Log-likelihood of continuations given contexts, with lm-evaluation-harness semantics, scored
// in batches: rows of similar length are padded on the right (harmless for causal models: no
// position attends to a later one) and each batch costs one forward and one or two host reads.

import { crossEntropy, equal, max, mul, noGrad, scope, slice, tensor, type Tensor } from '../tensor/index.js';
import type { CausalLM } from '../models/types.js';

/** What scoring needs from a tokenizer (io/tokenizer.ts's Tokenizer satisfies it). */
export interface EvalTokenizer {
  encode(text: string, opts?: { addBos?: boolean }): number[];
  decode?(ids: number[]): string;
  readonly bosTokenId: number | null;
  readonly eosTokenId?: number | null;
  /** whether the tokenizer prepends BOS by default */
  readonly addBos: boolean;
}

/** One log-likelihood request: log p(continuation | context). */
export interface Request {
  context: string;
  continuation: string;
}

export interface EncodeOptions {
  /** prepend BOS to the context (default: the tokenizer's own setting) */
  addBos?: boolean;
}

/**
 * The harness's split of a request into tokens: trailing whitespace of the context moves to the
 * front of the continuation; whole = encode(context + continuation), ctx = encode(context), and
 * the continuation's tokens are whole[len(ctx):]. BOS, when added, goes in front of the context;
 * an empty context becomes [BOS] (else [EOS]) so the first continuation token has a prediction.
 */
export function encodeRequest(
  tok: EvalTokenizer,
  req: Request,
  opts: EncodeOptions = {},
): { context: number[]; continuation: number[] } {
  let { context, continuation } = req;
  const trailing = /\s+$/.exec(context);
  if (trailing) {
    continuation = trailing[0] + continuation;
    context = context.slice(0, trailing.index);
  }
  const whole = tok.encode(context + continuation, { addBos: false });
  const ctx = tok.encode(context, { addBos: false });
  const cont = whole.slice(ctx.length);
  const bos = opts.addBos ?? tok.addBos;
  let prefix: number[] = [];
  if (bos && tok.bosTokenId !== null) prefix = [tok.bosTokenId];
  else if (ctx.length === 0) {
    const id = tok.bosTokenId ?? tok.eosTokenId ?? null;
    if (id === null) throw new Error(`eval: empty context and the tokenizer has neither BOS nor EOS`);
    prefix = [id];
  }
  return { context: [...prefix, ...ctx], continuation: cont };
}

/** A row to score: the model's input and the targets of its last `targets.length` positions. */
export interface ScoreRow {
  input: number[];
  /** input position n - k + j predicts targets[j] (n = input.length, k = targets.length) */
  targets: number[];
}

/**
 * The harness's model input for (context, continuation) tokens: the last maxLength + 1 tokens of
 * context + continuation, without the last one (left truncation). A continuation longer than
 * maxLength cannot be scored whole: only its last maxLength tokens are scored (`truncated`).
 */
export function rowFor(
  context: number[],
  continuation: number[],
  maxLength: number,
): ScoreRow & { truncated: boolean } {
  if (continuation.length === 0) throw new Error('eval: the continuation encodes to no tokens');
  const all = [...context, ...continuation];
  const kept = all.length > maxLength + 1 ? all.slice(all.length - maxLength - 1) : all;
  const truncated = continuation.length > maxLength;
  return {
    input: kept.slice(0, -1),
    targets: truncated ? continuation.slice(continuation.length - maxLength) : continuation,
    truncated,
  };
}

export interface ScoreOptions {
  /** rows per forward (default 16) */
  batchSize?: number;
  /** also find the greedy (argmax) token at every target position */
  greedy?: boolean;
  /** called after each batch with rows and input tokens done so far */
  onProgress?: (rowsDone: number, tokensDone: number) => void;
}

export interface RowScore {
  /** log p(targets[j] | ...) per target, float64 sums taken from float32 log-probs */
  logprobs: Float64Array;
  /** the sum of logprobs */
  loglikelihood: number;
  /** the argmax token at each target position (first index among ties), when asked */
  argmax?: Int32Array;
  /** every target is the argmax token, when asked */
  greedyMatch?: boolean;
}

const IGNORE = -100;

/**
 * Score rows in batches of similar length (longest first, as the harness orders them); results
 * come back in the rows' order. One forward per batch through embed -> blocks -> head, with the
 * head applied only from the first scored position of the batch on.
 */
export function scoreRows(model: CausalLM, rows: ScoreRow[], opts: ScoreOptions = {}): RowScore[] {
  const batchSize = Math.max(1, Math.floor(opts.batchSize ?? 16));
  const V = model.info.vocabSize;
  for (const r of rows) {
    if (r.targets.length === 0 || r.targets.length > r.input.length)
      throw new Error(`eval: a row of ${r.input.length} inputs cannot score ${r.targets.length} targets`);
    for (const id of [...r.input, ...r.targets])
      if (!Number.isInteger(id) || id < 0 || id >= V)
        throw new Error(`eval: token id ${id} outside the vocabulary of ${V}`);
  }
  const order = rows.map((_, i) => i).sort((a, b) => rows[b].input.length - rows[a].input.length || a - b);
  const out = new Array<RowScore>(rows.length);
  // V - v for v = 0..V-1: the max of (logits == max) * (V - v) is V - (first argmax)
  const reverseIota = opts.greedy ? Float32Array.from({ length: V }, (_, v) => V - v) : null;
  let done = 0;
  let tokens = 0;
  for (let b0 = 0; b0 < order.length; b0 += batchSize) {
    const batch = order.slice(b0, b0 + batchSize).map((i) => rows[i]);
    const B = batch.length;
    const T = batch[0].input.length;
    // first scored position of the batch: the head runs on positions lo..T-1 only
    const lo = Math.min(...batch.map((r) => r.input.length - r.targets.length));
    const Ts = T - lo;
    const ids = new Int32Array(B * T);
    const targets = new Int32Array(B * Ts).fill(IGNORE);
    batch.forEach((r, i) => {
      ids.set(r.input, i * T);
      const first = r.input.length - r.targets.length - lo;
      targets.set(r.targets, i * Ts + first);
    });
    const [nll, firstArg] = noGrad(() =>
      scope(() => {
        let h: Tensor = model.embed(tensor(ids, [B, T], 'i32'));
        for (const block of model.blocks) h = block.forward(h).out;
        if (lo > 0) h = slice(h, 1, lo, T);
        const logits = model.head(h);
        const nll = crossEntropy(logits, tensor(targets, [B, Ts], 'i32'), {
          reduction: 'none',
          ignoreIndex: IGNORE,
        }).toArray();
        if (!reverseIota) return [nll, null] as const;
        const isMax = equal(logits, max(logits, -1, true));
        const first = max(mul(isMax, tensor(reverseIota, [V])), -1).toArray();
        return [nll, first] as const;
      }),
    );
    batch.forEach((r, i) => {
      const k = r.targets.length;
      const at = i * Ts + (r.input.length - k - lo);
      const logprobs = new Float64Array(k);
      let ll = 0;
      for (let j = 0; j < k; j++) {
        logprobs[j] = -nll[at + j];
        ll += logprobs[j];
      }
      const s: RowScore = { logprobs, loglikelihood: ll };
      if (firstArg) {
        s.argmax = new Int32Array(k);
        let all = true;
        for (let j = 0; j < k; j++) {
          s.argmax[j] = V - firstArg[at + j];
          if (s.argmax[j] !== r.targets[j]) all = false;
        }
        s.greedyMatch = all;
      }
      out[order[b0 + i]] = s;
      tokens += r.input.length;
    });
    done += B;
    opts.onProgress?.(done, tokens);
  }
  return out;
}

/**
 * The context the harness would truncate to: the model's positions, or `cap` (the harness's
 * default of 2048) for models without a position limit (pure SSMs, hybrids without one).
 */
export function evalMaxLength(model: CausalLM, cap = 2048): number {
  const m = model.info.maxSeqLen;
  return Number.isFinite(m) && m < 1 << 20 ? m : cap;
}
