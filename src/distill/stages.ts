// The three MOHAWK stages as loss functions over a batch of token ids, plus which student
// parameters each stage trains. In stages 1 and 2 every student layer sees the teacher's own
// input to that layer (captured from one teacher forward), so layers are independent.

import { add, linearKLDivergence, noGrad, reshape, scale, scope, type Tensor } from '../tensor/index.js';
import type { CausalLM } from '../models/types.js';
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

/** Student layers that have an SSM mixer (the ones stages 1 and 2 train). */
export function ssmLayers(student: CausalLM): number[] {
  return student.blocks.flatMap((b, i) => (b.mixerKind === 'ssm' ? [i] : []));
}

/** Stage 1: mean over SSM layers of the matrix-orientation loss on the teacher's inputs. */
export function stage1Loss(teacher: CausalLM, student: CausalLM, ids: Tensor): StageLoss {
  const layers = ssmLayers(student);
  const t = noGrad(() =>
    scope(() => teacher.forward(ids, { capture: { layerInputs: true, mixerMatrices: true } }).captured),
  );
  let total: Tensor | null = null;
  const parts: Record<string, Tensor> = {};
  for (const l of layers) {
    const r = student.blocks[l].forward(t.layerInputs![l], { returnMatrix: true });
    const loss = matrixOrientationLoss(r.matrix!, t.mixerMatrices![l]);
    parts[`layer${l}`] = loss;
    total = total ? add(total, loss) : loss;
  }
  if (!total) throw new Error('stage 1: the student has no SSM layers to orient');
  return { loss: scale(total, 1 / layers.length), parts };
}

/**
 * Stage 2: mean over SSM layers of the hidden-state alignment loss on the teacher's inputs;
 * the target is the mixer output when the MLP is frozen, the whole block output otherwise.
 */
export function stage2Loss(teacher: CausalLM, student: CausalLM, ids: Tensor, mlpFrozen: boolean): StageLoss {
  const layers = ssmLayers(student);
  const capture = mlpFrozen
    ? { layerInputs: true, mixerOutputs: true }
    : { layerInputs: true, layerOutputs: true };
  const t = noGrad(() => scope(() => teacher.forward(ids, { capture }).captured));
  let total: Tensor | null = null;
  const parts: Record<string, Tensor> = {};
  for (const l of layers) {
    const r = student.blocks[l].forward(t.layerInputs![l]);
    const loss = mlpFrozen
      ? hiddenStateAlignmentLoss(r.mixerOut, t.mixerOutputs![l])
      : hiddenStateAlignmentLoss(r.out, t.layerOutputs![l]);
    parts[`layer${l}`] = loss;
    total = total ? add(total, loss) : loss;
  }
  if (!total) throw new Error('stage 2: the student has no SSM layers to align');
  return { loss: scale(total, 1 / layers.length), parts };
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

/** Stage 3: KL(teacher || student) on next-token distributions, optionally plus cross-entropy. */
export function stage3Loss(
  teacher: CausalLM,
  student: CausalLM,
  input: Tensor,
  target: Tensor,
  cfg: Pick<StageConfig, 'temperature' | 'ceWeight'>,
  opts: Stage3Options = {},
): StageLoss {
  const fused = opts.fusedHead ?? process.env.MOHAWK_FUSED_HEAD === '1';
  if (fused && teacher.headParts && student.headParts && teacher.info.vocabSize === student.info.vocabSize) {
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
  });
  const parts: Record<string, Tensor> = { kl: r.kl };
  if (r.ce) parts.ce = r.ce;
  return { loss: r.loss, parts };
}

/**
 * Which student parameters a stage trains, by name: stages 1-2 train each SSM layer's mixer and
 * the norm in front of it (stage 2 also the MLP and its norm unless frozen); stage 3 trains
 * everything. `freeze` patterns then remove parameters.
 */
export function trainableIn(
  stage: StageKind,
  name: string,
  student: CausalLM,
  cfg: Pick<StageConfig, 'mlpFrozen' | 'freeze'>,
): boolean {
  if (cfg.freeze.some((p) => new RegExp(p).test(name))) return false;
  if (stage === 3) return true;
  const m = /\blayers\.(\d+)\.(.+)$/.exec(name);
  if (!m) return false;
  const layer = Number(m[1]);
  if (student.blocks[layer]?.mixerKind !== 'ssm') return false;
  const rest = m[2];
  if (rest.startsWith('mixer.') || rest.startsWith('input_layernorm.')) return true;
  if (stage === 2 && !cfg.mlpFrozen)
    return !rest.startsWith('mixer.') && !rest.startsWith('input_layernorm.');
  return false;
}
