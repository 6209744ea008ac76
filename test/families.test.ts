// Teacher families (issue 14) against transformers 5.17: tiny random-weight checkpoints of every
// family and rope type (test/fixtures/families, written by scripts/fixtures/make-families.py on
// the GPU machine, eager attention, float32, 40-token sequences: longer than the sliding windows
// of 8). Token log-probabilities within 2e-4; decoding with the (windowed) KV cache equals
// scoring; greedy generation picks the argmax of scoring at every step. Beside them, properties
// that need no reference: rope formulas against a float64 reimplementation here, sliding
// windows against shorter inputs, and config values out of range refused naming the field.

import assert from 'node:assert/strict';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { describe, it } from 'node:test';
import { fileURLToPath } from 'node:url';
import { TokenDataset, writeTokenSplits } from '../src/data/shards.js';
import { studentParameterShapes, studentShapeFromTeacherJson } from '../src/distill/check.js';
import { validateConfig } from '../src/distill/config.js';
import { runDistill } from '../src/distill/pipeline.js';
import { transferStudent } from '../src/distill/transfer.js';
import { tokenLogprobs } from '../src/eval/score.js';
import { loadTokenizer } from '../src/io/tokenizer.js';
import { generateIds } from '../src/generate/generate.js';
import { buildModel, loadModel, readConfig, saveModel } from '../src/models/load.js';
import type { CausalLM } from '../src/models/types.js';
import { applyRopeTables, ropeFrequencies, ropeTables, type RopeConfig } from '../src/nn/rope.js';
import { noGrad, rope, scope, tensor } from '../src/tensor/index.js';
import { Random } from '../src/util/random.js';
import { assertClose } from './helpers.js';

const HERE = path.dirname(fileURLToPath(import.meta.url));
const FIX = path.join(HERE, 'fixtures/families');
const NAMES = fs.existsSync(FIX) ? fs.readdirSync(FIX).sort() : [];
const skip = NAMES.length ? false : `${FIX} not found`;

interface Expected {
  ids: number[][];
  logprobs: number[][];
  last_logits: number[][];
}

const expected = (name: string) =>
  JSON.parse(fs.readFileSync(path.join(FIX, name, 'expected.json'), 'utf8')) as Expected;

function logitsOf(model: CausalLM, ids: number[]): Float32Array | Float64Array {
  return noGrad(() => scope(() => model.forward(tensor(ids, [1, ids.length], 'i32')).logits.toArray())) as
    Float32Array | Float64Array;
}

/** logits of every position through the KV cache: a prefill of 5 tokens, then 3, then one by one */
function cachedLogits(model: CausalLM, ids: number[]): number[] {
  const cache = model.createCache(1);
  const out: number[] = [];
  try {
    noGrad(() => {
      let pos = 0;
      for (const len of [5, 3, ...Array<number>(ids.length - 8).fill(1)]) {
        const step = scope(() =>
          model.forward(tensor(ids.slice(pos, pos + len), [1, len], 'i32'), { cache }).logits.toArray(),
        );
        out.push(...step);
        pos += len;
      }
    });
  } finally {
    cache.dispose();
  }
  return out;
}

