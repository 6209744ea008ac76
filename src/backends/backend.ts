// The Backend interface: the closed list of kernels every backend implements (CPU, CUDA).
//
// Conventions, shared by every kernel:
// - Buffers are opaque device allocations owned by the backend. Kernels never allocate their
//   outputs: the tensor layer allocates every output and passes it in, so memory stays in the
//   tensor layer's scopes and a backend can be asynchronous (CUDA queues work on one stream).
// - All tensors are dense row-major. Shapes are given as plain integers in the order written in
//   each comment, e.g. `x is (B, T, H, P)` means the last index moves fastest.
// - Compute dtypes are f32 (and f64 on the CPU, for gradient checks); bf16/f16 are storage
//   dtypes converted with `cast`, and `matmul` takes bf16/f16 operands (both the same) with an
//   f32 (or same-dtype) product: mixed precision, f32 accumulation.
//   i32 holds token ids and targets.
// - Kernels that accumulate say so (`accumulate` flags, `beta` in matmul); all others overwrite.
// - Reading to the host (`read`) is the only way values leave a device.

export type DType = 'f32' | 'f64' | 'i32' | 'bf16' | 'f16';

export const DTYPE_BYTES: Record<DType, number> = { f32: 4, f64: 8, i32: 4, bf16: 2, f16: 2 };

/** Row-major (dense) element strides of a shape: the last axis has stride 1. */
export function denseStrides(shape: readonly number[]): number[] {
  const s = new Array<number>(shape.length);
  let acc = 1;
  for (let i = shape.length - 1; i >= 0; i--) {
    s[i] = acc;
    acc *= shape[i];
  }
  return s;
}

/** A device allocation. Backends attach their own fields; above `tensor/` it is opaque. */
export interface DeviceBuffer {
  readonly dtype: DType;
  /** number of elements */
  readonly length: number;
}

/**
 * A (rows, width) operand read or written in place inside a wider row-major matrix: its element
 * (r, c) is at offset + r * stride + c (a column block of a projection's output).
 */
export interface ColumnWindow {
  offset: number;
  stride: number;
}

export type HostArray = Float32Array | Float64Array | Int32Array | Uint16Array;

/** The elementwise unary kernels (each with its derivative), enumerated once. */
export const UNARY_OPS = [
  'identity',
  'neg',
  'exp',
  'log',
  'sqrt',
  'rsqrt',
  'tanh',
  'sigmoid',
  'softplus',
  'silu',
  'relu',
  'gelu',
  'geluNew',
  'square',
  'abs',
  'reciprocal',
] as const;

export type UnaryOp = (typeof UNARY_OPS)[number];

export type BinaryOp = 'add' | 'sub' | 'mul' | 'div' | 'maximum' | 'eq';

export type ReduceOp = 'sum' | 'max';

export interface MatmulParams {
  /** number of independent products; stride 0 broadcasts an operand over the batch */
  batch: number;
  m: number;
  n: number;
  k: number;
  /** op(A) is (m, k): A is stored (m, k), or (k, m) when transA */
  transA: boolean;
  /** op(B) is (k, n): B is stored (k, n), or (n, k) when transB */
  transB: boolean;
  /** element strides between batch entries */
  strideA: number;
  strideB: number;
  strideC: number;
  /** C = alpha * op(A) op(B) + beta * C */
  alpha: number;
  beta: number;
}

export interface AttentionParams {
  batch: number;
  /** query positions and key positions; query t sees keys s <= t + (tk - tq) when causal */
  tq: number;
  tk: number;
  heads: number;
  /** key/value heads; heads must be a multiple (grouped-query attention) */
  kvHeads: number;
  headDim: number;
  scale: number;
  causal: boolean;
  /**
   * true under bf16/f16 autocast: the backend may compute the products in 16-bit on tensor cores
   * (fp32 accumulation; inputs and outputs stay f32). Backends may ignore it (the CPU does).
   */
  lowPrecision?: boolean;
  /**
   * the rotary embedding of `rope` (RopeParams) on q and k before the products, q row t and k
   * row s at positions positionOffset + t and positionOffset + s (forward only: attentionBackward
   * takes already rotated q and k)
   */
  rope?: { rotaryDim: number; theta: number; interleaved: boolean; positionOffset: number };
}

export interface SsdParams {
  batch: number;
  seqLen: number;
  /** value heads (H) of size headDim (P); B and C come in `groups` (G) heads of size dState (N) */
  heads: number;
  groups: number;
  headDim: number;
  dState: number;
  chunkSize: number;
  /** as for attention: under autocast the chunk products may run in 16-bit, fp32 accumulation */
  lowPrecision?: boolean;
}

export interface SsmStepParams {
  batch: number;
  /** value heads (H) of size headDim (P); B and C in `groups` (G) of size dState (N) */
  heads: number;
  groups: number;
  headDim: number;
  dState: number;
  /** conv kernel size K (the conv state holds K - 1 inputs) */
  kernel: number;
  /** silu after the conv (else identity) */
  silu: boolean;
}

