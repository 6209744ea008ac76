// mohawk serve over real HTTP on 127.0.0.1: greedy and seeded output equal to generate() token for
// token (alone and while other requests decode in the same batch), server-sent events, chat
// templates, stop strings, OpenAI-style errors, the API key, and a disconnecting client freeing
// its slot. Models: a tiny random Llama teacher (byte tokenizer), its hybrid and pure-SSM students.

import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import { transferStudent } from '../src/distill/transfer.js';
import { generate, generateIds } from '../src/generate/generate.js';
import { BatchEngine } from '../src/generate/batch.js';
import { ChatTemplate } from '../src/io/chat-template.js';
import { byteTokenizer } from '../src/io/tokenizer.js';
import { LlamaForCausalLM } from '../src/models/llama.js';
import type { CausalLM } from '../src/models/types.js';
import { createServer, type Server } from '../src/serve/server.js';
import { tinyLlama } from './helpers.js';

// response bodies are read field by field, as a client would
// eslint-disable-next-line @typescript-eslint/no-explicit-any
type Json = Record<string, any>;

const CHAT = `{% for m in messages %}<|{{ m.role }}|>{{ m.content }}{{ eos_token }}{% endfor %}{% if add_generation_prompt %}<|assistant|>{% endif %}`;

// sharpened so that greedy decoding has clear winners and sampling has structure
function tinyTeacher(): LlamaForCausalLM {
  return tinyLlama({}, true);
}

const tok = byteTokenizer();
const teacher = tinyTeacher();
const hybrid = transferStudent(teacher, { alphaInit: 0.9, chunkSize: 16, attentionLayers: [1] });
const ssm = transferStudent(teacher, { alphaInit: 0.9, chunkSize: 16 });

async function start(model: CausalLM, opts: { maxBatch?: number; apiKey?: string; chat?: boolean } = {}) {
  const server = createServer({
    model,
    tokenizer: tok,
    modelId: 'tiny',
    chatTemplate: opts.chat === false ? null : new ChatTemplate(CHAT, { eos_token: '<|endoftext|>' }),
    maxBatch: opts.maxBatch ?? 4,
    apiKey: opts.apiKey,
  });
  const url = await server.app.listen({ host: '127.0.0.1', port: 0 });
  return { server, url };
}

async function post(url: string, body: unknown, headers: Record<string, string> = {}) {
  const r = await fetch(url, {
    method: 'POST',
    headers: { 'content-type': 'application/json', ...headers },
    body: typeof body === 'string' ? body : JSON.stringify(body),
  });
  return { status: r.status, json: (await r.json()) as Json };
}

/** The data lines of an SSE response. */
async function events(url: string, body: unknown): Promise<string[]> {
  const r = await fetch(url, {
    method: 'POST',
    headers: { 'content-type': 'application/json' },
    body: JSON.stringify(body),
  });
  assert.equal(r.status, 200);
  assert.match(r.headers.get('content-type') ?? '', /text\/event-stream/);
  const text = await r.text();
  return text
    .split('\n\n')
    .filter((l) => l.length > 0)
    .map((l) => {
      assert.ok(l.startsWith('data: '), `SSE line ${JSON.stringify(l)}`);
      return l.slice(6);
    });
}

