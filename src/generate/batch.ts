// Continuous batching: many sequences decoded in one loop, a new sequence joining at the next
// step. Each sequence owns a batch-1 ModelCache, filled by its own prefill (prompts differ in
// length). A decoding step then runs the active sequences together:
//   - SSM layers (DiscreteMamba2): the sequences' constant-size states (conv window + SSM state)
//     are stacked along the batch axis into one SsmCache, so the layer runs once for the whole
//     batch (one in_proj / out_proj GEMM, one fused ssmStep). The stack is rebuilt only when the
//     batch changes (a sequence joins or leaves), its rows written back to the sequences first.
//   - Attention layers (teachers, the attention layers of hybrids): each sequence has its own KV
//     cache of its own length, and the attention op has one causal offset for the batch, so
//     these blocks run per sequence (batch 1) on that sequence's row of the residual stream.
//   - The embedding runs per sequence (learned positions differ), the final norm + LM head once.
// Per sequence the arithmetic is that of `generateIds` (same prefill, same step, same sampler
// with the same seeded generator), so greedy output equals `mohawk generate` token for token.
// For a pure recurrent student the batched step runs through a Decoder (decode-graph.ts): while
// the batch stays the same, the step is one replayed graph (on CUDA by default); a join or a
// leave rebuilds the stack, and the next step warms up and captures again.

import type { CausalLM, ModelCache } from '../models/types.js';
import { SsmCache } from '../nn/discrete-mamba2.js';
import { Decoder } from './decode-graph.js';
import {
  castParameters,
  concat,
  getAutocast,
  noGrad,
  scope,
  slice,
  tensor,
  withCastParameters,
  type Tensor,
} from '../tensor/index.js';
import { Random } from '../util/random.js';
import { sampleToken, type SamplingOptions } from './sampling.js';

/** Why a sequence ended: 'stop' = EOS (or the caller's stop string), 'length' = token or context limit. */
export type FinishReason = 'stop' | 'length' | 'cancelled' | 'error';

export interface SequenceRequest extends SamplingOptions {
  promptIds: number[];
  maxNewTokens: number;
  seed?: number;
  /** stop at the model's EOS token (default true) */
  stopAtEos?: boolean;
  /** each new token id, as soon as it is sampled */
  onToken?: (id: number) => void;
  /** called once, when the sequence ends (also after cancel) */
  onDone?: (reason: FinishReason, ids: number[]) => void;
}

export interface SequenceHandle {
  /** end the sequence and free its slot at the next step (a client that disconnected) */
  cancel(reason?: FinishReason): void;
  readonly done: boolean;
}

interface Slot {
  req: SequenceRequest;
  rng: Random;
  cache: ModelCache | null;
  /** the last sampled token, the input of the next step */
  next: number;
  ids: number[];
  done: boolean;
  /** when the cancel was asked for (finished at the next step, outside the compute) */
  cancelled: FinishReason | null;
}

export interface EngineStats {
  active: number;
  waiting: number;
  steps: number;
  /** decoded tokens so far (prefill-sampled tokens included) */
  tokens: number;
  /** the largest batch a decoding step has run */
  peakActive: number;
}

export class BatchEngine {
  private readonly waiting: Slot[] = [];
  private active: Slot[] = [];
  /** per layer, the stacked SSM state of `active` (null for layers that run per sequence) */
  private stacked: (SsmCache | null)[] | null = null;
  /** the batched step of the current stack as a graph (pure SSM models with graphs on) */
  private decoder: Decoder | null = null;
  /** false once the model or the backend turned out not to take graphs */
  private graphs = true;
  private readonly eos: number | null;
  private readonly casts;
  private running = false;
  private wake: (() => void) | null = null;
  private closed = false;
  readonly stats: EngineStats = { active: 0, waiting: 0, steps: 0, tokens: 0, peakActive: 0 };

  constructor(
    readonly model: CausalLM,
    readonly opts: {
      maxBatch: number;
      /** the decoding step as a replayed graph: default 'auto' (on for CUDA); see decode-graph.ts */
      graph?: boolean | 'auto';
    } = { maxBatch: 8 },
  ) {
    if (!(Number.isInteger(opts.maxBatch) && opts.maxBatch >= 1))
      throw new Error(`batch engine: maxBatch must be an integer >= 1, got ${opts.maxBatch}`);
    this.eos = model.info.eosTokenId;
    // under autocast the weights are rounded to 16 bits once for the engine's life
    const dt = getAutocast();
    this.casts = dt ? castParameters(model.parameters(), dt) : null;
  }

