// Matrix products through cuBLAS (libcublas.so.13, which brings cuBLASLt): strided batched
// GEMMs on row-major data, f32 (exact f32 by default, TF32 when asked) and bf16/f16 operands
// with f32 accumulation on the tensor cores. Products with a bias go through cuBLASLt
// (libcublasLt.so.13) and its BIAS epilogue, when it is there and has an algorithm for them.

import koffi, { type LibraryHandle } from 'koffi';
import { CudaError, type Driver } from './driver.js';
import { loadCudaLibrary } from './nvrtc.js';

type Fn = (...args: unknown[]) => number;

// cudaDataType_t
const CUDA_R_32F = 0;
const CUDA_R_16F = 2;
const CUDA_R_16BF = 14;
// cublasComputeType_t
const CUBLAS_COMPUTE_32F = 68;
const CUBLAS_COMPUTE_32F_FAST_TF32 = 77;
// cublasOperation_t, cublasGemmAlgo_t
const CUBLAS_OP_N = 0;
const CUBLAS_OP_T = 1;
const CUBLAS_GEMM_DEFAULT = -1;
// cublasStatus_t
const CUBLAS_STATUS_NOT_SUPPORTED = 15;

// cuBLASLt, values from cublasLt.h (CUDA 12.6 header text; same numbers in CUDA 13):
// cublasLtMatmulDescAttributes_t
const LT_DESC_TRANSA = 3; // int32_t cublasOperation_t, default CUBLAS_OP_N
const LT_DESC_TRANSB = 4; // int32_t cublasOperation_t, default CUBLAS_OP_N
const LT_DESC_EPILOGUE = 7; // uint32_t cublasLtEpilogue_t, default CUBLASLT_EPILOGUE_DEFAULT (1)
const LT_DESC_BIAS_POINTER = 8; // const void * (device), length = rows of D
const LT_DESC_EPILOGUE_AUX_POINTER = 11; // void * (device): the GELU input, written or read
const LT_DESC_EPILOGUE_AUX_LD = 12; // int64_t, leading dimension of the aux matrix
const LT_DESC_BIAS_DATA_TYPE = 26; // int32_t cudaDataType, default -1 (the type of D)
// cublasLtEpilogue_t
const LT_EPILOGUE_BIAS = 4; // bias vector broadcast to every column of D
// GELU here is the tanh approximation (gelu_new), as cuBLASLt documents it
const LT_EPILOGUE_GELU_AUX = 160; // D = gelu(AB), aux = AB
const LT_EPILOGUE_GELU_AUX_BIAS = 164; // D = gelu(AB + bias), aux = AB + bias
const LT_EPILOGUE_GELU = 32; // D = gelu(AB)
const LT_EPILOGUE_GELU_BIAS = 36; // D = gelu(AB + bias)
const LT_EPILOGUE_DGELU = 192; // D = AB * gelu'(aux)
const LT_EPILOGUE_DGELU_BGRAD = 208; // the same, and bias = the sums of D over its columns
// cublasLtMatmulPreferenceAttributes_t
const LT_PREF_MAX_WORKSPACE_BYTES = 1; // uint64_t, default 0
const LT_PREF_MIN_ALIGNMENT_A_BYTES = 5; // uint32_t, default 256; B, C, D follow as 6, 7, 8
// Layouts keep their default order, CUBLASLT_ORDER_COL (0): column-major, ld = column stride.
// cublasLtMatmulHeuristicResult_t = { cublasLtMatmulAlgo_t algo (uint64_t data[8]) @0;
// size_t workspaceSize @64; cublasStatus_t state @72; float wavesCount @76; int reserved[4] @80 }
// = 96 bytes; arrays of them (several candidates) are 96 bytes apart. The block has room to
// spare in case a later library writes a longer struct.
const LT_RESULT_STRIDE = 96;
const LT_RESULT_WORKSPACE = 64;
const LT_RESULT_STATE = 72;
const LT_EPILOGUE_DEFAULT = 1; // no epilogue: D = alpha AB + beta C

export type GemmDType = 'f32' | 'bf16' | 'f16';

/** A cuBLASLt epilogue: its code, the bias vector (0: none) and its type, the aux matrix (0: none) */
export interface Epilogue {
  epilogue: number;
  bias: number;
  biasType: GemmDType;
  aux: number;
  /** leading dimension of aux in elements (n for a row-major (m, n) C) */
  auxLd: number;
}

