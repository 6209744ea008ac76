// Model directories in and out: config.json decides the format (Hugging Face families through
// registry.ts, the student formats beside them), weights come from safetensors, and the
// tokenizer from tokenizer.json.

import fs from 'node:fs';
import path from 'node:path';
import {
  FLOAT_DTYPES,
  readEntryInto,
  saveTensors,
  type SafeEntry,
  type SaveDType,
  type WriteSource,
} from '../io/safetensors.js';
import { readWeights } from '../io/weights.js';
import { writeFileAtomic } from '../util/fs.js';
import type { Backend, DType } from '../backends/backend.js';
import { loadTokenizer, type Tokenizer } from '../io/tokenizer.js';
import { getBackend, noGrad, setBackend, shapeStr, type Tensor } from '../tensor/index.js';
import type { InitOptions } from '../nn/layers.js';
import type { Module } from '../nn/module.js';
import type { Json } from './hf.js';
import { isStudentConfig, studentConfigFromJson, StudentLM } from './phi-mamba.js';
import { buildFamilyModel } from './registry.js';
import type { CausalLM } from './types.js';

export interface ModelFormat {
  name: string;
  /** whether this format reads the given config.json */
  detect(config: Json): boolean;
  /**
   * build the model from its config; `file` names config.json in errors. Weights are random, or
   * zeros with `init.deferInit` (when a checkpoint fills them right after).
   */
  build(config: Json, file: string, init?: InitOptions): CausalLM;
  /** checkpoint tensors that are not parameters and may be ignored (buffers, tied copies) */
  ignorable?(name: string, model: CausalLM): boolean;
}

const formats: ModelFormat[] = [];

export function registerFormat(f: ModelFormat): void {
  if (!formats.some((g) => g.name === f.name)) formats.unshift(f);
}

registerFormat({
  name: 'huggingface',
  detect: (c) => typeof c.model_type === 'string',
  build: buildFamilyModel,
  ignorable: (name, model) =>
    /\.(rotary_emb\.inv_freq|attn\.bias|attn\.masked_bias)$/.test(name) ||
    (name === 'lm_head.weight' && !model.stateDict().has('lm_head.weight')),
});

registerFormat({
  name: 'phi-mamba',
  detect: isStudentConfig,
  build: (config, file, init) => new StudentLM(studentConfigFromJson(config, file), init),
});

export function readConfig(dir: string): { json: Json; file: string } {
  const file = path.join(dir, 'config.json');
  let text: string;
  try {
    text = fs.readFileSync(file, 'utf8');
  } catch {
    throw new Error(`${dir}: config.json not found (is this a model directory?)`);
  }
  let json: unknown;
  try {
    json = JSON.parse(text);
  } catch (e) {
    throw new Error(`${file}: not valid JSON (${(e as Error).message})`, { cause: e });
  }
  if (!json || typeof json !== 'object' || Array.isArray(json)) throw new Error(`${file}: not a JSON object`);
  return { json: json as Json, file };
}

/** The model described by a config.json, with random weights. */
export function buildModel(config: Json, file = 'config.json', init?: InitOptions): CausalLM {
  const format = formats.find((f) => f.detect(config));
  if (!format)
    throw new Error(`${file}: unknown model format (no model_type, and no known student sections)`);
  return format.build(config, file, init);
}

/** Load weights into a model by name; ignorable extras are dropped, anything else must match. */
export function loadWeights(
  model: CausalLM,
  tensors: Map<string, Tensor>,
  source: string,
  config: Json,
): void {
  const format = formats.find((f) => f.detect(config));
  for (const name of [...tensors.keys()]) {
    if (format?.ignorable?.(name, model)) {
      tensors.get(name)!.dispose();
      tensors.delete(name);
    }
  }
  try {
    model.loadStateDict(tensors, { source });
  } finally {
    for (const t of tensors.values()) t.dispose();
  }
}

export interface LoadedModel {
  model: CausalLM;
  tokenizer: Tokenizer | null;
  config: Json;
  dir: string;
}

export interface LoadOptions {
  /** read tokenizer.json when present (default true) */
  tokenizer?: boolean;
  /**
   * hold the weights of linear layers in this dtype, read straight from the file (a frozen model
   * under bf16 autocast: 2 bytes per matmul weight, no f32 copy); everything else stays f32
   */
  linearDtype?: 'bf16';
}

// A backend that allocates nothing: the model a config describes, built on it, has every
// parameter's name and shape but no memory, so a checkpoint can be checked against it first.
// A budget of buffers and elements stops the build of a config far larger than its checkpoint
// (1e5 layers, hidden_size 1e9) as soon as it is exceeded.
class ShapeBudgetExceeded extends Error {}

