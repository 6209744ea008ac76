// mohawk perplexity: sliding-window perplexity of text files under a model.

import fs from 'node:fs';
import path from 'node:path';
import { loadModel } from '../../models/load.js';
import { perplexity, type PerplexityResult } from '../../eval/perplexity.js';
import { perplexityByPosition, type PositionResult } from '../../eval/position.js';
import { lineChart, PALETTE } from '../../util/svg-plot.js';
import {
  CliError,
  flag,
  list,
  num,
  parse,
  required,
  runHelp,
  runOptions,
  selectDevice,
  str,
} from '../args.js';
import { progressLine } from '../progress.js';

const HELP = `usage: mohawk perplexity --model DIR --file PATH... [options]

Sliding-window perplexity (the Hugging Face recipe): each file is one token sequence (BOS in front
when the tokenizer adds it); windows of T tokens start every S tokens and each scores only the
tokens no earlier window scored, so every token after the first is scored once, with up to T - 1
tokens of context. Reports per file and overall: tokens, nats/token, perplexity and bits per byte.

  --model DIR      a model directory (config.json, model.safetensors, tokenizer.json)
  --file PATH...   one or more text files (or repeat the flag)
  --context T      tokens per window (default: the model's length + 1, at most 2049)
  --stride S       windows advance by S tokens (default T/2; at most T - 1)
  --batch-size B   windows per forward (default 8)
  --doc-separator STR  split each file into documents at STR (e.g. '<|endoftext|>'), score each
                   document on its own (BOS in front of each when the tokenizer adds it), pool them
  --no-bos         do not prepend BOS
  --json           print the results as JSON

  --by-position    perplexity against position in the context instead: each document cut into
                   pieces of T tokens (--context, default min(model length + 1, 4097)), each
                   scored from its start, the NLL pooled per position and bucketed
  --bucket N       positions per bucket (default T/16)
  --compare DIR    another model on the same pieces (repeatable): one curve each
  --plot FILE.svg  the curves as a picture
${runHelp(19)}`;

interface FileResult {
  file: string;
  bytes: number;
  tokens: number;
  nll: number;
  ppl: number;
  bits_per_byte: number;
  windows: number;
  documents: number;
}

function summarize(file: string, bytes: number, r: PerplexityResult): FileResult {
  return {
    file,
    bytes,
    tokens: r.tokens,
    nll: r.nll,
    ppl: r.ppl,
    bits_per_byte: r.nllSum / Math.LN2 / bytes,
    windows: r.windows,
    documents: r.documents,
  };
}