const DATA_TYPE: Record<GemmDType, number> = { f32: CUDA_R_32F, bf16: CUDA_R_16BF, f16: CUDA_R_16F };

/** The largest power of two up to 256 that divides a device address (cuBLASLt's alignment preferences). */
function alignment(ptr: number): number {
  let a = 1;
  while (a < 256 && ptr % (a * 2) === 0) a *= 2;
  return a;
}

/** One row-major product C = alpha op(A) op(B) + beta C, batched with element strides. */
export interface Gemm {
  a: number;
  b: number;
  c: number;
  typeAB: GemmDType;
  typeC: GemmDType;
  transA: boolean;
  transB: boolean;
  m: number;
  n: number;
  k: number;
  strideA: number;
  strideB: number;
  strideC: number;
  batch: number;
  alpha: number;
  beta: number;
}

export class Cublas {
  readonly version: number;
  readonly path: string;
  private readonly handle: number;
  private readonly gemmEx: Fn;
  private readonly statusName: (s: number) => string;
  /** alpha then beta (f32), at a stable host address */
  private readonly scalars: unknown;
  private readonly scalarView: Float32Array;
  private readonly alphaPtr: number;
  /** allow TF32 tensor cores for f32 products (about 1e-3 relative error instead of 1e-6) */
  tf32 = false;
  /** cuBLASLt for products with a bias epilogue, null where it did not load */
  private readonly lt: CublasLt | null;

  /**
   * tuneCandidates >= 2: GEMM autotuning over that many candidates (GemmTuning), timed only while
   * `capturing` says the stream is not being captured
   */
  constructor(
    driver: Driver,
    workspace: number,
    workspaceBytes: number,
    tuneCandidates = 0,
    capturing: () => boolean = () => false,
  ) {
    const { lib, path } = loadCudaLibrary(['libcublas.so.13', 'libcublas.so.12', 'libcublas.so'], 'cuBLAS');
    this.path = path;
    const f = (decl: string): Fn => lib.func(decl) as Fn;
    this.statusName = lib.func('const char *cublasGetStatusName(int status)') as (s: number) => string;
    const create = f('int cublasCreate_v2(_Out_ uint64_t *handle)');
    const setStream = f('int cublasSetStream_v2(uint64_t handle, uint64_t stream)');
    const setWorkspace = f('int cublasSetWorkspace_v2(uint64_t handle, uint64_t workspace, size_t bytes)');
    const getVersion = f('int cublasGetVersion_v2(uint64_t handle, _Out_ int *version)');
    this.gemmEx = f(
      'int cublasGemmStridedBatchedEx(uint64_t handle, int transa, int transb, int m, int n, int k, uint64_t alpha, ' +
        'uint64_t A, int Atype, int lda, int64_t strideA, uint64_t B, int Btype, int ldb, int64_t strideB, ' +
        'uint64_t beta, uint64_t C, int Ctype, int ldc, int64_t strideC, int batchCount, int computeType, int algo)',
    );
    const out = [0];
    this.check('cublasCreate', create(out));
    this.handle = Number(out[0]);
    this.check('cublasSetStream', setStream(this.handle, driver.stream));
    if (workspace) this.check('cublasSetWorkspace', setWorkspace(this.handle, workspace, workspaceBytes));
    this.check('cublasGetVersion', getVersion(this.handle, out));
    this.version = out[0];
    this.scalars = koffi.alloc('float', 2);
    this.scalarView = new Float32Array(koffi.view(this.scalars, 8));
    this.alphaPtr = Number(koffi.address(this.scalars));
    const candidates = tuneCandidates >= 2 ? Math.min(64, Math.floor(tuneCandidates)) : 0;
    this.lt = CublasLt.open(
      driver.stream,
      workspace,
      workspaceBytes,
      this.statusName,
      candidates ? { candidates, driver, capturing } : null,
    );
  }

  /**
   * The tuned products so far: the plan (types, transposes, m n k, ...), the rank of the picked
   * candidate in the heuristic's order (0: its first choice) and the ms of the pick and of the first.
   */
  tunedProducts(): { plan: string; rank: number; ms: number; firstMs: number }[] {
    return [...(this.lt?.tuned ?? [])].map(([plan, [rank, ms, firstMs]]) => ({ plan, rank, ms, firstMs }));
  }

