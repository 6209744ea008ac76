// Matrix products through cuBLAS (libcublas.so.13, which brings cuBLASLt): strided batched
// GEMMs on row-major data, f32 (exact f32 by default, TF32 when asked) and bf16/f16 operands
// with f32 accumulation on the tensor cores.

import koffi from 'koffi';
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

export type GemmDType = 'f32' | 'bf16' | 'f16';

const DATA_TYPE: Record<GemmDType, number> = { f32: CUDA_R_32F, bf16: CUDA_R_16BF, f16: CUDA_R_16F };

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

  constructor(driver: Driver, workspace: number, workspaceBytes: number) {
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
}
