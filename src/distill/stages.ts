// The three MOHAWK stages as loss functions over a batch of token ids, plus which student
// parameters each stage trains. In stages 1 and 2 every student layer sees the teacher's own
// input to that layer (captured from one teacher forward), so layers are independent: each
// layer's loss is computed and back-propagated on its own (as the reference does), so the
// (B, H, T, T) matrices and activations of one layer are freed before the next one starts.

import { add, linearKLDivergence, noGrad, reshape, scale, scope, type Tensor } from '../tensor/index.js';
import type { CausalLM } from '../models/types.js';
import type { StudentBlock, StudentLM } from '../models/phi-mamba.js';
import { compilePattern } from '../train/params.js';
import { distillationLoss, hiddenStateAlignmentLoss, matrixOrientationLoss } from './losses.js';
import type { StageConfig, StageKind } from './config.js';

export const STAGE_NAMES: Record<StageKind, string> = {
  1: 'matrix orientation',
  2: 'hidden-state alignment',
  3: 'knowledge distillation',
};

export interface StageLoss {
  loss: Tensor;
  /** extra scalars for the metrics log */
  parts: Record<string, Tensor>;
}

/**
 * Student layers with a non-attention mixer (mixerKind 'ssm': the discrete Mamba-2, or the
 * Toeplitz and linear-attention ablations), the ones stages 1 and 2 train.
 */
export function ssmLayers(student: CausalLM): number[] {
  return student.blocks.flatMap((b, i) => (b.mixerKind === 'ssm' ? [i] : []));
}

function mixerOf(block: StudentBlock, l: number) {
  if (!block.mixer) throw new Error(`stages: student layer ${l} has no SSM mixer`);
  return block.mixer;
}

/** The student's mixing matrix of layer l on the teacher's input x: norm + mixer only, no MLP. */
function studentMatrix(student: StudentLM, l: number, x: Tensor): Tensor {
  const b = student.blocks[l];
  return mixerOf(b, l).materialize(b.input_layernorm.forward(x));
}

/**
 * The student's stage-2 output of layer l on the teacher's input x: the mixer output (norm +
 * mixer, no MLP) when aligning mixer outputs, else the whole block's output.
 */
function studentOutput(student: StudentLM, l: number, x: Tensor, blockOutput: boolean): Tensor {
  const b = student.blocks[l];
  if (blockOutput) return b.forward(x).out;
  return mixerOf(b, l).forward(b.input_layernorm.forward(x)).out;
}

/**
 * One stage-1/2 pass over the SSM layers: `layerLoss(l)` builds layer l's loss in its own scope;
 * with `backward` (a weight, 1 / accumulation steps) the mean over layers is back-propagated one
 * layer at a time. Returns the mean loss and the per-layer values.
 */
function perLayer(
  layers: number[],
  what: string,
  layerLoss: (l: number) => Tensor,
  backward: number | null,
): { value: number; parts: Record<string, number> } {
  if (!layers.length) throw new Error(`${what}: the student has no SSM layers`);
  let total = 0;
  const parts: Record<string, number> = {};
  for (const l of layers) {
    const v = scope(() => {
      const loss = layerLoss(l);
      const val = loss.item();
      if (backward !== null && Number.isFinite(val))
        scale(loss, backward / layers.length).backward(undefined, { freeGraph: true });
      return val;
    });
    parts[`layer${l}`] = v;
    total += v;
  }
  return { value: total / layers.length, parts };
}

/**
 * perLayer with the value left on the device (a one-element tensor, the mean over layers) and
 * every layer back-propagated: nothing is read to the host, so the trainer can capture the step
 * as a graph. A non-finite value makes the trainer skip the step, as with perLayer.
 */
function perLayerOnDevice(
  layers: number[],
  what: string,
  layerLoss: (l: number) => Tensor,
  backward: number,
): { value: Tensor; parts: Record<string, number> } {
  if (!layers.length) throw new Error(`${what}: the student has no SSM layers`);
  let total: Tensor | null = null;
  for (const l of layers) {
    const v = scope(() => {
      const loss = layerLoss(l);
      // a view that outlives the backward, which frees the loss with the rest of the graph
      const value = loss.detach();
      scale(loss, backward / layers.length).backward(undefined, { freeGraph: true });
      return value;
    });
    total = total ? noGrad(() => add(total!, v)) : v;
  }
  return { value: noGrad(() => scale(total!, 1 / layers.length)), parts: {} };
}

/**
 * Stage 1, matrix orientation: mean over SSM layers of the Frobenius distance between the
 * student's mixing matrix and the teacher's attention matrix on the teacher's input to the
 * layer. The teacher's matrix of a layer is computed when that layer's turn comes (one T x T
 * set at a time). With `backward` the gradients accumulate into the student (see perLayer).
 */
