// One decoding step (B tokens in, B rows of logits out) after the prefill, replayed as one graph
// where the model allows it: a recurrent student's step has the same shapes, the same buffers
// and the same scalar arguments at every token (its conv and SSM states are updated in place by
// the fused `ssmStep`), so after one eager warm-up step it is captured once and every later
// token is one graph launch instead of a few hundred kernel launches. Attention layers (a
// growing KV cache, a changing causal offset) and learned positions change per token: such
// models decode eagerly, as do all models when graphs are off (MOHAWK_CUDA_GRAPH=0 or
// `graph: false`). Replays compute exactly what the eager step computes.

import type { CausalLM, ModelCache } from '../models/types.js';
import { SsmCache } from '../nn/discrete-mamba2.js';
import {
  captureGraph,
  cast,
  equal,
  getBackend,
  graphsAvailable,
  keep,
  max,
  mul,
  noGrad,
  reshape,
  scope,
  tensor,
  upload,
  zeros,
  type GraphCapture,
  type Tensor,
} from '../tensor/index.js';

export interface DecoderOptions {
  /**
   * replay the step as a graph: true (where the model allows it), false, or 'auto' (the
   * default): on for CUDA, off on the CPU (no launch overhead to save there)
   */
  graph?: boolean | 'auto';
  /**
   * what a step returns: 'logits' (B, V) for a sampler on the host, or 'greedy': the index of
   * each row's largest logit chosen on the device (B numbers read back instead of B x V)
   */
  output?: 'logits' | 'greedy';
}

/**
 * logits (B, 1, V) -> (B) f32 scores V - i*, i* the first index of each row's largest value: the
 * greedy choice on the device from existing ops (max, eq, a product with V..1, max). Equal to the
 * host's first-maximum argmax; a row with a NaN has no maximum and scores 0 (token 0).
 */
export function greedyScores(logits: Tensor, descending: Tensor): Tensor {
  const [b, , v] = logits.shape;
  const x = reshape(logits.dtype === 'f32' ? logits : cast(logits, 'f32'), [b, v]);
  return max(mul(equal(x, max(x, 1, true)), descending), 1);
}

/** Token ids from greedyScores read to the host. */
export function greedyIds(scores: ArrayLike<number>, vocab: number): number[] {
  return Array.from(scores, (s) => (s > 0 ? vocab - s : 0));
}

/** Why a model decodes eagerly, or null when its step can be captured. */
export function graphIneligibility(model: CausalLM, cache: ModelCache): string | null {
  if (!cache.layers.every((l) => l instanceof SsmCache))
    return 'attention layers (a KV cache grows per token)';
  if (model.info.maxSeqLen !== Infinity) return 'learned positions or attention change per token';
  return null;
}

export class Decoder {
  /** 'graph' once the step is captured; 'eager' otherwise */
  mode: 'eager' | 'graph' | 'pending';
  /** why the step is not a graph (ineligible model, graphs off, a failed capture) */
  reason: string | null = null;
  private graph: GraphCapture | null = null;
  private ids: Tensor | null = null;
  private idsHost: Int32Array;
  /** the graph's output: logits (B, 1, V) or greedy scores (B) */
  private out: Tensor | null = null;
  /** V, V - 1, ..., 1 (f32) for greedyScores */
  private descending: Tensor | null = null;
  private vocab = 0;
  readonly output: 'logits' | 'greedy';
  /** an eager step has run on a filled cache and kept its state buffers: capture may follow */
  private warm = false;
  /** how much a step advances the host counters (see counters) */
  private deltas: number[] = [];

  constructor(
    private readonly model: CausalLM,
    private readonly cache: ModelCache,
    readonly batch: number,
    opts: DecoderOptions = {},
  ) {
    this.idsHost = new Int32Array(batch);
    this.output = opts.output ?? 'logits';
    const want = opts.graph ?? 'auto';
    const backend = getBackend();
    const on = want === 'auto' ? backend.name === 'cuda' : want;
    const why = !on
      ? 'graphs turned off'
      : !graphsAvailable(backend)
        ? `the ${backend.name} backend cannot capture (or MOHAWK_CUDA_GRAPH=0)`
        : graphIneligibility(model, cache);
    this.mode = why ? 'eager' : 'pending';
    this.reason = why;
  }

  /** graph nodes of the captured step (0 before capture or when eager) */
  get nodes(): number {
    return this.graph?.nodes ?? 0;
  }

