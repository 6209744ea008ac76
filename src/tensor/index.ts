export * from './tensor.js';
export * from './ops.js';
export * from './device.js';
export * from './fused-head.js';
export * from './graph.js';
export * from './decode-ops.js';
