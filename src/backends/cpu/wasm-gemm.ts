// The f32 matrix product without OpenBLAS: a WebAssembly SIMD kernel, assembled here from the
// instruction list below (no build step, no .wasm file), called on packed panels.
//
// Layout (the classic GotoBLAS split, in one small kernel):
//   A (m, k) is packed into panels of MR rows: panel i holds, for each p, A[i*MR .. i*MR+MR-1, p]
//   B (k, n) is packed into panels of NR = 8 columns: panel j holds, for each p, B[p, j*8 .. j*8+7]
//   the kernel keeps an MR x 8 tile of C in MR * 2 f32x4 registers while it walks p, so each step
//   is 2 vector loads of B, MR broadcast loads of A and MR * 2 multiply-adds.
// m and n are padded with zero rows/columns to MR and 8; k is blocked by KC so a B panel block stays
// in L1 and the product of an A block stays in L2. f32 accumulation, as OpenBLAS's sgemm.

import { I32, instantiate, PAGE, section, sleb, str, uleb, V128, vec, type WasmMemory } from './wasm-asm.js';

/** rows of the register tile (MR x 8 floats = MR * 2 accumulators; 4 x 8: 8 accumulators + 3 more of the 16 xmm registers; 6 x 8 spilled and ran at half the speed) */
export const MR = 4;
/** columns of the register tile */
export const NR = 8;
/** k per block: a B panel block is KC * 32 bytes (8 KiB) */
const KC = 256;
/** A panels per block: MC_PANELS * MR * KC * 4 bytes (96 KiB) */
const MC_PANELS = 16;

/** instruction emitters (each returns bytes) */
const op = {
  get: (i: number) => [0x20, ...uleb(i)],
  set: (i: number) => [0x21, ...uleb(i)],
  i32: (v: number) => [0x41, ...sleb(v)],
  add: [0x6a],
  sub: [0x6b],
  mul: [0x6c],
  shl: [0x74],
  ltU: [0x49],
  ne: [0x47],
  block: [0x02, 0x40],
  loop: [0x03, 0x40],
  if: [0x04, 0x40],
  else: [0x05],
  end: [0x0b],
  brIf: (depth: number) => [0x0d, ...uleb(depth)],
  // SIMD (0xfd prefix); memarg = alignment exponent (a hint) then offset
  load: (offset: number) => [0xfd, ...uleb(0x00), 2, ...uleb(offset)],
  splat32: (offset: number) => [0xfd, ...uleb(0x09), 2, ...uleb(offset)],
  store: (offset: number) => [0xfd, ...uleb(0x0b), 2, ...uleb(offset)],
  zero: [0xfd, ...uleb(0x0c), ...new Array<number>(16).fill(0)],
  fadd: [0xfd, ...uleb(0xe4)],
  fmul: [0xfd, ...uleb(0xe6)],
};

/** x += step (i32 locals) */
const bump = (x: number, step: number | number[]) => [
  ...op.get(x),
  ...(typeof step === 'number' ? op.i32(step) : step),
  ...op.add,
  ...op.set(x),
];

/**
 * kernel(kc, a, aRow, aStep, aPanel, b, bStep, bPanel, c, ldc, mPanels, nPanels, accumulate): for every pair of
 * an A panel (rows ip*MR..) and a B panel (columns jp*8..), C tile (+)= A block (MR x kc) times
 * B block (kc x 8). A's element (r, p) of panel ip is at a + ip*aPanel + r*aRow + p*aStep bytes (a
 * row-major A has aStep 4, a transposed one aRow 4, a packed one aRow 4 and aStep MR*4); B's columns s..s+7 of step p are 8 floats at b + p*bStep + jp*bPanel; C's
 * tile (0, 0) is at c, ldc is its row pitch in bytes. Requires kc, mPanels, nPanels >= 1.
 */