  /** where cuBLASLt was loaded from, null when it is not available (gemmBias then returns false) */
  get ltPath(): string | null {
    return this.lt?.path ?? null;
  }

  private check(call: string, status: number): void {
    if (status !== 0)
      throw new CudaError(`cuda: ${call} failed: ${this.statusName(status)} (cublasStatus ${status})`);
  }

  /**
   * Row-major C (m, n) = op(A) op(B) is column-major C^T = op(B)^T op(A)^T, so cuBLAS gets the
   * operands swapped: B first (n x k as it sees it), then A.
   */
  gemm(g: Gemm): void {
    const { m, n, k } = g;
    if (this.lt?.tuning && g.batch === 1 && g.typeAB !== 'f32' && m > 0 && n > 0 && k > 0) {
      // tuned products go through cuBLASLt, which can list its candidates
      this.scalarView[0] = g.alpha;
      this.scalarView[1] = g.beta;
      const e = { epilogue: LT_EPILOGUE_DEFAULT, bias: 0, biasType: g.typeC, aux: 0, auxLd: 0 };
      if ((g.typeC === g.typeAB || g.typeC === 'f32') && this.lt.matmul(g, e, this.tf32, this.alphaPtr))
        return;
    }
    const lda = g.transA ? m : k;
    const ldb = g.transB ? k : n;
    this.scalarView[0] = g.alpha;
    this.scalarView[1] = g.beta;
    const compute = g.typeAB === 'f32' && this.tf32 ? CUBLAS_COMPUTE_32F_FAST_TF32 : CUBLAS_COMPUTE_32F;
    const status = this.gemmEx(
      this.handle,
      g.transB ? CUBLAS_OP_T : CUBLAS_OP_N,
      g.transA ? CUBLAS_OP_T : CUBLAS_OP_N,
      n,
      m,
      k,
      this.alphaPtr,
      g.b,
      DATA_TYPE[g.typeAB],
      ldb,
      g.strideB,
      g.a,
      DATA_TYPE[g.typeAB],
      lda,
      g.strideA,
      this.alphaPtr + 4,
      g.c,
      DATA_TYPE[g.typeC],
      n,
      g.strideC,
      g.batch,
      compute,
      CUBLAS_GEMM_DEFAULT,
    );
    if (status !== 0) {
      throw new CudaError(
        `cuda: cublasGemmStridedBatchedEx(${g.typeAB}->${g.typeC}, m ${m}, n ${n}, k ${k}, batch ${g.batch}, ` +
          `transA ${g.transA}, transB ${g.transB}) failed: ${this.statusName(status)} (cublasStatus ${status})`,
      );
    }
  }

  /**
   * Row-major C (m, n) = alpha op(A) op(B) + beta C + bias, bias (n) added to every row, through
   * cuBLASLt's BIAS epilogue (g.batch must be 1); the bias has C's type. Returns false (and does
   * nothing) when cuBLASLt is not loaded or offers no algorithm for this case, so the caller can
   * fall back to gemm + a bias kernel.
   */
  gemmBias(g: Gemm, bias: number): boolean {
    if (!this.lt || g.batch !== 1 || g.m === 0 || g.n === 0 || g.k === 0) return false;
    if (g.typeC !== g.typeAB && g.typeC !== 'f32') return false;
    this.scalarView[0] = g.alpha;
    this.scalarView[1] = g.beta;
    const e = { epilogue: LT_EPILOGUE_BIAS, bias, biasType: g.typeC, aux: 0, auxLd: 0 };
    return this.lt.matmul(g, e, this.tf32, this.alphaPtr);
  }