describe('family fixtures (transformers 5.17)', { skip }, () => {
  it('covers every family and both config styles', () => {
    const families = new Set(NAMES.map((n) => loadModel(path.join(FIX, n)).model.info.family));
    for (const f of ['llama', 'mistral', 'qwen2', 'qwen3', 'phi3', 'gemma', 'gemma2'])
      assert.ok(families.has(f), `no fixture of ${f}`);
    assert.ok(NAMES.some((n) => n.endsWith('-v4')));
  });

  for (const name of NAMES) {
    it(`${name}: token log-probs within 2e-4, last logits within 5e-4`, () => {
      const exp = expected(name);
      const { model } = loadModel(path.join(FIX, name));
      exp.ids.forEach((ids, s) => {
        // log-probs of one forward over the whole sequence, as the reference computed them
        const v = model.info.vocabSize;
        const logits = logitsOf(model, ids);
        const lp = ids.slice(1).map((id, t) => {
          const row = Array.from(logits.subarray(t * v, (t + 1) * v));
          const mx = Math.max(...row);
          return row[id] - mx - Math.log(row.reduce((a, x) => a + Math.exp(x - mx), 0));
        });
        assertClose(lp, exp.logprobs[s], 2e-4, `${name} logprobs[${s}]`);
        assertClose(logits.slice((ids.length - 1) * v), exp.last_logits[s], 5e-4, `${name} last`);
        // the scorer eval uses (inputs without the last token: dynamic rope sees one position less)
        if (!name.includes('dynamic'))
          assertClose(
            tokenLogprobs(model, ids, { window: ids.length }),
            exp.logprobs[s],
            2e-4,
            `${name} scorer`,
          );
      });
    });

    it(`${name}: decoding with the KV cache equals scoring; greedy generation follows the argmax`, () => {
      const { model } = loadModel(path.join(FIX, name));
      const ids = expected(name).ids[1];
      const v = model.info.vocabSize;
      // dynamic and longrope change their frequencies with the length, as transformers does:
      // cached keys keep the rotation of their step, so decoding equals scoring only while the
      // length stays within the original context (16 here), or (longrope) once past it
      const lengthDependent = name.includes('dynamic') || name.includes('longrope');
      const n = lengthDependent ? 16 : ids.length;
      assertClose(cachedLogits(model, ids.slice(0, n)), logitsOf(model, ids.slice(0, n)), 1e-4, name);
      if (name.includes('dynamic')) return;
      const prompt = ids.slice(0, lengthDependent ? 20 : 6);
      const gen = generateIds(model, prompt, { maxNewTokens: 24, temperature: 0, stopAtEos: false });
      assert.equal(gen.length, 24);
      const seq = [...prompt, ...gen];
      const lg = logitsOf(model, seq);
      for (let t = prompt.length; t < seq.length; t++) {
        const row = lg.subarray((t - 1) * v, t * v);
        let best = 0;
        for (let i = 1; i < v; i++) if (row[i] > row[best]) best = i;
        assert.equal(seq[t], best, `${name}: generated token ${t} is not the argmax of scoring`);
      }
    });
  }
});

// ---- rope: every type against a float64 reimplementation of the published formulas ----

function defaultInv(base: number, dim: number): number[] {
  return Array.from({ length: dim / 2 }, (_, i) => Math.pow(base, -(2 * i) / dim));
}

function reference(c: RopeConfig, seqLen: number): { inv: number[]; af: number } {
  const dim = c.rotaryDim;
  const inv = defaultInv(c.theta, dim);
  switch (c.type) {
    case 'default':
      return { inv, af: 1 };
    case 'linear':
      return { inv: inv.map((v) => v / c.factor!), af: 1 };
    case 'dynamic': {
      const L = Math.max(seqLen, c.maxPositionEmbeddings);
      const b = c.theta * ((c.factor! * L) / c.maxPositionEmbeddings - (c.factor! - 1)) ** (dim / (dim - 2));
      return { inv: defaultInv(b, dim), af: 1 };
    }
    case 'llama3': {
      // wavelengths beyond old/low are divided by the factor, below old/high kept, smoothed between
      const old = c.originalMaxPositionEmbeddings!;
      return {
        inv: inv.map((v) => {
          const wl = (2 * Math.PI) / v;
          if (wl > old / c.lowFreqFactor!) return v / c.factor!;
          if (wl < old / c.highFreqFactor!) return v;
          const s = (old / wl - c.lowFreqFactor!) / (c.highFreqFactor! - c.lowFreqFactor!);
          return (1 - s) * (v / c.factor!) + s * v;
        }),
        af: 1,
      };
    }
    case 'yarn': {
      const orig = c.originalMaxPositionEmbeddings ?? c.maxPositionEmbeddings;
      const corr = (r: number) => (dim * Math.log(orig / (r * 2 * Math.PI))) / (2 * Math.log(c.theta));
      const lo = Math.max(Math.floor(corr(32)), 0);
      let hi = Math.min(Math.ceil(corr(1)), dim - 1);
      if (lo === hi) hi += 0.001;
      return {
        inv: inv.map((v, i) => {
          const ramp = Math.min(1, Math.max(0, (i - lo) / (hi - lo)));
          return (v / c.factor!) * ramp + v * (1 - ramp);
        }),
        af: 0.1 * Math.log(c.factor!) + 1,
      };
    }
    case 'longrope': {
      const orig = c.originalMaxPositionEmbeddings!;
      const f = c.maxPositionEmbeddings / orig;
      const ext = seqLen > orig ? c.longFactor! : c.shortFactor!;
      return {
        inv: inv.map((v, i) => v / ext[i]),
        af: f <= 1 ? 1 : Math.sqrt(1 + Math.log(f) / Math.log(orig)),
      };
    }
  }
}

