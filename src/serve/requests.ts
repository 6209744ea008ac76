// The OpenAI request bodies the server accepts, checked field by field. A bad field is an
// ApiError (400, type invalid_request_error, `param` naming the field), as the OpenAI API answers.

import type { ChatMessage } from '../io/chat-template.js';

export class ApiError extends Error {
  constructor(
    readonly status: number,
    message: string,
    readonly param: string | null = null,
    readonly code: string | null = null,
    readonly type = status === 401
      ? 'authentication_error'
      : status >= 500
        ? 'server_error'
        : 'invalid_request_error',
  ) {
    super(message);
  }

  body(): { error: { message: string; type: string; param: string | null; code: string | null } } {
    return { error: { message: this.message, type: this.type, param: this.param, code: this.code } };
  }
}

/** What both endpoints share: sampling, limits, stop strings, streaming. */
export interface SamplingRequest {
  model: string | null;
  maxTokens: number | null;
  temperature: number;
  topP: number;
  topK: number;
  seed: number | null;
  stop: string[];
  stream: boolean;
  includeUsage: boolean;
}

export interface CompletionRequest extends SamplingRequest {
  /** text, or token ids */
  prompt: string | number[];
}

export interface ChatRequest extends SamplingRequest {
  messages: ChatMessage[];
}

type Body = Record<string, unknown>;

function asBody(body: unknown): Body {
  if (!body || typeof body !== 'object' || Array.isArray(body))
    throw new ApiError(400, 'the request body must be a JSON object');
  return body as Body;
}

function number(
  b: Body,
  name: string,
  fallback: number,
  o: { min?: number; max?: number; integer?: boolean; minExclusive?: boolean } = {},
): number {
  const v = b[name];
  if (v === undefined || v === null) return fallback;
  if (typeof v !== 'number' || !Number.isFinite(v) || (o.integer && !Number.isInteger(v)))
    throw new ApiError(
      400,
      `${name} must be ${o.integer ? 'an integer' : 'a number'}, got ${JSON.stringify(v)}`,
      name,
    );
  const low = o.min !== undefined && (o.minExclusive ? v <= o.min : v < o.min);
  if (low || (o.max !== undefined && v > o.max)) {
    const range = `${o.min === undefined ? '' : `${o.minExclusive ? '>' : '>='} ${o.min}`}${
      o.min !== undefined && o.max !== undefined ? ' and ' : ''
    }${o.max === undefined ? '' : `<= ${o.max}`}`;
    throw new ApiError(400, `${name} must be ${range}, got ${v}`, name);
  }
  return v;
}

function sampling(b: Body): SamplingRequest {
  if (b.model !== undefined && typeof b.model !== 'string')
    throw new ApiError(400, 'model must be a string', 'model');
  const n = number(b, 'n', 1, { integer: true, min: 1 });
  if (n !== 1) throw new ApiError(400, `n must be 1 (one choice per request), got ${n}`, 'n');
  let stop: string[] = [];
  if (typeof b.stop === 'string') stop = [b.stop];
  else if (Array.isArray(b.stop)) {
    if (!b.stop.every((s) => typeof s === 'string' && s.length > 0))
      throw new ApiError(400, 'stop must be a string or a list of non-empty strings', 'stop');
    if (b.stop.length > 4)
      throw new ApiError(400, `stop holds at most 4 strings, got ${b.stop.length}`, 'stop');
    stop = b.stop as string[];
  } else if (b.stop !== undefined && b.stop !== null)
    throw new ApiError(400, 'stop must be a string or a list of strings', 'stop');
  if (b.stream !== undefined && b.stream !== null && typeof b.stream !== 'boolean')
    throw new ApiError(400, 'stream must be a boolean', 'stream');
  const so = b.stream_options;
  if (so !== undefined && so !== null && (typeof so !== 'object' || Array.isArray(so)))
    throw new ApiError(400, 'stream_options must be an object', 'stream_options');
  const maxName = b.max_completion_tokens !== undefined ? 'max_completion_tokens' : 'max_tokens';
  const maxTokens = number(b, maxName, NaN, { integer: true, min: 0 });
  const topK = number(b, 'top_k', 0, { integer: true, min: -1 });
  return {
    model: (b.model as string | undefined) ?? null,
    maxTokens: Number.isNaN(maxTokens) ? null : maxTokens,
    temperature: number(b, 'temperature', 1, { min: 0, max: 2 }),
    topP: number(b, 'top_p', 1, { min: 0, max: 1, minExclusive: true }),
    topK: topK === -1 ? 0 : topK,
    seed: b.seed === undefined || b.seed === null ? null : number(b, 'seed', 0, { integer: true }),
    stop,
    stream: b.stream === true,
    includeUsage: (so as { include_usage?: unknown } | undefined)?.include_usage === true,
  };
}

export function parseCompletion(body: unknown): CompletionRequest {
  const b = asBody(body);
  const s = sampling(b);
  let prompt: string | number[];
  const p = b.prompt;
  if (typeof p === 'string') prompt = p;
  else if (Array.isArray(p) && p.length === 1 && typeof p[0] === 'string') prompt = p[0];
  else if (Array.isArray(p) && p.length > 0 && p.every((x) => Number.isInteger(x) && (x as number) >= 0))
    prompt = p as number[];
  else if (Array.isArray(p) && p.length > 1 && p.every((x) => typeof x === 'string'))
    throw new ApiError(400, `prompt: one prompt per request, got ${p.length}`, 'prompt');
  else if (p === undefined) throw new ApiError(400, 'prompt is required', 'prompt');
  else throw new ApiError(400, 'prompt must be a string or a list of token ids', 'prompt');
  if (b.echo === true) throw new ApiError(400, 'echo is not supported', 'echo');
  if (b.logprobs !== undefined && b.logprobs !== null && b.logprobs !== 0 && b.logprobs !== false)
    throw new ApiError(400, 'logprobs is not supported', 'logprobs');
  return { ...s, prompt };
}

const ROLES = new Set(['system', 'developer', 'user', 'assistant', 'tool']);

export function parseChat(body: unknown): ChatRequest {
  const b = asBody(body);
  const s = sampling(b);
  if (!Array.isArray(b.messages) || b.messages.length === 0)
    throw new ApiError(400, 'messages must be a non-empty list of {role, content}', 'messages');
  const messages = b.messages.map((m: unknown, i): ChatMessage => {
    const where = `messages[${i}]`;
    if (!m || typeof m !== 'object') throw new ApiError(400, `${where} must be an object`, where);
    const { role, content } = m as { role?: unknown; content?: unknown };
    if (typeof role !== 'string' || !ROLES.has(role))
      throw new ApiError(
        400,
        `${where}.role must be one of ${[...ROLES].join(', ')}, got ${JSON.stringify(role)}`,
        `${where}.role`,
      );
    let text: string;
    if (typeof content === 'string') text = content;
    else if (content === null && role === 'assistant') text = '';
    else if (Array.isArray(content)) {
      // the list form: text parts only
      text = content
        .map((part: unknown, j) => {
          const pt = part as { type?: unknown; text?: unknown };
          if (pt?.type !== 'text' || typeof pt.text !== 'string')
            throw new ApiError(
              400,
              `${where}.content[${j}]: only {type: "text", text} parts are supported`,
              `${where}.content`,
            );
          return pt.text;
        })
        .join('');
    } else
      throw new ApiError(
        400,
        `${where}.content must be a string or a list of text parts`,
        `${where}.content`,
      );
    return { role, content: text };
  });
  if (b.logprobs === true) throw new ApiError(400, 'logprobs is not supported', 'logprobs');
  return { ...s, messages };
}
