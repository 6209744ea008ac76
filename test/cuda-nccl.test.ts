// The NCCL path at world size 1 on one GPU: the communicator from a unique id handed out by the
// process group, every collective (exact: one rank), NCCL's own error for a bad root, the
// communication stream ordered with the compute stream (a collective reads what 40 queued kernels
// wrote, and the kernels queued after it read its result), the bucketed gradient all-reduce, the
// overlapped one (buckets sent on the communication stream while the backward runs) giving the
// gradients of the synchronous one and of no communication (1e-6 of the largest), training
// through it as without it (1e-6), and ZeRO-1 and ZeRO-2 over NCCL training as the unsharded
// optimizer (1e-5: the same kernels on the same values, in other groupings).
//
// Without a GPU (or without libnccl.so.2) the suite skips with the reason; MOHAWK_REQUIRE_CUDA=1
// (scripts/gpu-check.sh) makes either a failure.

import assert from 'node:assert/strict';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { after, before, describe, it } from 'node:test';
import { CpuBackend } from '../src/backends/cpu/index.js';
import { CudaBackend } from '../src/backends/cuda/index.js';
import { f32ToBf16 } from '../src/backends/dtype.js';
import { loadNccl, NcclCollective, ncclUniqueId } from '../src/backends/cuda/nccl.js';
import { ProcessGroup } from '../src/backends/group.js';
import { Linear } from '../src/nn/layers.js';
import * as T from '../src/tensor/index.js';
import { keep, scope, setBackend, tensor, type Tensor } from '../src/tensor/index.js';
import { allReduceGrads, GradReducer } from '../src/train/distributed.js';
import type { NamedParams } from '../src/train/params.js';
import { Random } from '../src/util/random.js';
import { makeData, runTiny } from './train-fixture.js';

function open(): { gpu: CudaBackend | null; skip: string | false } {
  try {
    const gpu = new CudaBackend();
    loadNccl();
    return { gpu, skip: false };
  } catch (e) {
    if (process.env.MOHAWK_REQUIRE_CUDA === '1') throw e;
    return { gpu: null, skip: `no CUDA device or NCCL: ${(e as Error).message.split('\n')[0]}` };
  }
}

const { gpu: maybeGpu, skip } = open();
const gpu = maybeGpu as CudaBackend;

