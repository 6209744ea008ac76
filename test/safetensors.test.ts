// safetensors: round trips for every dtype, sharded checkpoints, strict validation, and a fuzz
// test: mutated files either load to the same values or fail with a one-line error naming the
// file; never a crash, a hang or a silent wrong answer.

import assert from 'node:assert/strict';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { describe, it } from 'node:test';
import {
  entryBytes,
  entryValues,
  loadTensors,
  parseSafetensors,
  readSafetensors,
  SAFE_DTYPE_BYTES,
  serializeSafetensors,
  SafetensorsError,
  writeSafetensors,
  type SafeDType,
  type WriteEntry,
} from '../src/io/safetensors.js';
import { loadModel } from '../src/models/load.js';
import { getBackend, tensor } from '../src/tensor/index.js';
import { Random } from '../src/util/random.js';
import { SHARED } from './helpers.js';

const tmp = () => fs.mkdtempSync(path.join(os.tmpdir(), 'mohawk-st-'));
const rng = new Random(3);

function randomBytes(n: number): Uint8Array {
  const b = new Uint8Array(n);
  for (let i = 0; i < n; i++) b[i] = rng.int(0, 256);
  return b;
}

describe('safetensors round trip', () => {
  it('every dtype survives serialize -> parse byte for byte', () => {
    const entries = new Map<string, WriteEntry>();
    for (const dt of Object.keys(SAFE_DTYPE_BYTES) as SafeDType[]) {
      entries.set(`t.${dt}`, { dtype: dt, shape: [3, 2], bytes: randomBytes(6 * SAFE_DTYPE_BYTES[dt]) });
    }
    entries.set('empty', { dtype: 'F32', shape: [0, 4], bytes: new Uint8Array(0) });
    entries.set('scalar', { dtype: 'F64', shape: [], bytes: randomBytes(8) });
    const buf = serializeSafetensors(entries, { note: 'x' });
    assert.equal(
      (8 + Number(new DataView(buf.buffer).getBigUint64(0, true))) % 8,
      0,
      'header padded to 8 bytes',
    );
    const f = parseSafetensors(buf, 'mem');
    assert.deepEqual(f.metadata, { note: 'x' });
    for (const [n, e] of entries) {
      const got = f.entries.get(n)!;
      assert.equal(got.dtype, e.dtype);
      assert.deepEqual(got.shape, e.shape);
      assert.deepEqual(Buffer.from(entryBytes(got)), Buffer.from(e.bytes), n);
    }
  });
  it('tensors of f32, f64, i32, bf16, f16 load back with their values', () => {
    const dir = tmp();
    const vals = [1.5, -2.25, 3.0, 0.125];
    const ts = new Map([
      ['a', tensor(vals, [2, 2], 'f32')],
      ['b', tensor(vals, [4], 'f64')],
      ['c', tensor([1, -7, 2147483647, 0], [4], 'i32')],
      ['d', tensor([0x3fc0, 0xc010, 0x4040, 0x3e00], [4], 'bf16')],
      ['e', tensor([0x3e00, 0xc080, 0x4200, 0x3000], [4], 'f16')],
    ]);
    writeSafetensors(path.join(dir, 'x.safetensors'), ts);
    const back = loadTensors(path.join(dir, 'x.safetensors'));
    assert.deepEqual(Array.from(back.get('a')!.toArray()), vals);
    assert.deepEqual(Array.from(back.get('b')!.toArray()), vals);
    assert.deepEqual(Array.from(back.get('c')!.toArray()), [1, -7, 2147483647, 0]);
    assert.deepEqual(Array.from(back.get('d')!.toArray()), vals);
    assert.deepEqual(Array.from(back.get('e')!.toArray()), vals);
    const i64 = parseSafetensors(
      serializeSafetensors(
        new Map([
          [
            'x',
            { dtype: 'I64' as const, shape: [2], bytes: new Uint8Array(new BigInt64Array([5n, -3n]).buffer) },
          ],
        ]),
      ),
      'm',
    );
    assert.deepEqual(Array.from(entryValues(i64.entries.get('x')!)), [5, -3]);
  });
  it('sharded checkpoints load through model.safetensors.index.json, and a wrong index is caught', () => {
    const dir = tmp();
    writeSafetensors(
      path.join(dir, 'model-00001-of-00002.safetensors'),
      new Map([['a', tensor([1, 2], [2])]]),
    );
    writeSafetensors(path.join(dir, 'model-00002-of-00002.safetensors'), new Map([['b', tensor([3], [1])]]));
    const index = {
      metadata: {},
      weight_map: { a: 'model-00001-of-00002.safetensors', b: 'model-00002-of-00002.safetensors' },
    };
    fs.writeFileSync(path.join(dir, 'model.safetensors.index.json'), JSON.stringify(index));
    const t = loadTensors(dir);
    assert.deepEqual(Array.from(t.get('b')!.toArray()), [3]);
    index.weight_map.b = 'model-00001-of-00002.safetensors';
    fs.writeFileSync(path.join(dir, 'model.safetensors.index.json'), JSON.stringify(index));
    assert.throws(() => loadTensors(dir), /index\.json: tensor b is not in shard model-00001-of-00002/);
  });
});