  /**
   * A product with a GELU (tanh) epilogue, through cuBLASLt (g.batch 1, 16-bit operands and C):
   * 'gelu': C = gelu(op(A) op(B) + bias) with aux = the GELU input (both in C's type) when aux is
   * given; 'dgelu': C = (op(A) op(B)) * gelu'(aux), and bias = the sums of C over its rows when
   * given. bias is f32 (or biasType). Returns false (doing nothing) where cuBLASLt has no
   * algorithm for it.
   */
  gemmGelu(g: Gemm, mode: 'gelu' | 'dgelu', bias: number, aux: number, biasType: GemmDType = 'f32'): boolean {
    if (!this.lt || g.batch !== 1 || g.m === 0 || g.n === 0 || g.k === 0) return false;
    if (g.typeAB === 'f32' || g.typeC !== g.typeAB) return false;
    if (mode === 'dgelu' && !aux) return false;
    const epilogue =
      mode === 'gelu'
        ? aux
          ? bias
            ? LT_EPILOGUE_GELU_AUX_BIAS
            : LT_EPILOGUE_GELU_AUX
          : bias
            ? LT_EPILOGUE_GELU_BIAS
            : LT_EPILOGUE_GELU
        : bias
          ? LT_EPILOGUE_DGELU_BGRAD
          : LT_EPILOGUE_DGELU;
    this.scalarView[0] = g.alpha;
    this.scalarView[1] = g.beta;
    return this.lt.matmul(g, { epilogue, bias, biasType, aux, auxLd: g.n }, this.tf32, this.alphaPtr);
  }
}

/**
 * GEMM autotuning (MOHAWK_GEMM_TUNE=N, N >= 2): the first time a product shape runs outside a
 * graph capture, cuBLASLt's first N heuristic candidates are each timed on it (into a scratch
 * output, so C is untouched) and the fastest is kept for the process, as PyTorch's TunableOp does
 * for its products. With it on, the products without an epilogue also go through cuBLASLt. The
 * pick depends on timings, so two processes may pick differently (and differ in the last bits).
 */
export interface GemmTuning {
  candidates: number;
  /** event timing and a scratch output on the product's stream */
  driver: Driver;
  /** whether the stream is being captured into a graph (no timing then) */
  capturing: () => boolean;
}

/** MOHAWK_GEMM_TUNE: the number of heuristic candidates to time (0 or 1: no tuning) */
export function gemmTuneCandidates(env: string | undefined): number {
  if (env === undefined || env === '' || env === '0') return 0;
  const n = Number(env);
  if (!Number.isInteger(n) || n < 0 || n > 64)
    throw new Error(`MOHAWK_GEMM_TUNE: expected 0 (off) or a count of candidates up to 64, got '${env}'`);
  return n >= 2 ? n : 0;
}

/** A cached cuBLASLt product: descriptor, layouts and the heuristic's algorithm. */
interface LtPlan {
  desc: number;
  /** A' = our B, B' = our A, and C = D (one layout for both) */
  layoutA: number;
  layoutB: number;
  layoutC: number;
  /** the heuristic result, its algo first (kept alive: cublasLtMatmul reads it on every call) */
  result: unknown;
  algo: number;
  /** whether cublasLtMatmul has accepted this plan once */
  ran: boolean;
  /** usable candidates left to time: the address of each result and its rank in the heuristic's order; empty once tuned */
  candidates: { algo: number; rank: number }[];
}

/**
 * cuBLASLt (libcublasLt.so.13) for single products with a bias epilogue, on cuBLAS's stream and
 * workspace. Plans are cached per types, transposes, shape, compute type and pointer alignments;
 * cases without an algorithm are cached as false.
 */
class CublasLt {
  private readonly handle: number;
  private readonly pref: number;
  private readonly fn: Record<
    | 'descCreate'
    | 'descDestroy'
    | 'descSet'
    | 'layoutCreate'
    | 'layoutDestroy'
    | 'prefSet'
    | 'heuristic'
    | 'matmul',
    Fn
  >;
  /** 8 bytes of host memory at a stable address for attribute values */
  private readonly scratch: unknown;
  private readonly scratchView: DataView;
  private readonly scratchPtr: number;
  private readonly plans = new Map<string, LtPlan | false>();
  /** what tuning picked: plan key -> [candidate rank, its ms, the first candidate's ms] */
  readonly tuned = new Map<string, [number, number, number]>();

