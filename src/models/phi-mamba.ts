// Students: Phi-Mamba (parallel Phi blocks with the discrete Mamba-2 mixer), Llama-style and
// GPT-2-style sequential blocks, and hybrids that keep attention in listed layers. Loads and
// saves the published Phi-Mamba layout (config.json with LanguageModel / MixerModel / Block*
// sections, parameters backbone.* and lm_head.*); docs/student-format.md documents the
// extensions for the other block styles and for hybrids.

import {
  add,
  add3,
  getAutocast,
  isGradEnabled,
  layerNormTo,
  linearPair,
  matmul,
  parallelBlockOut,
  scale,
  slice,
  tanh,
  tensor,
  type Tensor,
} from '../tensor/index.js';
import { Attention, type AttentionConfig } from '../nn/attention.js';
import {
  checkMixerConfig,
  DiscreteMamba2,
  SsmCache,
  type DiscreteMamba2Config,
} from '../nn/discrete-mamba2.js';
import { Embedding, LayerNorm, Linear, RMSNorm, type InitOptions } from '../nn/layers.js';
import { LinearAttentionMixer } from '../nn/linear-attention-mixer.js';
import { ToeplitzMixer } from '../nn/toeplitz-mixer.js';
import { ACTIVATIONS, GatedMLP, MLP, type Activation } from '../nn/mlp.js';
import { Module } from '../nn/module.js';
import type { RopeConfig } from '../nn/rope.js';
import { Random } from '../util/random.js';
import { createModelCache, forwardLM } from './causal-lm.js';
import { Fields, MAX, type Json } from './hf.js';
import type {
  Block,
  BlockOptions,
  BlockOutput,
  CausalLM,
  ForwardOptions,
  ForwardResult,
  HeadParts,
  LayerCache,
  ModelCache,
  ModelInfo,
} from './types.js';

/** phi: LN -> mixer + MLP in parallel; llama: RMSNorm, sequential, SwiGLU; gpt2: LN, sequential, fc MLP */
export type BlockStyle = 'phi' | 'llama' | 'gpt2';

export const BLOCK_TYPES: Record<string, BlockStyle> = {
  'modules.phi_block': 'phi',
  'modules.llama_block': 'llama',
  'modules.gpt2_block': 'gpt2',
};

/** the published hybrid's attention mixer (transformers' PhiAttention under mixer.self_attn) */
export const PHI_ATTENTION = 'modules.mixers.phi_attention';

export interface AttentionCore {
  nHeads: number;
  nKvHeads: number;
  headDim: number;
  rotaryDim: number;
  ropeTheta: number;
  qkvBias: boolean;
  outBias: boolean;
  // what a hybrid keeps of its teacher family's attention (absent: plain)
  /** a scaled rotary embedding */
  rope?: RopeConfig;
  /** sliding window (Mistral, Qwen2, Gemma 2) */
  window?: number;
  /** score soft-capping (Gemma 2) */
  softcap?: number;
  /** factor on q k^T (default 1 / sqrt(head_dim)) */
  scale?: number;
  /** per-head q/k RMSNorm epsilon (Qwen3) */
  qkNormEps?: number;
}

export interface StudentConfig {
  vocabSize: number;
  padVocabSizeMultiple: number;
  dModel: number;
  nLayer: number;
  style: BlockStyle;
  normEps: number;
  /** MLP hidden size and activation (gated SwiGLU for llama style) */
  intermediateSize: number;
  activation: Activation;
  mlpBias: boolean;
  lmHeadBias: boolean;
  tieEmbeddings: boolean;
  /** learned position embeddings (GPT-2 students), 0 = none */
  maxPositionEmbeddings: number;
  mixer: Omit<DiscreteMamba2Config, 'dModel'>;
  /**
   * the class of the non-attention mixers (default 'ssd', the discrete Mamba-2): 'toeplitz' (a
   * long convolution, nn/toeplitz-mixer.ts) and 'linear-attention' (causal low rank,
   * nn/linear-attention-mixer.ts) are the paper's mixer ablations; they read n_v_heads, d_state
   * and bias from `mixer`
   */
  mixerClass?: MixerClass;
  /** taps of the Toeplitz mixer's kernels */
  kernelLength?: number;
  /** layer index -> attention settings for the layers of a hybrid that keep attention */
  attentionLayers: Map<number, AttentionCore>;
  bosTokenId: number | null;
  eosTokenId: number | null;
  // what a Llama-style student keeps of its teacher family (absent: Llama's behavior)
  /** RMSNorms scale by (normOffset + w) (Gemma: 1) */
  normOffset?: number;
  /** embeddings times sqrt(d_model), a float32 constant (Gemma) */
  embedScale?: boolean;
  /** a norm after the mixer and around the MLP (Gemma 2) */
  sandwichNorms?: boolean;
  /** final logits -> cap * tanh(logits / cap) (Gemma 2) */
  finalSoftcap?: number;
}

export type MixerClass = 'ssd' | 'toeplitz' | 'linear-attention';

/** config.json CoreType of each mixer class */
export const MIXER_CORE_TYPES: Record<MixerClass, string> = {
  ssd: 'modules.mixers.discrete_mamba2',
  toeplitz: 'modules.mixers.toeplitz',
  'linear-attention': 'modules.mixers.linear_attention',
};

export function paddedVocab(c: Pick<StudentConfig, 'vocabSize' | 'padVocabSizeMultiple'>): number {
  const m = c.padVocabSizeMultiple;
  return Math.ceil(c.vocabSize / m) * m;
}

