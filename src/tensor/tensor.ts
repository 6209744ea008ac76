// Tensor: shape, dtype, a device buffer owned by a backend, and the autograd bookkeeping.
// Memory scopes free intermediates deterministically; reverse-mode autograd walks the graph
// recorded by the ops in ops.ts.

import {
  denseStrides,
  type Backend,
  type DeviceBuffer,
  type DType,
  type HostArray,
} from '../backends/backend.js';
import { bf16ToF32, f16ToF32 } from '../backends/dtype.js';
import { getBackend } from './device.js';

/** A device buffer shared by a tensor and its reshaped views; freed when the last one goes. */
class Storage {
  refs = 1;
  constructor(
    readonly backend: Backend,
    readonly buffer: DeviceBuffer,
  ) {}
}

export interface GradNode {
  op: string;
  inputs: Tensor[];
  /** given the gradient of the output, the gradients of the inputs (null where none) */
  backward: (g: Tensor) => (Tensor | null)[];
  /**
   * Optional, for nodes that read part of their first input (slices, or ops that read a column
   * window of it in place): write that input's gradient into that part of `into`, a full-size
   * gradient buffer owned by autograd, adding to what is there when `accumulate`. Several such
   * nodes of one tensor then fill one buffer instead of each allocating a full-size gradient.
   * A node with one input: autograd calls only this, never `backward` (which may still compute
   * the gradient, for other callers). With more inputs: this runs first, then `backward`, which
   * returns null for the first input and the gradients of the others.
   */
  accumulateInto?: (g: Tensor, into: Tensor, accumulate: boolean) => void;
  /** the part accumulateInto covers, [start, end) on one axis: a first write there needs no zeros */
  region?: Region;
}

export interface Region {
  axis: number;
  start: number;
  end: number;
}

let nextId = 1;
let gradEnabled = true;

export function isGradEnabled(): boolean {
  return gradEnabled;
}

/** Run fn without recording the graph. */
export function noGrad<T>(fn: () => T): T {
  const prev = gradEnabled;
  gradEnabled = false;
  try {
    return fn();
  } finally {
    gradEnabled = prev;
  }
}

// ---- scopes ---------------------------------------------------------------------------------

const scopes: Set<Tensor>[] = [];

function track(t: Tensor): void {
  const top = scopes[scopes.length - 1];
  if (top) top.add(t);
}

/** Remove t from every scope: the caller owns it now and must dispose it. */
export function keep<T extends Tensor>(t: T): T {
  for (const s of scopes) s.delete(t);
  return t;
}

function collectTensors(value: unknown, out: Set<Tensor>, depth = 0): void {
  if (value instanceof Tensor) out.add(value);
  else if (depth < 4 && Array.isArray(value)) for (const v of value) collectTensors(v, out, depth + 1);
  else if (depth < 4 && value instanceof Map)
    for (const v of value.values()) collectTensors(v, out, depth + 1);
  else if (
    depth < 4 &&
    value &&
    typeof value === 'object' &&
    Object.getPrototypeOf(value) === Object.prototype
  ) {
    for (const v of Object.values(value)) collectTensors(v, out, depth + 1);
  }
}

/**
 * Run fn in a memory scope: every tensor created inside is disposed when it returns, except
 * those it returns (found in arrays, Maps and plain objects), which move to the enclosing scope.
 */
export function scope<T>(fn: () => T): T {
  return scopeWith(fn, (t) => t.dispose());
}

/**
 * A memory scope for a forward pass that records a graph (one block of a model): of the tensors
 * created inside and not returned, those a recorded backward reads (see `record`'s `saves`) move
 * to the enclosing scope, and all others are released at once: their buffers are freed while
 * their graph nodes stay, so backward still walks through them. Peak memory then holds what
 * backward needs instead of every intermediate of the forward pass.
 */
export function graphScope<T>(fn: () => T): T {
  return scopeWith(fn, (t) => {
    if (t.saved) track(t);
    else t.release();
  });
}

function scopeWith<T>(fn: () => T, leave: (t: Tensor) => void): T {
  const mine = new Set<Tensor>();
  scopes.push(mine);
  let result: T;
  try {
    result = fn();
    if (result instanceof Promise) throw new Error('scope: fn must be synchronous');
  } catch (e) {
    scopes.pop();
    for (const t of mine) t.dispose();
    throw e;
  }
  scopes.pop();
  const kept = new Set<Tensor>();
  collectTensors(result, kept);
  for (const t of mine) {
    if (kept.has(t)) track(t);
    else leave(t);
  }
  return result;
}

// ---- tensor ---------------------------------------------------------------------------------