export interface RopeParams {
  batch: number;
  seqLen: number;
  heads: number;
  headDim: number;
  /** leading dimensions of each head that rotate (a multiple of 2) */
  rotaryDim: number;
  theta: number;
  /** llama2.c pairs adjacent dimensions (2i, 2i+1); HF rotates halves (i, i + rotaryDim/2) */
  interleaved: boolean;
  /** position of the first token (for cached decoding) */
  positionOffset: number;
  /** rotate by the negative angle (the backward pass) */
  inverse: boolean;
}

export interface AdamWParams {
  lr: number;
  beta1: number;
  beta2: number;
  eps: number;
  weightDecay: number;
  /** 1-based step for bias correction */
  step: number;
}

/**
 * AdamW whose per-step numbers come from a device buffer, so that a captured training step
 * replays with this step's values: `scalars` (f64) holds lr at 0, the gradient's scale (the
 * clipping coefficient, 1 without clipping) at 1, and this parameter's bias corrections
 * 1 - beta1^t and 1 - beta2^t at biasAt and biasAt + 1.
 */
export interface AdamWDeviceParams {
  beta1: number;
  beta2: number;
  eps: number;
  /** decoupled decay: p *= 1 - lr weightDecay (see rowAbs) */
  weightDecay: number;
  biasAt: number;
  /** elements per row of the parameter for rowAbs (its first axis) */
  rowLen: number;
}

/** `adamwFused`'s numbers: those of the device step, and where the parameter's rows start in rowSquares */
export interface AdamWFusedParams extends AdamWDeviceParams {
  /** index of the parameter's first row in rowSquares */
  rowAt: number;
}

export interface MemoryStats {
  liveBuffers: number;
  liveBytes: number;
  peakBytes: number;
  /** bytes held by a caching allocator beyond the live ones */
  cachedBytes: number;
}

/**
 * A recorded sequence of kernels (a CUDA graph on the GPU, a call list on the CPU) that runs again
 * on the same buffers with the same scalar arguments: one launch instead of one per kernel.
 */
export interface GraphCapture {
  /**
   * Run what was captured again: same kernels, same buffers, same scalar arguments. The inputs
   * registered at capture are re-read (their current host contents are uploaded) first.
   */
  replay(): void;
  /** Free the graph and the buffers only it holds (its private pool). Safe to call twice. */
  destroy(): void;
  /** kernels / nodes recorded (for reports and tests) */
  readonly nodes: number;
}

export interface Backend {
  readonly name: 'cpu' | 'cuda';
  /** human-readable description, e.g. "cpu (OpenBLAS sgemm)" */
  describe(): string;

  // ---- memory -------------------------------------------------------------------------------
  alloc(dtype: DType, length: number): DeviceBuffer;
  free(buf: DeviceBuffer): void;
  /** copy host data into buf starting at element `offset` */
  write(buf: DeviceBuffer, data: HostArray, offset?: number): void;
  /** copy buf to a new host array (Float32Array, Float64Array, Int32Array or Uint16Array by dtype) */
  read(buf: DeviceBuffer): HostArray;
  memoryStats(): MemoryStats;
  /** start peak tracking afresh from the bytes live now */
  resetPeak(): void;
  /** wait until all queued work is done */
  synchronize(): void;
  /**
   * Record everything fn queues, without running it, as a graph to replay (see GraphCapture).
   * Rules:
   * - fn must not read to the host or synchronize: `read`/`synchronize` inside it throw, naming
   *   the call. Run the same work once eagerly first (warm-up): kernels are compiled, GEMM plans
   *   chosen and caches filled there, not during capture.
   * - `write(buf, arr)` inside fn with `arr` one of `inputs` (the same array object) is re-read
   *   at every replay; every other write inside fn is a constant, snapshotted at capture.
   * - Buffers allocated inside fn come from a private pool that lives as long as the graph (an
   *   output kept after fn is refilled by every replay; freeing it later returns it to that
   *   pool). Buffers freed inside fn are reused only inside the same capture. Every buffer
   *   allocated before fn and used inside it must stay alive while the graph is replayed.
   * - When capture fails (an unsupported call), everything it took is freed and the error is
   *   thrown: callers fall back to eager.
   * Optional: backends without it run eagerly only.
   */
  capture?(fn: () => void, inputs?: readonly HostArray[]): GraphCapture;