describe('serve: completions', () => {
  let s: Server;
  let url: string;
  before(async () => ({ server: s, url } = await start(hybrid)));
  after(async () => s.close());

  it('/v1/models lists the model', async () => {
    const r = await fetch(`${url}/v1/models`);
    const j = (await r.json()) as { data: { id: string; object: string }[] };
    assert.equal(r.status, 200);
    assert.deepEqual(
      j.data.map((m) => [m.id, m.object]),
      [['tiny', 'model']],
    );
  });

  it('greedy text and usage equal generate()', async () => {
    const want = generate(hybrid, tok, { prompt: 'Call me', maxNewTokens: 20, temperature: 0 });
    const { status, json } = await post(`${url}/v1/completions`, {
      model: 'tiny',
      prompt: 'Call me',
      max_tokens: 20,
      temperature: 0,
    });
    assert.equal(status, 200);
    assert.equal(json.object, 'text_completion');
    assert.equal(json.choices[0].text, want.completion);
    const promptTokens = tok.encode('Call me').length;
    assert.deepEqual(json.usage, {
      prompt_tokens: promptTokens,
      completion_tokens: want.ids.length,
      total_tokens: promptTokens + want.ids.length,
    });
    assert.equal(json.choices[0].finish_reason, want.ids.length === 20 ? 'length' : 'stop');
  });

  it('concurrent requests decode in one batch and each equals generate() (greedy and seeded)', async () => {
    const reqs = Array.from({ length: 7 }, (_, i) => ({
      prompt: ['The whale', 'a', 'Ishmael sat by the sea', 'xyz', 'Moby', 'Dick was', 'ship'][i],
      max_tokens: 10 + 3 * i,
      temperature: i % 2 === 0 ? 0 : 0.9,
      top_k: i === 3 ? 20 : undefined,
      top_p: i === 5 ? 0.8 : undefined,
      seed: 11 + i,
    }));
    const peakBefore = s.engine.stats.peakActive;
    const got = await Promise.all(reqs.map((r) => post(`${url}/v1/completions`, r)));
    for (const [i, r] of reqs.entries()) {
      const want = generate(hybrid, tok, {
        prompt: r.prompt,
        maxNewTokens: r.max_tokens,
        temperature: r.temperature,
        topK: r.top_k,
        topP: r.top_p,
        seed: r.seed,
      });
      assert.equal(got[i].json.choices[0].text, want.completion, `request ${i}`);
      assert.equal(got[i].json.usage.completion_tokens, want.ids.length, `request ${i} tokens`);
    }
    assert.ok(
      s.engine.stats.peakActive >= Math.max(2, peakBefore),
      `peak batch ${s.engine.stats.peakActive}`,
    );
    assert.ok(s.engine.stats.peakActive <= 4, 'the batch never exceeds --max-batch');
  });

  it('token-id prompts, stop strings and stream: true', async () => {
    const ids = tok.encode('The whale');
    const full = generate(hybrid, tok, { prompt: 'The whale', maxNewTokens: 24, temperature: 0 }).completion;
    const a = await post(`${url}/v1/completions`, { prompt: ids, max_tokens: 24, temperature: 0 });
    assert.equal(a.json.choices[0].text, full);
    const stop = full.slice(5, 8);
    const cut = full.slice(0, full.indexOf(stop));
    const b = await post(`${url}/v1/completions`, {
      prompt: 'The whale',
      max_tokens: 24,
      temperature: 0,
      stop: [stop],
    });
    assert.equal(b.json.choices[0].text, cut);
    assert.equal(b.json.choices[0].finish_reason, 'stop');
    for (const st of [undefined, [stop]]) {
      const lines = await events(`${url}/v1/completions`, {
        prompt: 'The whale',
        max_tokens: 24,
        temperature: 0,
        stream: true,
        stop: st,
        stream_options: { include_usage: true },
      });
      assert.equal(lines.at(-1), '[DONE]');
      const chunks = lines.slice(0, -1).map((l) => JSON.parse(l) as Json);
      const text = chunks.map((c) => c.choices[0]?.text ?? '').join('');
      assert.equal(text, st ? cut : full);
      assert.ok(chunks.length >= 4, 'the text arrives in pieces');
      const last = chunks.at(-1)!;
      assert.deepEqual(last.choices, []);
      assert.equal(last.usage.prompt_tokens, ids.length);
      assert.equal(chunks.at(-2)!.choices[0].finish_reason, st ? 'stop' : 'length');
    }
  });
});

describe('serve: chat', () => {
  let s: Server;
  let url: string;
  before(async () => ({ server: s, url } = await start(ssm)));
  after(async () => s.close());
  const messages = [
    { role: 'system', content: 'Be brief.' },
    { role: 'user', content: 'Who is Ishmael?' },
  ];

  it('renders the chat template and equals generate() on the rendered prompt', async () => {
    const rendered = '<|system|>Be brief.<|endoftext|><|user|>Who is Ishmael?<|endoftext|><|assistant|>';
    assert.equal(
      new ChatTemplate(CHAT, { eos_token: '<|endoftext|>' }).render(messages, { addGenerationPrompt: true }),
      rendered,
    );
    const want = generate(ssm, tok, { prompt: rendered, maxNewTokens: 15, temperature: 0, addBos: false });
    const { status, json } = await post(`${url}/v1/chat/completions`, {
      messages,
      max_tokens: 15,
      temperature: 0,
    });
    assert.equal(status, 200);
    assert.equal(json.object, 'chat.completion');
    assert.deepEqual(json.choices[0].message, { role: 'assistant', content: want.completion });
    assert.equal(json.usage.prompt_tokens, tok.encode(rendered, { addBos: false }).length);
    const lines = await events(`${url}/v1/chat/completions`, {
      messages,
      max_tokens: 15,
      temperature: 0,
      stream: true,
    });
    const chunks = lines.slice(0, -1).map((l) => JSON.parse(l) as Json);
    assert.equal(chunks[0].object, 'chat.completion.chunk');
    assert.equal(chunks[0].choices[0].delta.role, 'assistant');
    assert.equal(chunks.map((c) => c.choices[0].delta.content ?? '').join(''), want.completion);
  });

  it('a client that disconnects frees its slot', async () => {
    const one = await start(ssm, { maxBatch: 1 });
    try {
      const ac = new AbortController();
      const r = await fetch(`${one.url}/v1/completions`, {
        method: 'POST',
        headers: { 'content-type': 'application/json' },
        body: JSON.stringify({ prompt: 'The whale', max_tokens: 100000, temperature: 0, stream: true }),
        signal: ac.signal,
      });
      const reader = r.body!.getReader();
      await reader.read(); // the stream is running
      assert.equal(one.server.engine.stats.active, 1);
      ac.abort();
      // the only slot frees, so a second request gets served
      const { status, json } = await post(`${one.url}/v1/completions`, {
        prompt: 'a',
        max_tokens: 5,
        temperature: 0,
      });
      assert.equal(status, 200);
      assert.equal(
        json.usage.completion_tokens,
        generateIds(ssm, tok.encode('a'), { maxNewTokens: 5, temperature: 0 }).length,
      );
      assert.ok(one.server.engine.stats.tokens < 1000, 'the aborted sequence stopped decoding');
      assert.equal(one.server.engine.stats.active, 0);
    } finally {
      await one.server.close();
    }
  });
});

