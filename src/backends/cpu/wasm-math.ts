// The CPU backend's exp-bound f32 loops in WebAssembly SIMD: the unary ops built on exp (exp,
// sigmoid, silu, gelu_new) with their derivatives, the silu gate, and the row pieces of softmax,
// log-sum-exp and the KL divergence. Math.exp costs ~13 ns an element in V8; the SIMD exp below
// does four in about a nanosecond. Float64 arrays (the gradient checks) keep the plain loops.
//
// exp(x), four lanes at once: k = round(x / ln 2), r = x - k ln 2 (ln 2 split in two so k ln 2 is
// exact), exp(r) by its Taylor polynomial to r^7 (|r| <= ln2/2: truncation 5e-9, below f32's
// 6e-8), times 2^k built in the exponent bits. x below -87.34 gives 0 (no subnormals), above
// 88.72 +Infinity; in between x is clamped to 88.37 so 2^k stays finite (exp(88.37) = 2.5e38).
// Sums accumulate in float64 (two f64x2 lanes), like the plain loops.

import {
  F32,
  F64,
  I32,
  instantiate,
  moduleBytes,
  PAGE,
  sleb,
  uleb,
  V128,
  type Code,
  type FuncDef,
  type ValType,
  type WasmMemory,
} from './wasm-asm.js';

// ---- instructions -----------------------------------------------------------------------------

const get = (i: number): Code => [0x20, ...uleb(i)];
const set = (i: number, e: Code): Code => [...e, 0x21, ...uleb(i)];
const i32 = (v: number): Code => [0x41, ...sleb(v)];
const simd = (code: number): Code => [0xfd, ...uleb(code)];
const bin =
  (code: number) =>
  (a: Code, b: Code): Code => [...a, ...b, ...simd(code)];
const un =
  (code: number) =>
  (a: Code): Code => [...a, ...simd(code)];

function lanes(bytes: ArrayBuffer): Code {
  return [...simd(0x0c), ...new Uint8Array(bytes)];
}
/** v128.const of four f32 */
const cf = (x: number): Code => lanes(new Float32Array([x, x, x, x]).buffer);
/** v128.const of four i32 */
const ci = (x: number): Code => lanes(new Int32Array([x, x, x, x]).buffer);

/** i8x16.shuffle lanes: bytes 8-15 (f32 lanes 2, 3) to the low half, twice */
const HIGH_TO_LOW = [8, 9, 10, 11, 12, 13, 14, 15, 8, 9, 10, 11, 12, 13, 14, 15];

/** f32x4 and friends */
const v = {
  /** v128.load at address expression + offset (align hint 16 bytes) */
  load: (addr: Code): Code => [...addr, ...simd(0x00), 4, 0],
  store: (addr: Code, val: Code): Code => [...addr, ...val, ...simd(0x0b), 4, 0],
  splat: un(0x13),
  abs: un(0xe0),
  neg: un(0xe1),
  add: bin(0xe4),
  sub: bin(0xe5),
  mul: bin(0xe6),
  div: bin(0xe7),
  min: bin(0xe8),
  max: bin(0xe9),
  /** b < a ? b : a (one instruction; a NaN a passes) */
  pmin: bin(0xea),
  /** a < b ? b : a */
  pmax: bin(0xeb),
  lt: bin(0x43),
  gt: bin(0x44),
  and: bin(0x4e),
  /** a & ~b */
  andnot: bin(0x4f),
  /** (a & c) | (b & ~c) */
  bitselect: (a: Code, b: Code, c: Code): Code => [...a, ...b, ...c, ...simd(0x52)],
  iadd: bin(0xae),
  shl: (a: Code, bits: number): Code => [...a, ...i32(bits), ...simd(0xab)],
  /** f64x2 of lanes 0, 1 */
  promoteLow: un(0x5f),
  /** lanes 2, 3 moved to 0, 1 */
  high: (a: Code): Code => [...a, ...a, ...simd(0x0d), ...HIGH_TO_LOW],
  dadd: bin(0xf0),
  extractF32: (a: Code, lane: number): Code => [...a, ...simd(0x1f), lane],
  extractF64: (a: Code, lane: number): Code => [...a, ...simd(0x21), lane],
};
const addr = (base: number, off: number): Code => [...get(base), ...get(off), 0x6a];
const f32max = (a: Code, b: Code): Code => [...a, ...b, 0x97];
const f64add = (a: Code, b: Code): Code => [...a, ...b, 0xa0];

// structured control: block, loop, br_if, br, end; i32 comparisons
const BLOCK_START = [0x02, 0x40];
const LOOP = [0x03, 0x40];
const END = [0x0b];
const brIf = (depth: number): Code => [0x0d, depth];
const br = (depth: number): Code => [0x0c, depth];
const I32_GE_U = [0x4f];
const I32_GE_S = [0x4e];

/** for (i = start; !(i >= end); i += step) body, the comparison given (signed or unsigned) */
function loopUpTo(i: number, start: Code, end: Code, step: number, geOp: Code, body: Code): Code {
  return [
    ...set(i, start),
    ...BLOCK_START,
    ...LOOP,
    ...[...get(i), ...end, ...geOp, ...brIf(1)], // leave when i >= end
    ...body,
    ...set(i, [...get(i), ...i32(step), 0x6a]),
    ...br(0),
    ...END,
    ...END,
  ];
}

/** for (o = 0; o < n; o += 16) body: o and n are byte counts */
function eachVector(o: number, n: number, body: Code): Code {
  return loopUpTo(o, i32(0), get(n), 16, I32_GE_U, body);
}

// ---- functions ----------------------------------------------------------------------------------

