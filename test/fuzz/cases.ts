// Fuzz cases: each makes a valid input of one kind, mutates it with a seeded generator, feeds it to
// mohawk's reader, and judges the result against an oracle that does not trust the reader:
//   'clean-error'  an Error naming what is wrong (not a TypeError/RangeError/... from deep inside)
//   'success'      accepted, and what was read agrees with the oracle
//   'quiet-wrong'  accepted, but the result disagrees with the oracle (an invalid file read as
//                  valid, a value out of range let through, a NaN, an id beyond the vocabulary)
//   'crash'        an internal error (TypeError, RangeError, ...) or anything thrown that is not an Error
// ('hang' is decided by the harness's watchdog, not here.)

import fs from 'node:fs';
import path from 'node:path';
import { Random } from '../../src/util/random.js';
import { entryBytes, parseSafetensors, SAFE_DTYPE_BYTES } from '../../src/io/safetensors.js';
import { loadModel, saveModel } from '../../src/models/load.js';
import { LlamaForCausalLM } from '../../src/models/llama.js';
import { byteTokenizer, HuggingFaceTokenizer, loadTokenizer } from '../../src/io/tokenizer.js';
import {
  readLlama2cCheckpoint,
  readLlama2cTokenizerBin,
  readSentencePieceModel,
  sentencePieceTokenizerJson,
} from '../../src/io/llama2c.js';
import { LIMITS, loadConfig } from '../../src/distill/config.js';
import { openData } from '../../src/distill/pipeline.js';
import { validateConfig } from '../../src/distill/config.js';
import { writeTokenSplits } from '../../src/data/shards.js';
import { RandomWindows } from '../../src/data/batches.js';
import { noGrad, scope, tensor } from '../../src/tensor/index.js';

export const KINDS = ['safetensors', 'config', 'tokenizer', 'llama2c', 'yaml', 'data'] as const;
export type Kind = (typeof KINDS)[number];
export type OutcomeClass = 'clean-error' | 'success' | 'quiet-wrong' | 'crash' | 'hang';
export interface Outcome {
  cls: OutcomeClass;
  /** what happened, for the report (the mutation and the message) */
  detail: string;
}

type Json = Record<string, unknown>;

/** Sort a thrown value into clean-error or crash. */
export function classifyError(e: unknown): Outcome {
  if (!(e instanceof Error)) return { cls: 'crash', detail: `threw a non-Error: ${String(e)}` };
  const internal = [TypeError, RangeError, ReferenceError, SyntaxError, EvalError, URIError].some(
    (c) => e.constructor === c,
  );
  const msg = e.message.split('\n')[0].slice(0, 300);
  if (internal || !msg) return { cls: 'crash', detail: `${e.constructor.name}: ${msg}` };
  return { cls: 'clean-error', detail: msg };
}

// ---- generic mutations ----------------------------------------------------------------------

const WEIRD_NUMBERS = [0, -1, 1, 2, 3, 7, -0.5, 0.5, 1e-9, 1e9, 1e30, -1e30, 2 ** 31, 2 ** 53, 1e300, 65537];
const WEIRD_VALUES: unknown[] = [null, true, false, '', 'x', [], {}, [1, 2], { a: 1 }, '1e3', -7, 'NaN'];

function pick<T>(r: Random, xs: readonly T[]): T {
  return xs[r.int(0, xs.length)];
}

/** Every path to a leaf or container of a JSON value. */
function paths(v: unknown, prefix: (string | number)[] = [], out: (string | number)[][] = []) {
  out.push(prefix);
  if (Array.isArray(v)) v.forEach((x, i) => paths(x, [...prefix, i], out));
  else if (v && typeof v === 'object') for (const [k, x] of Object.entries(v)) paths(x, [...prefix, k], out);
  return out;
}

function getAt(root: unknown, p: (string | number)[]): unknown {
  let cur = root as Record<string | number, unknown>;
  for (const k of p) cur = cur?.[k] as Record<string | number, unknown>;
  return cur;
}

function setAt(root: Json, p: (string | number)[], v: unknown, remove = false): void {
  if (!p.length) return;
  const parent = getAt(root, p.slice(0, -1)) as Record<string | number, unknown>;
  if (!parent || typeof parent !== 'object') return;
  const k = p[p.length - 1];
  if (remove) {
    if (Array.isArray(parent)) parent.splice(Number(k), 1);
    else delete parent[k];
  } else parent[k] = v;
}

