// The distillation loss straight from the last hidden states: linear (lm_head) + softmax + KL
// divergence (teacher || student), plus cross-entropy on the data, computed over chunks of tokens
// so that the full (tokens x vocab) logits of the two models never exist at once. At a Llama-3
// vocabulary (128256) and 4 x 2048 tokens each f32 logits tensor is 4.2 GB; here a chunk's logits
// (chunkRows x vocab, two models, one gradient) are the largest buffers.
//
// The gradient is computed in the same pass: for each chunk, the KL (and CE) gradient with
// respect to the student's logits is formed and at once multiplied back into the gradients of
// the student's hidden states (gZ W) and head weights (gZ^T X, bias: column sums of gZ). These
// are saved for the backward of the one recorded node, which only scales them by the incoming
// gradient (the loss is a scalar at the end of the graph). Reference: the unfused path,
// klDivergence(linear(...), linear(...)) + crossEntropy, in test/fused-head.test.ts.

import {
  add,
  cast,
  castWithBiasGrad,
  fusedGlue,
  getAutocast,
  linear,
  matmul,
  mul,
  scale,
  slice,
  sum,
  weightCopy,
} from './ops.js';
import { empty, full, noGrad, record, scope, zeros, type Tensor } from './tensor.js';

/** One model's head input: the normed hidden states (N, d) and lm_head (vocab rows used, d). */
export interface HeadInput {
  /** (N, d): the final norm's output, one row per token */
  x: Tensor;
  /** (V', d) with V' >= vocab: only the first `vocab` rows are used (padded vocabularies) */
  weight: Tensor;
  bias: Tensor | null;
}

export interface FusedHeadOptions {
  /** the vocabulary both distributions are over (default: the student weight's rows) */
  vocab?: number;
  temperature?: number;
  /** targets (N) i32 for the cross-entropy term; needed when ceWeight > 0 */
  targets?: Tensor | null;
  ceWeight?: number;
  /** multiply the KL term by temperature^2 (Hinton et al.) */
  scaleByTemperatureSquared?: boolean;
  /** tokens per chunk (default: about 512 MiB of f32 logits per model) */
  chunkRows?: number;
}

export interface FusedHeadResult {
  /** the loss to train on: kl (x tau^2 if asked) + ceWeight * ce; carries the gradient */
  loss: Tensor;
  /** mean KL over tokens (a value for logs, no gradient) */
  kl: Tensor;
  /** mean cross-entropy over tokens, or null when ceWeight is 0 */
  ce: Tensor | null;
}

/** Default chunk: about 2^27 logits (512 MiB in f32) per model. */
export function defaultChunkRows(vocab: number): number {
  return Math.max(1, Math.floor(2 ** 27 / vocab));
}

/**
 * Mean KL(teacher || student) over N tokens of the two heads' softmax distributions (with
 * temperature), plus ceWeight times the student's mean cross-entropy, without materializing the
 * full logits. Gradients flow to student.x, student.weight and student.bias; the teacher is
 * treated as a constant.
 */