  // ---- elementwise --------------------------------------------------------------------------
  fill(out: DeviceBuffer, value: number): void;
  /** out = convert(x) elementwise, rounding to nearest even for bf16/f16 */
  cast(x: DeviceBuffer, out: DeviceBuffer): void;
  /**
   * out = alpha * f(x) + beta, n elements. out may be bf16/f16 for an f32 x: the result rounded
   * to nearest even in the same pass (an activation that feeds a 16-bit product).
   */
  unary(op: UnaryOp, x: DeviceBuffer, out: DeviceBuffer, alpha: number, beta: number): void;
  /** gx = gy * f'(x) (gx may alias gy) */
  unaryBackward(op: UnaryOp, x: DeviceBuffer, gy: DeviceBuffer, gx: DeviceBuffer): void;
  /** out[i] = a[i·sa] op b[i·sb] over `shape`, strides 0 on broadcast axes; out is dense */
  binary(
    op: BinaryOp,
    a: DeviceBuffer,
    aStrides: number[],
    b: DeviceBuffer,
    bStrides: number[],
    out: DeviceBuffer,
    shape: number[],
  ): void;
  /** dst[dstOffset + idx·dstStrides] (+)= src[srcOffset + idx·srcStrides] over `shape` */
  copyStrided(
    src: DeviceBuffer,
    srcOffset: number,
    srcStrides: number[],
    dst: DeviceBuffer,
    dstOffset: number,
    dstStrides: number[],
    shape: number[],
    accumulate: boolean,
  ): void;
  /** x is (outer, n, inner) -> out (outer, inner) */
  reduce(op: ReduceOp, x: DeviceBuffer, out: DeviceBuffer, outer: number, n: number, inner: number): void;
  /** x is (outer, n, inner): out[.., t, ..] = sum_{s<=t} x (or s>=t when reverse) */
  cumsum(x: DeviceBuffer, out: DeviceBuffer, outer: number, n: number, inner: number, reverse: boolean): void;
  /** x is (rows, T) -> out (rows, T, T): out[r,i,j] = sum_{k=j+1..i} x[r,k] for j <= i, -inf above */
  segsum(x: DeviceBuffer, out: DeviceBuffer, rows: number, t: number): void;
  /** gOut is (rows, T, T) -> gx (rows, T): the adjoint of segsum on its finite entries */
  segsumBackward(gOut: DeviceBuffer, gx: DeviceBuffer, rows: number, t: number): void;
  /** x is (rows, tq, tk): entries with key s > query t + (tk - tq) are set to `value` */
  causalMask(x: DeviceBuffer, out: DeviceBuffer, rows: number, tq: number, tk: number, value: number): void;
  /** out = x * keep / (1 - p), keep drawn from a counter-based hash of (seed, index) */
  dropout(x: DeviceBuffer, out: DeviceBuffer, p: number, seed: number): void;
  /** y, z, out (rows, cols), bias (cols): out = y * silu(z + bias), the Mamba mixer's output gate */
  siluGate(
    y: DeviceBuffer,
    z: DeviceBuffer,
    bias: DeviceBuffer,
    out: DeviceBuffer,
    rows: number,
    cols: number,
  ): void;
  /** with u = z + bias: gy = g silu(u), gz = g y silu'(u) (overwritten) */
  siluGateBackward(
    y: DeviceBuffer,
    z: DeviceBuffer,
    bias: DeviceBuffer,
    g: DeviceBuffer,
    gy: DeviceBuffer,
    gz: DeviceBuffer,
    rows: number,
    cols: number,
  ): void;

  // ---- fused glue (optional: ops.ts composes the same from the ops above where it is absent) --
  /**
   * out = f(x) and xOut = x, both rounded to one 16-bit dtype in one pass (x f32): an activation
   * feeding a 16-bit product keeps the 16-bit copy of its input for backward. A backend with this
   * method accepts such a 16-bit x in `unaryBackward`.
   */
  unaryKeep16?(op: UnaryOp, x: DeviceBuffer, out: DeviceBuffer, xOut: DeviceBuffer): void;
  /**
   * The gated MLP's product, g, u, out (n): out = f(g) * u, out f32 or 16 bits (rounded in the
   * same pass); with gKeep and uKeep (out's 16-bit dtype) also g and u rounded, for the backward.
   */
  gatedAct?(
    op: UnaryOp,
    g: DeviceBuffer,
    u: DeviceBuffer,
    out: DeviceBuffer,
    gKeep: DeviceBuffer | null,
    uKeep: DeviceBuffer | null,
  ): void;
  /**
   * gg = go u f'(g), gu = go f(g); g and u f32, or both in the 16-bit dtype gatedAct kept; gg and
   * gu f32, or both 16-bit (gradients that only feed 16-bit products)
   */
  gatedActBackward?(
    op: UnaryOp,
    g: DeviceBuffer,
    u: DeviceBuffer,
    go: DeviceBuffer,
    gg: DeviceBuffer,
    gu: DeviceBuffer,
  ): void;
  /**
   * The mixer's output gate with its D term, y, x, z, out (rows, cols), D (cols / headDim), bias
   * (cols): v = y + D[col / headDim] x, out = v * silu(z + bias); out f32 or 16 bits. With yKeep
   * and zKeep (out's 16-bit dtype) also y and z rounded, which the backward may then read instead.
   */
  siluGateD?(
    y: DeviceBuffer,
    x: DeviceBuffer,
    D: DeviceBuffer,
    z: DeviceBuffer,
    bias: DeviceBuffer,
    out: DeviceBuffer,
    rows: number,
    cols: number,
    headDim: number,
    yKeep?: DeviceBuffer | null,
    zKeep?: DeviceBuffer | null,
  ): void;
  /**
   * gy = g silu(u), gx = gy D[col / headDim], gz = g v silu'(u), gD = sum of gy x per head; y and
   * z f32 or both the 16-bit copies siluGateD kept
   */
  siluGateDBackward?(
    y: DeviceBuffer,
    x: DeviceBuffer,
    D: DeviceBuffer,
    z: DeviceBuffer,
    bias: DeviceBuffer,
    g: DeviceBuffer,
    gy: DeviceBuffer,
    gx: DeviceBuffer,
    gz: DeviceBuffer,
    gD: DeviceBuffer,
    rows: number,
    cols: number,
    headDim: number,
  ): void;