describe('rope types', () => {
  const base = { theta: 10000, rotaryDim: 16, maxPositionEmbeddings: 64 };
  const cases: RopeConfig[] = [
    { ...base, type: 'default' },
    { ...base, type: 'linear', factor: 2 },
    { ...base, type: 'dynamic', factor: 2, maxPositionEmbeddings: 16 },
    {
      ...base,
      type: 'llama3',
      theta: 500000,
      factor: 8,
      lowFreqFactor: 1,
      highFreqFactor: 4,
      originalMaxPositionEmbeddings: 16,
    },
    {
      ...base,
      type: 'llama3',
      theta: 500000,
      factor: 8,
      lowFreqFactor: 1,
      highFreqFactor: 4,
      originalMaxPositionEmbeddings: 8192,
      rotaryDim: 128,
    },
    { ...base, type: 'yarn', factor: 4, originalMaxPositionEmbeddings: 16 },
    { ...base, type: 'yarn', factor: 16, theta: 1e6, rotaryDim: 64, originalMaxPositionEmbeddings: 4096 },
    {
      ...base,
      type: 'longrope',
      originalMaxPositionEmbeddings: 16,
      shortFactor: [1, 1.05, 1.1, 1.15, 1.2, 1.25, 1.3, 1.35],
      longFactor: [1, 1.5, 2, 2.5, 3, 3.5, 4, 4.5],
    },
  ];
  it('inverse frequencies and cos/sin factors match the formulas (float32 rounding, 1e-6 relative)', () => {
    for (const c of cases) {
      for (const len of [8, 40]) {
        const got = ropeFrequencies(c, len);
        const ref = reference(c, len);
        assertClose(got.invFreq, ref.inv, 0, `${c.type} len ${len}`, 1e-6);
        assertClose([got.attentionFactor], [ref.af], 1e-7, `${c.type} factor`);
      }
    }
    // the variants change something: none reduces to the default by accident
    const d = ropeFrequencies(cases[0], 40).invFreq;
    for (const c of cases.slice(1, 4)) {
      const f = ropeFrequencies(c, 40).invFreq;
      assert.ok(f.some((v, i) => Math.abs(v - d[i]) > 1e-4 * d[i]) || c.theta !== 10000, c.type);
    }
  });

  it('the table path rotates like the fused rope op (rotate-half layout, partial rotary)', () => {
    const rng = new Random(3);
    const x = tensor(
      Array.from({ length: 2 * 7 * 3 * 12 }, () => rng.normal(0, 1)),
      [2, 7, 3, 12],
    );
    for (const rotaryDim of [12, 8]) {
      const c: RopeConfig = { type: 'default', theta: 10000, rotaryDim, maxPositionEmbeddings: 64 };
      const { cos, sin } = ropeTables(c, 5, 7);
      const a = applyRopeTables(x, cos, sin, rotaryDim).toArray();
      const b = rope(x, { rotaryDim, theta: 10000, positionOffset: 5 }).toArray();
      assertClose(a, b, 2e-5, `rotaryDim ${rotaryDim}`);
    }
  });
});

// ---- sliding windows: what a window hides does not matter ----

const SMALL = {
  vocab_size: 40,
  hidden_size: 32,
  intermediate_size: 48,
  num_attention_heads: 4,
  num_key_value_heads: 2,
  max_position_embeddings: 64,
  head_dim: 8,
};

