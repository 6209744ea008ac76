// The weights of a model directory or file, whatever their format: safetensors (single or sharded
// through model.safetensors.index.json) or PyTorch (pytorch_model.bin, sharded through
// pytorch_model.bin.index.json, or any .bin/.pt/.pth file), located without reading their data.
// Safetensors wins when a directory has both, as in Hugging Face's loaders.

import fs from 'node:fs';
import path from 'node:path';
import {
  entryHead,
  readCheckpoint,
  readIndexed,
  SafetensorsError,
  type CheckpointTensors,
} from './safetensors.js';
import { readTorch } from './torch.js';

/** true for a file name PyTorch checkpoints use */
export function isTorchFile(file: string): boolean {
  return /\.(bin|pt|pth|ckpt)$/i.test(file);
}

export function readWeights(fileOrDir: string): CheckpointTensors & { format: 'safetensors' | 'pytorch' } {
  let stat: fs.Stats;
  try {
    stat = fs.statSync(fileOrDir);
  } catch {
    throw new SafetensorsError(`${fileOrDir}: no such file or directory`);
  }
  if (!stat.isDirectory()) {
    if (isTorchFile(fileOrDir))
      return {
        entries: readTorch(fileOrDir),
        files: [fileOrDir],
        source: fileOrDir,
        metadata: {},
        format: 'pytorch',
      };
    return { ...readCheckpoint(fileOrDir), format: 'safetensors' };
  }
  const has = (f: string) => fs.existsSync(path.join(fileOrDir, f));
  if (has('model.safetensors') || has('model.safetensors.index.json'))
    return { ...readCheckpoint(fileOrDir), format: 'safetensors' };
  if (has('pytorch_model.bin')) return readWeights(path.join(fileOrDir, 'pytorch_model.bin'));
  if (has('pytorch_model.bin.index.json'))
    return {
      ...readIndexed(fileOrDir, path.join(fileOrDir, 'pytorch_model.bin.index.json'), (f) => ({
        entries: readTorch(f),
      })),
      format: 'pytorch',
    };
  throw new SafetensorsError(
    `${fileOrDir}: no weights found (model.safetensors, model.safetensors.index.json, pytorch_model.bin or pytorch_model.bin.index.json)`,
  );
}

export interface InspectedTensor {
  name: string;
  dtype: string;
  shape: number[];
  /** byte offset of the tensor's first element in its file */
  offset: number;
  bytes: number;
}

export interface Inspection {
  tensors: InspectedTensor[];
  values: Record<string, number[]>;
}

/**
 * Every tensor of a weights file or model directory (name, dtype, shape, byte offset, bytes),
 * from the headers alone, and the first `maxValues` values of the named tensors.
 */
export function inspectWeights(
  fileOrDir: string,
  names: string[] = [],
  maxValues = 64,
): Inspection & { files: string[] } {
  const w = readWeights(fileOrDir);
  const tensors = [...w.entries.values()].map((e) => ({
    name: e.name,
    dtype: e.dtype,
    shape: [...e.shape],
    offset: e.offset,
    bytes: e.byteLength,
  }));
  const values: Record<string, number[]> = {};
  for (const n of names) {
    const e = w.entries.get(n);
    if (!e) throw new SafetensorsError(`${w.source}: no tensor named ${n}`);
    values[n] = entryHead(e, maxValues);
  }
  return { tensors, values, files: w.files };
}