export function sizeOf(shape: readonly number[]): number {
  let n = 1;
  for (const s of shape) n *= s;
  return n;
}

/** Row-major strides of a shape (the backend layer's denseStrides). */
export const stridesOf = denseStrides;

export function shapeStr(shape: readonly number[]): string {
  return `[${shape.join(', ')}]`;
}

export class Tensor {
  readonly id = nextId++;
  readonly shape: readonly number[];
  readonly dtype: DType;
  private storage: Storage | null;
  private readonly home: Backend;
  requiresGrad: boolean;
  grad: Tensor | null = null;
  /**
   * .grad's values stand for zeros without having been written (a training step's gradient
   * buffers, kept at fixed addresses for CUDA graphs): the next gradient a backward delivers is
   * copied over them instead of added to them. Whoever sets it zero-fills the .grad of a leaf
   * that got no gradient.
   */
  gradUnwritten = false;
  node: GradNode | null = null;
  /** a recorded backward reads this tensor's values (set by `record`; see `graphScope`) */
  saved = false;
  /** the output of an op (set by `record`, with or without gradients), not a leaf or a buffer */
  derived = false;
  /** the parameter name, for error messages and checkpoints */
  name: string | undefined;

  /** Wrap a buffer already filled by a backend (used by ops; see `empty` to allocate). */
  constructor(
    backend: Backend,
    buffer: DeviceBuffer,
    shape: readonly number[],
    dtype: DType,
    storage?: Storage,
  ) {
    for (const s of shape) {
      if (!Number.isInteger(s) || s < 0) throw new Error(`tensor: bad shape ${shapeStr(shape)}`);
    }
    if (!storage && buffer.length !== sizeOf(shape)) {
      throw new Error(`tensor: buffer of ${buffer.length} elements for shape ${shapeStr(shape)}`);
    }
    this.shape = Object.freeze([...shape]);
    this.dtype = dtype;
    this.storage = storage ?? new Storage(backend, buffer);
    this.home = backend;
    this.requiresGrad = false;
    track(this);
  }

  get size(): number {
    return sizeOf(this.shape);
  }

  get ndim(): number {
    return this.shape.length;
  }

  get disposed(): boolean {
    return this.storage === null;
  }

  /** The backend the tensor lives on (known after dispose, for shapes of gradients). */
  get backend(): Backend {
    return this.home;
  }

  /** The device buffer, for ops and backends only. */
  get buffer(): DeviceBuffer {
    return this.live().buffer;
  }

  private live(): Storage {
    if (!this.storage)
      throw new Error(`tensor${this.name ? ` ${this.name}` : ''} ${shapeStr(this.shape)} used after dispose`);
    return this.storage;
  }

  /** true when no other tensor (view) shares this one's buffer */
  get exclusive(): boolean {
    return this.storage !== null && this.storage.refs === 1;
  }

  /** A tensor of another shape over the same buffer (no copy, no graph). */
  view(shape: readonly number[]): Tensor {
    const st = this.live();
    if (sizeOf(shape) !== this.size) {
      throw new Error(`reshape: cannot view ${shapeStr(this.shape)} as ${shapeStr(shape)}`);
    }
    st.refs++;
    return new Tensor(st.backend, st.buffer, shape, this.dtype, st);
  }

  /** Free the buffer (once the last view is gone). Safe to call twice. */
  dispose(): void {
    this.release();
    this.node = null;
  }

  /**
   * Free the buffer but keep the graph node: backward walks through this tensor without reading
   * it (see `graphScope`). Reading it afterwards throws as after dispose.
   */
  release(): void {
    const st = this.storage;
    if (!st) return;
    this.storage = null;
    if (--st.refs === 0) st.backend.free(st.buffer);
  }

  /** The same values cut from the graph. */
  detach(): Tensor {
    return this.view(this.shape);
  }

  /** Copy the values to the host: the explicit, visible device read. */
  read(): HostArray {
    const st = this.live();
    return st.backend.read(st.buffer);
  }

  /** Values as numbers on the host (bf16/f16 widened to Float32Array). */
  toArray(): Float32Array | Float64Array | Int32Array {
    const raw = this.read();
    if (this.dtype === 'bf16' || this.dtype === 'f16') {
      const conv = this.dtype === 'bf16' ? bf16ToF32 : f16ToF32;
      const out = new Float32Array(raw.length);
      for (let i = 0; i < raw.length; i++) out[i] = conv(raw[i]);
      return out;
    }
    return raw as Float32Array | Float64Array | Int32Array;
  }

