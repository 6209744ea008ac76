// Teachers: HF checkpoints give the reference logits; configs in both transformers styles;
// llama2.c conversion matches an independent llama2.c forward (adjacent-pair RoPE, read from the
// raw .bin) token for token; KV-cache decoding equals the full forward; captures keep the
// contract; save -> load is exact.

import assert from 'node:assert/strict';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { describe, it } from 'node:test';
import { convertLlama2c } from '../src/io/llama2c.js';
import { generate, generateIds } from '../src/generate/generate.js';
import { buildModel, loadModel, saveModel } from '../src/models/load.js';
import type { CausalLM } from '../src/models/types.js';
import { tokenLogprobs } from '../src/eval/score.js';
import { readSafetensors } from '../src/io/safetensors.js';
import { add3, autocast, noGrad, scope, setBackend, tensor } from '../src/tensor/index.js';
import { CpuBackend } from '../src/backends/cpu/index.js';
import { Random } from '../src/util/random.js';
import { assertClose, SHARED, tinyPhi } from './helpers.js';

const skip = fs.existsSync(SHARED) ? false : `${SHARED} not found`;
const tmp = () => fs.mkdtempSync(path.join(os.tmpdir(), 'mohawk-teach-'));
const FIXTURES = ['llama-untied', 'llama-tied', 'phi', 'gpt2'];

interface Expected {
  ids: number[][];
  logprobs: number[][];
  last_logits: number[][];
}

const fixture = (name: string) => path.join(SHARED, 'fixtures/reference', name);
const expected = (name: string) =>
  JSON.parse(fs.readFileSync(path.join(fixture(name), 'expected.json'), 'utf8')) as Expected;

function logitsOf(model: CausalLM, ids: number[]): Float64Array {
  return Float64Array.from(
    noGrad(() => scope(() => model.forward(tensor(ids, [1, ids.length], 'i32')).logits.toArray())),
  );
}

function lastLogits(model: CausalLM, ids: number[]): Float64Array {
  const v = model.info.vocabSize;
  return logitsOf(model, ids).slice((ids.length - 1) * v);
}

/** a copy of a fixture directory with an edited config.json */
function withConfig(name: string, edit: (cfg: Record<string, unknown>) => void): string {
  const dir = tmp();
  for (const f of fs.readdirSync(fixture(name)))
    fs.copyFileSync(path.join(fixture(name), f), path.join(dir, f));
  const cfg = JSON.parse(fs.readFileSync(path.join(dir, 'config.json'), 'utf8')) as Record<string, unknown>;
  edit(cfg);
  fs.writeFileSync(path.join(dir, 'config.json'), JSON.stringify(cfg));
  return dir;
}

