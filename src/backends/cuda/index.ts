// The CUDA backend: see the CUDA backend issue. Until it lands, asking for it fails clearly.

import type { Backend } from '../backend.js';

export function createCudaBackend(): Backend {
  throw new Error('cuda backend: not available in this build yet (use --device cpu)');
}
