// mohawk data prepare | info: text and JSONL -> token shards, and a summary of a prepared directory.

import path from 'node:path';
import { loadTokenizer } from '../../io/tokenizer.js';
import { loadChatTemplate, readChatTemplateFile } from '../../io/chat-template.js';
import {
  expandParquetInputs,
  prepareTokens,
  TokenDataset,
  type PrepareProgress,
  type TokenIndex,
} from '../../data/index.js';
import { CliError, flag, list, num, parse, required, str } from '../args.js';

const HELP = `usage: mohawk data <prepare|info> [options]

mohawk data prepare --tokenizer DIR --input PATH... --out DIR [options]
  Tokenize text files (one document each), JSONL files (one document or conversation per line)
  and Parquet files (a text or messages column) into token
  shards (uint16 when the vocabulary fits, else uint32) with index.json; EOS ends every document.
  --tokenizer DIR      a directory with tokenizer.json (a model directory works)
  --input PATH         a file or directory (walked recursively); repeat for several
  --out DIR            output directory
  --val-fraction F     hold out the last F of every input's bytes, cut at a line (default 0.01,
                       or 0 when --val is given)
  --val PATH           files or directories that go wholly to the held-out split; repeatable
  --jsonl-field NAME   the JSONL field (or Parquet column) holding the text (default "text")
  --messages-field N   the JSONL field (or Parquet column) holding a conversation, a list of
                       {role, content} rendered through the chat template (default "messages")
  --mask-prompt        write a target mask: only the assistant's tokens of conversations count
                       in the loss (distill with data.maskPrompt: true)
  --chat-template F    a Jinja chat template (default: the tokenizer's tokenizer_config.json)
  --shard-tokens N     tokens per shard file (default 134217728)
  --chunk-bytes N      tokenize text in pieces of about N bytes (default: 1 MiB when the
                       tokenizer allows exact pieces, else whole documents); 0 = whole documents
  --json               print index.json instead of the table

mohawk data info DIR [--json]
  Splits, token counts, documents and sources of a prepared directory.`;

function fmtBytes(n: number): string {
  if (n >= 1e9) return `${(n / 1e9).toFixed(2)} GB`;
  if (n >= 1e6) return `${(n / 1e6).toFixed(2)} MB`;
  if (n >= 1e3) return `${(n / 1e3).toFixed(1)} kB`;
  return `${n} B`;
}

function table(rows: string[][]): string {
  const widths = rows[0].map((_, c) => Math.max(...rows.map((r) => r[c].length)));
  return rows
    .map((r) => r.map((v, c) => (c === 0 ? v.padEnd(widths[c]) : v.padStart(widths[c]))).join('  '))
    .join('\n');
}

export function summaryTable(index: TokenIndex): string {
  const rows = [['source', 'split', 'bytes', 'documents', 'tokens', 'bytes/token']];
  const common = index.sources.length ? path.dirname(index.sources[0].path) : '';
  for (const s of index.sources) {
    for (const [split, v] of Object.entries(s.splits)) {
      const name = common && s.path.startsWith(common) ? path.relative(common, s.path) || s.path : s.path;
      rows.push([
        name,
        split,
        fmtBytes(v.bytes),
        String(v.documents),
        String(v.tokens),
        v.tokens ? (v.bytes / v.tokens).toFixed(2) : '-',
      ]);
    }
  }
  for (const [split, v] of Object.entries(index.splits)) {
    rows.push([
      `total ${split}`,
      split,
      '',
      String(v.documents),
      String(v.tokens),
      `${v.shards.length} shard(s)`,
    ]);
  }
  return (
    table(rows) +
    `\n\nvocabulary ${index.vocab_size}, ${index.dtype}, document separator id ${index.eos_token_id}` +
    (index.split_rule ? `\n${index.split_rule}` : '')
  );
}

function progressPrinter(): (p: PrepareProgress) => void {
  const tty = !!process.stderr.isTTY;
  let last = 0;
  return (p) => {
    const now = performance.now();
    const done = p.bytesDone >= p.bytesTotal;
    if (now - last < (tty ? 200 : 5000) && !done) return;
    last = now;
    const rate = p.bytesDone / Math.max(p.elapsedSec, 1e-9);
    const eta = (p.bytesTotal - p.bytesDone) / Math.max(rate, 1e-9);
    const line =
      `prepare: ${((100 * p.bytesDone) / Math.max(p.bytesTotal, 1)).toFixed(1)}%  ` +
      `${fmtBytes(p.bytesDone)} of ${fmtBytes(p.bytesTotal)}  ${fmtBytes(rate)}/s  ` +
      `${p.tokens} tokens  ${p.documents} docs  ETA ${Math.round(eta)}s  ${path.basename(p.file)}`;
    process.stderr.write(tty ? `\r\x1b[K${line}` : `${line}\n`);
  };
}

