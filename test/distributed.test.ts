// Data parallelism on CPU processes: the launcher's environment, the TCP rendezvous (and its
// timeout), every CPU collective against hand-computed values, a lost rank named by the others,
// and training at world size 2 (plain, ZeRO-1 and ZeRO-2) giving the per-step losses and weights
// of one process, ZeRO-2 at world size 1 sending every micro-batch's buckets; a ZeRO-1 checkpoint resumed at world sizes 1 and 3, and an unsharded one resumed with
// ZeRO-1 at world size 2, continue as the unbroken run. The validation perplexity and KL computed
// over 2 and 3 ranks (each its share of the batches) equal one process's exactly.
//
// Tolerances: per-step losses and gradient norms 1e-5 relative, weights 1e-5 absolute (the
// ranks sum gradients in another order than one process accumulating micro-batches; f32).

import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import fs from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { describe, it } from 'node:test';
import { CpuCollective } from '../src/backends/cpu/collective.js';
import { ProcessGroup, readDistEnv } from '../src/backends/group.js';
import { TokenDataset } from '../src/data/index.js';
import { validationKl, validationPerplexity } from '../src/distill/pipeline.js';
import { getBackend } from '../src/tensor/index.js';
import { rankMicroBatches } from '../src/train/distributed.js';
import { paramBuckets, rowCuts, shardRange } from '../src/train/zero.js';
import { tinyLlama, writePatternedSplits } from './helpers.js';
import { makeData, runTiny, type RunConfig } from './train-fixture.js';

const root = path.resolve(import.meta.dirname, '..');
const tmp = () => fs.mkdtempSync(path.join(os.tmpdir(), 'mohawk-dist-'));

async function freePort(): Promise<number> {
  return new Promise((resolve) => {
    const s = net.createServer().listen(0, '127.0.0.1', () => {
      const p = (s.address() as net.AddressInfo).port;
      s.close(() => resolve(p));
    });
  });
}

interface RankResult {
  code: number | null;
  out: string;
  err: string;
}

/** Run test/dist-child.ts as `world` ranks; resolves with every rank's exit and output. */
async function job(world: number, args: object): Promise<RankResult[]> {
  const port = await freePort();
  return Promise.all(
    Array.from(
      { length: world },
      (_, rank) =>
        new Promise<RankResult>((resolve) => {
          const p = spawn(
            process.execPath,
            ['--import', 'tsx', path.join(root, 'test/dist-child.ts'), JSON.stringify(args)],
            {
              cwd: root,
              env: {
                ...process.env,
                WORLD_SIZE: String(world),
                RANK: String(rank),
                MASTER_PORT: String(port),
              },
              stdio: ['ignore', 'pipe', 'pipe'],
            },
          );
          let out = '';
          let err = '';
          p.stdout.on('data', (d) => (out += d));
          p.stderr.on('data', (d) => (err += d));
          p.on('exit', (code) => resolve({ code, out, err }));
        }),
    ),
  );
}

function parsed(r: RankResult[]): { losses: number[]; norms: number[]; weights: Record<string, number[]> }[] {
  return r.map((x, i) => {
    assert.equal(x.code, 0, `rank ${i} failed: ${x.err}`);
    return JSON.parse(x.out.trim().split('\n').pop()!);
  });
}

function close(a: number[], b: number[], tol: number, what: string, relative = true): void {
  assert.equal(a.length, b.length, `${what}: lengths`);
  a.forEach((v, i) => {
    const d = Math.abs(v - b[i]);
    assert.ok(d <= tol * (relative ? Math.abs(b[i]) : 1), `${what}[${i}]: ${v} vs ${b[i]}`);
  });
}

