export * from './shards.js';
export * from './prepare.js';
export * from './batches.js';
export * from './parquet.js';
