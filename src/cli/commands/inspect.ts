// mohawk inspect: the tensors of a weights file or model directory, from the headers alone.

import { inspectWeights } from '../../io/weights.js';
import { CliError, flag, list, parse } from '../args.js';

const HELP = `usage: mohawk inspect PATH [--tensor NAME]... [--json]

PATH is a weights file (.safetensors, or a PyTorch .bin/.pt read without running its pickle) or
a model directory (model.safetensors[.index.json] or pytorch_model.bin[.index.json]). Lists every
tensor (name, dtype, shape, byte offset in its file, bytes) without reading the data, and prints
the first 64 values (row-major) of each --tensor.

  --tensor NAME   print the values of this tensor (repeatable)
  --json          {"tensors": [{"name", "dtype", "shape", "offset", "bytes"}], "values": {NAME: [...]}}`;

export async function run(argv: string[]): Promise<number> {
  const p = parse(
    argv,
    { tensor: { type: 'string', multiple: true }, json: { type: 'boolean' } },
    HELP,
    true,
  );
  if (!p) return 0;
  if (p.positionals.length !== 1) throw new CliError(`inspect: expected one PATH\n\n${HELP}`);
  const r = inspectWeights(p.positionals[0], list(p, 'tensor'));
  if (flag(p, 'json')) {
    console.log(JSON.stringify({ tensors: r.tensors, values: r.values }));
    return 0;
  }
  const rows = r.tensors.map((t) => [
    t.name,
    t.dtype,
    `[${t.shape.join(', ')}]`,
    String(t.offset),
    String(t.bytes),
  ]);
  const head = ['name', 'dtype', 'shape', 'offset', 'bytes'];
  const widths = head.map((h, i) => Math.max(h.length, ...rows.map((r) => r[i].length)));
  const line = (cells: string[]) =>
    cells.map((c, i) => (i >= 3 ? c.padStart(widths[i]) : c.padEnd(widths[i]))).join('  ');
  console.log(line(head));
  console.log(widths.map((w) => '-'.repeat(w)).join('  '));
  for (const row of rows) console.log(line(row));
  const total = r.tensors.reduce((a, t) => a + t.bytes, 0);
  const params = r.tensors.reduce((a, t) => a + t.shape.reduce((x, y) => x * y, 1), 0);
  console.log(`\n${r.tensors.length} tensors, ${params} values, ${total} bytes in ${r.files.length} file(s)`);
  for (const [name, values] of Object.entries(r.values)) console.log(`\n${name}: ${values.join(' ')}`);
  return 0;
}
