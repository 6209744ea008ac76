// ZeRO-1 (Rajbhandari et al. 2020): AdamW with its moments sharded across the ranks of a data
// parallel job. The trained parameters, in order, are grouped into buckets of whole parameters
// (about 25 MiB each); a bucket of E elements is padded to W * S (S = ceil(E / W)) and rank r
// owns its elements [r S, (r + 1) S), so each rank holds at most one piece of each parameter.
// A step, bucket by bucket where it moves data:
//
//   reduce-scatter   every rank's full gradient (N) -> the summed gradient of its shard (S)
//   norm             sum of squares of the shard, all-reduced (the global norm, for clipping)
//   update           AdamW on the shard's pieces of each parameter, with their own moments
//   all-gather       every rank's updated shard -> the full parameters on every rank
//
// Moments are 8 bytes per parameter in one process and 8 / W here. Parameters stay f32 and
// replicated: they are the master weights (bf16 exists only as the autocast copies the matmuls
// read), so sharding them too would be ZeRO-3. Each bucket's full gradients are freed as soon as
// its reduce-scatter has read them; the temporaries are a bucket, not the model.
//
// Checkpoints: each rank writes its pieces (`optimizer-shard-RRRRR-of-WWWWW.safetensors`, tensors
// NAME.exp_avg / NAME.exp_avg_sq over [start, end) of NAME, ranges and step counts in metadata);
// readOptimizerState reads those or an unsharded optimizer.safetensors by element range, so a
// run resumes at any world size, sharded or not.

import fs from 'node:fs';
import path from 'node:path';
import type { Collective } from '../backends/collective.js';
import { entryValues, readSafetensors, writeSafetensors, type SafeFile } from '../io/safetensors.js';
import {
  adamwStep,
  assign,
  concat,
  keep,
  noGrad,
  reshape,
  scale,
  scope,
  slice,
  square,
  sum,
  tensor,
  writeSlice,
  zeros,
  type Tensor,
} from '../tensor/index.js';
import { checkAdamWConfig, type AdamWConfig } from './optimizer.js';
import { defaultNoDecay, type NamedParams } from './params.js';

export const OPTIMIZER_SHARD_RE = /^optimizer-shard-(\d{5})-of-(\d{5})\.safetensors$/;

export function optimizerShardName(rank: number, world: number): string {
  return `optimizer-shard-${String(rank).padStart(5, '0')}-of-${String(world).padStart(5, '0')}.safetensors`;
}

/** This rank's piece [start, end) of one parameter, at `shardOffset` in the local shard. */
interface Piece {
  index: number;
  name: string;
  param: Tensor;
  start: number;
  end: number;
  shardOffset: number;
  m: Tensor;
  v: Tensor;
  decay: boolean;
  step: number;
}

/** The element range [rank S, (rank + 1) S) of a flat vector of `total` elements over `world` ranks. */
export function shardRange(
  total: number,
  rank: number,
  world: number,
): { size: number; begin: number; end: number } {
  const size = Math.ceil(total / world);
  return { size, begin: rank * size, end: (rank + 1) * size };
}

/**
 * Consecutive parameters grouped into buckets of about `limit` elements (a larger parameter is
 * a bucket alone): [first, end) parameter indices and the bucket's element count.
 */
export function paramBuckets(
  sizes: number[],
  limit: number,
): { first: number; end: number; elems: number }[] {
  const out: { first: number; end: number; elems: number }[] = [];
  let first = 0;
  let elems = 0;
  sizes.forEach((n, i) => {
    if (elems > 0 && elems + n > limit) {
      out.push({ first, end: i, elems });
      first = i;
      elems = 0;
    }
    elems += n;
  });
  if (elems > 0 || first < sizes.length) out.push({ first, end: sizes.length, elems });
  return out;
}

/** One bucket: parameters [first, end), E elements padded to W x S; this rank's S at shardOffset. */
interface Bucket {
  first: number;
  end: number;
  elems: number;
  size: number;
  shardOffset: number;
}