function kernelBody(): { locals: number[][]; code: number[] } {
  // params 0..12
  const [kc, a, aRow, aStep, aPanel, b, bStep, bPanel, c, ldc, mPanels, nPanels, accumulate] = [
    0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12,
  ];
  // i32 locals
  const [jp, ip, p, ap, bp, cp, row] = [13, 14, 15, 16, 17, 18, 19];
  const rowOff = (r: number) => 20 + r; // r * aRow, r = 1..MR-1 (r = 0 unused)
  const firstV = 20 + MR;
  // v128 locals: accumulators acc(r, s), then b0, b1, av
  const acc = (r: number, s: number) => firstV + r * 2 + s;
  const b0 = firstV + MR * 2;
  const b1 = b0 + 1;
  const av = b0 + 2;

  const tileRows = (each: (r: number) => number[]) => {
    const out: number[] = [...op.get(cp), ...op.set(row)];
    for (let r = 0; r < MR; r++) {
      out.push(...each(r));
      if (r < MR - 1) out.push(...bump(row, op.get(ldc)));
    }
    return out;
  };
  const loadTile = tileRows((r) => [
    ...op.get(row),
    ...op.load(0),
    ...op.set(acc(r, 0)),
    ...op.get(row),
    ...op.load(16),
    ...op.set(acc(r, 1)),
  ]);
  const zeroTile: number[] = [];
  for (let r = 0; r < MR; r++) for (let s = 0; s < 2; s++) zeroTile.push(...op.zero, ...op.set(acc(r, s)));
  const storeTile = tileRows((r) => [
    ...op.get(row),
    ...op.get(acc(r, 0)),
    ...op.store(0),
    ...op.get(row),
    ...op.get(acc(r, 1)),
    ...op.store(16),
  ]);

  // one step of p, unrolled over the tile: acc(r, s) += A[r, p] * B[p, s*4 .. s*4+3]
  const step: number[] = [
    ...op.get(bp),
    ...op.load(0),
    ...op.set(b0),
    ...op.get(bp),
    ...op.load(16),
    ...op.set(b1),
  ];
  for (let r = 0; r < MR; r++) {
    step.push(...op.get(ap));
    if (r > 0) step.push(...op.get(rowOff(r)), ...op.add);
    step.push(...op.splat32(0), ...op.set(av));
    for (let s = 0; s < 2; s++) {
      step.push(...op.get(acc(r, s)), ...op.get(av), ...op.get(s === 0 ? b0 : b1), ...op.fmul, ...op.fadd);
      step.push(...op.set(acc(r, s)));
    }
  }
  step.push(...bump(ap, op.get(aStep)), ...bump(bp, op.get(bStep)));

  const rowOffsets: number[] = [];
  for (let r = 1; r < MR; r++)
    rowOffsets.push(...op.get(aRow), ...op.i32(r), ...op.mul, ...op.set(rowOff(r)));

  const code = [
    ...rowOffsets,
    ...op.i32(0),
    ...op.set(jp),
    ...op.loop, // over B panels
    ...op.i32(0),
    ...op.set(ip),
    ...op.loop, // over A panels
    // ap = a + ip * aPanel; bp = b + jp * bPanel; cp = c + ip * MR * ldc + jp * 32
    ...op.get(a),
    ...op.get(ip),
    ...op.get(aPanel),
    ...op.mul,
    ...op.add,
    ...op.set(ap),
    ...op.get(b),
    ...op.get(jp),
    ...op.get(bPanel),
    ...op.mul,
    ...op.add,
    ...op.set(bp),
    ...op.get(c),
    ...op.get(ip),
    ...op.i32(MR),
    ...op.mul,
    ...op.get(ldc),
    ...op.mul,
    ...op.add,
    ...op.get(jp),
    ...op.i32(5),
    ...op.shl,
    ...op.add,
    ...op.set(cp),
    ...op.get(accumulate),
    ...op.if,
    ...loadTile,
    ...op.else,
    ...zeroTile,
    ...op.end,
    ...op.get(kc),
    ...op.set(p),
    ...op.loop, // over p
    ...step,
    ...op.get(p),
    ...op.i32(1),
    ...op.sub,
    ...op.set(p),
    ...op.get(p),
    ...op.i32(0),
    ...op.ne,
    ...op.brIf(0),
    ...op.end,
    ...storeTile,
    ...bump(ip, 1),
    ...op.get(ip),
    ...op.get(mPanels),
    ...op.ltU,
    ...op.brIf(0),
    ...op.end,
    ...bump(jp, 1),
    ...op.get(jp),
    ...op.get(nPanels),
    ...op.ltU,
    ...op.brIf(0),
    ...op.end,
    ...op.end, // function
  ];
  return {
    locals: [
      [...uleb(7 + MR), I32],
      [...uleb(MR * 2 + 3), V128],
    ],
    code,
  };
}