describe('sliding windows', () => {
  const ids = Array.from({ length: 14 }, (_, i) => (i * 11 + 3) % 40);
  it('a window as long as the input is full attention; a shorter one changes the logits', () => {
    const full = buildModel({ ...SMALL, model_type: 'mistral', num_hidden_layers: 2 });
    const wide = buildModel({ ...SMALL, model_type: 'mistral', num_hidden_layers: 2, sliding_window: 14 });
    const narrow = buildModel({ ...SMALL, model_type: 'mistral', num_hidden_layers: 2, sliding_window: 4 });
    const f = logitsOf(full, ids);
    assertClose(logitsOf(wide, ids), f, 0, 'window = T');
    const n = logitsOf(narrow, ids);
    const V = 40;
    // positions before the window fills agree; later ones do not. (3e-6: the windowed model's
    // masked softmax runs on the CPU's SIMD exp, within 2 ulps, the full one in the attention
    // kernel's rows; f32 noise on logits ~1.3 is ~1e-6, a window that leaked would be ~1e-1)
    assertClose(n.slice(0, 4 * V), f.slice(0, 4 * V), 3e-6, 'first window');
    assert.ok(Math.max(...n.slice(13 * V).map((v, i) => Math.abs(v - f[13 * V + i]))) > 1e-4);
  });

  it('one windowed layer: the last position sees exactly the last `window` tokens (rope is relative)', () => {
    for (const type of ['mistral', 'gemma2']) {
      const m = buildModel({
        ...SMALL,
        model_type: type,
        num_hidden_layers: 1,
        sliding_window: 5,
        layer_types: ['sliding_attention'],
      });
      const V = 40;
      const a = logitsOf(m, ids).slice(13 * V);
      const b = logitsOf(m, ids.slice(9)).slice(4 * V);
      assertClose(a, b, 2e-5, `${type}: window 5`);
    }
  });

  it('the windowed cache holds about two windows, and decoding still equals scoring', () => {
    const m = buildModel({ ...SMALL, model_type: 'mistral', num_hidden_layers: 2, sliding_window: 3 });
    const long = Array.from({ length: 150 }, (_, i) => (i * 7 + 1) % 40);
    const cache = m.createCache(1);
    noGrad(() => {
      for (const t of long) scope(() => m.forward(tensor([t], [1, 1], 'i32'), { cache }));
    });
    const kv = cache.layers[0] as unknown as { k: { shape: number[] }; start: number };
    assert.ok(kv.k.shape[1] <= 64 && kv.start > 80, `capacity ${kv.k.shape[1]}, start ${kv.start}`);
    cache.dispose();
    const some = long.slice(0, 30);
    assertClose(cachedLogits(m, some), logitsOf(m, some), 1e-4, 'window 3 cache');
  });
});

// ---- config values out of range: refused, naming the file and the field (issue 19) ----

