// The student: the Phi-Mamba reference checkpoint, the mixer's three forms, recurrent decoding,
// hybrids, teacher -> student transfer, and bad input.

import assert from 'node:assert/strict';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { describe, it } from 'node:test';
import { DiscreteMamba2, SsmCache } from '../src/nn/discrete-mamba2.js';
import { buildModel, loadModel, saveModel } from '../src/models/load.js';
import { StudentLM, studentConfigFromJson } from '../src/models/phi-mamba.js';
import { transferStudent, Z_BIAS_OPEN } from '../src/distill/transfer.js';
import { tokenLogprobs } from '../src/eval/score.js';
import * as T from '../src/tensor/index.js';
import { noGrad, scope, tensor, type Tensor } from '../src/tensor/index.js';
import { Random } from '../src/util/random.js';
import { assertClose, randn, SHARED } from './helpers.js';

const haveShared = fs.existsSync(SHARED);
const skip = haveShared ? false : `${SHARED} not found`;
const rng = new Random(77);
const arr = (t: Tensor) => Array.from(t.toArray());

describe('Phi-Mamba reference checkpoint', { skip }, () => {
  it('log-probs (1e-4), the layer-0 mixer matrix and the hidden-state norms match', () => {
    const dir = path.join(SHARED, 'fixtures/reference/phi-mamba');
    const exp = JSON.parse(fs.readFileSync(path.join(dir, 'expected.json'), 'utf8'));
    const { model } = loadModel(dir);
    assert.equal(model.info.family, 'phi-mamba');
    exp.ids.forEach((ids: number[], s: number) =>
      assertClose(tokenLogprobs(model, ids), exp.logprobs[s], 1e-4, `logprobs[${s}]`),
    );
    noGrad(() =>
      scope(() => {
        const ids = tensor(exp.ids.flat(), [2, exp.ids[0].length], 'i32');
        const r = model.forward(ids, {
          capture: { mixerMatrices: true, layerInputs: true, layerOutputs: true },
        });
        const T_ = exp.ids[0].length;
        const m = T.slice(T.slice(r.captured.mixerMatrices![0], 0, 0, 1), 1, 0, 1);
        assertClose(arr(m), exp.layer0_mixer_matrix_b0_h0.flat(), 1e-5, 'mixer matrix');
        const states = [r.captured.layerInputs![0], ...r.captured.layerOutputs!];
        states.forEach((h, l) => {
          const norms = arr(T.sqrt(T.sum(T.square(h), [-1])));
          assertClose(norms, exp.hidden_state_norms[l].flat(), 1e-4, `hidden norms after ${l}`, 1e-5);
          assert.equal(norms.length, 2 * T_);
        });
      }),
    );
  });
});

function mixerCase(c: {
  dModel: number;
  dState: number;
  nQk: number;
  nV: number;
  expand: number;
  chunk: number;
  act: 'identity' | 'silu';
  bias: boolean;
}) {
  return new DiscreteMamba2(
    {
      dModel: c.dModel,
      dState: c.dState,
      nQkHeads: c.nQk,
      nVHeads: c.nV,
      dConv: 4,
      convBias: true,
      expand: c.expand,
      chunkSize: c.chunk,
      activation: c.act,
      bias: c.bias,
    },
    { rng: new Random(5), dtype: 'f64' },
  );
}

