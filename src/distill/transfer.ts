// Teacher -> student: a student with the teacher's shape (heads = the teacher's query heads,
// d_state = head size), embeddings, norms, MLPs and head copied bit for bit, and the SSM mixer
// initialized from attention: Q -> C, K -> B (grouped K/V heads expanded), V -> x, O -> out_proj,
// the conv as identity, the gate open, the decay set through the bias of the `a` rows.
//
// The identity this init guarantees (tested): with alpha = 1 and D = 0 the student's mixing
// matrix of a layer equals the teacher's causal scaled scores Q K^T / sqrt(d) of that layer
// before the softmax and without the rotary embedding, computed on the same normalized input
// (Gemma 2's query_pre_attn_scalar replaces d; Qwen3's q/k norms and soft-capping have no
// counterpart in the mixer and are left to stages 1-2).
//
// Everything family-specific comes through the teacher's distillation contract
// (models/family.ts): the student's shape, the weights it shares, the attention weights.

import { cast, noGrad, type Tensor } from '../tensor/index.js';
import type { AttentionWeights, DistillContract, StudentShape } from '../models/family.js';
import type { CausalLM } from '../models/types.js';
import { StudentLM, type AttentionCore, type StudentConfig } from '../models/phi-mamba.js';
import { innerDim } from '../nn/discrete-mamba2.js';
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
  /** factor on C (default the teacher's score scale, 1/sqrt(head size) for most, so that M equals its scaled scores) */
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

/** The teacher's side of the distillation contract, or an error naming the family. */
export function teacherContract(teacher: CausalLM): DistillContract {
  if (!teacher.distillContract)
    throw new Error(
      `transfer: model family "${teacher.info.family}" cannot be a teacher (no distillation contract)`,
    );
  return teacher.distillContract();
}

/** The student config that follows a teacher's shape. */
export function studentConfigFor(teacher: CausalLM, opts: TransferOptions = {}): StudentConfig {
  return studentConfigFromShape(teacherContract(teacher).studentShape(), opts);
}

/** The student config of a teacher's student shape (a family's, from a model or a config.json). */
export function studentConfigFromShape(
  teacherShape: StudentShape,
  opts: TransferOptions = {},
): StudentConfig {
  const { attention, nHeads, nKvHeads, headDim, ...shape } = teacherShape;
  void nKvHeads;
  const attentionLayers = new Map<number, AttentionCore>();
  for (const l of opts.attentionLayers ?? []) {
    if (!(Number.isInteger(l) && l >= 0 && l < shape.nLayer))
      throw new Error(
        `transfer: attention layer ${l} is not a layer of the teacher (0..${shape.nLayer - 1})`,
      );
    attentionLayers.set(l, attention(l));
  }
  return {
    ...shape,
    padVocabSizeMultiple: 8,
    mixer: {
      dState: opts.dState ?? headDim,
      nQkHeads: nHeads,
      nVHeads: nHeads,
      dConv: 4,
      convBias: true,
      expand: (nHeads * headDim) / shape.dModel,
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
  const contract = teacherContract(teacher);
  const shape = contract.studentShape();
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
    copyInto(p, src, name);
  };
  const copyInto = (p: Tensor, src: Tensor, name: string) => {
    if (p.size === src.size) {
      noGrad(() => {
        const c = cast(src, p.dtype);
        p.backend.copyStrided(c.buffer, 0, [1], p.buffer, 0, [1], [p.size], false);
        c.dispose();
      });
      return;
    }
    // padded vocabulary rows: copy the teacher's rows, leave the padding at zero
    if (src.size > p.size)
      throw new Error(`transfer: ${name} holds ${p.size} values, the teacher's ${src.size}`);
    const data = new Float32Array(p.size);
    data.set(src.toArray());
    p.backend.write(p.buffer, p.dtype === 'f64' ? Float64Array.from(data) : data);
  };
  noGrad(() => {
    if (opts.copyWeights ?? true) {
      for (const [n, t] of contract.sharedWeights(null)) copy(n, t);
      for (let l = 0; l < cfg.nLayer; l++) for (const [n, t] of contract.sharedWeights(l)) copy(n, t);
    }
    for (let l = 0; l < cfg.nLayer; l++) {
      const a = contract.attentionWeights(l);
      const attn = student.blocks[l].self_attn;
      if (attn) {
        // a hybrid layer keeps the teacher's attention: the same projections, bit for bit
        const put = (p: Tensor | null | undefined, src: Tensor | null | undefined, what: string) => {
          if (!p) return;
          if (!src) throw new Error(`transfer: the teacher's layer ${l} has no ${what}`);
          copyInto(p, src, `layer ${l} ${what}`);
        };
        put(attn.q_proj.weight, a.q, 'q weight');
        put(attn.k_proj.weight, a.k, 'k weight');
        put(attn.v_proj.weight, a.v, 'v weight');
        put(attn.o_proj.weight, a.o, 'output weight');
        put(attn.q_proj.bias, a.qBias, 'q bias');
        put(attn.k_proj.bias, a.kBias, 'k bias');
        put(attn.v_proj.bias, a.vBias, 'v bias');
        put(attn.o_proj.bias, a.oBias, 'output bias');
        put(attn.q_norm?.weight, a.qNorm, 'q norm');
        put(attn.k_norm?.weight, a.kNorm, 'k norm');
        continue;
      }
      if ((cfg.mixerClass ?? 'ssd') === 'ssd')
        initMixer(
          `backbone.layers.${l}.mixer.`,
          cfg,
          shape,
          a,
          shape.attention(l).scale,
          opts,
          setParam,
          params,
        );
    }
  });
  return student;
}

function initMixer(
  prefix: string,
  cfg: StudentConfig,
  v: StudentShape,
  a: AttentionWeights,
  /** the teacher layer's factor on q k^T (Gemma 2: query_pre_attn_scalar^-1/2), else 1/sqrt(d) */
  attnScale: number | undefined,
  opts: TransferOptions,
  setParam: (name: string, data: ArrayLike<number>) => void,
  params: Map<string, Tensor>,
): void {
  const m = cfg.mixer;
  const H = m.nVHeads;
  const N = m.dState;
  const dInner = innerDim({ expand: m.expand, dModel: cfg.dModel });
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
    put(xOff, expandHeads(a.v.toArray(), v.nKvHeads, H, hd, D), expandBias(a.vBias, v.nKvHeads));
    put(bOff, expandHeads(a.k.toArray(), v.nKvHeads, H, hd, D), expandBias(a.kBias, v.nKvHeads));
    // C carries the attention's 1/sqrt(head size) scale: M = the teacher's pre-softmax scores
    const sc = opts.scoreScale ?? attnScale ?? 1 / Math.sqrt(hd);
    put(
      cOff,
      Float32Array.from(a.q.toArray(), (x) => x * sc),
      a.qBias ? Float32Array.from(a.qBias.toArray(), (x) => x * sc) : null,
    );
    setParam(prefix + 'out_proj.weight', a.o.toArray());
    const ob = params.get(prefix + 'out_proj.bias');
    if (ob) setParam(prefix + 'out_proj.bias', a.oBias ? a.oBias.toArray() : new Float32Array(D));
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