describe('distributed: launcher environment', () => {
  it('reads torchrun-style and Slurm variables, and names a bad one', () => {
    assert.equal(readDistEnv({}), null);
    assert.deepEqual(
      readDistEnv({ WORLD_SIZE: '4', RANK: '2', LOCAL_RANK: '0', MASTER_ADDR: 'n1', MASTER_PORT: '1234' }),
      {
        rank: 2,
        worldSize: 4,
        localRank: 0,
        masterAddr: 'n1',
        masterPort: 1234,
        source: 'torchrun',
      },
    );
    assert.deepEqual(
      readDistEnv({ SLURM_NTASKS: '16', SLURM_PROCID: '9', SLURM_LOCALID: '1', MASTER_ADDR: 'gpu-a' }),
      { rank: 9, worldSize: 16, localRank: 1, masterAddr: 'gpu-a', masterPort: 29500, source: 'slurm' },
    );
    assert.equal(readDistEnv({ WORLD_SIZE: '2', RANK: '1', MOHAWK_DIST: '0' }), null);
    assert.throws(
      () => readDistEnv({ WORLD_SIZE: '2', RANK: '2' }),
      /RANK \(2\) must be an integer in \[0, WORLD_SIZE 2\)/,
    );
    assert.throws(
      () => readDistEnv({ WORLD_SIZE: 'two', RANK: '0' }),
      /WORLD_SIZE \(two\) must be a positive integer/,
    );
    assert.throws(() => readDistEnv({ SLURM_NTASKS: '2', SLURM_PROCID: '0' }), /MASTER_ADDR is unset/);
    assert.throws(
      () => readDistEnv({ WORLD_SIZE: '2', RANK: '0', MASTER_PORT: '70000' }),
      /MASTER_PORT \(70000\) must be a TCP port/,
    );
  });

  it('splits a step of micro-batches into contiguous blocks, and the flat vector into shards', () => {
    assert.deepEqual(rankMicroBatches(6, 1, 3), [2, 4]);
    assert.throws(() => rankMicroBatches(3, 0, 2), /do not split over 2 ranks/);
    assert.deepEqual(shardRange(10, 2, 3), { size: 4, begin: 8, end: 12 });
    // whole parameters per bucket; a parameter larger than the limit is a bucket alone
    assert.deepEqual(paramBuckets([3, 4, 10, 2, 2, 1], 8), [
      { first: 0, end: 2, elems: 7 },
      { first: 2, end: 3, elems: 10 },
      { first: 3, end: 6, elems: 5 },
    ]);
    // cuts at row boundaries nearest equal shares: a (2 x 3) matrix then a vector of 6 (rows of 1)
    assert.deepEqual(rowCuts([6, 6], [3, 1], 3), [0, 3, 8, 12]);
    assert.deepEqual(rowCuts([6, 6], [3, 1], 2), [0, 6, 12]);
    assert.deepEqual(rowCuts([4], [4], 3), [0, 0, 4, 4]);
  });
});

describe('distributed: rendezvous and CPU collectives', () => {
  it('a rendezvous that a rank never reaches times out naming the missing ranks', async () => {
    const port = await freePort();
    const t0 = Date.now();
    assert.throws(
      () =>
        ProcessGroup.join({
          rank: 0,
          worldSize: 3,
          masterAddr: '127.0.0.1',
          masterPort: port,
          rendezvousTimeoutSec: 1,
        }),
      new RegExp(
        `rendezvous at 127.0.0.1:${port}: rank\\(s\\) 1, 2 did not arrive within 1 s \\(world size 3\\)`,
      ),
    );
    assert.throws(
      () =>
        ProcessGroup.join({
          rank: 1,
          worldSize: 2,
          masterAddr: '127.0.0.1',
          masterPort: port,
          rendezvousTimeoutSec: 1,
        }),
      /rank 1 could not reach rank 0 at 127.0.0.1:\d+ within 1 s \(ECONNREFUSED\)/,
    );
    assert.ok(Date.now() - t0 < 6000);
  });

  it('all-reduce, reduce-scatter, all-gather, broadcast over 3 processes', async () => {
    const rs = await job(3, { mode: 'collectives' });
    rs.forEach((r, rank) => {
      assert.equal(r.code, 0, r.err);
      const got = JSON.parse(r.out);
      assert.deepEqual(got.sum, [6, 1.5, -3]);
      assert.deepEqual(got.avg, [2, 2]);
      // rank q's full vector is i + 10 q; chunk `rank` of the sum is 3 i + 30
      assert.deepEqual(
        got.rs,
        [2 * rank, 2 * rank + 1].map((i) => 3 * i + 30),
      );
      assert.deepEqual(got.ag, [0, 0, 1, -1, 2, -2]);
      assert.deepEqual(got.bc, [14]);
    });
  });

  it('a rank that fails mid-training is named by the others, which stop instead of waiting', async () => {
    const t0 = Date.now();
    const data = makeData(path.join(tmp(), 'data'));
    const rs = await job(3, {
      mode: 'die',
      dieRank: 1,
      run: { data, batchTokens: 96, steps: 6, dropout: false },
    });
    assert.equal(rs[1].code, 1);
    assert.match(rs[1].err, /injected failure/);
    for (const r of [rs[0], rs[2]]) {
      assert.notEqual(r.code, 0);
      assert.match(r.err, /lost rank 1: connection closed \(the process stopped or crashed\)/);
    }
    assert.ok(Date.now() - t0 < 30000);
  });
});

