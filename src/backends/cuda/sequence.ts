// Launchers of kernels/sequence.cu: the causal depthwise conv1d (forward, backward), rotary
// position embeddings, and the one-token recurrent step of the mixer for decoding.

import type { ColumnWindow, DeviceBuffer, RopeParams, SsmStepParams } from '../backend.js';
import { moduleKernels, roundUp, storage, THREADS, type CudaBuffer, type Host } from './host.js';
import { gateBands, sumGateD } from './elementwise.js';

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
  conv1d_win_f32: 'plppppliii',
  conv1d_k4_win_f32: 'plppppliii',
  conv1d_backward_win_f32: 'plppplippliiil',
  conv1d_backward_k4_win_f32: 'plppplippliiil',
  conv1d_backward_win_bf16x: 'plppplippliiil',
  conv1d_backward_k4_win_bf16x: 'plppplippliiil',
  silu_gate_d_win_f32: 'pppplppippilii',
  silu_gate_d_win_x4: 'pppplppippilii',
  silu_gate_d_backward_win_f32: 'ppppippppplippliii',
  log_decay_win_f32: 'plppli',
  log_decay_backward_win_f32: 'ppplili',
} as const;

const { k, run1 } = moduleKernels('sequence', SEQUENCE_SIGNATURES);

const MAX_CONV_K = 16;
/** time steps each conv thread walks (CONV_RUN in sequence.cu) */
const CONV_RUN = 32;
/**
 * the fewest rows a block of the windowed conv backward walks (more: fewer, longer walks and
 * smaller partial weight gradients to sum; MOHAWK_CONV_BAND_ROWS, read once, for measurements)
 */
const CONV_BAND_ROWS = Math.max(1, Number(process.env.MOHAWK_CONV_BAND_ROWS ?? 64) || 64);
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
  const name = x16
    ? kernel === 4
      ? 'conv1d_backward_w_k4_bf16x'
      : 'conv1d_backward_w_bf16x'
    : kernel === 4
      ? 'conv1d_backward_w_k4_f32'
      : 'conv1d_backward_w_f32';
  convWeightGrads(h, gWeight, gBias, gw, gb, batch * t, channels, kernel, 16, (nb, perBlock, pw, pb) =>
    k(h, name).launch([nb, 1, 1], Math.min(THREADS, roundUp(channels, 32)), 0, [
      xp,
      gyp,
      pw,
      pb,
      batch,
      t,
      channels,
      kernel,
      perBlock,
    ]),
  );
}

/**
 * The conv's weight and bias gradients from per-band partial sums: bands of at least `bandRows`
 * of the (batch * T) rows (at most 4 per multiprocessor), `launch(bands, rowsPerBand, pw, pb)`
 * writes the partials pw (bands, C, K) and pb (bands, C) | 0, then they are summed over the bands.
 */
function convWeightGrads(
  h: Host,
  gWeight: DeviceBuffer,
  gBias: DeviceBuffer | null,
  /** their pointers, checked by the caller before any launch (gb 0: no bias) */
  gw: number,
  gb: number,
  rows: number,
  channels: number,
  kernel: number,
  bandRows: number,
  launch: (bands: number, perBlock: number, pw: number, pb: number) => void,
): void {
  if (channels * kernel === 0) return;
  if (rows === 0) {
    h.fill(gWeight, 0);
    if (gBias) h.fill(gBias, 0);
    return;
  }
  const blocks = Math.max(1, Math.min(Math.ceil(rows / bandRows), h.sms * 4));
  const perBlock = Math.ceil(rows / blocks);
  const nb = Math.ceil(rows / perBlock);
  const pw = h.scratch(nb * channels * kernel);
  const pb = gBias ? h.scratch(nb * channels) : null;
  launch(nb, perBlock, pw.ptr, pb ? pb.ptr : 0);
  h.sumInto(pw.ptr, gw, 1, nb, channels * kernel);
  if (pb) h.sumInto(pb.ptr, gb, 1, nb, channels);
  h.free(pw);
  if (pb) h.free(pb);
}

/** 4-byte elements: the byte address of a window's first element */
const at = (ptr: number, win: ColumnWindow): number => ptr + win.offset * 4;