/** Change one to three places of a JSON tree: a weird number, a weird value, a deletion, a nudge. */
function mutateJson(r: Random, root: Json, focus?: (p: (string | number)[]) => boolean): string {
  const all = paths(root).filter((p) => p.length > 0 && (!focus || focus(p)));
  const notes: string[] = [];
  const n = 1 + r.int(0, 3);
  for (let i = 0; i < n && all.length; i++) {
    const p = pick(r, all);
    const old = getAt(root, p);
    const u = r.uniform();
    let v: unknown;
    if (u < 0.1) {
      setAt(root, p, undefined, true);
      notes.push(`delete ${p.join('.')}`);
      continue;
    } else if (u < 0.5 && typeof old === 'number')
      v = pick(r, [old * 2, old + 1, -old, old - 1, ...WEIRD_NUMBERS]);
    else if (u < 0.7) v = pick(r, WEIRD_NUMBERS);
    else v = structuredClone(pick(r, WEIRD_VALUES));
    setAt(root, p, v);
    notes.push(`${p.join('.')}=${JSON.stringify(v)}`);
  }
  return notes.join(', ');
}

/** Byte-level damage: flips, truncation, insertion, overwrite with a small integer. */
function mutateBytes(
  r: Random,
  b: Uint8Array,
  region?: [number, number],
): { bytes: Uint8Array; note: string } {
  const [lo, hi] = region ?? [0, b.length];
  const at = lo + r.int(0, Math.max(1, hi - lo));
  const u = r.uniform();
  if (u < 0.3) {
    const out = b.slice();
    out[at] ^= 1 << r.int(0, 8);
    return { bytes: out, note: `flip a bit of byte ${at}` };
  }
  if (u < 0.55) return { bytes: b.slice(0, at), note: `truncate to ${at} bytes` };
  if (u < 0.7) {
    const extra = new Uint8Array(1 + r.int(0, 16)).map(() => r.int(0, 256));
    const out = new Uint8Array(b.length + extra.length);
    out.set(b.subarray(0, at));
    out.set(extra, at);
    out.set(b.subarray(at), at + extra.length);
    return { bytes: out, note: `insert ${extra.length} bytes at ${at}` };
  }
  const out = b.slice();
  const v = pick(r, [0, 255, 127, 128, 1, 0x7f, 0xff]);
  for (let i = 0; i < 1 + r.int(0, 4) && at + i < out.length; i++) out[at + i] = v;
  return { bytes: out, note: `overwrite bytes at ${at} with ${v}` };
}

// ---- shared fixtures (built once per worker) ------------------------------------------------

const TINY = {
  vocabSize: 64,
  hiddenSize: 8,
  intermediateSize: 16,
  numLayers: 1,
  numHeads: 2,
  numKvHeads: 1,
  headDim: 4,
  rmsNormEps: 1e-5,
  ropeTheta: 10000,
  maxPositionEmbeddings: 32,
  tieWordEmbeddings: false,
  attentionBias: false,
  mlpBias: false,
  bosTokenId: 1,
  eosTokenId: 2,
};

interface Fixtures {
  root: string;
  modelDir: string;
  configJson: Json;
  weights: Uint8Array;
  logits: Float32Array;
  tokJson: Json;
  spModel: Uint8Array | null;
  spBin: Uint8Array | null;
  llama2c: Uint8Array;
  /** real tokenizers for the long-text check */
  longTokenizers: [string, HuggingFaceTokenizer][];
}

let fixtures: Fixtures | null = null;

const IDS = [1, 5, 9, 33, 2];

function logitsOf(dir: string): Float32Array {
  const { model } = loadModel(dir, { tokenizer: false });
  try {
    return noGrad(() =>
      scope(() => model.forward(tensor(IDS, [1, IDS.length], 'i32')).logits.toArray()),
    ) as Float32Array;
  } finally {
    (model as unknown as { dispose?: () => void }).dispose?.();
  }
}

function llama2cFile(r: Random): Uint8Array {
  const [dim, hidden, layers, heads, kv, vocab, seq] = [8, 16, 1, 2, 2, 16, 8];
  const hs = dim / heads;
  const floats =
    vocab * dim +
    layers * dim * 2 +
    layers * dim * dim * 2 +
    layers * kv * hs * dim * 2 +
    layers * hidden * dim * 3 +
    dim +
    seq * hs;
  const buf = Buffer.alloc(28 + 4 * floats);
  [dim, hidden, layers, heads, kv, vocab, seq].forEach((v, i) => buf.writeInt32LE(v, 4 * i));
  for (let i = 0; i < floats; i++) buf.writeFloatLE(r.normal() * 0.1, 28 + 4 * i);
  return new Uint8Array(buf);
}