describe('distributed: validation over ranks', () => {
  it("each rank evaluates its share of the batches; every rank gets one process's figures exactly", async () => {
    const dir = tmp();
    // 10 windows of 16 tokens in batches of 2: 5 batches, uneven over 2 and 3 ranks
    writePatternedSplits(dir, 400, 200);
    const val = TokenDataset.open(path.join(dir, 'data')).split('val');
    const one = {
      ppl: validationPerplexity(tinyLlama(), val, 16, 160, 2),
      kl: validationKl(tinyLlama({}, true), tinyLlama(), val, 16, 160, 2),
    };
    assert.ok(one.ppl > 1 && one.kl > 0);
    for (const world of [2, 3]) {
      const rs = await job(world, { mode: 'val', dir });
      rs.forEach((r, rank) => {
        assert.equal(r.code, 0, r.err);
        const { batches, ...figures } = JSON.parse(r.out.trim()) as { batches: number };
        assert.deepEqual(figures, one, `world size ${world}, rank ${rank}`);
        // batches r, r + W, ... of the 5
        assert.equal(batches, Math.ceil((5 - rank) / world), `world size ${world}, rank ${rank}: batches`);
      });
    }
  });
});

describe('distributed: data-parallel training on CPU processes', () => {
  const dir = tmp();
  const data = makeData(path.join(dir, 'data'));
  // 6 micro-batches of 4 x 8 tokens per step: splits over 1, 2 and 3 ranks
  const run: RunConfig = { data, batchTokens: 192, steps: 6, dropout: false };
  const single = runTiny(run);
  const ref = {
    losses: single.result.history.map((m) => m.loss),
    norms: single.result.history.map((m) => m.grad_norm),
    weights: Object.fromEntries(single.model.namedParameters().map(([n, t]) => [n, [...t.toArray()]])),
  };

  for (const zero of [false, true, 2] as const) {
    const what = zero === 2 ? ' with ZeRO-2' : zero ? ' with ZeRO-1' : '';
    it(`world size 2${what}: the losses, norms and weights of one process`, async () => {
      const rs = parsed(await job(2, { mode: 'train', zero, run }));
      for (const r of rs) {
        close(r.losses, ref.losses, 1e-5, 'loss');
        close(r.norms, ref.norms, 1e-5, 'grad norm');
        for (const [n, w] of Object.entries(ref.weights)) close(r.weights[n], w, 1e-5, n, false);
      }
      assert.deepEqual(rs[0].weights, rs[1].weights, 'the ranks hold the same weights');
    });
  }

  it('ZeRO-2 at world size 1 (one-rank collective, in this process) trains as one process', () => {
    const group = ProcessGroup.join({ rank: 0, worldSize: 1, masterAddr: '127.0.0.1', masterPort: 0 });
    let scatters = 0;
    const c = new (class extends CpuCollective {
      override reduceScatter(...a: Parameters<CpuCollective['reduceScatter']>): void {
        scatters++;
        super.reduceScatter(...a);
      }
    })(group, getBackend());
    try {
      const r = runTiny(run, { dataParallel: { collective: c, zero: 2, bucketBytes: 64 } });
      // every micro-batch sends every bucket: 6 steps x 6 micro-batches x 4 buckets of 16
      // elements or one parameter (emb 192, norm 8 + 8, out.weight 192, out.bias 24)
      assert.equal(scatters, 6 * 6 * 4);
      close(
        r.result.history.map((m) => m.loss),
        ref.losses,
        1e-6,
        'loss',
      );
      for (const [n, w] of Object.entries(ref.weights))
        close([...new Map(r.model.namedParameters()).get(n)!.toArray()], w, 1e-5, n, false);
    } finally {
      c.close();
    }
  });

  it('ZeRO-1 at world size 1 (one-rank collective, in this process) trains as one process and writes its shard', () => {
    const group = ProcessGroup.join({ rank: 0, worldSize: 1, masterAddr: '127.0.0.1', masterPort: 0 });
    const c = new CpuCollective(group, getBackend());
    try {
      const ck = path.join(dir, 'ck-w1');
      const r = runTiny({ ...run, checkpointDir: ck }, { dataParallel: { collective: c, zero: true } });
      close(
        r.result.history.map((m) => m.loss),
        ref.losses,
        1e-6,
        'loss',
      );
      assert.ok(fs.existsSync(path.join(ck, 'step-00000006', 'optimizer-shard-00000-of-00001.safetensors')));
    } finally {
      c.close();
    }
  });

  it('an unsharded checkpoint of one process resumes with ZeRO-1 at world size 2', async () => {
    const ck = path.join(dir, 'ck-one');
    const killed = await job(1, {
      mode: 'train',
      run: { ...run, checkpointDir: ck, checkpointEvery: 3, killAtStep: 4 },
    });
    assert.notEqual(killed[0].code, 0);
    assert.ok(fs.existsSync(path.join(ck, 'step-00000003', 'optimizer.safetensors')));
    const two = parsed(await job(2, { mode: 'train', zero: true, run: { ...run, checkpointDir: ck } }));
    close(two[0].losses, ref.losses.slice(3), 1e-5, 'loss after resume at world size 2');
    for (const [n, w] of Object.entries(ref.weights)) close(two[1].weights[n], w, 1e-5, n, false);
  });

  it('a ZeRO-1 checkpoint at world size 2 resumes at world sizes 1 and 3 as the unbroken run', async () => {
    const ck = path.join(dir, 'ck');
    const killed = await job(2, {
      mode: 'train',
      zero: true,
      run: { ...run, checkpointDir: ck, checkpointEvery: 3, killAtStep: 4 },
    });
    assert.ok(killed.every((r) => r.code !== 0));
    const step3 = path.join(ck, 'step-00000003');
    assert.deepEqual(
      fs
        .readdirSync(step3)
        .filter((n) => n.startsWith('optimizer'))
        .sort(),
      ['optimizer-shard-00000-of-00002.safetensors', 'optimizer-shard-00001-of-00002.safetensors'],
    );
    const copy = path.join(dir, 'ck1');
    fs.cpSync(ck, copy, { recursive: true });
    const three = parsed(await job(3, { mode: 'train', zero: true, run: { ...run, checkpointDir: ck } }));
    const one = runTiny({ ...run, checkpointDir: copy });
    close(three[0].losses, ref.losses.slice(3), 1e-5, 'loss after resume at world size 3');
    close(
      one.result.history.map((m) => m.loss),
      ref.losses.slice(3),
      1e-5,
      'loss after resume at world size 1',
    );
    for (const [n, w] of Object.entries(ref.weights)) {
      close(three[0].weights[n], w, 1e-5, n, false);
      close([...new Map(one.model.namedParameters()).get(n)!.toArray()], w, 1e-5, n, false);
    }
  });
});