function checkWindow(what: string, len: number, win: ColumnWindow, rows: number, channels: number): void {
  if (!(
    win.stride >= channels &&
    win.offset >= 0 &&
    (rows === 0 || win.offset + (rows - 1) * win.stride + channels <= len)
  ))
    throw new Error(
      `cuda backend: ${what} window (offset ${win.offset}, stride ${win.stride}) of ${rows} x ${channels} outside its ${len} elements`,
    );
}

/** causalConv1d over a column window of x read in place (Backend.causalConv1dWindow) */
export function causalConv1dWindow(
  h: Host,
  x: DeviceBuffer,
  xWin: ColumnWindow,
  weight: DeviceBuffer,
  bias: DeviceBuffer | null,
  out: DeviceBuffer,
  xKeep: DeviceBuffer | null,
  batch: number,
  t: number,
  channels: number,
  kernel: number,
): void {
  if (kernel > MAX_CONV_K)
    throw new Error(`cuda backend: conv1d kernel size ${kernel} (at most ${MAX_CONV_K})`);
  const xb = h.buf(x, 'conv1d input');
  if (xb.dtype !== 'f32') throw new Error(`cuda backend: conv1d window input must be f32, got ${xb.dtype}`);
  checkWindow('conv1d input', xb.length, xWin, batch * t, channels);
  let kp = 0;
  if (xKeep) {
    const kb = h.buf(xKeep, 'conv1d kept input');
    if (kb.dtype !== 'bf16' || kb.length !== batch * t * channels)
      throw new Error(
        `cuda backend: conv1d kept input must be ${batch * t * channels} bf16, got ${kb.length} ${kb.dtype}`,
      );
    kp = kb.ptr;
  }
  run1(h, kernel === 4 ? 'conv1d_k4_win_f32' : 'conv1d_win_f32', batch * convRuns(t) * channels, [
    at(xb.ptr, xWin),
    xWin.stride,
    h.f(weight, 'conv1d weight'),
    bias ? h.f(bias, 'conv1d bias') : 0,
    h.f(out, 'conv1d output'),
    kp,
    batch,
    t,
    channels,
    kernel,
  ]);
}

/** Backend.causalConv1dWindowBackward: gx into a window of its buffer, weight and bias gradients */
export function causalConv1dWindowBackward(
  h: Host,
  x: DeviceBuffer,
  xWin: ColumnWindow | null,
  weight: DeviceBuffer,
  gy: DeviceBuffer,
  gx: DeviceBuffer,
  gxWin: ColumnWindow,
  accumulate: boolean,
  gWeight: DeviceBuffer,
  gBias: DeviceBuffer | null,
  batch: number,
  t: number,
  channels: number,
  kernel: number,
): void {
  if (kernel > MAX_CONV_K)
    throw new Error(`cuda backend: conv1d kernel size ${kernel} (at most ${MAX_CONV_K})`);
  const xb = h.buf(x, 'conv1d input');
  // x is the f32 window, or the dense bf16 copy the forward kept
  if (xWin ? xb.dtype !== 'f32' : xb.dtype !== 'bf16' || xb.length !== batch * t * channels)
    throw new Error(`cuda backend: conv1d window backward input ${xb.length} ${xb.dtype} does not fit`);
  if (xWin) checkWindow('conv1d input', xb.length, xWin, batch * t, channels);
  const gxb = h.buf(gx, 'conv1d input gradient');
  if (gxb.dtype !== 'f32')
    throw new Error(`cuda backend: conv1d input gradient must be f32, got ${gxb.dtype}`);
  checkWindow('conv1d input gradient', gxb.length, gxWin, batch * t, channels);
  const gw = h.f(gWeight, 'conv1d weight gradient');
  const gb = gBias ? h.f(gBias, 'conv1d bias gradient') : 0;
  const name = xWin
    ? kernel === 4
      ? 'conv1d_backward_k4_win_f32'
      : 'conv1d_backward_win_f32'
    : kernel === 4
      ? 'conv1d_backward_k4_win_bf16x'
      : 'conv1d_backward_win_bf16x';
  const threads = Math.min(THREADS, roundUp(channels, 32));
  // one pass over gy for x's gradient and the partial weight and bias gradients (bands of rows)
  convWeightGrads(
    h,
    gWeight,
    gBias,
    gw,
    gb,
    batch * t,
    channels,
    kernel,
    CONV_BAND_ROWS,
    (nb, perBlock, pw, pb) =>
      k(h, name).launch([nb, Math.min(Math.ceil(channels / threads), 65535), 1], threads, 0, [
        xWin ? at(xb.ptr, xWin) : xb.ptr,
        xWin ? xWin.stride : channels,
        h.f(weight, 'conv1d weight'),
        h.f(gy, 'conv1d gradient'),
        at(gxb.ptr, gxWin),
        gxWin.stride,
        accumulate ? 1 : 0,
        pw,
        pb,
        batch,
        t,
        channels,
        kernel,
        perBlock,
      ]),
  );
}

