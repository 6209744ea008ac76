// Reading Hugging Face config.json fields strictly: every error names the file and the field.

import { ROPE_TYPES, type RopeConfig, type RopeType } from '../nn/rope.js';

export type Json = Record<string, unknown>;

/** Upper bounds on config sizes: a config may not ask for more (no V8 abort, no hour-long zero fill). */
export const MAX = {
  vocab: 1 << 22,
  hidden: 1 << 16,
  intermediate: 1 << 20,
  layers: 1024,
  heads: 1024,
  headDim: 4096,
  /** a number only (rotary positions are computed, not stored) */
  positions: 1 << 24,
  /** learned position tables (GPT-2) hold one row per position */
  learnedPositions: 1 << 20,
  /** elements of the largest matrix */
  tensor: 2 ** 32,
};

/** the embedding and MLP matrices must each fit MAX.tensor elements */
export function checkTensorSizes(
  f: Fields,
  hidden: number,
  vocab: number,
  inner: number,
  hiddenKey = 'hidden_size',
): void {
  if (vocab * hidden > MAX.tensor)
    f.fail(
      'vocab_size',
      `(${vocab}) times ${hiddenKey} (${hidden}) is more than ${MAX.tensor} elements in one tensor`,
    );
  if (inner * hidden > MAX.tensor)
    f.fail(
      'intermediate_size',
      `(${inner}) times ${hiddenKey} (${hidden}) is more than ${MAX.tensor} elements in one tensor`,
    );
}

export class ConfigFieldError extends Error {}

export class Fields {
  constructor(
    readonly json: Json,
    readonly file: string,
  ) {}

  fail(field: string, msg: string): never {
    throw new ConfigFieldError(`${this.file}: ${field} ${msg}`);
  }

  has(key: string): boolean {
    return this.json[key] !== undefined && this.json[key] !== null;
  }

  int(key: string, fallback?: number, min = 0): number {
    const v = this.json[key];
    if (v === undefined || v === null) {
      if (fallback === undefined) this.fail(key, 'is required');
      return fallback;
    }
    if (typeof v !== 'number' || !Number.isInteger(v))
      this.fail(key, `must be an integer, got ${JSON.stringify(v)}`);
    if (v < min) this.fail(key, `must be at least ${min}, got ${v}`);
    return v;
  }

  num(key: string, fallback?: number, obj: Json = this.json, prefix = ''): number {
    const v = obj[key];
    if (v === undefined || v === null) {
      if (fallback === undefined) this.fail(prefix + key, 'is required');
      return fallback;
    }
    if (typeof v !== 'number' || !Number.isFinite(v))
      this.fail(prefix + key, `must be a number, got ${JSON.stringify(v)}`);
    return v;
  }

  bool(key: string, fallback: boolean): boolean {
    const v = this.json[key];
    if (v === undefined || v === null) return fallback;
    if (typeof v !== 'boolean') this.fail(key, `must be true or false, got ${JSON.stringify(v)}`);
    return v;
  }

  str(key: string, fallback?: string): string {
    const v = this.json[key];
    if (v === undefined || v === null) {
      if (fallback === undefined) this.fail(key, 'is required');
      return fallback;
    }
    if (typeof v !== 'string') this.fail(key, `must be a string, got ${JSON.stringify(v)}`);
    return v;
  }

  /** a token id, or the first of a list; null when absent */
  tokenId(key: string): number | null {
    const v = this.json[key];
    if (v === undefined || v === null) return null;
    const id = Array.isArray(v) ? v[0] : v;
    if (typeof id !== 'number' || !Number.isInteger(id))
      this.fail(key, `must be a token id, got ${JSON.stringify(v)}`);
    return id;
  }

  /** fail when the field is set to anything but one of the accepted values */
  only(key: string, accepted: unknown[], what = 'is not supported'): void {
    const v = this.json[key];
    if (v === undefined || v === null) return;
    if (!accepted.some((a) => a === v))
      this.fail(
        key,
        `${what} (got ${JSON.stringify(v)}; supported: ${accepted.map((a) => JSON.stringify(a)).join(', ')})`,
      );
  }

  /** a size from the config: an integer in [min, max] (max keeps absurd sizes from allocating) */
  size(key: string, fallback: number | undefined, min: number, max: number): number {
    const v = this.int(key, fallback, min);
    if (v > max) this.fail(key, `(${v}) is larger than mohawk accepts (at most ${max})`);
    return v;
  }