class Builder {
  readonly locals: [number, ValType][] = [];
  constructor(private next: number) {}
  local(t: ValType): number {
    this.locals.push([1, t]);
    return this.next++;
  }
  /** the v128 temporaries of one exp */
  expTemps(): ExpTemps {
    return { x: this.local(V128), k: this.local(V128), r: this.local(V128), p: this.local(V128) };
  }
}

interface ExpTemps {
  x: number;
  k: number;
  r: number;
  p: number;
}

const LN2_HI = 0.693359375; // 8 significant bits: k * LN2_HI is exact for |k| < 2^16
const LN2_LO = -2.1219444e-4;
const EXP_LO = -87.33654; // ln of the smallest normal f32
const EXP_CLAMP = 88.37; // k <= 127
const EXP_OVER = 88.72284; // ln of the largest f32

/** 1.5 * 2^23: y + MAGIC rounds y to an integer k held in the low mantissa bits */
const MAGIC = 12582912;

/** out = exp(x) for the f32x4 expression x (evaluated once) */
function exp4(out: number, x: Code, t: ExpTemps): Code {
  let poly = cf(1 / 5040);
  for (const c of [1 / 720, 1 / 120, 1 / 24, 1 / 6, 1 / 2, 1, 1]) poly = v.add(v.mul(poly, get(t.r)), cf(c));
  return [
    ...set(t.x, x),
    // clamp with x first so a NaN passes through
    ...set(t.p, v.pmin(v.pmax(get(t.x), cf(EXP_LO)), cf(EXP_CLAMP))),
    ...set(t.k, v.add(v.mul(get(t.p), cf(Math.LOG2E)), cf(MAGIC))),
    ...set(t.r, v.sub(get(t.k), cf(MAGIC))),
    ...set(t.r, v.sub(v.sub(get(t.p), v.mul(get(t.r), cf(LN2_HI))), v.mul(get(t.r), cf(LN2_LO)))),
    // 2^k: the bits of k + MAGIC plus 127, shifted into the exponent (MAGIC's own bits shift out)
    ...set(out, v.mul(poly, v.shl(v.iadd(get(t.k), ci(127)), 23))),
    ...set(out, v.andnot(get(out), v.lt(get(t.x), cf(EXP_LO)))),
    ...set(out, v.bitselect(cf(Infinity), get(out), v.gt(get(t.x), cf(EXP_OVER)))),
  ];
}

/** out = 1 / (1 + exp(-x)) */
function sigmoid4(out: number, x: Code, t: ExpTemps): Code {
  return [...exp4(out, v.sub(cf(0), x), t), ...set(out, v.div(cf(1), v.add(cf(1), get(out))))];
}

const SQRT_2_OVER_PI = 0.7978845608028654;
const GELU_A = 0.044715;

/** gelu_new(x) = 0.5 x (1 + tanh(u)) = x sigmoid(2u), u = sqrt(2/pi) (x + 0.044715 x^3) */
function geluSigmoid(out: number, x: number, t: ExpTemps): Code {
  const x2 = v.mul(get(x), get(x));
  const twoU = v.mul(v.mul(get(x), v.add(cf(1), v.mul(cf(GELU_A), x2))), cf(2 * SQRT_2_OVER_PI));
  return sigmoid4(out, twoU, t);
}

export type UnaryKind =
  'identity' | 'neg' | 'abs' | 'square' | 'relu' | 'exp' | 'sigmoid' | 'silu' | 'geluNew';
export const WASM_UNARY: readonly UnaryKind[] = [
  'identity',
  'neg',
  'abs',
  'square',
  'relu',
  'exp',
  'sigmoid',
  'silu',
  'geluNew',
];
export type GradKind = 'exp' | 'sigmoid' | 'silu' | 'geluNew';
export const WASM_UNARY_GRAD: readonly GradKind[] = ['exp', 'sigmoid', 'silu', 'geluNew'];

/** unary_<op>(src, dst, bytes, alpha, beta): dst = alpha f(src) + beta */
function unaryFunc(op: UnaryKind): FuncDef {
  const [src, dst, n, alpha, beta] = [0, 1, 2, 3, 4];
  const b = new Builder(5);
  const o = b.local(I32);
  const x = b.local(V128);
  const y = b.local(V128);
  const t = b.expTemps();
  let f: Code;
  switch (op) {
    case 'identity':
      f = set(y, get(x));
      break;
    case 'neg':
      f = set(y, v.neg(get(x)));
      break;
    case 'abs':
      f = set(y, v.abs(get(x)));
      break;
    case 'square':
      f = set(y, v.mul(get(x), get(x)));
      break;
    case 'relu':
      // pmax(0, x) = 0 < x ? x : 0, the loop's x > 0 ? x : 0 (NaN and -0 give 0)
      f = set(y, v.pmax(cf(0), get(x)));
      break;
    case 'exp':
      f = exp4(y, get(x), t);
      break;
    case 'sigmoid':
      f = sigmoid4(y, get(x), t);
      break;
    case 'silu':
      f = [...sigmoid4(y, get(x), t), ...set(y, v.mul(get(y), get(x)))];
      break;
    case 'geluNew':
      f = [...geluSigmoid(y, x, t), ...set(y, v.mul(get(y), get(x)))];
      break;
  }
  const body = [
    ...set(x, v.load(addr(src, o))),
    ...f,
    ...v.store(addr(dst, o), v.add(v.mul(get(y), v.splat(get(alpha))), v.splat(get(beta)))),
  ];
  return {
    name: `unary_${op}`,
    params: [I32, I32, I32, F32, F32],
    results: [],
    locals: b.locals,
    code: eachVector(o, n, body),
  };
}

