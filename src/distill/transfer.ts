// Teacher -> student: a student with the teacher's shape (heads = the teacher's query heads,
// d_state = head size), embeddings, norms, MLPs and head copied bit for bit, and the SSM mixer
// initialized from attention: Q -> C, K -> B (grouped K/V heads expanded), V -> x, O -> out_proj,
// the conv as identity, the gate open, the decay set through the bias of the `a` rows.
//
// The identity this init guarantees (tested): with alpha = 1 and D = 0 the student's mixing
// matrix of a layer equals the teacher's causal scaled scores Q K^T / sqrt(d) of that layer
// before the softmax and without the rotary embedding, computed on the same normalized input.

import { cast, noGrad, tensor, type Tensor } from '../tensor/index.js';
import type { CausalLM } from '../models/types.js';
import { Gpt2LMHeadModel } from '../models/gpt2.js';
import { LlamaForCausalLM } from '../models/llama.js';
import { PhiForCausalLM } from '../models/phi.js';
import { StudentLM, type AttentionCore, type BlockStyle, type StudentConfig } from '../models/phi-mamba.js';
import { Random } from '../util/random.js';

export interface TransferOptions {
  /** layers that keep the teacher's attention (a hybrid) */
  attentionLayers?: number[];
  /** SSM state size; default the teacher's head size (required for the attention-derived init) */
  dState?: number;
  chunkSize?: number;
  /** initial decay alpha = sigmoid(-a) for every token (1 = no decay) */
  alphaInit?: number;
  /** D, the skip connection per head */
  dInit?: number;
  /**
   * 'attention' derives the mixer from attention; 'random' leaves in_proj/out_proj random with
   * the gate open and the decay set; 'paper' builds the reference's fresh mixer (PyTorch's
   * nn.Linear init U(-1/sqrt(fan_in), 1/sqrt(fan_in)) for in_proj and out_proj, no projection
   * biases, z_bias 0, D 1) with the conv as identity (the paper's Section 5 / Appendix A)
   */
  mixerInit?: 'attention' | 'random' | 'paper';
  /** factor on C (default 1/sqrt(head size), so that M equals the attention's scaled scores) */
  scoreScale?: number;
  /** the class of the student's mixers (default 'ssd'); other classes keep their own init */
  mixerClass?: StudentConfig['mixerClass'];
  /** taps of the Toeplitz mixer's kernels */
  kernelLength?: number;
  /** copy the teacher's embeddings, norms, MLPs and head (default true) */
  copyWeights?: boolean;
  seed?: number;
}

/** silu(Z_BIAS_OPEN) = 1 to float precision: the gate starts open */
export const Z_BIAS_OPEN = 1.2784645427610737;

interface TeacherView {
  style: BlockStyle;
  dModel: number;
  nLayer: number;
  vocabSize: number;
  nHeads: number;
  nKvHeads: number;
  headDim: number;
  rotaryDim: number;
  ropeTheta: number;
  qkvBias: boolean;
  outBias: boolean;
  intermediateSize: number;
  activation: StudentConfig['activation'];
  mlpBias: boolean;
  normEps: number;
  lmHeadBias: boolean;
  tie: boolean;
  positions: number;
  /** student parameter name -> teacher tensor (already in the student's layout) */
  copies: (layer: number | null) => [string, Tensor][];
  /** per layer: q, k, v weights (rows = heads * headDim) and biases, o weight (out, in) and bias */
  attention: (layer: number) => {
    q: Tensor;
    k: Tensor;
    v: Tensor;
    qb: Tensor | null;
    kb: Tensor | null;
    vb: Tensor | null;
    o: Tensor;
    ob: Tensor | null;
  };
}

function sd(m: CausalLM): Map<string, Tensor> {
  return m.stateDict();
}

/** Conv1D (in, out) -> Linear (out, in) */
function transposed(t: Tensor): Tensor {
  const [r, c] = t.shape;
  const src = t.toArray();
  const out = new Float32Array(r * c);
  for (let i = 0; i < r; i++) for (let j = 0; j < c; j++) out[j * r + i] = src[i * c + j];
  return tensor(out, [c, r], t.dtype);
}

function rows(t: Tensor, start: number, end: number): Tensor {
  const [, c] = t.shape;
  const src = t.toArray();
  return t.ndim === 1
    ? tensor(src.slice(start, end), [end - start], t.dtype)
    : tensor(src.slice(start * c, end * c), [end - start, c], t.dtype);
}

