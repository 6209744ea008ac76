// Graphs at the tensor layer: capture a function's kernels once, replay them per step (a CUDA
// graph on the GPU, a recorded call list on the CPU), so layers above never touch the backend.
// The rules are the backend's (see `capture` in backends/backend.ts): warm up with one eager run
// first, no host reads inside, host inputs registered and written with `upload`, buffers used
// inside kept alive while the graph lives. MOHAWK_CUDA_GRAPH=0 turns graphs off everywhere.

import type { Backend, GraphCapture, HostArray } from '../backends/backend.js';
import { getBackend } from './device.js';
import { shapeStr, type Tensor } from './tensor.js';

export type { GraphCapture } from '../backends/backend.js';

/** Whether `captureGraph` works on this backend and graphs are not turned off (MOHAWK_CUDA_GRAPH=0). */
export function graphsAvailable(backend: Backend = getBackend()): boolean {
  return typeof backend.capture === 'function' && process.env.MOHAWK_CUDA_GRAPH !== '0';
}

/**
 * Record everything fn queues on the backend, without running it. `inputs` are host arrays that
 * fn uploads (`upload(t, arr)`): their current contents are uploaded again at every replay; any
 * other upload inside fn is a constant. Throws when the backend cannot capture, or when fn reads
 * to the host (naming the call); a failed capture frees what it took.
 */
export function captureGraph(
  fn: () => void,
  inputs: readonly HostArray[] = [],
  backend: Backend = getBackend(),
): GraphCapture {
  if (!backend.capture) throw new Error(`graph capture: the ${backend.name} backend cannot capture graphs`);
  return backend.capture(fn, inputs);
}

/** Copy host values into an existing tensor of the same size (in place: the buffer is kept). */
export function upload(t: Tensor, data: HostArray): void {
  if (data.length !== t.size) {
    throw new Error(`upload: ${data.length} values for a tensor of shape ${shapeStr(t.shape)}`);
  }
  t.backend.write(t.buffer, data);
}
