// mohawk approx: how close each class of structured matrices gets to a teacher's attention
// matrices (the paper's Section 4 experiment); src/eval/approx.ts says how each class is fitted.

import fs from 'node:fs';
import { loadModel } from '../../models/load.js';
import { TokenDataset } from '../../data/shards.js';
import { approximateAttention, MATRIX_CLASSES, type MatrixClass } from '../../eval/approx.js';
import { CliError, deviceOption, flag, num, parse, required, selectDevice, str } from '../args.js';

const HELP = `usage: mohawk approx --teacher DIR (--file P | --data DIR) [--tokens N] [--seq-len T]
                     [--classes toeplitz,lowrank,ssd,semiseparable] [--state N] [--json]

Fit, per layer, head and sequence, the closest matrix of each structured class to the teacher's
attention matrix (Frobenius norm) and report the distances averaged per (sequence, head), as
the paper does (Bick et al. 2024, Section 4):
  toeplitz       causal Toeplitz (long convolution): closed form (the mean of each diagonal)
  lowrank        causal low rank tril(Q K^T), Q, K of T x N (causal linear attention):
                 alternating least squares from the truncated SVD, --iterations rounds
  ssd            Mamba-2's SSD matrix with state N: with free parameters the same set as lowrank
                 (the decays fold into Q and K), so its best fit is lowrank's
  semiseparable  general N-semiseparable: the exact Eckart-Young lower bound over its blocks
                 (no N-semiseparable matrix is closer; ssd is a feasible one above it)

  --teacher DIR      the teacher model directory
  --file P           text, tokenized with the teacher's tokenizer (BOS first unless --no-bos)
  --data DIR         a prepared token directory (mohawk data prepare); its val split if present
  --tokens N         tokens to analyze in all (default 1024): N / T sequences of T tokens
  --seq-len T        tokens per sequence (default 128)
  --classes LIST     comma-separated classes (default all four)
  --state N          the state size N (default 16)
  --iterations K     ALS rounds of lowrank / ssd (default 20)
  --no-bos           do not prepend BOS to --file text
  --json             {"classes": {CLASS: {"distance", "relative"}}, "layers": [{CLASS: distance}], ...}
  --device D         cpu (default) or cuda (the teacher's forward; the fits run on the CPU)`;

export async function run(argv: string[]): Promise<number> {
  const p = parse(
    argv,
    {
      teacher: { type: 'string' },
      file: { type: 'string' },
      data: { type: 'string' },
      tokens: { type: 'string' },
      'seq-len': { type: 'string' },
      classes: { type: 'string' },
      state: { type: 'string' },
      iterations: { type: 'string' },
      'no-bos': { type: 'boolean' },
      json: { type: 'boolean' },
      ...deviceOption,
    },
    HELP,
  );
  if (!p) return 0;
  const teacherDir = required(p, 'teacher', HELP);
  const file = str(p, 'file');
  const data = str(p, 'data');
  if ((file === undefined) === (data === undefined))
    throw new CliError(`give one of --file or --data\n\n${HELP}`);
  const T = num(p, 'seq-len', 128, { integer: true, min: 2 });
  const tokens = num(p, 'tokens', 1024, { integer: true, min: T });
  const state = num(p, 'state', 16, { integer: true, min: 1 });
  const iterations = num(p, 'iterations', 20, { integer: true, min: 0 });
  const classes = (str(p, 'classes') ?? MATRIX_CLASSES.join(','))
    .split(',')
    .map((c) => c.trim())
    .filter(Boolean);
  for (const c of classes)
    if (!MATRIX_CLASSES.includes(c as MatrixClass))
      throw new CliError(`--classes: unknown class "${c}" (known: ${MATRIX_CLASSES.join(', ')})`);
  await selectDevice(p);
  const { model: teacher, tokenizer } = loadModel(teacherDir, { tokenizer: file !== undefined });
  if (T > teacher.info.maxSeqLen)
    throw new CliError(`--seq-len: ${T} exceeds the teacher's ${teacher.info.maxSeqLen} positions`);
  const S = Math.floor(tokens / T);
  let stream: ArrayLike<number>;
  let source: string;
  if (file !== undefined) {
    if (!tokenizer) throw new CliError(`--teacher: ${teacherDir} has no tokenizer.json (needed for --file)`);
    let text: string;
    try {
      text = fs.readFileSync(file, 'utf8');
    } catch {
      throw new CliError(`--file: cannot read ${file}`);
    }
    stream = tokenizer.encode(text, flag(p, 'no-bos') ? { addBos: false } : {});
    source = file;
  } else {
    const ds = TokenDataset.open(data!);
    const split = ds.split(ds.has('val') ? 'val' : 'train');
    const n = Math.min(split.length, S * T);
    const out = new Int32Array(n);
    split.read(0, n, out);
    stream = out;
    source = `${data} (${split.name})`;
  }
  if (stream.length < S * T)
    throw new CliError(`${source}: ${stream.length} tokens, fewer than --tokens ${S * T}`);
  const sequences = Array.from({ length: S }, (_, s) =>
    Array.from({ length: T }, (_, i) => stream[s * T + i]),
  );
  const t0 = performance.now();
  const r = approximateAttention(teacher, sequences, {
    classes: classes as MatrixClass[],
    state,
    iterations,
    onSequence: (d, total) => {
      if (!flag(p, 'json')) process.stderr.write(`\rsequence ${d}/${total}`);
    },
  });
  if (!flag(p, 'json')) process.stderr.write('\n');
  const seconds = (performance.now() - t0) / 1000;
  if (flag(p, 'json')) {
    console.log(JSON.stringify({ ...r, teacher: teacherDir, source, seconds }, null, 2));
    return 0;
  }
  const cls = classes as MatrixClass[];
  const rows = [
    ['layer', '||A||_F', ...cls],
    ...r.layers.map((l, i) => [
      String(i),
      r.layerAttentionNorms[i].toFixed(4),
      ...cls.map((c) => l[c]!.toFixed(4)),
    ]),
    ['mean', r.attentionNorm.toFixed(4), ...cls.map((c) => r.classes[c]!.distance.toFixed(4))],
    ['relative', '', ...cls.map((c) => r.classes[c]!.relative.toFixed(4))],
  ];
  const w = rows[0].map((_, c) => Math.max(...rows.map((x) => x[c].length)));
  for (const x of rows)
    console.log(x.map((v, c) => (c === 0 ? v.padEnd(w[c]) : v.padStart(w[c]))).join('  '));
  console.log(
    `${r.sequences} sequences x ${r.seqLen} tokens, ${r.heads} heads, state N = ${r.state}, ALS ${r.iterations} rounds; ` +
      `semiseparable is a lower bound; ${source}; ${seconds.toFixed(1)} s`,
  );
  return 0;
}
