// mohawk convert llama2c: a llama2.c checkpoint + tokenizer -> a Hugging Face style Llama directory.
// mohawk convert model: any model directory mohawk reads -> safetensors (dtype, shards).

import { convertLlama2c } from '../../io/llama2c.js';
import { parseSize } from '../../io/safetensors.js';
import { convertModel } from '../../models/load.js';
import { CliError, parse, required, str } from '../args.js';

const HELP = `usage: mohawk convert llama2c --checkpoint FILE.bin --tokenizer FILE.model|FILE.bin --out DIR
       mohawk convert model --model DIR --out DIR [--dtype bf16|f32|f16] [--shard-size SIZE]

llama2c: writes config.json, model.safetensors, tokenizer.json, tokenizer_config.json (BOS added)
and generation_config.json. llama2.c's interleaved rotary layout is converted to HF's rotate-half
layout by permuting the q/k projection rows, so the result is a plain HF Llama.

model: re-saves any model mohawk reads (safetensors or PyTorch .bin, sharded or not) as
safetensors, tensor by tensor, keeping the source's tensor names; the other files are copied.
  --dtype D         convert floating-point tensors to bf16, f32 or f16 (default: as they are)
  --shard-size S    largest weight file, e.g. 5GB (default), 500MB, 2GiB; larger models are
                    sharded with model.safetensors.index.json`;

function convertModelCommand(rest: string[]): number {
  const p = parse(
    rest,
    {
      model: { type: 'string' },
      out: { type: 'string' },
      dtype: { type: 'string' },
      'shard-size': { type: 'string' },
    },
    HELP,
  );
  if (!p) return 0;
  const dtype = str(p, 'dtype');
  if (dtype !== undefined && dtype !== 'bf16' && dtype !== 'f32' && dtype !== 'f16')
    throw new CliError(`--dtype expects bf16, f32 or f16, got "${dtype}"`);
  const size = str(p, 'shard-size');
  let shardSize: number | undefined;
  try {
    shardSize = size === undefined ? undefined : parseSize(size);
  } catch (e) {
    throw new CliError(`--shard-size: ${(e as Error).message}`);
  }
  const out = required(p, 'out', HELP);
  const r = convertModel(required(p, 'model', HELP), out, {
    dtype,
    shardSize,
    onFile: (f) => console.error(`wrote ${f}`),
  });
  console.log(
    `wrote ${out}: ${r.tensors} tensors from ${r.format}, ${r.bytes} bytes in ${r.files.length} safetensors file(s)`,
  );
  return 0;
}

export async function run(argv: string[]): Promise<number> {
  const [kind, ...rest] = argv;
  if (kind === '--help' || kind === '-h') {
    console.log(HELP);
    return 0;
  }
  if (kind === 'model') return convertModelCommand(rest);
  if (kind !== 'llama2c')
    throw new CliError(`convert: unknown source "${kind ?? ''}" (supported: llama2c, model)\n\n${HELP}`);
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