export function setupFixtures(root: string): Fixtures {
  if (fixtures) return fixtures;
  fs.mkdirSync(root, { recursive: true });
  const modelDir = path.join(root, 'model');
  const model = new LlamaForCausalLM(TINY, { rng: new Random(1) });
  saveModel(modelDir, model, null);
  model.dispose();
  const sp = path.resolve(import.meta.dirname, '../../../shared/data/stories260K');
  const spModel = fs.existsSync(path.join(sp, 'tok512.model'))
    ? fs.readFileSync(path.join(sp, 'tok512.model'))
    : null;
  const spBin = fs.existsSync(path.join(sp, 'tok512.bin'))
    ? fs.readFileSync(path.join(sp, 'tok512.bin'))
    : null;
  fixtures = {
    root,
    modelDir,
    configJson: JSON.parse(fs.readFileSync(path.join(modelDir, 'config.json'), 'utf8')),
    weights: new Uint8Array(fs.readFileSync(path.join(modelDir, 'model.safetensors'))),
    logits: logitsOf(modelDir),
    tokJson: (byteTokenizer() as unknown as { json: Json }).json,
    spModel: spModel ? new Uint8Array(spModel) : null,
    spBin: spBin ? new Uint8Array(spBin) : null,
    llama2c: llama2cFile(new Random(5)),
    longTokenizers: [['byte', byteTokenizer()]],
  };
  if (spModel)
    fixtures.longTokenizers.push([
      'tok512',
      new HuggingFaceTokenizer(
        sentencePieceTokenizerJson(readSentencePieceModel(path.join(sp, 'tok512.model'))),
        {},
      ),
    ]);
  const phi = path.resolve(import.meta.dirname, '../../../shared/data/teachers/phi-17m');
  if (fs.existsSync(path.join(phi, 'tokenizer.json')))
    fixtures.longTokenizers.push(['phi-17m', loadTokenizer(phi) as HuggingFaceTokenizer]);
  return fixtures;
}

// ---- an independent strict safetensors reader (the reference library's rules) --------------

// the element sizes are the format's facts, shared with the product; the rules below are not
const REF_BYTES: Record<string, number> = SAFE_DTYPE_BYTES;

interface RefEntry {
  dtype: string;
  shape: number[];
  bytes: Uint8Array;
}

/** null when the reference rejects the file; else its tensors. */
export function referenceSafetensors(buf: Uint8Array): Map<string, RefEntry> | null {
  if (buf.length < 8) return null;
  const dv = new DataView(buf.buffer, buf.byteOffset, buf.byteLength);
  const n = Number(dv.getBigUint64(0, true));
  if (n > buf.length - 8 || n > 100_000_000) return null;
  let header: unknown;
  try {
    const text = new TextDecoder('utf-8', { fatal: true }).decode(buf.subarray(8, 8 + n));
    if (!text.startsWith('{')) return null;
    header = JSON.parse(text);
  } catch {
    return null;
  }
  if (!header || typeof header !== 'object' || Array.isArray(header)) return null;
  const dataLen = buf.length - 8 - n;
  const out = new Map<string, RefEntry>();
  const spans: [number, number][] = [];
  for (const [name, v] of Object.entries(header as Json)) {
    if (name === '__metadata__') {
      if (!v || typeof v !== 'object' || Array.isArray(v)) return null;
      if (!Object.values(v).every((x) => typeof x === 'string')) return null;
      continue;
    }
    const e = v as Json;
    if (!e || typeof e !== 'object') return null;
    const keys = Object.keys(e).sort().join(',');
    if (keys !== 'data_offsets,dtype,shape') return null;
    const width = REF_BYTES[e.dtype as string];
    if (!width) return null;
    const shape = e.shape;
    if (!Array.isArray(shape) || !shape.every((d) => Number.isInteger(d) && d >= 0)) return null;
    const off = e.data_offsets;
    if (!Array.isArray(off) || off.length !== 2 || !off.every((d) => Number.isInteger(d) && d >= 0))
      return null;
    const [b, end] = off as number[];
    const count = (shape as number[]).reduce((a, d) => a * d, 1);
    if (end < b || end > dataLen || end - b !== count * width) return null;
    spans.push([b, end]);
    out.set(name, {
      dtype: e.dtype as string,
      shape: shape as number[],
      bytes: buf.subarray(8 + n + b, 8 + n + end),
    });
  }
  // the tensors cover the data region exactly, without gaps or overlaps
  spans.sort((x, y) => x[0] - y[0] || x[1] - y[1]);
  let at = 0;
  for (const [b, e] of spans) {
    if (b !== at) return null;
    at = e;
  }
  if (at !== dataLen) return null;
  return out;
}

