// An OpenAI-compatible HTTP server on fastify: /v1/models, /v1/completions and
// /v1/chat/completions (the model's chat template), JSON or server-sent events (`stream: true`).
// Every request becomes a sequence of one BatchEngine, so concurrent requests decode together
// (continuous batching); a client that disconnects cancels its sequence, which frees the slot at
// the next step.

import { randomBytes, randomInt } from 'node:crypto';
import type { ServerResponse } from 'node:http';
import Fastify, { type FastifyInstance, type FastifyReply } from 'fastify';
import { BatchEngine, type FinishReason } from '../generate/batch.js';
import type { ChatTemplate } from '../io/chat-template.js';
import type { Tokenizer } from '../io/tokenizer.js';
import type { CausalLM } from '../models/types.js';
import { ApiError, parseChat, parseCompletion, type SamplingRequest } from './requests.js';
import { CompletionText } from './text.js';

export interface ServeOptions {
  model: CausalLM;
  tokenizer: Tokenizer;
  /** the id /v1/models lists and requests may name */
  modelId: string;
  chatTemplate: ChatTemplate | null;
  /** sequences decoded together at most; more wait in a queue */
  maxBatch?: number;
  /** when set, requests need `Authorization: Bearer KEY` */
  apiKey?: string;
  /** max_tokens when a chat request gives none (completions default to 16, as OpenAI's) */
  defaultChatMaxTokens?: number;
}

export interface Server {
  app: FastifyInstance;
  engine: BatchEngine;
  /** stop the engine and the HTTP server */
  close(): Promise<void>;
}

type Kind = 'completion' | 'chat';

interface Usage {
  prompt_tokens: number;
  completion_tokens: number;
  total_tokens: number;
}