/** the module's bytes: imports env.memory, exports kernel */
export function gemmModuleBytes(): Uint8Array {
  const body = kernelBody();
  const func = [...vec(body.locals), ...body.code];
  const bytes = [
    ...[0x00, 0x61, 0x73, 0x6d, 0x01, 0x00, 0x00, 0x00],
    ...section(1, vec([[0x60, ...vec(new Array<number[]>(13).fill([I32])), ...vec([])]])),
    ...section(2, vec([[...str('env'), ...str('memory'), 0x02, 0x00, ...uleb(1)]])),
    ...section(3, vec([uleb(0)])),
    ...section(7, vec([[...str('kernel'), 0x00, ...uleb(0)]])),
    ...section(10, vec([[...uleb(func.length), ...func]])),
  ];
  return Uint8Array.from(bytes);
}

// ---- the host side: copy in, call, copy out -------------------------------------------------------

type Kernel = (
  kc: number,
  a: number,
  aRow: number,
  aStep: number,
  aPanel: number,
  b: number,
  bStep: number,
  bPanel: number,
  c: number,
  ldc: number,
  mPanels: number,
  nPanels: number,
  accumulate: number,
) => void;

interface Instance {
  memory: WasmMemory;
  kernel: Kernel;
  /** a view of memory, renewed when it grows */
  view: Float32Array;
}

let instance: Instance | null | undefined;

/** The compiled kernel, or null where WebAssembly SIMD is unavailable (then plain loops run). */
export function wasmGemm(): Instance | null {
  if (instance !== undefined) return instance;
  instance = null;
  if (process.env.MOHAWK_WASM === 'off') return instance;
  try {
    const { memory, exports } = instantiate(gemmModuleBytes());
    instance = { memory, kernel: exports.kernel as Kernel, view: new Float32Array(memory.buffer) };
  } catch {
    instance = null;
  }
  return instance;
}

/** floats of zeros after each operand (B's padded columns read up to 7 past its end) */
const SLACK = 16;

/** Copy `rows` runs of `len` floats (pitch `ld`) from src[off..] to mem[dst..] with pitch `len`. */
function copyRows(
  mem: Float32Array,
  dst: number,
  src: Float32Array,
  off: number,
  rows: number,
  len: number,
  ld: number,
) {
  if (ld === len) mem.set(src.subarray(off, off + rows * len), dst);
  else for (let i = 0; i < rows; i++) mem.set(src.subarray(off + i * ld, off + i * ld + len), dst + i * len);
}

/**
 * C[cOff..] = alpha * op(A) op(B) + beta * C for Float32Arrays, row-major with leading dimensions,
 * through the WebAssembly kernel. Returns false (nothing done) where the kernel is unavailable.
 * A is copied as it is (the kernel reads either orientation); B is copied as it is when not
 * transposed and transposed into (k, n) otherwise; rows/columns past m and n are computed from the
 * zero slack after each operand and never copied back.
 */