function sameBytes(a: Uint8Array, b: Uint8Array): boolean {
  return a.length === b.length && a.every((v, i) => v === b[i]);
}

// ---- the kinds ------------------------------------------------------------------------------

function mutateSafetensors(r: Random, src: Uint8Array): { bytes: Uint8Array; note: string } {
  const dv = new DataView(src.buffer, src.byteOffset, src.byteLength);
  const n = Number(dv.getBigUint64(0, true));
  const u = r.uniform();
  if (u < 0.25) {
    // the header as JSON: dtypes relabelled, shapes and offsets nudged, entries removed
    const header = JSON.parse(new TextDecoder().decode(src.subarray(8, 8 + n))) as Json;
    const names = Object.keys(header).filter((k) => k !== '__metadata__');
    const name = pick(r, names);
    const e = header[name] as Json;
    let note: string;
    const w = r.uniform();
    if (w < 0.35) {
      e.dtype = pick(r, ['I32', 'U32', 'F16', 'BF16', 'I64', 'F64', 'U8', 'BOOL', 'F33']);
      note = `${name}.dtype=${e.dtype}`;
    } else if (w < 0.6) {
      const s = e.shape as number[];
      const i = r.int(0, s.length);
      s[i] = pick(r, [0, s[i] + 1, s[i] - 1, s[i] * 2, 1e9]);
      note = `${name}.shape=${JSON.stringify(s)}`;
    } else if (w < 0.85) {
      const o = e.data_offsets as number[];
      const i = r.int(0, 2);
      o[i] += pick(r, [-4, -1, 1, 4, 64]);
      note = `${name}.data_offsets=${JSON.stringify(o)}`;
    } else {
      delete header[name];
      note = `drop ${name}`;
    }
    let text = JSON.stringify(header);
    while ((8 + text.length) % 8) text += ' ';
    const bytes = new Uint8Array(8 + text.length + (src.length - 8 - n));
    new DataView(bytes.buffer).setBigUint64(0, BigInt(text.length), true);
    bytes.set(new TextEncoder().encode(text), 8);
    bytes.set(src.subarray(8 + n), 8 + text.length);
    return { bytes, note };
  }
  if (u < 0.45) {
    // the header length: shortened into the padding, or lengthened into the data
    const out = src.slice();
    const delta = pick(r, [-7, -5, -3, -1, 1, 2, 8, 1e6]);
    new DataView(out.buffer).setBigUint64(0, BigInt(Math.max(0, n + delta)), true);
    return { bytes: out, note: `header length ${n} -> ${n + delta}` };
  }
  if (u < 0.7) return mutateBytes(r, src, [0, 8 + n]);
  return mutateBytes(r, src);
}

function caseSafetensors(r: Random, fx: Fixtures, dir: string): Outcome {
  const { bytes, note } = mutateSafetensors(r, fx.weights);
  const ref = referenceSafetensors(bytes);
  fs.mkdirSync(dir, { recursive: true });
  fs.writeFileSync(path.join(dir, 'config.json'), JSON.stringify(fx.configJson));
  fs.writeFileSync(path.join(dir, 'model.safetensors'), bytes);
  // the parser alone
  let parsed;
  try {
    parsed = parseSafetensors(bytes, 'model.safetensors');
  } catch (e) {
    const o = classifyError(e);
    return { ...o, detail: `${note}: ${o.detail}` };
  }
  if (!ref) return { cls: 'quiet-wrong', detail: `${note}: accepted a file the reference rejects` };
  for (const [name, e] of parsed.entries) {
    const x = ref.get(name);
    if (!x || x.dtype !== e.dtype || x.shape.join() !== e.shape.join() || !sameBytes(x.bytes, entryBytes(e)))
      return { cls: 'quiet-wrong', detail: `${note}: tensor ${name} read differently from the reference` };
  }
  // and as model weights: every parameter is the reference's float tensor of that name
  let model;
  try {
    model = loadModel(dir, { tokenizer: false }).model;
  } catch (e) {
    const o = classifyError(e);
    return { ...o, detail: `${note}: ${o.detail}` };
  }
  try {
    for (const [name, p] of model.namedParameters()) {
      const x = ref.get(name);
      if (!x) return { cls: 'quiet-wrong', detail: `${note}: ${name} loaded but absent from the file` };
      if (x.dtype !== 'F32')
        return { cls: 'quiet-wrong', detail: `${note}: ${name} (${x.dtype}) loaded as float weights` };
      const want = new Float32Array(x.bytes.slice().buffer);
      const got = p.toArray();
      if (!sameBytes(new Uint8Array(got.buffer, got.byteOffset, got.byteLength), new Uint8Array(want.buffer)))
        return { cls: 'quiet-wrong', detail: `${note}: ${name} differs from the file's values` };
    }
  } finally {
    model.dispose();
  }
  return { cls: 'success', detail: note };
}