// ---- blocks -----------------------------------------------------------------------------------

export class StudentBlock extends Module implements Block {
  readonly mixerKind: 'attention' | 'ssm';
  readonly input_layernorm: LayerNorm | RMSNorm;
  readonly post_attention_layernorm: LayerNorm | RMSNorm | null;
  readonly pre_feedforward_layernorm: RMSNorm | null;
  readonly post_feedforward_layernorm: RMSNorm | null;
  readonly mixer: DiscreteMamba2 | ToeplitzMixer | LinearAttentionMixer | null;
  readonly self_attn: Attention | null;
  readonly mlp: MLP | GatedMLP;

  constructor(
    readonly c: StudentConfig,
    readonly index: number,
    init: InitOptions,
  ) {
    super();
    const norm = () =>
      c.style === 'llama'
        ? new RMSNorm(c.dModel, c.normEps, { offset: c.normOffset ?? 0 })
        : new LayerNorm(c.dModel, c.normEps);
    this.input_layernorm = this.child('input_layernorm', norm());
    const att = c.attentionLayers.get(index);
    this.mixerKind = att ? 'attention' : 'ssm';
    if (att) {
      const ac: AttentionConfig = {
        dModel: c.dModel,
        nHeads: att.nHeads,
        nKvHeads: att.nKvHeads,
        headDim: att.headDim,
        rotaryDim: att.rotaryDim,
        ropeTheta: att.ropeTheta,
        qkvBias: att.qkvBias,
        outBias: att.outBias,
        ropeInterleaved: false,
        outName: c.style === 'phi' ? 'dense' : 'o_proj',
        rope: att.rope ?? null,
        window: att.window ?? null,
        softcap: att.softcap ?? null,
        scale: att.scale ?? null,
        qkNormEps: att.qkNormEps ?? null,
      };
      this.self_attn = this.child('self_attn', new Attention(ac, init));
      this.mixer = null;
    } else {
      const cls = c.mixerClass ?? 'ssd';
      const bias = c.mixer.bias;
      this.mixer = this.child(
        'mixer',
        cls === 'toeplitz'
          ? new ToeplitzMixer(
              { dModel: c.dModel, nHeads: c.mixer.nVHeads, kernelLength: c.kernelLength ?? 2048, bias },
              init,
            )
          : cls === 'linear-attention'
            ? new LinearAttentionMixer(
                { dModel: c.dModel, nHeads: c.mixer.nVHeads, dState: c.mixer.dState, bias },
                init,
              )
            : new DiscreteMamba2({ dModel: c.dModel, ...c.mixer }, init),
      );
      this.self_attn = null;
    }
    this.post_attention_layernorm = c.style === 'phi' ? null : this.child('post_attention_layernorm', norm());
    const sandwich = c.style === 'llama' && c.sandwichNorms;
    this.pre_feedforward_layernorm = sandwich
      ? this.child('pre_feedforward_layernorm', norm() as RMSNorm)
      : null;
    this.post_feedforward_layernorm = sandwich
      ? this.child('post_feedforward_layernorm', norm() as RMSNorm)
      : null;
    this.mlp = this.child(
      'mlp',
      c.style === 'llama'
        ? new GatedMLP(c.dModel, c.intermediateSize, { ...init, bias: c.mlpBias, act: c.activation })
        : new MLP(c.dModel, c.intermediateSize, c.activation, init),
    );
  }

  private mix(x: Tensor, opts: BlockOptions): { out: Tensor; matrix: Tensor | null } {
    return this.mixer ? this.mixer.forward(x, opts) : this.self_attn!.forward(x, opts);
  }

  /**
   * The norm's output in 16 bits for a decoding step of a parallel SSM block under autocast: only
   * in_proj and fc1 read it, and both would round it to 16 bits anyway (decode-ops.ts)
   */
  private norm16(x: Tensor, opts: BlockOptions): Tensor | null {
    const dt = getAutocast();
    const ln = this.input_layernorm;
    if (
      !dt ||
      isGradEnabled() ||
      this.c.style !== 'phi' ||
      !(ln instanceof LayerNorm) ||
      !(this.mixer instanceof DiscreteMamba2) ||
      !(opts.cache instanceof SsmCache) ||
      opts.cache.length === 0 ||
      x.shape[1] !== 1
    )
      return null;
    return layerNormTo(x, ln.weight, ln.bias, ln.eps, dt);
  }