function build(header: object, data: Uint8Array): Uint8Array {
  const h = Buffer.from(JSON.stringify(header));
  const out = new Uint8Array(8 + h.length + data.length);
  new DataView(out.buffer).setBigUint64(0, BigInt(h.length), true);
  out.set(h, 8);
  out.set(data, 8 + h.length);
  return out;
}

describe('safetensors validation', () => {
  const cases: [string, Uint8Array, RegExp][] = [
    ['too short', new Uint8Array(5), /shorter than the 8-byte header length/],
    [
      'header past the end',
      (() => {
        const b = new Uint8Array(16);
        new DataView(b.buffer).setBigUint64(0, 100n, true);
        return b;
      })(),
      /header length 100 runs past the end/,
    ],
    [
      'not JSON',
      build({}, new Uint8Array(0)).map((v, i) => (i === 9 ? 0x41 : v)),
      /header is not valid UTF-8 JSON/,
    ],
    [
      'offsets past the data',
      build({ a: { dtype: 'F32', shape: [2], data_offsets: [0, 8] } }, new Uint8Array(4)),
      /tensor a: data_offsets \[0, 8\] run past the data region/,
    ],
    [
      'size mismatch',
      build({ a: { dtype: 'F32', shape: [3], data_offsets: [0, 8] } }, new Uint8Array(8)),
      /tensor a: shape \[3\] x F32 needs 12 bytes, data_offsets give 8/,
    ],
    [
      'overlap',
      build(
        {
          a: { dtype: 'F32', shape: [2], data_offsets: [0, 8] },
          b: { dtype: 'F32', shape: [2], data_offsets: [4, 12] },
        },
        new Uint8Array(12),
      ),
      /tensors a and b overlap/,
    ],
    [
      'unknown dtype',
      build({ a: { dtype: 'F12', shape: [1], data_offsets: [0, 2] } }, new Uint8Array(2)),
      /tensor a: unknown dtype "F12"/,
    ],
    [
      'bad shape',
      build({ a: { dtype: 'F32', shape: [-1], data_offsets: [0, 4] } }, new Uint8Array(4)),
      /tensor a: shape \[-1\] is not a list/,
    ],
    [
      'reversed offsets',
      build({ a: { dtype: 'U8', shape: [0], data_offsets: [4, 2] } }, new Uint8Array(4)),
      /data_offsets \[4, 2\] are reversed/,
    ],
  ];
  for (const [name, buf, re] of cases) {
    it(name, () => {
      assert.throws(
        () => parseSafetensors(buf, 'bad.safetensors'),
        (e: Error) =>
          e instanceof SafetensorsError && /^bad\.safetensors: /.test(e.message) && re.test(e.message),
      );
    });
  }
});

