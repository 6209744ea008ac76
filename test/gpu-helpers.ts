// Shared by the whole-model GPU tests: where the reference fixtures are, and the CUDA backend or
// the reason to skip (no fixtures, no device). MOHAWK_REQUIRE_CUDA=1 turns a missing device into
// a failure (the GPU machine's check).

import { existsSync } from 'node:fs';
import { resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { CudaBackend } from '../src/backends/cuda/index.js';

export const repoRoot = resolve(fileURLToPath(import.meta.url), '..', '..');

/** $MOHAWK_FIXTURES on the GPU machine, where ../shared is not available (scripts/gpu-check.sh copies it) */
export const fixtures =
  process.env.MOHAWK_FIXTURES ?? resolve(repoRoot, '..', 'shared', 'fixtures', 'reference');

export function openGpuWithFixtures(): { gpu: CudaBackend | null; skip: string | false } {
  if (!existsSync(fixtures)) return { gpu: null, skip: `no fixtures at ${fixtures}` };
  try {
    return { gpu: new CudaBackend(), skip: false };
  } catch (e) {
    if (process.env.MOHAWK_REQUIRE_CUDA === '1') throw e;
    return { gpu: null, skip: `no CUDA device: ${(e as Error).message.split('\n')[0]}` };
  }
}
