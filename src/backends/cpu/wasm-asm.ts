// A tiny WebAssembly assembler for the CPU backend's kernels (wasm-gemm.ts, wasm-math.ts): the
// module's binary layout, the encodings, and the instructions the kernels use, each emitter
// returning bytes. No build step, no .wasm file: modules are assembled when first used.

export type Code = number[];

export const I32 = 0x7f;
export const F32 = 0x7d;
export const F64 = 0x7c;
export const V128 = 0x7b;
export type ValType = typeof I32 | typeof F32 | typeof F64 | typeof V128;

export function uleb(n: number): number[] {
  const out: number[] = [];
  do {
    let byte = n & 0x7f;
    n >>>= 7;
    if (n !== 0) byte |= 0x80;
    out.push(byte);
  } while (n !== 0);
  return out;
}

export function sleb(n: number): number[] {
  const out: number[] = [];
  for (;;) {
    const byte = n & 0x7f;
    n >>= 7;
    if ((n === 0 && (byte & 0x40) === 0) || (n === -1 && (byte & 0x40) !== 0)) {
      out.push(byte);
      return out;
    }
    out.push(byte | 0x80);
  }
}

export const str = (s: string) => [...uleb(s.length), ...Buffer.from(s, 'utf8')];
export const section = (id: number, body: number[]) => [id, ...uleb(body.length), ...body];
export const vec = (items: number[][]) => [...uleb(items.length), ...items.flat()];

export interface FuncDef {
  name: string;
  params: ValType[];
  results: ValType[];
  /** local declarations after the params: runs of [count, type] */
  locals: [number, ValType][];
  /** the body, without the final `end` */
  code: Code;
}

/** A module importing env.memory and exporting each function under its name. */
export function moduleBytes(funcs: FuncDef[]): Uint8Array {
  const types = funcs.map((f) => [0x60, ...vec(f.params.map((t) => [t])), ...vec(f.results.map((t) => [t]))]);
  const bodies = funcs.map((f) => {
    const body = [...vec(f.locals.map(([n, t]) => [...uleb(n), t])), ...f.code, 0x0b];
    return [...uleb(body.length), ...body];
  });
  const bytes = [
    ...[0x00, 0x61, 0x73, 0x6d, 0x01, 0x00, 0x00, 0x00],
    ...section(1, vec(types)),
    ...section(2, vec([[...str('env'), ...str('memory'), 0x02, 0x00, ...uleb(1)]])),
    ...section(3, vec(funcs.map((_, i) => uleb(i)))),
    ...section(7, vec(funcs.map((f, i) => [...str(f.name), 0x00, ...uleb(i)]))),
    ...section(10, vec(bodies)),
  ];
  return Uint8Array.from(bytes);
}

// Node has WebAssembly; the project's TypeScript libs (ES2022, no DOM) do not declare it
export interface WasmMemory {
  readonly buffer: ArrayBuffer;
  grow(pages: number): number;
}
declare const WebAssembly: {
  Memory: new (d: { initial: number }) => WasmMemory;
  Module: new (bytes: Uint8Array) => object;
  Instance: new (m: object, imports: object) => { exports: Record<string, unknown> };
};

/** Instantiate a module over a fresh memory; throws where WebAssembly (SIMD) is unavailable. */
export function instantiate(bytes: Uint8Array): { memory: WasmMemory; exports: Record<string, unknown> } {
  const memory = new WebAssembly.Memory({ initial: 1 });
  const mod = new WebAssembly.Module(bytes);
  const inst = new WebAssembly.Instance(mod, { env: { memory } });
  return { memory, exports: inst.exports };
}

export const PAGE = 65536;