function view(teacher: CausalLM): TeacherView {
  const p = sd(teacher);
  const get = (n: string) => {
    const t = p.get(n);
    if (!t) throw new Error(`transfer: teacher has no tensor ${n}`);
    return t;
  };
  if (teacher instanceof LlamaForCausalLM) {
    const c = teacher.config;
    return {
      style: 'llama',
      dModel: c.hiddenSize,
      nLayer: c.numLayers,
      vocabSize: c.vocabSize,
      nHeads: c.numHeads,
      nKvHeads: c.numKvHeads,
      headDim: c.headDim,
      rotaryDim: c.headDim,
      ropeTheta: c.ropeTheta,
      qkvBias: c.attentionBias,
      outBias: c.attentionBias,
      intermediateSize: c.intermediateSize,
      activation: 'silu',
      mlpBias: c.mlpBias,
      normEps: c.rmsNormEps,
      lmHeadBias: false,
      tie: c.tieWordEmbeddings,
      positions: 0,
      copies: (l) => {
        if (l === null) {
          const out: [string, Tensor][] = [
            ['backbone.embedding.weight', get('model.embed_tokens.weight')],
            ['backbone.final_layernorm.weight', get('model.norm.weight')],
          ];
          if (!c.tieWordEmbeddings) out.push(['lm_head.weight', get('lm_head.weight')]);
          return out;
        }
        const t = `model.layers.${l}.`;
        const s = `backbone.layers.${l}.`;
        const names = [
          'input_layernorm.weight',
          'post_attention_layernorm.weight',
          'mlp.gate_proj.weight',
          'mlp.up_proj.weight',
          'mlp.down_proj.weight',
        ];
        if (c.mlpBias) names.push('mlp.gate_proj.bias', 'mlp.up_proj.bias', 'mlp.down_proj.bias');
        return names.map((n) => [s + n, get(t + n)]);
      },
      attention: (l) => {
        const a = `model.layers.${l}.self_attn.`;
        const b = c.attentionBias;
        return {
          q: get(a + 'q_proj.weight'),
          k: get(a + 'k_proj.weight'),
          v: get(a + 'v_proj.weight'),
          qb: b ? get(a + 'q_proj.bias') : null,
          kb: b ? get(a + 'k_proj.bias') : null,
          vb: b ? get(a + 'v_proj.bias') : null,
          o: get(a + 'o_proj.weight'),
          ob: b ? get(a + 'o_proj.bias') : null,
        };
      },
    };
  }
  if (teacher instanceof PhiForCausalLM) {
    const c = teacher.config;
    return {
      style: 'phi',
      dModel: c.hiddenSize,
      nLayer: c.numLayers,
      vocabSize: c.vocabSize,
      nHeads: c.numHeads,
      nKvHeads: c.numKvHeads,
      headDim: c.headDim,
      rotaryDim: c.rotaryDim,
      ropeTheta: c.ropeTheta,
      qkvBias: true,
      outBias: true,
      intermediateSize: c.intermediateSize,
      activation: c.hiddenAct,
      mlpBias: true,
      normEps: c.layerNormEps,
      lmHeadBias: true,
      tie: false,
      positions: 0,
      copies: (l) => {
        if (l === null) {
          return [
            ['backbone.embedding.weight', get('model.embed_tokens.weight')],
            ['backbone.final_layernorm.weight', get('model.final_layernorm.weight')],
            ['backbone.final_layernorm.bias', get('model.final_layernorm.bias')],
            ['lm_head.weight', get('lm_head.weight')],
            ['lm_head.bias', get('lm_head.bias')],
          ];
        }
        const t = `model.layers.${l}.`;
        const s = `backbone.layers.${l}.`;
        return [
          'input_layernorm.weight',
          'input_layernorm.bias',
          'mlp.fc1.weight',
          'mlp.fc1.bias',
          'mlp.fc2.weight',
          'mlp.fc2.bias',
        ].map((n) => [s + n, get(t + n)]);
      },
      attention: (l) => {
        const a = `model.layers.${l}.self_attn.`;
        return {
          q: get(a + 'q_proj.weight'),
          k: get(a + 'k_proj.weight'),
          v: get(a + 'v_proj.weight'),
          qb: get(a + 'q_proj.bias'),
          kb: get(a + 'k_proj.bias'),
          vb: get(a + 'v_proj.bias'),
          o: get(a + 'dense.weight'),
          ob: get(a + 'dense.bias'),
        };
      },
    };
  }
  if (teacher instanceof Gpt2LMHeadModel) {
    const c = teacher.config;
    const hd = c.nEmbd / c.nHead;
    return {
      style: 'gpt2',
      dModel: c.nEmbd,
      nLayer: c.nLayer,
      vocabSize: c.vocabSize,
      nHeads: c.nHead,
      nKvHeads: c.nHead,
      headDim: hd,
      rotaryDim: 0,
      ropeTheta: 10000,
      qkvBias: true,
      outBias: true,
      intermediateSize: c.nInner,
      activation: c.activation,
      mlpBias: true,
      normEps: c.layerNormEpsilon,
      lmHeadBias: false,
      tie: true,
      positions: c.nPositions,
      copies: (l) => {
        if (l === null) {
          return [
            ['backbone.embedding.weight', get('transformer.wte.weight')],
            ['backbone.position_embedding.weight', get('transformer.wpe.weight')],
            ['backbone.final_layernorm.weight', get('transformer.ln_f.weight')],
            ['backbone.final_layernorm.bias', get('transformer.ln_f.bias')],
          ];
        }
        const t = `transformer.h.${l}.`;
        const s = `backbone.layers.${l}.`;
        return [
          [s + 'input_layernorm.weight', get(t + 'ln_1.weight')],
          [s + 'input_layernorm.bias', get(t + 'ln_1.bias')],
          [s + 'post_attention_layernorm.weight', get(t + 'ln_2.weight')],
          [s + 'post_attention_layernorm.bias', get(t + 'ln_2.bias')],
          [s + 'mlp.fc1.weight', transposed(get(t + 'mlp.c_fc.weight'))],
          [s + 'mlp.fc1.bias', get(t + 'mlp.c_fc.bias')],
          [s + 'mlp.fc2.weight', transposed(get(t + 'mlp.c_proj.weight'))],
          [s + 'mlp.fc2.bias', get(t + 'mlp.c_proj.bias')],
        ];
      },
      attention: (l) => {
        const t = `transformer.h.${l}.attn.`;
        const w = transposed(get(t + 'c_attn.weight')); // (3D, D)
        const b = get(t + 'c_attn.bias');
        const D = c.nEmbd;
        return {
          q: rows(w, 0, D),
          k: rows(w, D, 2 * D),
          v: rows(w, 2 * D, 3 * D),
          qb: rows(b, 0, D),
          kb: rows(b, D, 2 * D),
          vb: rows(b, 2 * D, 3 * D),
          o: transposed(get(t + 'c_proj.weight')),
          ob: get(t + 'c_proj.bias'),
        };
      },
    };
  }
  throw new Error(`transfer: teacher family "${teacher.info.family}" is not supported (llama, phi, gpt2)`);
}

