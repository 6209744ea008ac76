// Module: a node in a tree of named parameters. Names are built from the registration path, so
// `model.layers.0.self_attn.q_proj.weight` is the checkpoint name and loading is a lookup.

import type { DType } from '../backends/backend.js';
import { cast, keep, noGrad, shapeStr, type Tensor } from '../tensor/index.js';

export class Module {
  private readonly ownParams = new Map<string, Tensor>();
  private readonly children = new Map<string, Module>();

  /** Register a parameter (requires grad, owned by the module, outside any memory scope). */
  param(name: string, t: Tensor, trainable = true): Tensor {
    keep(t);
    t.requiresGrad = trainable;
    this.ownParams.set(name, t);
    return t;
  }

  /** Register a child module under a name (use numbers as strings for lists). */
  child<M extends Module>(name: string, m: M): M {
    this.children.set(name, m);
    return m;
  }

  /** Every parameter with its full dotted name, in registration order. */
  namedParameters(prefix = ''): [string, Tensor][] {
    const out: [string, Tensor][] = [];
    for (const [n, t] of this.ownParams) {
      t.name = prefix + n;
      out.push([prefix + n, t]);
    }
    // (a loop, not push(...): a model of 1e5 layers has more parameters than a call has arguments)
    for (const [n, m] of this.children) for (const p of m.namedParameters(`${prefix}${n}.`)) out.push(p);
    return out;
  }

  parameters(): Tensor[] {
    return this.namedParameters().map(([, t]) => t);
  }

  /** The module registered at a dotted path (e.g. "layers.3.mixer"). */
  getModule(path: string): Module {
    return path.split('.').reduce<Module>((m, part) => {
      const next = m.children.get(part);
      if (!next) throw new Error(`module: no submodule ${path}`);
      return next;
    }, this);
  }

  /** Replace (or add) a child at a dotted path, e.g. to swap one layer's mixer. */
  setModule(path: string, replacement: Module): void {
    const parts = path.split('.');
    const last = parts.pop()!;
    const parent = parts.length ? this.getModule(parts.join('.')) : this;
    parent.children.set(last, replacement);
  }

  /**
   * Copy tensors into the parameters by name, converting dtype to each parameter's own.
   * Missing or unexpected names and shape mismatches throw, naming the tensor and `source`.
   */
  loadStateDict(tensors: Map<string, Tensor>, opts: { strict?: boolean; source?: string } = {}): void {
    const strict = opts.strict ?? true;
    const where = opts.source ? `${opts.source}: ` : '';
    const params = new Map(this.namedParameters());
    if (strict) {
      const missing = [...params.keys()].filter((n) => !tensors.has(n));
      if (missing.length) {
        throw new Error(
          `${where}missing tensor ${missing[0]}${missing.length > 1 ? ` (and ${missing.length - 1} more)` : ''}`,
        );
      }
      const extra = [...tensors.keys()].filter((n) => !params.has(n));
      if (extra.length) {
        throw new Error(
          `${where}unexpected tensor ${extra[0]}${extra.length > 1 ? ` (and ${extra.length - 1} more)` : ''}`,
        );
      }
    }
    noGrad(() => {
      for (const [name, p] of params) {
        const src = tensors.get(name);
        if (!src) continue;
        if (src.ndim !== p.ndim || src.shape.some((d, i) => d !== p.shape[i])) {
          throw new Error(
            `${where}tensor ${name} has shape ${shapeStr(src.shape)}, expected ${shapeStr(p.shape)}`,
          );
        }
        const converted = cast(src, p.dtype);
        p.backend.copyStrided(converted.buffer, 0, [1], p.buffer, 0, [1], [p.size], false);
        converted.dispose();
      }
    });
  }

  /** name -> parameter (the tensors themselves, not copies) */
  stateDict(): Map<string, Tensor> {
    return new Map(this.namedParameters());
  }

  /** Total number of parameter elements. */
  numParameters(): number {
    return this.parameters().reduce((n, t) => n + t.size, 0);
  }

  /** Free every parameter's buffer and gradient. */
  dispose(): void {
    for (const t of this.parameters()) {
      t.grad?.dispose();
      t.dispose();
    }
  }

  /** Set requiresGrad on every parameter whose name matches. */
  setTrainable(match: (name: string) => boolean, trainable: boolean): void {
    for (const [n, t] of this.namedParameters()) if (match(n)) t.requiresGrad = trainable;
  }

  zeroGrad(): void {
    for (const t of this.parameters()) {
      t.grad?.dispose();
      t.grad = null;
    }
  }

  /** parameters converted to a dtype, for saving */
  castedState(dtype: DType): Map<string, Tensor> {
    return noGrad(() => new Map(this.namedParameters().map(([n, t]) => [n, cast(t, dtype)])));
  }
}