  forward(x: Tensor, opts: BlockOptions = {}): BlockOutput {
    const n16 = this.norm16(x, opts);
    const mlp = this.mlp;
    if (n16 && mlp instanceof MLP && mlp.geluNew && this.mixer instanceof DiscreteMamba2) {
      // a decoding step of a parallel block (norm16's cases): in_proj and fc1 read the norm in one
      // pass, the mixer steps from in_proj's output, out_proj and fc2 run in one pass that also adds
      // the residual sum (decode-ops.ts)
      const dt = n16.dtype as 'bf16' | 'f16';
      const inProj = this.mixer.in_proj;
      const [zx, h] = linearPair(
        n16,
        inProj.weight,
        inProj.bias,
        mlp.fc1.weight,
        mlp.fc1.bias,
        'geluNew',
        dt,
      );
      const gated = this.mixer.stepGated(zx, opts.cache as SsmCache);
      const outProj = this.mixer.out_proj;
      const { out, mixerOut } = parallelBlockOut(
        gated,
        outProj.weight,
        outProj.bias,
        h,
        mlp.fc2.weight,
        mlp.fc2.bias,
        x,
        dt,
      );
      return { out, mixerOut, matrix: null };
    }
    const n = n16 ?? this.input_layernorm.forward(x);
    const m = this.mix(n, opts);
    if (this.c.style === 'phi') {
      // without gradients (decoding), the Phi MLP's fc2 adds x + mixer output in its own pass
      const out =
        this.mlp instanceof MLP ? this.mlp.forwardResidual(n, x, m.out) : add3(x, m.out, this.mlp.forward(n));
      return { out, mixerOut: m.out, matrix: m.matrix };
    }
    if (this.pre_feedforward_layernorm && this.post_feedforward_layernorm) {
      // Gemma 2: h = x + norm(mixer(norm(x))); out = h + norm(mlp(norm(h)))
      const h = add(x, this.post_attention_layernorm!.forward(m.out));
      const f = this.mlp.forward(this.pre_feedforward_layernorm.forward(h));
      return { out: add(h, this.post_feedforward_layernorm.forward(f)), mixerOut: m.out, matrix: m.matrix };
    }
    const post = this.post_attention_layernorm!;
    // h = x + mixer and norm(h) in one pass where the norm is an RMSNorm
    const { sum: h, normed } =
      post instanceof RMSNorm ? post.forwardAdd(x, m.out) : { sum: add(x, m.out), normed: null };
    return {
      out: add(h, this.mlp.forward(normed ?? post.forward(h))),
      mixerOut: m.out,
      matrix: m.matrix,
    };
  }

  createCache(batch: number): LayerCache {
    return this.mixer ? this.mixer.createCache() : this.self_attn!.createCache(batch);
  }
}

// ---- the language model -----------------------------------------------------------------------

export class StudentLM extends Module implements CausalLM {
  readonly info: ModelInfo;
  readonly blocks: StudentBlock[];
  readonly embedding: Embedding;
  readonly positionEmbedding: Embedding | null;
  readonly finalNorm: LayerNorm | RMSNorm;
  readonly lmHead: Linear | null;
  readonly paddedVocab: number;

  constructor(
    readonly config: StudentConfig,
    init: InitOptions = {},
  ) {
    super();
    const c = config;
    checkMixerConfig({ dModel: c.dModel, ...c.mixer }, 'Block1.core_input');
    const opts = { ...init, rng: init.rng ?? new Random(0) };
    this.paddedVocab = paddedVocab(c);
    const backbone = this.child('backbone', new Module());
    this.embedding = backbone.child('embedding', new Embedding(this.paddedVocab, c.dModel, opts));
    this.positionEmbedding =
      c.maxPositionEmbeddings > 0
        ? backbone.child('position_embedding', new Embedding(c.maxPositionEmbeddings, c.dModel, opts))
        : null;
    const layers = backbone.child('layers', new Module());
    this.blocks = [];
    for (let i = 0; i < c.nLayer; i++)
      this.blocks.push(layers.child(String(i), new StudentBlock(c, i, opts)));
    this.finalNorm = backbone.child(
      'final_layernorm',
      c.style === 'llama'
        ? new RMSNorm(c.dModel, c.normEps, { offset: c.normOffset ?? 0 })
        : new LayerNorm(c.dModel, c.normEps),
    );
    this.lmHead = c.tieEmbeddings
      ? null
      : this.child('lm_head', new Linear(c.dModel, this.paddedVocab, { ...opts, bias: c.lmHeadBias }));
    const hasAttention = c.attentionLayers.size > 0;
    this.info = {
      family: c.style === 'phi' ? 'phi-mamba' : c.style === 'llama' ? 'llamba' : 'gpt2-mamba',
      vocabSize: c.vocabSize,
      dModel: c.dModel,
      nLayers: c.nLayer,
      maxSeqLen: c.maxPositionEmbeddings > 0 ? c.maxPositionEmbeddings : hasAttention ? 1 << 20 : Infinity,
      bosTokenId: c.bosTokenId,
      eosTokenId: c.eosTokenId,
    };
    // a final soft-cap (Gemma 2) cannot be applied by a loss fused with the head: no parts then
    if (!c.finalSoftcap)
      this.headParts = (h: Tensor): HeadParts => {
        const x = this.finalNorm.forward(h);
        return this.lmHead
          ? { x, weight: this.lmHead.weight, bias: this.lmHead.bias }
          : { x, weight: this.embedding.weight, bias: null };
      };
  }

  embed(ids: Tensor, position = 0): Tensor {
    const e0 = this.embedding.forward(ids);
    const e = this.config.embedScale ? scale(e0, Math.fround(Math.sqrt(this.config.dModel))) : e0;
    if (!this.positionEmbedding) return e;
    const t = ids.shape[1];
    if (position + t > this.config.maxPositionEmbeddings) {
      throw new Error(
        `student: positions up to ${position + t} exceed max_position_embeddings (${this.config.maxPositionEmbeddings})`,
      );
    }
    const pos = tensor(
      Int32Array.from({ length: t }, (_, i) => position + i),
      [1, t],
      'i32',
    );
    return add(e, this.positionEmbedding.forward(pos));
  }