export async function run(argv: string[]): Promise<number> {
  const p = parse(
    argv,
    {
      model: { type: 'string' },
      file: { type: 'string', multiple: true },
      context: { type: 'string' },
      stride: { type: 'string' },
      'batch-size': { type: 'string' },
      'doc-separator': { type: 'string' },
      'no-bos': { type: 'boolean' },
      json: { type: 'boolean' },
      'by-position': { type: 'boolean' },
      bucket: { type: 'string' },
      compare: { type: 'string', multiple: true },
      plot: { type: 'string' },
      ...runOptions,
    },
    HELP,
    true,
  );
  if (!p) return 0;
  const dir = required(p, 'model', HELP);
  // `--file a b c` (a shell glob) as well as `--file a --file b`
  const files = [...list(p, 'file'), ...p.positionals];
  if (p.positionals.length > 0 && list(p, 'file').length === 0)
    throw new CliError(`unexpected argument "${p.positionals[0]}" (files follow --file)\n\n${HELP}`);
  if (files.length === 0) throw new CliError(`--file is required\n\n${HELP}`);
  const texts = files.map((f) => {
    try {
      return fs.readFileSync(f, 'utf8');
    } catch {
      throw new CliError(`--file: cannot read ${f}`);
    }
  });
  await selectDevice(p);
  if (flag(p, 'by-position')) return byPosition(p, dir, files, texts);
  const { model, tokenizer } = loadModel(dir);
  if (!tokenizer) throw new CliError(`--model: ${dir} has no tokenizer.json (perplexity needs text)`);
  const maxInput = Number.isFinite(model.info.maxSeqLen) ? model.info.maxSeqLen : 2048;
  const context = num(p, 'context', Math.min(maxInput, 2048) + 1, {
    integer: true,
    min: 2,
    max: maxInput + 1,
  });
  const stride = num(p, 'stride', Math.max(1, Math.floor(context / 2)), {
    integer: true,
    min: 1,
    max: context - 1,
  });
  const batchSize = num(p, 'batch-size', 8, { integer: true, min: 1 });
  const addBos = flag(p, 'no-bos') ? false : undefined;
  const separator = str(p, 'doc-separator');
  if (separator === '') throw new CliError('--doc-separator: empty');
  const results: FileResult[] = [];
  let nllSum = 0;
  let tokens = 0;
  let bytes = 0;
  files.forEach((f, i) => {
    const parts = (separator === undefined ? [texts[i]] : texts[i].split(separator).map((d) => d.trim()))
      .map((text) => ({ text, ids: tokenizer.encode(text, addBos === undefined ? {} : { addBos }) }))
      .filter((d) => d.ids.length >= 2);
    const ids = parts.map((d) => d.ids);
    if (ids.length === 0) throw new CliError(`--file: ${f} has no document of 2 or more tokens`);
    const t0 = Date.now();
    const label = path.basename(f);
    const r = perplexity(model, ids, {
      context,
      stride,
      batchSize,
      onProgress: (done, total, tok) => progressLine(label, done, total, tok, t0, 'windows'),
    });
    progressLine(label, 1, 1, 0, t0, 'windows', true);
    // bits per byte over the text of the documents scored (separators left out)
    const b = parts.reduce((a, d) => a + Buffer.byteLength(d.text, 'utf8'), 0);
    results.push(summarize(f, b, r));
    nllSum += r.nllSum;
    tokens += r.tokens;
    bytes += b;
  });
  const overall = {
    tokens,
    bytes,
    nll: nllSum / tokens,
    ppl: Math.exp(nllSum / tokens),
    bits_per_byte: nllSum / Math.LN2 / bytes,
    mean_file_nll: results.reduce((a, r) => a + r.nll, 0) / results.length,
  };
  if (flag(p, 'json')) {
    console.log(
      JSON.stringify(
        {
          files: results,
          overall,
          config: {
            model: dir,
            context,
            stride,
            add_bos: addBos ?? tokenizer.addBos,
            doc_separator: separator ?? null,
          },
        },
        null,
        2,
      ),
    );
    return 0;
  }
  const rows = [
    ['file', 'tokens', 'nll', 'ppl', 'bits/byte'],
    ...results.map((r) => [
      path.basename(r.file),
      String(r.tokens),
      r.nll.toFixed(4),
      r.ppl.toFixed(3),
      r.bits_per_byte.toFixed(4),
    ]),
    [
      'overall',
      String(tokens),
      overall.nll.toFixed(4),
      overall.ppl.toFixed(3),
      overall.bits_per_byte.toFixed(4),
    ],
  ];
  const widths = rows[0].map((_, c) => Math.max(...rows.map((r) => r[c].length)));
  for (const r of rows)
    console.log(r.map((x, c) => (c === 0 ? x.padEnd(widths[c]) : x.padStart(widths[c]))).join('  '));
  if (results.length > 1) console.log(`mean nll over files ${overall.mean_file_nll.toFixed(4)} nats/token`);
  console.log(`context ${context} tokens, stride ${stride}`);
  return 0;
}