  /** a normalization epsilon: finite and not negative */
  eps(key: string, fallback: number): number {
    const v = this.num(key, fallback);
    if (v < 0) this.fail(key, `must not be negative, got ${v}`);
    return v;
  }

  /**
   * a token id (or the first of a list; every one of a list is checked) below `vocab`; null when
   * absent. `outside: 'drop'` turns an id outside the vocabulary into null instead of an error
   * (GPT-2 configs carry transformers' default 50256 whatever their vocabulary).
   */
  vocabTokenId(key: string, vocab: number, outside: 'error' | 'drop' = 'error'): number | null {
    const v = this.json[key];
    if (v === undefined || v === null) return null;
    const ids = Array.isArray(v) ? v : [v];
    for (const id of ids) {
      if (typeof id !== 'number' || !Number.isInteger(id))
        this.fail(key, `must be a token id, got ${JSON.stringify(v)}`);
      if (id < 0 || id >= vocab) {
        if (outside === 'drop' && id >= vocab) return null;
        this.fail(key, `(${id}) is outside the vocabulary (vocab_size ${vocab})`);
      }
    }
    return ids.length ? (ids[0] as number) : null;
  }

  /** transformers-5 `rope_parameters` or transformers-4 `rope_theta` / `partial_rotary_factor` / `rope_scaling` */
  rope(defaultTheta = 10000, defaultPartial = 1): { theta: number; partialRotaryFactor: number } {
    const r = this.ropeParameters(defaultTheta, defaultPartial);
    if (r.type !== 'default') this.fail(r.typeField, `"${r.type}" is not supported (only "default")`);
    return r;
  }

  /**
   * The rotary embedding's settings from either config style: transformers 5 keeps everything in
   * `rope_parameters`; transformers 4 has `rope_theta` and `partial_rotary_factor` at the top
   * and the scaling in `rope_scaling`. A config with both must not say two different things.
   */
  ropeParameters(
    defaultTheta = 10000,
    defaultPartial = 1,
  ): {
    type: string;
    typeField: string;
    theta: number;
    partialRotaryFactor: number;
    params: Json;
    where: string;
  } {
    const rp = this.json.rope_parameters;
    const rs = this.json.rope_scaling;
    if (rs !== undefined && rs !== null && (typeof rs !== 'object' || Array.isArray(rs)))
      this.fail('rope_scaling', 'must be an object');
    let out: {
      type: string;
      typeField: string;
      theta: number;
      partialRotaryFactor: number;
      params: Json;
      where: string;
    };
    if (rp !== undefined && rp !== null) {
      if (typeof rp !== 'object' || Array.isArray(rp)) this.fail('rope_parameters', 'must be an object');
      const p = rp as Json;
      if (['full_attention', 'sliding_attention'].some((k) => typeof p[k] === 'object'))
        this.fail('rope_parameters', 'per layer type is not supported (one setting for every layer)');
      const typeRaw = p.rope_type ?? p.type ?? 'default';
      // transformers 5 reads rope_parameters; a top-level copy (older writers) must agree with it
      for (const key of ['rope_theta', 'partial_rotary_factor']) {
        const top = this.json[key];
        if (top !== undefined && top !== null && p[key] !== undefined && p[key] !== null && top !== p[key])
          this.fail(
            key,
            `(${JSON.stringify(top)}) disagrees with rope_parameters.${key} (${JSON.stringify(p[key])})`,
          );
      }
      if (rs !== undefined && rs !== null) {
        // rope_scaling beside rope_parameters: accepted only when it says the same thing
        for (const [k, val] of Object.entries(rs as Json)) {
          const pk = k === 'type' ? 'rope_type' : k;
          const pv = pk === 'rope_type' ? typeRaw : p[pk];
          if (JSON.stringify(pv) !== JSON.stringify(val))
            this.fail(
              `rope_scaling.${k}`,
              `(${JSON.stringify(val)}) disagrees with rope_parameters.${pk} (${JSON.stringify(pv)}); keep one of them`,
            );
        }
      }
      out = {
        type: String(typeRaw),
        typeField: 'rope_parameters.rope_type',
        theta: this.num('rope_theta', this.num('rope_theta', defaultTheta), p, 'rope_parameters.'),
        partialRotaryFactor: this.num(
          'partial_rotary_factor',
          this.num('partial_rotary_factor', defaultPartial),
          p,
          'rope_parameters.',
        ),
        params: p,
        where: 'rope_parameters.',
      };
    } else {
      const sc = (rs ?? {}) as Json;
      out = {
        type: String(sc.rope_type ?? sc.type ?? 'default'),
        typeField: 'rope_scaling.rope_type',
        theta: this.num('rope_theta', defaultTheta),
        partialRotaryFactor: this.num('partial_rotary_factor', defaultPartial),
        params: sc,
        where: 'rope_scaling.',
      };
    }
    if (!(out.theta > 0))
      this.fail(
        out.where === 'rope_parameters.' && (rp as Json).rope_theta != null
          ? 'rope_parameters.rope_theta'
          : 'rope_theta',
        `must be positive, got ${out.theta}`,
      );
    if (!(out.partialRotaryFactor > 0 && out.partialRotaryFactor <= 1))
      this.fail('partial_rotary_factor', `must be in (0, 1], got ${out.partialRotaryFactor}`);
    return out;
  }