  /** final norm + lm_head; logits of the padding rows of the vocabulary are cut off */
  head(h: Tensor): Tensor {
    // a decoding step's last norm in 16 bits: the head's product reads it so anyway (decode-ops.ts)
    const dt = getAutocast();
    const fn = this.finalNorm;
    const n =
      dt && !isGradEnabled() && fn instanceof LayerNorm && h.ndim === 3 && h.shape[1] === 1
        ? layerNormTo(h, fn.weight, fn.bias, fn.eps, dt)
        : fn.forward(h);
    const raw = this.lmHead ? this.lmHead.forward(n) : matmul(n, this.embedding.weight, { transB: true });
    const cap = this.config.finalSoftcap;
    const logits = cap ? scale(tanh(scale(raw, 1 / cap)), cap) : raw;
    return this.paddedVocab === this.config.vocabSize ? logits : slice(logits, -1, 0, this.config.vocabSize);
  }

  /**
   * the head's pieces for a loss fused with it; absent with a final soft-cap (Gemma 2), which a
   * fused linear + softmax cannot apply
   */
  readonly headParts?: (h: Tensor) => HeadParts;

  forward(ids: Tensor, opts?: ForwardOptions): ForwardResult {
    return forwardLM(this, ids, opts);
  }

  createCache(batch: number): ModelCache {
    return createModelCache(this.blocks, batch);
  }

  configJson(): Json {
    return studentConfigToJson(this.config);
  }

  // ---- the published checkpoint layout (see docs/student-format.md) ----

  /**
   * A parameter's name in a saved checkpoint: the attention layers of a published hybrid hold
   * their weights under mixer.self_attn.* (the reference wraps PhiAttention in a mixer module).
   */
  checkpointName(param: string): string {
    if (!publishedHybrid(this.config)) return param;
    const m = /^backbone\.layers\.(\d+)\.self_attn\.(.+)$/.exec(param);
    return m && this.config.attentionLayers.has(Number(m[1]))
      ? `backbone.layers.${m[1]}.mixer.self_attn.${m[2]}`
      : param;
  }

  /**
   * Parameters a checkpoint may leave out. The reference has mixer.z_bias exactly when bias is
   * false (with bias, z's offset is in_proj's bias); a checkpoint without it loads a zero z_bias.
   */
  optionalParameter(param: string): boolean {
    return this.config.mixer.bias && /^backbone\.layers\.\d+\.mixer\.z_bias$/.test(param);
  }

  /**
   * The tensors to save, under their checkpoint names, so that the reference PyTorch code loads
   * them with strict=True: with bias, z_bias is folded into the z rows of in_proj.bias (the same
   * function: z + z_bias = W_z u + (b_z + z_bias)) and not written.
   */
  checkpointState(): Map<string, Tensor | { dtype: 'F32'; shape: number[]; bytes: Uint8Array }> {
    const out = new Map<string, Tensor | { dtype: 'F32'; shape: number[]; bytes: Uint8Array }>();
    for (const [name, t] of this.namedParameters()) {
      if (this.optionalParameter(name)) continue;
      const layer = /^backbone\.layers\.(\d+)\.mixer\.in_proj\.bias$/.exec(name);
      const mixer = layer ? this.blocks[Number(layer[1])].mixer : null;
      if (mixer instanceof DiscreteMamba2 && this.config.mixer.bias) {
        const bias = Float32Array.from(t.toArray());
        const zb = mixer.z_bias.toArray();
        const zStart = mixer.convDim;
        for (let i = 0; i < zb.length; i++) bias[zStart + i] += zb[i];
        out.set(name, { dtype: 'F32', shape: [...t.shape], bytes: new Uint8Array(bias.buffer) });
        continue;
      }
      out.set(this.checkpointName(name), t);
    }
    return out;
  }
}

// ---- config.json ------------------------------------------------------------------------------

function section(json: Json, key: string, file: string): Json {
  const v = json[key];
  if (v === undefined || v === null) return {};
  if (typeof v !== 'object' || Array.isArray(v)) throw new Error(`${file}: ${key} must be an object`);
  return v as Json;
}

function int(o: Json, key: string, where: string, fallback?: number): number {
  const v = o[key];
  if (v === undefined || v === null) {
    if (fallback === undefined) throw new Error(`${where}.${key} is required`);
    return fallback;
  }
  if (typeof v !== 'number' || !Number.isInteger(v) || v < 0)
    throw new Error(`${where}.${key} must be a non-negative integer, got ${JSON.stringify(v)}`);
  const max = STUDENT_MAX[key];
  if (max !== undefined && v > max)
    throw new Error(`${where}.${key} (${v}) is larger than mohawk accepts (at most ${max})`);
  return v;
}

/** upper bounds on the student's sizes: a config may not ask for absurd allocations */
const STUDENT_MAX: Record<string, number> = {
  vocab_size: MAX.vocab,
  pad_vocab_size_multiple: 1 << 16,
  d_model: MAX.hidden,
  n_layer: MAX.layers,
  n_layers: MAX.layers,
  d_state: MAX.headDim,
  n_qk_heads: MAX.heads,
  n_v_heads: MAX.heads,
  d_conv: 64,
  chunk_size: 1 << 16,
  intermediate_size: MAX.intermediate,
  max_position_embeddings: MAX.learnedPositions,
  n_heads: MAX.heads,
  n_kv_heads: MAX.heads,
  head_dim: MAX.headDim,
  rotary_dim: MAX.headDim,
  sliding_window: MAX.positions,
};

/** a token id below the vocabulary, or null */
function tokenIdField(o: Json, key: string, where: string, vocab: number): number | null {
  const v = o[key];
  if (v === undefined || v === null) return null;
  if (typeof v !== 'number' || !Number.isInteger(v) || v < 0 || v >= vocab)
    throw new Error(`${where}.${key} (${JSON.stringify(v)}) is outside the vocabulary (vocab_size ${vocab})`);
  return v;
}

