// Graph capture on the CPU recorder: a captured computation replayed on new inputs equals an eager
// run on them (exactly: same kernels, same order), host reads inside a capture throw naming the
// call, and buffers freed and reused inside a capture stay private to the graph.

import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { CpuBackend } from '../src/backends/cpu/index.js';
import * as T from '../src/tensor/index.js';
import { captureGraph, noGrad, scope, setBackend, tensor, type Tensor, upload } from '../src/tensor/index.js';
import { Random } from '../src/util/random.js';

const ROWS = 16;
const DIM = 32;
const OUT = 24;
const VOCAB = 50;

function randomArray(rng: Random, n: number): Float32Array {
  const a = new Float32Array(n);
  for (let i = 0; i < n; i++) a[i] = rng.normal(0, 1);
  return a;
}

/** The computation under test: a product, unary ops, a reduction, an embedding of i32 ids. */
function compute(x: Tensor, ids: Tensor, w: Tensor, table: Tensor): Tensor {
  const h = T.matmul(x, w); // (ROWS, OUT)
  const e = T.exp(T.scale(x, 0.1)); // freed before the next same-sized buffer is allocated
  const es = T.sum(e, [1], true);
  e.dispose();
  const t = T.tanh(x); // same size as e: reuses its array inside the capture
  const ts = T.sum(t, [1], true);
  const emb = T.sum(T.embedding(table, ids), [1], true); // (ROWS, 1)
  return T.add(T.add(T.silu(h), T.add(es, ts)), emb);
}

describe('graph capture (CPU recorder)', () => {
  const backend = new CpuBackend();
  setBackend(backend);
  const rng = new Random(7);
  const w = tensor(randomArray(rng, DIM * OUT), [DIM, OUT]);
  const table = tensor(randomArray(rng, VOCAB * DIM), [VOCAB, DIM]);

  function eager(xHost: Float32Array, idsHost: Int32Array): Float32Array {
    return scope(() =>
      noGrad(() => {
        const x = tensor(xHost, [ROWS, DIM]);
        const ids = tensor(idsHost, [ROWS], 'i32');
        return compute(x, ids, w, table).toArray() as Float32Array;
      }),
    );
  }

  it('replays a captured computation on new inputs exactly as an eager run', () => {
    const xHost = randomArray(rng, ROWS * DIM);
    const idsHost = Int32Array.from({ length: ROWS }, (_, i) => (i * 7) % VOCAB);
    const x = T.zeros([ROWS, DIM]);
    const ids = T.zeros([ROWS], 'i32');
    const live = backend.memoryStats().liveBuffers;
    let out: Tensor | null = null;
    const graph = captureGraph(() => {
      out = noGrad(() =>
        scope(() => {
          upload(x, xHost);
          upload(ids, idsHost);
          return compute(x, ids, w, table);
        }),
      );
    }, [xHost, idsHost]);
    assert.ok(out, 'the captured function returned its output');
    const result = out as Tensor;
    assert.ok(graph.nodes >= 10, `nodes recorded: ${graph.nodes}`);
    // nothing ran at capture: the output buffer is still as allocated (zeros on the CPU)
    assert.ok(
      (result.toArray() as Float32Array).every((v) => v === 0),
      'capture must not run the kernels',
    );
    for (let round = 0; round < 3; round++) {
      for (let i = 0; i < xHost.length; i++) xHost[i] = rng.normal(0, 1);
      for (let i = 0; i < ROWS; i++) idsHost[i] = (i * 7 + round * 13 + 1) % VOCAB;
      graph.replay();
      assert.deepEqual(result.toArray(), eager(xHost, idsHost), `round ${round}`);
    }
    result.dispose();
    graph.destroy();
    graph.destroy(); // twice is safe
    assert.throws(() => graph.replay(), /destroyed graph/);
    assert.equal(backend.memoryStats().liveBuffers, live, 'every buffer of the capture is freed');
    x.dispose();
    ids.dispose();
  });

  it('snapshots writes of arrays that are not registered inputs', () => {
    const xHost = randomArray(rng, ROWS * DIM);
    const idsHost = new Int32Array(ROWS).fill(3);
    const x = T.zeros([ROWS, DIM]);
    const ids = T.zeros([ROWS], 'i32');
    const snapshot = xHost.slice();
    let out: Tensor | null = null;
    const graph = captureGraph(() => {
      out = noGrad(() =>
        scope(() => {
          upload(x, xHost); // not registered: a constant
          upload(ids, idsHost);
          return compute(x, ids, w, table);
        }),
      );
    }, [idsHost]);
    xHost.fill(5);
    idsHost.fill(4);
    graph.replay();
    assert.deepEqual((out as unknown as Tensor).toArray(), eager(snapshot, idsHost));
    (out as unknown as Tensor).dispose();
    graph.destroy();
    x.dispose();
    ids.dispose();
  });

  it('keeps buffers freed inside a capture away from eager allocations', () => {
    const xHost = randomArray(rng, ROWS * DIM);
    const idsHost = new Int32Array(ROWS).fill(1);
    const x = T.zeros([ROWS, DIM]);
    const ids = T.zeros([ROWS], 'i32');
    let out: Tensor | null = null;
    const graph = captureGraph(() => {
      out = noGrad(() =>
        scope(() => {
          upload(x, xHost);
          upload(ids, idsHost);
          return compute(x, ids, w, table);
        }),
      );
    }, [xHost]);
    // eager tensors of the sizes the capture freed: they must not share the graph's arrays
    const others = [T.full([ROWS, DIM], 9), T.full([ROWS, DIM], 9), T.full([ROWS, OUT], 9)];
    graph.replay();
    for (const o of others)
      assert.ok(
        (o.toArray() as Float32Array).every((v) => v === 9),
        'replay clobbered',
      );
    assert.deepEqual((out as unknown as Tensor).toArray(), eager(xHost, idsHost));
    // an output freed by its owner goes back to the graph, not to eager allocations
    (out as unknown as Tensor).dispose();
    const after = T.full([ROWS, OUT], 9);
    graph.replay();
    assert.ok(
      (after.toArray() as Float32Array).every((v) => v === 9),
      'a freed graph output was reused',
    );
    graph.destroy();
    for (const t of [...others, after, x, ids]) t.dispose();
  });

  it('throws on host reads inside a capture, naming the call, and frees what it took', () => {
    const x = T.full([ROWS, DIM], 1);
    const stats = backend.memoryStats();
    assert.throws(
      () =>
        captureGraph(() => {
          scope(() => T.exp(x).toArray()); // a read to the host
        }),
      /cpu backend: read inside a graph capture/,
    );
    assert.throws(() => captureGraph(() => backend.synchronize()), /synchronize inside a graph capture/);
    // the failed capture left no capture open: eager work runs again
    const z = T.exp(x);
    assert.equal((z.toArray() as Float32Array)[0], Math.fround(Math.E));
    z.dispose();
    assert.equal(backend.memoryStats().liveBuffers, stats.liveBuffers);
    x.dispose();
  });

  it('refuses nested captures and replays inside a capture', () => {
    const g = captureGraph(() => {});
    assert.equal(g.nodes, 0);
    assert.throws(() => captureGraph(() => g.replay()), /inside another graph capture/);
    assert.throws(() => captureGraph(() => captureGraph(() => {})), /capture inside another capture/);
    g.destroy();
  });
});
