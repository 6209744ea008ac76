// The autograd's gradient-ready hook and the overlapped gradient buckets built on it.
//
// The hook: on random graphs where leaves are used several times (sums, products, slices written
// into one gradient, leaves that already hold a gradient), it fires exactly once per leaf that
// gets a gradient, and the leaf's .grad when it fires equals its final .grad exactly (so it fired
// after the last contribution); a run with the hook gives the same gradients as one without.
//
// GradReducer (train/distributed.ts), in this process over a recording collective that stands
// for two identical ranks (its all-reduce doubles): every parameter ends with twice its own
// gradient (exact), the first step's buckets follow the reverse parameter order, later steps
// follow the order in which the gradients became ready and each bucket starts right after its
// last gradient is final, before the next backward; a parameter without a gradient gets zeros
// and is reported; a late contribution to a sent bucket is an error naming the parameter. In
// train(), accumulation over 2 micro-batches communicates only during the last one (no_sync; under
// ZeRO-2 during each), and the losses equal those of a run without the collective.

import assert from 'node:assert/strict';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { describe, it } from 'node:test';
import type { DeviceBuffer } from '../src/backends/backend.js';
import type { Collective, PendingCollective, ReduceKind } from '../src/backends/collective.js';
import { Linear } from '../src/nn/layers.js';
import * as T from '../src/tensor/index.js';
import { getBackend, keep, scope, withGradReadyHook, type Tensor } from '../src/tensor/index.js';
import { RandomWindows, TokenDataset, type Batch } from '../src/data/index.js';
import { GradReducer } from '../src/train/distributed.js';
import { train } from '../src/train/index.js';
import type { NamedParams } from '../src/train/params.js';
import { Random } from '../src/util/random.js';
import { randn } from './helpers.js';
import { makeData, TinyLM } from './train-fixture.js';

/** A world of one that records its calls; its all-reduce multiplies by `factor` (2: two identical ranks). */
class Recording implements Collective {
  readonly kind = 'test';
  readonly rank = 0;
  readonly worldSize = 1;
  readonly calls: { op: string; n: number; tag: string }[] = [];
  tag = '';
  constructor(protected readonly factor = 1) {}
  allReduce(x: DeviceBuffer, op: ReduceKind): void {
    this.calls.push({ op: `allReduce ${op}`, n: x.length, tag: this.tag });
    if (this.factor === 1) return;
    const b = getBackend();
    b.write(
      x,
      Float32Array.from(b.read(x) as Float32Array, (v) => v * this.factor),
    );
  }
  // one rank: out = x
  reduceScatter(x: DeviceBuffer, out: DeviceBuffer, op: ReduceKind): void {
    this.calls.push({ op: `reduceScatter ${op}`, n: x.length, tag: this.tag });
    getBackend().write(out, getBackend().read(x));
  }
  allGather(x: DeviceBuffer, out: DeviceBuffer): void {
    this.calls.push({ op: 'allGather', n: x.length, tag: this.tag });
    getBackend().write(out, getBackend().read(x));
  }
  broadcast(x: DeviceBuffer): void {
    this.calls.push({ op: 'broadcast', n: x.length, tag: this.tag });
  }
  barrier(): void {}
  close(): void {}
}

/** The same with allReduceManyAsync: the reducer then sends the gradients in place (no flat copy). */
class RecordingMany extends Recording {
  allReduceManyAsync(xs: DeviceBuffer[], op: ReduceKind): PendingCollective {
    this.calls.push({ op: `allReduce ${op}`, n: xs.reduce((a, x) => a + x.length, 0), tag: this.tag });
    const b = getBackend();
    for (const x of xs)
      b.write(
        x,
        Float32Array.from(b.read(x) as Float32Array, (v) => v * this.factor),
      );
    return { wait: () => {} };
  }
}

const values = (t: Tensor | null): number[] => (t ? Array.from(t.toArray()) : []);

