// Model directories in and out: config.json decides the format (Hugging Face families through
// registry.ts, the student formats beside them), weights come from safetensors, and the
// tokenizer from tokenizer.json.

import fs from 'node:fs';
import path from 'node:path';
import { loadTensors, writeSafetensors } from '../io/safetensors.js';
import { loadTokenizer, type Tokenizer } from '../io/tokenizer.js';
import { noGrad, type Tensor } from '../tensor/index.js';
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

/** Load a model directory: config.json, model.safetensors (or shards), tokenizer.json if present. */
export function loadModel(dir: string, opts: { tokenizer?: boolean } = {}): LoadedModel {
  const { json, file } = readConfig(dir);
  // no random draws: every parameter is overwritten by the checkpoint (or loading fails)
  const model = buildModel(json, file, { deferInit: true });
  const tensors = noGrad(() => loadTensors(dir));
  const weightsName = fs.existsSync(path.join(dir, 'model.safetensors'))
    ? path.join(dir, 'model.safetensors')
    : path.join(dir, 'model.safetensors.index.json');
  loadWeights(model, tensors, weightsName, json);
  const wantTok = opts.tokenizer ?? true;
  const tokenizer = wantTok && fs.existsSync(path.join(dir, 'tokenizer.json')) ? loadTokenizer(dir) : null;
  return { model, tokenizer, config: json, dir };
}

/** Write config.json, model.safetensors and (when given) the tokenizer into dir. */
export function saveModel(
  dir: string,
  model: CausalLM,
  tokenizer?: Tokenizer | null,
  extraFiles: Record<string, string> = {},
): void {
  fs.mkdirSync(dir, { recursive: true });
  fs.writeFileSync(path.join(dir, 'config.json'), JSON.stringify(model.configJson(), null, 2) + '\n');
  writeSafetensors(path.join(dir, 'model.safetensors'), (model as Module).stateDict());
  tokenizer?.save(dir);
  for (const [name, text] of Object.entries(extraFiles)) fs.writeFileSync(path.join(dir, name), text);
}
