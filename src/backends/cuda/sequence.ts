// Launchers of kernels/sequence.cu: the causal depthwise conv1d (forward, backward), rotary
// position embeddings, and the one-token recurrent step of the mixer for decoding.

import type { DeviceBuffer, RopeParams, SsmStepParams } from '../backend.js';
import { moduleKernels, roundUp, THREADS, type CudaBuffer, type Host } from './host.js';

/** Kernel signatures of kernels/sequence.cu (argument kinds, see kernels.ts). */
export const SEQUENCE_SIGNATURES = {
  conv1d_f32: 'ppppliii',
  conv1d_backward_x_f32: 'pppliii',
  conv1d_backward_w_f32: 'ppppliiil',
  conv1d_k4_f32: 'ppppliii',
  conv1d_backward_x_k4_f32: 'pppliii',
  conv1d_backward_w_k4_f32: 'ppppliiil',
  rope_table_f32: 'piidi',
  ssm_step_f32: 'ppppppppiiiiii',
  conv_state_push_f32: 'pplii',
  rope_f32: 'pppliiiiii',
  conv1d_keep_f32: 'pppppliii',
  conv1d_k4_keep_f32: 'pppppliii',
  conv1d_backward_w_bf16x: 'ppppliiil',
  conv1d_backward_w_k4_bf16x: 'ppppliiil',
} as const;

const { k, run1 } = moduleKernels('sequence', SEQUENCE_SIGNATURES);

const MAX_CONV_K = 16;
/** time steps each conv thread walks (CONV_RUN in sequence.cu) */
const CONV_RUN = 32;
const convRuns = (t: number): number => Math.ceil(t / CONV_RUN);

export function causalConv1d(
  h: Host,
  x: DeviceBuffer,
  weight: DeviceBuffer,
  bias: DeviceBuffer | null,
  out: DeviceBuffer,
  batch: number,
  t: number,
  channels: number,
  kernel: number,
  xKeep: DeviceBuffer | null = null,
): void {
  if (kernel > MAX_CONV_K)
    throw new Error(`cuda backend: conv1d kernel size ${kernel} (at most ${MAX_CONV_K})`);
  const n = batch * convRuns(t) * channels;
  const common = [
    h.f(x, 'conv1d input'),
    h.f(weight, 'conv1d weight'),
    bias ? h.f(bias, 'conv1d bias') : 0,
    h.f(out, 'conv1d output'),
  ];
  if (xKeep) {
    // also the bf16 copy of x that the weight gradient reads (causalConv1dBackward with a bf16 x)
    const kb = h.buf(xKeep, 'conv1d kept input');
    if (kb.dtype !== 'bf16' || kb.length !== batch * t * channels)
      throw new Error(
        `cuda backend: conv1d kept input must be ${batch * t * channels} bf16, got ${kb.length} ${kb.dtype}`,
      );
    run1(h, kernel === 4 ? 'conv1d_k4_keep_f32' : 'conv1d_keep_f32', n, [
      ...common,
      kb.ptr,
      batch,
      t,
      channels,
      kernel,
    ]);
    return;
  }
  run1(h, kernel === 4 ? 'conv1d_k4_f32' : 'conv1d_f32', n, [...common, batch, t, channels, kernel]);
}

export function causalConv1dBackward(
  h: Host,
  x: DeviceBuffer,
  weight: DeviceBuffer,
  gy: DeviceBuffer,
  gx: DeviceBuffer,
  gWeight: DeviceBuffer,
  gBias: DeviceBuffer | null,
  batch: number,
  t: number,
  channels: number,
  kernel: number,
): void {
  if (kernel > MAX_CONV_K)
    throw new Error(`cuda backend: conv1d kernel size ${kernel} (at most ${MAX_CONV_K})`);
  // x is f32, or the bf16 copy the forward kept (causalConv1d with xKeep)
  const xb = h.buf(x, 'conv1d input');
  if (xb.dtype !== 'f32' && xb.dtype !== 'bf16')
    throw new Error(`cuda backend: conv1d input must be f32 or bf16, got ${xb.dtype}`);
  const xp = xb.ptr;
  const x16 = xb.dtype === 'bf16';
  const wp = h.f(weight, 'conv1d weight');
  const gyp = h.f(gy, 'conv1d gradient');
  const gw = h.f(gWeight, 'conv1d weight gradient');
  const gb = gBias ? h.f(gBias, 'conv1d bias gradient') : 0;
  run1(
    h,
    kernel === 4 ? 'conv1d_backward_x_k4_f32' : 'conv1d_backward_x_f32',
    batch * convRuns(t) * channels,
    [wp, gyp, h.f(gx, 'conv1d input gradient'), batch, t, channels, kernel],
  );
  if (channels * kernel === 0) return;
  const rows = batch * t;
  if (rows === 0) {
    h.fill(gWeight, 0);
    if (gBias) h.fill(gBias, 0);
    return;
  }
  const blocks = Math.max(1, Math.min(Math.ceil(rows / 16), h.sms * 4));
  const perBlock = Math.ceil(rows / blocks);
  const nb = Math.ceil(rows / perBlock);
  const pw = h.scratch(nb * channels * kernel);
  const pb = gBias ? h.scratch(nb * channels) : null;
  const name = x16
    ? kernel === 4
      ? 'conv1d_backward_w_k4_bf16x'
      : 'conv1d_backward_w_bf16x'
    : kernel === 4
      ? 'conv1d_backward_w_k4_f32'
      : 'conv1d_backward_w_f32';
  k(h, name).launch([nb, 1, 1], Math.min(THREADS, roundUp(channels, 32)), 0, [
    xp,
    gyp,
    pw.ptr,
    pb ? pb.ptr : 0,
    batch,
    t,
    channels,
    kernel,
    perBlock,
  ]);
  h.sumInto(pw.ptr, gw, 1, nb, channels * kernel);
  if (pb) h.sumInto(pb.ptr, gb, 1, nb, channels);
  h.free(pw);
  if (pb) h.free(pb);
}