/** The student config that follows a teacher's shape. */
export function studentConfigFor(teacher: CausalLM, opts: TransferOptions = {}): StudentConfig {
  const v = view(teacher);
  const attentionLayers = new Map<number, AttentionCore>();
  for (const l of opts.attentionLayers ?? []) {
    if (!(Number.isInteger(l) && l >= 0 && l < v.nLayer))
      throw new Error(`transfer: attention layer ${l} is not a layer of the teacher (0..${v.nLayer - 1})`);
    attentionLayers.set(l, {
      nHeads: v.nHeads,
      nKvHeads: v.nKvHeads,
      headDim: v.headDim,
      rotaryDim: v.rotaryDim,
      ropeTheta: v.ropeTheta,
      qkvBias: v.qkvBias,
      outBias: v.outBias,
    });
  }
  return {
    vocabSize: v.vocabSize,
    padVocabSizeMultiple: 8,
    dModel: v.dModel,
    nLayer: v.nLayer,
    style: v.style,
    normEps: v.normEps,
    intermediateSize: v.intermediateSize,
    activation: v.activation,
    mlpBias: v.mlpBias,
    lmHeadBias: v.lmHeadBias,
    tieEmbeddings: v.tie,
    maxPositionEmbeddings: v.positions,
    mixer: {
      dState: opts.dState ?? v.headDim,
      nQkHeads: v.nHeads,
      nVHeads: v.nHeads,
      dConv: 4,
      convBias: true,
      expand: (v.nHeads * v.headDim) / v.dModel,
      chunkSize: opts.chunkSize ?? 64,
      activation: 'identity',
      // the a rows need a bias to set the decay; q/k/v biases of the teacher land there too;
      // the paper's mixer has none (the reference's config: bias false)
      bias: opts.mixerInit !== 'paper',
    },
    ...(opts.mixerClass && opts.mixerClass !== 'ssd'
      ? { mixerClass: opts.mixerClass, kernelLength: opts.kernelLength }
      : {}),
    attentionLayers,
    bosTokenId: teacher.info.bosTokenId,
    eosTokenId: teacher.info.eosTokenId,
  };
}

