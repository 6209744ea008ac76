// ZeRO-1 and 2 (Rajbhandari et al. 2020): AdamW with its moments sharded across the ranks of a data
// parallel job. The trained parameters, in order, are grouped into buckets of whole parameters
// (about 25 MiB each); each bucket is cut into W chunks at row boundaries (a row: one index of a
// parameter's first axis), rank r owning chunk r, padded to the largest chunk for the
// collectives. So a rank holds whole rows, at most one run of them per parameter, and the
// update is the unsharded AdamW itself run on those rows: its rules (weight decay by name, decay
// only of rows with a gradient, per-parameter step counts) apply unchanged. A step, bucket by
// bucket where it moves data:
//
//   reduce-scatter   every rank's full gradient -> the summed gradient of its rows, bucket by
//                    bucket as the backward finishes them (gradientBuckets, with GradReducer)
//   norm             sum of squares over the rows, all-reduced (the global norm, for clipping)
//   update           AdamW on the rows (an AdamW over this rank's pieces, with their moments)
//   all-gather       every rank's updated rows -> the full parameters on every rank
//
// Moments are 8 bytes per parameter in one process and 8 / W here, plus the rows' own f32 copy
// (4 / W) that the update runs on. Parameters stay f32 and replicated: they are the master
// weights (bf16 exists only as the autocast copies the matmuls read), so sharding them too would
// be ZeRO-3. Each bucket's full gradients are freed as soon as it is sent; the temporaries are
// the buckets in flight, not the model. ZeRO-2 sends every micro-batch's buckets (the full
// gradients then never outlive a micro-batch); ZeRO-1 only the step's last, after the earlier
// micro-batches have accumulated into the full gradients.
//
// Checkpoints: each rank writes its pieces (`optimizer-shard-RRRRR-of-WWWWW.safetensors`, tensors
// NAME.exp_avg / NAME.exp_avg_sq over the element range [start, end) of NAME, ranges and step
// counts in metadata); readOptimizerState reads those or an unsharded optimizer.safetensors by
// element range, so a run resumes at any world size, sharded or not.

import fs from 'node:fs';
import path from 'node:path';
import { startReduceScatter, type Collective, type PendingCollective } from '../backends/collective.js';
import { entryValues, readSafetensors, writeSafetensors, type SafeFile } from '../io/safetensors.js';
import {
  add,
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
  zeros,
  type Tensor,
} from '../tensor/index.js';
import { AdamW, checkAdamWConfig, type AdamWConfig } from './optimizer.js';
import type { FixedBuckets } from './distributed.js';
import type { NamedParams } from './params.js';

export const OPTIMIZER_SHARD_RE = /^optimizer-shard-(\d{5})-of-(\d{5})\.safetensors$/;

export function optimizerShardName(rank: number, world: number): string {
  return `optimizer-shard-${String(rank).padStart(5, '0')}-of-${String(world).padStart(5, '0')}.safetensors`;
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
  if (first < sizes.length) out.push({ first, end: sizes.length, elems });
  return out;
}

/**
 * Cut a run of parameters (element counts and row lengths: a row is one index of the first axis)
 * into `world` chunks at row boundaries, each close to an equal share: the world + 1 element
 * offsets of the cuts, from 0 to the total.
 */
export function rowCuts(sizes: number[], rowLens: number[], world: number): number[] {
  const starts: number[] = [];
  let total = 0;
  for (const n of sizes) {
    starts.push(total);
    total += n;
  }
  const cuts = [0];
  for (let k = 1; k < world; k++) {
    const target = Math.round((k * total) / world);
    // the parameter holding the target, then its row boundary nearest to it
    let i = 0;
    while (i + 1 < sizes.length && starts[i + 1] <= target) i++;
    const rows = sizes.length ? sizes[i] / rowLens[i] : 0;
    const j = sizes.length ? Math.min(Math.max(Math.round((target - starts[i]) / rowLens[i]), 0), rows) : 0;
    const cut = sizes.length ? starts[i] + j * rowLens[i] : 0;
    cuts.push(Math.max(cut, cuts[cuts.length - 1]));
  }
  cuts.push(total);
  return cuts;
}

/** This rank's rows [start, end) (as elements) of one parameter, a tensor of those rows for AdamW. */
interface Piece {
  index: number;
  name: string;
  param: Tensor;
  start: number;
  end: number;
  /** offset of the piece in this rank's chunk of its bucket */
  chunkOffset: number;
  /** the rows' values, (rows, ...rest of the parameter's shape); AdamW updates them */
  values: Tensor;
}

/** One bucket: parameters [first, end) at `offsets` within it, cut at row boundaries `cuts`. */
interface Bucket {
  first: number;
  end: number;
  elems: number;
  cuts: number[];
  /** the largest chunk: every rank's chunk is padded to it for the collectives */
  chunk: number;
}