  private constructor(
    readonly path: string,
    lib: LibraryHandle,
    private readonly stream: number,
    private readonly workspace: number,
    private readonly workspaceBytes: number,
    private readonly statusName: (s: number) => string,
    readonly tuning: GemmTuning | null,
  ) {
    const f = (decl: string): Fn => lib.func(decl) as Fn;
    // handles and descriptors are opaque pointers, passed as uint64_t like device pointers
    const create = f('int cublasLtCreate(_Out_ uint64_t *handle)');
    const prefCreate = f('int cublasLtMatmulPreferenceCreate(_Out_ uint64_t *pref)');
    this.fn = {
      descCreate: f('int cublasLtMatmulDescCreate(_Out_ uint64_t *desc, int computeType, int scaleType)'),
      descDestroy: f('int cublasLtMatmulDescDestroy(uint64_t desc)'),
      descSet: f('int cublasLtMatmulDescSetAttribute(uint64_t desc, int attr, uint64_t buf, size_t bytes)'),
      layoutCreate: f(
        'int cublasLtMatrixLayoutCreate(_Out_ uint64_t *layout, int type, uint64_t rows, uint64_t cols, int64_t ld)',
      ),
      layoutDestroy: f('int cublasLtMatrixLayoutDestroy(uint64_t layout)'),
      prefSet: f(
        'int cublasLtMatmulPreferenceSetAttribute(uint64_t pref, int attr, uint64_t buf, size_t bytes)',
      ),
      heuristic: f(
        'int cublasLtMatmulAlgoGetHeuristic(uint64_t handle, uint64_t desc, uint64_t Adesc, uint64_t Bdesc, ' +
          'uint64_t Cdesc, uint64_t Ddesc, uint64_t pref, int requestedAlgoCount, uint64_t results, ' +
          '_Out_ int *returnAlgoCount)',
      ),
      matmul: f(
        'int cublasLtMatmul(uint64_t handle, uint64_t desc, uint64_t alpha, uint64_t A, uint64_t Adesc, ' +
          'uint64_t B, uint64_t Bdesc, uint64_t beta, uint64_t C, uint64_t Cdesc, uint64_t D, uint64_t Ddesc, ' +
          'uint64_t algo, uint64_t workspace, size_t workspaceBytes, uint64_t stream)',
      ),
    };
    this.scratch = koffi.alloc('uint64_t', 1);
    this.scratchView = new DataView(koffi.view(this.scratch, 8));
    this.scratchPtr = Number(koffi.address(this.scratch));
    const out = [0];
    this.check('cublasLtCreate', create(out));
    this.handle = Number(out[0]);
    this.check('cublasLtMatmulPreferenceCreate', prefCreate(out));
    this.pref = Number(out[0]);
    this.scratchView.setBigUint64(0, BigInt(workspace ? workspaceBytes : 0), true);
    this.check(
      'cublasLtMatmulPreferenceSetAttribute(MAX_WORKSPACE_BYTES)',
      this.fn.prefSet(this.pref, LT_PREF_MAX_WORKSPACE_BYTES, this.scratchPtr, 8),
    );
  }

  /** cuBLASLt on `stream`, or null when the library is missing or does not start */
  static open(
    stream: number,
    workspace: number,
    workspaceBytes: number,
    statusName: (s: number) => string,
    tuning: GemmTuning | null,
  ): CublasLt | null {
    try {
      const { lib, path } = loadCudaLibrary(
        ['libcublasLt.so.13', 'libcublasLt.so.12', 'libcublasLt.so'],
        'cuBLASLt',
      );
      return new CublasLt(path, lib, stream, workspace, workspaceBytes, statusName, tuning);
    } catch {
      return null; // products with a bias fall back to gemm + a bias kernel
    }
  }

  private check(call: string, status: number): void {
    if (status !== 0)
      throw new CudaError(`cuda: ${call} failed: ${this.statusName(status)} (cublasStatus ${status})`);
  }

  private setDesc(desc: number, attr: number, value: number, bytes: 4 | 8): void {
    if (bytes === 4) this.scratchView.setInt32(0, value, true);
    else this.scratchView.setBigUint64(0, BigInt(value), true);
    this.check(
      `cublasLtMatmulDescSetAttribute(${attr})`,
      this.fn.descSet(desc, attr, this.scratchPtr, bytes),
    );
  }

  private setPref(attr: number, value: number): void {
    this.scratchView.setUint32(0, value, true);
    this.check(
      `cublasLtMatmulPreferenceSetAttribute(${attr})`,
      this.fn.prefSet(this.pref, attr, this.scratchPtr, 4),
    );
  }

  private layout(type: GemmDType, rows: number, cols: number, ld: number): number {
    const out = [0];
    this.check('cublasLtMatrixLayoutCreate', this.fn.layoutCreate(out, DATA_TYPE[type], rows, cols, ld));
    return Number(out[0]);
  }

  private destroy(plan: LtPlan): void {
    this.fn.descDestroy(plan.desc);
    for (const l of [plan.layoutA, plan.layoutB, plan.layoutC]) this.fn.layoutDestroy(l);
  }