  /** Queue a sequence; it joins the batch at the next step. */
  submit(req: SequenceRequest): SequenceHandle {
    if (this.closed) throw new Error('batch engine: closed');
    if (req.promptIds.length === 0)
      throw new Error('generate: the prompt is empty and the tokenizer adds no BOS; give a prompt');
    const slot: Slot = {
      req,
      rng: new Random(req.seed ?? 0),
      cache: null,
      next: -1,
      ids: [],
      done: false,
      cancelled: null,
    };
    this.waiting.push(slot);
    this.updateStats();
    this.wake?.();
    return {
      cancel: (reason: FinishReason = 'cancelled') => {
        if (slot.done) return;
        slot.cancelled = reason;
        const w = this.waiting.indexOf(slot);
        if (w >= 0) {
          this.waiting.splice(w, 1);
          this.finish(slot, reason);
        }
        this.wake?.();
      },
      get done() {
        return slot.done;
      },
    };
  }

  /** Decode until closed: one step, then yield to the event loop (requests arrive, SSE flushes). */
  async run(): Promise<void> {
    if (this.running) return;
    this.running = true;
    try {
      while (!this.closed) {
        if (this.active.length === 0 && this.waiting.length === 0) {
          await new Promise<void>((resolve) => (this.wake = resolve));
          this.wake = null;
          continue;
        }
        try {
          this.step();
        } catch (e) {
          // a failed step ends every sequence it touched; the loop keeps serving new ones
          this.failAll(e as Error);
        }
        await new Promise<void>((resolve) => setImmediate(resolve));
      }
    } finally {
      this.running = false;
    }
  }

  /** The error of the last failed step (sequences it ended finished with 'error'). */
  lastError: Error | null = null;

  private failAll(e: Error): void {
    this.lastError = e;
    this.decoder?.dispose();
    this.decoder = null;
    // the stack may be half-updated; the sequences end anyway
    for (const st of this.stacked ?? []) st?.dispose();
    this.stacked = null;
    for (const s of [...this.waiting, ...this.active]) this.finish(s, 'error');
    this.waiting.length = 0;
    this.active = [];
    this.updateStats();
  }

  /** Stop the loop and end every sequence ('cancelled'). */
  close(): void {
    this.closed = true;
    for (const s of [...this.waiting, ...this.active]) s.cancelled ??= 'cancelled';
    this.waiting.length = 0;
    this.unstack();
    for (const s of this.active) this.finish(s, 'cancelled');
    this.active = [];
    this.casts?.dispose();
    this.wake?.();
  }

  /**
   * One step: drop ended sequences, prefill the waiting ones that fit (each samples its first
   * token), then one batched decoding step for every sequence that was already active.
   */
  step(): void {
    withCastParameters(this.casts, () => {
      this.retire();
      const joined: Slot[] = [];
      while (this.active.length + joined.length < this.opts.maxBatch && this.waiting.length > 0) {
        const s = this.waiting.shift()!;
        if (this.prefill(s)) joined.push(s);
      }
      if (this.active.length > 0) this.decode();
      if (joined.length > 0) {
        this.unstack();
        this.active.push(...joined);
      }
      this.retire();
      this.stats.steps++;
    });
    this.updateStats();
  }

  private updateStats(): void {
    this.stats.active = this.active.length;
    this.stats.waiting = this.waiting.length;
  }

  /** Remove ended and cancelled sequences from the batch (their rows leave the stack). */
  private retire(): void {
    const gone = this.active.filter((s) => s.done || s.cancelled);
    if (gone.length === 0) return;
    this.unstack();
    this.active = this.active.filter((s) => !gone.includes(s));
    for (const s of gone) if (!s.done) this.finish(s, s.cancelled ?? 'cancelled');
  }

  private finish(s: Slot, reason: FinishReason): void {
    if (s.done) return;
    s.done = true;
    s.cache?.dispose();
    s.cache = null;
    s.req.onDone?.(reason, s.ids);
  }

  /** Accept a sampled token; returns false when the sequence ended with it. */
  private accept(s: Slot, next: number): boolean {
    if (s.req.stopAtEos !== false && this.eos !== null && next === this.eos) {
      this.finish(s, 'stop');
      return false;
    }
    s.ids.push(next);
    s.next = next;
    this.stats.tokens++;
    s.req.onToken?.(next);
    if (s.cancelled) return false; // the callback ended it (a stop string)
    if (s.ids.length >= s.req.maxNewTokens) {
      this.finish(s, 'length');
      return false;
    }
    return true;
  }

  /** The prompt through a fresh batch-1 cache; samples the first token. False when it ended. */
  private prefill(s: Slot): boolean {
    const { promptIds, maxNewTokens } = s.req;
    if (maxNewTokens <= 0 || promptIds.length > this.model.info.maxSeqLen) {
      this.finish(s, 'length');
      return false;
    }
    s.cache = this.model.createCache(1);
    const cache = s.cache;
    const row = noGrad(() =>
      scope(() =>
        this.model
          .forward(tensor(promptIds, [1, promptIds.length], 'i32'), { cache, lastLogitsOnly: true })
          .logits.toArray(),
      ),
    );
    if (!this.accept(s, sampleToken(row, s.rng, s.req))) {
      if (!s.done) this.finish(s, s.cancelled ?? 'stop');
      return false;
    }
    return true;
  }