  /** Optional: out = (a + b) + c, dense f32 buffers of one length (two residual adds in one pass) */
  add3?(a: DeviceBuffer, b: DeviceBuffer, c: DeviceBuffer, out: DeviceBuffer): void;
  // ---- optional: the fused kernels of the recurrent decoding step (no backward) ---------------
  /**
   * LayerNorm of x (rows, cols) f32 with weight, bias (cols) f32 | null, stored in out's dtype
   * (bf16 or f16): the values of layerNorm rounded once (the next products' input), nothing saved.
   */
  layerNormTo16?(
    x: DeviceBuffer,
    weight: DeviceBuffer,
    bias: DeviceBuffer | null,
    out: DeviceBuffer,
    rows: number,
    cols: number,
    eps: number,
  ): void;
  /**
   * ssmStep with the mixer's output gate, reading its inputs from in_proj's output zx (B, rowLen)
   * f32: xbc (Cc channels) at column xOff, z (H P) at zOff, a (H) at aOff of each row. The caches
   * are updated as ssmStep does; out (B, H P) = (h C + D x) * silu(z + zBias), zBias (H P), in
   * out's dtype (f32, bf16 or f16): the values of ssmStep then siluGate, rounded once.
   */
  ssmStepGate?(
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
  ): void;
  /**
   * c (m, n) = act(a (m, k) b^T + bias) with a, b 16-bit (one dtype), b (n, k) a Linear weight,
   * bias (n) f32 | null, c in a 16-bit dtype: the f32 product, bias and activation, rounded once.
   */
  matmulAct?(
    act: 'geluNew',
    a: DeviceBuffer,
    b: DeviceBuffer,
    c: DeviceBuffer,
    m: number,
    n: number,
    k: number,
    bias: DeviceBuffer | null,
  ): void;
  /**
   * c (m, n) f32 = (r1 + r2) + (a (m, k) b^T + bias), a, b 16-bit (one dtype), b (n, k) a Linear
   * weight, bias (n) f32 | null, r1, r2 (m, n) f32: the block's residual sum (add3's order) in
   * the product's pass.
   */
  /**
   * Two Linears of one 16-bit input a (m, k) in one pass (a parallel block's in_proj and fc1):
   * c1 (m, n1) f32 = a w1^T + bias1 and c2 (m, n2) 16-bit = act(a w2^T + bias2); w1, w2 (n, k) in
   * a's dtype, biases f32 | null.
   */
  matmulPair?(
    a: DeviceBuffer,
    m: number,
    k: number,
    w1: DeviceBuffer,
    bias1: DeviceBuffer | null,
    c1: DeviceBuffer,
    n1: number,
    w2: DeviceBuffer,
    bias2: DeviceBuffer | null,
    c2: DeviceBuffer,
    n2: number,
    act2: 'geluNew',
  ): void;
  /**
   * A parallel block's last two products (a decoding step): mix (m, n) f32 = g (m, k1) wo^T + bo
   * (out_proj) and out (m, n) f32 = (r + mix) + (h (m, k2) wf^T + bf) (fc2 and the residual sum, in
   * add3's order); g, h, wo, wf 16-bit (one dtype), biases f32 | null, r f32.
   */
  blockOut?(
    g: DeviceBuffer,
    wo: DeviceBuffer,
    bo: DeviceBuffer | null,
    h: DeviceBuffer,
    wf: DeviceBuffer,
    bf: DeviceBuffer | null,
    r: DeviceBuffer,
    mix: DeviceBuffer,
    out: DeviceBuffer,
    m: number,
    n: number,
    k1: number,
    k2: number,
  ): void;
  matmulResidual?(
    a: DeviceBuffer,
    b: DeviceBuffer,
    c: DeviceBuffer,
    m: number,
    n: number,
    k: number,
    bias: DeviceBuffer | null,
    r1: DeviceBuffer,
    r2: DeviceBuffer,
  ): void;
  /**
   * Optional: causalConv1d that also writes xKeep, a bf16 copy of x (B, T, C), in the same pass;
   * a backend with this method accepts that bf16 x in causalConv1dBackward (its weight gradient
   * then reads the copy, and the f32 input need not be kept).
   */
  causalConv1dKeep16?(
    x: DeviceBuffer,
    weight: DeviceBuffer,
    bias: DeviceBuffer | null,
    out: DeviceBuffer,
    xKeep: DeviceBuffer,
    batch: number,
    t: number,
    channels: number,
    kernel: number,
  ): void;
  /**
   * Optional: a pre-norm block's residual add and the RMSNorm of its result in one pass: sum = a +
   * b, then rmsNorm(sum) into out, rstd and out16 as `rmsNorm` (a, b, sum, out (rows, cols) f32).
   */
  addRmsNorm?(
    a: DeviceBuffer,
    b: DeviceBuffer,
    weight: DeviceBuffer,
    sum: DeviceBuffer,
    out: DeviceBuffer,
    rstd: DeviceBuffer,
    rows: number,
    cols: number,
    eps: number,
    out16: DeviceBuffer | null,
  ): void;
  /**
   * Optional: causalConv1d over a column window of a wider row-major matrix, read in place (the
   * mixer's in_proj output without split copies): x's element (b, s, ch) is at
   * xWin.offset + (b T + s) xWin.stride + ch; out (B, T, C) dense; xKeep (B, T, C) bf16 | null,
   * when given a dense bf16 copy of the window written in the same pass (as causalConv1dKeep16).
   */
  causalConv1dWindow?(
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
  ): void;
  /**
   * Its backward: gx written into the window gxWin of a buffer laid out as x (added to what is
   * there when `accumulate`, else only the window is overwritten); gWeight, gBias overwritten.
   * x is the window xWin, or, with xWin null, the dense (B, T, C) bf16 copy the forward kept.
   */
  causalConv1dWindowBackward?(
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
  ): void;
  /**
   * Optional: siluGateD with z read in place, a column window of a wider matrix (the mixer's
   * in_proj output): z's element (r, c) at zWin.offset + r zWin.stride + c; y, x, out, yKeep and
   * zKeep dense (rows, cols) as in siluGateD.
   */
  siluGateDWindow?(
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
  ): void;
  /**
   * Its backward, siluGateDBackward's with gz written into the window gzWin of a buffer laid out
   * as in_proj's output (added to what is there when `accumulate`), and gBias (cols) | null, when
   * given, the sums of gz over rows (the gradient of z's bias). y and z dense (f32, or the
   * 16-bit copies the forward kept).
   */
  siluGateDWindowBackward?(
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
  ): void;
  /**
   * Optional: the discrete Mamba-2 mixer's log decay read in place, out (rows, cols) = -softplus(a)
   * with a the window aWin of in_proj's output; aKeep (rows, cols) | null, when given a's dense
   * copy for the backward.
   */
  logDecayWindow?(
    a: DeviceBuffer,
    aWin: ColumnWindow,
    out: DeviceBuffer,
    aKeep: DeviceBuffer | null,
    rows: number,
    cols: number,
  ): void;
  /** its backward: ga = -g sigmoid(a) into the window gaWin (added when `accumulate`); a, g dense */
  logDecayWindowBackward?(
    a: DeviceBuffer,
    g: DeviceBuffer,
    ga: DeviceBuffer,
    gaWin: ColumnWindow,
    accumulate: boolean,
    rows: number,
    cols: number,
  ): void;
  /**
   * Optional: a product (batch 1, 16-bit A, B and C) with a GELU (tanh approximation) epilogue.
   * 'gelu': C = gelu(op(A) op(B) + bias), and aux (C's dtype and shape) = the GELU input when
   * given; 'dgelu': C = (op(A) op(B)) * gelu'(aux), and bias = the sums of C over its rows when
   * given (the bias's gradient). bias is f32 (n). Returns false, doing nothing, where the backend
   * has no such product for this case (the caller then composes it).
   */
  matmulGelu?(
    a: DeviceBuffer,
    b: DeviceBuffer,
    c: DeviceBuffer,
    p: MatmulParams,
    mode: 'gelu' | 'dgelu',
    bias: DeviceBuffer | null,
    aux: DeviceBuffer | null,
  ): boolean;

