// Passkey retrieval ("needle in a haystack", after Mohtashami & Jaggi 2023): a random 5-digit
// pass key is hidden at a chosen depth of repeated filler text of a chosen length; at the end
// the model is asked for it and must produce it by greedy decoding. Synthetic, generated on the
// fly from a seed: no data files. The score is the fraction of trials whose greedy answer
// starts with the key (digits after the prompt, spaces ignored). Small models rarely answer
// right, so each trial also measures the key's NLL (nats per key token) after the prompt, with
// the needle and with the needle's sentence left out: the difference (the retrieval gain) is
// what the model took from the needle, > 0 as soon as it copies from far back at all.

import type { Tokenizer } from '../io/tokenizer.js';
import type { CausalLM } from '../models/types.js';
import { generateIds } from '../generate/generate.js';
import { scoreRows } from './loglikelihood.js';
import { Random } from '../util/random.js';

const INTRO =
  'There is an important piece of information hidden inside a lot of irrelevant text. ' +
  'Find it and memorize it. I will quiz you about it.';
const FILLER = ' The grass is green. The sky is blue. The sun is yellow. Here we go. There and back again.';
const needleText = (key: string) => ` The pass key is ${key}. Remember it. ${key} is the pass key.`;
const QUESTION = ' What is the pass key? The pass key is';
/** tokens of the greedy answer; a context length holds the prompt and the answer */
const ANSWER_TOKENS = 8;

export interface NeedleOptions {
  /** context lengths in tokens (the prompt and the 8-token answer), e.g. 1024, 2048, 4096 */
  lengths: number[];
  /** where the key sits, as a fraction of the filler (0 = right after the intro, 1 = just before the question) */
  depths: number[];
  /** keys per (length, depth) */
  trials: number;
  seed?: number;
  onTrial?: (done: number, total: number) => void;
}

export interface NeedleTrial {
  length: number;
  /** the prompt's actual length in tokens */
  tokens: number;
  depth: number;
  key: string;
  answer: string;
  correct: boolean;
  /** mean NLL per token of " KEY" after the prompt, with the needle and without it */
  keyNll: number;
  keyNllWithout: number;
}

export interface NeedleCell {
  length: number;
  depth: number;
  trials: number;
  accuracy: number;
  /** mean over trials of keyNllWithout - keyNll (nats per key token) */
  gain: number;
}

export interface NeedleResult {
  cells: NeedleCell[];
  /** per length: accuracy over all depths, or null when the length exceeds the model's context */
  byLength: { length: number; accuracy: number | null; gain: number | null; trials: number }[];
  samples: NeedleTrial[];
  /** lengths skipped: longer than the model's context */
  skipped: number[];
}

/**
 * The prompt: intro, filler sentences with the needle after the `depth` fraction of them, the
 * question; about `length` tokens (whole filler sentences, so a little under).
 */
export function needlePrompt(tokenizer: Tokenizer, length: number, depth: number, key: string): number[] {
  return tokenizer.encode(needlePromptText(tokenizer, length, depth, key));
}

/** The prompt's text; `withNeedle: false` leaves the needle's sentence out (the same filler). */
export function needlePromptText(
  tokenizer: Tokenizer,
  length: number,
  depth: number,
  key: string,
  withNeedle = true,
): string {
  const fixed = tokenizer.encode(INTRO + needleText(key) + QUESTION).length;
  const per = tokenizer.encode(FILLER).length;
  const build = (n: number) => {
    const at = Math.round(Math.min(1, Math.max(0, depth)) * n);
    return INTRO + FILLER.repeat(at) + (withNeedle ? needleText(key) : '') + FILLER.repeat(n - at) + QUESTION;
  };
  let n = Math.max(0, Math.floor((length - fixed) / per));
  // a tokenizer that merges across sentences may come out a little longer: drop filler
  while (n > 0 && tokenizer.encode(build(n)).length > length) n--;
  return build(n);
}

/** Mean NLL per token of " KEY" after the prompt text. */
function keyNll(model: CausalLM, tokenizer: Tokenizer, prompt: string, key: string): number {
  const p = tokenizer.encode(prompt);
  const full = tokenizer.encode(`${prompt} ${key}`);
  let k = 0;
  while (k < p.length && p[k] === full[k]) k++;
  const targets = full.slice(Math.max(1, k));
  const [s] = scoreRows(model, [{ input: full.slice(0, -1), targets }], { batchSize: 1 });
  return -s.loglikelihood / targets.length;
}

/** The digits the model answered, spaces and a leading period ignored, up to the first other character. */
export function answerDigits(text: string): string {
  const m = /^[\s:]*([0-9][0-9\s]*)/.exec(text);
  return m ? m[1].replace(/\s/g, '') : '';
}

export function evaluateNeedle(model: CausalLM, tokenizer: Tokenizer, o: NeedleOptions): NeedleResult {
  const rng = new Random(o.seed ?? 1234);
  const maxLen = model.info.maxSeqLen;
  const lengths = [...o.lengths].sort((a, b) => a - b);
  const runnable = lengths.filter((l) => l <= maxLen);
  const skipped = lengths.filter((l) => l > maxLen);
  const total = runnable.length * o.depths.length * o.trials;
  const samples: NeedleTrial[] = [];
  const cells: NeedleCell[] = [];
  for (const length of runnable)
    for (const depth of o.depths) {
      let right = 0;
      for (let t = 0; t < o.trials; t++) {
        const key = String(rng.int(10000, 99999));
        const text = needlePromptText(tokenizer, length - ANSWER_TOKENS, depth, key);
        const ids = tokenizer.encode(text);
        const out = generateIds(model, ids, { maxNewTokens: ANSWER_TOKENS, temperature: 0 });
        const answer = tokenizer.decode(out);
        const correct = answerDigits(answer).startsWith(key);
        if (correct) right++;
        samples.push({
          length,
          tokens: ids.length,
          depth,
          key,
          answer,
          correct,
          keyNll: keyNll(model, tokenizer, text, key),
          keyNllWithout: keyNll(
            model,
            tokenizer,
            needlePromptText(tokenizer, length, depth, key, false),
            key,
          ),
        });
        o.onTrial?.(samples.length, total);
      }
      const mine = samples.slice(-o.trials);
      const gain = mine.reduce((a, x) => a + x.keyNllWithout - x.keyNll, 0) / o.trials;
      cells.push({ length, depth, trials: o.trials, accuracy: right / o.trials, gain });
    }
  const byLength = lengths.map((length) => {
    const cs = cells.filter((c) => c.length === length);
    return {
      length,
      trials: cs.reduce((a, c) => a + c.trials, 0),
      accuracy: cs.length ? cs.reduce((a, c) => a + c.accuracy, 0) / cs.length : null,
      gain: cs.length ? cs.reduce((a, c) => a + c.gain, 0) / cs.length : null,
    };
  });
  return { cells, byLength, samples, skipped };
}

/** 1024, 2048, ... doubling up to maxContext (maxContext itself included when it is not a power of two). */
export function needleLengths(maxContext: number, from = 1024): number[] {
  const out: number[] = [];
  for (let l = from; l <= maxContext; l *= 2) out.push(l);
  if (out.length === 0 || out[out.length - 1] !== maxContext) out.push(maxContext);
  return out;
}