describe('HF reference fixtures', { skip }, () => {
  for (const name of FIXTURES) {
    it(`${name}: log-probs and last logits within 1e-4`, () => {
      const exp = expected(name);
      const { model } = loadModel(fixture(name));
      exp.ids.forEach((ids, s) => {
        assertClose(tokenLogprobs(model, ids), exp.logprobs[s], 1e-4, `${name} logprobs[${s}]`);
        assertClose(lastLogits(model, ids), exp.last_logits[s], 1e-4, `${name} last_logits[${s}]`);
      });
    });
  }

  it('KV-cache decoding reproduces the full forward (llama GQA, phi partial rotary, gpt2)', () => {
    for (const name of ['llama-tied', 'phi', 'gpt2']) {
      const { model } = loadModel(fixture(name));
      const ids = expected(name).ids[0];
      const full = logitsOf(model, ids);
      const cache = model.createCache(1);
      // prefill 5 tokens, then 3, then one at a time
      const parts: number[] = [];
      noGrad(() => {
        let pos = 0;
        for (const len of [5, 3, ...Array(ids.length - 8).fill(1)]) {
          const step = scope(() =>
            model.forward(tensor(ids.slice(pos, pos + len), [1, len], 'i32'), { cache }).logits.toArray(),
          );
          parts.push(...step);
          pos += len;
        }
      });
      assert.equal(cache.position, ids.length);
      assert.equal(parts.length, ids.length * model.info.vocabSize);
      assertClose(parts, full, 1e-4, `${name} cached logits`);
      cache.dispose();
    }
  });

  it('captures: attention probabilities are causal rows summing to 1; mixer outputs and layer I/O chain', () => {
    for (const name of FIXTURES) {
      const { model } = loadModel(fixture(name));
      const ids = expected(name).ids[0].slice(0, 12);
      const T = ids.length;
      noGrad(() =>
        scope(() => {
          const r = model.forward(tensor(ids, [1, T], 'i32'), {
            capture: { layerInputs: true, layerOutputs: true, mixerOutputs: true, mixerMatrices: true },
          });
          const c = r.captured;
          assert.equal(c.mixerMatrices!.length, model.info.nLayers);
          for (let l = 0; l < model.info.nLayers; l++) {
            const m = c.mixerMatrices![l];
            const H = m.shape[1];
            assert.deepEqual(m.shape, [1, H, T, T], `${name} matrix ${l} shape`);
            const p = m.toArray();
            for (let h = 0; h < H; h++)
              for (let t = 0; t < T; t++) {
                let row = 0;
                for (let s = 0; s < T; s++) {
                  const v = p[(h * T + t) * T + s];
                  if (s > t)
                    assert.equal(v, 0, `${name} layer ${l} head ${h}: p[${t}][${s}] above the diagonal`);
                  row += v;
                }
                assert.ok(Math.abs(row - 1) < 1e-5, `${name} layer ${l} head ${h} row ${t} sums to ${row}`);
              }
            assert.deepEqual(c.mixerOutputs![l].shape, [1, T, model.info.dModel]);
            if (l > 0) assert.deepEqual(c.layerInputs![l].toArray(), c.layerOutputs![l - 1].toArray());
          }
          // the block outputs lead to the logits: head(last layer output) = logits
          assertClose(model.head(c.layerOutputs!.at(-1)!).toArray(), r.logits.toArray(), 0, `${name} head`);
        }),
      );
    }
  });

  it('save -> load gives the same tensors and logits; tied heads are stored once', () => {
    for (const name of FIXTURES) {
      const { model, config } = loadModel(fixture(name));
      const dir = tmp();
      saveModel(dir, model, null);
      const names = [...readSafetensors(path.join(dir, 'model.safetensors')).entries.keys()];
      const tied = name === 'llama-tied' || name === 'gpt2';
      assert.equal(names.includes('lm_head.weight'), !tied, `${name}: lm_head.weight stored`);
      assert.equal(new Set(names).size, model.stateDict().size);
      const back = loadModel(dir).model;
      const ids = expected(name).ids[1];
      assertClose(logitsOf(back, ids), logitsOf(model, ids), 0, `${name} reloaded logits`);
      // the family's own config fields survive
      const saved = JSON.parse(fs.readFileSync(path.join(dir, 'config.json'), 'utf8')) as Record<
        string,
        unknown
      >;
      for (const k of ['model_type', 'vocab_size', 'tie_word_embeddings', 'n_embd', 'hidden_size']) {
        if (k in config) assert.deepEqual(saved[k], config[k], `${name}: ${k}`);
      }
    }
  });
});

