// The one table of model families: config.json's model_type -> the family that reads it.
// Adding a family = its file in src/models/ + one line here + its fixtures.

import type { Family } from './family.js';
import { gemmaFamily } from './gemma.js';
import { gemma2Family } from './gemma2.js';
import { gpt2Family } from './gpt2.js';
import type { Json } from './hf.js';
import { llamaFamily } from './llama.js';
import { mistralFamily } from './mistral.js';
import { phiFamily } from './phi.js';
import { phi3Family } from './phi3.js';
import { qwen2Family } from './qwen2.js';
import { qwen3Family } from './qwen3.js';
import type { InitOptions } from '../nn/layers.js';
import type { CausalLM } from './types.js';

export const FAMILIES: readonly Family[] = [
  llamaFamily,
  mistralFamily,
  qwen2Family,
  qwen3Family,
  phiFamily,
  phi3Family,
  gemmaFamily,
  gemma2Family,
  gpt2Family,
];

const byModelType = new Map<string, Family>();
for (const f of FAMILIES) for (const t of f.modelTypes) byModelType.set(t, f);

/** the model_type values mohawk reads */
export function supportedModelTypes(): string[] {
  return [...byModelType.keys()];
}

/** The family of a config.json's model_type, or an error naming the file and the field. */
export function familyFor(config: Json, file = 'config.json'): Family {
  const type = config.model_type;
  const family = typeof type === 'string' ? byModelType.get(type) : undefined;
  if (!family)
    throw new Error(
      `${file}: model_type ${JSON.stringify(type)} is not supported (supported: ${supportedModelTypes().join(', ')})`,
    );
  const arch = config.architectures;
  if (arch !== undefined && arch !== null) {
    if (!Array.isArray(arch) || arch.length !== 1 || !family.architectures.includes(arch[0] as string))
      throw new Error(
        `${file}: architectures ${JSON.stringify(arch)} is not supported for model_type "${String(type)}" (expected ${family.architectures.map((a) => `["${a}"]`).join(' or ')})`,
      );
  }
  return family;
}

/** The model a Hugging Face config.json describes (random weights, or zeros with deferInit). */
export function buildFamilyModel(config: Json, file = 'config.json', init?: InitOptions): CausalLM {
  return familyFor(config, file).build(config, file, init);
}