  /** The single value of a one-element tensor, read to the host. */
  item(): number {
    if (this.size !== 1) throw new Error(`item: tensor has shape ${shapeStr(this.shape)}, not one element`);
    return this.toArray()[0];
  }

  /**
   * Reverse-mode autograd from this scalar (or from `grad` of the same shape). With `freeGraph`,
   * every intermediate of the graph (not leaves, not this tensor) is disposed as soon as its own
   * backward has run, since nothing later in the backward pass reads it: peak memory falls to
   * what training needs. Do not read intermediates after such a backward.
   */
  backward(grad?: Tensor, opts: { freeGraph?: boolean } = {}): void {
    runBackward(this, grad, opts.freeGraph ?? false);
  }

  toString(): string {
    return `Tensor(${shapeStr(this.shape)}, ${this.dtype}${this.name ? `, ${this.name}` : ''})`;
  }
}

// ---- creation -------------------------------------------------------------------------------

export function empty(
  shape: readonly number[],
  dtype: DType = 'f32',
  backend: Backend = getBackend(),
): Tensor {
  return new Tensor(backend, backend.alloc(dtype, sizeOf(shape)), shape, dtype);
}

export function full(
  shape: readonly number[],
  value: number,
  dtype: DType = 'f32',
  backend?: Backend,
): Tensor {
  const t = empty(shape, dtype, backend);
  t.backend.fill(t.buffer, value);
  return t;
}

export function zeros(shape: readonly number[], dtype: DType = 'f32', backend?: Backend): Tensor {
  return full(shape, 0, dtype, backend);
}

export function ones(shape: readonly number[], dtype: DType = 'f32', backend?: Backend): Tensor {
  return full(shape, 1, dtype, backend);
}

/** A tensor holding host data (numbers are converted to the dtype's array type). */
export function tensor(
  data: ArrayLike<number>,
  shape: readonly number[] = [data.length],
  dtype: DType = 'f32',
  backend?: Backend,
): Tensor {
  if (data.length !== sizeOf(shape)) {
    throw new Error(`tensor: ${data.length} values for shape ${shapeStr(shape)}`);
  }
  const t = empty(shape, dtype, backend);
  let host: HostArray;
  switch (dtype) {
    case 'f32':
      host = data instanceof Float32Array ? data : Float32Array.from(data);
      break;
    case 'f64':
      host = data instanceof Float64Array ? data : Float64Array.from(data);
      break;
    case 'i32':
      host = data instanceof Int32Array ? data : Int32Array.from(data);
      break;
    default:
      host = data instanceof Uint16Array ? data : Uint16Array.from(data);
  }
  t.backend.write(t.buffer, host);
  return t;
}

/** A scalar tensor. */
export function scalar(value: number, dtype: DType = 'f32', backend?: Backend): Tensor {
  return full([], value, dtype, backend);
}

// ---- autograd -------------------------------------------------------------------------------

const gradReadyHooks: ((leaf: Tensor) => void)[] = [];

/** whether a gradient-ready hook listens (then every gradient reaches its leaf through backward) */
export function gradHooksActive(): boolean {
  return gradReadyHooks.length > 0;
}

/**
 * Run fn with `hook` called for every leaf (a tensor that needs a gradient and has no node) as
 * soon as its .grad is final for a backward run inside fn: after its last contribution in that
 * backward, once per leaf and backward. Data parallelism uses it to send gradients while the
 * backward pass goes on (train/distributed.ts). The hook runs with recording off.
 */
export function withGradReadyHook<T>(hook: ((leaf: Tensor) => void) | null, fn: () => T): T {
  if (!hook) return fn();
  gradReadyHooks.push(hook);
  try {
    return fn();
  } finally {
    gradReadyHooks.splice(gradReadyHooks.lastIndexOf(hook), 1);
  }
}

function accumulateInto(target: Tensor, g: Tensor): void {
  target.backend.copyStrided(g.buffer, 0, [1], target.buffer, 0, [1], [g.size], true);
}

/** the running backward pass's pendingGrad, null outside one */
let pendingGradOf: ((t: Tensor) => Tensor | null) | null = null;

/**
 * Inside a backward closure: the f32 gradient that autograd already holds for `t` (another
 * consumer's part came first), made this pass's own so the closure may add its part into it in
 * place (and then return null for t); null when there is none yet, or it is not f32 of t's size.
 * Lets a product write an input gradient with beta = 1 instead of a fresh buffer that autograd
 * then adds with a pass of its own.
 */
export function pendingGrad(t: Tensor): Tensor | null {
  return pendingGradOf ? pendingGradOf(t) : null;
}

