// The forward pass shared by every family: embed -> blocks -> head, with captures and caches.

import { graphScope, isGradEnabled, scope, slice, type Tensor } from '../tensor/index.js';
import type { Block, Captured, ForwardOptions, ForwardResult, ModelCache } from './types.js';

export interface LMParts {
  readonly blocks: Block[];
  embed(ids: Tensor, position?: number): Tensor;
  head(h: Tensor): Tensor;
}

export function forwardLM(model: LMParts, ids: Tensor, opts: ForwardOptions = {}): ForwardResult {
  if (ids.ndim !== 2 || ids.dtype !== 'i32') {
    throw new Error(`forward: ids must be (batch, tokens) i32, got [${ids.shape.join(', ')}] ${ids.dtype}`);
  }
  const cache = opts.cache;
  if (cache && cache.layers.length !== model.blocks.length) {
    throw new Error(`forward: cache has ${cache.layers.length} layers, model has ${model.blocks.length}`);
  }
  if (cache && opts.capture?.mixerMatrices)
    throw new Error('forward: mixing matrices cannot be captured while decoding with a cache');
  const cap = opts.capture ?? {};
  const captured: Captured = {};
  if (cap.layerInputs) captured.layerInputs = [];
  if (cap.layerOutputs) captured.layerOutputs = [];
  if (cap.mixerOutputs) captured.mixerOutputs = [];
  if (cap.mixerMatrices) captured.mixerMatrices = [];
  const position = cache?.position ?? 0;
  let h = model.embed(ids, position);
  // Without gradients or captures nothing of a block is needed after it: each block runs in its
  // own memory scope, so a long no-grad forward (a prefill, scoring) holds one block's
  // intermediates at a time instead of every block's until the caller's scope ends.
  const capturing = cap.layerInputs || cap.layerOutputs || cap.mixerOutputs || cap.mixerMatrices;
  const blockScopes = !isGradEnabled() && !capturing;
  // With gradients each block (and the head) runs in a graph scope: what its backward reads
  // stays, every other intermediate is freed as soon as the block returns.
  const graphScopes = isGradEnabled() && !cache;
  const inGraphScope = <T>(fn: () => T): T => (graphScopes ? graphScope(fn) : fn());
  model.blocks.forEach((block, i) => {
    const prev = h;
    if (blockScopes) {
      h = scope(() => block.forward(prev, { cache: cache?.layers[i], position }).out);
      if (i > 0) prev.dispose(); // the previous block's output, ours alone
      return;
    }
    captured.layerInputs?.push(prev);
    // only what the caller keeps leaves the graph scope: a mixer output nobody captures would
    // otherwise stay alive until the step ends (64 MiB per layer at 4 x 2048, d 2048, f32)
    const r = inGraphScope(() => {
      const o = block.forward(prev, { returnMatrix: cap.mixerMatrices, cache: cache?.layers[i], position });
      return { out: o.out, mixerOut: cap.mixerOutputs ? o.mixerOut : null, matrix: o.matrix };
    });
    if (captured.mixerOutputs) captured.mixerOutputs.push(r.mixerOut!);
    if (captured.mixerMatrices) captured.mixerMatrices.push(r.matrix!);
    h = r.out;
    captured.layerOutputs?.push(h);
  });
  const t = h.shape[1];
  const last = h;
  const head = opts.head ?? ((x: Tensor) => model.head(x));
  const logits = inGraphScope(() => head(opts.lastLogitsOnly && t > 1 ? slice(last, 1, t - 1, t) : last));
  if (cache) cache.position += ids.shape[1];
  return { logits, captured };
}

export function createModelCache(blocks: Block[], batch: number): ModelCache {
  const layers = blocks.map((b) => b.createCache(batch));
  return {
    position: 0,
    layers,
    dispose() {
      for (const l of layers) l.dispose();
    },
  };
}
