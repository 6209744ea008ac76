// MOHAWK diagnostics: how far a student is from its teacher, layer by layer, on the teacher's own
// inputs (the quantities the stages minimize), and end to end.
//
// Per layer l, with x_l the teacher's residual stream entering block l:
//   matrix distance  = mean over (sequence, head) of || M_student(x_l) - M_teacher(x_l) ||_F
//   output distance  = mean over tokens of || block_student(x_l) - block_teacher(x_l) ||_2
// End to end: KL(teacher || student) of the next-token distributions, averaged over tokens.

import {
  crossEntropy,
  klDivergence,
  mean,
  noGrad,
  scope,
  shapeStr,
  slice,
  sqrt,
  square,
  sub,
  sum,
  tensor,
  type Tensor,
} from '../tensor/index.js';
import type { CausalLM } from '../models/types.js';

export interface LayerDiagnosis {
  layer: number;
  /** the student's mixer in this layer */
  mixer: 'attention' | 'ssm';
  /** mean over (sequence, head) of the Frobenius norm of (student matrix - teacher matrix) */
  matrixDistance: number;
  /** mean over (sequence, head) of the teacher matrix's Frobenius norm, for scale */
  teacherMatrixNorm: number;
  /** mean over tokens of the L2 norm of (student block output - teacher block output) */
  outputDistance: number;
  /** mean over tokens of the L2 norm of the teacher's block output, for scale */
  teacherOutputNorm: number;
}

export interface Diagnosis {
  sequences: number;
  tokens: number;
  layers: LayerDiagnosis[];
  /** KL(teacher || student) per token, averaged */
  kl: number;
  /** next-token cross-entropy of each model on the same tokens (nats/token) */
  teacherNll: number;
  studentNll: number;
  /** the matrices of one (layer, head) of the first sequence, when asked: (T, T) row-major */
  picture?: { layer: number; head: number; size: number; teacher: Float32Array; student: Float32Array };
}

export interface DiagnoseOptions {
  /** also return the matrices of this layer and head */
  picture?: { layer: number; head: number };
  onLayer?: (layer: number) => void;
}

function checkPair(teacher: CausalLM, student: CausalLM): void {
  const t = teacher.info;
  const s = student.info;
  if (t.nLayers !== s.nLayers || student.blocks.length !== teacher.blocks.length)
    throw new Error(`diagnose: the teacher has ${t.nLayers} layers, the student ${s.nLayers}`);
  if (t.dModel !== s.dModel)
    throw new Error(`diagnose: the teacher's d_model is ${t.dModel}, the student's ${s.dModel}`);
  if (t.vocabSize !== s.vocabSize)
    throw new Error(
      `diagnose: the teacher's vocabulary has ${t.vocabSize} tokens, the student's ${s.vocabSize}`,
    );
}