  /**
   * Optional: a linear layer's output gradient made ready for its 16-bit products, read once. g
   * (rows, cols) f32; v = g, or g * f'(x) with `op` (x (rows, cols) the 16-bit input the activation
   * kept, see unaryKeep16); g16 (rows, cols, bf16 or f16) = v rounded; sums (cols, f32, overwritten)
   * = the sums of v over its rows, before rounding (the bias's gradient).
   */
  castColumnSums?(
    g: DeviceBuffer,
    g16: DeviceBuffer,
    sums: DeviceBuffer,
    rows: number,
    cols: number,
    op: UnaryOp | null,
    x: DeviceBuffer | null,
  ): void;

  // ---- linear algebra -----------------------------------------------------------------------
  /**
   * C = alpha op(A) op(B) + beta C, plus `bias` (n, C's dtype) added to every row of every batch
   * entry when given (a linear layer's bias, fused where the backend can).
   */
  matmul(
    a: DeviceBuffer,
    b: DeviceBuffer,
    c: DeviceBuffer,
    p: MatmulParams,
    bias?: DeviceBuffer | null,
  ): void;

  // ---- rows ---------------------------------------------------------------------------------
  /** x is (rows, cols); softmax or log-softmax over cols */
  softmax(x: DeviceBuffer, out: DeviceBuffer, rows: number, cols: number, log: boolean): void;
  /** y = forward output; gx from gy */
  softmaxBackward(
    y: DeviceBuffer,
    gy: DeviceBuffer,
    gx: DeviceBuffer,
    rows: number,
    cols: number,
    log: boolean,
  ): void;
  /**
   * x is (rows, cols); weight, bias (cols); mean, rstd (rows) saved for backward; out16 (rows,
   * cols) bf16 or f16 | null, when given also out rounded to it in the same pass (the copy an
   * autocast product reads)
   */
  layerNorm(
    x: DeviceBuffer,
    weight: DeviceBuffer,
    bias: DeviceBuffer | null,
    out: DeviceBuffer,
    mean: DeviceBuffer,
    rstd: DeviceBuffer,
    rows: number,
    cols: number,
    eps: number,
    out16?: DeviceBuffer | null,
  ): void;
  /**
   * gWeight, gBias are overwritten (cols); gx (rows, cols) overwritten, or added to when
   * `accumulate` (the residual stream's other gradient)
   */
  layerNormBackward(
    x: DeviceBuffer,
    weight: DeviceBuffer,
    mean: DeviceBuffer,
    rstd: DeviceBuffer,
    gy: DeviceBuffer,
    gx: DeviceBuffer,
    gWeight: DeviceBuffer,
    gBias: DeviceBuffer | null,
    rows: number,
    cols: number,
    accumulate?: boolean,
  ): void;
  /** as layerNorm (out16: also out rounded to 16 bits, when given) */
  rmsNorm(
    x: DeviceBuffer,
    weight: DeviceBuffer,
    out: DeviceBuffer,
    rstd: DeviceBuffer,
    rows: number,
    cols: number,
    eps: number,
    out16?: DeviceBuffer | null,
  ): void;
  /** gx overwritten, or added to when `accumulate`; gWeight overwritten */
  rmsNormBackward(
    x: DeviceBuffer,
    weight: DeviceBuffer,
    rstd: DeviceBuffer,
    gy: DeviceBuffer,
    gx: DeviceBuffer,
    gWeight: DeviceBuffer,
    rows: number,
    cols: number,
    accumulate?: boolean,
  ): void;
  /** table is (vocab, dim), ids (n) i32 -> out (n, dim); ids out of range throw or write zeros */
  embedding(table: DeviceBuffer, ids: DeviceBuffer, out: DeviceBuffer, n: number, dim: number): void;
  /** gTable[ids[i]] += gOut[i] */
  embeddingBackward(
    gOut: DeviceBuffer,
    ids: DeviceBuffer,
    gTable: DeviceBuffer,
    n: number,
    dim: number,
  ): void;

