// Launchers of kernels/decode.cu: the fused kernels of the recurrent student's decoding step
// (LayerNorm into 16 bits, the mixer's step with its output gate read straight from in_proj's
// output, the conv state push), and matmulAct (gemv.cu with the activation in its epilogue).
// The ops that use them (src/tensor/decode-ops.ts) compose the unfused kernels when
// MOHAWK_DECODE_FUSED=0 or the backend lacks them.

import type { DeviceBuffer, SsmStepParams } from '../backend.js';
import { gemv, gemvTakes, linearParams } from './gemv.js';
import { layerNormWarpTo16 } from './rows.js';
import { moduleKernels, outCode, rowThreads, type CudaBuffer, type Host } from './host.js';

/** Kernel signatures of kernels/decode.cu (argument kinds, see kernels.ts). */
export const DECODE_SIGNATURES = {
  layernorm_to16: 'ppppiif',
  ssm_step_gate: 'pliiippppppppiiiiiii',
  conv_push_rows: 'pplilii',
} as const;

const { k, run1 } = moduleKernels('decode', DECODE_SIGNATURES);

/** throws unless `t` (when given) holds `len` values of f32; `what` names it ("matmulAct bias") */
export function checkF32(t: CudaBuffer | null, len: number, what: string): void {
  if (t && (t.dtype !== 'f32' || t.length !== len))
    throw new Error(`cuda backend: ${what} must be ${len} values of f32, got ${t.length} ${t.dtype}`);
}

export function layerNormTo16(
  h: Host,
  x: DeviceBuffer,
  weight: DeviceBuffer,
  bias: DeviceBuffer | null,
  out: DeviceBuffer,
  rows: number,
  cols: number,
  eps: number,
): void {
  const o = h.buf(out, 'layerNormTo16 output');
  const args = [
    h.f(x, 'layerNormTo16 input'),
    h.f(weight, 'layerNormTo16 weight'),
    bias ? h.f(bias, 'layerNormTo16 bias') : 0,
    o.ptr,
    outCode(o.dtype, 'layerNormTo16 output'),
  ];
  if (rows * cols === 0) return;
  // many rows (a teacher's forward): rows.cu's one warp per row, writing the 16 bits alone
  if (rows >= 256 && layerNormWarpTo16(h, args[0], args[1], args[2], o.ptr, o.dtype, rows, cols, eps)) return;
  k(h, 'layernorm_to16').launch([rows, 1, 1], rowThreads(cols), 0, [...args, cols, eps]);
}

export function ssmStepGate(
  h: Host,
  zx: DeviceBuffer,
  layout: { rowLen: number; xOff: number; zOff: number; aOff: number },
  convState: DeviceBuffer,
  convWeight: DeviceBuffer,
  convBias: DeviceBuffer | null,
  D: DeviceBuffer,
  zBias: DeviceBuffer,
  ssm: DeviceBuffer,
  out: DeviceBuffer,
  p: SsmStepParams,
): void {
  const { batch, heads: H, groups: G, headDim: P, dState: N, kernel: K } = p;
  const o = h.buf(out, 'ssmStepGate output');
  const ot = outCode(o.dtype, 'ssmStepGate output');
  const zp = h.f(zx, 'ssmStepGate in_proj output');
  const sp = h.f(convState, 'ssmStepGate conv state');
  if (batch === 0 || H === 0) return;
  if (H > 65535 || batch > 65535)
    throw new Error('cuda backend: ssmStepGate with more than 65535 heads or sequences');
  const C = H * P + 2 * G * N;
  // with a group per head (the 1.5B student: G = H = 32), one block of up to 1024 threads per
  // (head, sequence) reads each conv channel once and pushes it too (no conv_push_rows launch);
  // otherwise the rows of each head's state are split over blocks as ssm_step_f32's (sequence.ts)
  const inlinePush = G === H && K > 1 && process.env.MOHAWK_DECODE_PUSH !== '0';
  const splits =
    inlinePush || process.env.MOHAWK_SSM_SPLIT === '0'
      ? 1
      : Math.max(1, Math.min(Math.ceil((2 * h.sms) / (H * batch)), Math.ceil(P / 8), 65535));
  const rowsPer = Math.ceil(P / splits);
  // 1024 threads: each warp holds at most two of a head's 64 state rows, both loaded up front
  const threads = inlinePush ? 1024 : 256;
  k(h, 'ssm_step_gate').launch([H, batch, Math.ceil(P / rowsPer)], threads, (2 * rowsPer + 2 * N) * 4, [
    zp,
    layout.rowLen,
    layout.xOff,
    layout.zOff,
    layout.aOff,
    sp,
    h.f(convWeight, 'ssmStepGate conv weight'),
    convBias ? h.f(convBias, 'ssmStepGate conv bias') : 0,
    h.f(D, 'ssmStepGate D'),
    h.f(zBias, 'ssmStepGate z bias'),
    h.f(ssm, 'ssmStepGate state'),
    inlinePush ? sp : 0,
    o.ptr,
    ot,
    H,
    G,
    P,
    N,
    K,
    p.silu ? 1 : 0,
  ]);
  if (K > 1 && !inlinePush)
    run1(h, 'conv_push_rows', batch * C, [sp, zp, layout.rowLen, layout.xOff, batch, K, C]);
}