/** Published meanings the config reader must enforce (the oracle for accepted configs). */
function configRangeProblem(c: Json): string | null {
  const num = (k: string) => (typeof c[k] === 'number' ? (c[k] as number) : undefined);
  const theta = num('rope_theta');
  if (theta !== undefined && !(theta > 0)) return `rope_theta ${theta} accepted`;
  const eps = num('rms_norm_eps');
  if (eps !== undefined && !(eps >= 0)) return `rms_norm_eps ${eps} accepted`;
  const vocab = num('vocab_size');
  for (const k of ['bos_token_id', 'eos_token_id']) {
    const id = num(k);
    if (id !== undefined && vocab !== undefined && !(id >= 0 && id < vocab))
      return `${k} ${id} accepted (vocab ${vocab})`;
  }
  return null;
}

function caseConfig(r: Random, fx: Fixtures, dir: string): Outcome {
  const cfg = structuredClone(fx.configJson);
  const note = mutateJson(r, cfg);
  fs.mkdirSync(dir, { recursive: true });
  fs.writeFileSync(path.join(dir, 'config.json'), JSON.stringify(cfg));
  fs.writeFileSync(path.join(dir, 'model.safetensors'), fx.weights);
  let logits: Float32Array;
  try {
    logits = logitsOf(dir);
  } catch (e) {
    const o = classifyError(e);
    return { ...o, detail: `${note}: ${o.detail}` };
  }
  const problem = configRangeProblem(cfg);
  if (problem) return { cls: 'quiet-wrong', detail: `${note}: ${problem}` };
  if (!logits.every(Number.isFinite)) return { cls: 'quiet-wrong', detail: `${note}: non-finite logits` };
  return { cls: 'success', detail: note };
}

const EVIL_REGEXES = [
  '(a+)+$',
  '(a|aa)*c',
  '(\\w+\\s?)*$',
  '(.*)*x',
  '\\s+',
  ' ?\\p{L}+|\\s+',
  '[',
  '(?<=a)b',
  '(a)\\1',
];

/** Long random texts through real tokenizers: pieces (long-text.ts) must give the whole text's ids. */
function caseLongText(r: Random, fx: Fixtures): Outcome {
  const toks = fx.longTokenizers;
  const [name, tok] = pick(r, toks);
  const atoms = [
    'the',
    'Cat',
    '42',
    ' ',
    '  ',
    '\n',
    '\n\n',
    '\t',
    '.',
    ',',
    '"',
    "'s",
    'über',
    '日本',
    '😀',
    '<s>',
    '</s>',
    '<|endoftext|>',
    '[SEP]',
    '-',
    '_x',
  ];
  let text = '';
  while (text.length < 4200 + r.int(0, 2000)) text += pick(r, atoms) + (r.uniform() < 0.6 ? ' ' : '');
  const inner = (tok as unknown as { tok: { encode: (t: string, o: object) => { ids: number[] } } }).tok;
  try {
    const whole = inner.encode(text, { add_special_tokens: false }).ids;
    const got = tok.encode(text, { addBos: false });
    const i = got.findIndex((v, k) => v !== whole[k]);
    if (i >= 0 || got.length !== whole.length)
      return {
        cls: 'quiet-wrong',
        detail: `${name}: long text encoded in pieces differs from whole at id ${i}`,
      };
    return { cls: 'success', detail: `${name}: ${text.length} characters` };
  } catch (e) {
    return classifyError(e);
  }
}