function runBackward(root: Tensor, seed: Tensor | undefined, freeGraph: boolean): void {
  const outer = pendingGradOf;
  try {
    runBackwardInner(root, seed, freeGraph);
  } finally {
    pendingGradOf = outer;
  }
}

function runBackwardInner(root: Tensor, seed: Tensor | undefined, freeGraph: boolean): void {
  if (!seed && root.size !== 1) {
    throw new Error(
      `backward: output has shape ${shapeStr(root.shape)}; give a gradient or reduce to a scalar`,
    );
  }
  if (seed && sizeOf(seed.shape) !== root.size) {
    throw new Error(
      `backward: gradient shape ${shapeStr(seed.shape)} does not match ${shapeStr(root.shape)}`,
    );
  }
  // topological order of the tensors that lead to root through recorded nodes
  const order: Tensor[] = [];
  const visited = new Set<Tensor>();
  const stack: [Tensor, number][] = [[root, 0]];
  visited.add(root);
  while (stack.length) {
    const top = stack[stack.length - 1];
    const [t, i] = top;
    const inputs = t.node?.inputs ?? [];
    if (i < inputs.length) {
      top[1]++;
      const inp = inputs[i];
      if (inp.requiresGrad && !visited.has(inp)) {
        visited.add(inp);
        stack.push([inp, 0]);
      }
    } else {
      order.push(t);
      stack.pop();
    }
  }
  const grads = new Map<Tensor, Tensor>();
  // gradients allocated here and shared with nobody: later contributions add into them in place
  const owned = new Set<Tensor>();
  // owned gradients written only on some intervals of one axis so far (slices); the rest of the
  // buffer is garbage until `complete` zero-fills it
  const partial = new Map<Tensor, { axis: number; done: [number, number][] }>();
  const zeroOf = new Map<DType, Tensor>();
  const complete = (acc: Tensor): void => {
    const p = partial.get(acc);
    if (!p) return;
    partial.delete(acc);
    let zero = zeroOf.get(acc.dtype);
    if (!zero) zeroOf.set(acc.dtype, (zero = keep(zeros([1], acc.dtype, acc.backend))));
    const st = denseStrides(acc.shape);
    const gaps: [number, number][] = [];
    let at = 0;
    for (const [s, e] of [...p.done].sort((x, y) => x[0] - y[0])) {
      if (s > at) gaps.push([at, s]);
      at = Math.max(at, e);
    }
    if (at < acc.shape[p.axis]) gaps.push([at, acc.shape[p.axis]]);
    for (const [s, e] of gaps) {
      const shape = [...acc.shape];
      shape[p.axis] = e - s;
      const none = shape.map(() => 0);
      acc.backend.copyStrided(zero.buffer, 0, none, acc.buffer, s * st[p.axis], st, shape, false);
    }
  };
  const ownedGrad = (inp: Tensor, like: Tensor, region?: Region): Tensor => {
    const prev = grads.get(inp);
    if (prev && owned.has(prev)) return prev;
    if (prev && prev.exclusive && prev.dtype === like.dtype && prev.backend === like.backend) {
      // a gradient no other tensor shares (a backward's fresh result, or a view of an upstream
      // gradient that is gone): add into it in place instead of copying it first
      owned.add(prev);
      return prev;
    }
    const acc = keep(empty(inp.shape, like.dtype, like.backend));
    if (prev) {
      acc.backend.copyStrided(prev.buffer, 0, [1], acc.buffer, 0, [1], [acc.size], false);
      prev.dispose();
    } else if (region) {
      partial.set(acc, { axis: region.axis, done: [] });
    } else {
      acc.backend.fill(acc.buffer, 0);
    }
    grads.set(inp, acc);
    owned.add(acc);
    return acc;
  };
  /** write a slice's gradient: a plain copy into a part not written yet, else an addition */
  const intoRegion = (node: GradNode, g: Tensor): void => {
    // a slice's gradient has its input's dtype; an op reading a window of its first input may
    // have an output of another dtype (16 bits), while that input's gradient keeps the input's
    const acc = ownedGrad(node.inputs[0], node.inputs.length > 1 ? node.inputs[0] : g, node.region);
    const p = partial.get(acc);
    const r = node.region;
    if (p && r && r.axis === p.axis && p.done.every(([s, e]) => r.end <= s || r.start >= e)) {
      p.done.push([r.start, r.end]);
      node.accumulateInto!(g, acc, false);
      return;
    }
    complete(acc);
    node.accumulateInto!(g, acc, true);
  };
  // the tensors whose gradient the running node's backward took through pendingGrad: it must
  // return null for them (its part is already added)
  const handedOut = new Set<Tensor>();
  pendingGradOf = (t: Tensor): Tensor | null => {
    const prev = grads.get(t);
    if (!prev || prev.dtype !== 'f32' || prev.size !== t.size || prev.backend !== t.backend) return null;
    const acc = ownedGrad(t, prev);
    complete(acc);
    handedOut.add(t);
    return acc;
  };
  noGrad(() => {
    const start = seed ? seed.view(root.shape) : full(root.shape, 1, root.dtype, root.backend);
    grads.set(root, start);
    for (let idx = order.length - 1; idx >= 0; idx--) {
      const t = order[idx];
      const g = grads.get(t);
      if (!g) continue;
      grads.delete(t);
      owned.delete(g);
      complete(g);
      const node = t.node;
      if (node?.accumulateInto && node.inputs.length === 1) {
        if (node.inputs[0].requiresGrad) intoRegion(node, g);
        if (freeGraph && t !== root) t.dispose();
      } else if (node) {
        const watermark = nextId;
        // a windowed op writes its first input's gradient in place, then the others as usual
        if (node.accumulateInto && node.inputs[0].requiresGrad) intoRegion(node, g);
        // temporaries of the backward are freed with it; the returned gradients move out
        handedOut.clear();
        const inGrads = scope(() => node.backward(g));
        for (const [k, inp] of node.inputs.entries())
          if (inGrads[k] && handedOut.has(inp))
            throw new Error(
              `backward of ${node.op}: a gradient for input ${k}, whose part it already added through pendingGrad`,
            );
        const fresh = new Set<Tensor>();
        node.inputs.forEach((inp, k) => {
          const gi = inGrads[k];
          if (!gi) return;
          if (!inp.requiresGrad) {
            // computed but not needed: freed like the others
            if (gi.id >= watermark && gi !== g) fresh.add(gi);
            return;
          }
          if (gi.size !== inp.size) {
            throw new Error(
              `backward of ${node.op}: gradient ${shapeStr(gi.shape)} for input ${shapeStr(inp.shape)}`,
            );
          }
          if (gi.id >= watermark || gi === g) fresh.add(gi);
          // entries may share buffers (views of one gradient): only owned ones are added into
          const prev = grads.get(inp);
          if (prev) {
            const acc = ownedGrad(inp, prev);
            complete(acc);
            const ones = [1];
            acc.backend.binary('add', acc.buffer, ones, gi.buffer, ones, acc.buffer, [acc.size]);
          } else {
            grads.set(inp, keep(gi.view(inp.shape)));
          }
        });
        for (const f of fresh) f.dispose();
        // every consumer of t ran its backward before t (reverse topological order)
        if (freeGraph && t !== root) t.dispose();
      } else if (t.requiresGrad) {
        if (!t.grad) t.gradUnwritten = false;
        if (!t.grad && g.dtype === t.dtype && g.exclusive) {
          // the first gradient of a leaf, held by nothing else: it becomes the leaf's .grad
          t.grad = keep(g.view(t.shape));
        } else if (t.grad && t.gradUnwritten && g.dtype === t.grad.dtype && g.size === t.grad.size) {
          // the first gradient into a buffer that stands for zeros: a copy, no fill and add
          t.grad.backend.copyStrided(g.buffer, 0, [1], t.grad.buffer, 0, [1], [g.size], false);
          t.gradUnwritten = false;
        } else {
          if (!t.grad) t.grad = keep(zeros(t.shape, t.dtype, t.backend));
          else if (t.gradUnwritten) t.grad.backend.fill(t.grad.buffer, 0);
          t.gradUnwritten = false;
          accumulateInto(t.grad, g);
        }
        // reverse topological order: every consumer of the leaf has added its part by now
        for (const h of gradReadyHooks) h(t);
      }
      g.dispose();
    }
  });
  for (const g of grads.values()) g.dispose();
  for (const z of zeroOf.values()) z.dispose();
}

/**
 * Record a node on `out` when any input needs a gradient and recording is on. `saves` lists
 * every tensor whose values `backward` reads (inputs, the output, or buffers the op made for
 * it); `graphScope` keeps those and frees the rest.
 */
export function record(
  out: Tensor,
  op: string,
  inputs: Tensor[],
  saves: Tensor[],
  backward: GradNode['backward'],
  into?: { accumulateInto: NonNullable<GradNode['accumulateInto']>; region: Region },
): Tensor {
  out.derived = true;
  if (gradEnabled && inputs.some((t) => t.requiresGrad)) {
    out.requiresGrad = true;
    out.node = into ? { op, inputs, backward, ...into } : { op, inputs, backward };
    for (const t of saves) t.saved = true;
  }
  return out;
}