function nonNegative(o: Json, key: string, where: string, fallback: number): number {
  const v = numField(o, key, where, fallback);
  if (v < 0) throw new Error(`${where}.${key} must not be negative, got ${v}`);
  return v;
}

function numField(o: Json, key: string, where: string, fallback: number): number {
  const v = o[key];
  if (v === undefined || v === null) return fallback;
  if (typeof v !== 'number' || !Number.isFinite(v))
    throw new Error(`${where}.${key} must be a number, got ${JSON.stringify(v)}`);
  return v;
}

function boolField(o: Json, key: string, where: string, fallback: boolean): boolean {
  const v = o[key];
  if (v === undefined || v === null) return fallback;
  if (typeof v !== 'boolean')
    throw new Error(`${where}.${key} must be true or false, got ${JSON.stringify(v)}`);
  return v;
}

export function isStudentConfig(json: Json): boolean {
  return (
    typeof json.LanguageModel === 'object' &&
    json.LanguageModel !== null &&
    typeof json.MixerModel === 'object'
  );
}

export function studentConfigFromJson(json: Json, file = 'config.json'): StudentConfig {
  const lm = section(section(json, 'LanguageModel', file), 'input', file);
  const mm = section(section(json, 'MixerModel', file), 'input', file);
  const where = (s: string) => `${file}: ${s}`;
  const nLayer = int(mm, 'n_layer', where('MixerModel.input'));
  const dModel = int(mm, 'd_model', where('MixerModel.input'));
  if (dModel < 1 || nLayer < 1)
    throw new Error(`${file}: MixerModel.input.d_model and n_layer must be positive`);
  // Block sections in numeric order (Block10 after Block2), as their layers follow each other
  const blockKeys = Object.keys(json)
    .filter((k) => /^Block\d+$/.test(k))
    .sort((a, b) => Number(a.slice(5)) - Number(b.slice(5)));
  if (blockKeys.length === 0) throw new Error(`${file}: no Block1 section`);
  // the published layout gives each section n_layers consecutive layers; mohawk's extension
  // lists them (`layers`), the mixer section then covering the layers no other section lists
  const listed = blockKeys.some((k) => section(json, k, file).layers !== undefined);
  let next = 0;
  let style: BlockStyle | null = null;
  let mixer: StudentConfig['mixer'] | null = null;
  const attentionLayers = new Map<number, AttentionCore>();
  const claimed = new Set<number>();
  let mixerLayers: number[] | null = null;
  let mlpIn: Json = {};
  let cls: MixerClass = 'ssd';
  let kernelLength: number | undefined;
  for (const key of blockKeys) {
    const b = section(json, key, file);
    const w = where(key);
    const bt = b.BlockType;
    const st = typeof bt === 'string' ? BLOCK_TYPES[bt] : undefined;
    if (!st)
      throw new Error(
        `${w}.BlockType ${JSON.stringify(bt)} is not supported (supported: ${Object.keys(BLOCK_TYPES).join(', ')})`,
      );
    if (style && st !== style)
      throw new Error(`${w}.BlockType: all blocks must share one style (${style} vs ${st})`);
    style = st;
    const core = section(b, 'core_input', file);
    const layersRaw = b.layers;
    let layers: number[] | null = null;
    if (layersRaw !== undefined) {
      if (!Array.isArray(layersRaw) || !layersRaw.every((x) => Number.isInteger(x) && x >= 0 && x < nLayer)) {
        throw new Error(`${w}.layers must be a list of layer indices below n_layer (${nLayer})`);
      }
      layers = layersRaw as number[];
    } else if (!listed) {
      const n = b.n_layers === undefined && blockKeys.length === 1 ? nLayer : int(b, 'n_layers', w);
      if (next + n > nLayer)
        throw new Error(
          `${w}.n_layers (${n}): the Block sections hold more than MixerModel.input.n_layer (${nLayer}) layers`,
        );
      layers = Array.from({ length: n }, (_, i) => next + i);
      next += n;
    }
    for (const l of layers ?? []) {
      if (claimed.has(l)) throw new Error(`${w}.layers: layer ${l} is listed in two blocks`);
      claimed.add(l);
    }
    if (Object.keys(section(b, 'mlp_input', file)).length) mlpIn = section(b, 'mlp_input', file);
    const mixerClass = (Object.keys(MIXER_CORE_TYPES) as MixerClass[]).find(
      (k) => MIXER_CORE_TYPES[k] === b.CoreType,
    );
    if (mixerClass) {
      if (mixer && mixerClass !== cls)
        throw new Error(`${w}.CoreType: all mixer blocks must share one class`);
      cls = mixerClass;
      if (mixerClass === 'toeplitz') kernelLength = int(core, 'kernel_length', `${w}.core_input`);
      const cw = `${w}.core_input`;
      const act = core.activation ?? 'identity';
      const m: StudentConfig['mixer'] = {
        dState: int(core, 'd_state', cw, 64),
        nQkHeads: int(core, 'n_qk_heads', cw, 32),
        nVHeads: int(core, 'n_v_heads', cw, 32),
        dConv: int(core, 'd_conv', cw, 4),
        convBias: boolField(core, 'conv_bias', cw, true),
        expand: numField(core, 'expand', cw, 1),
        // (checkMixerConfig bounds expand x d_model below)
        chunkSize: int(core, 'chunk_size', cw, 128),
        activation: act as 'identity' | 'silu',
        bias: boolField(core, 'bias', cw, false),
      };
      checkMixerConfig({ dModel, ...m }, cw);
      if (mixer && (listed || JSON.stringify(mixer) !== JSON.stringify(m)))
        throw new Error(
          `${w}: only one discrete_mamba2 setting is supported (this section's core_input differs from an earlier one)`,
        );
      mixer = m;
      if (listed) {
        mixerLayers = layers;
        if (
          layers === null &&
          b.n_layers !== undefined &&
          int(b, 'n_layers', w) !== nLayer - attentionCount(json, file)
        ) {
          throw new Error(
            `${w}.n_layers (${String(b.n_layers)}) does not match MixerModel.input.n_layer (${nLayer}) minus the attention layers`,
          );
        }
      }
    } else if (b.CoreType === PHI_ATTENTION) {
      // the published hybrid: the reference builds transformers' PhiAttention from a PhiConfig
      // (q_proj, k_proj, v_proj, dense, all with bias; weights under mixer.self_attn.*)
      if (st !== 'phi') throw new Error(`${w}.CoreType ${PHI_ATTENTION} needs BlockType modules.phi_block`);
      if (!layers)
        throw new Error(`${w}.layers is required for attention blocks (which layers keep attention)`);
      const cw = `${w}.core_input`;
      const hidden = int(core, 'hidden_size', cw, dModel);
      const nHeads = int(core, 'num_attention_heads', cw, 32);
      const nKvHeads = int(core, 'num_key_value_heads', cw, nHeads);
      if (hidden !== dModel)
        throw new Error(`${cw}.hidden_size (${hidden}) must equal MixerModel.input.d_model (${dModel})`);
      if (nHeads < 1 || dModel % nHeads !== 0 || nKvHeads < 1 || nHeads % nKvHeads !== 0)
        throw new Error(
          `${cw}: num_attention_heads (${nHeads}) must divide hidden_size (${dModel}) and be divided by num_key_value_heads (${nKvHeads})`,
        );
      if (core.qk_layernorm === true) throw new Error(`${cw}.qk_layernorm true is not supported`);
      const headDim = dModel / nHeads;
      const partial = numField(core, 'partial_rotary_factor', cw, 0.5);
      const rotaryDim = Math.floor(headDim * partial);
      if (!(partial > 0 && partial <= 1) || rotaryDim % 2 !== 0)
        throw new Error(`${cw}.partial_rotary_factor (${partial}) must give an even rotary dimension`);
      const a: AttentionCore = {
        nHeads,
        nKvHeads,
        headDim,
        rotaryDim,
        ropeTheta: numField(core, 'rope_theta', cw, 10000),
        qkvBias: true,
        outBias: true,
      };
      if (!(a.ropeTheta > 0)) throw new Error(`${cw}.rope_theta must be positive, got ${a.ropeTheta}`);
      for (const l of layers) attentionLayers.set(l, a);
    } else if (b.CoreType === 'modules.mixers.attention') {
      if (!layers)
        throw new Error(`${w}.layers is required for attention blocks (which layers keep attention)`);
      const cw = `${w}.core_input`;
      const nHeads = int(core, 'n_heads', cw);
      const nKvHeads = int(core, 'n_kv_heads', cw, nHeads);
      const headDim = int(core, 'head_dim', cw, Math.floor(dModel / Math.max(nHeads, 1)));
      if (nHeads < 1 || nKvHeads < 1 || nHeads % nKvHeads !== 0)
        throw new Error(`${cw}.n_kv_heads (${nKvHeads}) must divide n_heads (${nHeads})`);
      const a: AttentionCore = {
        nHeads,
        nKvHeads,
        headDim,
        rotaryDim: int(core, 'rotary_dim', cw, headDim),
        ropeTheta: numField(core, 'rope_theta', cw, 10000),
        qkvBias: boolField(core, 'qkv_bias', cw, false),
        outBias: boolField(core, 'out_bias', cw, false),
        ...familyAttentionFromJson(core, cw, headDim),
      };
      if (a.rotaryDim % 2 !== 0 || a.rotaryDim > headDim)
        throw new Error(`${cw}.rotary_dim (${a.rotaryDim}) must be even and at most head_dim (${headDim})`);
      for (const l of layers) attentionLayers.set(l, a);
    } else {
      throw new Error(
        `${w}.CoreType ${JSON.stringify(b.CoreType)} is not supported (supported: ${Object.values(MIXER_CORE_TYPES).join(', ')}, ${PHI_ATTENTION}, modules.mixers.attention)`,
      );
    }
  }
  if (!listed && next !== nLayer)
    throw new Error(`${file}: the Block sections hold ${next} layers, MixerModel.input.n_layer is ${nLayer}`);
  if (!mixer) throw new Error(`${file}: no Block section with CoreType modules.mixers.discrete_mamba2`);
  if (mixerLayers) {
    for (let l = 0; l < nLayer; l++)
      if (!claimed.has(l)) throw new Error(`${file}: layer ${l} is in no Block section`);
  }
  const s = style!;
  const mw = where('mlp_input');
  const act = (mlpIn.activation ?? (s === 'llama' ? 'silu' : 'gelu_new')) as Activation;
  if (!ACTIVATIONS.includes(act)) throw new Error(`${mw}.activation ${JSON.stringify(act)} is not supported`);
  const lmw = where('LanguageModel.input');
  const headPrenorm = mm.lm_head_prenorm ?? (s === 'llama' ? 'rms' : 'layer');
  if (headPrenorm !== (s === 'llama' ? 'rms' : 'layer')) {
    throw new Error(
      `${file}: MixerModel.input.lm_head_prenorm ${JSON.stringify(headPrenorm)} does not fit the ${s} block style`,
    );
  }
  return {
    vocabSize: int(lm, 'vocab_size', lmw),
    padVocabSizeMultiple: Math.max(1, int(lm, 'pad_vocab_size_multiple', lmw, 8)),
    dModel,
    nLayer,
    style: s,
    normEps: nonNegative(mm, 'norm_eps', where('MixerModel.input'), 1e-5),
    intermediateSize: int(mlpIn, 'intermediate_size', mw, 4 * dModel),
    activation: act,
    mlpBias: boolField(mlpIn, 'bias', mw, s !== 'llama'),
    lmHeadBias: boolField(lm, 'lm_head_bias', lmw, s === 'phi'),
    tieEmbeddings: boolField(lm, 'tie_embeddings', lmw, false),
    maxPositionEmbeddings: int(mm, 'max_position_embeddings', where('MixerModel.input'), 0),
    mixer,
    ...(cls === 'ssd' ? {} : { mixerClass: cls }),
    ...(kernelLength === undefined ? {} : { kernelLength }),
    attentionLayers,
    bosTokenId: tokenIdField(lm, 'bos_token_id', lmw, int(lm, 'vocab_size', lmw)),
    eosTokenId: tokenIdField(lm, 'eos_token_id', lmw, int(lm, 'vocab_size', lmw)),
    ...familyBlockFromJson(mm, where('MixerModel.input')),
  };
}