/** ids (B, T) as rows of equal length. */
export function diagnose(
  teacher: CausalLM,
  student: CausalLM,
  ids: number[][],
  opts: DiagnoseOptions = {},
): Diagnosis {
  checkPair(teacher, student);
  const B = ids.length;
  const T = ids[0]?.length ?? 0;
  if (B === 0 || T < 2 || ids.some((r) => r.length !== T))
    throw new Error('diagnose: needs one or more sequences of the same length, at least 2 tokens');
  const pic = opts.picture;
  if (pic && !(Number.isInteger(pic.layer) && pic.layer >= 0 && pic.layer < teacher.blocks.length))
    throw new Error(
      `diagnose: layer ${pic.layer} is not a layer of the model (0..${teacher.blocks.length - 1})`,
    );
  const flat = tensor(ids.flat(), [B, T], 'i32');
  const result: Diagnosis = { sequences: B, tokens: B * T, layers: [], kl: 0, teacherNll: 0, studentNll: 0 };
  noGrad(() =>
    scope(() => {
      const tf = teacher.forward(flat, { capture: { layerInputs: true, layerOutputs: true } });
      const inputs = tf.captured.layerInputs!;
      const outputs = tf.captured.layerOutputs!;
      teacher.blocks.forEach((tBlock, l) => {
        const sBlock = student.blocks[l];
        scope(() => {
          // the teacher's matrix is recomputed per layer so that only one layer's (B, H, T, T)
          // matrices are alive at a time
          const mt = tBlock.forward(inputs[l], { returnMatrix: true }).matrix;
          const sr = sBlock.forward(inputs[l], { returnMatrix: true });
          const ms = sr.matrix;
          if (!mt || !ms) throw new Error(`diagnose: layer ${l} did not return its mixing matrix`);
          if (mt.shape.join() !== ms.shape.join())
            throw new Error(
              `diagnose: layer ${l}: teacher matrix ${shapeStr(mt.shape)} and student matrix ${shapeStr(ms.shape)} differ (heads must match)`,
            );
          const frob = (x: Tensor) => mean(sqrt(sum(square(x), [2, 3]))).item();
          const l2 = (x: Tensor) => mean(sqrt(sum(square(x), [-1]))).item();
          result.layers.push({
            layer: l,
            mixer: sBlock.mixerKind,
            matrixDistance: frob(sub(ms, mt)),
            teacherMatrixNorm: frob(mt),
            outputDistance: l2(sub(sr.out, outputs[l])),
            teacherOutputNorm: l2(outputs[l]),
          });
          if (pic && pic.layer === l) {
            const H = mt.shape[1];
            if (!(Number.isInteger(pic.head) && pic.head >= 0 && pic.head < H))
              throw new Error(`diagnose: head ${pic.head} is not a head of layer ${l} (0..${H - 1})`);
            const one = (m: Tensor) =>
              Float32Array.from(slice(slice(m, 0, 0, 1), 1, pic.head, pic.head + 1).toArray());
            result.picture = { layer: l, head: pic.head, size: T, teacher: one(mt), student: one(ms) };
          }
        });
        opts.onLayer?.(l);
      });
      const sLogits = student.forward(flat).logits;
      result.kl = klDivergence(tf.logits, sLogits).item();
      const next = tensor(
        ids.flatMap((r) => r.slice(1)),
        [B, T - 1],
        'i32',
      );
      const pred = (x: Tensor) => slice(x, 1, 0, T - 1);
      result.teacherNll = crossEntropy(pred(tf.logits), next).item();
      result.studentNll = crossEntropy(pred(sLogits), next).item();
    }),
  );
  flat.dispose();
  return result;
}

// ---- the picture ------------------------------------------------------------------------------

export interface Image {
  width: number;
  height: number;
  /** width * height * 3 bytes, rows top to bottom */
  rgb: Uint8Array;
}

/**
 * Two (T, T) matrices side by side on one colour scale: white at 0, red for positive and blue
 * for negative values, intensity sqrt(|v| / vmax) (attention is mostly tiny values), vmax = the
 * largest |value| of the first matrix (the teacher's); the masked upper triangle in light grey.
 */
export function renderMatrices(
  a: ArrayLike<number>,
  b: ArrayLike<number>,
  size: number,
  target = 384,
): Image {
  if (a.length !== size * size || b.length !== size * size)
    throw new Error(`renderMatrices: expected two ${size} x ${size} matrices`);
  const cell = Math.max(1, Math.floor(target / size));
  const pad = 8;
  const side = size * cell;
  const width = 2 * side + 3 * pad;
  const height = side + 2 * pad;
  const rgb = new Uint8Array(width * height * 3).fill(255);
  let vmax = 0;
  for (let i = 0; i < a.length; i++) vmax = Math.max(vmax, Math.abs(a[i]));
  if (vmax === 0) vmax = 1;
  const paint = (m: ArrayLike<number>, x0: number) => {
    for (let t = 0; t < size; t++)
      for (let s = 0; s < size; s++) {
        let r: number, g: number, bl: number;
        if (s > t) [r, g, bl] = [225, 225, 225];
        else {
          const v = m[t * size + s];
          const k = Math.min(1, Math.sqrt(Math.abs(v) / vmax));
          const fade = Math.round(255 * (1 - k));
          // positive: white -> dark red; negative: white -> dark blue
          [r, g, bl] =
            v >= 0 ? [255 - Math.round(100 * k), fade, fade] : [fade, fade, 255 - Math.round(100 * k)];
        }
        for (let dy = 0; dy < cell; dy++)
          for (let dx = 0; dx < cell; dx++) {
            const o = ((pad + t * cell + dy) * width + x0 + s * cell + dx) * 3;
            rgb[o] = r;
            rgb[o + 1] = g;
            rgb[o + 2] = bl;
          }
      }
  };
  paint(a, pad);
  paint(b, 2 * pad + side);
  return { width, height, rgb };
}