/** grad_<op>(x, gy, gx, bytes): gx = gy f'(x) */
function gradFunc(op: GradKind): FuncDef {
  const [xp, gyp, gxp, n] = [0, 1, 2, 3];
  const b = new Builder(4);
  const o = b.local(I32);
  const x = b.local(V128);
  const s = b.local(V128);
  const t = b.expTemps();
  let d: Code;
  switch (op) {
    case 'exp':
      d = exp4(s, get(x), t);
      break;
    case 'sigmoid':
      d = [...sigmoid4(s, get(x), t), ...set(s, v.mul(get(s), v.sub(cf(1), get(s))))];
      break;
    case 'silu':
      // s (1 + x (1 - s))
      d = [
        ...sigmoid4(s, get(x), t),
        ...set(s, v.mul(get(s), v.add(cf(1), v.mul(get(x), v.sub(cf(1), get(s)))))),
      ];
      break;
    case 'geluNew': {
      // s + 2 x s (1 - s) sqrt(2/pi) (1 + 3 a x^2), s = sigmoid(2u)
      const du = v.mul(cf(2 * SQRT_2_OVER_PI), v.add(cf(1), v.mul(cf(3 * GELU_A), v.mul(get(x), get(x)))));
      d = [
        ...geluSigmoid(s, x, t),
        ...set(s, v.add(get(s), v.mul(v.mul(get(x), v.mul(get(s), v.sub(cf(1), get(s)))), du))),
      ];
      break;
    }
  }
  const body = [
    ...set(x, v.load(addr(xp, o))),
    ...d,
    ...v.store(addr(gxp, o), v.mul(get(s), v.load(addr(gyp, o)))),
  ];
  return {
    name: `grad_${op}`,
    params: [I32, I32, I32, I32],
    results: [],
    locals: b.locals,
    code: eachVector(o, n, body),
  };
}

/** siluGate(y, u, out, bytes): out = y u sigmoid(u) */
function siluGateFunc(): FuncDef {
  const [yp, up, outp, n] = [0, 1, 2, 3];
  const b = new Builder(4);
  const o = b.local(I32);
  const u = b.local(V128);
  const s = b.local(V128);
  const t = b.expTemps();
  const body = [
    ...set(u, v.load(addr(up, o))),
    ...sigmoid4(s, get(u), t),
    ...v.store(addr(outp, o), v.mul(v.load(addr(yp, o)), v.mul(get(u), get(s)))),
  ];
  return {
    name: 'siluGate',
    params: [I32, I32, I32, I32],
    results: [],
    locals: b.locals,
    code: eachVector(o, n, body),
  };
}

/** siluGateGrad(y, u, g, gy, gz, bytes): gy = g u s, gz = g y s (1 + u (1 - s)), s = sigmoid(u) */
function siluGateGradFunc(): FuncDef {
  const [yp, up, gp, gyp, gzp, n] = [0, 1, 2, 3, 4, 5];
  const b = new Builder(6);
  const o = b.local(I32);
  const u = b.local(V128);
  const s = b.local(V128);
  const g = b.local(V128);
  const t = b.expTemps();
  const body = [
    ...set(u, v.load(addr(up, o))),
    ...set(g, v.load(addr(gp, o))),
    ...sigmoid4(s, get(u), t),
    ...v.store(addr(gyp, o), v.mul(get(g), v.mul(get(u), get(s)))),
    ...v.store(
      addr(gzp, o),
      v.mul(
        v.mul(get(g), v.load(addr(yp, o))),
        v.mul(get(s), v.add(cf(1), v.mul(get(u), v.sub(cf(1), get(s))))),
      ),
    ),
  ];
  return {
    name: 'siluGateGrad',
    params: [I32, I32, I32, I32, I32, I32],
    results: [],
    locals: b.locals,
    code: eachVector(o, n, body),
  };
}

/** rowMax(src, bytes) -> the largest value (NaN if any is NaN) */
function rowMaxFunc(): FuncDef {
  const [src, n] = [0, 1];
  const b = new Builder(2);
  const o = b.local(I32);
  const m = b.local(V128);
  const code = [
    ...set(m, cf(-Infinity)),
    ...eachVector(o, n, set(m, v.max(get(m), v.load(addr(src, o))))),
    ...f32max(
      f32max(v.extractF32(get(m), 0), v.extractF32(get(m), 1)),
      f32max(v.extractF32(get(m), 2), v.extractF32(get(m), 3)),
    ),
  ];
  return { name: 'rowMax', params: [I32, I32], results: [F32], locals: b.locals, code };
}

/** the f64 sum of the two f64x2 accumulators a and b */
const hsum = (a: number, b: number): Code => {
  const s = v.dadd(get(a), get(b));
  return f64add(v.extractF64(s, 0), v.extractF64(s, 1));
};
/** a += lanes 0, 1 of e; b += lanes 2, 3 (in f64) */
const accumulate = (a: number, b: number, e: Code): Code => [
  ...set(a, v.dadd(get(a), v.promoteLow(e))),
  ...set(b, v.dadd(get(b), v.promoteLow(v.high(e)))),
];