describe('DiscreteMamba2: three forms, one set of weights', () => {
  const cases = [
    {
      dModel: 8,
      dState: 3,
      nQk: 2,
      nV: 4,
      expand: 1,
      chunk: 4,
      act: 'identity' as const,
      bias: false,
      T: 11,
    },
    { dModel: 6, dState: 5, nQk: 1, nV: 3, expand: 2, chunk: 8, act: 'silu' as const, bias: true, T: 8 },
    { dModel: 4, dState: 4, nQk: 2, nV: 2, expand: 1, chunk: 16, act: 'identity' as const, bias: true, T: 5 },
  ];
  for (const c of cases) {
    it(`scan, matrix and recurrence agree in outputs and gradients ${JSON.stringify(c)}`, () => {
      const mixer = mixerCase(c);
      // nonzero D, z_bias and conv so every path matters
      for (const [, p] of mixer.namedParameters()) {
        const v = arr(p).map((x) => x + rng.normal(0, 0.3));
        p.backend.write(p.buffer, Float64Array.from(v));
      }
      const u = randn(rng, [2, c.T, c.dModel]);
      u.requiresGrad = true;
      const forms = [
        (x: Tensor) => mixer.forward(x).out,
        (x: Tensor) => mixer.forwardMatrix(x),
        (x: Tensor) => mixer.forwardRecurrent(x),
      ];
      const w = randn(rng, [2, c.T, c.dModel]);
      const results = forms.map((f) =>
        scope(() => {
          mixer.zeroGrad();
          u.grad?.dispose();
          u.grad = null;
          const out = f(u);
          T.sum(T.mul(out, w)).backward();
          return { out: arr(out), grads: [arr(u.grad!), ...mixer.parameters().map((p) => arr(p.grad!))] };
        }),
      );
      for (const k of [1, 2]) {
        assertClose(results[k].out, results[0].out, 1e-9, `form ${k} output`, 1e-9);
        results[0].grads.forEach((g, i) =>
          assertClose(results[k].grads[i], g, 1e-8, `form ${k} gradient ${i}`, 1e-8),
        );
      }
    });
  }
  for (const c of cases) {
    it(`a prompt prefilled in pieces (chunked scan from a cached state) matches one pass ${JSON.stringify(c)}`, () => {
      const mixer = mixerCase(c);
      for (const [, p] of mixer.namedParameters()) {
        const v = arr(p).map((x) => x + rng.normal(0, 0.3));
        p.backend.write(p.buffer, Float64Array.from(v));
      }
      const u = randn(rng, [2, c.T, c.dModel]);
      noGrad(() => {
        const whole = arr(mixer.forward(u).out);
        // pieces of 3, 1, 5, ... tokens: the first fills an empty cache, later ones of more than
        // one token continue it through the chunked scan, single tokens through the recurrence
        const cache = new SsmCache();
        const parts: number[][] = [];
        const lens = [3, 1, 5, 2, 7];
        for (let pos = 0, i = 0; pos < c.T; i++) {
          const len = Math.min(lens[i % lens.length], c.T - pos);
          const piece = T.slice(u, 1, pos, pos + len);
          parts.push(arr(mixer.forward(piece, { cache }).out));
          pos += len;
        }
        // (B, T, D) from pieces (B, len, D): reassemble per batch row
        const d = c.dModel;
        const got: number[] = [];
        for (let b = 0; b < 2; b++) {
          for (const part of parts) {
            const len = part.length / (2 * d);
            got.push(...part.slice(b * len * d, (b + 1) * len * d));
          }
        }
        assertClose(got, whole, 1e-9, 'pieces vs one pass', 1e-9);
        assert.equal(cache.length, c.T);
        cache.dispose();
      });
    });
  }
  it('rejects dimensions that do not divide, naming the field', () => {
    assert.throws(
      () =>
        mixerCase({ dModel: 8, dState: 4, nQk: 3, nV: 4, expand: 1, chunk: 4, act: 'identity', bias: false }),
      /n_qk_heads \(3\) must divide n_v_heads \(4\)/,
    );
    assert.throws(
      () =>
        mixerCase({ dModel: 8, dState: 4, nQk: 1, nV: 3, expand: 1, chunk: 4, act: 'identity', bias: false }),
      /n_v_heads \(3\) must divide d_inner \(8/,
    );
  });
});

describe('teacher -> student transfer', { skip }, () => {
  const fixtures = ['llama-tied', 'llama-untied', 'phi', 'gpt2'];
  for (const name of fixtures) {
    it(`${name}: shapes, bit-identical copies, and M = causal Q K^T / sqrt(d) at alpha = 1, D = 0`, () => {
      const { model: teacher } = loadModel(path.join(SHARED, 'fixtures/reference', name));
      const student = transferStudent(teacher, { alphaInit: 1, dInit: 0 });
      const tp = teacher.stateDict();
      const sp = student.stateDict();
      const pairs: [string, string][] =
        name === 'gpt2'
          ? [
              ['transformer.wte.weight', 'backbone.embedding.weight'],
              ['transformer.h.1.ln_2.bias', 'backbone.layers.1.post_attention_layernorm.bias'],
            ]
          : name === 'phi'
            ? [
                ['model.embed_tokens.weight', 'backbone.embedding.weight'],
                ['model.layers.1.mlp.fc2.weight', 'backbone.layers.1.mlp.fc2.weight'],
                ['lm_head.bias', 'lm_head.bias'],
              ]
            : [
                ['model.embed_tokens.weight', 'backbone.embedding.weight'],
                ['model.layers.0.mlp.gate_proj.weight', 'backbone.layers.0.mlp.gate_proj.weight'],
                ['model.norm.weight', 'backbone.final_layernorm.weight'],
              ];
      for (const [t, s] of pairs) assert.deepEqual(arr(sp.get(s)!), arr(tp.get(t)!), `${t} -> ${s}`);
      const zb = arr(sp.get('backbone.layers.0.mixer.z_bias')!);
      assertClose([zb[0] / (1 + Math.exp(-zb[0]))], [1], 1e-6, 'silu(z_bias)');
      assert.equal(zb[0], Math.fround(Z_BIAS_OPEN));
      // the identity: the student's matrix on the normalized input = q k^T of the teacher
      noGrad(() =>
        scope(() => {
          const ids = tensor([3, 17, 44, 100, 7, 250, 9, 31], [1, 8], 'i32');
          const r = teacher.forward(ids, { capture: { layerInputs: true } });
          const x = r.captured.layerInputs![1];
          const block = student.blocks[1];
          const n = block.input_layernorm.forward(x);
          const M = (block.mixer as DiscreteMamba2).materialize(n); // (1, H, T, T)
          const H = M.shape[1];
          const tb = teacher.blocks[1] as unknown as Record<string, T.Tensor & Record<string, never>>;
          void tb;
          // q and k from the teacher's own projections on the same input
          const sd = student.stateDict();
          const w = sd.get('backbone.layers.1.mixer.in_proj.weight')!;
          void w;
          const [q, k] = teacherQK(teacher, name, n);
          const hd = q.shape[2] / H;
          const qh = T.permute(T.reshape(q, [1, 8, H, hd]), [0, 2, 1, 3]);
          const kh = T.permute(T.reshape(k, [1, 8, H, hd]), [0, 2, 1, 3]);
          const qk = T.causalMask(T.scale(T.matmul(qh, kh, { transB: true }), 1 / Math.sqrt(hd)), 0);
          assertClose(arr(M), arr(qk), 2e-4, `${name} mixing matrix vs QK^T`, 1e-4);
        }),
      );
    });
  }
  it('hybrids keep the teacher attention in listed layers and decode recurrently like the full forward', () => {
    const { model: teacher } = loadModel(path.join(SHARED, 'fixtures/reference/llama-tied'));
    const student = transferStudent(teacher, { attentionLayers: [1], alphaInit: 0.9 });
    assert.equal(student.blocks[0].mixerKind, 'ssm');
    assert.equal(student.blocks[1].mixerKind, 'attention');
    assert.deepEqual(
      arr(student.stateDict().get('backbone.layers.1.self_attn.k_proj.weight')!),
      arr(teacher.stateDict().get('model.layers.1.self_attn.k_proj.weight')!),
    );
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'mohawk-hybrid-'));
    saveModel(dir, student);
    const loaded = loadModel(dir).model as StudentLM;
    const ids = [5, 9, 100, 3, 77, 12, 400, 8, 9, 10, 11];
    const full = noGrad(() =>
      scope(() => loaded.forward(tensor(ids, [1, ids.length], 'i32')).logits.toArray()),
    );
    assertClose(
      arr(noGrad(() => student.forward(tensor(ids, [1, ids.length], 'i32')).logits)),
      Array.from(full),
      1e-6,
      'saved and loaded',
    );
    const cache = loaded.createCache(1);
    const steps: number[] = [];
    noGrad(() => {
      let pos = 0;
      for (const len of [4, 1, 1, 3, 1, 1]) {
        steps.push(
          ...scope(() =>
            loaded.forward(tensor(ids.slice(pos, pos + len), [1, len], 'i32'), { cache }).logits.toArray(),
          ),
        );
        pos += len;
      }
    });
    cache.dispose();
    assertClose(steps, Array.from(full), 1e-4, 'recurrent decoding vs full forward');
    const last = noGrad(() =>
      scope(() =>
        loaded.forward(tensor(ids, [1, ids.length], 'i32'), { lastLogitsOnly: true }).logits.toArray(),
      ),
    );
    assert.equal(last.length, full.length / ids.length);
    assertClose(
      Array.from(last),
      Array.from(full.slice(full.length - last.length)),
      1e-6,
      'last logits only',
    );
  });
});