  /**
   * The row-major product as cuBLASLt's column-major one, as in Cublas.gemm: D' (n x m, ld n) =
   * op(A') op(B') with m' = n, n' = m, A' = B (transB), B' = A (transA). The epilogue adds a bias of
   * length m' = n to every column of D', that is to every row of our C.
   */
  private plan(g: Gemm, e: Epilogue, compute: number): LtPlan | false {
    const { m, n, k } = g;
    const want = this.tuning ? this.tuning.candidates : 1;
    const out = [0];
    this.check('cublasLtMatmulDescCreate', this.fn.descCreate(out, compute, CUDA_R_32F));
    const plan: LtPlan = {
      desc: Number(out[0]),
      // A' stored as our B: (k, n) row-major = n x k column-major, or (n, k) = k x n when transposed
      layoutA: g.transB ? this.layout(g.typeAB, k, n, k) : this.layout(g.typeAB, n, k, n),
      // B' stored as our A: (m, k) row-major = k x m column-major, or (k, m) = m x k when transposed
      layoutB: g.transA ? this.layout(g.typeAB, m, k, m) : this.layout(g.typeAB, k, m, k),
      layoutC: this.layout(g.typeC, n, m, n),
      result: koffi.alloc('uint64_t', ((want + 2) * LT_RESULT_STRIDE) / 8),
      algo: 0,
      ran: false,
      candidates: [],
    };
    plan.algo = Number(koffi.address(plan.result));
    this.setDesc(plan.desc, LT_DESC_TRANSA, g.transB ? CUBLAS_OP_T : CUBLAS_OP_N, 4);
    this.setDesc(plan.desc, LT_DESC_TRANSB, g.transA ? CUBLAS_OP_T : CUBLAS_OP_N, 4);
    this.setDesc(plan.desc, LT_DESC_EPILOGUE, e.epilogue, 4);
    if (e.bias) {
      this.setDesc(plan.desc, LT_DESC_BIAS_DATA_TYPE, DATA_TYPE[e.biasType], 4);
      // the heuristic judges the bias alignment from this pointer (part of the plan key)
      this.setDesc(plan.desc, LT_DESC_BIAS_POINTER, e.bias, 8);
    }
    if (e.aux) {
      this.setDesc(plan.desc, LT_DESC_EPILOGUE_AUX_POINTER, e.aux, 8);
      this.setDesc(plan.desc, LT_DESC_EPILOGUE_AUX_LD, e.auxLd, 8);
    }
    // alignments of A' (our B), B' (our A), C and D (one pointer)
    const aligns = [alignment(g.b), alignment(g.a), alignment(g.c), alignment(g.c)];
    aligns.forEach((a, i) => this.setPref(LT_PREF_MIN_ALIGNMENT_A_BYTES + i, a));
    const bytes = (want + 2) * LT_RESULT_STRIDE;
    const results = new Uint8Array(koffi.view(plan.result, bytes));
    results.fill(0);
    const count = [0];
    const status = this.fn.heuristic(
      this.handle,
      plan.desc,
      plan.layoutA,
      plan.layoutB,
      plan.layoutC,
      plan.layoutC,
      this.pref,
      want,
      plan.algo,
      count,
    );
    const view = new DataView(results.buffer, results.byteOffset, bytes);
    const room = this.workspace ? this.workspaceBytes : 0;
    const usable: { algo: number; rank: number }[] = [];
    for (let i = 0; status === 0 && i < Math.min(Number(count[0]), want); i++) {
      const needs = Number(view.getBigUint64(i * LT_RESULT_STRIDE + LT_RESULT_WORKSPACE, true));
      const state = view.getInt32(i * LT_RESULT_STRIDE + LT_RESULT_STATE, true);
      if (state === 0 && needs <= room) usable.push({ algo: plan.algo + i * LT_RESULT_STRIDE, rank: i });
    }
    if (usable.length === 0) {
      this.destroy(plan);
      return false;
    }
    // the heuristic's first usable choice until (unless) tuning picks another
    plan.algo = usable[0].algo;
    plan.candidates = usable.length > 1 ? usable : [];
    return plan;
  }

