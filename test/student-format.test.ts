// The published Phi-Mamba formats both ways: the reference fixture as published (config.json +
// pytorch_model.bin), the hybrid layout (phi_attention Block sections, weights under
// mixer.self_attn.*, layers in numeric Block order), and the z_bias rule that lets the reference
// PyTorch code load mohawk's students with strict=True (docs/student-format.md).

import assert from 'node:assert/strict';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { describe, it } from 'node:test';
import { transferStudent } from '../src/distill/transfer.js';
import { tokenLogprobs } from '../src/eval/score.js';
import { readCheckpoint } from '../src/io/safetensors.js';
import { buildModel, loadModel, saveModel } from '../src/models/load.js';
import type { StudentLM } from '../src/models/phi-mamba.js';
import { noGrad, tensor, type Tensor } from '../src/tensor/index.js';
import { assertClose, SHARED } from './helpers.js';

const skip = fs.existsSync(SHARED) ? false : `${SHARED} not found`;
const tmp = () => fs.mkdtempSync(path.join(os.tmpdir(), 'mohawk-format-'));
const arr = (t: Tensor) => Array.from(t.toArray());
const IDS = [5, 9, 100, 3, 77, 12, 400, 8, 9, 10, 11];
const logits = (m: { forward(ids: Tensor): { logits: Tensor } }) =>
  noGrad(() => Array.from(m.forward(tensor(IDS, [1, IDS.length], 'i32')).logits.toArray()));

/** the mixer tensors the reference's Mixer registers (modules/mixers/discrete_mamba2.py) */
const referenceMixer = (bias: boolean) =>
  bias
    ? [
        'D',
        'conv1d.bias',
        'conv1d.weight',
        'in_proj.bias',
        'in_proj.weight',
        'out_proj.bias',
        'out_proj.weight',
      ]
    : ['D', 'conv1d.bias', 'conv1d.weight', 'in_proj.weight', 'out_proj.weight', 'z_bias'];