describe('config.json', { skip }, () => {
  it('transformers-4 style (rope_theta, partial_rotary_factor at the top level) reads like rope_parameters', () => {
    const exp = expected('phi');
    const ids = exp.ids[0];
    const t4 = withConfig('phi', (c) => {
      delete c.rope_parameters;
      c.rope_theta = 10000;
      c.partial_rotary_factor = 0.5;
    });
    assertClose(lastLogits(loadModel(t4).model, ids), exp.last_logits[0], 1e-4, 'phi t4 config');
    // non-default values are read from either place, and they matter
    for (const [theta, partial] of [
      [100, 0.5],
      [10000, 1],
    ]) {
      const a = withConfig('phi', (c) => {
        delete c.rope_parameters;
        c.rope_theta = theta;
        c.partial_rotary_factor = partial;
      });
      const b = withConfig('phi', (c) => {
        c.rope_parameters = { rope_type: 'default', rope_theta: theta, partial_rotary_factor: partial };
        delete c.partial_rotary_factor;
      });
      const la = lastLogits(loadModel(a).model, ids);
      assertClose(lastLogits(loadModel(b).model, ids), la, 0, `theta ${theta} partial ${partial}`);
      const diff = Math.max(...la.map((v, i) => Math.abs(v - exp.last_logits[0][i])));
      assert.ok(diff > 1e-3, `theta ${theta} partial ${partial} changes nothing (${diff})`);
    }
    const llamaT4 = withConfig('llama-untied', (c) => {
      delete c.rope_parameters;
      c.rope_theta = 10000;
    });
    const el = expected('llama-untied');
    assertClose(lastLogits(loadModel(llamaT4).model, el.ids[0]), el.last_logits[0], 1e-4, 'llama t4 config');
  });

  it('options we do not implement fail naming the field', () => {
    const cases: [string, (c: Record<string, unknown>) => void, RegExp][] = [
      ['phi', (c) => (c.qk_layernorm = true), /config\.json: qk_layernorm is not supported \(got true/],
      [
        'llama-tied',
        (c) => (c.rope_parameters = { rope_type: 'mrope', factor: 2, rope_theta: 1e4 }),
        /config\.json: rope_parameters\.rope_type "mrope" is not supported/,
      ],
      [
        'llama-tied',
        (c) => {
          delete c.rope_parameters;
          c.rope_scaling = { type: 'ntk-by-parts', factor: 2 };
        },
        /config\.json: rope_scaling\.rope_type "ntk-by-parts" is not supported/,
      ],
      [
        'llama-tied',
        (c) => (c.architectures = ['LlamaForSequenceClassification']),
        /config\.json: architectures \["LlamaForSequenceClassification"\] is not supported for model_type "llama"/,
      ],
      ['llama-tied', (c) => (c.model_type = 'falcon'), /config\.json: model_type "falcon" is not supported/],
      ['llama-tied', (c) => (c.hidden_act = 'gelu'), /config\.json: hidden_act activation is not supported/],
      [
        'llama-tied',
        (c) => {
          c.num_attention_heads = 6;
          c.num_key_value_heads = 3;
          delete c.head_dim;
        },
        /config\.json: num_attention_heads \(6\) must divide hidden_size \(64\)/,
      ],
      ['llama-tied', (c) => (c.head_dim = 7), /config\.json: head_dim \(7\) must be even/],
      [
        'llama-tied',
        (c) => (c.num_hidden_layers = 'two'),
        /config\.json: num_hidden_layers must be an integer/,
      ],
      [
        'phi',
        (c) => (c.partial_rotary_factor = 0.3),
        /config\.json: partial_rotary_factor \(0\.3\) disagrees with rope_parameters\.partial_rotary_factor \(0\.5\)/,
      ],
      [
        'phi',
        (c) => {
          delete c.partial_rotary_factor;
          c.rope_parameters = { rope_type: 'default', rope_theta: 1e4, partial_rotary_factor: 0.375 };
        },
        /config\.json: partial_rotary_factor gives 3 rotary dimensions of 8; must be even/,
      ],
      ['gpt2', (c) => (c.n_head = 5), /config\.json: n_head \(5\) must divide n_embd/],
      [
        'gpt2',
        (c) => (c.scale_attn_by_inverse_layer_idx = true),
        /scale_attn_by_inverse_layer_idx is not supported/,
      ],
      ['phi', (c) => (c.num_hidden_layers = 3), /model\.safetensors: missing tensor model\.layers\.2\./],
      [
        'phi',
        (c) => (c.vocab_size = 500),
        /tensor model\.embed_tokens\.weight has shape \[512, 64\], expected \[500, 64\]/,
      ],
    ];
    for (const [name, edit, re] of cases) {
      const dir = withConfig(name, edit);
      assert.throws(
        () => loadModel(dir),
        (e: Error) => {
          assert.match(e.message, re);
          assert.ok(!e.message.includes('\n'), `multi-line: ${e.message}`);
          assert.ok(e.message.includes(dir), `does not name the file: ${e.message}`);
          return true;
        },
        `${name}: ${String(re)}`,
      );
    }
  });
});

// ---- llama2.c: an independent forward pass straight from the .bin, as run.c computes it ----

interface L2c {
  dim: number;
  hidden: number;
  layers: number;
  heads: number;
  kvHeads: number;
  vocab: number;
  w: Record<string, Float32Array>;
}

function readL2c(file: string): L2c {
  const buf = fs.readFileSync(file);
  const [dim, hidden, layers, heads, kvHeads, vocabRaw, seq] = Array.from({ length: 7 }, (_, i) =>
    buf.readInt32LE(4 * i),
  );
  const vocab = Math.abs(vocabRaw);
  const hs = dim / heads;
  const kv = hs * kvHeads;
  const f = new Float32Array(buf.buffer.slice(buf.byteOffset + 28, buf.byteOffset + buf.length));
  const w: Record<string, Float32Array> = {};
  let off = 0;
  for (const [n, size] of [
    ['tok', vocab * dim],
    ['rmsAtt', layers * dim],
    ['wq', layers * dim * dim],
    ['wk', layers * kv * dim],
    ['wv', layers * kv * dim],
    ['wo', layers * dim * dim],
    ['rmsFfn', layers * dim],
    ['w1', layers * hidden * dim],
    ['w2', layers * dim * hidden],
    ['w3', layers * hidden * dim],
    ['rmsFinal', dim],
    ['freqs', seq * hs],
  ] as const) {
    w[n] = f.subarray(off, off + size);
    off += size;
  }
  w.wcls = vocabRaw > 0 ? w.tok : f.subarray(off, off + vocab * dim);
  return { dim, hidden, layers, heads, kvHeads, vocab, w };
}

/** y (rows) = W (rows, cols) x, W at `off` */
function matvec(
  W: Float32Array,
  off: number,
  x: ArrayLike<number>,
  rows: number,
  cols: number,
): Float64Array {
  const y = new Float64Array(rows);
  for (let r = 0; r < rows; r++) {
    let s = 0;
    for (let c = 0; c < cols; c++) s += W[off + r * cols + c] * x[c];
    y[r] = s;
  }
  return y;
}

function rmsnorm(x: Float64Array, w: Float32Array, off: number): Float64Array {
  let ss = 0;
  for (const v of x) ss += v * v;
  const k = 1 / Math.sqrt(ss / x.length + 1e-5);
  return x.map((v, i) => v * k * w[off + i]);
}

/** run.c's transformer(): one token at `pos`, caches of keys/values per layer */
function l2cStep(
  m: L2c,
  kc: Float64Array[][],
  vc: Float64Array[][],
  token: number,
  pos: number,
): Float64Array {
  const { dim, hidden, heads, kvHeads, w } = m;
  const hs = dim / heads;
  const kvDim = hs * kvHeads;
  let x = Float64Array.from(w.tok.subarray(token * dim, (token + 1) * dim));
  for (let l = 0; l < m.layers; l++) {
    const xb = rmsnorm(x, w.rmsAtt, l * dim);
    const q = matvec(w.wq, l * dim * dim, xb, dim, dim);
    const k = matvec(w.wk, l * kvDim * dim, xb, kvDim, dim);
    const v = matvec(w.wv, l * kvDim * dim, xb, kvDim, dim);
    // RoPE on adjacent pairs (i, i+1) with frequency 10000^(-(i % hs) / hs)
    for (let i = 0; i < dim; i += 2) {
      const angle = pos / Math.pow(10000, (i % hs) / hs);
      const [c, s] = [Math.cos(angle), Math.sin(angle)];
      for (const vec of i < kvDim ? [q, k] : [q]) {
        const [a, b] = [vec[i], vec[i + 1]];
        vec[i] = a * c - b * s;
        vec[i + 1] = a * s + b * c;
      }
    }
    kc[l][pos] = k;
    vc[l][pos] = v;
    const att = new Float64Array(dim);
    for (let h = 0; h < heads; h++) {
      const kh = Math.floor(h / (heads / kvHeads)) * hs;
      const scores = new Float64Array(pos + 1);
      for (let t = 0; t <= pos; t++) {
        let s = 0;
        for (let d = 0; d < hs; d++) s += q[h * hs + d] * kc[l][t][kh + d];
        scores[t] = s / Math.sqrt(hs);
      }
      const mx = Math.max(...scores);
      const e = scores.map((s) => Math.exp(s - mx));
      const z = e.reduce((a, b) => a + b, 0);
      for (let t = 0; t <= pos; t++)
        for (let d = 0; d < hs; d++) att[h * hs + d] += (e[t] / z) * vc[l][t][kh + d];
    }
    const o = matvec(w.wo, l * dim * dim, att, dim, dim);
    x = x.map((v, i) => v + o[i]);
    const xf = rmsnorm(x, w.rmsFfn, l * dim);
    const h1 = matvec(w.w1, l * hidden * dim, xf, hidden, dim);
    const h3 = matvec(w.w3, l * hidden * dim, xf, hidden, dim);
    const g = h1.map((a, i) => (a / (1 + Math.exp(-a))) * h3[i]);
    const d = matvec(w.w2, l * dim * hidden, g, dim, hidden);
    x = x.map((v, i) => v + d[i]);
  }
  return matvec(w.wcls, 0, rmsnorm(x, w.rmsFinal, 0), m.vocab, dim);
}

describe('llama2.c stories260K', { skip }, () => {
  const base = path.join(SHARED, 'data/stories260K');

  it('converted model matches a llama2.c forward (adjacent-pair RoPE) over 200 greedy tokens', () => {
    const out = tmp();
    convertLlama2c(path.join(base, 'stories260K.bin'), path.join(base, 'tok512.bin'), out);
    const { model, tokenizer } = loadModel(out);
    const ref = readL2c(path.join(base, 'stories260K.bin'));
    const kc = Array.from({ length: ref.layers }, () => [] as Float64Array[]);
    const vc = Array.from({ length: ref.layers }, () => [] as Float64Array[]);
    // llama2.c: greedy from BOS (1), one token at a time; it stops when BOS comes again
    const refIds: number[] = [];
    const refLogits: Float64Array[] = [];
    let token = 1;
    for (let pos = 0; pos < 200; pos++) {
      const logits = l2cStep(ref, kc, vc, token, pos);
      refLogits.push(logits);
      token = logits.indexOf(Math.max(...logits));
      if (token === 1 || token === 2) break;
      refIds.push(token);
    }
    assert.ok(refIds.length > 150, `reference stopped after ${refIds.length} tokens`);
    const ids = generateIds(model, [1], { maxNewTokens: refIds.length, temperature: 0 });
    assert.deepEqual(ids, refIds);
    // logits of the converted model (one full forward over the sequence) against the reference
    const full = logitsOf(model, [1, ...refIds.slice(0, refLogits.length - 1)]);
    assertClose(
      full,
      refLogits.flatMap((r) => Array.from(r)),
      1e-4,
      'stories260K logits',
    );
    const text = tokenizer!.decode(ids);
    assert.ok(
      text.startsWith(
        'Once upon a time, there was a little girl named Lily. She loved to play outside in the park. One day, she saw a big, red ball.',
      ),
      text,
    );
    // the streamed text is the completion, piece by piece
    let streamed = '';
    const r = generate(model, tokenizer!, {
      prompt: '',
      maxNewTokens: 60,
      temperature: 0,
      onText: (t) => (streamed += t),
    });
    assert.equal(streamed, r.completion);
    assert.deepEqual(r.ids, refIds.slice(0, 60));
  });

  it('the .model tokenizer converts to the same directory contents as the .bin one', () => {
    const a = tmp();
    const b = tmp();
    convertLlama2c(path.join(base, 'stories260K.bin'), path.join(base, 'tok512.bin'), a);
    convertLlama2c(path.join(base, 'stories260K.bin'), path.join(base, 'tok512.model'), b);
    const ta = loadModel(a).tokenizer!;
    const tb = loadModel(b).tokenizer!;
    const text = 'Once upon a time, Lily saw a big dog. "Hi!" she said. Zoë ate 3 apples.';
    assert.deepEqual(tb.encode(text), ta.encode(text));
    assert.equal(ta.decode(ta.encode(text)), text);
    assert.equal(ta.encode(text)[0], 1);
    const cfg = JSON.parse(fs.readFileSync(path.join(a, 'tokenizer_config.json'), 'utf8'));
    assert.equal(cfg.add_bos_token, true);
  });

  it('an unshared classifier (negative vocab_size) becomes lm_head.weight', () => {
    const src = fs.readFileSync(path.join(base, 'stories260K.bin'));
    const ref = readL2c(path.join(base, 'stories260K.bin'));
    // same weights with an explicit classifier = 2 x the embedding
    const wcls = Buffer.from(new Float32Array(ref.w.tok.map((v) => 2 * v)).buffer);
    const bin = Buffer.concat([src, wcls]);
    bin.writeInt32LE(-ref.vocab, 20);
    const dir = tmp();
    fs.writeFileSync(path.join(dir, 'untied.bin'), bin);
    convertLlama2c(path.join(dir, 'untied.bin'), path.join(base, 'tok512.bin'), path.join(dir, 'out'));
    const { model, config } = loadModel(path.join(dir, 'out'));
    assert.equal(config.tie_word_embeddings, false);
    const head = model.stateDict().get('lm_head.weight')!.toArray();
    assertClose(
      head,
      Array.from(ref.w.tok, (v) => 2 * v),
      0,
      'lm_head.weight',
    );
  });

  it('bad llama2.c inputs fail with one line naming the file', () => {
    const dir = tmp();
    const src = fs.readFileSync(path.join(base, 'stories260K.bin'));
    const cases: [string, Buffer, RegExp][] = [
      ['short.bin', src.subarray(0, 20), /is 20 bytes, shorter than the 28-byte header/],
      [
        'trunc.bin',
        src.subarray(0, src.length - 4),
        /holds \d+ floats after the header; the header implies \d+/,
      ],
      ['long.bin', Buffer.concat([src, Buffer.alloc(8)]), /holds \d+ floats after the header/],
      [
        'heads.bin',
        (() => {
          const b = Buffer.from(src);
          b.writeInt32LE(3, 16); // n_kv_heads 3 of 8 heads
          return b;
        })(),
        /n_kv_heads \(3\) must divide n_heads \(8\)/,
      ],
      [
        'garbage.bin',
        (() => {
          const b = Buffer.from(src);
          b.writeInt32LE(-7, 0);
          return b;
        })(),
        /header field dim = -7 is not a plausible size/,
      ],
    ];
    for (const [name, bytes, re] of cases) {
      const file = path.join(dir, name);
      fs.writeFileSync(file, bytes);
      assert.throws(
        () => convertLlama2c(file, path.join(base, 'tok512.bin'), path.join(dir, 'out')),
        (e: Error) => re.test(e.message) && e.message.startsWith(file) && !e.message.includes('\n'),
        name,
      );
    }
    const tok = path.join(dir, 'tok.bin');
    fs.writeFileSync(tok, fs.readFileSync(path.join(base, 'tok512.bin')).subarray(0, 600));
    assert.throws(
      () => convertLlama2c(path.join(base, 'stories260K.bin'), tok, path.join(dir, 'out')),
      (e: Error) => e.message.startsWith(tok) && /ends (after|inside token) \d+ of 512/.test(e.message),
    );
  });
});

describe('phi-17m teacher (bf16)', { skip }, () => {
  it('loads and scores corpus/val close to its training-time validation loss', () => {
    const dir = path.join(SHARED, 'data/teachers/phi-17m');
    const { model, tokenizer } = loadModel(dir);
    assert.equal(model.info.family, 'phi');
    assert.equal(model.numParameters(), 16942592);
    const training = JSON.parse(fs.readFileSync(path.join(dir, 'training.json'), 'utf8')) as {
      val_loss: Record<string, number>;
    };
    // 256 tokens from the middle of each source: one window each, so this stays quick
    let total = 0;
    const sources = fs.readdirSync(path.join(SHARED, 'data/corpus/val')).sort();
    for (const f of sources) {
      const text = fs.readFileSync(path.join(SHARED, 'data/corpus/val', f), 'utf8');
      const mid = Math.floor(text.length / 2);
      const ids = tokenizer!.encode(text.slice(mid, mid + 2000)).slice(0, 256);
      const lp = tokenLogprobs(model, ids);
      const nll = -lp.reduce((a, b) => a + b, 0) / lp.length;
      // a broken model (wrong rotary, norm or bf16 decoding) lands far above 6 nats
      assert.ok(Math.abs(nll - training.val_loss[f]) < 1, `${f}: nll ${nll} vs ${training.val_loss[f]}`);
      total += nll;
    }
    const mean = total / sources.length;
    assert.ok(Math.abs(mean - training.val_loss.mean) < 0.4, `mean nll ${mean} vs ${training.val_loss.mean}`);
  });
});

describe('buildModel', () => {
  it('random-init models of each family run forward and give finite logits', () => {
    const cfgs = [
      {
        model_type: 'llama',
        vocab_size: 50,
        hidden_size: 32,
        intermediate_size: 48,
        num_hidden_layers: 2,
        num_attention_heads: 4,
        num_key_value_heads: 2,
        rope_theta: 10000,
      },
      {
        model_type: 'phi',
        vocab_size: 50,
        hidden_size: 32,
        intermediate_size: 64,
        num_hidden_layers: 1,
        num_attention_heads: 4,
      },
      { model_type: 'gpt2', vocab_size: 50, n_embd: 32, n_layer: 1, n_head: 4, n_positions: 16 },
    ];
    for (const c of cfgs) {
      const m = buildModel(c);
      const l = logitsOf(m, [1, 2, 3, 4]);
      assert.equal(l.length, 4 * 50);
      assert.ok(l.every(Number.isFinite), `${c.model_type} logits`);
    }
    const g = buildModel(cfgs[2]);
    assert.throws(() => logitsOf(g, Array(17).fill(1)), /gpt2: positions up to 17 exceed n_positions \(16\)/);
  });
});

describe('the Phi block without gradients under autocast', () => {
  it('(16-bit norm, fc2 adding the residual sum) equals the composed block on the CPU bit for bit', () => {
    setBackend(new CpuBackend());
    const model = tinyPhi(1);
    const block = model.blocks[0];
    const x = tensor(new Random(2).normals(2 * 6 * 32, 0, 1), [2, 6, 32]);
    const [got, ref] = scope(() =>
      autocast('bf16', () =>
        noGrad(() => {
          const out = block.forward(x).out;
          // the block as it was composed before: the f32 norm, then the MLP and add3
          const n = block.input_layernorm.forward(x);
          const a = block.self_attn.forward(n, {});
          const composed = add3(x, a.out, block.mlp.forward(n));
          return [Array.from(out.toArray()), Array.from(composed.toArray())];
        }),
      ),
    );
    assert.deepEqual(got, ref);
    x.dispose();
  });
});