function shapesOnlyBackend(budget: { buffers: number; elements: number }): Backend {
  return new Proxy({} as Backend, {
    get(_, key) {
      if (key === 'alloc')
        return (dtype: DType, length: number) => {
          budget.buffers--;
          budget.elements -= length;
          if (budget.buffers < 0 || budget.elements < 0) throw new ShapeBudgetExceeded();
          return { dtype, length };
        };
      if (key === 'free' || key === 'fill' || key === 'write') return () => {};
      if (key === 'name') return 'cpu';
      return () => {
        throw new Error(`building a model's shapes: backend.${String(key)} needs memory`);
      };
    },
  });
}

/**
 * The model a config describes with every parameter's name and shape, and no memory; null when it
 * would need more than `budget` buffers or elements.
 */
export function shapeModel(
  config: Json,
  file = 'config.json',
  budget = { buffers: Infinity, elements: Infinity },
): CausalLM | null {
  return withShapesOnly(() => buildModel(config, file, { deferInit: true }), budget);
}

/**
 * Run `build` (which makes modules with deferred init) on a backend that allocates nothing: what
 * it returns has every parameter's name and shape, and no memory. Null past the budget.
 */
export function withShapesOnly<T>(
  build: () => T,
  budget = { buffers: Infinity, elements: Infinity },
): T | null {
  const prev = getBackend();
  setBackend(shapesOnlyBackend({ ...budget }));
  try {
    return build();
  } catch (e) {
    if (e instanceof ShapeBudgetExceeded) return null;
    throw e;
  } finally {
    setBackend(prev);
  }
}

/**
 * What a model whose checkpoint names or contents differ from its parameters provides (the
 * published Phi-Mamba layout); models without it save and load their parameters as they are.
 */
export interface CheckpointLayout {
  /** a parameter's name in the checkpoint */
  checkpointName(param: string): string;
  /** parameters a checkpoint may leave out (they keep their initial value) */
  optionalParameter(param: string): boolean;
  /** the tensors to save, under their checkpoint names */
  checkpointState(): Map<string, WriteSource>;
}

function layoutOf(model: CausalLM): CheckpointLayout | null {
  const m = model as unknown as Partial<CheckpointLayout>;
  return typeof m.checkpointName === 'function' &&
    typeof m.optionalParameter === 'function' &&
    typeof m.checkpointState === 'function'
    ? (m as CheckpointLayout)
    : null;
}

/**
 * Check a checkpoint's tensors (headers only) against the parameters a config describes, before
 * anything is allocated: every parameter present with its shape and a floating-point dtype, no
 * tensor left over but the format's ignorable ones. Returns each parameter's tensor (null for an
 * optional one the checkpoint leaves out). Errors name the file and the tensor.
 */
export function checkWeights(
  config: Json,
  file: string,
  entries: Map<string, SafeEntry>,
  source: string,
): Map<string, SafeEntry | null> {
  // room for buffers that are not parameters (rotary tables, masks) beside the checkpoint's tensors
  let elements = 1 << 28;
  for (const e of entries.values()) elements += e.shape.reduce((a, b) => a * b, 1);
  const model = shapeModel(config, file, { buffers: entries.size + 4096, elements });
  if (!model)
    throw new Error(
      `${file}: describes a model larger than ${source} holds (${entries.size} tensors); check num_hidden_layers, hidden_size, intermediate_size and vocab_size`,
    );
  const format = formats.find((f) => f.detect(config));
  const layout = layoutOf(model);
  const found = new Map<string, SafeEntry | null>();
  const used = new Set<string>();
  const missing: string[] = [];
  for (const [name] of model.namedParameters()) {
    // the checkpoint's name for it, or the parameter's own (files written before the layout)
    const ck = layout?.checkpointName(name) ?? name;
    const key = entries.has(ck) ? ck : entries.has(name) ? name : null;
    if (key) {
      found.set(name, entries.get(key)!);
      used.add(key);
    } else if (layout?.optionalParameter(name)) found.set(name, null);
    else missing.push(ck);
  }
  if (missing.length)
    throw new Error(
      `${source}: missing tensor ${missing[0]}${missing.length > 1 ? ` (and ${missing.length - 1} more)` : ''}`,
    );
  const extra = [...entries.keys()].filter((n) => !used.has(n) && !format?.ignorable?.(n, model));
  if (extra.length)
    throw new Error(
      `${source}: unexpected tensor ${extra[0]}${extra.length > 1 ? ` (and ${extra.length - 1} more)` : ''}`,
    );
  const params = new Map(model.namedParameters());
  for (const [name, e] of found) {
    if (!e) continue;
    const p = params.get(name)!;
    if (e.shape.length !== p.shape.length || e.shape.some((d, i) => d !== p.shape[i]))
      throw new Error(
        `${e.file}: tensor ${e.name} has shape ${shapeStr(e.shape)}, expected ${shapeStr(p.shape)}`,
      );
    const wantFloat = p.dtype !== 'i32';
    if (FLOAT_DTYPES.has(e.dtype) !== wantFloat)
      throw new Error(
        `${e.file}: tensor ${e.name} has dtype ${e.dtype}, expected ${wantFloat ? 'a floating-point dtype (F32, BF16, F16)' : 'an integer dtype'}`,
      );
  }
  return found;
}