describe('mutated checkpoints', { skip: fs.existsSync(SHARED) ? false : `${SHARED} not found` }, () => {
  it('each mutation loads to identical values or fails with a one-line error naming the file', () => {
    const src = path.join(SHARED, 'fixtures/reference/llama-tied');
    const orig = fs.readFileSync(path.join(src, 'model.safetensors'));
    const reference = loadModel(src).model.stateDict();
    const refValues = new Map([...reference].map(([n, t]) => [n, Array.from(t.toArray())]));
    const dir = tmp();
    fs.copyFileSync(path.join(src, 'config.json'), path.join(dir, 'config.json'));
    const file = path.join(dir, 'model.safetensors');
    const headerLen = Number(orig.readBigUInt64LE(0));
    const r = new Random(11);
    let loaded = 0;
    let failed = 0;
    for (let k = 0; k < 120; k++) {
      const m = Buffer.from(orig);
      let bytes: Buffer = m;
      const kind = k % 4;
      if (kind === 0)
        bytes = m.subarray(0, r.int(0, m.length)); // truncation
      else if (kind === 1) {
        // flip bytes inside the header
        for (let j = 0; j < 3; j++) m[8 + r.int(0, headerLen)] ^= 1 << r.int(0, 8);
      } else if (kind === 2) {
        // edit a number in the header (shapes, offsets)
        const h = m.subarray(8, 8 + headerLen).toString('utf8');
        const nums = [...h.matchAll(/\d+/g)];
        const pick = nums[r.int(0, nums.length)];
        const repl = String(Number(pick[0]) + r.int(1, 40))
          .slice(0, pick[0].length)
          .padStart(pick[0].length, '0');
        const edited = h.slice(0, pick.index) + repl + h.slice(pick.index! + pick[0].length);
        m.write(edited, 8, 'utf8');
      } else {
        // flip a byte in the data region (values change: must still load, and load those values)
        m[8 + headerLen + r.int(0, m.length - 8 - headerLen)] ^= 0xff;
      }
      fs.writeFileSync(file, bytes);
      let model;
      try {
        model = loadModel(dir).model;
      } catch (e) {
        const msg = (e as Error).message;
        assert.ok(!msg.includes('\n'), `multi-line error: ${msg}`);
        assert.ok(msg.includes(dir), `error does not name the file: ${msg}`);
        failed++;
        continue;
      }
      loaded++;
      // what loaded must be exactly what the file says: compare with a direct parse
      const parsed = readSafetensors(file);
      for (const [n, t] of model.stateDict()) {
        const e = parsed.entries.get(n)!;
        assert.deepEqual(
          Array.from(t.toArray()),
          Array.from(entryValues(e)),
          `tensor ${n} after mutation ${k}`,
        );
        if (kind !== 3)
          assert.deepEqual(
            Array.from(t.toArray()),
            refValues.get(n),
            `tensor ${n} changed by a header mutation ${k}`,
          );
      }
    }
    assert.ok(failed > 30 && loaded > 10, `loaded ${loaded}, failed ${failed}`);
  });
  it('missing, extra and misshapen tensors and a config that does not match name the tensor or field', () => {
    const src = path.join(SHARED, 'fixtures/reference/llama-untied');
    const sd = loadModel(src).model.stateDict();
    const dir = tmp();
    const cfg = JSON.parse(fs.readFileSync(path.join(src, 'config.json'), 'utf8'));
    fs.writeFileSync(path.join(dir, 'config.json'), JSON.stringify(cfg));
    const write = (m: Map<string, ReturnType<typeof tensor>>) =>
      writeSafetensors(path.join(dir, 'model.safetensors'), m);
    const missing = new Map(sd);
    missing.delete('model.layers.1.mlp.up_proj.weight');
    write(missing);
    assert.throws(
      () => loadModel(dir),
      /model\.safetensors: missing tensor model\.layers\.1\.mlp\.up_proj\.weight/,
    );
    write(new Map([...sd, ['model.layers.9.extra', tensor([1], [1])]]));
    assert.throws(() => loadModel(dir), /unexpected tensor model\.layers\.9\.extra/);
    write(new Map([...sd, ['model.norm.weight', tensor([1, 2], [2])]]));
    assert.throws(() => loadModel(dir), /tensor model\.norm\.weight has shape \[2\], expected \[64\]/);
    write(sd);
    fs.writeFileSync(path.join(dir, 'config.json'), JSON.stringify({ ...cfg, intermediate_size: 100 }));
    assert.throws(
      () => loadModel(dir),
      /tensor model\.layers\.0\.mlp\.\w+_proj\.weight has shape \[\d+, \d+\], expected \[(100, 64|64, 100)\]/,
    );
    fs.writeFileSync(path.join(dir, 'config.json'), JSON.stringify({ ...cfg, num_key_value_heads: 3 }));
    assert.throws(
      () => loadModel(dir),
      /config\.json: num_key_value_heads \(3\) must divide num_attention_heads \(8\)/,
    );
    fs.writeFileSync(path.join(dir, 'config.json'), JSON.stringify({ ...cfg, model_type: 'falcon' }));
    assert.throws(() => loadModel(dir), /config\.json: model_type "falcon" is not supported/);
    fs.writeFileSync(
      path.join(dir, 'config.json'),
      JSON.stringify({ ...cfg, rope_parameters: { rope_type: 'mrope', rope_theta: 1e4 } }),
    );
    assert.throws(() => loadModel(dir), /config\.json: rope_parameters\.rope_type "mrope" is not supported/);
    fs.writeFileSync(path.join(dir, 'config.json'), JSON.stringify(cfg));
    fs.writeFileSync(
      path.join(dir, 'tokenizer.json'),
      JSON.stringify({ model: { type: 'Unigram', vocab: [] } }),
    );
    assert.throws(() => loadModel(dir), /tokenizer\.json: model\.type "Unigram" is not supported/);
  });
});