function attentionCount(json: Json, file: string): number {
  let n = 0;
  for (const k of Object.keys(json)) {
    if (!/^Block\d+$/.test(k)) continue;
    const b = section(json, k, file);
    if (
      (b.CoreType === 'modules.mixers.attention' || b.CoreType === PHI_ATTENTION) &&
      Array.isArray(b.layers)
    )
      n += b.layers.length;
  }
  return n;
}

const STYLE_BLOCK: Record<BlockStyle, string> = {
  phi: 'modules.phi_block',
  llama: 'modules.llama_block',
  gpt2: 'modules.gpt2_block',
};

/**
 * The published hybrid layout fits a phi-style student whose attention layers are PhiAttention
 * as the reference builds it: heads x head_dim = d_model, biases on q, k, v and dense.
 */
export function publishedHybrid(c: StudentConfig): boolean {
  return (
    c.style === 'phi' &&
    [...c.attentionLayers.values()].every((a) => a.qkvBias && a.outBias && a.nHeads * a.headDim === c.dModel)
  );
}

function phiAttentionInput(c: StudentConfig, a: AttentionCore): Json {
  return {
    hidden_size: c.dModel,
    num_attention_heads: a.nHeads,
    num_key_value_heads: a.nKvHeads,
    partial_rotary_factor: a.rotaryDim / a.headDim,
    rope_theta: a.ropeTheta,
  };
}

