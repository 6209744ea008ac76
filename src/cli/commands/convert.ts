// mohawk convert llama2c: a llama2.c checkpoint + tokenizer -> a Hugging Face style Llama directory.

import { convertLlama2c } from '../../io/llama2c.js';
import { CliError, parse, required } from '../args.js';

const HELP = `usage: mohawk convert llama2c --checkpoint FILE.bin --tokenizer FILE.model|FILE.bin --out DIR

Writes config.json, model.safetensors, tokenizer.json, tokenizer_config.json (BOS added) and
generation_config.json. llama2.c's interleaved rotary layout is converted to HF's rotate-half
layout by permuting the q/k projection rows, so the result is a plain HF Llama.`;

export async function run(argv: string[]): Promise<number> {
  const [kind, ...rest] = argv;
  if (kind === '--help' || kind === '-h') {
    console.log(HELP);
    return 0;
  }
  if (kind !== 'llama2c')
    throw new CliError(`convert: unknown source "${kind ?? ''}" (supported: llama2c)\n\n${HELP}`);
  const p = parse(
    rest,
    { checkpoint: { type: 'string' }, tokenizer: { type: 'string' }, out: { type: 'string' } },
    HELP,
  );
  if (!p) return 0;
  const h = convertLlama2c(
    required(p, 'checkpoint', HELP),
    required(p, 'tokenizer', HELP),
    required(p, 'out', HELP),
  );
  console.log(
    `wrote ${required(p, 'out', HELP)}: llama, dim ${h.dim}, ${h.nLayers} layers, ${h.nHeads} heads (${h.nKvHeads} kv), vocab ${h.vocabSize}, ${h.sharedClassifier ? 'tied' : 'untied'} head`,
  );
  return 0;
}
