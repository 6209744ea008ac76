// Checkpoints of any size: a sparse file with a hole past 4 GiB read through every code path,
// streamed sharded saves that round-trip exactly (f32, bf16, f16; sharded or not), and a frozen
// teacher held in bf16 straight from the file.

import assert from 'node:assert/strict';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { describe, it } from 'node:test';
import { bf16ToF32, f16ToF32, f32ToBf16, f32ToF16 } from '../src/backends/dtype.js';
import {
  entryValues,
  readCheckpoint,
  readSafetensors,
  writeSafetensors,
  type SafeEntry,
} from '../src/io/safetensors.js';
import { inspectWeights } from '../src/io/weights.js';
import { loadModel, saveModel } from '../src/models/load.js';
import {
  autocast,
  castParameters,
  getBackend,
  noGrad,
  tensor,
  withCastParameters,
} from '../src/tensor/index.js';
import { SHARED } from './helpers.js';

const tmp = () => fs.mkdtempSync(path.join(os.tmpdir(), 'mohawk-ckpt-'));
const FIXTURE = path.join(SHARED, 'fixtures/reference/llama-tied');
const skip = fs.existsSync(FIXTURE) ? false : `${FIXTURE} not found`;
/** more than 4 GiB: offsets past 2^32 must survive every step */
const HOLE = 4 * 2 ** 30 + 4096 + 3;

/**
 * A safetensors file whose first tensor (a buffer the loader ignores) is a hole of HOLE bytes made
 * with ftruncate, so the real tensors sit past 4 GiB without the disk holding 4 GiB.
 */
function writeWithHole(file: string, holeName: string, entries: Map<string, SafeEntry>): void {
  const header: Record<string, unknown> = {
    [holeName]: { dtype: 'U8', shape: [HOLE], data_offsets: [0, HOLE] },
  };
  let off = HOLE;
  for (const [n, e] of entries) {
    header[n] = { dtype: e.dtype, shape: e.shape, data_offsets: [off, off + e.byteLength] };
    off += e.byteLength;
  }
  const json = Buffer.from(JSON.stringify(header));
  const fd = fs.openSync(file, 'w');
  const len = Buffer.alloc(8);
  len.writeBigUInt64LE(BigInt(json.length));
  fs.writeSync(fd, len, 0, 8, 0);
  fs.writeSync(fd, json, 0, json.length, 8);
  fs.ftruncateSync(fd, 8 + json.length + off);
  let pos = 8 + json.length + HOLE;
  for (const e of entries.values()) {
    const b = fs.readFileSync(e.file).subarray(e.offset, e.offset + e.byteLength);
    fs.writeSync(fd, b, 0, b.length, pos);
    pos += b.length;
  }
  fs.closeSync(fd);
}

const values = (m: Map<string, { toArray(): ArrayLike<number> }>) =>
  new Map([...m].map(([n, t]) => [n, Array.from(t.toArray())]));

describe('a checkpoint with tensors past 4 GiB (a sparse file)', { skip }, () => {
  it('loads through the header, single-file and sharded paths with the same values', () => {
    const ref = loadModel(FIXTURE).model;
    const want = values(ref.stateDict());
    ref.dispose();
    const src = readCheckpoint(FIXTURE).entries;
    const dir = tmp();
    fs.copyFileSync(path.join(FIXTURE, 'config.json'), path.join(dir, 'config.json'));
    const hole = 'model.layers.0.self_attn.rotary_emb.inv_freq';
    writeWithHole(path.join(dir, 'model.safetensors'), hole, src);
    const sf = readSafetensors(path.join(dir, 'model.safetensors'));
    assert.equal(sf.entries.get(hole)!.byteLength, HOLE);
    const embed = sf.entries.get('model.embed_tokens.weight')!;
    assert.ok(embed.offset > 2 ** 32, `offset ${embed.offset}`);
    assert.deepEqual(Array.from(entryValues(embed)), want.get('model.embed_tokens.weight'));
    // inspect: offsets past 4 GiB listed, values read at them
    const seen = inspectWeights(path.join(dir, 'model.safetensors'), ['model.norm.weight']);
    assert.equal(seen.tensors.find((t) => t.name === hole)!.bytes, HOLE);
    assert.ok(seen.tensors.find((t) => t.name === 'model.norm.weight')!.offset > 2 ** 32);
    assert.deepEqual(seen.values['model.norm.weight'], want.get('model.norm.weight')!.slice(0, 64));
    // single file: the hole is ignorable, everything after it loads exactly
    let m = loadModel(dir).model;
    assert.deepEqual(values(m.stateDict()), want);
    m.dispose();
    // sharded: the hole and half the tensors in shard 1, the rest in shard 2
    const names = [...src.keys()];
    const [first, second] = [names.slice(0, 5), names.slice(5)];
    const sdir = tmp();
    fs.copyFileSync(path.join(FIXTURE, 'config.json'), path.join(sdir, 'config.json'));
    writeWithHole(
      path.join(sdir, 'model-00001-of-00002.safetensors'),
      hole,
      new Map(first.map((n) => [n, src.get(n)!])),
    );
    writeSafetensors(
      path.join(sdir, 'model-00002-of-00002.safetensors'),
      new Map(second.map((n) => [n, src.get(n)!])),
    );
    const weightMap: Record<string, string> = { [hole]: 'model-00001-of-00002.safetensors' };
    for (const n of first) weightMap[n] = 'model-00001-of-00002.safetensors';
    for (const n of second) weightMap[n] = 'model-00002-of-00002.safetensors';
    fs.writeFileSync(
      path.join(sdir, 'model.safetensors.index.json'),
      JSON.stringify({ metadata: {}, weight_map: weightMap }),
    );
    m = loadModel(sdir).model;
    assert.deepEqual(values(m.stateDict()), want);
    m.dispose();
  });
});

