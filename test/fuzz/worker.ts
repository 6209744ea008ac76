// The fuzz worker: a worker thread that runs cases on request and posts each outcome back. The
// harness on the main thread times every case and ends this thread when one runs too long or
// exceeds the memory limit (both seen from outside, so a stuck case cannot hide them).

import { parentPort, workerData } from 'node:worker_threads';
import { runCase, type Kind } from './cases.js';

const { work } = workerData as { work: string };

parentPort!.on('message', (m: { kind: Kind; seed: number; index: number }) => {
  const outcome = runCase(m.kind, m.seed, m.index, work);
  parentPort!.postMessage({ ...m, outcome });
});
parentPort!.postMessage({ ready: true });