export class ShardedAdamW {
  readonly beta1: number;
  readonly beta2: number;
  readonly eps: number;
  readonly weightDecay: number;
  /** elements of all trained parameters (N) and of this rank's shard (the sum of S over buckets) */
  readonly total: number;
  readonly shardSize: number;
  /** each parameter's offset within its bucket */
  private readonly offsets: number[];
  private readonly buckets: Bucket[];
  private readonly pieces: Piece[];
  private gradShard: Tensor | null = null;

  /**
   * `bucketBytes` (default 25 MiB of f32): the reduce-scatter and all-gather run per bucket of
   * whole parameters, each split W ways, so their temporaries are a bucket, not the model.
   */
  constructor(
    readonly params: NamedParams,
    readonly config: AdamWConfig,
    readonly collective: Collective,
    bucketBytes = 25 << 20,
  ) {
    checkAdamWConfig(config);
    this.beta1 = config.beta1 ?? 0.9;
    this.beta2 = config.beta2 ?? 0.999;
    this.eps = config.eps ?? 1e-8;
    this.weightDecay = config.weightDecay ?? 0.01;
    const noDecay = config.noDecay ?? defaultNoDecay;
    for (const [name, p] of params)
      if (p.dtype !== 'f32')
        throw new Error(`optimizer: parameter ${name} is ${p.dtype}; AdamW keeps f32 weights`);
    const W = collective.worldSize;
    const r = collective.rank;
    this.total = params.reduce((a, [, p]) => a + p.size, 0);
    this.offsets = new Array<number>(params.length);
    this.buckets = [];
    this.pieces = [];
    let shardOffset = 0;
    const limit = Math.max(1, Math.floor(bucketBytes / 4));
    for (const b of paramBuckets(
      params.map(([, p]) => p.size),
      limit,
    )) {
      const { size, begin, end } = shardRange(b.elems, r, W);
      this.buckets.push({ ...b, size, shardOffset });
      let off = 0;
      for (let index = b.first; index < b.end; index++) {
        const [name, p] = params[index];
        this.offsets[index] = off;
        const lo = Math.max(begin, off);
        const hi = Math.min(end, off + p.size);
        if (lo < hi)
          this.pieces.push({
            index,
            name,
            param: p,
            start: lo - off,
            end: hi - off,
            shardOffset: shardOffset + lo - begin,
            m: keep(zeros([hi - lo], 'f32', p.backend)),
            v: keep(zeros([hi - lo], 'f32', p.backend)),
            decay: !noDecay(name, p),
            step: 0,
          });
        off += p.size;
      }
      shardOffset += size;
    }
    this.shardSize = shardOffset;
  }

  /** elements of moments this rank holds */
  get localElements(): number {
    return this.pieces.reduce((a, s) => a + (s.end - s.start), 0);
  }

  /**
   * Reduce-scatter the full gradients (p.grad; zeros where a rank has none), bucket by bucket,
   * into this rank's shard of the summed gradient, freeing each bucket's full gradients as it
   * goes. Returns the global sum of squares.
   */
  reduceGrads(): number {
    const c = this.collective;
    const backend = this.params[0][1].backend;
    this.dropGradShard();
    const shard = keep(zeros([this.shardSize], 'f32', backend));
    this.gradShard = shard;
    for (const b of this.buckets) {
      const ps = this.params.slice(b.first, b.end).map(([, p]) => p);
      noGrad(() =>
        scope(() => {
          const parts = ps.map((p) => (p.grad ? reshape(p.grad, [p.size]) : zeros([p.size], 'f32', backend)));
          const pad = b.size * c.worldSize - b.elems;
          if (pad > 0) parts.push(zeros([pad], 'f32', backend));
          const flat = parts.length === 1 ? parts[0] : concat(parts, 0);
          const out = zeros([b.size], 'f32', backend);
          c.reduceScatter(flat.buffer, out.buffer, 'sum');
          writeSlice(shard, out, 0, b.shardOffset);
        }),
      );
      for (const p of ps) {
        p.grad?.dispose();
        p.grad = null;
      }
    }
    return noGrad(() =>
      scope(() => {
        const s = reshape(sum(square(shard)), [1]);
        c.allReduce(s.buffer, 'sum');
        return s.item();
      }),
    );
  }

