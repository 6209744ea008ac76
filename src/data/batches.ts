// Batches of token windows from a split: random windows (seeded) or packed sequential windows,
// both resumable from a small JSON state. Batches live on the host (Int32Array); `toTensors`
// is the one place they become device tensors.
//
// A window of T positions reads T + 1 consecutive tokens: input = tokens[s, s+T), target =
// tokens[s+1, s+T+1). Rows are drawn one after another, so two batches of B/2 rows hold the
// same rows as one batch of B (gradient accumulation relies on this).

import { tensor, type Tensor } from '../tensor/index.js';
import { Random, type RandomState } from '../util/random.js';
import type { TokenSplit } from './shards.js';

/** What the trainer counts tokens by: batch * seqLen. */
export interface TokenBatch {
  batch: number;
  seqLen: number;
}

export interface Batch extends TokenBatch {
  /** (batch, seqLen) row-major */
  input: Int32Array;
  /** (batch, seqLen): the next token of each input position */
  target: Int32Array;
  /**
   * (batch, seqLen), when the split has a mask (chat data, `data.maskPrompt`): 1 where the
   * target counts in the loss (an assistant's token), 0 where it does not
   */
  targetMask?: Uint8Array;
}

/** An endless source of batches whose position can be saved to JSON and restored. */
export interface BatchSource<B extends TokenBatch = Batch> {
  next(): B;
  /** JSON-serializable position; `restore(state())` continues exactly where this one is */
  state(): unknown;
  restore(state: unknown): void;
}

export interface RandomWindowState {
  kind: 'random-windows';
  seqLen: number;
  tokens: number;
  rng: RandomState;
  /** rows drawn so far */
  rows: number;
}

export interface SequentialState {
  kind: 'sequential';
  seqLen: number;
  tokens: number;
  shuffle: boolean;
  seed: number;
  epoch: number;
  /** windows of this epoch already used */
  cursor: number;
}

function checkSizes(split: TokenSplit, batchSize: number, seqLen: number, what: string): void {
  if (!(Number.isInteger(batchSize) && batchSize > 0))
    throw new Error(`${what}: batchSize ${batchSize} must be >= 1`);
  if (!(Number.isInteger(seqLen) && seqLen > 0)) throw new Error(`${what}: seqLen ${seqLen} must be >= 1`);
  if (split.length < seqLen + 1) {
    throw new Error(
      `${what}: split ${split.name} has ${split.length} tokens, fewer than one window of ${seqLen} + 1 tokens`,
    );
  }
}

function stateError(what: string, msg: string): never {
  throw new Error(`${what}: cannot restore state: ${msg}`);
}

/** Rows read into a fresh batch: `start(r)` gives the first token of row r. */
function readRows(split: TokenSplit, batch: number, seqLen: number, start: (r: number) => number): Batch {
  const input = new Int32Array(batch * seqLen);
  const target = new Int32Array(batch * seqLen);
  const row = new Int32Array(seqLen + 1);
  const targetMask = split.hasMask ? new Uint8Array(batch * seqLen) : undefined;
  for (let r = 0; r < batch; r++) {
    const s = start(r);
    split.read(s, seqLen + 1, row);
    input.set(row.subarray(0, seqLen), r * seqLen);
    target.set(row.subarray(1), r * seqLen);
    // the mask of the targets: tokens s + 1 .. s + seqLen
    if (targetMask) split.readMask(s + 1, seqLen, targetMask, r * seqLen);
  }
  return targetMask ? { input, target, targetMask, batch, seqLen } : { input, target, batch, seqLen };
}

/** Windows starting at uniformly random token positions, from a seeded generator. */
export class RandomWindows implements BatchSource<Batch> {
  private rng: Random;
  private rows = 0;

  constructor(
    readonly split: TokenSplit,
    readonly batchSize: number,
    readonly seqLen: number,
    seed = 0,
  ) {
    checkSizes(split, batchSize, seqLen, 'RandomWindows');
    this.rng = new Random(seed);
  }

  next(): Batch {
    // starts in [0, N - T - 1] so that T + 1 tokens fit
    const starts = Array.from({ length: this.batchSize }, () =>
      this.rng.int(0, this.split.length - this.seqLen),
    );
    this.rows += this.batchSize;
    return readRows(this.split, this.batchSize, this.seqLen, (r) => starts[r]);
  }

  state(): RandomWindowState {
    return {
      kind: 'random-windows',
      seqLen: this.seqLen,
      tokens: this.split.length,
      rng: this.rng.getState(),
      rows: this.rows,
    };
  }