/** expSum(src, dst, bytes, scale, shift, mult) -> sum of e: e = exp(scale src + shift), dst = mult e */
function expSumFunc(): FuncDef {
  const [src, dst, n, scale, shift, mult] = [0, 1, 2, 3, 4, 5];
  const b = new Builder(6);
  const o = b.local(I32);
  const e = b.local(V128);
  const a0 = b.local(V128);
  const a1 = b.local(V128);
  const t = b.expTemps();
  const body = [
    ...exp4(e, v.add(v.mul(v.load(addr(src, o)), v.splat(get(scale))), v.splat(get(shift))), t),
    ...accumulate(a0, a1, get(e)),
    ...v.store(addr(dst, o), v.mul(get(e), v.splat(get(mult)))),
  ];
  return {
    name: 'expSum',
    params: [I32, I32, I32, F32, F32, F32],
    results: [F64],
    locals: b.locals,
    code: [...eachVector(o, n, body), ...hsum(a0, a1)],
  };
}

/**
 * klDot(t, s, bytes, inv, shift, sumAt) -> sum of e (t - s), e = exp(inv t + shift), terms with
 * e = 0 left out; the sum of e itself is stored as an f64 at sumAt
 */
function klDotFunc(): FuncDef {
  const [tp, sp, n, inv, shift, sumAt] = [0, 1, 2, 3, 4, 5];
  const b = new Builder(6);
  const o = b.local(I32);
  const e = b.local(V128);
  const tv = b.local(V128);
  const [a0, a1, e0, e1] = [b.local(V128), b.local(V128), b.local(V128), b.local(V128)];
  const t = b.expTemps();
  const body = [
    ...set(tv, v.load(addr(tp, o))),
    ...exp4(e, v.add(v.mul(get(tv), v.splat(get(inv))), v.splat(get(shift))), t),
    ...accumulate(e0, e1, get(e)),
    // where e is 0, t - s may be NaN (-inf - -inf): masked out
    ...accumulate(a0, a1, v.and(v.mul(get(e), v.sub(get(tv), v.load(addr(sp, o)))), v.gt(get(e), cf(0)))),
  ];
  return {
    name: 'klDot',
    params: [I32, I32, I32, F32, F32, I32],
    results: [F64],
    locals: b.locals,
    code: [...eachVector(o, n, body), ...get(sumAt), ...hsum(e0, e1), 0x39, 3, 0, ...hsum(a0, a1)],
  };
}

/** axpby(x, y, out, bytes, a, b): out = a x + b y */
function axpbyFunc(): FuncDef {
  const b = new Builder(6);
  const o = b.local(I32);
  const body = v.store(
    addr(2, o),
    v.add(v.mul(v.load(addr(0, o)), v.splat(get(4))), v.mul(v.load(addr(1, o)), v.splat(get(5)))),
  );
  return {
    name: 'axpby',
    params: [I32, I32, I32, I32, F32, F32],
    results: [],
    locals: b.locals,
    code: eachVector(o, 3, body),
  };
}

/** for (i = start; i < end; i += step) body, signed i32 */
function forRange(i: number, start: Code, end: Code, step: number, body: Code): Code {
  return loopUpTo(i, start, end, step, I32_GE_S, body);
}
const iadd = (a: Code, b: Code): Code => [...a, ...b, 0x6a];
const isub = (a: Code, b: Code): Code => [...a, ...b, 0x6b];
const imul = (a: Code, b: Code): Code => [...a, ...b, 0x6c];
const iflt = (a: Code, b: Code, body: Code): Code => [...a, ...b, 0x48, 0x04, 0x40, ...body, 0x0b];
const ifge = (a: Code, b: Code, body: Code): Code => [...a, ...b, 0x4e, 0x04, 0x40, ...body, 0x0b];

/**
 * conv(x, wt, bias, out, T, rowBytes, K): the causal depthwise conv of one sequence, x and out
 * (T, C), wt the taps (K, C), rowBytes = 4 C (a multiple of 16):
 * out[s] = bias + sum_{j >= K-1-s} wt[j] x[s - (K-1) + j]
 */
function convFunc(): FuncDef {
  const [x, wt, bias, out, T, rb, K] = [0, 1, 2, 3, 4, 5, 6];
  const b = new Builder(7);
  const [sI, o, j] = [b.local(I32), b.local(I32), b.local(I32)];
  const acc = b.local(V128);
  // j0 = max(0, K - 1 - s): select(K-1-s, 0, 0 < K-1-s)
  const back = isub(isub(get(K), i32(1)), get(sI));
  const j0 = [...back, ...i32(0), ...i32(0), ...back, 0x48, 0x1b];
  const tap = set(
    acc,
    v.add(
      get(acc),
      v.mul(
        v.load(iadd(iadd(get(wt), imul(get(j), get(rb))), get(o))),
        v.load(iadd(iadd(get(x), imul(iadd(isub(get(sI), isub(get(K), i32(1))), get(j)), get(rb))), get(o))),
      ),
    ),
  );
  const code = forRange(
    sI,
    i32(0),
    get(T),
    1,
    forRange(o, i32(0), get(rb), 16, [
      ...set(acc, v.load(addr(bias, o))),
      ...forRange(j, j0, get(K), 1, tap),
      ...v.store(iadd(iadd(get(out), imul(get(sI), get(rb))), get(o)), get(acc)),
    ]),
  );
  return { name: 'conv', params: [I32, I32, I32, I32, I32, I32, I32], results: [], locals: b.locals, code };
}

/**
 * convGrad(x, wt, gy, gx, gwt, gb, T, rowBytes, K) for one sequence: gx[s] = sum_j wt[j] gy[s + K-1-j]
 * (written), gwt[j] += sum_s gy[s] x[s - (K-1) + j] and gb += sum_s gy[s] (accumulated, f32)
 */
