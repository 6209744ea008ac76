// Load test of `mohawk serve`: a teacher and its student, each served by a child process, hit by
// 1, 8 and 64 concurrent streaming clients. Reports requests/s, generated tokens/s and the time to
// first token (first SSE chunk with text) per concurrency.
// Run: node --import tsx bench/serve.ts [--teacher DIR] [--student DIR] [--clients 1,8,64]
//        [--requests N] [--max-tokens N] [--prompt-words N] [--max-batch N] [--device cpu|cuda]
//      Without --student, the teacher's student after weight transfer (transferStudent, saved to a
//      temporary directory): trained or not, it decodes at the same speed.
//      (BENCH_OUT=dir also writes serve.{md,json})

import { spawn, type ChildProcess } from 'node:child_process';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { parseArgs } from 'node:util';
import { transferStudent } from '../src/distill/transfer.js';
import { loadModel, saveModel } from '../src/models/load.js';

const root = resolve(import.meta.dirname, '..');
const { values } = parseArgs({
  options: {
    teacher: { type: 'string', default: resolve(root, '../shared/data/teachers/phi-17m') },
    student: { type: 'string' },
    clients: { type: 'string', default: '1,8,64' },
    requests: { type: 'string', default: '2' },
    'max-tokens': { type: 'string', default: '32' },
    'prompt-words': { type: 'string', default: '48' },
    'max-batch': { type: 'string', default: '64' },
    device: { type: 'string', default: 'cpu' },
  },
});
const clients = values.clients!.split(',').map(Number);
const perClient = Number(values.requests);
const maxTokens = Number(values['max-tokens']);
const words = 'the whale swam slowly past the old ship while the sailors watched from the deck'.split(' ');
const prompt = (i: number) =>
  Array.from({ length: Number(values['prompt-words']) }, (_, k) => words[(i * 7 + k) % words.length]).join(
    ' ',
  );

async function startServer(dir: string): Promise<{ url: string; proc: ChildProcess }> {
  const args = ['--import', 'tsx', join(root, 'src/cli/main.ts'), 'serve', '--model', dir, '--port', '0'];
  args.push('--max-batch', values['max-batch']!, '--device', values.device!);
  const proc = spawn(process.execPath, args, { cwd: root, stdio: ['ignore', 'ignore', 'pipe'] });
  let log = '';
  const url = await new Promise<string>((ok, fail) => {
    proc.stderr!.on('data', (d: Buffer) => {
      log += d.toString();
      const m = /at (http:\/\/\S+)\/v1/.exec(log);
      if (m) ok(m[1]);
    });
    proc.on('exit', (code) => fail(new Error(`serve exited (${code}): ${log}`)));
  });
  return { url, proc };
}

interface One {
  ttftMs: number;
  totalMs: number;
  tokens: number;
}

async function request(url: string, i: number): Promise<One> {
  const t0 = performance.now();
  const r = await fetch(`${url}/v1/completions`, {
    method: 'POST',
    headers: { 'content-type': 'application/json' },
    body: JSON.stringify({
      prompt: prompt(i),
      max_tokens: maxTokens,
      temperature: 0.8,
      seed: i,
      stream: true,
      stream_options: { include_usage: true },
    }),
  });
  if (r.status !== 200) throw new Error(`HTTP ${r.status}: ${await r.text()}`);
  const reader = r.body!.getReader();
  const dec = new TextDecoder();
  let ttft = NaN;
  let buf = '';
  let tokens = 0;
  for (;;) {
    const { done, value } = await reader.read();
    if (done) break;
    buf += dec.decode(value, { stream: true });
    let at: number;
    while ((at = buf.indexOf('\n\n')) >= 0) {
      const line = buf.slice(0, at);
      buf = buf.slice(at + 2);
      if (!line.startsWith('data: ') || line === 'data: [DONE]') continue;
      const j = JSON.parse(line.slice(6)) as {
        choices: { text?: string }[];
        usage?: { completion_tokens: number };
      };
      if (Number.isNaN(ttft) && j.choices[0]?.text) ttft = performance.now() - t0;
      if (j.usage) tokens = j.usage.completion_tokens;
    }
  }
  return { ttftMs: ttft, totalMs: performance.now() - t0, tokens };
}

const pct = (xs: number[], p: number) => {
  const s = [...xs].sort((a, b) => a - b);
  return s[Math.min(s.length - 1, Math.floor(p * s.length))];
};

interface Row {
  model: string;
  clients: number;
  requests: number;
  seconds: number;
  requestsPerS: number;
  tokensPerS: number;
  ttftMedianMs: number;
  ttftP90Ms: number;
}

async function bench(name: string, dir: string): Promise<Row[]> {
  const { url, proc } = await startServer(dir);
  const rows: Row[] = [];
  try {
    await request(url, 0); // warm-up
    for (const c of clients) {
      const t0 = performance.now();
      const all: One[] = [];
      await Promise.all(
        Array.from({ length: c }, async (_, k) => {
          for (let j = 0; j < perClient; j++) all.push(await request(url, k * perClient + j + 1));
        }),
      );
      const s = (performance.now() - t0) / 1000;
      const ttft = all.map((x) => x.ttftMs).filter((x) => !Number.isNaN(x));
      const row: Row = {
        model: name,
        clients: c,
        requests: all.length,
        seconds: +s.toFixed(2),
        requestsPerS: +(all.length / s).toFixed(2),
        tokensPerS: +(all.reduce((a, x) => a + x.tokens, 0) / s).toFixed(1),
        ttftMedianMs: Math.round(pct(ttft, 0.5)),
        ttftP90Ms: Math.round(pct(ttft, 0.9)),
      };
      rows.push(row);
      console.error(JSON.stringify(row));
    }
  } finally {
    proc.kill('SIGTERM');
  }
  return rows;
}

let tmp: string | null = null;
let studentDir = values.student;
if (!studentDir) {
  tmp = mkdtempSync(join(tmpdir(), 'mohawk-serve-bench-'));
  const { model, tokenizer } = loadModel(values.teacher!);
  studentDir = join(tmp, 'student');
  saveModel(studentDir, transferStudent(model), tokenizer);
}
try {
  const rows = [...(await bench('teacher', values.teacher!)), ...(await bench('student', studentDir))];
  const header =
    '| model | clients | requests | s | requests/s | tokens/s | TTFT median ms | TTFT p90 ms |\n| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |';
  const md = [
    header,
    ...rows.map(
      (r) =>
        `| ${r.model} | ${r.clients} | ${r.requests} | ${r.seconds} | ${r.requestsPerS} | ${r.tokensPerS} | ${r.ttftMedianMs} | ${r.ttftP90Ms} |`,
    ),
  ].join('\n');
  console.log(md);
  if (process.env.BENCH_OUT) {
    writeFileSync(join(process.env.BENCH_OUT, 'serve.md'), md + '\n');
    writeFileSync(join(process.env.BENCH_OUT, 'serve.json'), JSON.stringify(rows, null, 2));
  }
} finally {
  if (tmp) rmSync(tmp, { recursive: true, force: true });
}
