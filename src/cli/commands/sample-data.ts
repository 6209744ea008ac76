// mohawk sample-data: training text sampled from a teacher, as token shards or JSONL.

import fs from 'node:fs';
import path from 'node:path';
import { loadModel } from '../../models/load.js';
import { sampleDocuments, samplePromptCompletions } from '../../generate/sample-data.js';
import { expandParquetInputs, listInputFiles, writeTokenSplits } from '../../data/index.js';
import { loadChatTemplate, type ChatMessage } from '../../io/chat-template.js';
import type { Tokenizer } from '../../io/tokenizer.js';
import { fmtCount } from '../../train/metrics.js';
import { CliError, num, parse, required, runHelp, runOptions, selectDevice } from '../args.js';
import { summaryTable } from './data.js';

const HELP = `usage: mohawk sample-data --model DIR --tokens N --out PATH [options]
       mohawk sample-data --model DIR --prompts FILE --out PATH [--max-new-tokens N] [options]

Sample documents from a model (for distillation where the teacher's own data is not at hand).
Sequences start from BOS (else EOS) and are cut into documents where the model emits BOS or EOS.
With --prompts, each prompt of a file is continued by the model instead (continuous batching):
a JSONL or Parquet file with a "text" field (the prompt) or "messages" (a conversation, rendered
through the model's chat template; its trailing assistant turns are dropped and answered anew).
The output then holds prompt + answer: {"text"} or {"messages"} lines (.jsonl; chat output is
ready for \`data prepare --mask-prompt\`), or token shards of the rendered prompt + answer.

  --model DIR          a model directory (config.json, model.safetensors, tokenizer.json)
  --tokens N           tokens to generate
  --out PATH           a directory: token shards + index.json, ready for training, with the
                       start token written between documents (the teacher's own separator);
                       a .jsonl file: one {"text": ...} per document
  --val-fraction F     documents held out as the val split (token output; default 0.01)
  --seed S             random seed (default 0)
  --temperature T      sampling temperature (default 1)
  --top-k K, --top-p P restrict sampling
  --batch B            sequences decoded together (default 8)
  --seq-len L          tokens per sequence (default min(256, the model's max length))
  --prompts FILE       continue the prompts of a JSONL or Parquet file (or a directory of them)
  --max-new-tokens N   with --prompts: new tokens per prompt at most (default 256); --tokens is
                       then an optional budget
${runHelp(23)}`;

/** Fail before any sampling when the output cannot be written (a probe file, removed at once). */
function checkWritable(out: string): void {
  const dir = out.endsWith('.jsonl') ? path.dirname(path.resolve(out)) : path.resolve(out);
  const probe = path.join(dir, `.mohawk-write-test-${process.pid}`);
  try {
    fs.mkdirSync(dir, { recursive: true });
    fs.writeFileSync(probe, '');
    fs.rmSync(probe);
  } catch (e) {
    throw new CliError(
      `--out ${out}: cannot write there (${(e as NodeJS.ErrnoException).code ?? (e as Error).message})`,
    );
  }
}