  // ---- sequence mixers ----------------------------------------------------------------------
  /** x is (B, T, C), weight (C, K), bias (C) | null -> out (B, T, C); causal, zero left padding */
  causalConv1d(
    x: DeviceBuffer,
    weight: DeviceBuffer,
    bias: DeviceBuffer | null,
    out: DeviceBuffer,
    batch: number,
    t: number,
    channels: number,
    kernel: number,
  ): void;
  /** gWeight, gBias overwritten */
  causalConv1dBackward(
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
  ): void;
  /** x, out are (B, T, H, D) */
  rope(x: DeviceBuffer, out: DeviceBuffer, p: RopeParams): void;
  /**
   * q (B, tq, H, D), k and v (B, tk, Hkv, D) -> out (B, tq, H, D), lse (B, H, tq) (the row
   * log-sum-exp of the scaled scores, saved for backward), probs (B, H, tq, tk) when given.
   * out is f32, or bf16 (the f32 result rounded to nearest even, as cast would) when
   * p.lowPrecision: for a consumer that is a 16-bit product anyway.
   */
  attention(
    q: DeviceBuffer,
    k: DeviceBuffer,
    v: DeviceBuffer,
    out: DeviceBuffer,
    lse: DeviceBuffer,
    probs: DeviceBuffer | null,
    p: AttentionParams,
  ): void;
  /** gq, gk, gv overwritten */
  attentionBackward(
    q: DeviceBuffer,
    k: DeviceBuffer,
    v: DeviceBuffer,
    out: DeviceBuffer,
    lse: DeviceBuffer,
    gOut: DeviceBuffer,
    gq: DeviceBuffer,
    gk: DeviceBuffer,
    gv: DeviceBuffer,
    p: AttentionParams,
  ): void;
  /**
   * The chunked SSD scan of the discrete Mamba-2 mixer (without D):
   *   h_t = exp(logA_t) h_{t-1} + x_t B_t^T,  y_t = h_t C_t,  h_0 = 0
   * x (B, T, H, P), logA (B, T, H), bm and cm (B, T, G, N) -> y (B, T, H, P);
   * states (B, nChunks, H, P, N) receives the state entering each chunk (for backward);
   * finalState (B, H, P, N) when given receives h_T.
   */
  ssdScan(
    x: DeviceBuffer,
    logA: DeviceBuffer,
    bm: DeviceBuffer,
    cm: DeviceBuffer,
    y: DeviceBuffer,
    states: DeviceBuffer,
    finalState: DeviceBuffer | null,
    p: SsdParams,
  ): void;
  /**
   * gradients overwritten, except gx with `accumulateGx`: x's gradient added to what gx holds
   * (the mixer's x also feeds the gate's D term, whose gradient is there already)
   */
  ssdScanBackward(
    x: DeviceBuffer,
    logA: DeviceBuffer,
    bm: DeviceBuffer,
    cm: DeviceBuffer,
    states: DeviceBuffer,
    gy: DeviceBuffer,
    gx: DeviceBuffer,
    gLogA: DeviceBuffer,
    gB: DeviceBuffer,
    gC: DeviceBuffer,
    p: SsdParams,
    accumulateGx?: boolean,
  ): void;
  /**
   * One decoding step (one token) of the discrete Mamba-2 mixer, its caches updated in place.
   * xbc (B, Cc) the new conv inputs [x (H P), B (G N), C (G N)]; convState (B, K - 1, Cc) the last
   * K - 1 inputs, oldest first; convWeight (Cc, K), convBias (Cc) | null; a (B, H) the raw decay
   * inputs (log alpha = -softplus(a)); D (H); ssm (B, H, P, N). With x, B, C the conv outputs:
   *   h = alpha h + x B^T (into ssm),  y (B, H, P) = h C + D x,
   * then xbc is pushed into convState (the oldest input drops out).
   */
  ssmStep(
    xbc: DeviceBuffer,
    convState: DeviceBuffer,
    convWeight: DeviceBuffer,
    convBias: DeviceBuffer | null,
    a: DeviceBuffer,
    D: DeviceBuffer,
    ssm: DeviceBuffer,
    y: DeviceBuffer,
    p: SsmStepParams,
  ): void;
  /**
   * The mixing matrix of the same SSM: logA (B, T, H), bm and cm (B, T, G, N) ->
   * out (B, H, T, T) with out[t, s] = C_t . B_s * exp(sum_{k=s+1..t} logA_k) for s <= t, else 0.
   */
  materializeMixer(
    logA: DeviceBuffer,
    bm: DeviceBuffer,
    cm: DeviceBuffer,
    out: DeviceBuffer,
    p: SsdParams,
  ): void;
  materializeMixerBackward(
    logA: DeviceBuffer,
    bm: DeviceBuffer,
    cm: DeviceBuffer,
    gOut: DeviceBuffer,
    gLogA: DeviceBuffer,
    gB: DeviceBuffer,
    gC: DeviceBuffer,
    p: SsdParams,
  ): void;

