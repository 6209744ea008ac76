// mohawk serve: an OpenAI-compatible HTTP server for a model directory, with continuous batching.

import path from 'node:path';
import { loadChatTemplate, readChatTemplateFile } from '../../io/chat-template.js';
import { loadModel } from '../../models/load.js';
import { createServer } from '../../serve/server.js';
import { CliError, num, parse, required, runHelp, runOptions, selectDevice, str } from '../args.js';

const HELP = `usage: mohawk serve --model DIR [options]

An OpenAI-compatible server: GET /v1/models, POST /v1/completions, POST /v1/chat/completions
(stream: true for server-sent events). Concurrent requests are decoded in one batch.

  --host H              address to listen on (default 127.0.0.1)
  --port P              port (default 8000; 0 = any free port)
  --max-batch N         sequences decoded together (default 8); more requests wait in a queue
  --api-key KEY         require "Authorization: Bearer KEY" (default: $MOHAWK_API_KEY, else none)
  --model-id NAME       the model name clients use (default: the directory's name)
  --chat-template FILE  a Jinja chat template for a model whose tokenizer_config.json has none
  --chat-max-tokens N   max_tokens of a chat request that gives none (default 256)
${runHelp(24)}`;

export async function run(argv: string[]): Promise<number> {
  const p = parse(
    argv,
    {
      model: { type: 'string' },
      host: { type: 'string' },
      port: { type: 'string' },
      'max-batch': { type: 'string' },
      'api-key': { type: 'string' },
      'model-id': { type: 'string' },
      'chat-template': { type: 'string' },
      'chat-max-tokens': { type: 'string' },
      ...runOptions,
    },
    HELP,
  );
  if (!p) return 0;
  const dir = required(p, 'model', HELP);
  const host = str(p, 'host') ?? '127.0.0.1';
  const port = num(p, 'port', 8000, { integer: true, min: 0, max: 65535 });
  const maxBatch = num(p, 'max-batch', 8, { integer: true, min: 1 });
  const defaultChatMaxTokens = num(p, 'chat-max-tokens', 256, { integer: true, min: 1 });
  const apiKey = str(p, 'api-key') ?? process.env.MOHAWK_API_KEY;
  await selectDevice(p);
  const { model, tokenizer } = loadModel(dir);
  if (!tokenizer) throw new CliError(`${dir}: no tokenizer.json; serving needs one`);
  const file = str(p, 'chat-template');
  const chatTemplate = file ? readChatTemplateFile(file) : loadChatTemplate(dir);
  const modelId = str(p, 'model-id') ?? path.basename(path.resolve(dir));
  const server = createServer({
    model,
    tokenizer,
    modelId,
    chatTemplate,
    maxBatch,
    apiKey,
    defaultChatMaxTokens,
  });
  const address = await server.app.listen({ host, port });
  console.error(
    `mohawk serve: ${modelId} (${model.info.family}) at ${address}/v1, max batch ${maxBatch}` +
      `${chatTemplate ? '' : ', no chat template'}${apiKey ? ', API key required' : ''}`,
  );
  await new Promise<void>((resolve) => {
    const stop = () => resolve();
    process.once('SIGINT', stop);
    process.once('SIGTERM', stop);
  });
  await server.close();
  return 0;
}