describe('nccl at world size 1', { skip }, () => {
  let c: NcclCollective;
  before(() => {
    setBackend(gpu);
    const group = ProcessGroup.join({
      rank: 0,
      worldSize: 1,
      masterAddr: '127.0.0.1',
      masterPort: 0,
      blob: ncclUniqueId(),
    });
    c = new NcclCollective(gpu, group);
    console.log(`# NCCL ${c.version} from ${loadNccl().path}`);
  });
  after(() => {
    c?.close();
    setBackend(new CpuBackend());
  });

  it('all-reduce (sum, avg), reduce-scatter, all-gather, broadcast, barrier', () => {
    const n = (1 << 20) + 3;
    const vals = Float32Array.from({ length: n }, (_, i) => Math.sin(i) * 100);
    const x = tensor(vals, [n], 'f32');
    c.allReduce(x.buffer, 'sum');
    c.allReduce(x.buffer, 'avg');
    assert.deepEqual(x.toArray(), vals);
    const out = tensor(new Float32Array(n), [n], 'f32');
    c.reduceScatter(x.buffer, out.buffer, 'sum');
    assert.deepEqual(out.toArray(), vals);
    const g = tensor(new Float32Array(n), [n], 'f32');
    c.allGather(x.buffer, g.buffer);
    assert.deepEqual(g.toArray(), vals);
    // bf16 travels as its bits
    const bits = Uint16Array.of(f32ToBf16(1.5), f32ToBf16(-2), f32ToBf16(3e-3));
    const b = tensor(bits, [3], 'bf16');
    c.broadcast(b.buffer, 0);
    assert.deepEqual(b.read(), bits);
    c.barrier();
    c.checkAsync();
    for (const t of [x, out, g, b]) t.dispose();
  });

  it('size errors name the sizes; NCCL errors come with its message', () => {
    const x = tensor(new Float32Array(4), [4], 'f32');
    const y = tensor(new Float32Array(3), [3], 'f32');
    assert.throws(
      () => c.reduceScatter(x.buffer, y.buffer, 'sum'),
      /reduceScatter: the full buffer has 4 elements, expected world size 1 x 3/,
    );
    assert.throws(() => c.broadcast(x.buffer, 1), /nccl: rank 0: ncclBroadcast: .*\(\d+\)/);
    x.dispose();
    y.dispose();
  });

  it('the communication stream waits for the queued kernels, and later kernels wait for it', () => {
    const n = 1 << 24;
    const check = (t: Tensor, want: number, what: string): void => {
      const v = t.toArray();
      for (const i of [0, 1, n >> 1, n - 1]) assert.equal(v[i], want, `${what}[${i}]`);
      let lo = Infinity;
      let hi = -Infinity;
      for (let i = 0; i < n; i++) {
        lo = Math.min(lo, v[i]);
        hi = Math.max(hi, v[i]);
      }
      assert.deepEqual([lo, hi], [want, want], `${what}: min and max`);
    };
    scope(() => {
      // 40 dependent kernels, then copies on the communication stream (one rank: out = x)
      const queued = (): Tensor => {
        let y = T.zeros([n]);
        for (let i = 0; i < 40; i++) y = T.affine(y, 1, 1);
        return y;
      };
      const a = queued();
      const gathered = T.empty([n]);
      c.allGather(a.buffer, gathered.buffer);
      check(T.affine(gathered, 2, 0), 80, 'allGather then a kernel');
      const b = queued();
      const scattered = T.empty([n]);
      c.reduceScatter(b.buffer, scattered.buffer, 'sum');
      check(T.affine(scattered, 2, 0), 80, 'reduceScatter then a kernel');
      const d = queued();
      const pending = c.allReduceAsync(d.buffer, 'sum');
      pending.wait();
      check(T.affine(d, 2, 0), 80, 'allReduceAsync, wait, then a kernel');
      const e = queued();
      const part = T.empty([n]);
      c.reduceScatterAsync(e.buffer, part.buffer, 'sum').wait();
      check(T.affine(part, 2, 0), 80, 'reduceScatterAsync, wait, then a kernel');
    });
  });

  it('overlapped buckets give the gradients of the synchronous buckets and of one process', () => {
    const rng = new Random(4);
    const D = 256;
    const ls = [0, 1, 2].map(() => new Linear(D, D, { rng, bias: true }));
    const params: NamedParams = ls.flatMap((l, i) =>
      l.namedParameters().map(([n, p]) => {
        p.requiresGrad = true;
        return [`l${i}.${n}`, p] as [string, Tensor];
      }),
    );
    const x = keep(T.tensor(rng.normals(8 * D), [8, D]));
    // a loss over the whole stack, and per-layer losses back-propagated one at a time (stages 1-2)
    const whole = (): void =>
      scope(() => T.sum(T.square(ls.reduce((h, l) => T.tanh(l.forward(h)), x))).backward());
    const perLayer = (): void => ls.forEach((l) => scope(() => T.sum(T.square(l.forward(x))).backward()));
    // 1e-6 of the largest gradient: the same kernels on the same values (cuBLAS may pick another
    // algorithm between calls); a race between the streams would leave whole buckets wrong
    const same = (got: number[][], want: number[][], what: string): void =>
      want.forEach((w, k) => {
        const tol = 1e-6 * Math.max(...w.map(Math.abs));
        w.forEach((v, i) =>
          assert.ok(Math.abs(got[k][i] - v) <= tol, `${what}: ${params[k][0]}[${i}]: ${got[k][i]} vs ${v}`),
        );
      });
    const grads = (): number[][] =>
      params.map(([, p]) => {
        const v = Array.from(p.grad!.toArray());
        p.grad!.dispose();
        p.grad = null;
        return v;
      });
    for (const backward of [whole, perLayer]) {
      backward();
      const plain = grads();
      backward();
      allReduceGrads(
        c,
        params,
        params.map(() => true),
        64 << 10,
      );
      same(grads(), plain, 'synchronous buckets');
      // 64 KiB buckets: a weight (256 KiB) alone, biases together; the second step runs in the
      // order the first one saw
      const r = new GradReducer(c, params, 64 << 10);
      for (let step = 0; step < 2; step++) {
        r.during(backward);
        assert.deepEqual(
          r.finish(),
          params.map(() => true),
        );
        same(grads(), plain, `overlapped buckets, step ${step}`);
      }
      r.dispose();
    }
    for (const l of ls) l.dispose();
    x.dispose();
  });

  it('training through the overlapped buckets equals training without a collective', () => {
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'mohawk-nccl-'));
    const data = makeData(path.join(dir, 'data'));
    const run = { data, batchTokens: 64, steps: 5, dropout: false };
    const plain = runTiny(run);
    const dp = runTiny(run, { dataParallel: { collective: c, bucketBytes: 256 } });
    const a = plain.result.history.map((m) => m.loss);
    const b = dp.result.history.map((m) => m.loss);
    a.forEach((v, i) => assert.ok(Math.abs(v - b[i]) <= 1e-6 * Math.abs(v), `loss ${i}: ${b[i]} vs ${v}`));
    plain.model.dispose();
    dp.model.dispose();
  });

  it('bucketed gradient all-reduce leaves one rank gradients as they were', () => {
    const ps = [3, 5, 7].map((n, i) => {
      const p = tensor(new Float32Array(n), [n], 'f32');
      p.grad = tensor(
        Float32Array.from({ length: n }, (_, j) => i * 10 + j),
        [n],
        'f32',
      );
      return [`p${i}`, p] as [string, typeof p];
    });
    const before = ps.map(([, p]) => [...p.grad!.toArray()]);
    allReduceGrads(c, ps, [true, false, true], 32);
    assert.deepEqual(
      ps.map(([, p]) => [...p.grad!.toArray()]),
      before,
    );
    for (const [, p] of ps) {
      p.grad?.dispose();
      p.dispose();
    }
  });

  it('ZeRO-2 over NCCL (buckets reduce-scattered during each backward) trains as the unsharded optimizer', () => {
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'mohawk-nccl-'));
    const data = makeData(path.join(dir, 'data'));
    const run = { data, batchTokens: 64, steps: 5, dropout: false };
    const plain = runTiny(run);
    const zero = runTiny(run, { dataParallel: { collective: c, zero: 2, bucketBytes: 64 } });
    const a = plain.result.history.map((m) => m.loss);
    const b = zero.result.history.map((m) => m.loss);
    a.forEach((v, i) => assert.ok(Math.abs(v - b[i]) <= 1e-5 * Math.abs(v), `loss ${i}: ${b[i]} vs ${v}`));
    const wz = new Map(zero.model.namedParameters());
    for (const [n, p] of plain.model.namedParameters()) {
      const u = p.toArray();
      const v = wz.get(n)!.toArray();
      u.forEach((x, i) => assert.ok(Math.abs(x - v[i]) <= 1e-5, `${n}[${i}]: ${v[i]} vs ${x}`));
    }
    plain.model.dispose();
    zero.model.dispose();
  });

  it('ZeRO-1 over NCCL trains as the unsharded optimizer', () => {
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'mohawk-nccl-'));
    const data = makeData(path.join(dir, 'data'));
    const run = { data, batchTokens: 64, steps: 5, dropout: false };
    const plain = runTiny(run);
    const zero = runTiny(
      { ...run, checkpointDir: path.join(dir, 'ck') },
      { dataParallel: { collective: c, zero: true } },
    );
    assert.ok(
      fs.existsSync(path.join(dir, 'ck', 'step-00000005', 'optimizer-shard-00000-of-00001.safetensors')),
    );
    const a = plain.result.history.map((m) => m.loss);
    const b = zero.result.history.map((m) => m.loss);
    a.forEach((v, i) => assert.ok(Math.abs(v - b[i]) <= 1e-5 * Math.abs(v), `loss ${i}: ${b[i]} vs ${v}`));
    const wz = new Map(zero.model.namedParameters());
    for (const [n, p] of plain.model.namedParameters()) {
      const u = p.toArray();
      const v = wz.get(n)!.toArray();
      u.forEach((x, i) => assert.ok(Math.abs(x - v[i]) <= 1e-5, `${n}[${i}]: ${v[i]} vs ${x}`));
    }
    plain.model.dispose();
    zero.model.dispose();
  });
});