  // ---- losses -------------------------------------------------------------------------------
  /**
   * logits (rows, V), targets (rows) i32 -> losses (rows) = lse - logit[target], 0 where
   * target == ignoreIndex; lse (rows) saved for backward.
   */
  crossEntropy(
    logits: DeviceBuffer,
    targets: DeviceBuffer,
    losses: DeviceBuffer,
    lse: DeviceBuffer,
    rows: number,
    vocab: number,
    ignoreIndex: number,
  ): void;
  /** gLogits = gLoss[row] * (softmax - onehot) */
  crossEntropyBackward(
    logits: DeviceBuffer,
    targets: DeviceBuffer,
    lse: DeviceBuffer,
    gLoss: DeviceBuffer,
    gLogits: DeviceBuffer,
    rows: number,
    vocab: number,
    ignoreIndex: number,
  ): void;
  /**
   * KL(p || q) per row with p = softmax(teacher / tau), q = softmax(student / tau):
   * teacher, student (rows, V) -> losses (rows). `lse` (f32, rows x 2), when given, is a cache for
   * the backward of the same rows: the backend may store there what lets klDivergenceBackward skip
   * a pass (the CUDA backend: both rows' log-sum-exps), or leave it alone.
   */
  klDivergence(
    teacher: DeviceBuffer,
    student: DeviceBuffer,
    losses: DeviceBuffer,
    rows: number,
    vocab: number,
    temperature: number,
    lse?: DeviceBuffer | null,
  ): void;
  /**
   * gradient with respect to the student logits: gLoss[row] * (q - p) / tau, into an f32 gStudent
   * or rounded once into a bf16 / f16 one (for products that read it in 16 bits). `lse`: the cache a
   * klDivergence of the same logits filled. `losses` (rows), when given: also the rows' KL, as
   * klDivergence computes it (the loss and its gradient from one pass where the backend can).
   */
  klDivergenceBackward(
    teacher: DeviceBuffer,
    student: DeviceBuffer,
    gLoss: DeviceBuffer,
    gStudent: DeviceBuffer,
    rows: number,
    vocab: number,
    temperature: number,
    lse?: DeviceBuffer | null,
    losses?: DeviceBuffer | null,
  ): void;