/** q/k/v rows (kvHeads * hd, D) -> (heads * hd, D), each query head taking its group's rows */
function expandHeads(
  w: Float32Array | Float64Array | Int32Array,
  kvHeads: number,
  heads: number,
  hd: number,
  cols: number,
): Float32Array {
  const out = new Float32Array(heads * hd * cols);
  const per = heads / kvHeads;
  for (let h = 0; h < heads; h++) {
    const g = Math.floor(h / per);
    out.set(w.subarray(g * hd * cols, (g + 1) * hd * cols), h * hd * cols);
  }
  return out;
}

/** Build a student from a teacher (see the file comment). */
export function transferStudent(teacher: CausalLM, opts: TransferOptions = {}): StudentLM {
  const v = view(teacher);
  const cfg = studentConfigFor(teacher, opts);
  const student = new StudentLM(cfg, { rng: new Random(opts.seed ?? 0) });
  const params = student.stateDict();
  const setParam = (name: string, data: ArrayLike<number>) => {
    const p = params.get(name);
    if (!p) throw new Error(`transfer: student has no parameter ${name}`);
    if (data.length !== p.size)
      throw new Error(`transfer: ${name} needs ${p.size} values, got ${data.length}`);
    p.backend.write(p.buffer, p.dtype === 'f64' ? Float64Array.from(data) : Float32Array.from(data));
  };
  const copy = (name: string, src: Tensor) => {
    const p = params.get(name);
    if (!p) throw new Error(`transfer: student has no parameter ${name}`);
    if (p.size === src.size) {
      noGrad(() => {
        const c = cast(src, p.dtype);
        p.backend.copyStrided(c.buffer, 0, [1], p.buffer, 0, [1], [p.size], false);
        c.dispose();
      });
      return;
    }
    // padded vocabulary rows: copy the teacher's rows, leave the padding at zero
    const data = new Float32Array(p.size);
    data.set(src.toArray());
    setParam(name, data);
  };
  noGrad(() => {
    if (opts.copyWeights ?? true) {
      for (const [n, t] of v.copies(null)) copy(n, t);
      for (let l = 0; l < v.nLayer; l++) for (const [n, t] of v.copies(l)) copy(n, t);
    }
    for (let l = 0; l < v.nLayer; l++) {
      const s = `backbone.layers.${l}.`;
      const a = v.attention(l);
      if (cfg.attentionLayers.has(l)) {
        const on = v.style === 'phi' ? 'dense' : 'o_proj';
        copy(s + 'self_attn.q_proj.weight', a.q);
        copy(s + 'self_attn.k_proj.weight', a.k);
        copy(s + 'self_attn.v_proj.weight', a.v);
        copy(s + `self_attn.${on}.weight`, a.o);
        if (cfg.attentionLayers.get(l)!.qkvBias) {
          copy(s + 'self_attn.q_proj.bias', a.qb!);
          copy(s + 'self_attn.k_proj.bias', a.kb!);
          copy(s + 'self_attn.v_proj.bias', a.vb!);
        }
        if (cfg.attentionLayers.get(l)!.outBias) copy(s + `self_attn.${on}.bias`, a.ob!);
        continue;
      }
      if ((cfg.mixerClass ?? 'ssd') === 'ssd') initMixer(s + 'mixer.', cfg, v, a, opts, setParam, params);
    }
  });
  return student;
}