export function studentConfigToJson(c: StudentConfig): Json {
  const ssmLayers = [...Array(c.nLayer).keys()].filter((l) => !c.attentionLayers.has(l));
  const m = c.mixer;
  const mixerCore = MIXER_CORE_TYPES[c.mixerClass ?? 'ssd'];
  const mixerInput = {
    ...(c.mixerClass === 'toeplitz' ? { kernel_length: c.kernelLength ?? 2048 } : {}),
    d_state: m.dState,
    n_v_heads: m.nVHeads,
    n_qk_heads: m.nQkHeads,
    d_conv: m.dConv,
    conv_bias: m.convBias,
    expand: m.expand,
    chunk_size: m.chunkSize,
    activation: m.activation,
    bias: m.bias,
  };
  const mlpInput = { intermediate_size: c.intermediateSize, activation: c.activation, bias: c.mlpBias };
  const json: Json = {
    LanguageModel: {
      input: {
        vocab_size: c.vocabSize,
        pad_vocab_size_multiple: c.padVocabSizeMultiple,
        lm_head_bias: c.lmHeadBias,
        tie_embeddings: c.tieEmbeddings,
        bos_token_id: c.bosTokenId,
        eos_token_id: c.eosTokenId,
      },
    },
    MixerModel: {
      input: {
        d_model: c.dModel,
        n_layer: c.nLayer,
        lm_head_prenorm: c.style === 'llama' ? 'rms' : 'layer',
        norm_eps: c.normEps,
        max_position_embeddings: c.maxPositionEmbeddings,
        ...(c.normOffset ? { norm_offset: c.normOffset } : {}),
        ...(c.embedScale ? { embed_scale: true } : {}),
        ...(c.sandwichNorms ? { sandwich_norms: true } : {}),
        ...(c.finalSoftcap ? { final_logit_softcapping: c.finalSoftcap } : {}),
      },
    },
  };
  if (c.attentionLayers.size === 0 || publishedHybrid(c)) {
    // the published layout: one section per run of consecutive layers of one kind, in order
    let k = 1;
    for (let l = 0; l < c.nLayer;) {
      const a = c.attentionLayers.get(l);
      let n = 1;
      while (
        l + n < c.nLayer &&
        JSON.stringify(c.attentionLayers.get(l + n) ?? null) === JSON.stringify(a ?? null)
      )
        n++;
      json[`Block${k++}`] = {
        n_layers: n,
        BlockType: STYLE_BLOCK[c.style],
        block_input: { resid_dropout: 0.0 },
        ...(a
          ? { CoreType: PHI_ATTENTION, core_input: phiAttentionInput(c, a) }
          : { CoreType: mixerCore, core_input: mixerInput, mlp_input: mlpInput }),
      };
      l += n;
    }
    return json;
  }
  // mohawk's extension for the other block styles: sections list their layers
  json.Block1 = {
    n_layers: ssmLayers.length,
    layers: ssmLayers,
    BlockType: STYLE_BLOCK[c.style],
    block_input: { resid_dropout: 0.0 },
    CoreType: mixerCore,
    core_input: mixerInput,
    mlp_input: mlpInput,
  };
  // one attention section per distinct attention setting
  const groups = new Map<string, { core: AttentionCore; layers: number[] }>();
  for (const [l, a] of [...c.attentionLayers.entries()].sort((x, y) => x[0] - y[0])) {
    const key = JSON.stringify(a);
    if (!groups.has(key)) groups.set(key, { core: a, layers: [] });
    groups.get(key)!.layers.push(l);
  }
  let i = 2;
  for (const { core, layers } of groups.values()) {
    json[`Block${i++}`] = {
      n_layers: layers.length,
      layers,
      BlockType: STYLE_BLOCK[c.style],
      CoreType: 'modules.mixers.attention',
      core_input: {
        n_heads: core.nHeads,
        n_kv_heads: core.nKvHeads,
        head_dim: core.headDim,
        rotary_dim: core.rotaryDim,
        rope_theta: core.ropeTheta,
        qkv_bias: core.qkvBias,
        out_bias: core.outBias,
        ...familyAttentionToJson(core),
      },
    };
  }
  return json;
}