  restore(state: unknown): void {
    const s = state as RandomWindowState;
    const what = 'RandomWindows';
    if (s?.kind !== 'random-windows')
      stateError(what, `kind is ${JSON.stringify(s?.kind)}, expected "random-windows"`);
    if (s.seqLen !== this.seqLen) stateError(what, `seqLen ${s.seqLen} differs from ${this.seqLen}`);
    if (s.tokens !== this.split.length)
      stateError(what, `saved for a split of ${s.tokens} tokens, this one has ${this.split.length}`);
    this.rng.setState(s.rng);
    this.rows = s.rows;
  }
}

/**
 * Packed sequential windows: the split cut into floor((N - 1) / T) back-to-back windows, read in
 * order (or in a seeded permutation per epoch when `shuffle`), wrapping around at the end.
 */
export class SequentialWindows implements BatchSource<Batch> {
  readonly windows: number;
  private epoch = 0;
  private cursor = 0;
  private order: Int32Array | null = null;

  constructor(
    readonly split: TokenSplit,
    readonly batchSize: number,
    readonly seqLen: number,
    readonly opts: { shuffle?: boolean; seed?: number } = {},
  ) {
    checkSizes(split, batchSize, seqLen, 'SequentialWindows');
    this.windows = Math.floor((split.length - 1) / seqLen);
    this.makeOrder();
  }

  private makeOrder(): void {
    if (!this.opts.shuffle) {
      this.order = null;
      return;
    }
    const order = new Int32Array(this.windows);
    for (let i = 0; i < order.length; i++) order[i] = i;
    // one generator per epoch, so a restored position needs only (seed, epoch, cursor)
    new Random(((this.opts.seed ?? 0) + Math.imul(this.epoch, 0x9e3779b9)) >>> 0).shuffle(order);
    this.order = order;
  }

  /** the epoch (full passes completed) and the position inside it */
  get position(): { epoch: number; cursor: number } {
    return { epoch: this.epoch, cursor: this.cursor };
  }

  next(): Batch {
    const starts: number[] = [];
    for (let r = 0; r < this.batchSize; r++) {
      if (this.cursor === this.windows) {
        this.epoch++;
        this.cursor = 0;
        this.makeOrder();
      }
      const w = this.order ? this.order[this.cursor] : this.cursor;
      starts.push(w * this.seqLen);
      this.cursor++;
    }
    return readRows(this.split, this.batchSize, this.seqLen, (r) => starts[r]);
  }

  state(): SequentialState {
    return {
      kind: 'sequential',
      seqLen: this.seqLen,
      tokens: this.split.length,
      shuffle: !!this.opts.shuffle,
      seed: this.opts.seed ?? 0,
      epoch: this.epoch,
      cursor: this.cursor,
    };
  }

  restore(state: unknown): void {
    const s = state as SequentialState;
    const what = 'SequentialWindows';
    if (s?.kind !== 'sequential')
      stateError(what, `kind is ${JSON.stringify(s?.kind)}, expected "sequential"`);
    if (s.seqLen !== this.seqLen) stateError(what, `seqLen ${s.seqLen} differs from ${this.seqLen}`);
    if (s.tokens !== this.split.length)
      stateError(what, `saved for a split of ${s.tokens} tokens, this one has ${this.split.length}`);
    if (s.shuffle !== !!this.opts.shuffle || s.seed !== (this.opts.seed ?? 0))
      stateError(what, `shuffle/seed (${s.shuffle}, ${s.seed}) differ from this sampler's`);
    if (!(Number.isInteger(s.cursor) && s.cursor >= 0 && s.cursor <= this.windows))
      stateError(what, `cursor ${s.cursor} outside [0, ${this.windows}]`);
    this.epoch = s.epoch;
    this.cursor = s.cursor;
    this.makeOrder();
  }
}

/**
 * Every back-to-back window of a split once, in order (evaluation): batches of up to batchSize
 * rows, the last one smaller; at most maxWindows windows when given.
 */
export function* evalBatches(
  split: TokenSplit,
  batchSize: number,
  seqLen: number,
  maxWindows = Infinity,
): Generator<Batch> {
  checkSizes(split, batchSize, seqLen, 'evalBatches');
  const windows = Math.min(Math.floor((split.length - 1) / seqLen), maxWindows);
  for (let w = 0; w < windows; w += batchSize) {
    const rows = Math.min(batchSize, windows - w);
    yield readRows(split, rows, seqLen, (r) => (w + r) * seqLen);
  }
}

/** The batch's target mask as a (batch, seqLen) f32 tensor of 0/1 (null when it has none). */
export function maskTensor(b: Batch): Tensor | null {
  return b.targetMask ? tensor(Float32Array.from(b.targetMask), [b.batch, b.seqLen], 'f32') : null;
}

/** A batch as (batch, seqLen) i32 tensors on the current device (in the caller's scope). */
export function toTensors(b: Batch): { input: Tensor; target: Tensor } {
  return {
    input: tensor(b.input, [b.batch, b.seqLen], 'i32'),
    target: tensor(b.target, [b.batch, b.seqLen], 'i32'),
  };
}