describe('safetensors validation as the reference library does it', () => {
  // a valid file: two F32 tensors, header padded to 8 bytes with spaces
  const good = serializeSafetensors(
    new Map<string, WriteEntry>([
      ['a', { dtype: 'F32', shape: [2], bytes: new Uint8Array(new Float32Array([1, 2]).buffer) }],
      ['b', { dtype: 'F32', shape: [1], bytes: new Uint8Array(new Float32Array([3]).buffer) }],
    ]),
  );
  const rejects = (buf: Uint8Array, re: RegExp) =>
    assert.throws(
      () => parseSafetensors(buf, 'bad.safetensors'),
      (e: Error) =>
        e instanceof SafetensorsError && /^bad\.safetensors: /.test(e.message) && re.test(e.message),
    );
  it('a header length shortened into its padding (1-7 bytes) is refused, not read off by those bytes', () => {
    const n = Number(new DataView(good.buffer).getBigUint64(0, true));
    const json = Buffer.from(good.subarray(8, 8 + n)).toString('utf8');
    const pad = json.length - json.trimEnd().length;
    assert.ok(pad >= 1, 'the fixture header has padding to cut into');
    for (let k = 1; k <= pad; k++) {
      const m = good.slice();
      new DataView(m.buffer).setBigUint64(0, BigInt(n - k), true);
      rejects(m, /the tensors cover 12 bytes of the data region, but it holds \d+/);
    }
    assert.deepEqual(Array.from(entryValues(parseSafetensors(good, 'ok').entries.get('b')!)), [3]);
  });
  it('a gap between tensors, bytes after the last one, and a header not starting with { are refused', () => {
    rejects(
      build(
        {
          a: { dtype: 'F32', shape: [1], data_offsets: [0, 4] },
          b: { dtype: 'F32', shape: [1], data_offsets: [8, 12] },
        },
        new Uint8Array(12),
      ),
      /tensor b: data_offsets start at 8, but the previous tensor ends at 4/,
    );
    rejects(
      build({ a: { dtype: 'F32', shape: [1], data_offsets: [0, 4] } }, new Uint8Array(8)),
      /the tensors cover 4 bytes of the data region, but it holds 8/,
    );
    rejects(
      build({ a: { dtype: 'F32', shape: [1], data_offsets: [4, 8] } }, new Uint8Array(8)),
      /tensor a: data_offsets start at 4, but the previous tensor ends at 0/,
    );
    const spaced = new Uint8Array([...good.subarray(0, 8), 0x20, ...good.subarray(9)]);
    rejects(spaced, /header does not start with '\{'/);
  });
});