  /** Multiply the gradient shard by coef (clipping). */
  scaleGrads(coef: number): void {
    if (!this.gradShard) return;
    const g = this.gradShard;
    this.gradShard = noGrad(() => keep(scale(g, coef)));
    g.dispose();
  }

  /**
   * One AdamW update of this rank's pieces at learning rate lr, then the all-gather, bucket by
   * bucket, of every rank's shard into the parameters. `hasGrad[i]`: some rank had a gradient
   * for parameter i (the others are skipped, as the unsharded optimizer skips a parameter
   * without a grad).
   */
  step(lr: number, hasGrad: boolean[]): void {
    const c = this.collective;
    const g = this.gradShard;
    if (!g) throw new Error('optimizer: step before reduceGrads');
    noGrad(() =>
      scope(() => {
        const shard = zeros([this.shardSize], 'f32', g.backend);
        for (const s of this.pieces) {
          const p = slice(reshape(s.param, [s.param.size]), 0, s.start, s.end);
          if (hasGrad[s.index]) {
            s.step++;
            const gs = slice(g, 0, s.shardOffset, s.shardOffset + (s.end - s.start));
            adamwStep(p, gs, s.m, s.v, {
              lr,
              beta1: this.beta1,
              beta2: this.beta2,
              eps: this.eps,
              weightDecay: s.decay ? this.weightDecay : 0,
              step: s.step,
            });
          }
          writeSlice(shard, p, 0, s.shardOffset);
        }
        for (const b of this.buckets) {
          scope(() => {
            const full = zeros([b.size * c.worldSize], 'f32', g.backend);
            c.allGather(slice(shard, 0, b.shardOffset, b.shardOffset + b.size).buffer, full.buffer);
            for (let i = b.first; i < b.end; i++) {
              const p = this.params[i][1];
              if (hasGrad[i]) assign(p, slice(full, 0, this.offsets[i], this.offsets[i] + p.size));
            }
          });
        }
      }),
    );
    this.dropGradShard();
  }

  dropGradShard(): void {
    this.gradShard?.dispose();
    this.gradShard = null;
  }

  /** Write this rank's pieces (see the header) to `file`. */
  saveShard(file: string): void {
    const tensors = new Map<string, Tensor>();
    const ranges: Record<string, [number, number]> = {};
    const steps: Record<string, number> = {};
    for (const s of this.pieces) {
      tensors.set(`${s.name}.exp_avg`, s.m);
      tensors.set(`${s.name}.exp_avg_sq`, s.v);
      ranges[s.name] = [s.start, s.end];
      steps[s.name] = s.step;
    }
    writeSafetensors(file, tensors, {
      format: 'pt',
      zero: JSON.stringify({ rank: this.collective.rank, world: this.collective.worldSize, ranges }),
      steps: JSON.stringify(steps),
    });
  }

  /** Load this rank's pieces from a checkpoint directory, sharded at any world size or not. */
  load(checkpoint: string): void {
    const st = readOptimizerState(checkpoint);
    const known = new Set(this.params.map(([n]) => n));
    for (const name of Object.keys(st.steps))
      if (!known.has(name))
        throw new Error(`${st.source}: state for ${name}, which is not trained in this run`);
    noGrad(() => {
      for (const s of this.pieces) {
        const step = st.steps[s.name];
        if (!Number.isInteger(step) || step < 0) throw new Error(`${st.source}: no step count for ${s.name}`);
        s.step = step;
        for (const [suffix, dst] of [
          ['exp_avg', s.m],
          ['exp_avg_sq', s.v],
        ] as const) {
          const vals = st.read(s.name, suffix, s.param.size, s.start, s.end);
          s.m.backend.write(dst.buffer, vals);
        }
      }
    });
  }