describe('config ranges', () => {
  const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'mohawk-fam-'));
  const llama = { ...SMALL, model_type: 'llama', num_hidden_layers: 1 };
  const cases: [Record<string, unknown>, RegExp][] = [
    [{ ...llama, rope_theta: 0 }, /config\.json: rope_theta must be positive, got 0/],
    [{ ...llama, rope_theta: -5 }, /rope_theta must be positive/],
    [
      { ...llama, rope_parameters: { rope_type: 'default', rope_theta: -1 } },
      /rope_parameters\.rope_theta must be positive/,
    ],
    [{ ...llama, rms_norm_eps: -1e-6 }, /config\.json: rms_norm_eps must not be negative/],
    [
      { ...llama, model_type: 'phi', layer_norm_eps: -1 },
      /config\.json: layer_norm_eps must not be negative/,
    ],
    [
      { ...llama, bos_token_id: 40 },
      /config\.json: bos_token_id \(40\) is outside the vocabulary \(vocab_size 40\)/,
    ],
    [{ ...llama, eos_token_id: [2, -1] }, /config\.json: eos_token_id \(-1\) is outside the vocabulary/],
    [
      {
        ...llama,
        rope_parameters: { rope_type: 'linear', factor: 2, rope_theta: 1e4 },
        rope_scaling: { type: 'linear', factor: 4 },
      },
      /config\.json: rope_scaling\.factor \(4\) disagrees with rope_parameters\.factor \(2\)/,
    ],
    [
      {
        ...llama,
        rope_parameters: { rope_type: 'default', rope_theta: 1e4 },
        rope_scaling: { rope_type: 'yarn', factor: 4 },
      },
      /config\.json: rope_scaling\.rope_type \("yarn"\) disagrees with rope_parameters\.rope_type \("default"\)/,
    ],
    [
      { ...llama, rope_scaling: { rope_type: 'linear' } },
      /config\.json: rope_scaling\.factor is required for rope type "linear"/,
    ],
    [
      { ...llama, rope_scaling: { rope_type: 'dynamic', factor: -2 } },
      /rope_scaling\.factor must be positive/,
    ],
    [
      {
        ...llama,
        rope_scaling: {
          rope_type: 'llama3',
          factor: 8,
          low_freq_factor: 4,
          high_freq_factor: 1,
          original_max_position_embeddings: 16,
        },
      },
      /rope_scaling\.high_freq_factor \(1\) must be larger than low_freq_factor \(4\)/,
    ],
    [
      {
        ...llama,
        model_type: 'phi3',
        rope_scaling: { rope_type: 'longrope', short_factor: [1], long_factor: [1] },
      },
      /rope_scaling\.short_factor must be a list of 4 positive numbers/,
    ],
    [{ ...llama, vocab_size: 3e7 }, /config\.json: vocab_size \(30000000\) is larger than mohawk accepts/],
    [
      { ...llama, num_hidden_layers: 1e5 },
      /config\.json: num_hidden_layers \(100000\) is larger than mohawk accepts/,
    ],
    [{ ...llama, num_hidden_layers: 2 ** 53 }, /num_hidden_layers .* is larger than mohawk accepts/],
    [
      { ...llama, hidden_size: 1e9 },
      /config\.json: hidden_size \(1000000000\) is larger than mohawk accepts/,
    ],
    [
      { ...llama, vocab_size: 4e6, hidden_size: 4096 },
      /config\.json: vocab_size \(4000000\) times hidden_size \(4096\)/,
    ],
    [
      { ...llama, model_type: 'gpt2', n_embd: 1e9, n_head: 4, n_layer: 1 },
      /config\.json: n_embd \(1000000000\) is larger/,
    ],
    [
      { ...llama, model_type: 'gpt2', n_embd: 32, n_head: 4, n_layer: 1, n_positions: 1e9 },
      /n_positions \(1000000000\) is larger/,
    ],
    [{ ...llama, model_type: 'gemma2', query_pre_attn_scalar: 0 }, /query_pre_attn_scalar must be positive/],
    [
      { ...llama, model_type: 'gemma2', attn_logit_softcapping: -1 },
      /attn_logit_softcapping must be positive or null/,
    ],
    [{ ...llama, model_type: 'mistral', sliding_window: 0 }, /sliding_window must be at least 1/],
    [
      { ...llama, model_type: 'qwen2', layer_types: ['sliding_attention'] },
      /layer_types\[0\] is "sliding_attention" but sliding_window is not set/,
    ],
    [
      { ...llama, model_type: 'gemma', use_bidirectional_attention: true },
      /use_bidirectional_attention is not supported/,
    ],
  ];
  it('every case fails with one line naming config.json and the field', () => {
    for (const [cfg, re] of cases) {
      const dir = fs.mkdtempSync(path.join(tmp, 'c'));
      assert.throws(
        () => buildModel(cfg, path.join(dir, 'config.json'), { deferInit: true }),
        (e: Error) => {
          assert.match(e.message, re);
          assert.ok(!e.message.includes('\n'), e.message);
          assert.ok(e.message.includes(path.join(dir, 'config.json')), e.message);
          return true;
        },
        String(re),
      );
    }
  });
  it('rope_scaling beside rope_parameters is accepted when they say the same', () => {
    const cfg = {
      ...llama,
      rope_parameters: { rope_type: 'linear', factor: 2, rope_theta: 1e4 },
      rope_scaling: { type: 'linear', factor: 2 },
    };
    assert.doesNotThrow(() => buildModel(cfg));
  });
});

// ---- distillation from every family: a few CPU steps of stages 1-3, a hybrid with the family's
// own (windowed) attention ----

