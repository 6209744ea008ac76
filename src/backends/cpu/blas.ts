// General matrix products for the CPU backend: OpenBLAS through koffi when libopenblas.so.0 is
// present, otherwise a WebAssembly SIMD kernel for f32 (wasm-gemm.ts) and plain loops for f64 and
// tiny products, with the same results within float rounding.

import koffi from 'koffi';
import { sgemmWasm } from './wasm-gemm.js';

export type FloatArray = Float32Array | Float64Array;

type GemmFn = (
  order: number,
  transA: number,
  transB: number,
  m: number,
  n: number,
  k: number,
  alpha: number,
  a: FloatArray,
  lda: number,
  b: FloatArray,
  ldb: number,
  beta: number,
  c: FloatArray,
  ldc: number,
) => void;

interface Blas {
  sgemm: GemmFn;
  dgemm: GemmFn;
  library: string;
}

let blas: Blas | null | undefined;

/** The OpenBLAS binding, or null when the library is absent or MOHAWK_BLAS=off. */
export function loadBlas(): Blas | null {
  if (blas !== undefined) return blas;
  blas = null;
  if (process.env.MOHAWK_BLAS === 'off') return blas;
  for (const library of ['libopenblas.so.0', 'libopenblas.so', 'libopenblas.dylib']) {
    try {
      const lib = koffi.load(library);
      const sgemm = lib.func(
        'void cblas_sgemm(int, int, int, int, int, int, float, const float *, int, const float *, int, float, float *, int)',
      ) as GemmFn;
      const dgemm = lib.func(
        'void cblas_dgemm(int, int, int, int, int, int, double, const double *, int, const double *, int, double, double *, int)',
      ) as GemmFn;
      blas = { sgemm, dgemm, library };
      break;
    } catch {
      // try the next name
    }
  }
  return blas;
}

/**
 * C[cOff..] = alpha * op(A) op(B) + beta * C, row-major, with leading dimensions.
 * op(A) is (m, k), op(B) is (k, n), C is (m, n).
 */
export function gemm(
  useBlas: boolean,
  transA: boolean,
  transB: boolean,
  m: number,
  n: number,
  k: number,
  alpha: number,
  a: FloatArray,
  aOff: number,
  lda: number,
  b: FloatArray,
  bOff: number,
  ldb: number,
  beta: number,
  c: FloatArray,
  cOff: number,
  ldc: number,
): void {
  if (m === 0 || n === 0) return;
  const lib = useBlas ? loadBlas() : null;
  if (lib && k > 0) {
    const f = c instanceof Float64Array ? lib.dgemm : lib.sgemm;
    f(
      101,
      transA ? 112 : 111,
      transB ? 112 : 111,
      m,
      n,
      k,
      alpha,
      aOff ? a.subarray(aOff) : a,
      lda,
      bOff ? b.subarray(bOff) : b,
      ldb,
      beta,
      cOff ? c.subarray(cOff) : c,
      ldc,
    );
    return;
  }
  if (
    c instanceof Float32Array &&
    a instanceof Float32Array &&
    b instanceof Float32Array &&
    sgemmWasm(transA, transB, m, n, k, alpha, a, aOff, lda, b, bOff, ldb, beta, c, cOff, ldc)
  )
    return;
  gemmLoops(transA, transB, m, n, k, alpha, a, aOff, lda, b, bOff, ldb, beta, c, cOff, ldc);
}

/**
 * The one line to print when a CPU run starts without OpenBLAS (null when it loaded, or when
 * MOHAWK_BLAS=off asked for the fallback on purpose).
 */
export function blasHint(): string | null {
  if (loadBlas() || process.env.MOHAWK_BLAS === 'off') return null;
  return (
    'mohawk: OpenBLAS not found (libopenblas.so.0), so matrix products run in WebAssembly, 2-4x ' +
    'slower; install it for the speed: apt-get install libopenblas0-pthread (Debian/Ubuntu), ' +
    'dnf install openblas-threads (Fedora), brew install openblas (macOS)'
  );
}

/** The fallback: a row of C at a time, accumulating in a float64 scratch row. */
function gemmLoops(
  transA: boolean,
  transB: boolean,
  m: number,
  n: number,
  k: number,
  alpha: number,
  a: FloatArray,
  aOff: number,
  lda: number,
  b: FloatArray,
  bOff: number,
  ldb: number,
  beta: number,
  c: FloatArray,
  cOff: number,
  ldc: number,
): void {
  const row = new Float64Array(n);
  // B^T is walked row by row as B's columns; copy it once into (k, n) order for unit stride
  let bt: FloatArray | null = null;
  if (transB) {
    bt = new Float64Array(k * n);
    for (let j = 0; j < n; j++) for (let p = 0; p < k; p++) bt[p * n + j] = b[bOff + j * ldb + p];
  }
  for (let i = 0; i < m; i++) {
    row.fill(0);
    for (let p = 0; p < k; p++) {
      const av = transA ? a[aOff + p * lda + i] : a[aOff + i * lda + p];
      if (av === 0) continue;
      if (bt) {
        const base = p * n;
        for (let j = 0; j < n; j++) row[j] += av * bt[base + j];
      } else {
        const base = bOff + p * ldb;
        for (let j = 0; j < n; j++) row[j] += av * b[base + j];
      }
    }
    const cBase = cOff + i * ldc;
    if (beta === 0) for (let j = 0; j < n; j++) c[cBase + j] = alpha * row[j];
    else for (let j = 0; j < n; j++) c[cBase + j] = alpha * row[j] + beta * c[cBase + j];
  }
}