describe('gradient-ready hook', () => {
  /** A random graph over `leaves` (each [2, 3]): returns the scalar loss. */
  function randomGraph(rng: Random, leaves: Tensor[]): Tensor {
    const pool = [...leaves];
    const pick = (): Tensor => pool[rng.int(0, pool.length)];
    for (let k = 0; k < 8; k++) {
      const a = pick();
      const b = pick();
      let y: Tensor;
      switch (rng.int(0, 5)) {
        case 0:
          y = T.add(a, b);
          break;
        case 1:
          y = T.mul(a, b);
          break;
        case 2:
          y = T.scale(a, 0.5 + rng.uniform());
          break;
        case 3:
          // two slices of (maybe) one tensor: their gradients are written into one buffer
          y = T.concat([T.slice(a, 1, 0, 1), T.slice(b, 1, 1, 3)], 1);
          break;
        default:
          y = T.square(a);
      }
      pool.push(y);
    }
    // every tensor made contributes, so leaves are reached along several paths
    let loss = T.sum(pool[leaves.length]);
    for (const t of pool.slice(leaves.length + 1)) loss = T.add(loss, T.sum(T.scale(t, 0.1)));
    return loss;
  }

  it('fires once per leaf, after its last contribution, on random graphs', () => {
    for (let trial = 0; trial < 40; trial++) {
      const make = (): Tensor[] => {
        const r = new Random(1000 + trial);
        return [0, 1, 2, 3].map((i) => {
          const t = keep(randn(r, [2, 3], 'f32'));
          t.requiresGrad = i !== 3; // the last one needs no gradient: never reported
          return t;
        });
      };
      const ref = make();
      const leaves = make();
      // some leaves already hold a gradient (an earlier micro-batch)
      const seed = (ls: Tensor[]): void => {
        if (trial % 3 === 0) ls[0].grad = keep(T.full([2, 3], 0.25));
      };
      seed(ref);
      seed(leaves);
      const start = ref.map((t) => values(t.grad));
      scope(() => randomGraph(new Random(trial), ref).backward());
      // the leaves the graph reaches: those whose gradient the backward changed
      const reached = ref.map(
        (t, i) => t.requiresGrad && JSON.stringify(values(t.grad)) !== JSON.stringify(start[i]),
      );
      const fired = new Map<Tensor, number>();
      const atFire = new Map<Tensor, number[]>();
      scope(() =>
        withGradReadyHook(
          (leaf) => {
            fired.set(leaf, (fired.get(leaf) ?? 0) + 1);
            atFire.set(leaf, values(leaf.grad));
          },
          () => randomGraph(new Random(trial), leaves).backward(),
        ),
      );
      leaves.forEach((leaf, i) => {
        const want = values(ref[i].grad);
        assert.deepEqual(values(leaf.grad), want, `trial ${trial}, leaf ${i}: the hook changed the gradient`);
        if (!reached[i]) {
          assert.equal(fired.get(leaf), undefined, `trial ${trial}, leaf ${i} fired without a gradient`);
          return;
        }
        assert.equal(fired.get(leaf), 1, `trial ${trial}, leaf ${i}: fired ${fired.get(leaf)} times`);
        assert.deepEqual(
          atFire.get(leaf),
          want,
          `trial ${trial}, leaf ${i}: fired before its last contribution`,
        );
      });
      for (const t of [...ref, ...leaves]) {
        t.grad?.dispose();
        t.dispose();
      }
    }
  });

  it('is off outside withGradReadyHook and nests', () => {
    const x = keep(T.tensor([1, 2]));
    x.requiresGrad = true;
    const seen: string[] = [];
    withGradReadyHook(
      () => seen.push('outer'),
      () =>
        withGradReadyHook(
          () => seen.push('inner'),
          () => scope(() => T.sum(T.mul(x, x)).backward()),
        ),
    );
    scope(() => T.sum(x).backward());
    assert.deepEqual(seen, ['outer', 'inner']);
    x.grad?.dispose();
    x.dispose();
  });
});