describe('distillation from every family', { skip }, () => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'mohawk-fam-distill-'));
  const r = new Random(5);
  const doc = Array.from({ length: 12000 }, () => 3 + r.int(0, 200));
  writeTokenSplits(
    path.join(dir, 'data'),
    { train: { documents: [doc.slice(0, 10000)] }, val: { documents: [doc.slice(10000)] } },
    { vocabSize: 256, eosTokenId: 2 },
  );
  const ds = TokenDataset.open(path.join(dir, 'data'));
  const cases: [string, number[]][] = [
    ['llama-llama3', []],
    ['mistral', [1]],
    ['qwen2', [1]],
    ['qwen3', []],
    ['phi3-longrope', [0]],
    ['gemma', []],
    ['gemma2', [0]],
  ];
  it('a student keeping every attention layer reproduces its teacher (shared weights bit for bit, the family attention kept); save -> load is exact', () => {
    for (const name of NAMES) {
      const { model: teacher } = loadModel(path.join(FIX, name));
      const all = [...Array(teacher.info.nLayers).keys()];
      const student = transferStudent(teacher, { attentionLayers: all });
      const sd = student.stateDict();
      const contract = teacher.distillContract!();
      for (const l of [null, ...all])
        for (const [n, t] of contract.sharedWeights(l))
          assertClose(sd.get(n)!.toArray(), t.toArray(), 0, `${name}: ${n}`);
      const ids = expected(name).ids[0].slice(0, 24);
      // Phi-3's fused projections split in the student: the same numbers, another summation order
      assertClose(logitsOf(student, ids), logitsOf(teacher, ids), 1e-5, `${name}: all-attention student`);
      const d = path.join(dir, `saved-${name}`);
      saveModel(d, student);
      assertClose(logitsOf(loadModel(d).model, ids), logitsOf(student, ids), 0, `${name}: save -> load`);
    }
  });

  for (const [name, attentionLayers] of cases) {
    it(`${name}: stages 1-3 run; the saved student reloads and scores like the trained one${attentionLayers.length ? ' (hybrid)' : ''}`, () => {
      const { model: teacher } = loadModel(path.join(FIX, name));
      const out = path.join(dir, name);
      const res = runDistill(
        validateConfig(
          {
            teacher: 'in memory',
            out,
            seed: 3,
            student: { chunkSize: 8, alphaInit: 0.9, attentionLayers },
            data: { train: ['in memory'], valTokens: 96 },
            stageDefaults: { batchTokens: 96, microBatch: 4, seqLen: 24, lr: 3e-3 },
            stages: [
              { stage: 1, tokens: 96 },
              { stage: 2, tokens: 96 },
              { stage: 3, tokens: 192 },
            ],
          },
          'test',
        ),
        {
          teacher: { model: teacher, tokenizer: null },
          data: { train: ds.split('train'), val: ds.split('val') },
          progress: false,
          log: () => {},
        },
      );
      assert.equal(res.stages.length, 3);
      for (const s of res.stages)
        assert.ok(Number.isFinite(s.loss) && Number.isFinite(s.valKl), JSON.stringify(s));
      const { model: student } = loadModel(res.studentDir);
      assert.equal(student.info.family, 'llamba');
      const layers = student.blocks.map((b) => b.mixerKind);
      assert.deepEqual(
        layers.map((k, i) => (k === 'attention') === attentionLayers.includes(i)),
        layers.map(() => true),
      );
      const ids = expected(name).ids[0].slice(0, 24);
      const lp = tokenLogprobs(student, ids);
      assert.ok(lp.every(Number.isFinite));
      // the student's decoding with its caches (SSM state, windowed KV) equals its scoring
      // (longrope switches factors past its original context of 16: compare within it)
      const c = name.includes('longrope') ? ids.slice(0, 16) : ids;
      assertClose(cachedLogits(student, c), logitsOf(student, c), 1e-4, `${name} student cache`);
    });
  }
});

// ---- tokenizers of the families (test/fixtures/tokenizers, encodings from AutoTokenizer) ----

describe('family tokenizers (Llama 3, Qwen2, Gemma layouts)', () => {
  const TOK = path.join(HERE, 'fixtures/tokenizers');
  for (const name of ['llama3', 'qwen2', 'gemma']) {
    it(`${name}: ids with special tokens and BOS as transformers; decode with and without specials`, () => {
      const dir = path.join(TOK, name);
      const exp = JSON.parse(fs.readFileSync(path.join(dir, 'expected.json'), 'utf8')) as {
        cases: { text: string; ids: number[]; decoded: string; decoded_skip_special: string }[];
      };
      const tok = loadTokenizer(dir);
      assert.ok(exp.cases.length >= 5);
      for (const c of exp.cases) {
        assert.deepEqual(tok.encode(c.text), c.ids, `${name}: ${JSON.stringify(c.text)}`);
        assert.equal(tok.decode(c.ids, { skipSpecialTokens: false }), c.decoded, `${name} decode`);
        assert.equal(tok.decode(c.ids), c.decoded_skip_special, `${name} decode (skip special)`);
      }
    });
  }
});