/**
 * Load a model directory: config.json, the weights (model.safetensors, or its shards through
 * model.safetensors.index.json; else pytorch_model.bin, read safely), tokenizer.json if present. The checkpoint's headers are checked
 * against the config before the model is allocated; the weights then stream tensor by tensor into
 * the parameters (no whole-file buffers). A load that fails frees what it built.
 */
export function loadModel(dir: string, opts: LoadOptions = {}): LoadedModel {
  const { json, file } = readConfig(dir);
  const ckpt = readWeights(dir);
  const weights = checkWeights(json, file, ckpt.entries, ckpt.source);
  // no random draws: every parameter is overwritten by the checkpoint
  const model = buildModel(json, file, { deferInit: true, linearDtype: opts.linearDtype });
  try {
    noGrad(() => {
      for (const [name, p] of model.namedParameters()) {
        const e = weights.get(name);
        if (e) readEntryInto(e, p);
      }
    });
    const wantTok = opts.tokenizer ?? true;
    const tokenizer = wantTok && fs.existsSync(path.join(dir, 'tokenizer.json')) ? loadTokenizer(dir) : null;
    return { model, tokenizer, config: json, dir };
  } catch (e) {
    model.dispose();
    throw e;
  }
}

export interface SaveOptions {
  /** convert floating-point weights to this dtype (default: as the parameters are) */
  dtype?: SaveDType;
  /** the largest weight file in bytes (default 5GB); larger models are sharded with an index */
  shardSize?: number;
}

/** Write config.json, model.safetensors (sharded past `opts.shardSize`) and (when given) the tokenizer into dir. */
export function saveModel(
  dir: string,
  model: CausalLM,
  tokenizer?: Tokenizer | null,
  extraFiles: Record<string, string> = {},
  opts: SaveOptions = {},
): void {
  fs.mkdirSync(dir, { recursive: true });
  writeFileAtomic(path.join(dir, 'config.json'), JSON.stringify(model.configJson(), null, 2) + '\n');
  const state = layoutOf(model)?.checkpointState() ?? (model as Module).stateDict();
  saveTensors(dir, state, { dtype: opts.dtype, shardSize: opts.shardSize });
  tokenizer?.save(dir);
  for (const [name, text] of Object.entries(extraFiles)) fs.writeFileSync(path.join(dir, name), text);
}

export interface ConvertOptions extends SaveOptions {
  /** called with each weight file as it is written */
  onFile?: (file: string) => void;
}

/** the files of a model directory that hold weights (not copied by convertModel) */
const WEIGHT_FILE = /(\.safetensors|\.bin|\.pt|\.pth|\.ckpt|\.safetensors\.index\.json|\.bin\.index\.json)$/;

/**
 * Re-save a model directory that mohawk reads (safetensors or PyTorch .bin, sharded or not) as
 * safetensors, tensor by tensor (no model is built: the headers are checked against config.json,
 * then every tensor streams from the source file to the output), keeping the source's tensor
 * names; `dtype` converts floating-point tensors, `shardSize` shards as Hugging Face does. The
 * other files (config.json, tokenizer files) are copied as they are.
 */
export function convertModel(
  dir: string,
  out: string,
  opts: ConvertOptions = {},
): { tensors: number; bytes: number; files: string[]; format: string } {
  if (path.resolve(dir) === path.resolve(out))
    throw new Error(`${out}: the output directory must differ from the model directory`);
  const { json, file } = readConfig(dir);
  const w = readWeights(dir);
  checkWeights(json, file, w.entries, w.source);
  fs.mkdirSync(out, { recursive: true });
  for (const f of fs.readdirSync(dir)) {
    const src = path.join(dir, f);
    if (WEIGHT_FILE.test(f) || !fs.statSync(src).isFile()) continue;
    writeFileAtomic(path.join(out, f), fs.readFileSync(src));
  }
  const files = saveTensors(out, w.entries, { dtype: opts.dtype, shardSize: opts.shardSize });
  let bytes = 0;
  for (const f of files) {
    bytes += fs.statSync(f).size;
    opts.onFile?.(f);
  }
  return { tensors: w.entries.size, bytes, files, format: w.format };
}
