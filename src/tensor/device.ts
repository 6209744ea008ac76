// The current backend: CPU by default; CUDA when asked for (`useDevice('cuda')` or
// MOHAWK_DEVICE=cuda), loaded on demand so that CPU runs never touch the CUDA libraries.

import type { Backend } from '../backends/backend.js';
import { blasHint } from '../backends/cpu/blas.js';
import { CpuBackend } from '../backends/cpu/index.js';

export type DeviceName = 'cpu' | 'cuda';

let current: Backend | null = null;

export function getBackend(): Backend {
  if (!current) current = new CpuBackend();
  return current;
}

export function setBackend(backend: Backend): void {
  current = backend;
}

/** Select the device by name; throws a message naming what was looked for when CUDA is absent. */
export async function useDevice(
  name: DeviceName | string = process.env.MOHAWK_DEVICE ?? 'cpu',
): Promise<Backend> {
  if (name === 'cpu') {
    if (current?.name !== 'cpu') current = new CpuBackend();
    return current;
  }
  if (name === 'cuda') {
    if (current?.name === 'cuda') return current;
    const mod = (await import('../backends/cuda/index.js')) as { createCudaBackend: () => Backend };
    current = mod.createCudaBackend();
    return current;
  }
  throw new Error(`device: unknown device "${name}" (expected cpu or cuda)`);
}

/** A one-line hint for the start of a run on this backend (CPU without OpenBLAS), or null. */
export function deviceHint(backend: Backend): string | null {
  return backend.name === 'cpu' ? blasHint() : null;
}
