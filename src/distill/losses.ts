// The three MOHAWK objectives, written from the paper's definitions.

import {
  add,
  addScalar,
  crossEntropy,
  klDivergence,
  mean,
  mul,
  scale,
  tensor,
  shapeStr,
  sqrt,
  square,
  sub,
  sum,
  type Tensor,
} from '../tensor/index.js';

function sameShape(op: string, a: Tensor, b: Tensor): void {
  if (a.ndim !== b.ndim || a.shape.some((d, i) => d !== b.shape[i])) {
    throw new Error(`${op}: student ${shapeStr(a.shape)} and teacher ${shapeStr(b.shape)} differ`);
  }
}

/**
 * Stage 1, matrix orientation: the Frobenius norm of (student mixing matrix - teacher attention
 * matrix) per (sequence, head), averaged. Both (B, H, T, T).
 */
export function matrixOrientationLoss(student: Tensor, teacher: Tensor): Tensor {
  sameShape('matrixOrientationLoss', student, teacher);
  // a tiny floor keeps the square root differentiable at an exact match
  const perHead = sqrt(addScalar(sum(square(sub(student, teacher)), [2, 3]), 1e-12));
  return mean(perHead);
}

/**
 * Stage 2, hidden-state alignment: the L2 norm per token of (student output - teacher output),
 * averaged over tokens. Both (B, T, D).
 */
export function hiddenStateAlignmentLoss(student: Tensor, teacher: Tensor): Tensor {
  sameShape('hiddenStateAlignmentLoss', student, teacher);
  const perToken = sqrt(addScalar(sum(square(sub(student, teacher)), [-1]), 1e-12));
  return mean(perToken);
}

export interface DistillationLossOptions {
  /** softmax temperature tau for both distributions */
  temperature?: number;
  /** weight of cross-entropy on the data's next tokens (0 = pure distillation) */
  ceWeight?: number;
  /**
   * multiply the KL term by tau^2 (Hinton et al., 2015) so that its gradients keep their scale
   * as tau changes (default true; the reported `kl` part stays unscaled)
   */
  scaleByTemperatureSquared?: boolean;
  /**
   * (B, T) of 0/1: the positions whose next token counts (chat data, `data.maskPrompt`); both
   * terms then average over the counted positions only
   */
  mask?: Tensor | null;
}

/**
 * Stage 3, knowledge distillation: tau^2 KL(teacher || student) of the next-token distributions
 * at temperature tau, averaged over tokens, plus ceWeight * cross-entropy on `targets` when given.
 * Logits (B, T, V); targets (B, T) i32. Returns the total and its parts.
 */
export function distillationLoss(
  studentLogits: Tensor,
  teacherLogits: Tensor,
  targets: Tensor | null,
  opts: DistillationLossOptions = {},
): { loss: Tensor; kl: Tensor; ce: Tensor | null } {
  sameShape('distillationLoss', studentLogits, teacherLogits);
  const tau = opts.temperature ?? 1;
  const mask = opts.mask ?? null;
  let kl: Tensor;
  if (mask) {
    // masked: the per-position KL times the mask, summed, over the counted positions
    if (mask.size !== studentLogits.size / studentLogits.shape[studentLogits.ndim - 1])
      throw new Error(
        `distillationLoss: mask ${shapeStr(mask.shape)} does not fit logits ${shapeStr(studentLogits.shape)}`,
      );
    const m = Float64Array.from(mask.toArray());
    const counted = m.reduce((a, v) => a + v, 0);
    const perPosition = klDivergence(teacherLogits, studentLogits, { temperature: tau, reduction: 'none' });
    const w = tensor(m, perPosition.shape, perPosition.dtype);
    kl = scale(sum(mul(perPosition, w)), 1 / Math.max(counted, 1));
  } else kl = klDivergence(teacherLogits, studentLogits, { temperature: tau });
  let loss = (opts.scaleByTemperatureSquared ?? true) && tau !== 1 ? scale(kl, tau * tau) : kl;
  let ce: Tensor | null = null;
  const w = opts.ceWeight ?? 0;
  if (w > 0) {
    if (!targets) throw new Error('distillationLoss: ceWeight > 0 needs targets');
    ce = mask ? maskedCrossEntropy(studentLogits, targets, mask) : crossEntropy(studentLogits, targets);
    loss = add(loss, scale(ce, w));
  }
  return { loss, kl, ce };
}

/** Cross-entropy over the positions the mask counts: the others get the ignored target -100. */
function maskedCrossEntropy(logits: Tensor, targets: Tensor, mask: Tensor): Tensor {
  const t = targets.toArray();
  const m = mask.toArray();
  const kept = Int32Array.from(t, (v, i) => (m[i] > 0 ? v : -100));
  return crossEntropy(logits, tensor(kept, targets.shape, 'i32'), { ignoreIndex: -100 });
}