export function matrixOrientationStep(
  teacher: CausalLM,
  student: StudentLM,
  ids: Tensor,
  backward?: number | null,
): { value: number; parts: Record<string, number> };
/** the same with the value left on the device (see perLayerOnDevice) */
export function matrixOrientationStep(
  teacher: CausalLM,
  student: StudentLM,
  ids: Tensor,
  backward: number,
  onDevice: true,
): { value: Tensor; parts: Record<string, number> };
export function matrixOrientationStep(
  teacher: CausalLM,
  student: StudentLM,
  ids: Tensor,
  backward: number | null = null,
  onDevice = false,
): { value: number | Tensor; parts: Record<string, number> } {
  const inputs = noGrad(() =>
    scope(() => teacher.forward(ids, { capture: { layerInputs: true } }).captured),
  ).layerInputs!;
  const layerLoss = (l: number) => {
    const target = noGrad(() => teacher.blocks[l].forward(inputs[l], { returnMatrix: true }).matrix!);
    return matrixOrientationLoss(studentMatrix(student, l, inputs[l]), target);
  };
  return onDevice && backward !== null
    ? perLayerOnDevice(ssmLayers(student), 'stage 1', layerLoss, backward)
    : perLayer(ssmLayers(student), 'stage 1', layerLoss, backward);
}

/**
 * Stage 2, hidden-state alignment: mean over SSM layers of the per-token L2 distance on the
 * teacher's input to the layer. `mlpFrozen` true: the target is the teacher's mixer output and
 * the student's MLP is not run; false: the target is the teacher's block output and the student
 * block runs whole (its MLP is the teacher's; whether it trains is the stage's `trainMlp`).
 */
export function hiddenStateAlignmentStep(
  teacher: CausalLM,
  student: StudentLM,
  ids: Tensor,
  mlpFrozen: boolean,
  backward?: number | null,
): { value: number; parts: Record<string, number> };
/** the same with the value left on the device (see perLayerOnDevice) */
export function hiddenStateAlignmentStep(
  teacher: CausalLM,
  student: StudentLM,
  ids: Tensor,
  mlpFrozen: boolean,
  backward: number,
  onDevice: true,
): { value: Tensor; parts: Record<string, number> };
export function hiddenStateAlignmentStep(
  teacher: CausalLM,
  student: StudentLM,
  ids: Tensor,
  mlpFrozen: boolean,
  backward: number | null = null,
  onDevice = false,
): { value: number | Tensor; parts: Record<string, number> } {
  const capture = mlpFrozen
    ? { layerInputs: true, mixerOutputs: true }
    : { layerInputs: true, layerOutputs: true };
  const t = noGrad(() => scope(() => teacher.forward(ids, { capture }).captured));
  const layerLoss = (l: number) => {
    const target = mlpFrozen ? t.mixerOutputs![l] : t.layerOutputs![l];
    return hiddenStateAlignmentLoss(studentOutput(student, l, t.layerInputs![l], !mlpFrozen), target);
  };
  return onDevice && backward !== null
    ? perLayerOnDevice(ssmLayers(student), 'stage 2', layerLoss, backward)
    : perLayer(ssmLayers(student), 'stage 2', layerLoss, backward);
}

/** Stage 1 as a loss tensor (mean over SSM layers), for evaluation and tests. */
export function stage1Loss(teacher: CausalLM, student: StudentLM, ids: Tensor): StageLoss {
  const inputs = noGrad(() =>
    scope(() => teacher.forward(ids, { capture: { layerInputs: true } }).captured),
  ).layerInputs!;
  return meanOver(ssmLayers(student), 'stage 1', (l) => {
    const target = noGrad(() => teacher.blocks[l].forward(inputs[l], { returnMatrix: true }).matrix!);
    return matrixOrientationLoss(studentMatrix(student, l, inputs[l]), target);
  });
}

/** Stage 2 as a loss tensor (mean over SSM layers), for evaluation and tests. */
export function stage2Loss(
  teacher: CausalLM,
  student: StudentLM,
  ids: Tensor,
  mlpFrozen: boolean,
): StageLoss {
  const capture = mlpFrozen
    ? { layerInputs: true, mixerOutputs: true }
    : { layerInputs: true, layerOutputs: true };
  const t = noGrad(() => scope(() => teacher.forward(ids, { capture }).captured));
  return meanOver(ssmLayers(student), 'stage 2', (l) => {
    const target = mlpFrozen ? t.mixerOutputs![l] : t.layerOutputs![l];
    return hiddenStateAlignmentLoss(studentOutput(student, l, t.layerInputs![l], !mlpFrozen), target);
  });
}

