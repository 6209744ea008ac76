// Parameter selection by name: freezing patterns and the weight-decay rule.
//
// A pattern is a regular expression written between slashes ("/mixer\.(in|out)_proj/", searched
// anywhere in the name) or a glob over dotted names: `*` matches within one segment, `**` across
// segments, `?` one character. A glob matches a parameter when it matches the whole name or a
// dotted prefix of it, so "model.layers.*.mlp" freezes every MLP parameter.

import { add, noGrad, scale, scope, sum, type Tensor } from '../tensor/index.js';

export type NamedParams = [string, Tensor][];

/** Anything that names its parameters: a list of pairs, a Map, or a Module. */
export type ParamsLike = NamedParams | Map<string, Tensor> | { namedParameters(): NamedParams };

export function namedParams(p: ParamsLike): NamedParams {
  if (Array.isArray(p)) return p;
  if (p instanceof Map) return [...p.entries()];
  return p.namedParameters();
}

function globToRegExp(glob: string): RegExp {
  let re = '';
  for (let i = 0; i < glob.length; i++) {
    const c = glob[i];
    if (c === '*' && glob[i + 1] === '*') {
      re += '.*';
      i++;
    } else if (c === '*') re += '[^.]*';
    else if (c === '?') re += '[^.]';
    else re += c.replace(/[.+^${}()|[\]\\]/g, '\\$&');
  }
  // the whole name, or a dotted prefix of it (a module path)
  return new RegExp(`^${re}(\\..*)?$`);
}

/** A predicate for one pattern (see the header for the syntax). */
export function compilePattern(pattern: string): (name: string) => boolean {
  if (pattern.length >= 2 && pattern.startsWith('/') && pattern.endsWith('/')) {
    let re: RegExp;
    try {
      re = new RegExp(pattern.slice(1, -1));
    } catch (e) {
      throw new Error(`pattern ${pattern}: not a valid regular expression (${(e as Error).message})`, {
        cause: e,
      });
    }
    return (name) => re.test(name);
  }
  const re = globToRegExp(pattern);
  return (name) => re.test(name);
}

/** True when any pattern matches. */
export function matchesAny(patterns: readonly string[]): (name: string) => boolean {
  const preds = patterns.map(compilePattern);
  return (name) => preds.some((p) => p(name));
}

/**
 * Decide which parameters train: those that require grad, match `trainable` (when given) and
 * match no `freeze` pattern. Sets requiresGrad accordingly; a pattern matching nothing is an
 * error (usually a typo). Returns the trainable ones.
 */
export function applyFreezing(
  params: NamedParams,
  opts: { freeze?: readonly string[]; trainable?: readonly string[] },
): NamedParams {
  const check = (kind: string, patterns: readonly string[]): void => {
    for (const pat of patterns) {
      const pred = compilePattern(pat);
      if (!params.some(([n]) => pred(n))) {
        const sample = params
          .slice(0, 3)
          .map(([n]) => n)
          .join(', ');
        throw new Error(`${kind} pattern "${pat}" matches no parameter (names look like: ${sample})`);
      }
    }
  };
  const freeze = opts.freeze ?? [];
  check('freeze', freeze);
  if (opts.trainable) check('trainable', opts.trainable);
  const frozen = matchesAny(freeze);
  const allowed = opts.trainable ? matchesAny(opts.trainable) : () => true;
  const out: NamedParams = [];
  for (const [name, t] of params) {
    t.requiresGrad = t.requiresGrad && allowed(name) && !frozen(name);
    if (t.requiresGrad) out.push([name, t]);
  }
  return out;
}

/**
 * The default weight-decay exclusion: norms, biases, the SSM's `D` and `z_bias`, and any other
 * vector or scalar parameter (decay is meant for matrices).
 */
export function defaultNoDecay(name: string, t: Tensor): boolean {
  return t.ndim < 2 || /(^|\.)(bias|D|z_bias)$/.test(name) || /norm|(^|\.)ln_/i.test(name);
}

/**
 * The name of the first parameter holding a NaN or an infinity, or null when all are finite:
 * sum(0 * p) is 0 exactly when every element is finite (NaN * 0 and inf * 0 are NaN), so the whole
 * check costs one pass per tensor and one host read.
 */
export function firstNonFinite(params: NamedParams): string | null {
  const zeroSum = (t: Tensor): Tensor => sum(scale(t, 0));
  const total = noGrad(() =>
    scope(() => {
      let acc: Tensor | null = null;
      for (const [, p] of params) {
        if (p.dtype === 'i32' || p.size === 0) continue;
        const z = zeroSum(p);
        acc = acc ? add(acc, z) : z;
      }
      return acc ? acc.item() : 0;
    }),
  );
  if (total === 0) return null;
  for (const [name, p] of params) {
    if (p.dtype === 'i32' || p.size === 0) continue;
    if (noGrad(() => scope(() => zeroSum(p).item())) !== 0) return name;
  }
  return null;
}
