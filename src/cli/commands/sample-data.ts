// mohawk sample-data: training text sampled from a teacher, as token shards or JSONL.

import fs from 'node:fs';
import path from 'node:path';
import { loadModel } from '../../models/load.js';
import { sampleDocuments } from '../../generate/sample-data.js';
import { writeTokenSplits } from '../../data/index.js';
import { fmtCount } from '../../train/metrics.js';
import { CliError, num, parse, required, runHelp, runOptions, selectDevice } from '../args.js';
import { summaryTable } from './data.js';

const HELP = `usage: mohawk sample-data --model DIR --tokens N --out PATH [options]

Sample documents from a model (for distillation where the teacher's own data is not at hand).
Sequences start from BOS (else EOS) and are cut into documents where the model emits BOS or EOS.

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
      ...runOptions,
    },
    HELP,
  );
  if (!p) return 0;
  const dir = required(p, 'model', HELP);
  const out = required(p, 'out', HELP);
  const tokens = num(p, 'tokens', NaN, { integer: true, min: 1 });
  if (Number.isNaN(tokens)) throw new CliError(`--tokens is required\n\n${HELP}`);
  const valFraction = num(p, 'val-fraction', 0.01, { min: 0, max: 0.99 });
  checkWritable(out);
  await selectDevice(p);
  const { model, tokenizer } = loadModel(dir);
  const jsonl = out.endsWith('.jsonl');
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
