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
  /** x is (rows, cols); weight, bias (cols); mean, rstd (rows) saved for backward */
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
  ): void;
  /** gWeight, gBias are overwritten (cols); gx (rows, cols) */
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
  ): void;
  rmsNorm(
    x: DeviceBuffer,
    weight: DeviceBuffer,
    out: DeviceBuffer,
    rstd: DeviceBuffer,
    rows: number,
    cols: number,
    eps: number,
  ): void;
  rmsNormBackward(
    x: DeviceBuffer,
    weight: DeviceBuffer,
    rstd: DeviceBuffer,
    gy: DeviceBuffer,
    gx: DeviceBuffer,
    gWeight: DeviceBuffer,
    rows: number,
    cols: number,
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
  /** gradients overwritten */
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
   * teacher, student (rows, V) -> losses (rows).
   */
  klDivergence(
    teacher: DeviceBuffer,
    student: DeviceBuffer,
    losses: DeviceBuffer,
    rows: number,
    vocab: number,
    temperature: number,
  ): void;
  /** gradient with respect to the student logits: gLoss[row] * (q - p) / tau */
  klDivergenceBackward(
    teacher: DeviceBuffer,
    student: DeviceBuffer,
    gLoss: DeviceBuffer,
    gStudent: DeviceBuffer,
    rows: number,
    vocab: number,
    temperature: number,
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
  // optional: the fused kernels of some backends (a backend without one composes it in ops.ts)
  'unaryKeep16',
  'gatedAct',
  'gatedActBackward',
  'siluGateD',
  'siluGateDBackward',
  'causalConv1dKeep16',
  'matmulGelu',
  'add3',
] as const satisfies readonly KernelName[];

/** compile-time check that KERNEL_NAMES lists every kernel: names the missing ones in the error */
export const KERNEL_NAMES_COMPLETE: [Exclude<KernelName, (typeof KERNEL_NAMES)[number]>] extends [never]
  ? true
  : Exclude<KernelName, (typeof KERNEL_NAMES)[number]> = true;