function initMixer(
  prefix: string,
  cfg: StudentConfig,
  v: TeacherView,
  a: ReturnType<TeacherView['attention']>,
  opts: TransferOptions,
  setParam: (name: string, data: ArrayLike<number>) => void,
  params: Map<string, Tensor>,
): void {
  const m = cfg.mixer;
  const H = m.nVHeads;
  const N = m.dState;
  const dInner = m.expand * cfg.dModel;
  const D = cfg.dModel;
  const convDim = dInner + 2 * m.nQkHeads * N;
  if (opts.mixerInit === 'paper') {
    initPaperMixer(prefix, convDim, m.dConv, params, setParam, opts);
    return;
  }
  const alpha = opts.alphaInit ?? 1;
  // a = -logit(alpha) so that sigmoid(-a) = alpha; alpha = 1 -> a very negative constant
  const aBias = alpha >= 1 ? -40 : Math.log((1 - alpha) / alpha);
  const attentionInit = (opts.mixerInit ?? 'attention') === 'attention';
  if (attentionInit && N !== v.headDim) {
    throw new Error(
      `transfer: the attention-derived init needs d_state (${N}) = the teacher's head size (${v.headDim}); use mixerInit "random"`,
    );
  }
  const inProj = params.get(prefix + 'in_proj.weight')!;
  const w = Float32Array.from(inProj.toArray());
  const bias = new Float32Array(inProj.shape[0]);
  const xOff = 0;
  const bOff = dInner;
  const cOff = dInner + m.nQkHeads * N;
  const zOff = dInner + 2 * m.nQkHeads * N;
  const aOff = zOff + dInner;
  if (attentionInit) {
    const hd = v.headDim;
    const put = (off: number, rowsData: Float32Array, biasData: Float32Array | null) => {
      w.set(rowsData, off * D);
      if (biasData) bias.set(biasData, off);
    };
    const expandBias = (b: Tensor | null, kv: number) => (b ? expandHeads(b.toArray(), kv, H, hd, 1) : null);
    put(xOff, expandHeads(a.v.toArray(), v.nKvHeads, H, hd, D), expandBias(a.vb, v.nKvHeads));
    put(bOff, expandHeads(a.k.toArray(), v.nKvHeads, H, hd, D), expandBias(a.kb, v.nKvHeads));
    // C carries the attention's 1/sqrt(head size) scale: M = the teacher's pre-softmax scores
    const sc = opts.scoreScale ?? 1 / Math.sqrt(hd);
    put(
      cOff,
      Float32Array.from(a.q.toArray(), (x) => x * sc),
      a.qb ? Float32Array.from(a.qb.toArray(), (x) => x * sc) : null,
    );
    setParam(prefix + 'out_proj.weight', a.o.toArray());
    const ob = params.get(prefix + 'out_proj.bias');
    if (ob) setParam(prefix + 'out_proj.bias', a.ob ? a.ob.toArray() : new Float32Array(D));
  }
  // gate open: z rows zero, z_bias = Z_BIAS_OPEN; decay through the a rows' bias
  w.fill(0, zOff * D, aOff * D);
  w.fill(0, aOff * D, (aOff + H) * D);
  bias.fill(aBias, aOff, aOff + H);
  setParam(prefix + 'in_proj.weight', w);
  if (params.has(prefix + 'in_proj.bias')) setParam(prefix + 'in_proj.bias', bias);
  setParam(prefix + 'z_bias', new Float32Array(dInner).fill(Z_BIAS_OPEN));
  setParam(prefix + 'D', new Float32Array(H).fill(opts.dInit ?? 0));
  // conv as identity: the last tap 1, the others 0, bias 0
  const conv = new Float32Array(convDim * m.dConv);
  for (let c = 0; c < convDim; c++) conv[c * m.dConv + m.dConv - 1] = 1;
  setParam(prefix + 'conv1d.weight', conv);
  if (params.has(prefix + 'conv1d.bias')) setParam(prefix + 'conv1d.bias', new Float32Array(convDim));
}

/** The reference's fresh mixer (see TransferOptions.mixerInit 'paper'); the conv as identity. */
function initPaperMixer(
  prefix: string,
  convDim: number,
  dConv: number,
  params: Map<string, Tensor>,
  setParam: (name: string, data: ArrayLike<number>) => void,
  opts: TransferOptions,
): void {
  // one generator per layer, so that a layer's init does not depend on the others
  const layer = Number(/layers\.(\d+)\./.exec(prefix)?.[1] ?? 0);
  const rng = new Random((opts.seed ?? 0) * 7919 + layer + 1);
  for (const n of ['in_proj.weight', 'out_proj.weight']) {
    const [rowsN, fanIn] = params.get(prefix + n)!.shape;
    const bound = 1 / Math.sqrt(fanIn);
    setParam(
      prefix + n,
      Float32Array.from({ length: rowsN * fanIn }, () => (2 * rng.uniform() - 1) * bound),
    );
  }
  const dim = params.get(prefix + 'z_bias')!.size;
  setParam(prefix + 'z_bias', new Float32Array(dim));
  setParam(prefix + 'D', new Float32Array(params.get(prefix + 'D')!.size).fill(1));
  const conv = new Float32Array(convDim * dConv);
  for (let c = 0; c < convDim; c++) conv[c * dConv + dConv - 1] = 1;
  setParam(prefix + 'conv1d.weight', conv);
  if (params.has(prefix + 'conv1d.bias')) setParam(prefix + 'conv1d.bias', new Float32Array(convDim));
}