describe('student config ranges', () => {
  it('absurd sizes, negative eps and token ids outside the vocabulary are refused naming the field', () => {
    const teacher = buildModel({ ...SMALL, model_type: 'llama', num_hidden_layers: 2 });
    const base = transferStudent(teacher, { attentionLayers: [1] }).configJson();
    // eslint-disable-next-line @typescript-eslint/no-explicit-any -- nested config sections
    type J = Record<string, any>;
    const edit = (fn: (j: J) => void) => {
      const j = structuredClone(base) as J;
      fn(j);
      return j;
    };
    const cases: [Record<string, unknown>, RegExp][] = [
      [
        edit((j) => (j.MixerModel.input.n_layer = 1e5)),
        /MixerModel\.input\.n_layer \(100000\) is larger than mohawk accepts/,
      ],
      [
        edit((j) => (j.MixerModel.input.d_model = 1e9)),
        /MixerModel\.input\.d_model \(1000000000\) is larger/,
      ],
      [
        edit((j) => (j.LanguageModel.input.vocab_size = 3e7)),
        /LanguageModel\.input\.vocab_size \(30000000\) is larger/,
      ],
      [edit((j) => (j.Block1.core_input.d_conv = 4e6)), /Block1\.core_input\.d_conv \(4000000\) is larger/],
      [edit((j) => (j.Block1.core_input.expand = 1e6)), /Block1\.core_input\.expand \(1000000\) is larger/],
      [
        edit((j) => (j.Block1.core_input.expand = 1.01)),
        /expand \(1\.01\) times d_model \(32\) must be a positive integer/,
      ],
      [edit((j) => (j.MixerModel.input.norm_eps = -1)), /MixerModel\.input\.norm_eps must not be negative/],
      [
        edit((j) => (j.LanguageModel.input.bos_token_id = 40)),
        /LanguageModel\.input\.bos_token_id \(40\) is outside the vocabulary/,
      ],
      [
        edit((j) => (j.Block2.core_input.sliding_window = 1e9)),
        /Block2\.core_input\.sliding_window \(1000000000\) is larger/,
      ],
    ];
    for (const [cfg, re] of cases)
      assert.throws(() => buildModel(cfg, 'student/config.json', { deferInit: true }), re);
  });
});

describe('fused head', () => {
  it('a model with a final soft-cap offers no head parts (a fused linear + softmax cannot cap); others do', () => {
    const g2 = buildModel({ ...SMALL, model_type: 'gemma2', num_hidden_layers: 1 });
    const g = buildModel({ ...SMALL, model_type: 'gemma', num_hidden_layers: 1 });
    assert.equal(g2.headParts, undefined);
    assert.equal(typeof g.headParts, 'function');
    assert.equal(transferStudent(g2).headParts, undefined);
    assert.equal(typeof transferStudent(g).headParts, 'function');
  });
});

describe('distill --check from config.json alone', { skip }, () => {
  it("every family's student parameters, as transfer builds them (hybrid layer 1 kept)", () => {
    for (const name of NAMES) {
      const { json, file } = readConfig(path.join(FIX, name));
      const teacher = buildModel(json, file);
      for (const init of ['paper', 'attention'] as const) {
        const built = transferStudent(teacher, { attentionLayers: [1], chunkSize: 16, mixerInit: init });
        const want = built.namedParameters().map(([n, t]) => `${n} ${t.shape.join('x')}`);
        const shape = studentShapeFromTeacherJson(json, file, {
          attentionLayers: [1],
          dState: null,
          chunkSize: 16,
          alphaInit: 0.9,
          init,
          mixer: 'ssd',
          kernelLength: null,
        } as unknown as Parameters<typeof studentShapeFromTeacherJson>[2]);
        const got = studentParameterShapes(shape).map(([n, s]) => `${n} ${s.join('x')}`);
        assert.deepEqual(got.sort(), want.sort(), `${name} ${init}`);
        built.dispose();
      }
      teacher.dispose();
    }
  });
});