function caseTokenizer(r: Random, fx: Fixtures): Outcome {
  if (r.uniform() < 0.15) return caseLongText(r, fx);
  const json = structuredClone(fx.tokJson);
  let note: string;
  const u = r.uniform();
  if (u < 0.2) {
    const pattern = pick(r, EVIL_REGEXES);
    json.pre_tokenizer = {
      type: 'Sequence',
      pretokenizers: [
        { type: 'Split', pattern: { Regex: pattern }, behavior: 'Isolated', invert: false },
        json.pre_tokenizer,
      ],
    };
    note = `Split ${JSON.stringify(pattern)}`;
  } else if (u < 0.4) {
    const added = json.added_tokens as Json[];
    added.push({
      id: pick(r, [257, 300, 1e9, -1, 2 ** 31, 1.5]),
      content: `<t${r.int(0, 9)}>`,
      special: true,
    });
    note = `added token id ${JSON.stringify(added[added.length - 1].id)}`;
  } else if (u < 0.6) {
    json.post_processor = pick(r, [
      { type: 'TemplateProcessing', single: 'x' },
      {
        type: 'TemplateProcessing',
        single: [{ SpecialToken: { id: '<s>', type_id: 0 } }],
        special_tokens: {},
      },
      {
        type: 'TemplateProcessing',
        single: [{ Sequence: { id: 'A', type_id: 0 } }],
        special_tokens: { E: { id: 'E', ids: [1e9], tokens: ['E'] } },
      },
      { type: 'Sequence', processors: [{ type: 'ByteLevel' }, null] },
      { type: 'BertProcessing', sep: ['x', 5], cls: ['y', 9999] },
      { type: 'Nope' },
    ]);
    note = `post_processor ${JSON.stringify(json.post_processor)}`;
  } else note = mutateJson(r, json);
  let tok: HuggingFaceTokenizer;
  try {
    tok = new HuggingFaceTokenizer(
      json,
      { bos_token: '<|endoftext|>', eos_token: '<|endoftext|>' },
      'tokenizer.json',
    );
  } catch (e) {
    const o = classifyError(e);
    return { ...o, detail: `${note}: ${o.detail}` };
  }
  const text =
    'a'.repeat(24 + r.int(0, 8)) +
    '! ' +
    Array.from({ length: 40 }, () => String.fromCharCode(32 + r.int(0, 95))).join('');
  let ids: number[];
  try {
    ids = tok.encode(text);
    tok.decode(ids);
  } catch (e) {
    const o = classifyError(e);
    return { ...o, detail: `${note}: at encode: ${o.detail}` };
  }
  const bad = ids.find((id) => !(Number.isInteger(id) && id >= 0 && id < tok.vocabSize));
  if (bad !== undefined)
    return { cls: 'quiet-wrong', detail: `${note}: id ${bad} outside [0, ${tok.vocabSize})` };
  if (ids.length === 0) return { cls: 'quiet-wrong', detail: `${note}: a non-empty text encoded to nothing` };
  return { cls: 'success', detail: note };
}

function caseLlama2c(r: Random, fx: Fixtures, dir: string): Outcome {
  fs.mkdirSync(dir, { recursive: true });
  const which = r.int(0, 3);
  if (which === 0 || !fx.spModel || !fx.spBin) {
    const src = fx.llama2c;
    let bytes: Uint8Array;
    let note: string;
    if (r.uniform() < 0.5) {
      bytes = src.slice();
      const field = r.int(0, 7);
      const v = pick(r, [0, -1, 1, 3, 2 ** 30, -16, 7, 9, 1 << 24]);
      new DataView(bytes.buffer).setInt32(4 * field, v, true);
      note = `header field ${field} = ${v}`;
    } else ({ bytes, note } = mutateBytes(r, src));
    const f = path.join(dir, 'model.bin');
    fs.writeFileSync(f, bytes);
    let got;
    try {
      got = readLlama2cCheckpoint(f);
    } catch (e) {
      const o = classifyError(e);
      return { ...o, detail: `${note}: ${o.detail}` };
    }
    // oracle: the embedding is the floats right after the header, and sizes follow the header
    const h = got.header;
    const emb = got.tensors.get('model.embed_tokens.weight')!;
    const want = new Float32Array(bytes.slice(28, 28 + 4 * h.vocabSize * h.dim).buffer);
    if (emb.length !== h.vocabSize * h.dim || !emb.every((v, i) => Object.is(v, want[i])))
      return { cls: 'quiet-wrong', detail: `${note}: embedding not read from the file's first floats` };
    return { cls: 'success', detail: note };
  }
  if (which === 1) {
    const { bytes, note } = mutateBytes(r, fx.spModel);
    const f = path.join(dir, 'tok.model');
    fs.writeFileSync(f, bytes);
    try {
      const v = readSentencePieceModel(f);
      if (v.pieces.length !== 512 && sameBytes(bytes.subarray(0, 16), fx.spModel.subarray(0, 16)))
        return { cls: 'quiet-wrong', detail: `${note}: ${v.pieces.length} pieces read without complaint` };
      new HuggingFaceTokenizer(sentencePieceTokenizerJson(v), {}, f).encode('Once upon a time');
      return { cls: 'success', detail: note };
    } catch (e) {
      const o = classifyError(e);
      return { ...o, detail: `${note}: ${o.detail}` };
    }
  }
  const { bytes, note } = mutateBytes(r, fx.spBin);
  const f = path.join(dir, 'tok.bin');
  fs.writeFileSync(f, bytes);
  try {
    const v = readLlama2cTokenizerBin(f, 512);
    const tok = new HuggingFaceTokenizer(sentencePieceTokenizerJson(v), {}, f);
    const ids = tok.encode('Once upon a time');
    if (ids.some((id) => !(id >= 0 && id < tok.vocabSize)))
      return { cls: 'quiet-wrong', detail: `${note}: id outside the vocabulary` };
    return { cls: 'success', detail: note };
  } catch (e) {
    const o = classifyError(e);
    return { ...o, detail: `${note}: ${o.detail}` };
  }
}