  matmul(g: Gemm, e: Epilogue, tf32: boolean, alphaPtr: number): boolean {
    const compute = g.typeAB === 'f32' && tf32 ? CUBLAS_COMPUTE_32F_FAST_TF32 : CUBLAS_COMPUTE_32F;
    const key = [
      g.typeAB,
      g.typeC,
      g.transA ? 'T' : 'N',
      g.transB ? 'T' : 'N',
      g.m,
      g.n,
      g.k,
      compute,
      alignment(g.a),
      alignment(g.b),
      alignment(g.c),
      e.epilogue,
      e.bias ? `${e.biasType}@${alignment(e.bias)}` : '-',
      e.aux ? `${e.auxLd}@${alignment(e.aux)}` : '-',
    ].join(' ');
    let plan = this.plans.get(key);
    if (plan === undefined) {
      plan = this.plan(g, e, compute);
      this.plans.set(key, plan);
    }
    if (!plan) return false;
    if (e.bias) this.setDesc(plan.desc, LT_DESC_BIAS_POINTER, e.bias, 8);
    if (e.aux) this.setDesc(plan.desc, LT_DESC_EPILOGUE_AUX_POINTER, e.aux, 8);
    if (plan.candidates.length > 1 && this.tuning && !this.tuning.capturing())
      this.tune(key, plan, g, alphaPtr);
    const status = this.launch(plan, g, alphaPtr, g.c, plan.algo);
    if (status === CUBLAS_STATUS_NOT_SUPPORTED && !plan.ran) {
      // refused before launching anything: treat as a case without an algorithm
      this.destroy(plan);
      this.plans.set(key, false);
      return false;
    }
    if (status !== 0) {
      throw new CudaError(
        `cuda: cublasLtMatmul(${g.typeAB}->${g.typeC} with epilogue ${e.epilogue}, m ${g.m}, n ${g.n}, k ${g.k}, ` +
          `transA ${g.transA}, transB ${g.transB}) failed: ${this.statusName(status)} (cublasStatus ${status})`,
      );
    }
    plan.ran = true;
    return true;
  }

  /** cublasLtMatmul of the plan with `algo`, C = g.c read (beta) and D written at `d`; its status */
  private launch(plan: LtPlan, g: Gemm, alphaPtr: number, d: number, algo: number): number {
    return this.fn.matmul(
      this.handle,
      plan.desc,
      alphaPtr,
      g.b,
      plan.layoutA,
      g.a,
      plan.layoutB,
      alphaPtr + 4,
      g.c,
      plan.layoutC,
      d,
      plan.layoutC,
      algo,
      this.workspace,
      this.workspace ? this.workspaceBytes : 0,
      this.stream,
    );
  }

  /**
   * Time each candidate of the plan on this product (one warm-up, then REPS runs between two
   * events) with D in a scratch buffer, so C (read when beta != 0) is left as it was; outputs an
   * epilogue writes (aux, bias gradient) are written again by the real call that follows. Keeps the
   * fastest; a candidate the library refuses is skipped; no scratch memory: no tuning.
   */
  private tune(key: string, plan: LtPlan, g: Gemm, alphaPtr: number): void {
    const cands = plan.candidates;
    plan.candidates = [];
    const drv = this.tuning!.driver;
    const bytes = g.m * g.n * (g.typeC === 'f32' ? 4 : 2);
    // (outside the caching allocator: where it holds most of the memory this fails, and the
    // shape keeps the heuristic's choice)
    const d = drv.tryAlloc(bytes);
    if (!d) return;
    let start = 0;
    let end = 0;
    const REPS = 3;
    const run = (algo: number) => this.launch(plan, g, alphaPtr, d, algo);
    try {
      start = drv.createEvent();
      end = drv.createEvent();
      let best: { algo: number; rank: number } | null = null;
      let bestMs = Infinity;
      let firstMs = NaN;
      for (const [i, c] of cands.entries()) {
        if (run(c.algo) !== 0) continue;
        drv.record(start);
        let ok = true;
        for (let r = 0; r < REPS && ok; r++) ok = run(c.algo) === 0;
        drv.record(end);
        const ms = drv.elapsed(start, end) / REPS;
        if (i === 0) firstMs = ms;
        if (ok && ms < bestMs) {
          bestMs = ms;
          best = c;
        }
      }
      if (best) {
        plan.algo = best.algo;
        this.tuned.set(key, [best.rank, bestMs, firstMs]);
      }
    } finally {
      if (start) drv.destroyEvent(start);
      if (end) drv.destroyEvent(end);
      drv.free(d);
    }
  }
}