async function prepare(argv: string[]): Promise<number> {
  const p = parse(
    argv,
    {
      tokenizer: { type: 'string' },
      input: { type: 'string', multiple: true },
      out: { type: 'string' },
      'val-fraction': { type: 'string' },
      val: { type: 'string', multiple: true },
      'jsonl-field': { type: 'string' },
      'messages-field': { type: 'string' },
      'mask-prompt': { type: 'boolean' },
      'chat-template': { type: 'string' },
      'shard-tokens': { type: 'string' },
      'chunk-bytes': { type: 'string' },
      json: { type: 'boolean' },
    },
    HELP,
    true,
  );
  if (!p) return 0;
  const rawInputs = [...list(p, 'input'), ...p.positionals];
  if (!rawInputs.length) throw new CliError(`--input is required\n\n${HELP}`);
  const tokDir = required(p, 'tokenizer', HELP);
  const out = required(p, 'out', HELP);
  // Parquet files become JSONL first (hyparquet reads asynchronously)
  const columns = { text: str(p, 'jsonl-field'), messages: str(p, 'messages-field') };
  const log = (l: string) => console.error(l);
  const cache = path.join(out, 'parquet-jsonl');
  const inputs = await expandParquetInputs(rawInputs, cache, columns, log);
  const valInputs = await expandParquetInputs(list(p, 'val'), cache, columns, log);
  const templateFile = str(p, 'chat-template');
  const chat = templateFile ? readChatTemplateFile(templateFile) : loadChatTemplate(tokDir);
  const tok = loadTokenizer(tokDir);
  const encoder = {
    encode: (text: string) => tok.encode(text, { addBos: false }),
    eosTokenId: tok.eosTokenId,
    vocabSize: tok.vocabSize,
  };
  const chunk = str(p, 'chunk-bytes');
  const r = prepareTokens(encoder, {
    inputs,
    valInputs,
    out,
    valFraction:
      str(p, 'val-fraction') === undefined ? undefined : num(p, 'val-fraction', 0, { min: 0, max: 0.99 }),
    jsonlField: str(p, 'jsonl-field'),
    messagesField: str(p, 'messages-field'),
    chat: chat ?? undefined,
    maskPrompt: flag(p, 'mask-prompt'),
    maxShardTokens: num(p, 'shard-tokens', 1 << 27, { integer: true, min: 1 }),
    chunkBytes: chunk === undefined ? undefined : num(p, 'chunk-bytes', 0, { integer: true, min: 0 }),
    tokenizerName: path.resolve(tokDir),
    onProgress: progressPrinter(),
  });
  if (process.stderr.isTTY) process.stderr.write('\n');
  if (flag(p, 'json')) console.log(JSON.stringify(r.index, null, 2));
  else {
    console.log(summaryTable(r.index));
    console.log(
      `\n${fmtBytes(r.bytes)} in ${r.seconds.toFixed(1)} s (${fmtBytes(r.bytes / Math.max(r.seconds, 1e-9))}/s) -> ${out}`,
    );
  }
  return 0;
}

async function info(argv: string[]): Promise<number> {
  const p = parse(argv, { json: { type: 'boolean' } }, HELP, true);
  if (!p) return 0;
  const dir = p.positionals[0];
  if (!dir) throw new CliError(`give the directory\n\n${HELP}`);
  const ds = TokenDataset.open(dir);
  if (flag(p, 'json')) console.log(JSON.stringify(ds.index, null, 2));
  else console.log(summaryTable(ds.index));
  return 0;
}

export async function run(argv: string[]): Promise<number> {
  const [sub, ...rest] = argv;
  if (sub === 'prepare') return prepare(rest);
  if (sub === 'info') return info(rest);
  if (!sub || sub === '--help' || sub === '-h') {
    console.log(HELP);
    return sub ? 0 : 2;
  }
  throw new CliError(`data: unknown subcommand "${sub}" (expected prepare or info)\n\n${HELP}`);
}