describe('overlapped gradient buckets (GradReducer)', () => {
  const D = 4;
  /** Three layers whose losses back-propagate one at a time, layer 0 first (as stages 1-2 do). */
  function layers(): { ls: Linear[]; params: NamedParams; spare: Tensor } {
    const rng = new Random(3);
    const ls = [0, 1, 2].map(() => new Linear(D, D, { rng, bias: true }));
    for (const l of ls) for (const [, p] of l.namedParameters()) p.requiresGrad = true;
    const spare = keep(T.zeros([3]));
    spare.requiresGrad = true;
    const params: NamedParams = [
      ['spare', spare],
      ...ls.flatMap((l, i) => l.namedParameters().map(([n, p]) => [`l${i}.${n}`, p] as [string, Tensor])),
    ];
    return { ls, params, spare };
  }
  const xs = [0, 1, 2].map((i) => keep(randn(new Random(10 + i), [2, D], 'f32')));
  const perLayer = (ls: Linear[], before?: (i: number) => void): void => {
    ls.forEach((l, i) => {
      before?.(i);
      scope(() => T.sum(T.square(l.forward(xs[i]))).backward());
    });
  };

  for (const Kind of [Recording, RecordingMany])
    it(`sums every gradient into its place; buckets follow the order gradients become ready (${Kind === Recording ? 'flat buckets' : 'in place'})`, () => {
      const ref = layers();
      perLayer(ref.ls);
      const want = new Map(ref.params.map(([n, p]) => [n, values(p.grad).map((v) => 2 * v)]));
      const { ls, params } = layers();
      const c = new Kind(2);
      // a bucket: one layer's weight and bias (20 elements)
      const r = new GradReducer(c, params, 20 * 4);
      assert.deepEqual(r.buckets, [
        ['l2.bias', 'l2.weight'],
        ['l1.bias', 'l1.weight'],
        ['l0.bias', 'l0.weight'],
        ['spare'],
      ]);
      for (let step = 0; step < 2; step++) {
        const events: string[] = [];
        // the collective's calls since the last look, in the event list
        const sends = (suffix = ''): void => {
          for (const x of c.calls.splice(0)) events.push(`send ${x.n}${suffix}`);
        };
        // this hook runs before the reducer's (hooks run in the order they were installed)
        withGradReadyHook(
          (leaf) => {
            sends();
            events.push(`ready ${params.find(([, p]) => p === leaf)![0]}`);
          },
          () =>
            r.during(() =>
              perLayer(ls, (i) => {
                sends();
                events.push(`backward l${i}`);
              }),
            ),
        );
        sends();
        const had = r.finish();
        sends(' (finish)');
        assert.deepEqual(
          had,
          params.map(([n]) => n !== 'spare'),
        );
        for (const [n, p] of params)
          assert.deepEqual(values(p.grad), n === 'spare' ? [0, 0, 0] : want.get(n), `step ${step}: ${n}`);
        if (step === 0)
          // the first bucket holds layer 2, ready last: nothing is sent until its backward, then the
          // three layers' buckets in order; 'spare' (never ready) at finish
          assert.deepEqual(events, [
            'backward l0',
            'ready l0.bias',
            'ready l0.weight',
            'backward l1',
            'ready l1.bias',
            'ready l1.weight',
            'backward l2',
            'ready l2.bias',
            'ready l2.weight',
            'send 20',
            'send 20',
            'send 20',
            'send 3 (finish)',
          ]);
        else {
          assert.deepEqual(r.buckets, [
            ['l0.bias', 'l0.weight'],
            ['l1.bias', 'l1.weight'],
            ['l2.bias', 'l2.weight'],
            ['spare'],
          ]);
          // each layer's bucket leaves as soon as its backward is done, before the next one
          assert.deepEqual(events, [
            'backward l0',
            'ready l0.bias',
            'ready l0.weight',
            'send 20',
            'backward l1',
            'ready l1.bias',
            'ready l1.weight',
            'send 20',
            'backward l2',
            'ready l2.bias',
            'ready l2.weight',
            'send 20',
            'send 3 (finish)',
          ]);
        }
        for (const [, p] of params) {
          p.grad?.dispose();
          p.grad = null;
        }
      }
    });

  it('a contribution after its bucket was sent is an error naming the parameter', () => {
    const { ls, params } = layers();
    const r = new GradReducer(new Recording(), params, 20 * 4);
    r.during(() => perLayer(ls));
    r.finish(); // learns the order l0, l1, l2
    for (const [, p] of params) {
      p.grad?.dispose();
      p.grad = null;
    }
    assert.throws(
      () => r.during(() => [0, 1].forEach(() => perLayer([ls[0]]))),
      /data parallel: l0\.(bias|weight) got another gradient after its bucket was sent/,
    );
    r.dispose();
  });

  it('train(): only the last micro-batch of a step communicates (ZeRO-2: each); the losses are those without it', () => {
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'mohawk-overlap-'));
    const split = TokenDataset.open(makeData(path.join(dir, 'data'))).split('train');
    const run = (c: Recording | null, zero: 0 | 1 | 2 = 0) => {
      const model = new TinyLM(1);
      const result = train<Batch>({
        params: model,
        // back-propagated by the loss itself (as stages 1-2 do), so that the calls made during
        // the backward are told from those made after it
        lossFn: (b, ctx) => {
          if (c) c.tag = `micro ${ctx.micro}`;
          const loss = model.loss(b, null);
          const value = loss.item();
          T.scale(loss, 1 / ctx.accum).backward(undefined, { freeGraph: true });
          if (c) c.tag = `after micro ${ctx.micro}`;
          return { value };
        },
        data: new RandomWindows(split, 4, 8, 5),
        budgetTokens: 4 * 64,
        batchTokens: 64, // 2 micro-batches of 4 x 8 tokens
        optimizer: { lr: 0.05, weightDecay: 0.1 },
        schedule: { kind: 'wsd', warmupSteps: 2, decayFraction: 0.3 },
        progress: false,
        dataParallel: c ? { collective: c, bucketBytes: 64, zero: zero || undefined } : undefined,
      });
      const sizes = model.namedParameters().map(([, p]) => p.size);
      model.dispose();
      return { losses: result.history.map((m) => m.loss), sizes };
    };
    const plain = run(null);
    const c = new Recording();
    const dp = run(c);
    assert.deepEqual(dp.losses, plain.losses);
    // buckets of 16 elements: out.bias (24), out.weight (192), norm.bias + norm.weight (8 + 8),
    // emb.weight (192): all four leave during the backward of the step's last micro-batch
    assert.deepEqual(dp.sizes, [192, 8, 8, 192, 24]);
    assert.deepEqual(
      c.calls.map((x) => `${x.tag}: ${x.n}`),
      Array.from({ length: 4 }, () => ['micro 1: 24', 'micro 1: 192', 'micro 1: 16', 'micro 1: 192']).flat(),
    );
    // ZeRO: the sharded optimizer's buckets (parameter order, last first; the same four here),
    // reduce-scattered during the last micro-batch's backward (ZeRO-1) or during each (ZeRO-2)
    for (const zero of [1, 2] as const) {
      const cz = new Recording();
      const z = run(cz, zero);
      z.losses.forEach((l, i) =>
        assert.ok(Math.abs(l - plain.losses[i]) <= 1e-6 * plain.losses[i], `ZeRO-${zero} loss ${i}`),
      );
      const micro = (m: number) => [`micro ${m}: 24`, `micro ${m}: 192`, `micro ${m}: 16`, `micro ${m}: 192`];
      assert.deepEqual(
        cz.calls.filter((x) => x.op === 'reduceScatter sum').map((x) => `${x.tag}: ${x.n}`),
        Array.from({ length: 4 }, () => (zero === 1 ? micro(1) : [...micro(0), ...micro(1)])).flat(),
        `ZeRO-${zero}`,
      );
    }
  });
});