// ---- what a student keeps of its teacher family (docs/student-format.md) ----------------------

function familyBlockFromJson(mm: Json, where: string): Partial<StudentConfig> {
  const out: Partial<StudentConfig> = {};
  const offset = numField(mm, 'norm_offset', where, 0);
  if (offset) out.normOffset = offset;
  if (boolField(mm, 'embed_scale', where, false)) out.embedScale = true;
  if (boolField(mm, 'sandwich_norms', where, false)) out.sandwichNorms = true;
  const cap = numField(mm, 'final_logit_softcapping', where, 0);
  if (cap < 0) throw new Error(`${where}.final_logit_softcapping must be positive, got ${cap}`);
  if (cap) out.finalSoftcap = cap;
  return out;
}

const ROPE_KEYS: [keyof RopeConfig, string][] = [
  ['factor', 'factor'],
  ['originalMaxPositionEmbeddings', 'original_max_position_embeddings'],
  ['lowFreqFactor', 'low_freq_factor'],
  ['highFreqFactor', 'high_freq_factor'],
  ['attentionFactor', 'attention_factor'],
  ['betaFast', 'beta_fast'],
  ['betaSlow', 'beta_slow'],
  ['mscale', 'mscale'],
  ['mscaleAllDim', 'mscale_all_dim'],
  ['truncate', 'truncate'],
  ['shortFactor', 'short_factor'],
  ['longFactor', 'long_factor'],
];

function familyAttentionToJson(a: AttentionCore): Json {
  const out: Json = {};
  if (a.rope && a.rope.type !== 'default') {
    const r: Json = { rope_type: a.rope.type, max_position_embeddings: a.rope.maxPositionEmbeddings };
    for (const [k, j] of ROPE_KEYS) if (a.rope[k] !== undefined) r[j] = a.rope[k];
    out.rope_scaling = r;
  }
  if (a.window) out.sliding_window = a.window;
  if (a.softcap) out.attn_logit_softcapping = a.softcap;
  if (a.scale) out.scale = a.scale;
  if (a.qkNormEps !== undefined) out.qk_norm_eps = a.qkNormEps;
  return out;
}

function familyAttentionFromJson(core: Json, where: string, headDim: number): Partial<AttentionCore> {
  const out: Partial<AttentionCore> = {};
  const rs = core.rope_scaling;
  if (rs !== undefined && rs !== null) {
    if (typeof rs !== 'object' || Array.isArray(rs))
      throw new Error(`${where}.rope_scaling must be an object`);
    const r = rs as Json;
    const rotaryDim = int(core, 'rotary_dim', where, headDim);
    // read with the same checks as a Hugging Face config
    const fake: Json = {
      rope_theta: numField(core, 'rope_theta', where, 10000),
      partial_rotary_factor: rotaryDim / headDim,
      rope_scaling: Object.fromEntries(Object.entries(r).filter(([k]) => k !== 'max_position_embeddings')),
    };
    const maxPos = int(r, 'max_position_embeddings', `${where}.rope_scaling`);
    out.rope = new Fields(fake, where).ropeConfig(headDim, maxPos);
  }
  const window = int(core, 'sliding_window', where, 0);
  if (window) out.window = window;
  const softcap = numField(core, 'attn_logit_softcapping', where, 0);
  if (softcap < 0) throw new Error(`${where}.attn_logit_softcapping must be positive, got ${softcap}`);
  if (softcap) out.softcap = softcap;
  const sc = numField(core, 'scale', where, 0);
  if (sc < 0) throw new Error(`${where}.scale must be positive, got ${sc}`);
  if (sc) out.scale = sc;
  if (core.qk_norm_eps !== undefined && core.qk_norm_eps !== null) {
    const eps = numField(core, 'qk_norm_eps', where, 0);
    if (eps < 0) throw new Error(`${where}.qk_norm_eps must not be negative, got ${eps}`);
    out.qkNormEps = eps;
  }
  return out;
}