/** Backend.siluGateDWindow: the mixer's gate with its D term, z read in place from in_proj's output */
export function siluGateDWindow(
  h: Host,
  y: DeviceBuffer,
  x: DeviceBuffer,
  D: DeviceBuffer,
  z: DeviceBuffer,
  zWin: ColumnWindow,
  bias: DeviceBuffer,
  out: DeviceBuffer,
  rows: number,
  cols: number,
  headDim: number,
  yKeep: DeviceBuffer | null,
  zKeep: DeviceBuffer | null,
): void {
  const o = h.buf(out, 'siluGateD output');
  const ot = storage(o.dtype, 'siluGateD output');
  const keep = yKeep !== null && zKeep !== null;
  if (
    keep &&
    (ot === 0 || h.buf(yKeep, 'kept y').dtype !== o.dtype || h.buf(zKeep, 'kept z').dtype !== o.dtype)
  )
    throw new Error('cuda backend: siluGateD keeps y and z in the 16-bit dtype of its output');
  const zb = h.buf(z, 'siluGateD z');
  if (zb.dtype !== 'f32') throw new Error(`cuda backend: siluGateD z window must be f32, got ${zb.dtype}`);
  checkWindow('siluGateD z', zb.length, zWin, rows, cols);
  const x4 = cols % 4 === 0 && zWin.stride % 4 === 0 && zWin.offset % 4 === 0;
  run1(h, x4 ? 'silu_gate_d_win_x4' : 'silu_gate_d_win_f32', x4 ? (rows * cols) / 4 : rows * cols, [
    h.f(y, 'siluGateD y'),
    h.f(x, 'siluGateD x'),
    h.f(D, 'siluGateD D'),
    at(zb.ptr, zWin),
    zWin.stride,
    h.f(bias, 'siluGateD bias'),
    o.ptr,
    ot,
    keep ? h.buf(yKeep, 'kept y').ptr : 0,
    keep ? h.buf(zKeep, 'kept z').ptr : 0,
    keep ? 1 : 0,
    rows,
    cols,
    headDim,
  ]);
}

/**
 * Backend.siluGateDWindowBackward: as siluGateDBackward (column sums per band of rows, then over
 * bands and each head's columns: no atomics), z's gradient into its window of in_proj's output
 * gradient and the bias gradient from the same pass.
 */