  // ---- optimizer ----------------------------------------------------------------------------
  /** one decoupled-weight-decay Adam step on f32 param, grad, m, v (all the same length) */
  adamw(param: DeviceBuffer, grad: DeviceBuffer, m: DeviceBuffer, v: DeviceBuffer, p: AdamWParams): void;
  /**
   * The same step with lr, the gradient's scale and the bias corrections read from `scalars`
   * (AdamWDeviceParams): g' = scale g, then the update of `adamw` with g'. The decay applies to
   * the rows (rowLen elements each) whose rowAbs (f32, one per row) is non-zero, to every element
   * when rowAbs is null.
   */
  adamwDevice(
    param: DeviceBuffer,
    grad: DeviceBuffer,
    m: DeviceBuffer,
    v: DeviceBuffer,
    scalars: DeviceBuffer,
    rowAbs: DeviceBuffer | null,
    p: AdamWDeviceParams,
  ): void;
  /**
   * One read of a gradient seen as (rows, rowLen) f32: rowSquares[at + r] (f64) = the sum of the
   * squares of row r, each square exact and the sum in f64 (0 exactly when the row is all zeros).
   */
  gradRowSquares(
    grad: DeviceBuffer,
    rowSquares: DeviceBuffer,
    at: number,
    rows: number,
    rowLen: number,
  ): void;
  /** out[at] (f32) = the sum of the first n entries of x (f64), summed in f64 and rounded once */
  sumF64(x: DeviceBuffer, n: number, out: DeviceBuffer, at: number): void;
  /**
   * `adamwDevice` (the same arithmetic) whose decay applies to the rows with a non-zero entry of
   * rowSquares (f64, from rowSquares[p.rowAt]; every row when null), and which in the same pass
   * sets nonFinite[0] (f32) to 1 when an updated weight is NaN or infinite (leaves it otherwise)
   * and writes the updated weights rounded to param16's dtype (bf16 or f16; null for none).
   */
  adamwFused(
    param: DeviceBuffer,
    grad: DeviceBuffer,
    m: DeviceBuffer,
    v: DeviceBuffer,
    scalars: DeviceBuffer,
    rowSquares: DeviceBuffer | null,
    nonFinite: DeviceBuffer | null,
    param16: DeviceBuffer | null,
    p: AdamWFusedParams,
  ): void;
}

/** The counter-based hash behind `dropout`, shared so every backend draws the same mask. */
export function dropoutKeep(seed: number, index: number, p: number): boolean {
  return hashUniform(seed, index) >= p;
}

/** A uniform number in [0, 1) from (seed, index): two rounds of a 32-bit integer mix. */
export function hashUniform(seed: number, index: number): number {
  let h = (Math.imul(index ^ 0x9e3779b9, 0x85ebca6b) ^ Math.imul(seed | 0, 0xc2b2ae35)) >>> 0;
  h ^= h >>> 16;
  h = Math.imul(h, 0x7feb352d);
  h ^= h >>> 15;
  h = Math.imul(h, 0x846ca68b);
  h ^= h >>> 16;
  return (h >>> 0) / 4294967296;
}

/** Backend members that are not kernels: description, memory, waits and capture. */
type NotKernel =
  | 'name'
  | 'describe'
  | 'alloc'
  | 'free'
  | 'write'
  | 'read'
  | 'memoryStats'
  | 'resetPeak'
  | 'synchronize'
  | 'capture';

export type KernelName = Exclude<keyof Backend, NotKernel>;

/**
 * Every kernel of the Backend interface, enumerated once (the CPU recorder records exactly these
 * during a capture). A kernel added to the interface must be added here: the check below fails
 * to compile until it is.
 */
export const KERNEL_NAMES = [
  'fill',
  'cast',
  'unary',
  'unaryBackward',
  'binary',
  'copyStrided',
  'reduce',
  'cumsum',
  'segsum',
  'segsumBackward',
  'causalMask',
  'dropout',
  'siluGate',
  'siluGateBackward',
  'matmul',
  'softmax',
  'softmaxBackward',
  'layerNorm',
  'layerNormBackward',
  'rmsNorm',
  'rmsNormBackward',
  'embedding',
  'embeddingBackward',
  'causalConv1d',
  'causalConv1dBackward',
  'rope',
  'attention',
  'attentionBackward',
  'ssdScan',
  'ssdScanBackward',
  'ssmStep',
  'materializeMixer',
  'materializeMixerBackward',
  'crossEntropy',
  'crossEntropyBackward',
  'klDivergence',
  'klDivergenceBackward',
  'adamw',
  'adamwDevice',
  'gradRowSquares',
  'sumF64',
  'adamwFused',
  // optional: the fused kernels of some backends (a backend without one composes it in ops.ts)
  'castColumnSums',
  'unaryKeep16',
  'gatedAct',
  'gatedActBackward',
  'siluGateD',
  'siluGateDBackward',
  'causalConv1dKeep16',
  'addRmsNorm',
  'causalConv1dWindow',
  'causalConv1dWindowBackward',
  'siluGateDWindow',
  'siluGateDWindowBackward',
  'logDecayWindow',
  'logDecayWindowBackward',
  'matmulGelu',
  'add3',
  'layerNormTo16',
  'ssmStepGate',
  'matmulAct',
  'matmulResidual',
  'matmulPair',
  'blockOut',
] as const satisfies readonly KernelName[];

/** compile-time check that KERNEL_NAMES lists every kernel: names the missing ones in the error */
export const KERNEL_NAMES_COMPLETE: [Exclude<KernelName, (typeof KERNEL_NAMES)[number]>] extends [never]
  ? true
  : Exclude<KernelName, (typeof KERNEL_NAMES)[number]> = true;
