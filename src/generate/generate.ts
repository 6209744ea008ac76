// Autoregressive generation for any CausalLM: one prefill over the prompt fills the decoding
// state (KV caches for attention layers, conv + SSM states for SSM layers), then each new token
// costs one single-token forward.

import type { Tokenizer } from '../io/tokenizer.js';
import type { CausalLM } from '../models/types.js';
import { castParameters, getAutocast, noGrad, scope, tensor, withCastParameters } from '../tensor/index.js';
import { Random } from '../util/random.js';
import { Decoder } from './decode-graph.js';
import { sampleToken, type SamplingOptions } from './sampling.js';

export interface GenerateOptions extends SamplingOptions {
  maxNewTokens: number;
  seed?: number;
  /** stop at the model's EOS token (default true) */
  stopAtEos?: boolean;
  /** called with each newly decoded piece of text */
  onText?: (text: string) => void;
  /** called with each new token id */
  onToken?: (id: number) => void;
  /**
   * decode each token as one replayed graph where the model allows it (recurrent students):
   * default 'auto', on for CUDA; MOHAWK_CUDA_GRAPH=0 turns graphs off (see decode-graph.ts)
   */
  graph?: boolean | 'auto';
}

/** New token ids after `promptIds`. */
export function generateIds(model: CausalLM, promptIds: number[], opts: GenerateOptions): number[] {
  if (promptIds.length === 0)
    throw new Error('generate: the prompt is empty and the tokenizer adds no BOS; give a prompt');
  const rng = new Random(opts.seed ?? 0);
  const eos = opts.stopAtEos === false ? null : model.info.eosTokenId;
  const maxLen = model.info.maxSeqLen;
  const out: number[] = [];
  const cache = model.createCache(1);
  // under autocast the weights are rounded to 16 bits once for the whole generation
  const dt = getAutocast();
  const casts = dt ? castParameters(model.parameters(), dt) : null;
  let decoder: Decoder | null = null;
  const greedy = (opts.temperature ?? 1) <= 0;
  try {
    withCastParameters(casts, () => {
      let input = promptIds;
      for (let i = 0; i < opts.maxNewTokens; i++) {
        if (cache.position + input.length > maxLen) break;
        // the prompt's prefill eagerly, then one token at a time through the decoder (greedy:
        // the argmax on the device, one number read back instead of the logits)
        let next: number;
        if (i > 0) {
          decoder ??= new Decoder(model, cache, 1, {
            graph: opts.graph,
            output: greedy ? 'greedy' : 'logits',
          });
          next = greedy ? decoder.next(input)[0] : sampleToken(decoder.step(input), rng, opts);
        } else {
          const row = noGrad(() =>
            scope(() => {
              const ids = tensor(input, [1, input.length], 'i32');
              return model.forward(ids, { cache, lastLogitsOnly: true }).logits.toArray();
            }),
          );
          next = sampleToken(row, rng, opts);
        }
        if (eos !== null && next === eos) break;
        out.push(next);
        opts.onToken?.(next);
        input = [next];
      }
    });
  } finally {
    // the graph reads the cache and the cast weights: it goes first
    (decoder as Decoder | null)?.dispose();
    cache.dispose();
    casts?.dispose();
  }
  return out;
}

export interface GenerateResult {
  prompt: string;
  completion: string;
  /** new tokens only */
  ids: number[];
}

/** Generate text, streaming decoded pieces through onText. */
export function generate(
  model: CausalLM,
  tokenizer: Tokenizer,
  opts: GenerateOptions & { prompt: string; addBos?: boolean },
): GenerateResult {
  const promptIds = tokenizer.encode(opts.prompt, { addBos: opts.addBos });
  // New text = decode(tail of prompt + new ids) minus decode(tail of prompt): decoding the new ids
  // alone would drop a leading space (SentencePiece strips the first one) or split a character.
  const anchor = promptIds.slice(-8);
  const anchorText = tokenizer.decode(anchor);
  const textOf = (ids: number[]): string => {
    const full = tokenizer.decode([...anchor, ...ids]);
    return full.startsWith(anchorText) ? full.slice(anchorText.length) : tokenizer.decode(ids);
  };
  let emitted = '';
  const sofar: number[] = [];
  const ids = generateIds(model, promptIds, {
    ...opts,
    onToken: (id) => {
      opts.onToken?.(id);
      sofar.push(id);
      if (!opts.onText) return;
      // decode the whole completion so multi-byte characters and leading-space rules come out right
      const text = textOf(sofar);
      if (text.endsWith('\uFFFD')) return; // an incomplete UTF-8 sequence: wait for more bytes
      opts.onText(text.slice(emitted.length));
      emitted = text;
    },
  });
  const completion = textOf(ids);
  if (opts.onText && completion.length > emitted.length) opts.onText(completion.slice(emitted.length));
  return { prompt: opts.prompt, completion, ids };
}