  /** Write the stacked SSM rows back into the sequences' own caches and drop the stack. */
  private unstack(): void {
    // the graph reads the stack: it goes first
    this.decoder?.dispose();
    this.decoder = null;
    if (!this.stacked) return;
    const stacked = this.stacked;
    this.stacked = null;
    noGrad(() =>
      scope(() => {
        stacked.forEach((st, layer) => {
          if (!st) return;
          this.active.forEach((s, j) => {
            const own = s.cache?.layers[layer] as SsmCache | undefined;
            if (!own) return;
            own.set(slice(st.conv!, 0, j, j + 1), slice(st.ssm!, 0, j, j + 1));
          });
        });
      }),
    );
    for (const st of stacked) st?.dispose();
  }

  /** Stack the active sequences' SSM states, one SsmCache per SSM layer. */
  private stack(): (SsmCache | null)[] {
    if (this.stacked) return this.stacked;
    const layers = this.active[0].cache!.layers;
    this.stacked = noGrad(() =>
      layers.map((l, i) => {
        if (!(l instanceof SsmCache) || !l.conv || !l.ssm) return null;
        const own = this.active.map((s) => s.cache!.layers[i] as SsmCache);
        const st = new SsmCache();
        st.set(
          concat(
            own.map((c) => c.conv!),
            0,
          ),
          concat(
            own.map((c) => c.ssm!),
            0,
          ),
        );
        st.length = l.length; // > 0: the layer takes its one-token step path
        return st;
      }),
    );
    return this.stacked;
  }

  /** One token for every active sequence. */
  private decode(): void {
    const maxLen = this.model.info.maxSeqLen;
    for (const s of this.active) if (s.cache!.position + 1 > maxLen) s.cancelled = 'length';
    this.retire();
    const batch = this.active;
    if (batch.length === 0) return;
    this.stats.peakActive = Math.max(this.stats.peakActive, batch.length);
    const stacked = this.stack();
    const model = this.model;
    const rows = this.graphStep(batch, stacked) ?? this.eagerStep(batch, stacked);
    const v = model.info.vocabSize;
    const width = rows.length / batch.length;
    batch.forEach((s, j) => {
      s.cache!.position += 1;
      const logits = rows.subarray(j * width, j * width + v);
      this.accept(s, sampleToken(logits, s.rng, s.req));
    });
  }

  /**
   * The batched step through a Decoder when every layer is stacked and graphs are on: the same
   * forward as eagerStep (one embedding of the B ids equals the per-sequence ones without
   * learned positions), replayed as a graph while the stack lives. Null: run eagerStep.
   */
  private graphStep(batch: Slot[], stacked: (SsmCache | null)[]): Float32Array | Float64Array | null {
    if (!this.graphs) return null;
    if (!this.decoder) {
      const layers = stacked.filter((st): st is SsmCache => st !== null);
      if (layers.length !== stacked.length) {
        this.graphs = false;
        return null;
      }
      const cache = { position: batch[0].cache!.position, layers, dispose() {} };
      const decoder = new Decoder(this.model, cache, batch.length, { graph: this.opts.graph });
      if (decoder.mode === 'eager') {
        this.graphs = false; // graphs off, or a model whose step changes per token
        decoder.dispose();
        return null;
      }
      this.decoder = decoder;
    }
    return this.decoder.step(batch.map((s) => s.next));
  }

  private eagerStep(batch: Slot[], stacked: (SsmCache | null)[]): Float32Array | Float64Array {
    const model = this.model;
    return noGrad(() =>
      scope(() => {
        const embedded = batch.map((s) => model.embed(tensor([s.next], [1, 1], 'i32'), s.cache!.position));
        let h: Tensor = embedded.length === 1 ? embedded[0] : concat(embedded, 0);
        model.blocks.forEach((block, i) => {
          const prev = h;
          const st = stacked[i];
          h = scope(() => {
            if (st) return block.forward(prev, { cache: st, position: batch[0].cache!.position }).out;
            const outs = batch.map((s, j) => {
              const row = batch.length === 1 ? prev : slice(prev, 0, j, j + 1);
              return block.forward(row, { cache: s.cache!.layers[i], position: s.cache!.position }).out;
            });
            return outs.length === 1 ? outs[0] : concat(outs, 0);
          });
        });
        return model.head(h).toArray() as Float32Array | Float64Array;
      }),
    );
  }
}