/** --by-position: the NLL per position in the context, for one model or several on the same pieces. */
function byPosition(
  p: NonNullable<ReturnType<typeof parse>>,
  dir: string,
  files: string[],
  texts: string[],
): number {
  const dirs = [dir, ...list(p, 'compare')];
  const plot = str(p, 'plot');
  if (plot !== undefined && !plot.endsWith('.svg')) throw new CliError(`--plot: an .svg file, got "${plot}"`);
  const models = dirs.map((d) => {
    const m = loadModel(d);
    if (!m.tokenizer) throw new CliError(`${d}: no tokenizer.json (perplexity needs text)`);
    return { ...m, dir: d };
  });
  const tokenizer = models[0].tokenizer!;
  const maxInput = Math.min(...models.map((m) => m.model.info.maxSeqLen));
  const context = num(p, 'context', Math.min(Number.isFinite(maxInput) ? maxInput : 4096, 4096) + 1, {
    integer: true,
    min: 2,
    max: Number.isFinite(maxInput) ? maxInput + 1 : Infinity,
  });
  const bucket = num(p, 'bucket', Math.ceil(context / 16), { integer: true, min: 1 });
  const batchSize = num(p, 'batch-size', 4, { integer: true, min: 1 });
  const addBos = flag(p, 'no-bos') ? false : undefined;
  const separator = str(p, 'doc-separator');
  const docs = files.flatMap((_, i) =>
    (separator === undefined ? [texts[i]] : texts[i].split(separator).map((d) => d.trim()))
      .map((t) => tokenizer.encode(t, addBos === undefined ? {} : { addBos }))
      .filter((ids) => ids.length >= 2),
  );
  const results: { model: string; r: PositionResult }[] = models.map((m) => {
    const t0 = Date.now();
    const label = path.basename(m.dir);
    const r = perplexityByPosition(m.model, docs, {
      context,
      bucket,
      batchSize,
      onProgress: (done, total, tok) => progressLine(label, done, total, tok, t0, 'pieces'),
    });
    progressLine(label, 1, 1, 0, t0, 'pieces', true);
    return { model: m.dir, r };
  });
  if (plot) {
    fs.writeFileSync(
      plot,
      lineChart({
        title: `perplexity by position (${results[0].r.pieces} pieces of ${context} tokens)`,
        xLabel: 'position in the context (tokens before the target)',
        yLabel: 'perplexity',
        logY: true,
        width: 720,
        series: results.map((x, i) => ({
          name: path.basename(x.model),
          points: x.r.buckets.map((b): [number, number] => [(b.from + b.to - 1) / 2, b.ppl]),
          color: PALETTE[i % PALETTE.length],
          dots: true,
        })),
      }) + '\n',
    );
  }
  if (flag(p, 'json')) {
    console.log(
      JSON.stringify(
        {
          context,
          bucket,
          files,
          models: results.map((x) => ({
            model: x.model,
            pieces: x.r.pieces,
            tokens: x.r.tokens,
            nll: x.r.nll,
            ppl: Math.exp(x.r.nll),
            buckets: x.r.buckets,
          })),
        },
        null,
        2,
      ),
    );
    return 0;
  }
  const head = ['positions', ...results.map((x) => path.basename(x.model))];
  const rows = results[0].r.buckets.map((b, k) => [
    `${b.from}-${b.to - 1}`,
    ...results.map((x) => x.r.buckets[k]?.ppl.toFixed(3) ?? ''),
  ]);
  rows.push(['all', ...results.map((x) => Math.exp(x.r.nll).toFixed(3))]);
  const widths = head.map((_, c) => Math.max(...[head, ...rows].map((r) => r[c].length)));
  for (const r of [head, ...rows])
    console.log(r.map((x, c) => (c === 0 ? x.padEnd(widths[c]) : x.padStart(widths[c]))).join('  '));
  console.log(`perplexity per position bucket; ${results[0].r.pieces} pieces of up to ${context} tokens`);
  if (plot) console.log(`picture: ${plot}`);
  return 0;
}
