// mohawk generate: sample text from a model with a KV cache (attention) or recurrent state (SSM).

import { loadModel } from '../../models/load.js';
import { generate } from '../../generate/generate.js';
import { CliError, flag, num, parse, required, runHelp, runOptions, selectDevice, str } from '../args.js';

const HELP = `usage: mohawk generate --model DIR --prompt STR --max-new-tokens N [options]

  --temperature T   0 = greedy (default 1)
  --top-k K         sample among the K most likely tokens
  --top-p P         sample among the smallest set with probability >= P
  --seed S          random seed (default 0)
  --no-bos          do not prepend BOS to the prompt
  --json            print {"prompt", "completion", "ids"} (ids: new tokens only) instead of streaming
${runHelp(20)}`;

export async function run(argv: string[]): Promise<number> {
  const p = parse(
    argv,
    {
      model: { type: 'string' },
      prompt: { type: 'string' },
      'max-new-tokens': { type: 'string' },
      temperature: { type: 'string' },
      'top-k': { type: 'string' },
      'top-p': { type: 'string' },
      seed: { type: 'string' },
      'no-bos': { type: 'boolean' },
      json: { type: 'boolean' },
      ...runOptions,
    },
    HELP,
  );
  if (!p) return 0;
  const dir = required(p, 'model', HELP);
  const prompt = str(p, 'prompt');
  if (prompt === undefined) throw new CliError(`--prompt is required (it may be "")\n\n${HELP}`);
  const maxNewTokens = num(p, 'max-new-tokens', NaN, { integer: true, min: 0 });
  if (Number.isNaN(maxNewTokens)) throw new CliError(`--max-new-tokens is required\n\n${HELP}`);
  const temperature = num(p, 'temperature', 1, { min: 0 });
  const topK = num(p, 'top-k', 0, { integer: true, min: 0 });
  const topP = num(p, 'top-p', 1, { min: 0, max: 1 });
  const seed = num(p, 'seed', 0, { integer: true, min: 0 });
  await selectDevice(p);
  const { model, tokenizer } = loadModel(dir);
  if (!tokenizer) throw new CliError(`${dir}: no tokenizer.json; generation needs one`);
  const json = flag(p, 'json');
  if (!json) process.stdout.write(prompt);
  const r = generate(model, tokenizer, {
    prompt,
    maxNewTokens,
    temperature,
    topK,
    topP,
    seed,
    addBos: flag(p, 'no-bos') ? false : undefined,
    onText: json ? undefined : (t) => process.stdout.write(t),
  });
  if (json) console.log(JSON.stringify({ prompt: r.prompt, completion: r.completion, ids: r.ids }));
  else process.stdout.write('\n');
  return 0;
}
