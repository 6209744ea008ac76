// Parquet inputs (hyparquet, pure JS): a text column or a messages column (a list of
// {role, content} structs, or that list as a JSON string) turned into JSONL lines that
// prepareTokens reads like any other JSONL file. Reading Parquet is asynchronous, so the
// commands convert Parquet inputs first (into a directory beside their output) and hand the
// JSONL files on; the JSONL keeps the column names ("text" or "messages").

import fs from 'node:fs';
import path from 'node:path';
import { asyncBufferFromFile, parquetMetadataAsync, parquetReadObjects } from 'hyparquet';
import { listInputFiles } from './prepare.js';

export function isParquet(file: string): boolean {
  return /\.parquet$/i.test(file);
}

export interface ParquetColumns {
  /** the column holding plain text (default "text") */
  text?: string;
  /** the column holding conversations (default "messages") */
  messages?: string;
}

/**
 * Each row of a Parquet file as one JSONL line in `out`: {"text": ...} from the text column, or
 * {"messages": [...]} from the messages column when there is no text column. Rows are read in
 * groups of `rowsPerRead`. Returns the row count and the column used.
 */
export async function parquetToJsonl(
  file: string,
  out: string,
  cols: ParquetColumns = {},
  rowsPerRead = 4096,
): Promise<{ rows: number; column: string }> {
  const textCol = cols.text ?? 'text';
  const msgCol = cols.messages ?? 'messages';
  let buf;
  let meta;
  try {
    buf = await asyncBufferFromFile(file);
    meta = await parquetMetadataAsync(buf);
  } catch (e) {
    throw new Error(`${file}: not a readable Parquet file (${(e as Error).message})`, { cause: e });
  }
  const names = meta.schema.slice(1).map((s) => s.name);
  const column = names.includes(textCol) ? textCol : names.includes(msgCol) ? msgCol : null;
  if (!column)
    throw new Error(
      `${file}: no "${textCol}" or "${msgCol}" column (columns: ${names.join(', ')}); name the column to read`,
    );
  const key = column === textCol ? 'text' : 'messages';
  const total = Number(meta.num_rows);
  fs.mkdirSync(path.dirname(out), { recursive: true });
  const tmp = `${out}.tmp-${process.pid}`;
  const fd = fs.openSync(tmp, 'w');
  try {
    for (let start = 0; start < total; start += rowsPerRead) {
      const rows = await parquetReadObjects({
        file: buf,
        metadata: meta,
        columns: [column],
        rowStart: start,
        rowEnd: Math.min(total, start + rowsPerRead),
      });
      const lines = rows.map((r, i) => {
        let v: unknown = r[column];
        const where = `${file}: row ${start + i}, column "${column}"`;
        if (key === 'text') {
          if (typeof v !== 'string') throw new Error(`${where}: expected a string, got ${typeof v}`);
        } else {
          if (typeof v === 'string') {
            try {
              v = JSON.parse(v);
            } catch {
              throw new Error(`${where}: a string that is not a JSON list of messages`);
            }
          }
          if (!Array.isArray(v)) throw new Error(`${where}: expected a list of {role, content}`);
        }
        return JSON.stringify({ [key]: v });
      });
      if (lines.length) fs.writeSync(fd, lines.join('\n') + '\n');
    }
  } finally {
    fs.closeSync(fd);
  }
  fs.renameSync(tmp, out);
  return { rows: total, column };
}

/**
 * Inputs with every Parquet file (also inside directories) replaced by its JSONL conversion in
 * `cacheDir` (reused when newer than the Parquet file). Other files pass through unchanged.
 */
export async function expandParquetInputs(
  inputs: string[],
  cacheDir: string,
  cols: ParquetColumns = {},
  log?: (line: string) => void,
): Promise<string[]> {
  const out: string[] = [];
  for (const input of inputs) {
    const files = listInputFiles([input]);
    if (!files.some(isParquet)) {
      out.push(input);
      continue;
    }
    for (const f of files) {
      if (!isParquet(f)) {
        out.push(f);
        continue;
      }
      const name = `${path.basename(f).replace(/\.parquet$/i, '')}-${hash(path.resolve(f))}.jsonl`;
      const dst = path.join(cacheDir, name);
      if (!(fs.existsSync(dst) && fs.statSync(dst).mtimeMs >= fs.statSync(f).mtimeMs)) {
        const r = await parquetToJsonl(f, dst, cols);
        log?.(`${f}: ${r.rows} rows of column "${r.column}" -> ${dst}`);
      }
      out.push(dst);
    }
  }
  return out;
}

function hash(s: string): string {
  let h = 2166136261;
  for (let i = 0; i < s.length; i++) h = Math.imul(h ^ s.charCodeAt(i), 16777619);
  return (h >>> 0).toString(16).padStart(8, '0');
}