/** q and k (1, T, H*hd) of layer 1 of a fixture teacher on a normalized input, kv heads expanded */
function teacherQK(
  teacher: import('../src/models/types.js').CausalLM,
  name: string,
  n: Tensor,
): [Tensor, Tensor] {
  const sd = teacher.stateDict();
  const lin = (w: string, b: string | null, transposeConv = false) => {
    const W = sd.get(w)!;
    const y = transposeConv ? T.matmul(n, W) : T.matmul(n, W, { transB: true });
    return b ? T.add(y, sd.get(b)!) : y;
  };
  if (name === 'gpt2') {
    const qkv = lin('transformer.h.1.attn.c_attn.weight', 'transformer.h.1.attn.c_attn.bias', true);
    const [q, k] = T.split(qkv, [64, 64, 64], -1);
    return [q, k];
  }
  const p = 'model.layers.1.self_attn.';
  const bias = name === 'phi';
  const q = lin(p + 'q_proj.weight', bias ? p + 'q_proj.bias' : null);
  let k = lin(p + 'k_proj.weight', bias ? p + 'k_proj.bias' : null);
  if (k.shape[2] !== q.shape[2]) {
    // grouped-query: repeat each kv head for its query heads
    const hd = 8;
    const kv = k.shape[2] / hd;
    const per = q.shape[2] / hd / kv;
    const k4 = T.reshape(k, [1, k.shape[1], kv, 1, hd]);
    k = T.reshape(T.expand(k4, [1, k.shape[1], kv, per, hd]), [1, k.shape[1], q.shape[2]]);
  }
  return [q, k];
}