export function linearKLDivergence(
  student: HeadInput,
  teacher: HeadInput,
  opts: FusedHeadOptions = {},
): FusedHeadResult {
  const xs = student.x;
  const xt = teacher.x;
  const what = 'linearKLDivergence';
  if (xs.ndim !== 2 || xt.ndim !== 2 || xs.shape[0] !== xt.shape[0])
    throw new Error(
      `${what}: hidden states must be (N, d) with equal N, got [${xs.shape}] and [${xt.shape}]`,
    );
  const N = xs.shape[0];
  const vocab = opts.vocab ?? student.weight.shape[0];
  for (const [name, h] of [
    ['student', student],
    ['teacher', teacher],
  ] as const) {
    if (h.weight.ndim !== 2 || h.weight.shape[1] !== h.x.shape[1] || h.weight.shape[0] < vocab)
      throw new Error(
        `${what}: ${name} weight [${h.weight.shape}] must be (>= ${vocab}, ${h.x.shape[1]}) for hidden [${h.x.shape}]`,
      );
    if (h.bias && h.bias.size < vocab)
      throw new Error(`${what}: ${name} bias has ${h.bias.size} < ${vocab} values`);
  }
  const tau = opts.temperature ?? 1;
  const ceWeight = opts.ceWeight ?? 0;
  const targets = opts.targets ?? null;
  if (ceWeight > 0 && (!targets || targets.size !== N || targets.dtype !== 'i32'))
    throw new Error(`${what}: ceWeight > 0 needs ${N} i32 targets`);
  const klScale = opts.scaleByTemperatureSquared && tau !== 1 ? tau * tau : 1;
  const chunk = Math.max(1, Math.min(N, opts.chunkRows ?? defaultChunkRows(vocab)));
  const backend = xs.backend;
  // logits, losses and gradients in f32 (f64 for f64 inputs: the gradient checks)
  const dt = xs.dtype === 'f64' ? 'f64' : 'f32';
  const wantGrad = [xs, student.weight, student.bias].some((t) => t?.requiresGrad);

  // the results: sums over tokens on the device, and the gradients of the loss (upstream 1)
  const klSum = zeros([], dt, backend);
  const ceSum = ceWeight > 0 ? zeros([], dt, backend) : null;
  const gx = wantGrad && xs.requiresGrad ? empty(xs.shape, dt, backend) : null;
  const gw = wantGrad && student.weight.requiresGrad ? zeros(student.weight.shape, dt, backend) : null;
  const gb = wantGrad && student.bias?.requiresGrad ? zeros(student.bias.shape, dt, backend) : null;

  noGrad(() =>
    scope(() => {
      // the heads' first `vocab` rows once (a copy only for padded vocabularies), rounded to the
      // autocast dtype once instead of once per chunk
      const low = getAutocast();
      const head = (h: HeadInput) => {
        let w = h.weight.shape[0] === vocab ? h.weight : slice(h.weight, 0, 0, vocab);
        if (low && w.dtype === 'f32') w = (w === h.weight ? weightCopy(w, low) : null) ?? cast(w, low);
        const b = h.bias ? (h.bias.size === vocab ? h.bias : slice(h.bias, 0, 0, vocab)) : null;
        return { w, b };
      };
      const hs = head(student);
      const ht = head(teacher);
      // d(mean loss)/d(row loss): 1/N per row (scaled for the KL term)
      // MOHAWK_FUSED_KL=0: the loss its own launch, the gradient in f32 and cast (A/B runs)
      const fusedKL = fusedGlue('MOHAWK_FUSED_KL');
      const rowGradKL = full([chunk], klScale / N, dt, backend);
      const rowGradCE = ceWeight > 0 ? full([chunk], ceWeight / N, dt, backend) : null;
      for (let r0 = 0; r0 < N; r0 += chunk) {
        const r1 = Math.min(N, r0 + chunk);
        const rows = r1 - r0;
        scope(() => {
          const xc = rows === N ? xs : slice(xs, 0, r0, r1);
          const zs = linear(xc, hs.w, hs.b);
          const zt = linear(rows === N ? xt : slice(xt, 0, r0, r1), ht.w, ht.b);
          // per-row KL and CE, summed into the totals; with gradients, the KL comes from the
          // gradient's launch (one pass over both chunks' logits less)
          const kl = empty([rows], dt, backend);
          let gz: Tensor | null = null;
          if (wantGrad) {
            // gZ = d loss / d student logits for these rows: rounded to the autocast dtype by the
            // kernel when only the two products read it (no cross-entropy term, no bias)
            const direct16 = fusedKL && low && !rowGradCE && !gb && dt === 'f32';
            gz = empty([rows, vocab], direct16 ? low : dt, backend);
            const g1 = rows === chunk ? rowGradKL : slice(rowGradKL, 0, 0, rows);
            backend.klDivergenceBackward(
              zt.buffer,
              zs.buffer,
              g1.buffer,
              gz.buffer,
              rows,
              vocab,
              tau,
              null,
              fusedKL ? kl.buffer : null,
            );
          }
          if (!gz || !fusedKL) backend.klDivergence(zt.buffer, zs.buffer, kl.buffer, rows, vocab, tau);
          backend.copyStrided(sum(kl).buffer, 0, [], klSum.buffer, 0, [], [], true);
          let tc: Tensor | null = null;
          let lse: Tensor | null = null;
          if (ceSum && targets) {
            tc = rows === N ? targets.view([N]) : slice(targets.view([N]), 0, r0, r1);
            const ce = empty([rows], dt, backend);
            lse = empty([rows], dt, backend);
            backend.crossEntropy(zs.buffer, tc.buffer, ce.buffer, lse.buffer, rows, vocab, -100);
            backend.copyStrided(sum(ce).buffer, 0, [], ceSum.buffer, 0, [], [], true);
          }
          if (!gz) return;
          if (rowGradCE && tc && lse) {
            const gce = empty([rows, vocab], dt, backend);
            const g2 = rows === chunk ? rowGradCE : slice(rowGradCE, 0, 0, rows);
            backend.crossEntropyBackward(
              zs.buffer,
              tc.buffer,
              lse.buffer,
              g2.buffer,
              gce.buffer,
              rows,
              vocab,
              -100,
            );
            backend.binary('add', gz.buffer, [vocab, 1], gce.buffer, [vocab, 1], gz.buffer, [rows, vocab]);
          }
          // gZ in the autocast dtype once, for both products; the bias's column sums in the same
          // pass where the backend fuses them (MOHAWK_FUSED_BIAS_GRAD)
          const fused =
            gb && gb.dtype === 'f32' && low && gz.dtype === 'f32' ? castWithBiasGrad(gz, low) : null;
          const gzLow = fused ? fused[0] : low && gz.dtype === 'f32' ? cast(gz, low) : gz;
          if (gx) {
            // gX rows = gZ W  (rows, vocab) x (vocab, d)
            const g = matmul(gzLow, hs.w);
            backend.copyStrided(g.buffer, 0, [1], gx.buffer, r0 * xs.shape[1], [1], [g.size], false);
          }
          if (gw) {
            // gW[:vocab] += gZ^T X  (vocab, rows) x (rows, d): one accumulating product (beta 1)
            // in the autocast dtype, as the tensor-level matmul would run it
            const b = low && xc.dtype === 'f32' ? cast(xc, low) : xc;
            const d = xs.shape[1];
            backend.matmul(gzLow.buffer, b.buffer, gw.buffer, {
              batch: 1,
              m: vocab,
              n: d,
              k: rows,
              transA: true,
              transB: false,
              strideA: 0,
              strideB: 0,
              strideC: 0,
              alpha: 1,
              beta: 1,
            });
          }
          if (gb) {
            const g = fused ? fused[1] : sum(gz, [0]);
            backend.copyStrided(g.buffer, 0, [1], gb.buffer, 0, [1], [vocab], true);
          }
        });
      }
    }),
  );

  const kl = scale(klSum, 1 / N);
  const ce = ceSum ? scale(ceSum, 1 / N) : null;
  let value = klScale === 1 ? kl : scale(kl, klScale);
  if (ce) value = add(value, scale(ce, ceWeight));
  // the loss: the value above, with the saved gradients as its backward
  const loss = empty([], dt, backend);
  backend.copyStrided(value.buffer, 0, [], loss.buffer, 0, [], [], false);
  const inputs = [xs, student.weight, ...(student.bias ? [student.bias] : [])];
  const saved = [gx, gw, gb].filter((t): t is Tensor => t !== null);
  record(loss, 'linearKLDivergence', inputs, saved, (g) => [
    gx ? mul(gx, g) : null,
    gw ? mul(gw, g) : null,
    ...(student.bias ? [gb ? mul(gb, g) : null] : []),
  ]);
  return { loss, kl, ce };
}