export async function run(argv: string[]): Promise<number> {
  const p = parse(
    argv,
    {
      model: { type: 'string' },
      tokens: { type: 'string' },
      out: { type: 'string' },
      'val-fraction': { type: 'string' },
      seed: { type: 'string' },
      temperature: { type: 'string' },
      'top-k': { type: 'string' },
      'top-p': { type: 'string' },
      batch: { type: 'string' },
      'seq-len': { type: 'string' },
      prompts: { type: 'string' },
      'max-new-tokens': { type: 'string' },
      ...runOptions,
    },
    HELP,
  );
  if (!p) return 0;
  const dir = required(p, 'model', HELP);
  const out = required(p, 'out', HELP);
  const tokens = num(p, 'tokens', NaN, { integer: true, min: 1 });
  const promptFile = p.values.prompts as string | undefined;
  if (Number.isNaN(tokens) && !promptFile) throw new CliError(`--tokens is required\n\n${HELP}`);
  const valFraction = num(p, 'val-fraction', 0.01, { min: 0, max: 0.99 });
  checkWritable(out);
  await selectDevice(p);
  const { model, tokenizer } = loadModel(dir);
  const jsonl = out.endsWith('.jsonl');
  if (promptFile) {
    if (!tokenizer) throw new CliError(`${dir}: no tokenizer.json; --prompts needs one`);
    return fromPrompts(p, dir, model, tokenizer, promptFile, out, jsonl, tokens, valFraction);
  }
  if (jsonl && !tokenizer)
    throw new CliError(`${dir}: no tokenizer.json; JSONL output needs one (or write tokens)`);
  const tty = !!process.stderr.isTTY;
  const t0 = performance.now();
  let last = 0;
  const docs = sampleDocuments(model, {
    tokens,
    seed: num(p, 'seed', 0, { integer: true, min: 0 }),
    temperature: num(p, 'temperature', 1, { min: 0 }),
    topK: num(p, 'top-k', 0, { integer: true, min: 0 }),
    topP: num(p, 'top-p', 1, { min: 0, max: 1 }),
    batch: num(p, 'batch', 8, { integer: true, min: 1 }),
    seqLen: num(p, 'seq-len', 256, { integer: true, min: 2 }),
    onProgress: (done, total) => {
      const now = performance.now();
      if (now - last < (tty ? 200 : 5000) && done < total) return;
      last = now;
      const sec = (now - t0) / 1000;
      const rate = done / Math.max(sec, 1e-9);
      const line = `sample-data: ${fmtCount(done)} / ${fmtCount(total)} tokens  ${fmtCount(rate)} tok/s  ETA ${Math.round((total - done) / Math.max(rate, 1e-9))}s`;
      process.stderr.write(tty ? `\r\x1b[K${line}` : `${line}\n`);
    },
  });
  if (tty) process.stderr.write('\n');
  if (jsonl) {
    fs.mkdirSync(path.dirname(path.resolve(out)), { recursive: true });
    const tmp = `${out}.tmp-${process.pid}`;
    fs.writeFileSync(tmp, docs.map((d) => JSON.stringify({ text: tokenizer!.decode(d) }) + '\n').join(''));
    fs.renameSync(tmp, out);
    console.log(`${docs.length} documents, ${docs.reduce((a, d) => a + d.length, 0)} tokens -> ${out}`);
  } else {
    const info = model.info;
    const sep = info.bosTokenId ?? info.eosTokenId!;
    const nVal = valFraction > 0 ? Math.max(1, Math.round(valFraction * docs.length)) : 0;
    const index = writeTokenSplits(
      out,
      {
        train: { documents: docs.slice(0, docs.length - nVal) },
        ...(nVal ? { val: { documents: docs.slice(docs.length - nVal) } } : {}),
      },
      { vocabSize: info.vocabSize, eosTokenId: sep, tokenizer: `sampled from ${path.resolve(dir)}` },
    );
    console.log(summaryTable(index));
  }
  return 0;
}

type Prompt = { text: string } | { messages: ChatMessage[] };

/** The prompts of JSONL/Parquet files: {"text"} or {"messages"} per line. */
async function readPrompts(file: string, out: string): Promise<Prompt[]> {
  const cache = path.join(path.dirname(path.resolve(out)), `.${path.basename(out)}-parquet`);
  const files = listInputFiles(await expandParquetInputs([file], cache));
  const prompts: Prompt[] = [];
  for (const f of files) {
    fs.readFileSync(f, 'utf8')
      .split('\n')
      .forEach((line, i) => {
        if (!line.trim()) return;
        const where = `${f}:${i + 1}`;
        let o: Record<string, unknown>;
        try {
          o = JSON.parse(line) as Record<string, unknown>;
        } catch (e) {
          throw new CliError(`${where}: not valid JSON (${(e as Error).message})`);
        }
        if (typeof o.text === 'string') prompts.push({ text: o.text });
        else if (Array.isArray(o.messages)) {
          const msgs = o.messages.map((m: unknown, j: number) => {
            const { role, content } = (m ?? {}) as { role?: unknown; content?: unknown };
            if (typeof role !== 'string' || typeof content !== 'string')
              throw new CliError(`${where}: messages[${j}] must be {role: string, content: string}`);
            return { role, content };
          });
          // the answer is the model's: drop trailing assistant turns
          while (msgs.length && msgs[msgs.length - 1].role === 'assistant') msgs.pop();
          if (!msgs.length) throw new CliError(`${where}: messages hold no prompt`);
          prompts.push({ messages: msgs });
        } else throw new CliError(`${where}: needs a "text" string or a "messages" list`);
      });
  }
  if (!prompts.length) throw new CliError(`${file}: no prompts`);
  return prompts;
}