describe('no-grad forward memory', { skip }, () => {
  it('holds one block of intermediates at a time: the peak does not grow with depth', () => {
    const { model: teacher } = loadModel(path.join(SHARED, 'fixtures/reference/llama-tied'));
    const peakOf = (layers: number) => {
      const s = transferStudent(teacher, { alphaInit: 0.9 });
      const m = new StudentLM({ ...s.config, nLayer: layers });
      const be = T.getBackend();
      return noGrad(() =>
        scope(() => {
          const ids = tensor(
            Int32Array.from({ length: 4 * 64 }, (_, i) => (i * 7) % 100),
            [4, 64],
            'i32',
          );
          const base = be.memoryStats().liveBytes;
          be.resetPeak();
          scope(() => void m.forward(ids, { lastLogitsOnly: true }));
          return be.memoryStats().peakBytes - base;
        }),
      );
    };
    const p2 = peakOf(2);
    const p8 = peakOf(8);
    // every block's intermediates held until the end would make p8 about 4x p2
    assert.ok(p8 < 1.3 * p2, `peak with 8 blocks ${p8} bytes vs 2 blocks ${p2}`);
  });
});

describe('training forward memory', { skip }, () => {
  it('graph scopes free what backward does not read: same gradients, lower peak', () => {
    const { model: teacher } = loadModel(path.join(SHARED, 'fixtures/reference/llama-tied'));
    const s = transferStudent(teacher, { alphaInit: 0.9 });
    const m = new StudentLM({ ...s.config, nLayer: 6 }, { rng: new Random(3) });
    const be = T.getBackend();
    const ids = tensor(
      Int32Array.from({ length: 4 * 64 }, (_, i) => (i * 7) % 100),
      [4, 64],
      'i32',
    );
    const run = (graphScopes: boolean) => {
      m.zeroGrad();
      const peak = scope(() => {
        const base = be.memoryStats().liveBytes;
        be.resetPeak();
        let logits: Tensor;
        if (graphScopes) logits = m.forward(ids).logits;
        else {
          // the same blocks called one after another in one scope: every intermediate stays
          let h = m.embed(ids);
          for (const b of m.blocks) h = b.forward(h).out;
          logits = m.head(h);
        }
        T.mean(T.square(logits)).backward(undefined, { freeGraph: true });
        return be.memoryStats().peakBytes - base;
      });
      const grads = m.namedParameters().map(([, p]) => arr(p.grad!));
      return { peak, grads };
    };
    const plain = run(false);
    const scoped = run(true);
    assert.deepEqual(scoped.grads, plain.grads);
    assert.ok(
      scoped.peak < 0.85 * plain.peak,
      `peak ${scoped.peak} bytes with graph scopes vs ${plain.peak}`,
    );
  });
});

describe('student configs and checkpoints: bad input', { skip }, () => {
  const base = () =>
    JSON.parse(fs.readFileSync(path.join(SHARED, 'fixtures/reference/phi-mamba/config.json'), 'utf8'));
  it('dimensions that do not divide name the field', () => {
    const c = base();
    c.Block1.core_input.n_v_heads = 5;
    assert.throws(
      () => buildModel(c, 'config.json'),
      /config\.json: Block1\.core_input\.n_v_heads \(5\) must divide d_inner \(64/,
    );
    const c2 = base();
    c2.Block1.core_input.n_qk_heads = 3;
    assert.throws(() => studentConfigFromJson(c2), /n_qk_heads \(3\) must divide n_v_heads \(4\)/);
    const c3 = base();
    c3.Block1.BlockType = 'modules.unknown';
    assert.throws(
      () => buildModel(c3, 'config.json'),
      /Block1\.BlockType "modules\.unknown" is not supported/,
    );
  });
  it('a checkpoint missing a mixer tensor names it', () => {
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'mohawk-bad-'));
    const { model } = loadModel(path.join(SHARED, 'fixtures/reference/phi-mamba'));
    const sd = model.stateDict();
    sd.delete('backbone.layers.1.mixer.D');
    fs.writeFileSync(path.join(dir, 'config.json'), JSON.stringify(base()));
    // write the checkpoint without the tensor
    return import('../src/io/safetensors.js').then(({ writeSafetensors }) => {
      writeSafetensors(path.join(dir, 'model.safetensors'), sd);
      assert.throws(() => loadModel(dir), /model\.safetensors: missing tensor backbone\.layers\.1\.mixer\.D/);
    });
  });
});