/**
 * c = act(a b^T + bias) into c's 16-bit dtype: gemv.cu with the activation in its epilogue for a
 * few rows, else `composed` (the product into f32, then the activation into 16 bits).
 */
export function matmulAct(
  h: Host,
  act: 'geluNew',
  a: CudaBuffer,
  b: CudaBuffer,
  c: CudaBuffer,
  m: number,
  n: number,
  kk: number,
  bias: CudaBuffer | null,
  composed: () => void,
): void {
  const p = linearParams(m, n, kk);
  if (act === 'geluNew' && a.dtype === 'bf16' && (!bias || bias.dtype === 'f32') && gemvTakes(a, b, c, p)) {
    gemv(h, a, b, c, bias, p, 1);
    return;
  }
  composed();
}

/**
 * c (f32) = (r1 + r2) + (a b^T + bias): gemv.cu with the residual addends in its epilogue for a
 * few rows, else `composed` (the product, then add3).
 */
export function matmulResidual(
  h: Host,
  a: CudaBuffer,
  b: CudaBuffer,
  c: CudaBuffer,
  m: number,
  n: number,
  kk: number,
  bias: CudaBuffer | null,
  r1: CudaBuffer,
  r2: CudaBuffer,
  composed: () => void,
): void {
  const p = linearParams(m, n, kk);
  if (a.dtype === 'bf16' && (!bias || bias.dtype === 'f32') && gemvTakes(a, b, c, p)) {
    gemv(h, a, b, c, bias, p, 0, r1, r2);
    return;
  }
  composed();
}

/**
 * c1 (f32) = a w1^T + bias1 and c2 (16-bit) = act(a w2^T + bias2) in one gemv.cu launch for a few
 * rows, else `composed`.
 */
export function matmulPair(
  h: Host,
  a: CudaBuffer,
  m: number,
  kk: number,
  w1: CudaBuffer,
  bias1: CudaBuffer | null,
  c1: CudaBuffer,
  n1: number,
  w2: CudaBuffer,
  bias2: CudaBuffer | null,
  c2: CudaBuffer,
  n2: number,
  act2: 'geluNew',
  composed: () => void,
): void {
  const p1 = linearParams(m, n1, kk);
  if (
    act2 === 'geluNew' &&
    a.dtype === 'bf16' &&
    c1.dtype === 'f32' &&
    [bias1, bias2].every((b) => !b || b.dtype === 'f32') &&
    gemvTakes(a, w1, c1, p1) &&
    gemvTakes(a, w2, c2, linearParams(m, n2, kk))
  ) {
    gemv(h, a, w1, c1, bias1, p1, 0, null, null, { w: w2, c: c2, bias: bias2, n: n2, act: 1 });
    return;
  }
  composed();
}