describe('streamed sharded saves', { skip }, () => {
  it('f32, bf16 and f16, sharded or not, load back identical (16-bit: the rounded values)', () => {
    const { model } = loadModel(FIXTURE);
    const want = values(model.stateDict());
    const round = {
      f32: (x: number) => x,
      bf16: (x: number) => bf16ToF32(f32ToBf16(x)),
      f16: (x: number) => f16ToF32(f32ToF16(x)),
    };
    for (const dtype of ['f32', 'bf16', 'f16'] as const) {
      const loaded: Map<string, number[]>[] = [];
      for (const shardSize of [undefined, 40_000]) {
        const dir = tmp();
        saveModel(dir, model, null, {}, { dtype, shardSize });
        const files = fs
          .readdirSync(dir)
          .filter((f) => f.endsWith('.safetensors'))
          .sort();
        if (shardSize) {
          assert.ok(files.length > 2, `${dtype}: ${files.join(', ')}`);
          assert.equal(files[0], `model-00001-of-${String(files.length).padStart(5, '0')}.safetensors`);
          const index = JSON.parse(fs.readFileSync(path.join(dir, 'model.safetensors.index.json'), 'utf8'));
          assert.equal(Object.keys(index.weight_map).length, want.size);
          for (const f of files)
            assert.ok(
              fs.statSync(path.join(dir, f)).size <= shardSize + 4096 ||
                readSafetensors(path.join(dir, f)).entries.size === 1,
            );
        } else assert.deepEqual(files, ['model.safetensors']);
        const sf = readCheckpoint(dir);
        for (const e of sf.entries.values()) assert.equal(e.dtype, dtype.toUpperCase());
        const back = loadModel(dir).model;
        loaded.push(values(back.stateDict()));
        back.dispose();
      }
      assert.deepEqual(loaded[0], loaded[1], `${dtype}: sharded and unsharded differ`);
      for (const [n, v] of want) assert.deepEqual(loaded[0].get(n), v.map(round[dtype]), `${dtype} ${n}`);
    }
    // a sharded save over an unsharded one (and back) leaves no stale weight files
    const dir = tmp();
    saveModel(dir, model, null, {}, { shardSize: 40_000 });
    saveModel(dir, model, null);
    assert.deepEqual(
      fs.readdirSync(dir).filter((f) => f.includes('safetensors')),
      ['model.safetensors'],
    );
    saveModel(dir, model, null, {}, { shardSize: 40_000 });
    assert.ok(!fs.existsSync(path.join(dir, 'model.safetensors')));
    model.dispose();
  });
});

describe('a frozen teacher held in bf16', { skip }, () => {
  it('loads its linear weights as bf16 and gives the logits of f32 weights rounded once', () => {
    const ids = tensor([1, 5, 9, 33, 2, 7], [1, 6], 'i32');
    const f32 = loadModel(FIXTURE).model;
    const backend = getBackend();
    const before = backend.memoryStats().liveBytes;
    const bf16 = loadModel(FIXTURE, { linearDtype: 'bf16' }).model;
    const bytes = backend.memoryStats().liveBytes - before;
    const linear = bf16.namedParameters().filter(([n]) => /_proj\.weight$/.test(n));
    assert.ok(linear.length > 0 && linear.every(([, t]) => t.dtype === 'bf16'));
    const f32Bytes = f32.numParameters() * 4;
    const linearElems = linear.reduce((a, [, t]) => a + t.size, 0);
    assert.equal(bytes, f32Bytes - 2 * linearElems);
    const casts = castParameters(f32.parameters(), 'bf16');
    const a = noGrad(() =>
      autocast('bf16', () => withCastParameters(casts, () => f32.forward(ids).logits.toArray())),
    );
    const b = noGrad(() => autocast('bf16', () => bf16.forward(ids).logits.toArray()));
    assert.deepEqual(Array.from(b), Array.from(a));
    casts.dispose();
    f32.dispose();
    bf16.dispose();
  });
});