const BASE_YAML = `teacher: t
out: runs/x
seed: 3
student: {dState: 16, chunkSize: 64, attentionLayers: [1]}
data: {train: [data], valTokens: 4096}
stageDefaults: {batchTokens: 8192, microBatch: 8, seqLen: 256}
stages:
  - {stage: 1, tokens: 81920, lr: 1.0e-3}
  - {stage: 3, tokens: 163840, lr: 5.0e-4, freeze: ["model.layers.*.mlp"]}
`;

const SET_PATHS = [
  'seed',
  'stages.0.tokens',
  'stages.1.microBatch',
  'student.dState',
  'stageDefaults.seqLen',
  'data.valTokens',
  '__proto__.polluted',
  'stages.__proto__.polluted',
  'constructor.prototype.polluted',
  'student.__proto__',
  'stages.9.lr',
  'a..b',
  'data.train.0',
];
const SET_VALUES = [
  '1e300',
  '-1',
  '0',
  '2',
  '*a',
  '&a [1]',
  '[1, 2',
  '{x: 1}',
  'NaN',
  '.inf',
  '1e9',
  '9007199254740992',
  'null',
  '"x"',
  '!!binary AAAA',
];
const YAML_SNIPPETS = [
  '&a {stage: 3, tokens: 1}',
  '*a',
  '*missing',
  '{__proto__: {polluted: 1}}',
  '.nan',
  '-.inf',
  '1e300',
  '[[[[[[[]]]]]]]',
  '!!js/function "x"',
  "'",
  '? complex',
  '<<: *a',
  '~',
];

function caseYaml(r: Random, dir: string): Outcome {
  let text = BASE_YAML;
  const notes: string[] = [];
  const u = r.uniform();
  if (u < 0.6) {
    // replace a value (after a colon) or an item with a snippet or a weird number
    const spots = [...text.matchAll(/: ([^,\n}\]]+)/g)];
    for (let i = 0; i < 1 + r.int(0, 2); i++) {
      const m = pick(r, spots);
      const v = r.uniform() < 0.5 ? pick(r, YAML_SNIPPETS) : String(pick(r, WEIRD_NUMBERS));
      text = text.slice(0, m.index! + 2) + v + text.slice(m.index! + m[0].length);
      notes.push(`${m[0].trim()} -> ${v}`);
      break;
    }
  } else if (u < 0.75) {
    const at = r.int(0, text.length);
    const piece = pick(r, ['{', '}', '[', ']', ':', '\n  ', '- ', '#', '"', '&x ', '*x', '\t']);
    text = text.slice(0, at) + piece + text.slice(at);
    notes.push(`insert ${JSON.stringify(piece)} at ${at}`);
  }
  const overrides: string[] = [];
  if (u >= 0.85)
    // benign overrides: the accepted path must give exactly these values
    overrides.push(
      pick(r, [
        'seed=5',
        'stages.0.tokens=16384',
        'student.dState=32',
        'stages.1.lr=1e-4',
        'data.valTokens=512',
      ]),
    );
  else if (u >= 0.6 || r.uniform() < 0.3)
    for (let i = 0; i < 1 + r.int(0, 2); i++) overrides.push(`${pick(r, SET_PATHS)}=${pick(r, SET_VALUES)}`);
  if (overrides.length) notes.push(`--set ${overrides.join(' ')}`);
  const note = notes.join('; ') || 'unchanged';
  fs.mkdirSync(dir, { recursive: true });
  const f = path.join(dir, 'c.yaml');
  fs.writeFileSync(f, text);
  const before = Object.getOwnPropertyNames(Object.prototype).join();
  let cfg;
  try {
    cfg = loadConfig(f, overrides);
  } catch (e) {
    const o = classifyError(e);
    if (Object.getOwnPropertyNames(Object.prototype).join() !== before || ({} as Json).polluted !== undefined)
      return { cls: 'quiet-wrong', detail: `${note}: Object.prototype polluted` };
    return { ...o, detail: `${note}: ${o.detail}` };
  }
  if (Object.getOwnPropertyNames(Object.prototype).join() !== before || ({} as Json).polluted !== undefined)
    return { cls: 'quiet-wrong', detail: `${note}: Object.prototype polluted` };
  for (const s of cfg.stages) {
    const nums = [s.tokens, s.batchTokens, s.microBatch, s.seqLen, s.lr];
    if (!nums.every((v) => Number.isFinite(v) && v > 0))
      return { cls: 'quiet-wrong', detail: `${note}: stage value out of range` };
    if (
      s.tokens > LIMITS.tokens ||
      s.microBatch * s.seqLen > LIMITS.microTokens ||
      s.batchTokens % (s.microBatch * s.seqLen)
    )
      return { cls: 'quiet-wrong', detail: `${note}: stage sizes beyond the limits accepted` };
  }
  if (u >= 0.85) {
    const [p, v] = overrides[0].split('=');
    const got = getAt(
      { ...cfg, stages: cfg.stages },
      p.split('.').map((k) => (/^\d+$/.test(k) ? Number(k) : k)),
    );
    if (got !== Number(v)) return { cls: 'quiet-wrong', detail: `${note}: ${p} is ${JSON.stringify(got)}` };
  }
  if (cfg.student.dState !== null && !(cfg.student.dState >= 1 && cfg.student.dState <= LIMITS.dState))
    return { cls: 'quiet-wrong', detail: `${note}: dState ${cfg.student.dState} accepted` };
  return { cls: 'success', detail: note };
}