async function fromPrompts(
  p: NonNullable<ReturnType<typeof parse>>,
  dir: string,
  model: ReturnType<typeof loadModel>['model'],
  tokenizer: Tokenizer,
  promptFile: string,
  out: string,
  jsonl: boolean,
  tokens: number,
  valFraction: number,
): Promise<number> {
  const prompts = await readPrompts(promptFile, out);
  const template = loadChatTemplate(dir);
  const ids = prompts.map((pr) => {
    if ('text' in pr) return tokenizer.encode(pr.text);
    if (!template)
      throw new CliError(`${dir}: "messages" prompts need a chat template (tokenizer_config.json)`);
    return tokenizer.encode(template.render(pr.messages, { addGenerationPrompt: true }), { addBos: false });
  });
  ids.forEach((x, i) => {
    if (x.length === 0) throw new CliError(`${promptFile}: prompt ${i + 1} is empty`);
  });
  const tty = !!process.stderr.isTTY;
  let last = 0;
  const completions = samplePromptCompletions(model, ids, {
    maxNewTokens: num(p, 'max-new-tokens', 256, { integer: true, min: 1 }),
    tokens: Number.isNaN(tokens) ? undefined : tokens,
    seed: num(p, 'seed', 0, { integer: true, min: 0 }),
    temperature: num(p, 'temperature', 1, { min: 0 }),
    topK: num(p, 'top-k', 0, { integer: true, min: 0 }),
    topP: num(p, 'top-p', 1, { min: 0, max: 1 }),
    batch: num(p, 'batch', 8, { integer: true, min: 1 }),
    onProgress: (done, taken) => {
      const now = performance.now();
      if (now - last < (tty ? 200 : 5000)) return;
      last = now;
      const line = `sample-data: ${fmtCount(done)} tokens, prompt ${taken} of ${prompts.length}`;
      process.stderr.write(tty ? `\r\x1b[K${line}` : `${line}\n`);
    },
  });
  if (tty) process.stderr.write('\n');
  const generated = completions.reduce((a, c) => a + c.length, 0);
  if (jsonl) {
    fs.mkdirSync(path.dirname(path.resolve(out)), { recursive: true });
    const lines = completions.map((c, i) => {
      const pr = prompts[i];
      const answer = tokenizer.decode(c);
      return 'text' in pr
        ? { text: pr.text + answer }
        : { messages: [...pr.messages, { role: 'assistant', content: answer }] };
    });
    const tmp = `${out}.tmp-${process.pid}`;
    fs.writeFileSync(tmp, lines.map((l) => JSON.stringify(l) + '\n').join(''));
    fs.renameSync(tmp, out);
    console.log(`${lines.length} prompts answered, ${generated} new tokens -> ${out}`);
    return 0;
  }
  const docs = completions.map((c, i) => [...ids[i], ...c]);
  const info = model.info;
  const sep = info.eosTokenId ?? info.bosTokenId!;
  const nVal = valFraction > 0 && docs.length > 1 ? Math.max(1, Math.round(valFraction * docs.length)) : 0;
  const index = writeTokenSplits(
    out,
    {
      train: { documents: docs.slice(0, docs.length - nVal) },
      ...(nVal ? { val: { documents: docs.slice(docs.length - nVal) } } : {}),
    },
    {
      vocabSize: info.vocabSize,
      eosTokenId: sep,
      tokenizer: `prompts of ${promptFile} answered by ${path.resolve(dir)}`,
    },
  );
  console.log(summaryTable(index));
  return 0;
}