function convGradFunc(): FuncDef {
  const [x, wt, gy, gx, gwt, gb, T, rb, K] = [0, 1, 2, 3, 4, 5, 6, 7, 8];
  const b = new Builder(9);
  const [sI, o, j, r] = [b.local(I32), b.local(I32), b.local(I32), b.local(I32)];
  const [acc, g] = [b.local(V128), b.local(V128)];
  const at = (base: number, row: Code): Code => iadd(iadd(get(base), imul(row, get(rb))), get(o));
  const body = [
    ...set(acc, cf(0)),
    ...set(g, v.load(at(gy, get(sI)))),
    ...v.store(addr(gb, o), v.add(v.load(addr(gb, o)), get(g))),
    ...forRange(j, i32(0), get(K), 1, [
      // the output row this tap of x[s] feeds: s + K-1-j
      ...set(r, isub(iadd(get(sI), isub(get(K), i32(1))), get(j))),
      ...iflt(
        get(r),
        get(T),
        set(acc, v.add(get(acc), v.mul(v.load(at(wt, get(j))), v.load(at(gy, get(r)))))),
      ),
      // the input row tap j reads for output s: s - (K-1) + j
      ...set(r, iadd(isub(get(sI), isub(get(K), i32(1))), get(j))),
      ...ifge(
        get(r),
        i32(0),
        v.store(at(gwt, get(j)), v.add(v.load(at(gwt, get(j))), v.mul(get(g), v.load(at(x, get(r)))))),
      ),
    ]),
    ...v.store(at(gx, get(sI)), get(acc)),
  ];
  const code = forRange(sI, i32(0), get(T), 1, forRange(o, i32(0), get(rb), 16, body));
  return {
    name: 'convGrad',
    params: [I32, I32, I32, I32, I32, I32, I32, I32, I32],
    results: [],
    locals: b.locals,
    code,
  };
}

export type BinaryKind = 'add' | 'sub' | 'mul' | 'div';
export const WASM_BINARY: readonly BinaryKind[] = ['add', 'sub', 'mul', 'div'];
const BINARY_OP: Record<BinaryKind, (a: Code, b: Code) => Code> = {
  add: v.add,
  sub: v.sub,
  mul: v.mul,
  div: v.div,
};

/** binary_<op>(a, b, out, bytes): out = a op b; binary_<op>_s(a, s, out, bytes): out = a op s */
function binaryFuncs(op: BinaryKind): FuncDef[] {
  const vv = new Builder(4);
  const o = vv.local(I32);
  const both: FuncDef = {
    name: `binary_${op}`,
    params: [I32, I32, I32, I32],
    results: [],
    locals: vv.locals,
    code: eachVector(o, 3, v.store(addr(2, o), BINARY_OP[op](v.load(addr(0, o)), v.load(addr(1, o))))),
  };
  const vs = new Builder(4);
  const os = vs.local(I32);
  const sv = vs.local(V128);
  const scalar: FuncDef = {
    name: `binary_${op}_s`,
    params: [I32, F32, I32, I32],
    results: [],
    locals: vs.locals,
    code: [
      ...set(sv, v.splat(get(1))),
      ...eachVector(os, 3, v.store(addr(2, os), BINARY_OP[op](v.load(addr(0, os)), get(sv)))),
    ],
  };
  return [both, scalar];
}

/** sumSq(x, bytes) -> sum of x^2 in f64 */
function sumSqFunc(): FuncDef {
  const b = new Builder(2);
  const o = b.local(I32);
  const [x, a0, a1] = [b.local(V128), b.local(V128), b.local(V128)];
  const body = [...set(x, v.load(addr(0, o))), ...accumulate(a0, a1, v.mul(get(x), get(x)))];
  return {
    name: 'sumSq',
    params: [I32, I32],
    results: [F64],
    locals: b.locals,
    code: [...eachVector(o, 1, body), ...hsum(a0, a1)],
  };
}

/** rmsScale(x, w, out, bytes, rs): out = x rs w */
function rmsScaleFunc(): FuncDef {
  const b = new Builder(5);
  const o = b.local(I32);
  const body = v.store(addr(2, o), v.mul(v.mul(v.load(addr(0, o)), v.splat(get(4))), v.load(addr(1, o))));
  return {
    name: 'rmsScale',
    params: [I32, I32, I32, I32, F32],
    results: [],
    locals: b.locals,
    code: eachVector(o, 3, body),
  };
}

/**
 * rmsGradRow(x, w, gy, gx, gw, bytes, rs, c): the part of the RMSNorm backward for one row after
 * its dot product: gx = rs gy w - c x, gw += rs gy x (f32, the caller sums blocks in f64)
 */
function rmsGradRowFunc(): FuncDef {
  const [x, w, gy, gx, gw, n, rs, c] = [0, 1, 2, 3, 4, 5, 6, 7];
  const b = new Builder(8);
  const o = b.local(I32);
  const [xv, g] = [b.local(V128), b.local(V128)];
  const body = [
    ...set(xv, v.load(addr(x, o))),
    ...set(g, v.mul(v.load(addr(gy, o)), v.splat(get(rs)))),
    ...v.store(addr(gx, o), v.sub(v.mul(get(g), v.load(addr(w, o))), v.mul(get(xv), v.splat(get(c))))),
    ...v.store(addr(gw, o), v.add(v.load(addr(gw, o)), v.mul(get(g), get(xv)))),
  ];
  return {
    name: 'rmsGradRow',
    params: [I32, I32, I32, I32, I32, I32, F32, F32],
    results: [],
    locals: b.locals,
    code: eachVector(o, n, body),
  };
}