function caseData(r: Random, dir: string): Outcome {
  const VOCAB = 64;
  const prep = path.join(dir, 'prep');
  const docs = Array.from({ length: 4 }, () =>
    Array.from({ length: 50 + r.int(0, 50) }, () => r.int(3, VOCAB)),
  );
  writeTokenSplits(
    prep,
    { train: { documents: docs.slice(0, 3) }, val: { documents: docs.slice(3) } },
    { vocabSize: VOCAB, eosTokenId: 2, maxShardTokens: 100 },
  );
  let note: string;
  if (r.uniform() < 0.5) {
    const idx = JSON.parse(fs.readFileSync(path.join(prep, 'index.json'), 'utf8')) as Json;
    note = mutateJson(r, idx);
    fs.writeFileSync(path.join(prep, 'index.json'), JSON.stringify(idx));
  } else {
    const shards = fs.readdirSync(prep).filter((n) => n.endsWith('.bin'));
    const s = pick(r, shards);
    const { bytes, note: n } = mutateBytes(r, fs.readFileSync(path.join(prep, s)));
    fs.writeFileSync(path.join(prep, s), bytes);
    note = `${s}: ${n}`;
  }
  const cfg = validateConfig(
    {
      teacher: 't',
      out: path.join(dir, 'out'),
      data: { train: [prep] },
      stages: [{ stage: 3, tokens: 8192 }],
    },
    'fuzz',
  );
  try {
    const { train, val } = openData(cfg, null, () => {}, VOCAB);
    for (const split of [train, val]) {
      const w = new RandomWindows(split, 2, Math.min(16, split.length - 1), 1);
      for (let i = 0; i < 4; i++) {
        const b = w.next();
        const ids = [...b.input, ...b.target];
        const bad = ids.find((id) => !(id >= 0 && id < VOCAB));
        if (bad !== undefined) return { cls: 'quiet-wrong', detail: `${note}: id ${bad} reached a batch` };
      }
    }
  } catch (e) {
    const o = classifyError(e);
    return { ...o, detail: `${note}: ${o.detail}` };
  }
  return { cls: 'success', detail: note };
}

/** Run case `index` of `kind` under `seed` in the scratch directory `work` (emptied first). */
export function runCase(kind: Kind, seed: number, index: number, work: string): Outcome {
  const fx = setupFixtures(path.join(work, 'fixtures'));
  const dir = path.join(work, 'case');
  fs.rmSync(dir, { recursive: true, force: true });
  const r = new Random(seed * 1_000_003 + index * 7 + KINDS.indexOf(kind));
  try {
    switch (kind) {
      case 'safetensors':
        return caseSafetensors(r, fx, dir);
      case 'config':
        return caseConfig(r, fx, dir);
      case 'tokenizer':
        return caseTokenizer(r, fx);
      case 'llama2c':
        return caseLlama2c(r, fx, dir);
      case 'yaml':
        return caseYaml(r, dir);
      case 'data':
        return caseData(r, dir);
    }
  } catch (e) {
    // the harness itself must not fail; anything escaping a case is the reader's crash
    return classifyError(e);
  }
}
