// mohawk score: per-token log-probabilities, mean negative log-likelihood and perplexity.

import fs from 'node:fs';
import { loadModel } from '../../models/load.js';
import { tokenLogprobs } from '../../eval/score.js';
import { CliError, flag, num, parse, required, runHelp, runOptions, selectDevice, str } from '../args.js';

const HELP = `usage: mohawk score --model DIR (--text STR | --file PATH | --ids 1,2,3) [options]

Score a text under a model: log p(ids[t] | ids[<t]) for every token after the first, the mean
negative log-likelihood (nats/token) and the perplexity exp(nll).

  --model DIR      a model directory (config.json, model.safetensors, tokenizer.json)
  --text STR       text to tokenize (BOS is prepended when the tokenizer config says so)
  --file PATH      read the text from a file
  --ids LIST       comma-separated token ids, taken verbatim
  --no-bos         do not prepend BOS to --text/--file
  --window N       score long inputs in windows of N tokens (default: the model's max length)
  --stride S       windows advance by S tokens (default N/2); each token is scored once
  --json           print {"tokens", "logprobs", "nll", "ppl"}
${runHelp(19)}`;

export async function run(argv: string[]): Promise<number> {
  const p = parse(
    argv,
    {
      model: { type: 'string' },
      text: { type: 'string' },
      file: { type: 'string' },
      ids: { type: 'string' },
      'no-bos': { type: 'boolean' },
      window: { type: 'string' },
      stride: { type: 'string' },
      json: { type: 'boolean' },
      ...runOptions,
    },
    HELP,
  );
  if (!p) return 0;
  const dir = required(p, 'model', HELP);
  const sources = ['text', 'file', 'ids'].filter((k) => str(p, k) !== undefined);
  if (sources.length !== 1) throw new CliError(`give exactly one of --text, --file, --ids\n\n${HELP}`);
  await selectDevice(p);
  const { model, tokenizer } = loadModel(dir);
  let ids: number[];
  const idsArg = str(p, 'ids');
  if (idsArg !== undefined) {
    ids = idsArg.split(',').map((s) => {
      const v = Number(s.trim());
      if (!Number.isInteger(v) || v < 0 || v >= model.info.vocabSize) {
        throw new CliError(
          `--ids: "${s}" is not a token id below the vocabulary size ${model.info.vocabSize}`,
        );
      }
      return v;
    });
  } else {
    if (!tokenizer) throw new CliError(`${dir}: no tokenizer.json; use --ids`);
    let text = str(p, 'text');
    const file = str(p, 'file');
    if (file !== undefined) {
      try {
        text = fs.readFileSync(file, 'utf8');
      } catch {
        throw new CliError(`--file: cannot read ${file}`);
      }
    }
    ids = tokenizer.encode(text!, flag(p, 'no-bos') ? { addBos: false } : {});
  }
  if (ids.length < 2) throw new CliError('the input has fewer than 2 tokens: nothing to score');
  const window = str(p, 'window') === undefined ? undefined : num(p, 'window', 0, { integer: true, min: 2 });
  const stride = str(p, 'stride') === undefined ? undefined : num(p, 'stride', 0, { integer: true, min: 1 });
  const lp = tokenLogprobs(model, ids, { window, stride });
  const nll = -lp.reduce((a, b) => a + b, 0) / lp.length;
  const result = { tokens: ids.length, logprobs: Array.from(lp), nll, ppl: Math.exp(nll) };
  if (flag(p, 'json')) {
    console.log(JSON.stringify(result));
    return 0;
  }
  if (tokenizer && ids.length <= 200) {
    console.log('  pos  token            log p');
    for (let t = 1; t < ids.length; t++) {
      const piece = JSON.stringify(tokenizer.decode([ids[t]])).slice(0, 16);
      console.log(`${String(t).padStart(5)}  ${piece.padEnd(16)} ${lp[t - 1].toFixed(4).padStart(8)}`);
    }
  }
  console.log(`tokens ${result.tokens}   nll ${nll.toFixed(4)} nats/token   ppl ${result.ppl.toFixed(3)}`);
  return 0;
}
