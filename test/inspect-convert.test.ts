// mohawk inspect and mohawk convert model, run in-process: the JSON contract, values read from
// the headers' offsets, and conversions (.bin in, safetensors out; dtype; shards) that load back
// to the same tensors under the source's names.

import assert from 'node:assert/strict';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { describe, it } from 'node:test';
import { bf16ToF32, f32ToBf16 } from '../src/backends/dtype.js';
import { run as convert } from '../src/cli/commands/convert.js';
import { run as inspect } from '../src/cli/commands/inspect.js';
import { entryValues, readCheckpoint } from '../src/io/safetensors.js';
import { readWeights } from '../src/io/weights.js';
import { loadModel } from '../src/models/load.js';

const TORCH = path.join(import.meta.dirname, 'fixtures/torch');
const tmp = () => fs.mkdtempSync(path.join(os.tmpdir(), 'mohawk-cmd-'));

async function capture(fn: () => Promise<unknown>): Promise<string> {
  const lines: string[] = [];
  const [log, err] = [console.log, console.error];
  console.log = (...a: unknown[]) => lines.push(a.join(' '));
  console.error = () => {};
  try {
    await fn();
  } finally {
    console.log = log;
    console.error = err;
  }
  return lines.join('\n');
}

describe('mohawk inspect', () => {
  it('--json lists every tensor from the headers and the first 64 values of the named ones', async () => {
    const file = path.join(TORCH, 'phi-mamba/pytorch_model.bin');
    const out = JSON.parse(
      await capture(() =>
        inspect([
          file,
          '--json',
          '--tensor',
          'backbone.embedding.weight',
          '--tensor',
          'backbone.layers.1.mixer.D',
        ]),
      ),
    );
    assert.deepEqual(Object.keys(out), ['tensors', 'values']);
    const entries = readWeights(file).entries;
    assert.equal(out.tensors.length, entries.size);
    for (const t of out.tensors) {
      assert.deepEqual(Object.keys(t), ['name', 'dtype', 'shape', 'offset', 'bytes']);
      const e = entries.get(t.name)!;
      assert.deepEqual([t.dtype, t.shape, t.offset, t.bytes], [e.dtype, e.shape, e.offset, e.byteLength]);
    }
    const embed = Array.from(entryValues(entries.get('backbone.embedding.weight')!));
    assert.deepEqual(out.values['backbone.embedding.weight'], embed.slice(0, 64));
    assert.deepEqual(
      out.values['backbone.layers.1.mixer.D'],
      Array.from(entryValues(entries.get('backbone.layers.1.mixer.D')!)),
    );
    // strided PyTorch tensors print row-major
    const st = JSON.parse(
      await capture(() => inspect([path.join(TORCH, 'state.bin'), '--json', '--tensor', 'transposed'])),
    );
    const ref = JSON.parse(fs.readFileSync(path.join(TORCH, 'state.json'), 'utf8'));
    assert.deepEqual(st.values.transposed, ref.transposed.values);
    await assert.rejects(
      () => capture(() => inspect([file, '--tensor', 'nope'])),
      /pytorch_model\.bin: no tensor named nope/,
    );
  });
  it('prints a table with one row per tensor', async () => {
    const text = await capture(() => inspect([path.join(TORCH, 'state.bin')]));
    assert.match(text, /^name\s+dtype\s+shape\s+offset\s+bytes$/m);
    assert.match(text, /^transposed\s+F32\s+\[6, 4\]\s+\d+\s+96$/m);
    assert.match(text, /11 tensors, \d+ values, \d+ bytes in 1 file\(s\)/);
  });
});

describe('mohawk convert model', () => {
  it('.bin in, safetensors out: the same tensors under the same names; --dtype bf16 and --shard-size', async () => {
    const src = path.join(TORCH, 'phi-mamba');
    const want = readWeights(src).entries;
    const a = path.join(tmp(), 'f32');
    await capture(() => convert(['model', '--model', src, '--out', a]));
    assert.deepEqual(fs.readdirSync(a).sort(), ['config.json', 'model.safetensors']);
    const got = readCheckpoint(a).entries;
    assert.deepEqual([...got.keys()].sort(), [...want.keys()].sort());
    for (const [n, e] of want)
      assert.deepEqual(Array.from(entryValues(got.get(n)!)), Array.from(entryValues(e)), n);
    const b = path.join(tmp(), 'bf16');
    await capture(() =>
      convert(['model', '--model', a, '--out', b, '--dtype', 'bf16', '--shard-size', '200KB']),
    );
    assert.ok(fs.existsSync(path.join(b, 'model.safetensors.index.json')));
    const shards = fs.readdirSync(b).filter((f) => f.endsWith('.safetensors'));
    assert.ok(
      shards.length >= 2 &&
        shards.every(
          (f) =>
            fs.statSync(path.join(b, f)).size <= 200_000 + 4096 ||
            readCheckpoint(path.join(b, f)).entries.size === 1,
        ),
    );
    const m = loadModel(b).model;
    for (const [n, t] of m.stateDict())
      assert.deepEqual(
        Array.from(t.toArray()),
        Array.from(entryValues(want.get(n)!)).map((v) => bf16ToF32(f32ToBf16(v))),
        n,
      );
    m.dispose();
    await assert.rejects(
      () => capture(() => convert(['model', '--model', src, '--out', a, '--dtype', 'f8'])),
      /--dtype expects bf16, f32 or f16, got "f8"/,
    );
    await assert.rejects(
      () => capture(() => convert(['model', '--model', src, '--out', a, '--shard-size', 'lots'])),
      /--shard-size: size "lots"/,
    );
    await assert.rejects(
      () => capture(() => convert(['model', '--model', src, '--out', src])),
      /must differ from the model directory/,
    );
  });
});