export function rope(h: Host, x: DeviceBuffer, out: DeviceBuffer, p: RopeParams): void {
  if (p.rotaryDim % 2 !== 0 || p.rotaryDim > p.headDim) {
    throw new Error(`rope: rotaryDim (${p.rotaryDim}) must be even and at most headDim (${p.headDim})`);
  }
  const half = p.rotaryDim / 2;
  const per = half + p.headDim - p.rotaryDim;
  const table = h.scratch(Math.max(1, p.seqLen * half * 2));
  if (half > 0)
    run1(h, 'rope_table_f32', p.seqLen * half, [table.ptr, p.seqLen, p.rotaryDim, p.theta, p.positionOffset]);
  run1(h, 'rope_f32', p.batch * p.seqLen * p.heads * per, [
    h.f(x, 'rope input'),
    h.f(out, 'rope output'),
    table.ptr,
    p.batch,
    p.seqLen,
    p.heads,
    p.headDim,
    p.rotaryDim,
    p.interleaved ? 1 : 0,
    p.inverse ? 1 : 0,
  ]);
  h.free(table);
}

/**
 * The (cos, sin) table of rope_table_f32 for positions positionOffset .. + seqLen - 1, pairs of
 * rotaryDim / 2 per position (scratch of the caller, which frees it): the attention's own rope.
 */
export function ropeTable(
  h: Host,
  seqLen: number,
  rotaryDim: number,
  theta: number,
  positionOffset: number,
): CudaBuffer {
  const half = rotaryDim / 2;
  const table = h.scratch(Math.max(1, seqLen * half * 2));
  if (half > 0)
    run1(h, 'rope_table_f32', seqLen * half, [table.ptr, seqLen, rotaryDim, theta, positionOffset]);
  return table;
}

export function ssmStep(
  h: Host,
  xbc: DeviceBuffer,
  convState: DeviceBuffer,
  convWeight: DeviceBuffer,
  convBias: DeviceBuffer | null,
  a: DeviceBuffer,
  D: DeviceBuffer,
  ssm: DeviceBuffer,
  y: DeviceBuffer,
  p: SsmStepParams,
): void {
  const { batch, heads: H, groups: G, headDim: P, dState: N, kernel: K } = p;
  if (batch === 0 || H === 0) return;
  if (H > 65535 || batch > 65535)
    throw new Error('cuda backend: ssmStep with more than 65535 heads or sequences');
  const C = H * P + 2 * G * N;
  const xp = h.f(xbc, 'ssmStep xbc');
  const sp = h.f(convState, 'ssmStep conv state');
  // rows of each head's state split over blocks until about two blocks per multiprocessor
  // (at least 8 rows a block): batch 1 has only H (head, sequence) pairs
  // (MOHAWK_SSM_SPLIT=0: one block per head and sequence, as before)
  const splits =
    process.env.MOHAWK_SSM_SPLIT === '0'
      ? 1
      : Math.max(1, Math.min(Math.ceil((2 * h.sms) / (H * batch)), Math.ceil(P / 8), 65535));
  const rowsPer = Math.ceil(P / splits);
  k(h, 'ssm_step_f32').launch([H, batch, Math.ceil(P / rowsPer)], 256, (rowsPer + 2 * N) * 4, [
    xp,
    sp,
    h.f(convWeight, 'ssmStep conv weight'),
    convBias ? h.f(convBias, 'ssmStep conv bias') : 0,
    h.f(a, 'ssmStep a'),
    h.f(D, 'ssmStep D'),
    h.f(ssm, 'ssmStep state'),
    h.f(y, 'ssmStep output'),
    H,
    G,
    P,
    N,
    K,
    p.silu ? 1 : 0,
  ]);
  if (K > 1) run1(h, 'conv_state_push_f32', batch * C, [sp, xp, batch, K, C]);
}
