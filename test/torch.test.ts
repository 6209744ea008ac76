// PyTorch checkpoints read safely: fixtures written by torch.save (scripts/fixtures/torch_fixtures.py)
// in the zip and the legacy format, with transposed, sliced and shared-storage tensors, bf16/f16/
// f64/i64; a malicious pickle that would run os.system is refused and nothing runs.

import assert from 'node:assert/strict';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { describe, it } from 'node:test';
import { entryValues } from '../src/io/safetensors.js';
import { readTorch, TorchFormatError, unpickle } from '../src/io/torch.js';
import { readWeights } from '../src/io/weights.js';
import { bf16ToF32, f32ToBf16 } from '../src/backends/dtype.js';
import { loadModel } from '../src/models/load.js';
import { SHARED } from './helpers.js';

const DIR = path.join(import.meta.dirname, 'fixtures/torch');
const expected = JSON.parse(fs.readFileSync(path.join(DIR, 'state.json'), 'utf8')) as Record<
  string,
  { shape: number[]; dtype: string; values: number[] }
>;
const DTYPES: Record<string, string> = {
  float32: 'F32',
  bfloat16: 'BF16',
  float16: 'F16',
  float64: 'F64',
  int64: 'I64',
};

describe('PyTorch checkpoints', () => {
  for (const file of ['state.bin', 'state-legacy.bin']) {
    it(`${file}: every tensor (views, transposes, shared storages, bf16) reads as PyTorch saved it`, () => {
      const entries = readTorch(path.join(DIR, file));
      assert.deepEqual([...entries.keys()].sort(), Object.keys(expected).sort());
      for (const [name, want] of Object.entries(expected)) {
        const e = entries.get(name)!;
        assert.deepEqual(e.shape, want.shape, name);
        assert.equal(e.dtype, DTYPES[want.dtype], name);
        // f32 holds every value of these dtypes exactly (f64 values are compared after rounding)
        const got = Array.from(entryValues(e));
        const ref = want.dtype === 'float64' ? want.values.map((v) => Math.fround(v)) : want.values;
        assert.deepEqual(e.dtype === 'F64' ? got.map((v) => Math.fround(v)) : got, ref, `${file}: ${name}`);
      }
      // the transposed view really is strided over the shared storage, not a copy
      assert.deepEqual(entries.get('transposed')!.strides, [1, 6]);
      assert.equal(entries.get('sliced')!.offset - entries.get('shared_a')!.offset, 8 * 4);
    });
  }
  it('a pickle that would call os.system is refused, naming the file and the global, and nothing runs', () => {
    const marker = '/tmp/mohawk-pwned';
    fs.rmSync(marker, { force: true });
    const file = path.join(DIR, 'malicious.bin');
    assert.throws(
      () => readTorch(file),
      (e: Error) =>
        e instanceof TorchFormatError &&
        e.message.startsWith(`${file}: refusing to load: the pickle asks for the global `) &&
        /(posix|os)\.system/.test(e.message),
    );
    assert.ok(!fs.existsSync(marker));
  });
  it('opcodes that build or call objects and unknown persistent ids are refused', () => {
    const none = () => null;
    // GLOBAL builtins.eval
    const g = new Uint8Array([0x80, 2, ...Buffer.from('cbuiltins\neval\n'), 0x2e]);
    assert.throws(
      () => unpickle(g, 'x.pkl', none),
      /x\.pkl: refusing to load: the pickle asks for the global builtins\.eval/,
    );
    // INST (0x69) and OBJ (0x6f) and NEWOBJ (0x81) are not part of a state dict
    for (const op of [0x69, 0x6f, 0x81, 0x82])
      assert.throws(
        () => unpickle(new Uint8Array([0x80, 2, op, 0x2e]), 'x.pkl', none),
        /refusing to load: pickle opcode/,
      );
    // REDUCE on something that is not an allowed global
    const r = new Uint8Array([0x80, 2, 0x29, 0x29, 0x52, 0x2e]);
    assert.throws(() => unpickle(r, 'x.pkl', none), /calls something that is not a global/);
  });
  it('a directory with pytorch_model.bin is read through readWeights; damaged files name themselves', () => {
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'mohawk-torch-'));
    fs.copyFileSync(path.join(DIR, 'state.bin'), path.join(dir, 'pytorch_model.bin'));
    const w = readWeights(dir);
    assert.equal(w.format, 'pytorch');
    assert.deepEqual(Array.from(entryValues(w.entries.get('i64')!)), [1, -2, 3]);
    const bytes = fs.readFileSync(path.join(DIR, 'state.bin'));
    for (const cut of [10, 200, bytes.length - 30]) {
      fs.writeFileSync(path.join(dir, 'pytorch_model.bin'), bytes.subarray(0, cut));
      assert.throws(
        () => readWeights(dir),
        (e: Error) => e.message.includes(path.join(dir, 'pytorch_model.bin')),
      );
    }
  });
  it(
    'a model directory with only pytorch_model.bin (bf16, strided) loads to the values of its safetensors twin',
    {
      skip: fs.existsSync(SHARED) ? false : `${SHARED} not found`,
    },
    () => {
      const ref = loadModel(path.join(SHARED, 'fixtures/reference/llama-tied')).model;
      const bin = loadModel(path.join(DIR, 'llama-tied')).model;
      const entries = readWeights(path.join(DIR, 'llama-tied')).entries;
      assert.deepEqual(entries.get('model.layers.0.mlp.up_proj.weight')!.strides, [1, 172]);
      const got = bin.stateDict();
      for (const [n, t] of ref.stateDict())
        assert.deepEqual(
          Array.from(got.get(n)!.toArray()),
          Array.from(t.toArray()).map((v) => bf16ToF32(f32ToBf16(v))),
          n,
        );
      ref.dispose();
      bin.dispose();
    },
  );
});