export function createServer(o: ServeOptions): Server {
  const engine = new BatchEngine(o.model, { maxBatch: o.maxBatch ?? 8 });
  const loop = engine.run();
  const created = Math.floor(Date.now() / 1000);
  const app = Fastify({ logger: false, bodyLimit: 16 << 20, forceCloseConnections: true });

  app.setErrorHandler((err: Error & { statusCode?: number }, _req, reply) => {
    const e =
      err instanceof ApiError
        ? err
        : new ApiError(err.statusCode && err.statusCode < 500 ? err.statusCode : 500, err.message);
    void reply.code(e.status).send(e.body());
  });
  app.setNotFoundHandler((req, reply) => {
    void reply
      .code(404)
      .send(new ApiError(404, `no route ${req.method} ${req.url}`, null, 'not_found').body());
  });
  if (o.apiKey) {
    const want = `Bearer ${o.apiKey}`;
    app.addHook('onRequest', async (req) => {
      if (req.headers.authorization !== want)
        throw new ApiError(
          401,
          'missing or wrong API key (Authorization: Bearer KEY)',
          null,
          'invalid_api_key',
        );
    });
  }

  app.get('/v1/models', async () => ({
    object: 'list',
    data: [{ id: o.modelId, object: 'model', created, owned_by: 'mohawk' }],
  }));
  app.get('/health', async () => ({ status: 'ok', ...engine.stats }));

  const checkModel = (s: SamplingRequest) => {
    if (s.model !== null && s.model !== o.modelId)
      throw new ApiError(
        404,
        `model "${s.model}" is not served here; this server has "${o.modelId}"`,
        'model',
        'model_not_found',
      );
  };

  app.post('/v1/completions', async (req, reply) => {
    const r = parseCompletion(req.body);
    checkModel(r);
    const promptIds = typeof r.prompt === 'string' ? o.tokenizer.encode(r.prompt) : r.prompt;
    for (const id of promptIds)
      if (id >= o.model.info.vocabSize)
        throw new ApiError(
          400,
          `prompt: token id ${id} is outside the vocabulary (${o.model.info.vocabSize})`,
          'prompt',
        );
    return respond('completion', reply, r, promptIds, r.maxTokens ?? 16);
  });

  app.post('/v1/chat/completions', async (req, reply) => {
    const r = parseChat(req.body);
    checkModel(r);
    if (!o.chatTemplate)
      throw new ApiError(
        400,
        `model "${o.modelId}" has no chat template (tokenizer_config.json: chat_template); use /v1/completions or start the server with --chat-template FILE`,
        'messages',
        'no_chat_template',
      );
    let text: string;
    try {
      text = o.chatTemplate.render(r.messages, { addGenerationPrompt: true });
    } catch (e) {
      throw new ApiError(400, (e as Error).message, 'messages');
    }
    // the template writes the special tokens it wants (as apply_chat_template, no BOS added)
    const promptIds = o.tokenizer.encode(text, { addBos: false });
    return respond('chat', reply, r, promptIds, r.maxTokens ?? o.defaultChatMaxTokens ?? 256);
  });

  function respond(
    kind: Kind,
    reply: FastifyReply,
    r: SamplingRequest,
    promptIds: number[],
    maxTokens: number,
  ): Promise<unknown> | FastifyReply {
    if (promptIds.length === 0)
      throw new ApiError(400, 'the prompt is empty and the tokenizer adds no BOS; give a prompt', 'prompt');
    const maxLen = o.model.info.maxSeqLen;
    if (promptIds.length >= maxLen)
      throw new ApiError(
        400,
        `the prompt has ${promptIds.length} tokens; the model's context is ${maxLen}`,
        'prompt',
        'context_length_exceeded',
      );
    const id = `${kind === 'chat' ? 'chatcmpl' : 'cmpl'}-${randomBytes(12).toString('hex')}`;
    const object = kind === 'chat' ? 'chat.completion' : 'text_completion';
    const text = new CompletionText(o.tokenizer, promptIds, r.stop);
    const usage = (n: number): Usage => ({
      prompt_tokens: promptIds.length,
      completion_tokens: n,
      total_tokens: promptIds.length + n,
    });
    const base = () => ({ id, object, created: Math.floor(Date.now() / 1000), model: o.modelId });
    const finishReason = (why: FinishReason) => (text.stopped ? 'stop' : why === 'cancelled' ? 'stop' : why);
    const res: ServerResponse = reply.raw;
    const sequence = {
      promptIds,
      maxNewTokens: maxTokens,
      temperature: r.temperature,
      topK: r.topK,
      topP: r.topP,
      seed: r.seed ?? randomInt(0x7fffffff),
    };

    if (!r.stream) {
      return new Promise((resolve, reject) => {
        const handle = engine.submit({
          ...sequence,
          onToken: (t) => {
            text.push(t);
            if (text.stopped) handle.cancel('stop');
          },
          onDone: (why, ids) => {
            if (why === 'error') {
              reject(new ApiError(500, `decoding failed: ${engine.lastError?.message ?? 'unknown error'}`));
              return;
            }
            text.finish();
            const choice =
              kind === 'chat'
                ? { index: 0, message: { role: 'assistant', content: text.text }, logprobs: null }
                : { index: 0, text: text.text, logprobs: null };
            resolve({
              ...base(),
              choices: [{ ...choice, finish_reason: finishReason(why) }],
              usage: usage(ids.length),
            });
          },
        });
        res.on('close', () => {
          if (!res.writableEnded) handle.cancel();
        });
      });
    }

    // server-sent events: one `data: {chunk}` per released piece of text, then `data: [DONE]`
    void reply.hijack();
    res.writeHead(200, {
      'content-type': 'text/event-stream; charset=utf-8',
      'cache-control': 'no-cache',
      connection: 'keep-alive',
    });
    const object2 = kind === 'chat' ? 'chat.completion.chunk' : 'text_completion';
    const send = (choices: unknown[], extra: Record<string, unknown> = {}) => {
      if (!res.writableEnded)
        res.write(`data: ${JSON.stringify({ ...base(), object: object2, choices, ...extra })}\n\n`);
    };
    const piece = (content: string, finish: string | null) =>
      kind === 'chat'
        ? { index: 0, delta: finish === null ? { content } : {}, logprobs: null, finish_reason: finish }
        : { index: 0, text: content, logprobs: null, finish_reason: finish };
    if (kind === 'chat')
      send([{ index: 0, delta: { role: 'assistant', content: '' }, logprobs: null, finish_reason: null }]);
    const handle = engine.submit({
      ...sequence,
      onToken: (t) => {
        const p = text.push(t);
        if (p) send([piece(p, null)]);
        if (text.stopped) handle.cancel('stop');
      },
      onDone: (why, ids) => {
        if (res.writableEnded || res.destroyed) return;
        if (why === 'error') {
          const e = new ApiError(500, `decoding failed: ${engine.lastError?.message ?? 'unknown error'}`);
          res.end(`data: ${JSON.stringify(e.body())}\n\ndata: [DONE]\n\n`);
          return;
        }
        const rest = text.finish();
        if (rest) send([piece(rest, null)]);
        send([piece('', finishReason(why))]);
        if (r.includeUsage) send([], { usage: usage(ids.length) });
        res.end('data: [DONE]\n\n');
      },
    });
    res.on('close', () => {
      if (!res.writableEnded) handle.cancel();
    });
    return reply;
  }

  return {
    app,
    engine,
    async close() {
      engine.close();
      await loop;
      await app.close();
    },
  };
}