  /** Feed one token per sequence (B ids); the logits of the next position, (B, V) flattened on the host. */
  step(ids: ArrayLike<number>): Float32Array {
    if (this.output !== 'logits') throw new Error("decoder: step() needs output 'logits'; use next()");
    return this.run(ids);
  }

  /** Feed one token per sequence (B ids); each sequence's greedy next token, chosen on the device. */
  next(ids: ArrayLike<number>): number[] {
    if (this.output !== 'greedy') throw new Error("decoder: next() needs output 'greedy'; use step()");
    return greedyIds(this.run(ids), this.vocab);
  }

  private run(ids: ArrayLike<number>): Float32Array {
    if (ids.length !== this.batch) throw new Error(`decoder: ${ids.length} ids for a batch of ${this.batch}`);
    if (this.mode === 'pending' && this.warm) this.capture();
    if (this.mode !== 'graph') return this.eagerStep(ids);
    this.idsHost.set(ids);
    this.graph!.replay();
    this.advance();
    return this.out!.toArray() as Float32Array;
  }

  /** the step's output from the token ids (B, 1): logits, or greedy scores */
  private forward(ids: Tensor): Tensor {
    const logits = this.model.forward(ids, { cache: this.cache, lastLogitsOnly: true }).logits;
    if (this.output === 'logits') return logits;
    if (!this.descending) {
      this.vocab = logits.shape[2];
      const d = Float32Array.from({ length: this.vocab }, (_, i) => this.vocab - i);
      this.descending = keep(tensor(d, [this.vocab]));
    }
    return greedyScores(logits, this.descending);
  }

  private eagerStep(ids: ArrayLike<number>): Float32Array {
    const before = this.states();
    const row = noGrad(() =>
      scope(() => this.forward(tensor(Int32Array.from(ids), [this.batch, 1], 'i32')).toArray()),
    ) as Float32Array;
    if (this.mode === 'pending' && before.every((s) => s !== null)) {
      // a step on a filled cache must update the states in place (the same buffers serve every
      // replay); an empty cache was filled by a prefill, judged at the next step
      const after = this.states();
      if (before.every((s, i) => s === after[i])) this.warm = true;
      else {
        this.mode = 'eager';
        this.reason = 'the decoding state is not updated in place';
      }
    }
    return row;
  }

  /** the state tensors of every layer (conv, ssm), to check the step keeps them */
  private states(): (Tensor | null)[] {
    return this.cache.layers.flatMap((l) => (l instanceof SsmCache ? [l.conv, l.ssm] : []));
  }

  /** the host-side counters a step advances: the model position and each layer's length */
  private counters(): number[] {
    return [this.cache.position, ...this.cache.layers.map((l) => (l instanceof SsmCache ? l.length : 0))];
  }

  private setCounters(c: number[]): void {
    this.cache.position = c[0];
    this.cache.layers.forEach((l, i) => {
      if (l instanceof SsmCache) l.length = c[i + 1];
    });
  }

  private advance(): void {
    this.setCounters(this.counters().map((v, i) => v + this.deltas[i]));
  }

  private capture(): void {
    const before = this.counters();
    const ids = keep(zeros([this.batch, 1], 'i32'));
    let out: Tensor | null = null;
    try {
      this.graph = captureGraph(() => {
        out = noGrad(() =>
          scope(() => {
            upload(ids, this.idsHost);
            return this.forward(ids);
          }),
        );
      }, [this.idsHost]);
      // the capture ran no kernel, but the forward advanced the host counters once: undo, and
      // advance by the same amounts after every replay
      const after = this.counters();
      this.deltas = after.map((v, i) => v - before[i]);
      this.setCounters(before);
      this.ids = ids;
      this.out = keep(out!);
      this.mode = 'graph';
    } catch (e) {
      this.setCounters(before);
      (out as Tensor | null)?.dispose();
      ids.dispose();
      this.mode = 'eager';
      this.reason = `capture failed: ${(e as Error).message.split('\n')[0]}`;
    }
  }

  /** Free the graph and its buffers (before the cache and the cast weights it reads). */
  dispose(): void {
    this.out?.dispose();
    this.ids?.dispose();
    this.graph?.destroy();
    this.descending?.dispose();
    this.descending = null;
    this.out = null;
    this.ids = null;
    this.graph = null;
  }
}