  dispose(): void {
    this.dropGradShard();
    for (const s of this.pieces) {
      s.m.dispose();
      s.v.dispose();
    }
  }
}

/** Optimizer moments of a checkpoint by element range, from shards or from one file. */
export interface OptimizerState {
  source: string;
  steps: Record<string, number>;
  /** values [start, end) of NAME.suffix, a parameter of `size` elements */
  read(
    name: string,
    suffix: 'exp_avg' | 'exp_avg_sq',
    size: number,
    start: number,
    end: number,
  ): Float32Array;
}

export function readOptimizerState(checkpoint: string): OptimizerState {
  const whole = path.join(checkpoint, 'optimizer.safetensors');
  const files = fs.existsSync(whole)
    ? [whole]
    : fs
        .readdirSync(checkpoint)
        .filter((n) => OPTIMIZER_SHARD_RE.test(n))
        .sort()
        .map((n) => path.join(checkpoint, n));
  if (!files.length) throw new Error(`${checkpoint}: no optimizer.safetensors and no optimizer shards`);
  const worlds = new Set(files.map((f) => OPTIMIZER_SHARD_RE.exec(path.basename(f))?.[2]));
  if (files.length > 1 && (worlds.size !== 1 || Number([...worlds][0]) !== files.length))
    throw new Error(
      `${checkpoint}: optimizer shards ${files.map((f) => path.basename(f)).join(', ')} are not one complete set`,
    );
  const parsed: { file: string; sf: SafeFile; ranges: Record<string, [number, number]> | null }[] = [];
  const steps: Record<string, number> = {};
  for (const file of files) {
    const sf = readSafetensors(file);
    let s: Record<string, number>;
    let ranges: Record<string, [number, number]> | null = null;
    try {
      s = JSON.parse(sf.metadata.steps ?? '');
      if (sf.metadata.zero)
        ranges = (JSON.parse(sf.metadata.zero) as { ranges: Record<string, [number, number]> }).ranges;
    } catch {
      throw new Error(`${file}: metadata "steps" (or "zero") missing or not JSON`);
    }
    Object.assign(steps, s);
    parsed.push({ file, sf, ranges });
  }
  const source = files.length === 1 ? files[0] : `${checkpoint}/optimizer-shard-*`;
  return {
    source,
    steps,
    read(name, suffix, size, start, end) {
      const out = new Float32Array(end - start);
      let covered = 0;
      for (const { file, sf, ranges } of parsed) {
        const e = sf.entries.get(`${name}.${suffix}`);
        if (!e) continue;
        const [s0, s1] = ranges ? (ranges[name] ?? [0, 0]) : [0, size];
        const vals = entryValues(e, file);
        if (!(vals instanceof Float32Array) || vals.length !== s1 - s0)
          throw new Error(
            `${file}: tensor ${name}.${suffix} has ${vals.length} values, expected ${s1 - s0} f32`,
          );
        const a = Math.max(start, s0);
        const b = Math.min(end, s1);
        if (a >= b) continue;
        out.set(vals.subarray(a - s0, b - s0), a - start);
        covered += b - a;
      }
      if (covered !== end - start)
        throw new Error(
          `${source}: ${name}.${suffix} covers ${covered} of elements [${start}, ${end}) (expected all)`,
        );
      return out;
    },
  };
}

/** Full moments of every parameter from a checkpoint, in AdamW.loadStateDict's form (for an unsharded run). */
export function fullOptimizerState(
  checkpoint: string,
  params: NamedParams,
): { tensors: Map<string, Tensor>; steps: Record<string, number>; source: string } {
  const st = readOptimizerState(checkpoint);
  const tensors = new Map<string, Tensor>();
  for (const [name, p] of params) {
    if (!(name in st.steps)) continue;
    for (const suffix of ['exp_avg', 'exp_avg_sq'] as const)
      tensors.set(
        `${name}.${suffix}`,
        keep(tensor(st.read(name, suffix, p.size, 0, p.size), [p.size], 'f32')),
      );
  }
  return { tensors, steps: st.steps, source: st.source };
}