  /** The rotary embedding of a Llama-like family (every rope type nn/rope.ts implements). */
  ropeConfig(headDim: number, maxPositionEmbeddings: number, defaultTheta = 10000): RopeConfig {
    const r = this.ropeParameters(defaultTheta, 1);
    const type = (r.type === 'su' ? 'longrope' : r.type) as RopeType;
    if (!ROPE_TYPES.includes(type))
      this.fail(r.typeField, `"${r.type}" is not supported (supported: ${ROPE_TYPES.join(', ')})`);
    const rotaryDim = Math.floor(headDim * r.partialRotaryFactor);
    if (rotaryDim % 2 !== 0 || rotaryDim < 2)
      this.fail('partial_rotary_factor', `gives ${rotaryDim} rotary dimensions of ${headDim}; must be even`);
    const p = r.params;
    const w = r.where;
    const positive = (key: string, required: boolean): number | undefined => {
      if (p[key] === undefined || p[key] === null) {
        if (required) this.fail(w + key, `is required for rope type "${type}"`);
        return undefined;
      }
      const v = this.num(key, undefined, p, w);
      if (!(v > 0)) this.fail(w + key, `must be positive, got ${v}`);
      return v;
    };
    const c: RopeConfig = { type, theta: r.theta, rotaryDim, maxPositionEmbeddings };
    const topOriginal = this.json.original_max_position_embeddings;
    switch (type) {
      case 'default':
        break;
      case 'linear':
      case 'dynamic':
        c.factor = positive('factor', true);
        break;
      case 'llama3':
        c.factor = positive('factor', true);
        c.lowFreqFactor = positive('low_freq_factor', true);
        c.highFreqFactor = positive('high_freq_factor', true);
        c.originalMaxPositionEmbeddings = positive('original_max_position_embeddings', true);
        if (c.highFreqFactor! <= c.lowFreqFactor!)
          this.fail(
            w + 'high_freq_factor',
            `(${c.highFreqFactor}) must be larger than low_freq_factor (${c.lowFreqFactor})`,
          );
        break;
      case 'yarn':
        c.factor = positive('factor', true);
        c.attentionFactor = positive('attention_factor', false);
        c.betaFast = positive('beta_fast', false);
        c.betaSlow = positive('beta_slow', false);
        c.mscale = positive('mscale', false);
        c.mscaleAllDim = positive('mscale_all_dim', false);
        c.originalMaxPositionEmbeddings = positive('original_max_position_embeddings', false);
        if (p.truncate !== undefined && p.truncate !== null) {
          if (typeof p.truncate !== 'boolean') this.fail(w + 'truncate', 'must be true or false');
          c.truncate = p.truncate;
        }
        break;
      case 'longrope': {
        c.factor = positive('factor', false);
        c.attentionFactor = positive('attention_factor', false);
        c.originalMaxPositionEmbeddings =
          positive('original_max_position_embeddings', false) ??
          (topOriginal === undefined || topOriginal === null
            ? undefined
            : this.int('original_max_position_embeddings', undefined, 1));
        for (const key of ['short_factor', 'long_factor'] as const) {
          const v = p[key];
          if (
            !Array.isArray(v) ||
            v.length !== rotaryDim / 2 ||
            !v.every((x) => typeof x === 'number' && x > 0)
          )
            this.fail(w + key, `must be a list of ${rotaryDim / 2} positive numbers (rotary dimensions / 2)`);
          if (key === 'short_factor') c.shortFactor = v as number[];
          else c.longFactor = v as number[];
        }
        break;
      }
    }
    return c;
  }
}