describe('serve: errors', () => {
  let s: Server;
  let url: string;
  before(async () => ({ server: s, url } = await start(teacher, { chat: false, apiKey: 'k3y' })));
  after(async () => s.close());
  const auth = { authorization: 'Bearer k3y' };

  it('bad requests get 400 with an OpenAI error body naming the field', async () => {
    const cases: [unknown, string | null, RegExp][] = [
      [{ prompt: 'a', temperature: 3 }, 'temperature', /temperature must be >= 0 and <= 2/],
      [{ prompt: 'a', max_tokens: -1 }, 'max_tokens', /max_tokens/],
      [{ prompt: 'a', max_tokens: 1.5 }, 'max_tokens', /integer/],
      [{ prompt: 'a', top_p: 0 }, 'top_p', /top_p/],
      [{ prompt: 'a', n: 2 }, 'n', /n must be 1/],
      [{ prompt: 'a', stop: [1] }, 'stop', /stop/],
      [{ max_tokens: 3 }, 'prompt', /prompt is required/],
      [{ prompt: [1, 300] }, 'prompt', /outside the vocabulary/],
      [{ prompt: 'x'.repeat(300) }, 'prompt', /context/],
      ['{"prompt": ', null, /JSON/],
    ];
    for (const [body, param, msg] of cases) {
      const { status, json } = await post(`${url}/v1/completions`, body, auth);
      assert.equal(status, 400, JSON.stringify(body));
      assert.equal(json.error.type, 'invalid_request_error');
      assert.equal(json.error.param, param, JSON.stringify(body));
      assert.match(json.error.message, msg);
    }
    const chat = await post(
      `${url}/v1/chat/completions`,
      { messages: [{ role: 'user', content: 'hi' }] },
      auth,
    );
    assert.equal(chat.status, 400);
    assert.equal(chat.json.error.code, 'no_chat_template');
    const role = await post(
      `${url}/v1/chat/completions`,
      { messages: [{ role: 'wizard', content: 'hi' }] },
      auth,
    );
    assert.equal(role.json.error.param, 'messages[0].role');
    const model = await post(`${url}/v1/completions`, { model: 'gpt-4', prompt: 'a' }, auth);
    assert.equal(model.status, 404);
    assert.equal(model.json.error.code, 'model_not_found');
  });

  it('--api-key: requests without the key get 401', async () => {
    const r = await post(`${url}/v1/completions`, { prompt: 'a', max_tokens: 2 });
    assert.equal(r.status, 401);
    assert.equal(r.json.error.code, 'invalid_api_key');
    const ok = await post(`${url}/v1/completions`, { prompt: 'a', max_tokens: 2 }, auth);
    assert.equal(ok.status, 200);
    const models = await fetch(`${url}/v1/models`);
    assert.equal(models.status, 401);
  });
});

describe('BatchEngine', () => {
  it('teacher, hybrid and SSM student: batched sequences equal generateIds, joining mid-flight', () => {
    for (const m of [teacher, hybrid, ssm]) {
      const prompts = [[1, 2, 3, 4, 5], [7, 8], [100, 101, 102, 103, 104, 105, 106, 107, 108], [50]];
      const want = prompts.map((p, i) =>
        generateIds(m, p, {
          maxNewTokens: 12 + i,
          temperature: i === 3 ? 0.8 : 0,
          seed: 4,
          stopAtEos: false,
        }),
      );
      const eng = new BatchEngine(m, { maxBatch: 3 });
      const got: number[][] = prompts.map(() => []);
      const submit = (i: number) =>
        eng.submit({
          promptIds: prompts[i],
          maxNewTokens: 12 + i,
          temperature: i === 3 ? 0.8 : 0,
          seed: 4,
          stopAtEos: false,
          onToken: (t) => got[i].push(t),
        });
      submit(0);
      submit(1);
      eng.step();
      eng.step();
      submit(2); // joins a running batch
      submit(3); // waits for a free slot
      for (let k = 0; k < 40 && (eng.stats.active > 0 || eng.stats.waiting > 0); k++) eng.step();
      assert.deepEqual(got, want, m.info.family);
      assert.equal(eng.stats.peakActive, 3);
      eng.close();
    }
  });
});