function meanOver(layers: number[], what: string, layerLoss: (l: number) => Tensor): StageLoss {
  if (!layers.length) throw new Error(`${what}: the student has no SSM layers`);
  const parts: Record<string, Tensor> = {};
  let total: Tensor | null = null;
  for (const l of layers) {
    const loss = layerLoss(l);
    parts[`layer${l}`] = loss;
    total = total ? add(total, loss) : loss;
  }
  return { loss: scale(total!, 1 / layers.length), parts };
}

export interface Stage3Options {
  /**
   * the loss fused with both lm_heads (`linearKLDivergence`): never the full logits of both models
   * at once (default: $MOHAWK_FUSED_HEAD=1); models without `headParts` keep the unfused path
   */
  fusedHead?: boolean;
  /** tokens per chunk of the fused loss (default: about 512 MiB of logits per model) */
  chunkRows?: number;
}

/** Stage 3: tau^2 KL(teacher || student) on next-token distributions, optionally plus cross-entropy. */
export function stage3Loss(
  teacher: CausalLM,
  student: CausalLM,
  input: Tensor,
  target: Tensor,
  cfg: Pick<StageConfig, 'temperature' | 'ceWeight'>,
  /** (B, T) 0/1: which targets count (chat data with the prompt masked); null = all */
  mask: Tensor | null = null,
  opts: Stage3Options = {},
): StageLoss {
  const fused = opts.fusedHead ?? process.env.MOHAWK_FUSED_HEAD === '1';
  if (
    fused &&
    !mask &&
    teacher.headParts &&
    student.headParts &&
    teacher.info.vocabSize === student.info.vocabSize
  ) {
    // the loss fused with both heads: the (tokens x vocab) logits exist one chunk at a time
    const identity = { head: (h: Tensor) => h };
    const flat = (x: Tensor) => reshape(x, [x.size / x.shape[x.ndim - 1], x.shape[x.ndim - 1]]);
    const t = noGrad(() =>
      scope(() => {
        const p = teacher.headParts!(teacher.forward(input, identity).logits);
        return { ...p, x: flat(p.x) };
      }),
    );
    const s = student.headParts(student.forward(input, identity).logits);
    const r = linearKLDivergence({ ...s, x: flat(s.x) }, t, {
      vocab: student.info.vocabSize,
      temperature: cfg.temperature,
      targets: cfg.ceWeight > 0 ? reshape(target, [target.size]) : null,
      ceWeight: cfg.ceWeight,
      scaleByTemperatureSquared: true,
      chunkRows: opts.chunkRows,
    });
    const parts: Record<string, Tensor> = { kl: r.kl };
    if (r.ce) parts.ce = r.ce;
    return { loss: r.loss, parts };
  }
  // the teacher's intermediates are freed at once; only its logits stay for the loss
  const teacherLogits = noGrad(() => scope(() => teacher.forward(input).logits));
  const studentLogits = student.forward(input).logits;
  const r = distillationLoss(studentLogits, teacherLogits, target, {
    temperature: cfg.temperature,
    ceWeight: cfg.ceWeight,
    mask,
  });
  const parts: Record<string, Tensor> = { kl: r.kl };
  if (r.ce) parts.ce = r.ce;
  return { loss: r.loss, parts };
}

/**
 * Which student parameters a stage trains, as the reference does: stages 1 and 2 train each SSM
 * layer's mixer only (the norms, MLPs, embeddings and head are the teacher's and stay frozen;
 * stage 2 with `trainMlp` also trains the MLPs of the SSM layers and, in sequential blocks, the
 * norm in front of them); stage 3 trains everything. The stage's `freeze` patterns (globs or
 * /regex/, compiled once with params.ts's grammar) then remove parameters; a pattern that
 * matches no parameter of the student is an error (usually a typo).
 */
export function stageTrainable(
  stage: StageKind,
  names: readonly string[],
  student: { readonly blocks: readonly { readonly mixerKind: string }[] },
  cfg: Pick<StageConfig, 'trainMlp' | 'freeze'>,
  where = 'freeze',
): string[] {
  const preds = cfg.freeze.map(compilePattern);
  preds.forEach((pred, i) => {
    if (!names.some(pred))
      throw new Error(
        `${where}: pattern "${cfg.freeze[i]}" matches no parameter (names look like: ${names[0] ?? ''})`,
      );
  });
  const frozen = (name: string) => preds.some((p) => p(name));
  return names.filter((name) => {
    if (frozen(name)) return false;
    if (stage === 3) return true;
    const m = /(?:^|\.)layers\.(\d+)\.(.+)$/.exec(name);
    if (!m) return false;
    if (student.blocks[Number(m[1])]?.mixerKind !== 'ssm') return false;
    const rest = m[2];
    if (rest.startsWith('mixer.')) return true;
    return (
      stage === 2 && cfg.trainMlp && (rest.startsWith('mlp.') || rest.startsWith('post_attention_layernorm.'))
    );
  });
}