describe(
  'loading checks the header before allocating',
  { skip: fs.existsSync(SHARED) ? false : `${SHARED} not found` },
  () => {
    const src = path.join(SHARED, 'fixtures/reference/llama-tied');
    const copyFixture = () => {
      const dir = tmp();
      for (const f of ['config.json', 'model.safetensors'])
        fs.copyFileSync(path.join(src, f), path.join(dir, f));
      return dir;
    };
    it('an F32 weight relabelled I32 is refused, naming the file and the tensor', () => {
      const dir = copyFixture();
      const file = path.join(dir, 'model.safetensors');
      const buf = fs.readFileSync(file);
      const n = Number(buf.readBigUInt64LE(0));
      const h = buf.subarray(8, 8 + n).toString('utf8');
      const i = h.indexOf('"F32"');
      buf.write('"I32"', 8 + i, 'utf8');
      fs.writeFileSync(file, buf);
      assert.throws(
        () => loadModel(dir),
        /model\.safetensors: tensor \S+ has dtype I32, expected a floating-point dtype/,
      );
    });
    it('a config far larger than its file fails at the header check, with nothing allocated', () => {
      const dir = copyFixture();
      const cfg = JSON.parse(fs.readFileSync(path.join(src, 'config.json'), 'utf8'));
      const backend = getBackend();
      // absurd sizes stop at the config's range check (families) or at the header check (io)
      const tooBig = (f: string) =>
        new RegExp(
          `config\\.json: (describes a model larger than|${f} \\(\\d+\\) is larger than mohawk accepts)`,
        );
      for (const [field, value, re] of [
        [
          'num_hidden_layers',
          1000,
          /config\.json: describes a model larger than \S+model\.safetensors holds/,
        ],
        ['num_hidden_layers', 100_000, tooBig('num_hidden_layers')],
        ['num_hidden_layers', 2 ** 53, tooBig('num_hidden_layers')],
        ['num_hidden_layers', 3, /model\.safetensors: missing tensor model\.layers\.2\./],
        ['hidden_size', 1e9, tooBig('hidden_size')],
        ['vocab_size', 3e7, tooBig('vocab_size')],
        [
          'vocab_size',
          1000,
          /model\.safetensors: tensor model\.embed_tokens\.weight has shape \[512, 64\], expected \[1000, 64\]/,
        ],
      ] as const) {
        fs.writeFileSync(path.join(dir, 'config.json'), JSON.stringify({ ...cfg, [field]: value }));
        backend.resetPeak();
        const before = backend.memoryStats().liveBytes;
        const t0 = Date.now();
        assert.throws(() => loadModel(dir), re);
        assert.ok(Date.now() - t0 < 5000, `${field}: took ${Date.now() - t0} ms`);
        assert.ok(backend.memoryStats().peakBytes - before < 1 << 20, `${field}: allocated before failing`);
      }
    });
    it('a load that fails frees what it built: 2000 failed loads leak nothing', () => {
      const dir = copyFixture();
      const backend = getBackend();
      const before = backend.memoryStats();
      // fails after the weights are in (the tokenizer is read last): the model must be freed
      fs.writeFileSync(
        path.join(dir, 'tokenizer.json'),
        JSON.stringify({ model: { type: 'Unigram', vocab: [] } }),
      );
      for (let k = 0; k < 100; k++)
        assert.throws(() => loadModel(dir), /tokenizer\.json: model\.type "Unigram"/);
      // fails at the header check
      const cfg = JSON.parse(fs.readFileSync(path.join(src, 'config.json'), 'utf8'));
      fs.writeFileSync(path.join(dir, 'config.json'), JSON.stringify({ ...cfg, intermediate_size: 100 }));
      for (let k = 0; k < 2000; k++) assert.throws(() => loadModel(dir), /has shape/);
      const after = backend.memoryStats();
      assert.equal(after.liveBuffers, before.liveBuffers);
      assert.equal(after.liveBytes, before.liveBytes);
    });
  },
);