export function sgemmWasm(
  transA: boolean,
  transB: boolean,
  m: number,
  n: number,
  k: number,
  alpha: number,
  a: Float32Array,
  aOff: number,
  lda: number,
  b: Float32Array,
  bOff: number,
  ldb: number,
  beta: number,
  c: Float32Array,
  cOff: number,
  ldc: number,
): boolean {
  const w = wasmGemm();
  if (!w) return false;
  const mPanels = Math.ceil(m / MR);
  const nPanels = Math.ceil(n / NR);
  const n8 = nPanels * NR;
  // floats, each region 4-float aligned: A as stored (m x k or k x m), B as (k x n8 or k x n), C m4 x n8
  const align = (x: number) => (x + 3) & ~3;
  // packed: mPanels * MR * k; as stored, the padded rows of the last panel read up to MR - 1 rows past A
  const aLen = align(mPanels * MR * k + (transA ? 1 : k) * (MR - 1)) + SLACK;
  const bLen = align(k * n8) + SLACK;
  const cLen = mPanels * MR * n8;
  const need = (aLen + bLen + cLen) * 4;
  if (w.memory.buffer.byteLength < need) {
    w.memory.grow(Math.ceil((need - w.memory.buffer.byteLength) / PAGE));
    w.view = new Float32Array(w.memory.buffer);
  }
  const mem = w.view;
  const aBase = 0;
  const bBase = aLen;
  const cBase = aLen + bLen;

  // A: element (r, p) of panel ip at aBase + ip*aPanel + r*aRow + p*aStep (floats). Against a narrow
  // B it is copied as it is (the slack rows read zeros); against a wide one, where each panel is
  // read nPanels times, it is packed into contiguous (k x MR) panels
  let aRow: number;
  let aStep: number;
  let aPanel: number;
  if (nPanels > 4) {
    [aRow, aStep, aPanel] = [1, MR, MR * k];
    for (let ip = 0; ip < mPanels; ip++) {
      const i0 = ip * MR;
      const rows = Math.min(MR, m - i0);
      const panel = aBase + ip * MR * k;
      if (transA)
        for (let p = 0, d = panel; p < k; p++, d += MR) {
          const src = aOff + p * lda + i0;
          for (let r = 0; r < rows; r++) mem[d + r] = a[src + r];
        }
      else
        for (let r = 0; r < rows; r++) {
          const src = aOff + (i0 + r) * lda;
          for (let p = 0, d = panel + r; p < k; p++, d += MR) mem[d] = a[src + p];
        }
      if (rows < MR)
        for (let p = 0, d = panel; p < k; p++, d += MR) for (let r = rows; r < MR; r++) mem[d + r] = 0;
    }
  } else if (transA) {
    copyRows(mem, aBase, a, aOff, k, m, lda);
    [aRow, aStep, aPanel] = [1, m, MR];
    mem.fill(0, aBase + k * m, bBase);
  } else {
    copyRows(mem, aBase, a, aOff, m, k, lda);
    [aRow, aStep, aPanel] = [k, 1, MR * k];
    mem.fill(0, aBase + m * k, bBase);
  }
  // B: panel jp, step p's 8 columns at bBase + jp*bPanel + p*bStep. A narrow B is copied as it is;
  // a wide one is packed into contiguous (k x 8) panels (long strides between steps run at a third
  // of the speed), a transposed one always
  let bStep: number;
  let bPanel: number;
  if (!transB && nPanels <= 4) {
    copyRows(mem, bBase, b, bOff, k, n, ldb);
    [bStep, bPanel] = [n, NR];
    mem.fill(0, bBase + k * n, cBase);
  } else {
    [bStep, bPanel] = [NR, NR * k];
    for (let jp = 0; jp < nPanels; jp++) {
      const j0 = jp * NR;
      const cols = Math.min(NR, n - j0);
      const panel = bBase + jp * NR * k;
      if (transB)
        for (let s = 0; s < cols; s++) {
          const src = bOff + (j0 + s) * ldb;
          for (let p = 0, d = panel + s; p < k; p++, d += NR) mem[d] = b[src + p];
        }
      else
        for (let p = 0, d = panel; p < k; p++, d += NR) {
          const src = bOff + p * ldb + j0;
          for (let s = 0; s < cols; s++) mem[d + s] = b[src + s];
        }
      if (cols < NR)
        for (let p = 0, d = panel; p < k; p++, d += NR) for (let s = cols; s < NR; s++) mem[d + s] = 0;
    }
  }

  const ldcBytes = n8 * 4;
  if (k === 0) mem.fill(0, cBase, cBase + cLen);
  for (let k0 = 0; k0 < k; k0 += KC) {
    const kc = Math.min(KC, k - k0);
    for (let i0 = 0; i0 < mPanels; i0 += MC_PANELS) {
      w.kernel(
        kc,
        (aBase + i0 * aPanel + k0 * aStep) * 4,
        aRow * 4,
        aStep * 4,
        aPanel * 4,
        (bBase + k0 * bStep) * 4,
        bStep * 4,
        bPanel * 4,
        (cBase + i0 * MR * n8) * 4,
        ldcBytes,
        Math.min(MC_PANELS, mPanels - i0),
        nPanels,
        k0 > 0 ? 1 : 0,
      );
    }
  }

  // C = alpha * product + beta * C
  for (let i = 0; i < m; i++) {
    const src = cBase + i * n8;
    const dst = cOff + i * ldc;
    if (beta === 0) {
      if (alpha === 1) c.set(mem.subarray(src, src + n), dst);
      else for (let j = 0; j < n; j++) c[dst + j] = alpha * mem[src + j];
    } else for (let j = 0; j < n; j++) c[dst + j] = alpha * mem[src + j] + beta * c[dst + j];
  }
  return true;
}