/** dot3(a, b, c, bytes) -> sum of a b c in f64 */
function dot3Func(): FuncDef {
  const b = new Builder(4);
  const o = b.local(I32);
  const [a0, a1] = [b.local(V128), b.local(V128)];
  const body = accumulate(a0, a1, v.mul(v.mul(v.load(addr(0, o)), v.load(addr(1, o))), v.load(addr(2, o))));
  return {
    name: 'dot3',
    params: [I32, I32, I32, I32],
    results: [F64],
    locals: b.locals,
    code: [...eachVector(o, 3, body), ...hsum(a0, a1)],
  };
}

/** colSum(src, acc, rows, rowBytes): acc[j] += sum_r src[r, j] with acc f64 (rowBytes a multiple of 16) */
function colSumFunc(): FuncDef {
  const [src, acc, rows, rb] = [0, 1, 2, 3];
  const b = new Builder(4);
  const [r, o, row, at] = [b.local(I32), b.local(I32), b.local(I32), b.local(I32)];
  const x = b.local(V128);
  const f64x2 = (addrCode: Code): Code => [...addrCode, ...simd(0x00), 4, 0];
  const body = [
    ...set(x, v.load(iadd(get(row), get(o)))),
    // acc + 2 o: the f64 pairs of lanes 0-1 and 2-3
    ...set(at, iadd(get(acc), iadd(get(o), get(o)))),
    ...v.store(get(at), v.dadd(f64x2(get(at)), v.promoteLow(get(x)))),
    ...v.store(iadd(get(at), i32(16)), v.dadd(f64x2(iadd(get(at), i32(16))), v.promoteLow(v.high(get(x))))),
  ];
  const code = forRange(r, i32(0), get(rows), 1, [
    ...set(row, iadd(get(src), imul(get(r), get(rb)))),
    ...forRange(o, i32(0), get(rb), 16, body),
  ]);
  return { name: 'colSum', params: [I32, I32, I32, I32], results: [], locals: b.locals, code };
}

// ---- row loops: one call a block of rows, each row through the functions above ----------------

const call = (index: number): Code => [0x10, ...uleb(index)];
const f32c = (x: number): Code => [0x43, ...new Uint8Array(new Float32Array([x]).buffer)];
const f64store = (at: Code, val: Code): Code => [...at, ...val, 0x39, 3, 0];
const f64load = (at: Code): Code => [...at, 0x2b, 3, 0];
/** -(max of the row) * inv, in f32 */
const negScaledMax = (rowMax: number, row: Code, pitch: number, inv: number): Code => [
  ...row,
  ...get(pitch),
  ...call(rowMax),
  ...get(inv),
  0x94, // f32.mul
  0x8c, // f32.neg
];

/**
 * klRows(t, s, rows, pitch, inv, scratch, stats): per row r of teacher and student logits (pitch
 * bytes apart), stats[r] = f64 x 5: shiftT, shiftS, sumT, sumS and sum e_t (t - s), where
 * shift = -max / tau and sum = sum exp(x / tau + shift); scratch takes one row of exps
 */
function klRowsFunc(at: (name: string) => number): FuncDef {
  const [t, s, rows, pitch, inv, scratch, stats] = [0, 1, 2, 3, 4, 5, 6];
  const b = new Builder(7);
  const [r, tp, sp, st] = [b.local(I32), b.local(I32), b.local(I32), b.local(I32)];
  const [shiftT, shiftS] = [b.local(F32), b.local(F32)];
  const body = [
    ...set(tp, iadd(get(t), imul(get(r), get(pitch)))),
    ...set(sp, iadd(get(s), imul(get(r), get(pitch)))),
    ...set(st, iadd(get(stats), imul(get(r), i32(40)))),
    ...set(shiftT, negScaledMax(at('rowMax'), get(tp), pitch, inv)),
    ...set(shiftS, negScaledMax(at('rowMax'), get(sp), pitch, inv)),
    ...f64store(get(st), [...get(shiftT), 0xbb]),
    ...f64store(iadd(get(st), i32(8)), [...get(shiftS), 0xbb]),
    ...f64store(iadd(get(st), i32(24)), [
      ...[...get(sp), ...get(scratch), ...get(pitch), ...get(inv), ...get(shiftS), ...f32c(1)],
      ...call(at('expSum')),
    ]),
    ...f64store(iadd(get(st), i32(32)), [
      ...[...get(tp), ...get(sp), ...get(pitch), ...get(inv), ...get(shiftT), ...iadd(get(st), i32(16))],
      ...call(at('klDot')),
    ]),
  ];
  return {
    name: 'klRows',
    params: [I32, I32, I32, I32, F32, I32, I32],
    results: [],
    locals: b.locals,
    code: forRange(r, i32(0), get(rows), 1, body),
  };
}

/**
 * klGradRows(t, s, g, rows, pitch, inv, cs): per row, t and s become their unnormalized
 * probabilities exp(x / tau + shift) in place and g = c (q - p), c = cs[r] (f64) = gLoss / tau
 */
