// Reading Hugging Face config.json fields strictly: every error names the file and the field.

export type Json = Record<string, unknown>;

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

  /** transformers-5 `rope_parameters` or transformers-4 `rope_theta` / `partial_rotary_factor` / `rope_scaling` */
  rope(defaultTheta = 10000, defaultPartial = 1): { theta: number; partialRotaryFactor: number } {
    const rp = this.json.rope_parameters;
    if (rp !== undefined && rp !== null) {
      if (typeof rp !== 'object' || Array.isArray(rp)) this.fail('rope_parameters', 'must be an object');
      const p = rp as Json;
      const type = p.rope_type ?? p.type ?? 'default';
      if (type !== 'default')
        this.fail('rope_parameters.rope_type', `"${String(type)}" is not supported (only "default")`);
      // transformers 5 reads rope_parameters; a top-level copy (older writers) must agree with it
      for (const key of ['rope_theta', 'partial_rotary_factor']) {
        const top = this.json[key];
        if (top !== undefined && top !== null && p[key] !== undefined && p[key] !== null && top !== p[key])
          this.fail(
            key,
            `(${JSON.stringify(top)}) disagrees with rope_parameters.${key} (${JSON.stringify(p[key])})`,
          );
      }
      return {
        theta: this.num('rope_theta', this.num('rope_theta', defaultTheta), p, 'rope_parameters.'),
        partialRotaryFactor: this.num(
          'partial_rotary_factor',
          this.num('partial_rotary_factor', defaultPartial),
          p,
          'rope_parameters.',
        ),
      };
    }
    const scaling = this.json.rope_scaling;
    if (scaling !== undefined && scaling !== null) {
      const type = (scaling as Json).rope_type ?? (scaling as Json).type;
      if (type !== 'default') this.fail('rope_scaling', `type ${JSON.stringify(type)} is not supported`);
    }
    return {
      theta: this.num('rope_theta', defaultTheta),
      partialRotaryFactor: this.num('partial_rotary_factor', defaultPartial),
    };
  }
}