describe('published Phi-Mamba formats', { skip }, () => {
  it('the reference checkpoint as published (config.json + pytorch_model.bin) gives the reference log-probs', () => {
    const exp = JSON.parse(
      fs.readFileSync(path.join(SHARED, 'fixtures/reference/phi-mamba/expected.json'), 'utf8'),
    );
    const { model } = loadModel(path.join(import.meta.dirname, 'fixtures/torch/phi-mamba'));
    exp.ids.forEach((ids: number[], s: number) =>
      assertClose(tokenLogprobs(model, ids), exp.logprobs[s], 1e-4, `logprobs[${s}]`),
    );
    model.dispose();
  });

  it('students save as the reference builds them: z_bias exactly when bias is false, folded into in_proj.bias otherwise', () => {
    const { model: teacher } = loadModel(path.join(SHARED, 'fixtures/reference/phi'));
    for (const bias of [true, false]) {
      const student = transferStudent(teacher, { alphaInit: 0.9 }) as StudentLM;
      if (student.config.mixer.bias !== bias) {
        // the same student with the other bias setting (transfer picks the teacher's)
        const json = student.configJson() as Record<string, Record<string, Record<string, unknown>>>;
        json.Block1.core_input.bias = bias;
        const other = buildModel(json, 'config.json', {}) as StudentLM;
        const sd = other.stateDict();
        for (const [n, t] of student.stateDict())
          if (sd.has(n)) sd.get(n)!.backend.write(sd.get(n)!.buffer, t.read());
        student.dispose();
        check(other, bias);
        continue;
      }
      check(student, bias);
    }
    function check(student: StudentLM, bias: boolean) {
      const zb = arr(student.stateDict().get('backbone.layers.0.mixer.z_bias')!);
      assert.ok(
        zb.some((v) => v !== 0),
        'z_bias is nonzero after transfer (the gate starts open)',
      );
      const dir = tmp();
      saveModel(dir, student);
      const names = [...readCheckpoint(dir).entries.keys()];
      for (const l of [0, 1]) {
        const prefix = `backbone.layers.${l}.mixer.`;
        assert.deepEqual(
          names
            .filter((n) => n.startsWith(prefix))
            .map((n) => n.slice(prefix.length))
            .sort(),
          referenceMixer(bias),
          `bias ${bias}, layer ${l}`,
        );
      }
      const back = loadModel(dir).model;
      assertClose(logits(back), logits(student), 1e-5, `bias ${bias}: saved and loaded`, 1e-5);
      back.dispose();
      student.dispose();
    }
  });

  it('hybrids save in the published layout (phi_attention sections in order, mixer.self_attn.*) and load back', () => {
    const { model: teacher } = loadModel(path.join(SHARED, 'fixtures/reference/phi'));
    const nLayer = teacher.info.nLayers;
    assert.ok(nLayer >= 2);
    const student = transferStudent(teacher, { attentionLayers: [1], alphaInit: 0.9 });
    const dir = tmp();
    saveModel(dir, student);
    const cfg = JSON.parse(fs.readFileSync(path.join(dir, 'config.json'), 'utf8'));
    const blocks = Object.keys(cfg).filter((k) => k.startsWith('Block'));
    assert.deepEqual(
      blocks.map((k) => [cfg[k].CoreType, cfg[k].n_layers, cfg[k].layers]),
      [
        ['modules.mixers.discrete_mamba2', 1, undefined],
        ['modules.mixers.phi_attention', 1, undefined],
        ...(nLayer > 2 ? [['modules.mixers.discrete_mamba2', nLayer - 2, undefined]] : []),
      ],
    );
    const names = [...readCheckpoint(dir).entries.keys()];
    assert.ok(names.includes('backbone.layers.1.mixer.self_attn.q_proj.weight'));
    assert.ok(names.includes('backbone.layers.1.mixer.self_attn.dense.bias'));
    assert.ok(!names.some((n) => /^backbone\.layers\.1\.self_attn\./.test(n)));
    const back = loadModel(dir).model;
    assert.deepEqual(
      back.blocks.map((b) => b.mixerKind),
      student.blocks.map((b) => b.mixerKind),
    );
    assertClose(logits(back), logits(student), 1e-5, 'hybrid saved and loaded', 1e-5);
    back.dispose();
    student.dispose();
  });

  it('Block sections take their layers in numeric order (Block10 after Block2), whatever the key order', () => {
    const mixer = {
      BlockType: 'modules.phi_block',
      block_input: { resid_dropout: 0 },
      CoreType: 'modules.mixers.discrete_mamba2',
      core_input: {
        d_state: 8,
        n_v_heads: 4,
        n_qk_heads: 4,
        d_conv: 4,
        expand: 1,
        chunk_size: 8,
        bias: false,
      },
    };
    const attention = {
      BlockType: 'modules.phi_block',
      block_input: { resid_dropout: 0 },
      CoreType: 'modules.mixers.phi_attention',
      core_input: { hidden_size: 32, num_attention_heads: 4 },
    };
    // 11 sections of one layer each; attention in Block2, Block10 (layers 1 and 9)
    const sections: Record<string, object> = {};
    for (let k = 11; k >= 1; k--)
      sections[`Block${k}`] = { n_layers: 1, ...(k === 2 || k === 10 ? attention : mixer) };
    const json = {
      ...sections,
      LanguageModel: { input: { vocab_size: 64, pad_vocab_size_multiple: 8 } },
      MixerModel: { input: { d_model: 32, n_layer: 11, lm_head_prenorm: 'layer' } },
    };
    const m = buildModel(json, 'config.json', {}) as StudentLM;
    assert.deepEqual(
      m.blocks.map((b, i) => (b.mixerKind === 'attention' ? i : -1)).filter((i) => i >= 0),
      [1, 9],
    );
    const a = m.config.attentionLayers.get(9)!;
    assert.deepEqual([a.nHeads, a.headDim, a.rotaryDim, a.qkvBias, a.outBias], [4, 8, 4, true, true]);
    m.dispose();
    assert.throws(
      () => buildModel({ ...json, MixerModel: { input: { d_model: 32, n_layer: 12 } } }, 'config.json', {}),
      /config\.json: the Block sections hold 11 layers, MixerModel\.input\.n_layer is 12/,
    );
    assert.throws(
      () =>
        buildModel(
          { ...json, Block3: { ...mixer, n_layers: 1, core_input: { ...mixer.core_input, d_state: 16 } } },
          'config.json',
          {},
        ),
      /config\.json: Block3: only one discrete_mamba2 setting is supported/,
    );
  });
});