function klGradRowsFunc(at: (name: string) => number): FuncDef {
  const [t, s, g, rows, pitch, inv, cs] = [0, 1, 2, 3, 4, 5, 6];
  const b = new Builder(7);
  const [r, tp, sp] = [b.local(I32), b.local(I32), b.local(I32)];
  const [sumT, sumS, c] = [b.local(F64), b.local(F64), b.local(F64)];
  const expInPlace = (row: number): Code => [
    ...get(row),
    ...get(row),
    ...get(pitch),
    ...get(inv),
    ...negScaledMax(at('rowMax'), get(row), pitch, inv),
    ...f32c(1),
    ...call(at('expSum')),
  ];
  const body = [
    ...set(tp, iadd(get(t), imul(get(r), get(pitch)))),
    ...set(sp, iadd(get(s), imul(get(r), get(pitch)))),
    ...set(sumT, expInPlace(tp)),
    ...set(sumS, expInPlace(sp)),
    ...set(c, f64load(iadd(get(cs), imul(get(r), i32(8))))),
    ...get(sp),
    ...get(tp),
    ...iadd(get(g), imul(get(r), get(pitch))),
    ...get(pitch),
    ...[...get(c), ...get(sumS), 0xa3, 0xb6], // f32(c / sumS)
    ...[...get(c), ...get(sumT), 0xa3, 0x9a, 0xb6], // f32(-(c / sumT))
    ...call(at('axpby')),
  ];
  return {
    name: 'klGradRows',
    params: [I32, I32, I32, I32, I32, F32, I32],
    results: [],
    locals: b.locals,
    code: forRange(r, i32(0), get(rows), 1, body),
  };
}

/**
 * softmaxRows(src, dst, rows, pitch, stats): dst rows = softmax of src rows (a row of -inf gives
 * NaN, as 0 / 0); stats[r] = f64 x 2: the max used (0 for a row of -inf) and the sum of exps
 */
function softmaxRowsFunc(at: (name: string) => number): FuncDef {
  const [src, dst, rows, pitch, stats] = [0, 1, 2, 3, 4];
  const b = new Builder(5);
  const [r, sp, dp, st] = [b.local(I32), b.local(I32), b.local(I32), b.local(I32)];
  const m = b.local(F32);
  const sum = b.local(F64);
  const body = [
    ...set(sp, iadd(get(src), imul(get(r), get(pitch)))),
    ...set(dp, iadd(get(dst), imul(get(r), get(pitch)))),
    ...set(st, iadd(get(stats), imul(get(r), i32(16)))),
    ...set(m, [...get(sp), ...get(pitch), ...call(at('rowMax'))]),
    // a fully masked row: max 0, stay finite
    ...set(m, [...f32c(0), ...get(m), ...get(m), ...f32c(-Infinity), 0x5b, 0x1b]),
    ...set(sum, [
      ...get(sp),
      ...get(dp),
      ...get(pitch),
      ...f32c(1),
      ...get(m),
      0x8c,
      ...f32c(1),
      ...call(at('expSum')),
    ]),
    ...f64store(get(st), [...get(m), 0xbb]),
    ...f64store(iadd(get(st), i32(8)), get(sum)),
    ...[...get(dp), ...get(dp), ...get(pitch), ...[...f64c(1), ...get(sum), 0xa3, 0xb6], ...f32c(0)],
    ...call(at('unary_identity')),
  ];
  return {
    name: 'softmaxRows',
    params: [I32, I32, I32, I32, I32],
    results: [],
    locals: b.locals,
    code: forRange(r, i32(0), get(rows), 1, body),
  };
}
const f64c = (x: number): Code => [0x44, ...new Uint8Array(new Float64Array([x]).buffer)];

/**
 * spread(base, rows, colBytes, pitchBytes, pad): rows stored back to back at base moved apart to
 * the pitch (last row first, so the moves never overwrite a row not yet moved), each row's tail
 * up to the pitch set to pad; gather(base, rows, colBytes, pitchBytes) undoes it
 */
function spreadFuncs(): FuncDef[] {
  const memoryCopy = [0xfc, ...uleb(10), 0, 0];
  const sb = new Builder(5);
  const [r, q, tail] = [sb.local(I32), sb.local(I32), sb.local(I32)];
  const [base, rows, cb, pb, pad] = [0, 1, 2, 3, 4];
  const spreadBody = [
    // r counts down: row = rows - 1 - q
    ...set(r, isub(isub(get(rows), i32(1)), get(q))),
    ...iadd(get(base), imul(get(r), get(pb))),
    ...iadd(get(base), imul(get(r), get(cb))),
    ...get(cb),
    ...memoryCopy,
    ...forRange(tail, get(cb), get(pb), 4, [
      ...iadd(iadd(get(base), imul(get(r), get(pb))), get(tail)),
      ...get(pad),
      0x38, // f32.store
      2,
      0,
    ]),
  ];
  const spread: FuncDef = {
    name: 'spread',
    params: [I32, I32, I32, I32, F32],
    results: [],
    locals: sb.locals,
    code: forRange(q, i32(0), get(rows), 1, spreadBody),
  };
  const gb = new Builder(4);
  const gr = gb.local(I32);
  const gather: FuncDef = {
    name: 'gather',
    params: [I32, I32, I32, I32],
    results: [],
    locals: gb.locals,
    code: forRange(gr, i32(0), get(rows), 1, [
      ...iadd(get(base), imul(get(gr), get(cb))),
      ...iadd(get(base), imul(get(gr), get(pb))),
      ...get(cb),
      ...memoryCopy,
    ]),
  };
  return [spread, gather];
}

export function mathModuleBytes(): Uint8Array {
  const base: FuncDef[] = [
    ...WASM_UNARY.map(unaryFunc),
    ...WASM_UNARY_GRAD.map(gradFunc),
    siluGateFunc(),
    siluGateGradFunc(),
    rowMaxFunc(),
    expSumFunc(),
    klDotFunc(),
    axpbyFunc(),
    convFunc(),
    convGradFunc(),
    ...WASM_BINARY.flatMap(binaryFuncs),
    sumSqFunc(),
    rmsScaleFunc(),
    rmsGradRowFunc(),
    dot3Func(),
    colSumFunc(),
    ...spreadFuncs(),
  ];
  const at = (name: string) => {
    const i = base.findIndex((f) => f.name === name);
    if (i < 0) throw new Error(`wasm-math: no function ${name}`);
    return i;
  };
  return moduleBytes([...base, klRowsFunc(at), klGradRowsFunc(at), softmaxRowsFunc(at)]);
}