export class ShardedAdamW {
  /** elements of all trained parameters (N) and of this rank's pieces */
  readonly total: number;
  readonly localElements: number;
  /** each parameter's element offset within its bucket */
  private readonly offsets: number[];
  private readonly buckets: Bucket[];
  private readonly pieces: Piece[];
  /** the unsharded optimizer over this rank's pieces: its update rules apply row for row */
  private readonly inner: AdamW;

  /**
   * `bucketBytes` (default 25 MiB of f32): the reduce-scatter and all-gather run per bucket of
   * whole parameters, so their temporaries are a bucket, not the model.
   */
  constructor(
    readonly params: NamedParams,
    readonly config: AdamWConfig,
    readonly collective: Collective,
    bucketBytes = 25 << 20,
  ) {
    checkAdamWConfig(config);
    for (const [name, p] of params)
      if (p.dtype !== 'f32')
        throw new Error(`optimizer: parameter ${name} is ${p.dtype}; AdamW keeps f32 weights`);
    const W = collective.worldSize;
    const r = collective.rank;
    this.total = params.reduce((a, [, p]) => a + p.size, 0);
    this.offsets = new Array<number>(params.length);
    this.buckets = [];
    this.pieces = [];
    const rowLen = (t: Tensor): number =>
      t.ndim === 0 || t.shape[0] === 0 ? Math.max(1, t.size) : t.size / t.shape[0];
    const limit = Math.max(1, Math.floor(bucketBytes / 4));
    for (const b of paramBuckets(
      params.map(([, p]) => p.size),
      limit,
    )) {
      const ps = params.slice(b.first, b.end).map(([, p]) => p);
      const cuts = rowCuts(
        ps.map((p) => p.size),
        ps.map(rowLen),
        W,
      );
      let chunk = 0;
      for (let k = 0; k < W; k++) chunk = Math.max(chunk, cuts[k + 1] - cuts[k]);
      this.buckets.push({ ...b, cuts, chunk });
      const [begin, end] = [cuts[r], cuts[r + 1]];
      let off = 0;
      for (let index = b.first; index < b.end; index++) {
        const [name, p] = params[index];
        this.offsets[index] = off;
        const lo = Math.max(begin, off);
        const hi = Math.min(end, off + p.size);
        if (lo < hi) {
          const rows = (hi - lo) / rowLen(p);
          const shape = p.ndim === 0 ? [1] : [rows, ...p.shape.slice(1)];
          this.pieces.push({
            index,
            name,
            param: p,
            start: lo - off,
            end: hi - off,
            chunkOffset: lo - begin,
            values: keep(zeros(shape, 'f32', p.backend)),
          });
        }
        off += p.size;
      }
    }
    this.localElements = this.pieces.reduce((a, s) => a + (s.end - s.start), 0);
    this.inner = new AdamW(
      this.pieces.map((s) => [s.name, s.values]),
      config,
    );
  }

  /** names of the parameters with weight decay (this rank's pieces) */
  decayed(): string[] {
    return this.inner.decayed();
  }

  /**
   * The buckets for GradReducer (train/distributed.ts), last bucket first (the order a backward
   * usually finishes them), each reduce-scattered as soon as its gradients are final (zeros where
   * this rank has none), the rank's rows added to its pieces' gradients and the bucket's full
   * gradients freed. ZeRO-1 runs it in the step's last backward; ZeRO-2 in every micro-batch's,
   * so that between micro-batches a rank holds only its rows' gradients.
   */
  gradientBuckets(): FixedBuckets {
    const order = [...this.buckets].reverse();
    return {
      plan: order.map((b) => Array.from({ length: b.end - b.first }, (_, i) => b.first + i)),
      send: (k, grads) => this.scatterBucket(order[k], grads),
    };
  }

  /** grads: the bucket's parameters' gradients, flat (1-D), in parameter order */
  private scatterBucket(b: Bucket, grads: Tensor[]): { pending: PendingCollective; done: () => void } {
    const W = this.collective.worldSize;
    const backend = grads[0].backend;
    const { send, out } = noGrad(() =>
      scope(() => {
        // rank k's rows [cuts[k], cuts[k + 1]) of the bucket (pieces of its parameters), padded to
        // the largest chunk, in rank order: one copy of the gradients
        const parts: Tensor[] = [];
        for (let k = 0; k < W; k++) {
          const [lo, hi] = [b.cuts[k], b.cuts[k + 1]];
          grads.forEach((g, j) => {
            const off = this.offsets[b.first + j];
            const a = Math.max(lo, off);
            const e = Math.min(hi, off + g.size);
            if (a < e) parts.push(a === off && e === off + g.size ? g : slice(g, 0, a - off, e - off));
          });
          if (hi - lo < b.chunk) parts.push(zeros([b.chunk - (hi - lo)], 'f32', backend));
        }
        return {
          send: keep(parts.length === 1 ? parts[0] : concat(parts, 0)),
          out: keep(zeros([b.chunk], 'f32', backend)),
        };
      }),
    );
    const pending = startReduceScatter(this.collective, send.buffer, out.buffer, 'sum');
    const done = (): void => {
      noGrad(() =>
        scope(() => {
          for (const s of this.pieces) {
            if (s.index < b.first || s.index >= b.end) continue;
            const g = reshape(
              slice(out, 0, s.chunkOffset, s.chunkOffset + (s.end - s.start)),
              s.values.shape,
            );
            const prev = s.values.grad;
            s.values.grad = keep(prev ? add(prev, g) : g);
            prev?.dispose();
          }
        }),
      );
      send.dispose();
      out.dispose();
    };
    return { pending, done };
  }