export function siluGateDWindowBackward(
  h: Host,
  y: DeviceBuffer,
  x: DeviceBuffer,
  D: DeviceBuffer,
  z: DeviceBuffer,
  bias: DeviceBuffer,
  g: DeviceBuffer,
  gy: DeviceBuffer,
  gx: DeviceBuffer,
  gz: DeviceBuffer,
  gzWin: ColumnWindow,
  accumulate: boolean,
  gD: DeviceBuffer,
  gBias: DeviceBuffer | null,
  rows: number,
  cols: number,
  headDim: number,
): void {
  if (rows === 0 || cols === 0) {
    h.fill(gD, 0);
    if (gBias) h.fill(gBias, 0);
    return;
  }
  const { threads, colBlocks, rowsPerBlock, bands } = gateBands(h, rows, cols);
  const yb = h.buf(y, 'siluGateD y');
  const zb = h.buf(z, 'siluGateD z');
  if (yb.dtype !== zb.dtype)
    throw new Error(`cuda backend: siluGateD y ${yb.dtype} and z ${zb.dtype} differ`);
  const gzb = h.buf(gz, 'siluGateD z gradient');
  if (gzb.dtype !== 'f32')
    throw new Error(`cuda backend: siluGateD z gradient must be f32, got ${gzb.dtype}`);
  checkWindow('siluGateD z gradient', gzb.length, gzWin, rows, cols);
  const partialD = h.scratch(bands * cols);
  const partialB = gBias ? h.scratch(bands * cols) : null;
  k(h, 'silu_gate_d_backward_win_f32').launch([colBlocks, bands, 1], threads, 0, [
    yb.ptr,
    h.f(x, 'siluGateD x'),
    h.f(D, 'siluGateD D'),
    zb.ptr,
    storage(yb.dtype, 'siluGateD y'),
    h.f(bias, 'siluGateD bias'),
    h.f(g, 'siluGateD gradient'),
    h.f(gy, 'siluGateD y gradient'),
    h.f(gx, 'siluGateD x gradient'),
    at(gzb.ptr, gzWin),
    gzWin.stride,
    accumulate ? 1 : 0,
    partialD.ptr,
    partialB ? partialB.ptr : 0,
    rows,
    cols,
    headDim,
    rowsPerBlock,
  ]);
  sumGateD(h, partialD, gD, bands, cols, headDim);
  if (partialB) h.sumInto(partialB.ptr, h.f(gBias!, 'siluGateD bias gradient'), 1, bands, cols);
  h.free(partialD);
  if (partialB) h.free(partialB);
}

/** Backend.logDecayWindow: -softplus(a) of a window of in_proj's output, and a's dense copy */
export function logDecayWindow(
  h: Host,
  a: DeviceBuffer,
  aWin: ColumnWindow,
  out: DeviceBuffer,
  aKeep: DeviceBuffer | null,
  rows: number,
  cols: number,
): void {
  const ab = h.buf(a, 'logDecay a');
  if (ab.dtype !== 'f32') throw new Error(`cuda backend: logDecay a must be f32, got ${ab.dtype}`);
  checkWindow('logDecay a', ab.length, aWin, rows, cols);
  run1(h, 'log_decay_win_f32', rows * cols, [
    at(ab.ptr, aWin),
    aWin.stride,
    h.f(out, 'logDecay output'),
    aKeep ? h.f(aKeep, 'logDecay kept a') : 0,
    rows,
    cols,
  ]);
}

/** Backend.logDecayWindowBackward: a's gradient into its window of in_proj's output gradient */
export function logDecayWindowBackward(
  h: Host,
  a: DeviceBuffer,
  g: DeviceBuffer,
  ga: DeviceBuffer,
  gaWin: ColumnWindow,
  accumulate: boolean,
  rows: number,
  cols: number,
): void {
  const gb = h.buf(ga, 'logDecay a gradient');
  if (gb.dtype !== 'f32') throw new Error(`cuda backend: logDecay a gradient must be f32, got ${gb.dtype}`);
  checkWindow('logDecay a gradient', gb.length, gaWin, rows, cols);
  run1(h, 'log_decay_backward_win_f32', rows * cols, [
    h.f(a, 'logDecay a'),
    h.f(g, 'logDecay gradient'),
    at(gb.ptr, gaWin),
    gaWin.stride,
    accumulate ? 1 : 0,
    rows,
    cols,
  ]);
}

export function rope(h: Host, x: DeviceBuffer, out: DeviceBuffer, p: RopeParams): void {
  if (p.rotaryDim % 2 !== 0 || p.rotaryDim > p.headDim) {
    throw new Error(`rope: rotaryDim (${p.rotaryDim}) must be even and at most headDim (${p.headDim})`);
  }
  const per = p.rotaryDim / 2 + p.headDim - p.rotaryDim;
  const table = ropeTable(h, p.seqLen, p.rotaryDim, p.theta, p.positionOffset);
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
 * rotaryDim / 2 per position (scratch of the caller, which frees it): for rope_f32 and the
 * attention's own rope.
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