// ---- the host side ------------------------------------------------------------------------------

type Ptr = number;
export interface WasmMath {
  memory: WasmMemory;
  /** a view of the whole memory, renewed by reserve() when it grows */
  f32: Float32Array;
  unary: Record<UnaryKind, (src: Ptr, dst: Ptr, bytes: number, alpha: number, beta: number) => void>;
  grad: Record<GradKind, (x: Ptr, gy: Ptr, gx: Ptr, bytes: number) => void>;
  siluGate: (y: Ptr, u: Ptr, out: Ptr, bytes: number) => void;
  siluGateGrad: (y: Ptr, u: Ptr, g: Ptr, gy: Ptr, gz: Ptr, bytes: number) => void;
  rowMax: (src: Ptr, bytes: number) => number;
  expSum: (src: Ptr, dst: Ptr, bytes: number, scale: number, shift: number, mult: number) => number;
  klDot: (t: Ptr, s: Ptr, bytes: number, inv: number, shift: number, sumAt: Ptr) => number;
  axpby: (x: Ptr, y: Ptr, out: Ptr, bytes: number, a: number, b: number) => void;
  conv: (x: Ptr, wt: Ptr, bias: Ptr, out: Ptr, T: number, rowBytes: number, K: number) => void;
  convGrad: (
    x: Ptr,
    wt: Ptr,
    gy: Ptr,
    gx: Ptr,
    gwt: Ptr,
    gb: Ptr,
    T: number,
    rowBytes: number,
    K: number,
  ) => void;
  binary: Record<BinaryKind, (a: Ptr, b: Ptr, out: Ptr, bytes: number) => void>;
  binaryScalar: Record<BinaryKind, (a: Ptr, s: number, out: Ptr, bytes: number) => void>;
  sumSq: (x: Ptr, bytes: number) => number;
  rmsScale: (x: Ptr, w: Ptr, out: Ptr, bytes: number, rs: number) => void;
  rmsGradRow: (x: Ptr, w: Ptr, gy: Ptr, gx: Ptr, gw: Ptr, bytes: number, rs: number, c: number) => void;
  dot3: (a: Ptr, b: Ptr, c: Ptr, bytes: number) => number;
  colSum: (src: Ptr, acc: Ptr, rows: number, rowBytes: number) => void;
  spread: (base: Ptr, rows: number, colBytes: number, pitchBytes: number, pad: number) => void;
  gather: (base: Ptr, rows: number, colBytes: number, pitchBytes: number) => void;
  klRows: (t: Ptr, s: Ptr, rows: number, pitch: number, inv: number, scratch: Ptr, stats: Ptr) => void;
  klGradRows: (t: Ptr, s: Ptr, g: Ptr, rows: number, pitch: number, inv: number, cs: Ptr) => void;
  softmaxRows: (src: Ptr, dst: Ptr, rows: number, pitch: number, stats: Ptr) => void;
  /** make the memory hold at least `floats` f32 (renews f32); returns the view */
  reserve(floats: number): Float32Array;
}

let instance: WasmMath | null | undefined;

/** The compiled kernels, or null where WebAssembly SIMD is unavailable or MOHAWK_WASM=off. */
export function wasmMath(): WasmMath | null {
  if (instance !== undefined) return instance;
  instance = null;
  if (process.env.MOHAWK_WASM === 'off') return instance;
  try {
    const { memory, exports: x } = instantiate(mathModuleBytes());
    const fn = <F>(name: string) => x[name] as F;
    const w: WasmMath = {
      memory,
      f32: new Float32Array(memory.buffer),
      unary: Object.fromEntries(WASM_UNARY.map((op) => [op, fn(`unary_${op}`)])) as WasmMath['unary'],
      grad: Object.fromEntries(WASM_UNARY_GRAD.map((op) => [op, fn(`grad_${op}`)])) as WasmMath['grad'],
      siluGate: fn('siluGate'),
      siluGateGrad: fn('siluGateGrad'),
      rowMax: fn('rowMax'),
      expSum: fn('expSum'),
      klDot: fn('klDot'),
      axpby: fn('axpby'),
      conv: fn('conv'),
      sumSq: fn('sumSq'),
      rmsScale: fn('rmsScale'),
      rmsGradRow: fn('rmsGradRow'),
      dot3: fn('dot3'),
      colSum: fn('colSum'),
      spread: fn('spread'),
      gather: fn('gather'),
      klRows: fn('klRows'),
      klGradRows: fn('klGradRows'),
      softmaxRows: fn('softmaxRows'),
      binary: Object.fromEntries(WASM_BINARY.map((op) => [op, fn(`binary_${op}`)])) as WasmMath['binary'],
      binaryScalar: Object.fromEntries(
        WASM_BINARY.map((op) => [op, fn(`binary_${op}_s`)]),
      ) as WasmMath['binaryScalar'],
      convGrad: fn('convGrad'),
      reserve(floats: number): Float32Array {
        const need = floats * 4;
        if (memory.buffer.byteLength < need) {
          memory.grow(Math.ceil((need - memory.buffer.byteLength) / PAGE));
          w.f32 = new Float32Array(memory.buffer);
        }
        return w.f32;
      },
    };
    instance = w;
  } catch {
    instance = null;
  }
  return instance;
}

/** n rounded up to a multiple of 4 (one f32x4) */
export const pad4 = (n: number): number => (n + 3) & ~3;