  /**
   * After the step's buckets have arrived: the pieces of parameters no rank has a gradient for
   * lose theirs (so the update skips them as the unsharded optimizer does); returns the global
   * sum of squares of the gradient (the rows' sums, all-reduced).
   */
  finishGrads(hasGrad: boolean[]): number {
    for (const s of this.pieces)
      if (!hasGrad[s.index]) {
        s.values.grad?.dispose();
        s.values.grad = null;
      }
    return this.sumOfSquares();
  }

  private sumOfSquares(): number {
    const c = this.collective;
    return noGrad(() =>
      scope(() => {
        let acc = zeros([1], 'f32', this.params[0][1].backend);
        for (const s of this.pieces)
          if (s.values.grad) acc = add(acc, reshape(sum(square(s.values.grad)), [1]));
        c.allReduce(acc.buffer, 'sum');
        return acc.item();
      }),
    );
  }

  /** Multiply the gradients of the pieces by coef (clipping). */
  scaleGrads(coef: number): void {
    noGrad(() => {
      for (const s of this.pieces) {
        const g = s.values.grad;
        if (!g) continue;
        s.values.grad = keep(scale(g, coef));
        g.dispose();
      }
    });
  }

  /**
   * One AdamW update of this rank's pieces at learning rate lr (the unsharded optimizer's rules,
   * on the pieces' rows), then the all-gather, bucket by bucket, of every rank's rows into the
   * parameters.
   */
  step(lr: number): void {
    const c = this.collective;
    const W = c.worldSize;
    noGrad(() => {
      // the pieces start from the parameters' current values (a resume or broadcast may have set them)
      for (const s of this.pieces)
        scope(() => assign(s.values, slice(reshape(s.param, [s.param.size]), 0, s.start, s.end)));
      this.inner.step(lr);
      for (const b of this.buckets) {
        scope(() => {
          const backend = this.params[b.first][1].backend;
          const mine = this.pieces.filter((s) => s.index >= b.first && s.index < b.end);
          const len = b.cuts[c.rank + 1] - b.cuts[c.rank];
          const parts = mine.map((s) => reshape(s.values, [s.end - s.start]));
          if (len < b.chunk) parts.push(zeros([b.chunk - len], 'f32', backend));
          const chunk = parts.length ? concat(parts, 0) : zeros([b.chunk], 'f32', backend);
          const full = zeros([b.chunk * W], 'f32', backend);
          c.allGather(chunk.buffer, full.buffer);
          // drop each rank's padding: the bucket's parameters end to end
          const rowsOf: Tensor[] = [];
          for (let k = 0; k < W; k++) {
            const n = b.cuts[k + 1] - b.cuts[k];
            if (n > 0) rowsOf.push(slice(full, 0, k * b.chunk, k * b.chunk + n));
          }
          const flat = rowsOf.length === 1 ? rowsOf[0] : concat(rowsOf, 0);
          for (let i = b.first; i < b.end; i++) {
            const p = this.params[i][1];
            assign(p, slice(flat, 0, this.offsets[i], this.offsets[i] + p.size));
          }
        });
      }
    });
    this.dropGrads();
  }

  /** Forget the pieces' gradients (after a step, or a skipped one). */
  dropGrads(): void {
    for (const s of this.pieces) {
      s.values.grad?.dispose();
      s.values.grad = null;
    }
  }

  /** Write this rank's pieces (see the header) to `file`. */
  saveShard(file: string): void {
    const { tensors, steps } = this.inner.stateDict();
    const ranges: Record<string, [number, number]> = {};
    for (const s of this.pieces) ranges[s.name] = [s.start, s.end];
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
    const tensors = new Map<string, Tensor>();
    const steps: Record<string, number> = {};
    try {
      for (const s of this.pieces) {
        if (!(s.name in st.steps)) throw new Error(`${st.source}: no step count for ${s.name}`);
        steps[s.name] = st.steps[s.name];
        for (const suffix of ['exp_avg', 'exp_avg_sq'] as const)
          tensors.set(
            `${s.name}.${suffix}`,
            keep(tensor(st.read(s.name, suffix, s.param.size, s.start, s.end), s.values.shape, 'f32')),
          );
      }
      this.inner.loadStateDict(tensors, steps, st.source);
    } finally {
      for (const t of tensors.values()) t.dispose();
    }
  }

  dispose(): void {
    this.dropGrads();
    this.inner.dispose();
    for (const s of this.pieces) s.values.dispose();
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
        const vals = entryValues(e);
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
