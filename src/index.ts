// The library API of mohawk.

export * from './tensor/index.js';
export type { Backend, DType } from './backends/backend.js';
export { Random } from './util/random.js';
