export * from './params.js';
export * from './optimizer.js';
export * from './schedule.js';
export * from './checkpoint.js';
export * from './metrics.js';
export * from './trainer.js';
